//! Logging through `tracing`: `pretty` or `json` on stdout, filtered by `RUST_LOG`
//! (default `info,ractor=warn`: ractor's per-actor spans would cost memory on every idle
//! connection and say nothing our own supervision events do not). Secrets never reach a log line: they are typed [`crate::config::Secret`]
//! and tokens/passwords are never passed to a log macro.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ractor=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
