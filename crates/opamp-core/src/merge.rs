//! Merging one message into the stored record without losing what the agent left out.

use std::sync::Arc;

use opamp_proto::v1::{AgentToServer, ComponentHealth};
use opamp_proto::{InstanceUid, agent_flags};

use crate::record::{AgentRecord, AgentStatus, Timestamp, UnenrollReason, Unenrolled};
use crate::redact::redact_effective_config;

/// The record after `msg`: present sub-messages replace the stored ones, absent ones keep them
/// (an effective config is kept redacted, never raw); `sequence_num` and `capabilities` are the
/// received ones; `last_checkin` is `now`. A message asking for a new instance uid marks this
/// record as left behind (`reenrolled`); any other message clears that mark.
pub fn merge(
    stored: Option<AgentRecord>,
    uid: InstanceUid,
    msg: &AgentToServer,
    now: Timestamp,
) -> AgentRecord {
    let mut r = stored.unwrap_or_else(|| AgentRecord::new(uid, now));
    replace(&mut r.agent_description, &msg.agent_description);
    replace(&mut r.health, &msg.health);
    if let Some(config) = &msg.effective_config {
        r.effective_config = Some(Arc::new(redact_effective_config(config)));
    }
    replace(&mut r.remote_config_status, &msg.remote_config_status);
    replace(&mut r.package_statuses, &msg.package_statuses);
    replace(&mut r.custom_capabilities, &msg.custom_capabilities);
    replace(&mut r.available_components, &msg.available_components);
    replace(&mut r.connection_settings_status, &msg.connection_settings_status);

    r.status = if msg.agent_disconnect.is_some() {
        AgentStatus::Disconnected
    } else if let Some(h) = &msg.health {
        status_from_health(h)
    } else if matches!(r.status, AgentStatus::Disconnected | AgentStatus::Offline) {
        // Back after a goodbye without new health: the last known health decides. `Offline` is
        // derived at read time and never meant to be stored; a record that holds it anyway
        // must not read offline while the agent is checking in.
        r.health.as_deref().map_or(AgentStatus::Online, status_from_health)
    } else {
        r.status
    };
    r.unenrolled = (msg.flags & agent_flags::REQUEST_INSTANCE_UID != 0)
        .then_some(Unenrolled { reason: UnenrollReason::Reenrolled, at: now });
    r.adopted = false;
    r.instance_uid = uid;
    r.sequence_num = msg.sequence_num;
    r.capabilities = msg.capabilities;
    r.last_checkin = now;
    r
}

fn status_from_health(h: &ComponentHealth) -> AgentStatus {
    if !h.healthy {
        AgentStatus::Error
    } else if h.status == "StatusRecoverableError" {
        AgentStatus::Degraded
    } else {
        AgentStatus::Online
    }
}

fn replace<T: Clone>(slot: &mut Option<Arc<T>>, new: &Option<T>) {
    if let Some(new) = new {
        *slot = Some(Arc::new(new.clone()));
    }
}
