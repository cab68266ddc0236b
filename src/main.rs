//! The `callsignal` binary (contract §4): `serve` (the default) runs the server; `migrate`
//! manages the schema; `config check` validates and prints the effective configuration;
//! `healthcheck` asks a running server's `/healthz`. `--config PATH` (or `CALLSIGNAL_CONFIG`)
//! names an extra config file. `--help` works on every subcommand.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use callsignal::config::Settings;
use callsignal::startup::{App, shutdown_signal};
use clap::{Parser, Subcommand};
use migration::{Migrator, MigratorTrait};

/// mimalloc instead of the system allocator: each connection interleaves small long-lived and
/// short-lived allocations, and mimalloc keeps the resident size per connection lower (see
/// docs/benchmarks.md for the measurement).
#[cfg(not(any(feature = "heap-stats", feature = "system-allocator")))]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The same allocator, counting live bytes for `/metrics` (feature `heap-stats`).
#[cfg(all(feature = "heap-stats", not(feature = "system-allocator")))]
#[global_allocator]
static ALLOC: callsignal::heap::Counting<mimalloc::MiMalloc> =
    callsignal::heap::Counting(mimalloc::MiMalloc);

/// Signaling and account server for end-to-end encrypted 1:1 WebRTC audio calls.
///
/// Configuration layers, later ones winning: the compiled-in defaults (config/default.toml) →
/// the file named by --config or CALLSIGNAL_CONFIG → CALLSIGNAL_<SECTION>__<KEY> variables. A
/// `.env` file in the working directory is read first. Unknown keys refuse to start.
#[derive(Debug, Parser)]
#[command(name = "callsignal", version, propagate_version = true)]
struct Cli {
    /// Extra configuration file (TOML) layered over the defaults.
    #[arg(long, global = true, value_name = "PATH", env = "CALLSIGNAL_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default): applies pending migrations unless
    /// database.migrate_on_start = false, serves until SIGTERM/SIGINT.
    Serve,
    /// Manage the database schema.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Ask the running server's GET /healthz on the configured listen address (HTTPS when
    /// [server.tls] is set); exit status 0 when it answers 200. For container health checks.
    Healthcheck {
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 5, value_name = "SECS")]
        timeout: u64,
    },
}

#[derive(Debug, Subcommand)]
enum MigrateAction {
    /// Apply every pending migration.
    Up,
    /// Revert the last N migrations (default 1), or `all`.
    Down {
        /// How many, or `all`.
        #[arg(default_value = "1")]
        steps: String,
    },
    /// List the migrations and whether each is applied.
    Status,
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Validate the configuration and print the effective settings as a TOML configuration
    /// file (secrets written as "[redacted]"); exit status 1 with every problem found otherwise.
    Check,
}

fn main() -> std::process::ExitCode {
    // Before the runtime and its first allocations (callsignal::heap explains why).
    callsignal::heap::disable_transparent_huge_pages();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("callsignal: error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async_main())
}

async fn async_main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable line (with its causes) for operators, not a Debug dump.
            eprintln!("callsignal: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Whether this binary was built with the `test-hooks` feature (by a test build of this package:
/// its tests depend on it with the feature on, and cargo rebuilds the binary to match).
const TEST_HOOKS_BUILD: bool = cfg!(feature = "test-hooks");
const TEST_HOOKS_WARNING: &str = "this binary was built with the test-hooks feature (a test build of \
callsignal's package): it accepts [test_hooks] settings that make it panic or alter relayed SDP on \
purpose. Never deploy it: build the server with `cargo build --release` (or docker/Dockerfile)";

/// Says so at start when this is a test build ([`TEST_HOOKS_BUILD`]).
fn warn_if_test_build() {
    if TEST_HOOKS_BUILD {
        tracing::warn!(event = "test_hooks_build", "{TEST_HOOKS_WARNING}");
    }
}

fn settings(config: Option<&Path>) -> anyhow::Result<Settings> {
    callsignal::config::load_dotenv(Path::new("."))?;
    Ok(Settings::load(config)?)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config.as_deref();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let settings = settings(config)?;
            callsignal::telemetry::init(settings.log.format);
            let app = App::build(settings).await?;
            // After the first log line (what is starting, where): that line stays the summary.
            warn_if_test_build();
            app.run_until_stopped(shutdown_signal()).await
        }
        Command::Config {
            action: ConfigAction::Check,
        } => {
            let settings = settings(config)?;
            if TEST_HOOKS_BUILD {
                println!("WARNING: {TEST_HOOKS_WARNING}");
            }
            // The effective settings as a configuration file would hold them (`--config FILE`
            // reads it back), secrets written as "[redacted]".
            let effective = toml::to_string_pretty(&settings)
                .map_err(|e| anyhow::anyhow!("cannot print the settings: {e}"))?;
            println!(
                "# configuration OK (database: {}; secrets shown as \"[redacted]\")\n\
                 # The effective settings, defaults and every source merged:\n\n{effective}",
                // Escaped: a control character in the URL must not end the comment line.
                callsignal::store::describe(&settings.database).escape_debug()
            );
            Ok(())
        }
        Command::Healthcheck { timeout } => {
            let settings = settings(config)?;
            callsignal::probe::healthcheck(&settings, Duration::from_secs(timeout)).await?;
            println!("healthy");
            Ok(())
        }
        Command::Migrate { action } => {
            let settings = settings(config)?;
            callsignal::telemetry::init(settings.log.format);
            let db = callsignal::store::connect(&settings.database).await?;
            match action {
                MigrateAction::Up => callsignal::store::migrate(&db).await?,
                MigrateAction::Down { steps } if steps == "all" => {
                    Migrator::down(&db, None).await?
                }
                MigrateAction::Down { steps } => {
                    let n = steps
                        .parse()
                        .context("migrate down takes a number of steps or `all`")?;
                    Migrator::down(&db, Some(n)).await?
                }
                MigrateAction::Status => {
                    for m in Migrator::get_migration_with_status(&db).await? {
                        println!("{:<8} {}", m.status().to_string(), m.name());
                    }
                }
            }
            Ok(())
        }
    }
}
