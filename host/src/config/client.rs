//! `[client]`: how client connections are authenticated, kept alive and limited.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The `[client]` section: how client connections are authenticated, kept alive and limited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Clients may connect without a token, as anonymous users (user id ""). Default false.
    pub allow_anonymous: bool,
    /// Interval between server pings, advertised to clients (default 25 s).
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long to wait for the pong after a ping before closing with 3012 (default 8 s).
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// How long an opened connection may wait before sending `connect` (default 10 s, then 3502).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Bytes a connection may have queued for sending before it is closed as slow (3008). Default 1 MiB.
    pub max_queue_bytes: usize,
    /// Channels one connection may subscribe to (default 128, then error 106).
    pub max_channels: usize,
    /// Most publications a history command returns (default 300).
    pub history_max_publication_limit: usize,
    /// Most publications a recovery returns; more missed means "not recovered" (default 300).
    pub recovery_max_publication_limit: usize,
    /// How long after its expiry a connection (3005) or subscription (unsubscribe 2501) that did not
    /// refresh is ended (default 25 s).
    #[serde(with = "humantime_serde")]
    pub expired_close_delay: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            allow_anonymous: false,
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(8),
            connect_timeout: Duration::from_secs(10),
            max_queue_bytes: 1024 * 1024,
            max_channels: 128,
            history_max_publication_limit: 300,
            recovery_max_publication_limit: 300,
            expired_close_delay: Duration::from_secs(25),
        }
    }
}

impl ClientConfig {
    /// Checks the timers and the queue limit; the error names the key.
    pub fn validate(&self) -> Result<(), ClientConfigError> {
        if self.ping_interval.is_zero() {
            return Err(ClientConfigError::PingInterval);
        }
        if self.pong_timeout.is_zero() || self.pong_timeout >= self.ping_interval {
            return Err(ClientConfigError::PongTimeout {
                ping_interval: self.ping_interval,
            });
        }
        if self.connect_timeout.is_zero() {
            return Err(ClientConfigError::ConnectTimeout);
        }
        if self.max_queue_bytes < 1024 {
            return Err(ClientConfigError::MaxQueueBytes);
        }
        Ok(())
    }
}

/// Why `[client]` is refused; each names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientConfigError {
    /// `ping_interval` is zero.
    #[error("client.ping_interval: must be greater than 0")]
    PingInterval,
    /// `pong_timeout` is zero, or would not expire before the next ping.
    #[error(
        "client.pong_timeout: must be greater than 0 and less than client.ping_interval ({ping_interval:?})"
    )]
    PongTimeout {
        /// The configured ping interval.
        ping_interval: Duration,
    },
    /// `connect_timeout` is zero.
    #[error("client.connect_timeout: must be greater than 0")]
    ConnectTimeout,
    /// `max_queue_bytes` is under 1 KiB.
    #[error("client.max_queue_bytes: must be at least 1024")]
    MaxQueueBytes,
}
