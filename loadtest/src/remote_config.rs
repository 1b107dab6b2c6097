//! Remote configuration as a simulated agent lives it: which agents accept it, the status an
//! accepting agent reports after a receipt (APPLYING in its next message, APPLIED or FAILED in
//! the one after), the exactly-once check on receipts, and the rollout figures of a push. Pure:
//! no I/O and no clock reads (times are offsets from the run's start, given by the caller).

use std::collections::HashMap;
use std::time::Duration;

use opamp_proto::Bytes;
use opamp_proto::v1::{RemoteConfigStatus, RemoteConfigStatuses};
use serde_json::{Value, json};

use crate::latency::round3;
use crate::rng::SplitMix64;

/// The file a push carries (`--push-config-at`).
pub const PUSH_FILE: &str = "loadtest.yaml";

/// What a FAILED status says.
pub const FAILED_MESSAGE: &str =
    "simulated apply failure (opampd-loadtest --remote-config-fail-rate)";

/// Whether agent `index` accepts remote config when a share `fraction` of the agents do: the
/// first `n` agents hold exactly `floor(n * fraction)` accepting ones, spread evenly over the
/// indices (so over heartbeat phases and WebSocket connections), the same in every run.
pub fn accepts(index: u64, fraction: f64) -> bool {
    let f = fraction.clamp(0.0, 1.0);
    ((index + 1) as f64 * f).floor() > (index as f64 * f).floor()
}

/// How many of `agents` agents accept remote config (see [`accepts`]).
pub fn accepting_count(agents: u64, fraction: f64) -> u64 {
    (agents as f64 * fraction.clamp(0.0, 1.0)).floor() as u64
}

/// Whether applying `hash` fails on agent `index`: a draw fixed by the run's seed, the agent and
/// the hash, so a rerun with the same seed fails the same receipts.
pub fn fails(seed: u64, index: u64, hash: &[u8], rate: f64) -> bool {
    if rate <= 0.0 {
        return false;
    }
    // FNV-1a folds the hash into the seed; SplitMix64's first output mixes it well enough.
    let folded = hash
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    let mut rng =
        SplitMix64::new(seed ^ folded ^ index.rotate_left(32).wrapping_mul(0xD6E8_FEB8_6659_FD93));
    rng.next_f64() < rate
}

/// Where an agent is with the config it last received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Never received one.
    Unset,
    Applying,
    Applied,
    Failed,
}

impl Stage {
    fn wire(self) -> RemoteConfigStatuses {
        match self {
            Stage::Unset => RemoteConfigStatuses::Unset,
            Stage::Applying => RemoteConfigStatuses::Applying,
            Stage::Applied => RemoteConfigStatuses::Applied,
            Stage::Failed => RemoteConfigStatuses::Failed,
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Stage::Applied | Stage::Failed)
    }
}

/// An agent's remote config status: the hash it last received and how far it got with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub hash: Bytes,
    pub stage: Stage,
}

impl Status {
    pub fn to_wire(&self) -> RemoteConfigStatus {
        RemoteConfigStatus {
            last_remote_config_hash: self.hash.clone(),
            status: self.stage.wire() as i32,
            error_message: if self.stage == Stage::Failed {
                FAILED_MESSAGE.into()
            } else {
                String::new()
            },
        }
    }
}

/// What a reply's `remote_config` was to the agent that got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// A hash this agent had not received before: it starts applying it.
    New,
    /// A hash this agent already received (and maybe reported): exactly-once broken.
    Duplicate,
    /// The agent does not accept remote config: the server must not send it any.
    Unexpected,
}

/// A final status the server acknowledged, the first time (one per agent and hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub hash: Bytes,
    pub failed: bool,
}

/// The remote-config side of one valid reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Events {
    /// The reply carried `remote_config` with this hash.
    pub receipt: Option<(Receipt, Bytes)>,
    /// The message this reply answers carried a final status the server had not acknowledged.
    pub completion: Option<Completion>,
}

impl Events {
    pub fn is_empty(&self) -> bool {
        self.receipt.is_none() && self.completion.is_none()
    }
}

/// The remote-config state of an accepting agent. The status is a state, not an event log: a
/// message carries it when it differs from the last one the server acknowledged (or in a full
/// report), so a status whose exchange failed is sent again, and one that went out is not.
#[derive(Debug, Clone)]
pub struct RemoteConfigAgent {
    seed: u64,
    index: u64,
    fail_rate: f64,
    current: Status,
    /// The APPLYING status of `current` went out: the apply is done before the next message.
    applying_sent: bool,
    /// The status of the last message the server answered with a valid reply.
    acked: Option<Status>,
    /// The status the message in flight carries.
    in_flight: Option<Status>,
    /// Every hash received, to catch a second delivery.
    received: Vec<Bytes>,
}

impl RemoteConfigAgent {
    pub fn new(seed: u64, index: u64, fail_rate: f64) -> Self {
        Self {
            seed,
            index,
            fail_rate,
            current: Status { hash: Bytes::new(), stage: Stage::Unset },
            applying_sent: false,
            acked: None,
            in_flight: None,
            received: Vec::new(),
        }
    }

    pub fn current(&self) -> &Status {
        &self.current
    }

    /// The `remote_config_status` of the next message, if it carries one. A full report always
    /// does (opampd, like the spec, counts a report without it from a ReportsRemoteConfig agent
    /// as incomplete and would ask again), a heartbeat only when the status changed.
    pub fn status_for_message(&mut self, full: bool) -> Option<RemoteConfigStatus> {
        if self.current.stage == Stage::Applying && self.applying_sent {
            let failed = fails(self.seed, self.index, &self.current.hash, self.fail_rate);
            self.current.stage = if failed { Stage::Failed } else { Stage::Applied };
        }
        let carry = full || self.acked.as_ref() != Some(&self.current);
        if !carry {
            self.in_flight = None;
            return None;
        }
        if self.current.stage == Stage::Applying {
            self.applying_sent = true;
        }
        self.in_flight = Some(self.current.clone());
        Some(self.current.to_wire())
    }

    /// The message in flight was answered with a valid reply: its status is the server's now.
    pub fn on_ack(&mut self) -> Option<Completion> {
        let sent = self.in_flight.take()?;
        let first = self.acked.as_ref() != Some(&sent);
        let completion = (first && sent.stage.is_final())
            .then(|| Completion { hash: sent.hash.clone(), failed: sent.stage == Stage::Failed });
        self.acked = Some(sent);
        completion
    }

    /// The message in flight got no valid reply: whether the server has its status is unknown,
    /// so the next message carries the current one again.
    pub fn on_error(&mut self) {
        self.in_flight = None;
    }

    /// A reply carried `remote_config` with `hash`.
    pub fn on_receipt(&mut self, hash: Bytes) -> Receipt {
        if self.received.contains(&hash) {
            return Receipt::Duplicate;
        }
        self.received.push(hash.clone());
        self.current = Status { hash, stage: Stage::Applying };
        self.applying_sent = false;
        Receipt::New
    }
}

/// What the run saw of one config hash, summed over the agents.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HashTally {
    /// Replies carrying it (duplicates and unexpected ones included).
    pub received: u64,
    pub duplicates: u64,
    pub applied: u64,
    pub failed: u64,
    /// When each acknowledged final status came back, since the run's start.
    pub done_at: Vec<Duration>,
}

impl HashTally {
    fn receipt(&mut self, receipt: Receipt) {
        self.received += 1;
        self.duplicates += u64::from(receipt == Receipt::Duplicate);
    }

    fn completion(&mut self, failed: bool, at: Duration) {
        if failed {
            self.failed += 1;
        } else {
            self.applied += 1;
        }
        self.done_at.push(at);
    }
}

/// Tallies by hash, as the run keeps them.
pub type Tallies = HashMap<Bytes, HashTally>;

/// Adds one reply's events, `at` since the run's start, to the tallies.
pub fn tally(tallies: &mut Tallies, events: &Events, at: Duration) {
    if let Some((receipt, hash)) = &events.receipt {
        tallies.entry(hash.clone()).or_default().receipt(*receipt);
    }
    if let Some(c) = &events.completion {
        tallies.entry(c.hash.clone()).or_default().completion(c.failed, at);
    }
}

/// One `--push-config-at` PUT as it went.
#[derive(Debug, Clone, PartialEq)]
pub struct PushRecord {
    /// 1 for the first push of the run, and so on (it is in the file body).
    pub counter: u32,
    pub name: String,
    pub run_id: String,
    /// When the PUT was due, since the run's start.
    pub at: Duration,
    pub result: Result<Pushed, String>,
}

/// A PUT answered 200.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub hash: Bytes,
    /// When the 200 came, since the run's start: the rollout clock starts here.
    pub acked_at: Duration,
    pub put_latency: Duration,
}

/// The shares of the accepting agents the rollout figures are given for.
pub const ROLLOUT_QUANTILES: [(f64, &str); 4] =
    [(0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (1.0, "p100")];

/// Seconds from `from` until the `q` share of `population` had their final status acknowledged,
/// one figure per [`ROLLOUT_QUANTILES`] entry; `None` where not reached. `done` is sorted here.
pub fn rollout_times(from: Duration, done: &mut [Duration], population: u64) -> [Option<f64>; 4] {
    done.sort_unstable();
    ROLLOUT_QUANTILES.map(|(q, _)| {
        if population == 0 {
            return None;
        }
        let need = ((q * population as f64).ceil() as u64).max(1);
        let i = usize::try_from(need - 1).ok()?;
        // a reply can beat the PUT's own 200 (the agent's message raced it): that is 0 s
        done.get(i).map(|t| t.saturating_sub(from).as_secs_f64())
    })
}

/// What became of one push.
#[derive(Debug, Clone, PartialEq)]
pub struct PushReport {
    pub counter: u32,
    pub name: String,
    pub run_id: String,
    pub at_s: f64,
    /// Lowercase hex of the hash the server answered, when the PUT succeeded.
    pub hash: Option<String>,
    pub put_ms: Option<f64>,
    pub error: Option<String>,
    /// Accepting agents of the run: the population of the rollout figures.
    pub accepting: u64,
    pub received: u64,
    pub duplicates: u64,
    pub applied: u64,
    pub failed: u64,
    /// Seconds from the PUT's 200 until 50/90/99/100 % of `accepting` were done.
    pub rollout_s: [Option<f64>; 4],
}

impl PushReport {
    pub fn build(record: &PushRecord, tallies: &Tallies, accepting: u64) -> Self {
        let mut r = PushReport {
            counter: record.counter,
            name: record.name.clone(),
            run_id: record.run_id.clone(),
            at_s: record.at.as_secs_f64(),
            hash: None,
            put_ms: None,
            error: None,
            accepting,
            received: 0,
            duplicates: 0,
            applied: 0,
            failed: 0,
            rollout_s: [None; 4],
        };
        match &record.result {
            Err(e) => r.error = Some(e.clone()),
            Ok(p) => {
                r.hash = Some(hex(&p.hash));
                r.put_ms = Some(p.put_latency.as_secs_f64() * 1000.0);
                if let Some(t) = tallies.get(&p.hash) {
                    r.received = t.received;
                    r.duplicates = t.duplicates;
                    r.applied = t.applied;
                    r.failed = t.failed;
                    let mut done = t.done_at.clone();
                    r.rollout_s = rollout_times(p.acked_at, &mut done, accepting);
                }
            }
        }
        r
    }

    /// The generator's own view of this hash, in the admin API's terms.
    pub fn counts(&self) -> ConfigCounts {
        let done = self.applied + self.failed;
        let first_receipts = self.received.saturating_sub(self.duplicates);
        ConfigCounts {
            matched: self.accepting,
            applied: self.applied,
            applying: first_receipts.saturating_sub(done),
            failed: self.failed,
            pending: self.accepting.saturating_sub(first_receipts),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut rollout = serde_json::Map::new();
        for ((_, name), v) in ROLLOUT_QUANTILES.iter().zip(self.rollout_s) {
            rollout.insert(format!("{name}_s"), json!(v.map(round3)));
        }
        json!({
            "counter": self.counter,
            "name": self.name,
            "run_id": self.run_id,
            "at_s": round3(self.at_s),
            "hash": self.hash,
            "put_ms": self.put_ms.map(round3),
            "error": self.error,
            "accepting": self.accepting,
            "received": self.received,
            "duplicates": self.duplicates,
            "applied": self.applied,
            "failed": self.failed,
            "complete": self.hash.is_some() && self.applied + self.failed >= self.accepting,
            "rollout": rollout,
        })
    }
}

/// Agent counts of one config, as `GET /api/configs/{name}` gives them under `"agents"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConfigCounts {
    pub matched: u64,
    pub applied: u64,
    pub applying: u64,
    pub failed: u64,
    pub pending: u64,
}

impl ConfigCounts {
    pub fn from_json(agents: &Value) -> Option<Self> {
        let n = |k: &str| agents.get(k).and_then(Value::as_u64);
        Some(Self {
            matched: n("matched")?,
            applied: n("applied")?,
            applying: n("applying")?,
            failed: n("failed")?,
            pending: n("pending")?,
        })
    }

    pub fn to_json(&self) -> Value {
        json!({
            "matched": self.matched,
            "applied": self.applied,
            "applying": self.applying,
            "failed": self.failed,
            "pending": self.pending,
        })
    }
}

impl std::fmt::Display for ConfigCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "matched {} applied {} applying {} failed {} pending {}",
            self.matched, self.applied, self.applying, self.failed, self.pending
        )
    }
}

/// The server's view of a config after the run (`--verify-admin`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerView {
    pub name: String,
    pub hash: Option<String>,
    pub agents: Option<ConfigCounts>,
    /// Why it could not be read, if so.
    pub error: Option<String>,
}

impl ServerView {
    /// Reads `GET /api/configs/{name}`'s reply.
    pub fn from_json(name: &str, doc: &Value) -> Self {
        let agents = doc.get("agents").and_then(ConfigCounts::from_json);
        ServerView {
            name: name.to_owned(),
            hash: doc.get("hash").and_then(Value::as_str).map(str::to_owned),
            agents,
            error: agents.is_none().then(|| "the reply has no complete `agents` counts".into()),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "hash": self.hash,
            "agents": self.agents.as_ref().map(ConfigCounts::to_json),
            "error": self.error,
        })
    }
}

/// The JSON body of a push: no selector (every accepting agent), one file whose body names the
/// run and the push, so every push is a new hash.
pub fn push_body(run_id: &str, counter: u32) -> Value {
    let body =
        format!("# pushed by opampd-loadtest\nloadtest:\n  run_id: {run_id}\n  push: {counter}\n");
    json!({
        "selector": {},
        "files": { PUSH_FILE: { "body": body, "content_type": "text/yaml" } },
    })
}

/// Lowercase hex, as the admin API writes hashes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses the admin API's `"hash"`: exactly 64 lowercase hex digits.
pub fn parse_hash(text: &str) -> Option<Bytes> {
    if text.len() != 64 || !text.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..32).map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()).collect();
    bytes.map(Bytes::from)
}

/// A config name opampd accepts: 1 to 128 of `A-Z a-z 0-9 . _ -`, not `.` or `..` (it is a
/// URL path segment).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u8) -> Bytes {
        Bytes::from(vec![n; 32])
    }

    fn stage_of(s: &Option<RemoteConfigStatus>) -> Option<(Vec<u8>, i32)> {
        s.as_ref().map(|s| (s.last_remote_config_hash.to_vec(), s.status))
    }

    const APPLYING: i32 = RemoteConfigStatuses::Applying as i32;
    const APPLIED: i32 = RemoteConfigStatuses::Applied as i32;
    const FAILED: i32 = RemoteConfigStatuses::Failed as i32;
    const UNSET: i32 = RemoteConfigStatuses::Unset as i32;

    #[test]
    fn the_first_full_report_carries_an_unset_status_and_heartbeats_then_carry_none() {
        let mut a = RemoteConfigAgent::new(1, 0, 0.0);
        assert_eq!(stage_of(&a.status_for_message(true)), Some((vec![], UNSET)));
        assert_eq!(a.on_ack(), None);
        assert_eq!(a.status_for_message(false), None);
        assert_eq!(a.on_ack(), None);
        // a full report always carries it
        assert_eq!(stage_of(&a.status_for_message(true)), Some((vec![], UNSET)));
    }

    #[test]
    fn a_receipt_is_reported_applying_then_applied_and_completes_once_on_its_ack() {
        let mut a = RemoteConfigAgent::new(1, 0, 0.0);
        a.status_for_message(true);
        a.on_ack();
        assert_eq!(a.on_receipt(hash(1)), Receipt::New);
        assert_eq!(stage_of(&a.status_for_message(false)), Some((vec![1; 32], APPLYING)));
        assert_eq!(a.on_ack(), None);
        let done = a.status_for_message(false).unwrap();
        assert_eq!((done.status, done.error_message.as_str()), (APPLIED, ""));
        assert_eq!(a.on_ack(), Some(Completion { hash: hash(1), failed: false }));
        // compressed after that; a full report repeats it without completing again
        assert_eq!(a.status_for_message(false), None);
        assert_eq!(a.on_ack(), None);
        assert_eq!(stage_of(&a.status_for_message(true)), Some((vec![1; 32], APPLIED)));
        assert_eq!(a.on_ack(), None);
    }

    #[test]
    fn a_status_whose_exchange_failed_is_sent_again_and_completes_on_the_later_ack() {
        let mut a = RemoteConfigAgent::new(1, 0, 0.0);
        a.status_for_message(true);
        a.on_ack();
        a.on_receipt(hash(2));
        // APPLYING is lost; the apply still ends, so the next message says APPLIED
        assert_eq!(stage_of(&a.status_for_message(false)), Some((vec![2; 32], APPLYING)));
        a.on_error();
        assert_eq!(stage_of(&a.status_for_message(false)), Some((vec![2; 32], APPLIED)));
        a.on_error();
        assert_eq!(stage_of(&a.status_for_message(false)), Some((vec![2; 32], APPLIED)));
        assert_eq!(a.on_ack(), Some(Completion { hash: hash(2), failed: false }));
        assert_eq!(a.status_for_message(false), None);
    }

    #[test]
    fn a_second_delivery_of_a_hash_is_a_duplicate_and_changes_nothing() {
        let mut a = RemoteConfigAgent::new(1, 0, 0.0);
        a.status_for_message(true);
        a.on_ack();
        assert_eq!(a.on_receipt(hash(3)), Receipt::New);
        // received, not yet reported
        assert_eq!(a.on_receipt(hash(3)), Receipt::Duplicate);
        a.status_for_message(false);
        a.on_ack();
        a.status_for_message(false);
        a.on_ack();
        // reported APPLIED
        assert_eq!(a.on_receipt(hash(3)), Receipt::Duplicate);
        assert_eq!(a.current(), &Status { hash: hash(3), stage: Stage::Applied });
        assert_eq!(a.status_for_message(false), None);
        // a new hash is applied, an earlier one is still a duplicate after it
        assert_eq!(a.on_receipt(hash(4)), Receipt::New);
        assert_eq!(a.on_receipt(hash(3)), Receipt::Duplicate);
        assert_eq!(stage_of(&a.status_for_message(false)), Some((vec![4; 32], APPLYING)));
    }

    #[test]
    fn a_new_hash_while_applying_replaces_the_old_one() {
        let mut a = RemoteConfigAgent::new(1, 0, 0.0);
        a.on_receipt(hash(5));
        a.status_for_message(false);
        a.on_ack();
        a.on_receipt(hash(6));
        assert_eq!(stage_of(&a.status_for_message(false)), Some((vec![6; 32], APPLYING)));
        a.on_ack();
        assert_eq!(stage_of(&a.status_for_message(false)), Some((vec![6; 32], APPLIED)));
        assert_eq!(a.on_ack(), Some(Completion { hash: hash(6), failed: false }));
    }

    #[test]
    fn failures_follow_the_rate_and_are_the_same_for_the_same_seed_agent_and_hash() {
        let h = hash(7);
        for i in 0..100 {
            assert_eq!(fails(9, i, &h, 0.3), fails(9, i, &h, 0.3));
            assert!(!fails(9, i, &h, 0.0) && fails(9, i, &h, 1.0));
        }
        let n = 20_000u64;
        let failed = (0..n).filter(|i| fails(9, *i, &h, 0.25)).count() as f64 / n as f64;
        assert!((0.23..0.27).contains(&failed), "{failed}");
        // another seed or hash draws again: not the same set of agents
        let same_seed = (0..n).filter(|i| fails(9, *i, &h, 0.25)).collect::<Vec<_>>();
        let other_seed = (0..n).filter(|i| fails(10, *i, &h, 0.25)).collect::<Vec<_>>();
        let other_hash = (0..n).filter(|i| fails(9, *i, &hash(8), 0.25)).collect::<Vec<_>>();
        assert_ne!(same_seed, other_seed);
        assert_ne!(same_seed, other_hash);
    }

    #[test]
    fn a_failing_agent_reports_failed_with_a_message() {
        let mut a = RemoteConfigAgent::new(1, 0, 1.0);
        a.on_receipt(hash(9));
        a.status_for_message(false);
        a.on_ack();
        let s = a.status_for_message(false).unwrap();
        assert_eq!((s.status, s.error_message.as_str()), (FAILED, FAILED_MESSAGE));
        assert_eq!(a.on_ack(), Some(Completion { hash: hash(9), failed: true }));
    }

    #[test]
    fn the_accepting_share_is_exact_and_spread() {
        for (n, f) in [(1000u64, 0.25), (1000, 0.0), (1000, 1.0), (7, 0.5), (100_000, 0.333)] {
            let got = (0..n).filter(|i| accepts(*i, f)).count() as u64;
            assert_eq!(got, accepting_count(n, f), "{n} {f}");
        }
        let first: Vec<u64> = (0..12).filter(|i| accepts(*i, 0.25)).collect();
        assert_eq!(first, [3, 7, 11]);
    }

    #[test]
    fn rollout_times_count_from_the_put_and_need_the_whole_share() {
        let s = Duration::from_secs;
        let mut done = vec![s(14), s(11), s(12), s(13)];
        // 4 agents: 50 % is the 2nd, 90 % and 99 % and 100 % the 4th
        assert_eq!(
            rollout_times(s(10), &mut done, 4),
            [Some(2.0), Some(4.0), Some(4.0), Some(4.0)]
        );
        // 5 agents, 4 done: the last shares are not reached
        assert_eq!(rollout_times(s(10), &mut done, 5), [Some(3.0), None, None, None]);
        // a completion before the 200 counts as 0 s
        let mut early = vec![Duration::from_millis(9_500)];
        assert_eq!(rollout_times(s(10), &mut early, 1), [Some(0.0); 4]);
        assert_eq!(rollout_times(s(10), &mut [], 0), [None; 4]);
    }

    #[test]
    fn tallies_count_receipts_duplicates_and_completions_by_hash() {
        let mut t = Tallies::new();
        let at = Duration::from_secs(1);
        let receipt = |r| Events { receipt: Some((r, hash(1))), completion: None };
        tally(&mut t, &receipt(Receipt::New), at);
        tally(&mut t, &receipt(Receipt::Duplicate), at);
        let done = Events {
            receipt: Some((Receipt::New, hash(2))),
            completion: Some(Completion { hash: hash(1), failed: true }),
        };
        tally(&mut t, &done, Duration::from_secs(3));
        let one = &t[&hash(1)];
        assert_eq!((one.received, one.duplicates, one.applied, one.failed), (2, 1, 0, 1));
        assert_eq!(one.done_at, [Duration::from_secs(3)]);
        assert_eq!(t[&hash(2)].received, 1);
    }

    #[test]
    fn a_push_report_gives_the_generator_counts_in_the_admin_api_terms() {
        let record = PushRecord {
            counter: 1,
            name: "loadtest".into(),
            run_id: "r".into(),
            at: Duration::from_secs(5),
            result: Ok(Pushed {
                hash: hash(1),
                acked_at: Duration::from_secs(5),
                put_latency: Duration::from_millis(3),
            }),
        };
        let tally = HashTally {
            received: 9,
            duplicates: 1,
            applied: 5,
            failed: 1,
            done_at: vec![Duration::from_secs(6); 6],
        };
        let r = PushReport::build(&record, &Tallies::from([(hash(1), tally)]), 10);
        assert_eq!(
            r.counts(),
            ConfigCounts { matched: 10, applied: 5, applying: 2, failed: 1, pending: 2 }
        );
        assert_eq!(r.rollout_s, [Some(1.0), None, None, None]);
        let v = r.to_json();
        assert_eq!(v["hash"], hex(&[1; 32]));
        assert_eq!(v["rollout"]["p50_s"], 1.0);
        assert_eq!(v["rollout"]["p100_s"], Value::Null);
        assert_eq!(v["complete"], false);
    }

    #[test]
    fn hashes_round_trip_through_hex_and_bad_ones_are_refused() {
        let h = hash(0xab);
        assert_eq!(parse_hash(&hex(&h)), Some(h));
        for bad in ["", "ab", &"AB".repeat(32), &"g0".repeat(32), &"a".repeat(65)] {
            assert_eq!(parse_hash(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_push_body_is_a_new_file() {
        let a = push_body("run", 1);
        let b = push_body("run", 2);
        assert_ne!(a, b);
        assert_eq!(a["selector"], json!({}));
        assert_eq!(a["files"][PUSH_FILE]["content_type"], "text/yaml");
        assert!(a["files"][PUSH_FILE]["body"].as_str().unwrap().contains("run_id: run"));
    }

    #[test]
    fn config_names_are_checked_as_opampd_does() {
        for ok in ["loadtest", "a.b-c_D9"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(129)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
