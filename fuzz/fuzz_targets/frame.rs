//! libFuzzer target `frame`: a WebSocket binary message (frame header, then the protobuf).
//!
//! Oracle: `crates/opamp-proto/tests/fuzz/frame.rs`, the stable harness's, so
//! `cargo test` and `cargo fuzz` check the same properties. Corpus: `fuzz/corpus/frame/`.

#![no_main]

#[allow(dead_code)]
#[path = "../../crates/opamp-proto/tests/fuzz/frame.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oracle::check(data);
});
