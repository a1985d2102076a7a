//! permessage-deflate (RFC 7692): what a client offers, what Herald answers, and compressing messages
//! both ways.
//!
//! Herald always answers `client_no_context_takeover`, so every client message inflates on its own: one
//! inflater per thread, reset for each message, instead of a 32 KiB window held by every connection. By
//! default it also answers `server_no_context_takeover`: every message it sends is compressed on its own,
//! so a publication is compressed once (the [`Frame`] keeps the result) and the same bytes go to every
//! subscriber with the full window. A client that asks for a smaller window, or a server configured with
//! `context_takeover`, gets its messages compressed for it alone.
//!
//! A compressed message ends with a sync flush (`00 00 ff ff`), which the RFC drops from the wire. Two such
//! pieces put end to end are one valid deflate stream (the second never refers back into the first), so
//! frames compressed separately are joined into one message by concatenating them, dropping only the last
//! piece's marker.

use std::cell::RefCell;
use std::sync::Mutex;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::config::CompressionConfig;
use crate::disconnect::Disconnect;
use crate::protocol::Frame;
use crate::sync::lock;

/// The bytes a sync flush ends with, left off the wire.
const SYNC_MARKER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The extension's name.
const NAME: &str = "permessage-deflate";

/// What one connection negotiated, and its compressor when its messages cannot share compression.
#[derive(Debug)]
pub(in crate::transport) struct Deflate {
    level: u32,
    min_size: usize,
    window_bits: u8,
    context_takeover: bool,
    /// For a connection whose messages are compressed for it alone; made at its first such message.
    own: Mutex<Option<Compress>>,
}

impl Deflate {
    /// Whether `frame` goes out compressed (frames under `min_size` do not).
    pub(in crate::transport) fn applies(&self, frame: &Frame) -> bool {
        frame.len() >= self.min_size
    }

    /// Whether this connection's messages use the compression every subscriber shares.
    fn shared(&self) -> bool {
        self.window_bits == 15 && !self.context_takeover
    }

    /// Whether compressing a message changes what the next one compresses to, so a message must be
    /// compressed exactly once, when it is written.
    pub(in crate::transport) fn keeps_context(&self) -> bool {
        self.context_takeover
    }

    /// `frame` compressed for this connection, ending with the sync marker.
    pub(in crate::transport) fn compress(&self, frame: &Frame) -> Bytes {
        if self.shared() {
            let level = self.level;
            frame.derived(|text| compress_once(text, level, 15))
        } else {
            self.compress_own(frame.bytes())
        }
    }

    /// `bytes` (e.g. the separator between joined frames) compressed for this connection.
    pub(in crate::transport) fn compress_bytes(&self, bytes: &[u8]) -> Bytes {
        if self.shared() {
            compress_once(bytes, self.level, 15)
        } else {
            self.compress_own(bytes)
        }
    }

    fn compress_own(&self, bytes: &[u8]) -> Bytes {
        let mut own = lock(&self.own);
        let compress = own.get_or_insert_with(|| compressor(self.level, self.window_bits));
        if !self.context_takeover {
            compress.reset();
        }
        Bytes::from(deflate(compress, bytes))
    }
}

/// A raw-deflate compressor. zlib has no 256-byte window: a client that limits Herald to 8 bits gets
/// stored blocks (no back-references, valid for any window).
fn compressor(level: u32, window_bits: u8) -> Compress {
    if window_bits < 9 {
        Compress::new_with_window_bits(Compression::none(), false, 9)
    } else {
        Compress::new_with_window_bits(Compression::new(level), false, window_bits)
    }
}

/// `bytes` compressed on their own with the full window.
fn compress_once(bytes: &[u8], level: u32, window_bits: u8) -> Bytes {
    Bytes::from(deflate(&mut compressor(level, window_bits), bytes))
}

/// Runs `bytes` through `compress` and sync-flushes: the result ends with [`SYNC_MARKER`].
fn deflate(compress: &mut Compress, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() / 2 + 64);
    let start = compress.total_in();
    loop {
        let consumed = (compress.total_in() - start) as usize;
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(64));
        }
        let status = compress.compress_vec(&bytes[consumed..], &mut out, FlushCompress::Sync);
        let done = (compress.total_in() - start) as usize == bytes.len();
        // The flush is complete when the output did not fill up (zlib's own rule).
        if matches!(status, Ok(Status::Ok | Status::BufError)) && done && out.len() < out.capacity()
        {
            return out;
        }
        if status.is_err() {
            // Compressing into memory cannot fail; keep the stream valid with what was written.
            tracing::error!("deflate failed; the message is sent as compressed so far");
            return out;
        }
    }
}

/// A compressed piece without its sync marker: what goes on the wire for the last piece of a message.
pub(in crate::transport) fn without_marker(piece: &Bytes) -> Bytes {
    if piece.ends_with(&SYNC_MARKER) {
        piece.slice(..piece.len() - SYNC_MARKER.len())
    } else {
        piece.clone()
    }
}

thread_local! {
    /// The inflater of this thread, reset for each message (clients keep no context, as negotiated).
    static INFLATER: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// Inflates a client's compressed message, refusing one that inflates past `max` bytes (`1009`) or that is
/// not valid deflate (`1007`). A message may also end with a final block (RFC 7692 §7.2.3.2, for clients
/// that cannot sync-flush): the marker appended after it is then not read.
pub(in crate::transport) fn inflate(compressed: &[u8], max: usize) -> Result<Bytes, Disconnect> {
    INFLATER.with_borrow_mut(|inflater| {
        inflater.reset(false);
        let mut out = Vec::with_capacity((compressed.len() * 4).min(max + 1).max(64));
        'inputs: for (marker, input) in [(false, compressed), (true, &SYNC_MARKER[..])] {
            let start = inflater.total_in();
            loop {
                let consumed = (inflater.total_in() - start) as usize;
                if out.len() > max {
                    return Err(Disconnect::MESSAGE_TOO_BIG);
                }
                if out.capacity() == out.len() {
                    out.reserve((out.capacity()).min(max + 1 - out.len()).max(64));
                }
                let before = out.len();
                let status = inflater
                    .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
                    .map_err(|_| INVALID_DEFLATE)?;
                let consumed = (inflater.total_in() - start) as usize;
                if status == Status::StreamEnd {
                    if !marker && consumed < input.len() {
                        // A final block followed by more of the message: not one deflate stream.
                        return Err(INVALID_DEFLATE);
                    }
                    break 'inputs;
                }
                let stuck = out.len() == before && out.len() < out.capacity();
                if (consumed == input.len() && out.len() < out.capacity()) || stuck {
                    break;
                }
            }
        }
        if out.len() > max {
            return Err(Disconnect::MESSAGE_TOO_BIG);
        }
        Ok(Bytes::from(out))
    })
}

/// The close for compressed data that does not inflate.
const INVALID_DEFLATE: Disconnect = crate::disconnect::known(1007, "invalid compressed data");

/// The answer to a client's `Sec-WebSocket-Extensions` offers: the first permessage-deflate offer Herald
/// can take (offers with unknown or malformed parameters are passed over), and the header value saying so.
pub(in crate::transport) fn negotiate(
    offers: &str,
    config: &CompressionConfig,
) -> Option<(Deflate, String)> {
    if !config.enabled {
        return None;
    }
    offers
        .split(',')
        .filter_map(|offer| {
            let mut parts = offer.split(';').map(str::trim);
            (parts.next()? == NAME).then_some(parts)
        })
        .find_map(|params| accept(params, config))
}

/// Takes one offer's parameters, or `None` when it asks for something Herald cannot do.
fn accept<'a>(
    params: impl Iterator<Item = &'a str>,
    config: &CompressionConfig,
) -> Option<(Deflate, String)> {
    let mut seen = Vec::new();
    let mut window_bits = 15;
    let mut no_context = false;
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        let bits = |value: Option<&str>| value?.parse::<u8>().ok().filter(|b| (8..=15).contains(b));
        match (name, value) {
            ("server_no_context_takeover", None) => no_context = true,
            ("client_no_context_takeover", None) => {}
            ("server_max_window_bits", value) => window_bits = bits(value)?,
            // The client's own window: any is fine, Herald inflates with the largest.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", value) => {
                bits(value)?;
            }
            _ => return None,
        }
    }
    let context_takeover = config.context_takeover && !no_context;
    let mut answer = format!("{NAME}; client_no_context_takeover");
    if !context_takeover {
        answer.push_str("; server_no_context_takeover");
    }
    if window_bits < 15 {
        answer.push_str(&format!("; server_max_window_bits={window_bits}"));
    }
    let deflate = Deflate {
        level: config.level,
        min_size: config.min_size,
        window_bits,
        context_takeover,
        own: Mutex::new(None),
    };
    Some((deflate, answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CompressionConfig {
        CompressionConfig {
            enabled: true,
            min_size: 0,
            ..CompressionConfig::default()
        }
    }

    fn answer(offers: &str, config: &CompressionConfig) -> Option<String> {
        negotiate(offers, config).map(|(_, answer)| answer)
    }

    #[test]
    fn browsers_and_node_ws_offers_are_taken() {
        let expected = "permessage-deflate; client_no_context_takeover; server_no_context_takeover";
        // Chromium and Firefox, then Node's ws.
        for offer in [
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=15",
            "permessage-deflate",
        ] {
            assert_eq!(
                answer(offer, &config()).as_deref(),
                Some(expected),
                "{offer}"
            );
        }
        assert_eq!(
            answer("permessage-deflate; server_max_window_bits=10", &config()).as_deref(),
            Some(
                "permessage-deflate; client_no_context_takeover; server_no_context_takeover; server_max_window_bits=10"
            )
        );
    }

    #[test]
    fn offers_herald_cannot_take_are_passed_over() {
        let off = CompressionConfig {
            enabled: false,
            ..CompressionConfig::default()
        };
        assert_eq!(answer("permessage-deflate", &off), None);
        for offer in [
            "x-webkit-deflate-frame",
            "permessage-deflate; unknown_param",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
        ] {
            assert_eq!(answer(offer, &config()), None, "{offer}");
        }
        // The first acceptable offer wins.
        assert!(
            answer("permessage-deflate; bogus, permessage-deflate", &config())
                .is_some_and(|a| !a.contains("window_bits"))
        );
    }

    #[test]
    fn context_takeover_is_kept_only_when_configured_and_not_refused() {
        let takeover = CompressionConfig {
            context_takeover: true,
            ..config()
        };
        let kept = answer("permessage-deflate", &takeover).unwrap();
        assert!(!kept.contains("server_no_context_takeover"), "{kept}");
        let refused = answer("permessage-deflate; server_no_context_takeover", &takeover).unwrap();
        assert!(refused.contains("server_no_context_takeover"), "{refused}");
    }

    fn deflate(offer: &str, config: &CompressionConfig) -> Deflate {
        negotiate(offer, config).unwrap().0
    }

    /// What a client does with a message: append the marker and inflate (with its own inflater).
    fn client_inflate(wire: &[u8], inflater: &mut Decompress) -> Vec<u8> {
        let mut input = wire.to_vec();
        input.extend(SYNC_MARKER);
        let mut out = Vec::with_capacity(1 << 20);
        inflater
            .decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .unwrap();
        out
    }

    #[test]
    fn frames_compressed_apart_join_into_one_message() {
        let text = |n: usize| format!("{{\"n\":{n},\"text\":\"{}\"}}", "abc".repeat(n * 30));
        for offer in [
            "permessage-deflate",
            "permessage-deflate; server_max_window_bits=9",
            "permessage-deflate; server_max_window_bits=8",
        ] {
            let d = deflate(offer, &config());
            let frames: Vec<Frame> = (1..4).map(|n| Frame::new(text(n).into_bytes())).collect();
            let mut wire = Vec::new();
            for (i, frame) in frames.iter().enumerate() {
                if i > 0 {
                    wire.extend_from_slice(&d.compress_bytes(b"\n"));
                }
                wire.extend_from_slice(&d.compress(frame));
            }
            let wire = without_marker(&Bytes::from(wire));
            let mut inflater = Decompress::new_with_window_bits(false, 15);
            let joined = String::from_utf8(client_inflate(&wire, &mut inflater)).unwrap();
            assert_eq!(
                joined,
                format!("{}\n{}\n{}", text(1), text(2), text(3)),
                "{offer}"
            );
        }
    }

    #[test]
    fn shared_compression_is_computed_once_per_frame() {
        let d = deflate("permessage-deflate", &config());
        let frame = Frame::new(format!("{{\"a\":\"{}\"}}", "x".repeat(100)).into_bytes());
        let first = d.compress(&frame);
        let copy = frame.clone();
        assert_eq!(
            d.compress(&copy).as_ptr(),
            first.as_ptr(),
            "the same bytes, not a copy"
        );
    }

    #[test]
    fn context_takeover_keeps_the_window_between_messages() {
        let takeover = CompressionConfig {
            context_takeover: true,
            ..config()
        };
        let d = deflate("permessage-deflate", &takeover);
        let text = "{\"price\":\"12345.6789\",\"symbol\":\"HERALD\"}".repeat(4);
        let frame = Frame::new(text.clone().into_bytes());
        let first = without_marker(&d.compress(&frame));
        let second = without_marker(&d.compress(&frame));
        assert!(
            second.len() < first.len(),
            "{} then {}",
            first.len(),
            second.len()
        );
        let mut inflater = Decompress::new_with_window_bits(false, 15);
        assert_eq!(client_inflate(&first, &mut inflater), text.as_bytes());
        assert_eq!(client_inflate(&second, &mut inflater), text.as_bytes());
    }

    #[test]
    fn inflating_is_bounded() {
        let big = vec![b'a'; 100_000];
        let compressed = without_marker(&compress_once(&big, 6, 15));
        assert!(compressed.len() < 1000);
        assert_eq!(inflate(&compressed, 100_000).unwrap(), big);
        assert_eq!(
            inflate(&compressed, 99_999),
            Err(Disconnect::MESSAGE_TOO_BIG)
        );
        assert_eq!(inflate(b"\xff\xff\xff garbage", 1000), Err(INVALID_DEFLATE));
        assert_eq!(inflate(&[], 1000).unwrap(), Bytes::new());
    }

    /// A client that ends its message with a final block (BFINAL set) instead of a sync flush is read, the
    /// marker after the end ignored; data after a final block is not deflate.
    #[test]
    fn a_final_block_ends_the_message() {
        let text = b"{\"final\":\"block\"}";
        let mut compress = Compress::new(Compression::fast(), false);
        let mut finished = Vec::with_capacity(128);
        compress
            .compress_vec(text, &mut finished, FlushCompress::Finish)
            .unwrap();
        assert_eq!(inflate(&finished, 1000).unwrap(), &text[..]);
        let mut trailing = finished.clone();
        trailing.extend(b"more");
        assert_eq!(inflate(&trailing, 1000), Err(INVALID_DEFLATE));
    }
}
