//! Cluster membership: which nodes are running and what each holds.
//!
//! Every node announces itself — id, name, version and its counts — every [`ANNOUNCE_EVERY`] as a presence
//! entry of a channel no client or API caller can name (it starts with a control character, which channel
//! validation refuses), so the engine that already shares presence between nodes shares the node list too:
//! with Redis, every node sees every other; with the memory engine, a node sees itself. The `info` API
//! lists the nodes found there; an entry not refreshed for [`STALE_AFTER`] (a node that crashed) is left
//! out, and a node removes its own entry when it shuts down. Each node logs the others joining and leaving.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::engine::{ClientInfo, now_ms};
use crate::node::{Node, VERSION};

/// How often a node refreshes its entry.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(3);

/// An entry this old belongs to a node that stopped announcing (crashed or cut off).
pub const STALE_AFTER: Duration = Duration::from_secs(10);

/// The presence channel of the node list; the leading control character keeps it out of clients' reach.
const NODES_CHANNEL: &str = "\u{1}herald:nodes";

/// One node as the `info` API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's unique id (new at every start).
    pub uid: String,
    /// Its configured `name` (default: host name and port).
    pub name: String,
    /// Herald version.
    pub version: String,
    /// Connected clients.
    pub num_clients: u64,
    /// Distinct users among them.
    pub num_users: u64,
    /// Channels with subscribers on the node.
    pub num_channels: u64,
    /// Subscriptions on the node.
    pub num_subs: u64,
    /// Seconds since it started.
    pub uptime: u64,
    /// When it last announced itself (ms since the Unix epoch).
    pub updated_ms: i64,
}

/// This node, counted now.
pub fn local(node: &Node) -> NodeInfo {
    let stats = node.hub.stats();
    NodeInfo {
        uid: node.id.clone(),
        name: node.name.clone(),
        version: VERSION.to_string(),
        num_clients: stats.clients as u64,
        num_users: stats.users as u64,
        num_channels: stats.channels as u64,
        num_subs: stats.subscriptions as u64,
        uptime: node.uptime_seconds(),
        updated_ms: now_ms(),
    }
}

/// The running nodes, this one counted now, sorted by name then id. When the engine cannot be asked (an
/// outage), this node alone.
pub async fn list(node: &Node) -> Vec<NodeInfo> {
    let mut nodes = match announced(node).await {
        Ok(nodes) => nodes,
        Err(error) => {
            tracing::warn!(%error, "cannot read the node list; reporting this node only");
            BTreeMap::new()
        }
    };
    nodes.insert(node.id.clone(), local(node));
    let mut nodes: Vec<NodeInfo> = nodes.into_values().collect();
    nodes.sort_by(|a, b| (&a.name, &a.uid).cmp(&(&b.name, &b.uid)));
    nodes
}

/// The fresh entries of the node list, by id.
async fn announced(node: &Node) -> Result<BTreeMap<String, NodeInfo>, crate::engine::EngineError> {
    let entries = node.engine.presence.presence(NODES_CHANNEL).await?;
    let oldest = now_ms().saturating_sub(i64::try_from(STALE_AFTER.as_millis()).unwrap_or(0));
    Ok(entries
        .into_values()
        .filter_map(|entry| serde_json::from_slice::<NodeInfo>(entry.conn_info.as_deref()?).ok())
        .filter(|info| info.updated_ms >= oldest)
        .map(|info| (info.uid.clone(), info))
        .collect())
}

/// Starts announcing this node until it shuts down (then its entry is removed), logging other nodes as
/// they join and leave.
pub fn start(node: Arc<Node>) {
    let tracker = node.sessions.clone();
    tracker.spawn(async move {
        let mut every = tokio::time::interval(ANNOUNCE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut known: BTreeMap<String, String> = BTreeMap::new();
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = node.shutdown.cancelled() => break,
            }
            if let Err(error) = announce(&node).await {
                tracing::debug!(%error, "node announcement failed");
                continue;
            }
            if let Ok(nodes) = announced(&node).await {
                log_changes(&node, &mut known, nodes);
            }
        }
        if let Err(error) = node
            .engine
            .presence
            .remove_presence(NODES_CHANNEL, &node.id)
            .await
        {
            tracing::debug!(%error, "could not remove this node from the node list");
        }
    });
}

async fn announce(node: &Node) -> Result<(), crate::engine::EngineError> {
    let info = local(node);
    let encoded = serde_json::to_vec(&info).expect("node info serializes");
    node.engine
        .presence
        .add_presence(
            NODES_CHANNEL,
            ClientInfo {
                user: String::new(),
                client: node.id.clone(),
                conn_info: Some(Bytes::from(encoded)),
                chan_info: None,
            },
        )
        .await
}

/// Logs the nodes (other than this one) that appeared or went since the last look.
fn log_changes(node: &Node, known: &mut BTreeMap<String, String>, now: BTreeMap<String, NodeInfo>) {
    for (uid, info) in &now {
        if *uid != node.id && !known.contains_key(uid) {
            tracing::info!(node = %info.name, uid, version = %info.version, "node joined");
        }
    }
    for (uid, name) in known.iter() {
        if !now.contains_key(uid) {
            tracing::info!(node = %name, uid, "node left");
        }
    }
    *known = now
        .into_iter()
        .filter(|(uid, _)| *uid != node.id)
        .map(|(uid, info)| (uid, info.name))
        .collect();
}
