//! Oracle of the `frame` fuzz target: a WebSocket binary message as a peer sends it. The header
//! is classified exactly as documented (0 stripped, 1..=7 malformed, anything else a bare
//! protobuf from a legacy peer), whatever we frame comes back whole, and the payload goes on to
//! the protobuf decoder without a panic.
//!
//! Shared by the stable harness (`main.rs`) and `fuzz/fuzz_targets/frame.rs`: it uses external
//! crates only.

use opamp_proto::framing::{self, FrameError};
use opamp_proto::v1::AgentToServer;
use opamp_proto::{Bytes, Message};

/// Unframes `data`; `true` when it is an OpAMP frame.
pub fn check(data: &[u8]) -> bool {
    let got = framing::decode(Bytes::copy_from_slice(data));
    match data.first() {
        None => assert_eq!(got, Ok(Bytes::new())),
        Some(0) => assert_eq!(got.as_deref(), Ok(&data[1..])),
        Some(&b @ 1..=7) => assert_eq!(got, Err(FrameError::UnsupportedHeader(b))),
        Some(_) => assert_eq!(got.as_deref(), Ok(data)),
    }
    assert_eq!(framing::decode(framing::encode(data)).as_deref(), Ok(data), "encode round trip");
    match got {
        Ok(payload) => {
            let _ = AgentToServer::decode(payload);
            true
        }
        Err(_) => false,
    }
}
