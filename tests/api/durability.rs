//! Durable call records with real faults: a PostgreSQL of the test's own stopped mid-call, the
//! server SIGKILLed and SIGTERMed as a child process, idempotent event writes, and privacy of
//! SDP/candidate text.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::calls::active_call;
use crate::helpers::{Backend, Closed, PASSWORD, PG_ENV, TestApp, fresh_database, spawn_app_with};

// ---------------------------------------------------------------------------------------------
// A throwaway PostgreSQL cluster (never the shared one).

fn pg_bin(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| name.into())
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

/// Runs a PostgreSQL server binary, as the `postgres` user when we are root (initdb refuses root).
fn pg_command(name: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(pg_bin(name));
        c
    } else {
        Command::new(pg_bin(name))
    }
}

struct OwnPostgres {
    dir: tempfile::TempDir,
    port: u16,
}

impl OwnPostgres {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn init() -> Option<OwnPostgres> {
        if !pg_bin("initdb").exists() && Command::new("initdb").arg("--version").output().is_err() {
            assert!(std::env::var("CI").is_err(), "initdb is required in CI");
            eprintln!("SKIPPED: no initdb/pg_ctl on this machine");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("cs-pg-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        if is_root() {
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            Command::new("chmod")
                .arg("755")
                .arg(dir.path())
                .status()
                .expect("chmod");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = OwnPostgres { dir, port };
        let ok = pg_command("initdb")
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(pg.data())
            .stdout(Stdio::null())
            .status()
            .expect("initdb runs");
        assert!(ok.success(), "initdb");
        pg.start();
        Some(pg)
    }

    fn start(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.path().display()
        );
        let ok = pg_command("pg_ctl")
            .args(["-w", "-D"])
            .arg(self.data())
            .args(["-o", &opts, "-l"])
            .arg(self.dir.path().join("log"))
            .arg("start")
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl start");
        assert!(ok.success(), "pg_ctl start");
    }

    fn stop_immediately(&self) {
        let ok = pg_command("pg_ctl")
            .args(["-w", "-m", "immediate", "-D"])
            .arg(self.data())
            .arg("stop")
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl stop");
        assert!(ok.success(), "pg_ctl stop");
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = pg_command("pg_ctl")
            .args(["-m", "immediate", "-D"])
            .arg(self.data())
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A server on `pg` with a 40-event buffer, quick retries, and no per-pair invite limits (the
/// outage tests place many calls between the same users).
async fn outage_app(pg: &OwnPostgres) -> TestApp {
    let url = pg.url();
    spawn_app_with(Backend::Sqlite, |f| {
        f.merge(("database.url", url))
            .merge(("database.connect_timeout_secs", 1))
            .merge(("persistence.buffer_capacity", 40))
            .merge(("persistence.log_signaling", true))
            .merge(("persistence.retry_max_backoff_ms", 300))
            .merge(("calls.invites_per_pair_per_minute", 100))
            .merge(("calls.invites_per_callee_per_minute", 100))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_loses_no_call_event() {
    let Some(pg) = OwnPostgres::init() else {
        return;
    };
    let app = outage_app(&pg).await;
    let (ua, ub) = (app.user("alice").await, app.user("bob").await);
    let (mut a, mut b) = (app.ws(&ua).await, app.ws(&ub).await);
    let first = active_call(&mut a, &mut b, "bob").await;
    app.flushed().await;

    pg.stop_immediately();
    // Signaling goes on: relay and hang up the call, then make more calls.
    a.send(json!({"type": "sdp", "call_id": first, "description": {"type": "offer", "sdp": "during-outage"}})).await;
    assert_eq!(b.expect("sdp").await["description"]["sdp"], "during-outage");
    b.send(json!({"type": "ice", "call_id": first, "candidate": null}))
        .await;
    a.expect("ice").await;
    a.send(json!({"type": "call.hangup", "call_id": first}))
        .await;
    a.expect("call.ended").await;
    b.expect("call.ended").await;
    let r = app.get("/readyz", None).await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["database"]["ok"], false, "{v}");

    // Each answered call costs 3 events (created, accepted, ended); fill the 40-event buffer
    // until the server refuses new invites instead of dropping events.
    let mut made = vec![first.clone()];
    let refused = loop {
        a.send(json!({"type": "call.invite", "to": "bob"})).await;
        let v = a.recv().await;
        if v["type"] == "error" {
            break v;
        }
        assert_eq!(v["type"], "call.created", "{v}");
        let id = v["call_id"].as_str().unwrap().to_owned();
        b.expect("call.incoming").await;
        a.expect("call.ringing").await;
        b.send(json!({"type": "call.accept", "call_id": id})).await;
        b.expect("call.accepted").await;
        a.expect("call.accepted").await;
        b.send(json!({"type": "call.hangup", "call_id": id})).await;
        a.expect("call.ended").await;
        b.expect("call.ended").await;
        made.push(id);
        assert!(made.len() < 30, "the buffer bound was never reached");
    };
    assert_eq!(refused["code"], "persistence_unavailable");
    let v: Value = app.get("/readyz", None).await.json().await.unwrap();
    assert_eq!(v["persistence"]["ok"], false, "{v}");

    pg.start();
    assert!(
        app.state
            .actors
            .persistence
            .drain(Duration::from_secs(30))
            .await,
        "buffer drained after recovery"
    );
    let r = app.get("/readyz", None).await;
    assert_eq!(r.status(), 200);
    // Every event landed exactly once, in order (the status moved forward to `ended`).
    assert_eq!(
        app.count("SELECT COUNT(*) FROM calls").await,
        made.len() as i64
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM calls WHERE status = 'ended' AND answered_at IS NOT NULL AND ended_at IS NOT NULL").await, made.len() as i64);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM calls WHERE end_reason = 'hangup'")
            .await,
        made.len() as i64
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM signaling_messages").await,
        2,
        "the sdp and the ice of the first call"
    );
    // And the server takes calls again.
    a.send(json!({"type": "call.invite", "to": "bob"})).await;
    a.expect("call.created").await;
}

/// A chatty call cannot use up the budget that admits other users' calls: during an outage,
/// signaling rows fill only their own share of the buffer, and an unrelated invite still rings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signaling_rows_cannot_starve_new_calls_of_buffer() {
    let Some(pg) = OwnPostgres::init() else {
        return;
    };
    let app = outage_app(&pg).await;
    let (ua, ub) = (app.user("alice").await, app.user("bob").await);
    let (uc, ud) = (app.user("carol").await, app.user("dave").await);
    let (mut a, mut b) = (app.ws(&ua).await, app.ws(&ub).await);
    let (mut c, mut d) = (app.ws(&uc).await, app.ws(&ud).await);
    let chatty = active_call(&mut a, &mut b, "bob").await;
    app.flushed().await;
    pg.stop_immediately();
    // 100 candidates: far more signaling rows than the whole buffer holds.
    for i in 0..100 {
        a.send(
            json!({"type": "ice", "call_id": chatty, "candidate": {"candidate": format!("c{i}")}}),
        )
        .await;
        b.expect("ice").await;
    }
    assert!(
        app.state.metrics.signal_rows_skipped.get() > 0,
        "metadata rows were skipped"
    );
    // carol can still call dave.
    c.send(json!({"type": "call.invite", "to": "dave"})).await;
    assert_eq!(c.expect("call.created").await["to"]["username"], "dave");
    d.expect("call.incoming").await;
    pg.start();
}

// ---------------------------------------------------------------------------------------------
// The server as a child process.

struct Server {
    child: Child,
    addr: String,
}

fn start_server(db_url: &str, data_dir: &Path, instance: &str) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_callsignal"))
        .arg("serve")
        .env("CALLSIGNAL_SERVER__BIND", "127.0.0.1:0")
        .env("CALLSIGNAL_SERVER__DATA_DIR", data_dir)
        .env("CALLSIGNAL_SERVER__INSTANCE_ID", instance)
        .env("CALLSIGNAL_DATABASE__URL", db_url)
        .env("CALLSIGNAL_LOG__FORMAT", "json")
        .env("CALLSIGNAL_PERSISTENCE__BATCH_INTERVAL_MS", "5")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("server starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut sent = false;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if !sent && line.contains("callsignal listening") {
                let v: Value = serde_json::from_str(&line).unwrap();
                tx.send(v["addr"].as_str().unwrap().to_owned()).unwrap();
                sent = true;
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server reports its address");
    Server { child, addr }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn user(http: &reqwest::Client, addr: &str, name: &str) -> Value {
    let r = http
        .post(format!("http://{addr}/api/auth/register"))
        .json(&json!({"username": name, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    http.post(format!("http://{addr}/api/auth/login"))
        .json(&json!({"username": name, "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn ws(addr: &str, login: &Value) -> crate::helpers::WsClient {
    let (stream, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    let mut c = crate::helpers::WsClient {
        stream,
        welcome: Value::Null,
    };
    c.send(json!({"type": "hello", "token": login["access_token"]}))
        .await;
    c.welcome = c.expect("welcome").await;
    c
}

/// alice and bob registered on `server`, connected, and in an answered call:
/// (alice's login, bob's login, alice's socket, bob's socket, call id).
async fn call_on(
    server: &Server,
) -> (
    Value,
    Value,
    crate::helpers::WsClient,
    crate::helpers::WsClient,
    String,
) {
    let http = reqwest::Client::new();
    let (la, lb) = (
        user(&http, &server.addr, "alice").await,
        user(&http, &server.addr, "bob").await,
    );
    let (mut a, mut b) = (ws(&server.addr, &la).await, ws(&server.addr, &lb).await);
    let call_id = active_call(&mut a, &mut b, "bob").await;
    (la, lb, a, b, call_id)
}

async fn scalar(db_url: &str, sql: &str) -> Option<String> {
    use sea_orm::{ConnectionTrait, Database, Statement};
    let db = Database::connect(db_url).await.unwrap();
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            sql.to_owned(),
        ))
        .await
        .unwrap()?;
    row.try_get_by_index::<Option<String>>(0).unwrap()
}

async fn wait_for(db_url: &str, sql: &str, want: &str) {
    for _ in 0..250 {
        if scalar(db_url, sql).await.as_deref() == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{sql} never returned {want}");
}

/// Drops the test's PostgreSQL database when the iteration using it ends.
struct DropDb(String);

impl Drop for DropDb {
    fn drop(&mut self) {
        crate::helpers::drop_test_database(&self.0);
    }
}

async fn backends() -> Vec<(Backend, tempfile::TempDir, String, DropDb)> {
    let mut out = vec![];
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(Backend::Sqlite, dir.path()).await;
    out.push((Backend::Sqlite, dir, url.clone(), DropDb(url)));
    if std::env::var(PG_ENV).is_ok() {
        let dir = tempfile::tempdir().unwrap();
        let url = fresh_database(Backend::Postgres, dir.path()).await;
        out.push((Backend::Postgres, dir, url.clone(), DropDb(url)));
    } else {
        assert!(std::env::var("CI").is_err(), "{PG_ENV} must be set in CI");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_ends_its_calls_server_restart_on_restart() {
    for (backend, dir, url, _cleanup) in backends().await {
        let server = start_server(&url, &dir.path().join("data"), "node-a");
        let (la, lb, mut a, _b, call_id) = call_on(&server).await;
        let q = "SELECT status FROM calls WHERE caller_id = (SELECT id FROM users WHERE username = 'alice')".to_string();
        wait_for(&url, &q, "active").await;
        // Another instance's unfinished call in the same database must not be touched.
        let other = uuid::Uuid::new_v4();
        {
            use sea_orm::{ActiveModelTrait, ActiveValue::Set, Database};
            let db = Database::connect(&url).await.unwrap();
            entity::calls::ActiveModel {
                id: Set(other),
                caller_id: Set(la["user"]["id"].as_str().unwrap().parse().unwrap()),
                callee_id: Set(lb["user"]["id"].as_str().unwrap().parse().unwrap()),
                status: Set(entity::calls::CallStatus::Active),
                end_reason: Set(None),
                created_at: Set(chrono::Utc::now()),
                answered_at: Set(Some(chrono::Utc::now())),
                ended_at: Set(None),
                instance_id: Set("node-b".into()),
                caller_sdp_messages: Set(0),
                caller_ice_messages: Set(0),
                callee_sdp_messages: Set(0),
                callee_ice_messages: Set(0),
                first_signal_at: Set(None),
                last_signal_at: Set(None),
            }
            .insert(&db)
            .await
            .unwrap();
        }
        let mut server = server;
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        assert!(matches!(
            a.closed().await,
            Closed::Dropped | Closed::Code(_)
        ));
        let _restarted = start_server(&url, &dir.path().join("data"), "node-a");
        use sea_orm::{Database, EntityTrait};
        let db = Database::connect(&url).await.unwrap();
        let row = entity::calls::Entity::find_by_id(uuid::Uuid::parse_str(&call_id).unwrap())
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.status, entity::calls::CallStatus::Ended, "{backend:?}");
        assert_eq!(row.end_reason.as_deref(), Some("server_restart"));
        assert!(row.ended_at.is_some());
        let foreign = entity::calls::Entity::find_by_id(other)
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            foreign.status,
            entity::calls::CallStatus::Active,
            "only this instance's calls are recovered"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_calls_closes_1001_and_commits_before_exit() {
    for (backend, dir, url, _cleanup) in backends().await {
        let mut server = start_server(&url, &dir.path().join("data"), "local");
        let (_la, _lb, mut a, mut b, call_id) = call_on(&server).await;
        let pid = server.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        for c in [&mut a, &mut b] {
            let e = c.expect("call.ended").await;
            assert_eq!(e["reason"], "server_shutdown");
            assert_eq!(c.closed().await, Closed::Code(1001));
        }
        let status = server.child.wait().unwrap();
        assert!(status.success(), "{backend:?}: clean exit, got {status:?}");
        let q = "SELECT end_reason FROM calls WHERE status = 'ended' AND ended_at IS NOT NULL"
            .to_string();
        assert_eq!(
            scalar(&url, &q).await.as_deref(),
            Some("server_shutdown"),
            "{backend:?} {call_id}"
        );
    }
}

// ---------------------------------------------------------------------------------------------

async fn the_same_batch_twice_leaves_one_row_per_event(app: TestApp) {
    use callsignal::domain::{CallId, UserId};
    use callsignal::store::calls::{CallEvent, apply};
    let (ua, ub) = (app.register("alice").await, app.register("bob").await);
    let (a, b) = (
        UserId(ua["id"].as_str().unwrap().parse().unwrap()),
        UserId(ub["id"].as_str().unwrap().parse().unwrap()),
    );
    let call_id = CallId::new();
    let now = chrono::Utc::now();
    let batch = vec![
        CallEvent::Created {
            call_id,
            caller: a,
            callee: b,
            instance_id: "local".into(),
            at: now,
        },
        CallEvent::Accepted { call_id, at: now },
        CallEvent::Signal {
            id: uuid::Uuid::new_v4(),
            call_id,
            sender: a,
            kind: entity::signaling_messages::SignalingKind::Sdp,
            at: now,
        },
        CallEvent::Ended {
            call_id,
            reason: "hangup",
            at: now + chrono::Duration::seconds(3),
        },
    ];
    let db = app.db().await;
    for _ in 0..2 {
        for e in &batch {
            apply(&db, e).await.unwrap();
        }
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM calls").await, 1);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM signaling_messages").await,
        1
    );
    // A stale `accepted` (or `created`) after `ended` cannot move the call back.
    apply(
        &db,
        &CallEvent::Accepted {
            call_id,
            at: now + chrono::Duration::seconds(9),
        },
    )
    .await
    .unwrap();
    apply(&db, &batch[0]).await.unwrap();
    use sea_orm::EntityTrait;
    let row = entity::calls::Entity::find_by_id(call_id.0)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.status, entity::calls::CallStatus::Ended);
    assert_eq!(row.end_reason.as_deref(), Some("hangup"));
    assert_eq!(
        row.answered_at.map(|t| t.timestamp()),
        Some(now.timestamp())
    );
    // A second `ended` with another reason does not rewrite the first.
    apply(
        &db,
        &CallEvent::Ended {
            call_id,
            reason: "connection_lost",
            at: now,
        },
    )
    .await
    .unwrap();
    let row = entity::calls::Entity::find_by_id(call_id.0)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.end_reason.as_deref(), Some("hangup"));
}

crate::db_tests!(the_same_batch_twice_leaves_one_row_per_event);

/// A batch whose commit answer was lost is retried, possibly with more events behind it (the
/// queue grew meanwhile): the calls it creates already exist, and their answers, ends and
/// counters must still land. Many calls in one batch are folded into a few multi-row statements.
async fn a_retried_batch_with_more_events_still_moves_every_call_forward(app: TestApp) {
    use callsignal::domain::{CallId, UserId};
    use callsignal::store::calls::{CallEvent, SignalSummary, apply_all};
    let (ua, ub) = (app.user("alice").await, app.user("bob").await);
    let (a, b) = (
        UserId(ua.id.parse().unwrap()),
        UserId(ub.id.parse().unwrap()),
    );
    let now = chrono::Utc::now();
    let ids: Vec<CallId> = (0..1200).map(|_| CallId::new()).collect();
    let created: Vec<CallEvent> = ids
        .iter()
        .map(|&call_id| CallEvent::Created {
            call_id,
            caller: a,
            callee: b,
            instance_id: "local".into(),
            at: now,
        })
        .collect();
    let db = app.db().await;
    // The first attempt committed only the creations of the first 700 calls.
    apply_all(&db, &created[..700]).await.unwrap();
    // The retry carries every creation, then answers (all but call 0), counters and ends.
    let mut retry = created.clone();
    for (i, &call_id) in ids.iter().enumerate() {
        if i != 0 {
            retry.push(CallEvent::Accepted { call_id, at: now });
        }
        retry.push(CallEvent::Signals {
            call_id,
            summary: SignalSummary {
                caller_sdp: 1,
                caller_ice: i as u32,
                callee_sdp: 1,
                callee_ice: 2,
                first_at: Some(now),
                last_at: Some(now + chrono::Duration::seconds(1)),
            },
        });
        retry.push(CallEvent::Ended {
            call_id,
            reason: if i == 0 { "cancelled" } else { "hangup" },
            at: now + chrono::Duration::seconds(2),
        });
        // Stale after the end: must not move the call back.
        retry.push(CallEvent::Accepted {
            call_id,
            at: now + chrono::Duration::seconds(9),
        });
    }
    apply_all(&db, &retry).await.unwrap();
    apply_all(&db, &retry).await.unwrap();
    assert_eq!(app.count("SELECT COUNT(*) FROM calls").await, 1200);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM calls WHERE status = 'ended' AND end_reason = 'hangup' AND answered_at IS NOT NULL AND ended_at IS NOT NULL AND callee_ice_messages = 2 AND last_signal_at IS NOT NULL").await,
        1199
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM calls WHERE status = 'ended' AND end_reason = 'cancelled' AND answered_at IS NULL").await,
        1
    );
    assert_eq!(
        app.count("SELECT SUM(caller_ice_messages) FROM calls")
            .await,
        (0..1200).sum::<i64>()
    );
    use sea_orm::EntityTrait;
    let row = entity::calls::Entity::find_by_id(ids[5].0)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        row.answered_at.map(|t| t.timestamp()),
        Some(now.timestamp())
    );
    assert_eq!(
        row.ended_at.map(|t| t.timestamp()),
        Some((now + chrono::Duration::seconds(2)).timestamp())
    );
}

crate::db_tests!(a_retried_batch_with_more_events_still_moves_every_call_forward);

async fn signaling_metadata_rows_are_off_by_default_and_counted_per_call(app: TestApp) {
    let (ua, ub) = (app.user("alice").await, app.user("bob").await);
    let (mut a, mut b) = (app.ws(&ua).await, app.ws(&ub).await);
    let id = active_call(&mut a, &mut b, "bob").await;
    a.send(json!({"type": "sdp", "call_id": id, "description": {"type": "offer", "sdp": "x"}}))
        .await;
    b.expect("sdp").await;
    for _ in 0..3 {
        b.send(
            json!({"type": "ice", "call_id": id, "candidate": {"candidate": "c", "sdpMid": "0"}}),
        )
        .await;
        a.expect("ice").await;
    }
    b.send(json!({"type": "sdp", "call_id": id, "description": {"type": "answer", "sdp": "y"}}))
        .await;
    a.expect("sdp").await;
    a.send(json!({"type": "call.hangup", "call_id": id})).await;
    a.expect("call.ended").await;
    app.flushed().await;
    assert_eq!(
        app.count("SELECT COUNT(*) FROM signaling_messages").await,
        0,
        "no per-message rows unless persistence.log_signaling is on"
    );
    use sea_orm::EntityTrait;
    let row = entity::calls::Entity::find_by_id(id.parse::<uuid::Uuid>().unwrap())
        .one(&app.db().await)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            row.caller_sdp_messages,
            row.caller_ice_messages,
            row.callee_sdp_messages,
            row.callee_ice_messages
        ),
        (1, 0, 1, 3)
    );
    let (first, last) = (row.first_signal_at.unwrap(), row.last_signal_at.unwrap());
    assert!(first <= last && last <= row.ended_at.unwrap(), "{row:?}");
    // Call history shows the counters.
    let h = app
        .get(&format!("/api/calls/{id}"), Some(&ua.access))
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(h["signaling"]["caller"], json!({"sdp": 1, "ice": 0}), "{h}");
    assert_eq!(h["signaling"]["callee"], json!({"sdp": 1, "ice": 3}), "{h}");
    assert!(h["signaling"]["first_at"].is_string(), "{h}");
}

crate::db_tests!(signaling_metadata_rows_are_off_by_default_and_counted_per_call);

async fn signaling_rows_older_than_the_retention_are_deleted(app: TestApp) {
    use callsignal::actors::persistence::PersistenceMsg;
    let (ua, ub) = (app.user("alice").await, app.user("bob").await);
    let (mut a, mut b) = (app.ws(&ua).await, app.ws(&ub).await);
    let id = active_call(&mut a, &mut b, "bob").await;
    a.send(json!({"type": "sdp", "call_id": id, "description": {"type": "offer", "sdp": "x"}}))
        .await;
    b.expect("sdp").await;
    app.flushed().await;
    assert_eq!(
        app.count("SELECT COUNT(*) FROM signaling_messages").await,
        1,
        "opted in: the row is written"
    );
    // A row from two hours ago, past the one-hour retention.
    let db = app.db().await;
    let call_id = callsignal::domain::CallId(id.parse().unwrap());
    let sender = callsignal::domain::UserId(ua.id.parse().unwrap());
    callsignal::store::calls::apply(
        &db,
        &callsignal::store::calls::CallEvent::Signal {
            id: uuid::Uuid::now_v7(),
            call_id,
            sender,
            kind: entity::signaling_messages::SignalingKind::Ice,
            at: chrono::Utc::now() - chrono::Duration::hours(2),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        app.count("SELECT COUNT(*) FROM signaling_messages").await,
        2
    );
    let persistence = app
        .state
        .actors
        .persistence_actor()
        .expect("persistence actor");
    persistence.cast(PersistenceMsg::Prune).unwrap();
    for _ in 0..100 {
        if app.count("SELECT COUNT(*) FROM signaling_messages").await == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        app.count("SELECT COUNT(*) FROM signaling_messages WHERE type = 'SDP'")
            .await,
        1,
        "the recent row stays, the expired one is gone"
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM signaling_messages").await,
        1
    );
}

crate::db_tests_with!(|f| f.merge(("persistence.log_signaling", true)).merge(("persistence.signaling_retention_secs", 3600)); signaling_rows_older_than_the_retention_are_deleted);

async fn sdp_and_candidate_text_never_reach_the_database(app: TestApp) {
    let marker = format!("MARKER{}", uuid::Uuid::new_v4().simple());
    let (ua, ub) = (app.user("alice").await, app.user("bob").await);
    let (mut a, mut b) = (app.ws(&ua).await, app.ws(&ub).await);
    let id = active_call(&mut a, &mut b, "bob").await;
    a.send(json!({"type": "sdp", "call_id": id, "description": {"type": "offer", "sdp": format!("v=0\r\na={marker}\r\n")}})).await;
    b.expect("sdp").await;
    b.send(json!({"type": "ice", "call_id": id, "candidate": {"candidate": format!("candidate:{marker}"), "sdpMid": "0"}})).await;
    a.expect("ice").await;
    a.send(json!({"type": "call.hangup", "call_id": id})).await;
    a.expect("call.ended").await;
    app.flushed().await;
    assert_eq!(
        app.count("SELECT COUNT(*) FROM signaling_messages").await,
        2,
        "metadata was written"
    );
    let dump: Vec<u8> = if app.db_url.starts_with("sqlite") {
        let path = app
            .db_url
            .trim_start_matches("sqlite://")
            .split('?')
            .next()
            .unwrap()
            .to_owned();
        let mut bytes = std::fs::read(&path).unwrap();
        if let Ok(wal) = std::fs::read(format!("{path}-wal")) {
            bytes.extend(wal);
        }
        bytes
    } else {
        let out = Command::new("pg_dump")
            .arg(&app.db_url)
            .output()
            .expect("pg_dump runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    assert!(dump.len() > 1000, "the dump has content");
    let found = dump.windows(marker.len()).any(|w| w == marker.as_bytes());
    assert!(!found, "SDP/candidate text was stored");
}

crate::db_tests_with!(|f| f.merge(("persistence.log_signaling", true)); sdp_and_candidate_text_never_reach_the_database);
