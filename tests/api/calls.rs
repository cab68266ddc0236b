//! Contract §2.2 end to end: every call rule and `call.ended` reason over real WebSocket
//! clients, with the rows written checked in the database.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Closed, TestApp, WsClient, eventually, logs};
use crate::{db_tests, db_tests_with};

/// A invites B; returns the call id after `call.created`, `call.incoming`, `call.ringing`.
pub async fn invite(a: &mut WsClient, b: &mut WsClient, to: &str) -> String {
    a.send(json!({"type": "call.invite", "to": to, "ref": "inv"}))
        .await;
    let created = a.expect("call.created").await;
    assert_eq!(created["ref"], "inv");
    assert_eq!(created["to"]["username"], to);
    let call_id = created["call_id"].as_str().unwrap().to_owned();
    let incoming = b.expect("call.incoming").await;
    assert_eq!(incoming["call_id"], call_id.as_str());
    assert_eq!(incoming["from"]["username"], a.welcome["user"]["username"]);
    let ringing = a.expect("call.ringing").await;
    assert_eq!(ringing["call_id"], call_id.as_str());
    call_id
}

/// Invite and accept.
pub async fn active_call(a: &mut WsClient, b: &mut WsClient, to: &str) -> String {
    let call_id = invite(a, b, to).await;
    b.send(json!({"type": "call.accept", "call_id": call_id, "ref": "acc"}))
        .await;
    assert_eq!(b.expect("call.accepted").await["ref"], "acc");
    assert_eq!(a.expect("call.accepted").await["call_id"], call_id.as_str());
    call_id
}

async fn call_row(app: &TestApp, call_id: &str) -> entity::calls::Model {
    use sea_orm::EntityTrait;
    app.flushed().await;
    entity::calls::Entity::find_by_id(uuid::Uuid::parse_str(call_id).unwrap())
        .one(&app.db().await)
        .await
        .unwrap()
        .expect("call row")
}

async fn ended(c: &mut WsClient, call_id: &str, reason: &str) {
    let e = c.expect("call.ended").await;
    assert_eq!(e["call_id"], call_id, "{e}");
    assert_eq!(e["reason"], reason, "{e}");
}

async fn full_call_relays_sdp_and_ice_untouched(app: TestApp) {
    let (ua, ub) = (app.user("alice").await, app.user("bob").await);
    let (mut a, mut b) = (app.ws(&ua).await, app.ws(&ub).await);
    let call_id = active_call(&mut a, &mut b, "bob").await;
    // Odd spacing, key order and escapes must arrive exactly as sent.
    let offer = r#"{"sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\na=fingerprint:sha-256 AA:BB\r\n","type":"offer"}"#;
    let frame = format!(
        r#"{{"type":"sdp","call_id":"{call_id}","description":{offer},"from":{{"id":"{}","username":"mallory"}}}}"#,
        uuid::Uuid::new_v4()
    );
    a.send_text(&frame).await;
    let got = b.stream_next_text().await;
    assert!(
        got.contains(&format!(r#""description":{offer}"#)),
        "SDP relayed byte for byte: {got}"
    );
    let v: Value = serde_json::from_str(&got).unwrap();
    assert_eq!(v["type"], "sdp");
    assert_eq!(
        v["from"]["username"], "alice",
        "from is the authenticated sender, not the forged field"
    );
    assert_eq!(v["from"]["id"], ua.id.as_str());
    b.send(json!({"type": "sdp", "call_id": call_id, "description": {"type": "answer", "sdp": "v=0\r\nanswer"}})).await;
    let ans = a.expect("sdp").await;
    assert_eq!(ans["description"]["sdp"], "v=0\r\nanswer");
    assert_eq!(ans["from"]["username"], "bob");
    let cand = r#"{"candidate":"candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host","sdpMid":"0","sdpMLineIndex":0}"#;
    a.send_text(&format!(
        r#"{{"type":"ice","call_id":"{call_id}","candidate":{cand}}}"#
    ))
    .await;
    let got = b.stream_next_text().await;
    assert!(got.contains(&format!(r#""candidate":{cand}"#)), "{got}");
    b.send(json!({"type": "ice", "call_id": call_id, "candidate": null}))
        .await;
    let eoc = a.expect("ice").await;
    assert!(eoc["candidate"].is_null());
    a.send(json!({"type": "call.hangup", "call_id": call_id}))
        .await;
    ended(&mut a, &call_id, "hangup").await;
    ended(&mut b, &call_id, "hangup").await;
    // Every relay was timed and counted by type.
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    for want in [
        "callsignal_relay_latency_seconds_count 4",
        "callsignal_signals_relayed_total{type=\"sdp\"} 2",
        "callsignal_signals_relayed_total{type=\"ice\"} 2",
        "callsignal_calls_ended_total{reason=\"hangup\"} 1",
    ] {
        assert!(metrics.contains(want), "missing {want:?}:\n{metrics}");
    }
    assert!(
        !metrics.contains("callsignal_cluster_"),
        "no cluster gauges on a single node"
    );
    let row = call_row(&app, &call_id).await;
    assert_eq!(row.status, entity::calls::CallStatus::Ended);
    assert_eq!(row.end_reason.as_deref(), Some("hangup"));
    assert!(row.answered_at.is_some() && row.ended_at.is_some());
    assert_eq!(row.caller_id.to_string(), ua.id);
    assert_eq!(
        (
            row.caller_sdp_messages,
            row.caller_ice_messages,
            row.callee_sdp_messages,
            row.callee_ice_messages
        ),
        (1, 1, 1, 1),
        "per-call signaling counters"
    );
    // The ended call is gone: further messages are unknown_call.
    a.send(
        json!({"type": "sdp", "call_id": call_id, "description": {"type": "offer", "sdp": "x"}}),
    )
    .await;
    a.expect_error("unknown_call").await;
}

async fn reject_ends_rejected_for_everyone(app: TestApp) {
    let (ua, ub) = (app.user("alice").await, app.user("bob").await);
    let (mut a, mut b) = (app.ws(&ua).await, app.ws(&ub).await);
    let call_id = invite(&mut a, &mut b, "bob").await;
    b.send(json!({"type": "call.reject", "call_id": call_id, "ref": "no-thanks"}))
        .await;
    // The rejecter's call.ended is the direct reply: it carries the ref; the caller's does not.
    let to_caller = a.expect("call.ended").await;
    assert_eq!(to_caller["reason"], "rejected");
    assert!(to_caller.get("ref").is_none(), "{to_caller}");
    let ack = b.expect("call.ended").await;
    assert_eq!(
        (ack["reason"].as_str(), ack["ref"].as_str()),
        (Some("rejected"), Some("no-thanks"))
    );
    let row = call_row(&app, &call_id).await;
    assert_eq!(row.end_reason.as_deref(), Some("rejected"));
    assert!(row.answered_at.is_none());
}

async fn caller_hangup_before_answer_is_cancelled(app: TestApp) {
    let (ua, ub) = (app.user("alice").await, app.user("bob").await);
    let (mut a, mut b) = (app.ws(&ua).await, app.ws(&ub).await);
    let call_id = invite(&mut a, &mut b, "bob").await;
    a.send(json!({"type": "call.hangup", "call_id": call_id}))
        .await;
    ended(&mut a, &call_id, "cancelled").await;
    ended(&mut b, &call_id, "cancelled").await;
    assert_eq!(
        call_row(&app, &call_id).await.end_reason.as_deref(),
        Some("cancelled")
    );
}

async fn busy_unavailable_user_not_found_and_busy_self(app: TestApp) {
    let (ua, ub, uc) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
    );
    app.register("dave").await;
    let (mut a, mut b, mut c) = (app.ws(&ua).await, app.ws(&ub).await, app.ws(&uc).await);
    let _call = active_call(&mut a, &mut b, "bob").await;
    // carol → bob (in a call): created, then ended busy.
    c.send(json!({"type": "call.invite", "to": "bob"})).await;
    let created = c.expect("call.created").await;
    let busy_id = created["call_id"].as_str().unwrap().to_owned();
    ended(&mut c, &busy_id, "busy").await;
    // carol → dave (registered, offline): unavailable.
    c.send(json!({"type": "call.invite", "to": "Dave"})).await;
    let created = c.expect("call.created").await;
    let un_id = created["call_id"].as_str().unwrap().to_owned();
    ended(&mut c, &un_id, "unavailable").await;
    // carol → nobody: error, no call.
    c.send(json!({"type": "call.invite", "to": "nobody", "ref": "x"}))
        .await;
    assert_eq!(c.expect_error("user_not_found").await["ref"], "x");
    // alice (in a call) → carol: busy_self.
    a.send(json!({"type": "call.invite", "to": "carol"})).await;
    a.expect_error("busy_self").await;
    assert_eq!(
        call_row(&app, &busy_id).await.end_reason.as_deref(),
        Some("busy")
    );
    assert_eq!(
        call_row(&app, &un_id).await.end_reason.as_deref(),
        Some("unavailable")
    );
    c.silent_for(200).await;
}

async fn glare_ends_the_second_invite(app: TestApp) {
    let (ua, ub) = (app.user("alice").await, app.user("bob").await);
    let (mut a, mut b) = (app.ws(&ua).await, app.ws(&ub).await);
    let first = invite(&mut b, &mut a, "alice").await;
    a.send(json!({"type": "call.invite", "to": "bob"})).await;
    let created = a.expect("call.created").await;
    let second = created["call_id"].as_str().unwrap().to_owned();
    ended(&mut a, &second, "glare").await;
    // A keeps ringing with B's call and may accept it.
    a.send(json!({"type": "call.accept", "call_id": first}))
        .await;
    a.expect("call.accepted").await;
    b.expect("call.accepted").await;
    assert_eq!(
        call_row(&app, &second).await.end_reason.as_deref(),
        Some("glare")
    );
}

async fn first_accept_wins_and_other_devices_hear_answered_elsewhere(app: TestApp) {
    let ua = app.user("alice").await;
    let ub1 = app.user("bob").await;
    let ub2 = app.login("bob").await;
    let (mut a, mut b1, mut b2) = (app.ws(&ua).await, app.ws(&ub1).await, app.ws(&ub2).await);
    let call_id = invite(&mut a, &mut b1, "bob").await;
    b2.expect("call.incoming").await;
    b2.send(json!({"type": "call.accept", "call_id": call_id}))
        .await;
    b2.expect("call.accepted").await;
    a.expect("call.accepted").await;
    ended(&mut b1, &call_id, "answered_elsewhere").await;
    b1.send(json!({"type": "call.accept", "call_id": call_id, "ref": "late"}))
        .await;
    let e = b1.expect_error("call_not_ringing").await;
    assert_eq!(e["ref"], "late");
    assert_eq!(e["call_id"], call_id.as_str());
    // Only the answering device exchanges sdp.
    b1.send(
        json!({"type": "sdp", "call_id": call_id, "description": {"type": "answer", "sdp": "x"}}),
    )
    .await;
    b1.expect_error("not_participant").await;
    b2.send(
        json!({"type": "sdp", "call_id": call_id, "description": {"type": "answer", "sdp": "y"}}),
    )
    .await;
    assert_eq!(a.expect("sdp").await["description"]["sdp"], "y");
}

async fn outsiders_and_early_messages_are_refused(app: TestApp) {
    let (ua, ub, um) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("mallory").await,
    );
    let (mut a, mut b, mut m) = (app.ws(&ua).await, app.ws(&ub).await, app.ws(&um).await);
    let call_id = invite(&mut a, &mut b, "bob").await;
    // Before accept: parties get call_not_active; the caller cannot accept.
    a.send(
        json!({"type": "sdp", "call_id": call_id, "description": {"type": "offer", "sdp": "x"}}),
    )
    .await;
    a.expect_error("call_not_active").await;
    b.send(json!({"type": "ice", "call_id": call_id, "candidate": null}))
        .await;
    b.expect_error("call_not_active").await;
    a.send(json!({"type": "call.accept", "call_id": call_id}))
        .await;
    a.expect_error("not_participant").await;
    // A third user cannot touch the call, before or after accept.
    for msg in [
        json!({"type": "call.accept", "call_id": call_id}),
        json!({"type": "call.reject", "call_id": call_id}),
        json!({"type": "call.hangup", "call_id": call_id}),
        json!({"type": "sdp", "call_id": call_id, "description": {"type": "offer", "sdp": "evil"}}),
        json!({"type": "ice", "call_id": call_id, "candidate": null}),
    ] {
        m.send(msg).await;
        m.expect_error("not_participant").await;
    }
    b.send(json!({"type": "call.accept", "call_id": call_id}))
        .await;
    b.expect("call.accepted").await;
    a.expect("call.accepted").await;
    for msg in [
        json!({"type": "call.hangup", "call_id": call_id}),
        json!({"type": "sdp", "call_id": call_id, "description": {"type": "offer", "sdp": "evil"}}),
        json!({"type": "ice", "call_id": call_id, "candidate": {"candidate": "evil"}}),
    ] {
        m.send(msg).await;
        m.expect_error("not_participant").await;
    }
    a.silent_for(200).await;
    b.silent_for(0).await;
    m.send(json!({"type": "call.hangup", "call_id": uuid::Uuid::new_v4()}))
        .await;
    m.expect_error("unknown_call").await;
}

db_tests!(
    full_call_relays_sdp_and_ice_untouched,
    reject_ends_rejected_for_everyone,
    caller_hangup_before_answer_is_cancelled,
    busy_unavailable_user_not_found_and_busy_self,
    glare_ends_the_second_invite,
    first_accept_wins_and_other_devices_hear_answered_elsewhere,
    outsiders_and_early_messages_are_refused,
);

/// A callee that sends its answer and candidates together with its `call.accept`, without
/// waiting for `call.accepted`: the first may travel the slow path (before the pairing), the
/// rest must not overtake it — the caller gets them in the order sent, every time.
async fn answer_pipelined_with_the_accept_arrives_in_order(app: TestApp) {
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let (mut a, mut b) = (app.ws(&alice).await, app.ws(&bob).await);
    for round in 0..12u64 {
        let call_id = invite(&mut a, &mut b, "bob").await;
        let mut burst = vec![json!({"type": "call.accept", "call_id": call_id}).to_string()];
        burst.push(
            json!({"type": "sdp", "call_id": call_id, "description": {"type": "answer", "sdp": format!("v=0 round {round}")}})
                .to_string(),
        );
        for n in 0..8 {
            burst.push(json!({"type": "ice", "call_id": call_id, "candidate": {"candidate": format!("candidate:{n}"), "sdpMid": "0"}}).to_string());
        }
        // The candidates follow after 0–2.75 ms, sweeping the moment the pairing lands.
        for (i, frame) in burst.iter().enumerate() {
            if i == 2 {
                tokio::time::sleep(Duration::from_micros(250 * round)).await;
            }
            b.send_text(frame).await;
        }
        assert_eq!(a.expect("call.accepted").await["call_id"], call_id.as_str());
        let sdp = a.expect("sdp").await;
        assert_eq!(
            sdp["description"]["sdp"],
            format!("v=0 round {round}"),
            "{sdp}"
        );
        for n in 0..8 {
            let ice = a.expect("ice").await;
            assert_eq!(
                ice["candidate"]["candidate"],
                format!("candidate:{n}"),
                "round {round}: {ice}"
            );
        }
        b.expect("call.accepted").await;
        a.send(json!({"type": "call.hangup", "call_id": call_id}))
            .await;
        ended(&mut a, &call_id, "hangup").await;
        ended(&mut b, &call_id, "hangup").await;
    }
}

async fn ring_timeout_is_missed(app: TestApp) {
    let (ua, ub) = (app.user("alice").await, app.user("bob").await);
    let (mut a, mut b) = (app.ws(&ua).await, app.ws(&ub).await);
    let call_id = invite(&mut a, &mut b, "bob").await;
    ended(&mut a, &call_id, "missed").await;
    ended(&mut b, &call_id, "missed").await;
    assert_eq!(
        call_row(&app, &call_id).await.end_reason.as_deref(),
        Some("missed")
    );
}

db_tests_with!(|f| f.merge(("calls.ring_timeout_secs", 1)); ring_timeout_is_missed);
db_tests_with!(|f| f
    .merge(("calls.invites_per_minute", 1000))
    .merge(("calls.invites_per_callee_per_minute", 1000))
    .merge(("calls.invites_per_pair_per_minute", 1000));
    answer_pipelined_with_the_accept_arrives_in_order);

async fn dropped_socket_resumes_with_queued_messages(app: TestApp) {
    let (ua, ub) = (app.user("alice").await, app.user("bob").await);
    let (mut a, mut b) = (app.ws(&ua).await, app.ws(&ub).await);
    let call_id = active_call(&mut a, &mut b, "bob").await;
    let resume_token = b.welcome["resume_token"].as_str().unwrap().to_owned();
    let conn_id = b.connection_id().to_owned();
    drop(b);
    a.expect("peer.reconnecting").await;
    a.send(json!({"type": "sdp", "call_id": call_id, "description": {"type": "offer", "sdp": "while-away-1"}})).await;
    a.send(json!({"type": "ice", "call_id": call_id, "candidate": {"candidate": "while-away-2"}}))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut b2 = app.ws_raw().await;
    b2.send(json!({"type": "hello", "token": ub.access, "resume_token": resume_token}))
        .await;
    let w = b2.expect("welcome").await;
    assert_eq!(w["resumed"], true);
    assert_eq!(w["connection_id"], conn_id.as_str());
    assert_eq!(b2.expect("sdp").await["description"]["sdp"], "while-away-1");
    assert_eq!(
        b2.expect("ice").await["candidate"]["candidate"],
        "while-away-2"
    );
    a.expect("peer.reconnected").await;
    b2.send(json!({"type": "call.hangup", "call_id": call_id}))
        .await;
    ended(&mut b2, &call_id, "hangup").await;
    ended(&mut a, &call_id, "hangup").await;
}

async fn a_party_that_does_not_return_is_connection_lost(app: TestApp) {
    let (ua, ub) = (app.user("alice").await, app.user("bob").await);
    let (mut a, mut b) = (app.ws(&ua).await, app.ws(&ub).await);
    let call_id = active_call(&mut a, &mut b, "bob").await;
    drop(b);
    a.expect("peer.reconnecting").await;
    ended(&mut a, &call_id, "connection_lost").await;
    assert_eq!(
        call_row(&app, &call_id).await.end_reason.as_deref(),
        Some("connection_lost")
    );
    // An expired resume token gives a fresh connection, not a resumed one.
    let mut b2 = app.ws_raw().await;
    b2.send(json!({"type": "hello", "token": ub.access, "resume_token": "stale"}))
        .await;
    assert_eq!(b2.expect("welcome").await["resumed"], false);
}

db_tests!(dropped_socket_resumes_with_queued_messages);
db_tests_with!(|f| f.merge(("ws.resume_grace_secs", 1)); a_party_that_does_not_return_is_connection_lost);

async fn invites_per_minute_are_limited(app: TestApp) {
    let (ua, _ub) = (app.user("alice").await, app.user("bob").await);
    let mut a = app.ws(&ua).await;
    for _ in 0..2 {
        a.send(json!({"type": "call.invite", "to": "bob"})).await;
        a.expect("call.created").await;
        a.expect("call.ended").await;
    }
    a.send(json!({"type": "call.invite", "to": "bob", "ref": "third"}))
        .await;
    assert_eq!(a.expect_error("rate_limited").await["ref"], "third");
}

db_tests_with!(|f| f.merge(("calls.invites_per_minute", 2)); invites_per_minute_are_limited);

async fn shutdown_ends_calls_closes_1001_and_commits(mut app: TestApp) {
    let (ua, ub) = (app.user("alice").await, app.user("bob").await);
    let (mut a, mut b) = (app.ws(&ua).await, app.ws(&ub).await);
    let call_id = active_call(&mut a, &mut b, "bob").await;
    app.shutdown().await;
    ended(&mut a, &call_id, "server_shutdown").await;
    ended(&mut b, &call_id, "server_shutdown").await;
    assert_eq!(a.closed().await, Closed::Code(1001));
    assert_eq!(b.closed().await, Closed::Code(1001));
    // The server is gone; read the row straight from the database.
    use sea_orm::EntityTrait;
    let row = entity::calls::Entity::find_by_id(uuid::Uuid::parse_str(&call_id).unwrap())
        .one(&app.db().await)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.end_reason.as_deref(), Some("server_shutdown"));
}

db_tests!(shutdown_ends_calls_closes_1001_and_commits);

async fn a_panicking_call_actor_ends_only_its_call(app: TestApp) {
    let (ua, ub, uc, ud) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
        app.user("dave").await,
    );
    let (mut a, mut b, mut c, mut d) = (
        app.ws(&ua).await,
        app.ws(&ub).await,
        app.ws(&uc).await,
        app.ws(&ud).await,
    );
    let doomed = active_call(&mut a, &mut b, "bob").await;
    let healthy = active_call(&mut c, &mut d, "dave").await;
    let actor = app
        .state
        .actors
        .call_actor(callsignal::domain::CallId(doomed.parse().unwrap()))
        .await
        .unwrap();
    actor
        .cast(callsignal::actors::call::CallMsg::Panic)
        .unwrap();
    ended(&mut a, &doomed, "server_error").await;
    ended(&mut b, &doomed, "server_error").await;
    eventually("the failure is logged", || {
        logs().lines().any(|l| {
            l.contains("\"event\":\"failed\"")
                && l.contains("\"actor\":\"call\"")
                && l.contains(&doomed)
        })
    })
    .await;
    // The failure is counted by actor kind, and the call's end by reason.
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains("callsignal_actor_failures_total{actor=\"call\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("callsignal_calls_ended_total{reason=\"server_error\"} 1"));
    // The other call keeps relaying.
    c.send(json!({"type": "sdp", "call_id": healthy, "description": {"type": "offer", "sdp": "still-here"}})).await;
    assert_eq!(d.expect("sdp").await["description"]["sdp"], "still-here");
    assert_eq!(
        call_row(&app, &doomed).await.end_reason.as_deref(),
        Some("server_error")
    );
    // Both parties of the failed call are free again.
    a.send(json!({"type": "call.invite", "to": "bob"})).await;
    a.expect("call.created").await;
}

async fn a_restarted_registry_keeps_live_calls(app: TestApp) {
    let (ua, ub) = (app.user("alice").await, app.user("bob").await);
    let (mut a, mut b) = (app.ws(&ua).await, app.ws(&ub).await);
    let call_id = active_call(&mut a, &mut b, "bob").await;
    let before = app.state.actors.registry().unwrap().get_id();
    app.state
        .actors
        .registry()
        .unwrap()
        .cast(callsignal::actors::registry::RegistryMsg::Panic)
        .unwrap();
    eventually("the registry restarts", || {
        app.state
            .actors
            .registry()
            .is_some_and(|r| r.get_id() != before)
    })
    .await;
    eventually("the restart is logged", || {
        logs()
            .lines()
            .any(|l| l.contains("\"event\":\"restarted\"") && l.contains("\"actor\":\"registry\""))
    })
    .await;
    // Routing was rebuilt from the live actors: the call still relays and still ends properly.
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.send(json!({"type": "sdp", "call_id": call_id, "description": {"type": "offer", "sdp": "after-restart"}})).await;
    assert_eq!(b.expect("sdp").await["description"]["sdp"], "after-restart");
    let stats = app.state.actors.stats().await.unwrap();
    assert_eq!((stats.connections, stats.calls), (2, 1));
    b.send(json!({"type": "call.hangup", "call_id": call_id}))
        .await;
    ended(&mut a, &call_id, "hangup").await;
    ended(&mut b, &call_id, "hangup").await;
}

async fn a_panicking_connection_actor_closes_its_socket(app: TestApp) {
    let (ua, ub) = (app.user("alice").await, app.user("bob").await);
    let (mut a, mut b) = (app.ws(&ua).await, app.ws(&ub).await);
    let call_id = active_call(&mut a, &mut b, "bob").await;
    let conn = app
        .state
        .actors
        .connection(callsignal::domain::ConnectionId(
            b.connection_id().parse().unwrap(),
        ))
        .await
        .unwrap();
    conn.cast(callsignal::actors::connection::ConnectionMsg::Panic)
        .unwrap();
    assert_eq!(b.closed().await, Closed::Code(1011));
    a.expect("peer.reconnecting").await;
    ended(&mut a, &call_id, "connection_lost").await;
}

db_tests!(
    a_panicking_call_actor_ends_only_its_call,
    a_restarted_registry_keeps_live_calls
);
db_tests_with!(|f| f.merge(("ws.resume_grace_secs", 1)); a_panicking_connection_actor_closes_its_socket);

impl WsClient {
    /// The next text frame, raw (for byte-exact checks).
    pub async fn stream_next_text(&mut self) -> String {
        use futures_util::StreamExt;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(5), self.stream.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
                return t.as_str().to_owned();
            }
        }
    }
}
