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

pub(super) async fn serve(node: Arc<Node>, socket: WebSocket, speaker: Speaker, _slot: Slot) {
    let _running = node.sessions.token();
    let outbound = Arc::new(Outbound::new(node.config.client.max_queue_bytes));
    let (sink, stream) = socket.split();
    let protocol = speaker.protocol();
    let writer = tokio::spawn(write_loop(
        sink,
        outbound.clone(),
        protocol,
        node.config.websocket.write_timeout,
        node.config.websocket.write_buffer_size,
    ));
    let incoming = futures_util::stream::unfold(Some(stream), |stream| async move {
        let mut stream = stream?;
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
    // The writer ends after the close frame; a client that never reads is cut off by the write timeout.
    let _ = writer.await;
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

/// Writes what the session queues until the close it decided (or a write failure). Pusher clients read one
/// message per WebSocket message, so their frames are never joined, and they get the close codes of their
/// protocol.
async fn write_loop<S>(
    mut sink: S,
    outbound: Arc<Outbound>,
    protocol: Protocol,
    write_timeout: Duration,
    join_up_to: usize,
) where
    S: Sink<Message> + Unpin,
{
    let join_up_to = match protocol {
        Protocol::Centrifuge => join_up_to,
        Protocol::Pusher => 0,
    };
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
                return;
            }
        }
        if let Some(close) = batch.close.take() {
            if close != Disconnect::CONNECTION_CLOSED {
                let close = match protocol {
                    Protocol::Centrifuge => close,
                    Protocol::Pusher => close.for_pusher(),
                };
                let frame = CloseFrame {
                    code: close.code,
                    reason: Utf8Bytes::from(close.reason.as_ref()),
                };
                let _ = send(&mut sink, Message::Close(Some(frame)), write_timeout).await;
            }
            let _ = tokio::time::timeout(write_timeout, sink.close()).await;
            return;
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
        write_loop(
            sink,
            outbound,
            Protocol::Centrifuge,
            Duration::from_secs(5),
            1024,
        )
        .await;
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
        write_loop(
            sink,
            outbound,
            Protocol::Centrifuge,
            Duration::from_secs(5),
            1024,
        )
        .await;
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
