//! Queries on `calls` and `signaling_messages`: the idempotent event writes used by the
//! persistence actor, crash recovery, and call history.
//!
//! Every write is safe to repeat: inserts ignore an existing id, and status updates are guarded
//! so a call only moves forward (`created → active → ended`).

use chrono::{DateTime, Utc};
use entity::calls::{self, CallStatus};
use entity::signaling_messages::{self, SignalingKind};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use serde::Serialize;
use uuid::Uuid;

use super::StoreError;
use crate::domain::{CallId, UserId};

/// One call lifecycle or signaling event, as queued by the persistence actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEvent {
    /// The server accepted an invite.
    Created {
        /// The call.
        call_id: CallId,
        /// Inviter.
        caller: UserId,
        /// Invitee.
        callee: UserId,
        /// Server instance owning the call.
        instance_id: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The callee answered.
    Accepted {
        /// The call.
        call_id: CallId,
        /// When.
        at: DateTime<Utc>,
    },
    /// The call ended.
    Ended {
        /// The call.
        call_id: CallId,
        /// A `call.ended` reason.
        reason: &'static str,
        /// When.
        at: DateTime<Utc>,
    },
    /// An `sdp`/`ice` message was relayed (metadata only).
    Signal {
        /// The event's id (primary key of the row, for idempotency).
        id: Uuid,
        /// The call.
        call_id: CallId,
        /// Authenticated sender.
        sender: UserId,
        /// SDP or ICE.
        kind: SignalingKind,
        /// When.
        at: DateTime<Utc>,
    },
}

/// Applies one event; repeating it changes nothing.
pub async fn apply(db: &impl ConnectionTrait, event: &CallEvent) -> Result<(), StoreError> {
    match event {
        CallEvent::Created {
            call_id,
            caller,
            callee,
            instance_id,
            at,
        } => {
            let model = calls::ActiveModel {
                id: Set(call_id.0),
                caller_id: Set(caller.0),
                callee_id: Set(callee.0),
                status: Set(CallStatus::Created),
                end_reason: Set(None),
                created_at: Set(*at),
                answered_at: Set(None),
                ended_at: Set(None),
                instance_id: Set(instance_id.clone()),
            };
            calls::Entity::insert(model)
                .on_conflict(
                    OnConflict::column(calls::Column::Id)
                        .do_nothing()
                        .to_owned(),
                )
                .exec_without_returning(db)
                .await?;
        }
        CallEvent::Accepted { call_id, at } => {
            calls::Entity::update_many()
                .col_expr(calls::Column::Status, Expr::value(CallStatus::Active))
                .col_expr(calls::Column::AnsweredAt, Expr::value(*at))
                .filter(calls::Column::Id.eq(call_id.0))
                .filter(calls::Column::Status.eq(CallStatus::Created))
                .exec(db)
                .await?;
        }
        CallEvent::Ended {
            call_id,
            reason,
            at,
        } => {
            mark_ended(reason, *at)
                .filter(calls::Column::Id.eq(call_id.0))
                .exec(db)
                .await?;
        }
        CallEvent::Signal { .. } => insert_signals(db, std::slice::from_ref(event)).await?,
    }
    Ok(())
}

/// Rows per multi-row insert of signaling metadata (5 parameters each; well under every
/// backend's bind-parameter limit).
const SIGNAL_ROWS_PER_INSERT: usize = 500;

/// Applies events in order. Runs of consecutive signaling-metadata events become one multi-row
/// insert each (they are by far the most numerous), so a batch costs a few statements, not one
/// per relayed message. Idempotent like [`apply`].
pub async fn apply_all(db: &impl ConnectionTrait, events: &[CallEvent]) -> Result<(), StoreError> {
    let mut rest = events;
    while let Some(first) = rest.first() {
        let run = rest
            .iter()
            .take(SIGNAL_ROWS_PER_INSERT)
            .take_while(|e| matches!(e, CallEvent::Signal { .. }))
            .count();
        if run == 0 {
            apply(db, first).await?;
            rest = &rest[1..];
            continue;
        }
        insert_signals(db, &rest[..run]).await?;
        rest = &rest[run..];
    }
    Ok(())
}

/// One multi-row insert of the signaling-metadata events among `events`; existing ids are
/// left alone.
async fn insert_signals(db: &impl ConnectionTrait, events: &[CallEvent]) -> Result<(), StoreError> {
    signaling_messages::Entity::insert_many(events.iter().flat_map(signal_row))
        .on_conflict(
            OnConflict::column(signaling_messages::Column::Id)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// Ends the calls the caller filters for, unless already ended (status only moves forward).
fn mark_ended(reason: &str, at: DateTime<Utc>) -> sea_orm::UpdateMany<calls::Entity> {
    calls::Entity::update_many()
        .col_expr(calls::Column::Status, Expr::value(CallStatus::Ended))
        .col_expr(calls::Column::EndReason, Expr::value(reason.to_string()))
        .col_expr(calls::Column::EndedAt, Expr::value(at))
        .filter(calls::Column::Status.ne(CallStatus::Ended))
}

/// The row of a signaling-metadata event (nothing for other events).
fn signal_row(event: &CallEvent) -> Option<signaling_messages::ActiveModel> {
    match event {
        CallEvent::Signal {
            id,
            call_id,
            sender,
            kind,
            at,
        } => Some(signaling_messages::ActiveModel {
            id: Set(*id),
            call_id: Set(call_id.0),
            sender_id: Set(sender.0),
            kind: Set(*kind),
            created_at: Set(*at),
        }),
        _ => None,
    }
}

/// Ends every call this instance left `created` or `active` (crash recovery). Returns how many.
pub async fn end_unfinished(
    db: &impl ConnectionTrait,
    instance_id: &str,
    reason: &str,
) -> Result<u64, StoreError> {
    let res = mark_ended(reason, Utc::now())
        .filter(calls::Column::InstanceId.eq(instance_id))
        .exec(db)
        .await?;
    Ok(res.rows_affected)
}

/// A party as shown in history.
#[derive(Debug, Clone, Serialize)]
pub struct PartyView {
    /// User id.
    pub id: Uuid,
    /// Username.
    pub username: String,
}

/// The contract's `call` object.
#[derive(Debug, Clone, Serialize)]
pub struct CallView {
    /// Call id.
    pub id: Uuid,
    /// Inviter.
    pub caller: PartyView,
    /// Invitee.
    pub callee: PartyView,
    /// `created`, `active` or `ended`.
    pub status: &'static str,
    /// Null until ended.
    pub end_reason: Option<String>,
    /// Invite time.
    pub created_at: DateTime<Utc>,
    /// Answer time.
    pub answered_at: Option<DateTime<Utc>>,
    /// End time.
    pub ended_at: Option<DateTime<Utc>>,
    /// From answer to end; null if never answered or not yet ended.
    pub duration_ms: Option<i64>,
}

fn status_str(s: CallStatus) -> &'static str {
    match s {
        CallStatus::Created => "created",
        CallStatus::Active => "active",
        CallStatus::Ended => "ended",
    }
}

async fn render(
    db: &impl ConnectionTrait,
    rows: Vec<calls::Model>,
) -> Result<Vec<CallView>, StoreError> {
    let names =
        super::users::names(db, rows.iter().flat_map(|c| [c.caller_id, c.callee_id])).await?;
    let party = |id: Uuid| PartyView {
        id,
        username: names.get(&id).cloned().unwrap_or_default(),
    };
    Ok(rows
        .into_iter()
        .map(|c| CallView {
            id: c.id,
            caller: party(c.caller_id),
            callee: party(c.callee_id),
            status: status_str(c.status),
            duration_ms: match (c.answered_at, c.ended_at) {
                (Some(a), Some(e)) => Some((e - a).num_milliseconds().max(0)),
                _ => None,
            },
            end_reason: c.end_reason,
            created_at: c.created_at,
            answered_at: c.answered_at,
            ended_at: c.ended_at,
        })
        .collect())
}

fn involving(user: UserId) -> Condition {
    Condition::any()
        .add(calls::Column::CallerId.eq(user.0))
        .add(calls::Column::CalleeId.eq(user.0))
}

/// The user's calls, newest first, optionally strictly older than the call `before`.
/// `Ok(None)` when `before` is not one of the user's calls.
pub async fn list_for_user(
    db: &impl ConnectionTrait,
    user: UserId,
    limit: u64,
    before: Option<CallId>,
) -> Result<Option<Vec<CallView>>, StoreError> {
    let mut query = calls::Entity::find().filter(involving(user));
    if let Some(before) = before {
        let Some(anchor) = calls::Entity::find_by_id(before.0)
            .filter(involving(user))
            .one(db)
            .await?
        else {
            return Ok(None);
        };
        query = query.filter(
            Condition::any()
                .add(calls::Column::CreatedAt.lt(anchor.created_at))
                .add(
                    Condition::all()
                        .add(calls::Column::CreatedAt.eq(anchor.created_at))
                        .add(calls::Column::Id.lt(anchor.id)),
                ),
        );
    }
    let rows = query
        .order_by_desc(calls::Column::CreatedAt)
        .order_by_desc(calls::Column::Id)
        .limit(limit)
        .all(db)
        .await?;
    Ok(Some(render(db, rows).await?))
}

/// One call, if `user` took part in it.
pub async fn get_for_user(
    db: &impl ConnectionTrait,
    user: UserId,
    id: CallId,
) -> Result<Option<CallView>, StoreError> {
    let row = calls::Entity::find_by_id(id.0)
        .filter(involving(user))
        .one(db)
        .await?;
    Ok(match row {
        Some(r) => render(db, vec![r]).await?.pop(),
        None => None,
    })
}
