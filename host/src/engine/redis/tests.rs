//! The Redis engine against real `redis-server` processes: the shared conformance suite on a standalone
//! server and on a three-master cluster, then what only a shared engine has — several nodes, presence of a
//! crashed node expiring, and a Redis outage.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use redis::Value;

use super::{RedisConfig, RedisEngine, wire};
use crate::engine::conformance::{ManualClock, TestClock};
use crate::engine::{
    Broker, BrokerEventHandler, ClientInfo, Engine, EngineError, History, HistoryFilter,
    HistoryOptions, Presence, PresenceStats, Publication, PublishOptions, StreamPosition, now_ms,
};
use crate::testing::{RedisCluster, RedisServer};

/// Moves a [`ManualClock`] and reads it as unix milliseconds, the Redis engine's clock.
struct UnixClock {
    manual: ManualClock,
    origin_ms: i64,
}

impl UnixClock {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            manual: ManualClock::new(),
            origin_ms: now_ms(),
        })
    }

    fn now_ms(&self) -> i64 {
        let elapsed = self.manual.now() - self.manual.origin();
        self.origin_ms + elapsed.as_millis() as i64
    }
}

#[async_trait]
impl TestClock for UnixClock {
    async fn advance(&self, by: Duration) {
        self.manual.advance(by).await;
    }
}

fn config(addresses: Vec<String>, cluster: bool) -> RedisConfig {
    RedisConfig {
        addresses,
        cluster,
        ..RedisConfig::default()
    }
}

async fn connect(
    config: &RedisConfig,
    handler: Arc<dyn BrokerEventHandler>,
    clock: &Arc<UnixClock>,
) -> Arc<RedisEngine> {
    let reader = clock.clone();
    RedisEngine::connect(config, handler, Arc::new(move || reader.now_ms()))
        .await
        .expect("connect to redis")
}

fn engine(redis: Arc<RedisEngine>) -> Engine {
    Engine {
        broker: redis.clone(),
        history: redis.clone(),
        presence: redis.clone(),
        state: redis,
        shared: true,
    }
}

mod standalone {
    use super::*;

    /// One server for the whole suite: cases keep apart by channel prefix, and starting a server per case
    /// would dominate the run time.
    fn shared_server() -> &'static RedisServer {
        static SERVER: std::sync::OnceLock<RedisServer> = std::sync::OnceLock::new();
        SERVER.get_or_init(RedisServer::start)
    }

    async fn redis_engine(handler: Arc<dyn BrokerEventHandler>) -> (Engine, Arc<dyn TestClock>) {
        let clock = UnixClock::new();
        let redis = connect(&config(vec![shared_server().url()], false), handler, &clock).await;
        (engine(redis), clock)
    }

    crate::engine::conformance::engine_conformance_tests!(redis_engine);
}

mod cluster {
    use super::*;

    fn shared_cluster() -> &'static RedisCluster {
        static CLUSTER: std::sync::OnceLock<RedisCluster> = std::sync::OnceLock::new();
        CLUSTER.get_or_init(RedisCluster::start)
    }

    async fn redis_cluster_engine(
        handler: Arc<dyn BrokerEventHandler>,
    ) -> (Engine, Arc<dyn TestClock>) {
        let clock = UnixClock::new();
        let redis = connect(&config(shared_cluster().urls(), true), handler, &clock).await;
        (engine(redis), clock)
    }

    crate::engine::conformance::engine_conformance_tests!(redis_cluster_engine);

    /// Position checks read every channel's top in one pipeline, whose commands span the cluster's shards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn position_checks_span_every_shard() {
        let watcher = Arc::new(Watcher::default());
        let clock = UnixClock::new();
        let redis = connect(
            &config(shared_cluster().urls(), true),
            watcher.clone(),
            &clock,
        )
        .await;
        let channels: Vec<String> = (0..12).map(|n| format!("positions-{n}")).collect();
        for channel in &channels {
            redis.subscribe(channel).await.expect("subscribe");
            redis
                .publish(channel, data("x"), &keep())
                .await
                .expect("publish");
        }
        redis.report_positions().await.expect("position check");
        for channel in &channels {
            watcher
                .wait_until(
                    channel,
                    |seen| matches!(seen, Seen::Position(c, p) if c == channel && p.offset == 1),
                )
                .await;
        }
    }
}

/// What the shared-engine cases watch: publications and position reports, as they arrive.
#[derive(Default)]
struct Watcher {
    events: std::sync::Mutex<Vec<Seen>>,
    arrived: tokio::sync::Notify,
}

#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Publication(String, StreamPosition),
    Position(String, StreamPosition),
}

impl Watcher {
    fn record(&self, seen: Seen) {
        self.events.lock().expect("lock").push(seen);
        self.arrived.notify_waiters();
    }

    /// Waits (at most `DEADLINE`, as a failure guard) until an event satisfies `wanted`.
    async fn wait_until(&self, what: &str, wanted: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if let Some(found) = self.events.lock().expect("lock").iter().find(|s| wanted(s)) {
                return found.clone();
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                let seen = self.events.lock().expect("lock").clone();
                panic!("waited {DEADLINE:?} for {what}; saw {seen:?}");
            }
        }
    }
}

impl BrokerEventHandler for Watcher {
    fn handle_publication(&self, channel: &str, _: Arc<Publication>, position: StreamPosition) {
        self.record(Seen::Publication(channel.to_owned(), position));
    }
    fn handle_join(&self, _: &str, _: Arc<ClientInfo>) {}
    fn handle_leave(&self, _: &str, _: Arc<ClientInfo>) {}
    fn handle_position(&self, channel: &str, position: StreamPosition) {
        self.record(Seen::Position(channel.to_owned(), position));
    }
}

const DEADLINE: Duration = Duration::from_secs(30);

fn keep() -> PublishOptions {
    PublishOptions {
        history: Some(HistoryOptions {
            size: 100,
            ttl: Duration::from_secs(600),
            meta_ttl: Duration::from_secs(3600),
        }),
        idempotency: None,
    }
}

fn data(text: &str) -> Publication {
    Publication {
        data: bytes::Bytes::copy_from_slice(text.as_bytes()),
        ..Publication::default()
    }
}

fn member(user: &str, client: &str) -> ClientInfo {
    ClientInfo {
        user: user.into(),
        client: client.into(),
        ..ClientInfo::default()
    }
}

/// A node's engine on `server` with a watcher, and short timeouts so an outage shows quickly.
async fn node(server: &RedisServer, clock: &Arc<UnixClock>) -> (Arc<RedisEngine>, Arc<Watcher>) {
    let watcher = Arc::new(Watcher::default());
    let config = RedisConfig {
        connect_timeout: Duration::from_millis(500),
        command_timeout: Duration::from_millis(1000),
        ..config(vec![server.url()], false)
    };
    (connect(&config, watcher.clone(), clock).await, watcher)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_publications_history_and_presence() {
    let server = RedisServer::start();
    let clock = UnixClock::new();
    let (a, _) = node(&server, &clock).await;
    let (b, b_sees) = node(&server, &clock).await;
    b.subscribe("news").await.expect("subscribe");
    let published = a
        .publish("news", data("1"), &keep())
        .await
        .expect("publish");
    b_sees
        .wait_until("the publication on the other node", |seen| {
            *seen == Seen::Publication("news".into(), published.clone())
        })
        .await;
    let history = b
        .history("news", &HistoryFilter::default(), &keep().history.unwrap())
        .await
        .expect("history");
    assert_eq!(
        history.position, published,
        "one stream, whichever node reads it"
    );

    a.add_presence("news", member("alice", "c1"))
        .await
        .expect("add");
    b.add_presence("news", member("bob", "c2"))
        .await
        .expect("add");
    let everyone = b.presence("news").await.expect("presence");
    assert_eq!(everyone.len(), 2, "{everyone:?}");
    assert_eq!(
        a.presence_stats("news").await.expect("stats"),
        PresenceStats {
            num_clients: 2,
            num_users: 2
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_of_a_stopped_node_expires() {
    let server = RedisServer::start();
    let clock = UnixClock::new();
    let (a, _) = node(&server, &clock).await;
    let (b, _) = node(&server, &clock).await;
    a.add_presence("room", member("alice", "c1"))
        .await
        .expect("add");
    b.add_presence("room", member("bob", "c2"))
        .await
        .expect("add");
    drop(a);
    clock.advance(Duration::from_secs(30)).await;
    assert_eq!(b.presence("room").await.expect("presence").len(), 2);
    // b's own entry is refreshed by b (its refresh task writes with the advanced clock); a's is not.
    b.add_presence("room", member("bob", "c2"))
        .await
        .expect("refresh");
    clock.advance(Duration::from_secs(31)).await;
    assert_eq!(
        b.presence_stats("room").await.expect("stats"),
        PresenceStats {
            num_clients: 1,
            num_users: 1
        },
        "the expired entry and its user are counted out"
    );
    let asked = ["alice".to_owned(), "bob".to_owned()];
    assert_eq!(
        b.users_present("room", &asked).await.expect("users"),
        std::collections::HashSet::from(["bob".to_owned()])
    );
    let left = b.presence("room").await.expect("presence");
    assert_eq!(left.keys().collect::<Vec<_>>(), vec!["c2"], "{left:?}");
}

/// Presence written by an older Herald, without the per-user counts, is counted once they are first
/// needed, and kept counted from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_without_user_counts_is_counted() {
    let server = RedisServer::start();
    let clock = UnixClock::new();
    let (a, _) = node(&server, &clock).await;
    let keys = a.keys.channel("room");
    let client = redis::Client::open(server.url()).expect("url");
    let mut raw = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let expires = clock.now_ms() + 60_000;
    for (user, id) in [("alice", "c1"), ("alice", "c2"), ("bob", "c3")] {
        let info = wire::encode_client_info(&member(user, id)).expect("encode");
        let _: () = redis::pipe()
            .hset(&keys.presence, id, info)
            .ignore()
            .zadd(&keys.presence_expiry, id, expires)
            .ignore()
            .pexpire(&keys.presence, 60_000)
            .ignore()
            .query_async(&mut raw)
            .await
            .expect("write as an older Herald did");
    }
    let stats = |num_clients, num_users| PresenceStats {
        num_clients,
        num_users,
    };
    assert_eq!(a.presence_stats("room").await.expect("stats"), stats(3, 2));
    let counts_ttl: i64 = redis::cmd("PTTL")
        .arg(&keys.presence_users)
        .query_async(&mut raw)
        .await
        .expect("pttl");
    assert!(
        counts_ttl > 0,
        "the counts expire with the entries: {counts_ttl}"
    );
    a.remove_presence("room", "c3").await.expect("remove");
    a.add_presence("room", member("carol", "c4"))
        .await
        .expect("add");
    assert_eq!(a.presence_stats("room").await.expect("stats"), stats(3, 2));
    a.remove_presence("room", "c1").await.expect("remove");
    a.remove_presence("room", "c2").await.expect("remove");
    assert_eq!(a.presence_stats("room").await.expect("stats"), stats(1, 1));
    // User ids of every MessagePack string width the scripts read: fixstr, str8, str16.
    let long = ["x".repeat(31), "y".repeat(40), "z".repeat(300)];
    for (n, user) in long.iter().enumerate() {
        for copy in 0..2 {
            a.add_presence("room", member(user, &format!("long-{n}-{copy}")))
                .await
                .expect("add");
        }
    }
    assert_eq!(a.presence_stats("room").await.expect("stats"), stats(7, 4));
    for n in 0..long.len() {
        a.remove_presence("room", &format!("long-{n}-0"))
            .await
            .expect("remove");
    }
    assert_eq!(a.presence_stats("room").await.expect("stats"), stats(4, 4));
    for n in 0..long.len() {
        a.remove_presence("room", &format!("long-{n}-1"))
            .await
            .expect("remove");
    }
    assert_eq!(a.presence_stats("room").await.expect("stats"), stats(1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_lost_during_a_reconnect_do_not_go_unnoticed() {
    let server = RedisServer::start();
    let clock = UnixClock::new();
    let (a, a_sees) = node(&server, &clock).await;
    let (b, _) = node(&server, &clock).await;
    a.subscribe("feed").await.expect("subscribe");
    let first = b
        .publish("feed", data("1"), &keep())
        .await
        .expect("publish");
    a_sees
        .wait_until("the first publication", |seen| {
            *seen == Seen::Publication("feed".into(), first.clone())
        })
        .await;

    // Drop every pub/sub connection, then publish while `a` may still be reconnecting.
    let mut admin = redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let _: Value = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .expect("client kill");
    let second = b
        .publish("feed", data("2"), &keep())
        .await
        .expect("publish");

    // Either it arrived (a resubscribed first) or a position report shows the stream ahead.
    a_sees
        .wait_until(
            "the second publication or a report of it",
            |seen| match seen {
                Seen::Publication(channel, position) | Seen::Position(channel, position) => {
                    channel == "feed" && position.offset >= second.offset
                }
            },
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_fails_publishes_then_the_engine_comes_back_by_itself() {
    let mut server = RedisServer::start();
    let clock = UnixClock::new();
    let (a, a_sees) = node(&server, &clock).await;
    a.subscribe("live").await.expect("subscribe");
    let before = a
        .publish("live", data("1"), &keep())
        .await
        .expect("publish");

    server.kill();
    let failed = a.publish("live", data("2"), &keep()).await;
    assert!(
        matches!(failed, Err(EngineError::Unavailable(_))),
        "a publish without Redis fails as temporarily unavailable: {failed:?}"
    );

    server.restart_empty();
    // The engine reconnects on its own; keep publishing until it is through.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let after = loop {
        match a.publish("live", data("3"), &keep()).await {
            Ok(position) => break position,
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never came back: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_ne!(
        after.epoch, before.epoch,
        "the lost stream starts a new epoch"
    );
    assert_eq!(after.offset, 1);
    // The publication may have gone out before the subscriber connection was back: then the position
    // reports show the new stream (and the hub moves its subscribers over). Either way, nothing is silent.
    a_sees
        .wait_until("the new stream, delivered or reported", |seen| match seen {
            Seen::Publication(_, position) | Seen::Position(_, position) => *position == after,
        })
        .await;
    // And the subscription is restored: a later publication arrives live.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let probe = a
            .publish("live", data("probe"), &keep())
            .await
            .expect("publish");
        let delivered = Seen::Publication("live".into(), probe);
        let arrived = tokio::time::timeout(
            Duration::from_secs(1),
            a_sees.wait_until("the probe", |seen| *seen == delivered),
        )
        .await;
        if arrived.is_ok() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never resubscribed");
    }
    let old = HistoryFilter {
        since: Some(before),
        ..HistoryFilter::default()
    };
    let recovery = a.history("live", &old, &keep().history.unwrap()).await;
    assert_eq!(
        recovery,
        Err(EngineError::UnrecoverablePosition),
        "a client from before the loss is told it cannot recover"
    );
}

#[test]
fn logged_addresses_hide_the_password() {
    assert_eq!(
        super::without_password("redis://app:s3cret@10.0.0.5:6379/0"),
        "redis://app:redacted@10.0.0.5:6379/0"
    );
    assert_eq!(
        super::without_password("redis://127.0.0.1:6379"),
        "redis://127.0.0.1:6379"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_redis_down_and_back_up() {
    let mut server = RedisServer::start();
    let clock = UnixClock::new();
    // No subscription: after Redis returns, no subscription is confirmed, and readiness must come back
    // anyway.
    let (a, _) = node(&server, &clock).await;
    a.ready().await.expect("ready with Redis up");

    server.kill();
    let down = a.ready().await;
    assert!(
        matches!(&down, Err(EngineError::Unavailable(reason)) if reason.contains("Redis")),
        "not ready without Redis, saying why: {down:?}"
    );

    server.restart_empty();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while let Err(error) = a.ready().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready again: {error}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
