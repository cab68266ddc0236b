//! Creates `calls` with its status check and the indexes call history needs (by caller and by
//! callee, newest first) and the one crash recovery needs (unfinished calls of an instance).

use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261125_000001_create_users::Users;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Calls::Table)
                    .col(pk_uuid(Calls::Id))
                    .col(uuid(Calls::CallerId))
                    .col(uuid(Calls::CalleeId))
                    .col(string_len(Calls::Status, 16).check((
                        "ck_calls_status",
                        Expr::col(Calls::Status).is_in(["created", "active", "ended"]),
                    )))
                    .col(string_len_null(Calls::EndReason, 32))
                    .col(timestamp_with_time_zone(Calls::CreatedAt))
                    .col(timestamp_with_time_zone_null(Calls::AnsweredAt))
                    .col(timestamp_with_time_zone_null(Calls::EndedAt))
                    .col(string_len(Calls::InstanceId, 64))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_calls_caller")
                            .from(Calls::Table, Calls::CallerId)
                            .to(Users::Table, Users::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_calls_callee")
                            .from(Calls::Table, Calls::CalleeId)
                            .to(Users::Table, Users::Id),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, col) in [
            ("idx_calls_caller_time", Calls::CallerId),
            ("idx_calls_callee_time", Calls::CalleeId),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(Calls::Table)
                        .col(col)
                        .col(Calls::CreatedAt)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("idx_calls_instance_status")
                    .table(Calls::Table)
                    .col(Calls::InstanceId)
                    .col(Calls::Status)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Calls::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden, Clone, Copy)]
pub(crate) enum Calls {
    Table,
    Id,
    CallerId,
    CalleeId,
    Status,
    EndReason,
    CreatedAt,
    AnsweredAt,
    EndedAt,
    InstanceId,
}
