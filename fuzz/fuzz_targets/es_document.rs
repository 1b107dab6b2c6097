//! libFuzzer target `es_document`: any JSON as an agents-index `_source` through `from_source`.
//!
//! Oracle: `crates/opamp-store/tests/it/fuzz/es_document.rs`, the stable harness's, so
//! `cargo test` and `cargo fuzz` check the same properties. Corpus: `fuzz/corpus/es_document/`.

#![no_main]

#[allow(dead_code)]
#[path = "../../crates/opamp-store/tests/it/fuzz/es_document.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oracle::check(data);
});
