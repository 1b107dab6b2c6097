//! Read batching: concurrent cache-miss reads share one realtime `_mget` (a lone read is a plain
//! realtime `GET`), each document routed back to the callers that asked for it. A batch waits
//! for company as [`BatchWait`] says, up to `mget_max_wait`: only while reads are arriving.
//!
//! Reads are by `_id` only, realtime, so a read sees every acknowledged write without a refresh.
//! Never a `_search` here. An agent is read from its state record; only an agent that has none
//! (new, or written by an older opampd or by fleet-server) costs a second read, of its agent
//! document.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use elasticsearch::{GetParts, MgetParts};
use opamp_proto::InstanceUid;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::debug;

use super::batch_wait::{BatchWait, TARGET_BATCH_ITEMS};
use super::document::{self, READ_SOURCE_FIELDS};
use super::{STATE_ABSENT, Shared, json_body, transport_error};
use crate::{StoreError, Version, Versioned};

pub(super) type ReadResult = Result<Option<Versioned>, StoreError>;

pub(super) struct ReadOp {
    pub uid: InstanceUid,
    pub reply: oneshot::Sender<ReadResult>,
}

/// Runs until every sender is dropped; requests already sent finish in their own tasks.
pub(super) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<ReadOp>) {
    let permits = Arc::new(Semaphore::new(shared.cfg.mgets_in_flight));
    let max_items = shared.cfg.mget_max_items;
    let mut wait = BatchWait::new(shared.cfg.mget_max_wait, TARGET_BATCH_ITEMS.min(max_items));
    while let Some(first) = rx.recv().await {
        let opened = tokio::time::Instant::now();
        let deadline = opened + wait.current();
        // Waiting for a slot first lets the batch grow while ES is busy.
        let Ok(permit) = permits.clone().acquire_owned().await else { break };
        let mut batch: HashMap<InstanceUid, Vec<oneshot::Sender<ReadResult>>> = HashMap::new();
        batch.entry(first.uid).or_default().push(first.reply);
        let mut joined = 0;
        while batch.len() < max_items {
            let next = match rx.try_recv() {
                Ok(op) => Some(op),
                Err(mpsc::error::TryRecvError::Empty) => {
                    tokio::time::timeout_at(deadline, rx.recv()).await.ok().flatten()
                }
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
            let Some(op) = next else { break };
            joined += 1;
            batch.entry(op.uid).or_default().push(op.reply);
        }
        wait.record(joined, opened.elapsed());
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let uids: Vec<InstanceUid> = batch.keys().copied().collect();
            let results = fetch(&shared, &uids).await;
            for (uid, result) in uids.iter().zip(results) {
                for reply in batch.remove(uid).unwrap_or_default() {
                    let _ = reply.send(result.clone());
                }
            }
        });
    }
    debug!(index = %shared.cfg.index, "elasticsearch reader stopped");
}

/// One result per uid, in order; a whole-request failure is every uid's failure.
async fn fetch(shared: &Shared, uids: &[InstanceUid]) -> Vec<ReadResult> {
    let outcome = tokio::time::timeout(shared.cfg.request_timeout, async {
        // A read racing the first write's index creation would hit a shard that is not
        // allocated yet (503 for the agent); waiting for the setup answers it properly.
        shared.ensure_index_once().await?;
        let mut results = read(shared, &shared.state_index, uids).await?;
        let missing: Vec<usize> = (0..uids.len()).filter(|&i| results[i] == Ok(None)).collect();
        if !missing.is_empty() {
            // no state record: the agent document an older opampd or fleet-server wrote, if
            // any; the first write creates the state record from it
            let ids: Vec<InstanceUid> = missing.iter().map(|&i| uids[i]).collect();
            let older = read(shared, &shared.cfg.index, &ids).await?;
            for (i, found) in missing.into_iter().zip(older) {
                results[i] = found
                    .map(|doc| doc.map(|v| Versioned { record: v.record, version: STATE_ABSENT }));
            }
        }
        Ok(results)
    })
    .await
    .unwrap_or_else(|_| Err(StoreError::Unavailable("read timed out".into())));
    match outcome {
        Ok(results) => results,
        Err(err) => vec![Err(err); uids.len()],
    }
}

/// One realtime read of `uids` from `index`: a `GET` for one, an `_mget` for more.
async fn read(
    shared: &Shared,
    index: &str,
    uids: &[InstanceUid],
) -> Result<Vec<ReadResult>, StoreError> {
    let started = Instant::now();
    let results = if let [uid] = uids {
        get_one(shared, index, *uid).await.map(|r| vec![r])
    } else {
        get_many(shared, index, uids).await
    };
    shared.stats.record_read(uids.len(), started.elapsed());
    results
}

async fn get_one(shared: &Shared, index: &str, uid: InstanceUid) -> Result<ReadResult, StoreError> {
    let id = uid.to_string();
    let response = shared
        .client
        .get(GetParts::IndexId(index, &id))
        .realtime(true)
        ._source_includes(READ_SOURCE_FIELDS)
        .request_timeout(shared.cfg.request_timeout)
        .send()
        .await
        .map_err(transport_error)?;
    let status = response.status_code().as_u16();
    // 404 is both "no such document" and "no such index": either way the agent is unknown.
    if status == 404 {
        return Ok(Ok(None));
    }
    let doc = json_body(response, "get").await?;
    Ok(parse_doc(&doc, uid))
}

async fn get_many(
    shared: &Shared,
    index: &str,
    uids: &[InstanceUid],
) -> Result<Vec<ReadResult>, StoreError> {
    let ids: Vec<String> = uids.iter().map(ToString::to_string).collect();
    let response = shared
        .client
        .mget(MgetParts::Index(index))
        .realtime(true)
        ._source_includes(READ_SOURCE_FIELDS)
        .request_timeout(shared.cfg.request_timeout)
        .body(json!({ "ids": ids }))
        .send()
        .await
        .map_err(transport_error)?;
    let body = json_body(response, "mget").await?;
    let docs = body.get("docs").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    if docs.len() != uids.len() {
        return Err(StoreError::Backend(format!(
            "mget answered {} docs for {} ids",
            docs.len(),
            uids.len()
        )));
    }
    Ok(docs.iter().zip(uids).map(|(doc, uid)| parse_doc(doc, *uid)).collect())
}

/// A GET response or one `_mget` doc: found -> record and version, not found -> `None`.
fn parse_doc(doc: &Value, uid: InstanceUid) -> ReadResult {
    if let Some(error) = doc.get("error") {
        let kind = error.get("type").and_then(Value::as_str).unwrap_or("unknown");
        // A missing index only means no agent was ever written there.
        if kind == "index_not_found_exception" {
            return Ok(None);
        }
        let reason = error.get("reason").and_then(Value::as_str).unwrap_or("");
        let message = format!("read of {uid} failed: {kind}: {reason}");
        return Err(match kind {
            // A shard still initialising (e.g. just after the index was created) or relocating,
            // or a node too busy: retry later, not an internal error.
            "no_shard_available_action_exception" | "unavailable_shards_exception" => {
                StoreError::Unavailable(message)
            }
            "es_rejected_execution_exception" | "circuit_breaking_exception" => {
                StoreError::Overloaded
            }
            _ => StoreError::Backend(message),
        });
    }
    if doc.get("_id").and_then(Value::as_str).is_some_and(|id| id != uid.to_string()) {
        return Err(StoreError::Backend(format!("read of {uid} answered for another id")));
    }
    if doc.get("found").and_then(Value::as_bool) != Some(true) {
        return Ok(None);
    }
    let seq_no = doc.get("_seq_no").and_then(Value::as_u64);
    let primary_term = doc.get("_primary_term").and_then(Value::as_u64);
    let (Some(seq_no), Some(primary_term)) = (seq_no, primary_term) else {
        return Err(StoreError::Backend(format!("read of {uid} has no version")));
    };
    let source = doc.get("_source").unwrap_or(&Value::Null);
    let record = document::from_source(source, uid)?;
    Ok(Some(Versioned { record, version: Version { seq_no, primary_term } }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_odd_docs_do_not_panic() {
        let uid = InstanceUid::from_bytes([1; 16]);
        let id = uid.to_string();
        assert_eq!(parse_doc(&json!({"_id": id, "found": false}), uid), Ok(None));
        assert_eq!(
            parse_doc(&json!({"_id": id, "error": {"type": "index_not_found_exception"}}), uid),
            Ok(None)
        );
        assert!(matches!(
            parse_doc(&json!({"_id": id, "error": {"type": "x"}}), uid),
            Err(StoreError::Backend(_))
        ));
        assert!(matches!(
            parse_doc(
                &json!({"_id": id, "error": {"type": "no_shard_available_action_exception"}}),
                uid
            ),
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            parse_doc(
                &json!({"_id": id, "error": {"type": "es_rejected_execution_exception"}}),
                uid
            ),
            Err(StoreError::Overloaded)
        ));
        assert!(matches!(
            parse_doc(&json!({"_id": id, "found": true}), uid),
            Err(StoreError::Backend(_))
        ));
        assert!(matches!(
            parse_doc(&json!({"_id": id, "found": true, "_seq_no": 1, "_primary_term": 1}), uid),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            parse_doc(&json!({"_id": "other", "found": true}), uid),
            Err(StoreError::Backend(_))
        ));
        assert_eq!(parse_doc(&json!(null), uid), Ok(None));
    }
}
