//! Agent authentication: the layer on the OpAMP route that admits a request only with an
//! active enrollment key (`--auth elasticsearch`). It decides from the headers alone, before
//! any body byte is read and before a WebSocket is upgraded, and hands the key's
//! [`Enrollment`] to the transports in the request extensions. Handlers never check keys.
//!
//! The `Authorization` header is parsed here (the one HTTP part); whether the key is good is
//! the store's question (`opamp_store::elasticsearch::enrollment`, cached there). Nothing from
//! the header reaches a log line or a reply except a key id that parsed.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderMap, Method, header};
use opamp_core::Enrollment;
use opamp_store::Secret;
use opamp_store::elasticsearch::enrollment::{ApiKey, AuthError, EnrollmentAuth};

use crate::config::{AuthConfig, Config, StoreConfig};
use crate::error::RequestError;
use crate::telemetry::{AuthResult, Transport, record_auth, record_message};
use crate::ws;

/// Why agent authentication could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("--auth elasticsearch needs the elasticsearch store")]
    NoElasticsearch,
    #[error("{0}")]
    Store(opamp_store::StoreError),
}

/// The key checker `config` asks for (`None` with `--auth none`), on the store's cluster and
/// settings. Warns when agents are not authenticated on a listener others can reach.
pub fn from_config(config: &Config) -> Result<Option<EnrollmentAuth>, AuthSetupError> {
    match (&config.auth, &config.store) {
        (AuthConfig::None, _) => {
            if !config.listen.ip().is_loopback() {
                tracing::warn!(
                    listen = %config.listen,
                    "agent authentication is off (--auth none): anyone who reaches the OpAMP \
                     listener can write agents"
                );
            }
            Ok(None)
        }
        (AuthConfig::Elasticsearch { cache }, StoreConfig::Elasticsearch { es, .. }) => {
            let auth = EnrollmentAuth::new(es, *cache).map_err(AuthSetupError::Store)?;
            tracing::info!(
                enrollment_index = %es.enrollment_index,
                cache_ttl = ?cache.ttl,
                "agents authenticate with enrollment api keys"
            );
            Ok(Some(auth))
        }
        (AuthConfig::Elasticsearch { .. }, StoreConfig::Embedded { .. }) => {
            Err(AuthSetupError::NoElasticsearch)
        }
    }
}

/// The middleware (`axum::middleware::from_fn_with_state`): 401/429/503 from the headers, or
/// the request goes on with its [`Enrollment`] in the extensions.
pub async fn require_enrollment_key(
    State(auth): State<EnrollmentAuth>,
    mut req: Request,
    next: Next,
) -> Response {
    let upgrade = req.method() == Method::GET && ws::is_upgrade(req.headers());
    match authenticate(&auth, req.headers(), upgrade).await {
        Ok(enrollment) => {
            record_auth(AuthResult::Ok);
            req.extensions_mut().insert(enrollment);
            next.run(req).await
        }
        Err(err) => {
            record_auth(match err {
                RequestError::RateLimited => AuthResult::RateLimited,
                RequestError::Unavailable(_) => AuthResult::Unavailable,
                _ => AuthResult::Refused,
            });
            // an upgrade is a session, not a message; a refused POST is a message that failed
            if !upgrade {
                record_message(Transport::Http, err.outcome(), None);
            }
            err.into_http(Bytes::new())
        }
    }
}

async fn authenticate(
    auth: &EnrollmentAuth,
    headers: &HeaderMap,
    upgrade: bool,
) -> Result<Arc<Enrollment>, RequestError> {
    let key = parse_authorization(headers).map_err(|reason| {
        tracing::info!(reason, websocket = upgrade, "agent refused: unusable credentials");
        RequestError::Unauthorized(reason)
    })?;
    auth.authenticate(&key).await.map_err(|err| {
        match &err {
            AuthError::Refused(why) => tracing::info!(
                api_key_id = key.id(),
                reason = why.as_str(),
                websocket = upgrade,
                "agent refused"
            ),
            AuthError::RateLimited => tracing::warn!(
                api_key_id = key.id(),
                websocket = upgrade,
                "agent key check rate-limited; agent told to retry later"
            ),
            AuthError::Unavailable(why) => tracing::warn!(
                api_key_id = key.id(),
                error = %why,
                websocket = upgrade,
                "agent key could not be checked; agent told to retry later"
            ),
        }
        RequestError::from(err)
    })
}

/// The agent's key from `Authorization: ApiKey <base64(id:key)>`: exactly one such header,
/// the scheme in any case, standard padded base64 of UTF-8 text, split at the first `:`, both
/// parts non-empty. The error is a fixed reason for the log, never the header's content.
pub fn parse_authorization(headers: &HeaderMap) -> Result<ApiKey, &'static str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or("no authorization header")?;
    if values.next().is_some() {
        return Err("more than one authorization header");
    }
    let text = value.to_str().map_err(|_| "authorization header is not visible ascii")?;
    let (scheme, token) =
        text.trim().split_once(' ').ok_or("authorization header has no scheme")?;
    if !scheme.eq_ignore_ascii_case("ApiKey") {
        return Err("authorization scheme is not ApiKey");
    }
    let decoded = STANDARD.decode(token.trim()).map_err(|_| "api key is not standard base64")?;
    let decoded = String::from_utf8(decoded).map_err(|_| "api key is not utf-8")?;
    let (id, secret) = decoded.split_once(':').ok_or("api key is not id:key")?;
    ApiKey::new(id, Secret::new(secret)).ok_or("api key id or secret is empty")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn encoded(text: &str) -> String {
        STANDARD.encode(text)
    }

    #[test]
    fn api_key_headers_parse() {
        for scheme in ["ApiKey", "apikey", "APIKEY"] {
            let value = format!("{scheme} {}", encoded("kid:s3cret"));
            let key = parse_authorization(&headers(&[&value])).expect("parses");
            assert_eq!(key.id(), "kid");
        }
        // split once: the secret may hold a colon
        let key = parse_authorization(&headers(&[&format!("ApiKey {}", encoded("kid:a:b"))]));
        assert_eq!(key.unwrap().id(), "kid");
    }

    #[test]
    fn anything_else_is_refused_without_echoing_it() {
        let cases = [
            (vec![], "no authorization header"),
            (vec!["ApiKey a2lkOnMzY3JldA==", "ApiKey a2lkOnMzY3JldA=="], "more than one"),
            (vec!["a2lkOnMzY3JldA=="], "no scheme"),
            (vec!["Bearer a2lkOnMzY3JldA=="], "not ApiKey"),
            (vec!["Basic a2lkOnMzY3JldA=="], "not ApiKey"),
            (vec!["ApiKey not*base64"], "not standard base64"),
            (vec!["ApiKey a2lkOnMzY3JldA"], "not standard base64"), // unpadded
            (vec!["ApiKey a2lkOnMzY3JldA-_"], "not standard base64"), // url alphabet
            (vec!["ApiKey //79"], "not utf-8"),
            (vec!["ApiKey a2lkczNjcmV0"], "not id:key"), // "kids3cret"
            (vec!["ApiKey OnMzY3JldA=="], "empty"),      // ":s3cret"
            (vec!["ApiKey a2lkOg=="], "empty"),          // "kid:"
        ];
        for (values, expected) in cases {
            let why = parse_authorization(&headers(&values)).expect_err("refused");
            assert!(why.contains(expected), "{values:?}: {why}");
            assert!(!why.contains("s3cret") && !why.contains("a2lk"), "{why}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_bytes(b"ApiKey \xff").unwrap());
        assert!(parse_authorization(&h).unwrap_err().contains("visible ascii"));
    }
}
