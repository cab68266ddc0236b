//! Request-side helpers: the bounded JSON body reader, the bearer token, the client address,
//! and the authentication check every protected route runs.

use crate::config::IpNet;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use chrono::Utc;
use http_body_util::{BodyExt, Limited};
use hyper::Request;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::auth::jwt::TokenError;
use crate::domain::{SessionId, UserId};
use crate::state::AppState;
use crate::store::{self, sessions::Session};

/// Largest request body (contract §1).
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// `last_seen_at` is written at most this often per session, to keep reads cheap.
const TOUCH_EVERY_SECS: i64 = 60;

/// Whether the request declares a JSON body: `Content-Type: application/json`, with or without
/// parameters such as `charset` (RFC 8259 §11, RFC 9110 §8.3.1: media types are
/// case-insensitive). Requiring it keeps cross-site "simple requests" (`text/plain`, form types,
/// which browsers send without a CORS preflight) out of every JSON route.
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// Checks that the body is declared JSON, reads at most [`MAX_BODY_BYTES`] within
/// `server.body_read_timeout_secs`, and parses it into `T` with [`parse_json`]. Errors: 415
/// `unsupported_media_type`, 413 `body_too_large`, 408 `request_timeout`, 400 `bad_request`.
pub async fn json_body<T: DeserializeOwned>(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<T, ApiError> {
    if !is_json(req.headers()) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let deadline = std::time::Duration::from_secs(state.settings.server.body_read_timeout_secs);
    // A body trickled byte by byte would otherwise hold the request (and its connection, which
    // has no idle deadline while a request is in progress) forever.
    let bytes = tokio::time::timeout(deadline, read_body(req))
        .await
        .map_err(|_| ApiError::RequestTimeout)??;
    parse_json(&bytes)
}

/// UTF-8's byte order mark (U+FEFF).
const BOM: &[u8] = "\u{feff}".as_bytes();

/// What a body or frame that begins with [`BOM`] is told (RFC 8259 §8.1); shared with the
/// WebSocket parser (`ws::protocol::parse`).
pub(crate) const BOM_FOUND: &str =
    "it begins with a byte order mark (U+FEFF), which JSON text must not (RFC 8259 §8.1)";

/// Parses a request body as JSON into `T`, as every JSON route does (separate from reading the
/// body so that it can be fuzzed, see `fuzz/`). Not a JSON object, not `T`'s shape (unknown
/// fields are ignored) or beginning with a byte order mark → [`ApiError::BadRequest`], i.e.
/// 400 `bad_request` (contract §1), whose message names the field at fault
/// ([`crate::json::explain`]).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Every JSON body is an object (contract §1): serde would also read a struct from a JSON
    // array of its fields in order (`["alice","password"]` registered alice).
    // A byte order mark is not JSON text (RFC 8259 §8.1: "MUST NOT add a byte order mark"):
    // said as such, not as "not an object", so whoever sent it knows what to remove.
    if bytes.starts_with(BOM) {
        return Err(ApiError::BadRequest(format!(
            "request body is not the expected JSON: {BOM_FOUND}"
        )));
    }
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::BadRequest(
            "request body is not the expected JSON: a JSON object is required".into(),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        // The field and what it should hold, in JSON's terms (crate::json), when the body is
        // text; serde's own words otherwise.
        let why = std::str::from_utf8(bytes)
            .ok()
            .and_then(crate::json::explain::<T>)
            .unwrap_or_else(|| e.to_string());
        ApiError::BadRequest(format!("request body is not the expected JSON: {why}"))
    })
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(ApiError::BodyTooLarge);
    }
    match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::BodyTooLarge),
        Err(_) => Err(ApiError::BadRequest(
            "could not read the request body".into(),
        )),
    }
}

/// The bearer token of the `Authorization` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// Whether the direct peer is one of `trusted` reverse proxies.
pub fn from_trusted_proxy(peer: SocketAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(peer.ip()))
}

/// The client's address: the direct peer, unless the peer is a trusted reverse proxy — then the
/// rightmost `X-Forwarded-For` entry that is not itself a trusted proxy (entries to its left
/// were written by the client and prove nothing; MDN "X-Forwarded-For", security section).
pub fn client_ip(headers: &HeaderMap, peer: SocketAddr, trusted: &[IpNet]) -> IpAddr {
    if !from_trusted_proxy(peer, trusted) {
        return peer.ip();
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.into_iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) if trusted.iter().any(|n| n.contains(ip)) => continue,
            Ok(ip) => return ip,
            // Unreadable before an untrusted entry: nothing further left can be believed.
            Err(_) => break,
        }
    }
    peer.ip()
}

/// The client address [`client_ip`] derived for a request, put into its extensions by the
/// router so handlers deep down (authentication, the socket handshake) can record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The [`ClientAddr`] the router attached to `req`, if any.
pub fn client_addr<B>(req: &Request<B>) -> Option<IpAddr> {
    req.extensions().get::<ClientAddr>().map(|c| c.0)
}

/// `User-Agent`, if any.
pub fn user_agent(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
}

/// Who made an authenticated request.
pub struct Authenticated {
    /// The user.
    pub user_id: UserId,
    /// The login session behind the token.
    pub session_id: SessionId,
}

/// Why a token/session pair does not authenticate; shared by HTTP and the WebSocket hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// Malformed, forged, wrongly signed.
    InvalidToken,
    /// Past `exp`.
    TokenExpired,
    /// Session revoked, expired or gone.
    SessionRevoked,
    /// The database could not be asked.
    Unavailable,
}

/// Verifies an access token and that its session is live; returns the identity and session.
/// Records the use (time, and `client` when known) on the session row.
pub async fn verify_token(
    state: &AppState,
    token: &str,
    client: Option<IpAddr>,
) -> Result<(Authenticated, Session), AuthFailure> {
    let identity = state.tokens.verify(token).map_err(|e| match e {
        TokenError::Expired => AuthFailure::TokenExpired,
        TokenError::Invalid => AuthFailure::InvalidToken,
    })?;
    let session = store::sessions::get(&state.db, identity.session_id)
        .await
        .map_err(|_| AuthFailure::Unavailable)?
        .filter(|s| s.user_id == identity.user_id.0)
        .ok_or(AuthFailure::SessionRevoked)?;
    let now = Utc::now();
    if !store::sessions::is_live(&session, now) {
        return Err(AuthFailure::SessionRevoked);
    }
    // A new address is written at once (the sessions list must show where a device is now);
    // the time only every TOUCH_EVERY_SECS.
    let moved = client.is_some_and(|ip| session.last_ip.as_deref() != Some(&ip.to_string()));
    if moved || (now - session.last_seen_at).num_seconds() >= TOUCH_EVERY_SECS {
        // Best effort: a failed touch must not fail the request.
        let _ = store::sessions::touch(&state.db, identity.session_id, client).await;
    }
    Ok((
        Authenticated {
            user_id: identity.user_id,
            session_id: identity.session_id,
        },
        session,
    ))
}

/// The authentication check of protected routes.
pub async fn authenticate<B>(
    state: &AppState,
    req: &Request<B>,
) -> Result<Authenticated, ApiError> {
    let token = bearer(req.headers()).ok_or(ApiError::Unauthorized("missing bearer token"))?;
    verify_token(state, token, client_addr(req))
        .await
        .map(|(a, _)| a)
        .map_err(|f| match f {
            AuthFailure::InvalidToken => ApiError::Unauthorized("invalid token"),
            AuthFailure::TokenExpired => ApiError::Unauthorized("token expired"),
            AuthFailure::SessionRevoked => ApiError::Unauthorized("session revoked or expired"),
            AuthFailure::Unavailable => ApiError::Unavailable,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UTF-8 BOM before a JSON body got "a JSON object is required" (session 9's tester):
    /// true, but it did not say what to remove.
    #[test]
    fn a_byte_order_mark_is_named() {
        #[derive(Debug, serde::Deserialize)]
        struct Body {
            #[allow(dead_code)]
            username: String,
        }
        let e = parse_json::<Body>("\u{feff}{\"username\":\"eve\"}".as_bytes())
            .expect_err("a BOM is refused");
        let ApiError::BadRequest(message) = e else {
            panic!("{e:?}");
        };
        assert_eq!(
            message,
            "request body is not the expected JSON: it begins with a byte order mark (U+FEFF), \
             which JSON text must not (RFC 8259 §8.1)"
        );
        assert!(parse_json::<Body>(b" {\"username\":\"eve\"}").is_ok());
    }

    #[test]
    fn only_application_json_is_json() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(v));
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        for other in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
            "text/json",
        ] {
            assert!(!with(other), "{other}");
        }
        assert!(!is_json(&HeaderMap::new()), "missing");
    }
}
