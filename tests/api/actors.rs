//! Call flows driven by sending actor messages directly, with no network: each "device" is a
//! real connection actor whose socket is a channel the test reads. Timers are driven by the test
//! (it sends `RingTimeout` / `GraceExpired` itself; the configured timers are an hour long).

use std::time::Duration;

use callsignal::actors::ask;
use callsignal::actors::call::CallMsg;
use callsignal::actors::connection::{
    ConnectionMsg, Outbound, SocketControl, SocketEnd, SocketLink,
};
use callsignal::actors::registry::{ConnectRequest, RegistryMsg};
use callsignal::domain::{CallId, SessionId, UserId, UserRef, Username};
use ractor::ActorRef;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, logs, spawn_app_with};

/// A device: a connection actor with a channel in place of its socket.
struct Device {
    actor: ActorRef<ConnectionMsg>,
    rx: callsignal::ws::outbox::Receiver<Outbound>,
    socket_id: u64,
    control: SocketControl,
    user: UserRef,
    session: SessionId,
    welcome: Value,
}

impl Device {
    async fn connect(app: &TestApp, name: &str, queue: usize) -> Device {
        let v = app.register(name).await;
        let user = UserRef {
            id: UserId(v["id"].as_str().unwrap().parse().unwrap()),
            username: Username::parse(name).unwrap(),
        };
        Self::attach(app, user, queue).await
    }

    async fn attach(app: &TestApp, user: UserRef, queue: usize) -> Device {
        Self::open(app, user, SessionId::new(), None, None, queue).await
    }

    /// A new "socket" for this device's connection, presenting its resume token (and the last
    /// `seq` it processed, `None` for a v1 client).
    async fn resume(&self, app: &TestApp, last_seq: Option<u64>) -> Device {
        let token = self.welcome["resume_token"].as_str().map(str::to_owned);
        Self::open(app, self.user.clone(), self.session, token, last_seq, 64).await
    }

    /// A new "socket" of the same login session without the resume token (a reloaded page).
    async fn reload(&self, app: &TestApp) -> Device {
        Self::open(app, self.user.clone(), self.session, None, None, 64).await
    }

    async fn open(
        app: &TestApp,
        user: UserRef,
        session: SessionId,
        resume_token: Option<String>,
        last_seq: Option<u64>,
        queue: usize,
    ) -> Device {
        let (tx, rx) = callsignal::ws::outbox::channel(queue);
        let socket_id = rand_id();
        let control = SocketControl::default();
        let req = ConnectRequest {
            user: user.clone(),
            session_id: session,
            session_expires_at: chrono::Utc::now() + chrono::Duration::days(1),
            resume_token,
            last_seq,
            socket: SocketLink {
                socket_id,
                tx,
                control: control.clone(),
            },
        };
        let registry = app.state.actors.registry().unwrap();
        let actor = ask(&registry, |r| RegistryMsg::Connect(Box::new(req), r))
            .await
            .unwrap()
            .unwrap()
            .actor;
        let mut d = Device {
            actor,
            rx,
            socket_id,
            control,
            user,
            session,
            welcome: Value::Null,
        };
        d.welcome = d.recv().await;
        assert_eq!(d.welcome["type"], "welcome");
        d
    }

    fn send(&self, v: Value) {
        let inbound = callsignal::ws::protocol::parse(&v.to_string()).unwrap();
        self.actor.cast(ConnectionMsg::Client(inbound)).unwrap();
    }

    async fn recv(&mut self) -> Value {
        match tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
            .await
            .unwrap()
        {
            Some(Outbound::Text(_, t) | Outbound::Relayed(_, t, _)) => {
                serde_json::from_str(&t).unwrap()
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Reads the next message as the socket task would: it is then "written".
    async fn read(&mut self) -> Value {
        let v = self.recv().await;
        if let Some(seq) = v["seq"].as_u64() {
            self.control.mark_written(seq);
        }
        v
    }

    /// The socket ends as `end`.
    fn socket_ends(&self, end: SocketEnd) {
        self.actor
            .cast(ConnectionMsg::SocketClosed(self.socket_id, end))
            .unwrap();
    }

    async fn info(&self) -> callsignal::actors::connection::ConnectionInfo {
        ask(&self.actor, ConnectionMsg::Info).await.unwrap()
    }

    async fn expect(&mut self, kind: &str) -> Value {
        let v = self.recv().await;
        assert_eq!(v["type"], kind, "{v}");
        v
    }
}

fn rand_id() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}

async fn app() -> TestApp {
    spawn_app_with(Backend::Sqlite, |f| {
        f.merge(("calls.ring_timeout_secs", 3600))
            .merge(("ws.resume_grace_secs", 3600))
    })
    .await
}

async fn ringing(
    app: &TestApp,
    a: &mut Device,
    b: &mut Device,
    to: &str,
) -> (String, ActorRef<CallMsg>) {
    a.send(json!({"type": "call.invite", "to": to}));
    let id = a.expect("call.created").await["call_id"]
        .as_str()
        .unwrap()
        .to_owned();
    b.expect("call.incoming").await;
    a.expect("call.ringing").await;
    let actor = app
        .state
        .actors
        .call_actor(CallId(id.parse().unwrap()))
        .await
        .unwrap();
    (id, actor)
}

/// alice calls bob and bob answers: (alice, bob, call id).
async fn answered(app: &TestApp) -> (Device, Device, String) {
    let mut a = Device::connect(app, "alice", 64).await;
    let mut b = Device::connect(app, "bob", 64).await;
    let (id, _) = ringing(app, &mut a, &mut b, "bob").await;
    b.send(json!({"type": "call.accept", "call_id": id}));
    b.expect("call.accepted").await;
    a.expect("call.accepted").await;
    (a, b, id)
}

#[tokio::test]
async fn ring_timeout_message_ends_the_call_missed() {
    let app = app().await;
    let mut a = Device::connect(&app, "alice", 64).await;
    let mut b = Device::connect(&app, "bob", 64).await;
    let (id, call) = ringing(&app, &mut a, &mut b, "bob").await;
    call.cast(CallMsg::RingTimeout).unwrap();
    for d in [&mut a, &mut b] {
        let e = d.expect("call.ended").await;
        assert_eq!(
            (
                e["call_id"].as_str().unwrap(),
                e["reason"].as_str().unwrap()
            ),
            (id.as_str(), "missed")
        );
    }
}

#[tokio::test]
async fn ring_timeout_after_accept_is_ignored() {
    let app = app().await;
    let mut a = Device::connect(&app, "alice", 64).await;
    let mut b = Device::connect(&app, "bob", 64).await;
    let (id, call) = ringing(&app, &mut a, &mut b, "bob").await;
    b.send(json!({"type": "call.accept", "call_id": id}));
    b.expect("call.accepted").await;
    a.expect("call.accepted").await;
    call.cast(CallMsg::RingTimeout).unwrap();
    a.send(json!({"type": "ice", "call_id": id, "candidate": null}));
    assert_eq!(
        b.expect("ice").await["from"]["username"],
        "alice",
        "still active"
    );
}

#[tokio::test]
async fn grace_expiry_message_ends_the_call_connection_lost() {
    let app = app().await;
    let (mut a, b, id) = answered(&app).await;
    b.socket_ends(SocketEnd::Dropped);
    assert_eq!(a.expect("peer.reconnecting").await["call_id"], id.as_str());
    // A stale epoch does nothing; the current one ends the connection.
    b.actor.cast(ConnectionMsg::GraceExpired(0)).unwrap();
    b.actor.cast(ConnectionMsg::GraceExpired(1)).unwrap();
    let e = a.expect("call.ended").await;
    assert_eq!(e["reason"], "connection_lost");
}

#[tokio::test]
async fn callee_hangup_while_ringing_is_a_reject_and_caller_cannot_reject() {
    let app = app().await;
    let mut a = Device::connect(&app, "alice", 64).await;
    let mut b = Device::connect(&app, "bob", 64).await;
    let (id, _) = ringing(&app, &mut a, &mut b, "bob").await;
    a.send(json!({"type": "call.reject", "call_id": id}));
    assert_eq!(a.expect("error").await["code"], "not_participant");
    b.send(json!({"type": "call.hangup", "call_id": id}));
    assert_eq!(a.expect("call.ended").await["reason"], "rejected");
    assert_eq!(b.expect("call.ended").await["reason"], "rejected");
}

#[tokio::test]
async fn a_client_that_does_not_read_is_disconnected() {
    let app = app().await;
    let _a = Device::connect(&app, "alice", 64).await;
    let b = Device::connect(&app, "bob", 4).await;
    assert_eq!(app.state.actors.stats().await.unwrap().connections, 2);
    // bob asks for 20 answers and never reads them: once his small queue is full he is
    // dropped, not buffered.
    for i in 0..20 {
        b.send(json!({"type": "ping", "ref": i.to_string()}));
    }
    crate::helpers::eventually("bob's connection is gone", || {
        b.actor.get_status() != ractor::ActorStatus::Running
    })
    .await;
    let mut left = 2;
    for _ in 0..250 {
        left = app.state.actors.stats().await.unwrap().connections;
        if left == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(left, 1, "the registry forgot bob's connection");
    assert_eq!(b.rx.len(), 4, "exactly the queue's worth was buffered");
}

#[tokio::test]
async fn shutdown_message_ends_every_call_server_shutdown() {
    let app = app().await;
    let mut a = Device::connect(&app, "alice", 64).await;
    let mut b = Device::connect(&app, "bob", 64).await;
    let (id, _) = ringing(&app, &mut a, &mut b, "bob").await;
    app.state.actors.shutdown().await;
    for d in [&mut a, &mut b] {
        let e = d.expect("call.ended").await;
        assert_eq!(
            (
                e["call_id"].as_str().unwrap(),
                e["reason"].as_str().unwrap()
            ),
            (id.as_str(), "server_shutdown")
        );
        match tokio::time::timeout(Duration::from_secs(5), d.rx.recv())
            .await
            .unwrap()
        {
            Some(Outbound::Close(code, _)) => assert_eq!(code, 1001),
            other => panic!("expected close 1001, got {other:?}"),
        }
    }
}

async fn ended(d: &mut Device, id: &str, reason: &str) {
    let e = d.expect("call.ended").await;
    assert_eq!(
        (
            e["call_id"].as_str().unwrap(),
            e["reason"].as_str().unwrap()
        ),
        (id, reason),
        "{e}"
    );
}

async fn error(d: &mut Device, code: &str) -> Value {
    let e = d.expect("error").await;
    assert_eq!(e["code"], code, "{e}");
    e
}

#[tokio::test]
async fn relay_hangup_and_the_participant_rules() {
    let app = app().await;
    let mut a = Device::connect(&app, "alice", 64).await;
    let mut b = Device::connect(&app, "bob", 64).await;
    let mut m = Device::connect(&app, "mallory", 64).await;
    let (id, _) = ringing(&app, &mut a, &mut b, "bob").await;
    a.send(json!({"type": "sdp", "call_id": id, "description": {"type": "offer", "sdp": "x"}}));
    error(&mut a, "call_not_active").await;
    m.send(json!({"type": "ice", "call_id": id, "candidate": null}));
    error(&mut m, "not_participant").await;
    m.send(json!({"type": "call.accept", "call_id": id}));
    error(&mut m, "not_participant").await;
    b.send(json!({"type": "call.accept", "call_id": id}));
    b.expect("call.accepted").await;
    a.expect("call.accepted").await;
    b.send(json!({"type": "call.accept", "call_id": id}));
    error(&mut b, "call_not_ringing").await;
    a.send(json!({"type": "sdp", "call_id": id, "description": {"type": "offer", "sdp": "o"}}));
    let got = b.expect("sdp").await;
    assert_eq!(
        (
            got["description"]["sdp"].as_str(),
            got["from"]["username"].as_str()
        ),
        (Some("o"), Some("alice"))
    );
    m.send(json!({"type": "sdp", "call_id": id, "description": {"type": "answer", "sdp": "evil"}}));
    error(&mut m, "not_participant").await;
    m.send(json!({"type": "call.hangup", "call_id": id}));
    error(&mut m, "not_participant").await;
    b.send(json!({"type": "call.hangup", "call_id": id}));
    ended(&mut a, &id, "hangup").await;
    ended(&mut b, &id, "hangup").await;
    a.send(json!({"type": "call.hangup", "call_id": id}));
    error(&mut a, "unknown_call").await;
}

#[tokio::test]
async fn busy_unavailable_unknown_self_and_glare() {
    let app = app().await;
    let mut a = Device::connect(&app, "alice", 64).await;
    let mut b = Device::connect(&app, "bob", 64).await;
    let mut c = Device::connect(&app, "carol", 64).await;
    app.register("dave").await;
    let (first, _) = ringing(&app, &mut a, &mut b, "bob").await;
    // carol → bob (ringing counts as in a call): busy.
    c.send(json!({"type": "call.invite", "to": "bob"}));
    let busy = c.expect("call.created").await["call_id"]
        .as_str()
        .unwrap()
        .to_owned();
    ended(&mut c, &busy, "busy").await;
    // carol → dave (offline): unavailable; → nobody: user_not_found; → herself: bad_message.
    c.send(json!({"type": "call.invite", "to": "dave"}));
    let un = c.expect("call.created").await["call_id"]
        .as_str()
        .unwrap()
        .to_owned();
    ended(&mut c, &un, "unavailable").await;
    c.send(json!({"type": "call.invite", "to": "nobody"}));
    error(&mut c, "user_not_found").await;
    c.send(json!({"type": "call.invite", "to": "Carol"}));
    error(&mut c, "bad_message").await;
    // alice (calling) → carol: busy_self. bob → alice while alice's call to him rings: glare.
    a.send(json!({"type": "call.invite", "to": "carol"}));
    error(&mut a, "busy_self").await;
    b.send(json!({"type": "call.invite", "to": "alice"}));
    let glare = b.expect("call.created").await["call_id"]
        .as_str()
        .unwrap()
        .to_owned();
    ended(&mut b, &glare, "glare").await;
    // The original call is still ringing and can be answered.
    b.send(json!({"type": "call.accept", "call_id": first}));
    b.expect("call.accepted").await;
    a.expect("call.accepted").await;
}

#[tokio::test]
async fn first_accept_wins_across_devices_and_cancel_reaches_all() {
    let app = app().await;
    let mut a = Device::connect(&app, "alice", 64).await;
    let mut b1 = Device::connect(&app, "bob", 64).await;
    // A second device of bob: same user id as b1.
    let bob_id = {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
        entity::users::Entity::find()
            .filter(entity::users::Column::Username.eq("bob"))
            .one(&app.db().await)
            .await
            .unwrap()
            .unwrap()
            .id
    };
    let mut b2 = Device::attach(
        &app,
        UserRef {
            id: UserId(bob_id),
            username: Username::parse("bob").unwrap(),
        },
        64,
    )
    .await;
    let (id, _) = ringing(&app, &mut a, &mut b1, "bob").await;
    b2.expect("call.incoming").await;
    a.send(json!({"type": "call.hangup", "call_id": id}));
    ended(&mut a, &id, "cancelled").await;
    ended(&mut b1, &id, "cancelled").await;
    ended(&mut b2, &id, "cancelled").await;
    let (id, _) = ringing(&app, &mut a, &mut b1, "bob").await;
    b2.expect("call.incoming").await;
    b2.send(json!({"type": "call.accept", "call_id": id}));
    b2.expect("call.accepted").await;
    a.expect("call.accepted").await;
    ended(&mut b1, &id, "answered_elsewhere").await;
    b1.send(json!({"type": "call.reject", "call_id": id}));
    error(&mut b1, "call_not_ringing").await;
}

/// Alice sends `n` candidates to bob; returns their texts.
fn send_ice(a: &Device, id: &str, n: usize, tag: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            let c = format!("{tag}-{i}");
            a.send(json!({"type": "ice", "call_id": id, "candidate": {"candidate": c}}));
            c
        })
        .collect()
}

async fn expect_ice(d: &mut Device, texts: &[String]) -> Vec<u64> {
    let mut seqs = vec![];
    for t in texts {
        let v = d.read().await;
        assert_eq!(
            (v["type"].as_str(), v["candidate"]["candidate"].as_str()),
            (Some("ice"), Some(t.as_str())),
            "{v}"
        );
        seqs.push(v["seq"].as_u64().expect("seq"));
    }
    seqs
}

#[tokio::test]
async fn every_message_after_welcome_is_numbered_and_a_resume_replays_after_last_seq() {
    let app = app().await;
    let (mut a, mut b, id) = answered(&app).await;
    assert!(b.welcome.get("seq").is_none(), "welcome is not numbered");
    let first = send_ice(&a, &id, 3, "one");
    let seqs = expect_ice(&mut b, &first).await;
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    // Bob processed only the first of them when his socket died (they were all written).
    b.socket_ends(SocketEnd::Dropped);
    a.expect("peer.reconnecting").await;
    let later = send_ice(&a, &id, 2, "two");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut b2 = b.resume(&app, Some(seqs[0])).await;
    assert_eq!(b2.welcome["resumed"], true);
    assert_eq!(b2.welcome["connection_id"], b.welcome["connection_id"]);
    let replayed = expect_ice(&mut b2, &[&first[1..], &later[..]].concat()).await;
    assert_eq!(replayed[..2], seqs[1..], "replayed messages keep their seq");
    a.expect("peer.reconnected").await;
    // An ack frees what was processed.
    assert_eq!(b2.info().await.pending, 4);
    b2.send(json!({"type": "ack", "seq": replayed[2]}));
    eventually_pending(&b2, 1).await;
    b2.send(json!({"type": "ack", "seq": 1_000_000}));
    eventually_pending(&b2, 0).await;
}

async fn eventually_pending(d: &Device, n: usize) {
    for _ in 0..250 {
        if d.info().await.pending == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("pending never reached {n}: {:?}", d.info().await);
}

#[tokio::test]
async fn a_v1_resume_gets_what_the_old_socket_never_wrote_then_what_came_while_away() {
    let app = app().await;
    let (a, mut b, id) = answered(&app).await;
    let written = send_ice(&a, &id, 2, "written");
    expect_ice(&mut b, &written).await;
    // Two more reach bob's queue but his socket dies before writing them. Held: call.incoming,
    // call.accepted, the two written and the two unwritten.
    let unwritten = send_ice(&a, &id, 2, "unwritten");
    eventually_pending(&b, 6).await;
    b.socket_ends(SocketEnd::Dropped);
    let away = send_ice(&a, &id, 1, "away");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut b2 = b.resume(&app, None).await;
    expect_ice(&mut b2, &[&unwritten[..], &away[..]].concat()).await;
}

/// A callee that sends candidates right after its accept, before `call.accepted` reaches it:
/// the first ones go through the registry and the call actor (it is not paired yet), the rest
/// straight to the caller once it is. None may overtake another, nor `call.accepted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn candidates_sent_right_after_accept_arrive_in_order_after_call_accepted() {
    let app = app().await;
    for round in 0..20 {
        let callee = format!("bob{round}");
        let mut a = Device::connect(&app, &format!("alice{round}"), 256).await;
        let mut b = Device::connect(&app, &callee, 256).await;
        let (id, _) = ringing(&app, &mut a, &mut b, &callee).await;
        b.send(json!({"type": "call.accept", "call_id": id}));
        let mut sent = vec![];
        for chunk in 0..50 {
            sent.extend(send_ice(&b, &id, 3, &format!("early{round}-{chunk}")));
            // Let the actors run between chunks: the pairing lands somewhere in the middle.
            for _ in 0..round % 4 {
                tokio::task::yield_now().await;
            }
        }
        a.expect("call.accepted").await;
        expect_ice(&mut a, &sent).await;
        b.send(json!({"type": "call.hangup", "call_id": id}));
        a.expect("call.ended").await;
    }
}

/// Bob's socket drops and comes back again and again while Alice's candidates stream into his
/// connection: every new socket hears `welcome` first, then every message once, in `seq` order,
/// with no `seq` repeated or skipped (a message relayed while the new socket was being attached
/// must neither overtake `welcome` nor be replayed twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resume_during_a_stream_of_relayed_messages_keeps_welcome_first_and_seq_exact() {
    let app = app().await;
    let (a, mut b, id) = answered(&app).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let streamer = {
        let stop = stop.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let mut n = 0;
            let mut a = a;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Alice hears peer.reconnecting / peer.resumed each round: keep her reading.
                while a.rx.try_recv().is_some() {}
                send_ice(&a, &id, 1, &format!("s{n}"));
                n += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let mut last = 0u64;
    for _ in 0..40 {
        // Read a little of the stream, acknowledging nothing.
        for _ in 0..5 {
            let v = b.read().await;
            let seq = v["seq"].as_u64().expect("seq");
            assert!(last == 0 || seq == last + 1, "seq {seq} after {last}: {v}");
            last = seq;
        }
        b.socket_ends(SocketEnd::Dropped);
        // `open` checks that the first message on the new socket is `welcome`.
        b = b.resume(&app, Some(last)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    streamer.await.unwrap();
}

/// A message cast to the connection actor with a piggybacked `ack` (docs/protocol.md) trims as
/// the `ack` message does.
#[tokio::test]
async fn an_ack_carried_by_another_message_trims() {
    let app = app().await;
    let (a, mut b, id) = answered(&app).await;
    let sent = send_ice(&a, &id, 3, "x");
    let seqs = expect_ice(&mut b, &sent).await;
    b.send(json!({"type": "ack", "seq": seqs[0]}));
    eventually_pending(&b, 2).await;
    b.send(json!({"type": "ice", "call_id": id, "candidate": {"candidate": "y"}, "ack": seqs[1]}));
    eventually_pending(&b, 1).await;
    b.send(json!({"type": "ping", "ack": seqs[2]}));
    eventually_pending(&b, 0).await;
}

#[tokio::test]
async fn a_pong_proves_delivery_and_trims() {
    let app = app().await;
    let (a, mut b, id) = answered(&app).await;
    b.send(json!({"type": "ack", "seq": 1_000_000}));
    eventually_pending(&b, 0).await;
    let sent = send_ice(&a, &id, 3, "x");
    let seqs = expect_ice(&mut b, &sent).await;
    eventually_pending(&b, 3).await;
    b.actor.cast(ConnectionMsg::Delivered(seqs[1])).unwrap();
    eventually_pending(&b, 1).await;
    // A claim beyond what was written proves nothing more.
    b.actor.cast(ConnectionMsg::Delivered(u64::MAX)).unwrap();
    eventually_pending(&b, 0).await;
}

#[tokio::test]
async fn retention_is_bounded_and_a_resume_past_it_says_resume_gap() {
    let app = spawn_app_with(Backend::Sqlite, |f| {
        f.merge(("calls.ring_timeout_secs", 3600))
            .merge(("ws.resume_grace_secs", 3600))
            .merge(("ws.outbound_queue", 8))
    })
    .await;
    let (a, mut b, id) = answered(&app).await;
    // 20 messages written to bob (he reads as they come) but never acknowledged: only the
    // newest 8 are held.
    let mut sent = vec![];
    let mut seqs = vec![];
    for round in 0..4 {
        let batch = send_ice(&a, &id, 5, &format!("w{round}"));
        seqs.extend(expect_ice(&mut b, &batch).await);
        sent.extend(batch);
    }
    eventually_pending(&b, 8).await;
    b.socket_ends(SocketEnd::Dropped);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut b2 = b.resume(&app, Some(seqs[0])).await;
    let gap = b2.recv().await;
    assert_eq!(
        (gap["type"].as_str(), gap["code"].as_str()),
        (Some("error"), Some("resume_gap")),
        "{gap}"
    );
    assert!(gap.get("seq").is_none());
    expect_ice(&mut b2, &sent[12..]).await;
    // Away, bob cannot be held more than the bound of unwritten messages: his connection ends.
    b2.socket_ends(SocketEnd::Dropped);
    send_ice(&a, &id, 9, "overflow");
    crate::helpers::eventually("bob's connection ends", || {
        b2.actor.get_status() != ractor::ActorStatus::Running
    })
    .await;
}

#[tokio::test]
async fn retention_is_bounded_in_bytes() {
    let app = spawn_app_with(Backend::Sqlite, |f| {
        f.merge(("calls.ring_timeout_secs", 3600))
            .merge(("ws.resume_grace_secs", 3600))
            .merge(("ws.max_message_bytes", 16384))
            .merge(("ws.outbound_queue_bytes", 40000))
    })
    .await;
    let (a, b, id) = answered(&app).await;
    b.socket_ends(SocketEnd::Dropped);
    // Three 15 KB descriptions fit, a fourth does not: bob is away, so nothing is written and
    // his connection ends rather than growing.
    let sdp = "a".repeat(15000);
    for _ in 0..2 {
        a.send(json!({"type": "sdp", "call_id": id, "description": {"type": "offer", "sdp": sdp}}));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(b.actor.get_status(), ractor::ActorStatus::Running);
    assert!(b.info().await.pending_bytes > 30000);
    a.send(json!({"type": "sdp", "call_id": id, "description": {"type": "offer", "sdp": sdp}}));
    crate::helpers::eventually("bob's connection ends", || {
        b.actor.get_status() != ractor::ActorStatus::Running
    })
    .await;
}

#[tokio::test]
async fn a_reload_of_the_same_session_takes_the_call_over() {
    let app = app().await;
    let (mut a, b, id) = answered(&app).await;
    b.socket_ends(SocketEnd::GoingAway);
    a.expect("peer.reconnecting").await;
    let b2 = b.reload(&app).await;
    assert_eq!(b2.welcome["resumed"], false);
    assert_eq!(b2.welcome["connection_id"], b.welcome["connection_id"]);
    let call = &b2.welcome["call"];
    assert_eq!(
        (
            call["call_id"].as_str(),
            call["state"].as_str(),
            call["role"].as_str(),
            call["here"].as_bool()
        ),
        (
            Some(id.as_str()),
            Some("active"),
            Some("callee"),
            Some(true)
        ),
        "{call}"
    );
    a.expect("peer.reconnected").await;
    b2.send(json!({"type": "call.hangup", "call_id": id}));
    ended(&mut a, &id, "hangup").await;
}

#[tokio::test]
async fn callee_devices_that_appear_while_ringing_are_told() {
    let app = app().await;
    let mut a = Device::connect(&app, "alice", 64).await;
    let mut b = Device::connect(&app, "bob", 64).await;
    let (id, _) = ringing(&app, &mut a, &mut b, "bob").await;
    // A second device of bob's.
    let mut b2 = Device::attach(&app, b.user.clone(), 64).await;
    assert_eq!(b2.welcome["call"]["state"], "ringing");
    assert_eq!(b2.expect("call.incoming").await["call_id"], id.as_str());
    // Bob's first page reloads (going away, then a new socket of its session).
    b.socket_ends(SocketEnd::GoingAway);
    let mut b3 = b.reload(&app).await;
    assert_eq!(b3.welcome["call"]["here"], true);
    assert_eq!(b3.expect("call.incoming").await["call_id"], id.as_str());
    b3.send(json!({"type": "call.accept", "call_id": id}));
    b3.expect("call.accepted").await;
    a.expect("call.accepted").await;
    ended(&mut b2, &id, "answered_elsewhere").await;
}

#[tokio::test]
async fn close_1000_ends_the_call_at_once_with_left() {
    let app = app().await;
    let (mut a, b, id) = answered(&app).await;
    b.socket_ends(SocketEnd::Left);
    ended(&mut a, &id, "left").await;
    // A ringing callee's only device leaving ends the ring at once.
    let mut c = Device::connect(&app, "carol", 64).await;
    let mut d = Device::connect(&app, "dave", 64).await;
    let (id2, _) = ringing(&app, &mut c, &mut d, "dave").await;
    d.socket_ends(SocketEnd::Left);
    ended(&mut c, &id2, "left").await;
}

#[tokio::test]
async fn detached_connections_never_lock_their_user_out() {
    let app = spawn_app_with(Backend::Sqlite, |f| {
        f.merge(("ws.resume_grace_secs", 3600))
            .merge(("ws.max_connections_per_user", 3))
    })
    .await;
    let first = Device::connect(&app, "alice", 64).await;
    let user = first.user.clone();
    first.socket_ends(SocketEnd::GoingAway);
    let mut ghosts = vec![first];
    for _ in 0..10 {
        let d = Device::attach(&app, user.clone(), 64).await;
        d.socket_ends(SocketEnd::GoingAway);
        ghosts.push(d);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let live = Device::attach(&app, user.clone(), 64).await;
    assert_eq!(live.welcome["type"], "welcome");
    assert!(app.state.actors.stats().await.unwrap().connections <= 3);
}

#[tokio::test]
async fn any_device_of_a_party_may_hang_up_and_gets_the_acknowledgement() {
    let app = app().await;
    let (mut a, _b, id) = answered(&app).await;
    let mut a2 = Device::attach(&app, a.user.clone(), 64).await;
    assert_eq!(a2.welcome["call"]["here"], false);
    assert_eq!(a2.welcome["call"]["role"], "caller");
    a2.send(
        json!({"type": "call.hangup", "call_id": id, "ref": "h", "cause": "microphone_denied"}),
    );
    let ack = a2.expect("call.ended").await;
    assert_eq!(
        (
            ack["reason"].as_str(),
            ack["ref"].as_str(),
            ack["cause"].as_str()
        ),
        (Some("hangup"), Some("h"), Some("microphone_denied"))
    );
    let e = a.expect("call.ended").await;
    assert_eq!(e["cause"], "microphone_denied");
}

/// A child whose task the runtime dropped (the runtime is going away: a process ending right
/// after its shutdown began, a test's runtime dropped) is reported by ractor as terminated with
/// `actor_task_cancelled`. The root must not restart it: the restart is dropped at once too and
/// reported again, a restart loop (seen in the test suite's logs as thousands of "actor
/// restarted" lines per app; with a supervision port that did not spend tokio's cooperative
/// budget it never ended). The report is delivered here as ractor delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_whose_task_the_runtime_dropped_is_not_restarted() {
    let app = spawn_app_with(Backend::Sqlite, |f| {
        f.merge(("server.instance_id", "task-cancelled-test"))
    })
    .await;
    let registry = app.state.actors.registry().unwrap();
    let cell = registry.get_cell();
    cell.notify_supervisor(ractor::SupervisionEvent::ActorTerminated(
        cell.clone(),
        None,
        Some("actor_task_cancelled".into()),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        app.state.actors.registry().map(|r| r.get_id()),
        Some(registry.get_id()),
        "the registry is the same actor"
    );
    assert_eq!(
        app.state.actors.root.get_status(),
        ractor::ActorStatus::Running
    );
    let logs = logs();
    let mine = |l: &&str| l.contains("\"node\":\"task-cancelled-test\"");
    assert!(
        logs.lines()
            .filter(mine)
            .any(|l| l.contains("actor_task_cancelled")),
        "the report is logged"
    );
    assert!(
        !logs
            .lines()
            .filter(mine)
            .any(|l| l.contains("\"event\":\"restarted\"")),
        "nothing is restarted"
    );
}
