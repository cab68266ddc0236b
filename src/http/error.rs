//! The HTTP error boundary: one enum, each variant mapped to one status and one stable code,
//! rendered as the contract's envelope `{"error": {"code", "message"}}`.

use std::time::Duration;

use hyper::StatusCode;

use super::response::{HttpResponse, json};
use crate::store::StoreError;

/// Every error an HTTP handler can answer with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Not JSON, wrong shape, bad query parameter.
    #[error("{0}")]
    BadRequest(String),
    /// Username breaks the rules.
    #[error("{0}")]
    InvalidUsername(String),
    /// Password breaks the rules.
    #[error("{0}")]
    WeakPassword(String),
    /// Registration of an existing name.
    #[error("username is already taken")]
    UsernameTaken,
    /// Unknown user or wrong password (indistinguishable on purpose).
    #[error("invalid username or password")]
    InvalidCredentials,
    /// Login throttled, or registrations from this address over their hourly limit.
    #[error("too many attempts; retry later")]
    TooManyAttempts(Duration),
    /// Refresh token unknown, spent, or its session is over.
    #[error("invalid refresh token")]
    InvalidRefreshToken,
    /// Missing, invalid, expired or revoked access token.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Not found (or not yours).
    #[error("not found")]
    NotFound,
    /// Request body over the limit.
    #[error("request body is larger than 16 KiB")]
    BodyTooLarge,
    /// A JSON route got a body not declared `application/json` (RFC 9110 §15.5.16).
    #[error("the request body must be application/json")]
    UnsupportedMediaType,
    /// The request body did not arrive within `server.body_read_timeout_secs` (RFC 9110 §15.5.9).
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// Refused by policy (e.g. origin, metrics address).
    #[error("{0}")]
    Forbidden(&'static str),
    /// No such method on this route.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A bounded resource is saturated (password hashing, connection caps).
    #[error("{0}")]
    ServerBusy(&'static str),
    /// The database could not be reached or failed.
    #[error("the service is temporarily unavailable")]
    Unavailable,
    /// A bug; details are logged, not sent.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// Status and stable code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::InvalidUsername(_) => (StatusCode::BAD_REQUEST, "invalid_username"),
            Self::WeakPassword(_) => (StatusCode::BAD_REQUEST, "weak_password"),
            Self::UsernameTaken => (StatusCode::CONFLICT, "username_taken"),
            Self::InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            Self::TooManyAttempts(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts"),
            Self::InvalidRefreshToken => (StatusCode::UNAUTHORIZED, "invalid_refresh_token"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Self::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            Self::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::ServerBusy(_) => (StatusCode::SERVICE_UNAVAILABLE, "server_busy"),
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }

    /// Renders the envelope (with `Retry-After` where it applies).
    pub fn into_response(self) -> HttpResponse {
        let (status, code) = self.status_and_code();
        let body = serde_json::json!({"error": {"code": code, "message": self.to_string()}});
        let mut resp = json(status, &body);
        let retry = match &self {
            Self::TooManyAttempts(d) => Some(d.as_millis().div_ceil(1000).max(1) as u64),
            Self::ServerBusy(_) | Self::Unavailable => Some(1),
            _ => None,
        };
        if let Some(secs) = retry
            && let Ok(v) = hyper::header::HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(hyper::header::RETRY_AFTER, v);
        }
        if let Self::Unauthorized(_) = self {
            // A 401 names the scheme to use (RFC 9110 §11.6.1, §15.5.2; RFC 6750 §3).
            resp.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => Self::UsernameTaken,
            StoreError::Db(e) => {
                tracing::error!(error = %e, "database error while serving a request");
                Self::Unavailable
            }
        }
    }
}

impl From<crate::auth::hashing::HashError> for ApiError {
    fn from(e: crate::auth::hashing::HashError) -> Self {
        match e {
            crate::auth::hashing::HashError::Busy => {
                Self::ServerBusy("too many password checks in progress; retry shortly")
            }
            crate::auth::hashing::HashError::Internal(msg) => {
                tracing::error!(error = %msg, "password hashing failed");
                Self::Internal
            }
        }
    }
}
