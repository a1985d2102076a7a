//! The Pusher protocol on `/app/{key}` and the Pusher HTTP API on `/apps/{id}/…`, driven by raw WebSocket
//! clients and signed HTTP requests: the handshake and its refusals, liveness, channel authorisation,
//! triggers (with `socket_id` exclusion) reaching Pusher and Centrifugo clients alike, client events,
//! request signing, limits and shutdown. The real pusher-js and Pusher server libraries run in
//! `pusher_sdk.rs`.

use herald::protocol::pusher::sign;
use herald_tests::pusher::{Pusher, data, now, signed, trigger, triggered, url};
use herald_tests::{
    Client, PUSHER_APP_ID as APP_ID, PUSHER_CONFIG as PUSHER, PUSHER_KEY as KEY,
    PUSHER_SECRET as SECRET, Received, TestServer, publication,
};
use serde_json::{Value, json};

#[tokio::test]
async fn the_handshake_gives_a_socket_id_and_bad_messages_keep_the_connection() {
    let server = TestServer::start(PUSHER).await;
    let mut pusher = Pusher::connect(server.addr).await;
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
        let mut client = Client::open_url(&url(server.addr, key, query)).await;
        let error = client.next_json().await;
        assert_eq!(error["event"], "pusher:error", "{error}");
        assert_eq!(error["data"]["code"], code, "{error}");
        assert_eq!(client.expect_close().await.0, code);
    }
    // No version at all is the oldest clients' way and accepted.
    let mut client = Client::open_url(&url(server.addr, KEY, "")).await;
    assert_eq!(
        client.next_json().await["event"],
        "pusher:connection_established"
    );
}

#[tokio::test]
async fn the_pusher_endpoint_is_off_without_an_app() {
    let server = TestServer::start("").await;
    match tokio_tungstenite::connect_async(url(server.addr, KEY, "")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 404)
        }
        other => panic!("expected 404, got {other:?}"),
    }
}

#[tokio::test]
async fn private_channels_need_the_backends_signature_for_this_socket() {
    let server = TestServer::start(PUSHER).await;
    let mut pusher = Pusher::connect(server.addr).await;
    let other = Pusher::connect(server.addr).await;

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
    let mut first = Pusher::connect(server.addr).await;
    let mut second = Pusher::connect(server.addr).await;
    first.subscribed("news", None).await;
    second.subscribed("news", None).await;
    let (mut centrifuge, _) = Client::connect(&server).await;
    centrifuge.subscribe(json!({"channel": "news"})).await;

    let (status, body) = trigger(
        server.addr,
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
    triggered(
        server.addr,
        json!({"name": "text", "channels": ["news"], "data": "plain text"}),
    )
    .await;
    assert_eq!(first.next().await["data"], "plain text");
}

#[tokio::test]
async fn the_api_refuses_bad_signatures_stale_requests_and_oversized_events() {
    let server = TestServer::start(PUSHER).await;
    let event = json!({"name": "e", "channel": "news", "data": "{}"});
    let path = format!("/apps/{APP_ID}/events");

    let (status, body) = signed(
        server.addr,
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
        server.addr,
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
        server.addr,
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
        server.addr,
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
        let (status, body) = trigger(server.addr, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

#[tokio::test]
async fn channel_queries_report_occupied_channels_and_counts() {
    let server = TestServer::start(PUSHER).await;
    let mut a = Pusher::connect(server.addr).await;
    let mut b = Pusher::connect(server.addr).await;
    a.subscribed("news", None).await;
    b.subscribed("news", None).await;
    let auth = a.auth("private-a");
    a.subscribed("private-a", Some(auth)).await;

    let channels = format!("/apps/{APP_ID}/channels");
    let (status, body) = signed(server.addr, "GET", &channels, &[], None, SECRET, now()).await;
    assert_eq!(status, 200, "{body}");
    let listed: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(listed, json!({"channels": {"news": {}, "private-a": {}}}));
    let (_, body) = signed(
        server.addr,
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
        server.addr,
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
    let (_, body) = signed(server.addr, "GET", &empty, &[], None, SECRET, now()).await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON"),
        json!({"occupied": false})
    );
}

#[tokio::test]
async fn client_events_reach_the_other_subscribers_of_private_channels_only() {
    let server = TestServer::start(PUSHER).await;
    let mut a = Pusher::connect(server.addr).await;
    let mut b = Pusher::connect(server.addr).await;
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
    triggered(
        server.addr,
        json!({"name": "done", "channel": "private-chat", "data": "{}"}),
    )
    .await;
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
    let mut a = Pusher::connect(server.addr).await;
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
    let mut answering = Pusher::connect(server.addr).await;
    let mut silent = Pusher::connect(server.addr).await;

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
    let mut pusher = Pusher::connect(server.addr).await;
    pusher.subscribed("news", None).await;
    let closed = tokio::spawn(async move { pusher.client.expect_close().await });
    server.shutdown().await.expect("shutdown");
    assert_eq!(closed.await.expect("client task").0, 4200);
}

#[tokio::test]
async fn binary_messages_get_an_error_and_the_connection_stays() {
    let server = TestServer::start(PUSHER).await;
    let mut pusher = Pusher::connect(server.addr).await;
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

/// The roster of a presence `subscription_succeeded`.
fn roster(answer: &Value) -> Value {
    assert_eq!(
        answer["event"], "pusher_internal:subscription_succeeded",
        "{answer}"
    );
    data(answer)["presence"].clone()
}

#[tokio::test]
async fn presence_members_are_announced_once_per_user_with_their_info() {
    let server = TestServer::start(PUSHER).await;
    let ada = r#"{"user_id":"1","user_info":{"name":"Ada"}}"#;
    let mut first = Pusher::connect(server.addr).await;
    assert_eq!(
        roster(&first.subscribe_presence("presence-room", ada).await),
        json!({"ids": ["1"], "hash": {"1": {"name": "Ada"}}, "count": 1})
    );

    // A numeric user id is the same user as its string.
    let mut bob = Pusher::connect(server.addr).await;
    let joined = roster(
        &bob.subscribe_presence(
            "presence-room",
            r#"{"user_id":2,"user_info":{"name":"Bob"}}"#,
        )
        .await,
    );
    assert_eq!(joined["count"], 2, "{joined}");
    assert_eq!(joined["hash"]["1"], json!({"name": "Ada"}));
    let added = first.next().await;
    assert_eq!(added["event"], "pusher_internal:member_added", "{added}");
    assert_eq!(
        data(&added),
        json!({"user_id": "2", "user_info": {"name": "Bob"}})
    );

    // Ada's second connection: the same two users, and nobody hears of a new member.
    let mut again = Pusher::connect(server.addr).await;
    assert_eq!(
        roster(&again.subscribe_presence("presence-room", ada).await)["count"],
        2
    );
    let (_, users) = herald_tests::pusher::get(
        server.addr,
        &format!("/apps/{APP_ID}/channels/presence-room/users"),
        &[],
    )
    .await;
    assert_eq!(users, json!({"users": [{"id": "1"}, {"id": "2"}]}));
    let (_, info) = herald_tests::pusher::get(
        server.addr,
        &format!("/apps/{APP_ID}/channels/presence-room"),
        &[("info", "user_count,subscription_count")],
    )
    .await;
    assert_eq!(
        info,
        json!({"occupied": true, "user_count": 2, "subscription_count": 3})
    );

    // Ada's second connection leaving is not her leaving; Bob's last connection is Bob leaving.
    again
        .send(json!({"event": "pusher:unsubscribe", "data": {"channel": "presence-room"}}))
        .await;
    // Messages are handled in order: once the ping is answered, the unsubscribe is done.
    again.send(json!({"event": "pusher:ping"})).await;
    assert_eq!(again.next().await["event"], "pusher:pong");
    drop(bob);
    let removed = first.next().await;
    assert_eq!(
        removed["event"], "pusher_internal:member_removed",
        "{removed}"
    );
    assert_eq!(data(&removed), json!({"user_id": "2"}));
    triggered(
        server.addr,
        json!({"name": "after", "channel": "presence-room", "data": "{}"}),
    )
    .await;
    assert_eq!(
        first.next().await["event"],
        "after",
        "no more member events"
    );
}

#[tokio::test]
async fn presence_subscriptions_need_signed_valid_channel_data() {
    let server = TestServer::start(&format!(
        "{PUSHER}\nmax_presence_members = 1\nmax_presence_user_info_bytes = 16"
    ))
    .await;
    let mut pusher = Pusher::connect(server.addr).await;

    // Signed for other channel_data than what is sent.
    let auth = format!(
        "{KEY}:{}",
        sign::channel_signature(
            SECRET,
            &pusher.socket_id,
            "presence-x",
            Some(r#"{"user_id":"9"}"#)
        )
    );
    pusher
        .send(json!({"event": "pusher:subscribe", "data": {
            "channel": "presence-x", "auth": auth, "channel_data": r#"{"user_id":"1"}"#}}))
        .await;
    let refused = pusher.next().await;
    assert_eq!(refused["data"]["status"], 401, "{refused}");

    for (channel_data, status) in [
        (r#"{"user_info":{}}"#, 400),
        (r#"{"user_id":""}"#, 400),
        ("not json", 400),
        (
            r#"{"user_id":"1","user_info":{"bio":"far too long for sixteen bytes"}}"#,
            413,
        ),
    ] {
        let refused = pusher.subscribe_presence("presence-x", channel_data).await;
        assert_eq!(
            (
                refused["event"].as_str(),
                refused["data"]["status"].as_u64()
            ),
            (Some("pusher:subscription_error"), Some(status)),
            "{channel_data}: {refused}"
        );
    }

    let mut full = Pusher::connect(server.addr).await;
    assert_eq!(
        roster(
            &full
                .subscribe_presence("presence-x", r#"{"user_id":"1"}"#)
                .await
        )["count"],
        1
    );
    let refused = pusher
        .subscribe_presence("presence-x", r#"{"user_id":"2"}"#)
        .await;
    assert_eq!(refused["data"]["type"], "LimitReached", "{refused}");
    let (status, _) = herald_tests::pusher::get(
        server.addr,
        &format!("/apps/{APP_ID}/channels/news/users"),
        &[],
    )
    .await;
    assert_eq!(
        status, 400,
        "users of a channel that is not a presence channel"
    );
}

#[tokio::test]
async fn signed_in_users_get_their_own_channel_and_can_be_terminated() {
    let server = TestServer::start(PUSHER).await;
    let user_data = r#"{"id":"77","name":"Grace"}"#;
    let mut signed = Pusher::connect(server.addr).await;
    let success = signed.sign_in(user_data).await;
    assert_eq!(
        success,
        json!({"event": "pusher:signin_success", "data": {"user_data": user_data}})
    );
    signed.subscribed("#server-to-user-77", None).await;

    let mut other = Pusher::connect(server.addr).await;
    let refused = other.subscribe("#server-to-user-77", None).await;
    assert_eq!(refused["data"]["status"], 401, "{refused}");
    let reserved = other.subscribe("#mine", None).await;
    assert_eq!(reserved["data"]["status"], 400, "{reserved}");

    triggered(
        server.addr,
        json!({"name": "note", "channel": "#server-to-user-77", "data": "{\"for\":\"you\"}"}),
    )
    .await;
    let note = signed.next().await;
    assert_eq!(
        (note["event"].as_str(), data(&note)),
        (Some("note"), json!({"for": "you"}))
    );

    // The path the Python library uses, without the app part.
    let (status, body) = signed_post(&server, "/users/77/terminate_connections").await;
    assert_eq!((status, body.as_str()), (200, "{}"));
    assert_eq!(signed.client.expect_close().await.0, 4009);
    other.send(json!({"event": "pusher:ping"})).await;
    assert_eq!(other.next().await["event"], "pusher:pong", "others stay");
}

#[tokio::test]
async fn a_forged_sign_in_closes_the_connection_with_4009() {
    let server = TestServer::start(PUSHER).await;
    let mut pusher = Pusher::connect(server.addr).await;
    pusher
        .send(json!({"event": "pusher:signin", "data": {
            "auth": format!("{KEY}:{}", "0".repeat(64)), "user_data": r#"{"id":"1"}"#}}))
        .await;
    let error = pusher.next().await;
    assert_eq!(error["data"]["code"], 4009, "{error}");
    assert_eq!(pusher.client.expect_close().await.0, 4009);

    // Signed, but without the id pusher-js needs.
    let mut pusher = Pusher::connect(server.addr).await;
    let error = pusher.sign_in(r#"{"name":"no id"}"#).await;
    assert_eq!(error["data"]["code"], 4009, "{error}");
}

async fn signed_post(server: &TestServer, path: &str) -> (u16, String) {
    signed(
        server.addr,
        "POST",
        path,
        &[],
        Some(json!({})),
        SECRET,
        now(),
    )
    .await
}

/// A server whose plugin folder holds the scripted test plugin with `script` as its configuration.
async fn with_scripted_plugin(script: &str) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("plugin dir");
    std::fs::write(
        dir.path().join("10-p.wasm"),
        herald_tests::built_plugin("herald-test-scripted"),
    )
    .expect("write plugin");
    std::fs::write(dir.path().join("10-p.toml"), script).expect("write plugin config");
    let server = TestServer::start(&format!(
        "{PUSHER}\n[plugins]\ndir = {:?}\ndeadline = \"50ms\"",
        dir.path().to_str().expect("utf-8 path")
    ))
    .await;
    (server, dir)
}

#[tokio::test]
async fn subscribe_plugins_decide_before_the_signature_rules() {
    let (server, _dir) = with_scripted_plugin(
        r#"
        id = "p"
        deny_code = 403
        deny_subscribe = ["news-blocked", "private-blocked"]
        allow_subscribe = ["private-open*"]
        connect_user = "carol"
        connect_protocols = ["pusher"]
        "#,
    )
    .await;
    let mut pusher = Pusher::connect(server.addr).await;
    // Allowed by the plugin: no backend signature needed.
    pusher.subscribed("private-open-room", None).await;
    // Denied by the plugin, even with a valid signature, and on a public channel.
    let auth = pusher.auth("private-blocked");
    let denied = pusher.subscribe("private-blocked", Some(auth)).await;
    assert_eq!(denied["event"], "pusher:subscription_error", "{denied}");
    assert_eq!(denied["data"]["status"], 403, "{denied}");
    assert_eq!(
        pusher.subscribe("news-blocked", None).await["data"]["status"],
        403
    );
    // Passed: Pusher's rules decide.
    pusher.subscribed("news", None).await;
    assert_eq!(
        pusher.subscribe("private-other", None).await["data"]["status"],
        401
    );
    // The connect plugin made the connection carol's: terminating carol closes it.
    let path = format!("/apps/{APP_ID}/users/carol/terminate_connections");
    let (status, _) = signed_post(&server, &path).await;
    assert_eq!(status, 200);
    assert_eq!(pusher.client.expect_close().await.0, 4009);
}

#[tokio::test]
async fn connect_plugins_can_refuse_pusher_connections() {
    let (server, _dir) =
        with_scripted_plugin("id = \"p\"\ndeny_code = 4009\ndeny_protocols = [\"pusher\"]").await;
    let mut client = Client::open_url(&url(server.addr, KEY, "?protocol=7")).await;
    let error = client.next_json().await;
    assert_eq!(
        (error["event"].as_str(), error["data"]["code"].as_u64()),
        (Some("pusher:error"), Some(4009)),
        "{error}"
    );
    assert_eq!(client.expect_close().await.0, 4009);
    // The Centrifugo side is another protocol: not denied.
    let (_, connected) = Client::connect(&server).await;
    assert!(connected["client"].is_string(), "{connected}");
}

#[tokio::test]
async fn cache_channels_give_new_subscribers_the_last_event() {
    // Without history in the namespace, cache channels keep their last event by themselves.
    let server =
        TestServer::start(&format!("{PUSHER}\n[channel.defaults]\nhistory_size = 0\nhistory_ttl = \"0s\"\nallow_recovery = false\nallow_positioning = false")).await;
    for n in 1..=2 {
        triggered(
            server.addr,
            json!({"name": "price", "channel": "cache-prices", "data": format!("{{\"n\":{n}}}")}),
        )
        .await;
    }
    let mut pusher = Pusher::connect(server.addr).await;
    pusher.subscribed("cache-prices", None).await;
    let cached = pusher.next().await;
    assert_eq!(
        (cached["event"].as_str(), cached["channel"].as_str()),
        (Some("price"), Some("cache-prices")),
        "{cached}"
    );
    assert_eq!(data(&cached), json!({"n": 2}), "the last event only");

    pusher.subscribed("cache-empty", None).await;
    assert_eq!(
        pusher.next().await,
        json!({"event": "pusher:cache_miss", "channel": "cache-empty"})
    );
    // A plain channel keeps nothing for new subscribers when its namespace keeps no history.
    triggered(
        server.addr,
        json!({"name": "price", "channel": "prices", "data": "{}"}),
    )
    .await;
    pusher.subscribed("prices", None).await;
    pusher.send(json!({"event": "pusher:ping"})).await;
    assert_eq!(pusher.next().await["event"], "pusher:pong");
}

/// The `{"subscription_count": N}` of a `pusher_internal:subscription_count` event on `channel`.
fn subscription_count(event: &Value, channel: &str) -> u64 {
    assert_eq!(
        (event["event"].as_str(), event["channel"].as_str()),
        (Some("pusher_internal:subscription_count"), Some(channel)),
        "{event}"
    );
    data(event)["subscription_count"]
        .as_u64()
        .unwrap_or_else(|| panic!("no count: {event}"))
}

/// With subscription counting, a channel's subscribers hear its count as it changes (the count, not every
/// change: it is checked once a second); presence channels are left out (the trigger sent after the
/// channel's first count comes next).
#[tokio::test]
async fn subscription_counting_tells_subscribers_the_count() {
    let server = TestServer::start(&format!("{PUSHER}\nsubscription_count = true")).await;
    let mut first = Pusher::connect(server.addr).await;
    let joined = first
        .subscribe_presence("presence-room", r#"{"user_id":"1"}"#)
        .await;
    assert_eq!(joined["event"], "pusher_internal:subscription_succeeded");
    first.subscribed("news", None).await;
    assert_eq!(subscription_count(&first.next().await, "news"), 1);
    triggered(
        server.addr,
        json!({"name": "after", "channels": ["news", "presence-room"], "data": "{}"}),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(first.next().await["event"], "after");
    }

    let mut second = Pusher::connect(server.addr).await;
    second.subscribed("news", None).await;
    assert_eq!(subscription_count(&first.next().await, "news"), 2);
    assert_eq!(subscription_count(&second.next().await, "news"), 2);
    drop(second);
    assert_eq!(subscription_count(&first.next().await, "news"), 1);
}
