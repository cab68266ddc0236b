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
use std::collections::HashMap;
use uuid::Uuid;

use super::StoreError;
use crate::domain::{CallId, UserId};

/// Signaling counters of one call, as recorded on its `calls` row: how many `sdp` and `ice`
/// messages each party sent (relayed by the server), and when the first and last were relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SignalSummary {
    /// `sdp` messages from the caller.
    pub caller_sdp: u32,
    /// `ice` messages from the caller.
    pub caller_ice: u32,
    /// `sdp` messages from the callee.
    pub callee_sdp: u32,
    /// `ice` messages from the callee.
    pub callee_ice: u32,
    /// First relayed message.
    pub first_at: Option<DateTime<Utc>>,
    /// Last relayed message.
    pub last_at: Option<DateTime<Utc>>,
}

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
    /// The call's signaling counters (absolute values, recorded when the call ends; a later
    /// summary replaces an earlier one).
    Signals {
        /// The call.
        call_id: CallId,
        /// The counters.
        summary: SignalSummary,
    },
    /// An `sdp`/`ice` message was relayed (metadata only; opt-in, see
    /// `persistence.log_signaling`).
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

impl CallEvent {
    /// The call the event belongs to.
    pub fn call_id(&self) -> CallId {
        match self {
            CallEvent::Created { call_id, .. }
            | CallEvent::Accepted { call_id, .. }
            | CallEvent::Ended { call_id, .. }
            | CallEvent::Signals { call_id, .. }
            | CallEvent::Signal { call_id, .. } => *call_id,
        }
    }
}

/// Applies one event; repeating it changes nothing.
pub async fn apply(db: &impl ConnectionTrait, event: &CallEvent) -> Result<(), StoreError> {
    apply_all(db, std::slice::from_ref(event)).await
}

/// Rows per multi-row statement: at most 7 bind parameters per call in a `CASE` update and 15
/// per inserted call, well under SQLite's 32,766 and PostgreSQL's 65,535 parameter limits.
const ROWS_PER_STATEMENT: usize = 500;

/// What a batch says about one call, folded in event order with the same rules as the guarded
/// single-event writes: the first `accepted` and the first `ended` win, an `accepted` after
/// `ended` is stale, the last counters summary wins.
#[derive(Default)]
struct Folded {
    created: Option<(UserId, UserId, String, DateTime<Utc>)>,
    accepted: Option<DateTime<Utc>>,
    ended: Option<(&'static str, DateTime<Utc>)>,
    signals: Option<SignalSummary>,
}

impl Folded {
    fn add(&mut self, event: &CallEvent) {
        match event {
            CallEvent::Created {
                caller,
                callee,
                instance_id,
                at,
                ..
            } => {
                self.created
                    .get_or_insert_with(|| (*caller, *callee, instance_id.clone(), *at));
            }
            CallEvent::Accepted { at, .. } if self.ended.is_none() => {
                self.accepted.get_or_insert(*at);
            }
            CallEvent::Accepted { .. } => {}
            CallEvent::Ended { reason, at, .. } => {
                self.ended.get_or_insert((reason, *at));
            }
            CallEvent::Signals { summary, .. } => self.signals = Some(*summary),
            CallEvent::Signal { .. } => {}
        }
    }
}

/// Applies a batch of events; idempotent like [`apply`], and as if each event were applied in
/// order. Instead of one statement per event, a batch costs a handful of multi-row statements:
/// events are folded per call; calls created in the batch are inserted with their final state
/// in one multi-row insert; the remaining answers, ends and counters become one guarded
/// `UPDATE … SET col = CASE id WHEN … END WHERE id IN (…)` each; metadata rows one multi-row
/// insert. (A call created in the batch whose row already exists — a retried batch that had
/// committed — gets the updates too.)
pub async fn apply_all(db: &impl ConnectionTrait, events: &[CallEvent]) -> Result<(), StoreError> {
    let mut order: Vec<CallId> = Vec::new();
    let mut folded: HashMap<CallId, Folded> = HashMap::new();
    for e in events {
        if matches!(e, CallEvent::Signal { .. }) {
            continue;
        }
        folded
            .entry(e.call_id())
            .or_insert_with(|| {
                order.push(e.call_id());
                Folded::default()
            })
            .add(e);
    }
    let created: Vec<(CallId, &Folded)> = order
        .iter()
        .map(|id| (*id, &folded[id]))
        .filter(|(_, f)| f.created.is_some())
        .collect();
    let mut inserted = 0;
    for chunk in created.chunks(ROWS_PER_STATEMENT) {
        inserted +=
            calls::Entity::insert_many(chunk.iter().filter_map(|(id, f)| created_row(*id, f)))
                .on_conflict(
                    OnConflict::column(calls::Column::Id)
                        .do_nothing()
                        .to_owned(),
                )
                .exec_without_returning(db)
                .await?;
    }
    // Every created call was inserted with its final state: only the others need updates.
    let all_inserted = inserted == created.len() as u64;
    let rest: Vec<(CallId, &Folded)> = order
        .iter()
        .map(|id| (*id, &folded[id]))
        .filter(|(_, f)| !(all_inserted && f.created.is_some()))
        .collect();
    update_accepted(db, &rest).await?;
    update_signals(db, &rest).await?;
    update_ended(db, &rest).await?;
    let signals: Vec<&CallEvent> = events
        .iter()
        .filter(|e| matches!(e, CallEvent::Signal { .. }))
        .collect();
    for chunk in signals.chunks(ROWS_PER_STATEMENT) {
        insert_signals(db, chunk).await?;
    }
    Ok(())
}

/// The `calls` row of a call created in this batch, with the final state the batch gives it.
fn created_row(id: CallId, f: &Folded) -> Option<calls::ActiveModel> {
    let (caller, callee, instance_id, created_at) = f.created.clone()?;
    let status = match (f.accepted, f.ended) {
        (_, Some(_)) => CallStatus::Ended,
        (Some(_), None) => CallStatus::Active,
        (None, None) => CallStatus::Created,
    };
    let s = f.signals.unwrap_or_default();
    Some(calls::ActiveModel {
        id: Set(id.0),
        caller_id: Set(caller.0),
        callee_id: Set(callee.0),
        status: Set(status),
        end_reason: Set(f.ended.map(|(r, _)| r.to_string())),
        created_at: Set(created_at),
        answered_at: Set(f.accepted),
        ended_at: Set(f.ended.map(|(_, at)| at)),
        instance_id: Set(instance_id),
        caller_sdp_messages: Set(count(s.caller_sdp)),
        caller_ice_messages: Set(count(s.caller_ice)),
        callee_sdp_messages: Set(count(s.callee_sdp)),
        callee_ice_messages: Set(count(s.callee_ice)),
        first_signal_at: Set(s.first_at),
        last_signal_at: Set(s.last_at),
    })
}

/// A counter as stored (a 32-bit signed column; saturates).
fn count(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// `CASE id WHEN <id> THEN <value> … ELSE <column> END` over `rows`.
fn case_by_id<T: Into<sea_orm::Value>>(
    col: calls::Column,
    rows: impl Iterator<Item = (CallId, T)>,
) -> Expr {
    let mut case = sea_orm::sea_query::CaseStatement::new();
    for (id, v) in rows {
        case = case.case(calls::Column::Id.eq(id.0), Expr::value(v));
    }
    case.finally(Expr::col(col)).into()
}

/// Answered calls among `rows`: `created → active` with `answered_at`.
async fn update_accepted(
    db: &impl ConnectionTrait,
    rows: &[(CallId, &Folded)],
) -> Result<(), StoreError> {
    let rows: Vec<(CallId, DateTime<Utc>)> = rows
        .iter()
        .filter_map(|(id, f)| Some((*id, f.accepted?)))
        .collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        calls::Entity::update_many()
            .col_expr(calls::Column::Status, Expr::value(CallStatus::Active))
            .col_expr(
                calls::Column::AnsweredAt,
                case_by_id(calls::Column::AnsweredAt, chunk.iter().copied()),
            )
            .filter(calls::Column::Id.is_in(chunk.iter().map(|(id, _)| id.0)))
            .filter(calls::Column::Status.eq(CallStatus::Created))
            .exec(db)
            .await?;
    }
    Ok(())
}

/// Counters of the calls among `rows` that have a summary (absolute values: no guard needed).
async fn update_signals(
    db: &impl ConnectionTrait,
    rows: &[(CallId, &Folded)],
) -> Result<(), StoreError> {
    let rows: Vec<(CallId, SignalSummary)> = rows
        .iter()
        .filter_map(|(id, f)| Some((*id, f.signals?)))
        .collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let col = |c: calls::Column, f: fn(&SignalSummary) -> u32| {
            case_by_id(c, chunk.iter().map(move |(id, s)| (*id, count(f(s)))))
        };
        calls::Entity::update_many()
            .col_expr(
                calls::Column::CallerSdpMessages,
                col(calls::Column::CallerSdpMessages, |s| s.caller_sdp),
            )
            .col_expr(
                calls::Column::CallerIceMessages,
                col(calls::Column::CallerIceMessages, |s| s.caller_ice),
            )
            .col_expr(
                calls::Column::CalleeSdpMessages,
                col(calls::Column::CalleeSdpMessages, |s| s.callee_sdp),
            )
            .col_expr(
                calls::Column::CalleeIceMessages,
                col(calls::Column::CalleeIceMessages, |s| s.callee_ice),
            )
            .col_expr(
                calls::Column::FirstSignalAt,
                case_by_id(
                    calls::Column::FirstSignalAt,
                    chunk.iter().map(|(id, s)| (*id, s.first_at)),
                ),
            )
            .col_expr(
                calls::Column::LastSignalAt,
                case_by_id(
                    calls::Column::LastSignalAt,
                    chunk.iter().map(|(id, s)| (*id, s.last_at)),
                ),
            )
            .filter(calls::Column::Id.is_in(chunk.iter().map(|(id, _)| id.0)))
            .exec(db)
            .await?;
    }
    Ok(())
}

/// Ended calls among `rows` (unless already ended: the first end wins).
async fn update_ended(
    db: &impl ConnectionTrait,
    rows: &[(CallId, &Folded)],
) -> Result<(), StoreError> {
    let rows: Vec<(CallId, (&'static str, DateTime<Utc>))> = rows
        .iter()
        .filter_map(|(id, f)| Some((*id, f.ended?)))
        .collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        calls::Entity::update_many()
            .col_expr(calls::Column::Status, Expr::value(CallStatus::Ended))
            .col_expr(
                calls::Column::EndReason,
                case_by_id(
                    calls::Column::EndReason,
                    chunk.iter().map(|(id, (r, _))| (*id, r.to_string())),
                ),
            )
            .col_expr(
                calls::Column::EndedAt,
                case_by_id(
                    calls::Column::EndedAt,
                    chunk.iter().map(|(id, (_, at))| (*id, *at)),
                ),
            )
            .filter(calls::Column::Id.is_in(chunk.iter().map(|(id, _)| id.0)))
            .filter(calls::Column::Status.ne(CallStatus::Ended))
            .exec(db)
            .await?;
    }
    Ok(())
}

/// One multi-row insert of the signaling-metadata events among `events`; existing ids are
/// left alone.
async fn insert_signals(
    db: &impl ConnectionTrait,
    events: &[&CallEvent],
) -> Result<(), StoreError> {
    signaling_messages::Entity::insert_many(events.iter().copied().flat_map(signal_row))
        .on_conflict(
            OnConflict::column(signaling_messages::Column::Id)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// Deletes signaling-metadata rows older than `before` (the retention sweep,
/// `persistence.signaling_retention_secs`). Returns how many.
pub async fn prune_signals(
    db: &impl ConnectionTrait,
    before: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let res = signaling_messages::Entity::delete_many()
        .filter(signaling_messages::Column::CreatedAt.lt(before))
        .exec(db)
        .await?;
    Ok(res.rows_affected)
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
    /// Signaling counters (extension, docs/protocol.md); zero until the call ends.
    pub signaling: SignalingView,
}

/// Messages one party sent.
#[derive(Debug, Clone, Serialize)]
pub struct PartySignaling {
    /// `sdp` messages.
    pub sdp: i32,
    /// `ice` messages.
    pub ice: i32,
}

/// A call's signaling counters as shown in history.
#[derive(Debug, Clone, Serialize)]
pub struct SignalingView {
    /// Sent by the caller.
    pub caller: PartySignaling,
    /// Sent by the callee.
    pub callee: PartySignaling,
    /// First relayed message; null if none.
    pub first_at: Option<DateTime<Utc>>,
    /// Last relayed message; null if none.
    pub last_at: Option<DateTime<Utc>>,
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
            signaling: SignalingView {
                caller: PartySignaling {
                    sdp: c.caller_sdp_messages,
                    ice: c.caller_ice_messages,
                },
                callee: PartySignaling {
                    sdp: c.callee_sdp_messages,
                    ice: c.callee_ice_messages,
                },
                first_at: c.first_signal_at,
                last_at: c.last_signal_at,
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
