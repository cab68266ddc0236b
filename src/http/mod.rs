//! The HTTP server: accepts TCP connections (at most `server.max_tcp_connections`, at most
//! `server.max_connections_per_address` from one address), serves HTTP/1.1 and HTTP/2 through
//! hyper-util with a deadline at every stage of a connection (see [`connection`]), and routes
//! requests to [`routes`]. `/ws` upgrades to the signaling protocol (see [`crate::ws`]).

pub mod connection;
pub mod error;
pub mod request;
pub mod response;
pub mod routes;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use self::connection::{Activity, AddressSlots, CLOSE_GRACE, Deadlines};
use self::error::ApiError;
use self::response::{HttpResponse, add_common_headers};
use crate::state::AppState;

/// Accepts connections until `shutdown` flips, then stops accepting and lets in-flight
/// connections finish (WebSockets are closed by the actor tree's own shutdown).
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let server = &state.settings.server;
    let header_timeout = Duration::from_secs(server.header_read_timeout_secs.max(1));
    let deadlines = Deadlines {
        first_request: header_timeout,
        idle: Duration::from_secs(server.idle_timeout_secs.max(1)),
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(
        server.max_tcp_connections.max(1),
    ));
    let per_address = AddressSlots::new(server.max_connections_per_address);
    loop {
        // Wait for a free slot before accepting: excess clients wait in the kernel's backlog
        // instead of costing memory here.
        let permit = tokio::select! {
            _ = shutdown.changed() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // One address may hold only its share of the slots; the rest stay free for others.
        let Some(address_slot) = per_address.try_acquire(peer.ip()) else {
            state.metrics.connections_refused.inc();
            tracing::debug!(%peer, "connection refused: its address holds its share of the slots");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let mut conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slots = (permit, address_slot);
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(64 * 1024);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(64)
                // Ping idle HTTP/2 peers so dead ones are noticed and their slot freed.
                .keep_alive_interval(Some(Duration::from_secs(20)))
                .keep_alive_timeout(Duration::from_secs(10))
                .max_header_list_size(32 * 1024);
            let activity = Arc::new(Activity::default());
            let service_activity = activity.clone();
            let service = service_fn(move |req| {
                let state = state.clone();
                let request = service_activity.begin();
                async move {
                    let resp = handle(&state, req, peer).await;
                    drop(request);
                    Ok::<_, Infallible>(resp)
                }
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, %peer, "http connection ended with an error");
                    }
                }
                _ = activity.expired(deadlines) => {
                    // Silent, slow or idle: say goodbye (HTTP/2 GOAWAY), then drop the socket.
                    tracing::debug!(%peer, "closing a connection past its deadline");
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
                }
                _ = conn_shutdown.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}

async fn handle(state: &Arc<AppState>, req: Request<Incoming>, peer: SocketAddr) -> HttpResponse {
    state.metrics.http_requests.inc();
    let started = std::time::Instant::now();
    // Paths carry no secrets (tokens never travel in URLs); the query string is left out anyway.
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let mut resp = match route(state, req, peer).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    add_common_headers(&mut resp);
    tracing::debug!(target: "http", %method, path, status = resp.status().as_u16(),
        micros = started.elapsed().as_micros() as u64, "request");
    resp
}

async fn route(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<HttpResponse, ApiError> {
    use routes::*;
    let client = request::client_ip(
        req.headers(),
        peer,
        &state.settings.server.trusted_proxies,
    );
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let method = req.method().clone();
    match (segments.as_slice(), &method) {
        (["api", "auth", "register"], &Method::POST) => auth::register(state, req, client).await,
        (["api", "auth", "login"], &Method::POST) => auth::login(state, req, client).await,
        (["api", "auth", "refresh"], &Method::POST) => auth::refresh(state, req).await,
        (["api", "auth", "logout"], &Method::POST) => auth::logout(state, req).await,
        (["api", "me"], &Method::GET) => auth::me(state, req).await,
        (["api", "sessions"], &Method::GET) => sessions::list(state, req).await,
        (["api", "sessions", id], &Method::DELETE) => sessions::delete(state, req, id).await,
        (["api", "calls"], &Method::GET) => calls::list(state, req).await,
        (["api", "calls", id], &Method::GET) => calls::get(state, req, id).await,
        (["api", "ice-servers"], &Method::GET) => ice::get(state, req).await,
        (["healthz"], &Method::GET) => Ok(health::healthz()),
        (["readyz"], &Method::GET) => Ok(health::readyz(state).await),
        (["metrics"], &Method::GET) => health::metrics(state, client),
        (["ws"], &Method::GET) => ws::upgrade(state, req, peer).await,
        (["api", ..], _) | (["healthz" | "readyz" | "metrics" | "ws"], _) => {
            if known_path(&segments) {
                Err(ApiError::MethodNotAllowed)
            } else {
                Err(ApiError::NotFound)
            }
        }
        (_, &Method::GET | &Method::HEAD) => web::asset(&path),
        _ => Err(ApiError::NotFound),
    }
}

fn known_path(segments: &[&str]) -> bool {
    matches!(
        segments,
        ["api", "auth", "register" | "login" | "refresh" | "logout"]
            | ["api", "me" | "sessions" | "calls" | "ice-servers"]
            | ["api", "sessions" | "calls", _]
            | ["healthz" | "readyz" | "metrics" | "ws"]
    )
}
