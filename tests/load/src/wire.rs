//! The wire dialects the load tool speaks, as pure functions over text frames: the Centrifugo client
//! protocol (JSON), the Pusher protocol v7, a raw WebSocket broadcast server and socket.io 4 (engine.io v4
//! framing). It builds the stamped payloads, the handshake and publish frames and the HTTP publish
//! requests, and finds the stamp in what comes back. It never touches a socket; `connection` and
//! `publisher` do the I/O.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Which server dialect the tool speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Protocol {
    /// Centrifugo client protocol (JSON): `connect` + `subscribe` commands; server API `POST /api/publish`.
    Centrifuge,
    /// Pusher protocol v7 (`/app/{key}?protocol=7`): `pusher:subscribe` to public channels after
    /// `pusher:connection_established`; publishes as the event [`PUSHER_EVENT`], through the Pusher HTTP
    /// API (`pusher_api`, any Pusher server) or Herald's `POST /api/publish` tagged with that event name;
    /// delivered as that event with the payload as a JSON string in `data`.
    Pusher,
    /// A plain WebSocket broadcast server: the room is in the URL, a frame is the payload itself; HTTP
    /// publish is `POST <url>?channel=<room>` with the payload as body.
    Raw,
    /// socket.io 4 over the WebSocket transport: `subscribe` event with an ack, `message` events; HTTP
    /// publish as in `raw`.
    SocketIo,
}

/// The Pusher event name the tool publishes under (Herald's `event` tag) and counts on receipt.
pub(crate) const PUSHER_EVENT: &str = "load";

/// What every frame delivering [`PUSHER_EVENT`] holds (servers write compact JSON).
const PUSHER_DELIVERY_MARK: &str = r#""event":"load""#;

/// The answer to Herald's `pusher:ping`.
const PUSHER_PONG: &str = r#"{"event":"pusher:pong","data":{}}"#;

/// The send time and sequence number every published payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// Nanoseconds since the tool's clock anchor when the message was handed to the network.
    pub sent_ns: u64,
    /// The message's sequence number (0-based) in this run.
    pub seq: u64,
}

/// A JSON object of `size` bytes (at least the stamp itself): `{"t":<ns>,"s":<seq>,"text":"xxx…"}`.
/// The `text` field makes it a valid input for the content-filter example plugin.
pub(crate) fn payload(stamp: Stamp, size: usize) -> String {
    let mut text = format!(r#"{{"t":{},"s":{},"text":""#, stamp.sent_ns, stamp.seq);
    let closing = "\"}";
    let padding = size.saturating_sub(text.len() + closing.len());
    text.reserve(padding + closing.len());
    text.extend(std::iter::repeat_n('x', padding));
    text.push_str(closing);
    text
}

/// Finds the stamp of a payload inside a frame (first occurrence), wherever the dialect wrapped it.
pub(crate) fn find_stamp(frame: &str) -> Option<Stamp> {
    find_stamp_between(frame, r#"{"t":"#, r#","s":"#)
}

/// Finds the stamp of a payload that a frame carries inside a JSON string, as Pusher events carry their
/// data: the same stamp with its quotes escaped, `{\"t\":…,\"s\":…`.
fn find_escaped_stamp(frame: &str) -> Option<Stamp> {
    find_stamp_between(frame, r#"{\"t\":"#, r#",\"s\":"#)
}

fn find_stamp_between(frame: &str, time: &str, seq: &str) -> Option<Stamp> {
    let start = frame.find(time)? + time.len();
    let (sent_ns, rest) = leading_number(&frame[start..])?;
    let rest = rest.strip_prefix(seq)?;
    let (seq, _) = leading_number(rest)?;
    Some(Stamp { sent_ns, seq })
}

/// Parses the decimal digits at the start of `text`; returns the number and what follows.
fn leading_number(text: &str) -> Option<(u64, &str)> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let number = text[..digits].parse().ok()?;
    Some((number, &text[digits..]))
}

/// The subscribe URL of a connection: `{channels}` in the template is replaced by the connection's
/// channel names joined with commas (the raw peer reads `?channel=a,b`).
pub(crate) fn subscribe_url(template: &str, channels: &[String]) -> String {
    template.replace("{channels}", &channels.join(","))
}

/// What a connection sends as soon as the WebSocket is open, if anything.
pub(crate) fn greeting(protocol: Protocol, channels: &[String]) -> Option<String> {
    match protocol {
        Protocol::Centrifuge => {
            let mut frame = String::from(r#"{"id":1,"connect":{}}"#);
            for (offset, channel) in channels.iter().enumerate() {
                frame.push('\n');
                frame.push_str(
                    &serde_json::json!({"id": 2 + offset, "subscribe": {"channel": channel}})
                        .to_string(),
                );
            }
            Some(frame)
        }
        // Pusher subscribes once `pusher:connection_established` arrived (see `HandshakeState`).
        Protocol::Raw | Protocol::SocketIo | Protocol::Pusher => None,
    }
}

/// The envelope of a Pusher frame: `{"event":…,"channel":…,"data":…}`. `data` is kept as raw JSON text
/// and only decoded for the events that need it.
#[derive(Debug, Deserialize)]
struct PusherEnvelope<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

impl PusherEnvelope<'_> {
    /// Parses a frame; `None` when it is not a Pusher event.
    fn parse(frame: &str) -> Option<PusherEnvelope<'_>> {
        serde_json::from_str(frame).ok()
    }

    /// The JSON text the event carries: Pusher servers send `data` as a string holding JSON, which is
    /// decoded here; data sent as a JSON value (an object, as in `pusher:error`) is that value's text.
    fn data_text(&self) -> Option<Cow<'_, str>> {
        let raw = self.data?.get();
        if raw.starts_with('"') {
            serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
        } else {
            Some(Cow::Borrowed(raw))
        }
    }

    /// The data as a JSON value (for the handshake's few control events).
    fn data_value(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.data_text()?).ok()
    }

    /// The stamp of a delivered payload: the data's JSON text is where the Centrifugo dialect's `pub.data`
    /// is, so the same [`find_stamp`] reads it.
    fn stamp(&self) -> Option<Stamp> {
        find_stamp(&self.data_text()?)
    }
}

/// `pusher:subscribe` to a public channel (no `auth`).
fn pusher_subscribe(channel: &str) -> String {
    format!(
        r#"{{"event":"pusher:subscribe","data":{{"channel":{}}}}}"#,
        serde_json::Value::from(channel)
    )
}

/// The `code (message)` of a `pusher:error` or `pusher:subscription_error`, for the report.
fn pusher_error_text(envelope: &PusherEnvelope<'_>) -> String {
    let data = envelope.data_value().unwrap_or_default();
    let field = |name: &str| match data.get(name) {
        None | Some(serde_json::Value::Null) => "-".to_string(),
        Some(serde_json::Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    };
    match envelope.event.as_ref() {
        "pusher:subscription_error" => format!(
            "{}: {} {} ({})",
            envelope.event,
            field("status"),
            field("type"),
            field("error")
        ),
        _ => format!(
            "{}: {} ({})",
            envelope.event,
            field("code"),
            field("message")
        ),
    }
}

/// Where a connection's handshake stands after a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Handshake {
    /// Still waiting for replies.
    Pending,
    /// Every subscription is confirmed.
    Subscribed,
    /// The server refused; the reason is kept for the report.
    Failed(String),
}

/// Tracks one connection's handshake across the frames the server sends.
#[derive(Debug)]
pub(crate) struct HandshakeState {
    protocol: Protocol,
    channels: Vec<String>,
    confirmed: usize,
}

impl HandshakeState {
    /// A handshake for these channels.
    pub(crate) fn new(protocol: Protocol, channels: Vec<String>) -> Self {
        Self {
            protocol,
            channels,
            confirmed: 0,
        }
    }

    /// Consumes one server frame; pushes the frames to send back into `replies`.
    pub(crate) fn on_frame(&mut self, frame: &str, replies: &mut Vec<String>) -> Handshake {
        match self.protocol {
            Protocol::Raw => Handshake::Subscribed,
            Protocol::Centrifuge => self.on_centrifuge_frame(frame, replies),
            Protocol::SocketIo => self.on_socket_io_frame(frame, replies),
            Protocol::Pusher => self.on_pusher_frame(frame, replies),
        }
    }

    /// The state before any frame: a raw connection is subscribed once it is open.
    pub(crate) fn initial(&self) -> Handshake {
        match self.protocol {
            Protocol::Raw => Handshake::Subscribed,
            Protocol::Centrifuge | Protocol::SocketIo | Protocol::Pusher => Handshake::Pending,
        }
    }

    fn on_centrifuge_frame(&mut self, frame: &str, replies: &mut Vec<String>) -> Handshake {
        for line in frame.split('\n').filter(|line| !line.is_empty()) {
            if line == "{}" {
                replies.push("{}".to_string());
                continue;
            }
            let Ok(reply) = serde_json::from_str::<serde_json::Value>(line) else {
                return Handshake::Failed("unparseable reply".to_string());
            };
            let id = reply.get("id").and_then(serde_json::Value::as_u64);
            if let Some(error) = reply.get("error") {
                let code = error.get("code").and_then(serde_json::Value::as_u64);
                let message = error.get("message").and_then(serde_json::Value::as_str);
                return Handshake::Failed(format!(
                    "error {} ({}) to command {}",
                    code.unwrap_or(0),
                    message.unwrap_or(""),
                    id.unwrap_or(0)
                ));
            }
            if id.is_some_and(|id| id >= 2) && reply.get("subscribe").is_some() {
                self.confirmed += 1;
            }
        }
        self.progress()
    }

    fn on_socket_io_frame(&mut self, frame: &str, replies: &mut Vec<String>) -> Handshake {
        if frame == "2" {
            replies.push("3".to_string());
        } else if frame.starts_with("0{") {
            replies.push("40".to_string());
        } else if frame.starts_with("40") {
            for (ack, channel) in self.channels.iter().enumerate() {
                replies.push(format!(
                    "42{ack}{}",
                    serde_json::json!(["subscribe", channel])
                ));
            }
        } else if frame.starts_with("43") {
            self.confirmed += 1;
        } else if frame.starts_with("44") {
            return Handshake::Failed(format!("socket.io connect error: {frame}"));
        }
        self.progress()
    }

    /// `pusher:connection_established` (whose data holds the socket id) → one `pusher:subscribe` per
    /// channel; each `pusher_internal:subscription_succeeded` confirms one. Pings are answered; an error
    /// fails the handshake; any other event is ignored.
    fn on_pusher_frame(&mut self, frame: &str, replies: &mut Vec<String>) -> Handshake {
        let Some(envelope) = PusherEnvelope::parse(frame) else {
            return Handshake::Failed("unparseable Pusher frame".to_string());
        };
        match envelope.event.as_ref() {
            "pusher:connection_established" => {
                let has_socket_id = envelope
                    .data_value()
                    .is_some_and(|data| data.get("socket_id").is_some_and(|id| id.is_string()));
                if !has_socket_id {
                    return Handshake::Failed(
                        "pusher:connection_established without a socket_id".to_string(),
                    );
                }
                replies.extend(
                    self.channels
                        .iter()
                        .map(|channel| pusher_subscribe(channel)),
                );
            }
            "pusher_internal:subscription_succeeded" => self.confirmed += 1,
            "pusher:ping" => replies.push(PUSHER_PONG.to_string()),
            "pusher:error" | "pusher:subscription_error" => {
                return Handshake::Failed(pusher_error_text(&envelope));
            }
            _ => {}
        }
        self.progress()
    }

    fn progress(&self) -> Handshake {
        if self.confirmed >= self.channels.len() {
            Handshake::Subscribed
        } else {
            Handshake::Pending
        }
    }
}

/// Scans a frame received after the handshake: calls `on_stamp` for every delivered payload and returns the
/// heartbeat answer to send, if the frame holds a heartbeat.
pub(crate) fn scan_frame(
    protocol: Protocol,
    frame: &str,
    mut on_stamp: impl FnMut(Stamp),
) -> Option<&'static str> {
    match protocol {
        Protocol::Centrifuge => {
            let mut answer = None;
            for line in frame.split('\n') {
                if line == "{}" {
                    answer = Some("{}");
                } else if let Some(stamp) = find_stamp(line) {
                    on_stamp(stamp);
                }
            }
            answer
        }
        Protocol::Raw => {
            if let Some(stamp) = find_stamp(frame) {
                on_stamp(stamp);
            }
            None
        }
        Protocol::SocketIo => {
            if frame == "2" {
                return Some("3");
            }
            if frame.starts_with("42")
                && let Some(stamp) = find_stamp(frame)
            {
                on_stamp(stamp);
            }
            None
        }
        Protocol::Pusher => {
            // The common case first, without decoding: a delivery of the tool's event whose string data
            // starts with the stamp. Decoding the JSON string inside the JSON frame costs more than the
            // rest of a delivery's handling and made the tool, not the server, the limit at maximum rate.
            // A stamp found escaped can only be inside a string, and `"event":"load"` only outside one.
            if frame.contains(PUSHER_DELIVERY_MARK)
                && let Some(stamp) = find_escaped_stamp(frame)
            {
                on_stamp(stamp);
                return None;
            }
            let envelope = PusherEnvelope::parse(frame)?;
            match envelope.event.as_ref() {
                "pusher:ping" => Some(PUSHER_PONG),
                PUSHER_EVENT => {
                    if let Some(stamp) = envelope.stamp() {
                        on_stamp(stamp);
                    }
                    None
                }
                _ => None,
            }
        }
    }
}

/// The HTTP publish request for one payload: URL and body.
pub(crate) fn http_publish(
    protocol: Protocol,
    base_url: &str,
    channel: &str,
    payload: &str,
) -> (String, String) {
    match protocol {
        Protocol::Centrifuge => {
            let body = format!(
                r#"{{"channel":{},"data":{payload}}}"#,
                serde_json::Value::from(channel)
            );
            (base_url.to_string(), body)
        }
        // Herald's own API, the publication tagged with the Pusher event name its Pusher clients get.
        Protocol::Pusher => {
            let body = format!(
                r#"{{"channel":{},"data":{payload},"tags":{{"event":"{PUSHER_EVENT}"}}}}"#,
                serde_json::Value::from(channel)
            );
            (base_url.to_string(), body)
        }
        Protocol::Raw | Protocol::SocketIo => {
            let separator = if base_url.contains('?') { '&' } else { '?' };
            (
                format!("{base_url}{separator}channel={channel}"),
                payload.to_string(),
            )
        }
    }
}

/// The frame a subscribed client sends to publish one payload to `channel`. `command_id` numbers the
/// Centrifugo command (it must be above the handshake's ids). Pusher's is a client event, which servers
/// accept only on signed private channels; `run` refuses `--publish-from clients` in pusher mode.
pub(crate) fn client_publish(
    protocol: Protocol,
    channel: &str,
    payload: &str,
    command_id: u32,
) -> String {
    let channel = serde_json::Value::from(channel);
    match protocol {
        Protocol::Centrifuge => {
            format!(r#"{{"id":{command_id},"publish":{{"channel":{channel},"data":{payload}}}}}"#)
        }
        Protocol::Raw => payload.to_string(),
        Protocol::SocketIo => {
            format!(r#"42["publish",{{"channel":{channel},"data":{payload}}}]"#)
        }
        Protocol::Pusher => {
            format!(r#"{{"event":"client-{PUSHER_EVENT}","channel":{channel},"data":{payload}}}"#)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAMP: Stamp = Stamp {
        sent_ns: 123_456_789,
        seq: 42,
    };

    #[test]
    fn payload_has_the_requested_size_and_is_json() {
        let text = payload(STAMP, 1024);
        assert_eq!(text.len(), 1024);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["t"], 123_456_789);
        assert_eq!(value["s"], 42);
    }

    #[test]
    fn a_tiny_size_still_gives_a_whole_stamp() {
        let text = payload(STAMP, 3);
        assert_eq!(find_stamp(&text), Some(STAMP));
    }

    #[test]
    fn stamp_is_found_in_every_dialect() {
        let data = payload(STAMP, 200);
        let centrifuge = format!(r#"{{"push":{{"channel":"c","pub":{{"data":{data}}}}}}}"#);
        let socket_io = format!(r#"42["message",{data}]"#);
        let pusher = format!(
            r#"{{"event":"load","channel":"c","data":{}}}"#,
            serde_json::Value::from(data.as_str())
        );
        for (protocol, frame) in [
            (Protocol::Centrifuge, centrifuge.as_str()),
            (Protocol::Raw, data.as_str()),
            (Protocol::SocketIo, socket_io.as_str()),
            (Protocol::Pusher, pusher.as_str()),
        ] {
            let mut seen = Vec::new();
            assert_eq!(scan_frame(protocol, frame, |s| seen.push(s)), None);
            assert_eq!(seen, vec![STAMP], "{protocol:?}");
        }
    }

    #[test]
    fn centrifuge_batches_and_pings_are_handled() {
        let data = payload(STAMP, 100);
        let frame = format!(
            "{{\"push\":{{\"pub\":{{\"data\":{data}}}}}}}\n{{}}\n{{\"push\":{{\"pub\":{{\"data\":{data}}}}}}}"
        );
        let mut count = 0;
        assert_eq!(
            scan_frame(Protocol::Centrifuge, &frame, |_| count += 1),
            Some("{}")
        );
        assert_eq!(count, 2);
    }

    #[test]
    fn garbage_has_no_stamp() {
        for frame in [
            "",
            "{\"t\":",
            "{\"t\":x,\"s\":1}",
            "{\"t\":1}",
            "{\"t\":1,\"s\":}",
        ] {
            assert_eq!(find_stamp(frame), None, "{frame}");
        }
    }

    #[test]
    fn centrifuge_handshake_counts_subscribe_replies() {
        let channels = vec!["a".to_string(), "b".to_string()];
        let greeting = greeting(Protocol::Centrifuge, &channels).unwrap();
        assert_eq!(greeting.lines().count(), 3);
        let mut state = HandshakeState::new(Protocol::Centrifuge, channels);
        let mut replies = Vec::new();
        assert_eq!(
            state.on_frame(
                r#"{"id":1,"connect":{"client":"x"}}
{"id":2,"subscribe":{}}"#,
                &mut replies
            ),
            Handshake::Pending
        );
        assert_eq!(
            state.on_frame(r#"{"id":3,"subscribe":{}}"#, &mut replies),
            Handshake::Subscribed
        );
        assert!(replies.is_empty());
    }

    #[test]
    fn centrifuge_handshake_reports_errors() {
        let mut state = HandshakeState::new(Protocol::Centrifuge, vec!["a".to_string()]);
        let outcome = state.on_frame(
            r#"{"id":2,"error":{"code":103,"message":"permission denied"}}"#,
            &mut Vec::new(),
        );
        assert!(matches!(outcome, Handshake::Failed(reason) if reason.contains("103")));
    }

    #[test]
    fn socket_io_handshake_follows_engine_io_framing() {
        let mut state = HandshakeState::new(Protocol::SocketIo, vec!["room".to_string()]);
        let mut replies = Vec::new();
        assert_eq!(
            state.on_frame(r#"0{"sid":"s","pingInterval":25000}"#, &mut replies),
            Handshake::Pending
        );
        assert_eq!(replies, vec!["40"]);
        replies.clear();
        state.on_frame(r#"40{"sid":"t"}"#, &mut replies);
        assert_eq!(replies, vec![r#"420["subscribe","room"]"#]);
        replies.clear();
        state.on_frame("2", &mut replies);
        assert_eq!(replies, vec!["3"]);
        assert_eq!(state.on_frame("430[]", &mut replies), Handshake::Subscribed);
    }

    /// A delivery exactly as Herald's Pusher codec writes it: the publication's JSON as a string.
    const PUSHER_DELIVERY: &str = r#"{"event":"load","channel":"bench-0","data":"{\"t\":123456789,\"s\":42,\"text\":\"xx\"}"}"#;

    #[test]
    fn pusher_deliveries_give_the_stamp_of_their_string_data() {
        let mut seen = Vec::new();
        assert_eq!(
            scan_frame(Protocol::Pusher, PUSHER_DELIVERY, |s| seen.push(s)),
            None
        );
        // Data sent as a JSON object (which pusher-js also accepts) is read the same way.
        let object =
            r#"{"event":"load","channel":"bench-0","data":{"t":123456789,"s":42,"text":""}}"#;
        assert_eq!(scan_frame(Protocol::Pusher, object, |s| seen.push(s)), None);
        assert_eq!(seen, vec![STAMP, STAMP]);
    }

    #[test]
    fn pusher_deliveries_are_read_in_any_field_order() {
        let data = serde_json::Value::from(payload(STAMP, 300)).to_string();
        for frame in [
            format!(r#"{{"event":"load","channel":"bench-0","data":{data}}}"#),
            format!(r#"{{"channel":"bench-0","data":{data},"event":"load"}}"#),
            format!(r#"{{"data":{data},"event":"load","channel":"bench-0"}}"#),
        ] {
            let mut seen = Vec::new();
            assert_eq!(scan_frame(Protocol::Pusher, &frame, |s| seen.push(s)), None);
            assert_eq!(seen, vec![STAMP], "{frame}");
        }
        assert_eq!(find_escaped_stamp(&data), Some(STAMP));
        assert_eq!(find_escaped_stamp(&payload(STAMP, 300)), None);
    }

    #[test]
    fn pusher_pings_are_answered_and_other_events_ignored() {
        let mut seen = Vec::new();
        assert_eq!(
            scan_frame(
                Protocol::Pusher,
                r#"{"event":"pusher:ping","data":{}}"#,
                |s| { seen.push(s) }
            ),
            Some(r#"{"event":"pusher:pong","data":{}}"#)
        );
        for frame in [
            // Another event name, though its data holds a stamp.
            r#"{"event":"message","channel":"bench-0","data":"{\"t\":1,\"s\":2}"}"#,
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"bench-0"}"#,
            r#"{"event":"pusher:error","data":{"code":4301,"message":"x"}}"#,
            r#"{"event":"load","channel":"bench-0","data":"not json"}"#,
            r#"{"event":"load","channel":"bench-0"}"#,
            "not json",
            "",
        ] {
            assert_eq!(
                scan_frame(Protocol::Pusher, frame, |s| seen.push(s)),
                None,
                "{frame}"
            );
        }
        assert!(seen.is_empty());
    }

    #[test]
    fn pusher_handshake_subscribes_after_connection_established() {
        let channels = vec!["bench-0".to_string(), "bench-\"1".to_string()];
        assert_eq!(greeting(Protocol::Pusher, &channels), None);
        let mut state = HandshakeState::new(Protocol::Pusher, channels);
        assert_eq!(state.initial(), Handshake::Pending);
        let mut replies = Vec::new();
        assert_eq!(
            state.on_frame(
                r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"4084018159.6406432958\",\"activity_timeout\":120}"}"#,
                &mut replies
            ),
            Handshake::Pending
        );
        assert_eq!(
            replies,
            vec![
                r#"{"event":"pusher:subscribe","data":{"channel":"bench-0"}}"#,
                r#"{"event":"pusher:subscribe","data":{"channel":"bench-\"1"}}"#,
            ]
        );
        replies.clear();
        assert_eq!(
            state.on_frame(
                r#"{"event":"pusher_internal:subscription_succeeded","channel":"bench-0","data":"{}"}"#,
                &mut replies
            ),
            Handshake::Pending
        );
        state.on_frame(r#"{"event":"pusher:ping","data":{}}"#, &mut replies);
        assert_eq!(replies, vec![r#"{"event":"pusher:pong","data":{}}"#]);
        assert_eq!(
            state.on_frame(
                r#"{"event":"pusher_internal:subscription_succeeded","channel":"bench-\"1"}"#,
                &mut replies
            ),
            Handshake::Subscribed
        );
    }

    #[test]
    fn pusher_handshake_reports_errors() {
        let refused = |frame: &str| {
            let mut state = HandshakeState::new(Protocol::Pusher, vec!["c".to_string()]);
            match state.on_frame(frame, &mut Vec::new()) {
                Handshake::Failed(reason) => reason,
                other => panic!("{frame}: {other:?}"),
            }
        };
        assert_eq!(
            refused(
                r#"{"event":"pusher:error","data":{"code":4001,"message":"App key x not in use"}}"#
            ),
            "pusher:error: 4001 (App key x not in use)"
        );
        assert_eq!(
            refused(r#"{"event":"pusher:error","data":"{\"code\":null,\"message\":\"bad\"}"}"#),
            "pusher:error: - (bad)"
        );
        assert_eq!(
            refused(
                r#"{"event":"pusher:subscription_error","channel":"c","data":{"type":"AuthError","error":"The connection is unauthorized.","status":401}}"#
            ),
            "pusher:subscription_error: 401 AuthError (The connection is unauthorized.)"
        );
        assert!(
            refused(r#"{"event":"pusher:connection_established","data":"{}"}"#)
                .contains("socket_id")
        );
        assert!(refused("garbage").contains("unparseable"));
    }

    #[test]
    fn publish_requests_per_dialect() {
        let (url, body) = http_publish(Protocol::Centrifuge, "http://h/api/publish", "c", "{}");
        assert_eq!(
            (url.as_str(), body.as_str()),
            ("http://h/api/publish", r#"{"channel":"c","data":{}}"#)
        );
        let (url, body) = http_publish(Protocol::Pusher, "http://h/api/publish", "c", "{}");
        assert_eq!(
            (url.as_str(), body.as_str()),
            (
                "http://h/api/publish",
                r#"{"channel":"c","data":{},"tags":{"event":"load"}}"#
            )
        );
        let (url, body) = http_publish(Protocol::Raw, "http://h/publish", "c", "{}");
        assert_eq!(
            (url.as_str(), body.as_str()),
            ("http://h/publish?channel=c", "{}")
        );
        assert_eq!(
            client_publish(Protocol::Centrifuge, "c", "{}", 7),
            r#"{"id":7,"publish":{"channel":"c","data":{}}}"#
        );
        assert_eq!(
            client_publish(Protocol::SocketIo, "c", "{}", 7),
            r#"42["publish",{"channel":"c","data":{}}]"#
        );
    }
}
