//! OpAMP wire types (generated from `proto/` by prost), the WebSocket frame header, and the
//! agent identity type. Pure: no I/O, no runtime. The only crate that knows the protobuf schema.

pub mod framing;
mod uid;

pub use uid::{InstanceUid, InvalidInstanceUid};

/// Generated protobuf messages of package `opamp.proto.v1`.
#[allow(clippy::all, missing_debug_implementations)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/opamp.proto.v1.rs"));
}

pub use bytes::Bytes;
pub use prost::Message;

/// Agent capability bits (`AgentCapabilities`), as `u64` masks.
pub mod agent_caps {
    use crate::v1::AgentCapabilities as C;
    pub const REPORTS_STATUS: u64 = C::ReportsStatus as u64;
    pub const ACCEPTS_REMOTE_CONFIG: u64 = C::AcceptsRemoteConfig as u64;
    pub const REPORTS_EFFECTIVE_CONFIG: u64 = C::ReportsEffectiveConfig as u64;
    pub const ACCEPTS_PACKAGES: u64 = C::AcceptsPackages as u64;
    pub const REPORTS_PACKAGE_STATUSES: u64 = C::ReportsPackageStatuses as u64;
    pub const REPORTS_OWN_TRACES: u64 = C::ReportsOwnTraces as u64;
    pub const REPORTS_OWN_METRICS: u64 = C::ReportsOwnMetrics as u64;
    pub const REPORTS_OWN_LOGS: u64 = C::ReportsOwnLogs as u64;
    pub const ACCEPTS_OPAMP_CONNECTION_SETTINGS: u64 = C::AcceptsOpAmpConnectionSettings as u64;
    pub const ACCEPTS_OTHER_CONNECTION_SETTINGS: u64 = C::AcceptsOtherConnectionSettings as u64;
    pub const ACCEPTS_RESTART_COMMAND: u64 = C::AcceptsRestartCommand as u64;
    pub const REPORTS_HEALTH: u64 = C::ReportsHealth as u64;
    pub const REPORTS_REMOTE_CONFIG: u64 = C::ReportsRemoteConfig as u64;
    pub const REPORTS_HEARTBEAT: u64 = C::ReportsHeartbeat as u64;
    pub const REPORTS_AVAILABLE_COMPONENTS: u64 = C::ReportsAvailableComponents as u64;
    pub const REPORTS_CONNECTION_SETTINGS_STATUS: u64 = C::ReportsConnectionSettingsStatus as u64;

    /// Every bit with its protobuf name, lowest first (for documents and logs).
    pub const NAMED: [(u64, &str); 16] = [
        (REPORTS_STATUS, "ReportsStatus"),
        (ACCEPTS_REMOTE_CONFIG, "AcceptsRemoteConfig"),
        (REPORTS_EFFECTIVE_CONFIG, "ReportsEffectiveConfig"),
        (ACCEPTS_PACKAGES, "AcceptsPackages"),
        (REPORTS_PACKAGE_STATUSES, "ReportsPackageStatuses"),
        (REPORTS_OWN_TRACES, "ReportsOwnTraces"),
        (REPORTS_OWN_METRICS, "ReportsOwnMetrics"),
        (REPORTS_OWN_LOGS, "ReportsOwnLogs"),
        (ACCEPTS_OPAMP_CONNECTION_SETTINGS, "AcceptsOpAMPConnectionSettings"),
        (ACCEPTS_OTHER_CONNECTION_SETTINGS, "AcceptsOtherConnectionSettings"),
        (ACCEPTS_RESTART_COMMAND, "AcceptsRestartCommand"),
        (REPORTS_HEALTH, "ReportsHealth"),
        (REPORTS_REMOTE_CONFIG, "ReportsRemoteConfig"),
        (REPORTS_HEARTBEAT, "ReportsHeartbeat"),
        (REPORTS_AVAILABLE_COMPONENTS, "ReportsAvailableComponents"),
        (REPORTS_CONNECTION_SETTINGS_STATUS, "ReportsConnectionSettingsStatus"),
    ];

    /// Names of the bits set in `caps`; unknown bits are ignored.
    pub fn names(caps: u64) -> impl Iterator<Item = &'static str> {
        NAMED.iter().filter(move |(bit, _)| caps & bit != 0).map(|(_, n)| *n)
    }
}

/// Server capability bits (`ServerCapabilities`), as `u64` masks.
pub mod server_caps {
    use crate::v1::ServerCapabilities as C;
    pub const ACCEPTS_STATUS: u64 = C::AcceptsStatus as u64;
    pub const OFFERS_REMOTE_CONFIG: u64 = C::OffersRemoteConfig as u64;
    pub const ACCEPTS_EFFECTIVE_CONFIG: u64 = C::AcceptsEffectiveConfig as u64;
    pub const OFFERS_PACKAGES: u64 = C::OffersPackages as u64;
    pub const ACCEPTS_PACKAGES_STATUS: u64 = C::AcceptsPackagesStatus as u64;
    pub const OFFERS_CONNECTION_SETTINGS: u64 = C::OffersConnectionSettings as u64;
    pub const ACCEPTS_CONNECTION_SETTINGS_REQUEST: u64 = C::AcceptsConnectionSettingsRequest as u64;
}

/// `AgentToServerFlags` bits.
pub mod agent_flags {
    pub const REQUEST_INSTANCE_UID: u64 = crate::v1::AgentToServerFlags::RequestInstanceUid as u64;
}

/// `ServerToAgentFlags` bits.
pub mod server_flags {
    use crate::v1::ServerToAgentFlags as F;
    pub const REPORT_FULL_STATE: u64 = F::ReportFullState as u64;
    pub const REPORT_AVAILABLE_COMPONENTS: u64 = F::ReportAvailableComponents as u64;
}
