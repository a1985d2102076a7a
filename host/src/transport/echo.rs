//! The conformance echo endpoint, `/conformance/echo`: every text or binary message comes back unchanged.
//!
//! It exists so the Autobahn|Testsuite (`tests/autobahn/run`) can exercise the WebSocket stack Herald's
//! clients get — same library, same buffer sizes and message limits (through [`super::websocket`]) — without
//! the Centrifugo protocol in the way. It is routed only when `websocket.conformance_echo` is on, and must
//! never carry sessions: it knows no channels and answers anyone.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::response::Response;

use super::websocket::{Event, Link, Upgrade, Upgraded};
use crate::disconnect::Disconnect;
use crate::node::Node;
use crate::protocol::Protocol;

/// The axum handler for `/conformance/echo`.
pub async fn echo_handler(
    State(node): State<Arc<Node>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    upgrade: Upgrade,
) -> Response {
    tracing::debug!(%remote, "conformance echo connection");
    let compression = node.config.websocket.compression.clone();
    upgrade.accept(&[], &compression, move |upgraded| echo(node, upgraded))
}

async fn echo(node: Arc<Node>, upgraded: Upgraded) {
    // Counted like any connection so a graceful shutdown waits for it.
    let running = node.sessions.token();
    // Room for the largest message on top of the usual queue: every message is echoed whole.
    let queue = node.config.client.max_queue_bytes + node.config.websocket.max_message_size;
    let link = Link::with_queue(&node, upgraded, queue);
    let outbound = link.outbound.clone();
    let egress = link.egress.clone();
    let shutdown = node.shutdown.clone();
    // Centrifugo's wire: closes go out with the code decided, unchanged.
    link.run(
        node,
        Protocol::Centrifuge,
        running,
        async move |_, reader| {
            loop {
                let event = tokio::select! {
                    event = reader.next() => event,
                    _ = shutdown.cancelled() => {
                        outbound.close(Disconnect::SHUTDOWN);
                        return;
                    }
                };
                match event {
                    Some(Event::Text(text)) => {
                        outbound.push_raw(egress.data_message(false, text));
                    }
                    Some(Event::Binary(bytes)) => {
                        outbound.push_raw(egress.data_message(true, bytes));
                    }
                    // The reader answers pings and a close the peer starts.
                    Some(Event::Ping(_) | Event::Pong(_)) => {}
                    Some(Event::Close(_)) | None => return,
                    Some(Event::Violation(violation)) => {
                        outbound.close(violation);
                        return;
                    }
                }
            }
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{self, Message as Client};

    use super::*;
    use crate::config::Config;
    use std::time::Duration;

    /// Serves Herald for `config` on a free loopback port; returns the port.
    async fn serve(config: Config) -> u16 {
        let node = Node::new(config).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(crate::server::run(node, listener, std::future::pending()));
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
