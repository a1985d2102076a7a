//! Channel names: their [`ChannelKind`], namespaces, validation, and the per-namespace options that drive
//! permissions, history, presence and recovery.
//!
//! A channel `ns:rest` (after removing a leading `$`) takes the options of namespace `ns`; a name with no `:`
//! takes the top-level `defaults`. An unconfigured namespace is `102 unknown channel` everywhere. Who may
//! touch a channel of each kind is decided by [`crate::policy`].

use std::collections::BTreeMap;
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::engine::HistoryOptions;
use crate::errors::ClientError;

/// Separates the namespace from the rest of a channel name.
pub const NAMESPACE_BOUNDARY: char = ':';
/// Marks a private channel, which needs a subscription token.
pub const PRIVATE_PREFIX: char = '$';
/// Separates a user-limited channel's name from its allowed user ids.
pub const USER_BOUNDARY: char = '#';
/// Separates the allowed user ids of a user-limited channel.
pub const USER_SEPARATOR: char = ',';

/// Options of one namespace (and of channels without a namespace). Every option is off unless set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceOptions {
    /// Publications kept per channel; history is on when this and `history_ttl` are non-zero.
    pub history_size: usize,
    /// How long publications are kept (e.g. `"5m"`).
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,
    /// How long a stream's top offset and epoch are remembered after its last publication.
    #[serde(with = "humantime_serde")]
    pub history_meta_ttl: Duration,
    /// Track who is subscribed (presence and presence_stats commands).
    pub presence: bool,
    /// Send join/leave pushes to subscribers that ask for them (`join_leave: true` in subscribe).
    pub join_leave: bool,
    /// Send join/leave pushes to every subscriber.
    pub force_push_join_leave: bool,
    /// Clients may ask for recovery (`recoverable: true`).
    pub allow_recovery: bool,
    /// Every subscription is recoverable.
    pub force_recovery: bool,
    /// Clients may ask for positioning (`positioned: true`).
    pub allow_positioning: bool,
    /// Every subscription is positioned.
    pub force_positioning: bool,
    /// Authenticated clients may subscribe.
    pub allow_subscribe_for_client: bool,
    /// Anonymous clients may subscribe (together with `allow_subscribe_for_client`).
    pub allow_subscribe_for_anonymous: bool,
    /// Authenticated clients may publish.
    pub allow_publish_for_client: bool,
    /// Subscribers of the channel may publish to it.
    pub allow_publish_for_subscriber: bool,
    /// Anonymous clients may publish (together with one of the two above).
    pub allow_publish_for_anonymous: bool,
    /// Authenticated clients may read history.
    pub allow_history_for_client: bool,
    /// Subscribers may read history.
    pub allow_history_for_subscriber: bool,
    /// Anonymous clients may read history (together with one of the two above).
    pub allow_history_for_anonymous: bool,
    /// Authenticated clients may read presence.
    pub allow_presence_for_client: bool,
    /// Subscribers may read presence.
    pub allow_presence_for_subscriber: bool,
    /// Anonymous clients may read presence (together with one of the two above).
    pub allow_presence_for_anonymous: bool,
    /// A user listed after `#` in the channel name may subscribe without a token.
    pub allow_user_limited_channels: bool,
    /// When set, the part after `ns:` must match this regular expression (and may then be non-ASCII).
    pub channel_regex: Option<String>,
    /// Delta compression clients may ask for in `subscribe` (`["fossil"]`, the one there is): each
    /// publication then reaches them as a delta from the previous one where that is smaller.
    pub allowed_delta_types: Vec<String>,
}

impl Default for NamespaceOptions {
    fn default() -> Self {
        Self {
            history_size: 0,
            history_ttl: Duration::ZERO,
            history_meta_ttl: Duration::from_secs(30 * 24 * 3600),
            presence: false,
            join_leave: false,
            force_push_join_leave: false,
            allow_recovery: false,
            force_recovery: false,
            allow_positioning: false,
            force_positioning: false,
            allow_subscribe_for_client: false,
            allow_subscribe_for_anonymous: false,
            allow_publish_for_client: false,
            allow_publish_for_subscriber: false,
            allow_publish_for_anonymous: false,
            allow_history_for_client: false,
            allow_history_for_subscriber: false,
            allow_history_for_anonymous: false,
            allow_presence_for_client: false,
            allow_presence_for_subscriber: false,
            allow_presence_for_anonymous: false,
            allow_user_limited_channels: false,
            channel_regex: None,
            allowed_delta_types: Vec::new(),
        }
    }
}

/// The delta type there is: Fossil's delta format, which centrifuge-js and centrifuge-python apply.
pub const DELTA_FOSSIL: &str = "fossil";

impl NamespaceOptions {
    /// Whether clients may ask for delta type `kind`.
    pub fn allows_delta(&self, kind: &str) -> bool {
        self.allowed_delta_types
            .iter()
            .any(|allowed| allowed == kind)
    }
}

/// Per-subscription changes to a namespace's options (the server API's `subscribe` `override`): each one
/// left out keeps the namespace's value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChannelOverrides {
    /// Replaces `presence`.
    pub presence: Option<bool>,
    /// Replaces `join_leave`.
    pub join_leave: Option<bool>,
    /// Replaces `force_push_join_leave`.
    pub force_push_join_leave: Option<bool>,
    /// Replaces `force_positioning`.
    pub force_positioning: Option<bool>,
    /// Replaces `force_recovery`.
    pub force_recovery: Option<bool>,
}

impl ChannelOverrides {
    /// `options` with these changes.
    pub fn apply(&self, options: &NamespaceOptions) -> NamespaceOptions {
        let mut changed = options.clone();
        for (option, value) in [
            (&mut changed.presence, self.presence),
            (&mut changed.join_leave, self.join_leave),
            (
                &mut changed.force_push_join_leave,
                self.force_push_join_leave,
            ),
            (&mut changed.force_positioning, self.force_positioning),
            (&mut changed.force_recovery, self.force_recovery),
        ] {
            if let Some(value) = value {
                *option = value;
            }
        }
        // As in the configuration, join and leave come with presence.
        if !changed.presence {
            changed.join_leave = false;
            changed.force_push_join_leave = false;
        }
        changed
    }
}

impl NamespaceOptions {
    /// History settings, or `None` when history is off.
    pub fn history(&self) -> Option<HistoryOptions> {
        (self.history_size > 0 && !self.history_ttl.is_zero()).then_some(HistoryOptions {
            size: self.history_size,
            ttl: self.history_ttl,
            meta_ttl: self.history_meta_ttl,
        })
    }
}

/// The `[channel]` section: name rules, top-level options and namespaces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelConfig {
    /// Longest accepted channel name, in bytes.
    pub max_length: usize,
    /// Options of channels without a namespace.
    pub defaults: NamespaceOptions,
    /// Options per namespace name.
    pub namespaces: BTreeMap<String, NamespaceOptions>,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            max_length: 255,
            defaults: NamespaceOptions::default(),
            namespaces: BTreeMap::new(),
        }
    }
}

impl ChannelConfig {
    /// Checks the options that depend on each other, in every namespace (the defaults first).
    fn check_options(&self) -> Result<(), ChannelConfigError> {
        let named = self
            .namespaces
            .iter()
            .map(|(name, options)| (NamespaceKey::Named(name.clone()), options));
        for (key, ns) in std::iter::once((NamespaceKey::Defaults, &self.defaults)).chain(named) {
            let history = ns.history().is_some();
            if (ns.history_size > 0) == ns.history_ttl.is_zero() {
                return Err(ChannelConfigError::HistoryHalfSet(key));
            }
            if (ns.force_recovery || ns.allow_recovery) && !history {
                return Err(ChannelConfigError::RecoveryWithoutHistory(key));
            }
            if (ns.force_positioning || ns.allow_positioning) && !history {
                return Err(ChannelConfigError::PositioningWithoutHistory(key));
            }
            if (ns.join_leave || ns.force_push_join_leave) && !ns.presence {
                return Err(ChannelConfigError::JoinLeaveWithoutPresence(key));
            }
            if let Some(unknown) = ns.allowed_delta_types.iter().find(|t| *t != DELTA_FOSSIL) {
                return Err(ChannelConfigError::DeltaType(key, unknown.clone()));
            }
        }
        Ok(())
    }
}

/// Where one namespace's options are configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceKey {
    /// `channel.defaults`, for channels without a namespace.
    Defaults,
    /// `channel.namespaces.<name>`.
    Named(String),
}

impl std::fmt::Display for NamespaceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Defaults => f.write_str("channel.defaults"),
            Self::Named(name) => write!(f, "channel.namespaces.{name}"),
        }
    }
}

/// Why `[channel]` is refused; each names the namespace and, where one key is wrong, the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChannelConfigError {
    /// Only one of `history_size` and `history_ttl` is set.
    #[error("{0}: history_size and history_ttl must be set together")]
    HistoryHalfSet(NamespaceKey),
    /// Recovery is allowed or forced without history to recover from.
    #[error("{0}: recovery needs history (history_size and history_ttl)")]
    RecoveryWithoutHistory(NamespaceKey),
    /// Positioning is allowed or forced without history to position in.
    #[error("{0}: positioning needs history (history_size and history_ttl)")]
    PositioningWithoutHistory(NamespaceKey),
    /// Join/leave messages are on without presence, whose changes they announce.
    #[error("{0}: join_leave needs presence = true")]
    JoinLeaveWithoutPresence(NamespaceKey),
    /// A delta type other than `fossil`.
    #[error("{0}.allowed_delta_types: unknown delta type {1:?} (the one there is: \"fossil\")")]
    DeltaType(NamespaceKey, String),
    /// A namespace name that is empty or has characters besides ASCII letters, digits, `-`, `_` and `.`.
    #[error(
        "channel.namespaces.{0:?}: a namespace name may only contain ASCII letters, digits, '-', '_' and '.'"
    )]
    NamespaceName(String),
    /// `channel_regex` does not compile.
    #[error("{key}.channel_regex: not a valid regular expression: {error}")]
    ChannelRegex {
        /// The namespace.
        key: NamespaceKey,
        /// What the regex compiler says.
        error: regex::Error,
    },
}

/// Channel rules compiled from [`ChannelConfig`]: what the node consults on every command.
#[derive(Debug)]
pub struct Channels {
    max_length: usize,
    defaults: Namespace,
    namespaces: BTreeMap<String, Namespace>,
}

/// One namespace's options with its regex compiled.
#[derive(Debug)]
pub struct Namespace {
    /// Its name; empty for `[channel.defaults]`.
    pub name: String,
    /// The options as configured.
    pub options: NamespaceOptions,
    regex: Option<Regex>,
}

impl Namespace {
    fn compile(key: NamespaceKey, options: &NamespaceOptions) -> Result<Self, ChannelConfigError> {
        let name = match &key {
            NamespaceKey::Defaults => String::new(),
            NamespaceKey::Named(name) => name.clone(),
        };
        let regex = match &options.channel_regex {
            Some(pattern) => Some(
                Regex::new(pattern)
                    .map_err(|error| ChannelConfigError::ChannelRegex { key, error })?,
            ),
            None => None,
        };
        Ok(Self {
            name,
            options: options.clone(),
            regex,
        })
    }
}

impl Channels {
    /// Checks and compiles the configured rules; the error names the offending namespace or key.
    pub fn new(config: &ChannelConfig) -> Result<Self, ChannelConfigError> {
        config.check_options()?;
        let mut namespaces = BTreeMap::new();
        for (name, options) in &config.namespaces {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(ChannelConfigError::NamespaceName(name.clone()));
            }
            let key = NamespaceKey::Named(name.clone());
            namespaces.insert(name.clone(), Namespace::compile(key, options)?);
        }
        Ok(Self {
            max_length: config.max_length,
            defaults: Namespace::compile(NamespaceKey::Defaults, &config.defaults)?,
            namespaces,
        })
    }

    /// Validates a channel name and finds its namespace.
    ///
    /// Empty names are the caller's concern (a protocol violation for clients, a bad request for the API).
    pub fn resolve(&self, channel: &str) -> Result<&Namespace, ClientError> {
        let (_, channel) = unscoped(channel);
        if channel.len() > self.max_length {
            return Err(ClientError::BAD_REQUEST.with_message("channel name too long"));
        }
        let unprefixed = channel.strip_prefix(PRIVATE_PREFIX).unwrap_or(channel);
        let (namespace, rest) = match unprefixed.split_once(NAMESPACE_BOUNDARY) {
            Some((ns, rest)) => (
                self.namespaces
                    .get(ns)
                    .ok_or(ClientError::UNKNOWN_CHANNEL)?,
                rest,
            ),
            None => (&self.defaults, unprefixed),
        };
        match &namespace.regex {
            Some(regex) if !regex.is_match(rest) => {
                Err(ClientError::BAD_REQUEST.with_message("invalid channel name"))
            }
            Some(_) => Ok(namespace),
            None if !channel.is_ascii() || channel.chars().any(|c| c.is_ascii_control()) => {
                Err(ClientError::BAD_REQUEST.with_message("invalid channel name"))
            }
            None => Ok(namespace),
        }
    }
}

/// Encloses the app id at the start of the name of a channel that belongs to a `[[pusher.apps]]` app:
/// `\u{2}{app id}\u{2}{name}`. Every app has a channel space of its own this way, and no client can name
/// another space's channels: a control character is refused in every name a client or API gives.
pub const APP_SCOPE: char = '\u{2}';

/// The name Herald uses for channel `name` of the app with channel space `scope` (empty: the space the
/// Centrifugo protocol and the single-app form share).
pub fn scoped(scope: &str, name: &str) -> String {
    if scope.is_empty() {
        name.to_owned()
    } else {
        format!("{APP_SCOPE}{scope}{APP_SCOPE}{name}")
    }
}

/// A channel's space (empty for the shared one) and its name within it: the name its app's clients use,
/// and the one its kind and namespace are read from.
pub fn unscoped(channel: &str) -> (&str, &str) {
    channel
        .strip_prefix(APP_SCOPE)
        .and_then(|rest| rest.split_once(APP_SCOPE))
        .unwrap_or(("", channel))
}

/// Prefix of a Pusher private channel.
pub const PUSHER_PRIVATE_PREFIX: &str = "private-";
/// Prefix of a Pusher end-to-end encrypted channel.
pub const PUSHER_ENCRYPTED_PREFIX: &str = "private-encrypted-";
/// Prefix of a Pusher presence channel.
pub const PUSHER_PRESENCE_PREFIX: &str = "presence-";
/// Prefix of a user's own channel (Pusher's `#server-to-user-{id}`).
pub const SERVER_TO_USER_PREFIX: &str = "#server-to-user-";

/// What a channel's name makes it, the same whichever protocol, transport or API names it. Every
/// protected kind needs something to vouch for a subscriber (see [`crate::policy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind<'a> {
    /// No marker: the namespace's configured permissions decide.
    Public,
    /// `$…` (Centrifugo): a subscription token, which a plugin verifies.
    TokenPrivate,
    /// `…#1,2` (Centrifugo): the listed users, when the namespace allows user-limited channels; a plain
    /// channel otherwise.
    UserLimited,
    /// `private-…` (Pusher): the app backend's channel signature.
    Private,
    /// `private-encrypted-…` (Pusher): signed like private; the server relays ciphertext only, so no client
    /// may publish into it.
    PrivateEncrypted,
    /// `presence-…` (Pusher): signed, and the subscriber becomes a member of its roster under a user id.
    Presence,
    /// `#server-to-user-{id}`: the connection of user `{id}`, and nobody else. The id may be empty, which
    /// matches no user (user ids of identified connections are non-empty).
    ServerToUser(&'a str),
}

impl<'a> ChannelKind<'a> {
    /// Classifies a channel by its name. Markers are checked in this order: the user channel, `$`, Pusher's
    /// prefixes (presence, private-encrypted, private; matched with their dash), then a `#` anywhere — all
    /// within the channel's app space (see [`unscoped`]).
    pub fn of(channel: &'a str) -> Self {
        let (_, channel) = unscoped(channel);
        if let Some(user) = channel.strip_prefix(SERVER_TO_USER_PREFIX) {
            Self::ServerToUser(user)
        } else if channel.starts_with(PRIVATE_PREFIX) {
            Self::TokenPrivate
        } else if channel.starts_with(PUSHER_PRESENCE_PREFIX) {
            Self::Presence
        } else if channel.starts_with(PUSHER_ENCRYPTED_PREFIX) {
            Self::PrivateEncrypted
        } else if channel.starts_with(PUSHER_PRIVATE_PREFIX) {
            Self::Private
        } else if channel.contains(USER_BOUNDARY) {
            Self::UserLimited
        } else {
            Self::Public
        }
    }
}

/// Whether `user` is among the users a user-limited channel (`name#1,2`) allows.
pub fn user_allowed(channel: &str, user: &str) -> bool {
    match channel.rsplit_once(USER_BOUNDARY) {
        Some((_, users)) if !user.is_empty() => users.split(USER_SEPARATOR).any(|u| u == user),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_apps_channels_live_in_its_own_space_and_keep_their_kind() {
        let scoped_name = scoped("7", "presence-room");
        assert_eq!(scoped_name, "\u{2}7\u{2}presence-room");
        assert_eq!(unscoped(&scoped_name), ("7", "presence-room"));
        assert_eq!(scoped("", "news"), "news", "the shared space adds nothing");
        assert_eq!(unscoped("news"), ("", "news"));
        assert_eq!(
            unscoped("\u{2}no-end"),
            ("", "\u{2}no-end"),
            "not a space without its closing mark"
        );
        assert_ne!(scoped("7", "a"), scoped("8", "a"));
        assert_eq!(ChannelKind::of(&scoped_name), ChannelKind::Presence);
        assert_eq!(
            ChannelKind::of(&scoped("7", "private-x")),
            ChannelKind::of("private-x")
        );
    }

    fn channels() -> Channels {
        let mut config = ChannelConfig::default();
        config.namespaces.insert(
            "chat".into(),
            NamespaceOptions {
                presence: true,
                ..Default::default()
            },
        );
        config.namespaces.insert(
            "intl".into(),
            NamespaceOptions {
                channel_regex: Some("^[\\p{L}0-9]+$".into()),
                ..Default::default()
            },
        );
        Channels::new(&config).unwrap()
    }

    #[test]
    fn namespaces_resolve_by_prefix_and_private_marker() {
        let c = channels();
        assert!(c.resolve("chat:room").unwrap().options.presence);
        assert!(c.resolve("$chat:room").unwrap().options.presence);
        assert!(!c.resolve("room").unwrap().options.presence);
        assert_eq!(c.resolve("nope:room").unwrap_err().code, 102);
    }

    #[test]
    fn names_are_validated() {
        let c = channels();
        assert_eq!(c.resolve(&"a".repeat(256)).unwrap_err().code, 107);
        assert!(c.resolve(&"a".repeat(255)).is_ok());
        assert_eq!(c.resolve("caf\u{e9}").unwrap_err().code, 107);
        assert_eq!(c.resolve("a\tb").unwrap_err().code, 107);
        assert!(c.resolve("intl:caf\u{e9}").is_ok());
        assert_eq!(c.resolve("intl:a b").unwrap_err().code, 107);
    }

    #[test]
    fn kinds_come_from_the_name_alone() {
        use ChannelKind::*;
        for (channel, kind) in [
            ("news", Public),
            ("", Public),
            ("cache-x", Public),
            ("private", Public),
            ("presence", Public),
            ("server-to-user-77", Public),
            ("chat:room", Public),
            ("chat:private-x", Public),
            ("privatex", Public),
            ("$secret", TokenPrivate),
            ("$chat:x#1", TokenPrivate),
            ("dialog#1,2", UserLimited),
            ("#reserved", UserLimited),
            ("#server-to-user", UserLimited),
            ("private-a", Private),
            ("private-cache-a", Private),
            ("private-encrypted", Private),
            ("private-encrypted-a", PrivateEncrypted),
            ("presence-private-x", Presence),
            ("private-encrypted-cache-a", PrivateEncrypted),
            ("presence-a", Presence),
            ("presence-cache-a", Presence),
            ("#server-to-user-alice", ServerToUser("alice")),
            ("#server-to-user-", ServerToUser("")),
        ] {
            assert_eq!(ChannelKind::of(channel), kind, "{channel}");
        }
    }

    #[test]
    fn user_limited_channels_list_their_users() {
        assert!(user_allowed("dialog#42,43", "43"));
        assert!(user_allowed("news:#42", "42"));
        assert!(!user_allowed("dialog#42,43", "4"));
        assert!(!user_allowed("dialog", "42"));
        assert!(!user_allowed("dialog#", ""));
    }

    #[test]
    fn history_needs_size_and_ttl() {
        let mut o = NamespaceOptions {
            history_size: 10,
            ..Default::default()
        };
        assert!(o.history().is_none());
        o.history_ttl = Duration::from_secs(60);
        assert_eq!(o.history().unwrap().size, 10);
    }

    #[test]
    fn bad_namespace_config_names_the_key() {
        let mut config = ChannelConfig::default();
        config.namespaces.insert(
            "x".into(),
            NamespaceOptions {
                channel_regex: Some("(".into()),
                ..Default::default()
            },
        );
        let error = Channels::new(&config).unwrap_err();
        assert!(
            matches!(&error, ChannelConfigError::ChannelRegex { key, .. } if *key == NamespaceKey::Named("x".into())),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .starts_with("channel.namespaces.x.channel_regex: not a valid regular expression"),
            "{error}"
        );
    }
}
