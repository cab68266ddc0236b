//! Contract §2.1 and the bad-input rules of §2: handshake, origin check, errors, limits,
//! revocation, heartbeat and resume — over real WebSocket clients.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{Backend, Closed, TEST_SECRET, TestApp, spawn_app_with};
use crate::{db_tests, db_tests_with};

async fn hello_gets_welcome(app: TestApp) {
    let u = app.user("alice").await;
    let c = app.ws(&u).await;
    let w = &c.welcome;
    assert_eq!(w["session_id"], u.session_id.as_str());
    assert_eq!(w["user"]["username"], "alice");
    assert_eq!(w["user"]["id"], u.id.as_str());
    assert!(w["connection_id"].is_string());
    assert!(w["resume_token"].as_str().unwrap().len() >= 32);
    assert_eq!(w["heartbeat_ms"], 20000);
    assert!(w["ice_servers"].is_array());
    assert_eq!(w["resumed"], false);
}

async fn bad_tokens_get_their_code_and_4401(app: TestApp) {
    let u = app.user("bob").await;
    let now = chrono::Utc::now().timestamp();
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"iss": "callsignal", "aud": "callsignal", "sub": u.id, "sid": u.session_id, "typ": "access",
                "iat": now - 1000, "nbf": now - 1000, "exp": now - 100, "jti": uuid::Uuid::new_v4()}),
        &jsonwebtoken::EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .unwrap();
    for (token, code) in [
        ("garbage".to_owned(), "invalid_token"),
        (expired, "token_expired"),
    ] {
        let mut c = app.ws_raw().await;
        c.send(json!({"type": "hello", "token": token})).await;
        c.expect_error(code).await;
        assert_eq!(c.closed().await, Closed::Code(4401));
    }
    // A hello without a string token is a bad token, not a missing hello.
    for hello in [
        json!({"type": "hello"}),
        json!({"type": "hello", "token": 5}),
        json!({"type": "hello", "token": null}),
    ] {
        let mut c = app.ws_raw().await;
        c.send(hello).await;
        c.expect_error("invalid_token").await;
        assert_eq!(c.closed().await, Closed::Code(4401));
    }
    app.post("/api/auth/logout", &json!({}), Some(&u.access))
        .await;
    let mut c = app.ws_raw().await;
    c.send(json!({"type": "hello", "token": u.access})).await;
    c.expect_error("session_revoked").await;
    assert_eq!(c.closed().await, Closed::Code(4401));
}

async fn anything_before_hello_is_refused(app: TestApp) {
    for first in [
        json!({"type": "ping"}),
        json!({"type": "call.invite", "to": "x"}),
    ] {
        let mut c = app.ws_raw().await;
        c.send(first).await;
        c.expect_error("hello_required").await;
        assert_eq!(c.closed().await, Closed::Code(4401));
    }
    let mut c = app.ws_raw().await;
    c.send_text("{not json").await;
    c.expect_error("hello_required").await;
    assert_eq!(c.closed().await, Closed::Code(4401));
}

async fn bad_messages_get_bad_message_and_the_socket_stays(app: TestApp) {
    let u = app.user("carol").await;
    let mut c = app.ws(&u).await;
    c.send_text("{not json").await;
    c.expect_error("bad_message").await;
    c.send(json!({"type": "no.such.type", "ref": "r1"})).await;
    assert_eq!(c.expect_error("bad_message").await["ref"], "r1");
    c.send(json!({"type": "call.accept", "ref": "r2"})).await;
    assert_eq!(c.expect_error("bad_message").await["ref"], "r2");
    c.send(json!({"type": "call.accept", "call_id": 42, "ref": "r3"}))
        .await;
    assert_eq!(c.expect_error("bad_message").await["ref"], "r3");
    c.send(json!({"type": "sdp", "call_id": uuid::Uuid::new_v4(), "description": {"type": "bogus", "sdp": ""}})).await;
    c.expect_error("bad_message").await;
    c.send(json!({"type": "call.invite", "to": "carol"})).await;
    c.expect_error("bad_message").await;
    c.stream
        .send(Message::binary(vec![1u8, 2, 3]))
        .await
        .unwrap();
    c.expect_error("bad_message").await;
    c.send(json!({"type": "ping", "ref": "p"})).await;
    let pong = c.expect("pong").await;
    assert_eq!(pong["ref"], "p", "still serving");
}

async fn oversize_frames_close_1009_and_the_server_keeps_serving(app: TestApp) {
    let u = app.user("dave").await;
    let mut c = app.ws(&u).await;
    let huge = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(70 * 1024));
    let _ = c.stream.send(Message::text(huge)).await;
    assert_eq!(c.closed().await, Closed::Code(1009));
    let mut again = app.ws(&u).await;
    again.send(json!({"type": "ping"})).await;
    again.expect("pong").await;
}

async fn disallowed_origin_is_refused_before_upgrade(app: TestApp) {
    let url = format!("ws://{}/ws", app.addr);
    let mut req = url.clone().into_client_request().unwrap();
    req.headers_mut()
        .insert("Origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    let mut same = url.clone().into_client_request().unwrap();
    same.headers_mut()
        .insert("Origin", format!("http://{}", app.addr).parse().unwrap());
    assert!(
        tokio_tungstenite::connect_async(same).await.is_ok(),
        "same origin is allowed"
    );
}

async fn ping_gets_pong_with_ref(app: TestApp) {
    let u = app.user("erin").await;
    let mut c = app.ws(&u).await;
    c.send(json!({"type": "ping", "ref": "abc"})).await;
    let p = c.expect("pong").await;
    assert_eq!(p["ref"], "abc");
}

async fn logout_closes_the_sessions_sockets(app: TestApp) {
    let u = app.user("frank").await;
    let other = app.login("frank").await;
    let mut c1 = app.ws(&u).await;
    let mut c2 = app.ws(&u).await;
    let mut c3 = app.ws(&other).await;
    let r = app
        .post("/api/auth/logout", &json!({}), Some(&u.access))
        .await;
    assert_eq!(r.status(), 204);
    for c in [&mut c1, &mut c2] {
        c.expect_error("session_revoked").await;
        assert_eq!(c.closed().await, Closed::Code(4401));
    }
    c3.send(json!({"type": "ping"})).await;
    c3.expect("pong").await;
}

async fn deleting_a_session_and_refresh_reuse_close_sockets(app: TestApp) {
    let u = app.user("grace").await;
    let v = app.login("grace").await;
    let mut cv = app.ws(&v).await;
    let r = app
        .delete(&format!("/api/sessions/{}", v.session_id), Some(&u.access))
        .await;
    assert_eq!(r.status(), 204);
    cv.expect_error("session_revoked").await;
    assert_eq!(cv.closed().await, Closed::Code(4401));

    let mut cu = app.ws(&u).await;
    app.refresh(&u.refresh).await;
    app.refresh(&u.refresh).await;
    cu.expect_error("session_revoked").await;
    assert_eq!(cu.closed().await, Closed::Code(4401));
}

async fn hello_after_welcome_is_bad_message(app: TestApp) {
    let u = app.user("heidi").await;
    let mut c = app.ws(&u).await;
    c.send(json!({"type": "hello", "token": u.access})).await;
    c.expect_error("bad_message").await;
}

db_tests!(
    hello_gets_welcome,
    bad_tokens_get_their_code_and_4401,
    anything_before_hello_is_refused,
    bad_messages_get_bad_message_and_the_socket_stays,
    oversize_frames_close_1009_and_the_server_keeps_serving,
    disallowed_origin_is_refused_before_upgrade,
    ping_gets_pong_with_ref,
    logout_closes_the_sessions_sockets,
    deleting_a_session_and_refresh_reuse_close_sockets,
    hello_after_welcome_is_bad_message,
);

async fn hello_deadline_is_enforced(app: TestApp) {
    let mut c = app.ws_raw().await;
    c.expect_error("hello_timeout").await;
    assert_eq!(c.closed().await, Closed::Code(4401));
}

async fn floods_get_rate_limited_then_closed_1008(app: TestApp) {
    let u = app.user("ivan").await;
    let mut c = app.ws(&u).await;
    for _ in 0..5 {
        c.send(json!({"type": "ping"})).await;
    }
    for _ in 0..5 {
        c.expect("pong").await;
    }
    for _ in 0..40 {
        let _ = c.stream.send(Message::text(r#"{"type":"ping"}"#)).await;
    }
    let mut limited = 0;
    let closed = loop {
        match tokio::time::timeout(
            Duration::from_secs(5),
            futures_util::StreamExt::next(&mut c.stream),
        )
        .await
        .unwrap()
        {
            Some(Ok(Message::Text(t))) if t.contains("rate_limited") => limited += 1,
            Some(Ok(Message::Text(_))) => {}
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(limited >= 1, "rate_limited errors came first");
    assert_eq!(closed, 1008);
}

db_tests_with!(|f| f.merge(("ws.hello_timeout_secs", 1)); hello_deadline_is_enforced);
db_tests_with!(
    |f| f.merge(("ws.rate_limit_per_sec", 1)).merge(("ws.rate_limit_burst", 10)).merge(("ws.rate_limit_strikes", 5));
    floods_get_rate_limited_then_closed_1008
);

#[tokio::test]
async fn connection_caps_are_enforced() {
    let app = spawn_app_with(Backend::Sqlite, |f| {
        f.merge(("ws.max_connections_per_user", 1))
    })
    .await;
    let u = app.user("judy").await;
    let _first = app.ws(&u).await;
    let mut second = app.ws_raw().await;
    second
        .send(json!({"type": "hello", "token": u.access}))
        .await;
    second.expect_error("too_many_connections").await;
    assert_eq!(second.closed().await, Closed::Code(1013));
}

/// Every socket is pinged each heartbeat interval (one wheel for all of them,
/// `ws/heartbeat.rs`), and the ping carries the highest `seq` written to it: 0 before any
/// numbered message, then the `seq` of the last one.
#[tokio::test]
async fn every_socket_is_pinged_each_interval_with_the_highest_seq_written() {
    use futures_util::StreamExt;
    let app = spawn_app_with(Backend::Sqlite, |f| f.merge(("ws.heartbeat_secs", 1))).await;
    let u = app.user("pia").await;
    let mut sockets = vec![];
    for _ in 0..3 {
        sockets.push(app.ws(&u).await);
    }
    // A numbered message to the last socket: a pong to its ping (`seq` 1).
    sockets[2].send(json!({"type": "ping", "ref": "r"})).await;
    assert_eq!(sockets[2].expect("pong").await["seq"], 1);
    for (i, c) in sockets.iter_mut().enumerate() {
        let expected = if i == 2 { 1u64 } else { 0 };
        let mut pings = 0;
        while pings < 2 {
            let frame = tokio::time::timeout(Duration::from_secs(5), c.stream.next())
                .await
                .expect("a ping within 5 s (heartbeat 1 s)")
                .expect("open")
                .expect("frame");
            match frame {
                Message::Ping(payload) => {
                    let mark = u64::from_be_bytes(payload.as_ref().try_into().expect("8 bytes"));
                    assert_eq!(mark, expected, "socket {i}");
                    pings += 1;
                }
                Message::Text(t) => panic!("socket {i}: unexpected {t}"),
                _ => {}
            }
        }
    }
}

#[tokio::test]
async fn silent_peers_are_dropped_after_two_heartbeats() {
    let app = spawn_app_with(Backend::Sqlite, |f| f.merge(("ws.heartbeat_secs", 1))).await;
    let u = app.user("kim").await;
    let mut c = app.ws(&u).await;
    // Do not read: tungstenite answers pings only while the client reads, so the server
    // hears nothing and must drop us after about two intervals.
    let conn = app
        .state
        .actors
        .connection(callsignal::domain::ConnectionId(
            c.connection_id().parse().unwrap(),
        ))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut attached = true;
    while attached && started.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let info =
            callsignal::actors::ask(&conn, callsignal::actors::connection::ConnectionMsg::Info)
                .await
                .unwrap();
        attached = info.attached;
    }
    assert!(!attached, "the silent socket was dropped");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "not before the heartbeat interval"
    );
    let stats = app.state.actors.stats().await.unwrap();
    assert_eq!(stats.connections, 1, "the connection waits for a resume");
    let _ = c.closed().await;
}

#[tokio::test]
async fn a_session_reaching_its_lifetime_closes_its_sockets() {
    let app = spawn_app_with(Backend::Sqlite, |f| f.merge(("auth.session_ttl_secs", 2))).await;
    let u = app.user("lena").await;
    let mut c = app.ws(&u).await;
    c.expect_error("session_revoked").await;
    assert_eq!(c.closed().await, Closed::Code(4401));
    assert_eq!(app.get("/api/me", Some(&u.access)).await.status(), 401);
}
