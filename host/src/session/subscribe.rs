//! Subscribing and unsubscribing: permission checks, positioning and recovery (§8.1–8.2 of the wire notes),
//! and the ordering guarantee that a subscribe reply precedes every publication of its channel with nothing
//! lost or duplicated in between.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::channel::NamespaceOptions;
use crate::disconnect::Disconnect;
use crate::errors::{ClientError, Refusal};
use crate::estate::Owed;
use crate::hub::{Delivery, ServerSubscribe, SessionCommand};
use crate::node::StreamPosition;
use crate::plugin::bindings::{self, Hooks, SubscribeAllow};
use crate::plugin::chain::Decision;
use crate::policy::{self, Action, Grant, Requester};
use crate::protocol::Frame;
use crate::protocol::centrifuge::command::{FLAG_REJECT_UNRECOVERED, SubscribeRequest};
use crate::protocol::centrifuge::encode::SubscribeResult;

use super::connect::{plugin_json, ttl_until};
use super::skeleton::Wants;
use super::{Session, Subscription, require_channel};

/// How one subscription behaves, decided from the request and the namespace.
#[derive(Debug, Clone, Default)]
struct Mode {
    positioned: bool,
    recoverable: bool,
    join_leave: bool,
    /// The client's last position, when it asks to recover.
    recover_from: Option<StreamPosition>,
    reject_unrecovered: bool,
    /// Channel info granted by a plugin.
    chan_info: Option<Bytes>,
    /// Data for the subscribe reply, from a plugin.
    data: Option<Bytes>,
    /// Seconds until the subscription expires, when a plugin set an expiry.
    ttl: Option<u32>,
    /// Made by the server (API subscribe, connect-time channels), not by the client.
    server_side: bool,
    /// Publications as deltas (the client asked for a delta type the namespace allows).
    delta: bool,
}

impl Session {
    pub(super) async fn subscribe(
        &mut self,
        id: u32,
        request: SubscribeRequest,
    ) -> Result<(), Disconnect> {
        require_channel(&request.channel)?;
        match self.client_subscribe(id, request).await {
            Ok(()) => Ok(()),
            Err(Refusal::Error(error)) => {
                self.reply(self.error_reply(id, &error));
                Ok(())
            }
            Err(Refusal::Disconnect(disconnect)) => Err(disconnect),
        }
    }

    async fn client_subscribe(
        &mut self,
        id: u32,
        request: SubscribeRequest,
    ) -> Result<(), Refusal> {
        let channel = request.channel.as_str();
        if self.conn.subscriptions.contains_key(channel) {
            return Err(ClientError::ALREADY_SUBSCRIBED.into());
        }
        if self.conn.subscriptions_full() {
            return Err(ClientError::LIMIT_EXCEEDED.into());
        }
        let node = self.conn.node.clone();
        let options = &node.namespace(channel)?.options;
        let delta = !request.delta.is_empty();
        if delta && !options.allows_delta(&request.delta) {
            return Err(ClientError::BAD_REQUEST
                .with_message(format!(
                    "delta type {:?} is not allowed in this channel",
                    request.delta
                ))
                .into());
        }
        let decision = if node.plugins.any(Hooks::SUBSCRIBE) {
            node.plugins
                .subscribe(bindings::SubscribeRequest {
                    client: self.plugin_client(),
                    channel: channel.to_owned(),
                    token: request.token.clone(),
                    data: request.data.as_ref().map(|d| d.to_vec()),
                    refresh: false,
                })
                .await
        } else {
            Decision::Undecided
        };
        let (grant, vouched) = match decision {
            Decision::Denied(deny) => return Err(Refusal::from_code(deny.code, deny.reason)),
            Decision::Allowed(grant) => (grant, true),
            // Subscription tokens are verified by an auth plugin; without one, none is valid.
            Decision::Undecided if !request.token.is_empty() => {
                return Err(ClientError::PERMISSION_DENIED.into());
            }
            Decision::Undecided => (
                SubscribeAllow {
                    info: None,
                    data: None,
                    expire_at: None,
                },
                false,
            ),
        };
        let admitted = policy::authorize(
            channel,
            options,
            Action::Subscribe,
            Requester {
                user: &self.user,
                subscribed: false,
                vouched,
            },
        )?;
        let ttl = match grant.expire_at.filter(|at| *at > 0) {
            Some(at) => Some(ttl_until(at).ok_or(ClientError::TOKEN_EXPIRED)?),
            None => None,
        };
        let recoverable = options.force_recovery || (request.recoverable && options.allow_recovery);
        let mode = Mode {
            positioned: recoverable
                || options.force_positioning
                || (request.positioned && options.allow_positioning),
            recoverable,
            join_leave: options.force_push_join_leave || (request.join_leave && options.join_leave),
            recover_from: (recoverable && request.recover).then(|| StreamPosition {
                offset: request.offset,
                epoch: request.epoch.clone(),
            }),
            reject_unrecovered: request.flag & FLAG_REJECT_UNRECOVERED != 0,
            delta,
            chan_info: plugin_json(grant.info, "channel info"),
            data: plugin_json(grant.data, "subscribe data"),
            ttl,
            server_side: false,
        };
        let codec = self.codec;
        Ok(self
            .open(channel, options, mode, admitted, move |result| {
                vec![codec.subscribe_reply(id, result)]
            })
            .await?)
    }

    /// Subscribes server-side (server API, a connect plugin's channels): the namespace's forced options
    /// apply, changed by the request's overrides, and the client learns of it through a `subscribe` push.
    /// The server vouches for the client, but the channel policy still decides (a presence roster admits
    /// users only).
    pub(super) async fn server_subscribe(&mut self, request: ServerSubscribe) {
        let channel = request.channel.as_str();
        if self.conn.subscriptions.contains_key(channel) {
            return;
        }
        let node = self.conn.node.clone();
        let Ok(namespace) = node.namespace(channel) else {
            return;
        };
        let options = &request.overrides.apply(&namespace.options);
        let requester = Requester {
            user: &self.user,
            subscribed: false,
            vouched: true,
        };
        let admitted = match policy::authorize(channel, options, Action::Subscribe, requester) {
            Ok(admitted) => admitted,
            Err(denied) => {
                tracing::info!(client = %self.client, channel, reason = denied.message(), "server-side subscribe refused by the channel policy");
                return;
            }
        };
        let json = |text: Option<String>| text.map(|text| Bytes::from(text.into_bytes()));
        let recoverable = options.force_recovery;
        let mode = Mode {
            positioned: options.force_positioning || recoverable,
            recoverable,
            join_leave: options.force_push_join_leave,
            recover_from: request.recover_since.filter(|_| recoverable),
            chan_info: json(request.info),
            data: json(request.data),
            server_side: true,
            ..Mode::default()
        };
        let codec = self.codec;
        if let Err(error) = self
            .open(channel, options, mode, admitted, move |result| {
                // A push has no room for recovered publications: they follow it, as live ones would.
                let mut frames = vec![codec.subscribe_push(channel, result)];
                frames.extend(
                    result
                        .publications
                        .iter()
                        .map(|publication| codec.publication(channel, publication)),
                );
                frames
            })
            .await
        {
            tracing::warn!(client = %self.client, channel, %error, "server-side subscribe failed");
        }
    }

    /// Registers the subscription with the hub (holding live frames), reads the stream position or the missed
    /// publications, queues the reply built by `reply`, then releases the held frames that the reply did not
    /// already cover.
    async fn open(
        &mut self,
        channel: &str,
        options: &NamespaceOptions,
        mode: Mode,
        admitted: Grant,
        reply: impl FnOnce(&SubscribeResult) -> Vec<Frame>,
    ) -> Result<(), ClientError> {
        let Some(handle) = self.handle.clone() else {
            return Err(ClientError::INTERNAL);
        };
        let gate = self
            .conn
            .open(
                &handle,
                channel,
                Wants {
                    join_leave: mode.join_leave,
                    delta: mode.delta,
                },
                admitted,
            )
            .await?;
        let (mut result, covered) = match self.position(channel, options, &mode, admitted).await {
            Ok(found) => found,
            Err(error) => {
                self.conn.close(channel, &self.client).await;
                return Err(error);
            }
        };
        if result.was_recovering {
            self.conn.node.metrics.recovery(result.recovered);
        }
        if mode.reject_unrecovered && result.was_recovering && !result.recovered {
            self.conn.close(channel, &self.client).await;
            return Err(ClientError::UNRECOVERABLE_POSITION);
        }
        let node = self.conn.node.clone();
        result.data = mode.data.clone();
        result.ttl = mode.ttl;
        result.delta = mode.delta;
        // Present before the client hears it is subscribed, so a presence query right after sees it.
        let announce = options.join_leave || options.force_push_join_leave;
        if options.presence || announce {
            let member = self.info(mode.chan_info.clone());
            let owed = if announce { Owed::Leave } else { Owed::Removal };
            let (entered, owed) = tokio::join!(
                async {
                    if options.presence {
                        node.enter_presence(channel, member.clone(), admitted).await
                    } else {
                        Ok(())
                    }
                },
                node.owe(channel, &member, owed)
            );
            if let Err(error) = entered {
                tracing::warn!(channel, %error, "presence update failed");
            }
            if let Err(error) = owed {
                tracing::warn!(channel, %error, "departure not recorded for a crash");
            }
        }
        if gate.open(&self.conn.outbound, reply(&result), covered) == Delivery::Gap {
            // Publications raced the reply with a hole between them: start over at once.
            let _ = handle.command(SessionCommand::Resubscribe {
                channel: channel.to_owned(),
            });
        }
        self.conn.add_subscription(
            channel.to_owned(),
            Subscription {
                presence: options.presence,
                announce_leave: announce,
                chan_info: mode.chan_info.clone(),
                server_side: mode.server_side,
                expires_at: mode
                    .ttl
                    .map(|ttl| Instant::now() + Duration::from_secs(ttl.into())),
            },
        );
        if announce
            && let Err(error) = node
                .announce_join(channel, self.info(mode.chan_info.clone()))
                .await
        {
            tracing::warn!(channel, %error, "join broadcast failed");
        }
        Ok(())
    }

    /// The subscribe result's stream fields and, for a positioned subscription, the stream position the reply
    /// brings the client to (live delivery continues from there).
    async fn position(
        &self,
        channel: &str,
        options: &NamespaceOptions,
        mode: &Mode,
        admitted: Grant,
    ) -> Result<(SubscribeResult, Option<StreamPosition>), ClientError> {
        let mut result = SubscribeResult {
            positioned: mode.positioned,
            recoverable: mode.recoverable,
            ..Default::default()
        };
        let Some(history) = options.history().filter(|_| mode.positioned) else {
            return Ok((result, None));
        };
        let node = &self.conn.node;
        let max = node.config.client.recovery_max_publication_limit;
        let missed = match &mode.recover_from {
            Some(from) => {
                result.was_recovering = true;
                node.stream_since(channel, &history, from, max + 1, admitted)
                    .await?
                    .map(|found| (from, found))
            }
            None => None,
        };
        // Not recovering, or too late to: the client starts at the top.
        let Some((from, found)) = missed else {
            let top = node.stream_top(channel, &history, admitted).await?;
            result.position = top.clone();
            return Ok((result, Some(top)));
        };
        let top = found.position;
        let publications = found.publications;
        let recovered = match (publications.first(), publications.last()) {
            (None, _) | (_, None) => top.offset == from.offset,
            (Some(first), Some(last)) => {
                first.offset == from.offset + 1
                    && last.offset == top.offset
                    && publications.len() <= max
            }
        };
        let covered = top.clone();
        if recovered {
            result.recovered = true;
            result.publications = publications;
            result.position = StreamPosition {
                offset: from.offset,
                epoch: top.epoch,
            };
        } else {
            result.position = top;
        }
        Ok((result, Some(covered)))
    }

    /// Ends a subscription already taken out of the connection's (client unsubscribe, server unsubscribe,
    /// expiry or disconnect); no reply.
    pub(super) async fn end(&mut self, channel: &str, subscription: Subscription) {
        self.conn.close(channel, &self.client).await;
        let node = &self.conn.node;
        if subscription.presence
            && let Err(error) = node.leave_presence(channel, &self.client).await
        {
            tracing::warn!(channel, %error, "presence removal failed");
        }
        if subscription.announce_leave
            && let Err(error) = node
                .announce_leave(channel, self.info(subscription.chan_info.clone()))
                .await
        {
            tracing::warn!(channel, %error, "leave broadcast failed");
        }
        if (subscription.presence || subscription.announce_leave)
            && let Err(error) = node.settled(channel, &self.client).await
        {
            tracing::warn!(channel, %error, "departure record not removed");
        }
    }
}
