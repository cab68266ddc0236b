//! The browser client, compiled into the binary (`src/web/`), served with a strict
//! Content-Security-Policy (no inline script or style), revalidated on every load so a new
//! binary's client is picked up at once.

use hyper::StatusCode;
use hyper::header::{self, HeaderValue};

use crate::http::error::ApiError;
use crate::http::response::{HttpResponse, bytes};

/// Policy for every page: same-origin scripts, styles, sockets and media only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; media-src 'self' blob:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

macro_rules! asset {
    ($path:literal, $file:literal, $ctype:literal) => {
        ($path, $ctype, include_str!(concat!("../../web/", $file)))
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the client: (path, content type, body).
const ASSETS: &[(&str, &str, &str)] = &[
    asset!("/", "index.html", "text/html; charset=utf-8"),
    asset!("/app.css", "app.css", "text/css; charset=utf-8"),
    ("/app.js", JS, include_str!("../../web/app.js")),
    ("/api.js", JS, include_str!("../../web/api.js")),
    ("/signaling.js", JS, include_str!("../../web/signaling.js")),
    ("/call.js", JS, include_str!("../../web/call.js")),
    ("/verify.js", JS, include_str!("../../web/verify.js")),
    ("/i18n.js", JS, include_str!("../../web/i18n.js")),
    ("/messages.js", JS, include_str!("../../web/messages.js")),
    ("/attention.js", JS, include_str!("../../web/attention.js")),
    ("/quality.js", JS, include_str!("../../web/quality.js")),
];

/// `GET /…` for the client's files.
pub fn asset(path: &str) -> Result<HttpResponse, ApiError> {
    let path = if path == "/index.html" { "/" } else { path };
    let (_, ctype, body) = ASSETS
        .iter()
        .find(|(p, _, _)| *p == path)
        .ok_or(ApiError::NotFound)?;
    let mut resp = bytes(StatusCode::OK, ctype, *body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}
