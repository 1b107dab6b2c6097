//! The reply to one message, the error replies and uid validation.

use std::cell::Cell;

use opamp_core::{
    AgentStatus, DEFAULT_SERVER_CAPABILITIES, Enrollment, FullStateReason, Refusal, Remote,
    ServerConfig, UnenrollReason, Unenrolled, bad_request, merge, process, unavailable, validate,
};
use opamp_proto::v1::{
    AgentToServer, RetryInfo, ServerErrorResponseType, ServerToAgent,
    server_error_response::Details,
};
use opamp_proto::{Bytes, InstanceUid, agent_flags, server_caps, server_flags};

use crate::drift::cases;
use crate::support::{NOW, UID, full, heartbeat, populated_record};

const FRESH: InstanceUid = InstanceUid::from_bytes([0xF0; 16]);
const REQUIRED_CAPS: u64 = server_caps::ACCEPTS_STATUS | server_caps::ACCEPTS_EFFECTIVE_CONFIG;

#[test]
fn reply_flags_follow_the_drift_table_and_echo_the_uid_with_capabilities() {
    for c in cases() {
        let p = process(
            c.stored.clone(),
            UID,
            &c.msg,
            NOW,
            None,
            || FRESH,
            &ServerConfig::default(),
            Remote::NONE,
        )
        .expect("without an enrollment nothing is refused");
        let flagged = p.response.flags & server_flags::REPORT_FULL_STATE != 0;
        assert_eq!(flagged, c.want.is_some(), "{}: flag", c.name);
        assert_eq!(p.report_full_state, c.want, "{}: report_full_state", c.name);
        assert_eq!(p.response.instance_uid, c.msg.instance_uid, "{}: uid echo", c.name);
        assert_eq!(p.response.capabilities & REQUIRED_CAPS, REQUIRED_CAPS, "{}: caps", c.name);
        assert_eq!(p.response.error_response, None, "{}", c.name);
        assert_eq!(p.response.agent_identification, None, "{}", c.name);
        assert_eq!(p.record, merge(c.stored, UID, &c.msg, NOW), "{}: record", c.name);
    }
}

#[test]
fn decision_is_made_against_the_state_before_the_merge() {
    // After merging seq 6 the stored seq is 6; deciding after the merge would call 6 a duplicate.
    let stored = populated_record(5, AgentStatus::Online);
    let p = process(
        Some(stored),
        UID,
        &heartbeat(6),
        NOW,
        None,
        || FRESH,
        &ServerConfig::default(),
        Remote::NONE,
    )
    .expect("without an enrollment nothing is refused");
    assert_eq!(p.report_full_state, None);
    assert_eq!(p.record.sequence_num, 6);
}

#[test]
fn reply_carries_only_uid_and_capabilities_when_nothing_is_asked() {
    let stored = populated_record(5, AgentStatus::Online);
    let p = process(
        Some(stored),
        UID,
        &heartbeat(6),
        NOW,
        None,
        || FRESH,
        &ServerConfig::default(),
        Remote::NONE,
    )
    .expect("without an enrollment nothing is refused");
    let want = ServerToAgent {
        instance_uid: Bytes::copy_from_slice(UID.as_bytes()),
        capabilities: DEFAULT_SERVER_CAPABILITIES,
        ..Default::default()
    };
    assert_eq!(p.response, want);
}

#[test]
fn default_capabilities_accept_status_and_effective_config() {
    assert_eq!(DEFAULT_SERVER_CAPABILITIES & REQUIRED_CAPS, REQUIRED_CAPS);
    assert_eq!(ServerConfig::default().capabilities, DEFAULT_SERVER_CAPABILITIES);
}

#[test]
fn configured_capabilities_are_sent_and_accepts_status_is_never_dropped() {
    let extra = ServerConfig { capabilities: REQUIRED_CAPS | server_caps::OFFERS_REMOTE_CONFIG };
    let p = process(None, UID, &full(1), NOW, None, || FRESH, &extra, Remote::NONE)
        .expect("without an enrollment nothing is refused");
    assert_eq!(p.response.capabilities, extra.capabilities);

    let forgetful = ServerConfig { capabilities: 0 };
    let p = process(None, UID, &full(1), NOW, None, || FRESH, &forgetful, Remote::NONE)
        .expect("without an enrollment nothing is refused");
    assert_eq!(p.response.capabilities, server_caps::ACCEPTS_STATUS);
}

#[test]
fn requested_instance_uid_comes_from_the_supplied_closure_once() {
    let calls = Cell::new(0);
    let mut msg = full(1);
    msg.flags = agent_flags::REQUEST_INSTANCE_UID;
    let p = process(
        None,
        UID,
        &msg,
        NOW,
        None,
        || {
            calls.set(calls.get() + 1);
            FRESH
        },
        &ServerConfig::default(),
        Remote::NONE,
    )
    .expect("without an enrollment nothing is refused");
    assert_eq!(calls.get(), 1);
    let ident = p.response.agent_identification.expect("agent_identification");
    assert_eq!(&ident.new_instance_uid[..], FRESH.as_bytes());
    // The reply still addresses the agent by the uid it used.
    assert_eq!(&p.response.instance_uid[..], UID.as_bytes());
    assert_eq!(p.record.instance_uid, UID);
}

#[test]
fn instance_uid_is_not_drawn_unless_requested() {
    // 0x2 is no defined agent flag; it must not be mistaken for RequestInstanceUid.
    for flags in [0, 0x2, !agent_flags::REQUEST_INSTANCE_UID] {
        let calls = Cell::new(0);
        let mut msg = heartbeat(6);
        msg.flags = flags;
        let stored = populated_record(5, AgentStatus::Online);
        let p = process(
            Some(stored),
            UID,
            &msg,
            NOW,
            None,
            || {
                calls.set(calls.get() + 1);
                FRESH
            },
            &ServerConfig::default(),
            Remote::NONE,
        )
        .expect("without an enrollment nothing is refused");
        assert_eq!(calls.get(), 0, "flags {flags:#x}");
        assert_eq!(p.response.agent_identification, None, "flags {flags:#x}");
    }
}

#[test]
fn requested_uid_and_full_state_can_be_asked_together() {
    let mut msg = heartbeat(1);
    msg.flags = agent_flags::REQUEST_INSTANCE_UID;
    let p = process(None, UID, &msg, NOW, None, || FRESH, &ServerConfig::default(), Remote::NONE)
        .expect("without an enrollment nothing is refused");
    assert_eq!(p.report_full_state, Some(FullStateReason::NewAgent));
    assert!(p.response.agent_identification.is_some());
}

fn uid_bytes() -> Bytes {
    Bytes::copy_from_slice(UID.as_bytes())
}

#[test]
fn bad_request_is_exclusive_and_carries_no_retry() {
    let reply = bad_request(uid_bytes(), "instance_uid must be 16 bytes, got 3");
    let err = reply.error_response.clone().expect("error_response");
    assert_eq!(err.r#type, ServerErrorResponseType::BadRequest as i32);
    assert_eq!(err.error_message, "instance_uid must be 16 bytes, got 3");
    assert_eq!(err.details, None);
    // Nothing but instance_uid accompanies an error: no capabilities, no flags.
    let want = ServerToAgent {
        instance_uid: uid_bytes(),
        error_response: Some(err),
        ..Default::default()
    };
    assert_eq!(reply, want);
}

#[test]
fn bad_request_echoes_whatever_uid_bytes_the_agent_sent() {
    let odd = Bytes::from_static(b"abc");
    assert_eq!(bad_request(odd.clone(), "bad").instance_uid, odd);
    assert_eq!(bad_request(Bytes::new(), "bad").instance_uid, Bytes::new());
}

#[test]
fn unavailable_is_exclusive_and_says_when_to_retry() {
    let thirty_s = 30_000_000_000;
    let reply = unavailable(uid_bytes(), "store unavailable", thirty_s);
    let err = reply.error_response.clone().expect("error_response");
    assert_eq!(err.r#type, ServerErrorResponseType::Unavailable as i32);
    assert_eq!(err.error_message, "store unavailable");
    assert_eq!(
        err.details,
        Some(Details::RetryInfo(RetryInfo { retry_after_nanoseconds: thirty_s }))
    );
    let want = ServerToAgent {
        instance_uid: uid_bytes(),
        error_response: Some(err),
        ..Default::default()
    };
    assert_eq!(reply, want);
}

#[test]
fn sixteen_byte_uid_is_valid() {
    let msg = heartbeat(1);
    assert_eq!(validate(&msg), Ok(UID));
}

#[test]
fn uid_of_any_other_length_is_rejected_with_its_length() {
    for len in [0usize, 1, 15, 17, 32, 1000] {
        let msg = AgentToServer { instance_uid: vec![1u8; len].into(), ..Default::default() };
        let err = validate(&msg).expect_err("wrong length must be rejected");
        assert!(err.contains("instance_uid"), "{len}: {err}");
        assert!(err.contains("16 bytes"), "{len}: {err}");
        assert!(err.contains(&format!("got {len}")), "{len}: {err}");
    }
}

fn enrollment(key: &str, policy: &str) -> std::sync::Arc<Enrollment> {
    std::sync::Arc::new(Enrollment {
        api_key_id: key.into(),
        policy_id: policy.into(),
        namespaces: vec!["default".into()],
    })
}

#[test]
fn enrollment_binds_the_policy_and_a_key_of_another_policy_is_refused() {
    let cfg = ServerConfig::default();
    let a = enrollment("key-a", "policy-1");
    // a new agent is bound to the policy of the key it authenticated with
    let p = process(None, UID, &full(1), NOW, Some(&a), || FRESH, &cfg, Remote::NONE)
        .expect("new agent");
    assert_eq!(p.record.enrollment.as_ref(), Some(&a));
    let stored = p.record;

    // another key of the same policy (a rotated key): accepted, the binding stays as it was
    let rotated = enrollment("key-b", "policy-1");
    let p = process(
        Some(stored.clone()),
        UID,
        &heartbeat(2),
        NOW,
        Some(&rotated),
        || FRESH,
        &cfg,
        Remote::NONE,
    )
    .expect("same policy");
    assert_eq!(p.record.enrollment.as_ref(), Some(&a));

    // a key of another policy: refused, whatever the message
    let other = enrollment("key-c", "policy-2");
    let refused = process(
        Some(stored.clone()),
        UID,
        &full(2),
        NOW,
        Some(&other),
        || FRESH,
        &cfg,
        Remote::NONE,
    );
    assert_eq!(
        refused,
        Err(Refusal::PolicyMismatch { enrolled: "policy-1".into(), presented: "policy-2".into() })
    );

    // without agent authentication the binding is neither checked nor changed
    let p = process(Some(stored), UID, &heartbeat(2), NOW, None, || FRESH, &cfg, Remote::NONE)
        .expect("no auth");
    assert_eq!(p.record.enrollment.as_ref(), Some(&a));
}

#[test]
fn an_agent_enrolled_before_authentication_adopts_its_first_key() {
    let cfg = ServerConfig::default();
    let stored = populated_record(5, AgentStatus::Online);
    assert_eq!(stored.enrollment, None);
    let a = enrollment("key-a", "policy-1");
    let p = process(Some(stored), UID, &heartbeat(6), NOW, Some(&a), || FRESH, &cfg, Remote::NONE)
        .unwrap();
    assert_eq!(p.record.enrollment.as_ref(), Some(&a));
}

#[test]
fn a_request_for_a_new_uid_marks_the_old_record_reenrolled_until_it_reports_again() {
    let cfg = ServerConfig::default();
    let mut msg = heartbeat(6);
    msg.flags = agent_flags::REQUEST_INSTANCE_UID;
    let stored = populated_record(5, AgentStatus::Online);
    let p = process(Some(stored), UID, &msg, NOW, None, || FRESH, &cfg, Remote::NONE).unwrap();
    assert_eq!(
        p.record.unenrolled,
        Some(Unenrolled { reason: UnenrollReason::Reenrolled, at: NOW })
    );
    assert_eq!(p.record.unenrolled.unwrap().reason.as_str(), "reenrolled");
    let p =
        process(Some(p.record), UID, &heartbeat(7), NOW + 1, None, || FRESH, &cfg, Remote::NONE)
            .unwrap();
    assert_eq!(p.record.unenrolled, None, "reporting under the old uid again clears the mark");
}
