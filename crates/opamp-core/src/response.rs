//! Turning one message and the stored record into the new record and the reply.

use opamp_proto::v1::{
    AgentIdentification, AgentToServer, RetryInfo, ServerErrorResponse, ServerErrorResponseType,
    ServerToAgent, server_error_response,
};
use std::sync::Arc;

use opamp_proto::{Bytes, InstanceUid, agent_flags, server_caps, server_flags};

use crate::drift::{FullStateReason, full_state_reason};
use crate::merge::merge;
use crate::record::{AgentRecord, DEFAULT_PUBLISH_INTERVAL_MS, Enrollment, Timestamp};
use crate::remote_config::{self, ConfigSet, RemoteConfig, RemoteConfigOutcome};

/// What opampd accepts and offers. Offers it cannot make (packages, connection settings) are
/// not advertised.
pub const DEFAULT_SERVER_CAPABILITIES: u64 = server_caps::ACCEPTS_STATUS
    | server_caps::OFFERS_REMOTE_CONFIG
    | server_caps::ACCEPTS_EFFECTIVE_CONFIG;

/// Server-side settings the reply depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    pub capabilities: u64,
    /// The longest a record's view goes unpublished while only its check-in changes (see
    /// [`AgentRecord::published_at`]); 0 publishes on every message.
    pub publish_interval_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            capabilities: DEFAULT_SERVER_CAPABILITIES,
            publish_interval_ms: DEFAULT_PUBLISH_INTERVAL_MS,
        }
    }
}

/// The outcome of one message: the record to write and the reply to send once it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Processed {
    pub record: AgentRecord,
    pub response: ServerToAgent,
    /// Set when the reply asks for the full state, naming the drift rule that fired.
    pub report_full_state: Option<FullStateReason>,
    /// What happened to remote configuration: a config sent, a config newly failed.
    pub remote_config: RemoteConfigOutcome,
}

/// The remote configuration a message is decided against: the configs in force, and the
/// rollout's say on a send that is otherwise due (`permit`, asked at most once per call).
#[derive(Clone, Copy)]
pub struct Remote<'a> {
    pub configs: &'a ConfigSet,
    pub permit: &'a dyn Fn(&RemoteConfig) -> bool,
}

impl Remote<'static> {
    /// No remote configuration at all.
    pub const NONE: Remote<'static> = Remote { configs: &ConfigSet::EMPTY, permit: &always };
}

fn always(_: &RemoteConfig) -> bool {
    true
}

impl std::fmt::Debug for Remote<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("configs", &self.configs.len()).finish_non_exhaustive()
    }
}

/// Why a message is refused whatever its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The agent is enrolled under one policy and authenticated with an enrollment key of
    /// another. Moving an agent between policies is an operator's act (re-enroll it under a new
    /// uid, or delete its record), never a side effect of whichever key it presents.
    PolicyMismatch { enrolled: String, presented: String },
}

/// Checks what the core needs of a decoded message: a 16-byte `instance_uid`.
pub fn validate(msg: &AgentToServer) -> Result<InstanceUid, String> {
    InstanceUid::try_from(&msg.instance_uid[..]).map_err(|e| e.to_string())
}

/// Decides the flags against `stored`, merges `msg` into it and builds the reply.
///
/// `enrollment` is the enrollment key the agent authenticated with (`None` without agent
/// authentication): a new agent, or one enrolled before authentication was on, is bound to its
/// policy; a known agent of another policy is refused. `new_uid` is used only when the agent
/// sets `RequestInstanceUid`; the caller draws it so the core stays deterministic.
///
/// `remote` decides remote configuration (see [`remote_config`]): an agent that accepts it is
/// sent its config when it has neither reported nor been sent that hash, and not in a reply
/// that asks for the full state (its reported hash is not known then).
#[allow(clippy::too_many_arguments)]
pub fn process(
    stored: Option<AgentRecord>,
    uid: InstanceUid,
    msg: &AgentToServer,
    now: Timestamp,
    enrollment: Option<&Arc<Enrollment>>,
    new_uid: impl FnOnce() -> InstanceUid,
    config: &ServerConfig,
    remote: Remote<'_>,
) -> Result<Processed, Refusal> {
    if let (Some(bound), Some(presented)) =
        (stored.as_ref().and_then(|s| s.enrollment.as_deref()), enrollment)
        && bound.policy_id != presented.policy_id
    {
        return Err(Refusal::PolicyMismatch {
            enrolled: bound.policy_id.clone(),
            presented: presented.policy_id.clone(),
        });
    }
    let report_full_state = full_state_reason(stored.as_ref(), msg);
    let stored_status = stored.as_ref().and_then(|s| s.remote_config_status.clone());
    // a copy of pointers and numbers: the view before, to tell whether this message changed it
    let before = stored.clone();
    let mut record = merge(stored, uid, msg, now);
    if record.enrollment.is_none() {
        record.enrollment = enrollment.cloned();
    }
    let (send, remote_config) = remote_config::decide(
        &mut record,
        stored_status.as_deref(),
        remote.configs,
        now,
        report_full_state.is_some(),
        remote.permit,
    );
    let changed = before.is_none_or(|b| !b.same_view(&record));
    if changed || now.saturating_sub(record.published_at) >= config.publish_interval_ms {
        record.published_at = now;
    }
    let mut response = ServerToAgent {
        instance_uid: msg.instance_uid.clone(),
        // AcceptsStatus is mandatory on every reply of a stateless server, so a config that
        // forgot it cannot produce a non-conforming reply.
        capabilities: config.capabilities | server_caps::ACCEPTS_STATUS,
        ..Default::default()
    };
    if report_full_state.is_some() {
        response.flags |= server_flags::REPORT_FULL_STATE;
    }
    response.remote_config = send.map(|c| c.message().clone());
    if msg.flags & agent_flags::REQUEST_INSTANCE_UID != 0 {
        response.agent_identification =
            Some(AgentIdentification { new_instance_uid: new_uid().as_bytes().to_vec().into() });
    }
    Ok(Processed { record, response, report_full_state, remote_config })
}

/// A BadRequest reply: the agent must not retry. Nothing but `instance_uid` accompanies it.
pub fn bad_request(instance_uid: Bytes, message: impl Into<String>) -> ServerToAgent {
    error(instance_uid, ServerErrorResponseType::BadRequest, message.into(), None)
}

/// An Unavailable reply with the time after which the agent may retry.
pub fn unavailable(
    instance_uid: Bytes,
    message: impl Into<String>,
    retry_after_nanos: u64,
) -> ServerToAgent {
    error(
        instance_uid,
        ServerErrorResponseType::Unavailable,
        message.into(),
        Some(retry_after_nanos),
    )
}

fn error(
    instance_uid: Bytes,
    kind: ServerErrorResponseType,
    error_message: String,
    retry_after_nanos: Option<u64>,
) -> ServerToAgent {
    ServerToAgent {
        instance_uid,
        error_response: Some(ServerErrorResponse {
            r#type: kind as i32,
            error_message,
            details: retry_after_nanos.map(|n| {
                server_error_response::Details::RetryInfo(RetryInfo { retry_after_nanoseconds: n })
            }),
        }),
        ..Default::default()
    }
}
