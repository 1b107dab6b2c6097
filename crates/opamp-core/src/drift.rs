//! The drift rules: when the server must set `ReportFullState` so the agent resends everything.
//! They run against the freshest stored state, before the conditional write (see docs/design.md).

use opamp_proto::agent_caps as caps;
use opamp_proto::v1::AgentToServer;

use crate::record::{AgentRecord, AgentStatus};

/// True when `msg` carries everything a full status report must: non-zero capabilities, the
/// description and health, and the field of every "reports X" capability bit that is set.
pub fn has_full_status(msg: &AgentToServer) -> bool {
    let c = msg.capabilities;
    let needs = |bit: u64, present: bool| c & bit == 0 || present;
    c != 0
        && msg.agent_description.is_some()
        && msg.health.is_some()
        && needs(caps::REPORTS_EFFECTIVE_CONFIG, msg.effective_config.is_some())
        && needs(caps::REPORTS_REMOTE_CONFIG, msg.remote_config_status.is_some())
        && needs(caps::REPORTS_PACKAGE_STATUSES, msg.package_statuses.is_some())
        && needs(caps::REPORTS_AVAILABLE_COMPONENTS, msg.available_components.is_some())
        && needs(caps::REPORTS_CONNECTION_SETTINGS_STATUS, msg.connection_settings_status.is_some())
}

/// Why a reply asks the agent for its full state: which drift rule fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FullStateReason {
    /// No stored record, and the message is not a full status report.
    NewAgent,
    /// The agent said goodbye and came back from `sequence_num` 0 without a full report.
    Reconnect,
    /// `sequence_num` is not the stored one plus one: a lost, repeated or reordered message.
    SequenceGap,
    /// The stored record was written by another server (fleet-server) and holds none of the
    /// agent's reported state, and the message is not a full status report.
    Adopted,
}

impl FullStateReason {
    pub const ALL: [Self; 4] = [Self::NewAgent, Self::Reconnect, Self::SequenceGap, Self::Adopted];

    /// The metrics `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NewAgent => "new_agent",
            Self::Reconnect => "reconnect",
            Self::SequenceGap => "sequence_gap",
            Self::Adopted => "adopted",
        }
    }
}

/// Whether the reply to `msg` must carry `ReportFullState` given the stored record, and why:
/// `None` when the stored state already is the agent's state.
pub fn full_state_reason(
    stored: Option<&AgentRecord>,
    msg: &AgentToServer,
) -> Option<FullStateReason> {
    let (asked, reason) = match stored {
        None => (!has_full_status(msg), FullStateReason::NewAgent),
        // what another server stored is not the agent's state as opampd keeps it: like a new
        // agent, a full report is enough and anything less must be completed
        Some(s) if s.adopted => (!has_full_status(msg), FullStateReason::Adopted),
        Some(s) if s.status == AgentStatus::Disconnected && msg.sequence_num == 0 => {
            (!has_full_status(msg), FullStateReason::Reconnect)
        }
        // wrapping: a stored u64::MAX followed by 0 is in sequence, not a gap
        Some(s) => {
            (msg.sequence_num != s.sequence_num.wrapping_add(1), FullStateReason::SequenceGap)
        }
    };
    asked.then_some(reason)
}
