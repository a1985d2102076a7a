//! A session: one client connection's protocol state machine.
//!
//! The session reads decoded commands in order, answers each through its bounded [`outbound::Outbound`]
//! queue, keeps the heartbeat, owns the connection's subscriptions and cleans them up when the connection
//! ends. It never touches a socket: the transport feeds it [`Incoming`] items and writes what it queues.

pub mod outbound;

mod heartbeat;
mod subscribe;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::channel::Namespace;
use crate::disconnect::Disconnect;
use crate::engine::{ClientInfo, HistoryFilter, StreamPosition};
use crate::errors::ClientError;
use crate::hub::{SessionCommand, SessionHandle};
use crate::node::{Node, PublishRequest, VERSION};
use crate::protocol::Frame;
use crate::protocol::centrifuge::command::{
    ChannelRequest, Command, ConnectRequest, HistoryRequest, Method,
    PublishRequest as ClientPublish,
};
use crate::protocol::centrifuge::encode;

use heartbeat::{Beat, Heartbeat};
use outbound::Outbound;

/// The `[client]` section: how client connections are authenticated, kept alive and limited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Clients may connect without a token, as anonymous users (user id ""). Default false.
    pub allow_anonymous: bool,
    /// Interval between server pings, advertised to clients (default 25 s).
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long to wait for the pong after a ping before closing with 3012 (default 8 s).
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// How long an opened connection may wait before sending `connect` (default 10 s, then 3502).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Bytes a connection may have queued for sending before it is closed as slow (3008). Default 1 MiB.
    pub max_queue_bytes: usize,
    /// Channels one connection may subscribe to (default 128, then error 106).
    pub max_channels: usize,
    /// Most publications a history command returns (default 300).
    pub history_max_publication_limit: usize,
    /// Most publications a recovery returns; more missed means "not recovered" (default 300).
    pub recovery_max_publication_limit: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            allow_anonymous: false,
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(8),
            connect_timeout: Duration::from_secs(10),
            max_queue_bytes: 1024 * 1024,
            max_channels: 128,
            history_max_publication_limit: 300,
            recovery_max_publication_limit: 300,
        }
    }
}

/// What the transport hands a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A text message (valid UTF-8).
    Text(Bytes),
    /// A binary message: not part of the JSON protocol.
    Binary,
    /// A transport-level pong.
    Pong,
    /// A message over the inbound size limit.
    TooLarge,
    /// A text message that is not valid UTF-8.
    InvalidUtf8,
}

/// Facts about the connection the transport knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// Heartbeat with transport ping frames instead of `{}` messages (`cf_ws_frame_ping_pong=true`).
    pub transport_ping: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Opened, waiting for `connect`.
    Opened,
    /// Connected.
    Connected,
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
}

/// One client connection's state.
#[derive(Debug)]
pub struct Session {
    node: Arc<Node>,
    outbound: Arc<Outbound>,
    connection: ConnectionInfo,
    state: State,
    client: String,
    user: String,
    conn_info: Option<Bytes>,
    handle: Option<Arc<SessionHandle>>,
    commands: Option<mpsc::UnboundedReceiver<SessionCommand>>,
    subscriptions: HashMap<String, Subscription>,
    heartbeat: Heartbeat,
}

impl Session {
    /// A session for a connection that just opened; the transport writes what `outbound` receives.
    pub fn new(node: Arc<Node>, outbound: Arc<Outbound>, connection: ConnectionInfo) -> Self {
        let c = &node.config.client;
        let heartbeat = Heartbeat::new(
            Instant::now(),
            c.connect_timeout,
            c.ping_interval,
            c.pong_timeout,
        );
        Self {
            node,
            outbound,
            connection,
            state: State::Opened,
            client: String::new(),
            user: String::new(),
            conn_info: None,
            handle: None,
            commands: None,
            subscriptions: HashMap::new(),
            heartbeat,
        }
    }

    /// Runs until the client goes away or a close is decided, then cleans up. The close (if any) is left
    /// in the outbound queue for the writer.
    pub async fn run(mut self, incoming: impl Stream<Item = Incoming>) {
        let mut incoming = std::pin::pin!(incoming);
        let node = self.node.clone();
        let outbound = self.outbound.clone();
        loop {
            let deadline = self.heartbeat.deadline();
            tokio::select! {
                _ = outbound.closed() => break,
                _ = node.shutdown.cancelled() => {
                    outbound.close(Disconnect::SHUTDOWN);
                    break;
                }
                item = incoming.next() => {
                    let Some(item) = item else { break };
                    if let Err(disconnect) = self.handle_incoming(item).await {
                        outbound.close(disconnect);
                        break;
                    }
                }
                Some(command) = next_command(&mut self.commands) => self.handle_session_command(command).await,
                _ = tokio::time::sleep_until(deadline) => {
                    match self.heartbeat.beat(Instant::now()) {
                        Some(Beat::Ping) if self.connection.transport_ping => outbound.push_transport_ping(),
                        Some(Beat::Ping) => { outbound.push(encode::PING); }
                        Some(Beat::Close(disconnect)) => {
                            outbound.close(disconnect);
                            break;
                        }
                        None => {}
                    }
                }
            }
        }
        self.finish().await;
    }

    async fn finish(mut self) {
        let channels: Vec<String> = self.subscriptions.keys().cloned().collect();
        for channel in channels {
            self.leave(&channel).await;
        }
        if self.handle.is_some() {
            self.node.hub.unregister(&self.client, &self.user);
        }
        let remote = self.connection.remote;
        match self.outbound.close_reason() {
            Some(d) if d == Disconnect::SLOW => {
                tracing::warn!(client = %self.client, %remote, "client dropped as slow: outbound queue full")
            }
            Some(d) => {
                tracing::debug!(client = %self.client, %remote, code = d.code, reason = %d.reason, "client disconnected")
            }
            None => tracing::debug!(client = %self.client, %remote, "client went away"),
        }
    }

    async fn handle_incoming(&mut self, item: Incoming) -> Result<(), Disconnect> {
        match item {
            Incoming::Text(bytes) => {
                let text = std::str::from_utf8(&bytes).map_err(|_| Disconnect::INVALID_PAYLOAD)?;
                self.handle_frame(text).await
            }
            Incoming::Binary => {
                tracing::debug!(remote = %self.connection.remote, "binary frame on a JSON connection");
                Err(Disconnect::BAD_REQUEST)
            }
            Incoming::Pong => {
                if self.connection.transport_ping {
                    self.heartbeat.pong();
                }
                Ok(())
            }
            Incoming::TooLarge => Err(Disconnect::MESSAGE_TOO_BIG),
            Incoming::InvalidUtf8 => Err(Disconnect::INVALID_PAYLOAD),
        }
    }

    async fn handle_frame(&mut self, text: &str) -> Result<(), Disconnect> {
        for command in Command::decode_frame(text) {
            let command = command.map_err(|error| {
                tracing::debug!(remote = %self.connection.remote, %error, "bad command");
                Disconnect::BAD_REQUEST
            })?;
            self.handle_command(command).await?;
            if self.outbound.is_closed() {
                break;
            }
        }
        Ok(())
    }

    fn reply(&self, frame: Frame) {
        self.outbound.push(frame);
    }

    fn reply_result(&self, id: u32, result: Result<Frame, ClientError>) {
        match result {
            Ok(frame) => self.reply(frame),
            Err(error) => self.reply(encode::error_reply(id, &error)),
        }
    }

    async fn handle_command(&mut self, command: Command) -> Result<(), Disconnect> {
        let id = command.id;
        match (self.state, command.method) {
            (State::Opened, Method::Connect(request)) => self.connect(id, request),
            (State::Opened, _) | (State::Connected, Method::Connect(_)) => {
                Err(Disconnect::BAD_REQUEST)
            }
            (State::Connected, Method::Pong) => {
                if !self.connection.transport_ping {
                    self.heartbeat.pong();
                }
                Ok(())
            }
            (State::Connected, Method::Subscribe(request)) => self.subscribe(id, request).await,
            (State::Connected, Method::Unsubscribe(ChannelRequest { channel })) => {
                require_channel(&channel)?;
                self.leave(&channel).await;
                self.reply(encode::empty_reply(id, "unsubscribe"));
                Ok(())
            }
            (State::Connected, Method::Publish(request)) => {
                require_channel(&request.channel)?;
                let result = self
                    .publish(request)
                    .await
                    .map(|_| encode::empty_reply(id, "publish"));
                self.reply_result(id, result);
                Ok(())
            }
            (State::Connected, Method::History(request)) => {
                require_channel(&request.channel)?;
                let result = self.history(id, request).await;
                self.reply_result(id, result);
                Ok(())
            }
            (State::Connected, Method::Presence(ChannelRequest { channel })) => {
                require_channel(&channel)?;
                let result = self.presence(id, &channel, false).await;
                self.reply_result(id, result);
                Ok(())
            }
            (State::Connected, Method::PresenceStats(ChannelRequest { channel })) => {
                require_channel(&channel)?;
                let result = self.presence(id, &channel, true).await;
                self.reply_result(id, result);
                Ok(())
            }
            (State::Connected, Method::Send(_)) => {
                tracing::debug!(client = %self.client, "send dropped: no plugin handles messages");
                Ok(())
            }
            (State::Connected, Method::SubRefresh(request)) => {
                require_channel(&request.channel)?;
                self.reply(encode::error_reply(id, &ClientError::NOT_AVAILABLE));
                Ok(())
            }
            (State::Connected, Method::Rpc(_) | Method::Refresh(_) | Method::Ping) => {
                self.reply(encode::error_reply(id, &ClientError::NOT_AVAILABLE));
                Ok(())
            }
        }
    }

    fn connect(&mut self, id: u32, request: ConnectRequest) -> Result<(), Disconnect> {
        if !request.token.is_empty() {
            // Tokens are verified by an auth plugin; without one, a token cannot be trusted.
            tracing::info!(remote = %self.connection.remote, "connect refused: no auth plugin verifies tokens");
            return Err(Disconnect::INVALID_TOKEN);
        }
        if !self.node.config.client.allow_anonymous {
            tracing::debug!(remote = %self.connection.remote, "connect refused: anonymous connections are off");
            return Err(Disconnect::BAD_REQUEST);
        }
        self.client = uuid::Uuid::new_v4().to_string();
        self.user = String::new();
        let (handle, commands) = SessionHandle::new(
            self.client.clone(),
            self.user.clone(),
            self.outbound.clone(),
        );
        self.node.hub.register(handle.clone());
        self.handle = Some(handle);
        self.commands = Some(commands);
        self.state = State::Connected;
        let transport_ping = self.connection.transport_ping;
        let result = encode::ConnectResult {
            client: self.client.clone(),
            version: VERSION.into(),
            ping: if transport_ping {
                0
            } else {
                self.node.config.client.ping_interval.as_secs().max(1) as u32
            },
            pong: !transport_ping,
            ..Default::default()
        };
        self.reply(encode::connect_reply(id, &result));
        self.heartbeat.connected(Instant::now());
        tracing::debug!(client = %self.client, remote = %self.connection.remote, "client connected");
        Ok(())
    }

    fn info(&self, chan_info: Option<Bytes>) -> ClientInfo {
        ClientInfo {
            user: self.user.clone(),
            client: self.client.clone(),
            conn_info: self.conn_info.clone(),
            chan_info,
        }
    }

    fn anonymous(&self) -> bool {
        self.user.is_empty()
    }

    /// The `allow_*_for_client` / `_for_subscriber` / `_for_anonymous` rule shared by publish, history and
    /// presence.
    fn permitted(
        &self,
        channel: &str,
        for_client: bool,
        for_subscriber: bool,
        for_anonymous: bool,
    ) -> bool {
        let granted = for_client || (for_subscriber && self.subscriptions.contains_key(channel));
        granted && (!self.anonymous() || for_anonymous)
    }

    async fn publish(&self, request: ClientPublish) -> Result<StreamPosition, ClientError> {
        let namespace = self.node.namespace(&request.channel)?;
        let o = &namespace.options;
        if !self.permitted(
            &request.channel,
            o.allow_publish_for_client,
            o.allow_publish_for_subscriber,
            o.allow_publish_for_anonymous,
        ) {
            return Err(ClientError::PERMISSION_DENIED);
        }
        let data = request
            .data
            .ok_or_else(|| ClientError::BAD_REQUEST.with_message("data required"))?;
        let chan_info = self
            .subscriptions
            .get(&request.channel)
            .and_then(|s| s.chan_info.clone());
        self.node
            .publish(PublishRequest {
                info: Some(self.info(chan_info)),
                data,
                channel: request.channel,
                ..Default::default()
            })
            .await
    }

    async fn history(&self, id: u32, request: HistoryRequest) -> Result<Frame, ClientError> {
        let namespace: &Namespace = self.node.namespace(&request.channel)?;
        let o = &namespace.options;
        if o.history().is_none() {
            return Err(ClientError::NOT_AVAILABLE);
        }
        if !self.permitted(
            &request.channel,
            o.allow_history_for_client,
            o.allow_history_for_subscriber,
            o.allow_history_for_anonymous,
        ) {
            return Err(ClientError::PERMISSION_DENIED);
        }
        let filter = history_filter(
            &request,
            self.node.config.client.history_max_publication_limit,
        )?;
        let result = self.node.history(&request.channel, &filter).await?;
        Ok(encode::history_reply(
            id,
            &result.publications,
            &result.position,
        ))
    }

    async fn presence(&self, id: u32, channel: &str, stats: bool) -> Result<Frame, ClientError> {
        let o = &self.node.namespace(channel)?.options;
        if !o.presence {
            return Err(ClientError::NOT_AVAILABLE);
        }
        if !self.permitted(
            channel,
            o.allow_presence_for_client,
            o.allow_presence_for_subscriber,
            o.allow_presence_for_anonymous,
        ) {
            return Err(ClientError::PERMISSION_DENIED);
        }
        if stats {
            let s = self.node.presence_stats(channel).await?;
            Ok(encode::presence_stats_reply(id, s.num_clients, s.num_users))
        } else {
            Ok(encode::presence_reply(
                id,
                &self.node.presence(channel).await?,
            ))
        }
    }

    async fn handle_session_command(&mut self, command: SessionCommand) {
        match command {
            SessionCommand::Subscribe { channel } => self.server_subscribe(&channel).await,
            SessionCommand::Unsubscribe { channel } => {
                if self.subscriptions.contains_key(&channel) {
                    self.leave(&channel).await;
                    self.reply(encode::unsubscribe_push(
                        &channel,
                        2000,
                        "server unsubscribe",
                    ));
                }
            }
        }
    }
}

async fn next_command(
    commands: &mut Option<mpsc::UnboundedReceiver<SessionCommand>>,
) -> Option<SessionCommand> {
    match commands {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
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

/// Maps the client's history request onto an engine filter (§8.3 of the wire notes).
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
