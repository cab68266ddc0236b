//! Database access through SeaORM, one module per table. Functions take `&impl ConnectionTrait`
//! and return [`StoreError`]; no HTTP or actor types leak in here. The same code runs on
//! PostgreSQL and SQLite.

pub mod calls;
pub mod sessions;
pub mod users;

use std::path::Path;
use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, SqlErr};

use crate::config::DatabaseSettings;

/// Persistence-boundary errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint was hit (e.g. username taken).
    #[error("already exists")]
    Conflict,
    /// Anything else from the database (unreachable, timeout, SQL error).
    #[error("database error: {0}")]
    Db(#[from] DbErr),
}

/// Maps a unique violation to [`StoreError::Conflict`].
fn classify(e: DbErr) -> StoreError {
    match e.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => StoreError::Conflict,
        _ => StoreError::Db(e),
    }
}

/// Makes the SQLite database private before it is opened: creates its directory (0700) if
/// missing, creates the file 0600 when the URL may create it (`mode=rwc`) so that SQLite never
/// creates it with the umask's mode, and narrows an existing file and its `-wal`, `-shm` and
/// `-journal` companions to 0600 (SQLite creates those with the database file's mode). The
/// database holds password hashes and session data.
fn prepare_sqlite_path(url: &str) -> std::io::Result<()> {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return Ok(());
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" || query.contains("mode=memory") {
        return Ok(());
    }
    let path = Path::new(path);
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.exists() => create_private_dir(dir)?,
        _ => {}
    }
    if !path.exists() && query.split('&').any(|p| p == "mode=rwc") {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(path)?;
    }
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let file = Path::new(&file);
        if file.exists() {
            set_private_file_mode(file)?;
        }
    }
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

/// Narrows a file to mode 0600 (owner read/write only).
pub fn set_private_file_mode(path: &Path) -> std::io::Result<()> {
    set_mode(path, 0o600)
}

/// Creates a directory readable only by the server's user (it will hold password hashes and
/// the signing key).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    set_mode(dir, 0o700)
}

/// Makes the data directory (`server.data_dir`) private: creates it 0700, or narrows an
/// existing one that group or others can access to 0700 — unless it is a shared directory with
/// the sticky bit (such as `/tmp`), which is left alone with a warning.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return create_private_dir(dir);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)?.permissions().mode();
        const STICKY: u32 = 0o1000;
        if mode & 0o077 != 0 {
            if mode & STICKY != 0 {
                tracing::warn!(dir = %dir.display(), "the data directory is shared (sticky bit); \
                    not narrowing it to 0700: point server.data_dir at a private directory");
            } else {
                set_mode(dir, 0o700)?;
            }
        }
    }
    Ok(())
}

/// `url` with its password replaced by `***`, for messages: the `user:password@` part (everything
/// before the last `@`, since a password may hold an unencoded `/`, `?` or `#` — a malformed
/// URL, but one an operator typed and that must not be printed) and the values of query
/// parameters that carry secrets (`password=`, `sslpassword=`, anything with `pass`, `secret`,
/// `token` or `key` in its name), and any fragment (`#…`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (userinfo, host) = match rest.rsplit_once('@') {
        Some((userinfo, host)) => (Some(userinfo), host),
        None => (None, rest),
    };
    // A fragment is never sent to the database and may carry anything (`#password=…`): not
    // shown. Looked for after the userinfo, where a password may hold an unencoded `#`.
    let host = match host.split_once('#') {
        Some((host, _)) => format!("{host}#***"),
        None => host.to_owned(),
    };
    let rest = match userinfo {
        Some(userinfo) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => host,
    };
    let (before, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest.as_str(), None),
    };
    let mut out = format!("{scheme}://{before}");
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _))
                    if ["pass", "secret", "token", "key"]
                        .iter()
                        .any(|w| k.to_ascii_lowercase().contains(w)) =>
                {
                    format!("{k}=***")
                }
                _ => pair.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

/// The password of a database URL, if it has one (to scrub it from any error text).
fn url_password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    // Before the last `@`, as in `redact_url`: a password may hold an unencoded `/`.
    let (userinfo, _) = rest.rsplit_once('@')?;
    userinfo
        .split_once(':')
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty())
}

/// An error message about `url` with the URL redacted and its password scrubbed, wherever the
/// driver put it.
fn scrub(message: &str, url: &str) -> String {
    let mut message = message.replace(url, &redact_url(url));
    if let Some(password) = url_password(url) {
        message = message.replace(password, "***");
    }
    message
}

/// Key of the PostgreSQL advisory lock held while migrating (any constant; it names this
/// application's schema changes).
const MIGRATION_LOCK: i64 = 0x6361_6c6c_7369_676e; // "callsign"

/// Applies the pending migrations. On PostgreSQL one node at a time: inside one transaction
/// holding a transaction-level advisory lock, so nodes started together on a fresh (or an
/// upgraded) database wait for each other instead of creating the same tables twice; the
/// second finds nothing pending. Each migration still runs in a transaction of its own
/// (a savepoint of this one).
///
/// # Errors
/// The database's error, if the lock, a migration or the commit fails.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    use migration::MigratorTrait;
    use sea_orm::TransactionTrait;
    if db.get_database_backend() != sea_orm::DbBackend::Postgres {
        return migration::Migrator::up(db, None).await;
    }
    let txn = db.begin().await?;
    txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
        .await?;
    migration::Migrator::up(&txn, None).await?;
    txn.commit().await
}

/// Opens the pool. SQLite gets WAL and a busy timeout so readers and the writer coexist.
/// Errors never contain the URL's password (drivers quote the whole URL, e.g. for an unknown
/// scheme).
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<DatabaseConnection> {
    let url = settings.url.expose();
    open(settings).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot open the database {}: {}",
            describe(settings),
            scrub(&format!("{e:#}"), url)
        )
    })
}

/// The database for logs and errors, without its password: `sqlite <path>` or
/// `postgres user:***@host/db`.
pub fn describe(settings: &DatabaseSettings) -> String {
    let url = settings.url.expose();
    match url.split_once("://") {
        Some(("sqlite", _)) => {
            let redacted = redact_url(url);
            let rest = redacted.split_once("://").map_or("", |(_, r)| r);
            let path = rest.split('?').next().unwrap_or(rest);
            format!("sqlite {path}")
        }
        Some((scheme, _)) => {
            let redacted = redact_url(url);
            let after = redacted
                .split_once("://")
                .map_or(redacted.as_str(), |(_, r)| r);
            format!("{scheme} {}", after.split('?').next().unwrap_or(after))
        }
        None => "(malformed database.url)".to_owned(),
    }
}

async fn open(settings: &DatabaseSettings) -> anyhow::Result<DatabaseConnection> {
    let url = settings.url.expose();
    prepare_sqlite_path(url)?;
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.max_connections(settings.max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(settings.connect_timeout_secs))
        .acquire_timeout(Duration::from_secs(settings.connect_timeout_secs))
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|o| {
            o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true)
        });
    Ok(Database::connect(opts).await?)
}

/// `SELECT 1` with a short deadline, for `/readyz`.
pub async fn ping(db: &DatabaseConnection) -> Result<(), String> {
    match tokio::time::timeout(Duration::from_secs(2), db.execute_unprepared("SELECT 1")).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("database did not answer within 2 s".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn settings(url: &str) -> DatabaseSettings {
        DatabaseSettings {
            url: Secret::new(url),
            max_connections: 1,
            connect_timeout_secs: 1,
            migrate_on_start: false,
        }
    }

    /// Found by a tester: a fragment (`#password=…`, never sent to the database) was printed
    /// whole, by `config check` and in errors.
    #[test]
    fn a_fragment_is_not_shown() {
        assert_eq!(
            redact_url("postgres://u:p@h/db#frag=Secret2"),
            "postgres://u:***@h/db#***"
        );
        assert_eq!(
            redact_url("mysql://h/db#password=SecretPw"),
            "mysql://h/db#***"
        );
        assert_eq!(
            redact_url("postgres://u:pa#ss@h/db"),
            "postgres://u:***@h/db"
        );
        assert!(!describe(&settings("postgres://u:p@h/db#SecretPw")).contains("SecretPw"));
    }

    #[test]
    fn urls_are_redacted_to_user_and_host() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/calls?sslmode=require"),
            "postgres://app:***@db:5432/calls?sslmode=require"
        );
        assert_eq!(
            redact_url("sqlite://data/x.db?mode=rwc"),
            "sqlite://data/x.db?mode=rwc"
        );
        assert_eq!(
            redact_url("postgres://a:p@ss@db/x"),
            "postgres://a:***@db/x"
        );
        // Found by a tester: a password with an unencoded `/`, `#` or `?` ended the authority
        // early and was printed (config check, the first log line, errors); so did a password
        // in the query string.
        for (url, shown) in [
            (
                "postgres://alice:S3/CRETPW@db.example/app",
                "postgres://alice:***@db.example/app",
            ),
            (
                "postgres://alice:S3#CRETPW@db.example/app",
                "postgres://alice:***@db.example/app",
            ),
            (
                "postgres://alice:S3?CRETPW@db.example/app",
                "postgres://alice:***@db.example/app",
            ),
            ("sqlite://alice:S3CRETPW@x", "sqlite://alice:***@x"),
            (
                "postgres://db/app?sslmode=require&password=S3CRETPW",
                "postgres://db/app?sslmode=require&password=***",
            ),
            (
                "mysql://db/app?sslpassword=S3CRETPW",
                "mysql://db/app?sslpassword=***",
            ),
            ("postgres://alice@db/app", "postgres://alice@db/app"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
            assert!(!redact_url(url).contains("CRETPW"), "{url}");
        }
        let s = settings("sqlite://alice:S3CRETPW@x");
        assert!(!describe(&s).contains("CRETPW"), "{}", describe(&s));
    }

    #[tokio::test]
    async fn a_mistyped_scheme_does_not_print_the_password() {
        for url in [
            "postgress://app:hunter2-secret@127.0.0.1:1/calls",
            "postgres://app:hunter2-secret@127.0.0.1:1/calls",
        ] {
            let err = connect(&settings(url)).await.expect_err("cannot connect");
            let text = format!("{err:#} {err:?}");
            assert!(!text.contains("hunter2-secret"), "{text}");
        }
    }
}
