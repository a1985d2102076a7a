//! Cluster membership: which nodes are running and what each holds.
//!
//! Every node announces itself — id, name, version and its counts — every [`ANNOUNCE_EVERY`] as a presence
//! entry of a channel no client or API caller can name (it starts with a control character, which channel
//! validation refuses), so the engine that already shares presence between nodes shares the node list too:
//! with Redis, every node sees every other; with the memory engine, a node sees itself. The `info` API
//! lists the nodes found there; an entry not refreshed for [`STALE_AFTER`] (a node that crashed) is left
//! out, and a node removes its own entry when it shuts down. Each node logs the others joining and leaving.
//!
//! A node whose entry has not changed for [`DEAD_AFTER`], timed by the watching node's own clock (so
//! clocks need not agree), died without settling what it held: the first survivor to take its entry out of
//! the list (an atomic removal in the engine, so exactly one) settles its estate — presence entries removed,
//! `leave`, `member_removed` and `channel_vacated` announced (see [`crate::estate`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::engine::{ClientInfo, now_ms};
use crate::estate;
use crate::node::{Node, VERSION};

/// How often a node refreshes its entry.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(3);

/// An entry this old belongs to a node that stopped announcing (crashed or cut off).
pub const STALE_AFTER: Duration = Duration::from_secs(10);

/// A node whose entry has not changed for this long (more than two missed announcements) is dead. With
/// the watchers' own announcement period, its estate is settled at most `DEAD_AFTER` + 2 ×
/// [`ANNOUNCE_EVERY`] after its last announcement, plus the time settling takes.
pub const DEAD_AFTER: Duration = Duration::from_secs(8);

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

/// Every entry of the node list, by id, stale ones too.
async fn entries(node: &Node) -> Result<BTreeMap<String, NodeInfo>, crate::engine::EngineError> {
    let entries = node.engine.presence.presence(NODES_CHANNEL).await?;
    Ok(entries
        .into_values()
        .filter_map(|entry| serde_json::from_slice::<NodeInfo>(entry.conn_info.as_deref()?).ok())
        .map(|info| (info.uid.clone(), info))
        .collect())
}

/// Only the fresh entries of `entries`.
fn fresh(mut entries: BTreeMap<String, NodeInfo>) -> BTreeMap<String, NodeInfo> {
    let oldest = now_ms().saturating_sub(i64::try_from(STALE_AFTER.as_millis()).unwrap_or(0));
    entries.retain(|_, info| info.updated_ms >= oldest);
    entries
}

/// The ids of the running nodes (fresh entries of the node list).
pub async fn running(node: &Node) -> Result<Vec<String>, crate::engine::EngineError> {
    Ok(announced(node).await?.into_keys().collect())
}

/// The fresh entries of the node list, by id.
async fn announced(node: &Node) -> Result<BTreeMap<String, NodeInfo>, crate::engine::EngineError> {
    entries(node).await.map(fresh)
}

/// When this node last saw each other node's entry change.
#[derive(Debug, Default)]
struct Watch {
    seen: HashMap<String, (i64, Instant)>,
}

impl Watch {
    /// Notes the entries found `now`; returns the nodes whose entry has not changed for [`DEAD_AFTER`].
    fn dead(
        &mut self,
        this: &str,
        entries: &BTreeMap<String, NodeInfo>,
        now: Instant,
    ) -> Vec<NodeInfo> {
        self.seen.retain(|uid, _| entries.contains_key(uid));
        let mut dead = Vec::new();
        for (uid, info) in entries {
            if uid == this {
                continue;
            }
            let seen = self
                .seen
                .entry(uid.clone())
                .or_insert((info.updated_ms, now));
            if seen.0 != info.updated_ms {
                *seen = (info.updated_ms, now);
            } else if now.duration_since(seen.1) >= DEAD_AFTER {
                dead.push(info.clone());
            }
        }
        dead
    }
}

/// Settles the estate of node `dead` if this node is the one to take its entry out of the list.
async fn bury(node: &Node, dead: NodeInfo) {
    match node
        .engine
        .presence
        .remove_presence(NODES_CHANNEL, &dead.uid)
        .await
    {
        Ok(Some(_)) => {}
        Ok(None) => return,
        Err(error) => {
            tracing::warn!(node = %dead.name, uid = %dead.uid, %error, "cannot take a dead node out of the node list");
            return;
        }
    }
    tracing::info!(node = %dead.name, uid = %dead.uid, "node died without leaving; settling the presence it held");
    let started = Instant::now();
    match estate::settle_for(&node.engine, &node.pusher, &dead.uid).await {
        Ok(settled) => tracing::info!(
            node = %dead.name,
            uid = %dead.uid,
            removed = settled.removed,
            announced = settled.announced,
            vacated = settled.vacated,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "dead node's presence settled"
        ),
        Err(error) => tracing::warn!(
            node = %dead.name,
            uid = %dead.uid,
            %error,
            "settling a dead node's presence failed; what is left expires after engine.redis.presence_ttl"
        ),
    }
}

/// Starts announcing this node until it shuts down (then its entry is removed), logging other nodes as
/// they join and leave.
pub fn start(node: Arc<Node>) {
    let tracker = node.sessions.clone();
    tracker.spawn(async move {
        let mut every = tokio::time::interval(ANNOUNCE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut known: BTreeMap<String, String> = BTreeMap::new();
        let mut watch = Watch::default();
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = node.shutdown.cancelled() => break,
            }
            if let Err(error) = announce(&node).await {
                tracing::debug!(%error, "node announcement failed");
                continue;
            }
            let Ok(all) = entries(&node).await else {
                continue;
            };
            if node.engine.shared {
                for dead in watch.dead(&node.id, &all, Instant::now()) {
                    let node = node.clone();
                    // Settling may take a while; this loop must go on announcing meanwhile.
                    node.sessions.clone().spawn(async move {
                        tokio::select! {
                            () = bury(&node, dead) => {}
                            () = node.shutdown.cancelled() => {}
                        }
                    });
                }
            }
            log_changes(&node, &mut known, fresh(all));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(uid: &str, updated_ms: i64) -> (String, NodeInfo) {
        let info = NodeInfo {
            uid: uid.into(),
            name: uid.into(),
            version: VERSION.into(),
            num_clients: 0,
            num_users: 0,
            num_channels: 0,
            num_subs: 0,
            uptime: 0,
            updated_ms,
        };
        (uid.into(), info)
    }

    fn uids(dead: Vec<NodeInfo>) -> Vec<String> {
        dead.into_iter().map(|info| info.uid).collect()
    }

    #[test]
    fn a_node_is_dead_when_its_entry_stops_changing_by_the_watchers_clock() {
        let mut watch = Watch::default();
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        // The entries' own times are far in the past and far in the future: clocks need not agree.
        let list = |a: i64, b: i64| BTreeMap::from([entry("me", 0), entry("a", a), entry("b", b)]);
        assert!(watch.dead("me", &list(1, i64::MAX - 10), at(0)).is_empty());
        // `a` goes on announcing, `b` stops; this node's own entry never counts.
        assert!(watch.dead("me", &list(2, i64::MAX - 10), at(4)).is_empty());
        assert!(watch.dead("me", &list(3, i64::MAX - 10), at(7)).is_empty());
        assert_eq!(
            uids(watch.dead("me", &list(4, i64::MAX - 10), at(8))),
            ["b"]
        );
        // `a` misses announcements but not for DEAD_AFTER; then stops.
        assert_eq!(
            uids(watch.dead("me", &list(4, i64::MAX - 10), at(15))),
            ["b"]
        );
        assert_eq!(
            uids(watch.dead("me", &list(4, i64::MAX - 10), at(16))),
            ["a", "b"]
        );
        // An entry seen for the first time gets the full time, however old it claims to be.
        let mut fresh_watch = Watch::default();
        assert!(fresh_watch.dead("me", &list(4, 5), at(16)).is_empty());
        assert!(fresh_watch.dead("me", &list(4, 5), at(23)).is_empty());
        assert_eq!(
            uids(fresh_watch.dead("me", &list(4, 5), at(24))),
            ["a", "b"]
        );
        // A node taken out of the list is forgotten; if it comes back, it starts over.
        let only_a = BTreeMap::from([entry("a", 4)]);
        assert_eq!(uids(fresh_watch.dead("me", &only_a, at(25))), ["a"]);
        assert_eq!(uids(fresh_watch.dead("me", &list(4, 5), at(26))), ["a"]);
    }
}
