//! Connection and batching settings of the Elasticsearch backend: the one type every caller
//! (opampd's command line, tests, tools) builds, its defaults, its validation, and the one
//! place that turns it into a client. Secrets never reach a log: they are [`Secret`]s.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use elasticsearch::Elasticsearch;
use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::headers::{HeaderName, HeaderValue};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use url::Url;

use crate::{Secret, StoreError};

/// The index Kibana Fleet lists agents from (ES resolves it to the system index `.fleet-agents-7`).
pub const DEFAULT_INDEX: &str = ".fleet-agents";

/// The remote-config index used next to fleet's agent index (see [`EsConfig::config_index`]).
pub const DEFAULT_FLEET_CONFIG_INDEX: &str = ".fleet-policies-opampd-configs";

/// The agent-state index used next to fleet's agent index (see [`EsConfig::state_index`]).
pub const DEFAULT_FLEET_STATE_INDEX: &str = ".fleet-policies-opampd-state";

/// How often Elasticsearch refreshes an index opampd creates. Nothing on the OpAMP path
/// searches (reads are realtime, by id), the admin's listings refresh before they search, and
/// each refresh of a busy index costs Elasticsearch a new segment to merge.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// The index Kibana Fleet keeps enrollment API keys in (agent authentication reads it).
pub const DEFAULT_ENROLLMENT_INDEX: &str = ".fleet-enrollment-api-keys";

/// Group-commit and read-batching defaults, sized for a 2-core ES node.
pub const DEFAULT_BULK_MAX_ITEMS: usize = 500;
/// The longest a write waits for others to share its `_bulk`; how long it really waits adapts
/// to the rate (see `batch_wait::BatchWait`).
pub const DEFAULT_BULK_MAX_WAIT: Duration = Duration::from_millis(50);
pub const DEFAULT_BULKS_IN_FLIGHT: usize = 4;
pub const DEFAULT_WRITE_QUEUE: usize = 20_000;
pub const DEFAULT_MGET_MAX_ITEMS: usize = 256;
/// The longest a cache-miss read waits for others to share its `_mget`; how long it really
/// waits adapts to the rate of reads, as the bulk wait does.
pub const DEFAULT_MGET_MAX_WAIT: Duration = Duration::from_millis(5);

/// Upper bounds, checked by [`EsConfig::validate`].
pub const MAX_BATCH_ITEMS: usize = 10_000;
pub const MAX_IN_FLIGHT: usize = 64;
pub const MAX_QUEUE: usize = 1_000_000;
/// Longest `refresh_interval` accepted: the admin's listings refresh before they search, but
/// an operator searching the index directly should not wait longer than this.
pub const MAX_REFRESH_INTERVAL: Duration = Duration::from_secs(3600);
/// A batching wait is added to every message's latency.
pub const MAX_BATCH_WAIT: Duration = Duration::from_secs(1);

/// Header fleet-server sends; without it ES answers writes to `.fleet-agents` with a deprecation
/// warning (system index access).
const PRODUCT_ORIGIN_HEADER: &str = "x-elastic-product-origin";
const PRODUCT_ORIGIN: &str = "fleet";

/// How the store authenticates to Elasticsearch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum EsAuth {
    #[default]
    None,
    /// An API key, either as `id:key` or already encoded as `base64(id:key)` (what Kibana
    /// shows as "encoded").
    ApiKey(Secret),
    Basic {
        username: String,
        password: Secret,
    },
    /// A service account token (fleet-server's is of `elastic/fleet-server`, the identity that
    /// may read and write the `.fleet-*` system indices), sent as `Authorization: Bearer`.
    ServiceToken(Secret),
}

/// The PEM certificates of the CAs Elasticsearch's certificate must chain to, trusted in
/// addition to the built-in web roots. The chain and the host name are always verified: there
/// is no setting that turns verification off. Only built by [`CaCert::from_pem`], so a value
/// of this type is a usable trust anchor.
#[derive(Clone, PartialEq, Eq)]
pub struct CaCert(Arc<[u8]>);

impl CaCert {
    /// Checks that `pem` holds at least one certificate the TLS library accepts as a root.
    pub fn from_pem(pem: impl Into<Vec<u8>>) -> Result<Self, String> {
        let ca = Self(pem.into().into());
        let certificate = ca.certificate()?;
        // The certificates are only decoded when a client is built: build one (no connection
        // is made) so a bad file fails the configuration, not the first request.
        let probe = Url::parse("https://localhost/").map_err(|e| e.to_string())?;
        TransportBuilder::new(SingleNodeConnectionPool::new(probe))
            .cert_validation(CertificateValidation::Full(certificate))
            .build()
            .map_err(|e| format!("not a usable PEM CA certificate: {e}"))?;
        Ok(ca)
    }

    fn certificate(&self) -> Result<Certificate, String> {
        Certificate::from_pem(&self.0).map_err(|e| format!("not a PEM certificate: {e}"))
    }
}

impl fmt::Debug for CaCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaCert({} bytes of PEM)", self.0.len())
    }
}

/// Settings of [`ElasticsearchStore`](super::ElasticsearchStore). Start from [`EsConfig::new`]
/// and override fields; every queue and wait is bounded by one of them.
#[derive(Clone, PartialEq, Eq)]
pub struct EsConfig {
    /// Base URL of the cluster, e.g. `http://127.0.0.1:9200`. Carries no credentials (they
    /// would show wherever the URL does); those go in `auth`.
    pub url: Url,
    /// Index (or alias) holding one document per agent.
    pub index: String,
    /// Index of fleet's enrollment API keys, read by agent authentication
    /// ([`EnrollmentAuth`](super::enrollment::EnrollmentAuth)).
    pub enrollment_index: String,
    /// Index of the remote configs; `None` for the default, see [`config_index`](Self::config_index).
    pub config_index: Option<String>,
    /// Index of the agents' state records (written on every message); `None` for the default,
    /// see [`state_index`](Self::state_index).
    pub state_index: Option<String>,
    /// `refresh_interval` of the indices opampd creates (an existing index keeps its own).
    pub refresh_interval: Duration,
    pub auth: EsAuth,
    /// Extra trust anchors for an `https` URL; `None` trusts the built-in web roots only.
    pub ca_cert: Option<CaCert>,
    /// Upper bound on any request, and on how long a caller waits for its answer.
    pub request_timeout: Duration,
    /// Timeout of the readiness probe (kept short: `/readyz` must answer fast).
    pub ready_timeout: Duration,
    /// Most operations in one `_bulk` request.
    pub bulk_max_items: usize,
    /// Longest a write waits for others to share its `_bulk` (group commit); the wait adapts
    /// below it to how fast writes arrive.
    pub bulk_max_wait: Duration,
    /// `_bulk` requests in flight at once.
    pub bulks_in_flight: usize,
    /// Writes accepted but not yet sent; beyond it `put` fails fast with `Overloaded`.
    pub write_queue: usize,
    /// Most ids in one `_mget`.
    pub mget_max_items: usize,
    /// Longest a cache-miss read waits for others to share its `_mget`.
    pub mget_max_wait: Duration,
    /// `_mget`/`GET` requests in flight at once.
    pub mgets_in_flight: usize,
    /// Reads accepted but not yet sent; beyond it `get` fails fast with `Overloaded`.
    pub read_queue: usize,
}

/// A rejected setting. `setting` is the setting's name as opampd's flags spell it after
/// `--es-` (`url`, `index`, `bulk-max-items`, ...), so the command line can name its flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct InvalidEsConfig {
    pub setting: &'static str,
    pub reason: String,
}

impl EsConfig {
    /// The defaults, for the cluster at `url`.
    pub fn new(url: Url) -> Self {
        Self {
            url,
            index: DEFAULT_INDEX.to_owned(),
            enrollment_index: DEFAULT_ENROLLMENT_INDEX.to_owned(),
            config_index: None,
            state_index: None,
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            auth: EsAuth::None,
            ca_cert: None,
            request_timeout: Duration::from_secs(10),
            ready_timeout: Duration::from_secs(2),
            bulk_max_items: DEFAULT_BULK_MAX_ITEMS,
            bulk_max_wait: DEFAULT_BULK_MAX_WAIT,
            bulks_in_flight: DEFAULT_BULKS_IN_FLIGHT,
            write_queue: DEFAULT_WRITE_QUEUE,
            mget_max_items: DEFAULT_MGET_MAX_ITEMS,
            mget_max_wait: DEFAULT_MGET_MAX_WAIT,
            mgets_in_flight: 4,
            read_queue: 20_000,
        }
    }

    /// The one validation of these settings, run before anything is spawned (and by opampd
    /// before any port is bound).
    pub fn validate(&self) -> Result<(), InvalidEsConfig> {
        let bad = |setting, reason: String| Err(InvalidEsConfig { setting, reason });
        if !matches!(self.url.scheme(), "http" | "https") || self.url.host().is_none() {
            return bad(
                "url",
                format!("{:?} must be an http(s) url with a host", self.redacted_url().as_str()),
            );
        }
        if !self.url.username().is_empty() || self.url.password().is_some() {
            return bad(
                "url",
                "must not carry credentials; give them as a username and password or an api key"
                    .into(),
            );
        }
        if let Err(why) = check_index_name(&self.index) {
            return bad("index", format!("{:?} is not a valid index name: {why}", self.index));
        }
        if let Err(why) = check_index_name(&self.enrollment_index) {
            return bad(
                "enrollment-index",
                format!("{:?} is not a valid index name: {why}", self.enrollment_index),
            );
        }
        let config_index = self.config_index();
        if let Err(why) = check_index_name(&config_index) {
            return bad(
                "config-index",
                format!("{config_index:?} is not a valid index name: {why}"),
            );
        }
        if config_index == self.index || config_index == self.enrollment_index {
            return bad(
                "config-index",
                format!("{config_index:?} must differ from the agent and enrollment indices"),
            );
        }
        let state_index = self.state_index();
        if let Err(why) = check_index_name(&state_index) {
            return bad("state-index", format!("{state_index:?} is not a valid index name: {why}"));
        }
        if [&self.index, &self.enrollment_index, &config_index].contains(&&state_index) {
            return bad(
                "state-index",
                format!(
                    "{state_index:?} must differ from the agent, enrollment and config indices"
                ),
            );
        }
        if state_index.starts_with(DEFAULT_INDEX) {
            // see config_index: Elasticsearch would put it behind the `.fleet-agents` alias
            return bad(
                "state-index",
                format!("{state_index:?} is in the {DEFAULT_INDEX} system index pattern"),
            );
        }
        if self.refresh_interval.is_zero() || self.refresh_interval > MAX_REFRESH_INTERVAL {
            return bad(
                "refresh-interval",
                format!("must be between 1ms and {}s", MAX_REFRESH_INTERVAL.as_secs()),
            );
        }
        match &self.auth {
            EsAuth::ApiKey(key) if key.is_empty() => return bad("api-key", "is empty".into()),
            EsAuth::ServiceToken(token) if token.is_empty() => {
                return bad("service-token", "is empty".into());
            }
            EsAuth::Basic { username, .. } if username.is_empty() => {
                return bad("username", "is empty".into());
            }
            _ => {}
        }
        for (setting, value, max) in [
            ("bulk-max-items", self.bulk_max_items, MAX_BATCH_ITEMS),
            ("bulks-in-flight", self.bulks_in_flight, MAX_IN_FLIGHT),
            ("write-queue", self.write_queue, MAX_QUEUE),
            ("mget-max-items", self.mget_max_items, MAX_BATCH_ITEMS),
            ("mgets-in-flight", self.mgets_in_flight, MAX_IN_FLIGHT),
            ("read-queue", self.read_queue, MAX_QUEUE),
        ] {
            if !(1..=max).contains(&value) {
                return bad(setting, format!("must be between 1 and {max}"));
            }
        }
        for (setting, value) in
            [("bulk-max-wait", self.bulk_max_wait), ("mget-max-wait", self.mget_max_wait)]
        {
            if value > MAX_BATCH_WAIT {
                return bad(setting, format!("must be at most {}ms", MAX_BATCH_WAIT.as_millis()));
            }
        }
        for (setting, value) in
            [("request-timeout", self.request_timeout), ("ready-timeout", self.ready_timeout)]
        {
            if value.is_zero() {
                return bad(setting, "must be positive".into());
            }
        }
        Ok(())
    }

    /// The index of the remote configs: `config_index`, or by default
    /// [`DEFAULT_FLEET_CONFIG_INDEX`] when the agent index is one of fleet's (`.fleet-*`), and
    /// the agent index's name followed by `-opampd-configs` otherwise.
    ///
    /// Why not `.fleet-agents-opampd-configs` next to `.fleet-agents` (measured on
    /// Elasticsearch 8.12 with fleet-server's service token): it falls inside the `.fleet-agents*`
    /// system index pattern. Elasticsearch refuses to create it explicitly, and a first write
    /// creates it from the `.fleet-agents` descriptor *with the `.fleet-agents` alias*, after which
    /// every read of an agent by id through `.fleet-agents` fails; not even a superuser may then
    /// delete it or take it out of the alias. So opampd never lets a write create a config index
    /// (config writes are refused while it is missing), and for fleet's indices it uses a
    /// `.fleet-policies-*` name outside the `.fleet-policies-[0-9]+*` system pattern, which the
    /// token may create (opampd does, with its mapping and no alias), read and write;
    /// `opampd-configs` and `.fleet-opampd-configs` it may not create.
    pub fn config_index(&self) -> String {
        match &self.config_index {
            Some(index) => index.clone(),
            None if self.index.starts_with(".fleet-") => DEFAULT_FLEET_CONFIG_INDEX.to_owned(),
            None => format!("{}-opampd-configs", self.index),
        }
    }

    /// The index of the agents' state records: `state_index`, or by default
    /// [`DEFAULT_FLEET_STATE_INDEX`] when the agent index is one of fleet's (`.fleet-*`; a
    /// `.fleet-policies-*` name outside the system pattern, for the reasons given at
    /// [`config_index`](Self::config_index)), and the agent index's name followed by
    /// `-opampd-state` otherwise.
    ///
    /// Why a second index: the agent document is wide (attributes, health, config, tags, all
    /// indexed for Kibana) and rewriting it on every heartbeat is most of what a heartbeat costs
    /// Elasticsearch. The state record is the one document every message reads and writes
    /// under compare-and-swap: opampd's exact state as a blob nothing indexes. The agent
    /// document is rewritten from it only when what it shows changes, and otherwise at most
    /// once per publish interval (see `opamp_core::AgentRecord::published_at`).
    pub fn state_index(&self) -> String {
        match &self.state_index {
            Some(index) => index.clone(),
            None if self.index.starts_with(".fleet-") => DEFAULT_FLEET_STATE_INDEX.to_owned(),
            None => format!("{}-opampd-state", self.index),
        }
    }

    /// The URL without user info, safe to log even before [`validate`](Self::validate) ran.
    pub(super) fn redacted_url(&self) -> Url {
        let mut url = self.url.clone();
        // both setters only fail for URLs that cannot carry credentials at all
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url
    }

    /// Builds the client: one connection pool, the product-origin header on every request, the
    /// request timeout as the HTTP client's overall timeout.
    pub(super) fn client(&self) -> Result<Elasticsearch, StoreError> {
        let pool = SingleNodeConnectionPool::new(self.url.clone());
        let mut builder = TransportBuilder::new(pool)
            .timeout(self.request_timeout)
            .enable_meta_header(false)
            .header(
                HeaderName::from_static(PRODUCT_ORIGIN_HEADER),
                HeaderValue::from_static(PRODUCT_ORIGIN),
            );
        builder = match &self.auth {
            EsAuth::None => builder,
            // "id:key" is the raw pair; anything else is the encoded form
            EsAuth::ApiKey(key) => match key.expose().split_once(':') {
                Some((id, key)) => builder.auth(Credentials::ApiKey(id.into(), key.into())),
                None => builder.auth(Credentials::EncodedApiKey(key.expose().into())),
            },
            EsAuth::Basic { username, password } => {
                builder.auth(Credentials::Basic(username.clone(), password.expose().into()))
            }
            EsAuth::ServiceToken(token) => builder.auth(Credentials::Bearer(token.expose().into())),
        };
        if let Some(ca) = &self.ca_cert {
            let certificate = ca.certificate().map_err(StoreError::Backend)?;
            builder = builder.cert_validation(CertificateValidation::Full(certificate));
        }
        let transport = builder
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot build elasticsearch client: {e}")))?;
        Ok(Elasticsearch::new(transport))
    }
}

/// Elasticsearch's rules for a concrete index name (hidden `.` names such as `.fleet-agents`
/// are allowed).
fn check_index_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 255 {
        return Err("must be 1 to 255 bytes");
    }
    if name == "." || name == ".." || name.starts_with(['-', '_', '+']) {
        return Err("must not be . or .. or start with -, _ or +");
    }
    if name.chars().any(|c| c.is_uppercase() || r#" "*\<|,>/?#:"#.contains(c)) {
        return Err(r#"must be lowercase without spaces or any of "*\<|,>/?#:"#);
    }
    Ok(())
}

impl fmt::Debug for EsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EsConfig")
            .field("url", &self.redacted_url().as_str())
            .field("index", &self.index)
            .field("enrollment_index", &self.enrollment_index)
            .field("config_index", &self.config_index)
            .field("auth", &self.auth)
            .field("ca_cert", &self.ca_cert)
            .field("request_timeout", &self.request_timeout)
            .field("ready_timeout", &self.ready_timeout)
            .field("bulk_max_items", &self.bulk_max_items)
            .field("bulk_max_wait", &self.bulk_max_wait)
            .field("bulks_in_flight", &self.bulks_in_flight)
            .field("write_queue", &self.write_queue)
            .field("mget_max_items", &self.mget_max_items)
            .field("mget_max_wait", &self.mget_max_wait)
            .field("mgets_in_flight", &self.mgets_in_flight)
            .field("read_queue", &self.read_queue)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> EsConfig {
        EsConfig::new("http://localhost:9200".parse().unwrap())
    }

    fn rejected(tweak: impl FnOnce(&mut EsConfig)) -> &'static str {
        let mut cfg = config();
        tweak(&mut cfg);
        cfg.validate().expect_err("must be rejected").setting
    }

    #[test]
    fn debug_redacts_secrets() {
        let mut cfg = config();
        cfg.auth = EsAuth::Basic { username: "elastic".into(), password: Secret::new("s3cret") };
        let text = format!("{cfg:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("elastic"), "{text}");
        cfg.auth = EsAuth::ApiKey(Secret::new("kid:topsecret"));
        assert!(!format!("{cfg:?}").contains("topsecret"));
        cfg.auth = EsAuth::ServiceToken(Secret::new("AAEAAWVsYXN0aWMvZmxlZXQ"));
        assert!(!format!("{cfg:?}").contains("AAEAAWVsYXN0aWMvZmxlZXQ"));
    }

    /// A self-signed CA certificate (public part only), for the PEM checks.
    const CA_PEM: &str = include_str!("../../tests/fixtures/es-ca.pem");

    #[test]
    fn ca_certificates_are_checked_when_configured() {
        let ca = CaCert::from_pem(CA_PEM).expect("a real CA certificate is accepted");
        assert_eq!(format!("{ca:?}"), format!("CaCert({} bytes of PEM)", CA_PEM.len()));
        let mut cfg = config();
        cfg.url = "https://localhost:9200".parse().unwrap();
        cfg.ca_cert = Some(ca);
        assert_eq!(cfg.validate(), Ok(()));
        cfg.client().expect("a client trusting the CA builds");

        assert!(CaCert::from_pem("").is_err());
        assert!(CaCert::from_pem("just some text").is_err());
        let mangled =
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";
        assert!(CaCert::from_pem(mangled).is_err(), "markers around garbage are refused");
    }

    #[test]
    fn defaults_validate() {
        assert_eq!(config().validate(), Ok(()));
    }

    #[test]
    fn bad_values_name_their_setting() {
        assert_eq!(rejected(|c| c.url = "ftp://x".parse().unwrap()), "url");
        assert_eq!(rejected(|c| c.url = "http://elastic:pw@es:9200".parse().unwrap()), "url");
        assert_eq!(rejected(|c| c.url = "http://elastic@es:9200".parse().unwrap()), "url");
        for index in ["", "a,b", "Upper", "a b", "_x", "..", "a:b", &"x".repeat(256)] {
            assert_eq!(rejected(|c| c.index = index.into()), "index", "{index:?}");
        }
        assert_eq!(rejected(|c| c.auth = EsAuth::ApiKey(Secret::new(""))), "api-key");
        assert_eq!(rejected(|c| c.auth = EsAuth::ServiceToken(Secret::new(""))), "service-token");
        assert_eq!(rejected(|c| c.enrollment_index = "A,B".into()), "enrollment-index");
        assert_eq!(rejected(|c| c.config_index = Some("A,B".into())), "config-index");
        assert_eq!(rejected(|c| c.config_index = Some(String::new())), "config-index");
        assert_eq!(rejected(|c| c.config_index = Some(DEFAULT_INDEX.into())), "config-index");
        // a valid agent index whose derived config index name is too long
        assert_eq!(rejected(|c| c.index = "x".repeat(250)), "config-index");
        assert_eq!(rejected(|c| c.bulk_max_items = 0), "bulk-max-items");
        assert_eq!(rejected(|c| c.bulk_max_items = MAX_BATCH_ITEMS + 1), "bulk-max-items");
        assert_eq!(rejected(|c| c.bulks_in_flight = MAX_IN_FLIGHT + 1), "bulks-in-flight");
        assert_eq!(rejected(|c| c.write_queue = 0), "write-queue");
        assert_eq!(rejected(|c| c.mget_max_items = 0), "mget-max-items");
        assert_eq!(rejected(|c| c.read_queue = 0), "read-queue");
        assert_eq!(rejected(|c| c.bulk_max_wait = Duration::from_secs(2)), "bulk-max-wait");
        assert_eq!(rejected(|c| c.mget_max_wait = Duration::from_secs(5)), "mget-max-wait");
        assert_eq!(rejected(|c| c.request_timeout = Duration::ZERO), "request-timeout");
    }

    #[test]
    fn the_config_index_defaults_to_a_fleet_policies_index_or_the_agent_index_with_a_suffix() {
        let mut cfg = config();
        assert_eq!(cfg.config_index(), ".fleet-policies-opampd-configs");
        cfg.index = ".fleet-agents-custom".into();
        assert_eq!(cfg.config_index(), DEFAULT_FLEET_CONFIG_INDEX, "never under .fleet-agents*");
        cfg.index = "agents".into();
        assert_eq!(cfg.config_index(), "agents-opampd-configs");
        cfg.config_index = Some("my-configs".into());
        assert_eq!(cfg.config_index(), "my-configs");
        assert_eq!(cfg.validate(), Ok(()));
    }

    #[test]
    fn hidden_and_fleet_index_names_are_valid() {
        for index in [".fleet-agents", "opampd-agents", "agents.v2"] {
            let mut cfg = config();
            cfg.index = index.into();
            assert_eq!(cfg.validate(), Ok(()), "{index}");
        }
    }
}
