//! The reading half of a WebSocket connection (RFC 6455 §5–7): client frames in, whole messages out.
//!
//! Frame headers are parsed by tungstenite's frame layer; what to make of them — unmasking, reassembling
//! fragments, the limits, control frames in between, the close handshake — is here, so that reading
//! costs nothing while a connection is idle: bytes are read only when the socket has some, into a buffer
//! that is given back as soon as it holds no unparsed bytes. Pings are answered and a client's close is
//! echoed through the connection's outbound queue, in order with everything else it sends.

use std::borrow::Cow;
use std::io::Cursor;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

use super::{deflate, writer};
use crate::disconnect::Disconnect;
use crate::outbound::Outbound;
use crate::transport::socket::Socket;

/// What a client sent, as far as the connection is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::transport) enum Event {
    /// A whole text message, valid UTF-8.
    Text(Bytes),
    /// A whole binary message.
    Binary(Bytes),
    /// A ping (already answered) and its payload.
    Ping(Bytes),
    /// A pong.
    Pong(usize),
    /// The client's close frame and its payload (already echoed when the client started the close).
    Close(Bytes),
    /// A frame that breaks the protocol or a limit: nothing more is read; the close to send.
    Violation(Disconnect),
}

impl Event {
    /// Payload bytes the event carried, for budgets.
    pub(in crate::transport) fn size(&self) -> usize {
        match self {
            Self::Text(bytes) | Self::Binary(bytes) | Self::Ping(bytes) | Self::Close(bytes) => {
                bytes.len()
            }
            Self::Pong(size) => *size,
            Self::Violation(_) => 0,
        }
    }
}

/// The close for a frame that breaks RFC 6455 (reserved bits, bad opcode, bad fragmentation, …).
pub(in crate::transport) const PROTOCOL_ERROR: Disconnect = Disconnect {
    code: 1002,
    reason: Cow::Borrowed("protocol error"),
};

/// Limits on what a client may send.
#[derive(Debug, Clone, Copy)]
pub(in crate::transport) struct ReadLimits {
    /// Largest message (all fragments together), and so largest frame.
    pub(in crate::transport) max_message: usize,
    /// Bytes asked of the socket per read while no frame says it needs more.
    pub(in crate::transport) read_size: usize,
    /// permessage-deflate was negotiated: a message may come compressed (RSV1 on its first frame), and
    /// is inflated up to `max_message`.
    pub(in crate::transport) inflate: bool,
}

/// A fragmented message being reassembled.
#[derive(Debug)]
struct Fragments {
    text: bool,
    /// Compressed (permessage-deflate): checked once inflated.
    compressed: bool,
    data: BytesMut,
    /// How much of a text message's data is known to be valid UTF-8: each fragment is checked as it
    /// comes (a bad one fails the message at once), a character split across fragments on arrival of
    /// the rest.
    checked: usize,
}

/// Turns bytes into events; no I/O, so every rule is unit-tested on bytes.
#[derive(Debug, Default)]
struct Frames {
    /// Unparsed bytes; unallocated while there are none.
    buffer: BytesMut,
    fragments: Option<Fragments>,
    /// Bytes the frame in the buffer still misses, once its header is parsed.
    missing: usize,
    /// Set after a violation: nothing more is parsed.
    failed: bool,
}

impl Frames {
    /// The next event the buffered bytes make, or `None` when more bytes are needed.
    fn next(&mut self, limits: &ReadLimits) -> Option<Event> {
        loop {
            if self.failed {
                return None;
            }
            let mut cursor = Cursor::new(&self.buffer[..]);
            let (header, length) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return None,
                Err(_) => return Some(self.fail(PROTOCOL_ERROR)),
            };
            let header_len = cursor.position() as usize;
            if let Err(violation) = self.check(&header, length, limits) {
                return Some(self.fail(violation));
            }
            // Checked against the message limit above, so it fits.
            let length = length as usize;
            let available = self.buffer.len() - header_len;
            if available < length {
                self.missing = length - available;
                return None;
            }
            self.missing = 0;
            self.buffer.advance(header_len);
            let mut payload = self.buffer.split_to(length);
            if let Some(mask) = header.mask {
                unmask(&mut payload, mask);
            }
            if self.buffer.is_empty() {
                // Give the allocation back (the payload keeps what it needs of it).
                self.buffer = BytesMut::new();
            }
            if let Some(event) = self.frame(&header, payload, limits) {
                return Some(event);
            }
        }
    }

    /// The rules a frame header must follow before its payload is read.
    fn check(
        &self,
        header: &FrameHeader,
        length: u64,
        limits: &ReadLimits,
    ) -> Result<(), Disconnect> {
        if header.mask.is_none() || header.rsv2 || header.rsv3 {
            return Err(PROTOCOL_ERROR);
        }
        // RSV1 marks a compressed message, on its first frame only.
        let first_data_frame = matches!(header.opcode, OpCode::Data(Data::Text | Data::Binary));
        if header.rsv1 && !(limits.inflate && first_data_frame) {
            return Err(PROTOCOL_ERROR);
        }
        match header.opcode {
            OpCode::Control(_) if !header.is_final || length > 125 => Err(PROTOCOL_ERROR),
            OpCode::Control(_) => Ok(()),
            OpCode::Data(Data::Continue) if self.fragments.is_none() => Err(PROTOCOL_ERROR),
            OpCode::Data(Data::Text | Data::Binary) if self.fragments.is_some() => {
                Err(PROTOCOL_ERROR)
            }
            OpCode::Data(_) => {
                let so_far = self.fragments.as_ref().map_or(0, |f| f.data.len() as u64);
                if so_far + length > limits.max_message as u64 {
                    Err(Disconnect::MESSAGE_TOO_BIG)
                } else {
                    Ok(())
                }
            }
        }
    }

    /// What a complete frame means; `None` for a fragment that does not end its message.
    fn frame(
        &mut self,
        header: &FrameHeader,
        payload: BytesMut,
        limits: &ReadLimits,
    ) -> Option<Event> {
        match header.opcode {
            OpCode::Control(Control::Ping) => Some(Event::Ping(payload.freeze())),
            OpCode::Control(Control::Pong) => Some(Event::Pong(payload.len())),
            OpCode::Control(_) => Some(match close_frame(&payload) {
                Ok(()) => Event::Close(payload.freeze()),
                Err(violation) => self.fail(violation),
            }),
            OpCode::Data(data) => {
                let mut fragments = match self.fragments.take() {
                    Some(mut fragments) => {
                        fragments.data.extend_from_slice(&payload);
                        fragments
                    }
                    None => Fragments {
                        text: data == Data::Text,
                        compressed: header.rsv1,
                        data: payload,
                        checked: 0,
                    },
                };
                if !header.is_final {
                    if fragments.text && !fragments.compressed {
                        match std::str::from_utf8(&fragments.data[fragments.checked..]) {
                            Ok(_) => fragments.checked = fragments.data.len(),
                            // Only the end is cut short: the next fragment may complete it.
                            Err(error) if error.error_len().is_none() => {
                                fragments.checked += error.valid_up_to();
                            }
                            Err(_) => return Some(self.fail(Disconnect::INVALID_PAYLOAD)),
                        }
                    }
                    self.fragments = Some(fragments);
                    return None;
                }
                let mut message = std::mem::take(&mut fragments.data).freeze();
                if fragments.compressed {
                    message = match deflate::inflate(&message, limits.max_message) {
                        Ok(inflated) => inflated,
                        Err(violation) => return Some(self.fail(violation)),
                    };
                }
                if !fragments.text {
                    return Some(Event::Binary(message));
                }
                Some(match std::str::from_utf8(&message[fragments.checked..]) {
                    Ok(_) => Event::Text(message),
                    Err(_) => self.fail(Disconnect::INVALID_PAYLOAD),
                })
            }
        }
    }

    fn fail(&mut self, violation: Disconnect) -> Event {
        self.failed = true;
        self.buffer = BytesMut::new();
        self.fragments = None;
        Event::Violation(violation)
    }
}

/// A close frame's payload: empty, or a valid status code and a UTF-8 reason.
fn close_frame(payload: &[u8]) -> Result<(), Disconnect> {
    match payload {
        [] => Ok(()),
        [_] => Err(PROTOCOL_ERROR),
        [high, low, reason @ ..] => {
            if !CloseCode::from(u16::from_be_bytes([*high, *low])).is_allowed() {
                return Err(PROTOCOL_ERROR);
            }
            std::str::from_utf8(reason)
                .map(|_| ())
                .map_err(|_| Disconnect::INVALID_PAYLOAD)
        }
    }
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// The most bytes asked of the socket in one read for a frame that says it is larger.
const MAX_READ: usize = 1 << 20;

/// Reads a connection's client frames as [`Event`]s, answering pings and the client's close itself.
#[derive(Debug)]
pub(in crate::transport) struct Reader {
    socket: Arc<Socket>,
    outbound: Arc<Outbound>,
    frames: Frames,
    limits: ReadLimits,
    ended: bool,
}

impl Reader {
    /// Reads `socket`, starting with the bytes already read past the upgrade request.
    pub(in crate::transport) fn new(
        socket: Arc<Socket>,
        outbound: Arc<Outbound>,
        read_ahead: Bytes,
        limits: ReadLimits,
    ) -> Self {
        let frames = Frames {
            buffer: BytesMut::from(read_ahead),
            ..Frames::default()
        };
        Self {
            socket,
            outbound,
            frames,
            limits,
            ended: false,
        }
    }

    /// The next event; `None` once the client is gone (or after a violation was reported).
    pub(in crate::transport) async fn next(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Polls for the next event (see [`Reader::next`]).
    pub(in crate::transport) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        loop {
            if let Some(event) = self.frames.next(&self.limits) {
                self.answer(&event);
                return Poll::Ready(Some(event));
            }
            if self.ended || self.frames.failed {
                return Poll::Ready(None);
            }
            let want = self.frames.missing.clamp(self.limits.read_size, MAX_READ);
            self.frames.buffer.reserve(want);
            match self.socket.try_read_buf(&mut self.frames.buffer) {
                Ok(0) => self.ended = true,
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    if self.frames.buffer.is_empty() {
                        // Nothing is kept for an idle connection.
                        self.frames.buffer = BytesMut::new();
                    }
                    if ready!(self.socket.poll_read_ready(cx)).is_err() {
                        self.ended = true;
                    }
                }
                Err(_) => self.ended = true,
            }
        }
    }

    /// Pongs for pings; the echo of a close the client started (a close that answers ours finds the
    /// queue closed and is not echoed).
    fn answer(&self, event: &Event) {
        match event {
            Event::Ping(payload) => {
                self.outbound
                    .push_raw(writer::control(Control::Pong, payload));
            }
            // The client's close, echoed; no close of ours follows it.
            Event::Close(payload)
                if self
                    .outbound
                    .push_raw(writer::control(Control::Close, payload)) =>
            {
                self.outbound.close(Disconnect::CONNECTION_CLOSED);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;

    const LIMITS: ReadLimits = ReadLimits {
        max_message: 100,
        read_size: 16,
        inflate: false,
    };

    /// A client frame as it comes off the wire: masked unless said otherwise.
    fn wire(opcode: OpCode, payload: &[u8], is_final: bool, masked: bool) -> Vec<u8> {
        let header = FrameHeader {
            is_final,
            opcode,
            mask: masked.then_some([1, 2, 3, 4]),
            ..FrameHeader::default()
        };
        let frame = Frame::from_payload(header, Bytes::copy_from_slice(payload));
        let mut bytes = Vec::new();
        frame.format(&mut bytes).unwrap();
        bytes
    }

    fn text(payload: &str) -> Vec<u8> {
        wire(OpCode::Data(Data::Text), payload.as_bytes(), true, true)
    }

    /// Every event the bytes make, fed in pieces of `chop` bytes.
    fn events(bytes: &[u8], chop: usize) -> Vec<Event> {
        let mut frames = Frames::default();
        let mut events = Vec::new();
        for piece in bytes.chunks(chop) {
            frames.buffer.extend_from_slice(piece);
            while let Some(event) = frames.next(&LIMITS) {
                events.push(event);
            }
        }
        events
    }

    fn violation(code: u16) -> impl Fn(&Event) -> bool {
        move |event| matches!(event, Event::Violation(d) if d.code == code)
    }

    #[test]
    fn whole_messages_come_out_however_the_bytes_are_chopped() {
        let mut bytes = text("héllo");
        bytes.extend(wire(OpCode::Data(Data::Binary), &[0, 255], true, true));
        bytes.extend(wire(OpCode::Control(Control::Ping), b"p", true, true));
        for chop in [1, 2, 3, 7, bytes.len()] {
            assert_eq!(
                events(&bytes, chop),
                vec![
                    Event::Text(Bytes::from("héllo")),
                    Event::Binary(Bytes::from_static(&[0, 255])),
                    Event::Ping(Bytes::from_static(b"p")),
                ],
                "chopped into {chop}-byte pieces"
            );
        }
    }

    #[test]
    fn fragments_are_joined_and_control_frames_may_come_between() {
        let mut bytes = wire(OpCode::Data(Data::Text), b"ab", false, true);
        bytes.extend(wire(OpCode::Control(Control::Pong), b"", true, true));
        bytes.extend(wire(OpCode::Data(Data::Continue), b"cd", false, true));
        bytes.extend(wire(OpCode::Data(Data::Continue), b"e", true, true));
        assert_eq!(
            events(&bytes, 3),
            vec![Event::Pong(0), Event::Text(Bytes::from("abcde"))]
        );
    }

    #[test]
    fn protocol_violations_end_the_reading() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "unmasked",
                wire(OpCode::Data(Data::Text), b"a", true, false),
            ),
            (
                "continuation first",
                wire(OpCode::Data(Data::Continue), b"a", true, true),
            ),
            (
                "fragmented ping",
                wire(OpCode::Control(Control::Ping), b"", false, true),
            ),
            (
                "long ping",
                wire(OpCode::Control(Control::Ping), &[0; 126], true, true),
            ),
            ("reserved opcode", {
                let mut bytes = text("a");
                bytes[0] = 0x83;
                bytes
            }),
            ("reserved bit", {
                let mut bytes = text("a");
                bytes[0] |= 0x40;
                bytes
            }),
            (
                "one-byte close",
                wire(OpCode::Control(Control::Close), &[3], true, true),
            ),
            (
                "close code 1005",
                wire(OpCode::Control(Control::Close), &[3, 237], true, true),
            ),
            ("new message inside a fragmented one", {
                let mut bytes = wire(OpCode::Data(Data::Text), b"a", false, true);
                bytes.extend(text("b"));
                bytes
            }),
        ];
        for (case, mut bytes) in cases {
            bytes.extend(text("after"));
            let events = events(&bytes, bytes.len());
            assert_eq!(events.len(), 1, "{case}: nothing after the violation");
            assert!(violation(1002)(&events[0]), "{case}: {events:?}");
        }
    }

    #[test]
    fn limits_and_utf8() {
        let too_big = wire(OpCode::Data(Data::Binary), &[0; 101], true, true);
        assert!(violation(1009)(&events(&too_big, 4)[0]));
        let mut fragments = wire(OpCode::Data(Data::Text), &[b'a'; 60], false, true);
        fragments.extend(wire(OpCode::Data(Data::Continue), &[b'a'; 60], true, true));
        assert!(
            violation(1009)(&events(&fragments, 50)[0]),
            "fragments count together"
        );
        let invalid = wire(OpCode::Data(Data::Text), &[0xff, 0xfe], true, true);
        assert!(violation(1007)(&events(&invalid, 1)[0]));
        // A bad fragment fails the message at once; a character split between fragments does not.
        let mut bad_first = wire(OpCode::Data(Data::Text), &[b'a', 0xff], false, true);
        bad_first.extend(wire(OpCode::Data(Data::Continue), b"b", false, true));
        assert_eq!(events(&bad_first, bad_first.len()).len(), 1);
        assert!(violation(1007)(&events(&bad_first, bad_first.len())[0]));
        let e_acute = "é".as_bytes();
        let mut split = wire(OpCode::Data(Data::Text), &e_acute[..1], false, true);
        split.extend(wire(
            OpCode::Data(Data::Continue),
            &e_acute[1..],
            true,
            true,
        ));
        assert_eq!(events(&split, 3), vec![Event::Text(Bytes::from("é"))]);
        let bad_reason = wire(OpCode::Control(Control::Close), &[3, 232, 0xff], true, true);
        assert!(violation(1007)(&events(&bad_reason, 1)[0]));
        let close = wire(
            OpCode::Control(Control::Close),
            &[3, 232, b'o', b'k'],
            true,
            true,
        );
        assert_eq!(
            events(&close, 2),
            vec![Event::Close(Bytes::from_static(&[3, 232, b'o', b'k']))]
        );
    }

    /// Nothing stays allocated once the buffered bytes are parsed.
    #[test]
    fn the_buffer_is_given_back_when_empty() {
        let mut frames = Frames::default();
        frames.buffer.extend_from_slice(&text("hello"));
        assert!(frames.next(&LIMITS).is_some());
        assert_eq!(frames.buffer.capacity(), 0);
    }

    /// A compressed frame (RSV1 set) as a client sends it: raw deflate of `text` without the sync marker.
    fn compressed(opcode: OpCode, text: &[u8], is_final: bool) -> Vec<u8> {
        let mut bytes = wire(opcode, &deflated(text), is_final, true);
        bytes[0] |= 0x40;
        bytes
    }

    /// Raw deflate of `text`, sync-flushed, without the marker.
    fn deflated(text: &[u8]) -> Vec<u8> {
        let mut compress = flate2::Compress::new(flate2::Compression::best(), false);
        let mut out = Vec::with_capacity(text.len() + 64);
        compress
            .compress_vec(text, &mut out, flate2::FlushCompress::Sync)
            .unwrap();
        out.truncate(out.len() - 4);
        out
    }

    fn inflating() -> ReadLimits {
        ReadLimits {
            inflate: true,
            ..LIMITS
        }
    }

    fn events_with(bytes: &[u8], limits: &ReadLimits) -> Vec<Event> {
        let mut frames = Frames::default();
        frames.buffer.extend_from_slice(bytes);
        std::iter::from_fn(|| frames.next(limits)).collect()
    }

    /// With permessage-deflate, a compressed message is inflated (fragmented too: RSV1 on its first frame
    /// only) and checked as text afterwards; without it, or on a continuation or control frame, RSV1 is a
    /// protocol error; a message that inflates past the limit is 1009.
    #[test]
    fn compressed_messages_are_inflated_within_the_limit() {
        let hello = compressed(OpCode::Data(Data::Text), b"{\"hello\":\"world\"}", true);
        assert_eq!(
            events_with(&hello, &inflating()),
            vec![Event::Text(Bytes::from_static(b"{\"hello\":\"world\"}"))]
        );
        assert!(violation(1002)(&events_with(&hello, &LIMITS)[0]));
        let body = deflated(&[7; 60]);
        let (start, end) = body.split_at(body.len() / 2);
        let mut fragmented = wire(OpCode::Data(Data::Binary), start, false, true);
        fragmented[0] |= 0x40;
        fragmented.extend(wire(OpCode::Data(Data::Continue), end, true, true));
        assert_eq!(
            events_with(&fragmented, &inflating()),
            vec![Event::Binary(Bytes::from(vec![7; 60]))]
        );
        let mut bad_continuation = wire(OpCode::Data(Data::Text), b"{", false, true);
        let mut rest = wire(OpCode::Data(Data::Continue), b"}", true, true);
        rest[0] |= 0x40;
        bad_continuation.extend(rest);
        assert!(violation(1002)(
            &events_with(&bad_continuation, &inflating())[0]
        ));
        let mut ping = wire(OpCode::Control(Control::Ping), b"p", true, true);
        ping[0] |= 0x40;
        assert!(violation(1002)(&events_with(&ping, &inflating())[0]));
        let bomb = compressed(OpCode::Data(Data::Text), &[b' '; 10_000], true);
        assert!(bomb.len() < 100, "small on the wire");
        assert!(violation(1009)(&events_with(&bomb, &inflating())[0]));
        let invalid_utf8 = compressed(OpCode::Data(Data::Text), &[0xff, 0xfe], true);
        assert!(violation(1007)(
            &events_with(&invalid_utf8, &inflating())[0]
        ));
    }
}
