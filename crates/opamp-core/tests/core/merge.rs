//! The merge of docs/design.md "State merge": nothing the agent left out is lost, status follows
//! health and goodbyes, and the bookkeeping fields move as the rules say.

use opamp_core::{AgentRecord, AgentStatus, DEFAULT_OFFLINE_AFTER_MS, merge};
use opamp_proto::agent_caps as caps;
use opamp_proto::v1::{
    AgentDisconnect, AgentToServer, AvailableComponents, ComponentHealth, ConnectionSettingsStatus,
    CustomCapabilities, PackageStatuses, RemoteConfigStatus,
};
use opamp_proto::{Bytes, InstanceUid};
use std::sync::Arc;

use crate::support::{
    ENROLLED, NOW, UID, description, effective_config, full, health, heartbeat, populated_record,
    record,
};

use AgentStatus::{Degraded, Disconnected, Error, Offline, Online};

/// One sub-message slot: puts a "new" value into a message and the same value into the record
/// that the merge is expected to produce.
type Slot = (&'static str, fn(&mut AgentToServer), fn(&mut AgentRecord));

fn slots() -> Vec<Slot> {
    vec![
        (
            "agent_description",
            |m| m.agent_description = Some(description("new")),
            |r| r.agent_description = Some(Arc::new(description("new"))),
        ),
        (
            "health",
            |m| m.health = Some(health(true, "new")),
            |r| r.health = Some(Arc::new(health(true, "new"))),
        ),
        (
            "effective_config",
            |m| m.effective_config = Some(effective_config("new")),
            |r| r.effective_config = Some(Arc::new(effective_config("new"))),
        ),
        (
            "remote_config_status",
            |m| m.remote_config_status = Some(new_remote_config_status()),
            |r| r.remote_config_status = Some(Arc::new(new_remote_config_status())),
        ),
        (
            "package_statuses",
            |m| m.package_statuses = Some(new_package_statuses()),
            |r| r.package_statuses = Some(Arc::new(new_package_statuses())),
        ),
        (
            "custom_capabilities",
            |m| m.custom_capabilities = Some(new_custom_capabilities()),
            |r| r.custom_capabilities = Some(Arc::new(new_custom_capabilities())),
        ),
        (
            "available_components",
            |m| m.available_components = Some(new_available_components()),
            |r| r.available_components = Some(Arc::new(new_available_components())),
        ),
        (
            "connection_settings_status",
            |m| m.connection_settings_status = Some(new_connection_settings_status()),
            |r| r.connection_settings_status = Some(Arc::new(new_connection_settings_status())),
        ),
    ]
}

fn new_remote_config_status() -> RemoteConfigStatus {
    RemoteConfigStatus {
        last_remote_config_hash: Bytes::from_static(b"new"),
        status: 3,
        error_message: "bad yaml".into(),
    }
}

fn new_package_statuses() -> PackageStatuses {
    PackageStatuses { error_message: "new".into(), ..Default::default() }
}

fn new_custom_capabilities() -> CustomCapabilities {
    CustomCapabilities { capabilities: vec!["io.new".into()] }
}

fn new_available_components() -> AvailableComponents {
    AvailableComponents { hash: Bytes::from_static(b"new"), ..Default::default() }
}

fn new_connection_settings_status() -> ConnectionSettingsStatus {
    ConnectionSettingsStatus {
        last_connection_settings_hash: Bytes::from_static(b"new"),
        status: 2,
        error_message: String::new(),
    }
}

/// The record the merge must produce from `stored` for `msg` when no sub-message changes.
fn bookkeeping(mut r: AgentRecord, msg: &AgentToServer) -> AgentRecord {
    r.sequence_num = msg.sequence_num;
    r.capabilities = msg.capabilities;
    r.last_checkin = NOW;
    r
}

#[test]
fn absent_sub_messages_keep_the_stored_ones() {
    let stored = populated_record(5, Online);
    let msg = heartbeat(6);
    assert_eq!(merge(Some(stored.clone()), UID, &msg, NOW), bookkeeping(stored, &msg));
}

#[test]
fn each_present_sub_message_replaces_only_its_own_slot() {
    for (name, in_msg, in_record) in slots() {
        let stored = populated_record(5, Online);
        let mut msg = heartbeat(6);
        in_msg(&mut msg);
        let mut want = bookkeeping(stored.clone(), &msg);
        in_record(&mut want);
        assert_eq!(merge(Some(stored), UID, &msg, NOW), want, "slot {name}");
    }
}

#[test]
fn every_sub_message_of_a_full_report_replaces_the_stored_one() {
    let stored = populated_record(5, Online);
    let mut msg = heartbeat(6);
    let mut want = bookkeeping(stored.clone(), &msg);
    for (_, in_msg, in_record) in slots() {
        in_msg(&mut msg);
        in_record(&mut want);
    }
    assert_eq!(merge(Some(stored), UID, &msg, NOW), want);
}

#[test]
fn sub_messages_fill_empty_slots_of_a_new_agent() {
    for (name, in_msg, in_record) in slots() {
        let mut msg = heartbeat(1);
        in_msg(&mut msg);
        let got = merge(None, UID, &msg, NOW);
        let mut want = AgentRecord {
            enrolled_at: NOW,
            last_checkin: NOW,
            sequence_num: 1,
            capabilities: msg.capabilities,
            // health "new" is healthy, so every slot leaves a new agent online
            ..record(0, Online)
        };
        in_record(&mut want);
        assert_eq!(got, want, "slot {name}");
    }
}

struct StatusCase {
    name: &'static str,
    stored: Option<(AgentStatus, Option<ComponentHealth>)>,
    health: Option<ComponentHealth>,
    disconnect: bool,
    want: AgentStatus,
}

fn status_cases() -> Vec<StatusCase> {
    let unhealthy = || Some(health(false, "StatusPermanentError"));
    let recoverable = || Some(health(true, "StatusRecoverableError"));
    let ok = || Some(health(true, "StatusOK"));
    let sc = |name, stored, health, disconnect, want| StatusCase {
        name,
        stored,
        health,
        disconnect,
        want,
    };
    vec![
        sc("unhealthy_report_is_error", Some((Online, None)), unhealthy(), false, Error),
        sc(
            "recoverable_error_report_is_degraded",
            Some((Online, None)),
            recoverable(),
            false,
            Degraded,
        ),
        sc("healthy_report_is_online", Some((Error, unhealthy())), ok(), false, Online),
        sc(
            "healthy_report_without_status_is_online",
            Some((Degraded, None)),
            Some(health(true, "")),
            false,
            Online,
        ),
        sc(
            "other_status_string_is_online",
            Some((Error, None)),
            Some(health(true, "StatusStarting")),
            false,
            Online,
        ),
        sc(
            "unhealthy_wins_over_recoverable_status",
            Some((Online, None)),
            Some(health(false, "StatusRecoverableError")),
            false,
            Error,
        ),
        sc("disconnect_is_disconnected", Some((Online, ok())), None, true, Disconnected),
        sc(
            "disconnect_wins_over_health_in_same_message",
            Some((Online, None)),
            ok(),
            true,
            Disconnected,
        ),
        sc(
            "disconnect_of_erroring_agent_is_disconnected",
            Some((Error, unhealthy())),
            None,
            true,
            Disconnected,
        ),
        sc("heartbeat_keeps_error", Some((Error, unhealthy())), None, false, Error),
        sc("heartbeat_keeps_degraded", Some((Degraded, recoverable())), None, false, Degraded),
        sc("heartbeat_keeps_online", Some((Online, ok())), None, false, Online),
        sc("heartbeat_after_disconnect_is_online", Some((Disconnected, None)), None, false, Online),
        sc(
            "heartbeat_after_disconnect_with_healthy_record_is_online",
            Some((Disconnected, ok())),
            None,
            false,
            Online,
        ),
        sc(
            "heartbeat_after_disconnect_follows_stored_unhealthy",
            Some((Disconnected, unhealthy())),
            None,
            false,
            Error,
        ),
        sc(
            "heartbeat_after_disconnect_follows_stored_recoverable",
            Some((Disconnected, recoverable())),
            None,
            false,
            Degraded,
        ),
        sc(
            "report_after_disconnect_follows_new_health",
            Some((Disconnected, ok())),
            unhealthy(),
            false,
            Error,
        ),
        sc(
            "heartbeat_of_record_stored_offline_is_back_online",
            Some((Offline, None)),
            None,
            false,
            Online,
        ),
        sc(
            "heartbeat_of_record_stored_offline_follows_stored_health",
            Some((Offline, unhealthy())),
            None,
            false,
            Error,
        ),
        sc("new_agent_heartbeat_is_online", None, None, false, Online),
        sc("new_agent_unhealthy_report_is_error", None, unhealthy(), false, Error),
        sc("new_agent_saying_goodbye_is_disconnected", None, None, true, Disconnected),
    ]
}

#[test]
fn status_follows_health_and_goodbyes_and_otherwise_stands() {
    let mut failures = Vec::new();
    for c in status_cases() {
        let stored = c
            .stored
            .map(|(status, h)| AgentRecord { health: h.map(Arc::new), ..record(5, status) });
        let mut msg = heartbeat(6);
        msg.health = c.health;
        msg.agent_disconnect = c.disconnect.then_some(AgentDisconnect {});
        let got = merge(stored, UID, &msg, NOW).status;
        if got != c.want {
            failures.push(format!("{}: got {got:?}, want {:?}", c.name, c.want));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn sequence_num_is_the_received_one_whatever_it_is() {
    // (stored seq, stored status, received seq, goodbye)
    let rows = [
        (5, Online, 6, false),
        (5, Online, 3, false),
        (5, Online, 5, false),
        (5, Online, 900, false),
        (10, Disconnected, 0, false),
        (10, Online, 11, true),
        (10, Online, 0, false),
        (u64::MAX, Online, 0, false),
    ];
    for (stored_seq, status, seq, goodbye) in rows {
        let mut msg = heartbeat(seq);
        msg.agent_disconnect = goodbye.then_some(AgentDisconnect {});
        let got = merge(Some(record(stored_seq, status)), UID, &msg, NOW);
        assert_eq!(got.sequence_num, seq, "stored {stored_seq} {status:?}, received {seq}");
    }
}

#[test]
fn disconnect_keeps_the_received_sequence_num_for_the_reconnect() {
    let mut goodbye = heartbeat(11);
    goodbye.agent_disconnect = Some(AgentDisconnect {});
    let after_goodbye = merge(Some(record(10, Online)), UID, &goodbye, NOW);
    assert_eq!((after_goodbye.status, after_goodbye.sequence_num), (Disconnected, 11));

    let back = merge(Some(after_goodbye), UID, &heartbeat(12), NOW + 1);
    assert_eq!((back.status, back.sequence_num), (Online, 12));
}

#[test]
fn last_checkin_is_now_and_enrolled_at_is_kept() {
    let stored = record(5, Online);
    let got = merge(Some(stored.clone()), UID, &heartbeat(6), NOW);
    assert_eq!(got.last_checkin, NOW);
    assert_eq!(got.enrolled_at, stored.enrolled_at);
    assert_eq!(got.enrolled_at, ENROLLED);
}

#[test]
fn new_agent_is_enrolled_now_under_its_uid() {
    let uid = InstanceUid::from_bytes([7; 16]);
    let got = merge(None, uid, &full(1), NOW);
    assert_eq!((got.instance_uid, got.enrolled_at, got.last_checkin), (uid, NOW, NOW));
    assert_eq!(got.sequence_num, 1);
}

#[test]
fn capabilities_are_the_received_ones() {
    let mut msg = heartbeat(6);
    msg.capabilities = caps::REPORTS_STATUS | caps::REPORTS_EFFECTIVE_CONFIG;
    let got = merge(Some(record(5, Online)), UID, &msg, NOW);
    assert_eq!(got.capabilities, caps::REPORTS_STATUS | caps::REPORTS_EFFECTIVE_CONFIG);
}

#[test]
fn offline_threshold_is_twelve_missed_heartbeats() {
    assert_eq!(DEFAULT_OFFLINE_AFTER_MS, 12 * 30_000);
}

#[test]
fn status_reads_offline_only_after_the_threshold_and_goodbye_stays_disconnected() {
    const T: u64 = DEFAULT_OFFLINE_AFTER_MS;
    let last = ENROLLED;
    // (stored status, now, want)
    let rows = [
        (Online, last, Online),
        (Online, last + T, Online),
        (Online, last + T + 1, Offline),
        (Degraded, last + T - 1, Degraded),
        (Degraded, last + T + 1, Offline),
        (Error, last + 10 * T, Offline),
        (Disconnected, last + T + 1, Disconnected),
        (Disconnected, last + 1000 * T, Disconnected),
        // a reader whose clock is behind the writer's must not see an offline agent
        (Online, last - 5_000, Online),
    ];
    for (status, now, want) in rows {
        let r = AgentRecord { last_checkin: last, ..record(1, status) };
        assert_eq!(r.status_at(now, T), want, "{status:?} at +{}", now as i128 - last as i128);
    }
}

#[test]
fn status_at_honours_a_custom_threshold() {
    let r = AgentRecord { last_checkin: 1_000, ..record(1, Online) };
    assert_eq!(r.status_at(1_500, 1_000), Online);
    assert_eq!(r.status_at(2_001, 1_000), Offline);
    assert_eq!(r.status_at(u64::MAX, u64::MAX), Online);
}
