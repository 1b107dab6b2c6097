//! How a message reaches the server: plain HTTP POST (one request per message, pooled
//! keep-alive connections) or WebSocket (agents multiplexed over a fixed set of connections,
//! replies routed back by `instance_uid`). Only moves bytes; judging the reply is the agent's job.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use opamp_proto::v1::ServerToAgent;
use opamp_proto::{Bytes, InstanceUid, Message, framing};
use reqwest::Url;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::outcome::ErrorClass;

/// Why an exchange produced no reply body to judge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeError {
    Timeout,
    Connect,
    /// A non-200 HTTP status; `retry_after`: the reply carried a `Retry-After` header.
    Status {
        code: u16,
        retry_after: bool,
    },
    /// 200 without `Content-Type: application/x-protobuf`.
    ContentType,
    /// The WebSocket connection carrying this agent is gone.
    Closed,
    /// Any other transport failure (reset, closed mid-exchange); the client's words.
    Other(String),
}

impl ExchangeError {
    pub fn kind(&self) -> String {
        match self {
            ExchangeError::Timeout => "timeout".into(),
            ExchangeError::Connect => "connect".into(),
            ExchangeError::Status { code, .. } => format!("http_{code}"),
            ExchangeError::ContentType => "content_type".into(),
            ExchangeError::Closed => "ws_closed".into(),
            ExchangeError::Other(_) => "transport".into(),
        }
    }

    /// 503/429 are the server's overload signal (it is shedding load, not failing).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ExchangeError::Status { code: 503 | 429, .. })
    }

    /// Which class of failure this is, for the fault and overload accounting.
    pub fn class(&self) -> ErrorClass {
        match self {
            ExchangeError::Status { code: 503 | 429, retry_after: true } => ErrorClass::RetryAfter,
            // What a load balancer answers when it could not get a reply from any backend.
            ExchangeError::Status { code: 502..=504, retry_after: false } => ErrorClass::Gateway,
            ExchangeError::Status { .. } | ExchangeError::ContentType => ErrorClass::Other,
            // No HTTP reply at all: refused, reset, closed mid-exchange or timed out.
            ExchangeError::Timeout
            | ExchangeError::Connect
            | ExchangeError::Closed
            | ExchangeError::Other(_) => ErrorClass::Connection,
        }
    }
}

/// A connected transport.
#[derive(Debug)]
pub enum Transport {
    Http(HttpTransport),
    Ws(WsTransport),
}

impl Transport {
    /// Sends one encoded `AgentToServer` for `uid` and returns the reply body.
    pub async fn exchange(
        &self,
        agent_index: u64,
        uid: &InstanceUid,
        body: Vec<u8>,
    ) -> Result<Bytes, ExchangeError> {
        match self {
            Transport::Http(t) => t.exchange(uid, body).await,
            Transport::Ws(t) => t.exchange(agent_index, uid, body).await,
        }
    }
}

/// HTTP transport: a reqwest client whose idle pool holds `connections` keep-alive sockets.
#[derive(Debug)]
pub struct HttpTransport {
    client: reqwest::Client,
    target: Url,
}

impl HttpTransport {
    /// `auth`, when given, is sent as the `Authorization` header of every request.
    pub fn new(
        target: Url,
        connections: usize,
        timeout: Duration,
        auth: Option<&reqwest::header::HeaderValue>,
    ) -> anyhow::Result<Self> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(value) = auth {
            headers.insert(reqwest::header::AUTHORIZATION, value.clone());
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .pool_max_idle_per_host(connections)
            // Longer than any pause between messages on a busy pool; the server keeps 90 s.
            .pool_idle_timeout(Duration::from_secs(60))
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .tcp_nodelay(true)
            .no_proxy()
            .build()?;
        Ok(Self { client, target })
    }

    async fn exchange(&self, uid: &InstanceUid, body: Vec<u8>) -> Result<Bytes, ExchangeError> {
        let resp = self
            .client
            .post(self.target.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
            .header("OpAMP-Instance-UID", uid.to_string())
            .body(body)
            .send()
            .await
            .map_err(classify)?;
        let status = resp.status().as_u16();
        let retry_after = resp.headers().contains_key(reqwest::header::RETRY_AFTER);
        let protobuf = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().starts_with("application/x-protobuf"));
        // Read the body even on errors so the connection returns to the pool.
        let bytes = resp.bytes().await.map_err(classify)?;
        if status != 200 {
            return Err(ExchangeError::Status { code: status, retry_after });
        }
        if !protobuf {
            return Err(ExchangeError::ContentType);
        }
        Ok(bytes)
    }
}

fn classify(err: reqwest::Error) -> ExchangeError {
    if err.is_timeout() {
        ExchangeError::Timeout
    } else if err.is_connect() {
        ExchangeError::Connect
    } else {
        // the whole chain: hyper's reason ("connection closed before message completed") is in it
        let mut text = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        ExchangeError::Other(text)
    }
}

type Pending = Arc<Mutex<HashMap<[u8; 16], oneshot::Sender<Bytes>>>>;

/// One WebSocket connection shared by many agents. An agent has at most one message in flight,
/// so its uid identifies the reply.
#[derive(Debug)]
struct WsConn {
    tx: mpsc::Sender<WsMessage>,
    pending: Pending,
    open: Arc<AtomicBool>,
}

/// WebSocket transport: `connections` sockets, agent `i` always on socket `i % connections`
/// (as a load balancer hashing the uid would keep it on one server).
#[derive(Debug)]
pub struct WsTransport {
    conns: Vec<WsConn>,
    timeout: Duration,
    /// Server-initiated messages with no request waiting (pushes, or replies after a timeout).
    pub unsolicited: Arc<AtomicU64>,
}

impl WsTransport {
    /// `auth`, when given, is sent as the `Authorization` header of every upgrade request.
    pub async fn connect(
        target: Url,
        connections: usize,
        timeout: Duration,
        auth: Option<&reqwest::header::HeaderValue>,
    ) -> anyhow::Result<Self> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;

        let unsolicited = Arc::new(AtomicU64::new(0));
        let mut conns = Vec::with_capacity(connections);
        for _ in 0..connections {
            let mut request = target.as_str().into_client_request()?;
            if let Some(value) = auth {
                let value = tokio_tungstenite::tungstenite::http::HeaderValue::from_bytes(
                    value.as_bytes(),
                )?;
                request.headers_mut().insert("authorization", value);
            }
            let (ws, _) = tokio::time::timeout(timeout, tokio_tungstenite::connect_async(request))
                .await
                .map_err(|_| anyhow::anyhow!("websocket connect to {target} timed out"))??;
            let (mut sink, mut stream) = ws.split();
            // Bounded: a full queue makes senders wait, which is back-pressure, not growth.
            let (tx, mut rx) = mpsc::channel::<WsMessage>(1024);
            let pending: Pending = Arc::default();
            let open = Arc::new(AtomicBool::new(true));
            tokio::spawn(async move {
                while let Some(msg) = rx.recv().await {
                    if sink.send(msg).await.is_err() {
                        break;
                    }
                }
                let _ = sink.close().await;
            });
            let (reader_pending, reader_open, reader_unsolicited) =
                (pending.clone(), open.clone(), unsolicited.clone());
            tokio::spawn(async move {
                while let Some(Ok(msg)) = stream.next().await {
                    let WsMessage::Binary(data) = msg else { continue };
                    let Ok(payload) = framing::decode(data) else { continue };
                    let uid = ServerToAgent::decode(payload.clone())
                        .ok()
                        .and_then(|r| <[u8; 16]>::try_from(r.instance_uid.as_ref()).ok());
                    let waiter = uid.and_then(|u| lock(&reader_pending).remove(&u));
                    match waiter {
                        Some(w) => {
                            let _ = w.send(payload);
                        }
                        None => {
                            reader_unsolicited.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                reader_open.store(false, Ordering::Relaxed);
                // Waiters of a dead connection fail now rather than at their timeout.
                lock(&reader_pending).clear();
            });
            conns.push(WsConn { tx, pending, open });
        }
        Ok(Self { conns, timeout, unsolicited })
    }

    async fn exchange(
        &self,
        agent_index: u64,
        uid: &InstanceUid,
        body: Vec<u8>,
    ) -> Result<Bytes, ExchangeError> {
        let conn = &self.conns[(agent_index % self.conns.len() as u64) as usize];
        if !conn.open.load(Ordering::Relaxed) {
            return Err(ExchangeError::Closed);
        }
        let (tx, rx) = oneshot::channel();
        lock(&conn.pending).insert(*uid.as_bytes(), tx);
        let frame = WsMessage::Binary(framing::encode(&body));
        let result = tokio::time::timeout(self.timeout, async {
            conn.tx.send(frame).await.map_err(|_| ExchangeError::Closed)?;
            rx.await.map_err(|_| ExchangeError::Closed)
        })
        .await;
        match result {
            Ok(r) => r,
            Err(_) => {
                lock(&conn.pending).remove(uid.as_bytes());
                Err(ExchangeError::Timeout)
            }
        }
    }
}

/// The maps are only touched in short, non-async sections; a poisoned lock still holds valid data.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classed_by_what_the_agent_may_conclude() {
        let status = |code, retry_after| ExchangeError::Status { code, retry_after };
        for (e, want) in [
            (status(503, true), ErrorClass::RetryAfter),
            (status(429, true), ErrorClass::RetryAfter),
            (status(503, false), ErrorClass::Gateway),
            (status(502, false), ErrorClass::Gateway),
            (status(504, false), ErrorClass::Gateway),
            (status(502, true), ErrorClass::Other),
            (status(500, false), ErrorClass::Other),
            (status(400, false), ErrorClass::Other),
            (ExchangeError::ContentType, ErrorClass::Other),
            (ExchangeError::Timeout, ErrorClass::Connection),
            (ExchangeError::Connect, ErrorClass::Connection),
            (ExchangeError::Closed, ErrorClass::Connection),
            (ExchangeError::Other("reset".into()), ErrorClass::Connection),
        ] {
            assert_eq!(e.class(), want, "{e:?}");
        }
        assert_eq!(status(503, true).kind(), "http_503");
        assert!(status(429, false).is_unavailable());
    }
}
