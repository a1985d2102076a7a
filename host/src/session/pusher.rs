//! A Pusher session: one pusher-js (or other Pusher protocol v7) connection's state machine.
//!
//! It shares everything below the protocol with the Centrifugo session — the outbound queue, the hub's
//! fan-out, the engine — and differs in what a connection is: no connect command (the socket id is sent
//! at once), channels authorised by the app backend's signatures instead of tokens, liveness by the
//! client's activity, and `client-*` events relayed to the other members of private channels.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::disconnect::Disconnect;
use crate::engine::ClientInfo;
use crate::hub::{CommandReceiver, DeliveryGate, SessionCommand, SessionHandle, Subscriber};
use crate::limits::{CommandRate, Verdict};
use crate::node::{Node, PublishRequest, Source};
use crate::protocol::pusher::codec::{self, ChannelKind, ClientMessage};
use crate::protocol::pusher::sign;
use crate::protocol::{Frame, Protocol};

use super::Incoming;
use super::outbound::Outbound;

/// The `[pusher]` section: the app whose clients and server libraries speak the Pusher protocol.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PusherConfig {
    /// The app id in HTTP API paths (`/apps/{app_id}/…`). The Pusher Python library needs a number.
    pub app_id: String,
    /// The app key clients connect with (`/app/{key}`); empty (the default) turns the Pusher protocol off.
    pub key: String,
    /// The secret that signs channel authorisations and HTTP API requests.
    pub secret: String,
    /// Let clients send `client-*` events to the other subscribers of private channels (default false).
    pub client_events: bool,
    /// Silence after which the server pings a client; sent to clients, which ping after the same
    /// silence themselves (default 30 s).
    #[serde(with = "humantime_serde")]
    pub activity_timeout: Duration,
    /// How long a client has to answer the server's ping before it is closed with 4201 (default 30 s).
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// Largest event data in bytes, from the HTTP API or a client event (default 10 KiB, then 413 or
    /// `pusher:error` 4301).
    pub max_event_bytes: usize,
    /// Longest channel name (default 164, Pusher's).
    pub max_channel_name_length: usize,
    /// How far an HTTP API request's `auth_timestamp` may be from the server's clock (default 600 s).
    #[serde(with = "humantime_serde")]
    pub timestamp_window: Duration,
}

impl Default for PusherConfig {
    fn default() -> Self {
        Self {
            app_id: String::new(),
            key: String::new(),
            secret: String::new(),
            client_events: false,
            activity_timeout: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(30),
            max_event_bytes: 10 * 1024,
            max_channel_name_length: 164,
            timestamp_window: Duration::from_secs(600),
        }
    }
}

impl std::fmt::Debug for PusherConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PusherConfig")
            .field("app_id", &self.app_id)
            .field("key", &self.key)
            .field("secret", &"[redacted]")
            .field("client_events", &self.client_events)
            .field("activity_timeout", &self.activity_timeout)
            .field("pong_timeout", &self.pong_timeout)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("max_channel_name_length", &self.max_channel_name_length)
            .field("timestamp_window", &self.timestamp_window)
            .finish()
    }
}

impl PusherConfig {
    /// Whether the Pusher protocol is served.
    pub fn enabled(&self) -> bool {
        !self.key.is_empty()
    }

    /// Checks the section; errors name the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        if self.app_id.is_empty() || self.secret.is_empty() {
            return Err("pusher: app_id and secret are required when key is set".into());
        }
        if self.activity_timeout.as_secs() == 0 {
            return Err("pusher.activity_timeout: must be at least 1 s".into());
        }
        if self.pong_timeout.is_zero() {
            return Err("pusher.pong_timeout: must be greater than 0".into());
        }
        if self.max_channel_name_length == 0 {
            return Err("pusher.max_channel_name_length: must be greater than 0".into());
        }
        Ok(())
    }
}

/// Longest `client-*` event name (Pusher's limit).
const MAX_EVENT_NAME: usize = 200;

/// One Pusher connection's state.
pub struct PusherSession {
    node: Arc<Node>,
    outbound: Arc<Outbound>,
    remote: SocketAddr,
    handle: Arc<SessionHandle>,
    commands: CommandReceiver,
    channels: HashSet<String>,
    /// When the client last sent anything, WebSocket control frames included.
    last_heard: Instant,
    /// When the server's unanswered ping went out.
    pinged_at: Option<Instant>,
    rate: CommandRate,
}

impl PusherSession {
    /// A session for a connection that just opened on the app's key.
    pub fn new(node: Arc<Node>, outbound: Arc<Outbound>, remote: SocketAddr) -> Self {
        let (handle, commands) =
            SessionHandle::new(new_socket_id(), String::new(), outbound.clone());
        let rate = node.admission.command_rate();
        Self {
            node,
            outbound,
            remote,
            handle,
            commands,
            channels: HashSet::new(),
            last_heard: Instant::now(),
            pinged_at: None,
            rate,
        }
    }

    fn socket_id(&self) -> &str {
        &self.handle.client
    }

    fn config(&self) -> &PusherConfig {
        &self.node.config.pusher
    }

    /// Runs until the client goes away or a close is decided, then cleans up; the close is left in the
    /// outbound queue for the writer.
    pub async fn run(mut self, incoming: impl Stream<Item = Incoming>) {
        let mut incoming = std::pin::pin!(incoming);
        let node = self.node.clone();
        let outbound = self.outbound.clone();
        node.hub.register(self.handle.clone());
        outbound.push(codec::connection_established(
            self.socket_id(),
            self.config().activity_timeout.as_secs(),
        ));
        tracing::debug!(socket_id = %self.socket_id(), remote = %self.remote, "pusher client connected");
        loop {
            let deadline = self.deadline();
            tokio::select! {
                _ = outbound.closed() => break,
                _ = node.shutdown.cancelled() => {
                    outbound.close(Disconnect::SHUTDOWN);
                    break;
                }
                item = incoming.next() => {
                    let Some(item) = item else { break };
                    self.last_heard = Instant::now();
                    self.pinged_at = None;
                    if let Err(disconnect) = Box::pin(self.handle_incoming(item)).await {
                        outbound.close(disconnect);
                        break;
                    }
                }
                command = self.commands.recv() => Box::pin(self.handle_command(command)).await,
                _ = tokio::time::sleep_until(deadline) => {
                    if self.pinged_at.is_some() {
                        outbound.push(codec::error(Some(4201), "Pong reply not received"));
                        outbound.close(Disconnect::PUSHER_PONG_TIMEOUT);
                        break;
                    }
                    outbound.push(codec::ping());
                    self.pinged_at = Some(Instant::now());
                }
            }
        }
        Box::pin(self.finish()).await;
    }

    /// The next liveness check: the pong deadline after a ping, else the end of the allowed silence.
    fn deadline(&self) -> Instant {
        match self.pinged_at {
            Some(pinged) => pinged + self.config().pong_timeout,
            None => self.last_heard + self.config().activity_timeout,
        }
    }

    async fn finish(mut self) {
        let channels: Vec<String> = self.channels.drain().collect();
        for channel in channels {
            self.leave(&channel).await;
        }
        self.node
            .hub
            .unregister(&self.handle.client, &self.handle.user);
        match self.outbound.close_reason() {
            Some(d) if d == Disconnect::SLOW => {
                tracing::warn!(socket_id = %self.socket_id(), remote = %self.remote, "pusher client dropped as slow: outbound queue full")
            }
            reason => {
                tracing::debug!(socket_id = %self.socket_id(), remote = %self.remote, ?reason, "pusher client disconnected")
            }
        }
    }

    async fn handle_incoming(&mut self, item: Incoming) -> Result<(), Disconnect> {
        match item {
            Incoming::Text(bytes) => {
                let Ok(text) = std::str::from_utf8(&bytes) else {
                    return Err(Disconnect::INVALID_PAYLOAD);
                };
                self.handle_text(text).await;
                Ok(())
            }
            // Pusher has no binary messages; a client sending one gets told, the connection stays.
            Incoming::Binary => {
                self.outbound
                    .push(codec::error(None, "binary messages are not supported"));
                Ok(())
            }
            Incoming::Pong => Ok(()),
            Incoming::TooLarge => Err(Disconnect::MESSAGE_TOO_BIG),
            Incoming::InvalidUtf8 => Err(Disconnect::INVALID_PAYLOAD),
        }
    }

    async fn handle_text(&mut self, text: &str) {
        let message = match codec::decode(text) {
            Ok(message) => message,
            Err(error) => {
                // Liberal, as the Pusher clients in the wild need: say what was wrong, keep the connection.
                tracing::debug!(socket_id = %self.socket_id(), %error, "bad pusher message");
                self.outbound
                    .push(codec::error(None, &format!("invalid message: {error}")));
                return;
            }
        };
        if !matches!(message, ClientMessage::Ping | ClientMessage::Pong) {
            match self.rate.check() {
                Verdict::Allow => {}
                Verdict::Refuse => {
                    self.outbound
                        .push(codec::error(Some(4301), "rate limit exceeded"));
                    return;
                }
                Verdict::Disconnect => {
                    tracing::info!(socket_id = %self.socket_id(), remote = %self.remote, "pusher client dropped: too many messages");
                    self.outbound.close(Disconnect::TOO_MANY_REQUESTS);
                    return;
                }
            }
        }
        match message {
            ClientMessage::Ping => {
                self.outbound.push(codec::pong());
            }
            ClientMessage::Pong => {}
            ClientMessage::Subscribe {
                channel,
                auth,
                channel_data,
            } => self.subscribe(channel, auth, channel_data).await,
            ClientMessage::Unsubscribe { channel } => {
                if self.channels.remove(&channel) {
                    self.leave(&channel).await;
                }
            }
            ClientMessage::ClientEvent {
                event,
                channel,
                data,
            } => self.client_event(event, channel, data).await,
            ClientMessage::Signin { .. } => {
                self.outbound.push(codec::error(
                    None,
                    "user authentication (signin) is not supported by this server yet",
                ));
            }
            ClientMessage::Other { event } => {
                tracing::debug!(socket_id = %self.socket_id(), event, "unknown pusher event ignored");
            }
        }
    }

    async fn subscribe(
        &mut self,
        channel: String,
        auth: Option<String>,
        channel_data: Option<String>,
    ) {
        if self.channels.contains(&channel) {
            self.outbound.push(codec::subscription_succeeded(&channel));
            return;
        }
        if let Err((kind, message, status)) = self.may_subscribe(&channel, auth, channel_data) {
            tracing::debug!(socket_id = %self.socket_id(), channel, message, "pusher subscription refused");
            self.outbound
                .push(codec::subscription_error(&channel, kind, &message, status));
            return;
        }
        let gate = Arc::new(DeliveryGate::held());
        let subscriber = Subscriber {
            session: self.handle.clone(),
            protocol: Protocol::Pusher,
            join_leave: false,
            gate: gate.clone(),
        };
        let node = self.node.clone();
        if node.hub.subscribe(&channel, subscriber)
            && let Err(error) = node.engine.broker.subscribe(&channel).await
        {
            tracing::warn!(channel, %error, "engine subscribe failed");
            self.leave(&channel).await;
            self.outbound.push(codec::subscription_error(
                &channel,
                "ServerError",
                "the server cannot subscribe right now, try again",
                503,
            ));
            return;
        }
        // Not positioned: whatever arrived while subscribing follows the confirmation.
        let _ = gate.open(
            &self.outbound,
            codec::subscription_succeeded(&channel),
            None,
        );
        self.channels.insert(channel);
    }

    /// Why a subscription is refused: the `type`, message and status of `pusher:subscription_error`.
    fn may_subscribe(
        &self,
        channel: &str,
        auth: Option<String>,
        channel_data: Option<String>,
    ) -> Result<(), (&'static str, String, u16)> {
        let config = self.config();
        if !codec::valid_channel_name(channel, config.max_channel_name_length) {
            return Err((
                "InvalidChannel",
                format!("invalid channel name {channel:?}"),
                400,
            ));
        }
        if self.channels.len() >= self.node.config.client.max_channels {
            return Err((
                "LimitReached",
                format!(
                    "at most {} channels per connection",
                    self.node.config.client.max_channels
                ),
                400,
            ));
        }
        match ChannelKind::of(channel) {
            ChannelKind::Public => Ok(()),
            ChannelKind::Presence => Err((
                "UnsupportedChannel",
                "presence channels are not supported by this server yet".into(),
                501,
            )),
            ChannelKind::ServerToUser(_) => Err((
                "AuthError",
                "server-to-user channels need a signed-in connection".into(),
                401,
            )),
            ChannelKind::Private | ChannelKind::PrivateEncrypted => {
                let signed = auth.is_some_and(|auth| {
                    sign::channel_auth_valid(
                        &config.key,
                        &config.secret,
                        self.socket_id(),
                        channel,
                        channel_data.as_deref(),
                        &auth,
                    )
                });
                if signed {
                    Ok(())
                } else {
                    Err((
                        "AuthError",
                        format!(
                            "invalid signature for {channel} on socket {}",
                            self.socket_id()
                        ),
                        401,
                    ))
                }
            }
        }
    }

    /// Ends a subscription in the hub (and the engine, for the node's last subscriber).
    async fn leave(&self, channel: &str) {
        if self.node.hub.unsubscribe(channel, &self.handle.client)
            && let Err(error) = self.node.engine.broker.unsubscribe(channel).await
        {
            tracing::warn!(channel, %error, "engine unsubscribe failed");
        }
    }

    /// Relays a `client-*` event to the channel's other subscribers, on every node.
    async fn client_event(&mut self, event: String, channel: String, data: Option<String>) {
        let refusal = if !self.config().client_events {
            Some("client events are not enabled")
        } else if !matches!(
            ChannelKind::of(&channel),
            ChannelKind::Private | ChannelKind::Presence
        ) {
            Some("client events are only allowed on private and presence channels")
        } else if !self.channels.contains(&channel) {
            Some("client events need a subscription to the channel")
        } else if event.len() > MAX_EVENT_NAME {
            Some("event name too long")
        } else if data.as_ref().map_or(0, String::len) > self.config().max_event_bytes {
            Some("event data too large")
        } else {
            None
        };
        if let Some(message) = refusal {
            self.outbound.push(codec::error(Some(4301), message));
            return;
        }
        let tags = [
            (codec::EVENT_TAG.to_owned(), event),
            (codec::EXCLUDE_TAG.to_owned(), self.socket_id().to_owned()),
        ]
        .into();
        let published = self
            .node
            .publish(PublishRequest {
                channel,
                data: data.map_or(Bytes::from_static(b"null"), Bytes::from),
                info: Some(ClientInfo {
                    user: String::new(),
                    client: self.socket_id().to_owned(),
                    conn_info: None,
                    chan_info: None,
                }),
                tags,
                // Pusher keeps no client events: they are relayed, never replayed.
                skip_history: true,
                source: Source::Client,
                idempotency_key: None,
            })
            .await;
        if let Err(error) = published {
            let refusal = crate::errors::Refusal::from(error);
            tracing::debug!(socket_id = %self.socket_id(), ?refusal, "client event refused");
            self.outbound
                .push(codec::error(Some(4301), "client event refused"));
        }
    }

    async fn handle_command(&mut self, command: SessionCommand) {
        match command {
            SessionCommand::Unsubscribe { channel } => {
                if self.channels.remove(&channel) {
                    self.leave(&channel).await;
                }
            }
            // Server-side subscriptions and recovery are Centrifugo protocol features.
            SessionCommand::Subscribe { .. } | SessionCommand::Resubscribe { .. } => {}
        }
    }
}

/// A new socket id: two random unsigned integers joined by a dot. The Pusher server libraries check the
/// `^\d+\.\d+$` shape; randomness from the thread's CSPRNG keeps it unguessable, and the channel
/// signatures the app backend makes bind to it.
fn new_socket_id() -> String {
    let (a, b): (u32, u32) = (rand::random(), rand::random());
    format!("{a}.{b}")
}

/// A frame a connection refused at the handshake gets before its close (unknown key, protocol version).
pub fn refusal(disconnect: &Disconnect) -> Frame {
    codec::error(Some(disconnect.code), &disconnect.reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_ids_have_the_shape_server_libraries_check() {
        let id = new_socket_id();
        let (a, b) = id.split_once('.').expect("a dot");
        assert!(
            !a.is_empty() && a.bytes().all(|c| c.is_ascii_digit()),
            "{id}"
        );
        assert!(
            !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()),
            "{id}"
        );
        assert_ne!(new_socket_id(), id);
    }

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let config = PusherConfig {
            secret: "s3cr3t".into(),
            ..PusherConfig::default()
        };
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }
}
