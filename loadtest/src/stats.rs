//! Shared run counters: lock-free atomics for the hot counts, short std mutexes for the
//! histograms and the error map (never held across an await).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::agent::{Judged, Sent, Verdict};
use crate::latency::Latency;

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
    pub errors: AtomicU64,
    pub unavailable: AtomicU64,
    /// A scheduled message found its agent still busy with the previous one and was skipped.
    pub busy_skips: AtomicU64,
    /// The dispatcher had to wait for an in-flight slot (the target rate is not being held).
    pub saturated_waits: AtomicU64,
    /// Worst delay between a message's scheduled time and its dispatch, in microseconds.
    pub max_dispatch_lag_us: AtomicU64,
    /// Replies completed inside the measurement window (after warm-up, before the end).
    pub measured_completed: AtomicU64,
    /// Agent turns running now (the semaphore cannot say: the drain holds all its permits).
    pub in_flight: AtomicU64,
    pub error_kinds: Mutex<BTreeMap<String, u64>>,
    pub hist: Mutex<Histograms>,
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
            (Verdict::Unjudged, _) => &self.unjudged,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn on_error(&self, kind: String, unavailable: bool) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if unavailable {
            self.unavailable.fetch_add(1, Ordering::Relaxed);
        }
        *self.error_kinds.lock().unwrap_or_else(|e| e.into_inner()).entry(kind).or_default() += 1;
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
