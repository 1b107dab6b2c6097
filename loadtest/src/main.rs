//! `opampd-loadtest`: simulated OpAMP agents against a loopback opampd, with drift injection,
//! per-reply correctness checks and latency figures. Exits non-zero when the server asked for
//! full state wrongly, missed a drift, or the error rate exceeds `--max-error-rate`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use opampd_loadtest::config::RunConfig;
use opampd_loadtest::loopback::parse_loopback_url;
use opampd_loadtest::runner;
use opampd_loadtest::transport::{HttpTransport, Transport, WsTransport};

// The load generator shares the machine with the server and Elasticsearch in every benchmark:
// every CPU cycle it spends is taken from them. glibc malloc was ~17 % of its profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TransportKind {
    /// POST /v1/opamp, one request per message over a keep-alive pool.
    Http,
    /// WebSocket on the same path; agents multiplexed over `--connections` sockets.
    Ws,
}

/// Longest run accepted: every run must end by itself.
const MAX_DURATION_S: f64 = 24.0 * 3600.0;

#[derive(Debug, Parser)]
#[command(name = "opampd-loadtest", version, about)]
struct Cli {
    /// OpAMP endpoint; loopback hosts only (127.0.0.0/8, ::1, localhost).
    #[arg(long, default_value = "http://127.0.0.1:4320/v1/opamp")]
    target: String,
    /// Simulated agents (each a UUIDv7 instance).
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Seconds between two messages of one agent; phases are spread evenly over the interval.
    #[arg(long, default_value_t = 30.0)]
    heartbeat: f64,
    /// Fixed total scheduled msg/s instead of the heartbeat pacing (open loop; for throughput).
    #[arg(long)]
    rate: Option<f64>,
    /// Run length in seconds; the run stops by itself.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Seconds at the start excluded from the steady-state latency and rate (correctness counts
    /// cover the whole run).
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    #[arg(long, value_enum, default_value_t = TransportKind::Http)]
    transport: TransportKind,
    /// HTTP keep-alive pool size, or number of WebSocket connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Most messages in flight at once (default: --connections, so HTTP never opens more sockets).
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Fraction of heartbeats sent with a deliberate sequence fault (gap, duplicate, backwards).
    #[arg(long, default_value_t = 0.01)]
    drift_rate: f64,
    /// Seed of the drift injection, for reproducible runs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Full statuses an agent sends back-to-back when the server keeps asking.
    #[arg(long, default_value_t = 2)]
    max_followups: u32,
    /// Highest tolerated errors / messages sent (0 = any error fails the run).
    #[arg(long, default_value_t = 0.0)]
    max_error_rate: f64,
    /// Seconds between progress lines (stderr).
    #[arg(long, default_value_t = 5.0)]
    progress: f64,
    /// Also write the JSON summary to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Enrollment API key (the encoded `base64(id:key)` form) sent by every agent as
    /// `Authorization: ApiKey <key>`, as agents configured for fleet-server do. Prefer the
    /// environment variable: a flag shows in the process list.
    #[arg(long, env = "OPAMPD_LOADTEST_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Runtime threads. 1 (the default) runs every simulated agent on one thread, which costs
    /// the machine least per message (no cross-thread wakeups): the generator shares the box
    /// with the server and Elasticsearch in every benchmark. More only past ~10K msg/s.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = usize::from(cli.threads);
    opampd_loadtest::run_main(threads, run(cli))
}

/// The `Authorization` value for `--api-key`, marked sensitive so no debug output shows it.
fn api_key_header(key: &str) -> anyhow::Result<reqwest::header::HeaderValue> {
    let key = key.trim();
    if key.is_empty() {
        bail!("--api-key is empty");
    }
    let mut value = reqwest::header::HeaderValue::from_str(&format!("ApiKey {key}"))
        .map_err(|_| anyhow::anyhow!("--api-key holds characters a header cannot carry"))?;
    value.set_sensitive(true);
    Ok(value)
}

fn secs(name: &str, v: f64, min: f64) -> anyhow::Result<Duration> {
    if !(v.is_finite() && v >= min && v <= MAX_DURATION_S) {
        bail!("--{name} must be between {min} and {MAX_DURATION_S} seconds, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    let duration = secs("duration", cli.duration, 0.1)?;
    let warmup = secs("warmup", cli.warmup, 0.0)?;
    let heartbeat = secs("heartbeat", cli.heartbeat, 0.001)?;
    let timeout = secs("timeout", cli.timeout, 0.001)?;
    let progress = secs("progress", cli.progress, 0.1)?;
    if warmup >= duration {
        bail!("--warmup must be shorter than --duration");
    }
    if cli.agents == 0 || cli.agents > 10_000_000 {
        bail!("--agents must be between 1 and 10000000");
    }
    if cli.connections == 0 || cli.connections > 100_000 {
        bail!("--connections must be between 1 and 100000");
    }
    let max_in_flight = cli.max_in_flight.unwrap_or(cli.connections);
    if max_in_flight == 0 || max_in_flight > 1_000_000 {
        bail!("--max-in-flight must be between 1 and 1000000");
    }
    if !(0.0..=1.0).contains(&cli.drift_rate) || !(0.0..=1.0).contains(&cli.max_error_rate) {
        bail!("--drift-rate and --max-error-rate are fractions in [0, 1]");
    }
    let rate = cli.rate.unwrap_or(cli.agents as f64 / heartbeat.as_secs_f64());
    if !(rate.is_finite() && rate > 0.0 && rate <= 10_000_000.0) {
        bail!("--rate must be in (0, 10000000] msg/s, got {rate}");
    }

    let auth = cli.api_key.as_deref().map(api_key_header).transpose()?;
    let transport = match cli.transport {
        TransportKind::Http => {
            let url = parse_loopback_url(&cli.target, &["http", "https"])?;
            Transport::Http(HttpTransport::new(url, cli.connections, timeout, auth.as_ref())?)
        }
        TransportKind::Ws => {
            let mut url = parse_loopback_url(&cli.target, &["http", "https", "ws", "wss"])?;
            let scheme = match url.scheme() {
                "http" | "ws" => "ws",
                _ => "wss",
            };
            url.set_scheme(scheme)
                .map_err(|()| anyhow::anyhow!("cannot use {scheme} for {url}"))?;
            Transport::Ws(WsTransport::connect(url, cli.connections, timeout, auth.as_ref()).await?)
        }
    };

    let cfg = RunConfig {
        agents: cli.agents,
        rate,
        duration,
        warmup,
        max_in_flight,
        drift_rate: cli.drift_rate,
        seed: cli.seed,
        max_followups: cli.max_followups,
        progress_every: progress,
        drain_timeout: timeout + Duration::from_secs(5),
    };
    eprintln!(
        "opampd-loadtest: {} agents, {:.1} msg/s for {:.0} s against {} ({:?}, {} connections, {} in flight)",
        cfg.agents,
        cfg.rate,
        cli.duration,
        cli.target,
        cli.transport,
        cli.connections,
        max_in_flight
    );
    let summary = runner::run(cfg, Arc::new(transport)).await;
    let json = summary.to_json(cli.max_error_rate);
    println!("{summary}");
    let failures = summary.failures(cli.max_error_rate);
    if failures.is_empty() {
        println!("PASS");
    } else {
        println!("FAIL: {}", failures.join("; "));
    }
    println!("{json}");
    if let Some(path) = &cli.json_out {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(failures.is_empty())
}
