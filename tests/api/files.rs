//! What the binary reads and writes on the local machine (issue 9 items E and F): `.env` only
//! from the working directory, and private modes on the database and data directory.

use std::process::Command;

/// `callsignal migrate status` in `dir`, with a clean `CALLSIGNAL_*` environment.
fn migrate_status(dir: &std::path::Path) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_callsignal"));
    cmd.args(["migrate", "status"]).current_dir(dir);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CALLSIGNAL_") {
            cmd.env_remove(k);
        }
    }
    cmd.output().expect("binary runs")
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
