//! What a run prints: periodic progress lines, the final human-readable summary, the one-line
//! JSON summary (for scripts), and the pass/fail verdict behind the exit code.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::RunConfig;
use crate::latency::{LatencySummary, round3};
use crate::outcome::ErrorClass;
use crate::phases::{PhaseReport, Table};
use crate::remote_config::{PushReport, ROLLOUT_QUANTILES, ServerView};
use crate::stats::Stats;
use crate::verify::VerifyReport;

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
            "[{:>5.0}s] {:>8.0} msg/s  p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  in_flight {}  sent {}  errors {} \
             (retry_after {} connection {} gateway {} other {})  full_state asked {}  false {}  missed {}  busy_skips {}",
            self.elapsed.as_secs_f64(),
            self.rate,
            self.interval.p50_ms,
            self.interval.p99_ms,
            self.interval.max_ms,
            self.in_flight,
            Stats::get(&s.sent),
            Stats::get(&s.errors),
            Stats::get(&s.error_classes[ErrorClass::RetryAfter.index()]),
            Stats::get(&s.error_classes[ErrorClass::Connection.index()]),
            Stats::get(&s.error_classes[ErrorClass::Gateway.index()]),
            Stats::get(&s.error_classes[ErrorClass::Other.index()]),
            Stats::get(&s.full_state_requests),
            Stats::get(&s.false_full_state),
            Stats::get(&s.missed_full_state),
            Stats::get(&s.busy_skips),
        )?;
        if s.remote_config_agents > 0 || Stats::get(&s.remote_config_received) > 0 {
            write!(
                f,
                "  remote_config received {}  dup {}  unexpected {}  applied {}  failed {}",
                Stats::get(&s.remote_config_received),
                Stats::get(&s.remote_config_duplicates),
                Stats::get(&s.remote_config_unexpected),
                Stats::get(&s.remote_config_applied),
                Stats::get(&s.remote_config_failed),
            )?;
        }
        Ok(())
    }
}

/// The remote-config figures of a run.
#[derive(Debug, Clone, Default)]
pub struct RemoteConfigSummary {
    /// Agents that accept remote config.
    pub agents: u64,
    pub received: u64,
    pub duplicates: u64,
    pub unexpected: u64,
    pub applied: u64,
    pub failed: u64,
    pub pushes: Vec<PushReport>,
    /// `GET /api/configs/{name}` after the run (`--verify-admin`).
    pub server: Option<ServerView>,
}

impl RemoteConfigSummary {
    /// Whether the run had anything to do with remote config (else the report stays silent).
    pub fn in_use(&self) -> bool {
        self.agents > 0 || self.received > 0 || !self.pushes.is_empty() || self.server.is_some()
    }

    /// Exactly-once and targeting violations, and pushes that did not happen.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.duplicates > 0 {
            out.push(format!("{} remote configs delivered twice", self.duplicates));
        }
        if self.unexpected > 0 {
            out.push(format!(
                "{} remote configs sent to agents that do not accept them",
                self.unexpected
            ));
        }
        for p in &self.pushes {
            if let Some(e) = &p.error {
                out.push(format!("push {} failed: {e}", p.counter));
            }
        }
        out
    }
}

impl fmt::Display for RemoteConfigSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "remote config: accepting agents {}  received {} (DUPLICATES {}, UNEXPECTED {})  \
             acknowledged applied {}  failed {}",
            self.agents, self.received, self.duplicates, self.unexpected, self.applied, self.failed
        )?;
        for p in &self.pushes {
            write!(f, "\n  push {} of {:?} at {:.1} s: ", p.counter, p.name, p.at_s)?;
            let Some(hash) = &p.hash else {
                write!(f, "FAILED: {}", p.error.as_deref().unwrap_or("unknown"))?;
                continue;
            };
            write!(
                f,
                "hash {}  PUT {:.1} ms  received {}/{}  done {} (applied {}, failed {})  from the 200:",
                &hash[..hash.len().min(12)],
                p.put_ms.unwrap_or(0.0),
                p.received - p.duplicates,
                p.accepting,
                p.applied + p.failed,
                p.applied,
                p.failed,
            )?;
            for ((_, name), t) in ROLLOUT_QUANTILES.iter().zip(p.rollout_s) {
                match t {
                    Some(t) => write!(f, "  {name} {t:.2} s")?,
                    None => write!(f, "  {name} not reached")?,
                }
            }
        }
        if let Some(v) = &self.server {
            write!(f, "\n  server GET /api/configs/{}: ", v.name)?;
            match (&v.agents, &v.error) {
                (Some(c), _) => write!(f, "{c}")?,
                (None, e) => write!(f, "UNREADABLE: {}", e.as_deref().unwrap_or("unknown"))?,
            }
            // the generator's view of the hash the server holds now
            let mine = self.pushes.iter().rev().find(|p| p.hash.is_some() && p.hash == v.hash);
            match mine {
                Some(p) => write!(f, "\n  generator (push {}):       {}", p.counter, p.counts())?,
                None => write!(
                    f,
                    "\n  generator: no push of this run has the server's hash {}",
                    v.hash.as_deref().unwrap_or("(none)")
                )?,
            }
        }
        Ok(())
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
    pub unjudged_not_asked: u64,
    pub errors: u64,
    pub unavailable: u64,
    pub error_kinds: BTreeMap<String, u64>,
    /// Errors by [`ErrorClass`] name.
    pub error_classes: BTreeMap<String, u64>,
    /// Transport failures by the client's text (the first few distinct ones).
    pub error_samples: BTreeMap<String, u64>,
    /// The rate schedule, when the run had one: (rate, seconds) per step.
    pub rate_steps: Vec<(f64, f64)>,
    pub busy_skips: u64,
    pub saturated_waits: u64,
    pub behind_at_step_end: u64,
    pub late_skips: u64,
    pub max_dispatch_lag_ms: f64,
    pub drained: bool,
    pub latency_all: LatencySummary,
    pub latency_measured: LatencySummary,
    /// CPU seconds this loadtest process used (Linux only): on a shared box the client's own
    /// cost is part of the picture.
    pub client_cpu_s: Option<f64>,
    /// The per-phase report, when the run was cut into phases.
    pub phases: Option<Vec<PhaseReport>>,
    /// Exchanges the event log could not keep (the phase report is then incomplete).
    pub phase_events_dropped: u64,
    /// Why the phases could not be reported (an unreadable marks file), if so.
    pub phases_error: Option<String>,
    /// The end-of-run check of the stored sequence numbers, when asked for.
    pub verify: Option<VerifyReport>,
    pub remote_config: RemoteConfigSummary,
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
            unjudged_not_asked: g(&s.unjudged_not_asked),
            errors: g(&s.errors),
            unavailable: g(&s.unavailable),
            error_kinds: s.error_kinds.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            error_classes: s.error_classes(),
            error_samples: s.error_samples.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            rate_steps: cfg.steps.iter().map(|st| (st.rate, st.duration.as_secs_f64())).collect(),
            busy_skips: g(&s.busy_skips),
            saturated_waits: g(&s.saturated_waits),
            behind_at_step_end: g(&s.behind_at_step_end),
            late_skips: g(&s.late_skips),
            max_dispatch_lag_ms: g(&s.max_dispatch_lag_us) as f64 / 1000.0,
            drained,
            latency_all,
            latency_measured,
            client_cpu_s: process_cpu_seconds(),
            phases: None,
            phase_events_dropped: 0,
            phases_error: None,
            verify: None,
            remote_config: RemoteConfigSummary {
                agents: s.remote_config_agents,
                received: g(&s.remote_config_received),
                duplicates: g(&s.remote_config_duplicates),
                unexpected: g(&s.remote_config_unexpected),
                applied: g(&s.remote_config_applied),
                failed: g(&s.remote_config_failed),
                pushes: Vec::new(),
                server: None,
            },
        }
    }

    pub fn error_rate(&self) -> f64 {
        if self.sent == 0 { 0.0 } else { self.errors as f64 / self.sent as f64 }
    }

    /// Why the run failed, empty when it passed. Correctness counters tolerate nothing. A run
    /// cut into phases is judged phase by phase instead (errors and false ReportFullState are
    /// expected in fault phases, see [`crate::phases`]); missed ReportFullState never passes.
    pub fn failures(&self, max_error_rate: f64) -> Vec<String> {
        let mut out = Vec::new();
        let by_phase = self.phases.as_ref().filter(|_| self.phase_events_dropped == 0);
        if let Some(phases) = by_phase {
            for p in phases.iter().filter(|p| !p.violations.is_empty()) {
                out.push(format!(
                    "phase {} ({}): {}",
                    p.name,
                    p.kind.as_str(),
                    p.violations.join(", ")
                ));
            }
        } else if self.false_full_state > 0 {
            out.push(format!("{} false ReportFullState", self.false_full_state));
        }
        if self.missed_full_state > 0 {
            out.push(format!("{} missed ReportFullState", self.missed_full_state));
        }
        if by_phase.is_none() && self.error_rate() > max_error_rate {
            out.push(format!("error rate {:.6} > {max_error_rate}", self.error_rate()));
        }
        if let Some(e) = &self.phases_error {
            out.push(format!("no phase report: {e}"));
        }
        if let Some(v) = &self.verify {
            out.extend(v.failures());
        }
        out.extend(self.remote_config.failures());
        if self.replies_ok == 0 {
            out.push("no successful reply".into());
        }
        if !self.drained {
            out.push("requests still in flight after the drain timeout".into());
        }
        out
    }

    pub fn to_json(&self, max_error_rate: f64) -> Value {
        let mut v = json!({
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
            "unjudged_not_asked": self.unjudged_not_asked,
            "errors": self.errors,
            "error_rate": self.error_rate(),
            "unavailable": self.unavailable,
            "error_kinds": self.error_kinds,
            "error_classes": self.error_classes,
            "error_samples": self.error_samples,
            "busy_skips": self.busy_skips,
            "saturated_waits": self.saturated_waits,
            "behind_at_step_end": self.behind_at_step_end,
            "late_skips": self.late_skips,
            "max_dispatch_lag_ms": round3(self.max_dispatch_lag_ms),
            "drained": self.drained,
            "latency_all": self.latency_all.to_json(),
            "latency": self.latency_measured.to_json(),
            "client_cpu_s": self.client_cpu_s.map(round3),
            "passed": self.failures(max_error_rate).is_empty(),
            "failures": self.failures(max_error_rate),
        });
        // in a second step: one json! of every field exceeds the macro's recursion limit
        let extra = json!({
            "rate_steps": self.rate_steps.iter()
                .map(|(rate, secs)| json!({"rate": round3(*rate), "duration_s": round3(*secs)}))
                .collect::<Vec<_>>(),
            "phases": self.phases.as_ref()
                .map(|ps| ps.iter().map(|p| p.to_json(self.duration_s)).collect::<Vec<_>>()),
            "phase_events_dropped": self.phase_events_dropped,
            "phases_error": self.phases_error,
            "verify": self.verify.as_ref().map(VerifyReport::to_json),
            "remote_config_agents": self.remote_config.agents,
            "remote_config_received": self.remote_config.received,
            "remote_config_duplicates": self.remote_config.duplicates,
            "remote_config_unexpected": self.remote_config.unexpected,
            "remote_config_applied": self.remote_config.applied,
            "remote_config_failed": self.remote_config.failed,
            "remote_config_pushes": self.remote_config.pushes.iter()
                .map(PushReport::to_json).collect::<Vec<_>>(),
            "remote_config_server": self.remote_config.server.as_ref().map(ServerView::to_json),
        });
        if let (Some(obj), Value::Object(more)) = (v.as_object_mut(), extra) {
            obj.extend(more);
        }
        v
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
            "full state: injected faults {}  server requests {} (expected & honoured {})  FALSE {}  MISSED {}  unjudged {} ({} not asked)",
            self.injected,
            self.full_state_requests,
            self.expected_requests_honoured,
            self.false_full_state,
            self.missed_full_state,
            self.unjudged,
            self.unjudged_not_asked
        )?;
        writeln!(
            f,
            "errors {} (rate {:.6}; 503/429/unavailable {})  {:?}  by class {:?}",
            self.errors,
            self.error_rate(),
            self.unavailable,
            self.error_kinds,
            self.error_classes
        )?;
        for (text, n) in &self.error_samples {
            writeln!(f, "  transport failure x{n}: {text}")?;
        }
        write!(
            f,
            "pacing: busy skips {}  saturated waits {}  late skips {}  behind at step end {}  max dispatch lag {:.1} ms  drained {}  client cpu {}",
            self.busy_skips,
            self.saturated_waits,
            self.late_skips,
            self.behind_at_step_end,
            self.max_dispatch_lag_ms,
            self.drained,
            self.client_cpu_s.map_or("n/a".into(), |c| format!("{c:.1} s")),
        )?;
        if let Some(phases) = &self.phases {
            write!(
                f,
                "\nphases (an exchange counts in the most severe phase it overlaps):\n{}",
                Table { phases, run_s: self.duration_s }
            )?;
            if self.phase_events_dropped > 0 {
                write!(
                    f,
                    "phase report incomplete: {} exchanges not kept",
                    self.phase_events_dropped
                )?;
            }
        }
        if let Some(e) = &self.phases_error {
            write!(f, "\nno phase report: {e}")?;
        }
        if self.remote_config.in_use() {
            write!(f, "\n{}", self.remote_config)?;
        }
        if let Some(v) = &self.verify {
            write!(
                f,
                "\nstored sequence_num check ({} agents, {} listed): matched {}  applied but unacknowledged {}  \
                 never acknowledged {}  ACKNOWLEDGED LOST {} {:?}  unverifiable (in flight) {}{}",
                v.agents,
                v.listed,
                v.matched,
                v.applied_unacknowledged,
                v.never_acknowledged,
                v.acknowledged_lost,
                v.lost,
                v.unverifiable,
                v.error.as_ref().map_or(String::new(), |e| format!("  INCOMPLETE: {e}")),
            )?;
        }
        Ok(())
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

    /// A short open-loop run of `agents` agents, every other setting at its plainest.
    fn small_run(agents: usize) -> RunConfig {
        RunConfig {
            agents,
            rate: 5.0,
            duration: Duration::from_secs(2),
            warmup: Duration::ZERO,
            max_in_flight: 4,
            drift_rate: 0.0,
            seed: 1,
            max_followups: 2,
            progress_every: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(1),
            steps: Vec::new(),
            record_events: false,
            remote_config: Default::default(),
            fleet: Default::default(),
        }
    }

    #[test]
    fn the_json_summary_keeps_every_earlier_field() {
        let cfg = small_run(10);
        let s = Summary::collect(&cfg, &Stats::default(), 10, Duration::from_secs(2), true);
        let v = s.to_json(0.0);
        // what bench-*.sh and earlier recorded runs read, as of issue 8
        for key in [
            "tool",
            "agents",
            "target_rate",
            "duration_s",
            "warmup_s",
            "drift_rate",
            "max_in_flight",
            "scheduled",
            "sent",
            "full_sent",
            "heartbeats_sent",
            "followups",
            "replies_ok",
            "achieved_rate",
            "injected",
            "full_state_requests",
            "expected_requests_honoured",
            "false_full_state",
            "missed_full_state",
            "unjudged",
            "errors",
            "error_rate",
            "unavailable",
            "error_kinds",
            "busy_skips",
            "saturated_waits",
            "max_dispatch_lag_ms",
            "drained",
            "latency_all",
            "latency",
            "client_cpu_s",
            "passed",
            "failures",
        ] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
        for key in ["error_classes", "phases", "verify", "rate_steps", "behind_at_step_end"] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
        for key in [
            "remote_config_agents",
            "remote_config_received",
            "remote_config_duplicates",
            "remote_config_unexpected",
            "remote_config_applied",
            "remote_config_failed",
            "remote_config_pushes",
            "remote_config_server",
        ] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
        assert_eq!(v["phases"], Value::Null);
        assert_eq!(v["error_classes"]["retry_after"], 0);
    }

    #[test]
    fn remote_config_violations_fail_the_run_and_are_reported() {
        let cfg = small_run(4);
        let mut s = Summary::collect(&cfg, &Stats::default(), 10, Duration::from_secs(2), true);
        s.replies_ok = 10;
        assert!(s.failures(0.0).is_empty());
        assert!(!s.to_string().contains("remote config"), "{s}");
        s.remote_config.agents = 4;
        s.remote_config.duplicates = 2;
        s.remote_config.unexpected = 1;
        s.remote_config.pushes.push(PushReport {
            counter: 1,
            name: "loadtest".into(),
            run_id: "r".into(),
            at_s: 1.0,
            hash: None,
            put_ms: None,
            error: Some("HTTP 401".into()),
            accepting: 4,
            received: 0,
            duplicates: 0,
            applied: 0,
            failed: 0,
            rollout_s: [None; 4],
        });
        let failures = s.failures(0.0);
        assert_eq!(failures.len(), 3, "{failures:?}");
        assert!(failures[0].contains("2 remote configs delivered twice"), "{failures:?}");
        let text = s.to_string();
        assert!(text.contains("DUPLICATES 2, UNEXPECTED 1") && text.contains("FAILED: HTTP 401"));
        let v = s.to_json(0.0);
        assert_eq!(
            (v["remote_config_duplicates"].as_u64(), v["passed"].as_bool()),
            (Some(2), Some(false))
        );
        assert_eq!(v["remote_config_pushes"][0]["error"], "HTTP 401");
    }

    #[test]
    fn cpu_seconds_are_read_on_linux() {
        if cfg!(target_os = "linux") {
            let c = process_cpu_seconds().expect("readable /proc/self/stat");
            assert!((0.0..1e6).contains(&c));
        }
    }
}
