//! No log level and no error path prints a secret (issue 9 item D): the real `callsignal`
//! binary, run as a child process with `RUST_LOG=trace`, through a whole login + call flow.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TEST_SECRET, WsClient};

const TURN_SECRET: &str = "turn-shared-secret-for-the-log-test";
const SDP_MARKER: &str = "s=sdp-text-that-must-not-be-logged";
const CANDIDATE_MARKER: &str = "candidate:842163049 1 udp 1677729535 198.51.100.77 61234 typ srflx";

/// A server child process whose stdout and stderr are collected.
struct TracedServer {
    child: Child,
    addr: String,
    output: Arc<Mutex<String>>,
}

impl TracedServer {
    fn start(dir: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_callsignal"))
            .arg("serve")
            .current_dir(dir)
            .env("RUST_LOG", "trace")
            .env("CALLSIGNAL_LOG__FORMAT", "json")
            .env("CALLSIGNAL_SERVER__BIND", "127.0.0.1:0")
            .env("CALLSIGNAL_AUTH__JWT_SECRET", TEST_SECRET)
            .env("CALLSIGNAL_ICE__TURN_URLS", "turn:turn.example.org:3478")
            .env("CALLSIGNAL_ICE__TURN_SECRET", TURN_SECRET)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("server starts");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let collect = |stream: Box<dyn std::io::Read + Send>, tx: Option<_>| {
            let output = output.clone();
            std::thread::spawn(move || {
                let tx: Option<std::sync::mpsc::Sender<String>> = tx;
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    if line.contains("callsignal listening")
                        && let (Some(tx), Ok(v)) = (&tx, serde_json::from_str::<Value>(&line))
                    {
                        let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_owned());
                    }
                    let mut out = output.lock().unwrap();
                    out.push_str(&line);
                    out.push('\n');
                }
            });
        };
        collect(Box::new(child.stdout.take().unwrap()), Some(tx));
        collect(Box::new(child.stderr.take().unwrap()), None);
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server reports its address");
        Self {
            child,
            addr,
            output,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn user(&self, http: &reqwest::Client, name: &str) -> Value {
        let creds = json!({"username": name, "password": PASSWORD});
        let r = http
            .post(self.url("/api/auth/register"))
            .json(&creds)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let r = http
            .post(self.url("/api/auth/login"))
            .json(&creds)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    async fn ws(&self, login: &Value) -> WsClient {
        let (stream, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", self.addr))
            .await
            .unwrap();
        let mut c = WsClient {
            stream,
            welcome: Value::Null,
        };
        c.send(json!({"type": "hello", "token": login["access_token"]}))
            .await;
        c.welcome = c.expect("welcome").await;
        c
    }
}

impl Drop for TracedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_of_a_whole_call_carry_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let server = TracedServer::start(dir.path());
    // Both protocols: HTTP/1.1 for alice, HTTP/2 for bob.
    let h1 = reqwest::Client::new();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let alice = server.user(&h1, "alice").await;
    let bob = server.user(&h2, "bob").await;
    let refreshed: Value = h1
        .post(server.url("/api/auth/refresh"))
        .json(&json!({"refresh_token": alice["refresh_token"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ice: Value = h2
        .get(server.url("/api/ice-servers"))
        .bearer_auth(bob["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let turn_credential = ice["ice_servers"][0]["credential"]
        .as_str()
        .expect("a TURN credential")
        .to_owned();

    let (mut a, mut b) = (server.ws(&alice).await, server.ws(&bob).await);
    a.send(json!({"type": "call.invite", "to": "bob"})).await;
    let call_id = a.expect("call.created").await["call_id"].clone();
    b.expect("call.incoming").await;
    b.send(json!({"type": "call.accept", "call_id": call_id}))
        .await;
    b.expect("call.accepted").await;
    a.send(json!({"type": "sdp", "call_id": call_id,
        "description": {"type": "offer", "sdp": format!("v=0\r\n{SDP_MARKER}\r\n")}}))
        .await;
    let mut relayed = false;
    while !relayed {
        relayed = b.recv().await["type"] == "sdp";
    }
    b.send(json!({"type": "ice", "call_id": call_id,
        "candidate": {"candidate": CANDIDATE_MARKER, "sdpMid": "0", "sdpMLineIndex": 0}}))
        .await;
    let mut relayed = false;
    while !relayed {
        relayed = a.recv().await["type"] == "ice";
    }
    a.send(json!({"type": "call.hangup", "call_id": call_id}))
        .await;
    b.expect("call.ended").await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let logs = server.output.lock().unwrap().clone();
    assert!(
        logs.contains(r#""level":"DEBUG""#),
        "debug and trace are on: {} bytes of logs",
        logs.len()
    );
    let secrets = [
        ("password", PASSWORD.to_owned()),
        ("JWT key", TEST_SECRET.to_owned()),
        ("TURN secret", TURN_SECRET.to_owned()),
        ("TURN credential", turn_credential),
        ("SDP", SDP_MARKER.to_owned()),
        ("candidate", CANDIDATE_MARKER.to_owned()),
        ("alice's access token", alice["access_token"].to_string()),
        ("bob's access token", bob["access_token"].to_string()),
        ("alice's refresh token", alice["refresh_token"].to_string()),
        (
            "the rotated refresh token",
            refreshed["refresh_token"].to_string(),
        ),
        (
            "alice's resume token",
            a.welcome["resume_token"].to_string(),
        ),
        ("bob's resume token", b.welcome["resume_token"].to_string()),
    ];
    for (what, secret) in secrets {
        let secret = secret.trim_matches('"');
        assert!(secret.len() > 8, "{what} is a real value");
        assert!(!logs.contains(secret), "{what} is in the trace logs");
    }
}

#[test]
fn a_mistyped_database_url_never_prints_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_callsignal"))
        .args(["migrate", "status"])
        .current_dir(dir.path())
        .env("RUST_LOG", "trace")
        .env(
            "CALLSIGNAL_DATABASE__URL",
            "postgress://app:hunter2-secret@127.0.0.1:1/calls",
        )
        .output()
        .expect("binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success());
    assert!(
        text.contains("postgress://app:***@127.0.0.1:1/calls"),
        "{text}"
    );
    assert!(!text.contains("hunter2-secret"), "{text}");
}

/// Every actor whose start is logged logs its stop when the server ends on SIGTERM (contract
/// §4: every actor start and stop is one log event naming the actor). Found by an operator's
/// eye: root, registry, persistence and the two supervisors logged `started` and never
/// `stopped`; a connection waiting in its resume grace at shutdown neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_actor_that_started_logs_its_stop_at_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TracedServer::start(dir.path());
    let http = reqwest::Client::new();
    let alice = server.user(&http, "alice").await;
    let bob = server.user(&http, "bob").await;
    // Alice's socket goes away without a close frame: her connection waits in its grace.
    drop(server.ws(&alice).await);
    let _bob = server.ws(&bob).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut exited = None;
    for _ in 0..200 {
        exited = server.child.try_wait().unwrap();
        if exited.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        exited.is_some_and(|s| s.success()),
        "the server exits 0 on SIGTERM: {exited:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await; // the collectors read the last lines
    let logs = server.output.lock().unwrap().clone();
    let mut started = std::collections::BTreeMap::new();
    let mut stopped = std::collections::BTreeSet::new();
    for v in logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        let (Some(event), Some(id)) = (v["event"].as_str(), v["actor_id"].as_str()) else {
            continue;
        };
        match event {
            "started" => {
                started.insert(id.to_owned(), v["actor"].as_str().unwrap_or("?").to_owned());
            }
            "stopped" | "failed" => {
                stopped.insert(id.to_owned());
            }
            _ => {}
        }
    }
    let kinds: std::collections::BTreeSet<&str> = started.values().map(String::as_str).collect();
    for kind in [
        "root",
        "registry",
        "persistence",
        "connections",
        "calls",
        "connection",
    ] {
        assert!(kinds.contains(kind), "{kind} logged its start: {kinds:?}");
    }
    let silent: Vec<_> = started
        .iter()
        .filter(|(id, _)| !stopped.contains(*id))
        .collect();
    assert!(
        silent.is_empty(),
        "started but never logged a stop: {silent:?}"
    );
}
