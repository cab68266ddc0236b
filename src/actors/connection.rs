//! The connection actor: one per signaling connection. It owns the connection's state (user,
//! session, resume token, current socket) and a bounded outbound queue to the socket task. When
//! the socket drops it keeps the connection for `ws.resume_grace_secs`, queueing (boundedly)
//! what the server sends meanwhile, and delivers it in order on resume. A client that does not
//! read fast enough is disconnected, never buffered without bound.

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc;

use super::ConnRef;
use super::registry::{self, ConnEntryInfo, RegistryMsg};
use crate::config::Settings;
use crate::domain::{ConnectionId, SessionId, UserRef};
use crate::ice::IceServer;
use crate::metrics::Metrics;
use crate::ws::close;
use crate::ws::protocol::{ClientMessage, ErrorCode, Inbound, ServerMessage};

/// What the connection actor hands to its socket task.
#[derive(Debug)]
pub enum Outbound {
    /// A text frame.
    Text(String),
    /// A close frame with code and reason; the socket task closes after sending it.
    Close(u16, &'static str),
}

/// The connection's current socket.
#[derive(Debug)]
pub struct SocketLink {
    /// Unique per socket, so a stale socket's "closed" notice is ignored after a resume.
    pub socket_id: u64,
    /// Bounded queue to the socket task.
    pub tx: mpsc::Sender<Outbound>,
    /// Kills the socket task when the client does not read.
    pub abort: SocketKill,
}

/// Stops a socket task at once, without a close handshake (for clients that do not read).
#[derive(Debug, Clone, Default)]
pub struct SocketKill(std::sync::Arc<tokio::sync::Notify>);

impl SocketKill {
    /// Asks the socket task to drop the connection.
    pub fn abort(&self) {
        self.0.notify_one();
    }
    /// Resolves once [`abort`](Self::abort) was called.
    pub async fn killed(&self) {
        self.0.notified().await;
    }
}

/// Messages of the connection actor.
pub enum ConnectionMsg {
    /// A typed message from the client.
    Client(Inbound),
    /// A message for the client.
    Deliver(ServerMessage),
    /// A new socket resumed this connection.
    Attach(SocketLink),
    /// The socket `socket_id` closed or failed; carries the frames it had not written yet, which
    /// go first to the next socket that resumes the connection.
    SocketClosed(u64, Vec<String>),
    /// The resume grace of detach number `epoch` is over.
    GraceExpired(u64),
    /// The session was revoked or reached its lifetime: `session_revoked`, close 4401.
    Revoke,
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
    /// Messages waiting for a resume.
    pub pending: usize,
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
    /// The first socket.
    pub socket: SocketLink,
    /// ICE servers for `welcome`.
    pub ice_servers: Vec<IceServer>,
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
    socket: Option<SocketLink>,
    pending: VecDeque<String>,
    detach_epoch: u64,
    ice_servers: Vec<IceServer>,
    links: Links,
}

impl ConnectionState {
    fn conn_ref(&self, me: &ActorRef<ConnectionMsg>) -> ConnRef {
        ConnRef {
            id: self.id,
            user: self.user.clone(),
            actor: me.clone(),
        }
    }

    fn welcome(&self, resumed: bool) -> ServerMessage {
        ServerMessage::Welcome {
            session_id: self.session_id,
            connection_id: self.id,
            user: self.user.clone(),
            resume_token: self.resume_token.clone(),
            heartbeat_ms: self.links.settings.ws.heartbeat().as_millis() as u64,
            ice_servers: self.ice_servers.clone(),
            resumed,
        }
    }

    /// Queues a frame to the socket, or for a resume. `false` if the client must be dropped.
    fn push(&mut self, text: String) -> bool {
        let cap = self.links.settings.ws.outbound_queue;
        match &self.socket {
            Some(s) => match s.tx.try_send(Outbound::Text(text)) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => false,
                // The socket task is gone; its SocketClosed notice is on the way.
                Err(mpsc::error::TrySendError::Closed(Outbound::Text(t))) => {
                    self.pending.push_back(t);
                    self.pending.len() <= cap
                }
                Err(mpsc::error::TrySendError::Closed(_)) => true,
            },
            None => {
                self.pending.push_back(text);
                self.pending.len() <= cap
            }
        }
    }

    fn close(&mut self, code: u16, reason: &'static str) {
        if let Some(s) = self.socket.take()
            && s.tx.try_send(Outbound::Close(code, reason)).is_err()
        {
            s.abort.abort();
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
            }));
        }
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
        Ok(ConnectionState {
            id: a.id,
            user: a.user,
            session_id: a.session_id,
            session_expires_at: a.session_expires_at,
            resume_token: a.resume_token,
            socket: Some(a.socket),
            pending: VecDeque::new(),
            detach_epoch: 0,
            ice_servers: a.ice_servers,
            links: a.links,
        })
    }

    async fn post_start(
        &self,
        me: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let welcome = state.welcome(false).to_json();
        if !state.push(welcome) {
            me.stop(Some("slow_consumer".into()));
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.close(close::GOING_AWAY, "connection ended");
        if let Some(r) = state.registry() {
            let _ = r.cast(RegistryMsg::ConnectionGone(state.id));
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
                if !state.push(msg.to_json()) {
                    state.links.metrics.slow_consumers.inc();
                    tracing::warn!(connection_id = %state.id, user_id = %state.user.id,
                        "client does not read its messages; disconnecting");
                    if let Some(s) = state.socket.take() {
                        s.abort.abort();
                    }
                    me.stop(Some("slow_consumer".into()));
                }
            }
            ConnectionMsg::Attach(socket) => {
                if let Some(old) = state.socket.replace(socket) {
                    old.abort.abort();
                }
                let welcome = state.welcome(true).to_json();
                let mut ok = state.push(welcome);
                while ok && let Some(text) = state.pending.pop_front() {
                    ok = state.push(text);
                }
                if !ok {
                    me.stop(Some("slow_consumer".into()));
                    return Ok(());
                }
                tracing::info!(connection_id = %state.id, user_id = %state.user.id, "connection resumed");
                if let Some(r) = state.registry() {
                    let _ = r.cast(RegistryMsg::Attached(state.id));
                }
            }
            ConnectionMsg::SocketClosed(socket_id, unsent) => {
                if state
                    .socket
                    .as_ref()
                    .is_some_and(|s| s.socket_id == socket_id)
                {
                    state.socket = None;
                    // Unsent frames were queued before anything that waited in `pending`.
                    for text in unsent.into_iter().rev() {
                        state.pending.push_front(text);
                    }
                    if state.pending.len() > state.links.settings.ws.outbound_queue {
                        me.stop(Some("slow_consumer".into()));
                        return Ok(());
                    }
                    state.detach_epoch += 1;
                    let epoch = state.detach_epoch;
                    tracing::info!(connection_id = %state.id, user_id = %state.user.id,
                        grace_secs = state.links.settings.ws.resume_grace_secs, "socket dropped; waiting for resume");
                    if let Some(r) = state.registry() {
                        let _ = r.cast(RegistryMsg::Detached(state.id));
                    }
                    me.send_after(state.links.settings.ws.resume_grace(), move || {
                        ConnectionMsg::GraceExpired(epoch)
                    });
                }
            }
            ConnectionMsg::GraceExpired(epoch) => {
                if state.socket.is_none() && epoch == state.detach_epoch {
                    me.stop(Some("connection_lost".into()));
                }
            }
            ConnectionMsg::Revoke => {
                let err = ServerMessage::error(
                    ErrorCode::SessionRevoked,
                    "your session was revoked or has expired",
                    None,
                    None,
                );
                state.push(err.to_json());
                state.close(close::UNAUTHORIZED, "session revoked");
                me.stop(Some("session_revoked".into()));
            }
            ConnectionMsg::Shutdown => {
                state.close(close::GOING_AWAY, "server shutting down");
                me.stop(Some("server_shutdown".into()));
            }
            ConnectionMsg::Reannounce => state.announce(&me),
            ConnectionMsg::Info(reply) => {
                let _ = reply.send(ConnectionInfo {
                    id: state.id,
                    user: state.user.clone(),
                    attached: state.socket.is_some(),
                    pending: state.pending.len(),
                });
            }
            #[cfg(feature = "test-hooks")]
            ConnectionMsg::Panic => panic!("test hook: connection actor panic"),
        }
        Ok(())
    }
}

impl Connection {
    fn on_client(
        &self,
        me: &ActorRef<ConnectionMsg>,
        inbound: Inbound,
        state: &mut ConnectionState,
    ) {
        let reply = |msg: ServerMessage| {
            let _ = me.cast(ConnectionMsg::Deliver(msg));
        };
        match inbound.message {
            ClientMessage::Ping => reply(ServerMessage::Pong {
                reference: inbound.reference,
            }),
            ClientMessage::Hello { .. } => reply(ServerMessage::error(
                ErrorCode::BadMessage,
                "already authenticated",
                inbound.reference,
                None,
            )),
            _ => match state.registry() {
                Some(r) => {
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
