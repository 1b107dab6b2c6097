//! Elasticsearch helpers for the black-box tests that run opampd on a real cluster: the test
//! cluster's URL (or a loud skip), a unique index deleted afterwards, opampd instances that each
//! open their own store and cache exactly as `--store elasticsearch` does, raw requests that
//! bypass opampd, and a non-asserting OpAMP POST for failure cases.

use std::future::Future;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opamp_proto::v1::{AgentToServer, ServerToAgent};
use opamp_proto::{InstanceUid, Message, server_flags};
use opamp_store::cache::{CacheConfig, CacheStats, CachedStore};
use opamp_store::elasticsearch::{ElasticsearchStore, EsConfig, EsStats};
use opampd::config::{Config, StoreConfig};
use opampd::store::Store;
use opampd::{Listeners, RunError};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use url::Url;

use crate::common::{PROTOBUF, client};

pub use opamp_store::conformance::test_es_url as es_url;

/// Runs `test` under a hard deadline so a hang fails the test instead of the CI job.
pub async fn bounded<F: Future>(limit: Duration, test: F) -> F::Output {
    tokio::time::timeout(limit, test).await.unwrap_or_else(|_| panic!("test exceeded {limit:?}"))
}

/// A fresh `opampd-test-<uuid>` index on the test cluster, deleted when dropped (also when the
/// test panics). Declare it before the servers so it outlives them.
#[derive(Debug)]
pub struct TestIndex {
    /// Where the cluster really is (tests read documents here, bypassing any forwarder).
    pub es: Url,
    pub name: String,
    /// False for an index other tests share (`.fleet-agents`): tests there use unique uids.
    delete_on_drop: bool,
}

impl TestIndex {
    /// `None` when the Elasticsearch tests are skipped.
    pub fn new() -> Option<Self> {
        Some(Self {
            es: es_url()?,
            name: format!("opampd-test-{}", InstanceUid::new_v7()),
            delete_on_drop: true,
        })
    }

    /// The `.fleet-agents` system index Kibana reads, shared by every test that uses it and
    /// never deleted.
    pub fn fleet_agents() -> Option<Self> {
        Some(Self { es: es_url()?, name: ".fleet-agents".into(), delete_on_drop: false })
    }

    /// opampd's configuration for `--store elasticsearch` on this index at `es` (the cluster
    /// itself, or a forwarder in front of it); every other setting is the command line default.
    pub fn config(&self, es: &Url) -> Config {
        let mut config = Config::embedded("unused-by-the-elasticsearch-store");
        let mut settings = EsConfig::new(es.clone());
        settings.index.clone_from(&self.name);
        config.store =
            StoreConfig::Elasticsearch { es: Box::new(settings), cache: CacheConfig::DEFAULT };
        config
    }

    /// The document of `uid` as Elasticsearch has it (realtime GET, not through opampd), or
    /// `None` when there is none.
    pub async fn doc(&self, uid: InstanceUid) -> Option<Value> {
        let url = format!("{}{}/_doc/{uid}", self.es, self.name);
        let resp = tokio::time::timeout(Duration::from_secs(10), client().get(&url).send())
            .await
            .expect("elasticsearch answers a GET in time")
            .expect("GET the document");
        let status = resp.status().as_u16();
        let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        match status {
            200 => {
                assert_eq!(body["found"], true, "{body}");
                Some(body)
            }
            404 => None,
            other => panic!("GET {url}: {other} {body}"),
        }
    }

    /// The agent document of `uid` once it shows `sequence_num` `seq` or later: opampd writes
    /// it just after answering the message that published it. Panics after a few seconds.
    pub async fn published(&self, uid: InstanceUid, seq: u64) -> Value {
        let mut last = None;
        for _ in 0..50 {
            last = self.doc(uid).await;
            if let Some(doc) = &last
                && doc["_source"]["sequence_num"].as_u64().is_some_and(|s| s >= seq)
            {
                return doc.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the agent document of {uid} never showed sequence_num {seq}: {last:?}");
    }

    /// The stored `sequence_num` of `uid` straight from Elasticsearch (its state record).
    pub async fn stored_seq(&self, uid: InstanceUid) -> Option<u64> {
        Some(self.state(uid).await?.sequence_num)
    }

    /// The state record of `uid` straight from Elasticsearch (realtime GET of the state index,
    /// decoded), or `None` when there is none. The agent document (see [`doc`](Self::doc))
    /// shows it as of its last publication.
    pub async fn state(&self, uid: InstanceUid) -> Option<opamp_core::AgentRecord> {
        let index =
            EsConfig { index: self.name.clone(), ..EsConfig::new(self.es.clone()) }.state_index();
        let url = format!("{}{index}/_doc/{uid}", self.es);
        let resp = tokio::time::timeout(Duration::from_secs(10), client().get(&url).send())
            .await
            .expect("elasticsearch answers a GET in time")
            .expect("GET the state record");
        let status = resp.status().as_u16();
        let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        match status {
            200 => Some(
                opamp_store::elasticsearch::document::from_source(&body["_source"], uid)
                    .expect("a state record opampd can read"),
            ),
            404 => None,
            other => panic!("GET {url}: {other} {body}"),
        }
    }

    /// Runs a `_search` on the index after a refresh (what Kibana Fleet does; never opampd).
    pub async fn search(&self, query: Value) -> Value {
        let refresh = format!("{}{}/_refresh", self.es, self.name);
        let resp = client().post(&refresh).send().await.expect("refresh");
        assert!(resp.status().is_success(), "refresh: {}", resp.status());
        let url = format!("{}{}/_search", self.es, self.name);
        let resp = client()
            .post(&url)
            .header("content-type", "application/json")
            .body(query.to_string())
            .send()
            .await
            .expect("search");
        assert!(resp.status().is_success(), "search: {}", resp.status());
        serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap()
    }
}

impl Drop for TestIndex {
    fn drop(&mut self) {
        if !self.delete_on_drop {
            return;
        }
        // the agent index and the config and state indices opampd derives from its name
        for index in [
            self.name.clone(),
            format!("{}-opampd-configs", self.name),
            format!("{}-opampd-state", self.name),
        ] {
            delete_index(&self.es, &index);
        }
    }
}

/// Deletes `index` with plain blocking HTTP, so it also runs while a failed test unwinds (no
/// runtime needed). A missing index is fine.
fn delete_index(es: &Url, index: &str) {
    let host = es.host_str().unwrap_or("127.0.0.1").to_owned();
    let port = es.port_or_known_default().unwrap_or(9200);
    let deleted = (|| -> std::io::Result<String> {
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "DELETE /{index} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer.lines().next().unwrap_or_default().to_owned())
    })();
    match deleted {
        // 404: the test never got as far as creating it
        Ok(line) if line.contains(" 200 ") || line.contains(" 404 ") => {}
        Ok(line) => eprintln!("deleting test index {index}: {line}"),
        Err(e) => eprintln!("deleting test index {index}: {e}"),
    }
}

/// One opampd instance over Elasticsearch: its own `ElasticsearchStore` and moka cache, built by
/// `Store::open` exactly as the binary does, served on 127.0.0.1:0.
#[derive(Debug)]
pub struct EsInstance {
    pub opamp_url: String,
    pub admin_url: String,
    pub store: Arc<CachedStore<ElasticsearchStore>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), RunError>>>,
}

impl EsInstance {
    pub async fn start(config: Config) -> Self {
        let store = Store::open(&config).await.expect("store opens");
        let Store::Elasticsearch(cached) = &store else { panic!("not an elasticsearch config") };
        let cached = cached.clone();
        let listeners = Listeners {
            opamp: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let opamp_addr = listeners.opamp.local_addr().unwrap();
        let admin_addr = listeners.admin.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = opampd::run(&config, store.shared(), listeners, async {
                let _ = stopped.await;
            })
            .await;
            // a failed close is a failed stop too (tests restore Elasticsearch before stopping)
            let closed = store.close().await;
            served.and(closed.map_err(RunError::Flush))
        });
        Self {
            opamp_url: format!("http://{opamp_addr}/v1/opamp"),
            admin_url: format!("http://{admin_addr}"),
            store: cached,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// This instance's Elasticsearch request counters (409s included).
    pub fn es_stats(&self) -> EsStats {
        self.store.inner().stats()
    }

    /// This instance's cache hits and misses.
    pub fn cache_stats(&self) -> CacheStats {
        self.store.stats()
    }

    /// `sequence_num` as this instance's admin API reports it (a read through its cache).
    pub async fn api_seq(&self, uid: InstanceUid) -> u64 {
        let (status, body) = self.api_agent(uid).await;
        assert_eq!(status, 200, "GET /api/agents/{uid}: {body}");
        body["sequence_num"].as_u64().expect("sequence_num")
    }

    /// Status and JSON body of `GET /api/agents/{uid}` on the admin listener.
    pub async fn api_agent(&self, uid: InstanceUid) -> (u16, Value) {
        let url = format!("{}/api/agents/{uid}", self.admin_url);
        let resp = tokio::time::timeout(Duration::from_secs(15), client().get(&url).send())
            .await
            .expect("admin API answers in time")
            .expect("admin API reachable");
        let status = resp.status().as_u16();
        (status, serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap_or(Value::Null))
    }

    /// Status of `GET /readyz` and how long it took to answer.
    pub async fn readyz(&self) -> (u16, Duration) {
        let started = Instant::now();
        let resp = tokio::time::timeout(
            Duration::from_secs(15),
            client().get(format!("{}/readyz", self.admin_url)).send(),
        )
        .await
        .expect("readyz answers in time")
        .expect("admin listener reachable");
        (resp.status().as_u16(), started.elapsed())
    }

    /// Waits until `/readyz` is 200, panicking after `limit`.
    pub async fn wait_ready(&self, limit: Duration) {
        let started = Instant::now();
        loop {
            let (status, _) = self.readyz().await;
            if status == 200 {
                return;
            }
            assert!(started.elapsed() < limit, "not ready after {limit:?} (readyz {status})");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The value of an unlabelled counter in this instance's `/metrics` (0 when absent). The
    /// recorder is process-wide, so the value covers every server in this test binary.
    pub async fn counter(&self, name: &str) -> u64 {
        let text = client()
            .get(format!("{}/metrics", self.admin_url))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap();
        text.lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .map(|v| v.trim().parse::<f64>().expect("counter value") as u64)
            .sum()
    }

    /// Graceful shutdown; returns what `run` and the store close returned.
    pub async fn stop(mut self) -> Result<(), RunError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("not yet stopped");
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("server stops in time")
            .expect("server task did not panic")
    }
}

/// What the agent saw for one POST that may fail: status, Retry-After, decoded reply, time.
#[derive(Debug)]
pub struct Outcome {
    pub status: u16,
    pub retry_after: Option<String>,
    pub reply: Option<ServerToAgent>,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn asks_full_state(&self) -> bool {
        self.reply.as_ref().is_some_and(|r| r.flags & server_flags::REPORT_FULL_STATE != 0)
    }
}

/// Posts `msg` without asserting success; the client gives up after `limit` (a hang is an
/// `Err`, never a stuck test).
pub async fn post(url: &str, msg: &AgentToServer, limit: Duration) -> Result<Outcome, String> {
    let started = Instant::now();
    let request = client().post(url).header("content-type", PROTOBUF).body(msg.encode_to_vec());
    let resp = tokio::time::timeout(limit, request.send())
        .await
        .map_err(|_| format!("no answer within {limit:?}"))?
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status().as_u16();
    let retry_after =
        resp.headers().get("retry-after").map(|v| v.to_str().unwrap_or_default().to_owned());
    let body = tokio::time::timeout(limit, resp.bytes())
        .await
        .map_err(|_| format!("no body within {limit:?}"))?
        .map_err(|e| format!("body failed: {e}"))?;
    Ok(Outcome {
        status,
        retry_after,
        reply: ServerToAgent::decode(&body[..]).ok(),
        elapsed: started.elapsed(),
    })
}

/// A small deterministic generator (xorshift64*), so a failing spread can be replayed from
/// its seed without a `rand` dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Posts `msg` and asserts the retryable failure an outage must give: 503 with a positive
/// Retry-After and an OpAMP `Unavailable` body echoing the uid, answered within `limit`.
pub async fn post_unavailable(url: &str, msg: &AgentToServer, limit: Duration) -> Outcome {
    let out = post(url, msg, limit)
        .await
        .unwrap_or_else(|e| panic!("seq {}: opampd must answer, not hang: {e}", msg.sequence_num));
    assert_eq!(out.status, 503, "an outage is 503, never 401 or 500: {out:?}");
    let retry_after: u64 = out
        .retry_after
        .as_deref()
        .expect("Retry-After on 503")
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry_after > 0);
    let reply = out.reply.as_ref().expect("protobuf ServerToAgent body");
    assert_eq!(
        crate::common::error_type(reply),
        Some(opamp_proto::v1::ServerErrorResponseType::Unavailable)
    );
    // echoed both when the store failed fast and when the request timeout cut it
    assert_eq!(reply.instance_uid, msg.instance_uid, "instance_uid echoed");
    out
}
