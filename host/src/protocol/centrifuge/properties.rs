//! Property tests of the Centrifugo JSON codec: what the golden-frame tests show for a few values, shown
//! here for generated ones.
//!
//! - Commands: the decoder only reads, so the test writes each generated command the way the SDKs do and
//!   checks that decoding gives the command back — alone, batched in a frame, and with the whitespace
//!   other SDKs add.
//! - Replies and pushes: the encoders only write, so the test reads each frame back with `serde_json` and
//!   checks it holds exactly the values it was built from, on one line.
//! - Hostile input: no byte sequence makes the decoder panic, and every payload it keeps is one line of JSON.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use proptest::collection::{btree_map, hash_map, vec};
use proptest::option;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::command::*;
use super::encode::*;
use crate::engine::{ClientInfo, Publication, StreamPosition};
use crate::errors::ClientError;
use crate::protocol::Frame;

// ---------------------------------------------------------------------------------------------------------
// Generators

/// Any JSON value a client could embed. Floats are left out: without serde_json's `float_roundtrip` a
/// float may not parse back to the same bits, which would test serde_json rather than Herald.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::from),
            btree_map(any::<String>(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An embedded payload as Herald keeps it: compact JSON text, never `null` (which means "absent").
fn payload() -> impl Strategy<Value = Bytes> {
    json_value()
        .prop_filter("null is absent", |v| !v.is_null())
        .prop_map(|v| Bytes::from(v.to_string()))
}

fn optional_payload() -> impl Strategy<Value = Option<Bytes>> {
    option::of(payload())
}

fn connect() -> impl Strategy<Value = ConnectRequest> {
    let recovery =
        (any::<bool>(), any::<u64>(), any::<String>()).prop_map(|(recover, offset, epoch)| {
            SubscribeRecovery {
                recover,
                offset,
                epoch,
            }
        });
    (
        any::<String>(),
        optional_payload(),
        hash_map(any::<String>(), recovery, 0..3),
        any::<String>(),
        any::<String>(),
    )
        .prop_map(|(token, data, subs, name, version)| ConnectRequest {
            token,
            data,
            subs,
            name,
            version,
        })
}

fn subscribe() -> impl Strategy<Value = SubscribeRequest> {
    (
        (
            any::<String>(),
            any::<String>(),
            any::<bool>(),
            any::<u64>(),
        ),
        (any::<String>(), optional_payload()),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<i64>()),
    )
        .prop_map(
            |(
                (channel, token, recover, offset),
                (epoch, data),
                (positioned, recoverable, join_leave, flag),
            )| SubscribeRequest {
                channel,
                token,
                recover,
                offset,
                epoch,
                data,
                positioned,
                recoverable,
                join_leave,
                flag,
                delta: String::new(),
            },
        )
}

fn channel_request() -> impl Strategy<Value = ChannelRequest> {
    any::<String>().prop_map(|channel| ChannelRequest { channel })
}

fn history() -> impl Strategy<Value = HistoryRequest> {
    let since = (any::<u64>(), any::<String>())
        .prop_map(|(offset, epoch)| StreamPositionRequest { offset, epoch });
    (
        any::<String>(),
        any::<i64>(),
        option::of(since),
        any::<bool>(),
    )
        .prop_map(|(channel, limit, since, reverse)| HistoryRequest {
            channel,
            limit,
            since,
            reverse,
        })
}

/// A method other than `send` and the pong, which depend on the id.
fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        connect().prop_map(Method::Connect),
        subscribe().prop_map(Method::Subscribe),
        channel_request().prop_map(Method::Unsubscribe),
        (any::<String>(), payload()).prop_map(|(channel, data)| Method::Publish(PublishRequest {
            channel,
            data: Some(data)
        })),
        channel_request().prop_map(Method::Presence),
        channel_request().prop_map(Method::PresenceStats),
        history().prop_map(Method::History),
        Just(Method::Ping),
        (any::<String>(), optional_payload())
            .prop_map(|(method, data)| Method::Rpc(RpcRequest { method, data })),
        any::<String>().prop_map(|token| Method::Refresh(RefreshRequest { token })),
        (any::<String>(), any::<String>())
            .prop_map(|(channel, token)| Method::SubRefresh(SubRefreshRequest { channel, token })),
    ]
}

/// Any command a client can send: ids are non-zero except for `send` (any id) and the pong (always 0).
fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        8 => (1..=u32::MAX, method()).prop_map(|(id, method)| Command { id, method }),
        1 => (any::<u32>(), optional_payload()).prop_map(|(id, data)| Command {
            id,
            method: Method::Send(SendRequest { data }),
        }),
        1 => Just(Command { id: 0, method: Method::Pong }),
    ]
}

fn client_info() -> impl Strategy<Value = ClientInfo> {
    (
        any::<String>(),
        any::<String>(),
        optional_payload(),
        optional_payload(),
    )
        .prop_map(|(user, client, conn_info, chan_info)| ClientInfo {
            user,
            client,
            conn_info,
            chan_info,
        })
}

/// A publication as the encoders see it (`time_ms` is not on the client wire, so it stays 0).
fn publication() -> impl Strategy<Value = Publication> {
    (
        any::<u64>(),
        payload(),
        option::of(client_info()),
        btree_map(any::<String>(), any::<String>(), 0..3),
    )
        .prop_map(|(offset, data, info, tags)| Publication {
            offset,
            data,
            info,
            tags,
            time_ms: 0,
        })
}

fn position() -> impl Strategy<Value = StreamPosition> {
    (any::<u64>(), any::<String>()).prop_map(|(offset, epoch)| StreamPosition { offset, epoch })
}

// ---------------------------------------------------------------------------------------------------------
// The test's own writer of commands (the SDKs' side of the wire)

fn raw(data: &Option<Bytes>) -> Value {
    data.as_ref().map_or(Value::Null, |data| {
        serde_json::from_slice(data).expect("generated payloads are JSON")
    })
}

/// Writes a command as an SDK would: every field present, zero values included.
fn wire(command: &Command) -> Value {
    let (name, body) = match &command.method {
        Method::Connect(r) => (
            "connect",
            json!({
                "token": r.token, "data": raw(&r.data), "name": r.name, "version": r.version,
                "subs": r.subs.iter().map(|(channel, s)| (channel.clone(), json!({
                    "recover": s.recover, "offset": s.offset, "epoch": s.epoch,
                }))).collect::<Map<_, _>>(),
            }),
        ),
        Method::Subscribe(r) => (
            "subscribe",
            json!({
                "channel": r.channel, "token": r.token, "recover": r.recover, "offset": r.offset,
                "epoch": r.epoch, "data": raw(&r.data), "positioned": r.positioned,
                "recoverable": r.recoverable, "join_leave": r.join_leave, "flag": r.flag,
            }),
        ),
        Method::Unsubscribe(r) => ("unsubscribe", json!({ "channel": r.channel })),
        Method::Publish(r) => (
            "publish",
            json!({ "channel": r.channel, "data": raw(&r.data) }),
        ),
        Method::Presence(r) => ("presence", json!({ "channel": r.channel })),
        Method::PresenceStats(r) => ("presence_stats", json!({ "channel": r.channel })),
        Method::History(r) => (
            "history",
            json!({
                "channel": r.channel, "limit": r.limit, "reverse": r.reverse,
                "since": r.since.as_ref().map(|s| json!({ "offset": s.offset, "epoch": s.epoch })),
            }),
        ),
        Method::Ping => ("ping", json!({})),
        Method::Send(r) => ("send", json!({ "data": raw(&r.data) })),
        Method::Rpc(r) => ("rpc", json!({ "method": r.method, "data": raw(&r.data) })),
        Method::Refresh(r) => ("refresh", json!({ "token": r.token })),
        Method::SubRefresh(r) => (
            "sub_refresh",
            json!({ "channel": r.channel, "token": r.token }),
        ),
        Method::Pong => return json!({}),
    };
    let mut object = Map::new();
    object.insert("id".into(), command.id.into());
    object.insert(name.into(), body);
    Value::Object(object)
}

/// The payload of a decoded command, where it has one.
fn payload_of(method: &Method) -> Option<&Bytes> {
    match method {
        Method::Connect(r) => r.data.as_ref(),
        Method::Subscribe(r) => r.data.as_ref(),
        Method::Publish(r) => r.data.as_ref(),
        Method::Rpc(r) => r.data.as_ref(),
        Method::Send(r) => r.data.as_ref(),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------------------
// The test's own reader of frames (the SDKs' side of the wire)

fn parse(frame: &Frame) -> Value {
    let text = std::str::from_utf8(frame.bytes()).expect("frames are UTF-8");
    assert!(!text.contains(['\n', '\r']), "a frame spans lines: {text}");
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn text(value: &Value) -> String {
    value.as_str().expect("a string").to_owned()
}

fn number(value: Option<&Value>) -> u64 {
    value.map_or(0, |v| v.as_u64().expect("a number"))
}

fn embedded(value: Option<&Value>) -> Option<Bytes> {
    value.map(|v| Bytes::from(v.to_string()))
}

fn read_client_info(value: &Value) -> ClientInfo {
    ClientInfo {
        user: text(&value["user"]),
        client: text(&value["client"]),
        conn_info: embedded(value.get("conn_info")),
        chan_info: embedded(value.get("chan_info")),
    }
}

fn read_publication(value: &Value) -> Publication {
    Publication {
        offset: number(value.get("offset")),
        data: embedded(value.get("data")).expect("data is always written"),
        info: value.get("info").map(read_client_info),
        tags: value.get("tags").map_or_else(BTreeMap::new, |tags| {
            let tags = tags.as_object().expect("tags are an object");
            tags.iter().map(|(k, v)| (k.clone(), text(v))).collect()
        }),
        time_ms: 0,
    }
}

fn read_publications(value: &Value) -> Vec<Publication> {
    value
        .as_array()
        .map_or_else(Vec::new, |list| list.iter().map(read_publication).collect())
}

// ---------------------------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A command written the way the SDKs write it decodes to exactly that command.
    #[test]
    fn command_round_trips(command in command()) {
        let line = wire(&command).to_string();
        prop_assert_eq!(Command::decode(&line), Ok(command));
    }

    /// Commands batched one per line (with or without a trailing newline) decode in order.
    #[test]
    fn frame_round_trips(commands in vec(command(), 1..6), trailing_newline in any::<bool>()) {
        let mut frame = commands.iter().map(|c| wire(c).to_string()).collect::<Vec<_>>().join("\n");
        if trailing_newline {
            frame.push('\n');
        }
        let decoded: Result<Vec<_>, _> = Command::decode_frame(&frame).collect();
        prop_assert_eq!(decoded, Ok(commands));
    }

    /// Whitespace between tokens (python's `", "` and `": "`, pretty printing) changes nothing but the
    /// formatting of a payload, which stays the same JSON on one line.
    #[test]
    fn whitespace_is_insignificant(command in command()) {
        let line = serde_json::to_string_pretty(&wire(&command)).expect("serializable");
        let decoded = Command::decode(&line).expect("a pretty command decodes");
        prop_assert_eq!(decoded.id, command.id);
        prop_assert_eq!(std::mem::discriminant(&decoded.method), std::mem::discriminant(&command.method));
        match (payload_of(&decoded.method), payload_of(&command.method)) {
            (Some(got), Some(sent)) => {
                prop_assert!(!got.contains(&b'\n') && !got.contains(&b'\r'));
                let got: Value = serde_json::from_slice(got).expect("a kept payload is JSON");
                let sent: Value = serde_json::from_slice(sent).expect("generated payloads are JSON");
                prop_assert_eq!(got, sent);
            }
            (got, sent) => prop_assert_eq!(got.is_some(), sent.is_some()),
        }
    }

    /// No byte sequence panics the decoder (the transport hands it text, so invalid UTF-8 arrives
    /// replaced), and every payload it keeps is JSON on one line.
    #[test]
    fn any_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        check_hostile(&String::from_utf8_lossy(&bytes))?;
    }

    /// The same for text made of JSON's own tokens, which gets much further into the parser than
    /// random bytes.
    #[test]
    fn json_like_text_never_panics(text in r#"([{}\[\]":,\n ]|"id"|"connect"|"subscribe"|"publish"|"data"|"send"|"channel"|"since"|true|null|-?[0-9]{1,21}|\\u[0-9a-fA-F]{4}|\\.|.){0,64}"#) {
        check_hostile(&text)?;
    }

    /// Valid commands cut short or with a byte changed never panic the decoder either.
    #[test]
    fn damaged_commands_never_panic(command in command(), cut in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let line = wire(&command).to_string().into_bytes();
        let at = cut.index(line.len());
        check_hostile(&String::from_utf8_lossy(&line[..at]))?;
        let mut changed = line;
        changed[at] = byte;
        check_hostile(&String::from_utf8_lossy(&changed))?;
    }

    /// A publication push holds exactly the channel and publication it was built from.
    #[test]
    fn publication_push_round_trips(channel in any::<String>(), publication in publication()) {
        let frame = parse(&publication_push(&channel, &publication));
        let push = &frame["push"];
        prop_assert_eq!(text(&push["channel"]), channel);
        prop_assert_eq!(read_publication(&push["pub"]), publication);
    }

    /// Join and leave pushes hold the client info they were built from.
    #[test]
    fn join_and_leave_round_trip(channel in any::<String>(), info in client_info()) {
        for (kind, frame) in [("join", join_push(&channel, &info)), ("leave", leave_push(&channel, &info))] {
            let frame = parse(&frame);
            prop_assert_eq!(text(&frame["push"]["channel"]), channel.as_str());
            prop_assert_eq!(read_client_info(&frame["push"][kind]["info"]), info.clone());
        }
    }

    /// An unsubscribe push holds its code and reason.
    #[test]
    fn unsubscribe_push_round_trips(channel in any::<String>(), code in any::<u32>(), reason in any::<String>()) {
        let frame = parse(&unsubscribe_push(&channel, code, &reason));
        let unsubscribe = &frame["push"]["unsubscribe"];
        prop_assert_eq!(number(unsubscribe.get("code")), u64::from(code));
        prop_assert_eq!(text(&unsubscribe["reason"]), reason);
    }

    /// An error reply holds the id, code, message and temporary flag.
    #[test]
    fn error_reply_round_trips(id in any::<u32>(), code in any::<u32>(), message in any::<String>(), temporary in any::<bool>()) {
        let error = ClientError { code, message: message.clone().into(), temporary };
        let frame = parse(&error_reply(id, &error));
        prop_assert_eq!(number(frame.get("id")), u64::from(id));
        prop_assert_eq!(number(frame["error"].get("code")), u64::from(code));
        prop_assert_eq!(text(&frame["error"]["message"]), message);
        prop_assert_eq!(frame["error"].get("temporary").is_some(), temporary);
    }

    /// A history reply holds the publications in order and the stream position.
    #[test]
    fn history_reply_round_trips(id in any::<u32>(), publications in vec(publication(), 0..4), position in position()) {
        let shared: Vec<_> = publications.iter().cloned().map(Arc::new).collect();
        let frame = parse(&history_reply(id, &shared, &position));
        let history = &frame["history"];
        prop_assert_eq!(number(frame.get("id")), u64::from(id));
        prop_assert_eq!(read_publications(&history["publications"]), publications);
        prop_assert_eq!(text(&history["epoch"]), position.epoch);
        prop_assert_eq!(number(history.get("offset")), position.offset);
    }

    /// A presence reply holds every client with its info; stats hold both counts.
    #[test]
    fn presence_replies_round_trip(id in any::<u32>(), presence in hash_map(any::<String>(), client_info(), 0..4), clients in any::<u32>(), users in any::<u32>()) {
        let frame = parse(&presence_reply(id, &presence));
        let read: HashMap<String, ClientInfo> = frame["presence"]["presence"]
            .as_object()
            .expect("presence is an object")
            .iter()
            .map(|(client, info)| (client.clone(), read_client_info(info)))
            .collect();
        prop_assert_eq!(read, presence);
        let frame = parse(&presence_stats_reply(id, clients, users));
        prop_assert_eq!(number(frame["presence_stats"].get("num_clients")), u64::from(clients));
        prop_assert_eq!(number(frame["presence_stats"].get("num_users")), u64::from(users));
    }

    /// A subscribe reply holds every field of the result, zero values left out.
    #[test]
    fn subscribe_reply_round_trips(
        id in any::<u32>(),
        ttl in option::of(any::<u32>()),
        flags in any::<[bool; 4]>(),
        position in position(),
        publications in vec(publication(), 0..3),
        data in optional_payload(),
    ) {
        let [recoverable, positioned, recovered, was_recovering] = flags;
        let result = SubscribeResult {
            ttl,
            recoverable,
            positioned,
            position: position.clone(),
            publications: publications.iter().cloned().map(Arc::new).collect(),
            recovered,
            was_recovering,
            data: data.clone(),
            delta: false,
        };
        let frame = parse(&subscribe_reply(id, &result));
        let r = &frame["subscribe"];
        let flag = |key: &str| r.get(key).is_some_and(|v| v == &Value::Bool(true));
        prop_assert_eq!(number(frame.get("id")), u64::from(id));
        prop_assert_eq!(flag("expires"), ttl.is_some());
        prop_assert_eq!(r.get("ttl").map(|v| v.as_u64()), ttl.map(|t| Some(u64::from(t))));
        prop_assert_eq!(
            [flag("recoverable"), flag("positioned"), flag("recovered"), flag("was_recovering")],
            flags
        );
        prop_assert_eq!(r.get("epoch").map_or_else(String::new, text), position.epoch);
        prop_assert_eq!(number(r.get("offset")), position.offset);
        prop_assert_eq!(r.get("publications").map_or_else(Vec::new, read_publications), publications);
        prop_assert_eq!(embedded(r.get("data")), data);
    }
}

/// The decoder's contract on hostile text: no panic, and kept payloads are one line of JSON text (valid
/// syntax: a number like `1E400` is JSON though no f64 holds it, so the check does not build values).
fn check_hostile(frame: &str) -> Result<(), TestCaseError> {
    for command in Command::decode_frame(frame).flatten() {
        if let Some(payload) = payload_of(&command.method) {
            prop_assert!(!payload.contains(&b'\n') && !payload.contains(&b'\r'));
            prop_assert!(
                serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok(),
                "{payload:?}"
            );
        }
    }
    Ok(())
}
