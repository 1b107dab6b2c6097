//! The drift rules of docs/design.md as data: every reference row, then the edges around them.

use opamp_core::{AgentRecord, AgentStatus, FullStateReason, full_state_reason, has_full_status};
use opamp_proto::agent_caps as caps;
use opamp_proto::v1::AgentToServer;

use crate::support::{
    REPORTING_BITS, all_reporting_bits, description, full, full_with, health, heartbeat, record,
};

use AgentStatus::{Degraded, Disconnected, Error, Online};

pub struct Case {
    pub name: &'static str,
    pub stored: Option<AgentRecord>,
    pub msg: AgentToServer,
    /// The rule expected to ask for the full state, `None` when nothing is asked.
    pub want: Option<FullStateReason>,
}

/// Shorthands for the expected decision of a row.
const NOTHING: Option<FullStateReason> = None;
const NEW: Option<FullStateReason> = Some(FullStateReason::NewAgent);
const RECONNECT: Option<FullStateReason> = Some(FullStateReason::Reconnect);
const GAP: Option<FullStateReason> = Some(FullStateReason::SequenceGap);

fn case(
    name: &'static str,
    stored: Option<(u64, AgentStatus)>,
    msg: AgentToServer,
    want: Option<FullStateReason>,
) -> Case {
    Case { name, stored: stored.map(|(seq, st)| record(seq, st)), msg, want }
}

fn without_health(mut m: AgentToServer) -> AgentToServer {
    m.health = None;
    m
}

fn without_description(mut m: AgentToServer) -> AgentToServer {
    m.agent_description = None;
    m
}

/// Every reference row of docs/design.md (rows 1-11, in order), then further cases around them.
/// The process() tests replay the same table, so the reply flag is held to the same rules.
pub fn cases() -> Vec<Case> {
    let every_bit = caps::REPORTS_STATUS | all_reporting_bits();
    let mut missing_one = full_with(0, every_bit);
    missing_one.connection_settings_status = None;
    vec![
        // docs/design.md reference table, rows 1-11
        case("missed_message_requests_full_state", Some((5, Online)), heartbeat(7), GAP),
        case("out_of_order_message_requests_full_state", Some((5, Online)), heartbeat(3), GAP),
        case("next_in_sequence_full_report_needs_nothing", Some((5, Online)), full(6), NOTHING),
        case("unknown_agent_without_full_status_is_asked", None, heartbeat(1), NEW),
        case("unknown_agent_with_full_status_needs_nothing", None, full(1), NOTHING),
        case(
            "reconnect_at_zero_without_full_status_is_asked",
            Some((10, Disconnected)),
            heartbeat(0),
            RECONNECT,
        ),
        case(
            "reconnect_at_zero_with_full_status_needs_nothing",
            Some((10, Disconnected)),
            full(0),
            NOTHING,
        ),
        case(
            "disconnected_agent_continuing_sequence_needs_nothing",
            Some((10, Disconnected)),
            heartbeat(11),
            NOTHING,
        ),
        case(
            "disconnected_agent_jumping_back_is_asked",
            Some((10, Disconnected)),
            heartbeat(5),
            GAP,
        ),
        case("duplicate_at_zero_is_asked", Some((0, Online)), heartbeat(0), GAP),
        case(
            "first_successor_of_zero_with_full_status_needs_nothing",
            Some((0, Online)),
            full(1),
            NOTHING,
        ),
        // Around the table
        case("duplicate_message_requests_full_state", Some((5, Online)), heartbeat(5), GAP),
        case("next_in_sequence_heartbeat_needs_nothing", Some((5, Online)), heartbeat(6), NOTHING),
        case("far_forward_gap_requests_full_state", Some((5, Online)), heartbeat(u64::MAX), GAP),
        case(
            "sequence_wrapping_past_max_is_in_sequence",
            Some((u64::MAX, Online)),
            heartbeat(0),
            NOTHING,
        ),
        case(
            "degraded_agent_next_in_sequence_needs_nothing",
            Some((5, Degraded)),
            heartbeat(6),
            NOTHING,
        ),
        case(
            "restart_of_connected_agent_is_asked_even_with_full_status",
            Some((10, Online)),
            full(0),
            GAP,
        ),
        case(
            "restart_of_erroring_agent_is_asked_even_with_full_status",
            Some((10, Error)),
            full(0),
            GAP,
        ),
        case("unknown_agent_at_zero_with_full_status_needs_nothing", None, full(0), NOTHING),
        case("unknown_agent_without_health_is_asked", None, without_health(full(1)), NEW),
        case("unknown_agent_without_description_is_asked", None, without_description(full(1)), NEW),
        case(
            "unknown_agent_with_every_reporting_field_needs_nothing",
            None,
            full_with(1, every_bit),
            NOTHING,
        ),
        case("unknown_agent_missing_one_reporting_field_is_asked", None, missing_one.clone(), NEW),
        // Reconnect (rule 3) combined with has_full_status
        case(
            "reconnect_without_health_is_asked",
            Some((10, Disconnected)),
            without_health(full(0)),
            RECONNECT,
        ),
        case(
            "reconnect_without_description_is_asked",
            Some((10, Disconnected)),
            without_description(full(0)),
            RECONNECT,
        ),
        case(
            "reconnect_with_every_reporting_field_needs_nothing",
            Some((10, Disconnected)),
            full_with(0, every_bit),
            NOTHING,
        ),
        case(
            "reconnect_missing_one_reporting_field_is_asked",
            Some((10, Disconnected)),
            missing_one,
            RECONNECT,
        ),
        case(
            "reconnect_with_zero_capabilities_is_asked",
            Some((10, Disconnected)),
            full_with(0, 0),
            RECONNECT,
        ),
        case(
            "reconnect_of_agent_that_never_counted_is_judged_on_full_status",
            Some((0, Disconnected)),
            full(0),
            NOTHING,
        ),
        case("disconnected_agent_duplicate_is_asked", Some((10, Disconnected)), full(10), GAP),
    ]
}

#[test]
fn full_state_is_requested_exactly_when_the_drift_rules_say() {
    let mut failures = Vec::new();
    for c in cases() {
        let got = full_state_reason(c.stored.as_ref(), &c.msg);
        if got != c.want {
            failures.push(format!("{}: got {got:?}, want {:?}", c.name, c.want));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn table_holds_every_reference_row_of_the_design() {
    // The reference table has 11 rows; a shorter table here would silently drop one.
    let names: Vec<_> = cases().iter().map(|c| c.name).collect();
    assert!(names.len() >= 11);
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "case names must be unique");
}

struct StatusCase {
    name: String,
    msg: AgentToServer,
    want: bool,
}

fn status_cases() -> Vec<StatusCase> {
    let mut out = vec![
        StatusCase {
            name: "empty_message_is_not_full".into(),
            msg: AgentToServer::default(),
            want: false,
        },
        StatusCase {
            name: "zero_capabilities_is_not_full_even_with_description_and_health".into(),
            msg: full_with(1, 0),
            want: false,
        },
        StatusCase {
            name: "reports_status_with_description_and_health_is_full".into(),
            msg: full(1),
            want: true,
        },
        StatusCase {
            name: "missing_description_is_not_full".into(),
            msg: without_description(full(1)),
            want: false,
        },
        StatusCase {
            name: "missing_health_is_not_full".into(),
            msg: without_health(full(1)),
            want: false,
        },
        StatusCase {
            name: "uid_seq_and_caps_only_is_not_full".into(),
            msg: heartbeat(1),
            want: false,
        },
        StatusCase {
            name: "several_bits_with_all_fields_is_full".into(),
            msg: full_with(
                1,
                caps::REPORTS_STATUS | caps::REPORTS_EFFECTIVE_CONFIG | caps::REPORTS_REMOTE_CONFIG,
            ),
            want: true,
        },
        StatusCase {
            name: "every_bit_with_all_fields_is_full".into(),
            msg: full_with(1, caps::REPORTS_STATUS | all_reporting_bits()),
            want: true,
        },
        StatusCase {
            // Capabilities the rules do not tie to a field (health, heartbeat, accepts-*) ask nothing more.
            name: "bits_without_a_tied_field_need_only_description_and_health".into(),
            msg: full_with(
                1,
                caps::REPORTS_STATUS
                    | caps::REPORTS_HEALTH
                    | caps::REPORTS_HEARTBEAT
                    | caps::ACCEPTS_REMOTE_CONFIG,
            ),
            want: true,
        },
        StatusCase {
            name: "any_nonzero_capabilities_count_even_without_reports_status".into(),
            msg: full_with(1, caps::REPORTS_HEALTH),
            want: true,
        },
        StatusCase {
            name: "health_alone_is_not_full".into(),
            msg: AgentToServer {
                capabilities: caps::REPORTS_STATUS,
                health: Some(health(true, "")),
                ..Default::default()
            },
            want: false,
        },
        StatusCase {
            name: "description_alone_is_not_full".into(),
            msg: AgentToServer {
                capabilities: caps::REPORTS_STATUS,
                agent_description: Some(description("x")),
                ..Default::default()
            },
            want: false,
        },
    ];
    for (bit, field, set) in REPORTING_BITS {
        let mut without = full(1);
        without.capabilities |= bit;
        out.push(StatusCase {
            name: format!("bit_{bit:#x}_without_{field}_is_not_full"),
            msg: without.clone(),
            want: false,
        });
        let mut with = without;
        set(&mut with);
        out.push(StatusCase {
            name: format!("bit_{bit:#x}_with_{field}_is_full"),
            msg: with,
            want: true,
        });
        // The field without its bit is harmless extra state, not a reason to reject the report.
        let mut field_only = full(1);
        set(&mut field_only);
        out.push(StatusCase {
            name: format!("{field}_without_bit_{bit:#x}_is_full"),
            msg: field_only,
            want: true,
        });
        // With every other bit satisfied, this one missing field still spoils the report.
        let all_but_one =
            clear_field(full_with(1, caps::REPORTS_STATUS | all_reporting_bits()), field);
        out.push(StatusCase {
            name: format!("every_bit_but_missing_{field}_is_not_full"),
            msg: all_but_one,
            want: false,
        });
    }
    out
}

fn clear_field(mut m: AgentToServer, field: &str) -> AgentToServer {
    match field {
        "effective_config" => m.effective_config = None,
        "remote_config_status" => m.remote_config_status = None,
        "package_statuses" => m.package_statuses = None,
        "available_components" => m.available_components = None,
        "connection_settings_status" => m.connection_settings_status = None,
        other => unreachable!("no reporting field {other}"),
    }
    m
}

#[test]
fn full_status_requires_description_health_and_every_reported_field() {
    let mut failures = Vec::new();
    for c in status_cases() {
        let got = has_full_status(&c.msg);
        if got != c.want {
            failures.push(format!("{}: got {got}, want {}", c.name, c.want));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn an_adopted_record_is_asked_for_the_full_state_once_unless_it_gets_one() {
    // a document fleet-server wrote: the agent is known, its reported state is not
    let mut adopted = record(17, Online);
    adopted.adopted = true;
    assert_eq!(
        full_state_reason(Some(&adopted), &heartbeat(18)),
        Some(FullStateReason::Adopted),
        "in sequence, but nothing of its state is held"
    );
    assert_eq!(full_state_reason(Some(&adopted), &full(18)), None, "a full report is enough");
    assert_eq!(full_state_reason(Some(&adopted), &full(3)), None, "whatever its sequence");
    // once written by opampd the record is its own and the usual rules apply
    let merged = opamp_core::merge(Some(adopted), crate::support::UID, &full(18), 1);
    assert!(!merged.adopted);
    assert_eq!(full_state_reason(Some(&merged), &heartbeat(19)), None);
}
