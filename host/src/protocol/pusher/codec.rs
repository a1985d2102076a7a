//! The Pusher Channels (protocol 7) wire codec: decoding what pusher-js and other Pusher clients send, and
//! encoding the events they expect, plus the channel-name rules both sides share.
//!
//! Pure: no I/O and no state, so every frame is pinned by a golden test below. Encoders write JSON by hand
//! (serde_json only escapes strings) so that payloads already validated as compact JSON are copied verbatim
//! and the field order matches what Pusher servers send. Following Pusher's convention, the `data` of events
//! the server originates is a JSON-encoded *string*, except for `pusher:error`, `pusher:pong`,
//! `pusher:subscription_error` and `pusher:signin_success`, which clients are used to receiving as objects.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::engine::Publication;
use crate::protocol::{Frame, compact_json};

/// Tag of a publication that names its Pusher event; publications without it are delivered as
/// [`DEFAULT_EVENT`], so publications from other protocols still reach Pusher clients under a stable name.
pub const EVENT_TAG: &str = "event";

/// The event name of a publication that carries no [`EVENT_TAG`]: Pusher requires every event to have a
/// name, and other protocols publish without one.
pub const DEFAULT_EVENT: &str = "message";

pub use crate::protocol::EXCLUDE_TAG;

/// Tag carrying the sender's user id of a client event on a presence channel, which Pusher clients expect
/// as the frame's top-level `user_id`.
pub const USER_ID_TAG: &str = "pusher_user_id";

/// What a Pusher client sent, reduced to what the session acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// `pusher:ping`: the client checks the connection is alive and wants a pong.
    Ping,
    /// `pusher:pong`: the answer to the server's ping.
    Pong,
    /// `pusher:subscribe`.
    Subscribe {
        /// The channel to join.
        channel: String,
        /// `key:signature`, for channels that need authorization.
        auth: Option<String>,
        /// Presence member data, kept byte for byte because the signature covers its exact text.
        channel_data: Option<String>,
    },
    /// `pusher:unsubscribe`.
    Unsubscribe {
        /// The channel to leave.
        channel: String,
    },
    /// `pusher:signin`: user authentication, verified over the exact `user_data` text.
    Signin {
        /// `key:signature`.
        auth: String,
        /// The signed user data (a JSON object as text), kept byte for byte.
        user_data: String,
    },
    /// `client-*`: an event one client sends to the other subscribers of a channel.
    ClientEvent {
        /// The event name (starts with `client-`).
        event: String,
        /// The channel to deliver it in.
        channel: String,
        /// The raw JSON text as received (object, string, anything), compacted; None when absent or null,
        /// since clients may whisper an event with no payload.
        data: Option<String>,
    },
    /// Any other event (unknown `pusher:*` and such): ignored by the session, as Pusher servers do.
    Other {
        /// The event name, for logging.
        event: String,
    },
}

impl ClientMessage {
    /// The event's name in metrics' `command` label: the `pusher:` events by name, every client event as
    /// `client_event` (their names are the app's, unbounded), anything else as `other`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ping => "ping",
            Self::Pong => "pong",
            Self::Subscribe { .. } => "subscribe",
            Self::Unsubscribe { .. } => "unsubscribe",
            Self::ClientEvent { .. } => "client_event",
            Self::Signin { .. } => "signin",
            Self::Other { .. } => "other",
        }
    }
}

/// Why a frame could not be decoded; the session answers with a soft `pusher:error` and keeps the socket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame is not a JSON document.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// The frame is JSON, but not an object (Pusher frames always are).
    #[error("not a JSON object")]
    NotObject,
    /// The object has no `event` string, so nothing says what it is.
    #[error("no \"event\" string")]
    NoEvent,
    /// A field the event requires is missing or of the wrong type (`data` must be an object, or a JSON
    /// string holding one; the others must be strings).
    #[error("\"{0}\" is missing or of the wrong type")]
    Field(&'static str),
}

/// The envelope every client frame shares; values stay raw until the event says how to read them.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    #[serde(borrow)]
    channel: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// The fields of the `data` object of `pusher:subscribe`, `pusher:unsubscribe` and `pusher:signin`.
#[derive(Deserialize)]
struct DataFields<'a> {
    #[serde(borrow)]
    channel: Option<&'a RawValue>,
    #[serde(borrow)]
    auth: Option<&'a RawValue>,
    #[serde(borrow)]
    channel_data: Option<&'a RawValue>,
    #[serde(borrow)]
    user_data: Option<&'a RawValue>,
}

/// Decodes one text frame.
///
/// Liberal in what it accepts, because Pusher clients differ: the `data` of `pusher:subscribe`,
/// `pusher:unsubscribe` and `pusher:signin` may be an object or a JSON string containing the object (some
/// clients encode it); `channel_data` may be a string (kept exactly, as it is signed byte for byte) or an
/// object (kept as its compact JSON text). A client event needs a top-level `channel` string; its `data`
/// may be any JSON value or absent.
pub fn decode(text: &str) -> Result<ClientMessage, DecodeError> {
    let raw: &RawValue =
        serde_json::from_str(text).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let raw = raw.get().trim_start();
    if !raw.starts_with('{') {
        return Err(DecodeError::NotObject);
    }
    // Only duplicate keys can fail here: the text is a JSON object and every field is optional.
    let envelope: Envelope<'_> =
        serde_json::from_str(raw).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let event = as_string(envelope.event).ok_or(DecodeError::NoEvent)?;
    match event.as_str() {
        "pusher:ping" => Ok(ClientMessage::Ping),
        "pusher:pong" => Ok(ClientMessage::Pong),
        "pusher:subscribe" => {
            let text = data_object(envelope.data)?;
            let data = data_fields(&text)?;
            Ok(ClientMessage::Subscribe {
                channel: required_string(data.channel, "data.channel")?,
                auth: optional_string(data.auth, "data.auth")?,
                channel_data: channel_data(data.channel_data)?,
            })
        }
        "pusher:unsubscribe" => {
            let text = data_object(envelope.data)?;
            let data = data_fields(&text)?;
            Ok(ClientMessage::Unsubscribe {
                channel: required_string(data.channel, "data.channel")?,
            })
        }
        "pusher:signin" => {
            let text = data_object(envelope.data)?;
            let data = data_fields(&text)?;
            Ok(ClientMessage::Signin {
                auth: required_string(data.auth, "data.auth")?,
                user_data: required_string(data.user_data, "data.user_data")?,
            })
        }
        _ if event.starts_with("client-") => {
            let channel = required_string(envelope.channel, "channel")?;
            let data = envelope.data.map(|raw| compact(raw.get().trim()));
            Ok(ClientMessage::ClientEvent {
                event,
                channel,
                data,
            })
        }
        _ => Ok(ClientMessage::Other { event }),
    }
}

/// The text of a `data` object, unwrapping the JSON-string form some clients send.
fn data_object(raw: Option<&RawValue>) -> Result<Cow<'_, str>, DecodeError> {
    let text = raw.ok_or(DecodeError::Field("data"))?.get().trim_start();
    if text.starts_with('{') {
        return Ok(Cow::Borrowed(text));
    }
    if text.starts_with('"') {
        let inner: String = serde_json::from_str(text).map_err(|_| DecodeError::Field("data"))?;
        if inner.trim_start().starts_with('{') {
            return Ok(Cow::Owned(inner));
        }
    }
    Err(DecodeError::Field("data"))
}

/// The fields of a `data` object's text (which may come from inside a string, so it is checked again).
fn data_fields(text: &str) -> Result<DataFields<'_>, DecodeError> {
    serde_json::from_str(text).map_err(|_| DecodeError::Field("data"))
}

/// A JSON string's value; None for anything else.
fn as_string(raw: Option<&RawValue>) -> Option<String> {
    let text = raw?.get().trim_start();
    if !text.starts_with('"') {
        return None;
    }
    serde_json::from_str(text).ok()
}

fn required_string(raw: Option<&RawValue>, field: &'static str) -> Result<String, DecodeError> {
    as_string(raw).ok_or(DecodeError::Field(field))
}

/// Absent or null is None; anything present must be a string.
fn optional_string(
    raw: Option<&RawValue>,
    field: &'static str,
) -> Result<Option<String>, DecodeError> {
    match raw {
        None => Ok(None),
        Some(_) => required_string(raw, field).map(Some),
    }
}

/// `channel_data`: a string as is (the signature covers it), or an object as its compact text.
fn channel_data(raw: Option<&RawValue>) -> Result<Option<String>, DecodeError> {
    let Some(value) = raw else {
        return Ok(None);
    };
    let text = value.get().trim();
    if text.starts_with('{') {
        Ok(Some(compact(text)))
    } else {
        required_string(raw, "data.channel_data").map(Some)
    }
}

/// Client JSON without raw newlines (whitespace between tokens), as the rest of Herald keeps payloads.
fn compact(json: &str) -> String {
    String::from_utf8_lossy(&compact_json(json)).into_owned()
}

/// Writes `value` as a JSON string literal.
fn push_str(out: &mut Vec<u8>, value: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(out, value);
}

/// Writes the JSON text built in `inner` as a JSON string literal: Pusher's string-encoded `data`.
fn push_encoded(out: &mut Vec<u8>, inner: &[u8]) {
    // The inner text is assembled from `&str` parts, so it is UTF-8 and borrowed without a copy.
    push_str(out, &String::from_utf8_lossy(inner));
}

/// Writes `{"event":…[,"channel":…],"data":` so the caller only writes the data value.
fn open_event(out: &mut Vec<u8>, event: &str, channel: Option<&str>) {
    out.extend_from_slice(b"{\"event\":");
    push_str(out, event);
    if let Some(channel) = channel {
        out.extend_from_slice(b",\"channel\":");
        push_str(out, channel);
    }
    out.extend_from_slice(b",\"data\":");
}

/// An event whose data is the JSON text in `inner`, sent string-encoded as Pusher servers do.
fn encoded_event(event: &str, channel: Option<&str>, inner: &[u8]) -> Frame {
    let mut out =
        Vec::with_capacity(event.len() + channel.map_or(0, str::len) + inner.len() * 2 + 40);
    open_event(&mut out, event, channel);
    push_encoded(&mut out, inner);
    out.push(b'}');
    Frame::new(out)
}

/// Raw presence user info as a JSON value; absent (or blank, which would break the frame) is `null`.
fn push_user_info(out: &mut Vec<u8>, user_info: Option<&str>) {
    match user_info.map(str::trim) {
        Some(info) if !info.is_empty() => out.extend_from_slice(info.as_bytes()),
        _ => out.extend_from_slice(b"null"),
    }
}

/// The first frame of every connection: pusher-js refuses the handshake without it, and needs a non-zero
/// `activity_timeout` to schedule its pings.
pub fn connection_established(socket_id: &str, activity_timeout_secs: u64) -> Frame {
    let mut inner = Vec::with_capacity(64);
    inner.extend_from_slice(b"{\"socket_id\":");
    push_str(&mut inner, socket_id);
    inner.extend_from_slice(b",\"activity_timeout\":");
    inner.extend_from_slice(itoa::Buffer::new().format(activity_timeout_secs).as_bytes());
    inner.push(b'}');
    encoded_event("pusher:connection_established", None, &inner)
}

/// The server's liveness probe after a quiet spell; pusher-js answers with `pusher:pong`.
pub fn ping() -> Frame {
    Frame::from_static(r#"{"event":"pusher:ping","data":{}}"#)
}

/// The answer to a client's `pusher:ping`; without it pusher-js drops the socket and reconnects.
pub fn pong() -> Frame {
    Frame::from_static(r#"{"event":"pusher:pong","data":{}}"#)
}

/// Confirms a subscription to a non-presence channel; pusher-js marks the channel subscribed on it.
pub fn subscription_succeeded(channel: &str) -> Frame {
    encoded_event(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        b"{}",
    )
}

/// Confirms a presence subscription with the roster pusher-js builds its member list from.
///
/// `members` are (user_id, user_info as raw JSON text, or None for `null`), unique by user id; they are
/// listed in the given order and `count` is their number.
pub fn presence_subscription_succeeded(
    channel: &str,
    members: &[(String, Option<String>)],
) -> Frame {
    let sizes: usize = members
        .iter()
        .map(|(id, info)| id.len() * 2 + info.as_ref().map_or(4, String::len) + 8)
        .sum();
    let mut inner = Vec::with_capacity(sizes + 64);
    inner.extend_from_slice(b"{\"presence\":{\"ids\":[");
    for (i, (id, _)) in members.iter().enumerate() {
        if i > 0 {
            inner.push(b',');
        }
        push_str(&mut inner, id);
    }
    inner.extend_from_slice(b"],\"hash\":{");
    for (i, (id, info)) in members.iter().enumerate() {
        if i > 0 {
            inner.push(b',');
        }
        push_str(&mut inner, id);
        inner.push(b':');
        push_user_info(&mut inner, info.as_deref());
    }
    inner.extend_from_slice(b"},\"count\":");
    inner.extend_from_slice(itoa::Buffer::new().format(members.len()).as_bytes());
    inner.extend_from_slice(b"}}");
    encoded_event(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        &inner,
    )
}

/// Tells the other members that a user's first connection joined the presence channel.
pub fn member_added(channel: &str, user_id: &str, user_info: Option<&str>) -> Frame {
    let mut inner = Vec::with_capacity(user_id.len() + user_info.map_or(4, str::len) + 32);
    inner.extend_from_slice(b"{\"user_id\":");
    push_str(&mut inner, user_id);
    inner.extend_from_slice(b",\"user_info\":");
    push_user_info(&mut inner, user_info);
    inner.push(b'}');
    encoded_event("pusher_internal:member_added", Some(channel), &inner)
}

/// Tells the other members that a user's last connection left; pusher-js looks up the info itself.
pub fn member_removed(channel: &str, user_id: &str) -> Frame {
    let mut inner = Vec::with_capacity(user_id.len() + 16);
    inner.extend_from_slice(b"{\"user_id\":");
    push_str(&mut inner, user_id);
    inner.push(b'}');
    encoded_event("pusher_internal:member_removed", Some(channel), &inner)
}

/// How many connections are subscribed to the channel, for apps with subscription counting; pusher-js
/// surfaces it as `pusher:subscription_count`.
pub fn subscription_count(channel: &str, count: u64) -> Frame {
    let inner = format!("{{\"subscription_count\":{count}}}");
    encoded_event(
        "pusher_internal:subscription_count",
        Some(channel),
        inner.as_bytes(),
    )
}

/// A failed subscription, routed by pusher-js to the channel (so Laravel Echo's `.error()` fires) without
/// closing the socket. `kind` is e.g. `AuthError` or `LimitReached`.
pub fn subscription_error(channel: &str, kind: &str, message: &str, status: u16) -> Frame {
    let mut out = Vec::with_capacity(channel.len() + kind.len() + message.len() + 96);
    open_event(&mut out, "pusher:subscription_error", Some(channel));
    out.extend_from_slice(b"{\"type\":");
    push_str(&mut out, kind);
    out.extend_from_slice(b",\"error\":");
    push_str(&mut out, message);
    out.extend_from_slice(b",\"status\":");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.extend_from_slice(b"}}");
    Frame::new(out)
}

/// A connection-level error; its code drives pusher-js' reconnect policy when it is the handshake reply
/// (or precedes a close with the same code). `None` is hosted Pusher's `"code":null` for errors that
/// have no code, such as a bad channel signature.
pub fn error(code: Option<u16>, message: &str) -> Frame {
    let mut out = Vec::with_capacity(message.len() + 64);
    open_event(&mut out, "pusher:error", None);
    out.extend_from_slice(b"{\"code\":");
    match code {
        Some(code) => out.extend_from_slice(itoa::Buffer::new().format(code).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"message\":");
    push_str(&mut out, message);
    out.extend_from_slice(b"}}");
    Frame::new(out)
}

/// Confirms a signin; pusher-js reads the user id from the echoed `user_data` and then subscribes to
/// its `#server-to-user-{id}` channel.
pub fn signin_success(user_data: &str) -> Frame {
    let mut out = Vec::with_capacity(user_data.len() * 2 + 64);
    open_event(&mut out, "pusher:signin_success", None);
    out.extend_from_slice(b"{\"user_data\":");
    push_str(&mut out, user_data);
    out.extend_from_slice(b"}}");
    Frame::new(out)
}

/// `bytes` without JSON's whitespace (space, tab, line feed, carriage return) around them.
fn trim_json_whitespace(bytes: &[u8]) -> &[u8] {
    let blank = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let start = bytes.iter().position(|b| !blank(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !blank(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// Whether `text` is one JSON text as JavaScript's `JSON.parse` (so pusher-js) judges it: RFC 8259's
/// grammar, with JSON whitespace only around the value (not a BOM, not U+00A0), numbers of any size
/// (`1e400` parses, to `Infinity`), any `\u` escape (lone surrogates too) and any depth. serde_json
/// checks exactly that grammar when it skips a value: without building it, without a depth limit (it
/// keeps its own stack), without range checks on numbers or escapes. The empty text is not JSON.
fn is_json_text(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

/// Whether publication data (already trimmed) is a JSON string literal whose content is *not* itself
/// JSON text, so that the content can be a Pusher event's `data` as it is: pusher-js fails to parse it
/// and keeps the string. A literal serde_json cannot decode (a lone surrogate escape) is answered no,
/// which only costs the shortcut: its JSON text is sent instead, which pusher-js parses to the same string.
fn is_literal_of_non_json(data: &[u8]) -> bool {
    if data.first() != Some(&b'"') {
        return false;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    serde_json::from_str::<String>(text).is_ok_and(|content| !is_json_text(&content))
}

/// A publication as a Pusher event, encoded once and shared by every Pusher subscriber of the channel:
/// `{"event":…,"channel":…,"data":…[,"user_id":…]}`.
///
/// The event is the publication's [`EVENT_TAG`] (or [`DEFAULT_EVENT`]); `user_id` is present when the
/// publication carries [`USER_ID_TAG`] (client events on presence channels).
///
/// The data (a JSON value) becomes Pusher's `data` string so that no type changes on the way: pusher-js
/// `JSON.parse`s every `data` string and keeps the raw string when that fails, so
/// - a JSON string whose content is not JSON text (`"hello"`, `""`, `"a\"b\nc"`) is sent as its
///   content (`hello`): pusher-js fails to parse it and keeps the string, and a Pusher trigger whose
///   data was not JSON arrives exactly as it was sent;
/// - anything else is sent as its JSON text: an object `{"a":1}` as `{"a":1}`, a number `123` as `123`,
///   `true`, `null`, and a string whose content *is* JSON text — `"123"`, `"true"`, `"null"`,
///   `"{\"a\":1}"`, `" 1 "` — with its quotes (`"123"`), so pusher-js parses it back to the string, not
///   to the number or object it spells.
///
/// Whatever the publication, pusher-js ends with `JSON.parse` of its data: the value a Centrifugo
/// subscriber gets. [`publication_data`] is the inverse for Pusher triggers.
pub fn publication(channel: &str, publication: &Publication) -> Frame {
    let event = publication
        .tags
        .get(EVENT_TAG)
        .map_or(DEFAULT_EVENT, String::as_str);
    let user_id = publication.tags.get(USER_ID_TAG);
    let data = trim_json_whitespace(&publication.data);
    let mut out = Vec::with_capacity(
        event.len()
            + channel.len()
            + data.len()
            + data.len() / 4
            + user_id.map_or(0, String::len)
            + 48,
    );
    open_event(&mut out, event, Some(channel));
    if is_literal_of_non_json(data) {
        // A valid JSON string literal (checked above, so no raw newline either) whose value is the data.
        out.extend_from_slice(data);
    } else {
        push_encoded(&mut out, data);
    }
    if let Some(user_id) = user_id {
        out.extend_from_slice(b",\"user_id\":");
        push_str(&mut out, user_id);
    }
    out.push(b'}');
    Frame::new(out)
}

/// Whether a channel keeps its last triggered event for new subscribers (`cache-`, `private-cache-`,
/// `private-encrypted-cache-`, `presence-cache-`).
pub fn is_cache_channel(channel: &str) -> bool {
    [
        "cache-",
        "private-cache-",
        "private-encrypted-cache-",
        "presence-cache-",
    ]
    .iter()
    .any(|prefix| channel.starts_with(prefix))
}

/// `{"event":"pusher:cache_miss","channel":"c"}`: a cache channel has no event to give a new subscriber.
pub fn cache_miss(channel: &str) -> Frame {
    let mut out = Vec::with_capacity(48 + channel.len());
    out.extend_from_slice(br#"{"event":"pusher:cache_miss","channel":"#);
    serde_json::to_writer(&mut out, channel).expect("writing to a Vec cannot fail");
    out.push(b'}');
    Frame::new(out)
}

/// Whether a channel name is one Pusher accepts, so Herald neither refuses names Pusher clients rely on
/// nor lets through names the server libraries would reject: 1..=`max_len` characters (the prefix
/// included) of `[A-Za-z0-9_\-=@,.;]`, optionally after one leading `#` (server-owned channels).
pub fn valid_channel_name(channel: &str, max_len: usize) -> bool {
    let body = channel.strip_prefix('#').unwrap_or(channel);
    !body.is_empty()
        && channel.len() <= max_len
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-=@,.;".contains(&b))
}

/// What a Pusher trigger's `data` string S becomes as a publication's data (a JSON value), so that every
/// protocol ends with the value pusher-js makes of S, the string `JSON.parse`d when it parses:
/// - S is JSON text (`{"a":1}`, `123`, `true`, `null`, `"quoted"`, ` 1 `) → that JSON value, compacted
///   (no whitespace around it, no line breaks): a Centrifugo subscriber gets the object, the number 123,
///   `true`, …;
/// - anything else (`hello`, the empty string, `{oops`, `a"b`) → the JSON string of S: a Centrifugo
///   subscriber gets the string S.
///
/// [`publication`] turns it back into S for Pusher clients: exactly when S is not JSON text; when it is,
/// as its compacted text, except that a JSON string literal whose content is not JSON text (`"hello"`)
/// arrives as its content (`hello`). Either way pusher-js ends with the same value as from S.
pub fn publication_data(data: &str) -> Bytes {
    if is_json_text(data) {
        compact_json(data.trim_matches([' ', '\t', '\n', '\r']))
    } else {
        let mut out = Vec::with_capacity(data.len() + 2);
        push_str(&mut out, data);
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cache_channels_and_their_miss() {
        for cached in [
            "cache-a",
            "private-cache-a",
            "private-encrypted-cache-a",
            "presence-cache-a",
        ] {
            assert!(super::is_cache_channel(cached), "{cached}");
        }
        for plain in ["a", "private-a", "presence-a", "cachex", "my-cache-a"] {
            assert!(!super::is_cache_channel(plain), "{plain}");
        }
        assert_eq!(
            super::cache_miss("cache-\"q\"").as_str(),
            r#"{"event":"pusher:cache_miss","channel":"cache-\"q\""}"#
        );
    }

    use std::collections::BTreeMap;

    use super::*;

    fn subscribe(channel: &str, auth: Option<&str>, channel_data: Option<&str>) -> ClientMessage {
        ClientMessage::Subscribe {
            channel: channel.into(),
            auth: auth.map(Into::into),
            channel_data: channel_data.map(Into::into),
        }
    }

    fn client_event(event: &str, channel: &str, data: Option<&str>) -> ClientMessage {
        ClientMessage::ClientEvent {
            event: event.into(),
            channel: channel.into(),
            data: data.map(Into::into),
        }
    }

    fn pub_with(data: &'static str, tags: &[(&str, &str)]) -> Publication {
        Publication {
            data: Bytes::from_static(data.as_bytes()),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            ..Publication::default()
        }
    }

    /// Every encoded frame must be one JSON object; returns it for field checks.
    fn parsed(frame: &Frame) -> serde_json::Value {
        let value: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
        assert!(value.is_object(), "{}", frame.as_str());
        assert!(!frame.as_str().contains('\n'));
        value
    }

    /// The value pusher-js ends up with: `data` JSON-parsed when it is a string that parses.
    fn client_data(frame: &Frame) -> serde_json::Value {
        match &parsed(frame)["data"] {
            serde_json::Value::String(s) => {
                serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::String(s.clone()))
            }
            other => other.clone(),
        }
    }

    // ---- decode ----

    #[test]
    fn decodes_ping_and_pong() {
        assert_eq!(
            decode(r#"{"event":"pusher:ping","data":{}}"#),
            Ok(ClientMessage::Ping)
        );
        assert_eq!(
            decode(r#"{"event":"pusher:ping"}"#),
            Ok(ClientMessage::Ping)
        );
        assert_eq!(
            decode(r#"{"event":"pusher:pong","data":{}}"#),
            Ok(ClientMessage::Pong)
        );
    }

    #[test]
    fn decodes_public_subscribe() {
        assert_eq!(
            decode(r#"{"event":"pusher:subscribe","data":{"channel":"my-channel"}}"#),
            Ok(subscribe("my-channel", None, None))
        );
        // Null auth is as good as absent; unknown fields are ignored.
        assert_eq!(
            decode(
                r#"{"event":"pusher:subscribe","data":{"channel":"c","auth":null,"x":1},"y":[]}"#
            ),
            Ok(subscribe("c", None, None))
        );
    }

    #[test]
    fn decodes_private_and_presence_subscribe() {
        assert_eq!(
            decode(
                r#"{"event":"pusher:subscribe","data":{"channel":"private-x","auth":"key:abc"}}"#
            ),
            Ok(subscribe("private-x", Some("key:abc"), None))
        );
        // channel_data as a string is kept exactly, spaces and escapes decoded once.
        assert_eq!(
            decode(
                r#"{"event":"pusher:subscribe","data":{"channel":"presence-x","auth":"k:s","channel_data":"{\"user_id\": 10,\"user_info\":{\"name\":\"Mr. Channels\"}}"}}"#
            ),
            Ok(subscribe(
                "presence-x",
                Some("k:s"),
                Some(r#"{"user_id": 10,"user_info":{"name":"Mr. Channels"}}"#)
            ))
        );
    }

    #[test]
    fn decodes_channel_data_object_as_its_compact_text() {
        let frame = "{\"event\":\"pusher:subscribe\",\"data\":{\"channel\":\"presence-x\",\"auth\":\"k:s\",\"channel_data\":{\"user_id\":\"7\",\n\"user_info\":{\"n\":1}}}}";
        assert_eq!(
            decode(frame),
            Ok(subscribe(
                "presence-x",
                Some("k:s"),
                Some(r#"{"user_id":"7","user_info":{"n":1}}"#)
            ))
        );
    }

    #[test]
    fn decodes_data_sent_as_an_encoded_string() {
        assert_eq!(
            decode(
                r#"{"event":"pusher:subscribe","data":"{\"channel\":\"presence-x\",\"auth\":\"k:s\",\"channel_data\":\"{\\\"user_id\\\":1}\"}"}"#
            ),
            Ok(subscribe(
                "presence-x",
                Some("k:s"),
                Some(r#"{"user_id":1}"#)
            ))
        );
        assert_eq!(
            decode(r#"{"event":"pusher:unsubscribe","data":"{\"channel\":\"c\"}"}"#),
            Ok(ClientMessage::Unsubscribe {
                channel: "c".into()
            })
        );
        assert_eq!(
            decode(
                r#"{"event":"pusher:signin","data":"{\"auth\":\"k:s\",\"user_data\":\"{\\\"id\\\":\\\"77\\\"}\"}"}"#
            ),
            Ok(ClientMessage::Signin {
                auth: "k:s".into(),
                user_data: r#"{"id":"77"}"#.into()
            })
        );
    }

    #[test]
    fn decodes_unsubscribe_and_signin() {
        assert_eq!(
            decode(r#"{"event":"pusher:unsubscribe","data":{"channel":"private-x"}}"#),
            Ok(ClientMessage::Unsubscribe {
                channel: "private-x".into()
            })
        );
        assert_eq!(
            decode(
                r#"{"event":"pusher:signin","data":{"auth":"k:s","user_data":"{\"id\":\"77\", \"name\":\"A\"}"}}"#
            ),
            Ok(ClientMessage::Signin {
                auth: "k:s".into(),
                user_data: r#"{"id":"77", "name":"A"}"#.into()
            })
        );
    }

    #[test]
    fn decodes_client_events() {
        assert_eq!(
            decode(r#"{"event":"client-typing","channel":"private-chat","data":{"who": "ann"}}"#),
            Ok(client_event(
                "client-typing",
                "private-chat",
                Some(r#"{"who": "ann"}"#)
            ))
        );
        assert_eq!(
            decode(
                "{\"event\":\"client-typing\",\"channel\":\"private-chat\",\"data\":{\n\"a\":1\r\n}}"
            ),
            Ok(client_event(
                "client-typing",
                "private-chat",
                Some(r#"{"a":1}"#)
            ))
        );
        // pusher-websocket-java sends a string.
        assert_eq!(
            decode(r#"{"event":"client-typing","channel":"private-chat","data":"{\"a\":1}"}"#),
            Ok(client_event(
                "client-typing",
                "private-chat",
                Some(r#""{\"a\":1}""#)
            ))
        );
        // Echo's whisper with no payload.
        assert_eq!(
            decode(r#"{"event":"client-exit","channel":"presence-room"}"#),
            Ok(client_event("client-exit", "presence-room", None))
        );
        assert_eq!(
            decode(r#"{"event":"client-exit","channel":"presence-room","data":null}"#),
            Ok(client_event("client-exit", "presence-room", None))
        );
        assert_eq!(
            decode(r#"{"event":"client-n","channel":"private-c","data":12.5}"#),
            Ok(client_event("client-n", "private-c", Some("12.5")))
        );
    }

    #[test]
    fn other_events_are_reported_not_rejected() {
        assert_eq!(
            decode(r#"{"event":"pusher:cache_whatever","data":{}}"#),
            Ok(ClientMessage::Other {
                event: "pusher:cache_whatever".into()
            })
        );
        assert_eq!(
            decode(r#"{"event":"pusher_internal:member_added","channel":"presence-x"}"#),
            Ok(ClientMessage::Other {
                event: "pusher_internal:member_added".into()
            })
        );
        assert_eq!(
            decode(r#"{"event":"my-event"}"#),
            Ok(ClientMessage::Other {
                event: "my-event".into()
            })
        );
    }

    #[test]
    fn decodes_escaped_event_and_channel() {
        assert_eq!(
            decode(r#"{"event":"client-\u00e9\"q","channel":"private-\u0041"}"#),
            Ok(client_event("client-é\"q", "private-A", None))
        );
    }

    #[test]
    fn decode_errors() {
        assert!(matches!(decode(""), Err(DecodeError::NotJson(_))));
        assert!(matches!(decode("hello"), Err(DecodeError::NotJson(_))));
        assert!(matches!(
            decode(r#"{"event":"pusher:ping""#),
            Err(DecodeError::NotJson(_))
        ));
        assert!(matches!(
            decode(r#"{"event":"a","event":"b"}"#),
            Err(DecodeError::NotJson(_))
        ));
        assert_eq!(
            decode(r#"[{"event":"pusher:ping"}]"#),
            Err(DecodeError::NotObject)
        );
        assert_eq!(decode(r#""pusher:ping""#), Err(DecodeError::NotObject));
        assert_eq!(decode("42"), Err(DecodeError::NotObject));
        assert_eq!(decode(r#"{"data":{}}"#), Err(DecodeError::NoEvent));
        assert_eq!(decode(r#"{"event":7}"#), Err(DecodeError::NoEvent));
        assert_eq!(decode(r#"{"event":null}"#), Err(DecodeError::NoEvent));
        assert_eq!(
            decode(r#"{"event":"pusher:subscribe","data":{}}"#),
            Err(DecodeError::Field("data.channel"))
        );
        assert_eq!(
            decode(r#"{"event":"pusher:subscribe","data":{"channel":5}}"#),
            Err(DecodeError::Field("data.channel"))
        );
        assert_eq!(
            decode(r#"{"event":"pusher:subscribe"}"#),
            Err(DecodeError::Field("data"))
        );
        assert_eq!(
            decode(r#"{"event":"pusher:subscribe","data":"not json"}"#),
            Err(DecodeError::Field("data"))
        );
        assert_eq!(
            decode(r#"{"event":"pusher:subscribe","data":"[1]"}"#),
            Err(DecodeError::Field("data"))
        );
        assert_eq!(
            decode(r#"{"event":"pusher:subscribe","data":[]}"#),
            Err(DecodeError::Field("data"))
        );
        assert_eq!(
            decode(r#"{"event":"pusher:subscribe","data":{"channel":"private-x","auth":1}}"#),
            Err(DecodeError::Field("data.auth"))
        );
        assert_eq!(
            decode(
                r#"{"event":"pusher:subscribe","data":{"channel":"presence-x","channel_data":[1]}}"#
            ),
            Err(DecodeError::Field("data.channel_data"))
        );
        assert_eq!(
            decode(r#"{"event":"pusher:unsubscribe","data":{}}"#),
            Err(DecodeError::Field("data.channel"))
        );
        assert_eq!(
            decode(r#"{"event":"pusher:signin","data":{"auth":"k:s"}}"#),
            Err(DecodeError::Field("data.user_data"))
        );
        assert_eq!(
            decode(r#"{"event":"pusher:signin","data":{"user_data":"{}"}}"#),
            Err(DecodeError::Field("data.auth"))
        );
        assert_eq!(
            decode(r#"{"event":"client-x","data":{}}"#),
            Err(DecodeError::Field("channel"))
        );
        assert_eq!(
            decode(r#"{"event":"client-x","channel":{},"data":{}}"#),
            Err(DecodeError::Field("channel"))
        );
    }

    #[test]
    fn decode_errors_display_which_field() {
        assert_eq!(
            DecodeError::Field("data.channel").to_string(),
            r#""data.channel" is missing or of the wrong type"#
        );
    }

    // ---- encoders ----

    #[test]
    fn connection_established_golden() {
        assert_eq!(
            connection_established("4084018159.6406432958", 30).as_str(),
            r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"4084018159.6406432958\",\"activity_timeout\":30}"}"#
        );
    }

    #[test]
    fn ping_pong_golden() {
        assert_eq!(ping().as_str(), r#"{"event":"pusher:ping","data":{}}"#);
        assert_eq!(pong().as_str(), r#"{"event":"pusher:pong","data":{}}"#);
    }

    #[test]
    fn subscription_succeeded_golden() {
        assert_eq!(
            subscription_succeeded("private-x").as_str(),
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"private-x","data":"{}"}"#
        );
    }

    #[test]
    fn presence_subscription_succeeded_golden() {
        let members = vec![
            ("u1".to_string(), Some(r#"{"n":1}"#.to_string())),
            ("42".to_string(), None),
        ];
        let frame = presence_subscription_succeeded("presence-x", &members);
        assert_eq!(
            frame.as_str(),
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"presence-x","data":"{\"presence\":{\"ids\":[\"u1\",\"42\"],\"hash\":{\"u1\":{\"n\":1},\"42\":null},\"count\":2}}"}"#
        );
        assert_eq!(
            client_data(&frame),
            serde_json::json!({"presence":{"ids":["u1","42"],"hash":{"u1":{"n":1},"42":null},"count":2}})
        );
        assert_eq!(
            presence_subscription_succeeded("presence-x", &[]).as_str(),
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"presence-x","data":"{\"presence\":{\"ids\":[],\"hash\":{},\"count\":0}}"}"#
        );
    }

    #[test]
    fn member_events_golden() {
        assert_eq!(
            member_added("presence-x", "42", Some(r#"{"name":"Ann"}"#)).as_str(),
            r#"{"event":"pusher_internal:member_added","channel":"presence-x","data":"{\"user_id\":\"42\",\"user_info\":{\"name\":\"Ann\"}}"}"#
        );
        assert_eq!(
            member_added("presence-x", "42", None).as_str(),
            r#"{"event":"pusher_internal:member_added","channel":"presence-x","data":"{\"user_id\":\"42\",\"user_info\":null}"}"#
        );
        assert_eq!(
            member_added("presence-x", "42", Some("  ")).as_str(),
            r#"{"event":"pusher_internal:member_added","channel":"presence-x","data":"{\"user_id\":\"42\",\"user_info\":null}"}"#
        );
        assert_eq!(
            subscription_count("news", 3).as_str(),
            r#"{"event":"pusher_internal:subscription_count","channel":"news","data":"{\"subscription_count\":3}"}"#
        );
        assert_eq!(
            member_removed("presence-x", "42").as_str(),
            r#"{"event":"pusher_internal:member_removed","channel":"presence-x","data":"{\"user_id\":\"42\"}"}"#
        );
    }

    #[test]
    fn subscription_error_golden() {
        assert_eq!(
            subscription_error(
                "private-x",
                "AuthError",
                "The connection is unauthorized.",
                401
            )
            .as_str(),
            r#"{"event":"pusher:subscription_error","channel":"private-x","data":{"type":"AuthError","error":"The connection is unauthorized.","status":401}}"#
        );
    }

    #[test]
    fn error_golden() {
        assert_eq!(
            error(Some(4009), "Connection not authorized.").as_str(),
            r#"{"event":"pusher:error","data":{"code":4009,"message":"Connection not authorized."}}"#
        );
        assert_eq!(
            error(None, "Invalid signature").as_str(),
            r#"{"event":"pusher:error","data":{"code":null,"message":"Invalid signature"}}"#
        );
    }

    #[test]
    fn signin_success_golden() {
        assert_eq!(
            signin_success(r#"{"id":"77","name":"A"}"#).as_str(),
            r#"{"event":"pusher:signin_success","data":{"user_data":"{\"id\":\"77\",\"name\":\"A\"}"}}"#
        );
    }

    #[test]
    fn escapes_quotes_newlines_and_unicode() {
        let frame = error(Some(4301), "bad \"name\"\nline two é ☃ \u{1}");
        assert_eq!(
            frame.as_str(),
            "{\"event\":\"pusher:error\",\"data\":{\"code\":4301,\"message\":\"bad \\\"name\\\"\\nline two é ☃ \\u0001\"}}"
        );
        assert_eq!(
            parsed(&frame)["data"]["message"],
            "bad \"name\"\nline two é ☃ \u{1}"
        );

        let frame = subscription_error("a\"b\\c", "Auth\nError", "ü", 4009);
        assert_eq!(
            frame.as_str(),
            r#"{"event":"pusher:subscription_error","channel":"a\"b\\c","data":{"type":"Auth\nError","error":"ü","status":4009}}"#
        );

        // Escaped inside the string-encoded data, then escaped again as that string.
        let frame = member_added("presence-\"é", "4\"2\n", None);
        assert_eq!(
            frame.as_str(),
            r#"{"event":"pusher_internal:member_added","channel":"presence-\"é","data":"{\"user_id\":\"4\\\"2\\n\",\"user_info\":null}"}"#
        );
        assert_eq!(client_data(&frame)["user_id"], "4\"2\n");
        assert_eq!(parsed(&frame)["channel"], "presence-\"é");

        let frame = publication(
            "c\"h",
            &pub_with(r#"{"t":"é\n"}"#, &[(EVENT_TAG, "ev\"1\n")]),
        );
        assert_eq!(
            frame.as_str(),
            r#"{"event":"ev\"1\n","channel":"c\"h","data":"{\"t\":\"é\\n\"}"}"#
        );
        assert_eq!(parsed(&frame)["event"], "ev\"1\n");
        assert_eq!(client_data(&frame), serde_json::json!({"t":"é\n"}));
    }

    #[test]
    fn publication_golden() {
        assert_eq!(
            publication("my-channel", &pub_with(r#"{"text":"hi"}"#, &[])).as_str(),
            r#"{"event":"message","channel":"my-channel","data":"{\"text\":\"hi\"}"}"#
        );
        assert_eq!(
            publication(
                "my-channel",
                &pub_with(
                    r#"{"text":"hi"}"#,
                    &[(EVENT_TAG, "my-event"), ("other", "x")]
                )
            )
            .as_str(),
            r#"{"event":"my-event","channel":"my-channel","data":"{\"text\":\"hi\"}"}"#
        );
        assert_eq!(
            publication(
                "presence-room",
                &pub_with(
                    r#"{"a":1}"#,
                    &[
                        (EVENT_TAG, "client-typing"),
                        (USER_ID_TAG, "42"),
                        (EXCLUDE_TAG, "1.2")
                    ]
                )
            )
            .as_str(),
            r#"{"event":"client-typing","channel":"presence-room","data":"{\"a\":1}","user_id":"42"}"#
        );
        // A string literal is the data as is.
        assert_eq!(
            publication("c", &pub_with(r#""hello""#, &[])).as_str(),
            r#"{"event":"message","channel":"c","data":"hello"}"#
        );
        // Numbers and other scalars become their text as a string.
        assert_eq!(
            publication("c", &pub_with("12.5", &[])).as_str(),
            r#"{"event":"message","channel":"c","data":"12.5"}"#
        );
        assert_eq!(
            publication("c", &pub_with("null", &[])).as_str(),
            r#"{"event":"message","channel":"c","data":"null"}"#
        );
        assert_eq!(
            publication("c", &pub_with("[1,\"x\"]", &[])).as_str(),
            r#"{"event":"message","channel":"c","data":"[1,\"x\"]"}"#
        );
        // Never an invalid frame, even for empty data.
        assert_eq!(
            publication("c", &pub_with("", &[])).as_str(),
            r#"{"event":"message","channel":"c","data":""}"#
        );
    }

    /// What a Pusher trigger's data string becomes as publication data: JSON text as its compacted value,
    /// anything else as a JSON string.
    #[test]
    fn publication_data_golden() {
        let cases: &[(&str, &str)] = &[
            // JSON text: its value.
            (r#"{"a":1}"#, r#"{"a":1}"#),
            ("{\"a\":\n 1}\r\n", r#"{"a": 1}"#),
            (r#"  {"a":1}	"#, r#"{"a":1}"#),
            ("123", "123"),
            (" 1 ", "1"),
            ("-1.5e3", "-1.5e3"),
            ("1e400", "1e400"),
            ("12345678901234567890", "12345678901234567890"),
            ("-0", "-0"),
            ("true", "true"),
            ("false", "false"),
            ("null", "null"),
            (r#"[1,"x",[{}]]"#, r#"[1,"x",[{}]]"#),
            (r#""quoted""#, r#""quoted""#),
            (r#""123""#, r#""123""#),
            (r#""\ud800""#, r#""\ud800""#),
            (r#""\u00e9""#, r#""\u00e9""#),
            // Not JSON text: a JSON string.
            ("hello", r#""hello""#),
            ("", r#""""#),
            ("\t", r#""\t""#),
            ("a\"b\nc", r#""a\"b\nc""#),
            ("{oops", r#""{oops""#),
            ("[1,]", r#""[1,]""#),
            ("nul", r#""nul""#),
            ("01", r#""01""#),
            ("1 2", r#""1 2""#),
            ("\u{feff}1", "\"\u{feff}1\""),
            ("1\u{a0}", "\"1\u{a0}\""),
            ("ünïcödé ☃", r#""ünïcödé ☃""#),
        ];
        for (trigger, expected) in cases {
            assert_eq!(
                publication_data(trigger),
                Bytes::from(expected.as_bytes()),
                "{trigger:?}"
            );
        }
    }

    /// The `data` of the Pusher event a publication becomes, as it appears in the frame: a JSON string
    /// literal holding the publication's JSON text, or — for a string whose content is not JSON text —
    /// that string itself.
    #[test]
    fn publication_event_data_golden() {
        let cases: &[(&str, &str)] = &[
            // Strings whose content is JSON text keep their quotes, so pusher-js parses them to strings.
            (r#""123""#, r#""\"123\"""#),
            (r#""true""#, r#""\"true\"""#),
            (r#""null""#, r#""\"null\"""#),
            (r#""1e400""#, r#""\"1e400\"""#),
            (r#"" 1 ""#, r#""\" 1 \"""#),
            (r#""[1,2]""#, r#""\"[1,2]\"""#),
            (r#""{\"a\":1}""#, r#""\"{\\\"a\\\":1}\"""#),
            (r#""\"hello\"""#, r#""\"\\\"hello\\\"\"""#),
            (r#""\u0031""#, r#""\"\\u0031\"""#),
            // A lone surrogate serde_json does not decode: sent as JSON text, which parses to the same.
            (r#""\ud800""#, r#""\"\\ud800\"""#),
            // Strings whose content is not JSON text: the string itself, escapes kept.
            (r#""hello""#, r#""hello""#),
            (r#""""#, r#""""#),
            (r#""a\"b\nc""#, r#""a\"b\nc""#),
            (r#""\u00e9 ☃""#, r#""\u00e9 ☃""#),
            (r#""{oops""#, r#""{oops""#),
            ("\"\u{feff}1\"", "\"\u{feff}1\""),
            (r#"  "x"	"#, r#""x""#),
            // Other values: their JSON text.
            ("123", r#""123""#),
            ("-1.5e3", r#""-1.5e3""#),
            ("1e400", r#""1e400""#),
            ("12345678901234567890", r#""12345678901234567890""#),
            ("-0", r#""-0""#),
            ("true", r#""true""#),
            ("false", r#""false""#),
            ("null", r#""null""#),
            (r#"{"a":1}"#, r#""{\"a\":1}""#),
            (r#"{"t":"é\n"}"#, r#""{\"t\":\"é\\n\"}""#),
            (r#"[1,"x"]"#, r#""[1,\"x\"]""#),
            (r#" {"a":1} "#, r#""{\"a\":1}""#),
            // Never an invalid frame, even for data that is not JSON.
            ("", r#""""#),
        ];
        for (data, expected) in cases {
            let frame = publication("c", &pub_with(data, &[]));
            assert_eq!(
                frame.as_str(),
                format!(r#"{{"event":"message","channel":"c","data":{expected}}}"#),
                "{data:?}"
            );
            parsed(&frame);
        }
    }

    /// What pusher-js makes of a `data` string: `JSON.parse`d, or the string itself when that fails.
    fn pusher_js(data: &str) -> serde_json::Value {
        serde_json::from_str(data).unwrap_or_else(|_| serde_json::Value::String(data.to_owned()))
    }

    /// The `data` string of an encoded publication.
    fn event_data(frame: &Frame) -> String {
        match &parsed(frame)["data"] {
            serde_json::Value::String(data) => data.clone(),
            other => panic!("data is not a string: {other}"),
        }
    }

    /// Publications from any protocol reach pusher-js as the value a Centrifugo subscriber gets: no string
    /// becomes a number, boolean, null, array or object, and nothing else becomes a string.
    #[test]
    fn pusher_js_gets_the_publication_value() {
        for data in [
            r#""123""#,
            r#""true""#,
            r#""false""#,
            r#""null""#,
            r#""{\"a\":1}""#,
            r#""[1]""#,
            r#""""#,
            r#"" 1 ""#,
            r#""a\"b\nc""#,
            r#""\"q\"""#,
            r#""hello""#,
            r#""é\u2028☃""#,
            "123",
            "-0.5e-3",
            "12345678901234567890",
            "true",
            "false",
            "null",
            r#"{"a":1,"b":"2","c":[null]}"#,
            r#"[1,"1",true,"true",null,"null"]"#,
        ] {
            let frame = publication("c", &pub_with(data, &[]));
            let value: serde_json::Value = serde_json::from_str(data).unwrap();
            assert_eq!(
                pusher_js(&event_data(&frame)),
                value,
                "{data} → {}",
                frame.as_str()
            );
        }
    }

    /// A Pusher trigger's data reaches pusher-js as hosted Pusher delivers it (the string, parsed by
    /// pusher-js when it is JSON), and exactly as sent when it is not JSON text.
    #[test]
    fn trigger_data_round_trips_to_the_frame() {
        for trigger in [
            "hello",
            r#"{"a":1}"#,
            r#"{"some":"data"}"#,
            "42",
            "-1.5e3",
            "true",
            "null",
            r#"[1,2]"#,
            r#""quoted""#,
            r#""123""#,
            r#"" 1 ""#,
            " 1 ",
            "{\"a\":\n1}",
            r#"not "json" at all"#,
            "",
            " padded ",
            "a\"b\nc",
            "ünïcödé ☃",
            "{oops",
            "\u{feff}1",
        ] {
            let publication_ = Publication {
                data: publication_data(trigger),
                ..Publication::default()
            };
            let frame = publication("c", &publication_);
            let data = event_data(&frame);
            assert_eq!(
                pusher_js(&data),
                pusher_js(trigger),
                "{trigger:?} → {}",
                frame.as_str()
            );
            if !is_json_text(trigger) {
                assert_eq!(data, trigger, "not JSON, so exactly as sent");
            }
        }
        // JSON text goes compacted; a JSON string literal of non-JSON content goes as that content.
        for (trigger, data) in [
            (" 1 ", "1"),
            ("{\"a\":\n1}", r#"{"a":1}"#),
            (r#""quoted""#, "quoted"),
            (r#""123""#, r#""123""#),
        ] {
            let frame = publication(
                "c",
                &Publication {
                    data: publication_data(trigger),
                    ..Publication::default()
                },
            );
            assert_eq!(event_data(&frame), data, "{trigger:?}");
        }
    }

    /// The JSON check is `JSON.parse`'s: no depth limit, no range checks, JSON whitespace only.
    #[test]
    fn json_text_is_what_json_parse_accepts() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        for json in [
            "0",
            " 1 ",
            "\t\r\n[]\n",
            "1e400",
            "-0",
            r#""\ud800""#,
            r#"{"a":1,"a":2}"#,
            &deep,
        ] {
            assert!(is_json_text(json), "{json:.40}");
        }
        for not_json in [
            "",
            " ",
            "01",
            "1.",
            ".5",
            "+1",
            "-",
            "NaN",
            "Infinity",
            "'a'",
            "\"\t\"",
            r#""\x41""#,
            "[1,]",
            "{a:1}",
            "1 2",
            "\u{feff}1",
            "1\u{a0}",
            "\u{c}1",
            "undefined",
        ] {
            assert!(!is_json_text(not_json), "{not_json:?}");
        }
    }

    // ---- channels ----

    #[test]
    fn channel_names() {
        assert!(valid_channel_name("my-channel", 164));
        assert!(valid_channel_name("a", 1));
        assert!(valid_channel_name("Aa0_-=@,.;", 164));
        assert!(valid_channel_name("presence-room.1;x=y@z,w", 164));
        assert!(valid_channel_name("#server-to-user-77", 164));
        assert!(valid_channel_name("#x", 2));

        assert!(!valid_channel_name("", 164));
        assert!(!valid_channel_name("#", 164));
        assert!(!valid_channel_name("##x", 164));
        assert!(!valid_channel_name("a#b", 164));
        assert!(!valid_channel_name("a:b", 164));
        assert!(!valid_channel_name("a b", 164));
        assert!(!valid_channel_name("a/b", 164));
        assert!(!valid_channel_name("é", 164));
        assert!(!valid_channel_name("a\n", 164));
        assert!(!valid_channel_name("ab", 1));
        assert!(!valid_channel_name("#x", 1));
        assert!(!valid_channel_name("a", 0));
        assert!(valid_channel_name(&"a".repeat(164), 164));
        assert!(!valid_channel_name(&"a".repeat(165), 164));
    }
}
