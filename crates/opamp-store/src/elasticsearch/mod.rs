//! The Elasticsearch backend: one document per agent, realtime reads by id (batched into
//! `_mget`), compare-and-swap writes group-committed into `_bulk`.
//!
//! Shared by every opampd instance; correctness across instances rests on `if_seq_no` /
//! `if_primary_term` alone, never on local state. Nothing here searches on the hot path or
//! forces a refresh per write. Submodules: [`config`] (settings, client), [`document`] (the JSON
//! document and mapping), `writer` (group commit), `reader` (`_mget` batching), [`enrollment`]
//! (agent authentication with fleet's enrollment API keys, cached), `remote_configs` (the
//! [`ConfigStore`](crate::ConfigStore): remote configs in their own index, rollout counts by
//! one aggregation over the agents), `fleet` (the admin listing and counts: a search each).

mod batch_wait;
pub mod config;
pub mod document;
pub mod enrollment;
mod fleet;
mod reader;
mod remote_configs;
mod writer;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use elasticsearch::Elasticsearch;
use elasticsearch::cluster::ClusterHealthParts;
use elasticsearch::indices::{IndicesCreateParts, IndicesExistsParts, IndicesPutMappingParts};
use elasticsearch::params::Level;
use opamp_core::AgentRecord;
use opamp_proto::InstanceUid;
use serde_json::{Value, json};
use tokio::sync::{Mutex, Notify, mpsc, oneshot};
use tracing::{info, warn};

pub use config::{
    CaCert, DEFAULT_ENROLLMENT_INDEX, DEFAULT_FLEET_CONFIG_INDEX, DEFAULT_FLEET_STATE_INDEX,
    DEFAULT_INDEX, EsAuth, EsConfig, InvalidEsConfig,
};

use crate::metrics as m;
use crate::{AgentFilter, AgentStats, AgentStore, Precondition, StoreError, Version, Versioned};

/// Agent state in Elasticsearch. Cheap to clone (a handle); the background batchers stop once
/// every clone is dropped and what they hold is answered.
#[derive(Clone)]
pub struct ElasticsearchStore {
    shared: Arc<Shared>,
    writes: mpsc::Sender<writer::WriteOp>,
    /// The agent documents' own group commit (see `writer`).
    publications: mpsc::Sender<writer::WriteOp>,
    reads: mpsc::Sender<reader::ReadOp>,
}

/// Longest an agent document waits for others to share its `_bulk`: nobody waits for it (the
/// agent was answered once its state record was written), so its batches may fill longer than
/// the state records'; Kibana sees the change that much later at most.
pub const PUBLISH_MAX_WAIT: Duration = Duration::from_millis(250);
/// `_bulk` requests of agent documents in flight at once.
const PUBLISH_BULKS_IN_FLIGHT: usize = 2;

/// What the store and its batcher tasks share. Holds no sender, so tasks never keep the
/// store's queues open.
pub(crate) struct Shared {
    cfg: EsConfig,
    client: Elasticsearch,
    stats: Stats,
    /// Set once the index exists with our mapping (or we learnt it cannot be changed) and its
    /// primary shard is active, whoever created it.
    index_ready: AtomicBool,
    /// Serializes index setup so concurrent first writes do not all create it.
    index_setup: Mutex<()>,
    /// The config index's name, resolved once (see [`EsConfig::config_index`]).
    config_index: String,
    /// The state index's name, resolved once (see [`EsConfig::state_index`]).
    state_index: String,
    /// Agents whose last agent-document write failed: their next write publishes whatever
    /// its record says (bounded; past the bound the publish interval catches up).
    owed: std::sync::Mutex<std::collections::HashSet<InstanceUid>>,
    /// When a failed agent-document write was last logged (ms since the epoch).
    publish_failure_logged: AtomicU64,
    /// Like `index_ready` and `index_setup`, for the config index (set up on first use).
    config_index_ready: AtomicBool,
    config_index_setup: Mutex<()>,
    /// Set once the config index is known to exist: until then no config write is sent, since
    /// any write to a missing index would have Elasticsearch create it (see `remote_configs`).
    config_index_exists: AtomicBool,
    /// Whether the agent index maps the `opampd.remote_config.*` fields: [`FIELDS_UNKNOWN`],
    /// [`FIELDS_MAPPED`] (learnt at set-up, or from `_mapping` once) or [`FIELDS_UNMAPPED`].
    remote_config_fields: AtomicU8,
    /// Where the agent index keeps the attributes the admin listing filters on, learnt once.
    fleet_fields: OnceLock<fleet::FleetFields>,
    /// Writes accepted and not yet answered, for `flush`.
    outstanding: AtomicUsize,
    drained: Notify,
}

/// Held by each accepted write until it is answered or dropped.
pub(crate) struct Ticket(Arc<Shared>);

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.0.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

/// Counters since the store was built (also exported as `metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EsStats {
    /// `_bulk` requests sent.
    pub bulk_requests: u64,
    /// Items in those requests.
    pub bulk_items: u64,
    /// Items answered 409.
    pub conflicts: u64,
    /// `_mget` requests sent.
    pub mget_requests: u64,
    /// Single realtime `GET`s sent.
    pub get_requests: u64,
    /// Writes and reads refused because a queue was full.
    pub shed: u64,
    /// Write items refused by an index block (the flood-stage read-only block above all).
    pub blocked: u64,
}

#[derive(Default)]
struct Stats {
    bulk_requests: AtomicU64,
    bulk_items: AtomicU64,
    conflicts: AtomicU64,
    mget_requests: AtomicU64,
    get_requests: AtomicU64,
    shed: AtomicU64,
    blocked: AtomicU64,
}

impl Stats {
    fn record_bulk(&self, items: usize, took: Duration) {
        self.bulk_requests.fetch_add(1, Ordering::Relaxed);
        self.bulk_items.fetch_add(items as u64, Ordering::Relaxed);
        metrics::counter!(m::ES_BULK_REQUESTS_TOTAL).increment(1);
        metrics::counter!(m::ES_BULK_ITEMS_TOTAL).increment(items as u64);
        metrics::histogram!(m::ES_BULK_SIZE).record(items as f64);
        metrics::histogram!(m::ES_BULK_DURATION_SECONDS).record(took.as_secs_f64());
    }

    fn record_conflict(&self) {
        self.conflicts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::ES_CONFLICTS_TOTAL).increment(1);
    }

    fn record_read(&self, ids: usize, took: Duration) {
        if ids == 1 {
            self.get_requests.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(m::ES_GET_REQUESTS_TOTAL).increment(1);
        } else {
            self.mget_requests.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(m::ES_MGET_REQUESTS_TOTAL).increment(1);
            metrics::histogram!(m::ES_MGET_SIZE).record(ids as f64);
        }
        metrics::histogram!(m::ES_READ_DURATION_SECONDS).record(took.as_secs_f64());
    }

    fn record_shed(&self, what: &'static str) {
        self.shed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::ES_SHED_TOTAL, "op" => what).increment(1);
    }

    fn record_blocked(&self, items: u64) {
        self.blocked.fetch_add(items, Ordering::Relaxed);
        metrics::counter!(m::ES_WRITES_BLOCKED_TOTAL).increment(items);
    }
}

impl ElasticsearchStore {
    /// Builds the store, starts its batchers, and starts setting the index up in the background
    /// (retried until it works), without waiting for Elasticsearch: a server can start while ES
    /// is down, and [`ready`](AgentStore::ready) says when the index is usable. Until then reads
    /// and writes wait for the set-up (bounded by the request timeout), so none reaches a shard
    /// that is not active yet. [`connect`](Self::connect) waits for the set-up instead.
    /// Must be called inside a tokio runtime.
    pub fn new(cfg: EsConfig) -> Result<Self, StoreError> {
        cfg.validate()
            .map_err(|e| StoreError::Backend(format!("invalid elasticsearch config: {e}")))?;
        let client = cfg.client()?;
        m::register_elasticsearch();
        let (write_tx, write_rx) = mpsc::channel(cfg.write_queue);
        let (publish_tx, publish_rx) = mpsc::channel(cfg.write_queue);
        let states = writer::Lane {
            name: "state",
            max_items: cfg.bulk_max_items,
            target: batch_wait::TARGET_BATCH_ITEMS,
            max_wait: cfg.bulk_max_wait,
            in_flight: cfg.bulks_in_flight,
        };
        let publishes = writer::Lane {
            name: "publish",
            max_items: cfg.bulk_max_items,
            // nobody waits: as full as the bulk may be, within the wait
            target: cfg.bulk_max_items,
            max_wait: PUBLISH_MAX_WAIT.max(cfg.bulk_max_wait),
            in_flight: PUBLISH_BULKS_IN_FLIGHT.min(cfg.bulks_in_flight),
        };
        let (read_tx, read_rx) = mpsc::channel(cfg.read_queue);
        let shared = Arc::new(Shared {
            config_index: cfg.config_index(),
            state_index: cfg.state_index(),
            owed: std::sync::Mutex::new(std::collections::HashSet::new()),
            publish_failure_logged: AtomicU64::new(0),
            cfg,
            client,
            stats: Stats::default(),
            index_ready: AtomicBool::new(false),
            index_setup: Mutex::new(()),
            config_index_ready: AtomicBool::new(false),
            config_index_setup: Mutex::new(()),
            config_index_exists: AtomicBool::new(false),
            remote_config_fields: AtomicU8::new(FIELDS_UNKNOWN),
            fleet_fields: OnceLock::new(),
            outstanding: AtomicUsize::new(0),
            drained: Notify::new(),
        });
        tokio::spawn(writer::run(shared.clone(), write_rx, states));
        tokio::spawn(writer::run(shared.clone(), publish_rx, publishes));
        tokio::spawn(reader::run(shared.clone(), read_rx));
        tokio::spawn(set_up_early(Arc::downgrade(&shared)));
        Ok(Self { shared, writes: write_tx, publications: publish_tx, reads: read_tx })
    }

    /// [`new`](Self::new), then makes sure the index exists with opampd's mapping.
    pub async fn connect(cfg: EsConfig) -> Result<Self, StoreError> {
        let store = Self::new(cfg)?;
        store.shared.ensure_index_once().await?;
        info!(url = %store.shared.cfg.redacted_url(), index = %store.shared.cfg.index, "elasticsearch store ready");
        Ok(store)
    }

    /// The settings this store runs with.
    pub fn config(&self) -> &EsConfig {
        &self.shared.cfg
    }

    /// Request and item counters since this store was built.
    pub fn stats(&self) -> EsStats {
        let s = &self.shared.stats;
        EsStats {
            bulk_requests: s.bulk_requests.load(Ordering::Relaxed),
            bulk_items: s.bulk_items.load(Ordering::Relaxed),
            conflicts: s.conflicts.load(Ordering::Relaxed),
            mget_requests: s.mget_requests.load(Ordering::Relaxed),
            get_requests: s.get_requests.load(Ordering::Relaxed),
            shed: s.shed.load(Ordering::Relaxed),
            blocked: s.blocked.load(Ordering::Relaxed),
        }
    }

    /// The underlying client (tests and admin tools: e.g. to inspect the index).
    pub fn client(&self) -> &Elasticsearch {
        &self.shared.client
    }

    /// Queues a read of `uid` for the read batcher (`likely_new`: see `reader`).
    async fn read(
        &self,
        uid: InstanceUid,
        likely_new: bool,
    ) -> Result<Option<Versioned>, StoreError> {
        let (reply, answer) = oneshot::channel();
        match self.reads.try_send(reader::ReadOp { uid, likely_new, reply }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.stats.record_shed("get");
                return Err(StoreError::Overloaded);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(StoreError::Unavailable("store is shut down".into()));
            }
        }
        await_answer(answer, self.shared.cfg.request_timeout + self.shared.cfg.mget_max_wait).await
    }

    /// The `_bulk` entry of a state record (in the state index): a create for a new agent or
    /// one read from its agent document only ([`STATE_ABSENT`]), a CAS index otherwise. Built by
    /// the caller's task so serialization is spread over callers.
    fn state_entry(&self, id: &str, state: &str, precondition: Precondition) -> Bytes {
        let index = &*self.shared.state_index;
        let action = match precondition {
            Precondition::Absent | Precondition::Version(STATE_ABSENT) => {
                json!({ "create": { "_index": index, "_id": id } })
            }
            Precondition::Version(v) => json!({ "index": {
                "_index": index, "_id": id, "if_seq_no": v.seq_no, "if_primary_term": v.primary_term
            } }),
        };
        bulk_entry(&action, &document::state_source(state))
    }

    /// The `_bulk` entry of an agent document (in the agent index): written over whatever is
    /// there, unless that is a later publication (the record's check-in time is the document's
    /// external version, so two instances publishing one agent cannot leave the older view).
    fn agent_entry(&self, id: &str, record: &AgentRecord, state: &str) -> Bytes {
        let action = json!({ "index": {
            "_index": &self.shared.cfg.index, "_id": id,
            "version": record.last_checkin.min(i64::MAX as u64), "version_type": "external_gte"
        } });
        bulk_entry(&action, &document::to_source_with_state(record, state, now_ms()))
    }

    /// Queues the agent document of `record` (after its state record was written), without
    /// waiting for it: the agent's answer does not depend on what Kibana shows. A failure is
    /// counted and marks the agent, so its next write publishes again.
    fn publish(&self, id: Arc<str>, record: &AgentRecord, state: &str) {
        let entry = self.agent_entry(&id, record, state);
        self.shared.outstanding.fetch_add(1, Ordering::AcqRel);
        let op = writer::WriteOp {
            key: format!("agent/{id}").into(),
            id,
            uid: record.instance_uid,
            entry,
            reply: None,
            _ticket: Ticket(self.shared.clone()),
        };
        if let Err(err) = self.publications.try_send(op) {
            let full = matches!(err, mpsc::error::TrySendError::Full(_));
            if full {
                self.shared.stats.record_shed("publish");
            }
            self.shared.publish_failed(
                record.instance_uid,
                if full { "queue full" } else { "store shut down" },
            );
        }
    }
}

/// The version a read answers for an agent whose state record does not exist yet but whose
/// agent document does (written by an older opampd, or by fleet-server): its first write
/// creates the state record. Elasticsearch never hands out primary term 0.
pub(crate) const STATE_ABSENT: Version = Version { seq_no: 0, primary_term: 0 };

/// Most agents remembered as owed a publication (see [`Shared::owed`]).
const MAX_OWED: usize = 100_000;

/// How often at most a failed agent-document write is logged.
const PUBLISH_FAILURE_LOG_MS: u64 = 5_000;

/// An action line and its source as NDJSON.
fn bulk_entry(action: &Value, source: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(source.len() + 160);
    // Writing JSON into a BytesMut writer cannot fail.
    let _ = serde_json::to_writer((&mut buf).writer(), action);
    buf.put_u8(b'\n');
    buf.put_slice(source);
    buf.put_u8(b'\n');
    buf.freeze()
}

/// The body of a create-index request for a config index (settings and mapping): what opampd
/// sends when it creates one, and what an administrator sends to create one beforehand for
/// credentials that may not (fleet-server's service token may read and write a `.fleet-*`
/// index that is not a system index, once it exists).
pub fn config_index_body() -> Value {
    json!({ "settings": document::settings(None), "mappings": remote_configs::mappings() })
}

/// Sets the index up as soon as the store is built, so the instance is ready before its first
/// agent arrives (and `/readyz` says so), retrying with a growing pause until it works or the
/// store is dropped.
async fn set_up_early(shared: Weak<Shared>) {
    let mut pause = Duration::from_millis(100);
    loop {
        let Some(store) = shared.upgrade() else { return };
        match store.ensure_index_once().await {
            Ok(()) => return,
            Err(err) => warn!(
                index = %store.cfg.index, error = %err, retry_in = ?pause,
                "elasticsearch index not ready yet"
            ),
        }
        drop(store);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

impl Shared {
    /// Whether `uid` is owed a publication (and forgets it: the caller publishes now).
    fn take_owed(&self, uid: InstanceUid) -> bool {
        let mut owed = self.owed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        !owed.is_empty() && owed.remove(&uid)
    }

    /// Counts a failed agent-document write, logs it (at most every few seconds), and marks the
    /// agent so its next write publishes again.
    pub(crate) fn publish_failed(&self, uid: InstanceUid, why: &str) {
        metrics::counter!(m::ES_AGENT_DOCUMENT_WRITES_TOTAL, "outcome" => "failed").increment(1);
        {
            let mut owed = self.owed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if owed.len() < MAX_OWED {
                owed.insert(uid);
            }
        }
        let now = now_ms();
        let last = self.publish_failure_logged.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= PUBLISH_FAILURE_LOG_MS
            && self
                .publish_failure_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(
                index = %self.cfg.index, instance_uid = %uid, error = why,
                "agent document not written; the agent's next message publishes it again"
            );
        }
    }

    /// Creates the index with our mapping if missing; on an existing index adds our mapping
    /// where allowed; then, on every path (created here, created by another instance meanwhile,
    /// there already), waits for the index's primary shard to be active. Until then a read or
    /// write would fail on the shard. Errors are `Unavailable` (retry later) except a refusal
    /// from Elasticsearch that retrying cannot fix. An index whose mapping cannot be changed
    /// (the `.fleet-agents` system index) is used as it is.
    async fn ensure_index_once(&self) -> Result<(), StoreError> {
        if self.index_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let timeout = self.cfg.request_timeout;
        // Holding this across awaits is the point: one setup at a time. It is a tokio mutex
        // and guards no data.
        let _setup = tokio::time::timeout(timeout, self.index_setup.lock())
            .await
            .map_err(|_| StoreError::Unavailable("index setup timed out".into()))?;
        if self.index_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        tokio::time::timeout(timeout, self.setup_index())
            .await
            .map_err(|_| StoreError::Unavailable("index setup timed out".into()))??;
        self.index_ready.store(true, Ordering::Release);
        info!(index = %self.cfg.index, "elasticsearch index ready, primary shard active");
        Ok(())
    }

    async fn setup_index(&self) -> Result<(), StoreError> {
        let settings = document::settings(Some(self.cfg.refresh_interval));
        let set_up =
            self.set_up(&self.cfg.index, settings.clone(), document::mappings(), false).await?;
        if matches!(set_up, SetUp::Created | SetUp::MappingUpdated) {
            // the remote-config fields are in the mapping just sent
            self.remote_config_fields.store(FIELDS_MAPPED, Ordering::Release);
        }
        // lenient like the config index: fleet-server's token may create this `.fleet-policies-*`
        // index but not ask whether it exists
        let state =
            self.set_up(&self.state_index, settings, document::state_mappings(), true).await?;
        if matches!(state, SetUp::Opaque | SetUp::OnFirstWrite) {
            warn!(
                index = %self.state_index,
                "state index could not be created with opampd's mapping: the first write creates it \
                 with a dynamic one (indexing the state costs Elasticsearch more); create it \
                 beforehand with the body of `opampd es-index-body state`"
            );
        }
        Ok(())
    }

    /// Creates `index` with `settings` and `mappings` if missing, or adds `mappings` to it where
    /// allowed, then waits for its primary shards (see [`ensure_index_once`](Self::ensure_index_once)).
    /// With `lenient` (the config index), an index these credentials may not inspect is
    /// created all the same where they may (fleet-server's service token may create a
    /// `.fleet-policies-*` index but not ask whether one exists), see [`create`](Self::create).
    async fn set_up(
        &self,
        index: &str,
        settings: Value,
        mappings: Value,
        lenient: bool,
    ) -> Result<SetUp, StoreError> {
        let exists = self
            .client
            .indices()
            .exists(IndicesExistsParts::Index(&[index]))
            .send()
            .await
            .map_err(transport_error)?
            .status_code()
            .as_u16();
        match exists {
            404 => self.create(index, settings, mappings, lenient).await,
            403 if lenient => self.create(index, settings, mappings, true).await,
            200..=299 => {
                let response = self
                    .client
                    .indices()
                    .put_mapping(IndicesPutMappingParts::Index(&[index]))
                    .body(mappings)
                    .send()
                    .await
                    .map_err(transport_error)?;
                let status = response.status_code().as_u16();
                let set_up = if (200..300).contains(&status) {
                    SetUp::MappingUpdated
                } else {
                    let text = response.text().await.unwrap_or_default();
                    // System indices refuse mapping changes; their own mapping indexes the fleet
                    // fields already, and the state blob needs no mapping.
                    info!(index, status, reason = %error_reason(&text), "index mapping left unchanged");
                    SetUp::MappingUnchanged
                };
                self.wait_for_primary(index).await?;
                Ok(set_up)
            }
            // fleet-server's service token may read and write the restricted .fleet-* indices
            // but not inspect or create them: Elasticsearch creates such a system index from
            // its own descriptor on the first write. Use the index as it is.
            403 => {
                info!(index, "index not inspectable with these credentials; used as it is");
                Ok(SetUp::Opaque)
            }
            status => Err(status_error(status, "")),
        }
    }

    /// Creates `index` (or learns that it exists), then waits for its primary shards. With
    /// `lenient` (the config index), an index these credentials may not create, or a system
    /// index only a write may create, is no error: [`SetUp::Opaque`] or [`SetUp::OnFirstWrite`].
    async fn create(
        &self,
        index: &str,
        settings: Value,
        mappings: Value,
        lenient: bool,
    ) -> Result<SetUp, StoreError> {
        let wait = format!("{}ms", self.shard_wait().as_millis().max(1));
        let response = self
            .client
            .indices()
            .create(IndicesCreateParts::Index(index))
            .wait_for_active_shards("1")
            .timeout(&wait)
            .body(json!({ "settings": settings, "mappings": mappings }))
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status_code().as_u16();
        let text = response.text().await.unwrap_or_default();
        let set_up = if (200..300).contains(&status) {
            info!(index, "created elasticsearch index");
            SetUp::Created
        } else if text.contains("resource_already_exists_exception") {
            // Another instance created it, maybe just now: its shard may not be active yet.
            info!(index, "elasticsearch index created by another instance");
            SetUp::CreatedElsewhere
        } else if lenient && status == 400 && error_reason(&text).contains(SYSTEM_INDEX_REFUSAL) {
            // A name in a system index's pattern that is not its primary index (the config
            // index next to `.fleet-agents`): only a write would create it, from the system
            // index's descriptor.
            info!(index, "system index only a write could create");
            return Ok(SetUp::OnFirstWrite);
        } else if lenient && status == 403 {
            info!(index, "index not creatable with these credentials; used as it is");
            return Ok(SetUp::Opaque);
        } else {
            return Err(status_error(status, &text));
        };
        self.wait_for_primary(index).await?;
        Ok(set_up)
    }

    /// How long one set-up attempt may wait for the primary shards: within the request timeout
    /// the whole attempt is bounded by.
    fn shard_wait(&self) -> Duration {
        self.cfg.request_timeout / 2
    }

    /// Waits until every primary shard of the index is active. An index another instance just
    /// created exists for a while before it can serve a read or write
    /// (`no_shard_available_action_exception`), and its health is already yellow then: ES counts
    /// a new index's unassigned primaries as yellow, so `wait_for_status=yellow` does not wait.
    /// So ES waits for an active shard, and the answer's per-index shard counts decide.
    async fn wait_for_primary(&self, index: &str) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + self.shard_wait();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let timeout = format!("{}ms", left.as_millis().max(1));
            let response = self
                .client
                .cluster()
                .health(ClusterHealthParts::Index(&[index]))
                .level(Level::Indices)
                .wait_for_active_shards("1")
                .timeout(&timeout)
                .send()
                .await
                .map_err(transport_error)?;
            let status = response.status_code().as_u16();
            let text = response.text().await.unwrap_or_default();
            match primaries_active(index, status, &text) {
                Err(StoreError::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                    // more than one primary, not all active yet
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                done => return done,
            }
        }
    }
}

/// What [`Shared::set_up`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetUp {
    /// Created here, with our mapping.
    Created,
    /// There already when we tried to create it (its mapping is whoever created it's).
    CreatedElsewhere,
    /// There already; our mapping added.
    MappingUpdated,
    /// There already; its mapping cannot be changed (a system index).
    MappingUnchanged,
    /// Not inspectable with these credentials: used as it is.
    Opaque,
    /// A system index that only a write may create.
    OnFirstWrite,
}

/// What Elasticsearch says when asked to create a system index that is not its descriptor's
/// primary index ("Cannot create system index with name ...").
const SYSTEM_INDEX_REFUSAL: &str = "system index";

/// Values of [`Shared::remote_config_fields`].
const FIELDS_UNKNOWN: u8 = 0;
const FIELDS_MAPPED: u8 = 1;
const FIELDS_UNMAPPED: u8 = 2;

/// Reads a cluster health answer for `index` at `level=indices`: Ok when every index it
/// resolves to (an alias may name another) has all its primary shards active. ES answers 408,
/// with the health as far as it got, when its wait timed out.
fn primaries_active(index: &str, status: u16, body: &str) -> Result<(), StoreError> {
    if !matches!(status, 200 | 408) {
        return Err(status_error(status, body));
    }
    let health: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let indices = health.get("indices").and_then(Value::as_object);
    let (mut active, mut primaries) = (0, 0);
    for one in indices.into_iter().flat_map(|i| i.values()) {
        active += one.get("active_primary_shards").and_then(Value::as_u64).unwrap_or(0);
        primaries += one.get("number_of_shards").and_then(Value::as_u64).unwrap_or(u64::MAX / 4);
    }
    if primaries > 0 && active == primaries {
        return Ok(());
    }
    Err(StoreError::Unavailable(format!(
        "primary shards of index {index} not active yet ({active} of {primaries})"
    )))
}

#[async_trait]
impl AgentStore for ElasticsearchStore {
    async fn get(&self, uid: InstanceUid) -> Result<Option<Versioned>, StoreError> {
        self.read(uid, false).await
    }

    /// The agent document is asked in the same `_mget` as the state record (see `reader`).
    async fn get_likely_new(&self, uid: InstanceUid) -> Result<Option<Versioned>, StoreError> {
        self.read(uid, true).await
    }

    async fn put(
        &self,
        record: &AgentRecord,
        precondition: Precondition,
    ) -> Result<Version, StoreError> {
        let id: Arc<str> = record.instance_uid.to_string().into();
        let state = document::encoded_state(record);
        let entry = self.state_entry(&id, &state, precondition);
        let (reply, answer) = oneshot::channel();
        self.shared.outstanding.fetch_add(1, Ordering::AcqRel);
        let op = writer::WriteOp {
            key: id.clone(),
            id: id.clone(),
            uid: record.instance_uid,
            entry,
            reply: Some(reply),
            _ticket: Ticket(self.shared.clone()),
        };
        match self.writes.try_send(op) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.stats.record_shed("put");
                return Err(StoreError::Overloaded);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(StoreError::Unavailable("store is shut down".into()));
            }
        }
        let bound = self.shared.cfg.request_timeout + self.shared.cfg.bulk_max_wait;
        let version = await_answer(answer, bound).await?;
        // a new agent, or one whose state record was made from its agent document, is always
        // published: the agent index then shows every agent opampd knows
        let created =
            matches!(precondition, Precondition::Absent | Precondition::Version(STATE_ABSENT));
        if created || record.publishes() || self.shared.take_owed(record.instance_uid) {
            self.publish(id, record, &state);
        }
        Ok(version)
    }

    async fn ready(&self) -> Result<(), StoreError> {
        let timeout = self.shared.cfg.ready_timeout;
        let probe = async {
            let response = self
                .shared
                .client
                .cluster()
                .health(ClusterHealthParts::None)
                .request_timeout(timeout)
                .send()
                .await
                .map_err(transport_error)?;
            let health = json_body(response, "cluster health").await?;
            match health.get("status").and_then(Value::as_str) {
                Some("green" | "yellow") => Ok(()),
                other => Err(StoreError::Unavailable(format!(
                    "cluster health is {}",
                    other.unwrap_or("unknown")
                ))),
            }
        };
        tokio::time::timeout(timeout, probe)
            .await
            .map_err(|_| StoreError::Unavailable("cluster health timed out".into()))??;
        // A server started while ES was down sets the index up on its first ready probe.
        tokio::time::timeout(timeout, self.shared.ensure_index_once())
            .await
            .map_err(|_| StoreError::Unavailable("index setup timed out".into()))?
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let wait = async {
            loop {
                let drained = self.shared.drained.notified();
                tokio::pin!(drained);
                // Registered before the check, so a drain between the two is not missed.
                drained.as_mut().enable();
                if self.shared.outstanding.load(Ordering::Acquire) == 0 {
                    return;
                }
                drained.await;
            }
        };
        // Every accepted write is answered within its own timeout; a little slack for the batch.
        let bound = self.shared.cfg.request_timeout * 2
            + self.shared.cfg.bulk_max_wait.max(PUBLISH_MAX_WAIT);
        tokio::time::timeout(bound, wait)
            .await
            .map_err(|_| StoreError::Unavailable("flush timed out".into()))
    }

    /// A `_search` sorted on `agent.id`, paged with `search_after` (see `fleet`). Refreshes
    /// first so it sees recent writes; not for the hot path.
    async fn list(
        &self,
        filter: &AgentFilter,
        after: Option<InstanceUid>,
        limit: usize,
    ) -> Result<Vec<AgentRecord>, StoreError> {
        let timeout = self.shared.cfg.request_timeout * 2;
        tokio::time::timeout(timeout, self.list_inner(filter, after, limit))
            .await
            .map_err(|_| StoreError::Unavailable("list timed out".into()))?
    }

    /// One `size: 0` `_search` with aggregations (see `fleet`), after a refresh.
    async fn stats(&self, filter: &AgentFilter) -> Result<AgentStats, StoreError> {
        let timeout = self.shared.cfg.request_timeout * 2;
        tokio::time::timeout(timeout, self.stats_inner(filter))
            .await
            .map_err(|_| StoreError::Unavailable("agent counts timed out".into()))?
    }
}

impl fmt::Debug for ElasticsearchStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ElasticsearchStore")
            .field("url", &self.shared.cfg.redacted_url().as_str())
            .field("index", &self.shared.cfg.index)
            .finish_non_exhaustive()
    }
}

async fn await_answer<T>(
    answer: oneshot::Receiver<Result<T, StoreError>>,
    bound: Duration,
) -> Result<T, StoreError> {
    match tokio::time::timeout(bound, answer).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(StoreError::Unavailable("store stopped before answering".into())),
        Err(_) => Err(StoreError::Unavailable("elasticsearch did not answer in time".into())),
    }
}

/// A failed request (no HTTP answer) is always transient.
fn transport_error(err: elasticsearch::Error) -> StoreError {
    if err.is_timeout() {
        StoreError::Unavailable("elasticsearch request timed out".into())
    } else {
        // the causes say why (refused connection, "invalid peer certificate: UnknownIssuer", ...)
        let mut message = format!("elasticsearch unreachable: {err}");
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        StoreError::Unavailable(message)
    }
}

/// [`json_body`], or `None` for a 404 (the index, or the document, is not there).
async fn json_body_unless_missing(
    response: elasticsearch::http::response::Response,
    what: &str,
) -> Result<Option<Value>, StoreError> {
    if response.status_code().as_u16() == 404 {
        return Ok(None);
    }
    json_body(response, what).await.map(Some)
}

/// The JSON body of a 2xx answer; any other status is classified by [`status_error`].
async fn json_body(
    response: elasticsearch::http::response::Response,
    what: &str,
) -> Result<Value, StoreError> {
    let status = response.status_code().as_u16();
    if !(200..300).contains(&status) {
        let text = response.text().await.unwrap_or_default();
        return Err(status_error(status, &text));
    }
    response
        .json()
        .await
        .map_err(|e| StoreError::Unavailable(format!("unreadable {what} response: {e}")))
}

/// An HTTP error answer from Elasticsearch, classified once.
fn status_error(status: u16, body: &str) -> StoreError {
    let reason = error_reason(body);
    if reason.starts_with(BLOCKED) {
        return StoreError::Unavailable(format!("elasticsearch index blocked: {reason}"));
    }
    match status {
        409 => StoreError::Conflict,
        429 => StoreError::Overloaded,
        500..=599 => StoreError::Unavailable(format!("elasticsearch answered {status}: {reason}")),
        _ => StoreError::Backend(format!("elasticsearch answered {status}: {reason}")),
    }
}

/// The error type of a request refused by an index or cluster block: the flood-stage watermark's
/// `read_only_allow_delete` (429), an index made read-only (403), a cluster read-only block.
/// Writes succeed again once the block is removed, so it is `Unavailable`, never a fault.
pub(crate) const BLOCKED: &str = "cluster_block_exception";

/// `type: reason` of an ES error body, or a bounded prefix of whatever it is.
fn error_reason(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    match error {
        Some(Value::Object(e)) => format!(
            "{}: {}",
            e.get("type").and_then(Value::as_str).unwrap_or("unknown"),
            e.get("reason").and_then(Value::as_str).unwrap_or("")
        ),
        Some(Value::String(s)) => s.clone(),
        _ => body.chars().take(200).collect(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_are_classified_once() {
        assert_eq!(status_error(409, ""), StoreError::Conflict);
        assert_eq!(status_error(429, ""), StoreError::Overloaded);
        assert!(matches!(status_error(503, "x"), StoreError::Unavailable(_)));
        assert!(matches!(status_error(400, "{}"), StoreError::Backend(_)));
        let blocked = json!({"status": 403, "error": {"type": "cluster_block_exception",
            "reason": "index [i] blocked by: [FORBIDDEN/5/index read-only (api)];"}});
        let got = status_error(403, &blocked.to_string());
        assert!(
            matches!(&got, StoreError::Unavailable(why) if why.contains("read-only")),
            "{got:?}"
        );
        let body = r#"{"error":{"type":"illegal_argument_exception","reason":"bad"},"status":400}"#;
        assert_eq!(
            status_error(400, body),
            StoreError::Backend(
                "elasticsearch answered 400: illegal_argument_exception: bad".into()
            )
        );
    }

    #[test]
    fn the_index_is_ready_only_when_all_its_primaries_are_active() {
        // the health of a new index whose primary is not allocated yet is yellow, not red
        let health = |status: &str, shards: &[(u64, u64)]| {
            let indices: serde_json::Map<String, Value> = shards
                .iter()
                .enumerate()
                .map(|(i, (active, total))| {
                    let one = json!({"status": status, "number_of_shards": total,
                        "active_primary_shards": active});
                    (format!("i-{i}"), one)
                })
                .collect();
            json!({"status": status, "timed_out": false, "indices": indices}).to_string()
        };
        assert_eq!(primaries_active("i", 200, &health("green", &[(1, 1)])), Ok(()));
        assert_eq!(primaries_active("i", 200, &health("yellow", &[(2, 2), (1, 1)])), Ok(()));
        for (status, body) in [
            (200, health("yellow", &[(0, 1)])),
            (408, health("yellow", &[(0, 1)])),
            (408, health("red", &[(1, 2)])),
            (200, health("yellow", &[(1, 1), (0, 1)])),
            (408, health("red", &[])),
            (200, r#"{"indices":{"i":{"active_primary_shards":1}}}"#.to_owned()),
            (200, "not json".to_owned()),
        ] {
            let got = primaries_active("i", status, &body);
            assert!(
                matches!(&got, Err(StoreError::Unavailable(why)) if why.contains("index i")),
                "{status} {body}: {got:?}"
            );
        }
        assert!(matches!(primaries_active("i", 500, ""), Err(StoreError::Unavailable(_))));
        assert!(matches!(primaries_active("i", 401, ""), Err(StoreError::Backend(_))));
    }
}
