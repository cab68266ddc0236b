//! Authentication: access tokens ([`jwt`]), password hashing off the async workers
//! ([`hashing`]), refresh tokens ([`refresh`]), login throttling ([`throttle`]), the
//! registration rate limit ([`register_limit`]) and the JWT key's provenance ([`secret`]).
//! Nothing here touches HTTP or the database.

pub mod hashing;
pub mod jwt;
pub mod refresh;
pub mod register_limit;
pub mod secret;
pub mod throttle;
