//! Serving a router on a bound listener with hyper's HTTP/1 connection builder (not
//! `axum::serve`, which has no timeout knobs), and draining connections on shutdown.
//!
//! Idle keep-alive: hyper (1.x) restarts its header-read timer as soon as a keep-alive
//! connection goes idle, so `header_read_timeout` IS the idle timeout. hyper's default is 30 s,
//! exactly the agents' poll interval, which reproduces fleet-server's EOF race; we set it from
//! `--idle-timeout` (default 90 s, validated > 30 s). It also bounds a slow request head.
//!
//! TLS: a listener served with [`ServerTls`] does each handshake in the connection's own task
//! (bounded by `tls::HANDSHAKE_TIMEOUT`, abandoned at shutdown), so accepting never waits on a
//! client; the same hyper connection then runs over the TLS stream, upgrades included.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::tls::ServerTls;

/// Accepts connections until `stop` turns true, then lets open connections finish their
/// current request (idle ones close at once) for up to `grace`, then drops the rest. With
/// `tls`, every connection is TLS (no plain-HTTP fallback on the same port).
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    tls: Option<ServerTls>,
    router: Router,
    idle_timeout: Duration,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let mut conns = JoinSet::new();
    loop {
        // finished connection tasks are reaped here so the set stays as big as the open ones
        while conns.try_join_next().is_some() {}
        let accepted = tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning on the error
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let mut stop = stop.clone();
        let tls = tls.clone();
        conns.spawn(async move {
            let Some(tls) = tls else {
                return connection(name, stream, peer, router, idle_timeout, stop).await;
            };
            let handshake = tokio::select! {
                stream = tls.handshake(stream, peer) => stream,
                () = stopped(&mut stop) => None,
            };
            if let Some(stream) = handshake {
                connection(name, stream, peer, router, idle_timeout, stop).await;
            }
        });
    }
    drop(listener);
    let open = conns.len();
    if open > 0 {
        tracing::info!(listener = name, open, "draining connections");
    }
    let drained =
        tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            listener = name,
            left = conns.len(),
            "grace period over, closing connections"
        );
        conns.abort_all();
    }
}

/// Serves HTTP/1.1 on one connection (plain or TLS) until it closes, or, once `stop` is true,
/// until its current request is answered.
async fn connection<I>(
    name: &'static str,
    io: I,
    peer: std::net::SocketAddr,
    router: Router,
    idle_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        router.clone().oneshot(req.map(Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(idle_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service)
        // the WebSocket transport upgrades connections from this same builder; an
        // upgraded connection leaves this task (and the drain in `serve`) at once, its IO
        // handed to the session task, which `ws::Sessions::close_all` drains
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(listener = name, peer = %peer, error = %e, "connection ended with error");
    }
}

/// Completes once `stop` is true (or its sender is gone). Drops the watch guard before
/// returning so callers can hold the future across awaits on a multi-threaded runtime.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
