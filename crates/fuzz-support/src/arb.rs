//! Structured inputs from `arbitrary` bytes: every OpAMP message an agent can send, the record a
//! store keeps, and effective-config YAML with planted secrets. Values lean on a dictionary of
//! the names the code looks at (`service.name`, `tags`, `password`, ...) and on boundary values
//! (long multi-byte strings around the 1 KiB keyword cut, `u64::MAX` times and sequence numbers),
//! so random bytes reach the branches that matter instead of only the decoder.
//!
//! Doubles are never NaN: NaN is not equal to itself, and the round trips compare with `==`
//! (see [`scrub_nan`] for decoded input that may hold one).

use std::collections::HashMap;
use std::sync::Arc;

use arbitrary::{Result, Unstructured};
use opamp_core::redact::redact_effective_config;
use opamp_core::remote_config::{DesiredConfig, OfferedConfig};
use opamp_core::{AgentRecord, AgentStatus, Enrollment, UnenrollReason, Unenrolled};
use opamp_proto::v1::{self, any_value};
use opamp_proto::{Bytes, InstanceUid, agent_caps, agent_flags};

/// Nesting of generated attribute values and health/component maps: past the document's cut
/// (4), well under prost's recursion limit (100).
const MAX_DEPTH: usize = 6;

/// Names and values the code under test looks at.
pub const WORDS: &[&str] = &[
    "",
    "service.name",
    "service.version",
    "host.name",
    "host.id",
    "host.arch",
    "os.type",
    "os.description",
    "tags",
    "a, b,,a ,otelcol",
    "otelcol",
    "name",
    "value",
    "key",
    "routekey",
    "password",
    "api_key",
    "Authorization",
    "auth",
    "endpoint",
    "https://user:pw@example.com:4318/v1",
    "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----",
    "StatusOK",
    "StatusRecoverableError",
    "StatusPermanentError",
    "opampd",
    "OPAMP",
    "é",
    "\u{0}",
    "\"",
    "\\",
    "\u{2028}",
    "\u{feff}",
];

/// A string: a dictionary word, a long multi-byte run crossing the keyword cut, or any text.
pub fn string(u: &mut Unstructured<'_>) -> Result<String> {
    Ok(match u.int_in_range(0..=9u8)? {
        0..=3 => (*u.choose(WORDS)?).to_owned(),
        4 => {
            let unit = *u.choose(&["x", "é", "\u{20ac}", "\u{1f600}"])?;
            unit.repeat(u.int_in_range(250..=1100)?)
        }
        _ => {
            let s: String = u.arbitrary()?;
            s.chars().take(80).collect()
        }
    })
}

pub fn bytes(u: &mut Unstructured<'_>) -> Result<Bytes> {
    let len = u.int_in_range(0..=40usize)?.min(u.len());
    Ok(Bytes::copy_from_slice(u.bytes(len)?))
}

/// A count for a collection: small, and 0 once the input runs out.
fn count(u: &mut Unstructured<'_>, max: usize) -> Result<usize> {
    u.int_in_range(0..=max)
}

fn some<T>(
    u: &mut Unstructured<'_>,
    f: impl FnOnce(&mut Unstructured<'_>) -> Result<T>,
) -> Result<Option<T>> {
    if u.arbitrary()? { f(u).map(Some) } else { Ok(None) }
}

/// Any non-NaN double, boundary values and infinities included.
pub fn double(u: &mut Unstructured<'_>) -> Result<f64> {
    let f = match u.int_in_range(0..=3u8)? {
        0 => *u.choose(&[0.0, -0.0, 1.5, f64::MAX, f64::MIN_POSITIVE, f64::INFINITY])?,
        _ => u.arbitrary::<f64>()?,
    };
    Ok(if f.is_nan() { f64::NEG_INFINITY } else { f })
}

/// A `u64` that is often a boundary.
pub fn number(u: &mut Unstructured<'_>) -> Result<u64> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 => *u.choose(&[0, 1, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX - 1, u64::MAX])?,
        1 => u.int_in_range(0..=1000)?,
        _ => u.arbitrary()?,
    })
}

/// Milliseconds since the epoch: mostly plausible, sometimes 0 or far past year 9999.
pub fn timestamp(u: &mut Unstructured<'_>) -> Result<u64> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 => *u.choose(&[0, 253_402_300_799_999, 253_402_300_800_000, u64::MAX])?,
        1 => u.arbitrary()?,
        _ => u.int_in_range(1_600_000_000_000..=1_900_000_000_000)?,
    })
}

pub fn instance_uid(u: &mut Unstructured<'_>) -> Result<InstanceUid> {
    Ok(InstanceUid::from_bytes(u.arbitrary()?))
}

pub fn any_value(u: &mut Unstructured<'_>, depth: usize) -> Result<v1::AnyValue> {
    use any_value::Value;
    let nested = depth < MAX_DEPTH;
    let value = match u.int_in_range(0..=7u8)? {
        0 => Some(Value::StringValue(string(u)?)),
        1 => Some(Value::BoolValue(u.arbitrary()?)),
        2 => Some(Value::IntValue(u.arbitrary()?)),
        3 => Some(Value::DoubleValue(double(u)?)),
        4 => Some(Value::BytesValue(bytes(u)?)),
        5 if nested => Some(Value::ArrayValue(v1::ArrayValue {
            values: (0..count(u, 4)?).map(|_| any_value(u, depth + 1)).collect::<Result<_>>()?,
        })),
        6 if nested => {
            Some(Value::KvlistValue(v1::KeyValueList { values: key_values(u, depth + 1)? }))
        }
        _ => None,
    };
    Ok(v1::AnyValue { value })
}

pub fn key_values(u: &mut Unstructured<'_>, depth: usize) -> Result<Vec<v1::KeyValue>> {
    (0..count(u, 6)?)
        .map(|_| {
            let key = string(u)?;
            let value = some(u, |u| any_value(u, depth))?;
            Ok(v1::KeyValue { key, value })
        })
        .collect()
}

pub fn agent_description(u: &mut Unstructured<'_>) -> Result<v1::AgentDescription> {
    Ok(v1::AgentDescription {
        identifying_attributes: key_values(u, 0)?,
        non_identifying_attributes: key_values(u, 0)?,
    })
}

pub fn component_health(u: &mut Unstructured<'_>, depth: usize) -> Result<v1::ComponentHealth> {
    let mut component_health_map = HashMap::new();
    if depth < MAX_DEPTH {
        for _ in 0..count(u, 3)? {
            component_health_map.insert(string(u)?, component_health(u, depth + 1)?);
        }
    }
    Ok(v1::ComponentHealth {
        healthy: u.arbitrary()?,
        start_time_unix_nano: number(u)?,
        last_error: string(u)?,
        status: string(u)?,
        status_time_unix_nano: number(u)?,
        component_health_map,
        attributes: key_values(u, depth)?,
    })
}

/// An effective config as an agent sends it: bodies of generated YAML (secrets included), JSON,
/// or any bytes.
pub fn effective_config(u: &mut Unstructured<'_>) -> Result<v1::EffectiveConfig> {
    let config_map = some(u, |u| {
        let mut files = HashMap::new();
        for _ in 0..count(u, 3)? {
            let name = if u.ratio(1, 2)? { String::new() } else { string(u)? };
            let body = if u.ratio(3, 4)? { Bytes::from(yaml_config(u)?.text) } else { bytes(u)? };
            let content_type =
                (*u.choose(&["", "text/yaml", "application/json", "application/x-yaml"])?).into();
            files.insert(name, v1::AgentConfigFile { body, content_type, role: string(u)? });
        }
        Ok(v1::AgentConfigMap { config_map: files })
    })?;
    Ok(v1::EffectiveConfig { config_map })
}

fn status_code(u: &mut Unstructured<'_>) -> Result<i32> {
    // known values mostly; prost keeps unknown enum numbers as they are
    if u.ratio(7, 8)? { u.int_in_range(0..=3) } else { u.arbitrary() }
}

pub fn remote_config_status(u: &mut Unstructured<'_>) -> Result<v1::RemoteConfigStatus> {
    Ok(v1::RemoteConfigStatus {
        last_remote_config_hash: bytes(u)?,
        status: status_code(u)?,
        error_message: string(u)?,
    })
}

pub fn package_statuses(u: &mut Unstructured<'_>) -> Result<v1::PackageStatuses> {
    let mut packages = HashMap::new();
    for _ in 0..count(u, 3)? {
        let status = v1::PackageStatus {
            name: string(u)?,
            agent_has_version: string(u)?,
            agent_has_hash: bytes(u)?,
            server_offered_version: string(u)?,
            server_offered_hash: bytes(u)?,
            status: status_code(u)?,
            error_message: string(u)?,
            download_details: some(u, |u| {
                Ok(v1::PackageDownloadDetails {
                    download_percent: double(u)?,
                    download_bytes_per_second: double(u)?,
                })
            })?,
        };
        packages.insert(string(u)?, status);
    }
    Ok(v1::PackageStatuses {
        packages,
        server_provided_all_packages_hash: bytes(u)?,
        error_message: string(u)?,
    })
}

pub fn component_details(u: &mut Unstructured<'_>, depth: usize) -> Result<v1::ComponentDetails> {
    let mut sub_component_map = HashMap::new();
    if depth < MAX_DEPTH {
        for _ in 0..count(u, 3)? {
            sub_component_map.insert(string(u)?, component_details(u, depth + 1)?);
        }
    }
    Ok(v1::ComponentDetails { metadata: key_values(u, depth)?, sub_component_map })
}

pub fn available_components(u: &mut Unstructured<'_>) -> Result<v1::AvailableComponents> {
    let mut components = HashMap::new();
    for _ in 0..count(u, 3)? {
        components.insert(string(u)?, component_details(u, 0)?);
    }
    Ok(v1::AvailableComponents { components, hash: bytes(u)? })
}

pub fn connection_settings_status(
    u: &mut Unstructured<'_>,
) -> Result<v1::ConnectionSettingsStatus> {
    Ok(v1::ConnectionSettingsStatus {
        last_connection_settings_hash: bytes(u)?,
        status: status_code(u)?,
        error_message: string(u)?,
    })
}

pub fn custom_capabilities(u: &mut Unstructured<'_>) -> Result<v1::CustomCapabilities> {
    Ok(v1::CustomCapabilities {
        capabilities: (0..count(u, 4)?).map(|_| string(u)).collect::<Result<_>>()?,
    })
}

/// Capability bits: all, none, the reporting ones, or any `u64` (unknown bits included).
pub fn capabilities(u: &mut Unstructured<'_>) -> Result<u64> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 => 0,
        1 => agent_caps::NAMED.iter().fold(0, |acc, (bit, _)| acc | bit),
        2 => agent_caps::NAMED
            .iter()
            .map(|(bit, _)| Ok(if u.arbitrary()? { *bit } else { 0 }))
            .sum::<Result<u64>>()?,
        _ => u.arbitrary()?,
    })
}

/// Any message an agent can send: a valid 16-byte uid mostly, sometimes another length;
/// sequence numbers near 0 and `u64::MAX`; every sub-message present or not.
pub fn agent_to_server(u: &mut Unstructured<'_>) -> Result<v1::AgentToServer> {
    let instance_uid = if u.ratio(15, 16)? {
        Bytes::copy_from_slice(instance_uid(u)?.as_bytes())
    } else {
        bytes(u)?
    };
    Ok(v1::AgentToServer {
        instance_uid,
        sequence_num: number(u)?,
        agent_description: some(u, agent_description)?,
        capabilities: capabilities(u)?,
        health: some(u, |u| component_health(u, 0))?,
        effective_config: some(u, effective_config)?,
        remote_config_status: some(u, remote_config_status)?,
        package_statuses: some(u, package_statuses)?,
        agent_disconnect: if u.ratio(1, 8)? { Some(v1::AgentDisconnect {}) } else { None },
        flags: match u.int_in_range(0..=7u8)? {
            0 => agent_flags::REQUEST_INSTANCE_UID,
            1 => u.arbitrary()?,
            _ => 0,
        },
        connection_settings_request: some(u, |u| {
            Ok(v1::ConnectionSettingsRequest {
                opamp: some(u, |u| {
                    Ok(v1::OpAmpConnectionSettingsRequest {
                        certificate_request: some(u, |u| {
                            Ok(v1::CertificateRequest { csr: bytes(u)? })
                        })?,
                    })
                })?,
            })
        })?,
        custom_capabilities: some(u, custom_capabilities)?,
        custom_message: some(u, |u| {
            Ok(v1::CustomMessage { capability: string(u)?, r#type: string(u)?, data: bytes(u)? })
        })?,
        available_components: some(u, available_components)?,
        connection_settings_status: some(u, connection_settings_status)?,
    })
}

pub fn enrollment(u: &mut Unstructured<'_>) -> Result<Enrollment> {
    Ok(Enrollment {
        api_key_id: string(u)?,
        policy_id: (*u.choose(&["policy-a", "policy-b", ""])?).to_owned(),
        namespaces: (0..count(u, 3)?).map(|_| string(u)).collect::<Result<_>>()?,
    })
}

pub fn status(u: &mut Unstructured<'_>) -> Result<AgentStatus> {
    Ok(*u.choose(&[
        AgentStatus::Online,
        AgentStatus::Degraded,
        AgentStatus::Error,
        AgentStatus::Disconnected,
        AgentStatus::Offline,
    ])?)
}

/// A record as a store can hold it: any field values, and an effective config that went
/// through the redaction (`merge` never keeps a raw body). `adopted` is set sometimes, though
/// no store writes it: round trips compare with it cleared.
pub fn agent_record(u: &mut Unstructured<'_>) -> Result<AgentRecord> {
    Ok(AgentRecord {
        instance_uid: instance_uid(u)?,
        sequence_num: number(u)?,
        capabilities: capabilities(u)?,
        status: status(u)?,
        enrolled_at: timestamp(u)?,
        last_checkin: timestamp(u)?,
        enrollment: some(u, enrollment)?.map(Arc::new),
        unenrolled: some(u, |u| {
            Ok(Unenrolled { reason: UnenrollReason::Reenrolled, at: timestamp(u)? })
        })?,
        adopted: u.ratio(1, 8)?,
        agent_description: some(u, agent_description)?.map(Arc::new),
        health: some(u, |u| component_health(u, 0))?.map(Arc::new),
        effective_config: some(u, effective_config)?.map(|c| Arc::new(redact_effective_config(&c))),
        remote_config_status: some(u, remote_config_status)?.map(Arc::new),
        package_statuses: some(u, package_statuses)?.map(Arc::new),
        custom_capabilities: some(u, custom_capabilities)?.map(Arc::new),
        available_components: some(u, available_components)?.map(Arc::new),
        connection_settings_status: some(u, connection_settings_status)?.map(Arc::new),
        desired_config: some(u, |u| Ok(DesiredConfig { name: string(u)?, hash: u.arbitrary()? }))?
            .map(Arc::new),
        offered_config: some(u, |u| Ok(OfferedConfig { hash: u.arbitrary()?, at: timestamp(u)? }))?,
        published_at: timestamp(u)?,
    })
}

/// Replaces every NaN double in `msg` (a decoded one may hold any bits) by 0, so `==` can
/// compare round trips.
pub fn scrub_nan(msg: &mut v1::AgentToServer) {
    if let Some(d) = &mut msg.agent_description {
        scrub_description(d);
    }
    if let Some(h) = &mut msg.health {
        scrub_health(h);
    }
    if let Some(p) = &mut msg.package_statuses {
        scrub_packages(p);
    }
    if let Some(c) = &mut msg.available_components {
        scrub_components(c);
    }
}

/// [`scrub_nan`] for a record's sub-messages.
pub fn scrub_record_nan(r: &mut AgentRecord) {
    if let Some(d) = &mut r.agent_description {
        scrub_description(Arc::make_mut(d));
    }
    if let Some(h) = &mut r.health {
        scrub_health(Arc::make_mut(h));
    }
    if let Some(p) = &mut r.package_statuses {
        scrub_packages(Arc::make_mut(p));
    }
    if let Some(c) = &mut r.available_components {
        scrub_components(Arc::make_mut(c));
    }
}

fn scrub_f64(f: &mut f64) {
    if f.is_nan() {
        *f = 0.0;
    }
}

fn scrub_kvs(kvs: &mut [v1::KeyValue]) {
    kvs.iter_mut().filter_map(|kv| kv.value.as_mut()).for_each(scrub_any);
}

fn scrub_any(v: &mut v1::AnyValue) {
    match &mut v.value {
        Some(any_value::Value::DoubleValue(f)) => scrub_f64(f),
        Some(any_value::Value::ArrayValue(a)) => a.values.iter_mut().for_each(scrub_any),
        Some(any_value::Value::KvlistValue(l)) => scrub_kvs(&mut l.values),
        _ => {}
    }
}

fn scrub_description(d: &mut v1::AgentDescription) {
    scrub_kvs(&mut d.identifying_attributes);
    scrub_kvs(&mut d.non_identifying_attributes);
}

fn scrub_health(h: &mut v1::ComponentHealth) {
    scrub_kvs(&mut h.attributes);
    h.component_health_map.values_mut().for_each(scrub_health);
}

fn scrub_packages(p: &mut v1::PackageStatuses) {
    for d in p.packages.values_mut().filter_map(|s| s.download_details.as_mut()) {
        scrub_f64(&mut d.download_percent);
        scrub_f64(&mut d.download_bytes_per_second);
    }
}

fn scrub_components(c: &mut v1::AvailableComponents) {
    fn details(d: &mut v1::ComponentDetails) {
        scrub_kvs(&mut d.metadata);
        d.sub_component_map.values_mut().for_each(details);
    }
    c.components.values_mut().for_each(details);
}

/// Generated effective-config text and the secrets planted in it: none of them may survive
/// the redaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlConfig {
    pub text: String,
    pub secrets: Vec<String>,
}

/// A YAML tree before rendering. Aliases are added only at rendering, to an anchor on a node
/// without secrets: an alias under a plain key would copy a secret where it is not one.
enum Tree {
    /// Already rendered scalar text (plain, quoted or tagged).
    Scalar(String),
    Seq(Vec<Tree>),
    Map(Vec<(String, Tree)>),
}

struct TreeGen {
    secrets: Vec<String>,
    nodes: usize,
}

const SECRET_KEYS: &[&str] =
    &["password", "api_key", "client_secret", "Authorization", "bearer_token", "passphrase"];
const PLAIN_KEYS: &[&str] = &[
    "receivers",
    "exporters",
    "otlp",
    "endpoint",
    "headers",
    "auth",
    "name",
    "value",
    "routekey",
    "service",
    "pipelines",
    "tls",
    "null",
    "1",
    "true",
];
const PLAIN_SCALARS: &[&str] = &[
    "localhost:4317",
    "0",
    "-17",
    "0o17",
    "0x1F",
    "1e3",
    "-0.0",
    ".inf",
    "~",
    "null",
    "true",
    "yes",
    "1_000",
    "12:30",
    "otelcol",
];

impl TreeGen {
    fn secret(&mut self) -> String {
        let s = format!("Xq7Leak{}Xq7", self.secrets.len());
        self.secrets.push(s.clone());
        s
    }

    fn key(&mut self, u: &mut Unstructured<'_>) -> Result<String> {
        Ok(if u.ratio(3, 4)? { (*u.choose(PLAIN_KEYS)?).to_owned() } else { quoted(&string(u)?) })
    }

    fn scalar(&mut self, u: &mut Unstructured<'_>) -> Result<String> {
        Ok(match u.int_in_range(0..=5u8)? {
            0 | 1 => (*u.choose(PLAIN_SCALARS)?).to_owned(),
            2 => quoted(&string(u)?),
            3 => format!("!!str {}", u.choose(PLAIN_SCALARS)?),
            4 => format!("{}", u.arbitrary::<i64>()?),
            _ => "\"https://user@collector:4318/v1\"".to_owned(),
        })
    }

    /// A scalar that is a secret wherever it stands: a URL's user info or a PEM private key.
    fn self_evident_secret(&mut self, u: &mut Unstructured<'_>) -> Result<String> {
        let s = self.secret();
        Ok(if u.arbitrary()? {
            quoted(&format!("https://user:{s}@collector:4318/path?q=1"))
        } else {
            quoted(&format!("-----BEGIN RSA PRIVATE KEY-----\n{s}\n-----END RSA PRIVATE KEY-----"))
        })
    }

    fn node(&mut self, u: &mut Unstructured<'_>, depth: usize) -> Result<Tree> {
        self.nodes += 1;
        if depth >= 8 || self.nodes > 200 {
            return self.scalar(u).map(Tree::Scalar);
        }
        Ok(match u.int_in_range(0..=9u8)? {
            0..=3 => Tree::Map(self.entries(u, depth)?),
            4 | 5 => Tree::Seq(
                (0..count(u, 4)?).map(|_| self.node(u, depth + 1)).collect::<Result<_>>()?,
            ),
            6 => Tree::Scalar(self.self_evident_secret(u)?),
            _ => Tree::Scalar(self.scalar(u)?),
        })
    }

    fn entries(&mut self, u: &mut Unstructured<'_>, depth: usize) -> Result<Vec<(String, Tree)>> {
        let mut entries = Vec::new();
        for _ in 0..count(u, 5)? {
            let entry = match u.int_in_range(0..=7u8)? {
                // a secret key: its scalar, or a list of scalars, is a secret
                0 => {
                    let key = (*u.choose(SECRET_KEYS)?).to_owned();
                    let value = if u.arbitrary()? {
                        Tree::Scalar(self.secret())
                    } else {
                        Tree::Seq(
                            (0..1 + count(u, 2)?).map(|_| Tree::Scalar(self.secret())).collect(),
                        )
                    };
                    (key, value)
                }
                // a header named like a secret: its value is one
                1 => {
                    let name = (*u.choose(SECRET_KEYS)?).to_owned();
                    let value = self.secret();
                    (
                        self.key(u)?,
                        Tree::Map(vec![
                            ("name".into(), Tree::Scalar(name)),
                            ("value".into(), Tree::Scalar(value)),
                        ]),
                    )
                }
                _ => (self.key(u)?, self.node(u, depth + 1)?),
            };
            entries.push(entry);
        }
        Ok(entries)
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || (0x7f..=0x9f).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

fn quoted(s: &str) -> String {
    format!("\"{}\"", escape(s))
}

/// Renders in block style (indented), with anchors on some secret-free nodes and aliases to
/// them later on.
fn block(tree: &Tree, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match tree {
        Tree::Scalar(s) => {
            out.push_str(s);
            out.push('\n');
        }
        Tree::Seq(items) if items.is_empty() => out.push_str("[]\n"),
        Tree::Map(entries) if entries.is_empty() => out.push_str("{}\n"),
        Tree::Seq(items) => {
            out.push('\n');
            for item in items {
                out.push_str(&pad);
                out.push_str("- ");
                block(item, indent + 2, out);
            }
        }
        Tree::Map(entries) => {
            out.push('\n');
            for (key, value) in entries {
                out.push_str(&pad);
                out.push_str(key);
                out.push_str(": ");
                block(value, indent + 2, out);
            }
        }
    }
}

/// Renders in flow style (`{a: [b, c]}`), or as JSON when `json` (keys quoted).
fn flow(tree: &Tree, json: bool, out: &mut String) {
    match tree {
        Tree::Scalar(s) => out.push_str(s),
        Tree::Seq(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                flow(item, json, out);
            }
            out.push(']');
        }
        Tree::Map(entries) => {
            out.push('{');
            for (i, (key, value)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                if json && !key.starts_with('"') {
                    out.push_str(&quoted(key));
                } else {
                    out.push_str(key);
                }
                out.push_str(": ");
                flow(value, json, out);
            }
            out.push('}');
        }
    }
}

/// An effective config body: a mapping (sometimes a sequence or a bare scalar) in block, flow
/// or JSON style, with secrets planted under secret keys, in secret-named headers, in URL user
/// info and in PEM private keys, plus anchors and aliases that never copy a secret.
pub fn yaml_config(u: &mut Unstructured<'_>) -> Result<YamlConfig> {
    let mut generator = TreeGen { secrets: Vec::new(), nodes: 0 };
    let tree = match u.int_in_range(0..=9u8)? {
        0 => generator.node(u, 0)?,
        _ => Tree::Map(generator.entries(u, 0)?),
    };
    let mut text = String::new();
    match u.int_in_range(0..=3u8)? {
        0 => flow(&tree, false, &mut text),
        1 => flow(&tree, true, &mut text),
        _ => {
            block(&tree, 0, &mut text);
            // anchors and aliases: a plain block document gets a secret-free anchored entry
            // and an alias to it
            if u.ratio(1, 4)? && matches!(&tree, Tree::Map(e) if !e.is_empty()) {
                text.push_str("anchored: &a1 {endpoint: \"x:1\", tls: [1, 2]}\ncopied: *a1\n");
            }
        }
    }
    if text.starts_with('\n') {
        text.remove(0);
    }
    Ok(YamlConfig { text, secrets: generator.secrets })
}
