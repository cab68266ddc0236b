//! Migrations: `up` creates the four tables (and `sessions.last_ip`, the calls' signaling
//! counters), `down` really removes them, and both run on
//! PostgreSQL and SQLite.

use migration::{Migrator, MigratorTrait};
use sea_orm::Database;

use crate::helpers::{Backend, PG_ENV, fresh_database};

async fn tables(db: &sea_orm::DatabaseConnection) -> Vec<String> {
    let manager = sea_orm_migration::SchemaManager::new(db);
    let mut present = vec![];
    for t in ["users", "sessions", "calls", "signaling_messages"] {
        if manager.has_table(t).await.unwrap() {
            present.push(t.to_owned());
        }
    }
    present
}

async fn has_last_ip(db: &sea_orm::DatabaseConnection) -> bool {
    let manager = sea_orm_migration::SchemaManager::new(db);
    manager.has_column("sessions", "last_ip").await.unwrap()
}

async fn has_signal_counters(db: &sea_orm::DatabaseConnection) -> bool {
    let manager = sea_orm_migration::SchemaManager::new(db);
    let mut all = true;
    for c in [
        "caller_sdp_messages",
        "caller_ice_messages",
        "callee_sdp_messages",
        "callee_ice_messages",
        "first_signal_at",
        "last_signal_at",
    ] {
        all &= manager.has_column("calls", c).await.unwrap();
    }
    all
}

async fn up_down_up(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(backend, dir.path()).await;
    if backend == Backend::Sqlite {
        std::fs::create_dir_all(dir.path()).unwrap();
    }
    let db = Database::connect(&url).await.unwrap();
    Migrator::up(&db, None).await.unwrap();
    assert_eq!(tables(&db).await.len(), 4);
    assert!(has_last_ip(&db).await);
    assert!(has_signal_counters(&db).await);
    Migrator::down(&db, Some(1)).await.unwrap();
    assert!(
        !has_signal_counters(&db).await,
        "down removes the calls' signaling counters"
    );
    assert!(has_last_ip(&db).await);
    Migrator::down(&db, Some(1)).await.unwrap();
    assert!(!has_last_ip(&db).await, "down removes sessions.last_ip");
    assert_eq!(tables(&db).await.len(), 4);
    Migrator::down(&db, Some(1)).await.unwrap();
    assert_eq!(tables(&db).await, ["users", "sessions", "calls"]);
    Migrator::down(&db, None).await.unwrap();
    assert!(tables(&db).await.is_empty());
    Migrator::up(&db, None).await.unwrap();
    assert_eq!(tables(&db).await.len(), 4);
    let status = Migrator::get_pending_migrations(&db).await.unwrap();
    assert!(status.is_empty());
    db.close().await.unwrap();
    crate::helpers::drop_test_database(&url);
}

#[tokio::test]
async fn migrations_go_up_and_really_down_sqlite() {
    up_down_up(Backend::Sqlite).await;
}

#[tokio::test]
async fn migrations_go_up_and_really_down_postgres() {
    if std::env::var(PG_ENV).is_err() {
        assert!(std::env::var("CI").is_err(), "{PG_ENV} must be set in CI");
        eprintln!("SKIPPED on PostgreSQL: set {PG_ENV}");
        return;
    }
    up_down_up(Backend::Postgres).await;
}
