//! The connection actor: one per signaling connection. It owns the connection's state (user,
//! session, resume token, current socket) and every message it sends, numbered by `seq`.
//!
//! Delivery is lossless across a resume: each message is kept, bounded in count and bytes
//! (`ws.outbound_queue`, `ws.outbound_queue_bytes`), until there is evidence the client has it —
//! an `ack`, the `last_seq` of a resuming `hello`, or the pong to a heartbeat ping sent after it
//! was written. A resume replays exactly what came after the client's `last_seq` (or, for a v1
//! client, what the old socket never wrote). When a bound is reached, messages already written
//! are forgotten first; a client that has not even been written to within the bound does not
//! read (or stayed away too long) and is disconnected, never buffered without bound.
//!
//! When the socket drops the connection waits: `ws.resume_grace_secs` after a network drop,
//! `ws.going_away_grace_secs` after close 1001; close 1000 ends it at once.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::ws::outbox;
use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::ConnRef;
use super::line::{Appended, Guard, Line, Overflow};
use super::persistence::PersistenceHandle;
use super::registry::{self, ConnEntryInfo, RegistryMsg};
use crate::config::Settings;
use crate::domain::{CallId, ConnectionId, SessionId, UserRef};
use crate::metrics::Metrics;
use crate::ws::protocol::{
    CallSummary, ClientMessage, EndReason, ErrorCode, Inbound, ServerMessage, close,
};
use entity::signaling_messages::SignalingKind;

/// What the connection actor hands to its socket task.
#[derive(Debug)]
pub enum Outbound {
    /// A text frame and its `seq` (0 for the unsequenced `welcome` and resume errors).
    Text(u64, Utf8Bytes),
    /// A relayed `sdp`/`ice` frame, its `seq` and when the sender's frame arrived: the socket
    /// task records the relay latency once it is written.
    Relayed(u64, Utf8Bytes, std::time::Instant),
    /// A close frame with code and reason; the socket task runs the closing handshake.
    Close(u16, &'static str),
}

/// How a socket ended, as its task saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SocketEnd {
    /// The client closed with 1000: it left.
    Left,
    /// The client closed with 1001: page reload or tab closed.
    GoingAway,
    /// No close frame (network drop, heartbeat timeout, write failure) or another code.
    Dropped,
    /// The server closed it.
    ServerClosed,
}

/// The state behind a [`SocketControl`].
#[derive(Default)]
pub struct ControlInner {
    /// The task waiting in [`SocketControl::killed`] or [`SocketControl::signal`].
    kill: futures_util::task::AtomicWaker,
    /// The close code asked for by [`SocketControl::kill`]; 0 until then; [`DROP_CODE`] for a
    /// drop without a closing handshake.
    kill_code: AtomicU16,
    /// A frame arrived since the heartbeat wheel's last visit (set by the socket task).
    heard: AtomicBool,
    /// Heartbeat visits in a row that found nothing heard.
    silent: AtomicU8,
    /// The heartbeat wheel asks the socket task to ping.
    ping_due: AtomicBool,
    written: AtomicU64,
    /// The answered call whose `sdp`/`ice` the socket task relays itself.
    relay: Mutex<Option<Arc<DirectRelay>>>,
    /// Bumped after every change of `relay`: the socket task keeps its copy until it moves.
    relay_generation: AtomicU64,
}

impl std::fmt::Debug for ControlInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlInner")
            .field("kill_code", &self.kill_code)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

/// The kill code that drops the socket without a closing handshake (a silent peer is gone);
/// not a WebSocket close code (those end at 4999).
const DROP_CODE: u16 = u16::MAX;

/// What [`SocketControl::signal`] tells the socket task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Close with this code now (closing handshake, bounded in time).
    Close(u16),
    /// Drop the connection without a closing handshake: the peer was silent for two heartbeat
    /// intervals.
    Drop,
    /// Send a heartbeat ping.
    Ping,
}

/// What a heartbeat visit decided ([`SocketControl::beat`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Pinged; visit again next turn.
    Watching,
    /// The socket is ending (dropped as silent, or killed): stop watching it.
    Left,
}

/// State shared by a socket task and its connection actor: the highest `seq` the socket wrote,
/// a way to make the socket close at once (bypassing its queue), and the answered call whose
/// `sdp`/`ice` the socket task relays straight to the peer's connection.
#[derive(Debug, Clone, Default)]
pub struct SocketControl(Arc<ControlInner>);

impl SocketControl {
    /// The answered call whose `sdp`/`ice` the socket relays directly, if any.
    pub fn relay(&self) -> Option<Arc<DirectRelay>> {
        self.0
            .relay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    /// Changes with every [`set_relay`](Self::set_relay): a copy of [`relay`](Self::relay)
    /// taken after reading this value is current while it stays the same.
    pub fn relay_generation(&self) -> u64 {
        self.0.relay_generation.load(Ordering::Acquire)
    }
    /// Sets (or clears) the direct relay (connection actor).
    fn set_relay(&self, relay: Option<Arc<DirectRelay>>) {
        *self.0.relay.lock().unwrap_or_else(|p| p.into_inner()) = relay;
        self.0.relay_generation.fetch_add(1, Ordering::AcqRel);
    }
    /// Asks the socket task to close with `code` now (closing handshake, bounded in time).
    /// `code` is a WebSocket close code (RFC 6455 §7.4: never 0); a later call replaces the
    /// code if the task has not seen the first yet.
    pub fn kill(&self, code: u16) {
        self.0.kill_code.store(code.max(1), Ordering::Release);
        self.0.kill.wake();
    }
    /// Resolves with the close code once [`kill`](Self::kill) was called (at once if it was
    /// already). One task waits at a time: the socket task, or a cluster bridge's sender.
    /// The wait is a few atomic operations per poll (no lock), as it is polled after every
    /// frame the socket reads.
    pub async fn killed(&self) -> u16 {
        std::future::poll_fn(|cx| {
            let code = self.0.kill_code.load(Ordering::Acquire);
            if code != 0 {
                return std::task::Poll::Ready(code);
            }
            self.0.kill.register(cx.waker());
            match self.0.kill_code.load(Ordering::Acquire) {
                0 => std::task::Poll::Pending,
                code => std::task::Poll::Ready(code),
            }
        })
        .await
    }
    /// Resolves with what the socket task must do now: close ([`kill`](Self::kill)), drop
    /// (silent for two heartbeats) or ping (asked by the heartbeat wheel). Unlike
    /// [`killed`](Self::killed) it may be polled again after it resolved: a ping is told once
    /// per request, a close or drop every time. A few atomic operations per poll, no lock.
    pub fn signal(&self) -> impl Future<Output = Signal> + '_ {
        std::future::poll_fn(move |cx| {
            if let Some(s) = self.pending_signal() {
                return std::task::Poll::Ready(s);
            }
            self.0.kill.register(cx.waker());
            match self.pending_signal() {
                Some(s) => std::task::Poll::Ready(s),
                None => std::task::Poll::Pending,
            }
        })
    }
    fn pending_signal(&self) -> Option<Signal> {
        match self.0.kill_code.load(Ordering::Acquire) {
            0 => {}
            DROP_CODE => return Some(Signal::Drop),
            code => return Some(Signal::Close(code)),
        }
        (self.0.ping_due.load(Ordering::Acquire) && self.0.ping_due.swap(false, Ordering::AcqRel))
            .then_some(Signal::Ping)
    }
    /// A frame arrived from the client (socket task; a load and no write when already set).
    pub fn heard(&self) {
        if !self.0.heard.load(Ordering::Relaxed) {
            self.0.heard.store(true, Ordering::Relaxed);
        }
    }
    /// A heartbeat visit ([`crate::ws::heartbeat`]): a socket silent since the last two visits
    /// is dropped; any other is asked to ping.
    pub fn beat(&self) -> Beat {
        if self.0.kill_code.load(Ordering::Acquire) != 0 {
            return Beat::Left;
        }
        let silent = if self.0.heard.swap(false, Ordering::AcqRel) {
            0
        } else {
            self.0.silent.load(Ordering::Relaxed).saturating_add(1)
        };
        self.0.silent.store(silent, Ordering::Relaxed);
        if silent >= 2 {
            // Only if no close was asked for meanwhile: a real close code (4001, 4401…) wins
            // over the silent drop.
            if self
                .0
                .kill_code
                .compare_exchange(0, DROP_CODE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.0.kill.wake();
            }
            return Beat::Left;
        }
        self.0.ping_due.store(true, Ordering::Release);
        self.0.kill.wake();
        Beat::Watching
    }
    /// Whether `code` (from [`killed`](Self::killed)) means a drop without a closing handshake.
    pub fn is_drop(code: u16) -> bool {
        code == DROP_CODE
    }
    pub(crate) fn downgrade(&self) -> std::sync::Weak<ControlInner> {
        Arc::downgrade(&self.0)
    }
    pub(crate) fn from_inner(inner: Arc<ControlInner>) -> Self {
        Self(inner)
    }
    /// The highest `seq` written to the socket.
    pub fn written(&self) -> u64 {
        self.0.written.load(Ordering::Acquire)
    }
    /// Records that `seq` was written (socket task).
    pub fn mark_written(&self, seq: u64) {
        self.0.written.fetch_max(seq, Ordering::AcqRel);
    }
}

/// The connection's current socket.
#[derive(Debug)]
pub struct SocketLink {
    /// Unique per socket, so a stale socket's "closed" notice is ignored after a resume.
    pub socket_id: u64,
    /// Queue to the socket task (bounded; the actor also bounds what it holds in bytes).
    pub tx: outbox::Sender<Outbound>,
    /// Written progress and the kill switch.
    pub control: SocketControl,
}

/// How a new socket joins an existing connection.
#[derive(Debug, Clone, Copy)]
pub enum Join {
    /// `hello` with the connection's resume token: replay what the client missed. `last_seq`
    /// is what the client says it processed (`None` for a v1 client: replay what the old
    /// socket never wrote).
    Resume {
        /// The client's last processed `seq`.
        last_seq: Option<u64>,
    },
    /// A `hello` of the same login session without (a valid) resume token, while this
    /// connection waited in its grace: a reloaded page. It takes the connection over (and its
    /// call) but gets no replay: the page has no context for old messages.
    Takeover,
}

/// Messages of the connection actor.
pub enum ConnectionMsg {
    /// A typed message from the client.
    Client(Inbound),
    /// A message for the client.
    Deliver(ServerMessage),
    /// A relayed `sdp`/`ice` for the client, with when the sender's frame arrived and whether
    /// the line counted it as on its way through the mailbox ([`Line::append_relayed`]).
    Relayed(ServerMessage, std::time::Instant, bool),
    /// The line overflowed on a direct append from the peer: disconnect the client that does
    /// not read.
    Overflowed,
    /// A relayed `sdp`/`ice` from the paired peer on another node (cluster mode): counted
    /// here, in the call's counters that the sending node cannot reach, then as `Relayed`.
    RelayedFromNode(ServerMessage, SignalingKind),
    /// A new socket joins this connection; `call` is the user's current call for `welcome`.
    Attach(SocketLink, Join, Option<CallSummary>),
    /// The socket `socket_id` ended.
    SocketClosed(u64, SocketEnd),
    /// The call was answered with this connection as a party: relay `sdp`/`ice` directly.
    Paired(Pairing),
    /// The call `call_id` ended: stop relaying directly.
    Unpaired(CallId),
    /// The client provably has every message up to this `seq` (it answered a heartbeat ping
    /// sent after they were written).
    Delivered(u64),
    /// The resume grace of detach number `epoch` is over.
    GraceExpired(u64),
    /// The session was revoked or reached its lifetime: `session_revoked`, close 4401.
    Revoke,
    /// Refuse the connection after the fact: `error code`, close `close_code`.
    Kick(ErrorCode, &'static str, u16),
    /// Released to make room for a new connection of the same user (it was waiting in its
    /// grace).
    Release,
    /// Server shutdown: close 1001.
    Shutdown,
    /// Tell the (restarted) registry about this connection.
    Reannounce,
    /// Test and diagnostic view of the connection.
    Info(RpcReplyPort<ConnectionInfo>),
    /// Make this actor panic (test builds only), to exercise supervision.
    #[cfg(feature = "test-hooks")]
    Panic,
}

/// A snapshot of a connection.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// Connection id.
    pub id: ConnectionId,
    /// User.
    pub user: UserRef,
    /// Whether a socket is attached.
    pub attached: bool,
    /// Messages held (unwritten, or written but not known to be delivered).
    pub pending: usize,
    /// Bytes held.
    pub pending_bytes: usize,
    /// The `seq` the next message will get.
    pub next_seq: u64,
}

/// Links every connection actor needs.
#[derive(Clone)]
pub struct Links {
    /// Tree id (registry lookup).
    pub system_id: String,
    /// Settings.
    pub settings: Arc<Settings>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Call events (signaling metadata relayed on the direct path).
    pub persistence: PersistenceHandle,
}

/// The other party of this connection's answered call: `sdp`/`ice` for `call_id` go straight
/// to `peer`, without passing through the registry or the call actor (so the relay path of
/// answered calls spreads over every core).
#[derive(Debug, Clone)]
pub struct Pairing {
    /// The answered call.
    pub call_id: CallId,
    /// The other party's connection.
    pub peer: ConnRef,
    /// The call's signaling counters.
    pub counts: Arc<super::call::SignalCounts>,
    /// Whether this connection is the caller's.
    pub caller: bool,
}

/// Everything needed to relay an `sdp`/`ice` of an answered call to the other party: made by the
/// connection actor from its [`Pairing`], used by its socket task and by the actor itself for a
/// message that reached it. The message goes straight into the peer's [`Line`] (numbered, held
/// and queued to the peer's socket, no mailbox hop), or through the peer's connection actor
/// while the line is not open for the call yet (or when the peer is a stand-in for a connection
/// on another node).
pub struct DirectRelay {
    /// The answered call.
    pub call_id: CallId,
    /// This connection's authenticated user: the relayed message's `from` (contract §2.2).
    pub from: UserRef,
    /// The other party's connection (or its stand-in on this node).
    pub peer: ActorRef<ConnectionMsg>,
    /// The other party's line (`None` for a stand-in).
    peer_line: Option<Arc<Line>>,
    /// `"call_id":"…"` as JSON, and `"from":{…}}` closing the frame: the constant parts of
    /// every relayed frame, encoded once.
    call_id_json: String,
    from_json: String,
    counts: Arc<super::call::SignalCounts>,
    caller: bool,
    metrics: Arc<Metrics>,
    persistence: PersistenceHandle,
}

impl DirectRelay {
    fn new(p: &Pairing, from: &UserRef, links: &Links) -> Self {
        Self {
            call_id: p.call_id,
            from: from.clone(),
            peer: p.peer.actor.clone(),
            peer_line: p.peer.line.clone(),
            call_id_json: serde_json::to_string(&p.call_id).unwrap_or_default(),
            from_json: serde_json::to_string(from).unwrap_or_default(),
            counts: p.counts.clone(),
            caller: p.caller,
            metrics: links.metrics.clone(),
            persistence: links.persistence.clone(),
        }
    }

    fn frame(&self, seq: u64, kind: SignalingKind, raw: &str) -> String {
        relayed_frame(seq, kind, &self.call_id_json, raw, &self.from_json)
    }

    fn message(&self, kind: SignalingKind, raw: Box<RawValue>) -> ServerMessage {
        let (call_id, from) = (self.call_id, self.from.clone());
        match kind {
            SignalingKind::Sdp => ServerMessage::Sdp {
                call_id,
                description: raw,
                from,
            },
            SignalingKind::Ice => ServerMessage::Ice {
                call_id,
                candidate: raw,
                from,
            },
        }
    }

    /// Relays a client's `sdp`/`ice` for this call to the peer, counts it (metrics, the call's
    /// counters) and records its metadata. Any other message is given back.
    pub fn relay(&self, inbound: Inbound) -> Result<(), Inbound> {
        let (kind, raw) = match &inbound.message {
            ClientMessage::Sdp {
                call_id,
                description,
            } if *call_id == self.call_id => (SignalingKind::Sdp, description),
            ClientMessage::Ice { call_id, candidate } if *call_id == self.call_id => {
                (SignalingKind::Ice, candidate)
            }
            _ => return Err(inbound),
        };
        self.relay_payload(kind, Payload::Parsed(raw), inbound.received);
        Ok(())
    }

    /// [`relay`](Self::relay) for a frame read by [`crate::ws::fastpath`]: `raw` is the
    /// `description`/`candidate` exactly as sent, already checked (valid JSON of the required
    /// shape). `None` when the frame is for another call: it then takes the full parse.
    pub fn relay_plain(
        &self,
        frame: &crate::ws::fastpath::Relay<'_>,
        received: std::time::Instant,
    ) -> Option<()> {
        (frame.call_id == self.call_id)
            .then(|| self.relay_payload(frame.kind, Payload::Text(frame.raw), received))
    }

    fn relay_payload(&self, kind: SignalingKind, raw: Payload<'_>, received: std::time::Instant) {
        match &self.peer_line {
            Some(line) => {
                let appended = line.append_relayed(
                    self.call_id,
                    received,
                    |seq| self.frame(seq, kind, raw.get()),
                    || {
                        raw.to_raw_value().is_some_and(|raw| {
                            self.peer
                                .cast(ConnectionMsg::Relayed(
                                    self.message(kind, raw),
                                    received,
                                    true,
                                ))
                                .is_ok()
                        })
                    },
                );
                if appended == Appended::Overflowed {
                    let _ = self.peer.cast(ConnectionMsg::Overflowed);
                }
            }
            None => {
                if let Some(raw) = raw.to_raw_value() {
                    let msg = self.message(kind, raw);
                    let _ = self.peer.cast(ConnectionMsg::Relayed(msg, received, false));
                }
            }
        }
        self.metrics.relayed(match kind {
            SignalingKind::Sdp => "sdp",
            SignalingKind::Ice => "ice",
        });
        self.counts.count(self.caller, kind);
        self.persistence
            .record_signal(self.call_id, self.from.id, kind);
    }
}

/// A relayed `description`/`candidate`: parsed into a [`RawValue`] by the full parser, or the
/// text the fast path checked.
#[derive(Clone, Copy)]
enum Payload<'a> {
    Parsed(&'a RawValue),
    Text(&'a str),
}

impl Payload<'_> {
    fn get(&self) -> &str {
        match self {
            Payload::Parsed(raw) => raw.get(),
            Payload::Text(text) => text,
        }
    }

    /// As a [`RawValue`] for a message that goes through an actor. Text the fast path checked
    /// is valid JSON, so this does not fail; were it ever to, the failure is logged, not
    /// silent.
    fn to_raw_value(self) -> Option<Box<RawValue>> {
        match self {
            Payload::Parsed(raw) => Some(raw.to_owned()),
            Payload::Text(text) => RawValue::from_string(text.to_owned())
                .map_err(
                    |e| tracing::error!(error = %e, "a checked payload is not JSON; not relayed"),
                )
                .ok(),
        }
    }
}

/// A relayed `sdp`/`ice` frame, byte for byte what `ServerMessage::{Sdp, Ice}` with `seq`
/// encodes to ([`ServerMessage::to_json_with_seq`]), built from the client's own JSON of the
/// description or candidate (`raw`, already validated) without parsing or re-encoding it.
/// `call_id_json` and `from_json` are the JSON of the call id and the sender, encoded once per
/// pairing.
fn relayed_frame(
    seq: u64,
    kind: SignalingKind,
    call_id_json: &str,
    raw: &str,
    from_json: &str,
) -> String {
    let (head, field) = match kind {
        SignalingKind::Sdp => ("\"type\":\"sdp\",\"call_id\":", ",\"description\":"),
        SignalingKind::Ice => ("\"type\":\"ice\",\"call_id\":", ",\"candidate\":"),
    };
    let mut seq_buf = itoa::Buffer::new();
    let seq = seq_buf.format(seq);
    let mut out = String::with_capacity(
        18 + seq.len()
            + head.len()
            + call_id_json.len()
            + field.len()
            + raw.len()
            + from_json.len(),
    );
    out.push_str("{\"seq\":");
    out.push_str(seq);
    out.push(',');
    out.push_str(head);
    out.push_str(call_id_json);
    out.push_str(field);
    out.push_str(raw);
    out.push_str(",\"from\":");
    out.push_str(from_json);
    out.push('}');
    out
}

/// The few most recent calls a socket or connection sent `sdp`/`ice` for by the slower path
/// (bounded: a client naming many calls only pushes out its own oldest entries).
#[derive(Debug, Default, Clone)]
pub struct RecentCalls([Option<CallId>; 4]);

impl RecentCalls {
    /// Whether `id` is among them.
    pub fn contains(&self, id: &CallId) -> bool {
        self.0.iter().any(|c| c.as_ref() == Some(id))
    }
    /// Remembers `id` (forgetting the oldest); false if it was already there.
    pub fn insert(&mut self, id: CallId) -> bool {
        if self.contains(&id) {
            return false;
        }
        self.0.rotate_right(1);
        self.0[0] = Some(id);
        true
    }
}

/// Fixed configuration of a connection actor.
pub struct ConnectionArgs {
    /// Connection id.
    pub id: ConnectionId,
    /// Authenticated user.
    pub user: UserRef,
    /// Login session behind the token.
    pub session_id: SessionId,
    /// Absolute end of that session.
    pub session_expires_at: DateTime<Utc>,
    /// Secret that lets a new socket resume this connection.
    pub resume_token: String,
    /// The outgoing line, attached to the first socket (made by the registry, which hands it
    /// to the socket task and to the paired peer).
    pub line: Arc<Line>,
    /// The user's current call, for `welcome`.
    pub call: Option<CallSummary>,
    /// Shared links.
    pub links: Links,
}

/// The connection actor.
pub struct Connection;

/// State of a connection actor.
pub struct ConnectionState {
    id: ConnectionId,
    user: UserRef,
    session_id: SessionId,
    session_expires_at: DateTime<Utc>,
    resume_token: String,
    /// The numbered outgoing stream and the current socket (shared with the socket task and
    /// the paired peer's socket task).
    line: Arc<Line>,
    detach_epoch: u64,
    /// The answered call this connection is a party of, and how its messages are relayed
    /// (shared with the current socket task).
    pairing: Option<Pairing>,
    relay: Option<Arc<DirectRelay>>,
    /// The last call whose `call.accepted` went into the line.
    accepted: Option<CallId>,
    /// The recent calls whose `sdp`/`ice` this connection sent through the registry (before
    /// it was paired): the rest of those calls' follow the same way, so none overtakes them.
    routed: RecentCalls,
    /// What the call gets if this connection ends now.
    end_reason: EndReason,
    links: Links,
}

/// However the actor ends (stopped, or failed and dropped by its supervisor), its socket is let
/// go: the line outlives the actor (the registry, the socket task and a paired peer hold it),
/// and the socket task sees its queue close and closes the socket.
impl Drop for ConnectionState {
    fn drop(&mut self) {
        let mut line = self.line.lock();
        line.set_overflowed();
        if let Some(s) = line.replace_socket(None) {
            s.control.set_relay(None);
        }
    }
}

impl ConnectionState {
    fn conn_ref(&self, me: &ActorRef<ConnectionMsg>) -> ConnRef {
        ConnRef {
            id: self.id,
            user: self.user.clone(),
            actor: me.clone(),
            line: Some(self.line.clone()),
        }
    }

    fn welcome(&self, resumed: bool, call: Option<CallSummary>) -> ServerMessage {
        ServerMessage::Welcome(Box::new(crate::ws::protocol::Welcome {
            session_id: self.session_id,
            connection_id: self.id,
            user: self.user.clone(),
            resume_token: self.resume_token.clone(),
            heartbeat_ms: self.links.settings.ws.heartbeat().as_millis() as u64,
            // Made for each `welcome`: a resumed client gets TURN credentials valid from now.
            ice_servers: crate::ice::servers_for(&self.links.settings.ice, self.user.id),
            resumed,
            call,
        }))
    }

    /// Tells the current socket task which call's `sdp`/`ice` it relays itself, and opens the
    /// line to the peer's direct appends once `call.accepted` of the paired call is in it
    /// (so no relayed message overtakes it).
    fn sync_relay(&self) {
        self.sync_relay_in(&mut self.line.lock());
    }

    /// [`sync_relay`](Self::sync_relay) under a lock the caller holds. A call whose `sdp`/`ice`
    /// this connection already sent through the registry is not handed to the socket task:
    /// the rest of that call's follow the same path.
    fn sync_relay_in(&self, line: &mut Guard<'_>) {
        if let Some(s) = line.socket() {
            let relay = self
                .relay
                .clone()
                .filter(|r| !self.routed.contains(&r.call_id));
            s.control.set_relay(relay);
        }
        let open = self
            .pairing
            .as_ref()
            .map(|p| p.call_id)
            .filter(|id| self.accepted == Some(*id));
        line.open_for(open);
    }

    fn set_pairing(&mut self, pairing: Option<Pairing>) {
        self.relay = pairing
            .as_ref()
            .map(|p| Arc::new(DirectRelay::new(p, &self.user, &self.links)));
        self.pairing = pairing;
        self.sync_relay();
    }

    /// Numbers `msg`, holds it and queues it to the socket (if any).
    fn push(&mut self, msg: &ServerMessage) -> Result<(), Overflow> {
        self.line
            .lock()
            .push(|seq| msg.to_json_with_seq(seq), None)?;
        if let ServerMessage::CallAccepted { call_id, .. } = msg {
            self.accepted = Some(*call_id);
            self.sync_relay();
        }
        Ok(())
    }

    /// Sends a per-socket message (`welcome`, resume errors): no `seq`, never replayed.
    fn push_unsequenced(&self, msg: &ServerMessage) -> Result<(), Overflow> {
        self.line.lock().push_unsequenced(msg.to_json())
    }

    /// Closes the current socket with `code` after what is already queued.
    fn close(&mut self, code: u16, reason: &'static str) {
        if let Some(s) = self.line.lock().replace_socket(None) {
            s.control.set_relay(None);
            if s.tx.try_send(Outbound::Close(code, reason)).is_err() {
                s.control.kill(code);
            }
        }
    }

    fn registry(&self) -> Option<ActorRef<RegistryMsg>> {
        registry::lookup(&self.links.system_id)
    }

    fn announce(&self, me: &ActorRef<ConnectionMsg>) {
        if let Some(r) = self.registry() {
            let _ = r.cast(RegistryMsg::Register(ConnEntryInfo {
                conn: self.conn_ref(me),
                session_id: self.session_id,
                session_expires_at: self.session_expires_at,
                resume_token: self.resume_token.clone(),
                attached: self.line.lock().socket().is_some(),
            }));
        }
    }

    /// Ends the connection because its client does not read (or stayed away too long).
    fn overflowed(&mut self, me: &ActorRef<ConnectionMsg>) {
        self.links.metrics.slow_consumers.inc();
        let mut line = self.line.lock();
        line.set_overflowed();
        let (held, held_bytes) = line.held();
        tracing::warn!(connection_id = %self.id, user_id = %self.user.id,
            held, held_bytes, "client does not read its messages; disconnecting");
        if let Some(s) = line.replace_socket(None) {
            s.control.set_relay(None);
            s.control.kill(close::POLICY);
        }
        drop(line);
        self.end_reason = EndReason::ConnectionLost;
        me.stop(Some("slow_consumer".into()));
    }

    /// A new socket joins (resume or takeover).
    fn attach(
        &mut self,
        socket: SocketLink,
        join: Join,
        call: Option<CallSummary>,
    ) -> Result<(), Overflow> {
        self.detach_epoch += 1;
        let welcome = self.welcome(matches!(join, Join::Resume { .. }), call);
        // One lock from the socket swap to the end of the replay: nothing relayed by the peer
        // in between may reach the new socket before its `welcome` or be replayed twice.
        let line = self.line.clone();
        let mut line = line.lock();
        if let Some(old) = line.replace_socket(Some(socket)) {
            old.control.set_relay(None);
            old.control.kill(close::SUPERSEDED);
        }
        self.sync_relay_in(&mut line);
        match join {
            Join::Takeover => {
                // The reloaded page has no use for messages meant for the page it replaced.
                let last = line.next_seq() - 1;
                line.trim_to(last);
                line.push_unsequenced(welcome.to_json())?;
                tracing::info!(connection_id = %self.id, user_id = %self.user.id,
                    "connection taken over by a new socket of its session");
            }
            Join::Resume { last_seq } => {
                line.push_unsequenced(welcome.to_json())?;
                let after = match last_seq {
                    Some(n) => {
                        let n = n.min(line.next_seq() - 1);
                        line.trim_to(n);
                        let first_held = line.first_held();
                        if first_held > n + 1 {
                            self.links.metrics.resume_gaps.inc();
                            line.push_unsequenced(
                                ServerMessage::error(
                                    ErrorCode::ResumeGap,
                                    format!(
                                        "messages {}..{} are no longer held; resynchronise",
                                        n + 1,
                                        first_held - 1
                                    ),
                                    None,
                                    None,
                                )
                                .to_json(),
                            )?;
                        }
                        n
                    }
                    None => line.refresh_written(),
                };
                line.replay_after(after)?;
                tracing::info!(connection_id = %self.id, user_id = %self.user.id,
                    replayed = line.held_after(after), "connection resumed");
            }
        }
        drop(line);
        if let Some(r) = self.registry() {
            let _ = r.cast(RegistryMsg::Attached(self.id));
        }
        Ok(())
    }

    fn detach(&mut self, me: &ActorRef<ConnectionMsg>, grace: std::time::Duration) {
        self.detach_epoch += 1;
        let epoch = self.detach_epoch;
        tracing::info!(connection_id = %self.id, user_id = %self.user.id,
            grace_secs = grace.as_secs(), "socket dropped; waiting for resume");
        if let Some(r) = self.registry() {
            let _ = r.cast(RegistryMsg::Detached(self.id));
        }
        me.send_after(grace, move || ConnectionMsg::GraceExpired(epoch));
    }
}

impl Actor for Connection {
    type Msg = ConnectionMsg;
    type State = ConnectionState;
    type Arguments = ConnectionArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<Self::Msg>,
        a: ConnectionArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let state = ConnectionState {
            id: a.id,
            user: a.user,
            session_id: a.session_id,
            session_expires_at: a.session_expires_at,
            resume_token: a.resume_token,
            line: a.line,
            detach_epoch: 0,
            pairing: None,
            relay: None,
            accepted: None,
            routed: RecentCalls::default(),
            end_reason: EndReason::ConnectionLost,
            links: a.links,
        };
        // Queued before the actor is announced, so `welcome` precedes anything sent to it.
        let _ = state.push_unsequenced(&state.welcome(false, a.call));
        Ok(state)
    }

    async fn post_stop(
        &self,
        _me: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.close(close::GOING_AWAY, "connection ended");
        if let Some(r) = state.registry() {
            let _ = r.cast(RegistryMsg::ConnectionGone(state.id, state.end_reason));
        }
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConnectionMsg::Client(inbound) => self.on_client(&me, inbound, state),
            ConnectionMsg::Deliver(msg) => {
                if state.push(&msg).is_err() {
                    state.overflowed(&me);
                }
            }
            ConnectionMsg::Relayed(msg, received, counted) => {
                let mut line = state.line.lock();
                line.relayed_by_actor(counted);
                let pushed = line.push(|seq| msg.to_json_with_seq(seq), Some(received));
                drop(line);
                if pushed.is_err() {
                    state.overflowed(&me);
                }
            }
            ConnectionMsg::Overflowed => state.overflowed(&me),
            ConnectionMsg::RelayedFromNode(msg, kind) => {
                if let Some(p) = &state.pairing {
                    p.counts.count(!p.caller, kind);
                }
                let pushed = state.line.lock().push(
                    |seq| msg.to_json_with_seq(seq),
                    Some(std::time::Instant::now()),
                );
                if pushed.is_err() {
                    state.overflowed(&me);
                }
            }
            ConnectionMsg::Attach(socket, join, call) => {
                if state.attach(socket, join, call).is_err() {
                    state.overflowed(&me);
                }
            }
            ConnectionMsg::SocketClosed(socket_id, end) => {
                let mut line = state.line.lock();
                if line.socket().is_some_and(|s| s.socket_id == socket_id) {
                    line.replace_socket(None);
                    drop(line);
                    let ws = &state.links.settings.ws;
                    match end {
                        SocketEnd::Left => {
                            tracing::info!(connection_id = %state.id, user_id = %state.user.id, "client left (close 1000)");
                            state.end_reason = EndReason::Left;
                            me.stop(Some("left".into()));
                        }
                        SocketEnd::GoingAway => {
                            let grace = ws.going_away_grace();
                            state.detach(&me, grace);
                        }
                        SocketEnd::Dropped | SocketEnd::ServerClosed => {
                            let grace = ws.resume_grace();
                            state.detach(&me, grace);
                        }
                    }
                }
            }
            ConnectionMsg::Paired(p) => state.set_pairing(Some(p)),
            ConnectionMsg::Unpaired(call_id) => {
                if state.pairing.as_ref().is_some_and(|p| p.call_id == call_id) {
                    state.set_pairing(None);
                }
            }
            ConnectionMsg::Delivered(seq) => state.line.lock().delivered(seq),
            ConnectionMsg::GraceExpired(epoch) => {
                if state.line.lock().socket().is_none() && epoch == state.detach_epoch {
                    me.stop(Some("connection_lost".into()));
                }
            }
            ConnectionMsg::Revoke => {
                self.kick(
                    &me,
                    state,
                    ErrorCode::SessionRevoked,
                    "your session was revoked or has expired",
                    close::UNAUTHORIZED,
                );
            }
            ConnectionMsg::Kick(code, message, close_code) => {
                self.kick(&me, state, code, message, close_code);
            }
            ConnectionMsg::Release => {
                tracing::info!(connection_id = %state.id, user_id = %state.user.id,
                    "connection waiting in its grace released for a new one");
                me.stop(Some("released".into()));
            }
            ConnectionMsg::Shutdown => {
                state.end_reason = EndReason::ServerShutdown;
                state.close(close::GOING_AWAY, "server shutting down");
                me.stop(Some("server_shutdown".into()));
            }
            ConnectionMsg::Reannounce => state.announce(&me),
            ConnectionMsg::Info(reply) => {
                let line = state.line.lock();
                let (pending, pending_bytes) = line.held();
                let info = ConnectionInfo {
                    id: state.id,
                    user: state.user.clone(),
                    attached: line.socket().is_some(),
                    pending,
                    pending_bytes,
                    next_seq: line.next_seq(),
                };
                drop(line);
                let _ = reply.send(info);
            }
            #[cfg(feature = "test-hooks")]
            ConnectionMsg::Panic => panic!("test hook: connection actor panic"),
        }
        Ok(())
    }
}

impl Connection {
    fn kick(
        &self,
        me: &ActorRef<ConnectionMsg>,
        state: &mut ConnectionState,
        code: ErrorCode,
        message: &'static str,
        close_code: u16,
    ) {
        let _ = state.push(&ServerMessage::error(code, message, None, None));
        state.close(close_code, message);
        state.end_reason = EndReason::Left;
        me.stop(Some(format!("{code:?}")));
    }

    fn on_client(
        &self,
        me: &ActorRef<ConnectionMsg>,
        inbound: Inbound,
        state: &mut ConnectionState,
    ) {
        let reply = |msg: ServerMessage| {
            let _ = me.cast(ConnectionMsg::Deliver(msg));
        };
        // A piggybacked ack (the socket task applies it itself and passes none on; a message
        // cast here by other means may still carry one).
        if let Some(seq) = inbound.ack {
            state.line.lock().acked(seq);
        }
        // `sdp`/`ice` of the answered call that reached the actor (not relayed by the socket
        // task: sent before it learned of the pairing, or through a bridge).
        let call_id = match &inbound.message {
            ClientMessage::Sdp { call_id, .. } | ClientMessage::Ice { call_id, .. } => {
                Some(*call_id)
            }
            _ => None,
        };
        let inbound = match &state.relay {
            Some(r) if !call_id.is_some_and(|id| state.routed.contains(&id)) => {
                match r.relay(inbound) {
                    Ok(()) => return,
                    Err(other) => other,
                }
            }
            _ => inbound,
        };
        match inbound.message {
            ClientMessage::Ping => reply(ServerMessage::Pong {
                reference: inbound.reference,
            }),
            ClientMessage::Ack { seq } => state.line.lock().acked(seq),
            ClientMessage::Hello { .. } => reply(ServerMessage::error(
                ErrorCode::BadMessage,
                "already authenticated",
                inbound.reference,
                None,
            )),
            _ => match state.registry() {
                Some(r) => {
                    if let Some(id) = call_id
                        && state.routed.insert(id)
                        && state.relay.as_ref().is_some_and(|r| r.call_id == id)
                    {
                        // The socket task must stop relaying this call directly.
                        state.sync_relay();
                    }
                    let _ = r.cast(RegistryMsg::Route {
                        from: state.conn_ref(me),
                        inbound,
                    });
                }
                None => reply(ServerMessage::error(
                    ErrorCode::InternalError,
                    "signaling is restarting; retry in a moment",
                    inbound.reference,
                    None,
                )),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::domain::{UserId, Username};

    #[test]
    fn a_relayed_frame_is_what_the_typed_message_encodes_to() {
        let from = UserRef {
            id: UserId::new(),
            username: Username::from_trusted("zoë \"q\"".into()),
        };
        let call_id = CallId::new();
        let call_id_json = serde_json::to_string(&call_id).unwrap();
        let from_json = serde_json::to_string(&from).unwrap();
        for (kind, raw) in [
            (
                SignalingKind::Sdp,
                r#"{"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}"#,
            ),
            (
                SignalingKind::Ice,
                r#"{"candidate":"candidate:1 1 udp 1 10.0.0.1 9 typ host","sdpMid":"0"}"#,
            ),
            (SignalingKind::Ice, "null"),
        ] {
            let raw_value = RawValue::from_string(raw.to_owned()).unwrap();
            let typed = match kind {
                SignalingKind::Sdp => ServerMessage::Sdp {
                    call_id,
                    description: raw_value,
                    from: from.clone(),
                },
                SignalingKind::Ice => ServerMessage::Ice {
                    call_id,
                    candidate: raw_value,
                    from: from.clone(),
                },
            };
            for seq in [1, 42, u64::MAX] {
                assert_eq!(
                    relayed_frame(seq, kind, &call_id_json, raw, &from_json),
                    typed.to_json_with_seq(seq)
                );
            }
        }
    }
}
