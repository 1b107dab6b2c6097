//! The remote-config API of the admin listener:
//! `GET /api/configs`, `GET|PUT|DELETE /api/configs/{name}`, `POST /api/configs/{name}/resume`.
//! JSON in and out, built by hand (the core types carry no serialization).

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use opamp_core::remote_config::{
    ConfigFile, MAX_CONFIG_BYTES, RemoteConfig, RolloutPolicy, hash_hex,
};
use opamp_store::{RolloutCounts, VersionedConfig};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::configs::ConfigError;
use crate::state::AppState;

/// Largest `PUT` body: the files' own bound plus room for JSON escaping and the selector.
pub const MAX_PUT_BODY: usize = 2 * MAX_CONFIG_BYTES + 64 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/configs", get(list))
        .route("/api/configs/{name}", get(show).put(put).delete(delete))
        .route("/api/configs/{name}/resume", post(resume))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigBody {
    #[serde(default)]
    selector: BTreeMap<String, String>,
    files: BTreeMap<String, FileBody>,
    #[serde(default)]
    rollout: Option<RolloutBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBody {
    body: String,
    #[serde(default)]
    content_type: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RolloutBody {
    max_agents_per_minute: Option<u32>,
    pause_on_failures: Option<u32>,
}

/// The config a `PUT /api/configs/{name}` body describes, or the reason it is refused (bad JSON,
/// an unknown or missing field, a config over its bounds). Never panics on any input.
pub fn parse_config(name: String, body: &[u8]) -> Result<RemoteConfig, String> {
    let parsed: ConfigBody =
        serde_json::from_slice(body).map_err(|e| format!("bad config JSON: {e}"))?;
    let files = parsed
        .files
        .into_iter()
        .map(|(n, f)| (n, ConfigFile { body: f.body, content_type: f.content_type }))
        .collect();
    let rollout = parsed.rollout.map_or(RolloutPolicy::default(), |r| RolloutPolicy {
        max_agents_per_minute: r.max_agents_per_minute,
        pause_on_failures: r.pause_on_failures,
    });
    RemoteConfig::new(name, parsed.selector, files, rollout).map_err(|e| e.to_string())
}

fn bad_request(reason: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": reason.into()}))).into_response()
}

fn failed(e: ConfigError) -> Response {
    let status = match &e {
        ConfigError::Invalid(_) => StatusCode::BAD_REQUEST,
        ConfigError::NotFound(_) => StatusCode::NOT_FOUND,
        ConfigError::Contention => StatusCode::CONFLICT,
        ConfigError::Store(s) if s.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
        ConfigError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let message = match &e {
        ConfigError::Store(s) => {
            tracing::warn!(error = %s, "config store operation failed");
            "config store unavailable".to_owned()
        }
        other => other.to_string(),
    };
    (status, Json(json!({"error": message}))).into_response()
}

/// `PUT /api/configs/{name}`: 200 with the stored config and its `"hash"`; 400 with a reason
/// for a bad name, body or config.
async fn put(State(state): State<AppState>, Path(name): Path<String>, body: Body) -> Response {
    let bytes = match axum::body::to_bytes(body, MAX_PUT_BODY).await {
        Ok(b) => b,
        Err(_) => return bad_request(format!("body over {MAX_PUT_BODY} bytes (or unreadable)")),
    };
    let config = match parse_config(name, &bytes) {
        Ok(c) => c,
        Err(reason) => return bad_request(reason),
    };
    match state.service.configs().put(config).await {
        Ok(view) => Json(config_json(&view, None)).into_response(),
        Err(e) => failed(e),
    }
}

async fn show(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    let configs = state.service.configs();
    let view = match configs.get(&name).await {
        Ok(Some(v)) => v,
        Ok(None) => return failed(ConfigError::NotFound(name)),
        Err(e) => return failed(e),
    };
    match configs.counts(std::slice::from_ref(&view)).await {
        Ok(counts) => Json(config_json(&view, counts.first())).into_response(),
        Err(e) => failed(e),
    }
}

async fn list(State(state): State<AppState>) -> Response {
    let configs = state.service.configs();
    let views = match configs.list().await {
        Ok(v) => v,
        Err(e) => return failed(e),
    };
    match configs.counts(&views).await {
        Ok(counts) => {
            let items: Vec<Value> =
                views.iter().zip(&counts).map(|(v, c)| config_json(v, Some(c))).collect();
            Json(json!({ "configs": items })).into_response()
        }
        Err(e) => failed(e),
    }
}

async fn delete(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    match state.service.configs().delete(&name).await {
        Ok(()) => Json(json!({ "deleted": name })).into_response(),
        Err(e) => failed(e),
    }
}

async fn resume(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    match state.service.configs().resume(&name).await {
        Ok(view) => Json(config_json(&view, None)).into_response(),
        Err(e) => failed(e),
    }
}

/// A config as the API shows it; `counts` adds `"agents"`.
pub fn config_json(view: &VersionedConfig, counts: Option<&RolloutCounts>) -> Value {
    let config = &view.stored.config;
    let policy = config.rollout();
    let state = &view.stored.rollout;
    let files: Map<String, Value> = config
        .files()
        .iter()
        .map(|(n, f)| (n.clone(), json!({"body": f.body, "content_type": f.content_type})))
        .collect();
    let mut doc = json!({
        "name": config.name(),
        "selector": config.selector(),
        "files": files,
        "rollout": (policy != RolloutPolicy::default()).then(|| json!({
            "max_agents_per_minute": policy.max_agents_per_minute,
            "pause_on_failures": policy.pause_on_failures,
        })),
        "hash": hash_hex(config.hash()),
        "updated_at_ms": view.stored.updated_at,
        "rollout_state": {
            "paused": state.paused,
            "failures": state.failures,
        },
        "version": {"seq_no": view.version.seq_no, "primary_term": view.version.primary_term},
    });
    if let Some(c) = counts {
        doc["agents"] = json!({
            "matched": c.matched,
            "applied": c.applied,
            "applying": c.applying,
            "failed": c.failed,
            "pending": c.pending,
        });
    }
    doc
}
