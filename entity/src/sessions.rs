//! `sessions`: server-side login sessions. Access tokens name their session, so revoking a row
//! invalidates every token and socket bound to it.

use sea_orm::entity::prelude::*;

/// One login session.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "sessions")]
pub struct Model {
    /// UUID v4 primary key; the `session_id` claim of access tokens.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Owner of the session.
    pub user_id: Uuid,
    /// SHA-256 (hex) of the current, unspent refresh token; the token itself is never stored.
    pub refresh_token_hash: String,
    /// When the user logged in.
    pub created_at: DateTimeUtc,
    /// Last authenticated use (request, refresh or socket handshake).
    pub last_seen_at: DateTimeUtc,
    /// Absolute end of the session, whatever the refreshes.
    pub expires_at: DateTimeUtc,
    /// Set once when the session is revoked (logout, delete, refresh-token reuse).
    pub revoked_at: Option<DateTimeUtc>,
    /// `User-Agent` of the login request, truncated, for the sessions list.
    pub user_agent: Option<String>,
    /// The client address of the session's last use (login, refresh, request or socket
    /// handshake), as the server derives it (`server.trust_forwarded_for`).
    pub last_ip: Option<String>,
}

/// Relations of `sessions`.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The owning user.
    #[sea_orm(
        belongs_to = "super::users::Entity",
        from = "Column::UserId",
        to = "super::users::Column::Id",
        on_delete = "Cascade"
    )]
    User,
}

impl Related<super::users::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::User.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
