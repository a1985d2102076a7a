//! `[http_api]`: the HTTP server API's key and limits.

use serde::{Deserialize, Serialize};

use super::Secret;

/// The `[http_api]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpApiConfig {
    /// The API key; empty turns the API off (every request 401) unless `insecure` is set.
    pub key: Secret,
    /// Accept requests without a key. For local development only.
    pub insecure: bool,
    /// Largest request body in bytes (default 1 MiB; larger gets 413).
    pub max_body_size: usize,
}

impl Default for HttpApiConfig {
    fn default() -> Self {
        Self {
            key: Secret::default(),
            insecure: false,
            max_body_size: 1024 * 1024,
        }
    }
}
