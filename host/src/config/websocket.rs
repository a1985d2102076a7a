//! `[websocket]`: buffer sizes and message limits of every WebSocket connection.

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
        }
    }
}
