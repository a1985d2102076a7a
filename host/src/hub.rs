//! The hub: this node's registry of sessions and of who is subscribed to which channel, and the fan-out of
//! what the engine delivers.
//!
//! A publication is encoded once and the same [`Frame`] handed to every subscriber's bounded queue; the hub
//! never waits on a client and never awaits while holding one of its locks.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::mpsc;

use crate::disconnect::Disconnect;
use crate::engine::{BrokerEventHandler, ClientInfo, Publication, StreamPosition};
use crate::protocol::Frame;
use crate::protocol::centrifuge::encode;
use crate::session::outbound::Outbound;

const SHARDS: usize = 64;

/// Work another part of the server asks a session to do (the server API's subscribe, unsubscribe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCommand {
    /// Subscribe the connection to a channel server-side.
    Subscribe {
        /// The channel.
        channel: String,
    },
    /// Unsubscribe the connection from a channel, telling the client with a push.
    Unsubscribe {
        /// The channel.
        channel: String,
    },
}

/// What the rest of the server may do to a session: queue frames, close it, or send it a command.
#[derive(Debug)]
pub struct SessionHandle {
    /// Connection id.
    pub client: String,
    /// User id ("" for anonymous).
    pub user: String,
    /// The connection's outbound queue.
    pub outbound: Arc<Outbound>,
    commands: mpsc::UnboundedSender<SessionCommand>,
}

impl SessionHandle {
    /// A handle and the receiving end of its command channel (kept by the session).
    pub fn new(
        client: String,
        user: String,
        outbound: Arc<Outbound>,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<SessionCommand>) {
        let (commands, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Self {
                client,
                user,
                outbound,
                commands,
            }),
            rx,
        )
    }

    /// Sends a command; false when the session is gone.
    pub fn command(&self, command: SessionCommand) -> bool {
        self.commands.send(command).is_ok()
    }

    /// Closes the connection.
    pub fn disconnect(&self, disconnect: Disconnect) {
        self.outbound.close(disconnect);
    }
}

/// Holds back live frames while a subscribe is being answered, so the reply goes first and nothing is
/// delivered twice or lost (publications racing the subscribe are either in the reply or sent after it).
#[derive(Debug)]
pub struct DeliveryGate {
    live: AtomicBool,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    frames: Vec<(u64, Frame)>,
    bytes: usize,
}

impl DeliveryGate {
    /// A closed gate: frames are held until [`DeliveryGate::open`].
    pub fn held() -> Self {
        Self {
            live: AtomicBool::new(false),
            held: Mutex::new(Held::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn deliver(&self, offset: u64, frame: &Frame, outbound: &Outbound) {
        if self.live.load(Ordering::Acquire) {
            outbound.push(frame.clone());
            return;
        }
        let mut held = self.lock();
        if self.live.load(Ordering::Acquire) {
            drop(held);
            outbound.push(frame.clone());
            return;
        }
        held.bytes += frame.len();
        held.frames.push((offset, frame.clone()));
        if held.bytes > outbound.max_bytes() {
            held.frames.clear();
            outbound.close(Disconnect::SLOW);
        }
    }

    /// Queues `reply`, then the held frames whose offset is after `after` (frames without offset always),
    /// then lets frames flow directly.
    pub fn open(&self, outbound: &Outbound, reply: Frame, after: u64) {
        let mut held = self.lock();
        outbound.push(reply);
        for (offset, frame) in held.frames.drain(..) {
            if offset == 0 || offset > after {
                outbound.push(frame);
            }
        }
        held.bytes = 0;
        self.live.store(true, Ordering::Release);
    }
}

/// One connection's subscription as the hub sees it.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// The session.
    pub session: Arc<SessionHandle>,
    /// Whether it wants join/leave pushes.
    pub join_leave: bool,
    /// Holds frames while its subscribe is answered.
    pub gate: Arc<DeliveryGate>,
}

/// Subscribers by channel, then by client id, for the channels of one shard.
type ChannelShard = HashMap<String, HashMap<String, Subscriber>>;

/// Sessions and subscriptions of this node.
#[derive(Debug)]
pub struct Hub {
    channels: Box<[RwLock<ChannelShard>]>,
    sessions: RwLock<HashMap<String, Arc<SessionHandle>>>,
    users: RwLock<HashMap<String, Vec<String>>>,
    hasher: RandomState,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
    /// An empty hub.
    pub fn new() -> Self {
        Self {
            channels: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            sessions: RwLock::new(HashMap::new()),
            users: RwLock::new(HashMap::new()),
            hasher: RandomState::new(),
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
            .push(session.client.clone());
        write(&self.sessions).insert(session.client.clone(), session);
    }

    /// Forgets a session (its subscriptions must have been removed first).
    pub fn unregister(&self, client: &str, user: &str) {
        write(&self.sessions).remove(client);
        let mut users = write(&self.users);
        if let Some(clients) = users.get_mut(user) {
            clients.retain(|c| c != client);
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

    /// Adds a subscriber; true when it is the channel's first on this node.
    pub fn subscribe(&self, channel: &str, subscriber: Subscriber) -> bool {
        let mut shard = write(self.shard(channel));
        let subscribers = shard.entry(channel.to_owned()).or_default();
        let first = subscribers.is_empty();
        subscribers.insert(subscriber.session.client.clone(), subscriber);
        first
    }

    /// Removes a subscriber; true when the channel has no subscriber left on this node.
    pub fn unsubscribe(&self, channel: &str, client: &str) -> bool {
        let mut shard = write(self.shard(channel));
        let Some(subscribers) = shard.get_mut(channel) else {
            return false;
        };
        if subscribers.remove(client).is_none() {
            return false;
        }
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

    /// Counts for the `info` API.
    pub fn stats(&self) -> HubStats {
        let (channels, subscriptions) = self.channels.iter().fold((0, 0), |(c, s), shard| {
            let shard = read(shard);
            (
                c + shard.len(),
                s + shard.values().map(HashMap::len).sum::<usize>(),
            )
        });
        HubStats {
            clients: read(&self.sessions).len(),
            users: read(&self.users).len(),
            channels,
            subscriptions,
        }
    }

    fn broadcast(
        &self,
        channel: &str,
        offset: u64,
        encode: impl FnOnce() -> Frame,
        only_join_leave: bool,
    ) {
        let shard = read(self.shard(channel));
        let Some(subscribers) = shard.get(channel) else {
            return;
        };
        let mut frame = None;
        let mut encode = Some(encode);
        for subscriber in subscribers.values() {
            if only_join_leave && !subscriber.join_leave {
                continue;
            }
            let frame = frame.get_or_insert_with(|| (encode.take().expect("encoded once"))());
            subscriber
                .gate
                .deliver(offset, frame, &subscriber.session.outbound);
        }
    }
}

impl BrokerEventHandler for Hub {
    fn handle_publication(
        &self,
        channel: &str,
        publication: Arc<Publication>,
        _position: StreamPosition,
    ) {
        self.broadcast(
            channel,
            publication.offset,
            || encode::publication_push(channel, &publication),
            false,
        );
    }

    fn handle_join(&self, channel: &str, info: Arc<ClientInfo>) {
        self.broadcast(channel, 0, || encode::join_push(channel, &info), true);
    }

    fn handle_leave(&self, channel: &str, info: Arc<ClientInfo>) {
        self.broadcast(channel, 0, || encode::leave_push(channel, &info), true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::outbound::Outgoing;
    use bytes::Bytes;

    fn session(client: &str, user: &str) -> Arc<SessionHandle> {
        SessionHandle::new(client.into(), user.into(), Arc::new(Outbound::new(1 << 20))).0
    }

    fn subscriber(session: &Arc<SessionHandle>, join_leave: bool, live: bool) -> Subscriber {
        let gate = Arc::new(DeliveryGate::held());
        if live {
            gate.open(&session.outbound, Frame::from_static("reply"), 0);
        }
        Subscriber {
            session: session.clone(),
            join_leave,
            gate,
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
        sub.gate.open(&a.outbound, Frame::from_static("reply"), 2);
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
}
