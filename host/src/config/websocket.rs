//! `[websocket]`: buffer sizes, message limits and compression of every WebSocket connection.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The `[websocket]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebsocketConfig {
    /// Largest inbound message in bytes; bigger closes the connection with 1009 (default 64 KiB).
    pub max_message_size: usize,
    /// Read buffer per connection in bytes, also the most read from the socket at once (default 1 KiB:
    /// client commands are small, and every connection holds this buffer all its life; the library
    /// default is 128 KiB). A bigger message takes several reads.
    pub read_buffer_size: usize,
    /// Most bytes of queued frames joined into one message and one socket write (default 16 KiB; a
    /// bigger frame goes alone). Bigger means fewer writes under load, but every connection that once had
    /// that much queued keeps a write buffer of this size: the WebSocket library never shrinks it.
    pub write_buffer_size: usize,
    /// How long the writer waits for the socket to accept a write before dropping the client (default 5 s).
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Browser origins allowed to open WebSockets besides the server's own host, as `*` patterns
    /// (`"https://*.example.com"`, `"*"` for any). Requests without an `Origin` header (non-browser clients)
    /// are always allowed. Default: none.
    pub allowed_origins: Vec<String>,
    /// Serve `/conformance/echo`, an endpoint that echoes every message back, for the Autobahn|Testsuite
    /// (`tests/autobahn/run`). Never on in production: it answers anyone (default off).
    pub conformance_echo: bool,
    /// permessage-deflate (RFC 7692).
    pub compression: CompressionConfig,
}

/// `[websocket.compression]`: permessage-deflate, negotiated with clients that offer it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompressionConfig {
    /// Accept clients' permessage-deflate offers (default on: shared compression saves about three
    /// quarters of the bytes of JSON at no measurable server CPU, see BENCHMARKS.md).
    pub enabled: bool,
    /// zlib level, 1 (fastest) to 9 (smallest) (default 1).
    pub level: u32,
    /// Messages shorter than this many bytes go uncompressed (default 256).
    pub min_size: usize,
    /// Keep each connection's compression context from message to message (`server_no_context_takeover`
    /// is then not asked for): better ratios for chatty one-to-one traffic, but every message is compressed
    /// per connection, and each connection holds its own compressor (~300 KiB) all its life. Off (the
    /// default), a publication is compressed once and the same bytes go to every subscriber.
    pub context_takeover: bool,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            level: 1,
            min_size: 256,
            context_takeover: false,
        }
    }
}

/// Why `[websocket.compression]` is refused.
#[derive(Debug, thiserror::Error)]
pub enum CompressionConfigError {
    /// `level` is not 1–9.
    #[error("websocket.compression.level: must be 1 to 9, got {0}")]
    Level(u32),
}

impl CompressionConfig {
    /// Checks the section.
    pub fn validate(&self) -> Result<(), CompressionConfigError> {
        if !(1..=9).contains(&self.level) {
            return Err(CompressionConfigError::Level(self.level));
        }
        Ok(())
    }
}

impl Default for WebsocketConfig {
    fn default() -> Self {
        Self {
            max_message_size: 64 * 1024,
            read_buffer_size: 1024,
            write_buffer_size: 16 * 1024,
            write_timeout: Duration::from_secs(5),
            allowed_origins: Vec::new(),
            conformance_echo: false,
            compression: CompressionConfig::default(),
        }
    }
}
