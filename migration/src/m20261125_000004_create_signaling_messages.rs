//! Creates `signaling_messages` (metadata only: never SDP or candidate text).

use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261125_000001_create_users::Users;
use crate::m20261125_000003_create_calls::Calls;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(SignalingMessages::Table)
                    .col(pk_uuid(SignalingMessages::Id))
                    .col(uuid(SignalingMessages::CallId))
                    .col(uuid(SignalingMessages::SenderId))
                    .col(string_len(SignalingMessages::Type, 8).check((
                        "ck_signaling_type",
                        Expr::col(SignalingMessages::Type).is_in(["SDP", "ICE"]),
                    )))
                    .col(timestamp_with_time_zone(SignalingMessages::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_signaling_call")
                            .from(SignalingMessages::Table, SignalingMessages::CallId)
                            .to(Calls::Table, Calls::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_signaling_sender")
                            .from(SignalingMessages::Table, SignalingMessages::SenderId)
                            .to(Users::Table, Users::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_signaling_call")
                    .table(SignalingMessages::Table)
                    .col(SignalingMessages::CallId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(SignalingMessages::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum SignalingMessages {
    Table,
    Id,
    CallId,
    SenderId,
    Type,
    CreatedAt,
}
