//! Black-box tests of the HTTP transport: a real server on 127.0.0.1:0 over the embedded store
//! in a temporary directory, driven by a real HTTP client.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::common::*;
use flate2::Compression;
use flate2::write::GzEncoder;
use opamp_proto::v1::{AgentDisconnect, ServerErrorResponseType, ServerToAgent};
use opamp_proto::{Message, agent_caps, agent_flags};
use opampd::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

#[tokio::test]
async fn drift_cases_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let url = &server.opamp_url;

    // new agent with full status: no flag; then seq+1: no flag
    let a = uid();
    assert!(!asks_full_state(url, &full(a, 1)).await, "new agent with full status");
    assert!(!asks_full_state(url, &poll(a, 2)).await, "seq+1");
    // gap, then out of order, then duplicate (still answered)
    assert!(asks_full_state(url, &poll(a, 5)).await, "gap");
    assert!(asks_full_state(url, &poll(a, 3)).await, "out of order");
    assert!(asks_full_state(url, &poll(a, 3)).await, "duplicate");
    assert!(!asks_full_state(url, &poll(a, 4)).await, "back in sequence");

    // new agent without full status
    assert!(asks_full_state(url, &poll(uid(), 0)).await, "new agent without full status");

    // disconnect, then: seq 0 not full (flag) / seq 0 full (no flag) / seq+1 (no flag)
    let disconnect = |u, seq| opamp_proto::v1::AgentToServer {
        agent_disconnect: Some(AgentDisconnect {}),
        ..poll(u, seq)
    };
    for (restart, expected, what) in [
        (poll as fn(_, _) -> _, true, "seq 0 not full after disconnect"),
        (full, false, "seq 0 full after disconnect"),
    ] {
        let u = uid();
        assert!(!asks_full_state(url, &full(u, 0)).await);
        assert!(!asks_full_state(url, &disconnect(u, 1)).await);
        assert_eq!(asks_full_state(url, &restart(u, 0)).await, expected, "{what}");
    }
    let u = uid();
    assert!(!asks_full_state(url, &full(u, 0)).await);
    assert!(!asks_full_state(url, &disconnect(u, 1)).await);
    assert!(!asks_full_state(url, &poll(u, 2)).await, "seq+1 after disconnect");

    // each reports-capability bit without its field on a new agent
    for bit in [
        agent_caps::REPORTS_EFFECTIVE_CONFIG,
        agent_caps::REPORTS_REMOTE_CONFIG,
        agent_caps::REPORTS_PACKAGE_STATUSES,
        agent_caps::REPORTS_AVAILABLE_COMPONENTS,
        agent_caps::REPORTS_CONNECTION_SETTINGS_STATUS,
    ] {
        let mut msg = full(uid(), 0);
        msg.capabilities |= bit;
        assert!(asks_full_state(url, &msg).await, "capability {bit:#x} without its field");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn request_instance_uid_gets_a_fresh_uid() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let old = uid();
    let mut msg = full(old, 0);
    msg.flags = agent_flags::REQUEST_INSTANCE_UID;
    let reply = send(&server.opamp_url, &msg).await;
    let new = reply.agent_identification.expect("agent_identification").new_instance_uid;
    assert_eq!(new.len(), 16);
    assert_ne!(&new[..], old.as_bytes());
    assert_eq!(&reply.instance_uid[..], old.as_bytes(), "still echoes the old uid");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn restart_on_the_same_data_dir_keeps_sequence_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let a = uid();
    let server = TestServer::start(dir.path()).await;
    assert!(!asks_full_state(&server.opamp_url, &full(a, 0)).await);
    assert!(!asks_full_state(&server.opamp_url, &poll(a, 1)).await);
    server.stop().await.expect("clean shutdown");

    let server = TestServer::start(dir.path()).await;
    assert!(!asks_full_state(&server.opamp_url, &poll(a, 2)).await, "seq continues after restart");
    server.stop().await.unwrap();
}

async fn post_raw(
    url: &str,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut req = client().post(url).header("content-type", content_type).body(body);
    if let Some(e) = encoding {
        req = req.header("content-encoding", e);
    }
    req.send().await.expect("request sent")
}

async fn bad_request_reply(resp: reqwest::Response) -> ServerToAgent {
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["content-type"], PROTOBUF);
    let reply = ServerToAgent::decode(resp.bytes().await.unwrap()).expect("protobuf error body");
    assert_eq!(error_type(&reply), Some(ServerErrorResponseType::BadRequest));
    assert_eq!(reply.flags, 0, "error_response is exclusive");
    reply
}

#[tokio::test]
async fn bad_inputs_get_clear_errors_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded(dir.path());
    config.max_message_bytes = 1 << 20;
    let server = TestServer::start_with(config).await;
    let url = &server.opamp_url;

    // malformed protobuf
    bad_request_reply(post_raw(url, PROTOBUF, None, vec![0xff, 0xff, 0xff, 0xff]).await).await;
    // a 15-byte uid: BadRequest that echoes what was sent
    let mut msg = full(uid(), 0);
    msg.instance_uid = vec![7u8; 15].into();
    let reply = bad_request_reply(post_raw(url, PROTOBUF, None, msg.encode_to_vec()).await).await;
    assert_eq!(&reply.instance_uid[..], &[7u8; 15]);
    // gzip that is not gzip
    bad_request_reply(post_raw(url, PROTOBUF, Some("gzip"), b"nope".to_vec()).await).await;

    // media types
    let body = full(uid(), 0).encode_to_vec();
    assert_eq!(post_raw(url, "text/plain", None, body.clone()).await.status(), 415);
    assert_eq!(post_raw(url, PROTOBUF, Some("br"), body.clone()).await.status(), 415);
    let resp = client().post(url).body(body.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 415, "missing content-type");
    // parameters and case are tolerated
    let ok = post_raw(url, "Application/X-Protobuf; charset=binary", None, body).await;
    assert_eq!(ok.status(), 200);

    // over-limit plain body
    let resp = post_raw(url, PROTOBUF, None, vec![0u8; (1 << 20) + 1]).await;
    assert_eq!(resp.status(), 413);
    assert!(resp.text().await.unwrap().contains("do not retry"));

    // gzip bomb: 100 MB of zeros, ~100 KB on the wire, limit 1 MiB
    let bomb = gzip(&vec![0u8; 100 << 20]);
    assert!(bomb.len() < 1 << 20);
    let started = Instant::now();
    let resp = post_raw(url, PROTOBUF, Some("gzip"), bomb).await;
    assert_eq!(resp.status(), 413);
    assert!(started.elapsed() < Duration::from_secs(3), "rejected quickly");

    // methods
    let resp = client().get(url).send().await.unwrap();
    assert!(resp.status().is_client_error());
    assert_eq!(resp.status(), 426);
    let resp = client().put(url).body(vec![]).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    let resp = client().delete(url).send().await.unwrap();
    assert_eq!(resp.status(), 405);

    // and it still serves a normal request
    let a = uid();
    assert!(!asks_full_state(url, &full(a, 0)).await);
    assert!(!asks_full_state(url, &poll(a, 1)).await);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn gzip_request_and_gzip_response() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let a = uid();
    let msg = full(a, 0);
    let resp = client()
        .post(&server.opamp_url)
        .header("content-type", PROTOBUF)
        .header("content-encoding", "gzip")
        .header("accept-encoding", "br;q=1, gzip;q=0.8")
        .body(gzip(&msg.encode_to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&resp.bytes().await.unwrap()[..]).read_to_end(&mut plain).unwrap();
    let reply = ServerToAgent::decode(&plain[..]).unwrap();
    assert_eq!(reply.instance_uid, msg.instance_uid);
    assert_eq!(reply.flags, 0, "full status of a new agent needs no second round");

    // no Accept-Encoding: identity
    let resp = post_raw(&server.opamp_url, PROTOBUF, None, poll(a, 1).encode_to_vec()).await;
    assert!(resp.headers().get("content-encoding").is_none());
    server.stop().await.unwrap();
}

/// Opens a raw connection and sends a POST head announcing `len` body bytes plus `first`
/// of them, leaving the request in flight.
async fn start_slow_post(server: &TestServer, len: usize, first: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(server.opamp_addr).await.unwrap();
    let head = format!(
        "POST /v1/opamp HTTP/1.1\r\nhost: x\r\ncontent-type: {PROTOBUF}\r\ncontent-length: {len}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(first).await.unwrap();
    s
}

async fn read_response_head(s: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("response in time")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn full_server_sheds_load_with_503_and_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded(dir.path());
    config.max_in_flight = 1;
    let server = TestServer::start_with(config).await;
    let body = full(uid(), 0).encode_to_vec();
    let mut slow = start_slow_post(&server, body.len(), &body[..1]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let resp = post_raw(&server.opamp_url, PROTOBUF, None, full(uid(), 0).encode_to_vec()).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "30");

    slow.write_all(&body[1..]).await.unwrap();
    assert!(read_response_head(&mut slow).await.starts_with("HTTP/1.1 200"));
    // the permit is back
    assert!(!asks_full_state(&server.opamp_url, &full(uid(), 0)).await);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_request_that_never_completes_times_out_with_503() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded(dir.path());
    config.request_timeout = Duration::from_millis(500);
    let server = TestServer::start_with(config).await;
    let mut slow = start_slow_post(&server, 100, b"\x0a").await;
    let head = read_response_head(&mut slow).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 30"));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path()).await;
    let body = full(uid(), 0).encode_to_vec();
    let mut slow = start_slow_post(&server, body.len(), &body[..2]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.signal_stop();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // the load balancer is told first
    let readyz = client().get(format!("{}/readyz", server.admin_url)).send().await.unwrap();
    assert_eq!(readyz.status(), 503);

    // no new connections once shutdown started
    assert!(client().post(&server.opamp_url).send().await.is_err());

    slow.write_all(&body[2..]).await.unwrap();
    let head = read_response_head(&mut slow).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    server.stop().await.expect("clean shutdown");
}

/// Agents poll every 30 s on a kept-alive connection: it must still be open at 31 s.
#[tokio::test]
async fn idle_keep_alive_connection_survives_a_poll_interval() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let a = uid();
    let mut s = TcpStream::connect(server.opamp_addr).await.unwrap();
    for (seq, wait) in [(0, Duration::ZERO), (1, Duration::from_secs(31))] {
        tokio::time::sleep(wait).await;
        let body = if seq == 0 { full(a, seq) } else { poll(a, seq) }.encode_to_vec();
        let head = format!(
            "POST /v1/opamp HTTP/1.1\r\nhost: x\r\ncontent-type: {PROTOBUF}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.expect("connection still open");
        s.write_all(&body).await.expect("connection still open");
        let resp = read_response_head(&mut s).await;
        assert!(
            resp.starts_with("HTTP/1.1 200"),
            "request {seq} on the kept-alive connection: {resp:?}"
        );
    }
    server.stop().await.unwrap();
}

/// The other side of the same knob: past the idle timeout the server closes the connection
/// (the timeout is set below the validated minimum here only to keep the test short).
#[tokio::test]
async fn idle_connection_is_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded(dir.path());
    config.idle_timeout = Duration::from_secs(1);
    let server = TestServer::start_with(config).await;
    let body = full(uid(), 0).encode_to_vec();
    let mut s = start_slow_post(&server, body.len(), &body).await;
    assert!(read_response_head(&mut s).await.starts_with("HTTP/1.1 200"));
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("server closes the idle connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "eof");
    server.stop().await.unwrap();
}

/// Many agents at once: every message answered, none falsely asked for its full state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_agents_get_no_false_full_state_requests() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let url = server.opamp_url.clone();
    let agents = (0..50).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            let a = uid();
            let mut flagged = asks_full_state(&url, &full(a, 0)).await;
            for seq in 1..=5 {
                flagged |= asks_full_state(&url, &poll(a, seq)).await;
            }
            flagged
        })
    });
    for agent in futures::future::join_all(agents).await {
        assert!(!agent.unwrap(), "no false ReportFullState");
    }
    server.stop().await.unwrap();
}
