//! Oracle of the `config_body` fuzz target: any bytes as the body of `PUT /api/configs/{name}`.
//! Parsing gives a config whose every bound holds, or a reason (never a panic); a config given
//! back in the API's own input shape parses to the same config (same hash).
//!
//! Shared by the stable harness (`super`) and `fuzz/fuzz_targets/config_body.rs`: it uses
//! external crates only.

use opamp_core::remote_config::{RolloutPolicy, config_hash};
use opampd::admin::configs::parse_config;
use serde_json::{Map, Value, json};

/// The name every input is put under.
pub const NAME: &str = "fuzzed";

/// Parses `data` as a config body; `true` when it gave a config.
pub fn check(data: &[u8]) -> bool {
    let config = match parse_config(NAME.to_owned(), data) {
        Ok(config) => config,
        Err(reason) => {
            assert!(!reason.is_empty(), "a refusal says why");
            return false;
        }
    };
    assert_eq!(config.name(), NAME);
    assert_eq!(*config.hash(), config_hash(config.files()));
    let files: Map<String, Value> = config
        .files()
        .iter()
        .map(|(n, f)| (n.clone(), json!({"body": f.body, "content_type": f.content_type})))
        .collect();
    let policy = config.rollout();
    let mut body = json!({"selector": config.selector(), "files": files});
    if policy != RolloutPolicy::default() {
        body["rollout"] = json!({
            "max_agents_per_minute": policy.max_agents_per_minute,
            "pause_on_failures": policy.pause_on_failures,
        });
    }
    let again = parse_config(NAME.to_owned(), body.to_string().as_bytes())
        .expect("a config's own shape parses");
    assert_eq!(again, config, "parse(show(x)) == x");
    true
}
