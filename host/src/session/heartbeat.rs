//! The heartbeat of one connection: the connect deadline before `connect`, then pings at a fixed interval
//! (the first at a random point in [interval/2, interval) to spread load) and a pong deadline after each.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::disconnect::Disconnect;

/// What the heartbeat wants done when its deadline passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Beat {
    /// Send a ping now.
    Ping,
    /// Close the connection.
    Close(Disconnect),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingConnect { deadline: Instant },
    Idle { next_ping: Instant },
    AwaitingPong { sent: Instant, deadline: Instant },
}

/// Heartbeat state machine; the session sleeps until [`Heartbeat::deadline`] and then calls [`Heartbeat::beat`].
#[derive(Debug, Clone)]
pub(super) struct Heartbeat {
    interval: Duration,
    pong_timeout: Duration,
    phase: Phase,
}

impl Heartbeat {
    /// A heartbeat for a connection opened at `now`.
    pub(super) fn new(
        now: Instant,
        connect_timeout: Duration,
        interval: Duration,
        pong_timeout: Duration,
    ) -> Self {
        Self {
            interval,
            pong_timeout,
            phase: Phase::AwaitingConnect {
                deadline: now + connect_timeout,
            },
        }
    }

    /// When [`Heartbeat::beat`] must next be called.
    pub(super) fn deadline(&self) -> Instant {
        match self.phase {
            Phase::AwaitingConnect { deadline } | Phase::AwaitingPong { deadline, .. } => deadline,
            Phase::Idle { next_ping } => next_ping,
        }
    }

    /// The client connected: start pinging.
    pub(super) fn connected(&mut self, now: Instant) {
        let first = rand::rng().random_range(self.interval / 2..self.interval);
        self.phase = Phase::Idle {
            next_ping: now + first,
        };
    }

    /// The deadline passed.
    pub(super) fn beat(&mut self, now: Instant) -> Option<Beat> {
        match self.phase {
            Phase::AwaitingConnect { deadline } if now >= deadline => {
                Some(Beat::Close(Disconnect::STALE))
            }
            Phase::AwaitingPong { deadline, .. } if now >= deadline => {
                Some(Beat::Close(Disconnect::NO_PONG))
            }
            Phase::Idle { next_ping } if now >= next_ping => {
                self.phase = Phase::AwaitingPong {
                    sent: now,
                    deadline: now + self.pong_timeout,
                };
                Some(Beat::Ping)
            }
            _ => None,
        }
    }

    /// A pong arrived; one without an outstanding ping is ignored.
    pub(super) fn pong(&mut self) {
        if let Phase::AwaitingPong { sent, .. } = self.phase {
            self.phase = Phase::Idle {
                next_ping: sent + self.interval,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn no_connect_within_the_deadline_is_stale() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(t0, 10 * S, 25 * S, 8 * S);
        assert_eq!(hb.deadline(), t0 + 10 * S);
        assert_eq!(hb.beat(t0 + 5 * S), None);
        assert_eq!(hb.beat(t0 + 10 * S), Some(Beat::Close(Disconnect::STALE)));
    }

    #[test]
    fn first_ping_is_in_the_second_half_of_the_interval() {
        let t0 = Instant::now();
        for _ in 0..100 {
            let mut hb = Heartbeat::new(t0, 10 * S, 25 * S, 8 * S);
            hb.connected(t0);
            let first = hb.deadline() - t0;
            assert!(
                first >= Duration::from_millis(12_500) && first < 25 * S,
                "{first:?}"
            );
        }
    }

    #[test]
    fn missing_pong_closes_and_pong_schedules_the_next_ping() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(t0, 10 * S, 4 * S, 2 * S);
        hb.connected(t0);
        let ping_at = hb.deadline();
        assert_eq!(hb.beat(ping_at), Some(Beat::Ping));
        assert_eq!(hb.deadline(), ping_at + 2 * S);
        hb.pong();
        assert_eq!(hb.deadline(), ping_at + 4 * S);
        hb.pong(); // unsolicited: ignored
        assert_eq!(hb.deadline(), ping_at + 4 * S);
        assert_eq!(hb.beat(ping_at + 4 * S), Some(Beat::Ping));
        assert_eq!(
            hb.beat(ping_at + 6 * S),
            Some(Beat::Close(Disconnect::NO_PONG))
        );
    }
}
