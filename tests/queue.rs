//! Queue ingestion end to end: entries appended to a Redis Stream (by the test, as an application would)
//! reach a client subscribed through the Centrifugo protocol, once each and in order; entries that can
//! never be published land in the dead-letter stream with the reason; and a consumer killed mid-stream
//! loses and duplicates nothing. Every test runs its own `redis-server`.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use herald::config::Config;
use herald::engine::HistoryFilter;
use herald::policy::Grant;
use herald::testing::{RedisCluster, RedisServer};
use herald_tests::cluster::{HeraldProcess, node_config};
use herald_tests::{Client, TestServer, WAIT, built_plugin, publication};
use redis::AsyncCommands;
use serde_json::{Value, json};

/// The stream the tests' nodes consume (the default key).
const STREAM: &str = "herald:queue";

/// The dead-letter stream (the default key).
const DEAD: &str = "herald:queue:dead";

/// The consumer group (the default name).
const GROUP: &str = "herald";

/// Interval of the few polls of Redis state that nothing announces (acknowledgements, pending counts).
const POLL: Duration = Duration::from_millis(20);

/// `[queue]` on, reading with short blocks so claim sweeps come round quickly, plus `extra`.
fn queue_config(extra: &str) -> String {
    format!("[queue]\nenabled = true\nblock = \"100ms\"\nmax_backoff = \"200ms\"\n{extra}\n")
}

/// The Redis engine on `redis`, the queue sharing its addresses.
fn redis_engine(redis: &RedisServer) -> String {
    format!(
        "[engine]\ntype = \"redis\"\n[engine.redis]\naddresses = [{:?}]\n",
        redis.url()
    )
}

/// A node consuming the queue on `redis` (with the `[queue]` keys in `extra`) through one plugin, the test
/// fixture `crate_name` with `plugin_config`; the plugin directory lives as long as the returned guard.
async fn with_plugin(
    redis: &RedisServer,
    extra: &str,
    crate_name: &str,
    plugin_config: &str,
) -> (tempfile::TempDir, TestServer) {
    let plugins = tempfile::tempdir().expect("plugin dir");
    std::fs::write(plugins.path().join("p.wasm"), built_plugin(crate_name)).expect("write plugin");
    std::fs::write(plugins.path().join("p.toml"), plugin_config).expect("write plugin config");
    let server = TestServer::start(&format!(
        "{}[plugins]\ndir = {:?}\n",
        queue_config(&format!("addresses = [{:?}]\n{extra}", redis.url())),
        plugins.path().to_str().expect("UTF-8 path"),
    ))
    .await;
    (plugins, server)
}

async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the test redis")
}

/// Appends an entry to [`STREAM`] as an application would (`XADD herald:queue * field value …`).
async fn add(redis: &mut impl AsyncCommands, fields: &[(&str, &str)]) -> String {
    add_to(redis, STREAM, fields).await
}

/// Appends an entry to `stream`.
async fn add_to(redis: &mut impl AsyncCommands, stream: &str, fields: &[(&str, &str)]) -> String {
    redis
        .xadd(stream, "*", fields)
        .await
        .expect("XADD to the queue")
}

/// Entries delivered to a consumer of the group and not acknowledged yet.
async fn pending(redis: &mut impl AsyncCommands, stream: &str) -> u64 {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(GROUP)
        .query_async(redis)
        .await
        .expect("XPENDING");
    match summary {
        redis::Value::Array(parts) => redis::from_redis_value(parts[0].clone()).expect("count"),
        other => panic!("XPENDING answered {other:?}"),
    }
}

/// Waits, polling at [`POLL`] within [`WAIT`], until nothing is pending and the stream is empty: every
/// entry was acknowledged, then deleted (`delete_acknowledged` is on by default).
async fn all_acknowledged(redis: &mut impl AsyncCommands) {
    all_acknowledged_in(redis, STREAM).await;
}

/// [`all_acknowledged`] for another stream.
async fn all_acknowledged_in(redis: &mut impl AsyncCommands, stream: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = pending(redis, stream).await;
        let kept: u64 = redis.xlen(stream).await.expect("XLEN");
        if left == 0 && kept == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} entries still pending, {kept} still in the stream"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The dead-letter stream's entries: (id, fields).
async fn dead_letters(redis: &mut impl AsyncCommands) -> Vec<HashMap<String, String>> {
    let reply: redis::streams::StreamRangeReply =
        redis.xrange_all(DEAD).await.expect("XRANGE dead letters");
    reply
        .ids
        .into_iter()
        .map(|entry| {
            entry
                .map
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        redis::from_redis_value_ref::<String>(v).expect("text field"),
                    )
                })
                .collect()
        })
        .collect()
}

/// A client connected to `server` and subscribed to `channel`.
async fn subscriber(server: &TestServer, channel: &str) -> Client {
    let (mut client, _) = Client::connect(server).await;
    let reply = client.subscribe(json!({ "channel": channel })).await;
    assert!(
        reply.get("subscribe").is_some(),
        "subscribe failed: {reply}"
    );
    client
}

/// The next publication the client receives on `channel`.
async fn next_pub(client: &mut Client, channel: &str) -> Value {
    let push = client.next_push().await;
    publication(&push, channel)
}

/// The `n` of every publication in the channel's history, in offset order, after checking the offsets run
/// 1, 2, 3… with no gap.
async fn history_numbers(server: &TestServer, channel: &str) -> Vec<u64> {
    let history = server
        .node
        .history(channel, &HistoryFilter::default(), Grant::server())
        .await
        .expect("history");
    let offsets: Vec<u64> = history.publications.iter().map(|p| p.offset).collect();
    let expected: Vec<u64> = (1..=offsets.len() as u64).collect();
    assert_eq!(offsets, expected, "history offsets");
    history
        .publications
        .iter()
        .map(|p| {
            let data: Value = serde_json::from_slice(&p.data).expect("JSON data");
            data["n"].as_u64().expect("n")
        })
        .collect()
}

/// Entries appended one after another reach a subscriber once each, in order, with their data and tags
/// and contiguous offsets; every entry is then acknowledged and nothing is dead-lettered. The engine is
/// the memory one here: the queue has its own `addresses`.
#[tokio::test]
async fn entries_are_published_once_each_in_order_and_acknowledged() {
    let redis = RedisServer::start();
    let server =
        TestServer::start(&queue_config(&format!("addresses = [{:?}]", redis.url()))).await;
    let mut client = subscriber(&server, "news").await;
    let mut conn = connect(&redis.url()).await;
    for n in 1..=30 {
        let data = json!({ "n": n }).to_string();
        let tags = json!({ "n": n.to_string() }).to_string();
        add(
            &mut conn,
            &[("channel", "news"), ("data", &data), ("tags", &tags)],
        )
        .await;
    }
    for n in 1..=30u64 {
        let publication = next_pub(&mut client, "news").await;
        assert_eq!(publication["data"], json!({ "n": n }), "{publication}");
        assert_eq!(publication["tags"], json!({ "n": n.to_string() }));
        assert_eq!(publication["offset"], n);
    }
    all_acknowledged(&mut conn).await;
    assert!(dead_letters(&mut conn).await.is_empty());
}

/// The queue on a Redis Cluster (`cluster = true`) with two streams on different shards (`herald:queue`
/// hashes to slot 10346, `herald:alerts` to 2602): each stream's entries reach the subscriber in order, and
/// a bad one reaches the dead-letter stream.
#[tokio::test]
async fn entries_of_several_streams_flow_through_a_redis_cluster() {
    const ALERTS: &str = "herald:alerts";
    let cluster = RedisCluster::start();
    let server = TestServer::start(&queue_config(&format!(
        "addresses = {:?}\ncluster = true\nstreams = [{STREAM:?}, {ALERTS:?}]",
        cluster.urls()
    )))
    .await;
    let mut client = subscriber(&server, "news").await;
    let reply = client.subscribe(json!({ "channel": "alerts" })).await;
    assert!(
        reply.get("subscribe").is_some(),
        "subscribe failed: {reply}"
    );
    let mut conn = redis::cluster::ClusterClient::new(cluster.urls())
        .expect("cluster client")
        .get_async_connection()
        .await
        .expect("connect to the test cluster");
    for n in 1..=10 {
        let data = json!({ "n": n }).to_string();
        add(&mut conn, &[("channel", "news"), ("data", &data)]).await;
        add_to(&mut conn, ALERTS, &[("channel", "alerts"), ("data", &data)]).await;
    }
    add(&mut conn, &[("channel", "news"), ("data", "{")]).await;
    // The two streams are consumed side by side: only each channel's own order is given.
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    for _ in 0..20 {
        let push = client.next_push().await;
        let channel = push["channel"].as_str().expect("channel").to_string();
        let n = publication(&push, &channel)["data"]["n"]
            .as_u64()
            .expect("n");
        seen.entry(channel).or_default().push(n);
    }
    let expected: Vec<u64> = (1..=10).collect();
    assert_eq!(seen["news"], expected);
    assert_eq!(seen["alerts"], expected);
    all_acknowledged(&mut conn).await;
    all_acknowledged_in(&mut conn, ALERTS).await;
    let dead = dead_letters(&mut conn).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0]["reason"].starts_with("data is not JSON"),
        "{dead:?}"
    );
}

/// Entries that can never be published — data that is not JSON, a missing field, tags that are not an
/// object of strings, an unknown namespace, an invalid channel name, a publish a plugin denies — are moved
/// to the dead-letter stream with the reason, their origin and their original fields, and acknowledged;
/// they do not hold up the entries behind them.
#[tokio::test]
async fn unpublishable_entries_are_dead_lettered_with_the_reason_and_acknowledged() {
    let redis = RedisServer::start();
    let (_plugins, server) = with_plugin(
        &redis,
        "",
        "herald-test-scripted",
        "id = \"gate\"\ndeny_publish_containing = \"forbidden\"\ndeny_publish_code = 460\n",
    )
    .await;
    let mut client = subscriber(&server, "news").await;
    let mut conn = connect(&redis.url()).await;

    add(&mut conn, &[("channel", "news"), ("data", r#"{"n":1}"#)]).await;
    let bad: [(&[(&str, &str)], &str); 7] = [
        (
            &[("channel", "news"), ("data", "{not json")],
            "data is not JSON",
        ),
        (&[("data", r#"{"n":0}"#)], "missing field channel"),
        (&[("channel", "news")], "missing field data"),
        (
            &[("channel", "news"), ("data", "1"), ("tags", "[1,2]")],
            "tags is not a JSON object of strings",
        ),
        (
            &[("channel", "nowhere:x"), ("data", "1")],
            "refused: 102 unknown channel",
        ),
        (
            &[("channel", "café"), ("data", "1")],
            "refused: 107 invalid channel name",
        ),
        (
            &[("channel", "news"), ("data", r#"{"text":"forbidden"}"#)],
            "refused: 460 denied by gate",
        ),
    ];
    let mut bad_ids = Vec::new();
    for (fields, _) in &bad {
        bad_ids.push(add(&mut conn, fields).await);
    }
    add(&mut conn, &[("channel", "news"), ("data", r#"{"n":2}"#)]).await;

    // The good entries on either side arrive back to back: nothing bad was published.
    assert_eq!(next_pub(&mut client, "news").await["data"], json!({"n": 1}));
    assert_eq!(next_pub(&mut client, "news").await["data"], json!({"n": 2}));
    all_acknowledged(&mut conn).await;

    let dead = dead_letters(&mut conn).await;
    assert_eq!(dead.len(), bad.len(), "{dead:#?}");
    for ((entry, id), (fields, reason)) in dead.iter().zip(&bad_ids).zip(&bad) {
        assert!(
            entry["reason"].starts_with(reason),
            "expected reason {reason:?}, got {entry:?}"
        );
        assert_eq!(entry["source_stream"], STREAM);
        assert_eq!(&entry["source_id"], id);
        for (name, value) in *fields {
            assert_eq!(
                entry[*name], *value,
                "original field {name} kept: {entry:?}"
            );
        }
    }
}

/// An entry whose publish fails temporarily by itself — a plugin that panics on its payload, while the engine
/// is fine — is retried `max_attempts` times, then dead-lettered with the count and the last error, and the
/// entries behind it flow again; without the limit it would hold its stream back for ever.
#[tokio::test]
async fn an_entry_that_keeps_failing_by_itself_is_dead_lettered_after_max_attempts() {
    let redis = RedisServer::start();
    let (_plugins, server) =
        with_plugin(&redis, "max_attempts = 3", "herald-test-hostile", "").await;
    let mut client = subscriber(&server, "news").await;
    let mut conn = connect(&redis.url()).await;

    add(&mut conn, &[("channel", "news"), ("data", r#"{"n":1}"#)]).await;
    let poisoned = add(&mut conn, &[("channel", "news"), ("data", r#""panic""#)]).await;
    add(&mut conn, &[("channel", "news"), ("data", r#"{"n":2}"#)]).await;

    assert_eq!(next_pub(&mut client, "news").await["data"], json!({"n": 1}));
    assert_eq!(next_pub(&mut client, "news").await["data"], json!({"n": 2}));
    all_acknowledged(&mut conn).await;
    let dead = dead_letters(&mut conn).await;
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0]["source_id"], poisoned);
    assert_eq!(
        dead[0]["reason"], "failed 3 times, last: 100 internal server error",
        "{dead:#?}"
    );
    assert_eq!(dead[0]["data"], r#""panic""#);
}

/// The consumer names in the group (`XINFO CONSUMERS`).
async fn consumer_names(redis: &mut impl AsyncCommands) -> BTreeSet<String> {
    let reply: redis::streams::StreamInfoConsumersReply = redis
        .xinfo_consumers(STREAM, GROUP)
        .await
        .expect("XINFO CONSUMERS");
    reply.consumers.into_iter().map(|c| c.name).collect()
}

/// Consumers of stopped nodes do not pile up in the group: once their entries are taken over and they have
/// not read for 10 × `claim_idle`, the running node removes them — here one that never held anything and one
/// whose entry the node claimed (and published) first. The running node's own consumer stays.
#[tokio::test]
async fn consumers_gone_for_long_are_removed_from_the_group() {
    let redis = RedisServer::start();
    let mut conn = connect(&redis.url()).await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .expect("create the group");
    let _: i64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(STREAM)
        .arg(GROUP)
        .arg("ghost")
        .query_async(&mut conn)
        .await
        .expect("create a consumer");
    add(&mut conn, &[("channel", "news"), ("data", r#"{"n":1}"#)]).await;
    let taken: redis::streams::StreamReadReply = conn
        .xread_options(
            &[STREAM],
            &[">"],
            &redis::streams::StreamReadOptions::default().group(GROUP, "holder"),
        )
        .await
        .expect("a dead node's read");
    assert_eq!(taken.keys[0].ids.len(), 1);

    let server = TestServer::start(&queue_config(&format!(
        "addresses = [{:?}]\nclaim_idle = \"100ms\"\nconsumer = \"alive\"",
        redis.url()
    )))
    .await;
    let mut client = subscriber(&server, "news").await;
    assert_eq!(next_pub(&mut client, "news").await["data"], json!({"n": 1}));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let names = consumer_names(&mut conn).await;
        if names == BTreeSet::from(["alive".to_string()]) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "consumers left: {names:?}"
        );
        // Idleness is Redis's clock, not an event: look again shortly.
        tokio::time::sleep(POLL).await;
    }
    all_acknowledged(&mut conn).await;
}

/// Entries repeating an `idempotency_key` already published are acknowledged but not published again:
/// the subscriber sees the first `order-1`, then `order-2`, then the entry without a key.
#[tokio::test]
async fn an_idempotency_key_is_published_once() {
    let redis = RedisServer::start();
    let server =
        TestServer::start(&queue_config(&format!("addresses = [{:?}]", redis.url()))).await;
    let mut client = subscriber(&server, "orders").await;
    let mut conn = connect(&redis.url()).await;
    for (key, v) in [
        ("order-1", "first"),
        ("order-1", "again"),
        ("order-2", "second"),
        ("order-1", "once more"),
        ("", "last"),
    ] {
        let data = json!({ "v": v }).to_string();
        add(
            &mut conn,
            &[
                ("channel", "orders"),
                ("data", &data),
                ("idempotency_key", key),
            ],
        )
        .await;
    }
    for v in ["first", "second", "last"] {
        assert_eq!(
            next_pub(&mut client, "orders").await["data"],
            json!({ "v": v })
        );
    }
    all_acknowledged(&mut conn).await;
    assert!(dead_letters(&mut conn).await.is_empty());
}

/// While the engine's Redis is down a publish fails temporarily: the entry is neither acknowledged nor
/// dead-lettered but retried (its delivery count grows), and these retries are not attempts counted against
/// it (`max_attempts = 1` would dead-letter it at the first); once Redis is back it is published, once.
#[tokio::test]
async fn an_engine_outage_leaves_entries_pending_until_they_can_be_published() {
    let mut engine_redis = RedisServer::start();
    let queue_redis = RedisServer::start();
    let server = TestServer::start(&format!(
        "{}{}",
        queue_config(&format!(
            "addresses = [{:?}]\nmax_attempts = 1",
            queue_redis.url()
        )),
        redis_engine(&engine_redis),
    ))
    .await;
    let mut conn = connect(&queue_redis.url()).await;
    engine_redis.kill();
    let id = add(&mut conn, &[("channel", "news"), ("data", r#"{"n":1}"#)]).await;

    // Retried: read again from the consumer's own pending entries after a failed publish.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let detail: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(STREAM)
            .arg(GROUP)
            .arg("-")
            .arg("+")
            .arg(10)
            .query_async(&mut conn)
            .await
            .expect("XPENDING detail");
        if let [(pending_id, _, _, deliveries)] = &detail[..]
            && *deliveries >= 2
        {
            assert_eq!(pending_id, &id);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "entry not retried: {detail:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    assert!(dead_letters(&mut conn).await.is_empty());

    engine_redis.restart_empty();
    all_acknowledged(&mut conn).await;
    assert_eq!(history_numbers(&server, "news").await, vec![1]);
}

/// Queue ingestion with a consumer killed mid-stream: every entry is published exactly once.
///
/// Node A, a `herald serve` process, consumes a stream of 20 entries (one read takes them all) through a Redis
/// user that may not `XACK`, so it is certain to die at the worst moment: entry 1 published but not
/// acknowledged, entries 2–20 delivered to it and not published. It is killed with SIGKILL as soon as the
/// subscriber (on node S, sharing the Redis engine) has received entry 1. Node B then starts, takes over
/// A's pending entries once they have been idle for `claim_idle`, recognises entry 1 as already published
/// (same idempotency key, derived from the entry id) and publishes 2–20. The subscriber receives 1 to 20
/// with nothing in between, the channel's history holds each exactly once at offsets 1–20, and nothing is
/// left pending.
#[tokio::test]
async fn a_consumer_killed_mid_stream_loses_and_duplicates_nothing() {
    const ENTRIES: u64 = 20;
    let redis = RedisServer::start();
    let mut conn = connect(&redis.url()).await;
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "node-a",
            "on",
            ">node-a-secret",
            "~*",
            "&*",
            "+@all",
            "-xack",
        ])
        .query_async(&mut conn)
        .await
        .expect("ACL SETUSER");
    // Every node gets the cluster tests' configuration on this Redis, so their channel options agree.
    let node = |extra: &str| node_config(&redis.url(), extra);
    let in_process = |toml: String| async move {
        TestServer::start_with(Config::from_toml(&toml).expect("node config")).await
    };

    let s = in_process(node("")).await;
    let mut client = subscriber(&s, "jobs").await;
    for n in 1..=ENTRIES {
        let data = json!({ "n": n }).to_string();
        add(&mut conn, &[("channel", "jobs"), ("data", &data)]).await;
    }

    let mut node_a = HeraldProcess::start(&node(&queue_config(&format!(
        "consumer = \"node-a\"\naddresses = [\"redis://node-a:node-a-secret@127.0.0.1:{}\"]",
        redis.port
    ))))
    .await;
    assert_eq!(next_pub(&mut client, "jobs").await["data"], json!({"n": 1}));
    node_a.kill().await;
    let consumers: Vec<(String, String)> = {
        let summary: (u64, String, String, Vec<(String, String)>) = redis::cmd("XPENDING")
            .arg(STREAM)
            .arg(GROUP)
            .query_async(&mut conn)
            .await
            .expect("XPENDING");
        assert_eq!(
            summary.0,
            ENTRIES,
            "node A died holding every entry; its log:\n{}",
            node_a.log()
        );
        summary.3
    };
    assert_eq!(consumers, vec![("node-a".to_string(), ENTRIES.to_string())]);

    let _b = in_process(node(&queue_config(
        "consumer = \"node-b\"\nclaim_idle = \"300ms\"",
    )))
    .await;
    for n in 2..=ENTRIES {
        assert_eq!(
            next_pub(&mut client, "jobs").await["data"],
            json!({ "n": n })
        );
    }
    all_acknowledged(&mut conn).await;
    assert_eq!(
        history_numbers(&s, "jobs").await,
        (1..=ENTRIES).collect::<Vec<_>>()
    );
    assert!(dead_letters(&mut conn).await.is_empty());
}
