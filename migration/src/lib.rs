//! Schema migrations for callsignal, one file per change, named `mYYYYMMDD_HHMMSS_verb_noun`.
//! Every migration has a real `down`. They run on PostgreSQL and SQLite alike; `serve` applies
//! pending ones at start, `callsignal migrate up|down|status` manages them by hand.

pub use sea_orm_migration::prelude::*;

mod m20261125_000001_create_users;
mod m20261125_000002_create_sessions;
mod m20261125_000003_create_calls;
mod m20261125_000004_create_signaling_messages;
mod m20261130_000005_add_sessions_last_ip;
mod m20261130_000006_add_calls_signaling_counts;

/// The ordered list of migrations.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261125_000001_create_users::Migration),
            Box::new(m20261125_000002_create_sessions::Migration),
            Box::new(m20261125_000003_create_calls::Migration),
            Box::new(m20261125_000004_create_signaling_messages::Migration),
            Box::new(m20261130_000005_add_sessions_last_ip::Migration),
            Box::new(m20261130_000006_add_calls_signaling_counts::Migration),
        ]
    }
}
