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
