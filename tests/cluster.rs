//! Several Herald nodes on one real `redis-server`: publications, presence and join/leave cross nodes; a
//! node killed with `kill -9` or restarted under traffic costs its clients nothing — they reconnect to
//! another node and recover every missed publication, none lost and none duplicated.
//!
//! The first tests run the nodes in process; the failure tests run real `herald serve` processes (the
//! `kill -9` one on standalone Redis and on a Redis Cluster).

use std::collections::BTreeSet;
use std::time::Duration;

use herald::testing::{RedisCluster, RedisServer};
use herald_tests::cluster::{
    Follower, HeraldProcess, Publisher, api_until, node_config, stop_and_check_everyone,
};
use herald_tests::{Client, TestServer, WAIT, publication};
use serde_json::{Value, json};

/// How often the publishers publish: steady traffic without saturating a small machine.
const EVERY: Duration = Duration::from_millis(10);

fn redis_engine(redis: &RedisServer) -> String {
    format!(
        r#"
        [engine]
        type = "redis"
        [engine.redis]
        addresses = ["{}"]
        "#,
        redis.url()
    )
}

/// Three in-process nodes on one Redis.
async fn three_nodes(redis: &RedisServer) -> Vec<TestServer> {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(TestServer::start(&redis_engine(redis)).await);
    }
    nodes
}

/// Connects to `node` and subscribes to `channel` with `options`; returns the client and its client id.
async fn subscribed(node: &TestServer, channel: &str, options: Value) -> (Client, String) {
    let (mut client, connect) = Client::connect(node).await;
    let mut body = json!({"channel": channel});
    body.as_object_mut()
        .expect("object")
        .extend(options.as_object().expect("object").clone());
    let reply = client.subscribe(body).await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
    let id = connect["client"].as_str().expect("client id").to_owned();
    (client, id)
}

/// The client ids in a presence result.
fn presence_clients(result: &Value) -> BTreeSet<String> {
    result["presence"]
        .as_object()
        .unwrap_or_else(|| panic!("no presence: {result}"))
        .values()
        .map(|info| info["client"].as_str().expect("client").to_owned())
        .collect()
}

/// Waits for the `join` or `leave` push (`kind`) of `client_id` in `channel`, skipping other pushes.
async fn wait_for_presence_push(client: &mut Client, channel: &str, kind: &str, client_id: &str) {
    loop {
        let push = client.next_push().await;
        if push["channel"] == channel && push[kind]["info"]["client"] == client_id {
            return;
        }
    }
}

/// A client on node A receives what the server API on node B published (and one on C too), with the same
/// offset and epoch the API returned.
#[tokio::test]
async fn api_publish_on_one_node_reaches_clients_on_every_node() {
    let redis = RedisServer::start();
    let nodes = three_nodes(&redis).await;
    let channel = "cross-node";
    let mut clients = Vec::new();
    for node in &nodes {
        let (client, _) = subscribed(node, channel, json!({"recoverable": true})).await;
        clients.push(client);
    }
    for (n, publisher) in [1, 0, 2].into_iter().enumerate() {
        let result = nodes[publisher].publish(channel, json!({"n": n})).await;
        for client in &mut clients {
            let publication = publication(&client.next_push().await, channel);
            assert_eq!(publication["data"], json!({"n": n}));
            assert_eq!(publication["offset"], result["offset"]);
        }
    }
    // Every node reads the same stream.
    for node in &nodes {
        let (status, history) = node
            .api("history", json!({"channel": channel, "limit": -1}))
            .await;
        assert_eq!(status, 200, "{history}");
        assert_eq!(
            history["result"]["publications"].as_array().map(Vec::len),
            Some(3)
        );
    }
}

/// The node entry with this uid in an `info` result.
fn node_entry<'a>(info: &'a Value, uid: &str) -> Option<&'a Value> {
    info["result"]["nodes"]
        .as_array()?
        .iter()
        .find(|node| node["uid"] == uid)
}

/// `info` from an in-process node, until `done` accepts it.
async fn info_until(node: &TestServer, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    api_until(what, || node.api("info", json!({})), done).await
}

/// The server API's `info` on any node lists every node of the cluster with its own counts, and a node
/// that shuts down leaves the list.
#[tokio::test]
async fn info_lists_every_node_with_its_counts() {
    let redis = RedisServer::start();
    let mut nodes = three_nodes(&redis).await;
    let uids: Vec<String> = nodes.iter().map(|n| n.node.id.clone()).collect();
    let (_client, _) = subscribed(&nodes[1], "counted", json!({})).await;

    let info = info_until(&nodes[0], "node 1's client counted on node 0", |info| {
        uids.iter().all(|uid| node_entry(info, uid).is_some())
            && node_entry(info, &uids[1]).is_some_and(|n| n["num_clients"] == 1)
    })
    .await;
    assert_eq!(
        info["result"]["nodes"].as_array().map(Vec::len),
        Some(3),
        "{info:#}"
    );
    let second = node_entry(&info, &uids[1]).expect("listed");
    assert_eq!(second["num_subs"], 1, "{info:#}");
    assert_eq!(second["num_channels"], 1, "{info:#}");
    assert_eq!(second["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        node_entry(&info, &uids[0]).expect("listed")["num_clients"],
        0
    );

    nodes
        .pop()
        .expect("third node")
        .shutdown()
        .await
        .expect("clean shutdown");
    info_until(&nodes[0], "the stopped node leaves the list", |info| {
        node_entry(info, &uids[2]).is_none()
            && info["result"]["nodes"].as_array().map(Vec::len) == Some(2)
    })
    .await;
}

/// The `num_clients` of each channel in a node's `channels` answer.
fn channel_counts(body: &Value) -> BTreeSet<(String, u64)> {
    body["result"]["channels"]
        .as_object()
        .unwrap_or_else(|| panic!("no channels: {body}"))
        .iter()
        .map(|(name, info)| (name.clone(), info["num_clients"].as_u64().unwrap_or(0)))
        .collect()
}

/// The server API's `channels` counts the connections of every node, follows them as they come and go,
/// and drops a node's connections when it stops; a node with no subscriber of its own answers too.
#[tokio::test]
async fn channels_are_counted_across_nodes() {
    let redis = RedisServer::start();
    let mut nodes = three_nodes(&redis).await;
    let (_a1, _) = subscribed(&nodes[0], "counted", json!({})).await;
    let (a2, _) = subscribed(&nodes[0], "counted", json!({})).await;
    let (_b1, _) = subscribed(&nodes[1], "counted", json!({})).await;
    let (_b2, _) = subscribed(&nodes[1], "other", json!({})).await;
    let expect = |counts: &[(&str, u64)]| -> BTreeSet<(String, u64)> {
        counts.iter().map(|(c, n)| ((*c).to_owned(), *n)).collect()
    };

    let all = expect(&[("counted", 3), ("other", 1)]);
    for node in &nodes {
        api_until(
            "every node's subscribers counted",
            || node.api("channels", json!({})),
            |body| channel_counts(body) == all,
        )
        .await;
    }
    let (_, filtered) = nodes[2].api("channels", json!({"pattern": "oth*"})).await;
    assert_eq!(channel_counts(&filtered), expect(&[("other", 1)]));

    drop(a2);
    api_until(
        "a subscriber leaving on another node is counted out",
        || nodes[2].api("channels", json!({})),
        |body| channel_counts(body) == expect(&[("counted", 2), ("other", 1)]),
    )
    .await;
    nodes.remove(1).shutdown().await.expect("clean shutdown");
    api_until(
        "a stopped node's subscribers are counted out",
        || nodes[1].api("channels", json!({})),
        |body| channel_counts(body) == expect(&[("counted", 1)]),
    )
    .await;
}

/// Presence and presence stats list the subscribers of every node from every node (server API and client
/// commands); join and leave pushes reach subscribers on other nodes, and a leave is gone from presence
/// everywhere.
#[tokio::test]
async fn presence_and_join_leave_cross_nodes() {
    let redis = RedisServer::start();
    let nodes = three_nodes(&redis).await;
    let channel = "cross-presence";
    let (mut watcher, watcher_id) =
        subscribed(&nodes[0], channel, json!({"join_leave": true})).await;
    let (mut second, second_id) = subscribed(&nodes[1], channel, json!({})).await;
    let (mut third, third_id) = subscribed(&nodes[2], channel, json!({})).await;
    wait_for_presence_push(&mut watcher, channel, "join", &second_id).await;
    wait_for_presence_push(&mut watcher, channel, "join", &third_id).await;

    let everyone: BTreeSet<String> = [&watcher_id, &second_id, &third_id]
        .into_iter()
        .cloned()
        .collect();
    for node in &nodes {
        let (status, body) = node.api("presence", json!({"channel": channel})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(presence_clients(&body["result"]), everyone);
        let (_, stats) = node
            .api("presence_stats", json!({"channel": channel}))
            .await;
        assert_eq!(stats["result"]["num_clients"], 3, "{stats}");
    }
    for client in [&mut watcher, &mut second, &mut third] {
        let reply = client
            .command("presence_stats", json!({"channel": channel}))
            .await;
        assert_eq!(reply["presence_stats"]["num_clients"], 3, "{reply}");
        let reply = client
            .command("presence", json!({"channel": channel}))
            .await;
        assert_eq!(presence_clients(&reply["presence"]), everyone);
    }

    // The third client leaves (its connection closes): node A's watcher hears it, presence forgets it.
    drop(third);
    wait_for_presence_push(&mut watcher, channel, "leave", &third_id).await;
    let remaining: BTreeSet<String> = [watcher_id, second_id].into_iter().collect();
    for node in &nodes {
        let (_, body) = node.api("presence", json!({"channel": channel})).await;
        assert_eq!(presence_clients(&body["result"]), remaining);
    }
    let reply = second
        .command("presence_stats", json!({"channel": channel}))
        .await;
    assert_eq!(reply["presence_stats"]["num_clients"], 2, "{reply}");
}

/// `urls` rotated to start at `first`: a follower starts on that node and moves to the next ones.
fn rotated(urls: &[String], first: usize) -> Vec<String> {
    let mut urls = urls.to_vec();
    urls.rotate_left(first);
    urls
}

/// Waits until every follower saw at least `more` publications beyond what it had.
async fn wait_for_more(followers: &mut [Follower], more: usize) {
    for follower in followers {
        let target = follower.log().publications.len() + more;
        follower
            .wait_for(&format!("{target} publications"), |log| {
                log.publications.len() >= target
            })
            .await;
    }
}

/// `kill -9` of a node while its clients are subscribed and publications keep flowing through the other
/// two: its clients reconnect to a survivor and recover (`recovered: true`) every publication they missed;
/// every client sees every publication exactly once, in offset order, in one epoch; the dead node's
/// presence entries expire, and it drops out of the node list (`info`), the survivors logging `node left`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_clients_recover_on_surviving_nodes() {
    let redis = RedisServer::start();
    kill_9_scenario(&node_config(&redis.url(), "")).await;
}

/// The same on a three-master Redis Cluster: sharded pub/sub, hash-tagged keys, scripts routed by slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_clients_recover_on_a_redis_cluster() {
    let redis = RedisCluster::start();
    let urls = redis.urls();
    let engine = format!("[engine.redis]\naddresses = {urls:?}\ncluster = true\n");
    kill_9_scenario(&node_config(&urls[0], &engine)).await;
}

/// Three nodes with `config`; the first is killed under traffic (see the tests above).
async fn kill_9_scenario(config: &str) {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(HeraldProcess::start(config).await);
    }
    let urls: Vec<String> = nodes.iter().map(HeraldProcess::ws_url).collect();
    let channel = "kill-9";
    // Four followers start on the node that dies, one on each survivor.
    let mut followers: Vec<Follower> = [0, 0, 0, 0, 1, 2]
        .into_iter()
        .enumerate()
        .map(|(i, node)| Follower::start(&format!("#{i}"), rotated(&urls, node), channel))
        .collect();
    for follower in &mut followers {
        follower
            .wait_for("the first subscribe", |log| log.first_position.is_some())
            .await;
    }
    assert_eq!(nodes[0].local_clients().await, 4);

    let publisher = Publisher::start(channel, vec![nodes[1].api_url(), nodes[2].api_url()], EVERY);
    wait_for_more(&mut followers, 10).await;

    nodes[0].kill().await;
    for follower in &mut followers[..4] {
        follower
            .wait_for("a recovered resubscribe", |log| {
                !log.resubscribes.is_empty()
            })
            .await;
    }
    // Traffic goes on and reaches everyone after the recovery.
    wait_for_more(&mut followers, 10).await;

    stop_and_check_everyone(publisher, &mut followers).await;
    for follower in &followers[..4] {
        let log = follower.log();
        assert_eq!(log.clients.len(), 2, "one move: {}", log.summary());
        assert!(
            log.disconnects[0].starts_with("connection lost"),
            "{}",
            log.summary()
        );
    }
    for follower in &followers[4..] {
        assert!(follower.log().resubscribes.is_empty());
    }

    // The killed node never removed its presence entries; they expire (presence_ttl = 3s here, before a
    // survivor settles them: tests/dead_node.rs covers that) and presence lists exactly the connections
    // that are alive.
    let alive: BTreeSet<String> = followers
        .iter()
        .map(|f| f.log().clients.last().expect("connected").clone())
        .collect();
    api_until(
        "presence still lists connections of the killed node",
        || nodes[1].api("presence", json!({"channel": channel})),
        |body| presence_clients(&body["result"]) == alive,
    )
    .await;

    // The killed node stops announcing itself and drops out of the node list once its entry is stale; the
    // survivors log that it left.
    let survivors: BTreeSet<String> = nodes[1..].iter().map(|n| n.addr.to_string()).collect();
    api_until(
        "the killed node is still in the node list",
        || nodes[1].api("info", json!({})),
        |info| {
            let listed: BTreeSet<String> = info["result"]["nodes"]
                .as_array()
                .map(|nodes| {
                    nodes
                        .iter()
                        .filter_map(|n| n["name"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            listed == survivors
        },
    )
    .await;
    let killed = nodes[0].addr.to_string();
    nodes[1]
        .wait_for_log(&format!("node left node={killed}"))
        .await;
}

/// A rolling restart of all three nodes under traffic (each gets `SIGTERM`, exits cleanly and starts again
/// before the next): every client is told `3001 shutdown` at least once, reconnects to another node and
/// recovers; every client sees every publication exactly once, in order. The publisher publishes through
/// every node that is up, retrying with idempotency keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_traffic_loses_nothing() {
    let redis = RedisServer::start();
    let config = node_config(&redis.url(), "");
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(HeraldProcess::start(&config).await);
    }
    let urls: Vec<String> = nodes.iter().map(HeraldProcess::ws_url).collect();
    let api_urls: Vec<String> = nodes.iter().map(HeraldProcess::api_url).collect();
    let channel = "rolling";
    let mut followers: Vec<Follower> = (0..6)
        .map(|i| Follower::start(&format!("#{i}"), rotated(&urls, i % 3), channel))
        .collect();
    for follower in &mut followers {
        follower
            .wait_for("the first subscribe", |log| log.first_position.is_some())
            .await;
    }
    let mut publisher = Publisher::start(channel, api_urls.clone(), EVERY);
    wait_for_more(&mut followers, 10).await;

    for restarting in 0..nodes.len() {
        let others: Vec<String> = (0..nodes.len())
            .filter(|&i| i != restarting)
            .map(|i| api_urls[i].clone())
            .collect();
        publisher.set_targets(others);
        let status = nodes[restarting].terminate().await;
        assert!(
            status.success(),
            "node {restarting} exited with {status}:\n{}",
            nodes[restarting].log()
        );
        nodes[restarting].restart().await;
        publisher.set_targets(api_urls.clone());
        // Publications made through the restarted node too reach everyone.
        let count = publisher.count();
        publisher.wait_for_count(count + 10).await;
        wait_for_more(&mut followers, 10).await;
    }

    stop_and_check_everyone(publisher, &mut followers).await;
    for follower in &followers {
        let log = follower.log();
        assert!(
            log.disconnects
                .iter()
                .any(|reason| reason.starts_with("close 3001")),
            "follower {} was never told 3001 shutdown: {}",
            follower.name,
            log.summary()
        );
        assert!(!log.resubscribes.is_empty(), "{}", log.summary());
    }
    // The restarted nodes serve clients again: a fresh client on each receives a live publication.
    let probe = "rolling-probe";
    let mut probes = Vec::new();
    for url in &urls {
        let mut client = Client::open_url(url).await;
        let reply = client.command("connect", json!({})).await;
        assert!(reply.get("connect").is_some(), "{reply}");
        let reply = client.subscribe(json!({"channel": probe})).await;
        assert!(reply.get("subscribe").is_some(), "{reply}");
        probes.push(client);
    }
    let (status, body) = nodes[0]
        .api(
            "publish",
            json!({"channel": probe, "data": {"probe": true}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for client in &mut probes {
        let push = tokio::time::timeout(WAIT, client.next_push())
            .await
            .expect("probe publication");
        assert_eq!(publication(&push, probe)["data"], json!({"probe": true}));
    }
}
