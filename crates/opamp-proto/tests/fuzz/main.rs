//! Fuzz harness of the WebSocket frame header (see `fuzz-support` and docs/fuzzing.md): the
//! `frame` target's corpus, structured frames of arbitrary messages, and mutations, for
//! `OPAMPD_FUZZ_SECS`. The oracle is `frame.rs`, shared with the `cargo fuzz` target.

mod frame;

use fuzz_support::{Fuzz, arb, sync_seeds};
use opamp_proto::framing;
use opamp_proto::v1::AgentToServer;
use opamp_proto::{Bytes, Message};

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let message = AgentToServer {
        instance_uid: Bytes::from_static(&[0x42; 16]),
        sequence_num: 1,
        capabilities: 1,
        ..Default::default()
    }
    .encode_to_vec();
    vec![
        ("empty", Vec::new()),
        ("header-only", vec![0]),
        ("framed-message", framing::encode(&message).to_vec()),
        ("bare-message", message.clone()),
        ("header-1", [&[1u8][..], &message].concat()),
        ("header-7", vec![7]),
        ("header-8", vec![8, 1]),
        ("varint-header", [&[0x80u8, 0x01][..], &message].concat()),
    ]
}

#[test]
fn fuzz_frame() {
    let seeds = seeds().into_iter().map(|(_, bytes)| bytes);
    let stats = Fuzz::new("frame").seeds(seeds).max_len(4096).run(frame::check, |u| {
        let msg = arb::agent_to_server(u)?;
        let framed = framing::encode(&msg.encode_to_vec());
        let payload = framing::decode(framed.clone()).expect("our frames decode");
        assert_eq!(AgentToServer::decode(payload).as_ref(), Ok(&msg), "frame round trip");
        Ok(Some(framed.to_vec()))
    });
    assert!(stats.accepted > 0);
}

#[test]
fn fuzz_corpus_holds_the_frame_seeds() {
    sync_seeds("frame", &seeds());
}
