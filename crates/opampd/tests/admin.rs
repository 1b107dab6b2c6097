//! Black-box tests of the admin listener over a real server and the embedded store.

mod common;

use common::*;

#[tokio::test]
async fn health_readiness_metrics_and_agent_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let admin = &server.admin_url;

    let resp = client().get(format!("{admin}/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client().get(format!("{admin}/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);

    let a = uid();
    send(&server.opamp_url, &full(a, 0)).await;
    send(&server.opamp_url, &poll(a, 1)).await;
    send(&server.opamp_url, &poll(a, 7)).await;

    let text = client().get(format!("{admin}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("opampd_messages_total"), "{text}");
    assert!(text.contains("opampd_request_duration_seconds"), "{text}");
    assert!(text.contains("opampd_report_full_state_total"), "{text}");

    let resp = client().get(format!("{admin}/api/agents/{a}")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let doc: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(doc["sequence_num"], 7);
    assert_eq!(doc["instance_uid"], a.to_string());
    assert_eq!(doc["status"], "online");
    assert_eq!(doc["health"]["healthy"], true);

    let resp = client().get(format!("{admin}/api/agents/{}", uid())).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let resp = client().get(format!("{admin}/api/agents/not-a-uid")).send().await.unwrap();
    assert_eq!(resp.status(), 400);

    // the admin listener does not serve OpAMP, and the OpAMP listener no admin
    let resp = client().get(format!("{admin}/v1/opamp")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    server.stop().await.unwrap();
}
