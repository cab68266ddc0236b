//! One task per WebSocket: it owns the stream, runs the `hello` handshake (deadline, token and
//! session check, resume), then pumps frames both ways. Every inbound frame counts against the
//! user's limits; text is parsed into typed messages and cast to the connection actor; outbound
//! frames come from the actor over a queue. It sends a heartbeat ping when the heartbeat wheel
//! asks (its payload is the highest `seq` written, so the pong proves delivery), and drops the
//! connection when the wheel finds the peer silent for two intervals ([`super::heartbeat`]).
//!
//! Every close the server starts is a complete closing handshake (RFC 6455 §7.1.1–7.1.2): write
//! Close, stop handling application data, read and discard until the client's Close or EOF
//! (bounded in time and bytes), then shut the TCP connection down — so what was written before
//! the Close (errors, `session_revoked`, `call.ended`) reaches the client instead of being
//! destroyed by a reset.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::fastpath;
use super::limit::Verdict;
use super::protocol::{self, ClientMessage, ErrorCode, ServerMessage, close};
use crate::actors::ask;
use crate::actors::connection::{
    ConnectionMsg, DirectRelay, Outbound, Signal, SocketControl, SocketEnd, SocketLink,
};
use crate::actors::registry::{ConnectRequest, Connected, LocalJoin, RegistryMsg};
use crate::domain::{SessionId, UserRef};
use crate::http::request::{AuthFailure, verify_token};
use crate::state::AppState;
use crate::store;
use crate::ws::outbox;

/// Read buffer per socket. Signaling frames are small (an SDP is a few KiB and gets a buffer of
/// its own size when it comes); tungstenite's 128 KiB default would cost that much per idle
/// connection.
const READ_BUFFER_BYTES: usize = 1024;

/// A write that takes longer than this means the peer is not reading: drop it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a closing handshake may take, start to TCP shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How much a client may still send after the server's Close before it is cut off.
const CLOSE_DRAIN_BYTES: usize = 1 << 20;

static SOCKET_IDS: AtomicU64 = AtomicU64::new(1);

/// A new socket id, unique in this process (a connection ignores the end of a socket that is
/// no longer its own by this id).
pub fn next_socket_id() -> u64 {
    SOCKET_IDS.fetch_add(1, Ordering::Relaxed)
}

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// Most frames gathered into one write.
const MAX_BATCH: usize = 64;

/// Frames fed to a socket are gathered in tungstenite's write buffer until the flush that ends
/// a batch, then handed to the kernel in one write (one `sendto`, not one per frame); past this
/// many bytes they are written out before more are taken.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// The socket configuration: bounded frames and messages, small buffers that are let go of
/// when not in use (`release_buffers`, a patch of ours: vendor/tungstenite/PATCHES.md — else a
/// connection kept its largest frame's size in both buffers for life, and an idle one its read
/// buffer), writes gathered until a flush ([`WRITE_BATCH_BYTES`]), no compression (tungstenite
/// implements no permessage-deflate, so none is ever negotiated).
pub fn config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .release_buffers(true)
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BATCH_BYTES)
        // Room for a full batch plus one more frame of the largest size (tungstenite requires
        // the bound to exceed the batch size).
        .max_write_buffer_size(
            (max_message_bytes * 4).max(WRITE_BATCH_BYTES + max_message_bytes + 1024),
        )
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

async fn send(ws: &mut Ws, msg: &ServerMessage) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, ws.send(Message::text(msg.to_json()))).await,
        Ok(Ok(()))
    )
}

/// Shuts the TCP connection down (FIN), bounded in time.
async fn shutdown_tcp(ws: &mut Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.get_mut().shutdown()).await;
}

/// A server-initiated close: Close frame, then discard what the client still sends until its
/// Close or EOF (bounded by [`CLOSE_TIMEOUT`] and [`CLOSE_DRAIN_BYTES`]), then TCP shutdown.
async fn close_with(ws: &mut Ws, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code: code.into(),
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if ws.close(Some(frame)).await.is_err() {
            return;
        }
        let mut discarded = 0usize;
        while let Some(Ok(msg)) = ws.next().await {
            discarded += msg.len();
            if discarded > CLOSE_DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
    shutdown_tcp(ws).await;
}

/// A close after a framing error (a frame over the size limit): the stream can no longer be
/// parsed, so after the Close frame the raw bytes are discarded until EOF or a quiet moment
/// (bounded), then the TCP connection is shut down.
async fn close_after_framing_error(ws: &mut Ws, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code: code.into(),
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, ws.close(Some(frame))).await;
    let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
    let mut buf = vec![0u8; 4096];
    let mut discarded = 0usize;
    while discarded <= CLOSE_DRAIN_BYTES {
        let quiet = tokio::time::Instant::now() + Duration::from_millis(300);
        match tokio::time::timeout_at(quiet.min(deadline), ws.get_mut().read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => discarded += n,
            _ => break,
        }
    }
    shutdown_tcp(ws).await;
}

/// The close a broken frame earns (RFC 6455 §7.4.1): 1002 for a protocol violation, 1007 for
/// text that is not UTF-8, 1009 for a frame or message over `ws.max_message_bytes` (contract
/// §2.1); `None` for an error that is just the connection ending. The same before `hello` as
/// after it.
fn violation(e: &WsError) -> Option<(u16, &'static str)> {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match e {
        WsError::Capacity(_) => Some((close::TOO_BIG, "message too big")),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(_) => Some((close::PROTOCOL_ERROR, "protocol error")),
        WsError::Utf8(_) => Some((close::INVALID_PAYLOAD, "invalid UTF-8")),
        _ => None,
    }
}

/// A close the client started: let tungstenite write the echoing Close, read to the end, then
/// shut the TCP connection down (the server closes TCP first, RFC 6455 §7.1.1).
async fn finish_client_close(ws: &mut Ws) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = ws.flush().await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    shutdown_tcp(ws).await;
}

async fn refuse(ws: &mut Ws, code: ErrorCode, message: &str, close_code: u16) {
    let _ = send(ws, &ServerMessage::error(code, message, None, None)).await;
    close_with(ws, close_code, "handshake refused").await;
}

/// A socket admitted by the registry.
struct Admitted {
    connected: Connected,
    socket_id: u64,
    session_id: SessionId,
    rx: outbox::Receiver<Outbound>,
    control: SocketControl,
}

/// Runs one upgraded socket to its end. `client`: the address the upgrade came from, recorded
/// on the session at the handshake.
pub async fn run(state: Arc<AppState>, upgraded: Upgraded, client: Option<IpAddr>) {
    let settings = &state.settings.ws;
    let mut ws = WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        Role::Server,
        Some(config(settings.max_message_bytes)),
    )
    .await;
    // Boxed: the handshake awaits database queries whose futures are large; inline, their size
    // would stay reserved in this task for the whole life of an idle connection.
    let Some(mut admitted) = Box::pin(handshake(&state, &mut ws, client)).await else {
        return;
    };
    Box::pin(recheck_session(&state, &admitted)).await;
    let exit = pump(&state, &mut ws, &mut admitted).await;
    let end = match exit {
        Exit::Dropped => SocketEnd::Dropped,
        Exit::ClientClosed(end) => end,
        Exit::Close(..) | Exit::FramingError(..) => SocketEnd::ServerClosed,
    };
    let _ = admitted
        .connected
        .actor
        .cast(ConnectionMsg::SocketClosed(admitted.socket_id, end));
    // Boxed, like the handshake: the closing futures would otherwise enlarge every idle socket
    // task by their size.
    Box::pin(finish(&mut ws, exit)).await;
}

/// How [`pump`] ended, and what closing it still needs.
enum Exit {
    /// The connection died: nothing to close politely.
    Dropped,
    /// The client sent Close: echo it and shut down.
    ClientClosed(SocketEnd),
    /// The server closes with this code: full closing handshake.
    Close(u16, &'static str),
    /// A frame broke the limits: Close, then discard raw bytes.
    FramingError(u16, &'static str),
}

async fn finish(ws: &mut Ws, exit: Exit) {
    match exit {
        Exit::Dropped => {}
        Exit::ClientClosed(_) => finish_client_close(ws).await,
        Exit::Close(code, reason) => close_with(ws, code, reason).await,
        Exit::FramingError(code, reason) => close_after_framing_error(ws, code, reason).await,
    }
}

/// Check-after-act: the session was verified before the socket was registered; a revocation
/// that committed in between cast its notice to the registry before this socket was there to
/// receive it. Reading the session again after registering closes that window: a revocation
/// either is visible now or its notice arrives after the registration.
async fn recheck_session(state: &AppState, admitted: &Admitted) {
    let actor = &admitted.connected.actor;
    match store::sessions::get(&state.db, admitted.session_id).await {
        Ok(Some(s)) if store::sessions::is_live(&s, chrono::Utc::now()) => {}
        Ok(_) => {
            let _ = actor.cast(ConnectionMsg::Revoke);
        }
        Err(_) => {
            let _ = actor.cast(ConnectionMsg::Kick(
                ErrorCode::InternalError,
                "the service is temporarily unavailable",
                close::TRY_AGAIN_LATER,
            ));
        }
    }
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

async fn handshake(state: &Arc<AppState>, ws: &mut Ws, client: Option<IpAddr>) -> Option<Admitted> {
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
        Ok(Some(Err(e))) => {
            if let Some((code, reason)) = violation(&e) {
                close_after_framing_error(ws, code, reason).await;
            }
            return None;
        }
        Ok(None) => return None,
        Ok(Some(Ok(Message::Close(_)))) => {
            finish_client_close(ws).await;
            return None;
        }
        Ok(Some(Ok(frame))) => frame,
    };
    let hello = match &first {
        Message::Text(t) => protocol::parse(t.as_str()).ok(),
        _ => None,
    };
    let Some(ClientMessage::Hello {
        token,
        resume_token,
        last_seq,
    }) = hello.map(|h| h.message)
    else {
        // A `hello` whose token is missing or not a string is a bad token, not a missing hello.
        let is_hello = match &first {
            Message::Text(t) => serde_json::from_str::<serde_json::Value>(t.as_str())
                .is_ok_and(|v| v["type"] == "hello"),
            _ => false,
        };
        if is_hello {
            refuse(
                ws,
                ErrorCode::InvalidToken,
                "hello needs the access token as a string in `token`",
                close::UNAUTHORIZED,
            )
            .await;
            return None;
        }
        refuse(
            ws,
            ErrorCode::HelloRequired,
            "the first message must be hello",
            close::UNAUTHORIZED,
        )
        .await;
        return None;
    };
    let (auth, session) = match verify_token(state, &token, client).await {
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
    // The actor bounds what it holds (count and bytes); the queue only needs room for that
    // plus the unsequenced per-socket messages.
    let (tx, rx) = outbox::channel(settings.outbound_queue + 8);
    let control = SocketControl::default();
    let socket_id = next_socket_id();
    let request = ConnectRequest {
        user: UserRef {
            id: user.id,
            username: user.username,
        },
        session_id: auth.session_id,
        session_expires_at: session.expires_at,
        resume_token,
        last_seq,
        socket: SocketLink {
            socket_id,
            tx,
            control: control.clone(),
        },
    };
    let request = match &state.actors.cluster {
        Some(cluster) => match Box::pin(resume_elsewhere(state, cluster, request)).await {
            Ok(connected) => {
                return Some(Admitted {
                    connected,
                    socket_id,
                    session_id: auth.session_id,
                    rx,
                    control,
                });
            }
            Err(Some(request)) => request,
            Err(None) => {
                refuse(
                    ws,
                    ErrorCode::InternalError,
                    "the cluster link failed; retry",
                    close::TRY_AGAIN_LATER,
                )
                .await;
                return None;
            }
        },
        None => request,
    };
    let result = match state.actors.registry() {
        Some(r) => ask(&r, |reply| RegistryMsg::Connect(Box::new(request), reply)).await,
        None => None,
    };
    match result {
        Some(Ok(connected)) => Some(Admitted {
            connected,
            socket_id,
            session_id: auth.session_id,
            rx,
            control,
        }),
        Some(Err((code, message))) => {
            let close_code = if code == ErrorCode::SessionRevoked {
                close::UNAUTHORIZED
            } else {
                close::TRY_AGAIN_LATER
            };
            refuse(ws, code, message, close_code).await;
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

/// Cluster mode: a `hello` that resumes (or takes over) no connection of this node may belong
/// to a connection on another node (the socket dropped there and came back here); the socket
/// is then bridged to it ([`crate::cluster::bridge`]). `Err(Some(request))`: not found
/// anywhere else, admit here as usual; `Err(None)`: the bridge broke while being made.
async fn resume_elsewhere(
    state: &AppState,
    cluster: &crate::cluster::Cluster,
    mut request: ConnectRequest,
) -> Result<Connected, Option<ConnectRequest>> {
    use crate::cluster::bridge::NotBridged;
    let Some(registry) = state.actors.registry() else {
        return Err(Some(request));
    };
    let local = ask(&registry, |reply| RegistryMsg::Resumable {
        user: request.user.id,
        session: request.session_id,
        resume_token: request.resume_token.clone(),
        reply,
    })
    .await;
    // A token match here, or a call party to take over here, is the answer; anything less
    // (nothing, or an idle connection of the session) asks the other nodes first: the token
    // may name a connection there, or the session's call party may wait there.
    let (party_only, limiter) = match local {
        Some((LocalJoin::Nothing, limiter)) => (false, limiter),
        Some((LocalJoin::TakeoverIdle, limiter)) => (true, limiter),
        _ => return Err(Some(request)),
    };
    let socket = request.socket;
    match cluster
        .resume_elsewhere(
            request.user.id,
            request.session_id,
            request.resume_token.clone(),
            request.last_seq,
            party_only,
            socket,
        )
        .await
    {
        Ok(bridged) => {
            tracing::info!(connection_id = %bridged.connection, user_id = %request.user.id,
                peer = %bridged.node, "socket bridged to its connection on another node");
            Ok(Connected {
                actor: bridged.actor,
                limiter,
                line: None,
            })
        }
        Err(NotBridged::NotFound(socket)) => {
            request.socket = socket;
            Err(Some(request))
        }
        Err(NotBridged::Broken) => Err(None),
    }
}

/// Sends a per-socket error (no `seq`: it answers this socket's frame and is never replayed).
async fn reply_error(
    ws: &mut Ws,
    code: ErrorCode,
    message: String,
    reference: Option<String>,
) -> bool {
    send(ws, &ServerMessage::error(code, message, reference, None)).await
}

/// What woke the socket task.
enum Event {
    Signal(Signal),
    Out(Option<Outbound>),
    Frame(Option<Result<Message, WsError>>),
}

/// What a client frame asks of the socket task after it was handled.
enum FrameStep {
    /// Nothing more.
    Done,
    /// Answer this socket with an error (no `seq`).
    Reply(ErrorCode, String, Option<String>),
    /// End the socket.
    Exit(Exit),
}

/// The per-socket state [`pump`] keeps between frames (besides the socket and its admission).
struct PumpState {
    actor: ractor::ActorRef<ConnectionMsg>,
    /// Highest `seq` a pong proved delivered.
    delivered: u64,
    /// Arrival times of the relayed frames of a write batch (kept between batches: no
    /// allocation per batch; given back once it grew past a small burst).
    relayed: Vec<Instant>,
    /// The call whose `sdp`/`ice` this socket sent through its connection actor.
    via_actor: crate::actors::connection::RecentCalls,
    /// The direct relay as of a generation of the control's (refreshed when it moves): no lock
    /// per relayed message.
    relay_cache: (u64, Option<Arc<DirectRelay>>),
}

/// Pumps frames both ways until the socket ends; says how it ended.
///
/// Shaped for the size of an idle socket task: the task's future is as large as its largest
/// suspended state, and an idle socket sits in the one `select!` below for most of its life.
/// So every other wait (a write batch, a ping, an error reply) is a boxed future of its own,
/// allocated only while it runs, and a client frame is handled without awaiting at all
/// ([`on_frame`]); inline, those states made every idle socket task ≈ 340 bytes larger
/// (docs/benchmarks.md, session 9).
async fn pump(state: &Arc<AppState>, ws: &mut Ws, a: &mut Admitted) -> Exit {
    // Heartbeats come from the one wheel of all sockets (crate::ws::heartbeat): it asks for a
    // ping, or drops the socket after two silent intervals, through the control's signal.
    state.heartbeats.watch(&a.control);
    let mut p = PumpState {
        actor: a.connected.actor.clone(),
        delivered: 0,
        relayed: Vec::new(),
        via_actor: crate::actors::connection::RecentCalls::default(),
        relay_cache: (u64::MAX, None),
    };
    // One wait for the control's signals for the socket's whole life (not a new waiter per
    // frame).
    let control = a.control.clone();
    let signal = control.signal();
    tokio::pin!(signal);
    loop {
        let event = tokio::select! {
            biased;
            signal = &mut signal => Event::Signal(signal),
            out = a.rx.recv() => Event::Out(out),
            frame = ws.next() => Event::Frame(frame),
        };
        match event {
            Event::Signal(Signal::Close(code)) => return Exit::Close(code, "closed by the server"),
            Event::Signal(Signal::Drop) => {
                tracing::debug!("peer silent for two heartbeats; dropping the socket");
                return Exit::Dropped;
            }
            Event::Signal(Signal::Ping) => {
                let mark = a.control.written().to_be_bytes();
                let ping = Box::pin(tokio::time::timeout(
                    WRITE_TIMEOUT,
                    ws.send(Message::Ping(mark.to_vec().into())),
                ));
                if !matches!(ping.await, Ok(Ok(()))) {
                    return Exit::Dropped;
                }
            }
            Event::Out(Some(Outbound::Close(code, reason))) => return Exit::Close(code, reason),
            Event::Out(None) => return Exit::Close(close::INTERNAL, "connection failed"),
            Event::Out(Some(first)) => {
                if let Some(exit) =
                    Box::pin(write_batch(state, ws, a, &control, first, &mut p.relayed)).await
                {
                    return exit;
                }
            }
            Event::Frame(frame) => match on_frame(state, a, &mut p, frame) {
                FrameStep::Done => {}
                FrameStep::Exit(exit) => return exit,
                FrameStep::Reply(code, message, reference) => {
                    if !Box::pin(reply_error(ws, code, message, reference)).await {
                        return Exit::Dropped;
                    }
                }
            },
        }
    }
}

/// Writes `first` and whatever else is queued for the socket with one flush (one write to the
/// kernel for the batch); records the relay latency of the relayed frames among them. `Some`
/// when the socket must end.
async fn write_batch(
    state: &AppState,
    ws: &mut Ws,
    a: &mut Admitted,
    control: &SocketControl,
    first: Outbound,
    relayed: &mut Vec<Instant>,
) -> Option<Exit> {
    let mut last = 0;
    let mut then_close = None;
    relayed.clear();
    if relayed.capacity() > MAX_BATCH {
        relayed.shrink_to(0);
    }
    let sent = {
        let mut frame = |out: Outbound| match out {
            Outbound::Text(seq, text) => {
                last = last.max(seq);
                Some(text)
            }
            Outbound::Relayed(seq, text, at) => {
                last = last.max(seq);
                relayed.push(at);
                Some(text)
            }
            Outbound::Close(..) => None,
        };
        let first = frame(first);
        let rx = &mut a.rx;
        let batch = async {
            if let Some(text) = first {
                ws.feed(Message::Text(text)).await?;
            }
            for _ in 1..MAX_BATCH {
                match rx.try_recv() {
                    Some(Outbound::Close(code, reason)) => {
                        then_close = Some((code, reason));
                        break;
                    }
                    Some(out) => {
                        if let Some(text) = frame(out) {
                            ws.feed(Message::Text(text)).await?;
                        }
                    }
                    None => break,
                }
            }
            ws.flush().await
        };
        tokio::pin!(batch);
        // Polled once first: a write the kernel takes at once (the usual case) needs no timer;
        // only one that waits for room in the socket gets its deadline.
        let at_once = std::future::poll_fn(|cx| Poll::Ready(batch.as_mut().poll(cx))).await;
        match at_once {
            Poll::Ready(r) => r.is_ok(),
            Poll::Pending => tokio::select! {
                r = tokio::time::timeout(WRITE_TIMEOUT, &mut batch) => matches!(r, Ok(Ok(()))),
                // A ping asked for meanwhile waits: `killed` resolves on a close or drop only.
                code = control.killed() => return Some(if SocketControl::is_drop(code) {
                    Exit::Dropped
                } else {
                    Exit::Close(code, "closed by the server")
                }),
            },
        }
    };
    if !sent {
        return Some(Exit::Dropped);
    }
    a.control.mark_written(last);
    if !relayed.is_empty() {
        let now = Instant::now();
        for at in relayed.iter() {
            state
                .metrics
                .relay_seconds
                .observe(now.saturating_duration_since(*at).as_secs_f64());
        }
    }
    then_close.map(|(code, reason)| Exit::Close(code, reason))
}

/// Handles one thing read from the client, without awaiting: a frame of any kind counts
/// against the rate limit; a pong proves delivery; a text frame is parsed and its `ack`
/// applied, then an `sdp`/`ice` of the answered call goes straight to the peer's line and
/// anything else to the connection actor.
fn on_frame(
    state: &AppState,
    a: &mut Admitted,
    p: &mut PumpState,
    frame: Option<Result<Message, WsError>>,
) -> FrameStep {
    let msg = match frame {
        None => return FrameStep::Exit(Exit::Dropped),
        Some(Ok(Message::Close(frame))) => {
            return FrameStep::Exit(Exit::ClientClosed(match frame.map(|f| f.code) {
                Some(CloseCode::Normal) => SocketEnd::Left,
                Some(CloseCode::Away) => SocketEnd::GoingAway,
                _ => SocketEnd::Dropped,
            }));
        }
        Some(Err(e)) => {
            return FrameStep::Exit(match violation(&e) {
                Some((code, reason)) => Exit::FramingError(code, reason),
                None => Exit::Dropped,
            });
        }
        Some(Ok(msg)) => msg,
    };
    a.control.heard();
    // Every frame counts, of any kind.
    let now = Instant::now();
    let verdict = a
        .connected
        .limiter
        .lock()
        .map(|mut l| l.take_at(msg.len(), now))
        .unwrap_or(Verdict::Abuse);
    match verdict {
        Verdict::Pass => {}
        Verdict::Limited => {
            state.metrics.rate_limited.inc();
            return FrameStep::Reply(
                ErrorCode::RateLimited,
                "too many messages; slow down".into(),
                None,
            );
        }
        Verdict::Abuse => {
            state.metrics.rate_limited.inc();
            return FrameStep::Exit(Exit::Close(close::POLICY, "rate limit exceeded"));
        }
    }
    let text = match msg {
        Message::Text(t) => t,
        Message::Binary(_) => {
            return FrameStep::Reply(
                ErrorCode::BadMessage,
                "binary frames are not accepted".into(),
                None,
            );
        }
        Message::Pong(payload) => {
            // Our pings carry the highest seq written before them: the pong proves the client
            // has everything up to it.
            if let Ok(bytes) = <[u8; 8]>::try_from(payload.as_ref()) {
                let seq = u64::from_be_bytes(bytes);
                if seq > p.delivered {
                    p.delivered = seq;
                    match &a.connected.line {
                        Some(line) => line.lock().delivered(seq),
                        None => {
                            let _ = p.actor.cast(ConnectionMsg::Delivered(seq));
                        }
                    }
                }
            }
            return FrameStep::Done;
        }
        _ => return FrameStep::Done,
    };
    // A plain `sdp`/`ice` of the answered call, read in one pass and relayed from the frame's
    // own bytes (crate::ws::fastpath); anything else, or one for another call, takes the full
    // parse below.
    if let Some(plain) = fastpath::read(text.as_str()) {
        refresh_relay(a, p);
        if let Some(relay) = direct_relay(p, &plain.call_id) {
            if let Some(seq) = plain.ack
                && let Err(step) = apply_ack(a, p, seq, now)
            {
                return step;
            }
            if relay.relay_plain(&plain, now).is_some() {
                return FrameStep::Done;
            }
        }
    }
    let mut inbound = match protocol::parse(text.as_str()) {
        Ok(inbound) => inbound,
        Err(bad) => return FrameStep::Reply(ErrorCode::BadMessage, bad.message, bad.reference),
    };
    // A piggybacked ack first, as an `ack` of its own would be.
    if let Some(seq) = inbound.ack.take()
        && let Err(step) = apply_ack(a, p, seq, inbound.received)
    {
        return step;
    }
    // `sdp`/`ice` of the answered call go straight to the peer's connection — unless one of
    // this call's went through the connection actor (sent before the pairing reached this
    // task): the rest follow it there, so none overtakes it.
    let inbound = match &inbound.message {
        // An `ack` only trims the connection's held messages: done here, under the line's
        // lock, not through the actor's mailbox.
        ClientMessage::Ack { seq } if a.connected.line.is_some() => {
            if let Some(line) = &a.connected.line {
                line.lock().acked(*seq);
            }
            return FrameStep::Done;
        }
        ClientMessage::Sdp { call_id, .. } | ClientMessage::Ice { call_id, .. } => {
            refresh_relay(a, p);
            match direct_relay(p, call_id) {
                Some(relay) => match relay.relay(inbound) {
                    Ok(()) => return FrameStep::Done,
                    Err(other) => other,
                },
                None => {
                    p.via_actor.insert(*call_id);
                    inbound
                }
            }
        }
        _ => inbound,
    };
    if p.actor.cast(ConnectionMsg::Client(inbound)).is_err() {
        return FrameStep::Exit(Exit::Close(close::INTERNAL, "connection failed"));
    }
    FrameStep::Done
}

/// Takes up the connection's current direct relay if it changed since the last frame.
fn refresh_relay(a: &Admitted, p: &mut PumpState) {
    let generation = a.control.relay_generation();
    if p.relay_cache.0 != generation {
        p.relay_cache = (generation, a.control.relay());
    }
}

/// The socket's direct relay when it is for `call_id` and none of this call's messages went
/// through the connection actor (the rest follow those there, so none overtakes another).
fn direct_relay<'p>(p: &'p PumpState, call_id: &crate::domain::CallId) -> Option<&'p DirectRelay> {
    p.relay_cache
        .1
        .as_deref()
        .filter(|r| !p.via_actor.contains(call_id) && r.call_id == *call_id)
}

/// Applies a piggybacked `ack` (as an `ack` message of its own would be): under the line's lock
/// when the socket has the connection's line, else through the connection actor.
fn apply_ack(a: &Admitted, p: &PumpState, seq: u64, received: Instant) -> Result<(), FrameStep> {
    match &a.connected.line {
        Some(line) => line.lock().acked(seq),
        None => {
            let ack = protocol::Inbound {
                message: ClientMessage::Ack { seq },
                reference: None,
                received,
                ack: None,
            };
            if p.actor.cast(ConnectionMsg::Client(ack)).is_err() {
                return Err(FrameStep::Exit(Exit::Close(
                    close::INTERNAL,
                    "connection failed",
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an async fn returns, without calling it.
    fn future_size<A, B, C, F: FnOnce(A, B, C) -> Fut, Fut>(_: &F) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// Every idle connection keeps one socket task whose future is as large as its largest
    /// suspended state: 1,208 bytes before [`pump`] boxed its rare waits (session 9, with
    /// rustc 1.95), 960 after. A change that makes it grow again should be a decision, not an
    /// accident (docs/benchmarks.md, "Where each KiB of an idle connection goes").
    #[test]
    fn an_idle_socket_task_stays_small() {
        let run_size = future_size(&run);
        let pump_size =
            future_size(&|s: &'static Arc<AppState>,
                          w: &'static mut Ws,
                          a: &'static mut Admitted| { pump(s, w, a) });
        assert!(pump_size <= 448, "pump's future is {pump_size} bytes");
        assert!(
            run_size <= 1024,
            "the socket task's future is {run_size} bytes"
        );
    }

    /// Frames fed between flushes reach the peer together at the flush, in order (one write to
    /// the kernel per batch, not one per frame); a frame larger than a batch goes whole. Also: a
    /// small `ws.max_message_bytes` still gives a valid
    /// configuration (tungstenite panics if the write bound is not above the batch size).
    #[tokio::test]
    async fn frames_are_written_together_at_the_flush() {
        use tokio::io::AsyncReadExt as _;
        for max in [1024, 64 * 1024, 1 << 20] {
            let _ = config(max);
        }
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut ws =
            WebSocketStream::from_raw_socket(a, Role::Server, Some(config(64 * 1024))).await;
        ws.feed(Message::text("one")).await.expect("feed");
        ws.feed(Message::text("two")).await.expect("feed");
        let mut got = [0u8; 10];
        let early = tokio::time::timeout(Duration::from_millis(50), b.read_exact(&mut got)).await;
        assert!(early.is_err(), "nothing reaches the peer before the flush");
        ws.flush().await.expect("flush");
        b.read_exact(&mut got).await.expect("read");
        // Two unmasked server text frames: FIN|text, length, payload.
        assert_eq!(&got, b"\x81\x03one\x81\x03two");
        let big = "x".repeat(3 * WRITE_BATCH_BYTES / 2);
        ws.feed(Message::text(big.clone())).await.expect("feed");
        ws.flush().await.expect("flush");
        // FIN|text, 127 (a 64-bit length follows), the length, the payload.
        let mut back = vec![0u8; big.len() + 10];
        b.read_exact(&mut back)
            .await
            .expect("read a frame larger than a batch");
        assert_eq!(back[..2], [0x81, 127]);
        assert_eq!(&back[10..], big.as_bytes());
    }
}
