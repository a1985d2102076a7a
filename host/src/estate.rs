//! A node's estate: what it owes the cluster for the members it holds, kept in the shared engine so that a
//! node dying without settling (a crash, `kill -9`, a machine gone) leaves it to a survivor.
//!
//! Whenever a node enters a client into a channel's presence, gives a subscriber whose departure others hear
//! of, or holds a Pusher channel's occupancy, it also records an entry in its estate: a presence list under
//! a name no client can use, one entry per (channel, client), saying what the departure owes — a `leave`
//! push, a Pusher `member_removed` for a user's last connection, a `channel_vacated`, or only the removal of
//! the presence entry. The node settles the entry itself when the member leaves. Entries live and expire
//! like presence entries (refreshed while the node runs, gone `presence_ttl` after it stops).
//!
//! When a node stops announcing itself, the survivor that takes its node-list entry (an atomic removal, so
//! exactly one) settles its estate with [`settle_for`]: every entry is taken with the same atomic removal,
//! its presence entry removed and its departure announced. A departure is announced at least once: twice
//! only if the node died between announcing it and settling the entry.
//!
//! With an engine no other node shares (the memory engine), nothing outlives the node and nothing is
//! recorded.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::engine::{ClientInfo, Engine, EngineError};
use crate::pusher_app::PusherApps;

/// Prefix of a node's estate list, followed by the node's id; clients cannot name it.
const ESTATE_PREFIX: &str = "\u{1}herald:estate:";

/// Separates the channel from the client in an entry's id; neither channel names nor client ids contain it.
const SEPARATOR: char = '\0';

/// What a member's departure owes the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owed {
    /// Removing the presence entry, nothing to announce.
    Removal,
    /// A `leave` push to the channel's subscribers that asked for joins and leaves.
    Leave,
    /// Pusher's `member_removed` (push and webhook), when the user has no other connection in the channel.
    LastOfUser,
    /// The node's hold on a Pusher channel's occupancy: `channel_vacated` when no node holds it any more.
    Vacancy,
}

impl Owed {
    fn tag(self) -> u8 {
        match self {
            Self::Removal => b'r',
            Self::Leave => b'l',
            Self::LastOfUser => b'u',
            Self::Vacancy => b'v',
        }
    }

    fn from_tag(tag: u8) -> Option<Self> {
        Some(match tag {
            b'r' => Self::Removal,
            b'l' => Self::Leave,
            b'u' => Self::LastOfUser,
            b'v' => Self::Vacancy,
            _ => return None,
        })
    }
}

/// One node's estate.
#[derive(Debug)]
pub struct Estate {
    engine: Engine,
    list: Option<String>,
}

/// A departure a dead node left unannounced, taken from its estate by this caller alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departure {
    /// The channel.
    pub channel: String,
    /// The member as it was entered (for Vacancy: the dead node's id as the client).
    pub member: ClientInfo,
    /// What the departure owes.
    pub owed: Owed,
}

/// What settling a dead node's estate did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// Presence entries removed.
    pub removed: usize,
    /// Departures announced (`leave` or `member_removed`).
    pub announced: usize,
    /// Channels found vacated.
    pub vacated: usize,
}

fn list_of(node: &str) -> String {
    format!("{ESTATE_PREFIX}{node}")
}

fn entry_id(channel: &str, client: &str) -> String {
    format!("{channel}{SEPARATOR}{client}")
}

/// The estate entry of `member` in `channel`: the owed tag leads the channel info.
fn encode(channel: &str, member: &ClientInfo, owed: Owed) -> ClientInfo {
    let mut tagged = Vec::with_capacity(1 + member.chan_info.as_ref().map_or(0, |info| info.len()));
    tagged.push(owed.tag());
    tagged.extend_from_slice(member.chan_info.as_deref().unwrap_or_default());
    ClientInfo {
        user: member.user.clone(),
        client: entry_id(channel, &member.client),
        conn_info: member.conn_info.clone(),
        chan_info: Some(tagged.into()),
    }
}

fn decode(entry: ClientInfo) -> Option<Departure> {
    let (channel, client) = entry.client.split_once(SEPARATOR)?;
    let tagged = entry.chan_info?;
    let (&tag, chan_info) = tagged.split_first()?;
    Some(Departure {
        channel: channel.to_owned(),
        member: ClientInfo {
            user: entry.user,
            client: client.to_owned(),
            conn_info: entry.conn_info,
            chan_info: (!chan_info.is_empty()).then(|| tagged.slice(1..)),
        },
        owed: Owed::from_tag(tag)?,
    })
}

impl Estate {
    /// The estate of node `node` in `engine`; records nothing unless other nodes share the engine.
    pub fn new(engine: Engine, node: &str) -> Self {
        let list = engine.shared.then(|| list_of(node));
        Self { engine, list }
    }

    /// Records that this node holds `member` in `channel`, and what its departure owes.
    pub async fn record(
        &self,
        channel: &str,
        member: &ClientInfo,
        owed: Owed,
    ) -> Result<(), EngineError> {
        let Some(list) = &self.list else {
            return Ok(());
        };
        self.engine
            .presence
            .add_presence(list, encode(channel, member, owed))
            .await
    }

    /// This node has done what `client`'s departure from `channel` owed.
    pub async fn settle(&self, channel: &str, client: &str) -> Result<(), EngineError> {
        let Some(list) = &self.list else {
            return Ok(());
        };
        self.engine
            .presence
            .remove_presence(list, &entry_id(channel, client))
            .await
            .map(drop)
    }
}

/// Takes every entry of dead node `dead`'s estate that no one else took first.
pub async fn take(engine: &Engine, dead: &str) -> Result<Vec<Departure>, EngineError> {
    let list = list_of(dead);
    let entries = engine.presence.presence(&list).await?;
    let mut taken = Vec::with_capacity(entries.len());
    for id in entries.into_keys() {
        if let Some(entry) = engine.presence.remove_presence(&list, &id).await? {
            taken.extend(decode(entry));
        }
    }
    Ok(taken)
}

/// Settles dead node `dead`'s estate: removes its members from presence and announces their departures on
/// every node (through the engine) and to the Pusher app's webhooks.
pub async fn settle_for(
    engine: &Engine,
    pusher: &PusherApps,
    dead: &str,
) -> Result<Settled, EngineError> {
    let started = Instant::now();
    let mut by_channel: BTreeMap<String, Vec<(ClientInfo, Owed)>> = BTreeMap::new();
    for Departure {
        channel,
        member,
        owed,
    } in take(engine, dead).await?
    {
        by_channel.entry(channel).or_default().push((member, owed));
    }
    let mut settled = Settled::default();
    for (channel, departures) in by_channel {
        // Everyone out of presence first, so a Pusher user is judged by the connections that remain.
        let mut last_of_user = Vec::new();
        for (member, owed) in departures {
            if owed == Owed::Vacancy {
                settled.vacated +=
                    usize::from(pusher.node_left_channel(engine, dead, &channel).await);
                continue;
            }
            if engine
                .presence
                .remove_presence(&channel, &member.client)
                .await?
                .is_some()
            {
                settled.removed += 1;
            }
            match owed {
                Owed::Removal | Owed::Vacancy => {}
                Owed::Leave => {
                    engine.broker.publish_leave(&channel, member).await?;
                    settled.announced += 1;
                }
                Owed::LastOfUser => last_of_user.push(member),
            }
        }
        if !last_of_user.is_empty() {
            settled.announced += pusher.members_left(engine, &channel, last_of_user).await?;
        }
    }
    tracing::debug!(elapsed = ?started.elapsed(), "estate settled");
    Ok(settled)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn entries_keep_the_member_and_what_is_owed() {
        for chan_info in [None, Some(Bytes::from_static(b"{\"role\":\"op\"}"))] {
            for owed in [Owed::Removal, Owed::Leave, Owed::LastOfUser, Owed::Vacancy] {
                let member = ClientInfo {
                    user: "alice".into(),
                    client: "c-1".into(),
                    conn_info: Some(Bytes::from_static(b"{\"name\":\"A\"}")),
                    chan_info: chan_info.clone(),
                };
                let entry = encode("\u{1}odd:chat", &member, owed);
                assert_eq!(
                    decode(entry),
                    Some(Departure {
                        channel: "\u{1}odd:chat".into(),
                        member,
                        owed,
                    })
                );
            }
        }
    }

    #[test]
    fn foreign_entries_are_skipped() {
        let plain = ClientInfo {
            client: "no-separator".into(),
            chan_info: Some(Bytes::from_static(b"l")),
            ..ClientInfo::default()
        };
        assert_eq!(decode(plain), None);
        let untagged = ClientInfo {
            client: entry_id("chat", "c"),
            ..ClientInfo::default()
        };
        assert_eq!(decode(untagged), None);
        let unknown = ClientInfo {
            client: entry_id("chat", "c"),
            chan_info: Some(Bytes::from_static(b"?")),
            ..ClientInfo::default()
        };
        assert_eq!(decode(unknown), None);
    }
}
