//! `/api/sessions`: list the caller's live sessions, revoke one (closing its sockets).

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Serialize;

use crate::domain::SessionId;
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
}

/// `GET /api/sessions`
pub async fn list(state: &AppState, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let auth = authenticate(state, req.headers()).await?;
    let rows = sessions::list_live(&state.db, auth.user_id).await?;
    let views: Vec<_> = rows
        .into_iter()
        .map(|s| SessionView {
            current: s.id == auth.session_id.0,
            id: s.id,
            created_at: s.created_at,
            last_seen_at: s.last_seen_at,
            expires_at: s.expires_at,
            user_agent: s.user_agent,
        })
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
    let auth = authenticate(state, req.headers()).await?;
    let id = uuid::Uuid::try_parse(id).map_err(|_| ApiError::NotFound)?;
    let id = SessionId(id);
    if !sessions::revoke(&state.db, id, auth.user_id).await? {
        return Err(ApiError::NotFound);
    }
    state.actors.revoke_session(id);
    tracing::info!(user_id = %auth.user_id, session_id = %id, "session revoked by its user");
    Ok(empty(StatusCode::NO_CONTENT))
}
