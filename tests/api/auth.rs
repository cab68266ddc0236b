//! Contract §1 auth rows: register, login, refresh, logout, me — success and failure rows.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::helpers::{Closed, PASSWORD, TEST_SECRET, TestApp, logs};
use crate::{db_tests, db_tests_with};

async fn error_code(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.expect("json error body");
    (
        status,
        v["error"]["code"].as_str().expect("error.code").to_owned(),
    )
}

async fn register_returns_201_and_stores_lower_case(app: TestApp) {
    let v = app.register("Alice").await;
    assert_eq!(v["username"], "alice");
    assert!(uuid::Uuid::parse_str(v["id"].as_str().unwrap()).is_ok());
    assert!(v["created_at"].as_str().unwrap().ends_with('Z'));
    let r = app
        .post(
            "/api/auth/register",
            &json!({"username": "ALICE", "password": PASSWORD}),
            None,
        )
        .await;
    assert_eq!(error_code(r).await, (409, "username_taken".into()));
}

async fn register_rejects_invalid_usernames(app: TestApp) {
    for name in ["ab", "has space", "ünicode", &"x".repeat(33), ""] {
        let r = app
            .post(
                "/api/auth/register",
                &json!({"username": name, "password": PASSWORD}),
                None,
            )
            .await;
        assert_eq!(
            error_code(r).await,
            (400, "invalid_username".into()),
            "{name:?}"
        );
    }
}

async fn register_rejects_weak_passwords(app: TestApp) {
    for pw in ["short", "password123", "qwertyuiop", &"x".repeat(129)] {
        let r = app
            .post(
                "/api/auth/register",
                &json!({"username": "bob", "password": pw}),
                None,
            )
            .await;
        assert_eq!(error_code(r).await, (400, "weak_password".into()), "{pw:?}");
    }
    // 128 scalar values is fine and is stored untruncated: logging in with 127 of them fails.
    let long = "é".repeat(128);
    let r = app
        .post(
            "/api/auth/register",
            &json!({"username": "bob", "password": long}),
            None,
        )
        .await;
    assert_eq!(r.status(), 201);
    let r = app
        .post(
            "/api/auth/login",
            &json!({"username": "bob", "password": "é".repeat(127)}),
            None,
        )
        .await;
    assert_eq!(r.status(), 401);
    let r = app
        .post(
            "/api/auth/login",
            &json!({"username": "bob", "password": long}),
            None,
        )
        .await;
    assert_eq!(r.status(), 200);
}

async fn password_is_stored_as_argon2id_phc(app: TestApp) {
    app.register("carol").await;
    let db = app.db().await;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let u = entity::users::Entity::find()
        .filter(entity::users::Column::Username.eq("carol"))
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert!(
        u.password_hash
            .starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{}",
        u.password_hash
    );
    assert!(!u.password_hash.contains(PASSWORD));
}

async fn malformed_bodies_are_400_and_large_ones_413(app: TestApp) {
    let r = app
        .http
        .post(app.url("/api/auth/register"))
        .header("content-type", "application/json")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (400, "bad_request".into()));
    let r = app
        .post("/api/auth/register", &json!({"username": 5}), None)
        .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "bad_request");
    // The field at fault, in JSON's terms (serde said "expected a string" for no field, or
    // named Rust types such as `u64` and internal structs).
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`username`: invalid type: an integer, expected a string"),
        "{message}"
    );
    // The offending value is never echoed: a password sent as a number stays out of the reply.
    let r = app
        .post(
            "/api/auth/login",
            &json!({"username": "dave", "password": 1234567890123u64}),
            None,
        )
        .await;
    let v: Value = r.json().await.unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`password`") && !message.contains("1234567890123"),
        "{message}"
    );
    // A 401 names its scheme (RFC 9110 §15.5.2).
    let r = app.get("/api/me", None).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = app
        .post(
            "/api/auth/login",
            &json!({"username": "dave", "password": ["x"]}),
            None,
        )
        .await;
    let v: Value = r.json().await.unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("`password`"), "{message}");
    // Only an object is a body: serde would read the fields in order from an array, and
    // `["eve", PASSWORD]` registered eve.
    for body in [json!([1, 2]), json!(["eve", PASSWORD]), json!("eve")] {
        let r = app.post("/api/auth/register", &body, None).await;
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v["error"]["message"],
            "request body is not the expected JSON: a JSON object is required",
            "{body}"
        );
    }
    let r = app
        .post("/api/auth/login", &json!(["eve", PASSWORD]), None)
        .await;
    assert_eq!(r.status(), 400);
    let big = json!({"username": "dave", "password": "p".repeat(17 * 1024)});
    let r = app.post("/api/auth/register", &big, None).await;
    assert_eq!(error_code(r).await, (413, "body_too_large".into()));
    // Streamed without Content-Length: still cut at 16 KiB.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..20).map(|_| Ok(vec![b' '; 1024])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let r = app
        .http
        .post(app.url("/api/auth/login"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (413, "body_too_large".into()));
}

async fn login_returns_tokens_and_me_works(app: TestApp) {
    app.register("erin").await;
    let r = app
        .post(
            "/api/auth/login",
            &json!({"username": "Erin", "password": PASSWORD}),
            None,
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 900);
    assert_eq!(v["user"]["username"], "erin");
    assert!(v["refresh_token"].as_str().unwrap().len() > 40);
    let token = v["access_token"].as_str().unwrap();
    let me: Value = app.get_json("/api/me", Some(token)).await;
    assert_eq!(me["username"], "erin");
    assert_eq!(me["id"], v["user"]["id"]);
}

async fn unknown_user_and_wrong_password_answer_identically(app: TestApp) {
    app.register("frank").await;
    let verifications = || app.state.metrics.password_verifications.get();
    let mut answers = vec![];
    // The same status, the same body and the same work: exactly one argon2id verification each.
    for username in ["frank", "nobody", "no such name!"] {
        let before = verifications();
        let r = app
            .post(
                "/api/auth/login",
                &json!({"username": username, "password": "not the password"}),
                None,
            )
            .await;
        answers.push((r.status(), r.text().await.unwrap()));
        assert_eq!(verifications() - before, 1, "{username}: one verification");
    }
    assert_eq!(answers[0].0, 401);
    assert!(answers[0].1.contains("invalid_credentials"));
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0], answers[2]);
}

async fn login_returns_429_after_repeated_failures(app: TestApp) {
    app.register("grace").await;
    let bad = json!({"username": "grace", "password": "wrong password!"});
    for _ in 0..3 {
        assert_eq!(app.post("/api/auth/login", &bad, None).await.status(), 401);
    }
    let r = app.post("/api/auth/login", &bad, None).await;
    assert_eq!(
        r.status(),
        401,
        "the 4th failure is still checked, then the account is locked"
    );
    let r = app
        .post(
            "/api/auth/login",
            &json!({"username": "grace", "password": PASSWORD}),
            None,
        )
        .await;
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert_eq!(error_code(r).await, (429, "too_many_attempts".into()));
    // Another account from the same address is not locked yet.
    app.register("heidi").await;
    let r = app
        .post(
            "/api/auth/login",
            &json!({"username": "heidi", "password": PASSWORD}),
            None,
        )
        .await;
    assert_eq!(r.status(), 200);
}

/// A client whose connections come from `ip` (any 127/8 address works on Linux loopback).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn login_from(app: &TestApp, ip: &str, name: &str, password: &str) -> u16 {
    client_from(ip)
        .post(app.url("/api/auth/login"))
        .json(&json!({"username": name, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn parallel_logins_are_counted_before_the_password_check(app: TestApp) {
    app.register("olga").await;
    let before = app.state.metrics.password_verifications.get();
    // 59 wrong guesses and the right password, all at once, from one address.
    let guesses = (0..60).map(|i| {
        let password = if i == 59 { PASSWORD } else { "wrong password!" };
        login_from(&app, "127.0.0.1", "olga", password)
    });
    let statuses = futures_util::future::join_all(guesses).await;
    let evaluated = statuses.iter().filter(|s| **s != 429).count();
    assert_eq!(
        evaluated, 6,
        "5 free attempts and the one that locks: {statuses:?}"
    );
    assert_eq!(
        app.state.metrics.password_verifications.get() - before,
        6,
        "a refused attempt costs no argon2 work"
    );
}

async fn one_address_cannot_lock_the_owner_out_elsewhere(app: TestApp) {
    app.register("paula").await;
    for _ in 0..6 {
        login_from(&app, "127.0.0.2", "paula", "wrong password!").await;
    }
    assert_eq!(
        login_from(&app, "127.0.0.2", "paula", PASSWORD).await,
        429,
        "the guessing address is locked, even with the right password"
    );
    assert_eq!(
        login_from(&app, "127.0.0.1", "paula", PASSWORD).await,
        200,
        "the owner elsewhere is not"
    );
}

async fn distributed_guessing_is_slowed_but_known_addresses_get_in(app: TestApp) {
    app.register("quinn").await;
    assert_eq!(login_from(&app, "127.0.0.1", "quinn", PASSWORD).await, 200);
    // One wrong guess from each of four addresses: over the account's global budget of 3.
    for i in 2..=5 {
        let status = login_from(&app, &format!("127.0.0.{i}"), "quinn", "wrong password!").await;
        assert_eq!(status, 401);
    }
    assert_eq!(
        login_from(&app, "127.0.0.9", "quinn", PASSWORD).await,
        429,
        "a new address waits while the account is under distributed attack"
    );
    assert_eq!(
        login_from(&app, "127.0.0.1", "quinn", PASSWORD).await,
        200,
        "an address the owner logged in from is exempt"
    );
}

async fn a_full_throttle_table_still_throttles_new_accounts(app: TestApp) {
    for i in 0..10 {
        login_from(&app, "127.0.0.1", &format!("filler{i}"), "wrong password!").await;
    }
    let mut statuses = vec![];
    for _ in 0..10 {
        statuses.push(login_from(&app, "127.0.0.1", "victim", "wrong password!").await);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
}

async fn register_from(app: &TestApp, ip: &str, name: &str) -> reqwest::Response {
    client_from(ip)
        .post(app.url("/api/auth/register"))
        .json(&json!({"username": name, "password": PASSWORD}))
        .send()
        .await
        .unwrap()
}

async fn registrations_are_limited_per_address(app: TestApp) {
    for i in 0..5 {
        let r = register_from(&app, "127.0.0.1", &format!("sam{i}")).await;
        assert_eq!(r.status(), 201);
    }
    let r = register_from(&app, "127.0.0.1", "sam5").await;
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert_eq!(error_code(r).await, (429, "too_many_attempts".into()));
    let r = register_from(&app, "127.0.0.2", "sam5").await;
    assert_eq!(r.status(), 201, "another address has its own allowance");
}

async fn a_registration_flood_does_not_starve_logins(app: TestApp) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    app.register("rita").await;
    let stop = Arc::new(AtomicBool::new(false));
    let busy = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..40)
        .map(|n| {
            let (stop, busy) = (stop.clone(), busy.clone());
            let (http, url) = (app.http.clone(), app.url("/api/auth/register"));
            tokio::spawn(async move {
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let body = json!({"username": format!("flood{n}x{i}"), "password": PASSWORD});
                    if let Ok(r) = http.post(&url).json(&body).send().await
                        && r.status() == 503
                    {
                        busy.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    crate::helpers::eventually("registrations saturate their hashing", || {
        busy.load(Ordering::Relaxed) >= 10
    })
    .await;
    let mut statuses = vec![];
    for _ in 0..5 {
        statuses.push(login_from(&app, "127.0.0.1", "rita", PASSWORD).await);
    }
    stop.store(true, Ordering::Relaxed);
    for task in flood {
        task.await.unwrap();
    }
    assert_eq!(statuses, [200; 5], "logins during the flood");
}

async fn json_routes_refuse_bodies_not_declared_json(app: TestApp) {
    let u = app.user("wendy").await;
    let body = json!({"username": "wendy", "password": PASSWORD}).to_string();
    let refresh = json!({"refresh_token": u.refresh}).to_string();
    // The content types a cross-site form or fetch may send without a CORS preflight, and none.
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        for (path, body) in [
            ("/api/auth/register", body.replace("wendy", "xavier")),
            ("/api/auth/login", body.clone()),
            ("/api/auth/refresh", refresh.clone()),
        ] {
            let mut req = app.http.post(app.url(path)).body(body);
            if let Some(t) = content_type {
                req = req.header("content-type", t);
            }
            let r = req.send().await.unwrap();
            assert_eq!(
                error_code(r).await,
                (415, "unsupported_media_type".into()),
                "{path} as {content_type:?}"
            );
        }
    }
    // Parameters are fine.
    let r = app
        .http
        .post(app.url("/api/auth/login"))
        .header("content-type", "application/json; charset=utf-8")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn logins_refused_for_load_do_not_count_against_the_account(app: TestApp) {
    app.register("uma").await;
    // No hashing slot can be waited for: every login is 503 before its password is checked.
    for _ in 0..10 {
        let status = login_from(&app, "127.0.0.1", "uma", "wrong password!").await;
        assert_eq!(status, 503, "never 429: no guess was made");
    }
}

fn forge(claims: &Value, key: &[u8], alg: Algorithm) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(key)).unwrap()
}

fn claims_for(user: &crate::helpers::TestUser, exp_offset: i64) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"iss": "callsignal", "aud": "callsignal", "sub": user.id, "sid": user.session_id,
           "typ": "access", "iat": now, "nbf": now, "exp": now + exp_offset, "jti": uuid::Uuid::new_v4()})
}

async fn bad_tokens_are_401(app: TestApp) {
    let u = app.user("ivan").await;
    assert_eq!(app.get("/api/me", Some(&u.access)).await.status(), 200);
    let missing = app.get("/api/me", None).await;
    assert_eq!(error_code(missing).await, (401, "unauthorized".into()));
    // Tampered payload.
    let mut parts: Vec<String> = u.access.split('.').map(str::to_owned).collect();
    parts[1] = parts[1].chars().rev().collect();
    let tampered = parts.join(".");
    // alg: none.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims_for(&u, 600).to_string())
    );
    let other_key = forge(
        &claims_for(&u, 600),
        b"another-key-another-key-another-key!",
        Algorithm::HS256,
    );
    let hs512 = forge(
        &claims_for(&u, 600),
        TEST_SECRET.as_bytes(),
        Algorithm::HS512,
    );
    let expired = forge(
        &claims_for(&u, -120),
        TEST_SECRET.as_bytes(),
        Algorithm::HS256,
    );
    let mut no_aud = claims_for(&u, 600);
    no_aud.as_object_mut().unwrap().remove("aud");
    let no_aud = forge(&no_aud, TEST_SECRET.as_bytes(), Algorithm::HS256);
    let good_forgery = forge(
        &claims_for(&u, 600),
        TEST_SECRET.as_bytes(),
        Algorithm::HS256,
    );
    assert_eq!(
        app.get("/api/me", Some(&good_forgery)).await.status(),
        200,
        "control: right key works"
    );
    for (what, t) in [
        ("tampered", tampered),
        ("alg none", none),
        ("other key", other_key),
        ("hs512", hs512),
        ("expired", expired),
        ("no aud", no_aud),
        ("garbage", "abc.def.ghi".into()),
    ] {
        let r = app.get("/api/me", Some(&t)).await;
        assert_eq!(error_code(r).await, (401, "unauthorized".into()), "{what}");
    }
}

/// `header.payload.signature` signed with HMAC-SHA256 under `key`, whatever `header` claims:
/// what an attacker does to try algorithm confusion.
fn sign_raw(header: &Value, claims: &Value, key: &[u8]) -> String {
    use base64::Engine;
    use hmac::Mac;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signing_input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        b64.encode(mac.finalize().into_bytes())
    )
}

/// Every way of forging or bending an access token that must fail, with the reason.
fn attack_tokens(u: &crate::helpers::TestUser) -> Vec<(String, String)> {
    let key = TEST_SECRET.as_bytes();
    let hs256 = |claims: &Value| forge(claims, key, Algorithm::HS256);
    let with = |field: &str, value: Value| {
        let mut c = claims_for(u, 600);
        c[field] = value;
        c
    };
    let without = |field: &str| {
        let mut c = claims_for(u, 600);
        c.as_object_mut().unwrap().remove(field);
        c
    };
    let now = chrono::Utc::now().timestamp();
    let good = claims_for(u, 600);
    let mut tokens = vec![
        (
            "HS384 with the right key".to_owned(),
            forge(&good, key, Algorithm::HS384),
        ),
        (
            "HS512 with the right key".to_owned(),
            forge(&good, key, Algorithm::HS512),
        ),
        (
            "RS256 header, HMAC-signed with the key".to_owned(),
            sign_raw(&json!({"alg": "RS256", "typ": "JWT"}), &good, key),
        ),
        (
            "alg none, signature kept".to_owned(),
            sign_raw(&json!({"alg": "none", "typ": "JWT"}), &good, key),
        ),
        (
            "nbf in the future".to_owned(),
            hs256(&with("nbf", json!(now + 600))),
        ),
        (
            "wrong iss".to_owned(),
            hs256(&with("iss", json!("someone-else"))),
        ),
        (
            "wrong aud".to_owned(),
            hs256(&with("aud", json!("another-service"))),
        ),
        (
            "typ refresh".to_owned(),
            hs256(&with("typ", json!("refresh"))),
        ),
        ("the refresh token itself".to_owned(), u.refresh.clone()),
    ];
    for claim in [
        "iss", "aud", "sub", "sid", "typ", "iat", "nbf", "exp", "jti",
    ] {
        tokens.push((format!("{claim} missing"), hs256(&without(claim))));
    }
    for (claim, bad) in [
        ("iss", json!(7)),
        ("aud", json!({"x": 1})),
        ("sub", json!("not-a-uuid")),
        ("sid", json!(42)),
        ("typ", json!(["access"])),
        ("iat", json!("yesterday")),
        ("nbf", json!("now")),
        ("exp", json!(format!("{}", now + 600))),
        ("exp", json!(-1)),
        ("jti", json!(null)),
    ] {
        tokens.push((format!("{claim} = {bad}"), hs256(&with(claim, bad))));
    }
    tokens
}

async fn forged_and_bent_tokens_are_401_on_rest(app: TestApp) {
    let u = app.user("yuri").await;
    let control = forge(
        &claims_for(&u, 600),
        TEST_SECRET.as_bytes(),
        Algorithm::HS256,
    );
    assert_eq!(
        app.get("/api/me", Some(&control)).await.status(),
        200,
        "control"
    );
    for (what, token) in attack_tokens(&u) {
        let r = app.get("/api/me", Some(&token)).await;
        assert_eq!(error_code(r).await, (401, "unauthorized".into()), "{what}");
    }
}

async fn forged_and_bent_tokens_are_invalid_token_and_4401_on_ws(app: TestApp) {
    let u = app.user("zoe").await;
    for (what, token) in attack_tokens(&u) {
        let mut c = app.ws_raw().await;
        c.send(json!({"type": "hello", "token": token})).await;
        let e = c.expect("error").await;
        assert_eq!(e["code"], "invalid_token", "{what}: {e}");
        assert_eq!(c.closed().await, Closed::Code(4401), "{what}");
    }
}

async fn refresh_rotates_and_keeps_the_session(app: TestApp) {
    let u = app.user("judy").await;
    let r = app.refresh(&u.refresh).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["session_id"], u.session_id.as_str());
    assert_ne!(v["refresh_token"], u.refresh.as_str());
    assert_eq!(v["user"]["username"], "judy");
    let access = v["access_token"].as_str().unwrap();
    assert_eq!(app.get("/api/me", Some(access)).await.status(), 200);
    // Rotation again with the new token works.
    let r = app.refresh(v["refresh_token"].as_str().unwrap()).await;
    assert_eq!(r.status(), 200);
}

async fn refresh_token_reuse_revokes_the_session(app: TestApp) {
    let u = app.user("kim").await;
    let first: Value = app.refresh(&u.refresh).await.json().await.unwrap();
    // The spent token again: refused, and the whole session is revoked.
    let r = app.refresh(&u.refresh).await;
    assert_eq!(error_code(r).await, (401, "invalid_refresh_token".into()));
    let r = app.refresh(first["refresh_token"].as_str().unwrap()).await;
    assert_eq!(r.status(), 401, "the rotated token died with the session");
    let r = app
        .get("/api/me", Some(first["access_token"].as_str().unwrap()))
        .await;
    assert_eq!(r.status(), 401, "access tokens of the session are dead");
}

async fn garbage_refresh_tokens_do_not_revoke(app: TestApp) {
    let u = app.user("leo").await;
    let (sid, _) = u.refresh.split_once('.').unwrap();
    for t in [format!("{sid}.AAAA.BBBB"), "nonsense".into(), String::new()] {
        let r = app.refresh(&t).await;
        assert_eq!(error_code(r).await, (401, "invalid_refresh_token".into()));
    }
    assert_eq!(
        app.get("/api/me", Some(&u.access)).await.status(),
        200,
        "session still alive"
    );
    let r = app.refresh(&u.refresh).await;
    assert_eq!(r.status(), 200);
}

async fn logout_revokes_the_session(app: TestApp) {
    let u = app.user("mallory").await;
    let r = app
        .post("/api/auth/logout", &json!({}), Some(&u.access))
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(app.get("/api/me", Some(&u.access)).await.status(), 401);
    let r = app.refresh(&u.refresh).await;
    assert_eq!(r.status(), 401);
    let r = app
        .post("/api/auth/logout", &json!({}), Some(&u.access))
        .await;
    assert_eq!(r.status(), 401);
}

async fn secrets_never_reach_the_logs(app: TestApp) {
    let u = app.user("niaj").await;
    let fresh: Value = app.refresh(&u.refresh).await.json().await.unwrap();
    app.post(
        "/api/auth/login",
        &json!({"username": "niaj", "password": "wrong password here"}),
        None,
    )
    .await;
    let _ = app.ws(&u).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let logs = logs();
    assert!(logs.contains("login"), "logs are captured");
    for secret in [
        PASSWORD,
        "wrong password here",
        &u.access,
        &u.refresh,
        fresh["refresh_token"].as_str().unwrap(),
        TEST_SECRET,
    ] {
        assert!(!logs.contains(secret), "a secret leaked into the logs");
    }
    assert!(!logs.contains("$argon2id$"), "a hash leaked into the logs");
}

db_tests!(
    register_returns_201_and_stores_lower_case,
    register_rejects_invalid_usernames,
    register_rejects_weak_passwords,
    password_is_stored_as_argon2id_phc,
    malformed_bodies_are_400_and_large_ones_413,
    login_returns_tokens_and_me_works,
    unknown_user_and_wrong_password_answer_identically,
    bad_tokens_are_401,
    refresh_rotates_and_keeps_the_session,
    refresh_token_reuse_revokes_the_session,
    garbage_refresh_tokens_do_not_revoke,
    logout_revokes_the_session,
    secrets_never_reach_the_logs,
    json_routes_refuse_bodies_not_declared_json,
    forged_and_bent_tokens_are_401_on_rest,
    forged_and_bent_tokens_are_invalid_token_and_4401_on_ws,
);

db_tests_with!(
    |f| f.merge(("auth.throttle.account_free_failures", 3)).merge(("auth.throttle.base_delay_secs", 30));
    login_returns_429_after_repeated_failures,
);

db_tests_with!(
    |f| f.merge(("auth.throttle.base_delay_secs", 30));
    parallel_logins_are_counted_before_the_password_check,
    one_address_cannot_lock_the_owner_out_elsewhere,
);

db_tests_with!(
    |f| f.merge(("auth.throttle.account_global_free_failures", 3))
        .merge(("auth.throttle.base_delay_secs", 30));
    distributed_guessing_is_slowed_but_known_addresses_get_in,
);

db_tests_with!(
    |f| f.merge(("auth.register_per_address_per_hour", 5));
    registrations_are_limited_per_address,
);

db_tests_with!(
    |f| f.merge(("auth.max_concurrent_hashes", 1))
        .merge(("auth.max_queued_hashes", 2))
        .merge(("auth.max_concurrent_registration_hashes", 1))
        .merge(("auth.max_queued_registration_hashes", 2));
    a_registration_flood_does_not_starve_logins,
);

db_tests_with!(
    |f| f.merge(("auth.max_queued_hashes", 0));
    logins_refused_for_load_do_not_count_against_the_account,
);

db_tests_with!(
    |f| f.merge(("auth.throttle.max_entries", 4))
        .merge(("auth.throttle.address_free_failures", 1000))
        .merge(("auth.throttle.account_free_failures", 3))
        .merge(("auth.throttle.base_delay_secs", 30));
    a_full_throttle_table_still_throttles_new_accounts,
);
