//! The writing half of a WebSocket connection: server frames out (unmasked, RFC 6455 §5.2).
//!
//! While a client keeps up, its frames never wait: the fan-out hands a frame to [`Socket`]'s
//! [`Transmit`] and it is written at once — a header on the stack and the shared frame, one vectored
//! write, no copy, no task woken. Only what the socket did not take is queued, and [`write_loop`],
//! running in the connection's own task, writes the queue when the socket has room again: frames queued
//! together are joined into one message where the protocol allows it (newline-separated, up to
//! `websocket.write_buffer_size`) and written with as few vectored writes as the socket allows. The same
//! loop ends the connection with the close frame the session decided.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use crate::disconnect::Disconnect;
use crate::outbound::{Batch, Outbound, Outgoing, Transmit, Transmitted};
use crate::protocol::{Frame, Wire};
use crate::transport::socket::Socket;

use super::deflate::{self, Deflate};

/// The longest header of a server frame (no mask): 2 bytes and a 64-bit length.
const MAX_HEADER: usize = 10;

/// A frame header for `length` payload bytes, on the stack; `compressed` sets RSV1 (permessage-deflate).
fn header(opcode: OpCode, compressed: bool, length: usize) -> ([u8; MAX_HEADER], usize) {
    let header = FrameHeader {
        opcode,
        rsv1: compressed,
        ..FrameHeader::default()
    };
    let mut bytes = [0u8; MAX_HEADER];
    let mut out = io::Cursor::new(&mut bytes[..]);
    header
        .format(length as u64, &mut out)
        .expect("a server frame header fits in 10 bytes");
    let len = out.position() as usize;
    (bytes, len)
}

/// A whole frame with `payload`, copied (control frames and other small, rare frames); `compressed` as for
/// [`header`].
pub(super) fn message(opcode: OpCode, compressed: bool, payload: &[u8]) -> Bytes {
    let (head, len) = header(opcode, compressed, payload.len());
    let mut frame = BytesMut::with_capacity(len + payload.len());
    frame.extend_from_slice(&head[..len]);
    frame.extend_from_slice(payload);
    frame.freeze()
}

/// A control frame (ping, pong, close) with `payload`.
pub(super) fn control(control: Control, payload: &[u8]) -> Bytes {
    message(OpCode::Control(control), false, payload)
}

/// The close frame for `disconnect`: its code, then its reason cut to what a control frame holds.
pub(super) fn close_frame(disconnect: &Disconnect) -> Bytes {
    let mut payload = Vec::with_capacity(125);
    payload.extend_from_slice(&disconnect.code.to_be_bytes());
    let mut reason = disconnect.reason.as_ref();
    while reason.len() > 123 {
        let mut cut = 123;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason = &reason[..cut];
    }
    payload.extend_from_slice(reason.as_bytes());
    control(Control::Close, &payload)
}

/// The opcode a frame goes out with.
fn opcode(frame: &Frame) -> OpCode {
    OpCode::Data(if frame.is_binary() {
        Data::Binary
    } else {
        Data::Text
    })
}

/// The sending side of a connection: its socket, and how its messages are compressed when the client
/// negotiated permessage-deflate.
#[derive(Debug)]
pub(in crate::transport) struct Egress {
    pub(in crate::transport) socket: Arc<Socket>,
    /// Boxed: every connection has an egress, few negotiate compression.
    deflate: Option<Box<Deflate>>,
}

impl Egress {
    /// Sends through `socket`, compressing as `deflate` says.
    pub(in crate::transport) fn new(socket: Arc<Socket>, deflate: Option<Deflate>) -> Self {
        Self {
            socket,
            deflate: deflate.map(Box::new),
        }
    }

    /// Whether client messages may come compressed.
    pub(in crate::transport) fn inflates(&self) -> bool {
        self.deflate.is_some()
    }

    /// A whole text or binary message of `payload` for this connection, compressed as negotiated.
    pub(in crate::transport) fn data_message(&self, binary: bool, payload: Bytes) -> Bytes {
        let frame = if binary {
            Frame::binary(payload.into())
        } else {
            Frame::new(payload.into())
        };
        let opcode = opcode(&frame);
        match self.compressing(&frame) {
            Some(deflate) => message(
                opcode,
                true,
                &deflate::without_marker(&deflate.compress(&frame)),
            ),
            None => message(opcode, false, frame.bytes()),
        }
    }

    /// The compression that applies to `frame`, if any.
    fn compressing(&self, frame: &Frame) -> Option<&Deflate> {
        self.deflate
            .as_deref()
            .filter(|deflate| deflate.applies(frame))
    }
}

impl Transmit for Egress {
    fn try_transmit(&self, frame: &Frame) -> Transmitted {
        let compressed = match self.compressing(frame) {
            // Compressing changes the context: the message is compressed once, by the writer, in order.
            Some(deflate) if deflate.keeps_context() => return Transmitted::Nothing,
            Some(deflate) => Some(deflate::without_marker(&deflate.compress(frame))),
            None => None,
        };
        match compressed {
            Some(payload) => transmit(&self.socket, opcode(frame), true, &payload),
            None => transmit(&self.socket, opcode(frame), false, frame.bytes()),
        }
    }
}

/// A connection without compression takes frames straight into its socket: the fan-out then goes from
/// the queue to the socket without a stop at the [`Egress`] (a cache line per subscriber).
impl Transmit for Socket {
    fn try_transmit(&self, frame: &Frame) -> Transmitted {
        transmit(self, opcode(frame), false, frame.bytes())
    }
}

/// Writes one message of `payload` into `socket` now, as far as it takes it.
fn transmit(socket: &Socket, opcode: OpCode, compressed: bool, payload: &[u8]) -> Transmitted {
    let (head, head_len) = header(opcode, compressed, payload.len());
    let total = head_len + payload.len();
    let parts = [IoSlice::new(&head[..head_len]), IoSlice::new(payload)];
    match socket.try_write_now(&parts) {
        // A TLS socket may hold records back; the writer must then flush them.
        Ok(written) if written == total && !socket.holds_back() => Transmitted::Whole,
        Ok(written) if written < head_len => {
            let mut rest = BytesMut::with_capacity(total - written);
            rest.extend_from_slice(&head[written..head_len]);
            rest.extend_from_slice(payload);
            Transmitted::Rest(rest.freeze())
        }
        Ok(written) => Transmitted::Rest(Bytes::copy_from_slice(&payload[written - head_len..])),
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => Transmitted::Nothing,
        Err(_) => Transmitted::Failed,
    }
}

/// Writes what the connection queues until the close it decided (or a write failure). The protocol's
/// [`Wire`] says whether frames may be joined into one message and which close code its clients see.
/// True when it ended with a close frame, which the client is to answer.
pub(super) async fn write_loop(
    egress: &Egress,
    outbound: &Outbound,
    wire: &dyn Wire,
    write_timeout: Duration,
    join_up_to: usize,
) -> bool {
    let separator = wire.frame_separator();
    let join_up_to = if separator.is_some() { join_up_to } else { 0 };
    let separator = separator.unwrap_or_default();
    let socket = &*egress.socket;
    let mut batch = Batch::default();
    loop {
        outbound.next_batch_into(&mut batch).await;
        if !batch.items.is_empty() || socket.holds_back() {
            let deflate = egress.deflate.as_deref();
            let mut chunks = framed(&mut batch.items, separator, join_up_to, deflate);
            // Boxed, like everything only a busy connection needs: the loop lives as long as the
            // connection, and its idle state is what every connection pays for.
            if !Box::pin(write_all(socket, &mut chunks, write_timeout)).await {
                outbound.close(Disconnect::WRITE_ERROR);
                return false;
            }
        }
        if let Some(close) = batch.close.take() {
            return Box::pin(end_with(socket, wire, close, write_timeout)).await;
        }
    }
}

/// Ends the connection with the close frame for `close` (none for a client that went away): true when
/// one was written.
async fn end_with(socket: &Socket, wire: &dyn Wire, close: Disconnect, timeout: Duration) -> bool {
    let mut sent = false;
    if close != Disconnect::CONNECTION_CLOSED {
        let mut frame = VecDeque::from([close_frame(&wire.close(close))]);
        sent = write_all(socket, &mut frame, timeout).await;
    }
    socket.start_close();
    write_all(socket, &mut VecDeque::new(), timeout).await;
    sent
}

/// A batch as the byte chunks to write: each run of frames of one kind (text or binary, compressed or
/// not) joined with `separator` into messages of up to `join_up_to` bytes (a frame over it goes alone),
/// every message with its header. Compressed frames are joined compressed (see [`deflate`]). The frames
/// are not copied; the headers share one small buffer.
fn framed(
    items: &mut VecDeque<Outgoing>,
    separator: &'static [u8],
    join_up_to: usize,
    deflate: Option<&Deflate>,
) -> VecDeque<Bytes> {
    let mut chunks = VecDeque::with_capacity(items.len() * 2);
    let mut headers = BytesMut::with_capacity(items.len() * 4);
    let mut push_header =
        |chunks: &mut VecDeque<Bytes>, opcode: OpCode, compressed: bool, length: usize| {
            let (head, len) = header(opcode, compressed, length);
            headers.extend_from_slice(&head[..len]);
            chunks.push_back(headers.split().freeze());
        };
    let compressing = |frame: &Frame| deflate.filter(|deflate| deflate.applies(frame));
    let mut start = 0;
    while let Some(item) = items.get(start) {
        let first = match item {
            Outgoing::Frame(frame) => frame,
            Outgoing::TransportPing => {
                push_header(&mut chunks, OpCode::Control(Control::Ping), false, 0);
                start += 1;
                continue;
            }
            Outgoing::Raw(bytes) => {
                chunks.push_back(bytes.clone());
                start += 1;
                continue;
            }
        };
        let compressed = compressing(first);
        let (mut end, mut len) = (start + 1, first.len());
        while let Some(Outgoing::Frame(next)) = items.get(end) {
            let joined = len + separator.len() + next.len();
            let alike = next.is_binary() == first.is_binary()
                && compressing(next).is_some() == compressed.is_some();
            if joined > join_up_to || !alike {
                break;
            }
            len = joined;
            end += 1;
        }
        let frames = items.range(start..end).filter_map(|item| match item {
            Outgoing::Frame(frame) => Some(frame),
            _ => None,
        });
        match compressed {
            None => {
                push_header(&mut chunks, opcode(first), false, len);
                for (i, frame) in frames.enumerate() {
                    if i > 0 && !separator.is_empty() {
                        chunks.push_back(Bytes::from_static(separator));
                    }
                    chunks.push_back(frame.clone().into_bytes());
                }
            }
            Some(deflate) => {
                // Compressed in order (a connection that keeps its context needs that), then sized.
                let mut pieces = Vec::with_capacity((end - start) * 2);
                for (i, frame) in frames.enumerate() {
                    if i > 0 && !separator.is_empty() {
                        pieces.push(deflate.compress_bytes(separator));
                    }
                    pieces.push(deflate.compress(frame));
                }
                if let Some(last) = pieces.last_mut() {
                    *last = deflate::without_marker(last);
                }
                let len = pieces.iter().map(Bytes::len).sum();
                push_header(&mut chunks, opcode(first), true, len);
                chunks.extend(pieces);
            }
        }
        start = end;
    }
    items.clear();
    chunks
}

/// How many chunks one vectored write takes at most (well under the kernel's `IOV_MAX`).
const WRITE_SLICES: usize = 64;

/// Writes every chunk, and whatever the socket holds back, waiting for room as needed: true when all is
/// out. Only a write that has to wait is timed, so the usual write costs no timer; a client that takes
/// nothing for `timeout` fails the write.
async fn write_all(socket: &Socket, chunks: &mut VecDeque<Bytes>, timeout: Duration) -> bool {
    let mut deadline = None;
    loop {
        let result = if chunks.is_empty() {
            match socket.try_flush() {
                Ok(true) => return true,
                Ok(false) => Err(io::ErrorKind::WouldBlock.into()),
                Err(error) => Err(error),
            }
        } else {
            let slices: Vec<IoSlice<'_>> = chunks
                .iter()
                .take(WRITE_SLICES)
                .map(|chunk| IoSlice::new(chunk))
                .collect();
            socket.try_write_vectored(&slices)
        };
        match result {
            Ok(mut written) => {
                while written > 0 {
                    let Some(chunk) = chunks.front_mut() else {
                        break;
                    };
                    let step = written.min(chunk.len());
                    chunk.advance(step);
                    written -= step;
                    if chunk.is_empty() {
                        chunks.pop_front();
                    }
                }
                while chunks.front().is_some_and(Bytes::is_empty) {
                    chunks.pop_front();
                }
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                let deadline = *deadline.get_or_insert_with(|| Instant::now() + timeout);
                let ready = std::future::poll_fn(|cx| socket.poll_write_ready(cx));
                // Boxed: the timer is only needed while waiting, and the connection's task is kept small.
                match Box::pin(tokio::time::timeout_at(deadline, ready)).await {
                    Ok(Ok(())) => {}
                    _ => return false,
                }
            }
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Protocol;
    use std::io::Cursor;
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A server socket and the client end of the same loopback connection.
    async fn pair() -> (Socket, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Socket::plain(server), client)
    }

    /// Every frame the client gets until the server's end: opcode byte and payload.
    async fn received(mut client: TcpStream) -> Vec<(u8, Vec<u8>)> {
        let mut bytes = Vec::new();
        client.read_to_end(&mut bytes).await.unwrap();
        let mut cursor = Cursor::new(&bytes[..]);
        let mut frames = Vec::new();
        while let Some((header, length)) = FrameHeader::parse(&mut cursor).unwrap() {
            let start = cursor.position() as usize;
            let end = start + length as usize;
            assert!(header.mask.is_none(), "server frames are not masked");
            frames.push((u8::from(header.opcode), bytes[start..end].to_vec()));
            cursor.set_position(end as u64);
        }
        assert_eq!(cursor.position() as usize, bytes.len(), "no partial frame");
        frames
    }

    fn text(text: &str) -> (u8, Vec<u8>) {
        (1, text.as_bytes().to_vec())
    }

    fn frame(text: &str) -> Frame {
        Frame::new(text.as_bytes().to_vec())
    }

    async fn write(socket: Socket, outbound: &Outbound, join_up_to: usize) -> bool {
        let wire = Protocol::Centrifuge.wire();
        let egress = Egress::new(Arc::new(socket), None);
        write_loop(&egress, outbound, wire, Duration::from_secs(5), join_up_to).await
    }

    /// Everything queued while the writer was busy goes out as one message, in order, then the close.
    #[tokio::test]
    async fn queued_frames_are_joined_into_one_message() {
        let (socket, client) = pair().await;
        let outbound = Outbound::new(1 << 20);
        for text in ["{\"a\":1}", "{\"b\":2}", "{}"] {
            outbound.push(frame(text));
        }
        outbound.close(Disconnect::SHUTDOWN);
        assert!(
            write(socket, &outbound, 1024).await,
            "ended with a close frame"
        );
        let mut close = 3001u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"shutdown");
        assert_eq!(
            received(client).await,
            vec![text("{\"a\":1}\n{\"b\":2}\n{}"), (8, close)]
        );
    }

    /// With permessage-deflate, frames of `min_size` and more go compressed (RSV1), joined compressed;
    /// smaller ones go as they are. Inflating each message as a client does gives back what was queued.
    #[tokio::test]
    async fn compressed_frames_are_joined_and_inflate_to_what_was_queued() {
        let (socket, mut client) = pair().await;
        let config = crate::config::CompressionConfig {
            enabled: true,
            min_size: 32,
            ..Default::default()
        };
        let (deflate, _) = deflate::negotiate("permessage-deflate", &config).unwrap();
        let egress = Egress::new(Arc::new(socket), Some(deflate));
        let outbound = Outbound::new(1 << 20);
        let long = |n: u8| format!("{{\"n\":{n},\"pad\":\"{}\"}}", "y".repeat(100));
        for text in [long(1), long(2), "{}".into(), long(3)] {
            outbound.push(frame(&text));
        }
        outbound.close(Disconnect::SHUTDOWN);
        let wire = Protocol::Centrifuge.wire();
        write_loop(&egress, &outbound, wire, Duration::from_secs(5), 16 << 10).await;
        drop(egress);
        let mut bytes = Vec::new();
        client.read_to_end(&mut bytes).await.unwrap();
        let mut cursor = Cursor::new(&bytes[..]);
        let mut messages = Vec::new();
        while let Some((header, length)) = FrameHeader::parse(&mut cursor).unwrap() {
            let start = cursor.position() as usize;
            let mut payload = bytes[start..start + length as usize].to_vec();
            if header.rsv1 {
                payload.extend([0, 0, 0xff, 0xff]);
                let mut inflater = flate2::Decompress::new(false);
                let mut out = Vec::with_capacity(4096);
                inflater
                    .decompress_vec(&payload, &mut out, flate2::FlushDecompress::Sync)
                    .unwrap();
                payload = out;
            }
            messages.push((header.rsv1, String::from_utf8_lossy(&payload).into_owned()));
            cursor.set_position((start + length as usize) as u64);
        }
        let texts: Vec<_> = messages.iter().take(3).cloned().collect();
        assert_eq!(
            texts,
            vec![
                (true, format!("{}\n{}", long(1), long(2))),
                (false, "{}".into()),
                (true, long(3)),
            ]
        );
        assert_eq!(messages.len(), 4, "then the close frame");
    }

    /// A client that went away gets no close frame.
    #[tokio::test]
    async fn no_close_frame_for_a_client_that_left() {
        let (socket, client) = pair().await;
        let outbound = Outbound::new(1 << 20);
        outbound.close(Disconnect::CONNECTION_CLOSED);
        assert!(!write(socket, &outbound, 1024).await);
        assert_eq!(received(client).await, vec![]);
    }

    /// Joined messages stay within the limit, a frame over it goes alone, and a transport ping and raw
    /// bytes keep their place between the frames.
    #[tokio::test]
    async fn joined_messages_respect_the_limit_and_others_keep_their_place() {
        let (socket, client) = pair().await;
        let outbound = Outbound::new(1 << 20);
        for text in ["aaaa", "bbbb", "cccc", "a frame longer than ten bytes"] {
            outbound.push(frame(text));
        }
        outbound.push_transport_ping();
        outbound.push(frame("dd"));
        outbound.push_raw(control(Control::Pong, b"p"));
        outbound.push(frame("ee"));
        outbound.close(Disconnect::CONNECTION_CLOSED);
        write(socket, &outbound, 10).await;
        assert_eq!(
            received(client).await,
            vec![
                text("aaaa\nbbbb"),
                text("cccc"),
                text("a frame longer than ten bytes"),
                (9, vec![]),
                text("dd"),
                (10, b"p".to_vec()),
                text("ee"),
            ]
        );
    }

    /// While the client reads, pushes go straight to the socket with no writer running (the socket itself
    /// takes them, as on a connection without compression, past the reactor's readiness); once its buffers
    /// are full the rest is queued (a frame cut in the middle included) and the writer, which waits
    /// through the reactor, sends it, in order.
    #[tokio::test]
    async fn direct_writes_then_the_queue_in_order() {
        let (socket, client) = pair().await;
        let socket = Arc::new(socket);
        let egress = Arc::new(Egress::new(socket.clone(), None));
        let outbound = Outbound::transmitting(64 << 20, socket);
        let payload = "x".repeat(1000);
        let count = 20_000; // ~20 MB: far more than the loopback socket buffers take
        for i in 0..count {
            assert!(outbound.push(frame(&format!("{i} {payload}"))));
        }
        assert!(
            outbound.queued_bytes() > 0,
            "the socket filled up and frames were queued"
        );
        outbound.close(Disconnect::CONNECTION_CLOSED);
        let reading = tokio::spawn(received(client));
        let wire = Protocol::Pusher.wire(); // no joining: one message per frame
        write_loop(&egress, &outbound, wire, Duration::from_secs(5), 0).await;
        drop(outbound);
        drop(egress);
        let frames = reading.await.unwrap();
        assert_eq!(frames.len(), count);
        for (i, (opcode, text)) in frames.into_iter().enumerate() {
            assert_eq!(opcode, 1);
            assert_eq!(text, format!("{i} {payload}").into_bytes(), "frame {i}");
        }
    }

    #[test]
    fn close_reasons_are_cut_to_fit_a_control_frame() {
        let long = Disconnect {
            code: 4000,
            reason: "é".repeat(100).into(),
        };
        let frame = close_frame(&long);
        assert!(frame.len() <= 2 + 125);
        let reason = &frame[4..];
        assert!(
            std::str::from_utf8(reason).is_ok(),
            "cut at a character boundary"
        );
    }
}
