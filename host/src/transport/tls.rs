//! TLS termination with rustls (TLS 1.2 and 1.3 only): one port serves `wss://` and the HTTPS API.
//!
//! Handshakes run in their own tasks with a deadline, so a slow or silent client never holds up the accept
//! loop; finished connections are handed to the HTTP server through [`Listener`]. The certificate lives in
//! a [`Certificates`] store that is reloaded when its files change: new handshakes use the new certificate,
//! existing connections carry on.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

/// The `[tls]` section. TLS is on when both files are set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain (leaf first).
    pub cert_file: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// How long a client may take to complete the TLS handshake (default 10 s).
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: String::new(),
            key_file: String::new(),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl TlsConfig {
    /// Whether TLS is configured.
    pub fn enabled(&self) -> bool {
        !self.cert_file.is_empty() || !self.key_file.is_empty()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a certificate chain and its key, checking that they belong together; the error names the file.
pub fn load_key_pair(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| format!("tls.cert_file {}: {e}", cert_file.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.cert_file {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.cert_file {}: no certificate in the file",
            cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("tls.key_file {}: {e}", key_file.display()))?;
    CertifiedKey::from_der(certs, key, &provider()).map_err(|e| {
        format!(
            "tls.key_file {} does not fit tls.cert_file {}: {e}",
            key_file.display(),
            cert_file.display()
        )
    })
}

/// The certificate new handshakes use; replaced atomically on reload.
#[derive(Debug)]
pub struct Certificates {
    current: ArcSwap<CertifiedKey>,
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl Certificates {
    /// Loads the configured files.
    pub fn load(config: &TlsConfig) -> Result<Arc<Self>, String> {
        let (cert_file, key_file) = (
            PathBuf::from(&config.cert_file),
            PathBuf::from(&config.key_file),
        );
        let key = load_key_pair(&cert_file, &key_file)?;
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(key),
            cert_file,
            key_file,
        }))
    }

    /// Loads the files again; on failure the current certificate stays.
    pub fn reload(&self) {
        match load_key_pair(&self.cert_file, &self.key_file) {
            Ok(key) => {
                self.current.store(Arc::new(key));
                tracing::info!(cert = %self.cert_file.display(), "TLS certificate reloaded");
            }
            Err(error) => {
                tracing::error!(%error, "TLS certificate reload failed; the current certificate stays")
            }
        }
    }

    /// Reloads whenever the certificate or key file changes, until `shutdown`.
    pub fn watch(self: &Arc<Self>, shutdown: CancellationToken) -> notify::Result<()> {
        use notify::Watcher;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let files = [absolute(&self.cert_file), absolute(&self.key_file)];
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event
                    && !event.kind.is_access()
                    && event.paths.iter().any(|p| files.contains(&absolute(p)))
                {
                    let _ = tx.send(());
                }
            })?;
        for dir in [parent(&self.cert_file), parent(&self.key_file)] {
            watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
        }
        let store = self.clone();
        tokio::spawn(async move {
            let _watcher = watcher;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    event = rx.recv() => if event.is_none() { return },
                }
                // Certificate and key are usually replaced together: wait for both before reading.
                let settle = tokio::time::Instant::now() + Duration::from_millis(200);
                while let Ok(Some(())) = tokio::time::timeout_at(settle, rx.recv()).await {}
                store.reload();
            }
        });
        Ok(())
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn parent(path: &Path) -> PathBuf {
    absolute(path)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A rustls server configuration serving the store's certificate over HTTP/1.1 (WebSocket upgrades).
pub fn server_config(certificates: Arc<Certificates>) -> Result<rustls::ServerConfig, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS set-up failed: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A plain or TLS connection.
pub type Connection = Either<TcpStream, TlsStream<TcpStream>>;

/// Accepts connections for the HTTP server, plain or with TLS.
#[derive(Debug)]
pub struct Listener {
    accepted: mpsc::Receiver<(Connection, SocketAddr)>,
    local: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Listener {
    /// Accepts on `tcp`, with TLS when `tls` is given (handshakes bounded by `handshake_timeout`).
    pub fn new(
        tcp: TcpListener,
        tls: Option<(rustls::ServerConfig, Duration)>,
    ) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, accepted) = mpsc::channel(256);
        let stop = CancellationToken::new();
        let acceptor = tls.map(|(config, timeout)| (TlsAcceptor::from(Arc::new(config)), timeout));
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                let (stream, remote) = tokio::select! {
                    _ = stopped.cancelled() => return,
                    accepted = tcp.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            // Out of file descriptors and similar: back off instead of spinning.
                            tracing::warn!(%error, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let _ = stream.set_nodelay(true);
                match &acceptor {
                    None => {
                        if tx.send((Either::Left(stream), remote)).await.is_err() {
                            return;
                        }
                    }
                    Some((acceptor, timeout)) => {
                        let (acceptor, timeout, tx) = (acceptor.clone(), *timeout, tx.clone());
                        tokio::spawn(async move {
                            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => {
                                    let _ = tx.send((Either::Right(tls), remote)).await;
                                }
                                Ok(Err(error)) => {
                                    tracing::debug!(%remote, %error, "TLS handshake failed")
                                }
                                Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                            }
                        });
                    }
                }
            }
        });
        Ok(Self {
            accepted,
            local,
            stop,
        })
    }
}

impl axum::serve::Listener for Listener {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
