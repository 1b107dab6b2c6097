//! A message whose write loses a race to a LATER message of the same agent is dropped, not
//! re-decided and applied over it (issue 9): the agent gave up on it (its instance was paused
//! or overloaded) and moved on, and the later state was acknowledged. A race with the same
//! message (a duplicate on another instance) is still decided again and answered.
//!
//! The race is real: an embedded store, and a store layer that performs "the other instance's"
//! write just before this request's own, so the request's compare-and-swap genuinely fails.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use opamp_core::{AgentRecord, ServerConfig};
use opamp_proto::InstanceUid;
use opamp_store::embedded::EmbeddedStore;
use opamp_store::{
    AgentFilter, AgentStats, AgentStore, Precondition, StoreError, Version, Versioned,
};
use opampd::clock::system_clock;
use opampd::configs::Configs;
use opampd::error::RequestError;
use opampd::service::OpampService;

use crate::common::{full, poll, uid};

/// Passes everything to the embedded store, but before the next `put` writes `interloper`
/// (a message another instance handled) at whatever version is stored.
#[derive(Debug)]
struct Racing {
    inner: Arc<EmbeddedStore>,
    interloper: Mutex<Option<AgentRecord>>,
}

#[async_trait]
impl AgentStore for Racing {
    async fn get(&self, uid: InstanceUid) -> Result<Option<Versioned>, StoreError> {
        self.inner.get(uid).await
    }

    async fn put(&self, record: &AgentRecord, pre: Precondition) -> Result<Version, StoreError> {
        let other = self.interloper.lock().unwrap().take();
        if let Some(other) = other {
            let current = self.inner.get(other.instance_uid).await?.expect("agent stored");
            self.inner.put(&other, Precondition::Version(current.version)).await?;
        }
        self.inner.put(record, pre).await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.inner.ready().await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush().await
    }

    async fn list(
        &self,
        filter: &AgentFilter,
        after: Option<InstanceUid>,
        limit: usize,
    ) -> Result<Vec<AgentRecord>, StoreError> {
        self.inner.list(filter, after, limit).await
    }

    async fn stats(&self, filter: &AgentFilter) -> Result<AgentStats, StoreError> {
        self.inner.stats(filter).await
    }
}

async fn service(dir: &std::path::Path) -> (OpampService, Arc<Racing>) {
    let inner = Arc::new(EmbeddedStore::open(dir).await.expect("store opens"));
    let racing = Arc::new(Racing { inner: inner.clone(), interloper: Mutex::new(None) });
    let clock = system_clock();
    let configs = Configs::new(inner, clock.clone(), Duration::from_secs(2));
    (OpampService::new(racing.clone(), configs, ServerConfig::default(), clock), racing)
}

/// The record another instance wrote for `msg` on top of `stored`.
async fn handled_elsewhere(racing: &Racing, agent: InstanceUid, seq: u64) -> AgentRecord {
    let stored = racing.inner.get(agent).await.unwrap().expect("stored").record;
    AgentRecord { sequence_num: seq, ..stored }
}

#[tokio::test]
async fn a_message_overtaken_by_a_later_one_is_dropped_not_applied_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let (service, racing) = service(dir.path()).await;
    let agent = uid();
    service.handle(&full(agent, 1), None).await.expect("enrolled");
    service.handle(&poll(agent, 2), None).await.expect("heartbeat");

    // message 3 is being handled here while the agent's message 4 lands elsewhere first
    *racing.interloper.lock().unwrap() = Some(handled_elsewhere(&racing, agent, 4).await);
    let outcome = service.handle(&poll(agent, 3), None).await;
    assert!(
        matches!(outcome, Err(RequestError::Unavailable(ref why)) if why.contains("superseded")),
        "{outcome:?}"
    );
    let stored = racing.inner.get(agent).await.unwrap().expect("stored").record;
    assert_eq!(stored.sequence_num, 4, "the later, acknowledged state stays");
}

#[tokio::test]
async fn a_duplicate_of_the_same_message_is_decided_again_and_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (service, racing) = service(dir.path()).await;
    let agent = uid();
    service.handle(&full(agent, 1), None).await.expect("enrolled");

    // the same message 2 written by another instance first: ours re-reads and answers
    *racing.interloper.lock().unwrap() = Some(handled_elsewhere(&racing, agent, 2).await);
    let reply = service.handle(&poll(agent, 2), None).await.expect("answered");
    assert!(reply.error_response.is_none());
    let stored = racing.inner.get(agent).await.unwrap().expect("stored").record;
    assert_eq!(stored.sequence_num, 2);
    // and the agent goes on normally
    service.handle(&poll(agent, 3), None).await.expect("next heartbeat");
    assert_eq!(racing.inner.get(agent).await.unwrap().unwrap().record.sequence_num, 3);
}
