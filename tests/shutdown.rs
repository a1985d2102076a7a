//! Graceful shutdown of a real Herald: clients are told to reconnect elsewhere (3001), the listener goes
//! away, and an API request already being handled still gets its complete response.

use herald_tests::{API_KEY, Client, TestServer, WAIT, publication};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connected clients — subscribed or not — receive close `3001 shutdown`, `shutdown()` returns Ok, and
/// afterwards the port refuses both WebSocket and API connections.
#[tokio::test]
async fn shutdown_closes_clients_with_3001_and_stops_listening() {
    let server = TestServer::start("").await;
    let (ws_url, api_url) = (server.ws_url(), server.api_url());
    let (mut subscribed, _) = Client::connect(&server).await;
    let (mut idle, _) = Client::connect(&server).await;
    subscribed.subscribe(json!({"channel": "news"})).await;
    server.publish("news", json!(1)).await;
    assert_eq!(
        publication(&subscribed.next_push().await, "news")["data"],
        1
    );

    let (result, close_subscribed, close_idle) = tokio::join!(
        server.shutdown(),
        subscribed.expect_close(),
        idle.expect_close()
    );
    result.expect("shutdown returns Ok");
    assert_eq!(close_subscribed, (3001, "shutdown".to_string()));
    assert_eq!(close_idle, (3001, "shutdown".to_string()));

    let ws = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(ws_url.as_str()))
        .await
        .expect("connection attempt resolves in time");
    assert!(ws.is_err(), "WebSocket connect after shutdown must fail");
    let api = tokio::time::timeout(
        WAIT,
        reqwest::Client::new()
            .post(format!("{api_url}/info"))
            .header("X-API-Key", API_KEY)
            .body("{}")
            .send(),
    )
    .await
    .expect("API attempt resolves in time");
    assert!(
        api.is_err(),
        "API request after shutdown must fail: {api:?}"
    );
}

/// A connection that opened its WebSocket but has not sent `connect` yet is closed by shutdown too, so it
/// does not hold shutdown up.
#[tokio::test]
async fn shutdown_closes_connections_that_have_not_connected() {
    let server = TestServer::start("").await;
    // `open` returns once the WebSocket upgrade is answered; no `connect` command is sent.
    let mut opened = Client::open(&server).await;
    let (mut connected, _) = Client::connect(&server).await;
    let (result, close_opened, close_connected) = tokio::join!(
        server.shutdown(),
        opened.expect_close(),
        connected.expect_close()
    );
    result.expect("shutdown returns Ok");
    assert_eq!(close_connected, (3001, "shutdown".to_string()));
    assert_eq!(close_opened, (3001, "shutdown".to_string()));
}

/// A client that neither reads nor answers the close frame does not hold shutdown up: the server waits for
/// its answer only briefly (the close handshake's linger), well within a `shutdown_timeout` longer than
/// [`WAIT`], and the close frame is there when the client reads at last.
#[tokio::test]
async fn shutdown_does_not_wait_for_clients_that_never_answer() {
    let server = TestServer::start("shutdown_timeout = \"60s\"").await;
    let (mut silent, _) = Client::connect(&server).await;
    server
        .shutdown()
        .await
        .expect("shutdown returns Ok without the client's answer");
    assert_eq!(silent.expect_close().await, (3001, "shutdown".to_string()));
}

/// Reads one HTTP/1.1 response head (up to the blank line) from `tcp`, keeping any extra bytes in `buf`.
async fn read_head(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..end].to_vec()).expect("ASCII head");
            buf.drain(..end + 4);
            return head;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("response in time")
            .expect("read response");
        assert!(
            n > 0,
            "connection closed before a complete response head; got {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// An API request that the server is already handling when shutdown starts gets its complete response.
///
/// Made deterministic with `Expect: 100-continue`: the server sends `100 Continue` only once the handler
/// reads the body, so the request is provably in flight; shutdown is then triggered and observed to be
/// under way (a WebSocket client gets 3001) before the body is sent.
#[tokio::test]
async fn in_flight_api_request_completes_during_shutdown() {
    let server = TestServer::start("").await;
    let addr = server.addr;
    let (mut watcher, _) = Client::connect(&server).await;

    let body = r#"{"channel":"news","data":{"n":1}}"#;
    let mut tcp = TcpStream::connect(addr).await.expect("tcp connect");
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.expect("send head");
    let mut buf = Vec::new();
    let interim = read_head(&mut tcp, &mut buf).await;
    assert!(
        interim.starts_with("HTTP/1.1 100"),
        "expected 100 Continue, got {interim:?}"
    );

    let stopping = tokio::spawn(server.shutdown());
    assert_eq!(
        watcher.expect_close().await,
        (3001, "shutdown".to_string()),
        "shutdown is under way"
    );
    tcp.write_all(body.as_bytes()).await.expect("send body");

    let head = read_head(&mut tcp, &mut buf).await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "in-flight request must be answered: {head:?}"
    );
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().expect("content-length"))
        })
        .unwrap_or_else(|| panic!("no content-length in {head:?}"));
    while buf.len() < length {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("body in time")
            .expect("read body");
        assert!(
            n > 0,
            "connection closed mid-body: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
    let answer: Value = serde_json::from_slice(&buf[..length]).expect("JSON body");
    assert_eq!(answer["result"]["offset"], 1, "{answer}");
    assert!(answer["result"]["epoch"].is_string(), "{answer}");

    stopping
        .await
        .expect("shutdown task")
        .expect("shutdown returns Ok");
}
