//! The engine: where publications get their place in a channel's stream and reach every node.
//!
//! Four seams, each a trait with a contract: [`Broker`] (publish and cross-node fan-out), [`History`]
//! (streams, offsets, epochs), [`Presence`] and [`SharedState`] (plugins' cluster-wide key-value state).
//! An engine delivers what it broadcasts to the node's [`BrokerEventHandler`] (the hub); it never knows
//! about sessions or protocols.
//!
//! Implementations: [`memory`] (single node, the default; its shared state is [`keyvalue`]) and [`redis`]
//! (many nodes on one Redis or Redis Cluster). Every implementation must pass the shared conformance suite
//! in `conformance.rs`.

mod instrumented;
pub mod keyvalue;
pub mod memory;
pub mod redis;

#[cfg(test)]
mod conformance;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use self::redis::RedisConfig;

/// `[engine]`: which engine keeps history and presence and carries publications between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// `memory` (one node, the default) or `redis`.
    #[serde(rename = "type")]
    pub kind: EngineKind,
    /// How long an idempotency key (API `idempotency_key`, queue entries) is remembered (default 5 min).
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
    /// Used when `type = "redis"`.
    pub redis: RedisConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            kind: EngineKind::Memory,
            idempotency_window: Duration::from_secs(300),
            redis: RedisConfig::default(),
        }
    }
}

/// The engine implementations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// In process memory: a single node.
    #[default]
    Memory,
    /// Redis or Redis Cluster: any number of nodes.
    Redis,
}

/// Who a publication came from, or who is present in a channel.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClientInfo {
    /// The user id; empty for anonymous connections.
    pub user: String,
    /// The connection (client) id.
    pub client: String,
    /// Connection info as compact JSON (from the connect step), if any.
    pub conn_info: Option<Bytes>,
    /// Channel info as compact JSON (from the subscribe step), if any.
    pub chan_info: Option<Bytes>,
}

/// One message in a channel.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Publication {
    /// Position in the channel's stream, from 1; 0 when the channel keeps no history.
    pub offset: u64,
    /// The payload: compact JSON text with no raw newline.
    pub data: Bytes,
    /// The publishing client, when a client published it.
    pub info: Option<ClientInfo>,
    /// Free-form string tags, passed through to subscribers.
    pub tags: BTreeMap<String, String>,
    /// Publish time, unix milliseconds.
    pub time_ms: i64,
}

/// A position in a channel's stream: the offset of a publication and the epoch of the stream it is in.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamPosition {
    /// Offset of the last publication (the stream top), 0 for an empty stream.
    pub offset: u64,
    /// Identifies one life of the stream; changes when the stream is lost or recreated.
    pub epoch: String,
}

/// How a channel keeps history; absent when the channel's namespace has history off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Publications kept at most (ring buffer).
    pub size: usize,
    /// How long a publication is kept.
    pub ttl: Duration,
    /// How long the stream's meta data (top offset, epoch) outlives its last publication.
    pub meta_ttl: Duration,
}

/// Options of one publish.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishOptions {
    /// Append to the channel's stream with these options; `None` publishes without history (offset 0).
    pub history: Option<HistoryOptions>,
    /// Publish at most once per key within a window.
    pub idempotency: Option<Idempotency>,
}

/// An idempotency key: a publish repeating one already published in the channel within `window` is not
/// published again, and answers the first one's position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    /// Chosen by the publisher (or derived from a queue entry id).
    pub key: String,
    /// How long the key is remembered.
    pub window: Duration,
}

/// Which publications a history query returns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryFilter {
    /// Only publications after this position (before it when `reverse`). A non-empty epoch that differs
    /// from the stream's epoch is [`EngineError::UnrecoverablePosition`].
    pub since: Option<StreamPosition>,
    /// At most this many publications; `None` means all that are kept. `Some(0)` returns only the top.
    pub limit: Option<usize>,
    /// Newest first.
    pub reverse: bool,
}

/// The answer to a history query.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryResult {
    /// The selected publications, in the requested order.
    pub publications: Vec<Arc<Publication>>,
    /// The stream's current top and epoch.
    pub position: StreamPosition,
}

/// Counts of who is present in a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PresenceStats {
    /// Connections present.
    pub num_clients: u32,
    /// Distinct user ids among them.
    pub num_users: u32,
}

/// Engine failures, as values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// A `since` epoch that is not the stream's current epoch.
    #[error("unrecoverable position")]
    UnrecoverablePosition,
    /// The backing service cannot be reached now; the caller may retry.
    #[error("engine temporarily unavailable: {0}")]
    Unavailable(String),
    /// The engine will not store this (a bounded store is full).
    #[error("refused: {0}")]
    Refused(String),
}

/// Receives what a [`Broker`] delivers on this node. Implemented by the hub.
///
/// Calls for one channel arrive in offset order and never concurrently, so the handler must not block: it
/// hands bytes to bounded queues and returns.
pub trait BrokerEventHandler: Send + Sync + 'static {
    /// A publication (with its stream position when the channel keeps history).
    fn handle_publication(
        &self,
        channel: &str,
        publication: Arc<Publication>,
        position: StreamPosition,
    );
    /// A client joined the channel.
    fn handle_join(&self, channel: &str, info: Arc<ClientInfo>);
    /// A client left the channel.
    fn handle_leave(&self, channel: &str, info: Arc<ClientInfo>);
    /// The channel's stream has reached at least `position`. Engines whose delivery can lose publications
    /// (Redis pub/sub across a reconnect) report it after reconnecting and periodically; a handler that
    /// delivered less, in two reports in a row, or a different epoch, knows publications were lost. A
    /// single report may race a publication still on its way, so one alone proves nothing.
    fn handle_position(&self, _channel: &str, _position: StreamPosition) {}
}

/// Publish and cross-node fan-out.
///
/// Delivery is at most once: a publication reaches the handler of every node that is subscribed to the
/// channel, in offset order per channel. Appending to history and assigning the offset happen atomically
/// with respect to other publishes on the same channel, and delivery order equals offset order, so a
/// subscriber that sees offsets jump knows it missed something.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Publishes: appends to the channel's stream when `opts.history` is set (offset = top + 1), then
    /// delivers to every subscribed node. Returns the publication's position (offset 0 without history).
    /// With `opts.idempotency`, a repeat within the window is neither stored nor delivered and returns the
    /// first publish's position.
    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        opts: &PublishOptions,
    ) -> Result<StreamPosition, EngineError>;
    /// Delivers a join event to every subscribed node.
    async fn publish_join(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError>;
    /// Delivers a leave event to every subscribed node.
    async fn publish_leave(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError>;
    /// This node now has local subscribers for the channel and wants its publications.
    async fn subscribe(&self, channel: &str) -> Result<(), EngineError>;
    /// This node has no local subscriber for the channel any more.
    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError>;
    /// Whether this node can publish and hear publications now; `Err` says what is down. Asked by the
    /// readiness check (every few seconds per probe), so it may make one round trip. An engine with
    /// nothing that can fail (the memory engine) is always ready.
    async fn ready(&self) -> Result<(), EngineError> {
        Ok(())
    }
}

/// Channel streams: offsets, epochs and the publications kept.
#[async_trait]
pub trait History: Send + Sync + 'static {
    /// Reads the channel's stream, creating it empty (with a fresh epoch) on first access.
    async fn history(
        &self,
        channel: &str,
        filter: &HistoryFilter,
        opts: &HistoryOptions,
    ) -> Result<HistoryResult, EngineError>;
    /// Drops the channel's publications; the stream keeps its top offset and epoch.
    async fn remove_history(&self, channel: &str) -> Result<(), EngineError>;
}

/// Who is subscribed to a channel, across nodes.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Records a client as present (or refreshes it).
    async fn add_presence(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError>;
    /// Removes a client, handing back its entry if it was there: of callers racing to remove one entry,
    /// exactly one gets it (a crashed node's estate is settled by whoever takes each entry).
    async fn remove_presence(
        &self,
        channel: &str,
        client: &str,
    ) -> Result<Option<ClientInfo>, EngineError>;
    /// Everyone present, by client id.
    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, EngineError>;
    /// Counts of who is present.
    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, EngineError>;
    /// Which of `users` have a client present, without reading everyone.
    async fn users_present(
        &self,
        channel: &str,
        users: &[String],
    ) -> Result<HashSet<String>, EngineError>;
    /// Publishes node `node`'s subscriber counts for other nodes to read: each of `changed` gets its count
    /// (0 takes the channel out); the node's whole set is kept for `ttl` from now, then dropped unless
    /// published again (a node that stops publishing is gone).
    async fn publish_counts(
        &self,
        node: &str,
        changed: &[(String, u64)],
        ttl: Duration,
    ) -> Result<(), EngineError>;
    /// Node `node`'s published counts, by channel.
    async fn node_counts(&self, node: &str) -> Result<HashMap<String, u64>, EngineError>;
    /// Node `node`'s published count of one channel (0 when it has none).
    async fn node_count(&self, node: &str, channel: &str) -> Result<u64, EngineError>;
}

/// Plugins' key-value state shared by every node: entries by scope (a plugin's name) and key.
///
/// Each call is atomic on its own entry (of callers on any nodes incrementing one key, none is lost);
/// there are no transactions across entries. An entry's expiry is given when it is written.
#[async_trait]
pub trait SharedState: Send + Sync + 'static {
    /// The value under `key`, unless absent or expired.
    async fn state_get(&self, scope: &str, key: &str) -> Result<Option<Vec<u8>>, EngineError>;
    /// Stores `value` under `key`, expiring after `ttl` (zero: never). [`EngineError::Refused`] when a
    /// bounded store has no room for it.
    async fn state_set(
        &self,
        scope: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), EngineError>;
    /// Adds `delta` to the number under `key`, kept as decimal text (absent, expired or not a number:
    /// 0; the sum saturates at the bounds of `i64`), and returns the sum. A new entry expires after `ttl`
    /// (zero: never); an existing one keeps its expiry.
    async fn state_incr(
        &self,
        scope: &str,
        key: &str,
        delta: i64,
        ttl: Duration,
    ) -> Result<i64, EngineError>;
    /// Removes `key`; whether it was there.
    async fn state_delete(&self, scope: &str, key: &str) -> Result<bool, EngineError>;
}

/// The four seams as one cheaply cloned value.
#[derive(Clone)]
pub struct Engine {
    /// Publish and fan-out.
    pub broker: Arc<dyn Broker>,
    /// Streams.
    pub history: Arc<dyn History>,
    /// Presence.
    pub presence: Arc<dyn Presence>,
    /// Plugins' shared state.
    pub state: Arc<dyn SharedState>,
    /// Whether other nodes share this engine, so what a node leaves in it outlives the node (a crashed
    /// node's presence is then settled by a survivor, see [`crate::estate`]).
    pub shared: bool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// The single-node in-memory engine delivering to `handler`, its plugins' shared state bounded by
    /// `state` per plugin. Inside a tokio runtime, a background task sweeps expired streams every few
    /// seconds for as long as the engine lives.
    pub fn memory(handler: Arc<dyn BrokerEventHandler>, state: keyvalue::StoreBounds) -> Self {
        let engine = Arc::new(memory::MemoryEngine::new(handler));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&engine);
            runtime.spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(5));
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    match weak.upgrade() {
                        Some(engine) => engine.sweep(),
                        None => break,
                    }
                }
            });
        }
        Self {
            broker: engine.clone(),
            history: engine.clone(),
            presence: engine,
            state: Arc::new(keyvalue::Stores::new(state)),
            shared: false,
        }
    }
}

impl Engine {
    /// The engine `config` selects, delivering to `handler` and counted into `metrics`; the Redis engine
    /// connects first and fails with the reason when Redis cannot be reached. `state` bounds the memory
    /// engine's shared state per plugin (Redis's own memory bounds Redis's).
    pub async fn from_config(
        config: &EngineConfig,
        state: keyvalue::StoreBounds,
        handler: Arc<dyn BrokerEventHandler>,
        metrics: &crate::metrics::EngineMetrics,
    ) -> Result<Self, EngineError> {
        let engine = match config.kind {
            EngineKind::Memory => Self::memory(handler, state),
            EngineKind::Redis => {
                let engine =
                    redis::RedisEngine::connect(&config.redis, handler, Arc::new(now_ms)).await?;
                engine.count_lost_links(metrics.pubsub_reconnects.clone());
                Self {
                    broker: engine.clone(),
                    history: engine.clone(),
                    presence: engine.clone(),
                    state: engine,
                    shared: true,
                }
            }
        };
        Ok(engine.instrumented(metrics))
    }

    /// The same engine with every call counted and timed by operation.
    pub fn instrumented(self, metrics: &crate::metrics::EngineMetrics) -> Self {
        instrumented::Instrumented::wrap(self, metrics)
    }
}

/// A duration in whole milliseconds, saturating: how TTLs go to the stores.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Current unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
