//! The signaling protocol over WebSocket (contract §2): the wire types ([`protocol`]), parsed
//! once at the socket edge, and the per-socket task ([`socket`]) that owns the stream, runs the
//! `hello` handshake, heartbeats and rate limits, and hands typed messages to the connection
//! actor.

pub mod fastpath;
pub mod protocol;
pub mod socket;

pub mod heartbeat;
pub mod limit;
pub mod outbox;

/// Close codes are part of the wire contract; they live beside the wire types.
pub use protocol::close;
