//! `[queue]`: which Redis Streams Herald consumes, and how.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::{EngineConfig, EngineKind};

/// `[queue]`: which Redis Streams Herald consumes and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Consume the streams (default off).
    pub enabled: bool,
    /// `redis://` URLs of the Redis holding the streams; empty (the default) means `[engine.redis]`'s
    /// addresses and `cluster` flag, which needs `engine.type = "redis"`.
    pub addresses: Vec<String>,
    /// The `addresses` are Redis Cluster nodes (only read when `addresses` is set).
    pub cluster: bool,
    /// Stream keys to consume (default `["herald:queue"]`); each gets its own consumer task, publishing
    /// its entries in order.
    pub streams: Vec<String>,
    /// Consumer group, shared by every node so each entry goes to one of them (default `herald`).
    pub group: String,
    /// This node's consumer name in the group; empty (the default) means `<hostname>-<pid>`. A stable
    /// name lets a restarted node take its own unacknowledged entries back at once.
    pub consumer: String,
    /// Where entries that can never be published go, with the reason (default `herald:queue:dead`).
    pub dead_letter_stream: String,
    /// The dead-letter stream is trimmed to about this many entries; 0 keeps all (default 100000).
    pub dead_letter_max_len: u64,
    /// Delete each entry once it is acknowledged, so the stream holds only the backlog (default true).
    /// Turn off when other consumer groups read the same streams, and trim them with `XADD … MAXLEN`.
    pub delete_acknowledged: bool,
    /// Entries read per round trip (default 100).
    pub batch: usize,
    /// How long a read waits for new entries (`XREADGROUP BLOCK`, default 1 s); also the longest a
    /// shutdown waits for the consumer.
    #[serde(with = "humantime_serde")]
    pub block: Duration,
    /// An entry another consumer has held this long without acknowledging it is taken over (default 30 s).
    /// Must exceed the time one batch takes to publish, and be well below `engine.idempotency_window`.
    #[serde(with = "humantime_serde")]
    pub claim_idle: Duration,
    /// Longest wait between retries while Redis or the engine is failing (default 5 s).
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Times this node tries an entry whose publish fails temporarily while the engine is reachable (a
    /// plugin failing on it, for instance) before dead-lettering it; 0 retries for ever (default 10, about
    /// 15 s with the default backoff). Engine outages never count: the entry waits for the engine.
    pub max_attempts: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            addresses: Vec::new(),
            cluster: false,
            streams: vec!["herald:queue".into()],
            group: "herald".into(),
            consumer: String::new(),
            dead_letter_stream: "herald:queue:dead".into(),
            dead_letter_max_len: 100_000,
            delete_acknowledged: true,
            batch: 100,
            block: Duration::from_secs(1),
            claim_idle: Duration::from_secs(30),
            max_backoff: Duration::from_secs(5),
            max_attempts: 10,
        }
    }
}

impl QueueConfig {
    /// Checks what serde cannot, given the engine the queue may borrow its Redis from; the error names the
    /// key. Only meaningful when `enabled`.
    pub fn validate(&self, engine: &EngineConfig) -> Result<(), String> {
        if self.addresses.is_empty() && engine.kind != EngineKind::Redis {
            return Err(
                "queue.addresses: set the Redis holding the streams, or use engine.type = \"redis\" (whose addresses the queue then shares)"
                    .into(),
            );
        }
        if let Some(bad) = self
            .addresses
            .iter()
            .find(|a| redis::IntoConnectionInfo::into_connection_info(a.as_str()).is_err())
        {
            return Err(format!("queue.addresses: {bad:?} is not a redis:// URL"));
        }
        if self.streams.is_empty() || self.streams.iter().any(String::is_empty) {
            return Err("queue.streams: at least one non-empty stream key is needed".into());
        }
        for (i, stream) in self.streams.iter().enumerate() {
            if self.streams[..i].contains(stream) {
                return Err(format!("queue.streams: {stream:?} is listed twice"));
            }
        }
        if self.dead_letter_stream.is_empty() || self.streams.contains(&self.dead_letter_stream) {
            return Err(
                "queue.dead_letter_stream: must be set and not one of queue.streams".into(),
            );
        }
        if self.group.is_empty() {
            return Err("queue.group: must not be empty".into());
        }
        if !(1..=10_000).contains(&self.batch) {
            return Err("queue.batch: must be between 1 and 10000".into());
        }
        if self.block.is_zero() || self.block > Duration::from_secs(10) {
            // BLOCK 0 would wait forever, and a shutdown waits for the read in progress.
            return Err("queue.block: must be greater than 0 and at most 10s".into());
        }
        if self.claim_idle.is_zero() || self.claim_idle >= engine.idempotency_window {
            // A reclaimed entry that its first consumer had published is only recognised as a repeat while
            // its idempotency key is remembered.
            return Err(format!(
                "queue.claim_idle: must be greater than 0 and less than engine.idempotency_window ({:?})",
                engine.idempotency_window
            ));
        }
        if self.max_backoff.is_zero() {
            return Err("queue.max_backoff: must be greater than 0".into());
        }
        Ok(())
    }
}
