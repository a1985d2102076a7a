//! The Pusher protocol across a cluster: `herald serve` processes on one real `redis-server`, each serving
//! the Pusher app of `PUSHER_CONFIG`, driven by raw Pusher clients and signed HTTP API requests. A trigger
//! sent to one node's Pusher API reaches Pusher clients on every node, its `socket_id` excluding that one
//! connection only; a client event reaches the channel's subscribers on other nodes and never its sender;
//! presence members, their roster, `member_added`, `member_removed` and the users endpoint are
//! cluster-wide.
//!
//! Every wait is for an event (a client's next event, a node logging that it listens); nothing sleeps.
//! What a client did not receive is proven by the event it receives next.

use std::collections::BTreeSet;

use herald::testing::RedisServer;
use herald_tests::cluster::{HeraldProcess, api_until, node_config};
use herald_tests::pusher::{Pusher, data, get, triggered};
use herald_tests::{PUSHER_APP_ID as APP_ID, PUSHER_CONFIG};
use serde_json::{Value, json};

/// The `channel_data` of the two presence members, signed and sent as these exact strings.
const ADA: &str = r#"{"user_id":"1","user_info":{"name":"Ada"}}"#;
/// See [`ADA`].
const GRACE: &str = r#"{"user_id":"2","user_info":{"name":"Grace"}}"#;

/// `count` Herald processes on `redis`, each serving the Pusher app.
async fn pusher_nodes(redis: &RedisServer, count: usize) -> Vec<HeraldProcess> {
    let config = node_config(&redis.url(), PUSHER_CONFIG);
    let mut nodes = Vec::new();
    for _ in 0..count {
        nodes.push(HeraldProcess::start(&config).await);
    }
    nodes
}

/// Triggers `name` with `payload` (sent as a JSON string, as the server libraries do) on `channel`
/// through `node`'s Pusher HTTP API, excluding `socket_id` when given; asserts it is accepted.
async fn trigger_on(
    node: &HeraldProcess,
    channel: &str,
    name: &str,
    payload: Value,
    socket_id: Option<&str>,
) {
    let mut body = json!({"name": name, "channel": channel, "data": payload.to_string()});
    if let Some(socket_id) = socket_id {
        body["socket_id"] = socket_id.into();
    }
    triggered(node.addr, body).await;
}

/// Asserts that `client`'s next event is `name` on `channel` with `payload` as its data; `who` names the
/// client in failures.
async fn assert_next(client: &mut Pusher, who: &str, name: &str, channel: &str, payload: &Value) {
    let event = client.next().await;
    assert_eq!(
        (event["event"].as_str(), event["channel"].as_str()),
        (Some(name), Some(channel)),
        "{who}: {event}"
    );
    assert_eq!(&data(&event), payload, "{who}: {event}");
}

/// The user ids `GET /apps/1/channels/{channel}/users` lists on `node`.
async fn users(node: &HeraldProcess, channel: &str) -> BTreeSet<String> {
    let (status, body) = get(
        node.addr,
        &format!("/apps/{APP_ID}/channels/{channel}/users"),
        &[],
    )
    .await;
    assert_eq!(status, 200, "users of {channel} on {}: {body}", node.addr);
    body["users"]
        .as_array()
        .unwrap_or_else(|| panic!("no users list on {}: {body}", node.addr))
        .iter()
        .map(|user| {
            user["id"]
                .as_str()
                .unwrap_or_else(|| panic!("a user without a string id: {body}"))
                .to_owned()
        })
        .collect()
}

/// Subscribes `client` to `channel` as the presence member `channel_data`; returns the `presence` object
/// of its `pusher_internal:subscription_succeeded`.
async fn joined(client: &mut Pusher, channel: &str, channel_data: &str) -> Value {
    let answer = client.subscribe_presence(channel, channel_data).await;
    assert_eq!(
        (answer["event"].as_str(), answer["channel"].as_str()),
        (
            Some("pusher_internal:subscription_succeeded"),
            Some(channel)
        ),
        "presence subscribe as {channel_data}: {answer}"
    );
    data(&answer)["presence"].clone()
}

fn ids<'a>(ids: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    ids.into_iter().map(str::to_owned).collect()
}

/// A trigger signed and sent to node A's Pusher API reaches subscribers on node B and on node A; with the
/// `socket_id` of one client on node B it reaches everyone but that client, the other client on node B
/// included, and that client's next event is the trigger after it.
#[tokio::test]
async fn triggers_reach_every_node_and_socket_id_excludes_that_connection_only() {
    let redis = RedisServer::start();
    let nodes = pusher_nodes(&redis, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut on_a = Pusher::connect(a.addr).await;
    let mut excluded = Pusher::connect(b.addr).await;
    let mut also_on_b = Pusher::connect(b.addr).await;
    for client in [&mut on_a, &mut excluded, &mut also_on_b] {
        client.subscribed("news", None).await;
    }

    trigger_on(a, "news", "order-shipped", json!({"n": 1}), None).await;
    for (client, who) in [
        (&mut on_a, "the client on A"),
        (&mut excluded, "the first client on B"),
        (&mut also_on_b, "the second client on B"),
    ] {
        assert_next(client, who, "order-shipped", "news", &json!({"n": 1})).await;
    }

    let socket_id = excluded.socket_id.clone();
    trigger_on(
        a,
        "news",
        "order-shipped",
        json!({"n": 2}),
        Some(&socket_id),
    )
    .await;
    assert_next(
        &mut on_a,
        "the client on A",
        "order-shipped",
        "news",
        &json!({"n": 2}),
    )
    .await;
    assert_next(
        &mut also_on_b,
        "the client on B that was not excluded",
        "order-shipped",
        "news",
        &json!({"n": 2}),
    )
    .await;

    trigger_on(a, "news", "order-delivered", json!({"n": 3}), None).await;
    // The excluded client's next event is this one: the trigger before it never came.
    for (client, who) in [
        (&mut excluded, "the excluded client on B"),
        (&mut on_a, "the client on A"),
        (&mut also_on_b, "the second client on B"),
    ] {
        assert_next(client, who, "order-delivered", "news", &json!({"n": 3})).await;
    }
}

/// A `client-*` event sent by a client on node A to a private channel reaches the subscriber on node B
/// (and the other one on node A), never the sender, whose next event is a trigger made after it.
#[tokio::test]
async fn client_events_reach_subscribers_on_other_nodes_but_not_the_sender() {
    let redis = RedisServer::start();
    let nodes = pusher_nodes(&redis, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let channel = "private-chat";
    let mut sender = Pusher::connect(a.addr).await;
    let mut beside = Pusher::connect(a.addr).await;
    let mut on_b = Pusher::connect(b.addr).await;
    for client in [&mut sender, &mut beside, &mut on_b] {
        let auth = client.auth(channel);
        client.subscribed(channel, Some(auth)).await;
    }

    sender
        .send(json!({"event": "client-typing", "channel": channel, "data": {"who": "a"}}))
        .await;
    assert_next(
        &mut on_b,
        "the subscriber on B",
        "client-typing",
        channel,
        &json!({"who": "a"}),
    )
    .await;
    assert_next(
        &mut beside,
        "the other subscriber on A",
        "client-typing",
        channel,
        &json!({"who": "a"}),
    )
    .await;

    // Through node B's API this time; the sender's next event is it: its own never came back.
    trigger_on(b, channel, "done", json!({}), None).await;
    for (client, who) in [
        (&mut sender, "the sender"),
        (&mut beside, "the other subscriber on A"),
        (&mut on_b, "the subscriber on B"),
    ] {
        assert_next(client, who, "done", channel, &json!({})).await;
    }
}

/// Presence across nodes: user "1" joins `presence-room` on node A, user "2" on node B. The second's
/// roster lists both (count 2), the first hears `member_added` for "2" from the other node, the users
/// endpoint lists both on either node, and when the client on node B disconnects the first hears
/// `member_removed` and the users endpoint forgets "2" everywhere.
#[tokio::test]
async fn presence_members_join_and_leave_across_nodes() {
    let redis = RedisServer::start();
    let nodes = pusher_nodes(&redis, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let channel = "presence-room";

    let mut ada = Pusher::connect(a.addr).await;
    let roster = joined(&mut ada, channel, ADA).await;
    assert_eq!(
        roster,
        json!({"ids": ["1"], "hash": {"1": {"name": "Ada"}}, "count": 1}),
        "the first member's roster"
    );

    let mut grace = Pusher::connect(b.addr).await;
    let roster = joined(&mut grace, channel, GRACE).await;
    assert_eq!(roster["count"], 2, "the second member's roster: {roster}");
    let listed: BTreeSet<String> = roster["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no ids: {roster}"))
        .iter()
        .map(|id| id.as_str().expect("string ids").to_owned())
        .collect();
    assert_eq!(listed, ids(["1", "2"]), "{roster}");
    assert_eq!(
        roster["hash"],
        json!({"1": {"name": "Ada"}, "2": {"name": "Grace"}}),
        "{roster}"
    );

    let added = ada.next().await;
    assert_eq!(
        (added["event"].as_str(), added["channel"].as_str()),
        (Some("pusher_internal:member_added"), Some(channel)),
        "{added}"
    );
    assert_eq!(
        data(&added),
        json!({"user_id": "2", "user_info": {"name": "Grace"}}),
        "{added}"
    );

    for node in [a, b] {
        assert_eq!(
            users(node, channel).await,
            ids(["1", "2"]),
            "on {}",
            node.addr
        );
    }

    drop(grace);
    let removed = ada.next().await;
    assert_eq!(
        (removed["event"].as_str(), removed["channel"].as_str()),
        (Some("pusher_internal:member_removed"), Some(channel)),
        "{removed}"
    );
    assert_eq!(data(&removed), json!({"user_id": "2"}), "{removed}");
    for node in [a, b] {
        assert_eq!(users(node, channel).await, ids(["1"]), "on {}", node.addr);
    }
}

/// `GET path` with `params` on `node` until `done` accepts the body (other nodes' counts arrive within
/// about a second); returns it.
async fn get_until(
    node: &HeraldProcess,
    path: &str,
    params: &[(&str, &str)],
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    api_until(what, || get(node.addr, path, params), done).await
}

/// The count of `client`'s next `pusher_internal:subscription_count` event for `channel`.
async fn told_count(client: &mut Pusher, channel: &str) -> u64 {
    let event = client.next().await;
    assert_eq!(
        (event["event"].as_str(), event["channel"].as_str()),
        (Some("pusher_internal:subscription_count"), Some(channel)),
        "{event}"
    );
    data(&event)["subscription_count"]
        .as_u64()
        .unwrap_or_else(|| panic!("no count: {event}"))
}

/// `occupied`, `subscription_count` and the channel list count the subscribers of every node, asked of a
/// node that has none of its own, and follow them leaving; with subscription counting on, subscribers on
/// different nodes hear the cluster's count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn occupancy_and_subscription_counts_are_cluster_wide() {
    let redis = RedisServer::start();
    let config = node_config(
        &redis.url(),
        &format!("{PUSHER_CONFIG}\nsubscription_count = true"),
    );
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(HeraldProcess::start(&config).await);
    }
    let (a, b, asked) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut first = Pusher::connect(a.addr).await;
    first.subscribed("news", None).await;
    assert_eq!(told_count(&mut first, "news").await, 1);
    let mut second = Pusher::connect(b.addr).await;
    second.subscribed("news", None).await;
    let mut third = Pusher::connect(b.addr).await;
    third.subscribed("sports", None).await;
    // The second may hear 1 first, before node A's count reaches node B.
    assert_eq!(told_count(&mut first, "news").await, 2);
    let mut heard = told_count(&mut second, "news").await;
    if heard == 1 {
        heard = told_count(&mut second, "news").await;
    }
    assert_eq!(heard, 2);

    let news = format!("/apps/{APP_ID}/channels/news");
    let info = [("info", "subscription_count")];
    let body = get_until(asked, &news, &info, "news counted on every node", |body| {
        body["subscription_count"] == 2
    })
    .await;
    assert_eq!(body["occupied"], true, "{body}");
    let channels = format!("/apps/{APP_ID}/channels");
    get_until(
        asked,
        &channels,
        &[],
        "every node's channels listed",
        |body| body["channels"] == json!({"news": {}, "sports": {}}),
    )
    .await;
    let (_, prefixed) = get(asked.addr, &channels, &[("filter_by_prefix", "sp")]).await;
    assert_eq!(prefixed["channels"], json!({"sports": {}}), "{prefixed}");

    drop(first);
    get_until(
        asked,
        &news,
        &info,
        "a subscriber leaving on another node",
        |body| body["subscription_count"] == 1,
    )
    .await;
    assert_eq!(told_count(&mut second, "news").await, 1);
    drop(second);
    let body = get_until(asked, &news, &[], "the last subscriber gone", |body| {
        body["occupied"] == false
    })
    .await;
    assert!(body.get("subscription_count").is_none(), "{body}");
    drop(third);
}

/// `terminate_connections` and Herald's own `disconnect` sent to one node close connections held by
/// another: commands travel through Redis like publications.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_terminated_and_disconnected_through_any_node() {
    let redis = RedisServer::start();
    let nodes = pusher_nodes(&redis, 2).await;
    let user_data = r#"{"id":"77"}"#;
    let mut grace = Pusher::connect(nodes[1].addr).await;
    let auth = format!(
        "{}:{}",
        herald_tests::PUSHER_KEY,
        herald::protocol::pusher::sign::user_signature(
            herald_tests::PUSHER_SECRET,
            &grace.socket_id,
            user_data
        )
    );
    grace
        .send(json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}}))
        .await;
    assert_eq!(grace.next().await["event"], "pusher:signin_success");
    let mut bystander = Pusher::connect(nodes[1].addr).await;

    let (status, body) = herald_tests::pusher::signed(
        nodes[0].addr,
        "POST",
        &format!("/apps/{APP_ID}/users/77/terminate_connections"),
        &[],
        Some(json!({})),
        herald_tests::PUSHER_SECRET,
        herald_tests::pusher::now(),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "{}"));
    assert_eq!(grace.client.expect_close().await.0, 4009);

    // Herald's own API, one connection by its id: the Pusher socket id is its client id.
    let (status, body) = nodes[0]
        .api(
            "disconnect",
            json!({"user": "", "client": bystander.socket_id, "disconnect": {"code": 3011, "reason": "moved"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        bystander.client.expect_close().await.0,
        4200,
        "3011 asks to reconnect now"
    );
}
