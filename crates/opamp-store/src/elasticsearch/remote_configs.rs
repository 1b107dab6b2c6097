//! Remote configs in Elasticsearch: one document per config in the config index (`_id` = the
//! name, `_source` = [`configs::to_json`]), and the rollout counts as one aggregation over the
//! agent index.
//!
//! Config writes are rare (an operator, a rollout claiming send slots), so each is its own
//! request with `refresh=true`: a `config_versions` search right after it sees it. They are
//! compare-and-swap writes (`if_seq_no`/`if_primary_term`; `op_type=create` for a new config),
//! classified like the agent writes. Never on the OpAMP hot path except `config_versions`, a
//! search that returns ids and versions only.
//!
//! opampd creates the config index only explicitly, with its mapping, and sends no config
//! write before the index exists: any write to a missing index has Elasticsearch create it.
//! For a name in a system index's pattern that is the only way it comes to be, from the system
//! index's descriptor, alias included. Measured on 8.12: a first write to
//! `.fleet-agents-opampd-configs` creates it with the `.fleet-agents` mapping *and the
//! `.fleet-agents` alias*, after which every read by id through `.fleet-agents` fails ("alias
//! has more than one index"), opampd's and Kibana's alike. So a config index that cannot be
//! created explicitly (a system index name, or credentials without `create_index` on it) must
//! exist beforehand, or config writes are refused; and a config index found behind the agent
//! index (what such a write left) is refused outright. See [`EsConfig::config_index`] for a
//! name fleet-server's service token may create.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use elasticsearch::indices::IndicesGetFieldMappingParts;
use elasticsearch::params::{OpType, Refresh};
use elasticsearch::{CountParts, DeleteParts, FieldCapsParts, GetParts, IndexParts, SearchParts};
use opamp_core::remote_config::{ConfigHash, hash_hex, validate_name};
use serde_json::{Map, Value, json};
use tracing::{info, warn};

#[cfg(doc)]
use super::EsConfig;
use super::document::{
    REMOTE_CONFIG_DESIRED_HASH, REMOTE_CONFIG_DESIRED_NAME, REMOTE_CONFIG_OFFERED_HASH,
    REMOTE_CONFIG_REPORTED_HASH, REMOTE_CONFIG_STATUS,
};
use super::{
    ElasticsearchStore, FIELDS_MAPPED, FIELDS_UNKNOWN, FIELDS_UNMAPPED, SetUp, Shared, json_body,
    json_body_unless_missing, status_error, transport_error,
};
use crate::configs::{
    self, ConfigStore, MAX_CONFIGS, RolloutCounts, SCHEMA_VERSION, StoredConfig, VersionedConfig,
};
use crate::{Precondition, StoreError, Version};

/// Most configs `config_versions` reads (Elasticsearch's default result window). More than
/// [`MAX_CONFIGS`], which a create checks: instances creating configs at once may together go
/// a little past it, and a listing that dropped some would read as if they were deleted.
const MAX_LISTED: usize = 10_000;

/// The mapping of a config index opampd creates: only `name`, `hash` and `updated_at` are
/// indexed (`dynamic: false`); the rest is stored, not indexed.
pub(super) fn mappings() -> Value {
    let stored_only = json!({ "type": "object", "enabled": false });
    json!({
        "dynamic": false,
        "_meta": { "opampd_config_schema_version": SCHEMA_VERSION },
        "properties": {
            "schema_version": { "type": "integer" },
            "name": { "type": "keyword" },
            "hash": { "type": "keyword" },
            "updated_at": { "type": "date" },
            "selector": stored_only,
            "files": stored_only,
            "rollout": stored_only,
            "state": stored_only
        }
    })
}

impl Shared {
    /// [`ensure_index_once`](Self::ensure_index_once) for the config index: created with
    /// [`mappings`] if missing (or, for a name in a system index's pattern, by the first
    /// write), its primary shard active before any request, whoever created it.
    async fn ensure_config_index_once(&self) -> Result<(), StoreError> {
        if self.config_index_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let timeout = self.cfg.request_timeout;
        // One setup at a time; a tokio mutex guarding no data.
        let _setup = tokio::time::timeout(timeout, self.config_index_setup.lock())
            .await
            .map_err(|_| StoreError::Unavailable("config index setup timed out".into()))?;
        if self.config_index_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let index = self.config_index.as_str();
        let set_up = tokio::time::timeout(
            timeout,
            self.set_up(index, super::document::settings(None), mappings(), true),
        )
        .await
        .map_err(|_| StoreError::Unavailable("config index setup timed out".into()))??;
        if !matches!(set_up, SetUp::Opaque | SetUp::OnFirstWrite) {
            self.config_index_exists.store(true, Ordering::Release);
        }
        tokio::time::timeout(timeout, self.check_not_behind_agent_index())
            .await
            .map_err(|_| StoreError::Unavailable("config index setup timed out".into()))??;
        self.config_index_ready.store(true, Ordering::Release);
        info!(index, ?set_up, "elasticsearch config index ready");
        Ok(())
    }

    /// Refuses a config index that the agent index (an alias) resolves to: what a write that
    /// created the config index from the agents' system index descriptor left behind (see the
    /// [module docs](self)). Config documents there would be read as agents, and the agent
    /// index could no longer be read by id. `_field_caps` lists the concrete indices with only
    /// read privileges.
    async fn check_not_behind_agent_index(&self) -> Result<(), StoreError> {
        let index = self.cfg.index.as_str();
        let response = self
            .client
            .field_caps(FieldCapsParts::Index(&[index]))
            .fields(&["agent.id"])
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status_code().as_u16();
        if status == 404 {
            return Ok(());
        }
        let body = json_body(response, "field caps").await?;
        let behind = body.get("indices").and_then(Value::as_array).map(Vec::as_slice);
        if behind.unwrap_or_default().iter().any(|i| i.as_str() == Some(&self.config_index)) {
            let config_index = &self.config_index;
            warn!(index, config_index = %config_index, "config index is behind the agent index");
            return Err(StoreError::Backend(format!(
                "config index {config_index} is one of the indices behind agent index {index} (a \
                 write created it from a system index descriptor, alias included): it cannot \
                 hold configs; choose another config index (--es-config-index); only a role \
                 with manage on restricted indices can take it out of the {index} alias, not \
                 even a superuser"
            )));
        }
        Ok(())
    }

    /// Whether the agent index maps the `opampd.remote_config.*` fields, learnt at set-up or
    /// asked of `_mapping` once. Credentials that may not read the mapping (fleet-server's
    /// service token on `.fleet-agents`) and a mapping opampd could not change both mean no.
    pub(super) async fn remote_config_fields_mapped(&self) -> Result<bool, StoreError> {
        match self.remote_config_fields.load(Ordering::Acquire) {
            FIELDS_MAPPED => return Ok(true),
            FIELDS_UNMAPPED => return Ok(false),
            _ => {}
        }
        let index = self.cfg.index.as_str();
        let response = self
            .client
            .indices()
            .get_field_mapping(IndicesGetFieldMappingParts::IndexFields(
                &[index],
                &[REMOTE_CONFIG_DESIRED_NAME, REMOTE_CONFIG_REPORTED_HASH, REMOTE_CONFIG_STATUS],
            ))
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status_code().as_u16();
        let mapped = match status {
            200 => {
                let body: Value = response.json().await.unwrap_or(Value::Null);
                fields_mapped(&body)
            }
            // not allowed to look, or no index yet (then nothing is counted either way)
            403 | 404 => false,
            _ => {
                let text = response.text().await.unwrap_or_default();
                return Err(status_error(status, &text));
            }
        };
        let value = if mapped { FIELDS_MAPPED } else { FIELDS_UNMAPPED };
        // A 404 is no answer about the index to come: ask again next time.
        if status != 404 {
            let _ = self.remote_config_fields.compare_exchange(
                FIELDS_UNKNOWN,
                value,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        info!(index, mapped, "remote config fields of the agent index");
        Ok(mapped)
    }
}

/// True when every concrete index of a `_mapping/field` answer maps all the fields asked for.
fn fields_mapped(body: &Value) -> bool {
    let Some(indices) = body.as_object().filter(|i| !i.is_empty()) else { return false };
    indices.values().all(|index| {
        let fields = index.get("mappings").and_then(Value::as_object);
        [REMOTE_CONFIG_DESIRED_NAME, REMOTE_CONFIG_REPORTED_HASH, REMOTE_CONFIG_STATUS]
            .iter()
            .all(|f| fields.is_some_and(|m| m.contains_key(*f)))
    })
}

impl ElasticsearchStore {
    /// Bounds one config operation: index set-up and request.
    async fn bounded<T>(
        &self,
        what: &str,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.shared.cfg.request_timeout * 2, op)
            .await
            .map_err(|_| StoreError::Unavailable(format!("{what} timed out")))?
    }

    async fn config_versions_inner(&self) -> Result<Vec<(String, Version)>, StoreError> {
        let shared = &self.shared;
        shared.ensure_config_index_once().await?;
        let body = json!({
            "size": MAX_LISTED,
            "query": { "match_all": {} },
            "_source": false,
            "seq_no_primary_term": true,
            "track_total_hits": true,
        });
        let response = shared
            .client
            .search(SearchParts::Index(&[&shared.config_index]))
            .body(body)
            .request_timeout(shared.cfg.request_timeout)
            .send()
            .await
            .map_err(transport_error)?;
        // no config was ever written
        match json_body_unless_missing(response, "config search").await? {
            Some(body) => parse_versions(&body),
            None => Ok(Vec::new()),
        }
    }

    async fn get_config_inner(&self, name: &str) -> Result<Option<VersionedConfig>, StoreError> {
        if validate_name(name).is_err() {
            return Ok(None);
        }
        let shared = &self.shared;
        shared.ensure_config_index_once().await?;
        let response = shared
            .client
            .get(GetParts::IndexId(&shared.config_index, name))
            .realtime(true)
            .request_timeout(shared.cfg.request_timeout)
            .send()
            .await
            .map_err(transport_error)?;
        // no such config, or no config index yet
        match json_body_unless_missing(response, "config get").await? {
            Some(doc) => parse_config(&doc, name),
            None => Ok(None),
        }
    }

    async fn put_config_inner(
        &self,
        config: &StoredConfig,
        precondition: Precondition,
    ) -> Result<Version, StoreError> {
        config.check().map_err(StoreError::Backend)?;
        let shared = &self.shared;
        shared.ensure_config_index_once().await?;
        let name = config.config.name();
        let index = shared.config_index.as_str();
        let mut request = shared
            .client
            .index(IndexParts::IndexId(index, name))
            .refresh(Refresh::True)
            .request_timeout(shared.cfg.request_timeout)
            .body(configs::to_json(config));
        match precondition {
            Precondition::Absent => {
                if self.writable_count().await? >= MAX_CONFIGS as u64 {
                    // a create of an existing config is a conflict, whatever the count
                    return match self.get_config_inner(name).await? {
                        Some(_) => Err(StoreError::Conflict),
                        None => Err(configs::too_many()),
                    };
                }
                request = request.op_type(OpType::Create);
            }
            Precondition::Version(v) => {
                let (Ok(seq_no), Ok(term)) =
                    (i64::try_from(v.seq_no), i64::try_from(v.primary_term))
                else {
                    return Err(StoreError::Conflict);
                };
                if !shared.config_index_exists.load(Ordering::Acquire) {
                    self.writable_count().await?;
                }
                request = request.if_seq_no(seq_no).if_primary_term(term);
            }
        }
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status_code().as_u16();
        if status == 409 {
            return Err(StoreError::Conflict);
        }
        let body = json_body(response, "config write").await?;
        let seq_no = body.get("_seq_no").and_then(Value::as_u64);
        let primary_term = body.get("_primary_term").and_then(Value::as_u64);
        match (seq_no, primary_term) {
            (Some(seq_no), Some(primary_term)) => Ok(Version { seq_no, primary_term }),
            _ => Err(StoreError::Backend(format!("config write of {name} has no version"))),
        }
    }

    /// Configs in the index now (every config write refreshes), after making sure the index
    /// exists: a missing one is refused rather than left for the write to create (see the
    /// [module docs](self)).
    async fn writable_count(&self) -> Result<u64, StoreError> {
        let shared = &self.shared;
        let Some(count) = self.count_configs().await? else {
            let index = &shared.config_index;
            warn!(index = %index, "config index missing and not creatable: config write refused");
            return Err(StoreError::Backend(format!(
                "config index {index} does not exist and opampd could not create it (a system \
                 index name, or credentials that may not create indices); a first write would \
                 have Elasticsearch create it, from a system index's descriptor with that \
                 index's alias: choose a config index (--es-config-index) these credentials may \
                 create, or create it beforehand"
            )));
        };
        shared.config_index_exists.store(true, Ordering::Release);
        Ok(count)
    }

    /// Configs in the index now, or `None` when there is no config index.
    async fn count_configs(&self) -> Result<Option<u64>, StoreError> {
        let shared = &self.shared;
        let response = shared
            .client
            .count(CountParts::Index(&[&shared.config_index]))
            .request_timeout(shared.cfg.request_timeout)
            .send()
            .await
            .map_err(transport_error)?;
        let Some(body) = json_body_unless_missing(response, "config count").await? else {
            return Ok(None);
        };
        body.get("count")
            .and_then(Value::as_u64)
            .map(Some)
            .ok_or_else(|| StoreError::Backend("config count answer has no count".into()))
    }

    async fn delete_config_inner(&self, name: &str, version: Version) -> Result<(), StoreError> {
        let (Ok(seq_no), Ok(term), Ok(())) = (
            i64::try_from(version.seq_no),
            i64::try_from(version.primary_term),
            validate_name(name),
        ) else {
            return Err(StoreError::Conflict);
        };
        let shared = &self.shared;
        shared.ensure_config_index_once().await?;
        // a delete creates a missing index too
        if !shared.config_index_exists.load(Ordering::Acquire)
            && self.count_configs().await?.is_none()
        {
            return Err(StoreError::Conflict);
        }
        let response = shared
            .client
            .delete(DeleteParts::IndexId(&shared.config_index, name))
            .if_seq_no(seq_no)
            .if_primary_term(term)
            .refresh(Refresh::True)
            .request_timeout(shared.cfg.request_timeout)
            .send()
            .await
            .map_err(transport_error)?;
        match response.status_code().as_u16() {
            200..=299 => Ok(()),
            // changed since, or gone (the config, or the whole index)
            404 | 409 => Err(StoreError::Conflict),
            status => {
                let text = response.text().await.unwrap_or_default();
                Err(status_error(status, &text))
            }
        }
    }

    async fn rollout_counts_inner(
        &self,
        configs: &[(String, ConfigHash)],
    ) -> Result<Vec<RolloutCounts>, StoreError> {
        let shared = &self.shared;
        shared.ensure_index_once().await?;
        // the agent index refreshes rarely (see `EsConfig::refresh_interval`)
        shared.refresh().await?;
        let mapped = shared.remote_config_fields_mapped().await?;
        let body = counts_request(configs, mapped);
        let response = shared
            .client
            .search(SearchParts::Index(&[&shared.cfg.index]))
            .body(body)
            .request_timeout(shared.cfg.request_timeout)
            .send()
            .await
            .map_err(transport_error)?;
        match json_body_unless_missing(response, "rollout counts").await? {
            Some(body) => parse_counts(&body, configs.len()),
            None => Ok(vec![RolloutCounts::default(); configs.len()]),
        }
    }
}

#[async_trait]
impl ConfigStore for ElasticsearchStore {
    /// A search of the config index for ids and versions, sorted here (a config index created
    /// from a system index's descriptor may not map `name`).
    async fn config_versions(&self) -> Result<Vec<(String, Version)>, StoreError> {
        self.bounded("config listing", self.config_versions_inner()).await
    }

    /// A realtime GET by id.
    async fn get_config(&self, name: &str) -> Result<Option<VersionedConfig>, StoreError> {
        self.bounded("config read", self.get_config_inner(name)).await
    }

    /// One index request with `refresh=true`. The [`MAX_CONFIGS`] bound is a count taken before
    /// a create: instances creating configs at the same moment may together pass it by a few.
    async fn put_config(
        &self,
        config: &StoredConfig,
        precondition: Precondition,
    ) -> Result<Version, StoreError> {
        self.bounded("config write", self.put_config_inner(config, precondition)).await
    }

    async fn delete_config(&self, name: &str, version: Version) -> Result<(), StoreError> {
        self.bounded("config delete", self.delete_config_inner(name, version)).await
    }

    /// One `_search` of the agent index (size 0) with a `filters` aggregation per count, on
    /// the `opampd.remote_config.*` keyword fields; where the agent index does not map them
    /// (the `.fleet-agents` system index), as runtime fields read from `_source`, after a
    /// refresh: it sees every agent document written before it (agent documents are written
    /// just after their state record, see `ElasticsearchStore::publish`).
    async fn rollout_counts(
        &self,
        configs: &[(String, ConfigHash)],
    ) -> Result<Vec<RolloutCounts>, StoreError> {
        if configs.is_empty() {
            return Ok(Vec::new());
        }
        self.bounded("rollout counts", self.rollout_counts_inner(configs)).await
    }
}

/// `(name, version)` of every hit, in name order.
fn parse_versions(body: &Value) -> Result<Vec<(String, Version)>, StoreError> {
    let hits = body.pointer("/hits/hits").and_then(Value::as_array).map(Vec::as_slice);
    let hits = hits.ok_or_else(|| StoreError::Backend("config search has no hits".into()))?;
    let total = body.pointer("/hits/total/value").and_then(Value::as_u64).unwrap_or(0);
    if total > hits.len() as u64 {
        return Err(StoreError::Backend(format!(
            "the config index holds {total} documents, more than the {MAX_LISTED} listed"
        )));
    }
    let mut out = hits
        .iter()
        .map(|hit| {
            let id = hit.get("_id").and_then(Value::as_str);
            let seq_no = hit.get("_seq_no").and_then(Value::as_u64);
            let primary_term = hit.get("_primary_term").and_then(Value::as_u64);
            match (id, seq_no, primary_term) {
                (Some(id), Some(seq_no), Some(primary_term)) => {
                    Ok((id.to_owned(), Version { seq_no, primary_term }))
                }
                _ => Err(StoreError::Backend("config search hit without id or version".into())),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// A realtime GET answer of config `name`.
fn parse_config(doc: &Value, name: &str) -> Result<Option<VersionedConfig>, StoreError> {
    if doc.get("found").and_then(Value::as_bool) != Some(true) {
        return Ok(None);
    }
    let seq_no = doc.get("_seq_no").and_then(Value::as_u64);
    let primary_term = doc.get("_primary_term").and_then(Value::as_u64);
    let (Some(seq_no), Some(primary_term)) = (seq_no, primary_term) else {
        return Err(StoreError::Backend(format!("read of config {name} has no version")));
    };
    let stored = configs::from_json(doc.get("_source").unwrap_or(&Value::Null))?;
    if stored.config.name() != name {
        return Err(StoreError::Corrupt(format!(
            "config document {name} holds config {}",
            stored.config.name()
        )));
    }
    Ok(Some(VersionedConfig { stored, version: Version { seq_no, primary_term } }))
}

/// The four counts the aggregation computes per config, in the order of its buckets.
const COUNTED: [&str; 4] = ["matched", "applied", "applying", "failed"];

/// The rollout-count search: for each config `i`, bucket `i` of each `filters` aggregation in
/// [`COUNTED`]. Runtime fields stand in for the `opampd.remote_config.*` keywords when the
/// index does not map them.
fn counts_request(configs: &[(String, ConfigHash)], mapped: bool) -> Value {
    let names: BTreeSet<&str> = configs.iter().map(|(name, _)| name.as_str()).collect();
    let term = |field: &str, value: &str| json!({ "term": { field: value } });
    let mut aggs = Map::new();
    for counted in COUNTED {
        let filters: Vec<Value> = configs
            .iter()
            .map(|(name, hash)| {
                let mut filter = vec![term(REMOTE_CONFIG_DESIRED_NAME, name)];
                if counted != "matched" {
                    filter.push(term(REMOTE_CONFIG_REPORTED_HASH, &hash_hex(hash)));
                    filter.push(term(REMOTE_CONFIG_STATUS, counted));
                }
                json!({ "bool": { "filter": filter } })
            })
            .collect();
        aggs.insert(counted.to_owned(), json!({ "filters": { "filters": filters } }));
    }
    let mut body = json!({
        "size": 0,
        "track_total_hits": false,
        "query": { "terms": { REMOTE_CONFIG_DESIRED_NAME: names } },
        "aggs": aggs,
    });
    if !mapped {
        body["runtime_mappings"] = runtime_mappings();
    }
    body
}

/// Keyword runtime fields emitting `opampd.remote_config.<field>` from `_source`, for an agent
/// index whose mapping opampd cannot change.
fn runtime_mappings() -> Value {
    const SCRIPT: &str = "def o = params._source.opampd; \
        if (o instanceof Map) { def r = o.remote_config; \
        if (r instanceof Map) { def v = r[params.field]; \
        if (v instanceof String) { emit(v); } } }";
    let fields = [
        REMOTE_CONFIG_DESIRED_NAME,
        REMOTE_CONFIG_DESIRED_HASH,
        REMOTE_CONFIG_OFFERED_HASH,
        REMOTE_CONFIG_REPORTED_HASH,
        REMOTE_CONFIG_STATUS,
    ];
    let mut runtime = Map::new();
    for path in fields {
        let field = path.rsplit('.').next().unwrap_or(path);
        runtime.insert(
            path.to_owned(),
            json!({
                "type": "keyword",
                "script": { "source": SCRIPT, "params": { "field": field } }
            }),
        );
    }
    Value::Object(runtime)
}

/// Reads the buckets of [`counts_request`] back, one [`RolloutCounts`] per config.
fn parse_counts(body: &Value, configs: usize) -> Result<Vec<RolloutCounts>, StoreError> {
    let mut counts = vec![RolloutCounts::default(); configs];
    for counted in COUNTED {
        let buckets = body
            .pointer(&format!("/aggregations/{counted}/buckets"))
            .and_then(Value::as_array)
            .filter(|b| b.len() == configs)
            .ok_or_else(|| {
                StoreError::Backend(format!("rollout counts answer lacks the {counted} buckets"))
            })?;
        for (c, bucket) in counts.iter_mut().zip(buckets) {
            let n = bucket.get("doc_count").and_then(Value::as_u64).unwrap_or(0);
            match counted {
                "matched" => c.matched = n,
                "applied" => c.applied = n,
                "applying" => c.applying = n,
                _ => c.failed = n,
            }
        }
    }
    for c in &mut counts {
        c.pending = c.matched.saturating_sub(c.applied + c.applying + c.failed);
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_sorted_by_name_and_checked() {
        let body = json!({"hits": {"total": {"value": 2}, "hits": [
            {"_id": "b", "_seq_no": 4, "_primary_term": 1},
            {"_id": "a", "_seq_no": 9, "_primary_term": 2},
        ]}});
        assert_eq!(
            parse_versions(&body),
            Ok(vec![
                ("a".to_owned(), Version { seq_no: 9, primary_term: 2 }),
                ("b".to_owned(), Version { seq_no: 4, primary_term: 1 }),
            ])
        );
        for bad in [
            json!({}),
            json!({"hits": {"hits": [{"_id": "a"}]}}),
            json!({"hits": {"total": {"value": 3}, "hits": []}}),
        ] {
            assert!(matches!(parse_versions(&bad), Err(StoreError::Backend(_))), "{bad}");
        }
    }

    #[test]
    fn counts_come_from_the_buckets_in_config_order() {
        let buckets =
            |ns: [u64; 2]| json!({"buckets": [{"doc_count": ns[0]}, {"doc_count": ns[1]}]});
        let body = json!({"aggregations": {
            "matched": buckets([10, 0]), "applied": buckets([4, 0]),
            "applying": buckets([1, 0]), "failed": buckets([2, 0]),
        }});
        let counts = parse_counts(&body, 2).unwrap();
        assert_eq!(
            counts[0],
            RolloutCounts { matched: 10, applied: 4, applying: 1, failed: 2, pending: 3 }
        );
        assert_eq!(counts[1], RolloutCounts::default());
        assert!(parse_counts(&json!({}), 2).is_err());
        assert!(parse_counts(&body, 3).is_err(), "a bucket per config");
    }

    #[test]
    fn the_count_request_uses_runtime_fields_only_where_unmapped() {
        let configs = [("a".to_owned(), [1u8; 32]), ("b".to_owned(), [2u8; 32])];
        let mapped = counts_request(&configs, true);
        assert_eq!(mapped.get("runtime_mappings"), None);
        assert_eq!(mapped["aggs"]["applied"]["filters"]["filters"].as_array().unwrap().len(), 2);
        let unmapped = counts_request(&configs, false);
        assert_eq!(
            unmapped["runtime_mappings"][REMOTE_CONFIG_STATUS]["script"]["params"]["field"],
            "status"
        );
    }

    #[test]
    fn field_mappings_count_only_when_every_index_has_them() {
        let all: Map<String, Value> =
            [REMOTE_CONFIG_DESIRED_NAME, REMOTE_CONFIG_REPORTED_HASH, REMOTE_CONFIG_STATUS]
                .iter()
                .map(|f| ((*f).to_owned(), json!({})))
                .collect();
        assert!(fields_mapped(&json!({"i": {"mappings": all}})));
        assert!(!fields_mapped(&json!({"i": {"mappings": all}, "j": {"mappings": {}}})));
        assert!(!fields_mapped(&json!({})));
        assert!(!fields_mapped(&json!(null)));
    }
}
