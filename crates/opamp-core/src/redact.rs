//! Secrets out of reported effective configs, before anything keeps them.
//!
//! An agent's effective config holds exporter passwords, API keys, bearer tokens and private
//! keys. The server needs none of them, so every file body is parsed (YAML, JSON being YAML
//! too), the values that look secret are replaced by [`REDACTED`], and the body is kept as JSON
//! text. A body that does not parse, is not a mapping or sequence, or is over the bounds keeps
//! its file name and content type but loses its body: what cannot be inspected is not kept.
//!
//! What counts as secret follows elastic-agent-libs' `redact` (which fleet-server applies to the
//! same configs), and is stricter where it is weak:
//! - a key whose lowercase name contains `auth`, `certificate`, `passphrase`, `password`,
//!   `token`, `key` or `secret` (except `routekey`) has its value redacted: strings, numbers and
//!   booleans, and every scalar of a list (libs redacts only strings); a mapping under such a key
//!   is walked, not dropped (`auth: {endpoint: ...}` stays readable);
//! - in a mapping whose `name` names a secret (`{name: Authorization, value: ...}`), the `value`;
//! - in any string: the user info of every URL (`https://user:pw@host` ->
//!   `REDACTED:REDACTED@`), and a whole string holding a PEM private key.
//!
//! Pure and bounded: no I/O; size, nesting, and node count and text with aliases expanded are
//! capped, numbers are written no longer than they were read, and no input can make it panic.

use std::collections::{BTreeMap, HashMap};

use opamp_proto::v1::{AgentConfigFile, AgentConfigMap, EffectiveConfig};
use yaml_rust2::Yaml;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::TScalarStyle;

/// What a secret becomes (the same word fleet-server writes).
pub const REDACTED: &str = "REDACTED";

/// Bodies larger than this are not parsed (and so not kept): an effective config is a few KiB.
pub const MAX_CONFIG_FILE_BYTES: usize = 1 << 20;
/// Deepest nesting kept; deeper input does not parse.
const MAX_DEPTH: usize = 64;
/// Most nodes one body may produce, aliases expanded: a billion-laughs body stops here.
const MAX_NODES: usize = 100_000;
/// Most text (strings and mapping keys) one body may produce, aliases expanded. Without aliases
/// the text is never longer than the body; a long string and many aliases to it stop here.
const MAX_TEXT_BYTES: usize = MAX_CONFIG_FILE_BYTES;

const SECRET_KEY_PARTS: [&str; 7] =
    ["auth", "certificate", "passphrase", "password", "token", "key", "secret"];
const NOT_SECRET_KEYS: [&str; 1] = ["routekey"];

/// `config` with every file body parsed, redacted and re-written as JSON text (or dropped when
/// it cannot be), see the [module docs](self).
pub fn redact_effective_config(config: &EffectiveConfig) -> EffectiveConfig {
    EffectiveConfig {
        config_map: config.config_map.as_ref().map(|map| AgentConfigMap {
            config_map: map
                .config_map
                .iter()
                .map(|(name, file)| (name.clone(), redact_file(file)))
                .collect(),
        }),
    }
}

/// One file: its redacted JSON body, or no body when it cannot be inspected.
pub fn redact_file(file: &AgentConfigFile) -> AgentConfigFile {
    let body = redacted_json(&file.body).map(String::into_bytes).unwrap_or_default();
    AgentConfigFile { body: body.into(), ..file.clone() }
}

/// The body parsed, redacted and written as JSON text; `None` when it does not parse as one
/// YAML document holding a mapping or a sequence, or is over the bounds. An empty body stays
/// empty.
pub fn redacted_json(body: &[u8]) -> Option<String> {
    if body.is_empty() {
        return Some(String::new());
    }
    if body.len() > MAX_CONFIG_FILE_BYTES {
        return None;
    }
    let text = std::str::from_utf8(body).ok()?;
    let mut node = parse(text)?;
    if !matches!(node, Node::Map(_) | Node::Seq(_)) {
        return None;
    }
    redact(&mut node);
    let mut out = String::with_capacity(body.len());
    write_json(&node, &mut out);
    Some(out)
}

/// True when a value under this key is a secret.
pub fn is_secret_key(key: &str) -> bool {
    if NOT_SECRET_KEYS.contains(&key) {
        return false;
    }
    let lower = key.to_lowercase();
    SECRET_KEY_PARTS.iter().any(|part| lower.contains(part))
}

/// A parsed YAML value, as JSON can hold it. Mapping keys are strings (scalars only) and kept
/// sorted and unique, last one winning, so the output is stable and has no duplicate key.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(BTreeMap<String, Node>),
}

impl Node {
    /// What a copy of this value costs: its nodes and its text bytes (strings and keys).
    fn weight(&self) -> (usize, usize) {
        let add = |(n, b): (usize, usize), (n2, b2): (usize, usize)| (n + n2, b + b2);
        match self {
            Self::Str(s) => (1, s.len()),
            Self::Seq(items) => items.iter().map(Node::weight).fold((1, 0), add),
            Self::Map(entries) => {
                entries.iter().map(|(k, v)| add(v.weight(), (0, k.len()))).fold((1, 0), add)
            }
            _ => (1, 0),
        }
    }
}

/// A container being built: its anchor and what it holds so far.
enum Frame {
    Seq { anchor: usize, items: Vec<Node> },
    Map { anchor: usize, entries: BTreeMap<String, Node>, key: Option<String> },
}

/// Parses one YAML document into a [`Node`] without recursion, expanding aliases within
/// [`MAX_NODES`] and [`MAX_TEXT_BYTES`]. `None` on a syntax error, a second document, a
/// non-scalar key or a bound.
fn parse(text: &str) -> Option<Node> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut nodes = 0usize;
    let mut text_bytes = 0usize;
    let mut root: Option<Node> = None;
    loop {
        let (event, _) = parser.next_token().ok()?;
        let (value, anchor) = match event {
            Event::StreamEnd => return root,
            Event::StreamStart | Event::DocumentStart | Event::DocumentEnd | Event::Nothing => {
                continue;
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if root.is_some() || stack.len() >= MAX_DEPTH {
                    return None;
                }
                stack.push(match event {
                    Event::SequenceStart(..) => Frame::Seq { anchor, items: Vec::new() },
                    _ => Frame::Map { anchor, entries: BTreeMap::new(), key: None },
                });
                continue;
            }
            Event::SequenceEnd => match stack.pop()? {
                Frame::Seq { anchor, items } => (Node::Seq(items), anchor),
                Frame::Map { .. } => return None,
            },
            Event::MappingEnd => match stack.pop()? {
                Frame::Map { anchor, entries, key: None } => (Node::Map(entries), anchor),
                _ => return None,
            },
            Event::Scalar(text, style, anchor, tag) => {
                text_bytes += text.len();
                (scalar(text, style, tag.is_some()), anchor)
            }
            Event::Alias(id) => {
                let target = anchors.get(&id)?;
                let (target_nodes, target_bytes) = target.weight();
                nodes = nodes.checked_add(target_nodes)?;
                text_bytes = text_bytes.checked_add(target_bytes)?;
                if nodes > MAX_NODES
                    || text_bytes > MAX_TEXT_BYTES
                    || stack.len() + depth(target) > MAX_DEPTH
                {
                    return None;
                }
                (target.clone(), 0)
            }
        };
        nodes += 1;
        if nodes > MAX_NODES {
            return None;
        }
        if anchor != 0 {
            anchors.insert(anchor, value.clone());
        }
        match stack.last_mut() {
            None if root.is_none() => root = Some(value),
            // a second document
            None => return None,
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(key_text(value)?),
                Some(k) => {
                    entries.insert(k, value);
                }
            },
        }
    }
}

fn depth(node: &Node) -> usize {
    match node {
        Node::Seq(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Node::Map(entries) => 1 + entries.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// A mapping key as text; containers cannot be JSON keys.
fn key_text(node: Node) -> Option<String> {
    Some(match node {
        Node::Null => "null".into(),
        Node::Bool(b) => b.to_string(),
        Node::Int(i) => i.to_string(),
        Node::Float(f) => shortest(f.to_string(), f),
        Node::Str(s) => s,
        Node::Seq(_) | Node::Map(_) => return None,
    })
}

/// A scalar's value under the YAML 1.2 core schema: quoted or tagged scalars are strings,
/// plain ones may be null, booleans or numbers.
fn scalar(text: String, style: TScalarStyle, tagged: bool) -> Node {
    if style != TScalarStyle::Plain || tagged {
        return Node::Str(text);
    }
    match Yaml::from_str(&text) {
        Yaml::Null => Node::Null,
        Yaml::Boolean(b) => Node::Bool(b),
        Yaml::Integer(i) => Node::Int(i),
        Yaml::Real(r) => match r.parse::<f64>() {
            Ok(f) if f.is_finite() => Node::Float(f),
            _ => Node::Str(text),
        },
        _ => Node::Str(text),
    }
}

/// Replaces every secret in `node`, see the [module docs](self).
fn redact(node: &mut Node) {
    match node {
        Node::Str(s) => redact_string(s),
        Node::Seq(items) => items.iter_mut().for_each(redact),
        Node::Map(entries) => {
            let secret_name = entries
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("name"))
                .is_some_and(|(_, v)| matches!(v, Node::Str(n) if is_secret_key(n)));
            for (key, value) in entries.iter_mut() {
                if is_secret_key(key) || (secret_name && key.eq_ignore_ascii_case("value")) {
                    redact_secret(value);
                } else {
                    redact(value);
                }
            }
        }
        Node::Null | Node::Bool(_) | Node::Int(_) | Node::Float(_) => {}
    }
}

/// A value under a secret key: scalars go, lists lose their scalars, mappings are walked.
fn redact_secret(value: &mut Node) {
    match value {
        Node::Null => {}
        Node::Bool(_) | Node::Int(_) | Node::Float(_) | Node::Str(_) => {
            *value = Node::Str(REDACTED.into());
        }
        Node::Seq(items) => items.iter_mut().for_each(redact_secret),
        Node::Map(_) => redact(value),
    }
}

/// URL user info and PEM private keys, wherever they appear: every URL of the string, not only
/// the first (`endpoints: "http://a/ https://user:pw@b/"` is one string). One pass, copying:
/// a body of many URLs costs its length, not its length per URL.
fn redact_string(s: &mut String) {
    if s.contains("PRIVATE KEY-----") {
        *s = REDACTED.into();
        return;
    }
    if !s.contains("://") {
        return;
    }
    let text = std::mem::take(s);
    let mut out = String::with_capacity(text.len());
    // text[..copied] is in `out`; a user info is replaced by skipping it
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = text[from..].find("://") {
        let scheme_end = from + found;
        let authority_start = scheme_end + 3;
        let authority_end = text[authority_start..]
            .find(['/', '?', '#'])
            .map_or(text.len(), |i| authority_start + i);
        if let Some(at) = text[authority_start..authority_end].rfind('@') {
            out.push_str(&text[copied..authority_start]);
            out.push_str("REDACTED:REDACTED");
            copied = authority_start + at;
        }
        // the next "://" may start inside this authority (`a://b://u:p@h`)
        from = scheme_end + 1;
    }
    out.push_str(&text[copied..]);
    *s = out;
}

/// Writes `node` as compact JSON.
fn write_json(node: &Node, out: &mut String) {
    match node {
        Node::Null => out.push_str("null"),
        Node::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Node::Int(i) => out.push_str(&i.to_string()),
        // finite by construction; `{}` of a finite f64 is a valid JSON number
        Node::Float(f) => {
            let mut text = f.to_string();
            if !text.contains(['.', 'e', 'E']) {
                text.push_str(".0");
            }
            out.push_str(&shortest(text, *f));
        }
        Node::Str(s) => write_json_string(s, out),
        Node::Seq(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(item, out);
            }
            out.push(']');
        }
        Node::Map(entries) => {
            out.push('{');
            for (i, (key, value)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_string(key, out);
                out.push(':');
                write_json(value, out);
            }
            out.push('}');
        }
    }
}

/// `plain` (`f` written out in full) or `f` with an exponent, whichever is shorter: `1e300` read
/// must not come out as 301 digits. Both are JSON numbers that YAML reads back as `f`.
fn shortest(plain: String, f: f64) -> String {
    let exponent = format!("{f:e}");
    if exponent.len() < plain.len() { exponent } else { plain }
}

fn write_json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}
