//! The bounded outbound queue between everything that sends to a client and the connection's writer.
//!
//! Producers (the session's own replies, the hub's fan-out, heartbeats) push shared [`Frame`]s and never
//! wait: a queue over its byte budget means the client is not reading, so the connection is closed as slow
//! (3008) instead of delaying anyone else. The writer drains everything queued at once so it can coalesce
//! frames into few writes. Closing is a state of the queue, so a close decided anywhere reaches the writer
//! after the frames queued before it.
//!
//! Fan-out pushes into thousands of these per publication, so a push is one uncontended lock and, when
//! the transport can [`Transmit`] and nothing is queued, a write straight into the socket: no task wakes up
//! and nothing is queued while the client keeps up. Otherwise a push queues, and only the push that found
//! the queue empty wakes the writer (a writer that has not yet drained the queue was already woken).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
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
    /// Bytes the transport framed itself (a control frame, the rest of a frame the socket took only
    /// part of); they go out as they are, before anything queued after them.
    Raw(Bytes),
}

/// A transport that can take a frame at once, without a task or a wait: the fan-out writes straight into
/// a socket with room (the common case), and the queue holds only what the socket could not take.
pub trait Transmit: Send + Sync + std::fmt::Debug {
    /// Writes `frame` now if the connection takes it. Called under the queue's lock and only while
    /// nothing is queued or being written, so frames never interleave.
    fn try_transmit(&self, frame: &Frame) -> Transmitted;
}

/// How far [`Transmit::try_transmit`] got.
#[derive(Debug)]
pub enum Transmitted {
    /// All of the frame is on its way.
    Whole,
    /// Nothing was written: the frame is to be queued.
    Nothing,
    /// Part of the frame was written; these bytes (framed) must go next.
    Rest(Bytes),
    /// The connection failed.
    Failed,
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
    /// The writer took a batch and is writing it: pushes queue behind it instead of writing directly.
    writing: bool,
    /// Where frames may be written directly; dropped once a close is decided (nothing is written directly
    /// after that), so the socket is not kept open by whoever still holds the queue.
    transmit: Option<Arc<dyn Transmit>>,
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
        Self::with_state(max_bytes, State::default())
    }

    /// A queue in front of a transport that takes frames directly while nothing is queued.
    pub fn transmitting(max_bytes: usize, transmit: Arc<dyn Transmit>) -> Self {
        let state = State {
            transmit: Some(transmit),
            ..State::default()
        };
        Self::with_state(max_bytes, state)
    }

    fn with_state(max_bytes: usize, state: State) -> Self {
        Self {
            state: Mutex::new(state),
            wake_writer: Notify::new(),
            closed: AtomicBool::new(false),
            wake_closed: Notify::new(),
            max_bytes,
        }
    }

    /// Reads the queue's lock word without taking the lock: a fan-out calls this a few connections
    /// ahead, so the cache line a push needs is loaded while earlier pushes write (see [`crate::hub`]).
    pub fn warm(&self) {
        // The poison flag sits next to the lock word; reading it takes nothing.
        std::hint::black_box(self.state.is_poisoned());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// Sends a frame: written directly when nothing is queued and the transport takes it, queued
    /// otherwise. Returns false if the connection is closing (the frame is dropped). Overflowing the byte
    /// budget drops everything queued and closes the connection as slow.
    pub fn push(&self, frame: Frame) -> bool {
        self.send(Cow::Owned(frame), true)
    }

    /// As [`Outbound::push`] for a frame many connections are sent (a fan-out): it is only copied (a
    /// reference count taken) when it has to be queued.
    pub fn push_shared(&self, frame: &Frame) -> bool {
        self.send(Cow::Borrowed(frame), true)
    }

    /// Queues a frame for the writer even when it could be written directly, so that frames arriving in
    /// quick succession leave in one write (see [`crate::hub`]'s fan-out); otherwise as [`Outbound::push`].
    pub fn push_queued(&self, frame: Frame) -> bool {
        self.send(Cow::Owned(frame), false)
    }

    fn send(&self, frame: Cow<'_, Frame>, direct: bool) -> bool {
        let state = self.lock();
        if state.close.is_some() {
            return false;
        }
        if direct
            && state.queue.is_empty()
            && !state.writing
            && let Some(transmit) = &state.transmit
        {
            match transmit.try_transmit(&frame) {
                Transmitted::Whole => return true,
                Transmitted::Nothing => {}
                // The rest of a frame already begun must follow whatever the budget says, or the
                // stream would be cut mid-frame; it is no larger than the frame the budget admitted.
                Transmitted::Rest(rest) => return self.queue(state, Outgoing::Raw(rest), false),
                Transmitted::Failed => {
                    drop(state);
                    self.close(Disconnect::WRITE_ERROR);
                    return false;
                }
            }
        }
        self.queue(state, Outgoing::Frame(frame.into_owned()), true)
    }

    /// Queues bytes the transport framed itself (see [`Outgoing::Raw`]); false if the connection is
    /// closing or over its budget.
    pub fn push_raw(&self, bytes: Bytes) -> bool {
        let state = self.lock();
        if state.close.is_some() {
            return false;
        }
        self.queue(state, Outgoing::Raw(bytes), true)
    }

    /// Queues an item (under the byte budget if `budgeted`), waking the writer if the queue was empty.
    fn queue(
        &self,
        mut state: std::sync::MutexGuard<'_, State>,
        item: Outgoing,
        budgeted: bool,
    ) -> bool {
        let len = match &item {
            Outgoing::Frame(frame) => frame.len(),
            Outgoing::Raw(bytes) => bytes.len(),
            Outgoing::TransportPing => 0,
        };
        if budgeted && state.bytes + len > self.max_bytes {
            state.queue.clear();
            state.bytes = 0;
            state.close = Some(Disconnect::SLOW);
            state.transmit = None;
            drop(state);
            self.mark_closed();
            return false;
        }
        state.bytes += len;
        let was_empty = state.queue.is_empty();
        state.queue.push_back(item);
        drop(state);
        if was_empty {
            self.wake_writer.notify_one();
        }
        true
    }

    /// Queues a transport-level ping.
    pub fn push_transport_ping(&self) {
        let state = self.lock();
        if state.close.is_none() {
            self.queue(state, Outgoing::TransportPing, true);
        }
    }

    /// Closes the connection after what is already queued. The first close decided wins.
    pub fn close(&self, disconnect: Disconnect) {
        let mut state = self.lock();
        if state.close.is_none() {
            state.close = Some(disconnect);
        }
        state.transmit = None;
        drop(state);
        self.mark_closed();
    }

    fn mark_closed(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake_closed.notify_waiters();
        self.wake_writer.notify_one();
    }

    /// Bytes waiting in the queue (not those written directly).
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
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
                    state.writing = !state.queue.is_empty();
                    std::mem::swap(&mut state.queue, &mut batch.items);
                    batch.close = state.close.clone();
                    return;
                }
                // Everything taken before was written: frames may go directly again.
                state.writing = false;
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

    /// A transport that takes every frame whole, and counts them.
    #[derive(Debug, Default)]
    struct Taker(std::sync::atomic::AtomicUsize);

    impl Transmit for Taker {
        fn try_transmit(&self, _frame: &Frame) -> Transmitted {
            self.0.fetch_add(1, Ordering::Relaxed);
            Transmitted::Whole
        }
    }

    #[tokio::test]
    async fn queued_pushes_wait_for_the_writer_even_when_the_socket_would_take_them() {
        let taker = Arc::new(Taker::default());
        let q = Outbound::transmitting(1024, taker.clone());
        assert!(q.push(frame(1)));
        assert_eq!(taker.0.load(Ordering::Relaxed), 1, "written directly");
        assert_eq!(q.queued_bytes(), 0);
        assert!(q.push_queued(frame(2)));
        assert!(q.push_queued(frame(3)));
        assert_eq!(taker.0.load(Ordering::Relaxed), 1, "not written directly");
        // Behind queued frames nothing may jump the queue, so a direct push queues too.
        assert!(q.push(frame(4)));
        assert_eq!(taker.0.load(Ordering::Relaxed), 1);
        let batch = q.next_batch().await;
        assert_eq!(
            batch.items,
            [2, 3, 4].map(|n| Outgoing::Frame(frame(n))).to_vec()
        );
    }
}
