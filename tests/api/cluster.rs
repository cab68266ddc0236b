//! Cluster mode: three real `callsignal` processes on loopback sharing one PostgreSQL database
//! and one real `nats-server` (started by each test on a free port with a store of its own),
//! driven by real HTTP and WebSocket clients. A missing `nats-server` fails these tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{
    Backend, Closed, PASSWORD, PG_ENV, TEST_SECRET, WsClient, drop_test_database, fresh_database,
    ws_raw_at,
};

/// Seconds without a heartbeat before a node counts as dead, in these tests.
const NODE_TIMEOUT_SECS: u64 = 3;

fn nats_bin() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/nats-server");
    if sbin.exists() {
        return sbin;
    }
    let found = Command::new("sh")
        .args(["-c", "command -v nats-server"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    found.expect("nats-server is required for the cluster tests (apt-get install nats-server)")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A nats-server of the test's own, JetStream on.
struct Nats {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
}

impl Nats {
    fn start() -> Self {
        let mut n = Self {
            child: None,
            port: free_port(),
            store: tempfile::tempdir().expect("store dir"),
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let child = Command::new(nats_bin())
            .args(["-js", "-sd"])
            .arg(self.store.path())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server listens");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One `callsignal serve` process.
struct Node {
    child: Child,
    addr: SocketAddr,
    name: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -TERM");
    }
}

/// Starts a node; `Err(its output)` if it exits instead of listening.
fn start_node(
    nats: &str,
    db_url: &str,
    data_dir: &Path,
    name: &str,
    extra: &[(&str, &str)],
) -> Result<Node, String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_callsignal"));
    cmd.arg("serve")
        .env("CALLSIGNAL_SERVER__BIND", "127.0.0.1:0")
        .env("CALLSIGNAL_SERVER__DATA_DIR", data_dir)
        .env("CALLSIGNAL_SERVER__INSTANCE_ID", name)
        .env("CALLSIGNAL_DATABASE__URL", db_url)
        .env("CALLSIGNAL_AUTH__JWT_SECRET", TEST_SECRET)
        .env("CALLSIGNAL_AUTH__REGISTER_PER_ADDRESS_PER_HOUR", "1000000")
        .env("CALLSIGNAL_LOG__FORMAT", "json")
        .env("CALLSIGNAL_PERSISTENCE__BATCH_INTERVAL_MS", "5")
        .env("CALLSIGNAL_CLUSTER__NATS_URL", nats)
        .env(
            "CALLSIGNAL_CLUSTER__NODE_TIMEOUT_SECS",
            NODE_TIMEOUT_SECS.to_string(),
        )
        .env("RUST_LOG", "info")
        .env_remove("CALLSIGNAL_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("server starts");
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let (logs, tx) = (logs.clone(), tx.clone());
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stream)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("callsignal listening")
                    && let Ok(v) = serde_json::from_str::<Value>(&line)
                    && let Some(addr) = v["addr"].as_str()
                {
                    let _ = tx.send(Some(addr.to_owned()));
                }
                logs.lock().unwrap().push(line);
            }
            let _ = tx.send(None);
        });
    }
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Some(addr)) => {
                return Ok(Node {
                    child,
                    addr: addr.parse().expect("addr"),
                    name: name.to_owned(),
                    logs,
                });
            }
            // One stream ended: the process may be exiting.
            Ok(None) => {
                for _ in 0..20 {
                    if child.try_wait().ok().flatten().is_some() {
                        std::thread::sleep(Duration::from_millis(100));
                        return Err(logs.lock().unwrap().join("\n"));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "no address within 40 s:\n{}",
                    logs.lock().unwrap().join("\n")
                ));
            }
        }
    }
}

/// Three nodes, one database, one NATS.
struct Cluster {
    nodes: Vec<Node>,
    nats: Nats,
    db_url: String,
    dirs: Vec<tempfile::TempDir>,
    http: reqwest::Client,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.sigkill();
        }
        drop_test_database(&self.db_url);
    }
}

/// Starts NATS and three nodes `a`, `b`, `c` that see each other; `None` (loudly) without
/// PostgreSQL outside CI, as every PostgreSQL test.
async fn cluster(extra: &[(&str, &str)]) -> Option<Cluster> {
    if std::env::var(PG_ENV).is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "{PG_ENV} is not set in CI: cluster tests must run"
        );
        eprintln!("SKIPPED: the cluster tests need {PG_ENV}");
        return None;
    }
    let nats = Nats::start();
    let root = tempfile::tempdir().expect("dir");
    let db_url = fresh_database(Backend::Postgres, root.path()).await;
    let mut c = Cluster {
        nodes: vec![],
        nats,
        db_url,
        dirs: vec![root],
        http: reqwest::Client::new(),
    };
    for name in ["a", "b", "c"] {
        let dir = tempfile::tempdir().expect("dir");
        let node = start_node(&c.nats.url(), &c.db_url, dir.path(), name, extra)
            .unwrap_or_else(|logs| panic!("node {name} starts:\n{logs}"));
        c.dirs.push(dir);
        c.nodes.push(node);
    }
    for i in 0..3 {
        c.wait_sees(i, 2).await;
    }
    Some(c)
}

impl Cluster {
    fn url(&self, node: usize, path: &str) -> String {
        format!("http://{}{}", self.nodes[node].addr, path)
    }

    async fn readyz(&self, node: usize) -> Value {
        match self.http.get(self.url(node, "/readyz")).send().await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    /// Waits until node `i` has heard `n` other nodes over a connected NATS.
    async fn wait_sees(&self, i: usize, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = self.readyz(i).await;
            let nodes = r["cluster"]["nodes"].as_array().map_or(0, Vec::len);
            if r["cluster"]["nats"] == "connected" && nodes == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} sees {n} others: {r}",
                self.nodes[i].name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn register(&self, node: usize, name: &str) {
        let r = self
            .http
            .post(self.url(node, "/api/auth/register"))
            .json(&json!({"username": name, "password": PASSWORD}))
            .send()
            .await
            .expect("register");
        assert_eq!(r.status(), 201, "register {name}");
    }

    /// Logs in on `node`: (access token, session id, user id).
    async fn login(&self, node: usize, name: &str) -> (String, String, String) {
        let r = self
            .http
            .post(self.url(node, "/api/auth/login"))
            .json(&json!({"username": name, "password": PASSWORD}))
            .send()
            .await
            .expect("login");
        assert_eq!(r.status(), 200, "login {name}");
        let v: Value = r.json().await.expect("json");
        (
            v["access_token"].as_str().unwrap().to_owned(),
            v["session_id"].as_str().unwrap().to_owned(),
            v["user"]["id"].as_str().unwrap().to_owned(),
        )
    }

    /// A socket of `token`'s user on `node`, past `welcome`.
    async fn ws(&self, node: usize, token: &str) -> WsClient {
        let mut c = ws_raw_at(self.nodes[node].addr).await;
        c.send(json!({"type": "hello", "token": token})).await;
        let welcome = c.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        c.welcome = welcome;
        c
    }

    /// Registers `name` and opens a socket for it on `node`.
    async fn user_on(&self, node: usize, name: &str) -> WsClient {
        self.register(node, name).await;
        let (token, _, _) = self.login(node, name).await;
        self.ws(node, &token).await
    }

    async fn db(&self) -> sea_orm::DatabaseConnection {
        sea_orm::Database::connect(&self.db_url)
            .await
            .expect("connect")
    }

    /// `(status, end_reason, answered, instance_id)` of call `id`, once ended (10 s at most).
    async fn ended_row(&self, id: &str) -> (String, String, bool, String) {
        use sea_orm::ConnectionTrait;
        let db = self.db().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let row = db
                .query_one_raw(sea_orm::Statement::from_string(
                    db.get_database_backend(),
                    format!(
                        "SELECT status, COALESCE(end_reason, ''), answered_at IS NOT NULL, instance_id \
                         FROM calls WHERE id = '{id}'"
                    ),
                ))
                .await
                .expect("query");
            let mut seen = String::from("no row");
            if let Some(row) = row {
                let status: String = row.try_get_by_index(0).unwrap();
                let reason: String = row.try_get_by_index(1).unwrap();
                let instance: String = row.try_get_by_index(3).unwrap();
                seen = format!("{status} {reason} {instance}");
                if status == "ended" {
                    return (
                        status,
                        row.try_get_by_index(1).unwrap(),
                        row.try_get_by_index(2).unwrap(),
                        row.try_get_by_index(3).unwrap(),
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "call {id} ended in the database: {seen}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn count(&self, sql: &str) -> i64 {
        use sea_orm::ConnectionTrait;
        let db = self.db().await;
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                sql.to_owned(),
            ))
            .await
            .expect("query")
            .expect("row");
        row.try_get_by_index::<i64>(0).expect("integer")
    }
}

/// Everything `ws` receives within `ms` milliseconds.
async fn drain(ws: &mut WsClient, ms: u64) -> Vec<Value> {
    let mut out = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, ws.stream.next()).await {
        if let Message::Text(t) = m {
            out.push(serde_json::from_str(t.as_str()).expect("json"));
        }
    }
    out
}

/// `from` invites `to`; returns the call id once `to` rings.
async fn ring(from: &mut WsClient, to: &mut WsClient, name: &str) -> String {
    from.send(json!({"type": "call.invite", "to": name, "ref": "inv"}))
        .await;
    let created = from.expect("call.created").await;
    assert_eq!(created["ref"], "inv");
    let call = created["call_id"].as_str().unwrap().to_owned();
    let incoming = to.expect("call.incoming").await;
    assert_eq!(incoming["call_id"], call.as_str());
    assert_eq!(from.expect("call.ringing").await["call_id"], call.as_str());
    call
}

/// `from` invites `to`, `to` accepts; returns the call id.
async fn connect(from: &mut WsClient, to: &mut WsClient, name: &str) -> String {
    let call = ring(from, to, name).await;
    to.send(json!({"type": "call.accept", "call_id": call}))
        .await;
    to.expect("call.accepted").await;
    from.expect("call.accepted").await;
    call
}

/// Relays one `ice` from `a` to `b`; `true` if it arrived (as sent) within `ms`.
async fn ice_arrives(a: &mut WsClient, b: &mut WsClient, call: &str, ms: u64) -> bool {
    let cand = json!({"candidate": "candidate:1 1 udp 1 192.0.2.1 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0});
    a.send(json!({"type": "ice", "call_id": call, "candidate": cand}))
        .await;
    drain(b, ms)
        .await
        .iter()
        .any(|m| m["type"] == "ice" && m["candidate"] == cand)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_call_across_nodes_relays_both_ways_and_is_recorded() {
    let Some(c) = cluster(&[]).await else { return };
    let r = c.readyz(0).await;
    assert_eq!(r["ready"], true, "{r}");
    assert_eq!(r["cluster"]["node"], "a");
    assert_eq!(r["cluster"]["nodes"], json!(["b", "c"]), "{r}");
    let metrics = c
        .http
        .get(c.url(0, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for want in [
        "callsignal_cluster_nats_connected 1",
        "callsignal_cluster_nodes_seen 2",
    ] {
        assert!(metrics.contains(want), "missing {want:?}:\n{metrics}");
    }
    let mut alice = c.user_on(0, "alice").await;
    let mut bob = c.user_on(1, "bob").await;

    let call = connect(&mut alice, &mut bob, "bob").await;
    let offer = r#"{"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n a=x  "}"#;
    alice
        .send_text(&format!(
            r#"{{"type":"sdp","call_id":"{call}","description":{offer}}}"#
        ))
        .await;
    let got = bob.expect("sdp").await;
    assert_eq!(got["from"]["username"], "alice");
    assert_eq!(
        got["description"],
        serde_json::from_str::<Value>(offer).unwrap()
    );
    bob.send(json!({"type": "sdp", "call_id": call, "description": {"type": "answer", "sdp": "v=0\r\n"}}))
        .await;
    let got = alice.expect("sdp").await;
    assert_eq!(got["from"]["username"], "bob");
    assert_eq!(got["description"]["type"], "answer");
    assert!(ice_arrives(&mut alice, &mut bob, &call, 2000).await);
    assert!(ice_arrives(&mut bob, &mut alice, &call, 2000).await);
    bob.send(json!({"type": "ice", "call_id": call, "candidate": null}))
        .await;
    assert_eq!(alice.expect("ice").await["candidate"], Value::Null);

    alice
        .send(json!({"type": "call.hangup", "call_id": call, "ref": "h"}))
        .await;
    let ended = alice.expect("call.ended").await;
    assert_eq!(
        (&ended["reason"], &ended["ref"]),
        (&json!("hangup"), &json!("h"))
    );
    assert_eq!(bob.expect("call.ended").await["reason"], "hangup");
    let (_, reason, answered, instance) = c.ended_row(&call).await;
    assert_eq!(
        (reason.as_str(), answered, instance.as_str()),
        ("hangup", true, "a")
    );
    // The call's counters, kept by its owner, count both parties although the callee's
    // messages were relayed from another node: caller 1 sdp + 1 ice, callee 1 sdp + 2 ice.
    let counts = format!(
        "SELECT CAST(caller_sdp_messages * 1000 + caller_ice_messages * 100 \
         + callee_sdp_messages * 10 + callee_ice_messages AS BIGINT) FROM calls WHERE id = '{call}'"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = c.count(&counts).await;
        if n == 1112 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "signaling counters recorded: {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Both are free again at once, cluster-wide: bob calls alice back.
    let back = ring(&mut bob, &mut alice, "alice").await;
    assert_ne!(back, call);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_two_devices_on_two_nodes_ring_and_first_accept_wins() {
    let Some(c) = cluster(&[]).await else { return };
    let mut alice = c.user_on(0, "alice").await;
    c.register(1, "bob").await;
    let (token, _, _) = c.login(1, "bob").await;
    let mut bob_b = c.ws(1, &token).await;
    let mut bob_c = c.ws(2, &token).await;
    // Presence is written in the background: wait until node a sees both devices.
    tokio::time::sleep(Duration::from_millis(300)).await;

    alice
        .send(json!({"type": "call.invite", "to": "bob"}))
        .await;
    let call = alice.expect("call.created").await["call_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        bob_b.expect("call.incoming").await["call_id"],
        call.as_str()
    );
    assert_eq!(
        bob_c.expect("call.incoming").await["call_id"],
        call.as_str()
    );
    alice.expect("call.ringing").await;

    // Both devices answer at once: exactly one wins, cluster-wide.
    let accept = json!({"type": "call.accept", "call_id": call});
    bob_b.send(accept.clone()).await;
    bob_c.send(accept).await;
    let (got_b, got_c) = tokio::join!(drain(&mut bob_b, 1500), drain(&mut bob_c, 1500));
    let won = |v: &[Value]| v.iter().any(|m| m["type"] == "call.accepted");
    assert!(
        won(&got_b) ^ won(&got_c),
        "one winner: {got_b:?} / {got_c:?}"
    );
    let loser = if won(&got_b) { &got_c } else { &got_b };
    assert!(
        loser
            .iter()
            .any(|m| m["type"] == "call.ended" && m["reason"] == "answered_elsewhere"),
        "{loser:?}"
    );
    assert!(
        loser
            .iter()
            .any(|m| m["type"] == "error" && m["code"] == "call_not_ringing"),
        "{loser:?}"
    );
    alice.expect("call.accepted").await;
    alice.silent_for(300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_reject_and_cancel_reach_every_device_on_every_node() {
    let Some(c) = cluster(&[]).await else { return };
    let mut alice = c.user_on(0, "alice").await;
    c.register(1, "bob").await;
    let (token, _, _) = c.login(1, "bob").await;
    let mut bob_b = c.ws(1, &token).await;
    let mut bob_c = c.ws(2, &token).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // bob declines on node b: everyone hears `rejected`, the decliner with its ref.
    let call = ring(&mut alice, &mut bob_b, "bob").await;
    assert_eq!(
        bob_c.expect("call.incoming").await["call_id"],
        call.as_str()
    );
    bob_b
        .send(json!({"type": "call.reject", "call_id": call, "ref": "no"}))
        .await;
    let ack = bob_b.expect("call.ended").await;
    assert_eq!(
        (&ack["reason"], &ack["ref"]),
        (&json!("rejected"), &json!("no"))
    );
    assert_eq!(bob_c.expect("call.ended").await["reason"], "rejected");
    assert_eq!(alice.expect("call.ended").await["reason"], "rejected");
    assert_eq!(c.ended_row(&call).await.1, "rejected");

    // alice cancels while both devices ring.
    let call = ring(&mut alice, &mut bob_b, "bob").await;
    bob_c.expect("call.incoming").await;
    alice
        .send(json!({"type": "call.hangup", "call_id": call}))
        .await;
    assert_eq!(alice.expect("call.ended").await["reason"], "cancelled");
    assert_eq!(bob_b.expect("call.ended").await["reason"], "cancelled");
    assert_eq!(bob_c.expect("call.ended").await["reason"], "cancelled");
    assert_eq!(c.ended_row(&call).await.1, "cancelled");

    // A device that is not a party cannot act on the answered call of another node's user.
    let call = connect(&mut alice, &mut bob_b, "bob").await;
    bob_c.expect("call.incoming").await;
    assert_eq!(
        bob_c.expect("call.ended").await["reason"],
        "answered_elsewhere"
    );
    let mut carol = c.user_on(2, "carol").await;
    carol
        .send(json!({"type": "call.hangup", "call_id": call, "ref": "x"}))
        .await;
    carol.expect_error("not_participant").await;
    // The callee hangs up from node b.
    bob_b
        .send(json!({"type": "call.hangup", "call_id": call}))
        .await;
    assert_eq!(bob_b.expect("call.ended").await["reason"], "hangup");
    assert_eq!(alice.expect("call.ended").await["reason"], "hangup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_device_connecting_on_another_node_while_ringing_rings_and_can_answer() {
    let Some(c) = cluster(&[]).await else { return };
    let mut alice = c.user_on(0, "alice").await;
    c.register(1, "bob").await;
    let (token, _, _) = c.login(1, "bob").await;
    let mut bob_b = c.ws(1, &token).await;
    let call = ring(&mut alice, &mut bob_b, "bob").await;

    // bob opens the app on a device served by node c, which was never told of the call.
    let mut bob_c = c.ws(2, &token).await;
    let incoming = bob_c.expect("call.incoming").await;
    assert_eq!(incoming["call_id"], call.as_str());
    assert_eq!(incoming["from"]["username"], "alice");
    bob_c
        .send(json!({"type": "call.accept", "call_id": call, "ref": "c"}))
        .await;
    assert_eq!(bob_c.expect("call.accepted").await["ref"], "c");
    alice.expect("call.accepted").await;
    assert_eq!(
        bob_b.expect("call.ended").await["reason"],
        "answered_elsewhere"
    );
    assert!(ice_arrives(&mut alice, &mut bob_c, &call, 2000).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_busy_busy_self_glare_and_unavailable_hold_across_nodes() {
    let Some(c) = cluster(&[]).await else { return };
    let mut alice = c.user_on(0, "alice").await;
    let mut bob = c.user_on(1, "bob").await;
    let mut carol = c.user_on(2, "carol").await;
    c.register(2, "dave").await;
    connect(&mut alice, &mut bob, "bob").await;

    // carol (node c) calls bob, who is in a call (nodes a/b): busy.
    carol
        .send(json!({"type": "call.invite", "to": "bob"}))
        .await;
    carol.expect("call.created").await;
    assert_eq!(carol.expect("call.ended").await["reason"], "busy");
    // bob (node b) cannot call anyone: busy_self.
    bob.send(json!({"type": "call.invite", "to": "carol", "ref": "x"}))
        .await;
    assert_eq!(bob.expect_error("busy_self").await["ref"], "x");
    // dave has no connection anywhere: unavailable.
    carol
        .send(json!({"type": "call.invite", "to": "dave"}))
        .await;
    carol.expect("call.created").await;
    assert_eq!(carol.expect("call.ended").await["reason"], "unavailable");
    // No such user.
    carol
        .send(json!({"type": "call.invite", "to": "nobody"}))
        .await;
    carol.expect_error("user_not_found").await;

    // Glare: erin (a) rings frank (c); frank's invite back ends `glare` and he keeps ringing.
    let mut erin = c.user_on(0, "erin").await;
    let mut frank = c.user_on(2, "frank").await;
    let call = ring(&mut erin, &mut frank, "frank").await;
    frank
        .send(json!({"type": "call.invite", "to": "erin"}))
        .await;
    frank.expect("call.created").await;
    assert_eq!(frank.expect("call.ended").await["reason"], "glare");
    frank
        .send(json!({"type": "call.accept", "call_id": call}))
        .await;
    frank.expect("call.accepted").await;
    erin.expect("call.accepted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_revocation_on_one_node_closes_the_socket_on_another() {
    let Some(c) = cluster(&[]).await else { return };
    c.register(0, "alice").await;
    let (token1, _, _) = c.login(0, "alice").await;
    let (token2, session2, _) = c.login(0, "alice").await;
    let mut on_c = c.ws(2, &token2).await;
    let r = c
        .http
        .delete(c.url(0, &format!("/api/sessions/{session2}")))
        .bearer_auth(&token1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let started = Instant::now();
    assert_eq!(
        on_c.expect_error("session_revoked").await["code"],
        "session_revoked"
    );
    assert_eq!(on_c.closed().await, Closed::Code(4401));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // Logout on node b closes the same user's socket on node a.
    let mut on_a = c.ws(0, &token1).await;
    let r = c
        .http
        .post(c.url(1, "/api/auth/logout"))
        .bearer_auth(&token1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    on_a.expect_error("session_revoked").await;
    assert_eq!(on_a.closed().await, Closed::Code(4401));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_connection_cap_counts_every_node() {
    let Some(c) = cluster(&[("CALLSIGNAL_WS__MAX_CONNECTIONS_PER_USER", "2")]).await else {
        return;
    };
    c.register(0, "alice").await;
    let (token, _, _) = c.login(0, "alice").await;
    let _a = c.ws(0, &token).await;
    let _b = c.ws(1, &token).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut third = ws_raw_at(c.nodes[2].addr).await;
    third.send(json!({"type": "hello", "token": token})).await;
    third.expect_error("too_many_connections").await;
    assert_eq!(third.closed().await, Closed::Code(1013));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_killed_mid_call_ends_calls_and_its_rows() {
    let Some(mut c) = cluster(&[]).await else {
        return;
    };
    let mut alice = c.user_on(0, "alice").await;
    let mut bob = c.user_on(1, "bob").await;
    let mut dave = c.user_on(1, "dave").await;
    let mut carol = c.user_on(2, "carol").await;
    // One call owned by a (its callee on b), one owned by b (its callee on c).
    let owned_by_a = connect(&mut alice, &mut bob, "bob").await;
    let owned_by_b = connect(&mut dave, &mut carol, "carol").await;

    // Both calls are on disk (active) before their nodes' fates differ.
    let active = format!(
        "SELECT COUNT(*) FROM calls WHERE status = 'active' AND id IN ('{owned_by_a}', '{owned_by_b}')"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.count(&active).await < 2 {
        assert!(
            Instant::now() < deadline,
            "both calls active on disk:\n{}",
            c.nodes[1].logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.nodes[1].sigkill();
    let started = Instant::now();
    for ws in [&mut alice, &mut carol] {
        let ended = loop {
            let m = tokio::time::timeout(Duration::from_secs(15), ws.recv())
                .await
                .expect("call.ended within the grace");
            if m["type"] == "call.ended" {
                break m;
            }
        };
        assert_eq!(ended["reason"], "connection_lost", "{ended}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let (_, reason, _, instance) = c.ended_row(&owned_by_a).await;
    assert_eq!(
        (reason.as_str(), instance.as_str()),
        ("connection_lost", "a")
    );
    let (_, reason, _, instance) = c.ended_row(&owned_by_b).await;
    assert_eq!(
        (reason.as_str(), instance.as_str()),
        ("server_restart", "b")
    );
    c.wait_sees(0, 1).await;

    // The survivors are free: alice (a) calls carol (c).
    connect(&mut alice, &mut carol, "carol").await;
    assert!(
        c.nodes[0].logs().contains("cluster node lost")
            || c.nodes[2].logs().contains("cluster node lost"),
        "the loss is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_nats_restart_mid_call_keeps_relaying() {
    let Some(mut c) = cluster(&[]).await else {
        return;
    };
    let mut alice = c.user_on(0, "alice").await;
    let mut bob = c.user_on(1, "bob").await;
    let call = connect(&mut alice, &mut bob, "bob").await;
    assert!(ice_arrives(&mut alice, &mut bob, &call, 2000).await);

    c.nats.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = c.readyz(0).await;
    assert_eq!(r["ready"], false, "{r}");
    assert_eq!(r["cluster"]["nats"], "disconnected", "{r}");
    c.nats.spawn();
    c.wait_sees(0, 2).await;
    c.wait_sees(1, 2).await;

    // Relaying resumes (what was sent during the outage may be lost, never the call).
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ice_arrives(&mut alice, &mut bob, &call, 500).await {
        assert!(
            Instant::now() < deadline,
            "relay a → b resumes after NATS is back"
        );
    }
    while !ice_arrives(&mut bob, &mut alice, &call, 500).await {
        assert!(
            Instant::now() < deadline,
            "relay b → a resumes after NATS is back"
        );
    }
    alice
        .send(json!({"type": "call.hangup", "call_id": call}))
        .await;
    let ended = drain(&mut bob, 3000).await;
    assert!(
        ended
            .iter()
            .any(|m| m["type"] == "call.ended" && m["reason"] == "hangup"),
        "{ended:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_refuses_to_start_with_the_id_of_a_live_node() {
    let Some(c) = cluster(&[]).await else { return };
    let dir = tempfile::tempdir().expect("dir");
    let refused = start_node(&c.nats.url(), &c.db_url, dir.path(), "b", &[]);
    let logs = match refused {
        Ok(n) => panic!("a second node `b` started at {}", n.addr),
        Err(logs) => logs,
    };
    assert!(logs.contains("held by a live node"), "{logs}");
    // The live `b` is untouched.
    c.wait_sees(1, 2).await;
}

/// `bob`'s call `call` is answered on his side: the `seq` of his `call.accepted`.
async fn accept_seq(to: &mut WsClient, from: &mut WsClient, call: &str) -> u64 {
    to.send(json!({"type": "call.accept", "call_id": call}))
        .await;
    let accepted = to.expect("call.accepted").await;
    from.expect("call.accepted").await;
    accepted["seq"].as_u64().expect("seq")
}

/// alice (node a) and bob (node b) in an answered call; then bob's socket drops (no close).
struct Dropped {
    alice: WsClient,
    token: String,
    call: String,
    /// The `seq` of bob's `call.accepted`: the last message he processed.
    last: u64,
    resume: String,
    connection_id: String,
}

async fn call_then_drop(c: &Cluster) -> Dropped {
    let mut alice = c.user_on(0, "alice").await;
    c.register(1, "bob").await;
    let (token, _, _) = c.login(1, "bob").await;
    let mut bob = c.ws(1, &token).await;
    let call = ring(&mut alice, &mut bob, "bob").await;
    let last = accept_seq(&mut bob, &mut alice, &call).await;
    let resume = bob.welcome["resume_token"].as_str().unwrap().to_owned();
    let connection_id = bob.connection_id().to_owned();
    drop(bob);
    alice.expect("peer.reconnecting").await;
    Dropped {
        alice,
        token,
        call,
        last,
        resume,
        connection_id,
    }
}

fn candidate(n: u32) -> Value {
    json!({"candidate": format!("candidate:{n} 1 udp 1 192.0.2.1 {n} typ host"), "sdpMid": "0", "sdpMLineIndex": 0})
}

/// A `hello` resuming on `node` that must resume (`welcome.resumed` true).
async fn resumed_at(
    c: &Cluster,
    node: usize,
    token: &str,
    resume: &str,
    last_seq: u64,
) -> WsClient {
    let ws = resume_at(c, node, token, resume, last_seq).await;
    assert_eq!(ws.welcome["resumed"], true, "{}", ws.welcome);
    ws
}

/// A `hello` resuming on `node`: the socket past its `welcome`.
async fn resume_at(c: &Cluster, node: usize, token: &str, resume: &str, last_seq: u64) -> WsClient {
    let mut ws = ws_raw_at(c.nodes[node].addr).await;
    ws.send(json!({"type": "hello", "token": token, "resume_token": resume, "last_seq": last_seq}))
        .await;
    ws.welcome = ws.expect("welcome").await;
    ws
}

/// Bob's socket on node b drops; he comes back through node c with his resume token: the same
/// connection (still on b) continues, the messages sent to him meanwhile are replayed in order,
/// and the call relays both ways and hangs up as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_resume_on_another_node_replays_what_was_missed_and_keeps_the_call() {
    let Some(c) = cluster(&[]).await else {
        return;
    };
    // bob's network drops (no close frame); alice keeps trickling candidates.
    let Dropped {
        mut alice,
        token,
        call,
        last,
        resume,
        connection_id: old_id,
    } = call_then_drop(&c).await;
    for n in 1..=3 {
        alice
            .send(json!({"type": "ice", "call_id": call, "candidate": candidate(n)}))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut bob = resumed_at(&c, 2, &token, &resume, last).await;
    assert_eq!(bob.welcome["connection_id"], old_id.as_str());
    assert_eq!(
        bob.welcome["call"]["call_id"],
        call.as_str(),
        "{}",
        bob.welcome
    );
    for n in 1..=3 {
        let ice = bob.expect("ice").await;
        assert_eq!(ice["seq"], last + n as u64, "{ice}");
        assert_eq!(ice["candidate"], candidate(n));
        assert_eq!(ice["from"]["username"], "alice");
    }
    alice.expect("peer.reconnected").await;
    assert!(
        ice_arrives(&mut bob, &mut alice, &call, 3000).await,
        "bob → alice"
    );
    assert!(
        ice_arrives(&mut alice, &mut bob, &call, 3000).await,
        "alice → bob"
    );
    // The bridged socket's acks and pings reach the connection on node b.
    bob.send(json!({"type": "ping", "ref": "p"})).await;
    assert_eq!(bob.expect("pong").await["ref"], "p");

    bob.send(json!({"type": "call.hangup", "call_id": call}))
        .await;
    let ended = alice.expect("call.ended").await;
    assert_eq!(ended["reason"], "hangup", "{ended}");
    assert_eq!(bob.expect("call.ended").await["reason"], "hangup");
    let (_, reason, answered, _) = c.ended_row(&call).await;
    assert_eq!((reason.as_str(), answered), ("hangup", true));
    assert!(
        c.nodes[1]
            .logs()
            .contains("resumed by a socket on another node"),
        "{}",
        c.nodes[1].logs()
    );
}

/// A reloaded page (close 1001, its resume token lost) that comes back through another node
/// takes its connection over there, call included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_takeover_on_another_node_keeps_the_call() {
    let Some(c) = cluster(&[]).await else {
        return;
    };
    let mut alice = c.user_on(0, "alice").await;
    c.register(1, "bob").await;
    let (token, _, _) = c.login(1, "bob").await;
    let mut bob = c.ws(1, &token).await;
    let call = connect(&mut alice, &mut bob, "bob").await;
    let old_id = bob.connection_id().to_owned();
    bob.stream
        .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Away,
            reason: "reload".into(),
        }))
        .await
        .expect("close");
    drop(bob);
    alice.expect("peer.reconnecting").await;

    let mut bob = c.ws(2, &token).await;
    assert_eq!(bob.welcome["resumed"], false, "{}", bob.welcome);
    assert_eq!(bob.welcome["connection_id"], old_id.as_str());
    assert_eq!(
        bob.welcome["call"]["call_id"],
        call.as_str(),
        "{}",
        bob.welcome
    );
    alice.expect("peer.reconnected").await;
    assert!(
        ice_arrives(&mut alice, &mut bob, &call, 3000).await,
        "alice → bob"
    );
    assert!(
        ice_arrives(&mut bob, &mut alice, &call, 3000).await,
        "bob → alice"
    );
    bob.send(json!({"type": "call.hangup", "call_id": call}))
        .await;
    assert_eq!(alice.expect("call.ended").await["reason"], "hangup");
}

/// The node holding a bridged socket dies: what was sent into the dead bridge is not lost —
/// the client resumes on a third node and gets it replayed; a second drop and resume back on
/// the connection's own node works too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_bridged_socket_node_killed_then_resume_elsewhere_loses_nothing() {
    let Some(mut c) = cluster(&[]).await else {
        return;
    };
    let Dropped {
        mut alice,
        token,
        call,
        last,
        resume,
        ..
    } = call_then_drop(&c).await;
    let mut bob = resumed_at(&c, 2, &token, &resume, last).await;
    alice.expect("peer.reconnected").await;
    assert!(
        ice_arrives(&mut alice, &mut bob, &call, 3000).await,
        "bridged relay"
    );
    let seen = last + 1;

    // Node c (holding bob's socket) dies; alice sends before anyone notices.
    c.nodes[2].sigkill();
    for n in 10..=12 {
        alice
            .send(json!({"type": "ice", "call_id": call, "candidate": candidate(n)}))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(bob);
    let mut bob = resumed_at(&c, 0, &token, &resume, seen).await;
    for n in 10..=12 {
        let ice = bob.expect("ice").await;
        assert_eq!(ice["candidate"], candidate(n), "{ice}");
        assert_eq!(ice["seq"], seen + (n - 9) as u64, "{ice}");
    }
    assert!(
        ice_arrives(&mut bob, &mut alice, &call, 3000).await,
        "bob → alice"
    );
    let seen = seen + 3;

    // Back home: a plain resume on node b replaces the bridge.
    alice
        .send(json!({"type": "ice", "call_id": call, "candidate": candidate(20)}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(bob);
    let mut bob = resumed_at(&c, 1, &token, &resume, seen).await;
    let ice = bob.expect("ice").await;
    assert_eq!(ice["candidate"], candidate(20), "{ice}");
    assert!(
        ice_arrives(&mut alice, &mut bob, &call, 3000).await,
        "local again"
    );
    bob.send(json!({"type": "call.hangup", "call_id": call}))
        .await;
    // alice heard of each drop and return (peer.reconnecting / peer.reconnected) meanwhile.
    let ended = loop {
        let m = alice.recv().await;
        if m["type"] == "call.ended" {
            break m;
        }
        assert!(m["type"].as_str().unwrap().starts_with("peer."), "{m}");
    };
    assert_eq!(ended["reason"], "hangup");
    let (_, reason, _, _) = c.ended_row(&call).await;
    assert_eq!(reason, "hangup");
}

/// NATS goes away under a bridged socket: the socket's node closes it (1013, try again) rather
/// than let frames fall into the outage; once NATS is back the client resumes through the same
/// node and the call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_nats_restart_under_a_bridged_socket_closes_it_for_a_resume() {
    let Some(mut c) = cluster(&[]).await else {
        return;
    };
    let Dropped {
        mut alice,
        token,
        call,
        last,
        resume,
        ..
    } = call_then_drop(&c).await;
    let mut bob = resumed_at(&c, 2, &token, &resume, last).await;
    assert!(ice_arrives(&mut alice, &mut bob, &call, 3000).await);

    c.nats.kill();
    assert_eq!(bob.closed().await, Closed::Code(1013));
    c.nats.spawn();
    for i in 0..3 {
        c.wait_sees(i, 2).await;
    }
    let mut bob = resumed_at(&c, 2, &token, &resume, last + 1).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ice_arrives(&mut bob, &mut alice, &call, 500).await {
        assert!(Instant::now() < deadline, "bob → alice after the outage");
    }
    while !ice_arrives(&mut alice, &mut bob, &call, 500).await {
        assert!(Instant::now() < deadline, "alice → bob after the outage");
    }
}

/// The presence bucket trails a new connection by one background write. A callee whose entry
/// has not landed yet (here: removed from the real bucket, as it is in that instant) still
/// rings: the inviting node asks every live node before answering `unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_callee_missing_from_presence_still_rings() {
    let Some(c) = cluster(&[]).await else {
        return;
    };
    let mut alice = c.user_on(0, "alice").await;
    c.register(1, "bob").await;
    let (token, _, bob_id) = c.login(1, "bob").await;
    let mut bob = c.ws(1, &token).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let nc = async_nats::connect(c.nats.url()).await.expect("nats");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("KV-Operation", "DEL");
    nc.publish_with_headers(
        format!("$KV.callsignal_presence.{bob_id}"),
        headers,
        "".into(),
    )
    .await
    .expect("publish");
    nc.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(200)).await;

    alice
        .send(json!({"type": "call.invite", "to": "bob", "ref": "inv"}))
        .await;
    let created = alice.expect("call.created").await;
    let next = alice.recv().await;
    assert_eq!(next["type"], "call.ringing", "{next}");
    assert_eq!(
        bob.expect("call.incoming").await["call_id"],
        created["call_id"]
    );
}

/// One login session with two connections: c1 (node b) is bob's call party, c2 (node a) is
/// idle. Both drop. A `hello` through node a with c1's resume token resumes c1 (not the local
/// c2); a `hello` without a token takes over the call party c1 too, as on one node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_resume_prefers_the_token_and_the_call_party_over_a_local_idle_connection() {
    let Some(c) = cluster(&[]).await else {
        return;
    };
    let mut alice = c.user_on(0, "alice").await;
    c.register(1, "bob").await;
    let (token, _, _) = c.login(1, "bob").await;
    let mut c1 = c.ws(1, &token).await;
    let call = ring(&mut alice, &mut c1, "bob").await;
    let last = accept_seq(&mut c1, &mut alice, &call).await;
    let c2 = c.ws(0, &token).await;
    let (c1_id, resume) = (
        c1.connection_id().to_owned(),
        c1.welcome["resume_token"].as_str().unwrap().to_owned(),
    );
    drop(c1);
    drop(c2);
    alice.expect("peer.reconnecting").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut back = resumed_at(&c, 0, &token, &resume, last).await;
    assert_eq!(back.welcome["connection_id"], c1_id.as_str());
    assert!(ice_arrives(&mut alice, &mut back, &call, 3000).await);

    // Again, without the token (a reloaded page): the call party is taken over.
    back.stream
        .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Away,
            reason: "reload".into(),
        }))
        .await
        .expect("close");
    drop(back);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut page = c.ws(0, &token).await;
    assert_eq!(
        page.welcome["connection_id"],
        c1_id.as_str(),
        "{}",
        page.welcome
    );
    assert_eq!(
        page.welcome["call"]["call_id"],
        call.as_str(),
        "{}",
        page.welcome
    );
    assert!(ice_arrives(&mut page, &mut alice, &call, 3000).await);
}

const BIG_MESSAGES: &[(&str, &str)] = &[
    ("CALLSIGNAL_WS__RATE_LIMIT_BYTES_PER_SEC", "100000000"),
    ("CALLSIGNAL_WS__RATE_LIMIT_BYTES_BURST", "100000000"),
    ("CALLSIGNAL_WS__OUTBOUND_QUEUE_BYTES", "4194304"),
];

fn big_sdp(call: &str, n: usize) -> Value {
    let sdp = format!("v=0 {n} {}", "a".repeat(60_000));
    json!({"type": "sdp", "call_id": call, "description": {"type": "offer", "sdp": sdp}})
}

/// A bridged client that reads everything but never sends (no `ack`, as a v1 client) is not a
/// slow consumer: the socket's node reports what it wrote, so the connection forgets written
/// messages under its bounds as for a local socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_bridged_reader_that_never_acks_is_not_cut_off() {
    let Some(c) = cluster(&[
        ("CALLSIGNAL_WS__RATE_LIMIT_BYTES_PER_SEC", "100000000"),
        ("CALLSIGNAL_WS__RATE_LIMIT_BYTES_BURST", "100000000"),
        ("CALLSIGNAL_WS__RATE_LIMIT_PER_SEC", "1000"),
    ])
    .await
    else {
        return;
    };
    let Dropped {
        mut alice,
        token,
        call,
        last,
        resume,
        ..
    } = call_then_drop(&c).await;
    let mut bob = resume_at(&c, 2, &token, &resume, last).await;
    alice.expect("peer.reconnected").await;
    // 40 × 60 KB = 2.4 MB, over the 1 MiB bound, paced; bob reads every one.
    for n in 0..40 {
        alice.send(big_sdp(&call, n)).await;
        let got = bob.expect("sdp").await;
        assert!(
            got["description"]["sdp"]
                .as_str()
                .unwrap()
                .starts_with(&format!("v=0 {n} ")),
            "message {n}"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    bob.send(json!({"type": "ping", "ref": "still"})).await;
    assert_eq!(bob.expect("pong").await["ref"], "still");
    alice.send(json!({"type": "ping", "ref": "a"})).await;
    assert_eq!(
        alice.expect("pong").await["ref"],
        "a",
        "alice's call did not end"
    );
}

/// A replay bigger than NATS's payload limit (1 MiB) crosses a bridge in several messages:
/// the resume through another node gets every held message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_replay_bigger_than_a_nats_message_crosses_the_bridge() {
    let Some(c) = cluster(BIG_MESSAGES).await else {
        return;
    };
    let Dropped {
        mut alice,
        token,
        call,
        last,
        resume,
        ..
    } = call_then_drop(&c).await;
    // 40 × 60 KB held for bob: 2.4 MB.
    for n in 0..40 {
        alice.send(big_sdp(&call, n)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut bob = resumed_at(&c, 2, &token, &resume, last).await;
    for n in 0..40 {
        let got = bob.expect("sdp").await;
        assert_eq!(got["seq"], last + 1 + n as u64);
    }
}

/// Nodes started at the same moment on a fresh database all start: migrations run one node at
/// a time (an advisory lock), the others find nothing pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_nodes_started_together_on_a_fresh_database_all_start() {
    if std::env::var(PG_ENV).is_err() {
        assert!(std::env::var("CI").is_err(), "{PG_ENV} is not set in CI");
        eprintln!("SKIPPED: the cluster tests need {PG_ENV}");
        return;
    }
    for round in 0..3 {
        let nats = Nats::start();
        let root = tempfile::tempdir().expect("dir");
        let db_url = fresh_database(Backend::Postgres, root.path()).await;
        let starts: Vec<_> = ["a", "b", "c"]
            .into_iter()
            .map(|name| {
                let (url, db) = (nats.url(), db_url.clone());
                let dir = tempfile::tempdir().expect("dir");
                std::thread::spawn(move || {
                    let node = start_node(&url, &db, dir.path(), name, &[]);
                    (node, dir)
                })
            })
            .collect();
        let nodes: Vec<_> = starts
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        for (node, _) in &nodes {
            if let Err(logs) = node {
                panic!("round {round}: a node failed to start:\n{logs}");
            }
        }
        drop(nodes);
        drop_test_database(&db_url);
    }
}

/// A node stops (SIGTERM) while one of its users is a party of a call owned by another node:
/// that party hears `call.ended server_shutdown` before its socket closes 1001, and so does
/// the other party; the record says `server_shutdown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_sigterm_ends_a_call_owned_elsewhere_for_its_party_here() {
    let Some(c) = cluster(&[]).await else {
        return;
    };
    let mut alice = c.user_on(1, "alice").await;
    let mut bob = c.user_on(0, "bob").await;
    let call = connect(&mut alice, &mut bob, "bob").await;
    c.nodes[0].sigterm();
    let ended = bob.expect("call.ended").await;
    assert_eq!(ended["reason"], "server_shutdown", "{ended}");
    assert_eq!(bob.closed().await, Closed::Code(1001));
    let ended = loop {
        let m = alice.recv().await;
        if m["type"] == "call.ended" {
            break m;
        }
    };
    assert_eq!(ended["reason"], "server_shutdown", "{ended}");
    let (_, reason, _, _) = c.ended_row(&call).await;
    assert_eq!(reason, "server_shutdown");
}

/// The per-user cap counts every node, and so does its release: connections waiting in their
/// grace on another node (closed tabs) never lock the user out of a new one here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_connections_waiting_in_a_grace_elsewhere_never_lock_a_user_out() {
    let Some(c) = cluster(&[("CALLSIGNAL_WS__MAX_CONNECTIONS_PER_USER", "2")]).await else {
        return;
    };
    c.register(1, "bob").await;
    // Separate logins (sessions), so nothing is a resume or a takeover.
    let mut tokens = vec![];
    for _ in 0..5 {
        tokens.push(c.login(1, "bob").await.0);
    }
    let (one, two) = (c.ws(1, &tokens[0]).await, c.ws(1, &tokens[1]).await);
    drop(one);
    drop(two);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hello = |t: &str| json!({"type": "hello", "token": t});
    let mut again = ws_raw_at(c.nodes[0].addr).await;
    again.send(hello(&tokens[2])).await;
    let welcome = again.recv().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut third = ws_raw_at(c.nodes[2].addr).await;
    third.send(hello(&tokens[3])).await;
    let m = third.recv().await;
    assert_eq!(m["type"], "welcome", "{m}");
    // Two live sockets now, none waiting anywhere: the cap holds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut fourth = ws_raw_at(c.nodes[1].addr).await;
    fourth.send(hello(&tokens[4])).await;
    fourth.expect_error("too_many_connections").await;
}

/// A user's new device on a node that knew nothing of their call (both parties elsewhere) can
/// end it: `call.hangup` from any connection of a party's user (contract §2.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_device_on_another_node_can_end_the_users_call() {
    let Some(c) = cluster(&[]).await else {
        return;
    };
    let mut alice = c.user_on(1, "alice").await;
    let mut bob = c.user_on(1, "bob").await;
    let call = connect(&mut alice, &mut bob, "bob").await;
    let (token, _, _) = c.login(0, "bob").await;
    // At once after its welcome, before node a can have heard of the call.
    let mut device = c.ws(0, &token).await;
    device
        .send(json!({"type": "call.hangup", "call_id": call, "ref": "h"}))
        .await;
    let ended = alice.expect("call.ended").await;
    assert_eq!(ended["reason"], "hangup", "{ended}");
    assert_eq!(bob.expect("call.ended").await["reason"], "hangup");
    let (_, reason, _, _) = c.ended_row(&call).await;
    assert_eq!(reason, "hangup");
    // A reconnecting device there now sees the next call in its welcome.
    let call = connect(&mut alice, &mut bob, "bob").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let other = c.ws(0, &token).await;
    assert_eq!(
        other.welcome["call"]["call_id"],
        call.as_str(),
        "{}",
        other.welcome
    );
}

/// A node that has just (re)started has not heard the other nodes yet; a resume reaching it in
/// that moment still finds its connection on another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_resume_through_a_node_that_just_started_finds_its_connection() {
    let Some(mut c) = cluster(&[]).await else {
        return;
    };
    let Dropped {
        mut alice,
        token,
        call,
        last,
        resume,
        connection_id,
    } = call_then_drop(&c).await;
    // Node c restarts (it holds nobody): stopped in order, started again.
    c.nodes[2].sigterm();
    let _ = c.nodes[2].child.wait();
    let dir = tempfile::tempdir().expect("dir");
    let fresh = start_node(&c.nats.url(), &c.db_url, dir.path(), "c", &[])
        .unwrap_or_else(|logs| panic!("node c restarts:\n{logs}"));
    c.dirs.push(dir);
    c.nodes[2] = fresh;
    let mut bob = resumed_at(&c, 2, &token, &resume, last).await;
    assert_eq!(bob.welcome["connection_id"], connection_id.as_str());
    alice.expect("peer.reconnected").await;
    assert!(ice_arrives(&mut alice, &mut bob, &call, 3000).await);
}

/// A browser on node `a` calls a browser on node `b` through NATS: real audio both ways, the
/// same verification code, a clean hangup. In a network namespace of its own (like
/// `browser::browser_calls_in_chromium`), with its own nats-server and a SQLite database shared
/// by the two nodes (the namespace has no route to a PostgreSQL server).
#[test]
fn cluster_browsers_on_two_nodes_call_through_nats() {
    crate::browser::run_in_netns(
        "cluster::cluster_browser_scenario",
        "two-node Chromium test",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "started inside its own network namespace by cluster_browsers_on_two_nodes_call_through_nats"]
async fn cluster_browser_scenario() {
    use crate::browser::{Driver, audio_flows_both_ways, codes, connected_call, end_call};
    if std::env::var(crate::browser::INNER_ENV).is_err() {
        eprintln!(
            "runs only inside the namespace made by cluster_browsers_on_two_nodes_call_through_nats"
        );
        return;
    }
    let nats = Nats::start();
    let dir = tempfile::tempdir().expect("dir");
    let db = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("cluster.db").display()
    );
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    for d in [&dir_a, &dir_b] {
        std::fs::create_dir_all(d).expect("data dir");
    }
    let a = start_node(&nats.url(), &db, &dir_a, "a", &[]).expect("node a starts");
    let b = start_node(&nats.url(), &db, &dir_b, "b", &[]).expect("node b starts");
    let driver = Driver::start().await;
    let alice = driver.browser("alice-a", 1280, 800).await;
    let bob = driver.browser("bob-b", 390, 844).await;
    alice
        .register(&format!("http://{}/", a.addr), "alice")
        .await;
    bob.register(&format!("http://{}/", b.addr), "bob").await;

    connected_call(&alice, &bob, "bob").await;
    audio_flows_both_ways(&alice, &bob).await;
    let (ca, cb) = codes(&alice, &bob).await;
    assert_eq!(ca, cb, "both sides show the same verification code");
    alice.screenshot("cluster-call-alice-node-a").await;
    end_call(&alice, &bob).await;
    assert!(
        a.logs().contains("cluster node seen") && b.logs().contains("cluster node seen"),
        "the nodes saw each other"
    );
}
