//! Encoding replies, pushes and pings.
//!
//! Written by hand rather than through serde so embedded payloads (already validated, compact JSON) are
//! copied verbatim, zero values are left out as the protocol wants, and the always-present fields of the
//! wire notes (§3) are always there.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;

use crate::disconnect::Disconnect;
use crate::engine::{ClientInfo, Publication, StreamPosition};
use crate::errors::ClientError;
use crate::protocol::Frame;

/// The server's heartbeat ping.
pub const PING: Frame = Frame::from_static("{}");

/// A JSON object being written into a string; fields are separated automatically.
pub struct Object<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> Object<'a> {
    /// Opens an object at the end of `out`.
    pub fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, empty: true }
    }

    /// Writes a key and returns the buffer for its value.
    pub fn key(&mut self, key: &str) -> &mut Vec<u8> {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        push_str(self.out, key);
        self.out.push(b':');
        self.out
    }

    /// A string field, always written.
    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        let out = self.key(key);
        push_str(out, value);
        self
    }

    /// A string field, left out when empty.
    pub fn str_nonempty(&mut self, key: &str, value: &str) -> &mut Self {
        if !value.is_empty() {
            self.str(key, value);
        }
        self
    }

    /// A number field, always written.
    pub fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        let out = self.key(key);
        out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        self
    }

    /// A number field, left out when zero.
    pub fn u64_nonzero(&mut self, key: &str, value: u64) -> &mut Self {
        if value != 0 {
            self.u64(key, value);
        }
        self
    }

    /// A bool field, left out when false.
    pub fn flag(&mut self, key: &str, value: bool) -> &mut Self {
        if value {
            self.key(key).extend_from_slice(b"true");
        }
        self
    }

    /// Embedded JSON, left out when absent.
    pub fn raw(&mut self, key: &str, value: Option<&Bytes>) -> &mut Self {
        if let Some(value) = value {
            // Payloads are validated, compact JSON from the moment they enter Herald.
            self.key(key).extend_from_slice(value);
        }
        self
    }

    /// A nested object.
    pub fn object(&mut self, key: &str, write: impl FnOnce(&mut Object<'_>)) -> &mut Self {
        let out = self.key(key);
        let mut inner = Object::open(out);
        write(&mut inner);
        inner.close();
        self
    }

    /// A nested array, written element by element.
    pub fn array<T>(
        &mut self,
        key: &str,
        items: impl IntoIterator<Item = T>,
        mut write: impl FnMut(&mut Vec<u8>, T),
    ) -> &mut Self {
        let out = self.key(key);
        out.push(b'[');
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write(out, item);
        }
        out.push(b']');
        self
    }

    /// Closes the object.
    pub fn close(self) {
        self.out.push(b'}');
    }
}

fn push_str(out: &mut Vec<u8>, value: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(out, value);
}

/// Writes a ClientInfo object (`user` and `client` always present).
pub fn write_client_info(out: &mut Vec<u8>, info: &ClientInfo) {
    let mut o = Object::open(out);
    o.str("user", &info.user).str("client", &info.client);
    o.raw("conn_info", info.conn_info.as_ref())
        .raw("chan_info", info.chan_info.as_ref());
    o.close();
}

/// Writes a Publication object.
pub fn write_publication(out: &mut Vec<u8>, publication: &Publication) {
    write_publication_as(out, publication, Data::Json);
}

/// How a publication's data is written.
#[derive(Debug, Clone, Copy)]
enum Data<'a> {
    /// As the JSON value it is.
    Json,
    /// As a JSON string holding its JSON text: what a subscription with delta compression receives
    /// for a full publication (the SDK applies the next delta to exactly these bytes).
    Text,
    /// This delta (Fossil's format, UTF-8) as a JSON string, marked `"delta":true`.
    Delta(&'a str),
}

fn write_publication_as(out: &mut Vec<u8>, publication: &Publication, data: Data<'_>) {
    let mut o = Object::open(out);
    match data {
        Data::Json => {
            o.raw("data", Some(&publication.data));
        }
        // Payloads are valid UTF-8 JSON from the moment they enter Herald.
        Data::Text => {
            o.str("data", &String::from_utf8_lossy(&publication.data));
        }
        Data::Delta(delta) => {
            o.str("data", delta);
        }
    }
    if let Some(info) = &publication.info {
        write_client_info(o.key("info"), info);
    }
    o.u64_nonzero("offset", publication.offset);
    write_tags(&mut o, &publication.tags);
    o.flag("delta", matches!(data, Data::Delta(_)));
    o.close();
}

fn write_tags(o: &mut Object<'_>, tags: &BTreeMap<String, String>) {
    if !tags.is_empty() {
        o.object("tags", |t| {
            for (k, v) in tags {
                t.str(k, v);
            }
        });
    }
}

fn reply(id: u32, method: &str, write: impl FnOnce(&mut Object<'_>)) -> Frame {
    let mut out = Vec::with_capacity(64);
    let mut o = Object::open(&mut out);
    o.u64("id", id.into());
    o.object(method, write);
    o.close();
    Frame::new(out)
}

/// A reply with an empty result, e.g. `{"id":3,"publish":{}}`.
pub fn empty_reply(id: u32, method: &str) -> Frame {
    reply(id, method, |_| {})
}

/// An error reply.
pub fn error_reply(id: u32, error: &ClientError) -> Frame {
    let mut out = Vec::with_capacity(64);
    let mut o = Object::open(&mut out);
    o.u64("id", id.into());
    o.object("error", |e| {
        e.u64("code", error.code.into())
            .str("message", &error.message)
            .flag("temporary", error.temporary);
    });
    o.close();
    Frame::new(out)
}

/// The result of a connect.
#[derive(Debug, Clone, Default)]
pub struct ConnectResult {
    /// The new connection's id.
    pub client: String,
    /// Server version.
    pub version: String,
    /// Seconds until the connection expires, when it does.
    pub ttl: Option<u32>,
    /// Custom data for the client.
    pub data: Option<Bytes>,
    /// Server-side subscriptions made at connect.
    pub subs: Vec<(String, SubscribeResult)>,
    /// App-level ping interval in seconds (0 when WebSocket ping frames are used).
    pub ping: u32,
    /// Whether the client must answer pings.
    pub pong: bool,
    /// On an emulated transport: the session's name, which the client's separate command requests carry.
    pub session: Option<String>,
    /// On an emulated transport: this node's id, carried beside the session's name.
    pub node: Option<String>,
}

/// The result of a subscribe (also used for server-side subscriptions).
#[derive(Debug, Clone, Default)]
pub struct SubscribeResult {
    /// Seconds until the subscription expires, when it does.
    pub ttl: Option<u32>,
    /// Recovery is on for this subscription.
    pub recoverable: bool,
    /// Positioning is on.
    pub positioned: bool,
    /// Stream position (top, or the client's offset when recovered).
    pub position: StreamPosition,
    /// Recovered publications, in order.
    pub publications: Vec<Arc<Publication>>,
    /// Whether recovery succeeded.
    pub recovered: bool,
    /// Whether the client asked to recover.
    pub was_recovering: bool,
    /// Custom data for the client.
    pub data: Option<Bytes>,
    /// Delta compression was negotiated: publications come as text, or as deltas of it.
    pub delta: bool,
}

fn write_subscribe_result(o: &mut Object<'_>, r: &SubscribeResult) {
    if let Some(ttl) = r.ttl {
        o.flag("expires", true).u64("ttl", ttl.into());
    }
    o.flag("recoverable", r.recoverable)
        .flag("positioned", r.positioned);
    o.str_nonempty("epoch", &r.position.epoch)
        .u64_nonzero("offset", r.position.offset);
    if !r.publications.is_empty() {
        let data = if r.delta { Data::Text } else { Data::Json };
        o.array("publications", &r.publications, |out, p| {
            write_publication_as(out, p, data)
        });
    }
    o.flag("recovered", r.recovered)
        .flag("was_recovering", r.was_recovering)
        .flag("delta", r.delta);
    o.raw("data", r.data.as_ref());
}

/// `{"push":{"disconnect":{"code":…,"reason":"…"}}}`: why the server ends a connection whose transport has
/// no close frame of its own (the HTTP streams).
pub fn disconnect_push(disconnect: &Disconnect) -> Frame {
    let mut out = Vec::with_capacity(64);
    let mut o = Object::open(&mut out);
    o.object("push", |p| {
        p.object("disconnect", |d| {
            d.u64("code", disconnect.code.into())
                .str("reason", &disconnect.reason);
        });
    });
    o.close();
    Frame::new(out)
}

/// `{"id":N,"connect":{…}}`.
pub fn connect_reply(id: u32, r: &ConnectResult) -> Frame {
    reply(id, "connect", |o| {
        o.str("client", &r.client)
            .str_nonempty("version", &r.version);
        if let Some(ttl) = r.ttl {
            o.flag("expires", true).u64("ttl", ttl.into());
        }
        o.raw("data", r.data.as_ref());
        if !r.subs.is_empty() {
            o.object("subs", |subs| {
                for (channel, sub) in &r.subs {
                    subs.object(channel, |s| write_subscribe_result(s, sub));
                }
            });
        }
        o.u64_nonzero("ping", r.ping.into()).flag("pong", r.pong);
        if let (Some(session), Some(node)) = (&r.session, &r.node) {
            o.str("session", session).str("node", node);
        }
    })
}

/// `{"id":N,"subscribe":{…}}`.
pub fn subscribe_reply(id: u32, r: &SubscribeResult) -> Frame {
    reply(id, "subscribe", |o| write_subscribe_result(o, r))
}

/// `{"id":N,"history":{"publications":[…],"epoch":…,"offset":…}}` (all three always present).
pub fn history_reply(
    id: u32,
    publications: &[Arc<Publication>],
    position: &StreamPosition,
) -> Frame {
    reply(id, "history", |o| {
        write_history_result(o, publications, position)
    })
}

/// History result fields, shared with the server API.
pub fn write_history_result(
    o: &mut Object<'_>,
    publications: &[Arc<Publication>],
    position: &StreamPosition,
) {
    o.array("publications", publications, |out, p| {
        write_publication(out, p)
    });
    o.str("epoch", &position.epoch)
        .u64("offset", position.offset);
}

/// `{"id":N,"presence":{"presence":{client: ClientInfo}}}` (`presence` always present).
pub fn presence_reply(id: u32, presence: &HashMap<String, ClientInfo>) -> Frame {
    reply(id, "presence", |o| write_presence_result(o, presence))
}

/// Presence result fields, shared with the server API.
pub fn write_presence_result(o: &mut Object<'_>, presence: &HashMap<String, ClientInfo>) {
    o.object("presence", |p| {
        let mut clients: Vec<_> = presence.iter().collect();
        clients.sort_by(|a, b| a.0.cmp(b.0));
        for (client, info) in clients {
            write_client_info(p.key(client), info);
        }
    });
}

/// `{"id":N,"presence_stats":{"num_clients":…,"num_users":…}}` (both always present).
pub fn presence_stats_reply(id: u32, num_clients: u32, num_users: u32) -> Frame {
    reply(id, "presence_stats", |o| {
        o.u64("num_clients", num_clients.into())
            .u64("num_users", num_users.into());
    })
}

/// `{"id":N,"refresh":{…}}`.
pub fn refresh_reply(id: u32, client: &str, version: &str, ttl: Option<u32>) -> Frame {
    reply(id, "refresh", |o| {
        o.str("client", client).str_nonempty("version", version);
        if let Some(ttl) = ttl {
            o.flag("expires", true).u64("ttl", ttl.into());
        }
    })
}

/// `{"id":N,"sub_refresh":{…}}`.
pub fn sub_refresh_reply(id: u32, ttl: Option<u32>) -> Frame {
    reply(id, "sub_refresh", |o| {
        if let Some(ttl) = ttl {
            o.flag("expires", true).u64("ttl", ttl.into());
        }
    })
}

/// `{"id":N,"rpc":{"data":…}}`.
pub fn rpc_reply(id: u32, data: &Bytes) -> Frame {
    reply(id, "rpc", |o| {
        o.raw("data", Some(data));
    })
}

fn push(channel: &str, kind: &str, write: impl FnOnce(&mut Object<'_>)) -> Frame {
    let mut out = Vec::with_capacity(96);
    let mut o = Object::open(&mut out);
    o.object("push", |p| {
        p.str("channel", channel);
        p.object(kind, write);
    });
    o.close();
    Frame::new(out)
}

/// `{"push":{"channel":…,"pub":{…}}}`: encoded once per publication and shared by every subscriber.
pub fn publication_push(channel: &str, publication: &Publication) -> Frame {
    let mut out = Vec::with_capacity(publication.data.len() + channel.len() + 48);
    let mut o = Object::open(&mut out);
    o.object("push", |p| {
        p.str("channel", channel);
        write_publication(p.key("pub"), publication);
    });
    o.close();
    Frame::new(out)
}

/// A publication for a subscription with delta compression: `delta` (Fossil's format) from the previous
/// publication's data, or, when `None`, the full data as text.
pub fn delta_push(channel: &str, publication: &Publication, delta: Option<&str>) -> Frame {
    let mut out = Vec::with_capacity(publication.data.len() + channel.len() + 64);
    let mut o = Object::open(&mut out);
    o.object("push", |p| {
        p.str("channel", channel);
        let data = delta.map_or(Data::Text, Data::Delta);
        write_publication_as(p.key("pub"), publication, data);
    });
    o.close();
    Frame::new(out)
}

/// `{"push":{"channel":…,"join":{"info":…}}}`.
pub fn join_push(channel: &str, info: &ClientInfo) -> Frame {
    push(channel, "join", |o| write_client_info(o.key("info"), info))
}

/// `{"push":{"channel":…,"leave":{"info":…}}}`.
pub fn leave_push(channel: &str, info: &ClientInfo) -> Frame {
    push(channel, "leave", |o| write_client_info(o.key("info"), info))
}

/// `{"push":{"channel":…,"unsubscribe":{"code":…,"reason":…}}}` (both always present).
pub fn unsubscribe_push(channel: &str, code: u32, reason: &str) -> Frame {
    push(channel, "unsubscribe", |o| {
        o.u64("code", code.into()).str("reason", reason);
    })
}

/// `{"push":{"channel":…,"subscribe":{…}}}`: a server-side subscription added at runtime.
pub fn subscribe_push(channel: &str, r: &SubscribeResult) -> Frame {
    push(channel, "subscribe", |o| {
        o.flag("recoverable", r.recoverable)
            .flag("positioned", r.positioned);
        o.str_nonempty("epoch", &r.position.epoch)
            .u64_nonzero("offset", r.position.offset);
        o.raw("data", r.data.as_ref());
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(frame: &Frame) -> &str {
        std::str::from_utf8(frame.bytes()).unwrap()
    }

    fn publication() -> Publication {
        Publication {
            offset: 6,
            data: Bytes::from_static(b"{\"text\":\"hi\"}"),
            info: Some(ClientInfo {
                user: "42".into(),
                client: "c1".into(),
                conn_info: Some(Bytes::from_static(b"{\"name\":\"Ann\"}")),
                chan_info: None,
            }),
            tags: [("k".to_string(), "v".to_string())].into(),
            time_ms: 0,
        }
    }

    #[test]
    fn publication_push_golden() {
        assert_eq!(
            text(&publication_push("news", &publication())),
            r#"{"push":{"channel":"news","pub":{"data":{"text":"hi"},"info":{"user":"42","client":"c1","conn_info":{"name":"Ann"}},"offset":6,"tags":{"k":"v"}}}}"#
        );
        let plain = Publication {
            data: Bytes::from_static(b"1"),
            ..Default::default()
        };
        assert_eq!(
            text(&publication_push("a\"b", &plain)),
            r#"{"push":{"channel":"a\"b","pub":{"data":1}}}"#
        );
    }

    #[test]
    fn replies_always_carry_their_result_key() {
        assert_eq!(text(&empty_reply(3, "publish")), r#"{"id":3,"publish":{}}"#);
        assert_eq!(
            text(&empty_reply(7, "unsubscribe")),
            r#"{"id":7,"unsubscribe":{}}"#
        );
        assert_eq!(
            text(&presence_stats_reply(2, 0, 0)),
            r#"{"id":2,"presence_stats":{"num_clients":0,"num_users":0}}"#
        );
        assert_eq!(
            text(&presence_reply(2, &HashMap::new())),
            r#"{"id":2,"presence":{"presence":{}}}"#
        );
        assert_eq!(
            text(&history_reply(
                9,
                &[],
                &StreamPosition {
                    offset: 0,
                    epoch: "abc".into()
                }
            )),
            r#"{"id":9,"history":{"publications":[],"epoch":"abc","offset":0}}"#
        );
    }

    #[test]
    fn errors_golden() {
        assert_eq!(
            text(&error_reply(5, &ClientError::PERMISSION_DENIED)),
            r#"{"id":5,"error":{"code":103,"message":"permission denied"}}"#
        );
        assert_eq!(
            text(&error_reply(5, &ClientError::INTERNAL)),
            r#"{"id":5,"error":{"code":100,"message":"internal server error","temporary":true}}"#
        );
    }

    #[test]
    fn disconnect_push_golden() {
        assert_eq!(
            text(&disconnect_push(&Disconnect::SHUTDOWN)),
            r#"{"push":{"disconnect":{"code":3001,"reason":"shutdown"}}}"#
        );
    }

    #[test]
    fn connect_golden() {
        let r = ConnectResult {
            client: "c".into(),
            version: "0.1.0".into(),
            ping: 25,
            pong: true,
            ..Default::default()
        };
        assert_eq!(
            text(&connect_reply(1, &r)),
            r#"{"id":1,"connect":{"client":"c","version":"0.1.0","ping":25,"pong":true}}"#
        );
        let emulated = ConnectResult {
            session: Some("s1".into()),
            node: Some("n1".into()),
            ..r
        };
        assert_eq!(
            text(&connect_reply(1, &emulated)),
            r#"{"id":1,"connect":{"client":"c","version":"0.1.0","ping":25,"pong":true,"session":"s1","node":"n1"}}"#
        );
        let r = ConnectResult {
            client: "c".into(),
            ttl: Some(10),
            ..Default::default()
        };
        assert_eq!(
            text(&connect_reply(1, &r)),
            r#"{"id":1,"connect":{"client":"c","expires":true,"ttl":10}}"#
        );
    }

    #[test]
    fn subscribe_golden() {
        let r = SubscribeResult {
            recoverable: true,
            positioned: true,
            position: StreamPosition {
                offset: 4,
                epoch: "ep".into(),
            },
            publications: vec![Arc::new(Publication {
                offset: 5,
                data: Bytes::from_static(b"{}"),
                ..Default::default()
            })],
            recovered: true,
            was_recovering: true,
            ..Default::default()
        };
        assert_eq!(
            text(&subscribe_reply(2, &r)),
            r#"{"id":2,"subscribe":{"recoverable":true,"positioned":true,"epoch":"ep","offset":4,"publications":[{"data":{},"offset":5}],"recovered":true,"was_recovering":true}}"#
        );
        assert_eq!(
            text(&subscribe_reply(2, &SubscribeResult::default())),
            r#"{"id":2,"subscribe":{}}"#
        );
    }

    #[test]
    fn pushes_golden() {
        let info = ClientInfo {
            user: String::new(),
            client: "c".into(),
            ..Default::default()
        };
        assert_eq!(
            text(&join_push("a", &info)),
            r#"{"push":{"channel":"a","join":{"info":{"user":"","client":"c"}}}}"#
        );
        assert_eq!(
            text(&leave_push("a", &info)),
            r#"{"push":{"channel":"a","leave":{"info":{"user":"","client":"c"}}}}"#
        );
        assert_eq!(
            text(&unsubscribe_push("a", 2000, "server unsubscribe")),
            r#"{"push":{"channel":"a","unsubscribe":{"code":2000,"reason":"server unsubscribe"}}}"#
        );
        assert_eq!(text(&PING), "{}");
    }

    #[test]
    fn every_frame_is_one_line_of_valid_json() {
        let p = publication();
        for frame in [
            publication_push("x", &p),
            join_push("x", p.info.as_ref().unwrap()),
        ] {
            assert!(!text(&frame).contains('\n'));
            serde_json::from_str::<serde_json::Value>(text(&frame)).unwrap();
        }
    }
}
