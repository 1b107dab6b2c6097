//! The handles every handler needs, in one cheap-to-clone struct passed as axum `State`.
//! Nothing here is global; two servers in one process (tests) share nothing but the metrics
//! recorder.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use opamp_store::elasticsearch::enrollment::EnrollmentAuth;
use tokio::sync::Semaphore;

use crate::config::AdminToken;
use crate::service::OpampService;
use crate::sessions::Sessions;

/// Per-request bounds of the OpAMP transports.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub request_timeout: Duration,
    /// Silence after which a WebSocket session is closed.
    pub ws_idle_timeout: Duration,
}

/// Set once when shutdown starts, so `/readyz` turns the load balancer away first.
#[derive(Debug, Clone, Default)]
pub struct ShuttingDown(Arc<AtomicBool>);

impl ShuttingDown {
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Debug, Clone)]
pub struct AppState {
    pub service: OpampService,
    pub limits: Limits,
    /// Permits for OpAMP requests being handled; none left means 503.
    pub in_flight: Arc<Semaphore>,
    pub shutting_down: ShuttingDown,
    pub metrics: PrometheusHandle,
    pub offline_after: Duration,
    /// The open WebSocket sessions: admission (`--max-ws-sessions`) and closing at shutdown.
    pub ws: Sessions,
    /// The agent key checker (`--auth elasticsearch`), `None` when agents are not
    /// authenticated; the OpAMP route's layer uses it, handlers never do.
    pub auth: Option<EnrollmentAuth>,
    /// The token `/api/*` calls on the admin listener must carry (`--admin-token`); the admin
    /// router's layer checks it, handlers never do.
    pub admin_token: Option<AdminToken>,
}
