//! libFuzzer target `config_body`: any bytes as the body of `PUT /api/configs/{name}`.
//!
//! Oracle: `crates/opampd/tests/it/fuzz/config_body.rs`, the stable harness's, so `cargo test`
//! and `cargo fuzz` check the same properties. Corpus: `fuzz/corpus/config_body/`.

#![no_main]

#[allow(dead_code)]
#[path = "../../crates/opampd/tests/it/fuzz/config_body.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oracle::check(data);
});
