//! The fuzzed functions and the properties checked on their results, shared by the cargo-fuzz
//! targets (`fuzz/fuzz_targets/*.rs`) and by `tests/fuzz_corpus.rs`, which replays every corpus
//! and regression input under `cargo test`. Each function panics when a property fails; a
//! parser that panics fails too.

// Each includer uses only part of it.
#![allow(dead_code)]

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use callsignal::auth::jwt::{Claims, TokenError, TokenIssuer};
use callsignal::auth::refresh::RefreshTokens;
use callsignal::config::Settings;
use callsignal::domain::{Password, Username};
use callsignal::http::request::parse_json;
use callsignal::http::routes::auth::{Credentials, RefreshRequest};
use callsignal::ws::protocol::{ClientMessage, MAX_REF_CHARS, parse};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The HMAC key of the fuzzed token issuer (fixed, so corpus inputs stay meaningful).
pub const KEY: &[u8; 32] = b"fuzz-key-fuzz-key-fuzz-key-0123!";

/// A fuzzed function: panics when its input breaks a property.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name: the directory names under `fuzz/corpus/` and `fuzz/regressions/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("ws_message", ws_message),
    ("rest_body", rest_body),
    ("tokens", tokens),
];

fn settings() -> &'static Settings {
    static S: OnceLock<Settings> = OnceLock::new();
    S.get_or_init(|| Settings::from_figment(Settings::defaults()).expect("default settings"))
}

/// `callsignal::ws::protocol::parse` on one text frame. Properties: a `ref` longer than
/// [`MAX_REF_CHARS`] is never accepted; `sdp.description` is an object with `type` offer/answer
/// and a string `sdp`; `ice.candidate` is `null` or an object with a string `candidate`;
/// relayed values are the sender's exact JSON text (a substring of the frame).
pub fn ws_message(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(inbound) = parse(text) else { return };
    if let Some(r) = &inbound.reference {
        assert!(r.chars().count() <= MAX_REF_CHARS, "long ref accepted");
    }
    match &inbound.message {
        ClientMessage::Sdp { description, .. } => {
            assert!(text.contains(description.get()), "description rewritten");
            let v: serde_json::Value =
                serde_json::from_str(description.get()).expect("description is JSON");
            assert!(
                matches!(v["type"].as_str(), Some("offer" | "answer")),
                "{v}"
            );
            assert!(v["sdp"].is_string(), "{v}");
        }
        ClientMessage::Ice { candidate, .. } => {
            assert!(text.contains(candidate.get()), "candidate rewritten");
            let v: serde_json::Value =
                serde_json::from_str(candidate.get()).expect("candidate is JSON");
            assert!(v.is_null() || v["candidate"].is_string(), "{v}");
        }
        _ => {}
    }
}

/// The JSON bodies of register/login (`{username, password}`) and refresh (`{refresh_token}`),
/// parsed with `callsignal::http::request::parse_json` as the routes do, then the checks that
/// follow in the handlers. Properties: an accepted username is 3..32 of `[a-z0-9_.-]`; an
/// accepted password is 8..128 characters; a refresh token this server did not mint is refused.
pub fn rest_body(data: &[u8]) {
    if let Ok(c) = parse_json::<Credentials>(data) {
        if let Ok(name) = Username::parse(&c.username) {
            let s = name.as_str();
            assert!((3..=32).contains(&s.len()), "{s:?}");
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'_' | b'.' | b'-')),
                "{s:?}"
            );
            assert_eq!(s, c.username.to_ascii_lowercase());
        }
        let chars = c.password.chars().count();
        if Password::parse(c.password).is_ok() {
            assert!((8..=128).contains(&chars), "{chars}");
        }
    }
    if let Ok(r) = parse_json::<RefreshRequest>(data) {
        refresh_token(r.refresh_token.as_bytes());
    }
}

/// A refresh token under [`KEY`]: only tokens minted here parse, and parsing is stable.
fn refresh_token(data: &[u8]) {
    static R: OnceLock<RefreshTokens> = OnceLock::new();
    let r = R.get_or_init(|| RefreshTokens::new(KEY));
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(p) = r.parse(text) {
        // Forging a 128-bit HMAC tag by mutation does not happen; a parse means a minted
        // token (a seed), whose session id is its first segment.
        let sid = text.split('.').next().unwrap_or_default();
        assert_eq!(uuid::Uuid::try_parse(sid).ok(), Some(p.session_id.0));
    }
}

/// Token parsing, the first byte choosing what the rest is:
/// - `0`: an access token for `TokenIssuer::verify`; never valid (nothing here can sign it);
/// - `1`: JWT claims JSON, signed here with [`KEY`] under an HS256 header, then verified: valid
///   only with `typ` = `access`, the configured `iss` and `aud`, and an `exp` not in the past;
/// - `2`: a refresh token for `RefreshTokens::parse`.
pub fn tokens(data: &[u8]) {
    static I: OnceLock<TokenIssuer> = OnceLock::new();
    let issuer = I.get_or_init(|| TokenIssuer::new(KEY, &settings().auth));
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let r = issuer.verify(text);
                assert!(r.is_err(), "unsigned input verified: {text:?}");
            }
        }
        1 => {
            let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
            let body = format!("{header}.{}", URL_SAFE_NO_PAD.encode(rest));
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(KEY).expect("HMAC key");
            mac.update(body.as_bytes());
            let token = format!(
                "{body}.{}",
                URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
            );
            let before = jsonwebtoken::get_current_timestamp();
            let verified = issuer.verify(&token);
            let after = jsonwebtoken::get_current_timestamp();
            match verified {
                Ok(id) => {
                    // Read the claims as the verifier does (into `Claims`): serde_json skips
                    // unknown fields without validating them, so they may hold bytes that a
                    // strict `Value` parse refuses (regressions/tokens/crash-c7d2…, harmless:
                    // only the key holder can sign such a token).
                    let claims: Claims =
                        serde_json::from_slice(rest).expect("verified claims are Claims");
                    let auth = &settings().auth;
                    assert_eq!(claims.typ, "access");
                    assert_eq!(claims.iss, auth.issuer);
                    assert_eq!(claims.aud, auth.audience);
                    assert_eq!(claims.sub, id.user_id.0);
                    assert_eq!(claims.sid, id.session_id.0);
                    // 5 s: the verifier's leeway (src/auth/jwt.rs).
                    let exp = claims.exp;
                    assert!(
                        exp.saturating_add(5) >= before,
                        "expired token accepted: exp {exp}"
                    );
                    assert!(
                        claims.nbf <= after.saturating_add(5),
                        "token not yet valid accepted"
                    );
                }
                Err(TokenError::Expired | TokenError::Invalid) => {}
            }
        }
        _ => refresh_token(rest),
    }
}
