//! The fleet listing and counts on Elasticsearch ([`AgentFilter`], [`AgentStats`]): a search
//! each, for the admin API only, never on the OpAMP path.
//!
//! The listing is sorted on `agent.id` (equal to `_id`, which Elasticsearch does not sort on)
//! and paged with `search_after`; the counts are one `size: 0` search with aggregations. Both
//! refresh the index first, so they see the writes acknowledged before them.
//!
//! The filters read fleet-server's field names. An index opampd created maps each as a keyword;
//! the `.fleet-agents` system index, whose mapping opampd cannot change, maps some differently
//! (the host name only as a `.keyword` sub-field) or not at all (the service name). Which field
//! to query is learnt once from `_field_caps` (read privileges suffice); a field no index maps
//! as a keyword is a runtime field read from `_source` (correct, slower on large fleets). The
//! remote-config state compares two fields of one document, so it is a runtime field always:
//! from doc values where the `opampd.remote_config.*` keywords are mapped, else from `_source`.

use elasticsearch::indices::IndicesRefreshParts;
use elasticsearch::{FieldCapsParts, SearchParts};
use opamp_core::{AgentRecord, AgentStatus};
use opamp_proto::InstanceUid;
use serde_json::{Map, Value, json};
use tracing::info;

use super::{
    ElasticsearchStore, Shared, document, json_body_unless_missing, status_error, transport_error,
};
use crate::StoreError;
use crate::fleet::{
    AgentFilter, AgentStats, RemoteConfigState, STATUSES, StatusCounts, TOP_VALUES,
};

/// A keyword the fleet queries read: a mapped field, or a runtime field of that name whose
/// value is the string at `path` in `_source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keyword {
    Mapped(&'static str),
    FromSource { name: &'static str, path: &'static [&'static str] },
}

impl Keyword {
    fn field(self) -> &'static str {
        match self {
            Self::Mapped(name) | Self::FromSource { name, .. } => name,
        }
    }
}

/// One filterable attribute: the mapped keyword fields that hold it, best first, and the
/// `_source` path to read it from when none is mapped as a keyword.
struct Attribute {
    candidates: &'static [&'static str],
    fallback: Keyword,
}

const SERVICE_NAME: Attribute = Attribute {
    candidates: &["agent.type", "local_metadata.elastic.agent.name"],
    fallback: Keyword::FromSource { name: "agent.type", path: &["agent", "type"] },
};

const SERVICE_VERSION: Attribute = Attribute {
    candidates: &["agent.version"],
    fallback: Keyword::FromSource { name: "agent.version", path: &["agent", "version"] },
};

/// `.keyword` is how the `.fleet-agents` mapping indexes it (a `text` field above it).
const HOST_NAME: Attribute = Attribute {
    candidates: &["local_metadata.host.hostname", "local_metadata.host.hostname.keyword"],
    fallback: Keyword::FromSource {
        name: "local_metadata.host.hostname",
        path: &["local_metadata", "host", "hostname"],
    },
};

/// The fields always mapped as keywords (or a date), in every agent index opampd uses.
const AGENT_ID: &str = "agent.id";
const STATUS: &str = "last_checkin_status";
const LAST_CHECKIN: &str = "last_checkin";

/// The runtime field holding each agent's [`RemoteConfigState`].
const REMOTE_CONFIG_STATE: &str = "opampd_remote_config_state";

/// Where the agent index keeps each filterable attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FleetFields {
    service: Keyword,
    version: Keyword,
    host: Keyword,
}

impl FleetFields {
    /// Reads a `_field_caps` answer (asked with `include_unmapped`): the first candidate every
    /// index maps as a searchable, aggregatable keyword, else the runtime fallback.
    fn from_caps(caps: &Value) -> Self {
        let keyword = |field: &str| {
            let Some(types) = caps.get("fields").and_then(|f| f.get(field)) else { return false };
            let Some(types) = types.as_object() else { return false };
            types.len() == 1
                && types.get("keyword").is_some_and(|k| {
                    k.get("searchable") == Some(&Value::Bool(true))
                        && k.get("aggregatable") == Some(&Value::Bool(true))
                })
        };
        let pick = |a: &Attribute| {
            a.candidates.iter().find(|c| keyword(c)).map_or(a.fallback, |c| Keyword::Mapped(c))
        };
        Self {
            service: pick(&SERVICE_NAME),
            version: pick(&SERVICE_VERSION),
            host: pick(&HOST_NAME),
        }
    }

    /// Runtime fields for every attribute no index maps as a keyword.
    fn runtime_mappings(self, runtime: &mut Map<String, Value>) {
        const SCRIPT: &str = "def v = params._source; \
            for (def k : params.path) { if (v instanceof Map) { v = v[k]; } else { v = null; } } \
            if (v instanceof String) { emit(v); }";
        for keyword in [self.service, self.version, self.host] {
            if let Keyword::FromSource { name, path } = keyword {
                runtime.insert(
                    name.to_owned(),
                    json!({"type": "keyword", "script": {"source": SCRIPT, "params": {"path": path}}}),
                );
            }
        }
    }
}

/// The runtime field emitting each agent's [`RemoteConfigState`]: desired hash against reported
/// hash and status, from doc values when the `opampd.remote_config.*` keywords are `mapped`,
/// else from `_source`.
fn remote_config_state_field(mapped: bool) -> Value {
    use document::{REMOTE_CONFIG_DESIRED_HASH, REMOTE_CONFIG_REPORTED_HASH, REMOTE_CONFIG_STATUS};
    let source = if mapped {
        format!(
            "def d = doc['{REMOTE_CONFIG_DESIRED_HASH}']; def r = doc['{REMOTE_CONFIG_REPORTED_HASH}']; \
             def s = doc['{REMOTE_CONFIG_STATUS}']; String state = 'none'; \
             if (d.size() > 0) {{ state = 'pending'; \
               if (r.size() > 0 && s.size() > 0 && r.value == d.value \
                   && (s.value == 'applied' || s.value == 'applying' || s.value == 'failed')) {{ \
                 state = s.value; }} }} \
             emit(state);"
        )
    } else {
        "String state = 'none'; def o = params._source.opampd; \
         if (o instanceof Map) { def rc = o.remote_config; \
           if (rc instanceof Map && rc.desired_hash instanceof String) { state = 'pending'; \
             def s = rc.status; \
             if (rc.reported_hash == rc.desired_hash \
                 && (s == 'applied' || s == 'applying' || s == 'failed')) { state = s; } } } \
         emit(state);"
            .to_owned()
    };
    json!({"type": "keyword", "script": {"source": source}})
}

/// The query selecting what `filter` selects among OpAMP agents' documents.
fn query(filter: &AgentFilter, fields: FleetFields) -> Value {
    let mut clauses = vec![json!({"term": {"type": "OPAMP"}})];
    if let Some(status) = filter.status {
        clauses.push(status_query(status, filter));
    }
    if let Some(name) = &filter.service_name {
        clauses.push(json!({"term": {fields.service.field(): name}}));
        if matches!(fields.service, Keyword::FromSource { .. }) && !name.is_empty() {
            // the service name is always a tag: an indexed term narrows the documents whose
            // source is read to those that can match
            clauses.push(json!({"term": {"tags": name}}));
        }
    }
    if let Some(version) = &filter.version {
        clauses.push(json!({"term": {fields.version.field(): version}}));
    }
    if let Some(text) = &filter.text {
        let pattern = format!("*{}*", escape_wildcard(text));
        let wildcard = |field: &str| json!({"wildcard": {field: {"value": pattern, "case_insensitive": true}}});
        clauses.push(json!({"bool": {
            "should": [wildcard(fields.host.field()), wildcard(AGENT_ID)],
            "minimum_should_match": 1,
        }}));
    }
    json!({"bool": {"filter": clauses}})
}

/// The documents whose status as of the filter's clock is `status`, as
/// [`AgentRecord::status_at`] reads it: silent for longer than the threshold is offline unless
/// the agent said goodbye; a status fleet-server wrote that opampd does not know is online (as
/// adopting the document reads it).
fn status_query(status: AgentStatus, filter: &AgentFilter) -> Value {
    let cutoff = filter.now.saturating_sub(filter.offline_after_ms);
    let recent = json!({"range": {LAST_CHECKIN: {"gte": cutoff, "format": "epoch_millis"}}});
    let stored = |s: &str| json!({"term": {STATUS: s}});
    match status {
        AgentStatus::Offline => {
            json!({"bool": {"must_not": [recent, stored(AgentStatus::Disconnected.as_str())]}})
        }
        AgentStatus::Disconnected => stored(status.as_str()),
        AgentStatus::Degraded | AgentStatus::Error => {
            json!({"bool": {"filter": [recent, stored(status.as_str())]}})
        }
        AgentStatus::Online => json!({"bool": {
            "filter": [recent],
            "must_not": [{"terms": {STATUS: ["degraded", "error", "disconnected"]}}],
        }}),
    }
}

/// `text` with the wildcard syntax (`*`, `?` and the escape `\`) escaped, to match literally.
fn escape_wildcard(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if matches!(c, '*' | '?' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The counts search: the total, a `filters` bucket per status, the top service names and
/// versions, the remote-config states.
fn stats_request(filter: &AgentFilter, fields: FleetFields, rc_mapped: bool) -> Value {
    let statuses: Map<String, Value> =
        STATUSES.iter().map(|s| (s.as_str().to_owned(), status_query(*s, filter))).collect();
    let terms = |field: &str, size: usize| json!({"terms": {"field": field, "size": size, "shard_size": size * 10}});
    let mut runtime = Map::new();
    fields.runtime_mappings(&mut runtime);
    runtime.insert(REMOTE_CONFIG_STATE.to_owned(), remote_config_state_field(rc_mapped));
    json!({
        "size": 0,
        "track_total_hits": true,
        "query": query(filter, fields),
        "runtime_mappings": runtime,
        "aggs": {
            "status": {"filters": {"filters": statuses}},
            "service": terms(fields.service.field(), TOP_VALUES),
            "version": terms(fields.version.field(), TOP_VALUES),
            "remote_config": terms(REMOTE_CONFIG_STATE, RemoteConfigState::ALL.len()),
        },
    })
}

/// Reads the answer to [`stats_request`] back.
fn parse_stats(body: &Value) -> Result<AgentStats, StoreError> {
    let missing = |what: &str| StoreError::Backend(format!("agent counts answer lacks {what}"));
    let total = body
        .pointer("/hits/total/value")
        .and_then(Value::as_u64)
        .ok_or_else(|| missing("the total"))?;
    let mut by_status = StatusCounts::default();
    for status in STATUSES {
        let n = body
            .pointer(&format!("/aggregations/status/buckets/{}/doc_count", status.as_str()))
            .and_then(Value::as_u64)
            .ok_or_else(|| missing(status.as_str()))?;
        *by_status.get_mut(status) = n;
    }
    let buckets = |agg: &str| -> Result<Vec<(String, u64)>, StoreError> {
        let list = body
            .pointer(&format!("/aggregations/{agg}/buckets"))
            .and_then(Value::as_array)
            .ok_or_else(|| missing(agg))?;
        Ok(list
            .iter()
            .filter_map(|b| {
                Some((b.get("key")?.as_str()?.to_owned(), b.get("doc_count")?.as_u64()?))
            })
            .collect())
    };
    let mut stats = AgentStats {
        total,
        by_status,
        by_service: buckets("service")?,
        by_version: buckets("version")?,
        ..AgentStats::default()
    };
    for (key, n) in buckets("remote_config")? {
        if let Some(state) = RemoteConfigState::ALL.into_iter().find(|s| s.as_str() == key) {
            *stats.by_remote_config.get_mut(state) = n;
        }
    }
    Ok(stats)
}

impl Shared {
    /// Where the agent index keeps the filterable attributes, learnt once from `_field_caps`.
    /// `None` while there is no agent index (nothing to list or count).
    async fn fleet_fields(&self) -> Result<Option<FleetFields>, StoreError> {
        if let Some(fields) = self.fleet_fields.get() {
            return Ok(Some(*fields));
        }
        let index = self.cfg.index.as_str();
        let asked: Vec<&str> = [SERVICE_NAME, SERVICE_VERSION, HOST_NAME]
            .iter()
            .flat_map(|a| a.candidates.iter().copied())
            .collect();
        let response = self
            .client
            .field_caps(FieldCapsParts::Index(&[index]))
            .fields(&asked)
            .include_unmapped(true)
            .request_timeout(self.cfg.request_timeout)
            .send()
            .await
            .map_err(transport_error)?;
        let Some(caps) = json_body_unless_missing(response, "field caps").await? else {
            return Ok(None);
        };
        let fields = FleetFields::from_caps(&caps);
        info!(index, ?fields, "fleet fields of the agent index");
        Ok(Some(*self.fleet_fields.get_or_init(|| fields)))
    }

    /// Makes every acknowledged write visible to the searches that follow.
    pub(super) async fn refresh(&self) -> Result<(), StoreError> {
        let index = self.cfg.index.as_str();
        let refresh = self
            .client
            .indices()
            .refresh(IndicesRefreshParts::Index(&[index]))
            .send()
            .await
            .map_err(transport_error)?;
        let status = refresh.status_code().as_u16();
        if !refresh.status_code().is_success() && status != 404 {
            let text = refresh.text().await.unwrap_or_default();
            return Err(status_error(status, &text));
        }
        Ok(())
    }
}

impl ElasticsearchStore {
    pub(super) async fn list_inner(
        &self,
        filter: &AgentFilter,
        after: Option<InstanceUid>,
        limit: usize,
    ) -> Result<Vec<AgentRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let shared = &self.shared;
        shared.ensure_index_once().await?;
        shared.refresh().await?;
        let Some(fields) = shared.fleet_fields().await? else { return Ok(Vec::new()) };
        let index = shared.cfg.index.as_str();
        let mut runtime = Map::new();
        fields.runtime_mappings(&mut runtime);
        let query = query(filter, fields);
        let mut out = Vec::with_capacity(limit.min(1_000));
        let mut cursor = after.map(|uid| uid.to_string());
        // Pages are at most this big whatever `limit` is; ES refuses windows over 10k.
        let page = limit.min(1_000);
        while out.len() < limit {
            let mut body = json!({
                "size": page,
                "query": query,
                "sort": [ { AGENT_ID: "asc" } ],
                "_source": document::READ_SOURCE_FIELDS,
                "track_total_hits": false,
            });
            if !runtime.is_empty() {
                body["runtime_mappings"] = Value::Object(runtime.clone());
            }
            if let Some(c) = &cursor {
                body["search_after"] = json!([c]);
            }
            let response = shared
                .client
                .search(SearchParts::Index(&[index]))
                .body(body)
                .request_timeout(shared.cfg.request_timeout)
                .send()
                .await
                .map_err(transport_error)?;
            let Some(body) = json_body_unless_missing(response, "search").await? else { break };
            let hits = body.pointer("/hits/hits").and_then(Value::as_array).map(Vec::as_slice);
            let hits = hits.unwrap_or_default();
            for hit in hits {
                let Some(id) = hit.get("_id").and_then(Value::as_str) else { continue };
                cursor = Some(id.to_owned());
                let source = hit.get("_source").unwrap_or(&Value::Null);
                let uid: InstanceUid = id
                    .parse()
                    .map_err(|e| StoreError::Corrupt(format!("document id {id}: {e}")))?;
                out.push(document::from_source(source, uid)?);
                if out.len() == limit {
                    break;
                }
            }
            if hits.len() < page {
                break;
            }
        }
        Ok(out)
    }

    pub(super) async fn stats_inner(&self, filter: &AgentFilter) -> Result<AgentStats, StoreError> {
        let shared = &self.shared;
        shared.ensure_index_once().await?;
        shared.refresh().await?;
        let Some(fields) = shared.fleet_fields().await? else { return Ok(AgentStats::default()) };
        let rc_mapped = shared.remote_config_fields_mapped().await?;
        let response = shared
            .client
            .search(SearchParts::Index(&[&shared.cfg.index]))
            .body(stats_request(filter, fields, rc_mapped))
            .request_timeout(shared.cfg.request_timeout)
            .send()
            .await
            .map_err(transport_error)?;
        match json_body_unless_missing(response, "agent counts").await? {
            Some(body) => parse_stats(&body),
            None => Ok(AgentStats::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_keywords_where_mapped_and_runtime_fields_elsewhere() {
        // what an index opampd created answers
        let keyword =
            json!({"keyword": {"type": "keyword", "searchable": true, "aggregatable": true}});
        let ours = json!({"fields": {
            "agent.type": keyword, "agent.version": keyword,
            "local_metadata.elastic.agent.name": keyword,
            "local_metadata.host.hostname": keyword,
            "local_metadata.host.hostname.keyword": {"unmapped": {"type": "unmapped"}},
        }});
        let fields = FleetFields::from_caps(&ours);
        assert_eq!(fields.service, Keyword::Mapped("agent.type"));
        assert_eq!(fields.host, Keyword::Mapped("local_metadata.host.hostname"));
        let mut runtime = Map::new();
        fields.runtime_mappings(&mut runtime);
        assert!(runtime.is_empty());

        // what the 8.12 `.fleet-agents` mapping answers
        let fleet = json!({"fields": {
            "agent.type": {"unmapped": {"type": "unmapped"}},
            "agent.version": keyword,
            "local_metadata.host.hostname": {"text": {"type": "text", "searchable": true, "aggregatable": false}},
            "local_metadata.host.hostname.keyword": keyword,
        }});
        let fields = FleetFields::from_caps(&fleet);
        assert_eq!(fields.service, SERVICE_NAME.fallback);
        assert_eq!(fields.version, Keyword::Mapped("agent.version"));
        assert_eq!(fields.host, Keyword::Mapped("local_metadata.host.hostname.keyword"));
        let mut runtime = Map::new();
        fields.runtime_mappings(&mut runtime);
        assert_eq!(runtime.keys().collect::<Vec<_>>(), ["agent.type"]);

        // a field mapped differently in two indices behind an alias is no keyword
        let mixed =
            json!({"fields": {"agent.version": {"keyword": keyword["keyword"], "text": {}}}});
        assert_eq!(FleetFields::from_caps(&mixed).version, SERVICE_VERSION.fallback);
    }

    #[test]
    fn wildcard_syntax_in_the_text_matches_literally() {
        assert_eq!(escape_wildcard(r"a*b?c\d"), r"a\*b\?c\\d");
        assert_eq!(escape_wildcard("web-01"), "web-01");
    }

    #[test]
    fn offline_is_the_complement_of_recent_and_disconnected() {
        let filter = AgentFilter::all(10_000, 100);
        let q = status_query(AgentStatus::Offline, &filter);
        assert_eq!(q["bool"]["must_not"][0]["range"][LAST_CHECKIN]["gte"], 9_900);
        assert_eq!(q["bool"]["must_not"][1]["term"][STATUS], "disconnected");
        let early = AgentFilter::all(10, 100);
        let q = status_query(AgentStatus::Online, &early);
        assert_eq!(q["bool"]["filter"][0]["range"][LAST_CHECKIN]["gte"], 0, "no underflow");
    }

    #[test]
    fn stats_are_read_from_the_aggregations() {
        let body = json!({
            "hits": {"total": {"value": 7}},
            "aggregations": {
                "status": {"buckets": {"online": {"doc_count": 3}, "degraded": {"doc_count": 1},
                    "error": {"doc_count": 1}, "disconnected": {"doc_count": 0},
                    "offline": {"doc_count": 2}}},
                "service": {"buckets": [{"key": "otelcol", "doc_count": 6}]},
                "version": {"buckets": [{"key": "1.0", "doc_count": 4}, {"key": "2.0", "doc_count": 2}]},
                "remote_config": {"buckets": [{"key": "none", "doc_count": 5}, {"key": "failed", "doc_count": 2}]},
            }
        });
        let stats = parse_stats(&body).unwrap();
        assert_eq!(stats.total, 7);
        assert_eq!(stats.by_status.offline, 2);
        assert_eq!(stats.by_service, [("otelcol".to_owned(), 6)]);
        assert_eq!(stats.by_version.len(), 2);
        assert_eq!((stats.by_remote_config.none, stats.by_remote_config.failed), (5, 2));
        assert!(parse_stats(&json!({})).is_err());
    }
}
