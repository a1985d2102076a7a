//! The Centrifugo unidirectional protocol (`uni_sse`, `uni_http_stream`, `uni_websocket`), for clients
//! without an SDK: a browser's `EventSource`, `curl -N`, a plain WebSocket. The client sends one connect
//! request when it opens the connection and nothing after; the server sends the JSON encoding's pushes
//! without their `{"push":…}` envelope (`{"channel":"news","pub":{…}}`), the connect reply as a push of its
//! own (`{"connect":{…}}`), and `{}` as its ping, which needs no answer.
//!
//! Every frame is the JSON encoding's, unwrapped: the same bytes minus the envelope, so the two can never
//! disagree on a field.
//!
//! A client that cannot keep its own positions (a browser's `EventSource`) gets them kept for it:
//! [`Positions`] follows the frames of a stream and names, in each SSE event's `id`, where the client is
//! in every recoverable channel; the browser sends the last one back as `Last-Event-ID` when it
//! reconnects, and [`with_last_event_id`] turns it into the connect request's `subs`.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;

use super::command::{Command, DecodeError};
use super::encode::{self, ConnectResult, SubscribeResult};
use super::{Centrifuge, Codec};
use crate::disconnect::Disconnect;
use crate::engine::{ClientInfo, Publication, StreamPosition};
use crate::errors::ClientError;
use crate::protocol::{Frame, Protocol, Wire};

/// The unidirectional Centrifugo protocol (JSON).
#[derive(Debug)]
pub struct CentrifugeUni;

/// `{"push":{…}}` → `{…}`.
fn unwrapped_push(frame: &Frame) -> Frame {
    const ENVELOPE: &[u8] = br#"{"push":"#;
    let bytes = frame.bytes();
    match bytes
        .strip_prefix(ENVELOPE)
        .and_then(|inner| inner.strip_suffix(b"}"))
    {
        Some(inner) => Frame::new(inner.to_vec()),
        None => frame.clone(),
    }
}

/// `{"id":N,"connect":{…}}` → `{"connect":{…}}`: a reply as the push of its result (or error).
fn unwrapped_reply(frame: &Frame) -> Frame {
    let bytes = frame.bytes();
    let Some(after_id) = bytes.strip_prefix(br#"{"id":"#) else {
        return frame.clone();
    };
    match after_id.iter().position(|&byte| byte == b',') {
        Some(comma) => {
            let mut out = Vec::with_capacity(bytes.len());
            out.push(b'{');
            out.extend_from_slice(&after_id[comma + 1..]);
            Frame::new(out)
        }
        None => frame.clone(),
    }
}

impl Wire for CentrifugeUni {
    fn publication(&self, channel: &str, publication: &Publication) -> Frame {
        unwrapped_push(&Centrifuge.publication(channel, publication))
    }

    fn delta_publication(
        &self,
        channel: &str,
        publication: &Publication,
        delta: Option<&str>,
    ) -> Frame {
        unwrapped_push(&Centrifuge.delta_publication(channel, publication, delta))
    }

    fn join(&self, channel: &str, who: &ClientInfo) -> Frame {
        unwrapped_push(&Centrifuge.join(channel, who))
    }

    fn leave(&self, channel: &str, who: &ClientInfo) -> Frame {
        unwrapped_push(&Centrifuge.leave(channel, who))
    }

    fn hears_own_presence(&self) -> bool {
        true
    }

    fn frame_separator(&self) -> Option<&'static [u8]> {
        Some(b"\n")
    }

    fn close(&self, disconnect: Disconnect) -> Disconnect {
        disconnect
    }
}

impl Codec for CentrifugeUni {
    fn protocol(&self) -> Protocol {
        Protocol::CentrifugeUni
    }

    /// The one command is the connect the transport made of the client's request.
    fn decode(
        &self,
        message: &[u8],
        binary: bool,
    ) -> Result<Vec<Result<Command, DecodeError>>, Disconnect> {
        Centrifuge.decode(message, binary)
    }

    fn unidirectional(&self) -> bool {
        true
    }

    fn ping(&self) -> Frame {
        encode::PING
    }

    fn error_reply(&self, id: u32, error: &ClientError) -> Frame {
        unwrapped_reply(&Centrifuge.error_reply(id, error))
    }

    fn unsubscribe_reply(&self, id: u32) -> Frame {
        unwrapped_reply(&Centrifuge.unsubscribe_reply(id))
    }

    fn publish_reply(&self, id: u32) -> Frame {
        unwrapped_reply(&Centrifuge.publish_reply(id))
    }

    fn connect_reply(&self, id: u32, result: &ConnectResult) -> Frame {
        unwrapped_reply(&Centrifuge.connect_reply(id, result))
    }

    fn subscribe_reply(&self, id: u32, result: &SubscribeResult) -> Frame {
        unwrapped_reply(&Centrifuge.subscribe_reply(id, result))
    }

    fn history_reply(
        &self,
        id: u32,
        publications: &[Arc<Publication>],
        position: &StreamPosition,
    ) -> Frame {
        unwrapped_reply(&Centrifuge.history_reply(id, publications, position))
    }

    fn presence_reply(&self, id: u32, presence: &HashMap<String, ClientInfo>) -> Frame {
        unwrapped_reply(&Centrifuge.presence_reply(id, presence))
    }

    fn presence_stats_reply(&self, id: u32, num_clients: u32, num_users: u32) -> Frame {
        unwrapped_reply(&Centrifuge.presence_stats_reply(id, num_clients, num_users))
    }

    fn refresh_reply(&self, id: u32, client: &str, version: &str, ttl: Option<u32>) -> Frame {
        unwrapped_reply(&Centrifuge.refresh_reply(id, client, version, ttl))
    }

    fn sub_refresh_reply(&self, id: u32, ttl: Option<u32>) -> Frame {
        unwrapped_reply(&Centrifuge.sub_refresh_reply(id, ttl))
    }

    fn rpc_reply(&self, id: u32, data: &Bytes) -> Frame {
        unwrapped_reply(&Centrifuge.rpc_reply(id, data))
    }

    fn unsubscribe_push(&self, channel: &str, code: u32, reason: &str) -> Frame {
        unwrapped_push(&Centrifuge.unsubscribe_push(channel, code, reason))
    }

    fn subscribe_push(&self, channel: &str, result: &SubscribeResult) -> Frame {
        unwrapped_push(&Centrifuge.subscribe_push(channel, result))
    }

    /// `{"disconnect":{"code":…,"reason":"…"}}`.
    fn disconnect_push(&self, disconnect: &Disconnect) -> Frame {
        unwrapped_push(&Centrifuge.disconnect_push(disconnect))
    }
}

/// Event ids longer than this are not written: the browser keeps the last one that fit, so a reconnect
/// replays from older positions rather than losing any (about fifty channels fit).
const MAX_EVENT_ID: usize = 2048;

/// Where a unidirectional client is in each recoverable channel it is subscribed to, as the frames sent to
/// it say: the position of the last publication it was sent, or the stream top it was subscribed at.
#[derive(Debug, Default)]
pub struct Positions {
    /// What the connect request asked to recover from, until the subscriptions are confirmed.
    asked: BTreeMap<String, StreamPosition>,
    held: BTreeMap<String, StreamPosition>,
}

/// The parts of an outgoing frame that move a position.
#[derive(Deserialize)]
struct Moves<'a> {
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(rename = "pub")]
    publication: Option<Offset>,
    subscribe: Option<Subscribed>,
    unsubscribe: Option<serde::de::IgnoredAny>,
    connect: Option<Connected>,
}

#[derive(Deserialize)]
struct Offset {
    #[serde(default)]
    offset: u64,
}

#[derive(Deserialize)]
struct Subscribed {
    #[serde(default)]
    recoverable: bool,
    #[serde(default)]
    epoch: String,
    #[serde(default)]
    offset: u64,
}

#[derive(Deserialize)]
struct Connected {
    #[serde(default)]
    subs: BTreeMap<String, Subscribed>,
}

/// A connect request's `subs`, as far as positions go.
#[derive(Deserialize)]
struct AskedSubs {
    #[serde(default)]
    subs: BTreeMap<String, StreamPosition>,
}

impl Positions {
    /// Starts from the positions the connect request (`{"subs":{…},…}`) asks to recover from.
    pub fn asked(request: &[u8]) -> Self {
        let asked = serde_json::from_slice::<AskedSubs>(request)
            .map(|request| request.subs)
            .unwrap_or_default();
        Self {
            asked,
            held: BTreeMap::new(),
        }
    }

    /// Follows one frame sent to the client; whether a position moved.
    pub fn observe(&mut self, frame: &[u8]) -> bool {
        let Ok(moves) = serde_json::from_slice::<Moves<'_>>(frame) else {
            return false;
        };
        if let Some(connected) = moves.connect {
            for (channel, subscribed) in connected.subs {
                self.subscribed(channel, subscribed, false);
            }
            return true;
        }
        let Some(channel) = moves.channel else {
            return false;
        };
        if let Some(publication) = moves.publication {
            return match self.held.get_mut(channel.as_ref()) {
                Some(position) if publication.offset > 0 => {
                    position.offset = publication.offset;
                    true
                }
                _ => false,
            };
        }
        if let Some(subscribed) = moves.subscribe {
            self.subscribed(channel.into_owned(), subscribed, true);
            return true;
        }
        moves.unsubscribe.is_some() && self.held.remove(channel.as_ref()).is_some()
    }

    /// A confirmed subscription, from the connect reply or a subscribe push (`pushed`). The connect
    /// reply carries the recovered publications inside it, up to the top it names, or tells the client
    /// it did not recover: either way the client is at the top. After a subscribe push the recovered
    /// publications follow as publications of their own, so the client stays where it was in the same
    /// stream until they arrive (without a recovery that replays some on a reconnect, losing none).
    fn subscribed(&mut self, channel: String, subscribed: Subscribed, pushed: bool) {
        let asked = self.asked.remove(&channel);
        let before = self.held.remove(&channel).or(asked);
        if !subscribed.recoverable {
            return;
        }
        let top = StreamPosition {
            offset: subscribed.offset,
            epoch: subscribed.epoch,
        };
        let position = match before {
            Some(before) if pushed && before.epoch == top.epoch && before.offset <= top.offset => {
                before
            }
            _ => top,
        };
        self.held.insert(channel, position);
    }

    /// The positions as an SSE event id: `channel=offset.epoch` pairs, form-encoded; `None` when there are
    /// none or they are over the size an id is allowed.
    pub fn event_id(&self) -> Option<String> {
        if self.held.is_empty() {
            return None;
        }
        let mut id = url::form_urlencoded::Serializer::new(String::new());
        for (channel, position) in &self.held {
            id.append_pair(channel, &format!("{}.{}", position.offset, position.epoch));
        }
        let id = id.finish();
        (id.len() <= MAX_EVENT_ID).then_some(id)
    }
}

/// The positions an event id names (the pairs that are not one are skipped).
fn parse_event_id(id: &str) -> BTreeMap<String, StreamPosition> {
    url::form_urlencoded::parse(id.as_bytes())
        .filter_map(|(channel, position)| {
            let (offset, epoch) = position.split_once('.')?;
            let position = StreamPosition {
                offset: offset.parse().ok()?,
                epoch: epoch.to_owned(),
            };
            Some((channel.into_owned(), position))
        })
        .collect()
}

/// The connect request (`{"token":…,"subs":…}`, or nothing) asking to recover from where the event id
/// says the client was; those positions replace the request's own for the same channels, as the browser
/// reconnects with the URL of its first connect. A request that is not a JSON object is left as it is
/// (the connect fails on it).
pub fn with_last_event_id(request: &[u8], last_event_id: &str) -> Bytes {
    let positions = parse_event_id(last_event_id);
    let trimmed = std::str::from_utf8(request).unwrap_or_default().trim();
    let parsed = if trimmed.is_empty() {
        Ok(serde_json::Map::new())
    } else {
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(trimmed)
    };
    let Ok(mut request_object) = parsed else {
        return Bytes::copy_from_slice(request);
    };
    if positions.is_empty() {
        return Bytes::copy_from_slice(request);
    }
    let subs = request_object
        .entry("subs")
        .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
    if !subs.is_object() {
        *subs = serde_json::Value::Object(serde_json::Map::new());
    }
    if let serde_json::Value::Object(subs) = subs {
        for (channel, position) in positions {
            let recovery = serde_json::json!({
                "recover": true,
                "offset": position.offset,
                "epoch": position.epoch,
            });
            subs.insert(channel, recovery);
        }
    }
    Bytes::from(serde_json::Value::Object(request_object).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(frame: &Frame) -> &str {
        frame.as_str()
    }

    #[test]
    fn frames_are_the_json_ones_without_their_envelope() {
        let publication = Publication {
            data: Bytes::from_static(br#"{"n":1}"#),
            offset: 3,
            ..Publication::default()
        };
        assert_eq!(
            text(&CentrifugeUni.publication("news", &publication)),
            r#"{"channel":"news","pub":{"data":{"n":1},"offset":3}}"#
        );
        let result = ConnectResult {
            client: "c".into(),
            version: "1".into(),
            ping: 25,
            ..Default::default()
        };
        assert_eq!(
            text(&CentrifugeUni.connect_reply(1, &result)),
            r#"{"connect":{"client":"c","version":"1","ping":25}}"#
        );
        assert_eq!(
            text(&CentrifugeUni.error_reply(1, &ClientError::PERMISSION_DENIED)),
            r#"{"error":{"code":103,"message":"permission denied"}}"#
        );
        assert_eq!(text(&CentrifugeUni.ping()), "{}");
        assert_eq!(
            text(&CentrifugeUni.disconnect_push(&Disconnect::SHUTDOWN)),
            r#"{"disconnect":{"code":3001,"reason":"shutdown"}}"#
        );
    }

    fn id(positions: &Positions) -> String {
        positions.event_id().unwrap_or_default()
    }

    #[test]
    fn positions_follow_subscriptions_and_publications() {
        let mut positions = Positions::asked(b"{}");
        assert!(positions.event_id().is_none());
        let connected = br#"{"connect":{"client":"c","subs":{"a b":{"recoverable":true,"epoch":"e1","offset":4},"plain":{}}}}"#;
        assert!(positions.observe(connected));
        assert_eq!(id(&positions), "a+b=4.e1");
        assert!(positions.observe(br#"{"channel":"a b","pub":{"data":{"x":"}"},"offset":5}}"#));
        assert_eq!(id(&positions), "a+b=5.e1");
        // Neither a channel without history nor a ping or a join moves anything.
        assert!(!positions.observe(br#"{"channel":"plain","pub":{"data":1}}"#));
        assert!(!positions.observe(b"{}"));
        assert!(!positions.observe(br#"{"channel":"a b","join":{"info":{"client":"x"}}}"#));
        assert!(positions.observe(
            br#"{"channel":"n&=","subscribe":{"recoverable":true,"epoch":"e2","offset":9}}"#
        ));
        assert_eq!(id(&positions), "a+b=5.e1&n%26%3D=9.e2");
        assert!(positions.observe(br#"{"channel":"a b","unsubscribe":{"code":2000}}"#));
        assert_eq!(id(&positions), "n%26%3D=9.e2");
    }

    #[test]
    fn a_pushed_subscription_keeps_the_asked_position_until_its_recovered_publications_arrive() {
        let mut positions =
            Positions::asked(br#"{"subs":{"news":{"recover":true,"offset":3,"epoch":"e"}}}"#);
        positions.observe(
            br#"{"channel":"news","subscribe":{"recoverable":true,"epoch":"e","offset":6}}"#,
        );
        assert_eq!(id(&positions), "news=3.e");
        positions.observe(br#"{"channel":"news","pub":{"data":1,"offset":4}}"#);
        assert_eq!(id(&positions), "news=4.e");
        // Another epoch: the old position means nothing there.
        let mut positions = Positions::asked(br#"{"subs":{"news":{"offset":3,"epoch":"old"}}}"#);
        positions.observe(
            br#"{"channel":"news","subscribe":{"recoverable":true,"epoch":"e","offset":6}}"#,
        );
        assert_eq!(id(&positions), "news=6.e");
    }

    #[test]
    fn the_last_event_id_becomes_the_connect_requests_subs() {
        let request = with_last_event_id(
            br#"{"token":"t","subs":{"news":{"recover":true,"offset":1,"epoch":"e"},"other":{"recover":true}}}"#,
            "news=7.e&bad=x.e&n%26%3D=9.e2",
        );
        let request: serde_json::Value = serde_json::from_slice(&request).unwrap();
        assert_eq!(
            request,
            serde_json::json!({"token":"t","subs":{
                "news":{"recover":true,"offset":7,"epoch":"e"},
                "other":{"recover":true},
                "n&=":{"recover":true,"offset":9,"epoch":"e2"},
            }})
        );
        let empty: serde_json::Value =
            serde_json::from_slice(&with_last_event_id(b"", "news=7.e")).unwrap();
        assert_eq!(empty["subs"]["news"]["offset"], 7);
        // Not a request to amend, or nothing to add: left as it is.
        assert_eq!(&with_last_event_id(b"[1]", "news=7.e")[..], b"[1]");
        assert_eq!(
            &with_last_event_id(br#"{"a":1}"#, "junk")[..],
            br#"{"a":1}"#
        );
    }

    #[test]
    fn an_event_id_is_bounded() {
        let mut positions = Positions::asked(b"{}");
        for n in 0..200 {
            let frame = format!(
                r#"{{"channel":"channel-{n}","subscribe":{{"recoverable":true,"epoch":"epoch","offset":1}}}}"#
            );
            positions.observe(frame.as_bytes());
        }
        assert!(positions.event_id().is_none());
    }
}
