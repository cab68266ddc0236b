//! The registry actor: who is connected (users → connections, connections → sessions, resume
//! tokens → connections) and which calls exist (calls → call actors, users → their call). It
//! admits connections, decides what an invite becomes (a ringing call, or at once `busy`,
//! `unavailable` or `glare`), and routes every call action, `sdp` and `ice` to the call's actor.
//! It never waits on the database: the only lookup it needs (is an offline callee a real user?)
//! runs in a task and comes back as a message.
//!
//! Invites are decided in [`invite`]; in cluster mode (`cluster.nats_url`), across nodes in
//! [`cluster`], which also handles what other nodes say.
//!
//! If the registry fails, the root supervisor restarts it, and it rebuilds its tables by asking
//! every live connection and call actor to announce itself again: no live call is lost.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sea_orm::DatabaseConnection;
use sha2::{Digest, Sha256};

mod cluster;
mod invite;

pub use cluster::{ClusterEvent, InviteReady};

use super::call::{CallAction, CallMsg};
use super::connection::{ConnectionArgs, ConnectionMsg, Join, Links, SocketLink};
use super::line::Line;
use super::persistence::PersistenceHandle;
use super::supervisor::SupervisorMsg;
use super::{ConnRef, ask};
use crate::config::Settings;
use crate::domain::{CallId, ConnectionId, SessionId, UserId, UserRef, Username};
use crate::metrics::Metrics;
use crate::store::calls::CallEvent;
use crate::ws::limit::RateLimiter;
use crate::ws::protocol::{
    CallPhase, CallRole, CallSummary, ClientMessage, EndReason, ErrorCode, Inbound, ServerMessage,
};

/// How often sessions that reached their absolute lifetime are looked for; one sweep for all
/// connections instead of one timer task each keeps idle connections cheap.
const EXPIRY_SWEEP: Duration = Duration::from_secs(1);

/// Window of the invites-per-minute limits.
const INVITE_WINDOW: Duration = Duration::from_secs(60);

/// Every this many sweeps, idle rate limiters and empty invite windows are forgotten.
const PRUNE_EVERY_SWEEPS: u64 = 10;

/// The registered name of the registry of tree `system_id`.
pub fn name(system_id: &str) -> String {
    format!("callsignal-{system_id}-registry")
}

/// The live registry of tree `system_id`.
pub fn lookup(system_id: &str) -> Option<ActorRef<RegistryMsg>> {
    ractor::registry::where_is(name(system_id)).map(Into::into)
}

/// A connection announcing itself.
#[derive(Debug, Clone)]
pub struct ConnEntryInfo {
    /// The connection.
    pub conn: ConnRef,
    /// Its login session.
    pub session_id: SessionId,
    /// Absolute end of that session: the registry closes the socket then.
    pub session_expires_at: DateTime<Utc>,
    /// Its resume token (kept hashed).
    pub resume_token: String,
    /// Whether a socket is attached now.
    pub attached: bool,
}

/// A call announcing itself.
#[derive(Debug, Clone)]
pub struct CallEntryInfo {
    /// The call.
    pub call_id: CallId,
    /// The inviting connection.
    pub caller: ConnRef,
    /// The invited user.
    pub callee: UserRef,
    /// The answering connection, once active.
    pub callee_conn: Option<ConnectionId>,
}

/// A socket asking to become (or resume) a connection.
pub struct ConnectRequest {
    /// Authenticated user.
    pub user: UserRef,
    /// Login session.
    pub session_id: SessionId,
    /// Absolute end of the session.
    pub session_expires_at: DateTime<Utc>,
    /// Resume token from the `hello`, if any.
    pub resume_token: Option<String>,
    /// `last_seq` from the `hello`, if any.
    pub last_seq: Option<u64>,
    /// The socket.
    pub socket: SocketLink,
}

/// An admitted socket: its connection actor and its user's rate limiter (shared by all of the
/// user's sockets, so reconnecting resets nothing).
#[derive(Clone)]
pub struct Connected {
    /// The connection actor the socket now belongs to.
    pub actor: ActorRef<ConnectionMsg>,
    /// The user's inbound limits.
    pub limiter: Arc<Mutex<RateLimiter>>,
    /// The connection's outgoing line (`None` when bridged to a connection on another node):
    /// the socket task applies the client's `ack`s and heartbeat pongs to it itself.
    pub line: Option<Arc<Line>>,
}

/// What a `hello` would join on this node ([`RegistryMsg::Resumable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalJoin {
    /// No connection here.
    Nothing,
    /// The connection its resume token names.
    Token,
    /// A connection of its session waiting in its grace, a party of the user's call.
    TakeoverParty,
    /// A connection of its session waiting in its grace, not a call party.
    TakeoverIdle,
}

/// The refusal of a socket whose user has `ws.max_connections_per_user` live connections (in
/// cluster mode the socket task then asks other nodes to release one waiting in its grace).
pub const USER_CAP_REACHED: &str = "too many connections for this user";

/// Answer to a [`ConnectRequest`].
pub type ConnectResult = Result<Connected, (ErrorCode, &'static str)>;

/// Counts, for tests and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Connections (attached or within their resume grace).
    pub connections: usize,
    /// Calls not yet ended.
    pub calls: usize,
    /// Users with at least one connection.
    pub users: usize,
}

/// Messages of the registry.
pub enum RegistryMsg {
    /// Admit a socket: resume its connection or spawn a new one.
    Connect(Box<ConnectRequest>, RpcReplyPort<ConnectResult>),
    /// A connection (re)announces itself.
    Register(ConnEntryInfo),
    /// A call (re)announces itself.
    RegisterCall(ActorRef<CallMsg>, CallEntryInfo),
    /// A client message for the call machinery.
    Route {
        /// The sender's connection.
        from: ConnRef,
        /// The message.
        inbound: Inbound,
    },
    /// Result of looking up an offline callee in the database.
    InviteOffline {
        /// The inviting connection.
        from: ConnRef,
        /// The user, if the name exists.
        callee: Option<UserRef>,
        /// The invite's `ref`.
        reference: Option<String>,
    },
    /// A connection's socket dropped (resume grace running).
    Detached(ConnectionId),
    /// A connection's socket came back.
    Attached(ConnectionId),
    /// A connection ended; its call (if it was essential to it) ends with this reason.
    ConnectionGone(ConnectionId, EndReason),
    /// A connection actor failed.
    ConnectionFailed(ConnectionId),
    /// A call ended.
    CallEnded(CallId),
    /// A call actor failed.
    CallFailed(CallId),
    /// Close the sockets of sessions past their absolute lifetime (periodic).
    Sweep,
    /// Close every socket of a session (`session_revoked`).
    RevokeSession(SessionId),
    /// End every call and close every socket; replies when done.
    Shutdown(RpcReplyPort<()>),
    /// Counts.
    Stats(RpcReplyPort<Stats>),
    /// A connection's actor, by id.
    FindConnection(ConnectionId, RpcReplyPort<Option<ActorRef<ConnectionMsg>>>),
    /// A call's actor, by id.
    FindCall(CallId, RpcReplyPort<Option<ActorRef<CallMsg>>>),
    /// Whether a `hello` of this user, login session and resume token would resume (or take
    /// over) a connection here, and the user's rate limiter. Asked in cluster mode before
    /// looking for the connection on other nodes.
    Resumable {
        /// Authenticated user.
        user: UserId,
        /// Login session.
        session: SessionId,
        /// Resume token from the `hello`.
        resume_token: Option<String>,
        /// Answer: what a `hello` would join here, and the user's limiter.
        reply: RpcReplyPort<(LocalJoin, Arc<Mutex<RateLimiter>>)>,
    },
    /// Something other nodes said (cluster mode only).
    Cluster(ClusterEvent),
    /// Make the registry panic (test builds only), to exercise its restart.
    #[cfg(feature = "test-hooks")]
    Panic,
}

/// Fixed configuration of the registry.
pub struct RegistryArgs {
    /// Tree id.
    pub system_id: String,
    /// Settings.
    pub settings: Arc<Settings>,
    /// Database (only for offline-callee lookups, in a task).
    pub db: DatabaseConnection,
    /// Event sink.
    pub persistence: PersistenceHandle,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Supervisor of connection actors.
    pub connections: ActorRef<SupervisorMsg>,
    /// Supervisor of call actors.
    pub calls: ActorRef<SupervisorMsg>,
    /// The link to the other nodes (cluster mode only).
    pub cluster: Option<crate::cluster::Cluster>,
}

struct ConnEntry {
    conn: ConnRef,
    session_id: SessionId,
    session_expires_at: DateTime<Utc>,
    resume_hash: [u8; 32],
    /// When the socket went away; `None` while one is attached.
    detached_at: Option<Instant>,
}

#[derive(Default)]
struct UserEntry {
    conns: Vec<ConnectionId>,
    call: Option<CallId>,
}

struct CallEntry {
    actor: ActorRef<CallMsg>,
    info: CallEntryInfo,
}

/// State of the registry.
pub struct RegistryState {
    args: RegistryArgs,
    /// Boxed: a hash table's buckets are sized for the entry and at most 7/8 full (half full
    /// just after it grows), so ~170-byte entries inline cost up to ~370 bytes per connection;
    /// boxed, a bucket is 24 bytes and the entry is allocated at its own size.
    conns: HashMap<ConnectionId, Box<ConnEntry>>,
    users: HashMap<UserId, UserEntry>,
    names: HashMap<Username, UserId>,
    resume: HashMap<[u8; 32], ConnectionId>,
    calls: HashMap<CallId, CallEntry>,
    invites: HashMap<UserId, VecDeque<Instant>>,
    invites_to: HashMap<UserId, VecDeque<Instant>>,
    invites_pair: HashMap<(UserId, UserId), VecDeque<Instant>>,
    limiters: HashMap<UserId, Arc<Mutex<RateLimiter>>>,
    sweeps: u64,
    shutting_down: bool,
    /// Stand-ins and remote calls (cluster mode only).
    cluster: Option<cluster::ClusterState>,
}

/// The registry actor.
pub struct Registry;

fn resume_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn random_token() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl Actor for Registry {
    type Msg = RegistryMsg;
    type State = RegistryState;
    type Arguments = RegistryArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<Self::Msg>,
        args: RegistryArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let cluster = args.cluster.clone().map(cluster::ClusterState::new);
        Ok(RegistryState {
            cluster,
            args,
            conns: HashMap::new(),
            users: HashMap::new(),
            names: HashMap::new(),
            resume: HashMap::new(),
            calls: HashMap::new(),
            invites: HashMap::new(),
            invites_to: HashMap::new(),
            invites_pair: HashMap::new(),
            limiters: HashMap::new(),
            sweeps: 0,
            shutting_down: false,
        })
    }

    async fn post_start(
        &self,
        me: ActorRef<Self::Msg>,
        s: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        me.send_interval(EXPIRY_SWEEP, || RegistryMsg::Sweep);
        // After a restart: every live child announces itself again; the messages queue behind
        // this one, so routing is rebuilt before anything else is served.
        let conns = s.args.connections.get_children();
        let calls = s.args.calls.get_children();
        if !conns.is_empty() || !calls.is_empty() {
            tracing::warn!(
                connections = conns.len(),
                calls = calls.len(),
                "registry rebuilding its tables from live actors"
            );
        }
        for cell in conns {
            let _ = ActorRef::<ConnectionMsg>::from(cell).cast(ConnectionMsg::Reannounce);
        }
        for cell in calls {
            let _ = ActorRef::<CallMsg>::from(cell).cast(CallMsg::Reannounce);
        }
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<Self::Msg>,
        msg: Self::Msg,
        s: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RegistryMsg::Connect(req, reply) => {
                let result = s.connect(*req).await;
                let _ = reply.send(result);
            }
            RegistryMsg::Register(info) => s.register(info),
            RegistryMsg::RegisterCall(actor, info) => s.register_call(actor, info),
            RegistryMsg::Route { from, inbound } => s.route(&me, from, inbound).await,
            RegistryMsg::InviteOffline {
                from,
                callee,
                reference,
            } => match callee {
                None => from.send(ServerMessage::error(
                    ErrorCode::UserNotFound,
                    "no such user",
                    reference,
                    None,
                )),
                Some(callee) => s.invite_online_or(&from, callee, reference, true).await,
            },
            RegistryMsg::Detached(id) => {
                if let Some(e) = s.conns.get_mut(&id) {
                    e.detached_at = Some(Instant::now());
                }
                s.tell_call_of(id, CallMsg::PartyDetached(id));
            }
            RegistryMsg::Attached(id) => {
                if let Some(e) = s.conns.get_mut(&id) {
                    e.detached_at = None;
                }
                s.tell_call_of(id, CallMsg::PartyAttached(id));
            }
            RegistryMsg::ConnectionGone(id, reason) => {
                s.tell_call_of(id, CallMsg::PartyGone(id, reason));
                s.unregister(id);
            }
            RegistryMsg::ConnectionFailed(id) => {
                // The socket closes with the actor; its call gets the resume grace as for a
                // dropped socket, then `connection_lost`.
                s.tell_call_of(id, CallMsg::PartyDetached(id));
                let grace = s.args.settings.ws.resume_grace();
                me.send_after(grace, move || {
                    RegistryMsg::ConnectionGone(id, EndReason::ConnectionLost)
                });
                if let Some(e) = s.conns.get_mut(&id) {
                    e.detached_at = Some(Instant::now());
                }
            }
            RegistryMsg::CallEnded(id) => s.forget_call(id),
            RegistryMsg::CallFailed(id) => s.call_failed(id),
            RegistryMsg::Sweep => {
                let now = Utc::now();
                for e in s.conns.values().filter(|e| e.session_expires_at <= now) {
                    let _ = e.conn.actor.cast(ConnectionMsg::Revoke);
                }
                s.sweeps += 1;
                if s.sweeps % PRUNE_EVERY_SWEEPS == 0 {
                    s.prune();
                }
            }
            RegistryMsg::RevokeSession(session) => {
                for e in s.conns.values().filter(|e| e.session_id == session) {
                    let _ = e.conn.actor.cast(ConnectionMsg::Revoke);
                }
                s.cluster_revoke(session);
            }
            RegistryMsg::Cluster(ev) => s.on_cluster(ev).await,
            RegistryMsg::Shutdown(reply) => {
                s.shutting_down = true;
                s.cluster_shutdown().await;
                let calls: Vec<_> = s.calls.values().map(|c| c.actor.clone()).collect();
                for call in calls {
                    let _ = ask(&call, |ack| {
                        CallMsg::End(EndReason::ServerShutdown, Some(ack))
                    })
                    .await;
                }
                for e in s.conns.values() {
                    let _ = e.conn.actor.cast(ConnectionMsg::Shutdown);
                }
                let _ = reply.send(());
            }
            RegistryMsg::Stats(reply) => {
                let _ = reply.send(Stats {
                    connections: s.conns.len(),
                    calls: s.calls.len(),
                    users: s.users.len(),
                });
            }
            RegistryMsg::FindConnection(id, reply) => {
                let _ = reply.send(s.conns.get(&id).map(|e| e.conn.actor.clone()));
            }
            RegistryMsg::FindCall(id, reply) => {
                let _ = reply.send(s.calls.get(&id).map(|c| c.actor.clone()));
            }
            RegistryMsg::Resumable {
                user,
                session,
                resume_token,
                reply,
            } => {
                let found = match s.resumable(user, session, resume_token.as_deref(), None) {
                    None => LocalJoin::Nothing,
                    Some((_, Join::Resume { .. })) => LocalJoin::Token,
                    Some((id, Join::Takeover)) if s.is_party(user, id) => LocalJoin::TakeoverParty,
                    Some((_, Join::Takeover)) => LocalJoin::TakeoverIdle,
                };
                let _ = reply.send((found, s.limiter_of(user)));
            }
            #[cfg(feature = "test-hooks")]
            RegistryMsg::Panic => panic!("test hook: registry panic"),
        }
        Ok(())
    }
}

impl RegistryState {
    async fn connect(&mut self, req: ConnectRequest) -> ConnectResult {
        if self.shutting_down {
            return Err((ErrorCode::TooManyConnections, "the server is shutting down"));
        }
        let limiter = self.limiter_of(req.user.id);
        let token = req.resume_token.as_deref();
        if let Some((id, join)) = self.resumable(req.user.id, req.session_id, token, req.last_seq) {
            return self.join(id, req.socket, join, limiter);
        }
        let per_user = self.users.get(&req.user.id).map_or(0, |u| u.conns.len())
            + self.cluster_conns_elsewhere(req.user.id).await;
        if per_user >= self.args.settings.ws.max_connections_per_user {
            // Connections waiting in a grace never lock their user out.
            match self.oldest_detached(req.user.id) {
                Some(victim) => self.release(victim),
                None if self.cluster_release_elsewhere(req.user.id).await => {}
                None => return Err((ErrorCode::TooManyConnections, USER_CAP_REACHED)),
            }
        }
        if self.conns.len() >= self.args.settings.ws.max_connections {
            return Err((
                ErrorCode::TooManyConnections,
                "the server has reached its connection limit",
            ));
        }
        let id = ConnectionId::new();
        let resume_token = random_token();
        let ws = &self.args.settings.ws;
        let line = Arc::new(Line::new(
            ws.outbound_queue,
            ws.outbound_queue_bytes,
            Some(req.socket),
        ));
        let args = ConnectionArgs {
            id,
            user: req.user.clone(),
            session_id: req.session_id,
            session_expires_at: req.session_expires_at,
            resume_token: resume_token.clone(),
            line: line.clone(),
            call: self.call_summary(req.user.id, id),
            links: Links {
                system_id: self.args.system_id.clone(),
                settings: self.args.settings.clone(),
                metrics: self.args.metrics.clone(),
                persistence: self.args.persistence.clone(),
            },
        };
        let actor = ask(&self.args.connections, |r| {
            SupervisorMsg::SpawnConnection(Box::new(args), r)
        })
        .await
        .flatten()
        .ok_or((ErrorCode::InternalError, "could not start the connection"))?;
        self.register(ConnEntryInfo {
            conn: ConnRef {
                id,
                user: req.user,
                actor: actor.clone(),
                line: Some(line.clone()),
            },
            session_id: req.session_id,
            session_expires_at: req.session_expires_at,
            resume_token,
            attached: true,
        });
        self.device_joined(id);
        Ok(Connected {
            actor,
            limiter,
            line: Some(line),
        })
    }

    /// The connection here a new socket of `user`'s login `session` joins, and how: the
    /// connection its resume token names (same user and session), else (a reloaded page that
    /// lost its token) the same session's connection waiting in its grace, taken over with its
    /// call.
    fn resumable(
        &self,
        user: UserId,
        session: SessionId,
        resume_token: Option<&str>,
        last_seq: Option<u64>,
    ) -> Option<(ConnectionId, Join)> {
        let by_token = resume_token.and_then(|token| {
            self.resume.get(&resume_hash(token)).copied().filter(|id| {
                self.conns
                    .get(id)
                    .is_some_and(|e| e.conn.user.id == user && e.session_id == session)
            })
        });
        match by_token {
            Some(id) => Some((id, Join::Resume { last_seq })),
            None => self
                .takeover_candidate(user, session)
                .map(|id| (id, Join::Takeover)),
        }
    }

    /// Attaches `socket` to the existing connection `id`.
    fn join(
        &mut self,
        id: ConnectionId,
        socket: SocketLink,
        join: Join,
        limiter: Arc<Mutex<RateLimiter>>,
    ) -> ConnectResult {
        let Some(e) = self.conns.get_mut(&id) else {
            return Err((ErrorCode::InternalError, "the connection is gone"));
        };
        e.detached_at = None;
        let (actor, user, line) = (e.conn.actor.clone(), e.conn.user.id, e.conn.line.clone());
        let call = self.call_summary(user, id);
        if actor
            .cast(ConnectionMsg::Attach(socket, join, call))
            .is_err()
        {
            return Err((
                ErrorCode::InternalError,
                "the connection could not be resumed",
            ));
        }
        self.args.metrics.resumes.inc();
        if matches!(join, Join::Takeover) {
            // The reloaded page must hear of a call ringing for it again.
            self.device_joined(id);
        }
        Ok(Connected {
            actor,
            limiter,
            line,
        })
    }

    /// The user's inbound limiter, created on first use.
    fn limiter_of(&mut self, user: UserId) -> Arc<Mutex<RateLimiter>> {
        let ws = &self.args.settings.ws;
        self.limiters
            .entry(user)
            .or_insert_with(|| Arc::new(Mutex::new(RateLimiter::new(ws))))
            .clone()
    }

    /// Forgets limiters no socket holds that are back to full, and empty invite windows.
    fn prune(&mut self) {
        let now = Instant::now();
        self.limiters.retain(|_, l| {
            Arc::strong_count(l) > 1 || !l.lock().map(|mut l| l.is_rested(now)).unwrap_or(true)
        });
        let fresh = |w: &mut VecDeque<Instant>| {
            while w
                .front()
                .is_some_and(|t| now.duration_since(*t) >= INVITE_WINDOW)
            {
                w.pop_front();
            }
            !w.is_empty()
        };
        self.invites.retain(|_, w| fresh(w));
        self.invites_to.retain(|_, w| fresh(w));
        self.invites_pair.retain(|_, w| fresh(w));
    }

    /// Whether connection `id` is a party of `user`'s current call.
    fn is_party(&self, user: UserId, id: ConnectionId) -> bool {
        self.party_conns(user).contains(&Some(id))
    }

    /// The connections that are parties of `user`'s current call.
    fn party_conns(&self, user: UserId) -> [Option<ConnectionId>; 2] {
        match self
            .users
            .get(&user)
            .and_then(|u| u.call)
            .and_then(|c| self.calls.get(&c))
        {
            Some(c) => [Some(c.info.caller.id), c.info.callee_conn],
            None => [None, None],
        }
    }

    /// `user`'s connections waiting in a grace, that `keep` accepts: (is a call party, when it
    /// went away, id).
    fn detached(
        &self,
        user: UserId,
        keep: impl Fn(&ConnEntry) -> bool,
    ) -> Vec<(bool, Instant, ConnectionId)> {
        let parties = self.party_conns(user);
        let Some(u) = self.users.get(&user) else {
            return vec![];
        };
        u.conns
            .iter()
            .filter_map(|id| self.conns.get(id))
            .filter(|e| keep(e))
            .filter_map(|e| {
                Some((
                    parties.contains(&Some(e.conn.id)),
                    e.detached_at?,
                    e.conn.id,
                ))
            })
            .collect()
    }

    /// `user`'s detached connection of `session` to take over: the call's party first, then
    /// the most recently dropped.
    fn takeover_candidate(&self, user: UserId, session: SessionId) -> Option<ConnectionId> {
        self.detached(user, |e| e.session_id == session)
            .into_iter()
            .max_by_key(|(party, at, _)| (*party, *at))
            .map(|(_, _, id)| id)
    }

    /// `user`'s detached connection to release first: not a call party, then the oldest.
    fn oldest_detached(&self, user: UserId) -> Option<ConnectionId> {
        self.detached(user, |_| true)
            .into_iter()
            .min_by_key(|(party, at, _)| (*party, *at))
            .map(|(_, _, id)| id)
    }

    /// Ends connection `id` now (it was waiting in its grace).
    fn release(&mut self, id: ConnectionId) {
        if let Some(e) = self.conns.get(&id) {
            let _ = e.conn.actor.cast(ConnectionMsg::Release);
        }
        self.tell_call_of(id, CallMsg::PartyGone(id, EndReason::ConnectionLost));
        self.unregister(id);
    }

    /// Tells a ringing call of a callee device that (re)appeared, so it rings there too.
    fn device_joined(&self, id: ConnectionId) {
        let Some(e) = self.conns.get(&id) else { return };
        let call = self
            .users
            .get(&e.conn.user.id)
            .and_then(|u| u.call)
            .and_then(|c| self.calls.get(&c));
        if let Some(c) = call
            && c.info.callee_conn.is_none()
            && c.info.callee.id == e.conn.user.id
        {
            let _ = c.actor.cast(CallMsg::DeviceJoined(e.conn.clone()));
        } else if call.is_none() {
            // A call ringing this user from a node that never told this one of it.
            self.cluster_device_joined(&e.conn);
        }
    }

    /// `welcome.call` for connection `conn` of `user`.
    fn call_summary(&self, user: UserId, conn: ConnectionId) -> Option<CallSummary> {
        let c = self.calls.get(&self.users.get(&user)?.call?)?;
        let caller = c.info.caller.user.id == user;
        let (state, here) = match c.info.callee_conn {
            None => (CallPhase::Ringing, !caller || c.info.caller.id == conn),
            Some(answered) => (
                CallPhase::Active,
                answered == conn || c.info.caller.id == conn,
            ),
        };
        Some(CallSummary {
            call_id: c.info.call_id,
            state,
            role: if caller {
                CallRole::Caller
            } else {
                CallRole::Callee
            },
            peer: if caller {
                c.info.callee.clone()
            } else {
                c.info.caller.user.clone()
            },
            here,
        })
    }

    fn register(&mut self, info: ConnEntryInfo) {
        let id = info.conn.id;
        let uid = info.conn.user.id;
        let hash = resume_hash(&info.resume_token);
        let user = self.users.entry(info.conn.user.id).or_default();
        if !user.conns.contains(&id) {
            user.conns.push(id);
        }
        self.names
            .insert(info.conn.user.username.clone(), info.conn.user.id);
        self.resume.insert(hash, id);
        self.conns.insert(
            id,
            Box::new(ConnEntry {
                conn: info.conn,
                session_id: info.session_id,
                session_expires_at: info.session_expires_at,
                resume_hash: hash,
                detached_at: (!info.attached).then(Instant::now),
            }),
        );
        self.cluster_presence(uid);
    }

    fn register_call(&mut self, actor: ActorRef<CallMsg>, info: CallEntryInfo) {
        for user in [info.caller.user.id, info.callee.id] {
            self.users.entry(user).or_default().call = Some(info.call_id);
        }
        self.cluster_call_changed(&info);
        self.calls.insert(info.call_id, CallEntry { actor, info });
    }

    fn unregister(&mut self, id: ConnectionId) {
        let Some(e) = self.conns.remove(&id) else {
            return;
        };
        self.resume.remove(&e.resume_hash);
        let uid = e.conn.user.id;
        if let Some(u) = self.users.get_mut(&uid) {
            u.conns.retain(|c| *c != id);
            if u.conns.is_empty() {
                self.names.remove(&e.conn.user.username);
                if u.call.is_none() {
                    self.users.remove(&uid);
                }
            }
        }
        self.cluster_presence(uid);
        self.cluster_conn_gone(id);
    }

    fn tell_call_of(&self, conn: ConnectionId, msg: CallMsg) {
        let call = self
            .conns
            .get(&conn)
            .and_then(|e| self.users.get(&e.conn.user.id))
            .and_then(|u| u.call)
            .and_then(|c| self.calls.get(&c));
        if let Some(c) = call {
            let _ = c.actor.cast(msg);
        }
    }

    fn forget_call(&mut self, id: CallId) {
        let Some(c) = self.calls.remove(&id) else {
            return;
        };
        self.cluster_call_forgotten(&c);
        for uid in [c.info.caller.user.id, c.info.callee.id] {
            if let Some(u) = self.users.get_mut(&uid) {
                if u.call == Some(id) {
                    u.call = None;
                }
                if u.conns.is_empty() && u.call.is_none() {
                    self.users.remove(&uid);
                }
            }
        }
    }

    fn call_failed(&mut self, id: CallId) {
        let Some(c) = self.calls.get(&id) else { return };
        // Queued for the database before anyone is told (as `Call::end_acking` does).
        self.args.persistence.record(CallEvent::Ended {
            call_id: id,
            reason: EndReason::ServerError.as_str(),
            at: Utc::now(),
        });
        let ended = ServerMessage::CallEnded {
            call_id: id,
            reason: EndReason::ServerError,
            cause: None,
            reference: None,
        };
        c.info.caller.send(ended.clone());
        let _ = c.info.caller.actor.cast(ConnectionMsg::Unpaired(id));
        if let Some(conn) = c.info.callee_conn.and_then(|cc| self.conns.get(&cc)) {
            let _ = conn.conn.actor.cast(ConnectionMsg::Unpaired(id));
        }
        let callee_conns: Vec<ConnectionId> = match c.info.callee_conn {
            Some(conn) => vec![conn],
            None => self
                .users
                .get(&c.info.callee.id)
                .map(|u| u.conns.clone())
                .unwrap_or_default(),
        };
        for conn in callee_conns.iter().filter_map(|id| self.conns.get(id)) {
            conn.conn.send(ended.clone());
        }
        self.args
            .metrics
            .call_ended(EndReason::ServerError.as_str());
        tracing::warn!(call_id = %id, "call ended after its actor failed");
        self.forget_call(id);
    }

    async fn route(&mut self, me: &ActorRef<RegistryMsg>, from: ConnRef, inbound: Inbound) {
        let reference = inbound.reference;
        let (call_id, action) = match inbound.message {
            ClientMessage::Invite { to } => return self.invite(me, from, &to, reference).await,
            ClientMessage::Accept { call_id } => (call_id, CallAction::Accept),
            ClientMessage::Reject { call_id, cause } => (call_id, CallAction::Reject(cause)),
            ClientMessage::Hangup { call_id, cause } => (call_id, CallAction::Hangup(cause)),
            ClientMessage::Sdp {
                call_id,
                description,
            } => (call_id, CallAction::Sdp(description)),
            ClientMessage::Ice { call_id, candidate } => (call_id, CallAction::Ice(candidate)),
            ClientMessage::Hello { .. } | ClientMessage::Ping | ClientMessage::Ack { .. } => return,
        };
        match self.calls.get(&call_id) {
            Some(c) => {
                let _ = c.actor.cast(CallMsg::Client {
                    from,
                    action,
                    reference,
                });
            }
            // A device on a node that has not heard of its user's call yet: the owner decides.
            None if self.cluster.is_some() && matches!(action, CallAction::Hangup(_)) => {
                self.cluster_hangup_elsewhere(from, call_id, action, reference);
            }
            None => from.send(ServerMessage::error(
                ErrorCode::UnknownCall,
                "unknown or ended call",
                reference,
                Some(call_id),
            )),
        }
    }
}
