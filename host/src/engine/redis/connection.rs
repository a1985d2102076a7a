//! Connections to Redis, one standalone server, the primary Sentinel names, or a Redis Cluster, behind one
//! type: commands go through [`Connection`] (a [`ConnectionLike`], so scripts and pipelines work on each)
//! and pub/sub through [`Connection::subscribe`], which uses sharded pub/sub on a cluster.
//!
//! Both kinds reconnect by themselves and restore their subscriptions; pushes (messages, and a
//! `Disconnection` when the link drops) reach the sender given at connect time. Only connections with a push
//! sender speak RESP3 (pub/sub on a multiplexed connection needs it); the others keep RESP2's reply shapes
//! (arrays where RESP3 has maps), which the engine's scripts and the queue's stream readers parse.

use std::sync::Arc;
use std::time::Duration;

use super::sentinel::FollowedPrimary;
pub(crate) use super::sentinel::SentinelTarget;
use redis::aio::{AsyncPushSender, ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ConnectionAddr, Pipeline, ProtocolVersion, RedisFuture, RedisResult, TlsCertificates,
    Value,
};

/// A command or subscriber connection.
#[derive(Clone)]
pub(crate) enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<FollowedPrimary>),
}

/// How to reach Redis.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `redis://` (or `rediss://`) URLs: one server, or any nodes of a cluster.
    pub addresses: Vec<String>,
    pub cluster: bool,
    /// The addresses are Sentinels, naming the primary to use.
    pub sentinel: Option<SentinelTarget>,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    /// A CA and a client certificate for `rediss://` addresses; the system's roots when `None`.
    pub tls: Option<TlsCertificates>,
}

impl Connection {
    /// Connects; pushes go to `pushes` when given (subscriber connections).
    pub(crate) async fn open(
        target: &Target,
        pushes: Option<impl AsyncPushSender>,
    ) -> RedisResult<Self> {
        if target.cluster {
            let mut builder = ClusterClientBuilder::new(target.addresses.clone())
                .connection_timeout(target.connect_timeout)
                .response_timeout(target.command_timeout)
                .retries(2);
            if let Some(pushes) = pushes {
                builder = builder
                    .use_protocol(ProtocolVersion::RESP3)
                    .push_sender(pushes);
            }
            if let Some(certificates) = &target.tls {
                builder = builder.certs(certificates.clone());
            }
            let client = builder.build()?;
            let connection = client
                .get_async_connection_with_config(ClusterConfig::new())
                .await?;
            return Ok(Self::Cluster(connection));
        }
        if let Some(sentinel) = &target.sentinel {
            let pushes = pushes.map(|pushes| Arc::new(pushes) as Arc<dyn AsyncPushSender>);
            let link = FollowedPrimary::connect(
                &target.addresses,
                sentinel,
                target.tls.as_ref(),
                manager_config(target),
                pushes,
            )
            .await?;
            return Ok(Self::Sentinel(link));
        }
        let address = target.addresses.first().map(String::as_str).unwrap_or("");
        let info = redis::IntoConnectionInfo::into_connection_info(address)?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(settings);
        let client = match &target.tls {
            Some(certificates) if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) => {
                redis::Client::build_with_tls(info, certificates.clone())?
            }
            _ => redis::Client::open(info)?,
        };
        let mut config = manager_config(target);
        if let Some(pushes) = pushes {
            config = config
                .set_push_sender(pushes)
                .set_automatic_resubscription();
        }
        Ok(Self::Standalone(
            ConnectionManager::new_with_config(client, config).await?,
        ))
    }

    /// The command that publishes to a channel: sharded on a cluster, so only the shard owning the channel
    /// carries it.
    pub(super) fn publish_command(&self) -> &'static str {
        match self {
            Self::Standalone(_) | Self::Sentinel(_) => "publish",
            Self::Cluster(_) => "spublish",
        }
    }

    pub(super) async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Self::Standalone(connection) => connection.subscribe(channel).await,
            Self::Cluster(connection) => connection.ssubscribe(channel).await,
            Self::Sentinel(link) => link.subscribe(channel).await,
        }
    }

    pub(super) async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Self::Standalone(connection) => connection.unsubscribe(channel).await,
            Self::Cluster(connection) => connection.sunsubscribe(channel).await,
            Self::Sentinel(link) => link.unsubscribe(channel).await,
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Standalone(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
            Self::Sentinel(link) => link.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Standalone(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(link) => link.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
            Self::Sentinel(link) => link.get_db(),
        }
    }
}

/// A standalone or Sentinel-found server's connection settings (a push sender is added per connection).
fn manager_config(target: &Target) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(target.connect_timeout))
        .set_response_timeout(Some(target.command_timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2))
}
