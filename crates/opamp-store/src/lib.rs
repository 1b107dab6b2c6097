//! Agent storage behind one compare-and-swap trait, so every backend gives the server the same
//! guarantee: a write applies only to the version it was decided against.
//!
//! Backends: [`embedded`] (redb on local disk, single instance) and [`elasticsearch`] (shared by
//! many instances). [`cache`] is a layer implementing the same trait. [`conformance`] is the one
//! test suite every backend runs.
//!
//! Architecture invariant: this is the only crate that knows Elasticsearch, redb or moka, and it
//! knows nothing of HTTP or OpAMP transports.

use async_trait::async_trait;
use opamp_core::AgentRecord;
use opamp_proto::InstanceUid;

pub mod cache;
pub mod codec;
pub mod configs;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod elasticsearch;
pub mod embedded;
pub mod fleet;
pub mod metrics;
mod secret;
#[cfg(any(test, feature = "conformance"))]
pub mod secured_cluster;

pub use configs::{ConfigStore, RolloutCounts, StoredConfig, VersionedConfig};
pub use fleet::{AgentFilter, AgentStats};
pub use secret::Secret;

/// The version a record was read at. Opaque to callers: they hand it back to [`AgentStore::put`].
/// For Elasticsearch it is (`_seq_no`, `_primary_term`); the embedded store uses a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version {
    pub seq_no: u64,
    pub primary_term: u64,
}

/// A record together with the version it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    pub record: AgentRecord,
    pub version: Version,
}

/// The condition a write is made under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Enrollment: fails with [`StoreError::Conflict`] if the agent already exists.
    Absent,
    /// Update: fails with [`StoreError::Conflict`] unless the stored version is still this one.
    Version(Version),
}

/// Store failures, classified once so the server can map them to a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The precondition did not hold: another writer got there first. Re-read and decide again.
    #[error("version conflict")]
    Conflict,
    /// The write queue is full; shed load rather than grow.
    #[error("store overloaded")]
    Overloaded,
    /// The backend cannot be reached or did not answer in time. Retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The stored document cannot be read back (wrong schema, corrupt bytes).
    #[error("stored record unreadable: {0}")]
    Corrupt(String),
    /// Anything else the backend reported.
    #[error("store error: {0}")]
    Backend(String),
}

impl StoreError {
    /// True for failures that go away by themselves (answer the agent "retry later").
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Overloaded | Self::Unavailable(_))
    }
}

/// Agent records keyed by instance uid, with compare-and-swap writes.
///
/// Implementations may batch concurrent calls (group commit, `_mget`) but each call's result is
/// its own: a returned `Ok` means the write is durable as far as the backend promises.
#[async_trait]
pub trait AgentStore: Send + Sync + std::fmt::Debug + 'static {
    /// The freshest stored record (a realtime read by id), or `None` for an unknown agent.
    async fn get(&self, uid: InstanceUid) -> Result<Option<Versioned>, StoreError>;

    /// Like [`get`](Self::get), but never answered from a cache layer: for readers that show
    /// the stored truth (the admin API). The hot path uses `get`, whose staleness the CAS
    /// catches; a reader that writes nothing has no CAS to catch it.
    async fn get_fresh(&self, uid: InstanceUid) -> Result<Option<Versioned>, StoreError> {
        self.get(uid).await
    }

    /// [`get`](Self::get) for a message that suggests a new agent: a full status report, as
    /// every agent's first message is. The answer is `get`'s; the hint only lets a backend that
    /// finds an agent in one of two places ask both at once instead of one after the other.
    async fn get_likely_new(&self, uid: InstanceUid) -> Result<Option<Versioned>, StoreError> {
        self.get(uid).await
    }

    /// Writes `record` if `precondition` holds; returns the new version.
    async fn put(
        &self,
        record: &AgentRecord,
        precondition: Precondition,
    ) -> Result<Version, StoreError>;

    /// Ok when the backend can serve reads and writes now (for `/readyz`).
    async fn ready(&self) -> Result<(), StoreError>;

    /// Completes every accepted write (for graceful shutdown).
    async fn flush(&self) -> Result<(), StoreError>;

    /// Up to `limit` records that `filter` selects with uid greater than `after`, in uid order
    /// (the admin listing; a search or a scan, never for the OpAMP path). Holds at most
    /// `limit` records in memory however many it passes over.
    async fn list(
        &self,
        filter: &AgentFilter,
        after: Option<InstanceUid>,
        limit: usize,
    ) -> Result<Vec<AgentRecord>, StoreError>;

    /// The counts of the agents `filter` selects (the admin API; one search or one scan in
    /// bounded memory, never for the OpAMP path).
    async fn stats(&self, filter: &AgentFilter) -> Result<AgentStats, StoreError>;
}

/// A backend keeping everything opampd stores: agents and remote configs. Every backend (and
/// the cache over one) is one; opampd hands it around as `Arc<dyn Backend>` and upcasts to the
/// trait a component needs.
pub trait Backend: AgentStore + ConfigStore {}

impl<T: AgentStore + ConfigStore> Backend for T {}
