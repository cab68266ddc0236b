//! `signaling_messages`: one metadata row per relayed `sdp`/`ice` message. Never the SDP or
//! candidate text: only who sent what kind of message in which call, and when.

use sea_orm::entity::prelude::*;

/// Kind of relayed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(8))")]
pub enum SignalingKind {
    /// A session description (offer or answer).
    #[sea_orm(string_value = "SDP")]
    Sdp,
    /// An ICE candidate (or end-of-candidates).
    #[sea_orm(string_value = "ICE")]
    Ice,
}

/// Metadata of one relayed message.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "signaling_messages")]
pub struct Model {
    /// The event's UUID, assigned when relayed; makes retried writes idempotent.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The call the message belongs to.
    pub call_id: Uuid,
    /// The authenticated sender (never a client-supplied field).
    pub sender_id: Uuid,
    /// `SDP` or `ICE`.
    #[sea_orm(column_name = "type")]
    pub kind: SignalingKind,
    /// When the server relayed it.
    pub created_at: DateTimeUtc,
}

/// Relations of `signaling_messages`.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The call.
    #[sea_orm(
        belongs_to = "super::calls::Entity",
        from = "Column::CallId",
        to = "super::calls::Column::Id",
        on_delete = "Cascade"
    )]
    Call,
}

impl ActiveModelBehavior for ActiveModel {}
