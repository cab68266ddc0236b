//! `GET /api/ice-servers`: the ICE servers a client should use, with short-lived TURN
//! credentials when a TURN secret is configured.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use crate::http::error::ApiError;
use crate::http::request::authenticate;
use crate::http::response::{HttpResponse, json};
use crate::ice;
use crate::state::AppState;

/// `GET /api/ice-servers`
pub async fn get(state: &AppState, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let auth = authenticate(state, &req).await?;
    let servers = ice::servers_for(&state.settings.ice, auth.user_id);
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "ice_servers": servers, "ttl": state.settings.ice.ttl_secs }),
    ))
}
