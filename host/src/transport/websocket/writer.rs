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
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use crate::disconnect::Disconnect;
use crate::outbound::{Batch, Outbound, Outgoing, Transmit, Transmitted};
use crate::protocol::{Frame, Wire};
use crate::transport::socket::Socket;

/// The longest header of a server frame (no mask): 2 bytes and a 64-bit length.
const MAX_HEADER: usize = 10;

/// A frame header for `length` payload bytes, on the stack.
fn header(opcode: OpCode, length: usize) -> ([u8; MAX_HEADER], usize) {
    let header = FrameHeader {
        opcode,
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

/// A whole frame with `payload`, copied (control frames and other small, rare frames).
pub(super) fn message(opcode: OpCode, payload: &[u8]) -> Bytes {
    let (head, len) = header(opcode, payload.len());
    let mut frame = BytesMut::with_capacity(len + payload.len());
    frame.extend_from_slice(&head[..len]);
    frame.extend_from_slice(payload);
    frame.freeze()
}

/// A whole text or binary message, copied.
pub(in crate::transport) fn data_frame(binary: bool, payload: &[u8]) -> Bytes {
    let opcode = if binary { Data::Binary } else { Data::Text };
    message(OpCode::Data(opcode), payload)
}

/// A control frame (ping, pong, close) with `payload`.
pub(super) fn control(control: Control, payload: &[u8]) -> Bytes {
    message(OpCode::Control(control), payload)
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

impl Transmit for Socket {
    fn try_transmit(&self, frame: &Frame) -> Transmitted {
        let (head, head_len) = header(opcode(frame), frame.len());
        let total = head_len + frame.len();
        let parts = [IoSlice::new(&head[..head_len]), IoSlice::new(frame.bytes())];
        match self.try_write_vectored(&parts) {
            // A TLS socket may hold records back; the writer must then flush them.
            Ok(written) if written == total && !self.holds_back() => Transmitted::Whole,
            Ok(written) if written < head_len => {
                let mut rest = BytesMut::with_capacity(total - written);
                rest.extend_from_slice(&head[written..head_len]);
                rest.extend_from_slice(frame.bytes());
                Transmitted::Rest(rest.freeze())
            }
            Ok(written) => {
                Transmitted::Rest(Bytes::copy_from_slice(&frame.bytes()[written - head_len..]))
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Transmitted::Nothing,
            Err(_) => Transmitted::Failed,
        }
    }
}

/// Writes what the connection queues until the close it decided (or a write failure). The protocol's
/// [`Wire`] says whether frames may be joined into one message and which close code its clients see.
/// True when it ended with a close frame, which the client is to answer.
pub(super) async fn write_loop(
    socket: &Socket,
    outbound: &Outbound,
    wire: &dyn Wire,
    write_timeout: Duration,
    join_up_to: usize,
) -> bool {
    let separator = wire.frame_separator();
    let join_up_to = if separator.is_some() { join_up_to } else { 0 };
    let separator = Bytes::from_static(separator.unwrap_or_default());
    let mut batch = Batch::default();
    loop {
        outbound.next_batch_into(&mut batch).await;
        if !batch.items.is_empty() || socket.holds_back() {
            let mut chunks = framed(&mut batch.items, &separator, join_up_to);
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

/// A batch as the byte chunks to write: each run of frames of one kind (text or binary) joined with
/// `separator` into messages of up to `join_up_to` bytes (a frame over it goes alone), every message with
/// its header. The frames are not copied; the headers share one small buffer.
fn framed(items: &mut VecDeque<Outgoing>, separator: &Bytes, join_up_to: usize) -> VecDeque<Bytes> {
    let mut chunks = VecDeque::with_capacity(items.len() * 2);
    let mut headers = BytesMut::with_capacity(items.len() * 4);
    let mut push_header = |chunks: &mut VecDeque<Bytes>, opcode: OpCode, length: usize| {
        let (head, len) = header(opcode, length);
        headers.extend_from_slice(&head[..len]);
        chunks.push_back(headers.split().freeze());
    };
    let mut start = 0;
    while let Some(item) = items.get(start) {
        let first = match item {
            Outgoing::Frame(frame) => frame,
            Outgoing::TransportPing => {
                push_header(&mut chunks, OpCode::Control(Control::Ping), 0);
                start += 1;
                continue;
            }
            Outgoing::Raw(bytes) => {
                chunks.push_back(bytes.clone());
                start += 1;
                continue;
            }
        };
        let (mut end, mut len) = (start + 1, first.len());
        while let Some(Outgoing::Frame(next)) = items.get(end) {
            let joined = len + separator.len() + next.len();
            if joined > join_up_to || next.is_binary() != first.is_binary() {
                break;
            }
            len = joined;
            end += 1;
        }
        push_header(&mut chunks, opcode(first), len);
        for (i, item) in items.range(start..end).enumerate() {
            if let Outgoing::Frame(frame) = item {
                if i > 0 && !separator.is_empty() {
                    chunks.push_back(separator.clone());
                }
                chunks.push_back(frame.clone().into_bytes());
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
        write_loop(&socket, outbound, wire, Duration::from_secs(5), join_up_to).await
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

    /// While the client reads, pushes go straight to the socket with no writer running; once its buffers
    /// are full the rest is queued (a frame cut in the middle included) and the writer sends it, in order.
    #[tokio::test]
    async fn direct_writes_then_the_queue_in_order() {
        let (socket, client) = pair().await;
        let socket = Arc::new(socket);
        let outbound = Outbound::transmitting(64 << 20, socket.clone());
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
        write_loop(&socket, &outbound, wire, Duration::from_secs(5), 0).await;
        drop(outbound);
        drop(socket);
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
