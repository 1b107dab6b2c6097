//! Test support for a security-enabled Elasticsearch (what fleet deployments run): where it is
//! (`OPAMPD_TEST_ES_SECURE_URL` and `OPAMPD_TEST_ES_SECURE_PASSWORD`, which `scripts/test.sh`
//! sets), and the fleet objects agent-authentication tests need: a service token of
//! `elastic/fleet-server`, API keys and enrollment-key documents. Compiled only for tests and
//! the `conformance` feature; it asserts instead of returning errors.

use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::time::Duration;

use elasticsearch::Elasticsearch;
use elasticsearch::auth::Credentials;
use elasticsearch::http::Method;
use elasticsearch::http::headers::{HeaderMap, HeaderName, HeaderValue};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use futures::FutureExt;
use opamp_proto::InstanceUid;
use serde_json::{Value, json};
use url::Url;

use crate::Secret;
use crate::elasticsearch::enrollment::ApiKey;
use crate::elasticsearch::{DEFAULT_ENROLLMENT_INDEX, EsAuth, EsConfig};

/// Bound of every request the fixture makes.
const REQUEST_LIMIT: Duration = Duration::from_secs(30);

/// The secured test cluster's URL and `elastic` password from the environment, or `None`
/// (with a loud line) when these tests must be skipped. With `CI=true` a missing cluster fails
/// the test instead, like [`test_es_url`](crate::conformance::test_es_url).
pub fn test_es_secure() -> Option<(Url, Secret)> {
    let url = std::env::var("OPAMPD_TEST_ES_SECURE_URL").unwrap_or_default();
    let password = std::env::var("OPAMPD_TEST_ES_SECURE_PASSWORD").unwrap_or_default();
    if !url.is_empty() && !password.is_empty() {
        let url = url.parse().expect("OPAMPD_TEST_ES_SECURE_URL is not a url");
        return Some((url, Secret::new(password)));
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "OPAMPD_TEST_ES_SECURE_URL and OPAMPD_TEST_ES_SECURE_PASSWORD must name a running \
             Elasticsearch with security on; run scripts/test.sh"
        );
    }
    eprintln!(
        "SKIPPING secured elasticsearch tests: OPAMPD_TEST_ES_SECURE_URL or \
         OPAMPD_TEST_ES_SECURE_PASSWORD is not set (scripts/test.sh sets them)"
    );
    None
}

/// An API key created for a test: its id, its secret and the encoded `base64(id:key)` an agent
/// sends as `Authorization: ApiKey <encoded>`.
#[derive(Debug, Clone)]
pub struct TestKey {
    pub id: String,
    pub key: Secret,
    pub encoded: Secret,
}

impl TestKey {
    pub fn api_key(&self) -> ApiKey {
        ApiKey::new(self.id.clone(), self.key.clone()).expect("elasticsearch keys are not empty")
    }
}

/// One test's handle on the secured cluster: a fresh service token of `elastic/fleet-server`
/// (what opampd is given), and what the test created, removed by [`close`](Self::close).
#[derive(Debug)]
pub struct SecuredCluster {
    pub url: Url,
    elastic: Elasticsearch,
    fleet: Elasticsearch,
    token: Secret,
    token_name: String,
    keys: Mutex<Vec<String>>,
}

impl SecuredCluster {
    /// `None` when the secured tests are skipped; otherwise creates a service token.
    pub async fn connect() -> Option<Self> {
        let (url, password) = test_es_secure()?;
        let elastic = client(&url, Credentials::Basic("elastic".into(), password.expose().into()));
        let token_name = format!("opampd-test-{}", InstanceUid::new_v7());
        let path = format!("/_security/service/elastic/fleet-server/credential/token/{token_name}");
        let (status, body) = call(&elastic, Method::Post, &path, None).await;
        assert_eq!(status, 200, "creating a service token as elastic: {body}");
        let token = Secret::new(body["token"]["value"].as_str().expect("token.value"));
        let fleet = client(&url, Credentials::Bearer(token.expose().into()));
        Some(Self { url, elastic, fleet, token, token_name, keys: Mutex::new(Vec::new()) })
    }

    /// The service token, as opampd's `--es-service-token`.
    pub fn service_token(&self) -> &Secret {
        &self.token
    }

    /// The store's settings for this cluster with the service token, on `index`.
    pub fn es_config(&self, index: &str) -> EsConfig {
        let mut es = EsConfig::new(self.url.clone());
        es.index = index.to_owned();
        es.auth = EsAuth::ServiceToken(self.token.clone());
        es
    }

    /// A new API key (`POST _security/api_key` as `elastic`), invalidated at close.
    pub async fn api_key(&self, name: &str) -> TestKey {
        let body = json!({ "name": name });
        let (status, body) =
            call(&self.elastic, Method::Post, "/_security/api_key", Some(body)).await;
        assert_eq!(status, 200, "creating an api key: {body}");
        let text = |field: &str| body[field].as_str().expect("api key field").to_owned();
        let key = TestKey {
            id: text("id"),
            key: Secret::new(text("api_key")),
            encoded: Secret::new(text("encoded")),
        };
        self.keys.lock().expect("not poisoned").push(key.id.clone());
        key
    }

    /// Invalidates `key` (`DELETE _security/api_key`).
    pub async fn invalidate(&self, key: &TestKey) {
        let body = json!({ "ids": [key.id] });
        let (status, body) =
            call(&self.elastic, Method::Delete, "/_security/api_key", Some(body)).await;
        assert_eq!(status, 200, "invalidating an api key: {body}");
    }

    /// Makes `key` an active enrollment key of `policy_id`: a fleet document (id = key id) in
    /// the enrollment index, written as fleet-server's service account and refreshed.
    pub async fn enroll(&self, key: &TestKey, policy_id: &str, namespaces: &[&str]) {
        let doc = json!({ "active": true, "policy_id": policy_id, "namespaces": namespaces });
        self.put_enrollment(key, doc).await;
    }

    /// Writes the enrollment document of `key` with the fields of `extra` (`active`,
    /// `policy_id`, `expire_at`, ...) on top of the ones Kibana always writes.
    pub async fn put_enrollment(&self, key: &TestKey, extra: Value) {
        let mut doc = json!({
            "api_key_id": key.id,
            "api_key": key.encoded.expose(),
            "name": format!("opampd test {}", key.id),
            "created_at": "2026-01-01T00:00:00Z",
        });
        for (field, value) in extra.as_object().expect("an object of fields") {
            doc[field] = value.clone();
        }
        let path = format!("/{DEFAULT_ENROLLMENT_INDEX}/_doc/{}?refresh=true", key.id);
        let (status, body) = call(&self.fleet, Method::Put, &path, Some(doc)).await;
        assert!(matches!(status, 200 | 201), "writing an enrollment document: {body}");
    }

    /// Changes fields of the enrollment document of `key` (e.g. `{"active": false}`).
    pub async fn update_enrollment(&self, key: &TestKey, fields: Value) {
        let path = format!("/{DEFAULT_ENROLLMENT_INDEX}/_update/{}?refresh=true", key.id);
        let (status, body) =
            call(&self.fleet, Method::Post, &path, Some(json!({ "doc": fields }))).await;
        assert_eq!(status, 200, "updating an enrollment document: {body}");
    }

    /// A document as fleet-server's service account reads it (realtime GET), or `None`.
    pub async fn doc(&self, index: &str, id: &str) -> Option<Value> {
        let (status, body) =
            call(&self.fleet, Method::Get, &format!("/{index}/_doc/{id}"), None).await;
        match status {
            200 => Some(body),
            404 => None,
            other => panic!("GET {index}/{id}: {other} {body}"),
        }
    }

    /// Creates `index` as `elastic` with `body` (settings and mappings); ES may warn about a
    /// dot-prefixed name, which is no error.
    pub async fn create_index(&self, index: &str, body: Value) {
        let (status, answer) =
            call(&self.elastic, Method::Put, &format!("/{index}"), Some(body)).await;
        assert_eq!(status, 200, "creating {index} as elastic: {answer}");
    }

    /// Deletes `index` as `elastic`, if it exists.
    pub async fn delete_index(&self, index: &str) {
        let (status, answer) =
            call(&self.elastic, Method::Delete, &format!("/{index}"), None).await;
        assert!(matches!(status, 200 | 404), "deleting {index} as elastic: {answer}");
    }

    /// The concrete indices `name` (an index or alias) resolves to, as `elastic` sees them;
    /// empty when there is none.
    pub async fn resolve(&self, name: &str) -> Vec<String> {
        let path = format!("/_resolve/index/{name}?expand_wildcards=all");
        let (status, answer) = call(&self.elastic, Method::Get, &path, None).await;
        assert!(matches!(status, 200 | 404), "resolving {name}: {answer}");
        let mut out: Vec<String> = answer["indices"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["name"].as_str().map(str::to_owned))
            .collect();
        for alias in answer["aliases"].as_array().into_iter().flatten() {
            out.extend(
                alias["indices"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i.as_str().map(str::to_owned)),
            );
        }
        out.sort();
        out.dedup();
        out
    }

    /// Runs `test` within `limit`, then [`close`](Self::close)s, also when the test failed
    /// (the failure is then raised again).
    pub async fn run<T>(self, limit: Duration, test: impl AsyncFnOnce(&Self) -> T) -> T {
        let outcome =
            AssertUnwindSafe(tokio::time::timeout(limit, test(&self))).catch_unwind().await;
        self.close().await;
        match outcome {
            Ok(Ok(value)) => value,
            Ok(Err(_)) => panic!("test exceeded {limit:?}"),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Removes what this handle created: its enrollment documents, API keys and service token.
    pub async fn close(self) {
        let keys = std::mem::take(&mut *self.keys.lock().expect("not poisoned"));
        for id in &keys {
            let path = format!("/{DEFAULT_ENROLLMENT_INDEX}/_doc/{id}?refresh=true");
            let _ = call(&self.fleet, Method::Delete, &path, None).await;
        }
        if !keys.is_empty() {
            let body = json!({ "ids": keys });
            let _ = call(&self.elastic, Method::Delete, "/_security/api_key", Some(body)).await;
        }
        let path =
            format!("/_security/service/elastic/fleet-server/credential/token/{}", self.token_name);
        let _ = call(&self.elastic, Method::Delete, &path, None).await;
    }
}

fn client(url: &Url, credentials: Credentials) -> Elasticsearch {
    let transport = TransportBuilder::new(SingleNodeConnectionPool::new(url.clone()))
        .auth(credentials)
        .header(
            HeaderName::from_static("x-elastic-product-origin"),
            HeaderValue::from_static("fleet"),
        )
        .timeout(REQUEST_LIMIT)
        .build()
        .expect("test client builds");
    Elasticsearch::new(transport)
}

/// One request; the status and the JSON body (`Null` when there is none).
async fn call(
    client: &Elasticsearch,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    let sent = client.send(method, path, HeaderMap::new(), Option::<&()>::None, body, None);
    let response = tokio::time::timeout(REQUEST_LIMIT, sent)
        .await
        .unwrap_or_else(|_| panic!("{path}: no answer within {REQUEST_LIMIT:?}"))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = response.status_code().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}
