//! Remote configs at rest: the [`ConfigStore`] trait every backend implements next to
//! [`AgentStore`](crate::AgentStore), and the one JSON encoding of a config (the embedded
//! store's value, the Elasticsearch document's `_source`).
//!
//! A config document holds the operator's config (name, selector, files, rollout policy) and the
//! shared state of its rollout (slot claims, failures, paused). Both change only by
//! compare-and-swap writes, so two instances (or an operator and a rollout) never lose each
//! other's update.
//!
//! The encoding ([`to_json`], [`from_json`]) is converted by hand (core types derive no
//! `Serialize`), and decoding trusts nothing: the config is rebuilt with
//! [`RemoteConfig::new`], so a stored document passes every bound a new one does, and its
//! stored hash must equal the recomputed one.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use opamp_core::Timestamp;
use opamp_core::remote_config::{
    ConfigFile, ConfigHash, RemoteConfig, RolloutPolicy, RolloutState, SlotClaim, hash_hex,
    parse_hash_hex,
};
use opamp_proto::v1;
use serde_json::{Map, Value, json};

use crate::{Precondition, StoreError, Version};

/// Most configs a store holds: every instance keeps them all in memory and matches each
/// message against them.
pub const MAX_CONFIGS: usize = 1000;

/// A config with the state of its rollout, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredConfig {
    pub config: Arc<RemoteConfig>,
    /// Always for `config`'s current hash: a content change starts a new rollout.
    pub rollout: RolloutState,
    /// When the operator last changed the config (not the rollout state).
    pub updated_at: Timestamp,
}

/// A config together with the version it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionedConfig {
    pub stored: StoredConfig,
    pub version: Version,
}

/// Where a config's rollout stands among the agents, from their stored state (as of each
/// agent's last message). `matched` counts the agents whose desired config is this one;
/// `applied`, `applying` and `failed` those of them reporting that status for the config's
/// current hash; `pending` the rest of `matched`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RolloutCounts {
    pub matched: u64,
    pub applied: u64,
    pub applying: u64,
    pub failed: u64,
    pub pending: u64,
}

/// Remote configs keyed by name, with compare-and-swap writes.
#[async_trait]
pub trait ConfigStore: Send + Sync + fmt::Debug + 'static {
    /// The name and version of every config, in name order: a cheap check for changes.
    /// Reflects every write that has returned.
    async fn config_versions(&self) -> Result<Vec<(String, Version)>, StoreError>;

    /// One config by name, read past any cache.
    async fn get_config(&self, name: &str) -> Result<Option<VersionedConfig>, StoreError>;

    /// Writes `config` if `precondition` holds (`Absent`: create; `Version`: replace exactly
    /// that version); returns the new version. A store full of [`MAX_CONFIGS`] refuses a new
    /// one with [`StoreError::Backend`].
    async fn put_config(
        &self,
        config: &StoredConfig,
        precondition: Precondition,
    ) -> Result<Version, StoreError>;

    /// Deletes the config if it is still at `version` ([`StoreError::Conflict`] otherwise, also
    /// when it is gone).
    async fn delete_config(&self, name: &str, version: Version) -> Result<(), StoreError>;

    /// The rollout counts of each `(name, current hash)`, in the same order. Reads the agents'
    /// stored state (a search or a scan): for the admin API, never for the OpAMP path.
    async fn rollout_counts(
        &self,
        configs: &[(String, ConfigHash)],
    ) -> Result<Vec<RolloutCounts>, StoreError>;
}

impl RolloutCounts {
    /// Counts one agent that should run the config of `hash`, by the status it reported last.
    pub fn count(&mut self, hash: &ConfigHash, status: Option<&v1::RemoteConfigStatus>) {
        self.matched += 1;
        let reported = status.filter(|s| s.last_remote_config_hash[..] == hash[..]);
        match reported.map(|s| v1::RemoteConfigStatuses::try_from(s.status)) {
            Some(Ok(v1::RemoteConfigStatuses::Applied)) => self.applied += 1,
            Some(Ok(v1::RemoteConfigStatuses::Applying)) => self.applying += 1,
            Some(Ok(v1::RemoteConfigStatuses::Failed)) => self.failed += 1,
            _ => self.pending += 1,
        }
    }
}

/// The refusal of a config beyond [`MAX_CONFIGS`].
pub(crate) fn too_many() -> StoreError {
    StoreError::Backend(format!(
        "the store holds {MAX_CONFIGS} configs, the most allowed: delete one before creating another"
    ))
}

/// Version of the JSON layout of a stored config (`schema_version`). A document with any other
/// value is refused as corrupt rather than guessed at.
pub const SCHEMA_VERSION: u64 = 1;

impl StoredConfig {
    /// A new config at the start of its rollout.
    pub fn new(config: Arc<RemoteConfig>, updated_at: Timestamp) -> Self {
        let rollout = RolloutState::new(*config.hash());
        Self { config, rollout, updated_at }
    }

    /// The invariant every store checks before a write and after a read: the rollout state
    /// belongs to the config's current hash.
    pub fn check(&self) -> Result<(), String> {
        if self.rollout.hash != *self.config.hash() {
            return Err(format!(
                "rollout state of config {} is for hash {}, not its current hash {}",
                self.config.name(),
                hash_hex(&self.rollout.hash),
                hash_hex(self.config.hash())
            ));
        }
        Ok(())
    }
}

/// The stored form of `stored`: the embedded store's value and the Elasticsearch `_source`.
///
/// ```text
/// {"schema_version":1,"name":..,"selector":{..},"files":{"f":{"body":..,"content_type":..}},
///  "rollout":{"max_agents_per_minute":n|null,"pause_on_failures":n|null},"hash":"<hex>",
///  "updated_at":<ms>,"state":{"hash":"<hex>","paused":bool,"failures":n,
///  "claims":[{"at":ms,"count":n}]}}
/// ```
pub fn to_json(stored: &StoredConfig) -> Value {
    let config = &stored.config;
    let files: Map<String, Value> = config
        .files()
        .iter()
        .map(|(name, f)| (name.clone(), json!({ "body": f.body, "content_type": f.content_type })))
        .collect();
    let policy = config.rollout();
    let state = &stored.rollout;
    json!({
        "schema_version": SCHEMA_VERSION,
        "name": config.name(),
        "selector": config.selector(),
        "files": files,
        "rollout": {
            "max_agents_per_minute": policy.max_agents_per_minute,
            "pause_on_failures": policy.pause_on_failures,
        },
        "hash": hash_hex(config.hash()),
        "updated_at": stored.updated_at,
        "state": {
            "hash": hash_hex(&state.hash),
            "paused": state.paused,
            "failures": state.failures,
            "claims": state.claims.iter().map(|c| json!({ "at": c.at, "count": c.count }))
                .collect::<Vec<_>>(),
        },
    })
}

/// Reads a stored config back. Refuses ([`StoreError::Corrupt`]) an unknown `schema_version`,
/// any missing or malformed field, a config that fails a bound of [`RemoteConfig::new`], a
/// stored hash that differs from the recomputed one, and a rollout state of another hash. Fields
/// it does not know are ignored. Never panics.
pub fn from_json(value: &Value) -> Result<StoredConfig, StoreError> {
    let doc = object(value, "config")?;
    match doc.get("schema_version").and_then(Value::as_u64) {
        Some(SCHEMA_VERSION) => {}
        _ => {
            return Err(corrupt(format!(
                "stored config has schema_version {}, expected {SCHEMA_VERSION}",
                doc.get("schema_version").unwrap_or(&Value::Null)
            )));
        }
    }
    let name = string(doc, "name")?;
    let selector = object(field(doc, "selector")?, "selector")?
        .iter()
        .map(|(k, v)| match v {
            Value::String(v) => Ok((k.clone(), v.clone())),
            _ => Err(corrupt(format!("config {name}: selector value of {k:?} is not a string"))),
        })
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    let files = object(field(doc, "files")?, "files")?
        .iter()
        .map(|(file, f)| {
            let f = object(f, "file")?;
            let file_field = |key| {
                string(f, key)
                    .map_err(|e| corrupt(format!("config {name}: file {file:?}: {}", inner(&e))))
            };
            let body = file_field("body")?;
            let content_type = file_field("content_type")?;
            Ok((file.clone(), ConfigFile { body, content_type }))
        })
        .collect::<Result<BTreeMap<_, _>, StoreError>>()?;
    let rollout = object(field(doc, "rollout")?, "rollout")?;
    let policy = RolloutPolicy {
        max_agents_per_minute: optional_u32(rollout, "max_agents_per_minute")?,
        pause_on_failures: optional_u32(rollout, "pause_on_failures")?,
    };
    let config = RemoteConfig::new(name.clone(), selector, files, policy)
        .map_err(|e| corrupt(format!("stored config {name} is invalid: {e}")))?;
    if hash(doc, "hash")? != *config.hash() {
        return Err(corrupt(format!(
            "stored config {name}: stored hash differs from the hash of its files"
        )));
    }
    let updated_at = u64_field(doc, "updated_at")?;
    let state = object(field(doc, "state")?, "state")?;
    let claims = match field(state, "claims")? {
        Value::Array(claims) => claims
            .iter()
            .map(|c| {
                let c = object(c, "claim")?;
                Ok(SlotClaim { at: u64_field(c, "at")?, count: u32_field(c, "count")? })
            })
            .collect::<Result<Vec<_>, StoreError>>()?,
        _ => return Err(corrupt("state.claims is not an array".into())),
    };
    let rollout = RolloutState {
        hash: hash(state, "hash")?,
        paused: match field(state, "paused")? {
            Value::Bool(b) => *b,
            _ => return Err(corrupt("state.paused is not a boolean".into())),
        },
        failures: u32_field(state, "failures")?,
        claims,
    };
    let stored = StoredConfig { config: Arc::new(config), rollout, updated_at };
    stored.check().map_err(corrupt)?;
    Ok(stored)
}

fn corrupt(why: String) -> StoreError {
    StoreError::Corrupt(why)
}

/// The message of a [`StoreError`] without its prefix.
fn inner(e: &StoreError) -> String {
    match e {
        StoreError::Corrupt(why) | StoreError::Backend(why) | StoreError::Unavailable(why) => {
            why.clone()
        }
        other => other.to_string(),
    }
}

fn object<'a>(value: &'a Value, what: &str) -> Result<&'a Map<String, Value>, StoreError> {
    value.as_object().ok_or_else(|| corrupt(format!("stored {what} is not a JSON object")))
}

fn field<'a>(doc: &'a Map<String, Value>, key: &str) -> Result<&'a Value, StoreError> {
    doc.get(key).ok_or_else(|| corrupt(format!("stored config has no {key}")))
}

fn string(doc: &Map<String, Value>, key: &str) -> Result<String, StoreError> {
    match field(doc, key)? {
        Value::String(s) => Ok(s.clone()),
        _ => Err(corrupt(format!("{key} is not a string"))),
    }
}

fn u64_field(doc: &Map<String, Value>, key: &str) -> Result<u64, StoreError> {
    field(doc, key)?.as_u64().ok_or_else(|| corrupt(format!("{key} is not an unsigned integer")))
}

fn u32_field(doc: &Map<String, Value>, key: &str) -> Result<u32, StoreError> {
    u32::try_from(u64_field(doc, key)?).map_err(|_| corrupt(format!("{key} is over 2^32")))
}

fn optional_u32(doc: &Map<String, Value>, key: &str) -> Result<Option<u32>, StoreError> {
    match field(doc, key)? {
        Value::Null => Ok(None),
        _ => u32_field(doc, key).map(Some),
    }
}

fn hash(doc: &Map<String, Value>, key: &str) -> Result<ConfigHash, StoreError> {
    match field(doc, key)? {
        Value::String(text) => {
            parse_hash_hex(text).ok_or_else(|| corrupt(format!("{key} is not 64 hex digits")))
        }
        _ => Err(corrupt(format!("{key} is not a string"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> StoredConfig {
        let config = RemoteConfig::new(
            "edge-collectors".into(),
            [("service.name".to_owned(), "otelcol-ü".to_owned()), ("env".into(), String::new())]
                .into(),
            [
                (
                    "collector.yaml".into(),
                    ConfigFile {
                        body: "receivers: {otlp: {}}\n".into(),
                        content_type: "text/yaml".into(),
                    },
                ),
                (
                    "extra.json".into(),
                    ConfigFile { body: "{\"k\": \"ü\u{0}\"}".into(), content_type: String::new() },
                ),
            ]
            .into(),
            RolloutPolicy { max_agents_per_minute: Some(u32::MAX), pause_on_failures: None },
        )
        .unwrap();
        let mut stored = StoredConfig::new(Arc::new(config), 1_700_000_000_123);
        stored.rollout.paused = true;
        stored.rollout.failures = 3;
        stored.rollout.claims = vec![
            SlotClaim { at: 1_700_000_001_000, count: 5 },
            SlotClaim { at: u64::MAX, count: 1 },
        ];
        stored
    }

    #[test]
    fn round_trips_every_field() {
        let s = stored();
        let json = to_json(&s);
        assert_eq!(json["schema_version"], 1);
        assert_eq!(json["hash"], hash_hex(s.config.hash()));
        assert_eq!(json["rollout"]["pause_on_failures"], Value::Null);
        assert_eq!(from_json(&json), Ok(s.clone()));
        // through bytes, as the stores keep it
        let bytes = serde_json::to_vec(&json).unwrap();
        assert_eq!(from_json(&serde_json::from_slice(&bytes).unwrap()), Ok(s));

        let empty = RemoteConfig::new(
            "e".into(),
            BTreeMap::new(),
            BTreeMap::new(),
            RolloutPolicy::default(),
        )
        .unwrap();
        let empty = StoredConfig::new(Arc::new(empty), 0);
        assert_eq!(from_json(&to_json(&empty)), Ok(empty));
    }

    fn refused(tweak: impl FnOnce(&mut Value)) -> String {
        let mut json = to_json(&stored());
        tweak(&mut json);
        match from_json(&json) {
            Err(StoreError::Corrupt(why)) => why,
            other => panic!("expected corrupt, got {other:?} for {json}"),
        }
    }

    #[test]
    fn a_tampered_hash_or_body_is_refused() {
        let why = refused(|j| j["hash"] = json!(hash_hex(&[0u8; 32])));
        assert!(why.contains("hash"), "{why}");
        refused(|j| j["files"]["collector.yaml"]["body"] = json!("receivers: {}"));
        refused(|j| j["hash"] = json!(hash_hex(&[0u8; 32]).to_uppercase() + "0"));
        let why = refused(|j| j["state"]["hash"] = json!(hash_hex(&[1u8; 32])));
        assert!(why.contains("rollout state"), "{why}");
    }

    #[test]
    fn malformed_fields_are_refused() {
        refused(|j| j["schema_version"] = json!(2));
        refused(|j| j["schema_version"] = json!("1"));
        refused(|j| drop(j.as_object_mut().unwrap().remove("schema_version")));
        for key in ["name", "selector", "files", "rollout", "hash", "updated_at", "state"] {
            refused(|j| drop(j.as_object_mut().unwrap().remove(key)));
            refused(|j| j[key] = json!([1]));
        }
        refused(|j| j["name"] = json!("has space"));
        refused(|j| j["name"] = json!(""));
        refused(|j| j["selector"]["env"] = json!(1));
        refused(|j| j["files"]["extra.json"]["body"] = json!(null));
        refused(|j| j["files"]["extra.json"] = json!("body"));
        refused(|j| j["files"]["x"] = json!({"body": "b"}));
        refused(|j| j["rollout"]["max_agents_per_minute"] = json!(0));
        refused(|j| j["rollout"]["max_agents_per_minute"] = json!(u64::from(u32::MAX) + 1));
        refused(|j| j["rollout"]["pause_on_failures"] = json!(-1));
        refused(|j| j["rollout"]["pause_on_failures"] = json!(1.5));
        refused(|j| drop(j["rollout"].as_object_mut().unwrap().remove("pause_on_failures")));
        refused(|j| j["updated_at"] = json!(-5));
        refused(|j| j["state"]["paused"] = json!("true"));
        refused(|j| j["state"]["failures"] = json!(null));
        refused(|j| j["state"]["claims"] = json!({}));
        refused(|j| j["state"]["claims"] = json!([{"at": 1}]));
        refused(|j| j["state"]["claims"] = json!([{"at": 1, "count": u64::MAX}]));
        // a bound of RemoteConfig::new, checked on the way in too
        refused(|j| {
            j["files"]["big"] = json!({"body": "x".repeat(opamp_core::remote_config::MAX_CONFIG_BYTES + 1), "content_type": ""});
        });
        // unknown fields are ignored, not refused
        let mut json = to_json(&stored());
        json["later"] = json!({"x": 1});
        assert_eq!(from_json(&json), Ok(stored()));
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        let deep = (0..100).fold(json!(null), |v, _| json!([v]));
        for garbage in [
            json!(null),
            json!(1),
            json!("config"),
            json!([]),
            json!({}),
            json!({"schema_version": 1}),
            json!({"schema_version": 1, "name": "x", "selector": {}, "files": {}, "rollout": {}}),
            json!({"schema_version": u64::MAX}),
            json!({"schema_version": 1, "name": "x", "selector": {}, "files": {}, "rollout": {"max_agents_per_minute": null, "pause_on_failures": null}, "hash": "zz", "updated_at": 0, "state": {}}),
            deep,
        ] {
            assert!(matches!(from_json(&garbage), Err(StoreError::Corrupt(_))), "{garbage}");
        }
    }

    /// Every path of a valid document replaced by every kind of JSON value, and removed: each
    /// result is `Ok` (and then encodes back to itself) or `Corrupt`, never a panic.
    #[test]
    fn every_field_replaced_by_any_value_is_read_or_corrupt() {
        fn paths(v: &Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
            out.push(at.clone());
            let children: Vec<(String, &Value)> = match v {
                Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), v)).collect(),
                Value::Array(a) => a.iter().enumerate().map(|(i, v)| (i.to_string(), v)).collect(),
                _ => Vec::new(),
            };
            for (key, child) in children {
                at.push(key);
                paths(child, at, out);
                at.pop();
            }
        }
        fn slot<'a>(v: &'a mut Value, path: &[String]) -> &'a mut Value {
            path.iter().fold(v, |v, key| match v {
                Value::Array(a) => &mut a[key.parse::<usize>().unwrap()],
                other => &mut other[key.as_str()],
            })
        }
        let original = to_json(&stored());
        let mut all = Vec::new();
        paths(&original, &mut Vec::new(), &mut all);
        let replacements = [
            json!(null),
            json!(true),
            json!(0),
            json!(1),
            json!(-1),
            json!(1.5),
            json!(u64::MAX),
            json!(""),
            json!("x"),
            json!("ü".repeat(300)),
            json!([]),
            json!([1]),
            json!({}),
            json!({"x": 1}),
        ];
        let (mut read, mut refused) = (0, 0);
        for path in &all {
            let mut variants: Vec<Value> = replacements
                .iter()
                .map(|r| {
                    let mut doc = original.clone();
                    *slot(&mut doc, path) = r.clone();
                    doc
                })
                .collect();
            if let Some((last, parent)) = path.split_last() {
                let mut doc = original.clone();
                match slot(&mut doc, parent) {
                    Value::Object(m) => drop(m.remove(last)),
                    Value::Array(a) => drop(a.remove(last.parse::<usize>().unwrap())),
                    _ => unreachable!(),
                }
                variants.push(doc);
            }
            for doc in variants {
                match from_json(&doc) {
                    Ok(stored) => {
                        read += 1;
                        assert_eq!(from_json(&to_json(&stored)), Ok(stored), "{doc}");
                    }
                    Err(StoreError::Corrupt(_)) => refused += 1,
                    Err(other) => panic!("{other:?} for {doc}"),
                }
            }
        }
        assert!(read > 0 && refused > read, "read {read}, refused {refused}");
    }

    #[test]
    fn check_refuses_a_rollout_state_of_another_hash() {
        let mut s = stored();
        assert_eq!(s.check(), Ok(()));
        s.rollout.hash = [9; 32];
        assert!(s.check().is_err());
    }
}
