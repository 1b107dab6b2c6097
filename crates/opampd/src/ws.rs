//! The OpAMP WebSocket transport: `GET /v1/opamp` with an upgrade, then one binary message per
//! `AgentToServer` and one per `ServerToAgent`, each behind the `0x00` frame header. Owns the
//! upgrade, per-session limits and close codes; admission and shutdown phases come from
//! [`Sessions`](crate::sessions::Sessions); the message itself goes to [`OpampService`], exactly
//! as over HTTP. Must not keep
//! per-agent state: several agents may share one connection, so state is keyed on
//! `instance_uid` in the store, never on the connection.
//!
//! Ordering: replies leave in the order the messages arrived. Messages of different agents on
//! one connection are processed concurrently (a bounded pipeline), but a message is never
//! started while an earlier one of the same `instance_uid` is still in flight, so each agent's
//! messages reach the store strictly in order.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use http::{HeaderMap, header};
use opamp_core::Enrollment;
use opamp_proto::Message as _;
use opamp_proto::framing;
use opamp_proto::v1::AgentToServer;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::error::RequestError;
use crate::service::OpampService;
use crate::sessions::{Phase, until};
use crate::state::{AppState, Limits};
use crate::telemetry::{self, GaugeGuard, Outcome, Transport, record_message};

/// tungstenite's read buffer is allocated eagerly per connection (default 128 KiB). 4 KiB holds
/// a heartbeat many times over; a larger message grows the buffer only while it is read.
pub const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Messages of one connection being processed at once. Bounds what one multiplexing peer can
/// hold (each also takes an in-flight permit); a single agent never has more than one.
const MAX_PIPELINE: usize = 32;

/// How long a closing handshake may take before the connection is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// True when the request asks for a WebSocket (`Upgrade: websocket`); other GETs get 426.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.get_all(header::UPGRADE).iter().any(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Answers `GET /v1/opamp` with an upgrade: 101 and a session, or 503 + Retry-After when the
/// session limit is reached or the server is shutting down (before upgrading, so a load
/// balancer can send the agent elsewhere).
pub async fn upgrade(state: AppState, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(u) => u,
        Err(rejection) => {
            tracing::debug!(error = %rejection.body_text(), "websocket upgrade rejected");
            return rejection.into_response();
        }
    };
    if state.shutting_down.get() {
        return refuse("shutting_down");
    }
    let Some(slot) = state.ws.admit() else {
        return refuse("session_limit");
    };
    let limits = state.limits;
    let limit = limits.max_message_bytes;
    let session = Session {
        service: state.service,
        enrollment: parts.extensions.get::<Arc<Enrollment>>().cloned(),
        limits,
        in_flight: state.in_flight,
        phase: state.ws.phase(),
    };
    let abort = state.ws.phase();
    upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        // replies are written and flushed one by one, so nothing waits in a write buffer
        .write_buffer_size(0)
        // one reply (at most the message limit plus frame headers) and a control frame or two
        .max_write_buffer_size(limit.saturating_add(512))
        // the frame header byte comes on top of the protobuf, which the limit is about;
        // tungstenite refuses a longer frame from its header, before allocating for it
        .max_message_size(limit.saturating_add(1))
        .max_frame_size(limit.saturating_add(1))
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"))
        .on_upgrade(move |socket| session.run(socket, slot, abort))
}

fn refuse(reason: &'static str) -> Response {
    tracing::debug!(reason, "websocket upgrade refused");
    metrics::counter!(telemetry::WS_REJECTED_TOTAL, "reason" => reason).increment(1);
    RequestError::Overloaded.into_http(Bytes::new())
}

/// One message being processed, yielding its framed reply. Boxed: `FuturesOrdered` allocates
/// a stub task sized like its future up front, which an idle session would otherwise carry.
type Answer = Pin<Box<dyn Future<Output = Bytes> + Send>>;

/// One upgraded connection. Holds handles only; agents' state lives in the store.
struct Session {
    service: OpampService,
    /// The enrollment key the upgrade request authenticated with, for every message of the
    /// session (`None` without agent authentication).
    enrollment: Option<Arc<Enrollment>>,
    limits: Limits,
    in_flight: Arc<Semaphore>,
    phase: watch::Receiver<Phase>,
}

/// How a session's message loop ended, which decides the closing handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// We close with this code and reason.
    Close(u16, &'static str),
    /// The peer sent a close frame; tungstenite has queued the echo.
    PeerClosed,
    /// The connection failed; nothing more can be sent.
    Broken,
}

/// One received binary message, sorted.
enum Incoming {
    // boxed: an AgentToServer is ~800 bytes, and a blocked one sits in every session's state
    Message(Box<AgentToServer>),
    /// Answered in-band with an error reply; the connection stays open.
    Invalid(RequestError),
    /// Over the message limit: close 1009.
    TooLarge,
}

impl Session {
    /// Runs the session until it ends or the grace period is over (`abort`), whichever first.
    async fn run(
        mut self,
        mut socket: WebSocket,
        _slot: OwnedSemaphorePermit,
        mut abort: watch::Receiver<Phase>,
    ) {
        let _gauge = GaugeGuard::ws_session();
        tokio::select! {
            biased;
            () = until(&mut abort, |p| *p == Phase::Abort) => {
                tracing::debug!("websocket session dropped at the end of the grace period");
            }
            () = self.serve(&mut socket) => {}
        }
    }

    async fn serve(&mut self, socket: &mut WebSocket) {
        let end = self.exchange(socket).await;
        tracing::debug!(end = ?end, "websocket session ending");
        match end {
            End::Close(code, reason) => close(socket, code, reason).await,
            End::PeerClosed => {
                // flushes the close echo tungstenite queued; the server then drops the tcp
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, futures::SinkExt::close(socket)).await;
            }
            End::Broken => {}
        }
    }

    /// The message loop: read, process in a bounded ordered pipeline, reply in order. Returns
    /// once it is closing and every message received has been processed (a message the peer
    /// sent before closing or vanishing is still applied; only its reply is lost).
    async fn exchange(&mut self, socket: &mut WebSocket) -> End {
        let mut pipeline = FuturesOrdered::new();
        // instance_uid of each pipeline entry, in the same order
        let mut uids: VecDeque<Bytes> = VecDeque::new();
        // a message waiting for an earlier one of the same agent to finish
        let mut blocked: Option<Box<AgentToServer>> = None;
        let mut closing: Option<End> = None;
        let idle_timeout = self.limits.ws_idle_timeout;
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        loop {
            if let Some(end) = closing
                && pipeline.is_empty()
                && blocked.is_none()
            {
                return end;
            }
            let reading = closing.is_none() && blocked.is_none() && pipeline.len() < MAX_PIPELINE;
            tokio::select! {
                biased;
                () = until(&mut self.phase, |p| *p != Phase::Open), if closing.is_none() => {
                    closing = Some(End::Close(close_code::AWAY, "server shutting down"));
                }
                Some(frame) = pipeline.next(), if !pipeline.is_empty() => {
                    uids.pop_front();
                    // after the peer closed or vanished the message is applied, the reply dropped
                    if matches!(closing, None | Some(End::Close(..)))
                        && let Err(why) = self.send(socket, frame).await
                    {
                        tracing::debug!(error = %why, "websocket reply not sent");
                        closing = Some(End::Broken);
                    }
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                    if let Some(msg) = blocked.take_if(|m| !uids.contains(&m.instance_uid)) {
                        uids.push_back(msg.instance_uid.clone());
                        pipeline.push_back(self.answer(Ok(msg)));
                    }
                }
                incoming = socket.recv(), if reading => {
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                    match incoming {
                        Some(Ok(Message::Binary(data))) => match self.sort(data) {
                            Incoming::Message(msg) if uids.contains(&msg.instance_uid) => {
                                blocked = Some(msg);
                            }
                            Incoming::Message(msg) => {
                                uids.push_back(msg.instance_uid.clone());
                                pipeline.push_back(self.answer(Ok(msg)));
                            }
                            Incoming::Invalid(err) => {
                                uids.push_back(Bytes::new());
                                pipeline.push_back(self.answer(Err(err)));
                            }
                            Incoming::TooLarge => {
                                record(Outcome::TooLarge, None);
                                closing = Some(End::Close(close_code::SIZE, "message too large"));
                            }
                        },
                        Some(Ok(Message::Text(_))) => {
                            record(Outcome::UnsupportedMediaType, None);
                            closing = Some(End::Close(
                                close_code::UNSUPPORTED,
                                "text messages are not supported, send binary opamp frames",
                            ));
                        }
                        // tungstenite answers pings itself; both only count as activity
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        Some(Ok(Message::Close(_))) => closing = Some(End::PeerClosed),
                        Some(Err(e)) if is_too_large(&e) => {
                            tracing::debug!(error = %e, "websocket message over the limit");
                            record(Outcome::TooLarge, None);
                            closing = Some(End::Close(close_code::SIZE, "message too large"));
                        }
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "websocket read failed");
                            closing = Some(End::Broken);
                        }
                        None => closing = Some(End::Broken),
                    }
                }
                () = &mut idle, if closing.is_none() && pipeline.is_empty() && blocked.is_none() => {
                    tracing::debug!(idle_timeout = ?idle_timeout, "websocket session idle");
                    closing = Some(End::Close(close_code::NORMAL, "idle timeout"));
                }
            }
        }
    }

    /// Strips the frame header and decodes the protobuf; never fails the connection except for
    /// an over-limit message.
    fn sort(&self, data: Bytes) -> Incoming {
        let payload = match framing::decode(data) {
            Ok(p) => p,
            Err(e) => return Incoming::Invalid(RequestError::BadRequest(e.to_string())),
        };
        // a bare (headerless) protobuf may be one byte longer than tungstenite's bound allows
        if payload.len() > self.limits.max_message_bytes {
            return Incoming::TooLarge;
        }
        match OpampService::decode(&payload) {
            Ok(msg) => Incoming::Message(Box::new(msg)),
            Err(e) => Incoming::Invalid(e),
        }
    }

    /// Processes one message (or answers a decode failure) and returns the framed reply.
    /// Every path yields a reply: the server answers every `AgentToServer`.
    fn answer(&self, msg: Result<Box<AgentToServer>, RequestError>) -> Answer {
        let service = self.service.clone();
        let enrollment = self.enrollment.clone();
        let limits = self.limits;
        // taken now, in arrival order; none left sheds this message, as HTTP answers 503
        let permit = self.in_flight.clone().try_acquire_owned().ok();
        Box::pin(async move {
            let started = Instant::now();
            let (uid, result) = match msg {
                Err(err) => (Bytes::new(), Err(err)),
                Ok(msg) => {
                    let uid = msg.instance_uid.clone();
                    let result = match permit {
                        None => Err(RequestError::Overloaded),
                        Some(_permit) => {
                            let _gauge = GaugeGuard::in_flight();
                            handle(&service, &msg, enrollment.as_ref(), limits).await
                        }
                    };
                    (uid, result)
                }
            };
            let (outcome, payload) = match result {
                Ok(encoded) => (Outcome::Ok, encoded),
                Err(err) => (err.outcome(), err.in_band_reply(uid).encode_to_vec()),
            };
            record(outcome, Some(started));
            framing::encode(&payload)
        })
    }

    /// Sends one reply, bounded by the request timeout so a peer that stops reading cannot
    /// hold the session (and its pipeline) forever.
    async fn send(&self, socket: &mut WebSocket, frame: Bytes) -> Result<(), String> {
        match tokio::time::timeout(self.limits.request_timeout, socket.send(Message::Binary(frame)))
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("send timed out".into()),
        }
    }
}

async fn handle(
    service: &OpampService,
    msg: &AgentToServer,
    enrollment: Option<&Arc<Enrollment>>,
    limits: Limits,
) -> Result<Vec<u8>, RequestError> {
    // As over HTTP, a timeout can fire after the store applied the write; the agent's next
    // message then reads as a gap and is asked for its full state: safe.
    let reply = tokio::time::timeout(limits.request_timeout, service.handle(msg, enrollment))
        .await
        .map_err(|_| {
            tracing::warn!(timeout = ?limits.request_timeout, "websocket message timed out");
            RequestError::Unavailable("request timed out".into())
        })??;
    OpampService::encode(&reply, limits.max_message_bytes)
}

fn record(outcome: Outcome, started: Option<Instant>) {
    record_message(Transport::WebSocket, outcome, started);
}

/// Sends a close frame, then waits briefly for the peer's, discarding anything still
/// arriving, so the TCP close is orderly.
async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame { code, reason: Utf8Bytes::from_static(reason) };
    let sent = tokio::time::timeout(CLOSE_TIMEOUT, socket.send(Message::Close(Some(frame)))).await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(_)) = socket.recv().await {}
    })
    .await;
}

/// True for tungstenite's "message/frame over the configured size". axum does not re-export
/// tungstenite's error type, so the class is read from its message (pinned by the ws tests).
fn is_too_large(err: &axum::Error) -> bool {
    err.to_string().starts_with("Space limit exceeded")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_header_is_matched_case_insensitively() {
        let mut h = HeaderMap::new();
        assert!(!is_upgrade(&h));
        h.insert(header::UPGRADE, "WebSocket".parse().unwrap());
        assert!(is_upgrade(&h));
        h.insert(header::UPGRADE, "h2c".parse().unwrap());
        assert!(!is_upgrade(&h));
    }
}
