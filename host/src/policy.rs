//! The channel policy: who may subscribe to a channel, publish into it and read its history and presence,
//! decided in one place for every entrance — both client protocols, every transport, the server API's
//! server-side subscriptions, and whatever entrance comes next.
//!
//! The rules follow the channel's [`ChannelKind`], never the protocol that asks, so one protocol's rules
//! cannot be bypassed through the other. An entrance supplies only what it knows: the requester's user,
//! whether it is already subscribed, and whether something trusted vouched for it (a plugin's allow — which
//! is how subscription tokens are verified —, the Pusher app's channel signature, the server API). The
//! answer is a [`Grant`] that the hub and the node's reads require, so an entrance cannot skip the policy
//! and still reach a channel.
//!
//! | kind | subscribe | client publish | history / presence read |
//! |---|---|---|---|
//! | public | vouched, or the namespace's `allow_subscribe_*` | vouched, or `allow_publish_*` | vouched, or `allow_*_for_*` |
//! | `$…`, `private-…` | vouched | subscribers, with vouching or `allow_publish_*` | vouched, or subscribers with `allow_*_for_*` |
//! | user-limited `a#1,2` | vouched, or a listed user | as above | as above |
//! | `presence-…` | vouched, and the subscriber has a user id (the roster's member) | as above | as above |
//! | `private-encrypted-…` | vouched | nobody (server only) | as above |
//! | `#server-to-user-{id}` | vouched, or user `{id}` | nobody (server only) | as above |

use crate::channel::{ChannelKind, NamespaceOptions};
use crate::errors::{ClientError, Refusal};

/// What is asked of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Receive its publications (and, on a presence channel, join its roster).
    Subscribe,
    /// Publish into it as a client (Centrifugo `publish`, Pusher client events).
    Publish,
    /// Read its history.
    History,
    /// Read its presence or presence stats.
    Presence,
}

/// Who asks, as the entrance knows them.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    /// The user id; empty for an anonymous connection. On a presence channel, the member's user id.
    pub user: &'a str,
    /// Already subscribed to the channel (that subscription passed this policy).
    pub subscribed: bool,
    /// Something trusted vouched for this request: a plugin's allow (subscription tokens are verified by
    /// plugins), the Pusher app's channel signature, the server API, or for client events the Pusher app's
    /// `client_events` setting.
    pub vouched: bool,
}

/// Why the policy refused; every reason is a `103 permission denied` to the client, with this message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The channel needs something to vouch for the subscriber (a token checked by a plugin, a signature).
    NotVouched,
    /// A presence channel's members are users: an anonymous connection cannot join its roster.
    NoUser,
    /// A user's own channel, asked for by another connection.
    OtherUser,
    /// The namespace's configuration does not allow it.
    NotPermitted,
    /// On a protected channel only its subscribers may do this.
    NotSubscribed,
    /// Only the server publishes here (encrypted and user channels).
    ServerOnly,
}

impl Denied {
    /// What the client is told.
    pub fn message(self) -> &'static str {
        match self {
            Self::NotVouched => "the channel needs a token or signature",
            Self::NoUser => "presence channels need a user id",
            Self::OtherUser => "the channel belongs to another user",
            Self::NotPermitted => "permission denied",
            Self::NotSubscribed => "only subscribers of the channel may do this",
            Self::ServerOnly => "only the server publishes into this channel",
        }
    }
}

impl From<Denied> for ClientError {
    fn from(denied: Denied) -> Self {
        ClientError::PERMISSION_DENIED.with_message(denied.message())
    }
}

impl From<Denied> for Refusal {
    fn from(denied: Denied) -> Self {
        Self::Error(denied.into())
    }
}

/// Proof that the policy allowed an action on a channel. Only [`authorize`] and [`Grant::server`] make
/// one; the hub's subscribe and the node's history and presence reads take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Grant(());

impl Grant {
    /// For the server's own entrances, which hold the API key (the server API, the Pusher HTTP API, queue
    /// ingestion) and act for the backend: they may touch any channel.
    pub fn server() -> Self {
        Self(())
    }
}

/// Decides whether `who` may do `action` on `channel`, whose namespace has `options`.
pub fn authorize(
    channel: &str,
    options: &NamespaceOptions,
    action: Action,
    who: Requester<'_>,
) -> Result<Grant, Denied> {
    let kind = match ChannelKind::of(channel) {
        ChannelKind::UserLimited if !options.allow_user_limited_channels => ChannelKind::Public,
        kind => kind,
    };
    match action {
        Action::Subscribe => may_subscribe(channel, kind, options, who),
        Action::Publish | Action::History | Action::Presence => may_act(kind, options, action, who),
    }
    .map(|()| Grant(()))
}

fn may_subscribe(
    channel: &str,
    kind: ChannelKind<'_>,
    options: &NamespaceOptions,
    who: Requester<'_>,
) -> Result<(), Denied> {
    let anonymous = who.user.is_empty();
    match kind {
        _ if who.vouched && kind == ChannelKind::Presence && anonymous => Err(Denied::NoUser),
        _ if who.vouched => Ok(()),
        ChannelKind::Public => configured(
            options.allow_subscribe_for_client,
            false,
            options.allow_subscribe_for_anonymous,
            who,
        ),
        ChannelKind::UserLimited
            if !anonymous && crate::channel::user_allowed(channel, who.user) =>
        {
            Ok(())
        }
        ChannelKind::UserLimited => Err(Denied::NotPermitted),
        ChannelKind::ServerToUser(owner) if !owner.is_empty() && owner == who.user => Ok(()),
        ChannelKind::ServerToUser(_) => Err(Denied::OtherUser),
        ChannelKind::TokenPrivate
        | ChannelKind::Private
        | ChannelKind::PrivateEncrypted
        | ChannelKind::Presence => Err(Denied::NotVouched),
    }
}

/// Publishing and reading: the namespace's three switches, and on a protected channel only for its
/// subscribers (a plugin's allow also opens reads).
fn may_act(
    kind: ChannelKind<'_>,
    options: &NamespaceOptions,
    action: Action,
    who: Requester<'_>,
) -> Result<(), Denied> {
    let o = options;
    let (for_client, for_subscriber, for_anonymous) = match action {
        Action::Publish => match kind {
            ChannelKind::PrivateEncrypted | ChannelKind::ServerToUser(_) => {
                return Err(Denied::ServerOnly);
            }
            _ => (
                o.allow_publish_for_client,
                o.allow_publish_for_subscriber,
                o.allow_publish_for_anonymous,
            ),
        },
        Action::History => (
            o.allow_history_for_client,
            o.allow_history_for_subscriber,
            o.allow_history_for_anonymous,
        ),
        Action::Presence | Action::Subscribe => (
            o.allow_presence_for_client,
            o.allow_presence_for_subscriber,
            o.allow_presence_for_anonymous,
        ),
    };
    // A protected channel is only touched by those it admitted: `_for_client` does not open it to every
    // connection. A plugin may open a read to anyone; a publish always needs the subscription.
    let reader_vouched = who.vouched && action != Action::Publish;
    if kind != ChannelKind::Public && !who.subscribed && !reader_vouched {
        return Err(Denied::NotSubscribed);
    }
    if who.vouched {
        return Ok(());
    }
    configured(for_client, for_subscriber, for_anonymous, who)
}

/// `allow_X_for_client` / `_for_subscriber` / `_for_anonymous`, as configured for the namespace.
fn configured(
    for_client: bool,
    for_subscriber: bool,
    for_anonymous: bool,
    who: Requester<'_>,
) -> Result<(), Denied> {
    let granted = for_client || (for_subscriber && who.subscribed);
    if granted && (!who.user.is_empty() || for_anonymous) {
        Ok(())
    } else {
        Err(Denied::NotPermitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything open to everyone, as the embedded default configuration and more.
    fn open() -> NamespaceOptions {
        NamespaceOptions {
            allow_subscribe_for_client: true,
            allow_subscribe_for_anonymous: true,
            allow_publish_for_client: true,
            allow_publish_for_anonymous: true,
            allow_history_for_client: true,
            allow_history_for_anonymous: true,
            allow_presence_for_client: true,
            allow_presence_for_anonymous: true,
            allow_user_limited_channels: true,
            ..Default::default()
        }
    }

    fn anyone(user: &str) -> Requester<'_> {
        Requester {
            user,
            subscribed: false,
            vouched: false,
        }
    }

    const PROTECTED: [&str; 8] = [
        "$secret",
        "private-a",
        "private-cache-a",
        "private-encrypted-a",
        "presence-a",
        "presence-cache-a",
        "#server-to-user-alice",
        "dialog#alice",
    ];

    #[test]
    fn open_namespace_options_never_open_a_protected_channel() {
        for channel in PROTECTED {
            for user in ["", "mallory"] {
                for action in [
                    Action::Subscribe,
                    Action::Publish,
                    Action::History,
                    Action::Presence,
                ] {
                    assert!(
                        authorize(channel, &open(), action, anyone(user)).is_err(),
                        "{user:?} may {action:?} {channel}"
                    );
                }
            }
        }
    }

    #[test]
    fn public_channels_follow_the_namespace() {
        assert!(authorize("news", &open(), Action::Subscribe, anyone("")).is_ok());
        let closed = NamespaceOptions::default();
        for action in [
            Action::Subscribe,
            Action::Publish,
            Action::History,
            Action::Presence,
        ] {
            assert_eq!(
                authorize("news", &closed, action, anyone("bob")),
                Err(Denied::NotPermitted)
            );
        }
        let for_clients = NamespaceOptions {
            allow_subscribe_for_client: true,
            ..Default::default()
        };
        assert!(authorize("news", &for_clients, Action::Subscribe, anyone("bob")).is_ok());
        assert!(authorize("news", &for_clients, Action::Subscribe, anyone("")).is_err());
    }

    #[test]
    fn vouching_opens_protected_subscriptions() {
        let vouched = |user| Requester {
            user,
            subscribed: false,
            vouched: true,
        };
        for channel in PROTECTED {
            assert!(
                authorize(
                    channel,
                    &NamespaceOptions::default(),
                    Action::Subscribe,
                    vouched("bob")
                )
                .is_ok(),
                "{channel}"
            );
        }
        // The roster holds users only.
        assert_eq!(
            authorize("presence-a", &open(), Action::Subscribe, vouched("")),
            Err(Denied::NoUser)
        );
    }

    #[test]
    fn users_reach_their_own_channels() {
        assert!(
            authorize(
                "#server-to-user-alice",
                &open(),
                Action::Subscribe,
                anyone("alice")
            )
            .is_ok()
        );
        assert_eq!(
            authorize(
                "#server-to-user-alice",
                &open(),
                Action::Subscribe,
                anyone("bob")
            ),
            Err(Denied::OtherUser)
        );
        assert!(authorize("#server-to-user-", &open(), Action::Subscribe, anyone("")).is_err());
        assert!(
            authorize(
                "dialog#alice,bob",
                &open(),
                Action::Subscribe,
                anyone("bob")
            )
            .is_ok()
        );
        assert!(
            authorize(
                "dialog#alice,bob",
                &open(),
                Action::Subscribe,
                anyone("carol")
            )
            .is_err()
        );
        // Without user-limited channels in the namespace, `#` is an ordinary character.
        let plain = NamespaceOptions {
            allow_user_limited_channels: false,
            ..open()
        };
        assert!(authorize("dialog#alice", &plain, Action::Subscribe, anyone("carol")).is_ok());
    }

    #[test]
    fn subscribers_of_protected_channels_act_as_configured() {
        let subscriber = Requester {
            user: "bob",
            subscribed: true,
            vouched: false,
        };
        let for_subscribers = NamespaceOptions {
            allow_publish_for_subscriber: true,
            allow_history_for_subscriber: true,
            allow_presence_for_subscriber: true,
            ..Default::default()
        };
        for action in [Action::Publish, Action::History, Action::Presence] {
            assert!(authorize("private-a", &for_subscribers, action, subscriber).is_ok());
            assert!(authorize("presence-a", &for_subscribers, action, subscriber).is_ok());
            assert_eq!(
                authorize(
                    "private-a",
                    &NamespaceOptions::default(),
                    action,
                    subscriber
                ),
                Err(Denied::NotPermitted)
            );
        }
        for channel in ["private-encrypted-a", "#server-to-user-bob"] {
            assert_eq!(
                authorize(channel, &open(), Action::Publish, subscriber),
                Err(Denied::ServerOnly)
            );
            assert!(authorize(channel, &for_subscribers, Action::History, subscriber).is_ok());
        }
    }

    #[test]
    fn a_plugin_may_open_reads_but_publishing_needs_a_subscription() {
        let vouched = Requester {
            user: "bob",
            subscribed: false,
            vouched: true,
        };
        let closed = NamespaceOptions::default();
        assert!(authorize("private-a", &closed, Action::History, vouched).is_ok());
        assert!(authorize("private-a", &closed, Action::Presence, vouched).is_ok());
        assert_eq!(
            authorize("private-a", &closed, Action::Publish, vouched),
            Err(Denied::NotSubscribed)
        );
    }
}
