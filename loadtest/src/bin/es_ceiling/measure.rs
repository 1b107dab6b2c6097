//! The timed CAS write loops: workers over disjoint document ranges until a deadline, and the
//! counts and request latencies they add up to. Knows no CLI flag and prints only failed
//! requests; what to run and what to report is main's business.

use std::time::{Duration, Instant};

use opampd_loadtest::latency::{Latency, LatencySummary, round3};
use serde_json::{Value, json};

use crate::docs::Docs;
use crate::es::{Es, ItemOutcome, Token};

/// The figures of one (mode, bulk size, concurrency) combination.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub mode: &'static str,
    pub bulk: usize,
    pub concurrency: usize,
    pub seconds: f64,
    pub items_ok: u64,
    pub conflicts: u64,
    pub item_errors: u64,
    pub request_errors: u64,
    pub requests: u64,
    /// Documents put in requests, and their JSON bytes (action lines not counted).
    pub docs_sent: u64,
    pub doc_bytes_sent: u64,
    pub latency: LatencySummary,
}

impl Measurement {
    pub fn items_per_s(&self) -> f64 {
        self.items_ok as f64 / self.seconds
    }

    fn avg_doc_bytes(&self) -> f64 {
        self.doc_bytes_sent as f64 / self.docs_sent.max(1) as f64
    }

    pub fn to_json(&self) -> Value {
        json!({
            "mode": self.mode,
            "bulk": self.bulk,
            "concurrency": self.concurrency,
            "seconds": round3(self.seconds),
            "items_ok": self.items_ok,
            "items_per_s": round3(self.items_per_s()),
            "conflicts": self.conflicts,
            "item_errors": self.item_errors,
            "request_errors": self.request_errors,
            "requests": self.requests,
            "avg_doc_bytes": round3(self.avg_doc_bytes()),
            "request_latency": self.latency.to_json(),
        })
    }
}

/// Splits the documents into one disjoint range per worker, runs them until the deadline, and
/// merges their counts.
pub async fn run_workers(
    es: &Es,
    tokens: &mut [Token],
    docs: &Docs,
    bulk: usize,
    concurrency: usize,
    duration: Duration,
    single: bool,
) -> anyhow::Result<Measurement> {
    let per = tokens.len() / concurrency;
    let start = Instant::now();
    let deadline = start + duration;
    let chunks: Vec<(usize, &mut [Token])> =
        tokens.chunks_mut(per).take(concurrency).enumerate().map(|(w, c)| (w * per, c)).collect();
    let results = futures::future::join_all(
        chunks
            .into_iter()
            .map(|(first, mine)| worker(es, first, mine, docs, bulk, deadline, single)),
    )
    .await;
    let seconds = start.elapsed().as_secs_f64();
    let mut latency = Latency::new();
    let mut m = Measurement {
        mode: if single { "single" } else { "bulk" },
        bulk,
        concurrency,
        seconds,
        items_ok: 0,
        conflicts: 0,
        item_errors: 0,
        request_errors: 0,
        requests: 0,
        docs_sent: 0,
        doc_bytes_sent: 0,
        latency: LatencySummary::default(),
    };
    for r in results {
        let w = r?;
        m.items_ok += w.items_ok;
        m.conflicts += w.conflicts;
        m.item_errors += w.item_errors;
        m.request_errors += w.request_errors;
        m.requests += w.requests;
        m.docs_sent += w.docs_sent;
        m.doc_bytes_sent += w.doc_bytes_sent;
        for d in w.latencies {
            latency.record(d);
        }
    }
    m.latency = latency.summary();
    Ok(m)
}

#[derive(Debug, Default)]
struct WorkerResult {
    items_ok: u64,
    conflicts: u64,
    item_errors: u64,
    request_errors: u64,
    requests: u64,
    docs_sent: u64,
    doc_bytes_sent: u64,
    latencies: Vec<Duration>,
}

/// One stream of CAS writes over the worker's own documents, cycling through them, until the
/// deadline. A request error ends the worker (counted), so a dead ES cannot spin the loop.
async fn worker(
    es: &Es,
    first: usize,
    mine: &mut [Token],
    docs: &Docs,
    bulk: usize,
    deadline: Instant,
    single: bool,
) -> anyhow::Result<WorkerResult> {
    let mut r = WorkerResult::default();
    let mut cursor = 0usize;
    let mut round: u64 = 1;
    while Instant::now() < deadline {
        let batch: Vec<usize> = (0..bulk).map(|k| (cursor + k) % mine.len()).collect();
        cursor = (cursor + bulk) % mine.len();
        round += 1;
        let t0 = Instant::now();
        let outcome = if single {
            let i = batch[0];
            es.cas_put(first + i, mine[i], round, docs).await.map(|(t, n)| (vec![(i, t)], n))
        } else {
            es.cas_bulk(first, &batch, mine, round, docs).await
        };
        r.latencies.push(t0.elapsed());
        r.requests += 1;
        match outcome {
            Ok((items, doc_bytes)) => {
                r.docs_sent += items.len() as u64;
                r.doc_bytes_sent += doc_bytes;
                for (i, item) in items {
                    match item {
                        ItemOutcome::Ok(t) => {
                            mine[i] = t;
                            r.items_ok += 1;
                        }
                        ItemOutcome::Conflict => r.conflicts += 1,
                        ItemOutcome::Failed => r.item_errors += 1,
                    }
                }
            }
            Err(e) => {
                eprintln!("es-ceiling: request failed: {e:#}");
                r.request_errors += 1;
                break;
            }
        }
    }
    Ok(r)
}
