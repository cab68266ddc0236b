//! Domain types that carry the rules: ids as newtypes, a [`Username`] that cannot exist
//! unvalidated, a [`Password`] checked against the contract's rules, the [`address_key`]
//! per-address limits count by, and a [`Device`] read from a `User-Agent`. No I/O here.

mod address;
mod device;
mod ids;
mod password;
mod username;

pub use address::address_key;
pub use device::Device;
pub use ids::{CallId, ConnectionId, SessionId, UserId};
pub use password::{Password, PasswordError};
pub use username::{Username, UsernameError};

/// A user as shown on the wire: `{id, username}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserRef {
    /// The user's id.
    pub id: UserId,
    /// The user's name.
    pub username: Username,
}
