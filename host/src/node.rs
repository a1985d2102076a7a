//! The node: the running server's shared core — configuration, channel rules, hub and engine — and the
//! operations every entrance (client sessions, the server API) shares, so a publish means the same thing
//! whoever sends it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::channel::{Channels, Namespace};
use crate::config::Config;
use crate::engine::{
    Engine, EngineError, HistoryOptions, HistoryResult, Idempotency, PresenceStats, Publication,
    PublishOptions, now_ms,
};
// The core model the node's operations speak in, so that the sessions above need no other door to it.
pub use crate::engine::{ClientInfo, HistoryFilter, StreamPosition};
use crate::errors::{ClientError, Refusal};
use crate::estate::{Estate, Owed};
use crate::hub::Hub;
use crate::metrics::{Metrics, PublicationSource};
use crate::plugin::Plugins;
use crate::plugin::bindings::{self as plugin_types, PublishSource};
use crate::plugin::chain::PublishDecision;
use crate::policy::Grant;
use crate::pusher_app::PusherApps;

/// The configured node name, or the address (`<host name>:<port>` for an address on every interface, which
/// would name every node alike).
fn node_name(config: &Config) -> String {
    if !config.name.is_empty() {
        config.name.clone()
    } else if config.address.ip().is_unspecified() {
        format!("{}:{}", hostname(), config.address.port())
    } else {
        config.address.to_string()
    }
}

/// The machine's host name, for default node and consumer names.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "herald".into())
}

/// Why [`Node::publish`] did not publish. Callers that answer a client turn it into a [`Refusal`]; the
/// queue consumer needs the difference, since an outage must hold its entry back for as long as it lasts,
/// while a request that keeps failing by itself is given up after a number of attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// The request was refused: channel rules, a plugin, bad data (the error may still be temporary, e.g.
    /// a plugin that failed).
    Refused(Refusal),
    /// The engine could not be reached; the same request may succeed once it is back.
    EngineUnavailable(ClientError),
}

impl From<PublishError> for Refusal {
    fn from(error: PublishError) -> Self {
        match error {
            PublishError::Refused(refusal) => refusal,
            PublishError::EngineUnavailable(error) => Self::Error(error),
        }
    }
}

impl From<Refusal> for PublishError {
    fn from(refusal: Refusal) -> Self {
        Self::Refused(refusal)
    }
}

impl From<ClientError> for PublishError {
    fn from(error: ClientError) -> Self {
        Self::Refused(error.into())
    }
}

/// The instruments of a node with `config`'s namespaces.
fn node_metrics(config: &Config) -> Arc<Metrics> {
    let namespaces: Vec<&str> = config
        .channel
        .namespaces
        .keys()
        .map(String::as_str)
        .collect();
    Arc::new(Metrics::new(&namespaces))
}

/// Herald's version, reported to clients and by the API.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The shared core of a running server.
#[derive(Debug)]
pub struct Node {
    /// Configuration, validated.
    pub config: Config,
    /// Channel rules compiled from the configuration.
    pub channels: Channels,
    /// Local sessions and subscriptions.
    pub hub: Arc<Hub>,
    /// Routes what the engine delivers: control commands, emulated sessions' commands, the hub's channels.
    pub control: Arc<crate::control::Router>,
    /// Broker, history and presence.
    pub engine: Engine,
    /// The loaded plugins and their hook chains.
    pub plugins: Arc<Plugins>,
    /// Connection admission and rate limits.
    pub admission: Arc<crate::limits::Admission>,
    /// The per-address request rate and wrong-credential back-off of every entrance that takes a key or a
    /// password (the HTTP APIs, the admin page's login): one budget per address across all of them.
    pub api_guard: crate::limits::ApiGuard,
    /// Cancelled when the server shuts down; sessions close with 3001 (Pusher: 4200).
    pub shutdown: CancellationToken,
    /// Tracks connection tasks so shutdown can wait for them.
    pub sessions: TaskTracker,
    /// Unique id of this node.
    pub id: String,
    /// Its name in the node list (`name`, or one made from the address).
    pub name: String,
    /// The Pusher app's behaviour beside the core (cache channels, occupancy, webhooks).
    pub pusher: PusherApps,
    /// This node's Prometheus instruments.
    pub metrics: Arc<Metrics>,
    /// What this node owes the cluster for the members it holds, should it die without settling.
    pub estate: Estate,
    started: Instant,
}

/// A publish request, from any entrance.
#[derive(Debug, Clone, Default)]
pub struct PublishRequest {
    /// The channel.
    pub channel: String,
    /// Compact JSON payload.
    pub data: Bytes,
    /// The publishing client, for client publishes.
    pub info: Option<ClientInfo>,
    /// Tags passed to subscribers.
    pub tags: BTreeMap<String, String>,
    /// Do not store in history even if the namespace keeps it.
    pub skip_history: bool,
    /// Where it comes from (plugins see it).
    pub source: Source,
    /// Publish at most once per key and channel within `engine.idempotency_window`.
    pub idempotency_key: Option<String>,
}

/// Where a publication comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Source {
    /// A client's publish command (or Pusher client event), as the channel policy granted.
    Client(Grant),
    /// The HTTP server API.
    #[default]
    Api,
    /// A message queue.
    Queue,
}

impl Source {
    /// How metrics name it.
    fn metric(self) -> PublicationSource {
        match self {
            Self::Client(_) => PublicationSource::Client,
            Self::Api => PublicationSource::Api,
            Self::Queue => PublicationSource::Queue,
        }
    }
}

impl Node {
    /// A node with the memory engine whatever the configuration says; plugins are set up but not loaded
    /// (see [`Node::start`], which also connects the configured engine).
    pub fn new(config: Config) -> anyhow::Result<Arc<Self>> {
        let metrics = node_metrics(&config);
        let hub = Arc::new(Hub::with_metrics(&metrics));
        let control = crate::control::Router::new(hub.clone());
        let engine = Engine::memory(control.clone(), config.plugins.state_bounds())
            .instrumented(metrics.engine());
        Self::assemble(config, hub, control, engine, metrics)
    }

    fn assemble(
        config: Config,
        hub: Arc<Hub>,
        control: Arc<crate::control::Router>,
        engine: Engine,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Self>> {
        config.validate()?;
        let channels = Channels::new(&config.channel)?;
        let plugins = Arc::new(Plugins::new(
            &config.plugins,
            metrics.clone(),
            engine.state.clone(),
        )?);
        let admission = crate::limits::Admission::new(&config.limits);
        let api_guard = crate::limits::ApiGuard::new(&config.limits);
        let shutdown = CancellationToken::new();
        let pusher = PusherApps::new(&config.pusher, &shutdown);
        let id = uuid::Uuid::new_v4().to_string();
        let estate = Estate::new(engine.clone(), &id);
        Ok(Arc::new(Self {
            estate,
            metrics,
            admission,
            api_guard,
            channels,
            hub,
            control,
            engine,
            plugins,
            shutdown,
            sessions: TaskTracker::new(),
            pusher,
            id,
            name: node_name(&config),
            started: Instant::now(),
            config,
        }))
    }

    /// A node with the configured engine connected, listening for commands from every node's API, and its
    /// plugins loaded. What runs beside it (the plugin watcher, the node announcer, queue consumers) is
    /// started by [`crate::server::start`].
    pub async fn start(config: Config) -> anyhow::Result<Arc<Self>> {
        let metrics = node_metrics(&config);
        let hub = Arc::new(Hub::with_metrics(&metrics));
        let control = crate::control::Router::new(hub.clone());
        let state = config.plugins.state_bounds();
        let engine = Engine::from_config(&config.engine, state, control.clone(), metrics.engine())
            .await
            .map_err(|error| anyhow::anyhow!("engine: {error}"))?;
        let node = Self::assemble(config, hub, control, engine, metrics)?;
        for channel in [
            crate::control::CONTROL_CHANNEL.to_owned(),
            crate::control::node_channel(&node.id),
        ] {
            node.engine
                .broker
                .subscribe(&channel)
                .await
                .map_err(|error| anyhow::anyhow!("engine: {error}"))?;
        }
        node.plugins.load_all().await;
        Ok(node)
    }

    /// How a channel keeps history: its namespace's way, or the Pusher app's for its cache channels.
    fn history_options(&self, channel: &str, namespace: &Namespace) -> Option<HistoryOptions> {
        namespace
            .options
            .history()
            .or_else(|| self.pusher.history_options(channel))
    }

    /// A channel got its first subscriber on this node: the engine starts delivering it here (and the
    /// Pusher app may report it occupied).
    pub async fn channel_opened(&self, channel: &str) -> Result<(), EngineError> {
        self.engine.broker.subscribe(channel).await?;
        if self.pusher.tracks_occupancy(channel) {
            self.pusher
                .channel_opened(&self.engine, &self.id, channel)
                .await;
            let hold = ClientInfo {
                client: self.id.clone(),
                ..ClientInfo::default()
            };
            if let Err(error) = self.estate.record(channel, &hold, Owed::Vacancy).await {
                tracing::warn!(channel, %error, "channel occupancy not recorded for a crash");
            }
        }
        Ok(())
    }

    /// A channel lost its last subscriber on this node: the engine stops delivering it here (and the Pusher
    /// app may report it vacated).
    pub async fn channel_closed(&self, channel: &str) -> Result<(), EngineError> {
        if self.pusher.tracks_occupancy(channel) {
            self.pusher
                .channel_closed(&self.engine, &self.id, channel)
                .await;
            if let Err(error) = self.estate.settle(channel, &self.id).await {
                tracing::warn!(channel, %error, "channel occupancy record not removed");
            }
        }
        self.engine.broker.unsubscribe(channel).await
    }

    /// Enters a subscriber into the channel's presence (on every node, through the engine); `admitted` is
    /// the policy's admission of that subscription.
    pub async fn enter_presence(
        &self,
        channel: &str,
        member: ClientInfo,
        _admitted: Grant,
    ) -> Result<(), EngineError> {
        self.engine.presence.add_presence(channel, member).await
    }

    /// Takes a client out of the channel's presence.
    pub async fn leave_presence(&self, channel: &str, client: &str) -> Result<(), EngineError> {
        self.engine
            .presence
            .remove_presence(channel, client)
            .await
            .map(drop)
    }

    /// Records what `member`'s departure from `channel` will owe the cluster, so a survivor can announce it
    /// if this node dies first (see [`crate::estate`]).
    pub async fn owe(
        &self,
        channel: &str,
        member: &ClientInfo,
        owed: Owed,
    ) -> Result<(), EngineError> {
        self.estate.record(channel, member, owed).await
    }

    /// This node did what `client`'s departure from `channel` owed.
    pub async fn settled(&self, channel: &str, client: &str) -> Result<(), EngineError> {
        self.estate.settle(channel, client).await
    }

    /// A Pusher presence member, already out of the channel's presence, left: `member_removed` for the
    /// user's last connection (see [`PusherApps::members_left`]).
    pub async fn pusher_member_left(
        &self,
        channel: &str,
        member: ClientInfo,
    ) -> Result<(), EngineError> {
        self.pusher
            .members_left(&self.engine, channel, vec![member])
            .await
            .map(drop)
    }

    /// Who is in a channel's presence, by client id, for its own subscribers' sessions (the policy-checked
    /// read for clients is [`Node::presence`]).
    pub async fn members(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, EngineError> {
        self.engine.presence.presence(channel).await
    }

    /// Whether `user` is in the channel's presence, and how many distinct users are, without reading the
    /// members (for a Pusher presence join).
    pub async fn roster_size(
        &self,
        channel: &str,
        user: &str,
    ) -> Result<(bool, usize), EngineError> {
        let presence = &self.engine.presence;
        let asked = [user.to_owned()];
        let (there, stats) = tokio::join!(
            presence.users_present(channel, &asked),
            presence.presence_stats(channel)
        );
        Ok((
            there?.contains(user),
            usize::try_from(stats?.num_users).unwrap_or(usize::MAX),
        ))
    }

    /// Tells the channel's subscribers on every node that `who` joined.
    pub async fn announce_join(&self, channel: &str, who: ClientInfo) -> Result<(), EngineError> {
        self.engine.broker.publish_join(channel, who).await
    }

    /// Tells the channel's subscribers on every node that `who` left.
    pub async fn announce_leave(&self, channel: &str, who: ClientInfo) -> Result<(), EngineError> {
        self.engine.broker.publish_leave(channel, who).await
    }

    /// Whether this node should get new clients, and if not, every reason why: shutting down, the engine
    /// unreachable or its pub/sub link down, plugins found at start that have not loaded.
    pub async fn readiness(&self) -> Result<(), Vec<String>> {
        let mut reasons = Vec::new();
        if self.shutdown.is_cancelled() {
            reasons.push("shutting down".to_owned());
        }
        if let Err(error) = self.engine.broker.ready().await {
            reasons.push(format!("engine: {error}"));
        }
        let plugins = self.plugins.failed_at_start();
        if !plugins.is_empty() {
            reasons.push(format!(
                "plugins found at start have not loaded: {}",
                plugins.join(", ")
            ));
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    /// The metrics' text exposition, with what is read at scrape time (queue bytes, readiness, plugin
    /// counters) read now.
    pub async fn render_metrics(&self) -> String {
        let snapshot = crate::metrics::Snapshot {
            outbound_queue_bytes: self.hub.outbound_queue_bytes(),
            ready: self.readiness().await.is_ok(),
            webhooks_queued: self.pusher.webhooks_queued() as u64,
            webhook_events: self.pusher.webhook_events(),
            plugins: self.plugins.metrics_snapshot(),
        };
        self.metrics.render(&snapshot)
    }

    /// Seconds since the node started.
    pub fn uptime_seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// The namespace of a channel (validating the name).
    pub fn namespace(&self, channel: &str) -> Result<&Namespace, ClientError> {
        self.channels.resolve(channel)
    }

    /// Publishes into a channel: runs the plugins' publish chain (which may transform, route, drop or
    /// deny), then assigns the offset (when the namespace keeps history) and fans out. The position is the
    /// original channel's, or the first routed channel's; a dropped publication reports the empty position.
    pub async fn publish(&self, request: PublishRequest) -> Result<StreamPosition, PublishError> {
        let started = Instant::now();
        let position = self.publish_routed(&request).await?;
        self.metrics
            .publish_took(request.source.metric(), started.elapsed());
        Ok(position)
    }

    async fn publish_routed(
        &self,
        request: &PublishRequest,
    ) -> Result<StreamPosition, PublishError> {
        self.namespace(&request.channel)?;
        let (data, tags, channels) = if self.plugins.any(plugin_types::Hooks::PUBLISH) {
            match self.plugins.publish(plugin_request(request)).await {
                PublishDecision::Publish {
                    data,
                    tags,
                    channels,
                } => {
                    let data = if data == request.data {
                        request.data.clone()
                    } else {
                        valid_json(data)?
                    };
                    (data, tags.into_iter().collect(), channels)
                }
                PublishDecision::Dropped => return Ok(StreamPosition::default()),
                PublishDecision::Denied(deny) => {
                    return Err(Refusal::from_code(deny.code, deny.reason).into());
                }
            }
        } else {
            (
                request.data.clone(),
                request.tags.clone(),
                vec![request.channel.clone()],
            )
        };
        let mut first = None;
        for channel in &channels {
            let position = self.publish_to(channel, &data, request, &tags).await?;
            if first.is_none() || *channel == request.channel {
                first = Some(position);
            }
        }
        Ok(first.unwrap_or_default())
    }

    async fn publish_to(
        &self,
        channel: &str,
        data: &Bytes,
        request: &PublishRequest,
        tags: &BTreeMap<String, String>,
    ) -> Result<StreamPosition, PublishError> {
        let namespace = self.namespace(channel)?;
        let history = if request.skip_history {
            None
        } else {
            self.history_options(channel, namespace)
        };
        let idempotency = request.idempotency_key.as_ref().map(|key| Idempotency {
            key: key.clone(),
            window: self.config.engine.idempotency_window,
        });
        let publication = Publication {
            offset: 0,
            data: data.clone(),
            info: request.info.clone(),
            tags: tags.clone(),
            time_ms: now_ms(),
        };
        self.engine
            .broker
            .publish(
                channel,
                publication,
                &PublishOptions {
                    history,
                    idempotency,
                },
            )
            .await
            .inspect(|_| {
                let source = if channel == request.channel {
                    request.source.metric()
                } else {
                    PublicationSource::PluginRoute
                };
                self.metrics.published(source, &namespace.name);
            })
            .map_err(|e| {
                tracing::warn!(channel, error = %e, "publish failed");
                match e {
                    EngineError::Unavailable(_) => {
                        PublishError::EngineUnavailable(ClientError::from(e))
                    }
                    EngineError::UnrecoverablePosition | EngineError::Refused(_) => {
                        PublishError::Refused(ClientError::from(e).into())
                    }
                }
            })
    }

    /// Reads a channel's history (`108` when the namespace keeps none), as the channel policy granted.
    pub async fn history(
        &self,
        channel: &str,
        filter: &HistoryFilter,
        _granted: Grant,
    ) -> Result<HistoryResult, ClientError> {
        let options = self
            .history_options(channel, self.namespace(channel)?)
            .ok_or(ClientError::NOT_AVAILABLE)?;
        Ok(self
            .engine
            .history
            .history(channel, filter, &options)
            .await?)
    }

    /// Empties a channel's history (the server API's `history_remove`). The stream keeps its top offset
    /// and epoch, so subscribers' positions stay valid.
    pub async fn remove_history(&self, channel: &str) -> Result<(), ClientError> {
        self.history_options(channel, self.namespace(channel)?)
            .ok_or(ClientError::NOT_AVAILABLE)?;
        Ok(self.engine.history.remove_history(channel).await?)
    }

    /// Where a channel's stream stands, to position a subscription to it: `history` is how the subscription's
    /// namespace keeps the channel's history, `admitted` the subscription's admission by the channel policy.
    pub async fn stream_top(
        &self,
        channel: &str,
        history: &HistoryOptions,
        _admitted: Grant,
    ) -> Result<StreamPosition, ClientError> {
        let top_only = HistoryFilter {
            since: None,
            limit: Some(0),
            reverse: false,
        };
        Ok(self
            .engine
            .history
            .history(channel, &top_only, history)
            .await?
            .position)
    }

    /// What a subscriber coming back at `since` missed, for its recovery: at most `limit` publications and
    /// the stream's top; `None` when `since` is no longer in the stream (another epoch, or trimmed away).
    /// `history` and `admitted` as for [`Node::stream_top`].
    pub async fn stream_since(
        &self,
        channel: &str,
        history: &HistoryOptions,
        since: &StreamPosition,
        limit: usize,
        _admitted: Grant,
    ) -> Result<Option<HistoryResult>, ClientError> {
        let filter = HistoryFilter {
            since: Some(since.clone()),
            limit: Some(limit),
            reverse: false,
        };
        match self.engine.history.history(channel, &filter, history).await {
            Ok(found) => Ok(Some(found)),
            Err(EngineError::UnrecoverablePosition) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Who is in a channel (`108` when the namespace has no presence), as the channel policy granted.
    pub async fn presence(
        &self,
        channel: &str,
        _granted: Grant,
    ) -> Result<HashMap<String, ClientInfo>, ClientError> {
        if !self.namespace(channel)?.options.presence {
            return Err(ClientError::NOT_AVAILABLE);
        }
        Ok(self.engine.presence.presence(channel).await?)
    }

    /// How many are in a channel (`108` when the namespace has no presence), as the channel policy granted.
    pub async fn presence_stats(
        &self,
        channel: &str,
        _granted: Grant,
    ) -> Result<PresenceStats, ClientError> {
        if !self.namespace(channel)?.options.presence {
            return Err(ClientError::NOT_AVAILABLE);
        }
        Ok(self.engine.presence.presence_stats(channel).await?)
    }
}

/// The plugin-facing view of a publish request.
fn plugin_request(request: &PublishRequest) -> plugin_types::PublishRequest {
    plugin_types::PublishRequest {
        source: match request.source {
            Source::Client(_) => PublishSource::Client,
            Source::Api => PublishSource::Api,
            Source::Queue => PublishSource::Queue,
        },
        publisher: request.info.as_ref().map(plugin_client_info),
        channel: request.channel.clone(),
        data: request.data.to_vec(),
        tags: request
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// A client as plugins see it.
pub fn plugin_client_info(info: &ClientInfo) -> plugin_types::ClientInfo {
    plugin_types::ClientInfo {
        user: info.user.clone(),
        client: info.client.clone(),
        info: info.conn_info.as_ref().map(|b| b.to_vec()),
    }
}

/// Payload a plugin produced: must be JSON (for JSON protocols), compacted to one line.
pub fn valid_json(data: Vec<u8>) -> Result<Bytes, ClientError> {
    let text = String::from_utf8(data)
        .map_err(|_| ClientError::INTERNAL.with_message("plugin produced non-UTF-8 data"))?;
    let raw: Box<serde_json::value::RawValue> = serde_json::from_str(&text)
        .map_err(|_| ClientError::INTERNAL.with_message("plugin produced data that is not JSON"))?;
    Ok(crate::protocol::compact_json(raw.get().trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Once shutdown starts the node asks not to get new clients, and says why.
    #[tokio::test]
    async fn a_node_shutting_down_is_not_ready() {
        let node = Node::new(Config::default()).expect("a node");
        assert_eq!(node.readiness().await, Ok(()));
        node.shutdown.cancel();
        assert_eq!(
            node.readiness().await,
            Err(vec!["shutting down".to_owned()])
        );
    }
}
