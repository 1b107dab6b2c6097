//! Shared helpers for the black-box tests: a real server on 127.0.0.1:0 over the store the
//! configuration names, and OpAMP message builders.

pub mod es;
pub mod forwarder;
pub mod pki;
pub mod tls_forwarder;

use std::path::Path;
use std::time::Duration;

use opamp_proto::v1::{
    AgentDescription, AgentToServer, ComponentHealth, ServerErrorResponseType, ServerToAgent,
};
use opamp_proto::{InstanceUid, Message, agent_caps, server_flags};
use opampd::config::Config;
use opampd::store::Store;
use opampd::tls::ServerTls;
use opampd::{Listeners, RunError};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const PROTOBUF: &str = "application/x-protobuf";

#[derive(Debug)]
pub struct TestServer {
    pub opamp_url: String,
    pub admin_url: String,
    pub opamp_addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), RunError>>>,
}

impl TestServer {
    /// A server over the embedded store in `dir` with default settings.
    pub async fn start(dir: &Path) -> Self {
        Self::start_with(Config::embedded(dir)).await
    }

    pub async fn start_with(config: Config) -> Self {
        Self::start_with_tls(config, None).await
    }

    /// With `tls`, the OpAMP listener speaks TLS only and `opamp_url` is `https://127.0.0.1:..`;
    /// the test keeps a clone of `tls` to reload it.
    pub async fn start_with_tls(config: Config, tls: Option<ServerTls>) -> Self {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let store = Store::open(&config).await.expect("store opens");
        let listeners = Listeners {
            opamp: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let opamp_addr = listeners.opamp.local_addr().unwrap();
        let admin_addr = listeners.admin.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = opampd::run_with_tls(&config, store.shared(), listeners, tls, async {
                let _ = stopped.await;
            })
            .await;
            store.close().await.expect("store closes");
            served
        });
        Self {
            opamp_url: format!("{scheme}://{opamp_addr}/v1/opamp"),
            admin_url: format!("http://{admin_addr}"),
            opamp_addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Triggers shutdown without waiting for it.
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Graceful shutdown; returns what `run` returned.
    pub async fn stop(mut self) -> Result<(), RunError> {
        self.signal_stop();
        let task = self.task.take().expect("not yet stopped");
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("server stops in time")
            .expect("server task did not panic")
    }
}

/// One client per test thread: building one costs tens of milliseconds (TLS roots), and a
/// test's threads all belong to that test's runtime.
pub fn client() -> reqwest::Client {
    thread_local! {
        static CLIENT: reqwest::Client = reqwest::Client::builder().no_proxy().build().unwrap();
    }
    CLIENT.with(Clone::clone)
}

pub fn uid() -> InstanceUid {
    InstanceUid::new_v7()
}

/// A compressed poll: uid, seq and capabilities only.
pub fn poll(uid: InstanceUid, seq: u64) -> AgentToServer {
    AgentToServer {
        instance_uid: uid.as_bytes().to_vec().into(),
        sequence_num: seq,
        capabilities: agent_caps::REPORTS_STATUS | agent_caps::REPORTS_HEALTH,
        ..Default::default()
    }
}

/// A full status report for the capabilities of [`poll`].
pub fn full(uid: InstanceUid, seq: u64) -> AgentToServer {
    AgentToServer {
        agent_description: Some(AgentDescription::default()),
        health: Some(ComponentHealth { healthy: true, ..Default::default() }),
        ..poll(uid, seq)
    }
}

/// Posts `msg` and returns the reply, asserting HTTP 200 and a protobuf body.
pub async fn send(url: &str, msg: &AgentToServer) -> ServerToAgent {
    let resp = client()
        .post(url)
        .header("content-type", PROTOBUF)
        .body(msg.encode_to_vec())
        .send()
        .await
        .expect("request sent");
    assert_eq!(resp.status(), 200, "status of a well-formed message");
    assert_eq!(resp.headers()["content-type"], PROTOBUF);
    let body = resp.bytes().await.unwrap();
    let reply = ServerToAgent::decode(&body[..]).expect("reply decodes");
    assert_eq!(reply.instance_uid, msg.instance_uid, "instance_uid is echoed");
    assert_ne!(reply.capabilities, 0, "server capabilities on every reply");
    assert!(reply.error_response.is_none(), "no error: {:?}", reply.error_response);
    reply
}

/// True when the reply to `msg` asks for the full state.
pub async fn asks_full_state(url: &str, msg: &AgentToServer) -> bool {
    send(url, msg).await.flags & server_flags::REPORT_FULL_STATE != 0
}

pub fn error_type(reply: &ServerToAgent) -> Option<ServerErrorResponseType> {
    reply.error_response.as_ref().and_then(|e| ServerErrorResponseType::try_from(e.r#type).ok())
}
