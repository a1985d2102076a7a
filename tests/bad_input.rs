//! Bad client input against a real Herald: every case gets the documented error reply or close code, and
//! the server keeps serving a well-behaved bystander client the whole time. Attacks (invalid UTF-8 and
//! JSON, giant messages, floods) are in `hostile.rs`; this file keeps malformed and refused commands.

use herald_tests::{Client, TestServer, publication};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// The channel the bystander listens on.
const BYSTANDER_CHANNEL: &str = "bystander";

/// A well-behaved client subscribed to [`BYSTANDER_CHANNEL`], used to prove the server still serves others.
struct Bystander {
    client: Client,
    seq: u64,
}

impl Bystander {
    /// Connects and subscribes a bystander.
    async fn join(server: &TestServer) -> Self {
        let (mut client, _) = Client::connect(server).await;
        let reply = client
            .subscribe(json!({"channel": BYSTANDER_CHANNEL}))
            .await;
        assert!(reply.get("subscribe").is_some(), "{reply}");
        Self { client, seq: 0 }
    }

    /// Publishes through the API and asserts the bystander receives exactly that publication next.
    async fn assert_served(&mut self, server: &TestServer) {
        self.seq += 1;
        let data = json!({"seq": self.seq});
        server.publish(BYSTANDER_CHANNEL, data.clone()).await;
        self.assert_receives(&data).await;
    }

    /// Asserts the next push is a publication of `data` on the bystander channel.
    async fn assert_receives(&mut self, data: &Value) {
        let push = self.client.next_push().await;
        assert_eq!(&publication(&push, BYSTANDER_CHANNEL)["data"], data);
    }
}

/// A server with `extra` config and a subscribed bystander.
async fn setup(extra: &str) -> (TestServer, Bystander) {
    let server = TestServer::start(extra).await;
    let bystander = Bystander::join(&server).await;
    (server, bystander)
}

/// A connected client (connect already answered).
async fn connected(server: &TestServer) -> Client {
    Client::connect(server).await.0
}

/// Reads until the server closes and asserts the close code (and reason, when given).
async fn assert_closed(client: &mut Client, code: u16, reason: Option<&str>, what: &str) {
    let (got_code, got_reason) = client.expect_close().await;
    assert_eq!(
        got_code, code,
        "{what}: closed with {got_code} {got_reason:?}"
    );
    if let Some(reason) = reason {
        assert_eq!(got_reason, reason, "{what}");
    }
}

/// Asserts an error reply with `code` and a message.
fn assert_error(reply: &Value, code: u64) {
    assert_eq!(reply["error"]["code"], code, "{reply}");
    assert!(reply["error"]["message"].is_string(), "{reply}");
}

/// Sends `{"id":N,"<method>":body}` as one frame and returns the id used.
async fn send_command(client: &mut Client, method: &str, body: Value) -> u32 {
    let id = client.next_id();
    let mut command = serde_json::Map::new();
    command.insert("id".into(), id.into());
    command.insert(method.into(), body);
    client.send_text(&Value::Object(command).to_string()).await;
    id
}

/// A probe command that always succeeds: unsubscribing from a channel (subscribed or not) answers `{}`.
fn probe(id: u32) -> String {
    format!("{{\"id\":{id},\"unsubscribe\":{{\"channel\":\"probe\"}}}}")
}

/// Asserts `reply` is the successful answer to [`probe`] `id`.
fn assert_probe_reply(reply: &Value, id: u32) {
    assert_eq!(reply, &json!({"id": id, "unsubscribe": {}}));
}

/// An empty frame, a frame that is only a newline, a blank line between commands and a whitespace-only
/// line all close with 3501 (a single trailing newline is fine).
#[tokio::test]
async fn empty_frame_and_empty_lines_close_with_bad_request() {
    let (server, mut bystander) = setup("").await;
    let probe2 = probe(2);
    for frame in [
        String::new(),
        "\n".to_string(),
        "   ".to_string(),
        format!("{probe2}\n\n{probe2}"),
        format!("\n{probe2}"),
    ] {
        let mut a = connected(&server).await;
        a.send_text(&frame).await;
        assert_closed(&mut a, 3501, Some("bad request"), &format!("{frame:?}")).await;
        bystander.assert_served(&server).await;
    }
    // Before connect too.
    let mut a = Client::open(&server).await;
    a.send_text("").await;
    assert_closed(
        &mut a,
        3501,
        Some("bad request"),
        "empty frame before connect",
    )
    .await;
    // A single trailing newline is not an empty line.
    let mut a = connected(&server).await;
    a.send_text(&format!("{probe2}\n")).await;
    assert_probe_reply(&a.next_json().await, 2);
    bystander.assert_served(&server).await;
}

/// A command with an id but no method the server knows closes with 3501.
#[tokio::test]
async fn unknown_method_closes_with_bad_request() {
    let (server, mut bystander) = setup("").await;
    let mut a = connected(&server).await;
    a.send_text("{\"id\":1,\"frobnicate\":{}}").await;
    assert_closed(&mut a, 3501, Some("bad request"), "unknown method").await;
    bystander.assert_served(&server).await;
}

/// Before `connect`, any command (even a pong or a `send`) closes with 3501; so does a second `connect`.
#[tokio::test]
async fn commands_before_connect_and_second_connect_close_with_bad_request() {
    let (server, mut bystander) = setup("").await;
    for frame in [
        format!("{{\"id\":1,\"subscribe\":{{\"channel\":\"{BYSTANDER_CHANNEL}\"}}}}"),
        "{\"id\":1,\"history\":{\"channel\":\"x\"}}".to_string(),
        "{\"id\":1,\"publish\":{\"channel\":\"x\",\"data\":{}}}".to_string(),
        "{}".to_string(),
        "{\"send\":{\"data\":1}}".to_string(),
    ] {
        let mut a = Client::open(&server).await;
        a.send_text(&frame).await;
        assert_closed(&mut a, 3501, Some("bad request"), &frame).await;
        bystander.assert_served(&server).await;
    }
    let mut a = connected(&server).await;
    send_command(&mut a, "connect", json!({})).await;
    assert_closed(&mut a, 3501, Some("bad request"), "second connect").await;
    bystander.assert_served(&server).await;
}

/// An empty (or missing) channel in subscribe, publish, history, presence, presence_stats, unsubscribe and
/// sub_refresh is a protocol violation: close 3501.
#[tokio::test]
async fn empty_channel_closes_with_bad_request() {
    let (server, mut bystander) = setup("").await;
    let cases = [
        ("subscribe", json!({"channel": ""})),
        ("subscribe", json!({})),
        ("publish", json!({"channel": "", "data": {}})),
        ("history", json!({"channel": ""})),
        ("presence", json!({"channel": ""})),
        ("presence_stats", json!({"channel": ""})),
        ("unsubscribe", json!({"channel": ""})),
        ("sub_refresh", json!({"channel": "", "token": "t"})),
    ];
    for (method, body) in cases {
        let mut a = connected(&server).await;
        send_command(&mut a, method, body.clone()).await;
        assert_closed(
            &mut a,
            3501,
            Some("bad request"),
            &format!("{method} {body}"),
        )
        .await;
        bystander.assert_served(&server).await;
    }
}

/// A binary frame on a JSON connection closes with 3501, before and after connect.
#[tokio::test]
async fn binary_frame_closes_with_bad_request() {
    let (server, mut bystander) = setup("").await;
    let mut a = connected(&server).await;
    a.send_message(Message::binary(
        b"{\"id\":2,\"history\":{\"channel\":\"a\"}}".to_vec(),
    ))
    .await;
    assert_closed(&mut a, 3501, Some("bad request"), "binary after connect").await;
    bystander.assert_served(&server).await;
    let mut a = Client::open(&server).await;
    a.send_message(Message::binary(b"{\"id\":1,\"connect\":{}}".to_vec()))
        .await;
    assert_closed(&mut a, 3501, Some("bad request"), "binary connect").await;
    bystander.assert_served(&server).await;
}

/// A channel in an unconfigured namespace is error 102 for subscribe, publish, history, presence and
/// presence_stats; the connection stays usable.
#[tokio::test]
async fn unknown_namespace_is_error_102_and_connection_stays() {
    let (server, mut bystander) = setup("").await;
    let mut a = connected(&server).await;
    for (method, body) in [
        ("subscribe", json!({"channel": "nope:x"})),
        ("publish", json!({"channel": "nope:x", "data": {}})),
        ("history", json!({"channel": "nope:x"})),
        ("presence", json!({"channel": "nope:x"})),
        ("presence_stats", json!({"channel": "nope:x"})),
    ] {
        let reply = a.command(method, body).await;
        assert_error(&reply, 102);
    }
    bystander.assert_served(&server).await;
    let reply = a.subscribe(json!({"channel": "ok"})).await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
    server.publish("ok", json!({"still": "here"})).await;
    let push = a.next_push().await;
    assert_eq!(publication(&push, "ok")["data"], json!({"still": "here"}));
}

/// Subscribing twice to the same channel is error 105 and leaves the first subscription working.
#[tokio::test]
async fn duplicate_subscribe_is_error_105() {
    let (server, mut bystander) = setup("").await;
    let mut a = connected(&server).await;
    let first = a.subscribe(json!({"channel": "dup"})).await;
    assert!(first.get("subscribe").is_some(), "{first}");
    let second = a.subscribe(json!({"channel": "dup"})).await;
    assert_error(&second, 105);
    server.publish("dup", json!(1)).await;
    let push = a.next_push().await;
    assert_eq!(publication(&push, "dup")["data"], json!(1));
    bystander.assert_served(&server).await;
}

/// A channel name over 255 bytes, a non-ASCII name and one with a control character are error 107;
/// exactly 255 bytes is fine.
#[tokio::test]
async fn invalid_channel_names_are_error_107() {
    let (server, mut bystander) = setup("").await;
    let mut a = connected(&server).await;
    for channel in ["a".repeat(256), "caf\u{e9}".to_string(), "a\tb".to_string()] {
        let reply = a.subscribe(json!({"channel": channel})).await;
        assert_error(&reply, 107);
    }
    bystander.assert_served(&server).await;
    let reply = a.subscribe(json!({"channel": "a".repeat(255)})).await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
}

/// Subscribe permission: a private `$` channel (with or without a token, as no auth plugin verifies
/// subscription tokens), a namespace that allows nothing, and a user-limited channel whose user list does not
/// contain the anonymous user (where the namespace does not let anonymous users subscribe) are all 103.
#[tokio::test]
async fn subscribe_without_permission_is_error_103() {
    let (server, mut bystander) = setup(
        r#"
        [channel.namespaces.closed]
        [channel.namespaces.dialog]
        allow_user_limited_channels = true
        allow_subscribe_for_client = true
        "#,
    )
    .await;
    let mut a = connected(&server).await;
    for body in [
        json!({"channel": "$secret"}),
        json!({"channel": "$secret", "token": "not.a.jwt"}),
        json!({"channel": "closed:x"}),
        json!({"channel": "dialog:#42"}),
        json!({"channel": "dialog:#42,"}),
        json!({"channel": "dialog:#"}),
    ] {
        let reply = a.subscribe(body.clone()).await;
        assert_error(&reply, 103);
        bystander.assert_served(&server).await;
    }
    // Still usable.
    let reply = a.subscribe(json!({"channel": "open"})).await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
}

/// A connect token without an auth plugin to verify it closes with 3500 (even when anonymous is allowed).
#[tokio::test]
async fn connect_with_token_closes_with_invalid_token() {
    let (server, mut bystander) = setup("").await;
    let mut a = Client::open(&server).await;
    send_command(&mut a, "connect", json!({"token": "a.b.c"})).await;
    assert_closed(&mut a, 3500, Some("invalid token"), "connect with token").await;
    bystander.assert_served(&server).await;
}

/// With `allow_anonymous = false`, a connect without credentials closes with 3501. (No anonymous bystander
/// can exist on this server, so "still serving" is shown by the API and by the next connection being
/// answered the same way.)
#[tokio::test]
async fn anonymous_off_closes_with_bad_request() {
    let server = TestServer::start("[client]\nallow_anonymous = false").await;
    for _ in 0..2 {
        let mut a = Client::open(&server).await;
        send_command(&mut a, "connect", json!({})).await;
        assert_closed(&mut a, 3501, Some("bad request"), "anonymous connect").await;
        server.publish("news", json!({"x": 1})).await;
    }
}

/// Features that are off answer 108 (history and presence in a namespace without them, rpc without a
/// handler, the schema's `ping` command); a publish without permission is 103. The connection stays usable.
#[tokio::test]
async fn unavailable_features_and_forbidden_publish_are_error_replies() {
    let (server, mut bystander) = setup(
        r#"
        [channel.namespaces.plain]
        allow_subscribe_for_client = true
        allow_subscribe_for_anonymous = true
        allow_history_for_client = true
        allow_history_for_anonymous = true
        allow_presence_for_client = true
        allow_presence_for_anonymous = true
        "#,
    )
    .await;
    let mut a = connected(&server).await;
    let reply = a.subscribe(json!({"channel": "plain:x"})).await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
    for (method, body, code) in [
        ("history", json!({"channel": "plain:x"}), 108),
        ("presence", json!({"channel": "plain:x"}), 108),
        ("presence_stats", json!({"channel": "plain:x"}), 108),
        ("publish", json!({"channel": "plain:x", "data": {}}), 103),
        (
            "publish",
            json!({"channel": BYSTANDER_CHANNEL, "data": {}}),
            103,
        ),
        ("rpc", json!({"method": "sum", "data": [1, 2]}), 108),
        ("ping", json!({}), 108),
    ] {
        let reply = a.command(method, body.clone()).await;
        assert_error(&reply, code);
        bystander.assert_served(&server).await;
    }
    let id = a.next_id();
    a.send_text(&probe(id)).await;
    assert_probe_reply(&a.reply(id).await, id);
}

/// `send` gets no reply and does not disturb the connection: the next command's reply is the next message.
#[tokio::test]
async fn send_gets_no_reply_and_connection_stays() {
    let (server, mut bystander) = setup("").await;
    let mut a = connected(&server).await;
    a.send_text("{\"send\":{\"data\":{\"hello\":\"server\"}}}")
        .await;
    let id = a.next_id();
    a.send_text(&probe(id)).await;
    assert_probe_reply(&a.next_json().await, id);
    bystander.assert_served(&server).await;
}

/// After connect, `{}` pongs are harmless at any time (unsolicited, repeated, sharing a frame with a
/// command), and an id-0 command is a pong, not a command (the id-0 subscribe does not subscribe).
#[tokio::test]
async fn pongs_after_connect_are_never_a_problem() {
    let (server, mut bystander) = setup("").await;
    let mut a = connected(&server).await;
    a.send_text("{}").await;
    a.send_text("{}").await;
    a.send_text("{}\n{}").await;
    a.send_text("{\"subscribe\":{\"channel\":\"zero\"}}").await;
    a.send_text(&format!("{{}}\n{}\n{{}}", probe(5))).await;
    assert_probe_reply(&a.next_json().await, 5);
    let reply = a.subscribe(json!({"channel": "zero"})).await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
    bystander.assert_served(&server).await;
}

/// Unknown fields are ignored everywhere: in the command envelope, in connect, in subscribe (the SDKs' `tf`
/// and `type`; `delta` is no longer unknown: asking for one the namespace does not allow is refused, see
/// `tests/sdk.rs`) and in other requests.
#[tokio::test]
async fn unknown_fields_are_ignored() {
    let (server, mut bystander) = setup("").await;
    let mut a = Client::open(&server).await;
    a.send_text(
        "{\"id\":1,\"connect\":{\"name\":\"js\",\"version\":\"1\",\"flag\":3,\"profile\":{},\"dict\":\"x\",\"headers\":{\"a\":\"b\"},\"future\":[1]},\"extra\":true}",
    )
    .await;
    let reply = a.reply(1).await;
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    let reply = a
        .subscribe(json!({"channel": "fields", "tf": {}, "flag": 1, "type": 0, "phase": 2, "new_thing": {"deep": [1]}}))
        .await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
    let reply = a
        .command(
            "history",
            json!({"channel": "fields", "limit": 0, "whatever": null}),
        )
        .await;
    assert!(reply.get("history").is_some(), "{reply}");
    server.publish("fields", json!({"ok": true})).await;
    let push = a.next_push().await;
    assert_eq!(publication(&push, "fields")["data"], json!({"ok": true}));
    bystander.assert_served(&server).await;
}
