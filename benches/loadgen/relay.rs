//! Relay and flood: answered calls exchanging `sdp`/`ice`, through callsignal or the bare relay.
//!
//! Relay is **open-loop**: a schedule fixed up front sends message `j` (of all calls together) at
//! `t0 + j / RATE`; message `j` belongs to call `j % CALLS` as its message number
//! `k = j / CALLS`. A call's messages are the caller's ~3 KB SDP offer (`k` = 0), the callee's
//! answer (1), then candidate-sized messages, the caller's at even `k` and the callee's at odd `k`
//! (the first 16 are the ~8 ICE candidates each way of a real call setup). Latency runs from the
//! message's **intended** send time to its receipt, so a stall of the server (or of the load
//! generator) shows in the figures instead of silently delaying the schedule. The scheduler sleeps
//! on tokio's timer until ~2 ms before a send and then spins (yielding to the receivers) on the
//! load generator's own core, so sends are not quantised to the timer wheel's 1 ms.
//!
//! Flood is closed-loop: callers send candidate-sized messages as fast as the peer receives them
//! (one write per message, as a browser sends them; at most `window` in flight per call); the
//! figure is messages per server CPU-second.
//!
//! Every receiver checks that its call's messages arrive exactly once and in order (the message
//! number), and for callsignal that every message carries the next `seq`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Conn, Frames, Sink, Stream};
use crate::target::{Kind, Meter, NO_RATE_LIMITS, Servers, Target, Used};
use crate::{Opts, Stats};

/// One answered call, ready for a measured phase.
pub(crate) struct Call {
    pub(crate) call_id: String,
    /// Invites that ended `unavailable` before this call was made (see
    /// [`client::set_up_call`]).
    pub(crate) unavailable: Vec<String>,
    pub(crate) frames: Frames,
    a: (Sink, Stream, u64),
    b: (Sink, Stream, u64),
}

/// Sets up `n` answered calls on `servers` (for callsignal: `2n` users, registered and logged
/// in, each with one signaling connection; the caller invites, the callee accepts). Callers are
/// on [`Servers::caller`], callees on [`Servers::callee`] (the same server but in a cluster).
pub(crate) async fn calls(servers: &impl Servers, n: usize, tag: &str) -> Vec<Call> {
    let began = Instant::now();
    let target = servers.caller();
    let out = match servers.kind() {
        Kind::Bare => {
            let mut out = vec![];
            for i in 0..n {
                let call_id = uuid::Uuid::new_v4().to_string();
                let a = client::open(&format!("ws://{}/{tag}{i}a/{tag}{i}b", target.addr)).await;
                let b = client::open(&format!("ws://{}/{tag}{i}b/{tag}{i}a", target.addr)).await;
                let (a, b) = (
                    Conn { ws: a, last_seq: 0 }.split(),
                    Conn { ws: b, last_seq: 0 }.split(),
                );
                out.push(Call {
                    unavailable: vec![],
                    frames: Frames::new(&call_id),
                    call_id,
                    a,
                    b,
                });
            }
            out
        }
        Kind::PeerJs => {
            let mut out = vec![];
            for i in 0..n {
                let call_id = uuid::Uuid::new_v4().to_string();
                let (a_id, b_id) = (format!("{tag}{i}a"), format!("{tag}{i}b"));
                let a = peerjs_open(&target.addr, &a_id).await;
                let b = peerjs_open(&target.addr, &b_id).await;
                out.push(Call {
                    unavailable: vec![],
                    frames: Frames::peerjs(&call_id, &a_id, &b_id),
                    call_id,
                    a: Conn { ws: a, last_seq: 0 }.split(),
                    b: Conn { ws: b, last_seq: 0 }.split(),
                });
            }
            out
        }
        Kind::Callsignal => {
            let (a_addr, b_addr) = (&servers.caller().addr, &servers.callee().addr);
            let a_names: Vec<String> = (0..n).map(|i| format!("{tag}{i}a")).collect();
            let b_names: Vec<String> = (0..n).map(|i| format!("{tag}{i}b")).collect();
            // Each user registers and logs in on the node it connects to.
            let (a_tokens, b_tokens) = if a_addr == b_addr {
                let names = a_names.iter().chain(&b_names).cloned().collect();
                let mut t = client::users(a_addr, names, 16).await;
                let b = t.split_off(n);
                (t, b)
            } else {
                tokio::join!(
                    client::users(a_addr, a_names, 16),
                    client::users(b_addr, b_names.clone(), 16)
                )
            };
            let gate = Arc::new(Semaphore::new(32));
            let mut tasks = vec![];
            for i in 0..n {
                let (a_addr, b_addr, gate) = (a_addr.clone(), b_addr.clone(), gate.clone());
                let (ta, tb, bn) = (a_tokens[i].clone(), b_tokens[i].clone(), b_names[i].clone());
                tasks.push(tokio::spawn(async move {
                    let _permit = gate.acquire_owned().await.expect("gate");
                    // The callee first: in a cluster its presence then has the caller's
                    // handshake to reach the caller's node.
                    let mut b = Conn::hello(&b_addr, &tb).await;
                    let mut a = Conn::hello(&a_addr, &ta).await;
                    let (call_id, unavailable) = client::set_up_call(&mut a, &mut b, &bn).await;
                    Call {
                        unavailable,
                        frames: Frames::new(&call_id),
                        call_id,
                        a: a.split(),
                        b: b.split(),
                    }
                }));
            }
            let mut out = vec![];
            for t in tasks {
                out.push(t.await.expect("call setup"));
            }
            out
        }
    };
    let retried: usize = out.iter().map(|c| c.unavailable.len()).sum();
    eprintln!(
        "  {}: {n} answered calls set up in {:.1}s ({retried} invites ended unavailable first and were retried)",
        servers.label(),
        began.elapsed().as_secs_f64()
    );
    out
}

/// Connects to PeerJS as `id` and waits for its `OPEN`.
pub(crate) async fn peerjs_open(addr: &str, id: &str) -> client::Ws {
    let mut ws = client::open(&format!(
        "ws://{addr}/peerjs?key=peerjs&id={id}&token=t{id}"
    ))
    .await;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                assert!(t.as_str().contains("\"OPEN\""), "PeerJS said {t}");
                return ws;
            }
            Some(Ok(_)) => continue,
            other => panic!("PeerJS socket ended: {other:?}"),
        }
    }
}

/// What one receiving connection expects: message numbers `start, start + step, …`, `count` of
/// them.
#[derive(Clone, Copy)]
struct Expect {
    start: u64,
    step: u64,
    count: u64,
}

/// What a receiver saw.
#[derive(Default)]
pub(crate) struct Received {
    pub(crate) got: u64,
    pub(crate) expected: u64,
    /// Microseconds from intended send to receipt.
    pub(crate) latencies: Vec<u32>,
    /// For each of `latencies` (same index), its intended send time in microseconds from the
    /// schedule's start (for the tail's timeline, [`tail_timeline`]).
    pub(crate) intended: Vec<u32>,
    pub(crate) violations: Vec<String>,
}

impl Received {
    fn merge(&mut self, o: Received) {
        self.got += o.got;
        self.expected += o.expected;
        self.latencies.extend(o.latencies);
        self.intended.extend(o.intended);
        self.violations.extend(o.violations);
    }
}

/// A callsignal connection's acknowledgements, shared by its reader (which records the highest
/// `seq` processed) and whoever sends on it (which attaches it as `"ack"` to a message it sends
/// anyway — the protocol's piggybacked ack, as the browser client does).
#[derive(Debug, Default)]
pub(crate) struct Acks {
    last: AtomicU64,
    acked: AtomicU64,
}

impl Acks {
    /// A connection whose welcome or resume left it at `seq`.
    fn at(seq: u64) -> Arc<Self> {
        Arc::new(Self {
            last: AtomicU64::new(seq),
            acked: AtomicU64::new(seq),
        })
    }

    /// The highest `seq` processed, if it was not acknowledged yet (it counts as acknowledged
    /// from now on).
    pub(crate) fn take(&self) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        (self.acked.fetch_max(last, Ordering::Relaxed) < last).then_some(last)
    }

    /// `frame` (a JSON object) with the acknowledgement attached, if there is one to give.
    pub(crate) fn attach(this: Option<&Self>, frame: String) -> String {
        match this.and_then(Self::take) {
            Some(seq) => format!("{{\"ack\":{seq},{}", &frame[1..]),
            None => frame,
        }
    }
}

/// The relay schedule: when message `k` of call `i` is meant to be sent.
#[derive(Clone, Copy)]
struct Schedule {
    t0: Instant,
    calls: u64,
    rate: f64,
}

impl Schedule {
    fn at(&self, j: u64) -> Instant {
        self.t0 + Duration::from_secs_f64(j as f64 / self.rate)
    }
    fn of(&self, call: u64, k: u64) -> Instant {
        self.at(k * self.calls + call)
    }
}

/// Reads one connection's relayed messages until it has `expect.count` of them or `deadline`.
/// Checks order and exactly-once delivery by message number, and callsignal's `seq`; acks as
/// the browser client does (`ack_to`): the highest `seq` rides on the next message the
/// connection sends anyway ([`Acks::take`], by the sender), and an `ack` frame of its own goes
/// only when nothing carried it within a second. `ack_phase`: how far into its first second
/// this connection's ack clock starts. Browsers' ack timers run in independent phases; started
/// all at once, 2,000 connections would send their `ack` frames in one burst every second (a
/// periodic stall of the load generator's own making, seen in session 8's tail timelines).
#[allow(clippy::too_many_arguments)]
async fn receive(
    call: u64,
    mut stream: Stream,
    mut last_seq: Option<u64>,
    ack_to: Option<(Sink, Arc<Acks>)>,
    ack_phase: Duration,
    expect: Expect,
    schedule: Option<Schedule>,
    credit: Option<Arc<Semaphore>>,
    deadline: Instant,
) -> Received {
    let mut r = Received {
        expected: expect.count,
        latencies: Vec::with_capacity(usize::try_from(expect.count).unwrap_or(0)),
        intended: Vec::with_capacity(usize::try_from(expect.count).unwrap_or(0)),
        ..Received::default()
    };
    let mut next = expect.start;
    let mut last_ack = Instant::now()
        .checked_sub(ack_phase)
        .unwrap_or_else(Instant::now);
    while r.got < expect.count {
        let frame = match tokio::time::timeout_at(deadline.into(), stream.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(_))) => continue,
            Ok(other) => {
                r.violations
                    .push(format!("call {call}: socket ended: {other:?}"));
                break;
            }
            Err(_) => break,
        };
        let now = Instant::now();
        let text = frame.as_str();
        if let Some(last) = last_seq.as_mut() {
            match client::num_after(text, "\"seq\":") {
                Some(seq) if seq == *last + 1 => *last = seq,
                other => {
                    r.violations.push(format!(
                        "call {call}: seq {other:?} after {last}: {}",
                        &text[..text.len().min(200)]
                    ));
                    if let Some(seq) = other {
                        *last = seq;
                    }
                }
            }
        }
        let Some(k) = client::frame_number(text) else {
            r.violations.push(format!(
                "call {call}: unexpected message {}",
                &text[..text.len().min(200)]
            ));
            continue;
        };
        if k != next {
            r.violations
                .push(format!("call {call}: message {k} where {next} was due"));
        }
        next = k + expect.step;
        r.got += 1;
        if let Some(s) = &schedule {
            let due = s.of(call, k);
            let lat = now.saturating_duration_since(due);
            r.latencies
                .push(u32::try_from(lat.as_micros()).unwrap_or(u32::MAX));
            r.intended.push(
                u32::try_from(due.saturating_duration_since(s.t0).as_micros()).unwrap_or(u32::MAX),
            );
        }
        if let Some(c) = &credit {
            c.add_permits(1);
        }
        if let (Some((sink, acks)), Some(last)) = (&ack_to, last_seq) {
            acks.last.store(last, Ordering::Relaxed);
            if now.duration_since(last_ack) >= Duration::from_secs(1) {
                last_ack = now;
                if let Some(seq) = acks.take() {
                    let ack = json!({"type": "ack", "seq": seq}).to_string();
                    if sink.lock().await.send(Message::text(ack)).await.is_err() {
                        r.violations.push(format!("call {call}: ack failed"));
                    }
                }
            }
        }
    }
    if r.got < expect.count {
        r.violations.push(format!(
            "call {call}: {} of {} messages arrived",
            r.got, expect.count
        ));
    }
    r
}

/// Waits until `t`: tokio's timer to ~2 ms before, then spinning (yielding to the other tasks).
async fn wait_until(t: Instant) {
    let margin = Duration::from_millis(2);
    if t > Instant::now() + margin + Duration::from_millis(1) {
        tokio::time::sleep_until((t - margin).into()).await;
    }
    while Instant::now() < t {
        tokio::task::yield_now().await;
    }
}

/// The result of one measured relay run.
pub(crate) struct RelayRun {
    pub(crate) received: Received,
    pub(crate) used: Used,
    /// Microseconds each send started after its intended time (the load generator's own lag).
    pub(crate) send_lag: Vec<u32>,
    pub(crate) sent: u64,
    /// Each call's id, its caller's sink and how many messages it relayed.
    pub(crate) calls: Vec<(String, Sink, u64)>,
    /// Invites that ended `unavailable` during the setup (retried).
    pub(crate) unavailable: Vec<String>,
}

/// Runs the open-loop schedule: `rate` messages per second over all `calls` for `secs`.
pub(crate) async fn run_schedule(
    target: &impl Servers,
    calls: Vec<Call>,
    rate: f64,
    secs: f64,
    ack: bool,
) -> RelayRun {
    let n = calls.len() as u64;
    let total = (rate * secs).round() as u64;
    let schedule = Schedule {
        t0: Instant::now() + Duration::from_millis(300),
        calls: n,
        rate,
    };
    let deadline = schedule.at(total) + Duration::from_secs(15);
    let callsignal = target.kind() == Kind::Callsignal;
    let mut receivers = vec![];
    let mut senders = vec![];
    let mut unavailable = vec![];
    for (i, c) in calls.into_iter().enumerate() {
        let i = i as u64;
        unavailable.extend(c.unavailable);
        // Messages of call i: j = k * n + i < total.
        let msgs = total / n + u64::from(i < total % n);
        let (a_sink, a_stream, a_seq) = c.a;
        let (b_sink, b_stream, b_seq) = c.b;
        let (a_acks, b_acks) = (Acks::at(a_seq), Acks::at(b_seq));
        // The callee receives the caller's (even k), the caller the callee's (odd k).
        for (stream, seq, start, ack_to) in [
            (b_stream, b_seq, 0, (b_sink.clone(), b_acks.clone())),
            (a_stream, a_seq, 1, (a_sink.clone(), a_acks.clone())),
        ] {
            let expect = Expect {
                start,
                step: 2,
                count: msgs.saturating_sub(start).div_ceil(2),
            };
            receivers.push(tokio::spawn(receive(
                i,
                stream,
                callsignal.then_some(seq),
                (callsignal && ack).then_some(ack_to),
                // Spread over the second: receiver r of the run's 2n starts r / 2n s in.
                Duration::from_secs_f64((2 * i + start) as f64 / (2 * n) as f64),
                expect,
                Some(schedule),
                None,
                deadline,
            )));
        }
        let acks = (callsignal && ack).then_some((a_acks, b_acks));
        senders.push((a_sink, b_sink, c.frames, c.call_id, msgs, acks));
    }
    wait_until(schedule.t0).await;
    let meter = Meter::start(target);
    let mut send_lag = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let mut failed = vec![];
    for j in 0..total {
        let (i, k) = (j % n, j / n);
        let at = schedule.at(j);
        wait_until(at).await;
        let (a, b, frames, _, _, acks) = &senders[usize::try_from(i).expect("call index")];
        let (sink, acks) = if k.is_multiple_of(2) {
            (a, acks.as_ref().map(|(a, _)| &**a))
        } else {
            (b, acks.as_ref().map(|(_, b)| &**b))
        };
        let frame = Acks::attach(acks, frames.scheduled(k));
        send_lag.push(u32::try_from(at.elapsed().as_micros()).unwrap_or(u32::MAX));
        if sink.lock().await.send(Message::text(frame)).await.is_err() {
            failed.push(format!("call {i}: send of message {k} failed"));
        }
    }
    let mut received = Received::default();
    for r in receivers {
        received.merge(r.await.expect("receiver"));
    }
    let used = meter.stop(target);
    received.violations.extend(failed);
    RelayRun {
        received,
        used,
        send_lag,
        sent: total,
        calls: senders
            .into_iter()
            .map(|(a, _, _, id, msgs, _)| (id, a, msgs))
            .collect(),
        unavailable,
    }
}

/// Closed-loop flood: every caller sends `msgs` candidate-sized messages to its callee, at most
/// `window` in flight.
pub(crate) async fn run_flood(
    target: &impl Servers,
    calls: Vec<Call>,
    msgs: u64,
    window: usize,
    ack: bool,
) -> (Received, Used) {
    let callsignal = target.kind() == Kind::Callsignal;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut receivers = vec![];
    let mut senders = vec![];
    let start = Arc::new(tokio::sync::Notify::new());
    let n_calls = calls.len().max(1);
    for (i, c) in calls.into_iter().enumerate() {
        let credit = Arc::new(Semaphore::new(window));
        let (a_sink, a_stream, _) = c.a;
        let (b_sink, b_stream, b_seq) = c.b;
        drop(a_stream);
        receivers.push(tokio::spawn(receive(
            i as u64,
            b_stream,
            callsignal.then_some(b_seq),
            (callsignal && ack).then_some((b_sink, Acks::at(b_seq))),
            Duration::from_secs_f64(i as f64 / n_calls as f64),
            Expect {
                start: 0,
                step: 1,
                count: msgs,
            },
            None,
            Some(credit.clone()),
            deadline,
        )));
        let start = start.clone();
        let frames = c.frames;
        senders.push(tokio::spawn(async move {
            start.notified().await;
            let mut sink = a_sink.lock().await;
            for k in 0..msgs {
                // One write per message, as a browser's WebSocket sends them; at most `window`
                // not yet received.
                credit.acquire().await.expect("credit").forget();
                if sink.send(Message::text(frames.ice(k))).await.is_err() {
                    return;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let meter = Meter::start(target);
    start.notify_waiters();
    let mut received = Received::default();
    for r in receivers {
        received.merge(r.await.expect("receiver"));
    }
    let used = meter.stop(target);
    for s in senders {
        let _ = s.await;
    }
    (received, used)
}

/// Percentiles of microsecond samples, in milliseconds.
pub(crate) fn ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// `relay CALLS RATE`: the open-loop relay on each target; prints figures and ratios.
pub(crate) async fn relay(opts: &Opts, n_calls: usize, rate: f64) -> Stats {
    let mut stats = Stats::default();
    let mut results: Vec<(Kind, RelayRun)> = vec![];
    for &kind in &opts.targets {
        let target = Target::start(kind, opts, &[]);
        let run = relay_on(&target, opts, n_calls, rate, "r").await;
        stats.violations += run.received.violations.len();
        results.push((kind, run));
    }
    if let Some((_, bare)) = results.iter().find(|(k, _)| *k == Kind::Bare) {
        let mut b = bare.received.latencies.clone();
        b.sort_unstable();
        for (kind, run) in results.iter().filter(|(k, _)| *k != Kind::Bare) {
            let mut a = run.received.latencies.clone();
            a.sort_unstable();
            println!(
                "relay {n_calls} calls {rate:.0} msg/s, {} vs bare relay: p99 {:.2} vs {:.2} ms ({:.1}x), p99.9 {:.2} vs {:.2} ms ({:.1}x), server CPU {:.0} % vs {:.0} % ({:.1}x), msg per CPU-s {:.0} vs {:.0} ({:.2}x of bare)",
                kind.name(),
                ms(&a, 0.99),
                ms(&b, 0.99),
                ms(&a, 0.99) / ms(&b, 0.99).max(1e-9),
                ms(&a, 0.999),
                ms(&b, 0.999),
                ms(&a, 0.999) / ms(&b, 0.999).max(1e-9),
                run.used.percent(),
                bare.used.percent(),
                run.used.percent() / bare.used.percent().max(1e-9),
                run.used.per_cpu_sec(run.received.got),
                bare.used.per_cpu_sec(bare.received.got),
                run.used.per_cpu_sec(run.received.got)
                    / bare.used.per_cpu_sec(bare.received.got).max(1e-9),
            );
        }
    }
    stats
}

/// The relay measurement on one set of servers (one server, or a cluster): sets up `n_calls`
/// answered calls, runs the open-loop schedule and prints its figures (for callsignal also the
/// events written, whether the backlog drained, and RSS).
pub(crate) async fn relay_on(
    servers: &impl Servers,
    opts: &Opts,
    n_calls: usize,
    rate: f64,
    tag: &str,
) -> RelayRun {
    let callsignal = servers.kind() == Kind::Callsignal;
    let calls = calls(servers, n_calls, tag).await;
    if callsignal {
        let f = &calls[0].frames;
        eprintln!(
            "  frames: offer/answer {} bytes, candidate {} bytes",
            f.offer_len(),
            f.ice_len()
        );
    }
    let run = run_schedule(servers, calls, rate, opts.secs, !opts.no_ack).await;
    report_relay(&servers.label(), n_calls, rate, &run);
    if callsignal {
        let drained = servers.drained(Duration::from_secs(60)).await;
        println!(
            "  {}: events written {} (call events and signaling rows), signaling rows skipped {} (metrics); backlog drained: {drained}; RSS {:.1} MiB",
            servers.label(),
            servers
                .metric("callsignal_events_written_total")
                .await
                .unwrap_or(0.0),
            servers
                .metric("callsignal_signal_rows_skipped_total")
                .await
                .unwrap_or(0.0),
            servers.rss() as f64 / 1048576.0
        );
    }
    run
}

fn report_relay(label: &str, n_calls: usize, rate: f64, run: &RelayRun) {
    let mut lat = run.received.latencies.clone();
    lat.sort_unstable();
    let mut lag = run.send_lag.clone();
    lag.sort_unstable();
    let r = &run.received;
    let aux = if run.used.aux.is_zero() {
        String::new()
    } else {
        format!(
            "; NATS CPU {:.2}s = {:.1} % of a core, {:.0} msg per CPU-s of servers and NATS",
            run.used.aux.as_secs_f64(),
            run.used.aux_percent(),
            run.used.per_total_cpu_sec(r.got)
        )
    };
    println!(
        "relay {n_calls} calls {rate:.0} msg/s [{label}]: {}/{} delivered ({} sent) in {:.2}s; latency from intended send p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms; server CPU {:.2}s = {:.1} % of a core, {:.0} msg per CPU-s{aux}; loadgen send lag p99 {:.2} max {:.2} ms; violations {}",
        r.got,
        r.expected,
        run.sent,
        run.used.wall.as_secs_f64(),
        ms(&lat, 0.5),
        ms(&lat, 0.9),
        ms(&lat, 0.99),
        ms(&lat, 0.999),
        ms(&lat, 1.0),
        run.used.cpu.as_secs_f64(),
        run.used.percent(),
        run.used.per_cpu_sec(r.got),
        ms(&lag, 0.99),
        ms(&lag, 1.0),
        r.violations.len()
    );
    println!("  {}", tail_timeline(&r.latencies, &r.intended));
    for v in r.violations.iter().take(10) {
        println!("  violation: {v}");
    }
}

/// Where the tail lies in time: the messages over 1 ms and the 10 ms windows (by intended send
/// time) they fall in, and when the windows with a message over 3 ms began. Clustered windows
/// mean stalls (the server or the machine stopped for a while); spread ones mean per-message
/// cost. Latencies and intended times are microseconds, index for index.
pub(crate) fn tail_timeline(latencies: &[u32], intended: &[u32]) -> String {
    const WINDOW_US: u32 = 10_000;
    let mut windows: std::collections::BTreeMap<u32, (u32, usize)> = Default::default();
    let mut over_1ms = 0;
    for (&lat, &at) in latencies.iter().zip(intended) {
        if lat > 1000 {
            over_1ms += 1;
            let w = windows.entry(at / WINDOW_US).or_default();
            w.0 = w.0.max(lat);
            w.1 += 1;
        }
    }
    let over_3ms: Vec<_> = windows.iter().filter(|(_, (max, _))| *max > 3000).collect();
    let starts: Vec<String> = over_3ms
        .iter()
        .take(40)
        .map(|(w, (max, n))| {
            format!(
                "{:.2}s({:.1}ms,{n})",
                f64::from(**w * WINDOW_US) / 1e6,
                f64::from(*max) / 1000.0
            )
        })
        .collect();
    format!(
        "tail: {over_1ms} of {} messages over 1 ms, in {} 10-ms windows; {} windows with one over 3 ms, at (max, count over 1 ms): {}",
        latencies.len(),
        windows.len(),
        over_3ms.len(),
        starts.join(" ")
    )
}

/// `flood CALLS MSGS`: messages per server CPU-second on each target.
pub(crate) async fn flood(opts: &Opts, n_calls: usize, msgs: u64) -> Stats {
    let mut stats = Stats::default();
    let mut per_cpu = vec![];
    for &kind in &opts.targets {
        let target = Target::start(kind, opts, NO_RATE_LIMITS);
        let calls = calls(&target, n_calls, "f").await;
        let (r, used) = run_flood(&target, calls, msgs, opts.window, !opts.no_ack).await;
        println!(
            "flood {n_calls} calls x {msgs} msgs, window {} [{}]: {}/{} delivered in {:.2}s = {:.0} msg/s; server CPU {:.2}s = {:.0} % of a core; {:.0} msg per server CPU-s; violations {}",
            opts.window,
            kind.name(),
            r.got,
            r.expected,
            used.wall.as_secs_f64(),
            r.got as f64 / used.wall.as_secs_f64(),
            used.cpu.as_secs_f64(),
            used.percent(),
            used.per_cpu_sec(r.got),
            r.violations.len()
        );
        for v in r.violations.iter().take(10) {
            println!("  violation: {v}");
        }
        if kind == Kind::Callsignal {
            let drained = target.drained(Duration::from_secs(60)).await;
            println!(
                "  callsignal: events written {} (call events and signaling rows), signaling rows skipped {} (metrics); backlog drained: {drained}",
                target
                    .metric("callsignal_events_written_total")
                    .await
                    .unwrap_or(0.0),
                target
                    .metric("callsignal_signal_rows_skipped_total")
                    .await
                    .unwrap_or(0.0),
            );
        }
        stats.violations += r.violations.len();
        per_cpu.push((kind, used.per_cpu_sec(r.got)));
    }
    if let Some((_, bare)) = per_cpu.iter().find(|(k, _)| *k == Kind::Bare) {
        for (kind, x) in per_cpu.iter().filter(|(k, _)| *k != Kind::Bare) {
            println!(
                "flood, {} vs bare relay: {x:.0} vs {bare:.0} msg per server CPU-s ({:.2}x of bare)",
                kind.name(),
                x / bare.max(1e-9)
            );
        }
    }
    stats
}
