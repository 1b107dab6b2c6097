//! The open-loop pacer: message number `m` is due at `start + m / rate` and goes to agent
//! `m % agents`, so every agent sends once per `agents / rate` seconds with phases spread evenly
//! (heartbeat mode is `rate = agents / heartbeat`). Concurrency is capped by a semaphore; when the
//! cap is reached the pacer waits and the shortfall shows in the achieved rate and dispatch lag.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opamp_proto::InstanceUid;
use tokio::sync::Semaphore;
use tokio::time::{Instant, MissedTickBehavior};

use crate::agent::{Agent, Injection};
use crate::config::RunConfig;
use crate::report::{Progress, Summary};
use crate::rng::SplitMix64;
use crate::stats::Stats;
use crate::transport::Transport;

/// An agent parked between turns; `None` while one of its messages is in flight.
type Slot = Mutex<Option<Agent>>;

/// Runs the load for `cfg.duration` and returns the summary. Every loop ends at the deadline.
pub async fn run(cfg: RunConfig, transport: Arc<Transport>) -> Summary {
    let slots: Arc<Vec<Slot>> = Arc::new(
        (0..cfg.agents)
            .map(|i| Mutex::new(Some(Agent::new(InstanceUid::new_v7(), i as u64))))
            .collect(),
    );
    let stats = Arc::new(Stats::default());
    let sem = Arc::new(Semaphore::new(cfg.max_in_flight));
    let start = Instant::now();
    let end = start + cfg.duration;
    let window_start = start + cfg.warmup;

    let progress = tokio::spawn(progress_loop(stats.clone(), cfg.clone(), start, end));

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
        let due = ((now - start).as_secs_f64() * cfg.rate) as u64;
        while scheduled < due {
            let permit = match sem.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    stats.saturated_waits.fetch_add(1, Ordering::Relaxed);
                    match tokio::time::timeout_at(end, sem.clone().acquire_owned()).await {
                        Ok(Ok(p)) => p,
                        _ => break 'pace,
                    }
                }
            };
            let msg_no = scheduled;
            scheduled += 1;
            let due_at = start + Duration::from_secs_f64(msg_no as f64 / cfg.rate);
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
                let agent = agent_turn(
                    agent,
                    injection,
                    &transport,
                    &stats,
                    max_followups,
                    window_start,
                    end,
                )
                .await;
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
    Summary::collect(&cfg, &stats, scheduled, dispatch_end - start, drained)
}

/// One dispatch of one agent: its scheduled message, then (bounded) the full statuses the server
/// asks for, sent at once as real agents do.
async fn agent_turn(
    mut agent: Agent,
    mut injection: Injection,
    transport: &Transport,
    stats: &Stats,
    max_followups: u32,
    window_start: Instant,
    end: Instant,
) -> Agent {
    for attempt in 0..=max_followups {
        let (sent, body) = agent.next_message(injection, unix_nanos());
        injection = Injection::None;
        stats.on_send(&sent, attempt > 0);
        let t0 = Instant::now();
        let result = transport.exchange(agent.index(), agent.uid(), body).await;
        let done = Instant::now();
        let in_window = done >= window_start && done <= end;
        stats.on_latency(done - t0, in_window);
        match result {
            Ok(bytes) => match agent.on_reply(&sent, &bytes) {
                Ok(judged) => stats.on_judged(&judged, in_window),
                Err(e) => {
                    stats.on_error(e.kind(), e == crate::agent::ReplyError::ErrorResponse(2));
                    break;
                }
            },
            Err(e) => {
                agent.on_error(&sent);
                stats.on_error(e.kind(), e.is_unavailable());
                break;
            }
        }
        if !agent.owes_full() || Instant::now() >= end {
            break;
        }
    }
    agent
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
