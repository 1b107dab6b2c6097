//! The versioned binary encoding of an [`AgentRecord`] at rest, shared by every backend (the
//! embedded store's values, the Elasticsearch document's not-indexed blob).
//!
//! The layout is a protobuf message owned by the store, not the core type: the core derives
//! nothing for storage, and a schema change here bumps [`SCHEMA_VERSION`] instead of silently
//! misreading old bytes. Decoding never panics: bad or unknown bytes are [`StoreError::Corrupt`].

use std::sync::Arc;

use opamp_core::redact::redact_effective_config;
use opamp_core::remote_config::{ConfigHash, DesiredConfig, OfferedConfig};
use opamp_core::{AgentRecord, AgentStatus, Enrollment, UnenrollReason, Unenrolled};
use opamp_proto::InstanceUid;
use opamp_proto::v1;
use prost::Message;

use crate::StoreError;

/// The layout [`encode`] writes. Bump on any change that an older reader would misread, and
/// teach [`decode`] to read the old one.
///
/// - 1: the first layout. Effective-config bodies were kept as the agent sent them, secrets
///   included: [`decode`] redacts them on the way in, so they never come out of the store raw
///   (and the next write stores them redacted).
/// - 2: adds the enrollment (tag 16) and the unenrollment mark (tags 17, 18); effective-config
///   bodies are the redacted JSON text of `opamp_core::redact`. Later additions that an older
///   reader may safely skip keep this number (so instances of two releases can share a store
///   during a rolling upgrade): the desired remote config (tag 19) and the offered one (tag 20);
///   an older instance drops them when it rewrites the record, which at worst sends a config once
///   more; when the record's view was last published (tag 21: an older instance drops it, which
///   at worst publishes once more).
pub const SCHEMA_VERSION: u32 = 2;

/// The oldest layout [`decode`] still reads.
const OLDEST_READABLE: u32 = 1;

/// One stored agent. Tags are part of the format: never reuse or renumber one.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredAgent {
    #[prost(uint32, tag = "1")]
    schema_version: u32,
    #[prost(bytes = "vec", tag = "2")]
    instance_uid: Vec<u8>,
    #[prost(uint64, tag = "3")]
    sequence_num: u64,
    #[prost(uint64, tag = "4")]
    capabilities: u64,
    /// See [`status_code`]; 0 is deliberately unused so a missing field is detected.
    #[prost(uint32, tag = "5")]
    status: u32,
    #[prost(uint64, tag = "6")]
    enrolled_at: u64,
    #[prost(uint64, tag = "7")]
    last_checkin: u64,
    #[prost(message, optional, tag = "8")]
    agent_description: Option<v1::AgentDescription>,
    #[prost(message, optional, tag = "9")]
    health: Option<v1::ComponentHealth>,
    #[prost(message, optional, tag = "10")]
    effective_config: Option<v1::EffectiveConfig>,
    #[prost(message, optional, tag = "11")]
    remote_config_status: Option<v1::RemoteConfigStatus>,
    #[prost(message, optional, tag = "12")]
    package_statuses: Option<v1::PackageStatuses>,
    #[prost(message, optional, tag = "13")]
    custom_capabilities: Option<v1::CustomCapabilities>,
    #[prost(message, optional, tag = "14")]
    available_components: Option<v1::AvailableComponents>,
    #[prost(message, optional, tag = "15")]
    connection_settings_status: Option<v1::ConnectionSettingsStatus>,
    #[prost(message, optional, tag = "16")]
    enrollment: Option<StoredEnrollment>,
    /// See [`unenroll_code`]; 0 means not unenrolled.
    #[prost(uint32, tag = "17")]
    unenrolled_reason: u32,
    #[prost(uint64, tag = "18")]
    unenrolled_at: u64,
    #[prost(message, optional, tag = "19")]
    desired_config: Option<StoredDesired>,
    #[prost(message, optional, tag = "20")]
    offered_config: Option<StoredOffered>,
    #[prost(uint64, tag = "21")]
    published_at: u64,
}

/// The remote config an agent should run (name and content hash).
#[derive(Clone, PartialEq, prost::Message)]
struct StoredDesired {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(bytes = "vec", tag = "2")]
    hash: Vec<u8>,
}

/// The config hash last sent to an agent, and when.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredOffered {
    #[prost(bytes = "vec", tag = "1")]
    hash: Vec<u8>,
    #[prost(uint64, tag = "2")]
    at: u64,
}

impl StoredDesired {
    fn from_core(d: &DesiredConfig) -> Self {
        Self { name: d.name.clone(), hash: d.hash.to_vec() }
    }
}

impl StoredOffered {
    fn from_core(o: &OfferedConfig) -> Self {
        Self { hash: o.hash.to_vec(), at: o.at }
    }
}

fn config_hash(bytes: &[u8]) -> Result<ConfigHash, StoreError> {
    ConfigHash::try_from(bytes)
        .map_err(|_| StoreError::Corrupt(format!("stored config hash of {} bytes", bytes.len())))
}

/// The policy binding of an agent (never a key's secret).
#[derive(Clone, PartialEq, prost::Message)]
struct StoredEnrollment {
    #[prost(string, tag = "1")]
    api_key_id: String,
    #[prost(string, tag = "2")]
    policy_id: String,
    #[prost(string, repeated, tag = "3")]
    namespaces: Vec<String>,
}

impl StoredEnrollment {
    fn from_core(e: &Enrollment) -> Self {
        Self {
            api_key_id: e.api_key_id.clone(),
            policy_id: e.policy_id.clone(),
            namespaces: e.namespaces.clone(),
        }
    }

    fn into_core(self) -> Enrollment {
        Enrollment {
            api_key_id: self.api_key_id,
            policy_id: self.policy_id,
            namespaces: self.namespaces,
        }
    }
}

fn unenroll_code(reason: UnenrollReason) -> u32 {
    match reason {
        UnenrollReason::Reenrolled => 1,
    }
}

fn unenroll_from_code(code: u32) -> Option<Option<UnenrollReason>> {
    match code {
        0 => Some(None),
        1 => Some(Some(UnenrollReason::Reenrolled)),
        _ => None,
    }
}

// Explicit codes rather than enum discriminants, so reordering the core enum cannot change the
// meaning of stored bytes.
fn status_code(status: AgentStatus) -> u32 {
    match status {
        AgentStatus::Online => 1,
        AgentStatus::Degraded => 2,
        AgentStatus::Error => 3,
        AgentStatus::Disconnected => 4,
        AgentStatus::Offline => 5,
    }
}

fn status_from_code(code: u32) -> Option<AgentStatus> {
    Some(match code {
        1 => AgentStatus::Online,
        2 => AgentStatus::Degraded,
        3 => AgentStatus::Error,
        4 => AgentStatus::Disconnected,
        5 => AgentStatus::Offline,
        _ => return None,
    })
}

/// The stored bytes of `record`.
///
/// Written field by field from borrowed parts rather than through a [`StoredAgent`], which would
/// deep-copy every sub-message on each write; a test pins the bytes to [`StoredAgent`]'s.
pub fn encode(record: &AgentRecord) -> Vec<u8> {
    use prost::encoding::{bytes, message, uint32, uint64};

    fn scalar(tag: u32, value: u64, buf: &mut Vec<u8>) {
        // proto3 leaves zero scalars out; so do we, to stay byte-identical.
        if value != 0 {
            uint64::encode(tag, &value, buf);
        }
    }
    fn sub<M: Message>(tag: u32, value: &Option<Arc<M>>, buf: &mut Vec<u8>) {
        if let Some(m) = value {
            message::encode(tag, &**m, buf);
        }
    }

    let mut buf = Vec::with_capacity(256);
    uint32::encode(1, &SCHEMA_VERSION, &mut buf);
    bytes::encode(2, &record.instance_uid.as_bytes().to_vec(), &mut buf);
    scalar(3, record.sequence_num, &mut buf);
    scalar(4, record.capabilities, &mut buf);
    uint32::encode(5, &status_code(record.status), &mut buf);
    scalar(6, record.enrolled_at, &mut buf);
    scalar(7, record.last_checkin, &mut buf);
    sub(8, &record.agent_description, &mut buf);
    sub(9, &record.health, &mut buf);
    sub(10, &record.effective_config, &mut buf);
    sub(11, &record.remote_config_status, &mut buf);
    sub(12, &record.package_statuses, &mut buf);
    sub(13, &record.custom_capabilities, &mut buf);
    sub(14, &record.available_components, &mut buf);
    sub(15, &record.connection_settings_status, &mut buf);
    if let Some(e) = &record.enrollment {
        message::encode(16, &StoredEnrollment::from_core(e), &mut buf);
    }
    if let Some(u) = record.unenrolled {
        uint32::encode(17, &unenroll_code(u.reason), &mut buf);
        scalar(18, u.at, &mut buf);
    }
    if let Some(d) = &record.desired_config {
        message::encode(19, &StoredDesired::from_core(d), &mut buf);
    }
    if let Some(o) = &record.offered_config {
        message::encode(20, &StoredOffered::from_core(o), &mut buf);
    }
    scalar(21, record.published_at, &mut buf);
    buf
}

/// The record stored as `bytes`, or [`StoreError::Corrupt`] if they are not a record this
/// version can read.
pub fn decode(bytes: &[u8]) -> Result<AgentRecord, StoreError> {
    let stored = StoredAgent::decode(bytes)
        .map_err(|e| StoreError::Corrupt(format!("undecodable agent record: {e}")))?;
    if !(OLDEST_READABLE..=SCHEMA_VERSION).contains(&stored.schema_version) {
        return Err(StoreError::Corrupt(format!(
            "unknown agent record schema version {}",
            stored.schema_version
        )));
    }
    let instance_uid = InstanceUid::try_from(stored.instance_uid.as_slice())
        .map_err(|e| StoreError::Corrupt(format!("stored {e}")))?;
    let status = status_from_code(stored.status).ok_or_else(|| {
        StoreError::Corrupt(format!("unknown stored status code {}", stored.status))
    })?;
    let unenrolled = unenroll_from_code(stored.unenrolled_reason)
        .ok_or_else(|| {
            StoreError::Corrupt(format!("unknown unenroll reason {}", stored.unenrolled_reason))
        })?
        .map(|reason| Unenrolled { reason, at: stored.unenrolled_at });
    let desired_config = match stored.desired_config {
        Some(d) => Some(Arc::new(DesiredConfig { hash: config_hash(&d.hash)?, name: d.name })),
        None => None,
    };
    let offered_config = match stored.offered_config {
        Some(o) => Some(OfferedConfig { hash: config_hash(&o.hash)?, at: o.at }),
        None => None,
    };
    let effective_config = match stored.effective_config {
        // written before bodies were redacted: redact now, the raw body never leaves the store
        Some(config) if stored.schema_version < 2 => Some(redact_effective_config(&config)),
        other => other,
    };
    Ok(AgentRecord {
        instance_uid,
        sequence_num: stored.sequence_num,
        capabilities: stored.capabilities,
        status,
        enrolled_at: stored.enrolled_at,
        last_checkin: stored.last_checkin,
        enrollment: stored.enrollment.map(|e| Arc::new(e.into_core())),
        unenrolled,
        adopted: false,
        agent_description: stored.agent_description.map(Arc::new),
        health: stored.health.map(Arc::new),
        effective_config: effective_config.map(Arc::new),
        remote_config_status: stored.remote_config_status.map(Arc::new),
        package_statuses: stored.package_statuses.map(Arc::new),
        custom_capabilities: stored.custom_capabilities.map(Arc::new),
        available_components: stored.available_components.map(Arc::new),
        connection_settings_status: stored.connection_settings_status.map(Arc::new),
        desired_config,
        offered_config,
        published_at: stored.published_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{full_record, minimal_record};

    /// The schema message, built the slow way, as the reference for [`encode`].
    fn reference(record: &AgentRecord) -> Vec<u8> {
        StoredAgent {
            schema_version: SCHEMA_VERSION,
            instance_uid: record.instance_uid.as_bytes().to_vec(),
            sequence_num: record.sequence_num,
            capabilities: record.capabilities,
            status: status_code(record.status),
            enrolled_at: record.enrolled_at,
            last_checkin: record.last_checkin,
            agent_description: record.agent_description.as_deref().cloned(),
            health: record.health.as_deref().cloned(),
            effective_config: record.effective_config.as_deref().cloned(),
            remote_config_status: record.remote_config_status.as_deref().cloned(),
            package_statuses: record.package_statuses.as_deref().cloned(),
            custom_capabilities: record.custom_capabilities.as_deref().cloned(),
            available_components: record.available_components.as_deref().cloned(),
            connection_settings_status: record.connection_settings_status.as_deref().cloned(),
            enrollment: record.enrollment.as_deref().map(StoredEnrollment::from_core),
            unenrolled_reason: record.unenrolled.map_or(0, |u| unenroll_code(u.reason)),
            unenrolled_at: record.unenrolled.map_or(0, |u| u.at),
            desired_config: record.desired_config.as_deref().map(StoredDesired::from_core),
            offered_config: record.offered_config.as_ref().map(StoredOffered::from_core),
            published_at: record.published_at,
        }
        .encode_to_vec()
    }

    #[test]
    fn encoding_is_the_schema_message() {
        let mut zeros = minimal_record(InstanceUid::new_v7());
        zeros.capabilities = 0;
        zeros.enrolled_at = 0;
        for record in
            [full_record(InstanceUid::new_v7()), minimal_record(InstanceUid::new_v7()), zeros]
        {
            assert_eq!(encode(&record), reference(&record));
        }
    }

    #[test]
    fn full_record_round_trips() {
        let record = full_record(InstanceUid::new_v7());
        assert_eq!(decode(&encode(&record)), Ok(record));
    }

    #[test]
    fn minimal_record_round_trips_with_absent_sub_messages() {
        let record = minimal_record(InstanceUid::new_v7());
        assert_eq!(decode(&encode(&record)), Ok(record));
    }

    #[test]
    fn every_status_round_trips() {
        for status in [
            AgentStatus::Online,
            AgentStatus::Degraded,
            AgentStatus::Error,
            AgentStatus::Disconnected,
            AgentStatus::Offline,
        ] {
            let mut record = minimal_record(InstanceUid::new_v7());
            record.status = status;
            assert_eq!(decode(&encode(&record)).map(|r| r.status), Ok(status));
        }
    }

    #[test]
    fn present_but_empty_sub_message_stays_present() {
        let mut record = minimal_record(InstanceUid::new_v7());
        record.health = Some(Arc::new(v1::ComponentHealth::default()));
        record.custom_capabilities = Some(Arc::new(v1::CustomCapabilities::default()));
        assert_eq!(decode(&encode(&record)), Ok(record));
    }

    #[test]
    fn unknown_schema_version_is_corrupt() {
        let mut stored =
            StoredAgent::decode(encode(&minimal_record(InstanceUid::new_v7())).as_slice())
                .expect("own encoding decodes");
        stored.schema_version = SCHEMA_VERSION + 1;
        let err = decode(&stored.encode_to_vec()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(ref m) if m.contains("schema version")), "{err}");
    }

    #[test]
    fn a_first_layout_record_comes_out_with_its_secrets_redacted() {
        let raw = v1::EffectiveConfig {
            config_map: Some(v1::AgentConfigMap {
                config_map: [(
                    String::new(),
                    v1::AgentConfigFile {
                        body: "exporters: {otlp: {headers: {api-key: SECRET-1}}}".into(),
                        ..Default::default()
                    },
                )]
                .into(),
            }),
        };
        let mut stored =
            StoredAgent::decode(encode(&minimal_record(InstanceUid::new_v7())).as_slice())
                .expect("own encoding decodes");
        stored.schema_version = 1;
        stored.effective_config = Some(raw);
        let record = decode(&stored.encode_to_vec()).expect("version 1 is readable");
        let config = record.effective_config.unwrap();
        let body = &config.config_map.as_ref().unwrap().config_map[""].body;
        let body = std::str::from_utf8(body).unwrap();
        assert!(!body.contains("SECRET-1"), "{body}");
        assert!(body.contains("REDACTED"), "{body}");
    }

    #[test]
    fn enrollment_and_unenrollment_round_trip() {
        let mut record = minimal_record(InstanceUid::new_v7());
        record.enrollment = Some(Arc::new(Enrollment {
            api_key_id: "kid".into(),
            policy_id: "policy-1".into(),
            namespaces: vec!["default".into(), "team-a".into()],
        }));
        record.unenrolled = Some(Unenrolled { reason: UnenrollReason::Reenrolled, at: 1234 });
        assert_eq!(decode(&encode(&record)), Ok(record.clone()));
        assert_eq!(encode(&record), reference(&record));
    }

    #[test]
    fn missing_schema_version_is_corrupt() {
        assert!(matches!(decode(&[]), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn garbage_bytes_are_corrupt_not_a_panic() {
        let inputs: [&[u8]; 5] = [
            &[0xff; 64],
            &[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
            &[0x08],
            &[0x42, 0x80],
            b"not a record at all",
        ];
        for bytes in inputs {
            assert!(matches!(decode(bytes), Err(StoreError::Corrupt(_))), "{bytes:?}");
        }
    }

    #[test]
    fn truncated_encoding_is_corrupt() {
        let bytes = encode(&full_record(InstanceUid::new_v7()));
        // Cut inside a field: a cut on a field boundary is indistinguishable from absent fields,
        // which is why backends store the blob atomically.
        for len in [1, bytes.len() - 1] {
            assert!(matches!(decode(&bytes[..len]), Err(StoreError::Corrupt(_))), "len {len}");
        }
    }

    #[test]
    fn wrong_uid_length_is_corrupt() {
        let mut stored =
            StoredAgent::decode(encode(&minimal_record(InstanceUid::new_v7())).as_slice())
                .expect("own encoding decodes");
        stored.instance_uid.truncate(15);
        assert!(matches!(decode(&stored.encode_to_vec()), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn unknown_status_code_is_corrupt() {
        let mut stored =
            StoredAgent::decode(encode(&minimal_record(InstanceUid::new_v7())).as_slice())
                .expect("own encoding decodes");
        stored.status = 0;
        assert!(matches!(decode(&stored.encode_to_vec()), Err(StoreError::Corrupt(_))));
    }
}
