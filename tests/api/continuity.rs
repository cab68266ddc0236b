//! Calls that survive real browsers and networks, over real sockets: a path that dies silently
//! (a TCP relay that stops forwarding without closing either side), reloads, late devices,
//! ghost connections, deliberate closes and complete closing handshakes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::calls::{active_call, invite};
use crate::helpers::{Closed, TestApp, TestUser, WsClient, ws_raw_at};
use crate::{db_tests, db_tests_with};

/// A TCP relay in front of the server whose path can die silently: once frozen it stops
/// forwarding in both directions but keeps both connections open (no FIN, no RST), like a
/// network path that vanished.
struct Relay {
    addr: SocketAddr,
    frozen: Arc<AtomicBool>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(AtomicBool::new(false));
        let f = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, f.clone()));
                tokio::spawn(pipe(sr, cw, f.clone()));
            }
        });
        Relay { addr, frozen }
    }

    fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16384];
    loop {
        if frozen.load(Ordering::SeqCst) {
            // Hold both halves open and move nothing: the path is dead, not closed.
            let _keep = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        match tokio::time::timeout(Duration::from_millis(10), from.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0) | Err(_)) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(Ok(n)) => {
                if frozen.load(Ordering::SeqCst) {
                    continue;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Sends `hello` on a raw socket and returns the welcome.
async fn hello(c: &mut WsClient, token: &str, extra: Value) -> Value {
    let mut h = json!({"type": "hello", "token": token});
    if let (Some(h), Some(e)) = (h.as_object_mut(), extra.as_object()) {
        h.extend(e.clone());
    }
    c.send(h).await;
    let w = c.expect("welcome").await;
    c.welcome = w.clone();
    w
}

/// The `seq` of the last message `c` processed, learnt by a ping round trip.
async fn last_seq(c: &mut WsClient) -> u64 {
    c.send(json!({"type": "ping", "ref": "seq"})).await;
    let p = c.expect("pong").await;
    p["seq"].as_u64().expect("pong has a seq")
}

async fn close_with(c: &mut WsClient, code: CloseCode) {
    c.stream
        .close(Some(CloseFrame {
            code,
            reason: "".into(),
        }))
        .await
        .unwrap();
    // Read to the end so the close completes.
    let _ = c.closed().await;
}

fn offer(sdp: &str) -> Value {
    json!({"type": "offer", "sdp": sdp})
}

// --- 1. Messages lost across a half-open socket --------------------------------------------

/// Alice (through a relay) and bob in an answered call; then alice's path dies silently.
struct DeadPath {
    _relay: Relay,
    ua: TestUser,
    a: WsClient,
    b: WsClient,
    call: String,
    /// The last `seq` alice processed before the path died.
    last: u64,
}

async fn dead_path(app: &TestApp) -> DeadPath {
    let relay = Relay::start(app.addr).await;
    let (ua, ub) = (app.user("alice").await, app.user("bob").await);
    let mut a = ws_raw_at(relay.addr).await;
    hello(&mut a, &ua.access, json!({})).await;
    let mut b = app.ws(&ub).await;
    let call = active_call(&mut a, &mut b, "bob").await;
    let last = last_seq(&mut a).await;
    relay.freeze();
    DeadPath {
        _relay: relay,
        ua,
        a,
        b,
        call,
        last,
    }
}

/// A new socket resuming `old`'s connection after `last`.
async fn resume(app: &TestApp, u: &TestUser, old: &WsClient, last: u64) -> (WsClient, Value) {
    app.ws_hello(
        u,
        json!({"resume_token": old.welcome["resume_token"], "last_seq": last}),
    )
    .await
}

async fn frames_written_into_a_dead_path_are_replayed_after_last_seq(app: TestApp) {
    let DeadPath {
        ua,
        a,
        mut b,
        call,
        last,
        ..
    } = dead_path(&app).await;
    b.send(json!({"type": "sdp", "call_id": call, "description": {"type": "answer", "sdp": "v=0 answer"}}))
        .await;
    for i in 0..5 {
        b.send(
            json!({"type": "ice", "call_id": call, "candidate": {"candidate": format!("c{i}")}}),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut a2, w) = resume(&app, &ua, &a, last).await;
    assert_eq!(w["resumed"], true, "{w}");
    let sdp = a2.expect("sdp").await;
    assert_eq!(sdp["description"]["sdp"], "v=0 answer");
    assert_eq!(sdp["seq"], last + 1);
    for i in 0..5 {
        let ice = a2.expect("ice").await;
        assert_eq!(ice["candidate"]["candidate"], format!("c{i}"));
        assert_eq!(ice["seq"], last + 2 + i);
    }
    a2.silent_for(300).await;
}

async fn a_backlog_queued_for_a_dead_socket_survives_the_resume(app: TestApp) {
    let DeadPath {
        ua,
        a,
        mut b,
        call,
        last,
        ..
    } = dead_path(&app).await;
    let body = "x".repeat(7900);
    for i in 0..115 {
        b.send(
            json!({"type": "sdp", "call_id": call, "description": offer(&format!("{i:03}{body}"))}),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut a2, w) = resume(&app, &ua, &a, last).await;
    assert_eq!(w["resumed"], true);
    for i in 0..115 {
        let m = a2.expect("sdp").await;
        let sdp = m["description"]["sdp"].as_str().unwrap();
        assert_eq!(&sdp[..3], format!("{i:03}"), "in order");
        assert_eq!(m["seq"], last + 1 + i);
    }
}

// --- 2. Reload mid-call ---------------------------------------------------------------------

async fn a_reload_mid_call_takes_the_call_over(app: TestApp) {
    let (ua, ub) = (app.user("alice").await, app.user("bob").await);
    let mut a = app.ws(&ua).await;
    let mut b = app.ws(&ub).await;
    let call = active_call(&mut a, &mut b, "bob").await;
    // The tab reloads: close 1001, then a new socket of the same login session that lost its
    // resume token.
    close_with(&mut a, CloseCode::Away).await;
    assert_eq!(
        b.expect("peer.reconnecting").await["call_id"],
        call.as_str()
    );
    let (mut a2, w) = app.ws_hello(&ua, json!({})).await;
    assert_eq!(w["resumed"], false);
    assert_eq!(
        w["call"],
        json!({"call_id": call, "state": "active", "role": "caller",
               "peer": {"id": ub.id, "username": "bob"}, "here": true})
    );
    assert_eq!(b.expect("peer.reconnected").await["call_id"], call.as_str());
    // Media is renegotiated on the same call.
    a2.send(json!({"type": "sdp", "call_id": call, "description": offer("v=0 new")}))
        .await;
    assert_eq!(b.expect("sdp").await["description"]["sdp"], "v=0 new");
    b.send(json!({"type": "sdp", "call_id": call, "description": {"type": "answer", "sdp": "v=0 ans"}}))
        .await;
    assert_eq!(a2.expect("sdp").await["description"]["sdp"], "v=0 ans");
    a2.send(json!({"type": "call.hangup", "call_id": call}))
        .await;
    assert_eq!(a2.expect("call.ended").await["reason"], "hangup");
    assert_eq!(b.expect("call.ended").await["reason"], "hangup");
    // Nobody is stuck in a call.
    let next = invite(&mut a2, &mut b, "bob").await;
    assert_ne!(next, call);
}

// --- 3. Devices that appear while a call rings ---------------------------------------------

async fn devices_that_appear_while_ringing_are_told(app: TestApp) {
    let (ua, ub) = (app.user("alice").await, app.user("bob").await);
    let ub2 = app.login("bob").await;
    let mut a = app.ws(&ua).await;
    let mut b = app.ws(&ub).await;
    let call = invite(&mut a, &mut b, "bob").await;
    // Bob's only tab reloads during the ring.
    close_with(&mut b, CloseCode::Away).await;
    let (mut b_reloaded, w) = app.ws_hello(&ub, json!({})).await;
    assert_eq!(w["call"]["state"], "ringing");
    assert_eq!(w["call"]["here"], true);
    assert_eq!(
        b_reloaded.expect("call.incoming").await["call_id"],
        call.as_str()
    );
    // A second device of bob's (another login) connects during the ring.
    let mut phone = app.ws(&ub2).await;
    assert_eq!(phone.welcome["call"]["call_id"], call.as_str());
    assert_eq!(
        phone.expect("call.incoming").await["call_id"],
        call.as_str()
    );
    phone
        .send(json!({"type": "call.accept", "call_id": call}))
        .await;
    phone.expect("call.accepted").await;
    a.expect("call.accepted").await;
    assert_eq!(
        b_reloaded.expect("call.ended").await["reason"],
        "answered_elsewhere"
    );
}

// --- 4. Ghost connections -------------------------------------------------------------------

async fn quick_reloads_and_closed_tabs_never_lock_a_user_out(app: TestApp) {
    let u = app.user("alice").await;
    // Nine reloads of one tab within seconds.
    for i in 0..9 {
        let (mut c, w) = app.ws_hello(&u, json!({})).await;
        assert_eq!(w["type"], "welcome", "reload {i}: {w}");
        close_with(&mut c, CloseCode::Away).await;
    }
    // Nine tabs (each its own login) opened and closed.
    for i in 0..9 {
        let tab = app.login("alice").await;
        let (mut c, w) = app.ws_hello(&tab, json!({})).await;
        assert_eq!(w["type"], "welcome", "tab {i}: {w}");
        close_with(&mut c, CloseCode::Away).await;
    }
    let (_c, w) = app.ws_hello(&u, json!({})).await;
    assert_eq!(w["type"], "welcome");
}

// --- 5. Deliberate closes -------------------------------------------------------------------

async fn a_closed_tab_ends_the_call_within_the_short_grace(app: TestApp) {
    let (ua, ub) = (app.user("alice").await, app.user("bob").await);
    let mut a = app.ws(&ua).await;
    let mut b = app.ws(&ub).await;
    let call = active_call(&mut a, &mut b, "bob").await;
    let started = Instant::now();
    close_with(&mut a, CloseCode::Away).await;
    b.expect("peer.reconnecting").await;
    let e = b.expect("call.ended").await;
    assert_eq!(
        (e["call_id"].as_str(), e["reason"].as_str()),
        (Some(call.as_str()), Some("connection_lost"))
    );
    // Well before the 20 s network-drop grace (the short grace is 2 s here).
    assert!(started.elapsed() < Duration::from_secs(10));
}

async fn close_1000_ends_the_call_at_once(app: TestApp) {
    let (ua, ub) = (app.user("alice").await, app.user("bob").await);
    let mut a = app.ws(&ua).await;
    let mut b = app.ws(&ub).await;
    let call = active_call(&mut a, &mut b, "bob").await;
    close_with(&mut b, CloseCode::Normal).await;
    let e = a.expect("call.ended").await;
    assert_eq!(
        (e["call_id"].as_str(), e["reason"].as_str()),
        (Some(call.as_str()), Some("left"))
    );
    // A ringing callee's only tab closing with 1000 stops the ring at once.
    let mut b = app.ws(&ub).await;
    let ringing = invite(&mut a, &mut b, "bob").await;
    close_with(&mut b, CloseCode::Normal).await;
    let e = a.expect("call.ended").await;
    assert_eq!(
        (e["call_id"].as_str(), e["reason"].as_str()),
        (Some(ringing.as_str()), Some("left"))
    );
    app.flushed().await;
    for id in [&call, &ringing] {
        let v = app
            .get_json(&format!("/api/calls/{id}"), Some(&ua.access))
            .await;
        assert_eq!(
            (v["status"].as_str(), v["end_reason"].as_str()),
            (Some("ended"), Some("left")),
            "{v}"
        );
    }
}

// --- 6. Complete closing handshakes ---------------------------------------------------------

async fn a_flood_reads_its_errors_and_a_real_close_1008(app: TestApp) {
    let u = app.user("alice").await;
    let mut c = app.ws(&u).await;
    let call = uuid::Uuid::new_v4().to_string();
    for i in 0..2000 {
        let frame =
            json!({"type": "ice", "call_id": call, "candidate": {"candidate": format!("c{i}")}});
        if c.stream
            .send(Message::text(frame.to_string()))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut limited = 0;
    let end = loop {
        match tokio::time::timeout(
            Duration::from_secs(10),
            futures_util::StreamExt::next(&mut c.stream),
        )
        .await
        .expect("the server answers")
        {
            Some(Ok(Message::Text(t))) if t.contains("rate_limited") => limited += 1,
            Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Close(Some(f)))) => break Closed::Code(f.code.into()),
            other => panic!("the socket ended without a close frame: {other:?}"),
        }
    };
    assert!(limited >= 1, "rate_limited errors were read");
    assert_eq!(end, Closed::Code(1008));
}

async fn revocation_errors_and_close_reach_a_busy_client(app: TestApp) {
    let u = app.user("alice").await;
    let other = app.login("alice").await;
    let mut c = app.ws(&u).await;
    // The client keeps sending while its session is revoked.
    let sender = tokio::spawn(async move {
        for _ in 0..50 {
            if c.stream
                .send(Message::text(r#"{"type":"ping"}"#))
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut revoked = false;
        loop {
            match tokio::time::timeout(
                Duration::from_secs(10),
                futures_util::StreamExt::next(&mut c.stream),
            )
            .await
            .expect("the server answers")
            {
                Some(Ok(Message::Text(t))) if t.contains("session_revoked") => revoked = true,
                Some(Ok(Message::Close(Some(f)))) => return (revoked, Closed::Code(f.code.into())),
                Some(Ok(_)) => {}
                _ => return (revoked, Closed::Dropped),
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(60)).await;
    let r = app
        .delete(
            &format!("/api/sessions/{}", u.session_id),
            Some(&other.access),
        )
        .await;
    assert_eq!(r.status(), 204);
    let (revoked, end) = sender.await.unwrap();
    assert!(revoked, "the session_revoked error was read");
    assert_eq!(end, Closed::Code(4401));
}

// --- Acknowledgements riding on other messages (docs/protocol.md, "Sequence numbers") ----

/// An `ack` field on a message the client sends anyway — an `ice` relayed straight by the
/// socket task, a `ping` handled by the connection — frees what it covers, as the `ack` message
/// does: a resume from before it then finds those messages gone (`resume_gap`) and gets only
/// the rest. Before the extension the field was ignored and everything was replayed.
async fn an_ack_riding_on_any_message_frees_what_it_covers(app: TestApp) {
    let (ua, ub) = (app.user("alice").await, app.user("bob").await);
    let mut a = app.ws(&ua).await;
    let mut b = app.ws(&ub).await;
    let call = active_call(&mut a, &mut b, "bob").await;
    let mut seqs = vec![];
    for i in 0..4 {
        b.send(
            json!({"type": "ice", "call_id": call, "candidate": {"candidate": format!("c{i}")}}),
        )
        .await;
        seqs.push(a.expect("ice").await["seq"].as_u64().expect("seq"));
    }
    // Alice's own candidate acknowledges the first two (the direct relay path) …
    a.send(
        json!({"type": "ice", "call_id": call, "candidate": {"candidate": "back"}, "ack": seqs[1]}),
    )
    .await;
    assert_eq!(b.expect("ice").await["candidate"]["candidate"], "back");
    // … and a ping the third.
    a.send(json!({"type": "ping", "ack": seqs[2], "ref": "p"}))
        .await;
    a.expect("pong").await;
    close_with(&mut a, CloseCode::from(4000)).await;
    let (mut a2, w) = resume(&app, &ua, &a, seqs[0]).await;
    assert_eq!(w["resumed"], true, "{w}");
    a2.expect_error("resume_gap").await;
    let rest = a2.expect("ice").await;
    assert_eq!(
        (
            rest["candidate"]["candidate"].as_str(),
            rest["seq"].as_u64()
        ),
        (Some("c3"), Some(seqs[3]))
    );
    // The pong came after the ack it carried: not covered, so replayed too.
    assert_eq!(a2.expect("pong").await["seq"], seqs[3] + 1);
    a2.silent_for(300).await;
    // An `ack` that is not a sequence number refuses the whole message.
    a2.send(json!({"type": "ping", "ack": "all", "ref": "bad"}))
        .await;
    let e = a2.expect_error("bad_message").await;
    assert_eq!(e["ref"], "bad", "{e}");
}

db_tests!(
    an_ack_riding_on_any_message_frees_what_it_covers,
    frames_written_into_a_dead_path_are_replayed_after_last_seq,
    a_backlog_queued_for_a_dead_socket_survives_the_resume,
    a_reload_mid_call_takes_the_call_over,
    devices_that_appear_while_ringing_are_told,
    quick_reloads_and_closed_tabs_never_lock_a_user_out,
    close_1000_ends_the_call_at_once,
    a_flood_reads_its_errors_and_a_real_close_1008,
    revocation_errors_and_close_reach_a_busy_client,
);
db_tests_with!(|f| f.merge(("ws.going_away_grace_secs", 2)); a_closed_tab_ends_the_call_within_the_short_grace);
