//! A read-through cache layer over any [`AgentStore`], so an agent that keeps reporting to the
//! same instance costs no backend read per message.
//!
//! A cached entry may be stale (another instance wrote the agent): that is safe because every
//! write is a compare-and-swap against the cached version, which then fails with
//! [`StoreError::Conflict`]; the failure evicts the entry, so the caller's re-read goes to the
//! backend. Absence is never cached: an agent enrolled through another instance must be seen at
//! once.
//!
//! Remote configs are not cached here: [`ConfigStore`] calls go straight to the inner store
//! (the server keeps its own copy of the configs and checks `config_versions` for changes).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use moka::future::Cache;
use moka::ops::compute::Op;
use opamp_core::AgentRecord;
use opamp_proto::InstanceUid;

use opamp_core::remote_config::ConfigHash;

use crate::configs::{ConfigStore, RolloutCounts, StoredConfig, VersionedConfig};
use crate::{AgentFilter, AgentStats, AgentStore, Precondition, StoreError, Version, Versioned};

/// Tuning of [`CachedStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// How long an entry may serve reads after it was written or read from the backend. Longer
    /// than the agents' heartbeat, or every heartbeat misses; staleness is caught by the CAS.
    pub ttl: Duration,
    /// Memory budget in bytes, from each record's encoded size plus a fixed overhead; the
    /// least useful entries beyond it are evicted. A budget, not a count: agents with large
    /// effective configs weigh more, and a fleet that fits never misses on heartbeats.
    pub max_bytes: u64,
}

impl CacheConfig {
    /// The defaults: 120 s (four 30 s heartbeats), 1 GiB (a 100K fleet fits many times over).
    pub const DEFAULT: Self = Self { ttl: Duration::from_secs(120), max_bytes: 1 << 30 };
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Hits and misses since the cache was built (also exported as metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

/// `inner` behind a moka cache, see the [module docs](self).
pub struct CachedStore<S> {
    inner: S,
    cache: Cache<InstanceUid, Versioned>,
    counters: Counters,
    /// `opampd_cache_entries` and `opampd_cache_weighted_bytes`: set after each insert (two
    /// atomic stores through held handles, no registry lookup per message).
    entries: metrics::Gauge,
    weighted_bytes: metrics::Gauge,
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
}

impl<S: std::fmt::Debug> std::fmt::Debug for CachedStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedStore")
            .field("inner", &self.inner)
            .field("entries", &self.cache.entry_count())
            .field("stats", &self.stats())
            .finish()
    }
}

/// True if `a` was written after `b`. Elasticsearch bumps `_seq_no` on every write to a shard and
/// `_primary_term` on every primary change; the embedded store keeps the term fixed.
fn newer(a: Version, b: Version) -> bool {
    (a.primary_term, a.seq_no) > (b.primary_term, b.seq_no)
}

impl<S> CachedStore<S> {
    /// The wrapped store (e.g. to close it after a flush).
    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn into_inner(self) -> S {
        self.inner
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.counters.hits.load(Ordering::Relaxed),
            misses: self.counters.misses.load(Ordering::Relaxed),
        }
    }
}

impl<S: AgentStore> CachedStore<S> {
    pub fn new(inner: S, config: CacheConfig) -> Self {
        crate::metrics::register_cache();
        let cache = Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|_, v: &Versioned| weight(&v.record))
            .time_to_live(config.ttl)
            .build();
        Self {
            inner,
            cache,
            counters: Counters::default(),
            entries: metrics::gauge!(crate::metrics::CACHE_ENTRIES),
            weighted_bytes: metrics::gauge!(crate::metrics::CACHE_WEIGHTED_BYTES),
        }
    }

    /// Caches `fresh` unless the cache already holds a later version: a read that raced with a
    /// local write must not put the older record back.
    async fn remember(&self, fresh: Versioned) {
        self.cache
            .entry(fresh.record.instance_uid)
            .and_compute_with(|cached| {
                let op = match cached {
                    Some(entry) if !newer(fresh.version, entry.value().version) => Op::Nop,
                    _ => Op::Put(fresh),
                };
                std::future::ready(op)
            })
            .await;
        // moka's counts lag its pending housekeeping a little: good enough for a gauge
        self.entries.set(self.cache.entry_count() as f64);
        self.weighted_bytes.set(self.cache.weighted_size() as f64);
    }
}

impl<S: AgentStore> CachedStore<S> {
    /// A hit, or the inner store's read (with the caller's hint) remembered.
    async fn read_through(
        &self,
        uid: InstanceUid,
        likely_new: bool,
    ) -> Result<Option<Versioned>, StoreError> {
        if let Some(hit) = self.cache.get(&uid).await {
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::metrics::CACHE_HITS_TOTAL).increment(1);
            return Ok(Some(hit));
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::metrics::CACHE_MISSES_TOTAL).increment(1);
        let read = if likely_new {
            self.inner.get_likely_new(uid).await?
        } else {
            self.inner.get(uid).await?
        };
        if let Some(fresh) = &read {
            self.remember(fresh.clone()).await;
        }
        Ok(read)
    }
}

#[async_trait]
impl<S: AgentStore> AgentStore for CachedStore<S> {
    async fn get(&self, uid: InstanceUid) -> Result<Option<Versioned>, StoreError> {
        self.read_through(uid, false).await
    }

    async fn get_likely_new(&self, uid: InstanceUid) -> Result<Option<Versioned>, StoreError> {
        self.read_through(uid, true).await
    }

    /// Straight from the backend (another instance may have written since the entry was
    /// cached); the answer refreshes the entry.
    async fn get_fresh(&self, uid: InstanceUid) -> Result<Option<Versioned>, StoreError> {
        let read = self.inner.get_fresh(uid).await?;
        if let Some(fresh) = &read {
            self.remember(fresh.clone()).await;
        }
        Ok(read)
    }

    async fn put(
        &self,
        record: &AgentRecord,
        precondition: Precondition,
    ) -> Result<Version, StoreError> {
        match self.inner.put(record, precondition).await {
            Ok(version) => {
                self.remember(Versioned { record: record.clone(), version }).await;
                Ok(version)
            }
            Err(err) => {
                // A conflict means the cached version is stale (or another writer just won);
                // any other failure leaves the stored state unknown (a timed-out write may have
                // applied). Either way, the next read must come from the backend.
                self.cache.invalidate(&record.instance_uid).await;
                Err(err)
            }
        }
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.inner.ready().await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush().await
    }

    /// Straight from the backend: listings are for admins and must show the stored truth.
    async fn list(
        &self,
        filter: &AgentFilter,
        after: Option<InstanceUid>,
        limit: usize,
    ) -> Result<Vec<AgentRecord>, StoreError> {
        self.inner.list(filter, after, limit).await
    }

    /// Straight from the backend, like [`list`](Self::list).
    async fn stats(&self, filter: &AgentFilter) -> Result<AgentStats, StoreError> {
        self.inner.stats(filter).await
    }
}

#[async_trait]
impl<S: AgentStore + ConfigStore> ConfigStore for CachedStore<S> {
    async fn config_versions(&self) -> Result<Vec<(String, Version)>, StoreError> {
        self.inner.config_versions().await
    }

    async fn get_config(&self, name: &str) -> Result<Option<VersionedConfig>, StoreError> {
        self.inner.get_config(name).await
    }

    async fn put_config(
        &self,
        config: &StoredConfig,
        precondition: Precondition,
    ) -> Result<Version, StoreError> {
        self.inner.put_config(config, precondition).await
    }

    async fn delete_config(&self, name: &str, version: Version) -> Result<(), StoreError> {
        self.inner.delete_config(name, version).await
    }

    async fn rollout_counts(
        &self,
        configs: &[(String, ConfigHash)],
    ) -> Result<Vec<RolloutCounts>, StoreError> {
        self.inner.rollout_counts(configs).await
    }
}

/// Approximate heap bytes of a cached record: the protobuf size of its sub-messages (their
/// in-memory form is within a small factor of it) plus the fixed part and the cache's own
/// per-entry bookkeeping.
fn weight(r: &opamp_core::AgentRecord) -> u32 {
    use prost::Message;
    const FIXED: usize = 512;
    let len = |m: Option<usize>| m.unwrap_or(0);
    let bytes = FIXED
        + len(r.agent_description.as_deref().map(Message::encoded_len))
        + len(r.health.as_deref().map(Message::encoded_len))
        + len(r.effective_config.as_deref().map(Message::encoded_len))
        + len(r.remote_config_status.as_deref().map(Message::encoded_len))
        + len(r.package_statuses.as_deref().map(Message::encoded_len))
        + len(r.custom_capabilities.as_deref().map(Message::encoded_len))
        + len(r.available_components.as_deref().map(Message::encoded_len))
        + len(r.connection_settings_status.as_deref().map(Message::encoded_len));
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_seq_no_or_term_is_newer() {
        let v = |primary_term, seq_no| Version { seq_no, primary_term };
        assert!(newer(v(1, 2), v(1, 1)));
        assert!(!newer(v(1, 1), v(1, 1)));
        assert!(!newer(v(1, 1), v(1, 2)));
        assert!(newer(v(2, 0), v(1, 99)), "a new primary term outranks any older seq_no");
    }
}
