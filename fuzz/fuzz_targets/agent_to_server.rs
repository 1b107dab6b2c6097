//! libFuzzer target `agent_to_server`: an `AgentToServer` through decode, validate and process.
//!
//! Oracle: `crates/opamp-core/tests/core/fuzz/agent_to_server.rs`, the stable harness's, so
//! `cargo test` and `cargo fuzz` check the same properties. Corpus: `fuzz/corpus/agent_to_server/`.

#![no_main]

#[allow(dead_code)]
#[path = "../../crates/opamp-core/tests/core/fuzz/agent_to_server.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oracle::check(data);
});
