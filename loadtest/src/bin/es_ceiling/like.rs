//! `--like-index`: turns what was read from a real index (settings, mappings, sampled
//! `_source`s) into the scratch index's settings and templates that are cheap to render per
//! write. Pure: no I/O (es.rs does the reading), no clock (times are parameters), and nothing here
//! can write to the copied index.

use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

/// Most documents `--like-index` samples as templates.
pub const LIKE_SAMPLE: usize = 200;

/// What `--like-index` read from the copied index.
#[derive(Debug)]
pub struct Like {
    pub settings: Value,
    pub mappings: Value,
    pub templates: Vec<Template>,
}

/// The per-index object of a `GET name/_mapping` or `_settings` answer, which is keyed by
/// concrete index; an alias over several indices is refused (which one would be copied?).
pub fn one_index<'a>(answer: &'a Value, name: &str) -> anyhow::Result<&'a Value> {
    let indices = answer.as_object().context("unexpected answer: not an object")?;
    match indices.values().collect::<Vec<_>>()[..] {
        [one] => Ok(one),
        _ => bail!("{name} resolves to {} indices; name exactly one", indices.len()),
    }
}

/// The settings of a copied index that decide write cost: shards, replicas (as
/// `auto_expand_replicas` when set, else `number_of_replicas`) and an explicit refresh interval.
pub fn copied_settings(settings: &Value) -> anyhow::Result<Value> {
    let s = &settings["index"];
    let shards = s["number_of_shards"].as_str().context("no index.number_of_shards setting")?;
    let mut index = json!({ "number_of_shards": shards });
    match s["auto_expand_replicas"].as_str() {
        Some(auto) if auto != "false" => index["auto_expand_replicas"] = auto.into(),
        _ => index["number_of_replicas"] = s["number_of_replicas"].as_str().unwrap_or("1").into(),
    }
    if let Some(refresh) = s["refresh_interval"].as_str() {
        index["refresh_interval"] = refresh.into();
    }
    Ok(json!({ "index": index }))
}

/// A per-document field of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// `agent.id` and `local_metadata.elastic.agent.id`: the scratch `_id`.
    Id,
    /// `sequence_num`: the round.
    Round,
    /// `last_checkin` and `updated_at`: now, RFC 3339 like opampd writes them.
    Now,
}

impl Slot {
    const ALL: [Slot; 3] = [Slot::Id, Slot::Round, Slot::Now];

    /// What a slot's field holds in the serialized template, to be cut out. No JSON escaping
    /// touches it, and a real document never contains it.
    fn marker(self) -> &'static str {
        match self {
            Slot::Id => "\"@es-ceiling-slot-id@\"",
            Slot::Round => "\"@es-ceiling-slot-round@\"",
            Slot::Now => "\"@es-ceiling-slot-now@\"",
        }
    }
}

/// A sampled `_source` serialized once and cut around its per-document fields, so a write is a
/// few string copies: the client shares the machine with ES and should take little CPU from it.
/// Everything else (the `opampd.state` blob included) is sent exactly as it was read.
#[derive(Debug)]
pub struct Template {
    /// JSON text around the slots: `pieces.len() == slots.len() + 1`.
    pieces: Vec<String>,
    slots: Vec<Slot>,
}

impl Template {
    const FIELDS: [(&'static [&'static str], Slot); 5] = [
        (&["agent", "id"], Slot::Id),
        (&["local_metadata", "elastic", "agent", "id"], Slot::Id),
        (&["sequence_num"], Slot::Round),
        (&["last_checkin"], Slot::Now),
        (&["updated_at"], Slot::Now),
    ];
    /// Rewritten only where the template has them: the agent's uid as opampd copies it from
    /// the agent description (unique per agent in a real fleet, so in the keyword index too).
    const IF_PRESENT: [(&'static [&'static str], Slot); 1] =
        [(&["identifying_attributes", "service.instance.id"], Slot::Id)];

    /// Sets (or adds) each per-document field of `source` to its slot's marker, serializes, and
    /// cuts the text at the markers.
    pub fn new(source: &Value) -> anyhow::Result<Template> {
        ensure!(source.is_object(), "_source is not a JSON object");
        let mut doc = source.clone();
        let present = Template::IF_PRESENT.into_iter().filter(|(path, _)| {
            path.iter().try_fold(source, |at, key| at.get(key)).is_some_and(Value::is_string)
        });
        let fields: Vec<_> = Template::FIELDS.into_iter().chain(present).collect();
        for &(path, slot) in &fields {
            let marker = slot.marker().trim_matches('"');
            set_path(&mut doc, path, Value::String(marker.to_string()))?;
        }
        let text = doc.to_string();
        let mut cuts: Vec<(usize, Slot)> = Slot::ALL
            .iter()
            .flat_map(|&slot| text.match_indices(slot.marker()).map(move |(at, _)| (at, slot)))
            .collect();
        ensure!(cuts.len() == fields.len(), "_source already contains es-ceiling's markers");
        cuts.sort_by_key(|&(at, _)| at);
        let (mut pieces, mut slots, mut from) = (Vec::new(), Vec::new(), 0);
        for (at, slot) in cuts {
            pieces.push(text[from..at].to_string());
            slots.push(slot);
            from = at + slot.marker().len();
        }
        pieces.push(text[from..].to_string());
        Ok(Template { pieces, slots })
    }

    pub fn render(&self, id: &str, round: u64, now_ms: u128) -> String {
        let now = rfc3339_millis(now_ms);
        let mut out = String::with_capacity(self.approx_len());
        out.push_str(&self.pieces[0]);
        for (slot, piece) in self.slots.iter().zip(&self.pieces[1..]) {
            match slot {
                Slot::Id => {
                    out.push('"');
                    out.push_str(id);
                    out.push('"');
                }
                Slot::Round => out.push_str(&round.to_string()),
                Slot::Now => {
                    out.push('"');
                    out.push_str(&now);
                    out.push('"');
                }
            }
            out.push_str(piece);
        }
        out
    }

    /// The fixed text plus room for the slots' values.
    pub fn approx_len(&self) -> usize {
        self.pieces.iter().map(String::len).sum::<usize>() + self.slots.len() * 40
    }
}

/// Sets `doc[path[0]][path[1]]... = value`, adding missing objects on the way.
fn set_path(doc: &mut Value, path: &[&str], value: Value) -> anyhow::Result<()> {
    let Some((last, parents)) = path.split_last() else { return Ok(()) };
    let mut at = doc;
    for key in parents {
        let obj =
            at.as_object_mut().with_context(|| format!("{} is not an object", path.join(".")))?;
        at = obj.entry(*key).or_insert_with(|| json!({}));
    }
    let obj = at.as_object_mut().with_context(|| format!("{} is not an object", path.join(".")))?;
    obj.insert((*last).to_string(), value);
    Ok(())
}

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds ("2026-11-28T14:54:24.937Z",
/// what opampd writes). Clamped to the last millisecond of year 9999, where humantime (and ES
/// date parsing) stop; a clock never gets there.
fn rfc3339_millis(ms: u128) -> String {
    let ms = ms.min(253_402_300_799_999) as u64;
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_opampd_format() {
        // The outputs of the tool's former hand-written formatter (civil_from_days), kept so the
        // switch to humantime changes no written timestamp.
        for (ms, want) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (1_700_000_030_123, "2023-11-14T22:13:50.123Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_709_251_199_999, "2024-02-29T23:59:59.999Z"),
            (4_102_444_799_001, "2099-12-31T23:59:59.001Z"),
            (1_000_000_000_000, "2001-09-09T01:46:40.000Z"),
            (4_107_542_399_999, "2100-02-28T23:59:59.999Z"),
            (4_107_542_400_000, "2100-03-01T00:00:00.000Z"),
            (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
        ] {
            assert_eq!(rfc3339_millis(ms), want, "{ms}");
        }
    }

    #[test]
    fn rfc3339_clamps_past_year_9999() {
        assert_eq!(rfc3339_millis(u128::MAX), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn template_rewrites_only_the_per_document_fields() {
        let source = json!({
            "agent": { "id": "old", "version": "1.2.3" },
            "sequence_num": 7,
            "last_checkin": "2020-01-01T00:00:00.000Z",
            "updated_at": "2020-01-01T00:00:00.000Z",
            "local_metadata": { "elastic": { "agent": { "id": "old" } }, "host": { "name": "h" } },
            "identifying_attributes": { "service.name": "otelcol", "service.instance.id": "old" },
            "opampd": { "schema_version": 1, "state": "AAECAw==" },
        });
        let t = Template::new(&source).unwrap();
        let id = "018f0000-0000-7000-8000-000000000005";
        let doc: Value = serde_json::from_str(&t.render(id, 42, 1_700_000_030_123)).unwrap();
        let mut want = source.clone();
        want["agent"]["id"] = json!(id);
        want["local_metadata"]["elastic"]["agent"]["id"] = json!(id);
        want["identifying_attributes"]["service.instance.id"] = json!(id);
        want["sequence_num"] = json!(42);
        want["last_checkin"] = json!("2023-11-14T22:13:50.123Z");
        want["updated_at"] = json!("2023-11-14T22:13:50.123Z");
        assert_eq!(doc, want);
    }

    #[test]
    fn template_adds_missing_fields_and_refuses_non_objects() {
        let t = Template::new(&json!({ "opampd": { "state": "AA==" } })).unwrap();
        let doc: Value = serde_json::from_str(&t.render("x", 1, 0)).unwrap();
        assert_eq!(doc["local_metadata"]["elastic"]["agent"]["id"], "x");
        assert_eq!(doc["sequence_num"], 1);
        assert_eq!(doc.get("identifying_attributes"), None);
        assert!(Template::new(&json!([1])).is_err());
        assert!(Template::new(&json!({ "agent": "not an object" })).is_err());
    }

    #[test]
    fn template_refuses_a_source_holding_a_marker() {
        let source = json!({ "note": "@es-ceiling-slot-id@" });
        assert!(Template::new(&source).is_err());
    }

    #[test]
    fn set_path_adds_missing_objects_and_refuses_scalars_on_the_way() {
        let mut doc = json!({ "a": { "keep": 1 } });
        set_path(&mut doc, &["a", "b", "c"], json!("v")).unwrap();
        assert_eq!(doc, json!({ "a": { "keep": 1, "b": { "c": "v" } } }));
        set_path(&mut doc, &[], json!("ignored")).unwrap();
        assert_eq!(doc, json!({ "a": { "keep": 1, "b": { "c": "v" } } }));
        assert!(set_path(&mut doc, &["a", "keep", "x"], json!(1)).is_err());
    }

    #[test]
    fn copied_settings_prefer_auto_expand_replicas() {
        let auto = json!({ "index": { "number_of_shards": "1", "auto_expand_replicas": "0-1",
            "number_of_replicas": "0", "uuid": "x" } });
        assert_eq!(
            copied_settings(&auto).unwrap(),
            json!({ "index": { "number_of_shards": "1", "auto_expand_replicas": "0-1" } })
        );
        let fixed = json!({ "index": { "number_of_shards": "3", "auto_expand_replicas": "false",
            "number_of_replicas": "2", "refresh_interval": "5s" } });
        assert_eq!(
            copied_settings(&fixed).unwrap(),
            json!({ "index": { "number_of_shards": "3", "number_of_replicas": "2", "refresh_interval": "5s" } })
        );
        assert!(copied_settings(&json!({})).is_err());
    }

    #[test]
    fn one_index_refuses_aliases_over_several_indices() {
        let one = json!({ "idx-1": { "mappings": {} } });
        assert_eq!(one_index(&one, "idx").unwrap(), &json!({ "mappings": {} }));
        let two = json!({ "idx-1": {}, "idx-2": {} });
        assert!(one_index(&two, "idx").is_err());
        assert!(one_index(&json!({}), "idx").is_err());
        assert!(one_index(&json!([]), "idx").is_err());
    }
}
