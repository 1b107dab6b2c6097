//! Remote configuration: the configs an operator defines, which one an agent should run, and
//! the pacing of a rollout. Pure: the decision to send is made in [`process`](crate::process)
//! against the record it writes, so a config goes to an agent exactly once per hash however many
//! instances race on that agent (the compare-and-swap write of the "offered" mark is the send).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use opamp_proto::v1::{self, AgentConfigFile, AgentConfigMap, AgentRemoteConfig, any_value};
use opamp_proto::{Bytes, agent_caps};
use sha2::{Digest, Sha256};

use crate::record::{AgentRecord, Timestamp};

/// SHA-256 of a config's canonical file encoding (see [`config_hash`]).
pub type ConfigHash = [u8; 32];

/// Longest config name (it is a URL path segment and a document id).
pub const MAX_NAME_BYTES: usize = 128;
/// Most selector pairs in one config.
pub const MAX_SELECTOR_PAIRS: usize = 32;
/// Longest selector key or value, and longest file name or content type.
pub const MAX_LABEL_BYTES: usize = 256;
/// Most files in one config.
pub const MAX_FILES: usize = 64;
/// Largest total of file bodies in one config: it travels in one `ServerToAgent`, which must fit
/// the message limits of agents and of opampd.
pub const MAX_CONFIG_BYTES: usize = 256 * 1024;

/// The window a rollout's `max_agents_per_minute` counts in.
pub const ROLLOUT_WINDOW_MS: u64 = 60_000;
/// How long an instance may use the send slots it claimed. A claim counts against every window
/// its slots can be used in, so no sliding minute ever sees more sends than the limit.
pub const SLOT_TTL_MS: u64 = 5_000;

/// One file of a config.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConfigFile {
    pub body: String,
    pub content_type: String,
}

/// How fast a new hash may spread, and when it must stop by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RolloutPolicy {
    /// At most this many agents are sent the new hash in any 60 s, across all instances.
    pub max_agents_per_minute: Option<u32>,
    /// Sending stops once this many agents reported FAILED for the hash (since the last resume).
    pub pause_on_failures: Option<u32>,
}

/// What an agent record remembers of the config it should run: for the admin view and the
/// rollout counts. Shared (`Arc`) so a heartbeat copies a pointer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DesiredConfig {
    pub name: String,
    pub hash: ConfigHash,
}

/// The hash last sent to an agent, and when: the mark that makes a send happen once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OfferedConfig {
    pub hash: ConfigHash,
    pub at: Timestamp,
}

/// Why a config is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidConfig(pub String);

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidConfig {}

/// A named config: files, the selector choosing its agents, an optional rollout policy, and
/// what is derived from them once (the hash, the wire message, the record's desired mark).
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteConfig {
    name: String,
    selector: BTreeMap<String, String>,
    files: BTreeMap<String, ConfigFile>,
    rollout: RolloutPolicy,
    hash: ConfigHash,
    message: AgentRemoteConfig,
    desired: Arc<DesiredConfig>,
}

impl RemoteConfig {
    /// Checks every bound and derives the hash. Nothing about a refused config is kept.
    pub fn new(
        name: String,
        selector: BTreeMap<String, String>,
        files: BTreeMap<String, ConfigFile>,
        rollout: RolloutPolicy,
    ) -> Result<Self, InvalidConfig> {
        validate_name(&name)?;
        if selector.len() > MAX_SELECTOR_PAIRS {
            return Err(InvalidConfig(format!(
                "selector has {} pairs, at most {MAX_SELECTOR_PAIRS} allowed",
                selector.len()
            )));
        }
        for (k, v) in &selector {
            label("selector attribute name", k, false)?;
            label("selector value", v, true)?;
        }
        if files.len() > MAX_FILES {
            return Err(InvalidConfig(format!(
                "config has {} files, at most {MAX_FILES} allowed",
                files.len()
            )));
        }
        let mut total = 0usize;
        for (file, f) in &files {
            label("file name", file, false)?;
            label("content_type", &f.content_type, true)?;
            total = total.saturating_add(f.body.len());
        }
        if total > MAX_CONFIG_BYTES {
            return Err(InvalidConfig(format!(
                "file bodies total {total} bytes, at most {MAX_CONFIG_BYTES} allowed"
            )));
        }
        if rollout.max_agents_per_minute == Some(0) {
            return Err(InvalidConfig("rollout.max_agents_per_minute must be at least 1".into()));
        }
        if rollout.pause_on_failures == Some(0) {
            return Err(InvalidConfig("rollout.pause_on_failures must be at least 1".into()));
        }
        let hash = config_hash(&files);
        let message = AgentRemoteConfig {
            config: Some(AgentConfigMap {
                config_map: files
                    .iter()
                    .map(|(name, f)| {
                        (
                            name.clone(),
                            AgentConfigFile {
                                body: Bytes::from(f.body.clone().into_bytes()),
                                content_type: f.content_type.clone(),
                                role: String::new(),
                            },
                        )
                    })
                    .collect(),
            }),
            config_hash: Bytes::copy_from_slice(&hash),
        };
        let desired = Arc::new(DesiredConfig { name: name.clone(), hash });
        Ok(Self { name, selector, files, rollout, hash, message, desired })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn selector(&self) -> &BTreeMap<String, String> {
        &self.selector
    }

    pub fn files(&self) -> &BTreeMap<String, ConfigFile> {
        &self.files
    }

    pub fn rollout(&self) -> RolloutPolicy {
        self.rollout
    }

    pub fn hash(&self) -> &ConfigHash {
        &self.hash
    }

    /// The `remote_config` of a reply carrying this config.
    pub fn message(&self) -> &AgentRemoteConfig {
        &self.message
    }

    /// The mark a record keeps of this config (shared).
    pub fn desired(&self) -> &Arc<DesiredConfig> {
        &self.desired
    }

    /// True when every selector pair is an identifying or non-identifying attribute of the
    /// agent (an empty selector matches every agent, also one that described nothing yet).
    pub fn matches(&self, description: Option<&v1::AgentDescription>) -> bool {
        self.selector.iter().all(|(key, value)| {
            description.is_some_and(|d| {
                d.identifying_attributes
                    .iter()
                    .chain(&d.non_identifying_attributes)
                    .any(|kv| kv.key == *key && attribute_equals(kv.value.as_ref(), value))
            })
        })
    }
}

/// A config name: 1 to [`MAX_NAME_BYTES`] of `A-Z a-z 0-9 . _ -`, not `.` or `..` (it is a URL
/// path segment and a document id, so nothing there needs escaping).
pub fn validate_name(name: &str) -> Result<(), InvalidConfig> {
    if name.is_empty() {
        return Err(InvalidConfig("config name is empty".into()));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(InvalidConfig(format!("config name is over {MAX_NAME_BYTES} bytes")));
    }
    if name == "." || name == ".." {
        return Err(InvalidConfig("config name cannot be `.` or `..`".into()));
    }
    if let Some(c) =
        name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(InvalidConfig(format!(
            "config name has {c:?}; allowed are letters, digits, `.`, `_` and `-`"
        )));
    }
    Ok(())
}

fn label(what: &str, s: &str, may_be_empty: bool) -> Result<(), InvalidConfig> {
    if s.is_empty() && !may_be_empty {
        return Err(InvalidConfig(format!("{what} is empty")));
    }
    if s.len() > MAX_LABEL_BYTES {
        return Err(InvalidConfig(format!("{what} is over {MAX_LABEL_BYTES} bytes")));
    }
    Ok(())
}

/// An attribute value as a selector compares it: strings as they are, booleans and integers in
/// their usual text form. Other kinds (doubles, bytes, lists, maps) never match.
fn attribute_equals(value: Option<&v1::AnyValue>, wanted: &str) -> bool {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s == wanted,
        Some(any_value::Value::BoolValue(b)) => wanted == if *b { "true" } else { "false" },
        Some(any_value::Value::IntValue(i)) => wanted.parse::<i64>().ok() == Some(*i),
        _ => false,
    }
}

/// The content hash of a set of files: SHA-256 over `opampd-config-v1\0` followed, for each file
/// in byte order of its name, by the name, the content type and the body, each preceded by its
/// length as 8 bytes big-endian. Equal files give an equal hash on every instance; the name,
/// selector and rollout of a config are not part of it.
pub fn config_hash(files: &BTreeMap<String, ConfigFile>) -> ConfigHash {
    let mut h = Sha256::new();
    h.update(b"opampd-config-v1\0");
    for (name, f) in files {
        for part in [name.as_bytes(), f.content_type.as_bytes(), f.body.as_bytes()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
    }
    h.finalize().into()
}

/// Lowercase hex of a hash (the admin API's `"hash"`).
pub fn hash_hex(hash: &[u8]) -> String {
    use fmt::Write as _;
    hash.iter().fold(String::with_capacity(hash.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Parses [`hash_hex`] output back.
pub fn parse_hash_hex(text: &str) -> Option<ConfigHash> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// Every config, ordered for selection: the most specific selector (most pairs) first, then
/// by name. An agent runs the first config that matches it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigSet {
    ordered: Vec<Arc<RemoteConfig>>,
    /// Rollouts that are paused now (by config name): their agents are not sent the config.
    paused: Vec<String>,
}

impl ConfigSet {
    /// No configs.
    pub const EMPTY: ConfigSet = ConfigSet { ordered: Vec::new(), paused: Vec::new() };

    /// `paused` names the configs whose rollout is paused.
    pub fn new(
        configs: impl IntoIterator<Item = Arc<RemoteConfig>>,
        paused: impl IntoIterator<Item = String>,
    ) -> Self {
        let mut ordered: Vec<_> = configs.into_iter().collect();
        ordered.sort_by(|a, b| {
            b.selector.len().cmp(&a.selector.len()).then_with(|| a.name.cmp(&b.name))
        });
        let mut paused: Vec<String> = paused.into_iter().collect();
        paused.sort();
        Self { ordered, paused }
    }

    pub fn is_empty(&self) -> bool {
        self.ordered.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ordered.len()
    }

    /// In selection order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<RemoteConfig>> {
        self.ordered.iter()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<RemoteConfig>> {
        self.ordered.iter().find(|c| c.name == name)
    }

    pub fn is_paused(&self, name: &str) -> bool {
        self.paused.binary_search_by(|p| p.as_str().cmp(name)).is_ok()
    }

    /// The config an agent with this description should run.
    pub fn select(&self, description: Option<&v1::AgentDescription>) -> Option<&Arc<RemoteConfig>> {
        self.ordered.iter().find(|c| c.matches(description))
    }
}

/// What the remote-config part of one message decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RemoteConfigOutcome {
    /// The reply carries this hash (the agent had not reported it and was not sent it before).
    pub sent: Option<ConfigHash>,
    /// The agent now reports FAILED for this hash, and did not before this message.
    pub newly_failed: Option<ConfigHash>,
}

/// The remote-config decision for one message, on the merged `record` (whose reported status
/// and capabilities are this message's): records the desired config, and when the agent must be
/// sent it, marks it offered and returns it. `permit` is asked last, only for a send that is
/// otherwise due (rollout pacing); `full_state_requested` holds any send back until the agent's
/// state is known.
pub(crate) fn decide<'a>(
    record: &mut AgentRecord,
    stored_status: Option<&v1::RemoteConfigStatus>,
    configs: &'a ConfigSet,
    now: Timestamp,
    full_state_requested: bool,
    permit: &dyn Fn(&RemoteConfig) -> bool,
) -> (Option<&'a RemoteConfig>, RemoteConfigOutcome) {
    let mut outcome = RemoteConfigOutcome {
        newly_failed: newly_failed(stored_status, record.remote_config_status.as_deref()),
        sent: None,
    };
    let desired = if record.capabilities & agent_caps::ACCEPTS_REMOTE_CONFIG != 0 {
        configs.select(record.agent_description.as_deref())
    } else {
        None
    };
    record.desired_config = desired.map(|c| c.desired.clone());
    let Some(config) = desired else { return (None, outcome) };
    let reported = record.remote_config_status.as_deref().map(|s| &s.last_remote_config_hash[..]);
    let due = !full_state_requested
        && reported != Some(&config.hash[..])
        && record.offered_config.map(|o| o.hash) != Some(config.hash)
        && !configs.is_paused(&config.name);
    if !due || !permit(config) {
        return (None, outcome);
    }
    record.offered_config = Some(OfferedConfig { hash: config.hash, at: now });
    outcome.sent = Some(config.hash);
    (Some(config), outcome)
}

fn newly_failed(
    before: Option<&v1::RemoteConfigStatus>,
    after: Option<&v1::RemoteConfigStatus>,
) -> Option<ConfigHash> {
    let failed = v1::RemoteConfigStatuses::Failed as i32;
    let after = after.filter(|s| s.status == failed)?;
    let hash = ConfigHash::try_from(&after.last_remote_config_hash[..]).ok()?;
    let was = before.is_some_and(|b| {
        b.status == failed && b.last_remote_config_hash == after.last_remote_config_hash
    });
    (!was).then_some(hash)
}

/// A batch of send slots an instance claimed at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotClaim {
    pub at: Timestamp,
    pub count: u32,
}

/// The shared state of one config's rollout, stored with the config and changed only by
/// compare-and-swap writes. It belongs to one hash: a config whose content changes starts a new
/// rollout.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RolloutState {
    pub hash: ConfigHash,
    /// Stopped by `pause_on_failures`; only an operator resumes it.
    pub paused: bool,
    /// Agents that reported FAILED for `hash` since the rollout started or was last resumed.
    pub failures: u32,
    /// Slot claims that can still be used in some window (older ones are dropped).
    pub claims: Vec<SlotClaim>,
}

impl RolloutState {
    pub fn new(hash: ConfigHash) -> Self {
        Self { hash, paused: false, failures: 0, claims: Vec::new() }
    }

    /// Claims up to `want` send slots at `now` under `policy`, usable for [`SLOT_TTL_MS`]. A
    /// claim counts against the limit for a window plus the slot lifetime, so the sends of any
    /// 60 s stay within `max_agents_per_minute` whoever made them. Returns the slots granted
    /// (0 when paused or the window is full); without a rate limit everything is granted.
    pub fn claim(&mut self, policy: RolloutPolicy, now: Timestamp, want: u32) -> u32 {
        if self.paused {
            return 0;
        }
        let Some(limit) = policy.max_agents_per_minute else { return want };
        let horizon = now.saturating_sub(ROLLOUT_WINDOW_MS + SLOT_TTL_MS);
        self.claims.retain(|c| c.at > horizon);
        let used: u32 = self.claims.iter().fold(0u32, |n, c| n.saturating_add(c.count));
        let granted = want.min(limit.saturating_sub(used));
        if granted > 0 {
            self.claims.push(SlotClaim { at: now, count: granted });
        }
        granted
    }

    /// Counts `n` more agents that failed the hash; pauses the rollout when that reaches the
    /// policy's `pause_on_failures`. Returns true when this call paused it.
    pub fn record_failures(&mut self, policy: RolloutPolicy, n: u32) -> bool {
        self.failures = self.failures.saturating_add(n);
        match policy.pause_on_failures {
            Some(k) if !self.paused && self.failures >= k => {
                self.paused = true;
                true
            }
            _ => false,
        }
    }

    /// An operator resumes a paused rollout: sending goes on, and the failure budget starts
    /// again from zero.
    pub fn resume(&mut self) {
        self.paused = false;
        self.failures = 0;
    }
}
