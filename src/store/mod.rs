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

/// Opens the pool. SQLite gets WAL and a busy timeout so readers and the writer coexist.
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<DatabaseConnection> {
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
