//! End-to-end check of the loadtest's accounting against a tiny in-test OpAMP server on
//! 127.0.0.1:0: a server that follows the drift rules scores 0 false / 0 missed, and servers with
//! fleet-server's known bugs (never asking, always asking) are caught. The same server answers
//! `GET /api/agents` like opampd's admin API, so the stored-seq check is run against it, and a
//! server that acknowledges writes it does not keep is caught by that check.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opamp_proto::v1::{AgentToServer, ServerToAgent};
use opamp_proto::{Message, server_caps, server_flags};
use opampd_loadtest::config::RunConfig;
use opampd_loadtest::runner;
use opampd_loadtest::transport::{HttpTransport, Transport};
use opampd_loadtest::verify;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy)]
enum Behaviour {
    Correct,
    NeverAsks,
    AlwaysAsks,
    /// Correct replies, but every write after an agent's seq 2 is acknowledged and dropped.
    ForgetsWrites,
}

type Store = Arc<Mutex<HashMap<Vec<u8>, u64>>>;

fn decide(store: &Store, msg: &AgentToServer, behaviour: Behaviour) -> bool {
    let mut s = store.lock().unwrap();
    let full = msg.agent_description.is_some() && msg.health.is_some();
    let ask = match s.get(msg.instance_uid.as_ref()) {
        Some(&stored) => msg.sequence_num != stored + 1,
        None => !full,
    };
    let keep = !matches!(behaviour, Behaviour::ForgetsWrites) || msg.sequence_num <= 2;
    if keep {
        s.insert(msg.instance_uid.to_vec(), msg.sequence_num);
    }
    match behaviour {
        Behaviour::Correct | Behaviour::ForgetsWrites => ask,
        Behaviour::NeverAsks => false,
        Behaviour::AlwaysAsks => true,
    }
}

/// Minimal HTTP/1.1 keep-alive loop: enough for reqwest, nothing more.
async fn serve_conn(mut sock: TcpStream, store: Store, behaviour: Behaviour) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        if head.starts_with("get /api/agents") {
            buf.drain(..head_end);
            let body = agents_json(&store);
            let out = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if sock.write_all(out.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while buf.len() < head_end + len {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let msg = AgentToServer::decode(&buf[head_end..head_end + len]).unwrap();
        buf.drain(..head_end + len);
        let ask = decide(&store, &msg, behaviour);
        let reply = ServerToAgent {
            instance_uid: msg.instance_uid.clone(),
            flags: if ask { server_flags::REPORT_FULL_STATE } else { 0 },
            capabilities: server_caps::ACCEPTS_STATUS,
            ..Default::default()
        }
        .encode_to_vec();
        // One write: head and body in separate segments would meet Nagle and delayed ACKs.
        let mut out = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
            reply.len()
        )
        .into_bytes();
        out.extend_from_slice(&reply);
        if sock.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// The admin listing, all in one page.
fn agents_json(store: &Store) -> String {
    let s = store.lock().unwrap();
    let agents: Vec<_> = s
        .iter()
        .map(|(uid, seq)| {
            let uid = opamp_proto::InstanceUid::from_bytes(uid.as_slice().try_into().unwrap());
            serde_json::json!({"instance_uid": uid.to_string(), "sequence_num": seq})
        })
        .collect();
    serde_json::json!({"agents": agents, "next_cursor": null}).to_string()
}

async fn run_against(behaviour: Behaviour) -> opampd_loadtest::report::Summary {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let store: Store = Arc::default();
    let server = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            sock.set_nodelay(true).unwrap();
            tokio::spawn(serve_conn(sock, store.clone(), behaviour));
        }
    });
    let url = format!("http://{addr}/v1/opamp").parse().unwrap();
    let admin = format!("http://{addr}").parse().unwrap();
    let transport =
        Transport::Http(HttpTransport::new(url, 8, Duration::from_secs(5), None).unwrap());
    let cfg = RunConfig {
        agents: 50,
        rate: 1000.0,
        duration: Duration::from_millis(1500),
        warmup: Duration::ZERO,
        max_in_flight: 8,
        drift_rate: 0.2,
        seed: 42,
        max_followups: 2,
        progress_every: Duration::from_secs(60),
        drain_timeout: Duration::from_secs(5),
        steps: Vec::new(),
        record_events: true,
    };
    let outcome = runner::run_recorded(cfg, Arc::new(transport)).await;
    let mut summary = outcome.summary;
    assert_eq!(outcome.events.events.len() as u64, summary.replies_ok + summary.errors);
    summary.verify = Some(verify::verify(&[admin], &outcome.agents).await);
    server.abort();
    summary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correct_server_scores_zero_false_and_zero_missed() {
    let s = run_against(Behaviour::Correct).await;
    assert!(s.replies_ok > 200, "{s}");
    assert!(s.injected > 10, "{s}");
    assert_eq!(
        (s.false_full_state, s.missed_full_state, s.errors, s.unjudged),
        (0, 0, 0, 0),
        "{s}"
    );
    assert_eq!(s.expected_requests_honoured, s.injected, "{s}");
    // Each request is answered at once with a full status (but none is started after the end).
    assert!(s.followups <= s.injected && s.followups + 8 >= s.injected, "{s}");
    let v = s.verify.as_ref().unwrap();
    assert_eq!((v.agents, v.matched, v.acknowledged_lost), (50, 50, 0), "{s}");
    assert!(v.listed >= 50 && v.error.is_none(), "{s}");
    assert!(s.failures(0.0).is_empty(), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_that_loses_acknowledged_writes_is_caught() {
    let s = run_against(Behaviour::ForgetsWrites).await;
    let v = s.verify.as_ref().unwrap();
    assert_eq!(v.acknowledged_lost, 50, "{s}");
    assert_eq!(v.lost["other"], 50, "{s}");
    assert!(s.failures(0.0).iter().any(|f| f.contains("acknowledged writes lost")), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_that_never_asks_is_caught() {
    let s = run_against(Behaviour::NeverAsks).await;
    assert!(s.missed_full_state > 0 && s.missed_full_state == s.injected, "{s}");
    assert_eq!(s.false_full_state, 0, "{s}");
    assert!(!s.failures(0.0).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_that_always_asks_is_caught() {
    let s = run_against(Behaviour::AlwaysAsks).await;
    assert!(s.false_full_state > 0, "{s}");
    assert!(!s.failures(0.0).is_empty());
}
