//! `[metrics]`: where `/metrics` is served and the key scrapers present.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::Secret;

/// The `[metrics]` section.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `GET /metrics` in the Prometheus text format (default off).
    pub enabled: bool,
    /// A bearer token scrapers must send (`Authorization: Bearer <key>`); empty means none (default).
    pub key: Secret,
    /// Serve `/metrics` on this address of its own (e.g. `0.0.0.0:9100`, reachable only inside the
    /// cluster) instead of the main one; unset means the main address (default).
    pub address: Option<SocketAddr>,
}
