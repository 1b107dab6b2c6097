//! libFuzzer target `gunzip`: a gzip request body through `opampd::http::gunzip`.
//!
//! Oracle: `crates/opampd/tests/it/fuzz/gunzip.rs`, the stable harness's, so
//! `cargo test` and `cargo fuzz` check the same properties. Corpus: `fuzz/corpus/gunzip/`.

#![no_main]

#[allow(dead_code)]
#[path = "../../crates/opampd/tests/it/fuzz/gunzip.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oracle::check(data);
});
