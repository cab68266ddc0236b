//! Test harness: `spawn_app` starts the real server on port 0 with a fresh database per test
//! (a new SQLite file, or a new PostgreSQL database when `CALLSIGNAL_TEST_POSTGRES_URL` points
//! at a server), plus small real HTTP and WebSocket clients.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use callsignal::config::Settings;
use callsignal::startup::App;
use callsignal::state::AppState;
use figment::Figment;
use futures_util::{SinkExt, StreamExt};
use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Variable naming a PostgreSQL server (admin URL, e.g. postgres://postgres@127.0.0.1:5432/postgres).
pub const PG_ENV: &str = "CALLSIGNAL_TEST_POSTGRES_URL";

/// The JWT key of every test server.
pub const TEST_SECRET: &str = "test-secret-test-secret-test-secret-0123456789";

/// A strong password accepted by the rules.
pub const PASSWORD: &str = "correct horse battery staple";

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A fresh SQLite file.
    Sqlite,
    /// A fresh PostgreSQL database.
    Postgres,
}

// ---------------------------------------------------------------------------------------------
// Log capture: one global subscriber writing into memory, so tests can assert on log events.

#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static LOGS: OnceLock<LogBuf> = OnceLock::new();

fn init_logs() {
    LOGS.get_or_init(|| {
        let buf = LogBuf::default();
        let writer = buf.clone();
        let _ = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_writer(move || writer.clone())
            .try_init();
        buf
    });
}

/// Every captured log line so far (all tests of this binary).
pub fn logs() -> String {
    let buf = LOGS.get().expect("logs initialised");
    String::from_utf8_lossy(&buf.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

/// Polls until `check` holds or 10 s pass.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

// ---------------------------------------------------------------------------------------------

/// A running server.
pub struct TestApp {
    /// Bound address.
    pub addr: SocketAddr,
    /// The server's shared state (actor tree, database).
    pub state: Arc<AppState>,
    /// HTTP client.
    pub http: reqwest::Client,
    /// Database URL the server uses.
    pub db_url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

/// A registered, logged-in user.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// Id.
    pub id: String,
    /// Access token.
    pub access: String,
    /// Refresh token.
    pub refresh: String,
    /// Session id.
    pub session_id: String,
}

/// Starts a server on SQLite with default test settings.
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |f| f).await
}

/// Starts a server on PostgreSQL if configured; `None` (loudly) otherwise. In CI (`CI` set),
/// a missing PostgreSQL is a failure, never a silent skip.
pub async fn spawn_postgres_with(configure: impl FnOnce(Figment) -> Figment) -> Option<TestApp> {
    if std::env::var(PG_ENV).is_err() {
        if std::env::var("CI").is_ok() {
            panic!("{PG_ENV} is not set in CI: PostgreSQL tests must run");
        }
        eprintln!(
            "SKIPPED on PostgreSQL: set {PG_ENV} (e.g. postgres://postgres@127.0.0.1:5432/postgres)"
        );
        return None;
    }
    Some(spawn_app_with(Backend::Postgres, configure).await)
}

/// Creates a fresh database and returns its URL.
pub async fn fresh_database(backend: Backend, dir: &std::path::Path) -> String {
    match backend {
        Backend::Sqlite => format!("sqlite://{}?mode=rwc", dir.join("test.db").display()),
        Backend::Postgres => {
            let admin = std::env::var(PG_ENV).expect("PostgreSQL URL");
            let name = format!("cs_test_{}", uuid::Uuid::new_v4().simple());
            let db = Database::connect(&admin)
                .await
                .expect("connect to PostgreSQL");
            db.execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create database");
            db.close().await.ok();
            let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
            format!("{base}/{name}")
        }
    }
}

/// Starts a server with extra settings layered on the test defaults.
pub async fn spawn_app_with(
    backend: Backend,
    configure: impl FnOnce(Figment) -> Figment,
) -> TestApp {
    init_logs();
    let dir = tempfile::tempdir().expect("temp dir");
    let db_url = fresh_database(backend, dir.path()).await;
    let figment = Settings::defaults()
        .merge(("server.bind", "127.0.0.1:0"))
        .merge((
            "server.data_dir",
            dir.path().join("data").display().to_string(),
        ))
        .merge(("database.url", db_url.clone()))
        .merge(("database.max_connections", 5))
        .merge(("auth.jwt_secret", TEST_SECRET))
        .merge(("persistence.batch_interval_ms", 5))
        // Tests register many users from 127.0.0.1; the limit itself is tested on its own.
        .merge(("auth.register_per_address_per_hour", 1_000_000));
    let settings = Settings::from_figment(configure(figment)).expect("test settings");
    let db_url = settings.database.url.expose().to_owned();
    let app = App::build(settings).await.expect("server builds");
    let addr = app.local_addr();
    let state = app.state();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TestApp {
        addr,
        state,
        http: reqwest::Client::builder().build().expect("client"),
        db_url,
        stop: Some(stop),
        task: Some(task),
        _dir: dir,
    }
}

impl TestApp {
    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// POST JSON.
    pub async fn post(&self, path: &str, body: &Value, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.post(self.url(path)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request")
    }

    /// GET with an optional bearer token.
    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request")
    }

    /// GET, expecting a JSON body.
    pub async fn get_json(&self, path: &str, token: Option<&str>) -> serde_json::Value {
        self.get(path, token).await.json().await.expect("json body")
    }

    /// DELETE with an optional bearer token.
    pub async fn delete(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.delete(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request")
    }

    /// `POST /api/auth/refresh` with `token`.
    pub async fn refresh(&self, token: &str) -> reqwest::Response {
        self.post("/api/auth/refresh", &json!({"refresh_token": token}), None)
            .await
    }

    /// Registers `name` (201 expected).
    pub async fn register(&self, name: &str) -> Value {
        let r = self
            .post(
                "/api/auth/register",
                &json!({"username": name, "password": PASSWORD}),
                None,
            )
            .await;
        assert_eq!(r.status(), 201, "register {name}");
        r.json().await.expect("json")
    }

    /// Logs `name` in.
    pub async fn login(&self, name: &str) -> TestUser {
        let r = self
            .post(
                "/api/auth/login",
                &json!({"username": name, "password": PASSWORD}),
                None,
            )
            .await;
        assert_eq!(r.status(), 200, "login {name}");
        let v: Value = r.json().await.expect("json");
        TestUser {
            id: v["user"]["id"].as_str().expect("id").into(),
            access: v["access_token"].as_str().expect("access").into(),
            refresh: v["refresh_token"].as_str().expect("refresh").into(),
            session_id: v["session_id"].as_str().expect("sid").into(),
        }
    }

    /// Registers and logs in.
    pub async fn user(&self, name: &str) -> TestUser {
        self.register(name).await;
        self.login(name).await
    }

    /// A database connection of the test's own.
    pub async fn db(&self) -> sea_orm::DatabaseConnection {
        Database::connect(&self.db_url).await.expect("connect")
    }

    /// Opens a socket and completes the handshake.
    pub async fn ws(&self, user: &TestUser) -> WsClient {
        let mut c = self.ws_raw().await;
        c.send(json!({"type": "hello", "token": user.access})).await;
        let welcome = c.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        c.welcome = welcome;
        c
    }

    /// Opens a socket without a handshake.
    pub async fn ws_raw(&self) -> WsClient {
        ws_raw_at(self.addr).await
    }

    /// Opens a socket and sends `hello` with `extra` fields (e.g. `resume_token`, `last_seq`);
    /// returns the client and the first answer.
    pub async fn ws_hello(&self, user: &TestUser, extra: Value) -> (WsClient, Value) {
        let mut c = self.ws_raw().await;
        let mut hello = json!({"type": "hello", "token": user.access});
        if let (Some(h), Some(e)) = (hello.as_object_mut(), extra.as_object()) {
            h.extend(e.clone());
        }
        c.send(hello).await;
        let first = c.recv().await;
        if first["type"] == "welcome" {
            c.welcome = first.clone();
        }
        (c, first)
    }

    /// Shuts the server down as SIGTERM would and waits for it to finish.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("clean shutdown");
        }
    }

    /// Number of rows of a query's first column (integer).
    pub async fn count(&self, sql: &str) -> i64 {
        let db = self.db().await;
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                sql.to_owned(),
            ))
            .await
            .expect("query")
            .expect("row");
        row.try_get_by_index::<i64>(0).expect("integer")
    }

    /// Waits until the persistence queue is empty.
    pub async fn flushed(&self) {
        assert!(
            self.state
                .actors
                .persistence
                .drain(Duration::from_secs(10))
                .await,
            "events flushed"
        );
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        drop_test_database(&self.db_url);
    }
}

/// Drops a per-test PostgreSQL database (`cs_test_…`) so the shared server does not fill up
/// with them; SQLite files go with their temp directory. Runs on its own thread and runtime
/// because `Drop` cannot await.
pub fn drop_test_database(url: &str) {
    let Some((_, name)) = url.rsplit_once('/') else {
        return;
    };
    if !name.starts_with("cs_test_") || !url.starts_with("postgres") {
        return;
    }
    let (Ok(admin), name) = (std::env::var(PG_ENV), name.to_owned()) else {
        return;
    };
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            let db = Database::connect(&admin).await.ok()?;
            db.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
                .ok()?;
            db.close().await.ok()
        })
    })
    .join();
}

/// Opens a socket to `/ws` at `addr` (the server, or a relay in front of it).
pub async fn ws_raw_at(addr: SocketAddr) -> WsClient {
    let (stream, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("websocket connects");
    WsClient {
        stream,
        welcome: Value::Null,
    }
}

/// A real WebSocket client.
pub struct WsClient {
    /// The stream.
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The `welcome` received.
    pub welcome: Value,
}

/// What the server did to the socket.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// A close frame with this code.
    Code(u16),
    /// The connection ended without a close frame.
    Dropped,
}

impl WsClient {
    /// Sends one JSON text frame.
    pub async fn send(&mut self, v: Value) {
        self.stream
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, t: &str) {
        self.stream
            .send(Message::text(t.to_owned()))
            .await
            .expect("send");
    }

    /// Next JSON message (5 s at most); panics on close.
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), self.stream.next())
                .await
                .expect("a message within 5 s")
                .expect("stream open")
                .expect("frame");
            match msg {
                Message::Text(t) => return serde_json::from_str(t.as_str()).expect("json"),
                Message::Close(c) => panic!("socket closed: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Next message, which must have `type` = `kind`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let v = self.recv().await;
        assert_eq!(v["type"], kind, "expected {kind}, got {v}");
        v
    }

    /// Next message must be `error` with `code`.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let v = self.expect("error").await;
        assert_eq!(v["code"], code, "{v}");
        v
    }

    /// Waits for the close (skipping messages), returning how it ended.
    pub async fn closed(&mut self) -> Closed {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.stream.next())
                .await
                .expect("close within 10 s")
            {
                None | Some(Err(_)) => return Closed::Dropped,
                Some(Ok(Message::Close(Some(f)))) => return Closed::Code(f.code.into()),
                Some(Ok(Message::Close(None))) => return Closed::Dropped,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Asserts nothing arrives for `ms` milliseconds.
    pub async fn silent_for(&mut self, ms: u64) {
        loop {
            match tokio::time::timeout(Duration::from_millis(ms), self.stream.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Text(t)))) => panic!("unexpected message: {t}"),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("unexpected: {other:?}"),
            }
        }
    }

    /// The connection id from `welcome`.
    pub fn connection_id(&self) -> &str {
        self.welcome["connection_id"]
            .as_str()
            .expect("connection_id")
    }
}

/// Generates `sqlite` and `postgres` variants of each listed `async fn(TestApp)`.
#[macro_export]
macro_rules! db_tests {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::spawn_app($crate::helpers::Backend::Sqlite).await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(app) = $crate::helpers::spawn_postgres_with(|f| f).await {
                    super::$name(app).await
                }
            }
        }
    )* };
}

/// Like [`db_tests!`], with extra settings: `db_tests_with!(|f| f.merge(...); a, b)`.
#[macro_export]
macro_rules! db_tests_with {
    ($cfg:expr; $($name:ident),* $(,)?) => { $(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::spawn_app_with($crate::helpers::Backend::Sqlite, $cfg).await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(app) = $crate::helpers::spawn_postgres_with($cfg).await {
                    super::$name(app).await
                }
            }
        }
    )* };
}
