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
//!
//! The upgrade is done here on tokio-tungstenite directly (not axum's extractor), so the
//! session owns the raw connection: after our close frame, [`linger`] reads out what the client
//! still sends, so it always receives the close code instead of a reset.
//!
//! Memory: an idle session keeps no buffer. Between messages, once tungstenite holds no data,
//! the session parks: it keeps only the bare stream and builds tungstenite again when the
//! client sends its next bytes ([`Link`]). The message pipeline exists only while messages are
//! in it. What an idle session costs is then its task and the stream, the same whatever it
//! received before and whatever the store (`loadtest/ws-idle-memory.sh` measures it).

mod linger;

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, StatusCode, Version, header};
use hyper_util::rt::TokioIo;
use opamp_core::Enrollment;
use opamp_proto::Message as _;
use opamp_proto::framing;
use opamp_proto::v1::AgentToServer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

use crate::error::RequestError;
use crate::service::OpampService;
use crate::sessions::{Phase, until};
use crate::state::{AppState, Limits};
use crate::telemetry::{self, GaugeGuard, Outcome, Transport, record_message};

/// tungstenite's read buffer is allocated eagerly per connection (default 128 KiB). 4 KiB holds
/// a heartbeat many times over; a larger message grows the buffer. Either way the buffer lives
/// only while the session is not idle (see [`Link`]).
pub const READ_BUFFER_BYTES: usize = 4 * 1024;

/// What a parked session reads (on its task's stack) before building tungstenite again: a
/// heartbeat's frame whole; tungstenite reads the rest of a longer one.
const WAKE_BYTES: usize = 64;

/// Messages of one connection being processed at once. Bounds what one multiplexing peer can
/// hold (each also takes an in-flight permit); a single agent never has more than one.
const MAX_PIPELINE: usize = 32;

/// How long a closing handshake may take before the connection is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The most a client may still send after our close frame before we stop reading and drop the
/// connection anyway (it then sees a reset): enough for the rest of a message several times the
/// default limit, read into one small buffer and thrown away.
const LINGER_BYTES: u64 = 256 << 20;

/// The raw upgraded connection.
type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// An upgraded connection: tungstenite over the tapped raw stream.
type Socket<S = Upgraded> = WebSocketStream<linger::Tapped<S>>;

/// True when the request asks for a WebSocket (`Upgrade: websocket`); other GETs get 426.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.get_all(header::UPGRADE).iter().any(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Answers `GET /v1/opamp` with an upgrade: 101 and a session, or 503 + Retry-After when the
/// session limit is reached or the server is shutting down (before upgrading, so a load
/// balancer can send the agent elsewhere). A malformed handshake is a 400.
pub async fn upgrade(state: AppState, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let accept = match handshake_accept(&parts.version, &parts.headers) {
        Ok(accept) => accept,
        Err(why) => {
            tracing::debug!(error = why, "websocket upgrade rejected");
            return RequestError::BadRequest(why.into()).into_http(Bytes::new());
        }
    };
    let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        tracing::debug!("websocket upgrade on a connection that cannot be upgraded");
        return RequestError::UpgradeRequired.into_http(Bytes::new());
    };
    if state.shutting_down.get() {
        return refuse("shutting_down");
    }
    let Some(slot) = state.ws.admit() else {
        return refuse("session_limit");
    };
    let limits = state.limits;
    let limit = limits.max_message_bytes;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        // replies are written and flushed one by one, so nothing waits in a write buffer
        .write_buffer_size(0)
        // one reply (at most the message limit plus frame headers) and a control frame or two
        .max_write_buffer_size(limit.saturating_add(512))
        // the frame header byte comes on top of the protobuf, which the limit is about;
        // tungstenite refuses a longer frame from its header, before allocating for it
        .max_message_size(Some(limit.saturating_add(1)))
        .max_frame_size(Some(limit.saturating_add(1)));
    let session = Session {
        service: state.service,
        enrollment: parts.extensions.get::<Arc<Enrollment>>().cloned(),
        limits,
        config,
        in_flight: state.in_flight,
        phase: state.ws.phase(),
    };
    let abort = state.ws.phase();
    tokio::spawn(session.start(on_upgrade, slot, abort));
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    response
}

/// Checks an HTTP/1.1 WebSocket opening handshake (RFC 6455 section 4.2.1; the caller checked
/// the method and `Upgrade`) and returns the `Sec-WebSocket-Accept` value, or why it is refused.
fn handshake_accept(version: &Version, headers: &HeaderMap) -> Result<HeaderValue, &'static str> {
    if *version != Version::HTTP_11 {
        return Err("websocket upgrade needs http/1.1");
    }
    let connection_upgrade = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
    });
    if !connection_upgrade {
        return Err("connection header does not include upgrade");
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != b"13") {
        return Err("sec-websocket-version must be 13");
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY).ok_or("sec-websocket-key missing")?;
    // base64 of a SHA-1: always a valid header value
    HeaderValue::try_from(derive_accept_key(key.as_bytes()))
        .map_err(|_| "sec-websocket-accept not encodable")
}

fn refuse(reason: &'static str) -> Response {
    tracing::debug!(reason, "websocket upgrade refused");
    metrics::counter!(telemetry::WS_REJECTED_TOTAL, "reason" => reason).increment(1);
    RequestError::Overloaded.into_http(Bytes::new())
}

/// One message being processed, yielding its framed reply. Boxed: `FuturesOrdered` allocates
/// a stub task sized like its future up front.
type Answer = Pin<Box<dyn Future<Output = Bytes> + Send>>;

/// A session's connection. While messages flow it is tungstenite's socket; once the session is
/// idle and tungstenite holds no data, it is parked: only the bare stream is kept, tungstenite
/// (its read buffer, [`READ_BUFFER_BYTES`] or as large as the largest message read, its write
/// buffer, its waker handles) is dropped, and built again over the stream when the client
/// sends its next bytes. Nothing of the protocol is lost: a parked connection is between whole
/// messages, with nothing half read or unsent (see [`linger::Tapped::quiet`]).
enum Link<S = Upgraded> {
    /// Boxed: inline, the socket would size every session's future, parked or not.
    Active(Box<Socket<S>>),
    Parked(linger::Tapped<S>),
    /// Only while switching between the two (never seen across an await).
    Gone,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Link<S> {
    /// The next message from the client, `None` once the connection is gone. With `may_park`
    /// (the session is idle), a connection with nothing to read is parked until the client
    /// sends again. Cancel-safe, like tungstenite's `next` and tokio's `read` it awaits.
    async fn next(
        &mut self,
        config: WebSocketConfig,
        may_park: bool,
    ) -> Option<Result<Message, tungstenite::Error>> {
        if let Self::Active(socket) = self {
            match futures::poll!(socket.next()) {
                Poll::Ready(item) => return item,
                // pending: tungstenite handed out every whole frame it had read and sent what
                // it owed (a pong); with no partial frame or unsent byte seen by the tap
                // either, its buffers are empty
                Poll::Pending if may_park && socket.get_ref().quiet() => self.park(),
                Poll::Pending => return socket.next().await,
            }
        }
        let Self::Parked(io) = self else { return None };
        let mut head = [0u8; WAKE_BYTES];
        let read = match io.read(&mut head).await {
            Ok(0) => return None,
            Ok(n) => n,
            Err(e) => return Some(Err(e.into())),
        };
        self.active(&head[..read], config).await?.next().await
    }

    fn park(&mut self) {
        if let Self::Active(socket) = std::mem::replace(self, Self::Gone) {
            *self = Self::Parked((*socket).into_inner());
        }
    }

    /// tungstenite's socket, built again over a parked stream (`head`: the bytes already read
    /// from it); `None` when the connection is gone.
    async fn active(&mut self, head: &[u8], config: WebSocketConfig) -> Option<&mut Socket<S>> {
        if let Self::Parked(_) = self
            && let Self::Parked(io) = std::mem::replace(self, Self::Gone)
        {
            // ready at its first poll: building the socket does no I/O
            let socket =
                WebSocketStream::from_partially_read(io, head.to_vec(), Role::Server, Some(config))
                    .await;
            *self = Self::Active(Box::new(socket));
        }
        match self {
            Self::Active(socket) => Some(&mut **socket),
            Self::Parked(_) | Self::Gone => None,
        }
    }

    #[cfg(test)]
    fn is_parked(&self) -> bool {
        matches!(self, Self::Parked(_))
    }
}

/// The messages of a session being processed, in arrival order: created with the first and
/// dropped with the last, so an idle session holds none of it.
#[derive(Default)]
struct Pipeline(Option<Flight>);

struct Flight {
    answers: FuturesOrdered<Answer>,
    /// instance_uid of each answer, in the same order
    uids: VecDeque<Bytes>,
}

impl Pipeline {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |f| f.uids.len())
    }

    fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// True while a message of agent `uid` is being processed.
    fn holds(&self, uid: &Bytes) -> bool {
        self.0.as_ref().is_some_and(|f| f.uids.contains(uid))
    }

    fn push(&mut self, uid: Bytes, answer: Answer) {
        let flight = self.0.get_or_insert_with(|| Flight {
            answers: FuturesOrdered::new(),
            uids: VecDeque::new(),
        });
        flight.uids.push_back(uid);
        flight.answers.push_back(answer);
    }

    /// The next reply in arrival order (`None` when empty). Cancel-safe.
    async fn next(&mut self) -> Option<Bytes> {
        let flight = self.0.as_mut()?;
        let frame = flight.answers.next().await?;
        flight.uids.pop_front();
        if flight.uids.is_empty() {
            self.0 = None;
        }
        Some(frame)
    }
}

/// One upgraded connection. Holds handles only; agents' state lives in the store.
struct Session {
    service: OpampService,
    /// The enrollment key the upgrade request authenticated with, for every message of the
    /// session (`None` without agent authentication).
    enrollment: Option<Arc<Enrollment>>,
    limits: Limits,
    /// tungstenite's settings, for every time the connection is unparked.
    config: WebSocketConfig,
    in_flight: Arc<Semaphore>,
    phase: watch::Receiver<Phase>,
}

/// How a session's message loop ended, which decides the closing handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// We close with this code and reason.
    Close(CloseCode, &'static str),
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
    /// The session's task: waits for the upgrade to complete, then runs the session. Its future
    /// is what every idle session keeps (see the `session_task_is_small` test).
    async fn start(
        self,
        on_upgrade: hyper::upgrade::OnUpgrade,
        slot: OwnedSemaphorePermit,
        abort: watch::Receiver<Phase>,
    ) {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        // parked from the start: tungstenite is built when the client's first bytes arrive
        let link = Link::Parked(linger::Tapped::new(TokioIo::new(upgraded)));
        self.run(link, slot, abort).await;
    }

    /// Runs the session until it ends or the grace period is over (`abort`), whichever first.
    async fn run(
        mut self,
        mut link: Link,
        _slot: OwnedSemaphorePermit,
        mut abort: watch::Receiver<Phase>,
    ) {
        let _gauge = GaugeGuard::ws_session();
        tokio::select! {
            biased;
            () = until(&mut abort, |p| *p == Phase::Abort) => {
                tracing::debug!("websocket session dropped at the end of the grace period");
            }
            () = self.serve(&mut link) => {}
        }
    }

    async fn serve(&mut self, link: &mut Link) {
        let end = self.exchange(link).await;
        tracing::debug!(end = ?end, "websocket session ending");
        match end {
            End::Close(code, reason) => {
                if let Some(socket) = link.active(&[], self.config).await {
                    close(socket, code, reason).await;
                }
            }
            End::PeerClosed => {
                if let Link::Active(socket) = link {
                    // flushes the close echo tungstenite queued; the server then drops the tcp
                    let _ =
                        tokio::time::timeout(CLOSE_TIMEOUT, futures::SinkExt::close(socket)).await;
                }
            }
            End::Broken => {}
        }
    }

    /// The message loop: read, process in a bounded ordered pipeline, reply in order. Returns
    /// once it is closing and every message received has been processed (a message the peer
    /// sent before closing or vanishing is still applied; only its reply is lost).
    async fn exchange(&mut self, link: &mut Link) -> End {
        let mut pipeline = Pipeline::default();
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
            let may_park = reading && pipeline.is_empty();
            tokio::select! {
                biased;
                () = until(&mut self.phase, |p| *p != Phase::Open), if closing.is_none() => {
                    closing = Some(End::Close(CloseCode::Away, "server shutting down"));
                }
                Some(frame) = pipeline.next(), if !pipeline.is_empty() => {
                    // after the peer closed or vanished the message is applied, the reply dropped
                    if matches!(closing, None | Some(End::Close(..)))
                        && let Err(why) = self.send(link, frame).await
                    {
                        tracing::debug!(error = %why, "websocket reply not sent");
                        closing = Some(End::Broken);
                    }
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                    if let Some(msg) = blocked.take_if(|m| !pipeline.holds(&m.instance_uid)) {
                        pipeline.push(msg.instance_uid.clone(), self.answer(Ok(msg)));
                    }
                }
                incoming = link.next(self.config, may_park), if reading => {
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                    match incoming {
                        Some(Ok(Message::Binary(data))) => match self.sort(data) {
                            Incoming::Message(msg) if pipeline.holds(&msg.instance_uid) => {
                                blocked = Some(msg);
                            }
                            Incoming::Message(msg) => {
                                pipeline.push(msg.instance_uid.clone(), self.answer(Ok(msg)));
                            }
                            Incoming::Invalid(err) => {
                                pipeline.push(Bytes::new(), self.answer(Err(err)));
                            }
                            Incoming::TooLarge => {
                                record(Outcome::TooLarge, None);
                                closing = Some(End::Close(CloseCode::Size, "message too large"));
                            }
                        },
                        Some(Ok(Message::Text(_))) => {
                            record(Outcome::UnsupportedMediaType, None);
                            closing = Some(End::Close(
                                CloseCode::Unsupported,
                                "text messages are not supported, send binary opamp frames",
                            ));
                        }
                        // tungstenite answers pings itself; both only count as activity (and
                        // a raw frame is never read)
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                        Some(Ok(Message::Close(_))) => closing = Some(End::PeerClosed),
                        Some(Err(e)) if is_too_large(&e) => {
                            tracing::debug!(error = %e, "websocket message over the limit");
                            record(Outcome::TooLarge, None);
                            closing = Some(End::Close(CloseCode::Size, "message too large"));
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
                    closing = Some(End::Close(CloseCode::Normal, "idle timeout"));
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
    async fn send(&self, link: &mut Link, frame: Bytes) -> Result<(), String> {
        // never parked with a message in the pipeline; built again here all the same
        let Some(socket) = link.active(&[], self.config).await else {
            return Err("connection gone".into());
        };
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

/// Sends a close frame, then reads and discards whatever the client still sends (the rest of a
/// message we refused, say) until its close frame, bounded by time and bytes, so the client
/// reads our close code before the TCP connection goes (see [`linger`]).
async fn close(socket: &mut Socket, code: CloseCode, reason: &'static str) {
    let frame = CloseFrame { code, reason: Utf8Bytes::from_static(reason) };
    let sent = tokio::time::timeout(CLOSE_TIMEOUT, socket.send(Message::Close(Some(frame)))).await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    linger::linger(socket.get_mut(), CLOSE_TIMEOUT, LINGER_BYTES).await;
}

/// True for tungstenite's "message or frame over the configured size".
fn is_too_large(err: &tungstenite::Error) -> bool {
    matches!(err, tungstenite::Error::Capacity(CapacityError::MessageTooLong { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, C, D, F: Future>(_: impl FnOnce(A, B, C, D) -> F) -> usize {
        size_of::<F>()
    }

    #[test]
    fn session_task_is_small() {
        // every idle session keeps its task (this future, in a task cell) and the bare stream;
        // tungstenite and the pipeline exist only while messages flow
        let task = future_size(Session::start);
        eprintln!("session task future: {task} bytes, link {} bytes", size_of::<Link>());
        assert!(task <= 4096, "session task future of {task} bytes");
    }

    mod link {
        use tokio::io::{AsyncWriteExt, DuplexStream, duplex};

        use super::*;

        fn config() -> WebSocketConfig {
            WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES)
        }

        /// A server link, parked as a new session starts, and the raw client end.
        fn raw_pair() -> (Link<DuplexStream>, DuplexStream) {
            let (server, client) = duplex(1 << 16);
            (Link::Parked(linger::Tapped::new(server)), client)
        }

        /// The next message (parking allowed), or `None` when nothing came for a while: time
        /// enough to park, and the read is cancelled as a session's `select!` does.
        async fn next(link: &mut Link<DuplexStream>) -> Option<Message> {
            match tokio::time::timeout(Duration::from_millis(50), link.next(config(), true)).await {
                Ok(Some(Ok(msg))) => Some(msg),
                Ok(ended) => panic!("link ended: {ended:?}"),
                Err(_) => None,
            }
        }

        /// A masked client frame: `first` is FIN and opcode.
        fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
            let mask = [1, 2, 3, 4];
            let mut frame = vec![first];
            match u8::try_from(payload.len()) {
                Ok(n) if n < 126 => frame.push(0x80 | n),
                _ => {
                    frame.push(0x80 | 126);
                    frame.extend(u16::try_from(payload.len()).unwrap().to_be_bytes());
                }
            }
            frame.extend(mask);
            frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
            frame
        }

        #[tokio::test]
        async fn a_link_parks_between_messages_and_loses_none() {
            let (mut link, client) = raw_pair();
            let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
            assert!(link.is_parked(), "parked before the first byte");
            client.send(Message::binary(vec![1; 10])).await.unwrap();
            assert_eq!(next(&mut link).await, Some(Message::binary(vec![1; 10])));
            assert!(!link.is_parked(), "active while a message is handled");
            assert_eq!(next(&mut link).await, None);
            assert!(link.is_parked(), "parked once idle");

            // several messages in one write: one longer than the wake read and the read
            // buffer, and a ping, whose pong goes out before the link parks again
            let big = vec![2; 3 * READ_BUFFER_BYTES];
            let sent = [
                Message::binary(vec![3; 5]),
                Message::binary(big),
                Message::Ping(Bytes::from_static(b"p")),
                Message::binary(vec![4; 100]),
            ];
            for msg in &sent {
                client.feed(msg.clone()).await.unwrap();
            }
            client.flush().await.unwrap();
            for msg in &sent {
                assert_eq!(next(&mut link).await.as_ref(), Some(msg));
            }
            assert_eq!(next(&mut link).await, None);
            assert!(link.is_parked());
            assert_eq!(
                client.next().await.unwrap().unwrap(),
                Message::Pong(Bytes::from_static(b"p"))
            );

            // a parked link still sends (a reply, a close)
            let socket = link.active(&[], config()).await.unwrap();
            socket.send(Message::binary(vec![5])).await.unwrap();
            assert_eq!(client.next().await.unwrap().unwrap(), Message::binary(vec![5]));
        }

        #[tokio::test]
        async fn a_link_never_parks_inside_a_frame_or_a_fragmented_message() {
            let (mut link, mut raw) = raw_pair();
            let whole = masked(0x82, &[7; 300]);
            raw.write_all(&whole[..100]).await.unwrap();
            assert_eq!(next(&mut link).await, None);
            assert!(!link.is_parked(), "a frame is half read");
            raw.write_all(&whole[100..]).await.unwrap();
            assert_eq!(next(&mut link).await, Some(Message::binary(vec![7; 300])));

            // binary without FIN, a ping, the last fragment
            raw.write_all(&masked(0x02, &[8; 10])).await.unwrap();
            assert_eq!(next(&mut link).await, None);
            assert!(!link.is_parked(), "a message is half read");
            raw.write_all(&masked(0x89, b"x")).await.unwrap();
            assert_eq!(next(&mut link).await, Some(Message::Ping(Bytes::from_static(b"x"))));
            assert_eq!(next(&mut link).await, None);
            assert!(!link.is_parked(), "a message is still half read");
            raw.write_all(&masked(0x80, &[9; 5])).await.unwrap();
            let mut whole_message = vec![8; 10];
            whole_message.extend([9; 5]);
            assert_eq!(next(&mut link).await, Some(Message::binary(whole_message)));
            assert_eq!(next(&mut link).await, None);
            assert!(link.is_parked());
        }

        #[tokio::test]
        async fn a_parked_link_ends_when_the_peer_hangs_up() {
            let (mut link, raw) = raw_pair();
            drop(raw);
            assert!(link.next(config(), true).await.is_none());
        }
    }

    #[test]
    fn upgrade_header_is_matched_case_insensitively() {
        let mut h = HeaderMap::new();
        assert!(!is_upgrade(&h));
        h.insert(header::UPGRADE, "WebSocket".parse().unwrap());
        assert!(is_upgrade(&h));
        h.insert(header::UPGRADE, "h2c".parse().unwrap());
        assert!(!is_upgrade(&h));
    }

    #[test]
    fn the_handshake_is_checked_and_answered_as_rfc_6455_says() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert(header::SEC_WEBSOCKET_VERSION, "13".parse().unwrap());
        // the sample key of RFC 6455 section 1.3 and its answer
        h.insert(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap());
        assert_eq!(
            handshake_accept(&Version::HTTP_11, &h),
            Ok(HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="))
        );
        assert!(handshake_accept(&Version::HTTP_10, &h).is_err());
        for (name, value) in [
            (header::CONNECTION, Some("keep-alive")),
            (header::SEC_WEBSOCKET_VERSION, Some("8")),
            (header::SEC_WEBSOCKET_VERSION, None),
            (header::SEC_WEBSOCKET_KEY, None),
        ] {
            let mut bad = h.clone();
            match value {
                Some(v) => bad.insert(name.clone(), v.parse().unwrap()),
                None => bad.remove(&name),
            };
            assert!(handshake_accept(&Version::HTTP_11, &bad).is_err(), "{name}: {value:?}");
        }
    }
}
