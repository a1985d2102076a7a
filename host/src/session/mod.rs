//! A session: one client connection's protocol state machine.
//!
//! The session reads decoded commands in order, answers each through its bounded [`Outbound`]
//! queue, keeps the heartbeat, owns the connection's subscriptions and cleans them up when the connection
//! ends. It never touches a socket: the transport feeds it [`Incoming`] items and writes what it queues.
//!
//! This module's [`Session`] speaks the Centrifugo protocol, [`pusher::PusherSession`] the Pusher one; both
//! run on one connection skeleton (`skeleton`) and supply only their decisions.

mod pairs;
pub mod pusher;

mod connect;
mod heartbeat;
mod skeleton;
mod subscribe;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::time::Instant;

pub use pairs::Pairs;

use crate::channel::Namespace;
use crate::disconnect::Disconnect;
use crate::errors::{ClientError, Refusal};
use crate::hub::{ClientId, SessionCommand, SessionHandle};
use crate::node::{ClientInfo, HistoryFilter, Node, PublishRequest, Source, StreamPosition};
use crate::plugin::bindings::{self, AccessKind};
use crate::policy::{self, Action, Requester};
use crate::protocol::Frame;
use crate::protocol::centrifuge::Codec;
use crate::protocol::centrifuge::command::{
    ChannelRequest, Command, DecodeError, HistoryRequest, Method, PublishRequest as ClientPublish,
};

use crate::outbound::Outbound;
use heartbeat::Heartbeat;
use skeleton::{Connection, Decisions};

/// What the transport hands a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A text message (valid UTF-8).
    Text(Bytes),
    /// A binary message (Protobuf; not part of the JSON protocols).
    Binary(Bytes),
    /// A transport-level pong.
    Pong,
    /// A message over the inbound size limit.
    TooLarge,
    /// A text message that is not valid UTF-8.
    InvalidUtf8,
}

/// Facts about the connection the transport knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// Heartbeat with transport ping frames instead of `{}` messages (`cf_ws_frame_ping_pong=true`).
    pub transport_ping: bool,
    /// The transport's name in metrics' `transport` label (`websocket`).
    pub transport: &'static str,
    /// Headers of the upgrade request (lower-case names), for connect plugins.
    pub headers: Pairs,
    /// Query parameters of the upgrade request, for connect plugins.
    pub query: Pairs,
    /// The session's name on an emulated transport (HTTP streaming, SSE), which the client puts on the
    /// commands it sends separately; the connect reply gives it with this node's id.
    pub emulation: Option<Arc<str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Opened, waiting for `connect`.
    Opened,
    /// Connected.
    Connected,
    /// The connect was answered with an error: the connection is unusable.
    Refused,
}

/// One subscription of this connection.
#[derive(Debug, Clone)]
struct Subscription {
    /// Listed in presence: remove it when the subscription ends.
    presence: bool,
    /// The namespace broadcasts join/leave: announce the leave when the subscription ends.
    announce_leave: bool,
    /// Channel info attached to this client's publications in the channel.
    chan_info: Option<Bytes>,
    /// When the subscription expires unless refreshed.
    expires_at: Option<Instant>,
    /// Made by the server: the client cannot resubscribe it by itself.
    server_side: bool,
}

/// One client connection's state.
#[derive(Debug)]
pub struct Session {
    conn: Connection<Subscription>,
    /// The connection's encoding (JSON or Protobuf).
    codec: &'static dyn Codec,
    /// Heartbeat with transport ping frames (see [`ConnectionInfo::transport_ping`]).
    transport_ping: bool,
    /// See [`ConnectionInfo::emulation`].
    emulation: Option<Arc<str>>,
    /// See [`ConnectionInfo::transport`]; plugins see it in the connect request.
    transport: &'static str,
    /// The upgrade request's headers and query, for the connect hook (a refresh runs it again).
    headers: Pairs,
    query: Pairs,
    state: State,
    client: ClientId,
    user: String,
    conn_info: Option<Bytes>,
    handle: Option<Arc<SessionHandle>>,
    heartbeat: Heartbeat,
    /// When the connection expires unless refreshed.
    expires_at: Option<Instant>,
}

impl Session {
    /// A session for a connection that just opened, speaking `codec`; the transport writes what
    /// `outbound` receives.
    pub fn new(
        node: Arc<Node>,
        outbound: Arc<Outbound>,
        connection: ConnectionInfo,
        codec: &'static dyn Codec,
    ) -> Self {
        let c = &node.config.client;
        let heartbeat = Heartbeat::new(
            Instant::now(),
            c.connect_timeout,
            c.ping_interval,
            c.pong_timeout,
        );
        let ConnectionInfo {
            remote,
            transport_ping,
            transport,
            headers,
            query,
            emulation,
        } = connection;
        Self {
            conn: Connection::new(node, outbound, remote, codec.protocol(), transport),
            codec,
            transport_ping,
            emulation,
            transport,
            headers,
            query,
            state: State::Opened,
            client: ClientId::from(""),
            user: String::new(),
            conn_info: None,
            handle: None,
            heartbeat,
            expires_at: None,
        }
    }

    /// Runs until the client goes away or a close is decided, then cleans up. The close (if any) is left
    /// in the outbound queue for the writer.
    // What an `async fn` is, written out: an `async fn` here would keep a second copy of the session in
    // its future for the connection's whole life (see `skeleton::run`).
    pub fn run(self, incoming: impl Stream<Item = Incoming>) -> impl Future<Output = ()> {
        skeleton::run(self, incoming)
    }

    async fn handle_message(&mut self, message: &[u8], binary: bool) -> Result<(), Disconnect> {
        for command in self.codec.decode(message, binary)? {
            let command = match command {
                Ok(command) => command,
                Err(DecodeError::NotJson { id }) => {
                    if id > 0 {
                        let error = ClientError::BAD_REQUEST.with_message("data must be JSON");
                        self.reply(self.codec.error_reply(id, &error));
                    }
                    continue;
                }
                Err(error) => {
                    tracing::debug!(remote = %self.conn.remote, %error, "bad command");
                    return Err(Disconnect::BAD_REQUEST);
                }
            };
            // Heartbeat answers are not requests; everything else counts against the rate.
            if command.method != Method::Pong {
                self.conn.handling(command.method.name());
            }
            if command.method != Method::Pong && !self.conn.within_rate(&self.client)? {
                if command.id > 0 {
                    self.reply(self.error_reply(command.id, &ClientError::TOO_MANY_REQUESTS));
                }
                continue;
            }
            self.handle_command(command).await?;
            if self.conn.outbound.is_closed() {
                break;
            }
        }
        Ok(())
    }

    fn reply(&self, frame: Frame) {
        self.conn.outbound.push(frame);
    }

    /// The error reply to command `id`, counted under the command being handled.
    fn error_reply(&self, id: u32, error: &ClientError) -> Frame {
        self.conn.command_failed(error.code);
        self.codec.error_reply(id, error)
    }

    /// Queues the reply, or the error; a refusal that closes the connection is returned.
    fn reply_result(&self, id: u32, result: Result<Frame, Refusal>) -> Result<(), Disconnect> {
        match result {
            Ok(frame) => self.reply(frame),
            Err(Refusal::Error(error)) => self.reply(self.error_reply(id, &error)),
            Err(Refusal::Disconnect(disconnect)) => return Err(disconnect),
        }
        Ok(())
    }

    async fn handle_command(&mut self, command: Command) -> Result<(), Disconnect> {
        let id = command.id;
        match (self.state, command.method) {
            (State::Opened, Method::Connect(request)) => self.connect(id, request).await,
            (State::Opened | State::Refused, _) | (State::Connected, Method::Connect(_)) => {
                Err(Disconnect::BAD_REQUEST)
            }
            (State::Connected, Method::Pong) => {
                if !self.transport_ping {
                    self.heartbeat.pong();
                }
                Ok(())
            }
            (State::Connected, Method::Subscribe(request)) => self.subscribe(id, request).await,
            (State::Connected, Method::Unsubscribe(ChannelRequest { channel })) => {
                require_channel(&channel)?;
                self.unsubscribe(&channel).await;
                self.reply(self.codec.unsubscribe_reply(id));
                Ok(())
            }
            (State::Connected, Method::Publish(request)) => {
                require_channel(&request.channel)?;
                let result = self
                    .publish(request)
                    .await
                    .map(|_| self.codec.publish_reply(id));
                self.reply_result(id, result)
            }
            (State::Connected, Method::History(request)) => {
                require_channel(&request.channel)?;
                let result = self.history(id, request).await;
                self.reply_result(id, result)
            }
            (State::Connected, Method::Presence(ChannelRequest { channel })) => {
                require_channel(&channel)?;
                let result = self.presence(id, &channel, false).await;
                self.reply_result(id, result)
            }
            (State::Connected, Method::PresenceStats(ChannelRequest { channel })) => {
                require_channel(&channel)?;
                let result = self.presence(id, &channel, true).await;
                self.reply_result(id, result)
            }
            (State::Connected, Method::Send(_)) => {
                tracing::debug!(client = %self.client, "send dropped: no plugin handles messages");
                Ok(())
            }
            (State::Connected, Method::SubRefresh(request)) => {
                require_channel(&request.channel)?;
                let result = self.sub_refresh(id, request).await;
                self.reply_result(id, result)
            }
            (State::Connected, Method::Refresh(request)) => {
                let result = self.refresh(id, request).await;
                self.reply_result(id, result)
            }
            (State::Connected, Method::Rpc(request)) => {
                let result = self.rpc(id, request).await;
                self.reply_result(id, result)
            }
            (State::Connected, Method::Ping) => {
                self.reply(self.error_reply(id, &ClientError::NOT_AVAILABLE));
                Ok(())
            }
        }
    }

    fn info(&self, chan_info: Option<Bytes>) -> ClientInfo {
        ClientInfo {
            user: self.user.clone(),
            client: self.client.to_string(),
            conn_info: self.conn_info.clone(),
            chan_info,
        }
    }

    /// Who this connection is to the channel policy, for `channel`.
    fn requester(&self, channel: &str, vouched: bool) -> Requester<'_> {
        Requester {
            user: &self.user,
            subscribed: self.conn.subscriptions.contains_key(channel),
            vouched,
        }
    }

    async fn publish(&self, request: ClientPublish) -> Result<StreamPosition, Refusal> {
        let namespace = self.conn.node.namespace(&request.channel)?;
        let granted = policy::authorize(
            &request.channel,
            &namespace.options,
            Action::Publish,
            self.requester(&request.channel, false),
        )?;
        let data = request
            .data
            .ok_or_else(|| ClientError::BAD_REQUEST.with_message("data required"))?;
        let chan_info = self
            .conn
            .subscriptions
            .get(&request.channel)
            .and_then(|s| s.chan_info.clone());
        self.conn
            .node
            .publish(PublishRequest {
                info: Some(self.info(chan_info)),
                data,
                channel: request.channel,
                source: Source::Client(granted),
                ..Default::default()
            })
            .await
            .map_err(Refusal::from)
    }

    async fn history(&self, id: u32, request: HistoryRequest) -> Result<Frame, Refusal> {
        let namespace: &Namespace = self.conn.node.namespace(&request.channel)?;
        let o = &namespace.options;
        if o.history().is_none() {
            return Err(ClientError::NOT_AVAILABLE.into());
        }
        let grant = self
            .may_read(&request.channel, o, AccessKind::History)
            .await?;
        let filter = history_filter(
            &request,
            self.conn.node.config.client.history_max_publication_limit,
        )?;
        let result = self
            .conn
            .node
            .history(&request.channel, &filter, grant)
            .await?;
        Ok(self
            .codec
            .history_reply(id, &result.publications, &result.position))
    }

    async fn presence(&self, id: u32, channel: &str, stats: bool) -> Result<Frame, Refusal> {
        let o = &self.conn.node.namespace(channel)?.options;
        if !o.presence {
            return Err(ClientError::NOT_AVAILABLE.into());
        }
        let grant = self.may_read(channel, o, AccessKind::Presence).await?;
        if stats {
            let s = self.conn.node.presence_stats(channel, grant).await?;
            Ok(self
                .codec
                .presence_stats_reply(id, s.num_clients, s.num_users))
        } else {
            Ok(self
                .codec
                .presence_reply(id, &self.conn.node.presence(channel, grant).await?))
        }
    }
}

impl Decisions for Session {
    type Subscription = Subscription;

    fn connection(&self) -> &Connection<Subscription> {
        &self.conn
    }

    fn connection_mut(&mut self) -> &mut Connection<Subscription> {
        &mut self.conn
    }

    fn handle(&self) -> Option<&Arc<SessionHandle>> {
        self.handle.as_ref()
    }

    fn deadline(&self) -> Instant {
        self.next_deadline()
    }

    async fn incoming(&mut self, item: Incoming) -> Result<(), Disconnect> {
        match item {
            Incoming::Text(bytes) => self.handle_message(&bytes, false).await,
            Incoming::Binary(bytes) => self.handle_message(&bytes, true).await,
            Incoming::Pong => {
                if self.transport_ping {
                    self.heartbeat.pong();
                }
                Ok(())
            }
            Incoming::TooLarge => Err(Disconnect::MESSAGE_TOO_BIG),
            Incoming::InvalidUtf8 => Err(Disconnect::INVALID_PAYLOAD),
        }
    }

    async fn command(&mut self, command: SessionCommand) {
        match command {
            SessionCommand::Subscribe(request) => self.server_subscribe(request).await,
            SessionCommand::Refresh { expired, expire_at } => {
                let ttl = match expire_at {
                    _ if expired => None,
                    Some(at) => connect::ttl_until(at),
                    None => {
                        self.expires_at = None;
                        return;
                    }
                };
                match ttl {
                    Some(ttl) => {
                        self.expires_at = Some(Instant::now() + Duration::from_secs(ttl.into()));
                    }
                    None => self.conn.outbound.close(Disconnect::CONNECTION_EXPIRED),
                }
            }
            SessionCommand::Unsubscribe { channel } => {
                if self.unsubscribe(&channel).await {
                    self.reply(
                        self.codec
                            .unsubscribe_push(&channel, 2000, "server unsubscribe"),
                    );
                }
            }
            SessionCommand::Resubscribe { channel } => {
                let Some(subscription) = self.conn.subscriptions.get(&channel) else {
                    return;
                };
                if subscription.server_side {
                    // A server-side subscription comes back only with a new connection (and recovers there).
                    self.conn.outbound.close(Disconnect::INSUFFICIENT_STATE);
                    return;
                }
                self.unsubscribe(&channel).await;
                self.reply(
                    self.codec
                        .unsubscribe_push(&channel, 2500, "insufficient state"),
                );
            }
        }
    }

    async fn deadline_passed(&mut self, now: Instant) -> Result<(), Disconnect> {
        self.deadlines_due(now).await
    }

    /// The disconnect hook hears of every connection that got connected.
    fn connected_client(&self) -> Option<bindings::ClientInfo> {
        (self.state == State::Connected).then(|| self.plugin_client())
    }

    async fn leave(&mut self, channel: &str, subscription: Subscription) {
        self.end(channel, subscription).await;
    }
}

/// An empty channel name is a protocol violation.
fn require_channel(channel: &str) -> Result<(), Disconnect> {
    if channel.is_empty() {
        Err(Disconnect::BAD_REQUEST)
    } else {
        Ok(())
    }
}

/// Maps the client's history request onto a history filter (§8.3 of the wire notes).
fn history_filter(request: &HistoryRequest, max: usize) -> Result<HistoryFilter, ClientError> {
    let limit = match request.limit {
        0 => Some(0),
        n if n < 0 => Some(max),
        n => Some((n as usize).min(max)),
    };
    let since = request.since.as_ref().map(|s| StreamPosition {
        offset: s.offset,
        epoch: s.epoch.clone(),
    });
    if request.reverse && since.as_ref().is_some_and(|s| s.offset == 0) {
        return Err(ClientError::BAD_REQUEST.with_message("reverse history needs a since offset"));
    }
    Ok(HistoryFilter {
        since,
        limit,
        reverse: request.reverse,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::centrifuge::command::StreamPositionRequest;

    #[test]
    fn history_limits_follow_the_protocol() {
        let req = |limit, since: Option<u64>, reverse| HistoryRequest {
            channel: "a".into(),
            limit,
            since: since.map(|offset| StreamPositionRequest {
                offset,
                epoch: String::new(),
            }),
            reverse,
        };
        assert_eq!(
            history_filter(&req(0, None, false), 300).unwrap().limit,
            Some(0)
        );
        assert_eq!(
            history_filter(&req(-1, None, false), 300).unwrap().limit,
            Some(300)
        );
        assert_eq!(
            history_filter(&req(1000, None, false), 300).unwrap().limit,
            Some(300)
        );
        assert_eq!(
            history_filter(&req(5, None, false), 300).unwrap().limit,
            Some(5)
        );
        assert_eq!(
            history_filter(&req(5, Some(0), true), 300)
                .unwrap_err()
                .code,
            107
        );
        assert!(history_filter(&req(5, Some(3), true), 300).unwrap().reverse);
    }
}
