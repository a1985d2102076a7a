//! The plugin platform against a real Herald with real WebAssembly plugins: a hostile plugin fails closed
//! without hurting the server, chain semantics (deny, allow, transform, route, drop, RPC, access, connect)
//! end to end, hot reload under traffic without a dropped connection or publish, bad deploys that leave the
//! old version serving, unloading and loading by file, and `/api/plugins`.
//!
//! Fixtures are built by `plugins/build` (`tests/plugins/hostile`, `tests/plugins/scripted`,
//! `tests/plugins/undeclared`); each test copies
//! them into its own temporary plugin folder. Reloads expose no event, so waiting for one polls
//! `GET /api/plugins` in a loop bounded by [`WAIT`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use herald_tests::{API_KEY, Client, Received, TestServer, WAIT, built_plugin, publication};
use serde_json::{Value, json};
use tempfile::TempDir;

// -------------------------------------------------------------------------------------- harness ---

/// Between two polls of `/api/plugins` while waiting for a reload.
const POLL: Duration = Duration::from_millis(20);

/// Options of every namespace the tests use (`x`, `secret`, `hidden`, `user`, `private`) and of the top
/// level: open to anonymous clients for subscribe, publish, history and presence.
const OPEN: &str = r#"
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

fn hostile() -> Vec<u8> {
    built_plugin("herald-test-hostile")
}

fn scripted() -> Vec<u8> {
    built_plugin("herald-test-scripted")
}

fn undeclared() -> Vec<u8> {
    built_plugin("herald-test-undeclared")
}

/// The component with a custom section appended: behaves the same, but has another SHA-256 (a "new
/// version" of the file for the hash-based reload).
fn with_custom_section(wasm: &[u8], label: &str) -> Vec<u8> {
    fn leb(out: &mut Vec<u8>, mut n: usize) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"herald-test";
    let mut payload = Vec::new();
    leb(&mut payload, name.len());
    payload.extend_from_slice(name);
    payload.extend_from_slice(label.as_bytes());
    let mut out = wasm.to_vec();
    out.push(0);
    leb(&mut out, payload.len());
    out.extend_from_slice(&payload);
    out
}

/// A server with its own plugin folder.
struct Plugged {
    server: TestServer,
    dir: TempDir,
}

impl Plugged {
    /// Writes `files` (name, content) into a fresh folder, then starts a server loading it: 50 ms hook
    /// deadline (a loop fails fast, a debug build's normal calls still fit), 16 MiB memory per instance.
    async fn start(files: &[(&str, &[u8])]) -> Self {
        let dir = tempfile::tempdir().expect("temp plugin dir");
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).expect("write plugin file");
        }
        let mut config = format!(
            "[plugins]\ndir = {:?}\ndeadline = \"50ms\"\nmemory_limit = 16777216\n[channel.defaults]\n{OPEN}",
            dir.path().to_str().expect("utf-8 temp path"),
        );
        for namespace in ["x", "secret", "hidden", "user", "private"] {
            config.push_str(&format!("[channel.namespaces.{namespace}]\n{OPEN}"));
        }
        let server = TestServer::start(&config).await;
        Self { server, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Deploys like an operator should: writes `.<name>.tmp` (ignored by the watcher), renames into place.
    fn deploy(&self, name: &str, content: &[u8]) {
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, content).expect("write temp file");
        std::fs::rename(&tmp, self.path(name)).expect("rename into place");
    }

    /// `GET /api/plugins`'s `result`.
    async fn status(&self) -> Value {
        let (status, body) = get_plugins(&self.server, Some(API_KEY)).await;
        assert_eq!(status, 200, "{body}");
        body.get("result")
            .cloned()
            .unwrap_or_else(|| panic!("no result: {body}"))
    }

    /// Polls `/api/plugins` until `done` holds for its result (bounded by [`WAIT`]); returns that result.
    async fn wait_status(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let status = self.status().await;
            if done(&status) {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; /api/plugins: {status:#}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// `GET /api/plugins`, with the key when given; the status and the body (JSON if it parses).
async fn get_plugins(server: &TestServer, key: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(format!("{}/plugins", server.api_url()));
    if let Some(key) = key {
        request = request.header("X-API-Key", key);
    }
    let response = request.send().await.expect("GET /api/plugins");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The `/api/plugins` entry of the plugin loaded from `file`, if any.
fn entry<'a>(status: &'a Value, file: &str) -> Option<&'a Value> {
    status["plugins"]
        .as_array()
        .expect("plugins array")
        .iter()
        .find(|p| p["file"] == file)
}

/// The `/api/plugins` load error of `file`, if any.
fn load_error<'a>(status: &'a Value, file: &str) -> Option<&'a Value> {
    status["load_errors"]
        .as_array()
        .expect("load_errors array")
        .iter()
        .find(|e| e["file"] == file)
}

/// The loaded files, in chain order.
fn loaded_files(status: &Value) -> Vec<String> {
    status["plugins"]
        .as_array()
        .expect("plugins array")
        .iter()
        .map(|p| p["file"].as_str().expect("file").to_owned())
        .collect()
}

/// A counter of an `/api/plugins` entry.
fn counter(plugin: &Value, name: &str) -> u64 {
    plugin[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name}: {plugin}"))
}

/// `failure_reasons` of an entry as (hook, kind) → count.
fn failure_reasons(plugin: &Value) -> BTreeMap<(String, String), u64> {
    plugin["failure_reasons"]
        .as_array()
        .expect("failure_reasons array")
        .iter()
        .map(|r| {
            (
                (
                    r["hook"].as_str().expect("hook").to_owned(),
                    r["reason"].as_str().expect("reason").to_owned(),
                ),
                r["count"].as_u64().expect("count"),
            )
        })
        .collect()
}

/// The error object of an API answer that must have failed.
fn api_error(status: u16, body: &Value) -> Value {
    assert_eq!(status, 200, "{body}");
    assert!(body.get("result").is_none(), "expected an error: {body}");
    body.get("error")
        .cloned()
        .unwrap_or_else(|| panic!("no error: {body}"))
}

/// The error object of a client reply that must have failed.
fn reply_error(reply: &Value) -> Value {
    reply
        .get("error")
        .cloned()
        .unwrap_or_else(|| panic!("expected an error reply, got {reply}"))
}

/// Opens a connection and sends `connect` with `token`; returns the client and the reply.
async fn connect_with_token(server: &TestServer, token: &str) -> (Client, Value) {
    let mut client = Client::open(server).await;
    let reply = client.command("connect", json!({"token": token})).await;
    (client, reply)
}

/// Opens a connection, sends `connect` with `token` and expects the server to close it; returns the code.
async fn connect_closed(server: &TestServer, token: &str) -> u16 {
    let mut client = Client::open(server).await;
    let id = client.next_id();
    client
        .send_text(&json!({"id": id, "connect": {"token": token}}).to_string())
        .await;
    client.expect_close().await.0
}

/// An anonymous client subscribed to `channel`.
async fn subscriber(server: &TestServer, channel: &str) -> Client {
    let (mut client, _) = Client::connect(server).await;
    subscribe_ok(&mut client, channel).await;
    client
}

/// Subscribes and asserts success.
async fn subscribe_ok(client: &mut Client, channel: &str) {
    let reply = client.subscribe(json!({"channel": channel})).await;
    assert!(
        reply.get("subscribe").is_some(),
        "subscribe to {channel} failed: {reply}"
    );
}

/// Publishes through the API, asserting success.
async fn publish_ok(server: &TestServer, channel: &str, data: Value) {
    let (status, body) = server
        .api("publish", json!({"channel": channel, "data": data}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.get("result").is_some(),
        "publish to {channel} failed: {body}"
    );
}

/// The next publication pushed on `channel`.
async fn next_pub(client: &mut Client, channel: &str) -> Value {
    let push = client.next_push().await;
    publication(&push, channel)
}

/// A publication's tags (`{}` when it has none).
fn tags(publication: &Value) -> Value {
    publication
        .get("tags")
        .cloned()
        .unwrap_or_else(|| json!({}))
}

// ---------------------------------------------------------------------------------------- hostile ---

/// A plugin that loops, panics, exhausts its memory or overflows its stack fails closed on every hook
/// (publish and subscribe: error 100 "temporary"; connect: close 3004), each failure is counted under its
/// hook and the kind of what happened, nothing of the failed publication is delivered, and afterwards
/// the server and the plugin itself (a fresh instance) keep serving normal traffic.
#[tokio::test]
async fn hostile_plugin_fails_closed_and_the_server_keeps_serving() {
    let plugged = Plugged::start(&[("10-hostile.wasm", &hostile())]).await;
    let server = &plugged.server;
    let status = plugged.status().await;
    assert_eq!(loaded_files(&status), ["10-hostile.wasm"], "{status:#}");
    assert_eq!(status["load_errors"], json!([]), "{status:#}");
    let hostile_entry = entry(&status, "10-hostile.wasm").expect("listed");
    assert_eq!(hostile_entry["name"], "hostile");
    assert_eq!(
        hostile_entry["hooks"],
        json!(["connect", "subscribe", "publish"])
    );
    assert_eq!(hostile_entry["deadline_ms"].as_f64(), Some(50.0));
    assert_eq!(hostile_entry["memory_limit"], 16_777_216);

    let mut watcher = subscriber(server, "news").await;
    let (mut subscribing, _) = Client::connect(server).await;

    let cases = [
        ("loop", "deadline"),
        ("oom", "memory_limit"),
        ("recursion", "stack_overflow"),
        ("panic", "panic"),
    ];
    for (round, (what, kind)) in cases.into_iter().enumerate() {
        // (a) publish: fails closed with a temporary internal error, nothing delivered.
        let (status, body) = server
            .api("publish", json!({"channel": "news", "data": what}))
            .await;
        let error = api_error(status, &body);
        assert_eq!(error["code"], 100, "{what}: {body}");
        assert_eq!(error["temporary"], true, "{what}: {body}");

        // (b) subscribe: error 100, the connection stays.
        let reply = subscribing
            .subscribe(json!({"channel": format!("x:{what}")}))
            .await;
        let error = reply_error(&reply);
        assert_eq!(error["code"], 100, "{what}: {reply}");
        assert_eq!(error["temporary"], true, "{what}: {reply}");

        // (c) connect: closed with 3004 (internal error; the client may reconnect).
        assert_eq!(connect_closed(server, what).await, 3004, "{what}");

        // The server still serves: the watcher gets the next normal publication (and not the failed one).
        publish_ok(server, "news", json!({"round": round})).await;
        let delivered = next_pub(&mut watcher, "news").await;
        assert_eq!(delivered["data"], json!({"round": round}), "{what}");

        // The plugin still answers normal calls on fresh instances, on every hook.
        subscribe_ok(&mut subscribing, &format!("x:ok{round}")).await;
        let (mut fresh, reply) = connect_with_token(server, "").await;
        assert!(reply.get("connect").is_some(), "{what}: {reply}");
        subscribe_ok(&mut fresh, "x:fine").await;
        assert_eq!(
            connect_closed(server, "deny").await,
            3500,
            "{what}: the plugin's own deny"
        );

        // Counted by hook and kind.
        let status = plugged.status().await;
        let plugin = entry(&status, "10-hostile.wasm").expect("still loaded");
        assert_eq!(
            counter(plugin, "failures"),
            3 * (round as u64 + 1),
            "{what}: {plugin:#}"
        );
        let reasons = failure_reasons(plugin);
        for hook in ["publish", "subscribe", "connect"] {
            assert_eq!(
                reasons.get(&(hook.to_owned(), kind.to_owned())),
                Some(&1),
                "{what}: expected one {hook} failure of kind {kind}, got {reasons:#?}"
            );
        }
        assert_eq!(reasons.len(), 3 * (round + 1), "{what}: {reasons:#?}");
    }
    // The connection that saw four failed subscribes was never dropped.
    subscribe_ok(&mut subscribing, "x:last").await;
}

/// A plugin that panics with a different message on every call cannot grow the host's memory: failures are
/// counted under one (hook, kind) entry, and the messages (with whatever data the guest put in them) are
/// not in `/api/plugins`.
#[tokio::test]
async fn distinct_panic_messages_are_counted_under_one_kind() {
    const CALLS: u64 = 100;
    let plugged = Plugged::start(&[("10-hostile.wasm", &hostile())]).await;
    let server = &plugged.server;
    for call in 0..CALLS {
        let (status, body) = server
            .api(
                "publish",
                json!({"channel": "news", "data": format!("panic:secret-{call}")}),
            )
            .await;
        assert_eq!(api_error(status, &body)["code"], 100, "{body}");
    }
    let status = plugged.status().await;
    let plugin = entry(&status, "10-hostile.wasm").expect("still loaded");
    assert_eq!(counter(plugin, "failures"), CALLS, "{plugin:#}");
    assert_eq!(
        failure_reasons(plugin),
        BTreeMap::from([(("publish".to_owned(), "panic".to_owned()), CALLS)]),
        "{plugin:#}"
    );
    let shown = status.to_string();
    assert!(
        !shown.contains("secret-"),
        "a panic message is shown: {shown}"
    );
}

/// A plugin whose `init` refuses its configuration is rejected at startup: `/api/plugins` lists the file
/// under `load_errors` with init's reason and loads nothing, and the server runs without it (a token no
/// plugin accepts is refused as invalid instead of reaching the hostile plugin).
#[tokio::test]
async fn plugin_failing_init_is_rejected_at_startup() {
    let plugged = Plugged::start(&[
        ("10-hostile.wasm", &hostile()),
        ("10-hostile.toml", b"fail_init = true\n"),
    ])
    .await;
    let server = &plugged.server;
    let status = plugged.status().await;
    assert_eq!(status["plugins"], json!([]), "{status:#}");
    let error = load_error(&status, "10-hostile.wasm").expect("load error listed");
    let message = error["error"].as_str().expect("error text");
    assert!(
        message.contains("refusing to start: fail_init is set"),
        "{message}"
    );
    assert!(error["at_ms"].as_u64().is_some_and(|at| at > 0), "{error}");

    let mut watcher = subscriber(server, "news").await;
    publish_ok(server, "news", json!({"ok": true})).await;
    assert_eq!(
        next_pub(&mut watcher, "news").await["data"],
        json!({"ok": true})
    );
    assert_eq!(connect_closed(server, "loop").await, 3500);
}

/// A plugin that implements a hook it does not declare in `HOOKS` (Herald would never call it) is refused
/// at load, by the SDK's check in `init`, with the hook and the missing flag named; a hot deploy of it
/// over a working plugin leaves that one serving.
#[tokio::test]
async fn plugin_implementing_an_undeclared_hook_is_rejected() {
    let plugged = Plugged::start(&[("10-undeclared.wasm", &undeclared())]).await;
    let status = plugged.status().await;
    assert_eq!(status["plugins"], json!([]), "{status:#}");
    let error = load_error(&status, "10-undeclared.wasm").expect("load error listed");
    let message = error["error"].as_str().expect("error text");
    assert_eq!(
        message,
        "init refused: plugin `undeclared` implements on_subscribe but does not declare \
         Hooks::SUBSCRIBE in HOOKS: Herald would never call it"
    );

    // Deployed over a working plugin, it is refused and the working one keeps serving.
    plugged.deploy("20-hostile.wasm", &hostile());
    plugged
        .wait_status("hostile loaded", |s| loaded_files(s) == ["20-hostile.wasm"])
        .await;
    plugged.deploy("20-hostile.wasm", &undeclared());
    let status = plugged
        .wait_status("the undeclared deploy rejected", |s| {
            load_error(s, "20-hostile.wasm").is_some()
        })
        .await;
    assert_eq!(loaded_files(&status), ["20-hostile.wasm"], "{status:#}");
    assert_eq!(
        entry(&status, "20-hostile.wasm").expect("still loaded")["name"],
        "hostile"
    );
}

// ---------------------------------------------------------------------------------------- chains ---

/// Configuration of the first scripted copy (`10-a.wasm`).
const A_TOML: &str = r#"
id = "a"
tag = "v1"
stamp = true
deny_subscribe = ["secret:*"]
allow_subscribe = ["$private:open*"]
access_deny = ["hidden:*"]
connect_user = "alice"

[route]
from = "orders"
to = ["user:#42"]
keep_original = true
"#;

/// Configuration of the second scripted copy (`20-b.wasm`) with its tag.
fn b_toml(tag: &str) -> String {
    format!(
        r#"
id = "b"
tag = "{tag}"
stamp = true
deny_code = 403
deny_subscribe = ["secret:*", "$private:open-but-blocked"]
drop_containing = "spam"
deny_publish_containing = "forbidden"
deny_publish_code = 460
rpc_echo = true
"#
    )
}

/// Starts a server with `10-a.wasm` and `20-b.wasm` (scripted, configured by [`A_TOML`] and
/// [`b_toml`]`("v1")`).
async fn two_scripted() -> Plugged {
    let wasm = scripted();
    let b = b_toml("v1");
    let plugged = Plugged::start(&[
        ("10-a.wasm", &wasm),
        ("10-a.toml", A_TOML.as_bytes()),
        ("20-b.wasm", &wasm),
        ("20-b.toml", b.as_bytes()),
    ])
    .await;
    let status = plugged.status().await;
    assert_eq!(
        loaded_files(&status),
        ["10-a.wasm", "20-b.wasm"],
        "{status:#}"
    );
    assert_eq!(status["load_errors"], json!([]), "{status:#}");
    plugged
}

/// Chain semantics end to end with two configured copies of one plugin: a deny stops the chain (the
/// second plugin is not even called), a later deny overrides an earlier allow, transforms accumulate in
/// file order (tags and data), a route delivers to the routed and the original channel, a drop reports
/// success but delivers nothing, a publish deny reaches the publisher with the plugin's code, an RPC is
/// answered by the plugin, an access deny refuses history and presence, an allow opens a private channel
/// the configuration would refuse, and a connect allow sets the user seen in presence.
#[tokio::test]
async fn chain_semantics_end_to_end() {
    let plugged = two_scripted().await;
    let server = &plugged.server;
    let mut news = subscriber(server, "news").await;

    // Transforms accumulate: a then b, each seeing the other's change.
    let (status, body) = server
        .api(
            "publish",
            json!({"channel": "news", "data": {"n": 1}, "tags": {"src": "api"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("result").is_some(), "{body}");
    let delivered = next_pub(&mut news, "news").await;
    assert_eq!(delivered["data"], json!({"n": 1, "a": "v1", "b": "v1"}));
    assert_eq!(
        tags(&delivered),
        json!({"src": "api", "a": "v1", "b": "v1"})
    );

    // Route: a routes `orders` to `user:#42` keeping the original; b (still called) transforms both.
    let mut orders = subscriber(server, "orders").await;
    let mut personal = subscriber(server, "user:#42").await;
    publish_ok(server, "orders", json!({"order": 7})).await;
    for (client, channel) in [(&mut orders, "orders"), (&mut personal, "user:#42")] {
        let delivered = next_pub(client, channel).await;
        assert_eq!(
            delivered["data"],
            json!({"order": 7, "b": "v1"}),
            "{channel}"
        );
        assert_eq!(tags(&delivered), json!({"b": "v1"}), "{channel}");
    }

    // Drop: the API reports success, nothing is delivered (the next push is the next publication).
    let (status, body) = server
        .api(
            "publish",
            json!({"channel": "news", "data": {"text": "spam"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.get("result").is_some(),
        "dropped must look like success: {body}"
    );
    // Deny: the publisher gets the plugin's code and reason (API and client).
    let (status, body) = server
        .api(
            "publish",
            json!({"channel": "news", "data": {"text": "forbidden"}}),
        )
        .await;
    let error = api_error(status, &body);
    assert_eq!(error["code"], 460, "{body}");
    assert_eq!(error["message"], "denied by b", "{body}");
    let (mut publisher, _) = Client::connect(server).await;
    let reply = publisher
        .command(
            "publish",
            json!({"channel": "news", "data": {"text": "forbidden"}}),
        )
        .await;
    assert_eq!(reply_error(&reply)["code"], 460, "{reply}");
    publish_ok(server, "news", json!({"n": 2})).await;
    assert_eq!(
        next_pub(&mut news, "news").await["data"],
        json!({"n": 2, "a": "v1", "b": "v1"}),
        "the dropped and denied publications must not be delivered"
    );

    // A deny stops the chain: a's code, and b is not called at all.
    let (mut client, _) = Client::connect(server).await;
    let calls_b = counter(
        entry(&plugged.status().await, "20-b.wasm").expect("b"),
        "calls",
    );
    let reply = client.subscribe(json!({"channel": "secret:x"})).await;
    let error = reply_error(&reply);
    assert_eq!(error["code"], 103, "{reply}");
    assert_eq!(error["message"], "denied by a", "{reply}");
    let status = plugged.status().await;
    assert_eq!(
        counter(entry(&status, "20-b.wasm").expect("b"), "calls"),
        calls_b,
        "b must not be called after a denied: {status:#}"
    );
    assert!(
        counter(entry(&status, "10-a.wasm").expect("a"), "denies") >= 1,
        "{status:#}"
    );

    // An allow opens a private channel the configuration refuses; a later deny still wins over it.
    subscribe_ok(&mut client, "$private:open-x").await;
    let reply = client
        .subscribe(json!({"channel": "$private:closed"}))
        .await;
    assert_eq!(
        reply_error(&reply)["code"],
        103,
        "no plugin allows: the configuration refuses: {reply}"
    );
    let reply = client
        .subscribe(json!({"channel": "$private:open-but-blocked"}))
        .await;
    let error = reply_error(&reply);
    assert_eq!(error["code"], 403, "{reply}");
    assert_eq!(error["message"], "denied by b", "{reply}");

    // RPC: a passes, b echoes.
    let reply = client
        .command("rpc", json!({"method": "echo", "data": {"x": [1, "two"]}}))
        .await;
    assert_eq!(
        reply,
        json!({"id": reply["id"], "rpc": {"data": {"x": [1, "two"]}}})
    );

    // Access: a denies history and presence of `hidden:*`; other channels follow the configuration.
    for method in ["history", "presence"] {
        let reply = client.command(method, json!({"channel": "hidden:x"})).await;
        let error = reply_error(&reply);
        assert_eq!(error["code"], 103, "{method}: {reply}");
        assert_eq!(error["message"], "denied by a", "{method}: {reply}");
        let reply = client.command(method, json!({"channel": "news"})).await;
        assert!(reply.get(method).is_some(), "{method}: {reply}");
    }

    // Connect: token "good" is alice (a allows, b passes); presence shows her. Unknown tokens are refused.
    let (mut alice, reply) = connect_with_token(server, "good").await;
    assert!(reply.get("connect").is_some(), "{reply}");
    subscribe_ok(&mut alice, "news").await;
    let (status, body) = server.api("presence", json!({"channel": "news"})).await;
    assert_eq!(status, 200, "{body}");
    let users: Vec<&Value> = body["result"]["presence"]
        .as_object()
        .unwrap_or_else(|| panic!("{body}"))
        .values()
        .map(|info| &info["user"])
        .collect();
    assert!(users.contains(&&json!("alice")), "{body}");
    assert_eq!(connect_closed(server, "unknown").await, 3500);
}

// ---------------------------------------------------------------------------------------- reload ---

/// Hot reload under traffic: while clients and the API publish continuously, `20-b.wasm` gets a new
/// configuration (new tag) and then a new file. No connection is dropped, no publish fails, the
/// subscriber receives every publication, each publisher's publications switch tag exactly once (old
/// instances never answer after the swap), and publications made after `/api/plugins` shows the reload
/// carry the new tag.
#[tokio::test]
async fn hot_reload_under_traffic_loses_nothing() {
    let plugged = two_scripted().await;
    let server = &plugged.server;
    let before = plugged.status().await;
    let b_before = entry(&before, "20-b.wasm").expect("b").clone();

    // A subscriber forwarding everything it receives.
    let mut feed = subscriber(server, "feed").await;
    let (received_tx, mut received) = tokio::sync::mpsc::unbounded_channel::<Received>();
    let reader = tokio::spawn(async move {
        loop {
            let item = feed.receive().await;
            let closed = matches!(item, Received::Close(..));
            if received_tx.send(item).is_err() || closed {
                return;
            }
        }
    });

    // Publishers: three clients and the API, each waiting for its reply before the next publish (paced
    // lightly so the debug server's log and CPU stay sane; this is load, not a wait).
    let stop = Arc::new(AtomicBool::new(false));
    let mut publishers = Vec::new();
    for k in 0..3 {
        let (mut client, _) = Client::connect(server).await;
        let stop = stop.clone();
        publishers.push(tokio::spawn(async move {
            let from = format!("client-{k}");
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let reply = client
                    .command(
                        "publish",
                        json!({"channel": "feed", "data": {"from": from, "n": sent}}),
                    )
                    .await;
                assert!(
                    reply.get("publish").is_some(),
                    "{from} publish #{sent} failed: {reply}"
                );
                sent += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            // Still connected: one more command round-trips.
            let reply = client
                .command("presence_stats", json!({"channel": "feed"}))
                .await;
            assert!(reply.get("presence_stats").is_some(), "{from}: {reply}");
            sent
        }));
    }
    {
        let stop = stop.clone();
        let url = format!("{}/publish", server.api_url());
        publishers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body: Value = http
                    .post(&url)
                    .header("X-API-Key", API_KEY)
                    .json(&json!({"channel": "feed", "data": {"from": "api", "n": sent}}))
                    .send()
                    .await
                    .expect("api publish")
                    .json()
                    .await
                    .expect("api publish body");
                assert!(
                    body.get("result").is_some(),
                    "api publish #{sent} failed: {body}"
                );
                sent += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            sent
        }));
    }

    let mut seen: Vec<Value> = Vec::new();
    // Receives until a publication matching `want` arrives; every publication is kept in `seen`.
    async fn receive_until(
        received: &mut tokio::sync::mpsc::UnboundedReceiver<Received>,
        seen: &mut Vec<Value>,
        what: &str,
        want: impl Fn(&Value) -> bool,
    ) {
        loop {
            let item = tokio::time::timeout(WAIT, received.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .expect("subscriber alive");
            match item {
                Received::Json(v) => {
                    let publication = publication(
                        v.get("push").unwrap_or_else(|| panic!("not a push: {v}")),
                        "feed",
                    );
                    let done = want(&publication);
                    seen.push(publication);
                    if done {
                        return;
                    }
                }
                Received::Ping => {}
                Received::Close(code, reason) => {
                    panic!("subscriber closed ({code} {reason}) while waiting for {what}")
                }
            }
        }
    }
    let from_is = |from: &'static str| move |p: &Value| p["data"]["from"] == from;
    // Traffic flows from every publisher before the reload.
    for from in ["client-0", "client-1", "client-2", "api"] {
        receive_until(&mut received, &mut seen, "traffic", from_is(from)).await;
    }

    // 1. New configuration: tag v2 (a config change reloads the same wasm).
    let v2 = b_toml("v2");
    plugged.deploy("20-b.toml", v2.as_bytes());
    let loaded_before = counter(&b_before, "loaded_at_ms");
    plugged
        .wait_status("20-b.wasm reloaded with its new configuration", |s| {
            entry(s, "20-b.wasm").is_some_and(|b| counter(b, "loaded_at_ms") > loaded_before)
        })
        .await;
    publish_ok(server, "feed", json!({"from": "marker", "n": 1})).await;
    receive_until(&mut received, &mut seen, "marker 1", |p| {
        p["data"]["from"] == "marker"
    })
    .await;
    assert_eq!(
        tags(seen.last().expect("marker")),
        json!({"a": "v1", "b": "v2"}),
        "published after the reload showed"
    );

    // 2. A new file (another hash) for 20-b.wasm.
    let new_wasm = with_custom_section(&scripted(), "v2");
    plugged.deploy("20-b.wasm", &new_wasm);
    let sha_before = b_before["sha256"].clone();
    let after = plugged
        .wait_status("20-b.wasm reloaded from its new file", |s| {
            entry(s, "20-b.wasm").is_some_and(|b| b["sha256"] != sha_before)
        })
        .await;
    assert_eq!(after["load_errors"], json!([]), "{after:#}");
    // Traffic continued over the swap; then a marker with the new version.
    for from in ["client-0", "client-1", "client-2", "api"] {
        receive_until(
            &mut received,
            &mut seen,
            "traffic after the new file",
            from_is(from),
        )
        .await;
    }
    publish_ok(server, "feed", json!({"from": "marker", "n": 2})).await;
    receive_until(&mut received, &mut seen, "marker 2", |p| {
        p["data"]["from"] == "marker" && p["data"]["n"] == 2
    })
    .await;
    assert_eq!(
        tags(seen.last().expect("marker")),
        json!({"a": "v1", "b": "v2"})
    );

    // Stop; every publish succeeded (the tasks assert each reply) and nobody was disconnected.
    stop.store(true, Ordering::Relaxed);
    let mut total = 2; // the markers
    for publisher in publishers {
        total += publisher.await.expect("publisher task");
    }
    let total = usize::try_from(total).expect("count");
    // The subscriber receives every publication.
    while seen.len() < total {
        let have = seen.len();
        receive_until(
            &mut received,
            &mut seen,
            &format!("publication {} of {total}", have + 1),
            |_| true,
        )
        .await;
    }
    assert_eq!(seen.len(), total, "more publications than published");
    reader.abort();

    // Per publisher: tag b is v1 then v2, switching once (the swap happened under its traffic); a is v1
    // throughout; the data is stamped like the tags.
    let mut versions: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    for publication in &seen {
        let from = publication["data"]["from"]
            .as_str()
            .expect("from")
            .to_owned();
        let t = tags(publication);
        assert_eq!(t["a"], "v1", "{publication}");
        assert_eq!(publication["data"]["b"], t["b"], "{publication}");
        let (saw_v1, saw_v2) = versions.entry(from.clone()).or_default();
        match t["b"].as_str() {
            Some("v1") => {
                assert!(
                    !*saw_v2,
                    "{from} went back to the old version: {publication}"
                );
                *saw_v1 = true;
            }
            Some("v2") => *saw_v2 = true,
            other => panic!("unexpected tag {other:?}: {publication}"),
        }
    }
    for from in ["client-0", "client-1", "client-2", "api"] {
        assert_eq!(
            versions.get(from),
            Some(&(true, true)),
            "{from}: {versions:?}"
        );
    }
    eprintln!("hot reload under traffic: {total} publications, none lost");
}

/// Bad deploys keep the old version serving: a garbage file, a core module (not a component) and a
/// truncated component renamed over `20-b.wasm` are each rejected with a reason in `load_errors`, while the
/// old version (same SHA-256, same load time) keeps answering; a good deploy then clears the error.
#[tokio::test]
async fn bad_deploys_keep_the_old_version_serving() {
    let plugged = two_scripted().await;
    let server = &plugged.server;
    let good = plugged.status().await;
    let b_good = entry(&good, "20-b.wasm").expect("b").clone();
    let mut news = subscriber(server, "news").await;

    let wasm = scripted();
    let bad: [(&str, Vec<u8>); 3] = [
        ("garbage", b"this is not WebAssembly at all".to_vec()),
        ("core module", b"\0asm\x01\0\0\0".to_vec()),
        ("truncated component", wasm[..wasm.len() / 2].to_vec()),
    ];
    let mut last_error_at = 0;
    for (round, (what, content)) in bad.into_iter().enumerate() {
        plugged.deploy("20-b.wasm", &content);
        let status = plugged
            .wait_status(&format!("a load error for the {what}"), |s| {
                load_error(s, "20-b.wasm").is_some_and(|e| counter(e, "at_ms") > last_error_at)
            })
            .await;
        let error = load_error(&status, "20-b.wasm").expect("error");
        last_error_at = counter(error, "at_ms");
        let message = error["error"].as_str().expect("message");
        assert!(!message.trim().is_empty(), "{what}: {error}");
        eprintln!("{what}: {message}");

        let b = entry(&status, "20-b.wasm").expect("the old version is still loaded");
        assert_eq!(b["sha256"], b_good["sha256"], "{what}");
        assert_eq!(b["loaded_at_ms"], b_good["loaded_at_ms"], "{what}");
        publish_ok(server, "news", json!({"round": round})).await;
        let delivered = next_pub(&mut news, "news").await;
        assert_eq!(
            tags(&delivered),
            json!({"a": "v1", "b": "v1"}),
            "{what}: the old version still transforms"
        );
    }

    // A good file replaces the old version and clears the error.
    plugged.deploy("20-b.wasm", &with_custom_section(&wasm, "fixed"));
    let status = plugged
        .wait_status("the good deploy", |s| {
            entry(s, "20-b.wasm").is_some_and(|b| b["sha256"] != b_good["sha256"])
        })
        .await;
    assert_eq!(status["load_errors"], json!([]), "{status:#}");
    publish_ok(server, "news", json!({"round": "fixed"})).await;
    assert_eq!(
        tags(&next_pub(&mut news, "news").await),
        json!({"a": "v1", "b": "v1"})
    );
}

/// Removing a plugin's file unloads it (its behaviour disappears and `/api/plugins` no longer lists it);
/// adding a file loads it, in file-name order, with the configuration beside it.
#[tokio::test]
async fn removing_unloads_and_adding_loads() {
    let plugged = two_scripted().await;
    let server = &plugged.server;
    let mut news = subscriber(server, "news").await;
    let (mut client, _) = Client::connect(server).await;
    let reply = client
        .command("rpc", json!({"method": "echo", "data": 1}))
        .await;
    assert_eq!(reply["rpc"], json!({"data": 1}), "{reply}");

    std::fs::remove_file(plugged.path("20-b.wasm")).expect("remove b");
    std::fs::remove_file(plugged.path("20-b.toml")).expect("remove b's config");
    let status = plugged
        .wait_status("20-b.wasm unloaded", |s| entry(s, "20-b.wasm").is_none())
        .await;
    assert_eq!(loaded_files(&status), ["10-a.wasm"], "{status:#}");
    assert_eq!(status["load_errors"], json!([]), "{status:#}");
    publish_ok(server, "news", json!({"n": 1})).await;
    let delivered = next_pub(&mut news, "news").await;
    assert_eq!(tags(&delivered), json!({"a": "v1"}));
    assert_eq!(delivered["data"], json!({"n": 1, "a": "v1"}));
    // b answered RPCs; a passes, so nobody answers now.
    let reply = client
        .command("rpc", json!({"method": "echo", "data": 1}))
        .await;
    assert_eq!(reply_error(&reply)["code"], 104, "{reply}");

    // Add a third copy, configuration first (a config beside no wasm is ignored), then the wasm.
    std::fs::write(
        plugged.path("30-c.toml"),
        "id = \"c\"\ntag = \"v1\"\nrpc_echo = true\n",
    )
    .expect("write c's config");
    plugged.deploy("30-c.wasm", &scripted());
    let status = plugged
        .wait_status("30-c.wasm loaded", |s| entry(s, "30-c.wasm").is_some())
        .await;
    assert_eq!(
        loaded_files(&status),
        ["10-a.wasm", "30-c.wasm"],
        "{status:#}"
    );
    publish_ok(server, "news", json!({"n": 2})).await;
    assert_eq!(
        tags(&next_pub(&mut news, "news").await),
        json!({"a": "v1", "c": "v1"})
    );
    let reply = client
        .command("rpc", json!({"method": "echo", "data": 2}))
        .await;
    assert_eq!(reply["rpc"], json!({"data": 2}), "{reply}");
}

// ------------------------------------------------------------------------------------------- api ---

/// `GET /api/plugins` needs the API key like every API method: 401 without it or with a wrong one.
#[tokio::test]
async fn plugins_api_requires_the_key() {
    let plugged = Plugged::start(&[("10-hostile.wasm", &hostile())]).await;
    let (status, body) = get_plugins(&plugged.server, None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = get_plugins(&plugged.server, Some("wrong-key")).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = get_plugins(&plugged.server, Some(API_KEY)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(loaded_files(&body["result"]), ["10-hostile.wasm"]);
}

/// A new version serves first on baseline (Winch) code, then on optimised (Cranelift) code: both are
/// isolated alike — a loop, an exhausted memory, a deep recursion and a panic fail closed with the same
/// kinds on each — and both pass normal calls afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_code_is_as_isolated_as_optimised_code() {
    use herald::plugin::bindings::{PublishRequest, PublishSource};
    use herald::plugin::runtime::{Call, HostServices, Limits, PoolBounds, Runtime, Tier, Wasm};
    let services = HostServices::new(
        &Default::default(),
        std::sync::Arc::new(herald::engine::keyvalue::Stores::new(Default::default())),
    );
    let runtime = Runtime::new(
        None,
        PoolBounds {
            instances: 64,
            max_memory: 64 << 20,
        },
        services,
    )
    .expect("plugin runtime");
    let limits = Limits {
        deadline: Duration::from_millis(50),
        memory: 16 << 20,
        max_idle: 4,
    };
    let publish = |what: &str| {
        Call::Publish(PublishRequest {
            source: PublishSource::Api,
            publisher: None,
            channel: "news".into(),
            data: format!("{what:?}").into_bytes(),
            tags: vec![],
        })
    };
    for tier in [Tier::Baseline, Tier::Optimized] {
        let plugin = runtime
            .load(
                "10-hostile.wasm",
                Wasm::new(hostile()),
                tier,
                |_| Ok(("{}".to_owned(), limits)),
                &Default::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{tier:?}: {e}"));
        assert_eq!(plugin.tier, tier);
        for (what, kind) in [
            ("loop", "deadline"),
            ("oom", "memory_limit"),
            ("recursion", "stack_overflow"),
            ("panic", "panic"),
        ] {
            let failure = plugin.call(&publish(what)).await.expect_err("fails closed");
            assert_eq!(failure.kind.as_str(), kind, "{tier:?} {what}: {failure}");
        }
        plugin
            .call(&publish("fine"))
            .await
            .unwrap_or_else(|e| panic!("{tier:?}: {e}"));
    }
}

/// At start plugins serve optimised code; a reloaded version serves baseline code first and moves to
/// optimised code by itself; `/api/plugins` says which code serves.
#[tokio::test]
async fn a_reloaded_version_moves_to_optimised_code_by_itself() {
    let plugged = Plugged::start(&[("10-hostile.wasm", &hostile())]).await;
    let server = &plugged.server;
    let status = plugged.status().await;
    assert_eq!(
        entry(&status, "10-hostile.wasm").expect("listed")["code"],
        "optimized"
    );

    plugged.deploy("10-hostile.wasm", &scripted());
    let status = plugged
        .wait_status("the new version", |status| {
            entry(status, "10-hostile.wasm").is_some_and(|p| p["name"] == "scripted")
        })
        .await;
    let code = &entry(&status, "10-hostile.wasm").expect("listed")["code"];
    assert!(code == "baseline" || code == "optimized", "{status:#}");
    server.node.plugins.optimized().await;
    let status = plugged.status().await;
    assert_eq!(
        entry(&status, "10-hostile.wasm").expect("listed")["code"],
        "optimized",
        "{status:#}"
    );
    publish_ok(server, "news", json!({"n": 1})).await;
}

/// The scripted fixture as built against contract 0.1, before 0.2 existed (kept in `tests/fixtures/`).
fn scripted_0_1() -> Vec<u8> {
    let path = std::path::Path::new(herald_tests::cluster::REPO_ROOT)
        .join("tests/fixtures/scripted-0.1.wasm");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A plugin built against contract 0.1 loads and decides beside a 0.2 plugin; `/api/plugins` and
/// `herald plugin check` say which contract each targets and which capabilities it imports.
#[tokio::test]
async fn a_0_1_plugin_serves_beside_0_2_plugins() {
    let config = b"id = \"old\"\ndeny_subscribe = [\"x:old-rule\"]\n";
    let plugged = Plugged::start(&[
        ("10-old.wasm", &scripted_0_1()),
        ("10-old.toml", config),
        ("20-new.wasm", &hostile()),
    ])
    .await;
    let status = plugged.status().await;
    assert_eq!(
        loaded_files(&status),
        ["10-old.wasm", "20-new.wasm"],
        "{status:#}"
    );
    let old = entry(&status, "10-old.wasm").expect("listed");
    let new = entry(&status, "20-new.wasm").expect("listed");
    assert_eq!(
        (&old["contract"], &new["contract"]),
        (&json!("0.1.0"), &json!("0.2.0"))
    );
    assert_eq!(
        (&old["capabilities"], &new["capabilities"]),
        (&json!([]), &json!([]))
    );

    let (mut client, _) = Client::connect(&plugged.server).await;
    let reply = client.subscribe(json!({"channel": "x:old-rule"})).await;
    assert_eq!(
        reply_error(&reply)["code"],
        103,
        "the 0.1 plugin's deny: {reply}"
    );
    subscribe_ok(&mut client, "x:fine").await;
    let (status, body) = plugged
        .server
        .api("publish", json!({"channel": "news", "data": "panic"}))
        .await;
    assert_eq!(
        api_error(status, &body)["code"],
        100,
        "the 0.2 plugin still runs"
    );

    let checked = herald::plugin::check(&plugged.path("10-old.wasm"), None)
        .await
        .expect("checks");
    assert!(
        checked.contains("contract herald:plugin@0.1.0"),
        "{checked}"
    );
    let checked = herald::plugin::check(&plugged.path("20-new.wasm"), None)
        .await
        .expect("checks");
    assert!(
        checked.contains("contract herald:plugin@0.2.0; capabilities: none beyond"),
        "{checked}"
    );
}

/// A backend for plugins to ask, on a loopback port: `/auth` lets in the holder of session cookie
/// `laravel_session=valid` as alice (and refuses anyone else with 401), `/slow` answers after 10 s,
/// `/garbage` answers 200 with HTML, `/auth-200ms` lets anyone in as alice after 200 ms.
async fn backend() -> std::net::SocketAddr {
    use axum::routing::post;
    async fn auth(axum::Json(body): axum::Json<Value>) -> (axum::http::StatusCode, String) {
        let cookie = body["cookie"].as_str().unwrap_or_default();
        if cookie.split("; ").any(|c| c == "laravel_session=valid") {
            (axum::http::StatusCode::OK, r#"{"user":"alice"}"#.to_owned())
        } else {
            (axum::http::StatusCode::UNAUTHORIZED, "{}".to_owned())
        }
    }
    let app = axum::Router::new()
        .route("/auth", post(auth))
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                r#"{"user":"late"}"#
            }),
        )
        .route("/garbage", post(|| async { "<html>oops</html>" }))
        .route(
            "/auth-3s",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                r#"{"user":"alice"}"#
            }),
        )
        .route(
            "/auth-200ms",
            post(|| async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                r#"{"user":"alice"}"#
            }),
        );
    herald_tests::serve_loopback(app).await
}

/// A plugin asks its backend over HTTP (contract 0.2) at connect: a session cookie the backend accepts
/// connects as the user it names, one it refuses is closed with 3500; a backend that answers garbage,
/// too slowly or not at all fails the connect closed (3500, 3004, 3004) within the plugin's timeout; a
/// URL outside the plugin's allowed prefixes is never requested. `/api/plugins` counts the requests and
/// their failures, by kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_asks_its_backend_and_fails_closed_without_it() {
    let backend = backend().await;
    let nobody = format!("127.0.0.1:{}", herald::testing::free_port());
    let cases = [
        (
            format!("http://{backend}/auth"),
            Some("laravel_session=valid"),
            None,
        ),
        (
            format!("http://{backend}/auth"),
            Some("laravel_session=stolen"),
            Some(3500),
        ),
        (format!("http://{backend}/garbage"), None, Some(3500)),
        (format!("http://{backend}/slow"), None, Some(3004)),
        (format!("http://{nobody}/auth"), None, Some(3004)),
        ("http://10.255.255.1/auth".to_owned(), None, Some(3004)),
    ];
    for (url, cookie, closed) in cases {
        let dir = tempfile::tempdir().expect("plugin dir");
        std::fs::write(dir.path().join("10-scripted.wasm"), scripted()).expect("write plugin");
        let script = format!("connect_backend = {url:?}\n");
        std::fs::write(dir.path().join("10-scripted.toml"), script).expect("write config");
        let server = TestServer::start(&format!(
            "[plugins]\ndir = {:?}\n[plugins.limits.scripted]\ndeadline = \"3s\"\n\
             [plugins.http.scripted]\nallow = [\"http://{backend}/\", \"http://{nobody}/auth\"]\n\
             timeout = \"300ms\"\n",
            dir.path().to_str().expect("utf-8 path"),
        ))
        .await;
        let headers: Vec<(&'static str, &str)> =
            cookie.map(|c| ("cookie", c)).into_iter().collect();
        let mut client = Client::open_with_headers(&server.ws_url(), &headers).await;
        let started = std::time::Instant::now();
        match closed {
            None => {
                let reply = client.command("connect", json!({})).await;
                assert!(reply["connect"]["client"].is_string(), "{url}: {reply}");
            }
            Some(code) => {
                let id = client.next_id();
                client
                    .send_text(&json!({"id": id, "connect": {}}).to_string())
                    .await;
                assert_eq!(client.expect_close().await.0, code, "{url}");
                // Bounded by the plugin's HTTP timeout (300 ms), well inside its 3 s deadline.
                assert!(
                    started.elapsed() < Duration::from_secs(3),
                    "{url}: took {:?}",
                    started.elapsed()
                );
            }
        }
        let status = get_plugins(&server, Some(API_KEY)).await.1;
        let plugin = entry(&status["result"], "10-scripted.wasm")
            .expect("listed")
            .clone();
        assert_eq!(plugin["capabilities"], json!(["http"]), "{plugin:#}");
        assert_eq!(plugin["http_requests"], 1, "{url}: {plugin:#}");
        let failures = &plugin["http_failures"];
        match url.as_str() {
            u if u.ends_with("/slow") => {
                assert_eq!(failures, &json!([{"reason": "timeout", "count": 1}]))
            }
            u if u.starts_with("http://10.") => {
                assert_eq!(failures, &json!([{"reason": "not_allowed", "count": 1}]));
            }
            u if u.contains(&nobody) => {
                assert_eq!(failures, &json!([{"reason": "unavailable", "count": 1}]));
            }
            _ => assert_eq!(failures, &json!([]), "{url}: answered, whatever it said"),
        }
    }
}

/// A server whose scripted fixture asks `connect_url` at connect; `plugins` continues its `[plugins]`
/// section (keys, then sub-tables). The folder lives as long as the returned guard.
async fn asking_at_connect(connect_url: &str, plugins: &str) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("plugin dir");
    std::fs::write(dir.path().join("10-scripted.wasm"), scripted()).expect("write plugin");
    let script = format!("connect_backend = \"{connect_url}\"\n");
    std::fs::write(dir.path().join("10-scripted.toml"), script).expect("write config");
    let server = TestServer::start(&format!(
        "[plugins]\ndir = {:?}\n{plugins}",
        dir.path().to_str().expect("utf-8 path"),
    ))
    .await;
    (server, dir)
}

/// `count` clients sending `connect` at once; their replies.
async fn connect_at_once(server: &TestServer, count: usize) -> Vec<Value> {
    let mut clients = Vec::new();
    for _ in 0..count {
        clients.push(Client::open(server).await);
    }
    futures_util::future::join_all(
        clients
            .iter_mut()
            .map(|client| client.command("connect", json!({}))),
    )
    .await
}

/// More connects waiting on a slow backend at once than the runtime has instances (600 against a pool of
/// 512): the calls past the bound wait for a free instance within their deadline instead of failing, so
/// every client connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_waiting_hooks_than_instances_queue_instead_of_failing() {
    let backend = backend().await;
    let (server, _dir) = asking_at_connect(
        &format!("http://{backend}/auth-200ms"),
        &format!(
            "[plugins.limits.scripted]\ndeadline = \"20s\"\n\
             [plugins.http.scripted]\nallow = [\"http://{backend}/\"]\nmax_concurrent = 1000\n"
        ),
    )
    .await;
    let replies = connect_at_once(&server, 600).await;
    let refused: Vec<&Value> = replies
        .iter()
        .filter(|r| r.get("connect").is_none())
        .collect();
    assert!(
        refused.is_empty(),
        "{} refused, e.g. {:?}",
        refused.len(),
        refused.first()
    );
    let status = get_plugins(&server, Some(API_KEY)).await.1;
    let plugin = entry(&status["result"], "10-scripted.wasm")
        .expect("listed")
        .clone();
    assert_eq!(plugin["failures"], 0, "{plugin:#}");
}

/// `plugins.max_instances` bounds the hooks waiting on a backend at once (a quarter of the pool per hook):
/// 40 connects through a backend answering in 300 ms with a pool of 16 reach the backend at most 4 at a
/// time, and every one of them connects, the rest having waited their turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_pool_bounds_the_hooks_waiting_on_a_backend() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    #[derive(Default)]
    struct InFlight {
        now: AtomicUsize,
        most: AtomicUsize,
    }
    let counted = Arc::new(InFlight::default());
    let app = axum::Router::new()
        .route(
            "/auth",
            axum::routing::post(
                |axum::extract::State(counted): axum::extract::State<Arc<InFlight>>| async move {
                    let now = counted.now.fetch_add(1, Ordering::SeqCst) + 1;
                    counted.most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    counted.now.fetch_sub(1, Ordering::SeqCst);
                    r#"{"user":"alice"}"#
                },
            ),
        )
        .with_state(counted.clone());
    let backend = herald_tests::serve_loopback(app).await;
    let (server, _dir) = asking_at_connect(
        &format!("http://{backend}/auth"),
        &format!(
            "max_instances = 16\n[plugins.limits.scripted]\ndeadline = \"20s\"\n\
             [plugins.http.scripted]\nallow = [\"http://{backend}/\"]\n"
        ),
    )
    .await;
    let replies = connect_at_once(&server, 40).await;
    assert!(
        replies.iter().all(|reply| reply.get("connect").is_some()),
        "{replies:?}"
    );
    assert_eq!(
        counted.most.load(Ordering::SeqCst),
        4,
        "a quarter of 16 instances at once"
    );
}

/// Connects waiting on a slow backend do not hold up other hooks: with 400 connects waiting 3 s for the
/// backend (more than the 384 calls that may run at once in all), a publication through the same plugin's
/// publish hook is decided at once, because each hook has its own share of the calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_connects_do_not_hold_up_publish_hooks() {
    let backend = backend().await;
    let (server, _dir) = asking_at_connect(
        &format!("http://{backend}/auth-3s"),
        &format!(
            "[plugins.limits.scripted]\ndeadline = \"30s\"\n\
             [plugins.http.scripted]\nallow = [\"http://{backend}/\"]\nmax_concurrent = 1000\n\
             timeout = \"10s\"\n"
        ),
    )
    .await;
    let mut waiting = Vec::new();
    for _ in 0..400 {
        let mut client = Client::open(&server).await;
        let id = client.next_id();
        client
            .send_text(&json!({"id": id, "connect": {}}).to_string())
            .await;
        waiting.push(client);
    }
    // Every connect is with the plugin (waiting on the backend, or for its turn) before the publish.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = get_plugins(&server, Some(API_KEY)).await.1;
        let plugin = entry(&status["result"], "10-scripted.wasm")
            .expect("listed")
            .clone();
        if plugin["calls"].as_u64() >= Some(400) || plugin["http_requests"].as_u64() >= Some(128) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{plugin:#}");
        tokio::time::sleep(POLL).await;
    }
    let started = std::time::Instant::now();
    publish_ok(&server, "news", json!({"n": 1})).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the publish hook waited {:?} behind the connects",
        started.elapsed()
    );
    drop(waiting);
}
