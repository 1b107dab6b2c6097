//! The transport-independent OpAMP handler: one decoded `AgentToServer` in, one `ServerToAgent`
//! (or a classified [`RequestError`]) out. Both transports (HTTP and WebSocket) use it; it
//! knows nothing of either.
//!
//! Correctness hinges on one rule: the reply is computed from the exact stored state the write
//! was conditioned on. If the conditional write loses a race, the decision is thrown away and
//! made again against a fresh read.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use opamp_core::{Enrollment, FullStateReason, Refusal, Remote, ServerConfig, Timestamp};
use opamp_proto::v1::{AgentToServer, ServerToAgent};
use opamp_proto::{InstanceUid, Message};
use opamp_store::{AgentStore, Precondition, StoreError};

use crate::clock::Clock;
use crate::configs::Configs;
use crate::error::RequestError;
use crate::telemetry;

/// Attempts at the read-decide-write cycle before answering "unavailable". Each lost race means
/// another writer made progress, so this bounds latency, not correctness.
pub const MAX_CAS_ATTEMPTS: u32 = 5;

/// Handles OpAMP messages against the store. Cheap to clone (handles only).
#[derive(Clone)]
pub struct OpampService {
    store: Arc<dyn AgentStore>,
    configs: Configs,
    server: ServerConfig,
    clock: Clock,
    full_state: Arc<FullStateCounts>,
}

/// The `ReportFullState` requests this instance made since it started, by reason: the same
/// events as `opampd_report_full_state_total`, counted per service (the metrics recorder is one
/// per process, shared by the servers a test starts), for `/api/stats`.
#[derive(Debug, Default)]
pub struct FullStateCounts([AtomicU64; FullStateReason::ALL.len()]);

impl FullStateCounts {
    fn record(&self, reason: FullStateReason) {
        let i = FullStateReason::ALL.iter().position(|r| *r == reason).unwrap_or_default();
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Every reason with its count, in [`FullStateReason::ALL`] order.
    pub fn snapshot(&self) -> [(FullStateReason, u64); FullStateReason::ALL.len()] {
        std::array::from_fn(|i| (FullStateReason::ALL[i], self.0[i].load(Ordering::Relaxed)))
    }
}

impl fmt::Debug for OpampService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpampService")
            .field("store", &self.store)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl OpampService {
    pub fn new(
        store: Arc<dyn AgentStore>,
        configs: Configs,
        server: ServerConfig,
        clock: Clock,
    ) -> Self {
        Self { store, configs, server, clock, full_state: Arc::default() }
    }

    /// The `ReportFullState` requests this service made since it started.
    pub fn full_state_counts(&self) -> &FullStateCounts {
        &self.full_state
    }

    pub fn store(&self) -> &Arc<dyn AgentStore> {
        &self.store
    }

    /// The remote configs of this instance.
    pub fn configs(&self) -> &Configs {
        &self.configs
    }

    pub fn now(&self) -> Timestamp {
        (self.clock)()
    }

    /// Decodes a protobuf payload; anything undecodable is a BadRequest.
    pub fn decode(payload: &[u8]) -> Result<AgentToServer, RequestError> {
        AgentToServer::decode(payload)
            .map_err(|e| RequestError::BadRequest(format!("malformed AgentToServer: {e}")))
    }

    /// Encodes a reply, refusing to send one over the message limit.
    pub fn encode(reply: &ServerToAgent, limit: usize) -> Result<Vec<u8>, RequestError> {
        let len = reply.encoded_len();
        if len > limit {
            tracing::error!(len, limit, "reply exceeds the message limit");
            return Err(RequestError::Internal(format!("reply of {len} bytes over limit")));
        }
        Ok(reply.encode_to_vec())
    }

    /// Answers one message: validate, read, decide, conditionally write, retry on conflict.
    /// `enrollment` is the enrollment key the request authenticated with (`None` when agent
    /// authentication is off); the core binds a new agent to its policy and refuses a known
    /// agent of another policy.
    pub async fn handle(
        &self,
        msg: &AgentToServer,
        enrollment: Option<&Arc<Enrollment>>,
    ) -> Result<ServerToAgent, RequestError> {
        let uid = opamp_core::validate(msg).map_err(RequestError::BadRequest)?;
        let configs = self.configs.snapshot();
        let permit = |c: &opamp_core::remote_config::RemoteConfig| self.configs.permit(c);
        for attempt in 1..=MAX_CAS_ATTEMPTS {
            // a full status report is how every agent starts: the store may look for a new
            // agent's two documents at once
            let read = if msg.agent_description.is_some() {
                self.store.get_likely_new(uid).await
            } else {
                self.store.get(uid).await
            };
            let stored = read.map_err(|e| store_failure(uid, "get", e))?;
            let (stored, precondition) = match stored {
                Some(v) => (Some(v.record), Precondition::Version(v.version)),
                None => (None, Precondition::Absent),
            };
            if attempt > 1
                && let Some(newer) = stored.as_ref().filter(|s| s.sequence_num > msg.sequence_num)
            {
                // The write that beat ours carried a later message of this agent: the agent has
                // moved on (it gave up on this request, e.g. while this instance was paused), so
                // applying this one now would put an older state over a newer, acknowledged one.
                tracing::debug!(
                    instance_uid = %uid,
                    sequence_num = msg.sequence_num,
                    stored = newer.sequence_num,
                    "message superseded by a later one while it was being handled; dropped"
                );
                metrics::counter!(telemetry::SUPERSEDED_TOTAL).increment(1);
                return Err(RequestError::Unavailable("superseded by a later message".into()));
            }
            let processed = opamp_core::process(
                stored,
                uid,
                msg,
                self.now(),
                enrollment,
                InstanceUid::new_v7,
                &self.server,
                Remote { configs: &configs, permit: &permit },
            )
            .map_err(|refusal| refused(uid, refusal))?;
            let put = self.store.put(&processed.record, precondition).await;
            let remote = processed.remote_config;
            if put.is_err()
                && remote.sent.is_some()
                && let Some(desired) = &processed.record.desired_config
            {
                // the send did not happen: its rollout slot is free again
                self.configs.return_slot(desired);
            }
            match put {
                Ok(_) => {
                    if let Some(reason) = processed.report_full_state {
                        telemetry::record_full_state(reason);
                        self.full_state.record(reason);
                    }
                    if remote.sent.is_some() {
                        metrics::counter!(telemetry::REMOTE_CONFIG_SENT_TOTAL).increment(1);
                    }
                    if let Some(failed) = remote.newly_failed
                        && let Some(desired) = &processed.record.desired_config
                        && desired.hash == failed
                    {
                        self.configs.record_failure(desired);
                    }
                    tracing::debug!(
                        instance_uid = %uid,
                        sequence_num = msg.sequence_num,
                        report_full_state = processed.report_full_state.map(|r| r.as_str()),
                        remote_config_sent = remote.sent.is_some(),
                        attempt,
                        "message applied"
                    );
                    return Ok(processed.response);
                }
                Err(StoreError::Conflict) => {
                    metrics::counter!(telemetry::CAS_RETRIES_TOTAL).increment(1);
                    tracing::debug!(instance_uid = %uid, attempt, "cas conflict, deciding again");
                }
                Err(e) => return Err(store_failure(uid, "put", e)),
            }
        }
        tracing::warn!(instance_uid = %uid, attempts = MAX_CAS_ATTEMPTS, "cas retries exhausted");
        Err(RequestError::Unavailable("write contention".into()))
    }
}

fn refused(uid: InstanceUid, refusal: Refusal) -> RequestError {
    match refusal {
        Refusal::PolicyMismatch { enrolled, presented } => {
            tracing::warn!(
                instance_uid = %uid,
                enrolled_policy = %enrolled,
                presented_policy = %presented,
                "agent refused: its enrollment key belongs to another policy"
            );
            RequestError::Forbidden("agent is enrolled under another policy".into())
        }
    }
}

/// How often a store failure is logged at most (per kind: transient or not); the lines in
/// between are counted in the next one. Every failure is still in the metrics.
const STORE_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(5);

fn store_failure(uid: InstanceUid, op: &'static str, err: StoreError) -> RequestError {
    static TRANSIENT: OnceLock<telemetry::LogLimiter> = OnceLock::new();
    static FAILED: OnceLock<telemetry::LogLimiter> = OnceLock::new();
    let limiter = |cell: &'static OnceLock<telemetry::LogLimiter>| {
        cell.get_or_init(|| telemetry::LogLimiter::new(STORE_FAILURE_LOG_INTERVAL))
    };
    if err.is_transient() {
        if let Some(held_back) = limiter(&TRANSIENT).allow() {
            tracing::warn!(instance_uid = %uid, op, error = %err, held_back, "store unavailable");
        }
    } else if let Some(held_back) = limiter(&FAILED).allow() {
        tracing::error!(instance_uid = %uid, op, error = %err, held_back, "store failed");
    }
    RequestError::from(err)
}

/// The `instance_uid` bytes to echo in an error reply (empty when undecodable).
pub fn echo_uid(msg: Option<&AgentToServer>) -> Bytes {
    msg.map(|m| m.instance_uid.clone()).unwrap_or_default()
}
