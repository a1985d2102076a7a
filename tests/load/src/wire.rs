//! The wire dialects the load tool speaks, as pure functions over text frames: the Centrifugo client
//! protocol (JSON), a raw WebSocket broadcast server and socket.io 4 (engine.io v4 framing). It builds the
//! stamped payloads, the handshake and publish frames and the HTTP publish requests, and finds the stamp in
//! what comes back. It never touches a socket; `connection` and `publisher` do the I/O.

use serde::{Deserialize, Serialize};

/// Which server dialect the tool speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Centrifugo client protocol (JSON): `connect` + `subscribe` commands; server API `POST /api/publish`.
    Centrifuge,
    /// A plain WebSocket broadcast server: the room is in the URL, a frame is the payload itself; HTTP
    /// publish is `POST <url>?channel=<room>` with the payload as body.
    Raw,
    /// socket.io 4 over the WebSocket transport: `subscribe` event with an ack, `message` events; HTTP
    /// publish as in `raw`.
    SocketIo,
}

/// The send time and sequence number every published payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Nanoseconds since the tool's clock anchor when the message was handed to the network.
    pub sent_ns: u64,
    /// The message's sequence number (0-based) in this run.
    pub seq: u64,
}

/// A JSON object of `size` bytes (at least the stamp itself): `{"t":<ns>,"s":<seq>,"text":"xxx…"}`.
/// The `text` field makes it a valid input for the content-filter example plugin.
pub fn payload(stamp: Stamp, size: usize) -> String {
    let mut text = format!(r#"{{"t":{},"s":{},"text":""#, stamp.sent_ns, stamp.seq);
    let closing = "\"}";
    let padding = size.saturating_sub(text.len() + closing.len());
    text.reserve(padding + closing.len());
    text.extend(std::iter::repeat_n('x', padding));
    text.push_str(closing);
    text
}

/// Finds the stamp of a payload inside a frame (first occurrence), wherever the dialect wrapped it.
pub fn find_stamp(frame: &str) -> Option<Stamp> {
    const TIME: &str = r#"{"t":"#;
    const SEQ: &str = r#","s":"#;
    let start = frame.find(TIME)? + TIME.len();
    let (sent_ns, rest) = leading_number(&frame[start..])?;
    let rest = rest.strip_prefix(SEQ)?;
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
pub fn subscribe_url(template: &str, channels: &[String]) -> String {
    template.replace("{channels}", &channels.join(","))
}

/// What a connection sends as soon as the WebSocket is open, if anything.
pub fn greeting(protocol: Protocol, channels: &[String]) -> Option<String> {
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
        Protocol::Raw | Protocol::SocketIo => None,
    }
}

/// Where a connection's handshake stands after a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// Still waiting for replies.
    Pending,
    /// Every subscription is confirmed.
    Subscribed,
    /// The server refused; the reason is kept for the report.
    Failed(String),
}

/// Tracks one connection's handshake across the frames the server sends.
#[derive(Debug)]
pub struct HandshakeState {
    protocol: Protocol,
    channels: Vec<String>,
    confirmed: usize,
}

impl HandshakeState {
    /// A handshake for these channels.
    pub fn new(protocol: Protocol, channels: Vec<String>) -> Self {
        Self {
            protocol,
            channels,
            confirmed: 0,
        }
    }

    /// Consumes one server frame; pushes the frames to send back into `replies`.
    pub fn on_frame(&mut self, frame: &str, replies: &mut Vec<String>) -> Handshake {
        match self.protocol {
            Protocol::Raw => Handshake::Subscribed,
            Protocol::Centrifuge => self.on_centrifuge_frame(frame, replies),
            Protocol::SocketIo => self.on_socket_io_frame(frame, replies),
        }
    }

    /// The state before any frame: a raw connection is subscribed once it is open.
    pub fn initial(&self) -> Handshake {
        match self.protocol {
            Protocol::Raw => Handshake::Subscribed,
            Protocol::Centrifuge | Protocol::SocketIo => Handshake::Pending,
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
pub fn scan_frame(
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
    }
}

/// The HTTP publish request for one payload: URL and body.
pub fn http_publish(
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
/// Centrifugo command (it must be above the handshake's ids).
pub fn client_publish(protocol: Protocol, channel: &str, payload: &str, command_id: u32) -> String {
    let channel = serde_json::Value::from(channel);
    match protocol {
        Protocol::Centrifuge => {
            format!(r#"{{"id":{command_id},"publish":{{"channel":{channel},"data":{payload}}}}}"#)
        }
        Protocol::Raw => payload.to_string(),
        Protocol::SocketIo => {
            format!(r#"42["publish",{{"channel":{channel},"data":{payload}}}]"#)
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
        for (protocol, frame) in [
            (Protocol::Centrifuge, centrifuge.as_str()),
            (Protocol::Raw, data.as_str()),
            (Protocol::SocketIo, socket_io.as_str()),
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

    #[test]
    fn publish_requests_per_dialect() {
        let (url, body) = http_publish(Protocol::Centrifuge, "http://h/api/publish", "c", "{}");
        assert_eq!(
            (url.as_str(), body.as_str()),
            ("http://h/api/publish", r#"{"channel":"c","data":{}}"#)
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
