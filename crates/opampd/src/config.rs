//! Command line and environment configuration, validated into one typed [`Config`] before any
//! port is bound. Secrets never appear in `Debug` output or logs.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use opamp_core::DEFAULT_OFFLINE_AFTER_MS;
use opamp_store::Secret;
use opamp_store::cache::CacheConfig;
use opamp_store::elasticsearch::config as es;
use opamp_store::elasticsearch::enrollment::AuthCacheConfig;
use opamp_store::elasticsearch::{CaCert, EsAuth, EsConfig};
use sha2::{Digest, Sha256};
use url::Url;

/// The exit code for a bad configuration (`EX_USAGE` from sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

/// Agents poll every 30 s by default; an idle keep-alive connection must outlive that or the
/// agent races the server's close (fleet-server's EOF errors at 30 s vs 30 s).
pub const AGENT_POLL_INTERVAL: Duration = Duration::from_secs(30);

/// Upper bound of `--max-ws-sessions`: far above what one process can hold (each session is
/// a socket), and small enough that draining can wait for every session slot at once.
pub const MAX_WS_SESSIONS_CEILING: u32 = 10_000_000;

/// Raw command line, every flag also readable from an `OPAMPD_*` environment variable. The
/// defaults written here are the only ones: [`Config::embedded`] reads them from these
/// declarations, and the store's settings take theirs from the store's constants.
#[derive(Parser, Clone)]
#[command(name = "opampd", version, about = "OpAMP server")]
pub struct Cli {
    /// Address of the OpAMP listener (/v1/opamp).
    #[arg(long, env = "OPAMPD_LISTEN", default_value = "0.0.0.0:4320")]
    pub listen: SocketAddr,

    /// Address of the admin listener (/healthz, /readyz, /metrics, /api, the console). A
    /// non-loopback address needs --admin-token or --admin-token-file.
    #[arg(long, env = "OPAMPD_ADMIN_LISTEN", default_value = "127.0.0.1:4321")]
    pub admin_listen: SocketAddr,

    /// Bearer token every /api call on the admin listener must carry (`Authorization: Bearer
    /// <token>`); /healthz, /readyz, /metrics and the console's static files stay open (prefer
    /// the environment variable or --admin-token-file).
    #[arg(long, env = "OPAMPD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,

    /// File holding the admin token.
    #[arg(long, env = "OPAMPD_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// PEM certificate chain (leaf first) served on the OpAMP listener, which then speaks TLS
    /// only; needs --tls-key. Re-read on SIGHUP and when the file changes.
    #[arg(long, env = "OPAMPD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, RSA or EC) of --tls-cert.
    #[arg(long, env = "OPAMPD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s) that agents' client certificates must chain to (mutual TLS: a
    /// client without one fails the handshake); needs --tls-cert and --tls-key.
    #[arg(long, env = "OPAMPD_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// Agent store backend.
    #[arg(long, env = "OPAMPD_STORE", value_enum, default_value = "embedded")]
    pub store: StoreKind,

    /// Directory of the embedded store.
    #[arg(long, env = "OPAMPD_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Largest accepted message after decompression, e.g. 64MiB, 512KiB, 1048576.
    #[arg(long, env = "OPAMPD_MAX_MESSAGE_BYTES", default_value_t = Size(64 << 20))]
    pub max_message_bytes: Size,

    /// Elasticsearch URL (required with --store elasticsearch).
    #[arg(long, env = "OPAMPD_ES_URL")]
    pub es_url: Option<String>,

    /// Elasticsearch index holding one document per agent.
    #[arg(long, env = "OPAMPD_ES_INDEX", default_value = es::DEFAULT_INDEX)]
    pub es_index: String,

    /// Elasticsearch API key, `id:key` or encoded (prefer the environment variable or
    /// --es-api-key-file).
    #[arg(long, env = "OPAMPD_ES_API_KEY", hide_env_values = true)]
    pub es_api_key: Option<Secret>,

    /// File holding the Elasticsearch API key.
    #[arg(long, env = "OPAMPD_ES_API_KEY_FILE")]
    pub es_api_key_file: Option<PathBuf>,

    /// Elasticsearch user for basic authentication.
    #[arg(long, env = "OPAMPD_ES_USERNAME")]
    pub es_username: Option<String>,

    /// Elasticsearch password for basic authentication.
    #[arg(long, env = "OPAMPD_ES_PASSWORD", hide_env_values = true)]
    pub es_password: Option<Secret>,

    /// Elasticsearch service account token, sent as `Authorization: Bearer`: fleet-server's
    /// (of `elastic/fleet-server`) may use the `.fleet-*` system indices, which a superuser may
    /// not (prefer the environment variable or --es-service-token-file).
    #[arg(long, env = "OPAMPD_ES_SERVICE_TOKEN", hide_env_values = true)]
    pub es_service_token: Option<Secret>,

    /// File holding the Elasticsearch service account token.
    #[arg(long, env = "OPAMPD_ES_SERVICE_TOKEN_FILE")]
    pub es_service_token_file: Option<PathBuf>,

    /// PEM file of the CA certificate(s) Elasticsearch's certificate chains to (https), trusted
    /// besides the built-in roots. Certificates and host names are always verified.
    #[arg(long, env = "OPAMPD_ES_CA_CERT")]
    pub es_ca_cert: Option<PathBuf>,

    /// Elasticsearch index of the remote configs. Default: `.fleet-policies-opampd-configs` next
    /// to fleet's `.fleet-agents` (an index fleet-server's service account may create and write
    /// without touching fleet's own), else the agent index's name followed by `-opampd-configs`.
    #[arg(long, env = "OPAMPD_ES_CONFIG_INDEX")]
    pub es_config_index: Option<String>,

    /// Elasticsearch index of the agents' state records, the one document every message reads
    /// and writes (compare-and-swap). Default: `.fleet-policies-opampd-state` next to fleet's
    /// `.fleet-agents`, else the agent index's name followed by `-opampd-state`.
    #[arg(long, env = "OPAMPD_ES_STATE_INDEX")]
    pub es_state_index: Option<String>,

    /// `refresh_interval` of the Elasticsearch indices opampd creates, e.g. 30s (an index that
    /// exists keeps its own). Nothing on the OpAMP path searches; the admin listings refresh
    /// before they search.
    #[arg(long, env = "OPAMPD_ES_REFRESH_INTERVAL", default_value_t = Wait(es::DEFAULT_REFRESH_INTERVAL))]
    pub es_refresh_interval: Wait,

    /// How often at most an agent's document in the agent index (what Kibana reads) is
    /// rewritten while only its check-in changes, e.g. 120s; any other change is written at
    /// once. Kibana's `last_checkin` lags by at most this plus one heartbeat (a heartbeat at or
    /// above it publishes every time); keep it well under the 5 min after which Kibana calls an
    /// agent offline. 0 rewrites it on every message.
    #[arg(
        long,
        env = "OPAMPD_ES_CHECKIN_INTERVAL",
        default_value_t = Wait(Duration::from_millis(opamp_core::DEFAULT_PUBLISH_INTERVAL_MS))
    )]
    pub es_checkin_interval: Wait,

    /// Elasticsearch index of fleet's enrollment API keys (read by --auth elasticsearch).
    #[arg(long, env = "OPAMPD_ES_ENROLLMENT_INDEX", default_value = es::DEFAULT_ENROLLMENT_INDEX)]
    pub es_enrollment_index: String,

    /// Agent authentication: `elasticsearch` (the agent's `Authorization: ApiKey` must be an
    /// active enrollment key; the default with --store elasticsearch) or `none` (the default,
    /// and the only choice, with the embedded store).
    #[arg(long, env = "OPAMPD_AUTH", value_enum)]
    pub auth: Option<AuthKind>,

    /// How long an accepted agent key is trusted before Elasticsearch is asked again, e.g.
    /// 60s: a revoked or deactivated key is refused within it. Refusals are remembered for
    /// this long but at most 5s; outages are not remembered.
    #[arg(long, env = "OPAMPD_AUTH_CACHE_TTL", default_value_t = Wait(AuthCacheConfig::DEFAULT.ttl))]
    pub auth_cache_ttl: Wait,

    /// Group commit: most writes in one Elasticsearch `_bulk` request.
    #[arg(long, env = "OPAMPD_ES_BULK_MAX_ITEMS", default_value_t = es::DEFAULT_BULK_MAX_ITEMS)]
    pub es_bulk_max_items: usize,

    /// Group commit: longest a write waits for others to share its `_bulk`, e.g. 50ms. Below
    /// it the wait adapts: as long as it takes to gather 64 writes at the rate writes are
    /// arriving, 1ms when none would join. Longer gives bigger bulks (cheaper for
    /// Elasticsearch) at the cost of latency.
    #[arg(long, env = "OPAMPD_ES_BULK_MAX_WAIT", default_value_t = Wait(es::DEFAULT_BULK_MAX_WAIT))]
    pub es_bulk_max_wait: Wait,

    /// Group commit: `_bulk` requests in flight at once; writes wait (and batch up) beyond it.
    #[arg(long, env = "OPAMPD_ES_BULKS_IN_FLIGHT", default_value_t = es::DEFAULT_BULKS_IN_FLIGHT)]
    pub es_bulks_in_flight: usize,

    /// Writes accepted but not yet sent to Elasticsearch; beyond it messages get 503 +
    /// Retry-After instead of queueing.
    #[arg(long, env = "OPAMPD_ES_WRITE_QUEUE", default_value_t = es::DEFAULT_WRITE_QUEUE)]
    pub es_write_queue: usize,

    /// Cache-miss reads batched into one realtime `_mget` at most.
    #[arg(long, env = "OPAMPD_ES_MGET_MAX_ITEMS", default_value_t = es::DEFAULT_MGET_MAX_ITEMS)]
    pub es_mget_max_items: usize,

    /// Longest a cache-miss read waits for others to share its `_mget`, e.g. 5ms; below it the
    /// wait adapts to the rate of reads as `--es-bulk-max-wait` does (1ms when none would join).
    #[arg(long, env = "OPAMPD_ES_MGET_MAX_WAIT", default_value_t = Wait(es::DEFAULT_MGET_MAX_WAIT))]
    pub es_mget_max_wait: Wait,

    /// How long a cached agent record (elasticsearch store) serves reads, e.g. 120s. Longer
    /// than the agents' 30 s heartbeat, or every heartbeat misses; staleness is caught by CAS.
    #[arg(long, env = "OPAMPD_CACHE_TTL", default_value_t = Wait(CacheConfig::DEFAULT.ttl))]
    pub cache_ttl: Wait,

    /// Memory budget of the read cache (elasticsearch store), e.g. 1GiB. Size it so the whole
    /// fleet fits (about 1-3 KiB per agent, more with large effective configs): an agent evicted
    /// costs a realtime read on its next heartbeat.
    #[arg(long, env = "OPAMPD_CACHE_MAX_BYTES", default_value_t = Size(CacheConfig::DEFAULT.max_bytes))]
    pub cache_max_bytes: Size,

    /// Most OpAMP requests handled at once; beyond it requests get 503 + Retry-After.
    #[arg(long, env = "OPAMPD_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,

    /// Silence after which an agent reads as offline, e.g. 6m.
    #[arg(
        long,
        env = "OPAMPD_OFFLINE_AFTER",
        default_value_t = Wait(Duration::from_millis(DEFAULT_OFFLINE_AFTER_MS))
    )]
    pub offline_after: Wait,

    /// How often the remote configs are checked for changes made elsewhere (another instance,
    /// the store directly), e.g. 2s; at most 5s. Changes made through this instance's admin API
    /// are in force at once.
    #[arg(
        long,
        env = "OPAMPD_CONFIG_REFRESH",
        default_value_t = Wait(crate::configs::DEFAULT_REFRESH)
    )]
    pub config_refresh: Wait,

    /// Time in-flight requests get to finish after SIGTERM/SIGINT, e.g. 25s.
    #[arg(long, env = "OPAMPD_SHUTDOWN_GRACE", default_value = "25s")]
    pub shutdown_grace: Wait,

    /// Longest time one OpAMP request may take (body read, store, reply); then 503.
    #[arg(long, env = "OPAMPD_REQUEST_TIMEOUT", default_value = "10s")]
    pub request_timeout: Wait,

    /// How long an idle keep-alive connection (or a slow request head) is kept; must exceed the
    /// 30 s agent poll interval.
    #[arg(long, env = "OPAMPD_IDLE_TIMEOUT", default_value = "90s")]
    pub idle_timeout: Wait,

    /// Most WebSocket sessions open at once; beyond it upgrades get 503 + Retry-After.
    #[arg(long, env = "OPAMPD_MAX_WS_SESSIONS", default_value_t = 100_000)]
    pub max_ws_sessions: u32,

    /// Silence after which a WebSocket session is closed, e.g. 5m; must exceed the 30 s agent
    /// heartbeat interval (any received frame, pings included, counts as activity).
    #[arg(long, env = "OPAMPD_WS_IDLE_TIMEOUT", default_value = "5m")]
    pub ws_idle_timeout: Wait,

    /// Log output format.
    #[arg(long, env = "OPAMPD_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Threads running requests (default: one per CPU). Lower it when several instances (or
    /// Elasticsearch) share the machine's CPUs: threads waking each other for every message
    /// then cost more than they run in parallel.
    #[arg(long, env = "OPAMPD_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
}

impl fmt::Debug for Cli {
    // Hand-written so the debug output stays short; secrets are `Secret`s and print redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cli")
            .field("listen", &self.listen)
            .field("admin_listen", &self.admin_listen)
            .field("admin_token", &self.admin_token)
            .field("store", &self.store)
            .field("es_url", &self.es_url)
            .field("es_api_key", &self.es_api_key)
            .field("es_password", &self.es_password)
            .field("es_service_token", &self.es_service_token)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// `--auth`: who may talk OpAMP to this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthKind {
    /// Agents present an enrollment API key, checked against Elasticsearch.
    Elasticsearch,
    /// Anyone who can reach the listener.
    None,
}

/// Agent authentication, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthConfig {
    /// No check (`--auth none`).
    None,
    /// Enrollment API keys checked against the store's Elasticsearch (the enrollment index is
    /// in its settings), verdicts cached as `cache` says.
    Elasticsearch { cache: AuthCacheConfig },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    Embedded,
    Elasticsearch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A duration flag: a number with unit `ms`, `s`, `m` or `h` (a bare number is seconds).
/// Prints in the largest unit that divides it, so `--help` shows defaults as they are typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait(pub Duration);

impl FromStr for Wait {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(Self)
    }
}

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            0 => f.write_str("0s"),
            ms if ms % 3_600_000 == 0 => write!(f, "{}h", ms / 3_600_000),
            ms if ms % 60_000 == 0 => write!(f, "{}m", ms / 60_000),
            ms if ms % 1_000 == 0 => write!(f, "{}s", ms / 1_000),
            ms => write!(f, "{ms}ms"),
        }
    }
}

/// A byte-size flag: a number with optional unit `B`, `KiB`, `MiB`, `GiB` (or `K`, `M`, `G`,
/// also binary, case-insensitive). Prints in the largest unit that divides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_size(s).map(Self)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, bytes) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if n != 0 && n.is_multiple_of(bytes) {
                return write!(f, "{}{unit}", n / bytes);
            }
        }
        write!(f, "{n}")
    }
}

/// The files of TLS on the OpAMP listener; `tls::ServerTls::load` reads and checks them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// Which backend to open, with its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    Embedded {
        data_dir: PathBuf,
    },
    /// The store's own settings type, built and validated here once, plus the read cache in
    /// front of it.
    Elasticsearch {
        es: Box<EsConfig>,
        cache: CacheConfig,
    },
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// The token `/api/*` calls on the admin listener must carry; `None`: no token asked.
    pub admin_token: Option<AdminToken>,
    /// TLS on the OpAMP listener (the admin listener stays plain HTTP).
    pub tls: Option<TlsFiles>,
    pub store: StoreConfig,
    /// Agent authentication on the OpAMP route.
    pub auth: AuthConfig,
    pub max_message_bytes: usize,
    pub max_in_flight: usize,
    pub offline_after: Duration,
    /// How often at most a check-in alone is published to the agent document (`--es-checkin-interval`).
    pub checkin_publish_interval: Duration,
    /// How often remote configs are checked for changes.
    pub config_refresh: Duration,
    pub shutdown_grace: Duration,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_ws_sessions: u32,
    pub ws_idle_timeout: Duration,
    pub log_format: LogFormat,
    /// Threads of the request runtime; `None`: one per CPU.
    pub worker_threads: Option<usize>,
}

/// Most `--worker-threads` accepted (a typo like 10000 would otherwise start that many threads).
pub const MAX_WORKER_THREADS: usize = 1024;

impl Config {
    /// The command line defaults for a server on the embedded store in `data_dir` (tests,
    /// embedding), read from the flags' declarations but never from `OPAMPD_*` variables.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        let mut cli = Cli::defaults();
        cli.data_dir = data_dir.into();
        // the defaults are valid (a unit test holds them to it) and name no file to read
        cli.into_config().expect("the command line defaults are a valid configuration")
    }
}

/// Why a configuration was rejected; the message names the flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

impl Cli {
    /// Every flag at its declared default, ignoring the environment.
    pub fn defaults() -> Self {
        let command = Self::command().mut_args(|arg| arg.env(None));
        command
            .try_get_matches_from(["opampd"])
            .and_then(|matches| Self::from_arg_matches(&matches))
            .expect("every flag has a default or is optional")
    }

    /// Checks every value and resolves credentials (reading `--es-api-key-file`).
    pub fn into_config(self) -> Result<Config, ConfigError> {
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            return Err(invalid("--listen and --admin-listen must differ"));
        }
        let max_message_bytes = usize::try_from(self.max_message_bytes.0)
            .ok()
            .filter(|n| *n >= 1024)
            .ok_or_else(|| invalid("--max-message-bytes must be at least 1KiB"))?;
        if self.max_in_flight == 0 {
            return Err(invalid("--max-in-flight must be at least 1"));
        }
        if self.cache_max_bytes.0 < 1 << 20 {
            return Err(invalid("--cache-max-bytes must be at least 1MiB"));
        }
        if self.cache_ttl.0.is_zero() {
            return Err(invalid("--cache-ttl must be positive"));
        }
        if self.offline_after.0.is_zero() {
            return Err(invalid("--offline-after must be positive"));
        }
        if self.worker_threads.is_some_and(|n| n == 0 || n > MAX_WORKER_THREADS) {
            return Err(invalid(format!(
                "--worker-threads must be between 1 and {MAX_WORKER_THREADS}"
            )));
        }
        if self.es_checkin_interval.0 >= self.offline_after.0 {
            // the agent document would show a live agent offline between two publications
            return Err(invalid("--es-checkin-interval must be shorter than --offline-after"));
        }
        if self.config_refresh.0 < Duration::from_millis(100)
            || self.config_refresh.0 > Duration::from_secs(5)
        {
            return Err(invalid("--config-refresh must be between 100ms and 5s"));
        }
        if self.request_timeout.0.is_zero() {
            return Err(invalid("--request-timeout must be positive"));
        }
        if self.idle_timeout.0 <= AGENT_POLL_INTERVAL {
            return Err(invalid(
                "--idle-timeout must exceed the 30s agent poll interval (e.g. 90s)",
            ));
        }
        if !(1..=MAX_WS_SESSIONS_CEILING).contains(&self.max_ws_sessions) {
            return Err(invalid(format!(
                "--max-ws-sessions must be between 1 and {MAX_WS_SESSIONS_CEILING}"
            )));
        }
        if self.ws_idle_timeout.0 <= AGENT_POLL_INTERVAL {
            return Err(invalid(
                "--ws-idle-timeout must exceed the 30s agent heartbeat interval (e.g. 5m)",
            ));
        }
        let store = match self.store {
            StoreKind::Embedded => {
                if self.data_dir.as_os_str().is_empty() {
                    return Err(invalid("--data-dir must not be empty"));
                }
                StoreConfig::Embedded { data_dir: self.data_dir.clone() }
            }
            StoreKind::Elasticsearch => StoreConfig::Elasticsearch {
                es: Box::new(self.es_config()?),
                cache: CacheConfig { ttl: self.cache_ttl.0, max_bytes: self.cache_max_bytes.0 },
            },
        };
        let auth = self.auth_config()?;
        let admin_token = self.admin_token()?;
        Ok(Config {
            listen: self.listen,
            admin_listen: self.admin_listen,
            admin_token,
            tls: self.tls_files()?,
            store,
            auth,
            max_message_bytes,
            max_in_flight: self.max_in_flight,
            offline_after: self.offline_after.0,
            checkin_publish_interval: self.es_checkin_interval.0,
            config_refresh: self.config_refresh.0,
            shutdown_grace: self.shutdown_grace.0,
            request_timeout: self.request_timeout.0,
            idle_timeout: self.idle_timeout.0,
            max_ws_sessions: self.max_ws_sessions,
            ws_idle_timeout: self.ws_idle_timeout.0,
            log_format: self.log_format,
            worker_threads: self.worker_threads,
        })
    }

    /// `--admin-token[-file]`; required when the admin listener is reachable from elsewhere.
    fn admin_token(&self) -> Result<Option<AdminToken>, ConfigError> {
        let token = secret_flag(
            ("--admin-token", &self.admin_token),
            ("--admin-token-file", &self.admin_token_file),
        )?;
        if token.as_ref().is_some_and(Secret::is_empty) {
            return Err(invalid("--admin-token must not be empty"));
        }
        if token.is_none() && !self.admin_listen.ip().is_loopback() {
            return Err(invalid(format!(
                "--admin-listen {} is not a loopback address: the admin API (agents, remote \
                 configs) would be open to the network; set --admin-token or --admin-token-file \
                 (env OPAMPD_ADMIN_TOKEN, OPAMPD_ADMIN_TOKEN_FILE), or listen on 127.0.0.1",
                self.admin_listen
            )));
        }
        Ok(token.map(|t| AdminToken::new(&t)))
    }

    /// The `--tls-*` files: certificate and key both or neither. Their content is checked by
    /// `tls::ServerTls::load`, which `main` calls before binding.
    fn tls_files(&self) -> Result<Option<TlsFiles>, ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            })),
            (Some(_), None) => Err(invalid("--tls-cert needs --tls-key")),
            (None, Some(_)) => Err(invalid("--tls-key needs --tls-cert")),
            (None, None) if self.tls_client_ca.is_some() => {
                Err(invalid("--tls-client-ca needs --tls-cert and --tls-key"))
            }
            (None, None) => Ok(None),
        }
    }

    /// `--auth`, defaulting by store: Elasticsearch authenticates agents, the embedded store
    /// cannot (it has no keys to check against).
    fn auth_config(&self) -> Result<AuthConfig, ConfigError> {
        if self.auth_cache_ttl.0.is_zero() {
            return Err(invalid("--auth-cache-ttl must be positive"));
        }
        let kind = self.auth.unwrap_or(match self.store {
            StoreKind::Elasticsearch => AuthKind::Elasticsearch,
            StoreKind::Embedded => AuthKind::None,
        });
        match (kind, self.store) {
            (AuthKind::None, _) => Ok(AuthConfig::None),
            (AuthKind::Elasticsearch, StoreKind::Elasticsearch) => Ok(AuthConfig::Elasticsearch {
                cache: AuthCacheConfig { ttl: self.auth_cache_ttl.0, ..AuthCacheConfig::DEFAULT },
            }),
            (AuthKind::Elasticsearch, StoreKind::Embedded) => Err(invalid(
                "--auth elasticsearch needs --store elasticsearch (the embedded store has no \
                 enrollment keys); use --auth none",
            )),
        }
    }

    /// Builds the store's settings from the `--es-*` flags and validates them with the
    /// store's own rules, naming the flag of a rejected value.
    fn es_config(&self) -> Result<EsConfig, ConfigError> {
        let raw = self
            .es_url
            .as_deref()
            .ok_or_else(|| invalid("--es-url is required with --store elasticsearch"))?;
        let url = Url::parse(raw).map_err(|e| invalid(format!("--es-url: {e}")))?;
        let mut es = EsConfig::new(url);
        es.index.clone_from(&self.es_index);
        es.enrollment_index.clone_from(&self.es_enrollment_index);
        es.config_index.clone_from(&self.es_config_index);
        es.state_index.clone_from(&self.es_state_index);
        es.refresh_interval = self.es_refresh_interval.0;
        es.auth = self.es_auth()?;
        if let Some(path) = &self.es_ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| invalid(format!("--es-ca-cert {}: {e}", path.display())))?;
            let ca = CaCert::from_pem(pem)
                .map_err(|e| invalid(format!("--es-ca-cert {}: {e}", path.display())))?;
            es.ca_cert = Some(ca);
        }
        es.bulk_max_items = self.es_bulk_max_items;
        es.bulk_max_wait = self.es_bulk_max_wait.0;
        es.bulks_in_flight = self.es_bulks_in_flight;
        es.write_queue = self.es_write_queue;
        es.mget_max_items = self.es_mget_max_items;
        es.mget_max_wait = self.es_mget_max_wait.0;
        es.validate().map_err(|e| invalid(format!("--es-{}: {}", e.setting, e.reason)))?;
        Ok(es)
    }

    /// One kind of credentials: a service token, an api key, or a username and password.
    fn es_auth(&self) -> Result<EsAuth, ConfigError> {
        let api_key = secret_flag(
            ("--es-api-key", &self.es_api_key),
            ("--es-api-key-file", &self.es_api_key_file),
        )?;
        let token = secret_flag(
            ("--es-service-token", &self.es_service_token),
            ("--es-service-token-file", &self.es_service_token_file),
        )?;
        let basic = self.es_username.is_some() || self.es_password.is_some();
        if [api_key.is_some(), token.is_some(), basic].into_iter().filter(|given| *given).count()
            > 1
        {
            return Err(invalid(
                "give one kind of elasticsearch credentials: a service token, an api key, or a \
                 username and password",
            ));
        }
        if let Some(token) = token {
            return Ok(EsAuth::ServiceToken(token));
        }
        match (api_key, &self.es_username, &self.es_password) {
            (Some(key), _, _) => Ok(EsAuth::ApiKey(key)),
            (None, Some(username), Some(password)) => {
                Ok(EsAuth::Basic { username: username.clone(), password: password.clone() })
            }
            (None, Some(_), None) => Err(invalid("--es-username needs --es-password")),
            (None, None, Some(_)) => Err(invalid("--es-password needs --es-username")),
            (None, None, None) => Ok(EsAuth::None),
        }
    }
}

/// The admin token as the server keeps it: only its SHA-256, so presented tokens are compared
/// digest to digest, in time independent of where they differ (and of their length).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl AdminToken {
    pub fn new(token: &Secret) -> Self {
        Self { digest: Sha256::digest(token.expose().as_bytes()).into() }
    }

    /// Whether `presented` is the token, compared in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let diff = self.digest.iter().zip(presented).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken([redacted])")
    }
}

/// A credential given by value or by file, not both.
fn secret_flag(
    (flag, value): (&str, &Option<Secret>),
    (file_flag, file): (&str, &Option<PathBuf>),
) -> Result<Option<Secret>, ConfigError> {
    match (value, file) {
        (Some(_), Some(_)) => Err(invalid(format!("give only one of {flag} and {file_flag}"))),
        (Some(value), None) => Ok(Some(value.clone())),
        (None, Some(path)) => read_secret_file(file_flag, path).map(Some),
        (None, None) => Ok(None),
    }
}

/// Reads a credential from a file (trimmed); an empty file is an error.
fn read_secret_file(flag: &str, path: &std::path::Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(format!("{flag} {}: {e}", path.display())))?;
    let value = text.trim();
    if value.is_empty() {
        return Err(invalid(format!("{flag} {} is empty", path.display())));
    }
    Ok(Secret::new(value))
}

/// Parses a duration: a number with unit `ms`, `s`, `m` or `h` (a bare number is seconds).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 30s, 500ms, 6m"))?;
    let per_unit_ms = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        other => return Err(format!("unknown duration unit {other:?} (use ms, s, m, h)")),
    };
    n.checked_mul(per_unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {s:?} is too large"))
}

/// Parses a byte size: a number with optional unit `B`, `KiB`, `MiB`, `GiB` (or `K`, `M`, `G`,
/// also binary, case-insensitive).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size like 64MiB or 1048576"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} (use KiB, MiB, GiB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["opampd"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).expect("parses").into_config()
    }

    fn rejected(args: &[&str]) -> String {
        config(args).expect_err("must be rejected").0
    }

    #[test]
    fn defaults_are_valid() {
        let c = config(&[]).expect("valid");
        assert_eq!(c.listen, "0.0.0.0:4320".parse().unwrap());
        assert_eq!(c.admin_listen, "127.0.0.1:4321".parse().unwrap());
        assert_eq!(c.store, StoreConfig::Embedded { data_dir: "./data".into() });
        assert_eq!(c.max_message_bytes, 64 << 20);
        assert_eq!(c.offline_after, Duration::from_secs(360));
        assert!(c.idle_timeout > AGENT_POLL_INTERVAL + Duration::from_secs(5));
        assert_eq!(c.max_ws_sessions, 100_000);
        assert_eq!(c.ws_idle_timeout, Duration::from_secs(300));
    }

    #[test]
    fn defaults_print_as_they_are_typed() {
        for (text, wait) in [("5ms", 5), ("1s", 1_000), ("2m", 120_000), ("6m", 360_000)] {
            let parsed: Wait = text.parse().unwrap();
            assert_eq!(parsed, Wait(Duration::from_millis(wait)));
            assert_eq!(parsed.to_string(), text);
        }
        assert_eq!(Wait(Duration::from_millis(1500)).to_string(), "1500ms");
        assert_eq!(Wait(Duration::from_secs(3600)).to_string(), "1h");
        for (text, size) in [("64MiB", 64 << 20), ("1GiB", 1 << 30), ("3KiB", 3 << 10), ("10", 10)]
        {
            assert_eq!(text.parse::<Size>(), Ok(Size(size)));
            assert_eq!(Size(size).to_string(), text);
        }
    }

    #[test]
    fn store_settings_take_the_store_defaults() {
        let c = config(&["--store", "elasticsearch", "--es-url", "http://es:9200"]).unwrap();
        let StoreConfig::Elasticsearch { es, cache } = c.store else { panic!("expected es") };
        let backend = EsConfig::new("http://es:9200".parse().unwrap());
        assert_eq!(*es, backend);
        assert_eq!(cache, CacheConfig::DEFAULT);
        assert_eq!(config(&[]).unwrap().offline_after.as_millis() as u64, DEFAULT_OFFLINE_AFTER_MS);
    }

    #[test]
    fn es_url_with_credentials_is_refused() {
        let es = ["--store", "elasticsearch", "--es-url"];
        for url in ["http://elastic:pw@es:9200", "http://elastic@es:9200"] {
            let why = rejected(&[&es[..], &[url]].concat());
            assert!(why.contains("--es-url"), "{why}");
            assert!(!why.contains("pw@"), "{why}");
        }
    }

    #[test]
    fn embedded_helper_matches_the_command_line_defaults() {
        let parsed = Cli::try_parse_from(["opampd", "--data-dir", "/d"]).unwrap();
        assert_eq!(Config::embedded("/d"), parsed.into_config().unwrap());
    }

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("6m"), Ok(Duration::from_secs(360)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("-5s").is_err());
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1mib"), Ok(1 << 20));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert!(parse_size("1TB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn bad_values_are_rejected_with_the_flag_named() {
        assert!(rejected(&["--max-message-bytes", "10"]).contains("--max-message-bytes"));
        assert!(rejected(&["--max-in-flight", "0"]).contains("--max-in-flight"));
        assert!(rejected(&["--worker-threads", "0"]).contains("--worker-threads"));
        assert!(rejected(&["--worker-threads", "1025"]).contains("--worker-threads"));
        assert_eq!(config(&["--worker-threads", "1"]).unwrap().worker_threads, Some(1));
        assert_eq!(config(&[]).unwrap().worker_threads, None);
        assert!(rejected(&["--idle-timeout", "30s"]).contains("--idle-timeout"));
        assert!(rejected(&["--offline-after", "0s"]).contains("--offline-after"));
        assert!(rejected(&["--request-timeout", "0s"]).contains("--request-timeout"));
        assert!(rejected(&["--cache-max-bytes", "1KiB"]).contains("--cache-max-bytes"));
        assert!(rejected(&["--max-ws-sessions", "0"]).contains("--max-ws-sessions"));
        assert!(rejected(&["--max-ws-sessions", "10000001"]).contains("--max-ws-sessions"));
        assert!(rejected(&["--ws-idle-timeout", "30s"]).contains("--ws-idle-timeout"));
        assert!(
            rejected(&["--listen", "127.0.0.1:9000", "--admin-listen", "127.0.0.1:9000"])
                .contains("--admin-listen")
        );
    }

    #[test]
    fn tls_needs_both_certificate_and_key() {
        assert_eq!(config(&[]).unwrap().tls, None);
        let c = config(&["--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-client-ca", "ca.pem"]);
        let files = c.unwrap().tls.expect("tls on");
        assert_eq!((files.cert, files.key), ("c.pem".into(), "k.pem".into()));
        assert_eq!(files.client_ca, Some("ca.pem".into()));
        assert!(rejected(&["--tls-cert", "c.pem"]).contains("--tls-key"));
        assert!(rejected(&["--tls-key", "k.pem"]).contains("--tls-cert"));
        assert!(rejected(&["--tls-client-ca", "ca.pem"]).contains("--tls-client-ca"));
    }

    #[test]
    fn unparsable_flags_are_clap_errors() {
        assert!(Cli::try_parse_from(["opampd", "--listen", "nope"]).is_err());
        assert!(Cli::try_parse_from(["opampd", "--store", "postgres"]).is_err());
        assert!(Cli::try_parse_from(["opampd", "--cache-ttl", "soon"]).is_err());
        assert!(Cli::try_parse_from(["opampd", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn elasticsearch_needs_a_valid_url() {
        assert!(rejected(&["--store", "elasticsearch"]).contains("--es-url"));
        assert!(
            rejected(&["--store", "elasticsearch", "--es-url", "not a url"]).contains("--es-url")
        );
        assert!(
            rejected(&["--store", "elasticsearch", "--es-url", "ftp://x"]).contains("--es-url")
        );
        let c = config(&["--store", "elasticsearch", "--es-url", "http://localhost:9200"]).unwrap();
        let StoreConfig::Elasticsearch { es, cache } = c.store else { panic!("expected es") };
        assert_eq!(*es, EsConfig::new("http://localhost:9200".parse().unwrap()));
        assert_eq!(cache, CacheConfig::DEFAULT);
    }

    #[test]
    fn group_commit_is_tunable_and_bounded() {
        let es = ["--store", "elasticsearch", "--es-url", "http://localhost:9200"];
        fn with<'a>(es: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
            [es, extra].concat()
        }
        let c = config(&with(
            &es,
            &[
                "--es-bulk-max-items",
                "1000",
                "--es-bulk-max-wait",
                "20ms",
                "--es-bulks-in-flight",
                "2",
                "--es-write-queue",
                "5000",
                "--es-mget-max-items",
                "100",
                "--es-mget-max-wait",
                "2ms",
            ],
        ))
        .unwrap();
        let StoreConfig::Elasticsearch { es: e, .. } = c.store else { panic!("expected es") };
        assert_eq!(
            (e.bulk_max_items, e.bulk_max_wait, e.bulks_in_flight, e.write_queue),
            (1000, Duration::from_millis(20), 2, 5000)
        );
        assert_eq!((e.mget_max_items, e.mget_max_wait), (100, Duration::from_millis(2)));
        for (flag, bad) in [
            ("--es-bulk-max-items", "0"),
            ("--es-bulk-max-items", "10001"),
            ("--es-bulk-max-wait", "2s"),
            ("--es-bulks-in-flight", "0"),
            ("--es-bulks-in-flight", "65"),
            ("--es-write-queue", "0"),
            ("--es-mget-max-items", "0"),
            ("--es-mget-max-wait", "5s"),
        ] {
            assert!(rejected(&with(&es, &[flag, bad])).contains(flag), "{flag} {bad}");
        }
    }

    #[test]
    fn elasticsearch_credentials_resolve_and_conflict() {
        let es = ["--store", "elasticsearch", "--es-url", "https://es:9200"];
        let with = |extra: &[&str]| {
            let mut v = es.to_vec();
            v.extend_from_slice(extra);
            config(&v)
        };
        let c = with(&["--es-api-key", "k3y"]).unwrap();
        let StoreConfig::Elasticsearch { es: e, .. } = c.store else { panic!("expected es") };
        assert_eq!(e.auth, EsAuth::ApiKey(Secret::new("k3y")));
        assert!(with(&["--es-username", "u"]).is_err());
        assert!(with(&["--es-password", "p"]).is_err());
        assert!(with(&["--es-api-key", "k", "--es-username", "u", "--es-password", "p"]).is_err());
        assert!(with(&["--es-index", "Upper"]).unwrap_err().0.contains("--es-index"));
        assert!(with(&["--es-index", "_x"]).unwrap_err().0.contains("--es-index"));
        assert!(with(&["--es-api-key-file", "/nonexistent/key"]).is_err());

        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "filekey\n").unwrap();
        let c = with(&["--es-api-key-file", key.to_str().unwrap()]).unwrap();
        let StoreConfig::Elasticsearch { es: e, .. } = c.store else { panic!("expected es") };
        assert_eq!(e.auth, EsAuth::ApiKey(Secret::new("filekey")));
    }

    const ES: [&str; 4] = ["--store", "elasticsearch", "--es-url", "https://es:9200"];

    fn es_with(extra: &[&str]) -> Result<Config, ConfigError> {
        config(&[&ES[..], extra].concat())
    }

    fn es_settings(c: Config) -> EsConfig {
        let StoreConfig::Elasticsearch { es, .. } = c.store else { panic!("expected es") };
        *es
    }

    #[test]
    fn service_tokens_resolve_and_exclude_other_credentials() {
        let c = es_with(&["--es-service-token", "t0ken"]).unwrap();
        assert_eq!(es_settings(c).auth, EsAuth::ServiceToken(Secret::new("t0ken")));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "filet0ken\n").unwrap();
        let c = es_with(&["--es-service-token-file", file.to_str().unwrap()]).unwrap();
        assert_eq!(es_settings(c).auth, EsAuth::ServiceToken(Secret::new("filet0ken")));
        for conflict in [
            &["--es-service-token", "t", "--es-service-token-file", file.to_str().unwrap()][..],
            &["--es-service-token", "t", "--es-api-key", "k"][..],
            &["--es-service-token", "t", "--es-username", "u", "--es-password", "p"][..],
            &["--es-service-token-file", file.to_str().unwrap(), "--es-api-key", "k"][..],
        ] {
            assert!(es_with(conflict).is_err(), "{conflict:?}");
        }
        let why = es_with(&["--es-service-token-file", "/nonexistent/token"]).unwrap_err().0;
        assert!(why.contains("--es-service-token-file"), "{why}");
        assert!(es_with(&["--es-service-token", ""]).unwrap_err().0.contains("--es-service-token"));
    }

    #[test]
    fn es_ca_cert_must_be_a_readable_pem_certificate() {
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/../opamp-store/tests/fixtures/es-ca.pem");
        let es = es_settings(es_with(&["--es-ca-cert", ca]).unwrap());
        assert!(es.ca_cert.is_some());
        assert!(es_settings(es_with(&[]).unwrap()).ca_cert.is_none(), "verification by web roots");
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n")
            .unwrap();
        for path in [bad.to_str().unwrap(), "/nonexistent/ca.pem"] {
            let why = es_with(&["--es-ca-cert", path]).unwrap_err().0;
            assert!(why.contains("--es-ca-cert"), "{why}");
        }
    }

    #[test]
    fn auth_defaults_by_store_and_needs_elasticsearch() {
        assert_eq!(config(&[]).unwrap().auth, AuthConfig::None);
        let c = es_with(&[]).unwrap();
        assert_eq!(c.auth, AuthConfig::Elasticsearch { cache: AuthCacheConfig::DEFAULT });
        assert_eq!(es_settings(c).enrollment_index, ".fleet-enrollment-api-keys");
        assert_eq!(es_with(&["--auth", "none"]).unwrap().auth, AuthConfig::None);
        let c = es_with(&["--auth-cache-ttl", "1s", "--es-enrollment-index", "keys"]).unwrap();
        let AuthConfig::Elasticsearch { cache } = c.auth else { panic!("auth on") };
        assert_eq!(cache.ttl, Duration::from_secs(1));
        assert_eq!(es_settings(c).enrollment_index, "keys");
        assert!(rejected(&["--auth", "elasticsearch"]).contains("--auth"));
        assert!(es_with(&["--auth-cache-ttl", "0s"]).unwrap_err().0.contains("--auth-cache-ttl"));
        let why = es_with(&["--es-enrollment-index", "Bad"]).unwrap_err().0;
        assert!(why.contains("--es-enrollment-index"), "{why}");
    }

    #[test]
    fn the_admin_token_is_required_off_loopback_and_compared_by_digest() {
        assert_eq!(config(&[]).unwrap().admin_token, None);
        for open in ["0.0.0.0:4321", "10.1.2.3:4321", "[::]:4321"] {
            let why = rejected(&["--admin-listen", open]);
            assert!(why.contains("--admin-token") && why.contains(open), "{why}");
        }
        assert!(config(&["--admin-listen", "[::1]:4321"]).unwrap().admin_token.is_none());
        let c = config(&["--admin-listen", "0.0.0.0:4321", "--admin-token", "s3cret"]).unwrap();
        let token = c.admin_token.expect("token set");
        assert!(token.matches("s3cret"));
        assert!(!token.matches("s3cre") && !token.matches("s3cret ") && !token.matches(""));
        assert!(!format!("{token:?}").contains("s3cret"));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let c = config(&["--admin-token-file", file.to_str().unwrap()]).unwrap();
        assert!(c.admin_token.unwrap().matches("from-file"));
        let why = rejected(&["--admin-token", "a", "--admin-token-file", file.to_str().unwrap()]);
        assert!(why.contains("--admin-token-file"), "{why}");
        assert!(rejected(&["--admin-token", ""]).contains("--admin-token"));
        assert!(rejected(&["--admin-token-file", "/nonexistent/t"]).contains("--admin-token-file"));
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let cli = Cli::try_parse_from([
            "opampd",
            "--store",
            "elasticsearch",
            "--es-url",
            "http://es:9200",
            "--es-username",
            "elastic",
            "--es-password",
            "hunter2",
        ])
        .unwrap();
        assert!(!format!("{cli:?}").contains("hunter2"));
        let c = cli.into_config().unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("[redacted]"));
    }
}
