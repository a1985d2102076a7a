//! What a run counts while it goes: connections, expected and received deliveries per message, latency
//! histograms, errors; and what it reads from `/proc` about the server and itself (RSS, CPU time). Shared by
//! every connection task and the publisher, so everything here is atomic or behind short, sharded locks.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::wire::Stamp;

/// Latency shards: connection `i` records into shard `i % LATENCY_SHARDS`, so threads rarely meet on a lock.
const LATENCY_SHARDS: usize = 64;

/// Highest latency the histograms hold, in microseconds (larger values are clamped to it).
const LATENCY_MAX_US: u64 = 120_000_000;

/// Distinct error texts kept for the report; more are counted under "other errors".
const ERROR_KINDS_KEPT: usize = 24;

/// Counters of one run, shared by all tasks.
#[derive(Debug)]
pub(crate) struct Tally {
    anchor: Instant,
    /// Connections whose WebSocket opened.
    pub opened: AtomicU64,
    /// Connections whose every subscription was confirmed.
    pub subscribed: AtomicU64,
    /// Connections that failed to open or subscribe.
    pub failed: AtomicU64,
    /// Subscribed connections the server closed (or lost) before the run ended.
    pub closed_early: AtomicU64,
    /// Deliveries received, all messages together.
    pub delivered: AtomicU64,
    /// Deliveries the publisher expects, summed at publish time.
    pub expected: AtomicU64,
    /// Frames whose stamp names a message this run never published.
    pub unknown_stamps: AtomicU64,
    /// When the first and the last delivery arrived (ns since the anchor; 0 = none yet).
    first_delivery_ns: AtomicU64,
    last_delivery_ns: AtomicU64,
    subscribers_per_channel: Vec<AtomicU32>,
    expected_per_message: Vec<AtomicU32>,
    delivered_per_message: Vec<AtomicU32>,
    latency_shards: Vec<Mutex<Histogram<u64>>>,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    /// Counters for `channels` channels and at most `messages` messages.
    pub(crate) fn new(channels: usize, messages: usize) -> anyhow::Result<Self> {
        let mut latency_shards = Vec::with_capacity(LATENCY_SHARDS);
        for _ in 0..LATENCY_SHARDS {
            latency_shards.push(Mutex::new(Histogram::new_with_bounds(
                1,
                LATENCY_MAX_US,
                3,
            )?));
        }
        Ok(Self {
            anchor: Instant::now(),
            opened: AtomicU64::new(0),
            subscribed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            closed_early: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            unknown_stamps: AtomicU64::new(0),
            first_delivery_ns: AtomicU64::new(0),
            last_delivery_ns: AtomicU64::new(0),
            subscribers_per_channel: (0..channels).map(|_| AtomicU32::new(0)).collect(),
            expected_per_message: (0..messages).map(|_| AtomicU32::new(0)).collect(),
            delivered_per_message: (0..messages).map(|_| AtomicU32::new(0)).collect(),
            latency_shards,
            errors: Mutex::new(BTreeMap::new()),
        })
    }

    /// Nanoseconds since the run's clock anchor (never 0, so 0 can mean "not yet").
    pub(crate) fn now_ns(&self) -> u64 {
        u64::try_from(self.anchor.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// A connection joined (`+1`) or left (`-1`) a channel's subscribers.
    pub(crate) fn change_subscribers(&self, channel: usize, joined: bool) {
        if let Some(count) = self.subscribers_per_channel.get(channel) {
            if joined {
                count.fetch_add(1, Ordering::Relaxed);
            } else {
                count.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// How many connections are subscribed to a channel now.
    pub(crate) fn subscribers(&self, channel: usize) -> u32 {
        self.subscribers_per_channel
            .get(channel)
            .map_or(0, |count| count.load(Ordering::Relaxed))
    }

    /// The publisher sent message `seq`, which `receivers` subscribers should receive.
    pub(crate) fn expect(&self, seq: u64, receivers: u32) {
        if let Some(slot) = usize::try_from(seq)
            .ok()
            .and_then(|seq| self.expected_per_message.get(seq))
        {
            slot.store(receivers, Ordering::Relaxed);
            self.expected
                .fetch_add(u64::from(receivers), Ordering::Relaxed);
        }
    }

    /// A connection (`shard` = its index) received a stamped payload.
    pub(crate) fn record_delivery(&self, shard: usize, stamp: Stamp) {
        let now = self.now_ns();
        let Some(slot) = usize::try_from(stamp.seq)
            .ok()
            .and_then(|seq| self.delivered_per_message.get(seq))
        else {
            self.unknown_stamps.fetch_add(1, Ordering::Relaxed);
            return;
        };
        slot.fetch_add(1, Ordering::Relaxed);
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let _ =
            self.first_delivery_ns
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        self.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
        let micros = now.saturating_sub(stamp.sent_ns) / 1_000;
        let shard = &self.latency_shards[shard % LATENCY_SHARDS];
        if let Ok(mut histogram) = shard.lock() {
            histogram.saturating_record(micros.max(1));
        }
    }

    /// Counts an error by its text (the first few distinct texts are kept apart).
    pub(crate) fn record_error(&self, text: impl Into<String>) {
        let mut text: String = text.into();
        text.truncate(160);
        if let Ok(mut errors) = self.errors.lock() {
            if !errors.contains_key(&text) && errors.len() >= ERROR_KINDS_KEPT {
                text = "other errors".to_string();
            }
            *errors.entry(text).or_insert(0) += 1;
        }
    }

    /// Errors seen so far, by text.
    pub(crate) fn errors(&self) -> BTreeMap<String, u64> {
        self.errors
            .lock()
            .map(|errors| errors.clone())
            .unwrap_or_default()
    }

    /// When the first and last deliveries arrived (ns since the anchor), if any did.
    pub(crate) fn delivery_window_ns(&self) -> Option<(u64, u64)> {
        let first = self.first_delivery_ns.load(Ordering::Relaxed);
        let last = self.last_delivery_ns.load(Ordering::Relaxed);
        (first != 0).then_some((first, last))
    }

    /// Deliveries missing and deliveries beyond what was expected, over the first `published` messages.
    pub(crate) fn losses(&self, published: usize) -> (u64, u64) {
        let mut lost = 0u64;
        let mut duplicates = 0u64;
        for (expected, delivered) in self
            .expected_per_message
            .iter()
            .zip(&self.delivered_per_message)
            .take(published)
        {
            let expected = u64::from(expected.load(Ordering::Relaxed));
            let delivered = u64::from(delivered.load(Ordering::Relaxed));
            lost += expected.saturating_sub(delivered);
            duplicates += delivered.saturating_sub(expected);
        }
        (lost, duplicates)
    }

    /// All latency shards merged.
    pub(crate) fn latency(&self) -> anyhow::Result<Histogram<u64>> {
        let mut merged = Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)?;
        for shard in &self.latency_shards {
            if let Ok(histogram) = shard.lock() {
                merged.add(&*histogram)?;
            }
        }
        Ok(merged)
    }
}

/// Resident memory and CPU time of a process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProcessSample {
    /// `VmRSS` in KiB.
    pub rss_kib: u64,
    /// User + system CPU time in seconds.
    pub cpu_seconds: f64,
}

/// Linux reports `/proc/<pid>/stat` times in USER_HZ ticks, which the kernel ABI fixes at 100 per second.
const TICKS_PER_SECOND: f64 = 100.0;

/// Reads RSS and CPU time of `pid` (`None`: this process) from `/proc`.
pub(crate) fn sample_process(pid: Option<u32>) -> Result<ProcessSample, String> {
    let base = pid.map_or_else(|| "/proc/self".to_string(), |pid| format!("/proc/{pid}"));
    let status = std::fs::read_to_string(format!("{base}/status"))
        .map_err(|e| format!("cannot read {base}/status: {e}"))?;
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("{base}/status has no VmRSS"))?;
    let stat = std::fs::read_to_string(format!("{base}/stat"))
        .map_err(|e| format!("cannot read {base}/stat: {e}"))?;
    let cpu_seconds = cpu_ticks(&stat)
        .map(|ticks| ticks as f64 / TICKS_PER_SECOND)
        .ok_or_else(|| format!("{base}/stat is not in the expected format"))?;
    Ok(ProcessSample {
        rss_kib,
        cpu_seconds,
    })
}

/// `utime + stime` from a `/proc/<pid>/stat` line. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its closing parenthesis: state is the first, utime the 12th.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_survive_odd_command_names() {
        let stat = "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 1 0 0";
        assert_eq!(cpu_ticks(stat), Some(300));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let sample = sample_process(None).unwrap();
        assert!(sample.rss_kib > 0);
    }

    #[test]
    fn losses_and_duplicates_are_counted_per_message() {
        let tally = Tally::new(1, 3).unwrap();
        tally.expect(0, 2);
        tally.expect(1, 2);
        for seq in [0, 0, 0, 1] {
            tally.record_delivery(0, Stamp { sent_ns: 1, seq });
        }
        tally.record_delivery(0, Stamp { sent_ns: 1, seq: 9 });
        assert_eq!(tally.losses(2), (1, 1));
        assert_eq!(tally.unknown_stamps.load(Ordering::Relaxed), 1);
        assert_eq!(tally.latency().unwrap().len(), 4);
    }
}
