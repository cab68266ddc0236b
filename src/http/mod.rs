//! The HTTP server: accepts TCP connections, serves HTTP/1.1 and HTTP/2 through hyper-util with
//! a header-read timeout, and routes requests to [`routes`]. `/ws` upgrades to the signaling
//! protocol (see [`crate::ws`]).

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
    let header_timeout = Duration::from_secs(state.settings.server.header_read_timeout_secs.max(1));
    let slots = Arc::new(tokio::sync::Semaphore::new(
        state.settings.server.max_tcp_connections.max(1),
    ));
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
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let mut conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
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
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req, peer).await) }
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, %peer, "http connection ended with an error");
                    }
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
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<HttpResponse, ApiError> {
    use routes::*;
    let client = request::client_ip(
        req.headers(),
        peer,
        state.settings.server.trust_forwarded_for,
    );
    req.extensions_mut().insert(request::ClientAddr(client));
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let method = req.method().clone();
    match (segments.as_slice(), &method) {
        (["api", "auth", "register"], &Method::POST) => auth::register(state, req).await,
        (["api", "auth", "login"], &Method::POST) => auth::login(state, req, client).await,
        (["api", "auth", "refresh"], &Method::POST) => auth::refresh(state, req, client).await,
        (["api", "auth", "logout"], &Method::POST) => auth::logout(state, req).await,
        (["api", "me"], &Method::GET) => auth::me(state, req).await,
        (["api", "sessions"], &Method::GET) => sessions::list(state, req).await,
        (["api", "sessions", "revoke-others"], &Method::POST) => {
            sessions::revoke_others(state, req).await
        }
        (["api", "sessions", id], &Method::DELETE) => sessions::delete(state, req, id).await,
        (["api", "calls"], &Method::GET) => calls::list(state, req).await,
        (["api", "calls", id], &Method::GET) => calls::get(state, req, id).await,
        (["api", "ice-servers"], &Method::GET) => ice::get(state, req).await,
        (["healthz"], &Method::GET) => Ok(health::healthz()),
        (["readyz"], &Method::GET) => Ok(health::readyz(state).await),
        (["metrics"], &Method::GET) => health::metrics(state, client),
        (["ws"], &Method::GET) => ws::upgrade(state, req).await,
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
