//! `/api/calls`: the caller's call history, newest first, with paging.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use crate::domain::CallId;
use crate::http::error::ApiError;
use crate::http::request::authenticate;
use crate::http::response::{HttpResponse, json};
use crate::state::AppState;
use crate::store::calls;

/// Page size when `limit` is absent.
const DEFAULT_LIMIT: u64 = 20;
/// Largest page.
const MAX_LIMIT: u64 = 100;

fn parse_query(query: Option<&str>) -> Result<(u64, Option<CallId>), ApiError> {
    let mut limit = DEFAULT_LIMIT;
    let mut before = None;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "limit" => {
                limit = v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::BadRequest("limit must be an integer from 1 to 100".into())
                    })?;
            }
            "before" => {
                before = Some(CallId(uuid::Uuid::try_parse(v).map_err(|_| {
                    ApiError::BadRequest("before must be a call id".into())
                })?));
            }
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {k:?}"
                )));
            }
        }
    }
    Ok((limit, before))
}

/// `GET /api/calls?limit=&before=`
pub async fn list(state: &AppState, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let auth = authenticate(state, &req).await?;
    let (limit, before) = parse_query(req.uri().query())?;
    let calls = calls::list_for_user(&state.db, auth.user_id, limit, before)
        .await?
        .ok_or_else(|| ApiError::BadRequest("before is not one of your calls".into()))?;
    Ok(json(StatusCode::OK, &serde_json::json!({ "calls": calls })))
}

/// `GET /api/calls/{id}`
pub async fn get(
    state: &AppState,
    req: Request<Incoming>,
    id: &str,
) -> Result<HttpResponse, ApiError> {
    let auth = authenticate(state, &req).await?;
    let id = CallId(uuid::Uuid::try_parse(id).map_err(|_| ApiError::NotFound)?);
    let call = calls::get_for_user(&state.db, auth.user_id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(json(StatusCode::OK, &call))
}
