//! `[pusher]`: the Pusher app served beside the Centrifugo protocol.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::webhooks::{WebhookConfig, WebhookConfigError};

use super::Secret;

/// The `[pusher]` section: the Pusher connection timings, and the apps — the one described by the
/// section's own keys (`app_id`, `key`, …), whose channels are the same as the Centrifugo protocol's, and
/// any number of `[[pusher.apps]]`, each with a channel space of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PusherConfig {
    /// The single-app form: the app whose keys are written in `[pusher]` itself.
    #[serde(flatten)]
    pub app: PusherAppConfig,
    /// More apps, each isolated from the others and from the Centrifugo protocol's channels.
    pub apps: Vec<PusherAppConfig>,
    /// Silence after which the server pings a client; sent to clients, which ping after the same
    /// silence themselves (default 30 s).
    #[serde(with = "humantime_serde")]
    pub activity_timeout: Duration,
    /// How long a client has to answer the server's ping before it is closed with 4201 (default 30 s).
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// How far an HTTP API request's `auth_timestamp` may be from the server's clock (default 600 s).
    #[serde(with = "humantime_serde")]
    pub timestamp_window: Duration,
}

/// One Pusher app: its credentials, rules and limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PusherAppConfig {
    /// The app id in HTTP API paths (`/apps/{app_id}/…`); `app_id` in `[pusher]`, `id` (or `app_id`) in
    /// `[[pusher.apps]]`. The Pusher Python library needs a number.
    #[serde(rename = "app_id", alias = "id", deserialize_with = "text_or_number")]
    pub id: String,
    /// The app key clients connect with (`/app/{key}`); empty (the default) in `[pusher]` turns the
    /// single-app form off.
    #[serde(deserialize_with = "text_or_number")]
    pub key: String,
    /// The secret that signs channel authorisations and HTTP API requests.
    #[serde(deserialize_with = "text_or_number")]
    pub secret: Secret,
    /// Whether the app is served (default true); a disabled app's clients are refused with 4003 and its
    /// API requests with 403.
    pub enabled: bool,
    /// Let clients send `client-*` events to the other subscribers of private channels (default false).
    pub client_events: bool,
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
    /// Connections the app may hold on one node (default 0: only the server's limits apply); more are
    /// refused with 4004.
    pub max_connections: usize,
    /// `client-*` events the app's clients may send per second on one node, all together (default 0: only
    /// the per-connection command rate applies); more are refused with `pusher:error` 4301.
    pub max_client_events_per_second: u32,
    /// Events the app's HTTP API may trigger per second on one node (default 0: unlimited); more are
    /// refused with 429.
    pub max_api_events_per_second: u32,
}

impl Default for PusherConfig {
    fn default() -> Self {
        Self {
            app: PusherAppConfig::default(),
            apps: Vec::new(),
            activity_timeout: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(30),
            timestamp_window: Duration::from_secs(600),
        }
    }
}

impl Default for PusherAppConfig {
    fn default() -> Self {
        Self {
            id: String::new(),
            key: String::new(),
            secret: Secret::default(),
            enabled: true,
            client_events: false,
            max_event_bytes: 10 * 1024,
            max_channel_name_length: 164,
            cache_ttl: Duration::from_secs(3600),
            webhooks: Vec::new(),
            max_presence_members: 100,
            max_presence_user_info_bytes: 2048,
            subscription_count: false,
            max_connections: 0,
            max_client_events_per_second: 0,
            max_api_events_per_second: 0,
        }
    }
}

impl PusherConfig {
    /// Whether the Pusher protocol is served: some app is configured.
    pub fn enabled(&self) -> bool {
        self.single_app().is_some() || !self.apps.is_empty()
    }

    /// The single-app form's app, when its key is set.
    pub fn single_app(&self) -> Option<&PusherAppConfig> {
        (!self.app.key.is_empty()).then_some(&self.app)
    }

    /// Checks the section; errors name the offending key.
    pub fn validate(&self) -> Result<(), PusherConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        if self.activity_timeout.as_secs() == 0 {
            return Err(PusherConfigError::ActivityTimeout);
        }
        if self.pong_timeout.is_zero() {
            return Err(PusherConfigError::PongTimeout);
        }
        let mut ids = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        let single = self.single_app().map(|app| (None, app));
        let listed = self.apps.iter().enumerate().map(|(i, app)| (Some(i), app));
        for (index, app) in single.into_iter().chain(listed) {
            app.validate(index.is_some())
                .map_err(|error| PusherConfigError::App { index, error })?;
            if !ids.insert(app.id.as_str()) {
                return Err(PusherConfigError::DuplicateId(app.id.clone()));
            }
            if !keys.insert(app.key.as_str()) {
                return Err(PusherConfigError::DuplicateKey(app.key.clone()));
            }
        }
        Ok(())
    }
}

impl PusherAppConfig {
    /// Checks one app; `listed` for an entry of `[[pusher.apps]]`, whose id becomes part of its channels'
    /// names inside Herald.
    fn validate(&self, listed: bool) -> Result<(), PusherAppConfigError> {
        if self.id.is_empty() || self.key.is_empty() || self.secret.is_empty() {
            return Err(PusherAppConfigError::Incomplete);
        }
        if listed && self.id.chars().any(|c| c.is_control()) {
            return Err(PusherAppConfigError::Id(self.id.clone()));
        }
        if self.max_channel_name_length == 0 {
            return Err(PusherAppConfigError::MaxChannelNameLength);
        }
        for (index, webhook) in self.webhooks.iter().enumerate() {
            webhook
                .validate()
                .map_err(|error| PusherAppConfigError::Webhook { index, error })?;
        }
        Ok(())
    }
}

/// Why `[pusher]` is refused; each names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PusherConfigError {
    /// `activity_timeout` is under a second (Pusher clients read it in whole seconds).
    #[error("pusher.activity_timeout: must be at least 1 s")]
    ActivityTimeout,
    /// `pong_timeout` is zero.
    #[error("pusher.pong_timeout: must be greater than 0")]
    PongTimeout,
    /// One app is refused: the single-app form's (`index` none) or an entry of `[[pusher.apps]]`.
    #[error("{}{error}", match index { Some(i) => format!("pusher.apps[{i}]."), None => "pusher.".into() })]
    App {
        /// Its position in `[[pusher.apps]]`, from 0.
        index: Option<usize>,
        /// What is wrong with it.
        error: PusherAppConfigError,
    },
    /// Two apps have the same id.
    #[error("pusher.apps: two apps have the id {0:?}")]
    DuplicateId(String),
    /// Two apps have the same key.
    #[error("pusher.apps: two apps have the key {0:?}")]
    DuplicateKey(String),
}

/// Why one app is refused; each names the key (the section prefixes the app).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PusherAppConfigError {
    /// The id, key or secret is missing.
    #[error("app_id, key and secret: all three are required")]
    Incomplete,
    /// An id with control characters.
    #[error("id: {0:?} has control characters")]
    Id(String),
    /// `max_channel_name_length` is zero.
    #[error("max_channel_name_length: must be greater than 0")]
    MaxChannelNameLength,
    /// A webhook entry is refused.
    #[error("webhooks[{index}].{error}")]
    Webhook {
        /// Its position in the app's webhooks, from 0.
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
            (config.app.id.as_str(), config.app.secret.expose()),
            ("1234", "99")
        );
        assert!(toml::from_str::<PusherConfig>("app_id = 1.5").is_err());
    }

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let config = PusherConfig {
            apps: vec![PusherAppConfig {
                secret: "s3cr3t".into(),
                ..PusherAppConfig::default()
            }],
            ..PusherConfig::default()
        };
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }

    fn parsed(toml: &str) -> Result<PusherConfig, String> {
        let config: PusherConfig = toml::from_str(toml).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn apps_are_listed_beside_the_single_app_form() {
        let config = parsed(
            r#"
            app_id = "1"
            key = "k1"
            secret = "s1"
            [[apps]]
            id = "2"
            key = "k2"
            secret = "s2"
            max_connections = 10
            [[apps]]
            app_id = 3
            key = "k3"
            secret = "s3"
            enabled = false
            "#,
        )
        .expect("valid");
        assert_eq!(config.single_app().map(|app| app.id.as_str()), Some("1"));
        let listed: Vec<(&str, usize, bool)> = config
            .apps
            .iter()
            .map(|app| (app.id.as_str(), app.max_connections, app.enabled))
            .collect();
        assert_eq!(listed, [("2", 10, true), ("3", 0, false)]);
        assert!(
            parsed("[[apps]]\nid = \"2\"\nkey = \"k\"\nsecret = \"s\"")
                .expect("apps alone")
                .enabled()
        );
    }

    #[test]
    fn apps_are_refused_by_the_key_at_fault() {
        let app = |id: &str, key: &str| {
            format!("[[apps]]\nid = \"{id}\"\nkey = \"{key}\"\nsecret = \"s\"\n")
        };
        assert_eq!(
            parsed(&(app("1", "a") + &app("1", "b"))).unwrap_err(),
            "pusher.apps: two apps have the id \"1\""
        );
        assert_eq!(
            parsed(&(app("1", "a") + &app("2", "a"))).unwrap_err(),
            "pusher.apps: two apps have the key \"a\""
        );
        assert_eq!(
            parsed(&format!(
                "app_id = \"1\"\nkey = \"a\"\nsecret = \"s\"\n{}",
                app("1", "b")
            ))
            .unwrap_err(),
            "pusher.apps: two apps have the id \"1\"",
            "the single-app form counts"
        );
        assert_eq!(
            parsed(&(app("1", "a") + "[[apps]]\nid = \"2\"\nkey = \"b\"\n")).unwrap_err(),
            "pusher.apps[1].app_id, key and secret: all three are required"
        );
        assert_eq!(
            parsed(&app("a\\u0002b", "a")).unwrap_err(),
            "pusher.apps[0].id: \"a\\u{2}b\" has control characters"
        );
        assert_eq!(
            parsed("app_id = \"1\"\nkey = \"a\"\nsecret = \"s\"\nmax_channel_name_length = 0")
                .unwrap_err(),
            "pusher.max_channel_name_length: must be greater than 0"
        );
        let unknown = parsed(&(app("1", "a") + "max_conections = 3")).unwrap_err();
        assert!(unknown.contains("max_conections"), "{unknown}");
    }
}
