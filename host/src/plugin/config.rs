//! `[plugins]`: the plugin folder, the limits every plugin runs under (with per-plugin overrides) and each
//! plugin's configuration.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::keyvalue::StoreBounds;

/// The least linear memory a plugin may be given, overall or by an override.
const MIN_MEMORY: usize = 1024 * 1024;

/// Bounds of `max_instances`: at least 4 calls of a hook at once; at most what the address space holds
/// (each instance reserves two memories of several GiB of address space).
const MIN_INSTANCES: u32 = 16;
const MAX_INSTANCES: u32 = 4096;

/// Per-plugin limit overrides (`[plugins.limits.<name>]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginLimits {
    /// Deadline of one hook call.
    #[serde(with = "humantime_serde")]
    pub deadline: Option<Duration>,
    /// Linear memory of one instance, in bytes.
    pub memory_limit: Option<usize>,
}

/// The `[plugins]` section. Its `Debug` shows which plugins are configured, never their configuration
/// (it holds their secrets).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// Folder of `.wasm` plugins; empty turns plugins off.
    pub dir: String,
    /// Where compiled plugins are cached (default: `<dir>/.cache`); empty string = default.
    pub cache_dir: String,
    /// Reload plugins when their files change (default true).
    pub watch: bool,
    /// Deadline of one hook call (default 10 ms).
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// Linear memory one plugin instance may use, in bytes (default 16 MiB).
    pub memory_limit: usize,
    /// Warm instances kept per plugin (default 16).
    pub max_idle_instances: usize,
    /// Instances of all plugins at once (default 512; 16 to 4096). A hook waiting on its backend holds
    /// one, and a quarter of them may run one hook at once: connects through a backend answering in
    /// 200 ms are decided at up to `max_instances / 4 / 0.2 s` a second. Each costs address space (its
    /// memory's reservation) and, while used, its resident memory.
    pub max_instances: u32,
    /// Entries one plugin's node-local state holds at most (default 10,000).
    pub state_max_entries: usize,
    /// Bytes (keys, values and 64 per entry) one plugin's node-local state holds at most (default 4 MiB).
    /// Both bounds apply to a plugin's `cluster-state` too on the memory engine (one node).
    pub state_max_bytes: usize,
    /// Largest value (and key) a plugin may write to its `cluster-state` (default 64 KiB).
    pub cluster_state_max_value_bytes: usize,
    /// Longest a `cluster-state` entry lives (default 1 day): a longer TTL, or none, is cut to this, so
    /// what a plugin leaves in Redis always expires.
    #[serde(with = "humantime_serde")]
    pub cluster_state_max_ttl: Duration,
    /// Configuration passed to each plugin's `init`, by plugin name. A `<file>.toml` beside the plugin
    /// takes precedence.
    pub config: BTreeMap<String, serde_json::Value>,
    /// Limit overrides by plugin name.
    pub limits: BTreeMap<String, PluginLimits>,
    /// Outbound HTTP by plugin name (contract 0.2); a plugin without a section may reach nothing.
    pub http: BTreeMap<String, super::http::PluginHttpConfig>,
}

impl std::fmt::Debug for PluginsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let configured: Vec<&String> = self.config.keys().collect();
        f.debug_struct("PluginsConfig")
            .field("dir", &self.dir)
            .field("cache_dir", &self.cache_dir)
            .field("watch", &self.watch)
            .field("deadline", &self.deadline)
            .field("memory_limit", &self.memory_limit)
            .field("max_idle_instances", &self.max_idle_instances)
            .field("max_instances", &self.max_instances)
            .field("state_max_entries", &self.state_max_entries)
            .field("state_max_bytes", &self.state_max_bytes)
            .field(
                "cluster_state_max_value_bytes",
                &self.cluster_state_max_value_bytes,
            )
            .field("cluster_state_max_ttl", &self.cluster_state_max_ttl)
            .field("config (redacted) for", &configured)
            .field("limits", &self.limits)
            .field("http", &self.http)
            .finish()
    }
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            dir: String::new(),
            cache_dir: String::new(),
            watch: true,
            deadline: Duration::from_millis(10),
            memory_limit: 16 * 1024 * 1024,
            max_idle_instances: 16,
            max_instances: 512,
            state_max_entries: StoreBounds::default().max_entries,
            state_max_bytes: StoreBounds::default().max_bytes,
            cluster_state_max_value_bytes: 64 * 1024,
            cluster_state_max_ttl: Duration::from_secs(86_400),
            config: BTreeMap::new(),
            limits: BTreeMap::new(),
            http: BTreeMap::new(),
        }
    }
}

impl PluginsConfig {
    /// What one plugin's node-local state (and, on the memory engine, its cluster state) holds at most.
    pub fn state_bounds(&self) -> StoreBounds {
        StoreBounds {
            max_entries: self.state_max_entries,
            max_bytes: self.state_max_bytes,
        }
    }

    /// Checks the limits and the folder; the error names the key.
    pub fn validate(&self) -> Result<(), PluginsConfigError> {
        if self.deadline.is_zero() {
            return Err(PluginsConfigError::Deadline);
        }
        if !(MIN_INSTANCES..=MAX_INSTANCES).contains(&self.max_instances) {
            return Err(PluginsConfigError::MaxInstances);
        }
        if self.cluster_state_max_ttl.is_zero() {
            return Err(PluginsConfigError::ClusterStateTtl);
        }
        if self.memory_limit < MIN_MEMORY {
            return Err(PluginsConfigError::MemoryLimit);
        }
        for (name, limits) in &self.limits {
            if limits.deadline.is_some_and(|d| d.is_zero()) {
                return Err(PluginsConfigError::PluginDeadline {
                    plugin: name.clone(),
                });
            }
            if limits.memory_limit.is_some_and(|m| m < MIN_MEMORY) {
                return Err(PluginsConfigError::PluginMemoryLimit {
                    plugin: name.clone(),
                });
            }
        }
        for (name, http) in &self.http {
            http.validate()
                .map_err(|reason| PluginsConfigError::PluginHttp {
                    plugin: name.clone(),
                    reason,
                })?;
        }
        if !self.dir.is_empty() && !Path::new(&self.dir).is_dir() {
            return Err(PluginsConfigError::NotAFolder {
                dir: self.dir.clone(),
            });
        }
        Ok(())
    }
}

/// Why `[plugins]` is refused; each names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginsConfigError {
    /// `deadline` is zero.
    #[error("plugins.deadline: must be greater than 0")]
    Deadline,
    /// `max_instances` is out of its range.
    #[error("plugins.max_instances: must be between {MIN_INSTANCES} and {MAX_INSTANCES}")]
    MaxInstances,
    /// `cluster_state_max_ttl` is zero.
    #[error("plugins.cluster_state_max_ttl: must be greater than 0")]
    ClusterStateTtl,
    /// `memory_limit` is under 1 MiB.
    #[error("plugins.memory_limit: must be at least 1 MiB")]
    MemoryLimit,
    /// A plugin's `deadline` override is zero.
    #[error("plugins.limits.{plugin}.deadline: must be greater than 0")]
    PluginDeadline {
        /// The plugin's name.
        plugin: String,
    },
    /// A plugin's `memory_limit` override is under 1 MiB.
    #[error("plugins.limits.{plugin}.memory_limit: must be at least 1 MiB")]
    PluginMemoryLimit {
        /// The plugin's name.
        plugin: String,
    },
    /// A plugin's `http` section is invalid.
    #[error("plugins.http.{plugin}: {reason}")]
    PluginHttp {
        /// The plugin's name.
        plugin: String,
        /// What is wrong.
        reason: String,
    },
    /// `dir` is set but is not a folder.
    #[error("plugins.dir: {dir} is not a folder")]
    NotAFolder {
        /// The configured folder.
        dir: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_and_cluster_state_bounds_are_checked() {
        let with = |edit: fn(&mut PluginsConfig)| {
            let mut config = PluginsConfig::default();
            edit(&mut config);
            config.validate()
        };
        assert_eq!(with(|_| {}), Ok(()));
        assert_eq!(with(|c| c.max_instances = MIN_INSTANCES), Ok(()));
        assert_eq!(with(|c| c.max_instances = MAX_INSTANCES), Ok(()));
        assert_eq!(
            with(|c| c.max_instances = MIN_INSTANCES - 1),
            Err(PluginsConfigError::MaxInstances)
        );
        assert_eq!(
            with(|c| c.max_instances = MAX_INSTANCES + 1),
            Err(PluginsConfigError::MaxInstances)
        );
        assert_eq!(
            with(|c| c.cluster_state_max_ttl = Duration::ZERO),
            Err(PluginsConfigError::ClusterStateTtl)
        );
    }
}
