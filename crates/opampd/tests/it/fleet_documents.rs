//! The `.fleet-agents` documents opampd writes, field by field, as Kibana reads them: a real
//! opampd on the real `.fleet-agents` system index, a collector with a description, tags,
//! unhealthy health and an effective config full of secrets, and the document read back from
//! Elasticsearch past opampd. The values are fleet-server's (elastic/fleet-server
//! `handleOpAMP.go`); where opampd is stricter, the test says so. The last test runs the same
//! collector through a cluster with security on, with the fleet-server service token and an
//! enrollment key, and holds its document to the same checks.

use std::time::Duration;

use base64::Engine as _;
use opamp_proto::v1::{
    AgentConfigFile, AgentConfigMap, AgentDescription, AgentToServer, AnyValue, ComponentHealth,
    EffectiveConfig, KeyValue, any_value,
};
use opamp_proto::{InstanceUid, agent_caps, agent_flags};
use opamp_store::cache::CacheConfig;
use opamp_store::elasticsearch::enrollment::AuthCacheConfig;
use opamp_store::secured_cluster::SecuredCluster;
use opampd::config::{AuthConfig, Config, StoreConfig};
use serde_json::{Value, json};

use crate::common::es::{EsInstance, TestIndex, bounded};
use crate::common::{send, uid};

const LIMIT: Duration = Duration::from_secs(60);

/// The secrets of [`collector`]'s config: none may be readable anywhere in the document.
const SECRETS: [&str; 4] = ["hunter2-pw", "AbCdEf-api-key", "Bearer sekret-token", "urlpass"];

const CONFIG: &str = "\
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 0.0.0.0:4317
exporters:
  elasticsearch:
    endpoints: [\"https://elastic:urlpass@es.example:9200\"]
    user: elastic
    password: hunter2-pw
    api_key: AbCdEf-api-key
    headers:
      Authorization: Bearer sekret-token
service:
  pipelines:
    logs:
      receivers: [otlp]
      exporters: [elasticsearch]
";

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
    }
}

fn config(body: &str) -> EffectiveConfig {
    EffectiveConfig {
        config_map: Some(AgentConfigMap {
            config_map: [(
                String::new(),
                AgentConfigFile {
                    body: body.as_bytes().to_vec().into(),
                    content_type: "text/yaml".into(),
                    ..Default::default()
                },
            )]
            .into(),
        }),
    }
}

/// A collector's full first report: description, tags, unhealthy health with components, and
/// an effective config holding secrets.
fn collector(uid: InstanceUid) -> AgentToServer {
    let exporter = ComponentHealth {
        healthy: false,
        start_time_unix_nano: 1_787_306_400_000_000_000,
        status_time_unix_nano: 1_787_306_405_000_000_000,
        last_error: "connection refused".into(),
        status: "StatusPermanentError".into(),
        ..Default::default()
    };
    let pipeline = ComponentHealth {
        healthy: false,
        last_error: "exporter elasticsearch: connection refused".into(),
        status: "StatusPermanentError".into(),
        component_health_map: [("exporter:elasticsearch".to_owned(), exporter)].into(),
        ..Default::default()
    };
    AgentToServer {
        instance_uid: uid.as_bytes().to_vec().into(),
        sequence_num: 0,
        capabilities: agent_caps::REPORTS_STATUS
            | agent_caps::REPORTS_EFFECTIVE_CONFIG
            | agent_caps::REPORTS_HEALTH
            | agent_caps::REPORTS_HEARTBEAT,
        agent_description: Some(AgentDescription {
            identifying_attributes: vec![
                text("service.name", "otelcol-contrib"),
                text("service.version", "0.144.0"),
            ],
            non_identifying_attributes: vec![
                text("host.name", "web-01"),
                text("os.type", "linux"),
                text("tags", "a, b,,a"),
            ],
        }),
        health: Some(ComponentHealth {
            healthy: false,
            start_time_unix_nano: 1_787_306_400_000_000_000,
            status_time_unix_nano: 1_787_306_405_000_000_000,
            last_error: "exporter elasticsearch: connection refused".into(),
            status: "StatusPermanentError".into(),
            component_health_map: [("pipeline:logs".to_owned(), pipeline)].into(),
            ..Default::default()
        }),
        effective_config: Some(config(CONFIG)),
        ..Default::default()
    }
}

/// Sends `msgs` in order through a fresh opampd on `.fleet-agents` and returns the `_source`
/// of the document of the first message's agent; `None` when the ES tests are skipped.
async fn stored(msgs: &[AgentToServer]) -> Option<Value> {
    let index = TestIndex::fleet_agents()?;
    let server = EsInstance::start(index.config(&index.es)).await;
    for msg in msgs {
        send(&server.opamp_url, msg).await;
    }
    server.stop().await.expect("clean stop flushes every write");
    let uid = InstanceUid::try_from(&msgs[0].instance_uid[..]).unwrap();
    let doc = index.doc(uid).await.expect("document written");
    Some(doc["_source"].clone())
}

async fn collector_doc() -> Option<Value> {
    stored(&[collector(uid())]).await
}

fn assert_agent(doc: &Value) {
    assert_eq!(doc["agent"]["type"], "otelcol-contrib");
    assert_eq!(doc["agent"]["version"], "0.144.0");
    assert_eq!(doc["type"], "OPAMP");
    assert_eq!(doc["active"], true);
    assert_eq!(doc["policy_revision_idx"], 1);
}

fn assert_local_metadata(doc: &Value) {
    let meta = &doc["local_metadata"];
    assert_eq!(meta["elastic"]["agent"]["name"], "otelcol-contrib");
    assert_eq!(meta["elastic"]["agent"]["version"], "0.144.0");
    assert_eq!(meta["elastic"]["agent"]["id"], doc["agent"]["id"]);
    assert_eq!(meta["host"]["hostname"], "web-01");
    assert_eq!(meta["host"]["name"], "web-01");
    assert_eq!(meta["os"]["platform"], "linux");
}

fn assert_tags(doc: &Value) {
    assert_eq!(doc["tags"], json!(["otelcol-contrib", "a", "b"]));
}

fn assert_attributes(doc: &Value) {
    assert_eq!(
        doc["identifying_attributes"],
        json!({"service.name": "otelcol-contrib", "service.version": "0.144.0"})
    );
    assert_eq!(
        doc["non_identifying_attributes"],
        json!({"host.name": "web-01", "os.type": "linux"})
    );
}

fn assert_effective_config(doc: &Value) {
    let config = &doc["effective_config"];
    assert_eq!(config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"], "0.0.0.0:4317");
    assert_eq!(config["service"]["pipelines"]["logs"]["exporters"], json!(["elasticsearch"]));
    let es = &config["exporters"]["elasticsearch"];
    assert_eq!(es["user"], "elastic");
    assert_eq!(es["password"], "REDACTED");
    assert_eq!(es["api_key"], "REDACTED");
    assert_eq!(es["headers"]["Authorization"], "REDACTED");
    assert_eq!(es["endpoints"], json!(["https://REDACTED:REDACTED@es.example:9200"]));
}

fn assert_no_secret(doc: &Value) {
    let text = doc.to_string();
    let state = doc["opampd"]["state"].as_str().expect("state blob");
    let blob = base64::prelude::BASE64_STANDARD.decode(state).expect("base64 state");
    let blob = String::from_utf8_lossy(&blob);
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret:?} readable in the document");
        assert!(!blob.contains(secret), "{secret:?} readable in the state blob");
    }
}

fn assert_health(doc: &Value) {
    let health = &doc["health"];
    assert_eq!(health["healthy"], false);
    assert_eq!(health["status"], "StatusPermanentError");
    assert_eq!(health["start_time_unix_nano"], 1_787_306_400_000_000_000u64);
    assert_eq!(health["status_time_unix_nano"], 1_787_306_405_000_000_000u64);
    let pipeline = &health["component_health_map"]["pipeline:logs"];
    assert_eq!(pipeline["healthy"], false);
    let exporter = &pipeline["component_health_map"]["exporter:elasticsearch"];
    assert_eq!(exporter["last_error"], "connection refused");
}

fn assert_checkin(doc: &Value) {
    assert_eq!(doc["last_checkin_status"], "error");
    assert_eq!(doc["last_checkin_message"], "exporter elasticsearch: connection refused");
    assert_eq!(doc["sequence_num"], 0);
    assert!(doc["last_checkin"].as_str().is_some_and(|t| t.ends_with('Z')), "{doc}");
    assert!(doc["enrolled_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{doc}");
}

fn assert_capabilities(doc: &Value) {
    let mut caps: Vec<&str> =
        doc["capabilities"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    caps.sort_unstable();
    assert_eq!(
        caps,
        ["ReportsEffectiveConfig", "ReportsHealth", "ReportsHeartbeat", "ReportsStatus"]
    );
}

#[tokio::test]
async fn agent_type_and_version_come_from_service_name_and_version() {
    bounded(LIMIT, async {
        let Some(doc) = collector_doc().await else { return };
        assert_agent(&doc);
    })
    .await;
}

#[tokio::test]
async fn local_metadata_names_the_agent_its_host_and_os() {
    bounded(LIMIT, async {
        let Some(doc) = collector_doc().await else { return };
        assert_local_metadata(&doc);
    })
    .await;
}

#[tokio::test]
async fn tags_are_the_service_name_then_the_tags_attribute_trimmed_and_deduplicated() {
    bounded(LIMIT, async {
        let Some(doc) = collector_doc().await else { return };
        assert_tags(&doc);
    })
    .await;
}

#[tokio::test]
async fn attributes_are_objects_keyed_by_name_without_the_tags_attribute() {
    bounded(LIMIT, async {
        let Some(doc) = collector_doc().await else { return };
        assert_attributes(&doc);
    })
    .await;
}

#[tokio::test]
async fn effective_config_is_the_parsed_yaml_with_secrets_redacted() {
    bounded(LIMIT, async {
        let Some(doc) = collector_doc().await else { return };
        assert_effective_config(&doc);
    })
    .await;
}

#[tokio::test]
async fn no_secret_is_readable_anywhere_in_the_document_or_its_state_blob() {
    bounded(LIMIT, async {
        let Some(doc) = collector_doc().await else { return };
        assert_no_secret(&doc);
    })
    .await;
}

#[tokio::test]
async fn health_keeps_the_component_tree_with_the_opamp_field_names() {
    bounded(LIMIT, async {
        let Some(doc) = collector_doc().await else { return };
        assert_health(&doc);
    })
    .await;
}

#[tokio::test]
async fn checkin_status_and_message_follow_the_health() {
    bounded(LIMIT, async {
        let Some(doc) = collector_doc().await else { return };
        assert_checkin(&doc);
    })
    .await;
}

#[tokio::test]
async fn capabilities_are_the_names_of_the_set_bits() {
    bounded(LIMIT, async {
        let Some(doc) = collector_doc().await else { return };
        assert_capabilities(&doc);
    })
    .await;
}

#[tokio::test]
async fn a_config_that_does_not_parse_is_stored_without_its_body() {
    bounded(LIMIT, async {
        let agent = uid();
        let mut msg = collector(agent);
        msg.effective_config = Some(config("password: [unclosed hunter2-pw\n"));
        let Some(doc) = stored(&[msg]).await else { return };
        assert_eq!(doc.get("effective_config"), None, "{doc}");
        assert!(!doc.to_string().contains("hunter2-pw"));
        let state = doc["opampd"]["state"].as_str().unwrap();
        let blob = base64::prelude::BASE64_STANDARD.decode(state).unwrap();
        assert!(!String::from_utf8_lossy(&blob).contains("hunter2-pw"));
        // the agent's other fields are there as usual
        assert_eq!(doc["agent"]["type"], "otelcol-contrib");
    })
    .await;
}

#[tokio::test]
async fn a_request_for_a_new_uid_marks_the_old_document_reenrolled() {
    bounded(LIMIT, async {
        let agent = uid();
        let mut again = collector(agent);
        again.sequence_num = 1;
        again.flags = agent_flags::REQUEST_INSTANCE_UID;
        let Some(doc) = stored(&[collector(agent), again]).await else { return };
        assert_eq!(doc["audit_unenrolled_reason"], "reenrolled");
        assert!(doc["audit_unenrolled_time"].as_str().is_some_and(|t| t.ends_with('Z')), "{doc}");
    })
    .await;
}

/// Writes `doc` as document `uid` of `.fleet-agents` the way fleet-server does (with the
/// product-origin header that system index access requires), refreshed at once.
async fn put_as_fleet_server(index: &TestIndex, uid: InstanceUid, doc: &Value) {
    let url = format!("{}{}/_doc/{uid}?refresh=true", index.es, index.name);
    let resp = crate::common::client()
        .put(&url)
        .header("content-type", "application/json")
        .header("x-elastic-product-origin", "fleet")
        .body(doc.to_string())
        .send()
        .await
        .expect("PUT the fleet-server document");
    assert!(resp.status().is_success(), "PUT {url}: {}", resp.status());
}

#[tokio::test]
async fn an_agent_fleet_server_enrolled_is_adopted_with_its_policy_and_asked_once() {
    bounded(LIMIT, async {
        let Some(index) = TestIndex::fleet_agents() else { return };
        let agent = uid();
        // what fleet-server's OpAMP handler writes at enrollment and first check-in
        let written_by_fleet = json!({
            "active": true,
            "agent": {"id": agent.to_string(), "type": "otelcol-contrib", "version": "0.144.0"},
            "enrolled_at": "2026-08-21T10:00:00Z",
            "last_checkin": "2026-08-21T10:00:00Z",
            "last_checkin_status": "online",
            "sequence_num": 41,
            "policy_id": "fleet-policy",
            "namespaces": ["default"],
            "policy_revision_idx": 1,
            "tags": ["otelcol-contrib"],
            "type": "OPAMP",
        });
        put_as_fleet_server(&index, agent, &written_by_fleet).await;
        let server = EsInstance::start(index.config(&index.es)).await;

        // in sequence, but opampd holds none of its state: asked once
        let mut heartbeat = collector(agent);
        heartbeat.sequence_num = 42;
        heartbeat.agent_description = None;
        heartbeat.health = None;
        heartbeat.effective_config = None;
        let reply = send(&server.opamp_url, &heartbeat).await;
        assert_ne!(reply.flags & opamp_proto::server_flags::REPORT_FULL_STATE, 0);
        // the full report answers it; the next heartbeat is plain again
        let mut report = collector(agent);
        report.sequence_num = 43;
        let reply = send(&server.opamp_url, &report).await;
        assert_eq!(reply.flags & opamp_proto::server_flags::REPORT_FULL_STATE, 0);
        heartbeat.sequence_num = 44;
        let reply = send(&server.opamp_url, &heartbeat).await;
        assert_eq!(reply.flags & opamp_proto::server_flags::REPORT_FULL_STATE, 0);
        server.stop().await.expect("clean stop");

        let doc = index.doc(agent).await.expect("document")["_source"].clone();
        assert_eq!(doc["policy_id"], "fleet-policy", "the policy fleet-server bound is kept");
        assert_eq!(doc["namespaces"], json!(["default"]));
        assert_eq!(doc["enrolled_at"], "2026-08-21T10:00:00.000Z", "enrollment time kept");
        // the full report (43) was published; the heartbeat after it is in the state record
        assert_eq!(doc["sequence_num"], 43);
        assert_eq!(index.stored_seq(agent).await, Some(44));
        assert_eq!(doc["local_metadata"]["host"]["name"], "web-01");
        assert!(doc["opampd"]["state"].is_string(), "the record is opampd's own now");
    })
    .await;
}

/// The same collector on the cluster fleet-server deployments run: security on, opampd talking
/// with the `elastic/fleet-server` service token, the agent presenting an enrollment key. The
/// document is the same, field by field, with the key's policy bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_security_on_and_an_enrollment_key_the_document_is_the_same() {
    let Some(cluster) = SecuredCluster::connect().await else { return };
    cluster
        .run(LIMIT, async |cluster| {
            let key = cluster.api_key("opampd-test-fleet-document").await;
            cluster.enroll(&key, "policy-collectors", &["default"]).await;
            let mut config = Config::embedded("unused-by-the-elasticsearch-store");
            config.store = StoreConfig::Elasticsearch {
                es: Box::new(cluster.es_config(".fleet-agents")),
                cache: CacheConfig::DEFAULT,
            };
            config.auth = AuthConfig::Elasticsearch { cache: AuthCacheConfig::DEFAULT };
            let server = EsInstance::start(config).await;
            let agent = uid();
            let resp = crate::common::client()
                .post(&server.opamp_url)
                .header("content-type", crate::common::PROTOBUF)
                .header("authorization", format!("ApiKey {}", key.encoded.expose()))
                .body(opamp_proto::Message::encode_to_vec(&collector(agent)))
                .send()
                .await
                .expect("request sent");
            assert_eq!(resp.status(), 200);
            server.stop().await.expect("clean stop");
            let doc = cluster.doc(".fleet-agents", &agent.to_string()).await.expect("written");
            let doc = &doc["_source"];
            for check in [
                assert_agent,
                assert_local_metadata,
                assert_tags,
                assert_attributes,
                assert_effective_config,
                assert_no_secret,
                assert_health,
                assert_checkin,
                assert_capabilities,
            ] {
                check(doc);
            }
            assert_eq!(doc["policy_id"], "policy-collectors");
            assert_eq!(doc["namespaces"], json!(["default"]));
            let text = doc.to_string();
            assert!(!text.contains(key.encoded.expose()) && !text.contains(key.key.expose()));
        })
        .await;
}
