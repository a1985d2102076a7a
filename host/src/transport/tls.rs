//! TLS termination with rustls (TLS 1.2 and 1.3 only): one port serves `wss://` and the HTTPS API.
//!
//! Handshakes run in their own tasks with a deadline, so a slow or silent client never holds up the accept
//! loop; finished connections are handed to the HTTP server through [`Listener`]. The certificate lives in
//! a [`Certificates`] store that is reloaded when its files change: new handshakes use the new certificate,
//! existing connections carry on.
//!
//! The listener also reads the PROXY protocol header (v1 or v2, parsed by the `ppp` crate) that a trusted
//! load balancer puts in front of each connection, before TLS, and reports the client address it names.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Buf, Bytes, BytesMut};
use ipnet::IpNet;
use ppp::{HeaderResult, PartialResult};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use crate::config::TlsConfig;
use crate::config::tls::{KeyPairError, load_key_pair, provider};

/// The certificate new handshakes use; replaced atomically on reload.
#[derive(Debug)]
pub struct Certificates {
    current: ArcSwap<CertifiedKey>,
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl Certificates {
    /// Loads the configured files.
    pub fn load(config: &TlsConfig) -> Result<Arc<Self>, KeyPairError> {
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

/// A rustls server configuration serving the store's certificate over HTTP/2 (offered first, so a browser's
/// HTTP streams share one connection instead of its six per host) and HTTP/1.1 (WebSocket upgrades: a
/// browser opens its WebSocket on a connection of its own when the HTTP/2 one does not offer them).
pub fn server_config(certificates: Arc<Certificates>) -> Result<rustls::ServerConfig, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS set-up failed: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Whether the client chose HTTP/2 in the TLS handshake (never on a plain connection).
pub fn speaks_http2(connection: &Connection) -> bool {
    match connection {
        Either::Left(_) => false,
        Either::Right(tls) => tls.get_ref().1.alpn_protocol() == Some(b"h2"),
    }
}

/// A plain or TLS connection. The TLS state is large (rustls keeps its buffers inline), so it is boxed and
/// plain connections do not pay for it.
pub type Connection = Either<TcpConnection, Box<TlsStream<TcpConnection>>>;

/// A TCP connection, with whatever was read past its PROXY header served again before the socket's data.
#[derive(Debug)]
pub struct TcpConnection {
    early: Bytes,
    tcp: TcpStream,
}

impl TcpConnection {
    fn new(tcp: TcpStream) -> Self {
        Self {
            early: Bytes::new(),
            tcp,
        }
    }

    /// The bytes read past the PROXY header that were not served yet, and the socket.
    pub(super) fn into_parts(self) -> (Bytes, TcpStream) {
        (self.early, self.tcp)
    }
}

impl AsyncRead for TcpConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.early.has_remaining() {
            let n = self.early.len().min(buf.remaining());
            let early = self.early.split_to(n);
            buf.put_slice(&early);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for TcpConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// PROXY protocol on the listener: which peers must send the header, and how long they may take.
#[derive(Debug, Clone)]
pub struct ProxyProtocol {
    /// Peers whose connections start with a PROXY header; nobody else's header is believed.
    pub trusted: Vec<IpNet>,
    /// How long a trusted peer may take to send the header.
    pub timeout: Duration,
}

impl ProxyProtocol {
    fn expected_from(&self, peer: SocketAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&peer.ip()))
    }
}

/// The longest PROXY header: a v2 header with the largest payload its 16-bit length allows.
const MAX_PROXY_HEADER: usize = 16 + u16::MAX as usize;

/// Why a connection's PROXY header was not accepted.
#[derive(Debug, thiserror::Error)]
enum ProxyHeaderError {
    #[error("connection closed before the PROXY header was complete")]
    Closed,
    #[error("invalid PROXY header: {0}")]
    Invalid(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads the PROXY header at the start of `tcp`: the client address it names (the peer's own for `LOCAL`
/// and `UNKNOWN` headers, which proxies send for their health checks), and the connection with the bytes
/// read past the header put back.
async fn read_proxy_header(
    mut tcp: TcpStream,
    peer: SocketAddr,
) -> Result<(TcpConnection, SocketAddr), ProxyHeaderError> {
    let mut buffer = BytesMut::with_capacity(256);
    let (length, client) = loop {
        if tcp.read_buf(&mut buffer).await? == 0 {
            return Err(ProxyHeaderError::Closed);
        }
        let header = HeaderResult::parse(&buffer);
        if header.is_incomplete() {
            if buffer.len() >= MAX_PROXY_HEADER {
                return Err(ProxyHeaderError::Invalid("too long".into()));
            }
            continue;
        }
        break match header {
            HeaderResult::V1(Ok(header)) => {
                let client = match header.addresses {
                    ppp::v1::Addresses::Tcp4(a) => {
                        Some(SocketAddr::new(a.source_address.into(), a.source_port))
                    }
                    ppp::v1::Addresses::Tcp6(a) => {
                        Some(SocketAddr::new(a.source_address.into(), a.source_port))
                    }
                    ppp::v1::Addresses::Unknown => None,
                };
                (header.header.len(), client)
            }
            HeaderResult::V2(Ok(header)) => {
                let client = match (header.command, header.addresses) {
                    (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => {
                        Some(SocketAddr::new(a.source_address.into(), a.source_port))
                    }
                    (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => {
                        Some(SocketAddr::new(a.source_address.into(), a.source_port))
                    }
                    _ => None,
                };
                (header.len(), client)
            }
            HeaderResult::V1(Err(error)) => {
                return Err(ProxyHeaderError::Invalid(error.to_string()));
            }
            HeaderResult::V2(Err(error)) => {
                return Err(ProxyHeaderError::Invalid(error.to_string()));
            }
        };
    };
    buffer.advance(length);
    let connection = TcpConnection {
        early: buffer.freeze(),
        tcp,
    };
    Ok((connection, client.unwrap_or(peer)))
}

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
    /// Accepts on `tcp`, with TLS when `tls` is given (handshakes bounded by `handshake_timeout`), reading a
    /// PROXY header first from the peers `proxy` names. The address reported with each connection is the
    /// client's as the PROXY header gives it, otherwise the peer's.
    pub fn new(
        tcp: TcpListener,
        tls: Option<(rustls::ServerConfig, Duration)>,
        proxy: Option<ProxyProtocol>,
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
                let proxy = proxy.clone().filter(|proxy| proxy.expected_from(remote));
                if proxy.is_none() && acceptor.is_none() {
                    if tx
                        .send((Either::Left(TcpConnection::new(stream)), remote))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
                // Reading a PROXY header and the TLS handshake wait on the client: never in this loop.
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let (stream, client) = match proxy {
                        None => (TcpConnection::new(stream), remote),
                        Some(proxy) => {
                            match tokio::time::timeout(
                                proxy.timeout,
                                read_proxy_header(stream, remote),
                            )
                            .await
                            {
                                Ok(Ok(read)) => read,
                                Ok(Err(error)) => {
                                    tracing::debug!(%remote, %error, "PROXY header refused");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%remote, "PROXY header timed out");
                                    return;
                                }
                            }
                        }
                    };
                    let connection = match acceptor {
                        None => Either::Left(stream),
                        Some((acceptor, timeout)) => {
                            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => Either::Right(Box::new(tls)),
                                Ok(Err(error)) => {
                                    tracing::debug!(%client, %error, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%client, "TLS handshake timed out");
                                    return;
                                }
                            }
                        }
                    };
                    let _ = tx.send((connection, client)).await;
                });
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Sends `bytes` over a loopback connection and reads the PROXY header on the server side; returns the
    /// client address it named and everything after it.
    async fn through_header(bytes: &[u8]) -> Result<(SocketAddr, Vec<u8>), ProxyHeaderError> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        client.write_all(bytes).await.unwrap();
        client.shutdown().await.unwrap();
        let (mut connection, address) = read_proxy_header(server, peer).await?;
        let mut rest = Vec::new();
        connection.read_to_end(&mut rest).await.unwrap();
        Ok((address, rest))
    }

    #[tokio::test]
    async fn v1_header_names_the_client_and_keeps_what_follows() {
        let (address, rest) =
            through_header(b"PROXY TCP4 203.0.113.9 10.0.0.1 51000 443\r\nGET / HTTP/1.1\r\n")
                .await
                .unwrap();
        assert_eq!(address, "203.0.113.9:51000".parse().unwrap());
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        let (address, _) = through_header(b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n")
            .await
            .unwrap();
        assert_eq!(address, "[2001:db8::7]:51000".parse().unwrap());
    }

    #[tokio::test]
    async fn v2_header_names_the_client_and_keeps_what_follows() {
        use ppp::v2::{Builder, Command, IPv4, Protocol, Version};
        let mut bytes = Builder::with_addresses(
            Version::Two | Command::Proxy,
            Protocol::Stream,
            IPv4::new([198, 51, 100, 4], [10, 0, 0, 1], 40000, 443),
        )
        .build()
        .unwrap();
        bytes.extend_from_slice(b"\x16\x03\x01");
        let (address, rest) = through_header(&bytes).await.unwrap();
        assert_eq!(address, "198.51.100.4:40000".parse().unwrap());
        assert_eq!(rest, b"\x16\x03\x01");
    }

    #[tokio::test]
    async fn local_and_unknown_headers_keep_the_peer() {
        use ppp::v2::{Builder, Command, IPv4, Protocol, Version};
        let local = Builder::with_addresses(
            Version::Two | Command::Local,
            Protocol::Stream,
            IPv4::new([198, 51, 100, 4], [10, 0, 0, 1], 40000, 443),
        )
        .build()
        .unwrap();
        let (address, _) = through_header(&local).await.unwrap();
        assert!(address.ip().is_loopback(), "{address}");
        let (address, _) = through_header(b"PROXY UNKNOWN\r\n").await.unwrap();
        assert!(address.ip().is_loopback(), "{address}");
    }

    #[tokio::test]
    async fn missing_broken_or_truncated_headers_are_refused() {
        assert!(matches!(
            through_header(b"GET / HTTP/1.1\r\n\r\n").await,
            Err(ProxyHeaderError::Invalid(_))
        ));
        assert!(matches!(
            through_header(b"PROXY TCP4 not-an-address 10.0.0.1 1 2\r\n").await,
            Err(ProxyHeaderError::Invalid(_))
        ));
        assert!(matches!(
            through_header(b"PROXY TCP4 203.0.113.9").await,
            Err(ProxyHeaderError::Closed)
        ));
    }
}
