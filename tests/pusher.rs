//! The Pusher protocol on `/app/{key}` and the Pusher HTTP API on `/apps/{id}/…`, driven by raw WebSocket
//! clients and signed HTTP requests: the handshake and its refusals, liveness, channel authorisation,
//! triggers (with `socket_id` exclusion) reaching Pusher and Centrifugo clients alike, client events,
//! request signing, limits and shutdown. The real pusher-js and Pusher server libraries run in
//! `pusher_sdk.rs`.

use std::time::{SystemTime, UNIX_EPOCH};

use herald::protocol::pusher::sign;
use herald_tests::{
    Client, PUSHER_APP_ID as APP_ID, PUSHER_CONFIG as PUSHER, PUSHER_KEY as KEY,
    PUSHER_SECRET as SECRET, Received, TestServer, publication,
};
use serde_json::{Value, json};

/// A raw Pusher-protocol client: the shared test client reading one JSON event per message.
struct Pusher {
    client: Client,
    socket_id: String,
}

impl Pusher {
    /// Connects with the app key and reads `pusher:connection_established`.
    async fn connect(server: &TestServer) -> Self {
        let mut client =
            Client::open_url(&url(server, KEY, "?protocol=7&client=js&version=8.6.0")).await;
        let established = client.next_json().await;
        assert_eq!(
            established["event"], "pusher:connection_established",
            "{established}"
        );
        let data: Value =
            serde_json::from_str(established["data"].as_str().expect("data is a string"))
                .expect("data is JSON");
        let socket_id = data["socket_id"].as_str().expect("socket_id").to_owned();
        Self { client, socket_id }
    }

    async fn send(&mut self, message: Value) {
        self.client.send_text(&message.to_string()).await;
    }

    async fn next(&mut self) -> Value {
        self.client.next_json().await
    }

    /// Subscribes and returns the answer (`subscription_succeeded` or `subscription_error`).
    async fn subscribe(&mut self, channel: &str, auth: Option<String>) -> Value {
        let mut data = json!({ "channel": channel });
        if let Some(auth) = auth {
            data["auth"] = auth.into();
        }
        self.send(json!({"event": "pusher:subscribe", "data": data}))
            .await;
        self.next().await
    }

    /// Subscribes, asserting it succeeds.
    async fn subscribed(&mut self, channel: &str, auth: Option<String>) {
        let answer = self.subscribe(channel, auth).await;
        assert_eq!(
            (answer["event"].as_str(), answer["channel"].as_str()),
            (
                Some("pusher_internal:subscription_succeeded"),
                Some(channel)
            ),
            "{answer}"
        );
    }

    /// What the app backend would answer pusher-js's authorisation request with.
    fn auth(&self, channel: &str) -> String {
        format!(
            "{KEY}:{}",
            sign::channel_signature(SECRET, &self.socket_id, channel, None)
        )
    }
}

fn url(server: &TestServer, key: &str, query: &str) -> String {
    format!("ws://{}/app/{key}{query}", server.addr)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Sends a Pusher HTTP API request signed like the server libraries do (with `secret` and `timestamp`);
/// returns the status and the body.
async fn signed(
    server: &TestServer,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: Option<Value>,
    secret: &str,
    timestamp: i64,
) -> (u16, String) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let params: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let query = sign::sign_api_request(
        KEY,
        secret,
        method,
        path,
        &params,
        body.as_bytes(),
        timestamp,
    );
    let client = reqwest::Client::new();
    let url = format!("http://{}{path}", server.addr);
    let request = match method {
        "GET" => client.get(url),
        _ => client
            .post(url)
            .header("content-type", "application/json")
            .body(body),
    };
    let response = request.query(&query).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// `POST /apps/1/events`, correctly signed.
async fn trigger(server: &TestServer, body: Value) -> (u16, String) {
    signed(
        server,
        "POST",
        &format!("/apps/{APP_ID}/events"),
        &[],
        Some(body),
        SECRET,
        now(),
    )
    .await
}

/// The `data` of a Pusher event, parsed from its string.
fn data(event: &Value) -> Value {
    serde_json::from_str(event["data"].as_str().expect("data is a string")).expect("data is JSON")
}

#[tokio::test]
async fn the_handshake_gives_a_socket_id_and_bad_messages_keep_the_connection() {
    let server = TestServer::start(PUSHER).await;
    let mut pusher = Pusher::connect(&server).await;
    let (a, b) = pusher.socket_id.split_once('.').expect("two numbers");
    assert!(
        a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok(),
        "{}",
        pusher.socket_id
    );

    pusher.client.send_text("not json").await;
    let error = pusher.next().await;
    assert_eq!(error["event"], "pusher:error", "{error}");
    assert!(error["data"]["code"].is_null(), "{error}");

    pusher
        .send(json!({"event": "pusher:ping", "data": {}}))
        .await;
    assert_eq!(
        pusher.next().await,
        json!({"event": "pusher:pong", "data": {}})
    );

    let refused = pusher.subscribe("bad:name", None).await;
    assert_eq!(refused["event"], "pusher:subscription_error", "{refused}");
    assert_eq!(refused["data"]["status"], 400, "{refused}");
    pusher.subscribed("still-connected", None).await;
}

#[tokio::test]
async fn unknown_keys_and_protocol_versions_are_refused_with_their_codes() {
    let server = TestServer::start(PUSHER).await;
    for (key, query, code) in [
        ("wrong-key", "?protocol=7", 4001),
        (KEY, "?protocol=3", 4007),
        (KEY, "?protocol=seven", 4007),
    ] {
        let mut client = Client::open_url(&url(&server, key, query)).await;
        let error = client.next_json().await;
        assert_eq!(error["event"], "pusher:error", "{error}");
        assert_eq!(error["data"]["code"], code, "{error}");
        assert_eq!(client.expect_close().await.0, code);
    }
    // No version at all is the oldest clients' way and accepted.
    let mut client = Client::open_url(&url(&server, KEY, "")).await;
    assert_eq!(
        client.next_json().await["event"],
        "pusher:connection_established"
    );
}

#[tokio::test]
async fn the_pusher_endpoint_is_off_without_an_app() {
    let server = TestServer::start("").await;
    match tokio_tungstenite::connect_async(url(&server, KEY, "")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 404)
        }
        other => panic!("expected 404, got {other:?}"),
    }
}

#[tokio::test]
async fn private_channels_need_the_backends_signature_for_this_socket() {
    let server = TestServer::start(PUSHER).await;
    let mut pusher = Pusher::connect(&server).await;
    let other = Pusher::connect(&server).await;

    let unsigned = pusher.subscribe("private-orders", None).await;
    assert_eq!(unsigned["event"], "pusher:subscription_error", "{unsigned}");
    assert_eq!(unsigned["channel"], "private-orders");
    assert_eq!(unsigned["data"]["type"], "AuthError");
    assert_eq!(unsigned["data"]["status"], 401);

    // A signature made for another socket does not authorise this one.
    let borrowed = pusher
        .subscribe("private-orders", Some(other.auth("private-orders")))
        .await;
    assert_eq!(borrowed["event"], "pusher:subscription_error", "{borrowed}");
    let wrong_key = format!(
        "other-key:{}",
        sign::channel_signature(SECRET, &pusher.socket_id, "private-orders", None)
    );
    let refused = pusher.subscribe("private-orders", Some(wrong_key)).await;
    assert_eq!(refused["event"], "pusher:subscription_error", "{refused}");

    let auth = pusher.auth("private-orders");
    pusher.subscribed("private-orders", Some(auth)).await;
}

#[tokio::test]
async fn triggers_reach_pusher_and_centrifuge_subscribers_except_the_excluded_socket() {
    let server = TestServer::start(PUSHER).await;
    let mut first = Pusher::connect(&server).await;
    let mut second = Pusher::connect(&server).await;
    first.subscribed("news", None).await;
    second.subscribed("news", None).await;
    let (mut centrifuge, _) = Client::connect(&server).await;
    centrifuge.subscribe(json!({"channel": "news"})).await;

    let (status, body) = trigger(
        &server,
        json!({"name": "order-shipped", "channel": "news", "data": "{\"n\":1}",
               "socket_id": first.socket_id}),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "{}"));
    let event = second.next().await;
    assert_eq!(
        (event["event"].as_str(), event["channel"].as_str()),
        (Some("order-shipped"), Some("news")),
        "{event}"
    );
    assert_eq!(data(&event), json!({"n": 1}));
    let received = publication(&centrifuge.next_push().await, "news");
    assert_eq!(received["data"], json!({"n": 1}));
    assert_eq!(received["tags"]["event"], "order-shipped");

    // Herald's own API reaches Pusher clients too, the event named by the `event` tag.
    let (status, _) = server
        .api(
            "publish",
            json!({"channel": "news", "data": {"n": 2}, "tags": {"event": "native"}}),
        )
        .await;
    assert_eq!(status, 200);
    // The excluded socket's next event is this one: the trigger before it never came.
    let event = first.next().await;
    assert_eq!(event["event"], "native", "{event}");
    assert_eq!(data(&event), json!({"n": 2}));
    assert_eq!(second.next().await["event"], "native");

    // Data that is not JSON arrives exactly as sent.
    let (status, _) = trigger(
        &server,
        json!({"name": "text", "channels": ["news"], "data": "plain text"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(first.next().await["data"], "plain text");
}

#[tokio::test]
async fn the_api_refuses_bad_signatures_stale_requests_and_oversized_events() {
    let server = TestServer::start(PUSHER).await;
    let event = json!({"name": "e", "channel": "news", "data": "{}"});
    let path = format!("/apps/{APP_ID}/events");

    let (status, body) = signed(
        &server,
        "POST",
        &path,
        &[],
        Some(event.clone()),
        "wrong-secret",
        now(),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Invalid signature"), "{body}");
    assert!(!body.contains(SECRET), "the secret leaked: {body}");
    let (status, body) = signed(
        &server,
        "POST",
        &path,
        &[],
        Some(event.clone()),
        SECRET,
        now() - 3600,
    )
    .await;
    assert_eq!(status, 401, "an hour-old signature: {body}");
    let unsigned = reqwest::Client::new()
        .post(format!("http://{}{path}", server.addr))
        .body(event.to_string())
        .send()
        .await
        .expect("request");
    assert_eq!(unsigned.status().as_u16(), 401);
    let (status, _) = signed(
        &server,
        "POST",
        "/apps/2/events",
        &[],
        Some(event.clone()),
        SECRET,
        now(),
    )
    .await;
    assert_eq!(status, 404, "another app");

    let big = "x".repeat(10 * 1024 + 1);
    let (status, body) = trigger(
        &server,
        json!({"name": "e", "channel": "news", "data": big}),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    for bad in [
        json!({"name": "e", "channel": "bad:name", "data": "{}"}),
        json!({"name": "pusher:internal", "channel": "news", "data": "{}"}),
        json!({"name": "e", "data": "{}"}),
        json!({"name": "e", "channel": "news", "data": "{}", "socket_id": "not-a-socket"}),
        json!({"name": "e", "channels": (0..101).map(|i| format!("c{i}")).collect::<Vec<_>>(), "data": "{}"}),
    ] {
        let (status, body) = trigger(&server, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

#[tokio::test]
async fn channel_queries_report_occupied_channels_and_counts() {
    let server = TestServer::start(PUSHER).await;
    let mut a = Pusher::connect(&server).await;
    let mut b = Pusher::connect(&server).await;
    a.subscribed("news", None).await;
    b.subscribed("news", None).await;
    let auth = a.auth("private-a");
    a.subscribed("private-a", Some(auth)).await;

    let channels = format!("/apps/{APP_ID}/channels");
    let (status, body) = signed(&server, "GET", &channels, &[], None, SECRET, now()).await;
    assert_eq!(status, 200, "{body}");
    let listed: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(listed, json!({"channels": {"news": {}, "private-a": {}}}));
    let (_, body) = signed(
        &server,
        "GET",
        &channels,
        &[("filter_by_prefix", "private-")],
        None,
        SECRET,
        now(),
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON"),
        json!({"channels": {"private-a": {}}})
    );

    let news = format!("/apps/{APP_ID}/channels/news");
    let (status, body) = signed(
        &server,
        "GET",
        &news,
        &[("info", "subscription_count")],
        None,
        SECRET,
        now(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON"),
        json!({"occupied": true, "subscription_count": 2})
    );
    let empty = format!("/apps/{APP_ID}/channels/empty");
    let (_, body) = signed(&server, "GET", &empty, &[], None, SECRET, now()).await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON"),
        json!({"occupied": false})
    );
}

#[tokio::test]
async fn client_events_reach_the_other_subscribers_of_private_channels_only() {
    let server = TestServer::start(PUSHER).await;
    let mut a = Pusher::connect(&server).await;
    let mut b = Pusher::connect(&server).await;
    for pusher in [&mut a, &mut b] {
        let auth = pusher.auth("private-chat");
        pusher.subscribed("private-chat", Some(auth)).await;
        pusher.subscribed("lobby", None).await;
    }

    a.send(json!({"event": "client-typing", "channel": "private-chat", "data": {"who": "a"}}))
        .await;
    let typing = b.next().await;
    assert_eq!(
        (typing["event"].as_str(), typing["channel"].as_str()),
        (Some("client-typing"), Some("private-chat")),
        "{typing}"
    );
    assert_eq!(data(&typing), json!({"who": "a"}));
    // The sender's next event is the one triggered after: its own was never sent back.
    let (status, _) = trigger(
        &server,
        json!({"name": "done", "channel": "private-chat", "data": "{}"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(a.next().await["event"], "done");

    for (message, why) in [
        (
            json!({"event": "client-x", "channel": "lobby", "data": {}}),
            "public channel",
        ),
        (
            json!({"event": "client-x", "channel": "private-other", "data": {}}),
            "not subscribed",
        ),
    ] {
        a.send(message).await;
        let error = a.next().await;
        assert_eq!(error["event"], "pusher:error", "{why}: {error}");
        assert_eq!(error["data"]["code"], 4301, "{why}: {error}");
    }
}

#[tokio::test]
async fn client_events_are_refused_unless_enabled() {
    let server = TestServer::start(&PUSHER.replace("client_events = true", "")).await;
    let mut a = Pusher::connect(&server).await;
    let auth = a.auth("private-chat");
    a.subscribed("private-chat", Some(auth)).await;
    a.send(json!({"event": "client-x", "channel": "private-chat", "data": {}}))
        .await;
    let error = a.next().await;
    assert_eq!(error["data"]["code"], 4301, "{error}");
}

#[tokio::test]
async fn silent_clients_are_pinged_then_closed_with_4201() {
    let server = TestServer::start(&format!(
        "{PUSHER}\nactivity_timeout = \"1s\"\npong_timeout = \"1s\""
    ))
    .await;
    let mut answering = Pusher::connect(&server).await;
    let mut silent = Pusher::connect(&server).await;

    assert_eq!(answering.next().await["event"], "pusher:ping");
    answering
        .send(json!({"event": "pusher:pong", "data": {}}))
        .await;

    let ping = silent.next().await;
    assert_eq!(ping["event"], "pusher:ping", "{ping}");
    let error = silent.next().await;
    assert_eq!(error["event"], "pusher:error", "{error}");
    assert_eq!(error["data"]["code"], 4201);
    assert_eq!(silent.client.expect_close().await.0, 4201);

    // The answered ping kept the connection: its next event is another ping, where an unanswered one
    // would have been followed by the 4201 error.
    assert_eq!(answering.next().await["event"], "pusher:ping");
}

#[tokio::test]
async fn shutdown_tells_pusher_clients_to_reconnect_at_once() {
    let server = TestServer::start(PUSHER).await;
    let mut pusher = Pusher::connect(&server).await;
    pusher.subscribed("news", None).await;
    let closed = tokio::spawn(async move { pusher.client.expect_close().await });
    server.shutdown().await.expect("shutdown");
    assert_eq!(closed.await.expect("client task").0, 4200);
}

#[tokio::test]
async fn binary_messages_get_an_error_and_the_connection_stays() {
    let server = TestServer::start(PUSHER).await;
    let mut pusher = Pusher::connect(&server).await;
    pusher
        .client
        .send_message(tokio_tungstenite::tungstenite::Message::binary(vec![
            1, 2, 3,
        ]))
        .await;
    let error = pusher.next().await;
    assert_eq!(error["event"], "pusher:error", "{error}");
    pusher.send(json!({"event": "pusher:ping"})).await;
    match pusher.client.receive().await {
        Received::Json(pong) => assert_eq!(pong["event"], "pusher:pong"),
        other => panic!("expected a pong, got {other:?}"),
    }
}
