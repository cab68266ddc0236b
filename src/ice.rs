//! ICE server lists for clients: the configured static servers, plus TURN servers with
//! time-limited credentials (the "TURN REST API" scheme coturn implements with
//! `use-auth-secret`: username `<expiry>:<user id>`, password base64(HMAC-SHA1(secret, username))).

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Serialize;

use crate::config::IceSettings;
use crate::domain::UserId;

/// One `RTCIceServer` as the browser wants it.
#[derive(Debug, Clone, Serialize)]
pub struct IceServer {
    /// `stun:`/`turn:` URLs.
    pub urls: Vec<String>,
    /// TURN username.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN credential.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The servers `user` should use now.
pub fn servers_for(settings: &IceSettings, user: UserId) -> Vec<IceServer> {
    let mut out: Vec<IceServer> = settings
        .servers
        .iter()
        .map(|s| IceServer {
            urls: s.urls.clone(),
            username: s.username.clone(),
            credential: s.credential.as_ref().map(|c| c.expose().to_owned()),
        })
        .collect();
    if let (Some(secret), false) = (&settings.turn_secret, settings.turn_urls.is_empty()) {
        let expiry = chrono::Utc::now().timestamp() + settings.ttl_secs as i64;
        let username = format!("{expiry}:{user}");
        if let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(secret.expose().as_bytes()) {
            mac.update(username.as_bytes());
            let credential =
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
            out.push(IceServer {
                urls: settings.turn_urls.clone(),
                username: Some(username),
                credential: Some(credential),
            });
        }
    }
    out
}
