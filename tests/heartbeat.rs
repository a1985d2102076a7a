//! The heartbeat against a real Herald: the advertised interval, `{}` pings and pongs, the pong timeout
//! (3012), the connect deadline (3502), WebSocket-frame pings (`cf_ws_frame_ping_pong=true`) and answers to
//! the client's own WebSocket pings.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use herald_tests::{Client, Received, TestServer, WAIT};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Bytes;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameSocket};

/// Short heartbeat settings: a ping every second, 800 ms to answer.
const FAST: &str = "[client]\nping_interval = \"1s\"\npong_timeout = \"800ms\"";

/// Short heartbeat settings with a tight pong deadline, for clients that never answer.
const STRICT: &str = "[client]\nping_interval = \"1s\"\npong_timeout = \"500ms\"";

/// Pings a well-behaved client must survive.
const PINGS: usize = 3;

/// The WebSocket URL with transport-level ping/pong selected.
fn frame_ping_url(server: &TestServer) -> String {
    format!("{}?cf_ws_frame_ping_pong=true", server.ws_url())
}

/// Sends a command that always succeeds (unsubscribe answers `{}`) and asserts its reply.
async fn assert_answers(client: &mut Client) {
    let reply = client
        .command("unsubscribe", json!({"channel": "probe"}))
        .await;
    assert_eq!(reply["unsubscribe"], json!({}), "{reply}");
}

/// Waits for the next `{}` ping, failing on anything else (replies, pushes, pings frames, a close).
async fn next_app_ping(client: &mut Client) {
    match client.receive().await {
        Received::Json(v) if v == json!({}) => {}
        other => panic!("expected a {{}} ping, got {other:?}"),
    }
}

/// The connect result advertises the configured ping interval in seconds and that pongs are expected.
#[tokio::test]
async fn connect_reply_advertises_configured_ping() {
    let server = TestServer::start("[client]\nping_interval = \"3s\"\npong_timeout = \"1s\"").await;
    let (_client, result) = Client::connect(&server).await;
    assert_eq!(result["ping"], 3, "{result}");
    assert_eq!(result["pong"], true, "{result}");
}

/// The server sends `{}` pings; a client that answers each with `{}` stays connected across several pings
/// and is still served afterwards.
#[tokio::test]
async fn answered_pings_keep_the_connection() {
    let server = TestServer::start(FAST).await;
    let (mut client, _) = Client::connect(&server).await;
    client.auto_pong = false;
    for _ in 0..PINGS {
        next_app_ping(&mut client).await;
        client.send_text("{}").await;
    }
    assert_answers(&mut client).await;
}

/// A client that stops answering pings is closed with 3012 "no pong" (after one answered ping, so the
/// deadline is enforced for every ping, not just the first).
#[tokio::test]
async fn unanswered_ping_closes_with_no_pong() {
    let server = TestServer::start(STRICT).await;
    let (mut client, _) = Client::connect(&server).await;
    client.auto_pong = false;
    next_app_ping(&mut client).await;
    client.send_text("{}").await;
    next_app_ping(&mut client).await;
    // No answer this time.
    match client.receive().await {
        Received::Close(code, reason) => {
            assert_eq!((code, reason.as_str()), (3012, "no pong"));
        }
        other => panic!("expected close 3012, got {other:?}"),
    }
}

/// A connection that sends no `connect` within `connect_timeout` is closed with 3502 "stale"; one that
/// connects in time is not (it is still served after its first ping, which comes after the deadline).
#[tokio::test]
async fn no_connect_in_time_closes_as_stale() {
    let server = TestServer::start(
        "[client]\nping_interval = \"1s\"\npong_timeout = \"800ms\"\nconnect_timeout = \"300ms\"",
    )
    .await;
    let (mut good, _) = Client::connect(&server).await;
    let mut idle = Client::open(&server).await;
    assert_eq!(idle.expect_close().await, (3502, "stale".to_string()));
    good.auto_pong = false;
    next_app_ping(&mut good).await;
    good.send_text("{}").await;
    assert_answers(&mut good).await;
}

/// With `?cf_ws_frame_ping_pong=true` the connect result carries no `ping`/`pong`, the server sends
/// WebSocket ping frames instead of `{}`, and a client answering them with pong frames (tungstenite does so
/// on its next read) stays connected across several pings.
#[tokio::test]
async fn frame_ping_pong_mode_uses_websocket_pings() {
    let server = TestServer::start(FAST).await;
    let mut client = Client::open_url(&frame_ping_url(&server)).await;
    let reply = client.command("connect", json!({})).await;
    let result = &reply["connect"];
    assert!(result["client"].is_string(), "{reply}");
    assert!(result.get("ping").is_none(), "{reply}");
    assert!(result.get("pong").is_none(), "{reply}");
    for _ in 0..PINGS {
        match client.receive().await {
            Received::Ping => {}
            other => panic!("expected a WebSocket ping, got {other:?}"),
        }
    }
    assert_answers(&mut client).await;
}

/// What a raw client saw before the server closed its connection.
#[derive(Debug)]
struct RawOutcome {
    connect_reply: Value,
    pings: usize,
    close: (u16, String),
}

/// A raw blocking WebSocket client that never answers ping frames (tungstenite's own client always does):
/// upgrades with `?cf_ws_frame_ping_pong=true`, connects, then reads frames until the close.
fn silent_frame_ping_client(addr: SocketAddr) -> RawOutcome {
    let mut stream = TcpStream::connect(addr).expect("tcp connect");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    write!(
        stream,
        "GET /connection/websocket?cf_ws_frame_ping_pong=true HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .expect("send upgrade");
    let mut head = Vec::new();
    let end = loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).expect("read upgrade response");
        assert!(n > 0, "connection closed during upgrade");
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    let status = String::from_utf8_lossy(&head[..end]);
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    let mut socket = FrameSocket::from_partially_read(stream, head[end..].to_vec());
    let mut connect = Frame::message(
        Bytes::from_static(b"{\"id\":1,\"connect\":{}}"),
        OpCode::Data(Data::Text),
        true,
    );
    connect.header_mut().mask = Some([7, 13, 21, 42]);
    socket.send(connect).expect("send connect");
    let mut connect_reply = Value::Null;
    let mut pings = 0;
    loop {
        let frame = socket
            .read(None)
            .expect("read frame")
            .expect("server ended the stream without a close frame");
        match frame.header().opcode {
            OpCode::Data(Data::Text) => {
                let text = frame.to_text().expect("UTF-8 text");
                for line in text.split('\n') {
                    let value: Value = serde_json::from_str(line).expect("JSON line");
                    assert_eq!(
                        value["id"], 1,
                        "only the connect reply is expected: {value}"
                    );
                    connect_reply = value;
                }
            }
            OpCode::Control(Control::Ping) => pings += 1,
            OpCode::Control(Control::Close) => {
                let payload = frame.payload();
                assert!(payload.len() >= 2, "close frame without a code");
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                let reason = String::from_utf8_lossy(&payload[2..]).into_owned();
                return RawOutcome {
                    connect_reply,
                    pings,
                    close: (code, reason),
                };
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// In `cf_ws_frame_ping_pong` mode a client that does not answer the server's WebSocket ping frames is
/// closed with 3012 "no pong" after the first one.
#[tokio::test]
async fn unanswered_frame_ping_closes_with_no_pong() {
    let server = TestServer::start(STRICT).await;
    let addr = server.addr;
    let outcome = tokio::task::spawn_blocking(move || silent_frame_ping_client(addr))
        .await
        .expect("raw client");
    assert!(
        outcome.connect_reply["connect"]["client"].is_string(),
        "{outcome:?}"
    );
    assert_eq!(outcome.pings, 1, "{outcome:?}");
    assert_eq!(outcome.close, (3012, "no pong".to_string()), "{outcome:?}");
}

/// WebSocket ping frames from the client are answered with a pong carrying the same payload, before and
/// after `connect` and in both heartbeat modes.
#[tokio::test]
async fn client_websocket_pings_are_answered() {
    let server = TestServer::start("").await;
    let mut client = Client::open(&server).await;
    client.ping_pong(b"before connect").await;
    let reply = client.command("connect", json!({})).await;
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    client.ping_pong(b"after connect").await;
    client.ping_pong(b"").await;
    assert_answers(&mut client).await;

    let mut client = Client::open_url(&frame_ping_url(&server)).await;
    client.ping_pong(b"frame mode").await;
    let reply = client.command("connect", json!({})).await;
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    client.ping_pong(b"frame mode, connected").await;
    assert_answers(&mut client).await;
}
