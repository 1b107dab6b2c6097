//! One simulated agent: builds its next `AgentToServer` (full status or compressed heartbeat,
//! optionally with a deliberate sequence drift) and judges the server's reply against what the
//! OpAMP drift rules demand; an agent that accepts remote config also reports its status (see
//! [`crate::remote_config`]). Pure: no I/O and no clock reads (time is a parameter).

use std::collections::HashMap;

use opamp_proto::v1::{
    AgentConfigFile, AgentConfigMap, AgentDescription, AgentToServer, AnyValue, ComponentHealth,
    EffectiveConfig, KeyValue, ServerErrorResponseType, ServerToAgent, any_value,
};
use opamp_proto::{InstanceUid, Message, agent_caps, server_caps, server_flags};

use crate::config::FleetMix;
use crate::outcome::ErrorClass;
use crate::remote_config::{self, RemoteConfigAgent};
use crate::rng::SplitMix64;

/// What every simulated agent declares: a status-reporting collector with health, effective
/// config and heartbeats, the common real-world profile.
pub const AGENT_CAPS: u64 = agent_caps::REPORTS_STATUS
    | agent_caps::REPORTS_EFFECTIVE_CONFIG
    | agent_caps::REPORTS_HEALTH
    | agent_caps::REPORTS_HEARTBEAT;

/// What an agent that accepts remote config (`--remote-config-agents`) declares on top.
pub const REMOTE_CONFIG_CAPS: u64 =
    agent_caps::ACCEPTS_REMOTE_CONFIG | agent_caps::REPORTS_REMOTE_CONFIG;

/// The health an agent reports (see [`FleetMix`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Health {
    #[default]
    Ok,
    /// Healthy but `StatusRecoverableError`: an exporter retrying.
    Degraded,
    /// `healthy: false`, `StatusPermanentError`: an exporter that gave up.
    Error,
}

/// What one agent says about itself in its full statuses. The default is the uniform fleet:
/// `opampd-loadtest-agent` 0.1.0, healthy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Profile {
    /// `None`: `opampd-loadtest-agent`; `Some(k)`: `opampd-loadtest-agent-<k>`.
    pub service: Option<u32>,
    /// `service.version` `0.1.<version>`.
    pub version: u32,
    pub health: Health,
}

impl Profile {
    /// Agent `index`'s profile in `mix`: services and versions round robin, health drawn from
    /// `seed` and the index (a rerun with the same seed gives every agent the same profile).
    pub fn of(mix: &FleetMix, seed: u64, index: u64) -> Self {
        let services = u64::from(mix.services.max(1));
        let versions = u64::from(mix.versions.max(1));
        let service = (services > 1).then_some((index % services) as u32);
        let version = ((index / services) % versions) as u32;
        let health = if mix.degraded <= 0.0 && mix.error <= 0.0 {
            Health::Ok
        } else {
            let draw = SplitMix64::new(
                seed ^ 0x4845_414c_5448 ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            )
            .next_f64();
            if draw < mix.error {
                Health::Error
            } else if draw < mix.error + mix.degraded {
                Health::Degraded
            } else {
                Health::Ok
            }
        };
        Self { service, version, health }
    }

    pub fn service_name(&self) -> String {
        match self.service {
            None => "opampd-loadtest-agent".to_owned(),
            Some(k) => format!("opampd-loadtest-agent-{k}"),
        }
    }

    pub fn service_version(&self) -> String {
        format!("0.1.{}", self.version)
    }

    /// The health report of a full status, stamped `now_unix_nano`. An unhealthy agent names
    /// the component at fault in a pipeline tree, as a collector does.
    pub fn health(&self, now_unix_nano: u64) -> ComponentHealth {
        let at = |healthy: bool, status: &str, last_error: &str| ComponentHealth {
            healthy,
            start_time_unix_nano: now_unix_nano,
            status: status.into(),
            last_error: last_error.into(),
            status_time_unix_nano: now_unix_nano,
            ..Default::default()
        };
        let (healthy, status, error) = match self.health {
            Health::Ok => return at(true, "StatusOK", ""),
            Health::Degraded => (
                true,
                "StatusRecoverableError",
                "exporter otlp: sending queue is full, retrying: connection refused",
            ),
            Health::Error => (
                false,
                "StatusPermanentError",
                "exporter otlp: permanent error: certificate signed by unknown authority",
            ),
        };
        let pipeline = ComponentHealth {
            component_health_map: HashMap::from([
                ("receiver:otlp".to_owned(), at(true, "StatusOK", "")),
                ("exporter:otlp".to_owned(), at(healthy, status, error)),
            ]),
            ..at(healthy, status, error)
        };
        ComponentHealth {
            component_health_map: HashMap::from([("pipeline:traces".to_owned(), pipeline)]),
            ..at(healthy, status, error)
        }
    }
}

/// A deliberate sequence-number fault; each one obliges the server to ask for the full state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injection {
    None,
    /// Skips one number (last + 2): a lost message.
    Gap,
    /// Repeats the last number: a duplicate delivery.
    Duplicate,
    /// Goes back one number (last - 1): out of order.
    Backward,
}

impl Injection {
    /// Picks a fault kind from a uniform float: mostly gaps, the failure agents really see.
    pub fn pick(unit: f64) -> Self {
        if unit < 0.6 {
            Injection::Gap
        } else if unit < 0.8 {
            Injection::Duplicate
        } else {
            Injection::Backward
        }
    }
}

/// What the drift rules require of the reply to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The sequence is broken: the reply must carry ReportFullState.
    Ask,
    /// In order, with full state on record: ReportFullState would be a false alarm.
    DoNotAsk,
    /// A previous exchange failed, so whether the server saw it (and its seq) is unknown.
    Unknown,
}

/// What was sent, kept to judge the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub seq: u64,
    pub full: bool,
    pub injection: Injection,
    pub expect: Expect,
}

/// How the server's answer to the drift question compares with the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Correct,
    /// Asked for full state although the seq was in order and full state is on record.
    FalseFullState,
    /// Did not ask although the agent broke its sequence.
    MissedFullState,
    /// Could not be judged (see [`Expect::Unknown`]).
    Unjudged,
}

/// A reply that is not a valid answer to the message, by kind (for error accounting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyError {
    Decode,
    /// `error_response` set: its `ServerErrorResponseType` value, and whether it carried
    /// `retry_info` (when to come back).
    ErrorResponse {
        r#type: i32,
        retry: bool,
    },
    UidMismatch,
    /// `capabilities` lacks AcceptsStatus, which every response of a stateless server must carry.
    MissingCapabilities,
}

impl ReplyError {
    pub fn kind(&self) -> String {
        match self {
            ReplyError::Decode => "decode".into(),
            ReplyError::ErrorResponse { r#type: 1, .. } => "error_response_bad_request".into(),
            ReplyError::ErrorResponse { r#type: 2, .. } => "error_response_unavailable".into(),
            ReplyError::ErrorResponse { r#type: t, .. } => format!("error_response_type_{t}"),
            ReplyError::UidMismatch => "uid_mismatch".into(),
            ReplyError::MissingCapabilities => "missing_capabilities".into(),
        }
    }

    /// An in-band `Unavailable` (the WebSocket form of a 503).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ReplyError::ErrorResponse { r#type, .. }
            if *r#type == ServerErrorResponseType::Unavailable as i32)
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            ReplyError::ErrorResponse { retry: true, .. } if self.is_unavailable() => {
                ErrorClass::RetryAfter
            }
            _ => ErrorClass::Other,
        }
    }
}

/// An inclusive range of sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    pub lo: u64,
    pub hi: u64,
}

impl SeqRange {
    pub fn contains(&self, seq: u64) -> bool {
        (self.lo..=self.hi).contains(&seq)
    }

    fn widen(range: Option<SeqRange>, seq: u64) -> SeqRange {
        match range {
            None => SeqRange { lo: seq, hi: seq },
            Some(r) => SeqRange { lo: r.lo.min(seq), hi: r.hi.max(seq) },
        }
    }
}

/// What an agent knows about what the server stored for it: the basis of the end-of-run check
/// that no acknowledged write was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckView {
    pub uid: InstanceUid,
    /// Seq of the last message answered with a valid reply (acknowledged: the server applied it).
    pub acked: Option<u64>,
    /// Seqs sent after that one whose exchange failed: each may or may not have been applied.
    /// After a failure nothing is injected, so these are consecutive.
    pub unacked: Option<SeqRange>,
    /// The same for the failures before the last acknowledged message: one of them applied late
    /// (a request delayed inside a paused server) would overwrite an acknowledged write.
    pub older_unacked: Option<SeqRange>,
}

/// A valid reply, judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    pub asked_full_state: bool,
    pub verdict: Verdict,
    /// What the reply meant for remote config (a receipt, an acknowledged final status).
    pub remote_config: remote_config::Events,
}

/// A simulated agent's protocol state. The server's view is tracked conservatively: after any
/// failed exchange the agent stops judging until a reply puts both sides back in sync.
#[derive(Debug, Clone)]
pub struct Agent {
    uid: InstanceUid,
    index: u64,
    /// Seq of the last message sent; `None` before the first.
    last_sent: Option<u64>,
    /// A reply was received, so the server holds a record, and since the first message was a full
    /// status, that record has full state.
    known: bool,
    /// The server's stored seq equals `last_sent` (false after a failed exchange, whose message
    /// the server may or may not have applied).
    in_sync: bool,
    /// The next message must be a full status: the first one, or the server asked.
    owe_full: bool,
    /// See [`AckView`].
    acked: Option<u64>,
    unacked: Option<SeqRange>,
    older_unacked: Option<SeqRange>,
    /// `Some` when the agent accepts remote config (boxed: most agents of a run may not, and
    /// a run may hold millions).
    remote: Option<Box<RemoteConfigAgent>>,
    profile: Profile,
}

impl Agent {
    pub fn new(uid: InstanceUid, index: u64) -> Self {
        Self {
            uid,
            index,
            last_sent: None,
            known: false,
            in_sync: true,
            owe_full: true,
            acked: None,
            unacked: None,
            older_unacked: None,
            remote: None,
            profile: Profile::default(),
        }
    }

    /// The same agent describing itself as `profile` says.
    pub fn with_profile(mut self, profile: Profile) -> Self {
        self.profile = profile;
        self
    }

    /// The same agent accepting remote config; which receipts it fails is drawn from `seed`.
    pub fn accepting_remote_config(mut self, seed: u64, fail_rate: f64) -> Self {
        self.remote = Some(Box::new(RemoteConfigAgent::new(seed, self.index, fail_rate)));
        self
    }

    pub fn accepts_remote_config(&self) -> bool {
        self.remote.is_some()
    }

    /// The capabilities every message declares.
    pub fn capabilities(&self) -> u64 {
        if self.remote.is_some() { AGENT_CAPS | REMOTE_CONFIG_CAPS } else { AGENT_CAPS }
    }

    /// What this agent knows of its stored state, for the end-of-run check.
    pub fn ack_view(&self) -> AckView {
        AckView {
            uid: self.uid,
            acked: self.acked,
            unacked: self.unacked,
            older_unacked: self.older_unacked,
        }
    }

    pub fn uid(&self) -> &InstanceUid {
        &self.uid
    }

    pub fn index(&self) -> u64 {
        self.index
    }

    /// The server asked for full state and it has not been sent yet.
    pub fn owes_full(&self) -> bool {
        self.owe_full
    }

    /// A fault can only be judged when the server's seq is known, so injection is refused
    /// otherwise; a full status is never faulted to keep the follow-up path simple.
    pub fn can_inject(&self) -> bool {
        self.known && self.in_sync && !self.owe_full && self.last_sent.is_some()
    }

    /// Builds the next message; `now_unix_nano` stamps health. Returns what to judge the reply
    /// against and the encoded protobuf.
    pub fn next_message(&mut self, injection: Injection, now_unix_nano: u64) -> (Sent, Vec<u8>) {
        let injection = if self.can_inject() { injection } else { Injection::None };
        let seq = match (self.last_sent, injection) {
            (None, _) => 0,
            (Some(last), Injection::None) => last + 1,
            (Some(last), Injection::Gap) => last + 2,
            (Some(last), Injection::Duplicate) => last,
            // From 0 there is nothing earlier; a repeat is the nearest out-of-order number.
            (Some(last), Injection::Backward) => last.saturating_sub(1),
        };
        let full = self.owe_full;
        let expect = if !self.in_sync {
            Expect::Unknown
        } else if injection != Injection::None {
            Expect::Ask
        } else if self.known || full {
            // Known with full state and in order, or a new agent enrolling with a full status:
            // both must be accepted without a second round.
            Expect::DoNotAsk
        } else {
            // Never reached: an unknown agent always owes a full status.
            Expect::Unknown
        };
        self.last_sent = Some(seq);
        let mut msg = if full { self.full_status(seq, now_unix_nano) } else { self.heartbeat(seq) };
        // A status change is ordinary state the message carries: it changes nothing of what the
        // drift rules expect, which depend on the sequence alone.
        msg.remote_config_status = self.remote.as_mut().and_then(|r| r.status_for_message(full));
        (Sent { seq, full, injection, expect }, msg.encode_to_vec())
    }

    /// Checks a 200 reply body and updates the agent's view of the server.
    pub fn on_reply(&mut self, sent: &Sent, body: &[u8]) -> Result<Judged, ReplyError> {
        let reply = match ServerToAgent::decode(body) {
            Ok(r) => r,
            Err(_) => return Err(self.failed(sent)),
        };
        if let Some(err) = &reply.error_response {
            let e = ReplyError::ErrorResponse { r#type: err.r#type, retry: err.details.is_some() };
            return Err(self.failed_with(sent, e));
        }
        if reply.instance_uid.as_ref() != self.uid.as_bytes() {
            return Err(self.failed_with(sent, ReplyError::UidMismatch));
        }
        if reply.capabilities & server_caps::ACCEPTS_STATUS == 0 {
            return Err(self.failed_with(sent, ReplyError::MissingCapabilities));
        }
        let asked = reply.flags & server_flags::REPORT_FULL_STATE != 0;
        let verdict = match (sent.expect, asked) {
            (Expect::Unknown, _) => Verdict::Unjudged,
            (Expect::Ask, true) | (Expect::DoNotAsk, false) => Verdict::Correct,
            (Expect::Ask, false) => Verdict::MissedFullState,
            (Expect::DoNotAsk, true) => Verdict::FalseFullState,
        };
        self.known = true;
        self.in_sync = true;
        self.acked = Some(sent.seq);
        if let Some(r) = self.unacked.take() {
            self.older_unacked = Some(r);
        }
        // Real agents answer the flag with a full status at once, false alarm or not.
        self.owe_full = asked;
        let completion = self.remote.as_mut().and_then(|r| r.on_ack());
        let receipt = reply.remote_config.map(|rc| {
            let receipt = match self.remote.as_mut() {
                Some(r) => r.on_receipt(rc.config_hash.clone()),
                None => remote_config::Receipt::Unexpected,
            };
            (receipt, rc.config_hash)
        });
        let remote_config = remote_config::Events { receipt, completion };
        Ok(Judged { asked_full_state: asked, verdict, remote_config })
    }

    /// The exchange failed (transport error, non-200, or a bad reply): the server may or may not
    /// have applied the message, so stop judging until the next good reply.
    pub fn on_error(&mut self, sent: &Sent) {
        if let Some(r) = self.remote.as_mut() {
            r.on_error();
        }
        self.in_sync = false;
        self.unacked = Some(SeqRange::widen(self.unacked, sent.seq));
        if sent.full {
            self.owe_full = true;
        }
    }

    fn failed(&mut self, sent: &Sent) -> ReplyError {
        self.failed_with(sent, ReplyError::Decode)
    }

    fn failed_with(&mut self, sent: &Sent, err: ReplyError) -> ReplyError {
        self.on_error(sent);
        err
    }

    fn heartbeat(&self, seq: u64) -> AgentToServer {
        AgentToServer {
            instance_uid: self.uid.as_bytes().to_vec().into(),
            sequence_num: seq,
            capabilities: self.capabilities(),
            ..Default::default()
        }
    }

    fn full_status(&self, seq: u64, now_unix_nano: u64) -> AgentToServer {
        let host = format!("loadtest-host-{:04}", self.index % 1000);
        let description = AgentDescription {
            identifying_attributes: vec![
                kv("service.name", &self.profile.service_name()),
                kv("service.instance.id", &self.uid.to_string()),
                kv("service.version", &self.profile.service_version()),
            ],
            non_identifying_attributes: vec![
                kv("host.name", &host),
                kv("os.type", "linux"),
                kv("host.arch", "amd64"),
            ],
        };
        let health = self.profile.health(now_unix_nano);
        // A small collector config, about the size of a minimal real one.
        let config = format!(
            "receivers:\n  otlp:\n    protocols:\n      grpc: {{}}\nexporters:\n  debug: {{}}\n\
             service:\n  telemetry:\n    resource:\n      host: {host}\n  pipelines:\n    traces:\n      \
             receivers: [otlp]\n      exporters: [debug]\n"
        );
        let effective_config = EffectiveConfig {
            config_map: Some(AgentConfigMap {
                config_map: HashMap::from([(
                    String::new(),
                    AgentConfigFile {
                        body: config.into_bytes().into(),
                        content_type: "text/yaml".into(),
                        ..Default::default()
                    },
                )]),
            }),
        };
        AgentToServer {
            agent_description: Some(description),
            health: Some(health),
            effective_config: Some(effective_config),
            ..self.heartbeat(seq)
        }
    }
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote_config::{Completion, Events, Receipt};
    use opamp_proto::v1::{
        AgentRemoteConfig, AgentToServer as A2S, RemoteConfigStatuses, ServerErrorResponse,
    };

    fn agent() -> Agent {
        Agent::new(InstanceUid::from_bytes([7; 16]), 3)
    }

    fn reply(uid: &InstanceUid, flags: u64) -> Vec<u8> {
        ServerToAgent {
            instance_uid: uid.as_bytes().to_vec().into(),
            flags,
            capabilities: server_caps::ACCEPTS_STATUS,
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn ok(a: &mut Agent, s: &Sent) -> Judged {
        let uid = *a.uid();
        a.on_reply(s, &reply(&uid, 0)).unwrap()
    }

    fn asked(a: &mut Agent, s: &Sent) -> Judged {
        let uid = *a.uid();
        a.on_reply(s, &reply(&uid, server_flags::REPORT_FULL_STATE)).unwrap()
    }

    #[test]
    fn first_message_is_a_full_status_at_seq_zero_that_must_not_be_refused() {
        let mut a = agent();
        let (s, body) = a.next_message(Injection::Gap, 1);
        assert_eq!(
            s,
            Sent { seq: 0, full: true, injection: Injection::None, expect: Expect::DoNotAsk }
        );
        let m = A2S::decode(&body[..]).unwrap();
        assert_eq!(m.capabilities, AGENT_CAPS);
        assert!(
            m.agent_description.is_some() && m.health.is_some() && m.effective_config.is_some()
        );
        assert_eq!(m.instance_uid.as_ref(), a.uid().as_bytes());
        assert_eq!(ok(&mut a, &s).verdict, Verdict::Correct);
    }

    #[test]
    fn heartbeats_carry_only_uid_seq_and_caps_in_order() {
        let mut a = agent();
        let (s0, _) = a.next_message(Injection::None, 1);
        ok(&mut a, &s0);
        let (s1, body) = a.next_message(Injection::None, 2);
        assert_eq!((s1.seq, s1.full, s1.expect), (1, false, Expect::DoNotAsk));
        let m = A2S::decode(&body[..]).unwrap();
        assert_eq!(
            m,
            A2S {
                instance_uid: m.instance_uid.clone(),
                sequence_num: 1,
                capabilities: AGENT_CAPS,
                ..Default::default()
            }
        );
    }

    #[test]
    fn each_injection_breaks_the_sequence_and_expects_a_request() {
        for (inj, seq) in [(Injection::Gap, 3), (Injection::Duplicate, 1), (Injection::Backward, 0)]
        {
            let mut a = agent();
            let (s0, _) = a.next_message(Injection::None, 1);
            ok(&mut a, &s0);
            let (s1, _) = a.next_message(Injection::None, 1);
            ok(&mut a, &s1);
            let (s, _) = a.next_message(inj, 1);
            assert_eq!((s.seq, s.injection, s.expect), (seq, inj, Expect::Ask), "{inj:?}");
            assert_eq!(ok(&mut a, &s).verdict, Verdict::MissedFullState);
        }
    }

    #[test]
    fn a_request_is_answered_with_an_in_order_full_status() {
        let mut a = agent();
        let (s0, _) = a.next_message(Injection::None, 1);
        ok(&mut a, &s0);
        let (gap, _) = a.next_message(Injection::Gap, 1);
        assert_eq!(asked(&mut a, &gap).verdict, Verdict::Correct);
        assert!(a.owes_full());
        let (full, _) = a.next_message(Injection::Gap, 1);
        assert_eq!(
            full,
            Sent { seq: 3, full: true, injection: Injection::None, expect: Expect::DoNotAsk }
        );
        assert_eq!(asked(&mut a, &full).verdict, Verdict::FalseFullState);
    }

    #[test]
    fn in_order_request_is_a_false_full_state() {
        let mut a = agent();
        let (s0, _) = a.next_message(Injection::None, 1);
        ok(&mut a, &s0);
        let (s1, _) = a.next_message(Injection::None, 1);
        assert_eq!(asked(&mut a, &s1).verdict, Verdict::FalseFullState);
    }

    #[test]
    fn after_an_error_nothing_is_judged_until_a_good_reply() {
        let mut a = agent();
        let (s0, _) = a.next_message(Injection::None, 1);
        a.on_error(&s0);
        let (s1, _) = a.next_message(Injection::Gap, 1);
        // The enrollment is retried as a full status, unjudged, with no fault injected.
        assert_eq!(
            s1,
            Sent { seq: 1, full: true, injection: Injection::None, expect: Expect::Unknown }
        );
        assert_eq!(asked(&mut a, &s1).verdict, Verdict::Unjudged);
        let (s2, _) = a.next_message(Injection::None, 1);
        assert_eq!((s2.seq, s2.full, s2.expect), (2, true, Expect::DoNotAsk));
    }

    #[test]
    fn bad_replies_are_errors_and_desync() {
        let mut a = agent();
        let (s0, _) = a.next_message(Injection::None, 1);
        assert_eq!(a.on_reply(&s0, b"\xff\xff"), Err(ReplyError::Decode));
        let other = InstanceUid::from_bytes([9; 16]);
        let (s1, _) = a.next_message(Injection::None, 1);
        assert_eq!(a.on_reply(&s1, &reply(&other, 0)), Err(ReplyError::UidMismatch));
        let no_caps = ServerToAgent {
            instance_uid: a.uid().as_bytes().to_vec().into(),
            ..Default::default()
        };
        let (s2, _) = a.next_message(Injection::None, 1);
        assert_eq!(a.on_reply(&s2, &no_caps.encode_to_vec()), Err(ReplyError::MissingCapabilities));
        let err = ServerToAgent {
            instance_uid: a.uid().as_bytes().to_vec().into(),
            error_response: Some(ServerErrorResponse { r#type: 2, ..Default::default() }),
            ..Default::default()
        };
        let (s3, _) = a.next_message(Injection::None, 1);
        let unavailable = ReplyError::ErrorResponse { r#type: 2, retry: false };
        assert_eq!(a.on_reply(&s3, &err.encode_to_vec()), Err(unavailable));
        assert_eq!(unavailable.kind(), "error_response_unavailable");
        // without retry info an in-band Unavailable is not the overload signal agents honour
        assert_eq!(unavailable.class(), ErrorClass::Other);
        let (s4, _) = a.next_message(Injection::None, 1);
        assert_eq!(s4.expect, Expect::Unknown);
    }

    #[test]
    fn unavailable_with_retry_info_is_the_retry_after_class() {
        let with_retry = ReplyError::ErrorResponse { r#type: 2, retry: true };
        assert!(with_retry.is_unavailable());
        assert_eq!(with_retry.class(), ErrorClass::RetryAfter);
        let bad_request = ReplyError::ErrorResponse { r#type: 1, retry: true };
        assert_eq!(bad_request.class(), ErrorClass::Other);
        assert_eq!(ReplyError::Decode.class(), ErrorClass::Other);
    }

    #[test]
    fn the_last_acknowledged_seq_and_the_unacknowledged_ones_after_it_are_tracked() {
        let mut a = agent();
        assert_eq!((a.ack_view().acked, a.ack_view().unacked), (None, None));
        let (s0, _) = a.next_message(Injection::None, 1);
        ok(&mut a, &s0);
        let (s1, _) = a.next_message(Injection::None, 1);
        ok(&mut a, &s1);
        assert_eq!(a.ack_view().acked, Some(1));
        // an injected gap (3) fails, then 4 and 5 fail too: any of them may have been applied
        let (s3, _) = a.next_message(Injection::Gap, 1);
        assert_eq!(s3.seq, 3);
        a.on_error(&s3);
        for _ in 0..2 {
            let (s, _) = a.next_message(Injection::Gap, 1);
            a.on_error(&s);
        }
        let v = a.ack_view();
        assert_eq!(
            (v.acked, v.unacked, v.older_unacked),
            (Some(1), Some(SeqRange { lo: 3, hi: 5 }), None)
        );
        assert!(v.unacked.unwrap().contains(4) && !v.unacked.unwrap().contains(2));
        // the next good reply acknowledges 6; 3..=5 become the older unacknowledged ones
        let (s6, _) = a.next_message(Injection::None, 1);
        asked(&mut a, &s6);
        let v = a.ack_view();
        assert_eq!(
            (v.acked, v.unacked, v.older_unacked),
            (Some(6), None, Some(SeqRange { lo: 3, hi: 5 }))
        );
        assert_eq!(v.uid, *a.uid());
    }

    fn with_config(uid: &InstanceUid, flags: u64, hash: u8) -> Vec<u8> {
        ServerToAgent {
            instance_uid: uid.as_bytes().to_vec().into(),
            flags,
            capabilities: server_caps::ACCEPTS_STATUS | server_caps::OFFERS_REMOTE_CONFIG,
            remote_config: Some(AgentRemoteConfig {
                config: Some(AgentConfigMap::default()),
                config_hash: vec![hash; 32].into(),
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn status(body: &[u8]) -> Option<(Vec<u8>, i32)> {
        let m = A2S::decode(body).unwrap();
        m.remote_config_status.map(|s| (s.last_remote_config_hash.to_vec(), s.status))
    }

    const APPLYING: i32 = RemoteConfigStatuses::Applying as i32;
    const APPLIED: i32 = RemoteConfigStatuses::Applied as i32;

    #[test]
    fn an_accepting_agent_declares_it_and_reports_a_receipt_applying_then_applied() {
        let mut a = agent().accepting_remote_config(1, 0.0);
        let uid = *a.uid();
        let (s0, body) = a.next_message(Injection::None, 1);
        let m = A2S::decode(&body[..]).unwrap();
        assert_eq!(m.capabilities, AGENT_CAPS | REMOTE_CONFIG_CAPS);
        // a full report of a ReportsRemoteConfig agent is only complete with the status
        assert_eq!(status(&body), Some((vec![], RemoteConfigStatuses::Unset as i32)));
        let j = a.on_reply(&s0, &with_config(&uid, 0, 1)).unwrap();
        assert_eq!(j.verdict, Verdict::Correct);
        assert_eq!(j.remote_config.receipt, Some((Receipt::New, vec![1; 32].into())));
        let (s1, body) = a.next_message(Injection::None, 2);
        assert_eq!(A2S::decode(&body[..]).unwrap().capabilities, AGENT_CAPS | REMOTE_CONFIG_CAPS);
        assert_eq!(status(&body), Some((vec![1; 32], APPLYING)));
        assert_eq!(ok(&mut a, &s1).remote_config, Events::default());
        let (s2, body) = a.next_message(Injection::None, 3);
        assert_eq!(status(&body), Some((vec![1; 32], APPLIED)));
        let done = ok(&mut a, &s2).remote_config.completion;
        assert_eq!(done, Some(Completion { hash: vec![1; 32].into(), failed: false }));
        let (_, body) = a.next_message(Injection::None, 4);
        assert_eq!(status(&body), None);
    }

    #[test]
    fn a_status_change_is_not_drift() {
        // in order with a new status: asking is a false alarm, not asking is correct
        for (flags, want) in
            [(0, Verdict::Correct), (server_flags::REPORT_FULL_STATE, Verdict::FalseFullState)]
        {
            let mut a = agent().accepting_remote_config(1, 0.0);
            let uid = *a.uid();
            let (s0, _) = a.next_message(Injection::None, 1);
            a.on_reply(&s0, &with_config(&uid, 0, 1)).unwrap();
            let (s1, body) = a.next_message(Injection::None, 2);
            assert_eq!(
                (s1.expect, status(&body)),
                (Expect::DoNotAsk, Some((vec![1; 32], APPLYING)))
            );
            assert_eq!(a.on_reply(&s1, &reply(&uid, flags)).unwrap().verdict, want);
        }
    }

    #[test]
    fn a_full_report_asked_for_carries_the_current_status() {
        let mut a = agent().accepting_remote_config(1, 0.0);
        let uid = *a.uid();
        let (s0, _) = a.next_message(Injection::None, 1);
        a.on_reply(&s0, &with_config(&uid, 0, 2)).unwrap();
        let (s1, _) = a.next_message(Injection::None, 1);
        ok(&mut a, &s1);
        let (s2, body) = a.next_message(Injection::None, 1);
        assert_eq!(status(&body), Some((vec![2; 32], APPLIED)));
        assert!(ok(&mut a, &s2).remote_config.completion.is_some());
        let (gap, body) = a.next_message(Injection::Gap, 1);
        assert_eq!(status(&body), None);
        asked(&mut a, &gap);
        let (full, body) = a.next_message(Injection::None, 1);
        assert!(full.full);
        assert_eq!(status(&body), Some((vec![2; 32], APPLIED)));
        // acknowledged again, but the rollout counted it once already
        assert_eq!(ok(&mut a, &full).remote_config.completion, None);
    }

    #[test]
    fn a_status_lost_with_its_exchange_is_sent_again() {
        let mut a = agent().accepting_remote_config(1, 0.0);
        let uid = *a.uid();
        let (s0, _) = a.next_message(Injection::None, 1);
        a.on_reply(&s0, &with_config(&uid, 0, 3)).unwrap();
        let (s1, _) = a.next_message(Injection::None, 1);
        ok(&mut a, &s1);
        let (s2, _) = a.next_message(Injection::None, 1);
        a.on_error(&s2);
        let (s3, body) = a.next_message(Injection::None, 1);
        assert_eq!(status(&body), Some((vec![3; 32], APPLIED)));
        // a bad reply is an error too
        assert_eq!(a.on_reply(&s3, b"\xff"), Err(ReplyError::Decode));
        let (s4, body) = a.next_message(Injection::None, 1);
        assert_eq!(status(&body), Some((vec![3; 32], APPLIED)));
        assert!(ok(&mut a, &s4).remote_config.completion.is_some());
    }

    #[test]
    fn a_second_delivery_is_a_duplicate_and_one_to_a_non_accepting_agent_unexpected() {
        let mut a = agent().accepting_remote_config(1, 0.0);
        let uid = *a.uid();
        let (s0, _) = a.next_message(Injection::None, 1);
        a.on_reply(&s0, &with_config(&uid, 0, 4)).unwrap();
        let (s1, _) = a.next_message(Injection::None, 1);
        let j = a.on_reply(&s1, &with_config(&uid, 0, 4)).unwrap();
        assert_eq!(j.remote_config.receipt, Some((Receipt::Duplicate, vec![4; 32].into())));

        let mut plain = agent();
        assert!(!plain.accepts_remote_config());
        let (p0, body) = plain.next_message(Injection::None, 1);
        assert_eq!(status(&body), None);
        let j = plain.on_reply(&p0, &with_config(&uid, 0, 4)).unwrap();
        assert_eq!(j.remote_config.receipt, Some((Receipt::Unexpected, vec![4; 32].into())));
        let (_, body) = plain.next_message(Injection::None, 1);
        assert_eq!(status(&body), None);
    }

    #[test]
    fn a_failed_backward_injection_widens_the_range_downwards() {
        let mut a = agent();
        for _ in 0..3 {
            let (s, _) = a.next_message(Injection::None, 1);
            ok(&mut a, &s);
        }
        let (back, _) = a.next_message(Injection::Backward, 1);
        assert_eq!(back.seq, 1);
        a.on_error(&back);
        let (next, _) = a.next_message(Injection::None, 1);
        assert_eq!(next.seq, 2);
        a.on_error(&next);
        assert_eq!(a.ack_view().unacked, Some(SeqRange { lo: 1, hi: 2 }));
        assert_eq!(a.ack_view().acked, Some(2));
    }

    fn described(body: &[u8]) -> (String, String, ComponentHealth) {
        let m = A2S::decode(body).unwrap();
        let d = m.agent_description.unwrap();
        let text = |key: &str| {
            let kv = d.identifying_attributes.iter().find(|kv| kv.key == key).unwrap();
            match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                other => panic!("{key}: {other:?}"),
            }
        };
        (text("service.name"), text("service.version"), m.health.unwrap())
    }

    #[test]
    fn the_default_profile_is_the_uniform_fleet_every_benchmark_ran() {
        let mix = FleetMix::default();
        for i in 0..50 {
            assert_eq!(Profile::of(&mix, 1, i), Profile::default());
        }
        let (_, body) = agent().next_message(Injection::None, 9);
        let (service, version, health) = described(&body);
        assert_eq!((service.as_str(), version.as_str()), ("opampd-loadtest-agent", "0.1.0"));
        assert_eq!(
            health,
            ComponentHealth {
                healthy: true,
                start_time_unix_nano: 9,
                status: "StatusOK".into(),
                status_time_unix_nano: 9,
                ..Default::default()
            }
        );
    }

    #[test]
    fn a_mixed_fleet_spreads_services_versions_and_health_reproducibly() {
        let mix = FleetMix { services: 3, versions: 2, degraded: 0.2, error: 0.1 };
        let profiles: Vec<Profile> = (0..3000).map(|i| Profile::of(&mix, 7, i)).collect();
        assert_eq!(profiles, (0..3000).map(|i| Profile::of(&mix, 7, i)).collect::<Vec<_>>());
        for (k, want) in [(0, 1000), (1, 1000), (2, 1000)] {
            assert_eq!(profiles.iter().filter(|p| p.service == Some(k)).count(), want);
        }
        for v in 0..2 {
            assert_eq!(profiles.iter().filter(|p| p.version == v).count(), 1500);
        }
        let share = |h| profiles.iter().filter(|p| p.health == h).count() as f64 / 3000.0;
        assert!((share(Health::Error) - 0.1).abs() < 0.03, "{}", share(Health::Error));
        assert!((share(Health::Degraded) - 0.2).abs() < 0.03, "{}", share(Health::Degraded));

        let sick = profiles.iter().position(|p| p.health == Health::Error).unwrap();
        let mut a =
            Agent::new(InstanceUid::from_bytes([1; 16]), sick as u64).with_profile(profiles[sick]);
        let (s0, body) = a.next_message(Injection::None, 5);
        let (service, version, health) = described(&body);
        assert_eq!(service, format!("opampd-loadtest-agent-{}", sick % 3));
        assert_eq!(version, format!("0.1.{}", (sick / 3) % 2));
        assert!(!health.healthy);
        let exporter =
            &health.component_health_map["pipeline:traces"].component_health_map["exporter:otlp"];
        assert!(!exporter.healthy && exporter.last_error.contains("exporter otlp"));
        // heartbeats stay bare whatever the profile
        ok(&mut a, &s0);
        let (_, body) = a.next_message(Injection::None, 6);
        let m = A2S::decode(&body[..]).unwrap();
        assert!(m.health.is_none() && m.agent_description.is_none());
    }
}
