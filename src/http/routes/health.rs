//! `/healthz` (process alive), `/readyz` (database, actor tree and, in a cluster, NATS up) and `/metrics`
//! (Prometheus text, allowed addresses only).

use std::net::IpAddr;

use hyper::StatusCode;

use crate::config::IpNet;
use crate::http::error::ApiError;
use crate::http::response::{HttpResponse, bytes, json};
use crate::state::AppState;
use crate::store;

/// `GET /healthz`
pub fn healthz() -> HttpResponse {
    json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// `GET /readyz`
pub async fn readyz(state: &AppState) -> HttpResponse {
    let database = store::ping(&state.db).await;
    let actors = state.actors.health();
    let persistence = state.actors.persistence.health();
    let cluster = state.actors.cluster.as_ref().map(|c| c.status());
    let ready = database.is_ok()
        && actors.is_ok()
        && persistence.is_ok()
        && cluster.as_ref().is_none_or(|c| c.ok);
    let part = |r: &Result<(), String>| match r {
        Ok(()) => serde_json::json!({"ok": true}),
        Err(why) => serde_json::json!({"ok": false, "error": why}),
    };
    let mut body = serde_json::json!({
        "ready": ready,
        "database": part(&database),
        "actors": part(&actors),
        "persistence": part(&persistence),
    });
    if let Some(c) = cluster {
        body["cluster"] = serde_json::json!(c);
    }
    json(
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &body,
    )
}

/// `GET /metrics`
pub fn metrics(state: &AppState, client: IpAddr) -> Result<HttpResponse, ApiError> {
    let allowed = state
        .settings
        .metrics
        .allowed
        .iter()
        .filter_map(|n| IpNet::parse(n))
        .any(|net| net.contains(client));
    if !allowed {
        return Err(ApiError::Forbidden(
            "metrics are not served to this address",
        ));
    }
    let text = state.metrics.render(crate::metrics::Snapshot {
        persistence_backlog: state.actors.persistence.backlog(),
        cluster: state
            .actors
            .cluster
            .as_ref()
            .map(|c| (c.connected(), c.live_nodes().len())),
    });
    Ok(bytes(
        StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        text,
    ))
}
