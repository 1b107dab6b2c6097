//! The per-phase report: a run is cut into phases by marks (a chaos script writes one when it
//! injects a fault, when the fault ends, when the system is back), and every exchange is counted
//! in the phase it belongs to, so errors can be held against the fault that caused them. Pure:
//! parsing and attribution only; the caller reads the marks file.
//!
//! Attribution: an exchange belongs to the most severe phase its lifetime (send to reply or
//! failure) overlaps, fault before recovery before overload before normal; among equals, the
//! later one. So a request in flight when an instance is killed counts against the kill, and one
//! sent to a paused instance counts against the pause even if its timeout fires after it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde_json::{Value, json};

use crate::agent::Verdict;
use crate::latency::{Latency, LatencySummary, round3};
use crate::outcome::{Ending, ErrorClass, Event, EventLog};

/// What a phase is, which decides what it may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PhaseKind {
    /// Nothing is broken: no errors (within `--max-error-rate`), no false ReportFullState.
    Normal,
    /// More load than the server takes: only 503/429 with Retry-After, no false ReportFullState.
    Overload,
    /// Right after a fault, until the system is back: as `Fault`.
    Recovery,
    /// Something is broken: errors only 503/429 with Retry-After or connection failures; false
    /// ReportFullState counted and shown (a reply lost in the fault can cause one), not failed.
    Fault,
}

impl PhaseKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseKind::Normal => "normal",
            PhaseKind::Overload => "overload",
            PhaseKind::Recovery => "recovery",
            PhaseKind::Fault => "fault",
        }
    }

    /// Error classes a phase of this kind may contain without failing the run.
    pub fn allows(self, class: ErrorClass) -> bool {
        match self {
            PhaseKind::Normal => false,
            PhaseKind::Overload => class == ErrorClass::RetryAfter,
            PhaseKind::Recovery | PhaseKind::Fault => {
                matches!(class, ErrorClass::RetryAfter | ErrorClass::Connection)
            }
        }
    }
}

impl FromStr for PhaseKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "normal" => Ok(PhaseKind::Normal),
            "overload" => Ok(PhaseKind::Overload),
            "recovery" => Ok(PhaseKind::Recovery),
            "fault" => Ok(PhaseKind::Fault),
            other => {
                Err(format!("unknown phase kind {other:?} (normal, overload, recovery, fault)"))
            }
        }
    }
}

/// The start of a phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// Milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    pub kind: PhaseKind,
    pub name: String,
}

/// Parses a marks file: one mark per line, `<unix_ms> <kind> <name>` (the name may contain
/// spaces); blank lines and lines starting with `#` are skipped.
pub fn parse_marks(text: &str) -> Result<Vec<Mark>, String> {
    let mut marks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (at, kind) = (parts.next(), parts.next());
        let name = parts.collect::<Vec<_>>().join(" ");
        let (Some(at), Some(kind)) = (at, kind) else {
            return Err(format!(
                "line {}: expected `<unix_ms> <kind> <name>`, got {line:?}",
                i + 1
            ));
        };
        let at_unix_ms = at
            .parse()
            .map_err(|_| format!("line {}: {at:?} is not a time in unix milliseconds", i + 1))?;
        let kind = kind.parse().map_err(|e| format!("line {}: {e}", i + 1))?;
        if name.is_empty() {
            return Err(format!(
                "line {}: expected `<unix_ms> <kind> <name>`, got {line:?}",
                i + 1
            ));
        }
        marks.push(Mark { at_unix_ms, kind, name });
    }
    Ok(marks)
}

/// A phase of the run, in milliseconds since the run started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase {
    pub name: String,
    pub kind: PhaseKind,
    pub start_ms: u64,
    /// `u64::MAX` for the last phase: it takes everything after.
    pub end_ms: u64,
}

/// Cuts a run into phases at the marks (in time order; marks before the start count from the
/// start). Before the first mark is an implicit normal phase `start`.
pub fn phases(marks: &[Mark], start_unix_ms: u64) -> Vec<Phase> {
    let mut marks: Vec<&Mark> = marks.iter().collect();
    marks.sort_by_key(|m| m.at_unix_ms);
    let mut out: Vec<Phase> = Vec::new();
    for m in marks {
        let start_ms = m.at_unix_ms.saturating_sub(start_unix_ms);
        if let Some(last) = out.last_mut() {
            if last.start_ms == start_ms {
                // two marks at once: the later one wins
                out.pop();
            } else {
                last.end_ms = start_ms;
            }
        } else if start_ms > 0 {
            out.push(Phase {
                name: "start".into(),
                kind: PhaseKind::Normal,
                start_ms: 0,
                end_ms: start_ms,
            });
        }
        out.push(Phase { name: m.name.clone(), kind: m.kind, start_ms, end_ms: u64::MAX });
    }
    if out.is_empty() {
        out.push(Phase {
            name: "start".into(),
            kind: PhaseKind::Normal,
            start_ms: 0,
            end_ms: u64::MAX,
        });
    }
    out
}

/// The index of the phase `e` is counted in (see the module docs).
pub fn owner(phases: &[Phase], e: &Event) -> usize {
    let (a, b) = (u64::from(e.start_ms), e.end_ms());
    let mut best: Option<(PhaseKind, usize)> = None;
    for (i, p) in phases.iter().enumerate() {
        if a < p.end_ms && b >= p.start_ms && best.is_none_or(|(k, _)| p.kind >= k) {
            best = Some((p.kind, i));
        }
    }
    best.map_or(phases.len().saturating_sub(1), |(_, i)| i)
}

/// What happened in one phase.
#[derive(Debug, Clone)]
pub struct PhaseReport {
    pub name: String,
    pub kind: PhaseKind,
    pub start_s: f64,
    /// `None` for the last phase (it ends with the run).
    pub end_s: Option<f64>,
    /// Exchanges counted in this phase.
    pub exchanges: u64,
    /// Exchanges sent during the phase (whoever counts them): the offered load.
    pub sent_in_phase: u64,
    pub replies: u64,
    pub full_state_requests: u64,
    pub false_full_state: u64,
    pub missed_full_state: u64,
    pub unjudged: u64,
    /// Unjudged replies without ReportFullState (see `Stats::unjudged_not_asked`).
    pub unjudged_not_asked: u64,
    pub errors: u64,
    pub error_classes: BTreeMap<String, u64>,
    pub error_kinds: BTreeMap<String, u64>,
    /// When the last error of the phase came, in seconds since the phase began (how long a
    /// recovery took).
    pub last_error_s: Option<f64>,
    /// Latency of the valid replies.
    pub latency: LatencySummary,
    /// Latency of the failures (how fast a 503 comes back).
    pub error_latency: LatencySummary,
    /// What broke this phase's rules; empty when it held.
    pub violations: Vec<String>,
}

impl PhaseReport {
    /// Seconds the phase lasted, up to `run_s` for the last one.
    pub fn duration_s(&self, run_s: f64) -> f64 {
        (self.end_s.unwrap_or(run_s) - self.start_s).max(0.0)
    }

    pub fn to_json(&self, run_s: f64) -> Value {
        let d = self.duration_s(run_s);
        let per_s = |n: u64| if d > 0.0 { round3(n as f64 / d) } else { 0.0 };
        json!({
            "name": self.name,
            "kind": self.kind.as_str(),
            "start_s": round3(self.start_s),
            "end_s": self.end_s.map(round3),
            "duration_s": round3(d),
            "exchanges": self.exchanges,
            "sent_in_phase": self.sent_in_phase,
            "offered_per_s": per_s(self.sent_in_phase),
            "replies": self.replies,
            "replies_per_s": per_s(self.replies),
            "full_state_requests": self.full_state_requests,
            "false_full_state": self.false_full_state,
            "missed_full_state": self.missed_full_state,
            "unjudged": self.unjudged,
            "unjudged_not_asked": self.unjudged_not_asked,
            "errors": self.errors,
            "error_classes": self.error_classes,
            "error_kinds": self.error_kinds,
            "last_error_s": self.last_error_s.map(round3),
            "latency": self.latency.to_json(),
            "error_latency": self.error_latency.to_json(),
            "passed": self.violations.is_empty(),
            "violations": self.violations,
        })
    }
}

/// Counts every event of `log` in its phase and judges each phase by its kind's rules
/// (`max_error_rate` is the share of errors a normal phase tolerates).
pub fn report(phases: &[Phase], log: &EventLog, max_error_rate: f64) -> Vec<PhaseReport> {
    struct Acc {
        r: PhaseReport,
        ok: Latency,
        err: Latency,
    }
    let mut acc: Vec<Acc> = phases
        .iter()
        .map(|p| Acc {
            r: PhaseReport {
                name: p.name.clone(),
                kind: p.kind,
                start_s: p.start_ms as f64 / 1000.0,
                end_s: (p.end_ms != u64::MAX).then(|| p.end_ms as f64 / 1000.0),
                exchanges: 0,
                sent_in_phase: 0,
                replies: 0,
                full_state_requests: 0,
                false_full_state: 0,
                missed_full_state: 0,
                unjudged: 0,
                unjudged_not_asked: 0,
                errors: 0,
                error_classes: ErrorClass::ALL.iter().map(|c| (c.as_str().to_owned(), 0)).collect(),
                error_kinds: BTreeMap::new(),
                last_error_s: None,
                latency: LatencySummary::default(),
                error_latency: LatencySummary::default(),
                violations: Vec::new(),
            },
            ok: Latency::new(),
            err: Latency::new(),
        })
        .collect();
    if acc.is_empty() {
        return Vec::new();
    }
    for e in &log.events {
        let start = u64::from(e.start_ms);
        if let Some(i) = phases.iter().rposition(|p| p.start_ms <= start) {
            acc[i].r.sent_in_phase += 1;
        }
        let i = owner(phases, e);
        let a = &mut acc[i];
        a.r.exchanges += 1;
        let latency = std::time::Duration::from_micros(u64::from(e.latency_us));
        match e.ending {
            Ending::Reply { verdict, asked } => {
                a.r.replies += 1;
                a.ok.record(latency);
                a.r.full_state_requests += u64::from(asked);
                match verdict {
                    Verdict::Correct => {}
                    Verdict::FalseFullState => a.r.false_full_state += 1,
                    Verdict::MissedFullState => a.r.missed_full_state += 1,
                    Verdict::Unjudged => {
                        a.r.unjudged += 1;
                        a.r.unjudged_not_asked += u64::from(!asked);
                    }
                }
            }
            Ending::Error { class, kind } => {
                a.r.errors += 1;
                a.err.record(latency);
                let at = e.end_ms().saturating_sub(phases[i].start_ms) as f64 / 1000.0;
                a.r.last_error_s = Some(a.r.last_error_s.map_or(at, |l: f64| l.max(at)));
                *a.r.error_classes.entry(class.as_str().to_owned()).or_default() += 1;
                *a.r.error_kinds.entry(log.kind(kind).to_owned()).or_default() += 1;
            }
        }
    }
    acc.into_iter()
        .map(|mut a| {
            a.r.latency = a.ok.summary();
            a.r.error_latency = a.err.summary();
            a.r.violations = violations(&a.r, max_error_rate);
            a.r
        })
        .collect()
}

/// What in `r` breaks the rules of its kind.
fn violations(r: &PhaseReport, max_error_rate: f64) -> Vec<String> {
    let mut out = Vec::new();
    if r.missed_full_state > 0 {
        out.push(format!("{} missed ReportFullState", r.missed_full_state));
    }
    if r.false_full_state > 0 && matches!(r.kind, PhaseKind::Normal | PhaseKind::Overload) {
        out.push(format!("{} false ReportFullState", r.false_full_state));
    }
    if r.kind == PhaseKind::Normal {
        let rate = if r.exchanges == 0 { 0.0 } else { r.errors as f64 / r.exchanges as f64 };
        if rate > max_error_rate {
            out.push(format!("{} errors (rate {rate:.6} > {max_error_rate})", r.errors));
        }
    } else {
        for class in ErrorClass::ALL {
            let n = r.error_classes.get(class.as_str()).copied().unwrap_or(0);
            if n > 0 && !r.kind.allows(class) {
                out.push(format!("{n} {class} errors in a {} phase", r.kind.as_str()));
            }
        }
    }
    out
}

/// The phase table, one line per phase.
#[derive(Debug)]
pub struct Table<'a> {
    pub phases: &'a [PhaseReport],
    pub run_s: f64,
}

impl fmt::Display for Table<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<22} {:<8} {:>7} {:>6} {:>8} {:>8} {:>6} {:>6} {:>7} {:>6} {:>6} {:>5} {:>9} {:>9} {:>9}  verdict",
            "phase",
            "kind",
            "start_s",
            "dur_s",
            "sent",
            "replies",
            "false",
            "missed",
            "retry_a",
            "conn",
            "gatew",
            "other",
            "p50_ms",
            "p99_ms",
            "err_p99"
        )?;
        for p in self.phases {
            let class = |c: ErrorClass| p.error_classes.get(c.as_str()).copied().unwrap_or(0);
            writeln!(
                f,
                "{:<22} {:<8} {:>7.1} {:>6.1} {:>8} {:>8} {:>6} {:>6} {:>7} {:>6} {:>6} {:>5} {:>9.1} {:>9.1} {:>9.1}  {}",
                p.name,
                p.kind.as_str(),
                p.start_s,
                p.duration_s(self.run_s),
                p.sent_in_phase,
                p.replies,
                p.false_full_state,
                p.missed_full_state,
                class(ErrorClass::RetryAfter),
                class(ErrorClass::Connection),
                class(ErrorClass::Gateway),
                class(ErrorClass::Other),
                p.latency.p50_ms,
                p.latency.p99_ms,
                p.error_latency.p99_ms,
                if p.violations.is_empty() { "ok".to_owned() } else { p.violations.join("; ") },
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(at: u64, kind: PhaseKind, name: &str) -> Mark {
        Mark { at_unix_ms: at, kind, name: name.into() }
    }

    fn reply(start_ms: u32, latency_ms: u32, verdict: Verdict) -> Event {
        Event {
            start_ms,
            latency_us: latency_ms * 1000,
            ending: Ending::Reply { verdict, asked: verdict == Verdict::FalseFullState },
        }
    }

    fn error(start_ms: u32, latency_ms: u32, class: ErrorClass) -> Event {
        Event { start_ms, latency_us: latency_ms * 1000, ending: Ending::Error { class, kind: 0 } }
    }

    #[test]
    fn marks_parse_with_comments_and_names_with_spaces() {
        let text =
            "# chaos\n\n1000 fault kill instance 1\n2000   recovery  kill\n3000 normal after\n";
        assert_eq!(
            parse_marks(text).unwrap(),
            vec![
                mark(1000, PhaseKind::Fault, "kill instance 1"),
                mark(2000, PhaseKind::Recovery, "kill"),
                mark(3000, PhaseKind::Normal, "after"),
            ]
        );
    }

    #[test]
    fn bad_marks_are_refused_with_the_line() {
        for (text, needle) in [
            ("x fault a", "line 1"),
            ("1000 broken a", "unknown phase kind"),
            ("1000 fault", "expected"),
            ("1 normal a\n1000", "line 2"),
        ] {
            let err = parse_marks(text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn phases_start_with_an_implicit_normal_one_and_are_sorted() {
        let p = phases(
            &[mark(13_000, PhaseKind::Normal, "after"), mark(11_000, PhaseKind::Fault, "kill")],
            10_000,
        );
        let cut: Vec<_> = p.iter().map(|p| (p.name.as_str(), p.start_ms, p.end_ms)).collect();
        assert_eq!(cut, [("start", 0, 1000), ("kill", 1000, 3000), ("after", 3000, u64::MAX)]);
        // a mark at (or before) the start replaces the implicit phase
        let p = phases(&[mark(9_000, PhaseKind::Overload, "double")], 10_000);
        assert_eq!((p.len(), p[0].name.as_str(), p[0].start_ms), (1, "double", 0));
        assert_eq!(phases(&[], 10_000)[0].name, "start");
    }

    #[test]
    fn an_exchange_counts_against_the_most_severe_phase_it_overlaps() {
        let p = phases(
            &[
                mark(1_000, PhaseKind::Fault, "pause"),
                mark(2_000, PhaseKind::Recovery, "resumed"),
                mark(3_000, PhaseKind::Normal, "after"),
            ],
            0,
        );
        // (start, latency) -> phase
        for (start, latency, want) in [
            (100, 10, "start"),
            (900, 200, "pause"),     // in flight when the fault began
            (1_500, 4_000, "pause"), // sent during the pause, timed out after it
            (2_500, 10, "resumed"),
            (2_900, 200, "resumed"), // ended in the normal phase but overlapped the recovery
            (3_000, 10, "after"),
            (999_000, 10, "after"),
        ] {
            let e = reply(start, latency, Verdict::Correct);
            assert_eq!(p[owner(&p, &e)].name, want, "{start}+{latency}");
        }
    }

    #[test]
    fn each_kind_is_judged_by_its_rules() {
        let p = phases(
            &[
                mark(1_000, PhaseKind::Fault, "kill"),
                mark(2_000, PhaseKind::Overload, "double"),
                mark(3_000, PhaseKind::Normal, "after"),
            ],
            0,
        );
        let mut log = EventLog::default();
        log.kind_id("http_503");
        for e in [
            reply(10, 1, Verdict::Correct),
            error(1_100, 1, ErrorClass::Connection),
            error(1_200, 1, ErrorClass::RetryAfter),
            reply(1_300, 1, Verdict::FalseFullState),
            error(2_100, 1, ErrorClass::RetryAfter),
            error(2_200, 1, ErrorClass::Connection),
            reply(3_100, 2, Verdict::Correct),
            error(3_200, 1, ErrorClass::RetryAfter),
        ] {
            log.push(e);
        }
        let r = report(&p, &log, 0.0);
        let v: Vec<_> = r.iter().map(|r| (r.name.as_str(), r.violations.clone())).collect();
        assert_eq!(v[0], ("start", vec![]));
        // a fault may hold connection failures, 503s and (explained) false ReportFullState
        assert_eq!(v[1], ("kill", vec![]));
        assert_eq!(r[1].false_full_state, 1);
        assert_eq!(r[1].error_classes["connection"], 1);
        assert_eq!(v[2], ("double", vec!["1 connection errors in a overload phase".to_owned()]));
        assert_eq!(v[3], ("after", vec!["1 errors (rate 0.500000 > 0)".to_owned()]));
        assert_eq!((r[3].replies, r[3].errors, r[3].sent_in_phase), (1, 1, 2));
        assert_eq!(r[3].error_kinds["http_503"], 1);
        assert_eq!((r[0].last_error_s, r[3].last_error_s), (None, Some(0.201)));
        assert!(r[3].latency.p99_ms >= 1.9 && r[3].error_latency.count == 1, "{:?}", r[3]);
        // a missed request fails any phase
        log.push(reply(1_500, 1, Verdict::MissedFullState));
        let r = report(&p, &log, 0.0);
        assert_eq!(r[1].violations, ["1 missed ReportFullState"]);
    }
}
