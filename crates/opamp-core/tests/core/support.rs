//! Builders shared by the behaviour tests: messages and records with every field the rules look
//! at, so each table row states only what differs.

use std::sync::Arc;

use opamp_core::{AgentRecord, AgentStatus, Timestamp};
use opamp_proto::agent_caps as caps;
use opamp_proto::v1::{
    AgentConfigFile, AgentConfigMap, AgentDescription, AgentToServer, AnyValue,
    AvailableComponents, ComponentHealth, ConnectionSettingsStatus, CustomCapabilities,
    EffectiveConfig, KeyValue, PackageStatuses, RemoteConfigStatus, any_value,
};
use opamp_proto::{Bytes, InstanceUid};

pub const UID: InstanceUid = InstanceUid::from_bytes([0x42; 16]);
pub const ENROLLED: Timestamp = 1_700_000_000_000;
pub const NOW: Timestamp = ENROLLED + 90_000;

pub type ReportingBit = (u64, &'static str, fn(&mut AgentToServer));

/// The capability bits whose field `has_full_status` demands, with a setter for that field.
pub const REPORTING_BITS: [ReportingBit; 5] = [
    (caps::REPORTS_EFFECTIVE_CONFIG, "effective_config", |m| {
        m.effective_config = Some(effective_config("a"))
    }),
    (caps::REPORTS_REMOTE_CONFIG, "remote_config_status", |m| {
        m.remote_config_status = Some(RemoteConfigStatus {
            last_remote_config_hash: Bytes::from_static(b"h1"),
            status: 1,
            error_message: String::new(),
        })
    }),
    (caps::REPORTS_PACKAGE_STATUSES, "package_statuses", |m| {
        m.package_statuses = Some(PackageStatuses {
            server_provided_all_packages_hash: Bytes::from_static(b"p1"),
            ..Default::default()
        })
    }),
    (caps::REPORTS_AVAILABLE_COMPONENTS, "available_components", |m| {
        m.available_components =
            Some(AvailableComponents { hash: Bytes::from_static(b"c1"), ..Default::default() })
    }),
    (caps::REPORTS_CONNECTION_SETTINGS_STATUS, "connection_settings_status", |m| {
        m.connection_settings_status = Some(ConnectionSettingsStatus {
            last_connection_settings_hash: Bytes::from_static(b"s1"),
            status: 1,
            error_message: String::new(),
        })
    }),
];

pub fn all_reporting_bits() -> u64 {
    REPORTING_BITS.iter().fold(0, |acc, (bit, _, _)| acc | bit)
}

pub fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
    }
}

pub fn description(service: &str) -> AgentDescription {
    AgentDescription {
        identifying_attributes: vec![kv("service.name", service)],
        non_identifying_attributes: vec![kv("os.type", "linux")],
    }
}

pub fn health(healthy: bool, status: &str) -> ComponentHealth {
    ComponentHealth { healthy, status: status.into(), ..Default::default() }
}

/// An effective config whose one file is `{"label": <label>}`: already the JSON text the
/// redaction writes, so a merged record holds it unchanged.
pub fn effective_config(label: &str) -> EffectiveConfig {
    config_file(&format!(r#"{{"label":"{label}"}}"#))
}

/// An effective config of one file (`""`) with `body` as the agent sent it.
pub fn config_file(body: &str) -> EffectiveConfig {
    EffectiveConfig {
        config_map: Some(AgentConfigMap {
            config_map: [(
                String::new(),
                AgentConfigFile {
                    body: Bytes::copy_from_slice(body.as_bytes()),
                    content_type: "text/yaml".into(),
                    role: String::new(),
                },
            )]
            .into(),
        }),
    }
}

/// A poll or compressed message: uid, sequence number and capabilities only.
pub fn heartbeat(seq: u64) -> AgentToServer {
    AgentToServer {
        instance_uid: Bytes::copy_from_slice(UID.as_bytes()),
        sequence_num: seq,
        capabilities: caps::REPORTS_STATUS | caps::REPORTS_HEALTH,
        ..Default::default()
    }
}

/// A full status report for `capabilities`: description, health and the field of every
/// reporting bit that is set.
pub fn full_with(seq: u64, capabilities: u64) -> AgentToServer {
    let mut m = heartbeat(seq);
    m.capabilities = capabilities;
    m.agent_description = Some(description("collector"));
    m.health = Some(health(true, "StatusOK"));
    for (bit, _, set) in REPORTING_BITS {
        if capabilities & bit != 0 {
            set(&mut m);
        }
    }
    m
}

/// The base full status report: ReportsStatus with description and health.
pub fn full(seq: u64) -> AgentToServer {
    full_with(seq, caps::REPORTS_STATUS)
}

pub fn record(seq: u64, status: AgentStatus) -> AgentRecord {
    AgentRecord {
        sequence_num: seq,
        capabilities: caps::REPORTS_STATUS,
        status,
        last_checkin: ENROLLED + 30_000,
        ..AgentRecord::new(UID, ENROLLED)
    }
}

/// A record holding an "old" value in every sub-message slot.
pub fn populated_record(seq: u64, status: AgentStatus) -> AgentRecord {
    let mut m = full_with(seq, all_reporting_bits() | caps::REPORTS_STATUS);
    m.custom_capabilities = Some(CustomCapabilities { capabilities: vec!["io.old".into()] });
    AgentRecord {
        agent_description: m.agent_description.map(Arc::new),
        health: m.health.map(Arc::new),
        effective_config: m.effective_config.map(Arc::new),
        remote_config_status: m.remote_config_status.map(Arc::new),
        package_statuses: m.package_statuses.map(Arc::new),
        custom_capabilities: m.custom_capabilities.map(Arc::new),
        available_components: m.available_components.map(Arc::new),
        connection_settings_status: m.connection_settings_status.map(Arc::new),
        ..record(seq, status)
    }
}
