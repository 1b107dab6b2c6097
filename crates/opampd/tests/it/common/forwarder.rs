//! A real TCP forwarder put between opampd and Elasticsearch, switchable at run time to make
//! Elasticsearch look down (connections refused), stalled (accepted, never answered) or lossy
//! (requests delivered, answers dropped), and back. No mock: what passes is real ES traffic.
//!
//! Every switch cuts every open connection, so a client's pooled keep-alive connections see
//! the new behaviour at once. Listens on 127.0.0.1 only.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use url::Url;

/// How the forwarder treats connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bytes flow both ways: a healthy cluster.
    Forward,
    /// The port is closed: connecting fails with "connection refused" (ES down).
    Refuse,
    /// Connections are accepted and requests read, but nothing reaches ES and nothing is
    /// answered (a hung or overloaded cluster).
    Stall,
    /// Requests reach ES and are applied, but its answers are dropped (the network fails after
    /// the write: the writer cannot know whether it applied).
    DropAnswers,
}

#[derive(Debug)]
pub struct Forwarder {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    task: JoinHandle<()>,
}

impl Forwarder {
    /// Starts forwarding 127.0.0.1:<free port> to `upstream` (an `http://host:port` URL).
    pub async fn start(upstream: &Url) -> Self {
        let upstream = resolve(upstream).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind forwarder");
        let addr = listener.local_addr().unwrap();
        let (mode, modes) = watch::channel(Mode::Forward);
        let task = tokio::spawn(run(listener, addr, upstream, modes));
        Self { addr, mode, task }
    }

    /// The URL to give opampd instead of the cluster's.
    pub fn url(&self) -> Url {
        format!("http://{}", self.addr).parse().unwrap()
    }

    /// Switches behaviour; open connections are cut at once.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        // dropping the task drops its JoinSet, which aborts every connection
        self.task.abort();
    }
}

/// The socket address of `upstream` (an `http://host:port` URL).
pub async fn resolve(upstream: &Url) -> SocketAddr {
    let host = upstream.host_str().expect("upstream host").to_owned();
    let port = upstream.port_or_known_default().expect("upstream port");
    tokio::net::lookup_host((host.as_str(), port))
        .await
        .expect("resolve upstream")
        .next()
        .expect("an upstream address")
}

async fn run(
    listener: TcpListener,
    addr: SocketAddr,
    upstream: SocketAddr,
    mut modes: watch::Receiver<Mode>,
) {
    let mut listener = Some(listener);
    let mut conns = JoinSet::new();
    loop {
        let mode = *modes.borrow_and_update();
        match (mode, listener.is_some()) {
            // closing the listener makes the kernel refuse new connections
            (Mode::Refuse, true) => listener = None,
            (Mode::Refuse, false) => {}
            (_, false) => listener = Some(rebind(addr).await),
            (_, true) => {}
        }
        tokio::select! {
            changed = modes.changed() => {
                if changed.is_err() {
                    return;
                }
                conns.abort_all();
            }
            accepted = accept(listener.as_ref()) => {
                let Ok((client, _)) = accepted else { continue };
                let _ = client.set_nodelay(true);
                match mode {
                    Mode::Forward => conns.spawn(forward(client, upstream, false)),
                    Mode::DropAnswers => conns.spawn(forward(client, upstream, true)),
                    Mode::Stall => conns.spawn(swallow(client)),
                    Mode::Refuse => continue,
                };
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Listens on the same port again (tokio sets SO_REUSEADDR, so closed connections in
/// TIME_WAIT do not block it).
async fn rebind(addr: SocketAddr) -> TcpListener {
    for _ in 0..100 {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    panic!("forwarder could not listen on {addr} again");
}

async fn forward(mut client: TcpStream, upstream: SocketAddr, drop_answers: bool) {
    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
    let _ = server.set_nodelay(true);
    if !drop_answers {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        return;
    }
    let (mut client_rx, _client_tx) = client.split();
    let (mut server_rx, mut server_tx) = server.split();
    let requests = tokio::io::copy(&mut client_rx, &mut server_tx);
    let answers = async {
        let mut buf = vec![0u8; 16 * 1024];
        while matches!(server_rx.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    let _ = tokio::join!(requests, answers);
    let _ = server_tx.shutdown().await;
}

/// Reads and discards whatever the client sends and never answers.
async fn swallow(mut client: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
}
