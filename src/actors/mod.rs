//! The supervised actor tree (ractor):
//!
//! ```text
//! root (root.rs)
//! ├── persistence (persistence.rs)   call events → database, batched, outage-proof
//! ├── registry    (registry/)        users → connections, calls → call actors; routes sdp/ice
//! ├── connections (supervisor.rs)    one `connection` actor per signaling connection
//! └── calls       (supervisor.rs)    one `call` actor per call (the call state machine)
//! ```
//!
//! Every start, stop, failure and restart is logged as one `supervision` event naming the
//! actor and its ids. Actors never block on the network: sockets are owned by tasks
//! (`ws::socket`) behind bounded queues.

pub mod call;
pub mod connection;
pub mod line;
pub mod persistence;
pub mod registry;
pub mod root;
pub mod supervisor;

use std::time::Duration;

use ractor::{ActorRef, RpcReplyPort};

use crate::domain::{ConnectionId, SessionId, UserRef};
use crate::ws::protocol::ServerMessage;

pub use persistence::PersistenceHandle;

/// Deadline for request/reply calls between actors; they are all in-memory and quick.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection as other actors address it.
#[derive(Debug, Clone)]
pub struct ConnRef {
    /// Connection id.
    pub id: ConnectionId,
    /// Its authenticated user.
    pub user: UserRef,
    /// The connection actor.
    pub actor: ActorRef<connection::ConnectionMsg>,
    /// Its outgoing line (`None` for a stand-in of a connection on another node): the paired
    /// peer's socket task appends relayed `sdp`/`ice` to it directly.
    pub line: Option<std::sync::Arc<line::Line>>,
}

impl ConnRef {
    /// Sends a message to the client (queued while its socket is away).
    pub fn send(&self, msg: ServerMessage) {
        let _ = self.actor.cast(connection::ConnectionMsg::Deliver(msg));
    }
}

/// Request/reply with [`CALL_TIMEOUT`]; `None` if the actor is gone or too slow.
pub async fn ask<M, T>(actor: &ActorRef<M>, build: impl FnOnce(RpcReplyPort<T>) -> M) -> Option<T>
where
    M: ractor::Message,
    T: Send + 'static,
{
    match actor.call(build, Some(CALL_TIMEOUT)).await {
        Ok(ractor::rpc::CallResult::Success(v)) => Some(v),
        _ => None,
    }
}

/// Handle to a running actor tree, held by the HTTP layer and tests.
#[derive(Clone)]
pub struct ActorSystem {
    /// Unique per tree, so several servers can run in one process (tests).
    pub system_id: String,
    /// The root supervisor.
    pub root: ActorRef<root::RootMsg>,
    /// The persistence queue.
    pub persistence: PersistenceHandle,
    /// The link to the other nodes (cluster mode only).
    pub cluster: Option<crate::cluster::Cluster>,
}

impl ActorSystem {
    /// The current persistence actor (it may have been restarted).
    pub fn persistence_actor(&self) -> Option<ActorRef<persistence::PersistenceMsg>> {
        ractor::registry::where_is(format!("callsignal-{}-persistence", self.system_id))
            .map(Into::into)
    }

    /// The current registry (it may have been restarted).
    pub fn registry(&self) -> Option<ActorRef<registry::RegistryMsg>> {
        registry::lookup(&self.system_id)
    }

    /// Closes every socket of `session` with `session_revoked`.
    pub fn revoke_session(&self, session: SessionId) {
        if let Some(r) = self.registry() {
            let _ = r.cast(registry::RegistryMsg::RevokeSession(session));
        }
    }

    /// Whether the tree is up.
    pub fn health(&self) -> Result<(), String> {
        if self.registry().is_none() {
            return Err("registry actor is not running (restarting?)".into());
        }
        match self.root.get_status() {
            ractor::ActorStatus::Running => Ok(()),
            s => Err(format!("root supervisor is {s:?}")),
        }
    }

    /// Current counts, for tests and diagnostics.
    pub async fn stats(&self) -> Option<registry::Stats> {
        ask(&self.registry()?, registry::RegistryMsg::Stats).await
    }

    /// Ends every call (`server_shutdown`), closes every socket (1001) and stops the tree.
    pub async fn shutdown(&self) {
        let _ = self.root.cast(root::RootMsg::ShuttingDown);
        if let Some(r) = self.registry() {
            let _ = ask(&r, registry::RegistryMsg::Shutdown).await;
        }
    }

    /// Stops the actors (after [`shutdown`](Self::shutdown) and the persistence drain).
    pub async fn stop(&self) {
        let _ = self
            .root
            .stop_and_wait(Some("shutdown".into()), Some(CALL_TIMEOUT))
            .await;
    }

    /// Identifies a connection by id, for tests that address actors directly.
    pub async fn connection(
        &self,
        id: ConnectionId,
    ) -> Option<ActorRef<connection::ConnectionMsg>> {
        ask(&self.registry()?, |reply| {
            registry::RegistryMsg::FindConnection(id, reply)
        })
        .await?
    }

    /// The call actor of `call`, for tests that address actors directly.
    pub async fn call_actor(&self, call: crate::domain::CallId) -> Option<ActorRef<call::CallMsg>> {
        ask(&self.registry()?, |reply| {
            registry::RegistryMsg::FindCall(call, reply)
        })
        .await?
    }
}
