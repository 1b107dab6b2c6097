//! Shared run counters: lock-free atomics for the hot counts, short std mutexes for the
//! histograms and the error map (never held across an await).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::agent::{Judged, Sent, Verdict};
use crate::latency::Latency;
use crate::outcome::{Ending, ErrorClass, Event, EventLog};
use crate::remote_config::{self, Receipt, Tallies};

/// Distinct transport-failure texts kept.
pub const MAX_SAMPLES: usize = 20;

#[derive(Debug, Default)]
pub struct Histograms {
    /// Every request of the run.
    pub all: Latency,
    /// Requests completed after the warm-up (the steady-state figure).
    pub measured: Latency,
    /// Since the last progress line.
    pub interval: Latency,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub sent: AtomicU64,
    pub full_sent: AtomicU64,
    pub heartbeats_sent: AtomicU64,
    /// Full statuses sent at once in answer to ReportFullState.
    pub followups: AtomicU64,
    pub replies_ok: AtomicU64,
    pub injected: AtomicU64,
    pub full_state_requests: AtomicU64,
    pub expected_requests_honoured: AtomicU64,
    pub false_full_state: AtomicU64,
    pub missed_full_state: AtomicU64,
    pub unjudged: AtomicU64,
    /// Unjudged replies without ReportFullState: the server had the agent's last message, so
    /// the failed exchange before (usually) was applied although its reply was lost.
    pub unjudged_not_asked: AtomicU64,
    pub errors: AtomicU64,
    pub unavailable: AtomicU64,
    /// A scheduled message found its agent still busy with the previous one and was skipped.
    pub busy_skips: AtomicU64,
    /// Messages more than one heartbeat cycle late when a slot came free: dropped, not sent.
    pub late_skips: AtomicU64,
    /// Messages of a rate step not dispatched by the step's end: dropped, not sent in the next.
    pub behind_at_step_end: AtomicU64,
    /// The dispatcher had to wait for an in-flight slot (the target rate is not being held).
    pub saturated_waits: AtomicU64,
    /// Worst delay between a message's scheduled time and its dispatch, in microseconds.
    pub max_dispatch_lag_us: AtomicU64,
    /// Replies completed inside the measurement window (after warm-up, before the end).
    pub measured_completed: AtomicU64,
    /// Agent turns running now (the semaphore cannot say: the drain holds all its permits).
    pub in_flight: AtomicU64,
    pub error_kinds: Mutex<BTreeMap<String, u64>>,
    /// What the client said about transport failures, by text (at most [`MAX_SAMPLES`] texts).
    pub error_samples: Mutex<BTreeMap<String, u64>>,
    /// Errors by [`ErrorClass`], indexed by [`ErrorClass::index`].
    pub error_classes: [AtomicU64; 4],
    pub hist: Mutex<Histograms>,
    /// Agents of the run that accept remote config (set before the run starts).
    pub remote_config_agents: u64,
    /// Valid replies carrying `remote_config`, duplicates and unexpected ones included.
    pub remote_config_received: AtomicU64,
    /// Replies carrying a hash the agent had already received: exactly-once broken.
    pub remote_config_duplicates: AtomicU64,
    /// Replies carrying `remote_config` to an agent that does not accept it.
    pub remote_config_unexpected: AtomicU64,
    /// Final statuses the server acknowledged (once per agent and hash).
    pub remote_config_applied: AtomicU64,
    pub remote_config_failed: AtomicU64,
    /// The same by hash, with when each final status was acknowledged (the rollout figures).
    pub remote_config_tallies: Mutex<Tallies>,
    /// Keep every exchange in `events` (for the phase report); off by default.
    pub record_events: bool,
    pub events: Mutex<EventLog>,
}

impl Stats {
    pub fn on_send(&self, sent: &Sent, followup: bool) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let counter = if sent.full { &self.full_sent } else { &self.heartbeats_sent };
        counter.fetch_add(1, Ordering::Relaxed);
        if followup {
            self.followups.fetch_add(1, Ordering::Relaxed);
        }
        if sent.injection != crate::agent::Injection::None {
            self.injected.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn on_latency(&self, elapsed: Duration, in_window: bool) {
        let mut h = self.hist.lock().unwrap_or_else(|e| e.into_inner());
        h.all.record(elapsed);
        h.interval.record(elapsed);
        if in_window {
            h.measured.record(elapsed);
        }
    }

    pub fn on_judged(&self, j: &Judged, in_window: bool) {
        self.replies_ok.fetch_add(1, Ordering::Relaxed);
        if in_window {
            self.measured_completed.fetch_add(1, Ordering::Relaxed);
        }
        if j.asked_full_state {
            self.full_state_requests.fetch_add(1, Ordering::Relaxed);
        }
        let counter = match (j.verdict, j.asked_full_state) {
            (Verdict::Correct, true) => &self.expected_requests_honoured,
            (Verdict::Correct, false) => return,
            (Verdict::FalseFullState, _) => &self.false_full_state,
            (Verdict::MissedFullState, _) => &self.missed_full_state,
            (Verdict::Unjudged, asked) => {
                if !asked {
                    self.unjudged_not_asked.fetch_add(1, Ordering::Relaxed);
                }
                &self.unjudged
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts what a valid reply meant for remote config, `at` since the run's start.
    pub fn on_remote_config(&self, events: &remote_config::Events, at: Duration) {
        if events.is_empty() {
            return;
        }
        if let Some((receipt, _)) = &events.receipt {
            self.remote_config_received.fetch_add(1, Ordering::Relaxed);
            match receipt {
                Receipt::New => {}
                Receipt::Duplicate => {
                    self.remote_config_duplicates.fetch_add(1, Ordering::Relaxed);
                }
                Receipt::Unexpected => {
                    self.remote_config_unexpected.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if let Some(c) = &events.completion {
            let counter =
                if c.failed { &self.remote_config_failed } else { &self.remote_config_applied };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let mut tallies = self.remote_config_tallies.lock().unwrap_or_else(|e| e.into_inner());
        remote_config::tally(&mut tallies, events, at);
    }

    /// Counts a transport failure's text (the first [`MAX_SAMPLES`] distinct ones).
    pub fn sample_error(&self, text: &str) {
        let mut samples = self.error_samples.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = samples.get_mut(text) {
            *n += 1;
        } else if samples.len() < MAX_SAMPLES {
            samples.insert(text.to_owned(), 1);
        }
    }

    /// Counts with the event log on: every exchange is kept for the phase report.
    pub fn recording() -> Self {
        Self { record_events: true, ..Self::default() }
    }

    pub fn on_error(&self, kind: String, class: ErrorClass, unavailable: bool) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if unavailable {
            self.unavailable.fetch_add(1, Ordering::Relaxed);
        }
        self.error_classes[class.index()].fetch_add(1, Ordering::Relaxed);
        *self.error_kinds.lock().unwrap_or_else(|e| e.into_inner()).entry(kind).or_default() += 1;
    }

    /// Keeps a replied exchange in the event log (when recording).
    pub fn log_reply(&self, start_ms: u32, latency: Duration, j: &Judged) {
        if self.record_events {
            let ending = Ending::Reply { verdict: j.verdict, asked: j.asked_full_state };
            self.log(start_ms, latency, |_| ending);
        }
    }

    /// Keeps a failed exchange in the event log (when recording).
    pub fn log_error(&self, start_ms: u32, latency: Duration, class: ErrorClass, kind: &str) {
        if self.record_events {
            self.log(start_ms, latency, |log| Ending::Error { class, kind: log.kind_id(kind) });
        }
    }

    fn log(&self, start_ms: u32, latency: Duration, ending: impl FnOnce(&mut EventLog) -> Ending) {
        let latency_us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        let mut log = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let ending = ending(&mut log);
        log.push(Event { start_ms, latency_us, ending });
    }

    /// Errors by class name, every class listed.
    pub fn error_classes(&self) -> BTreeMap<String, u64> {
        ErrorClass::ALL
            .iter()
            .map(|c| (c.as_str().to_owned(), Self::get(&self.error_classes[c.index()])))
            .collect()
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
