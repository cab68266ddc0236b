//! Wire types of the signaling protocol. Client frames are parsed here, once, into
//! [`ClientMessage`]; everything past this module sees typed values. `sdp.description` and
//! `ice.candidate` are kept as raw JSON so they are relayed byte for byte.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::domain::{CallId, ConnectionId, SessionId, UserRef};
use crate::ice::IceServer;

/// WebSocket close codes (RFC 6455 §7.4; 4000–4999 are application codes, contract §2).
pub mod close {
    /// The client left deliberately (client-sent): its call ends at once.
    pub const NORMAL: u16 = 1000;
    /// Going away: server shutdown (server-sent), page reload or tab close (client-sent; the
    /// connection stays resumable for `ws.going_away_grace_secs`).
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error: a frame breaking RFC 6455 (unmasked, reserved bits or opcode, a bad
    /// control frame, a stray continuation).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message that is not valid UTF-8 (RFC 6455 §8.1).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation (persistent rate-limit abuse, client not reading).
    pub const POLICY: u16 = 1008;
    /// Frame or message over `ws.max_message_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// Internal error (the connection's actor failed).
    pub const INTERNAL: u16 = 1011;
    /// Try again later (connection caps).
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Superseded: the connection was resumed on a newer socket (extension).
    pub const SUPERSEDED: u16 = 4001;
    /// Authentication failed or the session ended.
    pub const UNAUTHORIZED: u16 = 4401;
}

/// A typed client message.
#[derive(Debug, Clone)]
pub enum ClientMessage {
    /// Authenticate (or resume) the socket.
    Hello {
        /// Access token.
        token: String,
        /// Resume token from a previous `welcome`.
        resume_token: Option<String>,
        /// The `seq` of the last server message the client processed (extension): a resume
        /// replays exactly what came after it.
        last_seq: Option<u64>,
    },
    /// Start a call to `to` (a username, not yet validated).
    Invite {
        /// Callee's username as sent.
        to: String,
    },
    /// Answer a ringing call.
    Accept {
        /// The call.
        call_id: CallId,
    },
    /// Decline a ringing call.
    Reject {
        /// The call.
        call_id: CallId,
        /// Why the callee declined, relayed in `call.ended` (extension).
        cause: Option<EndCause>,
    },
    /// End (or cancel) a call.
    Hangup {
        /// The call.
        call_id: CallId,
        /// Why, relayed in `call.ended` (extension).
        cause: Option<EndCause>,
    },
    /// Every server message up to `seq` was processed; the server may forget them (extension).
    Ack {
        /// The last processed `seq`.
        seq: u64,
    },
    /// Session description to relay.
    Sdp {
        /// The call.
        call_id: CallId,
        /// `{type, sdp}` exactly as sent.
        description: Box<RawValue>,
    },
    /// ICE candidate (or null) to relay.
    Ice {
        /// The call.
        call_id: CallId,
        /// `RTCIceCandidateInit` or `null`, exactly as sent.
        candidate: Box<RawValue>,
    },
    /// Keep-alive.
    Ping,
}

/// A client message with the `ref` to echo.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The message.
    pub message: ClientMessage,
    /// The client's `ref`, copied into the direct reply or error.
    pub reference: Option<String>,
    /// When the frame was parsed (for the relay-latency histogram).
    pub received: std::time::Instant,
    /// A piggybacked acknowledgement (**extension**, docs/protocol.md "Sequence numbers"): any
    /// client message may carry `"ack": n`, meaning what the `ack` message with `seq: n` means
    /// — every message up to `n` was processed — without a frame of its own.
    pub ack: Option<u64>,
}

/// Every field any client message may carry; unknown fields are ignored.
#[derive(Deserialize)]
#[serde(expecting = "a message object")]
struct Frame<'a> {
    /// Borrowed from the frame's text unless it has escapes.
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(rename = "ref")]
    reference: Option<String>,
    token: Option<String>,
    resume_token: Option<String>,
    to: Option<String>,
    call_id: Option<CallId>,
    last_seq: Option<u64>,
    seq: Option<u64>,
    ack: Option<u64>,
    cause: Option<EndCause>,
    #[serde(default, deserialize_with = "present")]
    description: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "present")]
    candidate: Option<Box<RawValue>>,
}

/// A field that is present (even as `null`) is `Some`; only a missing field is `None`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct RefOnly {
    #[serde(rename = "ref")]
    reference: Option<serde_json::Value>,
}

/// Longest `ref` a client may attach (it is echoed back).
pub const MAX_REF_CHARS: usize = 128;

/// Deepest JSON nesting a message may have (contract §2.2 as documented in docs/protocol.md).
/// serde_json refuses deeper nesting in the fields it reads, but skipped over unknown fields
/// (and `description`/`candidate` on a message that ignores them) at any depth.
pub const MAX_DEPTH: usize = 128;

/// Whether `text` nests arrays and objects deeper than [`MAX_DEPTH`] anywhere. First a count of
/// opening brackets, stopped at the limit (memchr's SIMD search: a signaling message has a
/// handful, and fewer than the limit cannot nest deeper), then, only past it, a scan that
/// tracks strings.
fn too_deep(text: &[u8]) -> bool {
    if memchr::memchr2_iter(b'[', b'{', text)
        .nth(MAX_DEPTH)
        .is_none()
    {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &c in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
            }
            continue;
        }
        match c {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Most keys beyond the WebRTC ones that a `description` or `candidate` may carry; each must be
/// a scalar (string, number, boolean or null), so nothing nested is ever relayed.
const MAX_EXTRA_KEYS: usize = 4;

/// What a JSON value is, learned while skipping it (nothing is kept or allocated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `"offer"` or `"answer"`.
    OfferOrAnswer,
    /// Any other string.
    Str,
    Null,
    Bool,
    /// A non-negative integer.
    Uint(u64),
    /// Any other number.
    Number,
    /// An array or an object.
    Nested,
}

impl Shape {
    fn is_string(self) -> bool {
        matches!(self, Shape::Str | Shape::OfferOrAnswer)
    }
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Shape;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_str<E>(self, v: &str) -> Result<Shape, E> {
                Ok(if v == "offer" || v == "answer" {
                    Shape::OfferOrAnswer
                } else {
                    Shape::Str
                })
            }
            fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
                Ok(Shape::Bool)
            }
            fn visit_u64<E>(self, n: u64) -> Result<Shape, E> {
                Ok(Shape::Uint(n))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
                Ok(Shape::Number)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
                Ok(Shape::Number)
            }
            fn visit_unit<E>(self) -> Result<Shape, E> {
                Ok(Shape::Null)
            }
            fn visit_none<E>(self) -> Result<Shape, E> {
                Ok(Shape::Null)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Shape, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Shape::Nested)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Shape, A::Error> {
                while a
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Shape::Nested)
            }
        }
        d.deserialize_any(V)
    }
}

/// The keys of `RTCSessionDescriptionInit` and `RTCIceCandidateInit`; any other is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Type,
    Sdp,
    Candidate,
    SdpMid,
    SdpMLineIndex,
    UsernameFragment,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "type" => Key::Type,
                    "sdp" => Key::Sdp,
                    "candidate" => Key::Candidate,
                    "sdpMid" => Key::SdpMid,
                    "sdpMLineIndex" => Key::SdpMLineIndex,
                    "usernameFragment" => Key::UsernameFragment,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// Reads `raw` as a JSON object, handing each key and the shape of its value to `field`, which
/// says whether it is acceptable. False if `raw` is not an object or `field` refused one.
/// Nothing is allocated; serde_json's recursion limit (128) refuses deep nesting.
fn scan_object(raw: &RawValue, field: impl FnMut(Key, Shape) -> bool) -> bool {
    struct Scan<F>(F);
    impl<'de, F: FnMut(Key, Shape) -> bool> serde::de::Visitor<'de> for Scan<F> {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut a: A) -> Result<bool, A::Error> {
            let mut ok = true;
            while let Some((k, v)) = a.next_entry::<Key, Shape>()? {
                ok = ok && (self.0)(k, v);
            }
            Ok(ok)
        }
    }
    use serde::Deserializer as _;
    let mut de = serde_json::Deserializer::from_str(raw.get());
    de.deserialize_map(Scan(field)).unwrap_or(false) && de.end().is_ok()
}

/// Counts keys beyond the WebRTC ones: they must be few and scalar.
struct Extras(usize);

impl Extras {
    fn take(&mut self, v: Shape) -> bool {
        self.0 += 1;
        self.0 <= MAX_EXTRA_KEYS && v != Shape::Nested
    }
}

/// `RTCSessionDescriptionInit` as signaled (contract §2.2, W3C WebRTC §4.8.1): `type` is
/// `offer` or `answer`, `sdp` a string; each key once.
fn valid_description(raw: &RawValue) -> bool {
    let (mut kind, mut sdp, mut extras) = (0, 0, Extras(0));
    scan_object(raw, |k, v| match k {
        Key::Type => {
            kind += 1;
            v == Shape::OfferOrAnswer
        }
        Key::Sdp => {
            sdp += 1;
            v.is_string()
        }
        _ => extras.take(v),
    }) && kind == 1
        && sdp == 1
}

/// `RTCIceCandidateInit` (W3C WebRTC §4.8.2): `candidate` a string; `sdpMid` a string or null;
/// `sdpMLineIndex` an unsigned short or null; `usernameFragment` a string or null; each key
/// once.
fn valid_candidate(raw: &RawValue) -> bool {
    if raw.get() == "null" {
        return true;
    }
    let (mut seen, mut extras) = ([0u8; 4], Extras(0));
    scan_object(raw, |k, v| {
        let (i, ok) = match k {
            Key::Candidate => (0, v.is_string()),
            Key::SdpMid => (1, v.is_string() || v == Shape::Null),
            Key::UsernameFragment => (2, v.is_string() || v == Shape::Null),
            Key::SdpMLineIndex => (
                3,
                matches!(v, Shape::Null) || matches!(v, Shape::Uint(n) if n <= u64::from(u16::MAX)),
            ),
            Key::Type | Key::Sdp | Key::Other => return extras.take(v),
        };
        seen[i] += 1;
        ok && seen[i] == 1
    }) && seen[0] == 1
}

/// A frame that is not a valid client message: answer `bad_message`, keep the socket.
#[derive(Debug)]
pub struct BadMessage {
    /// Human-readable reason.
    pub message: String,
    /// The `ref`, if it could be read.
    pub reference: Option<String>,
}

fn need<T>(field: Option<T>, name: &str, kind: &str) -> Result<T, String> {
    field.ok_or_else(|| format!("`{kind}` requires the field `{name}`"))
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<Inbound, BadMessage> {
    // Only an object is a message (contract §2): serde would also read a struct from a JSON
    // array of its fields in order, and its errors for one named the internal type.
    if text.starts_with('\u{feff}') {
        return Err(BadMessage {
            message: format!("not a valid message: {}", crate::http::request::BOM_FOUND),
            reference: None,
        });
    }
    if !text.trim_start().starts_with('{') {
        return Err(BadMessage {
            message: "not a valid message: a message is a JSON object".into(),
            reference: None,
        });
    }
    if too_deep(text.as_bytes()) {
        return Err(BadMessage {
            message: format!("not a valid message: JSON nested deeper than {MAX_DEPTH} levels"),
            reference: None,
        });
    }
    let frame: Frame = serde_json::from_str(text).map_err(|e| BadMessage {
        message: format!(
            "not a valid message: {}",
            crate::json::explain::<Frame>(text).unwrap_or_else(|| e.to_string())
        ),
        reference: serde_json::from_str::<RefOnly>(text)
            .ok()
            .and_then(|r| r.reference)
            .and_then(|v| v.as_str().map(str::to_owned)),
    })?;
    let reference = frame.reference.clone();
    let ack = frame.ack;
    if reference
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REF_CHARS)
    {
        return Err(BadMessage {
            message: format!("`ref` is longer than {MAX_REF_CHARS} characters"),
            reference: None,
        });
    }
    typed(frame)
        .map(|message| Inbound {
            received: std::time::Instant::now(),
            message,
            reference: reference.clone(),
            ack,
        })
        .map_err(|message| BadMessage { message, reference })
}

fn typed(f: Frame<'_>) -> Result<ClientMessage, String> {
    let k: &str = &f.kind;
    Ok(match k {
        "hello" => ClientMessage::Hello {
            token: need(f.token, "token", k)?,
            resume_token: f.resume_token,
            last_seq: f.last_seq,
        },
        "call.invite" => ClientMessage::Invite {
            to: need(f.to, "to", k)?,
        },
        "call.accept" => ClientMessage::Accept {
            call_id: need(f.call_id, "call_id", k)?,
        },
        "call.reject" => ClientMessage::Reject {
            call_id: need(f.call_id, "call_id", k)?,
            cause: f.cause,
        },
        "call.hangup" => ClientMessage::Hangup {
            call_id: need(f.call_id, "call_id", k)?,
            cause: f.cause,
        },
        "ack" => ClientMessage::Ack {
            seq: need(f.seq, "seq", k)?,
        },
        "sdp" => {
            let description = need(f.description, "description", k)?;
            if !valid_description(&description) {
                return Err("`description` must be an RTCSessionDescriptionInit: {type: \"offer\"|\"answer\", sdp: string}, at most 4 extra scalar keys".into());
            }
            ClientMessage::Sdp {
                call_id: need(f.call_id, "call_id", k)?,
                description,
            }
        }
        "ice" => {
            let candidate = need(f.candidate, "candidate", k)?;
            if !valid_candidate(&candidate) {
                return Err("`candidate` must be an RTCIceCandidateInit ({candidate: string, sdpMid?, sdpMLineIndex?, usernameFragment?}, at most 4 extra scalar keys) or null".into());
            }
            ClientMessage::Ice {
                call_id: need(f.call_id, "call_id", k)?,
                candidate,
            }
        }
        "ping" => ClientMessage::Ping,
        other => {
            // Named back to help a client developer, but never more than a short prefix: the
            // frame may be up to the message limit, and whatever it holds (a token pasted into
            // the wrong field) must not come back in full.
            let shown: String = other.chars().take(64).collect();
            let more = if shown.len() < other.len() { "…" } else { "" };
            return Err(format!("unknown message type {shown:?}{more}"));
        }
    })
}

/// Why a call ended (contract §2.2), plus `server_error` for a call whose actor failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// A party hung up an answered call.
    Hangup,
    /// The caller hung up before an answer.
    Cancelled,
    /// The callee declined.
    Rejected,
    /// Ring timeout.
    Missed,
    /// Callee already in a call.
    Busy,
    /// Callee has no connected device.
    Unavailable,
    /// Another device of the callee answered.
    AnsweredElsewhere,
    /// A party did not come back within the grace period.
    ConnectionLost,
    /// Crossing invites.
    Glare,
    /// The server is shutting down.
    ServerShutdown,
    /// Found unfinished after a crash.
    ServerRestart,
    /// The call's actor failed; the call was ended cleanly (extension).
    ServerError,
    /// A party closed its connection deliberately (WebSocket close 1000, or its session was
    /// revoked) without hanging up; for a ringing call, the callee's last device did (extension).
    Left,
}

/// Why a party rejected or hung up, as it told the server (extension); relayed in
/// `call.ended.cause` so the other side can say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndCause {
    /// The browser refused microphone access (`NotAllowedError`).
    MicrophoneDenied,
    /// No usable microphone (missing, busy, or any other `getUserMedia` failure).
    MicrophoneUnavailable,
}

/// The state of a user's current call, as `welcome.call` reports it (extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallPhase {
    /// Not answered yet.
    Ringing,
    /// Answered.
    Active,
}

/// Which side of a call a user is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallRole {
    /// The inviting user.
    Caller,
    /// The invited user.
    Callee,
}

/// `welcome.call` (extension): the connection's user's current call, so a new or reloaded page
/// can show it and end it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallSummary {
    /// The call.
    pub call_id: CallId,
    /// `ringing` or `active`.
    pub state: CallPhase,
    /// The user's side.
    pub role: CallRole,
    /// The other user.
    pub peer: UserRef,
    /// Whether this connection is the call's party connection (the caller's inviting
    /// connection, the answering callee connection, or for a ringing call any callee device).
    pub here: bool,
}

impl EndReason {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hangup => "hangup",
            Self::Cancelled => "cancelled",
            Self::Rejected => "rejected",
            Self::Missed => "missed",
            Self::Busy => "busy",
            Self::Unavailable => "unavailable",
            Self::AnsweredElsewhere => "answered_elsewhere",
            Self::ConnectionLost => "connection_lost",
            Self::Glare => "glare",
            Self::ServerShutdown => "server_shutdown",
            Self::ServerRestart => "server_restart",
            Self::ServerError => "server_error",
            Self::Left => "left",
        }
    }
}

/// Error codes sent in `error` messages; each has one meaning forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Unparseable or ill-formed message.
    BadMessage,
    /// No `hello` in time.
    HelloTimeout,
    /// A message before `welcome`.
    HelloRequired,
    /// Malformed, forged or wrongly signed token.
    InvalidToken,
    /// Token past `exp`.
    TokenExpired,
    /// Session revoked or expired.
    SessionRevoked,
    /// Inviter already in a call.
    BusySelf,
    /// No such username.
    UserNotFound,
    /// Sender is not a party of the call.
    NotParticipant,
    /// `sdp`/`ice` before the call was accepted.
    CallNotActive,
    /// Accept/reject of a call that no longer rings.
    CallNotRinging,
    /// Unknown or ended call.
    UnknownCall,
    /// Message or invite rate exceeded.
    RateLimited,
    /// Call records cannot be written right now; new invites refused (extension).
    PersistenceUnavailable,
    /// Connection caps reached (extension).
    TooManyConnections,
    /// A server fault (extension).
    InternalError,
    /// A resume could not replay everything the client missed: the oldest of those messages
    /// are no longer held (extension). The client must resynchronise.
    ResumeGap,
}

/// A server → client message.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type")]
pub enum ServerMessage {
    /// Handshake done (boxed: by far the largest message, and one per socket; every other
    /// variant, and every actor message carrying one, stays small).
    #[serde(rename = "welcome")]
    Welcome(Box<Welcome>),
    /// The invite was accepted by the server.
    #[serde(rename = "call.created")]
    CallCreated {
        /// The new call.
        call_id: CallId,
        /// Callee.
        to: UserRef,
        /// The invite's `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// At least one callee device was told.
    #[serde(rename = "call.ringing")]
    CallRinging {
        /// The call.
        call_id: CallId,
    },
    /// Someone is calling you.
    #[serde(rename = "call.incoming")]
    CallIncoming {
        /// The call.
        call_id: CallId,
        /// Caller.
        from: UserRef,
    },
    /// The call was answered.
    #[serde(rename = "call.accepted")]
    CallAccepted {
        /// The call.
        call_id: CallId,
        /// The accept's `ref` (to the accepting connection).
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// The call is over.
    #[serde(rename = "call.ended")]
    CallEnded {
        /// The call.
        call_id: CallId,
        /// Why.
        reason: EndReason,
        /// The cause the ending party gave, if any (extension).
        #[serde(skip_serializing_if = "Option::is_none")]
        cause: Option<EndCause>,
        /// The `ref` of the hangup/reject this acknowledges (to its sender only).
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// Relayed session description.
    #[serde(rename = "sdp")]
    Sdp {
        /// The call.
        call_id: CallId,
        /// As sent by the peer.
        description: Box<RawValue>,
        /// The authenticated sender.
        from: UserRef,
    },
    /// Relayed ICE candidate.
    #[serde(rename = "ice")]
    Ice {
        /// The call.
        call_id: CallId,
        /// As sent by the peer.
        candidate: Box<RawValue>,
        /// The authenticated sender.
        from: UserRef,
    },
    /// The peer's socket dropped; it may come back.
    #[serde(rename = "peer.reconnecting")]
    PeerReconnecting {
        /// The call.
        call_id: CallId,
    },
    /// The peer is back.
    #[serde(rename = "peer.reconnected")]
    PeerReconnected {
        /// The call.
        call_id: CallId,
    },
    /// Answer to `ping`.
    #[serde(rename = "pong")]
    Pong {
        /// The ping's `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// Something the sender did was refused.
    #[serde(rename = "error")]
    Error {
        /// Stable code.
        code: ErrorCode,
        /// Human text.
        message: String,
        /// The offending message's `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        /// The call concerned.
        #[serde(skip_serializing_if = "Option::is_none")]
        call_id: Option<CallId>,
    },
}

/// The body of `welcome` (contract §2; `call` is an extension, docs/protocol.md).
#[derive(Debug, Clone, Serialize)]
pub struct Welcome {
    /// Login session of the token.
    pub session_id: SessionId,
    /// This connection.
    pub connection_id: ConnectionId,
    /// Who you are.
    pub user: UserRef,
    /// Present it in a later `hello` to resume this connection.
    pub resume_token: String,
    /// Server ping interval.
    pub heartbeat_ms: u64,
    /// ICE servers for `RTCPeerConnection`.
    pub ice_servers: Vec<IceServer>,
    /// Whether this resumed a previous connection.
    pub resumed: bool,
    /// The user's current call, if any (extension).
    pub call: Option<CallSummary>,
}

impl ServerMessage {
    /// An `error` message.
    pub fn error(
        code: ErrorCode,
        message: impl Into<String>,
        reference: Option<String>,
        call_id: Option<CallId>,
    ) -> Self {
        Self::Error {
            code,
            message: message.into(),
            reference,
            call_id,
        }
    }

    /// JSON text of the message.
    pub fn to_json(&self) -> String {
        // Serialising these plain types cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// JSON text of the message with `"seq": seq` as its first field (extension: every message
    /// of a connection after `welcome` carries its sequence number).
    pub fn to_json_with_seq(&self, seq: u64) -> String {
        let body = self.to_json();
        // Every message is a JSON object with at least `type`: splice the field in after `{`.
        let rest = body.strip_prefix('{').unwrap_or(&body);
        let mut out = String::with_capacity(body.len() + 28);
        out.push_str("{\"seq\":");
        out.push_str(&seq.to_string());
        out.push(',');
        out.push_str(rest);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdp_description_is_kept_byte_for_byte() {
        let text = r#"{"type":"sdp","call_id":"6f1c7c3e-8f57-4b2a-9f4e-0a0b0c0d0e0f","description":{"sdp":"v=0\r\n a=x  ","type":"offer"}}"#;
        let inbound = parse(text).expect("valid");
        let ClientMessage::Sdp {
            description,
            call_id,
        } = inbound.message
        else {
            panic!("sdp")
        };
        assert_eq!(
            description.get(),
            r#"{"sdp":"v=0\r\n a=x  ","type":"offer"}"#
        );
        let out = ServerMessage::Sdp {
            call_id,
            description,
            from: UserRef {
                id: crate::domain::UserId::new(),
                username: crate::domain::Username::from_trusted("bob".into()),
            },
        }
        .to_json();
        assert!(
            out.contains(r#""description":{"sdp":"v=0\r\n a=x  ","type":"offer"}"#),
            "{out}"
        );
    }

    #[test]
    fn bad_frames_are_reported_with_their_ref() {
        let e = parse(r#"{"type":"call.accept","ref":"r1"}"#).expect_err("missing call_id");
        assert_eq!(e.reference.as_deref(), Some("r1"));
        assert!(e.message.contains("call_id"));
        let e = parse(r#"{"type":"nope","ref":"r2"}"#).expect_err("unknown type");
        assert_eq!(e.reference.as_deref(), Some("r2"));
        let e = parse(r#"{"type":"call.accept","call_id":5,"ref":"r3"}"#).expect_err("ill-typed");
        assert_eq!(e.reference.as_deref(), Some("r3"));
        assert!(parse("not json").is_err());
        assert!(parse(r#"{"type":"sdp","call_id":"6f1c7c3e-8f57-4b2a-9f4e-0a0b0c0d0e0f","description":{"type":"bogus","sdp":""}}"#).is_err());
    }

    /// `[]` got "expected struct Frame with 11 elements" (an internal name), and an array of
    /// the fields in order was read as a message.
    #[test]
    fn only_an_object_is_a_message_and_errors_name_no_internal_type() {
        let positional = r#"["ping",null,null,null,null,null,null,null,null,null,null]"#;
        for text in ["[]", positional, "\"ping\"", "7", "null", " [1]"] {
            let e = parse(text).expect_err(text);
            assert_eq!(
                e.message, "not a valid message: a message is a JSON object",
                "{text}"
            );
        }
        for text in [r#"{"type":1}"#, r#"{"type":"ping","ref":{}}"#, "{"] {
            let e = parse(text).expect_err(text);
            assert!(!e.message.contains("Frame"), "{text}: {}", e.message);
        }
    }

    /// serde's texts named Rust types and no field (`invalid type: string "x", expected u64`).
    #[test]
    fn an_ill_typed_field_is_named_in_json_terms() {
        let id = "6f1c7c3e-8f57-4b2a-9f4e-0a0b0c0d0e0f";
        for (text, field, expect) in [
            (
                r#"{"type":"ack","seq":"x"}"#.to_owned(),
                "`seq`",
                "expected a non-negative integer",
            ),
            (
                r#"{"type":"ack","seq":-3}"#.to_owned(),
                "`seq`",
                "expected a non-negative integer",
            ),
            (
                r#"{"type":"ping","ack":1.5}"#.to_owned(),
                "`ack`",
                "expected a non-negative integer",
            ),
            (
                r#"{"type":"call.invite","to":7}"#.to_owned(),
                "`to`",
                "expected a string",
            ),
            (r#"{"type":7}"#.to_owned(), "`type`", "expected a string"),
            // With a raw description present, the path still names the field at fault.
            (
                format!(
                    r#"{{"type":"sdp","call_id":"{id}","description":{{"type":"offer","sdp":"v=0"}},"ack":"n"}}"#
                ),
                "`ack`",
                "expected a non-negative integer",
            ),
            (
                r#"{"type":"sdp","description":{"type":"offer","sdp":"v=0"},"call_id":5}"#
                    .to_owned(),
                "`call_id`",
                "",
            ),
        ] {
            let e = parse(&text).expect_err(&text);
            assert!(
                e.message
                    .starts_with(&format!("not a valid message: {field}: "))
                    && e.message.contains(expect),
                "{text}: {}",
                e.message
            );
            for rust in ["u64", "u16", "Frame", "struct", "borrowed"] {
                assert!(!e.message.contains(rust), "{text}: {}", e.message);
            }
        }
    }

    /// An unknown `type` was quoted back whole (a tester's 60 KB type came back in the
    /// error, and a token pasted into `type` came back too); a value in a wrong field likewise.
    #[test]
    fn errors_quote_no_value_and_at_most_a_short_type() {
        let long = "A".repeat(60_000);
        let e = parse(&format!(r#"{{"type":"{long}"}}"#)).expect_err("unknown type");
        assert!(e.message.len() < 200, "{} bytes", e.message.len());
        let e = parse(r#"{"type":"call.invit"}"#).expect_err("unknown type");
        assert_eq!(e.message, r#"unknown message type "call.invit""#);
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
        for text in [
            format!(r#"{{"type":"ping","ack":"{token}"}}"#),
            format!(r#"{{"type":"ack","seq":"{token}"}}"#),
            format!(
                r#"{{"type":"call.hangup","call_id":"6f1c7c3e-8f57-4b2a-9f4e-0a0b0c0d0e0f","cause":"{token}"}}"#
            ),
        ] {
            let e = parse(&text).expect_err(&text);
            assert!(!e.message.contains("eyJ"), "{text}: {}", e.message);
        }
    }

    /// Nesting in a field the message ignores was not limited (a tester sent 20,000 levels in
    /// an unknown field of a `ping` and got `pong`).
    #[test]
    fn nesting_deeper_than_the_limit_is_refused_in_any_field() {
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        for (field, n) in [
            ("x", 129),
            ("x", 20_000),
            ("description", 129),
            ("candidate", 5_000),
        ] {
            let text = format!(r#"{{"type":"ping","{field}":{}}}"#, nest(n));
            let e = parse(&text).expect_err(field);
            assert!(
                e.message.contains("nested deeper than 128"),
                "{field} {n}: {}",
                e.message
            );
        }
        // 127 levels inside the message object: 128 in all, accepted.
        let text = format!(r#"{{"type":"ping","x":{}}}"#, nest(127));
        assert!(parse(&text).is_ok());
        // Brackets inside strings are text, not nesting.
        let text = format!(r#"{{"type":"ping","x":"{}"}}"#, "[".repeat(500));
        assert!(parse(&text).is_ok());
    }

    /// A frame beginning with a UTF-8 BOM is told so, not "a message is a JSON object".
    #[test]
    fn a_byte_order_mark_is_named() {
        let e = parse("\u{feff}{\"type\":\"ping\"}").expect_err("a BOM is refused");
        assert_eq!(
            e.message,
            "not a valid message: it begins with a byte order mark (U+FEFF), which JSON text \
             must not (RFC 8259 §8.1)"
        );
    }

    #[test]
    fn mangled_frames_never_panic() {
        let frames = [
            r#"{"type":"hello","token":"abc","resume_token":"r","ref":"1"}"#,
            r#"{"type":"call.invite","to":"bob","ref":"x"}"#,
            r#"{"type":"sdp","call_id":"6f1c7c3e-8f57-4b2a-9f4e-0a0b0c0d0e0f","description":{"type":"offer","sdp":"v=0\r\n"}}"#,
            r#"{"type":"ice","call_id":"6f1c7c3e-8f57-4b2a-9f4e-0a0b0c0d0e0f","candidate":{"candidate":"c","sdpMid":"0","sdpMLineIndex":0}}"#,
        ];
        let mut parsed = 0;
        for frame in frames {
            let bytes = frame.as_bytes();
            for cut in 0..=bytes.len() {
                let text = String::from_utf8_lossy(&bytes[..cut]);
                parsed += usize::from(parse(&text).is_ok());
            }
            for i in 0..bytes.len() {
                for b in [b'"', b'{', b'}', b'\\', b'0', 0xff, b' '] {
                    let mut m = bytes.to_vec();
                    m[i] = b;
                    let _ = parse(&String::from_utf8_lossy(&m));
                }
            }
        }
        assert_eq!(parsed, 4, "only the complete frames parse");
    }

    #[test]
    fn descriptions_and_candidates_are_checked_for_shape() {
        let raw = |t: &str| RawValue::from_string(t.to_owned()).expect("json");
        let good_desc = [
            r#"{"type":"offer","sdp":"v=0"}"#,
            r#"{ "sdp" : "v=0\r\n", "type" : "answer", "x": 1, "y": null, "z": true, "w": "s" }"#,
            r#"{"type":"an\u0073wer","sdp":""}"#,
        ];
        for d in good_desc {
            assert!(valid_description(&raw(d)), "{d}");
        }
        let bad_desc = [
            r#"{"type":"pranswer","sdp":"v=0"}"#,
            r#"{"type":"offer"}"#,
            r#"{"type":"offer","sdp":5}"#,
            r#"{"type":"offer","sdp":"v=0","x":{"nested":1}}"#,
            r#"{"type":"offer","sdp":"v=0","x":[1]}"#,
            r#"{"type":"offer","sdp":"v=0","a":1,"b":1,"c":1,"d":1,"e":1}"#,
            r#"{"type":"offer","sdp":"v=0","sdp":"v=1"}"#,
            r#"{"type":"offer","type":"answer","sdp":"v=0"}"#,
            r#"["offer","v=0"]"#,
            r#""offer""#,
            "null",
        ];
        for d in bad_desc {
            assert!(!valid_description(&raw(d)), "{d}");
        }
        let good_cand = [
            "null",
            r#"{"candidate":"candidate:1 1 udp 1 10.0.0.1 9 typ host"}"#,
            r#"{"candidate":"","sdpMid":null,"sdpMLineIndex":null,"usernameFragment":null}"#,
            r#"{"candidate":"c","sdpMid":"0","sdpMLineIndex":65535,"usernameFragment":"u","type":"x"}"#,
        ];
        for c in good_cand {
            assert!(valid_candidate(&raw(c)), "{c}");
        }
        let bad_cand = [
            r#"{"sdpMid":"0"}"#,
            r#"{"candidate":null}"#,
            r#"{"candidate":"c","sdpMLineIndex":65536}"#,
            r#"{"candidate":"c","sdpMLineIndex":-1}"#,
            r#"{"candidate":"c","sdpMLineIndex":1.5}"#,
            r#"{"candidate":"c","sdpMLineIndex":"0"}"#,
            r#"{"candidate":"c","sdpMid":0}"#,
            r#"{"candidate":"c","usernameFragment":{}}"#,
            r#"{"candidate":"c","candidate":"d"}"#,
            r#"{"candidate":"c","a":1,"b":1,"c":1,"d":1,"e":1}"#,
            r#"{"candidate":"c","a":[[[[1]]]]}"#,
            r#"[]"#,
            "5",
        ];
        for c in bad_cand {
            assert!(!valid_candidate(&raw(c)), "{c}");
        }
    }
}
