//! The Centrifugo HTTP server API (`POST /api/<method>`) against a real Herald: authentication, error
//! mapping, every method's result shape and its effect on connected clients.

use herald_tests::{API_KEY, Client, Received, TestServer, publication};
use serde_json::{Value, json};

/// Sends a POST to `url` with `headers` and a raw body; returns the status and the body text.
async fn post(
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> (u16, String) {
    let mut request = reqwest::Client::new().post(url).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("api request");
    let status = response.status().as_u16();
    (status, response.text().await.expect("api body"))
}

/// `POST /api/info` with the given headers and query string, for the auth tests.
async fn info_with(server: &TestServer, query: &str, headers: &[(&str, &str)]) -> (u16, String) {
    post(&format!("{}/info{query}", server.api_url()), headers, "{}").await
}

/// The API answer as JSON, failing with the raw text if it is not JSON.
fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

/// The `result` object of a successful API answer.
fn result_of(status: u16, body: &Value) -> Value {
    assert_eq!(status, 200, "{body}");
    body.get("result")
        .cloned()
        .unwrap_or_else(|| panic!("no result: {body}"))
}

/// The error code of an API error answer (HTTP 200, `{"error":{…}}`).
fn error_code(status: u16, body: &Value) -> u64 {
    assert_eq!(status, 200, "{body}");
    assert!(body.get("result").is_none(), "{body}");
    body["error"]["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("no error code: {body}"))
}

/// The connection id of a connect result.
fn client_id(connect: &Value) -> String {
    connect["client"].as_str().expect("client id").to_string()
}

/// Subscribes and asserts success.
async fn subscribe_ok(client: &mut Client, channel: &str) -> Value {
    let reply = client.subscribe(json!({"channel": channel})).await;
    reply
        .get("subscribe")
        .cloned()
        .unwrap_or_else(|| panic!("subscribe to {channel} failed: {reply}"))
}

/// Waits until the session has finished every earlier command: it handles commands in order, so the reply
/// to a no-op (unsubscribing from a channel it is not in) comes after all their effects.
async fn barrier(client: &mut Client) {
    let reply = client
        .command(
            "unsubscribe",
            json!({"channel": "barrier-never-subscribed"}),
        )
        .await;
    assert!(reply.get("unsubscribe").is_some(), "{reply}");
}

// ------------------------------------------------------------------------------------------ auth ---

/// Without any key the API answers 401 with an empty body (nothing about the API leaks).
#[tokio::test]
async fn missing_key_is_401_with_empty_body() {
    let server = TestServer::start("").await;
    let (status, body) = info_with(&server, "", &[]).await;
    assert_eq!(status, 401);
    assert_eq!(body, "");
}

/// A wrong key is rejected wherever it is given: `X-API-Key`, `Authorization: apikey` and `?api_key=`.
#[tokio::test]
async fn wrong_key_is_401_in_every_place() {
    let server = TestServer::start("").await;
    let bearer = format!("bearer {API_KEY}");
    for (query, headers) in [
        ("", vec![("X-API-Key", "wrong")]),
        ("", vec![("Authorization", "apikey wrong")]),
        ("?api_key=wrong", vec![]),
        ("", vec![("X-API-Key", "")]),
        ("", vec![("Authorization", bearer.as_str())]),
    ] {
        let (status, body) = info_with(&server, query, &headers).await;
        assert_eq!(status, 401, "{query} {headers:?}: {body}");
        assert_eq!(body, "", "{query} {headers:?}");
    }
}

/// The right key works in each of the three places Centrifugo accepts it.
#[tokio::test]
async fn key_is_accepted_in_header_authorization_and_query() {
    let server = TestServer::start("").await;
    let authorization = format!("apikey {API_KEY}");
    let query = format!("?api_key={API_KEY}");
    for (query, headers) in [
        ("", vec![("X-API-Key", API_KEY)]),
        ("", vec![("Authorization", authorization.as_str())]),
        (query.as_str(), vec![]),
    ] {
        let (status, body) = info_with(&server, query, &headers).await;
        assert_eq!(status, 200, "{query} {headers:?}: {body}");
        assert!(parse(&body)["result"]["nodes"].is_array(), "{body}");
    }
}

/// With no key configured the API is off: every request gets 401, whatever key it carries.
#[tokio::test]
async fn no_configured_key_rejects_everything() {
    let server = TestServer::start("[http_api]\nkey = \"\"").await;
    for (query, headers) in [
        ("", vec![]),
        ("", vec![("X-API-Key", API_KEY)]),
        ("", vec![("X-API-Key", "")]),
        ("?api_key=", vec![]),
        ("", vec![("Authorization", "apikey ")]),
    ] {
        let (status, body) = info_with(&server, query, &headers).await;
        assert_eq!(status, 401, "{query} {headers:?}: {body}");
        assert_eq!(body, "");
    }
}

/// `http_api.insecure` without a key lets requests through without any key.
#[tokio::test]
async fn insecure_mode_needs_no_key() {
    let server = TestServer::start("[http_api]\nkey = \"\"\ninsecure = true").await;
    let (status, body) = info_with(&server, "", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(parse(&body)["result"]["nodes"].as_array().unwrap().len(), 1);
}

/// `GET /health` answers 200 without a key.
#[tokio::test]
async fn health_needs_no_key() {
    let server = TestServer::start("").await;
    let response = reqwest::get(format!("http://{}/health", server.addr))
        .await
        .expect("health request");
    assert_eq!(response.status().as_u16(), 200);
}

/// `GET /ready`: 200 on a healthy node, without a key.
#[tokio::test]
async fn ready_is_200_on_a_healthy_node() {
    let server = TestServer::start("").await;
    let response = reqwest::get(format!("http://{}/ready", server.addr))
        .await
        .expect("ready request");
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("JSON from /ready");
    assert_eq!(body, json!({ "ready": true }));
}

/// A plugin found at start that does not load keeps the node out of rotation, naming the file.
#[tokio::test]
async fn ready_is_503_while_a_plugin_found_at_start_has_not_loaded() {
    let dir = tempfile::tempdir().expect("plugin dir");
    std::fs::write(dir.path().join("broken.wasm"), b"not a component").expect("write plugin");
    let server = TestServer::start(&format!("[plugins]\ndir = {:?}\n", dir.path())).await;
    let response = reqwest::get(format!("http://{}/ready", server.addr))
        .await
        .expect("ready request");
    assert_eq!(response.status().as_u16(), 503);
    let body: Value = response.json().await.expect("JSON from /ready");
    assert_eq!(body["ready"], false, "{body}");
    let reasons = body["reasons"].as_array().expect("reasons").clone();
    assert!(
        reasons
            .iter()
            .any(|reason| reason.as_str().is_some_and(|r| r.contains("broken.wasm"))),
        "{body}"
    );
}

// ---------------------------------------------------------------------------------------- errors ---

/// An unknown API method is `200 {"error":{"code":104,…}}`.
#[tokio::test]
async fn unknown_method_is_104() {
    let server = TestServer::start("").await;
    let (status, body) = server.api("no_such_method", json!({})).await;
    assert_eq!(error_code(status, &body), 104, "{body}");
    assert_eq!(body["error"]["message"], "method not found");
}

/// One rule for bad bodies, Centrifugo's. A body that does not decode as the method's request (not JSON,
/// empty, a value of the wrong type) is HTTP `400` with a plain-text message in both error modes. A body
/// that decodes but lacks a needed value — absent, `null` or empty — is the API error `107`: `200` with
/// `{"error":{"code":107,…}}` by default, `400` with the bare error object in transport error mode.
#[tokio::test]
async fn bad_bodies_are_400_when_undecodable_and_107_when_a_value_is_missing() {
    let server = TestServer::start("").await;
    let url = |method: &str| format!("{}/{method}", server.api_url());
    let default_mode = [("X-API-Key", API_KEY)];
    let transport_mode = [
        ("X-API-Key", API_KEY),
        ("X-Centrifugo-Error-Mode", "transport"),
    ];
    let undecodable = [
        ("publish", r#"{"channel": "news", "data": "#),
        ("publish", "not json"),
        ("publish", ""),
        ("publish", r#"{"channel": 5, "data": {}}"#),
        (
            "publish",
            r#"{"channel": "news", "data": 1, "tags": {"a": 1}}"#,
        ),
        ("history", r#"{"channel": "news", "limit": "all"}"#),
        (
            "disconnect",
            r#"{"user": "u", "disconnect": {"code": "4000"}}"#,
        ),
        ("info", "{"),
    ];
    for (method, body) in undecodable {
        for headers in [&default_mode[..], &transport_mode[..]] {
            let (status, text) = post(&url(method), headers, body).await;
            assert_eq!(status, 400, "{method} {body:?} ({headers:?}): {text}");
            assert!(
                text.starts_with("malformed request body"),
                "{method} {body:?}: {text}"
            );
        }
    }
    let missing_a_value = [
        ("publish", r#"{"data": 1}"#),
        ("publish", r#"{"channel": "", "data": 1}"#),
        ("publish", r#"{"channel": null, "data": 1}"#),
        ("publish", r#"{"channel": "news"}"#),
        ("publish", r#"{"channel": "news", "data": null}"#),
        ("broadcast", r#"{"data": 1}"#),
        ("broadcast", r#"{"channels": [], "data": 1}"#),
        ("history", "{}"),
        ("presence", r#"{"channel": ""}"#),
        ("presence_stats", "{}"),
        ("subscribe", r#"{"user": "u"}"#),
        ("unsubscribe", r#"{"user": "u", "channel": null}"#),
        (
            "disconnect",
            r#"{"user": "u", "disconnect": {"reason": "no code"}}"#,
        ),
    ];
    for (method, body) in missing_a_value {
        let (status, text) = post(&url(method), &default_mode, body).await;
        assert_eq!(
            error_code(status, &parse(&text)),
            107,
            "{method} {body:?}: {text}"
        );
        let (status, text) = post(&url(method), &transport_mode, body).await;
        assert_eq!(status, 400, "{method} {body:?} (transport): {text}");
        assert_eq!(parse(&text)["code"], 107, "{method} {body:?}: {text}");
    }
    // Nothing of the above was published.
    let (status, body) = server
        .api("history", json!({"channel": "news", "limit": -1}))
        .await;
    let stored = result_of(status, &body)["publications"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(stored, 0, "{body}");
}

/// A channel in a namespace that is not configured is `102 unknown channel`.
#[tokio::test]
async fn unknown_namespace_is_102() {
    let server = TestServer::start("").await;
    let (status, body) = server
        .api("publish", json!({"channel": "nope:x", "data": {}}))
        .await;
    assert_eq!(error_code(status, &body), 102, "{body}");
    assert_eq!(body["error"]["message"], "unknown channel");
}

/// `X-Centrifugo-Error-Mode: transport` turns API errors into HTTP statuses with the bare error object as
/// body: 102 and 104 → 404, 107 → 400.
#[tokio::test]
async fn transport_error_mode_maps_codes_to_statuses() {
    let server = TestServer::start("").await;
    let headers = [
        ("X-API-Key", API_KEY),
        ("X-Centrifugo-Error-Mode", "transport"),
        ("Content-Type", "application/json"),
    ];
    let url = |method: &str| format!("{}/{method}", server.api_url());
    let (status, body) = post(
        &url("publish"),
        &headers,
        r#"{"channel":"nope:x","data":{}}"#,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        parse(&body),
        json!({"code": 102, "message": "unknown channel"})
    );
    let (status, body) = post(&url("no_such_method"), &headers, "{}").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(parse(&body)["code"], 104, "{body}");
    let (status, body) = post(&url("publish"), &headers, r#"{"channel":"news"}"#).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(parse(&body)["code"], 107, "{body}");
    // Success is unaffected by the header.
    let (status, body) = post(&url("publish"), &headers, r#"{"channel":"news","data":1}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(parse(&body)["result"]["offset"], 1, "{body}");
}

// --------------------------------------------------------------------------------------- publish ---

/// With history the publish result carries the new offset and the stream epoch, counting up from 1.
#[tokio::test]
async fn publish_reports_offset_and_epoch_with_history() {
    let server = TestServer::start("").await;
    let (status, first) = server
        .api("publish", json!({"channel": "news", "data": {"n": 1}}))
        .await;
    let first = result_of(status, &first);
    let epoch = first["epoch"].as_str().expect("epoch").to_string();
    assert!(!epoch.is_empty());
    assert_eq!(first, json!({"offset": 1, "epoch": epoch}));
    let second = server.publish("news", json!({"n": 2})).await;
    assert_eq!(second, json!({"offset": 2, "epoch": epoch}));
}

/// Without history in the namespace the publish result is the empty object, and subscribers still get it.
#[tokio::test]
async fn publish_without_history_is_empty_result() {
    let server = TestServer::start(
        "[channel.namespaces.plain]\nallow_subscribe_for_client = true\nallow_subscribe_for_anonymous = true",
    )
    .await;
    let (mut client, _) = Client::connect(&server).await;
    subscribe_ok(&mut client, "plain:room").await;
    let (status, body) = server
        .api(
            "publish",
            json!({"channel": "plain:room", "data": {"n": 1}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"result": {}}));
    let push = client.next_push().await;
    assert_eq!(publication(&push, "plain:room"), json!({"data": {"n": 1}}));
}

/// `tags` given to publish arrive in the subscribers' publication.
#[tokio::test]
async fn publish_tags_reach_subscribers() {
    let server = TestServer::start("").await;
    let (mut client, _) = Client::connect(&server).await;
    subscribe_ok(&mut client, "news").await;
    let (status, body) = server
        .api(
            "publish",
            json!({"channel": "news", "data": {"n": 1}, "tags": {"kind": "alert", "lang": "en"}}),
        )
        .await;
    result_of(status, &body);
    let push = client.next_push().await;
    assert_eq!(
        publication(&push, "news"),
        json!({"data": {"n": 1}, "offset": 1, "tags": {"kind": "alert", "lang": "en"}})
    );
}

/// `skip_history` delivers the publication live but keeps it out of the channel's history and stream.
#[tokio::test]
async fn skip_history_keeps_publication_out_of_history() {
    let server = TestServer::start("").await;
    let (mut client, _) = Client::connect(&server).await;
    subscribe_ok(&mut client, "news").await;
    server.publish("news", json!({"n": 1})).await;
    let (status, body) = server
        .api(
            "publish",
            json!({"channel": "news", "data": {"n": 2}, "skip_history": true}),
        )
        .await;
    let skipped = result_of(status, &body);
    assert!(skipped.get("offset").is_none(), "{body}");
    let third = server.publish("news", json!({"n": 3})).await;
    assert_eq!(third["offset"], 2, "the skipped publication took no offset");

    let live: Vec<Value> = [
        client.next_push().await,
        client.next_push().await,
        client.next_push().await,
    ]
    .iter()
    .map(|push| publication(push, "news"))
    .collect();
    assert_eq!(
        live,
        vec![
            json!({"data": {"n": 1}, "offset": 1}),
            json!({"data": {"n": 2}}),
            json!({"data": {"n": 3}, "offset": 2}),
        ]
    );

    let (status, body) = server
        .api("history", json!({"channel": "news", "limit": -1}))
        .await;
    let history = result_of(status, &body);
    assert_eq!(
        history["publications"],
        json!([{"data": {"n": 1}, "offset": 1}, {"data": {"n": 3}, "offset": 2}])
    );
    assert_eq!(history["offset"], 2);
}

// ------------------------------------------------------------------------------------- broadcast ---

/// broadcast answers one response per channel in request order (an unknown namespace gets its own error)
/// and each channel's subscribers receive the publication.
#[tokio::test]
async fn broadcast_answers_per_channel_in_order() {
    let server = TestServer::start("").await;
    let (mut a, _) = Client::connect(&server).await;
    let (mut b, _) = Client::connect(&server).await;
    subscribe_ok(&mut a, "alpha").await;
    subscribe_ok(&mut b, "beta").await;
    server.publish("beta", json!("earlier")).await;
    assert_eq!(publication(&b.next_push().await, "beta")["offset"], 1);

    let (status, body) = server
        .api(
            "broadcast",
            json!({"channels": ["alpha", "nope:x", "beta"], "data": {"text": "all"}}),
        )
        .await;
    let responses = result_of(status, &body)["responses"]
        .as_array()
        .unwrap_or_else(|| panic!("no responses array: {body}"))
        .clone();
    assert_eq!(responses.len(), 3, "{body}");
    assert_eq!(responses[0]["result"]["offset"], 1, "{body}");
    assert!(responses[0]["result"]["epoch"].is_string(), "{body}");
    assert_eq!(
        responses[1],
        json!({"error": {"code": 102, "message": "unknown channel"}})
    );
    assert_eq!(responses[2]["result"]["offset"], 2, "{body}");
    assert!(responses[2]["result"]["epoch"].is_string(), "{body}");

    assert_eq!(
        publication(&a.next_push().await, "alpha"),
        json!({"data": {"text": "all"}, "offset": 1})
    );
    assert_eq!(
        publication(&b.next_push().await, "beta"),
        json!({"data": {"text": "all"}, "offset": 2})
    );
}

/// broadcast without channels is `107`.
#[tokio::test]
async fn broadcast_without_channels_is_107() {
    let server = TestServer::start("").await;
    let (status, body) = server
        .api("broadcast", json!({"channels": [], "data": 1}))
        .await;
    assert_eq!(error_code(status, &body), 107, "{body}");
}

// ------------------------------------------------------------------------ history and presence ---

/// history through the API: `publications` (always an array), `epoch` and `offset` (the stream top), with
/// `limit` 0 returning only the position and `since`/`reverse` selecting as for clients.
#[tokio::test]
async fn history_shapes_and_filters() {
    let server = TestServer::start("").await;
    let (status, body) = server
        .api("history", json!({"channel": "news", "limit": -1}))
        .await;
    let empty = result_of(status, &body);
    assert_eq!(empty["publications"], json!([]), "{body}");
    assert_eq!(empty["offset"], 0, "offset is always present: {body}");
    let epoch = empty["epoch"].as_str().expect("epoch always present");
    assert!(!epoch.is_empty());

    for n in 1..=3 {
        server.publish("news", json!({"n": n})).await;
    }
    let history = |request: Value| {
        let server = &server;
        async move {
            let (status, body) = server.api("history", request).await;
            result_of(status, &body)
        }
    };
    assert_eq!(
        history(json!({"channel": "news", "limit": -1})).await,
        json!({
            "publications": [
                {"data": {"n": 1}, "offset": 1},
                {"data": {"n": 2}, "offset": 2},
                {"data": {"n": 3}, "offset": 3},
            ],
            "epoch": epoch,
            "offset": 3,
        })
    );
    assert_eq!(
        history(json!({"channel": "news"})).await,
        json!({"publications": [], "epoch": epoch, "offset": 3}),
        "limit 0 returns only the stream position"
    );
    let since =
        history(json!({"channel": "news", "limit": -1, "since": {"offset": 1, "epoch": epoch}}))
            .await;
    assert_eq!(
        since["publications"],
        json!([{"data": {"n": 2}, "offset": 2}, {"data": {"n": 3}, "offset": 3}])
    );
    let newest = history(json!({"channel": "news", "limit": 1, "reverse": true})).await;
    assert_eq!(
        newest["publications"],
        json!([{"data": {"n": 3}, "offset": 3}])
    );

    let (status, body) = server
        .api(
            "history",
            json!({"channel": "news", "limit": -1, "since": {"offset": 1, "epoch": "wrong"}}),
        )
        .await;
    assert_eq!(error_code(status, &body), 112, "{body}");
}

/// presence and presence_stats through the API: the `presence` object keyed by client id, and the counts
/// (both always present, also for an empty channel); `108` where the namespace has no presence.
#[tokio::test]
async fn presence_and_presence_stats_shapes() {
    let server =
        TestServer::start("[channel.namespaces.plain]\nallow_subscribe_for_client = true").await;
    let call = |method: &'static str, channel: &'static str| {
        let server = &server;
        async move { server.api(method, json!({"channel": channel})).await }
    };
    let (status, body) = call("presence", "room").await;
    assert_eq!(result_of(status, &body), json!({"presence": {}}));
    let (status, body) = call("presence_stats", "room").await;
    assert_eq!(
        result_of(status, &body),
        json!({"num_clients": 0, "num_users": 0})
    );

    let (mut a, ca) = Client::connect(&server).await;
    let (mut b, cb) = Client::connect(&server).await;
    subscribe_ok(&mut a, "room").await;
    subscribe_ok(&mut b, "room").await;
    // Presence is recorded right after the subscribe reply is queued; a session handles commands in order,
    // so the reply to a later command proves it is done.
    barrier(&mut a).await;
    barrier(&mut b).await;
    let (ida, idb) = (client_id(&ca), client_id(&cb));

    let (status, body) = call("presence", "room").await;
    let mut expected = serde_json::Map::new();
    expected.insert(ida.clone(), json!({"user": "", "client": ida}));
    expected.insert(idb.clone(), json!({"user": "", "client": idb}));
    assert_eq!(
        result_of(status, &body),
        json!({"presence": Value::Object(expected)})
    );
    let (status, body) = call("presence_stats", "room").await;
    assert_eq!(
        result_of(status, &body),
        json!({"num_clients": 2, "num_users": 1}),
        "two anonymous connections are one (empty) user"
    );

    let (status, body) = call("presence", "plain:x").await;
    assert_eq!(error_code(status, &body), 108, "{body}");
    let (status, body) = call("presence_stats", "plain:x").await;
    assert_eq!(error_code(status, &body), 108, "{body}");
    let (status, body) = call("presence", "nope:x").await;
    assert_eq!(error_code(status, &body), 102, "{body}");
}

// ---------------------------------------------------------------------------------- channels/info ---

/// channels lists the channels that have subscribers with their `num_clients`; `pattern` filters with `*`.
#[tokio::test]
async fn channels_lists_active_channels_and_filters() {
    let server = TestServer::start("").await;
    let (mut a, _) = Client::connect(&server).await;
    let (mut b, _) = Client::connect(&server).await;
    subscribe_ok(&mut a, "room-1").await;
    subscribe_ok(&mut b, "room-1").await;
    subscribe_ok(&mut a, "room-2").await;
    subscribe_ok(&mut b, "lobby").await;
    // A channel that only has history, no subscriber, is not listed.
    server.publish("silent", json!(1)).await;

    let (status, body) = server.api("channels", json!({})).await;
    assert_eq!(
        result_of(status, &body),
        json!({"channels": {
            "lobby": {"num_clients": 1},
            "room-1": {"num_clients": 2},
            "room-2": {"num_clients": 1},
        }})
    );
    let (status, body) = server.api("channels", json!({"pattern": "room-*"})).await;
    assert_eq!(
        result_of(status, &body),
        json!({"channels": {"room-1": {"num_clients": 2}, "room-2": {"num_clients": 1}}})
    );
    let (status, body) = server.api("channels", json!({"pattern": "*by"})).await;
    assert_eq!(
        result_of(status, &body),
        json!({"channels": {"lobby": {"num_clients": 1}}})
    );

    b.command("unsubscribe", json!({"channel": "lobby"})).await;
    let (status, body) = server.api("channels", json!({"pattern": "lobby"})).await;
    assert_eq!(result_of(status, &body)["channels"], json!({}), "{body}");
}

/// info reports this node with its id, version and correct counts of clients, users, channels and
/// subscriptions.
#[tokio::test]
async fn info_reports_the_node_with_counts() {
    let server = TestServer::start("").await;
    let node_info = || {
        let server = &server;
        async move {
            let (status, body) = server.api("info", json!({})).await;
            let nodes = result_of(status, &body)["nodes"].clone();
            let nodes = nodes.as_array().unwrap_or_else(|| panic!("{body}"));
            assert_eq!(nodes.len(), 1, "{body}");
            nodes[0].clone()
        }
    };
    let idle = node_info().await;
    assert_eq!(idle["uid"], server.node.id.as_str(), "{idle}");
    assert_eq!(idle["version"], herald::node::VERSION, "{idle}");
    assert!(idle["uptime"].is_u64(), "{idle}");
    for key in ["num_clients", "num_users", "num_channels", "num_subs"] {
        assert_eq!(idle[key].as_u64().unwrap_or(0), 0, "{key}: {idle}");
    }

    let (mut a, _) = Client::connect(&server).await;
    let (mut b, _) = Client::connect(&server).await;
    let (_c, _) = Client::connect(&server).await;
    subscribe_ok(&mut a, "x").await;
    subscribe_ok(&mut a, "y").await;
    subscribe_ok(&mut b, "x").await;
    let busy = node_info().await;
    assert_eq!(busy["num_clients"], 3, "{busy}");
    assert_eq!(busy["num_users"], 1, "three anonymous connections: {busy}");
    assert_eq!(busy["num_channels"], 2, "{busy}");
    assert_eq!(busy["num_subs"], 3, "{busy}");
}

// ------------------------------------------------------------------------------------ disconnect ---

/// disconnect with a code closes exactly that client with that code and reason; other clients stay.
#[tokio::test]
async fn disconnect_closes_only_the_target_client() {
    let server = TestServer::start("").await;
    let (mut target, connect) = Client::connect(&server).await;
    let (mut other, _) = Client::connect(&server).await;
    subscribe_ok(&mut other, "news").await;
    let (status, body) = server
        .api(
            "disconnect",
            json!({"user": "", "client": client_id(&connect), "disconnect": {"code": 4000, "reason": "bye"}}),
        )
        .await;
    assert_eq!(result_of(status, &body), json!({}));
    assert_eq!(target.expect_close().await, (4000, "bye".to_string()));

    server.publish("news", json!("still here")).await;
    assert_eq!(
        publication(&other.next_push().await, "news")["data"],
        "still here"
    );
    let reply = other
        .command("presence_stats", json!({"channel": "news"}))
        .await;
    assert_eq!(reply["presence_stats"]["num_clients"], 1, "{reply}");
}

/// disconnect without a `disconnect` object closes with `3503 force disconnect` (no reconnect).
#[tokio::test]
async fn disconnect_defaults_to_force_disconnect() {
    let server = TestServer::start("").await;
    let (mut client, connect) = Client::connect(&server).await;
    let (status, body) = server
        .api(
            "disconnect",
            json!({"user": "", "client": client_id(&connect)}),
        )
        .await;
    result_of(status, &body);
    assert_eq!(
        client.expect_close().await,
        (3503, "force disconnect".to_string())
    );
}

/// disconnect without a client id closes every connection of the user.
#[tokio::test]
async fn disconnect_by_user_closes_all_its_connections() {
    let server = TestServer::start("").await;
    let (mut a, _) = Client::connect(&server).await;
    let (mut b, _) = Client::connect(&server).await;
    let (status, body) = server
        .api(
            "disconnect",
            json!({"user": "", "disconnect": {"code": 4501, "reason": "gone"}}),
        )
        .await;
    result_of(status, &body);
    assert_eq!(a.expect_close().await, (4501, "gone".to_string()));
    assert_eq!(b.expect_close().await, (4501, "gone".to_string()));
}

/// A disconnect code outside 3000–4999 (e.g. 1000) is `107` and closes nobody.
#[tokio::test]
async fn disconnect_with_invalid_code_is_107() {
    let server = TestServer::start("").await;
    let (mut client, connect) = Client::connect(&server).await;
    let (status, body) = server
        .api(
            "disconnect",
            json!({"user": "", "client": client_id(&connect), "disconnect": {"code": 1000, "reason": "x"}}),
        )
        .await;
    assert_eq!(error_code(status, &body), 107, "{body}");
    let reply = client.subscribe(json!({"channel": "news"})).await;
    assert!(
        reply.get("subscribe").is_some(),
        "client must still be connected: {reply}"
    );
}

// --------------------------------------------------------------------------- subscribe/unsubscribe ---

/// Server-side subscribe pushes `subscribe` for the channel to that client, which then receives the
/// channel's publications.
#[tokio::test]
async fn server_side_subscribe_pushes_subscribe_then_publications() {
    let server = TestServer::start("").await;
    let (mut client, connect) = Client::connect(&server).await;
    let (status, body) = server
        .api(
            "subscribe",
            json!({"user": "", "client": client_id(&connect), "channel": "news"}),
        )
        .await;
    assert_eq!(result_of(status, &body), json!({}));
    let push = client.next_push().await;
    assert_eq!(push["channel"], "news", "{push}");
    assert!(push["subscribe"].is_object(), "{push}");

    server.publish("news", json!({"n": 1})).await;
    assert_eq!(
        publication(&client.next_push().await, "news"),
        json!({"data": {"n": 1}, "offset": 1})
    );
    let (status, body) = server.api("channels", json!({})).await;
    assert_eq!(
        result_of(status, &body)["channels"]["news"]["num_clients"],
        1
    );
}

/// In a namespace with forced recovery the `subscribe` push carries the stream position.
#[tokio::test]
async fn server_side_subscribe_push_carries_position_when_recovery_is_forced() {
    let server = TestServer::start(
        "[channel.namespaces.feed]\nhistory_size = 10\nhistory_ttl = \"1m\"\nforce_recovery = true",
    )
    .await;
    let first = server.publish("feed:a", json!(1)).await;
    let (mut client, connect) = Client::connect(&server).await;
    let (status, body) = server
        .api(
            "subscribe",
            json!({"user": "", "client": client_id(&connect), "channel": "feed:a"}),
        )
        .await;
    result_of(status, &body);
    let push = client.next_push().await;
    assert_eq!(
        push,
        json!({"channel": "feed:a", "subscribe": {
            "recoverable": true, "positioned": true, "epoch": first["epoch"], "offset": 1
        }})
    );
}

/// A server-side subscribe that recovers (`recover_since`) brings what was missed after its `subscribe`
/// push, as publication pushes in order (the push itself has no room for them).
#[tokio::test]
async fn server_side_subscribe_with_recovery_delivers_what_was_missed() {
    let server = TestServer::start(
        "[channel.namespaces.feed]\nhistory_size = 10\nhistory_ttl = \"1m\"\nforce_recovery = true",
    )
    .await;
    let first = server.publish("feed:a", json!(1)).await;
    server.publish("feed:a", json!(2)).await;
    server.publish("feed:a", json!(3)).await;
    let (mut client, connect) = Client::connect(&server).await;
    let (status, body) = server
        .api(
            "subscribe",
            json!({"user": "", "client": client_id(&connect), "channel": "feed:a",
                   "recover_since": {"offset": 1, "epoch": first["epoch"]}}),
        )
        .await;
    result_of(status, &body);
    let push = client.next_push().await;
    assert_eq!(push["subscribe"]["offset"], 1, "{push}");
    for n in [2, 3] {
        assert_eq!(publication(&client.next_push().await, "feed:a")["data"], n);
    }
}

/// Server-side subscribe and unsubscribe into an unknown namespace is `102`; without a channel `107`.
#[tokio::test]
async fn server_side_subscribe_validates_the_channel() {
    let server = TestServer::start("").await;
    let (_client, connect) = Client::connect(&server).await;
    for method in ["subscribe", "unsubscribe"] {
        let (status, body) = server
            .api(
                method,
                json!({"user": "", "client": client_id(&connect), "channel": "nope:x"}),
            )
            .await;
        assert_eq!(error_code(status, &body), 102, "{method}: {body}");
        let (status, body) = server
            .api(method, json!({"user": "", "client": client_id(&connect)}))
            .await;
        assert_eq!(error_code(status, &body), 107, "{method}: {body}");
    }
}

/// Server-side unsubscribe pushes `unsubscribe {2000, "server unsubscribe"}` and stops publications: a later
/// publication into that channel is not delivered (a publication into another channel arrives instead).
#[tokio::test]
async fn server_side_unsubscribe_stops_publications() {
    let server = TestServer::start("").await;
    let (mut client, connect) = Client::connect(&server).await;
    let id = client_id(&connect);
    subscribe_ok(&mut client, "marker").await;
    server
        .api(
            "subscribe",
            json!({"user": "", "client": id, "channel": "news"}),
        )
        .await;
    let push = client.next_push().await;
    assert!(push["subscribe"].is_object(), "{push}");

    let (status, body) = server
        .api(
            "unsubscribe",
            json!({"user": "", "client": id, "channel": "news"}),
        )
        .await;
    assert_eq!(result_of(status, &body), json!({}));
    assert_eq!(
        client.next_push().await,
        json!({"channel": "news", "unsubscribe": {"code": 2000, "reason": "server unsubscribe"}})
    );

    server.publish("news", json!("after unsubscribe")).await;
    server.publish("marker", json!("marker")).await;
    let next = client.next_push().await;
    assert_eq!(
        publication(&next, "marker")["data"],
        "marker",
        "the news publication after unsubscribe must not arrive"
    );
    let (_, body) = server.api("channels", json!({})).await;
    assert!(body["result"]["channels"].get("news").is_none(), "{body}");
}

/// Server-side unsubscribe also ends a client-side subscription, with the same push.
#[tokio::test]
async fn server_side_unsubscribe_ends_client_side_subscription() {
    let server = TestServer::start("").await;
    let (mut client, connect) = Client::connect(&server).await;
    subscribe_ok(&mut client, "news").await;
    let (status, body) = server
        .api(
            "unsubscribe",
            json!({"user": "", "client": client_id(&connect), "channel": "news"}),
        )
        .await;
    result_of(status, &body);
    match client.receive().await {
        Received::Json(v) => assert_eq!(
            v,
            json!({"push": {"channel": "news", "unsubscribe": {"code": 2000, "reason": "server unsubscribe"}}})
        ),
        other => panic!("expected the unsubscribe push, got {other:?}"),
    }
    // Subscribing again works: the old subscription is gone.
    assert!(subscribe_ok(&mut client, "news").await.is_object());
}

// ---------------------------------------------------------------------------------- idempotency ---

/// A publish repeated with the same `idempotency_key` answers the first position and reaches subscribers
/// once; another key is another publication.
#[tokio::test]
async fn idempotency_key_publishes_once() {
    let server = TestServer::start("").await;
    let (mut client, _) = Client::connect(&server).await;
    subscribe_ok(&mut client, "orders").await;
    let once =
        |n: u32, key: &str| json!({"channel": "orders", "data": {"n": n}, "idempotency_key": key});
    let (_, first) = server.api("publish", once(1, "order-1")).await;
    let (_, repeat) = server.api("publish", once(1, "order-1")).await;
    assert_eq!(repeat, first, "a repeat answers the first position");
    let (_, second) = server.api("publish", once(2, "order-2")).await;
    assert_eq!(second["result"]["offset"], 2, "{second}");
    let (_, broadcast) = server
        .api(
            "broadcast",
            json!({"channels": ["orders"], "data": {"n": 2}, "idempotency_key": "order-2"}),
        )
        .await;
    assert_eq!(broadcast["result"]["responses"][0], second, "{broadcast}");

    let offsets = [
        publication(&client.next_push().await, "orders")["offset"].clone(),
        publication(&client.next_push().await, "orders")["offset"].clone(),
    ];
    assert_eq!(offsets, [json!(1), json!(2)]);
    // Nothing else was queued for the client: the reply to a no-op is the very next message.
    let noop = client
        .call("unsubscribe", json!({"channel": "never-subscribed"}))
        .await;
    assert!(noop.get("unsubscribe").is_some(), "{noop}");
    let (_, history) = server
        .api("history", json!({"channel": "orders", "limit": -1}))
        .await;
    let stored = history["result"]["publications"].as_array().map(Vec::len);
    assert_eq!(stored, Some(2), "repeats are not stored: {history}");
}

/// `batch` answers each command in its place at the top level, keeps going past a failed one, and refuses
/// what it cannot run: a nested batch, a command naming no method or two, a body that is not a batch.
#[tokio::test]
async fn batch_answers_each_command_in_order() {
    let server = TestServer::start("").await;
    let (status, body) = server
        .api(
            "batch",
            json!({"commands": [
                {"publish": {"channel": "b", "data": {"n": 1}}},
                {"publish": {"channel": "", "data": {"n": 2}}},
                {"history": {"channel": "b", "limit": -1}},
                {"batch": {"commands": []}},
                {"publish": {"channel": "b", "data": 1}, "history": {"channel": "b"}},
                {"no_such_method": {}},
                {"publish": {"channel": 5}},
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let replies = body["replies"]
        .as_array()
        .expect("replies at the top level");
    assert_eq!(replies.len(), 7, "{body}");
    assert_eq!(replies[0]["publish"]["offset"], 1, "{body}");
    assert_eq!(replies[1]["error"]["code"], 107, "{body}");
    assert_eq!(
        replies[2]["history"]["publications"][0]["data"],
        json!({"n": 1})
    );
    for (i, code) in [(3, 107), (4, 107), (5, 104), (6, 107)] {
        assert_eq!(replies[i]["error"]["code"], code, "reply {i}: {body}");
    }
    let (status, _) = server.api("batch", json!({"commands": 5})).await;
    assert_eq!(status, 400);
}

/// `b64data` publishes the JSON it encodes; base64 that is not JSON, and a Centrifugo `session`, are 107.
#[tokio::test]
async fn b64data_must_be_json_and_sessions_are_refused() {
    let server = TestServer::start("").await;
    let (mut client, _) = Client::connect(&server).await;
    subscribe_ok(&mut client, "b64").await;
    let (_, body) = server
        .api(
            "publish",
            json!({"channel": "b64", "b64data": "eyJuIjoxfQ=="}),
        )
        .await;
    assert_eq!(body["result"]["offset"], 1, "{body}");
    let push = client.next_push().await;
    assert_eq!(publication(&push, "b64")["data"], json!({"n": 1}));
    for request in [
        json!({"channel": "b64", "b64data": "/wA="}),
        json!({"channel": "b64", "b64data": "not base64!"}),
    ] {
        let (_, body) = server.api("publish", request).await;
        assert_eq!(body["error"]["code"], 107, "{body}");
    }
    let (_, body) = server
        .api("disconnect", json!({"user": "", "session": "s1"}))
        .await;
    assert_eq!(body["error"]["code"], 107, "{body}");
}
