//! callsignal: the signaling and account server for end-to-end encrypted 1:1 audio calls
//! between browsers. It never sees media; it handles identity, call state, routing of
//! signaling messages, and call records.
//!
//! Map of the crate:
//! - [`config`]: typed, layered settings (default.toml → file → env).
//! - [`domain`]: ids, usernames, passwords — types that can only hold valid values.
//! - [`auth`]: JWTs, refresh tokens, argon2id hashing, login throttling.
//! - [`store`]: SeaORM queries, one module per table.
//! - [`http`]: the hyper server, router, REST handlers and the `/ws` upgrade.
//! - [`ws`]: the signaling wire protocol and the per-socket task.
//! - [`actors`]: the supervised actor tree (root, registry, connections, calls, persistence).
//! - [`cluster`]: cluster mode over NATS (node membership, presence, stand-ins for remote
//!   connections and calls); absent without `cluster.nats_url`.
//! - [`ice`]: ICE server lists and TURN credentials.
//! - [`json`]: client-facing explanations of JSON of the wrong shape.
//! - [`metrics`], [`telemetry`], [`heap`]: observability.
//! - [`startup`], [`state`]: building and running the server.

pub mod actors;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod heap;
pub mod http;
pub mod ice;
pub mod json;
pub mod metrics;
pub mod probe;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod ws;
