//! Built-in TLS: a full call over `wss://` and REST over HTTPS straight to the server (HTTP/2 by
//! ALPN), a certificate swapped on disk picked up without a restart, and `callsignal
//! healthcheck` over TLS.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use serde_json::{Value, json};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

use crate::calls::active_call;
use crate::helpers::{Backend, PASSWORD, WsClient, spawn_app_with};

/// A test CA and a way to issue server certificates for 127.0.0.1 from it.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "callsignal test CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// Writes a fresh leaf certificate and key for 127.0.0.1 (common name `cn`) to the paths;
    /// returns the certificate's DER.
    fn issue(&self, cn: &str, cert_path: &Path, key_path: &Path) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        // Write the key first: the server reloads once both files changed.
        std::fs::write(key_path, key.serialize_pem()).unwrap();
        std::fs::write(cert_path, cert.pem()).unwrap();
        cert.der().to_vec()
    }

    fn client_config(&self) -> tokio_rustls::rustls::ClientConfig {
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.cert.der().to_vec()))
            .unwrap();
        tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
    }
}

/// Connects over TLS; returns the stream and the certificate the server presented.
async fn tls_connect(
    ca: &Ca,
    addr: std::net::SocketAddr,
    alpn: &[&[u8]],
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Vec<u8>,
) {
    let mut config = ca.client_config();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (tls, presented)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_a_call_over_wss_rest_over_https_and_a_certificate_swap_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ca = Ca::new();
    let first = ca.issue("first", &cert_path, &key_path);
    let (c, k) = (cert_path.clone(), key_path.clone());
    let app = spawn_app_with(Backend::Sqlite, move |f| {
        f.merge(("server.tls.cert_path", c.display().to_string()))
            .merge(("server.tls.key_path", k.display().to_string()))
            .merge(("server.tls.reload_check_secs", 1))
    })
    .await;
    let root = reqwest::Certificate::from_der(ca.cert.der()).unwrap();
    let https = reqwest::Client::builder()
        .add_root_certificate(root)
        .build()
        .unwrap();
    let base = format!("https://{}", app.addr);
    // REST over HTTPS, HTTP/2 by ALPN.
    let mut tokens = vec![];
    for name in ["alice", "bob"] {
        let r = https
            .post(format!("{base}/api/auth/register"))
            .json(&json!({"username": name, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        assert_eq!(r.version(), reqwest::Version::HTTP_2, "h2 by ALPN");
        let v: Value = https
            .post(format!("{base}/api/auth/login"))
            .json(&json!({"username": name, "password": PASSWORD}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens.push(v["access_token"].as_str().unwrap().to_owned());
    }
    // Plain HTTP on the TLS port is not served.
    assert!(
        app.http
            .get(format!("http://{}/healthz", app.addr))
            .send()
            .await
            .map(|r| !r.status().is_success())
            .unwrap_or(true)
    );
    // A full call over wss://.
    let mut a = wss_client(&ca, app.addr, &tokens[0]).await;
    let mut b = wss_client(&ca, app.addr, &tokens[1]).await;
    let call = active_call(&mut a, &mut b, "bob").await;
    a.send(
        json!({"type": "sdp", "call_id": call, "description": {"type": "offer", "sdp": "v=0 tls"}}),
    )
    .await;
    assert_eq!(b.expect("sdp").await["description"]["sdp"], "v=0 tls");
    b.send(json!({"type": "call.hangup", "call_id": call}))
        .await;
    assert_eq!(a.expect("call.ended").await["reason"], "hangup");
    // Swap the certificate on disk: new connections get the new one, without a restart.
    let (_, presented) = tls_connect(&ca, app.addr, &[b"http/1.1"]).await;
    assert_eq!(presented, first);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = ca.issue("second", &cert_path, &key_path);
    assert_ne!(first, second);
    let mut swapped = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_, presented) = tls_connect(&ca, app.addr, &[b"http/1.1"]).await;
        if presented == second {
            swapped = true;
            break;
        }
    }
    assert!(swapped, "the renewed certificate was picked up");
    // `callsignal healthcheck` speaks TLS to its own server, pinning the configured certificate.
    let mut probe = (*app.state.settings).clone();
    probe.server.bind = app.addr;
    callsignal::probe::healthcheck(&probe, Duration::from_secs(5))
        .await
        .expect("healthy over TLS");
    probe.server.tls.cert_path = Some(dir.path().join("other.pem"));
    ca.issue(
        "other",
        &dir.path().join("other.pem"),
        &dir.path().join("other.key"),
    );
    let err = callsignal::probe::healthcheck(&probe, Duration::from_secs(5))
        .await
        .expect_err("a server presenting another certificate is not healthy");
    assert!(format!("{err:#}").contains("TLS handshake"), "{err:#}");
    // The open socket survived the swap.
    a.send(json!({"type": "ping"})).await;
    a.expect("pong").await;
}

/// A WebSocket over TLS to `addr`, trusting the test CA, after `hello` + `welcome`.
async fn wss_client(ca: &Ca, addr: std::net::SocketAddr, access: &str) -> WsClient {
    let connector = tokio_tungstenite::Connector::Rustls(Arc::new(ca.client_config()));
    let (stream, _) = tokio_tungstenite::connect_async_tls_with_config(
        format!("wss://{addr}/ws"),
        None,
        false,
        Some(connector),
    )
    .await
    .expect("WebSocket over TLS");
    let mut c = WsClient {
        stream,
        welcome: Value::Null,
    };
    c.send(json!({"type": "hello", "token": access})).await;
    c.welcome = c.expect("welcome").await;
    c
}

/// The first request's deadline runs from the accept, through the TLS handshake: a client that
/// finishes its handshake late and then sends nothing is closed when the deadline after the
/// accept passes — not a whole deadline after its handshake (which gave a slow client the
/// deadline twice over: 2.5 s of handshake, then 3 s more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_the_first_request_deadline_counts_the_handshake() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ca = Ca::new();
    ca.issue("deadline", &cert_path, &key_path);
    let (c, k) = (cert_path.clone(), key_path.clone());
    let app = spawn_app_with(Backend::Sqlite, move |f| {
        f.merge(("server.tls.cert_path", c.display().to_string()))
            .merge(("server.tls.key_path", k.display().to_string()))
            .merge(("server.header_read_timeout_secs", 3))
            .merge(("server.idle_timeout_secs", 3))
    })
    .await;
    let started = std::time::Instant::now();
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let name = ServerName::IpAddress(app.addr.ip().into());
    let mut tls = TlsConnector::from(Arc::new(ca.client_config()))
        .connect(name, tcp)
        .await
        .expect("a handshake inside the deadline is served");
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut buf)).await;
    let took = started.elapsed();
    assert!(read.is_ok(), "closed within 10 s");
    assert!(buf.is_empty(), "no answer to no request");
    // The deadline (3 s after the accept) plus at most the close's grace (1 s) and some
    // slack; a deadline counted from the handshake's end would close at 5.5 s at the earliest.
    assert!(
        took < Duration::from_millis(4700),
        "closed {took:?} after the accept"
    );
}
