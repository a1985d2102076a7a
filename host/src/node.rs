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
    ClientInfo, Engine, HistoryFilter, HistoryResult, PresenceStats, Publication, PublishOptions,
    StreamPosition, now_ms,
};
use crate::errors::ClientError;
use crate::hub::Hub;

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
    /// Broker, history and presence.
    pub engine: Engine,
    /// Cancelled when the server shuts down; sessions close with 3001.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks so shutdown can wait for them.
    pub sessions: TaskTracker,
    /// Unique id of this node.
    pub id: String,
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
}

impl Node {
    /// A node with the memory engine.
    pub fn new(config: Config) -> Result<Arc<Self>, crate::config::ConfigError> {
        config.validate()?;
        let channels = Channels::new(&config.channel).map_err(crate::config::ConfigError)?;
        let hub = Arc::new(Hub::new());
        let engine = Engine::memory(hub.clone());
        Ok(Arc::new(Self {
            config,
            channels,
            hub,
            engine,
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            id: uuid::Uuid::new_v4().to_string(),
            started: Instant::now(),
        }))
    }

    /// Seconds since the node started.
    pub fn uptime_seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// The namespace of a channel (validating the name).
    pub fn namespace(&self, channel: &str) -> Result<&Namespace, ClientError> {
        self.channels.resolve(channel)
    }

    /// Publishes into a channel: assigns the offset (when the namespace keeps history) and fans out.
    pub async fn publish(&self, request: PublishRequest) -> Result<StreamPosition, ClientError> {
        let namespace = self.namespace(&request.channel)?;
        let history = if request.skip_history {
            None
        } else {
            namespace.options.history()
        };
        let publication = Publication {
            offset: 0,
            data: request.data,
            info: request.info,
            tags: request.tags,
            time_ms: now_ms(),
        };
        let position = self
            .engine
            .broker
            .publish(&request.channel, publication, &PublishOptions { history })
            .await
            .map_err(|e| {
                tracing::warn!(channel = %request.channel, error = %e, "publish failed");
                ClientError::from(e)
            })?;
        Ok(position)
    }

    /// Reads a channel's history (`108` when the namespace keeps none).
    pub async fn history(
        &self,
        channel: &str,
        filter: &HistoryFilter,
    ) -> Result<HistoryResult, ClientError> {
        let options = self
            .namespace(channel)?
            .options
            .history()
            .ok_or(ClientError::NOT_AVAILABLE)?;
        Ok(self
            .engine
            .history
            .history(channel, filter, &options)
            .await?)
    }

    /// Who is in a channel (`108` when the namespace has no presence).
    pub async fn presence(
        &self,
        channel: &str,
    ) -> Result<HashMap<String, ClientInfo>, ClientError> {
        if !self.namespace(channel)?.options.presence {
            return Err(ClientError::NOT_AVAILABLE);
        }
        Ok(self.engine.presence.presence(channel).await?)
    }

    /// How many are in a channel (`108` when the namespace has no presence).
    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, ClientError> {
        if !self.namespace(channel)?.options.presence {
            return Err(ClientError::NOT_AVAILABLE);
        }
        Ok(self.engine.presence.presence_stats(channel).await?)
    }
}
