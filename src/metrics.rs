//! Process-wide metrics in the Prometheus/OpenMetrics exposition format at `/metrics`, through
//! the `prometheus-client` crate (the Prometheus project's official Rust client).
//!
//! Counters and histograms are plain atomics updated on the hot path; gauges that describe
//! state (open connections, live calls, the persistence backlog) are read at scrape time, and
//! process metrics (`process_*`, as the Prometheus client guidelines name them) come from
//! `/proc/self` on Linux.

use std::sync::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// `{route, status}` of an HTTP request; `route` is a template of the routing table
/// (`/api/calls/{id}`), `static` for the browser client's files or `unmatched`: a bounded set.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// Route template.
    pub route: &'static str,
    /// Status code.
    pub status: u16,
}

/// `{route}` of an HTTP request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// Route template.
    pub route: &'static str,
}

/// `{reason}`: a `call.ended` reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The wire string of the reason.
    pub reason: &'static str,
}

/// `{type}`: `sdp` or `ice`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// Message type.
    pub r#type: &'static str,
}

/// `{actor}`: the kind of a supervised actor (`connection`, `call`, `registry`, `persistence`…).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActorLabel {
    /// Actor kind.
    pub actor: &'static str,
}

/// `{outcome}` of a login: `success`, `failure` or `throttled`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// Outcome.
    pub outcome: &'static str,
}

/// Values read at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    /// Call events waiting to be committed.
    pub persistence_backlog: usize,
    /// In cluster mode (`cluster.nats_url`): whether NATS is connected, and how many other
    /// nodes this node heard within the node timeout. `None` on a single node.
    pub cluster: Option<(bool, usize)>,
}

/// Every metric the server exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    snapshot: std::sync::Arc<Mutex<Snapshot>>,
    /// Live connection actors (attached or in their resume grace).
    pub ws_connections: Gauge,
    /// Live call actors.
    pub calls_live: Gauge,
    /// HTTP requests by route and status.
    pub http_requests: Family<HttpLabels, Counter>,
    /// HTTP request duration in seconds, by route.
    pub http_duration: Family<RouteLabel, Histogram>,
    /// Logins by outcome.
    pub logins: Family<OutcomeLabel, Counter>,
    /// Failed logins.
    pub login_failures: Counter,
    /// argon2id verifications computed (one per login attempt, known user or not).
    pub password_verifications: Counter,
    /// Logins answered 429.
    pub login_throttled: Counter,
    /// Calls created.
    pub calls_created: Counter,
    /// Calls ended, by `call.ended` reason.
    pub calls_ended: Family<ReasonLabel, Counter>,
    /// `sdp`/`ice` messages relayed, by type.
    pub signals_relayed: Family<KindLabel, Counter>,
    relayed_sdp: std::sync::OnceLock<Counter>,
    relayed_ice: std::sync::OnceLock<Counter>,
    /// Sockets closed because the client did not read.
    pub slow_consumers: Counter,
    /// Messages refused by the rate limit.
    pub rate_limited: Counter,
    /// WebSocket upgrades refused for their `Origin`.
    pub origin_refused: Counter,
    /// Resumes that could not replay everything the client missed (`resume_gap`).
    pub resume_gaps: Counter,
    /// Connections resumed (by token) or taken over (same session, reloaded page).
    pub resumes: Counter,
    /// Call events committed to the database.
    pub events_written: Counter,
    /// Persistence batches that failed (and are retried).
    pub persistence_failures: Counter,
    /// Relay latency of `sdp`/`ice` on the direct path, in seconds: from the sender's frame being
    /// parsed to the peer's frame being written to its socket.
    pub relay_seconds: Histogram,
    /// Time to commit one persistence batch, in seconds.
    pub persistence_write_seconds: Histogram,
    /// Signaling metadata rows skipped because their buffer share was full.
    pub signal_rows_skipped: Counter,
    /// Actor failures seen by supervisors, by actor kind (each is followed by the supervisor's
    /// restart or clean-up, logged as a `supervision` event).
    pub actor_failures: Family<ActorLabel, Counter>,
    /// TCP connections closed at once because their address held its share of the slots.
    pub connections_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// State gauges and process metrics, produced at each scrape.
#[derive(Debug)]
struct ScrapeCollector(std::sync::Arc<Mutex<Snapshot>>);

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for ScrapeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = *self.0.lock().unwrap_or_else(|p| p.into_inner());
        gauge(
            &mut e,
            "callsignal_persistence_backlog",
            "Call events waiting to be committed",
            s.persistence_backlog as i64,
        )?;
        if cfg!(feature = "heap-stats") {
            // Only a build with the counting allocator (`--features heap-stats`) knows it.
            gauge(
                &mut e,
                "callsignal_heap_live_bytes",
                "Bytes currently allocated on the heap (builds with the heap-stats feature only)",
                i64::try_from(crate::heap::live_bytes()).unwrap_or(i64::MAX),
            )?;
        }
        if let Some((connected, nodes)) = s.cluster {
            gauge(
                &mut e,
                "callsignal_cluster_nats_connected",
                "1 while this node's NATS connection is up (cluster mode only)",
                i64::from(connected),
            )?;
            gauge(
                &mut e,
                "callsignal_cluster_nodes_seen",
                "Other cluster nodes heard within the node timeout (cluster mode only)",
                nodes as i64,
            )?;
        }
        if let Some(p) = process() {
            counter(
                &mut e,
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                p.cpu_seconds,
            )?;
            gauge(
                &mut e,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                p.resident_bytes,
            )?;
            gauge(
                &mut e,
                "process_open_fds",
                "Number of open file descriptors",
                p.open_fds,
            )?;
            gauge(
                &mut e,
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                p.start_time,
            )?;
        }
        Ok(())
    }
}

struct Process {
    cpu_seconds: f64,
    resident_bytes: i64,
    open_fds: i64,
    start_time: i64,
}

/// Process figures from `/proc/self` (Linux); `None` elsewhere.
fn process() -> Option<Process> {
    // Clock ticks per second and page size: 100 and 4096 on every Linux this targets
    // (x86_64, aarch64); reading them would need libc.
    const TICKS: f64 = 100.0;
    const PAGE: i64 = 4096;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let started_ticks: f64 = f.get(19)?.parse().ok()?;
    let rss_pages: i64 = f.get(21)?.parse().ok()?;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<i64>().ok())?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as i64;
    Some(Process {
        cpu_seconds: (utime + stime) / TICKS,
        resident_bytes: rss_pages * PAGE,
        open_fds,
        start_time: boot + (started_ticks / TICKS) as i64,
    })
}

impl Metrics {
    /// Every metric, registered.
    pub fn new() -> Self {
        let m = Self {
            registry: Registry::default(),
            snapshot: Default::default(),
            ws_connections: Gauge::default(),
            calls_live: Gauge::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 14))
            }),
            logins: Family::default(),
            login_failures: Counter::default(),
            password_verifications: Counter::default(),
            login_throttled: Counter::default(),
            calls_created: Counter::default(),
            calls_ended: Family::default(),
            signals_relayed: Family::default(),
            relayed_sdp: Default::default(),
            relayed_ice: Default::default(),
            slow_consumers: Counter::default(),
            rate_limited: Counter::default(),
            origin_refused: Counter::default(),
            resume_gaps: Counter::default(),
            resumes: Counter::default(),
            events_written: Counter::default(),
            persistence_failures: Counter::default(),
            persistence_write_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            relay_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            signal_rows_skipped: Counter::default(),
            actor_failures: Family::default(),
            connections_refused: Counter::default(),
        };
        m.register()
    }

    fn register(mut self) -> Self {
        let r = &mut self.registry;
        let version = Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]);
        r.register("callsignal_build", "Build information", version);
        r.register(
            "callsignal_ws_connections",
            "Signaling connections (attached or in their resume grace)",
            self.ws_connections.clone(),
        );
        r.register(
            "callsignal_calls_live",
            "Calls not yet ended (with an actor)",
            self.calls_live.clone(),
        );
        r.register(
            "callsignal_http_requests",
            "HTTP requests by route and status",
            self.http_requests.clone(),
        );
        r.register(
            "callsignal_http_request_duration_seconds",
            "HTTP request duration by route",
            self.http_duration.clone(),
        );
        r.register(
            "callsignal_logins",
            "Logins by outcome",
            self.logins.clone(),
        );
        r.register(
            "callsignal_login_failures",
            "Failed logins",
            self.login_failures.clone(),
        );
        r.register(
            "callsignal_password_verifications",
            "argon2id verifications computed",
            self.password_verifications.clone(),
        );
        r.register(
            "callsignal_login_throttled",
            "Logins answered 429",
            self.login_throttled.clone(),
        );
        r.register(
            "callsignal_calls_created",
            "Calls created",
            self.calls_created.clone(),
        );
        r.register(
            "callsignal_calls_ended",
            "Calls ended, by reason",
            self.calls_ended.clone(),
        );
        r.register(
            "callsignal_signals_relayed",
            "sdp/ice messages relayed, by type",
            self.signals_relayed.clone(),
        );
        r.register(
            "callsignal_slow_consumers",
            "Sockets closed for not reading",
            self.slow_consumers.clone(),
        );
        r.register(
            "callsignal_rate_limited",
            "Messages refused by the rate limit",
            self.rate_limited.clone(),
        );
        r.register(
            "callsignal_origin_refused",
            "WebSocket upgrades refused for their Origin (cross-site or misconfigured)",
            self.origin_refused.clone(),
        );
        r.register(
            "callsignal_resume_gaps",
            "Resumes that could not replay every missed message",
            self.resume_gaps.clone(),
        );
        r.register(
            "callsignal_resumes",
            "Connections resumed or taken over by a new socket",
            self.resumes.clone(),
        );
        r.register(
            "callsignal_events_written",
            "Call events committed",
            self.events_written.clone(),
        );
        r.register(
            "callsignal_relay_latency_seconds",
            "sdp/ice relay latency inside the server (sender frame parsed to peer frame written)",
            self.relay_seconds.clone(),
        );
        r.register(
            "callsignal_persistence_failures",
            "Persistence batches that failed (retried)",
            self.persistence_failures.clone(),
        );
        r.register(
            "callsignal_persistence_write_seconds",
            "Time to commit one batch of call events",
            self.persistence_write_seconds.clone(),
        );
        r.register(
            "callsignal_signal_rows_skipped",
            "Signaling metadata rows skipped (buffer share full)",
            self.signal_rows_skipped.clone(),
        );
        r.register(
            "callsignal_actor_failures",
            "Actor failures seen by supervisors, by actor kind",
            self.actor_failures.clone(),
        );
        r.register(
            "callsignal_connections_refused",
            "TCP connections refused by the per-address cap",
            self.connections_refused.clone(),
        );
        r.register_collector(Box::new(ScrapeCollector(self.snapshot.clone())));
        self
    }

    /// Counts a `call.ended` with `reason` (its wire string).
    pub fn call_ended(&self, reason: &'static str) {
        self.calls_ended
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts a failure of an actor of kind `actor`.
    pub fn actor_failed(&self, actor: &'static str) {
        self.actor_failures
            .get_or_create(&ActorLabel { actor })
            .inc();
    }

    /// Counts a relayed `sdp` or `ice`.
    pub fn relayed(&self, kind: &'static str) {
        let cached = match kind {
            "sdp" => &self.relayed_sdp,
            "ice" => &self.relayed_ice,
            _ => {
                self.signals_relayed
                    .get_or_create(&KindLabel { r#type: kind })
                    .inc();
                return;
            }
        };
        // The family's counters, fetched once: the relay path takes no lock for them.
        cached
            .get_or_init(|| {
                self.signals_relayed
                    .get_or_create(&KindLabel { r#type: kind })
                    .clone()
            })
            .inc();
    }

    /// The OpenMetrics text exposition, with the state gauges set from `snapshot`.
    pub fn render(&self, snapshot: Snapshot) -> String {
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = snapshot;
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `callsignal_heap_live_bytes` was documented (operations.md) but never exported.
    #[test]
    fn the_live_heap_gauge_comes_with_the_heap_stats_build_only() {
        let text = Metrics::new().render(Snapshot::default());
        assert_eq!(
            text.contains("callsignal_heap_live_bytes "),
            cfg!(feature = "heap-stats"),
            "{text}"
        );
    }

    #[test]
    fn exposition_has_labels_histograms_process_and_build_info() {
        let m = Metrics::new();
        m.call_ended("hangup");
        m.call_ended("hangup");
        m.relayed("ice");
        m.http_requests
            .get_or_create(&HttpLabels {
                route: "/healthz",
                status: 200,
            })
            .inc();
        m.http_duration
            .get_or_create(&RouteLabel { route: "/healthz" })
            .observe(0.001);
        m.ws_connections.set(3);
        let text = m.render(Snapshot::default());
        for want in [
            "callsignal_calls_ended_total{reason=\"hangup\"} 2",
            "callsignal_signals_relayed_total{type=\"ice\"} 1",
            "callsignal_http_requests_total{route=\"/healthz\",status=\"200\"} 1",
            "callsignal_http_request_duration_seconds_bucket{le=",
            "callsignal_build_info{version=",
            "callsignal_ws_connections 3",
            "process_resident_memory_bytes",
            "# EOF",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }
}
