//! Oracle of the `agent_to_server` fuzz target: bytes from the network go through what the
//! service does with them (decode, validate, process against several stored states) and every
//! step must classify, never panic, and keep the core's promises (the reply echoes the uid and
//! flags exactly the drift rule that fired, absent sub-messages are kept, effective configs are
//! kept only redacted, the next in-sequence message is not asked for its full state).
//!
//! Shared by the stable harness (`super`) and `fuzz/fuzz_targets/agent_to_server.rs`: it uses
//! external crates only.

use std::sync::Arc;

use fuzz_support::arb::scrub_nan;
use opamp_core::redact::{redact_effective_config, redacted_json};
use opamp_core::{
    AgentRecord, AgentStatus, Enrollment, FullStateReason, Refusal, Remote, ServerConfig,
    full_state_reason, process, validate,
};
use opamp_proto::v1::{AgentDescription, AgentToServer, ComponentHealth, ServerToAgent};
use opamp_proto::{Bytes, InstanceUid, Message, agent_flags, server_caps, server_flags};

pub const NOW: u64 = 1_787_306_400_000;
const NEW_UID: InstanceUid = InstanceUid::from_bytes([0xee; 16]);

/// Decodes, validates and processes `data` as the service would; `true` when it decoded.
pub fn check(data: &[u8]) -> bool {
    let Ok(mut msg) = AgentToServer::decode(data) else { return false };
    scrub_nan(&mut msg);
    let again = AgentToServer::decode(msg.encode_to_vec().as_slice())
        .expect("a decoded message re-encodes to a decodable one");
    assert_eq!(again, msg, "decode(encode(decode(bytes))) == decode(bytes)");
    let Ok(uid) = validate(&msg) else {
        assert_ne!(msg.instance_uid.len(), 16, "a 16-byte uid is valid");
        return true;
    };
    assert_eq!(&uid.as_bytes()[..], &msg.instance_uid[..]);
    for stored in stored_states(uid, msg.sequence_num) {
        for policy in [None, Some("policy-a")] {
            let enrollment = policy.map(|p| Arc::new(enrolled(p)));
            check_process(stored.clone(), uid, &msg, NOW, enrollment.as_ref());
        }
    }
    true
}

fn enrolled(policy: &str) -> Enrollment {
    Enrollment { api_key_id: "kid".into(), policy_id: policy.into(), namespaces: vec![] }
}

/// No record; one in sequence (bound to policy-a, with a description to keep); one that said
/// goodbye; one adopted from fleet-server under another policy (refused with policy-a).
fn stored_states(uid: InstanceUid, seq: u64) -> [Option<AgentRecord>; 4] {
    let base = AgentRecord::new(uid, NOW - 60_000);
    let in_sequence = AgentRecord {
        sequence_num: seq.wrapping_sub(1),
        enrollment: Some(Arc::new(enrolled("policy-a"))),
        agent_description: Some(Arc::new(AgentDescription::default())),
        health: Some(Arc::new(ComponentHealth {
            healthy: false,
            status: "StatusPermanentError".into(),
            ..Default::default()
        })),
        ..base.clone()
    };
    let gone = AgentRecord { sequence_num: 41, status: AgentStatus::Disconnected, ..base.clone() };
    let adopted = AgentRecord {
        sequence_num: seq,
        adopted: true,
        enrollment: Some(Arc::new(enrolled("policy-b"))),
        ..base
    };
    [None, Some(in_sequence), Some(gone), Some(adopted)]
}

/// Runs `process` and checks its outcome against the rules stated in the core's docs; returns
/// the record to write (`None` when refused). `msg` must hold no NaN (see `scrub_nan`).
pub fn check_process(
    stored: Option<AgentRecord>,
    uid: InstanceUid,
    msg: &AgentToServer,
    now: u64,
    enrollment: Option<&Arc<Enrollment>>,
) -> Option<AgentRecord> {
    let want_reason = full_state_reason(stored.as_ref(), msg);
    let bound = stored.as_ref().and_then(|s| s.enrollment.clone());
    let result = process(
        stored.clone(),
        uid,
        msg,
        now,
        enrollment,
        || NEW_UID,
        &ServerConfig::default(),
        Remote::NONE,
    );
    let p = match (bound.as_deref(), enrollment) {
        (Some(b), Some(e)) if b.policy_id != e.policy_id => {
            let want = Refusal::PolicyMismatch {
                enrolled: b.policy_id.clone(),
                presented: e.policy_id.clone(),
            };
            assert_eq!(result, Err(want), "another policy's key is refused");
            return None;
        }
        _ => result.expect("only a policy mismatch is refused"),
    };

    let r = &p.record;
    assert_eq!(r.instance_uid, uid);
    assert_eq!(r.sequence_num, msg.sequence_num);
    assert_eq!(r.capabilities, msg.capabilities);
    assert_eq!(r.last_checkin, now);
    assert!(!r.adopted, "a written record is opampd's own");
    assert_eq!(r.enrollment, bound.or_else(|| enrollment.cloned()), "binding");
    let reenrolling = msg.flags & agent_flags::REQUEST_INSTANCE_UID != 0;
    assert_eq!(r.unenrolled.is_some(), reenrolling);
    if msg.agent_disconnect.is_some() {
        assert_eq!(r.status, AgentStatus::Disconnected);
    } else {
        assert!(!matches!(r.status, AgentStatus::Disconnected | AgentStatus::Offline), "{r:?}");
    }
    // present sub-messages replace, absent ones keep; effective configs only redacted
    let old = stored.as_ref();
    macro_rules! kept_or_replaced {
        ($field:ident) => {
            match &msg.$field {
                Some(new) => assert_eq!(r.$field.as_deref(), Some(new), stringify!($field)),
                None => assert_eq!(
                    r.$field,
                    old.and_then(|s| s.$field.clone()),
                    concat!(stringify!($field), " kept")
                ),
            }
        };
    }
    kept_or_replaced!(agent_description);
    kept_or_replaced!(health);
    kept_or_replaced!(remote_config_status);
    kept_or_replaced!(package_statuses);
    kept_or_replaced!(custom_capabilities);
    kept_or_replaced!(available_components);
    kept_or_replaced!(connection_settings_status);
    match &msg.effective_config {
        Some(raw) => {
            let kept = r.effective_config.as_deref().expect("a reported config is kept");
            assert_eq!(kept, &redact_effective_config(raw));
            for file in kept.config_map.iter().flat_map(|m| m.config_map.values()) {
                let body = std::str::from_utf8(&file.body).expect("a kept body is text");
                assert_eq!(redacted_json(&file.body).as_deref(), Some(body), "kept body redacted");
            }
        }
        None => assert_eq!(r.effective_config, old.and_then(|s| s.effective_config.clone())),
    }

    let reply = &p.response;
    assert_eq!(reply.instance_uid, msg.instance_uid, "uid echoed");
    assert_ne!(reply.capabilities & server_caps::ACCEPTS_STATUS, 0);
    assert_eq!(p.report_full_state, want_reason, "the drift rule decides");
    assert_eq!(reply.flags & server_flags::REPORT_FULL_STATE != 0, want_reason.is_some());
    assert_eq!(reply.error_response, None);
    match &reply.agent_identification {
        Some(id) => {
            assert!(reenrolling);
            assert_eq!(&id.new_instance_uid[..], &NEW_UID.as_bytes()[..]);
        }
        None => assert!(!reenrolling),
    }
    let reply_bytes = reply.encode_to_vec();
    assert_eq!(ServerToAgent::decode(reply_bytes.as_slice()).as_ref(), Ok(reply));

    check_next_messages(r, uid, msg, now, enrollment);
    Some(p.record)
}

/// After `msg` is written as `r`: the next in-sequence heartbeat is not asked for the full
/// state (no false flag) and keeps every sub-message; a skipped number is asked (no missed
/// flag). A goodbye followed by 0 is the reconnect rule.
fn check_next_messages(
    r: &AgentRecord,
    uid: InstanceUid,
    msg: &AgentToServer,
    now: u64,
    enrollment: Option<&Arc<Enrollment>>,
) {
    let heartbeat = |seq: u64| AgentToServer {
        instance_uid: Bytes::copy_from_slice(uid.as_bytes()),
        sequence_num: seq,
        capabilities: msg.capabilities,
        ..Default::default()
    };
    let rule = |seq: u64| {
        if r.status == AgentStatus::Disconnected && seq == 0 {
            FullStateReason::Reconnect
        } else {
            FullStateReason::SequenceGap
        }
    };
    let next = heartbeat(msg.sequence_num.wrapping_add(1));
    let want = (r.status == AgentStatus::Disconnected && next.sequence_num == 0)
        .then_some(FullStateReason::Reconnect);
    assert_eq!(full_state_reason(Some(r), &next), want, "next in-sequence heartbeat");
    let skipped = heartbeat(msg.sequence_num.wrapping_add(2));
    assert_eq!(
        full_state_reason(Some(r), &skipped),
        Some(rule(skipped.sequence_num)),
        "a skipped sequence number"
    );
    let p = process(
        Some(r.clone()),
        uid,
        &next,
        now,
        enrollment,
        || NEW_UID,
        &ServerConfig::default(),
        Remote::NONE,
    )
    .expect("the agent's own next message is not refused");
    let after = &p.record;
    assert_eq!(after.agent_description, r.agent_description);
    assert_eq!(after.health, r.health);
    assert_eq!(after.effective_config, r.effective_config);
    assert_eq!(after.remote_config_status, r.remote_config_status);
    assert_eq!(after.package_statuses, r.package_statuses);
    assert_eq!(after.custom_capabilities, r.custom_capabilities);
    assert_eq!(after.available_components, r.available_components);
    assert_eq!(after.connection_settings_status, r.connection_settings_status);
    assert_eq!(after.enrollment, r.enrollment);
}
