//! The plain-HTTP OpAMP transport: `POST /v1/opamp` with a protobuf body, and the router that
//! hands `GET /v1/opamp` with a WebSocket upgrade to [`ws`](crate::ws). Owns media types,
//! size limits, gzip both ways and load shedding; the message itself goes to
//! [`OpampService`](crate::service::OpampService). Must not allocate past the message limit on
//! any input, including gzip bombs.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Router, middleware};
use bytes::Bytes;
use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use opamp_core::Enrollment;

use crate::auth;
use crate::error::{PROTOBUF, RequestError};
use crate::service::{OpampService, echo_uid};
use crate::state::AppState;
use crate::telemetry::{GaugeGuard, Outcome, Transport, record_message};
use crate::ws;

pub const OPAMP_PATH: &str = "/v1/opamp";

/// The OpAMP listener's routes. With agent authentication on, the route sits behind the
/// [`auth`] layer, which decides from the headers before this module reads a body byte or
/// [`ws`] upgrades anything.
pub fn router(state: AppState) -> Router {
    let mut route = any(opamp);
    if let Some(checker) = state.auth.clone() {
        route = route.layer(middleware::from_fn_with_state(checker, auth::require_enrollment_key));
    }
    Router::new().route(OPAMP_PATH, route).with_state(state)
}

async fn opamp(State(state): State<AppState>, req: Request) -> Response {
    if req.method() == Method::GET && ws::is_upgrade(req.headers()) {
        // a session, not a message: the WebSocket transport counts its messages itself
        return ws::upgrade(state, req).await;
    }
    let started = Instant::now();
    let result = match *req.method() {
        Method::POST => post_with_limits(&state, req).await,
        Method::GET => Err((RequestError::UpgradeRequired, Bytes::new())),
        _ => Err((RequestError::MethodNotAllowed, Bytes::new())),
    };
    let (outcome, response) = match result {
        Ok(resp) => (Outcome::Ok, resp),
        Err((err, uid)) => (err.outcome(), err.into_http(uid)),
    };
    tracing::debug!(
        status = response.status().as_u16(),
        outcome = outcome.as_str(),
        elapsed_us = started.elapsed().as_micros() as u64,
        "opamp request"
    );
    record_message(Transport::Http, outcome, Some(started));
    response
}

type Failure = (RequestError, Bytes);

/// Sheds load beyond `max_in_flight` and bounds the whole request by `request_timeout`.
async fn post_with_limits(state: &AppState, req: Request) -> Result<Response, Failure> {
    // try_acquire, not acquire: a full server answers 503 at once instead of queueing
    let Ok(_permit) = state.in_flight.clone().try_acquire_owned() else {
        return Err((RequestError::Overloaded, Bytes::new()));
    };
    let _gauge = GaugeGuard::in_flight();
    // A timeout can fire after the store applied the write; the agent then retries with the
    // same sequence_num, reads as a duplicate and is asked for its full state: safe.
    // The uid is known only once the body is decoded; the slot keeps it for the timeout reply.
    let uid = std::sync::OnceLock::new();
    match tokio::time::timeout(state.limits.request_timeout, post(state, req, &uid)).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(timeout = ?state.limits.request_timeout, "request timed out");
            let uid = uid.get().cloned().unwrap_or_default();
            Err((RequestError::Unavailable("request timed out".into()), uid))
        }
    }
}

async fn post(
    state: &AppState,
    req: Request,
    uid_slot: &std::sync::OnceLock<Bytes>,
) -> Result<Response, Failure> {
    let limit = state.limits.max_message_bytes;
    let (parts, body) = req.into_parts();
    let no_uid = |e| (e, Bytes::new());
    check_content_type(&parts.headers).map_err(no_uid)?;
    let gzip = request_is_gzip(&parts.headers).map_err(no_uid)?;
    let payload = read_payload(body, &parts.headers, gzip, limit).await.map_err(no_uid)?;
    let msg = OpampService::decode(&payload).map_err(no_uid)?;
    let _ = uid_slot.set(echo_uid(Some(&msg)));
    let enrollment = parts.extensions.get::<Arc<Enrollment>>();
    let reply =
        state.service.handle(&msg, enrollment).await.map_err(|e| (e, echo_uid(Some(&msg))))?;
    let encoded = OpampService::encode(&reply, limit).map_err(|e| (e, echo_uid(Some(&msg))))?;
    Ok(protobuf_response(encoded, accepts_gzip(&parts.headers)))
}

fn protobuf_response(encoded: Vec<u8>, gzip: bool) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    let body = if gzip {
        // replies are small (tens of bytes), so compressing inline is cheaper than a thread hop
        let mut enc = GzEncoder::new(Vec::with_capacity(encoded.len() + 32), Compression::fast());
        match enc.write_all(&encoded).and_then(|()| enc.finish()) {
            Ok(compressed) => {
                headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                compressed
            }
            Err(_) => encoded,
        }
    } else {
        encoded
    };
    (StatusCode::OK, headers, body).into_response()
}

/// Content-Type must be `application/x-protobuf`, parameters allowed, any case.
fn check_content_type(headers: &HeaderMap) -> Result<(), RequestError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .ok_or_else(|| RequestError::UnsupportedMediaType("missing content-type".into()))?;
    let text = value
        .to_str()
        .map_err(|_| RequestError::UnsupportedMediaType("unreadable content-type".into()))?;
    let essence = text.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case(PROTOBUF) {
        Ok(())
    } else {
        Err(RequestError::UnsupportedMediaType(format!(
            "content-type {essence:?}, want {PROTOBUF}"
        )))
    }
}

/// True for a gzip body, false for identity; any other coding (or a chain) is unsupported.
fn request_is_gzip(headers: &HeaderMap) -> Result<bool, RequestError> {
    let mut gzip = false;
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = value.to_str().map_err(|_| {
            RequestError::UnsupportedMediaType("unreadable content-encoding".into())
        })?;
        for coding in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                if gzip {
                    return Err(RequestError::UnsupportedMediaType("gzip applied twice".into()));
                }
                gzip = true;
            } else if !coding.eq_ignore_ascii_case("identity") {
                return Err(RequestError::UnsupportedMediaType(format!(
                    "content-encoding {coding:?} (gzip and identity are supported)"
                )));
            }
        }
    }
    Ok(gzip)
}

/// True when `Accept-Encoding` allows gzip (q > 0 for `gzip`, `x-gzip` or `*`). Absent: no.
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip_q: Option<f32> = None;
    let mut star_q: Option<f32> = None;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(text) = value.to_str() else { continue };
        for item in text.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim();
            let q = parts
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    k.trim().eq_ignore_ascii_case("q").then(|| v.trim().parse::<f32>().ok())?
                })
                .next()
                .unwrap_or(1.0);
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                gzip_q = Some(gzip_q.map_or(q, |old| old.max(q)));
            } else if coding == "*" {
                star_q = Some(q);
            }
        }
    }
    gzip_q.or(star_q).is_some_and(|q| q > 0.0)
}

/// Reads the body under the limit and inflates it when gzipped.
async fn read_payload(
    body: Body,
    headers: &HeaderMap,
    gzip: bool,
    limit: usize,
) -> Result<Bytes, RequestError> {
    // A gzip body of incompressible data is slightly larger than the data (stored blocks cost
    // 5 bytes per 64 KiB plus an 18 byte frame), so the wire cap gets a little slack.
    let wire_limit = if gzip { limit.saturating_add(limit / 1024 + 1024) } else { limit };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > wire_limit as u64) {
        return Err(RequestError::PayloadTooLarge { limit });
    }
    let wire = Limited::new(body, wire_limit).collect().await.map_err(|e| {
        if e.downcast_ref::<LengthLimitError>().is_some() {
            RequestError::PayloadTooLarge { limit }
        } else {
            RequestError::BadRequest("request body could not be read".into())
        }
    })?;
    let wire = wire.to_bytes();
    if !gzip {
        return Ok(wire);
    }
    // inflating up to 64 MiB is CPU work that must not stall the runtime's worker threads
    tokio::task::spawn_blocking(move || gunzip(&wire, limit))
        .await
        .map_err(|_| RequestError::Internal("gzip task failed".into()))?
        .map(Bytes::from)
}

/// Inflates `compressed`, failing as soon as the output would pass `limit`. The output buffer
/// grows by doubling but never beyond `limit`, so a bomb costs at most `limit` bytes of memory.
pub fn gunzip(compressed: &[u8], limit: usize) -> Result<Vec<u8>, RequestError> {
    let mut decoder = MultiGzDecoder::new(compressed);
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match decoder.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(RequestError::BadRequest("invalid gzip body".into())),
        };
        let needed = out.len() + n;
        if needed > limit {
            return Err(RequestError::PayloadTooLarge { limit });
        }
        if needed > out.capacity() {
            let target = needed.max(out.capacity().saturating_mul(2)).min(limit);
            out.reserve_exact(target - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn content_type_is_parsed_as_a_media_type() {
        assert!(
            check_content_type(&headers(&[("content-type", "application/x-protobuf")])).is_ok()
        );
        assert!(
            check_content_type(&headers(&[("content-type", "Application/X-Protobuf; charset=x")]))
                .is_ok()
        );
        assert!(check_content_type(&headers(&[("content-type", "text/plain")])).is_err());
        assert!(check_content_type(&headers(&[])).is_err());
    }

    #[test]
    fn content_encoding_accepts_gzip_and_identity_only() {
        assert_eq!(request_is_gzip(&headers(&[])), Ok(false));
        assert_eq!(request_is_gzip(&headers(&[("content-encoding", "GZIP")])), Ok(true));
        assert_eq!(request_is_gzip(&headers(&[("content-encoding", "identity")])), Ok(false));
        assert!(request_is_gzip(&headers(&[("content-encoding", "br")])).is_err());
        assert!(request_is_gzip(&headers(&[("content-encoding", "gzip, gzip")])).is_err());
    }

    #[test]
    fn accept_encoding_q_values() {
        assert!(!accepts_gzip(&headers(&[])));
        assert!(accepts_gzip(&headers(&[("accept-encoding", "gzip")])));
        assert!(accepts_gzip(&headers(&[("accept-encoding", "br, gzip;q=0.5")])));
        assert!(!accepts_gzip(&headers(&[("accept-encoding", "gzip;q=0")])));
        assert!(!accepts_gzip(&headers(&[("accept-encoding", "identity")])));
        assert!(accepts_gzip(&headers(&[("accept-encoding", "*")])));
        assert!(!accepts_gzip(&headers(&[("accept-encoding", "*, gzip;q=0")])));
        // an unreadable q-value is ignored, leaving the default of 1
        assert!(accepts_gzip(&headers(&[("accept-encoding", "gzip;q=bogus")])));
    }

    #[test]
    fn gunzip_round_trips() {
        let data = b"hello opamp".repeat(1000);
        assert_eq!(gunzip(&gzip(&data), 1 << 20).unwrap(), data);
    }

    #[test]
    fn gunzip_stops_a_bomb_at_the_limit() {
        let bomb = gzip(&vec![0u8; 100 << 20]);
        assert!(bomb.len() < 200 << 10, "a bomb is small on the wire");
        let started = Instant::now();
        assert_eq!(gunzip(&bomb, 1 << 20), Err(RequestError::PayloadTooLarge { limit: 1 << 20 }));
        assert!(started.elapsed().as_secs() < 2);
    }

    #[test]
    fn gunzip_accepts_exactly_the_limit() {
        let data = vec![1u8; 4096];
        assert_eq!(gunzip(&gzip(&data), 4096).unwrap().len(), 4096);
        assert!(gunzip(&gzip(&data), 4095).is_err());
    }

    #[test]
    fn gunzip_rejects_garbage_as_bad_request() {
        assert!(matches!(gunzip(b"not gzip at all", 1024), Err(RequestError::BadRequest(_))));
    }
}
