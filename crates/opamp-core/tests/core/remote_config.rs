//! Remote configuration: the send decision (capability, selector, reported hash and status,
//! the offered mark, a full-state request, a paused rollout, the rollout's permit), the
//! selection rule, the content hash, the bounds, and rollout pacing.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Arc;

use opamp_core::remote_config::{
    ConfigFile, ConfigSet, MAX_CONFIG_BYTES, MAX_SELECTOR_PAIRS, OfferedConfig, ROLLOUT_WINDOW_MS,
    RemoteConfig, RolloutPolicy, RolloutState, SLOT_TTL_MS, config_hash, hash_hex, parse_hash_hex,
};
use opamp_core::{AgentRecord, Processed, Remote, ServerConfig, process};
use opamp_proto::v1::{
    AgentDescription, AgentToServer, AnyValue, KeyValue, RemoteConfigStatus, RemoteConfigStatuses,
    any_value,
};
use opamp_proto::{Bytes, agent_caps as caps, server_caps};

use crate::support::{NOW, UID, full_with, heartbeat, kv};

const ACCEPTS: u64 = caps::REPORTS_STATUS
    | caps::REPORTS_HEALTH
    | caps::ACCEPTS_REMOTE_CONFIG
    | caps::REPORTS_REMOTE_CONFIG;
const NOT_ACCEPTING: u64 = caps::REPORTS_STATUS | caps::REPORTS_HEALTH;

fn files(body: &str) -> BTreeMap<String, ConfigFile> {
    [(
        "collector.yaml".to_owned(),
        ConfigFile { body: body.into(), content_type: "text/yaml".into() },
    )]
    .into()
}

fn config(name: &str, selector: &[(&str, &str)], body: &str) -> Arc<RemoteConfig> {
    let selector = selector.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Arc::new(
        RemoteConfig::new(name.into(), selector, files(body), RolloutPolicy::default())
            .expect("valid config"),
    )
}

fn status(hash: &[u8], s: RemoteConfigStatuses) -> RemoteConfigStatus {
    RemoteConfigStatus {
        last_remote_config_hash: Bytes::copy_from_slice(hash),
        status: s as i32,
        error_message: String::new(),
    }
}

/// A known agent (service.name=collector, os.type=linux) with `capabilities`, reporting
/// `reported`, last sent `offered`.
fn known(
    capabilities: u64,
    reported: Option<RemoteConfigStatus>,
    offered: Option<[u8; 32]>,
) -> AgentRecord {
    let mut first = full_with(1, capabilities);
    first.remote_config_status = reported.clone();
    let mut r = process(
        None,
        UID,
        &first,
        NOW - 30_000,
        None,
        || UID,
        &ServerConfig::default(),
        Remote::NONE,
    )
    .expect("accepted")
    .record;
    r.remote_config_status = reported.map(Arc::new);
    r.offered_config = offered.map(|hash| OfferedConfig { hash, at: NOW - 30_000 });
    r
}

fn next(capabilities: u64) -> AgentToServer {
    let mut m = heartbeat(2);
    m.capabilities = capabilities;
    m
}

fn decide(stored: AgentRecord, msg: &AgentToServer, set: &ConfigSet, allow: bool) -> Processed {
    let permit = move |_: &RemoteConfig| allow;
    process(
        Some(stored),
        UID,
        msg,
        NOW,
        None,
        || UID,
        &ServerConfig::default(),
        Remote { configs: set, permit: &permit },
    )
    .expect("accepted")
}

/// (why, capabilities, reported, offered, configs, permit, sent?, desired set?)
type Row<'a> =
    (&'a str, u64, Option<RemoteConfigStatus>, Option<[u8; 32]>, &'a ConfigSet, bool, bool, bool);

#[test]
fn the_send_decision_table() {
    use RemoteConfigStatuses::{Applied, Applying, Failed, Unset};
    let c = config("base", &[], "receivers: {}");
    let h = *c.hash();
    let other = [9u8; 32];
    let set = ConfigSet::new([c.clone()], []);
    let paused = ConfigSet::new([c.clone()], ["base".to_owned()]);
    let none = ConfigSet::default();
    // (why, capabilities, reported, offered, configs, permit, sent?, desired set?)
    #[rustfmt::skip]
    let rows: Vec<Row<'_>> = vec![
        ("never had it: sent", ACCEPTS, None, None, &set, true, true, true),
        ("reports another hash: sent", ACCEPTS, Some(status(&other, Applied)), None, &set, true, true, true),
        ("reports it UNSET: not sent (equal hash)", ACCEPTS, Some(status(&h, Unset)), None, &set, true, false, true),
        ("reports it APPLYING: not sent", ACCEPTS, Some(status(&h, Applying)), None, &set, true, false, true),
        ("reports it APPLIED: not sent", ACCEPTS, Some(status(&h, Applied)), None, &set, true, false, true),
        ("reports it FAILED: never again", ACCEPTS, Some(status(&h, Failed)), None, &set, true, false, true),
        ("already sent, no status yet: not again", ACCEPTS, None, Some(h), &set, true, false, true),
        ("already sent, still reports the old one: not again", ACCEPTS, Some(status(&other, Applied)), Some(h), &set, true, false, true),
        ("sent an older hash: the new one goes", ACCEPTS, Some(status(&other, Applied)), Some(other), &set, true, true, true),
        ("no capability: never", NOT_ACCEPTING, None, None, &set, true, false, false),
        ("no config at all: nothing", ACCEPTS, None, None, &none, true, false, false),
        ("rollout paused: held", ACCEPTS, None, None, &paused, true, false, true),
        ("rollout pacing says no: held", ACCEPTS, None, None, &set, false, false, true),
    ];
    for (why, capabilities, reported, offered, configs, allow, sent, desired) in rows {
        let stored = known(capabilities, reported, offered);
        let p = decide(stored, &next(capabilities), configs, allow);
        assert_eq!(p.report_full_state, None, "{why}: no drift in this table");
        assert_eq!(p.response.remote_config.is_some(), sent, "{why}");
        assert_eq!(p.remote_config.sent.is_some(), sent, "{why}");
        assert_eq!(p.record.desired_config.is_some(), desired, "{why}");
        if sent {
            let rc = p.response.remote_config.as_ref().expect("sent");
            assert_eq!(&rc.config_hash[..], &h[..], "{why}");
            let files = &rc.config.as_ref().expect("config map").config_map;
            assert_eq!(&files["collector.yaml"].body[..], b"receivers: {}", "{why}");
            assert_eq!(files["collector.yaml"].content_type, "text/yaml", "{why}");
            assert_eq!(p.record.offered_config, Some(OfferedConfig { hash: h, at: NOW }), "{why}");
        } else {
            assert_eq!(
                p.record.offered_config,
                offered.map(|hash| OfferedConfig { hash, at: NOW - 30_000 }),
                "{why}: the mark is kept"
            );
        }
        if desired {
            assert_eq!(p.record.desired_config.as_ref().map(|d| d.hash), Some(h), "{why}");
            assert_eq!(
                p.record.desired_config.as_ref().map(|d| d.name.as_str()),
                Some("base"),
                "{why}"
            );
        }
    }
}

#[test]
fn the_permit_is_asked_only_for_a_send_that_is_due() {
    let c = config("base", &[], "a");
    let set = ConfigSet::new([c.clone()], []);
    let asked = Cell::new(0);
    let permit = |_: &RemoteConfig| {
        asked.set(asked.get() + 1);
        true
    };
    let up_to_date = known(ACCEPTS, Some(status(c.hash(), RemoteConfigStatuses::Applied)), None);
    process(
        Some(up_to_date),
        UID,
        &next(ACCEPTS),
        NOW,
        None,
        || UID,
        &ServerConfig::default(),
        Remote { configs: &set, permit: &permit },
    )
    .expect("accepted");
    assert_eq!(asked.get(), 0, "an up-to-date heartbeat costs no permit");
    let fresh = known(ACCEPTS, None, None);
    process(
        Some(fresh),
        UID,
        &next(ACCEPTS),
        NOW,
        None,
        || UID,
        &ServerConfig::default(),
        Remote { configs: &set, permit: &permit },
    )
    .expect("accepted");
    assert_eq!(asked.get(), 1);
}

#[test]
fn nothing_is_sent_while_the_full_state_is_requested() {
    let set = ConfigSet::new([config("base", &[], "a")], []);
    let stored = known(ACCEPTS, None, None);
    let mut gap = next(ACCEPTS);
    gap.sequence_num = 7; // a lost message: the reply asks for the full state
    let p = decide(stored, &gap, &set, true);
    assert!(p.report_full_state.is_some());
    assert_eq!(p.response.remote_config, None);
    assert_eq!(p.record.offered_config, None);
    // the full report that follows gets it
    let mut full = full_with(8, ACCEPTS);
    full.remote_config_status = None;
    let p = decide(p.record, &full, &set, true);
    assert_eq!(p.report_full_state, None);
    assert!(p.response.remote_config.is_some());
}

#[test]
fn a_new_agent_reporting_everything_gets_its_config_in_the_first_reply() {
    let set = ConfigSet::new([config("base", &[], "a")], []);
    let permit = |_: &RemoteConfig| true;
    let p = process(
        None,
        UID,
        &full_with(1, ACCEPTS),
        NOW,
        None,
        || UID,
        &ServerConfig::default(),
        Remote { configs: &set, permit: &permit },
    )
    .expect("accepted");
    assert_eq!(p.report_full_state, None);
    assert!(p.response.remote_config.is_some());
}

#[test]
fn a_changed_config_is_sent_once_more_then_never_again() {
    let v1 = config("base", &[], "v1");
    let v2 = config("base", &[], "v2");
    let stored =
        known(ACCEPTS, Some(status(v1.hash(), RemoteConfigStatuses::Failed)), Some(*v1.hash()));
    let set2 = ConfigSet::new([v2.clone()], []);
    let p = decide(stored, &next(ACCEPTS), &set2, true);
    assert_eq!(p.remote_config.sent, Some(*v2.hash()));
    let mut msg = heartbeat(3);
    msg.capabilities = ACCEPTS;
    let again = decide(p.record, &msg, &set2, true);
    assert_eq!(again.remote_config.sent, None, "once per hash");
}

#[test]
fn newly_failed_is_a_transition_not_a_state() {
    let c = config("base", &[], "a");
    let set = ConfigSet::new([c.clone()], []);
    let applying =
        known(ACCEPTS, Some(status(c.hash(), RemoteConfigStatuses::Applying)), Some(*c.hash()));
    let mut msg = next(ACCEPTS);
    msg.remote_config_status = Some(status(c.hash(), RemoteConfigStatuses::Failed));
    let p = decide(applying, &msg, &set, true);
    assert_eq!(p.remote_config.newly_failed, Some(*c.hash()));
    // the same status again (a full report) is no new failure
    let mut msg = heartbeat(3);
    msg.capabilities = ACCEPTS;
    msg.remote_config_status = Some(status(c.hash(), RemoteConfigStatuses::Failed));
    let p = decide(p.record, &msg, &set, true);
    assert_eq!(p.remote_config.newly_failed, None);
    // a failure with a hash that is no config hash is not counted
    let stored = known(ACCEPTS, None, None);
    let mut msg = next(ACCEPTS);
    msg.remote_config_status = Some(status(b"short", RemoteConfigStatuses::Failed));
    assert_eq!(decide(stored, &msg, &set, true).remote_config.newly_failed, None);
}

#[test]
fn opampd_offers_remote_config() {
    let p = decide(known(ACCEPTS, None, None), &next(ACCEPTS), &ConfigSet::default(), true);
    assert_ne!(p.response.capabilities & server_caps::OFFERS_REMOTE_CONFIG, 0);
}

fn described(attrs: Vec<KeyValue>) -> AgentDescription {
    AgentDescription {
        identifying_attributes: attrs,
        non_identifying_attributes: vec![kv("os.type", "linux")],
    }
}

#[test]
fn selection_takes_the_most_specific_selector_then_the_name() {
    let all = config("all", &[], "a");
    let linux = config("linux", &[("os.type", "linux")], "b");
    let b_collector =
        config("b-collector", &[("service.name", "collector"), ("os.type", "linux")], "c");
    let a_collector =
        config("a-collector", &[("service.name", "collector"), ("os.type", "linux")], "d");
    let windows = config("windows", &[("os.type", "windows"), ("service.name", "collector")], "e");
    let set = ConfigSet::new([all.clone(), linux.clone(), b_collector, a_collector, windows], []);
    let d = described(vec![kv("service.name", "collector")]);
    assert_eq!(set.select(Some(&d)).map(|c| c.name()), Some("a-collector"));
    let d = described(vec![kv("service.name", "gateway")]);
    assert_eq!(set.select(Some(&d)).map(|c| c.name()), Some("linux"));
    assert_eq!(set.select(None).map(|c| c.name()), Some("all"), "empty selector matches anyone");
    let only_specific = ConfigSet::new([linux], []);
    assert_eq!(only_specific.select(None), None);
}

#[test]
fn selector_values_compare_as_text() {
    let value = |v: any_value::Value| KeyValue {
        key: "k".into(),
        value: Some(AnyValue { value: Some(v) }),
    };
    let cases = [
        (any_value::Value::StringValue("7".into()), "7", true),
        (any_value::Value::IntValue(7), "7", true),
        (any_value::Value::IntValue(7), "07", true),
        (any_value::Value::IntValue(7), "8", false),
        (any_value::Value::BoolValue(true), "true", true),
        (any_value::Value::BoolValue(false), "true", false),
        (any_value::Value::DoubleValue(7.0), "7", false),
        (any_value::Value::BytesValue(Bytes::from_static(b"7")), "7", false),
    ];
    for (v, wanted, matches) in cases {
        let c = config("c", &[("k", wanted)], "x");
        let d = described(vec![value(v.clone())]);
        assert_eq!(c.matches(Some(&d)), matches, "{v:?} vs {wanted:?}");
    }
    // non-identifying attributes count too
    let c = config("c", &[("os.type", "linux")], "x");
    assert!(c.matches(Some(&described(vec![]))));
}

#[test]
fn the_hash_is_of_the_files_only_and_canonical() {
    let a = config("a", &[], "body");
    let b = config("b", &[("x", "y")], "body");
    assert_eq!(a.hash(), b.hash(), "name and selector are not content");
    assert_ne!(config("a", &[], "body2").hash(), a.hash());
    let split = |n1: &str, b1: &str| {
        config_hash(
            &[(n1.to_owned(), ConfigFile { body: b1.into(), content_type: String::new() })].into(),
        )
    };
    assert_ne!(split("ab", "c"), split("a", "bc"), "lengths separate the parts");
    let mut typed = files("body");
    typed.get_mut("collector.yaml").expect("file").content_type = "application/yaml".into();
    assert_ne!(config_hash(&typed), *a.hash(), "the content type is content");
    // the documented encoding, spelled out: a change of it cannot go unnoticed
    let mut spelled = Vec::new();
    spelled.extend_from_slice(b"opampd-config-v1\0");
    for part in [&b"collector.yaml"[..], b"text/yaml", b"body"] {
        spelled.extend_from_slice(&(part.len() as u64).to_be_bytes());
        spelled.extend_from_slice(part);
    }
    let want: [u8; 32] = sha2::Digest::finalize(sha2::Digest::chain_update(
        <sha2::Sha256 as sha2::Digest>::new(),
        &spelled,
    ))
    .into();
    assert_eq!(*a.hash(), want);
    assert_eq!(parse_hash_hex(&hash_hex(a.hash())), Some(*a.hash()));
    assert_eq!(parse_hash_hex("zz"), None);
    assert_eq!(parse_hash_hex(&"g".repeat(64)), None);
}

#[test]
fn bad_configs_are_refused_with_a_reason() {
    let ok_files = files("x");
    let bad = |name: &str,
               selector: BTreeMap<String, String>,
               files: BTreeMap<String, ConfigFile>,
               rollout: RolloutPolicy| {
        RemoteConfig::new(name.into(), selector, files, rollout).expect_err("refused").0
    };
    assert!(bad("", BTreeMap::new(), ok_files.clone(), RolloutPolicy::default()).contains("empty"));
    assert!(
        bad("a/b", BTreeMap::new(), ok_files.clone(), RolloutPolicy::default()).contains("'/'")
    );
    assert!(
        bad("..", BTreeMap::new(), ok_files.clone(), RolloutPolicy::default()).contains("`..`")
    );
    assert!(
        bad(&"n".repeat(129), BTreeMap::new(), ok_files.clone(), RolloutPolicy::default())
            .contains("128")
    );
    let many: BTreeMap<String, String> =
        (0..=MAX_SELECTOR_PAIRS).map(|i| (format!("k{i}"), "v".into())).collect();
    assert!(bad("n", many, ok_files.clone(), RolloutPolicy::default()).contains("selector"));
    let empty_key: BTreeMap<String, String> = [(String::new(), "v".into())].into();
    assert!(
        bad("n", empty_key, ok_files.clone(), RolloutPolicy::default())
            .contains("selector attribute name")
    );
    assert!(
        bad(
            "n",
            BTreeMap::new(),
            files(&"x".repeat(MAX_CONFIG_BYTES + 1)),
            RolloutPolicy::default()
        )
        .contains("total")
    );
    let unnamed: BTreeMap<String, ConfigFile> =
        [(String::new(), ConfigFile { body: "x".into(), content_type: String::new() })].into();
    assert!(bad("n", BTreeMap::new(), unnamed, RolloutPolicy::default()).contains("file name"));
    let zero = RolloutPolicy { max_agents_per_minute: Some(0), pause_on_failures: None };
    assert!(bad("n", BTreeMap::new(), ok_files.clone(), zero).contains("max_agents_per_minute"));
    let zero = RolloutPolicy { max_agents_per_minute: None, pause_on_failures: Some(0) };
    assert!(bad("n", BTreeMap::new(), ok_files, zero).contains("pause_on_failures"));
    assert!(
        RemoteConfig::new(
            "ok.name_1-x".into(),
            BTreeMap::new(),
            BTreeMap::new(),
            RolloutPolicy::default()
        )
        .is_ok()
    );
}

#[test]
fn rollout_claims_never_exceed_the_limit_in_any_minute() {
    let policy = RolloutPolicy { max_agents_per_minute: Some(100), pause_on_failures: None };
    let mut state = RolloutState::new([1; 32]);
    // claims every second for five minutes, wanting 30 each time
    let mut claims: Vec<(u64, u32)> = Vec::new();
    for s in 0..300u64 {
        let at = 1_000_000 + s * 1_000;
        let got = state.claim(policy, at, 30);
        claims.push((at, got));
    }
    // a slot is used at most SLOT_TTL_MS after its claim: sends in [t, t+60s) come from claims
    // in (t - TTL, t + 60s)
    for &(t, _) in &claims {
        let window: u32 = claims
            .iter()
            .filter(|(at, _)| *at + SLOT_TTL_MS > t && *at < t + ROLLOUT_WINDOW_MS)
            .map(|(_, n)| n)
            .sum();
        assert!(window <= 100, "{window} slots usable in the minute from {t}");
    }
    let total: u32 = claims.iter().map(|(_, n)| n).sum();
    assert!(total >= 4 * 90, "the limit is used, not starved: {total} in 5 minutes");
    // without a limit everything is granted
    let mut free = RolloutState::new([1; 32]);
    assert_eq!(free.claim(RolloutPolicy::default(), 0, 5_000), 5_000);
}

#[test]
fn failures_pause_the_rollout_until_resumed() {
    let policy = RolloutPolicy { max_agents_per_minute: Some(10), pause_on_failures: Some(3) };
    let mut state = RolloutState::new([1; 32]);
    assert!(!state.record_failures(policy, 1));
    assert!(!state.record_failures(policy, 1));
    assert!(state.record_failures(policy, 1), "the third failure pauses");
    assert!(!state.record_failures(policy, 1), "already paused");
    assert_eq!(state.claim(policy, 0, 5), 0, "a paused rollout grants nothing");
    state.resume();
    assert!(!state.paused);
    assert_eq!(state.failures, 0, "a fresh failure budget");
    assert_eq!(state.claim(policy, 0, 5), 5);
    let unlimited = RolloutPolicy { max_agents_per_minute: None, pause_on_failures: None };
    let mut never = RolloutState::new([1; 32]);
    assert!(!never.record_failures(unlimited, 1_000));
}
