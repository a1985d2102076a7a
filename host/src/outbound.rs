//! The bounded outbound queue between everything that sends to a client and the connection's writer.
//!
//! Producers (the session's own replies, the hub's fan-out, heartbeats) push shared [`Frame`]s and never
//! wait: a queue over its byte budget means the client is not reading, so the connection is closed as slow
//! (3008) instead of delaying anyone else. The writer drains everything queued at once so it can coalesce
//! frames into few writes. Closing is a state of the queue, so a close decided anywhere reaches the writer
//! after the frames queued before it.
//!
//! Fan-out pushes into thousands of these per publication, so a push is one uncontended lock and, only
//! when the queue was empty, one wake-up: a writer that has not yet drained the queue was already woken by
//! the push that made it non-empty.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

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
    /// Set once a close is decided; with `wake_closed` it tells the session without a lock. (Inline
    /// rather than a cancellation token, which is a separate allocation for every connection.)
    closed: AtomicBool,
    wake_closed: Notify,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Outgoing>,
    bytes: usize,
    close: Option<Disconnect>,
}

/// Queue capacity (in items) kept between batches. A burst grows the queue far beyond what an idle
/// connection needs; anything larger is given back to the allocator once drained.
const KEEP_CAPACITY: usize = 32;

/// A batch taken by the writer. The writer keeps one and passes it back to [`Outbound::next_batch_into`],
/// so the drained buffer becomes the next queue and batches cost no allocation.
#[derive(Debug, Default)]
pub struct Batch {
    /// What to write, in order.
    pub items: VecDeque<Outgoing>,
    /// Set when the connection must be closed after writing `items`.
    pub close: Option<Disconnect>,
}

impl Outbound {
    /// A queue that holds at most `max_bytes` of frames.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            wake_writer: Notify::new(),
            closed: AtomicBool::new(false),
            wake_closed: Notify::new(),
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
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
            self.mark_closed();
            return false;
        }
        state.bytes += frame.len();
        let was_empty = state.queue.is_empty();
        state.queue.push_back(Outgoing::Frame(frame));
        drop(state);
        if was_empty {
            self.wake_writer.notify_one();
        }
        true
    }

    /// Queues a transport-level ping.
    pub fn push_transport_ping(&self) {
        let mut state = self.lock();
        if state.close.is_none() {
            let was_empty = state.queue.is_empty();
            state.queue.push_back(Outgoing::TransportPing);
            drop(state);
            if was_empty {
                self.wake_writer.notify_one();
            }
        }
    }

    /// Closes the connection after what is already queued. The first close decided wins.
    pub fn close(&self, disconnect: Disconnect) {
        let mut state = self.lock();
        if state.close.is_none() {
            state.close = Some(disconnect);
        }
        drop(state);
        self.mark_closed();
    }

    fn mark_closed(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake_closed.notify_waiters();
        self.wake_writer.notify_one();
    }

    /// The byte budget of the queue.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Whether a close has been decided.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Resolves once a close has been decided.
    pub async fn closed(&self) {
        let notified = self.wake_closed.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before the check, so a close between the check and the wait still wakes us.
        notified.as_mut().enable();
        if !self.is_closed() {
            notified.await;
        }
    }

    /// The decided close, if any.
    pub fn close_reason(&self) -> Option<Disconnect> {
        self.lock().close.clone()
    }

    /// Waits until there is something to write or a close, then takes all of it.
    pub async fn next_batch(&self) -> Batch {
        let mut batch = Batch::default();
        self.next_batch_into(&mut batch).await;
        batch
    }

    /// Like [`Outbound::next_batch`], into the writer's batch: what it still holds is discarded and its
    /// buffer becomes the queue's (shrunk first if a burst grew it).
    pub async fn next_batch_into(&self, batch: &mut Batch) {
        batch.items.clear();
        if batch.items.capacity() > KEEP_CAPACITY {
            batch.items = VecDeque::new();
        }
        loop {
            {
                let mut state = self.lock();
                if !state.queue.is_empty() || state.close.is_some() {
                    state.bytes = 0;
                    std::mem::swap(&mut state.queue, &mut batch.items);
                    batch.close = state.close.clone();
                    return;
                }
            }
            // A push between the check above and this wait leaves a permit, so it is not missed.
            self.wake_writer.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

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

    /// A writer reusing its batch gets each frame once, and a burst's buffer is not kept.
    #[tokio::test]
    async fn reused_batches_take_only_new_frames_and_shed_burst_capacity() {
        let q = Outbound::new(1 << 20);
        let mut batch = Batch::default();
        for n in 1..=1000 {
            assert!(q.push(frame(n % 7 + 1)));
        }
        q.next_batch_into(&mut batch).await;
        assert_eq!(batch.items.len(), 1000);
        assert!(q.push(frame(3)));
        q.next_batch_into(&mut batch).await;
        assert_eq!(batch.items, vec![Outgoing::Frame(frame(3))]);
        q.close(Disconnect::SHUTDOWN);
        q.next_batch_into(&mut batch).await;
        assert!(batch.items.is_empty());
        assert!(batch.items.capacity() <= KEEP_CAPACITY);
        assert!(q.lock().queue.capacity() <= KEEP_CAPACITY);
        assert_eq!(batch.close, Some(Disconnect::SHUTDOWN));
    }

    /// Only the push that finds the queue empty wakes the writer, and that is enough to get every frame.
    #[tokio::test]
    async fn one_wake_up_delivers_everything_pushed_meanwhile() {
        let q = Arc::new(Outbound::new(1 << 20));
        let writer = tokio::spawn({
            let q = q.clone();
            async move {
                let mut got = 0;
                let mut batch = Batch::default();
                while got < 300 {
                    q.next_batch_into(&mut batch).await;
                    got += batch.items.len();
                }
                got
            }
        });
        for round in 0..30 {
            for _ in 0..10 {
                assert!(q.push(frame(1)));
            }
            if round % 3 == 0 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(writer.await.unwrap(), 300);
    }

    /// Whoever waits for the close hears of it, however it was decided.
    #[tokio::test]
    async fn waiting_for_the_close_ends_when_it_is_decided() {
        let q = Arc::new(Outbound::new(100));
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.closed().await }
        });
        tokio::task::yield_now().await;
        assert!(!q.is_closed());
        assert!(!q.push(frame(200)), "overflow closes");
        waiter.await.unwrap();
        q.closed().await;
        assert!(q.is_closed());
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
