//! Garbage in, no panic out: random and mangled bytes go through the same steps as a request
//! (frame, decode, validate, process, encode). Decoding errors are fine; panics are not.
//! A small xorshift generator keeps this deterministic and free of extra crates.

use opamp_core::{AgentRecord, Remote, ServerConfig, bad_request, process, validate};
use opamp_proto::agent_caps as caps;
use opamp_proto::v1::{AgentToServer, ServerToAgent};
use opamp_proto::{Bytes, InstanceUid, Message, framing};

use crate::support::{NOW, full_with, populated_record};

/// xorshift64*: enough spread for byte soup, and the same sequence on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// One request as the server handles it; returns the reply so the caller can check it encodes.
fn handle(payload: Bytes, stored: &mut Option<AgentRecord>, now: u64) -> Option<ServerToAgent> {
    let msg = AgentToServer::decode(payload).ok()?;
    let reply = match validate(&msg) {
        Ok(uid) => {
            let p = process(
                stored.take(),
                uid,
                &msg,
                now,
                None,
                || InstanceUid::from_bytes([9; 16]),
                &ServerConfig::default(),
                Remote::NONE,
            )
            .expect("without an enrollment nothing is refused");
            // Keep the merged record so later garbage lands on accumulated state too.
            *stored = Some(p.record);
            p.response
        }
        Err(e) => bad_request(msg.instance_uid.clone(), e),
    };
    let encoded = reply.encode_to_vec();
    assert_eq!(ServerToAgent::decode(&encoded[..]).as_ref(), Ok(&reply));
    Some(reply)
}

fn valid_message() -> Vec<u8> {
    full_with(7, caps::REPORTS_STATUS | crate::support::all_reporting_bits()).encode_to_vec()
}

#[test]
fn random_bytes_never_panic_the_request_path() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut stored = Some(populated_record(6, opamp_core::AgentStatus::Online));
    let mut decoded = 0;
    for i in 0..20_000u64 {
        let len = rng.below(300) as usize;
        let raw = Bytes::from(rng.bytes(len));
        if let Ok(payload) = framing::decode(raw) {
            decoded += usize::from(handle(payload, &mut stored, NOW + i).is_some());
        }
    }
    // Not a target, a sanity check that the soup reaches process() at all (empty and tiny
    // buffers decode as messages).
    assert!(decoded > 0);
}

#[test]
fn mangled_valid_messages_never_panic_the_request_path() {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let base = valid_message();
    let mut stored = None;
    let mut processed = 0;
    for i in 0..20_000u64 {
        let mut buf = base.clone();
        match rng.below(4) {
            // flip a few bits
            0 => {
                for _ in 0..=rng.below(4) {
                    let at = rng.below(buf.len() as u64) as usize;
                    buf[at] ^= 1 << rng.below(8);
                }
            }
            // overwrite a byte with an extreme value (length prefixes, varint continuations)
            1 => {
                let at = rng.below(buf.len() as u64) as usize;
                buf[at] = [0x00, 0x7f, 0x80, 0xff][rng.below(4) as usize];
            }
            // truncate
            2 => buf.truncate(rng.below(buf.len() as u64) as usize),
            // splice random bytes in
            _ => {
                let at = rng.below(buf.len() as u64) as usize;
                let n = rng.below(16) as usize + 1;
                let junk = rng.bytes(n);
                buf.splice(at..at, junk);
            }
        }
        let framed = framing::encode(&buf);
        let payload = framing::decode(framed).expect("header 0 always frames");
        processed += usize::from(handle(payload, &mut stored, NOW + i).is_some());
    }
    assert!(processed > 0);
}

#[test]
fn every_prefix_of_a_valid_message_is_handled() {
    let base = valid_message();
    let mut stored = None;
    for cut in 0..=base.len() {
        handle(Bytes::copy_from_slice(&base[..cut]), &mut stored, NOW);
    }
    // The whole message must get through.
    assert!(stored.is_some());
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// `AgentToServer{agent_description{identifying_attributes[KeyValue{value: AnyValue}]}}` where
/// the AnyValue nests `depth` array values.
fn deeply_nested(depth: usize) -> Vec<u8> {
    fn wrap(tag: u8, inner: Vec<u8>) -> Vec<u8> {
        let mut out = vec![tag];
        varint(inner.len() as u64, &mut out);
        out.extend(inner);
        out
    }
    let mut any = Vec::new();
    for _ in 0..depth {
        // ArrayValue.values (1) holding the previous AnyValue, as AnyValue.array_value (5)
        any = wrap(0x2a, wrap(0x0a, any));
    }
    wrap(0x1a, wrap(0x0a, wrap(0x12, any)))
}

#[test]
fn deeply_nested_values_are_a_decode_error_not_a_stack_overflow() {
    // prost stops at its recursion limit (100), so a hostile nesting costs an error, not a crash.
    let shallow = deeply_nested(10);
    assert!(AgentToServer::decode(&shallow[..]).is_ok());
    let deep = deeply_nested(2_000);
    assert!(AgentToServer::decode(&deep[..]).is_err());
}

#[test]
fn huge_length_prefix_is_a_decode_error_not_an_allocation() {
    // field 3 (agent_description) claiming 2^62 bytes in a 12-byte buffer
    let mut buf = vec![0x1a];
    varint(1 << 62, &mut buf);
    assert!(AgentToServer::decode(&buf[..]).is_err());
    // a repeated string claiming 1 GiB inside a small custom_capabilities
    let mut inner = vec![0x0a];
    varint(1 << 30, &mut inner);
    let mut buf = vec![0x62];
    varint(inner.len() as u64, &mut buf);
    buf.extend(inner);
    assert!(AgentToServer::decode(&buf[..]).is_err());
}

#[test]
fn framing_accepts_exactly_header_zero_and_bare_protobuf() {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for _ in 0..20_000 {
        let len = rng.below(64) as usize;
        let raw = rng.bytes(len);
        let got = framing::decode(Bytes::from(raw.clone()));
        match raw.first() {
            None => assert_eq!(got, Ok(Bytes::new())),
            Some(0) => assert_eq!(got.as_deref(), Ok(&raw[1..])),
            Some(1..=7) => assert!(got.is_err(), "{raw:?}"),
            Some(_) => assert_eq!(got.as_deref(), Ok(&raw[..])),
        }
    }
}

#[test]
fn framing_round_trips_any_payload() {
    let mut rng = Rng(0x0123_4567_89AB_CDEF);
    for _ in 0..2_000 {
        let len = rng.below(512) as usize;
        let payload = rng.bytes(len);
        let back = framing::decode(framing::encode(&payload));
        assert_eq!(back.as_deref(), Ok(&payload[..]));
    }
}
