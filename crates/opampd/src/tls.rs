//! TLS on the OpAMP listener: reading the PEM files named by `--tls-*` into a rustls server
//! configuration (ring provider, ALPN `http/1.1`, client certificates verified against
//! `--tls-client-ca` when given), the per-connection handshake with its timeout, and re-reading
//! the files for new handshakes (SIGHUP, changed files) while open connections keep the
//! configuration they were accepted with. Knows files and rustls, nothing of HTTP. Never logs,
//! formats or keeps a copy of the private key beyond the rustls signing key.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::TlsFiles;
use crate::telemetry::{self, HandshakeFailure};

/// Longest a TLS handshake may take before the connection is dropped. The handshake runs in
/// the connection's own task, so a slow or silent client never delays accepting others.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the files are checked for a change (size, modification time, inode). Three
/// `stat` calls; the files are read only when one changed.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(30);

/// The only application protocol served: hyper's server here speaks HTTP/1.1 (WebSocket
/// upgrades included). A client offering only `h2` fails the handshake instead of talking
/// HTTP/2 to an HTTP/1 server.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Why the TLS files were rejected; the message names the flag and the file, never content.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {}: {source}", .path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{flag} {}: {reason}", .path.display())]
    Invalid { flag: &'static str, path: PathBuf, reason: String },
    #[error("--tls-cert and --tls-key: {0}")]
    CertKey(String),
    #[error("tls setup: {0}")]
    Setup(String),
}

fn invalid(flag: &'static str, path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::Invalid { flag, path: path.to_path_buf(), reason: reason.into() }
}

/// What made a reload happen (the `trigger` field of its log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadTrigger {
    Signal,
    FileChange,
}

impl ReloadTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Signal => "sighup",
            Self::FileChange => "file_change",
        }
    }
}

/// The OpAMP listener's TLS: a handle (cheap to clone) on the current server configuration.
/// Each handshake takes the configuration current when the connection was accepted; a reload
/// swaps it for later handshakes only, and a failed reload keeps the previous one.
#[derive(Clone)]
pub struct ServerTls {
    inner: Arc<Inner>,
}

struct Inner {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    /// The files' stamp at the last load attempt. Its lock also serialises reloads, so a slow
    /// reload of older files never overwrites a later one.
    attempted: Mutex<Stamp>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").field("files", &self.inner.files).finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads and checks the files: a certificate chain, its private key (which must match the
    /// first certificate) and, with `--tls-client-ca`, the CA certificates client certificates
    /// must chain to. Blocking file IO: call it before serving (or off the runtime).
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let stamp = Stamp::of(files);
        let config = server_config(files)?;
        Ok(Self {
            inner: Arc::new(Inner {
                files: files.clone(),
                current: RwLock::new(config),
                attempted: Mutex::new(stamp),
            }),
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.inner.files
    }

    /// True when clients must present a certificate signed by `--tls-client-ca`.
    pub fn requires_client_certificates(&self) -> bool {
        self.inner.files.client_ca.is_some()
    }

    /// Re-reads the files now, for the handshakes that follow. Logs and counts the outcome;
    /// on an error the previous configuration stays in use.
    pub async fn reload(&self, trigger: ReloadTrigger) -> Result<(), TlsError> {
        self.reload_off_runtime(trigger, false).await.map(|_| ())
    }

    /// Re-reads the files if any of them changed since the last attempt (successful or not, so
    /// broken files are reported once, not on every check); true when it reloaded.
    pub async fn reload_if_changed(&self) -> Result<bool, TlsError> {
        self.reload_off_runtime(ReloadTrigger::FileChange, true).await
    }

    /// Reading files and parsing keys is blocking work (an RSA key takes milliseconds), so it
    /// runs on the blocking pool.
    async fn reload_off_runtime(
        &self,
        trigger: ReloadTrigger,
        only_if_changed: bool,
    ) -> Result<bool, TlsError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.reload_blocking(trigger, only_if_changed))
            .await
            .unwrap_or_else(|e| Err(TlsError::Setup(format!("reload task failed: {e}"))))
    }

    fn reload_blocking(
        &self,
        trigger: ReloadTrigger,
        only_if_changed: bool,
    ) -> Result<bool, TlsError> {
        let mut attempted = self.inner.attempted.lock().unwrap_or_else(PoisonError::into_inner);
        // stamped before reading: a change racing the read is seen by the next check
        let stamp = Stamp::of(&self.inner.files);
        if only_if_changed && stamp == *attempted {
            return Ok(false);
        }
        *attempted = stamp;
        let files = &self.inner.files;
        match server_config(files) {
            Ok(config) => {
                *self.inner.current.write().unwrap_or_else(PoisonError::into_inner) = config;
                telemetry::record_tls_reload(true);
                tracing::info!(
                    trigger = trigger.as_str(),
                    cert = %files.cert.display(),
                    key = %files.key.display(),
                    client_ca = ?files.client_ca,
                    "tls certificate reloaded"
                );
                Ok(true)
            }
            Err(e) => {
                telemetry::record_tls_reload(false);
                tracing::error!(
                    trigger = trigger.as_str(),
                    error = %e,
                    "tls reload failed, keeping the previous certificate"
                );
                Err(e)
            }
        }
    }

    /// An acceptor on the configuration current now.
    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.inner.current.read().unwrap_or_else(PoisonError::into_inner).clone())
    }

    /// The TLS handshake of an accepted connection, bounded by [`HANDSHAKE_TIMEOUT`]. A failure
    /// is counted by reason and logged at debug level only (port scanners and TCP health
    /// checks would flood the log), and yields `None`.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<TlsStream<TcpStream>> {
        let accept = self.acceptor().accept(stream);
        let reason = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
            Ok(Ok(tls)) => return Some(tls),
            Ok(Err(e)) => {
                let reason = classify(&e);
                let why = reason.as_str();
                tracing::debug!(peer = %peer, reason = why, error = %e, "tls handshake failed");
                reason
            }
            Err(_) => {
                let timeout = HANDSHAKE_TIMEOUT;
                tracing::debug!(peer = %peer, timeout = ?timeout, "tls handshake timed out");
                HandshakeFailure::Timeout
            }
        };
        telemetry::record_handshake_failure(reason);
        None
    }
}

/// Checks the files every `interval` and reloads them when one changed (a renewed certificate
/// written in place, or a Kubernetes secret volume swapping its symlink). Runs until dropped.
pub async fn watch(tls: ServerTls, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; the files were just loaded
    loop {
        tick.tick().await;
        // the outcome is logged and counted by the reload itself
        let _ = tls.reload_if_changed().await;
    }
}

/// Which handshake failures the server sees, from the error tokio-rustls returns.
fn classify(e: &io::Error) -> HandshakeFailure {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        // on the server side these only come from verifying a client certificate
        Some(rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_)) => {
            HandshakeFailure::ClientCertificate
        }
        // the client refused us: typically it does not trust the server certificate
        Some(rustls::Error::AlertReceived(_)) => HandshakeFailure::PeerAlert,
        // not TLS (plain HTTP to the TLS port), no common version, cipher or ALPN protocol
        Some(_) => HandshakeFailure::Protocol,
        // closed or reset before the handshake completed (TCP health checks look like this)
        None => HandshakeFailure::Closed,
    }
}

fn provider() -> Arc<CryptoProvider> {
    // Explicit, not the process default: the binary links ring (through the Elasticsearch
    // client) and tests also link aws-lc-rs, and with two providers rustls cannot pick one.
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads the files into a server configuration.
fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let chain = read_certs("--tls-cert", &files.cert)?;
    let key = read_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => builder.with_client_cert_verifier(client_verifier(path, provider)?),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsError::CertKey(
                "the key is not the key of the first certificate (the leaf must come first)".into(),
            )
        }
        rustls::Error::InvalidCertificate(e) => {
            invalid("--tls-cert", &files.cert, format!("unusable certificate: {e}"))
        }
        other => TlsError::CertKey(other.to_string()),
    })?;
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

fn read_file(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { flag, path: path.to_path_buf(), source })
}

/// Every `CERTIFICATE` block of a PEM file, in order; at least one.
fn read_certs(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(flag, path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(flag, path, "no CERTIFICATE block in PEM"));
    }
    Ok(certs)
}

/// The first private key block of a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    const FLAG: &str = "--tls-key";
    let pem = read_file(FLAG, path)?;
    // pem errors describe the structure (markers, base64 offsets), never the key bytes
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        pem::Error::NoItemsFound => {
            invalid(FLAG, path, "no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block in PEM")
        }
        e => invalid(FLAG, path, format!("bad PEM: {e}")),
    })
}

fn client_verifier(
    path: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    const FLAG: &str = "--tls-client-ca";
    let mut roots = RootCertStore::empty();
    for cert in read_certs(FLAG, path)? {
        roots
            .add(cert)
            .map_err(|e| invalid(FLAG, path, format!("unusable CA certificate: {e}")))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| invalid(FLAG, path, e.to_string()))
}

/// What identifies the content of the files without reading them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Vec<Option<FileStamp>>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamp {
    fn of(files: &TlsFiles) -> Self {
        let paths = [Some(&files.cert), Some(&files.key), files.client_ca.as_ref()];
        Self(paths.into_iter().flatten().map(|p| FileStamp::of(p)).collect())
    }
}

impl FileStamp {
    /// `None` when the file cannot be read: its reappearance then counts as a change.
    fn of(path: &Path) -> Option<Self> {
        // follows symlinks, so a swapped link target counts as a change
        let meta = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Some(Self { modified: meta.modified().ok(), len: meta.len(), inode })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    struct Files {
        _dir: tempfile::TempDir,
        files: TlsFiles,
    }

    /// A self-signed certificate and its key in a temporary directory.
    fn self_signed() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let cert =
            CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
        let files = TlsFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            client_ca: None,
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        Files { _dir: dir, files }
    }

    fn rejected(files: &TlsFiles) -> String {
        ServerTls::load(files).expect_err("must be rejected").to_string()
    }

    #[test]
    fn valid_files_load_with_alpn_http1() {
        let f = self_signed();
        let tls = ServerTls::load(&f.files).expect("loads");
        assert!(!tls.requires_client_certificates());
        let config = tls.inner.current.read().unwrap().clone();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn missing_files_name_the_flag_and_path() {
        let f = self_signed();
        let gone = f.files.cert.with_file_name("nope.pem");
        let why = rejected(&TlsFiles { cert: gone.clone(), ..f.files.clone() });
        assert!(why.starts_with("--tls-cert") && why.contains("nope.pem"), "{why}");
        let why = rejected(&TlsFiles { key: gone.clone(), ..f.files.clone() });
        assert!(why.starts_with("--tls-key"), "{why}");
        let why = rejected(&TlsFiles { client_ca: Some(gone), ..f.files.clone() });
        assert!(why.starts_with("--tls-client-ca"), "{why}");
    }

    #[test]
    fn files_without_pem_blocks_are_rejected() {
        let f = self_signed();
        let key_pem = std::fs::read_to_string(&f.files.key).unwrap();
        // a key where the certificate belongs, and the other way round
        std::fs::write(&f.files.cert, &key_pem).unwrap();
        let why = rejected(&f.files);
        assert!(why.contains("--tls-cert") && why.contains("no CERTIFICATE"), "{why}");
        let f = self_signed();
        std::fs::write(&f.files.key, b"not pem at all\n").unwrap();
        let why = rejected(&f.files);
        assert!(why.contains("--tls-key") && why.contains("no PRIVATE KEY"), "{why}");
        assert!(!why.contains("not pem at all"), "file content is never echoed: {why}");
        let f = self_signed();
        std::fs::write(&f.files.cert, b"-----BEGIN CERTIFICATE-----\n!!!!\n").unwrap();
        let why = rejected(&f.files);
        assert!(why.contains("--tls-cert") && why.contains("bad PEM"), "{why}");
    }

    #[test]
    fn a_key_of_another_certificate_is_rejected() {
        let (a, b) = (self_signed(), self_signed());
        let why = rejected(&TlsFiles { key: b.files.key.clone(), ..a.files.clone() });
        assert!(why.contains("--tls-key") && why.contains("not the key"), "{why}");
    }

    #[test]
    fn handshake_failures_are_classified() {
        let tls_error = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        assert_eq!(
            classify(&tls_error(rustls::Error::NoCertificatesPresented)),
            HandshakeFailure::ClientCertificate
        );
        assert_eq!(
            classify(&tls_error(rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA))),
            HandshakeFailure::PeerAlert
        );
        assert_eq!(
            classify(&tls_error(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            ))),
            HandshakeFailure::Protocol
        );
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "tls handshake eof");
        assert_eq!(classify(&eof), HandshakeFailure::Closed);
    }

    #[tokio::test]
    async fn reload_if_changed_reads_only_changed_files_and_keeps_the_old_on_error() {
        let f = self_signed();
        let tls = ServerTls::load(&f.files).unwrap();
        let before = tls.inner.current.read().unwrap().clone();
        assert!(!tls.reload_if_changed().await.unwrap(), "nothing changed");
        std::fs::write(&f.files.key, b"").unwrap();
        assert!(tls.reload_if_changed().await.is_err(), "a broken key is reported");
        let kept = tls.inner.current.read().unwrap().clone();
        assert!(Arc::ptr_eq(&before, &kept), "the previous configuration stays");
        assert!(!tls.reload_if_changed().await.unwrap(), "reported once, not on every check");
        let fresh = self_signed();
        std::fs::copy(&fresh.files.cert, &f.files.cert).unwrap();
        std::fs::copy(&fresh.files.key, &f.files.key).unwrap();
        assert!(tls.reload_if_changed().await.unwrap());
        let after = tls.inner.current.read().unwrap().clone();
        assert!(!Arc::ptr_eq(&before, &after));
    }
}
