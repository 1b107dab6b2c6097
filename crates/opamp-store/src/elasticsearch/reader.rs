//! Read batching: concurrent cache-miss reads share one realtime `_mget` (a lone read is a plain
//! realtime `GET`), each document routed back to the callers that asked for it. A batch waits
//! for company as [`BatchWait`] says, up to `mget_max_wait`: only while reads are arriving.
//!
//! Reads are by `_id` only, realtime, so a read sees every acknowledged write without a refresh.
//! Never a `_search` here. An agent is read from its state record; an agent that has none (new,
//! or written by an older opampd or by fleet-server) also needs its agent document. That is a
//! second read after the first, except for a read marked `likely_new` (the agent's message is a
//! full status report, as every first message is): its agent document is asked in the same
//! `_mget` as the state records, so a new agent costs one round trip, not two.

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
    /// Ask the agent document along with the state record (see the module docs).
    pub likely_new: bool,
    pub reply: oneshot::Sender<ReadResult>,
}

/// The callers waiting for one uid in a batch.
#[derive(Default)]
struct Waiting {
    replies: Vec<oneshot::Sender<ReadResult>>,
    likely_new: bool,
}

impl Waiting {
    fn add(&mut self, op: ReadOp) {
        self.likely_new |= op.likely_new;
        self.replies.push(op.reply);
    }
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
        let mut batch: HashMap<InstanceUid, Waiting> = HashMap::new();
        batch.entry(first.uid).or_default().add(first);
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
            batch.entry(op.uid).or_default().add(op);
        }
        wait.record(joined, opened.elapsed());
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let uids: Vec<InstanceUid> = batch.keys().copied().collect();
            let likely_new: Vec<bool> = uids.iter().map(|uid| batch[uid].likely_new).collect();
            let results = fetch(&shared, &uids, &likely_new).await;
            for (uid, result) in uids.iter().zip(results) {
                for reply in batch.remove(uid).unwrap_or_default().replies {
                    let _ = reply.send(result.clone());
                }
            }
        });
    }
    debug!(index = %shared.cfg.index, "elasticsearch reader stopped");
}

/// An agent document read in place of a missing state record: the record it holds, at the
/// version that makes the first write create the state record.
fn from_agent_document(found: ReadResult) -> ReadResult {
    found.map(|doc| doc.map(|v| Versioned { record: v.record, version: STATE_ABSENT }))
}

/// One result per uid, in order; a whole-request failure is every uid's failure. `likely_new`
/// (one flag per uid) asks those uids' agent documents in the first request.
async fn fetch(shared: &Shared, uids: &[InstanceUid], likely_new: &[bool]) -> Vec<ReadResult> {
    let outcome = tokio::time::timeout(shared.cfg.request_timeout, async {
        // A read racing the first write's index creation would hit a shard that is not
        // allocated yet (503 for the agent); waiting for the setup answers it properly.
        shared.ensure_index_once().await?;
        let both: Vec<usize> = (0..uids.len()).filter(|&i| likely_new[i]).collect();
        let mut docs: Vec<(&str, InstanceUid)> =
            uids.iter().map(|&uid| (&*shared.state_index, uid)).collect();
        docs.extend(both.iter().map(|&i| (&*shared.cfg.index, uids[i])));
        let mut results = read(shared, &docs).await?;
        let agent_documents = results.split_off(uids.len());
        for (&i, found) in both.iter().zip(agent_documents) {
            if results[i] == Ok(None) {
                results[i] = from_agent_document(found);
            }
        }
        let missing: Vec<usize> =
            (0..uids.len()).filter(|&i| !likely_new[i] && results[i] == Ok(None)).collect();
        if !missing.is_empty() {
            // no state record: the agent document an older opampd or fleet-server wrote, if
            // any; the first write creates the state record from it
            let docs: Vec<(&str, InstanceUid)> =
                missing.iter().map(|&i| (&*shared.cfg.index, uids[i])).collect();
            let older = read(shared, &docs).await?;
            for (i, found) in missing.into_iter().zip(older) {
                results[i] = from_agent_document(found);
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

/// One realtime read of `docs` (index and uid each, one result each, in order): a `GET` for
/// one, an `_mget` for more.
async fn read(
    shared: &Shared,
    docs: &[(&str, InstanceUid)],
) -> Result<Vec<ReadResult>, StoreError> {
    let started = Instant::now();
    let results = if let [(index, uid)] = docs {
        get_one(shared, index, *uid).await.map(|r| vec![r])
    } else {
        get_many(shared, docs).await
    };
    shared.stats.record_read(docs.len(), started.elapsed());
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
    docs: &[(&str, InstanceUid)],
) -> Result<Vec<ReadResult>, StoreError> {
    let asked: Vec<Value> = docs
        .iter()
        .map(|(index, uid)| json!({ "_index": index, "_id": uid.to_string() }))
        .collect();
    let response = shared
        .client
        .mget(MgetParts::None)
        .realtime(true)
        ._source_includes(READ_SOURCE_FIELDS)
        .request_timeout(shared.cfg.request_timeout)
        .body(json!({ "docs": asked }))
        .send()
        .await
        .map_err(transport_error)?;
    let body = json_body(response, "mget").await?;
    let answered =
        body.get("docs").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    if answered.len() != docs.len() {
        return Err(StoreError::Backend(format!(
            "mget answered {} docs for {} asked",
            answered.len(),
            docs.len()
        )));
    }
    Ok(answered.iter().zip(docs).map(|(doc, (_, uid))| parse_doc(doc, *uid)).collect())
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
