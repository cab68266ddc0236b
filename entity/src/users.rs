//! `users`: one row per account. The username is stored lower-case and is unique.

use sea_orm::entity::prelude::*;

/// A registered account.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    /// UUID v4 primary key.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Lower-case, validated username (3..32 of `[a-z0-9_.-]`).
    #[sea_orm(unique)]
    pub username: String,
    /// Argon2id PHC string; never leaves the server.
    pub password_hash: String,
    /// When the account was registered.
    pub created_at: DateTimeUtc,
}

/// Relations of `users`.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// Login sessions of the user.
    #[sea_orm(has_many = "super::sessions::Entity")]
    Sessions,
}

impl Related<super::sessions::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Sessions.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
