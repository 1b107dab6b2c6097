//! Black-box tests of the WebSocket transport: a real server on 127.0.0.1:0 over the embedded
//! store in a temporary directory, driven by a real WebSocket client (tokio-tungstenite).

use std::time::Duration;

use crate::common::*;
use futures::{SinkExt, StreamExt};
use opamp_proto::v1::{AgentDisconnect, AgentToServer, ServerErrorResponseType, ServerToAgent};
use opamp_proto::{Bytes, InstanceUid, Message as _, framing, server_flags};
use opampd::config::Config;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long any single reply may take before the test fails.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

fn ws_url(server: &TestServer) -> String {
    format!("ws://{}/v1/opamp", server.opamp_addr)
}

async fn connect(server: &TestServer) -> Ws {
    let (ws, resp) = tokio_tungstenite::connect_async(ws_url(server)).await.expect("upgrade");
    assert_eq!(resp.status(), 101);
    ws
}

async fn send_raw(ws: &mut Ws, data: Vec<u8>) {
    ws.send(Message::Binary(data.into())).await.expect("sent");
}

async fn send_msg(ws: &mut Ws, msg: &AgentToServer) {
    send_raw(ws, framing::encode(&msg.encode_to_vec()).to_vec()).await;
}

/// The next data or close message (pings and pongs skipped).
async fn next(ws: &mut Ws) -> Message {
    loop {
        let msg = tokio::time::timeout(REPLY_TIMEOUT, ws.next())
            .await
            .expect("server answers in time")
            .expect("connection open")
            .expect("readable");
        if !matches!(msg, Message::Ping(_) | Message::Pong(_)) {
            return msg;
        }
    }
}

/// The next reply: a binary message with header 0x00 and a `ServerToAgent`.
async fn reply(ws: &mut Ws) -> ServerToAgent {
    let Message::Binary(data) = next(ws).await else { panic!("expected a binary reply") };
    assert_eq!(data.first(), Some(&0), "replies carry the 0x00 header");
    ServerToAgent::decode(&data[1..]).expect("reply decodes")
}

/// Sends `msg` and returns its reply, asserting a well-formed, error-free answer.
async fn exchange(ws: &mut Ws, msg: &AgentToServer) -> ServerToAgent {
    send_msg(ws, msg).await;
    let r = reply(ws).await;
    assert_eq!(r.instance_uid, msg.instance_uid, "instance_uid is echoed");
    assert!(r.error_response.is_none(), "no error: {:?}", r.error_response);
    assert_ne!(r.capabilities, 0, "server capabilities on every reply");
    r
}

async fn asks_full(ws: &mut Ws, msg: &AgentToServer) -> bool {
    exchange(ws, msg).await.flags & server_flags::REPORT_FULL_STATE != 0
}

/// Reads until the server's close frame and returns its code.
async fn close_code(ws: &mut Ws) -> u16 {
    loop {
        match next(ws).await {
            Message::Close(Some(frame)) => return u16::from(frame.code),
            Message::Close(None) => panic!("close frame without a code"),
            _ => {}
        }
    }
}

fn disconnect(uid: InstanceUid, seq: u64) -> AgentToServer {
    AgentToServer { agent_disconnect: Some(AgentDisconnect {}), ..poll(uid, seq) }
}

fn assert_bad_request(r: &ServerToAgent) {
    assert_eq!(error_type(r), Some(ServerErrorResponseType::BadRequest), "{r:?}");
    assert_eq!(r.flags, 0, "error_response is exclusive");
    assert_eq!(r.capabilities, 0, "error_response is exclusive");
}

#[tokio::test]
async fn full_status_then_heartbeats_follow_the_drift_rules() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut ws = connect(&server).await;

    let a = uid();
    assert!(!asks_full(&mut ws, &full(a, 0)).await, "new agent with full status");
    for seq in 1..=3 {
        assert!(!asks_full(&mut ws, &poll(a, seq)).await, "heartbeat seq+1 ({seq})");
    }
    assert!(asks_full(&mut ws, &poll(a, 5)).await, "gap");
    assert!(!asks_full(&mut ws, &full(a, 6)).await, "full state after the flag");
    assert!(asks_full(&mut ws, &poll(a, 6)).await, "duplicate, still answered");
    assert!(asks_full(&mut ws, &poll(a, 2)).await, "backwards");
    assert!(!asks_full(&mut ws, &poll(a, 3)).await, "back in sequence");
    assert!(asks_full(&mut ws, &poll(uid(), 0)).await, "new agent without full status");

    ws.close(None).await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test]
async fn malformed_frames_get_bad_request_and_the_connection_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut ws = connect(&server).await;
    let a = uid();

    // header only: a valid empty AgentToServer, whose missing uid is a BadRequest
    send_raw(&mut ws, vec![0x00]).await;
    let r = reply(&mut ws).await;
    assert_bad_request(&r);
    assert!(r.instance_uid.is_empty());

    // a non-zero header
    let mut frame = full(a, 0).encode_to_vec();
    frame.insert(0, 0x01);
    send_raw(&mut ws, frame).await;
    let r = reply(&mut ws).await;
    assert_bad_request(&r);
    assert!(r.error_response.unwrap().error_message.contains("header"));

    // undecodable protobuf behind a good header
    send_raw(&mut ws, vec![0x00, 0xff, 0xff, 0xff]).await;
    assert_bad_request(&reply(&mut ws).await);

    // a 15-byte uid: BadRequest echoing what was sent
    let mut msg = full(a, 0);
    msg.instance_uid = Bytes::from(vec![7u8; 15]);
    send_msg(&mut ws, &msg).await;
    let r = reply(&mut ws).await;
    assert_bad_request(&r);
    assert_eq!(&r.instance_uid[..], &[7u8; 15]);

    // and the same connection still serves
    assert!(!asks_full(&mut ws, &full(a, 0)).await);
    assert!(!asks_full(&mut ws, &poll(a, 1)).await);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn legacy_bare_protobuf_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut ws = connect(&server).await;
    let a = uid();
    send_raw(&mut ws, full(a, 0).encode_to_vec()).await;
    let r = reply(&mut ws).await;
    assert_eq!(r.instance_uid, full(a, 0).instance_uid);
    assert!(r.error_response.is_none());
    assert_eq!(r.flags, 0);
    // mixing framed and bare messages on one connection
    assert!(!asks_full(&mut ws, &poll(a, 1)).await);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn agents_multiplexed_on_one_connection_keep_separate_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut ws = connect(&server).await;
    let (a, b) = (uid(), uid());
    assert!(!asks_full(&mut ws, &full(a, 0)).await);
    assert!(!asks_full(&mut ws, &full(b, 0)).await);
    assert!(!asks_full(&mut ws, &poll(a, 1)).await);
    assert!(!asks_full(&mut ws, &poll(a, 2)).await);
    assert!(!asks_full(&mut ws, &poll(b, 1)).await, "b's sequence is its own");

    // pipelined: everything sent before any reply is read; replies come back in order and
    // a's consecutive messages are applied in order (no false gap)
    let batch =
        [poll(a, 3), poll(b, 2), poll(a, 4), poll(a, 5), poll(b, 3), poll(uid(), 0), poll(b, 4)];
    for msg in &batch {
        send_msg(&mut ws, msg).await;
    }
    for (i, msg) in batch.iter().enumerate() {
        let r = reply(&mut ws).await;
        assert_eq!(r.instance_uid, msg.instance_uid, "reply {i} in order");
        let flagged = r.flags & server_flags::REPORT_FULL_STATE != 0;
        assert_eq!(flagged, i == 5, "reply {i}: only the new agent without full status");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn an_agent_moving_from_http_to_websocket_keeps_its_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let a = uid();
    assert!(!asks_full_state(&server.opamp_url, &full(a, 0)).await);
    assert!(!asks_full_state(&server.opamp_url, &poll(a, 1)).await);
    let mut ws = connect(&server).await;
    assert!(!asks_full(&mut ws, &poll(a, 2)).await, "seq continues over websocket");
    assert!(asks_full(&mut ws, &poll(a, 4)).await, "and gaps are still gaps");
    drop(ws);
    assert!(!asks_full_state(&server.opamp_url, &full(a, 5)).await, "and back to http");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn disconnect_then_reconnect_follows_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    for (restart, expected, what) in [
        (poll as fn(_, _) -> _, true, "seq 0 not full after disconnect"),
        (full, false, "seq 0 full after disconnect"),
        (|u, _| poll(u, 2), false, "seq+1 after disconnect"),
    ] {
        let u = uid();
        let mut ws = connect(&server).await;
        assert!(!asks_full(&mut ws, &full(u, 0)).await);
        assert!(!asks_full(&mut ws, &disconnect(u, 1)).await);
        ws.close(None).await.unwrap();
        let mut ws = connect(&server).await;
        assert_eq!(asks_full(&mut ws, &restart(u, 0)).await, expected, "{what}");
    }
    server.stop().await.unwrap();
}

/// An agent stopping sends agent_disconnect and closes at once, without reading the reply:
/// the message must still be applied.
#[tokio::test]
async fn a_message_sent_right_before_the_close_is_still_applied() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let u = uid();
    let mut ws = connect(&server).await;
    assert!(!asks_full(&mut ws, &full(u, 0)).await);
    send_msg(&mut ws, &poll(u, 1)).await;
    ws.close(None).await.unwrap();
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!asks_full_state(&server.opamp_url, &poll(u, 2)).await, "seq 1 was applied");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn over_limit_message_closes_with_1009() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded(dir.path());
    config.max_message_bytes = 64 << 10;
    let server = TestServer::start_with(config).await;

    // framed: header + protobuf one byte over the limit
    let mut ws = connect(&server).await;
    let mut frame = vec![0u8; (64 << 10) + 2];
    frame[1] = 0x0a;
    send_raw(&mut ws, frame).await;
    assert_eq!(close_code(&mut ws).await, 1009);

    // bare protobuf one byte over the limit (passes the transport's frame bound by one)
    let mut ws = connect(&server).await;
    let mut frame = vec![0u8; (64 << 10) + 1];
    frame[0] = 0x0a;
    send_raw(&mut ws, frame).await;
    assert_eq!(close_code(&mut ws).await, 1009);

    // exactly the limit is fine
    let mut ws = connect(&server).await;
    let a = uid();
    let mut msg = full(a, 0);
    let pad = (64 << 10) - msg.encoded_len() - 8;
    msg.custom_message =
        Some(opamp_proto::v1::CustomMessage { data: vec![1u8; pad].into(), ..Default::default() });
    let len = msg.encoded_len();
    assert!(len <= 64 << 10 && len > (64 << 10) - 16, "{len}");
    assert!(!asks_full(&mut ws, &msg).await);
    server.stop().await.unwrap();
}

/// A frame far over the limit, sent in one write: the server refuses it from its header while
/// the client is still sending. The client must still learn why (close 1009 and its reason),
/// not see the connection reset under it (1006), every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_far_over_the_limit_always_gets_close_1009_with_its_reason() {
    const LIMIT: usize = 1 << 20;
    const RUNS: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded(dir.path());
    config.max_message_bytes = LIMIT;
    let server = TestServer::start_with(config).await;
    let mut frame = vec![0u8; 4 * LIMIT];
    frame[1] = 0x0a;
    let frame = Bytes::from(frame);
    for run in 0..RUNS {
        let mut ws = connect(&server).await;
        let sent = tokio::time::timeout(REPLY_TIMEOUT, ws.send(Message::Binary(frame.clone())))
            .await
            .expect("the server keeps reading while the client sends");
        assert!(sent.is_ok(), "run {run}: the send failed: {sent:?}");
        let got = tokio::time::timeout(REPLY_TIMEOUT, ws.next()).await.expect("answered in time");
        match got {
            Some(Ok(Message::Close(Some(close)))) => {
                assert_eq!(u16::from(close.code), 1009, "run {run}");
                assert_eq!(close.reason.as_str(), "message too large", "run {run}");
            }
            other => panic!("run {run}: expected close 1009, got {other:?}"),
        }
        // the client answers the close; the server then ends the connection
        let end = tokio::time::timeout(REPLY_TIMEOUT, ws.next()).await.expect("closed in time");
        assert!(matches!(end, None | Some(Err(_))), "run {run}: {end:?}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_huge_message_is_refused_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded(dir.path());
    config.max_message_bytes = 64 << 10;
    let server = TestServer::start_with(config).await;
    // a raw frame header announcing 1 GiB: refused from the header alone
    let mut s = TcpStream::connect(server.opamp_addr).await.unwrap();
    let head = "GET /v1/opamp HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
                sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    s.write_all(head.as_bytes()).await.unwrap();
    let mut frame = vec![0x82, 0xff]; // fin + binary, masked, 64-bit length
    frame.extend_from_slice(&(1u64 << 30).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]); // mask
    s.write_all(&frame).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(REPLY_TIMEOUT, async {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server ends the connection");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    // the close frame: 0x88, length, then the code 1009 (0x03f1)
    let at = buf.windows(2).position(|w| w == [0x03, 0xf1]);
    assert!(at.is_some_and(|i| i >= 2 && buf[i - 2] == 0x88), "close 1009 sent: {buf:?}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn text_message_closes_with_1003() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut ws = connect(&server).await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 1003);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_sessions_with_1001() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path()).await;
    let mut first = connect(&server).await;
    let mut second = connect(&server).await;
    let a = uid();
    assert!(!asks_full(&mut first, &full(a, 0)).await);
    server.signal_stop();
    assert_eq!(close_code(&mut first).await, u16::from(CloseCode::Away));
    assert_eq!(close_code(&mut second).await, 1001);
    // the sessions ended, so the server stops well within its 25 s grace
    let started = std::time::Instant::now();
    server.stop().await.expect("clean shutdown");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_peer_that_ignores_the_close_is_dropped_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded(dir.path());
    config.shutdown_grace = Duration::from_secs(1);
    let server = TestServer::start_with(config).await;
    // connected but never reads: the close handshake cannot complete from its side
    let _silent = connect(&server).await;
    let started = std::time::Instant::now();
    server.stop().await.expect("clean shutdown");
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
}

#[tokio::test]
async fn session_limit_refuses_the_upgrade_with_503() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded(dir.path());
    config.max_ws_sessions = 1;
    let server = TestServer::start_with(config).await;
    let mut first = connect(&server).await;
    let err = tokio_tungstenite::connect_async(ws_url(&server)).await.expect_err("over the limit");
    let tokio_tungstenite::tungstenite::Error::Http(resp) = err else { panic!("{err:?}") };
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "30");
    // HTTP is not affected, and the open session still works
    assert!(!asks_full_state(&server.opamp_url, &full(uid(), 0)).await);
    assert!(!asks_full(&mut first, &full(uid(), 0)).await);
    // a closed session frees its slot
    first.close(None).await.unwrap();
    let _ = tokio::time::timeout(REPLY_TIMEOUT, first.next()).await;
    drop(first);
    let mut again = None;
    for _ in 0..50 {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(ws_url(&server)).await {
            again = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "slot released after the close");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn get_without_upgrade_is_still_426() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let resp = client().get(&server.opamp_url).send().await.unwrap();
    assert_eq!(resp.status(), 426);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn overload_is_answered_in_band_with_unavailable_and_retry_info() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded(dir.path());
    config.max_in_flight = 1;
    let server = TestServer::start_with(config).await;
    // hold the only in-flight permit with an HTTP request whose body never finishes
    let body = full(uid(), 0).encode_to_vec();
    let mut slow = TcpStream::connect(server.opamp_addr).await.unwrap();
    let head = format!(
        "POST /v1/opamp HTTP/1.1\r\nhost: x\r\ncontent-type: {PROTOBUF}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&body[..1]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut ws = connect(&server).await;
    let a = uid();
    send_msg(&mut ws, &full(a, 0)).await;
    let r = reply(&mut ws).await;
    assert_eq!(error_type(&r), Some(ServerErrorResponseType::Unavailable));
    assert_eq!(r.instance_uid, full(a, 0).instance_uid);
    let retry = r.error_response.unwrap().details.expect("retry_info");
    let opamp_proto::v1::server_error_response::Details::RetryInfo(info) = retry;
    assert!(info.retry_after_nanoseconds >= 30_000_000_000);

    slow.write_all(&body[1..]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!asks_full(&mut ws, &full(a, 0)).await, "served once the permit is back");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn idle_session_is_closed_after_the_idle_timeout_and_pings_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded(dir.path());
    // below the validated minimum only to keep the test short
    config.ws_idle_timeout = Duration::from_secs(1);
    let server = TestServer::start_with(config).await;
    let mut ws = connect(&server).await;
    ws.send(Message::Ping(Bytes::from_static(b"hi"))).await.unwrap();
    let pong = tokio::time::timeout(REPLY_TIMEOUT, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(pong, Message::Pong(Bytes::from_static(b"hi")));
    let started = std::time::Instant::now();
    assert_eq!(close_code(&mut ws).await, 1000);
    assert!(started.elapsed() >= Duration::from_millis(900));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn sessions_and_messages_are_in_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut ws = connect(&server).await;
    assert!(!asks_full(&mut ws, &full(uid(), 0)).await);
    send_raw(&mut ws, vec![0x00]).await;
    assert_bad_request(&reply(&mut ws).await);
    let text = client()
        .get(format!("{}/metrics", server.admin_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("opampd_ws_sessions"), "{text}");
    assert!(text.contains(r#"opampd_messages_total{transport="ws",outcome="ok"}"#), "{text}");
    assert!(
        text.contains(r#"opampd_messages_total{transport="ws",outcome="bad_request"}"#),
        "{text}"
    );
    server.stop().await.unwrap();
}
