//! What es-ceiling writes: scratch document `i`'s `_id` and its `_source` at a given round,
//! synthetic or rendered from `--like-index` templates. Builds strings only: no I/O, and the
//! clock is read once per rendered document, for the timestamps it carries.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::ids::Ids;
use crate::like::Template;

/// The documents of one run: how they are named and where their bodies come from.
#[derive(Debug)]
pub struct Docs {
    pub ids: Ids,
    pub source: Source,
}

/// Where the written documents' bodies come from.
#[derive(Debug)]
pub enum Source {
    /// [`document`]: fleet-like fields padded to about `doc_bytes`.
    Synthetic { doc_bytes: usize },
    /// Documents of `index`, scratch document `i` always from template `i % len`.
    Like { index: String, templates: Vec<Template> },
}

impl Docs {
    /// The `_id` of scratch document `i`.
    pub fn id(&self, i: usize) -> String {
        self.ids.id(i)
    }

    /// The `_source` of scratch document `i` at `round` (0 when seeding).
    pub fn render(&self, i: usize, round: u64) -> String {
        let now_ms = unix_millis();
        match &self.source {
            Source::Synthetic { doc_bytes } => document(&self.id(i), round, *doc_bytes, now_ms),
            Source::Like { templates, .. } => {
                templates[i % templates.len()].render(&self.id(i), round, now_ms)
            }
        }
    }

    /// About how long one rendered document is, to size request buffers.
    pub fn approx_len(&self) -> usize {
        match &self.source {
            Source::Synthetic { doc_bytes } => *doc_bytes,
            Source::Like { templates, .. } => {
                templates.iter().map(Template::approx_len).max().unwrap_or(0)
            }
        }
    }
}

/// A document shaped like an opampd agent document and padded to about `doc_bytes`.
fn document(id: &str, round: u64, doc_bytes: usize, now_ms: u128) -> String {
    let mut doc = json!({
        "agent": { "id": id, "type": "opentelemetry-collector", "version": "0.1.0" },
        "type": "OPAMP",
        "active": true,
        "last_checkin": now_ms,
        "last_checkin_status": "online",
        "sequence_num": round,
        "capabilities": ["ReportsStatus", "ReportsEffectiveConfig", "ReportsHealth", "ReportsHeartbeat"],
        "policy_revision_idx": 1,
        "updated_at": now_ms,
        "padding": "",
    });
    let len = doc.to_string().len();
    doc["padding"] = Value::String("x".repeat(doc_bytes.saturating_sub(len)));
    doc.to_string()
}

pub fn unix_millis() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "018f0000-0000-7000-8000-000000000007";

    #[test]
    fn synthetic_documents_are_padded_to_the_asked_size() {
        let doc = document(ID, 3, 1024, 1_700_000_030_123);
        assert_eq!(doc.len(), 1024);
        let v: Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(v["agent"]["id"], ID);
        assert_eq!(v["sequence_num"], 3);
        assert_eq!(v["last_checkin"], 1_700_000_030_123u64);
        assert_eq!(v["updated_at"], 1_700_000_030_123u64);
    }

    #[test]
    fn synthetic_documents_smaller_than_their_fields_get_no_padding() {
        let v: Value = serde_json::from_str(&document(ID, 0, 64, 0)).unwrap();
        assert_eq!(v["padding"], "");
    }

    #[test]
    fn documents_take_their_id_from_the_scheme() {
        let docs = Docs { ids: Ids::Sequential, source: Source::Synthetic { doc_bytes: 512 } };
        let v: Value = serde_json::from_str(&docs.render(7, 2)).unwrap();
        assert_eq!(v["agent"]["id"], ID);
        assert_eq!(docs.id(7), ID);
        assert_eq!(docs.approx_len(), 512);
    }

    #[test]
    fn like_documents_cycle_through_the_templates() {
        let templates = vec![
            Template::new(&json!({ "n": 0 })).unwrap(),
            Template::new(&json!({ "n": 1 })).unwrap(),
        ];
        let docs =
            Docs { ids: Ids::Random, source: Source::Like { index: "src".into(), templates } };
        for i in 0..4 {
            let v: Value = serde_json::from_str(&docs.render(i, 9)).unwrap();
            assert_eq!(v["n"], i % 2, "{i}");
            assert_eq!(v["agent"]["id"], Ids::Random.id(i));
            assert_eq!(v["sequence_num"], 9);
        }
    }
}
