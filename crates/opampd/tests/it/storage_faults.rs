//! Storage faults (issue 9): the disk under the embedded store fills up, and the Elasticsearch
//! index turns read-only (the flood-stage disk watermark's block). Either way an agent gets 503
//! with Retry-After and an in-band `Unavailable` (never a 500), nothing acknowledged is damaged,
//! nothing refused is applied, and service resumes by itself once there is room again.

use std::time::{Duration, Instant};

use crate::common::es::{EsInstance, Outcome, TestIndex, bounded, post};
use crate::common::{TestServer, client, error_type, full, poll, uid};
use opamp_proto::InstanceUid;
use opamp_proto::v1::{AgentToServer, AnyValue, KeyValue, ServerErrorResponseType, any_value};
use opamp_store::conformance::SmallDisk;
use opampd::config::Config;
use serde_json::{Value, json};

const CLIENT_LIMIT: Duration = Duration::from_secs(15);
const TEST_LIMIT: Duration = Duration::from_secs(120);

/// A full report carrying about `pad` bytes, so a few of them need fresh disk space.
fn big(uid: InstanceUid, seq: u64, pad: usize) -> AgentToServer {
    let mut msg = full(uid, seq);
    let description = msg.agent_description.get_or_insert_with(Default::default);
    description.non_identifying_attributes.push(KeyValue {
        key: "padding".into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue("x".repeat(pad))) }),
    });
    msg
}

/// The retryable refusal: 503, a Retry-After, an in-band `Unavailable` echoing the uid.
fn assert_unavailable(out: &Outcome, msg: &AgentToServer) {
    assert_eq!(out.status, 503, "a storage fault is retryable, never a 500: {out:?}");
    let retry_after: u64 = out.retry_after.as_deref().expect("Retry-After").parse().unwrap();
    assert!(retry_after > 0);
    let reply = out.reply.as_ref().expect("protobuf body");
    assert_eq!(error_type(reply), Some(ServerErrorResponseType::Unavailable));
    assert_eq!(reply.instance_uid, msg.instance_uid);
}

/// Posts and returns whether the reply (a 200) asks for the full state.
async fn accepted(url: &str, msg: &AgentToServer) -> bool {
    let out = post(url, msg, CLIENT_LIMIT).await.expect("answered");
    assert_eq!(out.status, 200, "seq {}: {out:?}", msg.sequence_num);
    out.asks_full_state()
}

/// `sequence_num` of `uid` as the admin API reads it from the store.
async fn api_seq(admin: &str, uid: InstanceUid) -> Option<u64> {
    let resp = client().get(format!("{admin}/api/agents/{uid}")).send().await.expect("admin api");
    match resp.status().as_u16() {
        200 => {
            let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
            body["sequence_num"].as_u64()
        }
        404 => None,
        other => panic!("GET /api/agents/{uid}: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_embedded_store_gets_503_and_service_resumes_by_itself() {
    let Some(disk) = SmallDisk::mount("8m") else { return };
    let server = TestServer::start_with(Config::embedded(disk.path())).await;
    bounded(TEST_LIMIT, async {
        let url = server.opamp_url.clone();
        let known: Vec<InstanceUid> = (0..10).map(|_| uid()).collect();
        for a in &known {
            assert!(!accepted(&url, &big(*a, 0, 8 << 10)).await);
            assert!(!accepted(&url, &poll(*a, 1)).await);
        }

        let filler = disk.fill();
        // new agents with big reports until the disk refuses one
        let mut refused = None;
        for _ in 0..200 {
            let msg = big(uid(), 0, 64 << 10);
            let out = post(&url, &msg, CLIENT_LIMIT).await.expect("answered");
            if out.status != 200 {
                assert_unavailable(&out, &msg);
                refused = Some(msg);
                break;
            }
        }
        let refused = refused.expect("the full disk refused a write");
        // a known agent's heartbeat is refused the same way while the disk is full
        let heartbeat = poll(known[0], 2);
        let out = post(&url, &heartbeat, CLIENT_LIMIT).await.expect("answered");
        if out.status != 200 {
            assert_unavailable(&out, &heartbeat);
        }
        let heartbeat_applied = out.status == 200;

        std::fs::remove_file(&filler).expect("free the disk");
        // the agents' retries succeed by themselves once there is room
        let started = Instant::now();
        loop {
            let out = post(&url, &refused, CLIENT_LIMIT).await.expect("answered");
            if out.status == 200 {
                assert!(!out.asks_full_state(), "the retried enrollment is a clean first one");
                break;
            }
            assert_unavailable(&out, &refused);
            assert!(started.elapsed() < Duration::from_secs(20), "no recovery");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !heartbeat_applied {
            assert!(!accepted(&url, &heartbeat).await, "the retried heartbeat is in order");
        }
        for a in &known[1..] {
            assert_eq!(api_seq(&server.admin_url, *a).await, Some(1), "acknowledged state kept");
            assert!(!accepted(&url, &poll(*a, 2)).await, "and in order");
        }
    })
    .await;
    server.stop().await.expect("clean shutdown");
    drop(disk);
}

/// Sets or lifts `index.blocks.read_only_allow_delete`, the block Elasticsearch puts on every
/// index of a node whose disk passes the flood-stage watermark: the agent index and the state
/// index opampd derives from its name.
async fn set_read_only(index: &TestIndex, on: bool) {
    let url = format!("{}{},{}-opampd-state/_settings", index.es, index.name, index.name);
    let value = if on { json!(true) } else { Value::Null };
    let resp = client()
        .put(&url)
        .header("content-type", "application/json")
        .body(json!({ "index.blocks.read_only_allow_delete": value }).to_string())
        .send()
        .await
        .expect("put settings");
    assert!(resp.status().is_success(), "set read-only {on}: {}", resp.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_elasticsearch_index_gets_503_and_writes_resume_when_the_block_is_lifted() {
    let Some(index) = TestIndex::new() else { return };
    let server = EsInstance::start(index.config(&index.es)).await;
    server.wait_ready(Duration::from_secs(30)).await;
    bounded(TEST_LIMIT, async {
        let url = server.opamp_url.clone();
        let a = uid();
        assert!(!accepted(&url, &full(a, 0)).await);
        assert!(!accepted(&url, &poll(a, 1)).await);

        set_read_only(&index, true).await;
        let blocked_before = server.counter("opampd_es_writes_blocked_total").await;
        let b = uid();
        for msg in [poll(a, 2), full(b, 0)] {
            let out = post(&url, &msg, CLIENT_LIMIT).await.expect("answered");
            assert_unavailable(&out, &msg);
        }
        assert!(server.counter("opampd_es_writes_blocked_total").await >= blocked_before + 2);
        assert_eq!(index.stored_seq(a).await, Some(1), "the refused write did not apply");
        assert!(index.state(b).await.is_none(), "the refused enrollment did not apply");
        assert_eq!(server.readyz().await.0, 200, "reads work: the instance stays in rotation");

        set_read_only(&index, false).await;
        assert!(!accepted(&url, &poll(a, 2)).await, "the retry is in order");
        assert!(!accepted(&url, &full(b, 0)).await, "the retried enrollment is clean");
        assert_eq!(index.stored_seq(a).await, Some(2));
        assert_eq!(index.stored_seq(b).await, Some(0));
    })
    .await;
    // lifted already unless the test failed; deleting the index works under the block anyway
    server.stop().await.expect("clean shutdown");
    drop(index);
}
