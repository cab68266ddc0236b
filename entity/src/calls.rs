//! `calls`: one row per call. Its status only moves forward (`created → active → ended`); the
//! server's writes are guarded so a late or repeated event cannot move it back.

use sea_orm::entity::prelude::*;

/// Lifecycle state of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum CallStatus {
    /// Invited, not (yet) answered.
    #[sea_orm(string_value = "created")]
    Created,
    /// Answered; media may flow.
    #[sea_orm(string_value = "active")]
    Active,
    /// Finished, with an `end_reason`.
    #[sea_orm(string_value = "ended")]
    Ended,
}

/// One call between two users.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "calls")]
pub struct Model {
    /// UUID v4 primary key; the `call_id` of the signaling protocol.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The inviting user.
    pub caller_id: Uuid,
    /// The invited user.
    pub callee_id: Uuid,
    /// `created`, `active` or `ended`.
    pub status: CallStatus,
    /// A `call.ended` reason once ended, else null.
    pub end_reason: Option<String>,
    /// When the invite was accepted by the server.
    pub created_at: DateTimeUtc,
    /// When the callee answered.
    pub answered_at: Option<DateTimeUtc>,
    /// When the call ended.
    pub ended_at: Option<DateTimeUtc>,
    /// The server instance that owns the call; crash recovery only ends its own calls.
    pub instance_id: String,
    /// `sdp` messages the caller sent (relayed) in this call.
    pub caller_sdp_messages: i32,
    /// `ice` messages the caller sent.
    pub caller_ice_messages: i32,
    /// `sdp` messages the callee sent.
    pub callee_sdp_messages: i32,
    /// `ice` messages the callee sent.
    pub callee_ice_messages: i32,
    /// When the first `sdp`/`ice` of the call was relayed; null if none was.
    pub first_signal_at: Option<DateTimeUtc>,
    /// When the last one was relayed.
    pub last_signal_at: Option<DateTimeUtc>,
}

/// Relations of `calls`.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The caller.
    #[sea_orm(
        belongs_to = "super::users::Entity",
        from = "Column::CallerId",
        to = "super::users::Column::Id"
    )]
    Caller,
    /// The callee.
    #[sea_orm(
        belongs_to = "super::users::Entity",
        from = "Column::CalleeId",
        to = "super::users::Column::Id"
    )]
    Callee,
}

impl ActiveModelBehavior for ActiveModel {}
