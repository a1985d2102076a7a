//! Expiring connections and subscriptions (`shared/protocols/centrifuge.md` §6, §6.2) against a real Herald
//! with the `jwt-auth` plugin, over the raw protocol client: a connection whose token expires is closed
//! with 3005 after `expired_close_delay`, `refresh` extends it (and a token for another user or an expired
//! one ends it), a subscription token's expiry ends with push `unsubscribe` 2501 while the connection
//! stays, and `sub_refresh` extends it. Last, the disconnect hook of the `scripted` fixture is called when a
//! client goes away.
//!
//! Tokens are HS256, minted here with `jsonwebtoken`, and expire a couple of seconds ahead; the server runs
//! with `expired_close_delay = "1s"`. These tests are about protocol time, so they wait for the server's
//! own close and push events (each wait bounded by [`WAIT`]). To show that something did *not* happen at
//! the old expiry + delay, a witness whose expiry lies well after it (another connection, or another
//! subscription on the same connection) is left to expire: its close or push is the server telling the test
//! that the old deadline has passed. Nothing sleeps for a fixed time.
//!
//! Needs the plugins built (`./plugins/build`); a missing plugin fails the test with that instruction.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_tests::{Client, TestServer, WAIT, built_plugin, publication};
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};
use tempfile::TempDir;

/// The HS256 secret the plugin verifies with and the tests sign with.
const HMAC_SECRET: &str = "herald-expiry-test-hmac-secret-0123456789abcdef";

/// Between two polls of `/api/plugins`.
const POLL: Duration = Duration::from_millis(20);

/// Unix seconds now.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// An HS256 token with these claims.
fn token(claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
    )
    .expect("token signs")
}

/// A connection token for `user` expiring at `exp`.
fn conn_token(user: &str, exp: u64) -> String {
    token(json!({"sub": user, "exp": exp}))
}

/// A subscription token for `user` and `channel` expiring at `exp`.
fn sub_token(user: &str, channel: &str, exp: u64) -> String {
    token(json!({"sub": user, "channel": channel, "exp": exp}))
}

/// A server loading `plugin` (crate name) as `file`, with `plugin_toml` beside it, plus `extra` config.
struct Plugged {
    server: TestServer,
    _dir: TempDir,
}

impl Plugged {
    async fn start(plugin: &str, file: &str, plugin_toml: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp plugin dir");
        std::fs::write(dir.path().join(file), built_plugin(plugin)).expect("write plugin");
        std::fs::write(
            dir.path().join(Path::new(file).with_extension("toml")),
            plugin_toml,
        )
        .expect("write plugin config");
        let config = format!(
            "[plugins]\ndir = {:?}\ndeadline = \"100ms\"\n{extra}",
            dir.path().to_str().expect("utf-8 temp path"),
        );
        let server = TestServer::start(&config).await;
        let status = server.plugins_status().await;
        let loaded = status["plugins"]
            .as_array()
            .is_some_and(|plugins| plugins.iter().any(|p| p["file"] == file));
        assert!(loaded, "{file} did not load: {status:#}");
        Self { server, _dir: dir }
    }

    /// Herald with jwt-auth: tokens required, a 1 s grace after expiry, and a `private` namespace (for
    /// `$private:…`) that needs a subscription token. The top level stays open to clients.
    async fn jwt() -> Self {
        let mut table = toml::Table::new();
        table.insert("hmac_secret".into(), HMAC_SECRET.into());
        let plugin_toml = toml::to_string(&table).expect("serialise plugin config");
        Self::start(
            "herald-plugin-jwt-auth",
            "10-jwt-auth.wasm",
            &plugin_toml,
            r#"
            [client]
            allow_anonymous = false
            expired_close_delay = "1s"

            [channel.namespaces.private]
            history_size = 10
            history_ttl = "1m"
            allow_subscribe_for_client = false
            allow_subscribe_for_anonymous = false
            "#,
        )
        .await
    }
}

/// Opens a connection and sends `connect` with `token`; returns the client and the connect result.
async fn connect(server: &TestServer, token: &str) -> (Client, Value) {
    let mut client = Client::open(server).await;
    let reply = client.command("connect", json!({"token": token})).await;
    let result = reply
        .get("connect")
        .cloned()
        .unwrap_or_else(|| panic!("connect failed: {reply}"));
    (client, result)
}

/// Sends `{"id":N,"<method>":body}` without waiting for a reply (for commands the server answers by
/// closing).
async fn send(client: &mut Client, method: &str, body: Value) {
    let id = client.next_id();
    let mut command = serde_json::Map::new();
    command.insert("id".into(), id.into());
    command.insert(method.into(), body);
    client.send_text(&Value::Object(command).to_string()).await;
}

/// Asserts `result` (a connect, refresh, subscribe or sub_refresh result) says it expires, and returns
/// its `ttl` (at least 1).
fn expiring(result: &Value) -> u64 {
    assert_eq!(result["expires"], true, "expected expires: {result}");
    let ttl = result["ttl"]
        .as_u64()
        .unwrap_or_else(|| panic!("expected a ttl: {result}"));
    assert!(ttl >= 1, "ttl {ttl} < 1: {result}");
    ttl
}

/// Subscribes to `channel` with `token`; returns the subscribe result.
async fn subscribe(client: &mut Client, channel: &str, token: &str) -> Value {
    let reply = client
        .subscribe(json!({"channel": channel, "token": token}))
        .await;
    reply
        .get("subscribe")
        .cloned()
        .unwrap_or_else(|| panic!("subscribe to {channel} failed: {reply}"))
}

/// The push a subscription's expiry sends.
fn expired_push(channel: &str) -> Value {
    json!({"channel": channel, "unsubscribe": {"code": 2501, "reason": "subscription expired"}})
}

/// A connection whose token expires and that never refreshes is closed with 3005 after the expiry and
/// the delay; so is one whose `expire_at` claim expires while `exp` lies far ahead.
#[tokio::test]
async fn connection_without_refresh_is_closed_with_3005() {
    let plugged = Plugged::jwt().await;
    let server = &plugged.server;

    let (mut by_exp, result) = connect(server, &conn_token("alice", now() + 2)).await;
    expiring(&result);
    let expire_at = token(json!({"sub": "bob", "exp": now() + 3600, "expire_at": now() + 2}));
    let (mut by_expire_at, result) = connect(server, &expire_at).await;
    let ttl = expiring(&result);
    assert!(ttl <= 2, "expire_at must override exp: {result}");

    assert_eq!(
        by_exp.expect_close().await,
        (3005, "connection expired".into())
    );
    assert_eq!(
        by_expire_at.expect_close().await,
        (3005, "connection expired".into())
    );
}

/// `refresh` with a new token before expiry answers with the new `expires`/`ttl`, and the connection
/// outlives its old expiry + delay: a witness connection whose token expires 2 s after the old one is
/// closed first, and a publication sent after that still arrives.
#[tokio::test]
async fn refresh_extends_the_connection() {
    let plugged = Plugged::jwt().await;
    let server = &plugged.server;
    let old_exp = now() + 2;

    let (mut client, connected) = connect(server, &conn_token("alice", old_exp)).await;
    expiring(&connected);
    let (mut witness, result) = connect(server, &conn_token("witness", old_exp + 2)).await;
    expiring(&result);
    let reply = client.subscribe(json!({"channel": "news"})).await;
    assert!(reply.get("subscribe").is_some(), "{reply}");

    let reply = client
        .command("refresh", json!({"token": conn_token("alice", now() + 60)}))
        .await;
    let refreshed = reply
        .get("refresh")
        .unwrap_or_else(|| panic!("refresh failed: {reply}"));
    let ttl = expiring(refreshed);
    assert!(
        ttl > 2,
        "the refreshed ttl must reflect the new token: {reply}"
    );
    assert_eq!(refreshed["client"], connected["client"], "{reply}");

    // The witness's close marks that the old expiry + delay (+ at least 1 s) has passed.
    assert_eq!(
        witness.expect_close().await,
        (3005, "connection expired".into())
    );
    server.publish("news", json!({"after": "old expiry"})).await;
    let push = client.next_push().await;
    assert_eq!(
        publication(&push, "news")["data"],
        json!({"after": "old expiry"})
    );
}

/// `refresh` with a token for another user closes with 3500; with an expired token, with 3005.
#[tokio::test]
async fn refresh_with_a_wrong_or_expired_token_closes() {
    let plugged = Plugged::jwt().await;
    let server = &plugged.server;

    let (mut other_user, _) = connect(server, &conn_token("alice", now() + 60)).await;
    send(
        &mut other_user,
        "refresh",
        json!({"token": conn_token("mallory", now() + 60)}),
    )
    .await;
    assert_eq!(
        other_user.expect_close().await,
        (3500, "invalid token".into())
    );

    let (mut expired, _) = connect(server, &conn_token("alice", now() + 60)).await;
    send(
        &mut expired,
        "refresh",
        json!({"token": conn_token("alice", now() - 10)}),
    )
    .await;
    assert_eq!(
        expired.expect_close().await,
        (3005, "connection expired".into())
    );
}

/// A subscription token with `exp` gives `expires`/`ttl` in the subscribe reply; without `sub_refresh`
/// the client gets push `unsubscribe` 2501 and the connection stays: subscribing again with a new token
/// works and delivers publications.
#[tokio::test]
async fn subscription_without_refresh_is_unsubscribed_with_2501() {
    let plugged = Plugged::jwt().await;
    let server = &plugged.server;
    let channel = "$private:x";

    let (mut client, _) = connect(server, &conn_token("alice", now() + 60)).await;
    let result = subscribe(
        &mut client,
        channel,
        &sub_token("alice", channel, now() + 2),
    )
    .await;
    expiring(&result);

    assert_eq!(client.next_push().await, expired_push(channel));

    let result = subscribe(
        &mut client,
        channel,
        &sub_token("alice", channel, now() + 60),
    )
    .await;
    expiring(&result);
    server.publish(channel, json!({"again": true})).await;
    let push = client.next_push().await;
    assert_eq!(publication(&push, channel)["data"], json!({"again": true}));
}

/// `sub_refresh` with a new token answers `{"id":N,"sub_refresh":{"expires":true,"ttl":…}}` and the
/// subscription outlives its old expiry + delay: a witness subscription on the same connection, whose
/// token expires 2 s after the old one, gets its 2501 first, and a publication sent after that arrives.
#[tokio::test]
async fn sub_refresh_extends_the_subscription() {
    let plugged = Plugged::jwt().await;
    let server = &plugged.server;
    let channel = "$private:x";
    let witness = "$private:witness";
    let old_exp = now() + 2;

    let (mut client, _) = connect(server, &conn_token("alice", now() + 60)).await;
    expiring(&subscribe(&mut client, channel, &sub_token("alice", channel, old_exp)).await);
    expiring(
        &subscribe(
            &mut client,
            witness,
            &sub_token("alice", witness, old_exp + 2),
        )
        .await,
    );

    let token = sub_token("alice", channel, now() + 60);
    let reply = client
        .command("sub_refresh", json!({"channel": channel, "token": token}))
        .await;
    let object = reply.as_object().expect("reply object");
    assert_eq!(object.len(), 2, "only id and sub_refresh: {reply}");
    let refreshed = reply
        .get("sub_refresh")
        .unwrap_or_else(|| panic!("sub_refresh failed: {reply}"));
    let ttl = expiring(refreshed);
    assert!(
        ttl > 2,
        "the refreshed ttl must reflect the new token: {reply}"
    );
    assert_eq!(
        refreshed.as_object().map(|o| o.len()),
        Some(2),
        "only expires and ttl: {reply}"
    );

    // The next push is the witness's 2501 (not one for the refreshed channel), which marks that the old
    // expiry + delay (+ at least 1 s) has passed.
    assert_eq!(client.next_push().await, expired_push(witness));
    server
        .publish(channel, json!({"after": "old expiry"}))
        .await;
    let push = client.next_push().await;
    assert_eq!(
        publication(&push, channel)["data"],
        json!({"after": "old expiry"})
    );
}

/// The `calls` counter of `file` in `/api/plugins`.
fn calls(status: &Value, file: &str) -> u64 {
    status["plugins"]
        .as_array()
        .and_then(|plugins| plugins.iter().find(|p| p["file"] == file))
        .and_then(|p| p["calls"].as_u64())
        .unwrap_or_else(|| panic!("no calls for {file}: {status:#}"))
}

/// Waits until the plugin in `file` has made one call more than `before` (the disconnect hook's), and
/// returns the plugin status then.
async fn disconnect_reported(server: &TestServer, file: &str, before: u64) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    let status = loop {
        let status = server.plugins_status().await;
        if calls(&status, file) > before {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the disconnect hook was not called within {WAIT:?}: {status:#}"
        );
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(calls(&status, file), before + 1, "{status:#}");
    status
}

/// A Pusher client that goes away is reported to the disconnect hook as a Centrifugo client is: the
/// skeleton reports every protocol's connections.
#[tokio::test]
async fn disconnect_hook_is_called_when_a_pusher_client_goes_away() {
    const FILE: &str = "scripted.wasm";
    let plugged = Plugged::start(
        "herald-test-scripted",
        FILE,
        "id = \"expiry\"\n",
        herald_tests::PUSHER_CONFIG,
    )
    .await;
    let server = &plugged.server;
    let mut pusher = herald_tests::pusher::Pusher::connect(server.addr).await;
    pusher.subscribed("news", None).await;
    let before = calls(&server.plugins_status().await, FILE);
    pusher
        .client
        .send_message(tokio_tungstenite::tungstenite::Message::Close(None))
        .await;
    drop(pusher);
    disconnect_reported(server, FILE, before).await;
}

/// A client that connects and goes away is reported to a plugin with the disconnect hook: the
/// `scripted` fixture's `calls` counter grows by one after the socket closes (polled, since the
/// notification runs after the close).
#[tokio::test]
async fn disconnect_hook_is_called_when_a_client_goes_away() {
    const FILE: &str = "scripted.wasm";
    let plugged = Plugged::start("herald-test-scripted", FILE, "id = \"expiry\"\n", "").await;
    let server = &plugged.server;
    let status = server.plugins_status().await;
    let entry = status["plugins"]
        .as_array()
        .and_then(|plugins| plugins.iter().find(|p| p["file"] == FILE))
        .cloned()
        .expect("scripted entry");
    let hooks = entry["hooks"].as_array().expect("hooks");
    assert!(hooks.contains(&json!("disconnect")), "{entry}");

    let (mut client, _) = Client::connect(server).await;
    let reply = client.subscribe(json!({"channel": "news"})).await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
    let before = calls(&server.plugins_status().await, FILE);

    client
        .send_message(tokio_tungstenite::tungstenite::Message::Close(None))
        .await;
    drop(client);

    let status = disconnect_reported(server, FILE, before).await;
    let entry = status["plugins"]
        .as_array()
        .and_then(|plugins| plugins.iter().find(|p| p["file"] == FILE))
        .cloned()
        .expect("scripted entry");
    assert_eq!(entry["failures"], 0, "{entry}");
}
