//! Agent authentication (`--auth elasticsearch`) against a real Elasticsearch with security on
//! (the secured test node): opampd talks to it with a service token of `elastic/fleet-server`,
//! as fleet-server does, and agents present enrollment API keys. Refusals are 401 with nothing
//! written, a WebSocket is refused before the upgrade, an outage is 503 (never 401), a key of
//! another policy is 403 for a known agent, and no key or token reaches a reply or a log line.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use opamp_core::AgentRecord;
use opamp_proto::v1::{AgentToServer, ServerToAgent};
use opamp_proto::{InstanceUid, Message as _, framing};
use opamp_store::Secret;
use opamp_store::cache::CacheConfig;
use opamp_store::elasticsearch::enrollment::AuthCacheConfig;
use opamp_store::elasticsearch::{DEFAULT_FLEET_STATE_INDEX, document};
use opamp_store::secured_cluster::{SecuredCluster, TestKey};
use opampd::config::{AuthConfig, Config, StoreConfig};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use url::Url;

use crate::common::es::EsInstance;
use crate::common::forwarder::{Forwarder, Mode};
use crate::common::{PROTOBUF, client, full, poll, uid};

/// The index Kibana Fleet reads, as fleet-server writes it (with the service token); every test
/// uses fresh uids.
const INDEX: &str = ".fleet-agents";
/// Bound of each test.
const LIMIT: Duration = Duration::from_secs(90);
/// Bound of each request.
const ANSWER: Duration = Duration::from_secs(20);

/// opampd on the secured cluster (reached at `es`: the cluster or a forwarder in front of
/// it) with its service token and agent authentication, every other setting at its default.
fn config(cluster: &SecuredCluster, es: &Url, ttl: Duration) -> Config {
    let mut config = Config::embedded("unused-by-the-elasticsearch-store");
    let mut settings = cluster.es_config(INDEX);
    settings.url = es.clone();
    config.store =
        StoreConfig::Elasticsearch { es: Box::new(settings), cache: CacheConfig::DEFAULT };
    config.auth =
        AuthConfig::Elasticsearch { cache: AuthCacheConfig { ttl, ..AuthCacheConfig::DEFAULT } };
    config
}

fn api_key(key: &TestKey) -> String {
    format!("ApiKey {}", key.encoded.expose())
}

/// What an agent saw for one POST.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    www_authenticate: Option<String>,
    body: Bytes,
}

impl Answer {
    fn reply(&self) -> ServerToAgent {
        assert_eq!(self.status, 200, "{self:?}");
        let reply = ServerToAgent::decode(&self.body[..]).expect("reply decodes");
        assert!(reply.error_response.is_none(), "{:?}", reply.error_response);
        reply
    }
}

async fn post(url: &str, authorization: Option<&str>, msg: &AgentToServer) -> Answer {
    let mut request = client().post(url).header("content-type", PROTOBUF).body(msg.encode_to_vec());
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let resp = tokio::time::timeout(ANSWER, request.send())
        .await
        .expect("opampd answers in time")
        .expect("request sent");
    let header = |name: &str| resp.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    let (retry_after, www_authenticate) = (header("retry-after"), header("www-authenticate"));
    let status = resp.status().as_u16();
    let body = resp.bytes().await.expect("body");
    Answer { status, retry_after, www_authenticate, body }
}

/// The agent's document as fleet-server's service account reads it (realtime), once it is
/// there: opampd writes it just after answering the agent. `None` after a few seconds.
async fn agent_doc(cluster: &SecuredCluster, uid: InstanceUid) -> Option<Value> {
    for _ in 0..50 {
        if let Some(doc) = cluster.doc(INDEX, &uid.to_string()).await {
            return Some(doc);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The agent's state record (written before the agent is answered), read as fleet-server's
/// service account reads it.
async fn agent_state(cluster: &SecuredCluster, uid: InstanceUid) -> Option<AgentRecord> {
    let doc = cluster.doc(DEFAULT_FLEET_STATE_INDEX, &uid.to_string()).await?;
    Some(document::from_source(&doc["_source"], uid).expect("a state record opampd can read"))
}

fn ws_url(instance: &EsInstance) -> String {
    instance.opamp_url.replacen("http://", "ws://", 1)
}

/// Upgrades with `authorization`: the socket, or the HTTP status of the refusal.
async fn upgrade(
    instance: &EsInstance,
    authorization: Option<&str>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    u16,
> {
    let mut request = ws_url(instance).into_client_request().unwrap();
    if let Some(value) = authorization {
        request.headers_mut().insert("authorization", value.parse().unwrap());
    }
    match tokio::time::timeout(ANSWER, tokio_tungstenite::connect_async(request))
        .await
        .expect("opampd answers the upgrade in time")
    {
        Ok((ws, resp)) => {
            assert_eq!(resp.status(), 101);
            Ok(ws)
        }
        Err(tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(other) => panic!("upgrade failed: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_usable_enrollment_key_agents_get_401_and_nothing_is_written() {
    let Some(cluster) = SecuredCluster::connect().await else { return };
    cluster
        .run(LIMIT, async |cluster| {
            let plain = cluster.api_key("opampd-test-not-enrollment").await;
            let inactive = cluster.api_key("opampd-test-inactive").await;
            cluster.put_enrollment(&inactive, json!({ "active": false, "policy_id": "p" })).await;
            let expired = cluster.api_key("opampd-test-expired").await;
            let past =
                json!({ "active": true, "policy_id": "p", "expire_at": "2021-06-01T00:00:00Z" });
            cluster.put_enrollment(&expired, past).await;
            let enrolled = cluster.api_key("opampd-test-enrolled").await;
            cluster.enroll(&enrolled, "policy-401", &[]).await;
            let wrong_secret = {
                use base64::Engine;
                let raw = format!("{}:not-the-secret", enrolled.id);
                format!("ApiKey {}", base64::engine::general_purpose::STANDARD.encode(raw))
            };
            let server =
                EsInstance::start(config(cluster, &cluster.url, Duration::from_secs(60))).await;

            let cases: Vec<(&str, Option<String>)> = vec![
                ("no header", None),
                ("garbage", Some("garbage".into())),
                ("wrong scheme", Some(format!("Bearer {}", enrolled.encoded.expose()))),
                ("basic", Some(format!("Basic {}", enrolled.encoded.expose()))),
                ("not base64", Some("ApiKey %%%".into())),
                ("valid api key, not an enrollment key", Some(api_key(&plain))),
                ("inactive enrollment key", Some(api_key(&inactive))),
                ("expired enrollment key", Some(api_key(&expired))),
                ("enrollment key id with a wrong secret", Some(wrong_secret)),
            ];
            for (case, authorization) in cases {
                let agent = uid();
                let answer =
                    post(&server.opamp_url, authorization.as_deref(), &full(agent, 0)).await;
                assert_eq!(answer.status, 401, "{case}: {answer:?}");
                assert_eq!(answer.www_authenticate.as_deref(), Some("ApiKey"), "{case}");
                let body = String::from_utf8_lossy(&answer.body);
                for secret in [&plain, &inactive, &expired, &enrolled] {
                    assert!(!body.contains(secret.key.expose()), "{case}: key in body {body}");
                    assert!(!body.contains(secret.encoded.expose()), "{case}: key in body {body}");
                }
                assert_eq!(agent_state(cluster, agent).await, None, "{case}: nothing written");
            }

            // the same server accepts the enrollment key itself
            let agent = uid();
            post(&server.opamp_url, Some(&api_key(&enrolled)), &full(agent, 0)).await.reply();
            assert!(agent_state(cluster, agent).await.is_some());
            server.stop().await.expect("clean stop");
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrollment_key_binds_its_policy_and_namespaces() {
    let Some(cluster) = SecuredCluster::connect().await else { return };
    cluster
        .run(LIMIT, async |cluster| {
            let key = cluster.api_key("opampd-test-binds").await;
            cluster.enroll(&key, "policy-bound", &["default", "team-a"]).await;
            let server =
                EsInstance::start(config(cluster, &cluster.url, Duration::from_secs(60))).await;
            let agent = uid();
            let auth = api_key(&key);
            post(&server.opamp_url, Some(&auth), &full(agent, 0)).await.reply();
            post(&server.opamp_url, Some(&auth), &poll(agent, 1)).await.reply();
            let doc = agent_doc(cluster, agent).await.expect("agent written");
            let source = &doc["_source"];
            assert_eq!(source["policy_id"], "policy-bound", "{source}");
            assert_eq!(source["namespaces"], json!(["default", "team-a"]), "{source}");
            let state = agent_state(cluster, agent).await.expect("state written");
            assert_eq!(state.sequence_num, 1);
            let text = doc.to_string();
            assert!(!text.contains(key.key.expose()) && !text.contains(key.encoded.expose()));
            server.stop().await.expect("clean stop");
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_agent_presenting_another_policys_key_is_forbidden() {
    let Some(cluster) = SecuredCluster::connect().await else { return };
    cluster
        .run(LIMIT, async |cluster| {
            let first = cluster.api_key("opampd-test-policy-a").await;
            cluster.enroll(&first, "policy-a", &["default"]).await;
            let other = cluster.api_key("opampd-test-policy-b").await;
            cluster.enroll(&other, "policy-b", &["default"]).await;
            let server =
                EsInstance::start(config(cluster, &cluster.url, Duration::from_secs(60))).await;
            let agent = uid();
            post(&server.opamp_url, Some(&api_key(&first)), &full(agent, 0)).await.reply();

            let answer = post(&server.opamp_url, Some(&api_key(&other)), &poll(agent, 1)).await;
            assert_eq!(answer.status, 403, "{answer:?}");
            let doc = agent_doc(cluster, agent).await.expect("agent written");
            assert_eq!(doc["_source"]["policy_id"], "policy-a");
            let state = agent_state(cluster, agent).await.expect("state written");
            assert_eq!(state.sequence_num, 0, "the refused message is not applied");
            // its own key still works
            post(&server.opamp_url, Some(&api_key(&first)), &poll(agent, 1)).await.reply();
            server.stop().await.expect("clean stop");
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_or_deactivated_keys_are_refused_once_the_ttl_passes() {
    let Some(cluster) = SecuredCluster::connect().await else { return };
    cluster
        .run(LIMIT, async |cluster| {
            let ttl = Duration::from_secs(1);
            let revoked = cluster.api_key("opampd-test-revoked").await;
            cluster.enroll(&revoked, "p", &[]).await;
            let deactivated = cluster.api_key("opampd-test-deactivated").await;
            cluster.enroll(&deactivated, "p", &[]).await;
            let server = EsInstance::start(config(cluster, &cluster.url, ttl)).await;
            let (a, b) = (uid(), uid());
            post(&server.opamp_url, Some(&api_key(&revoked)), &full(a, 0)).await.reply();
            post(&server.opamp_url, Some(&api_key(&deactivated)), &full(b, 0)).await.reply();

            cluster.invalidate(&revoked).await;
            cluster.update_enrollment(&deactivated, json!({ "active": false })).await;
            tokio::time::sleep(ttl + Duration::from_millis(300)).await;
            let answer = post(&server.opamp_url, Some(&api_key(&revoked)), &poll(a, 1)).await;
            assert_eq!(answer.status, 401, "revoked: {answer:?}");
            let answer = post(&server.opamp_url, Some(&api_key(&deactivated)), &poll(b, 1)).await;
            assert_eq!(answer.status, 401, "deactivated: {answer:?}");
            for agent in [a, b] {
                let state = agent_state(cluster, agent).await.expect("written before");
                assert_eq!(state.sequence_num, 0, "nothing written after the refusal");
            }
            server.stop().await.expect("clean stop");
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_without_a_valid_key_is_refused_before_the_upgrade() {
    let Some(cluster) = SecuredCluster::connect().await else { return };
    cluster
        .run(LIMIT, async |cluster| {
            let key = cluster.api_key("opampd-test-ws").await;
            cluster.enroll(&key, "policy-ws", &["ws"]).await;
            let plain = cluster.api_key("opampd-test-ws-plain").await;
            let server =
                EsInstance::start(config(cluster, &cluster.url, Duration::from_secs(60))).await;
            for authorization in [None, Some("garbage".to_owned()), Some(api_key(&plain))] {
                let refused = upgrade(&server, authorization.as_deref()).await;
                assert_eq!(refused.err(), Some(401), "{authorization:?}");
            }

            let mut ws = upgrade(&server, Some(&api_key(&key))).await.expect("upgraded with a key");
            let agent = uid();
            let frame = framing::encode(&full(agent, 0).encode_to_vec());
            ws.send(Message::Binary(frame.to_vec().into())).await.expect("sent");
            let reply = loop {
                match tokio::time::timeout(ANSWER, ws.next()).await.expect("reply in time") {
                    Some(Ok(Message::Binary(data))) => break data,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => panic!("expected a reply, got {other:?}"),
                }
            };
            let reply = ServerToAgent::decode(&reply[1..]).expect("reply decodes");
            assert!(reply.error_response.is_none(), "{:?}", reply.error_response);
            let doc = agent_doc(cluster, agent).await.expect("agent written over the websocket");
            assert_eq!(doc["_source"]["policy_id"], "policy-ws");
            let _ = ws.close(None).await;
            server.stop().await.expect("clean stop");
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_down_is_503_with_retry_after_never_401() {
    let Some(cluster) = SecuredCluster::connect().await else { return };
    cluster
        .run(LIMIT, async |cluster| {
            let key = cluster.api_key("opampd-test-outage").await;
            cluster.enroll(&key, "policy-outage", &[]).await;
            let forwarder = Forwarder::start(&cluster.url).await;
            let mut settings = config(cluster, &forwarder.url(), Duration::from_secs(60));
            if let StoreConfig::Elasticsearch { es, .. } = &mut settings.store {
                es.request_timeout = Duration::from_secs(2);
            }
            let server = EsInstance::start(settings).await;
            let agent = uid();

            forwarder.set(Mode::Refuse);
            let answer = post(&server.opamp_url, Some(&api_key(&key)), &full(agent, 0)).await;
            assert_eq!(answer.status, 503, "refused connections: {answer:?}");
            assert_eq!(answer.retry_after.as_deref(), Some("30"));

            forwarder.set(Mode::Stall);
            let started = Instant::now();
            let answer = post(&server.opamp_url, Some(&api_key(&key)), &full(agent, 0)).await;
            assert_eq!(answer.status, 503, "stalled cluster: {answer:?}");
            assert_eq!(answer.retry_after.as_deref(), Some("30"));
            assert!(started.elapsed() < Duration::from_secs(10), "bounded by the request timeout");
            assert_eq!(agent_state(cluster, agent).await, None);

            // the outage was not cached: the key works as soon as the cluster is back
            forwarder.set(Mode::Forward);
            post(&server.opamp_url, Some(&api_key(&key)), &full(agent, 0)).await.reply();
            assert!(agent_state(cluster, agent).await.is_some());
            server.stop().await.expect("clean stop");
        })
        .await;
}

/// The real binary, logging at debug level: neither the agents' keys nor opampd's service
/// token appear in any log line or reply, whether the request is refused or accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_or_token_reaches_a_reply_or_a_log_line() {
    let Some(cluster) = SecuredCluster::connect().await else { return };
    cluster
        .run(LIMIT, async |cluster| {
            let plain = cluster.api_key("opampd-test-leak-plain").await;
            let enrolled = cluster.api_key("opampd-test-leak-enrolled").await;
            cluster.enroll(&enrolled, "policy-leak", &[]).await;
            let dir = tempfile::tempdir().unwrap();
            let token_file = dir.path().join("token");
            std::fs::write(&token_file, cluster.service_token().expose()).unwrap();
            let mut child = Running(
                Command::new(env!("CARGO_BIN_EXE_opampd"))
                    .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
                    .args(["--store", "elasticsearch", "--es-url", cluster.url.as_str()])
                    .args(["--es-index", INDEX, "--auth-cache-ttl", "1s", "--log-format", "json"])
                    .env("OPAMPD_ES_SERVICE_TOKEN_FILE", &token_file)
                    .env("RUST_LOG", "debug")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("opampd starts"),
            );
            let (lines_tx, lines) = mpsc::channel::<String>();
            for stream in [
                Box::new(child.0.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
                Box::new(child.0.stderr.take().unwrap()),
            ] {
                let tx = lines_tx.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(stream).lines().map_while(Result::ok) {
                        let _ = tx.send(line);
                    }
                });
            }
            let mut log = Vec::new();
            let listen = loop {
                let line = lines.recv_timeout(Duration::from_secs(30)).expect("opampd comes up");
                let event: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                let addr = (event["message"] == "opampd serving")
                    .then(|| event["listen"].as_str().map(str::to_owned))
                    .flatten();
                log.push(line);
                if let Some(addr) = addr {
                    break addr;
                }
            };
            let url = format!("http://{listen}/v1/opamp");
            let secrets: Vec<Secret> = vec![
                cluster.service_token().clone(),
                plain.key.clone(),
                plain.encoded.clone(),
                enrolled.key.clone(),
                enrolled.encoded.clone(),
            ];

            let mut bodies = Vec::new();
            for (authorization, status) in [
                (format!("ApiKey {}", plain.encoded.expose()), 401),
                (format!("Bearer {}", enrolled.encoded.expose()), 401),
                (format!("ApiKey {}", enrolled.key.expose()), 401),
                (format!("ApiKey {}", enrolled.encoded.expose()), 200),
            ] {
                let answer = post(&url, Some(&authorization), &full(uid(), 0)).await;
                assert_eq!(answer.status, status, "{answer:?}");
                bodies.push(answer.body);
            }
            let _ = Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.0.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "opampd stops in time");
                std::thread::sleep(Duration::from_millis(50));
            }
            log.extend(lines.try_iter());

            let log = log.join("\n");
            assert!(log.contains("agent refused"), "refusals are logged:\n{log}");
            assert!(log.contains(&plain.id), "the key id may be logged:\n{log}");
            for secret in &secrets {
                assert!(!log.contains(secret.expose()), "a secret in the log:\n{log}");
                for body in &bodies {
                    let body = String::from_utf8_lossy(body);
                    assert!(!body.contains(secret.expose()), "a secret in a reply: {body}");
                }
            }
        })
        .await;
}

/// A child process killed when the test ends, also when it fails.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
