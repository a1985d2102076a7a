//! Redis Sentinel: two nodes find the primary through a Sentinel and follow it when the primary is killed
//! (`kill -9`) and the Sentinel promotes its replica, under a steady stream of publications with a
//! centrifuge-js subscriber. Replication is asynchronous, so the old primary may have acknowledged
//! publications it never passed on; Herald may lose those but never silently: the subscriber receives every
//! publication or is told its stream broke (`recovered: false`), and an idempotent publish replicated before
//! the failover is not repeated by a retry after it. The nodes' queue consumers follow the primary too.
//!
//! Needs `npm ci --prefix tests/e2e/js` (as `./tests/run` does).

use std::time::Duration;

use herald::testing::{RedisSentinel, redis_cli};
use herald_tests::cluster::SdkScript;
use herald_tests::{TestServer, WAIT, require_node};
use serde_json::{Value, json};

/// A node on the Sentinel's primary; its queue consumes `herald:queue` there.
async fn sentinel_node(sentinel: &RedisSentinel) -> TestServer {
    TestServer::start_on_redis(
        &sentinel.url(),
        &format!(
            r#"
            [queue]
            enabled = true
            [engine.redis]
            sentinel_master = "{}"
            [client]
            recovery_max_publication_limit = 10000
            [channel.defaults]
            history_size = 10000
            "#,
            RedisSentinel::MASTER
        ),
    )
    .await
}

/// Publishes `{"n": n}` with the idempotency key `n`, retrying (the node follows the new primary within
/// moments) until it goes through; the reply's `result`.
async fn publish(node: &TestServer, channel: &str, n: u64) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    loop {
        let (status, body) = node
            .api(
                "publish",
                json!({"channel": channel, "data": {"n": n}, "idempotency_key": format!("n{n}")}),
            )
            .await;
        if status == 200 && body.get("result").is_some() {
            return body["result"].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "publish n={n} never went through: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks a subscriber's record: publications in order without duplicates, and a publication missing
/// only where a resubscribe said it was not recovered. Returns how many such breaks there were.
fn judge(record: &[Value], published: u64) -> usize {
    let mut next = 1;
    let mut breaks = 0;
    let mut broken_since_last = false;
    for event in record {
        if let Some(subscribed) = event.get("subscribed") {
            if subscribed["wasRecovering"] == true && subscribed["recovered"] != true {
                breaks += 1;
                broken_since_last = true;
            }
        } else if let Some(publication) = event.get("publication") {
            let n = publication["n"].as_u64().expect("n");
            assert!(
                n >= next,
                "n={n} again or out of order (expected {next}): {record:?}"
            );
            assert!(
                n == next || broken_since_last,
                "n={next}..{} missing without a break reported: {record:?}",
                n - 1
            );
            next = n + 1;
            broken_since_last = false;
        }
    }
    assert_eq!(
        next,
        published + 1,
        "the last publications after the failover did not arrive: {record:?}"
    );
    breaks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_follow_a_sentinel_failover_without_silent_loss() {
    require_node(&["centrifuge", "ws"]).await;
    let mut sentinel = RedisSentinel::start();
    let publisher = sentinel_node(&sentinel).await;
    let subscribed = sentinel_node(&sentinel).await;
    let channel = "failover";
    let mut subscriber = SdkScript::start(
        "node",
        "tests/e2e/js/redis-failover.js",
        &[
            ("HERALD_WS_URL", subscribed.ws_url()),
            ("HERALD_CHANNEL", channel.to_owned()),
        ],
    );
    subscriber.wait_for_line("STEP subscribed").await;

    const REPLICATED: u64 = 40;
    const UNREPLICATED: u64 = 45;
    const TOTAL: u64 = 80;
    let mut replicated = Value::Null;
    for n in 1..=REPLICATED {
        replicated = publish(&publisher, channel, n).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let acknowledged = redis_cli(sentinel.primary.port, &["wait", "1", "5000"]);
    assert_eq!(acknowledged.trim(), "1", "the replica did not acknowledge");
    // The primary acknowledges (and delivers) these, but its replica is frozen and cut off, and never
    // gets them.
    sentinel.replica.pause();
    redis_cli(
        sentinel.primary.port,
        &["client", "kill", "type", "replica"],
    );
    for n in REPLICATED + 1..=UNREPLICATED {
        publish(&publisher, channel, n).await;
    }
    let killed = std::time::Instant::now();
    sentinel.primary.kill();
    sentinel.replica.resume();
    sentinel.await_failover();
    let promoted = killed.elapsed();

    // The publisher retries n=40 (say its reply was lost): it reached the replica, so it is not repeated.
    let retried = publish(&publisher, channel, REPLICATED).await;
    // Reported for BENCHMARKS.md (`-- --nocapture`), not asserted: it is Sentinel's timing.
    eprintln!(
        "failover: replica promoted {} ms and publishes through Herald again {} ms after kill -9",
        promoted.as_millis(),
        killed.elapsed().as_millis()
    );
    assert_eq!(
        (&retried["offset"], &retried["epoch"]),
        (&replicated["offset"], &replicated["epoch"]),
        "a retry after the failover was published again"
    );
    let first_after = publish(&publisher, channel, UNREPLICATED + 1).await;
    assert_eq!(
        first_after["offset"],
        REPLICATED + 1,
        "the new primary never had n=41..45, so their offsets come again"
    );
    assert_ne!(
        first_after["epoch"], replicated["epoch"],
        "a stream written before the failover gets a new epoch, so reused offsets are not mistaken"
    );
    for n in UNREPLICATED + 2..=TOTAL {
        publish(&publisher, channel, n).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    publisher.publish(channel, json!({"last": true})).await;
    subscriber.go().await;
    let result = subscriber.wait_for_line("RESULT ").await;
    let record: Vec<Value> =
        serde_json::from_str(result.trim_start_matches("RESULT ")).expect("the record is JSON");
    let breaks = judge(&record, TOTAL);
    assert!(
        breaks >= 1,
        "the epoch changed, so the subscriber must have been told: {record:?}"
    );
    subscriber.assert_passes().await;

    // Four links of two nodes moved; the failover counts once.
    let promoted = sentinel.replica.port;
    assert_eq!(
        redis_cli(promoted, &["get", "herald:failover-term"]).trim(),
        "1"
    );
}

/// A Sentinel that does not know the master name: the node refuses to start, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_master_name_stops_the_start_with_the_reason() {
    let sentinel = RedisSentinel::start();
    let config = herald_tests::config(&format!(
        r#"
        [engine]
        type = "redis"
        [engine.redis]
        addresses = ["{}"]
        sentinel_master = "nobody"
        connect_timeout = "500ms"
        "#,
        sentinel.url()
    ));
    let error = herald::server::start(config)
        .await
        .expect_err("no primary is named nobody");
    let message = format!("{error:#}");
    assert!(
        message.contains("nobody") || message.to_lowercase().contains("master"),
        "{message}"
    );
}
