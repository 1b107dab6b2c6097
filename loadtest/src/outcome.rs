//! How one exchange ended, in the compact form the run keeps: the class of a failure (the
//! fault and overload accounting judges classes, not kinds) and the per-exchange event the phase
//! report is computed from. Plain data; no I/O.

use std::fmt;

use crate::agent::Verdict;

/// What kind of failure an exchange met, as far as the agent can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorClass {
    /// 503 or 429 with `Retry-After` (or an in-band `Unavailable` with retry info): the server,
    /// or the balancer in front of it, is shedding load and says when to come back.
    RetryAfter,
    /// No HTTP reply at all: connection refused, reset or closed mid-exchange, or timed out.
    Connection,
    /// 502/503/504 without `Retry-After`: a load balancer's report that no backend answered.
    Gateway,
    /// Anything else (a 500, a 4xx, an undecodable or wrong reply): never expected.
    Other,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 4] =
        [ErrorClass::RetryAfter, ErrorClass::Connection, ErrorClass::Gateway, ErrorClass::Other];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::RetryAfter => "retry_after",
            ErrorClass::Connection => "connection",
            ErrorClass::Gateway => "gateway",
            ErrorClass::Other => "other",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A valid reply (the message is acknowledged), judged against the drift rules.
    Reply { verdict: Verdict, asked: bool },
    /// No valid reply; `kind` indexes the run's table of error kinds.
    Error { class: ErrorClass, kind: u16 },
}

/// One exchange as the phase report needs it: 12 bytes, so a long run's log stays small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// When the message was sent, in milliseconds since the run started.
    pub start_ms: u32,
    /// How long until the reply or the failure, in microseconds.
    pub latency_us: u32,
    pub ending: Ending,
}

impl Event {
    /// When the exchange ended, in milliseconds since the run started.
    pub fn end_ms(&self) -> u64 {
        u64::from(self.start_ms) + u64::from(self.latency_us).div_ceil(1000)
    }
}

/// Most events a run keeps (240 MB); later ones are counted, not kept, and the phase report
/// then says it is incomplete.
pub const MAX_EVENTS: usize = 20_000_000;

/// Every exchange of a run, in completion order, with the table of error kinds they name.
#[derive(Debug, Default, Clone)]
pub struct EventLog {
    pub events: Vec<Event>,
    pub kinds: Vec<String>,
    /// Events not kept because the log was full.
    pub dropped: u64,
}

impl EventLog {
    pub fn push(&mut self, event: Event) {
        if self.events.len() < MAX_EVENTS {
            self.events.push(event);
        } else {
            self.dropped += 1;
        }
    }

    /// The index of `kind` in the table, added on first use (a run sees a handful of kinds).
    pub fn kind_id(&mut self, kind: &str) -> u16 {
        if let Some(i) = self.kinds.iter().position(|k| k == kind) {
            return i as u16;
        }
        if self.kinds.len() >= usize::from(u16::MAX) {
            return u16::MAX;
        }
        self.kinds.push(kind.to_owned());
        (self.kinds.len() - 1) as u16
    }

    /// The kind an error event names.
    pub fn kind(&self, id: u16) -> &str {
        self.kinds.get(usize::from(id)).map_or("unknown", String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_stays_small() {
        assert!(std::mem::size_of::<Event>() <= 12, "{}", std::mem::size_of::<Event>());
    }

    #[test]
    fn classes_index_their_table() {
        for (i, c) in ErrorClass::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
    }

    #[test]
    fn end_rounds_up_to_the_millisecond() {
        let e = |start_ms, latency_us| Event {
            start_ms,
            latency_us,
            ending: Ending::Error { class: ErrorClass::Other, kind: 0 },
        };
        assert_eq!(e(10, 0).end_ms(), 10);
        assert_eq!(e(10, 1).end_ms(), 11);
        assert_eq!(e(10, 2_000).end_ms(), 12);
    }

    #[test]
    fn kinds_are_interned_once() {
        let mut log = EventLog::default();
        assert_eq!(log.kind_id("http_503"), 0);
        assert_eq!(log.kind_id("connect"), 1);
        assert_eq!(log.kind_id("http_503"), 0);
        assert_eq!(log.kind(1), "connect");
        assert_eq!(log.kind(7), "unknown");
    }
}
