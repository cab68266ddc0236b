//! Route handlers, one module per resource. Each handler takes the shared state and the
//! request and returns a response or an [`ApiError`](super::error::ApiError).

pub mod auth;
pub mod calls;
pub mod docs;
pub mod health;
pub mod ice;
pub mod sessions;
pub mod web;
pub mod ws;
