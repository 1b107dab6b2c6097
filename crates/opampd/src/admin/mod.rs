//! The admin listener: liveness, readiness, Prometheus metrics, the fleet API (agents filtered
//! and paged, one agent, fleet counts) and the remote configs, every `/api` route behind the
//! admin token when one is set ([`token`]). Bound to localhost by default; it must never be the
//! OpAMP port. Agent JSON is built here by hand because the core types deliberately carry no
//! serialization.

use std::collections::BTreeMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use http::{StatusCode, header};
use opamp_core::{AgentRecord, AgentStatus};
use opamp_proto::v1::{
    AgentConfigMap, AnyValue, ComponentDetails, ComponentHealth, KeyValue, PackageStatus, any_value,
};
use opamp_proto::{InstanceUid, agent_caps};
use opamp_store::fleet::{AgentFilter, AgentStats, MAX_TEXT_CHARS, RemoteConfigState, STATUSES};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::state::AppState;

pub mod configs;
pub mod token;
pub mod ui;

pub fn router(state: AppState) -> Router {
    // every /api path, unknown ones included, is behind the token
    let api = Router::new()
        .merge(configs::routes())
        .route("/api/agents", get(agents))
        .route("/api/agents/{uid}", get(agent))
        .route("/api/stats", get(stats))
        .route("/api/{*rest}", any(unknown_api))
        .route_layer(middleware::from_fn_with_state(state.clone(), token::require));
    Router::new()
        .merge(api)
        .merge(ui::routes())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn unknown_api() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"error": "no such api"}))).into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.shutting_down.get() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    match state.service.store().ready().await {
        Ok(()) if !state.service.configs().loaded() => {
            (StatusCode::SERVICE_UNAVAILABLE, "remote configs not loaded yet").into_response()
        }
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "store not ready");
            (StatusCode::SERVICE_UNAVAILABLE, "store not ready").into_response()
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics.run_upkeep();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
        .into_response()
}

/// Agents per page when the caller names no `limit`, and the most it may ask for.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1_000;

/// The filters of `GET /api/agents` and `GET /api/stats`; an empty value is no filter (what
/// a form sends for a field left blank).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentsQuery {
    status: Option<String>,
    service_name: Option<String>,
    version: Option<String>,
    q: Option<String>,
    limit: Option<String>,
    /// The `next_cursor` of the previous page: opaque to callers.
    cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatsQuery {
    status: Option<String>,
    service_name: Option<String>,
    version: Option<String>,
    q: Option<String>,
}

fn bad_request(reason: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": reason.into()}))).into_response()
}

/// A query string that does not parse (an unknown parameter, one given twice).
fn bad_query(rejection: &QueryRejection) -> Response {
    bad_request(rejection.body_text())
}

/// The filter the parameters describe, with the status read at this instance's clock; or why a
/// value is not one the API knows.
fn filter(
    state: &AppState,
    status: Option<String>,
    service_name: Option<String>,
    version: Option<String>,
    q: Option<String>,
) -> Result<AgentFilter, String> {
    let given = |v: Option<String>| v.filter(|v| !v.is_empty());
    let status = match given(status) {
        None => None,
        Some(s) => Some(STATUSES.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            let known: Vec<&str> = STATUSES.iter().map(|k| k.as_str()).collect();
            format!("unknown status {s:?} (one of {})", known.join(", "))
        })?),
    };
    let text = given(q);
    if text.as_ref().is_some_and(|t| t.chars().count() > MAX_TEXT_CHARS) {
        return Err(format!("q is longer than {MAX_TEXT_CHARS} characters"));
    }
    Ok(AgentFilter {
        status,
        service_name: given(service_name),
        version: given(version),
        text,
        ..AgentFilter::all(state.service.now(), offline_after_ms(state))
    })
}

fn offline_after_ms(state: &AppState) -> u64 {
    u64::try_from(state.offline_after.as_millis()).unwrap_or(u64::MAX)
}

/// `GET /api/agents?status=&service_name=&version=&q=&limit=&cursor=`: the agents the filters
/// select in a stable order (uid), a page at a time, as `{"agents": [...], "next_cursor": "..."
/// | null}`. Off the hot path: on Elasticsearch it is a search, on the embedded store a scan.
async fn agents(
    State(state): State<AppState>,
    query: Result<Query<AgentsQuery>, QueryRejection>,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(rejection) => return bad_query(&rejection),
    };
    let limit = match q.limit.as_deref().filter(|l| !l.is_empty()).map(str::parse::<usize>) {
        None => DEFAULT_PAGE,
        Some(Ok(0)) => return bad_request("limit must be at least 1"),
        Some(Ok(n)) => n.min(MAX_PAGE),
        Some(Err(_)) => return bad_request("limit is not a number"),
    };
    let after = match q.cursor.as_deref().filter(|c| !c.is_empty()).map(str::parse::<InstanceUid>) {
        None => None,
        Some(Ok(uid)) => Some(uid),
        Some(Err(_)) => return bad_request("bad cursor (pass back a next_cursor)"),
    };
    let filter = match filter(&state, q.status, q.service_name, q.version, q.q) {
        Ok(f) => f,
        Err(reason) => return bad_request(reason),
    };
    // one more than asked says whether another page exists
    match state.service.store().list(&filter, after, limit + 1).await {
        Ok(mut records) => {
            let next_cursor = (records.len() > limit).then(|| {
                records.truncate(limit);
                records.last().map(|r| r.instance_uid.to_string())
            });
            let agents: Vec<Value> = records
                .iter()
                .map(|r| record_json(r, filter.now, filter.offline_after_ms))
                .collect();
            Json(json!({"agents": agents, "next_cursor": next_cursor.flatten()})).into_response()
        }
        Err(e) => store_read_failed(&e),
    }
}

/// `GET /api/stats?status=&service_name=&version=&q=`: the counts of the agents the filters
/// select (all by default), and the `ReportFullState` requests this instance made since it
/// started, by reason.
async fn stats(
    State(state): State<AppState>,
    query: Result<Query<StatsQuery>, QueryRejection>,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(rejection) => return bad_query(&rejection),
    };
    let filter = match filter(&state, q.status, q.service_name, q.version, q.q) {
        Ok(f) => f,
        Err(reason) => return bad_request(reason),
    };
    match state.service.store().stats(&filter).await {
        Ok(stats) => {
            let mut doc = stats_json(&stats);
            let full_state = state.service.full_state_counts().snapshot();
            doc["report_full_state"] =
                full_state.iter().map(|(r, n)| (r.as_str().to_owned(), json!(n))).collect();
            doc["as_of_ms"] = json!(filter.now);
            doc["offline_after_ms"] = json!(filter.offline_after_ms);
            Json(doc).into_response()
        }
        Err(e) => store_read_failed(&e),
    }
}

/// The JSON of the fleet counts (every status and remote-config state present, at zero too).
pub fn stats_json(stats: &AgentStats) -> Value {
    let by_status: Map<String, Value> = STATUSES
        .iter()
        .map(|s: &AgentStatus| (s.as_str().to_owned(), json!(stats.by_status.get(*s))))
        .collect();
    let by_remote_config: Map<String, Value> = RemoteConfigState::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), json!(stats.by_remote_config.get(*s))))
        .collect();
    let values = |v: &[(String, u64)]| -> Map<String, Value> {
        v.iter().map(|(k, n)| (k.clone(), json!(n))).collect()
    };
    json!({
        "total": stats.total,
        "by_status": by_status,
        "by_service": values(&stats.by_service),
        "by_version": values(&stats.by_version),
        "by_remote_config": by_remote_config,
    })
}

async fn agent(State(state): State<AppState>, Path(uid): Path<String>) -> Response {
    let Ok(uid) = uid.parse::<InstanceUid>() else {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "not a uuid"}))).into_response();
    };
    // not `get`: an entry in this instance's cache may predate another instance's write
    match state.service.store().get_fresh(uid).await {
        Ok(Some(v)) => {
            let now = state.service.now();
            let offline_after = state.offline_after.as_millis() as u64;
            let mut doc = record_json(&v.record, now, offline_after);
            doc["version"] =
                json!({"seq_no": v.version.seq_no, "primary_term": v.version.primary_term});
            Json(doc).into_response()
        }
        Ok(None) => {
            (StatusCode::NOT_FOUND, Json(json!({"error": "unknown agent"}))).into_response()
        }
        Err(e) => {
            tracing::warn!(instance_uid = %uid, "admin agent read failed");
            store_read_failed(&e)
        }
    }
}

/// 503 for a transient store failure, 500 otherwise; the details go to the log only.
fn store_read_failed(e: &opamp_store::StoreError) -> Response {
    tracing::warn!(error = %e, "admin store read failed");
    let status = if e.is_transient() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    (status, Json(json!({"error": "store read failed"}))).into_response()
}

/// The admin view of one agent; `status` is as of `now` (so it can read `offline`).
pub fn record_json(r: &AgentRecord, now: u64, offline_after_ms: u64) -> Value {
    json!({
        "instance_uid": r.instance_uid.to_string(),
        "sequence_num": r.sequence_num,
        "capabilities": r.capabilities,
        "capability_names": agent_caps::names(r.capabilities).collect::<Vec<_>>(),
        "status": r.status_at(now, offline_after_ms).as_str(),
        "stored_status": r.status.as_str(),
        "enrolled_at_ms": r.enrolled_at,
        "last_checkin_ms": r.last_checkin,
        "agent_description": r.agent_description.as_ref().map(|d| json!({
            "identifying_attributes": key_values(&d.identifying_attributes),
            "non_identifying_attributes": key_values(&d.non_identifying_attributes),
        })),
        "health": r.health.as_deref().map(health),
        "effective_config": r.effective_config.as_ref().map(|c| config_map(c.config_map.as_ref())),
        "remote_config": remote_config(r),
        "remote_config_status": r.remote_config_status.as_ref().map(|s| json!({
            "last_remote_config_hash": hex(&s.last_remote_config_hash),
            "status": s.status,
            "error_message": s.error_message,
        })),
        "package_statuses": r.package_statuses.as_ref().map(|p| json!({
            "packages": p.packages.iter().map(|(k, v)| (k.clone(), package(v))).collect::<Map<_, _>>(),
            "server_provided_all_packages_hash": hex(&p.server_provided_all_packages_hash),
            "error_message": p.error_message,
        })),
        "custom_capabilities": r.custom_capabilities.as_ref().map(|c| json!(c.capabilities)),
        "available_components": r.available_components.as_ref().map(|a| json!({
            "hash": hex(&a.hash),
            "components": components(&a.components),
        })),
        "connection_settings_status": r.connection_settings_status.as_ref().map(|s| json!({
            "last_connection_settings_hash": hex(&s.last_connection_settings_hash),
            "status": s.status,
            "error_message": s.error_message,
        })),
    })
}

/// The desired config next to what was sent and what the agent reports.
fn remote_config(r: &AgentRecord) -> Value {
    let reported = r.remote_config_status.as_deref();
    json!({
        "desired_name": r.desired_config.as_ref().map(|d| d.name.clone()),
        "desired_hash": r.desired_config.as_ref().map(|d| hex(&d.hash)),
        "offered_hash": r.offered_config.map(|o| hex(&o.hash)),
        "offered_at_ms": r.offered_config.map(|o| o.at),
        "reported_hash": reported.map(|s| hex(&s.last_remote_config_hash)),
        "status": reported.map(|s| remote_status_name(s.status)),
        "error_message": reported.map(|s| s.error_message.clone()).filter(|m| !m.is_empty()),
    })
}

fn remote_status_name(status: i32) -> &'static str {
    use opamp_proto::v1::RemoteConfigStatuses as S;
    match S::try_from(status) {
        Ok(S::Applied) => "applied",
        Ok(S::Applying) => "applying",
        Ok(S::Failed) => "failed",
        Ok(S::Unset) | Err(_) => "unset",
    }
}

fn health(h: &ComponentHealth) -> Value {
    json!({
        "healthy": h.healthy,
        "status": h.status,
        "last_error": h.last_error,
        "start_time_unix_nano": h.start_time_unix_nano,
        "status_time_unix_nano": h.status_time_unix_nano,
        "attributes": key_values(&h.attributes),
        "component_health_map": h.component_health_map.iter()
            .map(|(k, v)| (k.clone(), health(v)))
            .collect::<Map<_, _>>(),
    })
}

fn config_map(m: Option<&AgentConfigMap>) -> Value {
    let files = m.map(|m| {
        m.config_map
            .iter()
            .map(|(name, f)| {
                let body = String::from_utf8_lossy(&f.body).into_owned();
                (name.clone(), json!({"content_type": f.content_type, "body": body}))
            })
            .collect::<Map<_, _>>()
    });
    json!({ "config_map": files.unwrap_or_default() })
}

fn package(p: &PackageStatus) -> Value {
    json!({
        "name": p.name,
        "agent_has_version": p.agent_has_version,
        "agent_has_hash": hex(&p.agent_has_hash),
        "server_offered_version": p.server_offered_version,
        "status": p.status,
        "error_message": p.error_message,
    })
}

fn components(c: &std::collections::HashMap<String, ComponentDetails>) -> Value {
    // sorted for stable output
    let sorted: BTreeMap<_, _> = c.iter().collect();
    Value::Object(
        sorted
            .into_iter()
            .map(|(k, d)| {
                let v = json!({
                    "metadata": key_values(&d.metadata),
                    "sub_component_map": components(&d.sub_component_map),
                });
                (k.clone(), v)
            })
            .collect(),
    )
}

fn key_values(kvs: &[KeyValue]) -> Value {
    Value::Object(kvs.iter().map(|kv| (kv.key.clone(), any_value(kv.value.as_ref()))).collect())
}

fn any_value(v: Option<&AnyValue>) -> Value {
    use any_value::Value as V;
    match v.and_then(|v| v.value.as_ref()) {
        None => Value::Null,
        Some(V::StringValue(s)) => json!(s),
        Some(V::BoolValue(b)) => json!(b),
        Some(V::IntValue(i)) => json!(i),
        Some(V::DoubleValue(d)) => json!(d),
        Some(V::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(|v| any_value(Some(v))).collect())
        }
        Some(V::KvlistValue(kv)) => key_values(&kv.values),
        Some(V::BytesValue(b)) => json!(hex(b)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use opamp_store::fleet::{RemoteConfigCounts, StatusCounts};

    use super::*;

    #[test]
    fn stats_list_every_status_and_state_by_name() {
        let stats = AgentStats {
            total: 6,
            by_status: StatusCounts {
                online: 1,
                degraded: 2,
                error: 0,
                disconnected: 0,
                offline: 3,
            },
            by_service: vec![("b".into(), 4), ("a".into(), 2)],
            by_version: vec![],
            by_remote_config: RemoteConfigCounts {
                applied: 1,
                failed: 2,
                none: 3,
                ..Default::default()
            },
        };
        assert_eq!(
            stats_json(&stats),
            json!({
                "total": 6,
                "by_status": {"online": 1, "degraded": 2, "error": 0, "disconnected": 0, "offline": 3},
                "by_service": {"a": 2, "b": 4},
                "by_version": {},
                "by_remote_config": {"applied": 1, "applying": 0, "failed": 2, "pending": 0, "none": 3},
            })
        );
    }
}
