//! The hub: this node's registry of sessions and of who is subscribed to which channel, and the fan-out of
//! what the engine delivers.
//!
//! A publication is encoded once and the same [`Frame`] handed to every subscriber's bounded queue; the hub
//! never waits on a client and never awaits while holding one of its locks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use indexmap::IndexMap;
use tokio::sync::Notify;

use crate::channel::ChannelOverrides;
use crate::disconnect::Disconnect;
use crate::engine::{BrokerEventHandler, ClientInfo, Publication, StreamPosition};
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::protocol::{EXCLUDE_TAG, Frame, Protocol};
use crate::sync::{lock, read, write};

const SHARDS: usize = 64;

/// How many subscribers ahead of the one being delivered to the fan-out touches (see [`Subscriber::warm`]).
const WARM_AHEAD: usize = 4;

/// A fan-out starting sooner than this after the previous one ended is part of a stream of publications.
const BACK_TO_BACK: Duration = Duration::from_millis(1);

/// The pace of fan-outs, which decides how a fan-out hands frames to connections. An isolated fan-out
/// writes into idle sockets directly: no writer task is woken on the way, which is what a publication's
/// latency is made of. Fan-outs that follow each other back to back (a stream of publications, or many
/// channels publishing at once) queue for the connections' writers instead: by the time a writer runs,
/// the frames of several publications are waiting, and they leave in one write rather than one system
/// call per frame, which is what the throughput of a busy server is made of.
#[derive(Debug)]
struct Pace {
    origin: Instant,
    /// When the last fan-out ended, in nanoseconds since `origin`.
    last_end: AtomicU64,
}

impl Pace {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_end: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether a fan-out starting at `now` is isolated (may write directly).
    fn isolated_at(&self, now: u64) -> bool {
        let since = now.saturating_sub(self.last_end.load(Ordering::Relaxed));
        since >= BACK_TO_BACK.as_nanos() as u64
    }

    /// Records the end of a fan-out at `now`.
    fn ended_at(&self, now: u64) {
        self.last_end.store(now, Ordering::Relaxed);
    }
}

/// Work another part of the server asks a session to do (the server API's subscribe, unsubscribe, refresh).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCommand {
    /// Subscribe the connection to a channel server-side.
    Subscribe(ServerSubscribe),
    /// Change when the connection expires: `expired` ends it now (`3005`), otherwise it expires at
    /// `expire_at` (unix seconds), or never when that is absent.
    Refresh {
        /// End the connection as expired now.
        expired: bool,
        /// When it expires, unix seconds.
        expire_at: Option<u64>,
    },
    /// Unsubscribe the connection from a channel, telling the client with a push.
    Unsubscribe {
        /// The channel.
        channel: String,
    },
    /// The subscription's live stream has a gap (a publication was lost between nodes, or the stream was
    /// recreated): end it with "insufficient state" so the client resubscribes and recovers.
    Resubscribe {
        /// The channel.
        channel: String,
    },
}

/// A server-side subscription the server asks for (the server API's `subscribe`, a connect plugin's
/// channels).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ServerSubscribe {
    /// The channel.
    pub channel: String,
    /// Channel info for this connection (compact JSON), shown in presence and join/leave.
    pub info: Option<String>,
    /// Data for the client's `subscribe` push (compact JSON).
    pub data: Option<String>,
    /// Recover from this position (when the subscription is recoverable).
    pub recover_since: Option<StreamPosition>,
    /// The namespace's options changed for this subscription.
    #[serde(rename = "override")]
    pub overrides: ChannelOverrides,
}

/// Commands waiting for one session. Allocates nothing until a command arrives: every idle connection has
/// one, and tokio's unbounded channel would allocate a block of slots (~1.5 KB) up front.
#[derive(Debug, Default)]
struct CommandQueue {
    waiting: Mutex<VecDeque<SessionCommand>>,
    arrived: Notify,
    receiver_gone: AtomicBool,
}

/// The session's end of its command queue.
#[derive(Debug)]
pub struct CommandReceiver {
    queue: Arc<CommandQueue>,
}

impl CommandReceiver {
    /// The next command, once there is one.
    pub async fn recv(&mut self) -> SessionCommand {
        loop {
            if let Some(command) = self.try_recv() {
                return command;
            }
            // `notify_one` keeps a permit when nobody waits, so a command queued between the look above and
            // this wait is not missed.
            self.queue.arrived.notified().await;
        }
    }

    /// The next command if one is waiting.
    pub fn try_recv(&mut self) -> Option<SessionCommand> {
        lock(&self.queue.waiting).pop_front()
    }
}

impl Drop for CommandReceiver {
    fn drop(&mut self) {
        self.queue.receiver_gone.store(true, Ordering::Release);
        lock(&self.queue.waiting).clear();
    }
}

/// A connection's id. Shared, not copied: the session, its handle and every hub map that files the
/// connection (by user, by channel) hold the same allocation, which an idle connection pays once.
pub type ClientId = Arc<str>;

/// What the rest of the server may do to a session: queue frames, close it, or send it a command.
#[derive(Debug)]
pub struct SessionHandle {
    /// Connection id.
    pub client: ClientId,
    /// User id ("" for anonymous).
    pub user: String,
    /// The connection's outbound queue.
    pub outbound: Arc<Outbound>,
    commands: Arc<CommandQueue>,
}

impl SessionHandle {
    /// A handle and the receiving end of its command queue (kept by the session).
    pub fn new(
        client: ClientId,
        user: String,
        outbound: Arc<Outbound>,
    ) -> (Arc<Self>, CommandReceiver) {
        let commands = Arc::new(CommandQueue::default());
        let receiver = CommandReceiver {
            queue: commands.clone(),
        };
        (
            Arc::new(Self {
                client,
                user,
                outbound,
                commands,
            }),
            receiver,
        )
    }

    /// The same session under another user (a Pusher connection that signed in): same connection, queue
    /// and commands. Subscriptions made before keep the old handle, which reaches the same session.
    pub fn with_user(&self, user: String) -> Arc<Self> {
        Arc::new(Self {
            client: self.client.clone(),
            user,
            outbound: self.outbound.clone(),
            commands: self.commands.clone(),
        })
    }

    /// Sends a command; false when the session is gone.
    pub fn command(&self, command: SessionCommand) -> bool {
        if self.commands.receiver_gone.load(Ordering::Acquire) {
            return false;
        }
        lock(&self.commands.waiting).push_back(command);
        self.commands.arrived.notify_one();
        true
    }

    /// Closes the connection.
    pub fn disconnect(&self, disconnect: Disconnect) {
        self.outbound.close(disconnect);
    }
}

/// Holds back live frames while a subscribe is being answered, so the reply goes first and nothing is
/// delivered twice or lost (publications racing the subscribe are either in the reply or sent after it).
///
/// For a positioned subscription it also follows the stream: each publication must be the next offset of
/// the same epoch. Anything else is a gap ([`Delivery::Gap`]), reported once; the gate then delivers
/// nothing more of the stream until the subscription is replaced.
#[derive(Debug)]
pub struct DeliveryGate {
    live: AtomicBool,
    held: Mutex<Held>,
    stream: Mutex<Followed>,
    /// Set once at open for positioned subscriptions, so deliveries to the others skip the stream lock.
    follows: AtomicBool,
    /// For a subscription with delta compression: the hub's number of the last publication it was
    /// handed (0: none), the one the next delta must start from.
    delta_base: AtomicU64,
}

#[derive(Debug, Default)]
struct Held {
    frames: Vec<(StreamPosition, Frame)>,
    bytes: usize,
}

/// Where a positioned subscriber is in its stream.
#[derive(Debug, Default)]
struct Followed {
    /// The epoch followed; `None` for subscriptions that are not positioned.
    epoch: Option<String>,
    /// The last offset delivered (or covered by the subscribe reply).
    last: u64,
    /// A stream top reported ahead of `last` by the previous position report.
    reported_ahead: Option<u64>,
    /// A gap was found and reported.
    broken: bool,
}

impl Followed {
    /// Whether the frame of a publication at `position` goes out; sets `broken` on a gap.
    fn admit(&mut self, position: &StreamPosition) -> Admit {
        let Some(epoch) = &self.epoch else {
            return Admit::Send;
        };
        if position.offset == 0 {
            return Admit::Send;
        }
        if self.broken {
            return Admit::Drop;
        }
        if *epoch != position.epoch || position.offset > self.last + 1 {
            self.broken = true;
            return Admit::Gap;
        }
        if position.offset <= self.last {
            return Admit::Drop;
        }
        self.last = position.offset;
        Admit::Send
    }
}

enum Admit {
    Send,
    Drop,
    Gap,
}

/// What became of a frame handed to a gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Delivery {
    /// Queued, held, or dropped as a duplicate.
    Done,
    /// The subscriber's stream has a gap: it must resubscribe to recover.
    Gap,
}

impl DeliveryGate {
    /// A closed gate: frames are held until [`DeliveryGate::open`].
    pub fn held() -> Self {
        Self {
            live: AtomicBool::new(false),
            held: Mutex::new(Held::default()),
            stream: Mutex::new(Followed::default()),
            follows: AtomicBool::new(false),
            delta_base: AtomicU64::new(0),
        }
    }

    /// Hands a frame to the subscriber's queue; `direct` lets it be written into the socket at once.
    fn deliver(
        &self,
        position: &StreamPosition,
        frame: &Frame,
        outbound: &Outbound,
        direct: bool,
    ) -> Delivery {
        let send = |frame: &Frame| {
            if direct {
                outbound.push_shared(frame)
            } else {
                outbound.push_queued(frame.clone())
            }
        };
        if !self.live.load(Ordering::Acquire) {
            let mut held = lock(&self.held);
            if !self.live.load(Ordering::Acquire) {
                held.bytes += frame.len();
                held.frames.push((position.clone(), frame.clone()));
                if held.bytes > outbound.max_bytes() {
                    held.frames.clear();
                    outbound.close(Disconnect::SLOW);
                }
                return Delivery::Done;
            }
        }
        if !self.follows.load(Ordering::Acquire) {
            send(frame);
            return Delivery::Done;
        }
        match lock(&self.stream).admit(position) {
            Admit::Send => {
                send(frame);
                Delivery::Done
            }
            Admit::Drop => Delivery::Done,
            Admit::Gap => Delivery::Gap,
        }
    }

    /// Queues the reply (one frame, or several where a protocol answers with more: a Pusher cache channel's
    /// last event follows its confirmation), then the held frames the reply did not cover, then lets
    /// frames flow directly. `covered` is the stream position the reply brings the client to: for a
    /// positioned subscription the gate follows the stream from there; `None` for subscriptions that are
    /// not positioned, whose held frames all follow.
    pub fn open(
        &self,
        outbound: &Outbound,
        reply: impl IntoIterator<Item = Frame>,
        covered: Option<StreamPosition>,
    ) -> Delivery {
        let mut held = lock(&self.held);
        let mut stream = lock(&self.stream);
        for frame in reply {
            outbound.push(frame);
        }
        let mut delivery = Delivery::Done;
        match covered {
            Some(position) => {
                stream.epoch = Some(position.epoch);
                self.follows.store(true, Ordering::Release);
                stream.last = position.offset;
                for (position, frame) in held.frames.drain(..) {
                    match stream.admit(&position) {
                        Admit::Send => {
                            outbound.push(frame);
                        }
                        Admit::Drop => {}
                        Admit::Gap => delivery = Delivery::Gap,
                    }
                }
            }
            None => {
                for (_, frame) in held.frames.drain(..) {
                    outbound.push(frame);
                }
            }
        }
        held.bytes = 0;
        self.live.store(true, Ordering::Release);
        delivery
    }

    /// A report that the stream has reached at least `top` (see
    /// [`BrokerEventHandler::handle_position`]): a gap when the epoch changed, or when the previous report
    /// was already ahead of what has been delivered since.
    fn check_position(&self, top: &StreamPosition) -> Delivery {
        if !self.live.load(Ordering::Acquire) {
            return Delivery::Done;
        }
        let mut stream = lock(&self.stream);
        let Some(epoch) = &stream.epoch else {
            return Delivery::Done;
        };
        if stream.broken {
            return Delivery::Done;
        }
        let lost = *epoch != top.epoch
            || stream
                .reported_ahead
                .is_some_and(|ahead| stream.last < ahead);
        if lost {
            stream.broken = true;
            return Delivery::Gap;
        }
        stream.reported_ahead = (top.offset > stream.last).then_some(top.offset);
        Delivery::Done
    }
}

/// One connection's subscription as the hub sees it.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// The session.
    pub session: Arc<SessionHandle>,
    /// The session's outbound queue, held here too so that a delivery reaches it without a stop at the
    /// session's handle: one cache line fewer per subscriber of a fan-out.
    pub outbound: Arc<Outbound>,
    /// The protocol its connection speaks, which decides the encoding it receives.
    pub protocol: Protocol,
    /// Whether it wants join/leave pushes.
    pub join_leave: bool,
    /// Holds frames while its subscribe is answered.
    pub gate: Arc<DeliveryGate>,
    /// The channel policy admitted it: no entrance registers a subscriber without asking.
    pub admitted: crate::policy::Grant,
    /// It negotiated delta compression: publications reach it as deltas where that is smaller.
    pub delta: bool,
}

impl Subscriber {
    /// Loads what a delivery to this subscriber reads first (its gate's state and its queue's lock), so
    /// that it is in the cache when the fan-out gets there.
    fn warm(&self) {
        std::hint::black_box(self.gate.live.load(Ordering::Relaxed));
        self.outbound.warm();
    }
}

/// Where a channel's publications stand for its subscribers with delta compression, on this node.
#[derive(Debug, Default)]
struct DeltaBase {
    /// Subscribers with delta compression; the base is dropped with the last.
    subscribers: usize,
    /// The number of the last publication (counted from the first delta subscriber on).
    number: u64,
    /// Its data: what the next delta starts from.
    data: Option<Bytes>,
}

/// One publication's place in its channel's delta chain.
#[derive(Debug)]
struct DeltaStep {
    /// The previous publication's number and data.
    previous: (u64, Option<Bytes>),
    /// This publication's number.
    number: u64,
}

/// Which form of a publication a subscriber gets.
#[derive(Debug, Clone, Copy)]
enum Form {
    /// The plain frame.
    Plain,
    /// Full, as a subscription with delta compression expects it.
    DeltaFull,
    /// A delta from the previous publication.
    Delta,
}

/// Subscribers by channel, then by client id, for the channels of one shard. A channel's subscribers are
/// kept in the order they subscribed (a departure moves the last one into its place), not in hash order:
/// a fan-out then writes to the sockets roughly in the order the kernel allocated them, which measured
/// 8–16 % cheaper per write than a random order for 5,000 connections (see BENCHMARKS.md).
type ChannelShard = HashMap<String, Subscribers>;

/// One channel's subscribers on this node.
type Subscribers = IndexMap<ClientId, Subscriber>;

/// Sessions and subscriptions of this node.
#[derive(Debug)]
pub struct Hub {
    channels: Box<[RwLock<ChannelShard>]>,
    sessions: RwLock<HashMap<ClientId, Arc<SessionHandle>>>,
    /// Client ids by user. A set, not a list: every anonymous connection shares the user "", and a mass
    /// disconnect of N of them must not cost N² comparisons.
    users: RwLock<HashMap<String, HashSet<ClientId>>>,
    hasher: RandomState,
    pace: Pace,
    counts: HubMetrics,
    /// Channels with subscribers that use delta compression (rarely many: one lock will do).
    delta_bases: Mutex<HashMap<String, DeltaBase>>,
    /// How many entries `delta_bases` has, so channels without delta compression never take its lock.
    delta_channels: AtomicUsize,
}

/// What the hub counts: resolved once, so a fan-out adds to atomics and takes no lock for it.
#[derive(Debug)]
struct HubMetrics {
    deliveries: [prometheus::IntCounter; Protocol::COUNT],
    fanout_duration: prometheus::Histogram,
    stream_gaps: prometheus::IntCounter,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts for the `info` API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Connected sessions.
    pub clients: usize,
    /// Distinct users among them.
    pub users: usize,
    /// Channels with at least one subscriber.
    pub channels: usize,
    /// Subscriptions.
    pub subscriptions: usize,
}

impl Hub {
    /// An empty hub counting into instruments of its own (tests).
    pub fn new() -> Self {
        Self::with_metrics(&Metrics::default())
    }

    /// An empty hub counting into `metrics`.
    pub fn with_metrics(metrics: &Metrics) -> Self {
        Self {
            channels: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            sessions: RwLock::new(HashMap::new()),
            users: RwLock::new(HashMap::new()),
            hasher: RandomState::new(),
            pace: Pace::new(),
            delta_bases: Mutex::new(HashMap::new()),
            delta_channels: AtomicUsize::new(0),
            counts: HubMetrics {
                deliveries: Protocol::ALL.map(|protocol| metrics.deliveries(protocol.label())),
                fanout_duration: metrics.fanout_duration.clone(),
                stream_gaps: metrics.stream_gaps.clone(),
            },
        }
    }

    fn shard(&self, channel: &str) -> &RwLock<ChannelShard> {
        &self.channels[(self.hasher.hash_one(channel) as usize) % SHARDS]
    }

    /// Registers a connected session.
    pub fn register(&self, session: Arc<SessionHandle>) {
        write(&self.users)
            .entry(session.user.clone())
            .or_default()
            .insert(session.client.clone());
        write(&self.sessions).insert(session.client.clone(), session);
    }

    /// Forgets a session (its subscriptions must have been removed first).
    pub fn unregister(&self, client: &str, user: &str) {
        write(&self.sessions).remove(client);
        let mut users = write(&self.users);
        if let Some(clients) = users.get_mut(user) {
            clients.remove(client);
            if clients.is_empty() {
                users.remove(user);
            }
        }
    }

    /// Sessions of a user, or the one session with that client id (when the user matches).
    pub fn sessions(&self, user: &str, client: Option<&str>) -> Vec<Arc<SessionHandle>> {
        let sessions = read(&self.sessions);
        match client {
            Some(client) => sessions
                .get(client)
                .filter(|s| s.user == user)
                .cloned()
                .into_iter()
                .collect(),
            None => read(&self.users)
                .get(user)
                .map(|clients| {
                    clients
                        .iter()
                        .filter_map(|c| sessions.get(c).cloned())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Every session (for shutdown and stats).
    pub fn all_sessions(&self) -> Vec<Arc<SessionHandle>> {
        read(&self.sessions).values().cloned().collect()
    }

    /// Bytes waiting in every session's outbound queue (for metrics), summed in place rather than over a
    /// copy of the session list.
    pub fn outbound_queue_bytes(&self) -> u64 {
        read(&self.sessions)
            .values()
            .map(|session| session.outbound.queued_bytes() as u64)
            .sum()
    }

    /// Adds a subscriber; true when it is the channel's first on this node.
    pub fn subscribe(&self, channel: &str, subscriber: Subscriber) -> bool {
        let mut shard = write(self.shard(channel));
        let subscribers = shard.entry(channel.to_owned()).or_default();
        let first = subscribers.is_empty();
        if subscriber.delta {
            let mut bases = lock(&self.delta_bases);
            let base = bases.entry(channel.to_owned()).or_insert_with(|| {
                self.delta_channels.fetch_add(1, Ordering::Relaxed);
                DeltaBase::default()
            });
            base.subscribers += 1;
        }
        let replaced = subscribers.insert(subscriber.session.client.clone(), subscriber);
        if let Some(replaced) = replaced {
            self.leave_delta(channel, &replaced);
        }
        first
    }

    /// A subscriber with delta compression left `channel`: the channel's base goes with the last one.
    fn leave_delta(&self, channel: &str, subscriber: &Subscriber) {
        if !subscriber.delta {
            return;
        }
        let mut bases = lock(&self.delta_bases);
        if let Some(base) = bases.get_mut(channel) {
            base.subscribers -= 1;
            if base.subscribers == 0 {
                bases.remove(channel);
                self.delta_channels.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Moves `channel`'s delta chain on to `publication`; `None` when no subscriber uses deltas there.
    fn delta_step(&self, channel: &str, publication: &Publication) -> Option<DeltaStep> {
        if self.delta_channels.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut bases = lock(&self.delta_bases);
        let base = bases.get_mut(channel)?;
        let previous = (base.number, base.data.replace(publication.data.clone()));
        base.number += 1;
        Some(DeltaStep {
            previous,
            number: base.number,
        })
    }

    /// Removes a subscriber; true when the channel has no subscriber left on this node.
    pub fn unsubscribe(&self, channel: &str, client: &str) -> bool {
        let mut shard = write(self.shard(channel));
        let Some(subscribers) = shard.get_mut(channel) else {
            return false;
        };
        let Some(removed) = subscribers.swap_remove(client) else {
            return false;
        };
        self.leave_delta(channel, &removed);
        let last = subscribers.is_empty();
        if last {
            shard.remove(channel);
        }
        last
    }

    /// Channels with subscribers on this node and how many.
    pub fn channels(&self) -> Vec<(String, usize)> {
        self.channels
            .iter()
            .flat_map(|shard| {
                read(shard)
                    .iter()
                    .map(|(name, subs)| (name.clone(), subs.len()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// How many of this node's connections are subscribed to `channel`.
    pub fn subscriber_count(&self, channel: &str) -> usize {
        read(self.shard(channel))
            .get(channel)
            .map_or(0, IndexMap::len)
    }

    /// Counts for the `info` API.
    pub fn stats(&self) -> HubStats {
        let (channels, subscriptions) = self.channels.iter().fold((0, 0), |(c, s), shard| {
            let shard = read(shard);
            (
                c + shard.len(),
                s + shard.values().map(IndexMap::len).sum::<usize>(),
            )
        });
        HubStats {
            clients: read(&self.sessions).len(),
            users: read(&self.users).len(),
            channels,
            subscriptions,
        }
    }

    /// Hands `frame` to the channel's subscribers that speak `protocol` (a protocol's own channel event),
    /// in order with their publications.
    pub fn notify(&self, channel: &str, protocol: Protocol, frame: Frame) {
        self.broadcast(
            channel,
            &StreamPosition::default(),
            |_, _| frame.clone(),
            false,
            |subscriber| subscriber.protocol != protocol || subscriber.delta,
            None,
        );
    }

    /// Hands every subscriber of `channel` its protocol's frame, encoded at most once per protocol.
    /// Subscribers for which `skip` holds get nothing (Pusher's `socket_id` exclusion, a Pusher member's
    /// own presence events).
    fn broadcast(
        &self,
        channel: &str,
        position: &StreamPosition,
        encode: impl Fn(Protocol, Form) -> Frame,
        only_join_leave: bool,
        skip: impl Fn(&Subscriber) -> bool,
        delta: Option<&DeltaStep>,
    ) {
        let shard = read(self.shard(channel));
        let Some(subscribers) = shard.get(channel) else {
            return;
        };
        let started = self.pace.now();
        let direct = self.pace.isolated_at(started);
        let mut frames: [Option<Frame>; Protocol::COUNT * 3] = Default::default();
        let mut delivered = [0u64; Protocol::COUNT];
        // Thousands of subscribers' state is cold by the time a publication reaches them: touching the
        // next ones' gate and queue early lets those memory loads overlap the current one's socket write
        // instead of stalling the loop one after the other.
        let mut ahead = subscribers.values().skip(WARM_AHEAD);
        for subscriber in subscribers.values() {
            if let Some(next) = ahead.next() {
                next.warm();
            }
            if only_join_leave && !subscriber.join_leave {
                continue;
            }
            if skip(subscriber) {
                continue;
            }
            let protocol = subscriber.protocol;
            // Joins and leaves are the same for every subscriber and leave the delta chain alone.
            let form = if subscriber.delta && !only_join_leave {
                let number = delta.map_or(0, |step| step.number);
                let base = subscriber.gate.delta_base.swap(number, Ordering::Relaxed);
                match delta {
                    Some(DeltaStep {
                        previous: (previous, Some(_)),
                        ..
                    }) if *previous == base => Form::Delta,
                    _ => Form::DeltaFull,
                }
            } else {
                Form::Plain
            };
            let frame = frames[protocol.index() * 3 + form as usize]
                .get_or_insert_with(|| encode(protocol, form));
            delivered[protocol.index()] += 1;
            let delivery = subscriber
                .gate
                .deliver(position, frame, &subscriber.outbound, direct);
            if delivery == Delivery::Gap {
                self.gap(channel, subscriber);
            }
        }
        let ended = self.pace.now();
        self.pace.ended_at(ended);
        for (counter, count) in self.counts.deliveries.iter().zip(delivered) {
            if count > 0 {
                counter.inc_by(count);
            }
        }
        self.counts
            .fanout_duration
            .observe(Duration::from_nanos(ended.saturating_sub(started)).as_secs_f64());
    }

    /// A subscriber's stream has a gap: counted, and the subscriber resubscribes to recover.
    fn gap(&self, channel: &str, subscriber: &Subscriber) {
        self.counts.stream_gaps.inc();
        resubscribe(channel, subscriber);
    }
}

/// Whether a join or leave is the subscriber's own, which its protocol does not tell it about.
fn unheard_own_presence(subscriber: &Subscriber, info: &ClientInfo) -> bool {
    *subscriber.session.client == *info.client && !subscriber.protocol.wire().hears_own_presence()
}

/// Asks a subscriber whose stream has a gap to resubscribe (and so recover).
pub fn resubscribe(channel: &str, subscriber: &Subscriber) {
    tracing::info!(
        channel,
        client = %subscriber.session.client,
        "publications were lost on the way; the subscriber resubscribes to recover"
    );
    subscriber.session.command(SessionCommand::Resubscribe {
        channel: channel.to_owned(),
    });
}

impl BrokerEventHandler for Hub {
    fn handle_publication(
        &self,
        channel: &str,
        publication: Arc<Publication>,
        position: StreamPosition,
    ) {
        let position = StreamPosition {
            offset: publication.offset,
            epoch: position.epoch,
        };
        // Looked up once, not per subscriber: fan-out loops over thousands.
        let excluded = publication.tags.get(EXCLUDE_TAG);
        let step = self.delta_step(channel, &publication);
        // Computed once, by the first subscriber that can take it; none when it would not be smaller
        // (or not UTF-8, which the JSON form needs).
        let delta = std::sync::OnceLock::new();
        let delta = |previous: &Bytes| {
            delta
                .get_or_init(|| {
                    let delta = fossil_delta::delta(&publication.data, previous);
                    String::from_utf8(delta)
                        .ok()
                        .filter(|delta| delta.len() < publication.data.len())
                })
                .clone()
        };
        self.broadcast(
            channel,
            &position,
            |protocol, form| {
                let wire = protocol.wire();
                match (form, &step) {
                    (Form::Plain, _) => wire.publication(channel, &publication),
                    (
                        Form::Delta,
                        Some(DeltaStep {
                            previous: (_, Some(previous)),
                            ..
                        }),
                    ) => wire.delta_publication(channel, &publication, delta(previous).as_deref()),
                    _ => wire.delta_publication(channel, &publication, None),
                }
            },
            false,
            |subscriber| excluded.is_some_and(|excluded| **excluded == *subscriber.session.client),
            step.as_ref(),
        );
    }

    /// A join, in each protocol's form, to the subscribers that asked for joins and leaves.
    fn handle_join(&self, channel: &str, info: Arc<ClientInfo>) {
        let unpositioned = StreamPosition::default();
        self.broadcast(
            channel,
            &unpositioned,
            |protocol, _| protocol.wire().join(channel, &info),
            true,
            |subscriber| unheard_own_presence(subscriber, &info),
            None,
        );
    }

    /// A leave, as for joins.
    fn handle_leave(&self, channel: &str, info: Arc<ClientInfo>) {
        let unpositioned = StreamPosition::default();
        self.broadcast(
            channel,
            &unpositioned,
            |protocol, _| protocol.wire().leave(channel, &info),
            true,
            |subscriber| unheard_own_presence(subscriber, &info),
            None,
        );
    }

    fn handle_position(&self, channel: &str, position: StreamPosition) {
        let shard = read(self.shard(channel));
        let Some(subscribers) = shard.get(channel) else {
            return;
        };
        for subscriber in subscribers.values() {
            if subscriber.gate.check_position(&position) == Delivery::Gap {
                self.gap(channel, subscriber);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::Outgoing;
    use crate::protocol::pusher::codec as pusher;
    use bytes::Bytes;

    fn session(client: &str, user: &str) -> Arc<SessionHandle> {
        SessionHandle::new(client.into(), user.into(), Arc::new(Outbound::new(1 << 20))).0
    }

    fn subscriber(session: &Arc<SessionHandle>, join_leave: bool, live: bool) -> Subscriber {
        let gate = Arc::new(DeliveryGate::held());
        if live {
            let opened = gate.open(&session.outbound, [Frame::from_static("reply")], None);
            assert_eq!(opened, Delivery::Done);
        }
        Subscriber {
            protocol: Protocol::Centrifuge,
            session: session.clone(),
            outbound: session.outbound.clone(),
            join_leave,
            gate,
            admitted: crate::policy::Grant::server(),
            delta: false,
        }
    }

    async fn texts(session: &SessionHandle) -> Vec<String> {
        session
            .outbound
            .next_batch()
            .await
            .items
            .into_iter()
            .map(|o| match o {
                Outgoing::Frame(f) => String::from_utf8(f.bytes().to_vec()).unwrap(),
                Outgoing::TransportPing => "ping".into(),
                Outgoing::Raw(_) => "raw".into(),
            })
            .collect()
    }

    fn publication(offset: u64) -> Arc<Publication> {
        Arc::new(Publication {
            offset,
            data: Bytes::from(offset.to_string()),
            ..Default::default()
        })
    }

    /// The delta chain: a subscriber with delta compression gets its first publication in full (as text),
    /// then deltas from the one before, which applied to what it has give each publication's data; one that
    /// joins later starts with a full one; a plain subscriber gets plain frames; a delta that is not
    /// smaller goes as the full publication. Each form is encoded once.
    #[tokio::test]
    async fn delta_subscribers_get_full_then_deltas() {
        let hub = Hub::new();
        let (early, plain, late) = (session("a", ""), session("b", ""), session("c", ""));
        let subscriber_with_delta = |session| {
            let mut sub = subscriber(session, false, true);
            sub.delta = true;
            sub
        };
        hub.subscribe("doc", subscriber_with_delta(&early));
        hub.subscribe("doc", subscriber(&plain, false, true));
        let document = |n: usize| format!(r#"{{"n":{n},"text":"{}"}}"#, "lorem ipsum ".repeat(20));
        let publish = |n: usize| {
            let publication = Arc::new(Publication {
                data: Bytes::from(document(n)),
                ..Default::default()
            });
            hub.handle_publication("doc", publication, StreamPosition::default());
        };
        publish(1);
        publish(2);
        hub.subscribe("doc", subscriber_with_delta(&late));
        publish(3);
        let parse = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
        let early = texts(&early).await;
        let late = texts(&late).await;
        let plain = texts(&plain).await;
        // Each batch starts with the gate's reply.
        let first = parse(&early[1])["push"]["pub"].clone();
        assert_eq!(
            first["data"],
            serde_json::Value::String(document(1)),
            "full, as text"
        );
        assert_eq!(first.get("delta"), None);
        let mut have = document(1).into_bytes();
        for (n, frame) in [(2, &early[2]), (3, &early[3])] {
            let publication = parse(frame)["push"]["pub"].clone();
            assert_eq!(publication["delta"], true, "{frame}");
            let delta = publication["data"].as_str().unwrap();
            assert!(delta.len() < document(n).len() / 4, "{delta}");
            have = fossil_delta::apply(&have, delta).unwrap();
            assert_eq!(String::from_utf8(have.clone()).unwrap(), document(n));
        }
        let joined_late = parse(&late[1])["push"]["pub"].clone();
        assert_eq!(joined_late["data"], serde_json::Value::String(document(3)));
        assert_eq!(
            parse(&plain[3])["push"]["pub"]["data"]["n"],
            3,
            "plain JSON"
        );

        // A join between two publications leaves the chain as it was: the next one is still a delta.
        let early_session = session_of(&hub, "a");
        hub.subscribe("doc", {
            let mut sub = subscriber_with_delta(&early_session);
            sub.join_leave = true;
            sub
        });
        publish(4);
        hub.handle_join("doc", Arc::new(ClientInfo::default()));
        publish(5);
        let after_join = texts(&early_session).await;
        let pushes: Vec<_> = after_join
            .iter()
            .filter(|text| text.contains("\"push\""))
            .map(|text| parse(text)["push"].clone())
            .collect();
        assert_eq!(pushes.len(), 3, "{after_join:?}");
        assert!(pushes[1].get("join").is_some(), "{after_join:?}");
        assert_eq!(pushes[2]["pub"]["delta"], true, "{after_join:?}");

        // A document unlike the one before: the delta would not be smaller, so it goes in full.
        let different = Arc::new(Publication {
            data: Bytes::from_static(br#"{"other":true}"#),
            ..Default::default()
        });
        hub.handle_publication("doc", different, StreamPosition::default());
        let next = texts(&session_of(&hub, "a")).await;
        let publication = parse(&next[0])["push"]["pub"].clone();
        assert_eq!(publication["data"], r#"{"other":true}"#);
        assert_eq!(publication.get("delta"), None);
    }

    /// A channel's subscribers are walked in the order they subscribed (the fan-out's writes then follow
    /// the kernel's allocation order); one that leaves hands its place to the last.
    #[test]
    fn a_channels_subscribers_keep_the_order_they_came_in() {
        let hub = Hub::new();
        let clients: Vec<String> = (0..100).map(|n| format!("client-{n}")).collect();
        for client in &clients {
            hub.subscribe("doc", subscriber(&session(client, ""), false, true));
        }
        hub.unsubscribe("doc", "client-10");
        let order: Vec<String> = read(hub.shard("doc"))["doc"]
            .keys()
            .map(ToString::to_string)
            .collect();
        let mut expected = clients.clone();
        expected.swap_remove(10);
        assert_eq!(order, expected);
    }

    /// The session handle registered in `hub`'s channel "doc" under `client`.
    fn session_of(hub: &Hub, client: &str) -> Arc<SessionHandle> {
        read(hub.shard("doc"))["doc"][client].session.clone()
    }

    /// Each protocol gets its own encoding, the excluded socket nothing, and a Pusher member never hears
    /// of its own joining; Centrifugo subscribers keep their join pushes.
    #[tokio::test]
    async fn each_protocol_gets_its_encoding_and_exclusions_hold() {
        let hub = Hub::new();
        let (centrifuge, pusher, excluded) =
            (session("c", ""), session("1.1", ""), session("2.2", ""));
        hub.subscribe("room", subscriber(&centrifuge, true, true));
        for session in [&pusher, &excluded] {
            let mut sub = subscriber(session, true, true);
            sub.protocol = Protocol::Pusher;
            hub.subscribe("room", sub);
        }
        let publication = Arc::new(Publication {
            data: Bytes::from_static(br#"{"n":1}"#),
            tags: [
                (pusher::EVENT_TAG.to_owned(), "moved".to_owned()),
                (pusher::EXCLUDE_TAG.to_owned(), "2.2".to_owned()),
            ]
            .into(),
            ..Default::default()
        });
        hub.handle_publication("room", publication, StreamPosition::default());
        let member = ClientInfo {
            user: "7".into(),
            client: "1.1".into(),
            ..Default::default()
        };
        hub.handle_join("room", Arc::new(member));
        let centrifuge_texts = texts(&centrifuge).await;
        assert_eq!(centrifuge_texts.len(), 3, "{centrifuge_texts:?}");
        assert!(centrifuge_texts[1].starts_with(r#"{"push":{"channel":"room","pub":"#));
        assert!(
            centrifuge_texts[2].contains(r#""join":"#),
            "{centrifuge_texts:?}"
        );
        assert_eq!(
            texts(&pusher).await,
            [
                "reply",
                r#"{"event":"moved","channel":"room","data":"{\"n\":1}"}"#
            ],
            "its own member_added is not sent to it"
        );
        let excluded_texts = texts(&excluded).await;
        assert_eq!(excluded_texts.len(), 2, "{excluded_texts:?}");
        assert!(
            excluded_texts[1].contains("pusher_internal:member_added"),
            "{excluded_texts:?}"
        );
    }

    #[tokio::test]
    async fn one_encoding_reaches_every_subscriber() {
        let hub = Hub::new();
        let (a, b) = (session("a", ""), session("b", ""));
        assert!(hub.subscribe("news", subscriber(&a, false, true)));
        assert!(!hub.subscribe("news", subscriber(&b, false, true)));
        hub.handle_publication("news", publication(1), StreamPosition::default());
        let expected = r#"{"push":{"channel":"news","pub":{"data":1,"offset":1}}}"#;
        assert_eq!(texts(&a).await, vec!["reply", expected]);
        assert_eq!(texts(&b).await, vec!["reply", expected]);
        assert!(!hub.unsubscribe("news", "a"));
        assert!(hub.unsubscribe("news", "b"));
        assert_eq!(hub.stats().channels, 0);
    }

    #[tokio::test]
    async fn held_frames_follow_the_reply_without_duplicates() {
        let hub = Hub::new();
        let a = session("a", "");
        let sub = subscriber(&a, false, false);
        hub.subscribe("news", sub.clone());
        for offset in 1..=3 {
            hub.handle_publication("news", publication(offset), StreamPosition::default());
        }
        // The reply already carried everything up to offset 2.
        let covered = StreamPosition {
            offset: 2,
            epoch: String::new(),
        };
        let opened = sub
            .gate
            .open(&a.outbound, [Frame::from_static("reply")], Some(covered));
        assert_eq!(opened, Delivery::Done);
        hub.handle_publication("news", publication(4), StreamPosition::default());
        let got = texts(&a).await;
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], "reply");
        assert!(got[1].contains("\"offset\":3"));
        assert!(got[2].contains("\"offset\":4"));
    }

    #[tokio::test]
    async fn join_leave_only_for_those_who_asked() {
        let hub = Hub::new();
        let (a, b) = (session("a", ""), session("b", ""));
        hub.subscribe("room", subscriber(&a, true, true));
        hub.subscribe("room", subscriber(&b, false, true));
        hub.handle_join(
            "room",
            Arc::new(ClientInfo {
                client: "x".into(),
                ..Default::default()
            }),
        );
        assert_eq!(texts(&a).await.len(), 2);
        assert_eq!(texts(&b).await, vec!["reply"]);
    }

    fn at(offset: u64, epoch: &str) -> StreamPosition {
        StreamPosition {
            offset,
            epoch: epoch.into(),
        }
    }

    /// A positioned subscriber of `news` at offset 1 of epoch `e1`, and its session's command receiver.
    fn positioned(hub: &Hub) -> (Arc<SessionHandle>, CommandReceiver) {
        let (handle, commands) =
            SessionHandle::new("p".into(), "".into(), Arc::new(Outbound::new(1 << 20)));
        let gate = Arc::new(DeliveryGate::held());
        let opened = gate.open(
            &handle.outbound,
            [Frame::from_static("reply")],
            Some(at(1, "e1")),
        );
        assert_eq!(opened, Delivery::Done);
        hub.subscribe(
            "news",
            Subscriber {
                protocol: Protocol::Centrifuge,
                session: handle.clone(),
                outbound: handle.outbound.clone(),
                join_leave: false,
                gate,
                admitted: crate::policy::Grant::server(),
                delta: false,
            },
        );
        (handle, commands)
    }

    fn publish(hub: &Hub, offset: u64, epoch: &str) {
        hub.handle_publication("news", publication(offset), at(offset, epoch));
    }

    fn resubscribe_news() -> SessionCommand {
        SessionCommand::Resubscribe {
            channel: "news".into(),
        }
    }

    #[tokio::test]
    async fn a_gap_in_the_live_stream_makes_the_subscriber_resubscribe() {
        let hub = Hub::new();
        let (handle, mut commands) = positioned(&hub);
        publish(&hub, 2, "e1");
        publish(&hub, 2, "e1");
        publish(&hub, 4, "e1");
        publish(&hub, 5, "e1");
        let got = texts(&handle).await;
        assert_eq!(got.len(), 2, "the reply, then offset 2 once: {got:?}");
        assert!(got[1].contains("\"offset\":2"));
        assert_eq!(commands.try_recv(), Some(resubscribe_news()));
        assert!(commands.try_recv().is_none(), "asked once");
    }

    #[tokio::test]
    async fn a_new_epoch_is_a_gap() {
        let hub = Hub::new();
        let (_handle, mut commands) = positioned(&hub);
        publish(&hub, 1, "e2");
        assert_eq!(commands.try_recv(), Some(resubscribe_news()));
    }

    #[test]
    fn position_reports_find_a_gap_only_when_it_lasts() {
        let hub = Hub::new();
        let (_handle, mut commands) = positioned(&hub);
        hub.handle_position("news", at(2, "e1"));
        publish(&hub, 2, "e1");
        hub.handle_position("news", at(2, "e1"));
        assert!(
            commands.try_recv().is_none(),
            "a report racing a publication on its way is no gap"
        );
        hub.handle_position("news", at(3, "e1"));
        hub.handle_position("news", at(3, "e1"));
        assert_eq!(commands.try_recv(), Some(resubscribe_news()));

        let hub = Hub::new();
        let (_handle, mut commands) = positioned(&hub);
        hub.handle_position("news", at(1, "e9"));
        assert_eq!(
            commands.try_recv(),
            Some(resubscribe_news()),
            "a new epoch needs no second report"
        );
    }

    #[test]
    fn sessions_by_user_and_client() {
        let hub = Hub::new();
        hub.register(session("c1", "u1"));
        hub.register(session("c2", "u1"));
        hub.register(session("c3", "u2"));
        assert_eq!(hub.sessions("u1", None).len(), 2);
        assert_eq!(hub.sessions("u1", Some("c2")).len(), 1);
        assert_eq!(hub.sessions("u2", Some("c2")).len(), 0);
        hub.unregister("c1", "u1");
        assert_eq!(hub.sessions("u1", None).len(), 1);
        assert_eq!(hub.stats().users, 2);
    }

    #[test]
    fn fan_outs_back_to_back_go_through_the_writers() {
        let pace = Pace::new();
        let gap = BACK_TO_BACK.as_nanos() as u64;
        assert!(pace.isolated_at(gap), "the first fan-out");
        pace.ended_at(10 * gap);
        assert!(!pace.isolated_at(10 * gap), "right after another");
        assert!(!pace.isolated_at(11 * gap - 1));
        assert!(pace.isolated_at(11 * gap), "after a pause");
    }
}
