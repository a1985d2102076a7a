//! The HTTP emulation of a bidirectional connection, for clients whose WebSocket is blocked: a stream of
//! replies (`POST /connection/http_stream`, newline-delimited JSON; `GET /connection/sse`, Server-Sent
//! Events) opened with the connect command, and commands sent separately (`POST /emulation`) naming the
//! session. Raw HTTP clients here, and centrifuge-js falling back to each transport under Node and in
//! Chromium. Last, the unidirectional streams (`uni_http_stream`, `uni_sse`, `uni_websocket`) for clients
//! without an SDK.

use std::time::Duration;

use herald::testing::RedisServer;
use herald_tests::{API_KEY, Client, TestServer, WAIT, publication, require_node};
use serde_json::{Value, json};

/// How an [`Emulated`] client reads its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    HttpStream,
    Sse,
}

/// Messages off a stream of either kind.
struct Reader {
    response: reqwest::Response,
    buffered: String,
    kind: Kind,
    /// The id of the last SSE event that had one (what a browser sends back as `Last-Event-ID`).
    last_id: Option<String>,
}

impl Reader {
    fn new(response: reqwest::Response, kind: Kind) -> Self {
        Self {
            response,
            buffered: String::new(),
            kind,
            last_id: None,
        }
    }

    /// The next message, or `None` when the stream ended.
    async fn read_message(&mut self) -> Option<Value> {
        let separator = match self.kind {
            Kind::HttpStream => "\n",
            Kind::Sse => "\n\n",
        };
        loop {
            if let Some(end) = self.buffered.find(separator) {
                let item: String = self.buffered.drain(..end + separator.len()).collect();
                if let Some(id) = item.lines().find_map(|line| line.strip_prefix("id: ")) {
                    self.last_id = Some(id.to_owned());
                }
                let text = match self.kind {
                    Kind::HttpStream => item.trim_end().to_owned(),
                    Kind::Sse => item
                        .lines()
                        .filter_map(|line| line.strip_prefix("data: "))
                        .collect::<Vec<_>>()
                        .join("\n"),
                };
                return Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")));
            }
            let chunk = self.response.chunk().await.expect("read the stream")?;
            self.buffered
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8 stream"));
        }
    }
}

/// A client on the emulation: its stream, and where its commands go.
struct Emulated {
    stream: Reader,
    session: String,
    node: String,
    base: String,
    http: reqwest::Client,
    next_id: u32,
    /// Messages that came while waiting for a reply, for [`Emulated::next_message`].
    pending: std::collections::VecDeque<Value>,
}

impl Emulated {
    /// Opens the stream with a connect command and reads the connect reply.
    async fn connect(server: &TestServer, kind: Kind) -> (Self, Value) {
        let response = open(server, kind, r#"{"id":1,"connect":{"name":"test"}}"#, &[]).await;
        assert_eq!(response.status(), 200, "{:?}", response.headers());
        let headers = response.headers();
        assert_eq!(headers["cache-control"], "no-cache");
        assert_eq!(headers["x-accel-buffering"], "no");
        let mut client = Self {
            stream: Reader::new(response, kind),
            session: String::new(),
            node: String::new(),
            base: format!("http://{}", server.addr),
            http: reqwest::Client::new(),
            next_id: 1,
            pending: std::collections::VecDeque::new(),
        };
        let reply = client.next_message().await;
        let result = reply["connect"].clone();
        assert!(result.is_object(), "{reply}");
        client.session = result["session"].as_str().expect("a session").to_owned();
        client.node = result["node"].as_str().expect("a node").to_owned();
        (client, result)
    }

    /// The next message on the stream (pings answered on the way, as the SDKs do).
    async fn next_message(&mut self) -> Value {
        match self.pending.pop_front() {
            Some(message) => message,
            None => self.next_on_stream().await,
        }
    }

    /// The next message on the stream itself, answering pings.
    async fn next_on_stream(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.stream.read_message())
                .await
                .expect("a message within the wait")
                .expect("the stream is open");
            if message == json!({}) {
                assert_eq!(self.send("{}").await, 204);
                continue;
            }
            return message;
        }
    }

    /// Posts commands to the session; the HTTP status.
    async fn send(&self, commands: &str) -> u16 {
        self.post(json!({"session": self.session, "node": self.node, "data": commands}))
            .await
    }

    async fn post(&self, body: Value) -> u16 {
        self.http
            .post(format!("{}/emulation", self.base))
            .json(&body)
            .send()
            .await
            .expect("emulation request")
            .status()
            .as_u16()
    }

    /// Sends one command and returns its reply.
    async fn command(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({"id": id, method: params}).to_string();
        assert_eq!(self.send(&command).await, 204);
        loop {
            let message = self.next_on_stream().await;
            if message["id"] == id {
                return message;
            }
            self.pending.push_back(message);
        }
    }
}

/// Opens a stream of `kind` with `connect` as its first command.
async fn open(
    server: &TestServer,
    kind: Kind,
    connect: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let http = reqwest::Client::new();
    let request = match kind {
        Kind::HttpStream => http
            .post(format!("http://{}/connection/http_stream", server.addr))
            .header("content-type", "application/json")
            .body(connect.to_owned()),
        Kind::Sse => http
            .get(format!("http://{}/connection/sse", server.addr))
            .query(&[("cf_connect", connect)]),
    };
    let request = headers.iter().fold(request, |request, (name, value)| {
        request.header(*name, *value)
    });
    request.send().await.expect("open the stream")
}

/// Lets clients publish, which the tests do from emulated clients.
const PUBLISHING: &str =
    "[channel.defaults]\nallow_publish_for_client = true\nallow_publish_for_anonymous = true";

async fn both_kinds_carry_a_session(kind: Kind) {
    let server = TestServer::start(PUBLISHING).await;
    let (mut client, result) = Emulated::connect(&server, kind).await;
    assert_eq!(result["node"], server.node.id);
    let reply = client
        .command("subscribe", json!({"channel": "news", "recoverable": true}))
        .await;
    assert!(reply["subscribe"].is_object(), "{reply}");
    server.publish("news", json!({"n": 1})).await;
    let push = client.next_message().await;
    assert_eq!(publication(&push["push"], "news")["data"], json!({"n": 1}));

    // A WebSocket client of the same channel sees the emulated client's publication.
    let (mut ws, _) = Client::connect(&server).await;
    ws.subscribe(json!({"channel": "news"})).await;
    let reply = client
        .command("publish", json!({"channel": "news", "data": {"n": 2}}))
        .await;
    assert!(reply.get("error").is_none(), "{reply}");
    assert_eq!(
        publication(&ws.next_push().await, "news")["data"],
        json!({"n": 2})
    );

    // The API's disconnect ends the stream with a disconnect push, the emulation's close frame.
    let client_id = result["client"].as_str().expect("client id");
    let (status, body) = server
        .api(
            "disconnect",
            json!({"client": client_id, "user": "", "disconnect": {"code": 4000, "reason": "bye"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut ended = None;
    while let Some(message) = client.stream.read_message().await {
        if message
            .get("push")
            .is_some_and(|p| p.get("disconnect").is_some())
        {
            ended = Some(message);
        }
    }
    let ended = ended.expect("a disconnect push before the end");
    assert_eq!(
        ended["push"]["disconnect"],
        json!({"code": 4000, "reason": "bye"}),
        "{ended}"
    );
    // The session is gone from the node: its commands are answered 204 and go nowhere.
    assert_eq!(
        client
            .send(r#"{"id":9,"presence":{"channel":"news"}}"#)
            .await,
        204
    );
}

#[tokio::test]
async fn http_stream_carries_a_whole_session() {
    both_kinds_carry_a_session(Kind::HttpStream).await;
}

#[tokio::test]
async fn sse_carries_a_whole_session() {
    both_kinds_carry_a_session(Kind::Sse).await;
}

/// The emulation obeys the same rules as WebSocket: origins, request sizes, channel permissions; a session
/// cannot be driven by someone who does not know its name.
#[tokio::test]
async fn the_emulation_is_no_way_around_the_rules() {
    let server = TestServer::start(
        r#"
        [websocket]
        allowed_origins = ["https://app.example"]
        max_message_size = 4096
        [channel.namespaces.private]
        allow_subscribe_for_anonymous = false
        allow_subscribe_for_client = false
        "#,
    )
    .await;
    let connect = r#"{"id":1,"connect":{}}"#;
    for kind in [Kind::HttpStream, Kind::Sse] {
        let refused = open(
            &server,
            kind,
            connect,
            &[("origin", "https://evil.example")],
        )
        .await;
        assert_eq!(refused.status(), 403, "{kind:?}");
        let allowed = open(&server, kind, connect, &[("origin", "https://app.example")]).await;
        assert_eq!(allowed.status(), 200, "{kind:?}");
        assert_eq!(
            allowed.headers()["access-control-allow-origin"],
            "https://app.example"
        );
    }
    let preflight = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("http://{}/emulation", server.addr),
        )
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("preflight");
    assert_eq!(preflight.status(), 403);

    let (mut client, _) = Emulated::connect(&server, Kind::HttpStream).await;
    let reply = client
        .command("subscribe", json!({"channel": "private:room"}))
        .await;
    assert_eq!(reply["error"]["code"], 103, "permission denied: {reply}");
    let huge = "x".repeat(8192);
    let too_large = client
        .send(&json!({"id": 50, "publish": {"channel": "news", "data": huge}}).to_string())
        .await;
    assert_eq!(too_large, 413);
    // A session this node holds is served whatever the node field says; one it does not hold is passed on
    // to the named node (here nobody), and a name that is no node's id is refused.
    let elsewhere = client
        .post(json!({"session": client.session, "node": "another-node", "data": "{}"}))
        .await;
    assert_eq!(elsewhere, 204);
    let unknown = client
        .post(json!({"session": "made-up", "node": "another-node", "data": "{}"}))
        .await;
    assert_eq!(unknown, 204);
    let overlong = client
        .post(json!({"session": "made-up", "node": "n".repeat(100), "data": "{}"}))
        .await;
    assert_eq!(overlong, 400);
    let bad = reqwest::Client::new()
        .post(format!("http://{}/emulation", server.addr))
        .body("not json")
        .send()
        .await
        .expect("emulation request");
    assert_eq!(bad.status(), 400);
    // Still connected and working after all that.
    let reply = client
        .command("subscribe", json!({"channel": "news"}))
        .await;
    assert!(reply["subscribe"].is_object(), "{reply}");
}

/// One address cannot make a node pass commands on without bound: past
/// `limits.emulation_requests_per_second_per_ip` its emulation requests get `429` with `Retry-After`.
#[tokio::test]
async fn emulation_requests_are_bounded_per_address() {
    let server = TestServer::start("[limits]\nemulation_requests_per_second_per_ip = 1\n").await;
    let post = || {
        reqwest::Client::new()
            .post(format!("http://{}/emulation", server.addr))
            .json(&json!({"session": "made-up", "node": "another-node", "data": "{}"}))
            .send()
    };
    let first = post().await.expect("emulation request");
    assert_eq!(first.status(), 204);
    let second = post().await.expect("emulation request");
    assert_eq!(second.status(), 429);
    assert_eq!(second.headers()["retry-after"], "1");
}

/// Behind a load balancer without sticky sessions, a client's commands may reach a node that does not hold
/// its session: they are passed on through Redis to the node that does, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_posted_to_another_node_reach_the_session() {
    let redis = RedisServer::start();
    let holding = TestServer::start_on_redis(&redis.url(), PUBLISHING).await;
    let other = TestServer::start_on_redis(&redis.url(), PUBLISHING).await;
    for kind in [Kind::HttpStream, Kind::Sse] {
        let (mut client, result) = Emulated::connect(&holding, kind).await;
        assert_eq!(result["node"], holding.node.id);
        // Every command from now on goes to the other node.
        client.base = format!("http://{}", other.addr);
        let reply = client
            .command("subscribe", json!({"channel": "relayed"}))
            .await;
        assert!(reply["subscribe"].is_object(), "{kind:?}: {reply}");
        for n in 0..5 {
            let reply = client
                .command("publish", json!({"channel": "relayed", "data": {"n": n}}))
                .await;
            assert!(reply.get("error").is_none(), "{reply}");
            let push = client.next_message().await;
            assert_eq!(
                publication(&push["push"], "relayed")["data"],
                json!({"n": n})
            );
        }
        let reply = client
            .command("unsubscribe", json!({"channel": "relayed"}))
            .await;
        assert!(reply["unsubscribe"].is_object(), "{reply}");
    }
}

/// centrifuge-js with WebSocket unavailable falls back to HTTP streaming, and with that unavailable too,
/// to SSE: connects, subscribes, receives, publishes, and recovers after the server drops it; its
/// Protobuf build over HTTP streaming too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centrifuge_js_falls_back_to_each_emulated_transport() {
    require_node(&["centrifuge", "ws", "eventsource"]).await;
    let server = TestServer::start(PUBLISHING).await;
    for (transport, protocol) in [
        ("http_stream", "json"),
        ("sse", "json"),
        ("http_stream", "protobuf"),
    ] {
        let output = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new("node")
                .arg("tests/e2e/js/emulation.js")
                .current_dir(herald_tests::cluster::REPO_ROOT)
                .env("HERALD_BASE_URL", format!("http://{}", server.addr))
                .env("HERALD_API_URL", server.api_url())
                .env("HERALD_API_KEY", API_KEY)
                .env("HERALD_CHANNEL", format!("fallback-{transport}-{protocol}"))
                .env("HERALD_TRANSPORT", transport)
                .env("HERALD_PROTOCOL", protocol)
                .output(),
        )
        .await
        .expect("the script finishes")
        .expect("node runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("PASS"),
            "{transport} ({protocol}): {}\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// centrifuge-js in headless Chromium without WebSocket falls back to HTTP streaming, and without
/// streaming `fetch` to SSE, over HTTPS where the browser speaks HTTP/2: it receives every publication in
/// order, publishes, and recovers after the server drops it; and a page with a plain `EventSource` on
/// `uni_sse` receives what the connect plugin subscribes it to, and recovers by itself through
/// `Last-Event-ID` (see `tests/e2e/js/browser-fallback.js`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_without_websocket_falls_back_over_http2() {
    require_node(&["centrifuge", "puppeteer-core"]).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("certificate parameters");
    let key = rcgen::KeyPair::generate().expect("key pair");
    let cert = params.self_signed(&key).expect("self-signed certificate");
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).expect("write the certificate");
    std::fs::write(&key_file, key.serialize_pem()).expect("write the key");
    // Token `good` is alice, subscribed to `browser-plain`; other connects pass to the defaults.
    let (_plugins, plugins) = herald_tests::scripted_plugin(
        "id = \"s\"\nconnect_user = \"alice\"\nconnect_channels = [\"browser-plain\"]\n",
    );
    let server = TestServer::start(&format!(
        "{plugins}{PUBLISHING}\nforce_recovery = true\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        cert_file.display().to_string(),
        key_file.display().to_string()
    ))
    .await;
    let base = format!("https://127.0.0.1:{}", server.addr.port());
    let run = herald_tests::cluster::SdkScript::start(
        "node",
        "tests/e2e/js/browser-fallback.js",
        &[
            ("HERALD_BASE_URL", base.clone()),
            ("HERALD_API_URL", format!("{base}/api")),
            ("HERALD_API_KEY", API_KEY.to_owned()),
            ("HERALD_CHANNEL", "browser".to_owned()),
            ("NODE_EXTRA_CA_CERTS", cert_file.display().to_string()),
        ],
    );
    run.assert_passes().await;
}

// ------------------------------------------------------------------------------ unidirectional ---

/// Opens a unidirectional stream with `request` (`uni_http_stream` posts it; `uni_sse` puts it in
/// `cf_connect`) and returns it with its first message, the connect push.
async fn uni(server: &TestServer, kind: Kind, request: &str) -> (Reader, Value) {
    let http = reqwest::Client::new();
    let response = match kind {
        Kind::HttpStream => http
            .post(format!("http://{}/connection/uni_http_stream", server.addr))
            .body(request.to_owned()),
        Kind::Sse => http
            .get(format!("http://{}/connection/uni_sse", server.addr))
            .query(&[("cf_connect", request)]),
    }
    .send()
    .await
    .expect("open the stream");
    assert_eq!(response.status(), 200);
    let mut reader = Reader::new(response, kind);
    let connect = reader.next().await;
    (reader, connect)
}

impl Reader {
    /// The next message, within the wait.
    async fn next(&mut self) -> Value {
        tokio::time::timeout(WAIT, self.read_message())
            .await
            .expect("a message within the wait")
            .expect("the stream is open")
    }
}

/// A connect plugin that lets token `good` in as `alice`, subscribed to `news` server-side; channels
/// recover whoever subscribes (the server subscribes for these clients).
fn uni_server_config() -> (tempfile::TempDir, String) {
    let (dir, plugins) = herald_tests::scripted_plugin(
        "id = \"s\"\nconnect_user = \"alice\"\nconnect_channels = [\"news\"]\n",
    );
    (
        dir,
        format!("{plugins}[channel.defaults]\nforce_recovery = true\n"),
    )
}

/// Has the server drop alice's connection `client` with code 3011 (reconnect).
async fn drop_to_reconnect(server: &TestServer, client: &str) {
    let (status, body) = server
        .api(
            "disconnect",
            json!({"user": "alice", "client": client, "disconnect": {"code": 3011, "reason": "again"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// A client without an SDK: the connect request comes with the stream, the connect plugin's channels
/// are subscribed, publications arrive as bare pushes, a server API `subscribe` adds a channel, and a
/// reconnect with the last position in `subs` recovers what was missed; the API's disconnect ends the
/// stream with a disconnect push.
async fn uni_stream_carries_server_side_subscriptions(kind: Kind) {
    let (_plugins, plugins) = uni_server_config();
    let server = TestServer::start(&plugins).await;
    let (mut stream, connect) = uni(&server, kind, r#"{"token":"good"}"#).await;
    let result = &connect["connect"];
    assert!(result["client"].is_string(), "{connect}");
    assert!(
        result.get("pong").is_none(),
        "nobody answers pings here: {connect}"
    );
    // The connect plugin's channel, subscribed by the server.
    let subscribed = stream.next().await;
    assert_eq!(subscribed["channel"], "news", "{subscribed}");
    let news = &subscribed["subscribe"];
    assert_eq!(news["recoverable"], true, "{subscribed}");
    let epoch = news["epoch"].as_str().expect("an epoch").to_owned();

    server.publish("news", json!({"n": 1})).await;
    let push = stream.next().await;
    assert_eq!(push["channel"], "news", "{push}");
    assert_eq!(push["pub"]["data"], json!({"n": 1}));
    let offset = push["pub"]["offset"].as_u64().expect("an offset");

    let client = result["client"].as_str().expect("client id");
    let (status, body) = server
        .api(
            "subscribe",
            json!({"user": "alice", "client": client, "channel": "extra"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let push = stream.next().await;
    assert_eq!(push["channel"], "extra", "{push}");
    assert!(push["subscribe"].is_object(), "{push}");
    server.publish("extra", json!({"n": "x"})).await;
    assert_eq!(stream.next().await["pub"]["data"], json!({"n": "x"}));

    drop_to_reconnect(&server, client).await;
    let mut last = None;
    while let Some(message) = stream.read_message().await {
        last = Some(message);
    }
    assert_eq!(
        last,
        Some(json!({"disconnect": {"code": 3011, "reason": "again"}}))
    );

    // Missed while away, recovered at the reconnect from the position the client kept.
    server.publish("news", json!({"n": 2})).await;
    server.publish("news", json!({"n": 3})).await;
    let request = json!({
        "token": "good",
        "subs": {"news": {"recover": true, "offset": offset, "epoch": epoch}}
    })
    .to_string();
    let (mut stream, connect) = uni(&server, kind, &request).await;
    assert!(connect["connect"].is_object(), "{connect}");
    let subscribed = stream.next().await;
    let position = &subscribed["subscribe"];
    assert_eq!(
        (&position["offset"], &position["epoch"]),
        (&json!(offset), &json!(epoch)),
        "recovering from where the client was: {subscribed}"
    );
    for n in [2, 3] {
        let push = stream.next().await;
        assert_eq!(push["pub"]["data"], json!({"n": n}), "{push}");
    }
}

#[tokio::test]
async fn uni_http_stream_carries_server_side_subscriptions() {
    uni_stream_carries_server_side_subscriptions(Kind::HttpStream).await;
}

#[tokio::test]
async fn uni_sse_carries_server_side_subscriptions() {
    uni_stream_carries_server_side_subscriptions(Kind::Sse).await;
}

type WebSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next message of a unidirectional WebSocket that is not a ping.
async fn next_push(ws: &mut WebSocket) -> Value {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message within the wait")
            .expect("open")
            .expect("a message");
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).expect("JSON");
            if value != json!({}) {
                return value;
            }
        }
    }
}

/// The unidirectional WebSocket: the first message is the connect request (the plugin's channel is
/// subscribed), pushes follow, and a command sent later is ignored without closing the connection.
#[tokio::test]
async fn uni_websocket_takes_one_request_and_pushes() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let (_plugins, plugins) = uni_server_config();
    let server = TestServer::start(&plugins).await;
    let url = format!("ws://{}/connection/uni_websocket", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("uni_websocket upgrade");
    ws.send(Message::text(r#"{"token":"good"}"#))
        .await
        .expect("send the request");
    let connect = next_push(&mut ws).await;
    assert!(connect["connect"].is_object(), "{connect}");
    let subscribed = next_push(&mut ws).await;
    assert_eq!(subscribed["channel"], "news", "{subscribed}");
    server.publish("news", json!({"n": 1})).await;
    let push = next_push(&mut ws).await;
    assert_eq!(push["pub"]["data"], json!({"n": 1}), "{push}");
    // A command is not for this protocol: ignored, no reply, the connection stays.
    ws.send(Message::text(r#"{"id":2,"subscribe":{"channel":"other"}}"#))
        .await
        .expect("send");
    server.publish("news", json!({"n": 2})).await;
    let value = next_push(&mut ws).await;
    assert_eq!(value["pub"]["data"], json!({"n": 2}), "{value}");
}

/// Plugins see which transport a connection came on: one that refuses `sse` refuses the SSE stream's
/// connect (the stream then ends with the refusal) while HTTP streaming connects.
#[tokio::test]
async fn plugins_see_the_transport() {
    let (_plugins, plugins) = herald_tests::scripted_plugin(
        "id = \"s\"\nconnect_user = \"alice\"\ndeny_transports = [\"sse\", \"uni_sse\"]\ndeny_code = 3507\n",
    );
    let server = TestServer::start(&plugins).await;
    let connect = r#"{"id":1,"connect":{"token":"good"}}"#;
    let mut refused = Reader::new(open(&server, Kind::Sse, connect, &[]).await, Kind::Sse);
    let mut last = None;
    while let Some(message) = refused.read_message().await {
        last = Some(message);
    }
    assert_eq!(
        last,
        Some(
            json!({"push": {"disconnect": {"code": 3507, "reason": "sse connections denied by s"}}})
        )
    );
    let (_, uni_refused) = uni(&server, Kind::Sse, r#"{"token":"good"}"#).await;
    assert_eq!(uni_refused["disconnect"]["code"], 3507, "{uni_refused}");
    let (_client, result) = Emulated::connect(&server, Kind::HttpStream).await;
    assert!(result["client"].is_string(), "{result}");
}

/// `uni_sse` also takes its request as a POST body (for clients that can post), still as SSE.
#[tokio::test]
async fn uni_sse_takes_a_posted_request() {
    let server = TestServer::start("").await;
    let response = reqwest::Client::new()
        .post(format!("http://{}/connection/uni_sse", server.addr))
        .body("{}")
        .send()
        .await
        .expect("open the stream");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stream = Reader::new(response, Kind::Sse);
    assert!(stream.next().await["connect"]["client"].is_string());
}

/// A plain `EventSource` keeps no positions, so the server writes them into each SSE event's id (every
/// recoverable channel's offset and epoch), and a reconnect naming the last one in `Last-Event-ID`
/// recovers what was missed on each channel, even with the first connect's `cf_connect` unchanged.
#[tokio::test]
async fn uni_sse_recovers_from_the_last_event_id() {
    let (_plugins, plugins) = herald_tests::scripted_plugin(
        "id = \"s\"\nconnect_user = \"alice\"\nconnect_channels = [\"news\", \"a&b\"]\n",
    );
    let server = TestServer::start(&format!(
        "{plugins}[channel.defaults]\nforce_recovery = true\n"
    ))
    .await;
    let request = r#"{"token":"good"}"#;
    let (mut stream, connect) = uni(&server, Kind::Sse, request).await;
    let client = connect["connect"]["client"]
        .as_str()
        .expect("client id")
        .to_owned();
    let mut epochs = std::collections::HashMap::new();
    for _ in 0..2 {
        let subscribed = stream.next().await;
        let channel = subscribed["channel"]
            .as_str()
            .expect("a channel")
            .to_owned();
        epochs.insert(channel, subscribed["subscribe"]["epoch"].clone());
    }
    server.publish("news", json!({"n": 1})).await;
    server.publish("a&b", json!({"n": "x"})).await;
    assert_eq!(stream.next().await["pub"]["data"], json!({"n": 1}));
    assert_eq!(stream.next().await["pub"]["data"], json!({"n": "x"}));
    let id = stream.last_id.clone().expect("events carry ids");
    assert_eq!(
        id,
        format!(
            "a%26b=1.{}&news=1.{}",
            epochs["a&b"].as_str().unwrap(),
            epochs["news"].as_str().unwrap()
        )
    );
    drop_to_reconnect(&server, &client).await;
    while stream.read_message().await.is_some() {}

    server.publish("news", json!({"n": 2})).await;
    server.publish("a&b", json!({"n": "y"})).await;
    server.publish("news", json!({"n": 3})).await;
    let response = reqwest::Client::new()
        .get(format!("http://{}/connection/uni_sse", server.addr))
        .query(&[("cf_connect", request)])
        .header("Last-Event-ID", &id)
        .send()
        .await
        .expect("reopen the stream");
    let mut stream = Reader::new(response, Kind::Sse);
    assert!(stream.next().await["connect"].is_object());
    let mut recovered = Vec::new();
    while recovered.len() < 3 {
        let push = stream.next().await;
        if push["pub"].is_object() {
            recovered.push((push["channel"].clone(), push["pub"]["data"].clone()));
        }
    }
    recovered.sort_by_key(|(channel, _)| channel.to_string());
    assert_eq!(
        recovered,
        [
            (json!("a&b"), json!({"n": "y"})),
            (json!("news"), json!({"n": 2})),
            (json!("news"), json!({"n": 3})),
        ]
    );
}
