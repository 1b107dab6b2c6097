//! Oracle of the `config_json` fuzz target: any bytes as a stored remote config (the embedded
//! store's value, the config index's `_source`). Reading gives a config whose every bound holds
//! and whose stored hash is its content's, or `StoreError::Corrupt`; a config read back is
//! written as the same JSON and reads back equal.
//!
//! Shared by the stable harness (`super`) and `fuzz/fuzz_targets/config_json.rs`: it uses
//! external crates only.

use opamp_core::remote_config::{RemoteConfig, config_hash};
use opamp_store::StoreError;
use opamp_store::configs::{from_json, to_json};
use serde_json::Value;

/// Reads `data` as a stored config; `true` when it gave one.
pub fn check(data: &[u8]) -> bool {
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return false };
    let stored = match from_json(&value) {
        Ok(stored) => stored,
        Err(StoreError::Corrupt(_)) => return false,
        Err(other) => panic!("an unreadable config must be Corrupt, got {other:?}"),
    };
    let config = &stored.config;
    assert_eq!(*config.hash(), config_hash(config.files()), "the hash is the content's");
    assert_eq!(stored.rollout.hash, *config.hash(), "the rollout is of this content");
    // every bound of a config holds: building it again accepts it
    let rebuilt = RemoteConfig::new(
        config.name().to_owned(),
        config.selector().clone(),
        config.files().clone(),
        config.rollout(),
    );
    assert_eq!(rebuilt.as_ref(), Ok(&**config), "a stored config passes its own checks");
    let written = to_json(&stored);
    let again = from_json(&written).expect("what was written reads back");
    assert_eq!(again, stored, "read(write(x)) == x");
    assert_eq!(to_json(&again), written, "one encoding");
    true
}
