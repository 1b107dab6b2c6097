//! The operator's view of the whole fleet: which agents a listing selects ([`AgentFilter`]) and
//! what the fleet counts come to ([`AgentStats`]), with the one definition of each criterion
//! that every backend implements (a scan of records here, a search on Elasticsearch).
//!
//! Status is read as of a clock the caller passes, like
//! [`AgentRecord::status_at`](opamp_core::AgentRecord::status_at): an agent stored `online` that
//! has been silent longer than the offline threshold is `offline`. Service name, version and
//! host name are the attributes the Elasticsearch document indexes, cut the same way
//! ([`service_name`], [`service_version`], [`host_name`]), so both backends select the same
//! agents. For the admin API: never on the OpAMP path.

use std::collections::HashMap;

use opamp_core::{AgentRecord, AgentStatus, Timestamp};
use opamp_proto::v1;

use crate::elasticsearch::document::{string_attribute, truncate};

/// Longest free-text query accepted (characters).
pub const MAX_TEXT_CHARS: usize = 256;

/// Most values reported per breakdown (by service, by version): the most frequent ones.
pub const TOP_VALUES: usize = 100;

/// Most distinct values a scan counts per breakdown before it ignores new ones, so counting
/// stays bounded in memory whatever agents report.
pub const MAX_TRACKED_VALUES: usize = 10_000;

/// Every status a reader can see, in the order the counts list them.
pub const STATUSES: [AgentStatus; 5] = [
    AgentStatus::Online,
    AgentStatus::Degraded,
    AgentStatus::Error,
    AgentStatus::Disconnected,
    AgentStatus::Offline,
];

/// Which agents a listing or a count covers; `None` criteria select everything. Every criterion
/// given must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentFilter {
    /// The status as of `now` (so `Offline` selects the silent ones, whatever they stored).
    pub status: Option<AgentStatus>,
    /// Equal to the `service.name` attribute.
    pub service_name: Option<String>,
    /// Equal to the `service.version` attribute.
    pub version: Option<String>,
    /// A substring, in any case, of the `host.name` attribute or of the uid's text.
    pub text: Option<String>,
    /// The reader's clock, milliseconds since the epoch.
    pub now: Timestamp,
    /// Silence after which an agent reads offline.
    pub offline_after_ms: u64,
}

impl AgentFilter {
    /// Every agent, status read at `now`.
    pub fn all(now: Timestamp, offline_after_ms: u64) -> Self {
        Self { status: None, service_name: None, version: None, text: None, now, offline_after_ms }
    }

    /// Whether `record` is selected: the one definition the backends agree with.
    pub fn matches(&self, record: &AgentRecord) -> bool {
        if self.status.is_some_and(|s| record.status_at(self.now, self.offline_after_ms) != s) {
            return false;
        }
        if let Some(name) = &self.service_name
            && service_name(record) != Some(name.as_str())
        {
            return false;
        }
        if let Some(version) = &self.version
            && service_version(record) != Some(version.as_str())
        {
            return false;
        }
        if let Some(text) = &self.text {
            let text = text.to_lowercase();
            let in_host = host_name(record).is_some_and(|h| h.to_lowercase().contains(&text));
            if !in_host && !record.instance_uid.to_string().contains(&text) {
                return false;
            }
        }
        true
    }
}

/// The `service.name` attribute as the document indexes it (cut to a keyword's length).
pub fn service_name(record: &AgentRecord) -> Option<&str> {
    attribute(record, "service.name")
}

/// The `service.version` attribute as the document indexes it.
pub fn service_version(record: &AgentRecord) -> Option<&str> {
    attribute(record, "service.version")
}

/// The `host.name` attribute as the document indexes it.
pub fn host_name(record: &AgentRecord) -> Option<&str> {
    attribute(record, "host.name")
}

fn attribute<'a>(record: &'a AgentRecord, key: &str) -> Option<&'a str> {
    record.agent_description.as_deref().and_then(|d| string_attribute(d, key)).map(truncate)
}

/// Where an agent stands with its desired remote config, from its stored state: what it should
/// run against what it last reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RemoteConfigState {
    /// No config is desired for it.
    None,
    /// Desired, but not reported as applied, applying or failed for the desired hash.
    Pending,
    Applying,
    Applied,
    Failed,
}

impl RemoteConfigState {
    pub const ALL: [Self; 5] =
        [Self::Applied, Self::Applying, Self::Failed, Self::Pending, Self::None];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Pending => "pending",
            Self::Applying => "applying",
            Self::Applied => "applied",
            Self::Failed => "failed",
        }
    }

    /// The state of `record`, by the rule of [`RolloutCounts`](crate::RolloutCounts): a status
    /// counts only when reported for the desired config's hash.
    pub fn of(record: &AgentRecord) -> Self {
        let Some(desired) = record.desired_config.as_deref() else { return Self::None };
        let reported = record
            .remote_config_status
            .as_deref()
            .filter(|s| s.last_remote_config_hash[..] == desired.hash[..]);
        match reported.map(|s| v1::RemoteConfigStatuses::try_from(s.status)) {
            Some(Ok(v1::RemoteConfigStatuses::Applied)) => Self::Applied,
            Some(Ok(v1::RemoteConfigStatuses::Applying)) => Self::Applying,
            Some(Ok(v1::RemoteConfigStatuses::Failed)) => Self::Failed,
            _ => Self::Pending,
        }
    }
}

/// Agents by status (as of the filter's clock).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts {
    pub online: u64,
    pub degraded: u64,
    pub error: u64,
    pub disconnected: u64,
    pub offline: u64,
}

impl StatusCounts {
    pub fn get(&self, status: AgentStatus) -> u64 {
        match status {
            AgentStatus::Online => self.online,
            AgentStatus::Degraded => self.degraded,
            AgentStatus::Error => self.error,
            AgentStatus::Disconnected => self.disconnected,
            AgentStatus::Offline => self.offline,
        }
    }

    pub fn get_mut(&mut self, status: AgentStatus) -> &mut u64 {
        match status {
            AgentStatus::Online => &mut self.online,
            AgentStatus::Degraded => &mut self.degraded,
            AgentStatus::Error => &mut self.error,
            AgentStatus::Disconnected => &mut self.disconnected,
            AgentStatus::Offline => &mut self.offline,
        }
    }
}

/// Agents by remote-config state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoteConfigCounts {
    pub applied: u64,
    pub applying: u64,
    pub failed: u64,
    pub pending: u64,
    pub none: u64,
}

impl RemoteConfigCounts {
    pub fn get(&self, state: RemoteConfigState) -> u64 {
        match state {
            RemoteConfigState::Applied => self.applied,
            RemoteConfigState::Applying => self.applying,
            RemoteConfigState::Failed => self.failed,
            RemoteConfigState::Pending => self.pending,
            RemoteConfigState::None => self.none,
        }
    }

    pub fn get_mut(&mut self, state: RemoteConfigState) -> &mut u64 {
        match state {
            RemoteConfigState::Applied => &mut self.applied,
            RemoteConfigState::Applying => &mut self.applying,
            RemoteConfigState::Failed => &mut self.failed,
            RemoteConfigState::Pending => &mut self.pending,
            RemoteConfigState::None => &mut self.none,
        }
    }
}

/// What the agents a filter selects come to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentStats {
    pub total: u64,
    pub by_status: StatusCounts,
    /// The [`TOP_VALUES`] most frequent service names, most frequent first (ties in name
    /// order); agents without one are not in it.
    pub by_service: Vec<(String, u64)>,
    /// Likewise for `service.version`.
    pub by_version: Vec<(String, u64)>,
    pub by_remote_config: RemoteConfigCounts,
}

/// Counts records one at a time in bounded memory: what a scanning backend builds its
/// [`AgentStats`] with.
#[derive(Debug, Default)]
pub struct StatsCounter {
    stats: AgentStats,
    services: HashMap<String, u64>,
    versions: HashMap<String, u64>,
}

impl StatsCounter {
    /// Counts `record` as of `filter`'s clock (the caller has checked it matches).
    pub fn add(&mut self, record: &AgentRecord, filter: &AgentFilter) {
        let stats = &mut self.stats;
        stats.total += 1;
        *stats.by_status.get_mut(record.status_at(filter.now, filter.offline_after_ms)) += 1;
        *stats.by_remote_config.get_mut(RemoteConfigState::of(record)) += 1;
        count_value(&mut self.services, service_name(record));
        count_value(&mut self.versions, service_version(record));
    }

    pub fn finish(self) -> AgentStats {
        AgentStats { by_service: top(self.services), by_version: top(self.versions), ..self.stats }
    }
}

fn count_value(counts: &mut HashMap<String, u64>, value: Option<&str>) {
    let Some(value) = value else { return };
    if let Some(n) = counts.get_mut(value) {
        *n += 1;
    } else if counts.len() < MAX_TRACKED_VALUES {
        counts.insert(value.to_owned(), 1);
    }
}

/// The [`TOP_VALUES`] largest counts, largest first, ties in value order (as Elasticsearch's
/// `terms` aggregation orders its buckets).
pub fn top(counts: HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut all: Vec<(String, u64)> = counts.into_iter().collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(TOP_VALUES);
    all
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use opamp_core::remote_config::DesiredConfig;
    use opamp_proto::InstanceUid;
    use opamp_proto::v1::any_value::Value;

    use super::*;

    fn kv(key: &str, value: &str) -> v1::KeyValue {
        v1::KeyValue {
            key: key.into(),
            value: Some(v1::AnyValue { value: Some(Value::StringValue(value.into())) }),
        }
    }

    fn agent(status: AgentStatus, last_checkin: u64, attrs: &[(&str, &str)]) -> AgentRecord {
        let mut r = AgentRecord::new(InstanceUid::from_bytes([0xab; 16]), 0);
        r.status = status;
        r.last_checkin = last_checkin;
        r.agent_description = Some(Arc::new(v1::AgentDescription {
            identifying_attributes: attrs.iter().map(|(k, v)| kv(k, v)).collect(),
            non_identifying_attributes: vec![],
        }));
        r
    }

    #[test]
    fn status_is_read_at_the_filter_clock() {
        let filter = |status| AgentFilter { status: Some(status), ..AgentFilter::all(10_000, 100) };
        let recent = agent(AgentStatus::Degraded, 9_900, &[]);
        let silent = agent(AgentStatus::Degraded, 9_899, &[]);
        let gone = agent(AgentStatus::Disconnected, 0, &[]);
        assert!(filter(AgentStatus::Degraded).matches(&recent), "at the threshold: not offline");
        assert!(filter(AgentStatus::Offline).matches(&silent));
        assert!(!filter(AgentStatus::Degraded).matches(&silent), "stored degraded, reads offline");
        assert!(filter(AgentStatus::Disconnected).matches(&gone), "a goodbye is never offline");
        assert!(!filter(AgentStatus::Offline).matches(&gone));
    }

    #[test]
    fn attributes_match_exactly_and_text_in_any_case() {
        let r = agent(
            AgentStatus::Online,
            0,
            &[("service.name", "otelcol"), ("service.version", "1.2"), ("host.name", "Web-01")],
        );
        let all = AgentFilter::all(0, 1);
        let with = |f: &dyn Fn(&mut AgentFilter)| {
            let mut filter = all.clone();
            f(&mut filter);
            filter.matches(&r)
        };
        assert!(with(&|f| f.service_name = Some("otelcol".into())));
        assert!(!with(&|f| f.service_name = Some("otel".into())), "not a substring match");
        assert!(with(&|f| f.version = Some("1.2".into())));
        assert!(!with(&|f| f.version = Some("1.2.0".into())));
        assert!(with(&|f| f.text = Some("wEB-0".into())));
        assert!(with(&|f| f.text = Some("ABABAB".into())), "the uid's text, any case");
        assert!(!with(&|f| f.text = Some("db".into())));
        assert!(!AgentFilter { text: Some("web".into()), ..all.clone() }.matches(&agent(
            AgentStatus::Online,
            0,
            &[]
        )));
    }

    #[test]
    fn remote_config_state_needs_the_status_of_the_desired_hash() {
        let mut r = agent(AgentStatus::Online, 0, &[]);
        assert_eq!(RemoteConfigState::of(&r), RemoteConfigState::None);
        r.desired_config = Some(Arc::new(DesiredConfig { name: "c".into(), hash: [1; 32] }));
        assert_eq!(RemoteConfigState::of(&r), RemoteConfigState::Pending);
        let report = |hash: [u8; 32], status: v1::RemoteConfigStatuses| {
            Some(Arc::new(v1::RemoteConfigStatus {
                last_remote_config_hash: hash.to_vec().into(),
                status: status as i32,
                error_message: String::new(),
            }))
        };
        r.remote_config_status = report([2; 32], v1::RemoteConfigStatuses::Applied);
        assert_eq!(RemoteConfigState::of(&r), RemoteConfigState::Pending, "another hash");
        r.remote_config_status = report([1; 32], v1::RemoteConfigStatuses::Failed);
        assert_eq!(RemoteConfigState::of(&r), RemoteConfigState::Failed);
        r.remote_config_status = report([1; 32], v1::RemoteConfigStatuses::Unset);
        assert_eq!(RemoteConfigState::of(&r), RemoteConfigState::Pending);
    }

    #[test]
    fn top_values_are_the_most_frequent_then_by_name() {
        let counts: HashMap<String, u64> =
            (0..150u64).map(|i| (format!("v{i:03}"), i % 7)).collect();
        let top = top(counts);
        assert_eq!(top.len(), TOP_VALUES);
        assert_eq!(top[0], ("v006".to_owned(), 6));
        assert_eq!(top[1], ("v013".to_owned(), 6));
        assert!(top.windows(2).all(|w| w[0].1 > w[1].1 || (w[0].1 == w[1].1 && w[0].0 < w[1].0)));
    }
}
