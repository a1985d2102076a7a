//! A Pusher session: one pusher-js (or other Pusher protocol v7) connection's state machine.
//!
//! It runs on the connection skeleton and shares everything below the protocol with the Centrifugo
//! session — the outbound queue, the hub's fan-out, the node — and differs in what a connection is: no
//! connect command (the socket id is sent at once), channels authorised by the app backend's signatures
//! instead of tokens, liveness by the client's activity, and `client-*` events relayed to the other
//! members of private channels.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use tokio::time::Instant;

use crate::channel::{ChannelKind, unscoped};
use crate::config::PusherAppConfig;
use crate::disconnect::Disconnect;
use crate::errors::Refusal;
use crate::estate::Owed;
use crate::hub::{ClientId, DeliveryGate, SessionCommand, SessionHandle};
use crate::node::{ClientInfo, HistoryFilter, Node, PublishRequest, Source, plugin_client_info};
use crate::outbound::Outbound;
use crate::plugin::bindings::{self, Hooks};
use crate::plugin::chain::Decision;
use crate::policy::{self, Action, Denied, Grant, Requester};
use crate::protocol::pusher::codec::{self, ClientMessage};
use crate::protocol::pusher::{close, sign};
use crate::protocol::{Frame, Protocol};
use crate::pusher_app::{AppConnection, PusherApp};
use crate::webhooks::WebhookEvent;

use super::skeleton::{self, Connection, Decisions, Wants};
use super::{ConnectionInfo, Incoming};

/// Longest `client-*` event name (Pusher's limit).
const MAX_EVENT_NAME: usize = 200;

/// A refused subscription: the `type`, message and status of `pusher:subscription_error`.
type Refused = (&'static str, String, u16);

fn unavailable() -> Refused {
    (
        "ServerError",
        "the server cannot subscribe right now, try again".into(),
        503,
    )
}

/// Presence `channel_data`: `{"user_id": string or number, "user_info": any JSON}`, as user id and the
/// compact `user_info` text.
fn parse_channel_data(channel_data: &str) -> Result<(String, Option<Bytes>), String> {
    #[derive(serde::Deserialize)]
    struct ChannelData {
        user_id: serde_json::Value,
        #[serde(default)]
        user_info: Option<Box<serde_json::value::RawValue>>,
    }
    let data: ChannelData = serde_json::from_str(channel_data)
        .map_err(|error| format!("channel_data must be JSON with a user_id: {error}"))?;
    let user = match data.user_id {
        serde_json::Value::String(id) if !id.is_empty() => id,
        serde_json::Value::Number(id) => id.to_string(),
        _ => return Err("user_id must be a non-empty string or a number".into()),
    };
    let info = data
        .user_info
        .map(|info| crate::protocol::compact_json(info.get()));
    Ok((user, info))
}

/// The `id` of sign-in `user_data`: a non-empty string (pusher-js insists) or a number.
fn user_id(user_data: &str) -> Option<String> {
    let data: serde_json::Value = serde_json::from_str(user_data).ok()?;
    match &data["id"] {
        serde_json::Value::String(id) if !id.is_empty() => Some(id.clone()),
        serde_json::Value::Number(id) => Some(id.to_string()),
        _ => None,
    }
}

/// Members by user (a user with several connections counts once), ordered by user id.
fn members(present: &HashMap<String, ClientInfo>) -> Vec<(String, Option<String>)> {
    let mut by_user: std::collections::BTreeMap<&str, Option<String>> = Default::default();
    for info in present.values() {
        by_user.entry(&info.user).or_insert_with(|| {
            info.conn_info
                .as_deref()
                .and_then(|i| std::str::from_utf8(i).ok())
                .map(str::to_owned)
        });
    }
    by_user
        .into_iter()
        .map(|(user, info)| (user.to_owned(), info))
        .collect()
}

/// A channel's name as the app's clients know it: without the app's space.
fn local(channel: &str) -> &str {
    unscoped(channel).1
}

/// One Pusher connection's state. Channels and users are named as Herald knows them — in the app's space
/// (see [`PusherApp::channel`]) — and as the app's clients know them only in frames, signatures and
/// webhooks.
pub struct PusherSession {
    /// Its subscriptions are by channel, with this connection's membership for presence channels.
    conn: Connection<Option<ClientInfo>>,
    /// The app whose key the client connected with.
    app: Arc<PusherApp>,
    /// Holds the connection's place in the app's `max_connections`.
    _counted: AppConnection,
    /// The upgrade request's headers and query, for the connect plugins; dropped once they have run, so
    /// an idle connection does not keep a browser's headers.
    upgrade: Option<ConnectionInfo>,
    handle: Arc<SessionHandle>,
    /// When the client last sent anything, WebSocket control frames included.
    last_heard: Instant,
    /// When the server's unanswered ping went out.
    pinged_at: Option<Instant>,
}

impl PusherSession {
    /// A session for a connection that just opened on `app`'s key, `counted` among its connections.
    pub fn new(
        node: Arc<Node>,
        app: Arc<PusherApp>,
        counted: AppConnection,
        outbound: Arc<Outbound>,
        connection: ConnectionInfo,
    ) -> Self {
        let (handle, commands) =
            SessionHandle::new(new_socket_id(), String::new(), outbound.clone());
        let mut conn = Connection::new(
            node,
            outbound,
            connection.remote,
            Protocol::Pusher,
            connection.transport,
        );
        conn.commands = Some(commands);
        Self {
            conn,
            app,
            _counted: counted,
            upgrade: Some(connection),
            handle,
            last_heard: Instant::now(),
            pinged_at: None,
        }
    }

    fn socket_id(&self) -> &str {
        &self.handle.client
    }

    fn config(&self) -> Arc<PusherAppConfig> {
        self.app.config()
    }

    /// The user the connection is signed in as, as the app knows it.
    fn user(&self) -> &str {
        unscoped(&self.handle.user).1
    }

    /// The connection as plugins and publications see it.
    fn info(&self) -> ClientInfo {
        ClientInfo {
            user: self.user().to_owned(),
            client: self.socket_id().to_owned(),
            conn_info: None,
            chan_info: None,
        }
    }

    /// Runs until the client goes away or a close is decided, then cleans up; the close is left in the
    /// outbound queue for the writer.
    // What an `async fn` is, written out: an `async fn` here would keep a second copy of the session in
    // its future for the connection's whole life (see `skeleton::run`).
    pub fn run(self, incoming: impl Stream<Item = Incoming>) -> impl Future<Output = ()> {
        skeleton::run(self, incoming)
    }

    /// The connect plugins see every Pusher connection as it opens (protocol `pusher`, no token: Pusher
    /// authorises channels, not connections). A denial closes it with the Pusher form of the code; an
    /// identity makes it that user's, as a sign-in would.
    async fn connect_hook(&mut self) -> Result<(), Disconnect> {
        let plugins = self.conn.node.plugins.clone();
        let Some(upgrade) = self.upgrade.take() else {
            return Ok(());
        };
        if !plugins.any(Hooks::CONNECT) {
            return Ok(());
        }
        let request = bindings::ConnectRequest {
            transport: "websocket".into(),
            protocol: "pusher".into(),
            remote_addr: self.conn.remote.to_string(),
            headers: upgrade.headers.to_vec(),
            query: upgrade.query.to_vec(),
            token: String::new(),
            data: None,
            client: self.socket_id().to_owned(),
            refresh: false,
            user: String::new(),
        };
        match plugins.connect(request).await {
            Decision::Undecided => Ok(()),
            Decision::Allowed(identity) => {
                self.handle = self.handle.with_user(self.app.user(&identity.user));
                Ok(())
            }
            Decision::Denied(deny) => {
                tracing::info!(remote = %self.conn.remote, code = deny.code, reason = %deny.reason, "pusher connection denied by plugin");
                let disconnect = match Refusal::from_code(deny.code, deny.reason) {
                    Refusal::Disconnect(disconnect) => disconnect,
                    Refusal::Error(error) => Disconnect {
                        reason: error.message,
                        ..close::UNAUTHORIZED
                    },
                };
                Err(close::for_pusher(disconnect))
            }
        }
    }

    async fn handle_text(&mut self, text: &str) -> Result<(), Disconnect> {
        let message = match codec::decode(text) {
            Ok(message) => message,
            Err(error) => {
                // Liberal, as the Pusher clients in the wild need: say what was wrong, keep the connection.
                tracing::debug!(socket_id = %self.socket_id(), %error, "bad pusher message");
                self.conn
                    .outbound
                    .push(codec::error(None, &format!("invalid message: {error}")));
                return Ok(());
            }
        };
        self.conn.handling(message.name());
        // Heartbeats are not requests; everything else counts against the rate.
        if !matches!(message, ClientMessage::Ping | ClientMessage::Pong)
            && !self.conn.within_rate(&self.handle.client)?
        {
            self.conn.command_failed(4301);
            self.conn
                .outbound
                .push(codec::error(Some(4301), "rate limit exceeded"));
            return Ok(());
        }
        match message {
            ClientMessage::Ping => {
                self.conn.outbound.push(codec::pong());
            }
            ClientMessage::Pong => {}
            // A name from the client is checked before it is put in the app's space, so no client names a
            // channel of another space.
            ClientMessage::Subscribe { channel, .. } if !self.valid_name(&channel) => {
                let refused = (
                    "InvalidChannel",
                    format!("invalid channel name {channel:?}"),
                    400,
                );
                let frame = self.refused(&channel, refused);
                self.conn.outbound.push(frame);
            }
            ClientMessage::Subscribe {
                channel,
                auth,
                channel_data,
            } => {
                let channel = self.app.channel(&channel);
                self.subscribe(channel, auth, channel_data).await;
            }
            ClientMessage::Unsubscribe { channel } => {
                if self.valid_name(&channel) {
                    self.unsubscribe(&self.app.channel(&channel)).await;
                }
            }
            ClientMessage::ClientEvent { channel, .. } if !self.valid_name(&channel) => {
                self.conn.command_failed(4301);
                self.conn
                    .outbound
                    .push(codec::error(Some(4301), "invalid channel name"));
            }
            ClientMessage::ClientEvent {
                event,
                channel,
                data,
            } => {
                let channel = self.app.channel(&channel);
                self.client_event(event, channel, data).await;
            }
            ClientMessage::Signin { auth, user_data } => self.signin(&auth, &user_data),
            ClientMessage::Other { event } => {
                tracing::debug!(socket_id = %self.socket_id(), event, "unknown pusher event ignored");
            }
        }
        Ok(())
    }

    /// Whether the client may name `channel`: Pusher's characters and the app's length.
    fn valid_name(&self, channel: &str) -> bool {
        codec::valid_channel_name(channel, self.config().max_channel_name_length)
    }

    async fn subscribe(
        &mut self,
        channel: String,
        auth: Option<String>,
        channel_data: Option<String>,
    ) {
        if let Some(member) = self.conn.subscriptions.get(&channel) {
            // Idempotent, and a member is not announced twice.
            let again = match member {
                Some(_) => match self.roster(&channel).await {
                    Ok(members) => {
                        codec::presence_subscription_succeeded(local(&channel), &members)
                    }
                    Err(refused) => self.refused(&channel, refused),
                },
                None => codec::subscription_succeeded(local(&channel)),
            };
            self.conn.outbound.push(again);
            return;
        }
        let (member, admitted) = match self.authorize(&channel, auth, channel_data).await {
            Ok(admission) => admission,
            Err(refused) => {
                let frame = self.refused(&channel, refused);
                self.conn.outbound.push(frame);
                return;
            }
        };
        let reply = match &member {
            Some(member) => self.join(&channel, member, admitted).await,
            None => self
                .conn
                .open(&self.handle, &channel, Wants::default(), admitted)
                .await
                .map(|gate| (gate, codec::subscription_succeeded(local(&channel))))
                .map_err(|_| unavailable()),
        };
        match reply {
            Ok((gate, reply)) => {
                let cached = match codec::is_cache_channel(local(&channel)) {
                    true => Some(self.cached_event(&channel, admitted).await),
                    false => None,
                };
                // Not positioned: whatever arrived while subscribing follows the confirmation.
                let _ = gate.open(
                    &self.conn.outbound,
                    std::iter::once(reply).chain(cached),
                    None,
                );
                self.conn.add_subscription(channel, member);
            }
            Err(refused) => {
                let frame = self.refused(&channel, refused);
                self.conn.outbound.push(frame);
            }
        }
    }

    /// What a new subscriber of a cache channel gets after its confirmation: the channel's last triggered
    /// event (kept as its one-entry history), or `pusher:cache_miss` (and the `cache_miss` webhook).
    async fn cached_event(&self, channel: &str, admitted: Grant) -> Frame {
        let last = HistoryFilter {
            since: None,
            limit: Some(1),
            reverse: true,
        };
        let found = self
            .conn
            .node
            .history(channel, &last, admitted)
            .await
            .map_err(|error| {
                tracing::warn!(channel, %error, "cache channel read failed");
            });
        if let Ok(Some(publication)) = found.map(|found| found.publications.first().cloned()) {
            return codec::publication(local(channel), &publication);
        }
        self.app.webhooks().send(WebhookEvent::CacheMiss {
            channel: local(channel).to_owned(),
        });
        codec::cache_miss(local(channel))
    }

    /// The `pusher:subscription_error` for a refusal, logged.
    fn refused(&self, channel: &str, (kind, message, status): Refused) -> Frame {
        tracing::debug!(socket_id = %self.socket_id(), channel, message, "pusher subscription refused");
        self.conn.command_failed(u32::from(status));
        codec::subscription_error(local(channel), kind, &message, status)
    }

    /// Joins a presence channel: subscribes, enters the roster (on every node) and
    /// announces the member to the others when it is the user's first connection there. Returns the held
    /// gate and the confirmation with the roster, the joiner included.
    async fn join(
        &self,
        channel: &str,
        member: &ClientInfo,
        admitted: Grant,
    ) -> Result<(Arc<DeliveryGate>, Frame), Refused> {
        let node = &self.conn.node;
        // Whether the user is already there and how many users are: asked without reading the roster.
        let (returning, users) =
            node.roster_size(channel, &member.user)
                .await
                .map_err(|error| {
                    tracing::warn!(channel, %error, "presence read failed");
                    unavailable()
                })?;
        let max = self.config().max_presence_members;
        if !returning && users >= max {
            return Err((
                "LimitReached",
                format!("presence channel is full ({max} members)"),
                4100,
            ));
        }
        let gate = self
            .conn
            .open(
                &self.handle,
                channel,
                Wants {
                    join_leave: true,
                    delta: false,
                },
                admitted,
            )
            .await
            .map_err(|_| unavailable())?;
        let (entered, owed) = tokio::join!(
            node.enter_presence(channel, member.clone(), admitted),
            node.owe(channel, member, Owed::LastOfUser)
        );
        if let Err(error) = owed {
            tracing::warn!(channel, %error, "departure not recorded for a crash");
        }
        if let Err(error) = entered {
            tracing::warn!(channel, %error, "presence update failed");
            if let Err(error) = node.settled(channel, &member.client).await {
                tracing::warn!(channel, %error, "departure record not removed");
            }
            self.conn.close(channel, &self.handle.client).await;
            return Err(unavailable());
        }
        // A failed read still confirms, with the joiner alone in the roster.
        let mut present = node.members(channel).await.unwrap_or_else(|error| {
            tracing::warn!(channel, %error, "presence read failed");
            HashMap::new()
        });
        present.insert(member.client.clone(), member.clone());
        let members = members(&present);
        if !returning {
            self.app.webhooks().send(WebhookEvent::MemberAdded {
                channel: local(channel).to_owned(),
                user_id: member.user.clone(),
            });
        }
        if !returning && let Err(error) = node.announce_join(channel, member.clone()).await {
            tracing::warn!(channel, %error, "member_added broadcast failed");
        }
        Ok((
            gate,
            codec::presence_subscription_succeeded(local(channel), &members),
        ))
    }

    /// The channel's members, one per user, ordered by user id.
    async fn roster(&self, channel: &str) -> Result<Vec<(String, Option<String>)>, Refused> {
        let present = self.conn.node.members(channel).await.map_err(|error| {
            tracing::warn!(channel, %error, "presence read failed");
            unavailable()
        })?;
        Ok(members(&present))
    }

    /// Why a subscription is refused, or the membership a presence channel's `channel_data` declares.
    /// The subscribe plugins decide first; when they all pass, Pusher's rules do ([`Self::may_subscribe`]).
    async fn authorize(
        &self,
        channel: &str,
        auth: Option<String>,
        channel_data: Option<String>,
    ) -> Result<(Option<ClientInfo>, Grant), Refused> {
        let max_channels = self.conn.node.config.client.max_channels;
        if !self.valid_name(local(channel)) {
            return Err((
                "InvalidChannel",
                format!("invalid channel name {channel:?}"),
                400,
            ));
        }
        if self.conn.subscriptions_full() {
            return Err((
                "LimitReached",
                format!("at most {max_channels} channels per connection"),
                400,
            ));
        }
        let plugins = &self.conn.node.plugins;
        if !plugins.any(Hooks::SUBSCRIBE) {
            return self.may_subscribe(channel, auth, channel_data, false);
        }
        let request = bindings::SubscribeRequest {
            client: plugin_client_info(&self.info()),
            channel: channel.to_owned(),
            token: auth.clone().unwrap_or_default(),
            data: channel_data.as_ref().map(|d| d.clone().into_bytes()),
            refresh: false,
        };
        match plugins.subscribe(request).await {
            Decision::Denied(deny) => Err((
                "AuthError",
                deny.reason,
                u16::try_from(deny.code).unwrap_or(403),
            )),
            Decision::Allowed(_) => self.may_subscribe(channel, auth, channel_data, true),
            Decision::Undecided => self.may_subscribe(channel, auth, channel_data, false),
        }
    }

    /// Pusher's part of a subscription — the reserved `#` names, the app backend's signature and a presence
    /// member's `channel_data` — then the channel policy, with the signature (or `granted`, a plugin's allow)
    /// vouching for the client. Returns the presence membership, if any, and the policy's admission.
    fn may_subscribe(
        &self,
        channel: &str,
        auth: Option<String>,
        channel_data: Option<String>,
        granted: bool,
    ) -> Result<(Option<ClientInfo>, Grant), Refused> {
        let config = self.config();
        let kind = ChannelKind::of(channel);
        if local(channel).starts_with('#') && !matches!(kind, ChannelKind::ServerToUser(_)) {
            return Err((
                "InvalidChannel",
                "channels starting with # are reserved".into(),
                400,
            ));
        }
        let options = &self
            .conn
            .node
            .namespace(channel)
            .map_err(|error| ("InvalidChannel", error.message.into_owned(), 400))?
            .options;
        let presence = kind == ChannelKind::Presence;
        // Only presence signatures cover channel_data; a private channel's stray channel_data is ignored.
        let signed_data = if presence {
            channel_data.as_deref()
        } else {
            None
        };
        let signed = granted
            || (matches!(
                kind,
                ChannelKind::Private | ChannelKind::PrivateEncrypted | ChannelKind::Presence
            ) && auth.is_some_and(|auth| {
                sign::channel_auth_valid(
                    &config.key,
                    config.secret.expose(),
                    self.socket_id(),
                    local(channel),
                    signed_data,
                    &auth,
                )
            }));
        let member = if presence && signed {
            let (user, user_info) = parse_channel_data(channel_data.as_deref().unwrap_or_default())
                .map_err(|message| ("InvalidChannelData", message, 400))?;
            if user_info.as_ref().map_or(0, Bytes::len) > config.max_presence_user_info_bytes {
                return Err((
                    "LimitReached",
                    format!(
                        "user_info is larger than {} bytes",
                        config.max_presence_user_info_bytes
                    ),
                    413,
                ));
            }
            Some(ClientInfo {
                user,
                client: self.socket_id().to_owned(),
                conn_info: user_info,
                chan_info: None,
            })
        } else {
            None
        };
        let requester = Requester {
            user: member.as_ref().map_or(self.user(), |m| &m.user),
            subscribed: false,
            vouched: signed,
        };
        let admitted = policy::authorize(channel, options, Action::Subscribe, requester).map_err(
            |denied| match denied {
                Denied::NotVouched => (
                    "AuthError",
                    format!(
                        "invalid signature for {} on socket {}",
                        local(channel),
                        self.socket_id()
                    ),
                    401,
                ),
                Denied::OtherUser => (
                    "AuthError",
                    "server-to-user channels are for the connection signed in as that user".into(),
                    401,
                ),
                denied => ("AuthError", denied.message().into(), 403),
            },
        )?;
        Ok((member, admitted))
    }

    async fn leave_roster(&self, channel: &str, member: ClientInfo) {
        let node = &self.conn.node;
        let client = member.client.clone();
        if let Err(error) = node.leave_presence(channel, &client).await {
            tracing::warn!(channel, %error, "presence removal failed");
        }
        if let Err(error) = node.pusher_member_left(channel, member).await {
            tracing::warn!(channel, %error, "member_removed not announced");
        }
        if let Err(error) = node.settled(channel, &client).await {
            tracing::warn!(channel, %error, "departure record not removed");
        }
    }

    /// Pusher's rules for a client event (client events on, private and presence channels only, sizes),
    /// then the channel policy, for which the app's `client_events` setting vouches; the refusal's message.
    fn may_send(
        &self,
        event: &str,
        channel: &str,
        data: Option<&str>,
        member: Option<&ClientInfo>,
    ) -> Result<Grant, &'static str> {
        let kind = ChannelKind::of(channel);
        if !self.config().client_events {
            return Err("client events are not enabled");
        }
        if kind == ChannelKind::PrivateEncrypted {
            return Err("client events cannot be sent on encrypted channels");
        }
        if !matches!(kind, ChannelKind::Private | ChannelKind::Presence) {
            return Err("client events are only allowed on private and presence channels");
        }
        if !self.conn.subscriptions.contains_key(channel) {
            return Err("client events need a subscription to the channel");
        }
        if event.len() > MAX_EVENT_NAME {
            return Err("event name too long");
        }
        if data.map_or(0, str::len) > self.config().max_event_bytes {
            return Err("event data too large");
        }
        let options = &self
            .conn
            .node
            .namespace(channel)
            .map_err(|_| "invalid channel name")?
            .options;
        let requester = Requester {
            user: member.map_or(self.user(), |m| &m.user),
            subscribed: true,
            vouched: true,
        };
        let granted = policy::authorize(channel, options, Action::Publish, requester)
            .map_err(Denied::message)?;
        if !self.app.client_event_allowed() {
            return Err("the app's client event rate is exceeded");
        }
        Ok(granted)
    }

    /// Relays a `client-*` event to the channel's other subscribers, on every node.
    async fn client_event(&mut self, event: String, channel: String, data: Option<String>) {
        let member = self.conn.subscriptions.get(&channel).cloned().flatten();
        let granted = match self.may_send(&event, &channel, data.as_deref(), member.as_ref()) {
            Ok(granted) => granted,
            Err(message) => {
                self.conn.command_failed(4301);
                self.conn.outbound.push(codec::error(Some(4301), message));
                return;
            }
        };
        // On a presence channel the others learn which member sent it.
        let mut tags: std::collections::BTreeMap<String, String> = [
            (codec::EVENT_TAG.to_owned(), event.clone()),
            (codec::EXCLUDE_TAG.to_owned(), self.socket_id().to_owned()),
        ]
        .into();
        if let Some(member) = &member {
            tags.insert(codec::USER_ID_TAG.to_owned(), member.user.clone());
        }
        let published = self
            .conn
            .node
            .publish(PublishRequest {
                channel: channel.clone(),
                data: data
                    .clone()
                    .map_or(Bytes::from_static(b"null"), Bytes::from),
                info: Some(self.info()),
                tags,
                // Pusher keeps no client events: they are relayed, never replayed.
                skip_history: true,
                source: Source::Client(granted),
                idempotency_key: None,
            })
            .await;
        match published {
            Ok(_) => self.app.webhooks().send(WebhookEvent::ClientEvent {
                channel: local(&channel).to_owned(),
                event,
                data,
                socket_id: self.socket_id().to_owned(),
                user_id: member.map(|member| member.user),
            }),
            Err(error) => {
                let refusal = Refusal::from(error);
                tracing::debug!(socket_id = %self.socket_id(), ?refusal, "client event refused");
                self.conn.command_failed(4301);
                self.conn
                    .outbound
                    .push(codec::error(Some(4301), "client event refused"));
            }
        }
    }

    /// `pusher:signin`: the app backend's signature over `user_data` makes this connection its user's, for
    /// `terminate_connections` and the user's `#server-to-user-{id}` channel. A refused sign-in closes the
    /// connection with 4009, as Pusher does.
    fn signin(&mut self, auth: &str, user_data: &str) {
        let config = self.config();
        let signed = sign::user_auth_valid(
            &config.key,
            config.secret.expose(),
            self.socket_id(),
            user_data,
            auth,
        );
        let user = signed.then(|| user_id(user_data)).flatten();
        let Some(user) = user else {
            tracing::info!(socket_id = %self.socket_id(), remote = %self.conn.remote, "pusher sign-in refused");
            self.conn
                .outbound
                .push(codec::error(Some(4009), "Connection not authorized."));
            self.conn.outbound.close(close::UNAUTHORIZED);
            return;
        };
        let hub = &self.conn.node.hub;
        hub.unregister(&self.handle.client, &self.handle.user);
        self.handle = self.handle.with_user(self.app.user(&user));
        hub.register(self.handle.clone());
        self.conn.outbound.push(codec::signin_success(user_data));
    }
}

impl Decisions for PusherSession {
    type Subscription = Option<ClientInfo>;

    /// Every Pusher connection that opened (past the connect plugins) counts as connected.
    fn connected_client(&self) -> Option<bindings::ClientInfo> {
        Some(plugin_client_info(&self.info()))
    }

    fn connection(&self) -> &Connection<Option<ClientInfo>> {
        &self.conn
    }

    fn connection_mut(&mut self) -> &mut Connection<Option<ClientInfo>> {
        &mut self.conn
    }

    fn handle(&self) -> Option<&Arc<SessionHandle>> {
        Some(&self.handle)
    }

    /// The connect hook, then the socket id goes out at once: a Pusher connection has no connect command.
    async fn opened(&mut self) -> Result<(), Disconnect> {
        if let Err(refused) = self.connect_hook().await {
            self.conn
                .outbound
                .push(codec::error(Some(refused.code), &refused.reason));
            return Err(refused);
        }
        self.conn.node.hub.register(self.handle.clone());
        self.conn.outbound.push(codec::connection_established(
            self.socket_id(),
            self.conn.node.config.pusher.activity_timeout.as_secs(),
        ));
        tracing::debug!(socket_id = %self.socket_id(), remote = %self.conn.remote, "pusher client connected");
        Ok(())
    }

    /// The next liveness check: the pong deadline after a ping, else the end of the allowed silence.
    fn deadline(&self) -> Instant {
        match self.pinged_at {
            Some(pinged) => pinged + self.conn.node.config.pusher.pong_timeout,
            None => self.last_heard + self.conn.node.config.pusher.activity_timeout,
        }
    }

    async fn incoming(&mut self, item: Incoming) -> Result<(), Disconnect> {
        // Anything at all shows the client alive.
        self.last_heard = Instant::now();
        self.pinged_at = None;
        match item {
            Incoming::Text(bytes) => {
                let Ok(text) = std::str::from_utf8(&bytes) else {
                    return Err(Disconnect::INVALID_PAYLOAD);
                };
                self.handle_text(text).await
            }
            // Pusher has no binary messages; a client sending one gets told, the connection stays.
            Incoming::Binary(_) => {
                self.conn
                    .outbound
                    .push(codec::error(None, "binary messages are not supported"));
                Ok(())
            }
            Incoming::Pong => Ok(()),
            Incoming::TooLarge => Err(Disconnect::MESSAGE_TOO_BIG),
            Incoming::InvalidUtf8 => Err(Disconnect::INVALID_PAYLOAD),
        }
    }

    async fn command(&mut self, command: SessionCommand) {
        match command {
            SessionCommand::Unsubscribe { channel } => {
                self.unsubscribe(&channel).await;
            }
            // Pusher connections do not expire: only an explicit `expired` ends one.
            SessionCommand::Refresh { expired, .. } => {
                if expired {
                    self.conn.outbound.close(Disconnect::CONNECTION_EXPIRED);
                }
            }
            // Server-side subscriptions and recovery are Centrifugo protocol features.
            SessionCommand::Subscribe(_) | SessionCommand::Resubscribe { .. } => {}
        }
    }

    /// Silent too long: ping; still silent after the ping: close.
    async fn deadline_passed(&mut self, now: Instant) -> Result<(), Disconnect> {
        if self.pinged_at.is_some() {
            self.conn
                .outbound
                .push(codec::error(Some(4201), "Pong reply not received"));
            return Err(close::PONG_TIMEOUT);
        }
        self.conn.outbound.push(codec::ping());
        self.pinged_at = Some(now);
        Ok(())
    }

    /// Out of the roster, announcing the member's departure when it was the user's last connection there,
    /// then out of the hub (and the node's channels, for its last subscriber).
    async fn leave(&mut self, channel: &str, member: Option<ClientInfo>) {
        // The member leaves before the channel may be vacated: the app hears of them in that order.
        if let Some(member) = member {
            self.leave_roster(channel, member).await;
        }
        self.conn.close(channel, &self.handle.client).await;
    }
}

/// A new socket id: two random unsigned integers joined by a dot. The Pusher server libraries check the
/// `^\d+\.\d+$` shape; randomness from the thread's CSPRNG keeps it unguessable, and the channel
/// signatures the app backend makes bind to it.
fn new_socket_id() -> ClientId {
    let (a, b): (u32, u32) = (rand::random(), rand::random());
    format!("{a}.{b}").into()
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
}
