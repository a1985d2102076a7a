//! `[admin]`: the admin web page — whether it is served and the password that opens it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Secret;

/// The `[admin]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve the admin page at `/admin` (default off).
    pub enabled: bool,
    /// The password that opens it. Required unless Herald listens on a loopback address only (then an
    /// empty password means no login, for a developer's machine).
    pub password: Secret,
    /// How long a login lasts (default 12 h); every node restart also ends it.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            password: Secret::default(),
            session_ttl: Duration::from_secs(12 * 3600),
        }
    }
}
