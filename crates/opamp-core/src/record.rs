//! The server's picture of one agent, as stored and cached.

use std::sync::Arc;

use opamp_proto::InstanceUid;
use opamp_proto::v1;

use crate::remote_config::{DesiredConfig, OfferedConfig};

/// Milliseconds since the Unix epoch. The caller reads the clock; the core only compares.
pub type Timestamp = u64;

/// An agent whose last check-in is older than this reads as offline: 12 missed 30 s heartbeats,
/// the same threshold Kibana Fleet uses.
pub const DEFAULT_OFFLINE_AFTER_MS: u64 = 6 * 60 * 1000;

/// How long at most a record's published view (see [`AgentRecord::published_at`]) may go
/// without being published again when nothing but the check-in changed: well inside
/// [`DEFAULT_OFFLINE_AFTER_MS`], so a reader of the view never sees a live agent go offline.
/// A view lags by at most this plus one heartbeat: under Kibana's 5-minute offline threshold
/// for any heartbeat shorter than it (a heartbeat at or above the interval publishes every
/// time).
pub const DEFAULT_PUBLISH_INTERVAL_MS: u64 = 2 * 60 * 1000;

/// Status as stored. `Offline` is never stored: it is derived at read time from `last_checkin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentStatus {
    Online,
    Degraded,
    Error,
    Disconnected,
    Offline,
}

impl AgentStatus {
    /// The fleet-server `last_checkin_status` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Degraded => "degraded",
            Self::Error => "error",
            Self::Disconnected => "disconnected",
            Self::Offline => "offline",
        }
    }
}

/// The enrollment key an agent authenticated with, as the server binds it: the policy (and
/// namespaces) the agent belongs to. Never the key's secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Enrollment {
    /// The Elasticsearch API key id of the enrollment key (`api_key_id`).
    pub api_key_id: String,
    pub policy_id: String,
    pub namespaces: Vec<String>,
}

/// Why an agent's record stopped being its current one (fleet-server's
/// `audit_unenrolled_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnenrollReason {
    /// The agent asked for a new instance uid (`RequestInstanceUid`) and goes on under it.
    Reenrolled,
}

impl UnenrollReason {
    /// The fleet-server spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reenrolled => "reenrolled",
        }
    }
}

/// When and why a record was left behind by its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Unenrolled {
    pub reason: UnenrollReason,
    pub at: Timestamp,
}

/// Everything the server keeps about one agent. Sub-messages are `None` until the agent first
/// reports them; a message that omits one keeps the stored value (agents compress).
///
/// The sub-messages are shared (`Arc`): a heartbeat changes none of them, so copying a cached
/// record and merging a heartbeat into it copies no attribute, health map or config body.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRecord {
    pub instance_uid: InstanceUid,
    /// The last received `sequence_num`; never reset, also not by a disconnect.
    pub sequence_num: u64,
    /// `AgentCapabilities` bits of the last message.
    pub capabilities: u64,
    pub status: AgentStatus,
    pub enrolled_at: Timestamp,
    pub last_checkin: Timestamp,
    /// The policy the agent was enrolled under; `None` when it never authenticated (a server
    /// running without agent authentication).
    pub enrollment: Option<Arc<Enrollment>>,
    /// Set when the agent left this record behind; cleared when it reports under it again.
    pub unenrolled: Option<Unenrolled>,
    /// Read from a document another server wrote (fleet-server): the agent is known, but none
    /// of its reported state is: its first message here is asked for the full state unless it
    /// is one. Never stored: the first write makes the record opampd's own.
    pub adopted: bool,
    pub agent_description: Option<Arc<v1::AgentDescription>>,
    pub health: Option<Arc<v1::ComponentHealth>>,
    /// As reported, but redacted: every file body is JSON text with its secrets replaced, or
    /// empty (see [`redact`](crate::redact)). The raw body is never kept.
    pub effective_config: Option<Arc<v1::EffectiveConfig>>,
    pub remote_config_status: Option<Arc<v1::RemoteConfigStatus>>,
    pub package_statuses: Option<Arc<v1::PackageStatuses>>,
    pub custom_capabilities: Option<Arc<v1::CustomCapabilities>>,
    pub available_components: Option<Arc<v1::AvailableComponents>>,
    pub connection_settings_status: Option<Arc<v1::ConnectionSettingsStatus>>,
    /// The remote config this agent should run, as of its last message (`None` when it does
    /// not accept remote config or no config matches it).
    pub desired_config: Option<Arc<DesiredConfig>>,
    /// The config hash last sent to this agent: a hash is sent once.
    pub offered_config: Option<OfferedConfig>,
    /// When the record's view was last published, 0 for never. A store may keep a second,
    /// wide copy of the record for other readers (Elasticsearch's fleet document, which Kibana
    /// reads) and rewrite it only when [`publishes`](Self::publishes): when anything but the
    /// check-in (`sequence_num`, `last_checkin`) changed, or the last publication is older than
    /// the publish interval (see `process`). The record itself is written on every message.
    pub published_at: Timestamp,
}

impl AgentRecord {
    /// A record for an agent first seen at `now`: online, nothing reported yet.
    pub fn new(instance_uid: InstanceUid, now: Timestamp) -> Self {
        Self {
            instance_uid,
            sequence_num: 0,
            capabilities: 0,
            status: AgentStatus::Online,
            enrolled_at: now,
            last_checkin: now,
            enrollment: None,
            unenrolled: None,
            adopted: false,
            agent_description: None,
            health: None,
            effective_config: None,
            remote_config_status: None,
            package_statuses: None,
            custom_capabilities: None,
            available_components: None,
            connection_settings_status: None,
            desired_config: None,
            offered_config: None,
            published_at: 0,
        }
    }

    /// Whether the write of this record publishes its view: `process` stamps `published_at`
    /// with the message's time, which is also its `last_checkin`. (A message handled in the
    /// same millisecond as the previous publication publishes again: harmless.)
    pub fn publishes(&self) -> bool {
        self.published_at == self.last_checkin
    }

    /// Whether `other` shows readers the same agent as `self`: every field but the check-in
    /// (`sequence_num`, `last_checkin`) and the bookkeeping (`published_at`, `adopted`) equal.
    /// Shared sub-messages compare by pointer first, so a heartbeat costs no deep comparison.
    pub fn same_view(&self, other: &Self) -> bool {
        fn same<T: PartialEq>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
            match (a, b) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                _ => false,
            }
        }
        self.instance_uid == other.instance_uid
            && self.capabilities == other.capabilities
            && self.status == other.status
            && self.enrolled_at == other.enrolled_at
            && same(&self.enrollment, &other.enrollment)
            && self.unenrolled == other.unenrolled
            && same(&self.agent_description, &other.agent_description)
            && same(&self.health, &other.health)
            && same(&self.effective_config, &other.effective_config)
            && same(&self.remote_config_status, &other.remote_config_status)
            && same(&self.package_statuses, &other.package_statuses)
            && same(&self.custom_capabilities, &other.custom_capabilities)
            && same(&self.available_components, &other.available_components)
            && same(&self.connection_settings_status, &other.connection_settings_status)
            && same(&self.desired_config, &other.desired_config)
            && self.offered_config == other.offered_config
    }

    /// The status a reader should see at `now`: `offline` once the agent has been silent longer
    /// than `offline_after_ms` (unless it said goodbye, which stays `disconnected`).
    pub fn status_at(&self, now: Timestamp, offline_after_ms: u64) -> AgentStatus {
        if self.status != AgentStatus::Disconnected
            && now.saturating_sub(self.last_checkin) > offline_after_ms
        {
            AgentStatus::Offline
        } else {
            self.status
        }
    }
}
