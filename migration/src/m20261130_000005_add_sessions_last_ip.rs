//! Adds `sessions.last_ip`: the address a session was last used from, for the sessions list
//! (login, refresh, authenticated requests and socket handshakes write it). Nullable: rows from
//! before this migration have none until their next use.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

/// Longest textual IP address (an IPv6 address with an embedded IPv4 one).
const IP_TEXT_MAX: u32 = 45;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Sessions::Table)
                    .add_column(string_len_null(Sessions::LastIp, IP_TEXT_MAX))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Sessions::Table)
                    .drop_column(Sessions::LastIp)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Sessions {
    Table,
    LastIp,
}
