//! `/api/sessions`: list the caller's live sessions (with a readable device name and the last
//! address), revoke one, or revoke every other one; revoking closes the sessions' sockets.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Serialize;

use crate::domain::{Device, SessionId};
use crate::http::error::ApiError;
use crate::http::request::authenticate;
use crate::http::response::{HttpResponse, empty, json};
use crate::state::AppState;
use crate::store::sessions;

#[derive(Serialize)]
struct SessionView {
    id: uuid::Uuid,
    created_at: chrono::DateTime<chrono::Utc>,
    last_seen_at: chrono::DateTime<chrono::Utc>,
    expires_at: chrono::DateTime<chrono::Utc>,
    user_agent: Option<String>,
    current: bool,
    /// Extension: "Chrome 156 on Linux", from `user_agent`.
    device: String,
    /// Extension: the browser part of `device` ("Chrome 156"), null when unknown.
    browser: Option<String>,
    /// Extension: the system part of `device` ("Linux"), null when unknown.
    os: Option<String>,
    /// Extension: the address of the session's last use, null if never recorded.
    last_ip: Option<String>,
}

impl SessionView {
    fn new(s: sessions::Session, current: SessionId) -> SessionView {
        let device = Device::from_user_agent(s.user_agent.as_deref().unwrap_or(""));
        SessionView {
            current: s.id == current.0,
            id: s.id,
            created_at: s.created_at,
            last_seen_at: s.last_seen_at,
            expires_at: s.expires_at,
            device: device.name(),
            browser: device.browser,
            os: device.os,
            user_agent: s.user_agent,
            last_ip: s.last_ip,
        }
    }
}

/// `GET /api/sessions`
pub async fn list(state: &AppState, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let auth = authenticate(state, &req).await?;
    let rows = sessions::list_live(&state.db, auth.user_id).await?;
    let views: Vec<_> = rows
        .into_iter()
        .map(|s| SessionView::new(s, auth.session_id))
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "sessions": views }),
    ))
}

/// `DELETE /api/sessions/{id}`
pub async fn delete(
    state: &AppState,
    req: Request<Incoming>,
    id: &str,
) -> Result<HttpResponse, ApiError> {
    let auth = authenticate(state, &req).await?;
    let id = uuid::Uuid::try_parse(id).map_err(|_| ApiError::NotFound)?;
    let id = SessionId(id);
    if !sessions::revoke(&state.db, id, auth.user_id).await? {
        return Err(ApiError::NotFound);
    }
    state.actors.revoke_session(id);
    tracing::info!(user_id = %auth.user_id, session_id = %id, "session revoked by its user");
    Ok(empty(StatusCode::NO_CONTENT))
}

/// `POST /api/sessions/revoke-others` (extension): signs out every other device of the caller.
pub async fn revoke_others(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let auth = authenticate(state, &req).await?;
    let revoked = sessions::revoke_others(&state.db, auth.user_id, auth.session_id).await?;
    // After the database write, like a single revoke: a socket that authenticates meanwhile
    // re-reads its session after registering and sees the revocation (see ws::socket).
    for id in &revoked {
        state.actors.revoke_session(*id);
    }
    tracing::info!(user_id = %auth.user_id, count = revoked.len(), "other sessions revoked by their user");
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "revoked": revoked.len() }),
    ))
}
