//! End-to-end check of the loadtest's accounting against a tiny in-test OpAMP server on
//! 127.0.0.1:0: a server that follows the drift rules scores 0 false / 0 missed, and servers with
//! fleet-server's known bugs (never asking, always asking) are caught. The same server answers
//! `GET /api/agents` like opampd's admin API, so the stored-seq check is run against it, and a
//! server that acknowledges writes it does not keep is caught by that check. It also keeps one
//! remote config (`PUT`/`GET /api/configs/{name}`) and delivers it as opampd's rule says (once
//! per hash, only to agents that accept it): the generator's own pushes roll out completely with
//! no duplicate, and servers that deliver twice or to the wrong agents are caught.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opamp_proto::v1::{
    AgentConfigFile, AgentConfigMap, AgentRemoteConfig, AgentToServer, RemoteConfigStatuses,
    ServerToAgent,
};
use opamp_proto::{Message, agent_caps, server_caps, server_flags};
use opampd_loadtest::admin::Admin;
use opampd_loadtest::config::{RemoteConfigRun, RunConfig};
use opampd_loadtest::remote_config::{self, ServerView};
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

/// How the server hands out its remote config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// opampd's rule: to an accepting agent whose reported hash differs and that was not sent
    /// this hash before, never in a reply that asks for full state.
    Once,
    /// Forgets what it sent and takes only a final status as done: an agent still reporting
    /// APPLYING is sent the config again.
    UntilDone,
    /// Ignores the capability: every agent gets it (once).
    ToEveryone,
}

#[derive(Debug, Default)]
struct RcAgent {
    accepts: bool,
    /// (hash, status) of the last `remote_config_status` reported.
    reported: Option<(Vec<u8>, i32)>,
    offered: Option<Vec<u8>>,
}

#[derive(Debug)]
struct Remote {
    delivery: Delivery,
    /// (name, hash, body) of the config, once put.
    config: Option<(String, Vec<u8>, String)>,
    agents: HashMap<Vec<u8>, RcAgent>,
}

type Configs = Arc<Mutex<Remote>>;

/// A stand-in content hash (the real one is SHA-256; any 32 bytes that follow the body do).
fn content_hash(body: &str) -> Vec<u8> {
    (0u64..4)
        .flat_map(|i| {
            let h = body.bytes().fold(0xcbf2_9ce4_8422_2325u64 ^ i, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            h.to_be_bytes()
        })
        .collect()
}

/// The remote-config part of a reply to `msg` (`asked`: the reply asks for full state).
fn remote_config(configs: &Configs, msg: &AgentToServer, asked: bool) -> Option<AgentRemoteConfig> {
    let mut r = configs.lock().unwrap();
    let delivery = r.delivery;
    let config = r.config.clone();
    let a = r.agents.entry(msg.instance_uid.to_vec()).or_default();
    a.accepts = msg.capabilities & agent_caps::ACCEPTS_REMOTE_CONFIG != 0;
    if let Some(s) = &msg.remote_config_status {
        a.reported = Some((s.last_remote_config_hash.to_vec(), s.status));
    }
    let (name, hash, body) = config?;
    let reported = a.reported.as_ref().is_some_and(|(h, _)| *h == hash);
    let offered = a.offered.as_ref() == Some(&hash);
    let send = match delivery {
        Delivery::Once => a.accepts && !reported && !offered && !asked,
        Delivery::UntilDone => {
            let done = [RemoteConfigStatuses::Applied, RemoteConfigStatuses::Failed]
                .map(|s| s as i32)
                .iter()
                .any(|s| a.reported.as_ref().is_some_and(|(h, st)| *h == hash && st == s));
            a.accepts && !done
        }
        Delivery::ToEveryone => !reported && !offered,
    };
    if !send {
        return None;
    }
    a.offered = Some(hash.clone());
    let file = AgentConfigFile {
        body: body.into_bytes().into(),
        content_type: "text/yaml".into(),
        ..Default::default()
    };
    Some(AgentRemoteConfig {
        config: Some(AgentConfigMap { config_map: HashMap::from([(name, file)]) }),
        config_hash: hash.into(),
    })
}

/// `PUT /api/configs/{name}`: keeps the config, answers its hash.
fn put_config(configs: &Configs, name: &str, body: &[u8]) -> String {
    let doc: serde_json::Value = serde_json::from_slice(body).unwrap();
    let file = doc["files"][remote_config::PUSH_FILE]["body"].as_str().unwrap().to_owned();
    let hash = content_hash(&file);
    let hex = remote_config::hex(&hash);
    configs.lock().unwrap().config = Some((name.to_owned(), hash, file));
    serde_json::json!({"name": name, "hash": hex}).to_string()
}

/// `GET /api/configs/{name}`: the hash and the agents' counts, as opampd's admin API shows them.
fn get_config(configs: &Configs) -> String {
    let r = configs.lock().unwrap();
    let (name, hash, _) = r.config.clone().unwrap();
    let (mut matched, mut applied, mut applying, mut failed) = (0, 0, 0, 0);
    for a in r.agents.values().filter(|a| a.accepts) {
        matched += 1;
        match &a.reported {
            Some((h, s)) if *h == hash && *s == RemoteConfigStatuses::Applied as i32 => {
                applied += 1
            }
            Some((h, s)) if *h == hash && *s == RemoteConfigStatuses::Failed as i32 => failed += 1,
            Some((h, _)) if *h == hash => applying += 1,
            _ if a.offered.as_ref() == Some(&hash) => applying += 1,
            _ => {}
        }
    }
    let pending = matched - applied - applying - failed;
    serde_json::json!({
        "name": name,
        "hash": remote_config::hex(&hash),
        "agents": {"matched": matched, "applied": applied, "applying": applying,
                   "failed": failed, "pending": pending},
    })
    .to_string()
}

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
async fn serve_conn(mut sock: TcpStream, store: Store, behaviour: Behaviour, configs: Configs) {
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
        let body: Vec<u8> = buf.drain(..head_end + len).skip(head_end).collect();
        let path = head.split_whitespace().nth(1).unwrap_or_default().to_owned();
        let json = if head.starts_with("get /api/agents") {
            Some(agents_json(&store))
        } else if head.starts_with("put /api/configs/") {
            Some(put_config(&configs, &path["/api/configs/".len()..], &body))
        } else if head.starts_with("get /api/configs/") {
            Some(get_config(&configs))
        } else {
            None
        };
        if let Some(json) = json {
            let out = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
                json.len()
            );
            if sock.write_all(out.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let msg = AgentToServer::decode(&body[..]).unwrap();
        let ask = decide(&store, &msg, behaviour);
        let reply = ServerToAgent {
            instance_uid: msg.instance_uid.clone(),
            flags: if ask { server_flags::REPORT_FULL_STATE } else { 0 },
            capabilities: server_caps::ACCEPTS_STATUS | server_caps::OFFERS_REMOTE_CONFIG,
            remote_config: remote_config(&configs, &msg, ask),
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
    run_with(behaviour, Delivery::Once, RemoteConfigRun::default()).await
}

async fn run_with(
    behaviour: Behaviour,
    delivery: Delivery,
    remote: RemoteConfigRun,
) -> opampd_loadtest::report::Summary {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let store: Store = Arc::default();
    let configs: Configs =
        Arc::new(Mutex::new(Remote { delivery, config: None, agents: HashMap::new() }));
    let server = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            sock.set_nodelay(true).unwrap();
            tokio::spawn(serve_conn(sock, store.clone(), behaviour, configs.clone()));
        }
    });
    let url = format!("http://{addr}/v1/opamp").parse().unwrap();
    let admin = Admin::new(vec![format!("http://{addr}").parse().unwrap()], None).unwrap();
    let transport =
        Transport::Http(HttpTransport::new(url, 8, Duration::from_secs(5), None).unwrap());
    let pushing = !remote.push_at.is_empty();
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
        remote_config: remote,
        fleet: Default::default(),
    };
    let outcome = runner::run_with_admin(cfg, Arc::new(transport), Some(admin.clone())).await;
    let mut summary = outcome.summary;
    assert_eq!(outcome.events.events.len() as u64, summary.replies_ok + summary.errors);
    summary.verify = Some(verify::verify(&admin, &outcome.agents).await);
    if pushing {
        let doc = admin.get_config("loadtest").await.unwrap();
        summary.remote_config.server = Some(ServerView::from_json("loadtest", &doc));
    }
    server.abort();
    summary
}

fn pushes(at_ms: &[u64]) -> RemoteConfigRun {
    RemoteConfigRun {
        agents: 0.5,
        fail_rate: 0.25,
        push_at: at_ms.iter().map(|ms| Duration::from_millis(*ms)).collect(),
        push_name: "loadtest".into(),
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_roll_out_to_every_accepting_agent_exactly_once() {
    let s = run_with(Behaviour::Correct, Delivery::Once, pushes(&[300, 700])).await;
    let rc = &s.remote_config;
    assert_eq!(rc.agents, 25, "{s}");
    // two hashes, each to every accepting agent once; each ends APPLIED or FAILED, acknowledged
    assert_eq!((rc.received, rc.duplicates, rc.unexpected), (50, 0, 0), "{s}");
    assert_eq!(rc.applied + rc.failed, 50, "{s}");
    assert!(rc.failed > 0 && rc.applied > rc.failed, "{s}");
    assert_eq!(rc.pushes.len(), 2, "{s}");
    assert_ne!(rc.pushes[0].hash, rc.pushes[1].hash, "{s}");
    for p in &rc.pushes {
        assert_eq!((p.error.as_deref(), p.received, p.applied + p.failed), (None, 25, 25), "{s}");
        let [p50, p90, p99, p100] = p.rollout_s.map(Option::unwrap);
        assert!(p50 <= p90 && p90 <= p99 && p99 <= p100 && p100 < 1.0, "{s}");
    }
    // the server's counts of the last hash are the generator's
    let server = rc.server.as_ref().unwrap();
    assert_eq!(server.hash, rc.pushes[1].hash, "{s}");
    assert_eq!(server.agents, Some(rc.pushes[1].counts()), "{s}");
    // status changes are no drift
    assert_eq!((s.false_full_state, s.missed_full_state, s.errors), (0, 0, 0), "{s}");
    assert!(s.injected > 10 && s.expected_requests_honoured == s.injected, "{s}");
    assert!(s.failures(0.0).is_empty(), "{s}");
    let v = s.to_json(0.0);
    assert_eq!(v["remote_config_pushes"][1]["complete"], true);
    assert_eq!(v["remote_config_server"]["agents"]["matched"], 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_that_delivers_a_config_again_is_caught() {
    let s = run_with(Behaviour::Correct, Delivery::UntilDone, pushes(&[300])).await;
    assert!(s.remote_config.duplicates > 0, "{s}");
    assert!(s.failures(0.0).iter().any(|f| f.contains("delivered twice")), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_that_sends_configs_to_agents_that_do_not_accept_them_is_caught() {
    let s = run_with(Behaviour::Correct, Delivery::ToEveryone, pushes(&[300])).await;
    assert_eq!((s.remote_config.unexpected, s.remote_config.duplicates), (25, 0), "{s}");
    assert!(s.failures(0.0).iter().any(|f| f.contains("do not accept")), "{s}");
}
