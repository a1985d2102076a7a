//! A Redis outage seen from clients of a node on the Redis engine: publishes fail with a temporary error
//! while connections stay up, the engine comes back by itself, and a subscriber whose stream was lost with
//! Redis' data is moved to the new stream and told its old position cannot be recovered — no silent gap.

use herald::testing::RedisServer;
use herald_tests::{Client, TestServer, WAIT, publication};
use serde_json::{Value, json};

async fn redis_node(redis: &RedisServer) -> TestServer {
    TestServer::start_on_redis(
        &redis.url(),
        r#"
        [channel.defaults]
        allow_publish_for_client = true
        allow_publish_for_anonymous = true
        "#,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_that_loses_redis_data_ends_in_an_explicit_not_recovered() {
    let mut redis = RedisServer::start();
    let server = redis_node(&redis).await;
    let (mut client, _) = Client::connect(&server).await;
    let reply = client
        .subscribe(json!({"channel": "prices", "recoverable": true, "positioned": true}))
        .await;
    let epoch = reply["subscribe"]["epoch"].clone();
    let first = server.publish("prices", json!({"n": 1})).await;
    assert_eq!(first["offset"], 1);
    assert_eq!(
        publication(&client.next_push().await, "prices")["offset"],
        1
    );

    redis.kill();
    let (status, body) = server
        .api("publish", json!({"channel": "prices", "data": {"n": 2}}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["error"]["code"], 100, "{body}");
    assert_eq!(
        body["error"]["temporary"], true,
        "the backend may retry: {body}"
    );
    let refused = client
        .call("publish", json!({"channel": "prices", "data": {"n": 2}}))
        .await;
    assert_eq!(refused["error"]["code"], 100, "{refused}");
    assert_eq!(refused["error"]["temporary"], true, "{refused}");

    redis.restart_empty();
    // The engine reconnects by itself; the backend retries its publish until it goes through.
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    let republished: Value = loop {
        let (_, body) = server
            .api("publish", json!({"channel": "prices", "data": {"n": 3}}))
            .await;
        if body.get("result").is_some() {
            break body["result"].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis never came back: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_ne!(
        republished["epoch"], epoch,
        "the stream was lost with Redis' data"
    );

    // The live subscriber sees the new epoch, is moved off its stream and resubscribes.
    let push = client.next_push().await;
    assert_eq!(
        push["unsubscribe"],
        json!({"code": 2500, "reason": "insufficient state"}),
        "{push}"
    );
    let resubscribed = client
        .subscribe(json!({
            "channel": "prices", "recoverable": true, "positioned": true,
            "recover": true, "offset": 1, "epoch": epoch,
        }))
        .await;
    let result = &resubscribed["subscribe"];
    assert_eq!(result["was_recovering"], true, "{resubscribed}");
    assert!(
        result
            .get("recovered")
            .is_none_or(|recovered| recovered == false),
        "history lost with Redis cannot be recovered: {resubscribed}"
    );
    assert_eq!(result["epoch"], republished["epoch"], "{resubscribed}");
}
