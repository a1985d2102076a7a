//! WebSocket transport on `/connection/websocket` (axum's upgrade over tokio-tungstenite).
//!
//! One task per connection runs the session over the read half; a writer task drains the outbound queue
//! and ends with the close frame the session decided. Everything queued at once is joined into text
//! messages of up to `write_buffer_size` bytes (the JSON protocol allows newline-separated messages in one
//! frame), each written with one socket write; a frame that goes out alone is handed over as is, shared
//! with the other subscribers, without a copy. Buffers are sized for many connections.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{Sink, SinkExt, StreamExt};
use serde::Deserialize;
use tokio_tungstenite::tungstenite;

use crate::disconnect::Disconnect;
use crate::limits::Slot;
use crate::node::Node;
use crate::outbound::{Batch, Outbound, Outgoing};
use crate::protocol::Protocol;
use crate::session::pusher::{self, PusherSession};
use crate::session::{ConnectionInfo, Incoming, Session};

/// Query parameters the Centrifugo SDKs and tools may send.
#[derive(Debug, Deserialize)]
pub struct WebsocketQuery {
    /// `true` switches the heartbeat to WebSocket ping frames.
    #[serde(default)]
    cf_ws_frame_ping_pong: Option<String>,
}

/// The axum handler for `/connection/websocket`.
pub async fn websocket_handler(
    State(node): State<Arc<Node>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Query(query): Query<WebsocketQuery>,
    RawQuery(raw_query): RawQuery,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let (remote, slot) = match admit(&node, remote, &headers) {
        Ok(admitted) => admitted,
        Err(refused) => return refused.into_response(),
    };
    let transport_ping = query.cf_ws_frame_ping_pong.as_deref() == Some("true");
    let connection = connection_info(remote, transport_ping, &headers, raw_query.as_deref());
    with_limits(upgrade, &node)
        .protocols(["centrifuge-json"])
        .on_failed_upgrade(
            move |error| tracing::debug!(%remote, %error, "websocket upgrade failed"),
        )
        .on_upgrade(move |socket| serve(node, socket, Speaker::Centrifuge(connection), slot))
}

/// The checks every WebSocket upgrade passes first: the client's address (through trusted proxies), its
/// origin, and its admission under the connection limits. The refusal is the HTTP status and reason to give.
pub(super) fn admit(
    node: &Node,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<(SocketAddr, Slot), (StatusCode, String)> {
    let ws = &node.config.websocket;
    let forwarded_for = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    let remote = node.admission.client_address(peer, forwarded_for);
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
    }
}

/// Who speaks on an upgraded connection.
pub(super) enum Speaker {
    /// A Centrifugo protocol client.
    Centrifuge(ConnectionInfo),
    /// A Pusher protocol client.
    Pusher(ConnectionInfo),
    /// A Pusher client refused at the handshake (unknown key, protocol version): pusher-js reads the
    /// reason from a `pusher:error` first, then the close.
    PusherRefused(Disconnect),
}

impl Speaker {
    fn protocol(&self) -> Protocol {
        match self {
            Self::Centrifuge(_) => Protocol::Centrifuge,
            Self::Pusher(_) | Self::PusherRefused(_) => Protocol::Pusher,
        }
    }
}

/// Applies the configured buffer sizes and message limits; every WebSocket endpoint goes through this.
pub(super) fn with_limits(upgrade: WebSocketUpgrade, node: &Node) -> WebSocketUpgrade {
    let ws = &node.config.websocket;
    // Writers join frames themselves (`write_buffer_size`), so the library writes each message at once
    // and its buffer holds one message: no more than the outbound queue's budget, plus framing.
    let max_write_buffer = node.config.client.max_queue_bytes + ws.max_message_size + 1024;
    upgrade
        .read_buffer_size(ws.read_buffer_size)
        .write_buffer_size(0)
        .max_write_buffer_size(max_write_buffer.max(ws.write_buffer_size + 1024))
        .max_message_size(ws.max_message_size)
        .max_frame_size(ws.max_message_size)
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

/// Serves one upgraded connection (every WebSocket endpoint, plain or TLS): the session reads, a writer task
/// writes, and the connection is closed gracefully. Once the session has decided the close, it gets nothing
/// more to read, but the reading goes on, dropping what arrives, until the client answers the close frame
/// (or leaves): dropping a socket whose client data is still unread makes the kernel reset the connection,
/// which fails the client's sends and discards the close frame still on its way, so a client that was
/// flooding would see 1006 instead of its close code. Once the client's close frame is in, the socket is
/// dropped with nothing unread: a plain FIN. The reading stops after [`CLOSING_READ_BUDGET`] bytes, and at
/// most [`CLOSING_LINGER`] after the writer is done (the writer itself is bounded by the write timeout).
pub(super) async fn serve(node: Arc<Node>, socket: WebSocket, speaker: Speaker, _slot: Slot) {
    let _running = node.sessions.token();
    let outbound = Arc::new(Outbound::new(node.config.client.max_queue_bytes));
    let (sink, mut stream) = socket.split();
    let protocol = speaker.protocol();
    let writer = tokio::spawn(write_loop(
        sink,
        outbound.clone(),
        protocol,
        node.config.websocket.write_timeout,
        node.config.websocket.write_buffer_size,
    ));
    // Borrows the read half, which outlives the session for the closing handshake.
    let incoming = futures_util::stream::unfold(Some(&mut stream), |stream| async move {
        let stream = stream?;
        loop {
            let item = match stream.next().await? {
                Ok(Message::Text(text)) => Incoming::Text(Bytes::from(text)),
                Ok(Message::Binary(_)) => Incoming::Binary,
                Ok(Message::Pong(_)) => Incoming::Pong,
                // The library answers pings itself.
                Ok(Message::Ping(_)) => continue,
                Ok(Message::Close(_)) => return None,
                // Nothing can be read after an error; the session closes with the translated code.
                Err(error) => return read_error(&error).map(|item| (item, None)),
            };
            return Some((item, Some(stream)));
        }
    });
    match speaker {
        Speaker::Centrifuge(connection) => {
            Session::new(node, outbound.clone(), connection)
                .run(incoming)
                .await;
        }
        Speaker::Pusher(connection) => {
            PusherSession::new(node, outbound.clone(), connection)
                .run(incoming)
                .await;
        }
        Speaker::PusherRefused(disconnect) => {
            outbound.push(pusher::refusal(&disconnect));
            outbound.close(disconnect);
        }
    }
    // Ends the writer when the client went away on its own (no close frame is owed then).
    outbound.close(Disconnect::CONNECTION_CLOSED);
    let writer = async { writer.await.unwrap_or(false) };
    close_gracefully(writer, &mut stream, CLOSING_LINGER, CLOSING_READ_BUDGET).await;
}

/// Lets the `writer` finish (it ends after the close frame, true when it wrote one; a client that never
/// reads is cut off by the write timeout) while reading and dropping what the client still sends, up to
/// `budget` bytes, until its close frame — for at most `linger` after the writer is done, and not at all
/// once the writer is done without a close frame (a client that stopped reading will not answer).
async fn close_gracefully<W, S>(writer: W, stream: &mut S, linger: Duration, budget: usize)
where
    W: Future<Output = bool>,
    S: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let mut writer = std::pin::pin!(writer);
    let mut reading = std::pin::pin!(read_until_closed(stream, budget));
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

/// Reads and drops messages until the client's close frame, the end of the stream or a read error (the
/// library ends the stream after one), or until `budget` bytes were read. The library answers pings and
/// a close the client starts itself; the client's close that answers ours completes the handshake, after
/// which the socket can be dropped with nothing unread.
async fn read_until_closed<S>(stream: &mut S, mut budget: usize)
where
    S: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    while let Some(Ok(message)) = stream.next().await {
        let size = match &message {
            Message::Text(text) => text.len(),
            Message::Binary(bytes) | Message::Ping(bytes) | Message::Pong(bytes) => bytes.len(),
            Message::Close(_) => return,
        };
        match budget.checked_sub(size + CLIENT_FRAME_OVERHEAD) {
            Some(left) => budget = left,
            None => return,
        }
    }
}

/// Whether a WebSocket upgrade may proceed, against cross-site WebSocket hijacking: no `Origin` (not a
/// browser), an origin whose host is the request's `Host`, or one matching an allowed pattern.
fn origin_allowed(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> bool {
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

/// The read errors a client caused and must hear about; any other error just ends the connection.
pub(super) fn read_error(error: &axum::Error) -> Option<Incoming> {
    match std::error::Error::source(error).and_then(|e| e.downcast_ref::<tungstenite::Error>()) {
        Some(tungstenite::Error::Capacity(_)) => Some(Incoming::TooLarge),
        Some(tungstenite::Error::Utf8(_)) => Some(Incoming::InvalidUtf8),
        _ => None,
    }
}

/// Writes what the session queues until the close it decided (or a write failure). The protocol's
/// [`Wire`](crate::protocol::Wire) says whether frames may be joined into one message and which close code
/// its clients see. True when it ended with a close frame, which the client is to answer.
async fn write_loop<S>(
    mut sink: S,
    outbound: Arc<Outbound>,
    protocol: Protocol,
    write_timeout: Duration,
    join_up_to: usize,
) -> bool
where
    S: Sink<Message> + Unpin,
{
    let wire = protocol.wire();
    let join_up_to = if wire.joins_frames() { join_up_to } else { 0 };
    let mut batch = Batch::default();
    loop {
        outbound.next_batch_into(&mut batch).await;
        if !batch.items.is_empty() {
            // Usually the socket takes the whole batch at once: only a write that has to wait is timed,
            // which spares a timer per connection per publication during fan-out.
            let mut write = std::pin::pin!(write_batch(&mut sink, &mut batch.items, join_up_to));
            let written =
                match std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
                    Poll::Ready(result) => result.is_ok(),
                    Poll::Pending => {
                        matches!(tokio::time::timeout(write_timeout, write).await, Ok(Ok(())))
                    }
                };
            if !written {
                outbound.close(Disconnect::WRITE_ERROR);
                return false;
            }
        }
        if let Some(close) = batch.close.take() {
            let mut sent = false;
            if close != Disconnect::CONNECTION_CLOSED {
                let close = wire.close(close);
                let frame = CloseFrame {
                    code: close.code,
                    reason: Utf8Bytes::from(close.reason.as_ref()),
                };
                sent = send(&mut sink, Message::Close(Some(frame)), write_timeout).await;
            }
            let _ = tokio::time::timeout(write_timeout, sink.close()).await;
            return sent;
        }
    }
}

/// Writes a batch: each run of frames is joined, newline-separated, into messages of up to `join_up_to`
/// bytes, each one socket write. Joining copies the frames once (the WebSocket library copies each message
/// into its write buffer anyway), and concatenated UTF-8 needs no new check; a frame alone is not copied.
async fn write_batch<S>(
    sink: &mut S,
    items: &mut VecDeque<Outgoing>,
    join_up_to: usize,
) -> Result<(), S::Error>
where
    S: Sink<Message> + Unpin,
{
    let mut start = 0;
    while let Some(item) = items.get(start) {
        let Outgoing::Frame(first) = item else {
            sink.feed(Message::Ping(Bytes::new())).await?;
            start += 1;
            continue;
        };
        let (mut end, mut len) = (start + 1, first.len());
        while let Some(Outgoing::Frame(next)) = items.get(end) {
            if len + 1 + next.len() > join_up_to {
                break;
            }
            len += 1 + next.len();
            end += 1;
        }
        let text = if end == start + 1 {
            first.clone().into_text()
        } else {
            let mut joined = String::with_capacity(len);
            for item in items.range(start..end) {
                if let Outgoing::Frame(frame) = item {
                    if !joined.is_empty() {
                        joined.push('\n');
                    }
                    joined.push_str(frame.as_str());
                }
            }
            Utf8Bytes::from(joined)
        };
        sink.feed(Message::Text(text)).await?;
        start = end;
    }
    items.clear();
    sink.flush().await
}

async fn send<S: Sink<Message> + Unpin>(sink: &mut S, message: Message, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, sink.send(message)).await,
        Ok(Ok(()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Frame;
    use futures_channel::mpsc;

    fn text(len: usize) -> Result<Message, axum::Error> {
        Ok(Message::text("x".repeat(len)))
    }

    /// What is left in a channel that was read from.
    fn left(mut rx: mpsc::UnboundedReceiver<Result<Message, axum::Error>>) -> Vec<Message> {
        let mut left = Vec::new();
        while let Ok(item) = rx.try_recv() {
            left.push(item.expect("no error left"));
        }
        left
    }

    /// A closing connection reads and drops what the client sends until the client's close frame, and no
    /// further.
    #[tokio::test]
    async fn closing_reads_until_the_clients_close() {
        let (tx, mut rx) = mpsc::unbounded();
        for item in [
            text(10),
            Ok(Message::Binary(Bytes::from_static(b"b"))),
            Ok(Message::Ping(Bytes::new())),
            Ok(Message::Close(None)),
            text(1),
        ] {
            tx.unbounded_send(item).unwrap();
        }
        close_gracefully(async { true }, &mut rx, Duration::from_secs(2), 1 << 20).await;
        assert_eq!(left(rx), vec![Message::text("x")]);
    }

    /// Reading stops at a read error (the library's stream ends after one) and at the end of the stream.
    #[tokio::test]
    async fn closing_stops_at_a_read_error() {
        let (tx, mut rx) = mpsc::unbounded();
        tx.unbounded_send(text(1)).unwrap();
        tx.unbounded_send(Err(axum::Error::new("reset"))).unwrap();
        tx.unbounded_send(text(2)).unwrap();
        close_gracefully(async { true }, &mut rx, Duration::from_secs(2), 1 << 20).await;
        assert_eq!(left(rx), vec![Message::text("xx")]);

        let (tx, mut rx) = mpsc::unbounded::<Result<Message, axum::Error>>();
        drop(tx);
        close_gracefully(async { true }, &mut rx, Duration::from_secs(2), 1 << 20).await;
    }

    /// A client that keeps sending after the close is cut off once it used up the budget (each message
    /// counting its framing too).
    #[tokio::test]
    async fn closing_reads_no_more_than_the_budget() {
        let (tx, mut rx) = mpsc::unbounded();
        for _ in 0..10 {
            tx.unbounded_send(text(100)).unwrap();
        }
        // Three messages of 100 + 6 bytes fit in 320; the fourth is read and found over.
        close_gracefully(async { true }, &mut rx, Duration::from_secs(2), 320).await;
        assert_eq!(left(rx).len(), 6);

        let (tx, mut rx) = mpsc::unbounded();
        for _ in 0..100 {
            tx.unbounded_send(text(0)).unwrap();
        }
        close_gracefully(async { true }, &mut rx, Duration::from_secs(2), 60).await;
        assert_eq!(
            left(rx).len(),
            100 - 11,
            "empty messages count their framing"
        );
    }

    /// A client that never answers the close is let go after the linger.
    #[tokio::test]
    async fn a_client_that_never_answers_is_let_go_after_the_linger() {
        let (_tx, mut silent) = mpsc::unbounded::<Result<Message, axum::Error>>();
        let closing = close_gracefully(
            async { true },
            &mut silent,
            Duration::from_millis(50),
            1 << 20,
        );
        tokio::time::timeout(Duration::from_secs(10), closing)
            .await
            .expect("the linger ends the wait");
    }

    /// Without a close frame (the writer gave up on a client that does not read) nothing is awaited.
    #[tokio::test]
    async fn no_close_frame_no_linger() {
        let (_tx, mut silent) = mpsc::unbounded::<Result<Message, axum::Error>>();
        let closing = close_gracefully(
            async { false },
            &mut silent,
            Duration::from_secs(60),
            1 << 20,
        );
        tokio::time::timeout(Duration::from_secs(10), closing)
            .await
            .expect("no wait for an answer to a close that was not sent");
    }

    /// A client that answered the close at once still lets the writer finish first.
    #[tokio::test]
    async fn closing_waits_for_the_writer() {
        let (tx, mut answered) = mpsc::unbounded();
        tx.unbounded_send(Ok(Message::Close(None))).unwrap();
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

    /// Everything queued while the writer was busy goes out as one frame, in order, then the close.
    #[tokio::test]
    async fn queued_frames_are_coalesced_into_one_write() {
        let outbound = Arc::new(Outbound::new(1 << 20));
        for text in ["{\"a\":1}", "{\"b\":2}", "{}"] {
            outbound.push(Frame::new(text.as_bytes().to_vec()));
        }
        outbound.close(Disconnect::SHUTDOWN);
        let (sink, mut written) = mpsc::unbounded::<Message>();
        let closed = write_loop(
            sink,
            outbound,
            Protocol::Centrifuge,
            Duration::from_secs(5),
            1024,
        )
        .await;
        assert!(closed, "ended with a close frame");
        assert_eq!(
            written.next().await,
            Some(Message::text("{\"a\":1}\n{\"b\":2}\n{}"))
        );
        match written.next().await {
            Some(Message::Close(Some(frame))) => {
                assert_eq!(frame.code, 3001);
                assert_eq!(frame.reason.as_str(), "shutdown");
            }
            other => panic!("expected close, got {other:?}"),
        }
    }

    /// A client that went away gets no close frame.
    #[tokio::test]
    async fn no_close_frame_for_a_client_that_left() {
        let outbound = Arc::new(Outbound::new(1 << 20));
        outbound.close(Disconnect::CONNECTION_CLOSED);
        let (sink, mut written) = mpsc::unbounded::<Message>();
        let closed = write_loop(
            sink,
            outbound,
            Protocol::Centrifuge,
            Duration::from_secs(5),
            1024,
        )
        .await;
        assert!(!closed);
        assert_eq!(written.next().await, None);
    }

    /// Joined messages stay within the limit, a frame over it goes alone, and a transport ping keeps its
    /// place between the frames.
    #[tokio::test]
    async fn joined_messages_respect_the_limit_and_pings_keep_their_place() {
        let outbound = Arc::new(Outbound::new(1 << 20));
        let push = |text: &str| assert!(outbound.push(Frame::new(text.as_bytes().to_vec())));
        push("aaaa");
        push("bbbb");
        push("cccc");
        push("a frame longer than ten bytes");
        outbound.push_transport_ping();
        push("dd");
        outbound.close(Disconnect::CONNECTION_CLOSED);
        let (sink, mut written) = mpsc::unbounded::<Message>();
        write_loop(
            sink,
            outbound.clone(),
            Protocol::Centrifuge,
            Duration::from_secs(5),
            10,
        )
        .await;
        let expected = [
            Message::text("aaaa\nbbbb"),
            Message::text("cccc"),
            Message::text("a frame longer than ten bytes"),
            Message::Ping(Bytes::new()),
            Message::text("dd"),
        ];
        for message in expected {
            assert_eq!(written.next().await, Some(message));
        }
        assert_eq!(written.next().await, None);
    }
}
