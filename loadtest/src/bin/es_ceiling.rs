//! `es-ceiling`: measures what a loopback Elasticsearch can do for compare-and-swap writes, the
//! ceiling opampd's group commit is compared against. Raw HTTP JSON on a scratch index that it
//! creates, seeds, hammers with CAS `_bulk` (or single CAS PUTs) and always deletes. A measuring
//! tool, not product code: it shares nothing with opamp-store on purpose.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use opampd_loadtest::latency::{Latency, LatencySummary, round3};
use opampd_loadtest::loopback::parse_loopback_url;
use reqwest::{Client, Url};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(name = "es-ceiling", version, about)]
struct Cli {
    /// Elasticsearch base URL; loopback hosts only.
    #[arg(long, default_value = "http://127.0.0.1:9250")]
    es_url: String,
    /// Scratch index (default es-ceiling-<unix ms>); must not exist, and is deleted at the end.
    #[arg(long)]
    index: Option<String>,
    /// Documents seeded before measuring.
    #[arg(long, default_value_t = 20_000)]
    docs: usize,
    /// Approximate size of one document in bytes.
    #[arg(long, default_value_t = 1024)]
    doc_bytes: usize,
    /// Items per `_bulk`; a list runs each size in turn (e.g. 200,500,1000).
    #[arg(long, value_delimiter = ',', default_value = "500")]
    bulk: Vec<usize>,
    /// Concurrent requests; a list runs each in turn (opampd's default is 4 bulks in flight).
    #[arg(long, value_delimiter = ',', default_value = "4")]
    concurrency: Vec<usize>,
    /// Seconds measured per combination.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Also measure one-by-one CAS PUTs (`PUT _doc/id?if_seq_no&if_primary_term`), for reference.
    #[arg(long)]
    single: bool,
    /// Only the single-PUT measurement, no `_bulk`.
    #[arg(long)]
    single_only: bool,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Also write the JSON summary to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

/// A document's CAS token, as the last write returned it.
#[derive(Debug, Clone, Copy)]
struct Token {
    seq_no: u64,
    primary_term: u64,
}

#[derive(Debug, Clone)]
struct Measurement {
    mode: &'static str,
    bulk: usize,
    concurrency: usize,
    seconds: f64,
    items_ok: u64,
    conflicts: u64,
    item_errors: u64,
    request_errors: u64,
    requests: u64,
    latency: LatencySummary,
}

impl Measurement {
    fn items_per_s(&self) -> f64 {
        self.items_ok as f64 / self.seconds
    }

    fn to_json(&self) -> Value {
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
            "request_latency": self.latency.to_json(),
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    opampd_loadtest::run_main(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    let base = parse_loopback_url(&cli.es_url, &["http", "https"])?;
    ensure!(
        cli.duration > 0.0 && cli.duration <= 3600.0,
        "--duration must be in (0, 3600] seconds"
    );
    ensure!(cli.timeout > 0.0 && cli.timeout <= 600.0, "--timeout must be in (0, 600] seconds");
    ensure!((1..=10_000_000).contains(&cli.docs), "--docs must be in 1..=10000000");
    ensure!((64..=1_048_576).contains(&cli.doc_bytes), "--doc-bytes must be in 64..=1048576");
    ensure!(cli.bulk.iter().all(|b| (1..=10_000).contains(b)), "--bulk sizes must be in 1..=10000");
    ensure!(
        cli.concurrency.iter().all(|c| (1..=256).contains(c)),
        "--concurrency must be in 1..=256"
    );
    for &c in &cli.concurrency {
        for &b in &cli.bulk {
            // Each worker owns its own documents so no two in-flight writes target one document:
            // a conflict would then be ES's fault, not the tool's.
            ensure!(
                cli.docs / c >= b,
                "--docs {} too few for {c} workers of {b}-item bulks",
                cli.docs
            );
        }
    }
    let index = cli.index.clone().unwrap_or_else(|| format!("es-ceiling-{}", unix_millis()));
    ensure!(
        !index.is_empty()
            && index
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c)),
        "index name {index:?} must be lowercase letters, digits, - _ ."
    );
    let client = Client::builder()
        .timeout(Duration::from_secs_f64(cli.timeout))
        .pool_max_idle_per_host(64)
        .no_proxy()
        .build()?;
    let es = Es { client, base, index };

    let info: Value =
        es.send(es.client.get(es.url("")?)).await.context("elasticsearch is not reachable")?;
    let version = info["version"]["number"].as_str().unwrap_or("?").to_string();
    eprintln!("es-ceiling: elasticsearch {version} at {}; scratch index {}", es.base, es.index);

    es.create_index().await?;
    // Whatever happens while measuring, the scratch index is deleted.
    let outcome = measure_all(&cli, &es).await;
    let deleted = es.delete_index().await;
    let measurements = outcome?;
    deleted?;

    let mut ok = true;
    for m in &measurements {
        println!(
            "{:<6} bulk {:>5}  concurrency {:>3}  {:>9.0} items/s  request p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  \
             conflicts {}  item errors {}  request errors {}",
            m.mode,
            m.bulk,
            m.concurrency,
            m.items_per_s(),
            m.latency.p50_ms,
            m.latency.p99_ms,
            m.latency.max_ms,
            m.conflicts,
            m.item_errors,
            m.request_errors
        );
        ok &= m.conflicts == 0 && m.item_errors == 0 && m.request_errors == 0 && m.items_ok > 0;
    }
    let best = measurements
        .iter()
        .filter(|m| m.mode == "bulk")
        .map(Measurement::items_per_s)
        .fold(0.0, f64::max);
    let json = json!({
        "tool": "es-ceiling",
        "es_version": version,
        "docs": cli.docs,
        "doc_bytes": cli.doc_bytes,
        "best_bulk_items_per_s": round3(best),
        "measurements": measurements.iter().map(Measurement::to_json).collect::<Vec<_>>(),
        "passed": ok,
    });
    println!("{json}");
    if let Some(path) = &cli.json_out {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ok)
}

async fn measure_all(cli: &Cli, es: &Es) -> anyhow::Result<Vec<Measurement>> {
    let started = Instant::now();
    let mut tokens = es.seed(cli.docs, cli.doc_bytes).await?;
    eprintln!("es-ceiling: seeded {} docs in {:.1} s", cli.docs, started.elapsed().as_secs_f64());
    let duration = Duration::from_secs_f64(cli.duration);
    let mut out = Vec::new();
    for &concurrency in &cli.concurrency {
        if !cli.single_only {
            for &bulk in &cli.bulk {
                let m =
                    run_workers(es, &mut tokens, cli.doc_bytes, bulk, concurrency, duration, false)
                        .await?;
                eprintln!("es-ceiling: bulk {bulk} x{concurrency}: {:.0} items/s", m.items_per_s());
                out.push(m);
            }
        }
        if cli.single || cli.single_only {
            let m =
                run_workers(es, &mut tokens, cli.doc_bytes, 1, concurrency, duration, true).await?;
            eprintln!("es-ceiling: single PUT x{concurrency}: {:.0} items/s", m.items_per_s());
            out.push(m);
        }
    }
    Ok(out)
}

/// Splits the documents into one disjoint range per worker, runs them until the deadline, and
/// merges their counts.
async fn run_workers(
    es: &Es,
    tokens: &mut [Token],
    doc_bytes: usize,
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
            .map(|(first, mine)| worker(es, first, mine, doc_bytes, bulk, deadline, single)),
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
        latency: LatencySummary::default(),
    };
    for r in results {
        let w = r?;
        m.items_ok += w.items_ok;
        m.conflicts += w.conflicts;
        m.item_errors += w.item_errors;
        m.request_errors += w.request_errors;
        m.requests += w.requests;
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
    latencies: Vec<Duration>,
}

/// One stream of CAS writes over the worker's own documents, cycling through them, until the
/// deadline. A request error ends the worker (counted), so a dead ES cannot spin the loop.
async fn worker(
    es: &Es,
    first: usize,
    mine: &mut [Token],
    doc_bytes: usize,
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
            es.cas_put(first + i, mine[i], round, doc_bytes).await.map(|t| vec![(i, t)])
        } else {
            es.cas_bulk(first, &batch, mine, round, doc_bytes).await
        };
        r.latencies.push(t0.elapsed());
        r.requests += 1;
        match outcome {
            Ok(items) => {
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

#[derive(Debug, Clone, Copy)]
enum ItemOutcome {
    Ok(Token),
    Conflict,
    Failed,
}

#[derive(Debug)]
struct Es {
    client: Client,
    base: Url,
    index: String,
}

impl Es {
    fn url(&self, path: &str) -> anyhow::Result<Url> {
        Ok(self.base.join(path)?)
    }

    /// Sends and returns the JSON body; any non-2xx status is an error carrying the body.
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = req.send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if !status.is_success() {
            bail!(
                "elasticsearch answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(500)])
            );
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// Same settings opampd uses for its own index, so the ceiling is comparable.
    async fn create_index(&self) -> anyhow::Result<()> {
        let body = json!({ "settings": { "index": { "number_of_shards": 1, "auto_expand_replicas": "0-1" } } });
        self.send(self.client.put(self.url(&self.index)?).json_body(&body)).await.with_context(
            || format!("creating scratch index {} (it must not exist)", self.index),
        )?;
        Ok(())
    }

    async fn delete_index(&self) -> anyhow::Result<()> {
        self.send(self.client.delete(self.url(&self.index)?)).await.map(|_| ())
    }

    /// Creates the documents in bulks of 1000 and returns their CAS tokens.
    async fn seed(&self, docs: usize, doc_bytes: usize) -> anyhow::Result<Vec<Token>> {
        let mut tokens = Vec::with_capacity(docs);
        for start in (0..docs).step_by(1000) {
            let end = (start + 1000).min(docs);
            let mut body = String::new();
            for i in start..end {
                body.push_str(&json!({ "create": { "_id": doc_id(i) } }).to_string());
                body.push('\n');
                body.push_str(&document(i, 0, doc_bytes));
                body.push('\n');
            }
            let resp = self.bulk(body).await?;
            for item in resp["items"].as_array().context("bulk response without items")? {
                let t =
                    token(&item["create"]).with_context(|| format!("seeding failed: {item}"))?;
                tokens.push(t);
            }
        }
        ensure!(tokens.len() == docs, "seeded {} of {docs} documents", tokens.len());
        Ok(tokens)
    }

    async fn bulk(&self, body: String) -> anyhow::Result<Value> {
        let url = self.url(&format!("{}/_bulk", self.index))?;
        self.send(self.client.post(url).header("Content-Type", "application/x-ndjson").body(body))
            .await
    }

    /// One `_bulk` of CAS `index` items for `batch` (indexes into `mine`, whose ids start at
    /// `first`).
    async fn cas_bulk(
        &self,
        first: usize,
        batch: &[usize],
        mine: &[Token],
        round: u64,
        doc_bytes: usize,
    ) -> anyhow::Result<Vec<(usize, ItemOutcome)>> {
        let mut body = String::with_capacity(batch.len() * (doc_bytes + 150));
        for &i in batch {
            let t = mine[i];
            body.push_str(
                &json!({ "index": { "_id": doc_id(first + i), "if_seq_no": t.seq_no, "if_primary_term": t.primary_term } })
                    .to_string(),
            );
            body.push('\n');
            body.push_str(&document(first + i, round, doc_bytes));
            body.push('\n');
        }
        let resp = self.bulk(body).await?;
        let items = resp["items"].as_array().context("bulk response without items")?;
        ensure!(
            items.len() == batch.len(),
            "bulk answered {} items for {}",
            items.len(),
            batch.len()
        );
        Ok(batch.iter().zip(items).map(|(&i, item)| (i, outcome(&item["index"]))).collect())
    }

    async fn cas_put(
        &self,
        id: usize,
        t: Token,
        round: u64,
        doc_bytes: usize,
    ) -> anyhow::Result<ItemOutcome> {
        let mut url = self.url(&format!("{}/_doc/{}", self.index, doc_id(id)))?;
        url.query_pairs_mut()
            .append_pair("if_seq_no", &t.seq_no.to_string())
            .append_pair("if_primary_term", &t.primary_term.to_string());
        let resp = self
            .client
            .put(url)
            .header("Content-Type", "application/json")
            .body(document(id, round, doc_bytes))
            .send()
            .await?;
        let status = resp.status().as_u16();
        let body: Value = serde_json::from_slice(&resp.bytes().await?).unwrap_or(Value::Null);
        Ok(match status {
            200 | 201 => token(&body).map_or(ItemOutcome::Failed, ItemOutcome::Ok),
            409 => ItemOutcome::Conflict,
            _ => ItemOutcome::Failed,
        })
    }
}

/// Lets `RequestBuilder` take a JSON body without reqwest's `json` feature.
trait JsonBody {
    fn json_body(self, v: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, v: &Value) -> Self {
        self.header("Content-Type", "application/json").body(v.to_string())
    }
}

fn outcome(item: &Value) -> ItemOutcome {
    match item["status"].as_u64() {
        Some(200 | 201) => token(item).map_or(ItemOutcome::Failed, ItemOutcome::Ok),
        Some(409) => ItemOutcome::Conflict,
        _ => ItemOutcome::Failed,
    }
}

fn token(v: &Value) -> Option<Token> {
    Some(Token { seq_no: v["_seq_no"].as_u64()?, primary_term: v["_primary_term"].as_u64()? })
}

/// UUID-shaped ids, like opampd's (canonical instance_uid strings).
fn doc_id(i: usize) -> String {
    format!("018f0000-0000-7000-8000-{i:012x}")
}

/// A document shaped like an opampd agent document and padded to about `doc_bytes`.
fn document(i: usize, round: u64, doc_bytes: usize) -> String {
    let now = unix_millis();
    let mut doc = json!({
        "agent": { "id": doc_id(i), "type": "opentelemetry-collector", "version": "0.1.0" },
        "type": "OPAMP",
        "active": true,
        "last_checkin": now,
        "last_checkin_status": "online",
        "sequence_num": round,
        "capabilities": ["ReportsStatus", "ReportsEffectiveConfig", "ReportsHealth", "ReportsHeartbeat"],
        "policy_revision_idx": 1,
        "updated_at": now,
        "padding": "",
    });
    let len = doc.to_string().len();
    doc["padding"] = Value::String("x".repeat(doc_bytes.saturating_sub(len)));
    doc.to_string()
}

fn unix_millis() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())
}
