//! Building and running the server: `App::build` (database, migrations, crash recovery, keys,
//! actor tree, listener) → `App::local_addr` → `App::run_until_stopped` (serve until the shutdown
//! signal, then end calls, close sockets, drain call events, stop).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use ractor::Actor;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::actors::root::{Root, RootArgs};
use crate::actors::{ActorSystem, PersistenceHandle};
use crate::auth::hashing::{LaneLimits, PasswordHasher};
use crate::auth::jwt::TokenIssuer;
use crate::auth::refresh::RefreshTokens;
use crate::auth::register_limit::RegistrationLimit;
use crate::auth::secret;
use crate::auth::throttle::LoginThrottle;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::store;
use crate::ws::protocol::EndReason;

/// A built, not yet running server.
pub struct App {
    listener: TcpListener,
    tls: Option<(tokio_rustls::TlsAcceptor, Arc<crate::tls::ReloadingCert>)>,
    addr: SocketAddr,
    state: Arc<AppState>,
}

impl App {
    /// Connects, migrates (unless disabled), recovers unfinished calls, starts the actor tree
    /// and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let settings = Arc::new(settings);
        // What can fail for the operator's reasons fails first, before anything is written:
        // the listen address, then the TLS files.
        let bind = settings.server.bind;
        let listener = TcpListener::bind(bind)
            .await
            .with_context(|| format!("cannot listen on {bind}"))?;
        let addr = listener.local_addr()?;
        let tls = crate::tls::acceptor(&settings.server.tls)?;
        // The first log line: what is starting, where, on what.
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            addr = %addr,
            scheme = if tls.is_some() { "https" } else { "http" },
            tls = if tls.is_some() { "on" } else { "off" },
            database = store::describe(&settings.database),
            instance_id = %settings.server.instance_id,
            trusted_proxies = settings.server.trusted_proxies.len(),
            "callsignal {} starting on {addr} ({}, TLS {}, database {})",
            env!("CARGO_PKG_VERSION"),
            if tls.is_some() { "https" } else { "http" },
            if tls.is_some() { "on" } else { "off" },
            store::describe(&settings.database),
        );
        if settings.server.data_dir.exists() {
            // It may hold the SQLite database and the generated key: not for other users.
            store::ensure_private_dir(&settings.server.data_dir)?;
        }
        let db = store::connect(&settings.database).await?;
        if settings.database.migrate_on_start {
            store::migrate(&db).await?;
        }
        // Before crash recovery: while a live node holds this instance_id, its calls are not
        // ours to end.
        let cluster = match settings.cluster.nats_url {
            Some(_) => Some(crate::cluster::Cluster::join(&settings).await?),
            None => None,
        };
        let recovered = store::calls::end_unfinished(
            &db,
            &settings.server.instance_id,
            EndReason::ServerRestart.as_str(),
        )
        .await?;
        if recovered > 0 {
            tracing::warn!(calls = recovered, instance_id = %settings.server.instance_id,
                "ended calls left unfinished by a previous run (server_restart)");
        }
        let key =
            secret::load_or_generate(settings.auth.jwt_secret.as_ref(), &settings.server.data_dir)
                .with_context(|| {
                    format!(
                        "JWT key in the data directory {}",
                        settings.server.data_dir.display()
                    )
                })?;
        let metrics = Arc::new(Metrics::default());
        let system_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let persistence =
            PersistenceHandle::new(&settings.persistence, &system_id, metrics.clone());
        let root_args = RootArgs {
            system_id: system_id.clone(),
            settings: settings.clone(),
            db: db.clone(),
            persistence: persistence.clone(),
            metrics: metrics.clone(),
            cluster: cluster.clone(),
        };
        let (root, _) = Actor::spawn(
            Some(format!("callsignal-{system_id}-root")),
            Root,
            root_args,
        )
        .await?;
        tracing::info!(target: "supervision", event = "started", node = %settings.server.instance_id, actor = "root", actor_id = %root.get_id(), "actor started");
        if let Some(c) = &cluster {
            c.start(&system_id).await?;
        }
        let state = Arc::new(AppState {
            tokens: TokenIssuer::new(&key, &settings.auth),
            refresh: RefreshTokens::new(&key),
            hasher: PasswordHasher::new(
                LaneLimits {
                    concurrent: settings.auth.max_concurrent_hashes,
                    queued: settings.auth.max_queued_hashes,
                },
                LaneLimits {
                    concurrent: settings.auth.max_concurrent_registration_hashes,
                    queued: settings.auth.max_queued_registration_hashes,
                },
                metrics.clone(),
            ),
            throttle: LoginThrottle::new(settings.auth.throttle.clone()),
            registrations: RegistrationLimit::new(
                settings.auth.register_per_address_per_hour,
                settings.auth.register_max_tracked_addresses,
            ),
            actors: ActorSystem {
                system_id,
                root,
                persistence,
                cluster,
            },
            metrics,
            db,
            heartbeats: {
                let wheel = crate::ws::heartbeat::Heartbeats::new(settings.ws.heartbeat());
                wheel.start();
                wheel
            },
            settings,
            shutting_down: AtomicBool::new(false),
        });
        Ok(Self {
            listener,
            tls,
            addr,
            state,
        })
    }

    /// The bound address (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state (tests reach the actor tree through it).
    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `signal` resolves, then shuts down as the contract says: no new
    /// connections, every call ends `server_shutdown`, every socket closes 1001, and the process
    /// returns only once every call event is committed (or the drain deadline passed, logged).
    pub async fn run_until_stopped(self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let settings = &self.state.settings;
        tracing::info!(addr = %self.addr, "callsignal listening");
        if !self.addr.ip().is_loopback()
            && self.tls.is_none()
            && settings.server.trusted_proxies.is_empty()
        {
            tracing::warn!(addr = %self.addr,
                "listening on a non-loopback address in plain HTTP with no trusted proxy in front: \
                 browsers give pages from other hosts no microphone and no WebCrypto outside a secure \
                 context, and tokens would cross the network in clear. Set [server.tls] or put a TLS \
                 proxy in front (server.trusted_proxies)");
        }
        let acceptor = match self.tls {
            Some((acceptor, cert)) => {
                let every = Duration::from_secs(settings.server.tls.reload_check_secs);
                tokio::spawn(crate::tls::watch(cert, every));
                Some(acceptor)
            }
            None => None,
        };
        let server = tokio::spawn(crate::http::serve(
            self.listener,
            acceptor,
            self.state.clone(),
            stop_rx,
        ));
        signal.await;
        let state = self.state;
        tracing::info!("shutdown: refusing new connections, ending calls");
        state.shutting_down.store(true, Ordering::Release);
        let _ = stop_tx.send(true);
        state.actors.shutdown().await;
        if let Some(c) = &state.actors.cluster {
            c.leave().await;
        }
        let deadline = Duration::from_secs(state.settings.server.shutdown_drain_secs);
        if state.actors.persistence.drain(deadline).await {
            tracing::info!("shutdown: every call event is committed");
        } else {
            tracing::error!(
                backlog = state.actors.persistence.backlog(),
                deadline_secs = deadline.as_secs(),
                "shutdown: drain deadline exceeded; some call events were not written"
            );
        }
        // Give sockets a moment to flush their close frames.
        tokio::time::sleep(Duration::from_millis(100)).await;
        state.actors.stop().await;
        let _ = server.await;
        state.db.clone().close().await.ok();
        Ok(())
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
