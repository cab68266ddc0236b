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

/// Creates the directory of a relative or absolute SQLite file path, so the embedded default
/// works on a fresh machine.
fn prepare_sqlite_path(url: &str) -> std::io::Result<()> {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return Ok(());
    };
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    match Path::new(path).parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.exists() => create_private_dir(dir),
        _ => Ok(()),
    }
}

/// Creates a directory readable only by the server's user (it will hold password hashes and
/// the signing key).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// `url` with its password (the `user:password@` part) replaced by `***`, for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The authority ends at the first '/', '?' or '#'; userinfo is before its last '@'.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

/// The password of a database URL, if it has one (to scrub it from any error text).
fn url_password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let (userinfo, _) = authority.rsplit_once('@')?;
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

/// Opens the pool. SQLite gets WAL and a busy timeout so readers and the writer coexist.
/// Errors never contain the URL's password (drivers quote the whole URL, e.g. for an unknown
/// scheme).
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<DatabaseConnection> {
    let url = settings.url.expose();
    open(settings)
        .await
        .map_err(|e| anyhow::anyhow!(scrub(&format!("{e:#}"), url)))
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
