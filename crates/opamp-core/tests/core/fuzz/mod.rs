//! Fuzz harnesses of the core's agent input (see `fuzz-support` and docs/fuzzing.md): the
//! `agent_to_server` target (decode, validate, process) and the `redact` target (effective-config
//! bodies through the YAML parser). Each runs its corpus, structured values and mutations for
//! `OPAMPD_FUZZ_SECS`; the oracles are the submodules, shared with the `cargo fuzz` targets.

pub mod agent_to_server;
pub mod redact;

use std::cell::Cell;
use std::sync::Arc;

use fuzz_support::{Fuzz, arb, sync_seeds};
use opamp_core::redact::redacted_json;
use opamp_core::validate;
use opamp_proto::v1::{AgentToServer, AnyValue, ArrayValue, any_value};
use opamp_proto::{Bytes, Message, agent_flags};

use crate::support::{UID, config_file, full_with, health, heartbeat};

/// Protobuf tags of `AgentToServer` and a few nested ones, for the mutator to splice in.
const PROTO_WORDS: &[&[u8]] = &[
    &[0x0a, 0x10],
    &[0x10, 0x01],
    &[0x1a, 0x00],
    &[0x2a, 0x00],
    &[0x32, 0x02, 0x0a, 0x00],
    &[0x4a, 0x00],
    &[0x50, 0x01],
    &[0x72, 0x00],
    &[0xff, 0xff, 0xff, 0xff, 0x0f],
];

const YAML_WORDS: &[&[u8]] = &[
    b": ",
    b"- ",
    b"{",
    b"}",
    b"[",
    b"]",
    b", ",
    b"&a ",
    b"*a",
    b"!!str ",
    b"!!binary ",
    b"? ",
    b"---\n",
    b"...\n",
    b"|\n  ",
    b">-\n  ",
    b"\"",
    b"'",
    b"\\u00e9",
    b"\\x85",
    b"\t",
    b"\n  ",
    b"# ",
    b"%YAML 1.2\n---\n",
    b"<<: *a\n",
    b"password: ",
    b"{name: Authorization, value: x}",
    b"https://user:pw@host/",
    b"-----BEGIN PRIVATE KEY-----",
    b"\xc2\x85",
    b"\xe2\x80\xa8",
    b"\xef\xbb\xbf",
];

const COLLECTOR_YAML: &str = "\
receivers:
  otlp:
    protocols:
      grpc: {endpoint: 0.0.0.0:4317}
exporters:
  otlphttp:
    endpoint: https://collector:secret-pw@otlp.example.com:4318
    headers:
      api-key: SECRET-1
      x-tenant: t1
    tls: {insecure: false, ca_file: /etc/ca.pem}
  elasticsearch:
    endpoints: [https://es:9200]
    auth: {authenticator: basicauth}
    user: elastic
    password: SECRET-2
extensions:
  basicauth:
    client_auth: {username: elastic, password: SECRET-3}
  headers_setter:
    headers:
      - {name: Authorization, value: Bearer SECRET-4}
      - {name: x-scope, value: tenant-1}
service:
  pipelines:
    logs: {receivers: [otlp], exporters: [otlphttp, elasticsearch]}
";

/// Nested `AnyValue` arrays `depth` deep in an identifying attribute: around prost's recursion
/// limit (100) one side decodes and the other is an error.
fn nested_attribute(depth: usize) -> Vec<u8> {
    let mut value = AnyValue { value: Some(any_value::Value::StringValue("leaf".into())) };
    for _ in 0..depth {
        value = AnyValue {
            value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![value] })),
        };
    }
    let mut msg = heartbeat(1);
    msg.agent_description = Some(opamp_proto::v1::AgentDescription {
        identifying_attributes: vec![opamp_proto::v1::KeyValue {
            key: "deep".into(),
            value: Some(value),
        }],
        non_identifying_attributes: vec![],
    });
    msg.encode_to_vec()
}

fn agent_to_server_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut full = full_with(7, u64::MAX);
    full.effective_config = Some(config_file(COLLECTOR_YAML));
    full.health = Some(opamp_proto::v1::ComponentHealth {
        component_health_map: [("pipeline:logs".to_owned(), health(false, "StatusPermanentError"))]
            .into(),
        ..health(true, "StatusRecoverableError")
    });
    let mut disconnect = heartbeat(8);
    disconnect.agent_disconnect = Some(Default::default());
    let mut reenroll = heartbeat(9);
    reenroll.flags = agent_flags::REQUEST_INSTANCE_UID;
    let mut short_uid = heartbeat(1);
    short_uid.instance_uid = Bytes::copy_from_slice(&UID.as_bytes()[..15]);
    let mut wrapping = heartbeat(u64::MAX);
    wrapping.capabilities = 0;
    // field 3 (agent_description) claiming 2^62 bytes
    let huge_length = vec![0x1a, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40];
    vec![
        ("full-status", full.encode_to_vec()),
        ("heartbeat", heartbeat(3).encode_to_vec()),
        ("disconnect", disconnect.encode_to_vec()),
        ("request-instance-uid", reenroll.encode_to_vec()),
        ("uid-15-bytes", short_uid.encode_to_vec()),
        ("sequence-max", wrapping.encode_to_vec()),
        ("empty", Vec::new()),
        ("nested-45", nested_attribute(45)),
        ("nested-60", nested_attribute(60)),
        ("huge-length", huge_length),
    ]
}

fn redact_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let laughs = {
        let mut s = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (i, prev) in ["a", "b", "c", "d", "e", "f"].iter().enumerate() {
            let name = ["b", "c", "d", "e", "f", "g"][i];
            s.push_str(&format!("{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        s
    };
    let text: Vec<(&'static str, String)> = vec![
        ("collector", COLLECTOR_YAML.into()),
        ("json", r#"{"exporters":{"otlp":{"headers":{"authorization":"Bearer x"},"endpoint":"https://u:p@h:4317"}},"n":[1,2.5,true,null]}"#.into()),
        ("flow-sequence", "[{password: a}, [b, c], {token: [d, [e]]}, ~]".into()),
        ("anchors", "base: &b {endpoint: x, tls: {insecure: true}}\ncopy: *b\nsecret: &s hunter2\nrefs: [*s]\n".into()),
        ("billion-laughs", laughs),
        ("deep", format!("{}x{}", "[".repeat(70), "]".repeat(70))),
        ("recursive-alias", "a: &x [1, *x]\n".into()),
        ("two-documents", "a: 1\n---\nb: 2\n".into()),
        ("scalar", "just a string".into()),
        ("complex-key", "? [a, b]\n: c\n".into()),
        ("tags", "a: !!str 123\nb: !custom {x: 1}\nc: !!binary aGVsbG8=\nd: !!int \"7\"\n".into()),
        ("numbers", "a: 0o17\nb: 0x1F\nc: .inf\nd: -.inf\ne: .nan\nf: 1e400\ng: 9223372036854775808\nh: -0.0\ni: 1_000\n".into()),
        ("block-scalars", "cert: |\n  -----BEGIN EC PRIVATE KEY-----\n  abc\n  -----END EC PRIVATE KEY-----\nnote: >-\n  folded\n  text\n".into()),
        ("two-urls", "endpoints: \"http://a:1/x https://user:pw@b:2/y\"\n".into()),
        ("headers", "headers:\n  - name: X-API-Key\n    value: k1\n  - NAME: Cookie\n    Value: c1\n".into()),
        ("line-separators", "a: \"x\\u2028y\\x85z\\ufeff\"\nb: \"\\t\\u0001\"\n".into()),
        ("duplicate-keys", "a: 1\na: 2\nA: 3\n1: x\n\"1\": y\n".into()),
        ("empty", String::new()),
    ];
    let mut seeds: Vec<(&'static str, Vec<u8>)> =
        text.into_iter().map(|(name, s)| (name, s.into_bytes())).collect();
    seeds.push(("not-utf8", b"a: \xff\xfe\n".to_vec()));
    seeds.push(("alias-amplifier", alias_amplifier(16 << 10, 1000)));
    seeds.push(("float-amplifier", float_amplifier()));
    seeds
}

#[test]
fn fuzz_agent_to_server() {
    let seeds = agent_to_server_seeds().into_iter().map(|(_, bytes)| bytes);
    let stats = Fuzz::new("agent_to_server").seeds(seeds).dictionary(PROTO_WORDS).run(
        agent_to_server::check,
        |u| {
            let msg = arb::agent_to_server(u)?;
            let bytes = msg.encode_to_vec();
            let decoded = AgentToServer::decode(bytes.as_slice());
            assert_eq!(decoded.as_ref(), Ok(&msg), "decode(encode(x)) == x");
            if let Ok(uid) = validate(&msg) {
                let stored = if u.arbitrary()? { Some(arb::agent_record(u)?) } else { None };
                let enrollment =
                    if u.arbitrary()? { Some(Arc::new(arb::enrollment(u)?)) } else { None };
                let now = arb::timestamp(u)?;
                agent_to_server::check_process(stored, uid, &msg, now, enrollment.as_ref());
            }
            Ok(Some(bytes))
        },
    );
    assert!(stats.accepted > 0);
}

#[test]
fn fuzz_redact() {
    let parsed = Cell::new(0u64);
    let seeds = redact_seeds().into_iter().map(|(_, bytes)| bytes);
    let stats = Fuzz::new("redact").seeds(seeds).dictionary(YAML_WORDS).max_len(16 << 10).run(
        redact::check,
        |u| {
            let config = arb::yaml_config(u)?;
            if let Some(out) = redacted_json(config.text.as_bytes()) {
                parsed.set(parsed.get() + 1);
                for secret in &config.secrets {
                    assert!(
                        !out.contains(secret.as_str()),
                        "{secret} kept:\n{}\n->\n{out}",
                        config.text
                    );
                }
            }
            Ok(Some(config.text.into_bytes()))
        },
    );
    // the generator is meant to write YAML that parses: most of it must
    assert!(
        stats.structured < 100 || parsed.get() * 2 > stats.structured,
        "only {} of {} generated configs parsed",
        parsed.get(),
        stats.structured
    );
}

#[test]
fn fuzz_corpus_holds_the_core_seeds() {
    sync_seeds("agent_to_server", &agent_to_server_seeds());
    sync_seeds("redact", &redact_seeds());
}

// Regressions: inputs a fuzz run failed on, spelled out (the corpus replays them too).

#[test]
fn fuzz_regression_every_url_loses_its_user_info() {
    // `redact`, corpus seed-two-urls: only the first URL of a string lost its user info
    let body = br#"endpoints: "http://a:1/x https://user:pw@b:2/y a://b://u:p@h""#;
    assert_eq!(
        redacted_json(body).as_deref(),
        Some(
            r#"{"endpoints":"http://a:1/x https://REDACTED:REDACTED@b:2/y a://b://REDACTED:REDACTED@h"}"#
        )
    );
    assert!(redact::check(body));
}

/// `a: &a "<len x's>"` and a list of `copies` aliases to it.
fn alias_amplifier(len: usize, copies: usize) -> Vec<u8> {
    let aliases = vec!["*a"; copies].join(", ");
    format!("a: &a \"{}\"\nb: [{aliases}]\n", "x".repeat(len)).into_bytes()
}

#[test]
fn fuzz_regression_aliases_cannot_amplify_a_body_past_the_bounds() {
    // `redact`, corpus seed-alias-amplifier: aliases were bounded by node count only, so a 20 KiB
    // body of one 16 KiB string and 1000 aliases to it became 16 MiB of JSON (and a 1 MiB body
    // of a 512 KiB string and 100k aliases, 50 GiB)
    let body = alias_amplifier(16 << 10, 1000);
    let out = redacted_json(&body);
    assert!(out.as_ref().is_none_or(|o| o.len() < 1 << 20), "{:?} bytes", out.map(|o| o.len()));
    redact::check(&body);
    // a few copies of a small value are what aliases are for
    let small = alias_amplifier(16, 8);
    assert_eq!(redacted_json(&small).map(|o| o.matches("xxxx").count() > 8), Some(true));
}

/// A list of 1000 `1e300`.
fn float_amplifier() -> Vec<u8> {
    format!("a: [{}]\n", vec!["1e300"; 1000].join(", ")).into_bytes()
}

#[test]
fn fuzz_regression_a_float_is_written_no_longer_than_it_was_read() {
    // `redact`, corpus seed-float-amplifier: `1e300` was written as 301 digits, so a list of
    // them grew fifty-fold
    let body = float_amplifier();
    let out = redacted_json(&body).expect("a list of floats is kept");
    assert!(out.len() <= body.len() + 16, "{} bytes from {}", out.len(), body.len());
    assert!(redact::check(&body));
}
