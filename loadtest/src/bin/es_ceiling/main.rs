//! `es-ceiling`: measures what a loopback Elasticsearch can do for compare-and-swap writes, the
//! ceiling opampd's group commit is compared against. Raw HTTP JSON on a scratch index that it
//! creates, seeds, hammers with CAS `_bulk` (or single CAS PUTs) and always deletes. The
//! documents are synthetic (padded to `--doc-bytes`) or, with `--like-index`, copies of a real
//! index's documents under that index's mappings and shard settings, so the ceiling is measured on
//! the same work opampd does. A measuring tool, not product code: it shares nothing with
//! opamp-store on purpose, and only ever reads the index it copies.
//!
//! This file is the CLI and the run's order (check flags, read the copied index, create, measure,
//! always delete, print); it builds no request and no document itself.

mod docs;
mod es;
mod ids;
mod like;
mod measure;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Parser;
use opampd_loadtest::latency::round3;
use opampd_loadtest::loopback::parse_loopback_url;
use serde_json::{Value, json};

use crate::docs::{Docs, Source, unix_millis};
use crate::es::{Es, check_index_name};
use crate::ids::Ids;
use crate::like::Template;
use crate::measure::{Measurement, run_workers};

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

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    let es = Es::new(base, index, Duration::from_secs_f64(cli.timeout))?;

    let info: Value = es.info().await.context("elasticsearch is not reachable")?;
    let version = info["version"]["number"].as_str().unwrap_or("?").to_string();
    eprintln!("es-ceiling: elasticsearch {version} at {}; scratch index {}", es.base, es.index);

    // Everything read from the copied index is read before the scratch index exists, so a
    // failure here leaves nothing behind.
    let (source, settings, mappings) = match &cli.like_index {
        None => (Source::Synthetic { doc_bytes: cli.doc_bytes }, synthetic_settings(), None),
        Some(name) => {
            let like = es.read_like(name).await?;
            let avg = like.templates.iter().map(Template::approx_len).sum::<usize>()
                / like.templates.len();
            eprintln!(
                "es-ceiling: copying {name}: {} template documents (~{avg} bytes), settings {}",
                like.templates.len(),
                like.settings
            );
            let source = Source::Like { index: name.clone(), templates: like.templates };
            (source, like.settings, Some(like.mappings))
        }
    };
    let docs = Docs { ids: Ids::new(cli.random_ids), source };
    es.create_index(&settings, mappings.as_ref()).await?;
    // Whatever happens while measuring, the scratch index is deleted.
    let outcome = measure_all(&cli, &es, &docs).await;
    let deleted = es.delete_index().await;
    let measurements = outcome?;
    deleted?;

    let sent: u64 = measurements.iter().map(|m| m.docs_sent).sum();
    let sent_bytes: u64 = measurements.iter().map(|m| m.doc_bytes_sent).sum();
    let avg_doc_bytes = sent_bytes as f64 / sent.max(1) as f64;
    match &docs.source {
        Source::Synthetic { doc_bytes } => println!(
            "documents: synthetic (--doc-bytes {doc_bytes}), {avg_doc_bytes:.0} bytes on average sent"
        ),
        Source::Like { index, templates } => println!(
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
    let (documents, like_index, templates, doc_bytes) = match &docs.source {
        Source::Synthetic { doc_bytes } => ("synthetic", None, None, Some(*doc_bytes)),
        Source::Like { index, templates } => {
            ("like_index", Some(index.as_str()), Some(templates.len()), None)
        }
    };
    let json = json!({
        "tool": "es-ceiling",
        "es_version": version,
        "documents": documents,
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

/// Same settings opampd gives an index it creates, so the synthetic ceiling is comparable.
fn synthetic_settings() -> Value {
    json!({ "index": { "number_of_shards": 1, "auto_expand_replicas": "0-1" } })
}
