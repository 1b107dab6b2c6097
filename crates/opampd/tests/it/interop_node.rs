//! Interop with a real OpAMP client: Elastic's Node.js `@elastic/opamp-client-node` runs against
//! a real opampd for several heartbeats; we check what the server stored and that the client was
//! asked for its full state no more often than the drift rules require.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::common::{TestServer, client};
use opamp_proto::{agent_caps, server_caps};
use serde_json::Value;

const SENDS: usize = 6;

/// The directory holding `node-client.js` when its dependencies are installed, else `None`
/// (fails loudly under CI: the test command installs them).
fn interop_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    let installed = dir.join("node_modules/@elastic/opamp-client-node/package.json").exists();
    let node = std::process::Command::new("node").arg("--version").output().is_ok();
    if installed && node {
        return Some(dir);
    }
    let why =
        "node and `npm ci --prefix crates/opampd/tests/interop` are required; run scripts/test.sh";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("interop test cannot run: {why}");
    }
    eprintln!("SKIPPING node interop test: {why}");
    None
}

/// Runs `script` (in `dir`) with `args` to its end (at most 60 s) and returns its one JSON line,
/// asserting it exited successfully.
async fn run_node(dir: &std::path::Path, script: &str, args: &[&str]) -> Value {
    let child = tokio::process::Command::new("node")
        .arg(dir.join(script))
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("node client finishes within 60 s")
        .expect("node client output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node client failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("one json line")
}

/// The canonical (dashed) text of a uid the client printed as 32 hex digits.
fn dashed(hex: &str) -> String {
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// `GET path` on the admin listener, as JSON.
async fn admin_json(admin_url: &str, path: &str) -> Value {
    let body =
        client().get(format!("{admin_url}{path}")).send().await.unwrap().bytes().await.unwrap();
    serde_json::from_slice(&body).expect("admin json")
}

#[tokio::test]
async fn node_client_heartbeats_are_stored_and_full_state_is_asked_once() {
    let Some(dir) = interop_dir() else { return };
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;

    let sends = SENDS.to_string();
    let report =
        run_node(&dir, "node-client.js", &[&server.opamp_url, &sends, "interop-svc"]).await;
    assert_eq!(report["failures"], serde_json::json!([]));

    let sends = report["sends"].as_array().expect("sends");
    assert!(sends.len() >= SENDS, "{} sends", sends.len());
    for (i, s) in sends.iter().enumerate() {
        let seq = s["seq"].as_u64().unwrap();
        assert_eq!(seq, i as u64 + 1, "the client numbers its messages from 1");
        assert_eq!(s["echoedUid"], true, "instance_uid echoed");
        assert_eq!(s["error"], Value::Null);
        let caps = s["serverCapabilities"].as_u64().unwrap();
        assert_ne!(caps & server_caps::ACCEPTS_STATUS, 0, "server capabilities on every reply");
        // This client never reports health, so its first message is a new enrollment without
        // full status (rule 2): asked once. Its answer (seq 2) is in sequence, and every later
        // heartbeat too: never asked again.
        assert_eq!(s["reportFullState"], seq == 1, "ReportFullState on seq {seq}");
    }
    assert_eq!(sends[1]["full"], true, "the client answered the flag with its full state");

    let uid = dashed(report["instanceUid"].as_str().unwrap());
    let agent = admin_json(&server.admin_url, &format!("/api/agents/{uid}")).await;
    let last_seq = sends.last().unwrap()["seq"].as_u64().unwrap();
    // the client may have sent one more heartbeat after its last reported success
    let stored_seq = agent["sequence_num"].as_u64().unwrap();
    assert!(stored_seq == last_seq || stored_seq == last_seq + 1, "stored seq {stored_seq}");
    let caps = agent["capabilities"].as_u64().unwrap();
    assert_eq!(caps, agent_caps::REPORTS_STATUS | agent_caps::REPORTS_HEARTBEAT);
    let description = &agent["agent_description"];
    assert_eq!(description["identifying_attributes"]["service.name"], "interop-svc");
    assert_eq!(description["non_identifying_attributes"]["os.type"], "linux");
    assert_eq!(agent["status"], "online");

    server.stop().await.unwrap();
}

/// The Node.js client with `AcceptsRemoteConfig`/`ReportsRemoteConfig`: it is sent the config its
/// description selects, exactly once, reports it APPLIED, and opampd shows that per agent and
/// per config.
#[tokio::test]
async fn node_client_receives_its_remote_config_once_and_reports_it_applied() {
    let Some(dir) = interop_dir() else { return };
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    let put = client()
        .put(format!("{}/api/configs/interop", server.admin_url))
        .header("content-type", "application/json")
        .body(
            serde_json::json!({
                "selector": {"service.name": "interop-rc"},
                "files": {"collector.yaml": {"body": "receivers: {otlp: {}}", "content_type": "text/yaml"}},
            })
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let put: Value = serde_json::from_slice(&put.bytes().await.unwrap()).unwrap();
    let hash = put["hash"].as_str().expect("hash").to_owned();

    let report =
        run_node(&dir, "node-remote-config.js", &[&server.opamp_url, "5", "interop-rc"]).await;
    let received = report["received"].as_array().expect("received");
    assert_eq!(received.len(), 1, "exactly one config: {received:?}");
    assert_eq!(received[0]["hash"], hash);
    assert_eq!(received[0]["files"]["collector.yaml"]["body"], "receivers: {otlp: {}}");
    assert_eq!(received[0]["files"]["collector.yaml"]["contentType"], "text/yaml");
    let sends = report["sends"].as_array().expect("sends");
    assert!(sends.iter().all(|s| s["offersRemoteConfig"] == true));
    assert_eq!(sends.iter().filter(|s| s["remoteConfig"] == true).count(), 1);
    assert!(
        sends.iter().any(|s| s["reportedHash"] == hash && s["reportedStatus"] == 1),
        "the client reported APPLIED for the hash: {sends:?}"
    );

    let uid = dashed(report["instanceUid"].as_str().unwrap());
    let agent = admin_json(&server.admin_url, &format!("/api/agents/{uid}")).await;
    assert_eq!(agent["remote_config"]["desired_hash"], hash);
    assert_eq!(agent["remote_config"]["reported_hash"], hash);
    assert_eq!(agent["remote_config"]["status"], "applied");
    let config = admin_json(&server.admin_url, "/api/configs/interop").await;
    assert_eq!(
        config["agents"],
        serde_json::json!({"matched": 1, "applied": 1, "applying": 0, "failed": 0, "pending": 0})
    );
    server.stop().await.unwrap();
}
