//! What a run prints: periodic progress lines, the final human-readable summary, the one-line
//! JSON summary (for scripts), and the pass/fail verdict behind the exit code.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::RunConfig;
use crate::latency::{LatencySummary, round3};
use crate::stats::Stats;

/// One progress line.
#[derive(Debug)]
pub struct Progress<'a> {
    pub elapsed: Duration,
    pub rate: f64,
    pub interval: LatencySummary,
    pub in_flight: u64,
    pub stats: &'a Stats,
}

impl fmt::Display for Progress<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.stats;
        write!(
            f,
            "[{:>5.0}s] {:>8.0} msg/s  p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  in_flight {}  sent {}  errors {}  \
             full_state asked {}  false {}  missed {}  busy_skips {}",
            self.elapsed.as_secs_f64(),
            self.rate,
            self.interval.p50_ms,
            self.interval.p99_ms,
            self.interval.max_ms,
            self.in_flight,
            Stats::get(&s.sent),
            Stats::get(&s.errors),
            Stats::get(&s.full_state_requests),
            Stats::get(&s.false_full_state),
            Stats::get(&s.missed_full_state),
            Stats::get(&s.busy_skips),
        )
    }
}

/// The final figures of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    pub agents: usize,
    pub target_rate: f64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub drift_rate: f64,
    pub max_in_flight: usize,
    pub scheduled: u64,
    pub sent: u64,
    pub full_sent: u64,
    pub heartbeats_sent: u64,
    pub followups: u64,
    pub replies_ok: u64,
    /// Replies per second inside the measurement window (after warm-up).
    pub achieved_rate: f64,
    pub injected: u64,
    pub full_state_requests: u64,
    pub expected_requests_honoured: u64,
    pub false_full_state: u64,
    pub missed_full_state: u64,
    pub unjudged: u64,
    pub errors: u64,
    pub unavailable: u64,
    pub error_kinds: BTreeMap<String, u64>,
    pub busy_skips: u64,
    pub saturated_waits: u64,
    pub max_dispatch_lag_ms: f64,
    pub drained: bool,
    pub latency_all: LatencySummary,
    pub latency_measured: LatencySummary,
    /// CPU seconds this loadtest process used (Linux only): on a shared box the client's own
    /// cost is part of the picture.
    pub client_cpu_s: Option<f64>,
}

impl Summary {
    pub fn collect(
        cfg: &RunConfig,
        s: &Stats,
        scheduled: u64,
        ran: Duration,
        drained: bool,
    ) -> Self {
        let g = Stats::get;
        let window = ran.saturating_sub(cfg.warmup).as_secs_f64();
        let (latency_all, latency_measured) = {
            let h = s.hist.lock().unwrap_or_else(|e| e.into_inner());
            (h.all.summary(), h.measured.summary())
        };
        Self {
            agents: cfg.agents,
            target_rate: cfg.rate,
            duration_s: ran.as_secs_f64(),
            warmup_s: cfg.warmup.as_secs_f64(),
            drift_rate: cfg.drift_rate,
            max_in_flight: cfg.max_in_flight,
            scheduled,
            sent: g(&s.sent),
            full_sent: g(&s.full_sent),
            heartbeats_sent: g(&s.heartbeats_sent),
            followups: g(&s.followups),
            replies_ok: g(&s.replies_ok),
            achieved_rate: if window > 0.0 {
                g(&s.measured_completed) as f64 / window
            } else {
                0.0
            },
            injected: g(&s.injected),
            full_state_requests: g(&s.full_state_requests),
            expected_requests_honoured: g(&s.expected_requests_honoured),
            false_full_state: g(&s.false_full_state),
            missed_full_state: g(&s.missed_full_state),
            unjudged: g(&s.unjudged),
            errors: g(&s.errors),
            unavailable: g(&s.unavailable),
            error_kinds: s.error_kinds.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            busy_skips: g(&s.busy_skips),
            saturated_waits: g(&s.saturated_waits),
            max_dispatch_lag_ms: g(&s.max_dispatch_lag_us) as f64 / 1000.0,
            drained,
            latency_all,
            latency_measured,
            client_cpu_s: process_cpu_seconds(),
        }
    }

    pub fn error_rate(&self) -> f64 {
        if self.sent == 0 { 0.0 } else { self.errors as f64 / self.sent as f64 }
    }

    /// Why the run failed, empty when it passed. Correctness counters tolerate nothing.
    pub fn failures(&self, max_error_rate: f64) -> Vec<String> {
        let mut out = Vec::new();
        if self.false_full_state > 0 {
            out.push(format!("{} false ReportFullState", self.false_full_state));
        }
        if self.missed_full_state > 0 {
            out.push(format!("{} missed ReportFullState", self.missed_full_state));
        }
        if self.error_rate() > max_error_rate {
            out.push(format!("error rate {:.6} > {max_error_rate}", self.error_rate()));
        }
        if self.replies_ok == 0 {
            out.push("no successful reply".into());
        }
        if !self.drained {
            out.push("requests still in flight after the drain timeout".into());
        }
        out
    }

    pub fn to_json(&self, max_error_rate: f64) -> Value {
        json!({
            "tool": "opampd-loadtest",
            "agents": self.agents,
            "target_rate": round3(self.target_rate),
            "duration_s": round3(self.duration_s),
            "warmup_s": round3(self.warmup_s),
            "drift_rate": self.drift_rate,
            "max_in_flight": self.max_in_flight,
            "scheduled": self.scheduled,
            "sent": self.sent,
            "full_sent": self.full_sent,
            "heartbeats_sent": self.heartbeats_sent,
            "followups": self.followups,
            "replies_ok": self.replies_ok,
            "achieved_rate": round3(self.achieved_rate),
            "injected": self.injected,
            "full_state_requests": self.full_state_requests,
            "expected_requests_honoured": self.expected_requests_honoured,
            "false_full_state": self.false_full_state,
            "missed_full_state": self.missed_full_state,
            "unjudged": self.unjudged,
            "errors": self.errors,
            "error_rate": self.error_rate(),
            "unavailable": self.unavailable,
            "error_kinds": self.error_kinds,
            "busy_skips": self.busy_skips,
            "saturated_waits": self.saturated_waits,
            "max_dispatch_lag_ms": round3(self.max_dispatch_lag_ms),
            "drained": self.drained,
            "latency_all": self.latency_all.to_json(),
            "latency": self.latency_measured.to_json(),
            "client_cpu_s": self.client_cpu_s.map(round3),
            "passed": self.failures(max_error_rate).is_empty(),
            "failures": self.failures(max_error_rate),
        })
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "== opampd-loadtest summary ==")?;
        writeln!(
            f,
            "agents {}  target {:.0} msg/s  ran {:.1} s (warm-up {:.1} s)  drift rate {}  max in flight {}",
            self.agents,
            self.target_rate,
            self.duration_s,
            self.warmup_s,
            self.drift_rate,
            self.max_in_flight
        )?;
        writeln!(
            f,
            "messages: sent {} (full {}, heartbeat {}, follow-up full {})  ok replies {}  achieved {:.0} msg/s",
            self.sent,
            self.full_sent,
            self.heartbeats_sent,
            self.followups,
            self.replies_ok,
            self.achieved_rate
        )?;
        writeln!(f, "latency (steady state): {}", self.latency_measured)?;
        writeln!(f, "latency (whole run):    {}", self.latency_all)?;
        writeln!(
            f,
            "full state: injected faults {}  server requests {} (expected & honoured {})  FALSE {}  MISSED {}  unjudged {}",
            self.injected,
            self.full_state_requests,
            self.expected_requests_honoured,
            self.false_full_state,
            self.missed_full_state,
            self.unjudged
        )?;
        writeln!(
            f,
            "errors {} (rate {:.6}; 503/429/unavailable {})  {:?}",
            self.errors,
            self.error_rate(),
            self.unavailable,
            self.error_kinds
        )?;
        write!(
            f,
            "pacing: busy skips {}  saturated waits {}  max dispatch lag {:.1} ms  drained {}  client cpu {}",
            self.busy_skips,
            self.saturated_waits,
            self.max_dispatch_lag_ms,
            self.drained,
            self.client_cpu_s.map_or("n/a".into(), |c| format!("{c:.1} s")),
        )
    }
}

/// User + system CPU seconds of this process from `/proc/self/stat` (fields 14 and 15, in clock
/// ticks; USER_HZ is 100 on every Linux ABI this runs on). `None` elsewhere.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may contain spaces; fields after its closing parenthesis are
    // plain numbers, starting at field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_are_read_on_linux() {
        if cfg!(target_os = "linux") {
            let c = process_cpu_seconds().expect("readable /proc/self/stat");
            assert!((0.0..1e6).contains(&c));
        }
    }
}
