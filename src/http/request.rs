//! Request-side helpers: the bounded JSON body reader, the bearer token, the client address,
//! and the authentication check every protected route runs.

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

/// Reads at most [`MAX_BODY_BYTES`] and parses JSON into `T`.
pub async fn json_body<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    let bytes = read_body(req).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("request body is not the expected JSON: {e}")))
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

/// The client address: the TCP peer, or the last `X-Forwarded-For` hop when the operator
/// trusts its proxy.
pub fn client_ip(headers: &HeaderMap, peer: SocketAddr, trust_forwarded: bool) -> IpAddr {
    if trust_forwarded {
        let forwarded = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok());
        if let Some(ip) = forwarded {
            return ip;
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
