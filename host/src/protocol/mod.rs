//! Client protocols: pure codecs from wire frames to core commands and from core events to wire frames.
//!
//! No I/O and no state lives here, so every codec is unit-tested with golden frames. A publication is
//! encoded once per protocol and the resulting [`Frame`] shared by every subscriber.

pub mod centrifuge;

use bytes::Bytes;

/// One encoded, complete message for a client: UTF-8 text, shared cheaply between subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    /// Wraps encoded text. The encoders only ever assemble valid UTF-8.
    pub fn new(text: Vec<u8>) -> Self {
        Self(Bytes::from(text))
    }

    /// A frame from static text.
    pub const fn from_static(text: &'static str) -> Self {
        Self(Bytes::from_static(text.as_bytes()))
    }

    /// The encoded bytes (always valid UTF-8).
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the frame is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
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
