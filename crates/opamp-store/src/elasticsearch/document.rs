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
use opamp_proto::v1::{self, any_value};
use opamp_proto::{InstanceUid, agent_caps};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
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
/// Effective-config text shown in the document; beyond it bodies are omitted (the blob keeps them).
const MAX_CONFIG_TEXT_BYTES: usize = 64 * 1024;

/// The `_source` fields a read needs (the rest is for Kibana).
pub const READ_SOURCE_FIELDS: &str = "opampd";

/// Serializes `record` as the document's JSON `_source`, stamped `updated_at = now_ms`.
pub fn to_source(record: &AgentRecord, now_ms: u64) -> Vec<u8> {
    let state = base64_encode(&codec::encode(record));
    let description = record.agent_description.as_deref();
    let attr = |key: &str| description.and_then(|d| string_attribute(d, key));
    let message = record.health.as_deref().and_then(|h| {
        [h.last_error.as_str(), h.status.as_str()].into_iter().find(|s| !s.is_empty())
    });
    let uid = record.instance_uid.to_string();
    let doc = Doc {
        agent: AgentField { id: &uid, version: attr("service.version").map(truncate) },
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
        effective_config: record.effective_config.as_deref().map(EffectiveConfig),
        identifying_attributes: description.map(|d| Attributes(&d.identifying_attributes, 0)),
        non_identifying_attributes: description
            .map(|d| Attributes(&d.non_identifying_attributes, 0)),
        local_metadata: LocalMetadata {
            elastic: ElasticMeta {
                agent: AgentField { id: &uid, version: attr("service.version").map(truncate) },
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
        tags: [],
        policy_revision_idx: 1,
        updated_at: Rfc3339(now_ms),
        opampd: Opampd { schema_version: SCHEMA_VERSION, state: &state },
    };
    // Serializing plain structs, strings and numbers into a Vec cannot fail.
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// Reads the record back from a document's `_source` (only the `opampd` object is needed).
pub fn from_source(source: &Value, uid: InstanceUid) -> Result<AgentRecord, StoreError> {
    let opampd = source
        .get("opampd")
        .ok_or_else(|| StoreError::Corrupt(format!("document {uid} has no opampd state")))?;
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

/// Mappings for an index opampd creates: only what is queried is indexed (`dynamic: false`),
/// the state blob is stored but not indexed.
pub fn mappings() -> Value {
    let keyword = json!({ "type": "keyword", "ignore_above": MAX_KEYWORD_BYTES });
    json!({
        "dynamic": false,
        "_meta": { "opampd_schema_version": SCHEMA_VERSION },
        "properties": {
            "agent": { "properties": { "id": { "type": "keyword" }, "version": keyword } },
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
                        "id": { "type": "keyword" }, "version": keyword
                    } } } },
                    "host": { "properties": { "hostname": keyword, "name": keyword, "id": keyword, "architecture": keyword } },
                    "os": { "properties": { "platform": keyword, "full": keyword } }
                }
            },
            "tags": { "type": "keyword" },
            "policy_revision_idx": { "type": "integer" },
            "updated_at": { "type": "date" },
            "opampd": {
                "properties": {
                    "schema_version": { "type": "integer" },
                    "state": { "type": "binary" }
                }
            }
        }
    })
}

/// Index settings for an index opampd creates: one shard (documents are small and read by id),
/// replicas where the cluster has nodes for them, like Elastic's own system indices.
pub fn settings() -> Value {
    json!({ "index": { "number_of_shards": 1, "auto_expand_replicas": "0-1" } })
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
    effective_config: Option<EffectiveConfig<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identifying_attributes: Option<Attributes<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    non_identifying_attributes: Option<Attributes<'a>>,
    local_metadata: LocalMetadata<'a>,
    tags: [&'static str; 0],
    policy_revision_idx: u32,
    updated_at: Rfc3339,
    opampd: Opampd<'a>,
}

#[derive(Serialize)]
struct AgentField<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a str>,
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
/// document with a duplicate JSON key.
struct Attributes<'a>(&'a [v1::KeyValue], usize);

impl Serialize for Attributes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let unique: BTreeMap<&str, Option<&v1::AnyValue>> =
            self.0.iter().map(|kv| (kv.key.as_str(), kv.value.as_ref())).collect();
        let mut map = s.serialize_map(Some(unique.len()))?;
        for (key, value) in unique {
            map.serialize_entry(key, &Any(value, self.1 + 1))?;
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
            any_value::Value::KvlistValue(v) => Attributes(&v.values, self.1).serialize(s),
        }
    }
}

/// Component health, nested components to [`MAX_DEPTH`]; empty strings and zero times omitted.
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
            map.serialize_entry("start_time", &Rfc3339(h.start_time_unix_nano / 1_000_000))?;
        }
        if h.status_time_unix_nano != 0 {
            map.serialize_entry("status_time", &Rfc3339(h.status_time_unix_nano / 1_000_000))?;
        }
        if !h.component_health_map.is_empty() && self.1 < MAX_DEPTH {
            // Sorted so that equal state gives byte-equal documents.
            let sorted: BTreeMap<&String, &v1::ComponentHealth> =
                h.component_health_map.iter().collect();
            let components: BTreeMap<&String, Health<'_>> =
                sorted.into_iter().map(|(k, v)| (k, Health(v, self.1 + 1))).collect();
            map.serialize_entry("components", &components)?;
        }
        map.end()
    }
}

/// Effective config files as `name -> {content_type, body}`, bodies as text when they are UTF-8
/// and the total stays under [`MAX_CONFIG_TEXT_BYTES`].
struct EffectiveConfig<'a>(&'a v1::EffectiveConfig);

impl Serialize for EffectiveConfig<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let files: BTreeMap<&String, &v1::AgentConfigFile> =
            self.0.config_map.iter().flat_map(|m| m.config_map.iter()).collect();
        let total: usize = files.values().map(|f| f.body.len()).sum();
        let show_bodies = total <= MAX_CONFIG_TEXT_BYTES;
        let mut map = s.serialize_map(Some(1))?;
        let shown: BTreeMap<&String, ConfigFile<'_>> =
            files.into_iter().map(|(k, f)| (k, ConfigFile(f, show_bodies))).collect();
        map.serialize_entry("config_map", &shown)?;
        map.end()
    }
}

struct ConfigFile<'a>(&'a v1::AgentConfigFile, bool);

impl Serialize for ConfigFile<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        if !self.0.content_type.is_empty() {
            map.serialize_entry("content_type", &self.0.content_type)?;
        }
        match std::str::from_utf8(&self.0.body) {
            Ok(text) if self.1 => map.serialize_entry("body", text)?,
            _ => map.serialize_entry("body_bytes", &self.0.body.len())?,
        }
        map.end()
    }
}

/// The last string value of attribute `key` (identifying first, then non-identifying).
fn string_attribute<'a>(d: &'a v1::AgentDescription, key: &str) -> Option<&'a str> {
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

fn truncate(s: &str) -> &str {
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
    fn wrong_schema_version_or_missing_state_is_corrupt() {
        let r = record();
        let mut doc: Value = serde_json::from_slice(&to_source(&r, 0)).unwrap();
        doc["opampd"]["schema_version"] = json!(999);
        assert!(matches!(from_source(&doc, r.instance_uid), Err(StoreError::Corrupt(_))));
        assert!(matches!(from_source(&json!({}), r.instance_uid), Err(StoreError::Corrupt(_))));
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
