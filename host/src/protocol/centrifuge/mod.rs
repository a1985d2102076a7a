//! The Centrifugo client protocol (wire notes: `shared/protocols/centrifuge.md`), in its two encodings.
//!
//! [`command`] decodes a JSON frame (one or more newline-separated commands) into [`command::Command`]s
//! and [`encode`] writes JSON replies, pushes and pings; [`protobuf`] does both for the Protobuf encoding.
//! Both are tolerant where the SDKs need it (unknown fields are ignored) and strict where the protocol is
//! (a command that cannot be decoded is a protocol error). The session speaks either through [`Codec`].

pub mod command;
pub mod emulation;
pub mod encode;
pub mod protobuf;
pub mod uni;

pub use uni::CentrifugeUni;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::disconnect::Disconnect;
use crate::engine::{ClientInfo, Publication, StreamPosition};
use crate::errors::ClientError;

use super::{Frame, Protocol, Wire};
use command::{Command, DecodeError};
use encode::{ConnectResult, SubscribeResult};

/// One encoding of the Centrifugo protocol as the session sees it: the commands in a client's message
/// and the frames of every reply and push. The hub's side is its [`Wire`].
pub trait Codec: Wire + std::fmt::Debug {
    /// Which protocol this is, for the hub's per-protocol frames and the metrics.
    fn protocol(&self) -> Protocol;
    /// The commands in one client message, in order. A message of the wrong kind (binary on JSON, text
    /// on Protobuf) or text that is not UTF-8 ends the connection with the returned close.
    fn decode(
        &self,
        message: &[u8],
        binary: bool,
    ) -> Result<Vec<Result<Command, DecodeError>>, Disconnect>;
    /// Whether the client only listens (sends its connect request and nothing after): its pings need no
    /// answer.
    fn unidirectional(&self) -> bool {
        false
    }
    /// The heartbeat ping.
    fn ping(&self) -> Frame;
    /// An error reply.
    fn error_reply(&self, id: u32, error: &ClientError) -> Frame;
    /// The reply to `unsubscribe`.
    fn unsubscribe_reply(&self, id: u32) -> Frame;
    /// The reply to `publish`.
    fn publish_reply(&self, id: u32) -> Frame;
    /// The reply to `connect`.
    fn connect_reply(&self, id: u32, result: &ConnectResult) -> Frame;
    /// The reply to `subscribe`.
    fn subscribe_reply(&self, id: u32, result: &SubscribeResult) -> Frame;
    /// The reply to `history`.
    fn history_reply(
        &self,
        id: u32,
        publications: &[Arc<Publication>],
        position: &StreamPosition,
    ) -> Frame;
    /// The reply to `presence`.
    fn presence_reply(&self, id: u32, presence: &HashMap<String, ClientInfo>) -> Frame;
    /// The reply to `presence_stats`.
    fn presence_stats_reply(&self, id: u32, num_clients: u32, num_users: u32) -> Frame;
    /// The reply to `refresh`.
    fn refresh_reply(&self, id: u32, client: &str, version: &str, ttl: Option<u32>) -> Frame;
    /// The reply to `sub_refresh`.
    fn sub_refresh_reply(&self, id: u32, ttl: Option<u32>) -> Frame;
    /// The reply to `rpc`.
    fn rpc_reply(&self, id: u32, data: &Bytes) -> Frame;
    /// The server ended a subscription.
    fn unsubscribe_push(&self, channel: &str, code: u32, reason: &str) -> Frame;
    /// The server added a subscription.
    fn subscribe_push(&self, channel: &str, result: &SubscribeResult) -> Frame;
    /// The server ends the connection: what a transport without close frames sends last.
    fn disconnect_push(&self, disconnect: &Disconnect) -> Frame;
}

/// The Centrifugo protocol, JSON encoding.
#[derive(Debug)]
pub struct Centrifuge;

impl Wire for Centrifuge {
    fn publication(&self, channel: &str, publication: &Publication) -> Frame {
        encode::publication_push(channel, publication)
    }

    fn delta_publication(
        &self,
        channel: &str,
        publication: &Publication,
        delta: Option<&str>,
    ) -> Frame {
        encode::delta_push(channel, publication, delta)
    }

    fn join(&self, channel: &str, who: &ClientInfo) -> Frame {
        encode::join_push(channel, who)
    }

    fn leave(&self, channel: &str, who: &ClientInfo) -> Frame {
        encode::leave_push(channel, who)
    }

    fn hears_own_presence(&self) -> bool {
        true
    }

    /// The SDKs split a message on newlines.
    fn frame_separator(&self) -> Option<&'static [u8]> {
        Some(b"\n")
    }

    /// Herald's close codes are Centrifugo's.
    fn close(&self, disconnect: Disconnect) -> Disconnect {
        disconnect
    }
}

impl Codec for Centrifuge {
    fn protocol(&self) -> Protocol {
        Protocol::Centrifuge
    }

    fn decode(
        &self,
        message: &[u8],
        binary: bool,
    ) -> Result<Vec<Result<Command, DecodeError>>, Disconnect> {
        if binary {
            tracing::debug!("binary frame on a JSON connection");
            return Err(Disconnect::BAD_REQUEST);
        }
        let text = std::str::from_utf8(message).map_err(|_| Disconnect::INVALID_PAYLOAD)?;
        Ok(Command::decode_frame(text).collect())
    }

    fn ping(&self) -> Frame {
        encode::PING
    }

    fn error_reply(&self, id: u32, error: &ClientError) -> Frame {
        encode::error_reply(id, error)
    }

    fn unsubscribe_reply(&self, id: u32) -> Frame {
        encode::empty_reply(id, "unsubscribe")
    }

    fn publish_reply(&self, id: u32) -> Frame {
        encode::empty_reply(id, "publish")
    }

    fn connect_reply(&self, id: u32, result: &ConnectResult) -> Frame {
        encode::connect_reply(id, result)
    }

    fn subscribe_reply(&self, id: u32, result: &SubscribeResult) -> Frame {
        encode::subscribe_reply(id, result)
    }

    fn history_reply(
        &self,
        id: u32,
        publications: &[Arc<Publication>],
        position: &StreamPosition,
    ) -> Frame {
        encode::history_reply(id, publications, position)
    }

    fn presence_reply(&self, id: u32, presence: &HashMap<String, ClientInfo>) -> Frame {
        encode::presence_reply(id, presence)
    }

    fn presence_stats_reply(&self, id: u32, num_clients: u32, num_users: u32) -> Frame {
        encode::presence_stats_reply(id, num_clients, num_users)
    }

    fn refresh_reply(&self, id: u32, client: &str, version: &str, ttl: Option<u32>) -> Frame {
        encode::refresh_reply(id, client, version, ttl)
    }

    fn sub_refresh_reply(&self, id: u32, ttl: Option<u32>) -> Frame {
        encode::sub_refresh_reply(id, ttl)
    }

    fn rpc_reply(&self, id: u32, data: &Bytes) -> Frame {
        encode::rpc_reply(id, data)
    }

    fn unsubscribe_push(&self, channel: &str, code: u32, reason: &str) -> Frame {
        encode::unsubscribe_push(channel, code, reason)
    }

    fn subscribe_push(&self, channel: &str, result: &SubscribeResult) -> Frame {
        encode::subscribe_push(channel, result)
    }

    fn disconnect_push(&self, disconnect: &Disconnect) -> Frame {
        encode::disconnect_push(disconnect)
    }
}

/// The Centrifugo protocol, Protobuf encoding.
#[derive(Debug)]
pub struct CentrifugeProtobuf;

impl Wire for CentrifugeProtobuf {
    fn publication(&self, channel: &str, publication: &Publication) -> Frame {
        protobuf::publication_push(channel, publication)
    }

    /// Data is bytes in Protobuf: a full publication is the plain one.
    fn delta_publication(
        &self,
        channel: &str,
        publication: &Publication,
        delta: Option<&str>,
    ) -> Frame {
        match delta {
            Some(delta) => protobuf::delta_push(channel, publication, delta.as_bytes()),
            None => protobuf::publication_push(channel, publication),
        }
    }

    fn join(&self, channel: &str, who: &ClientInfo) -> Frame {
        protobuf::join_push(channel, who)
    }

    fn leave(&self, channel: &str, who: &ClientInfo) -> Frame {
        protobuf::leave_push(channel, who)
    }

    fn hears_own_presence(&self) -> bool {
        true
    }

    /// Length-delimited messages follow each other with nothing between them.
    fn frame_separator(&self) -> Option<&'static [u8]> {
        Some(b"")
    }

    fn close(&self, disconnect: Disconnect) -> Disconnect {
        disconnect
    }
}

impl Codec for CentrifugeProtobuf {
    fn protocol(&self) -> Protocol {
        Protocol::CentrifugeProtobuf
    }

    fn decode(
        &self,
        message: &[u8],
        binary: bool,
    ) -> Result<Vec<Result<Command, DecodeError>>, Disconnect> {
        if !binary {
            tracing::debug!("text frame on a Protobuf connection");
            return Err(Disconnect::BAD_REQUEST);
        }
        Ok(protobuf::decode_frame(message))
    }

    fn ping(&self) -> Frame {
        protobuf::PING
    }

    fn error_reply(&self, id: u32, error: &ClientError) -> Frame {
        protobuf::error_reply(id, error)
    }

    fn unsubscribe_reply(&self, id: u32) -> Frame {
        protobuf::unsubscribe_reply(id)
    }

    fn publish_reply(&self, id: u32) -> Frame {
        protobuf::publish_reply(id)
    }

    fn connect_reply(&self, id: u32, result: &ConnectResult) -> Frame {
        protobuf::connect_reply(id, result)
    }

    fn subscribe_reply(&self, id: u32, result: &SubscribeResult) -> Frame {
        protobuf::subscribe_reply(id, result)
    }

    fn history_reply(
        &self,
        id: u32,
        publications: &[Arc<Publication>],
        position: &StreamPosition,
    ) -> Frame {
        protobuf::history_reply(id, publications, position)
    }

    fn presence_reply(&self, id: u32, presence: &HashMap<String, ClientInfo>) -> Frame {
        protobuf::presence_reply(id, presence)
    }

    fn presence_stats_reply(&self, id: u32, num_clients: u32, num_users: u32) -> Frame {
        protobuf::presence_stats_reply(id, num_clients, num_users)
    }

    fn refresh_reply(&self, id: u32, client: &str, version: &str, ttl: Option<u32>) -> Frame {
        protobuf::refresh_reply(id, client, version, ttl)
    }

    fn sub_refresh_reply(&self, id: u32, ttl: Option<u32>) -> Frame {
        protobuf::sub_refresh_reply(id, ttl)
    }

    fn rpc_reply(&self, id: u32, data: &Bytes) -> Frame {
        protobuf::rpc_reply(id, data)
    }

    fn unsubscribe_push(&self, channel: &str, code: u32, reason: &str) -> Frame {
        protobuf::unsubscribe_push(channel, code, reason)
    }

    fn subscribe_push(&self, channel: &str, result: &SubscribeResult) -> Frame {
        protobuf::subscribe_push(channel, result)
    }

    fn disconnect_push(&self, disconnect: &Disconnect) -> Frame {
        protobuf::disconnect_push(disconnect)
    }
}

#[cfg(test)]
mod properties;
