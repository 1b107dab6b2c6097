//! Oracle of the `gunzip` fuzz target: a `Content-Encoding: gzip` request body as a client
//! sends it. Inflating under the message limit gives the body or a classified error
//! (`BadRequest` for a broken stream, `PayloadTooLarge` past the limit), never a panic and never
//! a buffer past the limit; and the limit is exact: a body inflates under a limit of its own
//! size and not one byte less.
//!
//! Shared by the stable harness (`super`) and `fuzz/fuzz_targets/gunzip.rs`: it uses external
//! crates only.

use opampd::error::RequestError;
use opampd::http::gunzip;

/// The limit inputs are inflated under: small, so a bomb is cut quickly.
pub const LIMIT: usize = 64 << 10;

/// Inflates `data` under [`LIMIT`]; `true` when it is a gzip body within it.
pub fn check(data: &[u8]) -> bool {
    match gunzip(data, LIMIT) {
        Ok(body) => {
            assert!(body.len() <= LIMIT);
            assert!(body.capacity() <= LIMIT, "buffer of {} past the limit", body.capacity());
            assert_eq!(gunzip(data, body.len()).as_ref(), Ok(&body), "a limit of its own size");
            if let Some(less) = body.len().checked_sub(1) {
                assert_eq!(gunzip(data, less), Err(RequestError::PayloadTooLarge { limit: less }));
            }
            true
        }
        Err(RequestError::BadRequest(_)) => false,
        Err(RequestError::PayloadTooLarge { limit }) => {
            assert_eq!(limit, LIMIT);
            false
        }
        Err(other) => panic!("a request body must be BadRequest or PayloadTooLarge, got {other:?}"),
    }
}
