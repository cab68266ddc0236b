#![allow(missing_docs, clippy::unwrap_used)]

//! Load generator: starts the real server binary (release build) and, in the same run, the
//! bare tokio-tungstenite relay of `bare_relay.rs` as child processes, drives them over real
//! sockets on loopback and prints every figure with its ratio to the bare relay.
//! `docs/benchmarks.md` explains the method and records the results.
//!
//! ```text
//! cargo build --release                      # the server under test: target/release/callsignal
//! cargo bench -p loadgen --no-run       # builds this load generator (and the bare relay)
//! ulimit -n 20000                          # idle 15000 needs > 16,000 open files per process
//! cargo bench -p loadgen -- --pin idle 15000       # RSS per idle authenticated connection
//! cargo bench -p loadgen -- --pin relay 200 2000   # 200 calls, 2,000 msg/s open loop
//! cargo bench -p loadgen -- --pin relay 1000 10000 # 1,000 calls, 10,000 msg/s
//! cargo bench -p loadgen -- --pin flood 50 4000    # messages per server CPU-second
//! cargo bench -p loadgen -- --pin calls 50 40      # full calls on SQLite, rows verified
//! cargo bench -p loadgen -- --pin --db postgres calls 50 40   # the same on PostgreSQL
//! cargo bench -p loadgen -- --pin cross 200 2000   # relay across two cluster nodes (NATS)
//! cargo bench -p loadgen -- --pin cross 1000 10000 #   … beside the single-node relay
//! cargo bench -p loadgen -- smoke                  # correctness only (CI)
//! cargo bench -p loadgen -- login 200              # login storm vs /healthz latency
//! cargo bench -p loadgen -- bare-relay 127.0.0.1:9000   # the bare relay on its own
//! ```
//!
//! Options (anywhere on the command line):
//! * `--pin`: the server under test runs on core 0 (`taskset -c 0`), the load generator on
//!   core 1 (it pins itself before its runtime starts; its runtime is single-threaded). In
//!   `cross` both nodes and nats-server share core 0.
//! * `--rt`: the servers under test run under SCHED_FIFO at the lowest real-time priority
//!   (`chrt -f 1`), so the kernel's own threads of normal priority (`kdamond`, `rcu_preempt`,
//!   `ksoftirqd`, kworkers) and other programs cannot preempt them for a scheduler slice
//!   (milliseconds). It takes the machine's noise on the server's core out of the latency
//!   figures, for every target alike. The load generator stays at normal priority: it spins
//!   between sends, and a real-time task that never sleeps is throttled by the kernel for
//!   50 ms of every second (`kernel.sched_rt_runtime_us`). Needs root (CAP_SYS_NICE).
//! * `--secs S`: length of the relay schedule (default 10).
//! * `--only callsignal|bare|peerjs`: measure one target (default callsignal, then the bare
//!   relay, then PeerJS if `--peerjs` is given).
//! * `--peerjs DIR`: also measure PeerJS server 1.0.2 (relay, flood and idle), installed with
//!   `npm install peer@1.0.2` in DIR (outside the repository); needs `node`.
//! * `--env KEY=VALUE`: a further setting for callsignal (repeatable; only keys of
//!   `config/default.toml`, the server refuses unknown ones). `--log-signaling` is
//!   `--env CALLSIGNAL_PERSISTENCE__LOG_SIGNALING=true` and makes `calls` verify the
//!   `signaling_messages` rows too.
//! * `--db sqlite|postgres`: the database of `calls` and `cross` (default sqlite; `cross`
//!   shares one SQLite file between its two nodes). PostgreSQL:
//!   `CALLSIGNAL_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`) is
//!   the admin URL; a fresh database is created for the run and dropped afterwards.
//! * `--inflight K`: idle connections opened concurrently (default 1: one at a time).
//! * `--window W`: flood messages in flight per call (default 64).
//! * `--no-ack`: callsignal clients do not send `ack` (by default each acks about once a
//!   second, as the browser client does).
//!
//! `cross CALLS RATE` (`cluster.rs`): the relay of `relay` (same schedule, payloads and
//! checks, same code) first on one callsignal node, then across two: a nats-server of the run's
//! own (`/usr/sbin/nats-server` or on `PATH`; missing, the run fails) and nodes `a` and `b` in
//! cluster mode on one database, every caller on a and every callee on b. Server CPU is both
//! nodes' together; nats-server's is reported apart. Smoke also makes a few cross-node calls
//! (skipped without nats-server, a failure in CI: `CI` set).
//!
//! Exit status: non-zero if any delivery or database check failed (smoke never checks a time).

mod bare_relay;
mod calls;
mod client;
mod cluster;
mod idle;
mod relay;
mod target;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::calls::{Expected, RunDb};
use crate::target::{Kind, LOADGEN_CORE, Target};

// The same allocator as the server, so that the bare relay (this binary) compares like for like.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Db {
    Sqlite,
    Postgres,
}

/// Command-line options.
pub(crate) struct Opts {
    pin: bool,
    rt: bool,
    secs: f64,
    targets: Vec<Kind>,
    env: Vec<(String, String)>,
    db: Db,
    inflight: usize,
    window: usize,
    no_ack: bool,
    peerjs: Option<String>,
}

impl Opts {
    /// Whether this run turned on per-message signaling rows.
    fn log_signaling(&self) -> bool {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == "CALLSIGNAL_PERSISTENCE__LOG_SIGNALING")
            .is_some_and(|(_, v)| v == "true")
    }
}

/// What a scenario found wrong.
#[derive(Default)]
pub(crate) struct Stats {
    violations: usize,
}

const USAGE: &str = "usage: cargo bench -p loadgen -- [--pin] [--rt] [--secs S] [--only callsignal|bare|peerjs] [--peerjs DIR] [--env K=V]... [--log-signaling] [--db sqlite|postgres] [--inflight K] [--window W] [--no-ack] \
idle [N] | relay [CALLS] [RATE] | cross [CALLS] [RATE] | flood [CALLS] [MSGS] | calls [PAIRS] [ROUNDS] | smoke | login [N] | bare-relay ADDR";

fn parse(args: Vec<String>) -> (Opts, Vec<String>) {
    let mut o = Opts {
        pin: false,
        rt: false,
        secs: 10.0,
        targets: vec![Kind::Callsignal, Kind::Bare],
        env: vec![],
        db: Db::Sqlite,
        inflight: 1,
        window: 64,
        no_ack: false,
        peerjs: None,
    };
    let mut rest = vec![];
    let mut it = args.into_iter();
    let value = |it: &mut std::vec::IntoIter<String>, flag: &str| {
        it.next()
            .unwrap_or_else(|| panic!("{flag} needs a value\n{USAGE}"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bench" => {}
            "--pin" => o.pin = true,
            "--rt" => o.rt = true,
            "--no-ack" => o.no_ack = true,
            "--secs" => o.secs = value(&mut it, "--secs").parse().expect("--secs"),
            "--inflight" => o.inflight = value(&mut it, "--inflight").parse().expect("--inflight"),
            "--window" => o.window = value(&mut it, "--window").parse().expect("--window"),
            "--only" => {
                o.targets = match value(&mut it, "--only").as_str() {
                    "callsignal" => vec![Kind::Callsignal],
                    "bare" => vec![Kind::Bare],
                    "peerjs" => vec![Kind::PeerJs],
                    other => panic!("--only {other}?\n{USAGE}"),
                }
            }
            "--peerjs" => o.peerjs = Some(value(&mut it, "--peerjs")),
            "--db" => {
                o.db = match value(&mut it, "--db").as_str() {
                    "sqlite" => Db::Sqlite,
                    "postgres" => Db::Postgres,
                    other => panic!("--db {other}?\n{USAGE}"),
                }
            }
            "--env" => {
                let kv = value(&mut it, "--env");
                let (k, v) = kv.split_once('=').expect("--env KEY=VALUE");
                o.env.push((k.to_owned(), v.to_owned()));
            }
            "--log-signaling" => o.env.push((
                "CALLSIGNAL_PERSISTENCE__LOG_SIGNALING".into(),
                "true".into(),
            )),
            _ => rest.push(a),
        }
    }
    if o.peerjs.is_some() && o.targets.len() > 1 {
        o.targets.push(Kind::PeerJs);
    }
    (o, rest)
}

/// Pins this process (every thread so far, and those it starts later) to `core`.
fn pin_self(core: usize) {
    let ok = Command::new("taskset")
        .args([
            "-a",
            "-cp",
            &core.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "taskset could not pin the load generator to core {core}"
    );
}

/// Turns transparent huge pages off for this process and its children, as callsignal does for
/// itself (callsignal::heap::disable_transparent_huge_pages), unless `MIMALLOC_ALLOW_THP` is
/// `1`/`on`/`yes`/`true`. For the bare relay (this binary) it is the same setting as the server
/// it is compared with; for the load generator it keeps its own page clearing (2 MiB at a time
/// while the SDP burst grows its buffers) out of the latencies it measures. The flag is
/// inherited: with it off here, every server started by the run has it off too, so
/// `MIMALLOC_ALLOW_THP=1` in the load generator's environment is the way to measure with THP.
fn disable_transparent_huge_pages() {
    let keep = std::env::var("MIMALLOC_ALLOW_THP").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "on" | "yes" | "true"
        )
    });
    if !keep {
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
}

fn main() {
    disable_transparent_huge_pages();
    let (opts, args) = parse(std::env::args().skip(1).collect());
    let num = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    if args.first().map(String::as_str) == Some("bare-relay") {
        bare_relay::main(args.get(1).map_or("127.0.0.1:9000", String::as_str));
        return;
    }
    if opts.pin {
        pin_self(LOADGEN_CORE);
    }

    // One thread: with --pin it owns core 1, and the relay schedule spins on it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let stats = match args.first().map(String::as_str) {
        Some("idle") => rt.block_on(idle::idle(&opts, num(1, 15_000))),
        Some("relay") => rt.block_on(relay::relay(&opts, num(1, 200), num(2, 2000) as f64)),
        Some("flood") => rt.block_on(relay::flood(&opts, num(1, 50), num(2, 4000) as u64)),
        Some("calls") => rt.block_on(calls::calls(&opts, num(1, 50), num(2, 40))),
        Some("cross") => rt.block_on(cluster::cross(&opts, num(1, 200), num(2, 2000) as f64)),
        Some("smoke") => rt.block_on(smoke(&opts)),
        Some("login") => rt.block_on(login(&opts, num(1, 200))),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    if stats.violations > 0 {
        eprintln!("FAILED: {} violations", stats.violations);
        std::process::exit(1);
    }
}

/// Correctness only, small and quick: every relayed message delivered exactly once and in order
/// per call (through the bare relay and through callsignal), every server message numbered in
/// sequence, and every call's rows in the database (SQLite; and PostgreSQL when
/// `CALLSIGNAL_TEST_POSTGRES_URL` is set). Asserts no time.
async fn smoke(opts: &Opts) -> Stats {
    const CALLS: usize = 10;
    const RATE: f64 = 200.0;
    const SECS: f64 = 2.0;
    let mut violations = 0;
    let mut report = |what: &str, bad: &[String]| {
        println!(
            "smoke: {what}: {}",
            if bad.is_empty() { "ok" } else { "FAILED" }
        );
        for b in bad.iter().take(20) {
            println!("  violation: {b}");
        }
        violations += bad.len();
    };

    let bare = Target::bare(opts);
    let calls = relay::calls(&bare, CALLS, "s").await;
    let run = relay::run_schedule(&bare, calls, RATE, SECS, false).await;
    report(
        &format!(
            "bare relay, {} of {} messages delivered in order",
            run.received.got, run.sent
        ),
        &run.received.violations,
    );
    drop(bare);

    let mut dbs = vec![Db::Sqlite];
    if std::env::var("CALLSIGNAL_TEST_POSTGRES_URL").is_ok() {
        dbs.push(Db::Postgres);
    } else {
        println!("smoke: CALLSIGNAL_TEST_POSTGRES_URL not set: SQLite only");
    }
    for db in dbs {
        let rdb = RunDb::new(db).await;
        let target = Target::callsignal(
            opts,
            &[("CALLSIGNAL_PERSISTENCE__LOG_SIGNALING", "true")],
            rdb.server_url.as_deref(),
        );
        let label = rdb.label();
        let calls = relay::calls(&target, CALLS, "s").await;
        let run = relay::run_schedule(&target, calls, RATE, SECS, true).await;
        report(
            &format!(
                "callsignal on {label}, {} of {} messages delivered in order, seq checked",
                run.received.got, run.sent
            ),
            &run.received.violations,
        );
        let mut expected = hang_up(&run, &mut report).await;
        let pairs = calls::prepare(&target, 5, "p").await;
        let made = calls::run(pairs, 4).await;
        report(
            &format!(
                "callsignal on {label}, {} full calls (call.ended hangup to both)",
                made.calls.len()
            ),
            &[],
        );
        expected.extend(made.calls);
        target.drained(Duration::from_secs(60)).await;
        let bad = calls::verify_eventually(
            &rdb.verify_url(&target),
            &expected,
            smoke_logs_signaling(opts),
            Duration::from_secs(30),
        )
        .await;
        report(
            &format!(
                "callsignal on {label}, rows of {} calls (calls, signaling_messages)",
                expected.len()
            ),
            &bad,
        );
    }
    cluster::smoke(opts, &mut report).await;
    Stats { violations }
}

/// Whether smoke checks signaling rows: it turns them on, unless the command line turned them
/// off again.
pub(crate) fn smoke_logs_signaling(opts: &Opts) -> bool {
    opts.env
        .iter()
        .rev()
        .find(|(k, _)| k == "CALLSIGNAL_PERSISTENCE__LOG_SIGNALING")
        .is_none_or(|(_, v)| v == "true")
}

/// Every caller of `run` hangs up; returns what the database must then hold for each call.
pub(crate) async fn hang_up(
    run: &relay::RelayRun,
    report: &mut impl FnMut(&str, &[String]),
) -> Vec<Expected> {
    let mut expected = vec![];
    for (call_id, caller, msgs) in &run.calls {
        let hangup = json!({"type": "call.hangup", "call_id": call_id}).to_string();
        if caller
            .lock()
            .await
            .send(Message::text(hangup))
            .await
            .is_err()
        {
            report("hangup", &[format!("call {call_id}: hangup not sent")]);
        }
        // The caller sent the even message numbers (0 the offer), the callee the odd ones.
        let (by_caller, by_callee) = (msgs.div_ceil(2), msgs / 2);
        let n = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
        expected.push(Expected {
            call_id: call_id.clone(),
            reason: "hangup",
            answered: true,
            signals: [
                n(by_caller.min(1)),
                n(by_caller.saturating_sub(1)),
                n(by_callee.min(1)),
                n(by_callee.saturating_sub(1)),
            ],
        });
    }
    // Invites that ended `unavailable` while a cluster's presence caught up: a row each.
    expected.extend(run.unavailable.iter().map(|id| Expected {
        call_id: id.clone(),
        reason: "unavailable",
        answered: false,
        signals: [0; 4],
    }));
    expected
}

/// `login N`: N concurrent logins (half with a wrong password: each costs one argon2
/// verification) while a probe requests `/healthz` every 5 ms.
async fn login(opts: &Opts, n: usize) -> Stats {
    let server = Target::callsignal(opts, &[], None);
    let http = reqwest::Client::new();
    client::users(&server.addr, vec!["storm".into()], 1).await;
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
            let pw = if i % 2 == 0 {
                client::PASSWORD
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
    for (label, mut samples) in [
        ("login: login latency", lat),
        ("login: /healthz latency during the storm", health),
    ] {
        samples.sort();
        let p = |q: f64| {
            samples
                .get(((samples.len().max(1) - 1) as f64 * q).round() as usize)
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        println!(
            "{label}: n={} p50={:.2}ms p99={:.2}ms max={:.2}ms",
            samples.len(),
            p(0.5),
            p(0.99),
            p(1.0)
        );
    }
    Stats::default()
}
