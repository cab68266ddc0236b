//! What the binary reads and writes on the local machine (issue 9 items E and F): `.env` only
//! from the working directory, and private modes on the database and data directory.

use std::process::Command;

/// `callsignal ARGS` in `dir`, with a clean `CALLSIGNAL_*` environment.
fn callsignal(dir: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_callsignal"));
    cmd.args(args).current_dir(dir);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CALLSIGNAL_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// `callsignal migrate status` in `dir`, with a clean `CALLSIGNAL_*` environment.
fn migrate_status(dir: &std::path::Path) -> std::process::Output {
    callsignal(dir, &["migrate", "status"])
        .output()
        .expect("binary runs")
}

#[test]
fn a_dotenv_in_a_parent_directory_is_not_read() {
    let parent = tempfile::tempdir().unwrap();
    let work = parent.path().join("work");
    std::fs::create_dir(&work).unwrap();
    // Were it read, the server would refuse this bind address and fail.
    std::fs::write(
        parent.path().join(".env"),
        "CALLSIGNAL_SERVER__BIND=injected-from-a-parent\n",
    )
    .unwrap();
    let out = migrate_status(&work);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_dotenv_in_the_working_directory_is_read() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(
        work.path().join(".env"),
        "CALLSIGNAL_DATABASE__URL=sqlite://from-dotenv.db?mode=rwc\n",
    )
    .unwrap();
    let out = migrate_status(work.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(work.path().join("from-dotenv.db").exists());
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[cfg(unix)]
fn open_dir(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The database, its WAL companions and the data directory are private, also when the data
/// directory already existed with mode 0755 and when the database lies elsewhere.
#[cfg(unix)]
#[tokio::test]
async fn the_database_and_data_directory_are_private() {
    use crate::helpers::{Backend, spawn_app_with};
    let root = tempfile::tempdir().unwrap();
    for (data_dir, db_dir) in [
        (root.path().join("a/data"), root.path().join("a/data")),
        (root.path().join("b/data"), root.path().join("b/elsewhere")),
    ] {
        open_dir(&data_dir);
        open_dir(&db_dir);
        let db = db_dir.join("calls.db");
        let url = format!("sqlite://{}?mode=rwc", db.display());
        let (d, u) = (data_dir.display().to_string(), url.clone());
        let app = spawn_app_with(Backend::Sqlite, move |f| {
            f.merge(("server.data_dir", d)).merge(("database.url", u))
        })
        .await;
        app.user("vera").await;
        assert_eq!(mode(&data_dir), 0o700, "{}", data_dir.display());
        for suffix in ["", "-wal", "-shm"] {
            let file = db_dir.join(format!("calls.db{suffix}"));
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
    }
}

/// `cargo test`/`cargo bench` of callsignal's package build callsignal with its dev-dependency's
/// `test-hooks` feature and rebuild `target/release/callsignal` to match: a bench target in the
/// package put a binary that alters SDP on request where `cargo build --release` puts the one to
/// deploy (found by running `cargo bench` and then the release binary). The load generator is a
/// package of its own that does not depend on callsignal.
#[test]
fn no_bench_rebuilds_the_server_binary_with_test_hooks() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let package = |name: &str| {
        packages
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("package {name} in the workspace"))
    };
    let benches: Vec<&str> = package("callsignal")["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bench"))
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        benches.is_empty(),
        "bench targets of callsignal's package rebuild its release binary with test hooks: {benches:?}"
    );
    let loadgen = package("loadgen");
    assert!(
        !loadgen["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "callsignal"),
        "the load generator must not depend on callsignal (it would turn on test hooks)"
    );
}

/// A binary built with the test hooks says so (`config check` and at start).
#[test]
fn a_binary_with_test_hooks_says_so() {
    let work = tempfile::tempdir().unwrap();
    let out = callsignal(work.path(), &["config", "check"])
        .output()
        .expect("binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("WARNING: this binary was built with the test-hooks feature"),
        "{stdout}"
    );
}

/// A value of the wrong type in the environment is named once, by its variable and its key
/// (it was repeated, and named `WS.HEARTBEAT_SECS`).
#[test]
fn a_bad_environment_value_is_named_by_its_variable_once() {
    let work = tempfile::tempdir().unwrap();
    let out = callsignal(work.path(), &["config", "check"])
        .env("CALLSIGNAL_WS__HEARTBEAT_SECS", "abc")
        .output()
        .expect("binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("environment variable CALLSIGNAL_WS__HEARTBEAT_SECS: ws.heartbeat_secs: "),
        "{stderr}"
    );
    assert_eq!(stderr.matches("\"abc\"").count(), 1, "{stderr}");
}
