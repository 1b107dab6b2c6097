//! opampd as a library: everything but process concerns (flags, signals, exit codes), so tests
//! start the real server on `127.0.0.1:0` and `main.rs` only wires.
//!
//! Module map: [`config`] flags and validation; [`service`] the transport-independent OpAMP
//! handler; [`http`] the HTTP transport and the `/v1/opamp` router; [`auth`] the agent
//! authentication layer on that route; [`ws`] the WebSocket
//! transport; [`sessions`] admission and shutdown of WebSocket sessions; [`admin`] health,
//! metrics and the agent API; [`error`] the one place errors become statuses and in-band
//! replies; [`server`] connection handling and draining; [`store`] opening the configured
//! backend; [`state`] the handles handlers share; [`telemetry`] logs, metric names and the
//! recording helpers; [`tls`] TLS on the OpAMP listener (files, handshakes, reloads);
//! [`configs`] the remote configs in force, rollout pacing and the config operations;
//! [`clock`] the wall clock the core is given; [`client`] the `agents` and `stats` commands,
//! which ask a running server's admin API.

pub mod admin;
pub mod auth;
pub mod client;
pub mod clock;
pub mod config;
pub mod configs;
pub mod error;
pub mod http;
pub mod server;
pub mod service;
pub mod sessions;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod ws;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use opamp_core::ServerConfig;
use opamp_store::Backend;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

pub use config::Config;
use service::OpampService;
use state::{AppState, Limits, ShuttingDown};
use tls::ServerTls;

/// The two bound listeners; binding is the caller's job so tests can use port 0.
#[derive(Debug)]
pub struct Listeners {
    pub opamp: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds both addresses of `config`.
    pub async fn bind(config: &Config) -> std::io::Result<Self> {
        Ok(Self {
            opamp: TcpListener::bind(config.listen).await?,
            admin: TcpListener::bind(config.admin_listen).await?,
        })
    }
}

/// Why the server stopped unsuccessfully.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("flushing the store at shutdown failed: {0}")]
    Flush(opamp_store::StoreError),
    #[error("flushing the store at shutdown timed out")]
    FlushTimeout,
    #[error("tls: {0}")]
    Tls(tls::TlsError),
    #[error("setting up agent authentication: {0}")]
    Auth(auth::AuthSetupError),
}

/// How long startup waits for the first read of the remote configs.
const FIRST_CONFIG_READ: Duration = Duration::from_secs(2);

/// How long the admin listener keeps answering after the OpAMP listener has drained.
const ADMIN_GRACE: Duration = Duration::from_secs(2);

/// What the core decides with: the defaults, and how often a check-in alone is published.
fn server_config(config: &Config) -> ServerConfig {
    let interval = config.checkin_publish_interval.as_millis();
    ServerConfig {
        publish_interval_ms: u64::try_from(interval).unwrap_or(u64::MAX),
        ..ServerConfig::default()
    }
}

/// Builds the handler state for `config` over `store`, with the agent key checker `config`
/// asks for (on the store's Elasticsearch settings).
pub fn app_state(config: &Config, store: Arc<dyn Backend>) -> Result<AppState, RunError> {
    // the recorder exists before the key checker registers its series
    let metrics = telemetry::metrics_handle();
    let auth = auth::from_config(config).map_err(RunError::Auth)?;
    let clock = clock::system_clock();
    let configs = configs::Configs::new(store.clone(), clock.clone(), config.config_refresh);
    Ok(AppState {
        service: OpampService::new(store, configs, server_config(config), clock),
        limits: Limits {
            max_message_bytes: config.max_message_bytes,
            request_timeout: config.request_timeout,
            ws_idle_timeout: config.ws_idle_timeout,
        },
        in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
        shutting_down: ShuttingDown::default(),
        metrics,
        offline_after: config.offline_after,
        ws: sessions::Sessions::new(config.max_ws_sessions),
        auth,
        admin_token: config.admin_token.clone(),
    })
}

/// Serves OpAMP and admin on `listeners` until `shutdown` completes, then stops accepting,
/// gives in-flight requests `config.shutdown_grace` to finish, closes WebSocket sessions with
/// 1001 within the same grace, and flushes the store. TLS, when `config.tls` names files, is
/// loaded here; [`run_with_tls`] takes a loaded one instead, to keep a handle for reloads.
pub async fn run(
    config: &Config,
    store: Arc<dyn Backend>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let tls = match &config.tls {
        Some(files) => Some(ServerTls::load(files).map_err(RunError::Tls)?),
        None => None,
    };
    run_with_tls(config, store, listeners, tls, shutdown).await
}

/// [`run`] with the OpAMP listener's TLS given (`None`: plain HTTP, whatever `config.tls`
/// says). The caller keeps a clone of `tls` to reload it (`main` does on SIGHUP); the files
/// are also checked for changes every [`tls::WATCH_INTERVAL`].
pub async fn run_with_tls(
    config: &Config,
    store: Arc<dyn Backend>,
    listeners: Listeners,
    tls: Option<ServerTls>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let state = app_state(config, store.clone())?;
    // Read the remote configs before serving, so an instance that can reach its store is ready
    // at once; one that cannot keeps trying in the background and is not ready until then.
    match tokio::time::timeout(FIRST_CONFIG_READ, state.service.configs().refresh()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "remote configs not read yet; retrying in the background");
        }
        Err(_) => tracing::warn!(
            wait = ?FIRST_CONFIG_READ,
            "remote configs not read yet; retrying in the background"
        ),
    }
    let (stop_opamp, stop_opamp_rx) = watch::channel(false);
    let (stop_admin, stop_admin_rx) = watch::channel(false);
    tracing::info!(
        listen = %listeners.opamp.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        admin_listen = %listeners.admin.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        max_message_bytes = config.max_message_bytes,
        max_in_flight = config.max_in_flight,
        max_ws_sessions = config.max_ws_sessions,
        tls = tls.is_some(),
        tls_client_auth = tls.as_ref().is_some_and(ServerTls::requires_client_certificates),
        "opampd serving"
    );
    let tls_watch = tls.clone().map(|t| tokio::spawn(tls::watch(t, tls::WATCH_INTERVAL)));
    let opamp = tokio::spawn(server::serve(
        "opamp",
        listeners.opamp,
        tls,
        http::router(state.clone()),
        config.idle_timeout,
        stop_opamp_rx,
        config.shutdown_grace,
    ));
    let admin = tokio::spawn(server::serve(
        "admin",
        listeners.admin,
        None,
        admin::router(state.clone()),
        config.idle_timeout,
        stop_admin_rx,
        ADMIN_GRACE,
    ));
    let upkeep = tokio::spawn(metrics_upkeep(state.metrics.clone()));
    let (stop_configs, mut stop_configs_rx) = watch::channel(false);
    let configs = tokio::spawn(state.service.configs().clone().run(async move {
        let _ = stop_configs_rx.changed().await;
    }));

    shutdown.await;
    tracing::info!(grace = ?config.shutdown_grace, "shutting down");
    state.shutting_down.set();
    let _ = stop_opamp.send(true);
    // Upgraded connections have left the HTTP server's connection set (hyper hands their IO
    // to the WebSocket task), so they are drained here, alongside and within the same grace.
    let (_, ()) = tokio::join!(opamp, state.ws.close_all(config.shutdown_grace));
    let _ = stop_admin.send(true);
    let _ = admin.await;
    upkeep.abort();
    let _ = stop_configs.send(true);
    let _ = configs.await;
    if let Some(watcher) = tls_watch {
        watcher.abort();
    }

    let flushed =
        tokio::time::timeout(config.shutdown_grace.max(Duration::from_secs(5)), store.flush())
            .await;
    match flushed {
        Ok(Ok(())) => {
            tracing::info!("store flushed, bye");
            Ok(())
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "store flush failed");
            Err(RunError::Flush(e))
        }
        Err(_) => {
            tracing::error!("store flush timed out");
            Err(RunError::FlushTimeout)
        }
    }
}

/// Drains histogram samples into the exporter's buckets even when nobody scrapes, so they do
/// not pile up in memory.
async fn metrics_upkeep(handle: metrics_exporter_prometheus::PrometheusHandle) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}
