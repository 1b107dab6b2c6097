//! The embedded (redb) store: the shared conformance suite, plus what only a local durable store
//! has to prove: restart durability, group commit and its bounded queue, unreadable bytes.

use std::time::Duration;

use futures::future::join_all;
use opamp_proto::InstanceUid;
use opamp_store::conformance::{SmallDisk, full_record, minimal_record};
use opamp_store::embedded::{EmbeddedConfig, EmbeddedStore};
use opamp_store::{AgentFilter, AgentStore, Precondition, StoreError, Version, Versioned};
use tempfile::TempDir;

struct Fixture {
    store: EmbeddedStore,
    _dir: TempDir,
}

impl Fixture {
    async fn new() -> Self {
        Self::with(EmbeddedConfig::default()).await
    }

    async fn with(config: EmbeddedConfig) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open_with(dir.path(), config).await.expect("open store");
        Self { store, _dir: dir }
    }
}

opamp_store::conformance_tests!(Fixture::new().await, |f| &f.store);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_suite_passes_on_one_shared_store() {
    let f = Fixture::new().await;
    opamp_store::conformance::run_all(&f.store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_close_and_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path()).await.expect("open");
    let mut record = full_record(InstanceUid::new_v7());
    let v1 = store.put(&record, Precondition::Absent).await.expect("create");
    record.sequence_num += 1;
    let v2 = store.put(&record, Precondition::Version(v1)).await.expect("update");
    let other = minimal_record(InstanceUid::new_v7());
    let other_version = store.put(&other, Precondition::Absent).await.expect("create other");
    store.close().await.expect("close");

    let store = EmbeddedStore::open(dir.path()).await.expect("reopen");
    assert_eq!(
        store.get(record.instance_uid).await,
        Ok(Some(Versioned { record: record.clone(), version: v2 }))
    );
    assert_eq!(
        store.get(other.instance_uid).await,
        Ok(Some(Versioned { record: other, version: other_version }))
    );
    // Versions carry on across the restart: the old one is still stale, the last one still current.
    assert_eq!(store.put(&record, Precondition::Version(v1)).await, Err(StoreError::Conflict));
    let v3 = store.put(&record, Precondition::Version(v2)).await.expect("update after reopen");
    assert!(v3 != v2 && v3 != v1);
    store.close().await.expect("close again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_writes_survive_drop_and_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path()).await.expect("open");
    let records: Vec<_> = (0..32).map(|_| minimal_record(InstanceUid::new_v7())).collect();
    let versions: Vec<Version> =
        join_all(records.iter().map(|r| store.put(r, Precondition::Absent)))
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .expect("creates");
    drop(store);

    // Dropping does not wait for the writer to let go of the file, so the reopen may briefly
    // find it still locked.
    let mut reopened = None;
    for _ in 0..200 {
        match EmbeddedStore::open(dir.path()).await {
            Ok(store) => {
                reopened = Some(store);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let store = reopened.expect("reopen after drop");
    for (record, version) in records.into_iter().zip(versions) {
        assert_eq!(store.get(record.instance_uid).await, Ok(Some(Versioned { record, version })));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn two_updates_of_one_agent_in_one_batch_apply_in_order() {
    let f = Fixture::new().await;
    let mut record = minimal_record(InstanceUid::new_v7());
    let v1 = f.store.put(&record, Precondition::Absent).await.expect("create");
    let commits_before = f.store.commits();

    // On a current-thread runtime both puts are queued before the writer runs: one batch.
    record.sequence_num = 1;
    let mut racer = record.clone();
    racer.sequence_num = 2;
    let (first, second) = tokio::join!(
        f.store.put(&record, Precondition::Version(v1)),
        f.store.put(&racer, Precondition::Version(v1)),
    );
    assert_eq!(f.store.commits(), commits_before + 1, "both puts in one commit");
    let v2 = first.expect("first update wins");
    assert_eq!(second, Err(StoreError::Conflict), "second sees the first's new version");
    assert_eq!(f.store.get(record.instance_uid).await, Ok(Some(Versioned { record, version: v2 })));
}

#[tokio::test(flavor = "current_thread")]
async fn create_and_update_in_one_batch_chain() {
    let f = Fixture::new().await;
    let created = minimal_record(InstanceUid::new_v7());
    let mut updated = created.clone();
    updated.sequence_num = 1;
    // The embedded store numbers a record's versions 1, 2, ... with a fixed term: the update is
    // made against the version the create in the same batch is about to produce.
    let (v1, v2) = tokio::join!(
        f.store.put(&created, Precondition::Absent),
        f.store.put(&updated, Precondition::Version(Version { seq_no: 1, primary_term: 1 })),
    );
    assert_eq!(f.store.commits(), 1);
    let (v1, v2) = (v1.expect("create"), v2.expect("update sees the create"));
    assert_ne!(v1, v2);
    assert_eq!(
        f.store.get(updated.instance_uid).await,
        Ok(Some(Versioned { record: updated, version: v2 }))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_commits() {
    let f = Fixture::new().await;
    let records: Vec<_> = (0..256).map(|_| minimal_record(InstanceUid::new_v7())).collect();
    let results = join_all(records.iter().map(|r| f.store.put(r, Precondition::Absent))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let commits = f.store.commits();
    assert!(commits < 64, "256 concurrent writes took {commits} commits: no group commit");
}

#[tokio::test(flavor = "current_thread")]
async fn full_queue_rejects_with_overloaded() {
    let f = Fixture::with(EmbeddedConfig { queue_capacity: 2, ..EmbeddedConfig::default() }).await;
    let records: Vec<_> = (0..20).map(|_| minimal_record(InstanceUid::new_v7())).collect();
    // All puts are offered before the writer task can run, so only `queue_capacity` fit.
    let results = join_all(records.iter().map(|r| f.store.put(r, Precondition::Absent))).await;

    let accepted = results.iter().filter(|r| r.is_ok()).count();
    let shed = results.iter().filter(|r| **r == Err(StoreError::Overloaded)).count();
    assert_eq!((accepted, shed), (2, 18), "{results:?}");
    assert!(StoreError::Overloaded.is_transient());
    for (record, result) in records.iter().zip(&results) {
        let stored = f.store.get(record.instance_uid).await.expect("get");
        assert_eq!(stored.is_some(), result.is_ok(), "a shed write must not be stored");
    }
    // Once the queue drains, writes are accepted again.
    f.store.put(&records[19], Precondition::Absent).await.ok();
    f.store.flush().await.expect("flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_stored_bytes_are_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path()).await.expect("open");
    let good = minimal_record(InstanceUid::new_v7());
    store.put(&good, Precondition::Absent).await.expect("create");
    store.close().await.expect("close");

    let short = InstanceUid::new_v7();
    let garbage = InstanceUid::new_v7();
    {
        // Damage the file behind the store's back, with the store's own table layout.
        let table: redb::TableDefinition<[u8; 16], &[u8]> = redb::TableDefinition::new("agents");
        let db = redb::Database::create(dir.path().join("agents.redb")).expect("raw open");
        let txn = db.begin_write().expect("begin");
        {
            let mut t = txn.open_table(table).expect("table");
            t.insert(short.as_bytes(), [1u8, 2, 3].as_slice()).expect("insert");
            t.insert(garbage.as_bytes(), [0u8, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff].as_slice())
                .expect("insert");
        }
        txn.commit().expect("commit");
    }

    let store = EmbeddedStore::open(dir.path()).await.expect("reopen");
    assert!(matches!(store.get(short).await, Err(StoreError::Corrupt(_))));
    assert!(matches!(store.get(garbage).await, Err(StoreError::Corrupt(_))));
    let all = AgentFilter::all(0, 1);
    assert!(matches!(store.list(&all, None, 10).await, Err(StoreError::Corrupt(_))));
    // the counts leave the unreadable records out rather than fail
    assert_eq!(store.stats(&all).await.map(|s| s.total), Ok(1));
    let mut overwrite = minimal_record(short);
    assert!(matches!(
        store.put(&overwrite, Precondition::Version(Version { seq_no: 1, primary_term: 1 })).await,
        Err(StoreError::Corrupt(_))
    ));
    overwrite.instance_uid = garbage;
    assert_eq!(store.put(&overwrite, Precondition::Absent).await, Err(StoreError::Conflict));
    // The healthy record next to them is unaffected.
    assert!(matches!(store.get(good.instance_uid).await, Ok(Some(_))));
    store.close().await.expect("close");
}

#[tokio::test]
async fn zero_queue_capacity_is_rejected() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = EmbeddedConfig { queue_capacity: 0, ..EmbeddedConfig::default() };
    assert!(matches!(
        EmbeddedStore::open_with(dir.path(), config).await,
        Err(StoreError::Backend(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_is_idempotent_and_store_is_ready() {
    let f = Fixture::new().await;
    f.store.flush().await.expect("flush on empty queue");
    f.store.flush().await.expect("flush again");
    assert_eq!(f.store.ready().await, Ok(()));
}

/// A record of roughly `pad` bytes, so a few writes need fresh pages of the file.
fn big_record(uid: InstanceUid, pad: usize) -> opamp_core::AgentRecord {
    use opamp_proto::v1;
    let mut record = full_record(uid);
    let mut description = record.agent_description.as_deref().cloned().unwrap_or_default();
    description.non_identifying_attributes.push(v1::KeyValue {
        key: "padding".into(),
        value: Some(v1::AnyValue {
            value: Some(v1::any_value::Value::StringValue(uid.to_string().repeat(pad / 36 + 1))),
        }),
    });
    record.agent_description = Some(std::sync::Arc::new(description));
    record
}

/// The disk fills up under the store: writes fail as `Unavailable` (the server answers 503 +
/// Retry-After, not 500) and apply nothing, what was acknowledged before reads back intact, and
/// writes resume by themselves once there is room again, without reopening the store by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_makes_writes_unavailable_corrupts_nothing_and_service_resumes_by_itself() {
    let Some(disk) = SmallDisk::mount("8m") else { return };
    let store = EmbeddedStore::open(disk.path()).await.expect("open on the small disk");

    // acknowledged before the disk fills
    let mut acked = Vec::new();
    for _ in 0..20 {
        let record = big_record(InstanceUid::new_v7(), 8 << 10);
        let version = store.put(&record, Precondition::Absent).await.expect("room on the disk");
        acked.push(Versioned { record, version });
    }

    let filler = disk.fill();
    let mut refused = Vec::new();
    let mut first_error = None;
    for _ in 0..200 {
        let record = big_record(InstanceUid::new_v7(), 64 << 10);
        match store.put(&record, Precondition::Absent).await {
            Ok(version) => acked.push(Versioned { record, version }),
            Err(err) => {
                assert!(err.is_transient(), "a full disk is retryable, not a fault: {err:?}");
                first_error.get_or_insert(err);
                refused.push(record);
                if refused.len() == 5 {
                    break;
                }
            }
        }
    }
    let first_error = first_error.expect("the full disk refused a write");
    assert!(
        matches!(&first_error, StoreError::Unavailable(why) if why.contains("disk full")),
        "the error names the cause: {first_error:?}"
    );

    // room again: writes resume by themselves
    std::fs::remove_file(&filler).expect("free the disk");
    let started = std::time::Instant::now();
    let probe = minimal_record(InstanceUid::new_v7());
    loop {
        match store.put(&probe, Precondition::Absent).await {
            Ok(_) => break,
            Err(err) if err.is_transient() => {
                assert!(started.elapsed() < Duration::from_secs(15), "no recovery: {err:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("after the disk freed up: {err:?}"),
        }
    }

    // nothing acknowledged is lost or damaged, nothing refused was applied, and the versions
    // carry on
    for stored in &acked {
        let uid = stored.record.instance_uid;
        assert_eq!(store.get(uid).await, Ok(Some(stored.clone())), "{uid}");
    }
    for record in &refused {
        assert_eq!(store.get(record.instance_uid).await, Ok(None), "a refused write applied");
        store.put(record, Precondition::Absent).await.expect("the retried write");
    }
    let last = acked.last().expect("acked");
    let mut next = last.record.clone();
    next.sequence_num += 1;
    store.put(&next, Precondition::Version(last.version)).await.expect("cas after recovery");
    store.close().await.expect("close");
    drop(disk);
}
