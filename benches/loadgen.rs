#![allow(missing_docs, clippy::unwrap_used)]

//! Load generator: starts the real server binary (release build) on a fresh SQLite database and
//! drives it over real sockets. Results go to stdout; `docs/benchmarks.md` records them.
//!
//! ```text
//! cargo build --release
//! ulimit -n 65536
//! cargo bench --bench loadgen -- idle 5000        # memory per idle signaling connection
//! cargo bench --bench loadgen -- relay 50 2000    # 50 active calls, 2000 ICE messages per caller
//! cargo bench --bench loadgen -- relay 500 200 50 # 500 calls, 200 messages each at 50/s per caller
//! cargo bench --bench loadgen -- calls 50 20      # 50 caller/callee pairs, 20 full calls each
//! cargo bench --bench loadgen -- login 200        # 200 concurrent logins vs /healthz latency
//! ```

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const PASSWORD: &str = "load generator password";

struct Server {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(extra: &[(&str, &str)]) -> Server {
        let bin = std::env::var("CALLSIGNAL_BIN").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/callsignal").into()
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(&bin);
        cmd.current_dir(dir.path())
            .env("CALLSIGNAL_SERVER__BIND", "127.0.0.1:0")
            .env("CALLSIGNAL_LOG__FORMAT", "json")
            .env("RUST_LOG", "warn,callsignal::startup=info")
            .env("CALLSIGNAL_WS__MAX_CONNECTIONS_PER_USER", "100000")
            .env("CALLSIGNAL_WS__MAX_CONNECTIONS", "100000")
            .env("CALLSIGNAL_CALLS__INVITES_PER_MINUTE", "1000000")
            .env("CALLSIGNAL_CALLS__INVITES_PER_CALLEE_PER_MINUTE", "1000000")
            .env("CALLSIGNAL_CALLS__INVITES_PER_PAIR_PER_MINUTE", "1000000")
            .env("CALLSIGNAL_AUTH__REGISTER_PER_ADDRESS_PER_HOUR", "1000000")
            .env(
                "CALLSIGNAL_AUTH__THROTTLE__ADDRESS_FREE_FAILURES",
                "1000000",
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start {bin}: {e} (run `cargo build --release` first)")
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("callsignal listening") {
                    let v: Value = serde_json::from_str(&line).expect("json log");
                    let _ = tx.send(v["addr"].as_str().expect("addr").to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server address");
        Server {
            child,
            addr,
            _dir: dir,
        }
    }

    /// A value from `/metrics`.
    async fn metric(&self, name: &str) -> Option<u64> {
        let text = reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let prefix = format!("{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Waits until every call event is committed.
    async fn drained(&self) {
        while self
            .metric("callsignal_persistence_backlog")
            .await
            .unwrap_or(0)
            > 0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Live heap bytes, when the server was built with `--features heap-stats`.
    async fn heap(&self) -> Option<u64> {
        self.metric("callsignal_heap_live_bytes").await
    }

    /// Resident set size of the server process, in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }
}

async fn user(http: &reqwest::Client, addr: &str, name: &str) -> String {
    let r = http
        .post(format!("http://{addr}/api/auth/register"))
        .json(&json!({"username": name, "password": PASSWORD}))
        .send()
        .await
        .expect("register");
    assert!(r.status().is_success(), "register {name}: {}", r.status());
    let v: Value = http
        .post(format!("http://{addr}/api/auth/login"))
        .json(&json!({"username": name, "password": PASSWORD}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    v["access_token"].as_str().expect("token").to_owned()
}

async fn connect(addr: &str, token: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("ws");
    ws.send(Message::text(
        json!({"type": "hello", "token": token}).to_string(),
    ))
    .await
    .expect("hello");
    let w = recv(&mut ws).await;
    assert_eq!(w["type"], "welcome", "{w}");
    ws
}

async fn recv(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("message in time")
        {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).expect("json"),
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    }
}

async fn expect(ws: &mut Ws, kind: &str) -> Value {
    let v = recv(ws).await;
    assert_eq!(v["type"], kind, "{v}");
    v
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{label}: n={} p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms",
        samples.len(),
        pct(&samples, 0.5),
        pct(&samples, 0.9),
        pct(&samples, 0.99),
        pct(&samples, 1.0)
    );
}

async fn idle(n: usize) {
    let server = Server::start(&[]);
    let http = reqwest::Client::new();
    let token = user(&http, &server.addr, "idle").await;
    // Warm up allocator arenas and the runtime with a few connections first.
    let mut socks = Vec::with_capacity(n);
    for _ in 0..50 {
        socks.push(connect(&server.addr, &token).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss();
    let heap_before = server.heap().await;
    let started = Instant::now();
    for _ in 50..n {
        socks.push(connect(&server.addr, &token).await);
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = server.rss();
    let heap_after = server.heap().await;
    let per = (after.saturating_sub(before)) as f64 / (n - 50) as f64;
    if let (Some(b), Some(a)) = (heap_before, heap_after) {
        let per_heap = a.saturating_sub(b) as f64 / (n - 50) as f64;
        println!(
            "idle: live heap {:.1} MiB → {:.1} MiB; {:.0} bytes ({:.1} KiB) of heap per idle connection",
            b as f64 / 1048576.0,
            a as f64 / 1048576.0,
            per_heap,
            per_heap / 1024.0
        );
    }
    if let Some(secs) = std::env::var("LOADGEN_HOLD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        // Keep the connections open (e.g. to take a heap profile of the server meanwhile).
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    println!(
        "idle: {n} connections open (hello + welcome each) in {:.2}s",
        took.as_secs_f64()
    );
    println!(
        "idle: server RSS {:.1} MiB → {:.1} MiB; {:.0} bytes ({:.1} KiB) per idle connection",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        per,
        per / 1024.0
    );
}

async fn pairs(server: &Server, n: usize) -> Vec<(Ws, Ws, String)> {
    let http = reqwest::Client::new();
    let mut out = vec![];
    for i in 0..n {
        let (ta, tb) = (
            user(&http, &server.addr, &format!("caller{i}")).await,
            user(&http, &server.addr, &format!("callee{i}")).await,
        );
        let (a, b) = (
            connect(&server.addr, &ta).await,
            connect(&server.addr, &tb).await,
        );
        out.push((a, b, format!("callee{i}")));
    }
    out
}

async fn relay(n_calls: usize, per_caller: usize, rate: u64) {
    let server = Server::start(&[
        ("CALLSIGNAL_WS__RATE_LIMIT_PER_SEC", "1000000"),
        ("CALLSIGNAL_WS__RATE_LIMIT_BURST", "1000000"),
        ("CALLSIGNAL_WS__RATE_LIMIT_BYTES_PER_SEC", "1000000000"),
        ("CALLSIGNAL_WS__RATE_LIMIT_BYTES_BURST", "1000000000"),
    ]);
    let epoch = Instant::now();
    let mut tasks = vec![];
    let start_line = Arc::new(tokio::sync::Barrier::new(n_calls + 1));
    for (mut a, mut b, to) in pairs(&server, n_calls).await {
        let start_line = start_line.clone();
        tasks.push(tokio::spawn(async move {
            a.send(Message::text(json!({"type": "call.invite", "to": to}).to_string())).await.unwrap();
            let call_id = expect(&mut a, "call.created").await["call_id"].as_str().unwrap().to_owned();
            expect(&mut b, "call.incoming").await;
            expect(&mut a, "call.ringing").await;
            b.send(Message::text(json!({"type": "call.accept", "call_id": call_id}).to_string())).await.unwrap();
            expect(&mut b, "call.accepted").await;
            expect(&mut a, "call.accepted").await;
            start_line.wait().await;
            let (mut tx, _rx) = a.split();
            let sender = tokio::spawn(async move {
                // `rate` messages per second per caller (0 = as fast as possible); the send time
                // rides in the candidate text, which the server relays untouched.
                let gap = if rate == 0 { Duration::ZERO } else { Duration::from_secs_f64(1.0 / rate as f64) };
                let mut next = tokio::time::Instant::now();
                for i in 0..per_caller {
                    if !gap.is_zero() {
                        next += gap;
                        tokio::time::sleep_until(next).await;
                    }
                    let sent_us = epoch.elapsed().as_micros();
                    let cand = format!("candidate:{i} 1 udp 2122260223 192.0.2.1 {} typ host t{sent_us}", 50000 + i % 10000);
                    let msg = json!({"type": "ice", "call_id": call_id, "candidate": {"candidate": cand, "sdpMid": "0", "sdpMLineIndex": 0}});
                    tx.send(Message::text(msg.to_string())).await.unwrap();
                }
                tx
            });
            let mut latencies = Vec::with_capacity(per_caller);
            while latencies.len() < per_caller {
                let v = recv(&mut b).await;
                if v["type"] == "ice" {
                    let text = v["candidate"]["candidate"].as_str().unwrap();
                    let sent: u128 = text.rsplit_once(" t").unwrap().1.parse().unwrap();
                    let now = epoch.elapsed().as_micros();
                    latencies.push(Duration::from_micros((now - sent) as u64));
                }
            }
            let _ = sender.await;
            latencies
        }));
    }
    start_line.wait().await;
    let began = Instant::now();
    let mut latencies = vec![];
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let took = began.elapsed();
    let total = n_calls * per_caller;
    println!(
        "relay: {n_calls} concurrent calls, {per_caller} ICE messages each{}: {total} relayed in {:.2}s = {:.0} msg/s",
        if rate == 0 {
            String::new()
        } else {
            format!(" at {rate}/s per caller")
        },
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );
    report("relay: sender → peer latency", latencies);
    let drained = Instant::now();
    server.drained().await;
    println!(
        "relay: signaling metadata rows written {} (skipped {}), backlog drained {:.2}s after the last message; server RSS {:.1} MiB",
        server
            .metric("callsignal_events_written_total")
            .await
            .unwrap_or(0),
        server
            .metric("callsignal_signal_rows_skipped_total")
            .await
            .unwrap_or(0),
        drained.elapsed().as_secs_f64(),
        server.rss() as f64 / 1048576.0
    );
}

async fn calls(n_pairs: usize, rounds: usize) {
    let server = Server::start(&[]);
    let began_all = Instant::now();
    let mut tasks = vec![];
    let ps = pairs(&server, n_pairs).await;
    let began = Instant::now();
    for (mut a, mut b, to) in ps {
        tasks.push(tokio::spawn(async move {
            let mut setup = vec![];
            for _ in 0..rounds {
                let t = Instant::now();
                a.send(Message::text(
                    json!({"type": "call.invite", "to": to}).to_string(),
                ))
                .await
                .unwrap();
                let call_id = expect(&mut a, "call.created").await["call_id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                expect(&mut b, "call.incoming").await;
                expect(&mut a, "call.ringing").await;
                b.send(Message::text(
                    json!({"type": "call.accept", "call_id": call_id}).to_string(),
                ))
                .await
                .unwrap();
                expect(&mut b, "call.accepted").await;
                expect(&mut a, "call.accepted").await;
                setup.push(t.elapsed());
                a.send(Message::text(
                    json!({"type": "call.hangup", "call_id": call_id}).to_string(),
                ))
                .await
                .unwrap();
                expect(&mut a, "call.ended").await;
                expect(&mut b, "call.ended").await;
            }
            setup
        }));
    }
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let took = began.elapsed();
    let total = n_pairs * rounds;
    println!(
        "calls: {total} full calls (invite→ringing→accept→hangup) by {n_pairs} pairs in {:.2}s = {:.0} calls/s",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64(),
    );
    report("calls: invite→accepted round trip", all);
    server.drained().await;
    println!(
        "calls: {} call events committed ({} expected: created, accepted, ended per call) {:.2}s after the start",
        server
            .metric("callsignal_events_written_total")
            .await
            .unwrap_or(0),
        total * 3,
        began_all.elapsed().as_secs_f64()
    );
}

async fn login(n: usize) {
    let server = Server::start(&[]);
    let http = reqwest::Client::new();
    user(&http, &server.addr, "storm").await;
    let addr = server.addr.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = {
        let (http, addr, stop) = (http.clone(), addr.clone(), stop.clone());
        tokio::spawn(async move {
            let mut lat = vec![];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let r = http
                    .get(format!("http://{addr}/healthz"))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
                lat.push(t.elapsed());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            lat
        })
    };
    let began = Instant::now();
    let mut logins = vec![];
    for i in 0..n {
        let (http, addr) = (http.clone(), addr.clone());
        logins.push(tokio::spawn(async move {
            let t = Instant::now();
            // Half right, half wrong passwords: both cost one argon2 verification.
            let pw = if i % 2 == 0 {
                PASSWORD
            } else {
                "wrong wrong wrong"
            };
            let r = http
                .post(format!("http://{addr}/api/auth/login"))
                .json(&json!({"username": "storm", "password": pw}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), t.elapsed())
        }));
    }
    let mut lat = vec![];
    let mut statuses = std::collections::BTreeMap::new();
    for l in logins {
        let (s, d) = l.await.unwrap();
        *statuses.entry(s).or_insert(0) += 1;
        lat.push(d);
    }
    let took = began.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let health = probe.await.unwrap();
    println!(
        "login: {n} concurrent logins in {:.2}s = {:.1} logins/s; statuses {statuses:?}",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    report("login: login latency", lat);
    report("login: /healthz latency during the storm", health);
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let num = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match args.first().map(String::as_str) {
        Some("idle") => rt.block_on(idle(num(1, 2000))),
        Some("relay") => rt.block_on(relay(num(1, 50), num(2, 2000), num(3, 0) as u64)),
        Some("calls") => rt.block_on(calls(num(1, 50), num(2, 20))),
        Some("login") => rt.block_on(login(num(1, 200))),
        _ => eprintln!(
            "usage: cargo bench --bench loadgen -- idle N | relay CALLS MSGS [RATE] | calls PAIRS ROUNDS | login N"
        ),
    }
}
