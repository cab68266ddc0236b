//! Call flows driven by sending actor messages directly, with no network: each "device" is a
//! real connection actor whose socket is a channel the test reads. Timers are driven by the test
//! (it sends `RingTimeout` / `GraceExpired` itself; the configured timers are an hour long).

use std::time::Duration;

use callsignal::actors::ask;
use callsignal::actors::call::CallMsg;
use callsignal::actors::connection::{ConnectionMsg, Outbound, SocketKill, SocketLink};
use callsignal::actors::registry::{ConnectRequest, RegistryMsg};
use callsignal::domain::{CallId, SessionId, UserId, UserRef, Username};
use ractor::ActorRef;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::helpers::{Backend, TestApp, spawn_app_with};

/// A device: a connection actor with a channel in place of its socket.
struct Device {
    actor: ActorRef<ConnectionMsg>,
    rx: mpsc::Receiver<Outbound>,
    socket_id: u64,
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
        Self::open(app, user, SessionId::new(), None, queue).await
    }

    /// A new "socket" for this device's connection, presenting its resume token.
    async fn resume(&self, app: &TestApp) -> Device {
        let token = self.welcome["resume_token"].as_str().map(str::to_owned);
        Self::open(app, self.user.clone(), self.session, token, 64).await
    }

    async fn open(
        app: &TestApp,
        user: UserRef,
        session: SessionId,
        resume_token: Option<String>,
        queue: usize,
    ) -> Device {
        let (tx, rx) = mpsc::channel(queue);
        let socket_id = rand_id();
        let req = ConnectRequest {
            user: user.clone(),
            session_id: session,
            session_expires_at: chrono::Utc::now() + chrono::Duration::days(1),
            resume_token,
            socket: SocketLink {
                socket_id,
                tx,
                abort: SocketKill::default(),
            },
            ice_servers: vec![],
        };
        let registry = app.state.actors.registry().unwrap();
        let actor = ask(&registry, |r| RegistryMsg::Connect(Box::new(req), r))
            .await
            .unwrap()
            .unwrap();
        let mut d = Device {
            actor,
            rx,
            socket_id,
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
            Some(Outbound::Text(t)) => serde_json::from_str(&t).unwrap(),
            other => panic!("expected a message, got {other:?}"),
        }
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
    b.actor
        .cast(ConnectionMsg::SocketClosed(b.socket_id, vec![]))
        .unwrap();
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

#[tokio::test]
async fn a_resume_delivers_unsent_frames_then_what_came_while_away() {
    let app = app().await;
    let (mut a, b, id) = answered(&app).await;
    // Bob's socket dies with two frames it never wrote; then alice sends one more.
    b.actor
        .cast(ConnectionMsg::SocketClosed(
            b.socket_id,
            vec!["{\"n\":1}".into(), "{\"n\":2}".into()],
        ))
        .unwrap();
    a.expect("peer.reconnecting").await;
    a.send(json!({"type": "ice", "call_id": id, "candidate": {"candidate": "later"}}));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut b2 = b.resume(&app).await;
    assert_eq!(b2.welcome["resumed"], true);
    assert_eq!(b2.welcome["connection_id"], b.welcome["connection_id"]);
    assert_eq!(b2.recv().await["n"], 1);
    assert_eq!(b2.recv().await["n"], 2);
    assert_eq!(b2.expect("ice").await["candidate"]["candidate"], "later");
    a.expect("peer.reconnected").await;
}
