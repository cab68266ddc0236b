//! What nodes say to each other over NATS: serde types, JSON-encoded. Only what crosses nodes
//! is here (a `welcome` never does); `sdp`/`ice` payloads travel as the exact JSON text the
//! sender wrote (`RawValue`), so the relay stays byte for byte across nodes.
//!
//! Every enum is externally tagged: serde_json then reads `RawValue`s in place (an internally
//! tagged enum would buffer them and fail).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::actors::call::CallAction;
use crate::actors::connection::SocketEnd;
use crate::domain::{CallId, ConnectionId, SessionId, UserId, UserRef, Username};
use crate::ws::protocol::{ClientMessage, EndCause, EndReason, ErrorCode, ServerMessage};

/// A user as it crosses nodes (the name was validated where it was first read).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireUser {
    /// Id.
    pub id: UserId,
    /// Name.
    pub username: String,
}

impl From<&UserRef> for WireUser {
    fn from(u: &UserRef) -> Self {
        Self {
            id: u.id,
            username: u.username.as_str().to_owned(),
        }
    }
}

impl WireUser {
    /// Back to a [`UserRef`].
    pub fn to_user(&self) -> UserRef {
        UserRef {
            id: self.id,
            username: Username::from_trusted(self.username.clone()),
        }
    }
}

/// A connection anywhere in the cluster: its id, its user and the node that holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireConn {
    /// Connection id.
    pub id: ConnectionId,
    /// Its user.
    pub user: WireUser,
    /// The node holding its actor (`server.instance_id`).
    pub node: String,
}

/// A server → client message on its way to a connection on another node.
#[derive(Debug, Serialize, Deserialize)]
pub enum WireServerMsg {
    /// `call.created`.
    Created {
        /// Call.
        call_id: CallId,
        /// Callee.
        to: WireUser,
        /// Invite's `ref`.
        reference: Option<String>,
    },
    /// `call.ringing`.
    Ringing {
        /// Call.
        call_id: CallId,
    },
    /// `call.incoming`.
    Incoming {
        /// Call.
        call_id: CallId,
        /// Caller.
        from: WireUser,
    },
    /// `call.accepted`.
    Accepted {
        /// Call.
        call_id: CallId,
        /// Accept's `ref`.
        reference: Option<String>,
    },
    /// `call.ended`.
    Ended {
        /// Call.
        call_id: CallId,
        /// Why.
        reason: EndReason,
        /// The cause the ending party gave.
        cause: Option<EndCause>,
        /// Acknowledged message's `ref`.
        reference: Option<String>,
    },
    /// `sdp`.
    Sdp {
        /// Call.
        call_id: CallId,
        /// As the peer wrote it.
        description: Box<RawValue>,
        /// Authenticated sender.
        from: WireUser,
    },
    /// `ice`.
    Ice {
        /// Call.
        call_id: CallId,
        /// As the peer wrote it.
        candidate: Box<RawValue>,
        /// Authenticated sender.
        from: WireUser,
    },
    /// `peer.reconnecting`.
    PeerReconnecting {
        /// Call.
        call_id: CallId,
    },
    /// `peer.reconnected`.
    PeerReconnected {
        /// Call.
        call_id: CallId,
    },
    /// `pong`.
    Pong {
        /// Ping's `ref`.
        reference: Option<String>,
    },
    /// `error`.
    Error {
        /// Code.
        code: ErrorCode,
        /// Text.
        message: String,
        /// Offending message's `ref`.
        reference: Option<String>,
        /// Call concerned.
        call_id: Option<CallId>,
    },
}

impl WireServerMsg {
    /// The wire form of `msg`; `None` for what never crosses nodes (`welcome`).
    pub fn from_msg(msg: ServerMessage) -> Option<Self> {
        use ServerMessage as M;
        Some(match msg {
            M::Welcome(_) => return None,
            M::CallCreated {
                call_id,
                to,
                reference,
            } => Self::Created {
                call_id,
                to: (&to).into(),
                reference,
            },
            M::CallRinging { call_id } => Self::Ringing { call_id },
            M::CallIncoming { call_id, from } => Self::Incoming {
                call_id,
                from: (&from).into(),
            },
            M::CallAccepted { call_id, reference } => Self::Accepted { call_id, reference },
            M::CallEnded {
                call_id,
                reason,
                cause,
                reference,
            } => Self::Ended {
                call_id,
                reason,
                cause,
                reference,
            },
            M::Sdp {
                call_id,
                description,
                from,
            } => Self::Sdp {
                call_id,
                description,
                from: (&from).into(),
            },
            M::Ice {
                call_id,
                candidate,
                from,
            } => Self::Ice {
                call_id,
                candidate,
                from: (&from).into(),
            },
            M::PeerReconnecting { call_id } => Self::PeerReconnecting { call_id },
            M::PeerReconnected { call_id } => Self::PeerReconnected { call_id },
            M::Pong { reference } => Self::Pong { reference },
            M::Error {
                code,
                message,
                reference,
                call_id,
            } => Self::Error {
                code,
                message,
                reference,
                call_id,
            },
        })
    }

    /// Back to the message the connection actor sends.
    pub fn into_msg(self) -> ServerMessage {
        use ServerMessage as M;
        match self {
            Self::Created {
                call_id,
                to,
                reference,
            } => M::CallCreated {
                call_id,
                to: to.to_user(),
                reference,
            },
            Self::Ringing { call_id } => M::CallRinging { call_id },
            Self::Incoming { call_id, from } => M::CallIncoming {
                call_id,
                from: from.to_user(),
            },
            Self::Accepted { call_id, reference } => M::CallAccepted { call_id, reference },
            Self::Ended {
                call_id,
                reason,
                cause,
                reference,
            } => M::CallEnded {
                call_id,
                reason,
                cause,
                reference,
            },
            Self::Sdp {
                call_id,
                description,
                from,
            } => M::Sdp {
                call_id,
                description,
                from: from.to_user(),
            },
            Self::Ice {
                call_id,
                candidate,
                from,
            } => M::Ice {
                call_id,
                candidate,
                from: from.to_user(),
            },
            Self::PeerReconnecting { call_id } => M::PeerReconnecting { call_id },
            Self::PeerReconnected { call_id } => M::PeerReconnected { call_id },
            Self::Pong { reference } => M::Pong { reference },
            Self::Error {
                code,
                message,
                reference,
                call_id,
            } => M::Error {
                code,
                message,
                reference,
                call_id,
            },
        }
    }
}

/// What a remote party asks of a call.
#[derive(Debug, Serialize, Deserialize)]
pub enum WireAction {
    /// Answer.
    Accept,
    /// Decline.
    Reject(Option<EndCause>),
    /// End or cancel.
    Hangup(Option<EndCause>),
    /// Relay a description.
    Sdp(Box<RawValue>),
    /// Relay a candidate.
    Ice(Box<RawValue>),
}

impl From<CallAction> for WireAction {
    fn from(a: CallAction) -> Self {
        match a {
            CallAction::Accept => Self::Accept,
            CallAction::Reject(c) => Self::Reject(c),
            CallAction::Hangup(c) => Self::Hangup(c),
            CallAction::Sdp(d) => Self::Sdp(d),
            CallAction::Ice(c) => Self::Ice(c),
        }
    }
}

impl From<WireAction> for CallAction {
    fn from(a: WireAction) -> Self {
        match a {
            WireAction::Accept => Self::Accept,
            WireAction::Reject(c) => Self::Reject(c),
            WireAction::Hangup(c) => Self::Hangup(c),
            WireAction::Sdp(d) => Self::Sdp(d),
            WireAction::Ice(c) => Self::Ice(c),
        }
    }
}

/// For a connection held by the receiving node.
#[derive(Debug, Serialize, Deserialize)]
pub enum ConnOp {
    /// A message for the client.
    Deliver(WireServerMsg),
    /// A relayed `sdp`/`ice` for the client.
    Relayed(WireServerMsg),
    /// The call was answered with this connection as a party: relay directly to `peer`.
    Paired {
        /// Call.
        call_id: CallId,
        /// The other party.
        peer: WireConn,
        /// Whether this connection is the caller's.
        caller: bool,
    },
    /// Stop relaying directly for this call.
    Unpaired(CallId),
}

/// For a call owned by the receiving node.
#[derive(Debug, Serialize, Deserialize)]
pub enum CallOp {
    /// A client action from a connection on another node.
    Client {
        /// Sender.
        from: WireConn,
        /// What it asks.
        action: WireAction,
        /// Its `ref`.
        reference: Option<String>,
    },
    /// A party's socket dropped.
    PartyDetached(ConnectionId),
    /// A party's socket came back.
    PartyAttached(ConnectionId),
    /// A connection ended for good.
    PartyGone(ConnectionId, EndReason),
    /// A callee device appeared while ringing.
    DeviceJoined(WireConn),
}

/// A call owned by another node that concerns users of the receiving node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireCallInfo {
    /// Call.
    pub call_id: CallId,
    /// Node owning the call actor.
    pub owner: String,
    /// Inviting connection.
    pub caller: WireConn,
    /// Invited user.
    pub callee: WireUser,
    /// Answering connection, once active.
    pub callee_conn: Option<WireConn>,
}

/// Published on a node's own subject (`callsignal.node.<id>`).
#[derive(Debug, Serialize, Deserialize)]
pub enum NodeMsg {
    /// For one of the node's connections.
    ToConn {
        /// Connection.
        conn: ConnectionId,
        /// What to do.
        op: ConnOp,
    },
    /// For one of the node's calls.
    ToCall {
        /// Call.
        call: CallId,
        /// What to do.
        op: CallOp,
    },
    /// A call owned elsewhere that rings (or involves) users here; sent again when answered.
    CallInfo(WireCallInfo),
    /// That call is over.
    CallGone(CallId),
    /// A socket of one node bridged to a connection actor of another: a resume or takeover
    /// that reached another node than the one holding the connection (see
    /// [`crate::cluster::bridge`]).
    Bridge {
        /// Sending node.
        from: String,
        /// The bridge: chosen by the node holding the socket, unique there.
        id: u64,
        /// Number of this message in its direction (0, 1, …): a gap means NATS dropped one,
        /// and the bridge breaks (the client resumes and gets a replay); `u64::MAX` for an
        /// out-of-band `Kill`/`Closed` about a bridge the sender no longer knows.
        n: u64,
        /// What to do.
        op: BridgeOp,
    },
}

/// What crosses a bridge: toward the node holding the socket (`Frames`, `Close`, `Kill`) or
/// toward the node holding the connection actor (the rest). Frames are the exact JSON text the
/// connection actor numbered, so a bridged client sees the same bytes as a local one.
#[derive(Debug, Serialize, Deserialize)]
pub enum BridgeOp {
    /// Server messages for the client, in order, each with its `seq` (0 = unsequenced).
    Frames(Vec<(u64, Box<RawValue>)>),
    /// Close the socket after the frames before it (code, reason).
    Close(u16, String),
    /// Close the socket now (code): superseded by a newer socket, or the bridge broke.
    Kill(u16),
    /// A client message from the socket. `written`: highest `seq` the socket wrote.
    Client {
        /// Highest `seq` written to the socket.
        written: u64,
        /// The message.
        message: WireClient,
        /// Its `ref`.
        reference: Option<String>,
    },
    /// The client proved it has every message up to `seq` (heartbeat pong).
    Delivered {
        /// Highest `seq` written to the socket.
        written: u64,
        /// Delivered up to here.
        seq: u64,
    },
    /// The socket ended.
    Closed {
        /// Highest `seq` written to the socket.
        written: u64,
        /// How.
        end: SocketEnd,
    },
    /// The session was found revoked after the socket was admitted.
    Revoke,
}

/// A client message crossing a bridge (the typed form of `ws::protocol::ClientMessage`; a
/// `hello` after the handshake crosses without its token: it is only ever refused).
#[derive(Debug, Serialize, Deserialize)]
pub enum WireClient {
    /// `hello` (refused: already authenticated).
    Hello,
    /// `call.invite`.
    Invite(String),
    /// `call.accept`.
    Accept(CallId),
    /// `call.reject`.
    Reject(CallId, Option<EndCause>),
    /// `call.hangup`.
    Hangup(CallId, Option<EndCause>),
    /// `ack`.
    Ack(u64),
    /// `sdp`, the description as sent.
    Sdp(CallId, Box<RawValue>),
    /// `ice`, the candidate as sent.
    Ice(CallId, Box<RawValue>),
    /// `ping`.
    Ping,
}

impl From<ClientMessage> for WireClient {
    fn from(m: ClientMessage) -> Self {
        match m {
            ClientMessage::Hello { .. } => Self::Hello,
            ClientMessage::Invite { to } => Self::Invite(to),
            ClientMessage::Accept { call_id } => Self::Accept(call_id),
            ClientMessage::Reject { call_id, cause } => Self::Reject(call_id, cause),
            ClientMessage::Hangup { call_id, cause } => Self::Hangup(call_id, cause),
            ClientMessage::Ack { seq } => Self::Ack(seq),
            ClientMessage::Sdp {
                call_id,
                description,
            } => Self::Sdp(call_id, description),
            ClientMessage::Ice { call_id, candidate } => Self::Ice(call_id, candidate),
            ClientMessage::Ping => Self::Ping,
        }
    }
}

impl From<WireClient> for ClientMessage {
    fn from(m: WireClient) -> Self {
        match m {
            WireClient::Hello => Self::Hello {
                token: String::new(),
                resume_token: None,
                last_seq: None,
            },
            WireClient::Invite(to) => Self::Invite { to },
            WireClient::Accept(call_id) => Self::Accept { call_id },
            WireClient::Reject(call_id, cause) => Self::Reject { call_id, cause },
            WireClient::Hangup(call_id, cause) => Self::Hangup { call_id, cause },
            WireClient::Ack(seq) => Self::Ack { seq },
            WireClient::Sdp(call_id, description) => Self::Sdp {
                call_id,
                description,
            },
            WireClient::Ice(call_id, candidate) => Self::Ice { call_id, candidate },
            WireClient::Ping => Self::Ping,
        }
    }
}

/// Published to every node (`callsignal.all`).
#[derive(Debug, Serialize, Deserialize)]
pub enum Broadcast {
    /// A node is alive (every second); `boot` tells this run of it from an earlier one.
    Heartbeat {
        /// Random per process start.
        boot: String,
    },
    /// Close every socket of this session (`session_revoked`).
    Revoke(SessionId),
    /// A connection of the sending node ended: drop its stand-ins.
    ConnGone(ConnectionId),
    /// The sending node is stopping: its calls are over.
    Leaving,
}

/// A broadcast with its sender.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// Sending node.
    pub from: String,
    /// What it says.
    pub body: Broadcast,
}

/// Requests a node answers (`callsignal.rpc.<id>`).
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// The user's connections on the node (for ringing).
    ListConns(UserId),
    /// Whether the node still has this call.
    CallLive(CallId),
    /// Attach a socket of the asking node to a connection here, by resume token or (no token,
    /// or none matching) by session takeover; the frames then cross bridge `bridge`.
    Resume(ResumeRequest),
    /// The user reached the per-user connection cap on the asking node: release the user's
    /// connection waiting in its grace here, if any (the oldest, not a call party first).
    ReleaseDetached(UserId),
}

/// A socket of node `node` asking to resume (or take over) a connection of the receiving node.
#[derive(Debug, Serialize, Deserialize)]
pub struct ResumeRequest {
    /// The user the asking node authenticated.
    pub user: UserId,
    /// Their login session.
    pub session: SessionId,
    /// The `hello`'s resume token (a secret: never logged).
    pub resume_token: Option<String>,
    /// The `hello`'s `last_seq`.
    pub last_seq: Option<u64>,
    /// The asking node.
    pub node: String,
    /// The bridge id the asking node chose.
    pub bridge: u64,
    /// Without a token match, take over only a connection that is a party of the user's
    /// call (the asking node has an idle one of the session to take over itself).
    #[serde(default)]
    pub party_only: bool,
}

/// Answers to [`Request`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// Connections.
    Conns(Vec<WireConn>),
    /// Whether the call is live.
    Live(bool),
    /// The socket now belongs to this connection (`None`: no connection here matched).
    Resumed(Option<ConnectionId>),
    /// Whether a connection waiting in its grace was released.
    Released(bool),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_sdp_crosses_nodes_byte_for_byte() {
        let text = r#"{"sdp":"v=0\r\n a=x  ","type":"offer"}"#;
        let msg = NodeMsg::ToConn {
            conn: ConnectionId::new(),
            op: ConnOp::Relayed(WireServerMsg::Sdp {
                call_id: CallId::new(),
                description: RawValue::from_string(text.into()).expect("raw"),
                from: WireUser {
                    id: UserId::new(),
                    username: "bob".into(),
                },
            }),
        };
        let json = serde_json::to_string(&msg).expect("encode");
        let back: NodeMsg = serde_json::from_str(&json).expect("decode");
        let NodeMsg::ToConn {
            op: ConnOp::Relayed(w),
            ..
        } = back
        else {
            panic!("shape")
        };
        let out = w.into_msg().to_json();
        assert!(out.contains(&format!(r#""description":{text}"#)), "{out}");
    }
}
