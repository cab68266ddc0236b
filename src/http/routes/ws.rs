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
    // One `Origin` of visible ASCII, or none. A value that is not ASCII counted as "no Origin"
    // (allowed), and a second header went unchecked: both are refused (RFC 6454 §7: one
    // serialized origin, ASCII).
    let mut origins = headers.get_all(header::ORIGIN).iter();
    let origin = match (origins.next(), origins.next()) {
        (None, _) => return true,
        (Some(_), Some(_)) => return false,
        (Some(v), None) => match v.to_str() {
            Ok(origin) => origin,
            Err(_) => return false,
        },
    };
    // Compared as sent: a serialized origin has no path, not even `/` (RFC 6454 §6.2).
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

/// Logs a refused `Origin`: at warn level at most once per [`ORIGIN_WARN_EVERY`] (a
/// misconfigured `server.allowed_origins` shows; anyone on the internet cannot make the server
/// write one warn line per request), at debug level otherwise; the value as text, at most 100
/// characters. `callsignal_origin_refused_total` counts them all.
fn refused_origin_log(origin: Option<&hyper::header::HeaderValue>) {
    static LAST_WARN_SECS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let text = origin.map_or_else(
        || "(none)".to_owned(),
        |v| {
            String::from_utf8_lossy(v.as_bytes())
                .chars()
                .take(100)
                .collect()
        },
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST_WARN_SECS.load(Ordering::Relaxed);
    if now >= last + ORIGIN_WARN_EVERY.as_secs()
        && LAST_WARN_SECS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(origin = %text, "WebSocket upgrade refused: origin not allowed (further ones for a minute at debug level; callsignal_origin_refused_total counts them)");
    } else {
        tracing::debug!(origin = %text, "WebSocket upgrade refused: origin not allowed");
    }
}

/// At most one warn line per this long for refused origins.
const ORIGIN_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

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
        state.metrics.origin_refused.inc();
        refused_origin_log(headers.get(header::ORIGIN));
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
