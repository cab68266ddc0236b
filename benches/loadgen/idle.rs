//! `idle N`: resident memory per idle connection. For callsignal each connection is authenticated
//! (WebSocket upgrade, `hello`, `welcome`) as one user with many devices; for the bare relay it
//! is a WebSocket upgrade naming its id. Every socket keeps being read (so heartbeat pings are
//! answered) until the figures are taken.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::Semaphore;

use crate::client::{self, Conn};
use crate::target::{Kind, Target};
use crate::{Opts, Stats};

const WARM_UP: usize = 50;

/// How long the server is left alone before each RSS reading.
const SETTLE: Duration = Duration::from_secs(3);

/// Opens connection number `i` and keeps reading it in a task of its own.
async fn open(target: &Target, token: &str, i: usize) {
    let ws = match target.kind {
        Kind::Callsignal => Conn::hello(&target.addr, token).await.ws,
        Kind::Bare => client::open(&format!("ws://{}/idle{i}/nobody", target.addr)).await,
        Kind::PeerJs => crate::relay::peerjs_open(&target.addr, &format!("idle{i}")).await,
    };
    tokio::spawn(async move {
        let (_sink, mut stream) = ws.split();
        while let Some(Ok(_)) = stream.next().await {}
    });
}

/// RSS per connection in bytes, for one target.
async fn measure(opts: &Opts, kind: Kind, n: usize) -> f64 {
    let target = Target::start(kind, opts, &[]);
    let token = match kind {
        Kind::Callsignal => client::users(&target.addr, vec!["idle".into()], 1)
            .await
            .remove(0),
        Kind::Bare | Kind::PeerJs => String::new(),
    };
    for i in 0..WARM_UP {
        open(&target, &token, i).await;
    }
    // As long as before the second reading: memory freed by the setup (callsignal's Argon2
    // hashes of the registration and login, 19 MiB each) is given back by the allocator after
    // a delay, and a baseline read 0.5 s after them sometimes still held one (RSS before the
    // connections 40–59 MiB between runs of the same binary: ±1.2 KiB per connection).
    tokio::time::sleep(SETTLE).await;
    let before = target.rss();
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(opts.inflight));
    let target = Arc::new(target);
    let token: Arc<str> = token.into();
    // Opened in two steps, up to a third and then the rest, with a reading after each: the
    // second step's growth per connection (the marginal cost) does not depend on what the
    // baseline happened to hold, which moves the first figure by up to ±1.3 KiB between runs
    // of the same binary (freed memory the allocator had or had not given back yet, memory
    // freed by the setup that the first connections reuse).
    let third = (n / 3).max(WARM_UP + 1);
    let mut mid = 0;
    for (from, to) in [(WARM_UP, third), (third, n)] {
        let mut tasks = vec![];
        for i in from..to {
            let permit = gate.clone().acquire_owned().await.expect("gate");
            let (target, token) = (target.clone(), token.clone());
            tasks.push(tokio::spawn(async move {
                open(&target, &token, i).await;
                drop(permit);
            }));
        }
        for t in tasks {
            t.await.expect("open");
        }
        if to == third {
            tokio::time::sleep(SETTLE).await;
            mid = target.rss();
        }
    }
    let took = started.elapsed().saturating_sub(SETTLE);
    tokio::time::sleep(SETTLE).await;
    let after = target.rss();
    let per = after.saturating_sub(before) as f64 / (n - WARM_UP) as f64;
    let marginal = after.saturating_sub(mid) as f64 / (n - third) as f64;
    println!(
        "idle {n} [{}]: opened in {:.1}s ({} in flight); server RSS {:.1} -> {:.1} (at {third}) -> {:.1} MiB; {:.0} bytes = {:.2} KiB per idle connection; marginal {:.0} bytes = {:.2} KiB per connection from {third} to {n}",
        kind.name(),
        took.as_secs_f64(),
        opts.inflight,
        before as f64 / 1048576.0,
        mid as f64 / 1048576.0,
        after as f64 / 1048576.0,
        per,
        per / 1024.0,
        marginal,
        marginal / 1024.0
    );
    if let Some(secs) = std::env::var("LOADGEN_HOLD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        // Keep the connections open (e.g. to take a heap profile of the server meanwhile).
        eprintln!("  holding for {secs}s (LOADGEN_HOLD_SECS), server pid in /proc");
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    per
}

pub(crate) async fn idle(opts: &Opts, n: usize) -> Stats {
    assert!(n > WARM_UP, "idle needs more than {WARM_UP} connections");
    let limit = open_files_limit();
    assert!(
        limit > n as u64 + 1000,
        "the open-files limit ({limit}) is too low for {n} connections: raise it (`ulimit -n 20000` or more)"
    );
    let mut per = vec![];
    for &kind in &opts.targets {
        per.push((kind, measure(opts, kind, n).await));
    }
    if let Some((_, bare)) = per.iter().find(|(k, _)| *k == Kind::Bare) {
        for (kind, x) in per.iter().filter(|(k, _)| *k != Kind::Bare) {
            println!(
                "idle {n}, {} vs bare relay: {:.2} vs {:.2} KiB per connection ({:.2}x)",
                kind.name(),
                x / 1024.0,
                bare / 1024.0,
                x / bare.max(1e-9)
            );
        }
    }
    Stats::default()
}

/// The soft limit on open files (`/proc/self/limits`).
fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX)
}
