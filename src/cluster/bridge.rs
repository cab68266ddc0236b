//! Bridges: a resume (or a session takeover) whose socket reaches another node than the one
//! holding the connection actor. The connection stays where it is — its numbered messages, its
//! call, its pairing, its grace timers — and its new socket is reached over NATS:
//!
//! ```text
//!  node b (socket)                         NATS                      node a (connection)
//!  socket task ── Client / Delivered / Closed ──► callsignal.node.a ──► connection actor
//!  (BridgedSocket actor)                                                  │ SocketLink
//!  socket outbox ◄── Frames / Close / Kill ◄── callsignal.node.b ◄── bridge_out task
//! ```
//!
//! On node b the socket task talks to a [`BridgedSocket`] actor (addressed like a connection
//! actor); on node a the connection actor writes to an ordinary [`SocketLink`] whose queue a
//! task drains onto NATS. Node b's socket task writes exactly the JSON text the connection
//! numbered, so a bridged client sees the same frames, `seq`s and replay as a local one.
//!
//! A bridge lives only while it is whole: each direction numbers its messages, and a gap (NATS
//! dropped one), a failed publish, the NATS link going down, or the other node dying or
//! leaving breaks it. A broken bridge is a dropped socket on both sides: node b closes the
//! client's socket (1013, try again later), node a's connection waits in its resume grace
//! holding every message the client has not confirmed, and the client's next resume — on any
//! node — replays them. Nothing is lost, nothing is queued without bound (both queues are the
//! connection's own bounded ones).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::Cluster;
use super::wire::{BridgeOp, NodeMsg, Reply, Request, ResumeRequest};
use crate::actors::connection::{ConnectionMsg, Outbound, SocketControl, SocketEnd, SocketLink};
use crate::domain::{ConnectionId, SessionId, UserId};
use crate::ws::outbox;
use crate::ws::protocol::{Inbound, close};

/// `n` of a message outside a bridge's sequence (about a bridge the sender no longer knows).
const OUT_OF_BAND: u64 = u64::MAX;

/// Most frames carried by one `Frames` message.
const MAX_FRAMES: usize = 64;

/// How often a bridged socket reports what it wrote when the client sends nothing (so the
/// connection forgets written messages first under its bounds, as for a local socket).
const WRITTEN_EVERY: Duration = Duration::from_millis(100);

/// How long a resume waits for the presence bucket before giving up on other nodes.
const PRESENCE_WAIT: Duration = Duration::from_millis(500);

/// The socket end of a bridge (on the node holding the socket).
struct SocketSide {
    tx: outbox::Sender<Outbound>,
    control: SocketControl,
    /// The node holding the connection, once it answered.
    node: Option<String>,
    next_in: u64,
}

/// The connection end of a bridge (on the node holding the connection actor).
struct ConnSide {
    actor: ActorRef<ConnectionMsg>,
    socket_id: u64,
    control: SocketControl,
    next_in: u64,
}

/// This node's bridges, both ends. Std mutexes: held for a map update, never across an await.
#[derive(Default)]
pub(super) struct Bridges {
    /// Sockets here, by the bridge id this node chose.
    sockets: Mutex<HashMap<u64, SocketSide>>,
    /// Connections here, by (socket's node, bridge id).
    conns: Mutex<HashMap<(String, u64), ConnSide>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A close reason for a close code that crossed a bridge (the socket task takes static text).
fn close_reason(code: u16) -> &'static str {
    match code {
        close::UNAUTHORIZED => "session revoked or expired",
        close::SUPERSEDED => "resumed on a newer socket",
        close::POLICY => "policy violation",
        close::GOING_AWAY => "connection ended",
        _ => "closed by the server",
    }
}

/// A socket admitted by another node's connection: the actor its socket task talks to.
pub struct Bridged {
    /// The [`BridgedSocket`] actor.
    pub actor: ActorRef<ConnectionMsg>,
    /// The connection on the other node.
    pub connection: ConnectionId,
    /// That node.
    pub node: String,
}

/// Why [`Cluster::resume_elsewhere`] did not bridge.
pub enum NotBridged {
    /// No other node holds a matching connection: the socket is given back.
    NotFound(SocketLink),
    /// The bridge broke while being set up (NATS went down): refuse the socket.
    Broken,
}

impl Cluster {
    /// Looks for the connection a `hello` resumes (or takes over) on the other nodes holding
    /// connections of `user` (presence bucket), one node at a time, and bridges `socket` to
    /// the first that has it. Called by the socket task when no connection here matched its
    /// resume token; `party_only`: this node has an idle connection of the session to take
    /// over, so another node takes over only a call party.
    pub async fn resume_elsewhere(
        &self,
        user: UserId,
        session: SessionId,
        resume_token: Option<String>,
        last_seq: Option<u64>,
        party_only: bool,
        socket: SocketLink,
    ) -> Result<Bridged, NotBridged> {
        let nodes: Vec<String> =
            match tokio::time::timeout(PRESENCE_WAIT, self.presence_maybe_live(user)).await {
                Ok(Ok(nodes)) => nodes
                    .into_iter()
                    .map(|(n, _)| n)
                    .filter(|n| n != self.node())
                    .collect(),
                _ => vec![],
            };
        if nodes.is_empty() {
            return Err(NotBridged::NotFound(socket));
        }
        let SocketLink {
            socket_id,
            tx,
            control,
        } = socket;
        // Registered before asking: the connection's first frames (welcome, replay) may arrive
        // before the answer does.
        let id = loop {
            let id = rand::random::<u64>();
            let mut sockets = lock(&self.0.bridges.sockets);
            if id != OUT_OF_BAND && !sockets.contains_key(&id) {
                sockets.insert(
                    id,
                    SocketSide {
                        tx,
                        control: control.clone(),
                        node: None,
                        next_in: 0,
                    },
                );
                break id;
            }
        };
        for node in nodes {
            let req = Request::Resume(ResumeRequest {
                user,
                session,
                resume_token: resume_token.clone(),
                last_seq,
                node: self.node().to_owned(),
                bridge: id,
                party_only,
            });
            let Some(Reply::Resumed(Some(connection))) = self.request(&node, &req).await else {
                continue;
            };
            let known = match lock(&self.0.bridges.sockets).get_mut(&id) {
                Some(side) => {
                    side.node = Some(node.clone());
                    true
                }
                None => false,
            };
            if !known {
                return Err(NotBridged::Broken);
            }
            let args = BridgedSocketArgs {
                cluster: self.clone(),
                node: node.clone(),
                id,
                control: control.clone(),
                n: 0,
                reported: 0,
            };
            return match Actor::spawn(None, BridgedSocket, args).await {
                Ok((actor, _)) => Ok(Bridged {
                    actor,
                    connection,
                    node,
                }),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start a bridged socket");
                    lock(&self.0.bridges.sockets).remove(&id);
                    Err(NotBridged::Broken)
                }
            };
        }
        match lock(&self.0.bridges.sockets).remove(&id) {
            Some(side) => Err(NotBridged::NotFound(SocketLink {
                socket_id,
                tx: side.tx,
                control,
            })),
            None => Err(NotBridged::Broken),
        }
    }

    /// The connection end of bridge `id` of node `node`: a socket link for `actor` whose
    /// frames go to that node (queue of `capacity` items, drained by a task).
    pub fn bridge_link(
        &self,
        node: String,
        id: u64,
        actor: ActorRef<ConnectionMsg>,
        capacity: usize,
    ) -> SocketLink {
        let (tx, rx) = outbox::channel(capacity);
        let control = SocketControl::default();
        let socket_id = crate::ws::socket::next_socket_id();
        lock(&self.0.bridges.conns).insert(
            (node.clone(), id),
            ConnSide {
                actor,
                socket_id,
                control: control.clone(),
                next_in: 0,
            },
        );
        tokio::spawn(
            self.clone()
                .bridge_out(node, id, rx, control.clone(), socket_id),
        );
        SocketLink {
            socket_id,
            tx,
            control,
        }
    }

    /// Forgets the connection end of a bridge that was not used.
    pub fn unbridge(&self, node: &str, id: u64) {
        lock(&self.0.bridges.conns).remove(&(node.to_owned(), id));
    }

    /// Number of bridges with an end on this node (sockets here, connections here).
    pub fn bridges(&self) -> (usize, usize) {
        (
            lock(&self.0.bridges.sockets).len(),
            lock(&self.0.bridges.conns).len(),
        )
    }

    async fn send_bridge(&self, node: &str, id: u64, n: u64, op: BridgeOp) -> bool {
        let msg = NodeMsg::Bridge {
            from: self.node().to_owned(),
            id,
            n,
            op,
        };
        self.send_node(node, &msg).await
    }

    /// Drains the connection's queue for bridge `id` onto NATS, toward `node`'s socket.
    async fn bridge_out(
        self,
        node: String,
        id: u64,
        mut rx: outbox::Receiver<Outbound>,
        control: SocketControl,
        socket_id: u64,
    ) {
        // A batch stops growing at a quarter of the NATS server's payload limit (frames are
        // bounded by `ws.max_message_bytes`, far below it): a replay never exceeds the limit.
        let batch_bytes = (self.0.client.server_info().max_payload / 4).max(64 * 1024);
        let mut n = 0u64;
        let next = |n: &mut u64| {
            let this = *n;
            *n += 1;
            this
        };
        loop {
            let ops = tokio::select! {
                biased;
                code = control.killed() => vec![BridgeOp::Kill(code)],
                out = rx.recv() => match out {
                    None => break,
                    Some(first) => {
                        let mut frames = Vec::new();
                        let mut then_close = None;
                        let mut bytes = 0usize;
                        let take = |out: Outbound, frames: &mut Vec<(u64, Box<RawValue>)>, bytes: &mut usize| match out {
                            Outbound::Text(seq, text) | Outbound::Relayed(seq, text, _) => {
                                *bytes += text.len();
                                if let Ok(raw) = RawValue::from_string(text.as_str().to_owned()) {
                                    frames.push((seq, raw));
                                }
                                None
                            }
                            Outbound::Close(code, reason) => Some((code, reason)),
                        };
                        then_close = then_close.or(take(first, &mut frames, &mut bytes));
                        while then_close.is_none() && frames.len() < MAX_FRAMES && bytes < batch_bytes {
                            match rx.try_recv() {
                                Some(out) => then_close = take(out, &mut frames, &mut bytes),
                                None => break,
                            }
                        }
                        let mut ops = Vec::with_capacity(2);
                        if !frames.is_empty() {
                            ops.push(BridgeOp::Frames(frames));
                        }
                        if let Some((code, reason)) = then_close {
                            ops.push(BridgeOp::Close(code, reason.to_owned()));
                        }
                        ops
                    }
                },
            };
            let mut done = false;
            for op in ops {
                done |= matches!(op, BridgeOp::Kill(_) | BridgeOp::Close(..));
                if !self.send_bridge(&node, id, next(&mut n), op).await {
                    // The socket's node will not get these: the socket counts as dropped,
                    // the connection holds what was not confirmed for the next resume, and
                    // the socket's node is told to close it (if NATS takes that).
                    self.break_conn_side(&node, id, socket_id);
                    self.reply_oob(node, id, BridgeOp::Kill(close::TRY_AGAIN_LATER));
                    return;
                }
            }
            if done {
                break;
            }
        }
        let mut conns = lock(&self.0.bridges.conns);
        if conns
            .get(&(node.clone(), id))
            .is_some_and(|c| c.socket_id == socket_id)
        {
            conns.remove(&(node, id));
        }
    }

    /// The connection end of a bridge breaks: its socket counts as dropped.
    fn break_conn_side(&self, node: &str, id: u64, socket_id: u64) {
        let side = {
            let mut conns = lock(&self.0.bridges.conns);
            let key = (node.to_owned(), id);
            match conns.get(&key) {
                Some(c) if c.socket_id == socket_id => conns.remove(&key),
                _ => None,
            }
        };
        if let Some(c) = side {
            let _ = c
                .actor
                .cast(ConnectionMsg::SocketClosed(c.socket_id, SocketEnd::Dropped));
        }
    }

    /// A bridge message arrived on this node's subject.
    pub(super) fn on_bridge(&self, from: String, id: u64, n: u64, op: BridgeOp) {
        match op {
            BridgeOp::Frames(_) | BridgeOp::Close(..) | BridgeOp::Kill(_) => {
                self.on_socket_side(from, id, n, op)
            }
            _ => self.on_conn_side(from, id, n, op),
        }
    }

    /// Frames (or a close) for a socket here.
    fn on_socket_side(&self, from: String, id: u64, n: u64, op: BridgeOp) {
        let mut sockets = lock(&self.0.bridges.sockets);
        let Some(side) = sockets.get_mut(&id) else {
            drop(sockets);
            if !matches!(op, BridgeOp::Kill(_) | BridgeOp::Close(..)) {
                // The socket is gone: the connection's end learns it was dropped.
                self.reply_oob(
                    from,
                    id,
                    BridgeOp::Closed {
                        written: 0,
                        end: SocketEnd::Dropped,
                    },
                );
            }
            return;
        };
        if side.node.as_ref().is_some_and(|node| *node != from) {
            // A second node answered the same resume: only the first keeps the socket.
            drop(sockets);
            return self.reply_oob(from, id, BridgeOp::Kill(close::SUPERSEDED));
        }
        side.node.get_or_insert_with(|| from.clone());
        if n != OUT_OF_BAND {
            if n != side.next_in {
                tracing::warn!(peer = %from, expected = side.next_in, got = n,
                    "bridged socket lost a message on NATS; closing it for a resume");
                side.control.kill(close::TRY_AGAIN_LATER);
                sockets.remove(&id);
                return;
            }
            side.next_in += 1;
        }
        match op {
            BridgeOp::Frames(frames) => {
                for (seq, raw) in frames {
                    let text = Utf8Bytes::from(raw.get().to_owned());
                    if side.tx.try_send(Outbound::Text(seq, text)).is_err() {
                        // Full: the client does not read; closed: the socket task is ending.
                        side.control.kill(close::POLICY);
                        break;
                    }
                }
            }
            BridgeOp::Close(code, _)
                if side
                    .tx
                    .try_send(Outbound::Close(code, close_reason(code)))
                    .is_err() =>
            {
                side.control.kill(code);
            }
            BridgeOp::Kill(code) => {
                side.control.kill(code);
                sockets.remove(&id);
            }
            _ => {}
        }
    }

    /// What a bridged socket on node `from` says to a connection here.
    fn on_conn_side(&self, from: String, id: u64, n: u64, op: BridgeOp) {
        let key = (from, id);
        let mut conns = lock(&self.0.bridges.conns);
        let Some(side) = conns.get_mut(&key) else {
            drop(conns);
            if !matches!(op, BridgeOp::Closed { .. }) {
                self.reply_oob(key.0, id, BridgeOp::Kill(close::TRY_AGAIN_LATER));
            }
            return;
        };
        if n != OUT_OF_BAND {
            if n != side.next_in {
                tracing::warn!(peer = %key.0, expected = side.next_in, got = n,
                    "bridged connection lost a message on NATS; its socket counts as dropped");
                let socket_id = side.socket_id;
                drop(conns);
                self.break_conn_side(&key.0, id, socket_id);
                return self.reply_oob(key.0, id, BridgeOp::Kill(close::TRY_AGAIN_LATER));
            }
            side.next_in += 1;
        }
        let msg = match op {
            BridgeOp::Client {
                written,
                message,
                reference,
            } => {
                side.control.mark_written(written);
                ConnectionMsg::Client(Inbound {
                    message: message.into(),
                    reference,
                    received: Instant::now(),
                    ack: None,
                })
            }
            BridgeOp::Delivered { written, seq } => {
                side.control.mark_written(written);
                ConnectionMsg::Delivered(seq)
            }
            BridgeOp::Closed { written, end } => {
                side.control.mark_written(written);
                let msg = ConnectionMsg::SocketClosed(side.socket_id, end);
                let side = conns.remove(&key);
                drop(conns);
                if let Some(side) = side {
                    let _ = side.actor.cast(msg);
                }
                return;
            }
            BridgeOp::Revoke => ConnectionMsg::Revoke,
            _ => return,
        };
        let _ = side.actor.cast(msg);
    }

    /// Sends an out-of-band bridge message (from a synchronous context).
    fn reply_oob(&self, node: String, id: u64, op: BridgeOp) {
        let this = self.clone();
        tokio::spawn(async move { this.send_bridge(&node, id, OUT_OF_BAND, op).await });
    }

    /// Breaks every bridge with an end on `node` (`None`: every bridge): the node died or left,
    /// or NATS is unreachable. Sockets here close with `code`; connections here count their
    /// socket as dropped and wait in their resume grace.
    pub(super) fn break_bridges(&self, node: Option<&str>, code: u16) {
        let sockets: Vec<SocketSide> = lock(&self.0.bridges.sockets)
            .extract_if(|_, s| node.is_none() || s.node.as_deref() == node)
            .map(|(_, s)| s)
            .collect();
        for s in &sockets {
            s.control.kill(code);
        }
        let conns: Vec<ConnSide> = lock(&self.0.bridges.conns)
            .extract_if(|(n, _), _| node.is_none_or(|node| node == n))
            .map(|(_, c)| c)
            .collect();
        for c in conns {
            let _ = c
                .actor
                .cast(ConnectionMsg::SocketClosed(c.socket_id, SocketEnd::Dropped));
        }
        if !sockets.is_empty() {
            match node {
                None if code == close::GOING_AWAY => {
                    tracing::info!(node = %self.node(), sockets = sockets.len(),
                        "bridged sockets closed (this node stops)")
                }
                _ => tracing::warn!(node = %self.node(), peer = node.unwrap_or("*"),
                    sockets = sockets.len(),
                    "bridged sockets closed (their connection's node is unreachable)"),
            }
        }
    }
}

/// The socket end's stand-in for the connection actor on another node: what the socket task
/// casts to it crosses NATS in order, numbered.
pub struct BridgedSocket;

/// State of a [`BridgedSocket`].
pub struct BridgedSocketArgs {
    cluster: Cluster,
    node: String,
    id: u64,
    control: SocketControl,
    n: u64,
    /// The `written` last reported to the connection.
    reported: u64,
}

impl Actor for BridgedSocket {
    type Msg = ConnectionMsg;
    type State = BridgedSocketArgs;
    type Arguments = BridgedSocketArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<Self::Msg>,
        args: BridgedSocketArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn post_start(
        &self,
        me: ActorRef<Self::Msg>,
        _s: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // `Delivered(0)`: nothing newly delivered, report the written progress if any.
        me.send_interval(WRITTEN_EVERY, || ConnectionMsg::Delivered(0));
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<Self::Msg>,
        s: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        lock(&s.cluster.0.bridges.sockets).remove(&s.id);
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<Self::Msg>,
        msg: Self::Msg,
        s: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let written = s.control.written();
        let op = match msg {
            ConnectionMsg::Delivered(0) if written <= s.reported => return Ok(()),
            ConnectionMsg::Client(inbound) => BridgeOp::Client {
                written,
                message: inbound.message.into(),
                reference: inbound.reference,
            },
            ConnectionMsg::Delivered(seq) => BridgeOp::Delivered { written, seq },
            ConnectionMsg::SocketClosed(_, end) => {
                let n = s.n;
                s.cluster
                    .send_bridge(&s.node, s.id, n, BridgeOp::Closed { written, end })
                    .await;
                me.stop(None);
                return Ok(());
            }
            ConnectionMsg::Revoke => BridgeOp::Revoke,
            ConnectionMsg::Kick(_, _, code) => {
                s.control.kill(code);
                return Ok(());
            }
            _ => return Ok(()),
        };
        let n = s.n;
        s.n += 1;
        s.reported = written;
        if !s.cluster.send_bridge(&s.node, s.id, n, op).await {
            // The connection's node will not hear this: close the socket; the client resumes.
            s.control.kill(close::TRY_AGAIN_LATER);
        }
        Ok(())
    }
}
