//! libFuzzer target `codec`: stored record bytes through `opamp_store::codec::decode`.
//!
//! Oracle: `crates/opamp-store/tests/it/fuzz/codec.rs`, the stable harness's, so
//! `cargo test` and `cargo fuzz` check the same properties. Corpus: `fuzz/corpus/codec/`.

#![no_main]

#[allow(dead_code)]
#[path = "../../crates/opamp-store/tests/it/fuzz/codec.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oracle::check(data);
});
