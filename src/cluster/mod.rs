//! Cluster mode (`cluster.nats_url`): several nodes share one database and one NATS server, and
//! users on different nodes call each other. This module is the node's link to NATS: the
//! connection, the node's claim on its `server.instance_id`, heartbeats and the view of which
//! nodes are alive, the key-value buckets (presence, "in a call"), and the loops that turn what
//! arrives on the node's subjects into registry messages. Routing decisions stay in the
//! registry (`actors/registry/cluster.rs`); stand-ins for remote connections and calls are in
//! [`proxy`]. Without `cluster.nats_url` none of this exists and nothing here runs.
//!
//! Subjects: `callsignal.node.<id>` (messages for one node's connections and calls, in order
//! per sender), `callsignal.rpc.<id>` (requests one node answers), `callsignal.all` (heartbeats,
//! revocations, connection ends, a node leaving). Buckets: see [`kv`].

pub mod bridge;
pub mod kv;
pub mod proxy;
pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use serde::Serialize;

use crate::actors::ConnRef;
use crate::actors::registry::{self, ClusterEvent, RegistryMsg};
use crate::config::Settings;
use crate::domain::UserId;
use wire::{Broadcast, Envelope, NodeMsg, Reply, Request, WireConn};

/// Heartbeat period; `cluster.node_timeout_secs` is several of these.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// How often the liveness of the other nodes is judged.
const MONITOR_EVERY: Duration = Duration::from_millis(250);

/// A publish that NATS does not take within this is dropped: an actor never waits longer on
/// the network (the client's own buffer is bounded; see `publish`).
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(500);

/// Deadline of a request to another node (list a user's connections, is a call live).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest pause between reconnection attempts to NATS; short, so calls resume quickly after
/// a NATS restart.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Subject of node `node`'s messages.
fn node_subject(node: &str) -> String {
    format!("callsignal.node.{node}")
}

/// Subject of node `node`'s requests.
fn rpc_subject(node: &str) -> String {
    format!("callsignal.rpc.{node}")
}

/// The close code of a bridged socket whose bridge broke: the client resumes.
fn close_try_again() -> u16 {
    crate::ws::protocol::close::TRY_AGAIN_LATER
}

/// Subject every node listens to.
const ALL: &str = "callsignal.all";

/// This node's link to the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster(Arc<Inner>);

struct Inner {
    node: String,
    client: async_nats::Client,
    kv: kv::Buckets,
    node_timeout: Duration,
    resume_grace: Duration,
    /// This run of the node (random): presence entries of an earlier run count for nothing.
    boot: String,
    /// When this node joined.
    started: Instant,
    /// Other nodes: when each was last heard, and its run. A std mutex: held for a map
    /// update, never across an await.
    seen: Mutex<HashMap<String, Peer>>,
    /// Local connection counts per user not yet written to the presence bucket.
    presence: kv::PresenceQueue,
    /// Sockets and connections bridged across nodes (resumes onto another node).
    bridges: bridge::Bridges,
}

/// Another node as last heard.
struct Peer {
    at: Instant,
    boot: String,
}

/// What `/readyz` reports.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// Whether the NATS connection is up.
    pub ok: bool,
    /// This node.
    pub node: String,
    /// `connected`, `disconnected` or `pending`.
    pub nats: &'static str,
    /// Other nodes heard within the node timeout.
    pub nodes: Vec<String>,
}

impl Cluster {
    /// Connects to NATS, opens the buckets and claims this node's id: fails while a live node
    /// holds it (waiting out the claim of a dead one first).
    pub async fn join(settings: &Settings) -> anyhow::Result<Self> {
        let Some(url) = &settings.cluster.nats_url else {
            anyhow::bail!("cluster.nats_url is not set");
        };
        let node = settings.server.instance_id.clone();
        let log_node = node.clone();
        let client = async_nats::ConnectOptions::new()
            .name(format!("callsignal-{node}"))
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(100 * attempts as u64).min(MAX_RECONNECT_DELAY)
            })
            .event_callback(move |event| {
                let node = log_node.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!(node = %node, "NATS connection up")
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!(node = %node, "NATS connection lost; reconnecting")
                        }
                        other => tracing::info!(node = %node, event = %other, "NATS event"),
                    }
                }
            })
            .connect(url.expose())
            .await
            .context("cannot connect to NATS (cluster.nats_url)")?;
        let node_timeout = settings.cluster.node_timeout();
        let kv = kv::Buckets::open(&client, node_timeout).await?;
        kv.claim_node(&node, node_timeout).await?;
        tracing::info!(node = %node, "joined the cluster");
        Ok(Self(Arc::new(Inner {
            node,
            client,
            kv,
            node_timeout,
            resume_grace: settings.ws.resume_grace(),
            boot: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
            started: Instant::now(),
            seen: Mutex::new(HashMap::new()),
            presence: kv::PresenceQueue::default(),
            bridges: bridge::Bridges::default(),
        })))
    }

    /// Starts the loops that feed the registry of tree `system_id`, heartbeats and presence.
    pub async fn start(&self, system_id: &str) -> anyhow::Result<()> {
        let node_sub = self.0.client.subscribe(node_subject(&self.0.node)).await?;
        let rpc_sub = self.0.client.subscribe(rpc_subject(&self.0.node)).await?;
        let all_sub = self.0.client.subscribe(ALL).await?;
        let sys = system_id.to_owned();
        tokio::spawn(self.clone().node_loop(node_sub, sys.clone()));
        tokio::spawn(self.clone().rpc_loop(rpc_sub, sys.clone()));
        tokio::spawn(self.clone().all_loop(all_sub, sys.clone()));
        tokio::spawn(self.clone().heartbeat_loop());
        tokio::spawn(self.clone().monitor_loop(sys));
        tokio::spawn(self.clone().presence_loop());
        Ok(())
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.0.node
    }

    /// The key-value buckets.
    pub fn kv(&self) -> &kv::Buckets {
        &self.0.kv
    }

    /// Whether the NATS connection is up now.
    pub fn connected(&self) -> bool {
        matches!(
            self.0.client.connection_state(),
            async_nats::connection::State::Connected
        )
    }

    /// Other nodes heard within the node timeout.
    pub fn live_nodes(&self) -> Vec<String> {
        let seen = self.0.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut nodes: Vec<String> = seen.keys().cloned().collect();
        nodes.sort();
        nodes
    }

    /// For `/readyz`.
    pub fn status(&self) -> ClusterStatus {
        let nats = match self.0.client.connection_state() {
            async_nats::connection::State::Connected => "connected",
            async_nats::connection::State::Disconnected => "disconnected",
            async_nats::connection::State::Pending => "pending",
        };
        ClusterStatus {
            ok: nats == "connected",
            node: self.0.node.clone(),
            nats,
            nodes: self.live_nodes(),
        }
    }

    /// The wire form of a connection: a stand-in names the node it stands for.
    pub fn wire_conn(&self, conn: &ConnRef) -> WireConn {
        let node = proxy::remote_node_of(&conn.actor).unwrap_or_else(|| self.0.node.clone());
        WireConn {
            id: conn.id,
            user: (&conn.user).into(),
            node,
        }
    }

    /// Publishes `payload` on `subject`, or drops it (logged) when NATS is down or does not
    /// take it in time: callers are actors and must never stall, and the client buffers
    /// nothing for them while disconnected.
    ///
    /// Returns whether NATS took it.
    async fn publish(&self, subject: String, payload: Vec<u8>) -> bool {
        if !self.connected() {
            tracing::warn!(subject = %subject, "NATS is down; cluster message dropped");
            return false;
        }
        match tokio::time::timeout(
            PUBLISH_TIMEOUT,
            self.0.client.publish(subject.clone(), payload.into()),
        )
        .await
        {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(subject = %subject, error = %e, "cluster publish failed");
                false
            }
            Err(_) => {
                tracing::warn!(subject = %subject, "cluster publish timed out; dropped");
                false
            }
        }
    }

    /// Sends `msg` to node `node`; returns whether NATS took it.
    pub async fn send_node(&self, node: &str, msg: &NodeMsg) -> bool {
        match serde_json::to_vec(msg) {
            Ok(bytes) => self.publish(node_subject(node), bytes).await,
            Err(e) => {
                tracing::error!(error = %e, "cluster message not encodable");
                false
            }
        }
    }

    /// Tells every node.
    pub async fn broadcast(&self, body: Broadcast) {
        let env = Envelope {
            from: self.0.node.clone(),
            body,
        };
        if let Ok(bytes) = serde_json::to_vec(&env) {
            self.publish(ALL.to_owned(), bytes).await;
        }
    }

    /// Asks node `node`; `None` when it does not answer in time.
    pub async fn request(&self, node: &str, req: &Request) -> Option<Reply> {
        let bytes = serde_json::to_vec(req).ok()?;
        let answer = tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.0.client.request(rpc_subject(node), bytes.into()),
        )
        .await
        .ok()?
        .ok()?;
        serde_json::from_slice(&answer.payload).ok()
    }

    /// Records `user`'s number of connections on this node, for the presence bucket (written
    /// in the background, latest count wins).
    pub fn set_presence(&self, user: UserId, count: usize) {
        self.0.presence.set(user, count);
    }

    /// Connections of `user` on other live nodes (in their current run), per node.
    pub async fn presence_of(&self, user: UserId) -> anyhow::Result<Vec<(String, usize)>> {
        self.presence_filtered(user, false).await
    }

    /// [`presence_of`](Self::presence_of), but in this node's first heartbeats (before it can
    /// have heard every live node) also the entries of nodes not heard yet: a resume reaching
    /// a node that just started must still find its connection elsewhere. Entries of a node
    /// heard in another run stay out.
    pub async fn presence_maybe_live(&self, user: UserId) -> anyhow::Result<Vec<(String, usize)>> {
        let unsettled = self.0.started.elapsed() < HEARTBEAT * 3;
        self.presence_filtered(user, unsettled).await
    }

    async fn presence_filtered(
        &self,
        user: UserId,
        unheard_too: bool,
    ) -> anyhow::Result<Vec<(String, usize)>> {
        let counts = self.0.kv.presence(user).await?;
        let seen = self.0.seen.lock().unwrap_or_else(|p| p.into_inner());
        Ok(counts
            .into_iter()
            .filter_map(|(key, n)| {
                let (node, boot) = key.split_once('/')?;
                let live = match seen.get(node) {
                    Some(p) => p.boot == boot,
                    None => unheard_too && node != self.0.node,
                };
                (n > 0 && live).then(|| (node.to_owned(), n))
            })
            .collect())
    }

    /// Which presence entries a write may drop: this node's earlier runs, and (once this node
    /// has been up long enough to have heard every live node) nodes not heard from.
    fn presence_stale(&self) -> impl Fn(&str) -> bool + Send + Sync + '_ {
        let settled = self.0.started.elapsed() > self.0.node_timeout * 2;
        let live: HashMap<String, String> = self
            .0
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, p)| (n.clone(), p.boot.clone()))
            .collect();
        move |key: &str| {
            let Some((node, boot)) = key.split_once('/') else {
                return true;
            };
            if node == self.0.node {
                return boot != self.0.boot;
            }
            settled && live.get(node).is_none_or(|b| b != boot)
        }
    }

    /// Asks the other nodes holding connections of `user` to release one waiting in its grace
    /// (the per-user cap counts every node, so a closed tab elsewhere must not lock the user
    /// out); `true` once one did.
    pub async fn release_detached_elsewhere(&self, user: UserId) -> bool {
        let nodes = self.presence_of(user).await.unwrap_or_default();
        for (node, _) in nodes.into_iter().filter(|(n, _)| n != self.node()) {
            if let Some(Reply::Released(true)) =
                self.request(&node, &Request::ReleaseDetached(user)).await
            {
                return true;
            }
        }
        false
    }

    /// Leaving the cluster at shutdown: the claim is dropped and every node told.
    pub async fn leave(&self) {
        // Bridged sockets here close with 1001, so their clients resume on another node.
        self.break_bridges(None, crate::ws::protocol::close::GOING_AWAY);
        self.broadcast(Broadcast::Leaving).await;
        self.0.kv.release_node(&self.0.node).await;
        let _ = tokio::time::timeout(PUBLISH_TIMEOUT, self.0.client.flush()).await;
        tracing::info!(node = %self.0.node, "left the cluster");
    }

    async fn node_loop(self, mut sub: async_nats::Subscriber, system_id: String) {
        while let Some(msg) = sub.next().await {
            let decoded: NodeMsg = match serde_json::from_slice(&msg.payload) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable cluster message dropped");
                    continue;
                }
            };
            // Bridged frames go straight to their socket or connection actor, in order.
            let decoded = match decoded {
                NodeMsg::Bridge { from, id, n, op } => {
                    self.on_bridge(from, id, n, op);
                    continue;
                }
                other => other,
            };
            if let Some(r) = registry::lookup(&system_id) {
                let _ = r.cast(RegistryMsg::Cluster(ClusterEvent::Node(decoded)));
            }
        }
    }

    async fn rpc_loop(self, mut sub: async_nats::Subscriber, system_id: String) {
        while let Some(msg) = sub.next().await {
            let Some(reply_to) = msg.reply.clone() else {
                continue;
            };
            let Ok(req) = serde_json::from_slice::<Request>(&msg.payload) else {
                continue;
            };
            let this = self.clone();
            let system_id = system_id.clone();
            // Answered off the loop, so one slow answer never delays the next request.
            tokio::spawn(async move {
                let Some(r) = registry::lookup(&system_id) else {
                    return;
                };
                let reply = match req {
                    Request::ListConns(user) => crate::actors::ask(&r, |port| {
                        RegistryMsg::Cluster(ClusterEvent::ListConns(user, port))
                    })
                    .await
                    .map(Reply::Conns),
                    Request::CallLive(call) => crate::actors::ask(&r, |port| {
                        RegistryMsg::Cluster(ClusterEvent::CallLive(call, port))
                    })
                    .await
                    .map(Reply::Live),
                    Request::Resume(req) => crate::actors::ask(&r, |reply| {
                        RegistryMsg::Cluster(ClusterEvent::Resume(req, reply))
                    })
                    .await
                    .map(Reply::Resumed),
                    Request::ReleaseDetached(user) => crate::actors::ask(&r, |reply| {
                        RegistryMsg::Cluster(ClusterEvent::ReleaseDetached(user, reply))
                    })
                    .await
                    .map(Reply::Released),
                };
                if let Some(reply) = reply.and_then(|r| serde_json::to_vec(&r).ok()) {
                    this.publish(reply_to.to_string(), reply).await;
                }
            });
        }
    }

    async fn all_loop(self, mut sub: async_nats::Subscriber, system_id: String) {
        while let Some(msg) = sub.next().await {
            let Ok(env) = serde_json::from_slice::<Envelope>(&msg.payload) else {
                continue;
            };
            if env.from == self.0.node {
                continue;
            }
            let event = match env.body {
                Broadcast::Heartbeat { boot } => {
                    let peer = Peer {
                        at: Instant::now(),
                        boot,
                    };
                    let fresh = self
                        .0
                        .seen
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(env.from.clone(), peer)
                        .is_none();
                    if fresh {
                        tracing::info!(node = %self.0.node, peer = %env.from, "cluster node seen");
                    }
                    continue;
                }
                Broadcast::Revoke(session) => ClusterEvent::Revoke(session),
                Broadcast::ConnGone(conn) => ClusterEvent::ConnGone(conn),
                Broadcast::Leaving => {
                    self.0
                        .seen
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&env.from);
                    tracing::info!(node = %self.0.node, peer = %env.from, "cluster node left");
                    self.break_bridges(Some(&env.from), close_try_again());
                    ClusterEvent::NodeDown {
                        node: env.from,
                        recover: false,
                        leaving: true,
                    }
                }
            };
            if let Some(r) = registry::lookup(&system_id) {
                let _ = r.cast(RegistryMsg::Cluster(event));
            }
        }
    }

    async fn heartbeat_loop(self) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            tick.tick().await;
            if !self.connected() {
                continue;
            }
            let boot = self.0.boot.clone();
            self.broadcast(Broadcast::Heartbeat { boot }).await;
            self.0.kv.refresh_node(&self.0.node).await;
        }
    }

    /// Judges the other nodes: one not heard within the node timeout is dead. While NATS itself
    /// is unreachable nobody is heard, so nobody is judged, unless the outage outlasts the
    /// resume grace: then every cross-node call ends rather than hang.
    async fn monitor_loop(self, system_id: String) {
        let mut tick = tokio::time::interval(MONITOR_EVERY);
        let mut down_since: Option<Instant> = None;
        loop {
            tick.tick().await;
            let now = Instant::now();
            let connected = self.connected();
            let dead: Vec<String> = {
                let mut seen = self.0.seen.lock().unwrap_or_else(|p| p.into_inner());
                match (connected, down_since) {
                    (true, Some(_)) => {
                        // Back: everyone gets a fresh chance to be heard.
                        down_since = None;
                        seen.values_mut().for_each(|p| p.at = now);
                        vec![]
                    }
                    (true, None) => {
                        let dead: Vec<String> = seen
                            .iter()
                            .filter(|(_, p)| now.duration_since(p.at) > self.0.node_timeout)
                            .map(|(n, _)| n.clone())
                            .collect();
                        dead.iter().for_each(|n| {
                            seen.remove(n);
                        });
                        dead
                    }
                    (false, None) => {
                        down_since = Some(now);
                        // What crosses a bridge now would be lost: its sockets resume later.
                        self.break_bridges(None, close_try_again());
                        vec![]
                    }
                    (false, Some(since)) if now.duration_since(since) > self.0.resume_grace => {
                        seen.drain().map(|(n, _)| n).collect()
                    }
                    (false, Some(_)) => vec![],
                }
            };
            for node in dead {
                tracing::warn!(node = %self.0.node, peer = %node, "cluster node lost (no heartbeat)");
                self.break_bridges(Some(&node), close_try_again());
                if let Some(r) = registry::lookup(&system_id) {
                    let _ = r.cast(RegistryMsg::Cluster(ClusterEvent::NodeDown {
                        node,
                        recover: connected,
                        leaving: false,
                    }));
                }
            }
        }
    }

    async fn presence_loop(self) {
        loop {
            self.0.presence.wait().await;
            while !self.connected() {
                tokio::time::sleep(MONITOR_EVERY).await;
            }
            for (user, count) in self.0.presence.take() {
                let me = format!("{}/{}", self.0.node, self.0.boot);
                let stale = self.presence_stale();
                if let Err(e) = self.0.kv.write_presence(&me, user, count, &stale).await {
                    tracing::warn!(user_id = %user, error = %e, "presence not written; retrying");
                    self.0.presence.retry(user, count);
                    tokio::time::sleep(MONITOR_EVERY).await;
                }
            }
        }
    }
}
