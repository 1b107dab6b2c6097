//! The single-node backend: agent records in a redb file on local disk, with the same
//! compare-and-swap semantics as Elasticsearch and group commit (one fsync per batch of writes,
//! not per message).
//!
//! Writes go through one bounded queue to one writer task, which applies a batch of CAS checks
//! in a single redb write transaction and commits it once. Reads are redb read transactions on
//! the blocking pool, so neither path blocks the async runtime on disk I/O. Not for sharing
//! between processes: redb locks the file for one writer.
//!
//! A failed disk write (a full disk above all) fails the batch as [`StoreError::Unavailable`]
//! and nothing of it is applied: redb commits all or nothing, and the last commit stays intact.
//! redb then refuses every operation until the database is reopened, so the writer takes it out
//! of service (reads and writes answer `Unavailable` at once) and reopens it (redb repairs the
//! file from its last commit), retrying until that works: service resumes by itself once the
//! disk has room again.
//!
//! Remote configs live in the same file ([`ConfigStore`]): a `configs` table by name, written
//! through the same writer (so the same full-disk rules hold), read in read transactions. Their
//! versions come from one counter for all configs, never reused, so a config deleted and created
//! again does not take a version its predecessor had (a stale writer cannot overwrite it).

use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use opamp_core::AgentRecord;
use opamp_core::remote_config::ConfigHash;
use opamp_proto::InstanceUid;
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::configs::{
    self, ConfigStore, MAX_CONFIGS, RolloutCounts, StoredConfig, VersionedConfig,
};
use crate::fleet::StatsCounter;
use crate::metrics as m;
use crate::{
    AgentFilter, AgentStats, AgentStore, Precondition, StoreError, Version, Versioned, codec,
};

/// uid bytes -> 8-byte big-endian `seq_no` followed by the [`codec`] encoding. Byte-array keys
/// sort like the canonical uuid strings, so listing order matches Elasticsearch's `_id` order.
const AGENTS: TableDefinition<'static, [u8; 16], &[u8]> = TableDefinition::new("agents");

/// Config name -> 8-byte big-endian `seq_no` followed by the config's JSON
/// ([`configs::to_json`]). Names sort by bytes, which for their ASCII alphabet is name order.
const CONFIGS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("configs");

/// Counters that outlive the rows they numbered.
const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");

/// The last `seq_no` given to a config write (create, replace or delete).
const CONFIG_SEQ_NO: &str = "config_seq_no";

/// The embedded store has a single writer forever, so the term never changes; only `seq_no`
/// moves. Fixed and non-zero so a made-up `Version::default()`-like value never matches.
const PRIMARY_TERM: u64 = 1;

/// File name inside the store directory.
const FILE_NAME: &str = "agents.redb";

/// How often the writer tries to reopen the database after a disk error, at first and at most.
const REOPEN_FIRST: Duration = Duration::from_millis(50);
const REOPEN_MAX: Duration = Duration::from_secs(2);

/// Tuning of [`EmbeddedStore`].
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// Writes waiting for the writer; beyond this `put` fails fast with
    /// [`StoreError::Overloaded`] rather than queueing without bound.
    pub queue_capacity: usize,
    /// Most writes applied in one transaction (one fsync).
    pub max_batch: usize,
    /// How long the writer lingers after the first queued write to gather more before
    /// committing. Small: it adds to every write's latency when the store is idle.
    pub max_batch_wait: Duration,
    /// redb page cache, in bytes.
    pub cache_size_bytes: usize,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 16_384,
            max_batch: 512,
            max_batch_wait: Duration::from_millis(2),
            cache_size_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Agent records in a redb file, see the [module docs](self).
#[derive(Debug)]
pub struct EmbeddedStore {
    db: Slot,
    queue: mpsc::Sender<Op>,
    writer: JoinHandle<()>,
    commits: Arc<AtomicU64>,
    path: PathBuf,
}

/// The open database, shared by the readers and the writer; empty while the writer reopens it
/// after a disk error. Held only to clone or swap the handle, never across an `.await`.
#[derive(Debug, Clone, Default)]
struct Slot(Arc<RwLock<Option<Arc<Database>>>>);

impl Slot {
    fn get(&self) -> Result<Arc<Database>, StoreError> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone().ok_or_else(reopening)
    }

    fn set(&self, db: Option<Arc<Database>>) -> Option<Arc<Database>> {
        std::mem::replace(&mut *self.0.write().unwrap_or_else(PoisonError::into_inner), db)
    }
}

/// What the writer needs to open the database again.
#[derive(Debug, Clone)]
struct Opener {
    path: PathBuf,
    cache_size: usize,
}

impl Opener {
    /// Opens (or creates) the file and its table. Blocking: run it on the blocking pool.
    fn open(&self) -> Result<Database, StoreError> {
        let path = &self.path;
        let db = Database::builder()
            .set_cache_size(self.cache_size)
            .create(path)
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        // Create the tables up front so readers never see "no such table".
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(AGENTS).map_err(storage)?;
        txn.open_table(CONFIGS).map_err(storage)?;
        txn.open_table(META).map_err(storage)?;
        txn.commit().map_err(storage)?;
        Ok(db)
    }
}

/// One queued write, answered only after the batch holding it is committed.
#[derive(Debug)]
enum Op {
    Put {
        uid: [u8; 16],
        bytes: Vec<u8>,
        precondition: Precondition,
        reply: oneshot::Sender<Result<Version, StoreError>>,
    },
    /// Answered once every write queued before it is committed.
    Flush {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    PutConfig {
        name: String,
        json: Vec<u8>,
        precondition: Precondition,
        reply: oneshot::Sender<Result<Version, StoreError>>,
    },
    DeleteConfig {
        name: String,
        version: Version,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

impl EmbeddedStore {
    /// Opens (or creates) the store in directory `dir` with default tuning.
    pub async fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(dir, EmbeddedConfig::default()).await
    }

    /// Opens (or creates) the store in directory `dir`. Must be called inside a tokio runtime:
    /// it starts the writer task.
    pub async fn open_with(
        dir: impl AsRef<Path>,
        config: EmbeddedConfig,
    ) -> Result<Self, StoreError> {
        if config.queue_capacity == 0 || config.max_batch == 0 {
            return Err(StoreError::Backend(
                "queue_capacity and max_batch must be positive".into(),
            ));
        }
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(FILE_NAME);
        let opener = Opener { path: path.clone(), cache_size: config.cache_size_bytes };
        let first = opener.clone();
        // Opening may repair a file after a crash: disk work, off the runtime.
        let opened = tokio::task::spawn_blocking(move || -> Result<Database, StoreError> {
            std::fs::create_dir_all(&dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
            first.open()
        })
        .await
        .map_err(|e| StoreError::Backend(format!("open task failed: {e}")))??;

        let db = Slot::default();
        db.set(Some(Arc::new(opened)));
        let (queue, rx) = mpsc::channel(config.queue_capacity);
        let commits = Arc::new(AtomicU64::new(0));
        let writer = tokio::spawn(writer_loop(db.clone(), opener, rx, config, commits.clone()));
        m::register_embedded();
        tracing::info!(path = %path.display(), "embedded store open");
        Ok(Self { db, queue, writer, commits, path })
    }

    /// Committed write transactions so far: with group commit, fewer than the writes.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Commits every queued write, stops the writer and releases the file, so the same directory
    /// can be opened again. Dropping the store also commits what is queued, but without waiting.
    pub async fn close(self) -> Result<(), StoreError> {
        let Self { db, queue, writer, path, .. } = self;
        drop(queue);
        writer.await.map_err(|e| StoreError::Backend(format!("writer task failed: {e}")))?;
        drop(db.set(None));
        tracing::info!(path = %path.display(), "embedded store closed");
        Ok(())
    }

    /// Runs a read of the agents table on the blocking pool: redb reads may touch the disk.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadOnlyTable<[u8; 16], &[u8]>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.read_txn(move |txn| f(&txn.open_table(AGENTS).map_err(storage)?)).await
    }

    /// Runs a read transaction on the blocking pool.
    async fn read_txn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.get()?;
        tokio::task::spawn_blocking(move || f(&db.begin_read().map_err(storage)?))
            .await
            .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
    }

    /// Queues a write for the writer; `Overloaded` when the queue is full.
    fn enqueue(&self, op: Op) -> Result<(), StoreError> {
        self.queue.try_send(op).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                metrics::counter!(m::STORE_OVERLOADED_TOTAL, "backend" => m::EMBEDDED).increment(1);
                StoreError::Overloaded
            }
            mpsc::error::TrySendError::Closed(_) => {
                StoreError::Unavailable("store writer stopped".into())
            }
        })
    }
}

/// redb's errors, classified once. A failed disk operation (a full disk above all), and redb's
/// refusal to go on after one until it is reopened, pass: `Unavailable`, and the writer reopens
/// the database. Anything else is a fault of the store.
fn storage(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Io(io) if disk_full(&io) => {
            StoreError::Unavailable(format!("disk full: {io}"))
        }
        redb::Error::Io(io) => StoreError::Unavailable(format!("disk i/o failed: {io}")),
        redb::Error::PreviousIo | redb::Error::DatabaseClosed => reopening(),
        other => StoreError::Backend(other.to_string()),
    }
}

/// No space left on the device, a quota, or a file size limit: the disk cannot take the write.
fn disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded | io::ErrorKind::FileTooLarge
    )
}

fn reopening() -> StoreError {
    StoreError::Unavailable("embedded store is reopening after a disk error".into())
}

/// Splits a stored value into its `seq_no` and record bytes.
fn split_value(value: &[u8]) -> Result<(u64, &[u8]), StoreError> {
    let (seq, rest) = value
        .split_first_chunk::<8>()
        .ok_or_else(|| StoreError::Corrupt(format!("stored value of {} bytes", value.len())))?;
    Ok((u64::from_be_bytes(*seq), rest))
}

fn join_value(seq_no: u64, record: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(8 + record.len());
    value.extend_from_slice(&seq_no.to_be_bytes());
    value.extend_from_slice(record);
    value
}

fn versioned(value: &[u8]) -> Result<Versioned, StoreError> {
    let (seq_no, bytes) = split_value(value)?;
    Ok(Versioned {
        record: codec::decode(bytes)?,
        version: Version { seq_no, primary_term: PRIMARY_TERM },
    })
}

#[async_trait]
impl AgentStore for EmbeddedStore {
    async fn get(&self, uid: InstanceUid) -> Result<Option<Versioned>, StoreError> {
        let key = *uid.as_bytes();
        self.read(move |table| match table.get(key).map_err(storage)? {
            Some(value) => versioned(value.value()).map(Some),
            None => Ok(None),
        })
        .await
    }

    async fn put(
        &self,
        record: &AgentRecord,
        precondition: Precondition,
    ) -> Result<Version, StoreError> {
        let (reply, answer) = oneshot::channel();
        let op = Op::Put {
            uid: *record.instance_uid.as_bytes(),
            bytes: codec::encode(record),
            precondition,
            reply,
        };
        self.enqueue(op)?;
        answer.await.map_err(|_| StoreError::Unavailable("store writer stopped".into()))?
    }

    async fn ready(&self) -> Result<(), StoreError> {
        if self.queue.is_closed() {
            return Err(StoreError::Unavailable("store writer stopped".into()));
        }
        self.read(|_| Ok(())).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        // Waits for queue space rather than failing: a flush (shutdown) must not be shed.
        self.queue
            .send(Op::Flush { reply })
            .await
            .map_err(|_| StoreError::Unavailable("store writer stopped".into()))?;
        answer.await.map_err(|_| StoreError::Unavailable("store writer stopped".into()))?
    }

    /// A scan in uid order from `after` that decodes one record at a time and keeps only the
    /// matches, stopping at `limit` of them.
    async fn list(
        &self,
        filter: &AgentFilter,
        after: Option<InstanceUid>,
        limit: usize,
    ) -> Result<Vec<AgentRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let lower = match after {
            Some(uid) => Bound::Excluded(*uid.as_bytes()),
            None => Bound::Unbounded,
        };
        let filter = filter.clone();
        self.read(move |table| {
            let mut records = Vec::with_capacity(limit.min(1024));
            for entry in table.range::<[u8; 16]>((lower, Bound::Unbounded)).map_err(storage)? {
                let (_, value) = entry.map_err(storage)?;
                let record = versioned(value.value())?.record;
                if filter.matches(&record) {
                    records.push(record);
                    if records.len() == limit {
                        break;
                    }
                }
            }
            Ok(records)
        })
        .await
    }

    /// One scan of every record, decoded one at a time; records that cannot be decoded are
    /// left out (and logged), as the rollout counts do.
    async fn stats(&self, filter: &AgentFilter) -> Result<AgentStats, StoreError> {
        let filter = filter.clone();
        self.read(move |table| {
            let mut counter = StatsCounter::default();
            let mut unreadable = 0u64;
            for entry in table.iter().map_err(storage)? {
                let (_, value) = entry.map_err(storage)?;
                let Ok(Versioned { record, .. }) = versioned(value.value()) else {
                    unreadable += 1;
                    continue;
                };
                if filter.matches(&record) {
                    counter.add(&record, &filter);
                }
            }
            if unreadable > 0 {
                tracing::warn!(unreadable, "agent counts left out records that are unreadable");
            }
            Ok(counter.finish())
        })
        .await
    }
}

#[async_trait]
impl ConfigStore for EmbeddedStore {
    async fn config_versions(&self) -> Result<Vec<(String, Version)>, StoreError> {
        self.read_txn(|txn| {
            let table = txn.open_table(CONFIGS).map_err(storage)?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(storage)? {
                let (name, value) = entry.map_err(storage)?;
                let (seq_no, _) = split_value(value.value())?;
                out.push((name.value().to_owned(), Version { seq_no, primary_term: PRIMARY_TERM }));
            }
            Ok(out)
        })
        .await
    }

    async fn get_config(&self, name: &str) -> Result<Option<VersionedConfig>, StoreError> {
        let name = name.to_owned();
        self.read_txn(move |txn| {
            let table = txn.open_table(CONFIGS).map_err(storage)?;
            let Some(value) = table.get(name.as_str()).map_err(storage)? else { return Ok(None) };
            let (seq_no, json) = split_value(value.value())?;
            let json: serde_json::Value = serde_json::from_slice(json)
                .map_err(|e| StoreError::Corrupt(format!("stored config {name}: {e}")))?;
            let stored = configs::from_json(&json)?;
            if stored.config.name() != name {
                return Err(StoreError::Corrupt(format!(
                    "stored config {name} holds config {}",
                    stored.config.name()
                )));
            }
            let version = Version { seq_no, primary_term: PRIMARY_TERM };
            Ok(Some(VersionedConfig { stored, version }))
        })
        .await
    }

    async fn put_config(
        &self,
        config: &StoredConfig,
        precondition: Precondition,
    ) -> Result<Version, StoreError> {
        config.check().map_err(StoreError::Backend)?;
        let json = serde_json::to_vec(&configs::to_json(config))
            .map_err(|e| StoreError::Backend(format!("cannot encode config: {e}")))?;
        let (reply, answer) = oneshot::channel();
        let name = config.config.name().to_owned();
        self.enqueue(Op::PutConfig { name, json, precondition, reply })?;
        answer.await.map_err(|_| StoreError::Unavailable("store writer stopped".into()))?
    }

    async fn delete_config(&self, name: &str, version: Version) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.enqueue(Op::DeleteConfig { name: name.to_owned(), version, reply })?;
        answer.await.map_err(|_| StoreError::Unavailable("store writer stopped".into()))?
    }

    /// One read transaction over every agent, each decoded and counted as it is read: memory
    /// stays bounded by the number of configs, whatever the fleet's size. An agent whose stored
    /// bytes cannot be decoded is left out of the counts (and logged), rather than hiding every
    /// config's rollout behind one bad record.
    async fn rollout_counts(
        &self,
        configs: &[(String, ConfigHash)],
    ) -> Result<Vec<RolloutCounts>, StoreError> {
        if configs.is_empty() {
            return Ok(Vec::new());
        }
        let configs = configs.to_vec();
        self.read(move |table| {
            let mut counts = vec![RolloutCounts::default(); configs.len()];
            let mut by_name: std::collections::HashMap<&str, Vec<usize>> = Default::default();
            for (i, (name, _)) in configs.iter().enumerate() {
                by_name.entry(name.as_str()).or_default().push(i);
            }
            let mut unreadable = 0u64;
            for entry in table.iter().map_err(storage)? {
                let (_, value) = entry.map_err(storage)?;
                let record = match split_value(value.value()).and_then(|(_, b)| codec::decode(b)) {
                    Ok(record) => record,
                    Err(_) => {
                        unreadable += 1;
                        continue;
                    }
                };
                let Some(desired) = record.desired_config.as_deref() else { continue };
                let Some(indices) = by_name.get(desired.name.as_str()) else { continue };
                for &i in indices {
                    counts[i].count(&configs[i].1, record.remote_config_status.as_deref());
                }
            }
            if unreadable > 0 {
                tracing::warn!(
                    unreadable,
                    "rollout counts left out agents whose records are unreadable"
                );
            }
            Ok(counts)
        })
        .await
    }
}

/// The one writer: gathers a batch, applies it in one transaction, commits once, answers each
/// caller; after a disk error, reopens the database before the next batch. Ends when every
/// sender is gone, after committing what was queued.
async fn writer_loop(
    db: Slot,
    opener: Opener,
    mut rx: mpsc::Receiver<Op>,
    config: EmbeddedConfig,
    commits: Arc<AtomicU64>,
) {
    let mut batch: Vec<Op> = Vec::with_capacity(config.max_batch);
    loop {
        let Some(first) = rx.recv().await else { break };
        batch.push(first);
        gather(&mut rx, &mut batch, &config).await;

        let ops = std::mem::take(&mut batch);
        let started = Instant::now();
        let outcome = match db.get() {
            // A commit is an fsync: blocking pool. The next batch queues up meanwhile.
            Ok(current) => tokio::task::spawn_blocking(move || commit_batch(&current, ops)).await,
            // not reached: only this task empties the slot, and refills it before going on
            Err(err) => Ok(refuse_all(ops, &err)),
        };
        let mut disk_failed = false;
        match outcome {
            Ok((answers, committed)) => {
                match committed {
                    Ok(size) => {
                        commits.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!(m::STORE_COMMITS_TOTAL, "backend" => m::EMBEDDED)
                            .increment(1);
                        metrics::histogram!(m::STORE_BATCH_SIZE, "backend" => m::EMBEDDED)
                            .record(size as f64);
                        metrics::histogram!(m::STORE_COMMIT_SECONDS, "backend" => m::EMBEDDED)
                            .record(started.elapsed().as_secs_f64());
                    }
                    Err(StoreError::Unavailable(_)) => disk_failed = true,
                    Err(_) => {}
                }
                for answer in answers {
                    answer.send();
                }
            }
            // The ops (and their reply senders) were lost with the panicked task: callers see
            // their reply channel closed and get Unavailable.
            Err(e) => tracing::error!(error = %e, "embedded store commit task failed"),
        }
        if disk_failed && !reopen(&db, &opener, &mut rx).await {
            break;
        }
        batch = Vec::with_capacity(config.max_batch);
    }
    tracing::debug!("embedded store writer stopped");
}

/// After a failed disk write redb refuses everything until the database is reopened: takes it
/// out of service (readers get `Unavailable` at once), waits for the readers still holding it,
/// and opens it again (redb repairs the file from its last commit), retrying with a growing
/// pause until that works. Writes arriving meanwhile are answered `Unavailable` at once rather
/// than queued. False when every store handle is gone before the database could be reopened.
async fn reopen(db: &Slot, opener: &Opener, rx: &mut mpsc::Receiver<Op>) -> bool {
    let mut old = db.set(None);
    let mut pause = REOPEN_FIRST;
    let mut attempts: u32 = 0;
    loop {
        // the file stays locked while any handle on the failed database lives
        if let Some(held) = old.take() {
            match Arc::try_unwrap(held) {
                Ok(closing) => {
                    let _ = tokio::task::spawn_blocking(move || drop(closing)).await;
                }
                Err(held) => old = Some(held),
            }
        }
        if old.is_none() {
            attempts += 1;
            let attempt = opener.clone();
            match tokio::task::spawn_blocking(move || attempt.open()).await {
                Ok(Ok(reopened)) => {
                    db.set(Some(Arc::new(reopened)));
                    let path = opener.path.display();
                    tracing::info!(
                        path = %path, attempts,
                        "embedded store reopened after a disk error"
                    );
                    return true;
                }
                Ok(Err(err)) if attempts == 1 || attempts.is_power_of_two() => {
                    let path = opener.path.display();
                    tracing::warn!(
                        path = %path, attempts, error = %err,
                        "embedded store cannot reopen yet"
                    );
                }
                Ok(Err(_)) => {}
                Err(e) => tracing::error!(error = %e, "embedded store reopen task failed"),
            }
        }
        let until = tokio::time::Instant::now() + pause;
        loop {
            tokio::select! {
                op = rx.recv() => match op {
                    Some(op) => refuse(op, &reopening()),
                    None => return false,
                },
                () = tokio::time::sleep_until(until) => break,
            }
        }
        pause = (pause * 2).min(REOPEN_MAX);
    }
}

/// Answers an op that cannot be applied now. A flush has nothing left to wait for: every write
/// before it was answered.
fn refuse(op: Op, err: &StoreError) {
    refused(op, err).send();
}

/// The answer to an op that is not applied because of `err`.
fn refused(op: Op, err: &StoreError) -> Answer {
    match op {
        Op::Put { reply, .. } | Op::PutConfig { reply, .. } => Answer::Put(reply, Err(err.clone())),
        Op::DeleteConfig { reply, .. } => Answer::Flush(reply, Err(err.clone())),
        Op::Flush { reply } => Answer::Flush(reply, Ok(())),
    }
}

fn refuse_all(ops: Vec<Op>, err: &StoreError) -> (Vec<Answer>, Result<usize, StoreError>) {
    let answers = ops.into_iter().map(|op| refused(op, err)).collect();
    (answers, Err(err.clone()))
}

/// Adds queued ops to `batch` until it is full or `max_batch_wait` has passed since it started.
async fn gather(rx: &mut mpsc::Receiver<Op>, batch: &mut Vec<Op>, config: &EmbeddedConfig) {
    let deadline = tokio::time::Instant::now() + config.max_batch_wait;
    while batch.len() < config.max_batch {
        // Take what is already queued without waiting first: under load the batch fills here.
        match rx.try_recv() {
            Ok(op) => {
                batch.push(op);
                continue;
            }
            Err(mpsc::error::TryRecvError::Disconnected) => return,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(op)) => batch.push(op),
            Ok(None) | Err(_) => return,
        }
    }
}

/// A reply to send once the batch's fate is known: a new version (agent and config writes), or
/// done (flushes, config deletes).
enum Answer {
    Put(oneshot::Sender<Result<Version, StoreError>>, Result<Version, StoreError>),
    Flush(oneshot::Sender<Result<(), StoreError>>, Result<(), StoreError>),
}

impl Answer {
    fn send(self) {
        // A caller that gave up (dropped its future) no longer wants the answer; the write
        // itself stands, as it would in Elasticsearch.
        match self {
            Self::Put(tx, r) => drop(tx.send(r)),
            Self::Flush(tx, r) => drop(tx.send(r)),
        }
    }

    /// The whole transaction failed: no write of the batch happened.
    fn fail(self, err: &StoreError) -> Self {
        match self {
            Self::Put(tx, _) => Self::Put(tx, Err(err.clone())),
            Self::Flush(tx, _) => Self::Flush(tx, Err(err.clone())),
        }
    }
}

/// Applies `ops` in order in one write transaction and commits it. Returns each op's answer and
/// the number of writes committed (or why nothing was). Ops for the same uid see each other's effect, as if run one by one.
fn commit_batch(db: &Database, ops: Vec<Op>) -> (Vec<Answer>, Result<usize, StoreError>) {
    let mut answers = Vec::with_capacity(ops.len());
    let mut writes = 0;
    let mut pending = ops.into_iter();
    let result = (|| -> Result<(), StoreError> {
        let mut txn = db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        {
            let mut table = txn.open_table(AGENTS).map_err(storage)?;
            let mut config_table = txn.open_table(CONFIGS).map_err(storage)?;
            let mut meta = txn.open_table(META).map_err(storage)?;
            for op in pending.by_ref() {
                match op {
                    Op::Put { uid, bytes, precondition, reply } => {
                        let current = table
                            .get(uid)
                            .map_err(storage)?
                            .map(|value| split_value(value.value()).map(|(seq, _)| seq));
                        let outcome = match (precondition, current) {
                            (_, Some(Err(corrupt))) => Err(corrupt),
                            (Precondition::Absent, None) => Ok(1),
                            (Precondition::Version(v), Some(Ok(seq)))
                                if v.primary_term == PRIMARY_TERM && v.seq_no == seq =>
                            {
                                Ok(seq + 1)
                            }
                            _ => Err(StoreError::Conflict),
                        };
                        let outcome = match outcome {
                            Ok(seq_no) => {
                                table
                                    .insert(uid, join_value(seq_no, &bytes).as_slice())
                                    .map_err(storage)?;
                                writes += 1;
                                Ok(Version { seq_no, primary_term: PRIMARY_TERM })
                            }
                            Err(e) => {
                                if e == StoreError::Conflict {
                                    metrics::counter!(m::STORE_CONFLICTS_TOTAL, "backend" => m::EMBEDDED)
                                        .increment(1);
                                }
                                Err(e)
                            }
                        };
                        answers.push(Answer::Put(reply, outcome));
                    }
                    Op::Flush { reply } => answers.push(Answer::Flush(reply, Ok(()))),
                    Op::PutConfig { name, json, precondition, reply } => {
                        let outcome =
                            put_config(&mut config_table, &mut meta, &name, &json, precondition)?;
                        writes += usize::from(outcome.is_ok());
                        answers.push(Answer::Put(reply, outcome));
                    }
                    Op::DeleteConfig { name, version, reply } => {
                        let outcome = delete_config(&mut config_table, &mut meta, &name, version)?;
                        writes += usize::from(outcome.is_ok());
                        answers.push(Answer::Flush(reply, outcome));
                    }
                }
            }
        }
        txn.commit().map_err(storage)
    })();
    match result {
        Ok(()) => (answers, Ok(writes)),
        Err(err) => {
            // redb commits all or nothing: the batch is lost, the last commit is intact
            tracing::error!(
                error = %err,
                batch = answers.len() + pending.len(),
                "embedded store commit failed, none of the batch's writes applied"
            );
            let (rest, _) = refuse_all(pending.collect(), &err);
            let failed = answers.into_iter().map(|a| a.fail(&err)).chain(rest).collect();
            (failed, Err(err))
        }
    }
}

type ConfigTable<'txn> = redb::Table<'txn, &'static str, &'static [u8]>;
type MetaTable<'txn> = redb::Table<'txn, &'static str, u64>;

/// The version a config is stored at now: `None` when absent. The outer error fails the whole
/// transaction (a disk error); the inner one only this op (unreadable bytes).
fn config_seq_no(
    table: &ConfigTable<'_>,
    name: &str,
) -> Result<Option<Result<u64, StoreError>>, StoreError> {
    Ok(table
        .get(name)
        .map_err(storage)?
        .map(|value| split_value(value.value()).map(|(seq, _)| seq)))
}

/// The next config `seq_no`, counted in the meta table so none is ever given twice.
fn next_config_seq_no(meta: &mut MetaTable<'_>) -> Result<u64, StoreError> {
    let last = meta.get(CONFIG_SEQ_NO).map_err(storage)?.map_or(0, |v| v.value());
    let next = last + 1;
    meta.insert(CONFIG_SEQ_NO, next).map_err(storage)?;
    Ok(next)
}

/// One config write inside the batch's transaction. Outer error: the transaction fails (disk);
/// inner: this write's answer.
fn put_config(
    table: &mut ConfigTable<'_>,
    meta: &mut MetaTable<'_>,
    name: &str,
    json: &[u8],
    precondition: Precondition,
) -> Result<Result<Version, StoreError>, StoreError> {
    match (precondition, config_seq_no(table, name)?) {
        (_, Some(Err(corrupt))) => return Ok(Err(corrupt)),
        (Precondition::Absent, None) => {
            if table.len().map_err(storage)? >= MAX_CONFIGS as u64 {
                return Ok(Err(configs::too_many()));
            }
        }
        (Precondition::Version(v), Some(Ok(seq)))
            if v.primary_term == PRIMARY_TERM && v.seq_no == seq => {}
        _ => return Ok(Err(StoreError::Conflict)),
    }
    let seq_no = next_config_seq_no(meta)?;
    table.insert(name, join_value(seq_no, json).as_slice()).map_err(storage)?;
    Ok(Ok(Version { seq_no, primary_term: PRIMARY_TERM }))
}

fn delete_config(
    table: &mut ConfigTable<'_>,
    meta: &mut MetaTable<'_>,
    name: &str,
    version: Version,
) -> Result<Result<(), StoreError>, StoreError> {
    match config_seq_no(table, name)? {
        Some(Ok(seq)) if version.primary_term == PRIMARY_TERM && version.seq_no == seq => {}
        Some(Err(corrupt)) => return Ok(Err(corrupt)),
        _ => return Ok(Err(StoreError::Conflict)),
    }
    table.remove(name).map_err(storage)?;
    // a delete is a write too: the version a re-created config gets is new
    next_config_seq_no(meta)?;
    Ok(Ok(()))
}
