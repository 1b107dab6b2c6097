//! Latency recording on an HDR histogram (microsecond resolution, 3 significant digits) and its
//! summary in milliseconds, shared by the loadtest and es-ceiling.

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Highest recordable latency; anything slower is clamped so a stuck request never panics the
/// recorder (the request timeout is far below this anyway).
const MAX_MICROS: u64 = 600_000_000;

/// A latency histogram in microseconds.
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        // Bounds are constants that hdrhistogram accepts, so construction cannot fail.
        Self(
            Histogram::new_with_bounds(1, MAX_MICROS, 3)
                .expect("static histogram bounds are valid"),
        )
    }

    pub fn record(&mut self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(MAX_MICROS).clamp(1, MAX_MICROS);
        self.0.saturating_record(micros);
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn reset(&mut self) {
        self.0.reset();
    }

    pub fn summary(&self) -> LatencySummary {
        let ms = |micros: u64| micros as f64 / 1000.0;
        if self.0.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.0.len(),
            mean_ms: self.0.mean() / 1000.0,
            p50_ms: ms(self.0.value_at_quantile(0.50)),
            p90_ms: ms(self.0.value_at_quantile(0.90)),
            p99_ms: ms(self.0.value_at_quantile(0.99)),
            p999_ms: ms(self.0.value_at_quantile(0.999)),
            max_ms: ms(self.0.max()),
        }
    }
}

/// Percentiles of a [`Latency`], in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    pub fn to_json(&self) -> Value {
        json!({
            "count": self.count,
            "mean_ms": round3(self.mean_ms),
            "p50_ms": round3(self.p50_ms),
            "p90_ms": round3(self.p90_ms),
            "p99_ms": round3(self.p99_ms),
            "p999_ms": round3(self.p999_ms),
            "max_ms": round3(self.max_ms),
        })
    }
}

impl fmt::Display for LatencySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  (n={})",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms, self.count
        )
    }
}

/// Rounds to 3 decimals so JSON output stays readable.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_in_milliseconds() {
        let mut l = Latency::new();
        for ms in 1..=100u64 {
            l.record(Duration::from_millis(ms));
        }
        let s = l.summary();
        assert_eq!(s.count, 100);
        assert!((s.p50_ms - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.p99_ms - 99.0).abs() < 0.1, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.1, "{s:?}");
    }

    #[test]
    fn huge_and_zero_durations_are_clamped_not_lost() {
        let mut l = Latency::new();
        l.record(Duration::ZERO);
        l.record(Duration::from_secs(100_000));
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn empty_summary_is_zero() {
        assert_eq!(Latency::new().summary(), LatencySummary::default());
    }
}
