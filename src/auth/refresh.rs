//! Refresh tokens: `<session id>.<256 random bits>.<tag>`, where the tag is an HMAC of the first
//! two parts under a key derived from the JWT key. Only the SHA-256 of the current token is
//! stored. The tag lets the server tell a *spent* token of its own (valid tag, hash differs:
//! reuse, so the session is revoked) from garbage (bad tag: just refused), so that nobody can
//! revoke someone else's session by guessing.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::domain::SessionId;

/// Random bytes per token.
const RANDOM_BYTES: usize = 32;
/// Tag bytes kept (128 bits).
const TAG_BYTES: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// Mints and checks refresh tokens.
pub struct RefreshTokens {
    tag_key: [u8; 32],
}

/// A token as parsed from the client, with its authenticity checked.
pub struct PresentedToken {
    /// The session the token names.
    pub session_id: SessionId,
    /// SHA-256 hex of the whole token, to compare with the stored hash.
    pub hash: String,
}

impl RefreshTokens {
    /// Derives the tag key from the JWT key.
    pub fn new(jwt_key: &[u8]) -> Self {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(jwt_key).unwrap_or_else(|_| {
            <HmacSha256 as Mac>::new_from_slice(&[0u8; 32]).expect("32-byte HMAC key")
        });
        mac.update(b"callsignal refresh-token tag v1");
        Self {
            tag_key: mac.finalize().into_bytes().into(),
        }
    }

    fn tag(&self, body: &str) -> Vec<u8> {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.tag_key).expect("32-byte HMAC key");
        mac.update(body.as_bytes());
        mac.finalize().into_bytes()[..TAG_BYTES].to_vec()
    }

    /// A new token for `session`, and the hash to store.
    pub fn mint(&self, session: SessionId) -> (String, String) {
        let mut random = [0u8; RANDOM_BYTES];
        rand::rng().fill_bytes(&mut random);
        let body = format!("{}.{}", session.0.simple(), URL_SAFE_NO_PAD.encode(random));
        let token = format!("{body}.{}", URL_SAFE_NO_PAD.encode(self.tag(&body)));
        let hash = hash_token(&token);
        (token, hash)
    }

    /// Parses a token and checks its tag; `None` for anything this server did not mint.
    pub fn parse(&self, token: &str) -> Option<PresentedToken> {
        let (body, tag) = token.rsplit_once('.')?;
        let (sid, _) = body.split_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        if !bool::from(self.tag(body).ct_eq(&tag)) {
            return None;
        }
        Some(PresentedToken {
            session_id: SessionId(Uuid::try_parse(sid).ok()?),
            hash: hash_token(token),
        })
    }
}

/// SHA-256 hex of a token.
fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Constant-time comparison of two stored hashes.
pub fn hashes_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_parse_and_forgeries_do_not() {
        let r = RefreshTokens::new(&[1u8; 32]);
        let s = SessionId::new();
        let (t, h) = r.mint(s);
        let p = r.parse(&t).expect("own token parses");
        assert_eq!(p.session_id, s);
        assert!(hashes_equal(&p.hash, &h));
        let mut forged = t.clone();
        forged.replace_range(40..41, if &t[40..41] == "A" { "B" } else { "A" });
        assert!(r.parse(&forged).is_none());
        assert!(RefreshTokens::new(&[2u8; 32]).parse(&t).is_none());
    }
}
