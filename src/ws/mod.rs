//! The signaling protocol over WebSocket (contract §2): the wire types ([`protocol`]), parsed
//! once at the socket edge, and the per-socket task ([`socket`]) that owns the stream, runs the
//! `hello` handshake, heartbeats and rate limits, and hands typed messages to the connection
//! actor.

pub mod protocol;
pub mod socket;

/// WebSocket close codes used by the server.
pub mod close {
    /// Server going away (shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// Policy violation (persistent rate-limit abuse, client not reading).
    pub const POLICY: u16 = 1008;
    /// Frame or message over `ws.max_message_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// Internal error (the connection's actor failed).
    pub const INTERNAL: u16 = 1011;
    /// Try again later (connection caps).
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Authentication failed or the session ended.
    pub const UNAUTHORIZED: u16 = 4401;
}
