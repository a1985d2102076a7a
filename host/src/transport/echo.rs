//! The conformance echo endpoint, `/conformance/echo`: every text or binary message comes back unchanged.
//!
//! It exists so the Autobahn|Testsuite (`tests/autobahn/run`) can exercise the WebSocket stack Herald's
//! clients get — same library, same buffer sizes and message limits (through [`super::websocket`]) — without
//! the Centrifugo protocol in the way. It is routed only when `websocket.conformance_echo` is on, and must
//! never carry sessions: it knows no channels and answers anyone.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;

use super::websocket::{read_error, with_limits};
use crate::disconnect::Disconnect;
use crate::node::Node;
use crate::session::Incoming;

/// The close for a frame that breaks RFC 6455 (reserved bits, bad opcode, bad fragmentation, …).
const PROTOCOL_ERROR: Disconnect = Disconnect {
    code: 1002,
    reason: Cow::Borrowed("protocol error"),
};

/// The axum handler for `/conformance/echo`.
pub async fn echo_handler(
    State(node): State<Arc<Node>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    upgrade: WebSocketUpgrade,
) -> Response {
    with_limits(upgrade, &node)
        .on_failed_upgrade(move |error| tracing::debug!(%remote, %error, "echo upgrade failed"))
        .on_upgrade(move |socket| echo(node, socket))
}

async fn echo(node: Arc<Node>, mut socket: WebSocket) {
    // Counted like any connection so a graceful shutdown waits for it.
    let _running = node.sessions.token();
    // A peer that stops reading is dropped after this, as on the real endpoint.
    let write_timeout = node.config.websocket.write_timeout;
    let mut closing = false;
    loop {
        let message = tokio::select! {
            message = socket.recv() => message,
            _ = node.shutdown.cancelled(), if !closing => {
                // Our close goes out now; reading on until the peer answers completes the handshake.
                closing = true;
                if !send(&mut socket, close(&Disconnect::SHUTDOWN), write_timeout).await {
                    return;
                }
                continue;
            }
        };
        match message {
            // The library queues the answers to pings and to a close itself; reading on flushes them and
            // ends the stream once the close handshake is complete.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_))) => {}
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                if !send(&mut socket, message, write_timeout).await {
                    return;
                }
            }
            Some(Err(error)) => {
                // Nothing more can be read after an error: say why, then let the socket go.
                let reason = match read_error(&error) {
                    Some(Incoming::TooLarge) => Disconnect::MESSAGE_TOO_BIG,
                    Some(Incoming::InvalidUtf8) => Disconnect::INVALID_PAYLOAD,
                    _ => PROTOCOL_ERROR,
                };
                send(&mut socket, close(&reason), write_timeout).await;
                return;
            }
            None => return,
        }
    }
}

/// Sends within the write timeout; false when the peer is gone or stopped reading.
async fn send(socket: &mut WebSocket, message: Message, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, socket.send(message)).await,
        Ok(Ok(()))
    )
}

fn close(reason: &Disconnect) -> Message {
    Message::Close(Some(CloseFrame {
        code: reason.code,
        reason: Utf8Bytes::from(reason.reason.as_ref()),
    }))
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{self, Message as Client};

    use super::*;
    use crate::config::Config;

    /// Serves `app()` for `config` on a free loopback port; returns the port.
    async fn serve(config: Config) -> u16 {
        let node = Node::new(config).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = crate::server::app(node).into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, app).await });
        port
    }

    fn echo_on() -> Config {
        let mut config = Config::default();
        config.websocket.conformance_echo = true;
        config
    }

    async fn next(
        ws: &mut (impl StreamExt<Item = Result<Client, tungstenite::Error>> + Unpin),
    ) -> Client {
        tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("an answer in time")
            .expect("an open stream")
            .expect("a message")
    }

    /// Text and binary messages come back unchanged, and a close is answered.
    #[tokio::test]
    async fn echoes_when_switched_on() {
        let port = serve(echo_on()).await;
        let url = format!("ws://127.0.0.1:{port}/conformance/echo");
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        ws.send(Client::text("héllo")).await.unwrap();
        assert_eq!(next(&mut ws).await, Client::text("héllo"));
        ws.send(Client::binary(vec![0u8, 255])).await.unwrap();
        assert_eq!(next(&mut ws).await, Client::binary(vec![0u8, 255]));
        ws.close(None).await.unwrap();
        assert!(matches!(next(&mut ws).await, Client::Close(_)));
    }

    /// The endpoint has the real one's limits: a message over `max_message_size` is closed with 1009.
    #[tokio::test]
    async fn applies_the_websocket_limits() {
        let port = serve(echo_on()).await;
        let url = format!("ws://127.0.0.1:{port}/conformance/echo");
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let too_big = "x".repeat(echo_on().websocket.max_message_size + 1);
        ws.send(Client::text(too_big)).await.unwrap();
        match next(&mut ws).await {
            Client::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1009),
            other => panic!("expected a 1009 close, got {other:?}"),
        }
    }

    /// Without the switch the endpoint does not exist.
    #[tokio::test]
    async fn absent_by_default() {
        let port = serve(Config::default()).await;
        let url = format!("ws://127.0.0.1:{port}/conformance/echo");
        match tokio_tungstenite::connect_async(url).await {
            Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 404),
            other => panic!("expected 404, got {other:?}"),
        }
    }
}
