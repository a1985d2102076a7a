//! The engine conformance suite: the contract of [`Broker`], [`History`], [`Presence`] and [`SharedState`]
//! as tests, written once and run against every engine.
//!
//! An engine module runs it with `engine_conformance_tests!(make_engine)`, where `make_engine` is an
//! `async fn(Arc<dyn BrokerEventHandler>) -> (Engine, Arc<dyn TestClock>)`. That expands to one
//! `#[tokio::test]` per case, named after the case, so a failure names the broken rule.
//!
//! Cases wait for deliveries with [`Recorder::wait_for`], which returns as soon as the events are there (at
//! once for the memory engine, whose delivery is synchronous) and never sleeps. Time-dependent cases move
//! time with [`TestClock::advance`] instead of sleeping.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use rand::Rng;
use rand::distr::Alphabetic;

use super::{
    BrokerEventHandler, ClientInfo, Engine, EngineError, HistoryFilter, HistoryOptions,
    HistoryResult, Idempotency, PresenceStats, Publication, PublishOptions, StreamPosition,
};
use crate::sync::lock;

/// How long [`Recorder::wait_for`] waits before failing the case; only reached when a delivery is missing.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Moves the time an engine under test sees.
#[async_trait]
pub(crate) trait TestClock: Send + Sync {
    /// Lets `by` pass for the engine.
    async fn advance(&self, by: Duration);
}

/// A clock that only moves when told to; engines taking a clock function read it through [`Self::now`].
#[derive(Debug)]
pub(crate) struct ManualClock {
    start: Instant,
    elapsed: Mutex<Duration>,
}

impl ManualClock {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            elapsed: Mutex::new(Duration::ZERO),
        }
    }

    pub(crate) fn now(&self) -> Instant {
        self.start + *lock(&self.elapsed)
    }

    /// The instant the clock started at.
    pub(crate) fn origin(&self) -> Instant {
        self.start
    }
}

#[async_trait]
impl TestClock for ManualClock {
    async fn advance(&self, by: Duration) {
        *lock(&self.elapsed) += by;
    }
}

/// Something an engine delivered to its handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    Publication {
        channel: String,
        offset: u64,
        epoch: String,
        data: Bytes,
    },
    Join {
        channel: String,
        client: String,
    },
    Leave {
        channel: String,
        client: String,
    },
}

impl Event {
    fn channel(&self) -> &str {
        match self {
            Self::Publication { channel, .. }
            | Self::Join { channel, .. }
            | Self::Leave { channel, .. } => channel,
        }
    }
}

/// A [`BrokerEventHandler`] recording every delivery in arrival order.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    events: Mutex<Vec<Event>>,
    arrived: tokio::sync::Notify,
}

impl Recorder {
    fn record(&self, event: Event) {
        lock(&self.events).push(event);
        self.arrived.notify_waiters();
    }

    /// Everything delivered so far.
    pub(crate) fn events(&self) -> Vec<Event> {
        lock(&self.events).clone()
    }

    /// The events of `channel`, once at least `count` of them have arrived.
    pub(crate) async fn wait_for(&self, channel: &str, count: usize) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
        loop {
            // Registered before looking, so a delivery between the look and the wait still wakes us.
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let events: Vec<Event> = self
                .events()
                .into_iter()
                .filter(|event| event.channel() == channel)
                .collect();
            if events.len() >= count {
                return events;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!(
                    "waited {DELIVERY_TIMEOUT:?} for {count} events in {channel:?}, got {events:?}"
                );
            }
        }
    }

    /// The offsets of the publications delivered in `channel`, once at least `count` have arrived.
    async fn wait_for_offsets(&self, channel: &str, count: usize) -> Vec<u64> {
        let offsets = |events: Vec<Event>| -> Vec<u64> {
            events
                .into_iter()
                .filter_map(|event| match event {
                    Event::Publication { offset, .. } => Some(offset),
                    Event::Join { .. } | Event::Leave { .. } => None,
                })
                .collect()
        };
        offsets(self.wait_for(channel, count).await)
    }
}

impl BrokerEventHandler for Recorder {
    fn handle_publication(
        &self,
        channel: &str,
        publication: Arc<Publication>,
        position: StreamPosition,
    ) {
        self.record(Event::Publication {
            channel: channel.to_owned(),
            offset: position.offset,
            epoch: position.epoch,
            data: publication.data.clone(),
        });
    }

    fn handle_join(&self, channel: &str, info: Arc<ClientInfo>) {
        self.record(Event::Join {
            channel: channel.to_owned(),
            client: info.client.clone(),
        });
    }

    fn handle_leave(&self, channel: &str, info: Arc<ClientInfo>) {
        self.record(Event::Leave {
            channel: channel.to_owned(),
            client: info.client.clone(),
        });
    }
}

/// One engine under test, with its recorder and clock.
pub(crate) struct Harness {
    engine: Engine,
    recorder: Arc<Recorder>,
    clock: Arc<dyn TestClock>,
    /// Prefixes every channel so cases sharing a backing store (Redis) cannot see each other's data.
    channel_prefix: String,
}

impl Harness {
    pub(crate) async fn start<F, Fut>(make_engine: F) -> Self
    where
        F: FnOnce(Arc<dyn BrokerEventHandler>) -> Fut,
        Fut: Future<Output = (Engine, Arc<dyn TestClock>)>,
    {
        let recorder = Arc::new(Recorder::default());
        let (engine, clock) = make_engine(recorder.clone()).await;
        let run_id: String = rand::rng()
            .sample_iter(Alphabetic)
            .take(8)
            .map(char::from)
            .collect();
        Self {
            engine,
            recorder,
            clock,
            channel_prefix: format!("conformance-{run_id}:"),
        }
    }

    /// A shared-state scope of this case.
    fn scope(&self, name: &str) -> String {
        format!("{}{name}", self.channel_prefix)
    }

    /// A channel of this case, subscribed so the engine delivers its events here.
    async fn channel(&self, name: &str) -> String {
        let channel = format!("{}{name}", self.channel_prefix);
        self.engine
            .broker
            .subscribe(&channel)
            .await
            .expect("subscribe");
        channel
    }

    async fn publish(
        &self,
        channel: &str,
        data: &str,
        history: Option<&HistoryOptions>,
    ) -> StreamPosition {
        let opts = PublishOptions {
            history: history.cloned(),
            ..PublishOptions::default()
        };
        let result = self
            .engine
            .broker
            .publish(channel, publication(data), &opts)
            .await;
        result.unwrap_or_else(|error| panic!("publish {data} to {channel}: {error}"))
    }

    /// Publishes `count` publications with data `0`, `1`, … and returns the last position.
    async fn publish_many(
        &self,
        channel: &str,
        count: usize,
        history: &HistoryOptions,
    ) -> StreamPosition {
        let mut last = StreamPosition::default();
        for n in 0..count {
            last = self.publish(channel, &n.to_string(), Some(history)).await;
        }
        last
    }

    async fn try_history(
        &self,
        channel: &str,
        filter: HistoryFilter,
        opts: &HistoryOptions,
    ) -> Result<HistoryResult, EngineError> {
        self.engine.history.history(channel, &filter, opts).await
    }

    async fn history(
        &self,
        channel: &str,
        filter: HistoryFilter,
        opts: &HistoryOptions,
    ) -> HistoryResult {
        let result = self.try_history(channel, filter.clone(), opts).await;
        result.unwrap_or_else(|error| panic!("history of {channel} with {filter:?}: {error}"))
    }

    /// The offsets the history query returns, in the order it returns them.
    async fn history_offsets(
        &self,
        channel: &str,
        filter: HistoryFilter,
        opts: &HistoryOptions,
    ) -> Vec<u64> {
        offsets_of(&self.history(channel, filter, opts).await)
    }

    async fn top(&self, channel: &str, opts: &HistoryOptions) -> StreamPosition {
        self.history(channel, limit(0), opts).await.position
    }
}

fn publication(data: &str) -> Publication {
    Publication {
        data: Bytes::copy_from_slice(data.as_bytes()),
        time_ms: 1,
        ..Publication::default()
    }
}

fn offsets_of(result: &HistoryResult) -> Vec<u64> {
    result
        .publications
        .iter()
        .map(|publication| publication.offset)
        .collect()
}

/// History kept long enough that nothing expires unless a case moves the clock on purpose.
fn keep(size: usize) -> HistoryOptions {
    HistoryOptions {
        size,
        ttl: Duration::from_secs(60),
        meta_ttl: Duration::from_secs(3600),
    }
}

fn limit(limit: usize) -> HistoryFilter {
    HistoryFilter {
        limit: Some(limit),
        ..HistoryFilter::default()
    }
}

fn since(offset: u64, epoch: &str) -> Option<StreamPosition> {
    Some(StreamPosition {
        offset,
        epoch: epoch.to_owned(),
    })
}

fn client(user: &str, client: &str) -> ClientInfo {
    ClientInfo {
        user: user.to_owned(),
        client: client.to_owned(),
        ..ClientInfo::default()
    }
}

/// Expands to one `#[tokio::test]` per conformance case for the engine `make_engine` builds.
macro_rules! engine_conformance_tests {
    ($make_engine:path) => {
        $crate::engine::conformance::engine_conformance_tests!(@cases $make_engine;
            offsets_are_contiguous_from_one_with_a_stable_epoch,
            concurrent_publishers_are_delivered_in_offset_order,
            publish_without_history_has_offset_zero_and_is_delivered,
            history_creates_the_stream_on_first_access,
            size_keeps_the_newest_publications,
            ttl_expires_publications_but_not_the_stream,
            history_limit,
            history_since_forward,
            history_since_reverse,
            history_since_another_epoch_is_unrecoverable,
            history_since_the_top_is_empty,
            history_reverse_without_since,
            remove_history_keeps_top_and_epoch,
            meta_ttl_expiry_starts_a_new_epoch,
            join_and_leave_are_delivered,
            presence_add_replace_remove_and_stats,
            published_counts_are_kept_per_node,
            channels_are_independent,
            idempotent_publishes_are_published_once,
            shared_state_is_kept_by_scope_and_key,
            shared_state_increments_are_atomic_and_saturate,
            shared_state_entries_expire,
        );
    };
    (@cases $make_engine:path; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let harness = $crate::engine::conformance::Harness::start($make_engine).await;
                $crate::engine::conformance::cases::$case(harness).await;
            }
        )+
    };
}
pub(crate) use engine_conformance_tests;

/// The conformance cases, one function each.
pub(crate) mod cases {
    use super::*;

    pub(crate) async fn offsets_are_contiguous_from_one_with_a_stable_epoch(h: Harness) {
        let channel = h.channel("contiguous").await;
        let opts = keep(100);
        let mut positions = Vec::new();
        for n in 0..5 {
            positions.push(h.publish(&channel, &n.to_string(), Some(&opts)).await);
        }
        let epoch = positions[0].epoch.clone();
        assert!(!epoch.is_empty(), "a stream has an epoch");
        let expected: Vec<StreamPosition> = (1..=5)
            .map(|offset| StreamPosition {
                offset,
                epoch: epoch.clone(),
            })
            .collect();
        assert_eq!(
            positions, expected,
            "publish returns contiguous offsets from 1 in one epoch"
        );

        let history = h.history(&channel, HistoryFilter::default(), &opts).await;
        assert_eq!(history.position, expected[4], "history reports the top");
        assert_eq!(offsets_of(&history), vec![1, 2, 3, 4, 5]);
        let data: Vec<&[u8]> = history
            .publications
            .iter()
            .map(|publication| &publication.data[..])
            .collect();
        assert_eq!(
            data,
            vec![b"0", b"1", b"2", b"3", b"4"],
            "history keeps the payloads"
        );

        let delivered = h.recorder.wait_for(&channel, 5).await;
        let expected_events: Vec<Event> = (1..=5u64)
            .map(|offset| Event::Publication {
                channel: channel.clone(),
                offset,
                epoch: epoch.clone(),
                data: Bytes::from((offset - 1).to_string()),
            })
            .collect();
        assert_eq!(
            delivered, expected_events,
            "the handler gets each publication with its position"
        );
    }

    pub(crate) async fn concurrent_publishers_are_delivered_in_offset_order(h: Harness) {
        const PUBLISHERS: u64 = 8;
        const EACH: u64 = 200;
        let channel = h.channel("concurrent").await;
        let opts = keep(10_000);
        let mut publishers = tokio::task::JoinSet::new();
        for publisher in 0..PUBLISHERS {
            let broker = h.engine.broker.clone();
            let channel = channel.clone();
            let opts = PublishOptions {
                history: Some(opts.clone()),
                ..PublishOptions::default()
            };
            publishers.spawn(async move {
                let mut offsets = Vec::new();
                for n in 0..EACH {
                    let data = format!("{publisher}-{n}");
                    let position = broker
                        .publish(&channel, publication(&data), &opts)
                        .await
                        .expect("publish");
                    offsets.push(position.offset);
                }
                offsets
            });
        }
        let mut returned: Vec<u64> = Vec::new();
        while let Some(offsets) = publishers.join_next().await {
            let offsets = offsets.expect("publisher task");
            assert!(offsets.is_sorted(), "one publisher's offsets increase");
            returned.extend(offsets);
        }
        returned.sort_unstable();
        let all: Vec<u64> = (1..=PUBLISHERS * EACH).collect();
        assert_eq!(
            returned, all,
            "every publish got its own offset, none skipped"
        );

        let count = usize::try_from(PUBLISHERS * EACH).expect("small count");
        let delivered = h.recorder.wait_for_offsets(&channel, count).await;
        assert_eq!(delivered, all, "delivery order is offset order");
        assert_eq!(h.top(&channel, &opts).await.offset, PUBLISHERS * EACH);
    }

    pub(crate) async fn publish_without_history_has_offset_zero_and_is_delivered(h: Harness) {
        let channel = h.channel("no-history").await;
        let position = h.publish(&channel, "{\"a\":1}", None).await;
        assert_eq!(position, StreamPosition::default());
        let delivered = h.recorder.wait_for(&channel, 1).await;
        let expected = Event::Publication {
            channel: channel.clone(),
            offset: 0,
            epoch: String::new(),
            data: Bytes::from_static(b"{\"a\":1}"),
        };
        assert_eq!(delivered, vec![expected]);
        let history = h
            .history(&channel, HistoryFilter::default(), &keep(10))
            .await;
        assert_eq!(
            history.position.offset, 0,
            "a publish without history does not advance the stream"
        );
        assert!(history.publications.is_empty());
    }

    pub(crate) async fn history_creates_the_stream_on_first_access(h: Harness) {
        let channel = h.channel("first-access").await;
        let opts = keep(10);
        let first = h.history(&channel, HistoryFilter::default(), &opts).await;
        assert_eq!(first.position.offset, 0);
        assert!(
            !first.position.epoch.is_empty(),
            "the empty stream already has an epoch"
        );
        assert!(first.publications.is_empty());
        assert_eq!(
            h.top(&channel, &opts).await,
            first.position,
            "the epoch is stable across reads"
        );
        let published = h.publish(&channel, "x", Some(&opts)).await;
        assert_eq!(
            published,
            StreamPosition {
                offset: 1,
                epoch: first.position.epoch
            }
        );
    }

    pub(crate) async fn size_keeps_the_newest_publications(h: Harness) {
        let channel = h.channel("size").await;
        let opts = keep(3);
        let last = h.publish_many(&channel, 10, &opts).await;
        assert_eq!(last.offset, 10, "the top keeps counting past the size");
        let history = h.history(&channel, HistoryFilter::default(), &opts).await;
        assert_eq!(offsets_of(&history), vec![8, 9, 10]);
        assert_eq!(history.position, last);
    }

    pub(crate) async fn ttl_expires_publications_but_not_the_stream(h: Harness) {
        let channel = h.channel("ttl").await;
        let opts = HistoryOptions {
            size: 100,
            ttl: Duration::from_secs(10),
            meta_ttl: Duration::from_secs(3600),
        };
        h.publish_many(&channel, 2, &opts).await;
        h.clock.advance(Duration::from_secs(6)).await;
        let third = h.publish(&channel, "third", Some(&opts)).await;
        assert_eq!(
            h.history_offsets(&channel, HistoryFilter::default(), &opts)
                .await,
            vec![1, 2, 3]
        );

        h.clock.advance(Duration::from_secs(5)).await;
        let history = h.history(&channel, HistoryFilter::default(), &opts).await;
        assert_eq!(
            offsets_of(&history),
            vec![3],
            "publications older than the ttl are gone"
        );
        assert_eq!(history.position, third);
        let reversed = HistoryFilter {
            reverse: true,
            ..HistoryFilter::default()
        };
        assert_eq!(h.history_offsets(&channel, reversed, &opts).await, vec![3]);

        h.clock.advance(Duration::from_secs(10)).await;
        let history = h.history(&channel, HistoryFilter::default(), &opts).await;
        assert!(history.publications.is_empty(), "all publications expired");
        assert_eq!(
            history.position, third,
            "the top and epoch outlive the publications"
        );
        let next = h.publish(&channel, "fourth", Some(&opts)).await;
        assert_eq!(
            next,
            StreamPosition {
                offset: 4,
                epoch: third.epoch
            }
        );
    }

    pub(crate) async fn history_limit(h: Harness) {
        let channel = h.channel("limit").await;
        let opts = keep(10);
        let last = h.publish_many(&channel, 5, &opts).await;
        let none = h.history(&channel, limit(0), &opts).await;
        assert!(none.publications.is_empty(), "limit 0 returns only the top");
        assert_eq!(none.position, last);
        assert_eq!(
            h.history_offsets(&channel, limit(2), &opts).await,
            vec![1, 2]
        );
        assert_eq!(
            h.history_offsets(&channel, limit(50), &opts).await,
            vec![1, 2, 3, 4, 5]
        );
        let unlimited = HistoryFilter {
            limit: None,
            ..HistoryFilter::default()
        };
        assert_eq!(
            h.history_offsets(&channel, unlimited, &opts).await,
            vec![1, 2, 3, 4, 5]
        );
    }

    pub(crate) async fn history_since_forward(h: Harness) {
        let channel = h.channel("since-forward").await;
        let opts = keep(10);
        let last = h.publish_many(&channel, 5, &opts).await;
        let after_three = HistoryFilter {
            since: since(3, &last.epoch),
            ..HistoryFilter::default()
        };
        let history = h.history(&channel, after_three.clone(), &opts).await;
        assert_eq!(offsets_of(&history), vec![4, 5]);
        assert_eq!(history.position, last);
        let one = HistoryFilter {
            limit: Some(1),
            ..after_three
        };
        assert_eq!(h.history_offsets(&channel, one, &opts).await, vec![4]);
        let from_start = HistoryFilter {
            since: since(0, &last.epoch),
            ..HistoryFilter::default()
        };
        assert_eq!(
            h.history_offsets(&channel, from_start, &opts).await,
            vec![1, 2, 3, 4, 5]
        );
        let any_epoch = HistoryFilter {
            since: since(3, ""),
            ..HistoryFilter::default()
        };
        assert_eq!(
            h.history_offsets(&channel, any_epoch, &opts).await,
            vec![4, 5],
            "an empty epoch matches any"
        );
    }

    pub(crate) async fn history_since_reverse(h: Harness) {
        let channel = h.channel("since-reverse").await;
        let opts = keep(10);
        let last = h.publish_many(&channel, 5, &opts).await;
        let before_four = HistoryFilter {
            since: since(4, &last.epoch),
            reverse: true,
            ..HistoryFilter::default()
        };
        let history = h.history(&channel, before_four.clone(), &opts).await;
        assert_eq!(
            offsets_of(&history),
            vec![3, 2, 1],
            "newest first, before the since offset"
        );
        assert_eq!(history.position, last);
        let two = HistoryFilter {
            limit: Some(2),
            ..before_four
        };
        assert_eq!(h.history_offsets(&channel, two, &opts).await, vec![3, 2]);
    }

    pub(crate) async fn history_since_another_epoch_is_unrecoverable(h: Harness) {
        let channel = h.channel("wrong-epoch").await;
        let opts = keep(10);
        let last = h.publish_many(&channel, 3, &opts).await;
        let other_epoch = format!("{}x", last.epoch);
        for reverse in [false, true] {
            let filter = HistoryFilter {
                since: since(1, &other_epoch),
                reverse,
                limit: None,
            };
            let result = h.try_history(&channel, filter, &opts).await;
            assert_eq!(
                result,
                Err(EngineError::UnrecoverablePosition),
                "reverse: {reverse}"
            );
        }
    }

    pub(crate) async fn history_since_the_top_is_empty(h: Harness) {
        let channel = h.channel("since-top").await;
        let opts = keep(10);
        let last = h.publish_many(&channel, 3, &opts).await;
        let at_top = HistoryFilter {
            since: Some(last.clone()),
            ..HistoryFilter::default()
        };
        let history = h.history(&channel, at_top, &opts).await;
        assert!(history.publications.is_empty());
        assert_eq!(history.position, last);
    }

    pub(crate) async fn history_reverse_without_since(h: Harness) {
        let channel = h.channel("reverse").await;
        let opts = keep(10);
        let last = h.publish_many(&channel, 5, &opts).await;
        let reversed = HistoryFilter {
            reverse: true,
            ..HistoryFilter::default()
        };
        let history = h.history(&channel, reversed.clone(), &opts).await;
        assert_eq!(offsets_of(&history), vec![5, 4, 3, 2, 1]);
        assert_eq!(history.position, last);
        let newest_two = HistoryFilter {
            limit: Some(2),
            ..reversed
        };
        assert_eq!(
            h.history_offsets(&channel, newest_two, &opts).await,
            vec![5, 4]
        );
    }

    pub(crate) async fn remove_history_keeps_top_and_epoch(h: Harness) {
        let channel = h.channel("remove").await;
        let opts = keep(10);
        let last = h.publish_many(&channel, 4, &opts).await;
        h.engine
            .history
            .remove_history(&channel)
            .await
            .expect("remove_history");
        let history = h.history(&channel, HistoryFilter::default(), &opts).await;
        assert!(history.publications.is_empty());
        assert_eq!(history.position, last);
        let next = h.publish(&channel, "after", Some(&opts)).await;
        assert_eq!(
            next,
            StreamPosition {
                offset: 5,
                epoch: last.epoch
            }
        );
        assert_eq!(
            h.history_offsets(&channel, HistoryFilter::default(), &opts)
                .await,
            vec![5]
        );
    }

    pub(crate) async fn meta_ttl_expiry_starts_a_new_epoch(h: Harness) {
        let channel = h.channel("meta-ttl").await;
        let opts = HistoryOptions {
            size: 10,
            ttl: Duration::from_secs(600),
            meta_ttl: Duration::from_secs(60),
        };
        h.publish_many(&channel, 2, &opts).await;
        h.clock.advance(Duration::from_secs(40)).await;
        let last = h.publish(&channel, "refresh", Some(&opts)).await;
        h.clock.advance(Duration::from_secs(40)).await;
        assert_eq!(
            h.top(&channel, &opts).await,
            last,
            "a publish restarts the meta_ttl"
        );

        h.clock.advance(Duration::from_secs(30)).await;
        let fresh = h.history(&channel, HistoryFilter::default(), &opts).await;
        assert_eq!(fresh.position.offset, 0, "the forgotten stream starts over");
        assert_ne!(
            fresh.position.epoch, last.epoch,
            "a new stream has a new epoch"
        );
        assert!(fresh.publications.is_empty());
        let old_position = HistoryFilter {
            since: Some(last.clone()),
            ..HistoryFilter::default()
        };
        let result = h.try_history(&channel, old_position, &opts).await;
        assert_eq!(result, Err(EngineError::UnrecoverablePosition));
        let next = h.publish(&channel, "new life", Some(&opts)).await;
        assert_eq!(
            next,
            StreamPosition {
                offset: 1,
                epoch: fresh.position.epoch
            }
        );
    }

    pub(crate) async fn join_and_leave_are_delivered(h: Harness) {
        let channel = h.channel("join-leave").await;
        h.engine
            .broker
            .publish_join(&channel, client("alice", "c1"))
            .await
            .expect("publish_join");
        h.engine
            .broker
            .publish_leave(&channel, client("alice", "c1"))
            .await
            .expect("publish_leave");
        let delivered = h.recorder.wait_for(&channel, 2).await;
        let expected = vec![
            Event::Join {
                channel: channel.clone(),
                client: "c1".into(),
            },
            Event::Leave {
                channel: channel.clone(),
                client: "c1".into(),
            },
        ];
        assert_eq!(delivered, expected);
    }

    pub(crate) async fn published_counts_are_kept_per_node(h: Harness) {
        let presence = &h.engine.presence;
        let node = h.channel("node-a").await;
        let other = h.channel("node-b").await;
        let ttl = Duration::from_secs(60);
        assert!(presence.node_counts(&node).await.expect("read").is_empty());
        assert_eq!(presence.node_count(&node, "news").await.expect("read"), 0);
        presence
            .publish_counts(&node, &[("news".into(), 3), ("chat".into(), 1)], ttl)
            .await
            .expect("publish");
        presence
            .publish_counts(&other, &[("news".into(), 5)], ttl)
            .await
            .expect("publish");
        // A change sets one channel; a zero takes one out; the rest stays.
        presence
            .publish_counts(&node, &[("news".into(), 4), ("chat".into(), 0)], ttl)
            .await
            .expect("publish");
        assert_eq!(
            presence.node_counts(&node).await.expect("read"),
            HashMap::from([("news".to_owned(), 4)])
        );
        assert_eq!(presence.node_count(&node, "news").await.expect("read"), 4);
        assert_eq!(presence.node_count(&node, "chat").await.expect("read"), 0);
        assert_eq!(presence.node_count(&other, "news").await.expect("read"), 5);
        // Publishing nothing only keeps the set alive.
        presence
            .publish_counts(&other, &[], ttl)
            .await
            .expect("keep alive");
        assert_eq!(presence.node_count(&other, "news").await.expect("read"), 5);
        // Many channels at once (more than one slice).
        let many: Vec<(String, u64)> = (0..2500).map(|i| (format!("c{i}"), i + 1)).collect();
        presence
            .publish_counts(&other, &many, ttl)
            .await
            .expect("publish many");
        assert_eq!(
            presence.node_counts(&other).await.expect("read").len(),
            2501
        );
        assert_eq!(
            presence.node_count(&other, "c2499").await.expect("read"),
            2500
        );
    }

    pub(crate) async fn presence_add_replace_remove_and_stats(h: Harness) {
        let channel = h.channel("presence").await;
        let presence = &h.engine.presence;
        assert!(
            presence
                .presence(&channel)
                .await
                .expect("presence")
                .is_empty()
        );
        assert_eq!(
            presence.presence_stats(&channel).await.expect("stats"),
            PresenceStats::default()
        );

        presence
            .add_presence(&channel, client("alice", "c1"))
            .await
            .expect("add");
        presence
            .add_presence(&channel, client("alice", "c2"))
            .await
            .expect("add");
        presence
            .add_presence(&channel, client("bob", "c3"))
            .await
            .expect("add");
        let stats = presence.presence_stats(&channel).await.expect("stats");
        assert_eq!(
            stats,
            PresenceStats {
                num_clients: 3,
                num_users: 2
            }
        );

        let renamed = ClientInfo {
            conn_info: Some(Bytes::from_static(b"{\"v\":2}")),
            ..client("carol", "c1")
        };
        presence
            .add_presence(&channel, renamed.clone())
            .await
            .expect("add again");
        let everyone = presence.presence(&channel).await.expect("presence");
        let expected: HashMap<String, ClientInfo> =
            [renamed, client("alice", "c2"), client("bob", "c3")]
                .into_iter()
                .map(|info| (info.client.clone(), info))
                .collect();
        assert_eq!(everyone, expected, "adding a client again replaces it");
        let stats = presence.presence_stats(&channel).await.expect("stats");
        assert_eq!(
            stats,
            PresenceStats {
                num_clients: 3,
                num_users: 3
            }
        );

        // Removal hands back what was removed, so of two nodes removing one entry exactly one gets it.
        let removed = presence
            .remove_presence(&channel, "c2")
            .await
            .expect("remove");
        assert_eq!(removed, Some(client("alice", "c2")));
        assert_eq!(
            presence
                .remove_presence(&channel, "c2")
                .await
                .expect("remove again"),
            None,
            "a second removal finds nothing"
        );
        assert_eq!(
            presence
                .remove_presence(&channel, "never-there")
                .await
                .expect("removing an unknown client is fine"),
            None
        );
        let stats = presence.presence_stats(&channel).await.expect("stats");
        assert_eq!(
            stats,
            PresenceStats {
                num_clients: 2,
                num_users: 2
            }
        );
        let asked: Vec<String> = ["alice", "bob", "carol", "dave"].map(String::from).into();
        let mut present: Vec<String> = presence
            .users_present(&channel, &asked)
            .await
            .expect("users present")
            .into_iter()
            .collect();
        present.sort();
        assert_eq!(present, ["bob", "carol"], "alice's only client is gone");
        let many: Vec<String> = (0..2500)
            .map(|i| format!("nobody-{i}"))
            .chain(["bob".to_owned()])
            .collect();
        assert_eq!(
            presence
                .users_present(&channel, &many)
                .await
                .expect("many users asked"),
            std::collections::HashSet::from(["bob".to_owned()])
        );
        assert!(
            presence
                .users_present(&channel, &[])
                .await
                .expect("no users asked")
                .is_empty()
        );
        presence
            .remove_presence(&channel, "c1")
            .await
            .expect("remove");
        presence
            .remove_presence(&channel, "c3")
            .await
            .expect("remove");
        assert!(
            presence
                .presence(&channel)
                .await
                .expect("presence")
                .is_empty()
        );
        assert_eq!(
            presence.presence_stats(&channel).await.expect("stats"),
            PresenceStats::default()
        );
    }

    pub(crate) async fn channels_are_independent(h: Harness) {
        let first = h.channel("independent-a").await;
        let second = h.channel("independent-b").await;
        let opts = keep(10);
        let first_last = h.publish_many(&first, 3, &opts).await;
        let second_last = h.publish_many(&second, 2, &opts).await;
        assert_eq!(first_last.offset, 3);
        assert_eq!(second_last.offset, 2, "each channel counts its own offsets");
        assert_ne!(
            first_last.epoch, second_last.epoch,
            "each channel has its own epoch"
        );

        h.engine
            .history
            .remove_history(&first)
            .await
            .expect("remove_history");
        assert!(
            h.history(&first, HistoryFilter::default(), &opts)
                .await
                .publications
                .is_empty()
        );
        assert_eq!(
            h.history_offsets(&second, HistoryFilter::default(), &opts)
                .await,
            vec![1, 2]
        );
        assert_eq!(h.recorder.wait_for_offsets(&first, 3).await, vec![1, 2, 3]);
        assert_eq!(h.recorder.wait_for_offsets(&second, 2).await, vec![1, 2]);

        h.engine
            .presence
            .add_presence(&first, client("alice", "c1"))
            .await
            .expect("add");
        assert!(
            h.engine
                .presence
                .presence(&second)
                .await
                .expect("presence")
                .is_empty()
        );
    }
    pub(crate) async fn idempotent_publishes_are_published_once(h: Harness) {
        let channel = h.channel("idempotent").await;
        let once = |key: &str, window: u64| PublishOptions {
            history: Some(keep(10)),
            idempotency: Some(Idempotency {
                key: key.to_owned(),
                window: Duration::from_secs(window),
            }),
        };
        let broker = &h.engine.broker;
        let first = broker
            .publish(&channel, publication("a"), &once("k1", 60))
            .await
            .expect("publish");
        let repeat = broker
            .publish(&channel, publication("a again"), &once("k1", 60))
            .await
            .expect("repeat");
        assert_eq!(repeat, first, "a repeat answers the first position");
        let other = broker
            .publish(&channel, publication("b"), &once("k2", 60))
            .await
            .expect("publish");
        assert_eq!(other.offset, 2, "another key is another publication");
        assert_eq!(
            h.history_offsets(&channel, HistoryFilter::default(), &keep(10))
                .await,
            vec![1, 2],
            "the repeat was not stored"
        );
        assert_eq!(h.recorder.wait_for_offsets(&channel, 2).await, vec![1, 2]);

        let without_history = |key: &str| PublishOptions {
            history: None,
            ..once(key, 60)
        };
        let plain = h.channel("idempotent-no-history").await;
        for _ in 0..2 {
            broker
                .publish(&plain, publication("x"), &without_history("k3"))
                .await
                .expect("publish");
        }
        broker
            .publish(&plain, publication("y"), &without_history("k4"))
            .await
            .expect("publish");
        let delivered: Vec<Bytes> = h
            .recorder
            .wait_for(&plain, 2)
            .await
            .into_iter()
            .filter_map(|event| match event {
                Event::Publication { data, .. } => Some(data),
                _ => None,
            })
            .collect();
        assert_eq!(
            delivered[..2],
            [Bytes::from_static(b"x"), Bytes::from_static(b"y")],
            "the repeat was not delivered"
        );
    }

    pub(crate) async fn shared_state_is_kept_by_scope_and_key(h: Harness) {
        let state = &h.engine.state;
        let (scope, other) = (h.scope("a"), h.scope("b"));
        assert_eq!(state.state_get(&scope, "k").await.expect("get"), None);
        state
            .state_set(&scope, "k", b"v1".to_vec(), Duration::ZERO)
            .await
            .expect("set");
        state
            .state_set(&other, "k", b"other".to_vec(), Duration::ZERO)
            .await
            .expect("set");
        assert_eq!(
            state.state_get(&scope, "k").await.expect("get"),
            Some(b"v1".to_vec())
        );
        state
            .state_set(&scope, "k", vec![0, 255, 10], Duration::ZERO)
            .await
            .expect("replace");
        assert_eq!(
            state.state_get(&scope, "k").await.expect("get"),
            Some(vec![0, 255, 10]),
            "values are bytes, not text"
        );
        assert!(state.state_delete(&scope, "k").await.expect("delete"));
        assert!(!state.state_delete(&scope, "k").await.expect("delete"));
        assert_eq!(state.state_get(&scope, "k").await.expect("get"), None);
        assert_eq!(
            state.state_get(&other, "k").await.expect("get"),
            Some(b"other".to_vec()),
            "another scope's entry of the same key is its own"
        );
    }

    pub(crate) async fn shared_state_increments_are_atomic_and_saturate(h: Harness) {
        let state = h.engine.state.clone();
        let scope = h.scope("n");
        let incrs = (0..40).map(|_| {
            let (state, scope) = (state.clone(), scope.clone());
            tokio::spawn(async move {
                state
                    .state_incr(&scope, "count", 1, Duration::ZERO)
                    .await
                    .expect("incr")
            })
        });
        let mut sums: Vec<i64> = futures_util::future::join_all(incrs)
            .await
            .into_iter()
            .map(|sum| sum.expect("task"))
            .collect();
        sums.sort_unstable();
        assert_eq!(sums, (1..=40).collect::<Vec<_>>(), "each saw its own sum");
        assert_eq!(
            state.state_get(&scope, "count").await.expect("get"),
            Some(b"40".to_vec())
        );
        assert_eq!(
            state
                .state_incr(&scope, "count", -50, Duration::ZERO)
                .await
                .expect("incr"),
            -10
        );
        state
            .state_set(&scope, "text", b"not a number".to_vec(), Duration::ZERO)
            .await
            .expect("set");
        assert_eq!(
            state
                .state_incr(&scope, "text", 3, Duration::ZERO)
                .await
                .expect("incr"),
            3,
            "not a number counts as 0"
        );
        for (start, delta, saturated) in [(i64::MAX - 1, 5, i64::MAX), (i64::MIN + 1, -5, i64::MIN)]
        {
            state
                .state_set(
                    &scope,
                    "edge",
                    start.to_string().into_bytes(),
                    Duration::ZERO,
                )
                .await
                .expect("set");
            assert_eq!(
                state
                    .state_incr(&scope, "edge", delta, Duration::ZERO)
                    .await
                    .expect("incr"),
                saturated
            );
            assert_eq!(
                state.state_get(&scope, "edge").await.expect("get"),
                Some(saturated.to_string().into_bytes())
            );
        }
    }

    /// Entries expire after their TTL; an increment keeps the expiry the entry was created with. Engines
    /// that expire by their own clock (Redis) are polled until they have, so this case takes the TTL.
    pub(crate) async fn shared_state_entries_expire(h: Harness) {
        const TTL: Duration = Duration::from_millis(300);
        let state = &h.engine.state;
        let scope = h.scope("ttl");
        state
            .state_set(&scope, "set", b"v".to_vec(), TTL)
            .await
            .expect("set");
        state
            .state_set(&scope, "forever", b"v".to_vec(), Duration::ZERO)
            .await
            .expect("set");
        assert_eq!(
            state
                .state_incr(&scope, "window", 1, TTL)
                .await
                .expect("incr"),
            1
        );
        assert_eq!(
            state
                .state_incr(&scope, "window", 1, Duration::ZERO)
                .await
                .expect("incr"),
            2,
            "a later increment with no TTL"
        );
        assert!(state.state_get(&scope, "set").await.expect("get").is_some());
        h.clock.advance(TTL).await;
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        loop {
            let set = state.state_get(&scope, "set").await.expect("get");
            let window = state.state_get(&scope, "window").await.expect("get");
            if set.is_none() && window.is_none() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "still there after their TTL: {set:?} {window:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            state.state_get(&scope, "forever").await.expect("get"),
            Some(b"v".to_vec())
        );
        assert_eq!(
            state
                .state_incr(&scope, "window", 1, TTL)
                .await
                .expect("incr"),
            1,
            "a new window"
        );
    }
}

#[cfg(test)]
mod memory_conformance {
    use std::sync::Arc;

    use super::{ManualClock, TestClock};
    use crate::engine::memory::MemoryEngine;
    use crate::engine::{BrokerEventHandler, Engine};

    /// `Engine::memory`, but reading a manual clock so time-dependent cases need no sleeping.
    async fn memory_engine(handler: Arc<dyn BrokerEventHandler>) -> (Engine, Arc<dyn TestClock>) {
        let clock = Arc::new(ManualClock::new());
        let reader = clock.clone();
        let engine = Arc::new(MemoryEngine::with_clock(
            handler,
            Arc::new(move || reader.now()),
        ));
        (
            Engine {
                broker: engine.clone(),
                history: engine.clone(),
                presence: engine,
                state: Arc::new(crate::engine::keyvalue::Stores::new(Default::default())),
                shared: false,
            },
            clock,
        )
    }

    super::engine_conformance_tests!(memory_engine);
}
