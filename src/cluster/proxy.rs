//! Stand-ins: local actors that take the place of a connection or a call living on another
//! node, so that the call actor, the connection actors and the registry work unchanged in a
//! cluster. A [`RemoteConn`] is addressed exactly like a connection actor and forwards what is
//! meant for the client (and pairing) to the node holding the socket; a [`RemoteCall`] is
//! addressed like a call actor and forwards client actions and party changes to the node
//! owning the call. Neither holds state beyond its addresses, and neither waits longer than a
//! publish (bounded, see `Cluster::publish`).

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::Cluster;
use super::wire::{CallOp, ConnOp, NodeMsg, WireServerMsg};
use crate::actors::call::CallMsg;
use crate::actors::connection::ConnectionMsg;
use crate::domain::{CallId, ConnectionId};

/// Name prefix of connection stand-ins; the rest of the name is `<tree>/<node>/<connection>`,
/// which is how [`remote_node_of`] tells a stand-in from a local connection.
const REMOTE_PREFIX: &str = "callsignal-remote/";

/// The registered name of the stand-in for connection `conn` of node `node` in tree `system_id`.
pub fn remote_name(system_id: &str, node: &str, conn: ConnectionId) -> String {
    format!("{REMOTE_PREFIX}{system_id}/{node}/{}", conn.0)
}

/// The node a connection actor stands for, if it is a stand-in.
pub fn remote_node_of(actor: &ActorRef<ConnectionMsg>) -> Option<String> {
    let name = actor.get_name()?;
    let rest = name.strip_prefix(REMOTE_PREFIX)?;
    rest.split('/').nth(1).map(str::to_owned)
}

/// Stand-in for a connection on another node.
pub struct RemoteConn;

/// Fixed configuration of a [`RemoteConn`].
pub struct RemoteConnArgs {
    /// The cluster link.
    pub cluster: Cluster,
    /// The node holding the connection.
    pub node: String,
    /// The connection.
    pub conn: ConnectionId,
}

impl Actor for RemoteConn {
    type Msg = ConnectionMsg;
    type State = RemoteConnArgs;
    type Arguments = RemoteConnArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<Self::Msg>,
        args: RemoteConnArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _me: ActorRef<Self::Msg>,
        msg: Self::Msg,
        s: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let op = match msg {
            ConnectionMsg::Deliver(m) => WireServerMsg::from_msg(m).map(ConnOp::Deliver),
            ConnectionMsg::Relayed(m, _, _) => WireServerMsg::from_msg(m).map(ConnOp::Relayed),
            ConnectionMsg::Paired(p) => Some(ConnOp::Paired {
                call_id: p.call_id,
                peer: s.cluster.wire_conn(&p.peer),
                caller: p.caller,
            }),
            ConnectionMsg::Unpaired(call_id) => Some(ConnOp::Unpaired(call_id)),
            // Socket, session and lifecycle messages concern the connection's own node.
            _ => None,
        };
        if let Some(op) = op {
            let msg = NodeMsg::ToConn { conn: s.conn, op };
            s.cluster.send_node(&s.node, &msg).await;
        }
        Ok(())
    }
}

/// Stand-in for a call owned by another node.
pub struct RemoteCall;

/// Fixed configuration of a [`RemoteCall`].
pub struct RemoteCallArgs {
    /// The cluster link.
    pub cluster: Cluster,
    /// The node owning the call.
    pub owner: String,
    /// The call.
    pub call: CallId,
}

impl Actor for RemoteCall {
    type Msg = CallMsg;
    type State = RemoteCallArgs;
    type Arguments = RemoteCallArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<Self::Msg>,
        args: RemoteCallArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _me: ActorRef<Self::Msg>,
        msg: Self::Msg,
        s: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let op = match msg {
            CallMsg::Client {
                from,
                action,
                reference,
            } => Some(CallOp::Client {
                from: s.cluster.wire_conn(&from),
                action: action.into(),
                reference,
            }),
            CallMsg::PartyDetached(c) => Some(CallOp::PartyDetached(c)),
            CallMsg::PartyAttached(c) => Some(CallOp::PartyAttached(c)),
            CallMsg::PartyGone(c, reason) => Some(CallOp::PartyGone(c, reason)),
            CallMsg::DeviceJoined(c) => Some(CallOp::DeviceJoined(s.cluster.wire_conn(&c))),
            // Shutdown of this node: the owner hears of it through the parties' connections
            // ending; nothing to wait for here.
            CallMsg::End(_, ack) => {
                if let Some(ack) = ack {
                    let _ = ack.send(());
                }
                None
            }
            _ => None,
        };
        if let Some(op) = op {
            let msg = NodeMsg::ToCall { call: s.call, op };
            s.cluster.send_node(&s.owner, &msg).await;
        }
        Ok(())
    }
}
