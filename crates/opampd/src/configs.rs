//! Remote configuration on this instance: the configs in force (re-read from the store when it
//! changes, checked every `--config-refresh`), the pacing of rollouts (send slots claimed from
//! the config's shared rollout state by compare-and-swap), the failure count that pauses a
//! rollout, and the operations behind the admin API.
//!
//! The OpAMP path reads only memory here: [`Configs::snapshot`] is an `Arc` clone,
//! [`Configs::permit`] a map lookup and [`Configs::record_failure`] a counter; every store access
//! happens in the background task (refresh, slot claims, failure counts flushed in one write per
//! config) or on an admin call.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use opamp_core::Timestamp;
use opamp_core::remote_config::{
    ConfigHash, ConfigSet, DesiredConfig, InvalidConfig, RemoteConfig, RolloutState, SLOT_TTL_MS,
};
use opamp_store::{
    ConfigStore, Precondition, RolloutCounts, StoreError, StoredConfig, VersionedConfig,
};
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::telemetry;

/// Default of `--config-refresh`: a change made on another instance is in force here within
/// this (plus the store's own visibility delay, which writes with refresh avoid).
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(2);
/// Attempts at a compare-and-swap on a config before giving up (each lost race is progress
/// by another writer).
const MAX_CAS_ATTEMPTS: u32 = 8;
/// After a claim that got no slot (the window is full), wait this long before asking again.
const EMPTY_CLAIM_BACKOFF_MS: u64 = 1_000;

/// What the admin API can be told.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(#[from] InvalidConfig),
    #[error("no config named {0:?}")]
    NotFound(String),
    #[error("the config changed concurrently too often; try again")]
    Contention,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A std mutex's guard, also after a panic elsewhere poisoned it (the data is counters only).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Send slots this instance holds for one rate-limited config.
#[derive(Debug, Clone, Copy)]
struct Pool {
    hash: ConfigHash,
    slots: u32,
    expires_at: Timestamp,
    /// An agent was held back for lack of a slot: claim more.
    wanted: bool,
    /// Do not claim before this (the last claim found the window full).
    next_claim_at: Timestamp,
}

impl Pool {
    fn empty(hash: ConfigHash) -> Self {
        Self { hash, slots: 0, expires_at: 0, wanted: false, next_claim_at: 0 }
    }
}

/// The remote configs of this instance. Cheap to clone.
#[derive(Clone)]
pub struct Configs {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ConfigStore>,
    clock: Clock,
    refresh_every: Duration,
    set: RwLock<Arc<ConfigSet>>,
    /// The configs last read, by name: what `set` was built from.
    loaded: tokio::sync::Mutex<BTreeMap<String, VersionedConfig>>,
    pools: Mutex<HashMap<String, Pool>>,
    /// Failures counted here and not yet written to the configs' rollout state.
    failures: Mutex<HashMap<(String, ConfigHash), u32>>,
    /// For each config that pauses on failures: the failures it may still take before it
    /// pauses, as far as this instance knows (stored count and its own unwritten ones). At zero
    /// this instance stops sending it at once, before the pause is written and read back.
    budgets: Mutex<HashMap<String, (ConfigHash, u32)>>,
    demand: Notify,
    /// Set by the first successful read of the store: until then this instance does not say
    /// it is ready (it would decide agents against no configs at all).
    loaded_once: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Configs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Configs")
            .field("configs", &self.snapshot().len())
            .field("refresh_every", &self.inner.refresh_every)
            .finish_non_exhaustive()
    }
}

impl Configs {
    pub fn new(store: Arc<dyn ConfigStore>, clock: Clock, refresh_every: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                clock,
                refresh_every,
                set: RwLock::new(Arc::new(ConfigSet::default())),
                loaded: tokio::sync::Mutex::new(BTreeMap::new()),
                pools: Mutex::new(HashMap::new()),
                failures: Mutex::new(HashMap::new()),
                budgets: Mutex::new(HashMap::new()),
                demand: Notify::new(),
                loaded_once: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// True once the configs were read from the store (for `/readyz`).
    pub fn loaded(&self) -> bool {
        self.inner.loaded_once.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The configs in force now (a pointer copy).
    pub fn snapshot(&self) -> Arc<ConfigSet> {
        self.inner.set.read().map(|s| s.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The rollout's say on sending `config` now: always yes without a rate limit; with one,
    /// yes while this instance holds an unexpired slot (taking it), otherwise no, and more
    /// slots are claimed in the background for the agent's next message.
    pub fn permit(&self, config: &RemoteConfig) -> bool {
        if config.rollout().pause_on_failures.is_some() {
            let budgets = lock(&self.inner.budgets);
            if budgets.get(config.name()).is_some_and(|(h, left)| h == config.hash() && *left == 0)
            {
                metrics::counter!(telemetry::REMOTE_CONFIG_HELD_TOTAL).increment(1);
                return false;
            }
        }
        if config.rollout().max_agents_per_minute.is_none() {
            return true;
        }
        let now = (self.inner.clock)();
        let granted = {
            let mut pools = lock(&self.inner.pools);
            let pool = pools
                .entry(config.name().to_owned())
                .or_insert_with(|| Pool::empty(*config.hash()));
            if pool.hash != *config.hash() {
                *pool = Pool::empty(*config.hash());
            }
            if pool.slots > 0 && now < pool.expires_at {
                pool.slots -= 1;
                true
            } else {
                pool.wanted = true;
                false
            }
        };
        if !granted {
            metrics::counter!(telemetry::REMOTE_CONFIG_HELD_TOTAL).increment(1);
            self.inner.demand.notify_one();
        }
        granted
    }

    /// Gives back a slot taken for a send that did not happen (its write lost a race).
    pub fn return_slot(&self, desired: &DesiredConfig) {
        let mut pools = lock(&self.inner.pools);
        if let Some(pool) = pools.get_mut(&desired.name)
            && pool.hash == desired.hash
        {
            pool.slots = pool.slots.saturating_add(1);
        }
    }

    /// Counts an agent that newly reported FAILED for `desired`'s hash against that config's
    /// `pause_on_failures`. Memory only: the background task adds the count to the config's
    /// rollout state (one compare-and-swap write per config, whatever the number of failures),
    /// and this instance stops sending the config as soon as its own count reaches the budget.
    /// Nothing is counted for a config that cannot pause, or whose content changed since.
    pub fn record_failure(&self, desired: &DesiredConfig) {
        metrics::counter!(telemetry::REMOTE_CONFIG_FAILED_TOTAL).increment(1);
        let can_pause = self
            .snapshot()
            .get(&desired.name)
            .is_some_and(|c| *c.hash() == desired.hash && c.rollout().pause_on_failures.is_some());
        if !can_pause {
            return;
        }
        *lock(&self.inner.failures).entry((desired.name.clone(), desired.hash)).or_default() += 1;
        if let Some((hash, left)) = lock(&self.inner.budgets).get_mut(&desired.name)
            && *hash == desired.hash
        {
            *left = left.saturating_sub(1);
        }
        self.inner.demand.notify_one();
    }

    /// Writes the failures counted here into the configs' rollout states; on a store failure
    /// they are kept for the next attempt.
    async fn flush_failures(&self) {
        let pending: Vec<((String, ConfigHash), u32)> =
            lock(&self.inner.failures).drain().collect();
        for ((name, hash), n) in pending {
            let outcome = self
                .update(&name, |stored| {
                    if *stored.config.hash() != hash {
                        return false;
                    }
                    let policy = stored.config.rollout();
                    if stored.rollout.record_failures(policy, n) {
                        tracing::warn!(
                            config = %name,
                            failures = stored.rollout.failures,
                            "rollout paused: too many agents failed to apply the config; \
                             POST /api/configs/{{name}}/resume to go on"
                        );
                    }
                    true
                })
                .await;
            match outcome {
                Ok(()) | Err(ConfigError::NotFound(_)) => {}
                Err(e) => {
                    tracing::warn!(config = %name, failures = n, error = %e, "could not count failed agents yet");
                    *lock(&self.inner.failures).entry((name, hash)).or_default() += n;
                }
            }
        }
    }

    /// Runs until `stop` resolves: re-reads changed configs every refresh interval and claims
    /// send slots when agents are waiting for them.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(self.inner.refresh_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => {
                    // what was counted here is not lost with the process
                    self.flush_failures().await;
                    return;
                }
                _ = tick.tick() => {
                    if let Err(e) = self.refresh().await {
                        metrics::counter!(telemetry::CONFIG_REFRESH_FAILURES_TOTAL).increment(1);
                        tracing::debug!(error = %e, "config refresh failed; keeping the configs in force");
                    }
                    self.flush_failures().await;
                    self.claim_wanted().await;
                }
                () = self.inner.demand.notified() => {
                    self.flush_failures().await;
                    self.claim_wanted().await;
                }
            }
        }
    }

    /// Re-reads what changed in the store (by version) and puts the new set in force.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let mut loaded = self.inner.loaded.lock().await;
        let versions = self.inner.store.config_versions().await?;
        let mut changed = loaded.len() != versions.len();
        let mut fresh = BTreeMap::new();
        for (name, version) in versions {
            match loaded.remove(&name) {
                Some(v) if v.version == version => {
                    fresh.insert(name, v);
                }
                _ => {
                    changed = true;
                    if let Some(v) = self.inner.store.get_config(&name).await? {
                        fresh.insert(name, v);
                    }
                }
            }
        }
        *loaded = fresh;
        if changed || !self.loaded() {
            self.install(&loaded);
        }
        self.inner.loaded_once.store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    fn install(&self, loaded: &BTreeMap<String, VersionedConfig>) {
        let set = ConfigSet::new(
            loaded.values().map(|v| v.stored.config.clone()),
            loaded
                .values()
                .filter(|v| v.stored.rollout.paused)
                .map(|v| v.stored.config.name().to_owned()),
        );
        metrics::gauge!(telemetry::REMOTE_CONFIGS).set(set.len() as f64);
        {
            // slots of a config that is gone, changed or paused are dropped
            let mut pools = lock(&self.inner.pools);
            pools.retain(|name, pool| {
                set.get(name).is_some_and(|c| *c.hash() == pool.hash) && !set.is_paused(name)
            });
        }
        {
            // the failure budgets as stored, less what this instance counted and did not write
            let unwritten = lock(&self.inner.failures);
            let budgets = loaded
                .values()
                .filter_map(|v| {
                    let config = &v.stored.config;
                    let k = config.rollout().pause_on_failures?;
                    let mine = unwritten
                        .get(&(config.name().to_owned(), *config.hash()))
                        .copied()
                        .unwrap_or(0);
                    let left = if v.stored.rollout.paused {
                        0
                    } else {
                        k.saturating_sub(v.stored.rollout.failures).saturating_sub(mine)
                    };
                    Some((config.name().to_owned(), (*config.hash(), left)))
                })
                .collect();
            *lock(&self.inner.budgets) = budgets;
        }
        *self.inner.set.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
    }

    /// Claims slots for every rate-limited config an agent is waiting for.
    async fn claim_wanted(&self) {
        let now = (self.inner.clock)();
        let wanted: Vec<(String, ConfigHash)> = {
            let pools = lock(&self.inner.pools);
            pools
                .iter()
                .filter(|(_, p)| {
                    p.wanted && (p.slots == 0 || now >= p.expires_at) && now >= p.next_claim_at
                })
                .map(|(name, p)| (name.clone(), p.hash))
                .collect()
        };
        for (name, hash) in wanted {
            if let Err(e) = self.claim(&name, hash).await {
                tracing::debug!(config = %name, error = %e, "claiming rollout slots failed");
            }
        }
    }

    async fn claim(&self, name: &str, hash: ConfigHash) -> Result<(), ConfigError> {
        let mut granted = 0;
        let mut at = 0;
        self.update(name, |stored| {
            if *stored.config.hash() != hash {
                return false;
            }
            let policy = stored.config.rollout();
            let limit = policy.max_agents_per_minute.unwrap_or(u32::MAX);
            // about a twelfth of the minute's budget at a time: small enough that instances
            // share it, large enough that claims stay rare
            let chunk = (limit / 12).clamp(1, 1_000);
            at = (self.inner.clock)();
            granted = stored.rollout.claim(policy, at, chunk);
            granted > 0
        })
        .await?;
        let mut pools = lock(&self.inner.pools);
        if let Some(pool) = pools.get_mut(name)
            && pool.hash == hash
        {
            if granted > 0 {
                pool.slots = granted;
                pool.expires_at = at + SLOT_TTL_MS;
                pool.wanted = false;
            } else {
                pool.next_claim_at = (self.inner.clock)() + EMPTY_CLAIM_BACKOFF_MS;
            }
        }
        Ok(())
    }

    /// Read, change, compare-and-swap write one config, again on a lost race. `change` returns
    /// false to write nothing. Then this instance's set is refreshed.
    async fn update(
        &self,
        name: &str,
        mut change: impl FnMut(&mut StoredConfig) -> bool,
    ) -> Result<(), ConfigError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some(current) = self.inner.store.get_config(name).await? else {
                return Err(ConfigError::NotFound(name.to_owned()));
            };
            let mut stored = current.stored.clone();
            if !change(&mut stored) {
                return Ok(());
            }
            match self.inner.store.put_config(&stored, Precondition::Version(current.version)).await
            {
                Ok(_) => {
                    let _ = self.refresh().await;
                    return Ok(());
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ConfigError::Contention)
    }

    /// `PUT /api/configs/{name}`: creates or replaces a config. The same content (hash) keeps
    /// its rollout's progress; new content starts a new rollout.
    pub async fn put(&self, config: RemoteConfig) -> Result<VersionedConfig, ConfigError> {
        let config = Arc::new(config);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let current = self.inner.store.get_config(config.name()).await?;
            let (rollout, precondition) = match &current {
                Some(v) if v.stored.config.hash() == config.hash() => {
                    (v.stored.rollout.clone(), Precondition::Version(v.version))
                }
                Some(v) => (RolloutState::new(*config.hash()), Precondition::Version(v.version)),
                None => (RolloutState::new(*config.hash()), Precondition::Absent),
            };
            let stored =
                StoredConfig { config: config.clone(), rollout, updated_at: (self.inner.clock)() };
            match self.inner.store.put_config(&stored, precondition).await {
                Ok(version) => {
                    tracing::info!(config = %config.name(), hash = %opamp_core::remote_config::hash_hex(config.hash()), "config stored");
                    let _ = self.refresh().await;
                    return Ok(VersionedConfig { stored, version });
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ConfigError::Contention)
    }

    /// `DELETE /api/configs/{name}`.
    pub async fn delete(&self, name: &str) -> Result<(), ConfigError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some(current) = self.inner.store.get_config(name).await? else {
                return Err(ConfigError::NotFound(name.to_owned()));
            };
            match self.inner.store.delete_config(name, current.version).await {
                Ok(()) => {
                    tracing::info!(config = %name, "config deleted");
                    let _ = self.refresh().await;
                    return Ok(());
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ConfigError::Contention)
    }

    /// `POST /api/configs/{name}/resume`: sending goes on, with a fresh failure budget.
    pub async fn resume(&self, name: &str) -> Result<VersionedConfig, ConfigError> {
        self.update(name, |stored| {
            stored.rollout.resume();
            true
        })
        .await?;
        tracing::info!(config = %name, "rollout resumed");
        self.get(name).await?.ok_or_else(|| ConfigError::NotFound(name.to_owned()))
    }

    /// One config, read from the store.
    pub async fn get(&self, name: &str) -> Result<Option<VersionedConfig>, ConfigError> {
        Ok(self.inner.store.get_config(name).await?)
    }

    /// Every config, as of a refresh made now.
    pub async fn list(&self) -> Result<Vec<VersionedConfig>, ConfigError> {
        self.refresh().await?;
        let loaded = self.inner.loaded.lock().await;
        Ok(loaded.values().cloned().collect())
    }

    /// The rollout counts of `views`, in the same order.
    pub async fn counts(
        &self,
        views: &[VersionedConfig],
    ) -> Result<Vec<RolloutCounts>, ConfigError> {
        let keys: Vec<(String, ConfigHash)> = views
            .iter()
            .map(|v| (v.stored.config.name().to_owned(), *v.stored.config.hash()))
            .collect();
        Ok(self.inner.store.rollout_counts(&keys).await?)
    }
}
