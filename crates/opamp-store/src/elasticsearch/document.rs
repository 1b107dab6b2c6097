//! The Elasticsearch document of one agent: fleet-server's OpAMP field names for what Kibana
//! reads and queries, plus opampd's exact state as a not-indexed blob that alone is decoded.
//!
//! The readable fields are a projection: they are written, never read back, so they may be
//! truncated or simplified (bounded sizes, deduplicated keys) without losing anything. Agent
//! input must never make a document unindexable, or that agent could never be written again.

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use std::collections::BTreeMap;
use std::fmt;

use opamp_core::AgentRecord;
use opamp_core::remote_config::hash_hex;
use opamp_proto::v1::{self, any_value};
use opamp_proto::{InstanceUid, agent_caps};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::StoreError;
use crate::codec;

/// Version of this document layout, stored in `opampd.schema_version`. A document with any
/// other value is refused as corrupt rather than guessed at.
pub const SCHEMA_VERSION: u64 = 1;

/// Keyword values longer than this are cut (at a char boundary): Lucene refuses terms over
/// 32 KiB, and the system index maps some keywords without `ignore_above`.
const MAX_KEYWORD_BYTES: usize = 1024;
/// Nesting kept from attribute values and component health (flattened fields refuse depth > 20).
const MAX_DEPTH: usize = 4;
/// Most tags kept in the document (a tag list is for filtering, not storage).
const MAX_TAGS: usize = 100;

/// The `_source` fields a read needs: opampd's state, and the few fleet fields a document
/// fleet-server wrote is adopted from (see [`adopt`]). The rest is for Kibana.
pub const READ_SOURCE_FIELDS: &[&str] = &[
    "opampd",
    "type",
    "sequence_num",
    "last_checkin_status",
    "enrolled_at",
    "last_checkin",
    "policy_id",
    "namespaces",
];

/// The keyword fields of `opampd.remote_config` the rollout counts filter on (mapped in an index
/// opampd creates; in one whose mapping it cannot change, searched as runtime fields).
pub const REMOTE_CONFIG_DESIRED_NAME: &str = "opampd.remote_config.desired_name";
pub const REMOTE_CONFIG_DESIRED_HASH: &str = "opampd.remote_config.desired_hash";
pub const REMOTE_CONFIG_OFFERED_HASH: &str = "opampd.remote_config.offered_hash";
pub const REMOTE_CONFIG_REPORTED_HASH: &str = "opampd.remote_config.reported_hash";
pub const REMOTE_CONFIG_STATUS: &str = "opampd.remote_config.status";

/// Longest reported hash written (in bytes, before hex): an agent may report any bytes, and
/// the hex must stay a keyword Lucene takes. A real config hash (32 bytes) is never cut.
const MAX_REPORTED_HASH_BYTES: usize = MAX_KEYWORD_BYTES / 2;

/// The non-identifying attribute holding an agent's tags, comma-separated (fleet-server's
/// convention); it becomes the document's `tags` rather than an attribute.
const TAGS_ATTRIBUTE: &str = "tags";

/// Serializes `record` as the document's JSON `_source`, stamped `updated_at = now_ms`.
///
/// The fleet fields are written as fleet-server's OpAMP handler writes them, so Kibana reads
/// opampd's agents unchanged: `agent.type`/`local_metadata.elastic.agent.name` from
/// `service.name`, versions from `service.version`, host and os from `host.name`/`os.type`,
/// `tags` from `service.name` and the `tags` attribute, the redacted effective config as an
/// object, health as `component_health_map`, the enrollment's `policy_id`/`namespaces`.
pub fn to_source(record: &AgentRecord, now_ms: u64) -> Vec<u8> {
    to_source_with_state(record, &encoded_state(record), now_ms)
}

/// opampd's exact state of `record` as both documents carry it: its protobuf, base64. Encoded
/// once per write and shared by the state record and the agent document.
pub fn encoded_state(record: &AgentRecord) -> String {
    base64_encode(&codec::encode(record))
}

/// [`to_source`] with the record's [`encoded_state`] already at hand.
pub fn to_source_with_state(record: &AgentRecord, state: &str, now_ms: u64) -> Vec<u8> {
    let description = record.agent_description.as_deref();
    let attr = |key: &str| description.and_then(|d| string_attribute(d, key));
    let message = record.health.as_deref().and_then(|h| {
        [h.last_error.as_str(), h.status.as_str()].into_iter().find(|s| !s.is_empty())
    });
    let uid = record.instance_uid.to_string();
    let service_name = attr("service.name").map(truncate);
    let version = attr("service.version").map(truncate);
    let enrollment = record.enrollment.as_deref();
    let doc = Doc {
        agent: AgentField { id: &uid, kind: service_name, version, name: None },
        kind: "OPAMP",
        active: true,
        enrolled_at: Rfc3339(record.enrolled_at),
        last_checkin: Rfc3339(record.last_checkin),
        last_checkin_status: record.status.as_str(),
        last_checkin_message: message.map(truncate),
        // The mapping says `long`; a u64 beyond it would make the document unindexable.
        sequence_num: record.sequence_num.min(i64::MAX as u64),
        capabilities: Capabilities(record.capabilities),
        health: record.health.as_deref().map(|h| Health(h, 0)),
        effective_config: record.effective_config.as_deref().and_then(effective_config_object),
        identifying_attributes: description.map(|d| Attributes {
            kvs: &d.identifying_attributes,
            depth: 0,
            skip: None,
        }),
        non_identifying_attributes: description.map(|d| Attributes {
            kvs: &d.non_identifying_attributes,
            depth: 0,
            skip: Some(TAGS_ATTRIBUTE),
        }),
        local_metadata: LocalMetadata {
            elastic: ElasticMeta {
                agent: AgentField { id: &uid, kind: None, version, name: service_name },
            },
            host: HostMeta {
                hostname: attr("host.name").map(truncate),
                name: attr("host.name").map(truncate),
                id: attr("host.id").map(truncate),
                architecture: attr("host.arch").map(truncate),
            },
            os: OsMeta {
                platform: attr("os.type").map(truncate),
                full: attr("os.description").map(truncate),
            },
        },
        tags: tags(service_name, description),
        policy_id: enrollment.map(|e| truncate(&e.policy_id)),
        namespaces: enrollment.map(|e| e.namespaces.iter().map(|n| truncate(n)).collect()),
        policy_revision_idx: 1,
        audit_unenrolled_reason: record.unenrolled.map(|u| u.reason.as_str()),
        audit_unenrolled_time: record.unenrolled.map(|u| Rfc3339(u.at)),
        updated_at: Rfc3339(now_ms),
        opampd: Opampd {
            schema_version: SCHEMA_VERSION,
            state,
            remote_config: remote_config(record),
        },
    };
    // Serializing plain structs, strings and numbers into a Vec cannot fail.
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// `opampd.remote_config`: the config the agent should run next to the one it reports, so the
/// rollout counts are one search and Kibana shows desired against reported. `None` when the
/// record has none of it.
fn remote_config(record: &AgentRecord) -> Option<RemoteConfigField<'_>> {
    let desired = record.desired_config.as_deref();
    let reported = record.remote_config_status.as_deref();
    if desired.is_none() && record.offered_config.is_none() && reported.is_none() {
        return None;
    }
    Some(RemoteConfigField {
        desired_name: desired.map(|d| truncate(&d.name)),
        desired_hash: desired.map(|d| hash_hex(&d.hash)),
        offered_hash: record.offered_config.map(|o| hash_hex(&o.hash)),
        reported_hash: reported
            .map(|r| &r.last_remote_config_hash[..])
            .filter(|h| !h.is_empty())
            .map(|h| hash_hex(&h[..h.len().min(MAX_REPORTED_HASH_BYTES)])),
        status: reported.map(|r| remote_config_status(r.status)),
        error: reported.map(|r| truncate(&r.error_message)).filter(|e| !e.is_empty()),
    })
}

/// A reported remote-config status as the document spells it (an unknown value is `unset`).
pub fn remote_config_status(status: i32) -> &'static str {
    match v1::RemoteConfigStatuses::try_from(status) {
        Ok(v1::RemoteConfigStatuses::Applied) => "applied",
        Ok(v1::RemoteConfigStatuses::Applying) => "applying",
        Ok(v1::RemoteConfigStatuses::Failed) => "failed",
        _ => "unset",
    }
}

/// Reads the record back from a document's `_source` (only the `opampd` object is needed). A
/// document fleet-server wrote for an OpAMP agent (no `opampd` object) is adopted, see
/// [`adopt`].
pub fn from_source(source: &Value, uid: InstanceUid) -> Result<AgentRecord, StoreError> {
    let Some(opampd) = source.get("opampd") else {
        return adopt(source, uid);
    };
    match opampd.get("schema_version").and_then(Value::as_u64) {
        Some(SCHEMA_VERSION) => {}
        other => {
            return Err(StoreError::Corrupt(format!(
                "document {uid} has schema version {other:?}, expected {SCHEMA_VERSION}"
            )));
        }
    }
    let state = opampd
        .get("state")
        .and_then(Value::as_str)
        .ok_or_else(|| StoreError::Corrupt(format!("document {uid} has no opampd.state")))?;
    let bytes = base64_decode(state)
        .ok_or_else(|| StoreError::Corrupt(format!("document {uid} has invalid base64 state")))?;
    let record = codec::decode(&bytes)?;
    if record.instance_uid != uid {
        return Err(StoreError::Corrupt(format!(
            "document {uid} holds the state of {}",
            record.instance_uid
        )));
    }
    Ok(record)
}

/// The record of an agent fleet-server enrolled: what its document says of the agent's
/// identity and place (sequence number, status, times, policy), none of its reported state, and
/// `adopted` set so the agent's first message here is asked for its full state unless it is
/// one. Only OpAMP documents (`type: OPAMP`) are adopted: an Elastic Agent's is not an OpAMP
/// agent's state.
fn adopt(source: &Value, uid: InstanceUid) -> Result<AgentRecord, StoreError> {
    if source.get("type").and_then(Value::as_str) != Some("OPAMP") {
        return Err(StoreError::Corrupt(format!(
            "document {uid} is neither opampd's nor an OpAMP agent's of fleet-server"
        )));
    }
    let time = |field: &str| {
        source
            .get(field)
            .and_then(Value::as_str)
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64)
    };
    let status = match source.get("last_checkin_status").and_then(Value::as_str) {
        Some("degraded") => opamp_core::AgentStatus::Degraded,
        Some("error") => opamp_core::AgentStatus::Error,
        Some("disconnected") => opamp_core::AgentStatus::Disconnected,
        _ => opamp_core::AgentStatus::Online,
    };
    let enrollment = source.get("policy_id").and_then(Value::as_str).map(|policy| {
        let namespaces = source
            .get("namespaces")
            .and_then(Value::as_array)
            .map(|n| n.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        // fleet-server does not record which enrollment key an OpAMP agent used
        std::sync::Arc::new(opamp_core::Enrollment {
            api_key_id: String::new(),
            policy_id: policy.to_owned(),
            namespaces,
        })
    });
    let mut record = AgentRecord::new(uid, time("enrolled_at"));
    record.sequence_num = source.get("sequence_num").and_then(Value::as_u64).unwrap_or(0);
    record.status = status;
    record.last_checkin = time("last_checkin");
    record.enrollment = enrollment;
    record.adopted = true;
    Ok(record)
}

/// Mappings for an index opampd creates: only what is queried is indexed (`dynamic: false`),
/// the state blob is stored but not indexed.
pub fn mappings() -> Value {
    let keyword = json!({ "type": "keyword", "ignore_above": MAX_KEYWORD_BYTES });
    json!({
        "dynamic": false,
        "_meta": { "opampd_schema_version": SCHEMA_VERSION },
        "properties": {
            "agent": { "properties": {
                "id": { "type": "keyword" }, "type": keyword, "version": keyword
            } },
            "type": { "type": "keyword" },
            "active": { "type": "boolean" },
            "enrolled_at": { "type": "date" },
            "last_checkin": { "type": "date" },
            "last_checkin_status": { "type": "keyword" },
            "last_checkin_message": {
                "type": "text",
                "fields": { "keyword": keyword }
            },
            "sequence_num": { "type": "long" },
            "capabilities": { "type": "keyword" },
            "health": {
                "properties": { "healthy": { "type": "boolean" }, "status": keyword }
            },
            "identifying_attributes": { "type": "flattened", "ignore_above": MAX_KEYWORD_BYTES },
            "local_metadata": {
                "properties": {
                    "elastic": { "properties": { "agent": { "properties": {
                        "id": { "type": "keyword" }, "version": keyword, "name": keyword
                    } } } },
                    "host": { "properties": { "hostname": keyword, "name": keyword, "id": keyword, "architecture": keyword } },
                    "os": { "properties": { "platform": keyword, "full": keyword } }
                }
            },
            "tags": { "type": "keyword" },
            "policy_id": { "type": "keyword" },
            "namespaces": { "type": "keyword" },
            "policy_revision_idx": { "type": "integer" },
            "audit_unenrolled_reason": { "type": "keyword" },
            "audit_unenrolled_time": { "type": "date" },
            "updated_at": { "type": "date" },
            "opampd": {
                "properties": {
                    "schema_version": { "type": "integer" },
                    "state": { "type": "binary" },
                    // `error` is stored, not indexed (dynamic: false)
                    "remote_config": { "properties": {
                        "desired_name": keyword,
                        "desired_hash": keyword,
                        "offered_hash": keyword,
                        "reported_hash": keyword,
                        "status": keyword
                    } }
                }
            }
        }
    })
}

/// Index settings for an index opampd creates: one shard (documents are small and read by id),
/// replicas where the cluster has nodes for them, like Elastic's own system indices, and the
/// refresh interval given (`None`: Elasticsearch's default).
pub fn settings(refresh_interval: Option<std::time::Duration>) -> Value {
    let mut index = json!({ "number_of_shards": 1, "auto_expand_replicas": "0-1" });
    if let Some(every) = refresh_interval {
        index["refresh_interval"] = format!("{}ms", every.as_millis().max(1)).into();
    }
    json!({ "index": index })
}

/// The `_source` of an agent's state record (in the state index, see
/// `EsConfig::state_index`): opampd's exact state and nothing else, read by
/// [`from_source`] like the `opampd` object of an agent document. `state` is the record's
/// [`encoded_state`].
pub fn state_source(state: &str) -> Vec<u8> {
    let doc =
        StateDoc { opampd: Opampd { schema_version: SCHEMA_VERSION, state, remote_config: None } };
    // Serializing a struct of a number and a string into a Vec cannot fail.
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// Mappings of the state index: nothing is indexed (`dynamic: false`, no field mapped), so
/// writing a record costs Elasticsearch its `_id`, its version and the stored `_source`.
pub fn state_mappings() -> Value {
    json!({
        "dynamic": false,
        "_meta": { "opampd_schema_version": SCHEMA_VERSION, "opampd_kind": "agent-state" },
        "properties": {}
    })
}

#[derive(Serialize)]
struct StateDoc<'a> {
    opampd: Opampd<'a>,
}

#[derive(Serialize)]
struct Doc<'a> {
    agent: AgentField<'a>,
    #[serde(rename = "type")]
    kind: &'static str,
    active: bool,
    enrolled_at: Rfc3339,
    last_checkin: Rfc3339,
    last_checkin_status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_checkin_message: Option<&'a str>,
    sequence_num: u64,
    capabilities: Capabilities,
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<Health<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    effective_config: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identifying_attributes: Option<Attributes<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    non_identifying_attributes: Option<Attributes<'a>>,
    local_metadata: LocalMetadata<'a>,
    tags: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespaces: Option<Vec<&'a str>>,
    policy_revision_idx: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    audit_unenrolled_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    audit_unenrolled_time: Option<Rfc3339>,
    updated_at: Rfc3339,
    opampd: Opampd<'a>,
}

/// `agent` (id, type, version) and `local_metadata.elastic.agent` (id, version, name).
#[derive(Serialize)]
struct AgentField<'a> {
    id: &'a str,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

#[derive(Serialize)]
struct LocalMetadata<'a> {
    elastic: ElasticMeta<'a>,
    host: HostMeta<'a>,
    os: OsMeta<'a>,
}

#[derive(Serialize)]
struct ElasticMeta<'a> {
    agent: AgentField<'a>,
}

#[derive(Serialize)]
struct HostMeta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    architecture: Option<&'a str>,
}

#[derive(Serialize)]
struct OsMeta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    full: Option<&'a str>,
}

#[derive(Serialize)]
struct Opampd<'a> {
    schema_version: u64,
    state: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    remote_config: Option<RemoteConfigField<'a>>,
}

/// `opampd.remote_config`, hashes in lowercase hex; absent parts are left out.
#[derive(Serialize)]
struct RemoteConfigField<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    desired_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    desired_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offered_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reported_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// Capability bits as their protobuf names (unknown bits are dropped here, kept in the blob).
struct Capabilities(u64);

impl Serialize for Capabilities {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(agent_caps::names(self.0))
    }
}

/// Milliseconds since the epoch as an RFC 3339 UTC timestamp with milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Rfc3339(pub u64);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Clamp to year 9999: ES date parsing refuses more digits, and agents never get there.
        let ms = self.0.min(253_402_300_799_999);
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        humantime::format_rfc3339_millis(at).fmt(f)
    }
}

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Attributes as an object `key -> value`. Keys are deduplicated (last wins): ES refuses a
/// document with a duplicate JSON key. `skip` leaves one key out (the `tags` attribute, which
/// becomes the document's `tags`).
struct Attributes<'a> {
    kvs: &'a [v1::KeyValue],
    depth: usize,
    skip: Option<&'static str>,
}

impl Serialize for Attributes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let unique: BTreeMap<&str, Option<&v1::AnyValue>> = self
            .kvs
            .iter()
            .filter(|kv| Some(kv.key.as_str()) != self.skip)
            .map(|kv| (kv.key.as_str(), kv.value.as_ref()))
            .collect();
        let mut map = s.serialize_map(Some(unique.len()))?;
        for (key, value) in unique {
            map.serialize_entry(key, &Any(value, self.depth + 1))?;
        }
        map.end()
    }
}

/// An `AnyValue` as plain JSON; bytes as base64, nesting cut at [`MAX_DEPTH`] (as `null`).
struct Any<'a>(Option<&'a v1::AnyValue>, usize);

impl Serialize for Any<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Some(value) = self.0.and_then(|v| v.value.as_ref()) else {
            return s.serialize_none();
        };
        match value {
            any_value::Value::StringValue(v) => s.serialize_str(v),
            any_value::Value::BoolValue(v) => s.serialize_bool(*v),
            any_value::Value::IntValue(v) => s.serialize_i64(*v),
            // serde_json writes non-finite floats as null, which ES accepts.
            any_value::Value::DoubleValue(v) => s.serialize_f64(*v),
            any_value::Value::BytesValue(v) => s.serialize_str(&base64_encode(v)),
            _ if self.1 >= MAX_DEPTH => s.serialize_none(),
            any_value::Value::ArrayValue(v) => {
                let mut seq = s.serialize_seq(Some(v.values.len()))?;
                for item in &v.values {
                    seq.serialize_element(&Any(Some(item), self.1 + 1))?;
                }
                seq.end()
            }
            any_value::Value::KvlistValue(v) => {
                Attributes { kvs: &v.values, depth: self.1, skip: None }.serialize(s)
            }
        }
    }
}

/// Component health in fleet-server's shape (the OpAMP field names): `healthy` (always, also
/// when false), `status`, `last_error`, `start_time_unix_nano`, `status_time_unix_nano` and
/// `component_health_map`, nested to [`MAX_DEPTH`]; empty strings and zero times omitted.
struct Health<'a>(&'a v1::ComponentHealth, usize);

impl Serialize for Health<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let h = self.0;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("healthy", &h.healthy)?;
        if !h.status.is_empty() {
            map.serialize_entry("status", truncate(&h.status))?;
        }
        if !h.last_error.is_empty() {
            map.serialize_entry("last_error", &h.last_error)?;
        }
        if h.start_time_unix_nano != 0 {
            map.serialize_entry("start_time_unix_nano", &h.start_time_unix_nano)?;
        }
        if h.status_time_unix_nano != 0 {
            map.serialize_entry("status_time_unix_nano", &h.status_time_unix_nano)?;
        }
        if !h.component_health_map.is_empty() && self.1 < MAX_DEPTH {
            // Sorted so that equal state gives byte-equal documents.
            let components: BTreeMap<&String, Health<'_>> =
                h.component_health_map.iter().map(|(k, v)| (k, Health(v, self.1 + 1))).collect();
            map.serialize_entry("component_health_map", &components)?;
        }
        map.end()
    }
}

/// The effective config as fleet-server stores it: the `""` file (the collector's main
/// config) as a JSON object. The record holds it already parsed and redacted as JSON text
/// (`opamp_core::redact`); a body that is empty, not an object, or not JSON (a record written
/// by some other means) is left out rather than risk an unindexable document.
fn effective_config_object(config: &v1::EffectiveConfig) -> Option<&RawValue> {
    let body = &config.config_map.as_ref()?.config_map.get("")?.body;
    let text = std::str::from_utf8(body).ok()?;
    if !text.starts_with('{') {
        return None;
    }
    serde_json::from_str::<&RawValue>(text).ok()
}

/// `tags` as fleet-server builds them: `service.name` first, then the comma-separated values of
/// the non-identifying `tags` attribute, trimmed, without empty ones, each once in first-seen
/// order. Unlike fleet-server, no empty tag stands in for a missing `service.name`.
fn tags<'a>(service_name: Option<&'a str>, d: Option<&'a v1::AgentDescription>) -> Vec<&'a str> {
    let listed = d
        .and_then(|d| d.non_identifying_attributes.iter().rev().find(|kv| kv.key == TAGS_ATTRIBUTE))
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
        .into_iter()
        .flat_map(|s| s.split(','))
        .map(str::trim);
    let mut out: Vec<&str> = Vec::new();
    for tag in service_name.into_iter().chain(listed) {
        let tag = truncate(tag);
        if !tag.is_empty() && !out.contains(&tag) && out.len() < MAX_TAGS {
            out.push(tag);
        }
    }
    out
}

/// The last string value of attribute `key` (identifying first, then non-identifying).
pub(crate) fn string_attribute<'a>(d: &'a v1::AgentDescription, key: &str) -> Option<&'a str> {
    let find = |attrs: &'a [v1::KeyValue]| {
        attrs.iter().rev().find(|kv| kv.key == key).and_then(|kv| {
            match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.as_str()),
                _ => None,
            }
        })
    };
    find(&d.identifying_attributes).or_else(|| find(&d.non_identifying_attributes))
}

/// `s` cut to what a keyword field takes (at a char boundary).
pub(crate) fn truncate(s: &str) -> &str {
    if s.len() <= MAX_KEYWORD_BYTES {
        return s;
    }
    let mut end = MAX_KEYWORD_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Standard padded base64, as ES `binary` fields expect.
pub fn base64_encode(bytes: &[u8]) -> String {
    BASE64_STANDARD.encode(bytes)
}

/// Strict standard padded base64; `None` on any malformed input.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    BASE64_STANDARD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opamp_core::AgentStatus;
    use std::sync::Arc;

    fn kv(key: &str, value: any_value::Value) -> v1::KeyValue {
        v1::KeyValue { key: key.into(), value: Some(v1::AnyValue { value: Some(value) }) }
    }

    fn record() -> AgentRecord {
        AgentRecord {
            sequence_num: 42,
            capabilities: agent_caps::REPORTS_STATUS | agent_caps::REPORTS_HEALTH,
            status: AgentStatus::Degraded,
            last_checkin: 1_700_000_030_123,
            agent_description: Some(Arc::new(v1::AgentDescription {
                identifying_attributes: vec![
                    kv("service.name", any_value::Value::StringValue("otelcol".into())),
                    kv("service.version", any_value::Value::StringValue("0.99.0".into())),
                ],
                non_identifying_attributes: vec![
                    kv("host.name", any_value::Value::StringValue("web-1".into())),
                    kv("dup", any_value::Value::IntValue(1)),
                    kv("dup", any_value::Value::IntValue(2)),
                ],
            })),
            health: Some(Arc::new(v1::ComponentHealth {
                healthy: true,
                status: "StatusRecoverableError".into(),
                ..Default::default()
            })),
            ..AgentRecord::new(InstanceUid::from_bytes([7; 16]), 1_700_000_000_000)
        }
    }

    #[test]
    fn document_has_fleet_fields() {
        let doc: Value = serde_json::from_slice(&to_source(&record(), 1_700_000_031_000)).unwrap();
        assert_eq!(doc["agent"]["id"], "07070707-0707-0707-0707-070707070707");
        assert_eq!(doc["agent"]["version"], "0.99.0");
        assert_eq!(doc["type"], "OPAMP");
        assert_eq!(doc["active"], true);
        assert_eq!(doc["last_checkin"], "2023-11-14T22:13:50.123Z");
        assert_eq!(doc["last_checkin_status"], "degraded");
        assert_eq!(doc["last_checkin_message"], "StatusRecoverableError");
        assert_eq!(doc["sequence_num"], 42);
        assert_eq!(doc["capabilities"], json!(["ReportsStatus", "ReportsHealth"]));
        assert_eq!(doc["identifying_attributes"]["service.name"], "otelcol");
        assert_eq!(doc["non_identifying_attributes"]["dup"], 2);
        assert_eq!(doc["local_metadata"]["host"]["hostname"], "web-1");
        assert_eq!(doc["policy_revision_idx"], 1);
        assert_eq!(doc["opampd"]["schema_version"], SCHEMA_VERSION);
    }

    #[test]
    fn fleet_fields_come_from_the_description_enrollment_and_redacted_config() {
        let mut r = record();
        let d = Arc::make_mut(r.agent_description.as_mut().unwrap());
        d.non_identifying_attributes
            .push(kv("os.type", any_value::Value::StringValue("linux".into())));
        d.non_identifying_attributes
            .push(kv("tags", any_value::Value::StringValue(" a, b,,a ,otelcol".into())));
        r.enrollment = Some(Arc::new(opamp_core::Enrollment {
            api_key_id: "kid".into(),
            policy_id: "p1".into(),
            namespaces: vec!["default".into()],
        }));
        r.unenrolled = Some(opamp_core::Unenrolled {
            reason: opamp_core::UnenrollReason::Reenrolled,
            at: 1_700_000_040_000,
        });
        r.effective_config =
            Some(Arc::new(opamp_core::redact::redact_effective_config(&v1::EffectiveConfig {
                config_map: Some(v1::AgentConfigMap {
                    config_map: [(
                        String::new(),
                        v1::AgentConfigFile {
                            body: "exporters: {es: {password: pw, endpoint: x}}".into(),
                            ..Default::default()
                        },
                    )]
                    .into(),
                }),
            })));
        let text = String::from_utf8(to_source(&r, 0)).unwrap();
        assert!(!text.contains("\"pw\""), "{text}");
        let doc: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["agent"]["type"], "otelcol");
        assert_eq!(doc["local_metadata"]["elastic"]["agent"]["name"], "otelcol");
        assert_eq!(doc["local_metadata"]["elastic"]["agent"]["version"], "0.99.0");
        assert_eq!(doc["local_metadata"]["os"]["platform"], "linux");
        assert_eq!(doc["tags"], json!(["otelcol", "a", "b"]));
        assert_eq!(doc["non_identifying_attributes"].get("tags"), None);
        assert_eq!(doc["policy_id"], "p1");
        assert_eq!(doc["namespaces"], json!(["default"]));
        assert_eq!(doc["audit_unenrolled_reason"], "reenrolled");
        assert_eq!(doc["audit_unenrolled_time"], "2023-11-14T22:14:00.000Z");
        assert_eq!(
            doc["effective_config"],
            json!({"exporters": {"es": {"endpoint": "x", "password": "REDACTED"}}})
        );
    }

    #[test]
    fn health_has_fleet_server_field_names() {
        let mut r = record();
        r.health = Some(Arc::new(v1::ComponentHealth {
            healthy: false,
            start_time_unix_nano: 1_787_306_400_000_000_000,
            status_time_unix_nano: 1_787_306_405_000_000_000,
            last_error: "refused".into(),
            status: "StatusPermanentError".into(),
            component_health_map: [(
                "pipeline:logs".to_owned(),
                v1::ComponentHealth {
                    healthy: true,
                    status: "StatusOK".into(),
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        }));
        let doc: Value = serde_json::from_slice(&to_source(&r, 0)).unwrap();
        let h = &doc["health"];
        assert_eq!(h["healthy"], false);
        assert_eq!(h["start_time_unix_nano"], 1_787_306_400_000_000_000u64);
        assert_eq!(h["status_time_unix_nano"], 1_787_306_405_000_000_000u64);
        assert_eq!(h["last_error"], "refused");
        assert_eq!(h["component_health_map"]["pipeline:logs"]["status"], "StatusOK");
        assert_eq!(doc["last_checkin_message"], "refused");
    }

    #[test]
    fn a_missing_service_name_gives_no_empty_tag_and_no_type() {
        let mut r = record();
        Arc::make_mut(r.agent_description.as_mut().unwrap()).identifying_attributes.clear();
        let doc: Value = serde_json::from_slice(&to_source(&r, 0)).unwrap();
        assert_eq!(doc["tags"], json!([]));
        assert_eq!(doc["agent"].get("type"), None);
        assert_eq!(doc.get("policy_id"), None);
        assert_eq!(doc.get("effective_config"), None);
    }

    #[test]
    fn remote_config_shows_desired_offered_and_reported() {
        let doc: Value = serde_json::from_slice(&to_source(&record(), 0)).unwrap();
        assert_eq!(doc["opampd"].get("remote_config"), None, "nothing of it, no object");

        let mut r = record();
        r.desired_config = Some(Arc::new(opamp_core::remote_config::DesiredConfig {
            name: "edge".into(),
            hash: [0xab; 32],
        }));
        r.offered_config =
            Some(opamp_core::remote_config::OfferedConfig { hash: [0x01; 32], at: 5 });
        r.remote_config_status = Some(Arc::new(v1::RemoteConfigStatus {
            last_remote_config_hash: vec![0xcd; 32].into(),
            status: v1::RemoteConfigStatuses::Failed as i32,
            error_message: "bad yaml".into(),
        }));
        let doc: Value = serde_json::from_slice(&to_source(&r, 0)).unwrap();
        assert_eq!(
            doc["opampd"]["remote_config"],
            json!({
                "desired_name": "edge",
                "desired_hash": "ab".repeat(32),
                "offered_hash": "01".repeat(32),
                "reported_hash": "cd".repeat(32),
                "status": "failed",
                "error": "bad yaml",
            })
        );
        assert_eq!(from_source(&doc, r.instance_uid), Ok(r.clone()), "the blob still decides");

        // a status alone; a huge reported hash is cut to a keyword, an unknown status is unset
        r.desired_config = None;
        r.offered_config = None;
        r.remote_config_status = Some(Arc::new(v1::RemoteConfigStatus {
            last_remote_config_hash: vec![0xee; 100_000].into(),
            status: 99,
            error_message: String::new(),
        }));
        let doc: Value = serde_json::from_slice(&to_source(&r, 0)).unwrap();
        let rc = &doc["opampd"]["remote_config"];
        assert_eq!(rc["status"], "unset");
        assert_eq!(rc["reported_hash"].as_str().unwrap().len(), MAX_KEYWORD_BYTES);
        assert_eq!(rc.as_object().unwrap().len(), 2, "{rc}");
    }

    #[test]
    fn duplicate_keys_never_reach_the_json() {
        let text = String::from_utf8(to_source(&record(), 0)).unwrap();
        assert_eq!(text.matches("\"dup\"").count(), 1, "{text}");
    }

    #[test]
    fn document_round_trips_through_the_blob() {
        let r = record();
        let doc: Value = serde_json::from_slice(&to_source(&r, 0)).unwrap();
        assert_eq!(from_source(&doc, r.instance_uid), Ok(r));
    }

    #[test]
    fn a_fleet_server_document_is_adopted() {
        let uid = InstanceUid::from_bytes([9; 16]);
        let doc = json!({
            "type": "OPAMP", "active": true, "agent": {"id": uid.to_string(), "type": "otelcol"},
            "enrolled_at": "2026-08-21T10:00:00Z", "last_checkin": "2026-08-21T10:05:00Z",
            "last_checkin_status": "degraded", "sequence_num": 17,
            "policy_id": "p1", "namespaces": ["default"], "tags": ["otelcol"],
            "identifying_attributes": {"service.name": "otelcol"},
        });
        let r = from_source(&doc, uid).expect("adopted");
        assert!(r.adopted);
        assert_eq!(r.sequence_num, 17);
        assert_eq!(r.status, AgentStatus::Degraded);
        assert_eq!(r.enrolled_at, 1_787_306_400_000);
        assert_eq!(r.last_checkin, 1_787_306_700_000);
        assert_eq!(r.enrollment.as_ref().unwrap().policy_id, "p1");
        assert_eq!(r.enrollment.as_ref().unwrap().namespaces, ["default"]);
        assert_eq!(r.agent_description, None, "reported state is asked for, not guessed");
        // written back, it is opampd's own
        let written: Value = serde_json::from_slice(&to_source(&r, 0)).unwrap();
        assert!(!from_source(&written, uid).unwrap().adopted);
    }

    #[test]
    fn wrong_schema_version_or_missing_state_is_corrupt() {
        let r = record();
        let mut doc: Value = serde_json::from_slice(&to_source(&r, 0)).unwrap();
        doc["opampd"]["schema_version"] = json!(999);
        assert!(matches!(from_source(&doc, r.instance_uid), Err(StoreError::Corrupt(_))));
        assert!(matches!(from_source(&json!({}), r.instance_uid), Err(StoreError::Corrupt(_))));
        let elastic_agent = json!({"type": "PERMANENT", "agent": {"id": "x"}});
        assert!(matches!(from_source(&elastic_agent, r.instance_uid), Err(StoreError::Corrupt(_))));
        let bad = json!({"opampd": {"schema_version": SCHEMA_VERSION, "state": "%%%"}});
        assert!(matches!(from_source(&bad, r.instance_uid), Err(StoreError::Corrupt(_))));
        let other = InstanceUid::from_bytes([8; 16]);
        let doc: Value = serde_json::from_slice(&to_source(&r, 0)).unwrap();
        assert!(matches!(from_source(&doc, other), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn rfc3339_formats_epoch_leap_day_and_clamps() {
        assert_eq!(Rfc3339(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(Rfc3339(951_782_400_001).to_string(), "2000-02-29T00:00:00.001Z");
        assert_eq!(Rfc3339(u64::MAX).to_string(), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn base64_round_trips_and_rejects_garbage() {
        for len in 0..20 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(base64_decode(&base64_encode(&data)).as_deref(), Some(&data[..]));
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_decode("Zm8="), Some(b"fo".to_vec()));
        for bad in ["Zm8", "Zm=8", "Z===", "Zm8=Zm8=", "Zm8*"] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn huge_and_deep_agent_input_stays_indexable() {
        let mut r = record();
        let mut deep = v1::AnyValue { value: Some(any_value::Value::StringValue("x".into())) };
        for _ in 0..50 {
            deep = v1::AnyValue {
                value: Some(any_value::Value::KvlistValue(v1::KeyValueList {
                    values: vec![v1::KeyValue { key: "k".into(), value: Some(deep) }],
                })),
            };
        }
        let d = Arc::make_mut(r.agent_description.as_mut().unwrap());
        d.identifying_attributes.push(v1::KeyValue { key: "deep".into(), value: Some(deep) });
        d.identifying_attributes
            .push(kv("service.version", any_value::Value::StringValue("é".repeat(5000))));
        r.sequence_num = u64::MAX;
        let doc: Value = serde_json::from_slice(&to_source(&r, 0)).unwrap();
        assert!(doc["agent"]["version"].as_str().unwrap().len() <= MAX_KEYWORD_BYTES);
        assert_eq!(doc["sequence_num"], i64::MAX);
        let depth = |mut v: &Value| {
            let mut n = 0;
            while let Some(next) = v.get("k") {
                v = next;
                n += 1;
            }
            n
        };
        assert!(depth(&doc["identifying_attributes"]["deep"]) < MAX_DEPTH);
    }
}
