//! Client protocols: pure codecs from wire frames to core commands and from core events to wire frames.
//!
//! No I/O and no state lives here, so every codec is unit-tested with golden frames. A publication is
//! encoded once per protocol and the resulting [`Frame`] shared by every subscriber.
//!
//! The hub and the transports know a protocol only through its [`Wire`]: how it encodes what the hub fans
//! out, whether its frames may be joined, what close its clients see. A protocol is its own module plus
//! one line in [`Protocol`] and [`Protocol::wire`].

pub mod centrifuge;
pub mod pusher;

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::disconnect::Disconnect;
use crate::engine::{ClientInfo, Publication};

/// A publication tag naming one client that must not receive it (the Pusher API's `socket_id`, a client
/// event's sender), whatever protocol it speaks.
pub const EXCLUDE_TAG: &str = "pusher_exclude";

/// What a protocol supplies to the core: the frames the hub fans out (each encoded once per protocol and
/// shared by all its subscribers) and the transport's few protocol decisions.
pub trait Wire: Sync {
    /// A publication for every subscriber of `channel`.
    fn publication(&self, channel: &str, publication: &Publication) -> Frame;
    /// A publication for a subscription with delta compression: `delta` (Fossil's format) from the
    /// previous publication's data, or the full publication in the form such a subscription expects when
    /// `None`. Protocols without delta compression send the plain publication.
    fn delta_publication(
        &self,
        channel: &str,
        publication: &Publication,
        delta: Option<&str>,
    ) -> Frame {
        let _ = delta;
        self.publication(channel, publication)
    }
    /// Someone joined `channel` (sent to subscribers that asked for joins and leaves).
    fn join(&self, channel: &str, who: &ClientInfo) -> Frame;
    /// Someone left `channel`.
    fn leave(&self, channel: &str, who: &ClientInfo) -> Frame;
    /// Whether a subscriber hears of its own joins and leaves.
    fn hears_own_presence(&self) -> bool;
    /// How the writer may join queued frames into one WebSocket message: the bytes between two frames
    /// (a newline for newline-delimited JSON, nothing for self-delimiting ones), or `None` when every
    /// frame must go as its own message.
    fn frame_separator(&self) -> Option<&'static [u8]>;
    /// The close this protocol's clients must see for `disconnect`, a close decided by the core.
    fn close(&self, disconnect: Disconnect) -> Disconnect;
}

/// The client protocols a connection may speak; the hub encodes each publication once per protocol in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The Centrifugo client protocol, JSON encoding.
    Centrifuge,
    /// The Centrifugo client protocol, Protobuf encoding.
    CentrifugeProtobuf,
    /// The Pusher Channels protocol v7.
    Pusher,
    /// The Centrifugo protocol's unidirectional form (JSON pushes only).
    CentrifugeUni,
}

impl Protocol {
    /// How many protocols there are, for per-protocol tables.
    pub const COUNT: usize = 4;

    /// Position in per-protocol tables.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Every protocol, in [`Protocol::index`] order.
    pub const ALL: [Self; Self::COUNT] = [
        Self::Centrifuge,
        Self::CentrifugeProtobuf,
        Self::Pusher,
        Self::CentrifugeUni,
    ];

    /// Its name in metrics' `protocol` label.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Centrifuge => "centrifuge",
            Self::CentrifugeProtobuf => "centrifuge-protobuf",
            Self::Pusher => "pusher",
            Self::CentrifugeUni => "centrifuge-uni",
        }
    }

    /// What the core asks of this protocol.
    pub fn wire(self) -> &'static dyn Wire {
        match self {
            Self::Centrifuge => &centrifuge::Centrifuge,
            Self::CentrifugeProtobuf => &centrifuge::CentrifugeProtobuf,
            Self::Pusher => &pusher::Pusher,
            Self::CentrifugeUni => &centrifuge::CentrifugeUni,
        }
    }
}

/// One encoded, complete message for a client, shared cheaply between subscribers: UTF-8 text (the JSON
/// protocols) or binary (Protobuf).
///
/// Text is checked once, when it is encoded: the writer of every subscriber sends the same buffer
/// without copying it or checking its UTF-8 again (with thousands of subscribers both showed up in
/// profiles).
///
/// A frame also keeps what a transport derives from it for every connection alike (the compressed bytes of
/// permessage-deflate), computed once by the first connection that needs it.
#[derive(Debug, Clone)]
pub struct Frame {
    bytes: Bytes,
    binary: bool,
    /// Absent for frames too small to be worth a shared copy.
    derived: Option<Arc<OnceLock<Bytes>>>,
}

impl PartialEq for Frame {
    fn eq(&self, other: &Self) -> bool {
        self.binary == other.binary && self.bytes == other.bytes
    }
}

impl Eq for Frame {}

/// Frames shorter than this keep no shared derived copy: deriving one again costs less than the slot.
const DERIVED_MIN: usize = 64;

/// The slot for a frame of `len` bytes.
fn derived_slot(len: usize) -> Option<Arc<OnceLock<Bytes>>> {
    (len >= DERIVED_MIN).then(|| Arc::new(OnceLock::new()))
}

impl Frame {
    /// Wraps encoded text, checking once that it is UTF-8. The encoders only assemble valid UTF-8 from
    /// validated parts, so a failure is a bug: it is logged and the invalid sequences replaced, rather
    /// than failing every subscriber's connection.
    pub fn new(text: Vec<u8>) -> Self {
        let text = match String::from_utf8(text) {
            Ok(text) => text,
            Err(error) => {
                tracing::error!("encoder produced invalid UTF-8; replacing the invalid sequences");
                String::from_utf8_lossy(error.as_bytes()).into_owned()
            }
        };
        Self {
            derived: derived_slot(text.len()),
            bytes: Bytes::from(text),
            binary: false,
        }
    }

    /// A frame from static text.
    pub const fn from_static(text: &'static str) -> Self {
        Self {
            bytes: Bytes::from_static(text.as_bytes()),
            binary: false,
            derived: None,
        }
    }

    /// A binary frame.
    pub fn binary(bytes: Vec<u8>) -> Self {
        Self {
            derived: derived_slot(bytes.len()),
            bytes: Bytes::from(bytes),
            binary: true,
        }
    }

    /// A binary frame from static bytes.
    pub const fn binary_static(bytes: &'static [u8]) -> Self {
        Self {
            bytes: Bytes::from_static(bytes),
            binary: true,
            derived: None,
        }
    }

    /// Whether it goes out as a binary WebSocket message rather than text.
    pub fn is_binary(&self) -> bool {
        self.binary
    }

    /// The encoded bytes (valid UTF-8 unless binary).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The text of a text frame.
    #[cfg(test)]
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes).expect("a text frame")
    }

    /// The encoded bytes as a shared handle (not a copy).
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// What a transport makes of this frame for every connection alike (`make` runs on the frame's bytes
    /// once; clones share the result).
    pub fn derived(&self, make: impl FnOnce(&[u8]) -> Bytes) -> Bytes {
        match &self.derived {
            Some(slot) => slot.get_or_init(|| make(&self.bytes)).clone(),
            None => make(&self.bytes),
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the frame is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Makes client-supplied JSON safe to embed in a newline-delimited frame: raw newlines in valid JSON are
/// whitespace between tokens, so removing them keeps the value and keeps one document per line.
pub fn compact_json(raw: &str) -> Bytes {
    if raw.contains(['\n', '\r']) {
        Bytes::from(raw.replace(['\n', '\r'], ""))
    } else {
        Bytes::copy_from_slice(raw.as_bytes())
    }
}
