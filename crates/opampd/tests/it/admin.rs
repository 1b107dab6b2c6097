//! Black-box tests of the admin listener over a real server and the embedded store.

use crate::common::*;

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

#[tokio::test]
async fn every_series_is_on_the_first_scrape() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let text =
        client().get(format!("{}/metrics", server.admin_url)).send().await.unwrap().text().await;
    let text = text.unwrap();
    // opampd's own, each with its help text, and the embedded store's
    for name in [
        "opampd_messages_total",
        "opampd_report_full_state_total",
        "opampd_cas_retries_total",
        "opampd_request_duration_seconds",
        "opampd_in_flight",
        "opampd_ws_sessions",
        "opampd_ws_rejected_total",
        "opampd_store_commits_total",
        "opampd_store_conflicts_total",
    ] {
        assert!(text.contains(&format!("# HELP {name} ")), "no HELP for {name}:\n{text}");
        assert!(text.contains(&format!("# TYPE {name} ")), "no TYPE for {name}:\n{text}");
    }
    for series in [
        r#"opampd_messages_total{transport="http",outcome="ok"}"#,
        r#"opampd_messages_total{transport="ws",outcome="too_large"}"#,
        r#"opampd_report_full_state_total{reason="sequence_gap"}"#,
        r#"opampd_request_duration_seconds_bucket{transport="ws",le="0.1"}"#,
        r#"opampd_store_commits_total{backend="embedded"}"#,
    ] {
        assert!(text.contains(series), "no {series}:\n{text}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn agents_are_listed_a_page_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let admin = &server.admin_url;
    let mut sent: Vec<String> = Vec::new();
    for _ in 0..5 {
        let a = uid();
        send(&server.opamp_url, &full(a, 0)).await;
        sent.push(a.to_string());
    }
    sent.sort();

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut url = format!("{admin}/api/agents?limit=2");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let body = client().get(url).send().await.unwrap().bytes().await.unwrap();
        let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
        pages += 1;
        for agent in page["agents"].as_array().unwrap() {
            assert_eq!(agent["status"], "online");
            seen.push(agent["instance_uid"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3, "5 agents at 2 a page");
    assert_eq!(seen, sent, "every agent once, in uid order");

    let resp = client().get(format!("{admin}/api/agents?cursor=nope")).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    server.stop().await.unwrap();
}
