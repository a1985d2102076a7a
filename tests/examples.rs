//! The example plugins (`plugins/channel-acl`, `plugins/content-filter`, `plugins/router`,
//! `plugins/jwt-auth`, `plugins/rate-limit`, `plugins/backend-proxy`) end to end: real WebAssembly built by `plugins/build`, loaded by a real Herald, driven
//! by raw WebSocket clients and the server API. Each plugin alone, the three decision plugins chained in
//! file-name order, and the deployed set (`target/plugins/` with every `example.toml`) as the README runs it.
//!
//! Each test copies the built plugin into its own temporary plugin folder with a `<stem>.toml` written beside
//! it. That something did *not* arrive is shown by publishing a marker afterwards on the same channel: the
//! marker must be the subscriber's next publication. Every wait is bounded by the harness's
//! `herald_tests::WAIT`; nothing sleeps.

use herald::config::{Config, EMBEDDED_DEFAULT};
use herald_tests::{API_KEY, Client, TestServer, built_plugin, publication, target_dir};
use serde_json::{Value, json};
use tempfile::TempDir;

// -------------------------------------------------------------------------------------- harness ---

fn channel_acl() -> Vec<u8> {
    built_plugin("herald-plugin-channel-acl")
}

fn content_filter() -> Vec<u8> {
    built_plugin("herald-plugin-content-filter")
}

fn router() -> Vec<u8> {
    built_plugin("herald-plugin-router")
}

fn rate_limit() -> Vec<u8> {
    built_plugin("herald-plugin-rate-limit")
}

/// Top-level channels open to anonymous clients for subscribe, publish, history and presence (client
/// publishing is off in Herald's defaults; the publish rules need it on to be meaningful).
const OPEN_DEFAULTS: &str = r#"
[channel.defaults]
history_size = 100
history_ttl = "5m"
presence = true
allow_subscribe_for_client = true
allow_subscribe_for_anonymous = true
allow_publish_for_client = true
allow_publish_for_anonymous = true
allow_history_for_client = true
allow_history_for_anonymous = true
allow_presence_for_client = true
allow_presence_for_anonymous = true
"#;

/// A server with its own plugin folder (kept alive as long as the server).
struct Plugged {
    server: TestServer,
    _dir: TempDir,
}

/// Writes `files` (name, content) into a fresh plugin folder and starts a server loading it, with
/// [`OPEN_DEFAULTS`] and `extra` configuration. The hook deadline is 50 ms: a debug build of the host still
/// fits its normal calls in it under a parallel test run.
async fn start(files: &[(&str, &[u8])], extra: &str) -> Plugged {
    let dir = tempfile::tempdir().expect("temp plugin dir");
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).expect("write plugin file");
    }
    let config = format!(
        "[plugins]\ndir = {:?}\ndeadline = \"50ms\"\n{OPEN_DEFAULTS}{extra}",
        dir.path().to_str().expect("utf-8 temp path"),
    );
    let server = TestServer::start(&config).await;
    Plugged { server, _dir: dir }
}

/// Asserts the server loaded exactly `files`, in this order, without load errors; returns the status.
async fn assert_loaded(server: &TestServer, files: &[&str]) -> Value {
    let status = server.plugins_status().await;
    assert_eq!(status["load_errors"], json!([]), "{status:#}");
    let loaded: Vec<&str> = status["plugins"]
        .as_array()
        .expect("plugins array")
        .iter()
        .map(|p| p["file"].as_str().expect("file"))
        .collect();
    assert_eq!(loaded, files, "{status:#}");
    status
}

/// The `/api/plugins` entry of `file`.
fn entry<'a>(status: &'a Value, file: &str) -> &'a Value {
    status["plugins"]
        .as_array()
        .expect("plugins array")
        .iter()
        .find(|p| p["file"] == file)
        .unwrap_or_else(|| panic!("{file} not loaded: {status:#}"))
}

/// Asserts no plugin call failed (a failure would be a deadline, trap or bug, not a decision).
async fn assert_no_failures(server: &TestServer) {
    let status = server.plugins_status().await;
    for plugin in status["plugins"].as_array().expect("plugins array") {
        assert_eq!(plugin["failures"], 0, "{plugin:#}");
    }
}

/// An anonymous connected client.
async fn anonymous(server: &TestServer) -> Client {
    Client::connect(server).await.0
}

/// Subscribes and asserts success.
async fn subscribe_ok(client: &mut Client, channel: &str) {
    let reply = client.subscribe(json!({"channel": channel})).await;
    assert!(
        reply.get("subscribe").is_some(),
        "subscribe to {channel} failed: {reply}"
    );
}

/// An anonymous client subscribed to `channel`.
async fn subscriber(server: &TestServer, channel: &str) -> Client {
    let mut client = anonymous(server).await;
    subscribe_ok(&mut client, channel).await;
    client
}

/// The error object of a client reply that must have failed.
fn reply_error(reply: &Value) -> Value {
    reply
        .get("error")
        .cloned()
        .unwrap_or_else(|| panic!("expected an error reply, got {reply}"))
}

/// Asserts a client reply is error `code` with `message`.
fn assert_reply_error(reply: &Value, code: u64, message: &str) {
    let error = reply_error(reply);
    assert_eq!(error["code"], code, "{reply}");
    assert_eq!(error["message"], message, "{reply}");
}

/// Publishes through the API (with `tags` when not null), returning the status and the body.
async fn api_publish(server: &TestServer, channel: &str, data: Value, tags: Value) -> (u16, Value) {
    let mut body = json!({"channel": channel, "data": data});
    if !tags.is_null() {
        body["tags"] = tags;
    }
    server.api("publish", body).await
}

/// Publishes through the API, asserting success.
async fn publish_ok(server: &TestServer, channel: &str, data: Value) {
    let (status, body) = api_publish(server, channel, data, Value::Null).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.get("result").is_some(),
        "publish to {channel} failed: {body}"
    );
}

/// Publishes through the API and asserts it is refused with `code` and `message`.
async fn publish_refused(
    server: &TestServer,
    channel: &str,
    data: Value,
    code: u64,
    message: &str,
) {
    let (status, body) = api_publish(server, channel, data, Value::Null).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("result").is_none(), "expected a refusal: {body}");
    let error = body
        .get("error")
        .unwrap_or_else(|| panic!("no error: {body}"));
    assert_eq!(error["code"], code, "{body}");
    assert_eq!(error["message"], message, "{body}");
}

/// The next publication pushed to `client`, asserting it is on `channel`.
async fn next_pub(client: &mut Client, channel: &str) -> Value {
    let push = client.next_push().await;
    publication(&push, channel)
}

/// Publishes a marker on `channel` through the API and asserts it is `client`'s next publication: nothing
/// else was delivered to it before. The marker carries `text` and `user_id` so that the required fields of
/// the filters configured here let it through (the router may copy it to `orders-marker`: nobody listens).
async fn nothing_else(server: &TestServer, client: &mut Client, channel: &str) {
    let marker = json!({"marker": channel, "text": "marker", "user_id": "marker"});
    publish_ok(server, channel, marker.clone()).await;
    assert_eq!(
        next_pub(client, channel).await["data"],
        marker,
        "{channel}: an unexpected publication arrived before the marker"
    );
}

/// A publication's tags (`{}` when it has none).
fn tags(publication: &Value) -> Value {
    publication
        .get("tags")
        .cloned()
        .unwrap_or_else(|| json!({}))
}

// ----------------------------------------------------------------------------------- channel-acl ---

/// channel-acl's configuration for [`channel_acl_enforces_its_rules`].
const ACL_TOML: &str = r#"
default = "pass"

[[rules]]
pattern = "admin*"
actions = ["subscribe", "publish", "history", "presence"]
who = "anonymous"
effect = "deny"

[[rules]]
pattern = "secret*"
actions = ["history", "presence"]
effect = "deny"

[[rules]]
pattern = "readonly*"
actions = ["publish"]
effect = "deny"

[[rules]]
pattern = "members:lobby"
actions = ["subscribe"]
who = "anonymous"
effect = "allow"
"#;

/// channel-acl alone: a denied subscription answers `103 permission denied` while other channels subscribe
/// normally; a rule denying history and presence refuses them with 103 on a channel anyone may subscribe
/// to; a rule denying publishing refuses a client's publication with 103 where the namespace allows client
/// publishing (and other channels still accept it), while the trusted server API still publishes there; an
/// allow rule admits anonymous clients to a channel their namespace closes to them, without opening the
/// rest of the namespace. The connection survives every refusal and the plugin counts its denies.
#[tokio::test]
async fn channel_acl_enforces_its_rules() {
    let plugged = start(
        &[
            ("channel-acl.wasm", &channel_acl()),
            ("channel-acl.toml", ACL_TOML.as_bytes()),
        ],
        "[channel.namespaces.members]\nallow_subscribe_for_client = true\n",
    )
    .await;
    let server = &plugged.server;
    assert_loaded(server, &["channel-acl.wasm"]).await;
    let mut client = anonymous(server).await;

    // Subscribe: denied by the first rule, everything else open.
    for channel in ["admin", "admin-panel"] {
        let reply = client.subscribe(json!({"channel": channel})).await;
        assert_reply_error(&reply, 103, "permission denied");
    }
    subscribe_ok(&mut client, "news").await;
    subscribe_ok(&mut client, "secret-room").await;

    // History and presence: denied on `secret*`, granted on a channel no rule names.
    for method in ["history", "presence"] {
        let reply = client
            .command(method, json!({"channel": "secret-room"}))
            .await;
        assert_reply_error(&reply, 103, "permission denied");
        let reply = client.command(method, json!({"channel": "news"})).await;
        assert!(reply.get(method).is_some(), "{method} of news: {reply}");
    }

    // Publish from a client: denied on `readonly*`; `news` accepts (the namespace allows client publishing).
    let mut readonly = subscriber(server, "readonly-feed").await;
    let reply = client
        .command(
            "publish",
            json!({"channel": "readonly-feed", "data": {"from": "client"}}),
        )
        .await;
    assert_reply_error(&reply, 103, "permission denied");
    let reply = client
        .command(
            "publish",
            json!({"channel": "news", "data": {"from": "client"}}),
        )
        .await;
    assert!(reply.get("publish").is_some(), "{reply}");
    assert_eq!(
        next_pub(&mut client, "news").await["data"],
        json!({"from": "client"})
    );
    // The server API is trusted: not subject to the ACL. The refused client publication never arrived.
    publish_ok(server, "readonly-feed", json!({"from": "api"})).await;
    assert_eq!(
        next_pub(&mut readonly, "readonly-feed").await["data"],
        json!({"from": "api"})
    );

    // An allow rule opens `members:lobby` to anonymous clients; the rest of `members` stays closed to them.
    subscribe_ok(&mut client, "members:lobby").await;
    let reply = client.subscribe(json!({"channel": "members:other"})).await;
    assert_reply_error(&reply, 103, "permission denied");

    // Still connected, and the ACL made the refusals: 2 subscribe + 2 access + 1 publish denies (the
    // `members:other` refusal is the namespace's).
    subscribe_ok(&mut client, "after").await;
    let status = server.plugins_status().await;
    let acl = entry(&status, "channel-acl.wasm");
    assert_eq!(acl["name"], "channel-acl", "{acl:#}");
    assert_eq!(acl["denies"], 5, "{acl:#}");
    assert_eq!(acl["failures"], 0, "{acl:#}");
}

// -------------------------------------------------------------------------------- content-filter ---

/// Configuration of the masking copy of content-filter (`10-chat-filter.wasm`).
const CHAT_FILTER_TOML: &str = r#"
channels = ["chat-*"]
max_size = 200
blocked_words = ["spam", "buy now"]
on_blocked = "mask"
mask = "***"
required_fields = ["/text"]
"#;

/// Configuration of the rejecting copy of content-filter (`20-comments-filter.wasm`).
const COMMENTS_FILTER_TOML: &str = r#"
channels = ["comments-*"]
blocked_words = ["spam"]
on_blocked = "reject"
"#;

/// content-filter, two copies configured differently: on chat channels a publication with blocked words
/// (any case, whole words only) reaches subscribers masked, from the API and from clients alike, and a clean
/// one unchanged; a publication missing the required field is refused with `400 missing field /text` and
/// one over `max_size` with `400 publication too large`; on comment channels (reject mode) a blocked word
/// is refused with `400 blocked content` (API and client); channels outside `channels` are not filtered.
/// No refused publication reaches a subscriber.
#[tokio::test]
async fn content_filter_masks_and_refuses() {
    let wasm = content_filter();
    let plugged = start(
        &[
            ("10-chat-filter.wasm", &wasm),
            ("10-chat-filter.toml", CHAT_FILTER_TOML.as_bytes()),
            ("20-comments-filter.wasm", &wasm),
            ("20-comments-filter.toml", COMMENTS_FILTER_TOML.as_bytes()),
        ],
        "",
    )
    .await;
    let server = &plugged.server;
    let status = assert_loaded(server, &["10-chat-filter.wasm", "20-comments-filter.wasm"]).await;
    assert_eq!(
        entry(&status, "10-chat-filter.wasm")["name"],
        "content-filter"
    );
    let mut chat = subscriber(server, "chat-room").await;
    let mut comments = subscriber(server, "comments-1").await;
    let mut news = subscriber(server, "news").await;

    // Mask: every occurrence, any case, whole words only; other fields and values untouched.
    publish_ok(
        server,
        "chat-room",
        json!({"text": "Buy now: SPAM, spam and antispam", "user": "bob", "n": 1}),
    )
    .await;
    assert_eq!(
        next_pub(&mut chat, "chat-room").await["data"],
        json!({"text": "***: ***, *** and antispam", "user": "bob", "n": 1})
    );
    // A client's publication is filtered too.
    let (mut publisher, _) = Client::connect(server).await;
    let reply = publisher
        .command(
            "publish",
            json!({"channel": "chat-room", "data": {"text": "no spam from me"}}),
        )
        .await;
    assert!(reply.get("publish").is_some(), "{reply}");
    assert_eq!(
        next_pub(&mut chat, "chat-room").await["data"],
        json!({"text": "no *** from me"})
    );
    // A clean publication is delivered as sent.
    publish_ok(server, "chat-room", json!({"text": "hello", "n": 2})).await;
    assert_eq!(
        next_pub(&mut chat, "chat-room").await["data"],
        json!({"text": "hello", "n": 2})
    );

    // Required field and size: refused with the reason, nothing delivered.
    publish_refused(
        server,
        "chat-room",
        json!({"body": "hello"}),
        400,
        "missing field /text",
    )
    .await;
    publish_refused(
        server,
        "chat-room",
        json!({"text": "x".repeat(300)}),
        400,
        "publication too large",
    )
    .await;
    nothing_else(server, &mut chat, "chat-room").await;

    // Reject mode: the API and a client get 400 with the reason; a clean comment passes.
    publish_refused(
        server,
        "comments-1",
        json!({"text": "Spam!"}),
        400,
        "blocked content",
    )
    .await;
    let reply = publisher
        .command(
            "publish",
            json!({"channel": "comments-1", "data": {"text": "spam"}}),
        )
        .await;
    assert_reply_error(&reply, 400, "blocked content");
    nothing_else(server, &mut comments, "comments-1").await;

    // Not a filtered channel: delivered untouched, whatever it holds.
    publish_ok(
        server,
        "news",
        json!({"text": "spam", "big": "y".repeat(300)}),
    )
    .await;
    assert_eq!(
        next_pub(&mut news, "news").await["data"],
        json!({"text": "spam", "big": "y".repeat(300)})
    );
    assert_no_failures(server).await;
}

// ---------------------------------------------------------------------------------------- router ---

/// router's configuration for [`router_routes_by_field_and_tag`].
const ROUTER_TOML: &str = r#"
[[rules]]
from = "orders"
field = "/user_id"
to = "orders-{value}"
keep_original = true

[[rules]]
from = "alerts"
tag = "region"
to = "alerts-{value}"

[[rules]]
from = "alerts"
tag = "severity"
map = { critical = ["oncall", "ops-alerts"], warning = "ops-alerts" }

[[rules]]
from = "drafts"
to = "archive"
keep_original = false
sources = ["api"]
"#;

/// router alone: a publication to `orders` with `user_id: 42` arrives on `orders-42` and, with
/// `keep_original`, on `orders`, but not on another user's channel; an array of ids fans out to each; a
/// value that would change a channel's meaning (`"42,43"`) is not routed. Tags route `alerts` to the
/// region's channel and, through the `map`, critical alerts to `oncall` and `ops-alerts`, warnings to
/// `ops-alerts` only, every copy with the original data and tags. A rule without `keep_original` moves the
/// publication instead of copying it, and a rule limited to API `sources` leaves clients' publications be.
#[tokio::test]
async fn router_routes_by_field_and_tag() {
    let plugged = start(
        &[
            ("router.wasm", &router()),
            ("router.toml", ROUTER_TOML.as_bytes()),
        ],
        "",
    )
    .await;
    let server = &plugged.server;
    let status = assert_loaded(server, &["router.wasm"]).await;
    assert_eq!(entry(&status, "router.wasm")["name"], "router");

    // By field.
    let mut orders = subscriber(server, "orders").await;
    let mut user42 = subscriber(server, "orders-42").await;
    let mut user43 = subscriber(server, "orders-43").await;
    let order = json!({"user_id": 42, "status": "shipped"});
    publish_ok(server, "orders", order.clone()).await;
    assert_eq!(next_pub(&mut user42, "orders-42").await["data"], order);
    assert_eq!(next_pub(&mut orders, "orders").await["data"], order);
    nothing_else(server, &mut user43, "orders-43").await;

    // An array fans out to every id.
    let both = json!({"user_id": [42, "43"], "status": "merged"});
    publish_ok(server, "orders", both.clone()).await;
    assert_eq!(next_pub(&mut user42, "orders-42").await["data"], both);
    assert_eq!(next_pub(&mut user43, "orders-43").await["data"], both);
    assert_eq!(next_pub(&mut orders, "orders").await["data"], both);

    // An unsafe value is not routed: the publication stays on its channel only.
    let unsafe_id = json!({"user_id": "42,43"});
    publish_ok(server, "orders", unsafe_id.clone()).await;
    assert_eq!(next_pub(&mut orders, "orders").await["data"], unsafe_id);
    nothing_else(server, &mut user42, "orders-42").await;
    nothing_else(server, &mut user43, "orders-43").await;

    // By tag, with a map: critical → region channel + oncall + ops-alerts (and the original).
    let mut alerts = subscriber(server, "alerts").await;
    let mut eu = subscriber(server, "alerts-eu").await;
    let mut us = subscriber(server, "alerts-us").await;
    let mut oncall = subscriber(server, "oncall").await;
    let mut ops = subscriber(server, "ops-alerts").await;
    let critical_tags = json!({"region": "eu", "severity": "critical"});
    let (status, body) = api_publish(
        server,
        "alerts",
        json!({"disk": "full"}),
        critical_tags.clone(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("result").is_some(), "{body}");
    for (client, channel) in [
        (&mut alerts, "alerts"),
        (&mut eu, "alerts-eu"),
        (&mut oncall, "oncall"),
        (&mut ops, "ops-alerts"),
    ] {
        let delivered = next_pub(client, channel).await;
        assert_eq!(delivered["data"], json!({"disk": "full"}), "{channel}");
        assert_eq!(tags(&delivered), critical_tags, "{channel}");
    }
    nothing_else(server, &mut us, "alerts-us").await;

    // Warning in another region: its region channel and ops-alerts, not oncall.
    let (status, body) = api_publish(
        server,
        "alerts",
        json!({"cpu": "high"}),
        json!({"region": "us", "severity": "warning"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for (client, channel) in [
        (&mut alerts, "alerts"),
        (&mut us, "alerts-us"),
        (&mut ops, "ops-alerts"),
    ] {
        assert_eq!(
            next_pub(client, channel).await["data"],
            json!({"cpu": "high"}),
            "{channel}"
        );
    }
    nothing_else(server, &mut oncall, "oncall").await;
    nothing_else(server, &mut eu, "alerts-eu").await;

    // keep_original = false moves the API's publication; the rule ignores clients' (`sources`), so a
    // client's publication stays on `drafts` and is the first thing its subscriber receives.
    let mut drafts = subscriber(server, "drafts").await;
    let mut archive = subscriber(server, "archive").await;
    publish_ok(server, "drafts", json!({"draft": 1})).await;
    assert_eq!(
        next_pub(&mut archive, "archive").await["data"],
        json!({"draft": 1})
    );
    let mut author = anonymous(server).await;
    let reply = author
        .command(
            "publish",
            json!({"channel": "drafts", "data": {"draft": 2}}),
        )
        .await;
    assert!(reply.get("publish").is_some(), "{reply}");
    assert_eq!(
        next_pub(&mut drafts, "drafts").await["data"],
        json!({"draft": 2})
    );
    nothing_else(server, &mut archive, "archive").await;
    assert_no_failures(server).await;
}

// ----------------------------------------------------------------------------------------- chain ---

/// `10-channel-acl.toml` of the chain: clients may not publish into the routed channels themselves.
const CHAIN_ACL_TOML: &str = r#"
[[rules]]
pattern = "orders-*"
actions = ["publish"]
effect = "deny"

[[rules]]
pattern = "admin*"
actions = ["subscribe"]
effect = "deny"
"#;

/// `20-content-filter.toml` of the chain: filters `orders` only (not the routed channels).
const CHAIN_FILTER_TOML: &str = r#"
channels = ["orders"]
blocked_words = ["spam"]
on_blocked = "mask"
mask = "***"
required_fields = ["/user_id"]
"#;

/// `30-router.toml` of the chain.
const CHAIN_ROUTER_TOML: &str = r#"
[[rules]]
from = "orders"
field = "/user_id"
to = "orders-{value}"
keep_original = true
"#;

/// The three decision plugins chained in file-name order (`10-channel-acl`, `20-content-filter`,
/// `30-router`): a publication to `orders` with a blocked word is masked by the filter before the router
/// routes it, so the original and the routed copy both carry the masked data (the filter only covers
/// `orders`: the copy was masked on the original); the router reads the filtered data (a masked `user_id`
/// is no longer a usable channel name); a client publication passes the ACL, is masked and routed; the
/// filter's refusal (missing `user_id`) stops the chain so nothing is routed; and the ACL refuses a
/// client's publication to the routed channel itself, and a subscription to `admin`, with 103.
#[tokio::test]
async fn chain_acl_filter_router_in_file_order() {
    let plugged = start(
        &[
            ("10-channel-acl.wasm", &channel_acl()),
            ("10-channel-acl.toml", CHAIN_ACL_TOML.as_bytes()),
            ("20-content-filter.wasm", &content_filter()),
            ("20-content-filter.toml", CHAIN_FILTER_TOML.as_bytes()),
            ("30-router.wasm", &router()),
            ("30-router.toml", CHAIN_ROUTER_TOML.as_bytes()),
        ],
        "",
    )
    .await;
    let server = &plugged.server;
    assert_loaded(
        server,
        &[
            "10-channel-acl.wasm",
            "20-content-filter.wasm",
            "30-router.wasm",
        ],
    )
    .await;
    let mut orders = subscriber(server, "orders").await;
    let mut user42 = subscriber(server, "orders-42").await;
    let mut user7 = subscriber(server, "orders-7").await;
    let mut unmasked = subscriber(server, "orders-spam").await;

    // API publication: masked, then routed; both copies masked.
    publish_ok(
        server,
        "orders",
        json!({"user_id": 42, "note": "no SPAM please"}),
    )
    .await;
    let masked = json!({"user_id": 42, "note": "no *** please"});
    assert_eq!(next_pub(&mut user42, "orders-42").await["data"], masked);
    assert_eq!(next_pub(&mut orders, "orders").await["data"], masked);

    // The router sees the filtered publication: a masked id ("***") is not routed anywhere.
    publish_ok(server, "orders", json!({"user_id": "spam"})).await;
    assert_eq!(
        next_pub(&mut orders, "orders").await["data"],
        json!({"user_id": "***"})
    );

    // A client's publication goes through the whole chain too.
    let (mut client, _) = Client::connect(server).await;
    let reply = client
        .command(
            "publish",
            json!({"channel": "orders", "data": {"user_id": 7, "note": "spam"}}),
        )
        .await;
    assert!(reply.get("publish").is_some(), "{reply}");
    let masked = json!({"user_id": 7, "note": "***"});
    assert_eq!(next_pub(&mut user7, "orders-7").await["data"], masked);
    assert_eq!(next_pub(&mut orders, "orders").await["data"], masked);

    // The filter refuses: the chain stops, the router never routes it.
    publish_refused(
        server,
        "orders",
        json!({"note": "no user"}),
        400,
        "missing field /user_id",
    )
    .await;

    // The ACL: clients may not publish into routed channels directly, nor subscribe to admin.
    let reply = client
        .command(
            "publish",
            json!({"channel": "orders-42", "data": {"user_id": 42, "note": "forged"}}),
        )
        .await;
    assert_reply_error(&reply, 103, "permission denied");
    let reply = client.subscribe(json!({"channel": "admin"})).await;
    assert_reply_error(&reply, 103, "permission denied");

    // None of the refused publications, nor a route of the masked id, arrived anywhere.
    nothing_else(server, &mut orders, "orders").await;
    nothing_else(server, &mut user42, "orders-42").await;
    nothing_else(server, &mut user7, "orders-7").await;
    // Had the router seen the unfiltered id, `{"user_id": "spam"}` would have gone here.
    nothing_else(server, &mut unmasked, "orders-spam").await;
    assert_no_failures(server).await;
}

// -------------------------------------------------------------------------------------- deployed ---

/// A connection token for user `alice` (HS256, no expiry) signed with the DEVELOPMENT-ONLY `hmac_secret` of
/// `plugins/jwt-auth/example.toml` ([`EXAMPLE_HMAC_SECRET`]): base64url of `{"alg":"HS256","typ":"JWT"}`
/// and of `{"sub":"alice"}`, joined by `.`, then `.` and the base64url HMAC-SHA256 of those two parts
/// (minted once with Python's `hmac` module; the test crate has no HMAC dependency).
const ALICE_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSJ9.26rhqeytqQ76cf_2CBwX7dEWGzGvankRad5hKNIqS4E";

/// The secret [`ALICE_TOKEN`] is signed with.
const EXAMPLE_HMAC_SECRET: &str = "DEVELOPMENT-ONLY-herald-example-secret-replace-me";

/// The example plugins as deployed by `plugins/build`, each `.wasm` with its `example.toml` as
/// `<name>.toml`.
const DEPLOYED: [&str; 4] = ["channel-acl", "content-filter", "jwt-auth", "router"];

/// The deployed set, as the README runs it (`HERALD_HTTP_API__KEY=… HERALD_PLUGINS__DIR=target/plugins
/// herald serve`: the embedded default configuration, no namespaces): every `.wasm` and `.toml` of
/// `target/plugins/` copied to a folder loads — four plugins, no load errors — an anonymous client connects
/// and subscribes to a normal channel, and each example configuration does what its comment says: `admin`
/// is refused to anonymous clients and `secret-room`'s history denied (ACL), `buy now`/`spam` are masked
/// on `chat` and a chat message without `text` refused (filter, which runs before the router), an order for
/// user 42 reaches `orders-42` and `orders` and a critical alert `alerts-eu`, `oncall` and `ops-alerts`
/// (router), and a token signed with the development secret connects as `alice`, who may read
/// `personal-alice` but not `personal-bob` (jwt-auth with the ACL).
#[tokio::test]
async fn deployed_examples_load_and_work_with_the_default_config() {
    let deployed = target_dir().join("plugins");
    let dir = tempfile::tempdir().expect("temp plugin dir");
    for name in DEPLOYED {
        for ext in ["wasm", "toml"] {
            let file = format!("{name}.{ext}");
            let from = deployed.join(&file);
            std::fs::copy(&from, dir.path().join(&file)).unwrap_or_else(|e| {
                panic!(
                    "deployed example {} is missing ({e}): run `./plugins/build` in the workspace first",
                    from.display()
                )
            });
        }
    }
    let jwt_config: toml::Table = std::fs::read_to_string(dir.path().join("jwt-auth.toml"))
        .expect("read jwt-auth.toml")
        .parse()
        .expect("jwt-auth.toml is TOML");
    assert_eq!(
        jwt_config["hmac_secret"].as_str(),
        Some(EXAMPLE_HMAC_SECRET),
        "the deployed jwt-auth.toml no longer has the example's development secret: re-run \
         `./plugins/build`, or re-mint ALICE_TOKEN if plugins/jwt-auth/example.toml changed"
    );

    // The embedded default with what the README's environment variables set.
    let mut config: toml::Table = EMBEDDED_DEFAULT.parse().expect("embedded default");
    let overrides: toml::Table = format!(
        "[http_api]\nkey = {API_KEY:?}\n[plugins]\ndir = {:?}\n",
        dir.path().to_str().expect("utf-8 temp path")
    )
    .parse()
    .expect("overrides");
    for (section, values) in overrides {
        let table = config
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("a table");
        table.extend(values.as_table().expect("a table").clone());
    }
    let config = Config::from_toml(&toml::to_string(&config).expect("serialise"))
        .expect("valid configuration");
    let server = TestServer::start_with(config).await;

    // Four plugins, in file-name order, no load errors.
    let files: Vec<String> = DEPLOYED.iter().map(|n| format!("{n}.wasm")).collect();
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    let status = assert_loaded(&server, &files).await;
    for name in DEPLOYED {
        assert_eq!(entry(&status, &format!("{name}.wasm"))["name"], name);
    }

    // An anonymous client connects and subscribes to a normal channel, which works as usual.
    let (mut client, _) = Client::connect(&server).await;
    subscribe_ok(&mut client, "news").await;
    publish_ok(&server, "news", json!({"text": "spam is fine here"})).await;
    assert_eq!(
        next_pub(&mut client, "news").await["data"],
        json!({"text": "spam is fine here"})
    );

    // channel-acl's example.
    let reply = client.subscribe(json!({"channel": "admin"})).await;
    assert_reply_error(&reply, 103, "permission denied");
    subscribe_ok(&mut client, "secret-room").await;
    let reply = client
        .command("history", json!({"channel": "secret-room"}))
        .await;
    assert_reply_error(&reply, 103, "permission denied");

    // content-filter's example.
    let mut chat = subscriber(&server, "chat").await;
    publish_ok(&server, "chat", json!({"text": "Buy now, no spam"})).await;
    assert_eq!(
        next_pub(&mut chat, "chat").await["data"],
        json!({"text": "***, no ***"})
    );
    publish_refused(
        &server,
        "chat",
        json!({"body": "hi"}),
        400,
        "missing field /text",
    )
    .await;

    // router's example.
    let mut orders = subscriber(&server, "orders").await;
    let mut user42 = subscriber(&server, "orders-42").await;
    let order = json!({"user_id": 42, "status": "shipped"});
    publish_ok(&server, "orders", order.clone()).await;
    assert_eq!(next_pub(&mut user42, "orders-42").await["data"], order);
    assert_eq!(next_pub(&mut orders, "orders").await["data"], order);
    let mut routed = Vec::new();
    for channel in ["alerts-eu", "oncall", "ops-alerts"] {
        routed.push((subscriber(&server, channel).await, channel));
    }
    let (status, body) = api_publish(
        &server,
        "alerts",
        json!({"disk": "full"}),
        json!({"region": "eu", "severity": "critical"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for (client, channel) in &mut routed {
        assert_eq!(
            next_pub(client, channel).await["data"],
            json!({"disk": "full"})
        );
    }

    // jwt-auth's example with the ACL's personal channels.
    let mut alice = Client::open(&server).await;
    let reply = alice
        .command("connect", json!({"token": ALICE_TOKEN}))
        .await;
    assert!(reply.get("connect").is_some(), "{reply}");
    subscribe_ok(&mut alice, "personal-alice").await;
    let reply = alice.subscribe(json!({"channel": "personal-bob"})).await;
    assert_reply_error(&reply, 103, "permission denied");
    let reply = client.subscribe(json!({"channel": "personal-alice"})).await;
    assert_reply_error(&reply, 103, "permission denied");
    let (status, body) = server
        .api("presence", json!({"channel": "personal-alice"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let users: Vec<&Value> = body["result"]["presence"]
        .as_object()
        .unwrap_or_else(|| panic!("{body}"))
        .values()
        .map(|info| &info["user"])
        .collect();
    assert_eq!(users, [&json!("alice")], "{body}");

    assert_no_failures(&server).await;
}

/// jwt-auth with a JWKS URL fails closed when it cannot have the key set: an identity provider that answers
/// too slowly, with garbage, with an error status, or is down closes the connect with `3004` (the SDK
/// reconnects later) — neither letting the token in nor calling it invalid — and `/api/plugins` counts
/// the failed requests by kind. (A provider that answers: `tests/sdk_jwt.rs`, with centrifuge-js.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_auth_fails_closed_without_its_key_set() {
    use axum::routing::get;
    let provider = herald_tests::serve_loopback(
        axum::Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                    "{\"keys\":[]}"
                }),
            )
            .route("/garbage", get(|| async { "<html>oops</html>" }))
            .route(
                "/error",
                get(|| async { (axum::http::StatusCode::BAD_GATEWAY, "{}") }),
            ),
    )
    .await;
    let down = format!("127.0.0.1:{}", herald::testing::free_port());
    // `{"alg":"EdDSA","typ":"JWT","kid":"k1"}`.`{"sub":"alice","exp":4102444800}`: the key must come
    // from the set; the signature is never reached.
    let token = "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCIsImtpZCI6ImsxIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0.c2lnbmF0dXJl";
    for (url, failure) in [
        (format!("http://{provider}/slow"), "timeout"),
        (format!("http://{provider}/garbage"), "none"),
        (format!("http://{provider}/error"), "none"),
        (format!("http://{down}/certs"), "unavailable"),
    ] {
        let host = url.split('/').nth(2).expect("a host");
        let plugged = start(
            &[
                ("10-jwt-auth.wasm", &built_plugin("herald-plugin-jwt-auth")),
                (
                    "10-jwt-auth.toml",
                    format!("jwks_url = {url:?}\n").as_bytes(),
                ),
            ],
            &format!(
                "[plugins.limits.jwt-auth]\ndeadline = \"2s\"\n\
                 [plugins.http.jwt-auth]\nallow = [\"http://{host}/\"]\ntimeout = \"300ms\"\n"
            ),
        )
        .await;
        let server = &plugged.server;
        let mut client = Client::open(server).await;
        client
            .send_text(&json!({"id": 1, "connect": {"token": token}}).to_string())
            .await;
        let (code, _) = client.expect_close().await;
        assert_eq!(code, 3004, "{url}");
        let status = server.plugins_status().await;
        let plugin = entry(&status, "10-jwt-auth.wasm");
        assert_eq!(plugin["http_requests"], 1, "{url}: {plugin:#}");
        let failures = match failure {
            "none" => json!([]),
            reason => json!([{"reason": reason, "count": 1}]),
        };
        assert_eq!(plugin["http_failures"], failures, "{url}: {plugin:#}");
        assert_eq!(
            plugin["failures"], 0,
            "a decision, not a failure: {plugin:#}"
        );
    }
}

// ---------------------------------------------------------------------------------- rate-limit ---

/// Connects one client per entry of `servers` as alice (the scripted fixture's token `good`), then has
/// them all publish to `chat` at once; the replies.
async fn alices_publish_at_once(servers: &[&TestServer]) -> Vec<Value> {
    let mut alices = Vec::new();
    for server in servers {
        let mut client = Client::open(server).await;
        let reply = client.command("connect", json!({"token": "good"})).await;
        assert!(reply.get("connect").is_some(), "{reply}");
        alices.push(client);
    }
    futures_util::future::join_all(alices.iter_mut().map(|client| {
        client.command(
            "publish",
            json!({"channel": "chat", "data": {"text": "hi"}}),
        )
    }))
    .await
}

/// Asserts exactly `count` of `replies` are `111 too many requests`, and the others succeeded.
fn assert_too_many(replies: &[Value], count: usize) {
    let refused: Vec<&Value> = replies
        .iter()
        .filter(|r| r.get("error").is_some())
        .collect();
    assert_eq!(refused.len(), count, "{replies:?}");
    for reply in refused {
        assert_eq!(reply_error(reply)["code"], 111, "{reply}");
    }
}

/// `rate-limit` counts a user's publications in the plugin's cluster state (on the memory engine, the
/// node's), which every instance shares: six publications by one user, at once over six connections (so the pool runs several
/// instances), let exactly three through and refuse the rest with `111`; another user has a budget of
/// their own, and the server API's publications are never counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_shares_its_counts_between_instances() {
    // The scripted test plugin lets token `good` in as alice.
    let scripted_wasm = built_plugin("herald-test-scripted");
    let plugged = start(
        &[
            ("10-scripted.wasm", &scripted_wasm),
            (
                "10-scripted.toml",
                b"id = \"s\"\nconnect_user = \"alice\"\n",
            ),
            ("20-rate-limit.wasm", &rate_limit()),
            ("20-rate-limit.toml", b"publishes = 3\nwindow_ms = 600000\n"),
        ],
        "",
    )
    .await;
    let server = &plugged.server;
    let status = assert_loaded(server, &["10-scripted.wasm", "20-rate-limit.wasm"]).await;
    assert_eq!(
        entry(&status, "20-rate-limit.wasm")["capabilities"],
        json!(["local-state", "cluster-state"])
    );

    let replies = alices_publish_at_once(&[server; 6]).await;
    assert_too_many(&replies, 3);
    // Another user (an anonymous connection counts as its own) and the backend are not held back.
    let mut other = anonymous(server).await;
    let reply = other
        .command(
            "publish",
            json!({"channel": "chat", "data": {"text": "me too"}}),
        )
        .await;
    assert!(reply.get("publish").is_some(), "{reply}");
    publish_ok(server, "chat", json!({"text": "from the backend"})).await;
    assert_no_failures(server).await;
}

/// With the Redis engine the counts are the cluster's: a user publishing through two nodes shares one
/// limit; with Redis not answering, publications are refused within the hook's deadline, not let through.
#[tokio::test]
async fn rate_limit_counts_across_nodes_on_redis() {
    let redis = herald::testing::RedisServer::start();
    let engine = format!(
        "[engine]\ntype = \"redis\"\n[engine.redis]\naddresses = [\"{}\"]\n",
        redis.url()
    );
    let scripted_wasm = built_plugin("herald-test-scripted");
    let files: &[(&str, &[u8])] = &[
        ("10-scripted.wasm", &scripted_wasm),
        (
            "10-scripted.toml",
            b"id = \"s\"\nconnect_user = \"alice\"\n",
        ),
        ("20-rate-limit.wasm", &rate_limit()),
        ("20-rate-limit.toml", b"publishes = 3\nwindow_ms = 600000\n"),
    ];
    let nodes = [start(files, &engine).await, start(files, &engine).await];
    let (a, b) = (&nodes[0].server, &nodes[1].server);
    let replies = alices_publish_at_once(&[a, b, a, b, a, b]).await;
    assert_too_many(&replies, 3);
    for node in &nodes {
        assert_no_failures(&node.server).await;
    }

    // Another user is counted on their own, then Redis stops answering: refused, not waved through.
    let mut bob = anonymous(&nodes[1].server).await;
    let publish = json!({"channel": "chat", "data": {"text": "bob"}});
    let reply = bob.command("publish", publish.clone()).await;
    assert!(reply.get("publish").is_some(), "{reply}");
    redis.pause();
    let reply = bob.command("publish", publish.clone()).await;
    redis.resume();
    assert!(reply.get("error").is_some(), "{reply}");
    let reply = bob.command("publish", publish).await;
    assert!(
        reply.get("publish").is_some(),
        "after Redis answers again: {reply}"
    );
}

// ------------------------------------------------------------------------------- backend-proxy ---

fn backend_proxy() -> Vec<u8> {
    built_plugin("herald-plugin-backend-proxy")
}

/// A Laravel-style application speaking Centrifugo's proxy protocol on a loopback port, authenticating by
/// the session cookie the proxy copies: `/connect` (the cookie `laravel_session=alice-session` is alice;
/// anyone else is told to go with 4501), `/subscribe` (`chat-` channels, with data; the rest 103),
/// `/publish` (signs the publication with its author), `/rpc` (`sum`); `/slow` answers after 10 s and
/// `/garbage` with HTML.
async fn laravel_style_backend() -> std::net::SocketAddr {
    use axum::routing::post;
    use axum::{Json, http::HeaderMap};
    fn session_user(headers: &HeaderMap) -> Option<&'static str> {
        let cookie = headers.get("cookie")?.to_str().ok()?;
        cookie
            .split("; ")
            .any(|c| c == "laravel_session=alice-session")
            .then_some("alice")
    }
    let app = axum::Router::new()
        .route(
            "/connect",
            post(|headers: HeaderMap| async move {
                Json(match session_user(&headers) {
                    Some(user) => json!({"result": {"user": user, "data": {"welcome": user}}}),
                    None => json!({"disconnect": {"code": 4501, "reason": "unauthorized"}}),
                })
            }),
        )
        .route(
            "/subscribe",
            post(|Json(request): Json<Value>| async move {
                let channel = request["channel"].as_str().unwrap_or_default().to_owned();
                Json(
                    if channel.starts_with("chat-") && request["user"] == "alice" {
                        json!({"result": {"data": {"room": channel}}})
                    } else {
                        json!({"error": {"code": 103, "message": "permission denied"}})
                    },
                )
            }),
        )
        .route(
            "/publish",
            post(|Json(request): Json<Value>| async move {
                let mut data = request["data"].clone();
                data["by"] = request["user"].clone();
                Json(json!({"result": {"data": data}}))
            }),
        )
        .route(
            "/rpc",
            post(|Json(request): Json<Value>| async move {
                let sum = request["data"]["a"].as_i64().unwrap_or(0)
                    + request["data"]["b"].as_i64().unwrap_or(0);
                Json(json!({"result": {"data": {"sum": sum}}}))
            }),
        )
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                Json(json!({"result": {"user": "late"}}))
            }),
        )
        .route("/garbage", post(|| async { "<html>Whoops</html>" }));
    herald_tests::serve_loopback(app).await
}

/// Starts a server with backend-proxy configured by `proxy` (its TOML), allowed to reach `backend`.
async fn proxied(proxy: &str, backend: std::net::SocketAddr) -> Plugged {
    start(
        &[
            ("10-backend-proxy.wasm", &backend_proxy()),
            ("10-backend-proxy.toml", proxy.as_bytes()),
        ],
        &format!(
            "[plugins.limits.backend-proxy]\ndeadline = \"3s\"\n\
             [plugins.http.backend-proxy]\nallow = [\"http://{backend}/\"]\ntimeout = \"300ms\"\n"
        ),
    )
    .await
}

/// A backend written for Centrifugo's proxies works unchanged through `backend-proxy`: centrifuge-js with
/// the session cookie connects as the backend's user, subscribes where the backend allows (103 where it
/// does not), sees its publication rewritten by the publish proxy, gets RPC answers, and a client without
/// the cookie is sent away with the backend's 4501 (see `tests/e2e/js/backend-proxy.js`). A backend that
/// answers too slowly, with garbage, or is down fails the connect closed with error 100 (temporary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_proxy_speaks_centrifugo_s_proxy_protocol() {
    herald_tests::require_node(&["centrifuge", "ws"]).await;
    let backend = laravel_style_backend().await;
    let proxy = format!(
        "connect_url = \"http://{backend}/connect\"\nsubscribe_url = \"http://{backend}/subscribe\"\n\
         publish_url = \"http://{backend}/publish\"\nrpc_url = \"http://{backend}/rpc\"\n\
         headers = [\"cookie\"]\n"
    );
    let plugged = proxied(&proxy, backend).await;
    let mut run = tokio::process::Command::new("node");
    run.arg("tests/e2e/js/backend-proxy.js")
        .current_dir(herald_tests::cluster::REPO_ROOT)
        .env("HERALD_WS_URL", plugged.server.ws_url())
        .env("HERALD_COOKIE", "theme=dark; laravel_session=alice-session");
    herald_tests::assert_script_passes(&mut run, "node tests/e2e/js/backend-proxy.js").await;

    let down = format!("127.0.0.1:{}", herald::testing::free_port());
    for url in [
        format!("http://{backend}/slow"),
        format!("http://{backend}/garbage"),
        format!("http://{down}/connect"),
    ] {
        let allowed = if url.contains(&down) {
            down.parse().expect("an address")
        } else {
            backend
        };
        let plugged = proxied(&format!("connect_url = {url:?}\n"), allowed).await;
        let mut client = Client::open(&plugged.server).await;
        let reply = client.command("connect", json!({})).await;
        assert_eq!(reply_error(&reply)["code"], 100, "{url}: {reply}");
        assert_eq!(reply_error(&reply)["temporary"], true, "{url}: {reply}");
    }
}
