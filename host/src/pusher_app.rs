//! The Pusher app beside the core: what Pusher's protocol asks of the server beyond encoding — its cache
//! channels' history rule, the cluster-wide occupancy it reports, and its webhooks. The node calls it at
//! the few points where a channel's life changes; nothing else in the core knows the Pusher app.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::channel::ChannelKind;
use crate::config::PusherConfig;
use crate::engine::{ClientInfo, Engine, EngineError, HistoryOptions};
use crate::hub::Hub;
use crate::protocol::Protocol;
use crate::protocol::pusher::codec;
use crate::sync::lock;
use crate::webhooks::{WebhookEvent, Webhooks};

/// Prefix of the presence lists of which nodes hold a channel (see [`PusherApp::channel_opened`]);
/// clients cannot name it.
const OCCUPANCY_PREFIX: &str = "\u{1}herald:occupied:";

/// The configured Pusher app (or none), and its webhook queues.
#[derive(Debug)]
pub struct PusherApp {
    config: PusherConfig,
    /// The app's webhooks (none unless configured).
    pub webhooks: Webhooks,
    /// With subscription counting: the count this node's subscribers of each channel were last told.
    told_counts: Mutex<HashMap<String, u64>>,
}

impl PusherApp {
    /// The app `config` describes, its webhook queues stopping with `shutdown`.
    pub fn new(config: &PusherConfig, shutdown: tokio_util::sync::CancellationToken) -> Self {
        let webhooks = if config.enabled() {
            Webhooks::start(
                &config.webhooks,
                &config.key,
                config.secret.expose(),
                shutdown,
            )
        } else {
            Webhooks::start(&[], "", "", shutdown)
        };
        Self {
            config: config.clone(),
            webhooks,
            told_counts: Mutex::default(),
        }
    }

    /// Whether the app has subscription counting on.
    pub fn counts_subscriptions(&self) -> bool {
        self.config.enabled() && self.config.subscription_count
    }

    /// With subscription counting on, tells this node's Pusher subscribers of each channel in `totals`
    /// (the cluster-wide subscriber counts of the channels with subscribers here) the channel's count, when
    /// it changed since they were last told: `pusher_internal:subscription_count`, on the channels Pusher
    /// counts (not presence channels, which have their members).
    pub fn tell_counts(&self, hub: &Hub, totals: &HashMap<String, u64>) {
        if !self.counts_subscriptions() {
            return;
        }
        let mut told = lock(&self.told_counts);
        told.retain(|channel, _| totals.contains_key(channel));
        for (channel, &total) in totals {
            if !self.announced(channel)
                || ChannelKind::of(channel) == ChannelKind::Presence
                || told.get(channel) == Some(&total)
            {
                continue;
            }
            told.insert(channel.clone(), total);
            hub.notify(
                channel,
                Protocol::Pusher,
                codec::subscription_count(channel, total),
            );
        }
    }

    /// How a cache channel (`cache-…`) in a namespace without history keeps its last event: one entry for
    /// `pusher.cache_ttl`. `None` for other channels, or without a Pusher app.
    pub fn history_options(&self, channel: &str) -> Option<HistoryOptions> {
        (self.config.enabled() && codec::is_cache_channel(channel)).then_some(HistoryOptions {
            size: 1,
            ttl: self.config.cache_ttl,
            meta_ttl: self.config.cache_ttl,
        })
    }

    /// Whether the app keeps the channel's occupancy: with webhooks on, for the channels it hears of.
    pub fn tracks_occupancy(&self, channel: &str) -> bool {
        self.webhooks.enabled() && self.announced(channel)
    }

    /// A channel got its first subscriber on node `node`: with webhooks on, the app hears when the channel
    /// became occupied in the whole cluster.
    pub async fn channel_opened(&self, engine: &Engine, node: &str, channel: &str) {
        if self.tracks_occupancy(channel) {
            self.track_occupancy(engine, node, channel, true).await;
        }
    }

    /// A channel lost its last subscriber on node `node`: with webhooks on, the app hears when no node has
    /// a subscriber left.
    pub async fn channel_closed(&self, engine: &Engine, node: &str, channel: &str) {
        if self.tracks_occupancy(channel) {
            self.track_occupancy(engine, node, channel, false).await;
        }
    }

    /// Node `node` died holding the channel: its hold is dropped, and the app hears `channel_vacated` if no
    /// node holds the channel now. Whether it was vacated.
    pub async fn node_left_channel(&self, engine: &Engine, node: &str, channel: &str) -> bool {
        self.track_occupancy(engine, node, channel, false).await
    }

    /// Presence members (already out of the channel's presence) left: each user with no other connection
    /// in the channel is announced once — every node's subscribers hear `member_removed`, and the app's
    /// webhook too. One presence query however many left, which does not read the members. How many were
    /// announced.
    pub async fn members_left(
        &self,
        engine: &Engine,
        channel: &str,
        members: Vec<ClientInfo>,
    ) -> Result<usize, EngineError> {
        let users: Vec<String> = members.iter().map(|member| member.user.clone()).collect();
        let staying = engine.presence.users_present(channel, &users).await?;
        let mut announced = HashSet::new();
        for member in members {
            if staying.contains(&member.user) || !announced.insert(member.user.clone()) {
                continue;
            }
            self.webhooks.send(WebhookEvent::MemberRemoved {
                channel: channel.to_owned(),
                user_id: member.user.clone(),
            });
            engine.broker.publish_leave(channel, member).await?;
        }
        Ok(announced.len())
    }

    /// Channels whose occupancy the app hears of: the names its protocol can use, but not a user's own
    /// `#server-to-user-` channel.
    fn announced(&self, channel: &str) -> bool {
        codec::valid_channel_name(channel, self.config.max_channel_name_length)
            && !matches!(ChannelKind::of(channel), ChannelKind::ServerToUser(_))
    }

    /// Keeps which nodes hold a channel in the engine's presence (under a name no client can use, the
    /// node's id as the entry), so occupied/vacated is decided for the cluster: occupied when this node
    /// entered an empty list, vacated when it left one that is then empty. Two nodes racing may both
    /// announce. A node that dies holding the channel is taken out by the survivor that settles its
    /// estate (see [`crate::estate`]). Whether an event was sent.
    async fn track_occupancy(
        &self,
        engine: &Engine,
        node: &str,
        channel: &str,
        occupied: bool,
    ) -> bool {
        let holders = format!("{OCCUPANCY_PREFIX}{channel}");
        let presence = &engine.presence;
        let result = async {
            if occupied {
                let before = presence.presence(&holders).await?;
                let entry = ClientInfo {
                    client: node.to_owned(),
                    ..ClientInfo::default()
                };
                presence.add_presence(&holders, entry).await?;
                Ok::<_, EngineError>(before.is_empty())
            } else {
                presence.remove_presence(&holders, node).await?;
                Ok(presence.presence(&holders).await?.is_empty())
            }
        }
        .await;
        match result {
            Ok(true) => {
                self.webhooks.send(if occupied {
                    WebhookEvent::ChannelOccupied {
                        channel: channel.to_owned(),
                    }
                } else {
                    WebhookEvent::ChannelVacated {
                        channel: channel.to_owned(),
                    }
                });
                true
            }
            Ok(false) => false,
            Err(error) => {
                tracing::warn!(channel, %error, "channel occupancy not tracked");
                false
            }
        }
    }
}
