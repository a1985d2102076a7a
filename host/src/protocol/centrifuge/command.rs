//! Decoding client commands.

use std::collections::HashMap;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::protocol::compact_json;

/// Why a frame could not be decoded; every case is a protocol violation (close 3501).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// An empty frame or an empty line inside one.
    #[error("empty command")]
    Empty,
    /// A line that is not a JSON command object of the expected shape.
    #[error("malformed command: {0}")]
    Malformed(String),
    /// A command with no method the server knows.
    #[error("unknown method")]
    UnknownMethod,
    /// A Protobuf command whose payload is not JSON text: the command is refused (error 107), the
    /// connection stays.
    #[error("data is not JSON")]
    NotJson {
        /// The command's id, for the error reply.
        id: u32,
    },
}

/// A stream position sent by a client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct StreamPositionRequest {
    /// Offset of the last publication the client has.
    pub offset: u64,
    /// Epoch of the stream that offset belongs to.
    pub epoch: String,
}

/// `connect`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ConnectRequest {
    /// Connection JWT.
    pub token: String,
    /// Custom connect data.
    #[serde(deserialize_with = "raw_json")]
    pub data: Option<Bytes>,
    /// Recovery of server-side subscriptions.
    pub subs: HashMap<String, SubscribeRecovery>,
    /// SDK or app name (informational).
    pub name: String,
    /// App version (informational).
    pub version: String,
}

/// Recovery state a client sends for a server-side subscription in `connect.subs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct SubscribeRecovery {
    /// Whether to recover.
    pub recover: bool,
    /// Last seen offset.
    pub offset: u64,
    /// Epoch of that offset.
    pub epoch: String,
}

/// `subscribe`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct SubscribeRequest {
    /// The channel.
    pub channel: String,
    /// Subscription JWT.
    pub token: String,
    /// Recover missed publications from `offset`/`epoch`.
    pub recover: bool,
    /// Last seen offset.
    pub offset: u64,
    /// Epoch of that offset.
    pub epoch: String,
    /// Custom subscribe data.
    #[serde(deserialize_with = "raw_json")]
    pub data: Option<Bytes>,
    /// Ask for positioning.
    pub positioned: bool,
    /// Ask for recovery.
    pub recoverable: bool,
    /// Ask for join/leave pushes.
    pub join_leave: bool,
    /// Bit flags; bit 2 asks for error 112 instead of `recovered: false`.
    pub flag: i64,
    /// Delta compression asked for (`"fossil"`), empty for none.
    pub delta: String,
}

/// Subscribe flag: answer 112 instead of an unrecovered subscription.
pub const FLAG_REJECT_UNRECOVERED: i64 = 2;

/// A request that names only a channel (`unsubscribe`, `presence`, `presence_stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ChannelRequest {
    /// The channel.
    pub channel: String,
}

/// `publish`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct PublishRequest {
    /// The channel.
    pub channel: String,
    /// The payload.
    #[serde(deserialize_with = "raw_json")]
    pub data: Option<Bytes>,
}

/// `history`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct HistoryRequest {
    /// The channel.
    pub channel: String,
    /// 0: no publications (only the top); negative: all (capped); positive: at most that many.
    pub limit: i64,
    /// Start after (or, reversed, before) this position.
    pub since: Option<StreamPositionRequest>,
    /// Newest first.
    pub reverse: bool,
}

/// `rpc`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RpcRequest {
    /// Method name.
    pub method: String,
    /// Payload.
    #[serde(deserialize_with = "raw_json")]
    pub data: Option<Bytes>,
}

/// `send` (asynchronous message, no reply).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct SendRequest {
    /// Payload.
    #[serde(deserialize_with = "raw_json")]
    pub data: Option<Bytes>,
}

/// `refresh`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct RefreshRequest {
    /// New connection token.
    pub token: String,
}

/// `sub_refresh`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct SubRefreshRequest {
    /// The channel.
    pub channel: String,
    /// New subscription token.
    pub token: String,
}

/// What a command asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    /// Authenticate and start the session.
    Connect(ConnectRequest),
    /// Subscribe to a channel.
    Subscribe(SubscribeRequest),
    /// Unsubscribe from a channel.
    Unsubscribe(ChannelRequest),
    /// Publish into a channel.
    Publish(PublishRequest),
    /// Who is in a channel.
    Presence(ChannelRequest),
    /// How many are in a channel.
    PresenceStats(ChannelRequest),
    /// Read a channel's stream.
    History(HistoryRequest),
    /// The schema's `ping` command (not the heartbeat).
    Ping,
    /// Fire-and-forget message to the server.
    Send(SendRequest),
    /// Call a server method.
    Rpc(RpcRequest),
    /// Refresh the connection token.
    Refresh(RefreshRequest),
    /// Refresh a subscription token.
    SubRefresh(SubRefreshRequest),
    /// The heartbeat answer: a command with id 0 that is not `send`.
    Pong,
}

impl Method {
    /// The command's name in metrics' `command` label.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Subscribe(_) => "subscribe",
            Self::Unsubscribe(_) => "unsubscribe",
            Self::Publish(_) => "publish",
            Self::Presence(_) => "presence",
            Self::PresenceStats(_) => "presence_stats",
            Self::History(_) => "history",
            Self::Ping => "ping",
            Self::Send(_) => "send",
            Self::Rpc(_) => "rpc",
            Self::Refresh(_) => "refresh",
            Self::SubRefresh(_) => "sub_refresh",
            Self::Pong => "pong",
        }
    }
}

/// One decoded command.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// The client's id for matching the reply; 0 only for `send` and pongs.
    pub id: u32,
    /// What is asked.
    pub method: Method,
}

/// The wire shape: every method an optional field; the first one present wins.
#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    id: u32,
    connect: Option<ConnectRequest>,
    subscribe: Option<SubscribeRequest>,
    unsubscribe: Option<ChannelRequest>,
    publish: Option<PublishRequest>,
    presence: Option<ChannelRequest>,
    presence_stats: Option<ChannelRequest>,
    history: Option<HistoryRequest>,
    ping: Option<serde::de::IgnoredAny>,
    send: Option<SendRequest>,
    rpc: Option<RpcRequest>,
    refresh: Option<RefreshRequest>,
    sub_refresh: Option<SubRefreshRequest>,
}

impl Command {
    /// Decodes one line (one JSON document).
    pub fn decode(line: &str) -> Result<Self, DecodeError> {
        if line.trim().is_empty() {
            return Err(DecodeError::Empty);
        }
        let wire: Wire =
            serde_json::from_str(line).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if let Some(send) = wire.send {
            return Ok(Self {
                id: wire.id,
                method: Method::Send(send),
            });
        }
        if wire.id == 0 {
            return Ok(Self {
                id: 0,
                method: Method::Pong,
            });
        }
        let method = if let Some(r) = wire.connect {
            Method::Connect(r)
        } else if let Some(r) = wire.subscribe {
            Method::Subscribe(r)
        } else if let Some(r) = wire.unsubscribe {
            Method::Unsubscribe(r)
        } else if let Some(r) = wire.publish {
            Method::Publish(r)
        } else if let Some(r) = wire.presence {
            Method::Presence(r)
        } else if let Some(r) = wire.presence_stats {
            Method::PresenceStats(r)
        } else if let Some(r) = wire.history {
            Method::History(r)
        } else if wire.ping.is_some() {
            Method::Ping
        } else if let Some(r) = wire.rpc {
            Method::Rpc(r)
        } else if let Some(r) = wire.refresh {
            Method::Refresh(r)
        } else if let Some(r) = wire.sub_refresh {
            Method::SubRefresh(r)
        } else {
            return Err(DecodeError::UnknownMethod);
        };
        Ok(Self {
            id: wire.id,
            method,
        })
    }

    /// Decodes a text frame: commands separated by `\n`, in order. A trailing newline is fine.
    pub fn decode_frame(frame: &str) -> impl Iterator<Item = Result<Self, DecodeError>> + '_ {
        let frame = frame.strip_suffix('\n').unwrap_or(frame);
        frame.split('\n').map(Self::decode)
    }
}

/// Embedded JSON (`data`, `info`): kept as compact text; `null` counts as absent.
fn raw_json<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Bytes>, D::Error> {
    let raw: Option<Box<RawValue>> = Option::deserialize(deserializer)?;
    Ok(raw
        .map(|r| r.get().trim().to_owned())
        .filter(|s| s != "null")
        .map(|s| compact_json(&s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Command {
        Command::decode(line).unwrap()
    }

    #[test]
    fn js_batches_connect_and_subscribe_in_order() {
        let frame = "{\"connect\":{\"name\":\"js\"},\"id\":1}\n{\"subscribe\":{\"channel\":\"news\",\"positioned\":true,\"recoverable\":true,\"flag\":1},\"id\":2}";
        let commands: Vec<_> = Command::decode_frame(frame)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(commands.len(), 2);
        assert!(matches!(&commands[0].method, Method::Connect(c) if c.name == "js"));
        match &commands[1].method {
            Method::Subscribe(s) => {
                assert_eq!(commands[1].id, 2);
                assert_eq!(s.channel, "news");
                assert!(s.positioned && s.recoverable && s.flag == 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn python_style_spaces_and_unknown_fields_are_fine() {
        let c = one(
            "{\"id\": 3, \"subscribe\": {\"channel\": \"a\", \"recover\": true, \"offset\": 5, \"epoch\": \"xyz\", \"delta\": \"fossil\", \"tf\": {}}}",
        );
        match c.method {
            Method::Subscribe(s) => assert!(s.recover && s.offset == 5 && s.epoch == "xyz"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn id_zero_is_a_pong_unless_send() {
        assert_eq!(one("{}").method, Method::Pong);
        assert_eq!(
            one("{\"subscribe\":{\"channel\":\"a\"}}").method,
            Method::Pong
        );
        assert!(matches!(
            one("{\"send\":{\"data\":1}}").method,
            Method::Send(_)
        ));
    }

    #[test]
    fn data_is_kept_raw_and_compacted() {
        let c = one(
            "{\"id\":4,\"publish\":{\"channel\":\"a\",\"data\":{\"text\":\"a\\nb\", \"n\":\r\n 1}}}",
        );
        match c.method {
            Method::Publish(p) => assert_eq!(p.data.unwrap(), "{\"text\":\"a\\nb\", \"n\": 1}"),
            other => panic!("{other:?}"),
        }
        match one("{\"id\":4,\"publish\":{\"channel\":\"a\",\"data\":null}}").method {
            Method::Publish(p) => assert_eq!(p.data, None),
            other => panic!("{other:?}"),
        }
    }

    /// Found by the property test: a number no f64 holds is still JSON text, kept as it came.
    #[test]
    fn numbers_beyond_f64_are_kept() {
        match one(
            "{\"id\":1,\"publish\":{\"channel\":\"a\",\"data\":{\"x\":1E000057105827149294}}}",
        )
        .method
        {
            Method::Publish(p) => {
                let data = p.data.unwrap();
                assert_eq!(data, "{\"x\":1E000057105827149294}");
                assert!(serde_json::from_slice::<serde::de::IgnoredAny>(&data).is_ok());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_lines_are_errors() {
        assert_eq!(Command::decode(""), Err(DecodeError::Empty));
        assert!(matches!(
            Command::decode("not json"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            Command::decode("[1,2]"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            Command::decode("{\"id\":1,\"subscribe\":{\"channel\":5}}"),
            Err(DecodeError::Malformed(_))
        ));
        assert_eq!(
            Command::decode("{\"id\":1,\"frobnicate\":{}}"),
            Err(DecodeError::UnknownMethod)
        );
        assert!(matches!(
            Command::decode("{\"id\":-1,\"connect\":{}}"),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn history_since_and_limit() {
        match one("{\"id\":9,\"history\":{\"channel\":\"a\",\"limit\":-1,\"since\":{\"offset\":2,\"epoch\":\"e\"},\"reverse\":true}}").method {
            Method::History(h) => {
                assert_eq!(h.limit, -1);
                assert_eq!(h.since, Some(StreamPositionRequest { offset: 2, epoch: "e".into() }));
                assert!(h.reverse);
            }
            other => panic!("{other:?}"),
        }
    }
}
