//! Typed settings, layered as the operator contract says: `config/default.toml` (compiled in) →
//! the file named by `--config`/`CALLSIGNAL_CONFIG` → `CALLSIGNAL_<SECTION>__<KEY>` variables.
//! Secrets are wrapped in [`Secret`] so that no `Debug` or log line can print them.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::{Figment, Provider};
use serde::{Deserialize, Deserializer, Serialize};

/// The base layer, compiled into the binary so it runs from any working directory.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// A value that must never be printed (keys, secrets). `Debug` shows `[redacted]`.
/// Read from a string, or from a whole number or boolean as written (an environment variable's
/// value is typed: `CALLSIGNAL_ICE__TURN_SECRET=918273645546372819` arrives as a number, and
/// serde's error for it printed the secret). A value read as a fractional number is refused
/// without showing it (its digits may already be rounded): quote it (`"3.14…"`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string (a secret; its value is not shown)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Secret::checked(v.to_owned())
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
                Secret::checked(v)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom(
                    "a secret read as a fractional number (its value is not shown); quote it",
                ))
            }
            fn visit_char<E: serde::de::Error>(self, v: char) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// What `config check` writes in place of a secret ([`Serialize`] below).
pub const REDACTED: &str = "[redacted]";

impl Secret {
    /// A secret as read from the configuration: never the placeholder `config check` prints
    /// for one (a file made from its output, read back without the secret given again, would
    /// otherwise run with "[redacted]" as its key, password or TURN credential).
    fn checked<E: serde::de::Error>(value: String) -> Result<Secret, E> {
        if value == REDACTED {
            return Err(E::custom(
                "\"[redacted]\" is what `config check` prints in place of a secret; give the \
                 secret itself (in the file, or by its environment variable)",
            ));
        }
        Ok(Secret(value))
    }

    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call sites are easy to audit by this name.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Written as `[redacted]` (`config check` prints the settings; no secret is ever written).
impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// All settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Settings {
    /// `[server]`
    pub server: ServerSettings,
    /// `[database]`
    pub database: DatabaseSettings,
    /// `[auth]`
    pub auth: AuthSettings,
    /// `[calls]`
    pub calls: CallSettings,
    /// `[ws]`
    pub ws: WsSettings,
    /// `[ice]`
    pub ice: IceSettings,
    /// `[persistence]`
    pub persistence: PersistenceSettings,
    /// `[metrics]`
    pub metrics: MetricsSettings,
    /// `[log]`
    pub log: LogSettings,
    /// `[cluster]`
    pub cluster: ClusterSettings,
    /// `[test_hooks]`: fault injection for tests; exists only in `test-hooks` builds.
    #[cfg(feature = "test-hooks")]
    #[serde(default)]
    pub test_hooks: TestHooks,
}

/// Fault injection for tests (feature `test-hooks`, never in release builds).
#[cfg(feature = "test-hooks")]
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct TestHooks {
    /// Alter the DTLS fingerprint of every SDP relayed to this username, as a tampering
    /// signaling server would (the browser test proves the verification codes then differ).
    pub tamper_fingerprint_to: Option<String>,
}

/// `[server]`: listening and process behaviour.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ServerSettings {
    /// Listen address.
    pub bind: SocketAddr,
    /// Extra origins allowed for WebSocket upgrades (empty = same origin only).
    #[serde(deserialize_with = "list_or_csv")]
    pub allowed_origins: Vec<String>,
    /// Directory for generated state (JWT secret).
    pub data_dir: PathBuf,
    /// This instance's stable name (crash recovery scope).
    pub instance_id: String,
    /// Seconds from accept to a complete first request head (any protocol), and for every
    /// HTTP/1 request head.
    pub header_read_timeout_secs: u64,
    /// Seconds a connection may stay open with no request in progress (keep-alive idle).
    pub idle_timeout_secs: u64,
    /// Seconds a request body may take to arrive in full.
    pub body_read_timeout_secs: u64,
    /// Concurrent TCP connections accepted.
    pub max_tcp_connections: usize,
    /// Concurrent TCP connections from one address (IPv4, or IPv6 /64); 0 = no cap.
    pub max_connections_per_address: usize,
    /// Reverse proxies whose `X-Forwarded-For`/`X-Forwarded-Proto` are believed.
    #[serde(deserialize_with = "nets")]
    pub trusted_proxies: Vec<IpNet>,
    /// `[server.tls]`: built-in TLS.
    pub tls: TlsSettings,
    /// Drain deadline at shutdown, in seconds.
    pub shutdown_drain_secs: u64,
}

/// `[server.tls]`: built-in TLS (rustls). Both paths set = HTTPS/WSS.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert_path: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: Option<PathBuf>,
    /// How often the files are checked for a change, in seconds.
    pub reload_check_secs: u64,
}

impl TlsSettings {
    /// The certificate and key paths, when TLS is on.
    pub fn paths(&self) -> Option<(&Path, &Path)> {
        Some((self.cert_path.as_deref()?, self.key_path.as_deref()?))
    }
}

/// `[database]`
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct DatabaseSettings {
    /// Connection URL; may hold a password, hence secret.
    pub url: Secret,
    /// Pool size.
    pub max_connections: u32,
    /// Connection acquire timeout in seconds.
    pub connect_timeout_secs: u64,
    /// Apply pending migrations on `serve`.
    pub migrate_on_start: bool,
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AuthSettings {
    /// HMAC key; `None` = generated and kept in the data directory.
    pub jwt_secret: Option<Secret>,
    /// Access-token lifetime in seconds.
    pub access_token_ttl_secs: u64,
    /// Absolute session lifetime in seconds.
    pub session_ttl_secs: u64,
    /// `iss` claim.
    pub issuer: String,
    /// `aud` claim.
    pub audience: String,
    /// Concurrent argon2 login verifications (0 = CPUs).
    pub max_concurrent_hashes: usize,
    /// Login verifications waiting for a slot before 503.
    pub max_queued_hashes: usize,
    /// Concurrent argon2 hashes for registrations, a lane of their own (0 = CPUs).
    pub max_concurrent_registration_hashes: usize,
    /// Registration hashes waiting for a slot before 503.
    pub max_queued_registration_hashes: usize,
    /// Registrations per client address (IPv4, or IPv6 /64) per hour; also the burst.
    pub register_per_address_per_hour: u32,
    /// Most addresses tracked by the registration limit (memory bound).
    pub register_max_tracked_addresses: usize,
    /// `[auth.throttle]`
    pub throttle: ThrottleSettings,
}

/// `[auth.throttle]`: login throttling (see [`crate::auth::throttle`] and `docs/security.md`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ThrottleSettings {
    /// Free failures for one account from one address.
    pub account_free_failures: u32,
    /// Free failures per client address (IPv4, or IPv6 /64), all accounts together.
    pub address_free_failures: u32,
    /// Free failures for one account from all addresses together, except addresses it logged
    /// in from before.
    pub account_global_free_failures: u32,
    /// First delay in seconds (doubles after).
    pub base_delay_secs: u64,
    /// Longest delay in seconds.
    pub max_delay_secs: u64,
    /// Failure memory in seconds.
    pub window_secs: u64,
    /// Seconds an address stays known for an account after a successful login.
    pub known_address_secs: u64,
    /// Most tracked keys.
    pub max_entries: usize,
}

/// `[calls]`
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct CallSettings {
    /// Ring time in seconds before `missed`.
    pub ring_timeout_secs: u64,
    /// Invites per user per minute.
    pub invites_per_minute: u32,
    /// Invites one user may receive per minute, from everyone together.
    pub invites_per_callee_per_minute: u32,
    /// Invites from one user to one other user per minute.
    pub invites_per_pair_per_minute: u32,
}

/// `[ws]`
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct WsSettings {
    /// `hello` deadline in seconds.
    pub hello_timeout_secs: u64,
    /// Resume grace in seconds after a network drop.
    pub resume_grace_secs: u64,
    /// Resume grace in seconds after the client closed with 1001 (reload, tab closed).
    pub going_away_grace_secs: u64,
    /// Ping interval in seconds.
    pub heartbeat_secs: u64,
    /// Largest frame/message in bytes.
    pub max_message_bytes: usize,
    /// Most messages held per connection: not yet written, or written but not yet known to be
    /// delivered (kept for a lossless resume).
    pub outbound_queue: usize,
    /// Most bytes held per connection, same meaning as `outbound_queue`.
    pub outbound_queue_bytes: usize,
    /// Sustained messages per second per connection.
    pub rate_limit_per_sec: u32,
    /// Token-bucket burst.
    pub rate_limit_burst: u32,
    /// Inbound bytes per second per user, sustained.
    pub rate_limit_bytes_per_sec: usize,
    /// Byte-bucket burst (at least `max_message_bytes`).
    pub rate_limit_bytes_burst: usize,
    /// Outstanding `rate_limited` errors tolerated before close 1008.
    pub rate_limit_strikes: u32,
    /// Seconds of good behaviour after which `rate_limit_strikes` strikes are forgiven.
    pub rate_limit_strike_decay_secs: u64,
    /// Connections per user.
    pub max_connections_per_user: usize,
    /// Connections in total.
    pub max_connections: usize,
}

impl WsSettings {
    /// `hello_timeout_secs` as a duration.
    pub fn hello_timeout(&self) -> Duration {
        Duration::from_secs(self.hello_timeout_secs)
    }
    /// `resume_grace_secs` as a duration.
    pub fn resume_grace(&self) -> Duration {
        Duration::from_secs(self.resume_grace_secs)
    }
    /// `going_away_grace_secs` as a duration (never longer than the network-drop grace).
    pub fn going_away_grace(&self) -> Duration {
        Duration::from_secs(self.going_away_grace_secs.min(self.resume_grace_secs))
    }
    /// `heartbeat_secs` as a duration.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs.max(1))
    }
}

/// `[ice]`
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct IceSettings {
    /// Static ICE servers.
    pub servers: Vec<IceServerConfig>,
    /// TURN URLs served with time-limited credentials.
    #[serde(deserialize_with = "list_or_csv")]
    pub turn_urls: Vec<String>,
    /// Shared TURN secret (coturn `static-auth-secret`).
    pub turn_secret: Option<Secret>,
    /// Credential lifetime in seconds.
    pub ttl_secs: u64,
}

/// One configured ICE server.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct IceServerConfig {
    /// `stun:`/`turn:` URLs.
    pub urls: Vec<String>,
    /// Static TURN username, if any.
    pub username: Option<String>,
    /// Static TURN credential, if any.
    pub credential: Option<Secret>,
}

/// `[persistence]`
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PersistenceSettings {
    /// Record one `signaling_messages` row per relayed sdp/ice (opt-in debugging aid).
    pub log_signaling: bool,
    /// Age in seconds after which `signaling_messages` rows are deleted; 0 keeps them.
    pub signaling_retention_secs: u64,
    /// Events per transaction.
    pub batch_size: usize,
    /// Batch wait in milliseconds.
    pub batch_interval_ms: u64,
    /// Events kept during an outage.
    pub buffer_capacity: usize,
    /// Percentage of `buffer_capacity` that signaling-metadata rows may use (at most 90).
    pub signaling_buffer_share: usize,
    /// Longest retry backoff in milliseconds.
    pub retry_max_backoff_ms: u64,
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct MetricsSettings {
    /// Allowed client networks.
    #[serde(deserialize_with = "list_or_csv")]
    pub allowed: Vec<String>,
}

/// `[cluster]`: several nodes sharing one database and one NATS server (docs/architecture.md,
/// "Cluster"). Without `nats_url` the server is one node and never touches NATS.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ClusterSettings {
    /// NATS server URL (JetStream on); may carry credentials, hence secret. Unset = one node.
    pub nats_url: Option<Secret>,
    /// Seconds without a heartbeat after which a node counts as dead (its calls end for the
    /// surviving parties, its unfinished call rows are ended `server_restart`).
    pub node_timeout_secs: u64,
}

impl ClusterSettings {
    /// [`node_timeout_secs`](Self::node_timeout_secs) as a duration.
    pub fn node_timeout(&self) -> Duration {
        Duration::from_secs(self.node_timeout_secs)
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LogSettings {
    /// Output format.
    pub format: LogFormat,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Accepts a TOML list or, from an environment variable, a comma-separated string.
/// `CALLSIGNAL_<SECTION>__<KEY>` variables (contract §4). `CALLSIGNAL_CONFIG` names the file;
/// `CALLSIGNAL_TEST_*`, `CALLSIGNAL_E2E_*` and `CALLSIGNAL_BIN` belong to the test suite and the
/// load generator and are not settings. Every other `CALLSIGNAL_*` variable must name a key.
/// Shortest `ice.turn_secret` accepted when TURN is configured.
pub const MIN_TURN_SECRET_BYTES: usize = 16;

/// The prefix of every setting's environment variable (`CALLSIGNAL_WS__HEARTBEAT_SECS`).
const ENV_PREFIX: &str = "CALLSIGNAL_";

fn env_provider() -> Env {
    Env::prefixed(ENV_PREFIX)
        .filter(|k| {
            let k = k.as_str().to_ascii_uppercase();
            k != "CONFIG" && k != "BIN" && !k.starts_with("TEST_") && !k.starts_with("E2E_")
        })
        .split("__")
        .map(|k| k.as_str().to_ascii_lowercase().into())
}

/// Keys that may be set although `config/default.toml` leaves them commented out.
fn optional_keys() -> Vec<&'static str> {
    let mut keys = vec![
        "auth.jwt_secret",
        "cluster.nats_url",
        "ice.turn_secret",
        "server.tls.cert_path",
        "server.tls.key_path",
    ];
    if cfg!(feature = "test-hooks") {
        keys.push("test_hooks.tamper_fingerprint_to");
    }
    keys
}

/// Every key path `config/default.toml` defines (leaves; arrays of tables count as leaves).
fn known_keys() -> Vec<String> {
    fn walk(dict: &figment::value::Dict, prefix: &str, out: &mut Vec<String>) {
        for (k, v) in dict {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                figment::value::Value::Dict(_, d) => walk(d, &path, out),
                _ => out.push(path),
            }
        }
    }
    let mut out = vec![];
    if let Ok(data) = Figment::from(Toml::string(DEFAULT_TOML)).data() {
        for dict in data.values() {
            walk(dict, "", &mut out);
        }
    }
    out.extend(optional_keys().into_iter().map(String::from));
    out
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn strip_prefix(s: String) -> String {
    s.strip_prefix("invalid configuration: ")
        .map(str::to_owned)
        .unwrap_or(s)
}

/// The keys the settings do not have, each described with its source (file or environment
/// variable) and the nearest known key.
fn unknown_keys(figment: &Figment) -> Result<Vec<String>, ConfigError> {
    let known = known_keys();
    let is_table = |path: &str| known.iter().any(|k| k.starts_with(&format!("{path}.")));
    let mut unknown = vec![];
    fn walk(
        dict: &figment::value::Dict,
        prefix: &str,
        known: &[String],
        is_table: &dyn Fn(&str) -> bool,
        unknown: &mut Vec<String>,
    ) {
        for (k, v) in dict {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if known.contains(&path) {
                continue;
            }
            match v {
                figment::value::Value::Dict(_, d) if is_table(&path) => {
                    walk(d, &path, known, is_table, unknown)
                }
                _ => unknown.push(path),
            }
        }
    }
    let data = figment
        .data()
        .map_err(|e| ConfigError::Rule(describe_errors(e)))?;
    for dict in data.values() {
        walk(dict, "", &known, &is_table, &mut unknown);
    }
    Ok(unknown
        .iter()
        .map(|path| describe_unknown(figment, &known, path))
        .collect())
}

/// Where the value of `path` (a dotted key) was set: `environment variable CALLSIGNAL_…`,
/// `in <file>`, or `from <provider>`; `None` for the built-in defaults (`config/default.toml`
/// compiled in) and for a key nobody set.
fn set_by(figment: &Figment, path: &str) -> Option<String> {
    let m = figment.find_metadata(path)?;
    if m.name.contains("environment") {
        return Some(format!(
            "environment variable {ENV_PREFIX}{}",
            path.to_ascii_uppercase().replace('.', "__")
        ));
    }
    match &m.source {
        Some(figment::Source::File(f)) => Some(format!("in {}", f.display())),
        _ if m.name == DEFAULTS_NAME => None,
        _ => Some(format!("from {}", m.name)),
    }
}

/// The name the built-in defaults (`Toml::string`) go by in figment's metadata.
const DEFAULTS_NAME: &str = "TOML source string";

/// `message` (a rule's complaint, naming keys such as `ws.heartbeat_secs`) with where each key
/// it names was set, so that an operator knows which file or environment variable to fix:
/// `ws.heartbeat_secs is 0; it must be between 1 and 86400 (ws.heartbeat_secs: environment
/// variable CALLSIGNAL_WS__HEARTBEAT_SECS)`. Keys left at their defaults are not listed.
fn with_sources(figment: &Figment, message: String) -> String {
    let known = known_keys();
    let is_key_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
    let mut named: Vec<(usize, &str)> = known
        .iter()
        .filter_map(|k| {
            message.match_indices(k.as_str()).find_map(|(at, _)| {
                let before = message[..at].chars().next_back();
                let after = message[at + k.len()..].chars().next();
                (!before.is_some_and(is_key_char) && !after.is_some_and(is_key_char))
                    .then_some((at, k.as_str()))
            })
        })
        .collect();
    named.sort_unstable();
    let sources: Vec<String> = named
        .iter()
        .filter_map(|(_, k)| set_by(figment, k).map(|s| format!("{k}: {s}")))
        .collect();
    if sources.is_empty() {
        message
    } else {
        format!("{message} ({})", sources.join(", "))
    }
}

fn describe_unknown(figment: &Figment, known: &[String], path: &str) -> String {
    let source = set_by(figment, path)
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    let nearest = known
        .iter()
        .min_by_key(|k| edit_distance(k, path))
        .filter(|k| edit_distance(k, path) <= (path.len() / 3).max(3))
        .map(|k| format!(", did you mean `{k}`?"))
        .unwrap_or_default();
    format!("unknown configuration key `{path}`{source}{nearest}")
}

fn nets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    list_or_csv(d)?
        .iter()
        .map(|s| {
            IpNet::parse(s)
                .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not an IP or CIDR")))
        })
        .collect()
}

fn list_or_csv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::List(v) => v,
        Raw::Csv(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    })
}

/// Longest configurable deadline or lock-out, in seconds (one day).
pub const MAX_DEADLINE_SECS: u64 = 86_400;

/// The longest lifetime or retention a setting may name (ten years, in seconds): session and
/// token lifetimes, TURN credential lifetime, row retention.
pub const MAX_LIFETIME_SECS: u64 = 10 * 365 * 86_400;

/// Why the settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is out of its allowed range.
    #[error("invalid configuration: {0}")]
    Rule(String),
}

/// Reads `dir/.env`, if present, into the process environment without overriding variables
/// already set. Only that directory: never a parent (contract §4, "a `.env` file in the working
/// directory"), so a `.env` left anywhere above the working directory cannot inject settings.
/// `Ok(false)` when there is none; an unreadable or malformed file is an error whose message
/// never quotes the file's lines (they may hold secrets).
pub fn load_dotenv(dir: &Path) -> Result<bool, ConfigError> {
    let path = dir.join(".env");
    if !path.is_file() {
        return Ok(false);
    }
    dotenvy::from_path(&path).map_err(|e| {
        let why = match e {
            dotenvy::Error::LineParse(line, at) => {
                // Name the line by its number, never by its content (it may hold a secret).
                let number = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|text| text.lines().position(|l| l.trim_end() == line.trim_end()))
                    .map_or_else(|| "a line".to_owned(), |i| format!("line {}", i + 1));
                format!("syntax error at character {at} of {number}")
            }
            dotenvy::Error::Io(e) => e.to_string(),
            dotenvy::Error::EnvVar(e) => e.to_string(),
            _ => "unreadable".to_owned(),
        };
        ConfigError::Rule(format!("{}: {why}", path.display()))
    })?;
    Ok(true)
}

/// Each of figment's errors on one line: where the value came from (the file, or the
/// environment variable by its name), the key as written in `config/default.toml`, and what is
/// wrong — once (figment's own message repeats itself through its error chain, and names keys
/// as `default.ws.heartbeat_secs` or `WS.HEARTBEAT_SECS`).
/// A parser's message without the lines it quotes from the source: a TOML syntax error shows
/// the offending line (`2 | jwt_secret = "…`), and that line may hold a secret. What remains
/// (`TOML parse error at line 2, column 14` and the reason) is joined into one line.
fn without_source_lines(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| {
            let quoted = l
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start()
                .starts_with('|');
            !l.is_empty() && !quoted
        })
        .collect::<Vec<_>>()
        .join(": ")
}

/// Whether the value at `key` may hold a secret: a [`Secret`], or within `ice.servers` (whose
/// entries carry TURN credentials).
fn holds_secrets(key: &str) -> bool {
    [
        "auth.jwt_secret",
        "database.url",
        "ice.turn_secret",
        "ice.servers",
        "cluster.nats_url",
    ]
    .iter()
    .any(|k| {
        key == *k
            || key
                .strip_prefix(k)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

fn describe_errors(errors: figment::Error) -> String {
    errors
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let from = match e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
                Some(figment::Source::File(path)) => format!("{}: ", path.display()),
                _ if e
                    .metadata
                    .as_ref()
                    .is_some_and(|m| m.name.contains(ENV_PREFIX)) =>
                {
                    let var = e
                        .path
                        .iter()
                        .map(|p| p.to_ascii_uppercase())
                        .collect::<Vec<_>>();
                    format!("environment variable {ENV_PREFIX}{}: ", var.join("__"))
                }
                _ => String::new(),
            };
            let kind = match &e.kind {
                // The value of a key that holds a secret, or of `ice.servers` (their
                // credentials), is never quoted back, whatever is wrong with it.
                figment::error::Kind::InvalidType(_, expected)
                | figment::error::Kind::InvalidValue(_, expected)
                    if holds_secrets(&key) =>
                {
                    format!("a value of the wrong type (not shown: it may hold a secret); expected {expected}")
                }
                kind => crate::json::json_terms(&without_source_lines(&kind.to_string())),
            };
            if key.is_empty() {
                format!("{from}{kind}")
            } else {
                format!("{from}{key}: {kind}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl Settings {
    /// Loads the layers. `file` is `--config`, falling back to `CALLSIGNAL_CONFIG`.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        let env_file = std::env::var_os("CALLSIGNAL_CONFIG").map(PathBuf::from);
        if let Some(path) = file.map(Path::to_path_buf).or(env_file) {
            if !path.exists() {
                return Err(ConfigError::Rule(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            if !path.is_file() {
                return Err(ConfigError::Rule(format!(
                    "config file {} is not a file (a directory?)",
                    path.display()
                )));
            }
            // A file that is not TOML: say which file (figment's parse error does not).
            if let Err(e) = Figment::from(Toml::file_exact(&path)).extract::<figment::value::Dict>()
            {
                return Err(ConfigError::Rule(format!(
                    "config file {}: {}",
                    path.display(),
                    without_source_lines(&e.kind.to_string())
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(env_provider());
        Self::from_figment(figment)
    }

    /// Builds settings from a figment (tests layer their own values on [`DEFAULT_TOML`]). Any
    /// key the settings do not have is an error naming it, where it came from and the nearest
    /// known key: a misspelling must never pass silently.
    /// Every problem found is reported at once (unknown keys, then the first type or range
    /// error), so `callsignal config check` lists them together.
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let unknown = unknown_keys(&figment)?;
        let mut problems: Vec<String> = unknown;
        match figment.extract::<Settings>() {
            Ok(settings) => match settings.validate() {
                Ok(()) if problems.is_empty() => return Ok(settings),
                Ok(()) => {}
                Err(e) => problems.push(with_sources(&figment, strip_prefix(e.to_string()))),
            },
            Err(e) => problems.push(describe_errors(e)),
        }
        Err(ConfigError::Rule(problems.join("; ")))
    }

    /// The defaults alone.
    pub fn defaults() -> Figment {
        Figment::from(Toml::string(DEFAULT_TOML))
    }

    /// TURN with time-limited credentials (coturn's `use-auth-secret`; the TURN REST API's
    /// scheme): URLs without a secret would hand browsers no credentials and calls behind NAT
    /// would fail with no word in the logs; a short secret lets anyone who guesses it mint
    /// credentials for the relay; a URL that is not `turn:`/`turns:` (RFC 7065 §3.1), or the
    /// same server's `stun:`/`stuns:` (RFC 7064) listed with them, is no ICE server at all.
    fn check_turn(&self) -> Result<(), ConfigError> {
        let ice = &self.ice;
        if ice.turn_urls.is_empty() {
            return Ok(());
        }
        for url in &ice.turn_urls {
            let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
            if !matches!(scheme.as_deref(), Some("turn" | "turns" | "stun" | "stuns")) {
                let shown: String = url.chars().take(100).collect();
                return Err(ConfigError::Rule(format!(
                    "ice.turn_urls entry {shown:?} is not a TURN URL: write turn:host[:port] or \
                     turns:host[:port] (RFC 7065; stun:/stuns: of the same server may join them)"
                )));
            }
        }
        match &ice.turn_secret {
            None => Err(ConfigError::Rule(
                "ice.turn_urls is set but ice.turn_secret is not: no TURN credentials can be \
                 made (set the secret shared with the TURN server's static-auth-secret)"
                    .into(),
            )),
            Some(secret) if secret.expose().len() < MIN_TURN_SECRET_BYTES => {
                Err(ConfigError::Rule(format!(
                    "ice.turn_secret is {} bytes; it must be at least {MIN_TURN_SECRET_BYTES} \
                     bytes (anyone who guesses it can mint credentials for the relay)",
                    secret.expose().len()
                )))
            }
            Some(_) => Ok(()),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.check_turn()?;
        if let Some(secret) = &self.auth.jwt_secret
            && secret.expose().len() < crate::auth::jwt::MIN_SECRET_BYTES
        {
            return Err(ConfigError::Rule(format!(
                "auth.jwt_secret is {} bytes; it must be at least {} bytes \
                     (or unset, to have one generated)",
                secret.expose().len(),
                crate::auth::jwt::MIN_SECRET_BYTES
            )));
        }
        for origin in &self.server.allowed_origins {
            check_origin(origin)?;
        }
        // Deadlines are added to the clock; a day bounds them far from overflow and far beyond
        // any sensible value.
        let (server, throttle) = (&self.server, &self.auth.throttle);
        for (key, secs) in [
            (
                "server.header_read_timeout_secs",
                server.header_read_timeout_secs,
            ),
            ("server.idle_timeout_secs", server.idle_timeout_secs),
            (
                "server.body_read_timeout_secs",
                server.body_read_timeout_secs,
            ),
            ("auth.throttle.max_delay_secs", throttle.max_delay_secs),
        ] {
            if !(1..=MAX_DEADLINE_SECS).contains(&secs) {
                return Err(ConfigError::Rule(format!(
                    "{key} is {secs}; it must be between 1 and {MAX_DEADLINE_SECS}"
                )));
            }
        }
        // Every other duration has a ceiling too: each is added to a clock (`Instant`, chrono,
        // a database timestamp), and a value near u64::MAX overflowed there — a panic in every
        // socket task (ws.heartbeat_secs) or sessions dead on arrival (auth.session_ttl_secs).
        // Waits and intervals: at most a day; lifetimes and retention: at most ten years.
        let (ws, auth, p, calls) = (&self.ws, &self.auth, &self.persistence, &self.calls);
        for (key, value, max) in [
            (
                "server.shutdown_drain_secs",
                server.shutdown_drain_secs,
                MAX_DEADLINE_SECS,
            ),
            (
                "server.tls.reload_check_secs",
                server.tls.reload_check_secs,
                MAX_DEADLINE_SECS,
            ),
            (
                "database.connect_timeout_secs",
                self.database.connect_timeout_secs,
                MAX_DEADLINE_SECS,
            ),
            (
                "auth.access_token_ttl_secs",
                auth.access_token_ttl_secs,
                MAX_LIFETIME_SECS,
            ),
            (
                "auth.session_ttl_secs",
                auth.session_ttl_secs,
                MAX_LIFETIME_SECS,
            ),
            (
                "auth.throttle.base_delay_secs",
                throttle.base_delay_secs,
                MAX_DEADLINE_SECS,
            ),
            (
                "auth.throttle.window_secs",
                throttle.window_secs,
                MAX_DEADLINE_SECS,
            ),
            (
                "auth.throttle.known_address_secs",
                throttle.known_address_secs,
                MAX_LIFETIME_SECS,
            ),
            (
                "calls.ring_timeout_secs",
                calls.ring_timeout_secs,
                MAX_DEADLINE_SECS,
            ),
            (
                "ws.hello_timeout_secs",
                ws.hello_timeout_secs,
                MAX_DEADLINE_SECS,
            ),
            (
                "ws.resume_grace_secs",
                ws.resume_grace_secs,
                MAX_DEADLINE_SECS,
            ),
            (
                "ws.going_away_grace_secs",
                ws.going_away_grace_secs,
                MAX_DEADLINE_SECS,
            ),
            ("ws.heartbeat_secs", ws.heartbeat_secs, MAX_DEADLINE_SECS),
            (
                "ws.rate_limit_strike_decay_secs",
                ws.rate_limit_strike_decay_secs,
                MAX_DEADLINE_SECS,
            ),
            ("ice.ttl_secs", self.ice.ttl_secs, MAX_LIFETIME_SECS),
            (
                "persistence.signaling_retention_secs",
                p.signaling_retention_secs,
                MAX_LIFETIME_SECS,
            ),
            (
                "persistence.batch_interval_ms",
                p.batch_interval_ms,
                MAX_DEADLINE_SECS * 1000,
            ),
            (
                "persistence.retry_max_backoff_ms",
                p.retry_max_backoff_ms,
                MAX_DEADLINE_SECS * 1000,
            ),
            (
                "cluster.node_timeout_secs",
                self.cluster.node_timeout_secs,
                MAX_DEADLINE_SECS,
            ),
        ] {
            if value > max {
                return Err(ConfigError::Rule(format!(
                    "{key} is {value}; it must be at most {max}"
                )));
            }
        }
        // The database drivers built in: a URL for another (mysql://…) passed `config check`
        // and failed only at `serve`.
        let url = self.database.url.expose();
        if !["sqlite:", "postgres://", "postgresql://"]
            .iter()
            .any(|p| url.starts_with(p))
        {
            return Err(ConfigError::Rule(format!(
                "database.url {} must start with sqlite:, postgres:// or postgresql:// (the \
                 drivers built in)",
                if url.contains("://") {
                    crate::store::redact_url(url)
                } else {
                    // Not a URL: nothing tells a password apart, so none of it is shown.
                    "(not a URL)".to_owned()
                }
            )));
        }
        if self.ws.max_message_bytes < 1024 {
            return Err(ConfigError::Rule(
                "ws.max_message_bytes must be at least 1024".into(),
            ));
        }
        if self.ws.rate_limit_bytes_burst < self.ws.max_message_bytes {
            return Err(ConfigError::Rule(
                "ws.rate_limit_bytes_burst must be at least ws.max_message_bytes".into(),
            ));
        }
        if self.ws.outbound_queue_bytes < 2 * self.ws.max_message_bytes {
            return Err(ConfigError::Rule(
                "ws.outbound_queue_bytes must be at least twice ws.max_message_bytes".into(),
            ));
        }
        // Zero would make the server refuse or expire everything at once.
        let (ws, auth, p) = (&self.ws, &self.auth, &self.persistence);
        for (key, value) in [
            ("ws.outbound_queue", ws.outbound_queue as u64),
            ("persistence.batch_size", p.batch_size as u64),
            ("persistence.buffer_capacity", p.buffer_capacity as u64),
            ("ws.max_connections", ws.max_connections as u64),
            (
                "ws.max_connections_per_user",
                ws.max_connections_per_user as u64,
            ),
            ("ws.hello_timeout_secs", ws.hello_timeout_secs),
            ("ws.heartbeat_secs", ws.heartbeat_secs),
            ("ws.rate_limit_per_sec", u64::from(ws.rate_limit_per_sec)),
            ("ws.rate_limit_burst", u64::from(ws.rate_limit_burst)),
            ("auth.access_token_ttl_secs", auth.access_token_ttl_secs),
            ("auth.session_ttl_secs", auth.session_ttl_secs),
            ("calls.ring_timeout_secs", self.calls.ring_timeout_secs),
            (
                "database.max_connections",
                u64::from(self.database.max_connections),
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Rule(format!("{key} must be positive")));
            }
        }
        if p.signaling_buffer_share > 90 {
            return Err(ConfigError::Rule(format!(
                "persistence.signaling_buffer_share is {}; it must be at most 90 (percent)",
                p.signaling_buffer_share
            )));
        }
        if self.cluster.nats_url.is_some() {
            // The id names the node's NATS subject and key-value entries.
            let id = &self.server.instance_id;
            let valid = !id.is_empty()
                && id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid {
                return Err(ConfigError::Rule(format!(
                    "server.instance_id {id:?} must be 1..64 characters of [A-Za-z0-9_-] \
                     when cluster.nats_url is set"
                )));
            }
            if !(2..=MAX_DEADLINE_SECS).contains(&self.cluster.node_timeout_secs) {
                return Err(ConfigError::Rule(format!(
                    "cluster.node_timeout_secs must be between 2 and {MAX_DEADLINE_SECS}"
                )));
            }
        }
        for net in &self.metrics.allowed {
            IpNet::parse(net).ok_or_else(|| {
                ConfigError::Rule(format!("metrics.allowed: {net:?} is not an IP or CIDR"))
            })?;
        }
        Ok(())
    }
}

/// An IP network (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Debug, Clone, Copy)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// Written as `addr/prefix`, as [`IpNet::parse`] reads it.
impl Serialize for IpNet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}/{}", self.addr, self.prefix))
    }
}

impl IpNet {
    /// Parses `addr` or `addr/prefix`.
    pub fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { addr, prefix })
    }

    /// Whether `ip` is inside this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// `server.allowed_origins` holds serialized origins (RFC 6454 §6.2): `http` or `https`, `://`,
/// a host and an optional port — what a browser sends in `Origin`, compared case-insensitively
/// (a trailing `/` is tolerated). Anything else could never match: a bare host, a path, a
/// query, user info, another scheme, or a wildcard (none is supported: list every origin). A
/// refused entry names the key and the entry, so an operator's typo stops the start instead of
/// turning every browser away.
fn check_origin(origin: &str) -> Result<(), ConfigError> {
    let refuse = |why: &str| {
        let shown: String = origin.chars().take(100).collect();
        Err(ConfigError::Rule(format!(
            "server.allowed_origins entry {shown:?} is not an origin ({why}); write each as \
             scheme://host[:port], e.g. \"https://app.example.org\""
        )))
    };
    let trimmed = origin.strip_suffix('/').unwrap_or(origin);
    if trimmed.contains('*') {
        return refuse("wildcards are not supported");
    }
    if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return refuse("it contains white space");
    }
    let Some((scheme, authority)) = trimmed.split_once("://") else {
        return refuse("no scheme: it needs http:// or https://");
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return refuse("the scheme must be http or https");
    }
    if authority.is_empty() {
        return refuse("no host");
    }
    if authority.contains(['/', '?', '#']) {
        return refuse("an origin has no path, query or fragment");
    }
    if authority.contains('@') {
        return refuse("an origin has no user info");
    }
    // The port, if any, follows the host (an IPv6 address is in brackets): digits, ≤ 65535.
    let port = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((_, "")) => None,
            Some((_, rest)) => match rest.strip_prefix(':') {
                Some(port) => Some(port),
                None => return refuse("not a valid host[:port]"),
            },
            None => return refuse("not a valid host[:port]"),
        },
        None => authority.split_once(':').map(|(_, port)| port),
    };
    if port.is_some_and(|p| {
        p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().is_err()
    }) {
        return refuse("the port must be a number up to 65535");
    }
    // A browser's `Origin` never carries its scheme's default port (RFC 6454 §6.2), and no page
    // is served from port 0: such an entry could never match.
    match (
        scheme.to_ascii_lowercase().as_str(),
        port.and_then(|p| p.parse::<u16>().ok()),
    ) {
        (_, Some(0)) => return refuse("port 0 is no page's port"),
        ("https", Some(443)) => {
            return refuse("browsers leave out the default port 443: write it without \":443\"");
        }
        ("http", Some(80)) => {
            return refuse("browsers leave out the default port 80: write it without \":80\"");
        }
        _ => {}
    }
    match hyper::http::uri::Authority::try_from(authority) {
        Ok(a) if !a.host().is_empty() => Ok(()),
        _ => refuse("not a valid host[:port]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_validate() {
        let s = Settings::from_figment(Settings::defaults()).expect("defaults are valid");
        assert_eq!(s.server.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(s.ws.max_message_bytes, 65536);
        assert!(s.auth.jwt_secret.is_none());
    }

    /// A duration near u64::MAX passed validation and overflowed where it was added to a
    /// clock: every WebSocket task panicked (`ws.heartbeat_secs`), every session was dead on
    /// arrival (`auth.session_ttl_secs`). Every duration key has a ceiling.
    #[test]
    fn durations_that_would_overflow_a_clock_are_refused() {
        let keys: Vec<String> = Settings::defaults()
            .extract::<figment::value::Dict>()
            .expect("defaults")
            .iter()
            .flat_map(|(section, v)| {
                let mut keys = vec![];
                let mut walk = vec![(section.clone(), v.clone())];
                while let Some((path, v)) = walk.pop() {
                    match v {
                        figment::value::Value::Dict(_, d) => {
                            walk.extend(d.into_iter().map(|(k, v)| (format!("{path}.{k}"), v)));
                        }
                        _ if path.ends_with("_secs") || path.ends_with("_ms") => keys.push(path),
                        _ => {}
                    }
                }
                keys
            })
            .collect();
        assert!(
            keys.len() >= 20,
            "every duration key of the defaults: {keys:?}"
        );
        for key in &keys {
            for value in [u64::MAX, 400_000_000_000] {
                let err = Settings::from_figment(Settings::defaults().merge((key.as_str(), value)))
                    .expect_err(key);
                assert!(err.to_string().contains(key.as_str()), "{key}: {err}");
            }
        }
    }

    /// An environment value is typed: a secret made of digits arrived as a number, was refused,
    /// and the error printed it.
    #[test]
    fn a_secret_that_reads_as_a_number_is_taken_as_written_and_never_printed() {
        let s = Settings::from_figment(
            Settings::defaults()
                .merge(("ice.turn_secret", 918_273_645_546_372_819u64))
                .merge((
                    "auth.jwt_secret",
                    12_345_678_901_234_567_890_123_456_789_012u128,
                )),
        )
        .expect("numbers are secrets as written");
        assert_eq!(
            s.ice.turn_secret.as_ref().map(Secret::expose),
            Some("918273645546372819")
        );
        let err = Settings::from_figment(
            Settings::defaults().merge(("ice.turn_secret", 4.567_891_23f64)),
        )
        .expect_err("fractional")
        .to_string();
        assert!(err.contains("ice.turn_secret"), "{err}");
        assert!(!err.contains("4.56"), "the value is not shown: {err}");
    }

    /// Found by a tester: `ice.servers` of the wrong type (an environment variable holding
    /// something that is not an array) was quoted back whole, credentials and all; and the
    /// placeholder `config check` prints for a secret was taken as the secret.
    #[test]
    fn secrets_are_never_quoted_back_nor_taken_from_the_placeholder() {
        let err = Settings::from_figment(Settings::defaults().merge((
            "ice.servers",
            r#"[{"urls":["turn:t"],"credential":"LeakCred1"}]"#,
        )))
        .expect_err("a string is not an array")
        .to_string();
        assert!(err.contains("ice.servers"), "{err}");
        assert!(!err.contains("LeakCred1"), "the value is not shown: {err}");
        for key in [
            "auth.jwt_secret",
            "ice.turn_secret",
            "cluster.nats_url",
            "database.url",
        ] {
            let err = Settings::from_figment(Settings::defaults().merge((key, REDACTED)))
                .expect_err("the placeholder is not a secret")
                .to_string();
            assert!(
                err.contains(key) && err.contains("config check"),
                "{key}: {err}"
            );
        }
        assert!(!holds_secrets("ice.servers_x") && holds_secrets("ice.servers.0.credential"));
    }

    #[test]
    fn a_database_url_without_a_built_in_driver_is_refused() {
        for url in [
            "mysql://u:secret@db/x",
            "callsignal.db",
            "mariadb://db",
            "u:secret@db/x",
        ] {
            let err = Settings::from_figment(Settings::defaults().merge(("database.url", url)))
                .expect_err(url)
                .to_string();
            assert!(err.contains("database.url"), "{url}: {err}");
            assert!(!err.contains("secret"), "{url}: never the password: {err}");
        }
        for url in ["sqlite::memory:", "postgres://db/x", "postgresql://db/x"] {
            Settings::from_figment(Settings::defaults().merge(("database.url", url)))
                .unwrap_or_else(|e| panic!("{url}: {e}"));
        }
    }

    /// A type error in a file or the environment is named once, by the file or the variable
    /// and the key as `config/default.toml` writes it (it was repeated twice, as
    /// `default.ws.heartbeat_secs` or `WS.HEARTBEAT_SECS`).
    #[test]
    fn a_type_error_names_its_key_and_source_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[ws]\nheartbeat_secs = \"abc\"\n").expect("write");
        let err = Settings::from_figment(Settings::defaults().merge(Toml::file_exact(&file)))
            .expect_err("a string for a number")
            .to_string();
        assert_eq!(err.matches("abc").count(), 1, "{err}");
        assert!(
            err.contains(&format!("{}: ws.heartbeat_secs: ", file.display())),
            "{err}"
        );
        assert!(!err.contains("default."), "{err}");
    }

    #[test]
    fn a_config_file_that_is_not_toml_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("broken.toml");
        std::fs::write(&file, "[ws\nheartbeat_secs = 1\n").expect("write");
        let err = Settings::load(Some(&file))
            .expect_err("not TOML")
            .to_string();
        assert!(
            err.contains(&format!("config file {}: ", file.display())),
            "{err}"
        );
        assert_eq!(err.matches("invalid table header").count(), 1, "{err}");
    }

    #[test]
    fn values_that_would_refuse_or_expire_everything_are_refused() {
        for (key, value) in [
            ("auth.access_token_ttl_secs", 0),
            ("auth.session_ttl_secs", 0),
            ("ws.max_connections_per_user", 0),
            ("ws.max_connections", 0),
            ("ws.heartbeat_secs", 0),
            ("ws.rate_limit_per_sec", 0),
            ("persistence.buffer_capacity", 0),
            ("calls.ring_timeout_secs", 0),
            ("database.max_connections", 0),
            ("persistence.signaling_buffer_share", 100),
        ] {
            let err =
                Settings::from_figment(Settings::defaults().merge((key, value))).expect_err(key);
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
    }

    /// A TOML syntax error quoted the offending line, secret and all.
    #[test]
    fn a_syntax_error_does_not_quote_the_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("secret.toml");
        std::fs::write(
            &file,
            "[auth]\njwt_secret = \"LeakMe-ABCDEFGHIJKLMNOPQRSTUVWXYZ012345\n",
        )
        .expect("write");
        let err = Settings::load(Some(&file))
            .expect_err("refused")
            .to_string();
        assert!(!err.contains("LeakMe"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        // Type errors speak JSON's terms, not Rust's.
        let err = Settings::from_figment(Settings::defaults().merge(("ws.heartbeat_secs", -5)))
            .expect_err("refused")
            .to_string();
        assert!(
            !err.contains("u64") && err.contains("non-negative integer"),
            "{err}"
        );
    }

    /// TURN URLs with no secret (or a guessable one, or a URL that is not TURN) started
    /// silently: browsers got no credentials and calls behind NAT failed.
    #[test]
    fn turn_needs_a_real_secret_and_turn_urls() {
        let with = |urls: Vec<&str>, secret: Option<&str>| {
            let mut f = Settings::defaults().merge(("ice.turn_urls", urls));
            if let Some(s) = secret {
                f = f.merge(("ice.turn_secret", s));
            }
            Settings::from_figment(f)
        };
        let long = "0123456789abcdef";
        assert!(
            with(
                vec!["turn:t.example:3478", "turns:t.example:5349?transport=tcp"],
                Some(long)
            )
            .is_ok()
        );
        assert!(
            with(vec![], Some("s")).is_ok(),
            "a secret without URLs is unused"
        );
        for (urls, secret, want) in [
            (vec!["turn:t.example:3478"], None, "ice.turn_secret is not"),
            (
                vec!["turn:t.example:3478"],
                Some(""),
                "ice.turn_secret is 0 bytes",
            ),
            (
                vec!["turn:t.example:3478"],
                Some("31337"),
                "ice.turn_secret is 5 bytes",
            ),
            (vec!["http://bad"], Some(long), "is not a TURN URL"),
            (vec!["ftp://t.example"], Some(long), "is not a TURN URL"),
        ] {
            let err = with(urls, secret).expect_err(want).to_string();
            assert!(err.contains(want), "{err}");
            assert!(!err.contains("31337"), "the secret is not shown: {err}");
        }
    }

    #[test]
    fn a_value_out_of_range_names_where_it_was_set() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("callsignal.toml");
        std::fs::write(
            &file,
            "[ws]\nmax_message_bytes = 65536\noutbound_queue_bytes = 1000\n",
        )
        .expect("write");
        let err = Settings::from_figment(Settings::defaults().merge(Toml::file(&file)))
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains(&format!(
                "(ws.outbound_queue_bytes: in {f}, ws.max_message_bytes: in {f})",
                f = file.display()
            )),
            "{err}"
        );
        // The environment as figment's `Env` provider presents it (same metadata name; the
        // process environment itself is shared by every test, so not touched here).
        struct FakeEnv;
        impl figment::Provider for FakeEnv {
            fn metadata(&self) -> figment::Metadata {
                figment::Metadata::named(format!("`{ENV_PREFIX}` environment variable(s)"))
            }
            fn data(
                &self,
            ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error>
            {
                figment::providers::Serialized::defaults(serde_json::json!({
                    "ws": {"heartbeat_secs": 0}
                }))
                .data()
            }
        }
        assert!(
            env_provider().metadata().name == FakeEnv.metadata().name,
            "{}",
            env_provider().metadata().name
        );
        let err = Settings::from_figment(Settings::defaults().merge(FakeEnv))
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("(ws.heartbeat_secs: environment variable CALLSIGNAL_WS__HEARTBEAT_SECS)"),
            "{err}"
        );
        // A value left at its default is not blamed on anyone.
        let err = Settings::from_figment(Settings::defaults().merge(("ws.max_message_bytes", 10)))
            .expect_err("refused")
            .to_string();
        assert!(err.contains("ws.max_message_bytes"), "{err}");
        assert!(!err.contains("TOML source string"), "{err}");
    }

    #[test]
    fn cluster_mode_needs_an_instance_id_fit_for_subjects() {
        let single = Settings::from_figment(Settings::defaults()).expect("defaults load");
        assert!(single.cluster.nats_url.is_none(), "one node by default");
        let with = |id: &str| {
            Settings::from_figment(
                Settings::defaults()
                    .merge(("cluster.nats_url", "nats://127.0.0.1:4222"))
                    .merge(("server.instance_id", id)),
            )
        };
        assert!(with("node-1_a").is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>"] {
            let err = with(bad).expect_err("refused");
            assert!(err.to_string().contains("server.instance_id"), "{err}");
        }
        let url = with("n1").expect("valid").cluster.nats_url.expect("set");
        assert_eq!(format!("{url:?}"), "[redacted]");
    }

    #[test]
    fn unknown_keys_refuse_to_start_naming_the_nearest_known_one() {
        let err =
            Settings::from_figment(Settings::defaults().merge(("calls.ring_timeout_sec", 30)))
                .expect_err("a misspelled key is refused");
        let msg = err.to_string();
        assert!(msg.contains("`calls.ring_timeout_sec`"), "{msg}");
        assert!(
            msg.contains("did you mean `calls.ring_timeout_secs`"),
            "{msg}"
        );
        let err = Settings::from_figment(Settings::defaults().merge(("nonsense", 1)))
            .expect_err("an unknown section is refused");
        assert!(err.to_string().contains("`nonsense`"), "{err}");
        // Optional keys and whole optional tables are known.
        let ok = Settings::defaults()
            .merge(("ice.turn_secret", "s"))
            .merge(("server.tls.cert_path", "/c.pem"))
            .merge(("server.tls.key_path", "/k.pem"));
        assert!(Settings::from_figment(ok).is_ok());
    }

    #[test]
    fn an_unknown_key_in_a_file_names_the_file_and_a_directory_is_not_a_file() {
        let dir = std::env::temp_dir().join(format!("cs-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("bad.toml");
        std::fs::write(&file, "[ws]\nresume_grace = 3\n").expect("write");
        let err = Settings::from_figment(Settings::defaults().merge(Toml::file_exact(&file)))
            .expect_err("refused");
        let msg = err.to_string();
        assert!(
            msg.contains("`ws.resume_grace`") && msg.contains("bad.toml"),
            "{msg}"
        );
        assert!(msg.contains("ws.resume_grace_secs"), "{msg}");
        let err = Settings::load(Some(&dir)).expect_err("a directory is refused");
        assert!(err.to_string().contains("not a file"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn short_secret_refuses_to_start() {
        let f = Settings::defaults().merge(("auth.jwt_secret", "too-short"));
        let err = Settings::from_figment(f).expect_err("short secret must be refused");
        assert!(err.to_string().contains("at least 32 bytes"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let f =
            Settings::defaults().merge(("auth.jwt_secret", "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t!"));
        let s = Settings::from_figment(f).expect("valid");
        assert!(!format!("{s:?}").contains("s3cr3t"));
    }

    #[test]
    fn deadlines_must_be_positive_and_at_most_a_day() {
        for (key, secs) in [
            ("server.idle_timeout_secs", 0u64),
            ("server.header_read_timeout_secs", u64::MAX),
            ("auth.throttle.max_delay_secs", MAX_DEADLINE_SECS + 1),
        ] {
            let f = Settings::defaults().merge((key, secs));
            let err = Settings::from_figment(f).expect_err(key);
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn allowed_origins_must_be_origins() {
        for good in [
            "https://app.example.org",
            "http://localhost:8080",
            "https://app.example.org/",
            "HTTPS://App.Example.org",
            "http://[::1]:3000",
            "http://127.0.0.1",
            "https://app.example.org:8443",
            "http://app.example.org:443",
        ] {
            let f = Settings::defaults().merge(("server.allowed_origins", vec![good]));
            assert!(Settings::from_figment(f).is_ok(), "{good}");
        }
        for bad in [
            "app.example.org",
            "*",
            "https://*.example.org",
            "https://app.example.org/path",
            "https://app.example.org?x=1",
            "https://app.example.org#f",
            "ftp://app.example.org",
            "https://user@app.example.org",
            "https://",
            "https://app.example.org:notaport",
            "https://app.example.org:70000",
            "https://app.example.org:",
            "https://a:b:c",
            "https://app .example.org",
            "",
            "https://app.example.org:443",
            "http://app.example.org:80",
            "http://app.example.org:0",
        ] {
            let f = Settings::defaults().merge(("server.allowed_origins", vec![bad]));
            let err = Settings::from_figment(f).expect_err(bad).to_string();
            assert!(
                err.contains("server.allowed_origins") && err.contains(&format!("{bad:?}")),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn csv_origins_from_env_style_string() {
        let f = Settings::defaults().merge((
            "server.allowed_origins",
            "https://a.example, https://b.example",
        ));
        let s = Settings::from_figment(f).expect("valid");
        assert_eq!(
            s.server.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
    }

    #[test]
    fn dotenv_is_read_from_the_given_directory_only() {
        let parent = tempfile::tempdir().expect("temp dir");
        let child = parent.path().join("work");
        std::fs::create_dir(&child).expect("child dir");
        std::fs::write(
            parent.path().join(".env"),
            "CALLSIGNAL_TEST_DOTENV_PARENT=injected\n",
        )
        .expect("parent .env");
        assert!(!load_dotenv(&child).expect("no .env is fine"));
        assert!(std::env::var_os("CALLSIGNAL_TEST_DOTENV_PARENT").is_none());
        std::fs::write(child.join(".env"), "CALLSIGNAL_TEST_DOTENV_CHILD=read\n")
            .expect("child .env");
        assert!(load_dotenv(&child).expect("read"));
        assert_eq!(
            std::env::var("CALLSIGNAL_TEST_DOTENV_CHILD").as_deref(),
            Ok("read")
        );
    }

    #[test]
    fn a_malformed_dotenv_is_an_error_that_does_not_quote_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join(".env"),
            "SECRET value-hunter2 'unterminated\n",
        )
        .expect(".env");
        let err = load_dotenv(dir.path()).expect_err("malformed");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn ip_networks_match() {
        let net = IpNet::parse("10.0.0.0/8").expect("valid");
        assert!(net.contains("10.1.2.3".parse().expect("ip")));
        assert!(!net.contains("11.0.0.1".parse().expect("ip")));
        let lo = IpNet::parse("127.0.0.1/32").expect("valid");
        assert!(lo.contains("::ffff:127.0.0.1".parse().expect("ip")));
    }
}
