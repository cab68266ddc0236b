//! `/healthz`, `/readyz`, `/metrics`, ICE servers, HTTP/2, header-read timeout, routing errors
//! and security headers.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::db_tests;
use crate::helpers::{Backend, TestApp, spawn_app_with};

async fn health_and_readiness(app: TestApp) {
    let r = app.get("/healthz", None).await;
    assert_eq!(r.status(), 200);
    let r = app.get("/readyz", None).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["ready"], true);
    assert_eq!(v["database"]["ok"], true);
    assert_eq!(v["actors"]["ok"], true);
}

async fn metrics_are_served_to_loopback(app: TestApp) {
    assert_eq!(app.get("/healthz", None).await.status(), 200);
    let r = app.get("/metrics", None).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = r.text().await.unwrap();
    for want in [
        "# TYPE callsignal_ws_connections gauge",
        "callsignal_http_requests_total{route=\"/healthz\",status=\"200\"} 1",
        "callsignal_http_request_duration_seconds_bucket{le=\"0.0005\",route=\"/healthz\"}",
        "callsignal_build_info{version=\"",
        "process_resident_memory_bytes",
        "callsignal_persistence_backlog 0",
    ] {
        assert!(text.contains(want), "missing {want:?}:\n{text}");
    }
}

async fn unknown_routes_and_methods(app: TestApp) {
    let r = app.get("/api/nope", None).await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "not_found");
    let r = app.http.put(app.url("/api/me")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let r = app.get("/api/me", None).await;
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.headers()["cache-control"], "no-store");
}

async fn ice_servers_need_auth_and_list_config(app: TestApp) {
    assert_eq!(app.get("/api/ice-servers", None).await.status(), 401);
    let u = app.user("ruth").await;
    let v: Value = app.get_json("/api/ice-servers", Some(&u.access)).await;
    assert!(v["ice_servers"].is_array());
    assert_eq!(v["ttl"], 3600);
}

async fn http2_is_served(app: TestApp) {
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
}

db_tests!(
    health_and_readiness,
    metrics_are_served_to_loopback,
    unknown_routes_and_methods,
    ice_servers_need_auth_and_list_config,
    http2_is_served
);

#[tokio::test]
async fn metrics_are_refused_to_other_addresses() {
    let app = spawn_app_with(Backend::Sqlite, |f| {
        f.merge(("metrics.allowed", vec!["10.0.0.0/8"]))
    })
    .await;
    let r = app.get("/metrics", None).await;
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn turn_credentials_are_time_limited_hmac() {
    let app = spawn_app_with(Backend::Sqlite, |f| {
        f.merge(("ice.turn_urls", vec!["turn:turn.example.org:3478"]))
            .merge(("ice.turn_secret", "turn-shared-secret"))
            .merge((
                "ice.servers",
                vec![serde_json::json!({"urls": ["stun:stun.example.org:3478"]})],
            ))
    })
    .await;
    let u = app.user("sybil").await;
    let v: Value = app.get_json("/api/ice-servers", Some(&u.access)).await;
    let servers = v["ice_servers"].as_array().unwrap();
    assert_eq!(servers.len(), 2);
    assert_eq!(servers[0]["urls"][0], "stun:stun.example.org:3478");
    let turn = &servers[1];
    let username = turn["username"].as_str().unwrap();
    let (expiry, uid) = username.split_once(':').unwrap();
    assert_eq!(uid, u.id);
    let expiry: i64 = expiry.parse().unwrap();
    assert!(expiry > chrono::Utc::now().timestamp());
    use base64::Engine;
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(b"turn-shared-secret").unwrap();
    mac.update(username.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(turn["credential"], expected);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_dropped() {
    let app = spawn_app_with(Backend::Sqlite, |f| {
        f.merge(("server.header_read_timeout_secs", 1))
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server closed the silent connection");
    let text = String::from_utf8_lossy(&buf);
    assert!(!text.contains("200 OK"), "{text}");
}

/// `X-Forwarded-For` is believed only from a trusted proxy, and then only its rightmost
/// untrusted entry (entries further left are the client's own words).
#[test]
fn forwarded_for_is_believed_only_from_trusted_proxies() {
    use callsignal::config::IpNet;
    use callsignal::http::request::client_ip;
    let mut h = hyper::HeaderMap::new();
    h.insert(
        "x-forwarded-for",
        "6.6.6.6, 203.0.113.9, 10.0.0.2".parse().unwrap(),
    );
    let proxy: std::net::SocketAddr = "10.0.0.1:5555".parse().unwrap();
    let stranger: std::net::SocketAddr = "198.51.100.7:5555".parse().unwrap();
    let trusted = [IpNet::parse("10.0.0.0/24").unwrap()];
    assert_eq!(client_ip(&h, proxy, &trusted).to_string(), "203.0.113.9");
    assert_eq!(
        client_ip(&h, stranger, &trusted).to_string(),
        "198.51.100.7"
    );
    assert_eq!(client_ip(&h, proxy, &[]).to_string(), "10.0.0.1");
    h.insert("x-forwarded-for", "garbage, 203.0.113.9".parse().unwrap());
    assert_eq!(client_ip(&h, proxy, &trusted).to_string(), "203.0.113.9");
    h.insert("x-forwarded-for", "203.0.113.9, garbage".parse().unwrap());
    assert_eq!(client_ip(&h, proxy, &trusted).to_string(), "10.0.0.1");
}

/// Every `GET` route answers `HEAD` with the same status and headers and no content (RFC 9110
/// §9.3.2: a general-purpose server supports both; uptime monitors and load balancers probe
/// with `HEAD`) — but the WebSocket upgrade, a `GET` only (RFC 6455 §4.1). Found by an
/// operator: `HEAD /healthz` was 405.
#[tokio::test]
async fn head_is_served_wherever_get_is_except_the_websocket_upgrade() {
    let app = spawn_app_with(Backend::Sqlite, |f| f).await;
    // Raw HTTP/1.1, so a body sent after the head would be seen.
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"HEAD /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = vec![];
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("the server closes after the response")
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").expect("a complete head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let get = app.get("/healthz", None).await;
    let get_type = get.headers()["content-type"].to_str().unwrap().to_owned();
    let get_len = get.bytes().await.unwrap().len();
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-type: {get_type}")),
        "the GET's content type: {head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {get_len}")),
        "the GET's length: {head}"
    );
    assert_eq!(rest, "", "no content after the head");

    for (path, status) in [
        ("/readyz", 200),
        ("/api/openapi.yaml", 200),
        ("/api/me", 401),
        ("/api/calls", 401),
        ("/", 200),
    ] {
        let r = app.http.head(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), status, "HEAD {path}");
        assert_eq!(
            app.get(path, None).await.status(),
            status,
            "GET {path} answers the same"
        );
    }

    let r = app.http.head(app.url("/ws")).send().await.unwrap();
    assert_eq!(r.status(), 405, "HEAD /ws");
    assert_eq!(r.headers()["allow"], "GET");
    let r = app.http.post(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD");
    let r = app
        .http
        .head(app.url("/api/auth/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405, "HEAD on a POST-only route");
    assert_eq!(r.headers()["allow"], "POST");
}
