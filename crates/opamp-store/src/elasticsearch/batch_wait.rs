//! How long a batch of Elasticsearch operations (the writer's `_bulk`, the reader's `_mget`)
//! waits for company before it is sent.
//!
//! Each request costs Elasticsearch a fixed share of CPU whatever its size (~0.4 ms per
//! shard-level bulk on a 2-core node: docs/benchmarks.md), so batches should be full; but waiting
//! only pays when other operations arrive meanwhile. [`BatchWait`] learns the rate at which
//! operations join an open batch and waits as long as [`TARGET_BATCH_ITEMS`] take to arrive at
//! that rate, within the configured maximum, and only [`MIN_BATCH_WAIT`] when nothing would
//! join (a lone agent, a sequential client).

use std::time::Duration;

/// Operations a batch someone waits for (state records, reads) waits to gather when others
/// are joining: past this, a bigger `_bulk` or `_mget` saves Elasticsearch little (its fixed
/// cost per request is a small share of the items') and only adds latency.
pub const TARGET_BATCH_ITEMS: usize = 64;
/// The shortest wait: long enough to see whether other operations join an open batch (the rate
/// [`BatchWait`] learns from), short enough not to matter to a lone one.
pub const MIN_BATCH_WAIT: Duration = Duration::from_millis(1);
/// Weight the previous batches keep in the join rate at each batch sent (about the last
/// ten batches count).
const JOIN_RATE_DECAY: f64 = 0.9;

/// A batch's wait, learned from the batches sent so far: the rate at which operations joined a
/// batch while it was open (decayed sums of joiners and of open time) tells how long the next
/// batch needs to gather [`TARGET_BATCH_ITEMS`].
#[derive(Debug, Clone)]
pub(crate) struct BatchWait {
    min: Duration,
    max: Duration,
    target: usize,
    joined: f64,
    open_secs: f64,
}

impl BatchWait {
    /// Waits at most `max` for `target` operations (see [`TARGET_BATCH_ITEMS`]).
    pub(crate) fn new(max: Duration, target: usize) -> Self {
        Self {
            min: MIN_BATCH_WAIT.min(max),
            max,
            target: target.max(1),
            joined: 0.0,
            open_secs: 0.0,
        }
    }

    /// One batch sent: `joined` operations arrived while it was open for `open`.
    pub(crate) fn record(&mut self, joined: usize, open: Duration) {
        self.joined = self.joined * JOIN_RATE_DECAY + joined as f64;
        self.open_secs = self.open_secs * JOIN_RATE_DECAY + open.as_secs_f64();
    }

    /// Operations per second joining an open batch.
    pub(crate) fn join_rate(&self) -> f64 {
        if self.open_secs > 0.0 { self.joined / self.open_secs } else { 0.0 }
    }

    /// How long the batch being filled waits before it is sent.
    pub(crate) fn current(&self) -> Duration {
        let rate = self.join_rate();
        // Waiting the longest would not even bring one more operation: do not wait.
        if rate * self.max.as_secs_f64() < 1.0 {
            return self.min;
        }
        let fill = (self.target - 1) as f64 / rate;
        Duration::try_from_secs_f64(fill).unwrap_or(self.max).clamp(self.min, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_writer_does_not_wait() {
        let mut wait = BatchWait::new(Duration::from_millis(20), TARGET_BATCH_ITEMS);
        assert_eq!(wait.current(), MIN_BATCH_WAIT, "nothing learned yet: the shortest wait");
        // a sequential writer: every batch holds its one write, nobody joins
        for _ in 0..100 {
            wait.record(0, MIN_BATCH_WAIT);
        }
        assert_eq!(wait.join_rate(), 0.0);
        assert_eq!(wait.current(), MIN_BATCH_WAIT);
        // a few writes a second: the longest wait would not even bring one more
        for _ in 0..100 {
            wait.record(1, Duration::from_millis(100));
        }
        assert!((wait.join_rate() - 10.0).abs() < 1e-3, "{}", wait.join_rate());
        assert_eq!(wait.current(), MIN_BATCH_WAIT);
    }

    #[test]
    fn a_batch_waits_as_long_as_it_takes_to_fill_up_to_the_longest_wait() {
        let max = Duration::from_millis(20);
        let mut wait = BatchWait::new(max, TARGET_BATCH_ITEMS);
        // ~1,100 writes a second join (one instance of three behind a load balancer): the
        // target would take 57 ms, so the batch waits the longest
        for _ in 0..50 {
            wait.record(11, Duration::from_millis(10));
        }
        assert!((wait.join_rate() - 1100.0).abs() < 1e-3, "{}", wait.join_rate());
        assert_eq!(wait.current(), max);
        // 21,000 a second: 63 more writes take 3 ms
        for _ in 0..200 {
            wait.record(21, Duration::from_millis(1));
        }
        let now = wait.current();
        assert!(
            now > Duration::from_micros(2_900) && now < Duration::from_micros(3_100),
            "{now:?}"
        );
        // the rate falls back: the wait follows within a few batches, and never exceeds the max
        for _ in 0..60 {
            wait.record(0, max);
        }
        assert_eq!(wait.current(), MIN_BATCH_WAIT);
    }

    #[test]
    fn the_wait_stays_within_its_bounds() {
        // a zero max (no batching wait at all) wins over the minimum
        let mut none = BatchWait::new(Duration::ZERO, TARGET_BATCH_ITEMS);
        none.record(1_000, Duration::from_millis(1));
        assert_eq!(none.current(), Duration::ZERO);
        // a target of one: a batch never waits for more
        let mut one = BatchWait::new(Duration::from_millis(20), 1);
        one.record(100, Duration::from_millis(1));
        assert_eq!(one.current(), MIN_BATCH_WAIT);
        // an open time of zero or absurd rates do not panic
        let mut odd = BatchWait::new(Duration::from_millis(20), TARGET_BATCH_ITEMS);
        odd.record(usize::MAX, Duration::ZERO);
        assert_eq!(odd.current(), MIN_BATCH_WAIT);
        odd.record(0, Duration::MAX);
        assert!(odd.current() <= Duration::from_millis(20));
    }
}
