//! opampd's pure domain: the agent record, the drift rules that decide when to ask an agent for
//! its full state, the merge of a message into the stored record, and building the reply.
//!
//! Architecture invariant: this crate does no I/O, reads no clock and draws no randomness: time
//! and fresh identities are parameters. It depends on the wire types only (not on tokio, axum,
//! elasticsearch, redb or moka), and nothing in it can fail or panic on agent input.

mod drift;
mod merge;
mod record;
pub mod redact;
pub mod remote_config;
mod response;

pub use drift::{FullStateReason, full_state_reason, has_full_status};
pub use merge::merge;
pub use record::{
    AgentRecord, AgentStatus, DEFAULT_OFFLINE_AFTER_MS, DEFAULT_PUBLISH_INTERVAL_MS, Enrollment,
    Timestamp, UnenrollReason, Unenrolled,
};
pub use remote_config::{ConfigSet, RemoteConfigOutcome};
pub use response::{
    DEFAULT_SERVER_CAPABILITIES, Processed, Refusal, Remote, ServerConfig, bad_request, process,
    unavailable, validate,
};
