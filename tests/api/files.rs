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
