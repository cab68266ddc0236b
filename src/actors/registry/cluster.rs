//! The registry in cluster mode: what it does with what other nodes say, and how an invite is
//! decided across nodes. Everything here runs only when `cluster.nats_url` is set; the
//! registry's single-node code calls in through a handful of hooks that do nothing otherwise.
//!
//! A call's actor lives on the caller's node (its owner). Connections and calls of other nodes
//! appear here as stand-ins ([`crate::cluster::proxy`]), so the call actor and the connection
//! actors are the same code on one node or many. Who may be in a call is decided by atomic
//! claims in the `callsignal_calls` bucket; the first accept wins because only the owner's one
//! call actor decides it.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use ractor::{Actor, ActorRef, RpcReplyPort};

use super::{CallEntry, CallEntryInfo, RegistryMsg, RegistryState};
use crate::actors::ConnRef;
use crate::actors::ask;
use crate::actors::call::CallMsg;
use crate::actors::connection::{ConnectionMsg, Join, Pairing};
use crate::actors::supervisor::SupervisorMsg;
use crate::cluster::Cluster;
use crate::cluster::kv::{CallClaim, Claim};
use crate::cluster::proxy::{self, RemoteCall, RemoteCallArgs, RemoteConn, RemoteConnArgs};
use crate::cluster::wire::{
    Broadcast, CallOp, ConnOp, NodeMsg, Reply, Request, ResumeRequest, WireCallInfo, WireConn,
    WireServerMsg,
};
use crate::domain::{CallId, ConnectionId, SessionId, UserId, UserRef, Username};
use crate::ws::protocol::{EndReason, ErrorCode, ServerMessage};
use entity::signaling_messages::SignalingKind;

/// How long a connection admission waits for the presence bucket before counting only the
/// connections of this node.
const PRESENCE_WAIT: Duration = Duration::from_millis(500);

/// What the cluster tells the registry.
pub enum ClusterEvent {
    /// A message on this node's subject.
    Node(NodeMsg),
    /// Another node revoked a session.
    Revoke(SessionId),
    /// A connection of another node ended.
    ConnGone(ConnectionId),
    /// A node died (`recover`: end its unfinished call rows) or left.
    NodeDown {
        /// The node.
        node: String,
        /// Whether its rows are to be ended `server_restart` here.
        recover: bool,
        /// It stopped in order (SIGTERM): its calls and its parties' calls end
        /// `server_shutdown`, as it ends them itself (whichever word arrives first).
        leaving: bool,
    },
    /// Another node asks for a user's connections here.
    ListConns(UserId, RpcReplyPort<Vec<WireConn>>),
    /// Another node asks whether a call of this node is live.
    CallLive(CallId, RpcReplyPort<bool>),
    /// Another node holds a socket resuming (or taking over) a connection of this node: attach
    /// it through bridge `bridge`; answers the connection, if one matched.
    Resume(ResumeRequest, RpcReplyPort<Option<ConnectionId>>),
    /// Another node's user reached the per-user cap: release their oldest connection here
    /// waiting in its grace; answers whether one was.
    ReleaseDetached(UserId, RpcReplyPort<bool>),
    /// An invite decided by the claims; ring now.
    InviteReady(Box<InviteReady>),
    /// The invite of this call id is decided (rung, ended at once, or refused): its claims no
    /// longer need to be reported live while pending.
    InviteSettled(CallId),
    /// An invite that ends at once (glare, busy, unavailable).
    EndedAtOnce {
        /// The inviting connection.
        from: ConnRef,
        /// The invited user.
        callee: UserRef,
        /// The invite's `ref`.
        reference: Option<String>,
        /// Why.
        reason: EndReason,
    },
}

/// An invite whose caller and callee are claimed.
pub struct InviteReady {
    from: ConnRef,
    callee: UserRef,
    call_id: CallId,
    remote: Vec<WireConn>,
    reference: Option<String>,
}

/// A stand-in for a connection of another node.
struct Proxy {
    node: String,
    user: UserRef,
    actor: ActorRef<ConnectionMsg>,
}

/// The registry's cluster state.
pub(super) struct ClusterState {
    link: Cluster,
    /// Stand-ins for connections of other nodes.
    proxies: HashMap<ConnectionId, Proxy>,
    /// Calls owned by other nodes known here → their owner.
    remote_calls: HashMap<CallId, String>,
    /// Calls owned here → the other nodes told of them.
    told: HashMap<CallId, Vec<String>>,
    /// Invites of this node being decided: their claims are live although no call exists yet.
    pending: HashSet<CallId>,
}

impl ClusterState {
    pub(super) fn new(link: Cluster) -> Self {
        Self {
            link,
            proxies: HashMap::new(),
            remote_calls: HashMap::new(),
            told: HashMap::new(),
            pending: HashSet::new(),
        }
    }
}

impl RegistryState {
    fn link(&self) -> Option<Cluster> {
        self.cluster.as_ref().map(|c| c.link.clone())
    }

    // ----- hooks called by the single-node code (no-ops without a cluster) -----

    /// `user`'s connection count here changed.
    pub(super) fn cluster_presence(&self, user: UserId) {
        if let Some(c) = &self.cluster {
            let count = self.users.get(&user).map_or(0, |u| u.conns.len());
            c.link.set_presence(user, count);
        }
    }

    /// A connection of this node ended: other nodes drop their stand-ins.
    pub(super) fn cluster_conn_gone(&self, id: ConnectionId) {
        if let Some(link) = self.link() {
            tokio::spawn(async move { link.broadcast(Broadcast::ConnGone(id)).await });
        }
    }

    /// A session was revoked here: every node closes its sockets.
    pub(super) fn cluster_revoke(&self, session: SessionId) {
        if let Some(link) = self.link() {
            tokio::spawn(async move { link.broadcast(Broadcast::Revoke(session)).await });
        }
    }

    /// A device of a user with no call known here appeared: if a call rings the user from
    /// another node (its claim says so), that node is asked to ring this device too.
    /// A device of `conn`'s user appeared here and this node knows no call of theirs: if the
    /// user's claim names a call owned by another node, that node hears of the device.
    pub(super) fn cluster_device_joined(&self, conn: &ConnRef) {
        let Some(link) = self.link() else { return };
        let (user, wire) = (conn.user.id, link.wire_conn(conn));
        tokio::spawn(async move {
            let Ok(Some(claim)) = link.kv().claim_of(user).await else {
                return;
            };
            // Ringing: the owner rings the device. Active (or the caller's side): the owner
            // tells this node of the call, so the device can end it (`call.hangup` from any
            // connection of a party's user) and sees it in `welcome.call` when it reconnects.
            let party = claim.callee == user || claim.caller == user;
            if party && claim.owner != link.node() {
                let op = CallOp::DeviceJoined(wire);
                let msg = NodeMsg::ToCall {
                    call: claim.call_id,
                    op,
                };
                link.send_node(&claim.owner, &msg).await;
            }
        });
    }

    /// A `call.hangup` for a call this node does not know: if the user's claim names it, owned
    /// by another node (the device appeared before that node told this one of the call), the
    /// owner gets it; otherwise `unknown_call`.
    pub(super) fn cluster_hangup_elsewhere(
        &self,
        from: ConnRef,
        call_id: CallId,
        action: crate::actors::call::CallAction,
        reference: Option<String>,
    ) {
        let Some(link) = self.link() else { return };
        tokio::spawn(async move {
            match link.kv().claim_of(from.user.id).await {
                Ok(Some(claim)) if claim.call_id == call_id && claim.owner != link.node() => {
                    let op = CallOp::Client {
                        from: link.wire_conn(&from),
                        action: action.into(),
                        reference,
                    };
                    let msg = NodeMsg::ToCall { call: call_id, op };
                    link.send_node(&claim.owner, &msg).await;
                }
                _ => from.send(ServerMessage::error(
                    ErrorCode::UnknownCall,
                    "unknown or ended call",
                    reference,
                    Some(call_id),
                )),
            }
        });
    }

    /// Connections of `user` on other nodes (for the per-user cap).
    pub(super) async fn cluster_conns_elsewhere(&self, user: UserId) -> usize {
        let Some(link) = self.link() else { return 0 };
        match tokio::time::timeout(PRESENCE_WAIT, link.presence_of(user)).await {
            Ok(Ok(nodes)) => nodes.iter().map(|(_, n)| n).sum(),
            _ => 0,
        }
    }

    /// The user is at the per-user cap with nothing here to release: another node releases a
    /// connection of theirs waiting in its grace (bounded wait; `false` without a cluster).
    pub(super) async fn cluster_release_elsewhere(&self, user: UserId) -> bool {
        let Some(link) = self.link() else {
            return false;
        };
        tokio::time::timeout(PRESENCE_WAIT, link.release_detached_elsewhere(user))
            .await
            .unwrap_or(false)
    }

    /// A call owned here (re)announced itself: nodes told of it hear the change.
    pub(super) fn cluster_call_changed(&self, info: &CallEntryInfo) {
        let Some(c) = &self.cluster else { return };
        let Some(nodes) = c.told.get(&info.call_id) else {
            return;
        };
        let callee_conn = info.callee_conn.and_then(|id| self.wire_of(id));
        let msg = WireCallInfo {
            call_id: info.call_id,
            owner: c.link.node().to_owned(),
            caller: c.link.wire_conn(&info.caller),
            callee: (&info.callee).into(),
            callee_conn: callee_conn.clone(),
        };
        let (link, nodes) = (c.link.clone(), nodes.clone());
        let (call, callee) = (info.call_id, info.callee.id);
        tokio::spawn(async move {
            for node in &nodes {
                link.send_node(node, &NodeMsg::CallInfo(msg.clone())).await;
            }
            if callee_conn.is_some() {
                link.kv().mark_answered(callee, call).await;
            }
        });
    }

    /// A call is over here: for a call owned here the other nodes forget it and its users are
    /// free again cluster-wide; a stand-in for a remote call stops.
    pub(super) fn cluster_call_forgotten(&mut self, entry: &CallEntry) {
        let Some(c) = &mut self.cluster else { return };
        let id = entry.info.call_id;
        if c.remote_calls.remove(&id).is_some() {
            entry.actor.stop(None);
            return;
        }
        let nodes = c.told.remove(&id).unwrap_or_default();
        let link = c.link.clone();
        let users = [entry.info.caller.user.id, entry.info.callee.id];
        tokio::spawn(async move {
            for user in users {
                link.kv().release_user(user, id).await;
            }
            for node in &nodes {
                link.send_node(node, &NodeMsg::CallGone(id)).await;
            }
        });
    }

    /// The invite path in a cluster: claims, presence and other nodes' devices are gathered
    /// off the registry's loop, then [`ClusterEvent::InviteReady`] rings.
    pub(super) fn cluster_invite(
        &mut self,
        me: &ActorRef<RegistryMsg>,
        from: ConnRef,
        to: Username,
        reference: Option<String>,
    ) {
        let Some(link) = self.link() else { return };
        let call_id = CallId::new();
        if let Some(c) = self.cluster.as_mut() {
            c.pending.insert(call_id);
        }
        let known = self.names.get(&to).copied();
        let db = self.args.db.clone();
        let me = me.clone();
        tokio::spawn(async move {
            let settled = me.clone();
            invite_task(link, db, me, from, to, known, call_id, reference).await;
            let _ = settled.cast(RegistryMsg::Cluster(ClusterEvent::InviteSettled(call_id)));
        });
    }

    // ----- what other nodes say -----

    pub(super) async fn on_cluster(&mut self, ev: ClusterEvent) {
        if self.cluster.is_none() {
            return;
        }
        match ev {
            ClusterEvent::Node(msg) => self.on_node_msg(msg).await,
            ClusterEvent::Revoke(session) => {
                for e in self.conns.values().filter(|e| e.session_id == session) {
                    let _ = e.conn.actor.cast(ConnectionMsg::Revoke);
                }
            }
            ClusterEvent::ConnGone(id) => {
                if let Some(p) = self.cluster.as_mut().and_then(|c| c.proxies.remove(&id)) {
                    p.actor.stop(None);
                }
            }
            ClusterEvent::NodeDown {
                node,
                recover,
                leaving,
            } => self.node_down(node, recover, leaving),
            ClusterEvent::ListConns(user, reply) => {
                let conns: Vec<WireConn> = self
                    .users
                    .get(&user)
                    .map(|u| u.conns.iter().filter_map(|id| self.wire_of(*id)).collect())
                    .unwrap_or_default();
                let _ = reply.send(conns);
            }
            ClusterEvent::CallLive(call, reply) => {
                let owned = self.calls.contains_key(&call) && !self.is_remote_call(call);
                let pending = self
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.pending.contains(&call));
                let _ = reply.send(owned || pending);
            }
            ClusterEvent::Resume(req, reply) => {
                let _ = reply.send(self.resume_from_node(req));
            }
            ClusterEvent::ReleaseDetached(user, reply) => {
                let victim = self.oldest_detached(user);
                if let Some(id) = victim {
                    tracing::info!(connection_id = %id, user_id = %user,
                        "connection waiting in its grace released for a new one on another node");
                    self.release(id);
                }
                let _ = reply.send(victim.is_some());
            }
            ClusterEvent::InviteSettled(call) => {
                if let Some(c) = self.cluster.as_mut() {
                    c.pending.remove(&call);
                }
            }
            ClusterEvent::InviteReady(ready) => self.ring(*ready).await,
            ClusterEvent::EndedAtOnce {
                from,
                callee,
                reference,
                reason,
            } => self.ended_at_once(&from, callee, reference, reason),
        }
    }

    /// A socket on `node` resumes (or takes over) a connection of this node: the same rules as
    /// a local `hello` ([`RegistryState::resumable`]), the socket reached through a bridge.
    fn resume_from_node(&mut self, req: ResumeRequest) -> Option<ConnectionId> {
        let link = self.link()?;
        let (user, node, bridge) = (req.user, req.node, req.bridge);
        let token = req.resume_token.as_deref();
        let (id, join) = self.resumable(user, req.session, token, req.last_seq)?;
        if req.party_only && matches!(join, Join::Takeover) && !self.is_party(user, id) {
            return None;
        }
        let actor = self.conns.get(&id)?.conn.actor.clone();
        let capacity = self.args.settings.ws.outbound_queue + 8;
        let socket = link.bridge_link(node.clone(), bridge, actor, capacity);
        let limiter = self.limiter_of(user);
        match self.join(id, socket, join, limiter) {
            Ok(_) => {
                tracing::info!(connection_id = %id, user_id = %user, peer = %node,
                    "connection resumed by a socket on another node (bridged)");
                Some(id)
            }
            Err(_) => {
                link.unbridge(&node, bridge);
                None
            }
        }
    }

    /// The wire form of local connection `id`.
    fn wire_of(&self, id: ConnectionId) -> Option<WireConn> {
        let c = self.cluster.as_ref()?;
        if let Some(e) = self.conns.get(&id) {
            return Some(c.link.wire_conn(&e.conn));
        }
        c.proxies.get(&id).map(|p| WireConn {
            id,
            user: (&p.user).into(),
            node: p.node.clone(),
        })
    }

    /// A connection anywhere, as a local actor: the connection itself, or its stand-in.
    async fn resolve(&mut self, w: &WireConn) -> Option<ConnRef> {
        let c = self.cluster.as_mut()?;
        if w.node == c.link.node() {
            return self.conns.get(&w.id).map(|e| e.conn.clone());
        }
        let user = w.user.to_user();
        if let Some(p) = c.proxies.get(&w.id) {
            return Some(ConnRef {
                id: w.id,
                user,
                actor: p.actor.clone(),
                line: None,
            });
        }
        let name = proxy::remote_name(&self.args.system_id, &w.node, w.id);
        let actor = match ractor::registry::where_is(name.clone()) {
            // Left by a registry that was restarted.
            Some(cell) => cell.into(),
            None => {
                let args = RemoteConnArgs {
                    cluster: c.link.clone(),
                    node: w.node.clone(),
                    conn: w.id,
                };
                match Actor::spawn(Some(name), RemoteConn, args).await {
                    Ok((actor, _)) => actor,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a remote connection stand-in");
                        return None;
                    }
                }
            }
        };
        c.proxies.insert(
            w.id,
            Proxy {
                node: w.node.clone(),
                user: user.clone(),
                actor: actor.clone(),
            },
        );
        Some(ConnRef {
            id: w.id,
            user,
            actor,
            line: None,
        })
    }

    async fn on_node_msg(&mut self, msg: NodeMsg) {
        match msg {
            NodeMsg::ToConn { conn, op } => self.deliver_to_conn(conn, op).await,
            NodeMsg::ToCall { call, op } => self.deliver_to_call(call, op).await,
            // Handled by the cluster link itself, never forwarded here.
            NodeMsg::Bridge { .. } => {}
            NodeMsg::CallInfo(info) => self.remote_call_info(info).await,
            NodeMsg::CallGone(id) => {
                if self
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.remote_calls.contains_key(&id))
                {
                    self.forget_call(id);
                }
            }
        }
    }

    async fn deliver_to_conn(&mut self, conn: ConnectionId, op: ConnOp) {
        let Some(actor) = self.conns.get(&conn).map(|e| e.conn.actor.clone()) else {
            return;
        };
        let msg = match op {
            ConnOp::Deliver(w) => {
                if let WireServerMsg::Ended {
                    call_id, reason, ..
                } = &w
                {
                    // The owner freed the users before telling anyone; so does this node,
                    // before its client can react with a new invite.
                    if *reason != EndReason::AnsweredElsewhere && self.is_remote_call(*call_id) {
                        self.forget_call(*call_id);
                    }
                }
                ConnectionMsg::Deliver(w.into_msg())
            }
            ConnOp::Relayed(w) => {
                let kind = match &w {
                    WireServerMsg::Ice { .. } => SignalingKind::Ice,
                    _ => SignalingKind::Sdp,
                };
                ConnectionMsg::RelayedFromNode(w.into_msg(), kind)
            }
            ConnOp::Paired {
                call_id,
                peer,
                caller,
            } => match self.resolve(&peer).await {
                // The call's counters live on its owner: what this side relays is counted
                // there, on arrival (`RelayedFromNode`), so these stay unread.
                Some(peer) => ConnectionMsg::Paired(Pairing {
                    call_id,
                    peer,
                    counts: Default::default(),
                    caller,
                }),
                None => return,
            },
            ConnOp::Unpaired(call_id) => ConnectionMsg::Unpaired(call_id),
        };
        let _ = actor.cast(msg);
    }

    fn is_remote_call(&self, id: CallId) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|c| c.remote_calls.contains_key(&id))
    }

    async fn deliver_to_call(&mut self, call: CallId, op: CallOp) {
        let msg = match op {
            CallOp::Client {
                from,
                action,
                reference,
            } => {
                let Some(from) = self.resolve(&from).await else {
                    return;
                };
                if !self.calls.contains_key(&call) {
                    return from.send(ServerMessage::error(
                        ErrorCode::UnknownCall,
                        "unknown or ended call",
                        reference,
                        Some(call),
                    ));
                }
                CallMsg::Client {
                    from,
                    action: action.into(),
                    reference,
                }
            }
            CallOp::PartyDetached(c) => CallMsg::PartyDetached(c),
            CallOp::PartyAttached(c) => CallMsg::PartyAttached(c),
            CallOp::PartyGone(c, reason) => CallMsg::PartyGone(c, reason),
            CallOp::DeviceJoined(w) => {
                self.tell_node_of_call(call, &w.node).await;
                match self.resolve(&w).await {
                    Some(conn) => CallMsg::DeviceJoined(conn),
                    None => return,
                }
            }
        };
        if let Some(c) = self.calls.get(&call) {
            let _ = c.actor.cast(msg);
        }
    }

    /// Makes sure node `node` knows call `call` (owned here) before the call's messages reach
    /// a device there.
    async fn tell_node_of_call(&mut self, call: CallId, node: &str) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let Some(told) = c.told.get_mut(&call) else {
            return;
        };
        if told.iter().any(|n| n == node) {
            return;
        }
        told.push(node.to_owned());
        let link = c.link.clone();
        let Some(entry) = self.calls.get(&call) else {
            return;
        };
        let info = WireCallInfo {
            call_id: call,
            owner: link.node().to_owned(),
            caller: link.wire_conn(&entry.info.caller),
            callee: (&entry.info.callee).into(),
            callee_conn: entry.info.callee_conn.and_then(|id| self.wire_of(id)),
        };
        link.send_node(node, &NodeMsg::CallInfo(info)).await;
    }

    /// A call owned elsewhere involves users here: a stand-in takes its place in the tables, so
    /// busy checks, `welcome.call` and party changes work as for a local call.
    async fn remote_call_info(&mut self, info: WireCallInfo) {
        let Some(caller) = self.resolve(&info.caller).await else {
            return;
        };
        let entry = CallEntryInfo {
            call_id: info.call_id,
            caller,
            callee: info.callee.to_user(),
            callee_conn: info.callee_conn.as_ref().map(|c| c.id),
        };
        let actor = match self.calls.get(&info.call_id) {
            Some(c) => c.actor.clone(),
            None => {
                let Some(c) = self.cluster.as_ref() else {
                    return;
                };
                let args = RemoteCallArgs {
                    cluster: c.link.clone(),
                    owner: info.owner.clone(),
                    call: info.call_id,
                };
                match Actor::spawn(None, RemoteCall, args).await {
                    Ok((actor, _)) => actor,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a remote call stand-in");
                        return;
                    }
                }
            }
        };
        if let Some(c) = self.cluster.as_mut() {
            c.remote_calls.insert(info.call_id, info.owner);
        }
        self.register_call(actor, entry);
    }

    /// A node is gone: calls it owned end here for their parties (`connection_lost`, or
    /// `server_shutdown` when it left in order), calls
    /// owned here lose its connections, its stand-ins stop, and (for a dead node) its
    /// unfinished call rows are ended `server_restart`.
    fn node_down(&mut self, node: String, recover: bool, leaving: bool) {
        let reason = if leaving {
            EndReason::ServerShutdown
        } else {
            EndReason::ConnectionLost
        };
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let lost: Vec<CallId> = c
            .remote_calls
            .iter()
            .filter(|(_, owner)| **owner == node)
            .map(|(id, _)| *id)
            .collect();
        let gone: Vec<(ConnectionId, Proxy)> =
            c.proxies.extract_if(|_, p| p.node == node).collect();
        let link = c.link.clone();
        for id in lost {
            self.end_remote_call(id, reason);
        }
        for (conn, p) in &gone {
            for entry in self.calls.values() {
                if entry.info.caller.user.id == p.user.id || entry.info.callee.id == p.user.id {
                    let _ = entry.actor.cast(CallMsg::PartyGone(*conn, reason));
                }
            }
            p.actor.stop(None);
        }
        if recover {
            let db = self.args.db.clone();
            let wait = self.args.settings.cluster.node_timeout() * 2;
            tokio::spawn(async move {
                // Only once its claim has expired: a node that is merely slow (its claim still
                // refreshed) keeps its calls.
                let deadline = tokio::time::Instant::now() + wait;
                loop {
                    match link.kv().node_claimed(&node).await {
                        Ok(false) => break,
                        Ok(true) if tokio::time::Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        Ok(true) => {
                            return tracing::warn!(peer = %node,
                                "a lost node still holds its claim; its calls are left to it");
                        }
                        Err(e) => {
                            return tracing::warn!(peer = %node, error = %e,
                                "cannot check a lost node's claim; its calls are left to it");
                        }
                    }
                }
                match crate::store::calls::end_unfinished(
                    &db,
                    &node,
                    EndReason::ServerRestart.as_str(),
                )
                .await
                {
                    Ok(n) => tracing::warn!(node = %link.node(), peer = %node, calls = n,
                        "ended the unfinished calls of a lost node (server_restart)"),
                    Err(e) => tracing::error!(peer = %node, error = %e,
                        "cannot end the calls of a lost node"),
                }
            });
        }
    }

    /// This node stops: a call owned elsewhere with parties (or ringing devices) here ends for
    /// them `server_shutdown` — they hear `call.ended` before their sockets close 1001 — and its
    /// owner is told first, so the other party hears the same reason.
    pub(super) async fn cluster_shutdown(&mut self) {
        let Some(link) = self.link() else { return };
        let remote: Vec<(CallId, String)> = self
            .cluster
            .as_ref()
            .map(|c| {
                c.remote_calls
                    .iter()
                    .map(|(id, o)| (*id, o.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for (id, owner) in remote {
            let Some(entry) = self.calls.get(&id) else {
                continue;
            };
            let mut here: Vec<ConnectionId> = vec![entry.info.caller.id];
            match entry.info.callee_conn {
                Some(conn) => here.push(conn),
                None => here.extend(
                    self.users
                        .get(&entry.info.callee.id)
                        .map(|u| u.conns.clone())
                        .unwrap_or_default(),
                ),
            }
            for conn in here.into_iter().filter(|c| self.conns.contains_key(c)) {
                let op = CallOp::PartyGone(conn, EndReason::ServerShutdown);
                link.send_node(&owner, &NodeMsg::ToCall { call: id, op })
                    .await;
            }
            self.end_remote_call(id, EndReason::ServerShutdown);
        }
    }

    /// Ends, for the parties on this node, a call whose owner is gone.
    fn end_remote_call(&mut self, id: CallId, reason: EndReason) {
        let Some(c) = self.calls.get(&id) else { return };
        let ended = ServerMessage::CallEnded {
            call_id: id,
            reason,
            cause: None,
            reference: None,
        };
        let mut told: Vec<ConnectionId> = vec![c.info.caller.id];
        match c.info.callee_conn {
            Some(conn) => told.push(conn),
            None => {
                if let Some(u) = self.users.get(&c.info.callee.id) {
                    told.extend(u.conns.iter().copied());
                }
            }
        }
        for conn in told.iter().filter_map(|c| self.conns.get(c)) {
            let _ = conn.conn.actor.cast(ConnectionMsg::Unpaired(id));
            conn.conn.send(ended.clone());
        }
        if reason == EndReason::ServerShutdown {
            tracing::info!(call_id = %id, "call of another node ended here: this node stops");
        } else {
            tracing::warn!(call_id = %id, reason = reason.as_str(), "call ended: its node is gone");
        }
        self.forget_call(id);
    }

    /// Rings a claimed invite: this node's devices of the callee and the other nodes'.
    async fn ring(&mut self, r: InviteReady) {
        let Some(link) = self.link() else { return };
        let release = |link: &Cluster, users: [UserId; 2], call: CallId| {
            let link = link.clone();
            tokio::spawn(async move {
                for u in users {
                    link.kv().release_user(u, call).await;
                }
            });
        };
        let users = [r.from.user.id, r.callee.id];
        if !self.admit_invite_to(r.from.user.id, r.callee.id) {
            release(&link, users, r.call_id);
            self.args.metrics.rate_limited.inc();
            return r.from.send(ServerMessage::error(
                ErrorCode::RateLimited,
                "this user was called too often in the last minute; try again later",
                r.reference,
                None,
            ));
        }
        let mut conns: Vec<ConnRef> = self
            .users
            .get(&r.callee.id)
            .map(|u| {
                u.conns
                    .iter()
                    .filter_map(|c| self.conns.get(c))
                    .map(|e| e.conn.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut nodes: Vec<String> = vec![];
        for w in &r.remote {
            if let Some(conn) = self.resolve(w).await {
                conns.push(conn);
                if !nodes.contains(&w.node) {
                    nodes.push(w.node.clone());
                }
            }
        }
        if conns.is_empty() {
            release(&link, users, r.call_id);
            return self.ended_at_once(&r.from, r.callee, r.reference, EndReason::Unavailable);
        }
        // The other nodes learn of the call before its first message reaches them (one
        // publisher, one order), so a quick accept finds it known there.
        let info = WireCallInfo {
            call_id: r.call_id,
            owner: link.node().to_owned(),
            caller: link.wire_conn(&r.from),
            callee: (&r.callee).into(),
            callee_conn: None,
        };
        for node in &nodes {
            link.send_node(node, &NodeMsg::CallInfo(info.clone())).await;
        }
        let args = self.call_args(r.call_id, &r.from, &r.callee, conns, r.reference.clone());
        let Some(actor) = ask(&self.args.calls, |p| {
            SupervisorMsg::SpawnCall(Box::new(args), p)
        })
        .await
        .flatten() else {
            release(&link, users, r.call_id);
            for node in &nodes {
                link.send_node(node, &NodeMsg::CallGone(r.call_id)).await;
            }
            return r.from.send(ServerMessage::error(
                ErrorCode::InternalError,
                "could not start the call",
                r.reference,
                None,
            ));
        };
        if let Some(c) = self.cluster.as_mut() {
            c.told.insert(r.call_id, nodes);
        }
        for uid in users {
            self.users.entry(uid).or_default().call = Some(r.call_id);
        }
        let info = CallEntryInfo {
            call_id: r.call_id,
            caller: r.from,
            callee: r.callee,
            callee_conn: None,
        };
        self.calls.insert(r.call_id, CallEntry { actor, info });
    }
}

/// Looks the callee up (unless connected here), then claims and gathers.
#[allow(clippy::too_many_arguments)]
async fn invite_task(
    link: Cluster,
    db: sea_orm::DatabaseConnection,
    me: ActorRef<RegistryMsg>,
    from: ConnRef,
    to: Username,
    known: Option<UserId>,
    call_id: CallId,
    reference: Option<String>,
) {
    let callee = match known {
        Some(id) => UserRef { id, username: to },
        None => match crate::store::users::find_by_username(&db, &to).await {
            Ok(Some(u)) => u.user,
            Ok(None) => {
                return from.send(ServerMessage::error(
                    ErrorCode::UserNotFound,
                    "no such user",
                    reference,
                    None,
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "callee lookup failed");
                return from.send(ServerMessage::error(
                    ErrorCode::InternalError,
                    "could not look up the user; retry",
                    reference,
                    None,
                ));
            }
        },
    };
    claim_and_gather(link, me, from, callee, known.is_some(), call_id, reference).await;
}

/// Claims caller and callee in the `callsignal_calls` bucket (glare, busy_self and busy are
/// decided there, cluster-wide), then gathers the callee's devices on other nodes.
async fn claim_and_gather(
    link: Cluster,
    me: ActorRef<RegistryMsg>,
    from: ConnRef,
    callee: UserRef,
    callee_here: bool,
    call_id: CallId,
    reference: Option<String>,
) {
    let fail =
        |code, text: &str, reference| from.send(ServerMessage::error(code, text, reference, None));
    let claim = CallClaim {
        call_id,
        owner: link.node().to_owned(),
        caller: from.user.id,
        callee: callee.id,
        ringing: true,
    };
    let end_at_once = |reason, reference| {
        let _ = me.cast(RegistryMsg::Cluster(ClusterEvent::EndedAtOnce {
            from: from.clone(),
            callee: callee.clone(),
            reference,
            reason,
        }));
    };
    match claim_fresh(&link, &me, from.user.id, &claim).await {
        Ok(None) => {}
        Ok(Some(held)) => {
            let glare = held.ringing && held.caller == callee.id && held.callee == from.user.id;
            if glare {
                return end_at_once(EndReason::Glare, reference);
            }
            return fail(ErrorCode::BusySelf, "you are already in a call", reference);
        }
        Err(e) => {
            tracing::warn!(error = %e, "cluster claim failed");
            return fail(
                ErrorCode::InternalError,
                "the cluster is unavailable; retry",
                reference,
            );
        }
    }
    match claim_fresh(&link, &me, callee.id, &claim).await {
        Ok(None) => {}
        Ok(Some(held)) => {
            link.kv().release_user(from.user.id, call_id).await;
            // The callee's invite to us, crossing ours between nodes: glare, not busy.
            let glare = held.ringing && held.caller == callee.id && held.callee == from.user.id;
            let reason = if glare {
                EndReason::Glare
            } else {
                EndReason::Busy
            };
            return end_at_once(reason, reference);
        }
        Err(e) => {
            tracing::warn!(error = %e, "cluster claim failed");
            link.kv().release_user(from.user.id, call_id).await;
            return fail(
                ErrorCode::InternalError,
                "the cluster is unavailable; retry",
                reference,
            );
        }
    }
    let mut nodes: Vec<String> = match link.presence_of(callee.id).await {
        Ok(nodes) => nodes.into_iter().map(|(node, _)| node).collect(),
        Err(_) => vec![],
    };
    if nodes.is_empty() && !callee_here {
        // The presence bucket follows a new connection by one background write: a callee who
        // connected on another node a moment ago may not be in it yet. Before they count as
        // unavailable, every live node is asked directly.
        nodes = link.live_nodes();
    }
    let ask = Request::ListConns(callee.id);
    let answers =
        futures_util::future::join_all(nodes.iter().map(|node| link.request(node, &ask))).await;
    let mut remote = vec![];
    for (node, answer) in nodes.iter().zip(answers) {
        if let Some(Reply::Conns(conns)) = answer {
            remote.extend(conns.into_iter().filter(|c| c.node == *node));
        }
    }
    let _ = me.cast(RegistryMsg::Cluster(ClusterEvent::InviteReady(Box::new(
        InviteReady {
            from,
            callee,
            call_id,
            remote,
            reference,
        },
    ))));
}

/// Claims `user`; a claim held for a call that is over (its owner dead, or no longer having
/// it) is replaced. `Some(held)` when the user is really in a call.
async fn claim_fresh(
    link: &Cluster,
    me: &ActorRef<RegistryMsg>,
    user: UserId,
    claim: &CallClaim,
) -> anyhow::Result<Option<CallClaim>> {
    for _ in 0..3 {
        let (held, revision) = match link.kv().claim_user(user, claim).await? {
            Claim::Won => return Ok(None),
            Claim::Held(held, revision) => (held, revision),
        };
        if call_live(link, me, &held).await {
            return Ok(Some(held));
        }
        tracing::info!(user_id = %user, call_id = %held.call_id, owner = %held.owner,
            "replacing the stale call claim of a user");
        link.kv().drop_stale(user, revision).await;
    }
    anyhow::bail!("the user's call claim keeps changing")
}

/// Whether the call behind a claim is still going on. When in doubt (its owner alive but not
/// answering), it is: a user is never put in two calls.
async fn call_live(link: &Cluster, me: &ActorRef<RegistryMsg>, held: &CallClaim) -> bool {
    if held.owner == link.node() {
        return ask(me, |r| {
            RegistryMsg::Cluster(ClusterEvent::CallLive(held.call_id, r))
        })
        .await
        .unwrap_or(true);
    }
    match link.kv().node_claimed(&held.owner).await {
        Ok(false) => false,
        Ok(true) => !matches!(
            link.request(&held.owner, &Request::CallLive(held.call_id))
                .await,
            Some(Reply::Live(false))
        ),
        Err(_) => true,
    }
}
