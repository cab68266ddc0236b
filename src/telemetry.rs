//! Logging through `tracing`: `pretty` or `json` on stdout, filtered by `RUST_LOG`
//! (default `info,ractor=warn`: ractor's per-actor spans would cost memory on every idle
//! connection and say nothing our own supervision events do not).
//!
//! No level may print a secret. Our own code never passes tokens, passwords, SDP or candidates
//! to a log macro, and secrets in settings are typed [`crate::config::Secret`]. Dependencies
//! are another matter: at debug/trace, tungstenite logs every WebSocket frame (`hello` with its
//! access token, `welcome` with the resume token and TURN credentials, SDP, candidates), h2
//! logs frames, sqlx and SeaORM log statements. So those targets are capped ([`CAPPED_TARGETS`])
//! after `RUST_LOG` is applied: no directive, however specific, raises them.

use tracing::{Level, Metadata};
use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use crate::config::LogFormat;

/// The filter when `RUST_LOG` is unset.
const DEFAULT_FILTER: &str = "info,ractor=warn";

/// Dependency targets (and their sub-modules) that log message payloads below these levels,
/// found by reading their sources: tungstenite `trace!("received frame {frame}")` and
/// `Received message {message}`; h2 `debug!(?frame, "received")`; hyper/hyper-util frame and
/// buffer traces; sqlx/SeaORM statements; ractor message dumps in its factory traces.
pub const CAPPED_TARGETS: &[(&str, Level)] = &[
    ("tungstenite", Level::INFO),
    ("tokio_tungstenite", Level::INFO),
    ("hyper", Level::INFO),
    ("hyper_util", Level::INFO),
    ("h2", Level::INFO),
    ("sqlx", Level::WARN),
    ("sea_orm", Level::INFO),
    ("ractor", Level::INFO),
];

/// The most verbose level `target` may log at, if it is capped.
pub fn cap_for(target: &str) -> Option<Level> {
    CAPPED_TARGETS.iter().find_map(|(prefix, level)| {
        let inside = target
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"));
        inside.then_some(*level)
    })
}

/// Whether an event or span passes the caps (`Level` orders TRACE as the greatest).
fn within_cap(meta: &Metadata<'_>) -> bool {
    cap_for(meta.target()).is_none_or(|cap| *meta.level() <= cap)
}

/// `env`, then the caps. The caps only ever remove events, so they hint "anything": the
/// combined max-level hint is then `env`'s own (`info` by default). That hint also becomes the
/// `log` crate's max level (tracing-subscriber's `try_init` sets it), so the `log::trace!`
/// that tungstenite runs for every frame stops at one atomic compare instead of a dispatch into
/// the tracing filters (8 % of the relay's CPU without the hint; docs/benchmarks.md).
fn capped<S>(env: EnvFilter) -> impl tracing_subscriber::layer::Filter<S> {
    env.and(filter_fn(within_cap).with_max_level_hint(LevelFilter::TRACE))
}

/// Installs the global subscriber: `RUST_LOG` (or the default), then the caps.
pub fn init(format: LogFormat) {
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let filter = capped(env);
    // Colour only on a terminal, and never with NO_COLOR (https://no-color.org).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let layer = fmt::layer().with_target(true).with_ansi(colour);
    let layer = match format {
        LogFormat::Json => layer.json().flatten_event(true).with_filter(filter).boxed(),
        LogFormat::Pretty => layer.with_filter(filter).boxed(),
    };
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_hints_the_env_level_so_log_records_stop_early() {
        use tracing_subscriber::layer::Filter;
        let f = capped::<tracing_subscriber::Registry>(EnvFilter::new(DEFAULT_FILTER));
        assert_eq!(f.max_level_hint(), Some(LevelFilter::INFO));
        let f = capped::<tracing_subscriber::Registry>(EnvFilter::new("debug"));
        assert_eq!(f.max_level_hint(), Some(LevelFilter::DEBUG));
    }

    #[test]
    fn payload_logging_dependencies_are_capped_with_their_submodules() {
        assert_eq!(cap_for("tungstenite::protocol::frame"), Some(Level::INFO));
        assert_eq!(cap_for("h2"), Some(Level::INFO));
        assert_eq!(cap_for("sqlx::query"), Some(Level::WARN));
        assert_eq!(cap_for("h2x"), None, "a prefix of a name is not its module");
        assert_eq!(cap_for("callsignal::http"), None);
    }
}
