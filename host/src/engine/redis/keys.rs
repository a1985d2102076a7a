//! Redis key and pub/sub channel names of a Herald channel.
//!
//! Every key of one channel carries the same hash tag, so they live in one Redis Cluster slot and one script
//! can touch them all; the channel's sharded pub/sub channel carries it too, so a script may publish to it.

use sha2::{Digest, Sha256};

/// Names derived from one configured prefix.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: String,
}

/// The names belonging to one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ChannelKeys {
    /// Hash: `top`, `epoch`, `forget` (unix ms when the stream is forgotten, 0 = never), `term` (the
    /// failover term it was last written in).
    pub meta: String,
    /// Stream of kept publications; entry ids are `<offset>-0`.
    pub stream: String,
    /// Hash of who is present: client id → MessagePack client info.
    pub presence: String,
    /// Sorted set: client id → when its presence entry expires (unix ms).
    pub presence_expiry: String,
    /// Hash: user id → how many of the user's clients are present.
    pub presence_users: String,
    /// The pub/sub channel publications, joins and leaves travel on.
    pub pubsub: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The hash tag of a channel: the channel itself, unless braces in it would end the tag early, in which
    /// case a digest of it.
    fn tag(channel: &str) -> String {
        if !channel.is_empty() && !channel.contains(['{', '}']) {
            return channel.to_owned();
        }
        let digest = Sha256::digest(channel.as_bytes());
        format!("#{}", hex::encode(&digest[..16]))
    }

    pub(super) fn channel(&self, channel: &str) -> ChannelKeys {
        let base = format!("{}:{{{}}}", self.prefix, Self::tag(channel));
        ChannelKeys {
            meta: format!("{base}:meta"),
            stream: format!("{base}:stream"),
            presence: format!("{base}:presence"),
            presence_expiry: format!("{base}:presence-expiry"),
            presence_users: format!("{base}:presence-users"),
            pubsub: format!("{base}:pub"),
        }
    }

    /// Hash of a node's published subscriber counts: channel → count.
    pub(super) fn node_counts(&self, node: &str) -> String {
        format!("{}:counts:{{{node}}}", self.prefix)
    }

    /// Counter of the Sentinel failovers Herald has followed: a stream written before the latest gets a new
    /// epoch (see `stream.lua`). Only used without Redis Cluster, so outside any channel's slot.
    pub(super) fn failover_term(&self) -> String {
        format!("{}:failover-term", self.prefix)
    }

    /// Set of the replication ids of the primaries Herald has used, so the nodes that each follow one
    /// failover count it once.
    pub(super) fn failover_primaries(&self) -> String {
        format!("{}:failover-primaries", self.prefix)
    }

    /// A plugin's shared-state entry. The scope's length comes first, so no scope and key pair can name
    /// another's entry (`a:b` + `c` against `a` + `b:c`); one entry is one key, in whatever slot it hashes.
    pub(super) fn state(&self, scope: &str, key: &str) -> String {
        format!("{}:state:{}:{scope}:{key}", self.prefix, scope.len())
    }

    /// Where an idempotent publish remembers its result, in the channel's slot.
    pub(super) fn idempotency(&self, channel: &str, key: &str) -> String {
        format!("{}:{{{}}}:idem:{key}", self.prefix, Self::tag(channel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The part of a key Redis Cluster hashes.
    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').expect("tagged");
        let close = key[open + 1..].find('}').expect("closed") + open + 1;
        &key[open + 1..close]
    }

    #[test]
    fn every_name_of_a_channel_shares_one_hash_tag() {
        let keys = Keys::new("herald");
        for channel in ["news", "chat:room-1", "odd}name", "{braced}", ""] {
            let names = keys.channel(channel);
            let tag = hash_tag(&names.meta);
            assert!(
                !tag.is_empty(),
                "{channel:?}: an empty tag would hash the whole key"
            );
            for name in [
                &names.stream,
                &names.presence,
                &names.presence_expiry,
                &names.presence_users,
                &names.pubsub,
                &keys.idempotency(channel, "k1"),
            ] {
                assert_eq!(hash_tag(name), tag, "{channel:?}: {name}");
            }
        }
        assert_ne!(keys.channel("odd}name").meta, keys.channel("{braced}").meta);
        assert_eq!(keys.channel("news").meta, "herald:{news}:meta");
    }

    #[test]
    fn state_entries_of_different_scopes_never_share_a_key() {
        let keys = Keys::new("herald");
        assert_ne!(keys.state("a:b", "c"), keys.state("a", "b:c"));
        assert_eq!(
            keys.state("rate-limit", "u:1"),
            "herald:state:10:rate-limit:u:1"
        );
    }
}
