//! Configuration: one TOML file (or the embedded default), every key overridable by an environment variable
//! `HERALD_<SECTION>__<KEY>` (double underscore between levels), validated once at start-up.
//!
//! Each section's struct lives beside the module it configures; this file puts them together, loads them and
//! checks what serde cannot (cross-field rules, regexes).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::api::HttpApiConfig;
use crate::channel::{ChannelConfig, Channels};
use crate::engine::{EngineConfig, EngineKind};
use crate::limits::LimitsConfig;
use crate::plugin::PluginsConfig;
use crate::queue::QueueConfig;
use crate::session::ClientConfig;
use crate::session::pusher::PusherConfig;
use crate::transport::{TlsConfig, WebsocketConfig};

/// The embedded default configuration file.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "HERALD_";

/// Herald's whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address for HTTP, the server API and WebSocket (default `127.0.0.1:8000`).
    pub address: SocketAddr,
    /// This node's name in the `info` API and in other nodes' logs; empty (the default) means the
    /// address, or `<host name>:<port>` when it listens on every interface.
    pub name: String,
    /// How long a shutdown may take before remaining connections are dropped (default 10 s).
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Client connections: authentication, heartbeats, limits.
    pub client: ClientConfig,
    /// TLS (off unless certificate and key are set).
    pub tls: TlsConfig,
    /// WebSocket transport buffers and limits.
    pub websocket: WebsocketConfig,
    /// Connection and rate limits.
    pub limits: LimitsConfig,
    /// The HTTP server API.
    pub http_api: HttpApiConfig,
    /// Channel rules and namespaces.
    pub channel: ChannelConfig,
    /// WebAssembly plugins.
    pub plugins: PluginsConfig,
    /// History, presence and cross-node fan-out: memory (one node) or Redis.
    pub engine: EngineConfig,
    /// Queue ingestion: Redis Streams whose entries Herald publishes (off by default).
    pub queue: QueueConfig,
    /// The Pusher protocol and its HTTP API (off unless an app key is set).
    pub pusher: PusherConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            address: SocketAddr::from(([127, 0, 0, 1], 8000)),
            name: String::new(),
            shutdown_timeout: Duration::from_secs(10),
            client: ClientConfig::default(),
            tls: TlsConfig::default(),
            websocket: WebsocketConfig::default(),
            limits: LimitsConfig::default(),
            http_api: HttpApiConfig::default(),
            channel: ChannelConfig::default(),
            plugins: PluginsConfig::default(),
            engine: EngineConfig::default(),
            queue: QueueConfig::default(),
            pusher: PusherConfig::default(),
        }
    }
}

/// Where configuration comes from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// The embedded default file.
    Embedded,
    /// A TOML file.
    File(&'a Path),
}

impl Config {
    /// Loads from `source`, then applies `HERALD_*` environment overrides, then validates.
    pub fn load(source: Source<'_>) -> Result<Self, ConfigError> {
        Self::load_with_env(source, Env::prefixed(ENV_PREFIX).split("__"))
    }

    fn load_with_env(source: Source<'_>, env: Env) -> Result<Self, ConfigError> {
        let figment = Figment::from(Serialized::defaults(Config::default()));
        let figment = match source {
            Source::Embedded => figment.merge(Toml::string(EMBEDDED_DEFAULT)),
            Source::File(path) => {
                if !path.is_file() {
                    return Err(ConfigError(format!(
                        "config file {} does not exist",
                        path.display()
                    )));
                }
                figment.merge(Toml::file(path))
            }
        };
        let config: Config = figment.merge(env).extract().map_err(|e| {
            ConfigError(
                e.into_iter()
                    .map(|e| describe(&e))
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML document (no environment overrides); used by tests and `check-config`.
    pub fn from_toml(toml: &str) -> Result<Self, ConfigError> {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(toml))
            .extract()
            .map_err(|e| {
                ConfigError(
                    e.into_iter()
                        .map(|e| describe(&e))
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types alone cannot express; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |msg: String| Err(ConfigError(msg));
        if self.engine.kind == EngineKind::Redis {
            self.engine.redis.validate().map_err(ConfigError)?;
        }
        if self.engine.idempotency_window.is_zero() {
            return err("engine.idempotency_window: must be greater than 0".into());
        }
        if self.queue.enabled {
            self.queue.validate(&self.engine).map_err(ConfigError)?;
        }
        self.pusher.validate().map_err(ConfigError)?;
        let c = &self.client;
        if c.ping_interval.is_zero() {
            return err("client.ping_interval: must be greater than 0".into());
        }
        if c.pong_timeout.is_zero() || c.pong_timeout >= c.ping_interval {
            return err(format!(
                "client.pong_timeout: must be greater than 0 and less than client.ping_interval ({:?})",
                c.ping_interval
            ));
        }
        if c.connect_timeout.is_zero() {
            return err("client.connect_timeout: must be greater than 0".into());
        }
        if c.max_queue_bytes < 1024 {
            return err("client.max_queue_bytes: must be at least 1024".into());
        }
        if self.websocket.max_message_size < 1024 {
            return err("websocket.max_message_size: must be at least 1024".into());
        }
        if self.http_api.max_body_size < 1024 {
            return err("http_api.max_body_size: must be at least 1024".into());
        }
        for (name, ns) in std::iter::once(("defaults", &self.channel.defaults))
            .chain(self.channel.namespaces.iter().map(|(k, v)| (k.as_str(), v)))
        {
            let key = if name == "defaults" {
                "channel.defaults".to_string()
            } else {
                format!("channel.namespaces.{name}")
            };
            if (ns.history_size > 0) == ns.history_ttl.is_zero() {
                return err(format!(
                    "{key}: history_size and history_ttl must be set together"
                ));
            }
            if (ns.force_recovery || ns.allow_recovery) && ns.history().is_none() {
                return err(format!(
                    "{key}: recovery needs history (history_size and history_ttl)"
                ));
            }
            if (ns.force_positioning || ns.allow_positioning) && ns.history().is_none() {
                return err(format!(
                    "{key}: positioning needs history (history_size and history_ttl)"
                ));
            }
            if (ns.join_leave || ns.force_push_join_leave) && !ns.presence {
                return err(format!("{key}: join_leave needs presence = true"));
            }
        }
        Channels::new(&self.channel).map_err(ConfigError)?;
        self.limits.validate().map_err(ConfigError)?;
        if self.tls.enabled() {
            if self.tls.cert_file.is_empty() || self.tls.key_file.is_empty() {
                return err("tls: cert_file and key_file must be set together".into());
            }
            if self.tls.handshake_timeout.is_zero() {
                return err("tls.handshake_timeout: must be greater than 0".into());
            }
            crate::transport::tls::load_key_pair(
                self.tls.cert_file.as_ref(),
                self.tls.key_file.as_ref(),
            )
            .map_err(ConfigError)?;
        }
        let p = &self.plugins;
        if p.deadline.is_zero() {
            return err("plugins.deadline: must be greater than 0".into());
        }
        if p.memory_limit < 1024 * 1024 {
            return err("plugins.memory_limit: must be at least 1 MiB".into());
        }
        for (name, limits) in &p.limits {
            if limits.deadline.is_some_and(|d| d.is_zero()) {
                return err(format!(
                    "plugins.limits.{name}.deadline: must be greater than 0"
                ));
            }
            if limits.memory_limit.is_some_and(|m| m < 1024 * 1024) {
                return err(format!(
                    "plugins.limits.{name}.memory_limit: must be at least 1 MiB"
                ));
            }
        }
        if !p.dir.is_empty() && !std::path::Path::new(&p.dir).is_dir() {
            return err(format!("plugins.dir: {} is not a folder", p.dir));
        }
        Ok(())
    }

    /// Settings that work but deserve a warning (printed by `check-config` and logged at start).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.http_api.insecure {
            warnings.push(
                "http_api.insecure is on: the server API accepts requests without a key".into(),
            );
        }
        if !self.address.ip().is_loopback() && !self.tls.enabled() {
            warnings.push(format!(
                "no TLS on the non-loopback address {}: fine behind a TLS-terminating load balancer, otherwise set tls.cert_file and tls.key_file",
                self.address
            ));
        }
        if !self.address.ip().is_loopback() && self.client.allow_anonymous {
            warnings.push(format!(
                "client.allow_anonymous is on while listening on the non-loopback address {}",
                self.address
            ));
        }
        if self.websocket.allowed_origins.iter().any(|o| o == "*") {
            warnings.push(
                "websocket.allowed_origins contains \"*\": any web site may open WebSockets".into(),
            );
        }
        if self.websocket.conformance_echo {
            warnings.push(
                "websocket.conformance_echo is on: /conformance/echo echoes anything to anyone (conformance tests only)".into(),
            );
        }
        let anon_publish = std::iter::once(&self.channel.defaults)
            .chain(self.channel.namespaces.values())
            .any(|ns| ns.allow_publish_for_anonymous);
        if anon_publish {
            warnings.push(
                "allow_publish_for_anonymous is on in a namespace: anyone may publish".into(),
            );
        }
        warnings
    }
}

fn describe(error: &figment::Error) -> String {
    let key = error.path.join(".");
    if key.is_empty() {
        error.kind.to_string()
    } else {
        format!("{key}: {}", error.kind)
    }
}

/// A configuration problem, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid_and_serves_on_loopback() {
        let config = Config::from_toml(EMBEDDED_DEFAULT).unwrap();
        assert_eq!(config.address, SocketAddr::from(([127, 0, 0, 1], 8000)));
        assert!(config.client.allow_anonymous);
        assert!(config.channel.defaults.history().is_some());
        assert!(config.http_api.key.is_empty());
    }

    #[test]
    fn durations_and_namespaces_parse() {
        let config = Config::from_toml(
            r#"
            [client]
            ping_interval = "5s"
            pong_timeout = "2s"
            [channel.namespaces.chat]
            presence = true
            history_size = 10
            history_ttl = "1m"
            allow_recovery = true
            "#,
        )
        .unwrap();
        assert_eq!(config.client.ping_interval, Duration::from_secs(5));
        assert_eq!(
            config.channel.namespaces["chat"].history_ttl,
            Duration::from_secs(60)
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::from_toml("[client]\nping_interval = 5")
            .unwrap_err()
            .0;
        assert!(e.contains("client.ping_interval"), "{e}");
        let e = Config::from_toml("[client]\nping_intervl = \"5s\"")
            .unwrap_err()
            .0;
        assert!(e.contains("ping_intervl"), "{e}");
        let e = Config::from_toml("[client]\nping_interval = \"5s\"\npong_timeout = \"6s\"")
            .unwrap_err()
            .0;
        assert!(e.contains("client.pong_timeout"), "{e}");
        let e = Config::from_toml("[channel.namespaces.a]\nallow_recovery = true")
            .unwrap_err()
            .0;
        assert!(e.contains("channel.namespaces.a"), "{e}");
        let e = Config::from_toml("address = \"nowhere\"").unwrap_err().0;
        assert!(e.contains("address"), "{e}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail closure signature
    fn environment_overrides_keys() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("HERALD_HTTP_API__KEY", "from-env");
            jail.set_env("HERALD_CLIENT__PING_INTERVAL", "9s");
            jail.set_env("HERALD_CHANNEL__NAMESPACES__NEWS__PRESENCE", "true");
            let config = Config::load(Source::Embedded).map_err(|e| e.0)?;
            assert_eq!(config.http_api.key, "from-env");
            assert_eq!(config.client.ping_interval, Duration::from_secs(9));
            assert!(config.channel.namespaces["news"].presence);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail closure signature
    fn a_pusher_app_from_the_environment_with_a_numeric_id() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("HERALD_PUSHER__APP_ID", "1");
            jail.set_env("HERALD_PUSHER__KEY", "app-key");
            jail.set_env("HERALD_PUSHER__SECRET", "12345");
            let config = Config::load(Source::Embedded).map_err(|e| e.0)?;
            assert_eq!(config.pusher.app_id, "1");
            assert_eq!(config.pusher.secret, "12345");
            assert!(config.pusher.enabled());
            Ok(())
        });
    }
}
