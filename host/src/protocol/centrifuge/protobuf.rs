//! The Centrifugo client protocol, Protobuf encoding: what the Swift, Java/Kotlin and Dart SDKs speak
//! and centrifuge-js's and centrifuge-python's Protobuf modes.
//!
//! A WebSocket message is a binary frame of length-delimited messages (a varint length, then the
//! message), commands in, replies and pushes out; the same commands and replies as the JSON encoding,
//! with the same ids, errors and close codes. The messages below are the schema's (the field numbers of
//! Centrifugo's `client.proto`), declared with prost's derive and limited to the fields Herald reads or
//! writes: unknown fields are skipped, as Protobuf wants.
//!
//! Payloads are JSON on every protocol Herald speaks, so a publication reaches JSON, Protobuf and Pusher
//! subscribers alike: a Protobuf client's `data` is the UTF-8 bytes of a JSON value (decoded here,
//! compacted like the JSON encoding's), and what it receives is the same JSON text as bytes. A command
//! whose `data` is not JSON is answered with error 107 instead of being carried to subscribers that could
//! not read it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;

use crate::disconnect::Disconnect;
use crate::engine::{ClientInfo, Publication, StreamPosition};
use crate::errors::ClientError;
use crate::protocol::{Frame, compact_json};

use super::command::{
    ChannelRequest, Command, ConnectRequest, DecodeError, HistoryRequest, Method, PublishRequest,
    RefreshRequest, RpcRequest, SendRequest, StreamPositionRequest, SubRefreshRequest,
    SubscribeRecovery, SubscribeRequest,
};
use super::encode::{ConnectResult, SubscribeResult};

/// The heartbeat ping: an empty reply, length-delimited (a zero length).
pub const PING: Frame = Frame::binary_static(&[0]);

/// The schema's messages, as far as Herald uses them.
mod schema {
    use std::collections::{BTreeMap, HashMap};

    use bytes::Bytes;

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Command {
        #[prost(uint32, tag = "1")]
        pub(super) id: u32,
        #[prost(message, optional, tag = "4")]
        pub(super) connect: Option<ConnectRequest>,
        #[prost(message, optional, tag = "5")]
        pub(super) subscribe: Option<SubscribeRequest>,
        #[prost(message, optional, tag = "6")]
        pub(super) unsubscribe: Option<ChannelRequest>,
        #[prost(message, optional, tag = "7")]
        pub(super) publish: Option<PublishRequest>,
        #[prost(message, optional, tag = "8")]
        pub(super) presence: Option<ChannelRequest>,
        #[prost(message, optional, tag = "9")]
        pub(super) presence_stats: Option<ChannelRequest>,
        #[prost(message, optional, tag = "10")]
        pub(super) history: Option<HistoryRequest>,
        #[prost(message, optional, tag = "11")]
        pub(super) ping: Option<Empty>,
        #[prost(message, optional, tag = "12")]
        pub(super) send: Option<DataRequest>,
        #[prost(message, optional, tag = "13")]
        pub(super) rpc: Option<RpcRequest>,
        #[prost(message, optional, tag = "14")]
        pub(super) refresh: Option<TokenRequest>,
        #[prost(message, optional, tag = "15")]
        pub(super) sub_refresh: Option<SubRefreshRequest>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Empty {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ConnectRequest {
        #[prost(string, tag = "1")]
        pub(super) token: String,
        #[prost(bytes = "bytes", tag = "2")]
        pub(super) data: Bytes,
        #[prost(map = "string, message", tag = "3")]
        pub(super) subs: HashMap<String, SubscribeRequest>,
        #[prost(string, tag = "4")]
        pub(super) name: String,
        #[prost(string, tag = "5")]
        pub(super) version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct SubscribeRequest {
        #[prost(string, tag = "1")]
        pub(super) channel: String,
        #[prost(string, tag = "2")]
        pub(super) token: String,
        #[prost(bool, tag = "3")]
        pub(super) recover: bool,
        #[prost(string, tag = "6")]
        pub(super) epoch: String,
        #[prost(uint64, tag = "7")]
        pub(super) offset: u64,
        #[prost(bytes = "bytes", tag = "8")]
        pub(super) data: Bytes,
        #[prost(bool, tag = "9")]
        pub(super) positioned: bool,
        #[prost(bool, tag = "10")]
        pub(super) recoverable: bool,
        #[prost(bool, tag = "11")]
        pub(super) join_leave: bool,
        #[prost(string, tag = "12")]
        pub(super) delta: String,
        #[prost(int64, tag = "14")]
        pub(super) flag: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ChannelRequest {
        #[prost(string, tag = "1")]
        pub(super) channel: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct PublishRequest {
        #[prost(string, tag = "1")]
        pub(super) channel: String,
        #[prost(bytes = "bytes", tag = "2")]
        pub(super) data: Bytes,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct StreamPosition {
        #[prost(uint64, tag = "1")]
        pub(super) offset: u64,
        #[prost(string, tag = "2")]
        pub(super) epoch: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct HistoryRequest {
        #[prost(string, tag = "1")]
        pub(super) channel: String,
        #[prost(int32, tag = "7")]
        pub(super) limit: i32,
        #[prost(message, optional, tag = "8")]
        pub(super) since: Option<StreamPosition>,
        #[prost(bool, tag = "9")]
        pub(super) reverse: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct DataRequest {
        #[prost(bytes = "bytes", tag = "1")]
        pub(super) data: Bytes,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct RpcRequest {
        #[prost(bytes = "bytes", tag = "1")]
        pub(super) data: Bytes,
        #[prost(string, tag = "2")]
        pub(super) method: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct TokenRequest {
        #[prost(string, tag = "1")]
        pub(super) token: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct SubRefreshRequest {
        #[prost(string, tag = "1")]
        pub(super) channel: String,
        #[prost(string, tag = "2")]
        pub(super) token: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Reply {
        #[prost(uint32, tag = "1")]
        pub(super) id: u32,
        #[prost(message, optional, tag = "2")]
        pub(super) error: Option<Error>,
        #[prost(message, optional, tag = "4")]
        pub(super) push: Option<Push>,
        #[prost(message, optional, tag = "5")]
        pub(super) connect: Option<ConnectResult>,
        #[prost(message, optional, tag = "6")]
        pub(super) subscribe: Option<SubscribeResult>,
        #[prost(message, optional, tag = "7")]
        pub(super) unsubscribe: Option<Empty>,
        #[prost(message, optional, tag = "8")]
        pub(super) publish: Option<Empty>,
        #[prost(message, optional, tag = "9")]
        pub(super) presence: Option<PresenceResult>,
        #[prost(message, optional, tag = "10")]
        pub(super) presence_stats: Option<PresenceStatsResult>,
        #[prost(message, optional, tag = "11")]
        pub(super) history: Option<HistoryResult>,
        #[prost(message, optional, tag = "13")]
        pub(super) rpc: Option<DataRequest>,
        #[prost(message, optional, tag = "14")]
        pub(super) refresh: Option<RefreshResult>,
        #[prost(message, optional, tag = "15")]
        pub(super) sub_refresh: Option<SubRefreshResult>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Error {
        #[prost(uint32, tag = "1")]
        pub(super) code: u32,
        #[prost(string, tag = "2")]
        pub(super) message: String,
        #[prost(bool, tag = "3")]
        pub(super) temporary: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Push {
        #[prost(string, tag = "2")]
        pub(super) channel: String,
        #[prost(message, optional, tag = "4")]
        pub(super) publication: Option<Publication>,
        #[prost(message, optional, tag = "5")]
        pub(super) join: Option<Presence>,
        #[prost(message, optional, tag = "6")]
        pub(super) leave: Option<Presence>,
        #[prost(message, optional, tag = "7")]
        pub(super) unsubscribe: Option<Unsubscribe>,
        #[prost(message, optional, tag = "9")]
        pub(super) subscribe: Option<Subscribe>,
        #[prost(message, optional, tag = "11")]
        pub(super) disconnect: Option<Disconnect>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Disconnect {
        #[prost(uint32, tag = "1")]
        pub(super) code: u32,
        #[prost(string, tag = "2")]
        pub(super) reason: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ClientInfo {
        #[prost(string, tag = "1")]
        pub(super) user: String,
        #[prost(string, tag = "2")]
        pub(super) client: String,
        #[prost(bytes = "bytes", tag = "3")]
        pub(super) conn_info: Bytes,
        #[prost(bytes = "bytes", tag = "4")]
        pub(super) chan_info: Bytes,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Publication {
        #[prost(bytes = "bytes", tag = "4")]
        pub(super) data: Bytes,
        #[prost(message, optional, tag = "5")]
        pub(super) info: Option<ClientInfo>,
        #[prost(uint64, tag = "6")]
        pub(super) offset: u64,
        #[prost(btree_map = "string, string", tag = "7")]
        pub(super) tags: BTreeMap<String, String>,
        #[prost(bool, tag = "8")]
        pub(super) delta: bool,
    }

    /// `Join` and `Leave`: who.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Presence {
        #[prost(message, optional, tag = "1")]
        pub(super) info: Option<ClientInfo>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Unsubscribe {
        #[prost(uint32, tag = "2")]
        pub(super) code: u32,
        #[prost(string, tag = "3")]
        pub(super) reason: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Subscribe {
        #[prost(bool, tag = "1")]
        pub(super) recoverable: bool,
        #[prost(string, tag = "4")]
        pub(super) epoch: String,
        #[prost(uint64, tag = "5")]
        pub(super) offset: u64,
        #[prost(bool, tag = "6")]
        pub(super) positioned: bool,
        #[prost(bytes = "bytes", tag = "7")]
        pub(super) data: Bytes,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ConnectResult {
        #[prost(string, tag = "1")]
        pub(super) client: String,
        #[prost(string, tag = "2")]
        pub(super) version: String,
        #[prost(bool, tag = "3")]
        pub(super) expires: bool,
        #[prost(uint32, tag = "4")]
        pub(super) ttl: u32,
        #[prost(bytes = "bytes", tag = "5")]
        pub(super) data: Bytes,
        #[prost(btree_map = "string, message", tag = "6")]
        pub(super) subs: BTreeMap<String, SubscribeResult>,
        #[prost(uint32, tag = "7")]
        pub(super) ping: u32,
        #[prost(bool, tag = "8")]
        pub(super) pong: bool,
        #[prost(string, tag = "9")]
        pub(super) session: String,
        #[prost(string, tag = "10")]
        pub(super) node: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct SubscribeResult {
        #[prost(bool, tag = "1")]
        pub(super) expires: bool,
        #[prost(uint32, tag = "2")]
        pub(super) ttl: u32,
        #[prost(bool, tag = "3")]
        pub(super) recoverable: bool,
        #[prost(string, tag = "6")]
        pub(super) epoch: String,
        #[prost(message, repeated, tag = "7")]
        pub(super) publications: Vec<Publication>,
        #[prost(bool, tag = "8")]
        pub(super) recovered: bool,
        #[prost(uint64, tag = "9")]
        pub(super) offset: u64,
        #[prost(bool, tag = "10")]
        pub(super) positioned: bool,
        #[prost(bytes = "bytes", tag = "11")]
        pub(super) data: Bytes,
        #[prost(bool, tag = "12")]
        pub(super) was_recovering: bool,
        #[prost(bool, tag = "13")]
        pub(super) delta: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct PresenceResult {
        #[prost(map = "string, message", tag = "1")]
        pub(super) presence: HashMap<String, ClientInfo>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct PresenceStatsResult {
        #[prost(uint32, tag = "1")]
        pub(super) num_clients: u32,
        #[prost(uint32, tag = "2")]
        pub(super) num_users: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct HistoryResult {
        #[prost(message, repeated, tag = "1")]
        pub(super) publications: Vec<Publication>,
        #[prost(string, tag = "2")]
        pub(super) epoch: String,
        #[prost(uint64, tag = "3")]
        pub(super) offset: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct RefreshResult {
        #[prost(string, tag = "1")]
        pub(super) client: String,
        #[prost(string, tag = "2")]
        pub(super) version: String,
        #[prost(bool, tag = "3")]
        pub(super) expires: bool,
        #[prost(uint32, tag = "4")]
        pub(super) ttl: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct SubRefreshResult {
        #[prost(bool, tag = "1")]
        pub(super) expires: bool,
        #[prost(uint32, tag = "2")]
        pub(super) ttl: u32,
    }
}

/// Decodes a binary frame: length-delimited commands, in order. Decoding stops at the first malformed
/// one (a truncated varint, a length past the frame, a field of the wrong type): nothing after it can be
/// trusted to start where it seems to.
pub fn decode_frame(frame: &[u8]) -> Vec<Result<Command, DecodeError>> {
    let mut commands = Vec::with_capacity(1);
    let mut rest = frame;
    if rest.is_empty() {
        commands.push(Err(DecodeError::Empty));
    }
    while !rest.is_empty() {
        match next_command(&mut rest) {
            Ok(command) => commands.push(Ok(command)),
            Err(error) => {
                commands.push(Err(error));
                break;
            }
        }
    }
    commands
}

/// Takes one length-delimited command off the front of `rest`.
fn next_command(rest: &mut &[u8]) -> Result<Command, DecodeError> {
    let malformed = |error: prost::DecodeError| DecodeError::Malformed(error.to_string());
    let length = prost::decode_length_delimiter(&mut *rest).map_err(malformed)?;
    if length > rest.len() {
        return Err(DecodeError::Malformed(format!(
            "command length {length} past the end of the frame"
        )));
    }
    let (message, after) = rest.split_at(length);
    *rest = after;
    let wire = schema::Command::decode(message).map_err(malformed)?;
    command(wire)
}

/// A client payload: JSON text as bytes, compacted; empty means absent.
fn json(id: u32, data: Bytes) -> Result<Option<Bytes>, DecodeError> {
    if data.is_empty() {
        return Ok(None);
    }
    let text = std::str::from_utf8(&data).map_err(|_| DecodeError::NotJson { id })?;
    serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|_| DecodeError::NotJson { id })?;
    let text = text.trim();
    Ok((text != "null").then(|| compact_json(text)))
}

/// The decoded command, with the JSON encoding's rules: `send` always counts, any other command with id 0
/// is the heartbeat's answer, the first request present wins.
fn command(wire: schema::Command) -> Result<Command, DecodeError> {
    let id = wire.id;
    if let Some(send) = wire.send {
        let data = json(id, send.data)?;
        return Ok(Command {
            id,
            method: Method::Send(SendRequest { data }),
        });
    }
    if id == 0 {
        return Ok(Command {
            id,
            method: Method::Pong,
        });
    }
    let method = if let Some(r) = wire.connect {
        let subs = r
            .subs
            .into_iter()
            .map(|(channel, s)| {
                let recovery = SubscribeRecovery {
                    recover: s.recover,
                    offset: s.offset,
                    epoch: s.epoch,
                };
                (channel, recovery)
            })
            .collect::<HashMap<_, _>>();
        Method::Connect(ConnectRequest {
            token: r.token,
            data: json(id, r.data)?,
            subs,
            name: r.name,
            version: r.version,
        })
    } else if let Some(r) = wire.subscribe {
        Method::Subscribe(SubscribeRequest {
            channel: r.channel,
            token: r.token,
            recover: r.recover,
            offset: r.offset,
            epoch: r.epoch,
            data: json(id, r.data)?,
            positioned: r.positioned,
            recoverable: r.recoverable,
            join_leave: r.join_leave,
            flag: r.flag,
            delta: r.delta,
        })
    } else if let Some(r) = wire.unsubscribe {
        Method::Unsubscribe(ChannelRequest { channel: r.channel })
    } else if let Some(r) = wire.publish {
        Method::Publish(PublishRequest {
            channel: r.channel,
            data: json(id, r.data)?,
        })
    } else if let Some(r) = wire.presence {
        Method::Presence(ChannelRequest { channel: r.channel })
    } else if let Some(r) = wire.presence_stats {
        Method::PresenceStats(ChannelRequest { channel: r.channel })
    } else if let Some(r) = wire.history {
        Method::History(HistoryRequest {
            channel: r.channel,
            limit: r.limit.into(),
            since: r.since.map(|s| StreamPositionRequest {
                offset: s.offset,
                epoch: s.epoch,
            }),
            reverse: r.reverse,
        })
    } else if wire.ping.is_some() {
        Method::Ping
    } else if let Some(r) = wire.rpc {
        Method::Rpc(RpcRequest {
            method: r.method,
            data: json(id, r.data)?,
        })
    } else if let Some(r) = wire.refresh {
        Method::Refresh(RefreshRequest { token: r.token })
    } else if let Some(r) = wire.sub_refresh {
        Method::SubRefresh(SubRefreshRequest {
            channel: r.channel,
            token: r.token,
        })
    } else {
        return Err(DecodeError::UnknownMethod);
    };
    Ok(Command { id, method })
}

fn frame(reply: &schema::Reply) -> Frame {
    Frame::binary(reply.encode_length_delimited_to_vec())
}

fn reply(id: u32, fill: impl FnOnce(&mut schema::Reply)) -> Frame {
    let mut reply = schema::Reply {
        id,
        ..Default::default()
    };
    fill(&mut reply);
    frame(&reply)
}

fn push(channel: &str, fill: impl FnOnce(&mut schema::Push)) -> Frame {
    let mut push = schema::Push {
        channel: channel.to_owned(),
        ..Default::default()
    };
    fill(&mut push);
    frame(&schema::Reply {
        push: Some(push),
        ..Default::default()
    })
}

fn client_info(info: &ClientInfo) -> schema::ClientInfo {
    schema::ClientInfo {
        user: info.user.clone(),
        client: info.client.clone(),
        conn_info: info.conn_info.clone().unwrap_or_default(),
        chan_info: info.chan_info.clone().unwrap_or_default(),
    }
}

fn publication(publication: &Publication) -> schema::Publication {
    schema::Publication {
        data: publication.data.clone(),
        info: publication.info.as_ref().map(client_info),
        offset: publication.offset,
        tags: publication.tags.clone(),
        delta: false,
    }
}

fn subscribe_result(r: &SubscribeResult) -> schema::SubscribeResult {
    schema::SubscribeResult {
        expires: r.ttl.is_some(),
        ttl: r.ttl.unwrap_or_default(),
        recoverable: r.recoverable,
        epoch: r.position.epoch.clone(),
        publications: r.publications.iter().map(|p| publication(p)).collect(),
        recovered: r.recovered,
        offset: r.position.offset,
        positioned: r.positioned,
        data: r.data.clone().unwrap_or_default(),
        was_recovering: r.was_recovering,
        delta: r.delta,
    }
}

/// An error reply.
pub fn error_reply(id: u32, error: &ClientError) -> Frame {
    reply(id, |r| {
        r.error = Some(schema::Error {
            code: error.code,
            message: error.message.to_string(),
            temporary: error.temporary,
        });
    })
}

/// The reply to `unsubscribe`.
pub fn unsubscribe_reply(id: u32) -> Frame {
    reply(id, |r| r.unsubscribe = Some(schema::Empty {}))
}

/// The reply to `publish`.
pub fn publish_reply(id: u32) -> Frame {
    reply(id, |r| r.publish = Some(schema::Empty {}))
}

/// The reply to `connect`.
pub fn connect_reply(id: u32, c: &ConnectResult) -> Frame {
    reply(id, |r| {
        r.connect = Some(schema::ConnectResult {
            client: c.client.clone(),
            version: c.version.clone(),
            expires: c.ttl.is_some(),
            ttl: c.ttl.unwrap_or_default(),
            data: c.data.clone().unwrap_or_default(),
            subs: c
                .subs
                .iter()
                .map(|(channel, sub)| (channel.clone(), subscribe_result(sub)))
                .collect::<BTreeMap<_, _>>(),
            ping: c.ping,
            pong: c.pong,
            session: c.session.clone().unwrap_or_default(),
            node: c.node.clone().unwrap_or_default(),
        });
    })
}

/// The reply to `subscribe`.
pub fn subscribe_reply(id: u32, s: &SubscribeResult) -> Frame {
    reply(id, |r| r.subscribe = Some(subscribe_result(s)))
}

/// The reply to `history`.
pub fn history_reply(
    id: u32,
    publications: &[Arc<Publication>],
    position: &StreamPosition,
) -> Frame {
    reply(id, |r| {
        r.history = Some(schema::HistoryResult {
            publications: publications.iter().map(|p| publication(p)).collect(),
            epoch: position.epoch.clone(),
            offset: position.offset,
        });
    })
}

/// The reply to `presence`.
pub fn presence_reply(id: u32, presence: &HashMap<String, ClientInfo>) -> Frame {
    reply(id, |r| {
        r.presence = Some(schema::PresenceResult {
            presence: presence
                .iter()
                .map(|(client, info)| (client.clone(), client_info(info)))
                .collect(),
        });
    })
}

/// The reply to `presence_stats`.
pub fn presence_stats_reply(id: u32, num_clients: u32, num_users: u32) -> Frame {
    reply(id, |r| {
        r.presence_stats = Some(schema::PresenceStatsResult {
            num_clients,
            num_users,
        });
    })
}

/// The reply to `refresh`.
pub fn refresh_reply(id: u32, client: &str, version: &str, ttl: Option<u32>) -> Frame {
    reply(id, |r| {
        r.refresh = Some(schema::RefreshResult {
            client: client.to_owned(),
            version: version.to_owned(),
            expires: ttl.is_some(),
            ttl: ttl.unwrap_or_default(),
        });
    })
}

/// The reply to `sub_refresh`.
pub fn sub_refresh_reply(id: u32, ttl: Option<u32>) -> Frame {
    reply(id, |r| {
        r.sub_refresh = Some(schema::SubRefreshResult {
            expires: ttl.is_some(),
            ttl: ttl.unwrap_or_default(),
        });
    })
}

/// The reply to `rpc`.
pub fn rpc_reply(id: u32, data: &Bytes) -> Frame {
    reply(id, |r| {
        r.rpc = Some(schema::DataRequest { data: data.clone() });
    })
}

/// A publication push: encoded once per publication and shared by every Protobuf subscriber.
pub fn publication_push(channel: &str, p: &Publication) -> Frame {
    push(channel, |push| push.publication = Some(publication(p)))
}

/// A publication push whose data is `delta` (Fossil's format) from the previous publication's.
pub fn delta_push(channel: &str, p: &Publication, delta: &[u8]) -> Frame {
    push(channel, |push| {
        push.publication = Some(schema::Publication {
            data: Bytes::copy_from_slice(delta),
            delta: true,
            ..publication(p)
        });
    })
}

/// A join push.
pub fn join_push(channel: &str, info: &ClientInfo) -> Frame {
    push(channel, |push| {
        push.join = Some(schema::Presence {
            info: Some(client_info(info)),
        });
    })
}

/// A leave push.
pub fn leave_push(channel: &str, info: &ClientInfo) -> Frame {
    push(channel, |push| {
        push.leave = Some(schema::Presence {
            info: Some(client_info(info)),
        });
    })
}

/// An unsubscribe push.
pub fn unsubscribe_push(channel: &str, code: u32, reason: &str) -> Frame {
    push(channel, |push| {
        push.unsubscribe = Some(schema::Unsubscribe {
            code,
            reason: reason.to_owned(),
        });
    })
}

/// Why the server ends a connection whose transport has no close frame of its own.
pub fn disconnect_push(disconnect: &Disconnect) -> Frame {
    push("", |push| {
        push.disconnect = Some(schema::Disconnect {
            code: disconnect.code.into(),
            reason: disconnect.reason.to_string(),
        });
    })
}

/// A server-side subscription added at runtime.
pub fn subscribe_push(channel: &str, r: &SubscribeResult) -> Frame {
    push(channel, |push| {
        push.subscribe = Some(schema::Subscribe {
            recoverable: r.recoverable,
            epoch: r.position.epoch.clone(),
            offset: r.position.offset,
            positioned: r.positioned,
            data: r.data.clone().unwrap_or_default(),
        });
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delimited(command: &schema::Command) -> Vec<u8> {
        command.encode_length_delimited_to_vec()
    }

    fn decoded_reply(frame: &Frame) -> schema::Reply {
        assert!(frame.is_binary());
        schema::Reply::decode_length_delimited(frame.bytes()).unwrap()
    }

    #[test]
    fn commands_in_one_frame_decode_in_order() {
        let mut frame = delimited(&schema::Command {
            id: 1,
            connect: Some(schema::ConnectRequest {
                token: "t".into(),
                data: Bytes::from_static(b"{\"a\": 1}"),
                name: "js".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        frame.extend(delimited(&schema::Command {
            id: 2,
            subscribe: Some(schema::SubscribeRequest {
                channel: "news".into(),
                recover: true,
                offset: 7,
                epoch: "e".into(),
                positioned: true,
                recoverable: true,
                flag: 2,
                ..Default::default()
            }),
            ..Default::default()
        }));
        let commands: Vec<_> = decode_frame(&frame)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(commands.len(), 2);
        match &commands[0].method {
            Method::Connect(c) => {
                assert_eq!((c.token.as_str(), c.name.as_str()), ("t", "js"));
                assert_eq!(c.data.as_deref(), Some(&b"{\"a\": 1}"[..]));
            }
            other => panic!("{other:?}"),
        }
        match &commands[1].method {
            Method::Subscribe(s) => {
                assert_eq!(commands[1].id, 2);
                assert_eq!(
                    (s.channel.as_str(), s.offset, s.epoch.as_str()),
                    ("news", 7, "e")
                );
                assert!(s.recover && s.positioned && s.recoverable && s.flag == 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_empty_command_is_the_heartbeat_answer() {
        let commands = decode_frame(&[0]);
        assert_eq!(
            commands,
            vec![Ok(Command {
                id: 0,
                method: Method::Pong
            })]
        );
    }

    #[test]
    fn payloads_must_be_json() {
        let publish = |data: &'static [u8]| {
            decode_frame(&delimited(&schema::Command {
                id: 5,
                publish: Some(schema::PublishRequest {
                    channel: "a".into(),
                    data: Bytes::from_static(data),
                }),
                ..Default::default()
            }))
        };
        assert_eq!(
            publish(b"\xff\x00binary"),
            vec![Err(DecodeError::NotJson { id: 5 })]
        );
        assert_eq!(
            publish(b"{\"a\":"),
            vec![Err(DecodeError::NotJson { id: 5 })]
        );
        match &publish(b"{\"text\":\"a\\nb\",\r\n\"n\":1}")[0] {
            Ok(Command {
                method: Method::Publish(p),
                ..
            }) => {
                assert_eq!(
                    p.data.as_deref(),
                    Some(&b"{\"text\":\"a\\nb\",\"n\":1}"[..])
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hostile_frames_are_malformed_not_panics() {
        let malformed = |frame: &[u8]| match decode_frame(frame).last() {
            Some(Err(DecodeError::Malformed(_))) => {}
            other => panic!("{frame:?}: {other:?}"),
        };
        // A varint that never ends.
        malformed(&[0x80]);
        malformed(&[0xff; 11]);
        // A length past the end of the frame.
        malformed(&[5, 0x08, 0x01]);
        // Field 1 (id, a varint) sent as a length-delimited field.
        malformed(&[3, 0x0a, 0x01, 0x00]);
        // A nested message whose length runs past its parent.
        malformed(&[4, 0x22, 0x09, 0x0a, 0x00]);
        // Groups nested far deeper than any message: refused, not a stack overflow.
        let mut deep = vec![0x7b_u8; 5000];
        let mut frame = Vec::new();
        prost::encode_length_delimiter(deep.len(), &mut frame).unwrap();
        frame.append(&mut deep);
        malformed(&frame);
        assert_eq!(decode_frame(&[]), vec![Err(DecodeError::Empty)]);
    }

    #[test]
    fn unknown_fields_are_skipped() {
        // id 3, then unknown field 99 (a string), then ping.
        let mut message = vec![0x08, 0x03];
        message.extend([0x9a, 0x06, 0x02, b'h', b'i']);
        message.extend([0x5a, 0x00]);
        let mut frame = vec![message.len() as u8];
        frame.extend(message);
        assert_eq!(
            decode_frame(&frame),
            vec![Ok(Command {
                id: 3,
                method: Method::Ping
            })]
        );
    }

    #[test]
    fn a_disconnect_push_carries_code_and_reason() {
        let push = decoded_reply(&disconnect_push(&Disconnect::SHUTDOWN))
            .push
            .unwrap();
        let disconnect = push.disconnect.unwrap();
        assert_eq!(
            (disconnect.code, disconnect.reason.as_str()),
            (3001, "shutdown")
        );
    }

    #[test]
    fn a_publication_push_carries_everything() {
        let publication = Publication {
            offset: 9,
            data: Bytes::from_static(b"{\"text\":\"hi\"}"),
            info: Some(ClientInfo {
                user: "ann".into(),
                client: "c1".into(),
                conn_info: Some(Bytes::from_static(b"{\"name\":\"Ann\"}")),
                chan_info: None,
            }),
            tags: BTreeMap::from([("k".into(), "v".into())]),
            time_ms: 0,
        };
        let reply = decoded_reply(&publication_push("news", &publication));
        assert_eq!(reply.id, 0);
        let push = reply.push.unwrap();
        assert_eq!(push.channel, "news");
        let p = push.publication.unwrap();
        assert_eq!((&p.data[..], p.offset), (&b"{\"text\":\"hi\"}"[..], 9));
        assert_eq!(p.tags.get("k").map(String::as_str), Some("v"));
        let info = p.info.unwrap();
        assert_eq!(
            (info.user.as_str(), &info.conn_info[..]),
            ("ann", &b"{\"name\":\"Ann\"}"[..])
        );
    }

    #[test]
    fn replies_carry_their_id_and_result() {
        let error = decoded_reply(&error_reply(4, &ClientError::PERMISSION_DENIED));
        assert_eq!(error.id, 4);
        assert_eq!(
            error.error.unwrap().code,
            ClientError::PERMISSION_DENIED.code
        );
        let result = SubscribeResult {
            recoverable: true,
            position: StreamPosition {
                offset: 3,
                epoch: "e".into(),
            },
            recovered: true,
            ..Default::default()
        };
        let subscribe = decoded_reply(&subscribe_reply(6, &result))
            .subscribe
            .unwrap();
        assert!(subscribe.recoverable && subscribe.recovered);
        assert_eq!((subscribe.offset, subscribe.epoch.as_str()), (3, "e"));
        assert!(decoded_reply(&publish_reply(7)).publish.is_some());
        assert_eq!(PING.bytes(), [0]);
    }
}
