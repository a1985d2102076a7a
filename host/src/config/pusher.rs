//! `[pusher]`: the Pusher app served beside the Centrifugo protocol.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::webhooks::{WebhookConfig, WebhookConfigError};

use super::Secret;

/// The `[pusher]` section: the app whose clients and server libraries speak the Pusher protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PusherConfig {
    /// The app id in HTTP API paths (`/apps/{app_id}/…`). The Pusher Python library needs a number.
    #[serde(deserialize_with = "text_or_number")]
    pub app_id: String,
    /// The app key clients connect with (`/app/{key}`); empty (the default) turns the Pusher protocol off.
    #[serde(deserialize_with = "text_or_number")]
    pub key: String,
    /// The secret that signs channel authorisations and HTTP API requests.
    #[serde(deserialize_with = "text_or_number")]
    pub secret: Secret,
    /// Let clients send `client-*` events to the other subscribers of private channels (default false).
    pub client_events: bool,
    /// Silence after which the server pings a client; sent to clients, which ping after the same
    /// silence themselves (default 30 s).
    #[serde(with = "humantime_serde")]
    pub activity_timeout: Duration,
    /// How long a client has to answer the server's ping before it is closed with 4201 (default 30 s).
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// Largest event data in bytes, from the HTTP API or a client event (default 10 KiB, then 413 or
    /// `pusher:error` 4301).
    pub max_event_bytes: usize,
    /// Longest channel name (default 164, Pusher's).
    pub max_channel_name_length: usize,
    /// How long a cache channel (`cache-…`) keeps its last triggered event when its namespace keeps no
    /// history of its own (default 1 h).
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Where the app hears of channels becoming occupied or vacated, members, and client events.
    pub webhooks: Vec<WebhookConfig>,
    /// Most distinct users in one presence channel (default 100); more are refused the subscription.
    pub max_presence_members: usize,
    /// Largest `user_info` of a presence member in bytes (default 2 KiB).
    pub max_presence_user_info_bytes: usize,
    /// Pusher's "subscription counting": subscribers of non-presence channels get
    /// `pusher_internal:subscription_count` when the channel's count (across the cluster) changes.
    pub subscription_count: bool,
    /// How far an HTTP API request's `auth_timestamp` may be from the server's clock (default 600 s).
    #[serde(with = "humantime_serde")]
    pub timestamp_window: Duration,
}

impl Default for PusherConfig {
    fn default() -> Self {
        Self {
            app_id: String::new(),
            key: String::new(),
            secret: Secret::default(),
            client_events: false,
            activity_timeout: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(30),
            max_event_bytes: 10 * 1024,
            max_channel_name_length: 164,
            cache_ttl: Duration::from_secs(3600),
            webhooks: Vec::new(),
            max_presence_members: 100,
            max_presence_user_info_bytes: 2048,
            subscription_count: false,
            timestamp_window: Duration::from_secs(600),
        }
    }
}

impl PusherConfig {
    /// Whether the Pusher protocol is served.
    pub fn enabled(&self) -> bool {
        !self.key.is_empty()
    }

    /// Checks the section; errors name the offending key.
    pub fn validate(&self) -> Result<(), PusherConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        if self.app_id.is_empty() || self.secret.is_empty() {
            return Err(PusherConfigError::Incomplete);
        }
        if self.activity_timeout.as_secs() == 0 {
            return Err(PusherConfigError::ActivityTimeout);
        }
        if self.pong_timeout.is_zero() {
            return Err(PusherConfigError::PongTimeout);
        }
        if self.max_channel_name_length == 0 {
            return Err(PusherConfigError::MaxChannelNameLength);
        }
        for (index, webhook) in self.webhooks.iter().enumerate() {
            webhook
                .validate()
                .map_err(|error| PusherConfigError::Webhook { index, error })?;
        }
        Ok(())
    }
}

/// Why `[pusher]` is refused; each names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PusherConfigError {
    /// A key is set (the protocol is on) without the app id or the secret.
    #[error("pusher: app_id and secret are required when key is set")]
    Incomplete,
    /// `activity_timeout` is under a second (Pusher clients read it in whole seconds).
    #[error("pusher.activity_timeout: must be at least 1 s")]
    ActivityTimeout,
    /// `pong_timeout` is zero.
    #[error("pusher.pong_timeout: must be greater than 0")]
    PongTimeout,
    /// `max_channel_name_length` is zero.
    #[error("pusher.max_channel_name_length: must be greater than 0")]
    MaxChannelNameLength,
    /// A webhook entry is refused.
    #[error("pusher.webhooks[{index}].{error}")]
    Webhook {
        /// Its position in `[[pusher.webhooks]]`, from 0.
        index: usize,
        /// What is wrong with it.
        error: WebhookConfigError,
    },
}

/// Reads an id, key or secret given as text or as a number: `HERALD_PUSHER__APP_ID=1` (and the `app_id = 1`
/// users copy from Pusher's dashboard) arrive as numbers, and an app id is a number for Pusher's Python
/// library.
fn text_or_number<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: From<String>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum TextOrNumber {
        Text(String),
        Unsigned(u64),
        Signed(i64),
    }
    Ok(T::from(match TextOrNumber::deserialize(deserializer)? {
        TextOrNumber::Text(text) => text,
        TextOrNumber::Unsigned(n) => n.to_string(),
        TextOrNumber::Signed(n) => n.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_ids_and_keys_are_read_as_text() {
        let config: PusherConfig =
            toml::from_str("app_id = 1234\nkey = \"k\"\nsecret = 99").expect("valid");
        assert_eq!(
            (config.app_id.as_str(), config.secret.expose()),
            ("1234", "99")
        );
        assert!(toml::from_str::<PusherConfig>("app_id = 1.5").is_err());
    }

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let config = PusherConfig {
            secret: "s3cr3t".into(),
            ..PusherConfig::default()
        };
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }
}
