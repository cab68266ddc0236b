//! The `callsignal` binary: `serve` (default) runs the server; `migrate up|down [N|all]|status`
//! manages the schema. `--config PATH` (or `CALLSIGNAL_CONFIG`) names an extra config file.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use callsignal::config::Settings;
use callsignal::startup::{App, shutdown_signal};
use migration::{Migrator, MigratorTrait};

/// mimalloc instead of the system allocator: each connection interleaves small long-lived and
/// short-lived allocations, and mimalloc keeps the resident size per connection lower (see
/// docs/benchmarks.md for the measurement).
#[cfg(not(feature = "heap-stats"))]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The same allocator, counting live bytes for `/metrics` (feature `heap-stats`).
#[cfg(feature = "heap-stats")]
#[global_allocator]
static ALLOC: callsignal::heap::Counting<mimalloc::MiMalloc> =
    callsignal::heap::Counting(mimalloc::MiMalloc);

const USAGE: &str = "usage: callsignal [--config PATH] [serve | migrate up | migrate down [N|all] | migrate status]";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable line (with its causes) for operators, not a Debug dump.
            eprintln!("callsignal: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    callsignal::config::load_dotenv(Path::new(".")).context("reading .env")?;
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut config = None;
    if let Some(i) = args.iter().position(|a| a == "--config") {
        if i + 1 >= args.len() {
            bail!("--config needs a path\n{USAGE}");
        }
        config = Some(PathBuf::from(args.remove(i + 1)));
        args.remove(i);
    }
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return Ok(());
    }
    let settings = Settings::load(config.as_deref()).context("loading configuration")?;
    callsignal::telemetry::init(settings.log.format);
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        [] | ["serve"] => {
            let app = App::build(settings).await?;
            app.run_until_stopped(shutdown_signal()).await
        }
        ["migrate", rest @ ..] => {
            let db = callsignal::store::connect(&settings.database).await?;
            match rest {
                ["up"] => Migrator::up(&db, None).await?,
                ["down"] => Migrator::down(&db, Some(1)).await?,
                ["down", "all"] => Migrator::down(&db, None).await?,
                ["down", n] => {
                    Migrator::down(&db, Some(n.parse().context("N must be a number")?)).await?
                }
                ["status"] => {
                    for m in Migrator::get_migration_with_status(&db).await? {
                        println!("{:<8} {}", m.status().to_string(), m.name());
                    }
                }
                _ => bail!("{USAGE}"),
            }
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}
