//! Oracle of the `redact` fuzz target: an effective-config body as an agent sends it (any
//! bytes) through `redacted_json`, the YAML parser on agent input. It must never panic, and
//! what it keeps must be JSON holding a mapping or a sequence, a fixed point of the redaction,
//! and free of secrets by the rules of `opamp_core::redact` (checked on the output, not by
//! re-running the implementation): no scalar under a secret key or in a secret-named header's
//! value, no URL user info, no PEM private key.
//!
//! Shared by the stable harness (`super`) and `fuzz/fuzz_targets/redact.rs`: it uses external
//! crates only.

use opamp_core::redact::{MAX_CONFIG_FILE_BYTES, REDACTED, is_secret_key, redacted_json};
use serde_json::Value;

/// Redacts `data`; `true` when a body was kept.
pub fn check(data: &[u8]) -> bool {
    let Some(out) = redacted_json(data) else { return false };
    if data.is_empty() {
        assert_eq!(out, "", "an empty body stays empty");
        return true;
    }
    let value: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("kept body is not JSON ({e}): {}", excerpt(&out)));
    let shape = value.is_object() || value.is_array();
    assert!(shape, "kept body is no mapping or sequence: {}", excerpt(&out));
    let again = redacted_json(out.as_bytes());
    if again.as_deref() != Some(out.as_str()) {
        panic!("not a fixed point: {} -> {:?}", excerpt(&out), again.as_deref().map(excerpt));
    }
    // aliases may repeat text, within the bounds (1 MiB of text, 100k nodes, six bytes for an
    // escaped character): never an amplifier of the body
    let bound = 16 * data.len() + 10 * MAX_CONFIG_FILE_BYTES;
    assert!(out.len() <= bound, "{} bytes kept of a {}-byte body", out.len(), data.len());
    assert_redacted(&value, excerpt(&out));
    true
}

/// The start of a long text, for a failure message that stays readable.
fn excerpt(s: &str) -> &str {
    let mut end = s.len().min(2000);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn assert_redacted(value: &Value, doc: &str) {
    match value {
        Value::Object(map) => {
            let secret_name = map
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("name"))
                .is_some_and(|(_, v)| v.as_str().is_some_and(is_secret_key));
            for (key, v) in map {
                if is_secret_key(key) || (secret_name && key.eq_ignore_ascii_case("value")) {
                    assert_secret_gone(key, v, doc);
                } else {
                    assert_redacted(v, doc);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| assert_redacted(v, doc)),
        Value::String(s) => assert_clean_string(s, doc),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// A value under a secret key: scalars are `REDACTED`, lists hold only such scalars, mappings
/// are walked by the ordinary rules.
fn assert_secret_gone(key: &str, value: &Value, doc: &str) {
    match value {
        Value::Null => {}
        Value::String(s) if s == REDACTED => {}
        Value::Array(items) => items.iter().for_each(|v| assert_secret_gone(key, v, doc)),
        Value::Object(_) => assert_redacted(value, doc),
        other => panic!("secret key {key:?} kept {}: {doc}", excerpt(&other.to_string())),
    }
}

/// No PEM private key, and every URL's user info (before the last `@` of its authority) is
/// `REDACTED:REDACTED`.
fn assert_clean_string(s: &str, doc: &str) {
    assert!(!s.contains("PRIVATE KEY-----"), "private key kept: {doc}");
    for (i, _) in s.match_indices("://") {
        let authority = &s[i + 3..];
        let authority = &authority[..authority.find(['/', '?', '#']).unwrap_or(authority.len())];
        if let Some(at) = authority.rfind('@') {
            assert_eq!(
                &authority[..at],
                "REDACTED:REDACTED",
                "URL user info kept in {:?}: {doc}",
                excerpt(s)
            );
        }
    }
}
