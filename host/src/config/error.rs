//! [`ConfigError`]: why a configuration is refused, naming the file, key or section to fix.
//!
//! Each section checks itself and has its own error enum beside it; this one says where loading failed and
//! carries the section's error up, displayed as it is.

use std::path::PathBuf;

use crate::channel::ChannelConfigError;
use crate::engine::redis::RedisConfigError;
use crate::limits::LimitsConfigError;
use crate::logging::LogConfigError;
use crate::plugin::PluginsConfigError;

use super::client::ClientConfigError;
use super::pusher::PusherConfigError;
use super::queue::QueueConfigError;
use super::tls::TlsConfigError;

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file named on the command line does not exist.
    #[error("config file {} does not exist", .0.display())]
    NoFile(PathBuf),
    /// The file or the environment does not fit the configuration's types: an unknown key, a value of the
    /// wrong type. One line per problem, each naming its key. Boxed: figment's error is large, and a
    /// `Result` is as large as its error.
    #[error("{}", describe_all(.0))]
    Unparsable(Box<figment::Error>),
    /// The configuration's own key names could not be listed (a bug: the default always serializes).
    #[error("cannot list the configuration keys: {0}")]
    Keys(serde_json::Error),
    /// `engine.idempotency_window` is zero.
    #[error("engine.idempotency_window: must be greater than 0")]
    IdempotencyWindow,
    /// `websocket.max_message_size` is under 1 KiB.
    #[error("websocket.max_message_size: must be at least 1024")]
    MaxMessageSize,
    /// `http_api.max_body_size` is under 1 KiB.
    #[error("http_api.max_body_size: must be at least 1024")]
    MaxBodySize,
    /// `[engine.redis]` is refused.
    #[error(transparent)]
    Redis(#[from] RedisConfigError),
    /// `[queue]` is refused.
    #[error(transparent)]
    Queue(#[from] QueueConfigError),
    /// `[pusher]` is refused.
    #[error(transparent)]
    Pusher(#[from] PusherConfigError),
    /// `[client]` is refused.
    #[error(transparent)]
    Client(#[from] ClientConfigError),
    /// `[channel]` is refused.
    #[error(transparent)]
    Channel(#[from] ChannelConfigError),
    /// `[limits]` is refused.
    #[error(transparent)]
    Limits(#[from] LimitsConfigError),
    /// `[tls]` is refused.
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    /// `[plugins]` is refused.
    #[error(transparent)]
    Plugins(#[from] PluginsConfigError),
    /// `metrics.address` is the main address.
    #[error(
        "metrics.address: must differ from address (leave it unset to serve /metrics on the main address)"
    )]
    MetricsAddress,
    /// The admin page is on without a password on an address others can reach.
    #[error("admin.password: required when admin.enabled and address is not a loopback address")]
    AdminPassword,
    /// `[websocket.compression]` is refused.
    #[error(transparent)]
    Compression(#[from] super::websocket::CompressionConfigError),
    /// `[log]` is refused.
    #[error(transparent)]
    Log(#[from] LogConfigError),
}

impl From<figment::Error> for ConfigError {
    fn from(error: figment::Error) -> Self {
        Self::Unparsable(Box::new(error))
    }
}

/// Every problem figment found, one line each: `key: what is wrong`.
fn describe_all(error: &figment::Error) -> String {
    error
        .clone()
        .into_iter()
        .map(|error| {
            let key = error.path.join(".");
            if key.is_empty() {
                error.kind.to_string()
            } else {
                format!("{key}: {}", error.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
