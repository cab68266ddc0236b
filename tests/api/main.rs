//! One integration-test binary: real server on port 0, fresh database per test, real HTTP and
//! WebSocket clients. Every test runs on SQLite, and on PostgreSQL when
//! `CALLSIGNAL_TEST_POSTGRES_URL` is set (required in CI).

#![allow(missing_docs, unreachable_pub, clippy::unwrap_used)]

mod helpers;

mod actors;
mod auth;
mod browser;
mod browser_ui;
mod calls;
mod cluster;
mod connections;
mod continuity;
mod deploy;
mod durability;
mod files;
mod health;
mod history;
mod logs;
mod openapi;
mod schema;
mod sessions;
mod signaling;
mod tls;
mod ws_attacks;
