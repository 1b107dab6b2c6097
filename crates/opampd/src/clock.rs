//! The wall clock as the core sees it: milliseconds since the Unix epoch, passed in (the core
//! reads no clock), so tests can drive time.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opamp_core::Timestamp;

/// Milliseconds since the Unix epoch, the core's notion of time.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis() as u64
    })
}
