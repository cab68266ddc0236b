//! `GET /ws`: checks the upgrade request and its `Origin` (403 before upgrading when the origin
//! is not allowed), answers 101 and hands the upgraded stream to [`crate::ws::socket::run`].
//! Tokens never travel in the URL: authentication happens in the first message (`hello`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, StatusCode};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::http::error::ApiError;
use crate::http::request::from_trusted_proxy;
use crate::http::response::{HttpResponse, empty};
use crate::state::AppState;

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether `origin` may open a socket: same scheme+host as the request, or on the allow-list.
/// No `Origin` at all (not a browser) is allowed. The request's scheme is `https` on a TLS
/// listener, or when a trusted proxy (`server.trusted_proxies`) says so in `X-Forwarded-Proto`.
pub fn origin_allowed(state: &AppState, headers: &HeaderMap, peer: SocketAddr) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let origin = origin.trim_end_matches('/');
    if state
        .settings
        .server
        .allowed_origins
        .iter()
        .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let server = &state.settings.server;
    let forwarded_https = from_trusted_proxy(peer, &server.trusted_proxies)
        && headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    let https = server.tls.paths().is_some() || forwarded_https;
    let scheme = if https { "https" } else { "http" };
    origin.eq_ignore_ascii_case(&format!("{scheme}://{host}"))
}

/// `GET /ws`
pub async fn upgrade(
    state: &Arc<AppState>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<HttpResponse, ApiError> {
    let headers = req.headers();
    if !header_has(headers, header::UPGRADE, "websocket")
        || !header_has(headers, header::CONNECTION, "upgrade")
    {
        return Err(ApiError::BadRequest("expected a WebSocket upgrade".into()));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return Err(ApiError::BadRequest(
            "unsupported WebSocket version (13 required)".into(),
        ));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(ApiError::BadRequest("missing Sec-WebSocket-Key".into()));
    };
    if !origin_allowed(state, headers, peer) {
        tracing::warn!(origin = ?headers.get(header::ORIGIN), "WebSocket upgrade refused: origin not allowed");
        return Err(ApiError::Forbidden("origin not allowed"));
    }
    if state.shutting_down.load(Ordering::Acquire) {
        return Err(ApiError::ServerBusy("the server is shutting down"));
    }
    let accept = derive_accept_key(key.as_bytes());
    let client = crate::http::request::client_addr(&req);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let state = state.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => crate::ws::socket::run(state, upgraded, client).await,
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });
    let mut resp = empty(StatusCode::SWITCHING_PROTOCOLS);
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    Ok(resp)
}
