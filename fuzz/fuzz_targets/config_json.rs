//! libFuzzer target `config_json`: any bytes as a stored remote config through `from_json`.
//!
//! Oracle: `crates/opamp-store/tests/it/fuzz/config_json.rs`, the stable harness's, so
//! `cargo test` and `cargo fuzz` check the same properties. Corpus: `fuzz/corpus/config_json/`.

#![no_main]

#[allow(dead_code)]
#[path = "../../crates/opamp-store/tests/it/fuzz/config_json.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oracle::check(data);
});
