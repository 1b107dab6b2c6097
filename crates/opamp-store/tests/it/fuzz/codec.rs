//! Oracle of the `codec` fuzz target: bytes read back from the embedded store or an
//! Elasticsearch blob. Anything unreadable is `StoreError::Corrupt` (never another class, never
//! a panic), nothing read is `adopted`, and what decodes re-encodes to the same record (a first
//! layout record included: it comes out redacted and stays so).
//!
//! Shared by the stable harness (`super`) and `fuzz/fuzz_targets/codec.rs`: it uses external
//! crates only.

use fuzz_support::arb::scrub_record_nan;
use opamp_store::StoreError;
use opamp_store::codec::{decode, encode};

/// Decodes `data` as a stored record; `true` when it is one.
pub fn check(data: &[u8]) -> bool {
    let mut record = match decode(data) {
        Ok(record) => record,
        Err(StoreError::Corrupt(_)) => return false,
        Err(other) => panic!("unreadable stored bytes must be Corrupt, got {other:?}"),
    };
    assert!(!record.adopted, "nothing the store wrote is adopted");
    let mut again = decode(&encode(&record)).expect("a decoded record re-encodes readably");
    scrub_record_nan(&mut record);
    scrub_record_nan(&mut again);
    assert_eq!(again, record, "decode(encode(decode(bytes))) == decode(bytes)");
    true
}
