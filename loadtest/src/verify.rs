//! The end-of-run check that no acknowledged write was lost: every agent's stored `sequence_num`,
//! read from opampd's admin API, must be the one of its last acknowledged message, or a later one
//! whose reply was lost (the server may have applied it). `classify` is the pure rule; `fetch`
//! pages `GET /api/agents` on the admin listeners (loopback only) through [`Admin`].

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{Context, bail};
use opamp_proto::InstanceUid;
use reqwest::Url;
use serde_json::{Value, json};

use crate::admin::Admin;
use crate::agent::{AckView, SeqRange};
use crate::loopback::parse_loopback_url;

/// How an agent's stored state compares with what it was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Stored seq = the last acknowledged one.
    Matched,
    /// Stored seq is a message sent after the last acknowledged one whose reply was lost: the
    /// server applied it but the agent never heard. Not a loss.
    AppliedUnacknowledged,
    /// Nothing acknowledged and nothing (or only an unacknowledged message) stored.
    NeverAcknowledged,
    /// An acknowledged write is not what is stored.
    Lost(LostKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostKind {
    /// The agent was acknowledged but has no record.
    Missing,
    /// The stored seq is an older message whose reply was lost, applied after a later
    /// acknowledged one (a request delayed inside a paused server, say).
    OverwrittenByOlder,
    /// Anything else (a seq the agent never sent after its last acknowledgement).
    Other,
}

impl LostKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LostKind::Missing => "missing",
            LostKind::OverwrittenByOlder => "overwritten_by_older",
            LostKind::Other => "other",
        }
    }
}

/// The rule: `stored` is the agent's stored seq (`None`: no record).
pub fn classify(view: &AckView, stored: Option<u64>) -> Check {
    let in_range = |r: Option<SeqRange>, s: u64| r.is_some_and(|r| r.contains(s));
    match (view.acked, stored) {
        (None, None) => Check::NeverAcknowledged,
        (Some(_), None) => Check::Lost(LostKind::Missing),
        (Some(a), Some(s)) if a == s => Check::Matched,
        (_, Some(s)) if in_range(view.unacked, s) => Check::AppliedUnacknowledged,
        (None, Some(_)) => Check::NeverAcknowledged,
        (Some(_), Some(s)) if in_range(view.older_unacked, s) => {
            Check::Lost(LostKind::OverwrittenByOlder)
        }
        (Some(_), Some(_)) => Check::Lost(LostKind::Other),
    }
}

/// The verdict over every agent of a run.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub admin: Vec<String>,
    pub agents: u64,
    /// Agents whose last exchange was still in flight at the end: not checked.
    pub unverifiable: u64,
    pub matched: u64,
    pub applied_unacknowledged: u64,
    pub never_acknowledged: u64,
    pub acknowledged_lost: u64,
    pub lost: BTreeMap<String, u64>,
    /// Records the admin API listed (all agents of the index, not only this run's).
    pub listed: u64,
    /// The first few losses, for the log.
    pub examples: Vec<Value>,
    /// Why the check could not be completed, if it could not.
    pub error: Option<String>,
    pub elapsed_s: f64,
}

impl VerifyReport {
    /// Classifies every agent against the stored seqs (`stored` by uid).
    pub fn build(views: &[Option<AckView>], stored: &HashMap<InstanceUid, u64>) -> Self {
        let mut r = VerifyReport { agents: views.len() as u64, ..Default::default() };
        for view in views {
            let Some(view) = view else {
                r.unverifiable += 1;
                continue;
            };
            let s = stored.get(&view.uid).copied();
            match classify(view, s) {
                Check::Matched => r.matched += 1,
                Check::AppliedUnacknowledged => r.applied_unacknowledged += 1,
                Check::NeverAcknowledged => r.never_acknowledged += 1,
                Check::Lost(kind) => {
                    r.acknowledged_lost += 1;
                    *r.lost.entry(kind.as_str().to_owned()).or_default() += 1;
                    if r.examples.len() < 10 {
                        let range = |x: Option<SeqRange>| x.map(|x| [x.lo, x.hi]);
                        r.examples.push(json!({
                            "instance_uid": view.uid.to_string(),
                            "kind": kind.as_str(),
                            "stored": s,
                            "acked": view.acked,
                            "unacked": range(view.unacked),
                            "older_unacked": range(view.older_unacked),
                        }));
                    }
                }
            }
        }
        r
    }

    /// Failed checks; empty when every acknowledged write is stored.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(e) = &self.error {
            out.push(format!("verification incomplete: {e}"));
        }
        if self.acknowledged_lost > 0 {
            out.push(format!(
                "{} acknowledged writes lost {:?}",
                self.acknowledged_lost, self.lost
            ));
        }
        out
    }

    pub fn to_json(&self) -> Value {
        json!({
            "admin": self.admin,
            "agents": self.agents,
            "checked": self.agents - self.unverifiable,
            "unverifiable_in_flight": self.unverifiable,
            "matched": self.matched,
            "applied_unacknowledged": self.applied_unacknowledged,
            "never_acknowledged": self.never_acknowledged,
            "acknowledged_lost": self.acknowledged_lost,
            "lost": self.lost,
            "listed": self.listed,
            "examples": self.examples,
            "error": self.error,
            "elapsed_s": crate::latency::round3(self.elapsed_s),
        })
    }
}

/// Longest the whole check may take, whatever happens.
const DEADLINE: Duration = Duration::from_secs(600);
/// Tries per page, rotating through the admin URLs (an instance may be down).
const TRIES: usize = 6;
/// At most this many agents missing from the listing are looked up one by one.
const MAX_SINGLE_LOOKUPS: usize = 1000;

/// Reads every stored agent's seq from the admin API (paged, 1000 a page), then looks up one by
/// one the acknowledged agents the listing lacked, and classifies each agent.
pub async fn verify(admin: &Admin, views: &[Option<AckView>]) -> VerifyReport {
    let started = std::time::Instant::now();
    let mut stored = HashMap::with_capacity(views.len());
    let result =
        tokio::time::timeout(DEADLINE, fetch(admin, views, &mut stored)).await.unwrap_or_else(
            |_| Err(anyhow::anyhow!("the admin API did not answer within {DEADLINE:?}")),
        );
    let listed = match &result {
        Ok(n) => *n,
        Err(_) => 0,
    };
    let mut report = VerifyReport::build(views, &stored);
    report.admin = admin.urls().iter().map(Url::to_string).collect();
    report.listed = listed;
    report.error = result.err().map(|e| format!("{e:#}"));
    report.elapsed_s = started.elapsed().as_secs_f64();
    report
}

/// Parses `--verify-admin`: comma-separated admin base URLs, loopback only.
pub fn parse_admin_urls(raw: &str) -> anyhow::Result<Vec<Url>> {
    let urls = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| parse_loopback_url(s, &["http", "https"]))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if urls.is_empty() {
        bail!("--verify-admin names no URL");
    }
    Ok(urls)
}

async fn fetch(
    admin: &Admin,
    views: &[Option<AckView>],
    stored: &mut HashMap<InstanceUid, u64>,
) -> anyhow::Result<u64> {
    let (client, admins) = (admin.client(), admin.urls());
    let mut listed = 0u64;
    let mut cursor: Option<String> = None;
    let mut turn = 0usize;
    loop {
        let mut query = vec![("limit", "1000".to_owned())];
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let page = get_json(client, admins, &mut turn, "api/agents", &query).await?;
        let agents = page["agents"].as_array().context("a page without `agents`")?;
        for a in agents {
            let (uid, seq) = agent_seq(a)?;
            stored.insert(uid, seq);
            listed += 1;
        }
        match page["next_cursor"].as_str() {
            Some(c) if !agents.is_empty() => cursor = Some(c.to_owned()),
            _ => break,
        }
    }
    // The listing is a search (refreshed first); look up what it lacked directly, by id.
    let missing: Vec<InstanceUid> = views
        .iter()
        .flatten()
        .filter(|v| v.acked.is_some() && !stored.contains_key(&v.uid))
        .map(|v| v.uid)
        .take(MAX_SINGLE_LOOKUPS)
        .collect();
    for uid in missing {
        let path = format!("api/agents/{uid}");
        match get_json(client, admins, &mut turn, &path, &[]).await {
            Ok(doc) => {
                let (uid, seq) = agent_seq(&doc)?;
                stored.insert(uid, seq);
            }
            Err(e) if e.downcast_ref::<NotFound>().is_some() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(listed)
}

#[derive(Debug)]
struct NotFound;

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not found")
    }
}

impl std::error::Error for NotFound {}

fn agent_seq(a: &Value) -> anyhow::Result<(InstanceUid, u64)> {
    let uid = a["instance_uid"].as_str().context("an agent without `instance_uid`")?;
    let uid: InstanceUid = uid.parse().map_err(|_| anyhow::anyhow!("bad instance_uid {uid:?}"))?;
    let seq = a["sequence_num"].as_u64().context("an agent without `sequence_num`")?;
    Ok((uid, seq))
}

/// GET `path` on one admin URL after the other (from `turn`), up to [`TRIES`] times.
async fn get_json(
    client: &reqwest::Client,
    admins: &[Url],
    turn: &mut usize,
    path: &str,
    query: &[(&str, String)],
) -> anyhow::Result<Value> {
    let mut last = None;
    for attempt in 0..TRIES {
        let base = &admins[*turn % admins.len()];
        let mut url = base.join(path).with_context(|| format!("joining {path} to {base}"))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        match client.get(url.clone()).send().await {
            Ok(resp) if resp.status() == reqwest::StatusCode::NOT_FOUND && !query.is_empty() => {
                bail!("{url}: 404 (is this opampd's admin listener?)");
            }
            Ok(resp) if resp.status() == reqwest::StatusCode::NOT_FOUND => {
                return Err(NotFound.into());
            }
            Ok(resp) if resp.status().is_success() => {
                let body = resp.bytes().await.with_context(|| format!("{url}: reading"))?;
                return serde_json::from_slice(&body).with_context(|| format!("{url}: not JSON"));
            }
            Ok(resp) => last = Some(format!("{url}: HTTP {}", resp.status())),
            Err(e) => last = Some(format!("{url}: {e}")),
        }
        *turn += 1;
        if attempt + 1 < TRIES {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    bail!("{}", last.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(acked: Option<u64>, unacked: Option<(u64, u64)>, older: Option<(u64, u64)>) -> AckView {
        let r = |x: Option<(u64, u64)>| x.map(|(lo, hi)| SeqRange { lo, hi });
        AckView {
            uid: InstanceUid::from_bytes([1; 16]),
            acked,
            unacked: r(unacked),
            older_unacked: r(older),
        }
    }

    #[test]
    fn classification_table() {
        use Check::*;
        use LostKind::*;
        for (v, stored, want) in [
            (view(Some(5), None, None), Some(5), Matched),
            (view(Some(5), Some((6, 8)), None), Some(5), Matched),
            (view(Some(5), Some((6, 8)), None), Some(7), AppliedUnacknowledged),
            (view(None, Some((0, 2)), None), Some(1), AppliedUnacknowledged),
            (view(None, Some((0, 2)), None), None, NeverAcknowledged),
            (view(None, None, None), None, NeverAcknowledged),
            (view(Some(5), None, None), None, Lost(Missing)),
            (view(Some(5), None, Some((3, 4))), Some(4), Lost(OverwrittenByOlder)),
            (view(Some(5), Some((6, 6)), None), Some(4), Lost(Other)),
            (view(Some(5), None, None), Some(9), Lost(Other)),
        ] {
            assert_eq!(classify(&v, stored), want, "{v:?} stored {stored:?}");
        }
    }

    #[test]
    fn the_report_counts_every_agent() {
        let a = view(Some(5), Some((6, 7)), None);
        let b = AckView { uid: InstanceUid::from_bytes([2; 16]), ..view(Some(3), None, None) };
        let c = AckView { uid: InstanceUid::from_bytes([3; 16]), ..view(Some(3), None, None) };
        let stored = HashMap::from([(a.uid, 7), (b.uid, 3)]);
        let r = VerifyReport::build(&[Some(a), Some(b), Some(c), None], &stored);
        assert_eq!(
            (r.agents, r.unverifiable, r.matched, r.applied_unacknowledged, r.acknowledged_lost),
            (4, 1, 1, 1, 1)
        );
        assert_eq!(r.lost["missing"], 1);
        assert_eq!(r.examples.len(), 1);
        assert_eq!(r.failures().len(), 1);
        assert_eq!(r.to_json()["checked"], 3);
    }

    #[test]
    fn admin_urls_must_be_loopback() {
        assert_eq!(
            parse_admin_urls("http://127.0.0.1:4341, http://127.0.0.1:4351").unwrap().len(),
            2
        );
        assert!(parse_admin_urls("http://10.0.0.1:4341").is_err());
        assert!(parse_admin_urls(" , ").is_err());
    }
}
