//! Many opampd instances on one Elasticsearch index (issue 3): two real servers on 127.0.0.1:0,
//! each with its OWN `ElasticsearchStore` and moka cache, exactly as `--store elasticsearch`
//! builds them, driven by a real HTTP client against a real cluster (`OPAMPD_TEST_ES_URL`).
//!
//! What must hold however an agent's messages are spread over instances: no false and no missed
//! `ReportFullState`, `sequence_num` never lost or going backwards, and a stale cache entry is
//! always caught by the compare-and-swap and decided again against the fresh state.

use std::time::Duration;

use crate::common::es::{EsInstance, Rng, TestIndex, bounded};
use crate::common::{full, poll, send, uid};
use opamp_proto::v1::{
    AgentConfigFile, AgentConfigMap, AgentDescription, AgentDisconnect, AgentToServer, AnyValue,
    ComponentHealth, EffectiveConfig, KeyValue, any_value,
};
use opamp_proto::{InstanceUid, agent_caps, server_flags};
use serde_json::json;

const TEST_LIMIT: Duration = Duration::from_secs(120);

/// Two instances on a fresh index, or `None` when the Elasticsearch tests are skipped.
async fn two_instances() -> Option<(TestIndex, EsInstance, EsInstance)> {
    let index = TestIndex::new()?;
    let a = EsInstance::start(index.config(&index.es)).await;
    let b = EsInstance::start(index.config(&index.es)).await;
    a.wait_ready(Duration::from_secs(30)).await;
    b.wait_ready(Duration::from_secs(30)).await;
    Some((index, a, b))
}

async fn stop(instances: impl IntoIterator<Item = EsInstance>) {
    for i in instances {
        i.stop().await.expect("clean shutdown");
    }
}

fn flagged(reply: &opamp_proto::v1::ServerToAgent) -> bool {
    reply.flags & server_flags::REPORT_FULL_STATE != 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternating_instances_never_flag_an_in_order_agent() {
    let Some((index, a, b)) = two_instances().await else { return };
    bounded(TEST_LIMIT, async {
        const MESSAGES: u64 = 40;
        let agent = uid();
        let before = (a.es_stats(), b.es_stats());
        for seq in 0..MESSAGES {
            let (to, name) = if seq % 2 == 0 { (&a, "A") } else { (&b, "B") };
            let msg = if seq == 0 { full(agent, 0) } else { poll(agent, seq) };
            let reply = send(&to.opamp_url, &msg).await;
            assert!(!flagged(&reply), "false ReportFullState for seq {seq} on instance {name}");
        }
        let last = MESSAGES - 1;
        assert_eq!(a.api_seq(agent).await, last, "instance A's admin API");
        assert_eq!(b.api_seq(agent).await, last, "instance B's admin API");
        assert_eq!(index.stored_seq(agent).await, Some(last), "the document in Elasticsearch");

        // Every message from the third on found its instance's cache one write behind (the
        // other instance wrote in between): each is one lost CAS, re-read and decided again.
        let conflicts = (a.es_stats().conflicts - before.0.conflicts)
            + (b.es_stats().conflicts - before.1.conflicts);
        assert_eq!(conflicts, MESSAGES - 2, "stale cache entries caught by the CAS");
        assert!(a.cache_stats().hits > 0 && b.cache_stats().hits > 0, "caches were used");
    })
    .await;
    stop([a, b]).await;
    drop(index);
}

/// One agent's race: every round the same next message goes to both instances at once, then
/// the agent answers the ReportFullState it got with its full state (next seq), as a real agent
/// does. Returns the last seq sent.
async fn race_rounds(a: &EsInstance, b: &EsInstance, agent: InstanceUid, rounds: u64) -> u64 {
    // the enrollment itself races too: one create wins, the other is a duplicate of it
    let enroll = full(agent, 0);
    let (x, y) = tokio::join!(send(&a.opamp_url, &enroll), send(&b.opamp_url, &enroll));
    assert_eq!(
        u8::from(flagged(&x)) + u8::from(flagged(&y)),
        1,
        "racing enrollment: exactly one reply is the duplicate"
    );
    let mut seq = 0;
    let mut rng = Rng::new(u64::from_le_bytes(agent.as_bytes()[8..].try_into().unwrap()));
    for round in 0..rounds {
        seq += 1;
        let msg = poll(agent, seq);
        let (x, y) = tokio::join!(send(&a.opamp_url, &msg), send(&b.opamp_url, &msg));
        // the first write applied was decided against seq-1 (in order); the other lost its
        // CAS, re-read seq and is a duplicate of it
        assert_ne!(
            flagged(&x),
            flagged(&y),
            "round {round} (seq {seq}): exactly one reply must be flagged, got A={} B={}",
            flagged(&x),
            flagged(&y)
        );
        // the agent got a ReportFullState: its next message is its full state, seq+1
        seq += 1;
        let to = if rng.chance(50) { a } else { b };
        let reply = send(&to.opamp_url, &full(agent, seq)).await;
        assert!(!flagged(&reply), "round {round}: full state after the race (seq {seq}) flagged");
    }
    seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_duplicates_are_accepted_once_and_flagged_once() {
    let Some((index, a, b)) = two_instances().await else { return };
    bounded(TEST_LIMIT, async {
        let agent = uid();
        let last = race_rounds(&a, &b, agent, 30).await;
        assert_eq!(index.stored_seq(agent).await, Some(last));
        assert_eq!(a.api_seq(agent).await, last);
        assert_eq!(b.api_seq(agent).await, last);
        // and the agent carries on normally on either instance
        assert!(!flagged(&send(&b.opamp_url, &poll(agent, last + 1)).await));
        assert!(!flagged(&send(&a.opamp_url, &poll(agent, last + 2)).await));
        assert_eq!(index.stored_seq(agent).await, Some(last + 2));
    })
    .await;
    stop([a, b]).await;
    drop(index);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_agents_racing_at_once_are_each_flagged_exactly_once_per_race() {
    let Some((index, a, b)) = two_instances().await else { return };
    bounded(TEST_LIMIT, async {
        const AGENTS: usize = 8;
        const ROUNDS: u64 = 15;
        let agents: Vec<InstanceUid> = (0..AGENTS).map(|_| uid()).collect();
        let lasts = futures::future::join_all(
            agents.iter().map(|agent| race_rounds(&a, &b, *agent, ROUNDS)),
        )
        .await;
        for (agent, last) in agents.iter().zip(lasts) {
            assert_eq!(last, 2 * ROUNDS);
            assert_eq!(index.stored_seq(*agent).await, Some(last), "agent {agent}");
        }
    })
    .await;
    stop([a, b]).await;
    drop(index);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_cache_entry_is_caught_by_the_cas_and_decided_against_fresh_state() {
    let Some((index, a, b)) = two_instances().await else { return };
    bounded(TEST_LIMIT, async {
        let agent = uid();
        // A enrolls the agent and caches it at seq 1
        assert!(!flagged(&send(&a.opamp_url, &full(agent, 0)).await));
        assert!(!flagged(&send(&a.opamp_url, &poll(agent, 1)).await));
        // B takes several messages; A's cached entry is now four writes behind
        for seq in 2..=5 {
            assert!(!flagged(&send(&b.opamp_url, &poll(agent, seq)).await), "seq {seq} on B");
        }
        let retries_before = a.counter("opampd_cas_retries_total").await;
        let (es_before, cache_before) = (a.es_stats(), a.cache_stats());

        // A's cache says seq 1, so seq 6 looks like a gap; the CAS must catch that and the
        // decision must be made again against seq 5: in order, no flag
        let reply = send(&a.opamp_url, &poll(agent, 6)).await;
        assert!(!flagged(&reply), "false ReportFullState from a stale cache entry");

        let (es_after, cache_after) = (a.es_stats(), a.cache_stats());
        assert_eq!(cache_after.hits - cache_before.hits, 1, "the stale entry was served");
        assert_eq!(es_after.conflicts - es_before.conflicts, 1, "exactly one lost CAS on A");
        assert_eq!(cache_after.misses - cache_before.misses, 1, "then one fresh read");
        // the recorder is process-wide, so other tests may add to it; this one added >= 1
        let retries_after = a.counter("opampd_cas_retries_total").await;
        assert!(retries_after > retries_before, "cas retries {retries_before} -> {retries_after}");

        assert_eq!(index.stored_seq(agent).await, Some(6));
        // B's cached entry (seq 5) is stale now; its admin API must show the stored truth
        assert_eq!(b.api_seq(agent).await, 6, "B's admin API serves a stale cache entry");
        assert_eq!(a.api_seq(agent).await, 6);

        // A's entry is stale again after B writes seq 7: it is caught the same way
        assert!(!flagged(&send(&b.opamp_url, &poll(agent, 7)).await));
        let before = a.es_stats().conflicts;
        assert!(!flagged(&send(&a.opamp_url, &poll(agent, 8)).await), "seq 8 on A");
        assert_eq!(a.es_stats().conflicts - before, 1);
        // and a real gap is still a gap whatever the caches hold
        assert!(flagged(&send(&b.opamp_url, &poll(agent, 10)).await), "missed gap after stale");
        assert_eq!(index.stored_seq(agent).await, Some(10));
    })
    .await;
    stop([a, b]).await;
    drop(index);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_agents_spread_over_instances_lose_no_update_and_get_exact_flags() {
    let Some((index, a, b)) = two_instances().await else { return };
    bounded(TEST_LIMIT, async {
        const AGENTS: usize = 24;
        const MESSAGES: usize = 30;
        let instances = [&a, &b];
        let runs = (0..AGENTS).map(|n| {
            async move {
                let agent = uid();
                let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15 ^ n as u64);
                let (mut false_flags, mut missed_flags, mut gaps) = (0u32, 0u32, 0u32);
                let mut seq = 0;
                let mut msg = full(agent, 0);
                let mut expect_flag = false;
                let mut last_sent = 0;
                for i in 0..MESSAGES {
                    let to = instances[(rng.next() % 2) as usize];
                    last_sent = msg.sequence_num;
                    let got = flagged(&send(&to.opamp_url, &msg).await);
                    match (expect_flag, got) {
                        (false, true) => false_flags += 1,
                        (true, false) => missed_flags += 1,
                        _ => {}
                    }
                    // next message: after a flag, the full state; else a heartbeat, sometimes
                    // after a few lost messages (an injected gap)
                    if got {
                        seq += 1;
                        msg = full(agent, seq);
                        expect_flag = false;
                    } else if i > 0 && rng.chance(15) {
                        seq += 2 + rng.next() % 3;
                        gaps += 1;
                        msg = poll(agent, seq);
                        expect_flag = true;
                    } else {
                        seq += 1;
                        msg = poll(agent, seq);
                        expect_flag = false;
                    }
                }
                (agent, last_sent, false_flags, missed_flags, gaps)
            }
        });
        let results = futures::future::join_all(runs).await;
        let mut total_gaps = 0;
        for (agent, last_sent, false_flags, missed_flags, gaps) in results {
            assert_eq!(false_flags, 0, "agent {agent}: false ReportFullState");
            assert_eq!(missed_flags, 0, "agent {agent}: missed ReportFullState");
            assert_eq!(index.stored_seq(agent).await, Some(last_sent), "agent {agent} in ES");
            assert_eq!(a.api_seq(agent).await, last_sent, "agent {agent} via A");
            assert_eq!(b.api_seq(agent).await, last_sent, "agent {agent} via B");
            total_gaps += gaps;
        }
        assert!(total_gaps > 0, "the spread injected no gap; the test proves nothing about them");
    })
    .await;
    stop([a, b]).await;
    drop(index);
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_written_through_either_instance_are_fleet_readable() {
    let Some((index, a, b)) = two_instances().await else { return };
    bounded(TEST_LIMIT, async {
        let agent = uid();
        let caps = agent_caps::REPORTS_STATUS
            | agent_caps::REPORTS_HEALTH
            | agent_caps::REPORTS_EFFECTIVE_CONFIG
            | agent_caps::ACCEPTS_RESTART_COMMAND;
        let config = AgentConfigMap {
            config_map: [(
                String::new(),
                AgentConfigFile {
                    body: b"receivers: {}\n".to_vec().into(),
                    content_type: "text/yaml".into(),
                    ..Default::default()
                },
            )]
            .into(),
        };
        let enroll = AgentToServer {
            instance_uid: agent.as_bytes().to_vec().into(),
            sequence_num: 0,
            capabilities: caps,
            agent_description: Some(AgentDescription {
                identifying_attributes: vec![
                    kv("service.name", "otelcol-contrib"),
                    kv("service.version", "0.120.0"),
                ],
                non_identifying_attributes: vec![kv("host.name", "web-7"), kv("os.type", "linux")],
            }),
            health: Some(ComponentHealth { healthy: true, ..Default::default() }),
            effective_config: Some(EffectiveConfig { config_map: Some(config) }),
            ..Default::default()
        };
        assert!(!flagged(&send(&a.opamp_url, &enroll).await));

        let doc = index.published(agent, 0).await;
        let id = agent.to_string();
        assert_eq!(doc["_id"], id.as_str(), "_id is the canonical uuid");
        let s = &doc["_source"];
        assert_eq!(s["agent"]["id"], id.as_str());
        assert_eq!(s["agent"]["version"], "0.120.0");
        assert_eq!(s["type"], "OPAMP");
        assert_eq!(s["active"], true);
        assert_eq!(s["last_checkin_status"], "online");
        assert_eq!(s["sequence_num"], 0);
        assert_eq!(
            s["capabilities"],
            json!([
                "ReportsStatus",
                "ReportsEffectiveConfig",
                "AcceptsRestartCommand",
                "ReportsHealth"
            ])
        );
        assert_eq!(s["identifying_attributes"]["service.name"], "otelcol-contrib");
        assert_eq!(s["non_identifying_attributes"]["host.name"], "web-7");
        assert_eq!(s["local_metadata"]["host"]["hostname"], "web-7");
        assert_eq!(s["local_metadata"]["elastic"]["agent"]["id"], id.as_str());
        assert_eq!(s["policy_revision_idx"], 1);
        for field in ["enrolled_at", "last_checkin", "updated_at"] {
            let at = s[field].as_str().unwrap_or_default();
            assert!(at.len() >= 20 && at.ends_with('Z') && at.contains('T'), "{field}: {at:?}");
        }
        assert!(s["opampd"]["schema_version"].is_u64(), "opampd state is versioned");

        // a heartbeat through B reporting unhealthy: the document follows, fleet fields too
        let unhealthy = AgentToServer {
            capabilities: caps,
            health: Some(ComponentHealth {
                healthy: false,
                last_error: "exporter failing".into(),
                ..Default::default()
            }),
            ..poll(agent, 1)
        };
        assert!(!flagged(&send(&b.opamp_url, &unhealthy).await));
        // a change is published at once (a heartbeat alone at most every --es-checkin-interval)
        let s = index.published(agent, 1).await["_source"].clone();
        assert_eq!(s["sequence_num"], 1);
        assert_eq!(s["last_checkin_status"], "error");
        assert_eq!(s["last_checkin_message"], "exporter failing");
        assert_eq!(s["agent"]["version"], "0.120.0", "compressed message keeps the description");

        // disconnect through A (whose cache is stale): the document says so
        let bye = AgentToServer {
            capabilities: caps,
            agent_disconnect: Some(AgentDisconnect {}),
            ..poll(agent, 2)
        };
        assert!(!flagged(&send(&a.opamp_url, &bye).await));
        let s = index.published(agent, 2).await["_source"].clone();
        assert_eq!(
            (s["sequence_num"].clone(), s["last_checkin_status"].clone()),
            (json!(2), json!("disconnected"))
        );

        // and a Fleet-style query (after a refresh, as Kibana lists agents) finds it
        let found = index
            .search(json!({"query": {"bool": {"filter": [
                {"term": {"type": "OPAMP"}},
                {"term": {"agent.id": id}},
                {"term": {"last_checkin_status": "disconnected"}}
            ]}}}))
            .await;
        let hits = found["hits"]["hits"].as_array().cloned().unwrap_or_default();
        assert_eq!(hits.len(), 1, "{found}");
        assert_eq!(hits[0]["_id"], agent.to_string().as_str());
    })
    .await;
    stop([a, b]).await;
    drop(index);
}
