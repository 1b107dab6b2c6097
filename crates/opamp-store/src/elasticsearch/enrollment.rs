//! Agent authentication against Elasticsearch, with fleet's enrollment API keys, checked on
//! every request (fleet-server checks a known agent's key only for being some valid API key):
//! a key is good when Elasticsearch authenticates it (`GET _security/_authenticate` sent with
//! the agent's own key, naming that key) AND exactly one active, unexpired document of the
//! enrollment index has its `api_key_id`. That document's `policy_id` and `namespaces` become
//! the agent's [`Enrollment`].
//!
//! Verdicts are cached (moka) under a SHA-256 of the credential, never the credential itself:
//! an accepted key for the configured TTL, a refusal for at most [`MAX_REFUSAL_TTL`], an
//! outage or rate-limiting not at all. Concurrent first requests with one key share one
//! verification. Knows nothing of HTTP: the server parses the header and hands in the key.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use elasticsearch::http::headers::{AUTHORIZATION, HeaderValue};
use elasticsearch::{Elasticsearch, SearchParts};
use moka::Expiry;
use moka::future::Cache;
use opamp_core::Enrollment;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::EsConfig;
use crate::metrics as m;
use crate::{Secret, StoreError};

/// The longest a refusal is cached, whatever the TTL: a key enrolled a moment after an agent
/// was refused works within this, and a flood of one bad key costs one check per period.
pub const MAX_REFUSAL_TTL: Duration = Duration::from_secs(5);

/// Verifications running at once (each is one or two Elasticsearch requests). Requests with a
/// key already being verified wait for that verification and need no slot; beyond it a new key
/// is told to retry later, so a flood of distinct keys cannot flood Elasticsearch.
pub const MAX_CONCURRENT_VERIFICATIONS: usize = 64;

/// Enrollment documents read for one key id; more than one current one is refused anyway.
const MAX_DOCUMENTS: usize = 10;

/// The name of the query clause that matches an expired enrollment document.
const EXPIRED: &str = "expired";

/// An agent's API key as it presented it (`id:key`). The secret is a [`Secret`]: `Debug` shows
/// the id only.
#[derive(Clone)]
pub struct ApiKey {
    id: String,
    secret: Secret,
}

impl ApiKey {
    /// `None` when the id or the secret is empty.
    pub fn new(id: impl Into<String>, secret: Secret) -> Option<Self> {
        let id = id.into();
        (!id.is_empty() && !secret.is_empty()).then_some(Self { id, secret })
    }

    /// The key id (Elasticsearch's `api_key.id`): safe to log.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What the cache is keyed by, so it never holds the credential. The id is length-prefixed
    /// so no two (id, secret) pairs hash the same text.
    fn fingerprint(&self) -> Fingerprint {
        let mut hash = Sha256::new();
        hash.update((self.id.len() as u64).to_le_bytes());
        hash.update(self.id.as_bytes());
        hash.update(self.secret.expose().as_bytes());
        hash.finalize().into()
    }

    /// `ApiKey base64(id:key)`, marked sensitive.
    fn header(&self) -> Option<HeaderValue> {
        let encoded = STANDARD.encode(format!("{}:{}", self.id, self.secret.expose()));
        let mut value = HeaderValue::try_from(format!("ApiKey {encoded}")).ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey").field("id", &self.id).field("secret", &self.secret).finish()
    }
}

type Fingerprint = [u8; 32];

/// Why a key is refused (cached briefly; the agent gets 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Elasticsearch does not authenticate it: unknown, invalidated, expired or disabled.
    NotAuthenticated,
    /// Elasticsearch authenticated the credential, but not as this API key.
    NotThisKey,
    /// A valid API key with no document in the enrollment index.
    NotEnrollmentKey,
    /// Its enrollment document is not `active: true`.
    Inactive,
    /// Its enrollment document is past `expire_at`.
    Expired,
    /// Several active, unexpired enrollment documents name it: which policy it binds is not
    /// clear, so none is assumed.
    Ambiguous,
}

impl Refusal {
    /// The reason, for the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotAuthenticated => "elasticsearch does not authenticate the api key",
            Self::NotThisKey => "elasticsearch authenticated the credential as another identity",
            Self::NotEnrollmentKey => "the api key is not an enrollment key",
            Self::Inactive => "the enrollment key is inactive",
            Self::Expired => "the enrollment key has expired",
            Self::Ambiguous => "several active enrollment keys have this api key id",
        }
    }
}

/// Why a key was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The key is not a usable enrollment key.
    #[error("{}", .0.as_str())]
    Refused(Refusal),
    /// Elasticsearch answered 429 to a check, or too many checks run at once: retry later.
    #[error("authentication is rate-limited")]
    RateLimited,
    /// Elasticsearch could not be asked (down, slow, 5xx, or opampd's own credentials may not
    /// read the enrollment index): retry later. Never cached.
    #[error("authentication unavailable: {0}")]
    Unavailable(String),
}

/// Caching of verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthCacheConfig {
    /// How long an accepted key is taken on trust: a revoked or deactivated key keeps working
    /// at most this long, and each key costs at most one verification per period.
    pub ttl: Duration,
    /// Most keys remembered (accepted and refused).
    pub max_entries: u64,
}

impl AuthCacheConfig {
    /// 60 s, 100K keys (fleets have a few enrollment keys; the rest is room for refusals).
    pub const DEFAULT: Self = Self { ttl: Duration::from_secs(60), max_entries: 100_000 };

    /// How long a refusal is cached: the TTL, at most [`MAX_REFUSAL_TTL`].
    pub fn refusal_ttl(&self) -> Duration {
        self.ttl.min(MAX_REFUSAL_TTL)
    }
}

impl Default for AuthCacheConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Counters since the checker was built (the requests are also exported as metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthStats {
    /// `GET _security/_authenticate` requests sent.
    pub authenticate_requests: u64,
    /// Enrollment-index searches sent.
    pub enrollment_lookups: u64,
    /// Checks answered from the cache.
    pub cache_hits: u64,
    /// Checks that ran (or waited for) a verification.
    pub cache_misses: u64,
}

#[derive(Debug, Default)]
struct Counters {
    authenticate_requests: AtomicU64,
    enrollment_lookups: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
}

/// A cached verdict.
#[derive(Debug, Clone)]
enum Verdict {
    Enrolled(Arc<Enrollment>),
    Refused(Refusal),
}

/// Accepted keys live for the TTL, refusals for the refusal TTL.
struct VerdictExpiry {
    ttl: Duration,
    refusal_ttl: Duration,
}

impl Expiry<Fingerprint, Verdict> for VerdictExpiry {
    fn expire_after_create(
        &self,
        _: &Fingerprint,
        verdict: &Verdict,
        _: Instant,
    ) -> Option<Duration> {
        Some(match verdict {
            Verdict::Enrolled(_) => self.ttl,
            Verdict::Refused(_) => self.refusal_ttl,
        })
    }
}

/// Checks agents' enrollment API keys, see the [module docs](self). Cheap to clone (a handle).
#[derive(Clone)]
pub struct EnrollmentAuth(Arc<Inner>);

struct Inner {
    client: Elasticsearch,
    index: String,
    /// Bound of one whole verification (both requests).
    timeout: Duration,
    cache: Cache<Fingerprint, Verdict>,
    verifications: Semaphore,
    counters: Counters,
}

impl EnrollmentAuth {
    /// A checker for the cluster `es` names, with the store's settings: the same URL,
    /// credentials (a service token that may read the enrollment index), CA, product-origin
    /// header and request timeout, and `es.enrollment_index`. Contacts nothing yet.
    pub fn new(es: &EsConfig, cache: AuthCacheConfig) -> Result<Self, StoreError> {
        es.validate()
            .map_err(|e| StoreError::Backend(format!("invalid elasticsearch config: {e}")))?;
        let client = es.client()?;
        m::register_auth();
        let expiry = VerdictExpiry { ttl: cache.ttl, refusal_ttl: cache.refusal_ttl() };
        Ok(Self(Arc::new(Inner {
            client,
            index: es.enrollment_index.clone(),
            timeout: es.request_timeout,
            cache: Cache::builder().max_capacity(cache.max_entries).expire_after(expiry).build(),
            verifications: Semaphore::new(MAX_CONCURRENT_VERIFICATIONS),
            counters: Counters::default(),
        })))
    }

    /// The enrollment `key` belongs to, from the cache or from Elasticsearch.
    pub async fn authenticate(&self, key: &ApiKey) -> Result<Arc<Enrollment>, AuthError> {
        let inner = &self.0;
        let entry = inner
            .cache
            .entry(key.fingerprint())
            .or_try_insert_with(inner.verify(key))
            .await
            .map_err(|shared| AuthError::clone(&shared))?;
        let counter = if entry.is_fresh() {
            &inner.counters.cache_misses
        } else {
            &inner.counters.cache_hits
        };
        counter.fetch_add(1, Ordering::Relaxed);
        match entry.into_value() {
            Verdict::Enrolled(enrollment) => Ok(enrollment),
            Verdict::Refused(refusal) => Err(AuthError::Refused(refusal)),
        }
    }

    /// Request and cache counters since this checker was built.
    pub fn stats(&self) -> AuthStats {
        let c = &self.0.counters;
        AuthStats {
            authenticate_requests: c.authenticate_requests.load(Ordering::Relaxed),
            enrollment_lookups: c.enrollment_lookups.load(Ordering::Relaxed),
            cache_hits: c.cache_hits.load(Ordering::Relaxed),
            cache_misses: c.cache_misses.load(Ordering::Relaxed),
        }
    }
}

impl fmt::Debug for EnrollmentAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollmentAuth")
            .field("index", &self.0.index)
            .field("entries", &self.0.cache.entry_count())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Inner {
    /// Both checks, under one time bound. Ok is a verdict to cache; Err is not cached.
    async fn verify(&self, key: &ApiKey) -> Result<Verdict, AuthError> {
        let Ok(_slot) = self.verifications.try_acquire() else {
            tracing::warn!(
                limit = MAX_CONCURRENT_VERIFICATIONS,
                "too many agent keys being verified at once"
            );
            return Err(AuthError::RateLimited);
        };
        let checks = async {
            if let Some(refusal) = self.authenticate_at_es(key).await? {
                return Ok(Verdict::Refused(refusal));
            }
            self.lookup(key.id()).await
        };
        tokio::time::timeout(self.timeout, checks).await.map_err(|_| {
            AuthError::Unavailable("elasticsearch did not answer the key checks in time".into())
        })?
    }

    /// `GET _security/_authenticate` with the agent's own key: `None` when Elasticsearch
    /// authenticates it as exactly this API key.
    async fn authenticate_at_es(&self, key: &ApiKey) -> Result<Option<Refusal>, AuthError> {
        let Some(header) = key.header() else { return Ok(Some(Refusal::NotAuthenticated)) };
        self.counters.authenticate_requests.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::ES_AUTH_REQUESTS_TOTAL, "call" => m::ES_AUTH_AUTHENTICATE)
            .increment(1);
        // the per-request header replaces the store's own credentials for this request
        let response = self
            .client
            .security()
            .authenticate()
            .header(AUTHORIZATION, header)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status_code().as_u16();
        match status {
            200 => {}
            400 | 401 | 403 => return Ok(Some(Refusal::NotAuthenticated)),
            _ => return Err(failed("_authenticate", status, response).await),
        }
        let body: Value = response
            .json()
            .await
            .map_err(|e| AuthError::Unavailable(format!("unreadable _authenticate answer: {e}")))?;
        Ok(authenticated_as(&body, key.id()))
    }

    /// The enrollment documents of `key_id`, judged by [`verdict`].
    async fn lookup(&self, key_id: &str) -> Result<Verdict, AuthError> {
        self.counters.enrollment_lookups.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::ES_AUTH_REQUESTS_TOTAL, "call" => m::ES_AUTH_ENROLLMENT_LOOKUP)
            .increment(1);
        let response = self
            .client
            .search(SearchParts::Index(&[self.index.as_str()]))
            // no index yet means no enrollment key yet
            .ignore_unavailable(true)
            .body(lookup_query(key_id))
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status_code().as_u16();
        if status != 200 {
            if matches!(status, 401 | 403) {
                tracing::error!(
                    index = %self.index,
                    status,
                    "opampd's elasticsearch credentials may not read the enrollment index \
                     (give it a service token of elastic/fleet-server)"
                );
            }
            return Err(failed("enrollment lookup", status, response).await);
        }
        let body: Value = response
            .json()
            .await
            .map_err(|e| AuthError::Unavailable(format!("unreadable enrollment lookup: {e}")))?;
        Ok(verdict(&body, key_id))
    }
}

/// `None` when an `_authenticate` answer names the API key `key_id` (and it is enabled).
fn authenticated_as(body: &Value, key_id: &str) -> Option<Refusal> {
    if body.get("enabled") == Some(&Value::Bool(false)) {
        return Some(Refusal::NotAuthenticated);
    }
    match body.pointer("/api_key/id").and_then(Value::as_str) {
        Some(id) if id == key_id => None,
        _ => Some(Refusal::NotThisKey),
    }
}

/// The documents of `key_id`; the expiry is judged by Elasticsearch (its date parsing, its
/// clock) and reported through a named clause, so an expired key is told apart from a missing
/// one in the log.
fn lookup_query(key_id: &str) -> Value {
    json!({
        "size": MAX_DOCUMENTS,
        "track_total_hits": false,
        "_source": ["api_key_id", "active", "policy_id", "namespaces"],
        "query": { "bool": {
            "filter": [ { "term": { "api_key_id": key_id } } ],
            "should": [ { "bool": {
                "_name": EXPIRED,
                "filter": [ { "range": { "expire_at": { "lte": "now" } } } ],
            } } ],
        } },
    })
}

/// Judges the enrollment documents of `key_id` in a search answer: exactly one that is
/// `active: true` and not expired makes the enrollment.
fn verdict(body: &Value, key_id: &str) -> Verdict {
    let hits = body.pointer("/hits/hits").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    let documents: Vec<&Value> = hits
        .iter()
        .filter(|hit| hit.pointer("/_source/api_key_id").and_then(Value::as_str) == Some(key_id))
        .collect();
    if documents.is_empty() {
        return Verdict::Refused(Refusal::NotEnrollmentKey);
    }
    let active: Vec<&Value> = documents
        .into_iter()
        .filter(|hit| hit.pointer("/_source/active") == Some(&Value::Bool(true)))
        .collect();
    if active.is_empty() {
        return Verdict::Refused(Refusal::Inactive);
    }
    let current: Vec<&Value> = active.into_iter().filter(|hit| !expired(hit)).collect();
    match current.as_slice() {
        [] => Verdict::Refused(Refusal::Expired),
        [hit] => Verdict::Enrolled(Arc::new(enrollment(key_id, &hit["_source"]))),
        _ => Verdict::Refused(Refusal::Ambiguous),
    }
}

fn expired(hit: &Value) -> bool {
    hit.get("matched_queries")
        .and_then(Value::as_array)
        .is_some_and(|names| names.iter().any(|n| n.as_str() == Some(EXPIRED)))
}

fn enrollment(key_id: &str, source: &Value) -> Enrollment {
    Enrollment {
        api_key_id: key_id.to_owned(),
        policy_id: source.get("policy_id").and_then(Value::as_str).unwrap_or_default().to_owned(),
        namespaces: source
            .get("namespaces")
            .and_then(Value::as_array)
            .map(|list| list.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default(),
    }
}

/// No answer at all: always transient.
fn unreachable(err: elasticsearch::Error) -> AuthError {
    if err.is_timeout() {
        AuthError::Unavailable("elasticsearch request timed out".into())
    } else {
        AuthError::Unavailable(format!("elasticsearch unreachable: {err}"))
    }
}

/// An answer other than the expected one: 429 is rate-limiting, anything else an outage.
async fn failed(
    call: &str,
    status: u16,
    response: elasticsearch::http::response::Response,
) -> AuthError {
    if status == 429 {
        return AuthError::RateLimited;
    }
    let text = response.text().await.unwrap_or_default();
    AuthError::Unavailable(format!("{call} answered {status}: {}", super::error_reason(&text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(source: Value, expired: bool) -> Value {
        let mut hit = json!({ "_id": "doc", "_source": source });
        if expired {
            hit["matched_queries"] = json!([EXPIRED]);
        }
        hit
    }

    fn answer(hits: Vec<Value>) -> Value {
        json!({ "hits": { "hits": hits } })
    }

    fn doc(active: Value) -> Value {
        json!({ "api_key_id": "kid", "active": active, "policy_id": "p1", "namespaces": ["default", "prod"] })
    }

    fn refusal(body: &Value) -> Option<Refusal> {
        match verdict(body, "kid") {
            Verdict::Refused(r) => Some(r),
            Verdict::Enrolled(_) => None,
        }
    }

    #[test]
    fn exactly_one_current_document_enrolls() {
        let Verdict::Enrolled(e) = verdict(&answer(vec![hit(doc(json!(true)), false)]), "kid")
        else {
            panic!("expected an enrollment")
        };
        assert_eq!(
            *e,
            Enrollment {
                api_key_id: "kid".into(),
                policy_id: "p1".into(),
                namespaces: vec!["default".into(), "prod".into()],
            }
        );
        // an inactive or expired twin does not make it ambiguous
        let body = answer(vec![
            hit(doc(json!(true)), false),
            hit(doc(json!(false)), false),
            hit(doc(json!(true)), true),
        ]);
        assert_eq!(refusal(&body), None);
    }

    #[test]
    fn documents_are_judged_in_order_of_what_is_wrong() {
        for (name, body, expected) in [
            ("no document", answer(vec![]), Refusal::NotEnrollmentKey),
            ("unreadable answer", json!({}), Refusal::NotEnrollmentKey),
            (
                "another key's document",
                answer(vec![hit(json!({ "api_key_id": "other", "active": true }), false)]),
                Refusal::NotEnrollmentKey,
            ),
            ("inactive", answer(vec![hit(doc(json!(false)), false)]), Refusal::Inactive),
            (
                "active missing",
                answer(vec![hit(json!({ "api_key_id": "kid" }), false)]),
                Refusal::Inactive,
            ),
            ("active as text", answer(vec![hit(doc(json!("true")), false)]), Refusal::Inactive),
            ("expired", answer(vec![hit(doc(json!(true)), true)]), Refusal::Expired),
            ("inactive and expired", answer(vec![hit(doc(json!(false)), true)]), Refusal::Inactive),
            (
                "two current documents",
                answer(vec![hit(doc(json!(true)), false), hit(doc(json!(true)), false)]),
                Refusal::Ambiguous,
            ),
        ] {
            assert_eq!(refusal(&body), Some(expected), "{name}");
        }
    }

    #[test]
    fn missing_policy_and_namespaces_are_empty() {
        let body = answer(vec![hit(json!({ "api_key_id": "kid", "active": true }), false)]);
        let Verdict::Enrolled(e) = verdict(&body, "kid") else { panic!("expected an enrollment") };
        assert_eq!((e.policy_id.as_str(), e.namespaces.len()), ("", 0));
    }

    #[test]
    fn authenticate_must_name_the_presented_key() {
        let ok = json!({ "username": "elastic", "api_key": { "id": "kid", "name": "k" }, "enabled": true });
        assert_eq!(authenticated_as(&ok, "kid"), None);
        assert_eq!(authenticated_as(&ok, "other"), Some(Refusal::NotThisKey));
        let user =
            json!({ "username": "elastic", "authentication_type": "realm", "enabled": true });
        assert_eq!(authenticated_as(&user, "kid"), Some(Refusal::NotThisKey));
        let disabled = json!({ "api_key": { "id": "kid" }, "enabled": false });
        assert_eq!(authenticated_as(&disabled, "kid"), Some(Refusal::NotAuthenticated));
    }

    #[test]
    fn lookup_filters_by_key_id_and_names_the_expiry_clause() {
        let q = lookup_query("kid");
        assert_eq!(q["query"]["bool"]["filter"][0]["term"]["api_key_id"], "kid");
        assert_eq!(q["query"]["bool"]["should"][0]["bool"]["_name"], EXPIRED);
    }

    #[test]
    fn api_keys_need_both_parts_and_never_show_the_secret() {
        assert!(ApiKey::new("", Secret::new("s")).is_none());
        assert!(ApiKey::new("id", Secret::new("")).is_none());
        let key = ApiKey::new("kid", Secret::new("hunter2")).unwrap();
        let shown = format!("{key:?}");
        assert!(shown.contains("kid") && !shown.contains("hunter2"), "{shown}");
        let header = key.header().unwrap();
        assert!(header.is_sensitive());
        assert_eq!(header.to_str().unwrap(), format!("ApiKey {}", STANDARD.encode("kid:hunter2")));
    }

    #[test]
    fn fingerprints_hide_the_secret_and_tell_keys_apart() {
        let a = ApiKey::new("kid", Secret::new("hunter2")).unwrap().fingerprint();
        let b = ApiKey::new("kid", Secret::new("hunter3")).unwrap().fingerprint();
        let c = ApiKey::new("kidh", Secret::new("unter2")).unwrap().fingerprint();
        assert_ne!(a, b);
        assert_ne!(a, c, "the split between id and secret counts");
        assert_eq!(a, ApiKey::new("kid", Secret::new("hunter2")).unwrap().fingerprint());
        assert!(!a.windows(7).any(|w| w == b"hunter2"));
    }

    #[test]
    fn refusals_are_cached_briefly() {
        let long = AuthCacheConfig { ttl: Duration::from_secs(600), ..AuthCacheConfig::DEFAULT };
        assert_eq!(long.refusal_ttl(), MAX_REFUSAL_TTL);
        let short = AuthCacheConfig { ttl: Duration::from_secs(1), ..AuthCacheConfig::DEFAULT };
        assert_eq!(short.refusal_ttl(), Duration::from_secs(1));
        let expiry = VerdictExpiry { ttl: long.ttl, refusal_ttl: long.refusal_ttl() };
        let now = Instant::now();
        let enrolled = Verdict::Enrolled(Arc::new(enrollment("kid", &json!({}))));
        assert_eq!(expiry.expire_after_create(&[0; 32], &enrolled, now), Some(long.ttl));
        let refused = Verdict::Refused(Refusal::Inactive);
        assert_eq!(expiry.expire_after_create(&[0; 32], &refused, now), Some(MAX_REFUSAL_TTL));
    }
}
