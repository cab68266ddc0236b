//! Contract §1 session rows: list (live only, `current` flag), revoke (own only, 404 otherwise).

use serde_json::{Value, json};

use crate::db_tests;
use crate::helpers::{PASSWORD, TestApp};

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

db_tests!(
    sessions_lists_live_sessions_with_current_flag,
    delete_session_revokes_it_and_only_the_owners
);
