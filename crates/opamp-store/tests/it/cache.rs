//! The moka cache layer: the shared conformance suite through it, and what a cache must prove:
//! hits cost no backend read, absence is never cached, and a stale entry is caught by the CAS
//! and repaired.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use opamp_core::AgentRecord;
use opamp_proto::InstanceUid;
use opamp_store::cache::{CacheConfig, CacheStats, CachedStore};
use opamp_store::conformance::{full_record, minimal_record};
use opamp_store::embedded::EmbeddedStore;
use opamp_store::{
    AgentFilter, AgentStats, AgentStore, Precondition, StoreError, Version, Versioned,
};
use tempfile::TempDir;

/// One backend shared by several caches (as Elasticsearch is by several instances), counting
/// the reads that reach it.
#[derive(Debug, Clone)]
struct Backend {
    store: Arc<EmbeddedStore>,
    gets: Arc<AtomicU64>,
}

impl Backend {
    fn gets(&self) -> u64 {
        self.gets.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl AgentStore for Backend {
    async fn get(&self, uid: InstanceUid) -> Result<Option<Versioned>, StoreError> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.store.get(uid).await
    }
    async fn put(
        &self,
        record: &AgentRecord,
        precondition: Precondition,
    ) -> Result<Version, StoreError> {
        self.store.put(record, precondition).await
    }
    async fn ready(&self) -> Result<(), StoreError> {
        self.store.ready().await
    }
    async fn flush(&self) -> Result<(), StoreError> {
        self.store.flush().await
    }
    async fn list(
        &self,
        filter: &AgentFilter,
        after: Option<InstanceUid>,
        limit: usize,
    ) -> Result<Vec<AgentRecord>, StoreError> {
        self.store.list(filter, after, limit).await
    }
    async fn stats(&self, filter: &AgentFilter) -> Result<AgentStats, StoreError> {
        self.store.stats(filter).await
    }
}

struct Fixture {
    backend: Backend,
    _dir: TempDir,
}

impl Fixture {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(dir.path()).await.expect("open store");
        Self { backend: Backend { store: Arc::new(store), gets: Arc::default() }, _dir: dir }
    }

    fn cache(&self, config: CacheConfig) -> CachedStore<Backend> {
        CachedStore::new(self.backend.clone(), config)
    }
}

struct CachedFixture {
    store: CachedStore<EmbeddedStore>,
    _dir: TempDir,
}

impl CachedFixture {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let inner = EmbeddedStore::open(dir.path()).await.expect("open store");
        Self { store: CachedStore::new(inner, CacheConfig::default()), _dir: dir }
    }
}

opamp_store::conformance_tests!(CachedFixture::new().await, |f| &f.store);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_suite_passes_with_two_caches_over_one_backend() {
    let f = Fixture::new().await;
    let (a, b) = (f.cache(CacheConfig::default()), f.cache(CacheConfig::default()));
    tokio::join!(opamp_store::conformance::run_all(&a), opamp_store::conformance::run_all(&b));
}

#[tokio::test]
async fn read_after_own_write_costs_no_backend_read() {
    let f = Fixture::new().await;
    let cache = f.cache(CacheConfig::default());
    let mut record = full_record(InstanceUid::new_v7());
    let v1 = cache.put(&record, Precondition::Absent).await.expect("create");
    assert_eq!(
        cache.get(record.instance_uid).await,
        Ok(Some(Versioned { record: record.clone(), version: v1 }))
    );

    record.sequence_num += 1;
    let v2 = cache.put(&record, Precondition::Version(v1)).await.expect("update");
    assert_eq!(cache.get(record.instance_uid).await, Ok(Some(Versioned { record, version: v2 })));
    assert_eq!(f.backend.gets(), 0);
    assert_eq!(cache.stats(), CacheStats { hits: 2, misses: 0 });
}

#[tokio::test]
async fn miss_reads_backend_once_then_hits() {
    let f = Fixture::new().await;
    let record = minimal_record(InstanceUid::new_v7());
    let version = f.backend.put(&record, Precondition::Absent).await.expect("create");
    let cache = f.cache(CacheConfig::default());
    for _ in 0..3 {
        assert_eq!(
            cache.get(record.instance_uid).await,
            Ok(Some(Versioned { record: record.clone(), version }))
        );
    }
    assert_eq!(f.backend.gets(), 1);
    assert_eq!(cache.stats(), CacheStats { hits: 2, misses: 1 });
}

#[tokio::test]
async fn unknown_agent_is_not_cached_so_another_instances_enrollment_is_seen() {
    let f = Fixture::new().await;
    let (a, b) = (f.cache(CacheConfig::default()), f.cache(CacheConfig::default()));
    let record = minimal_record(InstanceUid::new_v7());
    assert_eq!(a.get(record.instance_uid).await, Ok(None));
    let version = b.put(&record, Precondition::Absent).await.expect("create via b");
    assert_eq!(a.get(record.instance_uid).await, Ok(Some(Versioned { record, version })));
}

#[tokio::test]
async fn stale_entry_is_caught_by_cas_and_repaired_from_backend() {
    let f = Fixture::new().await;
    let (a, b) = (f.cache(CacheConfig::default()), f.cache(CacheConfig::default()));
    let record = minimal_record(InstanceUid::new_v7());
    let v1 = a.put(&record, Precondition::Absent).await.expect("create via a");

    // Another instance moves the agent on; a's entry is now stale.
    let Versioned { record: mut theirs, version } =
        b.get(record.instance_uid).await.expect("get").expect("exists");
    theirs.sequence_num = 1;
    let v2 = b.put(&theirs, Precondition::Version(version)).await.expect("update via b");

    let stale = a.get(record.instance_uid).await.expect("get").expect("cached");
    assert_eq!(stale.version, v1, "a still serves its cached version");
    let mut ours = stale.record.clone();
    ours.sequence_num = 99;
    assert_eq!(a.put(&ours, Precondition::Version(stale.version)).await, Err(StoreError::Conflict));

    let gets_before = f.backend.gets();
    assert_eq!(
        a.get(record.instance_uid).await,
        Ok(Some(Versioned { record: theirs, version: v2 }))
    );
    assert_eq!(
        f.backend.gets(),
        gets_before + 1,
        "the re-read after a conflict goes to the backend"
    );
    // And the repaired entry serves again.
    ours.sequence_num = 2;
    let v3 = a.put(&ours, Precondition::Version(v2)).await.expect("retry wins");
    assert_eq!(a.get(record.instance_uid).await, Ok(Some(Versioned { record: ours, version: v3 })));
}

#[tokio::test]
async fn fresh_read_bypasses_a_stale_entry_and_repairs_it() {
    let f = Fixture::new().await;
    let (a, b) = (f.cache(CacheConfig::default()), f.cache(CacheConfig::default()));
    let record = minimal_record(InstanceUid::new_v7());
    let v1 = a.put(&record, Precondition::Absent).await.expect("create via a");
    let mut theirs = record.clone();
    theirs.sequence_num = 1;
    let v2 = b.put(&theirs, Precondition::Version(v1)).await.expect("update via b");

    // `get` may serve a's stale entry (the CAS catches it on a write); `get_fresh` must not
    assert_eq!(a.get(record.instance_uid).await.unwrap().unwrap().version, v1);
    let gets_before = f.backend.gets();
    let fresh = Versioned { record: theirs, version: v2 };
    assert_eq!(a.get_fresh(record.instance_uid).await, Ok(Some(fresh.clone())));
    assert_eq!(f.backend.gets(), gets_before + 1, "a fresh read goes to the backend");
    assert_eq!(a.get(record.instance_uid).await, Ok(Some(fresh)), "and repairs the entry");
    assert_eq!(f.backend.gets(), gets_before + 1);
}

#[tokio::test]
async fn entry_expires_after_ttl() {
    let f = Fixture::new().await;
    let cache = f.cache(CacheConfig { ttl: Duration::from_millis(50), max_bytes: 1 << 20 });
    let record = minimal_record(InstanceUid::new_v7());
    cache.put(&record, Precondition::Absent).await.expect("create");
    // moka keeps its own clock, so this is real time, kept short.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(cache.get(record.instance_uid).await.expect("get").is_some());
    assert_eq!(f.backend.gets(), 1, "an expired entry is read again");
}

#[tokio::test]
async fn failed_write_leaves_no_entry_behind() {
    let f = Fixture::new().await;
    let cache = f.cache(CacheConfig::default());
    let record = minimal_record(InstanceUid::new_v7());
    let made_up = Version { seq_no: 7, primary_term: 1 };
    assert_eq!(cache.put(&record, Precondition::Version(made_up)).await, Err(StoreError::Conflict));
    assert_eq!(cache.get(record.instance_uid).await, Ok(None));
    assert_eq!(f.backend.gets(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_through_two_caches_lose_no_update() {
    let f = Fixture::new().await;
    let caches = [f.cache(CacheConfig::default()), f.cache(CacheConfig::default())];
    let uid = InstanceUid::new_v7();
    caches[0].put(&minimal_record(uid), Precondition::Absent).await.expect("create");

    // Each writer runs the server's loop (read, modify, CAS, on conflict re-read) through one of
    // two instances' caches, so stale entries are constantly hit and must be repaired.
    let writers = (0..8).map(|i| {
        let cache = &caches[i % 2];
        async move {
            for _ in 0..20 {
                loop {
                    let Versioned { mut record, version } =
                        cache.get(uid).await.expect("get").expect("exists");
                    record.sequence_num += 1;
                    match cache.put(&record, Precondition::Version(version)).await {
                        Ok(_) => break,
                        Err(StoreError::Conflict) => continue,
                        Err(e) => panic!("put failed: {e}"),
                    }
                }
            }
        }
    });
    futures::future::join_all(writers).await;
    let stored = f.backend.get(uid).await.expect("get").expect("exists");
    assert_eq!(stored.record.sequence_num, 160);
}
