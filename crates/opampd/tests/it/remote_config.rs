//! Remote configuration, black box (issue 10): configs put through the admin API reach the
//! agents they select, exactly once per hash, on both stores and across instances; status is
//! tracked per agent and per config; a failing rollout pauses itself; bad input is refused.

use std::time::{Duration, Instant};

use opamp_proto::v1::{
    AgentDescription, AgentToServer, AnyValue, KeyValue, RemoteConfigStatus, RemoteConfigStatuses,
    ServerToAgent, any_value,
};
use opamp_proto::{InstanceUid, agent_caps, server_caps};
use serde_json::{Value, json};

use crate::common::es::{EsInstance, TestIndex, bounded};
use crate::common::{TestServer, client, full, send, uid};

const LIMIT: Duration = Duration::from_secs(120);
const ACCEPTS: u64 = agent_caps::REPORTS_STATUS
    | agent_caps::REPORTS_HEALTH
    | agent_caps::ACCEPTS_REMOTE_CONFIG
    | agent_caps::REPORTS_REMOTE_CONFIG;

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
    }
}

/// A simulated agent that accepts remote config: it sends its full state first, then
/// heartbeats, and reports what it was sent the way an OpAMP client does.
struct Agent {
    uid: InstanceUid,
    seq: u64,
    capabilities: u64,
    service: String,
    status: Option<RemoteConfigStatus>,
    /// Every hash this agent was sent, in order.
    received: Vec<Vec<u8>>,
}

impl Agent {
    fn new(service: &str, capabilities: u64) -> Self {
        Self {
            uid: uid(),
            seq: 0,
            capabilities,
            service: service.into(),
            status: None,
            received: Vec::new(),
        }
    }

    fn message(&mut self) -> AgentToServer {
        self.seq += 1;
        let mut m = full(self.uid, self.seq);
        m.capabilities = self.capabilities;
        if self.seq == 1 {
            m.agent_description = Some(AgentDescription {
                identifying_attributes: vec![kv("service.name", &self.service)],
                non_identifying_attributes: vec![kv("os.type", "linux")],
            });
            // a full report of a ReportsRemoteConfig agent carries its status, UNSET at first
            m.remote_config_status = Some(self.status.clone().unwrap_or_default());
        } else {
            m.agent_description = None;
            m.health = None;
            m.remote_config_status = self.status.take();
        }
        m
    }

    /// One message to `url`; remembers a received config. Returns the reply.
    async fn check_in(&mut self, url: &str) -> ServerToAgent {
        let msg = self.message();
        let reply = send(url, &msg).await;
        assert_eq!(reply.flags & 1, 0, "no full-state request in these tests: {reply:?}");
        if let Some(rc) = &reply.remote_config {
            self.received.push(rc.config_hash.to_vec());
        }
        reply
    }

    /// The next message reports `status` for the last received hash.
    fn report(&mut self, status: RemoteConfigStatuses, error: &str) {
        let hash = self.received.last().expect("a config was received").clone();
        self.status = Some(RemoteConfigStatus {
            last_remote_config_hash: hash.into(),
            status: status as i32,
            error_message: error.into(),
        });
    }
}

async fn admin(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let mut req = client().request(method, &url);
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    let resp = tokio::time::timeout(Duration::from_secs(30), req.send())
        .await
        .expect("admin API answers in time")
        .expect("admin API reachable");
    let status = resp.status().as_u16();
    (status, serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap_or(Value::Null))
}

async fn put_config(admin_url: &str, name: &str, body: Value) -> Value {
    let (status, reply) =
        admin(reqwest::Method::PUT, format!("{admin_url}/api/configs/{name}"), Some(body)).await;
    assert_eq!(status, 200, "PUT config: {reply}");
    reply
}

async fn get_config(admin_url: &str, name: &str) -> Value {
    let (status, reply) =
        admin(reqwest::Method::GET, format!("{admin_url}/api/configs/{name}"), None).await;
    assert_eq!(status, 200, "GET config: {reply}");
    reply
}

fn config_body(body: &str, selector: Value) -> Value {
    json!({
        "selector": selector,
        "files": {"collector.yaml": {"body": body, "content_type": "text/yaml"}},
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `GET /api/configs/{name}` until its agent counts equal `want` (counts on Elasticsearch come
/// from a search, which sees writes after a refresh).
async fn wait_counts(admin_url: &str, name: &str, want: Value) -> Value {
    let started = Instant::now();
    loop {
        let c = get_config(admin_url, name).await;
        if c["agents"] == want {
            return c;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "counts {} != {want}", c["agents"]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The whole life of a config on one server: selection, exactly-once, status tracking, change,
/// delete.
async fn lifecycle(opamp: &str, admin_url: &str) {
    let matching_selector = json!({"service.name": "collector"});
    let put =
        put_config(admin_url, "collectors", config_body("v: 1", matching_selector.clone())).await;
    let hash = put["hash"].as_str().expect("hash").to_owned();
    assert_eq!(hash.len(), 64);
    assert_eq!(put["name"], "collectors");
    assert_eq!(put["selector"], matching_selector);
    assert_eq!(put["files"]["collector.yaml"]["body"], "v: 1");

    let mut ok = Agent::new("collector", ACCEPTS);
    let mut failing = Agent::new("collector", ACCEPTS);
    let mut other = Agent::new("gateway", ACCEPTS);
    let mut deaf = Agent::new("collector", agent_caps::REPORTS_STATUS | agent_caps::REPORTS_HEALTH);

    // the first message (the full state) gets the config; the advertised capability is there
    let reply = ok.check_in(opamp).await;
    assert_ne!(reply.capabilities & server_caps::OFFERS_REMOTE_CONFIG, 0);
    let rc = reply.remote_config.expect("the matching agent gets its config");
    assert_eq!(hex(&rc.config_hash), hash);
    let file = &rc.config.expect("files").config_map["collector.yaml"];
    assert_eq!(&file.body[..], b"v: 1");
    assert_eq!(file.content_type, "text/yaml");
    // heartbeats before the agent reports anything: not sent again
    for _ in 0..3 {
        assert!(ok.check_in(opamp).await.remote_config.is_none(), "sent once");
    }
    ok.report(RemoteConfigStatuses::Applying, "");
    assert!(ok.check_in(opamp).await.remote_config.is_none());
    ok.report(RemoteConfigStatuses::Applied, "");
    assert!(ok.check_in(opamp).await.remote_config.is_none());

    failing.check_in(opamp).await;
    failing.report(RemoteConfigStatuses::Failed, "bad exporter");
    for _ in 0..3 {
        assert!(failing.check_in(opamp).await.remote_config.is_none(), "FAILED: never again");
    }
    for _ in 0..3 {
        assert!(other.check_in(opamp).await.remote_config.is_none(), "selector does not match");
        assert!(deaf.check_in(opamp).await.remote_config.is_none(), "no capability");
    }
    assert_eq!(ok.received.len(), 1);
    assert_eq!(failing.received.len(), 1);

    // per agent: desired next to reported
    let (status, view) =
        admin(reqwest::Method::GET, format!("{admin_url}/api/agents/{}", ok.uid), None).await;
    assert_eq!(status, 200);
    assert_eq!(view["remote_config"]["desired_name"], "collectors");
    assert_eq!(view["remote_config"]["desired_hash"], hash);
    assert_eq!(view["remote_config"]["offered_hash"], hash);
    assert_eq!(view["remote_config"]["reported_hash"], hash);
    assert_eq!(view["remote_config"]["status"], "applied");
    let (_, view) =
        admin(reqwest::Method::GET, format!("{admin_url}/api/agents/{}", failing.uid), None).await;
    assert_eq!(view["remote_config"]["status"], "failed");
    assert_eq!(view["remote_config"]["error_message"], "bad exporter");
    let (_, view) =
        admin(reqwest::Method::GET, format!("{admin_url}/api/agents/{}", deaf.uid), None).await;
    assert_eq!(view["remote_config"]["desired_hash"], Value::Null);

    // per config
    wait_counts(
        admin_url,
        "collectors",
        json!({"matched": 2, "applied": 1, "applying": 0, "failed": 1, "pending": 0}),
    )
    .await;
    let (status, list) =
        admin(reqwest::Method::GET, format!("{admin_url}/api/configs"), None).await;
    assert_eq!(status, 200);
    assert_eq!(list["configs"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["configs"][0]["hash"], hash);

    // the same content again: nothing to send
    let same =
        put_config(admin_url, "collectors", config_body("v: 1", matching_selector.clone())).await;
    assert_eq!(same["hash"], hash);
    assert!(ok.check_in(opamp).await.remote_config.is_none());

    // a change: each matching agent gets the new hash once, the failed one included
    let changed = put_config(admin_url, "collectors", config_body("v: 2", matching_selector)).await;
    let new_hash = changed["hash"].as_str().expect("hash").to_owned();
    assert_ne!(new_hash, hash);
    for agent in [&mut ok, &mut failing] {
        let rc = agent.check_in(opamp).await.remote_config.expect("the new hash is sent");
        assert_eq!(hex(&rc.config_hash), new_hash);
        assert!(agent.check_in(opamp).await.remote_config.is_none(), "once");
    }
    wait_counts(
        admin_url,
        "collectors",
        json!({"matched": 2, "applied": 0, "applying": 0, "failed": 0, "pending": 2}),
    )
    .await;

    // delete: nothing more is sent, the agents no longer desire it
    let (status, _) =
        admin(reqwest::Method::DELETE, format!("{admin_url}/api/configs/collectors"), None).await;
    assert_eq!(status, 200);
    let (status, _) =
        admin(reqwest::Method::GET, format!("{admin_url}/api/configs/collectors"), None).await;
    assert_eq!(status, 404);
    assert!(ok.check_in(opamp).await.remote_config.is_none());
    let (_, view) =
        admin(reqwest::Method::GET, format!("{admin_url}/api/agents/{}", ok.uid), None).await;
    assert_eq!(view["remote_config"]["desired_hash"], Value::Null);
    assert_eq!(ok.received.len(), 2);
    assert_eq!(failing.received.len(), 2);
    assert_eq!(other.received.len() + deaf.received.len(), 0);
}

/// Runs `scenario(opamp_url, admin_url)` against a server on the embedded store.
async fn on_embedded<F: std::future::Future<Output = ()>>(
    scenario: impl FnOnce(String, String) -> F,
) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    bounded(LIMIT, scenario(server.opamp_url.clone(), server.admin_url.clone())).await;
    server.stop().await.expect("clean shutdown");
}

/// Runs `scenario(opamp_url, admin_url)` against a server on a fresh Elasticsearch index
/// (nothing when the Elasticsearch tests are skipped).
async fn on_elasticsearch<F: std::future::Future<Output = ()>>(
    scenario: impl FnOnce(String, String) -> F,
) {
    let Some(index) = TestIndex::new() else { return };
    let server = EsInstance::start(index.config(&index.es)).await;
    server.wait_ready(Duration::from_secs(30)).await;
    bounded(LIMIT, scenario(server.opamp_url.clone(), server.admin_url.clone())).await;
    server.stop().await.expect("clean shutdown");
}

/// Two ready instances on one fresh index.
async fn two_instances() -> Option<(TestIndex, EsInstance, EsInstance)> {
    let index = TestIndex::new()?;
    let a = EsInstance::start(index.config(&index.es)).await;
    let b = EsInstance::start(index.config(&index.es)).await;
    a.wait_ready(Duration::from_secs(30)).await;
    b.wait_ready(Duration::from_secs(30)).await;
    Some((index, a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_on_the_embedded_store() {
    on_embedded(|opamp, admin| async move { lifecycle(&opamp, &admin).await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_on_elasticsearch() {
    on_elasticsearch(|opamp, admin| async move { lifecycle(&opamp, &admin).await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_instance_reaches_agents_of_the_other_once() {
    let Some((_index, a, b)) = two_instances().await else { return };
    bounded(LIMIT, async {
        let mut agents: Vec<Agent> = (0..6).map(|_| Agent::new("collector", ACCEPTS)).collect();
        for agent in &mut agents {
            agent.check_in(&b.opamp_url).await;
        }
        let put = put_config(&a.admin_url, "everyone", config_body("x: 1", json!({}))).await;
        let hash = put["hash"].as_str().expect("hash").to_owned();
        let started = Instant::now();
        // b has not been told: it learns within its refresh interval (default 2 s)
        let mut first = None;
        while first.is_none() {
            assert!(started.elapsed() < Duration::from_secs(5), "not seen on b within 5 s");
            if agents[0].check_in(&b.opamp_url).await.remote_config.is_some() {
                first = Some(started.elapsed());
            } else {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // every agent, its messages alternating between the instances, gets it exactly once
        for round in 0..6 {
            for agent in &mut agents {
                let url = if round % 2 == 0 { &a.opamp_url } else { &b.opamp_url };
                agent.check_in(url).await;
            }
        }
        for agent in &agents {
            assert_eq!(agent.received.len(), 1, "exactly once per hash: {:?}", agent.received);
            assert_eq!(hex(&agent.received[0]), hash);
        }
        eprintln!("seen on the other instance after {first:?}");
    })
    .await;
    a.stop().await.expect("clean shutdown");
    b.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_instances_send_a_config_to_an_agent_once() {
    let Some((_index, a, b)) = two_instances().await else { return };
    bounded(LIMIT, async {
        let mut agent = Agent::new("collector", ACCEPTS);
        agent.check_in(&a.opamp_url).await;
        put_config(&a.admin_url, "race", config_body("r: 1", json!({}))).await;
        b.configs_refreshed().await;
        // the same next message to both instances at once, several times: one write wins each
        // time, and only a winner may carry the config
        let mut carried = 0;
        for _ in 0..5 {
            let msg = agent.message();
            let (ra, rb) = tokio::join!(
                crate::common::es::post(&a.opamp_url, &msg, Duration::from_secs(10)),
                crate::common::es::post(&b.opamp_url, &msg, Duration::from_secs(10)),
            );
            for r in [ra, rb] {
                let r = r.expect("answered");
                if r.reply.is_some_and(|r| r.remote_config.is_some()) {
                    carried += 1;
                }
            }
        }
        assert_eq!(carried, 1, "one reply in all carried the config");
    })
    .await;
    a.stop().await.expect("clean shutdown");
    b.stop().await.expect("clean shutdown");
}

impl EsInstance {
    /// Waits one refresh interval of this instance (the default 2 s, and a margin).
    async fn configs_refreshed(&self) {
        tokio::time::sleep(Duration::from_millis(2_500)).await;
    }
}

/// Rollout pacing and pause, on one server.
async fn rollout(opamp: &str, admin_url: &str) {
    let body = json!({
        "selector": {},
        "files": {"c.yaml": {"body": "paced", "content_type": "text/yaml"}},
        "rollout": {"max_agents_per_minute": 4, "pause_on_failures": 2},
    });
    let put = put_config(admin_url, "paced", body).await;
    assert_eq!(put["rollout"]["max_agents_per_minute"], 4);
    let mut agents: Vec<Agent> = (0..12).map(|_| Agent::new("collector", ACCEPTS)).collect();
    // several rounds of check-ins over a few seconds: at most 4 agents get it in the minute
    for _ in 0..6 {
        for agent in &mut agents {
            agent.check_in(opamp).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let sent: Vec<usize> =
        agents.iter().enumerate().filter(|(_, a)| !a.received.is_empty()).map(|(i, _)| i).collect();
    // each round's misses make the instance claim a slot (4 a minute / 12 = 1 per claim)
    assert!(sent.len() >= 2, "the rollout makes progress: {} sent", sent.len());
    assert!(sent.len() <= 4, "at most 4 agents a minute, got {}", sent.len());
    let counts = get_config(admin_url, "paced").await;
    assert_eq!(counts["rollout_state"]["paused"], false);

    // two of them fail: the rollout pauses itself
    for &i in sent.iter().take(2) {
        agents[i].report(RemoteConfigStatuses::Failed, "nope");
        agents[i].check_in(opamp).await;
    }
    let started = Instant::now();
    loop {
        let c = get_config(admin_url, "paced").await;
        if c["rollout_state"]["paused"] == true {
            assert_eq!(c["rollout_state"]["failures"], 2);
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "not paused: {c}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before: usize = agents.iter().map(|a| a.received.len()).sum();
    for agent in &mut agents {
        agent.check_in(opamp).await;
    }
    let after: usize = agents.iter().map(|a| a.received.len()).sum();
    assert_eq!(before, after, "a paused rollout sends nothing");

    let (status, resumed) =
        admin(reqwest::Method::POST, format!("{admin_url}/api/configs/paced/resume"), None).await;
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["rollout_state"]["paused"], false);
    assert_eq!(resumed["rollout_state"]["failures"], 0);
    // the minute's slots are used up: raise the limit (same files, so the rollout's state,
    // its claims included, is kept) and the remaining agents get it at once
    let faster = json!({
        "selector": {},
        "files": {"c.yaml": {"body": "paced", "content_type": "text/yaml"}},
        "rollout": {"max_agents_per_minute": 1000, "pause_on_failures": 2},
    });
    let kept = put_config(admin_url, "paced", faster).await;
    assert_eq!(kept["hash"], put["hash"]);
    assert_eq!(kept["rollout_state"]["paused"], false);
    let started = Instant::now();
    loop {
        for agent in &mut agents {
            agent.check_in(opamp).await;
        }
        let now: usize = agents.iter().map(|a| a.received.len()).sum();
        if now > after {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the resumed rollout sends again");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for agent in &agents {
        assert!(agent.received.len() <= 1, "once per hash");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_pacing_and_pause_on_the_embedded_store() {
    on_embedded(|opamp, admin| async move { rollout(&opamp, &admin).await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_pacing_and_pause_on_elasticsearch() {
    on_elasticsearch(|opamp, admin| async move { rollout(&opamp, &admin).await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configs_get_400_with_a_reason_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let base = format!("{}/api/configs", server.admin_url);
    let raw = |name: &str, body: &'static str| {
        let url = format!("{base}/{name}");
        async move {
            let resp = client()
                .put(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("admin API reachable");
            let status = resp.status().as_u16();
            (
                status,
                serde_json::from_slice::<Value>(&resp.bytes().await.unwrap())
                    .unwrap_or(Value::Null),
            )
        }
    };
    let cases: [(&str, &'static str, &str); 6] = [
        ("ok", "{not json", "bad config JSON"),
        ("ok", r#"{"files": {}, "selectors": {}}"#, "unknown field"),
        ("ok", r#"{"selector": {}}"#, "missing field `files`"),
        ("ok", r#"{"files": {"a": {"body": 1}}}"#, "bad config JSON"),
        ("bad%20name", r#"{"files": {}}"#, "config name has ' '"),
        ("ok", r#"{"files": {}, "rollout": {"max_agents_per_minute": 0}}"#, "at least 1"),
    ];
    for (name, body, reason) in cases {
        let (status, reply) = raw(name, body).await;
        assert_eq!(status, 400, "{name} {body}: {reply}");
        let error = reply["error"].as_str().unwrap_or_default();
        assert!(error.contains(reason), "{body}: {error:?} should say {reason:?}");
    }
    // oversized: one body far over the limit
    let huge = json!({"files": {"a": {"body": "x".repeat(3 << 20)}}});
    let (status, reply) = admin(reqwest::Method::PUT, format!("{base}/ok"), Some(huge)).await;
    assert_eq!(status, 400, "{reply}");
    assert!(reply["error"].as_str().unwrap_or_default().contains("body over"), "{reply}");
    // just over the files' own bound (the body limit lets it through): the config refuses it
    let big = json!({"files": {"a": {"body": "x".repeat(300 * 1024)}}});
    let (status, reply) = admin(reqwest::Method::PUT, format!("{base}/ok"), Some(big)).await;
    assert_eq!(status, 400, "{reply}");
    assert!(reply["error"].as_str().unwrap_or_default().contains("total"), "{reply}");
    // nothing was stored
    let (status, list) = admin(reqwest::Method::GET, base.clone(), None).await;
    assert_eq!(status, 200);
    assert_eq!(list["configs"], json!([]));
    let (status, _) = admin(reqwest::Method::POST, format!("{base}/nope/resume"), None).await;
    assert_eq!(status, 404);
    let (status, _) = admin(reqwest::Method::DELETE, format!("{base}/nope"), None).await;
    assert_eq!(status, 404);
    server.stop().await.expect("clean shutdown");
}
