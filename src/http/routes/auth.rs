//! `/api/auth/*` and `/api/me`: register, login (throttled, enumeration-safe), refresh with
//! rotation and reuse detection, logout.

use std::net::IpAddr;

use chrono::Utc;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::{Deserialize, Serialize};

use crate::domain::{Password, SessionId, UserRef, Username};
use crate::http::error::ApiError;
use crate::http::request::{authenticate, json_body, user_agent};
use crate::http::response::{HttpResponse, empty, json};
use crate::state::AppState;
use crate::store::{self, sessions};

/// `{username, password}`: the body of `POST /api/auth/register` and `POST /api/auth/login`.
/// Both fields are required strings; unknown fields are ignored. The rules of each field are
/// checked afterwards ([`Username::parse`], [`Password::parse`]), not by the parser.
#[derive(Debug, Deserialize)]
pub struct Credentials {
    /// The username as sent (not yet lower-cased or validated).
    pub username: String,
    /// The password as sent.
    pub password: String,
}

/// `{refresh_token}`: the body of `POST /api/auth/refresh`; the token is checked afterwards
/// ([`crate::auth::refresh::RefreshTokens::parse`]).
#[derive(Debug, Deserialize)]
pub struct RefreshRequest {
    /// The refresh token as sent.
    pub refresh_token: String,
}

/// `{id, username, created_at}`.
#[derive(Serialize)]
struct UserView {
    id: uuid::Uuid,
    username: String,
    created_at: chrono::DateTime<Utc>,
}

/// The login/refresh answer.
#[derive(Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    refresh_token: String,
    session_id: SessionId,
    user: UserRef,
}

/// `POST /api/auth/register`. Limited per client address before any other work (429
/// `too_many_attempts`); hashes in the registration lane, which cannot starve logins.
pub async fn register(
    state: &AppState,
    req: Request<Incoming>,
    client: IpAddr,
) -> Result<HttpResponse, ApiError> {
    let body: Credentials = json_body(state, req).await?;
    state
        .registrations
        .take(client)
        .map_err(ApiError::TooManyAttempts)?;
    let username =
        Username::parse(&body.username).map_err(|e| ApiError::InvalidUsername(e.to_string()))?;
    let password =
        Password::parse(body.password).map_err(|e| ApiError::WeakPassword(e.to_string()))?;
    if store::users::find_by_username(&state.db, &username)
        .await?
        .is_some()
    {
        return Err(ApiError::UsernameTaken);
    }
    let hash = state.hasher.hash(password.expose().to_owned()).await?;
    let user = store::users::insert(&state.db, &username, hash).await?;
    tracing::info!(user_id = %user.user.id, "user registered");
    Ok(json(
        StatusCode::CREATED,
        &UserView {
            id: user.user.id.0,
            username: user.user.username.to_string(),
            created_at: user.created_at,
        },
    ))
}

/// `POST /api/auth/login`
pub async fn login(
    state: &AppState,
    req: Request<Incoming>,
    client: IpAddr,
) -> Result<HttpResponse, ApiError> {
    let ua = user_agent(req.headers()).map(str::to_owned);
    let body: Credentials = json_body(state, req).await?;
    // Counted before the expensive check, so parallel attempts cannot outrun the throttle.
    let attempt = state
        .throttle
        .begin(&body.username, client)
        .map_err(|wait| {
            state.metrics.login_throttled.inc();
            state
                .metrics
                .logins
                .get_or_create(&crate::metrics::OutcomeLabel {
                    outcome: "throttled",
                })
                .inc();
            ApiError::TooManyAttempts(wait)
        })?;
    // An invalid name cannot exist, but it must cost and answer like a wrong password.
    let user = match Username::parse(&body.username) {
        Ok(name) => store::users::find_by_username(&state.db, &name).await,
        Err(_) => Ok(None),
    };
    let user = match user {
        Ok(user) => user,
        Err(e) => {
            attempt.not_checked();
            return Err(e.into());
        }
    };
    let phc = user.as_ref().map(|u| u.password_hash.clone());
    let verified = match state.hasher.verify(body.password, phc).await {
        Ok(verified) => verified,
        Err(e) => {
            // 503 before any verification: no guess was made.
            attempt.not_checked();
            return Err(e.into());
        }
    };
    let Some(user) = user.filter(|_| verified) else {
        // The attempt stays counted.
        state.metrics.login_failures.inc();
        state
            .metrics
            .logins
            .get_or_create(&crate::metrics::OutcomeLabel { outcome: "failure" })
            .inc();
        return Err(ApiError::InvalidCredentials);
    };
    attempt.succeeded();
    state
        .metrics
        .logins
        .get_or_create(&crate::metrics::OutcomeLabel { outcome: "success" })
        .inc();
    let session_id = SessionId::new();
    let (refresh_token, refresh_hash) = state.refresh.mint(session_id);
    let ttl = chrono::Duration::seconds(state.settings.auth.session_ttl_secs as i64);
    sessions::create(
        &state.db,
        session_id,
        user.user.id,
        refresh_hash,
        ttl,
        ua.as_deref(),
        client,
    )
    .await?;
    tracing::info!(user_id = %user.user.id, session_id = %session_id, "login");
    Ok(token_response(state, user.user, session_id, refresh_token))
}

fn token_response(
    state: &AppState,
    user: UserRef,
    session_id: SessionId,
    refresh_token: String,
) -> HttpResponse {
    json(
        StatusCode::OK,
        &TokenResponse {
            access_token: state.tokens.issue(user.id, session_id),
            token_type: "Bearer",
            expires_in: state.tokens.ttl_secs(),
            refresh_token,
            session_id,
            user,
        },
    )
}

/// `POST /api/auth/refresh`
pub async fn refresh(
    state: &AppState,
    req: Request<Incoming>,
    client: IpAddr,
) -> Result<HttpResponse, ApiError> {
    let body: RefreshRequest = json_body(state, req).await?;
    let presented = state
        .refresh
        .parse(&body.refresh_token)
        .ok_or(ApiError::InvalidRefreshToken)?;
    let session = sessions::get(&state.db, presented.session_id)
        .await?
        .filter(|s| sessions::is_live(s, Utc::now()))
        .ok_or(ApiError::InvalidRefreshToken)?;
    let user_id = crate::domain::UserId(session.user_id);
    let current = crate::auth::refresh::hashes_equal(&presented.hash, &session.refresh_token_hash);
    let (new_token, new_hash) = state.refresh.mint(presented.session_id);
    if !current
        || !sessions::rotate_refresh(
            &state.db,
            presented.session_id,
            &presented.hash,
            new_hash,
            client,
        )
        .await?
    {
        // A genuine token of this session that is no longer current: it was spent, so someone
        // holds a copy. Revoke the whole session.
        sessions::revoke(&state.db, presented.session_id, user_id).await?;
        state.actors.revoke_session(presented.session_id);
        tracing::warn!(session_id = %presented.session_id, user_id = %user_id,
            "spent refresh token presented again: session revoked");
        return Err(ApiError::InvalidRefreshToken);
    }
    let user = store::users::find_by_id(&state.db, user_id)
        .await?
        .ok_or(ApiError::InvalidRefreshToken)?;
    Ok(token_response(
        state,
        user.user,
        presented.session_id,
        new_token,
    ))
}

/// `POST /api/auth/logout`
pub async fn logout(state: &AppState, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let auth = authenticate(state, &req).await?;
    sessions::revoke(&state.db, auth.session_id, auth.user_id).await?;
    state.actors.revoke_session(auth.session_id);
    tracing::info!(user_id = %auth.user_id, session_id = %auth.session_id, "logout");
    Ok(empty(StatusCode::NO_CONTENT))
}

/// `GET /api/me`
pub async fn me(state: &AppState, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let auth = authenticate(state, &req).await?;
    let user = store::users::find_by_id(&state.db, auth.user_id)
        .await?
        .ok_or(ApiError::Unauthorized("user no longer exists"))?;
    Ok(json(
        StatusCode::OK,
        &UserView {
            id: user.user.id.0,
            username: user.user.username.to_string(),
            created_at: user.created_at,
        },
    ))
}
