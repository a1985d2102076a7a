//! The Pusher apps beside the core: what Pusher's protocol asks of the server beyond encoding — each app's
//! credentials and limits, its cache channels' history rule, the cluster-wide occupancy it reports, and
//! its webhooks. The node calls [`PusherApps`] at the few points where a channel's life changes, and it
//! finds the channel's app by the channel's space (see [`crate::channel::scoped`]); nothing else in the
//! core knows the Pusher apps.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

use crate::channel::{self, ChannelKind};
use crate::config::{PusherAppConfig, PusherConfig};
use crate::disconnect::Disconnect;
use crate::engine::{ClientInfo, Engine, EngineError, HistoryOptions};
use crate::hub::Hub;
use crate::outbound::Outbound;
use crate::protocol::Protocol;
use crate::protocol::pusher::{close, codec};
use crate::sync::lock;
use crate::webhooks::{WebhookEvent, Webhooks};

/// Prefix of the presence lists of which nodes hold a channel (see [`PusherApp::channel_opened`]);
/// clients cannot name it.
const OCCUPANCY_PREFIX: &str = "\u{1}herald:occupied:";

/// The configured Pusher apps, found by key (connections), id (API requests) or channel space. The list
/// is replaced whole when the configuration file changes ([`PusherApps::reload`]); whoever holds an app
/// keeps a live view of it, so a reconfigured app's open connections follow its new settings.
#[derive(Debug)]
pub struct PusherApps {
    apps: ArcSwap<Vec<Arc<PusherApp>>>,
    /// The node's shutdown: webhook queues stop with it.
    shutdown: CancellationToken,
    /// Webhook senders replaced by a reload: still flushing what they queued, awaited at shutdown, and
    /// their counts still part of the totals (so a counter never goes down).
    retired: Mutex<Vec<Webhooks>>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

impl PusherApps {
    /// The apps `config` describes, their webhook queues stopping with `shutdown`.
    pub fn new(config: &PusherConfig, shutdown: &CancellationToken) -> Self {
        let apps = Self::described(config)
            .map(|(scope, app)| Arc::new(PusherApp::new(scope, app, shutdown)))
            .collect();
        Self {
            apps: ArcSwap::from_pointee(apps),
            shutdown: shutdown.clone(),
            retired: Mutex::default(),
            reloading: tokio::sync::Mutex::default(),
        }
    }

    /// The apps of `config`, each with its channel space: the single-app form shares the Centrifugo
    /// protocol's (empty), each `[[pusher.apps]]` entry has its id's.
    fn described(config: &PusherConfig) -> impl Iterator<Item = (String, &PusherAppConfig)> {
        let single = config.single_app().map(|app| (String::new(), app));
        let listed = config.apps.iter().map(|app| (app.id.clone(), app));
        single.into_iter().chain(listed)
    }

    /// Every app.
    pub fn all(&self) -> Arc<Vec<Arc<PusherApp>>> {
        self.apps.load_full()
    }

    /// Whether any app is configured (the Pusher endpoints exist only then).
    pub fn any(&self) -> bool {
        !self.apps.load().is_empty()
    }

    /// The app clients connect to with `key`.
    pub fn by_key(&self, key: &str) -> Option<Arc<PusherApp>> {
        self.find(|app| app.config().key == key)
    }

    /// The app API requests name with `id`.
    pub fn by_id(&self, id: &str) -> Option<Arc<PusherApp>> {
        self.find(|app| app.config().id == id)
    }

    fn find(&self, matches: impl Fn(&PusherApp) -> bool) -> Option<Arc<PusherApp>> {
        self.apps.load().iter().find(|app| matches(app)).cloned()
    }

    /// The app a channel belongs to, with the channel's name as that app's clients know it.
    pub fn for_channel<'a>(&self, channel: &'a str) -> Option<(Arc<PusherApp>, &'a str)> {
        let (scope, name) = channel::unscoped(channel);
        let app = self.find(|app| app.scope == scope)?;
        Some((app, name))
    }

    /// Makes the apps those of `config`, matched by channel space: a new app is served at once; a changed
    /// one keeps its connections and follows its new settings from the next event on, except that a
    /// disabled app's connections are closed with 4003 and those of an app whose key changed with 4001; a
    /// removed app's connections are closed with 4001 and its API answers 404. What changed, one line per
    /// app.
    pub async fn reload(&self, config: &PusherConfig) -> Vec<String> {
        let _one_at_a_time = self.reloading.lock().await;
        let before = self.apps.load_full();
        let mut changes = Vec::new();
        let mut apps = Vec::new();
        for (scope, wanted) in Self::described(config) {
            let Some(app) = before.iter().find(|app| app.scope == scope) else {
                changes.push(format!("app {:?} added", wanted.id));
                apps.push(Arc::new(PusherApp::new(scope, wanted, &self.shutdown)));
                continue;
            };
            if let Some(change) = app.reconfigure(wanted, &self.shutdown, &self.retired) {
                changes.push(format!("app {:?} {change}", wanted.id));
            }
            apps.push(app.clone());
        }
        self.apps.store(Arc::new(apps));
        let now = self.apps.load();
        for gone in before
            .iter()
            .filter(|app| !now.iter().any(|kept| Arc::ptr_eq(kept, app)))
        {
            let closed = gone.close_connections(close::UNKNOWN_APP);
            lock(&self.retired).push(gone.retire_webhooks());
            changes.push(format!(
                "app {:?} removed ({closed} connections closed)",
                gone.config().id
            ));
        }
        changes
    }

    /// Whether some app has subscription counting on.
    pub fn count_subscriptions(&self) -> bool {
        self.apps
            .load()
            .iter()
            .any(|app| app.config().subscription_count)
    }

    /// With subscription counting on, tells this node's Pusher subscribers of each channel in `totals`
    /// (the cluster-wide subscriber counts of the channels with subscribers here) the channel's count, when
    /// it changed since they were last told (see [`PusherApp::tell_counts`]).
    pub fn tell_counts(&self, hub: &Hub, totals: &HashMap<String, u64>) {
        for app in self.apps.load().iter() {
            app.tell_counts(hub, totals);
        }
    }

    /// How a cache channel (`cache-…`) in a namespace without history keeps its last event: one entry for
    /// its app's `cache_ttl`. `None` for other channels, or channels of no app.
    pub fn history_options(&self, channel: &str) -> Option<HistoryOptions> {
        let (app, name) = self.for_channel(channel)?;
        codec::is_cache_channel(name).then_some(HistoryOptions {
            size: 1,
            ttl: app.config().cache_ttl,
            meta_ttl: app.config().cache_ttl,
        })
    }

    /// Whether the channel's app keeps its occupancy: with webhooks on, for the channels it hears of.
    pub fn tracks_occupancy(&self, channel: &str) -> bool {
        self.for_channel(channel)
            .is_some_and(|(app, name)| app.webhooks().enabled() && app.announced(name))
    }

    /// A channel got its first subscriber on node `node`: with webhooks on, its app hears when the channel
    /// became occupied in the whole cluster.
    pub async fn channel_opened(&self, engine: &Engine, node: &str, channel: &str) {
        if self.tracks_occupancy(channel) {
            self.track_occupancy(engine, node, channel, true).await;
        }
    }

    /// A channel lost its last subscriber on node `node`: with webhooks on, its app hears when no node has
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
        let app = self.for_channel(channel);
        let mut announced = HashSet::new();
        for member in members {
            if staying.contains(&member.user) || !announced.insert(member.user.clone()) {
                continue;
            }
            if let Some((app, name)) = &app {
                app.webhooks().send(WebhookEvent::MemberRemoved {
                    channel: (*name).to_owned(),
                    user_id: member.user.clone(),
                });
            }
            engine.broker.publish_leave(channel, member).await?;
        }
        Ok(announced.len())
    }

    /// Every webhook sender, the apps' and the retired ones.
    fn every_webhooks(&self) -> Vec<Webhooks> {
        let apps = self.apps.load();
        let current = apps.iter().map(|app| Webhooks::clone(&app.webhooks()));
        current.chain(lock(&self.retired).iter().cloned()).collect()
    }

    /// Webhook events waiting in every app's queues.
    pub fn webhooks_queued(&self) -> usize {
        self.every_webhooks().iter().map(Webhooks::queued).sum()
    }

    /// Webhook events sent, failed and dropped, over every app (and the senders reloads replaced).
    pub fn webhook_events(&self) -> [u64; 3] {
        self.every_webhooks()
            .iter()
            .fold([0; 3], |mut total, webhooks| {
                let counts = webhooks.counts();
                for (sum, count) in
                    total
                        .iter_mut()
                        .zip([&counts.sent, &counts.failed, &counts.dropped])
                {
                    *sum += count.load(Ordering::Relaxed);
                }
                total
            })
    }

    /// Waits until every app's webhook queues have stopped (after the shutdown).
    pub async fn stopped(&self) {
        for webhooks in self.every_webhooks() {
            webhooks.stopped().await;
        }
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
                if let Some((app, name)) = self.for_channel(channel) {
                    let channel = name.to_owned();
                    app.webhooks().send(if occupied {
                        WebhookEvent::ChannelOccupied { channel }
                    } else {
                        WebhookEvent::ChannelVacated { channel }
                    });
                }
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

/// One Pusher app: its configuration, webhook queues, and this node's use of its limits. Everything but
/// its channel space can change under a reload.
#[derive(Debug)]
pub struct PusherApp {
    /// Its channel space: empty for the single-app form, which shares the Centrifugo protocol's channels;
    /// the app id for `[[pusher.apps]]`.
    scope: String,
    config: ArcSwap<PusherAppConfig>,
    /// The app's webhooks (none unless configured), with what stops them.
    webhooks: ArcSwap<AppWebhooks>,
    /// The app's per-second rates, as configured.
    rates: ArcSwap<Rates>,
    /// With subscription counting: the count this node's subscribers of each channel were last told.
    told_counts: Mutex<HashMap<String, u64>>,
    /// The app's connections on this node.
    connections: Arc<Connections>,
}

/// An app's webhook sender (what it derefs to), with what stops it.
#[derive(Debug)]
pub struct AppWebhooks {
    webhooks: Webhooks,
    /// Ends their queues (after a last flush), on shutdown or when a reload replaces them.
    stop: CancellationToken,
}

impl std::ops::Deref for AppWebhooks {
    type Target = Webhooks;

    fn deref(&self) -> &Webhooks {
        &self.webhooks
    }
}

impl AppWebhooks {
    fn start(config: &PusherAppConfig, shutdown: &CancellationToken) -> Self {
        let stop = shutdown.child_token();
        let webhooks = Webhooks::start(
            &config.webhooks,
            &config.key,
            config.secret.expose(),
            stop.clone(),
        );
        Self { webhooks, stop }
    }
}

#[derive(Debug)]
struct Rates {
    /// The app's `client-*` events on this node, with `max_client_events_per_second`.
    client_events: Option<DefaultDirectRateLimiter>,
    /// The events its HTTP API triggers on this node, with `max_api_events_per_second`.
    api_events: Option<DefaultDirectRateLimiter>,
}

impl Rates {
    fn of(config: &PusherAppConfig) -> Self {
        Self {
            client_events: per_second(config.max_client_events_per_second),
            api_events: per_second(config.max_api_events_per_second),
        }
    }
}

/// An app's open connections on this node, so a reload can close them.
#[derive(Debug, Default)]
struct Connections {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Outbound>>>,
}

/// One of an app's connections, counted (and closable by a reload) until it is dropped.
#[derive(Debug)]
pub struct AppConnection {
    connections: Arc<Connections>,
    number: u64,
}

impl Drop for AppConnection {
    fn drop(&mut self) {
        lock(&self.connections.open).remove(&self.number);
    }
}

/// A per-second rate as a limiter, with the same number as burst; none for 0 (unlimited).
fn per_second(rate: u32) -> Option<DefaultDirectRateLimiter> {
    NonZeroU32::new(rate).map(|rate| RateLimiter::direct(Quota::per_second(rate)))
}

impl PusherApp {
    fn new(scope: String, config: &PusherAppConfig, shutdown: &CancellationToken) -> Self {
        Self {
            scope,
            webhooks: ArcSwap::from_pointee(AppWebhooks::start(config, shutdown)),
            rates: ArcSwap::from_pointee(Rates::of(config)),
            config: ArcSwap::from_pointee(config.clone()),
            told_counts: Mutex::default(),
            connections: Arc::default(),
        }
    }

    /// Its configuration now.
    pub fn config(&self) -> Arc<PusherAppConfig> {
        self.config.load_full()
    }

    /// Its webhooks now.
    pub fn webhooks(&self) -> Guard<Arc<AppWebhooks>> {
        self.webhooks.load()
    }

    /// Takes `wanted` as the app's configuration; what that changed for its clients, if anything. Webhook
    /// queues are restarted only when their targets or the credentials that sign them change (the old
    /// queues flush first, into `retired`).
    fn reconfigure(
        &self,
        wanted: &PusherAppConfig,
        shutdown: &CancellationToken,
        retired: &Mutex<Vec<Webhooks>>,
    ) -> Option<String> {
        let before = self.config();
        if *before == *wanted {
            return None;
        }
        if (&before.webhooks, &before.key, &before.secret)
            != (&wanted.webhooks, &wanted.key, &wanted.secret)
        {
            let replaced = self
                .webhooks
                .swap(Arc::new(AppWebhooks::start(wanted, shutdown)));
            replaced.stop.cancel();
            lock(retired).push(replaced.webhooks.clone());
        }
        if (
            before.max_client_events_per_second,
            before.max_api_events_per_second,
        ) != (
            wanted.max_client_events_per_second,
            wanted.max_api_events_per_second,
        ) {
            self.rates.store(Arc::new(Rates::of(wanted)));
        }
        // Stored before closing, under the connections' lock, so no connection slips in between.
        let open = lock(&self.connections.open);
        self.config.store(Arc::new(wanted.clone()));
        let closing = if before.enabled && !wanted.enabled {
            Some((close::APP_DISABLED, "disabled"))
        } else if before.key != wanted.key {
            Some((close::UNKNOWN_APP, "given a new key"))
        } else {
            None
        };
        drop(open);
        Some(match closing {
            Some((disconnect, what)) => {
                let closed = self.close_connections(disconnect);
                format!("{what} ({closed} connections closed)")
            }
            None if !before.enabled && wanted.enabled => "enabled".to_owned(),
            None => "reconfigured".to_owned(),
        })
    }

    /// Closes every connection of the app on this node with `disconnect`, after the `pusher:error` that
    /// tells pusher-js why; how many.
    fn close_connections(&self, disconnect: Disconnect) -> usize {
        let open = lock(&self.connections.open);
        for outbound in open.values() {
            outbound.push(codec::error(Some(disconnect.code), &disconnect.reason));
            outbound.close(disconnect.clone());
        }
        open.len()
    }

    /// Stops the app's webhook queues (after a last flush); the sender, to be awaited.
    fn retire_webhooks(&self) -> Webhooks {
        let webhooks = self.webhooks.load();
        webhooks.stop.cancel();
        webhooks.webhooks.clone()
    }

    /// The name Herald uses for the app's channel `name`.
    pub fn channel(&self, name: &str) -> String {
        channel::scoped(&self.scope, name)
    }

    /// The name the app's clients know `channel` by, when it is in the app's space.
    pub fn name_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        let (scope, name) = channel::unscoped(channel);
        (scope == self.scope).then_some(name)
    }

    /// The name Herald uses for the app's user `user`: users of apps with their own channel space are
    /// their app's alone, so the API's `terminate_connections` of one app never reaches another's.
    pub fn user(&self, user: &str) -> String {
        channel::scoped(&self.scope, user)
    }

    /// Takes a place among the app's connections on this node for the connection writing to `outbound`:
    /// refused with 4003 when the app is disabled, 4004 when it is at `max_connections`.
    pub fn connect(&self, outbound: &Arc<Outbound>) -> Result<AppConnection, Disconnect> {
        let mut open = lock(&self.connections.open);
        let config = self.config.load();
        if !config.enabled {
            return Err(close::APP_DISABLED);
        }
        if config.max_connections != 0 && open.len() >= config.max_connections {
            return Err(close::OVER_QUOTA);
        }
        let number = self.connections.next.fetch_add(1, Ordering::Relaxed);
        open.insert(number, outbound.clone());
        Ok(AppConnection {
            connections: self.connections.clone(),
            number,
        })
    }

    /// Whether one more `client-*` event is within the app's rate.
    pub fn client_event_allowed(&self) -> bool {
        self.rates
            .load()
            .client_events
            .as_ref()
            .is_none_or(|limiter| limiter.check().is_ok())
    }

    /// Whether `events` more HTTP API events are within the app's rate.
    pub fn api_events_allowed(&self, events: usize) -> bool {
        let rates = self.rates.load();
        let Some(limiter) = &rates.api_events else {
            return true;
        };
        let events = NonZeroU32::new(u32::try_from(events).unwrap_or(u32::MAX));
        events.is_none_or(|n| matches!(limiter.check_n(n), Ok(Ok(()))))
    }

    /// With subscription counting on, `pusher_internal:subscription_count` to this node's subscribers of
    /// the app's channels in `totals` whose count changed since they were last told, on the channels Pusher
    /// counts (not presence channels, which have their members).
    fn tell_counts(&self, hub: &Hub, totals: &HashMap<String, u64>) {
        if !self.config().subscription_count {
            return;
        }
        let mut told = lock(&self.told_counts);
        told.retain(|channel, _| totals.contains_key(channel));
        for (channel, &total) in totals {
            let (scope, name) = channel::unscoped(channel);
            if scope != self.scope
                || !self.announced(name)
                || ChannelKind::of(name) == ChannelKind::Presence
                || told.get(channel) == Some(&total)
            {
                continue;
            }
            told.insert(channel.clone(), total);
            hub.notify(
                channel,
                Protocol::Pusher,
                codec::subscription_count(name, total),
            );
        }
    }

    /// Channels whose occupancy the app hears of: the names its protocol can use, but not a user's own
    /// `#server-to-user-` channel.
    fn announced(&self, name: &str) -> bool {
        codec::valid_channel_name(name, self.config().max_channel_name_length)
            && !matches!(ChannelKind::of(name), ChannelKind::ServerToUser(_))
    }
}
