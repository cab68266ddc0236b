//! Contract §1 session rows: list (live only, `current` flag), revoke (own only, 404 otherwise);
//! extensions: a readable device, the last address, and "sign out all other devices".

use serde_json::{Value, json};

use crate::helpers::{Closed, PASSWORD, TestApp, TestUser};
use crate::{db_tests, db_tests_with};

const CHROME_LINUX: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36";
const SAFARI_IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";

/// Logs `name` in with this `User-Agent` and, when given, `X-Forwarded-For`.
async fn login_as(app: &TestApp, name: &str, ua: &str, forwarded: Option<&str>) -> TestUser {
    let mut req = app
        .http
        .post(app.url("/api/auth/login"))
        .header("user-agent", ua)
        .json(&json!({"username": name, "password": PASSWORD}));
    if let Some(ip) = forwarded {
        req = req.header("x-forwarded-for", ip);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    TestUser {
        id: v["user"]["id"].as_str().unwrap().into(),
        access: v["access_token"].as_str().unwrap().into(),
        refresh: v["refresh_token"].as_str().unwrap().into(),
        session_id: v["session_id"].as_str().unwrap().into(),
    }
}

/// `GET /api/sessions` as `user`, optionally from a forwarded address.
async fn list(app: &TestApp, user: &TestUser, forwarded: Option<&str>) -> Vec<Value> {
    let mut req = app
        .http
        .get(app.url("/api/sessions"))
        .bearer_auth(&user.access);
    if let Some(ip) = forwarded {
        req = req.header("x-forwarded-for", ip);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["sessions"].as_array().unwrap().clone()
}

fn by_id<'a>(list: &'a [Value], user: &TestUser) -> &'a Value {
    list.iter()
        .find(|s| s["id"] == user.session_id.as_str())
        .unwrap_or_else(|| panic!("session {} in {list:?}", user.session_id))
}

async fn sessions_lists_live_sessions_with_current_flag(app: TestApp) {
    let a1 = app.user("olivia").await;
    let a2 = app.login("olivia").await;
    let a3 = app.login("olivia").await;
    app.post("/api/auth/logout", &json!({}), Some(&a3.access))
        .await;
    let r = app.get("/api/sessions", Some(&a1.access)).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let list = v["sessions"].as_array().unwrap();
    assert_eq!(list.len(), 2, "the logged-out session is not listed: {v}");
    let current: Vec<_> = list.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["id"], a1.session_id.as_str());
    assert!(list.iter().any(|s| s["id"] == a2.session_id.as_str()));
    for s in list {
        for k in ["created_at", "last_seen_at", "expires_at"] {
            assert!(s[k].is_string(), "{k} in {s}");
        }
    }
}

async fn delete_session_revokes_it_and_only_the_owners(app: TestApp) {
    let p1 = app.user("peggy").await;
    let p2 = app.login("peggy").await;
    let q = app.user("quentin").await;
    let other = app
        .delete(&format!("/api/sessions/{}", p2.session_id), Some(&q.access))
        .await;
    assert_eq!(other.status(), 404);
    let v: Value = other.json().await.unwrap();
    assert_eq!(v["error"]["code"], "not_found");
    let r = app
        .delete(
            &format!("/api/sessions/{}", p2.session_id),
            Some(&p1.access),
        )
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(app.get("/api/me", Some(&p2.access)).await.status(), 401);
    assert_eq!(app.get("/api/me", Some(&p1.access)).await.status(), 200);
    let again = app
        .delete(
            &format!("/api/sessions/{}", p2.session_id),
            Some(&p1.access),
        )
        .await;
    assert_eq!(again.status(), 404);
    let bogus = app
        .delete("/api/sessions/not-a-uuid", Some(&p1.access))
        .await;
    assert_eq!(bogus.status(), 404);
    let unauth = app
        .delete(&format!("/api/sessions/{}", p1.session_id), None)
        .await;
    assert_eq!(unauth.status(), 401);
    let _ = PASSWORD;
}

async fn sessions_show_device_and_last_address(app: TestApp) {
    app.register("rita").await;
    let desk = login_as(&app, "rita", CHROME_LINUX, Some("203.0.113.9")).await;
    let phone = login_as(&app, "rita", SAFARI_IPHONE, None).await;
    let list = list(&app, &desk, None).await;
    let d = by_id(&list, &desk);
    assert_eq!(d["device"], "Chrome 156 on Linux", "{d}");
    assert_eq!(d["browser"], "Chrome 156");
    assert_eq!(d["os"], "Linux");
    assert_eq!(d["user_agent"], CHROME_LINUX, "the raw field stays");
    // Forwarded headers are not trusted by default: the TCP peer is the address.
    assert_eq!(d["last_ip"], "127.0.0.1", "{d}");
    let p = by_id(&list, &phone);
    assert_eq!(p["device"], "Safari on iPhone", "{p}");
    assert_eq!(p["current"], false);
    for k in ["created_at", "last_seen_at", "expires_at", "current", "id"] {
        assert!(!p[k].is_null(), "{k} in {p}");
    }
}

async fn last_address_follows_the_session_behind_a_trusted_proxy(app: TestApp) {
    app.register("sven").await;
    let a = login_as(&app, "sven", CHROME_LINUX, Some("203.0.113.9")).await;
    let b = login_as(&app, "sven", SAFARI_IPHONE, Some("198.51.100.4")).await;
    let seen = list(&app, &a, Some("203.0.113.9")).await;
    assert_eq!(by_id(&seen, &a)["last_ip"], "203.0.113.9");
    assert_eq!(by_id(&seen, &b)["last_ip"], "198.51.100.4");

    // An authenticated request from a new address moves the session there at once.
    let moved = list(&app, &a, Some("192.0.2.77")).await;
    assert_eq!(by_id(&moved, &a)["last_ip"], "192.0.2.77", "{moved:?}");

    // So does a refresh, and a socket handshake.
    let r = app
        .http
        .post(app.url("/api/auth/refresh"))
        .header("x-forwarded-for", "192.0.2.78")
        .json(&json!({"refresh_token": b.refresh}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = list(&app, &a, Some("192.0.2.77")).await;
    assert_eq!(by_id(&seen, &b)["last_ip"], "192.0.2.78");

    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/ws", app.addr),
    )
    .unwrap();
    req.headers_mut()
        .insert("x-forwarded-for", "192.0.2.79".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        json!({"type": "hello", "token": a.access}).to_string(),
    ))
    .await
    .unwrap();
    let welcome = ws.next().await.unwrap().unwrap();
    assert!(
        welcome.to_text().unwrap().contains("\"welcome\""),
        "{welcome}"
    );
    let seen = list(&app, &b, Some("192.0.2.78")).await;
    assert_eq!(by_id(&seen, &a)["last_ip"], "192.0.2.79", "{seen:?}");
}

async fn revoke_others_signs_out_every_other_device_and_closes_its_sockets(app: TestApp) {
    let keep = app.user("tanja").await;
    let other = app.login("tanja").await;
    let third = app.login("tanja").await;
    let stranger = app.user("ulrich").await;
    let mut other_ws = app.ws(&other).await;
    let mut keep_ws = app.ws(&keep).await;
    let mut stranger_ws = app.ws(&stranger).await;

    let r = app
        .post(
            "/api/sessions/revoke-others",
            &json!({}),
            Some(&keep.access),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, json!({"revoked": 2}));

    other_ws.expect_error("session_revoked").await;
    assert_eq!(other_ws.closed().await, Closed::Code(4401));
    for gone in [&other, &third] {
        assert_eq!(app.get("/api/me", Some(&gone.access)).await.status(), 401);
        assert_eq!(app.refresh(&gone.refresh).await.status(), 401);
    }
    // The caller's own session, its socket and other users are untouched.
    assert_eq!(app.get("/api/me", Some(&keep.access)).await.status(), 200);
    let left = list(&app, &keep, None).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["id"], keep.session_id.as_str());
    for ws in [&mut keep_ws, &mut stranger_ws] {
        ws.send(json!({"type": "ping"})).await;
        ws.expect("pong").await;
    }
    assert_eq!(
        app.get("/api/me", Some(&stranger.access)).await.status(),
        200
    );

    // Nothing left to revoke; and no token, no revoking.
    let again = app
        .post(
            "/api/sessions/revoke-others",
            &json!({}),
            Some(&keep.access),
        )
        .await;
    assert_eq!(again.json::<Value>().await.unwrap(), json!({"revoked": 0}));
    let unauth = app
        .post("/api/sessions/revoke-others", &json!({}), None)
        .await;
    assert_eq!(unauth.status(), 401);
    let wrong_method = app
        .get("/api/sessions/revoke-others", Some(&keep.access))
        .await;
    assert_eq!(wrong_method.status(), 405);
}

db_tests!(
    sessions_lists_live_sessions_with_current_flag,
    delete_session_revokes_it_and_only_the_owners,
    sessions_show_device_and_last_address,
    revoke_others_signs_out_every_other_device_and_closes_its_sockets
);

db_tests_with!(|f| f.merge(("server.trusted_proxies", vec!["127.0.0.1/32"]));
    last_address_follows_the_session_behind_a_trusted_proxy
);
