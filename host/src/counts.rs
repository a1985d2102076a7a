//! Subscriber counts for the whole cluster: how many connections every node has in each channel.
//!
//! Each node publishes its own counts through the engine every [`PUBLISH_EVERY`] — only the channels whose
//! count changed since the last time, so an idle node sends one small keep-alive — and its set is dropped
//! [`KEPT_FOR`] after it stops (a node that died). A cluster-wide count is this node's exact count plus what
//! the other running nodes (the node list's fresh entries) last published: other nodes' changes show up
//! within [`PUBLISH_EVERY`] plus a round trip. No request scans connections: a channel's count is one read
//! per other node, the channel list one read of each node's set.
//!
//! With an engine no other node shares, counts are this node's alone and nothing is published.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::EngineError;
use crate::node::Node;
use crate::nodes;

/// How often a node publishes what changed.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// How long a node's published counts are kept without a new publication.
pub const KEPT_FOR: Duration = Duration::from_secs(10);

/// The ids of the other running nodes (none with an engine no one shares).
async fn other_nodes(node: &Node) -> Result<Vec<String>, EngineError> {
    if !node.engine.shared {
        return Ok(Vec::new());
    }
    Ok(nodes::running(node)
        .await?
        .into_iter()
        .filter(|uid| *uid != node.id)
        .collect())
}

/// This node's channels and their subscribers.
fn local(node: &Node) -> HashMap<String, u64> {
    node.hub
        .channels()
        .into_iter()
        .map(|(channel, count)| (channel, count as u64))
        .collect()
}

/// `counts` plus the other nodes' subscribers: of every channel when `other_channels`, else of the
/// channels already in `counts`.
async fn with_other_nodes(
    node: &Node,
    mut counts: HashMap<String, u64>,
    other_channels: bool,
) -> Result<HashMap<String, u64>, EngineError> {
    for other in other_nodes(node).await? {
        for (channel, count) in node.engine.presence.node_counts(&other).await? {
            if other_channels {
                *counts.entry(channel).or_default() += count;
            } else if let Some(total) = counts.get_mut(&channel) {
                *total += count;
            }
        }
    }
    Ok(counts)
}

/// Channels with subscribers anywhere in the cluster, with how many.
pub async fn channels(node: &Node) -> Result<HashMap<String, u64>, EngineError> {
    with_other_nodes(node, local(node), true).await
}

/// How many connections are subscribed to `channel` in the whole cluster.
pub async fn subscribers(node: &Node, channel: &str) -> Result<u64, EngineError> {
    let others = other_nodes(node).await?;
    let reads = others
        .iter()
        .map(|other| node.engine.presence.node_count(other, channel));
    let counts = futures_util::future::try_join_all(reads).await?;
    Ok(node.hub.subscriber_count(channel) as u64 + counts.into_iter().sum::<u64>())
}

/// Every [`PUBLISH_EVERY`] until it shuts down: publishes this node's counts (with an engine other nodes
/// share), and with a Pusher app's subscription counting on, tells this node's subscribers their
/// channels' counts.
pub fn start(node: Arc<Node>) {
    let publishing = node.engine.shared;
    let tracker = node.sessions.clone();
    tracker.spawn(async move {
        let mut every = tokio::time::interval(PUBLISH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut published: HashMap<String, u64> = HashMap::new();
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = node.shutdown.cancelled() => break,
            }
            // Asked each time: a reload may turn an app's counting on or off.
            let telling = node.pusher.count_subscriptions();
            if !publishing && !telling {
                continue;
            }
            let now = local(&node);
            if telling {
                match with_other_nodes(&node, now.clone(), false).await {
                    Ok(totals) => node.pusher.tell_counts(&node.hub, &totals),
                    Err(error) => tracing::debug!(%error, "subscription counts not read"),
                }
            }
            if !publishing {
                continue;
            }
            let changed = changes(&published, &now);
            match node
                .engine
                .presence
                .publish_counts(&node.id, &changed, KEPT_FOR)
                .await
            {
                Ok(()) => published = now,
                // Published again in full once the engine is back: what it kept may have expired.
                Err(error) => {
                    tracing::debug!(%error, "subscriber counts not published");
                    published.clear();
                }
            }
        }
        if !publishing {
            return;
        }
        // Gone at once rather than after KEPT_FOR.
        let gone: Vec<(String, u64)> = published.into_keys().map(|c| (c, 0)).collect();
        if let Err(error) = node
            .engine
            .presence
            .publish_counts(&node.id, &gone, Duration::from_millis(1))
            .await
        {
            tracing::debug!(%error, "subscriber counts not withdrawn");
        }
    });
}

/// What to publish to go from `before` to `now`: changed and new channels with their count, gone ones
/// with 0.
fn changes(before: &HashMap<String, u64>, now: &HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut changed: Vec<(String, u64)> = now
        .iter()
        .filter(|(channel, count)| before.get(*channel) != Some(count))
        .map(|(channel, count)| (channel.clone(), *count))
        .collect();
    changed.extend(
        before
            .keys()
            .filter(|channel| !now.contains_key(*channel))
            .map(|channel| (channel.clone(), 0)),
    );
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_changed_is_published() {
        let before = HashMap::from([
            ("a".to_owned(), 1),
            ("b".to_owned(), 2),
            ("c".to_owned(), 3),
        ]);
        let now = HashMap::from([
            ("a".to_owned(), 1),
            ("b".to_owned(), 5),
            ("d".to_owned(), 1),
        ]);
        let mut changed = changes(&before, &now);
        changed.sort();
        assert_eq!(
            changed,
            [
                ("b".to_owned(), 5),
                ("c".to_owned(), 0),
                ("d".to_owned(), 1)
            ]
        );
        assert!(changes(&now, &now).is_empty());
    }
}
