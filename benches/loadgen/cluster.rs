//! `cross CALLS RATE`: the relay across two cluster nodes. A nats-server of the run's own
//! (JetStream on, a free port, a temporary store) and two callsignal nodes `a` and `b` in
//! cluster mode sharing one database (a SQLite file in a temporary directory, or with
//! `--db postgres` a fresh PostgreSQL database); every caller is on node a and every callee on
//! node b, so each relayed message goes connection → node → NATS → node → connection. The same
//! open-loop schedule and measurement as `relay` (`relay::relay_on`), after the single-node
//! relay with the same CALLS and RATE in the same run. Server CPU is the two nodes' together;
//! nats-server's is reported apart. With `--pin` the nodes and nats-server share core 0.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::calls::{self, RunDb};
use crate::relay::{self, RelayRun, ms};
use crate::target::{Kind, Servers, Target, wrapped};
use crate::{Opts, Stats};

/// The key both nodes sign access tokens with (a cluster shares one).
const JWT_SECRET: &str = "loadgen cluster secret, the same on every node";

/// nats-server: `/usr/sbin/nats-server` (Debian's package) or the one on `PATH`.
pub(crate) fn nats_bin() -> Option<PathBuf> {
    let sbin = PathBuf::from("/usr/sbin/nats-server");
    if sbin.exists() {
        return Some(sbin);
    }
    Command::new("sh")
        .args(["-c", "command -v nats-server"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
}

/// A nats-server of the run's own (JetStream on, its store in a temporary directory); killed on
/// drop.
struct Nats {
    child: Child,
    port: u16,
    _store: tempfile::TempDir,
}

impl Nats {
    fn start(opts: &Opts, bin: &std::path::Path) -> Nats {
        let store = tempfile::tempdir().expect("store dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut cmd = wrapped(opts, bin.to_str().expect("utf-8 path"));
        cmd.args(["-js", "-sd"])
            .arg(store.path())
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server does not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Nats {
            child,
            port,
            _store: store,
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two callsignal nodes `a` and `b`, one database, one NATS. The nodes go first on drop.
pub(crate) struct Cluster {
    a: Target,
    b: Target,
    nats: Nats,
    db: RunDb,
    /// The SQLite database's directory (`--db sqlite`).
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts nats-server, then node a (which migrates the fresh database), then node b, and
    /// waits until each sees the other over NATS. `extra`: further settings for both nodes.
    /// Panics with a clear message when nats-server is missing.
    pub(crate) async fn start(opts: &Opts, extra: &[(&str, &str)]) -> Cluster {
        let bin = nats_bin().unwrap_or_else(|| {
            panic!(
                "nats-server not found (neither /usr/sbin/nats-server nor on PATH): the cross-node scenario needs it (apt-get install nats-server)"
            )
        });
        let nats = Nats::start(opts, &bin);
        let db = RunDb::new(opts.db).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let url = db.server_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("cluster.db").display()
            )
        });
        let nats_url = format!("nats://127.0.0.1:{}", nats.port);
        let node = |id: &str| {
            let mut env: Vec<(&str, &str)> = vec![
                ("CALLSIGNAL_CLUSTER__NATS_URL", &nats_url),
                ("CALLSIGNAL_SERVER__INSTANCE_ID", id),
                ("CALLSIGNAL_AUTH__JWT_SECRET", JWT_SECRET),
            ];
            env.extend_from_slice(extra);
            Target::callsignal(opts, &env, Some(&url))
        };
        let a = node("a");
        let b = node("b");
        let c = Cluster {
            a,
            b,
            nats,
            db,
            dir,
        };
        for n in [&c.a, &c.b] {
            sees_one_other(n).await;
        }
        c
    }

    /// Where the load generator reads the rows.
    pub(crate) fn verify_url(&self) -> String {
        self.db.server_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rw",
                self.dir.path().join("cluster.db").display()
            )
        })
    }

    pub(crate) fn db_label(&self) -> &'static str {
        self.db.label()
    }
}

impl Servers for Cluster {
    fn kind(&self) -> Kind {
        Kind::Callsignal
    }
    fn label(&self) -> String {
        "callsignal cross-node".into()
    }
    fn caller(&self) -> &Target {
        &self.a
    }
    fn callee(&self) -> &Target {
        &self.b
    }
    fn nodes(&self) -> Vec<&Target> {
        vec![&self.a, &self.b]
    }
    fn aux_pids(&self) -> Vec<u32> {
        vec![self.nats.child.id()]
    }
}

/// Waits (20 s at most) until `node`'s `/readyz` says NATS is connected and one other node is
/// live.
async fn sees_one_other(node: &Target) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r: Value = match http
            .get(format!("http://{}/readyz", node.addr))
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let others = r["cluster"]["nodes"].as_array().map_or(0, Vec::len);
        if r["cluster"]["nats"] == "connected" && others == 1 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node at {} does not see the other over NATS within 20 s: {r}",
            node.addr
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `cross CALLS RATE`: the single-node relay, then the same across two nodes; prints both and
/// what the hop through NATS costs.
pub(crate) async fn cross(opts: &Opts, n_calls: usize, rate: f64) -> Stats {
    if nats_bin().is_none() {
        eprintln!(
            "cross: nats-server not found (neither /usr/sbin/nats-server nor on PATH); install it (apt-get install nats-server)"
        );
        std::process::exit(2);
    }
    let mut violations = 0;
    let single = {
        let db = RunDb::new(opts.db).await;
        let target = Target::callsignal(opts, &[], db.server_url.as_deref());
        let run = relay::relay_on(&target, opts, n_calls, rate, "r").await;
        violations += run.received.violations.len();
        run
    };
    let cluster = Cluster::start(opts, &[]).await;
    eprintln!(
        "  cluster: nats-server and nodes a, b up on {}",
        cluster.db_label()
    );
    let run = relay::relay_on(&cluster, opts, n_calls, rate, "x").await;
    violations += run.received.violations.len();
    drop(cluster);
    compare(n_calls, rate, &run, &single);
    Stats { violations }
}

/// One line: cross-node against single-node figures of the same run.
fn compare(n_calls: usize, rate: f64, x: &RelayRun, one: &RelayRun) {
    let sorted = |r: &RelayRun| {
        let mut l = r.received.latencies.clone();
        l.sort_unstable();
        l
    };
    let (a, b) = (sorted(x), sorted(one));
    let per = |p: f64| {
        format!(
            "p{} {:.2} vs {:.2} ms ({:+.2})",
            p * 100.0,
            ms(&a, p),
            ms(&b, p),
            ms(&a, p) - ms(&b, p)
        )
    };
    println!(
        "cross {n_calls} calls {rate:.0} msg/s, cross-node vs single node: {}, {}, {}; server CPU {:.1} % (two nodes) + NATS {:.1} % vs {:.1} % ({:.2}x with NATS); msg per CPU-s {:.0} (nodes) / {:.0} (nodes and NATS) vs {:.0} ({:.2}x / {:.2}x of single node); delivered {} vs {}",
        per(0.5),
        per(0.99),
        per(0.999),
        x.used.percent(),
        x.used.aux_percent(),
        one.used.percent(),
        (x.used.percent() + x.used.aux_percent()) / one.used.percent().max(1e-9),
        x.used.per_cpu_sec(x.received.got),
        x.used.per_total_cpu_sec(x.received.got),
        one.used.per_cpu_sec(one.received.got),
        x.used.per_cpu_sec(x.received.got) / one.used.per_cpu_sec(one.received.got).max(1e-9),
        x.used.per_total_cpu_sec(x.received.got) / one.used.per_cpu_sec(one.received.got).max(1e-9),
        x.received.got,
        one.received.got,
    );
}

/// The smoke mode's cross-node check: a few calls from node a to node b, a few messages each
/// way (every one delivered once and in order, every `seq`), hangups, and every call's rows in
/// the shared SQLite database (counters, and signaling rows when they are on). Asserts no time.
/// Without nats-server it is skipped, except in CI (`CI` set), where that is a failure.
pub(crate) async fn smoke(opts: &Opts, report: &mut impl FnMut(&str, &[String])) {
    const CALLS: usize = 4;
    const RATE: f64 = 40.0;
    const SECS: f64 = 1.0;
    if nats_bin().is_none() {
        if std::env::var_os("CI").is_some() {
            report(
                "cross-node",
                &["nats-server not found, and CI is set: the cross-node check must run".into()],
            );
        } else {
            println!("smoke: nats-server not found: cross-node check SKIPPED");
        }
        return;
    }
    let cluster = Cluster::start(opts, &[("CALLSIGNAL_PERSISTENCE__LOG_SIGNALING", "true")]).await;
    let calls = relay::calls(&cluster, CALLS, "x").await;
    let run = relay::run_schedule(&cluster, calls, RATE, SECS, true).await;
    report(
        &format!(
            "callsignal cross-node (callers on node a, callees on node b, {}), {} of {} messages delivered in order, seq checked",
            cluster.db_label(),
            run.received.got,
            run.sent
        ),
        &run.received.violations,
    );
    let expected = crate::hang_up(&run, report).await;
    cluster.drained(Duration::from_secs(60)).await;
    let bad = calls::verify_eventually(
        &cluster.verify_url(),
        &expected,
        crate::smoke_logs_signaling(opts),
        Duration::from_secs(30),
    )
    .await;
    report(
        &format!(
            "callsignal cross-node, rows of {} calls (calls, signaling_messages)",
            expected.len()
        ),
        &bad,
    );
}
