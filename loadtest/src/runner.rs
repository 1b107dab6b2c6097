//! The open-loop pacer: message number `m` is due at `start + m / rate` and goes to agent
//! `m % agents`, so every agent sends once per `agents / rate` seconds with phases spread evenly
//! (heartbeat mode is `rate = agents / heartbeat`; a rate schedule changes the rate step by step).
//! Concurrency is capped by a semaphore; when the cap is reached the pacer waits and the shortfall
//! shows in the achieved rate and dispatch lag. With `--push-config-at` a task beside the pacer
//! PUTs the configs through the admin API at their times.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opamp_proto::InstanceUid;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::time::{Instant, MissedTickBehavior};

use crate::admin::Admin;
use crate::agent::{AckView, Agent, Injection, Profile};
use crate::config::{RateStep, RemoteConfigRun, RunConfig};
use crate::outcome::EventLog;
use crate::remote_config::{self, PushRecord, PushReport, Pushed};
use crate::report::{Progress, Summary};
use crate::rng::SplitMix64;
use crate::stats::Stats;
use crate::transport::Transport;

/// An agent parked between turns; `None` while one of its messages is in flight.
type Slot = Mutex<Option<Agent>>;

/// What a run leaves behind besides its summary.
#[derive(Debug)]
pub struct RunOutcome {
    pub summary: Summary,
    /// Every agent's view of what the server stored for it, in agent order; `None` for an agent
    /// whose last exchange was still in flight when the drain timed out (it cannot be checked).
    pub agents: Vec<Option<AckView>>,
    /// Every exchange, when `cfg.record_events` (empty otherwise).
    pub events: EventLog,
    /// When the run started, in milliseconds since the Unix epoch (event times are relative).
    pub start_unix_ms: u64,
}

/// Runs the load for `cfg.duration` and returns the summary. Every loop ends at the deadline.
pub async fn run(cfg: RunConfig, transport: Arc<Transport>) -> Summary {
    run_recorded(cfg, transport).await.summary
}

/// Piecewise-constant pacing: where each step starts, in seconds and in messages.
#[derive(Debug, Clone)]
pub struct Pace {
    /// (start second, messages due before it, rate)
    segments: Vec<(f64, f64, f64)>,
}

impl Pace {
    pub fn new(steps: &[RateStep]) -> Self {
        let mut segments = Vec::with_capacity(steps.len());
        let (mut at, mut count) = (0.0, 0.0);
        for step in steps {
            segments.push((at, count, step.rate));
            let d = step.duration.as_secs_f64();
            at += d;
            count += d * step.rate;
        }
        Self { segments }
    }

    /// Messages due in the first `t` seconds.
    pub fn due(&self, t: f64) -> f64 {
        let seg = self.segments.iter().rev().find(|s| s.0 <= t).or(self.segments.first());
        seg.map_or(0.0, |&(at, count, rate)| count + (t - at).max(0.0) * rate)
    }

    /// Messages due before the step running at `t` began: a step's backlog is not carried into
    /// the next one (after an overload step, a normal step offers its own rate, not a catch-up).
    pub fn step_floor(&self, t: f64) -> f64 {
        self.segments.iter().rev().find(|s| s.0 <= t).map_or(0.0, |s| s.1)
    }

    /// The rate of the step running at `t`.
    pub fn rate_at(&self, t: f64) -> f64 {
        let seg = self.segments.iter().rev().find(|s| s.0 <= t).or(self.segments.first());
        seg.map_or(1.0, |s| s.2)
    }

    /// When the step running at `t` ends, in seconds since the start (infinite for the last).
    pub fn step_end(&self, t: f64) -> f64 {
        self.segments.iter().map(|s| s.0).find(|&at| at > t).unwrap_or(f64::INFINITY)
    }

    /// When message `m` is due, in seconds since the start.
    pub fn time_of(&self, m: f64) -> f64 {
        let seg = self.segments.iter().rev().find(|s| s.1 <= m).or(self.segments.first());
        seg.map_or(0.0, |&(at, count, rate)| at + (m - count).max(0.0) / rate)
    }
}

/// [`run`], also returning the agents' views and the event log.
pub async fn run_recorded(cfg: RunConfig, transport: Arc<Transport>) -> RunOutcome {
    run_with_admin(cfg, transport, None).await
}

/// [`run_recorded`], PUTting `cfg.remote_config.push_at`'s configs through `admin` (no pushes
/// without it).
pub async fn run_with_admin(
    cfg: RunConfig,
    transport: Arc<Transport>,
    admin: Option<Admin>,
) -> RunOutcome {
    let remote = &cfg.remote_config;
    let slots: Arc<Vec<Slot>> = Arc::new(
        (0..cfg.agents as u64)
            .map(|i| {
                let agent = Agent::new(InstanceUid::new_v7(), i)
                    .with_profile(Profile::of(&cfg.fleet, cfg.seed, i));
                let agent = if remote_config::accepts(i, remote.agents) {
                    agent.accepting_remote_config(cfg.seed, remote.fail_rate)
                } else {
                    agent
                };
                Mutex::new(Some(agent))
            })
            .collect(),
    );
    let mut stats = if cfg.record_events { Stats::recording() } else { Stats::default() };
    stats.remote_config_agents = remote_config::accepting_count(cfg.agents as u64, remote.agents);
    let stats = Arc::new(stats);
    let sem = Arc::new(Semaphore::new(cfg.max_in_flight));
    let pace = Pace::new(&cfg.schedule());
    let start_unix_ms = unix_nanos() / 1_000_000;
    let start = Instant::now();
    let end = start + cfg.duration;
    let window_start = start + cfg.warmup;

    let progress = tokio::spawn(progress_loop(stats.clone(), cfg.clone(), start, end));
    let pushes: Arc<Mutex<Vec<PushRecord>>> = Arc::default();
    let pusher = admin.filter(|_| !remote.push_at.is_empty()).map(|admin| {
        let (plan, pushes) = (remote.clone(), pushes.clone());
        tokio::spawn(push_loop(admin, plan, InstanceUid::new_v7().to_string(), start, end, pushes))
    });

    // 1 ms ticks: fine enough to spread 100K msg/s, coarse enough to cost nothing when idle.
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut scheduled: u64 = 0;
    'pace: loop {
        tick.tick().await;
        let now = Instant::now();
        if now >= end {
            break;
        }
        let elapsed = (now - start).as_secs_f64();
        let due = pace.due(elapsed) as u64;
        let floor = pace.step_floor(elapsed) as u64;
        if scheduled < floor {
            stats.behind_at_step_end.fetch_add(floor - scheduled, Ordering::Relaxed);
            scheduled = floor;
        }
        // A wait for a slot ends with the step: the next one paces afresh from its own floor.
        let step_end = start + Duration::from_secs_f64(pace.step_end(elapsed).min(1e9));
        let step_end = step_end.min(end);
        while scheduled < due {
            let permit = match sem.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    stats.saturated_waits.fetch_add(1, Ordering::Relaxed);
                    match tokio::time::timeout_at(step_end, sem.clone().acquire_owned()).await {
                        Ok(Ok(p)) => p,
                        Ok(Err(_)) => break 'pace,
                        Err(_) => continue 'pace,
                    }
                }
            };
            // A message more than one cycle late (every agent had its turn since) is dropped,
            // not sent in a burst: a real agent sends its next message instead, it never queues
            // up behind a slow server. Only a saturated generator falls this far behind.
            let now_s = (Instant::now() - start).as_secs_f64();
            let cycle = cfg.agents as f64 / pace.rate_at(now_s);
            let earliest = pace.due(now_s - cycle) as u64;
            if scheduled < earliest {
                stats.late_skips.fetch_add(earliest - scheduled, Ordering::Relaxed);
                scheduled = earliest;
                if scheduled >= due {
                    continue 'pace;
                }
            }
            let msg_no = scheduled;
            scheduled += 1;
            let due_at = start + Duration::from_secs_f64(pace.time_of(msg_no as f64));
            let lag = Instant::now().saturating_duration_since(due_at).as_micros() as u64;
            stats.max_dispatch_lag_us.fetch_max(lag, Ordering::Relaxed);
            let idx = (msg_no % cfg.agents as u64) as usize;
            let Some(agent) = slots[idx].lock().unwrap_or_else(|e| e.into_inner()).take() else {
                stats.busy_skips.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let mut rng = SplitMix64::new(cfg.seed ^ msg_no.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let injection = if rng.next_f64() < cfg.drift_rate {
                Injection::pick(rng.next_f64())
            } else {
                Injection::None
            };
            let (slots, stats, transport) = (slots.clone(), stats.clone(), transport.clone());
            let max_followups = cfg.max_followups;
            stats.in_flight.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let times = TurnTimes { start, window_start, end };
                let agent =
                    agent_turn(agent, injection, &transport, &stats, max_followups, times).await;
                *slots[idx].lock().unwrap_or_else(|e| e.into_inner()) = Some(agent);
                stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
            });
        }
    }
    let dispatch_end = Instant::now();

    // Drain: every permit back means nothing is in flight. Bounded by the drain timeout.
    let drained =
        tokio::time::timeout(cfg.drain_timeout, sem.acquire_many(cfg.max_in_flight as u32))
            .await
            .is_ok_and(|r| r.is_ok());
    progress.abort();
    if let Some(mut pusher) = pusher {
        // a PUT still running gets the drain's grace, then counts as unanswered
        if tokio::time::timeout(cfg.drain_timeout, &mut pusher).await.is_err() {
            pusher.abort();
        }
    }
    let mut summary = Summary::collect(&cfg, &stats, scheduled, dispatch_end - start, drained);
    {
        let tallies = stats.remote_config_tallies.lock().unwrap_or_else(|e| e.into_inner());
        let pushes = pushes.lock().unwrap_or_else(|e| e.into_inner());
        summary.remote_config.pushes = pushes
            .iter()
            .map(|p| PushReport::build(p, &tallies, stats.remote_config_agents))
            .collect();
    }
    let agents = slots
        .iter()
        .map(|slot| slot.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(Agent::ack_view))
        .collect();
    let events = std::mem::take(&mut *stats.events.lock().unwrap_or_else(|e| e.into_inner()));
    RunOutcome { summary, agents, events, start_unix_ms }
}

/// The instants a turn is measured against.
#[derive(Debug, Clone, Copy)]
struct TurnTimes {
    start: Instant,
    window_start: Instant,
    end: Instant,
}

/// One dispatch of one agent: its scheduled message, then (bounded) the full statuses the server
/// asks for, sent at once as real agents do.
async fn agent_turn(
    mut agent: Agent,
    mut injection: Injection,
    transport: &Transport,
    stats: &Stats,
    max_followups: u32,
    times: TurnTimes,
) -> Agent {
    let TurnTimes { start, window_start, end } = times;
    for attempt in 0..=max_followups {
        let (sent, body) = agent.next_message(injection, unix_nanos());
        injection = Injection::None;
        stats.on_send(&sent, attempt > 0);
        let t0 = Instant::now();
        let result = transport.exchange(agent.index(), agent.uid(), body).await;
        let done = Instant::now();
        let in_window = done >= window_start && done <= end;
        let latency = done - t0;
        let start_ms = u32::try_from((t0 - start).as_millis()).unwrap_or(u32::MAX);
        stats.on_latency(latency, in_window);
        match result {
            Ok(bytes) => match agent.on_reply(&sent, &bytes) {
                Ok(judged) => {
                    stats.on_remote_config(&judged.remote_config, done - start);
                    stats.on_judged(&judged, in_window);
                    stats.log_reply(start_ms, latency, &judged);
                }
                Err(e) => {
                    let kind = e.kind();
                    stats.log_error(start_ms, latency, e.class(), &kind);
                    stats.on_error(kind, e.class(), e.is_unavailable());
                    break;
                }
            },
            Err(e) => {
                agent.on_error(&sent);
                if let crate::transport::ExchangeError::Other(text) = &e {
                    stats.sample_error(text);
                }
                let kind = e.kind();
                stats.log_error(start_ms, latency, e.class(), &kind);
                stats.on_error(kind, e.class(), e.is_unavailable());
                break;
            }
        }
        if !agent.owes_full() || Instant::now() >= end {
            break;
        }
    }
    agent
}

/// PUTs a new config at each of `plan.push_at` (in time order; none at or after `end`) and
/// records how each went in `records`, where a PUT cut short by the end of the run stays
/// recorded as unanswered.
async fn push_loop(
    admin: Admin,
    plan: RemoteConfigRun,
    run_id: String,
    start: Instant,
    end: Instant,
    records: Arc<Mutex<Vec<PushRecord>>>,
) {
    let mut times = plan.push_at.clone();
    times.sort();
    for (i, at) in times.into_iter().enumerate() {
        if start + at >= end {
            break;
        }
        tokio::time::sleep_until(start + at).await;
        let counter = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let mut record = PushRecord {
            counter,
            name: plan.push_name.clone(),
            run_id: run_id.clone(),
            at,
            result: Err("no answer before the end of the run".into()),
        };
        let slot = {
            let mut records = records.lock().unwrap_or_else(|e| e.into_inner());
            records.push(record.clone());
            records.len() - 1
        };
        let body = remote_config::push_body(&run_id, counter);
        let sent = Instant::now();
        let put = admin.put_config(&plan.push_name, &body).await;
        let answered = Instant::now();
        record.result = match put {
            Ok(doc) => {
                match doc.get("hash").and_then(Value::as_str).and_then(remote_config::parse_hash) {
                    Some(hash) => Ok(Pushed {
                        hash,
                        acked_at: answered - start,
                        put_latency: answered - sent,
                    }),
                    None => Err(format!(
                        "the PUT's reply has no valid \"hash\": {}",
                        doc.get("hash").unwrap_or(&Value::Null)
                    )),
                }
            }
            Err(e) => Err(format!("{e:#}")),
        };
        match &record.result {
            Ok(p) => eprintln!(
                "opampd-loadtest: push {counter} of config {:?} at {:.1} s: hash {}",
                plan.push_name,
                p.acked_at.as_secs_f64(),
                remote_config::hex(&p.hash)
            ),
            Err(e) => eprintln!(
                "opampd-loadtest: push {counter} of config {:?} failed: {e}",
                plan.push_name
            ),
        }
        records.lock().unwrap_or_else(|e| e.into_inner())[slot] = record;
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Prints a progress line every `progress_every` until aborted (and never past the deadline).
async fn progress_loop(stats: Arc<Stats>, cfg: RunConfig, start: Instant, end: Instant) {
    let mut last_replies = 0u64;
    let mut last_at = start;
    let mut next = start + cfg.progress_every;
    while next <= end + cfg.drain_timeout {
        tokio::time::sleep_until(next).await;
        let now = Instant::now();
        let interval = {
            let mut h = stats.hist.lock().unwrap_or_else(|e| e.into_inner());
            let s = h.interval.summary();
            h.interval.reset();
            s
        };
        let replies = Stats::get(&stats.replies_ok);
        let p = Progress {
            elapsed: now - start,
            rate: (replies - last_replies) as f64 / (now - last_at).as_secs_f64().max(1e-9),
            interval,
            in_flight: Stats::get(&stats.in_flight),
            stats: &stats,
        };
        eprintln!("{p}");
        last_replies = replies;
        last_at = now;
        next += cfg.progress_every;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(rate: f64, secs: u64) -> RateStep {
        RateStep { rate, duration: Duration::from_secs(secs) }
    }

    #[test]
    fn a_constant_rate_paces_linearly() {
        let p = Pace::new(&[step(100.0, 10)]);
        assert_eq!(p.due(0.0), 0.0);
        assert_eq!(p.due(2.5), 250.0);
        assert_eq!(p.time_of(250.0), 2.5);
    }

    #[test]
    fn steps_add_up_and_invert() {
        let p = Pace::new(&[step(100.0, 10), step(1000.0, 5), step(10.0, 10)]);
        assert_eq!(p.due(10.0), 1000.0);
        assert_eq!(p.due(12.0), 3000.0);
        assert_eq!(p.due(16.0), 6010.0);
        assert_eq!(
            (p.step_floor(3.0), p.step_floor(12.0), p.step_floor(16.0)),
            (0.0, 1000.0, 6000.0)
        );
        assert_eq!(
            (p.step_end(3.0), p.step_end(10.0), p.step_end(16.0)),
            (10.0, 15.0, f64::INFINITY)
        );
        assert_eq!((p.rate_at(-1.0), p.rate_at(12.0), p.rate_at(99.0)), (100.0, 1000.0, 10.0));
        assert_eq!(p.due(-5.0), 0.0);
        for m in [0.0, 999.0, 1000.0, 3000.0, 6000.0, 6050.0] {
            assert!((p.due(p.time_of(m)) - m).abs() < 1e-6, "{m}");
        }
    }
}
