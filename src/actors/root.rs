//! The root supervisor: starts the persistence actor, the two child supervisors and the
//! registry, and restarts the persistence actor or the registry when either fails (the
//! persistence queue and the live connection/call actors outlive them, so nothing is lost).

use std::sync::Arc;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use sea_orm::DatabaseConnection;

use super::persistence::{Persistence, PersistenceArgs, PersistenceHandle};
use super::registry::{self, Registry, RegistryArgs};
use super::supervisor::{Kind, Supervisor, SupervisorArgs, SupervisorMsg};
use crate::config::Settings;
use crate::metrics::Metrics;

/// The root supervisor.
pub struct Root;

/// Messages of the root supervisor.
#[derive(Debug)]
pub enum RootMsg {
    /// Shutdown has begun: stop restarting children.
    ShuttingDown,
}

/// Fixed configuration of the tree.
pub struct RootArgs {
    /// Tree id.
    pub system_id: String,
    /// Settings.
    pub settings: Arc<Settings>,
    /// Database.
    pub db: DatabaseConnection,
    /// Persistence queue.
    pub persistence: PersistenceHandle,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The link to the other nodes (cluster mode only).
    pub cluster: Option<crate::cluster::Cluster>,
}

/// State of the root supervisor.
pub struct RootState {
    args: RootArgs,
    persistence: ActorCell,
    registry: ActorCell,
    connections: ActorRef<SupervisorMsg>,
    calls: ActorRef<SupervisorMsg>,
    shutting_down: bool,
}

fn log_start(a: &RootArgs, actor: &str, cell: &ActorCell) {
    let node = &a.settings.server.instance_id;
    tracing::info!(target: "supervision", event = "started", node = %node, actor, actor_id = %cell.get_id(), "actor started");
}

async fn spawn_persistence(
    me: &ActorRef<RootMsg>,
    a: &RootArgs,
) -> Result<ActorCell, ActorProcessingErr> {
    let name = format!("callsignal-{}-persistence", a.system_id);
    let args = PersistenceArgs {
        db: a.db.clone(),
        handle: a.persistence.clone(),
        settings: a.settings.persistence.clone(),
    };
    let (actor, _) = Actor::spawn_linked(Some(name), Persistence, args, me.get_cell()).await?;
    log_start(a, "persistence", &actor.get_cell());
    Ok(actor.get_cell())
}

async fn spawn_registry(
    me: &ActorRef<RootMsg>,
    a: &RootArgs,
    connections: &ActorRef<SupervisorMsg>,
    calls: &ActorRef<SupervisorMsg>,
) -> Result<ActorCell, ActorProcessingErr> {
    let args = RegistryArgs {
        system_id: a.system_id.clone(),
        settings: a.settings.clone(),
        db: a.db.clone(),
        persistence: a.persistence.clone(),
        metrics: a.metrics.clone(),
        connections: connections.clone(),
        calls: calls.clone(),
        cluster: a.cluster.clone(),
    };
    let (actor, _) = Actor::spawn_linked(
        Some(registry::name(&a.system_id)),
        Registry,
        args,
        me.get_cell(),
    )
    .await?;
    log_start(a, "registry", &actor.get_cell());
    Ok(actor.get_cell())
}

async fn spawn_supervisor(
    me: &ActorRef<RootMsg>,
    a: &RootArgs,
    kind: Kind,
) -> Result<ActorRef<SupervisorMsg>, ActorProcessingErr> {
    let args = SupervisorArgs {
        kind,
        system_id: a.system_id.clone(),
        metrics: a.metrics.clone(),
        node: a.settings.server.instance_id.clone(),
    };
    let (actor, _) = Actor::spawn_linked(None, Supervisor, args, me.get_cell()).await?;
    log_start(
        a,
        if kind == Kind::Connections {
            "connections"
        } else {
            "calls"
        },
        &actor.get_cell(),
    );
    Ok(actor)
}

/// How long the root waits for each child to stop at shutdown (the four together stay within
/// [`super::CALL_TIMEOUT`], the wait for the root).
const CHILD_STOP_WAIT: std::time::Duration = std::time::Duration::from_millis(1200);

/// The exit reason ractor gives an actor whose task was dropped without finishing (its
/// `ActorLifecycleGuard`).
const TASK_CANCELLED: &str = "actor_task_cancelled";

impl Actor for Root {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        me: ActorRef<Self::Msg>,
        args: RootArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let persistence = spawn_persistence(&me, &args).await?;
        let connections = spawn_supervisor(&me, &args, Kind::Connections).await?;
        let calls = spawn_supervisor(&me, &args, Kind::Calls).await?;
        let registry = spawn_registry(&me, &args, &connections, &calls).await?;
        Ok(RootState {
            args,
            persistence,
            registry,
            connections,
            calls,
            shutting_down: false,
        })
    }

    /// Stops the children in order and logs each stop, then its own (contract §4: every actor
    /// start and stop is one log event naming the actor). ractor would otherwise end them with
    /// the root and no event would say so: the root no longer handles their supervision events.
    /// Order: the registry (it routes into the others), the call and the connection supervisors
    /// (each stops and logs what is left of its children), persistence last (it commits what
    /// the others queued; the shutdown drained it already).
    async fn post_stop(
        &self,
        me: ActorRef<Self::Msg>,
        s: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        s.shutting_down = true;
        let node = &s.args.settings.server.instance_id;
        let children = [
            ("registry", s.registry.clone()),
            ("calls", s.calls.get_cell()),
            ("connections", s.connections.get_cell()),
            ("persistence", s.persistence.clone()),
        ];
        for (actor, cell) in children {
            if cell.get_status() >= ractor::ActorStatus::Stopping {
                continue; // stopped before, and logged then
            }
            let reason = match cell
                .stop_and_wait(Some("shutdown".into()), Some(CHILD_STOP_WAIT))
                .await
            {
                Ok(()) => "shutdown",
                Err(_) => "shutdown (did not stop in time)",
            };
            tracing::info!(target: "supervision", event = "stopped", node = %node, actor, actor_id = %cell.get_id(), reason, "actor stopped");
        }
        tracing::info!(target: "supervision", event = "stopped", node = %node, actor = "root", actor_id = %me.get_id(), reason = "shutdown", "actor stopped");
        Ok(())
    }

    async fn handle(
        &self,
        _me: ActorRef<Self::Msg>,
        msg: Self::Msg,
        s: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RootMsg::ShuttingDown => s.shutting_down = true,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        s: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason, failed) = match evt {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "normal".into()), false)
            }
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string(), true),
            _ => return Ok(()),
        };
        let id = cell.get_id();
        let actor = if id == s.registry.get_id() {
            "registry"
        } else if id == s.persistence.get_id() {
            "persistence"
        } else if id == s.connections.get_id() {
            "connections"
        } else if id == s.calls.get_id() {
            "calls"
        } else {
            "unknown"
        };
        if failed {
            s.args.metrics.actor_failed(actor);
            tracing::error!(target: "supervision", event = "failed", node = %s.args.settings.server.instance_id, actor, actor_id = %id, reason = %reason, "actor failed");
        } else {
            tracing::info!(target: "supervision", event = "stopped", node = %s.args.settings.server.instance_id, actor, actor_id = %id, reason = %reason, "actor stopped");
        }
        // ractor reports a child whose task the runtime dropped (the runtime is going away:
        // the process ends, or a test's runtime is dropped) as terminated with this reason. A
        // restart would be dropped at once as well, and reported the same way: a restart loop.
        if s.shutting_down {
            return Ok(());
        }
        if reason == TASK_CANCELLED {
            // Not silent: the one other way ractor gives this reason is a panic that escaped
            // an actor's task outside its handlers (a destructor of a queued message), which
            // leaves the server without this actor. Operators see it at error level.
            tracing::error!(target: "supervision", event = "not_restarted", node = %s.args.settings.server.instance_id, actor, actor_id = %id,
                "actor's task was dropped without finishing; not restarted (expected only while the runtime shuts down)");
            return Ok(());
        }
        match actor {
            "registry" => {
                s.registry = spawn_registry(&me, &s.args, &s.connections, &s.calls).await?;
                tracing::warn!(target: "supervision", event = "restarted", node = %s.args.settings.server.instance_id, actor, actor_id = %s.registry.get_id(), "actor restarted");
            }
            "persistence" => {
                s.persistence = spawn_persistence(&me, &s.args).await?;
                tracing::warn!(target: "supervision", event = "restarted", node = %s.args.settings.server.instance_id, actor, actor_id = %s.persistence.get_id(), "actor restarted");
            }
            _ => {}
        }
        Ok(())
    }
}
