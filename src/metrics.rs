//! Process-wide counters and gauges, rendered in the Prometheus text format at `/metrics`.
//! Plain atomics: they are written from many tasks and actors and read rarely.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};

/// A monotonically increasing counter or an up/down gauge.
#[derive(Debug, Default)]
pub struct Metric(AtomicI64);

impl Metric {
    /// +1.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// -1 (gauges only).
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Every metric the server exports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// HTTP requests served.
    pub http_requests: Metric,
    /// Failed logins.
    pub login_failures: Metric,
    /// argon2id verifications computed (one per login attempt, known user or not).
    pub password_verifications: Metric,
    /// Logins answered 429.
    pub login_throttled: Metric,
    /// Open signaling connections (gauge).
    pub ws_connections: Metric,
    /// Calls not yet ended (gauge).
    pub calls_live: Metric,
    /// Calls created.
    pub calls_created: Metric,
    /// `sdp`/`ice` messages relayed.
    pub signals_relayed: Metric,
    /// Sockets closed because the client did not read.
    pub slow_consumers: Metric,
    /// Messages refused by the rate limit.
    pub rate_limited: Metric,
    /// Resumes that could not replay everything the client missed (`resume_gap`).
    pub resume_gaps: Metric,
    /// Connections resumed (by token) or taken over (same session, reloaded page).
    pub resumes: Metric,
    /// Call events committed to the database.
    pub events_written: Metric,
    /// Signaling metadata rows skipped because the buffer was full during an outage.
    pub signal_rows_skipped: Metric,
    /// Actor failures seen by supervisors.
    pub actor_failures: Metric,
    /// TCP connections closed at once because their address held its share of the slots.
    pub connections_refused: Metric,
}

impl Metrics {
    /// Prometheus text exposition.
    pub fn render(&self, backlog: usize) -> String {
        let mut out = String::new();
        let rows: [(&str, &str, &str, i64); 17] = [
            (
                "callsignal_http_requests_total",
                "counter",
                "HTTP requests served",
                self.http_requests.get(),
            ),
            (
                "callsignal_login_failures_total",
                "counter",
                "Failed logins",
                self.login_failures.get(),
            ),
            (
                "callsignal_password_verifications_total",
                "counter",
                "argon2id verifications computed",
                self.password_verifications.get(),
            ),
            (
                "callsignal_login_throttled_total",
                "counter",
                "Logins answered 429",
                self.login_throttled.get(),
            ),
            (
                "callsignal_ws_connections",
                "gauge",
                "Open signaling connections",
                self.ws_connections.get(),
            ),
            (
                "callsignal_calls_live",
                "gauge",
                "Calls not yet ended",
                self.calls_live.get(),
            ),
            (
                "callsignal_calls_created_total",
                "counter",
                "Calls created",
                self.calls_created.get(),
            ),
            (
                "callsignal_signals_relayed_total",
                "counter",
                "sdp/ice messages relayed",
                self.signals_relayed.get(),
            ),
            (
                "callsignal_slow_consumers_total",
                "counter",
                "Sockets closed for not reading",
                self.slow_consumers.get(),
            ),
            (
                "callsignal_resume_gaps_total",
                "counter",
                "Resumes that could not replay every missed message",
                self.resume_gaps.get(),
            ),
            (
                "callsignal_resumes_total",
                "counter",
                "Connections resumed or taken over by a new socket",
                self.resumes.get(),
            ),
            (
                "callsignal_rate_limited_total",
                "counter",
                "Messages refused by the rate limit",
                self.rate_limited.get(),
            ),
            (
                "callsignal_events_written_total",
                "counter",
                "Call events committed",
                self.events_written.get(),
            ),
            (
                "callsignal_signal_rows_skipped_total",
                "counter",
                "Signaling metadata rows skipped during an outage",
                self.signal_rows_skipped.get(),
            ),
            (
                "callsignal_actor_failures_total",
                "counter",
                "Actor failures",
                self.actor_failures.get(),
            ),
            (
                "callsignal_connections_refused_total",
                "counter",
                "TCP connections refused by the per-address cap",
                self.connections_refused.get(),
            ),
            (
                "callsignal_persistence_backlog",
                "gauge",
                "Call events not yet committed",
                backlog as i64,
            ),
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let heap = crate::heap::live_bytes();
        if heap > 0 {
            let name = "callsignal_heap_live_bytes";
            let _ = writeln!(
                out,
                "# HELP {name} Live heap bytes (heap-stats builds)\n# TYPE {name} gauge\n{name} {heap}"
            );
        }
        out
    }
}
