//! An engine wrapped so that every call is counted and timed by operation, whichever implementation is
//! inside: the four seams are decorated once here instead of in each engine.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::metrics::{EngineMetrics, EngineOperation};

use super::{
    Broker, ClientInfo, Engine, EngineError, History, HistoryFilter, HistoryOptions, HistoryResult,
    Presence, PresenceStats, Publication, PublishOptions, SharedState, StreamPosition,
};

/// Each operation's instruments, resolved once.
struct Operations {
    publish: EngineOperation,
    publish_join: EngineOperation,
    publish_leave: EngineOperation,
    subscribe: EngineOperation,
    unsubscribe: EngineOperation,
    ready: EngineOperation,
    history: EngineOperation,
    remove_history: EngineOperation,
    add_presence: EngineOperation,
    remove_presence: EngineOperation,
    presence: EngineOperation,
    presence_stats: EngineOperation,
    publish_counts: EngineOperation,
    node_counts: EngineOperation,
    state_get: EngineOperation,
    state_set: EngineOperation,
    state_incr: EngineOperation,
    state_delete: EngineOperation,
}

/// The decorated engine.
pub(super) struct Instrumented {
    inner: Engine,
    operations: Operations,
}

impl Instrumented {
    pub(super) fn wrap(inner: Engine, metrics: &EngineMetrics) -> Engine {
        let operations = Operations {
            publish: metrics.operation("publish"),
            publish_join: metrics.operation("publish_join"),
            publish_leave: metrics.operation("publish_leave"),
            subscribe: metrics.operation("subscribe"),
            unsubscribe: metrics.operation("unsubscribe"),
            ready: metrics.operation("ready"),
            history: metrics.operation("history"),
            remove_history: metrics.operation("remove_history"),
            add_presence: metrics.operation("add_presence"),
            remove_presence: metrics.operation("remove_presence"),
            presence: metrics.operation("presence"),
            presence_stats: metrics.operation("presence_stats"),
            publish_counts: metrics.operation("publish_counts"),
            node_counts: metrics.operation("node_counts"),
            state_get: metrics.operation("state_get"),
            state_set: metrics.operation("state_set"),
            state_incr: metrics.operation("state_incr"),
            state_delete: metrics.operation("state_delete"),
        };
        let shared = inner.shared;
        let engine = Arc::new(Self { inner, operations });
        Engine {
            broker: engine.clone(),
            history: engine.clone(),
            presence: engine.clone(),
            state: engine,
            shared,
        }
    }
}

/// Runs one engine call, counting it (and its failure) and timing it.
async fn measured<T>(
    operation: &EngineOperation,
    call: impl Future<Output = Result<T, EngineError>>,
) -> Result<T, EngineError> {
    let started = Instant::now();
    let result = call.await;
    operation.calls.inc();
    operation.duration.observe(started.elapsed().as_secs_f64());
    if result.is_err() {
        operation.errors.inc();
    }
    result
}

#[async_trait]
impl Broker for Instrumented {
    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        opts: &PublishOptions,
    ) -> Result<StreamPosition, EngineError> {
        let call = self.inner.broker.publish(channel, publication, opts);
        measured(&self.operations.publish, call).await
    }

    async fn publish_join(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        let call = self.inner.broker.publish_join(channel, info);
        measured(&self.operations.publish_join, call).await
    }

    async fn publish_leave(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        let call = self.inner.broker.publish_leave(channel, info);
        measured(&self.operations.publish_leave, call).await
    }

    async fn subscribe(&self, channel: &str) -> Result<(), EngineError> {
        let call = self.inner.broker.subscribe(channel);
        measured(&self.operations.subscribe, call).await
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError> {
        let call = self.inner.broker.unsubscribe(channel);
        measured(&self.operations.unsubscribe, call).await
    }

    async fn ready(&self) -> Result<(), EngineError> {
        measured(&self.operations.ready, self.inner.broker.ready()).await
    }
}

#[async_trait]
impl History for Instrumented {
    async fn history(
        &self,
        channel: &str,
        filter: &HistoryFilter,
        opts: &HistoryOptions,
    ) -> Result<HistoryResult, EngineError> {
        let call = self.inner.history.history(channel, filter, opts);
        measured(&self.operations.history, call).await
    }

    async fn remove_history(&self, channel: &str) -> Result<(), EngineError> {
        let call = self.inner.history.remove_history(channel);
        measured(&self.operations.remove_history, call).await
    }
}

#[async_trait]
impl Presence for Instrumented {
    async fn add_presence(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        let call = self.inner.presence.add_presence(channel, info);
        measured(&self.operations.add_presence, call).await
    }

    async fn remove_presence(
        &self,
        channel: &str,
        client: &str,
    ) -> Result<Option<ClientInfo>, EngineError> {
        let call = self.inner.presence.remove_presence(channel, client);
        measured(&self.operations.remove_presence, call).await
    }

    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, EngineError> {
        let call = self.inner.presence.presence(channel);
        measured(&self.operations.presence, call).await
    }

    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, EngineError> {
        let call = self.inner.presence.presence_stats(channel);
        measured(&self.operations.presence_stats, call).await
    }

    async fn users_present(
        &self,
        channel: &str,
        users: &[String],
    ) -> Result<HashSet<String>, EngineError> {
        let call = self.inner.presence.users_present(channel, users);
        measured(&self.operations.presence_stats, call).await
    }

    async fn publish_counts(
        &self,
        node: &str,
        changed: &[(String, u64)],
        ttl: Duration,
    ) -> Result<(), EngineError> {
        let call = self.inner.presence.publish_counts(node, changed, ttl);
        measured(&self.operations.publish_counts, call).await
    }

    async fn node_counts(&self, node: &str) -> Result<HashMap<String, u64>, EngineError> {
        let call = self.inner.presence.node_counts(node);
        measured(&self.operations.node_counts, call).await
    }

    async fn node_count(&self, node: &str, channel: &str) -> Result<u64, EngineError> {
        let call = self.inner.presence.node_count(node, channel);
        measured(&self.operations.node_counts, call).await
    }
}

#[async_trait]
impl SharedState for Instrumented {
    async fn state_get(&self, scope: &str, key: &str) -> Result<Option<Vec<u8>>, EngineError> {
        let call = self.inner.state.state_get(scope, key);
        measured(&self.operations.state_get, call).await
    }

    async fn state_set(
        &self,
        scope: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), EngineError> {
        let call = self.inner.state.state_set(scope, key, value, ttl);
        measured(&self.operations.state_set, call).await
    }

    async fn state_incr(
        &self,
        scope: &str,
        key: &str,
        delta: i64,
        ttl: Duration,
    ) -> Result<i64, EngineError> {
        let call = self.inner.state.state_incr(scope, key, delta, ttl);
        measured(&self.operations.state_incr, call).await
    }

    async fn state_delete(&self, scope: &str, key: &str) -> Result<bool, EngineError> {
        let call = self.inner.state.state_delete(scope, key);
        measured(&self.operations.state_delete, call).await
    }
}
