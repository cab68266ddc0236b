//! The two child supervisors: `connections` (one child per signaling connection) and `calls`
//! (one child per call). They spawn children on request, log every start, stop and failure as a
//! `supervision` event naming the child, and tell the registry when a child fails so the call or
//! connection it owned is cleaned up (see `registry::RegistryMsg::{ConnectionFailed, CallFailed}`).
//! Children are not restarted in place: a connection or call is rebuilt only from its client's
//! next action, because its state (a socket, a ringing phone) cannot be recreated faithfully.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use uuid::Uuid;

use super::call::{Call, CallArgs, CallMsg};
use super::connection::{Connection, ConnectionArgs, ConnectionMsg};
use super::registry::{self, RegistryMsg};
use crate::domain::{CallId, ConnectionId};
use crate::metrics::Metrics;

/// Which children a supervisor owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Connection actors.
    Connections,
    /// Call actors.
    Calls,
}

/// A child supervisor.
pub struct Supervisor;

/// Messages of a child supervisor.
pub enum SupervisorMsg {
    /// Spawn a connection actor (connections supervisor only).
    SpawnConnection(
        Box<ConnectionArgs>,
        RpcReplyPort<Option<ActorRef<ConnectionMsg>>>,
    ),
    /// Spawn a call actor (calls supervisor only).
    SpawnCall(Box<CallArgs>, RpcReplyPort<Option<ActorRef<CallMsg>>>),
}

/// Fixed configuration.
pub struct SupervisorArgs {
    /// Which children.
    pub kind: Kind,
    /// The tree's id (to find the registry).
    pub system_id: String,
    /// Failure counter.
    pub metrics: Arc<Metrics>,
    /// This node (`server.instance_id`), named in every supervision event.
    pub node: String,
}

/// State: which child is which.
pub struct SupervisorState {
    kind: Kind,
    system_id: String,
    metrics: Arc<Metrics>,
    node: String,
    children: HashMap<ActorId, Uuid>,
}

impl SupervisorState {
    /// Spawns a linked child and remembers which connection or call it serves.
    async fn spawn<A: Actor>(
        &mut self,
        me: &ActorRef<SupervisorMsg>,
        id: Uuid,
        actor: A,
        args: A::Arguments,
    ) -> Option<ActorRef<A::Msg>> {
        match Actor::spawn_linked(None, actor, args, me.get_cell()).await {
            Ok((child, _)) => {
                self.children.insert(child.get_id(), id);
                Some(child)
            }
            Err(e) => {
                tracing::error!(error = %e, actor = self.kind.child(), id = %id, "spawning a child actor failed");
                None
            }
        }
    }

    /// Live-children gauge of this supervisor's kind.
    fn gauge(&self) -> &prometheus_client::metrics::gauge::Gauge {
        match self.kind {
            Kind::Connections => &self.metrics.ws_connections,
            Kind::Calls => &self.metrics.calls_live,
        }
    }
}

impl Kind {
    fn child(self) -> &'static str {
        match self {
            Kind::Connections => "connection",
            Kind::Calls => "call",
        }
    }
}

/// How long a supervisor waits for its remaining children to stop when it stops.
const CHILDREN_STOP_WAIT: std::time::Duration = std::time::Duration::from_millis(1000);

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<Self::Msg>,
        a: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SupervisorState {
            kind: a.kind,
            system_id: a.system_id,
            metrics: a.metrics,
            node: a.node,
            children: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        me: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::SpawnConnection(args, reply) => {
                let id = args.id.0;
                let _ = reply.send(state.spawn(&me, id, Connection, *args).await);
            }
            SupervisorMsg::SpawnCall(args, reply) => {
                let id = args.id.0;
                let _ = reply.send(state.spawn(&me, id, Call, *args).await);
            }
        }
        Ok(())
    }

    /// Stops what is left of its children (at shutdown: connections in their resume grace,
    /// say) and logs each stop: it no longer handles their supervision events (contract §4).
    async fn post_stop(
        &self,
        me: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if state.children.is_empty() {
            return Ok(());
        }
        me.stop_children_and_wait(Some("shutdown".into()), Some(CHILDREN_STOP_WAIT))
            .await;
        let actor = state.kind.child();
        for (actor_id, id) in std::mem::take(&mut state.children) {
            state.gauge().dec();
            tracing::info!(target: "supervision", event = "stopped", node = %state.node, actor, id = %id, actor_id = %actor_id, reason = "shutdown", "actor stopped");
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _me: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let actor = state.kind.child();
        match evt {
            SupervisionEvent::ActorStarted(cell) => {
                let id = state
                    .children
                    .get(&cell.get_id())
                    .copied()
                    .unwrap_or_default();
                state.gauge().inc();
                tracing::info!(target: "supervision", event = "started", node = %state.node, actor, id = %id, actor_id = %cell.get_id(), "actor started");
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let id = state.children.remove(&cell.get_id()).unwrap_or_default();
                state.gauge().dec();
                tracing::info!(target: "supervision", event = "stopped", node = %state.node, actor, id = %id, actor_id = %cell.get_id(),
                    reason = reason.as_deref().unwrap_or("normal"), "actor stopped");
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                let id = state.children.remove(&cell.get_id()).unwrap_or_default();
                state.gauge().dec();
                state.metrics.actor_failed(state.kind.child());
                let action = match state.kind {
                    Kind::Connections => "close socket; its call follows the resume rules",
                    Kind::Calls => "end the call cleanly for both parties",
                };
                tracing::error!(target: "supervision", event = "failed", node = %state.node, actor, id = %id, actor_id = %cell.get_id(),
                    reason = %err, action, "actor failed");
                if let Some(r) = registry::lookup(&state.system_id) {
                    let _ = r.cast(match state.kind {
                        Kind::Connections => RegistryMsg::ConnectionFailed(ConnectionId(id)),
                        Kind::Calls => RegistryMsg::CallFailed(CallId(id)),
                    });
                }
            }
            SupervisionEvent::ProcessGroupChanged(_) => {}
        }
        Ok(())
    }
}
