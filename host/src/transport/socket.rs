//! An upgraded client connection as a byte stream shared without locks: the connection's task reads from
//! it while the fan-out writes into it, each only when the socket is ready, never waiting.
//!
//! A plain connection is tokio's `TcpStream`, whose non-blocking `try_read`/`try_write` take `&self`. A TLS
//! connection keeps rustls's state behind a mutex next to the TCP socket and moves records through the same
//! non-blocking calls, so both kinds look the same to the WebSocket layer above. Nothing here allocates
//! while a connection is idle: reads go into the caller's buffer.

use std::io::{self, IoSlice, Read, Write};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use rustls::ServerConnection;
use tokio::net::TcpStream;

use super::tls::Connection;
use crate::metrics::ConnectionMetrics;

/// A client connection after the HTTP upgrade, counting the bytes it moves once its kind of connection is
/// known ([`Socket::counted`]).
#[derive(Debug)]
pub(super) struct Socket {
    stream: Stream,
    metrics: Option<Arc<ConnectionMetrics>>,
}

/// The byte stream under a [`Socket`].
#[derive(Debug)]
enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP: rustls's state is only touched under the lock, for as long as one call takes.
    Tls {
        /// The TCP socket the records travel on.
        tcp: TcpStream,
        /// The session state; boxed because rustls keeps its buffers inline.
        state: Mutex<Box<ServerConnection>>,
    },
}

/// Reads TLS records from the TCP socket without waiting (`WouldBlock` when nothing is there).
struct TryRead<'a>(&'a TcpStream);

impl Read for TryRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

/// Writes TLS records to the TCP socket without waiting.
struct TryWrite<'a>(&'a TcpStream);

impl Write for TryWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The most plaintext taken from rustls in one read, on the stack.
const TLS_READ_CHUNK: usize = 8 * 1024;

impl Socket {
    /// The socket under an upgraded connection, and the bytes already read past the upgrade request (by
    /// hyper, or past a PROXY header) that come before anything read from the socket.
    pub(super) fn from_upgraded(connection: Connection, read_ahead: Bytes) -> (Self, Bytes) {
        match connection {
            tokio_util::either::Either::Left(plain) => {
                let (early, tcp) = plain.into_parts();
                (Self::plain(tcp), join(early, read_ahead))
            }
            tokio_util::either::Either::Right(tls) => {
                let (plain, state) = (*tls).into_inner();
                // Bytes past a PROXY header were TLS records, consumed by the handshake.
                let (_early, tcp) = plain.into_parts();
                let stream = Stream::Tls {
                    tcp,
                    state: Mutex::new(Box::new(state)),
                };
                let socket = Self {
                    stream,
                    metrics: None,
                };
                (socket, read_ahead)
            }
        }
    }

    /// A plain TCP connection.
    pub(super) fn plain(tcp: TcpStream) -> Self {
        Self {
            stream: Stream::Plain(tcp),
            metrics: None,
        }
    }

    /// The same socket, counting the bytes it moves into `metrics`.
    pub(super) fn counted(self, metrics: Arc<ConnectionMetrics>) -> Self {
        Self {
            metrics: Some(metrics),
            ..self
        }
    }

    /// Whether it is TLS (whose state must not be touched from every publishing task).
    pub(super) fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls { .. })
    }

    fn tcp(&self) -> &TcpStream {
        match &self.stream {
            Stream::Plain(tcp) | Stream::Tls { tcp, .. } => tcp,
        }
    }

    /// Ready when the socket may have something to read: try [`Socket::try_read_buf`] first, and wait for
    /// this only after it found nothing.
    pub(super) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp().poll_read_ready(cx)
    }

    /// Ready when the socket may take more: try first, wait for this only after a write found it full.
    pub(super) fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp().poll_write_ready(cx)
    }

    /// Appends what can be read now to `buf`: `Ok(0)` at the end of the stream, `WouldBlock` when nothing
    /// is there yet.
    pub(super) fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        let read = self.read_stream(buf);
        if let (Ok(n), Some(metrics)) = (&read, &self.metrics) {
            metrics.bytes_received.inc_by(*n as u64);
        }
        read
    }

    fn read_stream(&self, buf: &mut BytesMut) -> io::Result<usize> {
        match &self.stream {
            Stream::Plain(tcp) => tcp.try_read_buf(buf),
            Stream::Tls { tcp, state } => {
                let mut state = crate::sync::lock(state);
                let mut ended = false;
                loop {
                    let mut chunk = [0u8; TLS_READ_CHUNK];
                    match state.reader().read(&mut chunk) {
                        Ok(n) => {
                            buf.put_slice(&chunk[..n]);
                            return Ok(n);
                        }
                        // The peer closed the TCP connection without a close_notify: still its end.
                        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock && ended => {
                            return Ok(0);
                        }
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                        Err(error) => return Err(error),
                    }
                    if state.read_tls(&mut TryRead(tcp))? == 0 {
                        // The TCP stream ended: the next read above reports how (clean or not).
                        ended = true;
                        state.process_new_packets().map_err(io::Error::other)?;
                        continue;
                    }
                    if let Err(error) = state.process_new_packets() {
                        // Tell the peer why before giving up (rustls queued an alert).
                        let _ = state.write_tls(&mut TryWrite(tcp));
                        return Err(io::Error::new(io::ErrorKind::InvalidData, error));
                    }
                    // Records the peer's messages call for (a key update) go out with the next write.
                }
            }
        }
    }

    /// Writes as much of `bufs` as the socket takes now; `WouldBlock` when it takes nothing. A TLS
    /// connection may keep some of what it took as records not yet sent ([`Socket::holds_back`]).
    pub(super) fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let written = self.write_stream(bufs);
        if let (Ok(n), Some(metrics)) = (&written, &self.metrics) {
            metrics.bytes_sent.inc_by(*n as u64);
        }
        written
    }

    /// Like [`Socket::try_write_vectored`], for the fan-out's direct path: on plain TCP one `sendmsg`
    /// straight on the socket, skipping the reactor's readiness check (a cache line of tokio's state per
    /// delivery, cold when thousands of connections take one publication each). That is sound because a
    /// refusal (`WouldBlock`) only sends the frame to the queue, whose writer then writes through the
    /// reactor and so learns the socket is full before it waits for room.
    pub(super) fn try_write_now(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let Stream::Plain(tcp) = &self.stream else {
            return self.try_write_vectored(bufs);
        };
        // No SIGPIPE for a client that went away: the error says so.
        let written =
            socket2::SockRef::from(tcp).send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL);
        if let (Ok(n), Some(metrics)) = (&written, &self.metrics) {
            metrics.bytes_sent.inc_by(*n as u64);
        }
        written
    }

    fn write_stream(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match &self.stream {
            Stream::Plain(tcp) => tcp.try_write_vectored(bufs),
            Stream::Tls { tcp, state } => {
                let mut state = crate::sync::lock(state);
                if !flush_records(&mut state, tcp)? {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                let taken = state.writer().write_vectored(bufs)?;
                if taken == 0 && bufs.iter().any(|buf| !buf.is_empty()) {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                flush_records(&mut state, tcp)?;
                Ok(taken)
            }
        }
    }

    /// Whether bytes already taken are waiting to go out (TLS records the socket did not take yet).
    pub(super) fn holds_back(&self) -> bool {
        match &self.stream {
            Stream::Plain(_) => false,
            Stream::Tls { state, .. } => crate::sync::lock(state).wants_write(),
        }
    }

    /// Sends what is held back, as far as the socket takes it now: true when nothing is left.
    pub(super) fn try_flush(&self) -> io::Result<bool> {
        match &self.stream {
            Stream::Plain(_) => Ok(true),
            Stream::Tls { tcp, state } => flush_records(&mut crate::sync::lock(state), tcp),
        }
    }

    /// Starts closing the TLS session (a close_notify record, sent by the next flush); nothing for TCP,
    /// which closes when the socket is dropped.
    pub(super) fn start_close(&self) {
        if let Stream::Tls { state, .. } = &self.stream {
            crate::sync::lock(state).send_close_notify();
        }
    }
}

/// Writes queued TLS records until none is left (true) or the socket is full (false).
fn flush_records(state: &mut ServerConnection, tcp: &TcpStream) -> io::Result<bool> {
    while state.wants_write() {
        match state.write_tls(&mut TryWrite(tcp)) {
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(error) => return Err(error),
        }
    }
    Ok(true)
}

fn join(first: Bytes, then: Bytes) -> Bytes {
    match (first.is_empty(), then.is_empty()) {
        (true, _) => then,
        (_, true) => first,
        _ => {
            let mut joined = BytesMut::with_capacity(first.len() + then.len());
            joined.put_slice(&first);
            joined.put_slice(&then);
            joined.freeze()
        }
    }
}
