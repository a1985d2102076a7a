//! One subscriber connection: open a TCP socket from a chosen loopback source address, upgrade to
//! WebSocket (or open an HTTP stream, see [`crate::stream`]), subscribe in the chosen dialect, then receive
//! until told to stop — recording every stamped delivery, answering heartbeats and sending what the
//! publisher hands it. It never decides what to publish.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use crate::measure::Tally;
use crate::stream::{StreamLink, Transport};
use crate::wire::{self, Handshake, HandshakeState, Protocol};

/// Everything one connection needs to open and subscribe.
#[derive(Debug)]
pub(crate) struct Dial {
    /// Position of the connection in the run (also picks its latency shard).
    pub index: usize,
    /// The dialect.
    pub protocol: Protocol,
    /// The server's socket address.
    pub server: SocketAddr,
    /// The WebSocket URL (channels already substituted).
    pub url: String,
    /// Local address to bind before connecting (spreads connections over 127.0.0.x).
    pub source: IpAddr,
    /// Indexes of the channels to subscribe to.
    pub channel_indexes: Vec<usize>,
    /// Their names.
    pub channel_names: Vec<String>,
    /// Bound on connect + upgrade + subscribe.
    pub timeout: Duration,
    /// WebSocket, or one of the HTTP streams.
    pub transport: Transport,
}

/// An open, subscribed connection.
pub(crate) enum Link {
    WebSocket(Socket),
    Stream(StreamLink),
}

type Socket = WebSocketStream<TcpStream>;

/// Small WebSocket buffers: the library defaults (128 KiB read buffer per connection) would make the tool
/// itself the memory problem at tens of thousands of connections.
fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * 1024 * 1024)
}

/// Opens the connection and completes the handshake; the error text goes into the report.
pub(crate) async fn open(dial: &Dial) -> Result<Link, String> {
    let opening = async {
        match dial.transport {
            Transport::Websocket => open_unbounded(dial).await.map(Link::WebSocket),
            transport => open_stream(dial, transport).await.map(Link::Stream),
        }
    };
    match tokio::time::timeout(dial.timeout, opening).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no subscription within {:?} (connect + upgrade + subscribe)",
            dial.timeout
        )),
    }
}

/// `http://host:port` of the server a WebSocket URL names.
fn http_base(url: &str) -> Result<String, String> {
    let url = url::Url::parse(url).map_err(|e| format!("--url: {e}"))?;
    let scheme = if url.scheme() == "wss" {
        "https"
    } else {
        "http"
    };
    let host = url.host_str().unwrap_or("127.0.0.1");
    let port = url.port_or_known_default().unwrap_or(80);
    Ok(format!("{scheme}://{host}:{port}"))
}

/// Opens an HTTP stream with the connect and subscribe commands and reads until subscribed.
async fn open_stream(dial: &Dial, transport: Transport) -> Result<StreamLink, String> {
    let commands = wire::greeting(dial.protocol, &dial.channel_names)
        .ok_or("HTTP streams speak the Centrifugo protocol")?;
    let base = http_base(&dial.url)?;
    let mut link = StreamLink::open(transport, &base, dial.source, &commands).await?;
    let mut handshake = HandshakeState::new(dial.protocol, dial.channel_names.clone());
    let mut state = handshake.initial();
    let mut replies = Vec::new();
    while state == Handshake::Pending {
        let message = link.next().await?.ok_or("closed during subscribe")?;
        state = handshake.on_frame(&message, &mut replies);
        for reply in replies.drain(..) {
            link.send(&reply).await?;
        }
    }
    match state {
        Handshake::Failed(reason) => Err(reason),
        Handshake::Pending | Handshake::Subscribed => Ok(link),
    }
}

async fn open_unbounded(dial: &Dial) -> Result<Socket, String> {
    let socket = match dial.source {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::new(dial.source, 0))
        .map_err(|e| format!("bind to a port of {}: {e}", dial.source))?;
    let stream = socket
        .connect(dial.server)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("nodelay: {e}"))?;
    let (mut ws, _response) = tokio_tungstenite::client_async_with_config(
        dial.url.as_str(),
        stream,
        Some(websocket_config()),
    )
    .await
    .map_err(|e| format!("websocket upgrade: {e}"))?;
    if let Some(greeting) = wire::greeting(dial.protocol, &dial.channel_names) {
        ws.send(Message::text(greeting))
            .await
            .map_err(|e| format!("send subscribe: {e}"))?;
    }
    let mut handshake = HandshakeState::new(dial.protocol, dial.channel_names.clone());
    let mut state = handshake.initial();
    let mut replies = Vec::new();
    while state == Handshake::Pending {
        let text = match ws.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                return Err(match frame {
                    Some(frame) => {
                        format!("closed during subscribe: {} {}", frame.code, frame.reason)
                    }
                    None => "closed during subscribe".to_string(),
                });
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("read during subscribe: {e}")),
            None => return Err("closed during subscribe".to_string()),
        };
        state = handshake.on_frame(text.as_str(), &mut replies);
        for reply in replies.drain(..) {
            ws.send(Message::text(reply))
                .await
                .map_err(|e| format!("send during subscribe: {e}"))?;
        }
    }
    match state {
        Handshake::Failed(reason) => Err(reason),
        Handshake::Pending | Handshake::Subscribed => Ok(ws),
    }
}

/// Receives until `stop` fires or the server closes; `outgoing` carries frames the publisher wants sent.
pub(crate) async fn run(
    link: Link,
    dial: Dial,
    tally: Arc<Tally>,
    outgoing: Option<mpsc::Receiver<String>>,
    stop: CancellationToken,
) {
    let ended = match link {
        Link::WebSocket(ws) => run_websocket(ws, &dial, &tally, outgoing, &stop).await,
        Link::Stream(stream) => run_stream(stream, &dial, &tally, outgoing, &stop).await,
    };
    if let Some(reason) = ended {
        for &channel in &dial.channel_indexes {
            tally.change_subscribers(channel, false);
        }
        if !stop.is_cancelled() {
            tally.closed_early.fetch_add(1, Ordering::Relaxed);
            tally.record_error(reason);
        }
    }
}

/// A stream's receive loop; why it ended early, if it did.
async fn run_stream(
    mut link: StreamLink,
    dial: &Dial,
    tally: &Tally,
    mut outgoing: Option<mpsc::Receiver<String>>,
    stop: &CancellationToken,
) -> Option<String> {
    loop {
        tokio::select! {
            () = stop.cancelled() => return None,
            message = link.next() => match message {
                Ok(Some(text)) => {
                    let answer = wire::scan_frame(dial.protocol, &text, |stamp| {
                        tally.record_delivery(dial.index, stamp);
                    });
                    if let Some(answer) = answer
                        && let Err(e) = link.send(answer).await
                    {
                        return Some(format!("send heartbeat answer: {e}"));
                    }
                }
                Ok(None) => return Some("stream ended".to_string()),
                Err(e) => return Some(e),
            },
            frame = next_outgoing(&mut outgoing) => match frame {
                Some(frame) => {
                    if let Err(e) = link.send(&frame).await {
                        return Some(format!("send publish: {e}"));
                    }
                }
                None => outgoing = None,
            },
        }
    }
}

/// A WebSocket's receive loop; why it ended early, if it did.
async fn run_websocket(
    mut ws: Socket,
    dial: &Dial,
    tally: &Tally,
    mut outgoing: Option<mpsc::Receiver<String>>,
    stop: &CancellationToken,
) -> Option<String> {
    let protocol = dial.protocol;
    let shard = dial.index;
    let ended = loop {
        tokio::select! {
            _ = stop.cancelled() => break None,
            frame = ws.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Binary(bytes))) => match std::str::from_utf8(&bytes) {
                        Ok(text) => text.into(),
                        Err(_) => continue,
                    },
                    Some(Ok(Message::Close(frame))) => {
                        break Some(match frame {
                            Some(frame) => format!("closed by server: {} {}", frame.code, frame.reason),
                            None => "closed by server".to_string(),
                        });
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break Some(format!("read: {e}")),
                    None => break Some("connection ended".to_string()),
                };
                let answer = wire::scan_frame(protocol, text.as_str(), |stamp| {
                    tally.record_delivery(shard, stamp);
                });
                if let Some(answer) = answer
                    && let Err(e) = ws.send(Message::text(answer)).await
                {
                    break Some(format!("send heartbeat answer: {e}"));
                }
            }
            frame = next_outgoing(&mut outgoing) => match frame {
                Some(frame) => {
                    if let Err(e) = ws.send(Message::text(frame)).await {
                        break Some(format!("send publish: {e}"));
                    }
                }
                None => outgoing = None,
            },
        }
    };
    if ended.is_none() {
        let _ = tokio::time::timeout(Duration::from_millis(200), ws.close(None)).await;
    }
    ended
}

/// The next frame to publish, or never when this connection does not publish.
async fn next_outgoing(outgoing: &mut Option<mpsc::Receiver<String>>) -> Option<String> {
    match outgoing {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}
