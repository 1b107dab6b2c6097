//! The one behaviour suite every [`AgentStore`] backend (and layer) must pass, so the server can
//! rely on the same compare-and-swap guarantee whatever it runs on.
//!
//! Every case creates fresh uids (UUIDv7), never lists from the start and never deletes, so the
//! suite can run concurrently against one shared Elasticsearch index. Cases panic (assert) on a
//! violation: this module is test support, compiled only for tests and the `conformance` feature.
//!
//! Use either [`run_all`] on one store, or [`conformance_tests!`](crate::conformance_tests) to get
//! one `#[tokio::test]` per case.

use futures::future::join_all;
use opamp_core::{AgentRecord, AgentStatus};
use opamp_proto::InstanceUid;
use opamp_proto::v1;
use std::sync::Arc;

use crate::fleet::{AgentFilter, AgentStats, RemoteConfigCounts, StatusCounts};
use crate::{AgentStore, Precondition, StoreError, Version, Versioned};

/// Concurrent writers in the lost-update case.
const CONCURRENT_WRITERS: u64 = 8;
/// Increments each writer makes in the lost-update case.
const INCREMENTS_PER_WRITER: u64 = 10;
/// A CAS loop that needs more attempts than this is livelocked, not unlucky.
const MAX_CAS_ATTEMPTS: usize = 10_000;

/// Runs every case against `store`, one after the other.
pub async fn run_all<S: AgentStore>(store: &S) {
    get_of_unknown_uid_is_none(store).await;
    likely_new_reads_answer_as_plain_reads_do(store).await;
    create_then_get_returns_record_and_version(store).await;
    create_twice_conflicts(store).await;
    put_with_read_version_returns_new_version(store).await;
    put_with_stale_version_conflicts_and_keeps_record(store).await;
    put_with_version_on_missing_record_conflicts(store).await;
    full_record_round_trips_exactly(store).await;
    concurrent_cas_increments_lose_no_update(store).await;
    concurrent_creates_of_one_uid_have_one_winner(store).await;
    many_agents_written_concurrently_are_all_readable(store).await;
    list_paginates_in_uid_order(store).await;
    list_selects_by_status_service_version_and_text(store).await;
    stats_count_the_selected_agents_exactly(store).await;
    flush_then_get_sees_writes(store).await;
    ready_is_ok(store).await;
}

/// The test cluster's URL from `OPAMPD_TEST_ES_URL`, or `None` (with a loud line) when the
/// Elasticsearch tests must be skipped. With `CI=true` a missing cluster fails the test instead:
/// CI never skips silently. Every crate's Elasticsearch tests share this rule.
pub fn test_es_url() -> Option<url::Url> {
    match std::env::var("OPAMPD_TEST_ES_URL") {
        Ok(url) if !url.is_empty() => Some(url.parse().expect("OPAMPD_TEST_ES_URL is not a url")),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("OPAMPD_TEST_ES_URL must point at a running Elasticsearch; run scripts/test.sh")
        }
        _ => {
            eprintln!(
                "SKIPPING elasticsearch tests: OPAMPD_TEST_ES_URL is not set (scripts/test.sh sets it)"
            );
            None
        }
    }
}

/// A filesystem of its own, small enough to fill: a tmpfs of `size` (as `mount -o size=`
/// spells it, e.g. `4m`) on a fresh directory, unmounted and removed when dropped. For the
/// full-disk tests, which need a real filesystem that answers `ENOSPC` (no mock). Mounting needs
/// root (or `CAP_SYS_ADMIN`): without it [`SmallDisk::mount`] skips with a loud line, and with
/// `CI=true` it fails instead, as a missing Elasticsearch does.
#[derive(Debug)]
pub struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    pub fn mount(size: &str) -> Option<Self> {
        let path =
            std::env::temp_dir().join(format!("opampd-small-disk-{}", InstanceUid::new_v7()));
        std::fs::create_dir_all(&path).expect("create the mount point");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(&path)
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(Self { path }),
            other => {
                let _ = std::fs::remove_dir(&path);
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                    Err(e) => e.to_string(),
                };
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!("the full-disk tests must mount a {size} tmpfs (run as root): {why}");
                }
                eprintln!(
                    "SKIPPING full-disk test: cannot mount a {size} tmpfs (needs root): {why}"
                );
                None
            }
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Fills what is left with a file (written until the filesystem refuses); returns its path.
    pub fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).expect("create the filler");
        let chunk = vec![0xa5u8; 4096];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling the small disk: {e}"),
            }
        }
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let unmounted = std::process::Command::new("umount").arg(&self.path).status();
        if !unmounted.is_ok_and(|s| s.success()) {
            // still busy (a test failed with the store open): detach it, it goes when unused
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Generates one `#[tokio::test]` per conformance case, each on a fresh fixture. The caller's
/// crate needs `tokio` with the `macros` and `rt-multi-thread` features.
///
/// ```text
/// // The expression is evaluated inside each (async) test and must yield a store:
/// opamp_store::conformance_tests!(make_store().await);
/// // Or a fixture that owns more (a temp dir, a client), with how to reach its store:
/// opamp_store::conformance_tests!(Fixture::new().await, |f| &f.store);
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($fixture:expr) => {
        $crate::conformance_tests!($fixture, |store| &store);
    };
    ($fixture:expr, |$f:ident| $store:expr) => {
        $crate::conformance_tests!(@cases ($fixture, $f, $store);
            get_of_unknown_uid_is_none,
            likely_new_reads_answer_as_plain_reads_do,
            create_then_get_returns_record_and_version,
            create_twice_conflicts,
            put_with_read_version_returns_new_version,
            put_with_stale_version_conflicts_and_keeps_record,
            put_with_version_on_missing_record_conflicts,
            full_record_round_trips_exactly,
            concurrent_cas_increments_lose_no_update,
            concurrent_creates_of_one_uid_have_one_winner,
            many_agents_written_concurrently_are_all_readable,
            list_paginates_in_uid_order,
            list_selects_by_status_service_version_and_text,
            stats_count_the_selected_agents_exactly,
            flush_then_get_sees_writes,
            ready_is_ok,
        );
    };
    (@cases ($fixture:expr, $f:ident, $store:expr); $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let $f = $fixture;
                $crate::conformance::$case($store).await;
            }
        )*
    };
}

/// A record with only the fields every agent has.
pub fn minimal_record(uid: InstanceUid) -> AgentRecord {
    AgentRecord {
        capabilities: opamp_proto::agent_caps::REPORTS_STATUS,
        ..AgentRecord::new(uid, 1_700_000_000_000)
    }
}

fn kv(key: &str, value: v1::any_value::Value) -> v1::KeyValue {
    v1::KeyValue { key: key.to_owned(), value: Some(v1::AnyValue { value: Some(value) }) }
}

fn text(s: &str) -> v1::any_value::Value {
    v1::any_value::Value::StringValue(s.to_owned())
}

/// A record with every sub-message populated, nested maps and every `AnyValue` kind, so a
/// backend that drops or reshapes any field fails the round trip.
pub fn full_record(uid: InstanceUid) -> AgentRecord {
    use v1::any_value::Value;

    let health_child = v1::ComponentHealth {
        healthy: false,
        start_time_unix_nano: 11,
        last_error: "exporter queue full".to_owned(),
        status: "StatusRecoverableError".to_owned(),
        status_time_unix_nano: 12,
        component_health_map: Default::default(),
        attributes: vec![kv("pipeline", text("traces"))],
    };
    let component = v1::ComponentDetails {
        metadata: vec![kv("code.namespace", text("otlpreceiver"))],
        sub_component_map: [(
            "grpc".to_owned(),
            v1::ComponentDetails {
                metadata: vec![kv("port", Value::IntValue(4317))],
                ..Default::default()
            },
        )]
        .into(),
    };
    AgentRecord {
        instance_uid: uid,
        sequence_num: 42,
        capabilities: opamp_proto::agent_caps::NAMED.iter().fold(0, |acc, (bit, _)| acc | bit),
        status: AgentStatus::Degraded,
        enrolled_at: 1_700_000_000_123,
        last_checkin: 1_700_000_060_456,
        enrollment: Some(Arc::new(opamp_core::Enrollment {
            api_key_id: "enrollment-key-id".to_owned(),
            policy_id: "policy-ü".to_owned(),
            namespaces: vec!["default".to_owned(), "team-a".to_owned()],
        })),
        unenrolled: Some(opamp_core::Unenrolled {
            reason: opamp_core::UnenrollReason::Reenrolled,
            at: 1_700_000_060_999,
        }),
        adopted: false,
        agent_description: Some(Arc::new(v1::AgentDescription {
            identifying_attributes: vec![
                kv("service.name", text("otelcol-contrib")),
                kv("service.version", text("0.120.0")),
                kv("service.instance.id", text(&uid.to_string())),
            ],
            non_identifying_attributes: vec![
                kv("os.type", text("linux")),
                kv("host.name", text("host-ü-1")),
                kv("flag", Value::BoolValue(true)),
                kv("negative", Value::IntValue(-7)),
                kv("ratio", Value::DoubleValue(0.25)),
                kv("raw", Value::BytesValue(vec![0u8, 255, 1, 254].into())),
                kv(
                    "list",
                    Value::ArrayValue(v1::ArrayValue {
                        values: vec![
                            v1::AnyValue { value: Some(text("a")) },
                            v1::AnyValue { value: None },
                        ],
                    }),
                ),
                kv(
                    "nested",
                    Value::KvlistValue(v1::KeyValueList {
                        values: vec![kv("inner", Value::IntValue(1))],
                    }),
                ),
            ],
        })),
        health: Some(Arc::new(v1::ComponentHealth {
            healthy: true,
            start_time_unix_nano: 1_700_000_000_000_000_001,
            last_error: String::new(),
            status: "StatusOK".to_owned(),
            status_time_unix_nano: 1_700_000_060_000_000_002,
            component_health_map: [("pipeline:traces".to_owned(), health_child)].into(),
            attributes: vec![kv("k", text("v"))],
        })),
        effective_config: Some(Arc::new(v1::EffectiveConfig {
            config_map: Some(v1::AgentConfigMap {
                config_map: [
                    (
                        String::new(),
                        v1::AgentConfigFile {
                            // as the core keeps it: redacted JSON text
                            body: r#"{"exporters":{"otlp":{"headers":{"api-key":"REDACTED"}}},"receivers":{"otlp":{}}}"#.into(),
                            content_type: "text/yaml".to_owned(),
                            role: String::new(),
                        },
                    ),
                    (
                        "extra".to_owned(),
                        v1::AgentConfigFile {
                            body: vec![0u8, 159, 146, 150].into(),
                            content_type: "application/octet-stream".to_owned(),
                            role: "secondary".to_owned(),
                        },
                    ),
                ]
                .into(),
            }),
        })),
        remote_config_status: Some(Arc::new(v1::RemoteConfigStatus {
            last_remote_config_hash: vec![1u8, 2, 3].into(),
            status: v1::RemoteConfigStatuses::Failed as i32,
            error_message: "bad yaml".to_owned(),
        })),
        package_statuses: Some(Arc::new(v1::PackageStatuses {
            packages: [(
                "filebeat".to_owned(),
                v1::PackageStatus {
                    name: "filebeat".to_owned(),
                    agent_has_version: "8.17.0".to_owned(),
                    agent_has_hash: vec![9u8; 32].into(),
                    server_offered_version: "8.18.0".to_owned(),
                    server_offered_hash: vec![8u8; 32].into(),
                    status: v1::PackageStatusEnum::Downloading as i32,
                    error_message: String::new(),
                    download_details: Some(v1::PackageDownloadDetails {
                        download_percent: 37.5,
                        download_bytes_per_second: 1_048_576.0,
                    }),
                },
            )]
            .into(),
            server_provided_all_packages_hash: vec![7u8; 16].into(),
            error_message: "partial".to_owned(),
        })),
        custom_capabilities: Some(Arc::new(v1::CustomCapabilities {
            capabilities: vec!["io.opentelemetry.pprof".to_owned(), "com.example.x".to_owned()],
        })),
        available_components: Some(Arc::new(v1::AvailableComponents {
            components: [("receivers".to_owned(), component)].into(),
            hash: vec![5u8; 8].into(),
        })),
        connection_settings_status: Some(Arc::new(v1::ConnectionSettingsStatus {
            last_connection_settings_hash: vec![4u8; 4].into(),
            status: v1::ConnectionSettingsStatuses::Applied as i32,
            error_message: String::new(),
        })),
        desired_config: Some(Arc::new(opamp_core::remote_config::DesiredConfig {
            name: "collectors-ü".to_owned(),
            hash: [7u8; 32],
        })),
        offered_config: Some(opamp_core::remote_config::OfferedConfig {
            hash: [8u8; 32],
            at: 1_700_000_060_500,
        }),
        published_at: 1_700_000_050_000,
    }
}

async fn get_existing<S: AgentStore>(store: &S, uid: InstanceUid) -> Versioned {
    match store.get(uid).await {
        Ok(Some(v)) => v,
        other => panic!("expected agent {uid} to exist, got {other:?}"),
    }
}

async fn create<S: AgentStore>(store: &S, record: &AgentRecord) -> Version {
    store
        .put(record, Precondition::Absent)
        .await
        .unwrap_or_else(|e| panic!("create of {} failed: {e}", record.instance_uid))
}

/// Read, modify, compare-and-swap, retry on conflict: the loop the server runs per message.
async fn cas_update<S: AgentStore>(
    store: &S,
    uid: InstanceUid,
    modify: impl Fn(&mut AgentRecord),
) -> Version {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let Versioned { mut record, version } = get_existing(store, uid).await;
        modify(&mut record);
        match store.put(&record, Precondition::Version(version)).await {
            Ok(v) => return v,
            Err(StoreError::Conflict) => continue,
            // Backpressure is a legitimate answer under a burst; yield and try again.
            Err(e) if e.is_transient() => {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                continue;
            }
            Err(e) => panic!("cas update of {uid} failed: {e}"),
        }
    }
    panic!("cas update of {uid} did not succeed in {MAX_CAS_ATTEMPTS} attempts");
}

/// The uid just below `uid` in byte order, so a listing can start right before it.
fn predecessor(uid: InstanceUid) -> Option<InstanceUid> {
    let n = u128::from_be_bytes(*uid.as_bytes());
    n.checked_sub(1).map(|p| InstanceUid::from_bytes(p.to_be_bytes()))
}

pub async fn get_of_unknown_uid_is_none<S: AgentStore>(store: &S) {
    let got = store.get(InstanceUid::new_v7()).await;
    assert_eq!(got, Ok(None));
}

/// `get_likely_new` is a hint about how to read, never a different answer: for an unknown
/// agent, a new one, and one written since.
pub async fn likely_new_reads_answer_as_plain_reads_do<S: AgentStore>(store: &S) {
    let record = minimal_record(InstanceUid::new_v7());
    assert_eq!(store.get_likely_new(record.instance_uid).await, Ok(None));
    let version = create(store, &record).await;
    let got = store.get_likely_new(record.instance_uid).await;
    assert_eq!(got, Ok(Some(Versioned { record: record.clone(), version })));
    let mut next = record.clone();
    next.sequence_num += 1;
    let version = store.put(&next, Precondition::Version(version)).await.expect("update");
    assert_eq!(store.get_likely_new(next.instance_uid).await, store.get(next.instance_uid).await);
    assert_eq!(
        store.get_likely_new(next.instance_uid).await,
        Ok(Some(Versioned { record: next, version }))
    );
}

pub async fn create_then_get_returns_record_and_version<S: AgentStore>(store: &S) {
    let record = minimal_record(InstanceUid::new_v7());
    let version = create(store, &record).await;
    let got = get_existing(store, record.instance_uid).await;
    assert_eq!(got, Versioned { record, version });
}

pub async fn create_twice_conflicts<S: AgentStore>(store: &S) {
    let record = minimal_record(InstanceUid::new_v7());
    let version = create(store, &record).await;
    let mut second = record.clone();
    second.sequence_num = 99;
    assert_eq!(store.put(&second, Precondition::Absent).await, Err(StoreError::Conflict));
    let got = get_existing(store, record.instance_uid).await;
    assert_eq!(got, Versioned { record, version }, "a failed create must not overwrite");
}

pub async fn put_with_read_version_returns_new_version<S: AgentStore>(store: &S) {
    let mut record = minimal_record(InstanceUid::new_v7());
    let created = create(store, &record).await;
    let read = get_existing(store, record.instance_uid).await;
    assert_eq!(read.version, created);

    record.sequence_num = 1;
    let updated = store.put(&record, Precondition::Version(read.version)).await.expect("cas put");
    assert_ne!(updated, created, "a write must produce a new version");
    assert_eq!(
        get_existing(store, record.instance_uid).await,
        Versioned { record: record.clone(), version: updated }
    );

    record.sequence_num = 2;
    let again = store.put(&record, Precondition::Version(updated)).await.expect("second cas put");
    assert_ne!(again, updated);
    assert_ne!(again, created);
}

pub async fn put_with_stale_version_conflicts_and_keeps_record<S: AgentStore>(store: &S) {
    let mut record = minimal_record(InstanceUid::new_v7());
    let stale = create(store, &record).await;
    record.sequence_num = 1;
    let fresh = store.put(&record, Precondition::Version(stale)).await.expect("cas put");

    let mut loser = record.clone();
    loser.sequence_num = 1000;
    loser.status = AgentStatus::Error;
    assert_eq!(store.put(&loser, Precondition::Version(stale)).await, Err(StoreError::Conflict));
    assert_eq!(
        get_existing(store, record.instance_uid).await,
        Versioned { record, version: fresh },
        "a conflicting write must leave the stored record unchanged"
    );
}

pub async fn put_with_version_on_missing_record_conflicts<S: AgentStore>(store: &S) {
    let record = minimal_record(InstanceUid::new_v7());
    let made_up = Version { seq_no: 0, primary_term: 1 };
    assert_eq!(store.put(&record, Precondition::Version(made_up)).await, Err(StoreError::Conflict));
    assert_eq!(store.get(record.instance_uid).await, Ok(None), "a failed update must not create");
}

pub async fn full_record_round_trips_exactly<S: AgentStore>(store: &S) {
    let record = full_record(InstanceUid::new_v7());
    let version = create(store, &record).await;
    assert_eq!(
        get_existing(store, record.instance_uid).await,
        Versioned { record: record.clone(), version }
    );

    // Also through an update, and back to absent sub-messages (a backend must not keep stale ones).
    let mut sparse = minimal_record(record.instance_uid);
    sparse.sequence_num = 43;
    let v2 = store.put(&sparse, Precondition::Version(version)).await.expect("cas put");
    assert_eq!(
        get_existing(store, record.instance_uid).await,
        Versioned { record: sparse, version: v2 }
    );
}

pub async fn concurrent_cas_increments_lose_no_update<S: AgentStore>(store: &S) {
    let uid = InstanceUid::new_v7();
    create(store, &minimal_record(uid)).await;
    let writers = (0..CONCURRENT_WRITERS).map(|_| async {
        for _ in 0..INCREMENTS_PER_WRITER {
            cas_update(store, uid, |r| r.sequence_num += 1).await;
        }
    });
    join_all(writers).await;
    let got = get_existing(store, uid).await;
    assert_eq!(got.record.sequence_num, CONCURRENT_WRITERS * INCREMENTS_PER_WRITER, "lost update");
}

pub async fn concurrent_creates_of_one_uid_have_one_winner<S: AgentStore>(store: &S) {
    let uid = InstanceUid::new_v7();
    let candidates: Vec<AgentRecord> = (0..8u64)
        .map(|i| {
            let mut r = minimal_record(uid);
            r.sequence_num = i;
            r
        })
        .collect();
    let results = join_all(candidates.iter().map(|r| store.put(r, Precondition::Absent))).await;

    let winners: Vec<(usize, Version)> =
        results.iter().enumerate().filter_map(|(i, r)| r.as_ref().ok().map(|v| (i, *v))).collect();
    assert_eq!(winners.len(), 1, "exactly one create must win: {results:?}");
    for r in &results {
        assert!(
            matches!(r, Ok(_) | Err(StoreError::Conflict)),
            "losers must see a conflict: {r:?}"
        );
    }
    let (winner, version) = winners[0];
    assert_eq!(
        get_existing(store, uid).await,
        Versioned { record: candidates[winner].clone(), version }
    );
}

pub async fn many_agents_written_concurrently_are_all_readable<S: AgentStore>(store: &S) {
    let records: Vec<AgentRecord> = (0..64u64)
        .map(|i| {
            let mut r = minimal_record(InstanceUid::new_v7());
            r.sequence_num = i;
            r
        })
        .collect();
    let versions = join_all(records.iter().map(|r| create(store, r))).await;
    let reads = join_all(records.iter().map(|r| get_existing(store, r.instance_uid))).await;
    for ((record, version), read) in records.into_iter().zip(versions).zip(reads) {
        assert_eq!(read, Versioned { record, version });
    }
}

pub async fn list_paginates_in_uid_order<S: AgentStore>(store: &S) {
    let mut ours: Vec<InstanceUid> = (0..7).map(|_| InstanceUid::new_v7()).collect();
    for uid in &ours {
        create(store, &minimal_record(*uid)).await;
    }
    store.flush().await.expect("flush");
    ours.sort();
    let (first, last) = (ours[0], ours[ours.len() - 1]);

    // Other tests may write into the same keyspace concurrently, so check order and paging, and
    // that ours come back in order, without assuming ours are the only records in range.
    const PAGE: usize = 3;
    let mut after = predecessor(first);
    let mut seen = Vec::new();
    loop {
        let page = store.list(&everything(), after, PAGE).await.expect("list");
        assert!(page.len() <= PAGE, "page larger than the limit: {}", page.len());
        for pair in page.windows(2) {
            assert!(pair[0].instance_uid < pair[1].instance_uid, "page not in uid order");
        }
        if let (Some(a), Some(r)) = (after, page.first()) {
            assert!(r.instance_uid > a, "list returned a uid not after the cursor");
        }
        seen.extend(page.iter().map(|r| r.instance_uid).filter(|u| ours.binary_search(u).is_ok()));
        match page.last() {
            Some(r) if page.len() == PAGE && r.instance_uid < last => after = Some(r.instance_uid),
            _ => break,
        }
    }
    assert_eq!(seen, ours, "paging must return every record once, in uid order");

    let after_last = store.list(&everything(), Some(last), PAGE).await.expect("list");
    assert!(after_last.iter().all(|r| r.instance_uid > last));
    let none = store.list(&everything(), predecessor(first), 0).await;
    assert_eq!(none, Ok(vec![]), "limit 0 returns nothing");
}

/// The clock the fleet cases read status at, and their offline threshold.
const FLEET_NOW: u64 = 1_800_000_000_000;
const FLEET_OFFLINE_AFTER: u64 = 60_000;

fn everything() -> AgentFilter {
    AgentFilter::all(FLEET_NOW, FLEET_OFFLINE_AFTER)
}

/// An agent of `service` with the attributes the fleet filters read.
fn fleet_agent(
    service: &str,
    status: AgentStatus,
    last_checkin: u64,
    version: Option<&str>,
    host: Option<&str>,
) -> AgentRecord {
    let mut r = minimal_record(InstanceUid::new_v7());
    r.status = status;
    r.last_checkin = last_checkin;
    let mut identifying = vec![kv("service.name", text(service))];
    identifying.extend(version.map(|v| kv("service.version", text(v))));
    r.agent_description = Some(Arc::new(v1::AgentDescription {
        identifying_attributes: identifying,
        non_identifying_attributes: host.map(|h| kv("host.name", text(h))).into_iter().collect(),
    }));
    r
}

/// Nine agents of a service of their own, in every status (offline ones stored online and
/// degraded, one at exactly the threshold), three versions and one without, host names in mixed
/// case (one made of wildcard syntax), every remote-config state; and one agent of another
/// service. Returns the service's name and the agents, in the order the expectations index.
async fn create_fleet<S: AgentStore>(store: &S) -> (String, Vec<AgentRecord>) {
    use AgentStatus::{Degraded, Disconnected, Error, Online};
    use v1::RemoteConfigStatuses::{Applied, Applying, Failed};
    let service = format!("conformance-{}", InstanceUid::new_v7());
    let recent = FLEET_NOW - 1_000;
    let stale = FLEET_NOW - FLEET_OFFLINE_AFTER - 1;
    let edge = FLEET_NOW - FLEET_OFFLINE_AFTER;
    let s = service.as_str();
    let mut agents = vec![
        fleet_agent(s, Online, recent, Some("v1"), Some("Web-01.example")),
        fleet_agent(s, Degraded, recent, Some("v1"), Some("web-02.example")),
        fleet_agent(s, Error, recent, Some("v2"), Some("db-01")),
        fleet_agent(s, Disconnected, recent, Some("v2"), None),
        fleet_agent(s, Disconnected, 0, Some("v1"), Some("db-02")),
        fleet_agent(s, Online, stale, Some("v2"), Some("Web-03")),
        fleet_agent(s, Degraded, stale, Some("v1"), Some(r"a*b?c\d")),
        fleet_agent(s, Error, edge, Some("v3"), Some("db-03")),
        fleet_agent(s, Online, recent, None, Some("WEB-04")),
    ];
    let hash = [3u8; 32];
    let desired = Some(Arc::new(DesiredConfig { name: config_name("fleet"), hash }));
    let report = |status: v1::RemoteConfigStatuses| {
        Some(Arc::new(v1::RemoteConfigStatus {
            last_remote_config_hash: hash.to_vec().into(),
            status: status as i32,
            error_message: String::new(),
        }))
    };
    for (i, status) in [(0, Some(Applied)), (1, Some(Applying)), (2, Some(Failed)), (3, None)] {
        agents[i].desired_config.clone_from(&desired);
        agents[i].remote_config_status = status.and_then(report);
    }
    let other = fleet_agent(&format!("{s}-other"), Online, recent, Some("v1"), Some("web-09"));
    join_all(agents.iter().chain([&other]).map(|r| create(store, r))).await;
    // a store may show its listing a moment after the writes (Elasticsearch publishes agent
    // documents after their state records): flush is the barrier
    store.flush().await.expect("flush");
    (service, agents)
}

/// Every page of what `filter` selects, `page` at a time, checking order and page sizes.
async fn list_all<S: AgentStore>(store: &S, filter: &AgentFilter, page: usize) -> Vec<InstanceUid> {
    let mut seen: Vec<InstanceUid> = Vec::new();
    let mut after = None;
    for _ in 0..100 {
        let got = store.list(filter, after, page).await.expect("list");
        assert!(got.len() <= page, "page larger than the limit: {}", got.len());
        seen.extend(got.iter().map(|r| r.instance_uid));
        if got.len() < page {
            assert!(seen.windows(2).all(|w| w[0] < w[1]), "not in uid order: {seen:?}");
            return seen;
        }
        after = got.last().map(|r| r.instance_uid);
    }
    panic!("listing {filter:?} did not end");
}

pub async fn list_selects_by_status_service_version_and_text<S: AgentStore>(store: &S) {
    use AgentStatus::{Degraded, Disconnected, Error, Offline, Online};
    let (service, agents) = create_fleet(store).await;
    let of_service = AgentFilter { service_name: Some(service.clone()), ..everything() };
    let uid3 = agents[2].instance_uid.to_string();
    let uid_tail = uid3[uid3.len() - 12..].to_uppercase();
    let cases: Vec<(AgentFilter, Vec<usize>)> = vec![
        (of_service.clone(), (0..9).collect()),
        (AgentFilter { status: Some(Online), ..of_service.clone() }, vec![0, 8]),
        (AgentFilter { status: Some(Degraded), ..of_service.clone() }, vec![1]),
        (AgentFilter { status: Some(Error), ..of_service.clone() }, vec![2, 7]),
        (AgentFilter { status: Some(Disconnected), ..of_service.clone() }, vec![3, 4]),
        (AgentFilter { status: Some(Offline), ..of_service.clone() }, vec![5, 6]),
        (AgentFilter { version: Some("v1".into()), ..of_service.clone() }, vec![0, 1, 4, 6]),
        (
            AgentFilter { version: Some("v1".into()), status: Some(Offline), ..of_service.clone() },
            vec![6],
        ),
        (AgentFilter { version: Some("v9".into()), ..of_service.clone() }, vec![]),
        (AgentFilter { text: Some("WEB-0".into()), ..of_service.clone() }, vec![0, 1, 5, 8]),
        (AgentFilter { text: Some(r"*b?c\".into()), ..of_service.clone() }, vec![6]),
        (AgentFilter { text: Some("?".into()), ..of_service.clone() }, vec![6]),
        (AgentFilter { text: Some(uid_tail), ..of_service.clone() }, vec![2]),
        (
            AgentFilter {
                text: Some("EXAMPLE".into()),
                status: Some(Degraded),
                ..of_service.clone()
            },
            vec![1],
        ),
        (AgentFilter { service_name: Some(format!("{service}-")), ..everything() }, vec![]),
    ];
    for (filter, expected) in cases {
        let mut expected: Vec<InstanceUid> =
            expected.iter().map(|&i| agents[i].instance_uid).collect();
        expected.sort();
        // pages of 2 cross agents the filter skips; a page of 1 ends on each match
        for page in [2, 1, 1000] {
            assert_eq!(list_all(store, &filter, page).await, expected, "{filter:?} by {page}");
        }
    }
    // what is listed is the record, whole
    let listed = store.list(&of_service, None, 1).await.expect("list");
    let first = agents.iter().min_by_key(|r| r.instance_uid).expect("agents");
    assert_eq!(listed, std::slice::from_ref(first));
}

pub async fn stats_count_the_selected_agents_exactly<S: AgentStore>(store: &S) {
    let (service, _) = create_fleet(store).await;
    let of_service = AgentFilter { service_name: Some(service.clone()), ..everything() };
    let expected = AgentStats {
        total: 9,
        by_status: StatusCounts { online: 2, degraded: 1, error: 2, disconnected: 2, offline: 2 },
        by_service: vec![(service.clone(), 9)],
        by_version: vec![("v1".into(), 4), ("v2".into(), 3), ("v3".into(), 1)],
        by_remote_config: RemoteConfigCounts {
            applied: 1,
            applying: 1,
            failed: 1,
            pending: 1,
            none: 5,
        },
    };
    assert_eq!(store.stats(&of_service).await.expect("stats"), expected);

    let offline = AgentFilter { status: Some(AgentStatus::Offline), ..of_service.clone() };
    let expected = AgentStats {
        total: 2,
        by_status: StatusCounts { offline: 2, ..StatusCounts::default() },
        by_service: vec![(service.clone(), 2)],
        by_version: vec![("v1".into(), 1), ("v2".into(), 1)],
        by_remote_config: RemoteConfigCounts { none: 2, ..RemoteConfigCounts::default() },
    };
    assert_eq!(store.stats(&offline).await.expect("stats"), expected);

    let nobody = AgentFilter { version: Some("v9".into()), ..of_service };
    assert_eq!(store.stats(&nobody).await.expect("stats"), AgentStats::default());
}

pub async fn flush_then_get_sees_writes<S: AgentStore>(store: &S) {
    let records: Vec<AgentRecord> =
        (0..16).map(|_| minimal_record(InstanceUid::new_v7())).collect();
    let versions = join_all(records.iter().map(|r| create(store, r))).await;
    store.flush().await.expect("flush");
    for (record, version) in records.into_iter().zip(versions) {
        assert_eq!(get_existing(store, record.instance_uid).await, Versioned { record, version });
    }
    // Flushing with nothing queued is a no-op, not an error.
    store.flush().await.expect("idle flush");
}

pub async fn ready_is_ok<S: AgentStore>(store: &S) {
    assert_eq!(store.ready().await, Ok(()));
}

// ---------------------------------------------------------------------------------------------
// Remote configs: the suite every `ConfigStore` backend (and layer) must pass.
//
// Like the agent cases, every case uses fresh names and agent uids, so the suite can run
// concurrently against one shared config index; each case deletes the configs it created, since
// the `MAX_CONFIGS` bound counts every config in the store.

use crate::configs::{ConfigStore, RolloutCounts, StoredConfig, VersionedConfig};
use opamp_core::remote_config::{
    ConfigFile, ConfigHash, DesiredConfig, RemoteConfig, RolloutPolicy, SlotClaim,
};

/// Concurrent writers in the config lost-update case.
const CONFIG_WRITERS: u32 = 8;
/// Increments each of them makes.
const CONFIG_INCREMENTS_PER_WRITER: u32 = 5;
/// How long the rollout counts may take to show agents just written (a search sees the agents
/// as of the index's last refresh).
const COUNTS_WITHIN: std::time::Duration = std::time::Duration::from_secs(15);

/// Runs every config case against `store`, one after the other.
pub async fn run_configs<S: AgentStore + ConfigStore>(store: &S) {
    config_get_of_unknown_name_is_none(store).await;
    config_create_then_get_round_trips_every_field(store).await;
    config_create_twice_conflicts(store).await;
    config_replace_at_read_version(store).await;
    config_stale_version_conflicts_and_keeps_stored(store).await;
    config_concurrent_cas_increments_lose_no_update(store).await;
    config_delete_at_version_and_stale_delete_conflicts(store).await;
    config_versions_are_in_name_order_and_reflect_writes(store).await;
    rollout_counts_count_agents_by_desired_config_and_status(store).await;
}

/// Generates one `#[tokio::test]` per config case, like
/// [`conformance_tests!`](crate::conformance_tests).
#[macro_export]
macro_rules! config_conformance_tests {
    ($fixture:expr) => {
        $crate::config_conformance_tests!($fixture, |store| &store);
    };
    ($fixture:expr, |$f:ident| $store:expr) => {
        $crate::conformance_tests!(@cases ($fixture, $f, $store);
            config_get_of_unknown_name_is_none,
            config_create_then_get_round_trips_every_field,
            config_create_twice_conflicts,
            config_replace_at_read_version,
            config_stale_version_conflicts_and_keeps_stored,
            config_concurrent_cas_increments_lose_no_update,
            config_delete_at_version_and_stale_delete_conflicts,
            config_versions_are_in_name_order_and_reflect_writes,
            rollout_counts_count_agents_by_desired_config_and_status,
        );
    };
}

/// A config name no other case (or run) uses, ending in `suffix`.
pub fn config_name(suffix: &str) -> String {
    format!("conformance-{}-{suffix}", InstanceUid::new_v7())
}

/// A config with one file of `body`, selecting `service.name=otelcol`, at the start of its
/// rollout.
pub fn stored_config(name: &str, body: &str) -> StoredConfig {
    let config = RemoteConfig::new(
        name.to_owned(),
        [("service.name".to_owned(), "otelcol".to_owned())].into(),
        [(
            "collector.yaml".to_owned(),
            ConfigFile { body: body.to_owned(), content_type: "text/yaml".to_owned() },
        )]
        .into(),
        RolloutPolicy { max_agents_per_minute: Some(50), pause_on_failures: Some(3) },
    )
    .expect("a valid config");
    StoredConfig::new(Arc::new(config), 1_700_000_000_000)
}

/// A config using every field: unicode, several files, an empty content type, a rollout state
/// that is paused with failures and claims.
pub fn full_config(name: &str) -> StoredConfig {
    let config = RemoteConfig::new(
        name.to_owned(),
        [
            ("service.name".to_owned(), "otelcol-ü".to_owned()),
            ("deployment.environment".to_owned(), String::new()),
            ("host.name".to_owned(), "höst-東京-1".to_owned()),
        ]
        .into(),
        [
            (
                "collector.yaml".to_owned(),
                ConfigFile {
                    body: "receivers:\n  otlp: {}\n# ü 東京 \u{1F600} \"quoted\" \\ back\n".into(),
                    content_type: "text/yaml".to_owned(),
                },
            ),
            (
                "extra.json".to_owned(),
                ConfigFile { body: "{}".into(), content_type: String::new() },
            ),
            ("empty".to_owned(), ConfigFile { body: String::new(), content_type: "x/y".into() }),
        ]
        .into(),
        RolloutPolicy { max_agents_per_minute: Some(u32::MAX), pause_on_failures: Some(1) },
    )
    .expect("a valid config");
    let mut stored = StoredConfig::new(Arc::new(config), 1_700_000_123_456);
    stored.rollout.paused = true;
    stored.rollout.failures = 7;
    stored.rollout.claims = vec![
        SlotClaim { at: 1_700_000_100_000, count: 3 },
        SlotClaim { at: 1_700_000_101_000, count: u32::MAX },
    ];
    stored
}

/// The same config with an empty selector, no files, no rollout policy.
fn bare_config(name: &str) -> StoredConfig {
    let config = RemoteConfig::new(
        name.to_owned(),
        Default::default(),
        Default::default(),
        RolloutPolicy::default(),
    )
    .expect("a valid config");
    StoredConfig::new(Arc::new(config), 0)
}

async fn get_config<S: ConfigStore>(store: &S, name: &str) -> VersionedConfig {
    match store.get_config(name).await {
        Ok(Some(v)) => v,
        other => panic!("expected config {name} to exist, got {other:?}"),
    }
}

async fn create_config<S: ConfigStore>(store: &S, config: &StoredConfig) -> Version {
    store
        .put_config(config, Precondition::Absent)
        .await
        .unwrap_or_else(|e| panic!("create of config {} failed: {e}", config.config.name()))
}

/// Deletes the named configs at their current version (the end of every case).
async fn delete_configs<S: ConfigStore>(store: &S, names: &[&str]) {
    for name in names {
        if let Some(v) = store.get_config(name).await.expect("read before delete") {
            store.delete_config(name, v.version).await.expect("delete at the read version");
        }
    }
}

pub async fn config_get_of_unknown_name_is_none<S: ConfigStore>(store: &S) {
    assert_eq!(store.get_config(&config_name("unknown")).await, Ok(None));
    // not a name at all: no such config either, not an error
    for odd in ["", ".", "a/b", "with space", &"x".repeat(300)] {
        assert_eq!(store.get_config(odd).await, Ok(None), "{odd:?}");
    }
}

pub async fn config_create_then_get_round_trips_every_field<S: ConfigStore>(store: &S) {
    let full = full_config(&config_name("full"));
    let version = create_config(store, &full).await;
    assert_eq!(
        get_config(store, full.config.name()).await,
        VersionedConfig { stored: full.clone(), version }
    );

    let bare = bare_config(&config_name("bare"));
    let bare_version = create_config(store, &bare).await;
    assert_eq!(
        get_config(store, bare.config.name()).await,
        VersionedConfig { stored: bare.clone(), version: bare_version }
    );
    delete_configs(store, &[full.config.name(), bare.config.name()]).await;
}

pub async fn config_create_twice_conflicts<S: ConfigStore>(store: &S) {
    let name = config_name("twice");
    let first = stored_config(&name, "a: 1");
    let version = create_config(store, &first).await;
    let second = stored_config(&name, "a: 2");
    assert_eq!(store.put_config(&second, Precondition::Absent).await, Err(StoreError::Conflict));
    assert_eq!(
        get_config(store, &name).await,
        VersionedConfig { stored: first, version },
        "a failed create must not overwrite"
    );
    delete_configs(store, &[&name]).await;
}

pub async fn config_replace_at_read_version<S: ConfigStore>(store: &S) {
    let name = config_name("replace");
    let created = create_config(store, &stored_config(&name, "a: 1")).await;
    let read = get_config(store, &name).await;
    assert_eq!(read.version, created);

    // new content: a new hash and a new rollout
    let changed = stored_config(&name, "a: 2");
    assert_ne!(changed.config.hash(), read.stored.config.hash());
    let v2 = store.put_config(&changed, Precondition::Version(created)).await.expect("replace");
    assert_ne!(v2, created, "a write must produce a new version");
    assert_eq!(
        get_config(store, &name).await,
        VersionedConfig { stored: changed.clone(), version: v2 }
    );

    // rollout state only
    let mut claimed = changed.clone();
    claimed.rollout.claims.push(SlotClaim { at: 1_700_000_000_500, count: 2 });
    let v3 = store.put_config(&claimed, Precondition::Version(v2)).await.expect("second replace");
    assert!(v3 != v2 && v3 != created);
    assert_eq!(get_config(store, &name).await, VersionedConfig { stored: claimed, version: v3 });

    // a rollout state of another hash is refused, not stored
    let mut mismatched = changed;
    mismatched.rollout.hash = [0xaa; 32];
    let refused = store.put_config(&mismatched, Precondition::Version(v3)).await;
    assert!(matches!(refused, Err(StoreError::Backend(_))), "{refused:?}");
    assert_eq!(get_config(store, &name).await.version, v3);
    delete_configs(store, &[&name]).await;
}

pub async fn config_stale_version_conflicts_and_keeps_stored<S: ConfigStore>(store: &S) {
    let name = config_name("stale");
    let stale = create_config(store, &stored_config(&name, "a: 1")).await;
    let fresh_config = stored_config(&name, "a: 2");
    let fresh =
        store.put_config(&fresh_config, Precondition::Version(stale)).await.expect("replace");

    let loser = stored_config(&name, "a: 3");
    assert_eq!(
        store.put_config(&loser, Precondition::Version(stale)).await,
        Err(StoreError::Conflict)
    );
    assert_eq!(
        get_config(store, &name).await,
        VersionedConfig { stored: fresh_config, version: fresh },
        "a conflicting write must leave the stored config unchanged"
    );

    // an update of a config that does not exist does not create it
    let missing = stored_config(&config_name("missing"), "a: 1");
    assert_eq!(
        store.put_config(&missing, Precondition::Version(fresh)).await,
        Err(StoreError::Conflict)
    );
    assert_eq!(store.get_config(missing.config.name()).await, Ok(None));
    delete_configs(store, &[&name]).await;
}

pub async fn config_concurrent_cas_increments_lose_no_update<S: ConfigStore>(store: &S) {
    let name = config_name("increments");
    create_config(store, &stored_config(&name, "a: 1")).await;
    let writers = (0..CONFIG_WRITERS).map(|_| async {
        for _ in 0..CONFIG_INCREMENTS_PER_WRITER {
            let mut attempts = 0;
            loop {
                attempts += 1;
                assert!(attempts < MAX_CAS_ATTEMPTS, "config cas livelocked");
                let VersionedConfig { mut stored, version } = get_config(store, &name).await;
                stored.rollout.record_failures(stored.config.rollout(), 1);
                match store.put_config(&stored, Precondition::Version(version)).await {
                    Ok(_) => break,
                    Err(StoreError::Conflict) => continue,
                    Err(e) if e.is_transient() => {
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                    Err(e) => panic!("config cas update failed: {e}"),
                }
            }
        }
    });
    join_all(writers).await;
    let got = get_config(store, &name).await.stored.rollout;
    assert_eq!(got.failures, CONFIG_WRITERS * CONFIG_INCREMENTS_PER_WRITER, "lost update");
    assert!(got.paused, "pause_on_failures 3 was reached");
    delete_configs(store, &[&name]).await;
}

pub async fn config_delete_at_version_and_stale_delete_conflicts<S: ConfigStore>(store: &S) {
    let name = config_name("delete");
    let v1 = create_config(store, &stored_config(&name, "a: 1")).await;
    let v2 = store
        .put_config(&stored_config(&name, "a: 2"), Precondition::Version(v1))
        .await
        .expect("replace");
    assert_eq!(store.delete_config(&name, v1).await, Err(StoreError::Conflict), "stale delete");
    assert_eq!(get_config(store, &name).await.version, v2, "a stale delete removes nothing");

    store.delete_config(&name, v2).await.expect("delete at the current version");
    assert_eq!(store.get_config(&name).await, Ok(None));
    assert_eq!(store.delete_config(&name, v2).await, Err(StoreError::Conflict), "already gone");
    assert!(
        store.config_versions().await.expect("versions").iter().all(|(n, _)| *n != name),
        "a deleted config is not listed"
    );

    // created again, it takes no version its predecessor had: a writer holding one loses
    let v3 = create_config(store, &stored_config(&name, "a: 3")).await;
    assert!(v3 != v1 && v3 != v2, "{v3:?} reuses a version of the deleted config");
    for old in [v1, v2] {
        assert_eq!(
            store.put_config(&stored_config(&name, "a: 4"), Precondition::Version(old)).await,
            Err(StoreError::Conflict)
        );
        assert_eq!(store.delete_config(&name, old).await, Err(StoreError::Conflict));
    }
    delete_configs(store, &[&name]).await;
    assert_eq!(store.delete_config("not a name", v3).await, Err(StoreError::Conflict));
}

pub async fn config_versions_are_in_name_order_and_reflect_writes<S: ConfigStore>(store: &S) {
    // created out of order; the names share a prefix so they sort among themselves
    let prefix = config_name("order");
    let names: Vec<String> =
        ["c", "A", "b-2", "b.1", "_z"].iter().map(|s| format!("{prefix}-{s}")).collect();
    let mut expected = Vec::new();
    for name in &names {
        let version = create_config(store, &stored_config(name, "a: 1")).await;
        expected.push((name.clone(), version));
    }
    expected.sort_by(|x, y| x.0.cmp(&y.0));
    let ours = |all: Vec<(String, Version)>| -> Vec<(String, Version)> {
        for pair in all.windows(2) {
            assert!(
                pair[0].0 < pair[1].0,
                "not in name order: {:?} before {:?}",
                pair[0].0,
                pair[1].0
            );
        }
        all.into_iter().filter(|(n, _)| n.starts_with(&prefix)).collect()
    };
    assert_eq!(ours(store.config_versions().await.expect("versions")), expected);

    // a replace shows at once
    let (name, version) = expected[1].clone();
    let replaced = store
        .put_config(&stored_config(&name, "a: 2"), Precondition::Version(version))
        .await
        .expect("replace");
    expected[1].1 = replaced;
    assert_eq!(ours(store.config_versions().await.expect("versions")), expected);

    // and so does a delete
    let (name, version) = expected.remove(0);
    store.delete_config(&name, version).await.expect("delete");
    assert_eq!(ours(store.config_versions().await.expect("versions")), expected);
    let rest: Vec<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    delete_configs(store, &rest).await;
}

/// An agent whose desired config is `desired` (name and the hash it was matched at), reporting
/// `reported` (hash and status) if any.
fn agent_with_config(
    desired: Option<(&str, ConfigHash)>,
    reported: Option<(&[u8], v1::RemoteConfigStatuses)>,
) -> AgentRecord {
    let mut record = minimal_record(InstanceUid::new_v7());
    record.desired_config =
        desired.map(|(name, hash)| Arc::new(DesiredConfig { name: name.to_owned(), hash }));
    record.remote_config_status = reported.map(|(hash, status)| {
        Arc::new(v1::RemoteConfigStatus {
            last_remote_config_hash: hash.to_vec().into(),
            status: status as i32,
            error_message: String::new(),
        })
    });
    record
}

pub async fn rollout_counts_count_agents_by_desired_config_and_status<
    S: AgentStore + ConfigStore,
>(
    store: &S,
) {
    use v1::RemoteConfigStatuses::{Applied, Applying, Failed, Unset};
    let a = stored_config(&config_name("counts-a"), "a: 2");
    let b = stored_config(&config_name("counts-b"), "b: 1");
    create_config(store, &a).await;
    create_config(store, &b).await;
    let (an, ah) = (a.config.name(), *a.config.hash());
    let (bn, bh) = (b.config.name(), *b.config.hash());
    // the hash `a` had before its content changed
    let old = *stored_config(an, "a: 1").config.hash();
    let other = config_name("counts-other");

    let mut agents = Vec::new();
    let mut add = |n: usize,
                   desired: Option<(&str, ConfigHash)>,
                   reported: Option<(&[u8], v1::RemoteConfigStatuses)>| {
        agents.extend((0..n).map(|_| agent_with_config(desired, reported)));
    };
    add(3, Some((an, ah)), Some((&ah, Applied)));
    add(2, Some((an, ah)), Some((&ah, Applying)));
    add(1, Some((an, ah)), Some((&ah, Failed)));
    // pending: the old hash applied (matched at the old hash, or at the new one), no status yet,
    // status unset, a hash of another length
    add(1, Some((an, old)), Some((&old, Applied)));
    add(1, Some((an, ah)), Some((&old, Failed)));
    add(1, Some((an, ah)), None);
    add(1, Some((an, ah)), Some((&ah, Unset)));
    add(1, Some((an, ah)), Some((&ah[..16], Applied)));
    add(1, Some((bn, bh)), Some((&bh, Failed)));
    add(1, Some((bn, bh)), Some((&ah, Applied)));
    // not matched: another config, or none (whatever they report)
    add(2, Some((&other, ah)), Some((&ah, Applied)));
    add(1, None, Some((&ah, Applied)));
    join_all(agents.iter().map(|r| create(store, r))).await;
    store.flush().await.expect("flush");

    let asked = [
        (an.to_owned(), ah),
        (bn.to_owned(), bh),
        (config_name("counts-nobody"), ah),
        (an.to_owned(), old),
    ];
    let expected = [
        RolloutCounts { matched: 11, applied: 3, applying: 2, failed: 1, pending: 5 },
        RolloutCounts { matched: 2, applied: 0, applying: 0, failed: 1, pending: 1 },
        RolloutCounts::default(),
        // asked for the old hash: only the agent reporting it applied counts as applied
        RolloutCounts { matched: 11, applied: 1, applying: 0, failed: 1, pending: 9 },
    ];
    let started = std::time::Instant::now();
    loop {
        let got = store.rollout_counts(&asked).await.expect("rollout counts");
        if got == expected {
            break;
        }
        assert!(started.elapsed() < COUNTS_WITHIN, "rollout counts {got:?}, expected {expected:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(store.rollout_counts(&[]).await, Ok(vec![]));
    delete_configs(store, &[an, bn]).await;
}
