//! The channel policy tried from outside, the way an attacker would: every entrance — the Centrifugo
//! protocol's subscribe, history, presence, presence_stats and publish, the Pusher protocol's subscribe and
//! client events, the server API's server-side subscribe — against every protected channel kind, with a
//! namespace configuration that opens everything it can, on the memory engine and on Redis.
//!
//! The attacker is an anonymous Centrifugo client and one identified by a plugin as `mallory`; the Pusher
//! app is the one of [`PUSHER_CONFIG`]. Each entrance is one row of [`CENTRIFUGO_ENTRANCES`]: a new client
//! command that can name a channel belongs there, and fails these tests unless it asks the policy.

use herald::testing::RedisServer;
use herald_tests::pusher::{Pusher, data, get, triggered};
use herald_tests::{Client, PUSHER_CONFIG, TestServer, publication, scripted_plugin};
use serde_json::{Value, json};
use tempfile::TempDir;

/// One channel of every protected kind.
const PROTECTED: [&str; 8] = [
    "private-a",
    "presence-a",
    "private-encrypted-a",
    "private-cache-a",
    "presence-cache-a",
    "#server-to-user-alice",
    "$secret",
    "dialog#alice",
];

/// Client commands that name a channel, with the body each sends; every one must answer `103`.
const CENTRIFUGO_ENTRANCES: [&str; 5] = [
    "subscribe",
    "history",
    "presence",
    "presence_stats",
    "publish",
];

/// Every namespace switch on, for anonymous clients too: only the policy's kind rules stand between a
/// client and a protected channel.
const OPEN: &str = r#"
[channel.defaults]
history_size = 100
history_ttl = "5m"
presence = true
join_leave = true
allow_subscribe_for_client = true
allow_subscribe_for_anonymous = true
allow_publish_for_client = true
allow_publish_for_subscriber = true
allow_publish_for_anonymous = true
allow_history_for_client = true
allow_history_for_subscriber = true
allow_history_for_anonymous = true
allow_presence_for_client = true
allow_presence_for_subscriber = true
allow_presence_for_anonymous = true
allow_user_limited_channels = true
"#;

/// A server with the Pusher app, [`OPEN`] channels and the scripted plugin (token `good` connects as
/// `mallory`; `script` adds to its configuration), on Redis when `redis` is given.
struct Setup {
    server: TestServer,
    _plugins: TempDir,
    _redis: Option<RedisServer>,
}

impl Setup {
    async fn start(redis: bool, script: &str) -> Self {
        let (plugins, plugins_toml) =
            scripted_plugin(&format!("id = \"s\"\nconnect_user = \"mallory\"\n{script}"));
        let redis = redis.then(RedisServer::start);
        let engine = match &redis {
            Some(redis) => format!(
                "[engine]\ntype = \"redis\"\n[engine.redis]\naddresses = [\"{}\"]\n",
                redis.url()
            ),
            None => String::new(),
        };
        let config = format!("{PUSHER_CONFIG}\n{OPEN}\n{engine}\n{plugins_toml}");
        Self {
            server: TestServer::start(&config).await,
            _plugins: plugins,
            _redis: redis,
        }
    }

    /// A Centrifugo client and its client id: anonymous without a token, `mallory` with `good`.
    async fn centrifugo(&self, token: Option<&str>) -> (Client, String) {
        let mut client = Client::open(&self.server).await;
        let body = token.map_or(json!({}), |token| json!({ "token": token }));
        let reply = client.command("connect", body).await;
        let id = reply["connect"]["client"]
            .as_str()
            .unwrap_or_else(|| panic!("connect: {reply}"))
            .to_owned();
        (client, id)
    }

    /// Publishes into `channel` as the backend: the server API, and the Pusher API for names Pusher can
    /// use (its user channels are how the server libraries' `sendToUser` reaches a user).
    async fn backend_publishes(&self, channel: &str, n: u32) {
        self.server
            .publish(channel, json!({"secret": channel, "n": n}))
            .await;
        if !channel.starts_with('$') && !channel.starts_with("dialog") {
            triggered(
                self.server.addr,
                json!({"name": "secret", "channel": channel, "data": json!({"n": n}).to_string()}),
            )
            .await;
        }
    }

    /// The channel's history, read through the server API.
    async fn history(&self, channel: &str) -> Vec<Value> {
        let (status, body) = self
            .server
            .api("history", json!({"channel": channel, "limit": -1}))
            .await;
        assert_eq!(status, 200, "{body}");
        body["result"]["publications"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// The body of a Centrifugo command naming `channel`.
fn body(method: &str, channel: &str) -> Value {
    match method {
        "history" => json!({"channel": channel, "limit": -1}),
        "publish" => json!({"channel": channel, "data": {"injected": true}}),
        _ => json!({ "channel": channel }),
    }
}

/// Publishes into the public `sentinel` channel and asserts it is the next thing `client` hears: whatever
/// the backend published into protected channels before it would have arrived first.
async fn nothing_before_sentinel(setup: &Setup, client: &mut Client, who: &str, n: u32) {
    setup.server.publish("sentinel", json!({ "n": n })).await;
    let push = client.next_push().await;
    assert_eq!(
        publication(&push, "sentinel")["data"],
        json!({ "n": n }),
        "{who} heard something else first: {push}"
    );
}

async fn centrifugo_clients_reach_no_protected_channel(redis: bool) {
    let setup = Setup::start(redis, "").await;
    for channel in PROTECTED {
        setup.backend_publishes(channel, 1).await;
    }
    for (who, token) in [("anonymous", None), ("mallory", Some("good"))] {
        let (mut attacker, _) = setup.centrifugo(token).await;
        for channel in PROTECTED {
            for method in CENTRIFUGO_ENTRANCES {
                let reply = attacker.command(method, body(method, channel)).await;
                assert_eq!(
                    reply["error"]["code"], 103,
                    "{who} {method} {channel}: {reply}"
                );
            }
        }
        let sentinel = attacker.subscribe(json!({"channel": "sentinel"})).await;
        assert!(sentinel.get("subscribe").is_some(), "{sentinel}");
        for channel in PROTECTED {
            setup.backend_publishes(channel, 2).await;
        }
        nothing_before_sentinel(&setup, &mut attacker, who, 1).await;
    }
    // Nothing the attackers sent was stored, though the backend's publications were.
    for channel in PROTECTED {
        let history = setup.history(channel).await;
        assert!(!history.is_empty(), "{channel} keeps history");
        assert!(
            history.iter().all(|p| p["data"].get("injected").is_none()),
            "{channel}: {history:?}"
        );
    }
    setup.server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn centrifugo_clients_reach_no_protected_channel_memory() {
    centrifugo_clients_reach_no_protected_channel(false).await;
}

#[tokio::test]
async fn centrifugo_clients_reach_no_protected_channel_redis() {
    centrifugo_clients_reach_no_protected_channel(true).await;
}

/// A Pusher member `bob` is in `presence-room`. No anonymous Centrifugo client gets into the roster — not
/// by subscribing, not with a plugin's allow, not through the server API's subscribe —, so Pusher members
/// hear of nobody and the Pusher API lists bob alone; `mallory`, identified and allowed by the plugin,
/// joins as herself.
async fn presence_rosters_admit_identified_members_only(redis: bool) {
    let setup = Setup::start(redis, "allow_subscribe = [\"presence-room\"]\n").await;
    let addr = setup.server.addr;
    let mut bob = Pusher::connect(addr).await;
    let joined = bob
        .subscribe_presence(
            "presence-room",
            r#"{"user_id":"bob","user_info":{"name":"Bob"}}"#,
        )
        .await;
    assert_eq!(
        joined["event"], "pusher_internal:subscription_succeeded",
        "{joined}"
    );

    let (mut anonymous, id) = setup.centrifugo(None).await;
    let reply = anonymous
        .subscribe(json!({"channel": "presence-room"}))
        .await;
    assert_eq!(reply["error"]["code"], 103, "{reply}");
    // The server API vouches for the connection, but a roster holds users only. Its commands run in order,
    // so the sentinel's subscribe push comes first only if the presence subscribe was refused.
    for channel in ["presence-room", "sentinel"] {
        let (status, body) = setup
            .server
            .api(
                "subscribe",
                json!({"user": "", "client": id, "channel": channel}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let push = anonymous.next_push().await;
    assert_eq!(push["channel"], "sentinel", "{push}");
    assert!(push.get("subscribe").is_some(), "{push}");

    let users = |body: Value| body["users"].clone();
    let (status, body) = get(addr, "/apps/1/channels/presence-room/users", &[]).await;
    assert_eq!((status, users(body)), (200, json!([{"id": "bob"}])));
    let (_, body) = get(
        addr,
        "/apps/1/channels/presence-room",
        &[("info", "user_count")],
    )
    .await;
    assert_eq!(body["user_count"], 1, "{body}");
    triggered(
        addr,
        json!({"name": "after", "channel": "presence-room", "data": "{}"}),
    )
    .await;
    let next = bob.next().await;
    assert_eq!(next["event"], "after", "bob heard of a member: {next}");

    let (mut mallory, _) = setup.centrifugo(Some("good")).await;
    let reply = mallory.subscribe(json!({"channel": "presence-room"})).await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
    let added = bob.next().await;
    assert_eq!(
        (added["event"].as_str(), data(&added)["user_id"].as_str()),
        (Some("pusher_internal:member_added"), Some("mallory")),
        "{added}"
    );
    let (_, body) = get(addr, "/apps/1/channels/presence-room/users", &[]).await;
    assert_eq!(users(body), json!([{"id": "bob"}, {"id": "mallory"}]));
    setup.server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn presence_rosters_admit_identified_members_only_memory() {
    presence_rosters_admit_identified_members_only(false).await;
}

#[tokio::test]
async fn presence_rosters_admit_identified_members_only_redis() {
    presence_rosters_admit_identified_members_only(true).await;
}

/// The other protocol: a Pusher client without the app's signature is refused every protected kind (the
/// Centrifugo-only names are not even valid Pusher names), a signature made for another socket does not
/// vouch, client events go only where Pusher allows them, and nothing published reaches it.
async fn pusher_clients_reach_no_protected_channel(redis: bool) {
    let setup = Setup::start(redis, "").await;
    let addr = setup.server.addr;
    let mut attacker = Pusher::connect(addr).await;
    for channel in PROTECTED {
        let answer = attacker.subscribe(channel, None).await;
        assert_eq!(
            (answer["event"].as_str(), answer["channel"].as_str()),
            (Some("pusher:subscription_error"), Some(channel)),
            "{answer}"
        );
    }
    let other = Pusher::connect(addr).await;
    let answer = attacker
        .subscribe("private-a", Some(other.auth("private-a")))
        .await;
    assert_eq!(answer["event"], "pusher:subscription_error", "{answer}");

    for channel in ["private-a", "presence-a"] {
        attacker
            .send(json!({"event": "client-x", "channel": channel, "data": {"injected": true}}))
            .await;
        let error = attacker.next().await;
        assert_eq!(error["data"]["code"], 4301, "{channel}: {error}");
    }
    let auth = attacker.auth("private-encrypted-mine");
    attacker
        .subscribed("private-encrypted-mine", Some(auth))
        .await;
    attacker
        .send(json!({"event": "client-x", "channel": "private-encrypted-mine", "data": {}}))
        .await;
    let error = attacker.next().await;
    assert_eq!(error["data"]["code"], 4301, "{error}");
    assert!(
        error["data"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("encrypted")),
        "{error}"
    );

    attacker.subscribed("sentinel", None).await;
    for channel in PROTECTED {
        setup.backend_publishes(channel, 1).await;
    }
    triggered(
        addr,
        json!({"name": "sentinel", "channel": "sentinel", "data": "{}"}),
    )
    .await;
    let next = attacker.next().await;
    assert_eq!(next["event"], "sentinel", "{next}");
    for channel in PROTECTED {
        let history = setup.history(channel).await;
        assert!(
            history.iter().all(|p| p["data"].get("injected").is_none()),
            "{channel}: {history:?}"
        );
    }
    setup.server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn pusher_clients_reach_no_protected_channel_memory() {
    pusher_clients_reach_no_protected_channel(false).await;
}

#[tokio::test]
async fn pusher_clients_reach_no_protected_channel_redis() {
    pusher_clients_reach_no_protected_channel(true).await;
}

/// Public channels follow the namespace for both protocols: with subscriptions for identified clients
/// only, an anonymous Pusher connection is refused like an anonymous Centrifugo one, and a signed-in one
/// is let in.
#[tokio::test]
async fn public_channels_follow_the_namespace_for_both_protocols() {
    let server = TestServer::start(&format!(
        "{PUSHER_CONFIG}\n[channel.defaults]\nallow_subscribe_for_anonymous = false\n"
    ))
    .await;
    let mut pusher = Pusher::connect(server.addr).await;
    let answer = pusher.subscribe("news", None).await;
    assert_eq!(
        (answer["event"].as_str(), answer["data"]["status"].as_u64()),
        (Some("pusher:subscription_error"), Some(403)),
        "{answer}"
    );
    let signed_in = pusher.sign_in(r#"{"id":"alice"}"#).await;
    assert_eq!(signed_in["event"], "pusher:signin_success", "{signed_in}");
    pusher.subscribed("news", None).await;

    let (mut centrifugo, _) = Client::connect(&server).await;
    let reply = centrifugo.subscribe(json!({"channel": "news"})).await;
    assert_eq!(reply["error"]["code"], 103, "{reply}");
    server.shutdown().await.expect("shutdown");
}
