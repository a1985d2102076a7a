//! Connection and rate limits against a real Herald: refusals carry the documented status or code, and a
//! well-behaved client on the same server keeps being served.

use herald_tests::{Client, TestServer, WAIT, publication};
use serde_json::json;
use tokio_tungstenite::tungstenite::{self, http};

/// Asserts that a subscribed bystander still receives what the API publishes.
async fn still_served(server: &TestServer, bystander: &mut Client, n: u64) {
    server.publish("bystander", json!({"n": n})).await;
    let push = bystander.next_push().await;
    assert_eq!(publication(&push, "bystander")["data"], json!({"n": n}));
}

/// Over `max_connections_per_ip`, upgrades get HTTP 503; a closed connection frees its place.
#[tokio::test]
async fn connections_per_address_are_limited() {
    let server = TestServer::start("[limits]\nmax_connections_per_ip = 3").await;
    let (mut bystander, _) = Client::connect(&server).await;
    bystander.subscribe(json!({"channel": "bystander"})).await;
    let probe = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .expect("second connection");
    let _third = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .expect("third connection");
    let refused = tokio_tungstenite::connect_async(server.ws_url()).await;
    match refused {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE)
        }
        other => panic!("expected 503, got {other:?}"),
    }
    still_served(&server, &mut bystander, 1).await;
    drop(probe);
    // The server frees the place once it notices the close; retry until it has (bounded by WAIT).
    let admitted = tokio::time::timeout(WAIT, async {
        loop {
            if tokio_tungstenite::connect_async(server.ws_url())
                .await
                .is_ok()
            {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(admitted.is_ok(), "a closed connection must free its place");
}

/// Opening connections faster than `connections_per_second_per_ip` is refused with 503.
#[tokio::test]
async fn connection_rate_per_address_is_limited() {
    let server = TestServer::start("[limits]\nconnections_per_second_per_ip = 3").await;
    let mut statuses = Vec::new();
    let mut held = Vec::new();
    for _ in 0..6 {
        match tokio_tungstenite::connect_async(server.ws_url()).await {
            Ok(socket) => held.push(socket),
            Err(tungstenite::Error::Http(response)) => statuses.push(response.status()),
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(held.len(), 3, "the burst is admitted");
    assert_eq!(statuses, vec![http::StatusCode::SERVICE_UNAVAILABLE; 3]);
}

/// Commands over the connection's rate get `111` (temporary); persisting closes with 3013; other
/// connections are unaffected.
#[tokio::test]
async fn command_rate_is_limited_then_abusers_are_dropped() {
    let server = TestServer::start(
        "[limits]\ncommands_per_second = 1\ncommand_burst = 4\ndisconnect_after_refused_commands = 10",
    )
    .await;
    let (mut bystander, _) = Client::connect(&server).await;
    bystander.subscribe(json!({"channel": "bystander"})).await;

    let mut flooder = Client::open(&server).await;
    // connect + 3 commands use the burst of 4; the next ones are refused.
    let frame: Vec<String> = (1..=8)
        .map(|id| {
            if id == 1 {
                json!({"id": 1, "connect": {}}).to_string()
            } else {
                json!({"id": id, "presence_stats": {"channel": "room"}}).to_string()
            }
        })
        .collect();
    flooder.send_text(&frame.join("\n")).await;
    let mut refused = 0;
    for id in 1..=8u32 {
        let reply = flooder.reply(id).await;
        // Answered commands get their normal reply (here 103: not subscribed); refused ones get 111.
        if reply["error"]["code"] == 111 {
            assert_eq!(
                reply["error"],
                json!({"code": 111, "message": "too many requests", "temporary": true})
            );
            refused += 1;
        }
    }
    assert!(
        refused >= 3,
        "at least the commands past the burst are refused, got {refused}"
    );
    still_served(&server, &mut bystander, 1).await;

    let flood: Vec<String> = (100..130)
        .map(|id| json!({"id": id, "presence_stats": {"channel": "room"}}).to_string())
        .collect();
    flooder.send_text(&flood.join("\n")).await;
    assert_eq!(
        flooder.expect_close().await,
        (3013, "too many requests".to_string())
    );
    still_served(&server, &mut bystander, 2).await;
}

/// A raw WebSocket client.
type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// `count` copies of a message: a flood.
fn flood_of(message: &str, count: usize) -> Vec<tungstenite::Message> {
    (0..count)
        .map(|_| tungstenite::Message::text(message))
        .collect()
}

/// Sends every frame without reading anything, stopping at the first send error (a reset).
async fn flood(ws: &mut Ws, frames: Vec<tungstenite::Message>) -> Result<(), String> {
    use futures_util::SinkExt;
    let mut stream = futures_util::stream::iter(frames.into_iter().map(Ok));
    tokio::time::timeout(WAIT, ws.send_all(&mut stream))
        .await
        .expect("the flood is taken in time")
        .map_err(|error| error.to_string())
}

/// Reads what the server sent until its close frame, then the end of the connection, which must be clean:
/// the close code and reason, or the error that cut the connection (a reset) before or after the close.
async fn close_then_clean_end(ws: &mut Ws) -> Result<(u16, String), String> {
    use futures_util::StreamExt;
    let mut texts = 0;
    let close = loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("message in time");
        match message {
            Some(Ok(tungstenite::Message::Close(Some(frame)))) => {
                break (u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(tungstenite::Message::Close(None))) => {
                return Err("a close without code".into());
            }
            Some(Ok(_)) => texts += 1,
            Some(Err(error)) => return Err(format!("{error} after {texts} messages")),
            None => {
                return Err(format!(
                    "the end, without a close frame, after {texts} messages"
                ));
            }
        }
    };
    // The library answers the close; the server ends the connection once it has the answer.
    match tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("the end in time")
    {
        None => Ok(close),
        other => Err(format!("after the close {close:?}: {other:?}")),
    }
}

/// A client flooding commands without reading, then reading, gets its close code — 3013 past the command
/// rate — and a clean close handshake, and every one of its sends goes through. The server reads and drops
/// what the client still sends after deciding the close: dropping the socket with client data unread makes
/// the kernel reset the connection, which fails the client's sends and discards the close frame still
/// queued behind the replies, so the client would see 1006.
#[tokio::test]
async fn a_flooding_client_gets_its_close_code_not_a_reset() {
    let server = TestServer::start(
        "[limits]\ncommands_per_second = 1\ncommand_burst = 1\ndisconnect_after_refused_commands = 3000",
    )
    .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .expect("open");
    // 2,000 messages of 100 commands (9 MB): the first command is the connect, the next 3,000 are refused
    // with 111 (replies the client does not read yet), then the connection is closed with about 9 MB still
    // to read — more than the kernel buffers of both ends hold, so a reset would hit the client's sends.
    let command = json!({"id": 2, "presence_stats": {"channel": "room"}}).to_string();
    let message = vec![command.as_str(); 100].join("\n");
    let mut frames = flood_of(&message, 2_000);
    frames[0] =
        tungstenite::Message::text(message.replacen(&command, r#"{"id":1,"connect":{}}"#, 1));
    let sent = flood(&mut ws, frames).await;
    let closed = close_then_clean_end(&mut ws).await;
    assert_eq!(
        (sent, closed),
        (Ok(()), Ok((3013, "too many requests".to_string()))),
        "(every send goes through, then the close code and a clean end)"
    );
}

/// The same for a Pusher client: flooding messages without reading gets `4100` (over capacity, pusher-js
/// reconnects after a backoff), not a reset.
#[tokio::test]
async fn a_flooding_pusher_client_gets_4100_not_a_reset() {
    let server = TestServer::start(&format!(
        "{}\n[limits]\ncommands_per_second = 1\ncommand_burst = 1\ndisconnect_after_refused_commands = 3000",
        herald_tests::PUSHER_CONFIG
    ))
    .await;
    let url = herald_tests::pusher::url(server.addr, herald_tests::PUSHER_KEY, "?protocol=7");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("open");
    // 5,000 unknown events of 4 KB: they count against the rate; the first 3,000 refused get a
    // `pusher:error` 4301 each (replies the client does not read yet), then the connection is closed with
    // about 8 MB still to read.
    let message = json!({"event": "flood", "data": "x".repeat(4_000)}).to_string();
    let sent = flood(&mut ws, flood_of(&message, 5_000)).await;
    let closed = close_then_clean_end(&mut ws).await;
    assert_eq!(
        (sent, closed),
        (Ok(()), Ok((4100, "over capacity".to_string()))),
        "(every send goes through, then the close code and a clean end)"
    );
}

/// `X-Forwarded-For` is ignored unless the peer is a trusted proxy: a spoofed header cannot dodge the
/// per-address limit.
#[tokio::test]
async fn forwarded_for_from_untrusted_peers_is_ignored() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = TestServer::start("[limits]\nmax_connections_per_ip = 1").await;
    let _first = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .expect("first");
    let mut spoofed = server.ws_url().into_client_request().unwrap();
    spoofed
        .headers_mut()
        .insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
    match tokio_tungstenite::connect_async(spoofed).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE)
        }
        other => panic!("expected 503, got {other:?}"),
    }
    let trusting = TestServer::start(
        "[limits]\nmax_connections_per_ip = 1\ntrusted_proxies = [\"127.0.0.1/32\"]",
    )
    .await;
    let _first = tokio_tungstenite::connect_async(trusting.ws_url())
        .await
        .expect("first");
    let mut forwarded = trusting.ws_url().into_client_request().unwrap();
    forwarded
        .headers_mut()
        .insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
    assert!(
        tokio_tungstenite::connect_async(forwarded).await.is_ok(),
        "a trusted proxy's client has its own budget"
    );
}

/// A TCP connection to the server from `local` (any 127.0.0.0/8 address reaches the loopback listener).
async fn tcp_from(server: &TestServer, local: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{local}:0").parse().expect("address"))
        .expect("bind");
    socket.connect(server.addr).await.expect("connect")
}

/// Writes `header` on a new connection from `local`, then opens a WebSocket over it.
async fn websocket_after(
    server: &TestServer,
    local: &str,
    header: &[u8],
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, tungstenite::Error> {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tcp_from(server, local).await;
    tcp.write_all(header).await.expect("write header");
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(server.ws_url(), tcp))
        .await
        .expect("handshake in time")?;
    Ok(ws)
}

/// A PROXY protocol v2 header for a TCP/IPv4 client.
fn proxy_v2(client: [u8; 4], port: u16) -> Vec<u8> {
    use ppp::v2::{Builder, Command, IPv4, Protocol, Version};
    Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        IPv4::new(client, [127, 0, 0, 1], port, 8000),
    )
    .build()
    .expect("v2 header")
}

/// With `proxy_protocol` on, a trusted proxy's PROXY header (v1 or v2) gives the client address that the
/// per-address limits use; a trusted peer without a header, or one that sends nothing within
/// `handshake_timeout`, is closed; an untrusted peer's PROXY header is not believed (its request is refused
/// as garbage), while its ordinary connections are served.
#[tokio::test]
async fn proxy_protocol_from_trusted_proxies_gives_the_client_address() {
    let server = TestServer::start(
        "[limits]\nproxy_protocol = true\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
         max_connections_per_ip = 1\nhandshake_timeout = \"500ms\"",
    )
    .await;
    let v1 = |client: &str| format!("PROXY TCP4 {client} 127.0.0.1 40000 8000\r\n").into_bytes();
    // Held until the test ends, so the per-address count includes it.
    let _first = websocket_after(&server, "127.0.0.1", &v1("203.0.113.9"))
        .await
        .expect("first client behind the proxy");
    match websocket_after(&server, "127.0.0.1", &proxy_v2([203, 0, 113, 9], 40001)).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE)
        }
        other => panic!("the same client again must hit its limit (503), got {other:?}"),
    }
    let _other = websocket_after(&server, "127.0.0.1", &proxy_v2([203, 0, 113, 10], 40002))
        .await
        .expect("another client behind the same proxy has its own budget");

    assert!(
        websocket_after(&server, "127.0.0.1", b"").await.is_err(),
        "a trusted proxy must send the header"
    );
    let mut silent = tcp_from(&server, "127.0.0.1").await;
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut silent, &mut byte))
        .await
        .expect("a silent proxy connection is closed after handshake_timeout");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    assert!(
        websocket_after(&server, "127.0.0.2", &v1("203.0.113.77"))
            .await
            .is_err(),
        "an untrusted peer's PROXY header is not stripped, so its request is garbage"
    );
    websocket_after(&server, "127.0.0.2", b"")
        .await
        .expect("an untrusted peer is served as itself");
}
