//! Fuzz harness of the gzip request body (see `fuzz-support` and docs/fuzzing.md): the `gunzip`
//! target's corpus, structured gzip streams (one or more members, any level, header fields,
//! bodies around the limit) and mutations, for `OPAMPD_FUZZ_SECS`. The oracle is `gunzip.rs`,
//! shared with the `cargo fuzz` target.

pub mod config_body;
pub mod gunzip;

use std::io::Write;

use flate2::{Compression, GzBuilder};
use fuzz_support::arbitrary::{Result, Unstructured};
use fuzz_support::{Fuzz, sync_seeds};
use opampd::error::RequestError;

/// One gzip member of `data` at `level`, with optional header fields.
fn member(data: &[u8], level: u32, name: Option<&[u8]>, extra: Option<&[u8]>) -> Vec<u8> {
    let mut builder = GzBuilder::new().mtime(1_700_000_000);
    if let Some(name) = name {
        builder = builder.filename(name).comment(name);
    }
    if let Some(extra) = extra {
        builder = builder.extra(extra);
    }
    let mut enc = builder.write(Vec::new(), Compression::new(level));
    enc.write_all(data).expect("write to a Vec");
    enc.finish().expect("finish to a Vec")
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let message = b"\x0a\x10BBBBBBBBBBBBBBBB\x10\x01\x20\x01".to_vec();
    let text = b"opamp ".repeat(200);
    let mut bad_crc = member(&text, 6, None, None);
    let crc_at = bad_crc.len() - 8;
    bad_crc[crc_at] ^= 0xff;
    let mut bad_size = member(&text, 6, None, None);
    let size_at = bad_size.len() - 4;
    bad_size[size_at] ^= 0x01;
    let two = [member(&message, 9, None, None), member(&text, 1, None, None)].concat();
    let whole = member(&text, 6, None, None);
    vec![
        ("message", member(&message, 6, None, None)),
        ("stored-blocks", member(&text, 0, None, None)),
        ("header-fields", member(&message, 6, Some(b"agent.bin"), Some(b"AB\x02\x00xy"))),
        ("two-members", two),
        ("empty-member", member(b"", 6, None, None)),
        ("at-limit", member(&vec![7; gunzip::LIMIT], 9, None, None)),
        ("bomb", member(&vec![0; 1 << 20], 9, None, None)),
        ("bad-crc", bad_crc),
        ("bad-size", bad_size),
        ("truncated", whole[..whole.len() / 2].to_vec()),
        ("trailing-garbage", [whole.clone(), b"junk".to_vec()].concat()),
        ("not-gzip", b"\x0a\x10not compressed at all".to_vec()),
        ("empty", Vec::new()),
    ]
}

/// Gzip streams of a known body: 1-3 members, any level, header fields, a body that compresses
/// (repeats) or not, sized around a limit drawn with it. Checks the body comes back exactly
/// when within the limit and is `PayloadTooLarge` past it.
fn structured(u: &mut Unstructured<'_>) -> Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    let mut stream = Vec::new();
    for _ in 0..u.int_in_range(1..=3u8)? {
        let len = u.int_in_range(0..=256usize)?.min(u.len());
        let chunk = u.bytes(len)?.repeat(u.int_in_range(1..=300usize)?);
        let name: Option<Vec<u8>> = if u.ratio(1, 4)? {
            Some(u.arbitrary::<String>()?.bytes().filter(|b| *b != 0).collect())
        } else {
            None
        };
        let extra: Option<Vec<u8>> = if u.ratio(1, 4)? {
            let len = u.int_in_range(0..=16usize)?.min(u.len());
            Some(u.bytes(len)?.to_vec())
        } else {
            None
        };
        stream.extend(member(&chunk, u.int_in_range(0..=9)?, name.as_deref(), extra.as_deref()));
        body.extend(chunk);
    }
    let limit = match u.int_in_range(0..=2u8)? {
        0 => body.len(),
        1 => body.len().saturating_sub(1),
        _ => u.int_in_range(0..=2 * body.len() + 1)?,
    };
    let got = opampd::http::gunzip(&stream, limit);
    if body.len() <= limit {
        assert_eq!(got.as_ref(), Ok(&body), "a body within the limit inflates whole");
    } else {
        assert_eq!(got, Err(RequestError::PayloadTooLarge { limit }), "past the limit");
    }
    Ok(Some(stream))
}

#[test]
fn fuzz_gunzip() {
    let seeds = seeds().into_iter().map(|(_, bytes)| bytes);
    let dictionary: &[&[u8]] =
        &[b"\x1f\x8b\x08\x00", b"\x1f\x8b\x08\x1f", b"\x03\x00", b"\x00\x00\xff\xff"];
    let stats =
        Fuzz::new("gunzip").seeds(seeds).dictionary(dictionary).run(gunzip::check, structured);
    assert!(stats.accepted > 0);
}

#[test]
fn fuzz_corpus_holds_the_gunzip_seeds() {
    sync_seeds("gunzip", &seeds());
}

fn config_body_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let docs: Vec<(&'static str, &str)> = vec![
        ("minimal", r#"{"files": {}}"#),
        (
            "full",
            r#"{"selector": {"service.name": "otelcol", "os.type": "linux"},
               "files": {"collector.yaml": {"body": "receivers: {otlp: {}}", "content_type": "text/yaml"},
                         "extra.json": {"body": "{\"a\": \"\\u0000ü\"}"}},
               "rollout": {"max_agents_per_minute": 100, "pause_on_failures": 5}}"#,
        ),
        ("unknown-field", r#"{"files": {}, "selectors": {}}"#),
        ("zero-rate", r#"{"files": {}, "rollout": {"max_agents_per_minute": 0}}"#),
        ("negative", r#"{"files": {}, "rollout": {"pause_on_failures": -1}}"#),
        ("body-not-text", r#"{"files": {"a": {"body": [1]}}}"#),
        ("empty-file-name", r#"{"files": {"": {"body": "x"}}}"#),
        ("duplicate-keys", r#"{"files": {"a": {"body": "1"}, "a": {"body": "2"}}}"#),
        ("not-json", "files: {}"),
    ];
    docs.into_iter().map(|(name, doc)| (name, doc.as_bytes().to_vec())).collect()
}

#[test]
fn fuzz_config_body() {
    let seeds = config_body_seeds().into_iter().map(|(_, bytes)| bytes);
    let dictionary: &[&[u8]] = &[
        b"\"selector\":{",
        b"\"files\":{",
        b"\"body\":\"",
        b"\"content_type\":\"",
        b"\"rollout\":{\"max_agents_per_minute\":",
        b"\"pause_on_failures\":",
        b"4294967296",
        b"null",
    ];
    let stats =
        Fuzz::new("config_body").seeds(seeds).dictionary(dictionary).run(config_body::check, |u| {
            let label = |u: &mut Unstructured<'_>| -> Result<String> {
                let n = u.int_in_range(0..=300usize)?;
                Ok(if u.ratio(1, 8)? { "k".repeat(n) } else { fuzz_support::arb::string(u)? })
            };
            let mut selector = serde_json::Map::new();
            for _ in 0..u.int_in_range(0..=40usize)? {
                selector.insert(label(u)?, serde_json::json!(label(u)?));
            }
            let mut files = serde_json::Map::new();
            for _ in 0..u.int_in_range(0..=70usize)? {
                let size = *u.choose(&[0usize, 1, 1000, 300 * 1024])?;
                let body =
                    if size > 1000 { "x".repeat(size) } else { fuzz_support::arb::string(u)? };
                files.insert(
                    label(u)?,
                    serde_json::json!({"body": body, "content_type": label(u)?}),
                );
            }
            let mut doc = serde_json::json!({"selector": selector, "files": files});
            if u.arbitrary()? {
                doc["rollout"] = serde_json::json!({
                    "max_agents_per_minute": u.int_in_range(0..=3u32)?,
                    "pause_on_failures": u.arbitrary::<Option<u32>>()?,
                });
            }
            Ok(Some(serde_json::to_vec(&doc).expect("a Value serializes")))
        });
    assert!(stats.accepted > 0);
}

#[test]
fn fuzz_corpus_holds_the_config_body_seeds() {
    sync_seeds("config_body", &config_body_seeds());
}
