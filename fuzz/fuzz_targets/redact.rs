//! libFuzzer target `redact`: an effective-config body through the YAML parser and redaction.
//!
//! Oracle: `crates/opamp-core/tests/core/fuzz/redact.rs`, the stable harness's, so
//! `cargo test` and `cargo fuzz` check the same properties. Corpus: `fuzz/corpus/redact/`.

#![no_main]

#[allow(dead_code)]
#[path = "../../crates/opamp-core/tests/core/fuzz/redact.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oracle::check(data);
});
