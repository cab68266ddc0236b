//! Adds per-call signaling counters to `calls` (issue #11): how many `sdp` and `ice` messages
//! each party sent, and when the first and last were relayed. They replace the per-message
//! `signaling_messages` rows as the default record of signaling (those rows become an opt-in
//! debug setting), so signaling costs one update per call instead of one insert per message.
//! Also indexes `signaling_messages.created_at`, which the retention sweep deletes by.
//!
//! SQLite alters one column per statement, so each column is its own `ALTER TABLE`.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

const COUNTERS: [Calls; 4] = [
    Calls::CallerSdpMessages,
    Calls::CallerIceMessages,
    Calls::CalleeSdpMessages,
    Calls::CalleeIceMessages,
];
const TIMES: [Calls; 2] = [Calls::FirstSignalAt, Calls::LastSignalAt];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for col in COUNTERS {
            manager
                .alter_table(
                    Table::alter()
                        .table(Calls::Table)
                        .add_column(integer(col).default(0))
                        .to_owned(),
                )
                .await?;
        }
        for col in TIMES {
            manager
                .alter_table(
                    Table::alter()
                        .table(Calls::Table)
                        .add_column(timestamp_with_time_zone_null(col))
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("idx_signaling_created_at")
                    .table(SignalingMessages::Table)
                    .col(SignalingMessages::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_signaling_created_at")
                    .table(SignalingMessages::Table)
                    .to_owned(),
            )
            .await?;
        for col in COUNTERS.into_iter().chain(TIMES) {
            manager
                .alter_table(
                    Table::alter()
                        .table(Calls::Table)
                        .drop_column(col)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum Calls {
    Table,
    CallerSdpMessages,
    CallerIceMessages,
    CalleeSdpMessages,
    CalleeIceMessages,
    FirstSignalAt,
    LastSignalAt,
}

#[derive(DeriveIden)]
enum SignalingMessages {
    Table,
    CreatedAt,
}
