//! Cold start (issue 9): several opampd instances started at the same moment on an index that
//! does not exist yet, with agents arriving at once. One instance creates the index; the others
//! find it existing or lose the create race. Every one of them must wait for the index's primary
//! shard before it reads or writes, so no agent sees an error (before the fix, the instances that
//! did not create the index answered 503 from `no_shard_available_action_exception` on `_mget`).

use std::time::Duration;

use crate::common::es::{EsInstance, TestIndex, bounded, post};
use crate::common::{full, poll, uid};
use opamp_proto::{InstanceUid, server_flags};
use serde_json::json;

const INSTANCES: usize = 3;
/// Agents per round, all sent at once from their own tasks, spread over the instances.
const AGENTS: usize = 240;
/// Fresh indices tried in a row: the race is won or lost differently each time.
const ROUNDS: usize = 3;
const CLIENT_LIMIT: Duration = Duration::from_secs(30);
const TEST_LIMIT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_started_together_on_a_missing_index_serve_every_agent_without_error() {
    for round in 0..ROUNDS {
        let Some(index) = TestIndex::new() else { return };
        bounded(TEST_LIMIT, cold_start_round(&index, round)).await;
        drop(index);
    }
}

async fn cold_start_round(index: &TestIndex, round: usize) {
    // started together, and no wait for /readyz: the agents arrive while the instances set up
    let instances = futures::future::join_all(
        (0..INSTANCES).map(|_| EsInstance::start(index.config(&index.es))),
    )
    .await;
    let agents: Vec<InstanceUid> = (0..AGENTS).map(|_| uid()).collect();
    let tasks: Vec<_> = agents
        .iter()
        .enumerate()
        .map(|(i, agent)| {
            let url = instances[i % INSTANCES].opamp_url.clone();
            let msg = full(*agent, 0);
            tokio::spawn(async move { post(&url, &msg, CLIENT_LIMIT).await })
        })
        .collect();
    let mut errors = Vec::new();
    for (agent, task) in agents.iter().zip(tasks) {
        match task.await.expect("agent task") {
            Ok(out) if out.status == 200 && !out.asks_full_state() => {}
            Ok(out) => errors.push(format!(
                "{agent}: status {} retry-after {:?} reply {:?}",
                out.status, out.retry_after, out.reply
            )),
            Err(e) => errors.push(format!("{agent}: {e}")),
        }
    }
    assert!(
        errors.is_empty(),
        "round {round}: {} of {AGENTS} agents got an error on a cold start, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );

    // every agent is stored, exactly once (agent documents follow their answers closely)
    let count = async || {
        let query = json!({
            "size": 0, "track_total_hits": true, "query": { "term": { "type": "OPAMP" } }
        });
        index.search(query).await["hits"]["total"]["value"].clone()
    };
    let mut found = count().await;
    for _ in 0..50 {
        if found == AGENTS {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        found = count().await;
    }
    assert_eq!(found, AGENTS, "round {round}: stored agents");
    // and each instance serves the agents' next message in order, and says it is ready
    for (i, agent) in agents.iter().enumerate().take(3 * INSTANCES) {
        let instance = &instances[(i + 1) % INSTANCES];
        let out =
            post(&instance.opamp_url, &poll(*agent, 1), CLIENT_LIMIT).await.expect("answered");
        assert_eq!(out.status, 200, "round {round}: {out:?}");
        let flags = out.reply.as_ref().expect("reply").flags;
        assert_eq!(flags & server_flags::REPORT_FULL_STATE, 0, "round {round}: seq 1 in order");
    }
    for instance in &instances {
        assert_eq!(instance.readyz().await.0, 200, "round {round}: ready after the cold start");
    }
    for instance in instances {
        instance.stop().await.expect("clean shutdown");
    }
}
