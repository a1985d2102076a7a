//! Hostile input against a real Herald: each attack gets its documented refusal (close code, error reply
//! or HTTP status), nothing in the server panics, and throughout every attack a well-behaved subscriber on
//! the same server keeps receiving a background publisher's publications, with contiguous offsets.
//!
//! Attackers that must not share the bystander's per-address budgets connect from `127.0.0.2` (any
//! `127.0.0.0/8` address reaches the loopback listener).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::{SinkExt, StreamExt};
use herald::node::{PublishRequest, Source};
use herald_tests::{API_KEY, Client, TestServer, WAIT, publication};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

// ------------------------------------------------------------------------------------------ harness ---

/// The channel the bystander listens on.
const CHANNEL: &str = "bystander";

/// The address attackers connect from, so per-address limits they trip do not touch the bystander.
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// Panics anywhere outside the test code (the server's tasks, its libraries), counted by a panic hook.
static SERVER_PANICS: AtomicUsize = AtomicUsize::new(0);

/// Installs the panic hook once: test assertions (in `tests/`) are not counted, anything else is.
fn count_server_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_tests = info
                .location()
                .is_some_and(|location| location.file().contains("tests/"));
            if !in_tests {
                SERVER_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

/// A well-behaved subscriber of [`CHANNEL`] and a publisher feeding it one publication at a time (the next
/// is published once the previous one arrived), so the bystander's progress shows the server kept serving.
/// Publishing goes straight to the node, the same publish path as the API, so API limits an attack trips
/// never slow the publisher down.
struct Bystander {
    stop: watch::Sender<bool>,
    delivered: watch::Receiver<u64>,
    task: JoinHandle<Vec<u64>>,
}

impl Bystander {
    /// Connects, subscribes and starts publishing.
    async fn start(server: &TestServer) -> Self {
        count_server_panics();
        let (mut client, _) = Client::connect(server).await;
        let reply = client.subscribe(json!({"channel": CHANNEL})).await;
        assert!(reply.get("subscribe").is_some(), "{reply}");
        let node = server.node.clone();
        let (stop, stopped) = watch::channel(false);
        let (progress, delivered) = watch::channel(0u64);
        let task = tokio::spawn(async move {
            let mut offsets = Vec::new();
            while !*stopped.borrow() {
                let n = offsets.len() + 1;
                node.publish(PublishRequest {
                    channel: CHANNEL.into(),
                    data: Bytes::from(format!("{{\"n\":{n}}}")),
                    info: None,
                    tags: Default::default(),
                    skip_history: false,
                    source: Source::Api,
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("publication {n} refused: {e:?}"));
                let push = client.next_push().await;
                let publication = publication(&push, CHANNEL);
                assert_eq!(publication["data"], json!({"n": n}), "{push}");
                offsets.push(publication["offset"].as_u64().expect("offset"));
                progress.send_replace(offsets.len() as u64);
            }
            offsets
        });
        Self {
            stop,
            delivered,
            task,
        }
    }

    /// Runs `attack` while asserting that the bystander receives at least three more publications meanwhile
    /// (waiting for them if the attack ends first).
    async fn during<T>(&mut self, attack: impl Future<Output = T>) -> T {
        let target = *self.delivered.borrow() + 3;
        let mut delivered = self.delivered.clone();
        let progress = async move {
            tokio::time::timeout(WAIT, delivered.wait_for(|n| *n >= target))
                .await
                .expect("the bystander kept receiving publications")
                .expect("bystander running");
        };
        let (result, ()) = futures_util::join!(attack, progress);
        result
    }

    /// Stops publishing and asserts that every publication arrived, in order, with contiguous offsets from 1,
    /// and that nothing in the server panicked.
    async fn finish(self) {
        self.stop.send_replace(true);
        let offsets = tokio::time::timeout(WAIT, self.task)
            .await
            .expect("bystander stops in time")
            .expect("bystander task");
        assert!(offsets.len() >= 3, "only {} publications", offsets.len());
        let expected: Vec<u64> = (1..=offsets.len() as u64).collect();
        assert_eq!(offsets, expected, "offsets must be contiguous from 1");
        assert_eq!(
            SERVER_PANICS.load(Ordering::SeqCst),
            0,
            "the server panicked"
        );
    }
}

/// A server with `extra` config and a running bystander.
async fn setup(extra: &str) -> (TestServer, Bystander) {
    let server = TestServer::start(extra).await;
    let bystander = Bystander::start(&server).await;
    (server, bystander)
}

/// A WebSocket without the test client's conveniences, for frame-level attacks.
type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a raw WebSocket to the server.
async fn open_raw(server: &TestServer) -> Ws {
    tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(server.ws_url()))
        .await
        .expect("ws open in time")
        .expect("ws open")
        .0
}

/// Opens a raw WebSocket and sends `connect`, returning it once the reply arrived.
async fn connected_raw(server: &TestServer) -> Ws {
    let mut ws = open_raw(server).await;
    ws.send(Message::text(r#"{"id":1,"connect":{}}"#))
        .await
        .expect("send connect");
    match next_message(&mut ws).await {
        Some(Message::Text(text)) => assert!(text.contains("\"connect\""), "{text}"),
        other => panic!("expected the connect reply, got {other:?}"),
    }
    ws
}

/// The next message, bounded by [`WAIT`]; `None` when the stream ended or failed.
async fn next_message(ws: &mut Ws) -> Option<Message> {
    tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("message in time")
        .and_then(Result::ok)
}

/// Reads until the server's close frame and returns its code (1006 if the stream ends without one).
async fn close_code<S>(stream: &mut S) -> u16
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let message = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("close in time");
        match message {
            Some(Ok(Message::Close(frame))) => return frame.map_or(1005, |f| f.code.into()),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return 1006,
        }
    }
}

/// Sends `frames` as fast as the socket takes them, stopping at the first failure (the server closed).
async fn send_all<S>(sink: &mut S, frames: impl Iterator<Item = Message>)
where
    S: futures_util::Sink<Message> + Unpin,
{
    let mut unflushed = 0;
    for frame in frames {
        if sink.feed(frame).await.is_err() {
            return;
        }
        unflushed += 1;
        if unflushed == 256 {
            if sink.flush().await.is_err() {
                return;
            }
            unflushed = 0;
        }
    }
    let _ = sink.flush().await;
}

/// One fragment of a text message: the first has the text opcode, later ones are continuations.
fn fragment(payload: &[u8], first: bool, last: bool) -> Message {
    let opcode = if first {
        OpCode::Data(Data::Text)
    } else {
        OpCode::Data(Data::Continue)
    };
    Message::Frame(Frame::message(
        Bytes::copy_from_slice(payload),
        opcode,
        last,
    ))
}

/// A probe command that always succeeds: unsubscribing from a channel (subscribed or not) answers `{}`.
fn probe(id: u32) -> String {
    format!("{{\"id\":{id},\"unsubscribe\":{{\"channel\":\"probe\"}}}}")
}

/// A [`probe`] padded to `size` bytes with an unknown field.
fn padded_probe(id: u32, size: usize) -> String {
    let head = format!("{{\"id\":{id},\"unsubscribe\":{{\"channel\":\"probe\",\"pad\":\"");
    let tail = "\"}}";
    let text = format!("{head}{}{tail}", "x".repeat(size - head.len() - tail.len()));
    assert_eq!(text.len(), size);
    text
}

/// Asserts `reply` is the successful answer to [`probe`] `id`.
fn assert_probe_reply(reply: &Value, id: u32) {
    assert_eq!(reply, &json!({"id": id, "unsubscribe": {}}));
}

/// Reads until the server closes and asserts the close code.
async fn assert_closed(client: &mut Client, code: u16, what: &str) {
    let (got, reason) = client.expect_close().await;
    assert_eq!(got, code, "{what}: closed with {got} {reason:?}");
}

/// An HTTP client whose connections come from [`ATTACKER`].
fn attacker_http() -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ATTACKER)
        .build()
        .expect("http client")
}

/// A TCP connection to the server from [`ATTACKER`].
async fn attacker_tcp(server: &TestServer) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(ATTACKER, 0))
        .expect("bind the attacker address");
    tokio::time::timeout(WAIT, socket.connect(server.addr))
        .await
        .expect("tcp connect in time")
        .expect("tcp connect")
}

/// Waits until the server closes `tcp` (end of stream or reset), discarding anything it sends first.
async fn assert_tcp_closed(tcp: &mut TcpStream, what: &str) {
    let mut sink = [0u8; 1024];
    tokio::time::timeout(WAIT, async {
        loop {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: the server did not close the connection"));
}

/// Raises this process's open-file limit to its hard limit: the tests below hold thousands of sockets
/// (both ends live in this process).
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    setrlimit(Resource::Nofile, raised).expect("raise the open-file limit");
}

// --------------------------------------------------------------------------------- WebSocket input ---

/// A text message that is not valid UTF-8 closes with 1007, before or after connect and also when the bad
/// bytes are in a continuation fragment; a character split across two fragments is fine.
#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let (server, mut bystander) = setup("").await;
    let invalid = || {
        Message::Frame(Frame::message(
            Bytes::from_static(b"{\"id\":2,\"history\":{\"channel\":\"\xff\xfe\"}}"),
            OpCode::Data(Data::Text),
            true,
        ))
    };
    bystander
        .during(async {
            let mut ws = connected_raw(&server).await;
            ws.send(invalid()).await.expect("send");
            assert_eq!(close_code(&mut ws).await, 1007, "after connect");
            let mut ws = open_raw(&server).await;
            ws.send(invalid()).await.expect("send");
            assert_eq!(close_code(&mut ws).await, 1007, "before connect");
            let mut ws = connected_raw(&server).await;
            ws.send(fragment(b"{\"id\":2,", true, false))
                .await
                .expect("send");
            let bad = b"\"unsubscribe\":{\"channel\":\"\xc3\x28\"}}";
            ws.send(fragment(bad, false, true)).await.expect("send");
            assert_eq!(close_code(&mut ws).await, 1007, "in a continuation");
            let mut client = Client::connect(&server).await.0;
            let text = "{\"id\":2,\"unsubscribe\":{\"channel\":\"probe\",\"pad\":\"caf\u{e9}\"}}";
            let split = text.find('\u{e9}').expect("é") + 1;
            client
                .send_message(fragment(&text.as_bytes()[..split], true, false))
                .await;
            client
                .send_message(fragment(&text.as_bytes()[split..], false, true))
                .await;
            assert_probe_reply(&client.next_json().await, 2);
        })
        .await;
    bystander.finish().await;
}

/// A line that is not JSON, not a command object, has a wrongly typed field, an id outside u32 or trailing
/// garbage closes with 3501; also after a good command in the same frame (which is still answered first).
/// `data` nested 30,000 deep is opaque payload: the command gets its ordinary answer (here `108`, no rpc
/// handler) without exhausting the server's stack, and the connection stays.
#[tokio::test]
async fn invalid_json_closes_with_3501() {
    let (server, mut bystander) = setup("").await;
    let deep = format!(
        "{{\"id\":2,\"rpc\":{{\"method\":\"m\",\"data\":{}{}}}}}",
        "[".repeat(30_000),
        "]".repeat(30_000)
    );
    let garbage = [
        "not json",
        "[1,2]",
        "{\"id\":",
        "{\"id\":2,\"subscribe\":{\"channel\":5}}",
        "{\"id\":-2,\"subscribe\":{\"channel\":\"x\"}}",
        "{\"id\":4294967296,\"subscribe\":{\"channel\":\"x\"}}",
        "{\"id\":2,\"subscribe\":{\"channel\":\"x\"}} trailing",
    ];
    bystander
        .during(async {
            for garbage in garbage {
                let mut client = Client::connect(&server).await.0;
                client.send_text(garbage).await;
                let what = &garbage[..garbage.len().min(60)];
                assert_closed(&mut client, 3501, what).await;
            }
            let mut client = Client::connect(&server).await.0;
            client.send_text(&format!("{}\nnot json", probe(2))).await;
            assert_probe_reply(&client.next_json().await, 2);
            assert_closed(&mut client, 3501, "good line then garbage").await;

            let mut client = Client::connect(&server).await.0;
            client.send_text(&deep).await;
            let reply = client.reply(2).await;
            assert_eq!(reply["error"]["code"], 108, "deep data: {reply}");
            let reply = client
                .command("unsubscribe", json!({"channel": "probe"}))
                .await;
            assert_eq!(reply["unsubscribe"], json!({}), "still usable: {reply}");
        })
        .await;
    bystander.finish().await;
}

/// Protobuf clients (`?cf_protocol=protobuf`): a connect in a binary frame is answered in a binary frame;
/// truncated varints, lengths past the frame, fields of the wrong type and a text frame close with 3501;
/// data that is not JSON is refused with 107 and the connection stays; unknown fields are skipped.
#[tokio::test]
async fn hostile_protobuf_frames_get_their_codes() {
    let (server, mut bystander) = setup("").await;
    let url = format!("{}?cf_protocol=protobuf", server.ws_url());
    let open = async || -> Ws {
        let mut ws = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(&url))
            .await
            .expect("ws open in time")
            .expect("ws open")
            .0;
        // Length 4: id 1 (field 1), connect (field 4, empty).
        ws.send(Message::binary(vec![4, 0x08, 0x01, 0x22, 0x00]))
            .await
            .expect("send connect");
        match next_message(&mut ws).await {
            // The reply's id 1, then field 5 (the connect result).
            Some(Message::Binary(reply)) => {
                assert_eq!(reply[1..4], [0x08, 0x01, 0x2a], "{reply:?}")
            }
            other => panic!("expected a binary connect reply, got {other:?}"),
        }
        ws
    };
    let garbage: [(&str, Message); 5] = [
        ("a varint that never ends", Message::binary(vec![0xff; 11])),
        (
            "a length past the frame",
            Message::binary(vec![9, 0x08, 0x02]),
        ),
        (
            "id sent as a string",
            Message::binary(vec![3, 0x0a, 0x01, 0x00]),
        ),
        (
            "a nested length past its parent",
            Message::binary(vec![4, 0x2a, 0x09, 0x0a, 0x00]),
        ),
        (
            "a text frame",
            Message::text(r#"{"id":2,"presence":{"channel":"a"}}"#),
        ),
    ];
    bystander
        .during(async {
            for (what, message) in garbage {
                let mut ws = open().await;
                ws.send(message).await.expect("send");
                assert_eq!(close_code(&mut ws).await, 3501, "{what}");
            }
            let mut ws = open().await;
            // id 2, unknown field 99, publish {channel "a", data 0xff}: refused, not closed.
            let command = [
                0x08, 0x02, 0x9a, 0x06, 0x01, b'x', 0x3a, 0x06, 0x0a, 0x01, b'a', 0x12, 0x01, 0xff,
            ];
            let mut frame = vec![command.len() as u8];
            frame.extend(command);
            ws.send(Message::binary(frame)).await.expect("send publish");
            match next_message(&mut ws).await {
                // id 2, then the error (field 2) with code 107 (field 1).
                Some(Message::Binary(reply)) => {
                    assert_eq!(reply[1..6], [0x08, 0x02, 0x12, reply[4], 0x08], "{reply:?}");
                    assert_eq!(reply[6], 107, "{reply:?}");
                }
                other => panic!("expected the error reply, got {other:?}"),
            }
            // Still usable: an empty `ping` command (id 3, field 11) is answered.
            ws.send(Message::binary(vec![4, 0x08, 0x03, 0x5a, 0x00]))
                .await
                .expect("send ping");
            match next_message(&mut ws).await {
                Some(Message::Binary(reply)) => assert_eq!(reply[1..3], [0x08, 0x03], "{reply:?}"),
                other => panic!("expected the ping's reply, got {other:?}"),
            }
        })
        .await;
    bystander.finish().await;
}

/// Messages over `websocket.max_message_size` close with 1009: a real 1 MiB message, a frame whose header
/// announces a terabyte (refused on the header, without waiting for the payload), and a giant message
/// sent in 8 KiB fragments (the limit is per message, not per frame). Just under the limit is served.
#[tokio::test]
async fn giant_frames_and_messages_close_with_1009() {
    let (server, mut bystander) = setup("").await;
    bystander
        .during(async {
            let mut client = Client::connect(&server).await.0;
            client.send_text(&padded_probe(2, 60 * 1024)).await;
            assert_probe_reply(&client.next_json().await, 2);

            let mut ws = connected_raw(&server).await;
            let (mut sink, mut stream) = ws.split();
            let giant = padded_probe(2, 1024 * 1024);
            let (_, code) = futures_util::join!(
                send_all(&mut sink, std::iter::once(Message::text(giant))),
                close_code(&mut stream)
            );
            assert_eq!(code, 1009, "1 MiB message");

            // A masked text frame header announcing 2^40 bytes, then only a few of them.
            ws = connected_raw(&server).await;
            let mut header = vec![0x81, 0x80 | 127];
            header.extend_from_slice(&(1u64 << 40).to_be_bytes());
            header.extend_from_slice(&[1, 2, 3, 4]);
            header.extend_from_slice(b"{\"id\":2");
            match ws.get_mut() {
                MaybeTlsStream::Plain(tcp) => tcp.write_all(&header).await.expect("write"),
                _ => unreachable!("plain test server"),
            }
            assert_eq!(close_code(&mut ws).await, 1009, "terabyte frame header");

            let ws = connected_raw(&server).await;
            let (mut sink, mut stream) = ws.split();
            let chunk = vec![b'x'; 8 * 1024];
            let fragments = (0..128).map(|i| fragment(&chunk, i == 0, i == 127));
            let (_, code) =
                futures_util::join!(send_all(&mut sink, fragments), close_code(&mut stream));
            assert_eq!(code, 1009, "1 MiB in 8 KiB fragments");
        })
        .await;
    bystander.finish().await;
}

/// `[websocket] max_message_size` sets the limit: with 2 KiB, 1 KiB is served and 4 KiB closes with 1009.
#[tokio::test]
async fn configured_message_limit_is_enforced() {
    let (server, mut bystander) = setup("[websocket]\nmax_message_size = 2048").await;
    bystander
        .during(async {
            let mut client = Client::connect(&server).await.0;
            client.send_text(&padded_probe(2, 1024)).await;
            assert_probe_reply(&client.next_json().await, 2);
            client.send_text(&padded_probe(3, 4096)).await;
            assert_closed(&mut client, 1009, "4 KiB message").await;
        })
        .await;
    bystander.finish().await;
}

/// A flood of tiny fragments: one-byte continuations add up to the message limit and close with 1009;
/// empty continuations that never finish a message before `connect` are closed by the connect deadline
/// (3502) — the flood neither completes a command nor keeps the connection alive.
#[tokio::test]
async fn fragment_floods_are_closed() {
    let (server, mut bystander) = setup("[client]\nconnect_timeout = \"500ms\"").await;
    bystander
        .during(async {
            let (mut sink, mut stream) = connected_raw(&server).await.split();
            let fragments = std::iter::once(fragment(b"{", true, false))
                .chain((0..70 * 1024).map(|_| fragment(b" ", false, false)));
            let (_, code) =
                futures_util::join!(send_all(&mut sink, fragments), close_code(&mut stream));
            assert_eq!(code, 1009, "64 Ki one-byte fragments");

            let (mut sink, mut stream) = open_raw(&server).await.split();
            let endless = std::iter::once(fragment(b"", true, false))
                .chain(std::iter::repeat_with(|| fragment(b"", false, false)));
            let code = tokio::select! {
                code = close_code(&mut stream) => code,
                () = send_all(&mut sink, endless) => close_code(&mut stream).await,
            };
            assert_eq!(code, 3502, "endless empty fragments before connect");
        })
        .await;
    bystander.finish().await;
}

/// 200 connections sending assorted garbage in parallel each get their close code.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_garbage_connections_get_their_codes() {
    let (server, mut bystander) = setup("").await;
    /// Garbage client `i` sends, and the close it must get.
    fn garbage(i: usize) -> (u16, &'static str) {
        match i % 6 {
            0 => (3501, "non-JSON text"),
            1 => (3501, "binary frame"),
            2 => (3501, "empty frame"),
            3 => (1007, "invalid UTF-8"),
            4 => (1009, "oversized message"),
            _ => (3501, "garbage after connect and subscribe"),
        }
    }
    async fn flood_client(url: String, i: usize) -> (usize, u16, String) {
        let mut client = Client::open_url(&url).await;
        match i % 6 {
            0 => client.send_text("}{ definitely not json").await,
            1 => client.send_message(Message::binary(vec![0u8; 16])).await,
            2 => client.send_text("").await,
            3 => {
                let bad = Bytes::from_static(b"{\"id\":1,\"connect\":{\"name\":\"\xff\"}}");
                let frame = Frame::message(bad, OpCode::Data(Data::Text), true);
                client.send_message(Message::Frame(frame)).await
            }
            4 => client.send_text(&padded_probe(1, 70 * 1024)).await,
            _ => {
                let reply = client.command("connect", json!({})).await;
                assert!(reply.get("connect").is_some(), "{reply}");
                let reply = client.subscribe(json!({"channel": "other"})).await;
                assert!(reply.get("subscribe").is_some(), "{reply}");
                client.send_text("\u{1}garbage").await;
            }
        }
        let (code, reason) = client.expect_close().await;
        (i, code, reason)
    }
    let url = server.ws_url();
    bystander
        .during(async {
            let tasks: Vec<_> = (0..200)
                .map(|i| tokio::spawn(flood_client(url.clone(), i)))
                .collect();
            for result in join_all(tasks).await {
                let (i, code, reason) = result.expect("flood client");
                let (expected, what) = garbage(i);
                assert_eq!(code, expected, "client {i} ({what}): {reason:?}");
            }
        })
        .await;
    bystander.finish().await;
}

// ------------------------------------------------------------------------------ connection floods ---

/// Connections opened and abandoned before their request is complete (nothing sent, half a request line,
/// headers without their end, headers trickled a byte at a time) are closed after
/// `limits.handshake_timeout`, and an API request whose body never completes gets 408 after it; while they
/// are held, new WebSocket clients and API calls are served.
#[tokio::test]
async fn slowloris_connections_are_closed_after_the_handshake_timeout() {
    let (server, mut bystander) = setup("[limits]\nhandshake_timeout = \"1s\"").await;
    const SLOW: usize = 200;
    let request = format!(
        "GET /connection/websocket HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        server.addr
    );
    bystander
        .during(async {
            let mut slow = Vec::new();
            for i in 0..SLOW {
                let mut tcp = attacker_tcp(&server).await;
                match i % 3 {
                    0 => {}
                    1 => tcp.write_all(b"GET /connection/webs").await.expect("write"),
                    _ => tcp.write_all(request.as_bytes()).await.expect("write"),
                }
                slow.push(tcp);
            }
            // One more trickles its request a byte at a time, as a slowloris client does.
            let trickler = {
                let mut tcp = attacker_tcp(&server).await;
                let request = request.clone();
                tokio::spawn(async move {
                    let mut every = tokio::time::interval(Duration::from_millis(50));
                    for byte in request.as_bytes() {
                        every.tick().await;
                        if tcp.write_all(&[*byte]).await.is_err() {
                            break;
                        }
                    }
                    assert_tcp_closed(&mut tcp, "trickling client").await;
                })
            };
            let mut slow_body = attacker_tcp(&server).await;
            let head = format!(
                "POST /api/info HTTP/1.1\r\nHost: {}\r\nX-API-Key: {API_KEY}\r\nContent-Length: 100\r\n\r\n{{",
                server.addr
            );
            slow_body.write_all(head.as_bytes()).await.expect("write");
            // Others are served while the slow connections are held.
            let (mut client, _) = Client::connect(&server).await;
            let reply = client.subscribe(json!({"channel": "fresh"})).await;
            assert!(reply.get("subscribe").is_some(), "{reply}");
            server.publish("fresh", json!({"ok": true})).await;
            assert_eq!(
                publication(&client.next_push().await, "fresh")["data"],
                json!({"ok": true})
            );
            for (i, tcp) in slow.iter_mut().enumerate() {
                assert_tcp_closed(tcp, &format!("slow connection {i}")).await;
            }
            trickler.await.expect("trickler");
            let line = status_line(&mut slow_body).await;
            assert!(line.starts_with("HTTP/1.1 408"), "slow body: {line}");
        })
        .await;
    bystander.finish().await;
}

/// Thousands of WebSocket connections that never send `connect` are each closed with 3502 after
/// `client.connect_timeout`, and the server keeps serving meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_connections_are_closed_as_stale() {
    raise_open_file_limit();
    const IDLE: usize = 2_000;
    let (server, mut bystander) = setup("[client]\nconnect_timeout = \"1s\"").await;
    let url = server.ws_url();
    // Bounds the handshakes in flight, so the listen backlog is never the bottleneck.
    let opening = Arc::new(Semaphore::new(200));
    bystander
        .during(async {
            let idle: Vec<_> = (0..IDLE)
                .map(|i| {
                    let (url, opening) = (url.clone(), opening.clone());
                    tokio::spawn(async move {
                        let permit = opening.acquire_owned().await.expect("semaphore");
                        let (mut ws, _) =
                            tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
                                .await
                                .unwrap_or_else(|_| panic!("idle connection {i} opened in time"))
                                .unwrap_or_else(|e| panic!("idle connection {i}: {e}"));
                        drop(permit);
                        (i, close_code(&mut ws).await)
                    })
                })
                .collect();
            for result in join_all(idle).await {
                let (i, code) = result.expect("idle connection task");
                assert_eq!(code, 3502, "idle connection {i}");
            }
        })
        .await;
    bystander.finish().await;
}

// ------------------------------------------------------------------------------- command floods ---

/// Ping floods: 10,000 WebSocket ping frames from a client that does not read are answered with pongs and
/// leave the connection healthy (at most one pong waits per connection); 10,000 `{}` pongs are free (they
/// do not count against the command rate); `ping` commands do count: `111`, then closed with 3013.
#[tokio::test]
async fn ping_floods_are_absorbed_or_refused() {
    let (server, mut bystander) = setup(
        "[limits]\ncommands_per_second = 5\ncommand_burst = 10\ndisconnect_after_refused_commands = 20",
    )
    .await;
    bystander
        .during(async {
            let mut ws = connected_raw(&server).await;
            let pings =
                (0..10_000u32).map(|i| Message::Ping(Bytes::from(i.to_be_bytes().to_vec())));
            send_all(&mut ws, pings).await;
            ws.send(Message::text(probe(2))).await.expect("send probe");
            let mut pongs = 0;
            loop {
                match next_message(&mut ws).await {
                    Some(Message::Pong(_)) => pongs += 1,
                    Some(Message::Text(text)) => {
                        let reply: Value = serde_json::from_str(&text).expect("JSON");
                        assert_probe_reply(&reply, 2);
                        break;
                    }
                    other => panic!("expected pongs then the probe reply, got {other:?}"),
                }
            }
            assert!(pongs >= 1, "pings are answered");

            let mut client = Client::connect(&server).await.0;
            let pongs = vec!["{}"; 10_000].join("\n");
            client.send_text(&pongs).await;
            for _ in 0..100 {
                client.send_text("{}").await;
            }
            let reply = client
                .command("unsubscribe", json!({"channel": "probe"}))
                .await;
            assert_eq!(
                reply["unsubscribe"],
                json!({}),
                "pongs are not commands: {reply}"
            );

            let mut client = Client::connect(&server).await.0;
            let flood: Vec<String> = (2..200)
                .map(|id| json!({"id": id, "ping": {}}).to_string())
                .collect();
            client.send_text(&flood.join("\n")).await;
            let mut refused = 0;
            let code = loop {
                match client.receive().await {
                    herald_tests::Received::Json(reply) => {
                        if reply["error"]["code"] == 111 {
                            refused += 1;
                        }
                    }
                    herald_tests::Received::Close(code, _) => break code,
                    herald_tests::Received::Ping => {}
                }
            };
            assert!(refused >= 1, "refused with 111 before the close");
            assert_eq!(code, 3013, "persistent ping-command flood");
        })
        .await;
    bystander.finish().await;
}

/// Subscribe floods: with `client.max_channels = 16`, 100 subscribes in one frame get 16 subscriptions and
/// 84 error `106` replies, and the connection stays (an unsubscribe makes room again); with a low command
/// rate, a flood gets `111` replies and is then closed with 3013.
#[tokio::test]
async fn subscribe_floods_hit_the_channel_limit_and_the_command_rate() {
    let (server, mut bystander) = setup(
        "[client]\nmax_channels = 16\n[limits]\ncommands_per_second = 50\ncommand_burst = 200\n\
         disconnect_after_refused_commands = 20",
    )
    .await;
    bystander
        .during(async {
            let mut client = Client::connect(&server).await.0;
            let flood: Vec<String> = (0..100)
                .map(|i| {
                    json!({"id": 100 + i, "subscribe": {"channel": format!("c{i}")}}).to_string()
                })
                .collect();
            client.send_text(&flood.join("\n")).await;
            let (mut subscribed, mut limited) = (0, 0);
            for i in 0..100 {
                let reply = client.reply(100 + i).await;
                if reply.get("subscribe").is_some() {
                    subscribed += 1;
                } else {
                    assert_eq!(reply["error"]["code"], 106, "{reply}");
                    limited += 1;
                }
            }
            assert_eq!((subscribed, limited), (16, 84));
            let reply = client
                .command("unsubscribe", json!({"channel": "c0"}))
                .await;
            assert_eq!(reply["unsubscribe"], json!({}), "{reply}");
            let reply = client.subscribe(json!({"channel": "c-again"})).await;
            assert!(reply.get("subscribe").is_some(), "room again: {reply}");

            let mut client = Client::connect(&server).await.0;
            let flood: Vec<String> = (0..1_000)
                .map(|i| {
                    json!({"id": 2 + i, "subscribe": {"channel": format!("f{i}")}}).to_string()
                })
                .collect();
            client.send_text(&flood.join("\n")).await;
            let mut codes = std::collections::BTreeSet::new();
            let close = loop {
                match client.receive().await {
                    herald_tests::Received::Json(reply) => {
                        if let Some(code) = reply["error"]["code"].as_u64() {
                            codes.insert(code);
                        }
                    }
                    herald_tests::Received::Close(code, _) => break code,
                    herald_tests::Received::Ping => {}
                }
            };
            assert!(codes.contains(&106), "channel limit first: {codes:?}");
            assert!(codes.contains(&111), "then the rate: {codes:?}");
            assert_eq!(close, 3013, "persistent subscribe flood");
        })
        .await;
    bystander.finish().await;
}

// ---------------------------------------------------------------------------------------- HTTP API ---

/// Wrong API keys: after `limits.api_auth_failures_per_minute` failures from an address, every request
/// from it — even with the right key — gets 429 with `Retry-After` until `limits.api_auth_backoff` has
/// passed; other addresses are not affected; afterwards the right key works again.
#[tokio::test]
async fn repeated_wrong_keys_are_refused_for_a_while() {
    let (server, mut bystander) =
        setup("[limits]\napi_auth_failures_per_minute = 5\napi_auth_backoff = \"1s\"").await;
    let url = format!("{}/info", server.api_url());
    let attacker = attacker_http();
    bystander
        .during(async {
            let mut statuses = Vec::new();
            let mut retry_after = None;
            for i in 0..20 {
                let response = attacker
                    .post(&url)
                    .header("X-API-Key", format!("guess-{i}"))
                    .body("{}")
                    .send()
                    .await
                    .expect("api request");
                statuses.push(response.status().as_u16());
                if let Some(value) = response.headers().get("retry-after") {
                    retry_after = Some(
                        value
                            .to_str()
                            .expect("ascii")
                            .parse::<u64>()
                            .expect("seconds"),
                    );
                }
            }
            assert_eq!(statuses[..5], [401; 5], "{statuses:?}");
            assert_eq!(statuses[5..], [429; 15], "{statuses:?}");
            let retry_after = retry_after.expect("429 carries Retry-After");
            assert!((1..=2).contains(&retry_after), "{retry_after}");

            let right = attacker
                .post(&url)
                .header("X-API-Key", API_KEY)
                .body("{}")
                .send()
                .await
                .expect("api request");
            assert_eq!(
                right.status().as_u16(),
                429,
                "the key is not even looked at"
            );
            let (status, body) = server.api("info", json!({})).await;
            assert_eq!(status, 200, "another address is not affected: {body}");

            // The server said when to come back; after that the right key works again.
            tokio::time::sleep(Duration::from_secs(retry_after)).await;
            let right = attacker
                .post(&url)
                .header("X-API-Key", API_KEY)
                .body("{}")
                .send()
                .await
                .expect("api request");
            assert_eq!(right.status().as_u16(), 200);
        })
        .await;
    bystander.finish().await;
}

/// Over `limits.api_requests_per_second_per_ip`, API requests get 429 with `Retry-After`; another
/// address has its own budget.
#[tokio::test]
async fn api_request_rate_is_limited_per_address() {
    let (server, mut bystander) = setup("[limits]\napi_requests_per_second_per_ip = 20").await;
    let url = format!("{}/info", server.api_url());
    let attacker = attacker_http();
    bystander
        .during(async {
            let requests = (0..100).map(|_| {
                attacker
                    .post(&url)
                    .header("X-API-Key", API_KEY)
                    .body("{}")
                    .send()
            });
            let responses = join_all(requests).await;
            let (mut ok, mut limited) = (0, 0);
            for response in responses {
                let response = response.expect("api request");
                match response.status().as_u16() {
                    200 => ok += 1,
                    429 => {
                        assert!(response.headers().contains_key("retry-after"));
                        limited += 1;
                    }
                    other => panic!("unexpected status {other}"),
                }
            }
            assert!(ok >= 20 && limited >= 1, "{ok} answered, {limited} refused");
            let (status, body) = server.api("info", json!({})).await;
            assert_eq!(status, 200, "another address has its own budget: {body}");
        })
        .await;
    bystander.finish().await;
}

/// Bodies over `http_api.max_body_size` get 413 and are not acted on: a large body; a request announcing
/// 10 GB (answered without waiting for the body); a chunked body that never ends (answered once the limit
/// is passed). A body under the limit on the same server works.
#[tokio::test]
async fn oversized_api_bodies_are_refused_with_413() {
    let (server, mut bystander) = setup("[http_api]\nmax_body_size = 4096").await;
    let url = format!("{}/publish", server.api_url());
    bystander
        .during(async {
            let small = json!({"channel": "news", "data": "x".repeat(3000)}).to_string();
            let response = attacker_http()
                .post(&url)
                .header("X-API-Key", API_KEY)
                .body(small)
                .send()
                .await
                .expect("api request");
            assert_eq!(response.status().as_u16(), 200);
            let big = json!({"channel": "news", "data": "x".repeat(1 << 20)}).to_string();
            let response = attacker_http()
                .post(&url)
                .header("X-API-Key", API_KEY)
                .body(big)
                .send()
                .await
                .expect("api request");
            assert_eq!(response.status().as_u16(), 413);

            let head = |length: &str| {
                format!(
                    "POST /api/publish HTTP/1.1\r\nHost: {}\r\nX-API-Key: {API_KEY}\r\n{length}\r\n",
                    server.addr
                )
            };
            let mut tcp = attacker_tcp(&server).await;
            tcp.write_all(head("Content-Length: 10000000000\r\n").as_bytes())
                .await
                .expect("write");
            tcp.write_all(b"{\"channel\":\"news\",\"data\":\"")
                .await
                .expect("write");
            assert!(status_line(&mut tcp).await.starts_with("HTTP/1.1 413"));

            let tcp = attacker_tcp(&server).await;
            let (mut reader, mut writer) = tcp.into_split();
            writer
                .write_all(head("Transfer-Encoding: chunked\r\n").as_bytes())
                .await
                .expect("write");
            let endless = async move {
                let chunk = format!("400\r\n{}\r\n", "x".repeat(0x400));
                while writer.write_all(chunk.as_bytes()).await.is_ok() {}
            };
            // The reader keeps going after the writer fails: the answer may be read after the close.
            let (line, ()) = futures_util::join!(status_line(&mut reader), endless);
            assert!(line.starts_with("HTTP/1.1 413"), "{line}");

            let (_, history) = server
                .api("history", json!({"channel": "news", "limit": -1}))
                .await;
            let stored = history["result"]["publications"].as_array().map(Vec::len);
            assert_eq!(stored, Some(1), "only the small publish is stored: {history}");
        })
        .await;
    bystander.finish().await;
}

/// Reads an HTTP response's status line.
async fn status_line(reader: &mut (impl AsyncReadExt + Unpin)) -> String {
    let mut bytes = Vec::new();
    tokio::time::timeout(WAIT, async {
        let mut byte = [0u8; 1];
        while !bytes.ends_with(b"\r\n") {
            match reader.read(&mut byte).await {
                Ok(1) => {}
                _ => break,
            }
            bytes.push(byte[0]);
        }
    })
    .await
    .expect("response in time");
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Malformed API bodies get 400 with a message saying so: truncated, not JSON, not UTF-8, wrongly typed,
/// not an object; nothing is published. `data` nested 200,000 deep is opaque payload: published as is,
/// without exhausting the server's stack.
#[tokio::test]
async fn malformed_api_bodies_are_refused_with_400() {
    let (server, mut bystander) = setup("").await;
    let url = format!("{}/publish", server.api_url());
    let deep = format!(
        "{{\"channel\":\"news\",\"data\":{}{}}}",
        "[".repeat(200_000),
        "]".repeat(200_000)
    );
    let bodies: Vec<Vec<u8>> = vec![
        b"{\"channel\": \"news\", \"data\": ".to_vec(),
        b"not json at all".to_vec(),
        b"{\"channel\": \"news\", \"data\": \"\xff\xfe\"}".to_vec(),
        b"{\"channel\": 5, \"data\": {}}".to_vec(),
        b"[\"news\", {}]".to_vec(),
    ];
    let client = attacker_http();
    bystander
        .during(async {
            for body in bodies {
                let what = String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned();
                let response = client
                    .post(&url)
                    .header("X-API-Key", API_KEY)
                    .body(body)
                    .send()
                    .await
                    .expect("api request");
                assert_eq!(response.status().as_u16(), 400, "{what}");
                let text = response.text().await.expect("body");
                assert!(text.to_lowercase().contains("malformed"), "{what}: {text}");
            }
            let (_, history) = server
                .api("history", json!({"channel": "news", "limit": -1}))
                .await;
            let stored = history["result"]["publications"]
                .as_array()
                .map_or(0, Vec::len);
            assert_eq!(stored, 0, "nothing is published: {history}");
            let response = client
                .post(&url)
                .header("X-API-Key", API_KEY)
                .body(deep)
                .send()
                .await
                .expect("api request");
            assert_eq!(response.status().as_u16(), 200, "deep data is opaque");
        })
        .await;
    bystander.finish().await;
}
