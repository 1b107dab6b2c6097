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
        // the record is the merge, and its publication mark is the message's time or the old one
        let mut merged = merge(c.stored, UID, &c.msg, NOW);
        assert!(
            [NOW, merged.published_at].contains(&p.record.published_at),
            "{}: published_at",
            c.name
        );
        merged.published_at = p.record.published_at;
        assert_eq!(p.record, merged, "{}: record", c.name);
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
    let extra = ServerConfig {
        capabilities: REQUIRED_CAPS | server_caps::OFFERS_REMOTE_CONFIG,
        ..ServerConfig::default()
    };
    let p = process(None, UID, &full(1), NOW, None, || FRESH, &extra, Remote::NONE)
        .expect("without an enrollment nothing is refused");
    assert_eq!(p.response.capabilities, extra.capabilities);

    let forgetful = ServerConfig { capabilities: 0, ..ServerConfig::default() };
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

/// The view is published (see `AgentRecord::published_at`) on a new agent, on any change but
/// the check-in, and otherwise once the publish interval has passed since the last publication.
#[test]
fn the_view_is_published_on_a_change_or_once_per_interval() {
    let config = ServerConfig { publish_interval_ms: 60_000, ..ServerConfig::default() };
    let run = |stored: Option<opamp_core::AgentRecord>, msg: &AgentToServer, now: u64| {
        process(stored, UID, msg, now, None, || FRESH, &config, Remote::NONE)
            .expect("without an enrollment nothing is refused")
            .record
    };
    // a full state with the capabilities the heartbeats carry (a capability change is a change)
    let full = |seq| AgentToServer { capabilities: heartbeat(seq).capabilities, ..full(seq) };
    let first = run(None, &full(1), NOW);
    assert!(first.publishes(), "a new agent is published");
    assert_eq!(first.published_at, NOW);

    // heartbeats within the interval are not published, the first one past it is
    let quiet = run(Some(first.clone()), &heartbeat(2), NOW + 30_000);
    assert!(!quiet.publishes(), "a heartbeat within the interval");
    assert_eq!(quiet.published_at, NOW, "the mark is kept");
    let still = run(Some(quiet.clone()), &heartbeat(3), NOW + 59_999);
    assert!(!still.publishes());
    let due = run(Some(still.clone()), &heartbeat(4), NOW + 60_000);
    assert!(due.publishes(), "a heartbeat once the interval has passed");

    // the same full state again changes nothing readers see: not published
    let resent = run(Some(first.clone()), &full(2), NOW + 1_000);
    assert!(!resent.publishes(), "an identical full state");

    // any change but the check-in is published at once
    let mut degraded = full(2);
    if let Some(h) = degraded.health.as_mut() {
        h.healthy = !h.healthy;
        h.last_error = "it broke".into();
    }
    let changed = run(Some(first.clone()), &degraded, NOW + 1_000);
    assert!(changed.publishes(), "a health change");
    let mut described = full(2);
    if let Some(d) = described.agent_description.as_mut() {
        d.identifying_attributes.clear();
    }
    assert!(run(Some(first.clone()), &described, NOW + 1_000).publishes(), "a description change");

    // 0 publishes on every message
    let every = ServerConfig { publish_interval_ms: 0, ..ServerConfig::default() };
    let p = process(Some(first), UID, &heartbeat(2), NOW + 1, None, || FRESH, &every, Remote::NONE)
        .expect("without an enrollment nothing is refused");
    assert!(p.record.publishes());
}

#[test]
fn same_view_ignores_only_the_check_in_and_the_bookkeeping() {
    let a = populated_record(5, AgentStatus::Online);
    let mut b = a.clone();
    b.sequence_num = 9;
    b.last_checkin += 1;
    b.published_at = 77;
    b.adopted = true;
    assert!(a.same_view(&b));
    // an equal sub-message behind another pointer is the same view
    b.health = a.health.as_deref().cloned().map(std::sync::Arc::new);
    assert!(a.same_view(&b));
    for change in [
        (|r: &mut opamp_core::AgentRecord| r.capabilities ^= 1) as fn(&mut opamp_core::AgentRecord),
        |r| r.status = AgentStatus::Degraded,
        |r| r.health = None,
        |r| r.agent_description = None,
        |r| r.effective_config = None,
        |r| r.enrolled_at += 1,
        |r| {
            r.unenrolled = Some(Unenrolled { reason: UnenrollReason::Reenrolled, at: 1 });
        },
    ] {
        let mut c = a.clone();
        change(&mut c);
        assert!(!a.same_view(&c), "{c:?}");
    }
}
