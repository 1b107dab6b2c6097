//! TLS on the OpAMP listener, with a CA and certificates made at test time (rcgen): OpAMP over
//! HTTPS (reqwest) and over WebSocket on TLS (tokio-tungstenite on tokio-rustls), plain HTTP
//! refused and counted, mutual TLS, and reloading the certificate for new connections while
//! open ones keep working, through the library handle and through SIGHUP to the binary.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use opamp_proto::v1::{AgentToServer, ServerToAgent};
use opamp_proto::{Message as _, framing};
use opampd::config::{Config, TlsFiles};
use opampd::tls::{ReloadTrigger, ServerTls};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::common::pki::{Ca, Leaf};
use crate::common::*;

/// Bound on every network step of these tests.
const STEP: Duration = Duration::from_secs(10);

const BIN: &str = env!("CARGO_BIN_EXE_opampd");

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f).await.unwrap_or_else(|_| panic!("{what} in time"))
}

/// The server's files in a temporary directory, with the CA that signed them.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    files: TlsFiles,
    first: Leaf,
}

impl Pki {
    /// A CA and a server certificate; with `client_ca`, clients must present a certificate
    /// signed by the same CA.
    fn new(client_ca: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("opampd test ca");
        let files = TlsFiles {
            cert: dir.path().join("server.crt"),
            key: dir.path().join("server.key"),
            client_ca: client_ca.then(|| dir.path().join("ca.crt")),
        };
        if let Some(path) = &files.client_ca {
            std::fs::write(path, &ca.pem).unwrap();
        }
        let first = ca.server("first");
        let pki = Self { dir, ca, files, first };
        pki.install(&pki.first);
        pki
    }

    /// Writes `leaf` over the server's certificate and key files.
    fn install(&self, leaf: &Leaf) {
        std::fs::write(&self.files.cert, &leaf.cert_pem).unwrap();
        std::fs::write(&self.files.key, &leaf.key_pem).unwrap();
    }

    async fn start(&self) -> (TestServer, ServerTls) {
        let tls = ServerTls::load(&self.files).expect("test files load");
        let config = Config::embedded(self.dir.path().join("data"));
        (TestServer::start_with_tls(config, Some(tls.clone())).await, tls)
    }

    /// A reqwest client trusting only the test CA, reporting the peer certificate.
    fn https_client(&self, identity: Option<&Leaf>) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .timeout(STEP)
            .tls_info(true)
            .tls_certs_only([reqwest::Certificate::from_pem(self.ca.pem.as_bytes()).unwrap()]);
        if let Some(leaf) = identity {
            let pem = format!("{}{}", leaf.cert_pem, leaf.key_pem);
            builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
        }
        builder.build().unwrap()
    }
}

/// A rustls client configuration trusting `ca`, offering ALPN http/1.1.
fn client_config(ca: &Ca) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

async fn tls_connect(addr: SocketAddr, ca: &Ca) -> TlsStream<TcpStream> {
    let connector = TlsConnector::from(Arc::new(client_config(ca)));
    let tcp = within("tcp connect", TcpStream::connect(addr)).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    within("tls handshake", connector.connect(name, tcp)).await.expect("handshake succeeds")
}

fn peer_leaf(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().expect("server presented a chain")[0]
        .clone()
        .into_owned()
}

/// Posts `msg` over `client`; the reply must be 200 with a decodable `ServerToAgent`. Returns
/// the reply and the leaf certificate the server presented on this connection.
async fn post(
    client: &reqwest::Client,
    url: &str,
    msg: &AgentToServer,
) -> (ServerToAgent, Vec<u8>) {
    let resp = client
        .post(url)
        .header("content-type", PROTOBUF)
        .body(msg.encode_to_vec())
        .send()
        .await
        .expect("request over tls");
    assert_eq!(resp.status(), 200);
    let info = resp.extensions().get::<reqwest::tls::TlsInfo>().expect("tls info");
    let leaf = info.peer_certificate().expect("peer certificate").to_vec();
    let body = resp.bytes().await.unwrap();
    let reply = ServerToAgent::decode(&body[..]).expect("reply decodes");
    assert_eq!(reply.instance_uid, msg.instance_uid);
    (reply, leaf)
}

type Wss = WebSocketStream<TlsStream<TcpStream>>;

async fn wss_connect(server: &TestServer, ca: &Ca) -> Wss {
    let tls = tls_connect(server.opamp_addr, ca).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]), "ALPN http/1.1");
    let url = format!("wss://{}/v1/opamp", server.opamp_addr);
    let (ws, resp) = within("upgrade", tokio_tungstenite::client_async(url, tls))
        .await
        .expect("upgrade over tls");
    assert_eq!(resp.status(), 101);
    ws
}

async fn ws_exchange(ws: &mut Wss, msg: &AgentToServer) -> ServerToAgent {
    let frame = framing::encode(&msg.encode_to_vec()).to_vec();
    within("send", ws.send(Message::Binary(frame.into()))).await.expect("sent");
    loop {
        let msg = within("reply", ws.next()).await.expect("open").expect("readable");
        match msg {
            Message::Binary(data) => {
                assert_eq!(data.first(), Some(&0), "replies carry the 0x00 header");
                return ServerToAgent::decode(&data[1..]).expect("reply decodes");
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a binary reply, got {other:?}"),
        }
    }
}

/// The value of `opampd_tls_handshake_failures_total{reason=..}` on the admin listener.
async fn handshake_failures(server: &TestServer, reason: &str) -> f64 {
    let url = format!("{}/metrics", server.admin_url);
    let body = client().get(url).send().await.unwrap().text().await.unwrap();
    let series = format!("opampd_tls_handshake_failures_total{{reason=\"{reason}\"}} ");
    let value = body.lines().find_map(|l| l.strip_prefix(&series));
    value.unwrap_or_else(|| panic!("{series} registered")).trim().parse().unwrap()
}

/// Polls until the counter exceeds `before`: the server counts after the client saw the error.
async fn handshake_failures_exceed(server: &TestServer, reason: &str, before: f64) {
    let deadline = Instant::now() + STEP;
    while handshake_failures(server, reason).await <= before {
        assert!(Instant::now() < deadline, "{reason} handshake failure counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn https_post_gets_200() {
    let pki = Pki::new(false);
    let (server, _tls) = pki.start().await;
    assert!(server.opamp_url.starts_with("https://"), "{}", server.opamp_url);
    let client = pki.https_client(None);
    let a = uid();
    let (reply, leaf) = post(&client, &server.opamp_url, &full(a, 0)).await;
    assert!(reply.error_response.is_none());
    assert_eq!(leaf, pki.first.der.to_vec(), "the configured certificate is served");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_silent_client_does_not_hold_up_other_handshakes() {
    let pki = Pki::new(false);
    let (server, _tls) = pki.start().await;
    // connected, never says a word: its handshake waits (up to the handshake timeout) in its
    // own task, not in the accept loop
    let _silent = TcpStream::connect(server.opamp_addr).await.unwrap();
    let client = pki.https_client(None);
    let (reply, _) = within("post", post(&client, &server.opamp_url, &full(uid(), 0))).await;
    assert!(reply.error_response.is_none());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn websocket_over_tls_exchanges_messages_with_alpn_http1() {
    let pki = Pki::new(false);
    let (server, _tls) = pki.start().await;
    let mut ws = wss_connect(&server, &pki.ca).await;
    let a = uid();
    let msg = full(a, 0);
    let reply = ws_exchange(&mut ws, &msg).await;
    assert_eq!(reply.instance_uid, msg.instance_uid);
    assert!(reply.error_response.is_none());
    let reply = ws_exchange(&mut ws, &poll(a, 1)).await;
    assert!(reply.error_response.is_none());
    let _ = within("close", ws.close(None)).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn plain_http_to_the_tls_port_fails_and_is_counted() {
    let pki = Pki::new(false);
    let (server, _tls) = pki.start().await;
    let before = handshake_failures(&server, "protocol").await;
    let plain = format!("http://{}/v1/opamp", server.opamp_addr);
    let sent = within(
        "plain request",
        client()
            .post(plain)
            .header("content-type", PROTOBUF)
            .body(poll(uid(), 0).encode_to_vec())
            .send(),
    )
    .await;
    assert!(sent.is_err(), "plain HTTP is not answered: {sent:?}");
    handshake_failures_exceed(&server, "protocol", before).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_server_fails_the_handshake() {
    let pki = Pki::new(false);
    let (server, _tls) = pki.start().await;
    let before = handshake_failures(&server, "peer_alert").await;
    let stranger = Ca::new("another ca");
    let connector = TlsConnector::from(Arc::new(client_config(&stranger)));
    let tcp = TcpStream::connect(server.opamp_addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    assert!(within("handshake", connector.connect(name, tcp)).await.is_err());
    handshake_failures_exceed(&server, "peer_alert", before).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let pki = Pki::new(true);
    let (server, tls) = pki.start().await;
    assert!(tls.requires_client_certificates());
    let msg = full(uid(), 0);
    let before = handshake_failures(&server, "client_certificate").await;

    let anonymous = pki.https_client(None);
    let sent = anonymous.post(&server.opamp_url).body(msg.encode_to_vec()).send().await;
    assert!(sent.is_err(), "no client certificate: {sent:?}");
    handshake_failures_exceed(&server, "client_certificate", before).await;

    let stranger = Ca::new("another ca").client("agent-x");
    let forged = pki.https_client(Some(&stranger));
    let sent = forged.post(&server.opamp_url).body(msg.encode_to_vec()).send().await;
    assert!(sent.is_err(), "client certificate from another CA: {sent:?}");

    let agent = pki.ca.client("agent-1");
    let trusted = pki.https_client(Some(&agent));
    let (reply, _) = post(&trusted, &server.opamp_url, &msg).await;
    assert!(reply.error_response.is_none());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn reload_serves_new_connections_the_new_certificate_and_keeps_open_ones() {
    let pki = Pki::new(false);
    let (server, tls) = pki.start().await;
    let a = uid();
    let kept = pki.https_client(None);
    let (_, leaf) = post(&kept, &server.opamp_url, &full(a, 0)).await;
    assert_eq!(leaf, pki.first.der.to_vec());
    let mut ws = wss_connect(&server, &pki.ca).await;
    let b = uid();
    ws_exchange(&mut ws, &full(b, 0)).await;

    let second = pki.ca.server("second");
    pki.install(&second);
    tls.reload(ReloadTrigger::Signal).await.expect("reload succeeds");

    // the keep-alive connection was accepted before the reload: same certificate, still served
    let (reply, leaf) = post(&kept, &server.opamp_url, &poll(a, 1)).await;
    assert!(reply.error_response.is_none());
    assert_eq!(leaf, pki.first.der.to_vec(), "the open connection kept its certificate");
    let reply = ws_exchange(&mut ws, &poll(b, 1)).await;
    assert!(reply.error_response.is_none(), "the WebSocket session survives the reload");
    // a new connection gets the new certificate
    let (_, leaf) = post(&pki.https_client(None), &server.opamp_url, &poll(a, 2)).await;
    assert_eq!(leaf, second.der.to_vec(), "new connections get the new certificate");
    let fresh = tls_connect(server.opamp_addr, &pki.ca).await;
    assert_eq!(peer_leaf(&fresh), second.der);

    // a failed reload keeps the certificate in use
    std::fs::write(&pki.files.key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
    assert!(tls.reload(ReloadTrigger::Signal).await.is_err());
    let (_, leaf) = post(&pki.https_client(None), &server.opamp_url, &poll(a, 3)).await;
    assert_eq!(leaf, second.der.to_vec(), "a failed reload keeps the previous certificate");

    let _ = within("close", ws.close(None)).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn changed_files_are_picked_up_without_a_signal() {
    let pki = Pki::new(false);
    let (server, tls) = pki.start().await;
    assert!(!tls.reload_if_changed().await.unwrap(), "unchanged files are not re-read");
    let second = pki.ca.server("second");
    pki.install(&second);
    assert!(tls.reload_if_changed().await.unwrap(), "changed files are re-read");
    let fresh = tls_connect(server.opamp_addr, &pki.ca).await;
    assert_eq!(peer_leaf(&fresh), second.der);
    server.stop().await.unwrap();
}

fn run_bin(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).env_remove("RUST_LOG").output().expect("binary runs")
}

#[test]
fn bad_tls_files_exit_64_before_binding() {
    let pki = Pki::new(false);
    let other = Pki::new(false);
    // the listen port is taken: a server that got as far as binding would fail differently
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let (cert, key) = (pki.files.cert.to_str().unwrap(), pki.files.key.to_str().unwrap());
    let missing = pki.dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    let not_pem = pki.dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let not_pem = not_pem.to_str().unwrap();
    let other_key = other.files.key.to_str().unwrap();
    for (args, expect) in [
        (vec!["--tls-cert", cert], "--tls-key"),
        (vec!["--tls-key", key], "--tls-cert"),
        (vec!["--tls-cert", missing, "--tls-key", key], "--tls-cert"),
        (vec!["--tls-cert", not_pem, "--tls-key", key], "--tls-cert"),
        (vec!["--tls-cert", cert, "--tls-key", not_pem], "--tls-key"),
        (vec!["--tls-cert", cert, "--tls-key", other_key], "--tls-key"),
        (vec!["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", not_pem], "--tls-client-ca"),
    ] {
        let mut argv = vec!["--listen", &listen, "--admin-listen", "127.0.0.1:0"];
        argv.extend_from_slice(&args);
        let out = run_bin(&argv);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }
}

#[test]
fn sighup_makes_the_binary_serve_the_new_certificate() {
    let pki = Pki::new(false);
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--data-dir")
        .arg(pki.dir.path().join("data"))
        .arg("--tls-cert")
        .arg(&pki.files.cert)
        .arg("--tls-key")
        .arg(&pki.files.key)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
                let _ = tx.send(event);
            }
        }
    });
    // the next event logging `message` with every field of `with`
    let wait_for = |message: &str, with: serde_json::Value| {
        let fits = |e: &serde_json::Value| {
            e["message"] == message
                && with.as_object().unwrap().iter().all(|(k, v)| e.get(k) == Some(v))
        };
        std::iter::from_fn(|| rx.recv_timeout(STEP).ok())
            .find(fits)
            .unwrap_or_else(|| panic!("{message:?} {with} logged in time"))
    };
    let serving = wait_for("opampd serving", serde_json::json!({}));
    assert_eq!(serving["tls"], true);
    let addr: SocketAddr = serving["listen"].as_str().unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    let before = rt.block_on(tls_connect(addr, &pki.ca));
    assert_eq!(peer_leaf(&before), pki.first.der);
    let second = pki.ca.server("second");
    pki.install(&second);
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    // (a change noticed by the file check would log trigger "file_change")
    wait_for("tls certificate reloaded", serde_json::json!({"trigger": "sighup"}));
    let after = rt.block_on(tls_connect(addr, &pki.ca));
    assert_eq!(peer_leaf(&after), second.der);
    rt.block_on(async move { drop((before, after)) });

    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        assert!(Instant::now() < deadline, "exits in time");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0), "SIGTERM still stops the server cleanly");
}
