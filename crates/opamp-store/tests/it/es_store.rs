//! The Elasticsearch backend against a real Elasticsearch (`OPAMPD_TEST_ES_URL`, set by
//! scripts/test.sh): the shared conformance suite, group commit, error routing, the index
//! mapping and the document as plain ES sees it. No mock of Elasticsearch anywhere.

use std::time::{Duration, Instant};

use elasticsearch::indices::{
    IndicesDeleteParts, IndicesGetMappingParts, IndicesPutSettingsParts, IndicesStatsParts,
};
use elasticsearch::{Elasticsearch, GetParts, IndexParts};
use opamp_core::AgentStatus;
use opamp_proto::InstanceUid;
use opamp_store::conformance::{self, full_record, minimal_record};
use opamp_store::elasticsearch::{DEFAULT_INDEX, ElasticsearchStore, EsConfig};
use opamp_store::{AgentStore, Precondition, StoreError};
use serde_json::{Value, json};

use opamp_store::conformance::test_es_url as es_url;

/// A store on a fresh index that is deleted by [`TestIndex::delete`].
struct TestIndex {
    store: ElasticsearchStore,
    name: String,
}

impl TestIndex {
    async fn new(tweak: impl FnOnce(&mut EsConfig)) -> Option<Self> {
        let mut cfg = EsConfig::new(es_url()?);
        cfg.index = format!("opampd-test-{}", InstanceUid::new_v7());
        tweak(&mut cfg);
        let name = cfg.index.clone();
        let store = ElasticsearchStore::connect(cfg).await.expect("connect to test elasticsearch");
        Some(Self { store, name })
    }

    /// Deletes the agent index and the state index.
    async fn delete(self) {
        let state = self.store.config().state_index();
        let response = self
            .store
            .client()
            .indices()
            .delete(IndicesDeleteParts::Index(&[&self.name, &state]))
            .ignore_unavailable(true)
            .send()
            .await
            .expect("delete test index");
        assert!(
            response.status_code().is_success(),
            "delete test index: {}",
            response.status_code()
        );
    }
}

async fn raw_get(client: &Elasticsearch, index: &str, id: &str) -> Value {
    let response = client.get(GetParts::IndexId(index, id)).send().await.expect("raw get");
    response.json().await.expect("raw get json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_on_a_fresh_index() {
    let Some(t) = TestIndex::new(|_| {}).await else { return };
    conformance::run_all(&t.store).await;
    t.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_on_the_fleet_agents_system_index() {
    let Some(url) = es_url() else { return };
    let cfg = EsConfig::new(url);
    assert_eq!(cfg.index, DEFAULT_INDEX);
    let store = ElasticsearchStore::connect(cfg).await.expect("connect with the default index");
    conformance::run_all(&store).await;
    // Fresh uids only, and the system index is never deleted: other tools own it.
    let record = full_record(InstanceUid::new_v7());
    store.put(&record, Precondition::Absent).await.expect("create in .fleet-agents");
    store.flush().await.expect("the agent document is written");
    let doc = raw_get(store.client(), DEFAULT_INDEX, &record.instance_uid.to_string()).await;
    assert_eq!(doc["_index"], ".fleet-agents-7");
    assert_eq!(doc["_source"]["type"], "OPAMP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_coalesces_concurrent_puts() {
    let Some(t) = TestIndex::new(|_| {}).await else { return };
    const N: usize = 300;
    let records: Vec<_> = (0..N).map(|_| minimal_record(InstanceUid::new_v7())).collect();
    let before = t.store.stats();
    let results =
        futures::future::join_all(records.iter().map(|r| t.store.put(r, Precondition::Absent)))
            .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    t.store.flush().await.unwrap();
    let stats = t.store.stats();
    let bulks = stats.bulk_requests - before.bulk_requests;
    // a state record and an agent document (a new agent is published) each
    assert_eq!(stats.bulk_items - before.bulk_items, 2 * N as u64);
    assert!(bulks * 10 <= 2 * N as u64, "{N} concurrent puts took {bulks} bulk requests");

    // Concurrent cache-miss reads are batched the same way.
    let before = t.store.stats();
    let reads =
        futures::future::join_all(records.iter().map(|r| t.store.get(r.instance_uid))).await;
    for (record, read) in records.iter().zip(reads) {
        assert_eq!(read.expect("read").expect("found").record, *record);
    }
    let stats = t.store.stats();
    let requests =
        stats.mget_requests + stats.get_requests - before.mget_requests - before.get_requests;
    assert!(requests * 10 <= N as u64, "{N} concurrent reads took {requests} requests");
    t.delete().await;
}

/// State records and agent documents go in separate `_bulk` requests: a request that touches
/// two indices costs Elasticsearch a shard-level bulk, and a translog sync, per index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_records_and_agent_documents_never_share_a_bulk() {
    let Some(t) = TestIndex::new(|_| {}).await else { return };
    const N: usize = 200;
    let records: Vec<_> = (0..N).map(|_| minimal_record(InstanceUid::new_v7())).collect();
    let mut versions: Vec<Option<_>> = vec![None; N];
    for _ in 0..3 {
        let results =
            futures::future::join_all(records.iter().zip(&versions).map(|(r, v)| {
                t.store.put(r, v.map_or(Precondition::Absent, Precondition::Version))
            }))
            .await;
        versions = results.into_iter().map(|r| Some(r.expect("put"))).collect();
    }
    t.store.flush().await.unwrap();
    let stats = t.store.stats();
    // three state records per agent, and its agent document once (new agents are published)
    assert_eq!(stats.bulk_items, 4 * N as u64, "{stats:?}");
    let state = t.store.config().state_index();
    let response = t
        .store
        .client()
        .indices()
        .stats(IndicesStatsParts::IndexMetric(&[&t.name, &state], &["bulk"]))
        .send()
        .await
        .expect("index stats");
    let body: Value = response.json().await.expect("index stats json");
    // one primary shard per index: one shard-level bulk per request that touched the index
    let shard_bulks = |index: &str| {
        body["indices"][index]["primaries"]["bulk"]["total_operations"]
            .as_u64()
            .unwrap_or_else(|| panic!("no bulk stats for {index}: {body}"))
    };
    let (agent_bulks, state_bulks) = (shard_bulks(&t.name), shard_bulks(&state));
    assert!(agent_bulks > 0 && state_bulks > 0, "{agent_bulks} {state_bulks}");
    assert_eq!(
        agent_bulks + state_bulks,
        stats.bulk_requests,
        "a _bulk request touched both indices ({agent_bulks} agent + {state_bulks} state \
         shard-level bulks for {} requests)",
        stats.bulk_requests
    );
    t.delete().await;
}

/// A server starts without touching ES, so its first agents' reads race the index creation
/// that their first writes trigger: none of them may see the not-yet-allocated shard (503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_agents_on_a_missing_index_are_all_served() {
    let Some(url) = es_url() else { return };
    let mut cfg = EsConfig::new(url);
    cfg.index = format!("opampd-test-{}", InstanceUid::new_v7());
    let name = cfg.index.clone();
    let store = ElasticsearchStore::new(cfg).expect("store");
    const N: usize = 60;
    let enroll = |i: usize| {
        let store = &store;
        async move {
            // Staggered so reads keep arriving while the index is being created.
            tokio::time::sleep(Duration::from_millis(i as u64 * 5)).await;
            let record = minimal_record(InstanceUid::new_v7());
            let found = store.get(record.instance_uid).await?;
            assert!(found.is_none());
            store.put(&record, Precondition::Absent).await.map(|_| ())
        }
    };
    let results = futures::future::join_all((0..N).map(enroll)).await;
    let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
    assert!(failed.is_empty(), "{} of {N} first enrollments failed: {failed:?}", failed.len());
    TestIndex { store, name }.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_one_document_in_flight_are_answered_in_order() {
    let Some(t) = TestIndex::new(|_| {}).await else { return };
    let mut record = minimal_record(InstanceUid::new_v7());
    let v0 = t.store.put(&record, Precondition::Absent).await.expect("create");
    record.sequence_num = 1;
    let mut second = record.clone();
    second.sequence_num = 2;
    // Both are accepted before either is answered (join polls the first one first), and both
    // are decided against v0: the first accepted must win, the second must lose.
    let (first, later) = futures::join!(
        t.store.put(&record, Precondition::Version(v0)),
        t.store.put(&second, Precondition::Version(v0)),
    );
    let v1 = first.expect("first write wins");
    assert_eq!(later, Err(StoreError::Conflict));
    assert_eq!(t.store.get(record.instance_uid).await.unwrap().unwrap().record.sequence_num, 1);

    // A chain of writes to one agent, each decided on the previous answer, all land in order.
    let mut version = v1;
    for seq in 2..12 {
        record.sequence_num = seq;
        version =
            t.store.put(&record, Precondition::Version(version)).await.expect("chained write");
    }
    let stored = t.store.get(record.instance_uid).await.unwrap().unwrap();
    assert_eq!((stored.record.sequence_num, stored.version), (11, version));
    t.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_conflicts_are_routed_to_their_writer_only() {
    let Some(t) = TestIndex::new(|_| {}).await else { return };
    let a = minimal_record(InstanceUid::new_v7());
    let b = minimal_record(InstanceUid::new_v7());
    let va = t.store.put(&a, Precondition::Absent).await.unwrap();
    let vb = t.store.put(&b, Precondition::Absent).await.unwrap();
    let vb2 = t.store.put(&b, Precondition::Version(vb)).await.unwrap();
    let again = minimal_record(b.instance_uid);
    let before = t.store.stats();
    // One bulk: a fresh CAS on `a`, a stale one on `b`, a second enrollment of `a`'s uid.
    let (ok, stale, dup) = futures::join!(
        t.store.put(&a, Precondition::Version(va)),
        t.store.put(&b, Precondition::Version(vb)),
        t.store.put(&again, Precondition::Absent),
    );
    assert!(ok.is_ok(), "{ok:?}");
    assert_eq!(stale, Err(StoreError::Conflict));
    assert_eq!(dup, Err(StoreError::Conflict));
    assert_eq!(t.store.stats().conflicts - before.conflicts, 2);
    assert_eq!(t.store.get(b.instance_uid).await.unwrap().unwrap().version, vb2);
    t.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_down_is_unavailable_within_the_timeout() {
    // A port nobody listens on: bind, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cfg = EsConfig::new(format!("http://127.0.0.1:{port}").parse().unwrap());
    cfg.request_timeout = Duration::from_secs(2);
    cfg.ready_timeout = Duration::from_millis(500);
    assert_unavailable_in_time(ElasticsearchStore::new(cfg).unwrap(), Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_that_never_answers_is_unavailable_within_the_timeout() {
    // Accepts connections and never answers: the slow-cluster case.
    let (addr, hold) = silent_cluster().await;
    let mut cfg = EsConfig::new(format!("http://{addr}").parse().unwrap());
    cfg.request_timeout = Duration::from_millis(700);
    cfg.ready_timeout = Duration::from_millis(300);
    assert_unavailable_in_time(ElasticsearchStore::new(cfg).unwrap(), Duration::from_millis(2500))
        .await;
    hold.abort();
}

async fn assert_unavailable_in_time(store: ElasticsearchStore, bound: Duration) {
    let uid = InstanceUid::new_v7();
    let started = Instant::now();
    let got = store.get(uid).await;
    assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
    let put = store.put(&minimal_record(uid), Precondition::Absent).await;
    assert!(matches!(put, Err(StoreError::Unavailable(_))), "{put:?}");
    let ready = store.ready().await;
    assert!(matches!(ready, Err(StoreError::Unavailable(_))), "{ready:?}");
    assert_eq!(store.flush().await, Ok(()), "failed writes are answered, so flush completes");
    assert!(started.elapsed() < bound * 3, "took {:?}", started.elapsed());
    let started = Instant::now();
    let _ = store.get(uid).await;
    assert!(started.elapsed() < bound, "a read took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_index_gets_a_strict_mapping() {
    let Some(t) = TestIndex::new(|_| {}).await else { return };
    let response = t
        .store
        .client()
        .indices()
        .get_mapping(IndicesGetMappingParts::Index(&[&t.name]))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    let mappings = &body[&t.name]["mappings"];
    assert!(
        mappings["dynamic"] == json!(false) || mappings["dynamic"] == json!("false"),
        "{mappings}"
    );
    let props = &mappings["properties"];
    assert_eq!(props["agent"]["properties"]["id"]["type"], "keyword");
    assert_eq!(props["last_checkin"]["type"], "date");
    assert_eq!(props["sequence_num"]["type"], "long");
    assert_eq!(props["opampd"]["properties"]["state"]["type"], "binary");
    // Setting up again (another instance starting) is harmless.
    let again = EsConfig { index: t.name.clone(), ..t.store.config().clone() };
    ElasticsearchStore::connect(again).await.expect("second setup of an existing index");
    t.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_readable_by_plain_elasticsearch() {
    let Some(t) = TestIndex::new(|_| {}).await else { return };
    let mut record = full_record(InstanceUid::new_v7());
    record.sequence_num = 17;
    record.status = AgentStatus::Degraded;
    t.store.put(&record, Precondition::Absent).await.unwrap();
    // the agent document is written after the state record, without the caller waiting
    t.store.flush().await.unwrap();
    let id = record.instance_uid.to_string();
    let doc = raw_get(t.store.client(), &t.name, &id).await;
    let source = &doc["_source"];
    assert_eq!(source["agent"]["id"], id.as_str());
    assert_eq!(source["type"], "OPAMP");
    assert_eq!(source["active"], true);
    assert_eq!(source["last_checkin_status"], "degraded");
    assert_eq!(source["sequence_num"], 17);
    assert_eq!(source["policy_revision_idx"], 1);
    assert!(source["last_checkin"].as_str().unwrap().ends_with('Z'), "{source}");
    assert!(source["capabilities"].as_array().is_some_and(|c| !c.is_empty()), "{source}");
    let size = serde_json::to_vec(source).unwrap().len();
    eprintln!("document size of the conformance full record: {size} bytes");
    t.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_of_another_schema_version_reads_as_corrupt() {
    let Some(t) = TestIndex::new(|_| {}).await else { return };
    // in the state record, and in an agent document with no state record (an older opampd's)
    let state_index = t.store.config().state_index();
    for index in [state_index.as_str(), t.name.as_str()] {
        let record = minimal_record(InstanceUid::new_v7());
        t.store.put(&record, Precondition::Absent).await.unwrap();
        t.store.flush().await.unwrap();
        let id = record.instance_uid.to_string();
        let mut source = raw_get(t.store.client(), index, &id).await["_source"].clone();
        source["opampd"]["schema_version"] = json!(999);
        let client = t.store.client();
        let response =
            client.index(IndexParts::IndexId(index, &id)).body(source).send().await.unwrap();
        assert!(response.status_code().is_success());
        if index == t.name {
            let response = client.delete(elasticsearch::DeleteParts::IndexId(&state_index, &id));
            assert!(response.send().await.unwrap().status_code().is_success());
        }
        let got = t.store.get(record.instance_uid).await;
        assert!(matches!(got, Err(StoreError::Corrupt(_))), "{index}: {got:?}");
    }
    // A document that is neither opampd's nor an OpAMP agent's (an Elastic Agent's) is corrupt
    // too, not a panic; fleet-server's OpAMP documents are adopted (no state, asked for it).
    for (kind, adopted) in [("PERMANENT", false), ("OPAMP", true)] {
        let foreign = InstanceUid::new_v7();
        let response = t
            .store
            .client()
            .index(IndexParts::IndexId(&t.name, &foreign.to_string()))
            .body(
                json!({ "type": kind, "agent": { "id": foreign.to_string() }, "sequence_num": 7 }),
            )
            .send()
            .await
            .unwrap();
        assert!(response.status_code().is_success());
        let got = t.store.get(foreign).await;
        if adopted {
            let record = got.expect("adopted").expect("present").record;
            assert!(record.adopted && record.sequence_num == 7, "{record:?}");
        } else {
            assert!(matches!(got, Err(StoreError::Corrupt(_))), "{kind}: {got:?}");
        }
    }
    t.delete().await;
}

/// A read marked likely new asks the state record and the agent document in one request; a
/// plain read of an agent with no state record takes two. Both answer the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_likely_new_read_asks_both_documents_in_one_request() {
    let Some(t) = TestIndex::new(|_| {}).await else { return };
    let requests = |before: &opamp_store::elasticsearch::EsStats| {
        let now = t.store.stats();
        now.mget_requests + now.get_requests - before.mget_requests - before.get_requests
    };
    // an unknown agent: one request instead of two
    let unknown = InstanceUid::new_v7();
    let before = t.store.stats();
    assert_eq!(t.store.get_likely_new(unknown).await, Ok(None));
    assert_eq!(requests(&before), 1);
    let before = t.store.stats();
    assert_eq!(t.store.get(unknown).await, Ok(None));
    assert_eq!(requests(&before), 2, "a plain read looks for the agent document afterwards");

    // an agent fleet-server wrote (an agent document, no state record) is found in that one
    // request, adopted as by a plain read
    let foreign = InstanceUid::new_v7();
    let response = t
        .store
        .client()
        .index(IndexParts::IndexId(&t.name, &foreign.to_string()))
        .body(json!({ "type": "OPAMP", "agent": { "id": foreign.to_string() }, "sequence_num": 7 }))
        .send()
        .await
        .unwrap();
    assert!(response.status_code().is_success());
    let before = t.store.stats();
    let adopted = t.store.get_likely_new(foreign).await.expect("read").expect("found");
    assert_eq!(requests(&before), 1);
    assert!(adopted.record.adopted && adopted.record.sequence_num == 7, "{adopted:?}");
    assert_eq!(Ok(Some(adopted)), t.store.get(foreign).await);

    // an agent with a state record: the state record's version, not the agent document's
    let record = minimal_record(InstanceUid::new_v7());
    let version = t.store.put(&record, Precondition::Absent).await.unwrap();
    t.store.flush().await.unwrap();
    let got = t.store.get_likely_new(record.instance_uid).await;
    assert_eq!(got, Ok(Some(opamp_store::Versioned { record: record.clone(), version })));

    // concurrent likely-new reads share requests like plain ones
    const N: usize = 200;
    let uids: Vec<InstanceUid> = (0..N).map(|_| InstanceUid::new_v7()).collect();
    let before = t.store.stats();
    let reads = futures::future::join_all(uids.iter().map(|u| t.store.get_likely_new(*u))).await;
    assert!(reads.iter().all(|r| *r == Ok(None)), "{reads:?}");
    let took = requests(&before);
    assert!(took * 10 <= N as u64, "{N} concurrent likely-new reads took {took} requests");
    t.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_write_queue_sheds_load_immediately() {
    // A cluster that never answers keeps the queue full.
    let (addr, hold) = silent_cluster().await;
    let mut cfg = EsConfig::new(format!("http://{addr}").parse().unwrap());
    cfg.request_timeout = Duration::from_secs(2);
    cfg.write_queue = 4;
    cfg.bulk_max_items = 2;
    cfg.bulks_in_flight = 1;
    let store = ElasticsearchStore::new(cfg).unwrap();
    let records: Vec<_> = (0..64).map(|_| minimal_record(InstanceUid::new_v7())).collect();
    let started = Instant::now();
    let results =
        futures::future::join_all(records.iter().map(|r| store.put(r, Precondition::Absent))).await;
    assert!(results.contains(&Err(StoreError::Overloaded)), "{results:?}");
    assert!(results.iter().all(|r| r.as_ref().is_err_and(StoreError::is_transient)), "{results:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(store.stats().shed > 0);
    hold.abort();
}

/// A loopback "cluster" that accepts connections and never answers (abort the handle to stop).
async fn silent_cluster() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, hold)
}

/// Sets or lifts the flood-stage block Elasticsearch puts on an index when its disk is nearly
/// full (`index.blocks.read_only_allow_delete`), as an operator or the watermark would.
async fn set_read_only(client: &Elasticsearch, index: &str, on: bool) {
    let value = if on { json!(true) } else { Value::Null };
    let response = client
        .indices()
        .put_settings(IndicesPutSettingsParts::Index(&[index]))
        .body(json!({ "index.blocks.read_only_allow_delete": value }))
        .send()
        .await
        .expect("put settings");
    assert!(response.status_code().is_success(), "set block {on}: {}", response.status_code());
}

/// An index under the flood-stage block: writes are `Unavailable` (503 + Retry-After at the
/// server) naming the block, counted, and apply nothing; reads still work; writes succeed again
/// once the block is lifted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_a_read_only_index_are_unavailable_and_resume_when_the_block_is_lifted() {
    let Some(t) = TestIndex::new(|_| {}).await else { return };
    let mut known = minimal_record(InstanceUid::new_v7());
    let v1 = t.store.put(&known, Precondition::Absent).await.expect("create");
    let state_index = t.store.config().state_index();
    // the flood stage blocks every index of the node: the state records' and the agents'
    for index in [&t.name, &state_index] {
        set_read_only(t.store.client(), index, true).await;
    }

    let before = t.store.stats();
    let fresh = minimal_record(InstanceUid::new_v7());
    known.sequence_num += 1;
    let (update, create) = futures::join!(
        t.store.put(&known, Precondition::Version(v1)),
        t.store.put(&fresh, Precondition::Absent),
    );
    for result in [&update.map(|_| ()), &create.map(|_| ())] {
        assert!(
            matches!(result, Err(StoreError::Unavailable(why))
                if why.contains("cluster_block_exception") && why.contains("flood-stage")),
            "{result:?}"
        );
    }
    assert_eq!(t.store.stats().blocked - before.blocked, 2, "blocked writes are counted");
    let stored = t.store.get(known.instance_uid).await.expect("reads still work");
    assert_eq!(stored.map(|s| s.version), Some(v1), "the refused update applied nothing");
    assert_eq!(t.store.get(fresh.instance_uid).await, Ok(None), "the refused create applied");

    for index in [&t.name, &state_index] {
        set_read_only(t.store.client(), index, false).await;
    }
    let v2 = t.store.put(&known, Precondition::Version(v1)).await.expect("update after");
    t.store.put(&fresh, Precondition::Absent).await.expect("create after");
    assert_eq!(t.store.get(known.instance_uid).await.unwrap().unwrap().version, v2);
    t.delete().await;
}

/// With fleet-server's service token (read and write on `.fleet-agents`, not its mapping), the
/// fleet listing and counts learn the fields from `_field_caps` and read the unmapped service
/// name and remote-config state from `_source`: the same answers as everywhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_listing_and_counts_work_with_the_service_token_on_fleet_agents() {
    let Some(cluster) = opamp_store::secured_cluster::SecuredCluster::connect().await else {
        return;
    };
    cluster
        .run(Duration::from_secs(120), async |cluster| {
            let store = ElasticsearchStore::connect(cluster.es_config(DEFAULT_INDEX))
                .await
                .expect("connect with the service token");
            conformance::list_selects_by_status_service_version_and_text(&store).await;
            conformance::stats_count_the_selected_agents_exactly(&store).await;
        })
        .await;
}

/// The `_source` of `uid`'s agent document (what Kibana reads), after pending writes land.
async fn agent_document(t: &TestIndex, uid: InstanceUid) -> Value {
    t.store.flush().await.unwrap();
    raw_get(t.store.client(), &t.name, &uid.to_string()).await["_source"].clone()
}

/// Every write goes to the state record; the agent document is rewritten only by a write whose
/// record publishes (`AgentRecord::publishes`), by an agent's first write, and never over a
/// later publication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_document_is_rewritten_only_when_the_record_publishes() {
    let Some(t) = TestIndex::new(|_| {}).await else { return };
    let mut record = minimal_record(InstanceUid::new_v7());
    record.last_checkin = 1_800_000_000_000;
    record.published_at = 0;
    let uid = record.instance_uid;
    let mut version = t.store.put(&record, Precondition::Absent).await.unwrap();
    assert_eq!(agent_document(&t, uid).await["sequence_num"], 0, "a new agent is published");

    // a heartbeat that does not publish: the state record moves, the agent document does not
    record.sequence_num = 1;
    record.last_checkin += 30_000;
    version = t.store.put(&record, Precondition::Version(version)).await.unwrap();
    assert_eq!(t.store.get(uid).await.unwrap().unwrap().record, record);
    assert_eq!(agent_document(&t, uid).await["sequence_num"], 0, "not published");

    // one that publishes
    record.sequence_num = 2;
    record.last_checkin += 30_000;
    record.published_at = record.last_checkin;
    version = t.store.put(&record, Precondition::Version(version)).await.unwrap();
    let doc = agent_document(&t, uid).await;
    assert_eq!(doc["sequence_num"], 2, "published");
    let state = opamp_store::elasticsearch::document::from_source(&doc, uid).unwrap();
    assert_eq!(state, record, "the agent document carries the state it shows");

    // a publication of an earlier check-in (an instance that was paused) never overwrites it
    let mut late = record.clone();
    late.sequence_num = 3;
    late.last_checkin -= 1;
    late.published_at = late.last_checkin;
    t.store.put(&late, Precondition::Version(version)).await.unwrap();
    assert_eq!(agent_document(&t, uid).await["sequence_num"], 2, "the later publication stays");
    assert_eq!(t.store.get(uid).await.unwrap().unwrap().record.sequence_num, 3);
    t.delete().await;
}

/// An agent whose document an older opampd wrote (its state inside, no state record) is read
/// from that document; its first write creates the state record, once: a second first write
/// conflicts, as two instances racing on it would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_document_without_a_state_record_is_read_and_its_first_write_creates_one() {
    let Some(t) = TestIndex::new(|_| {}).await else { return };
    let mut record = full_record(InstanceUid::new_v7());
    let uid = record.instance_uid;
    let source = opamp_store::elasticsearch::document::to_source(&record, 1_800_000_000_000);
    let response = t
        .store
        .client()
        .index(IndexParts::IndexId(&t.name, &uid.to_string()))
        .body(serde_json::from_slice::<Value>(&source).unwrap())
        .send()
        .await
        .unwrap();
    assert!(response.status_code().is_success());
    let read = t.store.get(uid).await.unwrap().expect("read from the agent document");
    assert_eq!(read.record, record);
    record.sequence_num += 1;
    let written = t.store.put(&record, Precondition::Version(read.version)).await.unwrap();
    let again = t.store.put(&record, Precondition::Version(read.version)).await;
    assert_eq!(again, Err(StoreError::Conflict), "the state record exists now");
    let now = t.store.get(uid).await.unwrap().unwrap();
    assert_eq!((now.record, now.version), (record.clone(), written));
    let state = t.store.config().state_index();
    let raw = raw_get(t.store.client(), &state, &uid.to_string()).await;
    assert_eq!(raw["found"], true, "{raw}");
    assert_eq!(agent_document(&t, uid).await["sequence_num"], record.sequence_num);
    t.delete().await;
}

/// The state index holds the state blob and nothing Elasticsearch indexes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_index_indexes_nothing() {
    let Some(t) = TestIndex::new(|_| {}).await else { return };
    let state = t.store.config().state_index();
    assert_eq!(state, format!("{}-opampd-state", t.name));
    let response = t
        .store
        .client()
        .indices()
        .get_mapping(IndicesGetMappingParts::Index(&[&state]))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    let mappings = &body[&state]["mappings"];
    assert!(mappings["dynamic"] == json!(false) || mappings["dynamic"] == json!("false"));
    assert!(mappings.get("properties").is_none_or(|p| p == &json!({})), "{mappings}");
    let settings = t
        .store
        .client()
        .indices()
        .get_settings(elasticsearch::indices::IndicesGetSettingsParts::Index(&[&state]))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(settings[&state]["settings"]["index"]["refresh_interval"], "30000ms", "{settings}");
    t.delete().await;
}
