//! The in-memory engine: owns every channel's stream (offsets, epochs, kept publications) and presence, and
//! delivers publications, joins and leaves straight to this node's [`BrokerEventHandler`].
//!
//! Single node only: nothing leaves the process, so several nodes serving the same channels need the Redis
//! engine instead.
//!
//! Durations of zero in [`HistoryOptions`] mean "no time limit": a zero `ttl` keeps publications until the
//! size bound pushes them out, a zero `meta_ttl` keeps the stream (top offset, epoch) forever.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rand::Rng;
use rand::distr::Alphabetic;

use super::{
    Broker, BrokerEventHandler, ClientInfo, EngineError, History, HistoryFilter, HistoryOptions,
    HistoryResult, Presence, PresenceStats, Publication, PublishOptions, StreamPosition,
};
use crate::sync::lock;

/// Enough shards that unrelated channels rarely share a lock, few enough that [`MemoryEngine::sweep`] stays
/// cheap.
const SHARD_COUNT: usize = 32;

/// Centrifuge's epochs are 8 random letters; clients only compare them for equality.
const EPOCH_LEN: usize = 8;

/// Where the engine reads the current time. Injectable so tests can move time without sleeping.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// The single-node engine: [`Broker`], [`History`] and [`Presence`] kept in process memory.
pub struct MemoryEngine {
    handler: Arc<dyn BrokerEventHandler>,
    clock: Clock,
    streams: Sharded<Stream>,
    presence: Sharded<HashMap<String, ClientInfo>>,
    /// Positions of idempotent publishes by (channel, key), until their window ends.
    idempotent: Mutex<HashMap<(String, String), (StreamPosition, Instant)>>,
    /// Published subscriber counts by node.
    counts: Mutex<HashMap<String, NodeCounts>>,
}

/// One node's published counts (channel → count), and until when they are kept.
type NodeCounts = (HashMap<String, u64>, Instant);

impl std::fmt::Debug for MemoryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryEngine").finish_non_exhaustive()
    }
}

impl MemoryEngine {
    /// An empty engine delivering to `handler`, reading the system's monotonic clock.
    pub fn new(handler: Arc<dyn BrokerEventHandler>) -> Self {
        Self::with_clock(handler, Arc::new(Instant::now))
    }

    /// An empty engine delivering to `handler` that reads the time from `clock` (for tests).
    pub fn with_clock(handler: Arc<dyn BrokerEventHandler>, clock: Clock) -> Self {
        Self {
            handler,
            clock,
            streams: Sharded::new(),
            presence: Sharded::new(),
            idempotent: Mutex::default(),
            counts: Mutex::default(),
        }
    }

    /// Node `node`'s counts if they have not expired (expired ones are dropped).
    fn live_counts<T>(
        &self,
        node: &str,
        read: impl FnOnce(&HashMap<String, u64>) -> T,
    ) -> Option<T> {
        let now = (self.clock)();
        let mut counts = lock(&self.counts);
        match counts.get(node) {
            Some((_, until)) if *until <= now => {
                counts.remove(node);
                None
            }
            Some((channels, _)) => Some(read(channels)),
            None => None,
        }
    }

    /// Forgets streams whose `meta_ttl` has passed since their last publish and drops expired publications,
    /// so memory stays bounded by the channels actually in use.
    ///
    /// Expiry is already enforced lazily whenever a channel is accessed; this only reclaims memory of channels
    /// nobody touches any more. Call it periodically (every few seconds is plenty). Each shard is locked
    /// briefly in turn, so publishing on other shards is not blocked.
    pub fn sweep(&self) {
        let now = (self.clock)();
        lock(&self.idempotent).retain(|_, (_, until)| *until > now);
        for shard in self.streams.shards.iter() {
            let mut streams = lock(shard);
            streams.retain(|_, stream| !stream.is_forgotten(now));
            for stream in streams.values_mut() {
                stream.kept.retain(|kept| !kept.is_expired(now));
                if stream.kept.is_empty() {
                    stream.kept.shrink_to_fit();
                }
            }
        }
    }

    #[cfg(test)]
    fn stream_count(&self) -> usize {
        self.streams
            .shards
            .iter()
            .map(|shard| lock(shard).len())
            .sum()
    }

    #[cfg(test)]
    fn presence_channel_count(&self) -> usize {
        self.presence
            .shards
            .iter()
            .map(|shard| lock(shard).len())
            .sum()
    }
}

/// Channel-keyed maps split over several locks so unrelated channels rarely contend.
struct Sharded<T> {
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<String, T>>]>,
}

impl<T> Sharded<T> {
    fn new() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..SHARD_COUNT).map(|_| Mutex::default()).collect(),
        }
    }

    /// Locks the shard holding `channel`.
    fn lock(&self, channel: &str) -> MutexGuard<'_, HashMap<String, T>> {
        // The remainder is below SHARD_COUNT, so the narrowing cast cannot lose anything.
        let index = (self.hasher.hash_one(channel) % SHARD_COUNT as u64) as usize;
        lock(&self.shards[index])
    }
}

/// `now + ttl`, or `None` (never) for a zero ttl or one too large to represent.
fn deadline_after(now: Instant, ttl: Duration) -> Option<Instant> {
    if ttl.is_zero() {
        None
    } else {
        now.checked_add(ttl)
    }
}

fn new_epoch() -> String {
    rand::rng()
        .sample_iter(Alphabetic)
        .take(EPOCH_LEN)
        .map(char::from)
        .collect()
}

/// One life of a channel's stream.
struct Stream {
    epoch: String,
    /// Offset of the last publication; 0 before the first.
    top: u64,
    /// The newest publications, oldest first, with contiguous offsets ending at `top` (unless expired ones
    /// were dropped from the middle by a sweep after a ttl change).
    kept: VecDeque<KeptPublication>,
    /// When the whole stream is forgotten: its last publish (or creation) plus `meta_ttl`; `None` = never.
    forget_at: Option<Instant>,
}

struct KeptPublication {
    publication: Arc<Publication>,
    expires_at: Option<Instant>,
}

impl KeptPublication {
    fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|expires_at| now >= expires_at)
    }
}

impl Stream {
    fn new(now: Instant, meta_ttl: Duration, previous_epoch: Option<&str>) -> Self {
        // A recreated stream must not reuse the epoch it replaces, or clients could not tell them apart.
        let mut epoch = new_epoch();
        while previous_epoch == Some(epoch.as_str()) {
            epoch = new_epoch();
        }
        Self {
            epoch,
            top: 0,
            kept: VecDeque::new(),
            forget_at: deadline_after(now, meta_ttl),
        }
    }

    fn is_forgotten(&self, now: Instant) -> bool {
        self.forget_at.is_some_and(|forget_at| now >= forget_at)
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.top,
            epoch: self.epoch.clone(),
        }
    }

    /// Drops expired publications from the old end. Publications are appended in time order, so with a
    /// steady ttl this removes all of them; readers still skip any odd one left behind a ttl change.
    fn drop_expired_oldest(&mut self, now: Instant) {
        while self.kept.front().is_some_and(|kept| kept.is_expired(now)) {
            self.kept.pop_front();
        }
    }

    fn keep_newest(&mut self, size: usize) {
        while self.kept.len() > size {
            self.kept.pop_front();
        }
    }
}

/// The live stream of `channel`: created on first access, recreated (new epoch, top 0) once `meta_ttl` has
/// passed since its last publish, with expired and excess publications dropped.
fn open_stream<'a>(
    streams: &'a mut HashMap<String, Stream>,
    channel: &str,
    now: Instant,
    opts: &HistoryOptions,
) -> &'a mut Stream {
    let stream = streams
        .entry(channel.to_owned())
        .or_insert_with(|| Stream::new(now, opts.meta_ttl, None));
    if stream.is_forgotten(now) {
        *stream = Stream::new(now, opts.meta_ttl, Some(&stream.epoch));
    }
    stream.drop_expired_oldest(now);
    stream.keep_newest(opts.size);
    stream
}

#[async_trait]
impl Broker for MemoryEngine {
    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        opts: &PublishOptions,
    ) -> Result<StreamPosition, EngineError> {
        let Some(idempotency) = &opts.idempotency else {
            return Ok(self.publish_now(channel, publication, opts));
        };
        let now = (self.clock)();
        // Held across the publish so two concurrent repeats cannot both miss the key.
        let mut idempotent = lock(&self.idempotent);
        let key = (channel.to_owned(), idempotency.key.clone());
        if let Some((position, until)) = idempotent.get(&key)
            && *until > now
        {
            return Ok(position.clone());
        }
        let position = self.publish_now(channel, publication, opts);
        idempotent.insert(
            key,
            (
                position.clone(),
                now + idempotency.window.max(Duration::from_millis(1)),
            ),
        );
        Ok(position)
    }

    async fn publish_join(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        self.handler.handle_join(channel, Arc::new(info));
        Ok(())
    }

    async fn publish_leave(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        self.handler.handle_leave(channel, Arc::new(info));
        Ok(())
    }

    /// Nothing to do: every publication already reaches this node's handler.
    async fn subscribe(&self, _channel: &str) -> Result<(), EngineError> {
        Ok(())
    }

    /// Nothing to do: the hub ignores publications for channels without local subscribers.
    async fn unsubscribe(&self, _channel: &str) -> Result<(), EngineError> {
        Ok(())
    }
}

impl MemoryEngine {
    /// Appends (with history) and delivers; the position of the publication.
    fn publish_now(
        &self,
        channel: &str,
        mut publication: Publication,
        opts: &PublishOptions,
    ) -> StreamPosition {
        let Some(history) = &opts.history else {
            publication.offset = 0;
            self.handler.handle_publication(
                channel,
                Arc::new(publication),
                StreamPosition::default(),
            );
            return StreamPosition::default();
        };

        let now = (self.clock)();
        let mut streams = self.streams.lock(channel);
        let stream = open_stream(&mut streams, channel, now, history);
        if stream.top == u64::MAX {
            // Out of offsets: the only honest continuation is a new stream, which clients see as an epoch change.
            *stream = Stream::new(now, history.meta_ttl, Some(&stream.epoch));
        }
        stream.top += 1;
        stream.forget_at = deadline_after(now, history.meta_ttl);
        publication.offset = stream.top;
        let publication = Arc::new(publication);
        if history.size > 0 {
            stream.kept.push_back(KeptPublication {
                publication: publication.clone(),
                expires_at: deadline_after(now, history.ttl),
            });
            stream.keep_newest(history.size);
        }
        let position = stream.position();
        // Delivered while the channel's lock is held: a concurrent publisher cannot take the next offset and
        // overtake this delivery, so the handler sees offsets in order.
        self.handler
            .handle_publication(channel, publication, position.clone());
        position
    }
}

#[async_trait]
impl History for MemoryEngine {
    async fn history(
        &self,
        channel: &str,
        filter: &HistoryFilter,
        opts: &HistoryOptions,
    ) -> Result<HistoryResult, EngineError> {
        let now = (self.clock)();
        let mut streams = self.streams.lock(channel);
        let stream = open_stream(&mut streams, channel, now, opts);
        if let Some(since) = &filter.since
            && !since.epoch.is_empty()
            && since.epoch != stream.epoch
        {
            return Err(EngineError::UnrecoverablePosition);
        }

        let limit = filter.limit.unwrap_or(usize::MAX);
        let live = stream.kept.iter().filter(|kept| !kept.is_expired(now));
        let since_offset = filter.since.as_ref().map(|since| since.offset);
        let publications = if filter.reverse {
            live.rev()
                .filter(|kept| since_offset.is_none_or(|before| kept.publication.offset < before))
                .take(limit)
                .map(|kept| kept.publication.clone())
                .collect()
        } else {
            let after = since_offset.unwrap_or(0);
            live.filter(|kept| kept.publication.offset > after)
                .take(limit)
                .map(|kept| kept.publication.clone())
                .collect()
        };
        Ok(HistoryResult {
            publications,
            position: stream.position(),
        })
    }

    async fn remove_history(&self, channel: &str) -> Result<(), EngineError> {
        let now = (self.clock)();
        let mut streams = self.streams.lock(channel);
        if let Some(stream) = streams.get_mut(channel) {
            if stream.is_forgotten(now) {
                streams.remove(channel);
            } else {
                stream.kept.clear();
                stream.kept.shrink_to_fit();
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Presence for MemoryEngine {
    async fn add_presence(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        let mut channels = self.presence.lock(channel);
        channels
            .entry(channel.to_owned())
            .or_default()
            .insert(info.client.clone(), info);
        Ok(())
    }

    async fn remove_presence(
        &self,
        channel: &str,
        client: &str,
    ) -> Result<Option<ClientInfo>, EngineError> {
        let mut channels = self.presence.lock(channel);
        let Some(clients) = channels.get_mut(channel) else {
            return Ok(None);
        };
        let removed = clients.remove(client);
        if clients.is_empty() {
            channels.remove(channel);
        }
        Ok(removed)
    }

    async fn users_present(
        &self,
        channel: &str,
        users: &[String],
    ) -> Result<HashSet<String>, EngineError> {
        let channels = self.presence.lock(channel);
        let Some(clients) = channels.get(channel) else {
            return Ok(HashSet::new());
        };
        Ok(users
            .iter()
            .filter(|user| clients.values().any(|info| info.user == **user))
            .cloned()
            .collect())
    }

    async fn publish_counts(
        &self,
        node: &str,
        changed: &[(String, u64)],
        ttl: Duration,
    ) -> Result<(), EngineError> {
        let now = (self.clock)();
        let mut counts = lock(&self.counts);
        let entry = counts
            .entry(node.to_owned())
            .or_insert_with(|| (HashMap::new(), now));
        if entry.1 <= now {
            entry.0.clear();
        }
        entry.1 = now + ttl;
        for (channel, count) in changed {
            if *count == 0 {
                entry.0.remove(channel);
            } else {
                entry.0.insert(channel.clone(), *count);
            }
        }
        Ok(())
    }

    async fn node_counts(&self, node: &str) -> Result<HashMap<String, u64>, EngineError> {
        Ok(self.live_counts(node, Clone::clone).unwrap_or_default())
    }

    async fn node_count(&self, node: &str, channel: &str) -> Result<u64, EngineError> {
        Ok(self
            .live_counts(node, |channels| channels.get(channel).copied())
            .flatten()
            .unwrap_or(0))
    }

    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, EngineError> {
        Ok(self
            .presence
            .lock(channel)
            .get(channel)
            .cloned()
            .unwrap_or_default())
    }

    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, EngineError> {
        let channels = self.presence.lock(channel);
        let Some(clients) = channels.get(channel) else {
            return Ok(PresenceStats::default());
        };
        // As in Centrifuge, anonymous connections (empty user id) count as one user.
        let users: HashSet<&str> = clients.values().map(|info| info.user.as_str()).collect();
        Ok(PresenceStats {
            num_clients: u32::try_from(clients.len()).unwrap_or(u32::MAX),
            num_users: u32::try_from(users.len()).unwrap_or(u32::MAX),
        })
    }
}

#[cfg(test)]
mod tests {
    //! Behaviour specific to the memory engine; the shared contract is tested in `conformance.rs`.

    use super::*;
    use crate::engine::Engine;
    use crate::engine::conformance::{Event, ManualClock, Recorder, TestClock};

    fn history_options(size: usize, ttl_secs: u64, meta_ttl_secs: u64) -> HistoryOptions {
        HistoryOptions {
            size,
            ttl: Duration::from_secs(ttl_secs),
            meta_ttl: Duration::from_secs(meta_ttl_secs),
        }
    }

    fn engine_with_manual_clock() -> (MemoryEngine, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
        let reader = clock.clone();
        let engine = MemoryEngine::with_clock(
            Arc::new(Recorder::default()),
            Arc::new(move || reader.now()),
        );
        (engine, clock)
    }

    fn publication(data: &'static str) -> Publication {
        Publication {
            data: bytes::Bytes::from_static(data.as_bytes()),
            ..Publication::default()
        }
    }

    #[tokio::test]
    async fn engine_memory_delivers_through_the_handler() {
        let recorder = Arc::new(Recorder::default());
        let engine = Engine::memory(recorder.clone(), Default::default());
        let opts = PublishOptions {
            history: Some(history_options(10, 60, 600)),
            ..PublishOptions::default()
        };
        let position = engine
            .broker
            .publish("news", publication("{}"), &opts)
            .await;
        let position = position.expect("publish");
        assert_eq!(position.offset, 1);
        assert_eq!(
            recorder.events(),
            vec![Event::Publication {
                channel: "news".into(),
                offset: 1,
                epoch: position.epoch,
                data: bytes::Bytes::from_static(b"{}"),
            }]
        );
    }

    #[tokio::test]
    async fn epoch_is_eight_ascii_letters() {
        let (engine, _clock) = engine_with_manual_clock();
        let result = engine
            .history(
                "news",
                &HistoryFilter::default(),
                &history_options(10, 60, 600),
            )
            .await;
        let epoch = result.expect("history").position.epoch;
        assert_eq!(epoch.len(), EPOCH_LEN, "epoch {epoch:?}");
        assert!(
            epoch.bytes().all(|byte| byte.is_ascii_alphabetic()),
            "epoch {epoch:?}"
        );
    }

    #[tokio::test]
    async fn sweep_forgets_idle_streams_and_drops_expired_publications() {
        let (engine, clock) = engine_with_manual_clock();
        let opts = PublishOptions {
            history: Some(history_options(10, 5, 60)),
            ..PublishOptions::default()
        };
        engine
            .publish("idle", publication("1"), &opts)
            .await
            .expect("publish");
        clock.advance(Duration::from_secs(30)).await;
        engine
            .publish("busy", publication("2"), &opts)
            .await
            .expect("publish");

        clock.advance(Duration::from_secs(31)).await;
        engine.sweep();
        assert_eq!(
            engine.stream_count(),
            1,
            "only the idle stream is past its meta_ttl"
        );
        let kept: usize = engine
            .streams
            .shards
            .iter()
            .map(|shard| {
                lock(shard)
                    .values()
                    .map(|stream| stream.kept.len())
                    .sum::<usize>()
            })
            .sum();
        assert_eq!(kept, 0, "the busy stream's publication is past its ttl");
    }

    #[tokio::test]
    async fn zero_durations_mean_no_time_limit() {
        let (engine, clock) = engine_with_manual_clock();
        let history = history_options(10, 0, 0);
        let opts = PublishOptions {
            history: Some(history.clone()),
            ..PublishOptions::default()
        };
        let first = engine
            .publish("news", publication("1"), &opts)
            .await
            .expect("publish");
        clock
            .advance(Duration::from_secs(10 * 365 * 24 * 3600))
            .await;
        engine.sweep();
        let result = engine
            .history("news", &HistoryFilter::default(), &history)
            .await
            .expect("history");
        assert_eq!(result.position, first);
        assert_eq!(result.publications.len(), 1);
    }

    #[tokio::test]
    async fn huge_durations_do_not_overflow() {
        let (engine, _clock) = engine_with_manual_clock();
        let history = HistoryOptions {
            size: usize::MAX,
            ttl: Duration::MAX,
            meta_ttl: Duration::MAX,
        };
        let opts = PublishOptions {
            history: Some(history.clone()),
            ..PublishOptions::default()
        };
        engine
            .publish("news", publication("1"), &opts)
            .await
            .expect("publish");
        let result = engine
            .history("news", &HistoryFilter::default(), &history)
            .await
            .expect("history");
        assert_eq!(result.publications.len(), 1);
    }

    #[tokio::test]
    async fn exhausted_offsets_start_a_new_epoch() {
        let (engine, _clock) = engine_with_manual_clock();
        let history = history_options(10, 60, 600);
        let opts = PublishOptions {
            history: Some(history.clone()),
            ..PublishOptions::default()
        };
        let first = engine
            .publish("news", publication("1"), &opts)
            .await
            .expect("publish");
        for shard in engine.streams.shards.iter() {
            lock(shard)
                .values_mut()
                .for_each(|stream| stream.top = u64::MAX);
        }
        let next = engine
            .publish("news", publication("2"), &opts)
            .await
            .expect("publish");
        assert_eq!(next.offset, 1);
        assert_ne!(next.epoch, first.epoch);
    }

    #[tokio::test]
    async fn empty_presence_channels_are_removed() {
        let (engine, _clock) = engine_with_manual_clock();
        let info = ClientInfo {
            user: "u".into(),
            client: "c".into(),
            ..ClientInfo::default()
        };
        engine.add_presence("room", info).await.expect("add");
        assert_eq!(engine.presence_channel_count(), 1);
        engine.remove_presence("room", "c").await.expect("remove");
        assert_eq!(engine.presence_channel_count(), 0);
    }

    #[tokio::test]
    async fn remove_history_of_an_untouched_channel_creates_nothing() {
        let (engine, _clock) = engine_with_manual_clock();
        engine.remove_history("never").await.expect("remove");
        assert_eq!(engine.stream_count(), 0);
    }
}
