//! `es-ceiling`: measures what a loopback Elasticsearch can do for compare-and-swap writes, the
//! ceiling opampd's group commit is compared against. Raw HTTP JSON on a scratch index that it
//! creates, seeds, hammers with CAS `_bulk` (or single CAS PUTs) and always deletes. The
//! documents are synthetic (padded to `--doc-bytes`) or, with `--like-index`, copies of a real
//! index's documents under that index's mappings and shard settings, so the ceiling is measured on
//! the same work opampd does. A measuring tool, not product code: it shares nothing with
//! opamp-store on purpose, and only ever reads the index it copies.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Approximate size of one document in bytes (synthetic documents only).
    #[arg(long, default_value_t = 1024)]
    doc_bytes: usize,
    /// Write copies of this index's documents instead of synthetic ones: the scratch index gets
    /// its mappings and shard/replica settings, and up to 200 of its documents' `_source` are
    /// cycled as templates (agent ids, sequence_num and timestamps rewritten per write). It is
    /// refreshed and searched once, never written.
    #[arg(long, value_name = "NAME")]
    like_index: Option<String>,
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
    /// Spread `_id`s uniformly (UUID-shaped, like real agents' instance uids) instead of
    /// writing consecutive ids, which Elasticsearch looks up more cheaply.
    #[arg(long)]
    random_ids: bool,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Also write the JSON summary to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

/// Most documents `--like-index` samples as templates.
const LIKE_SAMPLE: usize = 200;

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
    /// Documents put in requests, and their JSON bytes (action lines not counted).
    docs_sent: u64,
    doc_bytes_sent: u64,
    latency: LatencySummary,
}

impl Measurement {
    fn items_per_s(&self) -> f64 {
        self.items_ok as f64 / self.seconds
    }

    fn avg_doc_bytes(&self) -> f64 {
        self.doc_bytes_sent as f64 / self.docs_sent.max(1) as f64
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
            "avg_doc_bytes": round3(self.avg_doc_bytes()),
            "request_latency": self.latency.to_json(),
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    RANDOM_IDS.store(cli.random_ids, Ordering::Relaxed);
    opampd_loadtest::run_main(2, run(cli))
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
    check_index_name(&index)?;
    if let Some(like) = &cli.like_index {
        check_index_name(like)?;
        ensure!(*like != index, "--like-index must not be the scratch index");
    }
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

    // Everything read from the copied index is read before the scratch index exists, so a
    // failure here leaves nothing behind.
    let (docs, settings, mappings) = match &cli.like_index {
        None => (Docs::Synthetic { doc_bytes: cli.doc_bytes }, synthetic_settings(), None),
        Some(name) => {
            let like = es.read_like(name).await?;
            let avg = like.templates.iter().map(Template::approx_len).sum::<usize>()
                / like.templates.len();
            eprintln!(
                "es-ceiling: copying {name}: {} template documents (~{avg} bytes), settings {}",
                like.templates.len(),
                like.settings
            );
            let docs = Docs::Like { index: name.clone(), templates: like.templates };
            (docs, like.settings, Some(like.mappings))
        }
    };
    es.create_index(&settings, mappings.as_ref()).await?;
    // Whatever happens while measuring, the scratch index is deleted.
    let outcome = measure_all(&cli, &es, &docs).await;
    let deleted = es.delete_index().await;
    let measurements = outcome?;
    deleted?;

    let sent: u64 = measurements.iter().map(|m| m.docs_sent).sum();
    let sent_bytes: u64 = measurements.iter().map(|m| m.doc_bytes_sent).sum();
    let avg_doc_bytes = sent_bytes as f64 / sent.max(1) as f64;
    match &docs {
        Docs::Synthetic { doc_bytes } => println!(
            "documents: synthetic (--doc-bytes {doc_bytes}), {avg_doc_bytes:.0} bytes on average sent"
        ),
        Docs::Like { index, templates } => println!(
            "documents: like index {index} ({} templates), {avg_doc_bytes:.0} bytes on average sent",
            templates.len()
        ),
    }
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
    let (source, like_index, templates, doc_bytes) = match &docs {
        Docs::Synthetic { doc_bytes } => ("synthetic", None, None, Some(*doc_bytes)),
        Docs::Like { index, templates } => {
            ("like_index", Some(index.as_str()), Some(templates.len()), None)
        }
    };
    let json = json!({
        "tool": "es-ceiling",
        "es_version": version,
        "documents": source,
        "like_index": like_index,
        "templates": templates,
        "index_settings": settings,
        "docs": cli.docs,
        "doc_bytes": doc_bytes,
        "avg_doc_bytes": round3(avg_doc_bytes),
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

async fn measure_all(cli: &Cli, es: &Es, docs: &Docs) -> anyhow::Result<Vec<Measurement>> {
    let started = Instant::now();
    let mut tokens = es.seed(cli.docs, docs).await?;
    eprintln!("es-ceiling: seeded {} docs in {:.1} s", cli.docs, started.elapsed().as_secs_f64());
    let duration = Duration::from_secs_f64(cli.duration);
    let mut out = Vec::new();
    for &concurrency in &cli.concurrency {
        if !cli.single_only {
            for &bulk in &cli.bulk {
                let m =
                    run_workers(es, &mut tokens, docs, bulk, concurrency, duration, false).await?;
                eprintln!("es-ceiling: bulk {bulk} x{concurrency}: {:.0} items/s", m.items_per_s());
                out.push(m);
            }
        }
        if cli.single || cli.single_only {
            let m = run_workers(es, &mut tokens, docs, 1, concurrency, duration, true).await?;
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

    /// Creates the scratch index; without `mappings` fields are mapped dynamically.
    async fn create_index(&self, settings: &Value, mappings: Option<&Value>) -> anyhow::Result<()> {
        let mut body = json!({ "settings": settings });
        if let Some(m) = mappings {
            body["mappings"] = m.clone();
        }
        self.send(self.client.put(self.url(&self.index)?).json_body(&body)).await.with_context(
            || format!("creating scratch index {} (it must not exist)", self.index),
        )?;
        Ok(())
    }

    /// Reads what `--like-index` copies: the mappings and shard/replica settings of `name`'s one
    /// concrete index, and up to [`LIKE_SAMPLE`] documents as templates. The refresh makes
    /// documents written a moment ago (an enrollment wave) searchable; it changes no data.
    async fn read_like(&self, name: &str) -> anyhow::Result<Like> {
        let context = || format!("reading --like-index {name}");
        let mappings = self.send(self.client.get(self.url(&format!("{name}/_mapping"))?)).await;
        let mappings = one_index(&mappings.with_context(context)?, name)?["mappings"].clone();
        let settings = self.send(self.client.get(self.url(&format!("{name}/_settings"))?)).await;
        let settings =
            copied_settings(&one_index(&settings.with_context(context)?, name)?["settings"])
                .with_context(context)?;
        if let Err(e) = self.send(self.client.post(self.url(&format!("{name}/_refresh"))?)).await {
            eprintln!("es-ceiling: refreshing {name} failed, sampling what is searchable: {e:#}");
        }
        let query =
            json!({ "size": LIKE_SAMPLE, "track_total_hits": false, "query": { "match_all": {} } });
        let url = self.url(&format!("{name}/_search"))?;
        let found =
            self.send(self.client.post(url).json_body(&query)).await.with_context(context)?;
        let hits = found["hits"]["hits"].as_array().context("search response without hits")?;
        ensure!(
            !hits.is_empty(),
            "--like-index {name} has no documents to copy (enroll some agents through opampd first)"
        );
        let templates = hits
            .iter()
            .map(|h| Template::new(&h["_source"]).with_context(|| format!("document {}", h["_id"])))
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(context)?;
        Ok(Like { settings, mappings, templates })
    }

    async fn delete_index(&self) -> anyhow::Result<()> {
        self.send(self.client.delete(self.url(&self.index)?)).await.map(|_| ())
    }

    /// Creates the documents in bulks of 1000 and returns their CAS tokens.
    async fn seed(&self, n: usize, docs: &Docs) -> anyhow::Result<Vec<Token>> {
        let mut tokens = Vec::with_capacity(n);
        for start in (0..n).step_by(1000) {
            let end = (start + 1000).min(n);
            let mut body = String::new();
            for i in start..end {
                body.push_str(&json!({ "create": { "_id": doc_id(i) } }).to_string());
                body.push('\n');
                body.push_str(&docs.render(i, 0));
                body.push('\n');
            }
            let resp = self.bulk(body).await?;
            for item in resp["items"].as_array().context("bulk response without items")? {
                let t =
                    token(&item["create"]).with_context(|| format!("seeding failed: {item}"))?;
                tokens.push(t);
            }
        }
        ensure!(tokens.len() == n, "seeded {} of {n} documents", tokens.len());
        Ok(tokens)
    }

    async fn bulk(&self, body: String) -> anyhow::Result<Value> {
        let url = self.url(&format!("{}/_bulk", self.index))?;
        self.send(self.client.post(url).header("Content-Type", "application/x-ndjson").body(body))
            .await
    }

    /// One `_bulk` of CAS `index` items for `batch` (indexes into `mine`, whose ids start at
    /// `first`); also returns the documents' bytes.
    async fn cas_bulk(
        &self,
        first: usize,
        batch: &[usize],
        mine: &[Token],
        round: u64,
        docs: &Docs,
    ) -> anyhow::Result<(Vec<(usize, ItemOutcome)>, u64)> {
        let mut body = String::with_capacity(batch.len() * (docs.approx_len() + 150));
        let mut doc_bytes = 0u64;
        for &i in batch {
            let t = mine[i];
            body.push_str(
                &json!({ "index": { "_id": doc_id(first + i), "if_seq_no": t.seq_no, "if_primary_term": t.primary_term } })
                    .to_string(),
            );
            body.push('\n');
            let doc = docs.render(first + i, round);
            doc_bytes += doc.len() as u64;
            body.push_str(&doc);
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
        let outcomes = batch.iter().zip(items).map(|(&i, item)| (i, outcome(&item["index"])));
        Ok((outcomes.collect(), doc_bytes))
    }

    async fn cas_put(
        &self,
        id: usize,
        t: Token,
        round: u64,
        docs: &Docs,
    ) -> anyhow::Result<(ItemOutcome, u64)> {
        let mut url = self.url(&format!("{}/_doc/{}", self.index, doc_id(id)))?;
        url.query_pairs_mut()
            .append_pair("if_seq_no", &t.seq_no.to_string())
            .append_pair("if_primary_term", &t.primary_term.to_string());
        let doc = docs.render(id, round);
        let doc_bytes = doc.len() as u64;
        let resp = self
            .client
            .put(url)
            .header("Content-Type", "application/json")
            .body(doc)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let body: Value = serde_json::from_slice(&resp.bytes().await?).unwrap_or(Value::Null);
        let outcome = match status {
            200 | 201 => token(&body).map_or(ItemOutcome::Failed, ItemOutcome::Ok),
            409 => ItemOutcome::Conflict,
            _ => ItemOutcome::Failed,
        };
        Ok((outcome, doc_bytes))
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
    id_for(i, RANDOM_IDS.load(Ordering::Relaxed))
}

fn id_for(i: usize, random: bool) -> String {
    if random {
        // splitmix64 is a bijection on u64, so ids stay distinct; all 64 bits of `a` are kept.
        let a = splitmix64(i as u64);
        let b = splitmix64(a);
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xffff,
            b >> 48,
            b & 0xffff_ffff_ffff
        )
    } else {
        format!("018f0000-0000-7000-8000-{i:012x}")
    }
}

/// Set once from `--random-ids` before any document is written.
static RANDOM_IDS: AtomicBool = AtomicBool::new(false);

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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

/// Index names go into URL paths unescaped, so they are kept to what ES allows anyway.
fn check_index_name(name: &str) -> anyhow::Result<()> {
    ensure!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c)),
        "index name {name:?} must be lowercase letters, digits, - _ ."
    );
    Ok(())
}

/// Same settings opampd gives an index it creates, so the synthetic ceiling is comparable.
fn synthetic_settings() -> Value {
    json!({ "index": { "number_of_shards": 1, "auto_expand_replicas": "0-1" } })
}

/// The per-index object of a `GET name/_mapping` or `_settings` answer, which is keyed by
/// concrete index; an alias over several indices is refused (which one would be copied?).
fn one_index<'a>(answer: &'a Value, name: &str) -> anyhow::Result<&'a Value> {
    let indices = answer.as_object().context("unexpected answer: not an object")?;
    match indices.values().collect::<Vec<_>>()[..] {
        [one] => Ok(one),
        _ => bail!("{name} resolves to {} indices; name exactly one", indices.len()),
    }
}

/// The settings of a copied index that decide write cost: shards, replicas (as
/// `auto_expand_replicas` when set, else `number_of_replicas`) and an explicit refresh interval.
fn copied_settings(settings: &Value) -> anyhow::Result<Value> {
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

/// What `--like-index` read from the copied index.
#[derive(Debug)]
struct Like {
    settings: Value,
    mappings: Value,
    templates: Vec<Template>,
}

/// Where the written documents come from.
#[derive(Debug)]
enum Docs {
    /// [`document`]: fleet-like fields padded to about `doc_bytes`.
    Synthetic { doc_bytes: usize },
    /// Documents of `index`, scratch document `i` always from template `i % len`.
    Like { index: String, templates: Vec<Template> },
}

impl Docs {
    /// The `_source` of scratch document `i` at `round` (0 when seeding).
    fn render(&self, i: usize, round: u64) -> String {
        match self {
            Docs::Synthetic { doc_bytes } => document(i, round, *doc_bytes),
            Docs::Like { templates, .. } => {
                templates[i % templates.len()].render(&doc_id(i), round, unix_millis())
            }
        }
    }

    /// About how long one rendered document is, to size request buffers.
    fn approx_len(&self) -> usize {
        match self {
            Docs::Synthetic { doc_bytes } => *doc_bytes,
            Docs::Like { templates, .. } => {
                templates.iter().map(Template::approx_len).max().unwrap_or(0)
            }
        }
    }
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
struct Template {
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
    fn new(source: &Value) -> anyhow::Result<Template> {
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

    fn render(&self, id: &str, round: u64, now_ms: u128) -> String {
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
    fn approx_len(&self) -> usize {
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
/// what opampd writes); by hand, as this crate has no date library.
fn rfc3339_millis(ms: u128) -> String {
    let secs = (ms / 1000) as i64;
    let (days, time) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        time / 3600,
        time % 3600 / 60,
        time % 60,
        ms % 1000
    )
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_are_distinct_and_uuid_shaped() {
        let ids: Vec<String> = (0..10_000).map(|i| id_for(i, true)).collect();
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        for id in &ids {
            let groups: Vec<usize> = id.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
            assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "{id}");
        }
        // Consecutive documents do not get neighbouring ids.
        assert_ne!(ids[0][..8], ids[1][..8]);
    }

    #[test]
    fn rfc3339_matches_opampd_format() {
        for (ms, want) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (1_700_000_030_123, "2023-11-14T22:13:50.123Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_709_251_199_999, "2024-02-29T23:59:59.999Z"),
            (4_102_444_799_001, "2099-12-31T23:59:59.001Z"),
        ] {
            assert_eq!(rfc3339_millis(ms), want, "{ms}");
        }
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
        let id = doc_id(5);
        let doc: Value = serde_json::from_str(&t.render(&id, 42, 1_700_000_030_123)).unwrap();
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
}
