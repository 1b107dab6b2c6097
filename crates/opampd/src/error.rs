//! Every way an OpAMP request can fail, classified once, with the ONE mapping to an HTTP status
//! and to an OpAMP `ServerToAgent` error reply. Transports never pick statuses themselves.
//! Internal details stay in logs; clients get short, fixed texts.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use opamp_proto::Message;
use opamp_proto::v1::ServerToAgent;

use crate::telemetry::Outcome;

/// The minimum retry delay the OpAMP spec recommends for "unavailable".
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

pub const PROTOBUF: &str = "application/x-protobuf";

/// A failed OpAMP request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The message cannot be decoded or its `instance_uid` is not 16 bytes: the agent must not
    /// retry it. Carries the text put into `error_response.error_message`.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Content-Type is not protobuf or Content-Encoding is not one we inflate.
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// The message (after decompression) exceeds the limit.
    #[error("message larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// No usable credentials (missing, malformed, unknown, revoked, inactive, expired key): the
    /// agent must be given a valid enrollment key. Carries the reason for the log only.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// Authenticated, but not allowed to write this agent (its enrollment key belongs to
    /// another policy). Carries the text put into `error_response.error_message`.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Elasticsearch is rate-limiting the authentication calls: retry later.
    #[error("authentication rate-limited")]
    RateLimited,
    /// Only POST and GET with a WebSocket upgrade exist on /v1/opamp.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A GET without the WebSocket upgrade.
    #[error("websocket upgrade required")]
    UpgradeRequired,
    /// Too many requests in flight, or the store's write queue is full.
    #[error("overloaded")]
    Overloaded,
    /// The store cannot be reached, did not answer in time, or kept losing CAS races.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The store failed in a way retrying will not fix (corrupt record, backend bug).
    #[error("internal error: {0}")]
    Internal(String),
}

impl RequestError {
    pub fn status(&self) -> StatusCode {
        match self {
            // 400 rather than 200 + error_response: the failure is visible to load balancers,
            // access logs and non-OpAMP clients, and OpAMP HTTP clients treat any status other
            // than 200/429/503 as "drop, do not retry", which is exactly BadRequest's meaning.
            // The body is still a ServerToAgent with error_response{BadRequest}.
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Overloaded | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// How the message ended, for the metrics.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::BadRequest(_) => Outcome::BadRequest,
            Self::UnsupportedMediaType(_) => Outcome::UnsupportedMediaType,
            Self::PayloadTooLarge { .. } => Outcome::TooLarge,
            Self::MethodNotAllowed | Self::UpgradeRequired => Outcome::BadMethod,
            Self::Unauthorized(_) => Outcome::Unauthorized,
            Self::Forbidden(_) => Outcome::Forbidden,
            Self::RateLimited => Outcome::RateLimited,
            Self::Overloaded => Outcome::Overloaded,
            Self::Unavailable(_) => Outcome::Unavailable,
            Self::Internal(_) => Outcome::Internal,
        }
    }

    /// The in-band reply of a transport that must answer every message (WebSocket): the
    /// OpAMP form when there is one, otherwise the reply of an internal error.
    pub fn in_band_reply(&self, instance_uid: Bytes) -> ServerToAgent {
        self.server_to_agent(instance_uid.clone()).unwrap_or_else(|| internal_reply(instance_uid))
    }

    /// The OpAMP reply for transports that answer in-band (WebSocket), or `None` when the
    /// failure has no OpAMP form (the request never was an OpAMP message).
    pub fn server_to_agent(&self, instance_uid: Bytes) -> Option<ServerToAgent> {
        match self {
            Self::BadRequest(msg) | Self::Forbidden(msg) => {
                Some(opamp_core::bad_request(instance_uid, msg.clone()))
            }
            Self::RateLimited => Some(opamp_core::unavailable(
                instance_uid,
                "authentication busy, retry later",
                RETRY_AFTER.as_nanos() as u64,
            )),
            Self::PayloadTooLarge { limit } => Some(opamp_core::bad_request(
                instance_uid,
                format!("message larger than {limit} bytes"),
            )),
            Self::Overloaded | Self::Unavailable(_) => Some(opamp_core::unavailable(
                instance_uid,
                "server busy, retry later",
                RETRY_AFTER.as_nanos() as u64,
            )),
            Self::Internal(_) => Some(internal_reply(instance_uid)),
            Self::UnsupportedMediaType(_)
            | Self::MethodNotAllowed
            | Self::UpgradeRequired
            | Self::Unauthorized(_) => None,
        }
    }

    /// The HTTP response. `instance_uid` is echoed in protobuf error bodies when known.
    pub fn into_http(self, instance_uid: Bytes) -> Response {
        let status = self.status();
        let mut resp = match &self {
            Self::BadRequest(_) => protobuf_body(self.server_to_agent(instance_uid)),
            Self::UnsupportedMediaType(what) => {
                text_body(format!("unsupported media type: {what}"))
            }
            Self::PayloadTooLarge { limit } => text_body(format!(
                "message exceeds the {limit} byte limit (after decompression); do not retry"
            )),
            Self::MethodNotAllowed => text_body("use POST, or GET with a websocket upgrade".into()),
            // the reason goes to the log, never to a client probing keys
            Self::Unauthorized(_) => text_body("a valid enrollment api key is required".into()),
            Self::Forbidden(_) | Self::RateLimited => {
                protobuf_body(self.server_to_agent(instance_uid))
            }
            Self::UpgradeRequired => text_body("websocket upgrade required".into()),
            Self::Overloaded | Self::Unavailable(_) => {
                protobuf_body(self.server_to_agent(instance_uid))
            }
            // never leak the backend's words
            Self::Internal(_) => text_body("internal error".into()),
        };
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        match self {
            Self::Overloaded | Self::Unavailable(_) | Self::RateLimited => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER.as_secs()));
            }
            Self::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("ApiKey"));
            }
            Self::MethodNotAllowed => {
                headers.insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
            }
            Self::UpgradeRequired => {
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            _ => {}
        }
        resp
    }
}

impl IntoResponse for RequestError {
    fn into_response(self) -> Response {
        self.into_http(Bytes::new())
    }
}

/// "Retry later" without saying why: the details of an internal error stay in the log.
fn internal_reply(instance_uid: Bytes) -> ServerToAgent {
    opamp_core::unavailable(instance_uid, "internal error", RETRY_AFTER.as_nanos() as u64)
}

fn protobuf_body(msg: Option<ServerToAgent>) -> Response {
    let body = msg.map(|m| m.encode_to_vec()).unwrap_or_default();
    ([(header::CONTENT_TYPE, PROTOBUF)], body).into_response()
}

fn text_body(text: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

impl From<opamp_store::StoreError> for RequestError {
    fn from(err: opamp_store::StoreError) -> Self {
        use opamp_store::StoreError as E;
        match err {
            E::Overloaded => Self::Overloaded,
            E::Unavailable(why) => Self::Unavailable(why),
            // a conflict that escapes the CAS loop means the retries ran out
            E::Conflict => Self::Unavailable("write contention".into()),
            E::Corrupt(why) => Self::Internal(format!("corrupt record: {why}")),
            E::Backend(why) => Self::Internal(why),
        }
    }
}

impl From<opamp_store::elasticsearch::enrollment::AuthError> for RequestError {
    fn from(err: opamp_store::elasticsearch::enrollment::AuthError) -> Self {
        use opamp_store::elasticsearch::enrollment::AuthError as E;
        match err {
            E::Refused(refusal) => Self::Unauthorized(refusal.as_str()),
            E::RateLimited => Self::RateLimited,
            // not 401: that would tell every agent its key is bad during an outage
            E::Unavailable(why) => Self::Unavailable(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opamp_proto::v1::ServerErrorResponseType;

    #[test]
    fn statuses() {
        assert_eq!(RequestError::BadRequest("x".into()).status(), 400);
        assert_eq!(RequestError::UnsupportedMediaType("x".into()).status(), 415);
        assert_eq!(RequestError::PayloadTooLarge { limit: 1 }.status(), 413);
        assert_eq!(RequestError::MethodNotAllowed.status(), 405);
        assert_eq!(RequestError::UpgradeRequired.status(), 426);
        assert_eq!(RequestError::Overloaded.status(), 503);
        assert_eq!(RequestError::Unavailable("x".into()).status(), 503);
        assert_eq!(RequestError::Internal("x".into()).status(), 500);
        assert_eq!(RequestError::Unauthorized("x").status(), 401);
        assert_eq!(RequestError::Forbidden("x".into()).status(), 403);
        assert_eq!(RequestError::RateLimited.status(), 429);
    }

    #[test]
    fn store_errors_classify() {
        use opamp_store::StoreError as E;
        assert_eq!(RequestError::from(E::Overloaded), RequestError::Overloaded);
        assert_eq!(RequestError::from(E::Unavailable("t".into())).status(), 503);
        assert_eq!(RequestError::from(E::Conflict).status(), 503);
        assert_eq!(RequestError::from(E::Corrupt("c".into())).status(), 500);
        assert_eq!(RequestError::from(E::Backend("b".into())).status(), 500);
    }

    #[test]
    fn in_band_replies_are_exclusive_errors() {
        let uid = Bytes::from_static(&[7; 16]);
        let r = RequestError::Unavailable("es down".into()).server_to_agent(uid.clone()).unwrap();
        let e = r.error_response.as_ref().unwrap();
        assert_eq!(e.r#type, ServerErrorResponseType::Unavailable as i32);
        assert!(!e.error_message.contains("es down"), "backend details must not leak");
        assert_eq!(r.instance_uid, uid);
        assert_eq!(r.capabilities, 0);
        let r = RequestError::BadRequest("bad uid".into()).server_to_agent(uid).unwrap();
        assert_eq!(r.error_response.unwrap().r#type, ServerErrorResponseType::BadRequest as i32);
    }

    #[test]
    fn every_error_has_an_in_band_reply() {
        for err in [
            RequestError::BadRequest("x".into()),
            RequestError::UnsupportedMediaType("x".into()),
            RequestError::PayloadTooLarge { limit: 1 },
            RequestError::MethodNotAllowed,
            RequestError::UpgradeRequired,
            RequestError::Overloaded,
            RequestError::Unavailable("x".into()),
            RequestError::Internal("x".into()),
            RequestError::Unauthorized("x"),
            RequestError::Forbidden("x".into()),
            RequestError::RateLimited,
        ] {
            let uid = Bytes::from_static(&[1; 16]);
            let reply = err.in_band_reply(uid.clone());
            assert!(reply.error_response.is_some(), "{err:?}");
            assert_eq!(reply.instance_uid, uid, "{err:?}");
        }
    }

    #[test]
    fn auth_errors_classify() {
        use opamp_store::elasticsearch::enrollment::{AuthError as E, Refusal};
        let refused = RequestError::from(E::Refused(Refusal::Inactive));
        assert_eq!(refused, RequestError::Unauthorized(Refusal::Inactive.as_str()));
        let resp = refused.into_http(Bytes::new());
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "ApiKey");
        for (err, status) in [(E::RateLimited, 429), (E::Unavailable("es down".into()), 503)] {
            let resp = RequestError::from(err).into_http(Bytes::new());
            assert_eq!(resp.status(), status);
            assert_eq!(resp.headers()[header::RETRY_AFTER], "30");
        }
    }

    #[test]
    fn internal_http_body_hides_details() {
        let resp = RequestError::Internal("secret backend text".into()).into_http(Bytes::new());
        assert_eq!(resp.status(), 500);
    }

    #[test]
    fn unavailable_has_retry_after() {
        let resp = RequestError::Overloaded.into_http(Bytes::new());
        assert_eq!(resp.headers()[header::RETRY_AFTER], "30");
    }
}
