//! Elasticsearch down, stalled or losing answers (issue 3): the agent gets HTTP 503 with
//! Retry-After within the request timeout (never a 401, never a hang), `/readyz` turns 503,
//! nothing is half-written, and service resumes by itself when Elasticsearch is back.
//!
//! A real TCP forwarder sits between opampd and the real cluster (`OPAMPD_TEST_ES_URL`) and is
//! switched to refuse connections, to swallow requests, or to drop ES's answers. The tests read
//! documents straight from the cluster, past the forwarder, to see what was really written.

use std::time::{Duration, Instant};

use crate::common::es::{EsInstance, Outcome, TestIndex, bounded, post, post_unavailable};
use crate::common::forwarder::{Forwarder, Mode};
use crate::common::{full, poll, uid};
use opamp_proto::InstanceUid;
use opamp_proto::v1::AgentToServer;

/// opampd's `--request-timeout` in these tests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The store's readiness probe timeout (`EsConfig::ready_timeout`, not a server flag).
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// Scheduling slack on a shared 2-core box.
const SLACK: Duration = Duration::from_millis(1500);
/// How long the client waits before calling it a hang.
const CLIENT_LIMIT: Duration = Duration::from_secs(10);
const TEST_LIMIT: Duration = Duration::from_secs(90);

/// A fresh index, a forwarder to the cluster and one opampd instance talking through it.
async fn setup() -> Option<(TestIndex, Forwarder, EsInstance)> {
    let index = TestIndex::new()?;
    let fwd = Forwarder::start(&index.es).await;
    let mut config = index.config(&fwd.url());
    config.request_timeout = REQUEST_TIMEOUT;
    config.shutdown_grace = Duration::from_secs(2);
    let server = EsInstance::start(config).await;
    server.wait_ready(Duration::from_secs(30)).await;
    Some((index, fwd, server))
}

/// Switches the forwarder and gives the server's ES client a moment to see its pooled
/// connections cut, so the next request meets the new behaviour rather than a dead socket.
async fn switch(fwd: &Forwarder, mode: Mode) {
    fwd.set(mode);
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// Posts and asserts HTTP 200; returns whether the reply asks for the full state.
async fn accepted(server: &EsInstance, msg: &AgentToServer) -> bool {
    let out = post(&server.opamp_url, msg, CLIENT_LIMIT).await.expect("answered");
    assert_eq!(out.status, 200, "seq {}: {out:?}", msg.sequence_num);
    let reply = out.reply.as_ref().expect("protobuf reply");
    assert!(reply.error_response.is_none(), "{reply:?}");
    out.asks_full_state()
}

/// Posts and asserts the retryable failure: 503, Retry-After, an OpAMP `Unavailable` body,
/// within the request timeout.
async fn unavailable(server: &EsInstance, msg: &AgentToServer) -> Outcome {
    let out = post_unavailable(&server.opamp_url, msg, CLIENT_LIMIT).await;
    assert!(
        out.elapsed <= REQUEST_TIMEOUT + SLACK,
        "answered after {:?}, past the {REQUEST_TIMEOUT:?} request timeout",
        out.elapsed
    );
    out
}

async fn readyz_is_503_in_time(server: &EsInstance) -> Duration {
    let (status, took) = server.readyz().await;
    assert_eq!(status, 503, "readyz while Elasticsearch is unreachable");
    assert!(took <= READY_TIMEOUT + SLACK, "readyz took {took:?}");
    took
}

/// Waits (bounded) until Elasticsearch itself holds `seq` for `uid`.
async fn wait_stored_seq(index: &TestIndex, uid: InstanceUid, seq: u64) {
    let started = Instant::now();
    while index.stored_seq(uid).await != Some(seq) {
        assert!(started.elapsed() < Duration::from_secs(5), "seq {seq} never reached ES");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_down_gets_503_with_retry_after_and_service_resumes_by_itself() {
    let Some((index, fwd, server)) = setup().await else { return };
    bounded(TEST_LIMIT, async {
        let a = uid();
        assert!(!accepted(&server, &full(a, 0)).await);
        assert!(!accepted(&server, &poll(a, 1)).await);

        switch(&fwd, Mode::Refuse).await;
        let took = readyz_is_503_in_time(&server).await;
        // a known agent (its record is cached, so only the write fails) and a new one (the
        // read fails): both are told to retry later
        let known = unavailable(&server, &poll(a, 2)).await;
        let b = uid();
        let new = unavailable(&server, &full(b, 0)).await;
        for (out, u) in [(&known, a), (&new, b)] {
            let echoed = &out.reply.as_ref().unwrap().instance_uid[..];
            assert_eq!(echoed, u.as_bytes(), "a fast failure echoes the instance_uid");
        }
        eprintln!(
            "es refused: readyz {took:?}, known agent {:?}, new agent {:?}",
            known.elapsed, new.elapsed
        );
        let (status, _) = server.api_agent(a).await;
        assert_eq!(status, 503, "the admin API cannot read either");
        assert!(index.state(b).await.is_none(), "nothing written for a message that got 503");
        assert_eq!(index.stored_seq(a).await, Some(1), "the refused write did not apply");

        switch(&fwd, Mode::Forward).await;
        server.wait_ready(Duration::from_secs(15)).await;
        // The 503'd messages never reached Elasticsearch, so the agent's retry of seq 2 is in
        // order: no ReportFullState, and the stored seq is the last message that got a 200.
        assert!(!accepted(&server, &poll(a, 2)).await, "retry after the outage");
        assert!(!accepted(&server, &poll(a, 3)).await);
        assert_eq!(index.stored_seq(a).await, Some(3));
        assert_eq!(server.api_seq(a).await, 3);
        // the new agent's retried enrollment is a clean first enrollment
        assert!(!accepted(&server, &full(b, 0)).await);
        assert_eq!(index.stored_seq(b).await, Some(0));
    })
    .await;
    server.stop().await.expect("clean shutdown after the outage");
    drop(fwd);
    drop(index);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_elasticsearch_gets_503_within_the_request_timeout_and_never_hangs() {
    let Some((index, fwd, server)) = setup().await else { return };
    bounded(TEST_LIMIT, async {
        let a = uid();
        assert!(!accepted(&server, &full(a, 0)).await);
        assert!(!accepted(&server, &poll(a, 1)).await);

        switch(&fwd, Mode::Stall).await;
        // the known agent's write stalls; several new agents' reads stall at once (more than
        // the store's reads in flight, so some wait for a slot): all bounded by the timeout
        let news: Vec<InstanceUid> = (0..8).map(|_| uid()).collect();
        let started = Instant::now();
        let next = poll(a, 2);
        let (known, ready, new) = tokio::join!(
            unavailable(&server, &next),
            readyz_is_503_in_time(&server),
            futures::future::join_all(
                news.iter().map(|u| async { unavailable(&server, &full(*u, 0)).await })
            ),
        );
        eprintln!(
            "es stalled: readyz {ready:?}, known agent {:?}, {} new agents all answered after {:?}",
            known.elapsed,
            new.len(),
            started.elapsed()
        );
        assert!(
            known.elapsed >= REQUEST_TIMEOUT - Duration::from_millis(100),
            "a stalled store is only given up on at the request timeout ({:?})",
            known.elapsed
        );
        // Still stalled: the agent's retry is bounded the same way. Its write queues behind
        // the stalled one for the same document, and its caller gives up at the timeout; the
        // store must then drop it, not send it once Elasticsearch is back (a write applied
        // after its agent was told 503 turns the agent's next retry into a duplicate).
        unavailable(&server, &poll(a, 2)).await;
        for u in &news {
            assert!(index.state(*u).await.is_none(), "nothing written for {u}");
        }
        assert_eq!(index.stored_seq(a).await, Some(1), "the stalled write did not apply");

        switch(&fwd, Mode::Forward).await;
        server.wait_ready(Duration::from_secs(15)).await;
        // nothing of the stalled requests reached Elasticsearch: the retry is in order
        assert!(!accepted(&server, &poll(a, 2)).await, "retry after the stall");
        assert_eq!(index.stored_seq(a).await, Some(2));
        assert_eq!(server.api_seq(a).await, 2);
        for u in &news {
            assert!(!accepted(&server, &full(*u, 0)).await, "retried enrollment of {u}");
        }
    })
    .await;
    server.stop().await.expect("clean shutdown after the stall");
    drop(fwd);
    drop(index);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_applied_while_its_answer_was_lost_is_a_duplicate_and_asks_for_full_state() {
    let Some((index, fwd, server)) = setup().await else { return };
    bounded(TEST_LIMIT, async {
        let a = uid();
        assert!(!accepted(&server, &full(a, 0)).await);
        assert!(!accepted(&server, &poll(a, 1)).await);

        switch(&fwd, Mode::DropAnswers).await;
        readyz_is_503_in_time(&server).await;
        // Elasticsearch applies seq 2, but opampd never hears back: the agent gets 503
        unavailable(&server, &poll(a, 2)).await;
        wait_stored_seq(&index, a, 2).await;

        switch(&fwd, Mode::Forward).await;
        server.wait_ready(Duration::from_secs(15)).await;
        // The agent retries seq 2, which is stored already. The server cannot tell a retry
        // from a duplicate, so (rule 1, duplicates included) it asks for the full state; that
        // is the legitimate "lost track" case, and the agent's full state resyncs it.
        assert!(accepted(&server, &poll(a, 2)).await, "retry of an applied write is flagged");
        assert!(!accepted(&server, &full(a, 3)).await, "the full state is in order");
        assert!(!accepted(&server, &poll(a, 4)).await);
        assert_eq!(index.stored_seq(a).await, Some(4));
        assert_eq!(server.api_seq(a).await, 4);
    })
    .await;
    server.stop().await.expect("clean shutdown");
    drop(fwd);
    drop(index);
}
