//! The HTTP server: accepts TCP connections (at most `server.max_tcp_connections`, at most
//! `server.max_connections_per_address` from one address), serves HTTP/1.1 and HTTP/2 through
//! hyper-util with a deadline at every stage of a connection (see [`connection`]), and routes
//! requests through the routing table [`ROUTES`] (documented in `docs/openapi.yaml`). `/ws`
//! upgrades to the signaling protocol (see [`crate::ws`]).

pub mod connection;
pub mod error;
pub mod request;
pub mod response;
pub mod routes;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use self::connection::{Activity, AddressSlots, CLOSE_GRACE, Deadlines};
use self::error::ApiError;
use self::response::{HttpResponse, add_common_headers};
use crate::state::AppState;

/// Accepts connections until `shutdown` flips, then stops accepting and lets in-flight
/// connections finish (WebSockets are closed by the actor tree's own shutdown).
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let server = &state.settings.server;
    let header_timeout = Duration::from_secs(server.header_read_timeout_secs.max(1));
    let deadlines = Deadlines {
        first_request: header_timeout,
        idle: Duration::from_secs(server.idle_timeout_secs.max(1)),
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(
        server.max_tcp_connections.max(1),
    ));
    let per_address = AddressSlots::new(server.max_connections_per_address);
    loop {
        // Wait for a free slot before accepting: excess clients wait in the kernel's backlog
        // instead of costing memory here.
        let permit = tokio::select! {
            _ = shutdown.changed() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // One address may hold only its share of the slots; the rest stay free for others.
        let Some(address_slot) = per_address.try_acquire(peer.ip()) else {
            state.metrics.connections_refused.inc();
            tracing::debug!(%peer, "connection refused: its address holds its share of the slots");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let conn_shutdown = shutdown.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slots = (permit, address_slot);
            // Made at the accept: the first request's deadline runs from here, through a TLS
            // handshake (not from the handshake's end, which would let a slow client have the
            // deadline twice over).
            let activity = Arc::new(Activity::default());
            match tls {
                None => {
                    serve_connection(stream, activity, state, peer, deadlines, conn_shutdown).await
                }
                // The handshake is part of the first request's deadline.
                Some(acceptor) => {
                    match tokio::time::timeout(deadlines.first_request, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => {
                            serve_connection(tls, activity, state, peer, deadlines, conn_shutdown)
                                .await
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Serves one connection (plain TCP or TLS) with hyper-util: HTTP/1.1 with upgrades, or HTTP/2,
/// until it ends, misses a deadline (of `activity`, made when the connection was accepted) or
/// the server shuts down.
async fn serve_connection<IO>(
    io: IO,
    activity: Arc<Activity>,
    state: Arc<AppState>,
    peer: SocketAddr,
    deadlines: Deadlines,
    mut conn_shutdown: watch::Receiver<bool>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Off: our own deadlines bound each head from its first byte (connection.rs says why).
        .header_read_timeout(None)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64)
        // Ping idle HTTP/2 peers so dead ones are noticed and their slot freed.
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_header_list_size(32 * 1024);
    let service_activity = activity.clone();
    let service = service_fn(move |req| {
        let state = state.clone();
        let request = service_activity.begin(req.version() == hyper::Version::HTTP_2);
        async move {
            let resp = handle(&state, req, peer).await;
            drop(request);
            Ok::<_, Infallible>(resp)
        }
    });
    let io = connection::Watched::new(io, activity.clone());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, %peer, "http connection ended with an error");
            }
        }
        _ = activity.expired(deadlines) => {
            // Silent, slow or idle: say goodbye (HTTP/2 GOAWAY), then drop the socket.
            tracing::debug!(%peer, "closing a connection past its deadline");
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
        }
        _ = conn_shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

/// The metrics label of a request: its routing-table template, `static` for the browser
/// client's files, `unmatched` otherwise (a bounded set, whatever clients send).
fn route_label(method: &Method, path: &str) -> &'static str {
    let segments = segments(path);
    if let Some(r) = matching_routes(&segments)
        .into_iter()
        .find(|r| r.method == method.as_str() || (method == Method::HEAD && head_too(r)))
    {
        return r.path;
    }
    match segments.first() {
        Some(&"api") => "unmatched",
        _ if method == Method::GET || method == Method::HEAD => "static",
        _ => "unmatched",
    }
}

async fn handle(state: &Arc<AppState>, req: Request<Incoming>, peer: SocketAddr) -> HttpResponse {
    let started = std::time::Instant::now();
    // Paths carry no secrets (tokens never travel in URLs); the query string is left out anyway.
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let mut resp = match route(state, req, peer).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    add_common_headers(&mut resp);
    let route = route_label(&method, &path);
    state
        .metrics
        .http_requests
        .get_or_create(&crate::metrics::HttpLabels {
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    state
        .metrics
        .http_duration
        .get_or_create(&crate::metrics::RouteLabel { route })
        .observe(started.elapsed().as_secs_f64());
    tracing::debug!(target: "http", %method, path, status = resp.status().as_u16(),
        micros = started.elapsed().as_micros() as u64, "request");
    resp
}

/// A REST endpoint the router serves; see [`ROUTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /api/auth/register`
    Register,
    /// `POST /api/auth/login`
    Login,
    /// `POST /api/auth/refresh`
    Refresh,
    /// `POST /api/auth/logout`
    Logout,
    /// `GET /api/me`
    Me,
    /// `GET /api/sessions`
    ListSessions,
    /// `POST /api/sessions/revoke-others`
    RevokeOtherSessions,
    /// `DELETE /api/sessions/{id}`
    DeleteSession,
    /// `GET /api/calls`
    ListCalls,
    /// `GET /api/calls/{id}`
    GetCall,
    /// `GET /api/ice-servers`
    IceServers,
    /// `GET /api/openapi.yaml`
    OpenApi,
    /// `GET /healthz`
    Healthz,
    /// `GET /readyz`
    Readyz,
    /// `GET /metrics`
    Metrics,
    /// `GET /ws` (WebSocket upgrade)
    WebSocket,
}

/// One row of the routing table: an HTTP method, a path template and the endpoint serving it.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// Upper-case HTTP method, e.g. `GET`.
    pub method: &'static str,
    /// Path template in OpenAPI syntax: `/`-separated segments, `{id}` standing for any one
    /// segment (trailing slashes of a request are ignored).
    pub path: &'static str,
    /// The handler.
    pub endpoint: Endpoint,
}

const fn r(method: &'static str, path: &'static str, endpoint: Endpoint) -> Route {
    Route {
        method,
        path,
        endpoint,
    }
}

/// The routing table: every method and path the server answers other than the browser client's
/// static files (any other `GET` outside `/api/`). Requests are routed by looking them up here,
/// so no route exists outside this table; `docs/openapi.yaml` documents every row (checked by
/// `tests/api/openapi.rs`). A path in the table requested with another method is 405
/// `method_not_allowed` with an `Allow` header (RFC 9110 §15.5.6); any other `/api/…` path is
/// 404 `not_found`.
pub const ROUTES: &[Route] = &[
    r("POST", "/api/auth/register", Endpoint::Register),
    r("POST", "/api/auth/login", Endpoint::Login),
    r("POST", "/api/auth/refresh", Endpoint::Refresh),
    r("POST", "/api/auth/logout", Endpoint::Logout),
    r("GET", "/api/me", Endpoint::Me),
    r("GET", "/api/sessions", Endpoint::ListSessions),
    r(
        "POST",
        "/api/sessions/revoke-others",
        Endpoint::RevokeOtherSessions,
    ),
    r("DELETE", "/api/sessions/{id}", Endpoint::DeleteSession),
    r("GET", "/api/calls", Endpoint::ListCalls),
    r("GET", "/api/calls/{id}", Endpoint::GetCall),
    r("GET", "/api/ice-servers", Endpoint::IceServers),
    r("GET", "/api/openapi.yaml", Endpoint::OpenApi),
    r("GET", "/healthz", Endpoint::Healthz),
    r("GET", "/readyz", Endpoint::Readyz),
    r("GET", "/metrics", Endpoint::Metrics),
    r("GET", "/ws", Endpoint::WebSocket),
];

/// The segments of a request path: `/api/calls/x/` → `["api", "calls", "x"]`, `/` → `[]`.
fn segments(path: &str) -> Vec<&str> {
    path.trim_end_matches('/').split('/').skip(1).collect()
}

/// Whether `segments` fit the template `path`; `{…}` matches any one segment.
fn template_matches(path: &str, segments: &[&str]) -> bool {
    let template = self::segments(path);
    template.len() == segments.len()
        && template
            .iter()
            .zip(segments)
            .all(|(t, s)| (t.starts_with('{') && t.ends_with('}')) || t == s)
}

/// The rows of [`ROUTES`] whose template fits `segments`, keeping only the most specific ones
/// (most literal segments): `/api/sessions/revoke-others` is that route, not `{id}` =
/// "revoke-others" of `/api/sessions/{id}`.
fn matching_routes(segments: &[&str]) -> Vec<&'static Route> {
    let literal = |r: &Route| {
        self::segments(r.path)
            .iter()
            .filter(|t| !t.starts_with('{'))
            .count()
    };
    let fitting: Vec<&Route> = ROUTES
        .iter()
        .filter(|r| template_matches(r.path, segments))
        .collect();
    let best = fitting.iter().map(|r| literal(r)).max().unwrap_or(0);
    fitting.into_iter().filter(|r| literal(r) == best).collect()
}

/// Whether a `GET` row also serves `HEAD`: every one but the WebSocket upgrade, which is a
/// `GET` only (RFC 6455 §4.1).
fn head_too(route: &Route) -> bool {
    route.method == "GET" && route.endpoint != Endpoint::WebSocket
}

/// The row of [`ROUTES`] that serves `method` on `segments`, if any. `HEAD` is served by the
/// `GET` row (RFC 9110 §9.3.2: the same response without content; hyper leaves the body out),
/// except the WebSocket upgrade's.
fn resolve(method: &Method, segments: &[&str]) -> Option<Endpoint> {
    matching_routes(segments)
        .into_iter()
        .find(|r| r.method == method.as_str() || (method == Method::HEAD && head_too(r)))
        .map(|r| r.endpoint)
}

/// The methods [`ROUTES`] serves on `segments`, in table order (`HEAD` after the `GET` that
/// serves it); empty for an unknown path.
fn allowed_methods(segments: &[&str]) -> Vec<&'static str> {
    let mut methods = vec![];
    for r in matching_routes(segments) {
        methods.push(r.method);
        if head_too(r) {
            methods.push("HEAD");
        }
    }
    methods
}

async fn route(
    state: &Arc<AppState>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<HttpResponse, ApiError> {
    use routes::*;
    let client = request::client_ip(req.headers(), peer, &state.settings.server.trusted_proxies);
    req.extensions_mut().insert(request::ClientAddr(client));
    let path = req.uri().path().to_owned();
    let segments = segments(&path);
    let method = req.method().clone();
    let Some(endpoint) = resolve(&method, &segments) else {
        return not_routed(&method, &path, &segments);
    };
    // The `{id}` segment of the templates that have one (always the last).
    let id = segments.last().copied().unwrap_or_default();
    match endpoint {
        Endpoint::Register => auth::register(state, req, client).await,
        Endpoint::Login => auth::login(state, req, client).await,
        Endpoint::Refresh => auth::refresh(state, req, client).await,
        Endpoint::Logout => auth::logout(state, req).await,
        Endpoint::Me => auth::me(state, req).await,
        Endpoint::ListSessions => sessions::list(state, req).await,
        Endpoint::RevokeOtherSessions => sessions::revoke_others(state, req).await,
        Endpoint::DeleteSession => sessions::delete(state, req, id).await,
        Endpoint::ListCalls => calls::list(state, req).await,
        Endpoint::GetCall => calls::get(state, req, id).await,
        Endpoint::IceServers => ice::get(state, req).await,
        Endpoint::OpenApi => Ok(docs::openapi()),
        Endpoint::Healthz => Ok(health::healthz()),
        Endpoint::Readyz => Ok(health::readyz(state).await),
        Endpoint::Metrics => health::metrics(state, client),
        Endpoint::WebSocket => ws::upgrade(state, req, peer).await,
    }
}

/// A request no row of [`ROUTES`] serves: 405 with `Allow` for a known path, the browser
/// client's files for other `GET`/`HEAD` outside `/api/`, 404 otherwise.
fn not_routed(method: &Method, path: &str, segments: &[&str]) -> Result<HttpResponse, ApiError> {
    let allowed = allowed_methods(segments);
    if !allowed.is_empty() {
        let mut resp = ApiError::MethodNotAllowed.into_response();
        if let Ok(v) = hyper::header::HeaderValue::from_str(&allowed.join(", ")) {
            resp.headers_mut().insert(hyper::header::ALLOW, v);
        }
        return Ok(resp);
    }
    match (segments.first(), method) {
        (Some(&"api"), _) => Err(ApiError::NotFound),
        (_, &Method::GET | &Method::HEAD) => routes::web::asset(path),
        _ => Err(ApiError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `path` with every `{…}` segment replaced by `value`.
    fn instantiate(path: &str, value: &str) -> String {
        path.split('/')
            .map(|s| if s.starts_with('{') { value } else { s })
            .collect::<Vec<_>>()
            .join("/")
    }

    const METHODS: [Method; 7] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ];

    #[test]
    fn every_route_resolves_to_its_own_endpoint() {
        for route in ROUTES {
            let method = Method::from_bytes(route.method.as_bytes()).expect("method");
            for value in ["0b7c5f0e-4a55-4c55-9c7b-3c8f1b2f6a10", "x"] {
                let path = instantiate(route.path, value);
                for p in [path.clone(), format!("{path}/")] {
                    assert_eq!(
                        resolve(&method, &segments(&p)),
                        Some(route.endpoint),
                        "{} {p}",
                        route.method
                    );
                }
            }
        }
    }

    #[test]
    fn each_endpoint_has_exactly_one_row() {
        for route in ROUTES {
            let rows = ROUTES
                .iter()
                .filter(|r| r.endpoint == route.endpoint)
                .count();
            assert_eq!(rows, 1, "{:?}", route.endpoint);
            let same = ROUTES
                .iter()
                .filter(|r| r.method == route.method && r.path == route.path)
                .count();
            assert_eq!(same, 1, "{} {} listed twice", route.method, route.path);
        }
    }

    #[test]
    fn other_methods_on_known_paths_are_405_with_allow() {
        for route in ROUTES {
            let segs = segments(route.path);
            let allowed = allowed_methods(&segs);
            assert!(allowed.contains(&route.method), "{}", route.path);
            for m in &METHODS {
                let served = resolve(m, &segs).is_some();
                assert_eq!(served, allowed.contains(&m.as_str()), "{m} {}", route.path);
                if !served {
                    let resp = not_routed(m, route.path, &segs).expect("a response");
                    assert_eq!(resp.status(), hyper::StatusCode::METHOD_NOT_ALLOWED);
                    assert_eq!(resp.headers()[hyper::header::ALLOW], allowed.join(", "));
                }
            }
        }
    }

    #[test]
    fn a_literal_route_is_not_also_a_template_route() {
        // Found by schemathesis: `Allow` for /api/sessions/revoke-others listed DELETE, because
        // "revoke-others" also fits `{id}` of /api/sessions/{id}.
        let segs = segments("/api/sessions/revoke-others");
        assert_eq!(allowed_methods(&segs), vec!["POST"]);
        assert_eq!(resolve(&Method::DELETE, &segs), None);
        assert_eq!(
            resolve(
                &Method::DELETE,
                &segments("/api/sessions/6f1c7c3e-8f57-4b2a-9f4e-0a0b0c0d0e0f")
            ),
            Some(Endpoint::DeleteSession)
        );
        assert_eq!(
            route_label(&Method::POST, "/api/sessions/revoke-others"),
            "/api/sessions/revoke-others"
        );
    }

    #[test]
    fn unknown_api_paths_are_404_and_others_are_client_files() {
        for path in [
            "/api",
            "/api/nope",
            "/api/me/x",
            "/api/calls/a/b",
            "/api/auth",
        ] {
            let segs = segments(path);
            assert!(allowed_methods(&segs).is_empty(), "{path}");
            assert!(
                matches!(
                    not_routed(&Method::GET, path, &segs),
                    Err(ApiError::NotFound)
                ),
                "{path}"
            );
        }
        let ok = not_routed(&Method::GET, "/", &segments("/")).expect("index");
        assert_eq!(ok.status(), hyper::StatusCode::OK);
        assert!(matches!(
            not_routed(&Method::POST, "/", &segments("/")),
            Err(ApiError::NotFound)
        ));
    }
}
