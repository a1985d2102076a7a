//! A session: one client connection's protocol state machine.
//!
//! The session reads decoded commands in order, answers each through its bounded [`Outbound`]
//! queue, keeps the heartbeat, owns the connection's subscriptions and cleans them up when the connection
//! ends. It never touches a socket: the transport feeds it [`Incoming`] items and writes what it queues.

pub mod pusher;

mod connect;
mod heartbeat;
mod subscribe;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;

use crate::channel::Namespace;
use crate::disconnect::Disconnect;
use crate::engine::{ClientInfo, HistoryFilter, StreamPosition};
use crate::errors::{ClientError, Refusal};
use crate::hub::{CommandReceiver, SessionCommand, SessionHandle};
use crate::limits::{CommandRate, Verdict};
use crate::node::{Node, PublishRequest, Source};
use crate::plugin::bindings::{AccessKind, DisconnectEvent, Hooks};
use crate::policy::{self, Action, Requester};
use crate::protocol::Frame;
use crate::protocol::centrifuge::command::{
    ChannelRequest, Command, HistoryRequest, Method, PublishRequest as ClientPublish,
};
use crate::protocol::centrifuge::encode;

use crate::outbound::Outbound;
use heartbeat::Heartbeat;

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// Heartbeat with transport ping frames instead of `{}` messages (`cf_ws_frame_ping_pong=true`).
    pub transport_ping: bool,
    /// Headers of the upgrade request (lower-case names), for connect plugins.
    pub headers: Arc<[(String, String)]>,
    /// Query parameters of the upgrade request, for connect plugins.
    pub query: Arc<[(String, String)]>,
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
    node: Arc<Node>,
    outbound: Arc<Outbound>,
    connection: ConnectionInfo,
    state: State,
    client: String,
    user: String,
    conn_info: Option<Bytes>,
    handle: Option<Arc<SessionHandle>>,
    commands: Option<CommandReceiver>,
    subscriptions: HashMap<String, Subscription>,
    heartbeat: Heartbeat,
    /// When the connection expires unless refreshed.
    expires_at: Option<Instant>,
    /// How fast this connection may send commands.
    rate: CommandRate,
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
        let rate = node.admission.command_rate();
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
            rate,
            heartbeat,
            expires_at: None,
        }
    }

    /// Runs until the client goes away or a close is decided, then cleans up. The close (if any) is left
    /// in the outbound queue for the writer.
    pub async fn run(mut self, incoming: impl Stream<Item = Incoming>) {
        let mut incoming = std::pin::pin!(incoming);
        let node = self.node.clone();
        let outbound = self.outbound.clone();
        loop {
            let deadline = self.next_deadline();
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
                // Boxed like commands (see `handle_frame`): rare work must not size every idle connection.
                Some(command) = next_command(&mut self.commands) => Box::pin(self.handle_session_command(command)).await,
                _ = tokio::time::sleep_until(deadline) => {
                    if let Err(disconnect) = Box::pin(self.deadline_passed(Instant::now())).await {
                        outbound.close(disconnect);
                        break;
                    }
                }
            }
        }
        Box::pin(self.finish()).await;
    }

    async fn finish(mut self) {
        if self.state == State::Connected && self.node.plugins.any(Hooks::DISCONNECT) {
            let (code, reason) = match self.outbound.close_reason() {
                Some(d) => (u32::from(d.code), d.reason.into_owned()),
                None => (3000, "connection closed".to_owned()),
            };
            let client = self.plugin_client();
            self.node
                .plugins
                .disconnect(DisconnectEvent {
                    client,
                    code,
                    reason,
                })
                .await;
        }
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
            // Heartbeat answers are not requests; everything else counts against the rate.
            if command.method != Method::Pong {
                match self.rate.check() {
                    Verdict::Allow => {}
                    Verdict::Refuse => {
                        if command.id > 0 {
                            self.reply(encode::error_reply(
                                command.id,
                                &ClientError::TOO_MANY_REQUESTS,
                            ));
                        }
                        continue;
                    }
                    Verdict::Disconnect => {
                        tracing::info!(client = %self.client, remote = %self.connection.remote, "client dropped: too many requests");
                        return Err(Disconnect::TOO_MANY_REQUESTS);
                    }
                }
            }
            // Boxed: commands are rare next to the time a connection spends idle, and their futures
            // (plugin calls, engine round trips) would otherwise make every idle connection several KiB.
            Box::pin(self.handle_command(command)).await?;
            if self.outbound.is_closed() {
                break;
            }
        }
        Ok(())
    }

    fn reply(&self, frame: Frame) {
        self.outbound.push(frame);
    }

    /// Queues the reply, or the error; a refusal that closes the connection is returned.
    fn reply_result(&self, id: u32, result: Result<Frame, Refusal>) -> Result<(), Disconnect> {
        match result {
            Ok(frame) => self.reply(frame),
            Err(Refusal::Error(error)) => self.reply(encode::error_reply(id, &error)),
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
                self.reply(encode::error_reply(id, &ClientError::NOT_AVAILABLE));
                Ok(())
            }
        }
    }

    fn info(&self, chan_info: Option<Bytes>) -> ClientInfo {
        ClientInfo {
            user: self.user.clone(),
            client: self.client.clone(),
            conn_info: self.conn_info.clone(),
            chan_info,
        }
    }

    /// Who this connection is to the channel policy, for `channel`.
    fn requester(&self, channel: &str, vouched: bool) -> Requester<'_> {
        Requester {
            user: &self.user,
            subscribed: self.subscriptions.contains_key(channel),
            vouched,
        }
    }

    async fn publish(&self, request: ClientPublish) -> Result<StreamPosition, Refusal> {
        let namespace = self.node.namespace(&request.channel)?;
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
            .subscriptions
            .get(&request.channel)
            .and_then(|s| s.chan_info.clone());
        self.node
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
        let namespace: &Namespace = self.node.namespace(&request.channel)?;
        let o = &namespace.options;
        if o.history().is_none() {
            return Err(ClientError::NOT_AVAILABLE.into());
        }
        let grant = self
            .may_read(&request.channel, o, AccessKind::History)
            .await?;
        let filter = history_filter(
            &request,
            self.node.config.client.history_max_publication_limit,
        )?;
        let result = self.node.history(&request.channel, &filter, grant).await?;
        Ok(encode::history_reply(
            id,
            &result.publications,
            &result.position,
        ))
    }

    async fn presence(&self, id: u32, channel: &str, stats: bool) -> Result<Frame, Refusal> {
        let o = &self.node.namespace(channel)?.options;
        if !o.presence {
            return Err(ClientError::NOT_AVAILABLE.into());
        }
        let grant = self.may_read(channel, o, AccessKind::Presence).await?;
        if stats {
            let s = self.node.presence_stats(channel, grant).await?;
            Ok(encode::presence_stats_reply(id, s.num_clients, s.num_users))
        } else {
            Ok(encode::presence_reply(
                id,
                &self.node.presence(channel, grant).await?,
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
            SessionCommand::Resubscribe { channel } => {
                let Some(subscription) = self.subscriptions.get(&channel) else {
                    return;
                };
                if subscription.server_side {
                    // A server-side subscription comes back only with a new connection (and recovers there).
                    self.outbound.close(Disconnect::INSUFFICIENT_STATE);
                    return;
                }
                self.leave(&channel).await;
                self.reply(encode::unsubscribe_push(
                    &channel,
                    2500,
                    "insufficient state",
                ));
            }
        }
    }
}

async fn next_command(commands: &mut Option<CommandReceiver>) -> Option<SessionCommand> {
    match commands {
        Some(rx) => Some(rx.recv().await),
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
