//! `GET /api/calls` and `GET /api/calls/{id}`: newest first, both directions, paging, access.

use serde_json::{Value, json};

use crate::calls::active_call;
use crate::db_tests;
use crate::helpers::TestApp;

async fn history_lists_both_directions_newest_first_with_paging(app: TestApp) {
    let (ua, ub, uc) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
    );
    let (mut a, mut b) = (app.ws(&ua).await, app.ws(&ub).await);
    let mut ids = vec![];
    // alice → bob answered, bob → alice rejected, alice → carol unavailable.
    let first = active_call(&mut a, &mut b, "bob").await;
    a.send(json!({"type": "call.hangup", "call_id": first}))
        .await;
    a.expect("call.ended").await;
    b.expect("call.ended").await;
    ids.push(first.clone());
    b.send(json!({"type": "call.invite", "to": "alice"})).await;
    let second = b.expect("call.created").await["call_id"]
        .as_str()
        .unwrap()
        .to_owned();
    a.expect("call.incoming").await;
    b.expect("call.ringing").await;
    a.send(json!({"type": "call.reject", "call_id": second}))
        .await;
    a.expect("call.ended").await;
    b.expect("call.ended").await;
    ids.push(second.clone());
    a.send(json!({"type": "call.invite", "to": "carol"})).await;
    let third = a.expect("call.created").await["call_id"]
        .as_str()
        .unwrap()
        .to_owned();
    a.expect("call.ended").await;
    ids.push(third.clone());
    app.flushed().await;

    let v: Value = app.get_json("/api/calls", Some(&ua.access)).await;
    let calls = v["calls"].as_array().unwrap();
    let got: Vec<&str> = calls.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(got, [third.as_str(), second.as_str(), first.as_str()]);
    let answered = &calls[2];
    assert_eq!(answered["caller"]["username"], "alice");
    assert_eq!(answered["callee"]["username"], "bob");
    assert_eq!(answered["status"], "ended");
    assert_eq!(answered["end_reason"], "hangup");
    assert!(answered["duration_ms"].as_i64().unwrap() >= 0);
    assert!(answered["answered_at"].is_string());
    assert_eq!(calls[1]["end_reason"], "rejected");
    assert!(calls[1]["duration_ms"].is_null(), "never answered");
    assert_eq!(calls[0]["end_reason"], "unavailable");

    let page1: Value = app.get_json("/api/calls?limit=2", Some(&ua.access)).await;
    assert_eq!(page1["calls"].as_array().unwrap().len(), 2);
    let page2: Value = app
        .get_json(
            &format!("/api/calls?limit=2&before={second}"),
            Some(&ua.access),
        )
        .await;
    let p2: Vec<&str> = page2["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(p2, [first.as_str()]);

    let bob: Value = app.get_json("/api/calls", Some(&ub.access)).await;
    assert_eq!(bob["calls"].as_array().unwrap().len(), 2);
    let carol: Value = app.get_json("/api/calls", Some(&uc.access)).await;
    assert_eq!(carol["calls"].as_array().unwrap().len(), 1);

    let one: Value = app
        .get_json(&format!("/api/calls/{first}"), Some(&ub.access))
        .await;
    assert_eq!(one["id"], first.as_str());
    let r = app
        .get(&format!("/api/calls/{first}"), Some(&uc.access))
        .await;
    assert_eq!(r.status(), 404, "not a participant");
    let r = app
        .get(
            &format!("/api/calls/{}", uuid::Uuid::new_v4()),
            Some(&uc.access),
        )
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(app.get("/api/calls", None).await.status(), 401);
    for bad in [
        "limit=0",
        "limit=101",
        "limit=x",
        &format!("before={}", uuid::Uuid::new_v4()),
        "before=zz",
        "bogus=1",
    ] {
        let r = app
            .get(&format!("/api/calls?{bad}"), Some(&ua.access))
            .await;
        assert_eq!(r.status(), 400, "{bad}");
    }
    let _ = ids;
}

db_tests!(history_lists_both_directions_newest_first_with_paging);
