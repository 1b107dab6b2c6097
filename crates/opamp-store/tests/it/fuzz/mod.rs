//! Fuzz harnesses of what the store reads back (see `fuzz-support` and docs/fuzzing.md): the
//! `codec` target (stored record bytes) and the `es_document` target (any JSON as an agents
//! index `_source`). Each runs its corpus, structured values and mutations for
//! `OPAMPD_FUZZ_SECS`; the oracles are the submodules, shared with the `cargo fuzz` targets.

pub mod codec;
pub mod config_json;
pub mod es_document;

use std::sync::Arc;

use fuzz_support::arbitrary::{Result, Unstructured};
use fuzz_support::{Fuzz, arb, sync_seeds};
use opamp_core::AgentRecord;
use opamp_proto::{InstanceUid, v1};
use opamp_store::conformance::{full_record, minimal_record};
use opamp_store::elasticsearch::document::to_source;
use serde_json::{Value, json};

const JSON_WORDS: &[&[u8]] = &[
    b"\"opampd\":",
    b"\"schema_version\":1",
    b"\"state\":\"\"",
    b"\"type\":\"OPAMP\"",
    b"\"sequence_num\":",
    b"\"policy_id\":",
    b"\"namespaces\":[",
    b"\"enrolled_at\":\"2026-08-21T10:00:00Z\"",
    b"\"last_checkin_status\":\"disconnected\"",
    b"null",
    b"true",
    b"{}",
    b"[]",
    b",",
    b":",
    b"\\u0000",
    b"\\ud800",
    b"=",
];

/// A record whose effective config came in raw (for the first codec layout, which kept it so).
fn raw_config_record() -> AgentRecord {
    let body = "exporters: {otlp: {headers: {api-key: SECRET-1}, endpoint: https://u:p@h}}";
    AgentRecord {
        effective_config: Some(Arc::new(v1::EffectiveConfig {
            config_map: Some(v1::AgentConfigMap {
                config_map: [(
                    String::new(),
                    v1::AgentConfigFile { body: body.into(), ..Default::default() },
                )]
                .into(),
            }),
        })),
        ..minimal_record(es_document::UID)
    }
}

/// `encode(record)` with its schema version (the first field, `08 02`) replaced.
fn with_schema(record: &AgentRecord, version: u8) -> Vec<u8> {
    let mut bytes = opamp_store::codec::encode(record);
    assert_eq!(bytes[..2], [0x08, 0x02], "encode starts with the schema version");
    bytes[1] = version;
    bytes
}

fn codec_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let full = opamp_store::codec::encode(&full_record(es_document::UID));
    let mut uid_15 = vec![0x08, 0x02, 0x12, 0x0f];
    uid_15.extend([0x42; 15]);
    uid_15.extend([0x28, 0x01]);
    vec![
        ("full", full.clone()),
        ("minimal", opamp_store::codec::encode(&minimal_record(es_document::UID))),
        ("schema-1-raw-config", with_schema(&raw_config_record(), 1)),
        ("schema-3", with_schema(&minimal_record(es_document::UID), 3)),
        ("truncated", full[..full.len() / 2].to_vec()),
        ("uid-15-bytes", uid_15),
        ("empty", Vec::new()),
    ]
}

fn es_document_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let uid = es_document::UID.to_string();
    let mut wrong_schema: Value =
        serde_json::from_slice(&to_source(&minimal_record(es_document::UID), 0)).unwrap();
    wrong_schema["opampd"]["schema_version"] = json!(999);
    let fleet = json!({
        "type": "OPAMP", "active": true, "agent": {"id": uid, "type": "otelcol"},
        "enrolled_at": "2026-08-21T10:00:00Z", "last_checkin": "2026-08-21T10:05:00.123Z",
        "last_checkin_status": "degraded", "sequence_num": 17,
        "policy_id": "p1", "namespaces": ["default"], "tags": ["otelcol"],
        "identifying_attributes": {"service.name": "otelcol"},
    });
    let odd = json!({
        "type": "OPAMP", "sequence_num": -1, "enrolled_at": "0000-01-01T00:00:00Z",
        "last_checkin": "9999-12-31T23:59:60Z", "last_checkin_status": "offline",
        "policy_id": 7, "namespaces": ["a", 1, null, {"b": []}],
    });
    let odd_numbers = json!({
        "type": "OPAMP", "sequence_num": 1e30, "enrolled_at": 1_787_306_400_000u64,
        "last_checkin": "2026-02-30T10:00:00+25:00", "policy_id": "", "namespaces": "default",
    });
    let docs: Vec<(&'static str, Value)> = vec![
        ("fleet-server-opamp", fleet),
        ("fleet-server-odd-fields", odd),
        ("fleet-server-odd-numbers", odd_numbers),
        ("elastic-agent", json!({"type": "PERMANENT", "agent": {"id": uid}})),
        ("wrong-schema", wrong_schema),
        ("bad-base64", json!({"opampd": {"schema_version": 1, "state": "%%%="}})),
        ("state-not-a-string", json!({"opampd": {"schema_version": 1, "state": 12}})),
        ("not-an-object", json!([1, {"opampd": null}])),
    ];
    let mut seeds: Vec<(&'static str, Vec<u8>)> = vec![
        ("opampd-full", to_source(&full_record(es_document::UID), es_document::NOW)),
        ("opampd-minimal", to_source(&minimal_record(es_document::UID), 0)),
        ("opampd-other-agent", to_source(&minimal_record(InstanceUid::from_bytes([1; 16])), 0)),
    ];
    seeds.extend(docs.into_iter().map(|(name, doc)| (name, serde_json::to_vec(&doc).unwrap())));
    seeds
}

/// Any JSON scalar, dictionary strings and dates mostly.
fn json_scalar(u: &mut Unstructured<'_>) -> Result<Value> {
    Ok(match u.int_in_range(0..=7u8)? {
        0 => Value::Null,
        1 => json!(u.arbitrary::<bool>()?),
        2 => json!(arb::number(u)?),
        3 => json!(u.arbitrary::<i64>()?),
        4 => json!(arb::double(u)?),
        5 => json!(rfc3339_ish(u)?),
        _ => json!(arb::string(u)?),
    })
}

/// A date as fleet-server writes it, or one just outside what is valid.
fn rfc3339_ish(u: &mut Unstructured<'_>) -> Result<String> {
    let year: u32 = u.int_in_range(0..=10_000)?;
    let fields: [u32; 5] = [
        u.int_in_range(0..=13)?,
        u.int_in_range(0..=32)?,
        u.int_in_range(0..=25)?,
        u.int_in_range(0..=61)?,
        u.int_in_range(0..=61)?,
    ];
    let fraction = *u.choose(&["", ".1", ".123", ".123456789", ".1234567891"])?;
    let zone = *u.choose(&["Z", "z", "+00:00", "-25:00", "", " "])?;
    let [mo, d, h, mi, s] = fields;
    Ok(format!("{year:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{fraction}{zone}"))
}

/// A fleet-server-shaped document: the fields adoption reads, each of any JSON type.
fn fleet_document(u: &mut Unstructured<'_>) -> Result<Value> {
    let mut doc = serde_json::Map::new();
    let kind = *u.choose(&["OPAMP", "OPAMP", "OPAMP", "PERMANENT", "opamp"])?;
    doc.insert("type".into(), json!(kind));
    for field in [
        "sequence_num",
        "enrolled_at",
        "last_checkin",
        "last_checkin_status",
        "policy_id",
        "agent",
        "tags",
    ] {
        if u.ratio(3, 4)? {
            let value = match (field, u.int_in_range(0..=3u8)?) {
                ("sequence_num", 0) => json!(arb::number(u)?),
                ("enrolled_at" | "last_checkin", 0 | 1) => json!(rfc3339_ish(u)?),
                ("last_checkin_status", 0) => {
                    json!(*u.choose(&["online", "degraded", "error", "disconnected", "offline"])?)
                }
                _ => json_scalar(u)?,
            };
            doc.insert(field.into(), value);
        }
    }
    if u.arbitrary()? {
        let namespaces =
            (0..u.int_in_range(0..=3usize)?).map(|_| json_scalar(u)).collect::<Result<Vec<_>>>()?;
        doc.insert("namespaces".into(), Value::Array(namespaces));
    }
    if u.ratio(1, 8)? {
        // an opampd object that is not quite one
        doc.insert(
            "opampd".into(),
            json!({"schema_version": json_scalar(u)?, "state": json_scalar(u)?}),
        );
    }
    Ok(Value::Object(doc))
}

#[test]
fn fuzz_codec() {
    let seeds = codec_seeds().into_iter().map(|(_, bytes)| bytes);
    let stats = Fuzz::new("codec").seeds(seeds).run(codec::check, |u| {
        let record = arb::agent_record(u)?;
        let bytes = opamp_store::codec::encode(&record);
        let decoded = opamp_store::codec::decode(&bytes);
        assert_eq!(decoded, Ok(AgentRecord { adopted: false, ..record }), "decode(encode(x)) == x");
        Ok(Some(bytes))
    });
    assert!(stats.accepted > 0);
}

#[test]
fn fuzz_es_document() {
    let seeds = es_document_seeds().into_iter().map(|(_, bytes)| bytes);
    let stats =
        Fuzz::new("es_document").seeds(seeds).dictionary(JSON_WORDS).run(es_document::check, |u| {
            if u.arbitrary()? {
                // this agent's, so the oracle reads it back too
                let record =
                    AgentRecord { instance_uid: es_document::UID, ..arb::agent_record(u)? };
                let doc = to_source(&record, es_document::NOW);
                es_document::round_trip(record, true);
                Ok(Some(doc))
            } else {
                let doc = serde_json::to_vec(&fleet_document(u)?).expect("a Value serializes");
                Ok(Some(doc))
            }
        });
    assert!(stats.accepted > 0);
}

fn config_json_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use opamp_core::remote_config::{ConfigFile, RemoteConfig, RolloutPolicy, SlotClaim};
    use opamp_store::configs::{StoredConfig, to_json};
    let files = |body: &str| {
        [(
            "collector.yaml".to_owned(),
            ConfigFile { body: body.into(), content_type: "text/yaml".into() },
        )]
        .into()
    };
    let plain = RemoteConfig::new(
        "base".into(),
        Default::default(),
        files("a: 1"),
        RolloutPolicy::default(),
    )
    .expect("valid");
    let paced = RemoteConfig::new(
        "paced".into(),
        [("service.name".to_owned(), "otelcol".to_owned())].into(),
        files("b: ü"),
        RolloutPolicy { max_agents_per_minute: Some(60), pause_on_failures: Some(3) },
    )
    .expect("valid");
    let mut with_state = StoredConfig::new(Arc::new(paced), 1_787_306_400_000);
    with_state.rollout.paused = true;
    with_state.rollout.failures = 3;
    with_state.rollout.claims = vec![SlotClaim { at: 1_787_306_400_001, count: 5 }];
    let plain_json = to_json(&StoredConfig::new(Arc::new(plain), 0));
    let mut tampered = plain_json.clone();
    tampered["files"]["collector.yaml"]["body"] = json!("a: 2");
    let mut other_state = plain_json.clone();
    other_state["state"]["hash"] = json!("00".repeat(32));
    let docs: Vec<(&'static str, Value)> = vec![
        ("plain", plain_json.clone()),
        ("paused-with-claims", to_json(&with_state)),
        ("tampered-body", tampered),
        ("state-of-another-hash", other_state),
        ("schema-2", {
            let mut v = plain_json;
            v["schema_version"] = json!(2);
            v
        }),
        ("not-an-object", json!(["base"])),
    ];
    docs.into_iter().map(|(name, doc)| (name, serde_json::to_vec(&doc).unwrap())).collect()
}

const CONFIG_WORDS: &[&[u8]] = &[
    b"\"schema_version\":1",
    b"\"selector\":{",
    b"\"files\":{",
    b"\"body\":",
    b"\"content_type\":",
    b"\"rollout\":{\"max_agents_per_minute\":",
    b"\"pause_on_failures\":",
    b"\"state\":{\"hash\":",
    b"\"claims\":[{\"at\":",
    b"\"paused\":true",
    b"null",
    b"\\u0000",
];

#[test]
fn fuzz_config_json() {
    let seeds = config_json_seeds().into_iter().map(|(_, bytes)| bytes);
    let stats = Fuzz::new("config_json").seeds(seeds).dictionary(CONFIG_WORDS).run(
        config_json::check,
        |u| {
            let seeds = config_json_seeds();
            let (_, seed) = u.choose(&seeds)?;
            let mut value: Value = serde_json::from_slice(seed).expect("seeds are JSON");
            // replace one field, at any depth the shape has, by any JSON scalar
            let field = *u.choose(&[
                "name",
                "selector",
                "files",
                "rollout",
                "hash",
                "updated_at",
                "state",
                "schema_version",
            ])?;
            if let Some(object) = value.as_object_mut() {
                object.insert(field.into(), json_scalar(u)?);
            }
            Ok(Some(serde_json::to_vec(&value).expect("a Value serializes")))
        },
    );
    assert!(stats.accepted > 0);
}

#[test]
fn fuzz_corpus_holds_the_store_seeds() {
    sync_seeds("codec", &codec_seeds());
    sync_seeds("es_document", &es_document_seeds());
    sync_seeds("config_json", &config_json_seeds());
}
