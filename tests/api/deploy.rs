//! The deployment, run for real (issue 10): the repository's own `docker/nginx.conf` in front of
//! the server with a certificate made here (REST over HTTPS, a full call over WSS, the client
//! address the server sees), `turnserver` with `docker/turnserver.conf` and credentials from
//! `GET /api/ice-servers` (`turnutils_uclient` allocates and relays), the compose file and
//! Dockerfile, and the `callsignal` binary's CLI and start-up errors.
//!
//! Every test needs its programs (nginx, openssl, coturn, docker-compose): without them it prints
//! a loud SKIPPED notice, and with `CI` set it fails instead (`.ci/run` installs them).

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::calls::active_call;
use crate::helpers::{Backend, PASSWORD, TEST_SECRET, TestApp, WsClient, spawn_app_with};

/// The repository root.
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Whether `program` is installed; a missing one skips loudly, and fails in CI.
pub(crate) fn require(program: &str, package: &str, what: &str) -> bool {
    if crate::browser::have(program) {
        return true;
    }
    let why = format!("`{program}` is not installed (apt-get install -y {package})");
    if std::env::var("CI").is_ok() {
        panic!("{what} cannot run in CI: {why}");
    }
    eprintln!("\n*** SKIPPED {what}: {why} ***\n");
    false
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port free for both UDP and TCP on 127.0.0.1 (TURN listens on both).
fn free_udp_tcp_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP");
}

/// What a program run with a deadline did.
pub(crate) struct Ran {
    /// Exit code (`None`: killed by a signal or at the deadline).
    pub code: Option<i32>,
    /// It was still running at the deadline (and was killed).
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    fn success(&self) -> bool {
        self.code == Some(0)
    }
    fn output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs `cmd` to completion, killing it after `secs`.
pub(crate) fn run_with_deadline(mut cmd: Command, secs: u64) -> Ran {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let until = Instant::now() + Duration::from_secs(secs);
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= until {
            timed_out = true;
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ran {
        code: status.code(),
        timed_out,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// Stops a daemon-like child with SIGTERM (Nginx's workers outlive a SIGKILLed master), then
/// SIGKILL if it lingers.
fn stop_child(child: &mut Child) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------------------------
// A self-signed certificate for `localhost` and 127.0.0.1, made with openssl.

/// A certificate and key (PEM) in a directory of their own.
pub(crate) struct TestCert {
    _dir: tempfile::TempDir,
    /// `fullchain.pem` (the certificate).
    pub cert: PathBuf,
    /// `privkey.pem`.
    pub key: PathBuf,
}

impl TestCert {
    /// A fresh P-256 certificate (an end-entity certificate, as Let's Encrypt issues).
    pub(crate) fn new() -> TestCert {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (
            dir.path().join("fullchain.pem"),
            dir.path().join("privkey.pem"),
        );
        let ran = run_with_deadline(
            {
                let mut c = Command::new("openssl");
                c.args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=localhost",
                    "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-addext",
                    "basicConstraints=critical,CA:FALSE",
                    "-addext",
                    "extendedKeyUsage=serverAuth",
                    "-keyout",
                ])
                .arg(&key)
                .arg("-out")
                .arg(&cert);
                c
            },
            30,
        );
        assert!(ran.success(), "openssl req failed: {}", ran.output());
        TestCert {
            _dir: dir,
            cert,
            key,
        }
    }

    fn pem(&self) -> Vec<u8> {
        std::fs::read(&self.cert).unwrap()
    }

    /// base64(SHA-256(SubjectPublicKeyInfo)): what Chromium's
    /// `--ignore-certificate-errors-spki-list` takes.
    pub(crate) fn spki_sha256_base64(&self) -> String {
        let mut c = Command::new("openssl");
        c.args(["x509", "-noout", "-pubkey", "-in"]).arg(&self.cert);
        let ran = run_with_deadline(c, 30);
        assert!(ran.success(), "openssl x509 failed: {}", ran.output());
        let b64: String = ran
            .stdout
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .unwrap();
        use sha2::Digest;
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(der))
    }

    /// A rustls client configuration trusting only this certificate.
    pub(crate) fn rustls(&self) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&self.pem()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    /// An HTTPS client trusting only this certificate, resolving `localhost` to 127.0.0.1 and,
    /// if given, connecting from `local` (another loopback address, to be a distinct client).
    pub(crate) fn client(&self, local: Option<IpAddr>) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&self.pem()).unwrap())
            .redirect(reqwest::redirect::Policy::none())
            .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], 0)));
        if let Some(ip) = local {
            b = b.local_address(ip);
        }
        b.build().unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// Nginx with the repository's docker/nginx.conf.

/// The placeholders of docker/nginx.conf (compose.yaml substitutes the same names).
pub(crate) const NGINX_PLACEHOLDERS: [&str; 6] = [
    "SERVER_NAME",
    "HTTP_LISTEN",
    "HTTPS_LISTEN",
    "CALLSIGNAL_UPSTREAM",
    "TLS_DIR",
    "ACME_WEBROOT",
];

/// docker/nginx.conf with its placeholders substituted; nothing else is changed.
pub(crate) fn render_nginx_conf(values: &[(&str, String)]) -> String {
    let mut conf = std::fs::read_to_string(Path::new(REPO).join("docker/nginx.conf")).unwrap();
    for (name, value) in values {
        assert!(
            NGINX_PLACEHOLDERS.contains(name),
            "unknown placeholder {name}"
        );
        conf = conf.replace(&format!("${{{name}}}"), value);
    }
    assert!(
        !conf.contains("${"),
        "docker/nginx.conf has a placeholder the test (and compose.yaml) does not fill"
    );
    conf
}

/// A running Nginx, on loopback, with the repository's configuration.
pub(crate) struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    /// Plain-HTTP listener (ACME challenges, redirect).
    pub http: SocketAddr,
    /// HTTPS listener.
    pub https: SocketAddr,
    /// The ACME webroot.
    pub webroot: PathBuf,
}

impl Nginx {
    /// Starts Nginx in front of `upstream` with `cert` (non-root friendly: everything it writes
    /// lives in its own temporary directory).
    pub(crate) fn start(upstream: SocketAddr, cert: &TestCert) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        // Nginx workers run as `nobody` when the master is root: let them read the webroot.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = |name: &str| dir.path().join(name);
        let tls = p("tls");
        std::fs::create_dir_all(&tls).unwrap();
        std::fs::copy(&cert.cert, tls.join("fullchain.pem")).unwrap();
        std::fs::copy(&cert.key, tls.join("privkey.pem")).unwrap();
        let webroot = p("webroot");
        std::fs::create_dir_all(webroot.join(".well-known/acme-challenge")).unwrap();
        for d in [
            &webroot,
            &webroot.join(".well-known"),
            &webroot.join(".well-known/acme-challenge"),
        ] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let (http_port, https_port) = (free_tcp_port(), free_tcp_port());
        let site = render_nginx_conf(&[
            ("SERVER_NAME", "localhost".into()),
            ("HTTP_LISTEN", format!("127.0.0.1:{http_port}")),
            ("HTTPS_LISTEN", format!("127.0.0.1:{https_port}")),
            ("CALLSIGNAL_UPSTREAM", upstream.to_string()),
            ("TLS_DIR", tls.display().to_string()),
            ("ACME_WEBROOT", webroot.display().to_string()),
        ]);
        std::fs::write(p("callsignal.conf"), site).unwrap();
        let d = dir.path().display();
        // The main configuration a distribution's /etc/nginx/nginx.conf would be; the repo's
        // file is included as it is included from conf.d/.
        let main = format!(
            "worker_processes 1;\n\
             error_log {d}/error.log info;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n\
               access_log {d}/access.log;\n\
               client_body_temp_path {d}/client_body;\n\
               proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n\
               scgi_temp_path {d}/scgi;\n\
               include {d}/callsignal.conf;\n\
             }}\n"
        );
        std::fs::write(p("nginx.conf"), main).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(p("nginx.conf"))
            .arg("-e")
            .arg(p("error.log"))
            .arg("-g")
            .arg(format!("daemon off; pid {d}/nginx.pid;"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let mut nginx = Nginx {
            child,
            http: SocketAddr::from(([127, 0, 0, 1], http_port)),
            https: SocketAddr::from(([127, 0, 0, 1], https_port)),
            webroot,
            dir,
        };
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = nginx.child.try_wait().unwrap() {
                panic!(
                    "nginx exited ({status}) with the repo's configuration:\n{}",
                    nginx.error_log()
                );
            }
            if std::net::TcpStream::connect(nginx.https).is_ok()
                && std::net::TcpStream::connect(nginx.http).is_ok()
            {
                return nginx;
            }
            assert!(
                Instant::now() < until,
                "nginx did not listen: {}",
                nginx.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `https://localhost:<port>{path}`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.https.port())
    }

    /// Nginx's error log so far.
    pub(crate) fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// Whether the tools of the Nginx tests are here (skips loudly / fails in CI otherwise).
fn nginx_tools(what: &str) -> bool {
    require("nginx", "nginx", what) && require("openssl", "openssl", what)
}

/// A test server as it runs behind Nginx.
async fn app_behind_proxy(configure: impl FnOnce(figment::Figment) -> figment::Figment) -> TestApp {
    spawn_app_with(Backend::Sqlite, |f| {
        configure(
            f.merge(("server.trusted_proxies", vec!["127.0.0.1/32"]))
                .merge(("server.max_connections_per_address", 0)),
        )
    })
    .await
}

/// `POST {base}/api/auth/register` (optionally with a forged X-Forwarded-For); the status.
async fn register(http: reqwest::Client, base: String, name: &str, forged: Option<&str>) -> u16 {
    let mut req = http
        .post(format!("{base}/api/auth/register"))
        .json(&json!({"username": name, "password": PASSWORD}));
    if let Some(f) = forged {
        req = req.header("x-forwarded-for", f);
    }
    req.send().await.unwrap().status().as_u16()
}

/// A WebSocket through Nginx (`wss://localhost:<port>/ws`), optionally with an `Origin`.
async fn wss(
    nginx: &Nginx,
    cert: &TestCert,
    origin: Option<&str>,
) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("wss://localhost:{}/ws", nginx.https.port())
        .into_client_request()
        .unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    let (stream, _) = tokio_tungstenite::connect_async_tls_with_config(
        req,
        None,
        false,
        Some(Connector::Rustls(cert.rustls())),
    )
    .await?;
    Ok(WsClient {
        stream,
        welcome: Value::Null,
    })
}

async fn hello(mut c: WsClient, token: &str) -> WsClient {
    c.send(json!({"type": "hello", "token": token})).await;
    let welcome = c.recv().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    c.welcome = welcome;
    c
}

/// Registers (201 expected) and logs in over `http` at `base`; returns the access token.
async fn register_login(http: &reqwest::Client, base: &str, name: &str) -> String {
    let body = json!({"username": name, "password": PASSWORD});
    let r = http
        .post(format!("{base}/api/auth/register"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "register {name}");
    let r = http
        .post(format!("{base}/api/auth/login"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "login {name}");
    let v: Value = r.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_owned()
}

/// Port 80 of the repo's configuration: ACME challenges are served from the webroot (never
/// redirected), everything else is redirected to HTTPS; `/metrics` is not published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_nginx_serves_acme_challenges_redirects_the_rest_and_hides_metrics() {
    if !nginx_tools("the Nginx deployment test") {
        return;
    }
    let app = app_behind_proxy(|f| f).await;
    let cert = TestCert::new();
    let nginx = Nginx::start(app.addr, &cert);
    let http = cert.client(None);

    let token = "Xq0-test_token";
    let file = nginx.webroot.join(".well-known/acme-challenge").join(token);
    std::fs::write(&file, "Xq0-test_token.thumbprint").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let plain = format!("http://localhost:{}", nginx.http.port());
    let r = http
        .get(format!("{plain}/.well-known/acme-challenge/{token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "ACME challenge over plain HTTP: {}",
        nginx.error_log()
    );
    assert_eq!(r.text().await.unwrap(), "Xq0-test_token.thumbprint");
    let r = http
        .get(format!("{plain}/.well-known/acme-challenge/unknown"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "a missing challenge is 404, not a redirect"
    );

    let r = http.get(format!("{plain}/ws?x=1")).send().await.unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], "https://localhost/ws?x=1");
    let r = http.get(format!("{plain}/")).send().await.unwrap();
    assert_eq!(r.status(), 301);

    // The server itself answers /metrics to loopback; through Nginx it does not exist.
    assert_eq!(app.get("/metrics", None).await.status(), 200);
    for path in ["/metrics", "/metrics/", "//metrics"] {
        let r = http.get(nginx.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path} through Nginx");
        assert!(!r.text().await.unwrap().contains("callsignal_"), "{path}");
    }
    let r = http.get(nginx.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().contains_key("strict-transport-security"),
        "HSTS on HTTPS"
    );
}

/// REST over HTTPS (HTTP/2) and a full call over WSS, through the repo's Nginx configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_nginx_carries_rest_over_https_and_a_call_over_wss() {
    if !nginx_tools("the Nginx deployment test") {
        return;
    }
    let app = app_behind_proxy(|f| f).await;
    let cert = TestCert::new();
    let nginx = Nginx::start(app.addr, &cert);
    let http = cert.client(None);
    let base = nginx.url("");

    let r = http.get(nginx.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "HTTP/2 by ALPN");
    let page = http.get(nginx.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.text().await.unwrap().contains("<html"),
        "the client page"
    );

    let alice = register_login(&http, &base, "alice").await;
    let bob = register_login(&http, &base, "bob").await;
    let me: Value = http
        .get(nginx.url("/api/me"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["username"], "alice");

    let mut a = hello(
        wss(&nginx, &cert, None).await.expect("wss through nginx"),
        &alice,
    )
    .await;
    let mut b = hello(
        wss(&nginx, &cert, None).await.expect("wss through nginx"),
        &bob,
    )
    .await;
    let call_id = active_call(&mut a, &mut b, "bob").await;
    let offer = json!({"type": "offer", "sdp": "v=0\r\na=fingerprint:sha-256 AA:BB\r\n"});
    a.send(json!({"type": "sdp", "call_id": call_id, "description": offer}))
        .await;
    assert_eq!(b.expect("sdp").await["description"], offer);
    b.send(json!({"type": "sdp", "call_id": call_id, "description": {"type": "answer", "sdp": "v=0\r\nanswer"}}))
        .await;
    assert_eq!(a.expect("sdp").await["description"]["type"], "answer");
    let cand = json!({"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host", "sdpMid": "0", "sdpMLineIndex": 0});
    a.send(json!({"type": "ice", "call_id": call_id, "candidate": cand}))
        .await;
    assert_eq!(b.expect("ice").await["candidate"], cand);
    a.send(json!({"type": "call.hangup", "call_id": call_id}))
        .await;
    for c in [&mut a, &mut b] {
        let e = c.expect("call.ended").await;
        assert_eq!(e["reason"], "hangup", "{e}");
    }
    let calls: Value = http
        .get(nginx.url("/api/calls"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        calls.to_string().contains(&call_id),
        "history over HTTPS: {calls}"
    );
}

/// Behind Nginx the server sees the client's address (Nginx's X-Forwarded-For, believed because
/// Nginx is in `server.trusted_proxies`) and the `https` scheme (X-Forwarded-Proto, so a browser's
/// `Origin: https://host:port` passes the same-origin check, the port kept by `Host $http_host`).
///
/// Observable: the registration limit, which is kept per client address. Clients connect to
/// Nginx from distinct loopback addresses (127.0.0.2, 127.0.0.3); Nginx always reaches the server
/// from 127.0.0.1. A client's own forged X-Forwarded-For changes nothing, through Nginx or
/// straight to the server from an untrusted address.
///
/// Depends on `server.trusted_proxies` (main branch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_nginx_passes_the_client_address_and_https_to_the_server() {
    if !nginx_tools("the Nginx deployment test") {
        return;
    }
    let app = app_behind_proxy(|f| f.merge(("auth.register_per_address_per_hour", 2))).await;
    let cert = TestCert::new();
    let nginx = Nginx::start(app.addr, &cert);
    let base = nginx.url("");
    let two = cert.client(Some("127.0.0.2".parse().unwrap()));
    let three = cert.client(Some("127.0.0.3".parse().unwrap()));
    assert_eq!(
        register(two.clone(), base.clone(), "user_a", None).await,
        201
    );
    assert_eq!(
        register(two.clone(), base.clone(), "user_b", None).await,
        201
    );
    assert_eq!(
        register(two.clone(), base.clone(), "user_c", None).await,
        429,
        "127.0.0.2 used its allowance"
    );
    assert_eq!(
        register(two.clone(), base.clone(), "user_d", Some("127.0.0.9")).await,
        429,
        "a forged X-Forwarded-For through Nginx does not make a new client"
    );
    assert_eq!(
        register(three.clone(), base.clone(), "user_e", None).await,
        201,
        "another client behind the same proxy has its own allowance \
         (the server keys on the address Nginx saw, not on Nginx)"
    );
    // Straight to the server from an address that is not a trusted proxy: its X-Forwarded-For
    // is ignored (it claims to be the exhausted 127.0.0.2, and is let through as 127.0.0.4).
    let four = reqwest::Client::builder()
        .local_address("127.0.0.4".parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    assert_eq!(
        register(
            four,
            format!("http://{}", app.addr),
            "user_f",
            Some("127.0.0.2")
        )
        .await,
        201,
        "X-Forwarded-For from an untrusted peer is not believed"
    );

    // A browser's WebSocket: Origin is https://localhost:<port>, which the server must see as
    // its own origin through the proxy.
    let token = register_login(&three, &base, "carol").await;
    let origin = format!("https://localhost:{}", nginx.https.port());
    let c = wss(&nginx, &cert, Some(&origin))
        .await
        .expect("same-origin WebSocket through Nginx is accepted");
    hello(c, &token).await;
    match wss(&nginx, &cert, Some("https://localhost")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("an Origin without the port is another origin and must be refused"),
    }
}

// ---------------------------------------------------------------------------------------------
// coturn with docker/turnserver.conf and the TURN REST credentials of GET /api/ice-servers.

const TURN_SECRET: &str = "turn-secret-for-the-test-0123456789";

struct Coturn {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Coturn {
    /// `turnserver` on 127.0.0.1 with the repo's configuration plus what a test on loopback
    /// needs. `loopback_peers`: allow relaying to 127.0.0.1 (the repo's file denies it, as it
    /// denies every private range; the test's relay and peers all live on loopback).
    fn start(loopback_peers: bool) -> Coturn {
        let dir = tempfile::tempdir().unwrap();
        let port = free_udp_tcp_port();
        let relay = free_udp_tcp_port();
        let d = dir.path().display();
        let mut conf =
            std::fs::read_to_string(Path::new(REPO).join("docker/turnserver.conf")).unwrap();
        conf.push_str(&format!(
            "\n# --- added by tests/api/deploy.rs ---\n\
             listening-ip=127.0.0.1\n\
             relay-ip=127.0.0.1\n\
             listening-port={port}\n\
             min-port={relay}\n\
             max-port={}\n\
             realm=test.local\n\
             static-auth-secret={TURN_SECRET}\n\
             log-file={d}/turn.log\n\
             pidfile={d}/turnserver.pid\n\
             userdb={d}/turndb\n",
            relay.saturating_add(40)
        ));
        if loopback_peers {
            conf.push_str("allow-loopback-peers\nallowed-peer-ip=127.0.0.1\n");
        }
        std::fs::write(dir.path().join("turnserver.conf"), conf).unwrap();
        let child = Command::new("turnserver")
            .arg("-c")
            .arg(dir.path().join("turnserver.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnserver starts");
        let mut c = Coturn { child, dir, port };
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = c.child.try_wait().unwrap() {
                panic!("turnserver exited ({status}):\n{}", c.log());
            }
            assert!(
                Instant::now() < until,
                "turnserver did not listen:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("turn.log")).unwrap_or_default()
    }

    /// `turnutils_uclient`: two clients allocate relays and send each other messages through
    /// them (`-y`). Returns whether it succeeded, messages received, and its output.
    async fn allocate(&self, username: &str, password: &str) -> (bool, u64, String) {
        let mut cmd = Command::new("turnutils_uclient");
        cmd.args([
            "-y",
            "-n",
            "3",
            "-m",
            "1",
            "-p",
            &self.port.to_string(),
            "-u",
            username,
        ])
        .args(["-w", password, "127.0.0.1"]);
        let ran = tokio::task::spawn_blocking(move || run_with_deadline(cmd, 30))
            .await
            .unwrap();
        let out = ran.output();
        let received = out
            .lines()
            .filter_map(|l| l.split("tot_recv_msgs=").nth(1))
            .filter_map(|r| {
                r.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .unwrap_or(0);
        (ran.success() && !ran.timed_out, received, out)
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

fn turn_password(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn coturn_tools(what: &str) -> bool {
    require("turnserver", "coturn", what) && require("turnutils_uclient", "coturn", what)
}

/// Credentials from `GET /api/ice-servers` allocate TURN relays on coturn configured with the
/// repo's docker/turnserver.conf (`use-auth-secret`), and data flows through them; a tampered
/// password and an expired username (made with the same HMAC) are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_coturn_allocates_with_the_api_credentials_only() {
    if !coturn_tools("the coturn deployment test") {
        return;
    }
    let turn = Coturn::start(true);
    let url = format!("turn:127.0.0.1:{}?transport=udp", turn.port);
    let app = spawn_app_with(Backend::Sqlite, |f| {
        f.merge(("ice.turn_secret", TURN_SECRET))
            .merge(("ice.turn_urls", vec![url.clone()]))
    })
    .await;
    let user = app.user("alice").await;
    let ice = app.get_json("/api/ice-servers", Some(&user.access)).await;
    let server = ice["ice_servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["urls"].to_string().contains(&url))
        .unwrap_or_else(|| panic!("the TURN server in {ice}"))
        .clone();
    let username = server["username"].as_str().unwrap();
    let credential = server["credential"].as_str().unwrap();
    assert!(
        username.ends_with(&format!(":{}", user.id)),
        "username is <expiry>:<user id>: {username}"
    );

    let (ok, received, out) = turn.allocate(username, credential).await;
    assert!(
        ok && received > 0,
        "allocation with the API's credentials:\n{out}\n{}",
        turn.log()
    );

    let mut tampered = credential.to_owned();
    let first = if tampered.starts_with('A') { "B" } else { "A" };
    tampered.replace_range(0..1, first);
    let (ok, received, out) = turn.allocate(username, &tampered).await;
    assert!(
        !ok && received == 0,
        "a tampered password must be refused:\n{out}"
    );

    let past = chrono::Utc::now().timestamp() - 60;
    let expired = format!("{past}:{}", user.id);
    let (ok, received, out) = turn
        .allocate(&expired, &turn_password(TURN_SECRET, &expired))
        .await;
    assert!(
        !ok && received == 0,
        "an expired username must be refused:\n{out}"
    );
    // The same HMAC with a future expiry works: the refusal above is the expiry's.
    let future = format!("{}:{}", chrono::Utc::now().timestamp() + 600, user.id);
    let (ok, received, out) = turn
        .allocate(&future, &turn_password(TURN_SECRET, &future))
        .await;
    assert!(ok && received > 0, "control with a future expiry:\n{out}");
}

/// docker/turnserver.conf refuses to relay to private and loopback addresses (the TURN server
/// must not become a door into the host's network): with valid credentials, relaying to a
/// loopback peer is 403 Forbidden IP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_coturn_refuses_to_relay_to_private_addresses() {
    if !coturn_tools("the coturn deployment test") {
        return;
    }
    let turn = Coturn::start(false);
    let username = format!("{}:someone", chrono::Utc::now().timestamp() + 600);
    let (ok, received, out) = turn
        .allocate(&username, &turn_password(TURN_SECRET, &username))
        .await;
    assert!(
        !ok && received == 0,
        "relay to 127.0.0.1 must be refused:\n{out}"
    );
    assert!(
        out.contains("403 (Forbidden IP)"),
        "refused as a denied peer:\n{out}"
    );
}

// ---------------------------------------------------------------------------------------------
// docker/compose.yaml and docker/Dockerfile.

fn compose_command() -> Option<Vec<&'static str>> {
    let docker_compose_v2 = Command::new("docker")
        .args(["compose", "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if docker_compose_v2 {
        Some(vec!["docker", "compose"])
    } else if crate::browser::have("docker-compose") {
        Some(vec!["docker-compose"])
    } else {
        None
    }
}

/// The keys config/default.toml defines, as `section.key` (nested tables joined with `.`).
fn known_config_keys() -> Vec<String> {
    use figment::providers::Format;
    use figment::value::Value;
    fn walk(prefix: &str, v: &Value, out: &mut Vec<String>) {
        if let Value::Dict(_, dict) = v {
            for (k, v) in dict {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if matches!(v, Value::Dict(..)) {
                    walk(&key, v, out);
                } else {
                    out.push(key);
                }
            }
        }
    }
    let doc: Value = figment::Figment::from(figment::providers::Toml::string(
        callsignal::config::DEFAULT_TOML,
    ))
    .extract()
    .unwrap();
    let mut out = vec![];
    walk("", &doc, &mut out);
    // Keys documented in default.toml only as comments (unset by default).
    out.extend(["auth.jwt_secret".to_owned(), "ice.turn_secret".to_owned()]);
    out
}

/// `docker compose config` accepts docker/compose.yaml with docker/env.example's variables;
/// every service restarts on its own; every CALLSIGNAL_* variable it sets names a real setting.
///
/// The last check depends on `server.trusted_proxies` (main branch: config/default.toml).
#[test]
fn deploy_compose_file_is_valid_and_names_real_settings() {
    let Some(compose) = compose_command() else {
        let why = "neither `docker compose` nor `docker-compose` is installed \
                   (apt-get install -y docker-compose)";
        if std::env::var("CI").is_ok() {
            panic!("the compose test cannot run in CI: {why}");
        }
        eprintln!("\n*** SKIPPED the compose test: {why} ***\n");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(Path::new(REPO).join("docker/env.example")).unwrap();
    let filled: String = example
        .lines()
        .map(|l| match l.split_once('=') {
            Some((k, "")) if !l.starts_with('#') => format!("{k}=0123456789abcdef0123456789abcdef"),
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let env_file = dir.path().join("env");
    std::fs::write(&env_file, filled).unwrap();
    let mut cmd = Command::new(compose[0]);
    cmd.args(&compose[1..])
        .arg("--env-file")
        .arg(&env_file)
        .arg("-f")
        .arg(Path::new(REPO).join("docker/compose.yaml"))
        .arg("config");
    let ran = run_with_deadline(cmd, 60);
    assert!(ran.success(), "compose config failed:\n{}", ran.output());
    let out = &ran.stdout;
    for service in ["db", "callsignal", "nginx", "certbot", "coturn"] {
        assert!(
            out.contains(&format!("\n  {service}:\n")),
            "service {service}:\n{out}"
        );
    }
    assert_eq!(
        out.matches("restart: unless-stopped").count(),
        5,
        "every service has a restart policy:\n{out}"
    );
    assert!(
        !out.contains("TRUST_FORWARDED_FOR"),
        "the removed boolean is gone"
    );
    assert!(
        out.contains("CALLSIGNAL_SERVER__TRUSTED_PROXIES: 172.30.0.0/24"),
        "{out}"
    );
    assert!(
        out.contains("condition: service_healthy"),
        "callsignal waits for a healthy db"
    );
    // The same secret on both sides of TURN.
    assert!(
        out.contains("CALLSIGNAL_ICE__TURN_SECRET: 0123456789abcdef"),
        "{out}"
    );
    assert!(out.contains("TURN_SECRET: 0123456789abcdef"), "{out}");

    let known = known_config_keys();
    let compose_yaml =
        std::fs::read_to_string(Path::new(REPO).join("docker/compose.yaml")).unwrap();
    let mut unknown = vec![];
    for var in compose_yaml
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("CALLSIGNAL_") && w.contains("__"))
    {
        let key = var["CALLSIGNAL_".len()..]
            .to_ascii_lowercase()
            .replace("__", ".");
        if !known.contains(&key) {
            unknown.push(var.to_owned());
        }
    }
    assert!(
        unknown.is_empty(),
        "docker/compose.yaml sets variables naming no setting (the server refuses to start): \
         {unknown:?}; known: {known:?}"
    );
}

/// The Dockerfile builds exactly what CI builds, runs as a non-root user with a data volume,
/// and checks health with the binary (no shell, no /dev/tcp); .dockerignore keeps local state
/// and secrets out of the build context.
#[test]
fn deploy_dockerfile_builds_what_ci_builds() {
    let read = |p: &str| std::fs::read_to_string(Path::new(REPO).join(p)).unwrap();
    let dockerfile = read("docker/Dockerfile");
    let ci = read(".ci/run");
    let build = "cargo build --release --locked";
    assert!(
        dockerfile.contains(build),
        "Dockerfile builds with `{build}`"
    );
    assert!(
        ci.lines().any(|l| l.trim_start().starts_with(build)),
        ".ci/run runs `{build}` too"
    );
    assert!(dockerfile.contains("FROM debian:bookworm-slim"));
    assert!(
        dockerfile.contains(r#"HEALTHCHECK"#)
            && dockerfile.contains(r#"CMD ["callsignal", "healthcheck"]"#)
    );
    assert!(!dockerfile.contains("/dev/tcp"), "dash has no /dev/tcp");
    assert!(dockerfile.contains("\nUSER callsignal"), "non-root");
    assert!(dockerfile.contains("VOLUME [\"/var/lib/callsignal/data\"]"));
    let ignore = read(".dockerignore");
    for entry in [
        "target/",
        "data/",
        ".env",
        ".git/",
        "fuzz/target/",
        "tests/browser/node_modules/",
    ] {
        assert!(
            ignore.lines().any(|l| l.trim() == entry),
            ".dockerignore lists {entry}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Chromium through Nginx over HTTPS/WSS.

/// One real call between two Chromium instances through Nginx over HTTPS and WSS, the test's
/// certificate trusted by its SPKI hash; in a network namespace of its own (like
/// `browser::browser_calls_in_chromium`).
///
/// Depends on `server.trusted_proxies` (main branch): the page's WebSocket carries
/// `Origin: https://localhost:<port>`, which passes only when the server believes Nginx's
/// X-Forwarded-Proto.
#[test]
fn deploy_chromium_calls_through_nginx_over_https() {
    if !nginx_tools("the Chromium-through-Nginx test") {
        return;
    }
    crate::browser::run_in_netns(
        "deploy::chromium_through_nginx_scenario",
        "Chromium-through-Nginx test",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "started inside its own network namespace by deploy_chromium_calls_through_nginx_over_https"]
async fn chromium_through_nginx_scenario() {
    use crate::browser::{Driver, audio_flows_both_ways, codes, connected_call, end_call};
    if std::env::var(crate::browser::INNER_ENV).is_err() {
        eprintln!(
            "runs only inside the namespace made by deploy_chromium_calls_through_nginx_over_https"
        );
        return;
    }
    let app = app_behind_proxy(|f| f).await;
    let cert = TestCert::new();
    let nginx = Nginx::start(app.addr, &cert);
    let base = nginx.url("/");
    let trust = vec![format!(
        "--ignore-certificate-errors-spki-list={}",
        cert.spki_sha256_base64()
    )];
    let driver = Driver::start().await;
    let alice = driver
        .browser_with_args("alice-tls", 1280, 800, &trust)
        .await;
    let bob = driver.browser_with_args("bob-tls", 390, 844, &trust).await;
    alice.register(&base, "alice").await;
    bob.register(&base, "bob").await;
    assert_eq!(
        alice.js("return window.isSecureContext;").await,
        json!(true),
        "HTTPS through Nginx is a secure context"
    );
    connected_call(&alice, &bob, "bob").await;
    audio_flows_both_ways(&alice, &bob).await;
    let (ca, cb) = codes(&alice, &bob).await;
    assert_eq!(ca, cb, "both sides show the same verification code");
    alice.screenshot("tls-call-alice").await;
    end_call(&alice, &bob).await;
    assert!(
        !nginx.error_log().contains("[error]"),
        "nginx errors: {}",
        nginx.error_log()
    );
    drop(app);
}

// ---------------------------------------------------------------------------------------------
// The binary: CLI, healthcheck, config check, start-up errors. These run the real
// `callsignal` with a clean environment (no CALLSIGNAL_TEST_* or other stray variables) in a
// working directory of their own (no .env unless the test writes one).

const BIN: &str = env!("CARGO_BIN_EXE_callsignal");

/// `callsignal` with a clean environment in `dir`.
fn callsignal(dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info");
    c
}

/// `callsignal` set up to serve from `dir` (SQLite and data directory inside it).
fn callsignal_serving(dir: &Path) -> Command {
    let mut c = callsignal(dir);
    c.env("CALLSIGNAL_SERVER__BIND", "127.0.0.1:0")
        .env(
            "CALLSIGNAL_DATABASE__URL",
            format!("sqlite://{}/cs.db?mode=rwc", dir.display()),
        )
        .env("CALLSIGNAL_AUTH__JWT_SECRET", TEST_SECRET)
        .env("CALLSIGNAL_SERVER__DATA_DIR", dir.join("data"));
    c
}

/// Runs `serve`, which must refuse to start (within 20 s) with an error containing every
/// string of `names`; returns the error output.
fn refuses_to_start(mut cmd: Command, names: &[&str]) -> String {
    cmd.arg("serve");
    let ran = run_with_deadline(cmd, 20);
    assert!(
        !ran.timed_out,
        "the server started (still running after 20 s) instead of refusing:\n{}",
        ran.output()
    );
    assert!(!ran.success(), "exit status 0:\n{}", ran.output());
    for name in names {
        assert!(
            ran.stderr.contains(name),
            "the error must name {name:?}:\n{}",
            ran.stderr
        );
    }
    said_once(&ran.stderr);
    ran.stderr
}

/// No line of an error report is repeated (errors used to be printed twice).
fn said_once(err: &str) {
    let lines: Vec<&str> = err
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    for (i, line) in lines.iter().enumerate() {
        assert!(
            !lines[i + 1..].contains(line),
            "printed more than once: {line:?}\n{err}"
        );
    }
}

/// `--version` and `--help` for the binary and every subcommand (clap).
///
/// Depends on the CLI (main branch).
#[test]
fn deploy_cli_version_and_help_for_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run_with_deadline(
        {
            let mut c = callsignal(dir.path());
            c.arg("--version");
            c
        },
        10,
    );
    assert!(ran.success(), "--version: {}", ran.output());
    assert!(
        ran.stdout.contains(env!("CARGO_PKG_VERSION")),
        "--version prints the version: {}",
        ran.stdout
    );
    let help = |args: &[&str]| {
        let mut c = callsignal(dir.path());
        c.args(args);
        let ran = run_with_deadline(c, 10);
        assert!(ran.success(), "{args:?}: {}", ran.output());
        assert!(ran.stdout.contains("Usage"), "{args:?}: {}", ran.stdout);
        ran.stdout
    };
    let top = help(&["--help"]);
    for sub in ["serve", "migrate", "config", "healthcheck"] {
        assert!(top.contains(sub), "--help lists {sub}: {top}");
    }
    assert!(top.contains("--config"), "--help names --config: {top}");
    help(&["help"]);
    for args in [
        &["serve", "--help"][..],
        &["migrate", "--help"],
        &["migrate", "up", "--help"],
        &["migrate", "down", "--help"],
        &["migrate", "status", "--help"],
        &["config", "--help"],
        &["config", "check", "--help"],
        &["healthcheck", "--help"],
    ] {
        help(args);
    }
}

/// `callsignal healthcheck` asks GET /healthz of the configured bind address: exit 0 against a
/// running server, non-zero (naming the address) when nothing listens there.
///
/// Depends on the `healthcheck` subcommand (main branch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_cli_healthcheck_answers_for_the_bind_address() {
    let app = spawn_app_with(Backend::Sqlite, |f| f).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = callsignal(dir.path());
    c.env("CALLSIGNAL_SERVER__BIND", app.addr.to_string())
        .arg("healthcheck");
    let ran = tokio::task::spawn_blocking(move || run_with_deadline(c, 20))
        .await
        .unwrap();
    assert!(
        ran.success(),
        "healthcheck against a running server: {}",
        ran.output()
    );

    let nothing = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let mut c = callsignal(dir.path());
    c.env("CALLSIGNAL_SERVER__BIND", nothing.to_string())
        .arg("healthcheck");
    let ran = tokio::task::spawn_blocking(move || run_with_deadline(c, 20))
        .await
        .unwrap();
    assert!(
        !ran.timed_out && !ran.success(),
        "nothing listens: {}",
        ran.output()
    );
    assert!(
        ran.stderr.contains(&nothing.to_string()),
        "names the address: {}",
        ran.stderr
    );
    assert!(
        !dir.path().join("data").exists(),
        "a healthcheck creates no state"
    );
}

/// The healthcheck speaks TLS when the server does (`server.tls.*`); the server answers HTTPS.
///
/// Depends on built-in TLS and the `healthcheck` subcommand (main branch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_cli_healthcheck_works_with_builtin_tls() {
    if !require("openssl", "openssl", "the built-in TLS healthcheck test") {
        return;
    }
    let cert = TestCert::new();
    let (cert_path, key_path) = (
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
    );
    let app = spawn_app_with(Backend::Sqlite, |f| {
        f.merge(("server.tls.cert_path", cert_path.clone()))
            .merge(("server.tls.key_path", key_path.clone()))
    })
    .await;
    let r = cert
        .client(None)
        .get(format!("https://localhost:{}/healthz", app.addr.port()))
        .send()
        .await
        .expect("the server answers HTTPS");
    assert_eq!(r.status(), 200);
    let dir = tempfile::tempdir().unwrap();
    let mut c = callsignal(dir.path());
    c.env("CALLSIGNAL_SERVER__BIND", app.addr.to_string())
        .env("CALLSIGNAL_SERVER__TLS__CERT_PATH", &cert_path)
        .env("CALLSIGNAL_SERVER__TLS__KEY_PATH", &key_path)
        .arg("healthcheck");
    let ran = tokio::task::spawn_blocking(move || run_with_deadline(c, 20))
        .await
        .unwrap();
    assert!(ran.success(), "healthcheck over TLS: {}", ran.output());
}

/// `callsignal config check` prints the effective configuration with every secret redacted.
///
/// Depends on `config check` (main branch).
#[test]
fn deploy_config_check_prints_the_effective_config_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let jwt = "jwt-secret-that-must-not-be-printed-0123456789";
    let mut c = callsignal(dir.path());
    c.env("CALLSIGNAL_AUTH__JWT_SECRET", jwt)
        .env(
            "CALLSIGNAL_DATABASE__URL",
            "postgres://callsignal:db-password-not-printed@db.internal:5432/callsignal",
        )
        .env("CALLSIGNAL_ICE__TURN_SECRET", "turn-secret-not-printed")
        .env("CALLSIGNAL_CALLS__RING_TIMEOUT_SECS", "31")
        .env("CALLSIGNAL_SERVER__BIND", "127.0.0.1:18080")
        .args(["config", "check"]);
    let ran = run_with_deadline(c, 20);
    assert!(ran.success(), "config check: {}", ran.output());
    let out = ran.output();
    assert!(
        out.contains("ring_timeout_secs") && out.contains("31"),
        "effective values: {out}"
    );
    assert!(out.contains("127.0.0.1:18080"), "{out}");
    for secret in [jwt, "db-password-not-printed", "turn-secret-not-printed"] {
        assert!(!out.contains(secret), "{secret} printed: {out}");
    }
}

/// `callsignal config check` prints the effective settings as a configuration file: fed back
/// with `--config`, it reads back to the same settings (the secrets, written as "[redacted]",
/// come from the environment both times).
#[test]
fn deploy_config_check_prints_a_config_file_that_reads_back_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = [
        (
            "CALLSIGNAL_AUTH__JWT_SECRET",
            "jwt-secret-that-must-not-be-printed-0123456789",
        ),
        (
            "CALLSIGNAL_DATABASE__URL",
            "postgres://callsignal:db-password@db.internal:5432/callsignal",
        ),
        ("CALLSIGNAL_ICE__TURN_SECRET", "turn-secret-not-printed"),
    ];
    let check = |extra: &[(&str, &str)], config: Option<&Path>| {
        let mut c = callsignal(dir.path());
        for (k, v) in secrets.iter().chain(extra) {
            c.env(k, v);
        }
        if let Some(path) = config {
            c.arg("--config").arg(path);
        }
        c.args(["config", "check"]);
        let ran = run_with_deadline(c, 20);
        assert!(ran.success(), "config check: {}", ran.output());
        ran.stdout
    };
    let first = check(
        &[
            ("CALLSIGNAL_CALLS__RING_TIMEOUT_SECS", "31"),
            ("CALLSIGNAL_SERVER__TRUSTED_PROXIES", "10.0.0.0/8,::1"),
            (
                "CALLSIGNAL_SERVER__ALLOWED_ORIGINS",
                "https://a.example,https://b.example:8443",
            ),
            ("CALLSIGNAL_LOG__FORMAT", "json"),
        ],
        None,
    );
    for expected in [
        "[calls]",
        "ring_timeout_secs = 31",
        "\"10.0.0.0/8\"",
        "\"::1/128\"",
        "\"https://b.example:8443\"",
        "format = \"json\"",
        "jwt_secret = \"[redacted]\"",
        "url = \"[redacted]\"",
    ] {
        assert!(first.contains(expected), "{expected} in: {first}");
    }
    for (_, secret) in secrets {
        assert!(!first.contains(secret), "{secret} printed: {first}");
    }
    // A build with the test hooks says so on its first line, outside the file.
    let file: Vec<&str> = first
        .lines()
        .filter(|l| !l.starts_with("WARNING:"))
        .collect();
    let path = dir.path().join("effective.toml");
    std::fs::write(&path, file.join("\n")).unwrap();
    let second = check(&[], Some(&path));
    assert_eq!(second, first, "read back from {}", path.display());
}

/// Found by a tester: the database URL, named in the comment line that heads `config check`'s
/// output, could end that comment with a line break and add settings of its own to the printed
/// file (or make it no TOML at all with another control character).
#[test]
fn deploy_config_check_output_stays_one_file_whatever_the_database_url_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = callsignal(dir.path());
    c.env(
        "CALLSIGNAL_DATABASE__URL",
        "postgres://bob:pw@h/db\n[evil]\ninjected = 1\x1b[31m\n#",
    )
    .args(["config", "check"]);
    let ran = run_with_deadline(c, 20);
    let out = ran.output();
    for line in ran.stdout.lines() {
        assert!(
            !line.starts_with("[evil]") && !line.starts_with("injected"),
            "a line of the URL's own: {out}"
        );
        assert!(!line.contains('\x1b'), "a raw control character: {out}");
    }
}

/// `callsignal config check` lists every problem it finds, not only the first.
///
/// Depends on `config check` and unknown-variable detection (main branch).
#[test]
fn deploy_config_check_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = callsignal(dir.path());
    c.env("CALLSIGNAL_AUTH__JWT_SECRET", "too-short")
        .env("CALLSIGNAL_CALLS__RING_TIMEOUT_SEC", "30")
        .args(["config", "check"]);
    let ran = run_with_deadline(c, 20);
    assert!(!ran.timed_out && !ran.success(), "{}", ran.output());
    let out = ran.output();
    for name in [
        "auth.jwt_secret",
        "CALLSIGNAL_CALLS__RING_TIMEOUT_SEC",
        "calls.ring_timeout_secs",
    ] {
        assert!(out.contains(name), "names {name}: {out}");
    }
    assert!(
        !out.contains("too-short"),
        "the secret's value is not printed: {out}"
    );
}

/// A misspelled variable refuses to start, naming it and the setting meant.
///
/// Depends on unknown-variable detection (main branch).
#[test]
fn deploy_misspelled_variable_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = callsignal_serving(dir.path());
    c.env("CALLSIGNAL_CALLS__RING_TIMEOUT_SEC", "30");
    refuses_to_start(
        c,
        &[
            "CALLSIGNAL_CALLS__RING_TIMEOUT_SEC",
            "calls.ring_timeout_secs",
        ],
    );
}

/// An unknown key in the config file refuses to start, naming the key, the nearest known one
/// and the file.
///
/// Depends on unknown-key detection (main branch).
#[test]
fn deploy_unknown_toml_key_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("callsignal.toml");
    std::fs::write(&file, "[calls]\nring_timeout_sec = 30\n").unwrap();
    let mut c = callsignal_serving(dir.path());
    c.arg("--config").arg(&file);
    refuses_to_start(
        c,
        &[
            "ring_timeout_sec",
            "calls.ring_timeout_secs",
            &file.display().to_string(),
        ],
    );
}

/// `--config <a directory>` refuses to start, naming the path (it used to run with defaults).
///
/// Depends on the CLI's config-file check (main branch).
#[test]
fn deploy_config_directory_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let conf_dir = dir.path().join("conf.d");
    std::fs::create_dir(&conf_dir).unwrap();
    let mut c = callsignal_serving(dir.path());
    c.arg("--config").arg(&conf_dir);
    refuses_to_start(c, &[&conf_dir.display().to_string()]);
}

/// A malformed `.env` line refuses to start, naming the file and the line number, without
/// quoting the line (it may hold a secret).
///
/// Depends on the `.env` line report (main branch).
#[test]
fn deploy_dotenv_bad_line_refuses_to_start_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "CALLSIGNAL_LOG__FORMAT=json\nthis s3cr3t-looking line is not KEY=value\n\
         CALLSIGNAL_AUTH__JWT_SECRET=jwt-secret-after-the-bad-line-0123456789\n",
    )
    .unwrap();
    let c = callsignal_serving(dir.path());
    let err = refuses_to_start(c, &[".env", "line 2"]);
    assert!(!err.contains("s3cr3t"), "the bad line is not quoted: {err}");
}

/// A bind address in use refuses to start naming the address, before migrations run and before
/// a JWT key is generated.
///
/// Depends on start-up error context (main branch).
#[test]
fn deploy_bind_address_in_use_names_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut c = callsignal(dir.path());
    c.env("CALLSIGNAL_SERVER__BIND", &addr)
        .env(
            "CALLSIGNAL_DATABASE__URL",
            format!("sqlite://{}/cs.db?mode=rwc", dir.path().display()),
        )
        .env("CALLSIGNAL_SERVER__DATA_DIR", dir.path().join("data"));
    refuses_to_start(c, &[&addr]);
    assert!(
        !dir.path().join("data/jwt_secret").exists(),
        "no key generated for a server that cannot listen"
    );
    drop(taken);
}

/// A data directory that cannot be created or written refuses to start naming the path.
///
/// Depends on start-up error context (main branch).
#[test]
fn deploy_unwritable_data_dir_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let data = if running_as_root() {
        // Root writes anywhere: make the path impossible instead (its parent is a file).
        std::fs::write(dir.path().join("not-a-dir"), "").unwrap();
        dir.path().join("not-a-dir/data")
    } else {
        let ro = dir.path().join("read-only");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
        ro.join("data")
    };
    let mut c = callsignal(dir.path());
    c.env("CALLSIGNAL_SERVER__BIND", "127.0.0.1:0")
        .env(
            "CALLSIGNAL_DATABASE__URL",
            format!("sqlite://{}/cs.db?mode=rwc", dir.path().display()),
        )
        .env("CALLSIGNAL_SERVER__DATA_DIR", &data);
    refuses_to_start(c, &[&data.display().to_string()]);
}

/// SQLite that cannot open its file refuses to start naming the path.
///
/// Depends on start-up error context (main branch).
#[test]
fn deploy_unopenable_sqlite_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("not-a-dir"), "").unwrap();
    let db = dir.path().join("not-a-dir/cs.db");
    let mut c = callsignal_serving(dir.path());
    c.env(
        "CALLSIGNAL_DATABASE__URL",
        format!("sqlite://{}?mode=rwc", db.display()),
    );
    refuses_to_start(c, &[&db.display().to_string()]);
}

/// The first log line gives the version, the listen address, the database kind and the TLS
/// state; output that is not a terminal carries no colour codes.
///
/// Depends on the start-up summary and terminal detection (main branch).
#[test]
fn deploy_first_log_line_summarises_and_pipes_get_no_colour() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = callsignal_serving(dir.path());
    c.arg("serve");
    // Runs until the deadline; what it logged by then is enough.
    let ran = run_with_deadline(c, 5);
    let out = ran.output();
    assert!(
        !out.contains('\u{1b}'),
        "colour codes in piped output:\n{out}"
    );
    let first = ran
        .stdout
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .to_ascii_lowercase();
    for part in [env!("CARGO_PKG_VERSION"), "127.0.0.1:", "sqlite", "tls"] {
        assert!(
            first.contains(part),
            "the first log line names {part:?}: {first}"
        );
    }
}

/// The `THP_enabled:` value of a process's `/proc/<pid>/status` (Linux ≥ 5.0).
#[cfg(target_os = "linux")]
fn thp_enabled(pid: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(|v| v.trim().to_owned())
}

/// Starts `serve` and waits (20 s at most) for its `callsignal listening` line; then the
/// process has been running `main` for a while.
#[cfg(target_os = "linux")]
fn serving_until_listening(mut cmd: Command) -> Child {
    cmd.arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("server starts");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if line.contains("callsignal listening") {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(20)).is_err() {
        stop_child(&mut child);
        panic!("the server did not start listening within 20 s");
    }
    child
}

/// The server's process runs without transparent huge pages (callsignal::heap): mimalloc
/// marks its heap MADV_HUGEPAGE, and where the kernel honours it (Debian's default THP mode
/// `madvise`) every first touch of fresh heap cleared a whole 2 MiB page while the sockets
/// waited — found as 10–75 ms relay stalls during the SDP burst of the relay benchmark
/// (docs/benchmarks.md). `MIMALLOC_ALLOW_THP=1` keeps them.
#[cfg(target_os = "linux")]
#[test]
fn deploy_the_server_runs_without_transparent_huge_pages() {
    let own = thp_enabled("self").expect("the kernel reports THP_enabled (Linux >= 5.0)");
    assert_eq!(
        own, "1",
        "the test process itself has THP enabled (otherwise the server would inherit it off)"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut child = serving_until_listening(callsignal_serving(dir.path()));
    let pid = child.id().to_string();
    let off = thp_enabled(&pid);
    // And the effect: no huge page beyond what was touched before `main` ran (at most one).
    let huge_kib = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("AnonHugePages:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        });
    stop_child(&mut child);
    assert_eq!(
        off.as_deref(),
        Some("0"),
        "THP is off in the serving process"
    );
    assert!(
        huge_kib.is_some_and(|k| k <= 2048),
        "huge pages in the serving process: {huge_kib:?} KiB"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut keep = callsignal_serving(dir.path());
    keep.env("MIMALLOC_ALLOW_THP", "1");
    let mut child = serving_until_listening(keep);
    let on = thp_enabled(&child.id().to_string());
    stop_child(&mut child);
    assert_eq!(on.as_deref(), Some("1"), "MIMALLOC_ALLOW_THP=1 keeps THP");
}
