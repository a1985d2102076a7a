//! TLS: `wss://` and the HTTPS API on one port (TLS 1.2 and 1.3 only, no cleartext), certificate reload
//! while clients stay connected, a handshake deadline that keeps silent sockets from holding anything up,
//! and start-up errors that name the key at fault.
//!
//! Certificates are generated with rcgen at test time; clients use tokio-rustls with the ring provider and
//! trust exactly the certificates a test hands them. HTTPS API calls are raw HTTP/1.1 over a TLS stream.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use herald::config::Config;
use herald_tests::{API_KEY, TestServer, WAIT, publication};
use rustls::ProtocolVersion;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message, http};

/// A self-signed certificate for `localhost` and 127.0.0.1, with its key.
struct Pair {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

/// A fresh key pair and self-signed certificate; `name` is the subject CN, so two pairs differ in more
/// than their keys.
fn pair(name: &str) -> Pair {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("certificate parameters");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().expect("key pair");
    let cert = params.self_signed(&key).expect("self-signed certificate");
    Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

/// Certificate and key files in a temporary folder.
struct Files {
    dir: TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    /// Writes `pair` as `cert.pem` and `key.pem` in a new folder.
    fn new(pair: &Pair) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, &pair.cert_pem).expect("write cert");
        std::fs::write(&key, &pair.key_pem).expect("write key");
        Self { dir, cert, key }
    }

    /// Replaces both files atomically: writes temporary files in the same folder, then renames them over.
    fn replace(&self, pair: &Pair) {
        let (cert_tmp, key_tmp) = (
            self.dir.path().join("cert.pem.new"),
            self.dir.path().join("key.pem.new"),
        );
        std::fs::write(&cert_tmp, &pair.cert_pem).expect("write new cert");
        std::fs::write(&key_tmp, &pair.key_pem).expect("write new key");
        std::fs::rename(&key_tmp, &self.key).expect("rename key");
        std::fs::rename(&cert_tmp, &self.cert).expect("rename cert");
    }

    /// The `[tls]` section for these files, followed by `extra` lines.
    fn toml(&self, extra: &str) -> String {
        tls_toml(Some(&self.cert), Some(&self.key), extra)
    }
}

/// A `[tls]` section with the given files (properly quoted), followed by `extra` lines.
fn tls_toml(cert: Option<&Path>, key: Option<&Path>, extra: &str) -> String {
    let quote = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let mut toml = String::from("[tls]\n");
    if let Some(cert) = cert {
        toml += &format!("cert_file = {}\n", quote(cert));
    }
    if let Some(key) = key {
        toml += &format!("key_file = {}\n", quote(key));
    }
    toml + extra
}

/// A client configuration trusting exactly `roots`, offering `versions` and ALPN `http/1.1`.
fn client_config(
    roots: &[&CertificateDer<'static>],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add((*root).clone()).expect("trust anchor");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("protocol versions")
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Trusts `root`, TLS 1.2 and 1.3.
fn trusting(root: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    client_config(&[root], rustls::DEFAULT_VERSIONS)
}

/// A TLS handshake with the server at `addr` (verified as the IP address 127.0.0.1), bounded by [`WAIT`].
async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    tokio::time::timeout(WAIT, async {
        let tcp = TcpStream::connect(addr).await?;
        TlsConnector::from(config)
            .connect(ServerName::from(addr.ip()), tcp)
            .await
    })
    .await
    .expect("TLS handshake finished in time")
}

/// The protocol version and ALPN protocol a finished handshake agreed on.
fn negotiated(stream: &TlsStream<TcpStream>) -> (Option<ProtocolVersion>, Option<Vec<u8>>) {
    let (_, connection) = stream.get_ref();
    (
        connection.protocol_version(),
        connection.alpn_protocol().map(<[u8]>::to_vec),
    )
}

/// A Centrifugo-protocol client over `wss://`.
struct WssClient {
    ws: WebSocketStream<TlsStream<TcpStream>>,
    next_id: u64,
    pending: VecDeque<Value>,
}

impl WssClient {
    /// Opens `wss://…/connection/websocket` over an established TLS stream, with a browser-like `Origin`
    /// of the server's own `https://` address.
    async fn open_over(addr: SocketAddr, stream: TlsStream<TcpStream>) -> Self {
        let mut request = format!("wss://{addr}/connection/websocket")
            .into_client_request()
            .expect("request");
        request.headers_mut().insert(
            http::header::ORIGIN,
            format!("https://{addr}").parse().expect("origin"),
        );
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, stream))
            .await
            .expect("WebSocket upgrade in time")
            .expect("WebSocket upgrade over TLS");
        Self {
            ws,
            next_id: 0,
            pending: VecDeque::new(),
        }
    }

    /// Handshakes with `config`, opens the WebSocket and sends `connect`.
    async fn connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Self {
        let stream = tls_connect(addr, config).await.expect("TLS handshake");
        Self::connect_over(addr, stream).await
    }

    /// Opens the WebSocket over `stream` and sends `connect`.
    async fn connect_over(addr: SocketAddr, stream: TlsStream<TcpStream>) -> Self {
        let mut client = Self::open_over(addr, stream).await;
        let reply = client.command("connect", json!({})).await;
        assert!(reply["connect"]["client"].is_string(), "connect: {reply}");
        client
    }

    /// Sends `{"id":N,"<method>":body}` and returns the reply with that id (pushes are kept).
    async fn command(&mut self, method: &str, body: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = serde_json::Map::new();
        command.insert("id".into(), id.into());
        command.insert(method.into(), body);
        self.ws
            .send(Message::text(Value::Object(command).to_string()))
            .await
            .expect("send");
        loop {
            if let Some(i) = self.pending.iter().position(|v| v["id"] == id) {
                return self.pending.remove(i).expect("present");
            }
            self.read().await;
        }
    }

    /// Subscribes to `channel`, asserting success.
    async fn subscribe(&mut self, channel: &str) {
        let reply = self.command("subscribe", json!({"channel": channel})).await;
        assert!(reply.get("subscribe").is_some(), "subscribe: {reply}");
    }

    /// The next push not yet consumed.
    async fn next_push(&mut self) -> Value {
        loop {
            if let Some(i) = self.pending.iter().position(|v| v.get("push").is_some()) {
                return self.pending.remove(i).expect("present")["push"].take();
            }
            self.read().await;
        }
    }

    /// Reads one frame into `pending`, answering `{}` pings; panics on close or error.
    async fn read(&mut self) {
        let message = tokio::time::timeout(WAIT, self.ws.next())
            .await
            .expect("message in time");
        match message {
            Some(Ok(Message::Text(text))) => {
                for line in text.split('\n') {
                    let value: Value = serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("bad line {line:?}: {e}"));
                    if value == json!({}) {
                        self.ws.send(Message::text("{}")).await.expect("pong");
                    } else {
                        self.pending.push_back(value);
                    }
                }
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("connection ended or unexpected frame: {other:?}"),
        }
    }
}

/// Finds `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Sends a raw HTTP/1.1 request over `stream` and returns the status and the body (Content-Length or
/// chunked), bounded by [`WAIT`].
async fn http_exchange<S>(stream: &mut S, request: &[u8]) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::time::timeout(WAIT, async {
        stream.write_all(request).await.expect("write request");
        stream.flush().await.expect("flush request");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut read = async |buf: &mut Vec<u8>| {
            let n = stream.read(&mut chunk).await.expect("read response");
            assert!(
                n > 0,
                "response ended early: {:?}",
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            read(&mut buf).await;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line: {head}"));
        let header = |name: &str| {
            head.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == name).then(|| value.trim().to_string())
            })
        };
        let body = if let Some(length) = header("content-length") {
            let length: usize = length.parse().expect("content-length");
            while buf.len() < head_end + length {
                read(&mut buf).await;
            }
            buf[head_end..head_end + length].to_vec()
        } else {
            assert_eq!(
                header("transfer-encoding").as_deref(),
                Some("chunked"),
                "{head}"
            );
            let mut body = Vec::new();
            let mut at = head_end;
            loop {
                let line_end = loop {
                    if let Some(i) = find(&buf[at..], b"\r\n") {
                        break at + i;
                    }
                    read(&mut buf).await;
                };
                let size_text = String::from_utf8_lossy(&buf[at..line_end]).to_string();
                let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                    .expect("chunk size");
                if size == 0 {
                    break body;
                }
                while buf.len() < line_end + 2 + size + 2 {
                    read(&mut buf).await;
                }
                body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
                at = line_end + 2 + size + 2;
            }
        };
        (status, String::from_utf8(body).expect("UTF-8 body"))
    })
    .await
    .expect("HTTP response in time")
}

/// `POST https://…/api/<method>` with the test API key over a fresh TLS connection trusting `config`'s
/// roots; returns the status and the JSON body.
async fn https_api(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    method: &str,
    body: Value,
) -> (u16, Value) {
    let mut stream = tls_connect(addr, config)
        .await
        .expect("TLS handshake for API");
    let body = body.to_string();
    let request = format!(
        "POST /api/{method} HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, text) = http_exchange(&mut stream, request.as_bytes()).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Publishes through the HTTPS API, asserting success.
async fn https_publish(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    channel: &str,
    data: Value,
) {
    let (status, body) = https_api(
        addr,
        config,
        "publish",
        json!({"channel": channel, "data": data}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("result").is_some(), "publish failed: {body}");
}

/// A `wss://` client trusting the server's self-signed certificate connects, subscribes and receives a
/// publication sent through `POST https://…/api/publish`; the handshake agrees on ALPN `http/1.1`.
#[tokio::test]
async fn wss_and_https_api_work() {
    let cert = pair("herald test");
    let files = Files::new(&cert);
    let server = TestServer::start(&files.toml("")).await;

    let stream = tls_connect(server.addr, trusting(&cert.der))
        .await
        .expect("TLS handshake");
    let (_, alpn) = negotiated(&stream);
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    let mut client = WssClient::connect_over(server.addr, stream).await;
    client.subscribe("news").await;

    https_publish(
        server.addr,
        trusting(&cert.der),
        "news",
        json!({"text": "over TLS"}),
    )
    .await;
    let push = client.next_push().await;
    assert_eq!(
        publication(&push, "news")["data"],
        json!({"text": "over TLS"})
    );
}

/// With TLS, a client that offers HTTP/2 gets it (ALPN): an SSE stream runs over HTTP/2 (curl, as a browser
/// would, so its streams share one connection), and ends with its disconnect push when the server API
/// disconnects the client. WebSocket clients offer only HTTP/1.1 and keep getting it (above).
#[tokio::test]
async fn sse_runs_over_http2_with_tls() {
    let cert = pair("herald test");
    let files = Files::new(&cert);
    let server = TestServer::start(&files.toml("")).await;
    let url = format!(
        "https://127.0.0.1:{}/connection/sse?cf_connect=%7B%22id%22%3A1%2C%22connect%22%3A%7B%7D%7D",
        server.addr.port()
    );
    let mut curl = tokio::process::Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--no-buffer",
            "--http2",
            "--cacert",
        ])
        .arg(&files.cert)
        .args(["--write-out", "\nHTTP VERSION %{http_version}\n", &url])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl runs");
    let stdout = curl.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the connect reply within the wait")
        .expect("read curl's output")
        .expect("a line");
    let reply: Value =
        serde_json::from_str(first.strip_prefix("data: ").expect("an event")).expect("JSON");
    let client = reply["connect"]["client"].as_str().expect("connected");
    let (status, body) = https_api(
        server.addr,
        trusting(&cert.der),
        "disconnect",
        json!({"user": "", "client": client, "disconnect": {"code": 4000, "reason": "bye"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut rest = Vec::new();
    while let Some(line) = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the stream ends within the wait")
        .expect("read curl's output")
    {
        rest.push(line);
    }
    let rest = rest.join("\n");
    assert!(
        rest.contains(r#"data: {"push":{"disconnect":{"code":4000,"reason":"bye"}}}"#),
        "{rest}"
    );
    assert!(rest.ends_with("HTTP VERSION 2"), "{rest}");
    assert!(curl.wait().await.expect("curl ends").success());
}

/// Over `wss://` too, a client flooding commands without reading, then reading, gets its close code (3013)
/// and a complete close handshake, and all its sends go through: the server reads and drops the rest of
/// the flood instead of leaving it unread, which would make the kernel reset the connection under the
/// client (see `limits.rs`).
#[tokio::test]
async fn a_flooding_wss_client_gets_its_close_code_not_a_reset() {
    let cert = pair("herald test");
    let files = Files::new(&cert);
    let server = TestServer::start(&files.toml(
        "[limits]\ncommands_per_second = 1\ncommand_burst = 1\ndisconnect_after_refused_commands = 3000\n",
    ))
    .await;
    let mut client = WssClient::connect(server.addr, trusting(&cert.der)).await;
    // 2,000 messages of 100 commands (9 MB): 3,000 are refused with 111 (replies not read yet), then the
    // connection is closed with about 9 MB still to read.
    let command = json!({"id": 2, "presence_stats": {"channel": "room"}}).to_string();
    let message = vec![command.as_str(); 100].join("\n");
    let mut flood =
        futures_util::stream::iter((0..2_000).map(|_| Ok(Message::text(message.as_str()))));
    let sent = tokio::time::timeout(WAIT, client.ws.send_all(&mut flood))
        .await
        .expect("the flood is taken in time")
        .map_err(|error| error.to_string());
    let closed = loop {
        let message = tokio::time::timeout(WAIT, client.ws.next())
            .await
            .expect("message in time");
        match message {
            Some(Ok(Message::Close(Some(frame)))) => {
                break Ok((u16::from(frame.code), frame.reason.to_string()));
            }
            Some(Ok(_)) => {}
            other => break Err(format!("no close frame: {other:?}")),
        }
    };
    // The server ends the connection once the client's answer is in: a FIN, with no TLS close_notify (the
    // WebSocket library keeps the stream to itself), which rustls reports as an unexpected end of file.
    let end = match tokio::time::timeout(WAIT, client.ws.next())
        .await
        .expect("the end in time")
    {
        None => None,
        Some(Err(tokio_tungstenite::tungstenite::Error::Io(error)))
            if error.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            None
        }
        Some(other) => Some(format!("{other:?}")),
    };
    assert_eq!(
        (sent, closed, end),
        (Ok(()), Ok((3013, "too many requests".to_string())), None),
        "(every send goes through, then the close code and a clean end)"
    );
}

/// Only TLS 1.2 and 1.3 are served: a client limited to TLS 1.2 gets TLS 1.2 (and a working WebSocket), a
/// client limited to 1.3 gets 1.3, and a client offering both gets one of them. (rustls cannot offer TLS
/// 1.0 or 1.1, so older versions are covered by the negotiated version always being 1.2 or 1.3.)
#[tokio::test]
async fn only_tls_1_2_and_1_3() {
    let cert = pair("herald test");
    let files = Files::new(&cert);
    let server = TestServer::start(&files.toml("")).await;

    let tls12 = client_config(&[&cert.der], &[&rustls::version::TLS12]);
    let stream = tls_connect(server.addr, tls12)
        .await
        .expect("TLS 1.2 handshake");
    assert_eq!(negotiated(&stream).0, Some(ProtocolVersion::TLSv1_2));
    let mut client = WssClient::connect_over(server.addr, stream).await;
    client.subscribe("news").await;

    let tls13 = client_config(&[&cert.der], &[&rustls::version::TLS13]);
    let stream = tls_connect(server.addr, tls13)
        .await
        .expect("TLS 1.3 handshake");
    assert_eq!(negotiated(&stream).0, Some(ProtocolVersion::TLSv1_3));

    let stream = tls_connect(server.addr, trusting(&cert.der))
        .await
        .expect("default handshake");
    let version = negotiated(&stream).0;
    assert!(
        matches!(
            version,
            Some(ProtocolVersion::TLSv1_2 | ProtocolVersion::TLSv1_3)
        ),
        "{version:?}"
    );
}

/// The TLS port has no cleartext service: a plain `ws://` upgrade fails, a plain HTTP API call gets no HTTP
/// answer (and publishes nothing), and TLS clients are served normally before and afterwards.
#[tokio::test]
async fn plain_http_to_the_tls_port_fails() {
    let cert = pair("herald test");
    let files = Files::new(&cert);
    let server = TestServer::start(&files.toml("")).await;
    let mut client = WssClient::connect(server.addr, trusting(&cert.der)).await;
    client.subscribe("news").await;

    let plain = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(server.ws_url()))
        .await
        .expect("plain ws:// attempt ends in time");
    assert!(plain.is_err(), "a plain ws:// upgrade succeeded");

    let mut tcp = TcpStream::connect(server.addr).await.expect("tcp");
    let body = json!({"channel": "news", "data": {"text": "cleartext"}}).to_string();
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {}\r\nX-API-Key: {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        server.addr,
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer))
        .await
        .expect("the server closes a cleartext connection in time");
    assert!(
        !answer.starts_with(b"HTTP/"),
        "cleartext HTTP got an HTTP answer ({read:?}): {:?}",
        String::from_utf8_lossy(&answer)
    );

    https_publish(
        server.addr,
        trusting(&cert.der),
        "news",
        json!({"text": "over TLS"}),
    )
    .await;
    let push = client.next_push().await;
    assert_eq!(
        publication(&push, "news")["data"],
        json!({"text": "over TLS"}),
        "the cleartext publish must not have gone through"
    );
    WssClient::connect(server.addr, trusting(&cert.der)).await;
}

/// Replacing certificate and key (written next to them, then renamed over) is picked up without a
/// restart: new handshakes soon present the new certificate, and a client connected with the old one stays
/// connected and keeps receiving publications.
#[tokio::test]
async fn certificate_is_reloaded_when_its_files_change() {
    let (old, new) = (pair("herald old"), pair("herald new"));
    let files = Files::new(&old);
    let server = TestServer::start(&files.toml("")).await;
    let mut client = WssClient::connect(server.addr, trusting(&old.der)).await;
    client.subscribe("news").await;
    assert!(
        tls_connect(server.addr, trusting(&new.der)).await.is_err(),
        "the new certificate is trusted before it is installed"
    );

    files.replace(&new);
    let deadline = Instant::now() + WAIT;
    let reloaded = loop {
        match tls_connect(server.addr, trusting(&new.der)).await {
            Ok(stream) => break stream,
            Err(error) => assert!(
                Instant::now() < deadline,
                "the new certificate was not served within {WAIT:?}: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    WssClient::connect_over(server.addr, reloaded).await;
    assert!(
        tls_connect(server.addr, trusting(&old.der)).await.is_err(),
        "the old certificate is still served after the reload"
    );

    https_publish(server.addr, trusting(&new.der), "news", json!({"n": 1})).await;
    let push = client.next_push().await;
    assert_eq!(publication(&push, "news")["data"], json!({"n": 1}));
    let reply = client
        .command("presence_stats", json!({"channel": "news"}))
        .await;
    assert!(reply.get("error").is_none(), "{reply}");
}

/// A client that opens TCP and never starts the handshake holds nothing up: with `handshake_timeout =
/// "300ms"`, TLS clients connect while such sockets are open, and the server closes the silent sockets
/// once the deadline passes (not before).
#[tokio::test]
async fn silent_handshakes_time_out_without_blocking_others() {
    let cert = pair("herald test");
    let files = Files::new(&cert);
    let server = TestServer::start(&files.toml("handshake_timeout = \"300ms\"\n")).await;

    let opened = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(server.addr).await.expect("tcp"));
    }
    let mut client = WssClient::connect(server.addr, trusting(&cert.der)).await;
    client.subscribe("news").await;

    for socket in &mut silent {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(WAIT, socket.read(&mut buf))
            .await
            .expect("the server closes a silent socket in time");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "a silent socket got data: {read:?}"
        );
    }
    let elapsed = opened.elapsed();
    assert!(
        elapsed >= Duration::from_millis(290),
        "silent sockets were closed before the handshake deadline ({elapsed:?})"
    );

    WssClient::connect(server.addr, trusting(&cert.der)).await;
}

/// A TOML config with anonymous clients and `tls` (a `[tls]` section).
fn config_with(tls: &str) -> Result<Config, String> {
    Config::from_toml(&format!("[client]\nallow_anonymous = true\n{tls}"))
        .map_err(|e| e.to_string())
}

/// Bad TLS settings are refused at start-up with an error naming the key: a missing certificate file
/// (`tls.cert_file`), a missing key file or a key of another certificate (`tls.key_file`), only one of
/// the two files set (`tls`), a zero handshake timeout (`tls.handshake_timeout`). A good pair is accepted.
#[test]
fn start_up_errors_name_the_key() {
    let (a, b) = (pair("herald a"), pair("herald b"));
    let files = Files::new(&a);
    let other = Files::new(&b);
    let missing = files.dir.path().join("missing.pem");

    let config = config_with(&files.toml("")).expect("a matching pair is accepted");
    assert!(config.tls.enabled());

    let cases = [
        (
            tls_toml(Some(&missing), Some(&files.key), ""),
            "tls.cert_file",
        ),
        (
            tls_toml(Some(&files.cert), Some(&missing), ""),
            "tls.key_file",
        ),
        (
            tls_toml(Some(&files.cert), Some(&other.key), ""),
            "tls.key_file",
        ),
        (tls_toml(Some(&files.cert), None, ""), "tls"),
        (tls_toml(None, Some(&files.key), ""), "tls"),
        (
            files.toml("handshake_timeout = \"0s\"\n"),
            "tls.handshake_timeout",
        ),
    ];
    for (tls, key) in cases {
        let error = config_with(&tls).expect_err(&format!("accepted: {tls}"));
        assert!(error.contains(key), "{tls}\n→ {error}");
    }
    let error = config_with(&tls_toml(Some(&missing), Some(&files.key), "")).unwrap_err();
    assert!(error.contains("missing.pem"), "names the file: {error}");
}
