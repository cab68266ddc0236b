//! The call actor: one per call, owning the call state machine of contract §2.2.
//!
//! `ringing` → (accept) → `active` → ended, or ringing → ended by reject, cancel, ring timeout
//! (`missed`) or a lost party. It tells every connection that learnt of the call how it ended,
//! records each lifecycle event with the persistence actor, relays `sdp`/`ice` between the two
//! party connections only (with `from` set by the server, content untouched), then stops.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::Duration;

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::value::RawValue;

use super::ConnRef;
use super::connection::{ConnectionMsg, Pairing};
use super::persistence::PersistenceHandle;
use super::registry::{self, CallEntryInfo, RegistryMsg};
use crate::domain::{CallId, ConnectionId, UserRef};
use crate::metrics::Metrics;
use crate::store::calls::{CallEvent, SignalSummary};
use crate::ws::protocol::{EndCause, EndReason, ErrorCode, ServerMessage};
use entity::signaling_messages::SignalingKind;

/// Signaling counters of one call, shared by its call actor and, once it is answered, its two
/// paired connections (which relay directly): one atomic add and one clock read per relayed
/// message, no allocation, no lock. Read once when the call ends and recorded on its `calls`
/// row ([`CallEvent::Signals`]).
#[derive(Debug, Default)]
pub struct SignalCounts {
    /// caller sdp, caller ice, callee sdp, callee ice.
    counts: [AtomicU32; 4],
    /// Unix milliseconds of the first relayed message; 0 = none yet.
    first_ms: AtomicI64,
    /// Unix milliseconds of the last relayed message.
    last_ms: AtomicI64,
}

impl SignalCounts {
    /// Counts one relayed message of `kind`, sent by the caller (`from_caller`) or the callee.
    pub fn count(&self, from_caller: bool, kind: SignalingKind) {
        let i = usize::from(!from_caller) * 2 + usize::from(kind == SignalingKind::Ice);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        // The wall clock as Unix milliseconds straight from the system (no calendar conversion,
        // as `Utc::now()` would do, on the relay path).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let _ = self
            .first_ms
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        self.last_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// The counters now; `None` when nothing was relayed.
    pub fn summary(&self) -> Option<SignalSummary> {
        let at = |ms: i64| chrono::DateTime::<Utc>::from_timestamp_millis(ms);
        let first = self.first_ms.load(Ordering::Relaxed);
        if first == 0 {
            return None;
        }
        let n = |i: usize| self.counts[i].load(Ordering::Relaxed);
        Some(SignalSummary {
            caller_sdp: n(0),
            caller_ice: n(1),
            callee_sdp: n(2),
            callee_ice: n(3),
            first_at: at(first),
            last_at: at(self.last_ms.load(Ordering::Relaxed)),
        })
    }
}

/// What a party asks of the call.
#[derive(Debug)]
pub enum CallAction {
    /// Answer (callee).
    Accept,
    /// Decline (callee), with the cause it gave.
    Reject(Option<EndCause>),
    /// End or cancel, with the cause it gave.
    Hangup(Option<EndCause>),
    /// Relay a session description.
    Sdp(Box<RawValue>),
    /// Relay an ICE candidate.
    Ice(Box<RawValue>),
}

/// Messages of the call actor.
pub enum CallMsg {
    /// A client action, from the connection `from`.
    Client {
        /// Sender (authenticated by its connection).
        from: ConnRef,
        /// What it asks.
        action: CallAction,
        /// The message's `ref`.
        reference: Option<String>,
    },
    /// Nobody answered in time.
    RingTimeout,
    /// A party's socket dropped (it may resume).
    PartyDetached(ConnectionId),
    /// A party's socket came back.
    PartyAttached(ConnectionId),
    /// A connection is gone for good; if the call cannot go on without it, it ends with this
    /// reason (`connection_lost`, or `left` for a deliberate close).
    PartyGone(ConnectionId, EndReason),
    /// A device of the callee appeared while the call rings (new socket, or a reloaded page
    /// that took its connection over): it gets `call.incoming`.
    DeviceJoined(ConnRef),
    /// End now with `reason` (shutdown); replies once the `call.ended` messages are queued.
    End(EndReason, Option<RpcReplyPort<()>>),
    /// Tell the (restarted) registry about this call.
    Reannounce,
    /// Make this actor panic (test builds only), to exercise supervision.
    #[cfg(feature = "test-hooks")]
    Panic,
}

/// Fixed configuration of a call actor.
pub struct CallArgs {
    /// Call id.
    pub id: CallId,
    /// The inviting connection.
    pub caller: ConnRef,
    /// The invited user.
    pub callee: UserRef,
    /// The callee's connections, all told of the call.
    pub callee_conns: Vec<ConnRef>,
    /// The invite's `ref`, echoed in `call.created`.
    pub invite_ref: Option<String>,
    /// Ring time before `missed`.
    pub ring_timeout: Duration,
    /// This server instance (recorded with the call).
    pub instance_id: String,
    /// Tree id (registry lookup).
    pub system_id: String,
    /// Event sink.
    pub persistence: PersistenceHandle,
    /// Metrics.
    pub metrics: std::sync::Arc<Metrics>,
    /// Test builds only: tamper with SDP relayed to this username.
    #[cfg(feature = "test-hooks")]
    pub tamper_fingerprint_to: Option<String>,
}

#[derive(Debug)]
enum Phase {
    Ringing,
    Active { callee: ConnRef },
}

/// State of a call actor.
pub struct CallState {
    id: CallId,
    caller: ConnRef,
    callee: UserRef,
    ringing: Vec<ConnRef>,
    phase: Phase,
    detached: HashSet<ConnectionId>,
    system_id: String,
    persistence: PersistenceHandle,
    metrics: std::sync::Arc<Metrics>,
    counts: Arc<SignalCounts>,
    #[cfg(feature = "test-hooks")]
    tamper_fingerprint_to: Option<String>,
}

/// The call actor.
pub struct Call;

impl CallState {
    /// Whether the parties of the answered call relay to each other directly. Test builds that
    /// tamper with relayed SDP keep the relay in the call actor, where the tampering happens.
    fn direct_relay(&self) -> bool {
        #[cfg(feature = "test-hooks")]
        if self.tamper_fingerprint_to.is_some() {
            return false;
        }
        true
    }
}

impl CallState {
    fn err(&self, to: &ConnRef, code: ErrorCode, message: &str, reference: Option<String>) {
        to.send(ServerMessage::error(
            code,
            message,
            reference,
            Some(self.id),
        ));
    }

    /// The other party of an active call, if `conn` is one of the two.
    fn peer_of(&self, conn: ConnectionId) -> Option<&ConnRef> {
        match &self.phase {
            Phase::Active { callee } if conn == self.caller.id => Some(callee),
            Phase::Active { callee } if conn == callee.id => Some(&self.caller),
            _ => None,
        }
    }

    fn entry(&self) -> CallEntryInfo {
        CallEntryInfo {
            call_id: self.id,
            caller: self.caller.clone(),
            callee: self.callee.clone(),
            callee_conn: match &self.phase {
                Phase::Active { callee } => Some(callee.id),
                Phase::Ringing => None,
            },
        }
    }

    /// Tells everyone who knew of the call, records the end, frees the users, stops.
    fn end(&mut self, me: &ActorRef<CallMsg>, reason: EndReason) {
        self.end_acking(me, reason, None, None);
    }

    /// [`end`](Self::end), acknowledging the hangup or reject of connection `by`: its
    /// `call.ended` carries that message's `ref`; `cause` (what the ending party said) goes to
    /// everyone. A connection of a party's user that was not told of the call yet (another
    /// device of that user) gets its acknowledgement too.
    fn end_acking(
        &mut self,
        me: &ActorRef<CallMsg>,
        reason: EndReason,
        by: Option<(&ConnRef, Option<String>)>,
        cause: Option<EndCause>,
    ) {
        // Free the users first: a client reacting to `call.ended` with a new invite must find
        // the registry already knowing that this call is over.
        if let Some(r) = registry::lookup(&self.system_id) {
            let _ = r.cast(RegistryMsg::CallEnded(self.id));
        }
        let (acker, ack_ref) = by.map_or((None, None), |(c, r)| (Some(c.clone()), r));
        let acked = acker.as_ref().map(|c| c.id);
        let ended = |to: &ConnRef| ServerMessage::CallEnded {
            call_id: self.id,
            reason,
            cause,
            reference: if Some(to.id) == acked {
                ack_ref.clone()
            } else {
                None
            },
        };
        if let Phase::Active { callee } = &self.phase {
            for conn in [&self.caller, callee] {
                let _ = conn.actor.cast(ConnectionMsg::Unpaired(self.id));
            }
        }
        // Queued for the database before anyone is told: a client that reads its history on
        // `call.ended` (or a drain after it) must find the end among the events to commit.
        // The parties were unpaired above; what they relayed up to now is counted.
        if let Some(summary) = self.counts.summary() {
            self.persistence.record(CallEvent::Signals {
                call_id: self.id,
                summary,
            });
        }
        self.persistence.record(CallEvent::Ended {
            call_id: self.id,
            reason: reason.as_str(),
            at: Utc::now(),
        });
        let mut told = vec![self.caller.id];
        self.caller.send(ended(&self.caller));
        match &self.phase {
            Phase::Ringing => self.ringing.iter().for_each(|c| {
                told.push(c.id);
                c.send(ended(c));
            }),
            Phase::Active { callee } => {
                told.push(callee.id);
                callee.send(ended(callee));
            }
        }
        if let Some(acker) = acker.filter(|c| !told.contains(&c.id)) {
            acker.send(ended(&acker));
        }
        self.metrics.call_ended(reason.as_str());
        tracing::info!(call_id = %self.id, reason = reason.as_str(), "call ended");
        me.stop(Some(reason.as_str().into()));
    }
}

impl Actor for Call {
    type Msg = CallMsg;
    type State = CallState;
    type Arguments = CallArgs;

    async fn pre_start(
        &self,
        me: ActorRef<Self::Msg>,
        a: CallArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        a.persistence.record(CallEvent::Created {
            call_id: a.id,
            caller: a.caller.user.id,
            callee: a.callee.id,
            instance_id: a.instance_id,
            at: Utc::now(),
        });
        a.metrics.calls_created.inc();
        a.caller.send(ServerMessage::CallCreated {
            call_id: a.id,
            to: a.callee.clone(),
            reference: a.invite_ref,
        });
        for c in &a.callee_conns {
            c.send(ServerMessage::CallIncoming {
                call_id: a.id,
                from: a.caller.user.clone(),
            });
        }
        a.caller.send(ServerMessage::CallRinging { call_id: a.id });
        me.send_after(a.ring_timeout, || CallMsg::RingTimeout);
        tracing::info!(call_id = %a.id, caller = %a.caller.user.id, callee = %a.callee.id, devices = a.callee_conns.len(), "call ringing");
        Ok(CallState {
            id: a.id,
            caller: a.caller,
            callee: a.callee,
            ringing: a.callee_conns,
            phase: Phase::Ringing,
            detached: HashSet::new(),
            system_id: a.system_id,
            persistence: a.persistence,
            metrics: a.metrics,
            counts: Arc::default(),
            #[cfg(feature = "test-hooks")]
            tamper_fingerprint_to: a.tamper_fingerprint_to,
        })
    }

    async fn handle(
        &self,
        me: ActorRef<Self::Msg>,
        msg: Self::Msg,
        s: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CallMsg::Client {
                from,
                action,
                reference,
            } => on_action(&me, s, from, action, reference),
            CallMsg::RingTimeout => {
                if matches!(s.phase, Phase::Ringing) {
                    s.end(&me, EndReason::Missed);
                }
            }
            CallMsg::PartyDetached(conn) => {
                if let Some(peer) = s.peer_of(conn) {
                    peer.send(ServerMessage::PeerReconnecting { call_id: s.id });
                }
                s.detached.insert(conn);
            }
            CallMsg::PartyAttached(conn) => {
                if s.detached.remove(&conn)
                    && let Some(peer) = s.peer_of(conn)
                {
                    peer.send(ServerMessage::PeerReconnected { call_id: s.id });
                }
            }
            CallMsg::PartyGone(conn, reason) => {
                if conn == s.caller.id || s.peer_of(conn).is_some() {
                    s.end(&me, reason);
                } else if matches!(s.phase, Phase::Ringing) {
                    s.ringing.retain(|c| c.id != conn);
                    if s.ringing.is_empty() {
                        s.end(&me, reason);
                    }
                }
            }
            CallMsg::DeviceJoined(conn) => {
                if matches!(s.phase, Phase::Ringing) && conn.user.id == s.callee.id {
                    if !s.ringing.iter().any(|c| c.id == conn.id) {
                        s.ringing.push(conn.clone());
                    }
                    conn.send(ServerMessage::CallIncoming {
                        call_id: s.id,
                        from: s.caller.user.clone(),
                    });
                }
            }
            CallMsg::End(reason, ack) => {
                s.end(&me, reason);
                if let Some(ack) = ack {
                    let _ = ack.send(());
                }
            }
            CallMsg::Reannounce => {
                if let Some(r) = registry::lookup(&s.system_id) {
                    let _ = r.cast(RegistryMsg::RegisterCall(me.clone(), s.entry()));
                }
            }
            #[cfg(feature = "test-hooks")]
            CallMsg::Panic => panic!("test hook: call actor panic"),
        }
        Ok(())
    }
}

fn on_action(
    me: &ActorRef<CallMsg>,
    s: &mut CallState,
    from: ConnRef,
    action: CallAction,
    reference: Option<String>,
) {
    let is_callee_user = from.user.id == s.callee.id;
    match action {
        CallAction::Accept | CallAction::Reject(_) if !is_callee_user => {
            s.err(
                &from,
                ErrorCode::NotParticipant,
                "only the callee can answer or decline",
                reference,
            );
        }
        CallAction::Accept | CallAction::Reject(_) if !matches!(s.phase, Phase::Ringing) => {
            s.err(
                &from,
                ErrorCode::CallNotRinging,
                "the call is no longer ringing",
                reference,
            );
        }
        CallAction::Reject(cause) => {
            s.ringing.retain(|c| c.id != from.id);
            s.ringing.push(from.clone());
            s.end_acking(me, EndReason::Rejected, Some((&from, reference)), cause);
        }
        CallAction::Accept => {
            let others: Vec<ConnRef> = s.ringing.drain(..).filter(|c| c.id != from.id).collect();
            s.phase = Phase::Active {
                callee: from.clone(),
            };
            // Tell the registry first, so that whatever the parties do on `call.accepted` is
            // judged against the answered call.
            if let Some(r) = registry::lookup(&s.system_id) {
                let _ = r.cast(RegistryMsg::RegisterCall(me.clone(), s.entry()));
            }
            // From now on the two parties relay sdp/ice to each other directly. Queued before
            // `call.accepted`, so a party is paired before it can react to the answer.
            if s.direct_relay() {
                for (conn, peer) in [(&s.caller, &from), (&from, &s.caller)] {
                    let _ = conn.actor.cast(ConnectionMsg::Paired(Pairing {
                        call_id: s.id,
                        peer: peer.clone(),
                        counts: s.counts.clone(),
                        caller: conn.id == s.caller.id,
                    }));
                }
            }
            s.persistence.record(CallEvent::Accepted {
                call_id: s.id,
                at: Utc::now(),
            });
            s.caller.send(ServerMessage::CallAccepted {
                call_id: s.id,
                reference: None,
            });
            from.send(ServerMessage::CallAccepted {
                call_id: s.id,
                reference,
            });
            for other in others {
                other.send(ServerMessage::CallEnded {
                    call_id: s.id,
                    reason: EndReason::AnsweredElsewhere,
                    cause: None,
                    reference: None,
                });
            }
            tracing::info!(call_id = %s.id, connection_id = %from.id, "call accepted");
        }
        // Any connection of a party's user may end the call (e.g. another device, shown the call
        // by `welcome.call`).
        CallAction::Hangup(cause) => match &s.phase {
            Phase::Ringing if from.user.id == s.caller.user.id => {
                s.end_acking(me, EndReason::Cancelled, Some((&from, reference)), cause)
            }
            Phase::Ringing if is_callee_user => {
                s.ringing.retain(|c| c.id != from.id);
                s.ringing.push(from.clone());
                s.end_acking(me, EndReason::Rejected, Some((&from, reference)), cause);
            }
            Phase::Active { .. } if from.user.id == s.caller.user.id || is_callee_user => {
                s.end_acking(me, EndReason::Hangup, Some((&from, reference)), cause)
            }
            _ => s.err(
                &from,
                ErrorCode::NotParticipant,
                "you are not a party of this call",
                reference,
            ),
        },
        CallAction::Sdp(_) | CallAction::Ice(_) if s.peer_of(from.id).is_none() => {
            let party =
                from.id == s.caller.id || (matches!(s.phase, Phase::Ringing) && is_callee_user);
            if party {
                s.err(
                    &from,
                    ErrorCode::CallNotActive,
                    "sdp/ice are accepted only after call.accepted",
                    reference,
                );
            } else {
                s.err(
                    &from,
                    ErrorCode::NotParticipant,
                    "you are not a party of this call",
                    reference,
                );
            }
        }
        CallAction::Sdp(description) => {
            #[cfg(feature = "test-hooks")]
            let description = tamper(s, &from, description);
            relay(s, &from, SignalingKind::Sdp, |call_id, from| {
                ServerMessage::Sdp {
                    call_id,
                    description,
                    from,
                }
            })
        }
        CallAction::Ice(candidate) => relay(s, &from, SignalingKind::Ice, |call_id, from| {
            ServerMessage::Ice {
                call_id,
                candidate,
                from,
            }
        }),
    }
}

fn relay(
    s: &CallState,
    from: &ConnRef,
    kind: SignalingKind,
    build: impl FnOnce(CallId, UserRef) -> ServerMessage,
) {
    let Some(peer) = s.peer_of(from.id) else {
        return;
    };
    peer.send(build(s.id, from.user.clone()));
    s.metrics.relayed(match kind {
        SignalingKind::Sdp => "sdp",
        SignalingKind::Ice => "ice",
    });
    s.counts.count(from.id == s.caller.id, kind);
    s.persistence.record_signal(s.id, from.user.id, kind);
}

/// Test builds only: flips one hex digit of the DTLS fingerprint in an SDP relayed to the
/// configured user, as a signaling server trying to sit in the middle would.
#[cfg(feature = "test-hooks")]
fn tamper(s: &CallState, from: &ConnRef, description: Box<RawValue>) -> Box<RawValue> {
    let Some(peer) = s.peer_of(from.id) else {
        return description;
    };
    if s.tamper_fingerprint_to.as_deref() != Some(peer.user.username.as_str()) {
        return description;
    }
    let text = description.get();
    let Some(at) = text
        .find("a=fingerprint:sha-256 ")
        .map(|i| i + "a=fingerprint:sha-256 ".len())
    else {
        return description;
    };
    let mut bytes = text.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    String::from_utf8(bytes)
        .ok()
        .and_then(|t| RawValue::from_string(t).ok())
        .unwrap_or(description)
}
