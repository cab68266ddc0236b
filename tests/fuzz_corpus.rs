//! Replays every input of the fuzz corpora (`fuzz/corpus/<target>/`) and every crash input ever
//! found (`fuzz/regressions/<target>/`) through the same harness the cargo-fuzz targets run
//! (`fuzz/harness.rs`), so `cargo test` fails if any of them panics again or breaks a property.

#![allow(missing_docs, unreachable_pub, clippy::unwrap_used)]

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str) -> usize {
    let run = harness::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, f)| *f)
        .expect("known target");
    let mut n = 0;
    for kind in ["corpus", "regressions"] {
        for path in inputs(kind, target) {
            let data = std::fs::read(&path).expect("readable input");
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{} fails", path.display());
            n += 1;
        }
    }
    n
}

#[test]
fn ws_message_corpus() {
    assert!(
        replay("ws_message") >= 12,
        "the ws_message seed corpus is missing"
    );
}

#[test]
fn rest_body_corpus() {
    assert!(
        replay("rest_body") >= 12,
        "the rest_body seed corpus is missing"
    );
}

#[test]
fn tokens_corpus() {
    assert!(replay("tokens") >= 12, "the tokens seed corpus is missing");
}

#[test]
fn every_target_is_replayed() {
    let names: Vec<_> = harness::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["ws_message", "rest_body", "tokens"]);
    for dir in ["corpus", "regressions"] {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(dir);
        for entry in std::fs::read_dir(&root).into_iter().flatten() {
            let name = entry.expect("entry").file_name();
            let name = name.to_string_lossy();
            assert!(
                names.contains(&name.as_ref()),
                "fuzz/{dir}/{name} has no replay"
            );
        }
    }
}

/// The harness's properties do fire, so the replays above can fail: a valid token presented
/// where none can be valid is caught, and a correctly signed, unexpired one passes mode 1.
#[test]
fn the_harness_checks_properties() {
    use callsignal::auth::jwt::TokenIssuer;
    use callsignal::config::Settings;
    use callsignal::domain::{SessionId, UserId};
    let settings = Settings::from_figment(Settings::defaults()).unwrap();
    let token =
        TokenIssuer::new(harness::KEY, &settings.auth).issue(UserId::new(), SessionId::new());
    let mut input = vec![0u8];
    input.extend_from_slice(token.as_bytes());
    let caught = std::panic::catch_unwind(|| harness::tokens(&input));
    assert!(
        caught.is_err(),
        "mode 0 accepted a valid token without complaint"
    );

    let claims = format!(
        r#"{{"iss":"{}","aud":"{}","sub":"0b7c5f0e-4a55-4c55-9c7b-3c8f1b2f6a10","sid":"0b7c5f0e-4a55-4c55-9c7b-3c8f1b2f6a11","typ":"access","iat":1,"nbf":1,"exp":4102444800,"jti":"0b7c5f0e-4a55-4c55-9c7b-3c8f1b2f6a12"}}"#,
        settings.auth.issuer, settings.auth.audience
    );
    let mut input = vec![1u8];
    input.extend_from_slice(claims.as_bytes());
    harness::tokens(&input);
}
