//! The Redis engine: history, presence and cross-node fan-out in Redis (standalone or Redis Cluster), so any
//! number of Herald nodes serve one channel space and a client recovers from any of them.
//!
//! - **History**: each channel's stream is a Redis Stream beside a meta hash (top offset, epoch, when the
//!   stream is forgotten). A Lua script assigns the offset, appends and publishes in one step, so offsets are
//!   contiguous and the pub/sub order is the offset order on every node.
//! - **Fan-out**: a node subscribes only to the channels it has local subscribers for (sharded pub/sub on a
//!   cluster). After Redis reconnects, and periodically, the node compares each channel's stream top with
//!   what it delivered ([`BrokerEventHandler::handle_position`]), so a publication lost on the way turns into
//!   a recovery instead of a silent gap.
//! - **Presence**: a hash of clients plus a sorted set of expiry times; each node refreshes its own entries,
//!   so the entries of a crashed node expire after `presence_ttl`.
//!
//! - **Shared state** (plugins' `cluster-state`): one Redis string per entry, expiring by Redis's own TTL.
//!
//! Time (TTLs, expiry) of streams and presence is this node's clock passed to every script, not Redis'
//! clock: the engine is tested with a manual clock, and nodes should run NTP anyway. Shared-state entries
//! are the exception: they expire by Redis's clock, relative to when they were written, so nodes whose
//! clocks disagree still agree on a rate limit's window.

pub(crate) mod connection;
mod keys;
mod sentinel;
mod wire;

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use rand::distr::Alphabetic;
use redis::{PushInfo, PushKind, Script, ScriptInvocation, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use self::connection::Connection;
use self::connection::SentinelTarget;
pub(crate) use self::connection::Target;
use self::keys::Keys;
use self::wire::Message;
use super::{
    Broker, BrokerEventHandler, ClientInfo, EngineError, History, HistoryFilter, HistoryOptions,
    HistoryResult, Presence, PresenceStats, Publication, PublishOptions, SharedState,
    StreamPosition, millis,
};
use crate::sync::lock;

/// `[engine.redis]`: where Redis is and how Herald uses it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` of the server, or of any nodes of a cluster;
    /// `rediss://` for TLS. With `sentinel_master`, the Sentinels' addresses.
    pub addresses: Vec<String>,
    /// The name a Redis Sentinel deployment monitors the primary under (`sentinel monitor <name> …`):
    /// the addresses are then Sentinels, asked where the primary is at start and again whenever the
    /// primary stops answering or answers as a replica, so Herald follows a failover. Empty (the default):
    /// no Sentinel.
    pub sentinel_master: String,
    /// The addresses are Redis Cluster nodes (sharded pub/sub, keys hash-tagged by channel).
    pub cluster: bool,
    /// Prefix of every key and pub/sub channel, so several Herald installations can share a Redis.
    pub prefix: String,
    /// How long a presence entry lives unless its node refreshes it (a third of this, periodically).
    #[serde(with = "humantime_serde")]
    pub presence_ttl: Duration,
    /// How often each channel's stream top is compared with what this node delivered.
    #[serde(with = "humantime_serde")]
    pub position_check_interval: Duration,
    /// Connecting to Redis gives up after this long.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A command without an answer after this long fails (publishes answer "temporarily unavailable").
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Certificates for `rediss://` addresses (the engine's and the queue's).
    pub tls: RedisTlsConfig,
}

/// `[engine.redis.tls]`: how `rediss://` connections are verified and authenticated. The server's
/// certificate is checked against the host of the address, with the system's roots unless `ca_file` is
/// set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisTlsConfig {
    /// PEM file of the CA that signed the server's certificate (managed Redis with a private CA, a
    /// self-signed server).
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM certificate presented to servers that ask for one (`tls-auth-clients`), with `key_file`.
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<std::path::PathBuf>,
}

impl RedisTlsConfig {
    /// The certificates read from the files, for the Redis client; `None` when none is configured.
    fn certificates(&self) -> Result<Option<redis::TlsCertificates>, RedisConfigError> {
        let read = |key: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|error| RedisConfigError::TlsFile {
                key,
                path: path.to_owned(),
                reason: error.to_string(),
            })
        };
        let root_cert = self
            .ca_file
            .as_deref()
            .map(|path| read("ca_file", path))
            .transpose()?;
        let client_tls = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read("cert_file", cert)?,
                client_key: read("key_file", key)?,
            }),
            (None, None) => None,
            _ => return Err(RedisConfigError::TlsPair),
        };
        Ok(
            (root_cert.is_some() || client_tls.is_some()).then_some(redis::TlsCertificates {
                client_tls,
                root_cert,
            }),
        )
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            addresses: vec!["redis://127.0.0.1:6379".into()],
            cluster: false,
            sentinel_master: String::new(),
            prefix: "herald".into(),
            presence_ttl: Duration::from_secs(60),
            position_check_interval: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(2),
            tls: RedisTlsConfig::default(),
        }
    }
}

impl RedisConfig {
    /// Checks what serde cannot; the error names the key.
    pub fn validate(&self) -> Result<(), RedisConfigError> {
        if self.addresses.is_empty() {
            return Err(RedisConfigError::NoAddresses);
        }
        if let Some(bad) = first_invalid_url(&self.addresses) {
            return Err(RedisConfigError::InvalidAddress(bad.clone()));
        }
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return Err(RedisConfigError::Prefix);
        }
        if self.presence_ttl < Duration::from_secs(3) {
            return Err(RedisConfigError::PresenceTtl);
        }
        if self.position_check_interval.is_zero() {
            return Err(RedisConfigError::PositionCheckInterval);
        }
        self.tls.certificates()?;
        if !self.sentinel_master.is_empty() && self.cluster {
            return Err(RedisConfigError::SentinelWithCluster);
        }
        Ok(())
    }

    /// How to reach the Redis at `addresses` (these, or the queue's own) with this section's timeouts and
    /// certificates; `extra_wait` lengthens the command timeout (blocking reads). `own`: the addresses are
    /// this section's, Sentinels when `sentinel_master` is set.
    pub(crate) fn target(
        &self,
        addresses: &[String],
        cluster: bool,
        own: bool,
        extra_wait: Duration,
    ) -> Result<Target, RedisConfigError> {
        Ok(Target {
            addresses: addresses.to_vec(),
            cluster,
            sentinel: (own && !self.sentinel_master.is_empty()).then(|| {
                let keys = Keys::new(&self.prefix);
                SentinelTarget {
                    master: self.sentinel_master.clone(),
                    term_key: keys.failover_term(),
                    primaries_key: keys.failover_primaries(),
                }
            }),
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout + extra_wait,
            tls: self.tls.certificates()?,
        })
    }
}

/// Why `[engine.redis]` is refused; each names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisConfigError {
    /// `addresses` is empty.
    #[error("engine.redis.addresses: at least one address is needed")]
    NoAddresses,
    /// An address is not a `redis://` URL.
    #[error("engine.redis.addresses: {0:?} is not a redis:// URL")]
    InvalidAddress(String),
    /// The prefix is empty, or has braces, which would change the hash tags that place keys in a cluster.
    #[error("engine.redis.prefix: must be non-empty and without braces")]
    Prefix,
    /// `presence_ttl` is under 3 s (entries are refreshed every third of it).
    #[error("engine.redis.presence_ttl: must be at least 3s")]
    PresenceTtl,
    /// `position_check_interval` is zero.
    #[error("engine.redis.position_check_interval: must be greater than 0")]
    PositionCheckInterval,
    /// A certificate or key file cannot be read.
    #[error("engine.redis.tls.{key}: cannot read {}: {reason}", path.display())]
    TlsFile {
        /// The key naming the file.
        key: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// Only one of `cert_file` and `key_file` is set.
    #[error("engine.redis.tls: cert_file and key_file go together")]
    TlsPair,
    /// `sentinel_master` with a Redis Cluster.
    #[error(
        "engine.redis.sentinel_master: Sentinel watches one primary, not a cluster (cluster = true)"
    )]
    SentinelWithCluster,
}

/// The first of `addresses` the Redis client cannot connect to as written (not a `redis://` URL), if any.
pub fn first_invalid_url(addresses: &[String]) -> Option<&String> {
    addresses
        .iter()
        .find(|address| redis::IntoConnectionInfo::into_connection_info(address.as_str()).is_err())
}

/// Unix milliseconds, as this engine sees time.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// How often the subscriber connection is pinged, which is also how soon it notices Redis is back.
const SUBSCRIBER_KEEPALIVE: Duration = Duration::from_secs(1);

/// Shards of the per-channel subscribe locks.
const SUBSCRIBE_SHARDS: usize = 64;

/// Centrifuge's epochs are 8 random letters.
fn new_epoch() -> String {
    rand::rng()
        .sample_iter(Alphabetic)
        .take(8)
        .map(char::from)
        .collect()
}

/// A `redis://` URL fit for logs: the password (if any) replaced.
pub fn without_password(address: &str) -> String {
    match url::Url::parse(address) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("redacted"));
            parsed.to_string()
        }
        _ => address.to_owned(),
    }
}

fn unavailable(error: redis::RedisError) -> EngineError {
    EngineError::Unavailable(error.to_string())
}

fn malformed(what: &str) -> EngineError {
    EngineError::Unavailable(format!("unexpected reply from Redis to {what}"))
}

/// A shared-state TTL in Redis's milliseconds: 0 for none, and a TTL under a millisecond rounded up to
/// one rather than down to none.
fn state_ttl_ms(ttl: Duration) -> u64 {
    if ttl.is_zero() { 0 } else { millis(ttl).max(1) }
}

/// The Lua scripts, loaded into Redis on first use.
struct Scripts {
    publish: Script,
    history: Script,
    notify: Script,
    presence_add: Script,
    presence_remove: Script,
    presence_get: Script,
    presence_stats: Script,
    presence_users: Script,
    state_incr: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            // Lua scripts cannot import each other: the shared stream functions are prepended.
            publish: Script::new(concat!(
                include_str!("scripts/stream.lua"),
                include_str!("scripts/publish.lua")
            )),
            history: Script::new(concat!(
                include_str!("scripts/stream.lua"),
                include_str!("scripts/history.lua")
            )),
            notify: Script::new(include_str!("scripts/notify.lua")),
            presence_add: Script::new(concat!(
                include_str!("scripts/presence.lua"),
                include_str!("scripts/presence_add.lua")
            )),
            presence_remove: Script::new(concat!(
                include_str!("scripts/presence.lua"),
                include_str!("scripts/presence_remove.lua")
            )),
            presence_get: Script::new(concat!(
                include_str!("scripts/presence.lua"),
                include_str!("scripts/presence_get.lua")
            )),
            presence_stats: Script::new(concat!(
                include_str!("scripts/presence.lua"),
                include_str!("scripts/presence_stats.lua")
            )),
            presence_users: Script::new(concat!(
                include_str!("scripts/presence.lua"),
                include_str!("scripts/presence_users.lua")
            )),
            state_incr: Script::new(include_str!("scripts/state_incr.lua")),
        }
    }
}

/// Routes pub/sub pushes to the node's handler. Lives in the subscriber connection's push callback, so it
/// must not block.
struct PushRouter {
    /// Pub/sub channel name → Herald channel, for the channels this node is subscribed to.
    channels: RwLock<HashMap<String, String>>,
    handler: Arc<dyn BrokerEventHandler>,
    /// Tells the maintenance task that Redis came back and subscriptions are restored.
    reconnected: mpsc::UnboundedSender<()>,
    /// Set when the link dropped, cleared at the first subscription confirmed afterwards.
    disconnected: std::sync::atomic::AtomicBool,
    /// Whether the pub/sub link is up, for readiness: down at a disconnection or a failed keep-alive
    /// ping, up again at a ping answered (a node without subscriptions confirms none after a reconnect).
    link_up: std::sync::atomic::AtomicBool,
    /// Counts lost links for metrics (a counter of its own until the node hands one in).
    lost_links: std::sync::OnceLock<prometheus::IntCounter>,
}

impl PushRouter {
    fn route(&self, push: PushInfo) {
        use std::sync::atomic::Ordering;
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                let [Value::BulkString(name), Value::BulkString(message)] = &push.data[..] else {
                    return;
                };
                let Ok(name) = std::str::from_utf8(name) else {
                    return;
                };
                let Some(channel) = crate::sync::read(&self.channels).get(name).cloned() else {
                    return;
                };
                match wire::decode_message(message) {
                    Some(Message::Publication(publication, position)) => {
                        self.handler
                            .handle_publication(&channel, Arc::new(publication), position);
                    }
                    Some(Message::Join(info)) => self.handler.handle_join(&channel, Arc::new(info)),
                    Some(Message::Leave(info)) => {
                        self.handler.handle_leave(&channel, Arc::new(info));
                    }
                    None => tracing::warn!(channel, "ignored a malformed message from Redis"),
                }
            }
            PushKind::Disconnection => {
                self.link_up.store(false, Ordering::Release);
                if !self.disconnected.swap(true, Ordering::AcqRel) {
                    if let Some(lost) = self.lost_links.get() {
                        lost.inc();
                    }
                    tracing::warn!("lost the Redis pub/sub connection; reconnecting");
                }
            }
            PushKind::Subscribe | PushKind::SSubscribe
                if self.disconnected.swap(false, Ordering::AcqRel) =>
            {
                tracing::info!("Redis pub/sub connection restored");
                let _ = self.reconnected.send(());
            }
            _ => {}
        }
    }
}

/// The engine. Cheap to share; background tasks (presence refresh, position checks) end when it is dropped.
pub struct RedisEngine {
    commands: Connection,
    subscriber: Connection,
    keys: Keys,
    /// The failover counter the stream scripts compare a stream's term with; empty without Sentinel.
    failover_term: String,
    clock: Clock,
    presence_ttl: Duration,
    scripts: Scripts,
    router: Arc<PushRouter>,
    /// Net subscribe calls per channel; the Redis subscription follows its 0 ↔ 1 transitions.
    subscriptions: Mutex<HashMap<String, i64>>,
    /// Serialise the Redis (un)subscribe of one channel, so they reach Redis in the order decided.
    subscribe_locks: Box<[tokio::sync::Mutex<()>]>,
    hasher: RandomState,
    /// This node's presence entries (channel → client → encoded info), refreshed before they expire.
    present: Mutex<HashMap<String, HashMap<String, Vec<u8>>>>,
}

impl std::fmt::Debug for RedisEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEngine")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl RedisEngine {
    /// Connects (failing with the reason when Redis cannot be reached) and starts the background tasks.
    pub async fn connect(
        config: &RedisConfig,
        handler: Arc<dyn BrokerEventHandler>,
        clock: Clock,
    ) -> Result<Arc<Self>, EngineError> {
        let target = config
            .target(&config.addresses, config.cluster, true, Duration::ZERO)
            .map_err(|error| EngineError::Unavailable(error.to_string()))?;
        let (reconnected, mut reconnections) = mpsc::unbounded_channel();
        let router = Arc::new(PushRouter {
            channels: RwLock::new(HashMap::new()),
            handler,
            reconnected,
            disconnected: std::sync::atomic::AtomicBool::new(false),
            link_up: std::sync::atomic::AtomicBool::new(true),
            lost_links: std::sync::OnceLock::new(),
        });
        let pushes = {
            let router = router.clone();
            move |push: PushInfo| {
                router.route(push);
                Ok::<(), std::convert::Infallible>(())
            }
        };
        let commands = Connection::open(&target, None::<fn(PushInfo) -> Result<(), ()>>)
            .await
            .map_err(unavailable)?;
        let subscriber = Connection::open(&target, Some(pushes))
            .await
            .map_err(unavailable)?;
        let engine = Arc::new(Self {
            commands,
            subscriber,
            keys: Keys::new(&config.prefix),
            failover_term: target
                .sentinel
                .as_ref()
                .map(|sentinel| sentinel.term_key.clone())
                .unwrap_or_default(),
            clock,
            presence_ttl: config.presence_ttl,
            scripts: Scripts::new(),
            router,
            subscriptions: Mutex::new(HashMap::new()),
            subscribe_locks: (0..SUBSCRIBE_SHARDS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            hasher: RandomState::new(),
            present: Mutex::new(HashMap::new()),
        });

        let weak = Arc::downgrade(&engine);
        let check_every = config.position_check_interval;
        tokio::spawn(async move {
            let mut every = tokio::time::interval(check_every);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    restored = reconnections.recv() => {
                        if restored.is_none() {
                            break;
                        }
                        // Publications may have been lost while the link was down: report positions now
                        // and once more shortly after, so the hub sees a lasting difference (see the
                        // handler's contract) without waiting for the periodic check.
                        if !check_positions(&weak).await {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                if !check_positions(&weak).await {
                    break;
                }
            }
        });

        // The subscriber connection sends no commands of its own, and the client library gives up
        // reconnecting after a few failed attempts until the next command: a steady ping keeps it trying,
        // so subscriptions come back however long Redis was away.
        let weak = Arc::downgrade(&engine);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SUBSCRIBER_KEEPALIVE);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some((mut subscriber, router)) = weak
                    .upgrade()
                    .map(|engine| (engine.subscriber.clone(), engine.router.clone()))
                else {
                    break;
                };
                let answered: Result<Value, _> =
                    redis::cmd("PING").query_async(&mut subscriber).await;
                router
                    .link_up
                    .store(answered.is_ok(), std::sync::atomic::Ordering::Release);
            }
        });

        let weak = Arc::downgrade(&engine);
        let refresh_every = config.presence_ttl / 3;
        tokio::spawn(async move {
            let mut every = tokio::time::interval(refresh_every);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                every.tick().await;
                let Some(engine) = weak.upgrade() else {
                    break;
                };
                if let Err(error) = engine.refresh_presence().await {
                    tracing::warn!(%error, "presence refresh failed");
                }
            }
        });
        let addresses: Vec<String> = config
            .addresses
            .iter()
            .map(|a| without_password(a))
            .collect();
        tracing::info!(?addresses, cluster = config.cluster, "connected to Redis");
        Ok(engine)
    }

    /// Counts every loss of the pub/sub link into `counter` from now on.
    pub fn count_lost_links(&self, counter: prometheus::IntCounter) {
        let _ = self.router.lost_links.set(counter);
    }

    fn now(&self) -> i64 {
        (self.clock)()
    }

    fn subscribe_lock(&self, channel: &str) -> &tokio::sync::Mutex<()> {
        &self.subscribe_locks[(self.hasher.hash_one(channel) as usize) % SUBSCRIBE_SHARDS]
    }

    /// Moves the channel's subscribe count by `delta` and subscribes or unsubscribes in Redis when it crosses
    /// between 0 and 1. Counting (rather than obeying the last call) keeps the right end state when a
    /// subscribe and an unsubscribe of the same channel race.
    async fn change_subscription(&self, channel: &str, delta: i64) -> Result<(), EngineError> {
        let _ordered = self.subscribe_lock(channel).lock().await;
        let (before, after) = {
            let mut counts = lock(&self.subscriptions);
            let count = counts.entry(channel.to_owned()).or_insert(0);
            let before = *count;
            *count += delta;
            let after = *count;
            if after == 0 {
                counts.remove(channel);
            }
            (before, after)
        };
        let pubsub = self.keys.channel(channel).pubsub;
        let mut subscriber = self.subscriber.clone();
        if before <= 0 && after > 0 {
            crate::sync::write(&self.router.channels).insert(pubsub.clone(), channel.to_owned());
            if let Err(error) = subscriber.subscribe(&pubsub).await {
                self.undo_count(channel, delta);
                self.forget_route(&pubsub);
                return Err(unavailable(error));
            }
        } else if before > 0 && after <= 0 {
            self.forget_route(&pubsub);
            if let Err(error) = subscriber.unsubscribe(&pubsub).await {
                // Extra messages for a channel without local subscribers are dropped by the hub; the
                // subscription goes away with the next reconnect.
                tracing::warn!(channel, %error, "Redis unsubscribe failed");
            }
        }
        Ok(())
    }

    fn undo_count(&self, channel: &str, delta: i64) {
        let mut counts = lock(&self.subscriptions);
        let count = counts.entry(channel.to_owned()).or_insert(0);
        *count -= delta;
        if *count == 0 {
            counts.remove(channel);
        }
    }

    fn forget_route(&self, pubsub: &str) {
        crate::sync::write(&self.router.channels).remove(pubsub);
    }

    /// Reports every subscribed channel's stream top to the handler. The reads of a batch go out
    /// concurrently (the connection pipelines them); not as one pipeline, which Redis Cluster refuses across
    /// slots.
    async fn report_positions(&self) -> Result<(), EngineError> {
        const BATCH: usize = 500;
        let channels: Vec<String> = lock(&self.subscriptions)
            .iter()
            .filter(|(_, count)| **count > 0)
            .map(|(channel, _)| channel.clone())
            .collect();
        for batch in channels.chunks(BATCH) {
            let reads = batch.iter().map(|channel| {
                let mut commands = self.commands.clone();
                let meta = self.keys.channel(channel).meta;
                async move {
                    redis::cmd("HMGET")
                        .arg(meta)
                        .arg("top")
                        .arg("epoch")
                        .query_async::<(Option<u64>, Option<String>)>(&mut commands)
                        .await
                }
            });
            let tops = futures_util::future::join_all(reads).await;
            for (channel, top) in batch.iter().zip(tops) {
                if let (Some(offset), Some(epoch)) = top.map_err(unavailable)? {
                    self.router
                        .handler
                        .handle_position(channel, StreamPosition { offset, epoch });
                }
            }
        }
        Ok(())
    }

    async fn refresh_presence(&self) -> Result<(), EngineError> {
        let entries: Vec<(String, String, Vec<u8>)> = lock(&self.present)
            .iter()
            .flat_map(|(channel, clients)| {
                clients
                    .iter()
                    .map(|(client, info)| (channel.clone(), client.clone(), info.clone()))
            })
            .collect();
        for (channel, client, info) in entries {
            self.write_presence(&channel, &client, &info).await?;
        }
        Ok(())
    }

    /// One of the presence scripts, given the channel's presence keys (see `scripts/presence.lua`).
    fn presence_script<'a>(&self, script: &'a Script, channel: &str) -> ScriptInvocation<'a> {
        let keys = self.keys.channel(channel);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(keys.presence)
            .key(keys.presence_expiry)
            .key(keys.presence_users);
        invocation
    }

    async fn write_presence(
        &self,
        channel: &str,
        client: &str,
        info: &[u8],
    ) -> Result<(), EngineError> {
        let mut commands = self.commands.clone();
        let _: Value = self
            .presence_script(&self.scripts.presence_add, channel)
            .arg(self.now())
            .arg(millis(self.presence_ttl))
            .arg(client)
            .arg(info)
            .invoke_async(&mut commands)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

/// One position check; false when the engine is gone.
async fn check_positions(engine: &Weak<RedisEngine>) -> bool {
    let Some(engine) = engine.upgrade() else {
        return false;
    };
    if let Err(error) = engine.report_positions().await {
        tracing::warn!(%error, "stream position check failed");
    }
    true
}

fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        _ => None,
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

/// A stream entry as XRANGE returns it: `[id, [d, publication, t, time]]`.
fn entry_publication(entry: &Value) -> Option<Publication> {
    let Value::Array(parts) = entry else {
        return None;
    };
    let [id, Value::Array(fields)] = &parts[..] else {
        return None;
    };
    let id = text(id)?;
    let offset: u64 = id.split('-').next()?.parse().ok()?;
    let Value::BulkString(encoded) = fields.get(1)? else {
        return None;
    };
    wire::decode_publication(encoded, offset)
}

#[async_trait]
impl Broker for RedisEngine {
    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        opts: &PublishOptions,
    ) -> Result<StreamPosition, EngineError> {
        let keys = self.keys.channel(channel);
        let payload = wire::encode_publication(&publication)?;
        let history = opts.history.as_ref();
        let (idempotency_key, window) = match &opts.idempotency {
            Some(idempotency) => (
                self.keys.idempotency(channel, &idempotency.key),
                millis(idempotency.window).max(1),
            ),
            None => (keys.meta.clone(), 0),
        };
        let mut commands = self.commands.clone();
        let reply: Value = self
            .scripts
            .publish
            .key(&keys.meta)
            .key(&keys.stream)
            .key(&idempotency_key)
            .arg(self.now())
            .arg(if history.is_some() { "1" } else { "0" })
            .arg(history.map_or(0, |h| h.size))
            .arg(history.map_or(0, |h| millis(h.ttl)))
            .arg(history.map_or(0, |h| millis(h.meta_ttl)))
            .arg(new_epoch())
            .arg(payload)
            .arg(commands.publish_command())
            .arg(&keys.pubsub)
            .arg(window)
            .arg(&self.failover_term)
            .invoke_async(&mut commands)
            .await
            .map_err(unavailable)?;
        let Value::Array(parts) = reply else {
            return Err(malformed("publish"));
        };
        match &parts[..] {
            [offset, epoch, _repeat] => Ok(StreamPosition {
                offset: integer(offset).ok_or_else(|| malformed("publish"))? as u64,
                epoch: text(epoch).unwrap_or_default(),
            }),
            _ => Err(malformed("publish")),
        }
    }

    async fn publish_join(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        self.notify(channel, wire::join_message(&info)?).await
    }

    async fn publish_leave(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        self.notify(channel, wire::leave_message(&info)?).await
    }

    async fn subscribe(&self, channel: &str) -> Result<(), EngineError> {
        self.change_subscription(channel, 1).await
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError> {
        self.change_subscription(channel, -1).await
    }

    async fn ready(&self) -> Result<(), EngineError> {
        if !self
            .router
            .link_up
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(EngineError::Unavailable(
                "the Redis pub/sub link is down: publications from other nodes are not heard"
                    .into(),
            ));
        }
        let mut commands = self.commands.clone();
        let _: Value = redis::cmd("PING")
            .query_async(&mut commands)
            .await
            .map_err(|error| EngineError::Unavailable(format!("Redis does not answer: {error}")))?;
        Ok(())
    }
}

impl RedisEngine {
    async fn notify(&self, channel: &str, message: Vec<u8>) -> Result<(), EngineError> {
        let keys = self.keys.channel(channel);
        let mut commands = self.commands.clone();
        let _: Value = self
            .scripts
            .notify
            .key(&keys.meta)
            .arg(commands.publish_command())
            .arg(&keys.pubsub)
            .arg(message)
            .invoke_async(&mut commands)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl History for RedisEngine {
    async fn history(
        &self,
        channel: &str,
        filter: &HistoryFilter,
        opts: &HistoryOptions,
    ) -> Result<HistoryResult, EngineError> {
        let keys = self.keys.channel(channel);
        let (since_offset, since_epoch) = match &filter.since {
            Some(since) => (since.offset.to_string(), since.epoch.clone()),
            None => (String::new(), String::new()),
        };
        let limit = filter
            .limit
            .map_or(-1, |limit| i64::try_from(limit).unwrap_or(i64::MAX));
        let mut commands = self.commands.clone();
        let reply: Value = self
            .scripts
            .history
            .key(&keys.meta)
            .key(&keys.stream)
            .arg(self.now())
            .arg(millis(opts.ttl))
            .arg(millis(opts.meta_ttl))
            .arg(new_epoch())
            .arg(since_offset)
            .arg(since_epoch)
            .arg(limit)
            .arg(if filter.reverse { "1" } else { "0" })
            .arg(&self.failover_term)
            .invoke_async(&mut commands)
            .await
            .map_err(unavailable)?;
        let Value::Array(parts) = reply else {
            return Err(malformed("history"));
        };
        let [top, epoch, status, entries] = &parts[..] else {
            return Err(malformed("history"));
        };
        if integer(status) == Some(1) {
            return Err(EngineError::UnrecoverablePosition);
        }
        let position = StreamPosition {
            offset: integer(top).ok_or_else(|| malformed("history"))? as u64,
            epoch: text(epoch).ok_or_else(|| malformed("history"))?,
        };
        let publications = match entries {
            Value::Array(entries) => entries
                .iter()
                .filter_map(entry_publication)
                .map(Arc::new)
                .collect(),
            _ => Vec::new(),
        };
        Ok(HistoryResult {
            publications,
            position,
        })
    }

    async fn remove_history(&self, channel: &str) -> Result<(), EngineError> {
        let keys = self.keys.channel(channel);
        let mut commands = self.commands.clone();
        let _: Value = redis::cmd("DEL")
            .arg(&keys.stream)
            .query_async(&mut commands)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl SharedState for RedisEngine {
    async fn state_get(&self, scope: &str, key: &str) -> Result<Option<Vec<u8>>, EngineError> {
        let mut commands = self.commands.clone();
        redis::cmd("GET")
            .arg(self.keys.state(scope, key))
            .query_async(&mut commands)
            .await
            .map_err(unavailable)
    }

    async fn state_set(
        &self,
        scope: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), EngineError> {
        let mut set = redis::cmd("SET");
        set.arg(self.keys.state(scope, key)).arg(value);
        let ttl_ms = state_ttl_ms(ttl);
        if ttl_ms > 0 {
            set.arg("PX").arg(ttl_ms);
        }
        let mut commands = self.commands.clone();
        let _: Value = set.query_async(&mut commands).await.map_err(unavailable)?;
        Ok(())
    }

    async fn state_incr(
        &self,
        scope: &str,
        key: &str,
        delta: i64,
        ttl: Duration,
    ) -> Result<i64, EngineError> {
        let mut commands = self.commands.clone();
        let sum: String = self
            .scripts
            .state_incr
            .key(self.keys.state(scope, key))
            .arg(delta)
            .arg(state_ttl_ms(ttl))
            .invoke_async(&mut commands)
            .await
            .map_err(unavailable)?;
        sum.parse()
            .map_err(|_| malformed("a shared-state increment"))
    }

    async fn state_delete(&self, scope: &str, key: &str) -> Result<bool, EngineError> {
        let mut commands = self.commands.clone();
        let removed: u64 = redis::cmd("DEL")
            .arg(self.keys.state(scope, key))
            .query_async(&mut commands)
            .await
            .map_err(unavailable)?;
        Ok(removed > 0)
    }
}

#[async_trait]
impl Presence for RedisEngine {
    async fn add_presence(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        let encoded = wire::encode_client_info(&info)?;
        self.write_presence(channel, &info.client, &encoded).await?;
        lock(&self.present)
            .entry(channel.to_owned())
            .or_default()
            .insert(info.client, encoded);
        Ok(())
    }

    async fn remove_presence(
        &self,
        channel: &str,
        client: &str,
    ) -> Result<Option<ClientInfo>, EngineError> {
        {
            let mut present = lock(&self.present);
            if let Some(clients) = present.get_mut(channel) {
                clients.remove(client);
                if clients.is_empty() {
                    present.remove(channel);
                }
            }
        }
        let mut commands = self.commands.clone();
        let removed: Option<Vec<u8>> = self
            .presence_script(&self.scripts.presence_remove, channel)
            .arg(client)
            .invoke_async(&mut commands)
            .await
            .map_err(unavailable)?;
        Ok(removed.and_then(|encoded| wire::decode_client_info(&encoded)))
    }

    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, EngineError> {
        let mut commands = self.commands.clone();
        let fields: Vec<Vec<u8>> = self
            .presence_script(&self.scripts.presence_get, channel)
            .arg(self.now())
            .invoke_async(&mut commands)
            .await
            .map_err(unavailable)?;
        Ok(wire::decode_presence(fields))
    }

    async fn users_present(
        &self,
        channel: &str,
        users: &[String],
    ) -> Result<HashSet<String>, EngineError> {
        // Lua unpacks the arguments onto its stack, which holds a few thousand.
        const SLICE: usize = 1000;
        let mut present = HashSet::new();
        for slice in users.chunks(SLICE) {
            let mut commands = self.commands.clone();
            let mut script = self.presence_script(&self.scripts.presence_users, channel);
            script.arg(self.now());
            for user in slice {
                script.arg(user);
            }
            let counts: Vec<Option<u64>> = script
                .invoke_async(&mut commands)
                .await
                .map_err(unavailable)?;
            present.extend(
                slice
                    .iter()
                    .zip(counts)
                    .filter(|(_, count)| count.is_some_and(|n| n > 0))
                    .map(|(user, _)| user.clone()),
            );
        }
        Ok(present)
    }

    async fn publish_counts(
        &self,
        node: &str,
        changed: &[(String, u64)],
        ttl: Duration,
    ) -> Result<(), EngineError> {
        // Large sets (a node's first publication) go in slices, so no single command is huge.
        const SLICE: usize = 1000;
        let key = self.keys.node_counts(node);
        let mut pipe = redis::pipe();
        let (set, gone): (Vec<_>, Vec<_>) = changed.iter().partition(|(_, count)| *count > 0);
        for slice in set.chunks(SLICE) {
            let pairs: Vec<(&str, u64)> = slice.iter().map(|(c, n)| (c.as_str(), *n)).collect();
            pipe.hset_multiple(&key, &pairs).ignore();
        }
        for slice in gone.chunks(SLICE) {
            let names: Vec<&str> = slice.iter().map(|(c, _)| c.as_str()).collect();
            pipe.hdel(&key, names).ignore();
        }
        pipe.pexpire(&key, i64::try_from(millis(ttl)).unwrap_or(i64::MAX))
            .ignore();
        let mut commands = self.commands.clone();
        pipe.query_async::<()>(&mut commands)
            .await
            .map_err(unavailable)
    }

    async fn node_counts(&self, node: &str) -> Result<HashMap<String, u64>, EngineError> {
        let mut commands = self.commands.clone();
        redis::cmd("HGETALL")
            .arg(self.keys.node_counts(node))
            .query_async(&mut commands)
            .await
            .map_err(unavailable)
    }

    async fn node_count(&self, node: &str, channel: &str) -> Result<u64, EngineError> {
        let mut commands = self.commands.clone();
        let count: Option<u64> = redis::cmd("HGET")
            .arg(self.keys.node_counts(node))
            .arg(channel)
            .query_async(&mut commands)
            .await
            .map_err(unavailable)?;
        Ok(count.unwrap_or(0))
    }

    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, EngineError> {
        let mut commands = self.commands.clone();
        let (clients, users): (u64, u64) = self
            .presence_script(&self.scripts.presence_stats, channel)
            .arg(self.now())
            .invoke_async(&mut commands)
            .await
            .map_err(unavailable)?;
        Ok(PresenceStats {
            num_clients: u32::try_from(clients).unwrap_or(u32::MAX),
            num_users: u32::try_from(users).unwrap_or(u32::MAX),
        })
    }
}

#[cfg(test)]
mod tests;
