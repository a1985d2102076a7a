//! Authentication and the other plugin-decided commands of a session: connect and refresh (the connect
//! hook), RPC, history/presence access, and the expiry of connections and subscriptions.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::channel::NamespaceOptions;
use crate::disconnect::Disconnect;
use crate::engine::StreamPosition;
use crate::errors::{ClientError, Refusal};
use crate::hub::{ClientId, ServerSubscribe, SessionHandle};
use crate::node::{VERSION, plugin_client_info, valid_json};
use crate::plugin::bindings::{self, AccessKind, ConnectAllow, Hooks};
use crate::plugin::chain::{Decision, RpcDecision};
use crate::policy::{self, Action, Grant};
use crate::protocol::Frame;
use crate::protocol::centrifuge::command::{
    ConnectRequest, RefreshRequest, RpcRequest, SubRefreshRequest,
};
use crate::protocol::centrifuge::encode::ConnectResult;

use super::heartbeat::Beat;
use super::skeleton::Decisions;
use super::{Session, State};

/// Seconds from now until `expire_at` (unix seconds); `None` when it has already passed.
pub(super) fn ttl_until(expire_at: u64) -> Option<u32> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    (expire_at > now).then(|| (expire_at - now).min(u64::from(u32::MAX)) as u32)
}

/// Payload a plugin returned, as JSON for the client; a plugin that returns non-JSON is logged and ignored.
pub(super) fn plugin_json(data: Option<Vec<u8>>, what: &str) -> Option<Bytes> {
    let data = data?;
    match valid_json(data) {
        Ok(json) => Some(json),
        Err(error) => {
            tracing::warn!(what, %error, "plugin returned invalid JSON; ignored");
            None
        }
    }
}

impl Session {
    /// The connection as plugins see it.
    pub(super) fn plugin_client(&self) -> bindings::ClientInfo {
        plugin_client_info(&self.info(None))
    }

    fn connect_request(
        &self,
        token: &str,
        data: Option<&Bytes>,
        refresh: bool,
    ) -> bindings::ConnectRequest {
        bindings::ConnectRequest {
            transport: self.transport.into(),
            protocol: "centrifuge".into(),
            remote_addr: self.conn.remote.to_string(),
            headers: self.headers.to_vec(),
            query: self.query.to_vec(),
            token: token.to_owned(),
            data: data.map(|d| d.to_vec()),
            client: self.client.to_string(),
            refresh,
            user: if refresh {
                self.user.clone()
            } else {
                String::new()
            },
        }
    }

    pub(super) async fn connect(
        &mut self,
        id: u32,
        request: ConnectRequest,
    ) -> Result<(), Disconnect> {
        let mut buffer = uuid::Uuid::encode_buffer();
        self.client = ClientId::from(&*uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer));
        let plugins = self.conn.node.plugins.clone();
        let decision = if plugins.any(Hooks::CONNECT) {
            plugins
                .connect(self.connect_request(&request.token, request.data.as_ref(), false))
                .await
        } else {
            Decision::Undecided
        };
        let identity = match decision {
            Decision::Allowed(identity) => identity,
            Decision::Denied(deny) => {
                tracing::info!(remote = %self.conn.remote, code = deny.code, reason = %deny.reason, "connect denied by plugin");
                return self.refuse_connect(id, Refusal::from_code(deny.code, deny.reason));
            }
            Decision::Undecided if !request.token.is_empty() => {
                tracing::info!(remote = %self.conn.remote, "connect refused: no plugin accepted the token");
                return Err(Disconnect::INVALID_TOKEN);
            }
            Decision::Undecided if !self.conn.node.config.client.allow_anonymous => {
                tracing::debug!(remote = %self.conn.remote, "connect refused: anonymous connections are off");
                return Err(Disconnect::BAD_REQUEST);
            }
            Decision::Undecided => ConnectAllow {
                user: String::new(),
                info: None,
                channels: vec![],
                expire_at: None,
                data: None,
            },
        };
        let ttl = match identity.expire_at.filter(|at| *at > 0) {
            Some(at) => match ttl_until(at) {
                Some(ttl) => Some(ttl),
                None => return self.refuse_connect(id, ClientError::TOKEN_EXPIRED.into()),
            },
            None => None,
        };
        self.user = identity.user;
        self.conn_info = plugin_json(identity.info, "connection info");
        let (handle, commands) = SessionHandle::new(
            self.client.clone(),
            self.user.clone(),
            self.conn.outbound.clone(),
        );
        self.conn.node.hub.register(handle.clone());
        self.handle = Some(handle);
        self.conn.commands = Some(commands);
        self.state = State::Connected;
        self.expires_at = ttl.map(|ttl| Instant::now() + Duration::from_secs(ttl.into()));
        let transport_ping = self.transport_ping;
        let result = ConnectResult {
            client: self.client.to_string(),
            version: VERSION.into(),
            ttl,
            data: plugin_json(identity.data, "connect data"),
            ping: if transport_ping {
                0
            } else {
                self.conn.node.config.client.ping_interval.as_secs().max(1) as u32
            },
            pong: !transport_ping && !self.codec.unidirectional(),
            session: self.emulation.as_deref().map(str::to_owned),
            node: self.emulation.is_some().then(|| self.conn.node.id.clone()),
            ..Default::default()
        };
        self.reply(self.codec.connect_reply(id, &result));
        self.heartbeat.connected(Instant::now());
        tracing::debug!(client = %self.client, user = %self.user, remote = %self.conn.remote, "client connected");
        // A reconnecting client names the position it reached in each server-side subscription.
        for channel in identity.channels {
            let recover_since = request
                .subs
                .get(&channel)
                .filter(|position| position.recover)
                .map(|position| StreamPosition {
                    offset: position.offset,
                    epoch: position.epoch.clone(),
                });
            self.server_subscribe(ServerSubscribe {
                channel,
                recover_since,
                ..ServerSubscribe::default()
            })
            .await;
        }
        Ok(())
    }

    fn refuse_connect(&mut self, id: u32, refusal: Refusal) -> Result<(), Disconnect> {
        match refusal {
            Refusal::Disconnect(disconnect) => Err(disconnect),
            Refusal::Error(error) => {
                self.reply(self.error_reply(id, &error));
                self.state = State::Refused;
                Ok(())
            }
        }
    }

    /// `refresh`: the connect hook again, marked as a refresh; the user must not change.
    pub(super) async fn refresh(
        &mut self,
        id: u32,
        request: RefreshRequest,
    ) -> Result<Frame, Refusal> {
        let plugins = self.conn.node.plugins.clone();
        if !plugins.any(Hooks::CONNECT) {
            return Err(ClientError::NOT_AVAILABLE.into());
        }
        match plugins
            .connect(self.connect_request(&request.token, None, true))
            .await
        {
            Decision::Denied(deny) if deny.code == ClientError::TOKEN_EXPIRED.code => {
                Err(Refusal::Disconnect(Disconnect::CONNECTION_EXPIRED))
            }
            Decision::Denied(deny) => Err(Refusal::from_code(deny.code, deny.reason)),
            Decision::Undecided => Err(Refusal::Disconnect(Disconnect::INVALID_TOKEN)),
            Decision::Allowed(identity) if identity.user != self.user => {
                tracing::info!(client = %self.client, "refresh refused: the token is for another user");
                Err(Refusal::Disconnect(Disconnect::INVALID_TOKEN))
            }
            Decision::Allowed(identity) => {
                let ttl = match identity.expire_at.filter(|at| *at > 0) {
                    Some(at) => Some(
                        ttl_until(at).ok_or(Refusal::Disconnect(Disconnect::CONNECTION_EXPIRED))?,
                    ),
                    None => None,
                };
                self.expires_at = ttl.map(|ttl| Instant::now() + Duration::from_secs(ttl.into()));
                Ok(self.codec.refresh_reply(id, &self.client, VERSION, ttl))
            }
        }
    }

    /// `sub_refresh`: the subscribe hook again, marked as a refresh.
    pub(super) async fn sub_refresh(
        &mut self,
        id: u32,
        request: SubRefreshRequest,
    ) -> Result<Frame, Refusal> {
        let plugins = self.conn.node.plugins.clone();
        if !plugins.any(Hooks::SUBSCRIBE) {
            return Err(ClientError::NOT_AVAILABLE.into());
        }
        if !self.conn.subscriptions.contains_key(&request.channel) {
            return Err(ClientError::PERMISSION_DENIED.into());
        }
        let verdict = plugins
            .subscribe(bindings::SubscribeRequest {
                client: self.plugin_client(),
                channel: request.channel.clone(),
                token: request.token,
                data: None,
                refresh: true,
            })
            .await;
        match verdict {
            Decision::Denied(deny) => Err(Refusal::from_code(deny.code, deny.reason)),
            Decision::Undecided => Err(Refusal::Disconnect(Disconnect::INVALID_TOKEN)),
            Decision::Allowed(grant) => {
                let options = &self.conn.node.namespace(&request.channel)?.options;
                // Renewed like a new subscription, so it must still pass the policy.
                let _renewed = policy::authorize(
                    &request.channel,
                    options,
                    Action::Subscribe,
                    self.requester(&request.channel, true),
                )?;
                let ttl = match grant.expire_at.filter(|at| *at > 0) {
                    Some(at) => {
                        Some(ttl_until(at).ok_or(Refusal::Error(ClientError::TOKEN_EXPIRED))?)
                    }
                    None => None,
                };
                if let Some(subscription) = self.conn.subscriptions.get_mut(&request.channel) {
                    subscription.expires_at =
                        ttl.map(|ttl| Instant::now() + Duration::from_secs(ttl.into()));
                }
                Ok(self.codec.sub_refresh_reply(id, ttl))
            }
        }
    }

    /// `rpc`: answered by the first plugin that replies; `104` when none does, `108` without RPC plugins.
    pub(super) async fn rpc(&mut self, id: u32, request: RpcRequest) -> Result<Frame, Refusal> {
        let plugins = self.conn.node.plugins.clone();
        if !plugins.any(Hooks::RPC) {
            return Err(ClientError::NOT_AVAILABLE.into());
        }
        let decision = plugins
            .rpc(bindings::RpcRequest {
                client: self.plugin_client(),
                method: request.method,
                data: request.data.map(|d| d.to_vec()),
            })
            .await;
        match decision {
            RpcDecision::Reply(data) => Ok(self.codec.rpc_reply(id, &valid_json(data)?)),
            RpcDecision::Denied(deny) => Err(Refusal::from_code(deny.code, deny.reason)),
            RpcDecision::Unanswered => Err(ClientError::METHOD_NOT_FOUND.into()),
        }
    }

    /// History and presence reads: plugins with the access hook decide first (an allow vouches for the
    /// client), then the channel policy.
    pub(super) async fn may_read(
        &self,
        channel: &str,
        options: &NamespaceOptions,
        kind: AccessKind,
    ) -> Result<Grant, Refusal> {
        let plugins = &self.conn.node.plugins;
        let decision = if plugins.any(Hooks::ACCESS) {
            plugins
                .access(bindings::AccessRequest {
                    client: self.plugin_client(),
                    channel: channel.to_owned(),
                    kind,
                })
                .await
        } else {
            Decision::Undecided
        };
        let vouched = match decision {
            Decision::Allowed(()) => true,
            Decision::Denied(deny) => return Err(Refusal::from_code(deny.code, deny.reason)),
            Decision::Undecided => false,
        };
        let action = match kind {
            AccessKind::History => Action::History,
            AccessKind::Presence => Action::Presence,
        };
        Ok(policy::authorize(
            channel,
            options,
            action,
            self.requester(channel, vouched),
        )?)
    }

    /// The earliest of the heartbeat's deadline and the close deadlines of expired connection or
    /// subscriptions.
    pub(super) fn next_deadline(&self) -> Instant {
        let delay = self.conn.node.config.client.expired_close_delay;
        self.conn
            .subscriptions
            .values()
            .filter_map(|s| s.expires_at)
            .chain(self.expires_at)
            .map(|at| at + delay)
            .chain([self.heartbeat.deadline()])
            .min()
            .unwrap_or_else(|| self.heartbeat.deadline())
    }

    /// A deadline passed: close an expired connection, end expired subscriptions, or beat the heartbeat.
    pub(super) async fn deadlines_due(&mut self, now: Instant) -> Result<(), Disconnect> {
        let delay = self.conn.node.config.client.expired_close_delay;
        if self.expires_at.is_some_and(|at| at + delay <= now) {
            tracing::debug!(client = %self.client, "connection expired without refresh");
            return Err(Disconnect::CONNECTION_EXPIRED);
        }
        let expired: Vec<String> = self
            .conn
            .subscriptions
            .iter()
            .filter(|(_, s)| s.expires_at.is_some_and(|at| at + delay <= now))
            .map(|(channel, _)| channel.clone())
            .collect();
        for channel in expired {
            self.unsubscribe(&channel).await;
            self.reply(
                self.codec
                    .unsubscribe_push(&channel, 2501, "subscription expired"),
            );
        }
        match self.heartbeat.beat(now) {
            Some(Beat::Ping) if self.transport_ping => self.conn.outbound.push_transport_ping(),
            Some(Beat::Ping) => {
                self.conn.outbound.push(self.codec.ping());
                // A listening client never answers: its ping only keeps the stream moving.
                if self.codec.unidirectional() {
                    self.heartbeat.pong();
                }
            }
            Some(Beat::Close(disconnect)) => return Err(disconnect),
            None => {}
        }
        Ok(())
    }
}
