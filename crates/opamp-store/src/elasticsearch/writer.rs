//! Group commit: concurrent writes coalesced into `_bulk` requests, every item's outcome routed
//! back to its caller.
//!
//! One dispatcher task per [`Lane`] owns the batch being filled; it never waits on Elasticsearch
//! itself (each `_bulk` runs in its own task, at most the lane's `in_flight` at once). A document
//! has at most one item per bulk and at most one bulk in flight, so two writes to one document
//! reach Elasticsearch in the order they were accepted. Everything a dispatcher holds is
//! bounded. Two lanes: the state records, whose outcome goes back to the caller waiting for it,
//! and the agent documents (published after their state record, whose outcome only counts: see
//! `ElasticsearchStore::publish`). Apart, each `_bulk` touches one index's shard (a shard-level
//! bulk and a translog sync per index a request touches), and the publications, which nobody
//! waits for, batch up longer.
//!
//! How long a batch waits for company adapts ([`BatchWait`]), up to the lane's `max_wait`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use elasticsearch::BulkParts;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::sleep_until;
use tracing::{debug, warn};

use super::batch_wait::BatchWait;
use super::{BLOCKED, Shared, Ticket, status_error, transport_error};
use crate::metrics as m;
use crate::{StoreError, Version};
use opamp_proto::InstanceUid;

/// Fields of a `_bulk` response routing needs; the rest is not even sent back.
const BULK_FILTER: &[&str] = &[
    "items.*._id",
    "items.*.status",
    "items.*._seq_no",
    "items.*._primary_term",
    "items.*.error.type",
    "items.*.error.reason",
];

pub(super) type WriteResult = Result<Version, StoreError>;

/// One group commit's settings.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lane {
    /// Names the lane in metrics (`lane` label).
    pub name: &'static str,
    pub max_items: usize,
    /// Items a batch waits to gather while writes are arriving (at most `max_items`).
    pub target: usize,
    pub max_wait: Duration,
    pub in_flight: usize,
}

/// One accepted write: its NDJSON lines (action and source) and where its outcome goes.
pub(super) struct WriteOp {
    /// The document's index and id, as far as ordering goes: at most one op per key in a bulk.
    pub key: Arc<str>,
    /// The document's `_id`, which its response item must carry.
    pub id: Arc<str>,
    pub uid: InstanceUid,
    pub entry: Bytes,
    /// The caller waiting for a state record's outcome; `None` for an agent document.
    pub reply: Option<oneshot::Sender<WriteResult>>,
    /// Released when the op is answered or dropped, so `flush` can wait for it.
    pub _ticket: Ticket,
}

/// The batch being filled: unique ids, none of them in flight.
struct Batch {
    ops: Vec<WriteOp>,
    ids: HashSet<Arc<str>>,
    started: Option<Instant>,
    /// Writes that arrived while it was open (joined it or were deferred), for [`BatchWait`].
    joined: usize,
}

impl Batch {
    fn push(&mut self, op: WriteOp) {
        self.started.get_or_insert_with(Instant::now);
        self.ids.insert(op.key.clone());
        self.ops.push(op);
    }

    fn take(&mut self) -> Vec<WriteOp> {
        self.ids.clear();
        self.started = None;
        self.joined = 0;
        std::mem::take(&mut self.ops)
    }
}

/// Dispatcher state besides the batch: ops that must wait, and ids with a bulk in flight.
struct Dispatcher {
    shared: Arc<Shared>,
    batch: Batch,
    /// Ops that cannot join the batch yet (their id is busy or already in it, or it is full),
    /// in arrival order.
    deferred: VecDeque<WriteOp>,
    /// How many deferred ops each id has, so a newer op never overtakes an older one.
    deferred_ids: HashMap<Arc<str>, usize>,
    busy: HashSet<Arc<str>>,
    in_flight: usize,
    wait: BatchWait,
    wait_gauge: metrics::Gauge,
    max_items: usize,
}

impl Dispatcher {
    fn admit(&mut self, op: WriteOp) {
        if self.batch.started.is_some() {
            self.batch.joined += 1;
        }
        let free = !self.busy.contains(&op.key)
            && !self.batch.ids.contains(&op.key)
            && !self.deferred_ids.contains_key(&op.key)
            && self.batch.ops.len() < self.max_items;
        if free {
            self.batch.push(op);
        } else {
            *self.deferred_ids.entry(op.key.clone()).or_default() += 1;
            self.deferred.push_back(op);
        }
    }

    /// Moves deferred ops that may go now into the batch, keeping per-id order.
    fn refill(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        let max = self.max_items;
        let mut blocked: HashSet<Arc<str>> = HashSet::new();
        let mut keep = VecDeque::with_capacity(self.deferred.len());
        for op in self.deferred.drain(..) {
            let can_go = self.batch.ops.len() < max
                && !self.busy.contains(&op.key)
                && !self.batch.ids.contains(&op.key)
                && !blocked.contains(&op.key);
            if can_go {
                if let Some(n) = self.deferred_ids.get_mut(&op.key) {
                    *n -= 1;
                    if *n == 0 {
                        self.deferred_ids.remove(&op.key);
                    }
                }
                self.batch.push(op);
            } else {
                blocked.insert(op.key.clone());
                keep.push_back(op);
            }
        }
        self.deferred = keep;
    }

    fn held(&self) -> usize {
        self.batch.ops.len() + self.deferred.len()
    }
}

/// Runs until every sender is dropped and every accepted write is answered.
pub(super) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<WriteOp>, lane: Lane) {
    let max_in_flight = lane.in_flight;
    let wait = BatchWait::new(lane.max_wait, lane.target.min(lane.max_items));
    let wait_gauge = metrics::gauge!(m::ES_BULK_WAIT_SECONDS, "lane" => lane.name);
    wait_gauge.set(wait.current().as_secs_f64());
    // Room for one full batch per bulk slot plus the one being filled; the channel behind it
    // is the real queue, so load beyond this is shed by `put`, not held here.
    let hold_max = lane.max_items * (max_in_flight + 1);
    // Each bulk task sends exactly one message, and at most `max_in_flight` run at once.
    let (done_tx, mut done_rx) = mpsc::channel::<Vec<Arc<str>>>(max_in_flight);
    let mut d = Dispatcher {
        shared,
        batch: Batch { ops: Vec::new(), ids: HashSet::new(), started: None, joined: 0 },
        deferred: VecDeque::new(),
        deferred_ids: HashMap::new(),
        busy: HashSet::new(),
        in_flight: 0,
        wait,
        wait_gauge,
        max_items: lane.max_items,
    };
    let mut closed = false;
    loop {
        while d.in_flight < max_in_flight && !d.batch.ops.is_empty() {
            let max_wait = d.wait.current();
            let due = d.batch.ops.len() >= d.max_items
                || closed
                || d.batch.started.is_some_and(|s| s.elapsed() >= max_wait);
            if !due {
                break;
            }
            if let Some(started) = d.batch.started {
                d.wait.record(d.batch.joined, started.elapsed());
                d.wait_gauge.set(d.wait.current().as_secs_f64());
            }
            // A caller that stopped waiting (request timeout, client gone) has answered its
            // agent "unavailable"; sending its write later would apply a message the agent
            // retries, turning the retry into a duplicate (a needless ReportFullState per agent
            // after every outage). Once sent, it is too late to take back.
            let ops: Vec<WriteOp> = d
                .batch
                .take()
                .into_iter()
                .filter(|op| op.reply.as_ref().is_none_or(|r| !r.is_closed()))
                .collect();
            if ops.is_empty() {
                d.refill();
                continue;
            }
            d.busy.extend(ops.iter().map(|op| op.key.clone()));
            d.in_flight += 1;
            let done = DoneGuard {
                tx: done_tx.clone(),
                ids: ops.iter().map(|op| op.key.clone()).collect(),
            };
            tokio::spawn(send_bulk(d.shared.clone(), ops, done));
            d.refill();
        }
        if closed && d.held() == 0 && d.in_flight == 0 {
            break;
        }
        let deadline = d.batch.started.map(|s| (s + d.wait.current()).into());
        let can_recv = !closed && d.held() < hold_max;
        tokio::select! {
            biased;
            Some(ids) = done_rx.recv() => {
                for id in ids {
                    d.busy.remove(&id);
                }
                d.in_flight -= 1;
                d.refill();
            }
            op = rx.recv(), if can_recv => match op {
                Some(op) => {
                    d.admit(op);
                    // Take what is already queued without a wakeup per op.
                    while d.held() < hold_max {
                        match rx.try_recv() {
                            Ok(op) => d.admit(op),
                            Err(_) => break,
                        }
                    }
                }
                None => closed = true,
            },
            () = sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)),
                if deadline.is_some() && d.in_flight < max_in_flight => {}
        }
    }
    debug!(index = %d.shared.cfg.index, lane = lane.name, "elasticsearch writer stopped");
}

/// Tells the dispatcher a bulk is over, also if its task panics or is cancelled.
struct DoneGuard {
    tx: mpsc::Sender<Vec<Arc<str>>>,
    ids: Vec<Arc<str>>,
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        // Cannot be full: the channel has a slot per bulk in flight.
        let _ = self.tx.try_send(std::mem::take(&mut self.ids));
    }
}

async fn send_bulk(shared: Arc<Shared>, ops: Vec<WriteOp>, done: DoneGuard) {
    let started = Instant::now();
    let outcome = execute(&shared, &ops).await;
    shared.stats.record_bulk(ops.len(), started.elapsed());
    match outcome {
        Ok(results) => {
            for (op, result) in ops.into_iter().zip(results) {
                answer(&shared, op, result);
            }
        }
        Err(err) => {
            warn!(index = %shared.cfg.index, items = ops.len(), error = %err, "elasticsearch bulk failed");
            for op in ops {
                answer(&shared, op, Err(err.clone()));
            }
        }
    }
    drop(done);
}

/// Routes one item's outcome: to the waiting caller (a state record), or into the counts (an
/// agent document, whose 409 means a later publication is there already).
fn answer(shared: &Shared, op: WriteOp, result: WriteResult) {
    match op.reply {
        Some(reply) => {
            if result == Err(StoreError::Conflict) {
                shared.stats.record_conflict();
            }
            let _ = reply.send(result);
        }
        None => {
            let outcome = match &result {
                Ok(_) => "written",
                Err(StoreError::Conflict) => "superseded",
                Err(err) => {
                    shared.publish_failed(op.uid, &err.to_string());
                    return;
                }
            };
            metrics::counter!(m::ES_AGENT_DOCUMENT_WRITES_TOTAL, "outcome" => outcome).increment(1);
        }
    }
}

/// Sends one `_bulk` and classifies every item; `Err` means no item can be trusted.
async fn execute(shared: &Shared, ops: &[WriteOp]) -> Result<Vec<WriteResult>, StoreError> {
    shared.ensure_index_once().await?;
    let mut body = BytesMut::with_capacity(ops.iter().map(|op| op.entry.len()).sum());
    for op in ops {
        body.extend_from_slice(&op.entry);
    }
    let request = async {
        let response = shared
            .client
            .bulk(BulkParts::None)
            .filter_path(BULK_FILTER)
            .request_timeout(shared.cfg.request_timeout)
            .body(vec![body.freeze()])
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status_code();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(status_error(status.as_u16(), &text));
        }
        response
            .json::<Value>()
            .await
            .map_err(|e| StoreError::Unavailable(format!("unreadable bulk response: {e}")))
    };
    let response = tokio::time::timeout(shared.cfg.request_timeout, request)
        .await
        .map_err(|_| StoreError::Unavailable("bulk request timed out".into()))??;
    let blocked = blocked_items(&response);
    if blocked > 0 {
        shared.stats.record_blocked(blocked as u64);
    }
    route_items(&response, ops)
}

/// How many items of a `_bulk` answer an index block refused (each is `Unavailable`).
fn blocked_items(response: &Value) -> usize {
    let items =
        response.get("items").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    items
        .iter()
        .filter_map(|item| item.as_object()?.values().next()?.pointer("/error/type")?.as_str())
        .filter(|kind| *kind == BLOCKED)
        .count()
}

/// Pairs response items with ops by position (ES answers in request order) and checks the id.
fn route_items(response: &Value, ops: &[WriteOp]) -> Result<Vec<WriteResult>, StoreError> {
    let items =
        response.get("items").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    if items.len() != ops.len() {
        return Err(StoreError::Backend(format!(
            "bulk response has {} items for {} operations",
            items.len(),
            ops.len()
        )));
    }
    Ok(items.iter().zip(ops).map(|(item, op)| item_result(item, &op.id)).collect())
}

/// One item's outcome: 200/201 -> the new version, 409 -> conflict, an index block (the
/// flood-stage watermark's read-only block answers 429) -> unavailable, naming the block,
/// 429 -> overloaded, 5xx -> unavailable, anything else -> backend error.
fn item_result(item: &Value, id: &str) -> WriteResult {
    // Each item is `{"<op type>": {...}}`.
    let Some(inner) = item.as_object().and_then(|o| o.values().next()) else {
        return Err(StoreError::Backend("malformed bulk item".into()));
    };
    if inner.get("_id").and_then(Value::as_str) != Some(id) {
        return Err(StoreError::Backend(format!("bulk item answered for another id than {id}")));
    }
    let status = inner.get("status").and_then(Value::as_u64).unwrap_or(0);
    match status {
        200 | 201 => {
            let seq_no = inner.get("_seq_no").and_then(Value::as_u64);
            let primary_term = inner.get("_primary_term").and_then(Value::as_u64);
            match (seq_no, primary_term) {
                (Some(seq_no), Some(primary_term)) => Ok(Version { seq_no, primary_term }),
                _ => Err(StoreError::Backend(format!("bulk item for {id} has no version"))),
            }
        }
        409 => Err(StoreError::Conflict),
        _ => {
            let error = inner.get("error");
            let kind =
                error.and_then(|e| e.get("type")).and_then(Value::as_str).unwrap_or("unknown");
            let reason = error.and_then(|e| e.get("reason")).and_then(Value::as_str).unwrap_or("");
            let err = match status {
                _ if kind == BLOCKED => StoreError::Unavailable(format!("{kind}: {reason}")),
                429 => StoreError::Overloaded,
                500..=599 => StoreError::Unavailable(format!("{status} {kind}: {reason}")),
                _ => StoreError::Backend(format!("{status} {kind}: {reason}")),
            };
            if !err.is_transient() {
                warn!(instance_uid = %id, status, error_type = kind, reason, "elasticsearch refused write");
            }
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn item_statuses_are_classified() {
        let item = |status: u64| {
            json!({"index": {"_id": "a", "status": status, "_seq_no": 5, "_primary_term": 2,
            "error": {"type": "t", "reason": "r"}}})
        };
        assert_eq!(item_result(&item(200), "a"), Ok(Version { seq_no: 5, primary_term: 2 }));
        assert_eq!(item_result(&item(201), "a"), Ok(Version { seq_no: 5, primary_term: 2 }));
        assert_eq!(item_result(&item(409), "a"), Err(StoreError::Conflict));
        assert_eq!(item_result(&item(429), "a"), Err(StoreError::Overloaded));
        assert!(matches!(item_result(&item(503), "a"), Err(StoreError::Unavailable(_))));
        assert!(matches!(item_result(&item(400), "a"), Err(StoreError::Backend(_))));
        assert!(matches!(item_result(&item(200), "b"), Err(StoreError::Backend(_))));
    }

    #[test]
    fn a_write_refused_by_an_index_block_is_unavailable_and_names_the_block() {
        // what Elasticsearch 8.12 answers per item under the flood-stage watermark, and for an
        // index made read-only
        for (status, block) in [
            (429, "TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark"),
            (403, "FORBIDDEN/5/index read-only (api)"),
        ] {
            let reason = format!("index [i] blocked by: [{block}];");
            let item = json!({"index": {"_id": "a", "status": status,
                "error": {"type": "cluster_block_exception", "reason": reason}}});
            let result = item_result(&item, "a");
            assert!(
                matches!(&result, Err(StoreError::Unavailable(why)) if why.contains(block)),
                "{result:?}"
            );
            let other = json!({"create": {"_id": "b", "status": 429,
                "error": {"type": "es_rejected_execution_exception", "reason": "queue full"}}});
            let done = json!({"index": {"_id": "c", "status": 200}});
            let response = json!({"items": [item, other, done, item]});
            assert_eq!(blocked_items(&response), 2, "only the blocked items are counted");
        }
        assert_eq!(blocked_items(&json!({})), 0);
    }

    #[test]
    fn odd_items_do_not_panic() {
        for odd in [
            json!(null),
            json!({}),
            json!([]),
            json!({"index": null}),
            json!({"create": {"_id": "a"}}),
            json!({"index": {"_id": "a", "status": 200}}),
            json!({"index": {"_id": "a", "status": "200"}}),
        ] {
            assert!(item_result(&odd, "a").is_err(), "{odd}");
        }
    }
}
