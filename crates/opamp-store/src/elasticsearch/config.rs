//! Connection and batching settings of the Elasticsearch backend, and the one place that turns
//! them into a client. Secrets never reach a log: `Debug` redacts them.

use std::fmt;
use std::time::Duration;

use elasticsearch::Elasticsearch;
use elasticsearch::auth::Credentials;
use elasticsearch::http::headers::{HeaderName, HeaderValue};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use url::Url;

use crate::StoreError;

/// The index Kibana Fleet lists agents from (ES resolves it to the system index `.fleet-agents-7`).
pub const DEFAULT_INDEX: &str = ".fleet-agents";

/// Header fleet-server sends; without it ES answers writes to `.fleet-agents` with a deprecation
/// warning (system index access).
const PRODUCT_ORIGIN_HEADER: &str = "x-elastic-product-origin";
const PRODUCT_ORIGIN: &str = "fleet";

/// How the store authenticates to Elasticsearch.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum EsAuth {
    #[default]
    None,
    /// An API key as id and secret.
    ApiKey {
        id: String,
        key: String,
    },
    /// An API key already encoded as `base64(id:key)` (what Kibana shows as "encoded").
    EncodedApiKey(String),
    Basic {
        user: String,
        password: String,
    },
}

impl fmt::Debug for EsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::ApiKey { id, .. } => write!(f, "ApiKey {{ id: {id:?}, key: <redacted> }}"),
            Self::EncodedApiKey(_) => f.write_str("EncodedApiKey(<redacted>)"),
            Self::Basic { user, .. } => {
                write!(f, "Basic {{ user: {user:?}, password: <redacted> }}")
            }
        }
    }
}

/// Settings of [`ElasticsearchStore`](super::ElasticsearchStore). Start from [`EsConfig::new`]
/// and override fields; every queue and wait is bounded by one of them.
#[derive(Clone)]
pub struct EsConfig {
    /// Base URL of the cluster, e.g. `http://127.0.0.1:9200`. Credentials embedded in the URL
    /// are moved to [`EsAuth::Basic`] (when `auth` is `None`) so they never appear in errors.
    pub url: Url,
    /// Index (or alias) holding one document per agent.
    pub index: String,
    pub auth: EsAuth,
    /// Upper bound on any request, and on how long a caller waits for its answer.
    pub request_timeout: Duration,
    /// Timeout of the readiness probe (kept short: `/readyz` must answer fast).
    pub ready_timeout: Duration,
    /// Most operations in one `_bulk` request.
    pub bulk_max_items: usize,
    /// Longest a write waits for others to share its `_bulk` (group commit).
    pub bulk_max_wait: Duration,
    /// `_bulk` requests in flight at once.
    pub bulks_in_flight: usize,
    /// Writes accepted but not yet sent; beyond it `put` fails fast with `Overloaded`.
    pub queue_capacity: usize,
    /// Most ids in one `_mget`.
    pub mget_max_items: usize,
    /// Longest a cache-miss read waits for others to share its `_mget`.
    pub mget_max_wait: Duration,
    /// `_mget`/`GET` requests in flight at once.
    pub mgets_in_flight: usize,
    /// Reads accepted but not yet sent; beyond it `get` fails fast with `Overloaded`.
    pub read_queue_capacity: usize,
}

/// Group-commit and read-batching defaults, sized for a 2-core ES node (opampd's command line
/// defaults are these too).
pub const DEFAULT_BULK_MAX_ITEMS: usize = 500;
pub const DEFAULT_BULK_MAX_WAIT: Duration = Duration::from_millis(5);
pub const DEFAULT_BULKS_IN_FLIGHT: usize = 4;
pub const DEFAULT_WRITE_QUEUE: usize = 20_000;
pub const DEFAULT_MGET_MAX_ITEMS: usize = 256;
pub const DEFAULT_MGET_MAX_WAIT: Duration = Duration::from_millis(1);

impl EsConfig {
    /// Defaults sized for a 2-core ES node: bulks of up to 500 items after at most 5 ms.
    pub fn new(url: Url) -> Self {
        Self {
            url,
            index: DEFAULT_INDEX.to_owned(),
            auth: EsAuth::None,
            request_timeout: Duration::from_secs(10),
            ready_timeout: Duration::from_secs(2),
            bulk_max_items: DEFAULT_BULK_MAX_ITEMS,
            bulk_max_wait: DEFAULT_BULK_MAX_WAIT,
            bulks_in_flight: DEFAULT_BULKS_IN_FLIGHT,
            queue_capacity: DEFAULT_WRITE_QUEUE,
            mget_max_items: DEFAULT_MGET_MAX_ITEMS,
            mget_max_wait: DEFAULT_MGET_MAX_WAIT,
            mgets_in_flight: 4,
            read_queue_capacity: 20_000,
        }
    }

    /// Rejects settings that would make a queue or batch useless before anything is spawned.
    pub fn validate(&self) -> Result<(), StoreError> {
        let bad =
            |what: &str| Err(StoreError::Backend(format!("invalid elasticsearch config: {what}")));
        if !matches!(self.url.scheme(), "http" | "https") {
            return bad("url scheme must be http or https");
        }
        if self.index.is_empty() || self.index.contains(['/', ',', '*', ' ', '?', '#']) {
            return bad("index must be a single concrete index name");
        }
        if self.bulk_max_items == 0 || self.bulks_in_flight == 0 || self.queue_capacity == 0 {
            return bad("bulk_max_items, bulks_in_flight and queue_capacity must be positive");
        }
        if self.mget_max_items == 0 || self.mgets_in_flight == 0 || self.read_queue_capacity == 0 {
            return bad("mget_max_items, mgets_in_flight and read_queue_capacity must be positive");
        }
        if self.request_timeout.is_zero() || self.ready_timeout.is_zero() {
            return bad("timeouts must be positive");
        }
        Ok(())
    }

    /// The URL without user info, safe to log.
    pub(super) fn redacted_url(&self) -> Url {
        let mut url = self.url.clone();
        // Both setters only fail for URLs that cannot carry credentials at all.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url
    }

    /// Builds the client: one connection pool, the product-origin header on every request, the
    /// request timeout as the HTTP client's overall timeout.
    pub(super) fn client(&self) -> Result<Elasticsearch, StoreError> {
        let mut auth = self.auth.clone();
        if auth == EsAuth::None && !self.url.username().is_empty() {
            auth = EsAuth::Basic {
                user: decode_userinfo(self.url.username()),
                password: decode_userinfo(self.url.password().unwrap_or("")),
            };
        }
        let pool = SingleNodeConnectionPool::new(self.redacted_url());
        let mut builder = TransportBuilder::new(pool)
            .timeout(self.request_timeout)
            .enable_meta_header(false)
            .header(
                HeaderName::from_static(PRODUCT_ORIGIN_HEADER),
                HeaderValue::from_static(PRODUCT_ORIGIN),
            );
        builder = match auth {
            EsAuth::None => builder,
            EsAuth::ApiKey { id, key } => builder.auth(Credentials::ApiKey(id, key)),
            EsAuth::EncodedApiKey(key) => builder.auth(Credentials::EncodedApiKey(key)),
            EsAuth::Basic { user, password } => builder.auth(Credentials::Basic(user, password)),
        };
        let transport = builder
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot build elasticsearch client: {e}")))?;
        Ok(Elasticsearch::new(transport))
    }
}

/// URL user info is percent-encoded; credentials are not. Invalid escapes stay as written.
fn decode_userinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl fmt::Debug for EsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EsConfig")
            .field("url", &self.redacted_url().as_str())
            .field("index", &self.index)
            .field("auth", &self.auth)
            .field("request_timeout", &self.request_timeout)
            .field("ready_timeout", &self.ready_timeout)
            .field("bulk_max_items", &self.bulk_max_items)
            .field("bulk_max_wait", &self.bulk_max_wait)
            .field("bulks_in_flight", &self.bulks_in_flight)
            .field("queue_capacity", &self.queue_capacity)
            .field("mget_max_items", &self.mget_max_items)
            .field("mget_max_wait", &self.mget_max_wait)
            .field("mgets_in_flight", &self.mgets_in_flight)
            .field("read_queue_capacity", &self.read_queue_capacity)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_secrets() {
        let mut cfg = EsConfig::new("http://elastic:hunter2@localhost:9200".parse().unwrap());
        cfg.auth = EsAuth::Basic { user: "elastic".into(), password: "s3cret".into() };
        let text = format!("{cfg:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        cfg.auth = EsAuth::ApiKey { id: "kid".into(), key: "topsecret".into() };
        assert!(!format!("{cfg:?}").contains("topsecret"));
        cfg.auth = EsAuth::EncodedApiKey("ZW5jb2RlZA==".into());
        assert!(!format!("{cfg:?}").contains("ZW5jb2RlZA"));
    }

    #[test]
    fn defaults_validate_and_bad_values_do_not() {
        let cfg = EsConfig::new("http://localhost:9200".parse().unwrap());
        assert_eq!(cfg.validate(), Ok(()));
        let mut bad = cfg.clone();
        bad.bulk_max_items = 0;
        assert!(bad.validate().is_err());
        let mut bad = cfg.clone();
        bad.index = "a,b".into();
        assert!(bad.validate().is_err());
        let mut bad = cfg;
        bad.url = "ftp://x".parse().unwrap();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn userinfo_is_percent_decoded() {
        assert_eq!(decode_userinfo("p%40ss%3Aw+%zz"), "p@ss:w+%zz");
    }
}
