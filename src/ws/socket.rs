//! One task per WebSocket: it owns the stream, runs the `hello` handshake (deadline, token and
//! session check, resume), then pumps frames both ways. Inbound text is rate-limited, parsed
//! into typed messages and cast to the connection actor; outbound frames come from the actor
//! over a bounded queue. It sends heartbeat pings and drops a peer silent for two intervals.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use ractor::ActorRef;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::close;
use super::protocol::{self, ClientMessage, ErrorCode, ServerMessage};
use crate::actors::ask;
use crate::actors::connection::{ConnectionMsg, Outbound, SocketKill, SocketLink};
use crate::actors::registry::{ConnectRequest, RegistryMsg};
use crate::domain::UserRef;
use crate::http::request::{AuthFailure, verify_token};
use crate::state::AppState;
use crate::store;

/// Read buffer per socket. Signaling frames are small (an SDP is a few KiB and gets a buffer of
/// its own size when it comes); tungstenite's 128 KiB default would cost that much per idle
/// connection.
const READ_BUFFER_BYTES: usize = 1024;

/// A write that takes longer than this means the peer is not reading: drop it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

static SOCKET_IDS: AtomicU64 = AtomicU64::new(1);

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// The socket configuration: bounded frames and messages, small buffers, no compression
/// (tungstenite implements no permessage-deflate, so none is ever negotiated).
pub fn config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_write_buffer_size(max_message_bytes * 4)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

async fn send(ws: &mut Ws, msg: &ServerMessage) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, ws.send(Message::text(msg.to_json()))).await,
        Ok(Ok(()))
    )
}

async fn close_with(ws: &mut Ws, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code: code.into(),
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, ws.close(Some(frame))).await;
}

async fn refuse(ws: &mut Ws, code: ErrorCode, message: &str, close_code: u16) {
    let _ = send(ws, &ServerMessage::error(code, message, None, None)).await;
    close_with(ws, close_code, "handshake refused").await;
}

/// A token bucket: `rate` per second sustained, `burst` at once.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst),
            last: Instant::now(),
        }
    }
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Runs one upgraded socket to its end.
pub async fn run(state: Arc<AppState>, upgraded: Upgraded) {
    let settings = &state.settings.ws;
    let mut ws = WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        Role::Server,
        Some(config(settings.max_message_bytes)),
    )
    .await;
    // Boxed: the handshake awaits database queries whose futures are large; inline, their size
    // would stay reserved in this task for the whole life of an idle connection.
    let Some((actor, socket_id, mut rx, kill)) = Box::pin(handshake(&state, &mut ws)).await else {
        return;
    };
    pump(&state, ws, &actor, &mut rx, kill).await;
    // Hand back what the socket never wrote, so a resume delivers it.
    let mut unsent = Vec::new();
    while let Ok(Outbound::Text(text)) = rx.try_recv() {
        unsent.push(text);
    }
    let _ = actor.cast(ConnectionMsg::SocketClosed(socket_id, unsent));
}

/// The first data frame, whatever it is.
async fn first_frame(ws: &mut Ws) -> Option<Result<Message, WsError>> {
    loop {
        match ws.next().await? {
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
            other => return Some(other),
        }
    }
}

async fn handshake(
    state: &Arc<AppState>,
    ws: &mut Ws,
) -> Option<(
    ActorRef<ConnectionMsg>,
    u64,
    mpsc::Receiver<Outbound>,
    SocketKill,
)> {
    let settings = &state.settings.ws;
    let first = match tokio::time::timeout(settings.hello_timeout(), first_frame(ws)).await {
        Err(_) => {
            refuse(
                ws,
                ErrorCode::HelloTimeout,
                "no hello within the deadline",
                close::UNAUTHORIZED,
            )
            .await;
            return None;
        }
        Ok(None | Some(Err(_))) => return None,
        Ok(Some(Ok(Message::Close(_)))) => return None,
        Ok(Some(Ok(frame))) => frame,
    };
    let hello = match &first {
        Message::Text(t) => protocol::parse(t.as_str()).ok(),
        _ => None,
    };
    let Some(ClientMessage::Hello {
        token,
        resume_token,
    }) = hello.map(|h| h.message)
    else {
        refuse(
            ws,
            ErrorCode::HelloRequired,
            "the first message must be hello",
            close::UNAUTHORIZED,
        )
        .await;
        return None;
    };
    let (auth, session) = match verify_token(state, &token).await {
        Ok(ok) => ok,
        Err(failure) => {
            let (code, message, close_code) = match failure {
                AuthFailure::InvalidToken => (
                    ErrorCode::InvalidToken,
                    "invalid token",
                    close::UNAUTHORIZED,
                ),
                AuthFailure::TokenExpired => (
                    ErrorCode::TokenExpired,
                    "token expired",
                    close::UNAUTHORIZED,
                ),
                AuthFailure::SessionRevoked => (
                    ErrorCode::SessionRevoked,
                    "session revoked or expired",
                    close::UNAUTHORIZED,
                ),
                AuthFailure::Unavailable => (
                    ErrorCode::InternalError,
                    "the service is temporarily unavailable",
                    close::TRY_AGAIN_LATER,
                ),
            };
            refuse(ws, code, message, close_code).await;
            return None;
        }
    };
    let user = match store::users::find_by_id(&state.db, auth.user_id).await {
        Ok(Some(u)) => u.user,
        _ => {
            refuse(
                ws,
                ErrorCode::InternalError,
                "could not load the user",
                close::TRY_AGAIN_LATER,
            )
            .await;
            return None;
        }
    };
    let (tx, rx) = mpsc::channel(settings.outbound_queue);
    let kill = SocketKill::default();
    let socket_id = SOCKET_IDS.fetch_add(1, Ordering::Relaxed);
    let request = ConnectRequest {
        user: UserRef {
            id: user.id,
            username: user.username,
        },
        session_id: auth.session_id,
        session_expires_at: session.expires_at,
        resume_token,
        socket: SocketLink {
            socket_id,
            tx,
            abort: kill.clone(),
        },
        ice_servers: crate::ice::servers_for(&state.settings.ice, auth.user_id),
    };
    let result = match state.actors.registry() {
        Some(r) => ask(&r, |reply| RegistryMsg::Connect(Box::new(request), reply)).await,
        None => None,
    };
    match result {
        Some(Ok(actor)) => Some((actor, socket_id, rx, kill)),
        Some(Err((code, message))) => {
            refuse(ws, code, message, close::TRY_AGAIN_LATER).await;
            None
        }
        None => {
            refuse(
                ws,
                ErrorCode::InternalError,
                "signaling is restarting; retry",
                close::TRY_AGAIN_LATER,
            )
            .await;
            None
        }
    }
}

async fn pump(
    state: &Arc<AppState>,
    mut ws: Ws,
    actor: &ActorRef<ConnectionMsg>,
    rx: &mut mpsc::Receiver<Outbound>,
    kill: SocketKill,
) {
    let settings = &state.settings.ws;
    let heartbeat = settings.heartbeat();
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let mut last_heard = Instant::now();
    let mut bucket = Bucket::new(settings.rate_limit_per_sec, settings.rate_limit_burst);
    let mut strikes = 0u32;
    loop {
        tokio::select! {
            biased;
            _ = kill.killed() => return,
            out = rx.recv() => match out {
                Some(Outbound::Text(text)) => {
                    let sent = tokio::select! {
                        r = tokio::time::timeout(WRITE_TIMEOUT, ws.send(Message::text(text))) => matches!(r, Ok(Ok(()))),
                        _ = kill.killed() => false,
                    };
                    if !sent {
                        return;
                    }
                }
                Some(Outbound::Close(code, reason)) => return close_with(&mut ws, code, reason).await,
                None => return close_with(&mut ws, close::INTERNAL, "connection failed").await,
            },
            frame = ws.next() => {
                let msg = match frame {
                    None | Some(Ok(Message::Close(_))) => return,
                    Some(Err(WsError::Capacity(_))) => {
                        return close_with(&mut ws, close::TOO_BIG, "message too big").await;
                    }
                    Some(Err(_)) => return,
                    Some(Ok(msg)) => msg,
                };
                last_heard = Instant::now();
                let text = match msg {
                    Message::Text(t) => t,
                    Message::Binary(_) => {
                        let e = ServerMessage::error(ErrorCode::BadMessage, "binary frames are not accepted", None, None);
                        if !send(&mut ws, &e).await { return; }
                        continue;
                    }
                    _ => continue,
                };
                if !bucket.take() {
                    strikes += 1;
                    state.metrics.rate_limited.inc();
                    if strikes > settings.rate_limit_strikes {
                        return close_with(&mut ws, close::POLICY, "rate limit exceeded").await;
                    }
                    let e = ServerMessage::error(ErrorCode::RateLimited, "too many messages; slow down", None, None);
                    if !send(&mut ws, &e).await { return; }
                    continue;
                }
                match protocol::parse(text.as_str()) {
                    Ok(inbound) => {
                        if actor.cast(ConnectionMsg::Client(inbound)).is_err() {
                            return close_with(&mut ws, close::INTERNAL, "connection failed").await;
                        }
                    }
                    Err(bad) => {
                        let e = ServerMessage::error(ErrorCode::BadMessage, bad.message, bad.reference, None);
                        if !send(&mut ws, &e).await { return; }
                    }
                }
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() > heartbeat * 2 {
                    tracing::debug!("peer silent for two heartbeats; dropping the socket");
                    return;
                }
                let ping = tokio::time::timeout(WRITE_TIMEOUT, ws.send(Message::Ping(Default::default())));
                if !matches!(ping.await, Ok(Ok(()))) {
                    return;
                }
            }
        }
    }
}
