//! The generated wire types against the OpAMP wire facts: fully populated messages survive an
//! encode/decode round trip, and a few field numbers and wire types are pinned on raw bytes so a
//! typo in proto/ cannot go unnoticed (a round trip alone would agree with a wrong schema).

use std::collections::BTreeSet;

use opamp_proto::v1::*;
use opamp_proto::{Bytes, Message};

fn s(v: &str) -> String {
    v.to_owned()
}

fn b(v: &'static [u8]) -> Bytes {
    Bytes::from_static(v)
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue { key: s(key), value: Some(AnyValue { value: Some(value) }) }
}

/// One KeyValue per AnyValue variant, with arrays and kvlists nesting the others.
fn every_any_value() -> Vec<KeyValue> {
    use any_value::Value::*;
    vec![
        kv("string", StringValue(s("collector"))),
        kv("bool", BoolValue(true)),
        kv("int", IntValue(-42)),
        kv("double", DoubleValue(2.5)),
        kv("bytes", BytesValue(b(b"\x00\x01\xff"))),
        kv(
            "array",
            ArrayValue(opamp_proto::v1::ArrayValue {
                values: vec![
                    AnyValue { value: Some(IntValue(1)) },
                    AnyValue { value: Some(StringValue(s("two"))) },
                    AnyValue { value: None },
                ],
            }),
        ),
        kv(
            "kvlist",
            KvlistValue(KeyValueList {
                values: vec![kv("inner", BoolValue(false)), kv("deeper", DoubleValue(-0.0))],
            }),
        ),
        KeyValue { key: s("no value"), value: None },
    ]
}

fn headers() -> Headers {
    Headers {
        headers: vec![
            Header { key: s("authorization"), value: s("Bearer x") },
            Header { key: s("x-tenant"), value: s("t1") },
        ],
    }
}

fn certificate() -> TlsCertificate {
    TlsCertificate { cert: b(b"cert"), private_key: b(b"key"), ca_cert: b(b"ca") }
}

fn tls() -> TlsConnectionSettings {
    TlsConnectionSettings {
        ca_pem_contents: s("-----BEGIN CERTIFICATE-----"),
        include_system_ca_certs_pool: true,
        insecure_skip_verify: true,
        min_version: s("1.2"),
        max_version: s("1.3"),
        cipher_suites: vec![s("TLS_AES_128_GCM_SHA256"), s("TLS_AES_256_GCM_SHA384")],
    }
}

fn proxy() -> ProxyConnectionSettings {
    ProxyConnectionSettings { url: s("http://proxy:3128"), connect_headers: Some(headers()) }
}

fn telemetry(endpoint: &str) -> TelemetryConnectionSettings {
    TelemetryConnectionSettings {
        destination_endpoint: s(endpoint),
        headers: Some(headers()),
        certificate: Some(certificate()),
        tls: Some(tls()),
        proxy: Some(proxy()),
    }
}

fn config_map() -> AgentConfigMap {
    AgentConfigMap {
        config_map: [
            (
                s(""),
                AgentConfigFile {
                    body: b(b"receivers: {}\n"),
                    content_type: s("text/yaml"),
                    role: s("main"),
                },
            ),
            (
                s("extra.json"),
                AgentConfigFile {
                    body: b(b"{}"),
                    content_type: s("application/json"),
                    role: String::new(),
                },
            ),
        ]
        .into(),
    }
}

fn health() -> ComponentHealth {
    let leaf = ComponentHealth {
        healthy: false,
        start_time_unix_nano: u64::MAX,
        last_error: s("connection refused"),
        status: s("StatusRecoverableError"),
        status_time_unix_nano: 1,
        component_health_map: Default::default(),
        attributes: vec![kv("retries", any_value::Value::IntValue(3))],
    };
    ComponentHealth {
        healthy: true,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        last_error: s("none"),
        status: s("StatusOK"),
        status_time_unix_nano: 1_700_000_001_000_000_000,
        component_health_map: [
            (
                s("pipeline:traces"),
                ComponentHealth {
                    component_health_map: [(s("exporter:otlp"), leaf.clone())].into(),
                    ..leaf.clone()
                },
            ),
            (s("receiver:otlp"), ComponentHealth { healthy: true, ..Default::default() }),
        ]
        .into(),
        attributes: every_any_value(),
    }
}

fn agent_to_server() -> AgentToServer {
    AgentToServer {
        instance_uid: b(&[0x01; 16]),
        sequence_num: 12_345,
        agent_description: Some(AgentDescription {
            identifying_attributes: every_any_value(),
            non_identifying_attributes: vec![kv(
                "os.type",
                any_value::Value::StringValue(s("linux")),
            )],
        }),
        capabilities: 0xFFFF,
        health: Some(health()),
        effective_config: Some(EffectiveConfig { config_map: Some(config_map()) }),
        remote_config_status: Some(RemoteConfigStatus {
            last_remote_config_hash: b(b"rc-hash"),
            status: RemoteConfigStatuses::Failed as i32,
            error_message: s("bad yaml"),
        }),
        package_statuses: Some(PackageStatuses {
            packages: [(
                s("otelcol"),
                PackageStatus {
                    name: s("otelcol"),
                    agent_has_version: s("0.100.0"),
                    agent_has_hash: b(b"h-have"),
                    server_offered_version: s("0.101.0"),
                    server_offered_hash: b(b"h-offer"),
                    status: PackageStatusEnum::Downloading as i32,
                    error_message: s("slow"),
                    download_details: Some(PackageDownloadDetails {
                        download_percent: 42.5,
                        download_bytes_per_second: 1e6,
                    }),
                },
            )]
            .into(),
            server_provided_all_packages_hash: b(b"all"),
            error_message: s("partial"),
        }),
        agent_disconnect: Some(AgentDisconnect {}),
        flags: 1,
        connection_settings_request: Some(ConnectionSettingsRequest {
            opamp: Some(OpAmpConnectionSettingsRequest {
                certificate_request: Some(CertificateRequest { csr: b(b"csr-pem") }),
            }),
        }),
        custom_capabilities: Some(CustomCapabilities {
            capabilities: vec![s("io.opentelemetry.pprof"), s("com.example.x")],
        }),
        custom_message: Some(CustomMessage {
            capability: s("io.opentelemetry.pprof"),
            r#type: s("profile"),
            data: b(b"\x00data"),
        }),
        available_components: Some(AvailableComponents {
            components: [(
                s("receivers"),
                ComponentDetails {
                    metadata: vec![kv("count", any_value::Value::IntValue(2))],
                    sub_component_map: [(
                        s("otlp"),
                        ComponentDetails {
                            metadata: vec![kv("version", any_value::Value::StringValue(s("1")))],
                            sub_component_map: Default::default(),
                        },
                    )]
                    .into(),
                },
            )]
            .into(),
            hash: b(b"comp-hash"),
        }),
        connection_settings_status: Some(ConnectionSettingsStatus {
            last_connection_settings_hash: b(b"cs-hash"),
            status: ConnectionSettingsStatuses::Applying as i32,
            error_message: s("pending"),
        }),
    }
}

fn server_to_agent() -> ServerToAgent {
    ServerToAgent {
        instance_uid: b(&[0x02; 16]),
        error_response: Some(ServerErrorResponse {
            r#type: ServerErrorResponseType::Unavailable as i32,
            error_message: s("try later"),
            details: Some(server_error_response::Details::RetryInfo(RetryInfo {
                retry_after_nanoseconds: 30_000_000_000,
            })),
        }),
        remote_config: Some(AgentRemoteConfig {
            config: Some(config_map()),
            config_hash: b(b"desired"),
        }),
        connection_settings: Some(ConnectionSettingsOffers {
            hash: b(b"offer-hash"),
            opamp: Some(OpAmpConnectionSettings {
                destination_endpoint: s("wss://opamp.example/v1/opamp"),
                headers: Some(headers()),
                certificate: Some(certificate()),
                heartbeat_interval_seconds: 30,
                tls: Some(tls()),
                proxy: Some(proxy()),
            }),
            own_metrics: Some(telemetry("https://metrics")),
            own_traces: Some(telemetry("https://traces")),
            own_logs: Some(telemetry("https://logs")),
            other_connections: [(
                s("kafka"),
                OtherConnectionSettings {
                    destination_endpoint: s("kafka:9092"),
                    headers: Some(headers()),
                    certificate: Some(certificate()),
                    other_settings: [(s("topic"), s("otlp")), (s("acks"), s("all"))].into(),
                    tls: Some(tls()),
                    proxy: Some(proxy()),
                },
            )]
            .into(),
        }),
        packages_available: Some(PackagesAvailable {
            packages: [(
                s("otelcol"),
                PackageAvailable {
                    r#type: PackageType::Addon as i32,
                    version: s("0.101.0"),
                    file: Some(DownloadableFile {
                        download_url: s("https://dl/otelcol.tgz"),
                        content_hash: b(b"sha256"),
                        signature: b(b"sig"),
                        headers: Some(headers()),
                    }),
                    hash: b(b"pkg-hash"),
                },
            )]
            .into(),
            all_packages_hash: b(b"all-pkgs"),
        }),
        flags: 3,
        capabilities: 0x7F,
        agent_identification: Some(AgentIdentification { new_instance_uid: b(&[0x03; 16]) }),
        // Restart is enum value 0, which proto3 would not put on the wire; presence of the
        // sub-message still must survive.
        command: Some(ServerToAgentCommand { r#type: CommandType::Restart as i32 }),
        custom_capabilities: Some(CustomCapabilities { capabilities: vec![s("com.example.y")] }),
        custom_message: Some(CustomMessage {
            capability: s("com.example.y"),
            r#type: s("ping"),
            data: b(b"pong"),
        }),
    }
}

fn varint(buf: &mut &[u8]) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (byte, rest) = buf.split_first().expect("truncated varint");
        *buf = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
    }
    panic!("varint longer than 10 bytes")
}

/// The field numbers present at the top level of an encoded message, read from raw bytes.
fn top_level_fields(mut buf: &[u8]) -> BTreeSet<u64> {
    let mut fields = BTreeSet::new();
    while !buf.is_empty() {
        let key = varint(&mut buf);
        fields.insert(key >> 3);
        match key & 7 {
            0 => {
                varint(&mut buf);
            }
            1 => buf = &buf[8..],
            2 => {
                let len = varint(&mut buf) as usize;
                buf = &buf[len..];
            }
            5 => buf = &buf[4..],
            other => panic!("unexpected wire type {other}"),
        }
    }
    fields
}

#[test]
fn fully_populated_agent_to_server_round_trips() {
    let msg = agent_to_server();
    let bytes = msg.encode_to_vec();
    assert_eq!(AgentToServer::decode(&bytes[..]), Ok(msg));
}

#[test]
fn fully_populated_agent_to_server_puts_every_field_on_the_wire() {
    let bytes = agent_to_server().encode_to_vec();
    assert_eq!(top_level_fields(&bytes), (1..=15).collect());
}

#[test]
fn fully_populated_server_to_agent_round_trips() {
    let msg = server_to_agent();
    let bytes = msg.encode_to_vec();
    assert_eq!(ServerToAgent::decode(&bytes[..]), Ok(msg));
}

#[test]
fn fully_populated_server_to_agent_puts_every_field_on_the_wire() {
    let bytes = server_to_agent().encode_to_vec();
    assert_eq!(top_level_fields(&bytes), (1..=11).collect());
}

#[test]
fn round_trip_survives_the_websocket_frame() {
    let bytes = agent_to_server().encode_to_vec();
    let payload = opamp_proto::framing::decode(opamp_proto::framing::encode(&bytes)).unwrap();
    assert_eq!(AgentToServer::decode(payload), Ok(agent_to_server()));
}

#[test]
fn field_numbers_and_wire_types_match_the_spec() {
    let rows: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        (
            "AgentToServer.instance_uid = 1, bytes",
            AgentToServer { instance_uid: b(&[7, 8]), ..Default::default() }.encode_to_vec(),
            vec![0x0a, 0x02, 7, 8],
        ),
        (
            "AgentToServer.sequence_num = 2, varint",
            AgentToServer { sequence_num: 5, ..Default::default() }.encode_to_vec(),
            vec![0x10, 0x05],
        ),
        (
            "AgentToServer.capabilities = 4, varint",
            AgentToServer { capabilities: 0x8001, ..Default::default() }.encode_to_vec(),
            vec![0x20, 0x81, 0x80, 0x02],
        ),
        (
            "AgentToServer.agent_disconnect = 9, present and empty",
            AgentToServer { agent_disconnect: Some(AgentDisconnect {}), ..Default::default() }
                .encode_to_vec(),
            vec![0x4a, 0x00],
        ),
        (
            "AgentToServer.flags = 10, varint",
            AgentToServer { flags: 1, ..Default::default() }.encode_to_vec(),
            vec![0x50, 0x01],
        ),
        (
            "AgentToServer.available_components = 14",
            AgentToServer {
                available_components: Some(AvailableComponents::default()),
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x72, 0x00],
        ),
        (
            "AgentToServer.connection_settings_status = 15",
            AgentToServer {
                connection_settings_status: Some(ConnectionSettingsStatus::default()),
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x7a, 0x00],
        ),
        (
            "ComponentHealth.start_time_unix_nano = 2, fixed64",
            ComponentHealth { start_time_unix_nano: 1, ..Default::default() }.encode_to_vec(),
            vec![0x11, 1, 0, 0, 0, 0, 0, 0, 0],
        ),
        (
            "ComponentHealth.status_time_unix_nano = 5, fixed64",
            ComponentHealth { status_time_unix_nano: 0x0102, ..Default::default() }.encode_to_vec(),
            vec![0x29, 2, 1, 0, 0, 0, 0, 0, 0],
        ),
        (
            "ServerToAgent.error_response = 2",
            ServerToAgent {
                error_response: Some(ServerErrorResponse::default()),
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x12, 0x00],
        ),
        (
            "ServerToAgent.flags = 6, varint",
            ServerToAgent { flags: 1, ..Default::default() }.encode_to_vec(),
            vec![0x30, 0x01],
        ),
        (
            "ServerToAgent.capabilities = 7, varint",
            ServerToAgent { capabilities: 5, ..Default::default() }.encode_to_vec(),
            vec![0x38, 0x05],
        ),
        (
            "ServerToAgent.agent_identification = 8",
            ServerToAgent {
                agent_identification: Some(AgentIdentification { new_instance_uid: b(&[9]) }),
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x42, 0x03, 0x0a, 0x01, 9],
        ),
        (
            "ServerErrorResponse type = 1 and retry_info = 3 (RetryInfo field 1)",
            ServerErrorResponse {
                r#type: ServerErrorResponseType::Unavailable as i32,
                error_message: String::new(),
                details: Some(server_error_response::Details::RetryInfo(RetryInfo {
                    retry_after_nanoseconds: 1,
                })),
            }
            .encode_to_vec(),
            vec![0x08, 0x02, 0x1a, 0x02, 0x08, 0x01],
        ),
        (
            "OpAMPConnectionSettings.heartbeat_interval_seconds = 4, varint",
            OpAmpConnectionSettings { heartbeat_interval_seconds: 30, ..Default::default() }
                .encode_to_vec(),
            vec![0x20, 30],
        ),
        (
            "AnyValue.int_value = 3 (int64) and double_value = 4 (fixed64)",
            [
                AnyValue { value: Some(any_value::Value::IntValue(1)) }.encode_to_vec(),
                AnyValue { value: Some(any_value::Value::DoubleValue(1.0)) }.encode_to_vec(),
            ]
            .concat(),
            vec![0x18, 0x01, 0x21, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f],
        ),
    ];
    let mut failures = Vec::new();
    for (name, got, want) in rows {
        if got != want {
            failures.push(format!("{name}: got {got:02x?}, want {want:02x?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn enum_and_flag_values_match_the_spec() {
    use opamp_proto::{agent_caps, agent_flags, server_caps, server_flags};
    assert_eq!(agent_caps::REPORTS_STATUS, 0x1);
    assert_eq!(agent_caps::REPORTS_EFFECTIVE_CONFIG, 0x4);
    assert_eq!(agent_caps::REPORTS_PACKAGE_STATUSES, 0x10);
    assert_eq!(agent_caps::REPORTS_HEALTH, 0x800);
    assert_eq!(agent_caps::REPORTS_REMOTE_CONFIG, 0x1000);
    assert_eq!(agent_caps::REPORTS_HEARTBEAT, 0x2000);
    assert_eq!(agent_caps::REPORTS_AVAILABLE_COMPONENTS, 0x4000);
    assert_eq!(agent_caps::REPORTS_CONNECTION_SETTINGS_STATUS, 0x8000);
    // the 16 named bits are exactly 0x1..=0x8000, lowest first
    let bits: Vec<u64> = agent_caps::NAMED.iter().map(|(bit, _)| *bit).collect();
    assert_eq!(bits, (0..16).map(|i| 1u64 << i).collect::<Vec<_>>());
    assert_eq!(server_caps::ACCEPTS_STATUS, 0x1);
    assert_eq!(server_caps::ACCEPTS_EFFECTIVE_CONFIG, 0x4);
    assert_eq!(server_caps::ACCEPTS_CONNECTION_SETTINGS_REQUEST, 0x40);
    assert_eq!(agent_flags::REQUEST_INSTANCE_UID, 0x1);
    assert_eq!(server_flags::REPORT_FULL_STATE, 0x1);
    assert_eq!(server_flags::REPORT_AVAILABLE_COMPONENTS, 0x2);
    assert_eq!(ServerErrorResponseType::BadRequest as i32, 1);
    assert_eq!(ServerErrorResponseType::Unavailable as i32, 2);
    assert_eq!(PackageStatusEnum::Downloading as i32, 4);
}

#[test]
fn capability_names_list_only_set_bits() {
    let names: Vec<_> = opamp_proto::agent_caps::names(0x1 | 0x4 | 1 << 40).collect();
    assert_eq!(names, ["ReportsStatus", "ReportsEffectiveConfig"]);
}
