//! `[http_api]`: the HTTP server API's key and limits.

use serde::{Deserialize, Serialize};

/// The `[http_api]` section. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpApiConfig {
    /// The API key; empty turns the API off (every request 401) unless `insecure` is set.
    pub key: String,
    /// Accept requests without a key. For local development only.
    pub insecure: bool,
    /// Largest request body in bytes (default 1 MiB; larger gets 413).
    pub max_body_size: usize,
}

impl std::fmt::Debug for HttpApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = if self.key.is_empty() {
            ""
        } else {
            "[redacted]"
        };
        f.debug_struct("HttpApiConfig")
            .field("key", &key)
            .field("insecure", &self.insecure)
            .field("max_body_size", &self.max_body_size)
            .finish()
    }
}

impl Default for HttpApiConfig {
    fn default() -> Self {
        Self {
            key: String::new(),
            insecure: false,
            max_body_size: 1024 * 1024,
        }
    }
}
