//! Real audio calls between two headless Chromium instances through our signaling, in a
//! network namespace of the test's own that has only loopback (media never leaves the machine).
//!
//! `browser_calls_in_chromium` creates the namespace and re-runs this test binary inside it
//! (`browser_scenarios`, ignored otherwise), which starts the server, one chromedriver and two
//! Chromium sessions (two users, separate profiles) and drives them over WebDriver.
//! Screenshots land in `target/artifacts/`.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, spawn_app_with};

/// Set in the environment of a test re-run inside its network namespace.
pub(crate) const INNER_ENV: &str = "CALLSIGNAL_E2E_INNER";

/// Whether `cmd` is on the PATH.
pub(crate) fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn skip(what: &str, why: &str) {
    if std::env::var("CI").is_ok() {
        panic!("{what} cannot run in CI: {why}");
    }
    eprintln!("\n*** SKIPPED the {what} (Chromium end to end): {why} ***\n");
}

#[test]
fn browser_calls_in_chromium() {
    run_in_netns("browser::browser_scenarios", "browser test");
}

/// Creates a network namespace that has only loopback and re-runs this test binary inside it,
/// running the ignored test `inner` (which checks [`INNER_ENV`]). Skips loudly (fails in CI)
/// without chromium, chromedriver or `ip`, or when no namespace can be made.
pub(crate) fn run_in_netns(inner: &str, what: &str) {
    for tool in ["chromium", "chromedriver", "ip"] {
        if !have(tool) {
            return skip(
                what,
                &format!(
                    "`{tool}` is not installed (apt-get install chromium chromium-driver iproute2)"
                ),
            );
        }
    }
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ns = format!("cs-e2e-{}-{seq}", std::process::id());
    let created = Command::new("ip")
        .args(["netns", "add", &ns])
        .stderr(Stdio::piped())
        .output()
        .expect("ip runs");
    if !created.status.success() {
        return skip(
            what,
            &format!(
                "cannot create a network namespace: {}",
                String::from_utf8_lossy(&created.stderr).trim()
            ),
        );
    }
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _cleanup = Cleanup(ns.clone());
    assert!(
        Command::new("ip")
            .args(["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success()
    );
    let me = std::env::current_exe().expect("test binary path");
    let status = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(me)
        .args([
            inner,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INNER_ENV, "1")
        .env_remove("CALLSIGNAL_TEST_POSTGRES_URL")
        .status()
        .expect("inner test runs");
    assert!(status.success(), "the {what} failed (see output above)");
}

// ---------------------------------------------------------------------------------------------
// A minimal WebDriver client.

pub(crate) struct Driver {
    http: reqwest::Client,
    base: String,
    child: std::process::Child,
}

impl Drop for Driver {
    /// Kills chromedriver's whole process group: killing chromedriver alone left every Chromium
    /// it had started running (orphans; dozens per test run piled up on the machine).
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    pub(crate) async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Its own process group, with the browsers it starts: dropped together.
        let child = Command::new("chromedriver")
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let d = Driver {
            http: reqwest::Client::new(),
            base: format!("http://127.0.0.1:{port}"),
            child,
        };
        for _ in 0..100 {
            if let Ok(r) = d.http.get(format!("{}/status", d.base)).send().await
                && r.status().is_success()
            {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not come up");
    }

    pub(crate) async fn browser(&self, name: &str, width: u32, height: u32) -> Browser {
        self.browser_with_args(name, width, height, &[]).await
    }

    /// A browser with extra command-line flags (e.g. a trusted certificate's SPKI hash).
    pub(crate) async fn browser_with_args(
        &self,
        name: &str,
        width: u32,
        height: u32,
        extra: &[String],
    ) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-quic".into(),
            format!("--user-data-dir={}", profile.path().display()),
            "--use-fake-device-for-media-stream".into(),
            "--use-fake-ui-for-media-stream".into(),
            "--allow-loopback-in-peer-connection".into(),
            "--autoplay-policy=no-user-gesture-required".into(),
            format!("--window-size={width},{height}"),
        ];
        args.extend(extra.iter().cloned());
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}}}});
        let v: Value = self
            .http
            .post(format!("{}/session", self.base))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("session: {v}"))
            .to_owned();
        Browser {
            http: self.http.clone(),
            url: format!("{}/session/{id}", self.base),
            name: name.into(),
            _profile: profile,
        }
    }
}

pub(crate) struct Browser {
    http: reqwest::Client,
    url: String,
    pub(crate) name: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn cmd(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.url));
        if method != reqwest::Method::GET {
            req = req.json(&body);
        }
        let r = req.send().await.unwrap();
        let v: Value = r.json().await.unwrap();
        if v["value"].get("error").is_some() {
            panic!("{}: WebDriver {path} failed: {}", self.name, v["value"]);
        }
        v["value"].clone()
    }

    pub(crate) async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", json!({"url": url}))
            .await;
    }

    pub(crate) async fn js(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    pub(crate) async fn element(&self, css: &str) -> String {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v.as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub(crate) async fn click(&self, css: &str) {
        let e = self.element(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            json!({}),
        )
        .await;
    }

    pub(crate) async fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/clear"),
            json!({}),
        )
        .await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            json!({"text": text}),
        )
        .await;
    }

    /// Polls `expr` (a JS expression) until it equals `want`.
    pub(crate) async fn wait_for(&self, expr: &str, want: Value, secs: u64) {
        let until = Instant::now() + Duration::from_secs(secs);
        let mut last = Value::Null;
        while Instant::now() < until {
            last = self.js(&format!("return {expr};")).await;
            if last == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.screenshot(&format!("failure-{}", self.name)).await;
        let logs = self
            .cmd(reqwest::Method::POST, "/se/log", json!({"type": "browser"}))
            .await;
        eprintln!("{} console: {logs:#}", self.name);
        let state = self
            .js("return window.callsignal ? [window.callsignal.state(), window.callsignal.events()] : null;")
            .await;
        eprintln!("{} state and events: {state}", self.name);
        panic!("{}: `{expr}` is {last}, waited for {want}", self.name);
    }

    pub(crate) async fn screenshot(&self, name: &str) {
        let v = self
            .cmd(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        let dir = artifacts();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    pub(crate) async fn register(&self, base: &str, name: &str) {
        self.goto(base).await;
        self.wait_for(
            "window.callsignal && window.callsignal.screen()",
            json!("auth"),
            10,
        )
        .await;
        self.type_into("#auth-username", name).await;
        self.type_into("#auth-password", crate::helpers::PASSWORD)
            .await;
        self.click("#register").await;
        self.wait_for("window.callsignal.screen()", json!("home"), 10)
            .await;
        self.wait_for("window.callsignal.link()", json!("online"), 10)
            .await;
    }

    async fn bytes_received(&self) -> u64 {
        self.js("return window.callsignal.bytesReceived();")
            .await
            .as_u64()
            .unwrap_or(0)
    }

    /// Runs a DevTools Protocol command through chromedriver.
    pub(crate) async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/goog/cdp/execute",
            json!({"cmd": cmd, "params": params}),
        )
        .await
    }

    /// Runs an asynchronous script: it calls `arguments[arguments.length - 1]` with its result.
    pub(crate) async fn js_async(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/async",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// Sets the script timeout (axe-core runs for seconds on a slow machine).
    pub(crate) async fn cmd_timeouts(&self, script_ms: u64) {
        self.cmd(
            reqwest::Method::POST,
            "/timeouts",
            json!({"script": script_ms}),
        )
        .await;
    }

    /// The current window (tab) handle.
    pub(crate) async fn window(&self) -> String {
        let v = self.cmd(reqwest::Method::GET, "/window", Value::Null).await;
        v.as_str().unwrap().to_owned()
    }

    /// Opens a new tab and brings it to the front: the page's tab is hidden behind it.
    pub(crate) async fn open_tab_in_front(&self) -> String {
        let v = self
            .cmd(reqwest::Method::POST, "/window/new", json!({"type": "tab"}))
            .await;
        let handle = v["handle"].as_str().unwrap().to_owned();
        self.switch_to(&handle).await;
        handle
    }

    /// Switches WebDriver (and the browser's front tab) to `handle`.
    pub(crate) async fn switch_to(&self, handle: &str) {
        self.cmd(reqwest::Method::POST, "/window", json!({"handle": handle}))
            .await;
    }

    /// Closes the current tab.
    pub(crate) async fn close_tab(&self) {
        self.cmd(reqwest::Method::DELETE, "/window", json!({}))
            .await;
    }

    async fn history_reason(&self) -> Value {
        self.js("const li = document.querySelector('#history li'); return li ? li.dataset.reason : null;").await
    }
}

pub(crate) fn artifacts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("artifacts")
}

pub(crate) async fn call(a: &Browser, b: &Browser, to: &str) {
    a.type_into("#call-to", to).await;
    a.click("#call-button").await;
    b.wait_for("window.callsignal.screen()", json!("incoming"), 10)
        .await;
    a.wait_for(
        "document.getElementById('out-state').textContent",
        json!("Ringing…"),
        10,
    )
    .await;
}

pub(crate) async fn connected_call(a: &Browser, b: &Browser, to: &str) {
    call(a, b, to).await;
    b.click("#accept").await;
    for x in [a, b] {
        x.wait_for("window.callsignal.screen()", json!("incall"), 10)
            .await;
        x.wait_for("window.callsignal.pcState()", json!("connected"), 30)
            .await;
    }
}

pub(crate) async fn audio_flows_both_ways(a: &Browser, b: &Browser) {
    let before = (a.bytes_received().await, b.bytes_received().await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = (a.bytes_received().await, b.bytes_received().await);
    assert!(
        after.0 > before.0 && after.0 > 1000,
        "alice receives audio: {before:?} → {after:?}"
    );
    assert!(
        after.1 > before.1 && after.1 > 1000,
        "bob receives audio: {before:?} → {after:?}"
    );
}

pub(crate) async fn codes(a: &Browser, b: &Browser) -> (String, String) {
    let mut out = vec![];
    for x in [a, b] {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let v = x
                .js("return document.getElementById('verify-code').dataset.code || null;")
                .await;
            if let Some(code) = v.as_str() {
                out.push(code.to_owned());
                break;
            }
            assert!(Instant::now() < until, "{}: no verification code", x.name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    (out[0].clone(), out[1].clone())
}

pub(crate) async fn end_call(a: &Browser, b: &Browser) {
    a.click("#hangup").await;
    for x in [a, b] {
        x.wait_for("window.callsignal.screen()", json!("home"), 10)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "started inside its own network namespace by browser_calls_in_chromium"]
async fn browser_scenarios() {
    if std::env::var(INNER_ENV).is_err() {
        eprintln!(
            "browser_scenarios runs only inside the namespace made by browser_calls_in_chromium"
        );
        return;
    }
    // Many calls between the same two users within a minute: lift the per-pair invite limit.
    // The accessibility audit keeps calls ringing on screen a while: a longer ring timeout.
    let app = spawn_app_with(Backend::Sqlite, |f| {
        f.merge(("calls.invites_per_pair_per_minute", 100))
            .merge(("calls.invites_per_callee_per_minute", 100))
            .merge(("calls.ring_timeout_secs", 300))
    })
    .await;
    let base = format!("http://{}/", app.addr);
    let driver = Driver::start().await;
    let alice = driver.browser("alice", 1280, 800).await;
    let bob = driver.browser("bob", 390, 844).await;
    alice.register(&base, "alice").await;
    bob.register(&base, "bob").await;

    // 1. A calls B, B accepts, audio flows both ways, same code, A hangs up, history says so.
    connected_call(&alice, &bob, "bob").await;
    audio_flows_both_ways(&alice, &bob).await;
    let (ca, cb) = codes(&alice, &bob).await;
    assert_eq!(ca, cb, "both sides show the same verification code");
    assert_eq!(ca.len(), 6);
    alice
        .wait_for(
            "document.getElementById('meter-out').value > 0",
            json!(true),
            10,
        )
        .await;
    alice.screenshot("call-alice-desktop").await;
    bob.screenshot("call-bob-phone").await;
    end_call(&alice, &bob).await;
    for x in [&alice, &bob] {
        x.wait_for(
            "(document.querySelector('#history li') || {dataset: {}}).dataset.reason",
            json!("hangup"),
            10,
        )
        .await;
    }
    alice.screenshot("home-alice-desktop").await;
    assert_eq!(bob.history_reason().await, json!("hangup"));

    // 2. B rejects.
    call(&alice, &bob, "bob").await;
    bob.screenshot("incoming-bob-phone").await;
    bob.click("#reject").await;
    alice
        .wait_for("window.callsignal.screen()", json!("home"), 10)
        .await;
    alice
        .wait_for(
            "document.getElementById('notice').textContent",
            json!("bob declined the call."),
            10,
        )
        .await;
    alice
        .wait_for(
            "(document.querySelector('#history li') || {dataset: {}}).dataset.reason",
            json!("rejected"),
            10,
        )
        .await;

    // 3. B's socket drops mid-call and resumes; the call goes on.
    connected_call(&alice, &bob, "bob").await;
    bob.js("window.callsignal.dropSocket(); return null;").await;
    bob.wait_for(
        "window.callsignal.events().includes('welcome.resumed')",
        json!(true),
        10,
    )
    .await;
    alice
        .wait_for(
            "window.callsignal.events().includes('peer.reconnecting')",
            json!(true),
            10,
        )
        .await;
    alice
        .wait_for(
            "window.callsignal.events().includes('peer.reconnected')",
            json!(true),
            10,
        )
        .await;
    bob.wait_for("window.callsignal.screen()", json!("incall"), 5)
        .await;
    audio_flows_both_ways(&alice, &bob).await;
    end_call(&bob, &alice).await;
    alice
        .wait_for(
            "(document.querySelector('#history li') || {dataset: {}}).dataset.reason",
            json!("hangup"),
            10,
        )
        .await;

    // 5. The caller's tab reloads mid-call: the page takes its connection over, renegotiates
    // media on the same call, audio flows again and both pages show the same new code.
    connected_call(&alice, &bob, "bob").await;
    let call_id = alice.js("return window.callsignal.callId();").await;
    let (old, _) = codes(&alice, &bob).await;
    alice.js("location.reload(); return null;").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    alice
        .wait_for(
            "window.callsignal && window.callsignal.screen()",
            json!("incall"),
            15,
        )
        .await;
    assert_eq!(
        alice.js("return window.callsignal.callId();").await,
        call_id,
        "same call"
    );
    for x in [&alice, &bob] {
        x.wait_for("window.callsignal.pcState()", json!("connected"), 30)
            .await;
    }
    audio_flows_both_ways(&alice, &bob).await;
    for x in [&alice, &bob] {
        x.wait_for(
            &format!("(window.callsignal.code() || '{old}') !== '{old}'"),
            json!(true),
            15,
        )
        .await;
    }
    let (na, nb) = codes(&alice, &bob).await;
    assert_eq!(na, nb, "both pages show the same new code");
    bob.wait_for(
        "(window.callsignal.state().codeNote || '').includes('code changed')",
        json!(true),
        10,
    )
    .await;
    alice.screenshot("reloaded-alice").await;
    end_call(&alice, &bob).await;

    // 6. The callee's tab closes (navigates away: close 1001): the caller's page shows the end
    // within the short grace.
    connected_call(&alice, &bob, "bob").await;
    bob.goto("about:blank").await;
    alice
        .wait_for("window.callsignal.screen()", json!("home"), 12)
        .await;
    alice
        .wait_for(
            "document.getElementById('notice').textContent",
            json!("The connection to bob was lost."),
            5,
        )
        .await;
    bob.goto(&base).await;
    bob.wait_for(
        "window.callsignal && window.callsignal.link()",
        json!("online"),
        15,
    )
    .await;

    // 7. The callee's microphone is blocked: accepting declines with the cause, and both pages
    // say so.
    bob.js("window.callsignal.failMicrophone('NotAllowedError'); return null;")
        .await;
    call(&alice, &bob, "bob").await;
    bob.click("#accept").await;
    alice
        .wait_for(
            "document.getElementById('notice').textContent",
            json!("bob could not answer: their microphone is blocked."),
            10,
        )
        .await;
    bob.wait_for(
        "document.getElementById('notice').textContent.startsWith('You declined because the microphone is blocked')",
        json!(true),
        10,
    )
    .await;
    bob.js("window.callsignal.failMicrophone(null); return null;")
        .await;

    // 8–11: the call app around the call (see browser_ui.rs).
    crate::browser_ui::scenarios(&driver, &base, &alice, &bob).await;

    // 4. A signaling server that rewrites a fingerprint is caught: the codes differ.
    let evil: TestApp = spawn_app_with(Backend::Sqlite, |f| {
        f.merge(("test_hooks.tamper_fingerprint_to", "bob"))
    })
    .await;
    let evil_base = format!("http://{}/", evil.addr);
    alice.register(&evil_base, "alice").await;
    bob.register(&evil_base, "bob").await;
    call(&alice, &bob, "bob").await;
    bob.click("#accept").await;
    let (ta, tb) = codes(&alice, &bob).await;
    assert_ne!(ta, tb, "a tampered fingerprint must show different codes");
    alice.screenshot("tampered-alice").await;
    bob.screenshot("tampered-bob").await;
    end_call(&alice, &bob).await;
    drop(app);
}
