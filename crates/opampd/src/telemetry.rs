//! Logging and metrics: installing both, the name and help text of every metric opampd itself
//! exports (the store's are in `opamp_store::metrics`), and the few helpers that record them so
//! the transports record a message the same way. Every series a scrape can show is registered
//! at zero when the recorder is installed, so dashboards see them before the first message.

use std::sync::OnceLock;
use std::time::Instant;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opamp_core::FullStateReason;
use opamp_store::metrics::{Kind, Metric, describe_all, register};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub const MESSAGES_TOTAL: &str = "opampd_messages_total";
pub const REPORT_FULL_STATE_TOTAL: &str = "opampd_report_full_state_total";
pub const CAS_RETRIES_TOTAL: &str = "opampd_cas_retries_total";
pub const SUPERSEDED_TOTAL: &str = "opampd_superseded_total";
pub const REQUEST_DURATION_SECONDS: &str = "opampd_request_duration_seconds";
pub const IN_FLIGHT: &str = "opampd_in_flight";
pub const WS_SESSIONS: &str = "opampd_ws_sessions";
pub const WS_REJECTED_TOTAL: &str = "opampd_ws_rejected_total";
pub const AUTH_TOTAL: &str = "opampd_auth_total";
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "opampd_tls_handshake_failures_total";
pub const TLS_RELOADS_TOTAL: &str = "opampd_tls_reloads_total";
pub const REMOTE_CONFIGS: &str = "opampd_remote_configs";
pub const REMOTE_CONFIG_SENT_TOTAL: &str = "opampd_remote_config_sent_total";
pub const REMOTE_CONFIG_FAILED_TOTAL: &str = "opampd_remote_config_failed_total";
pub const REMOTE_CONFIG_HELD_TOTAL: &str = "opampd_remote_config_held_total";
pub const CONFIG_REFRESH_FAILURES_TOTAL: &str = "opampd_config_refresh_failures_total";

/// Every metric of this crate, with its help text.
pub const METRICS: &[Metric] = &[
    Metric {
        name: MESSAGES_TOTAL,
        kind: Kind::Counter,
        help: "OpAMP messages handled, by transport and outcome",
    },
    Metric {
        name: REPORT_FULL_STATE_TOTAL,
        kind: Kind::Counter,
        help: "replies that asked the agent for its full state, by reason",
    },
    Metric {
        name: CAS_RETRIES_TOTAL,
        kind: Kind::Counter,
        help: "store writes retried after losing a CAS race",
    },
    Metric {
        name: SUPERSEDED_TOTAL,
        kind: Kind::Counter,
        help: "messages dropped because, while they were handled, a later message of the same \
               agent was written (the agent had given up on them)",
    },
    Metric {
        name: REQUEST_DURATION_SECONDS,
        kind: Kind::Histogram(Some(metrics::Unit::Seconds)),
        help: "time to handle one OpAMP message, by transport and outcome",
    },
    Metric { name: IN_FLIGHT, kind: Kind::Gauge, help: "OpAMP requests being handled now" },
    Metric { name: WS_SESSIONS, kind: Kind::Gauge, help: "open WebSocket sessions" },
    Metric {
        name: WS_REJECTED_TOTAL,
        kind: Kind::Counter,
        help: "WebSocket upgrades refused with 503, by reason (session limit, shutting down)",
    },
    Metric {
        name: AUTH_TOTAL,
        kind: Kind::Counter,
        help: "agent authentication decisions on the OpAMP route, by result (ok, refused: 401, \
               unavailable: 503, rate_limited: 429)",
    },
    Metric {
        name: TLS_HANDSHAKE_FAILURES_TOTAL,
        kind: Kind::Counter,
        help: "TLS handshakes on the OpAMP listener that failed, by reason (timeout, \
               client_certificate, peer_alert, protocol, closed)",
    },
    Metric {
        name: TLS_RELOADS_TOTAL,
        kind: Kind::Counter,
        help: "re-reads of the TLS certificate files, by result (ok, error: the previous \
               certificate stays in use)",
    },
    Metric {
        name: REMOTE_CONFIGS,
        kind: Kind::Gauge,
        help: "remote configs in force on this instance (as of its last refresh)",
    },
    Metric {
        name: REMOTE_CONFIG_SENT_TOTAL,
        kind: Kind::Counter,
        help: "replies that carried a remote config (each one a hash an agent had not had)",
    },
    Metric {
        name: REMOTE_CONFIG_FAILED_TOTAL,
        kind: Kind::Counter,
        help: "agents that newly reported FAILED for their desired remote config",
    },
    Metric {
        name: REMOTE_CONFIG_HELD_TOTAL,
        kind: Kind::Counter,
        help: "remote config sends held back by a rollout's pacing (the agent gets it on a \
               later message)",
    },
    Metric {
        name: CONFIG_REFRESH_FAILURES_TOTAL,
        kind: Kind::Counter,
        help: "reads of the config store that failed (the configs last read stay in force)",
    },
];

const DURATION_BUCKETS: &[f64] =
    &[0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Which transport a message came over (the `transport` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Http,
    WebSocket,
}

impl Transport {
    pub const ALL: [Self; 2] = [Self::Http, Self::WebSocket];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::WebSocket => "ws",
        }
    }
}

/// How one message ended (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    BadRequest,
    UnsupportedMediaType,
    TooLarge,
    BadMethod,
    Unauthorized,
    Forbidden,
    RateLimited,
    Overloaded,
    Unavailable,
    Internal,
}

impl Outcome {
    pub const ALL: [Self; 11] = [
        Self::Ok,
        Self::BadRequest,
        Self::UnsupportedMediaType,
        Self::TooLarge,
        Self::BadMethod,
        Self::Unauthorized,
        Self::Forbidden,
        Self::RateLimited,
        Self::Overloaded,
        Self::Unavailable,
        Self::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::BadRequest => "bad_request",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::TooLarge => "too_large",
            Self::BadMethod => "bad_method",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::Overloaded => "overloaded",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

/// The `reason` label values of [`WS_REJECTED_TOTAL`].
pub const WS_REJECTED_REASONS: [&str; 2] = ["session_limit", "shutting_down"];

/// How one agent authentication ended (the `result` label of [`AUTH_TOTAL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    Ok,
    Refused,
    Unavailable,
    RateLimited,
}

impl AuthResult {
    pub const ALL: [Self; 4] = [Self::Ok, Self::Refused, Self::Unavailable, Self::RateLimited];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Refused => "refused",
            Self::Unavailable => "unavailable",
            Self::RateLimited => "rate_limited",
        }
    }
}

/// Records one agent authentication decision.
pub fn record_auth(result: AuthResult) {
    metrics::counter!(AUTH_TOTAL, "result" => result.as_str()).increment(1);
}

/// Why a TLS handshake failed (the `reason` label of [`TLS_HANDSHAKE_FAILURES_TOTAL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    Timeout,
    ClientCertificate,
    PeerAlert,
    Protocol,
    Closed,
}

impl HandshakeFailure {
    pub const ALL: [Self; 5] =
        [Self::Timeout, Self::ClientCertificate, Self::PeerAlert, Self::Protocol, Self::Closed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::ClientCertificate => "client_certificate",
            Self::PeerAlert => "peer_alert",
            Self::Protocol => "protocol",
            Self::Closed => "closed",
        }
    }
}

/// The `result` label values of [`TLS_RELOADS_TOTAL`].
pub const TLS_RELOAD_RESULTS: [&str; 2] = ["ok", "error"];

/// Records a failed TLS handshake.
pub fn record_handshake_failure(reason: HandshakeFailure) {
    metrics::counter!(TLS_HANDSHAKE_FAILURES_TOTAL, "reason" => reason.as_str()).increment(1);
}

/// Records a re-read of the TLS files.
pub fn record_tls_reload(ok: bool) {
    let result = if ok { "ok" } else { "error" };
    metrics::counter!(TLS_RELOADS_TOTAL, "result" => result).increment(1);
}

/// Records one handled message: its outcome and, when it was processed, its duration.
pub fn record_message(transport: Transport, outcome: Outcome, started: Option<Instant>) {
    let transport = transport.as_str();
    metrics::counter!(MESSAGES_TOTAL, "transport" => transport, "outcome" => outcome.as_str())
        .increment(1);
    if let Some(started) = started {
        metrics::histogram!(REQUEST_DURATION_SECONDS, "transport" => transport, "outcome" => outcome.as_str())
            .record(started.elapsed().as_secs_f64());
    }
}

/// Lets one log line of a kind through per interval and counts the ones held back, so an outage
/// that fails every request (thousands a second) logs a few lines that say how many, not a flood.
#[derive(Debug)]
pub struct LogLimiter {
    interval_ms: u64,
    /// Milliseconds since `epoch` of the last line let through, plus one (0: never).
    last: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
    epoch: Instant,
}

impl LogLimiter {
    pub fn new(interval: std::time::Duration) -> Self {
        Self {
            interval_ms: interval.as_millis() as u64,
            last: std::sync::atomic::AtomicU64::new(0),
            suppressed: std::sync::atomic::AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// `Some(n)` when a line may be logged now (`n` lines were held back since the last one),
    /// `None` when this one is held back.
    pub fn allow(&self) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < self.interval_ms {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        // one caller wins the slot; the others count as held back
        match self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => Some(self.suppressed.swap(0, Ordering::Relaxed)),
            Err(_) => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

/// Records a reply that asked for the full state.
pub fn record_full_state(reason: FullStateReason) {
    metrics::counter!(REPORT_FULL_STATE_TOTAL, "reason" => reason.as_str()).increment(1);
}

/// Keeps a gauge one higher while alive: right on every exit path, a dropped future included.
#[derive(Debug)]
pub struct GaugeGuard(&'static str);

impl GaugeGuard {
    /// Counts an OpAMP message being handled ([`IN_FLIGHT`]).
    pub fn in_flight() -> Self {
        Self::enter(IN_FLIGHT)
    }

    /// Counts an open WebSocket session ([`WS_SESSIONS`]).
    pub fn ws_session() -> Self {
        Self::enter(WS_SESSIONS)
    }

    fn enter(name: &'static str) -> Self {
        metrics::gauge!(name).increment(1.0);
        Self(name)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        metrics::gauge!(self.0).decrement(1.0);
    }
}

/// Installs the process-wide Prometheus recorder once and returns its handle; describes and
/// registers every series of opampd and of the store crate.
///
/// The `metrics` facade has exactly one global recorder per process (the store crate records
/// through it too), so this is idempotent: servers started in the same process (tests) share it.
/// Call it before the store is opened, so the backend's series are registered with it.
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
            describe_all(METRICS);
            opamp_store::metrics::describe();
            register_all();
            handle
        })
        .clone()
}

/// Creates every series of this crate at zero, each label combination that can occur.
fn register_all() {
    let metric = |name: &str| METRICS.iter().find(|m| m.name == name).expect("listed in METRICS");
    for transport in Transport::ALL {
        for outcome in Outcome::ALL {
            let labels = [("transport", transport.as_str()), ("outcome", outcome.as_str())];
            register(metric(MESSAGES_TOTAL), &labels);
        }
        for outcome in Outcome::ALL {
            let labels = [("transport", transport.as_str()), ("outcome", outcome.as_str())];
            register(metric(REQUEST_DURATION_SECONDS), &labels);
        }
    }
    for reason in FullStateReason::ALL {
        register(metric(REPORT_FULL_STATE_TOTAL), &[("reason", reason.as_str())]);
    }
    for reason in WS_REJECTED_REASONS {
        register(metric(WS_REJECTED_TOTAL), &[("reason", reason)]);
    }
    for result in AuthResult::ALL {
        register(metric(AUTH_TOTAL), &[("result", result.as_str())]);
    }
    for reason in HandshakeFailure::ALL {
        register(metric(TLS_HANDSHAKE_FAILURES_TOTAL), &[("reason", reason.as_str())]);
    }
    for result in TLS_RELOAD_RESULTS {
        register(metric(TLS_RELOADS_TOTAL), &[("result", result)]);
    }
    for name in [
        CAS_RETRIES_TOTAL,
        SUPERSEDED_TOTAL,
        IN_FLIGHT,
        WS_SESSIONS,
        REMOTE_CONFIGS,
        REMOTE_CONFIG_SENT_TOTAL,
        REMOTE_CONFIG_FAILED_TOTAL,
        REMOTE_CONFIG_HELD_TOTAL,
        CONFIG_REFRESH_FAILURES_TOTAL,
    ] {
        register(metric(name), &[]);
    }
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

#[cfg(test)]
mod tests {
    use super::LogLimiter;
    use std::time::Duration;

    #[test]
    fn a_log_limiter_lets_one_line_through_per_interval_and_counts_the_rest() {
        let limiter = LogLimiter::new(Duration::from_millis(50));
        assert_eq!(limiter.allow(), Some(0), "the first line goes through");
        for _ in 0..5 {
            assert_eq!(limiter.allow(), None, "held back inside the interval");
        }
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(limiter.allow(), Some(5), "the next line says how many were held back");
        assert_eq!(limiter.allow(), None);
    }
}
