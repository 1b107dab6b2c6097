//! A TLS-terminating forwarder in front of the real test cluster, so opampd's `https` client is
//! tested without a TLS-enabled Elasticsearch: it presents a certificate made at test time
//! (`pki`), and passes the decrypted bytes to the cluster's plain HTTP port. No mock: what
//! passes is real ES traffic.
//!
//! It counts the handshakes that completed and keeps why the others failed: a client that
//! refuses the certificate says why in its alert (`UnknownCA` for an untrusted issuer,
//! `BadCertificate` for a wrong host name), so a test can tell a verification refusal from any
//! other failure. Listens on 127.0.0.1 only; ALPN http/1.1 (the cluster speaks nothing else).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use url::Url;

use crate::common::forwarder::resolve;
use crate::common::pki::Leaf;

/// Longest a client may take over its handshake.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct TlsForwarder {
    addr: SocketAddr,
    handshakes: Arc<Handshakes>,
    task: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Handshakes {
    completed: AtomicU64,
    /// The error of every failed handshake, in order (never held across an await).
    failed: Mutex<Vec<String>>,
}

impl TlsForwarder {
    /// Serves `leaf` on 127.0.0.1:<free port> and forwards to `upstream` (an `http://` URL).
    pub async fn start(upstream: &Url, leaf: &Leaf) -> Self {
        let upstream = resolve(upstream).await;
        let acceptor = TlsAcceptor::from(Arc::new(server_config(leaf)));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tls forwarder");
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(Handshakes::default());
        let task = tokio::spawn(run(listener, acceptor, upstream, handshakes.clone()));
        Self { addr, handshakes, task }
    }

    /// The URL to give opampd instead of the cluster's: `https://127.0.0.1:<port>/`.
    pub fn url(&self) -> Url {
        format!("https://{}", self.addr).parse().unwrap()
    }

    /// Handshakes that completed (connections that reached the cluster).
    pub fn completed(&self) -> u64 {
        self.handshakes.completed.load(Ordering::Acquire)
    }

    /// Why each failed handshake failed, e.g. `received fatal alert: UnknownCA`.
    pub fn failures(&self) -> Vec<String> {
        self.handshakes.failed.lock().unwrap().clone()
    }
}

impl Drop for TlsForwarder {
    fn drop(&mut self) {
        // dropping the task drops its JoinSet, which aborts every connection
        self.task.abort();
    }
}

fn server_config(leaf: &Leaf) -> rustls::ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("test key");
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der.clone()], key)
        .expect("test certificate and key match");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

async fn run(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    upstream: SocketAddr,
    handshakes: Arc<Handshakes>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let _ = client.set_nodelay(true);
                conns.spawn(forward(client, acceptor.clone(), upstream, handshakes.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn forward(
    client: TcpStream,
    acceptor: TlsAcceptor,
    upstream: SocketAddr,
    handshakes: Arc<Handshakes>,
) {
    let mut client = match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(client)).await {
        Ok(Ok(tls)) => {
            handshakes.completed.fetch_add(1, Ordering::AcqRel);
            tls
        }
        Ok(Err(e)) => return handshakes.failed.lock().unwrap().push(e.to_string()),
        Err(_) => return handshakes.failed.lock().unwrap().push("handshake timed out".into()),
    };
    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
    let _ = server.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
