//! Configuration: one TOML file (or the embedded default), every key overridable by an environment variable
//! `HERALD_<SECTION>__<KEY>` (double underscore between levels), validated once at start-up.
//!
//! A file is written for Herald, so an unknown key in it is an error. The environment is not: other
//! `HERALD_*` variables share it (Kubernetes injects `HERALD_PORT=tcp://…`, `HERALD_SERVICE_HOST`, … into
//! every pod of a namespace with a Service named `herald`; scripts set `HERALD_BIN`), so only variables
//! that name a configuration key are read and the others are ignored — see [`EnvVariable`].
//!
//! Each section's struct lives beside the module it configures, with its `validate` and error enum for what
//! serde cannot check (cross-field rules, regexes); this file puts them together, loads them and runs the
//! checks, whose failure is a [`ConfigError`] naming the key.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::channel::{ChannelConfig, Channels};
use crate::engine::{EngineConfig, EngineKind};
use crate::limits::LimitsConfig;
use crate::logging::LogConfig;
use crate::plugin::PluginsConfig;

mod admin;
mod client;
mod error;
mod http_api;
mod metrics;
mod pusher;
mod queue;
mod secret;
pub mod tls;
mod websocket;

pub use admin::AdminConfig;
pub use client::{ClientConfig, ClientConfigError};
pub use error::ConfigError;
pub use http_api::HttpApiConfig;
pub use metrics::MetricsConfig;
pub use pusher::{PusherAppConfig, PusherAppConfigError, PusherConfig, PusherConfigError};
pub use queue::{QueueConfig, QueueConfigError};
pub use secret::Secret;
pub use tls::{TlsConfig, TlsConfigError};
pub use websocket::{CompressionConfig, CompressionConfigError, WebsocketConfig};

/// The embedded default configuration file.
pub const EMBEDDED_DEFAULT: &str = include_str!("../default.toml");

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
    /// Log level and format.
    pub log: LogConfig,
    /// The Prometheus metrics endpoint.
    pub metrics: MetricsConfig,
    /// The admin web page.
    pub admin: AdminConfig,
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
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            admin: AdminConfig::default(),
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
    /// Loads from `source`, then applies the `HERALD_*` environment variables that name configuration keys,
    /// then validates. The variables it ignores are reported by [`Config::log_ignored_environment`], once
    /// logging is set up from the loaded configuration.
    pub fn load(source: Source<'_>) -> Result<Self, ConfigError> {
        Self::load_with_env(source, ConfigKeys::of_default()?.env())
    }

    /// Logs each `HERALD_*` variable that [`Config::load`] ignores, by name (never with its value): at debug
    /// level when it is someone else's, as a warning when it looks like a misspelt key.
    pub fn log_ignored_environment() {
        let Ok(keys) = ConfigKeys::of_default() else {
            return;
        };
        for (name, kind) in keys.environment_variables() {
            match kind {
                EnvVariable::Key => {}
                EnvVariable::Foreign => tracing::debug!(
                    variable = %name,
                    "environment variable ignored: it names no configuration section or key"
                ),
                EnvVariable::Misspelt => tracing::warn!(
                    variable = %name,
                    "environment variable ignored: it starts like a configuration key but names none (misspelt?)"
                ),
            }
        }
    }

    fn load_with_env(source: Source<'_>, env: Env) -> Result<Self, ConfigError> {
        let figment = Figment::from(Serialized::defaults(Config::default()));
        let figment = match source {
            Source::Embedded => figment.merge(Toml::string(EMBEDDED_DEFAULT)),
            Source::File(path) => {
                if !path.is_file() {
                    return Err(ConfigError::NoFile(path.to_owned()));
                }
                figment.merge(Toml::file(path))
            }
        };
        let config: Config = figment.merge(env).extract()?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML document (no environment overrides); used by tests and `check-config`.
    pub fn from_toml(toml: &str) -> Result<Self, ConfigError> {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(toml))
            .extract()?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types alone cannot express, section by section; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.engine.kind == EngineKind::Redis {
            self.engine.redis.validate()?;
        }
        if self.engine.idempotency_window.is_zero() {
            return Err(ConfigError::IdempotencyWindow);
        }
        if self.queue.enabled {
            self.queue.validate(&self.engine)?;
        }
        self.pusher.validate()?;
        self.client.validate()?;
        if self.websocket.max_message_size < 1024 {
            return Err(ConfigError::MaxMessageSize);
        }
        self.websocket.compression.validate()?;
        if self.http_api.max_body_size < 1024 {
            return Err(ConfigError::MaxBodySize);
        }
        Channels::new(&self.channel)?;
        self.limits.validate()?;
        self.tls.validate()?;
        self.plugins.validate()?;
        self.log.validate()?;
        if self.metrics.address == Some(self.address) {
            return Err(ConfigError::MetricsAddress);
        }
        if self.admin.enabled && self.admin.password.is_empty() && !self.address.ip().is_loopback()
        {
            return Err(ConfigError::AdminPassword);
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
        if self.metrics.enabled
            && self.metrics.key.is_empty()
            && !self
                .metrics
                .address
                .unwrap_or(self.address)
                .ip()
                .is_loopback()
        {
            warnings.push(
                "metrics.enabled without metrics.key on a non-loopback address: anyone who reaches it reads the metrics".into(),
            );
        }
        if self.admin.enabled && !self.address.ip().is_loopback() && !self.tls.enabled() {
            warnings.push(format!(
                "admin.enabled without TLS on the non-loopback address {}: the admin password and session cookie travel in clear unless a TLS-terminating load balancer is in front",
                self.address
            ));
        }
        if self.admin.enabled && self.admin.password.is_empty() {
            warnings.push(
                "admin.enabled without admin.password: the admin page opens without a login (loopback only)".into(),
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

/// What a `HERALD_*` environment variable is to the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvVariable {
    /// It names a configuration key, a map, or anything below a map (`channel.namespaces.<name>`,
    /// `plugins.config.<plugin>`, `plugins.limits.<plugin>`, whose entries have free names): read. Below a
    /// map entry the typed extraction checks it, as in a file.
    Key,
    /// Its first level names no top-level key or section (`HERALD_PORT`, `HERALD_SERVICE_HOST`,
    /// `HERALD_BIN`): another program's variable, ignored.
    Foreign,
    /// It starts with a real section but names nothing in it (`HERALD_CLIENT__PING_INTERVL`), goes below a
    /// plain key (`HERALD_ADDRESS__PORT`) or stops at a section (`HERALD_CHANNEL`, which a script may well
    /// use for something else): most likely meant for Herald but wrong. Ignored with a warning rather than
    /// refusing the start, because a variable from outside can still take this shape (a Kubernetes Service
    /// named `herald-client--x` injects `HERALD_CLIENT__X_SERVICE_HOST`), and refusing to start on someone
    /// else's variable is the failure this classification exists to prevent.
    Misspelt,
}

/// Someone else's `HERALD_*` variables ([`EnvVariable::Foreign`]) with typical values: what Kubernetes
/// injects into every pod of a namespace with a Service named `herald` (port 8000, named `http`), and what a
/// deploy script may export. Public so the configuration's tests and the binary's set the same ones and
/// expect none to be read.
pub const FOREIGN_VARIABLE_EXAMPLES: [(&str, &str); 9] = [
    ("HERALD_PORT", "tcp://10.0.0.7:8000"),
    ("HERALD_PORT_8000_TCP", "tcp://10.0.0.7:8000"),
    ("HERALD_PORT_8000_TCP_ADDR", "10.0.0.7"),
    ("HERALD_PORT_8000_TCP_PORT", "8000"),
    ("HERALD_PORT_8000_TCP_PROTO", "tcp"),
    ("HERALD_SERVICE_HOST", "10.0.0.7"),
    ("HERALD_SERVICE_PORT", "8000"),
    ("HERALD_SERVICE_PORT_HTTP", "8000"),
    ("HERALD_BIN", "/usr/local/bin/herald"),
];

/// The configuration's key names, taken from the serialized default so they cannot drift from [`Config`]:
/// an object is a section (its fields are the keys below it), an empty object is a map (any name below it),
/// anything else is a key.
#[derive(Debug, Clone)]
struct ConfigKeys(Arc<serde_json::Value>);

impl ConfigKeys {
    fn of_default() -> Result<Self, ConfigError> {
        serde_json::to_value(Config::default())
            .map(|tree| Self(Arc::new(tree)))
            .map_err(ConfigError::Keys)
    }

    /// Classifies a variable by its name without the prefix (`CLIENT__PING_INTERVAL`), the way figment's
    /// `Env::split("__")` nests it.
    fn classify(&self, unprefixed: &str) -> EnvVariable {
        let key = unprefixed.to_ascii_lowercase();
        let mut node = &*self.0;
        for (depth, segment) in key.split("__").enumerate() {
            node = match node {
                serde_json::Value::Object(fields) if fields.is_empty() => return EnvVariable::Key,
                serde_json::Value::Object(fields) => match fields.get(segment) {
                    Some(below) => below,
                    None if depth == 0 => return EnvVariable::Foreign,
                    None => return EnvVariable::Misspelt,
                },
                _ => return EnvVariable::Misspelt,
            };
        }
        match node {
            serde_json::Value::Object(fields) if !fields.is_empty() => EnvVariable::Misspelt,
            _ => EnvVariable::Key,
        }
    }

    /// Every `HERALD_*` variable of the process with what it is, in name order.
    fn environment_variables(&self) -> Vec<(String, EnvVariable)> {
        let mut found: Vec<(String, EnvVariable)> = Env::prefixed(ENV_PREFIX)
            .lowercase(false)
            .iter()
            .map(|(unprefixed, _)| {
                let kind = self.classify(unprefixed.as_str());
                (format!("{ENV_PREFIX}{unprefixed}"), kind)
            })
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    }

    /// The provider of the variables that name keys, nested at `__`.
    fn env(&self) -> Env {
        let keys = self.clone();
        Env::prefixed(ENV_PREFIX)
            .filter(move |unprefixed| keys.classify(unprefixed.as_str()) == EnvVariable::Key)
            .split("__")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{ChannelConfigError, NamespaceKey};
    use crate::engine::redis::RedisConfigError;
    use crate::limits::LimitsConfigError;
    use crate::plugin::PluginsConfigError;

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
            .to_string();
        assert!(e.contains("client.ping_interval"), "{e}");
        let e = Config::from_toml("[client]\nping_intervl = \"5s\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ping_intervl"), "{e}");
        let e = Config::from_toml("[client]\nping_interval = \"5s\"\npong_timeout = \"6s\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("client.pong_timeout"), "{e}");
        let e = Config::from_toml("[channel.namespaces.a]\nallow_recovery = true")
            .unwrap_err()
            .to_string();
        assert!(e.contains("channel.namespaces.a"), "{e}");
        let e = Config::from_toml("address = \"nowhere\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("address"), "{e}");
    }

    /// Each rule fails with its own variant, and the message starts with the key to fix.
    #[test]
    fn rules_fail_with_their_variant_naming_the_key() {
        let refused = |toml: &str| Config::from_toml(toml).expect_err(toml);
        /// A configuration, how to recognise its error, and how the message starts.
        type Case = (&'static str, fn(&ConfigError) -> bool, &'static str);
        let cases: [Case; 10] = [
            (
                "[client]\nping_interval = \"5s\"\npong_timeout = \"6s\"",
                |e| {
                    matches!(
                        e,
                        ConfigError::Client(ClientConfigError::PongTimeout { .. })
                    )
                },
                "client.pong_timeout: must be greater than 0 and less than client.ping_interval (5s)",
            ),
            (
                "[websocket]\nmax_message_size = 10",
                |e| matches!(e, ConfigError::MaxMessageSize),
                "websocket.max_message_size: ",
            ),
            (
                "[channel.namespaces.chat]\njoin_leave = true",
                |e| {
                    matches!(e, ConfigError::Channel(ChannelConfigError::JoinLeaveWithoutPresence(
                        NamespaceKey::Named(name),
                    )) if name == "chat")
                },
                "channel.namespaces.chat: join_leave needs presence = true",
            ),
            (
                "[limits]\nmax_connections = 0",
                |e| {
                    matches!(
                        e,
                        ConfigError::Limits(LimitsConfigError::Zero {
                            key: "limits.max_connections"
                        })
                    )
                },
                "limits.max_connections: must be greater than 0",
            ),
            (
                "[engine]\ntype = \"redis\"\n[engine.redis]\naddresses = [\"nowhere\"]",
                |e| matches!(e, ConfigError::Redis(RedisConfigError::InvalidAddress(a)) if a == "nowhere"),
                "engine.redis.addresses: \"nowhere\" is not a redis:// URL",
            ),
            (
                "[engine]\ntype = \"redis\"\n[engine.redis]\ncluster = true\nsentinel_master = \"m\"",
                |e| matches!(e, ConfigError::Redis(RedisConfigError::SentinelWithCluster)),
                "engine.redis.sentinel_master: Sentinel watches one primary",
            ),
            (
                "[queue]\nenabled = true",
                |e| matches!(e, ConfigError::Queue(QueueConfigError::NoRedis)),
                "queue.addresses: ",
            ),
            (
                "[pusher]\napp_id = 1\nkey = \"k\"\nsecret = \"s\"\n[[pusher.webhooks]]\nurl = \"ftp://h/\"",
                |e| {
                    matches!(
                        e,
                        ConfigError::Pusher(PusherConfigError::App {
                            index: None,
                            error: PusherAppConfigError::Webhook { index: 0, .. }
                        })
                    )
                },
                "pusher.webhooks[0].url: \"ftp://h/\" is not an http:// or https:// URL",
            ),
            (
                "[tls]\ncert_file = \"cert.pem\"",
                |e| matches!(e, ConfigError::Tls(TlsConfigError::Incomplete)),
                "tls: cert_file and key_file must be set together",
            ),
            (
                "[plugins.limits.jwt]\nmemory_limit = 1024",
                |e| {
                    matches!(e, ConfigError::Plugins(PluginsConfigError::PluginMemoryLimit { plugin })
                        if plugin == "jwt")
                },
                "plugins.limits.jwt.memory_limit: must be at least 1 MiB",
            ),
        ];
        for (toml, is_variant, message) in cases {
            let error = refused(toml);
            assert!(is_variant(&error), "{toml}: {error:?}");
            assert!(error.to_string().starts_with(message), "{toml}: {error}");
        }
        let error = Config::load(Source::File(Path::new("/nowhere/herald.toml"))).unwrap_err();
        assert!(matches!(error, ConfigError::NoFile(_)), "{error:?}");
        assert_eq!(
            error.to_string(),
            "config file /nowhere/herald.toml does not exist"
        );
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail closure signature
    fn environment_overrides_keys() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("HERALD_HTTP_API__KEY", "from-env");
            jail.set_env("HERALD_CLIENT__PING_INTERVAL", "9s");
            jail.set_env("HERALD_CHANNEL__NAMESPACES__NEWS__PRESENCE", "true");
            let config = Config::load(Source::Embedded).map_err(|e| e.to_string())?;
            assert_eq!(config.http_api.key.expose(), "from-env");
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
            let config = Config::load(Source::Embedded).map_err(|e| e.to_string())?;
            assert_eq!(config.pusher.app.id, "1");
            assert_eq!(config.pusher.app.secret.expose(), "12345");
            assert!(config.pusher.enabled());
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail closure signature
    fn kubernetes_service_variables_are_ignored_and_real_keys_still_apply() {
        figment::Jail::expect_with(|jail| {
            for (name, value) in FOREIGN_VARIABLE_EXAMPLES {
                jail.set_env(name, value);
            }
            jail.set_env("HERALD_ADDRESS", "0.0.0.0:9000");
            jail.set_env("HERALD_HTTP_API__KEY", "from-env");
            jail.set_env("HERALD_CHANNEL__NAMESPACES__NEWS__PRESENCE", "true");
            let config = Config::load(Source::Embedded).map_err(|e| e.to_string())?;
            assert_eq!(config.address, SocketAddr::from(([0, 0, 0, 0], 9000)));
            assert_eq!(config.http_api.key.expose(), "from-env");
            assert!(config.channel.namespaces["news"].presence);

            let seen = ConfigKeys::of_default()
                .map_err(|e| e.to_string())?
                .environment_variables();
            for (name, _) in FOREIGN_VARIABLE_EXAMPLES {
                assert!(
                    seen.contains(&(name.to_owned(), EnvVariable::Foreign)),
                    "{name}: {seen:?}"
                );
            }
            assert!(seen.contains(&("HERALD_ADDRESS".to_owned(), EnvVariable::Key)));
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail closure signature
    fn a_misspelt_key_in_the_environment_is_ignored_and_flagged() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("HERALD_CLIENT__PING_INTERVL", "5s");
            jail.set_env("HERALD_ADDRESS__PORT", "9000");
            jail.set_env("HERALD_CHANNEL", "news");
            let config = Config::load(Source::Embedded).map_err(|e| e.to_string())?;
            assert_eq!(
                config.client.ping_interval,
                Config::default().client.ping_interval
            );
            let seen = ConfigKeys::of_default()
                .map_err(|e| e.to_string())?
                .environment_variables();
            for name in [
                "HERALD_CLIENT__PING_INTERVL",
                "HERALD_ADDRESS__PORT",
                "HERALD_CHANNEL",
            ] {
                assert!(
                    seen.contains(&(name.to_owned(), EnvVariable::Misspelt)),
                    "{name}: {seen:?}"
                );
            }
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail closure signature
    fn a_misspelt_key_in_a_file_is_still_an_error() {
        figment::Jail::expect_with(|jail| {
            for (name, value) in FOREIGN_VARIABLE_EXAMPLES {
                jail.set_env(name, value);
            }
            jail.create_file("herald.toml", "[client]\nping_intervl = \"5s\"\n")?;
            let error = Config::load(Source::File(Path::new("herald.toml")))
                .expect_err("an unknown key in a file refuses the start")
                .to_string();
            assert!(error.contains("ping_intervl"), "{error}");
            jail.create_file("herald.toml", "port = 8000\n")?;
            let error = Config::load(Source::File(Path::new("herald.toml")))
                .expect_err("an unknown top-level key in a file refuses the start")
                .to_string();
            assert!(error.contains("port"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn variables_are_classified_by_the_real_keys() {
        let keys = ConfigKeys::of_default().unwrap();
        for key in [
            "ADDRESS",
            "NAME",
            "SHUTDOWN_TIMEOUT",
            "CLIENT__PING_INTERVAL",
            "client__ping_interval",
            "HTTP_API__KEY",
            "ENGINE__TYPE",
            "ENGINE__REDIS__ADDRESSES",
            "CHANNEL__DEFAULTS__CHANNEL_REGEX",
            "CHANNEL__NAMESPACES",
            "CHANNEL__NAMESPACES__CHAT__HISTORY_SIZE",
            "PLUGINS__CONFIG__JWT__SECRET",
            "PLUGINS__LIMITS__JWT__DEADLINE",
            "PUSHER__WEBHOOKS",
        ] {
            assert_eq!(keys.classify(key), EnvVariable::Key, "{key}");
        }
        for key in [
            "PORT",
            "SERVICE_HOST",
            "PORT_8000_TCP_ADDR",
            "BIN",
            "",
            "CLIENT_PING_INTERVAL",
        ] {
            assert_eq!(keys.classify(key), EnvVariable::Foreign, "{key}");
        }
        for key in [
            "CLIENT__PING_INTERVL",
            "ADDRESS__PORT",
            "CHANNEL__DEFAULTS__HISTORY",
            "CHANNEL",
            "ENGINE__REDIS",
        ] {
            assert_eq!(keys.classify(key), EnvVariable::Misspelt, "{key}");
        }
    }

    /// Every key of the embedded default file is one the environment may set too.
    #[test]
    fn every_key_of_the_embedded_default_is_a_key() {
        fn walk(table: &toml::Table, prefix: &str, found: &mut Vec<String>) {
            for (name, value) in table {
                let key = format!("{prefix}{}", name.to_ascii_uppercase());
                match value {
                    toml::Value::Table(below) => walk(below, &format!("{key}__"), found),
                    _ => found.push(key),
                }
            }
        }
        let mut found = Vec::new();
        walk(&EMBEDDED_DEFAULT.parse().unwrap(), "", &mut found);
        assert!(found.len() > 10, "{found:?}");
        let keys = ConfigKeys::of_default().unwrap();
        for key in found {
            assert_eq!(keys.classify(&key), EnvVariable::Key, "{key}");
        }
    }
}
