//! `[queue]`: which Redis Streams Herald consumes, and how.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::redis::first_invalid_url;
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
    pub fn validate(&self, engine: &EngineConfig) -> Result<(), QueueConfigError> {
        if self.addresses.is_empty() && engine.kind != EngineKind::Redis {
            return Err(QueueConfigError::NoRedis);
        }
        if let Some(bad) = first_invalid_url(&self.addresses) {
            return Err(QueueConfigError::InvalidAddress(bad.clone()));
        }
        if self.streams.is_empty() || self.streams.iter().any(String::is_empty) {
            return Err(QueueConfigError::NoStreams);
        }
        for (i, stream) in self.streams.iter().enumerate() {
            if self.streams[..i].contains(stream) {
                return Err(QueueConfigError::DuplicateStream(stream.clone()));
            }
        }
        if self.dead_letter_stream.is_empty() || self.streams.contains(&self.dead_letter_stream) {
            return Err(QueueConfigError::DeadLetterStream);
        }
        if self.group.is_empty() {
            return Err(QueueConfigError::NoGroup);
        }
        if !(1..=10_000).contains(&self.batch) {
            return Err(QueueConfigError::Batch);
        }
        if self.block.is_zero() || self.block > Duration::from_secs(10) {
            // BLOCK 0 would wait forever, and a shutdown waits for the read in progress.
            return Err(QueueConfigError::Block);
        }
        if self.claim_idle.is_zero() || self.claim_idle >= engine.idempotency_window {
            // A reclaimed entry that its first consumer had published is only recognised as a repeat while
            // its idempotency key is remembered.
            return Err(QueueConfigError::ClaimIdle {
                idempotency_window: engine.idempotency_window,
            });
        }
        if self.max_backoff.is_zero() {
            return Err(QueueConfigError::MaxBackoff);
        }
        Ok(())
    }
}

/// Why `[queue]` is refused; each names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueConfigError {
    /// No `addresses`, and no Redis engine to borrow them from.
    #[error(
        "queue.addresses: set the Redis holding the streams, or use engine.type = \"redis\" (whose addresses the queue then shares)"
    )]
    NoRedis,
    /// An address is not a `redis://` URL.
    #[error("queue.addresses: {0:?} is not a redis:// URL")]
    InvalidAddress(String),
    /// No stream, or an empty stream key.
    #[error("queue.streams: at least one non-empty stream key is needed")]
    NoStreams,
    /// A stream is listed more than once.
    #[error("queue.streams: {0:?} is listed twice")]
    DuplicateStream(String),
    /// The dead-letter stream is empty or one of the consumed streams.
    #[error("queue.dead_letter_stream: must be set and not one of queue.streams")]
    DeadLetterStream,
    /// The consumer group name is empty.
    #[error("queue.group: must not be empty")]
    NoGroup,
    /// `batch` is outside 1–10000.
    #[error("queue.batch: must be between 1 and 10000")]
    Batch,
    /// `block` is zero or over 10 s.
    #[error("queue.block: must be greater than 0 and at most 10s")]
    Block,
    /// `claim_idle` is zero, or not below the idempotency window.
    #[error(
        "queue.claim_idle: must be greater than 0 and less than engine.idempotency_window ({idempotency_window:?})"
    )]
    ClaimIdle {
        /// The engine's window.
        idempotency_window: Duration,
    },
    /// `max_backoff` is zero.
    #[error("queue.max_backoff: must be greater than 0")]
    MaxBackoff,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_needs_a_redis_and_a_claim_idle_inside_the_idempotency_window() {
        let memory = EngineConfig::default();
        let queue = QueueConfig {
            enabled: true,
            ..QueueConfig::default()
        };
        assert_eq!(queue.validate(&memory), Err(QueueConfigError::NoRedis));
        let redis = EngineConfig {
            kind: EngineKind::Redis,
            ..EngineConfig::default()
        };
        queue.validate(&redis).unwrap();
        let own = QueueConfig {
            addresses: vec!["redis://127.0.0.1:7000".into()],
            ..queue.clone()
        };
        own.validate(&memory).unwrap();
        let late = QueueConfig {
            claim_idle: memory.idempotency_window,
            ..own.clone()
        };
        let error = late.validate(&memory).unwrap_err();
        assert_eq!(
            error,
            QueueConfigError::ClaimIdle {
                idempotency_window: memory.idempotency_window
            }
        );
        assert!(
            error.to_string().starts_with("queue.claim_idle: "),
            "{error}"
        );
        let looping = QueueConfig {
            dead_letter_stream: "herald:queue".into(),
            ..own.clone()
        };
        assert_eq!(
            looping.validate(&memory),
            Err(QueueConfigError::DeadLetterStream)
        );
        let twice = QueueConfig {
            streams: vec!["a".into(), "b".into(), "a".into()],
            ..own
        };
        assert_eq!(
            twice.validate(&memory),
            Err(QueueConfigError::DuplicateStream("a".into()))
        );
    }
}
