//! `calls PAIRS ROUNDS`: full call setups on SQLite or PostgreSQL, then every row verified.
//!
//! A full call: invite → `call.created`/`call.incoming`/`call.ringing` → accept →
//! `call.accepted` (both) → the caller's ~3 KB offer and 2 candidates → the callee's answer and
//! 2 candidates → the caller hangs up → `call.ended hangup` (both). Each pair does `ROUNDS` calls
//! back to back (closed loop). The completion rate (calls ended per second, as the clients see
//! them) is compared with the commit rate (calls whose events are all on disk per second: until
//! `callsignal_persistence_backlog` at /metrics is back to 0); the backlog is sampled every
//! 100 ms meanwhile.
//!
//! Verification reads the database afterwards: one `calls` row per call made and no other, each
//! `ended` with reason `hangup`, answered and ended times set; the per-call signaling counters
//! when the schema has them; and `signaling_messages` rows per call only when the run set
//! `CALLSIGNAL_PERSISTENCE__LOG_SIGNALING=true` (`--log-signaling`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Conn, Frames};
use crate::target::{NO_RATE_LIMITS, Target};
use crate::{Db, Opts, Stats};

/// A database for one run: SQLite in the server's temp directory, or a fresh PostgreSQL
/// database (created here, dropped on drop).
pub(crate) struct RunDb {
    /// Passed to the server (`None`: its default SQLite file).
    pub(crate) server_url: Option<String>,
    pg: Option<(String, String)>,
}

/// The PostgreSQL server to create databases on.
fn pg_admin() -> String {
    std::env::var("CALLSIGNAL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

impl RunDb {
    pub(crate) async fn new(db: Db) -> RunDb {
        match db {
            Db::Sqlite => RunDb {
                server_url: None,
                pg: None,
            },
            Db::Postgres => {
                let admin = pg_admin();
                let name = format!("loadgen_{}", uuid::Uuid::new_v4().simple());
                let conn = Database::connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("connect to PostgreSQL at {admin}: {e}"));
                conn.execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create database");
                conn.close().await.ok();
                let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
                RunDb {
                    server_url: Some(format!("{base}/{name}")),
                    pg: Some((admin.clone(), name)),
                }
            }
        }
    }

    /// Where the load generator reads the rows.
    pub(crate) fn verify_url(&self, target: &Target) -> String {
        self.server_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rw",
                target.dir().join("data/callsignal.db").display()
            )
        })
    }

    pub(crate) fn label(&self) -> &'static str {
        if self.pg.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    }
}

impl Drop for RunDb {
    fn drop(&mut self) {
        let Some((admin, name)) = self.pg.take() else {
            return;
        };
        // Drop cannot await: a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let db = Database::connect(&admin).await.ok()?;
                db.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .ok()?;
                db.close().await.ok()
            })
        })
        .join();
    }
}

/// What the database must hold for one call.
#[derive(Clone, Debug)]
pub(crate) struct Expected {
    pub(crate) call_id: String,
    pub(crate) reason: &'static str,
    /// Whether the call was answered.
    pub(crate) answered: bool,
    /// sdp and ice messages sent by the caller, then by the callee.
    pub(crate) signals: [i64; 4],
}

async fn rows(db: &DatabaseConnection, sql: &str) -> Result<Vec<sea_orm::QueryResult>, String> {
    db.query_all_raw(Statement::from_string(
        db.get_database_backend(),
        sql.to_owned(),
    ))
    .await
    .map_err(|e| e.to_string())
}

/// A call id column as text, whichever way the backend stores UUIDs.
fn id_of(row: &sea_orm::QueryResult) -> String {
    row.try_get_by_index::<uuid::Uuid>(0)
        .map(|u| u.to_string())
        .or_else(|_| row.try_get_by_index::<String>(0))
        .unwrap_or_default()
}

fn int(row: &sea_orm::QueryResult, i: usize) -> i64 {
    row.try_get_by_index::<i64>(i)
        .or_else(|_| row.try_get_by_index::<i32>(i).map(i64::from))
        .unwrap_or(-1)
}

/// Checks the rows of `expected` calls (and that there are no others); returns what is wrong.
pub(crate) async fn verify(url: &str, expected: &[Expected], log_signaling: bool) -> Vec<String> {
    let db = match Database::connect(url).await {
        Ok(db) => db,
        Err(e) => return vec![format!("cannot open {url}: {e}")],
    };
    let mut bad = vec![];
    let want: HashMap<&str, &Expected> = expected.iter().map(|e| (e.call_id.as_str(), e)).collect();
    match rows(
        &db,
        "SELECT id, status, end_reason, CAST(CASE WHEN answered_at IS NULL THEN 0 ELSE 1 END AS BIGINT), \
         CAST(CASE WHEN ended_at IS NULL THEN 0 ELSE 1 END AS BIGINT) FROM calls",
    )
    .await
    {
        Err(e) => bad.push(format!("calls: {e}")),
        Ok(found) => {
            if found.len() != expected.len() {
                bad.push(format!(
                    "calls: {} rows, {} calls made",
                    found.len(),
                    expected.len()
                ));
            }
            let mut seen = 0;
            for row in &found {
                let id = id_of(row);
                let Some(e) = want.get(id.as_str()) else {
                    bad.push(format!("calls: row {id} is no call the load generator made"));
                    continue;
                };
                seen += 1;
                let status: String = row.try_get_by_index(1).unwrap_or_default();
                let reason: Option<String> = row.try_get_by_index(2).unwrap_or_default();
                if status != "ended"
                    || reason.as_deref() != Some(e.reason)
                    || int(row, 3) != i64::from(e.answered)
                    || int(row, 4) != 1
                {
                    bad.push(format!(
                        "calls: {id} is {status}/{reason:?} (answered {}, ended {}), expected ended/{} (answered {})",
                        int(row, 3),
                        int(row, 4),
                        e.reason,
                        i64::from(e.answered)
                    ));
                }
            }
            if seen != expected.len() {
                bad.push(format!(
                    "calls: {} of {} calls have a row",
                    seen,
                    expected.len()
                ));
            }
        }
    }
    // Per-call signaling counters: checked when the schema has them.
    match rows(
        &db,
        "SELECT id, caller_sdp_messages, caller_ice_messages, callee_sdp_messages, callee_ice_messages FROM calls",
    )
    .await
    {
        Err(_) => eprintln!("  (calls has no per-call signaling counters: not checked)"),
        Ok(found) => {
            for row in &found {
                let id = id_of(row);
                if let Some(e) = want.get(id.as_str()) {
                    let got = [int(row, 1), int(row, 2), int(row, 3), int(row, 4)];
                    if got != e.signals {
                        bad.push(format!(
                            "calls: {id} counts sdp/ice caller, callee {got:?}, sent {:?}",
                            e.signals
                        ));
                    }
                }
            }
        }
    }
    if log_signaling {
        match rows(
            &db,
            "SELECT call_id, CAST(COUNT(*) AS BIGINT) FROM signaling_messages GROUP BY call_id",
        )
        .await
        {
            Err(e) => bad.push(format!("signaling_messages: {e}")),
            Ok(found) => {
                let counts: HashMap<String, i64> =
                    found.iter().map(|r| (id_of(r), int(r, 1))).collect();
                for e in expected {
                    let sent: i64 = e.signals.iter().sum();
                    let got = counts.get(&e.call_id).copied().unwrap_or(0);
                    if got != sent {
                        bad.push(format!(
                            "signaling_messages: {} has {got} rows, {sent} messages relayed",
                            e.call_id
                        ));
                    }
                }
            }
        }
    }
    db.close().await.ok();
    bad
}

/// Verifies until the rows are right or `limit` passes (events are written asynchronously;
/// this bounds a wait, it asserts no time).
pub(crate) async fn verify_eventually(
    url: &str,
    expected: &[Expected],
    log_signaling: bool,
    limit: Duration,
) -> Vec<String> {
    let until = Instant::now() + limit;
    loop {
        let bad = verify(url, expected, log_signaling).await;
        if bad.is_empty() || Instant::now() > until {
            return bad;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One full call from `a` (caller) to `b_name` on `b`; returns the call id and how many
/// invites were refused with `persistence_unavailable` first (each retried after 20 ms).
async fn full_call(a: &mut Conn, b: &mut Conn, b_name: &str) -> (String, u64) {
    let mut refused = 0;
    let call_id = loop {
        match client::try_set_up_call(a, b, b_name).await {
            Ok(id) => break id,
            Err(why) => {
                assert_eq!(why, client::Refused::PersistenceUnavailable, "{b_name}");
                refused += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let f = Frames::new(&call_id);
    for k in [0, 2, 4] {
        a.ws.send(Message::text(f.scheduled(k)))
            .await
            .expect("send");
    }
    for k in [0, 2, 4] {
        let v = b.recv().await;
        let text = v.to_string();
        assert_eq!(client::frame_number(&text), Some(k), "callee got {text}");
    }
    for k in [1, 3, 5] {
        b.ws.send(Message::text(f.scheduled(k)))
            .await
            .expect("send");
    }
    for k in [1, 3, 5] {
        let v = a.recv().await;
        let text = v.to_string();
        assert_eq!(client::frame_number(&text), Some(k), "caller got {text}");
    }
    a.send(json!({"type": "call.hangup", "call_id": call_id}))
        .await;
    for c in [a, b] {
        let v = c.expect("call.ended").await;
        assert_eq!(v["reason"], "hangup", "{v}");
        assert_eq!(v["call_id"], call_id.as_str(), "{v}");
    }
    (call_id, refused)
}

/// The counters a [`full_call`] leaves: one sdp and two candidates each.
const FULL_CALL_SIGNALS: [i64; 4] = [1, 2, 1, 2];

/// Pairs of signaling connections (caller, callee, callee's name) for [`run`].
pub(crate) type Pairs = Vec<(Conn, Conn, String)>;

/// Registers `2 × pairs` users and connects each once.
pub(crate) async fn prepare(target: &Target, pairs: usize, tag: &str) -> Pairs {
    let names: Vec<String> = (0..pairs)
        .flat_map(|i| [format!("{tag}{i}a"), format!("{tag}{i}b")])
        .collect();
    let tokens = client::users(&target.addr, names.clone(), 16).await;
    let mut conns = vec![];
    for i in 0..pairs {
        let a = Conn::hello(&target.addr, &tokens[2 * i]).await;
        let b = Conn::hello(&target.addr, &tokens[2 * i + 1]).await;
        conns.push((a, b, names[2 * i + 1].clone()));
    }
    conns
}

/// What [`run`] did.
pub(crate) struct Made {
    pub(crate) calls: Vec<Expected>,
    pub(crate) took: Duration,
    /// Invites refused with `persistence_unavailable` (and retried).
    pub(crate) refused: u64,
}

/// Every pair makes `rounds` full calls, back to back.
pub(crate) async fn run(conns: Pairs, rounds: usize) -> Made {
    let began = Instant::now();
    let mut tasks = vec![];
    for (mut a, mut b, b_name) in conns {
        tasks.push(tokio::spawn(async move {
            let (mut ids, mut refused) = (vec![], 0);
            for _ in 0..rounds {
                let (id, r) = full_call(&mut a, &mut b, &b_name).await;
                ids.push(id);
                refused += r;
            }
            (ids, refused)
        }));
    }
    let mut made = Made {
        calls: vec![],
        took: Duration::ZERO,
        refused: 0,
    };
    for t in tasks {
        let (ids, refused) = t.await.expect("calls task");
        made.calls.extend(ids.into_iter().map(|call_id| Expected {
            call_id,
            reason: "hangup",
            answered: true,
            signals: FULL_CALL_SIGNALS,
        }));
        made.refused += refused;
    }
    made.took = began.elapsed();
    made
}

/// `calls PAIRS ROUNDS`: completion vs commit rate, then every row verified.
pub(crate) async fn calls(opts: &Opts, pairs: usize, rounds: usize) -> Stats {
    let db = RunDb::new(opts.db).await;
    // Lifted per-connection rate limits: each pair makes its calls back to back.
    let target = Target::callsignal(opts, NO_RATE_LIMITS, db.server_url.as_deref());
    let target = Arc::new(target);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (target, stop) = (target.clone(), stop.clone());
        tokio::spawn(async move {
            let mut max = 0.0f64;
            while !stop.load(Ordering::Relaxed) {
                let b = target
                    .metric("callsignal_persistence_backlog")
                    .await
                    .unwrap_or(0.0);
                max = max.max(b);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            max
        })
    };
    let conns = prepare(&target, pairs, "c").await;
    let meter = crate::target::Meter::start(target.as_ref());
    let began = Instant::now();
    let Made {
        calls: made,
        took,
        refused,
    } = run(conns, rounds).await;
    let at_completion = target
        .metric("callsignal_persistence_backlog")
        .await
        .unwrap_or(0.0);
    let drained = target.drained(Duration::from_secs(600)).await;
    let to_commit = began.elapsed();
    let used = meter.stop(target.as_ref());
    stop.store(true, Ordering::Relaxed);
    let max_backlog = sampler.await.unwrap_or(0.0).max(at_completion);
    let n = made.len() as f64;
    println!(
        "calls {pairs} pairs x {rounds} rounds on {}: {} full calls completed in {:.2}s = {:.0} calls/s; all events committed {:.2}s after the first invite = {:.0} calls/s committed{}; backlog max {max_backlog:.0}, {at_completion:.0} when the last call ended; {refused} invites refused (persistence_unavailable) and retried; server CPU {:.0} % of a core",
        db.label(),
        made.len(),
        took.as_secs_f64(),
        n / took.as_secs_f64(),
        to_commit.as_secs_f64(),
        n / to_commit.as_secs_f64(),
        if drained {
            ""
        } else {
            " (NOT drained after 600 s)"
        },
        used.percent(),
    );
    let bad = verify_eventually(
        &db.verify_url(&target),
        &made,
        opts.log_signaling(),
        Duration::from_secs(30),
    )
    .await;
    println!(
        "calls: rows verified: {} calls, {} problems{}",
        made.len(),
        bad.len(),
        if opts.log_signaling() {
            " (signaling_messages rows checked too)"
        } else {
            ""
        }
    );
    for b in bad.iter().take(10) {
        println!("  violation: {b}");
    }
    Stats {
        violations: bad.len(),
    }
}
