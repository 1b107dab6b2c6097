//! What a run is asked to do: the parameters the runner paces by and the report echoes. Plain
//! data shared by both, so neither depends on the other for it; it depends on no other module and
//! validates nothing (the CLI does).

use std::time::Duration;

/// What to run; validated by the caller.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub agents: usize,
    /// Scheduled messages per second, all agents together (follow-up full statuses come on top).
    pub rate: f64,
    pub duration: Duration,
    /// Latency and throughput before this are left out of the steady-state figures.
    pub warmup: Duration,
    pub max_in_flight: usize,
    pub drift_rate: f64,
    pub seed: u64,
    /// Full statuses an agent sends back-to-back when asked repeatedly, before waiting its turn.
    pub max_followups: u32,
    pub progress_every: Duration,
    /// How long in-flight requests may take to finish after the run's end.
    pub drain_timeout: Duration,
    /// A rate schedule instead of the constant `rate`: each step holds its rate for its
    /// duration, one after the other (their sum is the run's duration). Empty: `rate` throughout.
    pub steps: Vec<RateStep>,
    /// Keep every exchange for the phase report.
    pub record_events: bool,
    /// Which agents accept remote config, and the configs the run pushes.
    pub remote_config: RemoteConfigRun,
    /// How the agents describe themselves: services, versions, health.
    pub fleet: FleetMix,
}

/// What the simulated fleet reports about itself. The default is a uniform fleet (one service,
/// one version, all healthy), as every benchmark ran it; a spread gives a console, a search or a
/// stats endpoint something to tell apart. Which agent gets what is fixed by its index and the
/// run's seed. Changes no message's sequence and nothing the drift rules judge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FleetMix {
    /// `service.name` values the agents are spread over, round robin.
    pub services: u32,
    /// `service.version` values within each service, round robin.
    pub versions: u32,
    /// Share of the agents (0 to 1) reporting degraded health (`StatusRecoverableError`).
    pub degraded: f64,
    /// Share of the agents (0 to 1) reporting unhealthy (`healthy: false`).
    pub error: f64,
}

impl Default for FleetMix {
    fn default() -> Self {
        Self { services: 1, versions: 1, degraded: 0.0, error: 0.0 }
    }
}

/// The remote-config part of a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RemoteConfigRun {
    /// Share of the agents (0 to 1) that set AcceptsRemoteConfig and ReportsRemoteConfig.
    pub agents: f64,
    /// Share of receipts (0 to 1) reported FAILED instead of APPLIED.
    pub fail_rate: f64,
    /// When the run PUTs a new config, since its start (each push a new hash).
    pub push_at: Vec<Duration>,
    /// The name the pushes PUT.
    pub push_name: String,
}

/// One step of a rate schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateStep {
    /// Scheduled messages per second during the step.
    pub rate: f64,
    pub duration: Duration,
}

impl RunConfig {
    /// The schedule as steps: the given ones, or `rate` for the whole run.
    pub fn schedule(&self) -> Vec<RateStep> {
        if self.steps.is_empty() {
            vec![RateStep { rate: self.rate, duration: self.duration }]
        } else {
            self.steps.clone()
        }
    }
}
