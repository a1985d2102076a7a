//! The bounded outbound queue between everything that sends to a client and the connection's writer.
//!
//! Producers (the session's own replies, the hub's fan-out, heartbeats) push shared [`Frame`]s and never
//! wait: a queue over its byte budget means the client is not reading, so the connection is closed as slow
//! (3008) instead of delaying anyone else. The writer drains everything queued at once so it can coalesce
//! frames into few writes. Closing is a state of the queue, so a close decided anywhere reaches the writer
//! after the frames queued before it.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::disconnect::Disconnect;
use crate::protocol::Frame;

/// What the writer must put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// An encoded protocol message.
    Frame(Frame),
    /// A transport-level ping (WebSocket ping frame).
    TransportPing,
}

/// The per-connection queue, shared by producers and the writer.
#[derive(Debug)]
pub struct Outbound {
    state: Mutex<State>,
    wake_writer: Notify,
    closed: CancellationToken,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Outgoing>,
    bytes: usize,
    close: Option<Disconnect>,
}

/// A batch taken by the writer.
#[derive(Debug, Default)]
pub struct Batch {
    /// What to write, in order.
    pub items: Vec<Outgoing>,
    /// Set when the connection must be closed after writing `items`.
    pub close: Option<Disconnect>,
}

impl Outbound {
    /// A queue that holds at most `max_bytes` of frames.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            wake_writer: Notify::new(),
            closed: CancellationToken::new(),
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a frame. Returns false if the connection is closing (the frame is dropped). Overflowing the
    /// byte budget drops everything queued and closes the connection as slow.
    pub fn push(&self, frame: Frame) -> bool {
        let mut state = self.lock();
        if state.close.is_some() {
            return false;
        }
        if state.bytes + frame.len() > self.max_bytes {
            state.queue.clear();
            state.bytes = 0;
            state.close = Some(Disconnect::SLOW);
            drop(state);
            self.closed.cancel();
            self.wake_writer.notify_one();
            return false;
        }
        state.bytes += frame.len();
        state.queue.push_back(Outgoing::Frame(frame));
        drop(state);
        self.wake_writer.notify_one();
        true
    }

    /// Queues a transport-level ping.
    pub fn push_transport_ping(&self) {
        let mut state = self.lock();
        if state.close.is_none() {
            state.queue.push_back(Outgoing::TransportPing);
            drop(state);
            self.wake_writer.notify_one();
        }
    }

    /// Closes the connection after what is already queued. The first close decided wins.
    pub fn close(&self, disconnect: Disconnect) {
        let mut state = self.lock();
        if state.close.is_none() {
            state.close = Some(disconnect);
        }
        drop(state);
        self.closed.cancel();
        self.wake_writer.notify_one();
    }

    /// The byte budget of the queue.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Whether a close has been decided.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Resolves once a close has been decided.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }

    /// The decided close, if any.
    pub fn close_reason(&self) -> Option<Disconnect> {
        self.lock().close.clone()
    }

    /// Waits until there is something to write or a close, then takes all of it.
    pub async fn next_batch(&self) -> Batch {
        loop {
            {
                let mut state = self.lock();
                if !state.queue.is_empty() || state.close.is_some() {
                    state.bytes = 0;
                    return Batch {
                        items: state.queue.drain(..).collect(),
                        close: state.close.clone(),
                    };
                }
            }
            self.wake_writer.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Frame {
        Frame::new(vec![b'x'; n])
    }

    #[tokio::test]
    async fn writer_takes_everything_queued_in_order() {
        let q = Outbound::new(1024);
        assert!(q.push(frame(1)));
        assert!(q.push(frame(2)));
        let batch = q.next_batch().await;
        assert_eq!(
            batch.items,
            vec![Outgoing::Frame(frame(1)), Outgoing::Frame(frame(2))]
        );
        assert_eq!(batch.close, None);
    }

    #[tokio::test]
    async fn overflow_closes_as_slow_and_drops_the_backlog() {
        let q = Outbound::new(100);
        assert!(q.push(frame(60)));
        assert!(!q.push(frame(60)));
        assert!(q.is_closed());
        let batch = q.next_batch().await;
        assert!(batch.items.is_empty());
        assert_eq!(batch.close, Some(Disconnect::SLOW));
        assert!(!q.push(frame(1)), "nothing is queued after a close");
    }

    #[tokio::test]
    async fn draining_frees_the_budget() {
        let q = Outbound::new(100);
        assert!(q.push(frame(60)));
        q.next_batch().await;
        assert!(q.push(frame(60)));
    }

    #[tokio::test]
    async fn close_comes_after_what_was_queued_and_first_close_wins() {
        let q = Outbound::new(100);
        q.push(frame(1));
        q.close(Disconnect::SHUTDOWN);
        q.close(Disconnect::NO_PONG);
        let batch = q.next_batch().await;
        assert_eq!(batch.items.len(), 1);
        assert_eq!(batch.close, Some(Disconnect::SHUTDOWN));
    }
}
