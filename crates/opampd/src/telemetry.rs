//! Logging and metrics setup, and the names of every metric opampd exports. Recording happens
//! where the event happens; this module only installs and names.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub const MESSAGES_TOTAL: &str = "opampd_messages_total";
pub const REPORT_FULL_STATE_TOTAL: &str = "opampd_report_full_state_total";
pub const CAS_RETRIES_TOTAL: &str = "opampd_cas_retries_total";
pub const REQUEST_DURATION_SECONDS: &str = "opampd_request_duration_seconds";
pub const IN_FLIGHT: &str = "opampd_in_flight";
pub const WS_SESSIONS: &str = "opampd_ws_sessions";
pub const WS_REJECTED_TOTAL: &str = "opampd_ws_rejected_total";

const DURATION_BUCKETS: &[f64] =
    &[0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Installs the process-wide Prometheus recorder once and returns its handle.
///
/// The `metrics` facade has exactly one global recorder per process (the store crate records
/// through it too), so this is idempotent: servers started in the same process (tests) share it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(REQUEST_DURATION_SECONDS.into()),
                    DURATION_BUCKETS,
                )
                .map(PrometheusBuilder::build_recorder)
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // fails only if another recorder was installed first (an embedding program);
            // then our handle renders nothing, which beats refusing to start
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(MESSAGES_TOTAL, "OpAMP messages handled, by transport and outcome");
    metrics::describe_counter!(
        REPORT_FULL_STATE_TOTAL,
        "replies that asked the agent for its full state, by reason"
    );
    metrics::describe_counter!(CAS_RETRIES_TOTAL, "store writes retried after losing a CAS race");
    metrics::describe_histogram!(
        REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "time to handle one OpAMP message"
    );
    metrics::describe_gauge!(IN_FLIGHT, "OpAMP requests being handled now");
    metrics::describe_gauge!(WS_SESSIONS, "open WebSocket sessions");
    metrics::describe_counter!(
        WS_REJECTED_TOTAL,
        "WebSocket upgrades refused with 503, by reason (session limit, shutting down)"
    );
}

/// Installs the tracing subscriber: `RUST_LOG` filter (default `info`), text or JSON lines.
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(true);
    // try_init: a second call (tests) keeps the first subscriber instead of panicking
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
