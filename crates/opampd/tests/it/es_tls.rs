//! opampd talking HTTPS to Elasticsearch (issue 8): `--es-ca-cert` makes a private CA trusted,
//! and certificate verification (chain and host name) is on without it being asked for.
//!
//! No TLS-enabled cluster is needed: a TLS-terminating forwarder (`common::tls_forwarder`)
//! presents a certificate made at test time and passes the traffic to the real test cluster
//! (`OPAMPD_TEST_ES_URL`, plain HTTP). The tests read documents straight from the cluster, past
//! the forwarder, and ask the forwarder why a handshake failed (the client's alert), so a
//! refusal is known to be the certificate check and not some other failure.

use std::process::Stdio;
use std::time::{Duration, Instant};

use opamp_store::AgentStore;
use opamp_store::elasticsearch::CaCert;
use opampd::config::{Config, StoreConfig};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::es::{EsInstance, TestIndex, bounded, post_unavailable};
use crate::common::pki::Ca;
use crate::common::tls_forwarder::TlsForwarder;
use crate::common::{asks_full_state, client, full, poll, uid};

const BIN: &str = env!("CARGO_BIN_EXE_opampd");
/// opampd's `--request-timeout` in these tests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the agent waits before calling it a hang.
const CLIENT_LIMIT: Duration = Duration::from_secs(10);
const READY_LIMIT: Duration = Duration::from_secs(30);
const TEST_LIMIT: Duration = Duration::from_secs(90);

/// opampd's configuration for the test index behind `fwd`, trusting `ca` in addition to the
/// built-in web roots when given (`--es-ca-cert`).
fn config(index: &TestIndex, fwd: &TlsForwarder, ca: Option<&Ca>) -> Config {
    let mut config = index.config(&fwd.url());
    config.request_timeout = REQUEST_TIMEOUT;
    config.shutdown_grace = Duration::from_secs(2);
    let StoreConfig::Elasticsearch { es, .. } = &mut config.store else {
        unreachable!("TestIndex::config is an elasticsearch configuration")
    };
    es.ca_cert = ca.map(|ca| CaCert::from_pem(ca.pem.as_bytes()).expect("the test CA is usable"));
    config
}

/// Sends an enrollment and heartbeats through `opamp_url`; none may ask for the full state,
/// and Elasticsearch itself (read past the forwarder) must hold the last `sequence_num`.
async fn serves_an_agent(index: &TestIndex, opamp_url: &str) {
    let agent = uid();
    assert!(!asks_full_state(opamp_url, &full(agent, 0)).await, "enrollment flagged");
    for seq in 1..=3 {
        assert!(!asks_full_state(opamp_url, &poll(agent, seq)).await, "heartbeat {seq} flagged");
    }
    assert_eq!(index.stored_seq(agent).await, Some(3), "the state in elasticsearch");
    index.published(agent, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_ca_opampd_serves_agents_over_https_to_elasticsearch() {
    let Some(index) = TestIndex::new() else { return };
    let ca = Ca::new("opampd es test ca");
    let fwd = TlsForwarder::start(&index.es, &ca.server("elasticsearch")).await;
    let server = EsInstance::start(config(&index, &fwd, Some(&ca))).await;
    bounded(TEST_LIMIT, async {
        server.wait_ready(READY_LIMIT).await;
        serves_an_agent(&index, &server.opamp_url).await;
        let (status, _) = server.readyz().await;
        assert_eq!(status, 200, "readyz over https");
        assert!(fwd.completed() > 0, "the traffic went through the tls forwarder");
        assert_eq!(fwd.failures(), Vec::<String>::new(), "no failed handshake");
    })
    .await;
    server.stop().await.expect("clean shutdown");
    drop(index);
}

/// What an opampd that refuses the cluster's certificate must do: `/readyz` 503, agents told to
/// come back later (503, Retry-After, an OpAMP `Unavailable` body; never a 500), nothing
/// written, and the forwarder saw the client send `alert` (the reason it refused).
async fn refuses_the_certificate(
    index: &TestIndex,
    fwd: &TlsForwarder,
    server: &EsInstance,
    alert: &str,
) {
    let (status, _) = server.readyz().await;
    assert_eq!(status, 503, "readyz when the certificate is refused");
    let why = server.store.ready().await.expect_err("the store is not ready").to_string();
    assert!(why.contains("elasticsearch unreachable"), "{why}");
    assert!(why.contains("certificate"), "the cause is named: {why}");

    let agent = uid();
    for msg in [full(agent, 0), poll(agent, 1)] {
        post_unavailable(&server.opamp_url, &msg, CLIENT_LIMIT).await;
    }

    // nothing reached the cluster: not the document, not even the index
    assert!(index.state(agent).await.is_none(), "nothing written");
    assert_eq!(index.doc(agent).await, None, "nothing written");
    let resp = client().get(format!("{}{}", index.es, index.name)).send().await.unwrap();
    assert_eq!(resp.status(), 404, "the index was never created");

    assert_eq!(fwd.completed(), 0, "no handshake completed");
    let failures = fwd.failures();
    assert!(
        failures.iter().any(|f| f.contains(&format!("received fatal alert: {alert}"))),
        "opampd's client refused the certificate with {alert}: {failures:?}"
    );

    let healthz = client().get(format!("{}/healthz", server.admin_url)).send().await.unwrap();
    assert_eq!(healthz.status(), 200, "opampd itself is alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ca_the_private_certificate_is_refused_and_agents_get_503() {
    let Some(index) = TestIndex::new() else { return };
    let ca = Ca::new("opampd es test ca");
    let fwd = TlsForwarder::start(&index.es, &ca.server("elasticsearch")).await;
    // built-in web roots only: the test CA is not among them
    let server = EsInstance::start(config(&index, &fwd, None)).await;
    bounded(TEST_LIMIT, refuses_the_certificate(&index, &fwd, &server, "UnknownCA")).await;
    server.stop().await.expect("clean shutdown");
    drop(index);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_host_is_refused_even_from_the_trusted_ca() {
    let Some(index) = TestIndex::new() else { return };
    let ca = Ca::new("opampd es test ca");
    let elsewhere = ca.server_for("elasticsearch", &["elastic.example"]);
    let fwd = TlsForwarder::start(&index.es, &elsewhere).await;
    let server = EsInstance::start(config(&index, &fwd, Some(&ca))).await;
    bounded(TEST_LIMIT, refuses_the_certificate(&index, &fwd, &server, "BadCertificate")).await;
    server.stop().await.expect("clean shutdown");
    drop(index);
}

/// The binary, configured on the command line only: `--es-url https://...` and
/// `--es-ca-cert FILE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reaches_elasticsearch_over_https_with_es_ca_cert() {
    let Some(index) = TestIndex::new() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("opampd es test ca");
    let ca_file = dir.path().join("es-ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let fwd = TlsForwarder::start(&index.es, &ca.server("elasticsearch")).await;
    let mut child = tokio::process::Command::new(BIN)
        .args(["--store", "elasticsearch", "--es-url", fwd.url().as_str(), "--es-ca-cert"])
        .arg(&ca_file)
        .args(["--es-index", &index.name, "--auth", "none", "--log-format", "json"])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        // a refused configuration says why here
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    bounded(TEST_LIMIT, async {
        let serving = loop {
            let line = lines.next_line().await.unwrap().expect("opampd logs until it serves");
            let event: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if event["message"] == "opampd serving" {
                break event;
            }
        };
        // keep reading, so the pipe never fills and blocks opampd's logging
        let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let admin = format!("http://{}", serving["admin_listen"].as_str().unwrap());
        let opamp = format!("http://{}/v1/opamp", serving["listen"].as_str().unwrap());

        let started = Instant::now();
        loop {
            let status = client().get(format!("{admin}/readyz")).send().await.unwrap().status();
            if status == 200 {
                break;
            }
            assert!(started.elapsed() < READY_LIMIT, "not ready after {READY_LIMIT:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        serves_an_agent(&index, &opamp).await;
        assert!(fwd.completed() > 0, "the traffic went through the tls forwarder");
        assert_eq!(fwd.failures(), Vec::<String>::new(), "no failed handshake");

        let pid = child.id().expect("running").to_string();
        let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        let status = child.wait().await.unwrap();
        assert_eq!(status.code(), Some(0), "SIGTERM stops the server cleanly");
        drain.await.unwrap();
    })
    .await;
    drop(index);
}
