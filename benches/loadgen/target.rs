//! The processes under test: the callsignal release binary, or the bare relay. Each runs as a
//! child process (pinned to core 0 with `--pin`); its CPU time and resident memory are read from
//! `/proc/<pid>`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Opts;

/// The core the server under test runs on with `--pin`; the load generator takes the other.
pub(crate) const SERVER_CORE: usize = 0;
pub(crate) const LOADGEN_CORE: usize = 1;

/// Which server a target is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Callsignal,
    Bare,
    /// PeerJS server 1.0.2 (`--peerjs DIR`: DIR holds `node_modules/peer`).
    PeerJs,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Callsignal => "callsignal",
            Kind::Bare => "bare relay",
            Kind::PeerJs => "PeerJS 1.0.2",
        }
    }
}

/// A running server under test; killed on drop.
pub(crate) struct Target {
    child: Child,
    pub(crate) addr: String,
    pub(crate) kind: Kind,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Settings every callsignal run gets: the load generator is one client address with many
/// users and connections, so the per-address and per-user caps and the invite/registration
/// limits are lifted. Per-connection message rate limits stay at their defaults unless a scenario
/// says otherwise (the flood lifts them). Only keys of `config/default.toml` (the server refuses
/// unknown ones).
const BASE_ENV: &[(&str, &str)] = &[
    ("CALLSIGNAL_SERVER__BIND", "127.0.0.1:0"),
    ("CALLSIGNAL_LOG__FORMAT", "json"),
    ("CALLSIGNAL_SERVER__MAX_CONNECTIONS_PER_ADDRESS", "0"),
    ("CALLSIGNAL_SERVER__MAX_TCP_CONNECTIONS", "100000"),
    ("CALLSIGNAL_WS__MAX_CONNECTIONS_PER_USER", "100000"),
    ("CALLSIGNAL_WS__MAX_CONNECTIONS", "100000"),
    ("CALLSIGNAL_CALLS__INVITES_PER_MINUTE", "1000000"),
    ("CALLSIGNAL_CALLS__INVITES_PER_CALLEE_PER_MINUTE", "1000000"),
    ("CALLSIGNAL_CALLS__INVITES_PER_PAIR_PER_MINUTE", "1000000"),
    ("CALLSIGNAL_AUTH__REGISTER_PER_ADDRESS_PER_HOUR", "1000000"),
    ("CALLSIGNAL_AUTH__MAX_QUEUED_HASHES", "100000"),
    ("CALLSIGNAL_AUTH__MAX_QUEUED_REGISTRATION_HASHES", "100000"),
    (
        "CALLSIGNAL_AUTH__THROTTLE__ADDRESS_FREE_FAILURES",
        "1000000",
    ),
];

/// Lifts the per-connection message and byte rate limits (flood only).
pub(crate) const NO_RATE_LIMITS: &[(&str, &str)] = &[
    ("CALLSIGNAL_WS__RATE_LIMIT_PER_SEC", "1000000"),
    ("CALLSIGNAL_WS__RATE_LIMIT_BURST", "1000000"),
    ("CALLSIGNAL_WS__RATE_LIMIT_BYTES_PER_SEC", "1000000000"),
    ("CALLSIGNAL_WS__RATE_LIMIT_BYTES_BURST", "1000000000"),
];

/// `program`, under `taskset -c 0` with `--pin`, under `chrt -f 1` (SCHED_FIFO, the lowest
/// real-time priority) with `--rt`, and under the command in `LOADGEN_WRAP` (words split at
/// spaces; a profiler such as `valgrind --tool=callgrind --instr-atstart=no`) when it is set.
pub(crate) fn wrapped(opts: &Opts, program: &str) -> Command {
    let mut argv: Vec<String> = vec![];
    if opts.rt {
        argv.extend(["chrt", "-f", "1"].map(String::from));
    }
    if opts.pin {
        argv.extend(["taskset".into(), "-c".into(), SERVER_CORE.to_string()]);
    }
    if let Ok(wrap) = std::env::var("LOADGEN_WRAP") {
        argv.extend(wrap.split_whitespace().map(String::from));
    }
    argv.push(program.into());
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]);
    c
}

/// Starts `cmd` and waits for the line `ready(line)` recognises (the listening address).
fn spawn(mut cmd: Command, what: &str, ready: fn(&str) -> Option<String>) -> (Child, String) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(addr) = ready(&line) {
                let _ = tx.send(addr);
            } else if line.contains("\"level\":\"ERROR\"") {
                eprintln!("server: {line}");
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what} did not report its address"));
    (child, addr)
}

impl Target {
    /// The callsignal release binary (`CALLSIGNAL_BIN`, default `target/release/callsignal`) on
    /// a fresh SQLite database in a temp directory (or `database_url`), with `extra` settings and
    /// then the command line's `--env`s layered on [`BASE_ENV`].
    pub(crate) fn callsignal(
        opts: &Opts,
        extra: &[(&str, &str)],
        database_url: Option<&str>,
    ) -> Target {
        let bin = std::env::var("CALLSIGNAL_BIN").unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../target/release/callsignal"
            )
            .into()
        });
        assert!(
            Path::new(&bin).exists(),
            "{bin} does not exist: run `cargo build --release` first"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = wrapped(opts, &bin);
        cmd.current_dir(dir.path())
            .env("RUST_LOG", "warn,callsignal::startup=info");
        for (k, v) in BASE_ENV.iter().chain(extra) {
            cmd.env(k, v);
        }
        if let Some(url) = database_url {
            cmd.env("CALLSIGNAL_DATABASE__URL", url);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let (child, addr) = spawn(cmd, &bin, |line| {
            if !line.contains("callsignal listening") {
                return None;
            }
            let v: Value = serde_json::from_str(line).ok()?;
            v["addr"].as_str().map(str::to_owned)
        });
        Target {
            child,
            addr,
            kind: Kind::Callsignal,
            dir,
            http: reqwest::Client::new(),
        }
    }

    /// The bare relay (`bare_relay.rs`), run by this very binary as `loadgen bare-relay`.
    pub(crate) fn bare(opts: &Opts) -> Target {
        let exe = std::env::current_exe().expect("current exe");
        let mut cmd = wrapped(opts, exe.to_str().expect("utf-8 path"));
        cmd.args(["bare-relay", "127.0.0.1:0"]);
        let (child, addr) = spawn(cmd, "bare relay", |line| {
            line.strip_prefix("bare relay listening on ")
                .map(str::to_owned)
        });
        Target {
            child,
            addr,
            kind: Kind::Bare,
            dir: tempfile::tempdir().expect("tempdir"),
            http: reqwest::Client::new(),
        }
    }

    /// PeerJS server (`node node_modules/peer/dist/bin/peerjs.js` in `--peerjs DIR`), its
    /// connection limit and liveness timeout lifted.
    pub(crate) fn peerjs(opts: &Opts) -> Target {
        let dir = opts.peerjs.clone().expect("--peerjs DIR");
        let script = format!("{dir}/node_modules/peer/dist/bin/peerjs.js");
        assert!(
            Path::new(&script).exists(),
            "{script} does not exist: `npm install peer@1.0.2` in {dir}"
        );
        // PeerJS cannot listen on port 0: take a free port.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut cmd = wrapped(opts, "node");
        cmd.args([
            script.as_str(),
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--concurrent_limit",
            "1000000",
            "--alive_timeout",
            "3600000",
        ]);
        let (child, _) = spawn(cmd, "PeerJS", |line| {
            line.contains("Started PeerServer").then(String::new)
        });
        Target {
            child,
            addr: format!("127.0.0.1:{port}"),
            kind: Kind::PeerJs,
            dir: tempfile::tempdir().expect("tempdir"),
            http: reqwest::Client::new(),
        }
    }

    pub(crate) fn start(kind: Kind, opts: &Opts, extra: &[(&str, &str)]) -> Target {
        match kind {
            Kind::Callsignal => Target::callsignal(opts, extra, None),
            Kind::Bare => Target::bare(opts),
            Kind::PeerJs => Target::peerjs(opts),
        }
    }

    /// The server's working directory (its SQLite database is `data/callsignal.db` in it).
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id of the server.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (user + system) the process has used so far.
    pub(crate) fn cpu(&self) -> Duration {
        proc_cpu(self.pid())
    }

    /// Resident set size of the process, in bytes.
    pub(crate) fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// A value from callsignal's `/metrics`.
    pub(crate) async fn metric(&self, name: &str) -> Option<f64> {
        if self.kind != Kind::Callsignal {
            return None;
        }
        let text = self
            .http
            .get(format!("http://{}/metrics", self.addr))
            .send()
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

    /// Waits (at most `limit`) until every call event is committed; returns whether it was.
    pub(crate) async fn drained(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if self
                .metric("callsignal_persistence_backlog")
                .await
                .unwrap_or(0.0)
                <= 0.0
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
}

/// CPU time (user + system) process `pid` has used so far (zero once it is gone).
pub(crate) fn proc_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) and its closing parenthesis:
    // state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(1)
        .take(12)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
}

/// `getconf CLK_TCK` (the unit of `/proc/<pid>/stat` times), 100 if it cannot be asked.
fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// What a measured phase runs against: one server, or cluster nodes and the NATS between them
/// (`cluster.rs`). Callers connect to [`Servers::caller`], callees to [`Servers::callee`].
pub(crate) trait Servers {
    /// The server kind (the protocol the clients speak).
    fn kind(&self) -> Kind;
    /// How the reports name it.
    fn label(&self) -> String {
        self.kind().name().to_owned()
    }
    /// The server callers connect to.
    fn caller(&self) -> &Target;
    /// The server callees connect to.
    fn callee(&self) -> &Target;
    /// Every server process: their CPU together is the server CPU.
    fn nodes(&self) -> Vec<&Target>;
    /// Further processes whose CPU is measured apart (the cluster's nats-server).
    fn aux_pids(&self) -> Vec<u32> {
        vec![]
    }

    /// A `/metrics` value summed over the nodes.
    async fn metric(&self, name: &str) -> Option<f64> {
        let mut sum = None;
        for n in self.nodes() {
            if let Some(v) = n.metric(name).await {
                sum = Some(sum.unwrap_or(0.0) + v);
            }
        }
        sum
    }

    /// Waits (at most `limit` each) until every node has committed its call events.
    async fn drained(&self, limit: Duration) -> bool {
        let mut all = true;
        for n in self.nodes() {
            all &= n.drained(limit).await;
        }
        all
    }

    /// Resident set size of the nodes together, in bytes.
    fn rss(&self) -> u64 {
        self.nodes().iter().map(|n| n.rss()).sum()
    }
}

impl Servers for Target {
    fn kind(&self) -> Kind {
        self.kind
    }
    fn caller(&self) -> &Target {
        self
    }
    fn callee(&self) -> &Target {
        self
    }
    fn nodes(&self) -> Vec<&Target> {
        vec![self]
    }
}

/// Server CPU over a measured phase.
pub(crate) struct Meter {
    wall: Instant,
    cpu: Duration,
    aux: Duration,
}

/// What a [`Meter`] measured.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Used {
    pub(crate) wall: Duration,
    /// CPU of the server processes together.
    pub(crate) cpu: Duration,
    /// CPU of the auxiliary processes (NATS), not in `cpu`.
    pub(crate) aux: Duration,
}

impl Used {
    /// Server CPU as a percentage of one core.
    pub(crate) fn percent(&self) -> f64 {
        100.0 * self.cpu.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }

    /// Auxiliary CPU (NATS) as a percentage of one core.
    pub(crate) fn aux_percent(&self) -> f64 {
        100.0 * self.aux.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }

    /// `n` per server CPU-second.
    pub(crate) fn per_cpu_sec(&self, n: u64) -> f64 {
        n as f64 / self.cpu.as_secs_f64().max(1e-9)
    }

    /// `n` per CPU-second of the servers and the auxiliary processes together.
    pub(crate) fn per_total_cpu_sec(&self, n: u64) -> f64 {
        n as f64 / (self.cpu + self.aux).as_secs_f64().max(1e-9)
    }
}

fn cpu_of(servers: &impl Servers) -> (Duration, Duration) {
    (
        servers.nodes().iter().map(|n| n.cpu()).sum(),
        servers.aux_pids().into_iter().map(proc_cpu).sum(),
    )
}

impl Meter {
    pub(crate) fn start(servers: &impl Servers) -> Meter {
        let (cpu, aux) = cpu_of(servers);
        Meter {
            wall: Instant::now(),
            cpu,
            aux,
        }
    }

    pub(crate) fn stop(&self, servers: &impl Servers) -> Used {
        let (cpu, aux) = cpu_of(servers);
        Used {
            wall: self.wall.elapsed(),
            cpu: cpu.saturating_sub(self.cpu),
            aux: aux.saturating_sub(self.aux),
        }
    }
}
