//! Fan-out against a real Herald: many subscribers, client publishes, payload encoding, slow consumers,
//! presence, join/leave and unsubscribe.

use bytes::Bytes;
use herald::node::PublishRequest;
use herald_tests::{API_KEY, Client, Received, TestServer, publication};
use serde_json::{Value, json};

/// Namespaces for client publishing, on top of the harness' open top-level namespace (which allows no
/// client publish).
const PUBLISH_NAMESPACES: &str = r#"
    [channel.namespaces.chat]
    allow_subscribe_for_client = true
    allow_subscribe_for_anonymous = true
    allow_publish_for_subscriber = true
    allow_publish_for_anonymous = true

    [channel.namespaces.members]
    allow_subscribe_for_client = true
    allow_subscribe_for_anonymous = true
    allow_publish_for_subscriber = true
"#;

/// Connects and returns the client with its client id.
async fn connect(server: &TestServer) -> (Client, String) {
    let (client, result) = Client::connect(server).await;
    let id = result["client"].as_str().expect("client id").to_string();
    (client, id)
}

/// Subscribes, asserting success.
async fn subscribe(client: &mut Client, body: Value) -> Value {
    let reply = client.call("subscribe", body).await;
    reply
        .get("subscribe")
        .cloned()
        .unwrap_or_else(|| panic!("subscribe failed: {reply}"))
}

/// The error code of a reply that must be an error.
fn error_code(reply: &Value) -> u64 {
    reply["error"]["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("expected an error reply: {reply}"))
}

/// The `join`/`leave` push for an anonymous client.
fn presence_push(channel: &str, kind: &str, client: &str) -> Value {
    json!({"channel": channel, kind: {"info": {"user": "", "client": client}}})
}

// ---------------------------------------------------------------------------------------------------------
// Fan-out
// ---------------------------------------------------------------------------------------------------------

/// 100 publications reach each of 50 subscribers exactly once and in order (offsets 1..=100 with their
/// data, and the next push after them is the 101st publication, not a duplicate).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publications_reach_every_subscriber_once_and_in_order() {
    let server = TestServer::start("").await;
    let mut clients = Vec::new();
    for _ in 0..50 {
        let (mut client, _) = connect(&server).await;
        subscribe(&mut client, json!({"channel": "crowd"})).await;
        clients.push(client);
    }
    for n in 1..=100u64 {
        let result = server.publish("crowd", json!({ "n": n })).await;
        assert_eq!(result["offset"], n);
    }
    for client in &mut clients {
        for n in 1..=100u64 {
            let p = publication(&client.next_push().await, "crowd");
            assert_eq!(p, json!({"data": {"n": n}, "offset": n}));
        }
    }
    server.publish("crowd", json!({"n": 101})).await;
    for client in &mut clients {
        let p = publication(&client.next_push().await, "crowd");
        assert_eq!(p, json!({"data": {"n": 101}, "offset": 101}));
    }
}

// ---------------------------------------------------------------------------------------------------------
// Client publish
// ---------------------------------------------------------------------------------------------------------

/// Client publishing is denied (103) unless the namespace allows it: by default, for a non-subscriber
/// under `allow_publish_for_subscriber`, and for an anonymous subscriber without
/// `allow_publish_for_anonymous`.
#[tokio::test]
async fn client_publish_is_denied_without_permission() {
    let server = TestServer::start(PUBLISH_NAMESPACES).await;
    let (mut client, _) = connect(&server).await;
    subscribe(&mut client, json!({"channel": "news"})).await;
    let reply = client
        .call("publish", json!({"channel": "news", "data": {"x": 1}}))
        .await;
    assert_eq!(error_code(&reply), 103, "default namespace");

    let reply = client
        .call("publish", json!({"channel": "chat:room", "data": {"x": 1}}))
        .await;
    assert_eq!(error_code(&reply), 103, "not subscribed");

    subscribe(&mut client, json!({"channel": "members:room"})).await;
    let reply = client
        .call(
            "publish",
            json!({"channel": "members:room", "data": {"x": 1}}),
        )
        .await;
    assert_eq!(
        error_code(&reply),
        103,
        "anonymous without allow_publish_for_anonymous"
    );
}

/// A subscriber's publish (where allowed) is answered `{"id":N,"publish":{}}` and delivered to every
/// subscriber including the publisher, with `info` naming the publishing connection.
#[tokio::test]
async fn subscriber_publish_reaches_everyone_including_the_publisher() {
    let server = TestServer::start(PUBLISH_NAMESPACES).await;
    let (mut alice, alice_id) = connect(&server).await;
    let (mut bob, _) = connect(&server).await;
    subscribe(&mut alice, json!({"channel": "chat:room"})).await;
    subscribe(&mut bob, json!({"channel": "chat:room"})).await;

    let id = alice.next_id();
    alice
        .send_text(
            &json!({"id": id, "publish": {"channel": "chat:room", "data": {"text": "hi"}}})
                .to_string(),
        )
        .await;
    let expected = json!({
        "data": {"text": "hi"},
        "info": {"user": "", "client": alice_id},
    });
    // The publisher's reply and its own copy of the publication may come in either order.
    let (mut reply, mut own) = (None, None);
    while reply.is_none() || own.is_none() {
        let message = alice.next_json().await;
        if let Some(push) = message.get("push") {
            assert!(own.is_none(), "second push: {message}");
            own = Some(publication(push, "chat:room"));
        } else {
            assert!(reply.is_none(), "second reply: {message}");
            reply = Some(message);
        }
    }
    assert_eq!(reply, Some(json!({"id": id, "publish": {}})));
    assert_eq!(own, Some(expected.clone()));
    assert_eq!(publication(&bob.next_push().await, "chat:room"), expected);
}

/// A client publish without data (absent or `null`) is a bad request (107).
#[tokio::test]
async fn client_publish_without_data_is_a_bad_request() {
    let server = TestServer::start(PUBLISH_NAMESPACES).await;
    let (mut client, _) = connect(&server).await;
    subscribe(&mut client, json!({"channel": "chat:room"})).await;
    let reply = client
        .call("publish", json!({"channel": "chat:room"}))
        .await;
    assert_eq!(error_code(&reply), 107);
    let reply = client
        .call("publish", json!({"channel": "chat:room", "data": null}))
        .await;
    assert_eq!(error_code(&reply), 107);
}

// ---------------------------------------------------------------------------------------------------------
// Payload encoding
// ---------------------------------------------------------------------------------------------------------

/// API data containing raw newlines (whitespace between JSON tokens) is delivered without them: the
/// harness splits every frame on `\n` and parses each line as one document, so a raw newline inside the
/// push would fail here. The data is intact, also when read back from history.
#[tokio::test]
async fn raw_newlines_in_api_data_never_reach_the_wire() {
    let server = TestServer::start("").await;
    let (mut client, _) = connect(&server).await;
    subscribe(&mut client, json!({"channel": "news"})).await;
    let body = "{\"channel\":\"news\",\"data\":{\"a\":\n1,\r\n\"b\":\t[1,\n2],\n\"s\":\"x\"\n}\n}";
    let response = reqwest::Client::new()
        .post(format!("{}/publish", server.api_url()))
        .header("X-API-Key", API_KEY)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .expect("api request");
    assert_eq!(response.status().as_u16(), 200);
    let result: Value = response.json().await.expect("json body");
    assert_eq!(result["result"]["offset"], 1, "{result}");

    let expected = json!({"a": 1, "b": [1, 2], "s": "x"});
    let p = publication(&client.next_push().await, "news");
    assert_eq!(p["data"], expected);

    let reply = client
        .call("history", json!({"channel": "news", "limit": -1}))
        .await;
    assert_eq!(
        reply["history"]["publications"][0]["data"], expected,
        "{reply}"
    );
}

/// Unicode (raw and `\u` escaped) and escaped newlines, carriage returns and quotes inside JSON strings
/// survive the trip through the API and the push unchanged.
#[tokio::test]
async fn unicode_and_escaped_newlines_in_strings_survive() {
    let server = TestServer::start("").await;
    let (mut client, _) = connect(&server).await;
    subscribe(&mut client, json!({"channel": "news"})).await;

    let data = json!({
        "text": "héllo ✓ 😀 日本語",
        "lines": "line1\nline2\r\nline3",
        "quote": "say \"hi\" \\ back",
        "control": "tab\there",
    });
    server.publish("news", data.clone()).await;
    assert_eq!(publication(&client.next_push().await, "news")["data"], data);

    // Raw body with `\u` escapes and an escaped newline next to a raw one between tokens.
    let body =
        "{\"channel\":\"news\",\"data\":{\"s\":\"caf\\u00e9\\nnext\",\n\"e\":\"\u{1F600}\"}}";
    let response = reqwest::Client::new()
        .post(format!("{}/publish", server.api_url()))
        .header("X-API-Key", API_KEY)
        .body(body)
        .send()
        .await
        .expect("api request");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        publication(&client.next_push().await, "news")["data"],
        json!({"s": "café\nnext", "e": "😀"})
    );
}

// ---------------------------------------------------------------------------------------------------------
// Slow consumers
// ---------------------------------------------------------------------------------------------------------

/// A subscriber that stops reading is closed with `3008 slow` once its queue overflows, while a healthy
/// subscriber of the same channel keeps receiving every publication in order. The slow one, when it reads
/// again, finds an in-order prefix of the publications and then the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_dropped_without_holding_back_others() {
    const BLOB: usize = 16 * 1024;
    /// 100 MiB in total: far beyond loopback socket buffers plus the 64 KiB queue.
    const MAX_PUBLICATIONS: u64 = 6400;

    let server = TestServer::start(
        r#"
        [client]
        max_queue_bytes = 65536
        [websocket]
        write_timeout = "30s"
        "#,
    )
    .await;
    let (mut slow, _) = connect(&server).await;
    subscribe(&mut slow, json!({"channel": "firehose"})).await;
    let (mut healthy, _) = connect(&server).await;
    subscribe(&mut healthy, json!({"channel": "firehose"})).await;
    assert_eq!(server.node.hub.stats().clients, 2);

    let blob = "x".repeat(BLOB);
    let mut published = 0;
    for n in 1..=MAX_PUBLICATIONS {
        server
            .node
            .publish(PublishRequest {
                channel: "firehose".into(),
                data: Bytes::from(format!("{{\"n\":{n},\"blob\":\"{blob}\"}}")),
                ..Default::default()
            })
            .await
            .expect("publish");
        published = n;
        // The healthy client reads each publication before the next is made, so its queue never fills.
        let p = publication(&healthy.next_push().await, "firehose");
        assert_eq!(p["offset"], n);
        assert_eq!(p["data"]["n"], n);
        assert_eq!(p["data"]["blob"].as_str().map(str::len), Some(BLOB));
        if server.node.hub.stats().clients == 1 {
            break;
        }
    }
    assert_eq!(
        server.node.hub.stats().clients,
        1,
        "the slow client was not dropped after {published} publications"
    );

    // The healthy client is unaffected by the drop.
    server.publish("firehose", json!({"n": "after"})).await;
    let p = publication(&healthy.next_push().await, "firehose");
    assert_eq!(p["offset"], published + 1);

    let mut received = 0;
    loop {
        match slow.receive().await {
            Received::Json(value) => {
                let push = value
                    .get("push")
                    .unwrap_or_else(|| panic!("expected a push, got {value}"));
                let p = publication(push, "firehose");
                received += 1;
                assert_eq!(p["offset"], received, "in order, no gap");
            }
            Received::Close(code, reason) => {
                assert_eq!((code, reason.as_str()), (3008, "slow"));
                break;
            }
            Received::Ping => {}
        }
    }
    assert!(
        received < published,
        "the slow client got {received} of {published}: nothing was dropped"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Presence
// ---------------------------------------------------------------------------------------------------------

/// `presence` lists every subscribed connection (client id, user ""), `presence_stats` counts clients and
/// distinct users (all anonymous connections are one user ""), and both shrink after an unsubscribe and
/// after a disconnect (checked once the `leave` for that client has reached another subscriber).
#[tokio::test]
async fn presence_tracks_subscribers_and_shrinks_when_they_go() {
    let server = TestServer::start("").await;
    let (mut watcher, watcher_id) = connect(&server).await;
    subscribe(&mut watcher, json!({"channel": "room", "join_leave": true})).await;
    assert_eq!(
        watcher.next_push().await,
        presence_push("room", "join", &watcher_id)
    );
    let (mut bob, bob_id) = connect(&server).await;
    subscribe(&mut bob, json!({"channel": "room"})).await;
    assert_eq!(
        watcher.next_push().await,
        presence_push("room", "join", &bob_id)
    );
    let (mut carol, carol_id) = connect(&server).await;
    subscribe(&mut carol, json!({"channel": "room"})).await;
    assert_eq!(
        watcher.next_push().await,
        presence_push("room", "join", &carol_id)
    );

    let info = |id: &str| json!({"user": "", "client": id});
    let reply = watcher.call("presence", json!({"channel": "room"})).await;
    assert_eq!(
        reply["presence"],
        json!({"presence": {
            watcher_id.as_str(): info(&watcher_id),
            bob_id.as_str(): info(&bob_id),
            carol_id.as_str(): info(&carol_id),
        }}),
        "{reply}"
    );
    let reply = watcher
        .call("presence_stats", json!({"channel": "room"}))
        .await;
    assert_eq!(
        reply["presence_stats"],
        json!({"num_clients": 3, "num_users": 1}),
        "{reply}"
    );

    let reply = bob.call("unsubscribe", json!({"channel": "room"})).await;
    assert_eq!(reply["unsubscribe"], json!({}), "{reply}");
    assert_eq!(
        watcher.next_push().await,
        presence_push("room", "leave", &bob_id)
    );
    let reply = watcher.call("presence", json!({"channel": "room"})).await;
    assert_eq!(
        reply["presence"],
        json!({"presence": {
            watcher_id.as_str(): info(&watcher_id),
            carol_id.as_str(): info(&carol_id),
        }}),
        "{reply}"
    );
    let reply = watcher
        .call("presence_stats", json!({"channel": "room"}))
        .await;
    assert_eq!(
        reply["presence_stats"],
        json!({"num_clients": 2, "num_users": 1})
    );

    drop(carol);
    assert_eq!(
        watcher.next_push().await,
        presence_push("room", "leave", &carol_id)
    );
    let reply = watcher.call("presence", json!({"channel": "room"})).await;
    assert_eq!(
        reply["presence"],
        json!({"presence": {watcher_id.as_str(): info(&watcher_id)}}),
        "{reply}"
    );
    let reply = watcher
        .call("presence_stats", json!({"channel": "room"}))
        .await;
    assert_eq!(
        reply["presence_stats"],
        json!({"num_clients": 1, "num_users": 1})
    );
}

// ---------------------------------------------------------------------------------------------------------
// Join / leave
// ---------------------------------------------------------------------------------------------------------

/// A subscriber with `join_leave: true` gets `join` (its own first, then each newcomer) and `leave` on
/// unsubscribe and on disconnect, each with `info` {user, client}; a subscriber that did not ask gets none
/// of them: its next push after all that is the publication.
#[tokio::test]
async fn join_and_leave_reach_only_subscribers_that_asked() {
    let server = TestServer::start("").await;
    let (mut alice, alice_id) = connect(&server).await;
    subscribe(&mut alice, json!({"channel": "lobby", "join_leave": true})).await;
    assert_eq!(
        alice.next_push().await,
        presence_push("lobby", "join", &alice_id)
    );

    let (mut quiet, quiet_id) = connect(&server).await;
    subscribe(&mut quiet, json!({"channel": "lobby"})).await;
    assert_eq!(
        alice.next_push().await,
        presence_push("lobby", "join", &quiet_id)
    );

    let (mut carol, carol_id) = connect(&server).await;
    subscribe(&mut carol, json!({"channel": "lobby", "join_leave": true})).await;
    assert_eq!(
        alice.next_push().await,
        presence_push("lobby", "join", &carol_id)
    );
    assert_eq!(
        carol.next_push().await,
        presence_push("lobby", "join", &carol_id)
    );
    let reply = carol.call("unsubscribe", json!({"channel": "lobby"})).await;
    assert_eq!(reply["unsubscribe"], json!({}), "{reply}");
    assert_eq!(
        alice.next_push().await,
        presence_push("lobby", "leave", &carol_id)
    );

    let (mut dave, dave_id) = connect(&server).await;
    subscribe(&mut dave, json!({"channel": "lobby"})).await;
    assert_eq!(
        alice.next_push().await,
        presence_push("lobby", "join", &dave_id)
    );
    drop(dave);
    assert_eq!(
        alice.next_push().await,
        presence_push("lobby", "leave", &dave_id)
    );

    server.publish("lobby", json!({"after": true})).await;
    for client in [&mut alice, &mut quiet] {
        let p = publication(&client.next_push().await, "lobby");
        assert_eq!(p["data"], json!({"after": true}));
    }
}

// ---------------------------------------------------------------------------------------------------------
// Unsubscribe
// ---------------------------------------------------------------------------------------------------------

/// After `unsubscribe` (answered `{"id":N,"unsubscribe":{}}`) no more publications of that channel arrive
/// (the next push is from another channel published afterwards); unsubscribing from a channel never
/// subscribed, or twice, also succeeds; subscribing again works.
#[tokio::test]
async fn unsubscribe_stops_publications() {
    let server = TestServer::start("").await;
    let (mut client, _) = connect(&server).await;
    subscribe(&mut client, json!({"channel": "a"})).await;
    subscribe(&mut client, json!({"channel": "b"})).await;

    let reply = client.call("unsubscribe", json!({"channel": "a"})).await;
    assert_eq!(reply, json!({"id": reply["id"], "unsubscribe": {}}));

    server.publish("a", json!({"to": "a"})).await;
    server.publish("b", json!({"to": "b"})).await;
    let p = publication(&client.next_push().await, "b");
    assert_eq!(p["data"], json!({"to": "b"}));

    for channel in ["never", "a"] {
        let reply = client
            .call("unsubscribe", json!({"channel": channel}))
            .await;
        assert_eq!(
            reply,
            json!({"id": reply["id"], "unsubscribe": {}}),
            "{channel}"
        );
    }

    subscribe(&mut client, json!({"channel": "a"})).await;
    server.publish("a", json!({"to": "a", "again": true})).await;
    let p = publication(&client.next_push().await, "a");
    assert_eq!(p["data"], json!({"to": "a", "again": true}));
}
