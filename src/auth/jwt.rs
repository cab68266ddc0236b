//! Access tokens: HS256 JWTs with required `exp iat nbf iss aud sub`, the session id (`sid`)
//! and a token type (`typ`). Every other algorithm, `none` included, is refused.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::AuthSettings;
use crate::domain::{SessionId, UserId};

/// Shortest accepted HMAC key: HS256 wants a key at least as long as its output.
pub const MIN_SECRET_BYTES: usize = 32;

/// Clock skew tolerated on `exp`/`nbf`; small, because tokens are short-lived.
const LEEWAY_SECS: u64 = 5;

/// The only token type this issuer accepts as an access token.
const ACCESS_TYPE: &str = "access";

/// Claims of an access token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// The user id.
    pub sub: Uuid,
    /// The login session id.
    pub sid: Uuid,
    /// Token type, always `access`.
    pub typ: String,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Not before (Unix seconds).
    pub nbf: u64,
    /// Expires at (Unix seconds).
    pub exp: u64,
    /// Unique token id.
    pub jti: Uuid,
}

/// Why a token was refused; maps to `invalid_token` / `token_expired`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Malformed, forged, wrongly signed, wrong algorithm, issuer, audience or type.
    #[error("invalid token")]
    Invalid,
    /// Past its `exp`.
    #[error("token expired")]
    Expired,
}

/// The verified identity inside a valid token.
#[derive(Debug, Clone, Copy)]
pub struct TokenIdentity {
    /// `sub`.
    pub user_id: UserId,
    /// `sid`.
    pub session_id: SessionId,
}

/// Issues and verifies access tokens with one key.
pub struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    ttl_secs: u64,
}

impl TokenIssuer {
    /// Builds an issuer for `key` (at least [`MIN_SECRET_BYTES`]).
    pub fn new(key: &[u8], settings: &AuthSettings) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_required_spec_claims(&["exp", "iat", "nbf", "iss", "aud", "sub"]);
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        Self {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            validation,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            ttl_secs: settings.access_token_ttl_secs,
        }
    }

    /// Lifetime of issued tokens, in seconds.
    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// Signs a token for `user` in `session`.
    pub fn issue(&self, user: UserId, session: SessionId) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user.0,
            sid: session.0,
            typ: ACCESS_TYPE.into(),
            iat: now,
            nbf: now,
            exp: now + self.ttl_secs,
            jti: Uuid::new_v4(),
        };
        // HS256 signing of a serialisable struct with an HMAC key cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default()
    }

    /// Verifies signature, algorithm, required claims, issuer, audience, time and type.
    pub fn verify(&self, token: &str) -> Result<TokenIdentity, TokenError> {
        if header_names_crit(token) {
            return Err(TokenError::Invalid);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        // `crit` lists header extensions the recipient must understand or reject the token
        // (RFC 7515 §4.1.11); callsignal understands none, and an empty list is itself invalid.
        if data.header.alg != Algorithm::HS256
            || data.header.crit.is_some()
            || data.claims.typ != ACCESS_TYPE
        {
            return Err(TokenError::Invalid);
        }
        Ok(TokenIdentity {
            user_id: UserId(data.claims.sub),
            session_id: SessionId(data.claims.sid),
        })
    }
}

/// Whether the token's JOSE header has a `crit` member at all — `"crit": null` included, which
/// `Header`'s `Option` reads as absent (RFC 7515 §4.1.11 makes it a non-empty array, and
/// callsignal understands no extension, so any `crit` makes the token invalid). A header that
/// does not decode is left to `jsonwebtoken::decode` to refuse.
fn header_names_crit(token: &str) -> bool {
    use base64::Engine;
    let Some(segment) = token.split('.').next() else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .ok()
        .and_then(|bytes| {
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes).ok()
        })
        .is_some_and(|header| header.contains_key("crit"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn issuer(key: &[u8]) -> TokenIssuer {
        let s = Settings::from_figment(Settings::defaults()).expect("defaults");
        TokenIssuer::new(key, &s.auth)
    }

    #[test]
    fn round_trip() {
        let i = issuer(&[7u8; 32]);
        let (u, s) = (UserId::new(), SessionId::new());
        let id = i.verify(&i.issue(u, s)).expect("valid");
        assert_eq!((id.user_id, id.session_id), (u, s));
    }

    /// A correctly signed token with a `crit` header (extensions the recipient must understand,
    /// RFC 7515 §4.1.11) was accepted.
    #[test]
    fn a_token_with_critical_header_extensions_is_invalid() {
        let key = [7u8; 32];
        let i = issuer(&key);
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            iss: i.issuer.clone(),
            aud: i.audience.clone(),
            sub: UserId::new().0,
            sid: SessionId::new().0,
            typ: ACCESS_TYPE.into(),
            iat: now,
            nbf: now,
            exp: now + 60,
            jti: Uuid::new_v4(),
        };
        let sign = |crit: Option<Vec<String>>| {
            let mut header = Header::new(Algorithm::HS256);
            header.crit = crit;
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&key)).expect("signs")
        };
        assert!(
            i.verify(&sign(None)).is_ok(),
            "the same token without crit is valid"
        );
        for crit in [vec!["exp".to_owned()], vec!["b64".to_owned()], vec![]] {
            assert_eq!(
                i.verify(&sign(Some(crit.clone()))).err(),
                Some(TokenError::Invalid),
                "crit {crit:?}"
            );
        }
        // `"crit": null` (read as absent by `Header`), signed by hand.
        use base64::Engine;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let valid = sign(None);
        let payload = valid.split('.').nth(1).expect("payload");
        let head = b64(br#"{"alg":"HS256","typ":"JWT","crit":null}"#);
        let input = format!("{head}.{payload}");
        let signature = jsonwebtoken::crypto::sign(
            input.as_bytes(),
            &EncodingKey::from_secret(&key),
            Algorithm::HS256,
        )
        .expect("signs");
        assert_eq!(
            i.verify(&format!("{input}.{signature}")).err(),
            Some(TokenError::Invalid),
            "crit: null"
        );
    }

    #[test]
    fn other_key_is_invalid() {
        let t = issuer(&[7u8; 32]).issue(UserId::new(), SessionId::new());
        assert_eq!(
            issuer(&[8u8; 32]).verify(&t).err(),
            Some(TokenError::Invalid)
        );
    }
}
