//! Oracle of the `es_document` fuzz target: any JSON as an Elasticsearch `_source` of the
//! agents index (opampd's own documents, fleet-server's, anyone's). Reading it either gives a
//! record for the uid asked for or `StoreError::Corrupt`; a fleet-server OpAMP document is
//! adopted from its fleet fields; and whatever was read, written back, is a document
//! Elasticsearch indexes (see [`assert_indexable`]) and reads back as the same record.
//!
//! Shared by the stable harness (`super`) and `fuzz/fuzz_targets/es_document.rs`: it uses
//! external crates only.

use std::collections::HashSet;
use std::fmt;

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use fuzz_support::arb::scrub_record_nan;
use opamp_core::AgentStatus;
use opamp_proto::InstanceUid;
use opamp_store::StoreError;
use opamp_store::elasticsearch::document::{SCHEMA_VERSION, from_source, to_source};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// The uid every input is read as (the seeds are documents of this agent).
pub const UID: InstanceUid = InstanceUid::from_bytes([0x5a; 16]);
pub const NOW: u64 = 1_787_306_400_000;

/// The keyword cut of the document (Lucene refuses terms over 32 KiB; opampd cuts at 1 KiB).
const MAX_KEYWORD_BYTES: usize = 1024;
/// Elasticsearch's default `depth_limit` of a `flattened` field.
const MAX_FLATTENED_DEPTH: usize = 20;

/// Reads `data` as the `_source` of [`UID`]'s document; `true` when it gave a record.
pub fn check(data: &[u8]) -> bool {
    let Ok(source) = serde_json::from_slice::<Value>(data) else { return false };
    let record = match from_source(&source, UID) {
        Ok(record) => record,
        Err(StoreError::Corrupt(_)) => return false,
        Err(other) => panic!("an unreadable document must be Corrupt, got {other:?}"),
    };
    assert_eq!(record.instance_uid, UID);
    assert_eq!(record.adopted, source.get("opampd").is_none(), "adopted iff fleet-server's");
    if record.adopted {
        assert_eq!(source["type"], "OPAMP", "only OpAMP documents are adopted");
        assert_eq!(record.sequence_num, source["sequence_num"].as_u64().unwrap_or(0));
        assert_ne!(record.status, AgentStatus::Offline, "offline is never stored");
        assert_eq!(
            record.enrollment.as_ref().map(|e| e.policy_id.as_str()),
            source["policy_id"].as_str()
        );
        assert!(record.agent_description.is_none() && record.effective_config.is_none());
    }
    // Effective-config bodies in a crafted blob are whatever it says: only opampd's own
    // (redacted) ones are promised to have unique keys.
    round_trip(record, false);
    true
}

/// Writes `record` as a document, checks it is indexable, reads it back: the same record, now
/// opampd's own. `strict` also checks the effective config for duplicate keys.
pub fn round_trip(mut record: opamp_core::AgentRecord, strict: bool) {
    let doc = to_source(&record, NOW);
    let written = assert_indexable(&doc, record.instance_uid, strict);
    let mut back = from_source(&written, record.instance_uid).expect("a written document reads");
    record.adopted = false;
    scrub_record_nan(&mut record);
    scrub_record_nan(&mut back);
    assert_eq!(back, record, "from_source(to_source(r)) == r");
}

/// What Elasticsearch needs to index a document of the agents mapping: JSON without duplicate
/// keys, keywords within the cut, `sequence_num` a `long`, dates it parses, the flattened
/// attributes within their depth limit, and opampd's state as base64.
pub fn assert_indexable(doc: &[u8], uid: InstanceUid, strict: bool) -> Value {
    let text = std::str::from_utf8(doc).expect("a document is UTF-8");
    let mut de = serde_json::Deserializer::from_str(text);
    if let Err(e) =
        (Unique { skip: (!strict).then_some("effective_config"), depth: 0 }).deserialize(&mut de)
    {
        panic!("document refused by Elasticsearch: {e}: {text}");
    }
    let v: Value = serde_json::from_str(text).expect("a document is JSON");
    assert_eq!(v["type"], "OPAMP");
    assert_eq!(v["agent"]["id"], uid.to_string());
    assert_eq!(v["opampd"]["schema_version"], SCHEMA_VERSION);
    let state = v["opampd"]["state"].as_str().expect("opampd.state is a string");
    assert!(BASE64_STANDARD.decode(state).is_ok(), "opampd.state is base64");
    assert!(
        v["sequence_num"].as_i64().is_some(),
        "sequence_num fits a long: {}",
        v["sequence_num"]
    );
    for path in [
        &["agent", "type"][..],
        &["agent", "version"],
        &["last_checkin_message"],
        &["health", "status"],
        &["local_metadata", "elastic", "agent", "version"],
        &["local_metadata", "elastic", "agent", "name"],
        &["local_metadata", "host", "hostname"],
        &["local_metadata", "host", "name"],
        &["local_metadata", "host", "id"],
        &["local_metadata", "host", "architecture"],
        &["local_metadata", "os", "platform"],
        &["local_metadata", "os", "full"],
        &["policy_id"],
    ] {
        let field = path.iter().fold(&v, |v, k| &v[*k]);
        if let Some(s) = field.as_str() {
            assert!(s.len() <= MAX_KEYWORD_BYTES, "{} is {} bytes", path.join("."), s.len());
        } else {
            assert!(field.is_null(), "{} is not a string: {field}", path.join("."));
        }
    }
    for list in ["tags", "namespaces", "capabilities"] {
        for item in v[list].as_array().into_iter().flatten() {
            let s = item.as_str().unwrap_or_else(|| panic!("{list} holds {item}"));
            assert!(s.len() <= MAX_KEYWORD_BYTES, "{list} item of {} bytes", s.len());
        }
    }
    for date in ["enrolled_at", "last_checkin", "updated_at", "audit_unenrolled_time"] {
        match &v[date] {
            Value::Null if date == "audit_unenrolled_time" => {}
            Value::String(s) => {
                assert!(humantime::parse_rfc3339(s).is_ok(), "{date} {s:?} is no RFC 3339 date");
                assert!(s.len() == 24 && s.ends_with('Z'), "{date} {s:?}: 4-digit year, ms, UTC");
            }
            other => panic!("{date} is {other}"),
        }
    }
    let depth = depth(&v["identifying_attributes"]);
    assert!(depth <= MAX_FLATTENED_DEPTH, "identifying_attributes {depth} deep");
    v
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Deserializes any JSON, failing on a duplicate key in an object (serde_json's `Value` would
/// silently keep the last one; Elasticsearch refuses the document). `skip` names a top-level
/// field not checked.
#[derive(Clone, Copy)]
struct Unique {
    skip: Option<&'static str>,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Unique {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Unique {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = Unique { depth: self.depth + 1, ..self };
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if self.depth == 0 && Some(key.as_str()) == self.skip {
                map.next_value::<de::IgnoredAny>()?;
            } else {
                map.next_value_seed(Unique { depth: self.depth + 1, ..self })?;
            }
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
        }
        Ok(())
    }
}
