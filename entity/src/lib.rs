//! SeaORM entities for the four tables of the contract (§3): `users`, `sessions`, `calls` and
//! `signaling_messages`. Hand code never lives here: query functions are in the server crate's
//! `store` module, so this crate stays a plain description of the schema.

pub mod calls;
pub mod sessions;
pub mod signaling_messages;
pub mod users;

/// Everything a query module needs in one import.
pub mod prelude {
    pub use super::calls::{CallStatus, Entity as Calls};
    pub use super::sessions::Entity as Sessions;
    pub use super::signaling_messages::{Entity as SignalingMessages, SignalingKind};
    pub use super::users::Entity as Users;
}
