//! `opampd-loadtest`: simulated OpAMP agents against a loopback opampd, with drift injection,
//! per-reply correctness checks and latency figures. Exits non-zero when the server asked for
//! full state wrongly, missed a drift, or the error rate exceeds `--max-error-rate`; with phases
//! (`--phase-marks`, `--rate-steps`) each phase is judged by its kind's rules instead, and with
//! `--verify-admin` an acknowledged write missing from the store fails the run too. Agents may
//! accept remote config (`--remote-config-agents`) and the run may push configs itself
//! (`--push-config-at`): a config delivered twice, or to an agent that does not accept it, fails
//! the run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use opampd_loadtest::admin::{self, Admin};
use opampd_loadtest::config::{FleetMix, RateStep, RemoteConfigRun, RunConfig};
use opampd_loadtest::loopback::parse_loopback_url;
use opampd_loadtest::phases::{self, Mark, PhaseKind};
use opampd_loadtest::remote_config::{self, ServerView};
use opampd_loadtest::transport::{HttpTransport, Transport, WsTransport};
use opampd_loadtest::{runner, verify};

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
    /// Run length in seconds (default 60, or the sum of `--rate-steps`); the run stops by itself.
    #[arg(long)]
    duration: Option<f64>,
    /// A rate schedule instead of one rate: `RATE:SECS[:KIND[:NAME]],...`, each step held for its
    /// seconds in turn. Each step is also a phase of the report (KIND: normal, overload,
    /// recovery or fault; default normal), e.g. `10000:60:overload,5000:30:normal:after`.
    #[arg(long)]
    rate_steps: Option<String>,
    /// Cut the report into phases at the marks in this file, read at the end of the run: one
    /// `<unix_ms> <kind> <name>` per line (kind: normal, overload, recovery, fault), written by a
    /// script while the run goes. Errors are then judged per phase: none in normal phases, only
    /// 503/429 with Retry-After in overload phases, only those or connection failures in fault
    /// and recovery phases (false ReportFullState there is reported, not failed).
    #[arg(long)]
    phase_marks: Option<PathBuf>,
    /// After the run, read every agent's stored `sequence_num` from these opampd admin
    /// listeners (comma-separated base URLs, loopback only; `GET /api/agents`, paged) and check
    /// it is the last one the server acknowledged: an acknowledged write lost fails the run.
    #[arg(long)]
    verify_admin: Option<String>,
    /// opampd admin listeners `--push-config-at` PUTs to (comma-separated base URLs, loopback
    /// only, tried in turn); default: `--verify-admin`'s.
    #[arg(long)]
    admin_url: Option<String>,
    /// Token sent as `Authorization: Bearer <token>` on every admin API call (`--verify-admin`,
    /// `--push-config-at`). Prefer the environment variable: a flag shows in the process list.
    #[arg(long, env = "OPAMPD_LOADTEST_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Share of the agents (0 to 1) that accept remote config: they set AcceptsRemoteConfig and
    /// ReportsRemoteConfig, report APPLYING in the message after a receipt and APPLIED (or
    /// FAILED) in the one after that. The rest must never be sent a config.
    #[arg(long, default_value_t = 0.0)]
    remote_config_agents: f64,
    /// Share of receipts (0 to 1) reported FAILED instead of APPLIED; which ones is fixed by
    /// `--seed`, the agent and the config hash.
    #[arg(long, default_value_t = 0.0)]
    remote_config_fail_rate: f64,
    /// Seconds into the run at which the generator PUTs a config through the admin API
    /// (`--admin-url`): no selector, one file `loadtest.yaml` naming the run and the push, so
    /// each push is a new hash. Repeat (or comma-separate) for several pushes. Reported: the
    /// time from the PUT's 200 until 50/90/99/100 % of the accepting agents had their APPLIED
    /// or FAILED status acknowledged.
    #[arg(long, value_delimiter = ',')]
    push_config_at: Vec<f64>,
    /// The config name `--push-config-at` PUTs (and `--verify-admin` reads back).
    #[arg(long, default_value = "loadtest")]
    push_config_name: String,
    /// Seconds to wait between the end of the run and `--verify-admin`'s reads (requests a
    /// server still holds after the client gave up get this long to land).
    #[arg(long, default_value_t = 2.0)]
    verify_settle: f64,
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
    /// `service.name` values the agents are spread over, round robin
    /// (`opampd-loadtest-agent-<k>`; 1: every agent `opampd-loadtest-agent`).
    #[arg(long, default_value_t = 1)]
    services: u32,
    /// `service.version` values within each service, round robin (`0.1.<k>`).
    #[arg(long, default_value_t = 1)]
    versions: u32,
    /// Share of the agents (0 to 1) reporting degraded health (`StatusRecoverableError`, an
    /// exporter retrying); which ones is fixed by `--seed`.
    #[arg(long, default_value_t = 0.0)]
    degraded_agents: f64,
    /// Share of the agents (0 to 1) reporting unhealthy (`healthy: false`, a failed exporter).
    #[arg(long, default_value_t = 0.0)]
    error_agents: f64,
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

/// Parses `--rate-steps`: the schedule, and each step as a phase (kind, name).
fn parse_rate_steps(raw: &str) -> anyhow::Result<Vec<(RateStep, PhaseKind, String)>> {
    let mut steps = Vec::new();
    for (i, item) in raw.split(',').map(str::trim).filter(|s| !s.is_empty()).enumerate() {
        let mut parts = item.splitn(4, ':');
        let rate: f64 = parts
            .next()
            .unwrap_or_default()
            .parse()
            .with_context(|| format!("--rate-steps {item:?}: the rate is not a number"))?;
        let secs_raw = parts.next().with_context(|| format!("--rate-steps {item:?}: RATE:SECS"))?;
        let seconds: f64 = secs_raw
            .parse()
            .with_context(|| format!("--rate-steps {item:?}: the seconds are not a number"))?;
        if !(rate.is_finite() && rate > 0.0 && rate <= 10_000_000.0) {
            bail!("--rate-steps {item:?}: the rate must be in (0, 10000000] msg/s");
        }
        let duration = secs(&format!("rate-steps {item:?}"), seconds, 0.1)?;
        let kind = match parts.next() {
            Some(k) => {
                k.parse().map_err(|e: String| anyhow::anyhow!("--rate-steps {item:?}: {e}"))?
            }
            None => PhaseKind::Normal,
        };
        let name = parts.next().map_or_else(|| format!("step{}-{rate}/s", i + 1), str::to_owned);
        steps.push((RateStep { rate, duration }, kind, name));
    }
    if steps.is_empty() {
        bail!("--rate-steps names no step");
    }
    Ok(steps)
}

fn secs(name: &str, v: f64, min: f64) -> anyhow::Result<Duration> {
    if !(v.is_finite() && v >= min && v <= MAX_DURATION_S) {
        bail!("--{name} must be between {min} and {MAX_DURATION_S} seconds, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    let steps = cli.rate_steps.as_deref().map(parse_rate_steps).transpose()?.unwrap_or_default();
    let scheduled: Duration = steps.iter().map(|(s, _, _)| s.duration).sum();
    let duration = match (cli.duration, steps.is_empty()) {
        (Some(d), true) => secs("duration", d, 0.1)?,
        (None, true) => Duration::from_secs(60),
        (None, false) => scheduled,
        (Some(_), false) => {
            bail!("--duration and --rate-steps exclude each other (the steps' sum is the duration)")
        }
    };
    if duration.as_secs_f64() > MAX_DURATION_S {
        bail!("the run may last at most {MAX_DURATION_S} s");
    }
    let verify_settle = secs("verify-settle", cli.verify_settle, 0.0)?;
    let admins = cli.verify_admin.as_deref().map(verify::parse_admin_urls).transpose()?;
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
    if !(0.0..=1.0).contains(&cli.remote_config_agents)
        || !(0.0..=1.0).contains(&cli.remote_config_fail_rate)
    {
        bail!("--remote-config-agents and --remote-config-fail-rate are fractions in [0, 1]");
    }
    if !(1..=100_000).contains(&cli.services) || !(1..=100_000).contains(&cli.versions) {
        bail!("--services and --versions must be between 1 and 100000");
    }
    if !(0.0..=1.0).contains(&cli.degraded_agents)
        || !(0.0..=1.0).contains(&cli.error_agents)
        || cli.degraded_agents + cli.error_agents > 1.0
    {
        bail!("--degraded-agents and --error-agents are fractions in [0, 1] summing to at most 1");
    }
    if !remote_config::valid_name(&cli.push_config_name) {
        bail!(
            "--push-config-name must be 1 to 128 of A-Z a-z 0-9 . _ - (and not . or ..), got {:?}",
            cli.push_config_name
        );
    }
    let mut push_at = Vec::with_capacity(cli.push_config_at.len());
    for &at in &cli.push_config_at {
        let at = secs("push-config-at", at, 0.0)?;
        if at >= duration {
            bail!("--push-config-at {} is not inside the run", at.as_secs_f64());
        }
        push_at.push(at);
    }
    let token = cli.admin_token.as_deref().map(admin::bearer).transpose()?;
    let verify_admin = admins.map(|urls| Admin::new(urls, token.as_ref())).transpose()?;
    let push_admin = match (&cli.admin_url, &verify_admin) {
        _ if push_at.is_empty() => None,
        (Some(raw), _) => Some(Admin::new(verify::parse_admin_urls(raw)?, token.as_ref())?),
        (None, Some(a)) => Some(a.clone()),
        (None, None) => bail!("--push-config-at needs --admin-url (or --verify-admin)"),
    };
    let rate = if steps.is_empty() {
        cli.rate.unwrap_or(cli.agents as f64 / heartbeat.as_secs_f64())
    } else {
        // the average, for the summary's target_rate
        steps.iter().map(|(s, _, _)| s.rate * s.duration.as_secs_f64()).sum::<f64>()
            / duration.as_secs_f64()
    };
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
        steps: steps.iter().map(|(s, _, _)| *s).collect(),
        record_events: cli.phase_marks.is_some() || !steps.is_empty(),
        remote_config: RemoteConfigRun {
            agents: cli.remote_config_agents,
            fail_rate: cli.remote_config_fail_rate,
            push_at,
            push_name: cli.push_config_name.clone(),
        },
        fleet: FleetMix {
            services: cli.services,
            versions: cli.versions,
            degraded: cli.degraded_agents,
            error: cli.error_agents,
        },
    };
    eprintln!(
        "opampd-loadtest: {} agents, {:.1} msg/s for {:.0} s against {} ({:?}, {} connections, {} in flight)",
        cfg.agents,
        cfg.rate,
        duration.as_secs_f64(),
        cli.target,
        cli.transport,
        cli.connections,
        max_in_flight
    );
    let record_events = cfg.record_events;
    let outcome = runner::run_with_admin(cfg, Arc::new(transport), push_admin).await;
    let mut summary = outcome.summary;
    if record_events {
        // the steps are phases too, at their offsets from the start
        let mut marks = Vec::new();
        let mut at = Duration::ZERO;
        for (step, kind, name) in &steps {
            let at_unix_ms = outcome.start_unix_ms + at.as_millis() as u64;
            marks.push(Mark { at_unix_ms, kind: *kind, name: name.clone() });
            at += step.duration;
        }
        let from_file = match &cli.phase_marks {
            None => Ok(Vec::new()),
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("reading {}: {e}", path.display()))
                .and_then(|text| {
                    phases::parse_marks(&text).map_err(|e| format!("{}: {e}", path.display()))
                }),
        };
        match from_file {
            Ok(m) => {
                marks.extend(m);
                let cut = phases::phases(&marks, outcome.start_unix_ms);
                summary.phases = Some(phases::report(&cut, &outcome.events, cli.max_error_rate));
                summary.phase_events_dropped = outcome.events.dropped;
            }
            Err(e) => summary.phases_error = Some(e),
        }
    }
    if let Some(admin) = &verify_admin {
        tokio::time::sleep(verify_settle).await;
        eprintln!(
            "opampd-loadtest: checking the stored sequence_num of {} agents",
            outcome.agents.len()
        );
        summary.verify = Some(verify::verify(admin, &outcome.agents).await);
        if summary.remote_config.agents > 0 || !summary.remote_config.pushes.is_empty() {
            let name = &cli.push_config_name;
            summary.remote_config.server = Some(match admin.get_config(name).await {
                Ok(doc) => ServerView::from_json(name, &doc),
                Err(e) => ServerView {
                    name: name.clone(),
                    error: Some(format!("{e:#}")),
                    ..Default::default()
                },
            });
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_steps_parse_with_kinds_and_names() {
        let steps =
            parse_rate_steps("10000:60:overload, 5000:30:normal:after the storm,200:0.5").unwrap();
        let got: Vec<_> =
            steps.iter().map(|(s, k, n)| (s.rate, s.duration, *k, n.as_str())).collect();
        assert_eq!(
            got,
            [
                (10000.0, Duration::from_secs(60), PhaseKind::Overload, "step1-10000/s"),
                (5000.0, Duration::from_secs(30), PhaseKind::Normal, "after the storm"),
                (200.0, Duration::from_millis(500), PhaseKind::Normal, "step3-200/s"),
            ]
        );
    }

    #[test]
    fn bad_rate_steps_are_refused() {
        for bad in ["", "100", "x:10", "100:x", "0:10", "100:0", "100:10:storm"] {
            assert!(parse_rate_steps(bad).is_err(), "{bad:?}");
        }
    }
}
