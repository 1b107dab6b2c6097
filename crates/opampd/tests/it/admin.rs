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
        r#"opampd_request_duration_seconds_bucket{transport="ws",outcome="ok",le="0.1"}"#,
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

// ---------------------------------------------------------------------------------------------
// The fleet API: filters, paging and counts, on both stores, with agents in every status.

mod fleet {
    use std::collections::BTreeSet;
    use std::time::{Duration, Instant};

    use opamp_proto::InstanceUid;
    use opamp_proto::v1::{
        AgentDescription, AgentDisconnect, AgentToServer, AnyValue, ComponentHealth, KeyValue,
        any_value,
    };
    use opampd::config::Config;
    use serde_json::{Value, json};

    use crate::common::es::{TestIndex, bounded};
    use crate::common::*;

    /// Short, so agents go offline within the test; long enough for every check to run
    /// before the recent agents go offline too.
    const OFFLINE_AFTER: Duration = Duration::from_secs(6);

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        }
    }

    /// A full report of an agent of `service` `version` on `host`, with `health`.
    fn report(
        uid: InstanceUid,
        service: &str,
        version: &str,
        host: &str,
        health: ComponentHealth,
    ) -> AgentToServer {
        AgentToServer {
            agent_description: Some(AgentDescription {
                identifying_attributes: vec![
                    kv("service.name", service),
                    kv("service.version", version),
                ],
                non_identifying_attributes: vec![kv("host.name", host)],
            }),
            health: Some(health),
            ..full(uid, 0)
        }
    }

    fn healthy() -> ComponentHealth {
        ComponentHealth { healthy: true, status: "StatusOK".into(), ..Default::default() }
    }

    fn degraded() -> ComponentHealth {
        ComponentHealth {
            healthy: true,
            status: "StatusRecoverableError".into(),
            ..Default::default()
        }
    }

    fn failing() -> ComponentHealth {
        ComponentHealth {
            healthy: false,
            last_error: "exporter refused".into(),
            ..Default::default()
        }
    }

    fn goodbye(uid: InstanceUid, seq: u64) -> AgentToServer {
        AgentToServer { agent_disconnect: Some(AgentDisconnect {}), ..poll(uid, seq) }
    }

    /// The agents, by name: `s*` went silent before the offline threshold passed, `r*` report
    /// after it.
    struct Fleet {
        s0: InstanceUid,
        s1: InstanceUid,
        s2: InstanceUid,
        r0: InstanceUid,
        r1: InstanceUid,
        r2: InstanceUid,
        r3: InstanceUid,
        r4: InstanceUid,
        r5: InstanceUid,
        /// When the last of the recent agents reported.
        reported: Instant,
    }

    /// s0 online and s1 degraded (both then offline), s2 disconnected long ago; r0, r1 online
    /// (r1 after a sequence gap), r2 degraded, r3 error, r4 disconnected, r5 a new agent that
    /// sent no full state (no description).
    async fn create(url: &str) -> Fleet {
        let id = || uid();
        let (s0, s1, s2, r0, r1, r2, r3, r4, r5) =
            (id(), id(), id(), id(), id(), id(), id(), id(), id());
        send(url, &report(s0, "svc-a", "1.0", "web-1", healthy())).await;
        send(url, &report(s1, "svc-a", "2.0", "web-2", degraded())).await;
        send(url, &report(s2, "svc-b", "1.0", "db-9", healthy())).await;
        send(url, &goodbye(s2, 1)).await;
        tokio::time::sleep(OFFLINE_AFTER + Duration::from_millis(500)).await;
        send(url, &report(r0, "svc-a", "1.0", "Web-3", healthy())).await;
        send(url, &report(r1, "svc-a", "2.0", "db-1", healthy())).await;
        assert!(asks_full_state(url, &poll(r1, 5)).await, "a gap asks for the full state");
        send(url, &report(r2, "svc-b", "1.0", "web-4", degraded())).await;
        send(url, &report(r3, "svc-b", "2.0", "db-2", failing())).await;
        send(url, &report(r4, "svc-b", "2.0", "db-3", healthy())).await;
        send(url, &goodbye(r4, 1)).await;
        assert!(asks_full_state(url, &poll(r5, 0)).await, "a new agent is asked");
        Fleet { s0, s1, s2, r0, r1, r2, r3, r4, r5, reported: Instant::now() }
    }

    async fn get(url: &str) -> (u16, Value) {
        let resp = client().get(url).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap_or(Value::Null))
    }

    /// Every agent `query` selects, following the cursors `limit` at a time.
    async fn all_pages(admin: &str, query: &str, limit: usize) -> Vec<String> {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..20 {
            let mut url = format!("{admin}/api/agents?{query}&limit={limit}");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let (status, page) = get(&url).await;
            assert_eq!(status, 200, "{url}: {page}");
            let agents = page["agents"].as_array().unwrap();
            assert!(agents.len() <= limit, "{url}: {page}");
            seen.extend(agents.iter().map(|a| a["instance_uid"].as_str().unwrap().to_owned()));
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return seen,
            }
        }
        panic!("{query} did not end");
    }

    async fn fleet_api_filters_pages_and_counts(config: Config) {
        let mut config = config;
        config.offline_after = OFFLINE_AFTER;
        let server = TestServer::start_with(config).await;
        let admin = server.admin_url.as_str();
        let f = create(&server.opamp_url).await;
        let uids = |list: &[InstanceUid]| {
            let mut v: Vec<String> = list.iter().map(ToString::to_string).collect();
            v.sort();
            v
        };
        let everyone = [f.s0, f.s1, f.s2, f.r0, f.r1, f.r2, f.r3, f.r4, f.r5];
        let r3_tail = f.r3.to_string()[24..].to_uppercase();
        let cases: Vec<(String, Vec<String>)> = vec![
            (String::new(), uids(&everyone)),
            ("status=&service_name=&version=&q=".into(), uids(&everyone)),
            ("status=online".into(), uids(&[f.r0, f.r1, f.r5])),
            ("status=degraded".into(), uids(&[f.r2])),
            ("status=error".into(), uids(&[f.r3])),
            ("status=disconnected".into(), uids(&[f.s2, f.r4])),
            ("status=offline".into(), uids(&[f.s0, f.s1])),
            ("service_name=svc-a".into(), uids(&[f.s0, f.s1, f.r0, f.r1])),
            ("service_name=svc-a&status=online".into(), uids(&[f.r0, f.r1])),
            ("version=2.0".into(), uids(&[f.s1, f.r1, f.r3, f.r4])),
            ("q=WEB".into(), uids(&[f.s0, f.s1, f.r0, f.r2])),
            ("q=web&status=offline".into(), uids(&[f.s0, f.s1])),
            (format!("q={r3_tail}"), uids(&[f.r3])),
            ("service_name=nope".into(), vec![]),
        ];
        for (query, expected) in &cases {
            for limit in [2, 100] {
                assert_eq!(&all_pages(admin, query, limit).await, expected, "{query} by {limit}");
            }
        }
        assert_eq!(all_pages(admin, "status=offline", 1).await, uids(&[f.s0, f.s1]));

        // an agent in the listing is the agent as /api/agents/{uid} shows it, status derived
        let (_, page) = get(&format!("{admin}/api/agents?status=offline&service_name=svc-a")).await;
        let listed = page["agents"].as_array().unwrap();
        assert_eq!(listed.len(), 2);
        for agent in listed {
            let uid = agent["instance_uid"].as_str().unwrap();
            let (status, mut one) = get(&format!("{admin}/api/agents/{uid}")).await;
            assert_eq!(status, 200);
            one.as_object_mut().unwrap().remove("version");
            assert_eq!(&one, agent);
            assert_eq!(agent["status"], "offline");
        }
        let (_, s1) = get(&format!("{admin}/api/agents/{}", f.s1)).await;
        assert_eq!((&s1["status"], &s1["stored_status"]), (&json!("offline"), &json!("degraded")));

        let (status, stats) = get(&format!("{admin}/api/stats")).await;
        assert_eq!(status, 200, "{stats}");
        assert_eq!(
            stats.as_object().unwrap().keys().collect::<BTreeSet<_>>(),
            [
                "as_of_ms",
                "by_remote_config",
                "by_service",
                "by_status",
                "by_version",
                "offline_after_ms",
                "report_full_state",
                "total"
            ]
            .iter()
            .map(|k| k.to_string())
            .collect::<BTreeSet<_>>()
            .iter()
            .collect()
        );
        assert_eq!(stats["total"], 9);
        assert_eq!(
            stats["by_status"],
            json!({"online": 3, "degraded": 1, "error": 1, "disconnected": 2, "offline": 2})
        );
        assert_eq!(stats["by_service"], json!({"svc-a": 4, "svc-b": 4}));
        assert_eq!(stats["by_version"], json!({"1.0": 4, "2.0": 4}));
        assert_eq!(
            stats["by_remote_config"],
            json!({"applied": 0, "applying": 0, "failed": 0, "pending": 0, "none": 9})
        );
        assert_eq!(
            stats["report_full_state"],
            json!({"new_agent": 1, "reconnect": 0, "sequence_gap": 1, "adopted": 0})
        );
        assert_eq!(stats["offline_after_ms"], OFFLINE_AFTER.as_millis() as u64);
        let (_, b) = get(&format!("{admin}/api/stats?service_name=svc-b")).await;
        assert_eq!(b["total"], 4);
        assert_eq!(
            b["by_status"],
            json!({"online": 0, "degraded": 1, "error": 1, "disconnected": 2, "offline": 0})
        );
        assert_eq!(b["by_service"], json!({"svc-b": 4}));
        let (_, offline) = get(&format!("{admin}/api/stats?status=offline")).await;
        assert_eq!(
            (&offline["total"], &offline["by_version"]),
            (&json!(2), &json!({"1.0": 1, "2.0": 1}))
        );

        assert!(
            f.reported.elapsed() < OFFLINE_AFTER,
            "the checks took {:?}: the recent agents may have gone offline meanwhile",
            f.reported.elapsed()
        );

        // values the API does not know are refused with the reason
        for (query, reason) in [
            ("/api/agents?status=sleeping", "unknown status"),
            ("/api/agents?limit=0", "limit"),
            ("/api/agents?limit=ten", "limit"),
            ("/api/agents?cursor=nope", "cursor"),
            ("/api/agents?color=red", "color"),
            ("/api/agents?status=online&status=error", "status"),
            ("/api/stats?status=Online", "unknown status"),
            ("/api/stats?limit=1", "limit"),
        ] {
            let (status, body) = get(&format!("{admin}{query}")).await;
            assert_eq!(status, 400, "{query}: {body}");
            let why = body["error"].as_str().unwrap_or_default();
            assert!(why.contains(reason), "{query}: {body}");
        }
        let long = "x".repeat(257);
        let (status, body) = get(&format!("{admin}/api/agents?q={long}")).await;
        assert_eq!(status, 400, "{body}");
        let (status, body) = get(&format!("{admin}/api/agents?limit=5000")).await;
        assert_eq!((status, body["agents"].as_array().map(Vec::len)), (200, Some(9)), "capped");
        server.stop().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fleet_api_filters_pages_and_counts_on_the_embedded_store() {
        let dir = tempfile::tempdir().unwrap();
        fleet_api_filters_pages_and_counts(Config::embedded(dir.path())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fleet_api_filters_pages_and_counts_on_elasticsearch() {
        let Some(index) = TestIndex::new() else { return };
        let config = index.config(&index.es);
        bounded(Duration::from_secs(120), fleet_api_filters_pages_and_counts(config)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The admin token.

#[tokio::test]
async fn the_admin_token_guards_every_api_call_and_nothing_else() {
    const TOKEN: &str = "admin-test-token-5d1e";
    let dir = tempfile::tempdir().unwrap();
    let mut config = opampd::config::Config::embedded(dir.path());
    config.admin_token = Some(opampd::config::AdminToken::new(&opamp_store::Secret::new(TOKEN)));
    let server = TestServer::start_with(config).await;
    let admin = &server.admin_url;
    let a = uid();
    send(&server.opamp_url, &full(a, 0)).await;

    let call = |method: reqwest::Method, path: String, auth: Option<&str>| {
        let mut request = client().request(method, format!("{admin}{path}"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        async move { request.send().await.unwrap() }
    };
    let api = [
        (reqwest::Method::GET, "/api/agents".to_owned(), 200),
        (reqwest::Method::GET, format!("/api/agents/{a}"), 200),
        (reqwest::Method::GET, "/api/stats".to_owned(), 200),
        (reqwest::Method::GET, "/api/configs".to_owned(), 200),
        (reqwest::Method::DELETE, "/api/configs/nothing-here".to_owned(), 404),
        (reqwest::Method::GET, "/api/no-such-thing".to_owned(), 404),
    ];
    let bearer = format!("Bearer {TOKEN}");
    let lower = format!("bearer {TOKEN}");
    for (method, path, ok) in &api {
        for refused in
            [None, Some("Bearer wrong"), Some(&format!("Basic {TOKEN}")[..]), Some("Bearer")]
        {
            let resp = call(method.clone(), path.clone(), refused).await;
            assert_eq!(resp.status(), 401, "{method} {path} with {refused:?}");
            assert!(
                resp.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"),
                "{method} {path}"
            );
            let body: serde_json::Value =
                serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
            assert!(body["error"].as_str().unwrap().contains("admin token"), "{body}");
        }
        for accepted in [&bearer, &lower] {
            let resp = call(method.clone(), path.clone(), Some(accepted)).await;
            assert_eq!(resp.status().as_u16(), *ok, "{method} {path}");
        }
    }
    // the agent's data never leaves without the token
    let resp = call(reqwest::Method::GET, format!("/api/agents/{a}"), None).await;
    assert!(!resp.text().await.unwrap().contains(&a.to_string()));

    // health, readiness, metrics and the console's files are open
    for path in ["/healthz", "/readyz", "/metrics", "/"] {
        let resp = call(reqwest::Method::GET, path.to_owned(), None).await;
        assert_eq!(resp.status(), 200, "{path}");
    }
    server.stop().await.unwrap();
}
