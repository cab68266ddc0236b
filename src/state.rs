//! The state shared by every HTTP handler and socket task. Everything in it is either immutable
//! after start or internally synchronised; mutable call state lives in actors, not here.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use sea_orm::DatabaseConnection;

use crate::actors::ActorSystem;
use crate::auth::hashing::PasswordHasher;
use crate::auth::jwt::TokenIssuer;
use crate::auth::refresh::RefreshTokens;
use crate::auth::register_limit::RegistrationLimit;
use crate::auth::throttle::LoginThrottle;
use crate::config::Settings;
use crate::metrics::Metrics;

/// Shared application state.
pub struct AppState {
    /// Settings.
    pub settings: Arc<Settings>,
    /// Database pool.
    pub db: DatabaseConnection,
    /// Access tokens.
    pub tokens: TokenIssuer,
    /// Refresh tokens.
    pub refresh: RefreshTokens,
    /// Bounded argon2id hasher.
    pub hasher: PasswordHasher,
    /// Login throttle.
    pub throttle: LoginThrottle,
    /// Registration rate limit per address.
    pub registrations: RegistrationLimit,
    /// The actor tree.
    pub actors: ActorSystem,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Set when shutdown begins: new sockets are refused.
    pub shutting_down: AtomicBool,
    /// The heartbeat wheel of every socket (`ws.heartbeat_secs`).
    pub heartbeats: Arc<crate::ws::heartbeat::Heartbeats>,
}
