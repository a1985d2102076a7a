//! WebSocket transport on `/connection/websocket`, and what every WebSocket endpoint shares.
//!
//! A connection is one task: the session reads through [`Reader`] while [`writer::write_loop`] writes what
//! the fan-out could not write straight into the socket, and the connection ends with the close handshake.
//! The upgrade ([`upgrade`]) hands over the socket itself, so nothing is buffered or boxed for an idle
//! connection beyond its session.

mod deflate;
mod reader;
mod upgrade;
mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::disconnect::Disconnect;
use crate::limits::Slot;
use crate::node::Node;
use crate::outbound::Outbound;
use crate::protocol::Protocol;
use crate::protocol::centrifuge::{Centrifuge, CentrifugeProtobuf, Codec};
use crate::session::{ConnectionInfo, Incoming, Session};

pub(super) use reader::{Event, ReadLimits, Reader};
pub(super) use upgrade::Upgraded;
pub use upgrade::{NotAnUpgrade, Upgrade};
use writer::Egress;

/// Query parameters the Centrifugo SDKs and tools may send.
#[derive(Debug, Deserialize)]
pub struct WebsocketQuery {
    /// `true` switches the heartbeat to WebSocket ping frames.
    #[serde(default)]
    cf_ws_frame_ping_pong: Option<String>,
}

/// The subprotocol a Protobuf client offers (centrifuge-js and centrifuge-python in Protobuf mode).
const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";

/// The axum handler for `/connection/websocket`.
pub async fn websocket_handler(
    State(node): State<Arc<Node>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Query(query): Query<WebsocketQuery>,
    RawQuery(raw_query): RawQuery,
    headers: HeaderMap,
    upgrade: Upgrade,
) -> Response {
    let (remote, slot) = match admit(&node, remote, &headers) {
        Ok(admitted) => admitted,
        Err(refused) => return refused.into_response(),
    };
    let transport_ping = query.cf_ws_frame_ping_pong.as_deref() == Some("true");
    // Boxed until the session takes it: the closures between here and the session each keep their own
    // copy of what they capture for as long as the connection lives.
    let connection = Box::new(connection_info(
        remote,
        transport_ping,
        &headers,
        raw_query.as_deref(),
    ));
    let (codec, subprotocols): (&'static dyn Codec, _) = if upgrade.offers(PROTOBUF_SUBPROTOCOL)
        || super::query_asks_protobuf(raw_query.as_deref())
    {
        (&CentrifugeProtobuf, [PROTOBUF_SUBPROTOCOL])
    } else {
        (&Centrifuge, ["centrifuge-json"])
    };
    let compression = node.config.websocket.compression.clone();
    upgrade.accept(&subprotocols, &compression, move |upgraded| {
        serve_centrifuge(node, upgraded, slot, connection, codec)
    })
}

/// Serves an upgraded connection with a Centrifugo protocol session in `codec`'s encoding.
fn serve_centrifuge(
    node: Arc<Node>,
    upgraded: Upgraded,
    slot: Slot,
    connection: Box<ConnectionInfo>,
    codec: &'static dyn Codec,
) -> impl Future<Output = ()> {
    serve(
        node,
        upgraded,
        slot,
        codec.protocol(),
        async move |node, outbound, messages| {
            Session::new(node, outbound, unbox(connection), codec)
                .run(messages)
                .await;
        },
    )
}

/// Takes a value out of its box and frees the box at once: `*boxed` in an async body leaves the emptied
/// box allocated until the body ends, which for a session is the connection's life.
#[expect(
    clippy::boxed_local,
    reason = "taking the box is the point: it is freed here"
)]
pub(super) fn unbox<T>(boxed: Box<T>) -> T {
    *boxed
}

/// This transport's name in metrics' `transport` label.
const TRANSPORT: &str = "websocket";

/// The checks every WebSocket upgrade passes first: the client's address (through trusted proxies), its
/// origin, and its admission under the connection limits. The refusal is the HTTP status and reason to give.
pub(super) fn admit(
    node: &Node,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<(SocketAddr, Slot), (StatusCode, String)> {
    let ws = &node.config.websocket;
    let remote = node.admission.request_client_address(peer, headers);
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if !origin_allowed(origin, host, &ws.allowed_origins) {
        tracing::info!(%remote, origin, "websocket upgrade refused: origin not allowed");
        return Err((StatusCode::FORBIDDEN, "origin not allowed".into()));
    }
    match node.admission.admit(remote.ip()) {
        Ok(slot) => Ok((remote, slot)),
        Err(refused) => {
            tracing::info!(%remote, reason = %refused, "websocket upgrade refused");
            node.metrics.limit_refused(refused.limit());
            Err((StatusCode::SERVICE_UNAVAILABLE, refused.to_string()))
        }
    }
}

/// What connect plugins see of an upgrade request.
pub(super) fn connection_info(
    remote: SocketAddr,
    transport_ping: bool,
    headers: &HeaderMap,
    raw_query: Option<&str>,
) -> ConnectionInfo {
    ConnectionInfo {
        remote,
        transport_ping,
        transport: TRANSPORT,
        headers: headers
            .iter()
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect(),
        query: raw_query
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default(),
        emulation: None,
    }
}

/// How long a closing connection keeps reading after its close frame went out, waiting for the client's
/// answer: long enough for a client that was busy sending to read the frame and answer, short enough that
/// a client that never answers does not hold the connection (nor a shutdown) for long.
const CLOSING_LINGER: Duration = Duration::from_secs(2);

/// Most bytes a closing connection reads and drops while it waits for the client's close frame: what a
/// flooding client may still have in flight (its socket buffers and the server's) when the close goes out.
/// A client that sends more than this after the close is cut off at once.
const CLOSING_READ_BUDGET: usize = 16 << 20;

/// WebSocket framing a client adds to every message: at least a 2-byte header and a 4-byte mask, so a flood
/// of empty messages uses up [`CLOSING_READ_BUDGET`] too.
const CLIENT_FRAME_OVERHEAD: usize = 6;

/// A connection's halves: the sending side, the queue in front of it and the reader.
pub(super) struct Link {
    pub(super) egress: Arc<Egress>,
    pub(super) outbound: Arc<Outbound>,
    pub(super) reader: Reader,
}

impl Link {
    /// Sets up an upgraded connection: plain sockets take frames directly from the fan-out; TLS ones go
    /// through the writer (rustls's state is not to be touched from every publishing task).
    pub(super) fn new(node: &Node, upgraded: Upgraded) -> Self {
        Self::with_queue(node, upgraded, node.config.client.max_queue_bytes)
    }

    /// Like [`Link::new`], with an outbound queue of `max_queue` bytes.
    pub(super) fn with_queue(node: &Node, upgraded: Upgraded, max_queue: usize) -> Self {
        let Upgraded {
            socket,
            read_ahead,
            deflate,
        } = upgraded;
        let socket = Arc::new(socket);
        let egress = Arc::new(Egress::new(socket.clone(), deflate));
        let outbound = Arc::new(if socket.is_tls() {
            Outbound::new(max_queue)
        } else if egress.inflates() {
            // Compression was negotiated: frames may have to be compressed on their way.
            Outbound::transmitting(max_queue, egress.clone())
        } else {
            Outbound::transmitting(max_queue, socket.clone())
        });
        let ws = &node.config.websocket;
        let limits = ReadLimits {
            max_message: ws.max_message_size,
            read_size: ws.read_buffer_size,
            inflate: egress.inflates(),
        };
        let reader = Reader::new(socket, outbound.clone(), read_ahead, limits);
        Self {
            egress,
            outbound,
            reader,
        }
    }

    /// Runs the connection: `session` (which reads through the link's reader, borrowed) beside the
    /// writer; once the session is over, the close handshake. Once the session has decided the close, it
    /// gets nothing more to read, but the reading goes on, dropping what arrives, until the client answers
    /// the close frame (or leaves): dropping a socket whose client data is still unread makes the kernel
    /// reset the connection, which fails the client's sends and discards the close frame still on its way,
    /// so a client that was flooding would see 1006 instead of its close code. Once the client's close frame
    /// is in, the socket is dropped with nothing unread: a plain FIN. The reading stops after
    /// [`CLOSING_READ_BUDGET`] bytes, and at most [`CLOSING_LINGER`] after the writer is done (the writer
    /// itself is bounded by the write timeout).
    ///
    /// The link is moved into the returned future and used in place, and `held` (the connection's slot
    /// and shutdown token) is dropped when it ends: an idle connection's memory is mostly this future, so
    /// nothing in it is kept twice.
    pub(super) fn run<S, H>(
        self,
        node: Arc<Node>,
        protocol: Protocol,
        held: H,
        session: S,
    ) -> impl Future<Output = ()>
    where
        S: AsyncFnOnce(Arc<Node>, &mut Reader),
    {
        // An async block rather than an `async fn`: an async fn's arguments are moved into locals of
        // its future, which would then hold the link (and the rest) twice.
        let mut link = self;
        async move {
            let ws = &node.config.websocket;
            let writer = writer::write_loop(
                &link.egress,
                &link.outbound,
                protocol.wire(),
                ws.write_timeout,
                ws.write_buffer_size,
            );
            let mut writer = std::pin::pin!(writer);
            let mut written = None;
            {
                let mut session = std::pin::pin!(session(node.clone(), &mut link.reader));
                loop {
                    tokio::select! {
                        () = &mut session => break,
                        sent = &mut writer, if written.is_none() => written = Some(sent),
                    }
                }
            }
            // Ends the writer when the client went away on its own (no close frame is owed then).
            link.outbound.close(Disconnect::CONNECTION_CLOSED);
            let writer = async {
                match written {
                    Some(sent) => sent,
                    None => writer.await,
                }
            };
            close_gracefully(
                writer,
                &mut link.reader,
                CLOSING_LINGER,
                CLOSING_READ_BUDGET,
            )
            .await;
            drop(held);
        }
    }
}

/// Serves one upgraded connection with the `session` of a `protocol` (every session endpoint, plain or
/// TLS): the session gets the node, the connection's outbound queue and its messages. Not an `async fn`,
/// whose arguments would stay in the future beside the link they were moved into.
pub(super) fn serve<S>(
    node: Arc<Node>,
    upgraded: Upgraded,
    slot: Slot,
    protocol: Protocol,
    session: S,
) -> impl Future<Output = ()>
where
    S: for<'a> AsyncFnOnce(Arc<Node>, Arc<Outbound>, Messages<'a>),
{
    let running = node.sessions.token();
    let kind = node.metrics.connection_kind(protocol.label(), TRANSPORT);
    let upgraded = Upgraded {
        socket: upgraded.socket.counted(kind),
        ..upgraded
    };
    let link = Link::new(&node, upgraded);
    let outbound = link.outbound.clone();
    link.run(
        node,
        protocol,
        (slot, running),
        async move |node, reader| {
            session(node, outbound, Messages(Some(reader))).await;
        },
    )
}

/// What a session reads: its messages, until the client's close, the end of the stream or a violation
/// (after which nothing can be read; a message over the limit or invalid UTF-8 is the session's to answer
/// with its close code, other protocol errors just end the connection).
pub(super) struct Messages<'a>(Option<&'a mut Reader>);

impl futures_util::Stream for Messages<'_> {
    type Item = Incoming;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Incoming>> {
        use std::task::Poll;
        let Some(reader) = self.0.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            let item = match std::task::ready!(reader.poll_next(cx)) {
                Some(Event::Text(text)) => Some(Incoming::Text(text)),
                Some(Event::Binary(bytes)) => Some(Incoming::Binary(bytes)),
                Some(Event::Pong(_)) => Some(Incoming::Pong),
                // The reader answered it.
                Some(Event::Ping(_)) => continue,
                Some(Event::Close(_)) | None => None,
                // Nothing can be read after a violation.
                Some(Event::Violation(violation)) => {
                    self.0 = None;
                    match violation.code {
                        1009 => Some(Incoming::TooLarge),
                        1007 => Some(Incoming::InvalidUtf8),
                        _ => None,
                    }
                }
            };
            if item.is_none() {
                self.0 = None;
            }
            return Poll::Ready(item);
        }
    }
}

/// Lets the `writer` finish (it ends after the close frame, true when it wrote one; a client that never
/// reads is cut off by the write timeout) while reading and dropping what the client still sends, up to
/// `budget` bytes, until its close frame — for at most `linger` after the writer is done, and not at all
/// once the writer is done without a close frame (a client that stopped reading will not answer).
async fn close_gracefully<W, R>(writer: W, reader: &mut R, linger: Duration, budget: usize)
where
    W: Future<Output = bool>,
    R: ReadEvents,
{
    let mut writer = std::pin::pin!(writer);
    let mut reading = std::pin::pin!(read_until_closed(reader, budget));
    tokio::select! {
        closed = &mut writer => {
            if closed {
                let _ = tokio::time::timeout(linger, reading).await;
            }
        }
        () = &mut reading => {
            writer.await;
        }
    }
}

/// Something events are read from: the connection's [`Reader`], or a scripted source in tests.
trait ReadEvents {
    /// The next event; `None` at the end.
    fn next_event(&mut self) -> impl Future<Output = Option<Event>>;
}

impl ReadEvents for Reader {
    fn next_event(&mut self) -> impl Future<Output = Option<Event>> {
        self.next()
    }
}

/// Reads and drops messages until the client's close frame, the end of the stream or a violation, or
/// until `budget` bytes were read. The reader answers pings and a close the client starts itself; the
/// client's close that answers ours completes the handshake, after which the socket can be dropped with
/// nothing unread.
async fn read_until_closed<R: ReadEvents>(reader: &mut R, mut budget: usize) {
    while let Some(event) = reader.next_event().await {
        if matches!(event, Event::Close(_) | Event::Violation(_)) {
            return;
        }
        match budget.checked_sub(event.size() + CLIENT_FRAME_OVERHEAD) {
            Some(left) => budget = left,
            None => return,
        }
    }
}

/// Whether a WebSocket upgrade may proceed, against cross-site WebSocket hijacking: no `Origin` (not a
/// browser), an origin whose host is the request's `Host`, or one matching an allowed pattern.
pub(super) fn origin_allowed(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else { return true };
    let origin = origin.to_ascii_lowercase();
    if allowed
        .iter()
        .any(|pattern| crate::glob::matches(&pattern.to_ascii_lowercase(), &origin))
    {
        return true;
    }
    let origin_host = origin
        .split_once("://")
        .map_or(origin.as_str(), |(_, host)| host);
    host.is_some_and(|host| host.eq_ignore_ascii_case(origin_host))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::socket::Socket;
    use bytes::Bytes;
    use reader::PROTOCOL_ERROR;
    use std::collections::VecDeque;

    /// Events a test scripts; the end of the script is the end of the stream, or a silence when it is
    /// `silent`.
    struct Script {
        events: VecDeque<Event>,
        silent: bool,
    }

    impl Script {
        fn new(events: impl IntoIterator<Item = Event>) -> Self {
            Self {
                events: events.into_iter().collect(),
                silent: false,
            }
        }

        fn silent() -> Self {
            Self {
                events: VecDeque::new(),
                silent: true,
            }
        }
    }

    impl ReadEvents for Script {
        async fn next_event(&mut self) -> Option<Event> {
            match self.events.pop_front() {
                Some(event) => Some(event),
                None if self.silent => std::future::pending().await,
                None => None,
            }
        }
    }

    fn text(len: usize) -> Event {
        Event::Text(Bytes::from("x".repeat(len)))
    }

    /// A closing connection reads and drops what the client sends until the client's close frame, and no
    /// further.
    #[tokio::test]
    async fn closing_reads_until_the_clients_close() {
        let mut script = Script::new([
            text(10),
            Event::Binary(Bytes::from_static(b"b")),
            Event::Ping(Bytes::new()),
            Event::Close(Bytes::new()),
            text(1),
        ]);
        close_gracefully(async { true }, &mut script, Duration::from_secs(2), 1 << 20).await;
        assert_eq!(Vec::from(script.events), vec![text(1)]);
    }

    /// Reading stops at a violation (nothing can be read after one) and at the end of the stream.
    #[tokio::test]
    async fn closing_stops_at_a_violation() {
        let mut script = Script::new([text(1), Event::Violation(PROTOCOL_ERROR), text(2)]);
        close_gracefully(async { true }, &mut script, Duration::from_secs(2), 1 << 20).await;
        assert_eq!(Vec::from(script.events), vec![text(2)]);

        let mut ended = Script::new([]);
        close_gracefully(async { true }, &mut ended, Duration::from_secs(2), 1 << 20).await;
    }

    /// A client that keeps sending after the close is cut off once it used up the budget (each message
    /// counting its framing too).
    #[tokio::test]
    async fn closing_reads_no_more_than_the_budget() {
        let mut script = Script::new((0..10).map(|_| text(100)));
        // Three messages of 100 + 6 bytes fit in 320; the fourth is read and found over.
        close_gracefully(async { true }, &mut script, Duration::from_secs(2), 320).await;
        assert_eq!(script.events.len(), 6);

        let mut script = Script::new((0..100).map(|_| text(0)));
        close_gracefully(async { true }, &mut script, Duration::from_secs(2), 60).await;
        assert_eq!(
            script.events.len(),
            100 - 11,
            "empty messages count their framing"
        );
    }

    /// Closes towards a client that never answers: the writer's result is `close_sent`, the linger
    /// `linger`; panics with `why` unless the close ends within ten seconds.
    async fn close_to_a_silent_client(close_sent: bool, linger: Duration, why: &str) {
        let mut silent = Script::silent();
        let closing = close_gracefully(async move { close_sent }, &mut silent, linger, 1 << 20);
        tokio::time::timeout(Duration::from_secs(10), closing)
            .await
            .expect(why);
    }

    /// A client that never answers the close is let go after the linger.
    #[tokio::test]
    async fn a_client_that_never_answers_is_let_go_after_the_linger() {
        close_to_a_silent_client(true, Duration::from_millis(50), "the linger ends the wait").await;
    }

    /// Without a close frame (the writer gave up on a client that does not read) nothing is awaited.
    #[tokio::test]
    async fn no_close_frame_no_linger() {
        let why = "no wait for an answer to a close that was not sent";
        close_to_a_silent_client(false, Duration::from_secs(60), why).await;
    }

    /// A client that answered the close at once still lets the writer finish first.
    #[tokio::test]
    async fn closing_waits_for_the_writer() {
        let mut answered = Script::new([Event::Close(Bytes::new())]);
        let (written, writer) = tokio::sync::oneshot::channel::<()>();
        let mut closing = std::pin::pin!(close_gracefully(
            async { writer.await.is_ok() },
            &mut answered,
            Duration::from_secs(60),
            1 << 20
        ));
        assert!(futures_util::poll!(closing.as_mut()).is_pending());
        written.send(()).unwrap();
        closing.await;
    }

    #[test]
    fn origins() {
        let allowed = vec!["https://*.example.com".to_string()];
        assert!(
            origin_allowed(None, Some("h:1"), &[]),
            "non-browser clients send no origin"
        );
        assert!(
            origin_allowed(Some("http://h:1"), Some("h:1"), &[]),
            "same host"
        );
        assert!(origin_allowed(Some("HTTP://H:1"), Some("h:1"), &[]));
        assert!(
            !origin_allowed(Some("http://h:2"), Some("h:1"), &[]),
            "another port is another origin"
        );
        assert!(!origin_allowed(Some("https://evil.test"), Some("h:1"), &[]));
        assert!(!origin_allowed(Some("null"), Some("h:1"), &[]));
        assert!(origin_allowed(
            Some("https://app.example.com"),
            Some("h:1"),
            &allowed
        ));
        assert!(!origin_allowed(
            Some("https://example.com.evil.test"),
            Some("h:1"),
            &allowed
        ));
        assert!(origin_allowed(
            Some("https://anything"),
            None,
            &["*".to_string()]
        ));
    }

    /// An idle connection's memory is mostly the future its endpoint serves it with (its task), so that
    /// future must hold nothing twice: no argument kept beside the link it moved into, no capture kept
    /// beside the session future it moved into. The bound catches such a regression (it would add
    /// hundreds of bytes); the size is printed (`--nocapture`) to compare changes.
    #[tokio::test]
    async fn a_connection_future_holds_nothing_twice() {
        let node = Node::new(crate::config::Config::default()).expect("a node");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (_client, (socket, remote)) = (client.unwrap(), accepted.unwrap());
        let slot = node.admission.admit(remote.ip()).expect("admitted");
        let connection = Box::new(connection_info(remote, false, &HeaderMap::new(), None));
        let serving = serve_centrifuge(
            node,
            Upgraded {
                socket: Socket::plain(socket),
                read_ahead: Bytes::new(),
                deflate: None,
            },
            slot,
            connection,
            &Centrifuge,
        );
        let session = std::mem::size_of::<crate::session::Session>();
        let size = std::mem::size_of_val(&serving);
        println!("connection future: {size} bytes (the session alone: {session})");
        assert!(size <= 2 * 1024, "{size}");
    }
}
