//! The per-message CPU cost of the core, as the server pays it: decode the body, validate the uid,
//! decide the flags and merge into the stored record, encode the reply. No store, no transport:
//! those are measured by the loadtest.

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use opamp_core::{AgentRecord, Remote, ServerConfig, merge, process, validate};
use opamp_proto::agent_caps as caps;
use opamp_proto::v1::{
    AgentConfigFile, AgentConfigMap, AgentDescription, AgentToServer, AnyValue, ComponentHealth,
    EffectiveConfig, KeyValue, ServerToAgent, any_value,
};
use opamp_proto::{Bytes, InstanceUid, Message};

const UID: [u8; 16] = [0x42; 16];
const NOW: u64 = 1_700_000_000_000;
const CAPS: u64 = caps::REPORTS_STATUS
    | caps::REPORTS_EFFECTIVE_CONFIG
    | caps::REPORTS_HEALTH
    | caps::REPORTS_HEARTBEAT
    | caps::ACCEPTS_RESTART_COMMAND;

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
    }
}

/// ~10 attributes, as an OpenTelemetry Collector describes itself.
fn description() -> AgentDescription {
    AgentDescription {
        identifying_attributes: vec![
            kv("service.name", "otelcol-contrib"),
            kv("service.version", "0.115.0"),
            kv("service.instance.id", "0193a5c2-7b1e-7c3d-9f00-1a2b3c4d5e6f"),
        ],
        non_identifying_attributes: vec![
            kv("os.type", "linux"),
            kv("os.description", "Ubuntu 24.04.1 LTS"),
            kv("host.name", "ip-10-0-12-34.eu-west-1.compute.internal"),
            kv("host.arch", "amd64"),
            kv("cloud.provider", "aws"),
            kv("cloud.region", "eu-west-1"),
            kv("deployment.environment", "production"),
        ],
    }
}

fn component(status: &str) -> ComponentHealth {
    ComponentHealth {
        healthy: true,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        status: status.into(),
        status_time_unix_nano: 1_700_000_030_000_000_000,
        ..Default::default()
    }
}

/// Agent health with three pipelines of two components each.
fn health() -> ComponentHealth {
    let pipeline = |name: &str| {
        let map: HashMap<_, _> = [
            (format!("receiver:otlp/{name}"), component("StatusOK")),
            (format!("exporter:otlp/{name}"), component("StatusOK")),
        ]
        .into();
        (
            format!("pipeline:{name}"),
            ComponentHealth { component_health_map: map, ..component("StatusOK") },
        )
    };
    ComponentHealth {
        component_health_map: ["traces", "metrics", "logs"].map(pipeline).into(),
        ..component("StatusOK")
    }
}

/// A ~2 KiB collector YAML.
fn effective_config() -> EffectiveConfig {
    let mut yaml =
        String::from("receivers:\n  otlp:\n    protocols:\n      grpc: {}\n      http: {}\n");
    let mut i = 0;
    while yaml.len() < 2048 {
        yaml.push_str(&format!(
            "processors:\n  batch/{i}:\n    send_batch_size: 8192\n    timeout: 5s\n  attributes/{i}:\n    actions: [{{key: env, value: prod, action: upsert}}]\n"
        ));
        i += 1;
    }
    EffectiveConfig {
        config_map: Some(AgentConfigMap {
            config_map: [(
                String::new(),
                AgentConfigFile {
                    body: yaml.into(),
                    content_type: "text/yaml".into(),
                    role: String::new(),
                },
            )]
            .into(),
        }),
    }
}

fn full_status(seq: u64) -> AgentToServer {
    AgentToServer {
        instance_uid: Bytes::from_static(&UID),
        sequence_num: seq,
        capabilities: CAPS,
        agent_description: Some(description()),
        health: Some(health()),
        effective_config: Some(effective_config()),
        ..Default::default()
    }
}

fn heartbeat(seq: u64) -> AgentToServer {
    AgentToServer {
        instance_uid: Bytes::from_static(&UID),
        sequence_num: seq,
        capabilities: CAPS,
        ..Default::default()
    }
}

/// The record of an agent that has reported its full status and is at `seq`.
fn stored_at(seq: u64) -> AgentRecord {
    merge(None, InstanceUid::from_bytes(UID), &full_status(seq), NOW - 30_000)
}

/// One message through the core, from request body to reply bytes. The stored record is cloned
/// in because the server gets an owned copy from its cache.
fn handle(body: &Bytes, stored: &AgentRecord, config: &ServerConfig) -> Vec<u8> {
    let msg = AgentToServer::decode(body.clone()).expect("bench input decodes");
    let uid = validate(&msg).expect("bench input has a valid uid");
    let p = process(
        Some(stored.clone()),
        uid,
        &msg,
        NOW,
        None,
        || InstanceUid::from_bytes([1; 16]),
        config,
        Remote::NONE,
    )
    .expect("without an enrollment nothing is refused");
    black_box(&p.record);
    p.response.encode_to_vec()
}

fn bench(c: &mut Criterion) {
    let config = ServerConfig::default();
    let stored = stored_at(41);
    let cases = [("heartbeat", heartbeat(42)), ("full_status", full_status(42))];
    let mut group = c.benchmark_group("hot_path");
    group.throughput(Throughput::Elements(1));
    for (name, msg) in cases {
        let body = Bytes::from(msg.encode_to_vec());
        // The decision must be the steady-state one (no ReportFullState) for the numbers to mean
        // what they say.
        let reply = handle(&body, &stored, &config);
        let decoded = ServerToAgent::decode(&reply[..]).expect("reply decodes");
        assert_eq!(decoded.flags, 0, "{name} must not ask for full state");
        eprintln!("{name}: request {} B, reply {} B", body.len(), reply.len());
        group.bench_function(name, |b| {
            b.iter(|| handle(black_box(&body), black_box(&stored), &config))
        });
    }
    // The share of the above that is only copying the cached record (HashMaps of health and
    // config): the floor for any message against a fully reported agent.
    group.bench_function("stored_record_clone", |b| b.iter(|| black_box(&stored).clone()));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
