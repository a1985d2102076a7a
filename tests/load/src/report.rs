//! The result of one run: the JSON document written with `--json`, the human summary printed at the end,
//! and the Markdown table `herald-load table` builds from several JSON documents for BENCHMARKS.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::wire::Protocol;

/// Everything one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Report {
    /// Name given with `--label`.
    pub label: String,
    /// The dialect.
    pub protocol: Protocol,
    /// The connect phase.
    pub connections: ConnectPhase,
    /// The publish phase, when messages were published.
    pub publish: Option<PublishPhase>,
    /// The server's memory and CPU, when `--server-pid` was given.
    pub server: Option<ServerUsage>,
    /// CPU seconds the tool itself used over the whole run.
    pub tool_cpu_seconds: f64,
    /// CPU seconds the tool used during publishing (near 1 per second means the tool was the limit).
    pub tool_cpu_publish_seconds: f64,
    /// Subscribed connections the server closed before the end.
    pub closed_early: u64,
    /// Errors by text.
    pub errors: BTreeMap<String, u64>,
}

/// Opening and subscribing the connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ConnectPhase {
    /// Connections asked for.
    pub requested: u64,
    /// Connections fully subscribed.
    pub subscribed: u64,
    /// Connections that failed.
    pub failed: u64,
    /// Channels in the run and subscriptions per connection.
    pub channels: u64,
    /// Subscriptions each connection made.
    pub channels_per_connection: u64,
    /// Seconds the phase took.
    pub seconds: f64,
    /// Subscribed connections per second.
    pub per_second: f64,
}

/// Publishing and delivering.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PublishPhase {
    /// `http` (the server's own API), `pusher-http-api` or `clients`.
    pub source: String,
    /// Messages published.
    pub messages: u64,
    /// Publishes that failed.
    pub failed: u64,
    /// Payload bytes.
    pub size: usize,
    /// Target rate in messages/s (`None`: maximum).
    pub rate: Option<f64>,
    /// Seconds spent publishing.
    pub publish_seconds: f64,
    /// Deliveries the subscribers should have received.
    pub deliveries_expected: u64,
    /// Deliveries received.
    pub deliveries_received: u64,
    /// Expected deliveries that had not arrived when the drain timeout ended: lost, or still queued in a
    /// server that could not keep up with the offered rate.
    pub lost: u64,
    /// Deliveries beyond the expected count.
    pub duplicates: u64,
    /// Deliveries received per second, from the first delivery to the last.
    pub deliveries_per_second: f64,
    /// Published message to received delivery, in microseconds.
    pub latency_us: Latency,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
    /// Mean.
    pub mean: f64,
    /// Samples.
    pub count: u64,
}

impl Latency {
    /// Percentiles of a histogram of microseconds.
    pub(crate) fn of(histogram: &hdrhistogram::Histogram<u64>) -> Self {
        Self {
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
            mean: histogram.mean(),
            count: histogram.len(),
        }
    }
}

/// The server process, read from `/proc/<pid>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ServerUsage {
    /// Its pid.
    pub pid: u32,
    /// RSS before the first connection, KiB.
    pub rss_before_kib: u64,
    /// RSS with every connection subscribed (after the hold, if any), KiB.
    pub rss_connected_kib: u64,
    /// RSS at the end of the run, KiB.
    pub rss_end_kib: u64,
    /// (connected − before) / subscribed connections, KiB.
    pub kib_per_connection: f64,
    /// CPU seconds used while connections opened.
    pub cpu_connect_seconds: f64,
    /// CPU seconds used while publishing and draining.
    pub cpu_publish_seconds: f64,
    /// Deliveries per server CPU second during publishing.
    pub deliveries_per_cpu_second: Option<f64>,
}

impl Report {
    /// The human summary.
    pub(crate) fn summary(&self) -> String {
        let mut out = String::new();
        let c = &self.connections;
        let _ = writeln!(out, "== {} ({:?})", self.label, self.protocol);
        let _ = writeln!(
            out,
            "connections: {}/{} subscribed ({} failed) to {} channels × {} per connection in {:.2} s = {:.0} conn/s",
            c.subscribed,
            c.requested,
            c.failed,
            c.channels,
            c.channels_per_connection,
            c.seconds,
            c.per_second
        );
        if let Some(p) = &self.publish {
            let rate = p
                .rate
                .map_or_else(|| "max rate".to_string(), |rate| format!("{rate} msg/s"));
            let _ = writeln!(
                out,
                "published: {} × {} B via {} at {} in {:.2} s ({} failed)",
                p.messages, p.size, p.source, rate, p.publish_seconds, p.failed
            );
            let _ = writeln!(
                out,
                "delivered: {}/{} ({} lost or late, {} duplicates) = {:.0} deliveries/s",
                p.deliveries_received,
                p.deliveries_expected,
                p.lost,
                p.duplicates,
                p.deliveries_per_second
            );
            let l = &p.latency_us;
            let _ = writeln!(
                out,
                "latency: p50 {} p90 {} p99 {} p99.9 {} max {} (mean {:.0}) µs",
                l.p50, l.p90, l.p99, l.p999, l.max, l.mean
            );
        }
        if let Some(s) = &self.server {
            let _ = writeln!(
                out,
                "server {}: RSS {} → {} → {} KiB ({:.2} KiB/connection); CPU {:.2} s connecting, {:.2} s publishing",
                s.pid,
                s.rss_before_kib,
                s.rss_connected_kib,
                s.rss_end_kib,
                s.kib_per_connection,
                s.cpu_connect_seconds,
                s.cpu_publish_seconds
            );
            if let Some(per_cpu) = s.deliveries_per_cpu_second {
                let _ = writeln!(out, "server: {per_cpu:.0} deliveries per CPU second");
            }
        }
        let _ = writeln!(
            out,
            "tool CPU: {:.2} s total, {:.2} s while publishing; {} connections closed early",
            self.tool_cpu_seconds, self.tool_cpu_publish_seconds, self.closed_early
        );
        for (error, count) in &self.errors {
            let _ = writeln!(out, "  error ×{count}: {error}");
        }
        out
    }
}

/// A Markdown table with one row per report.
pub(crate) fn markdown_table(reports: &[Report]) -> String {
    let mut out = String::from(
        "| run | subscribed | conn/s | KiB/conn | deliveries/s | p50 ms | p90 ms | p99 ms | max ms | lost | server CPU s (publish) | deliveries per server CPU s | tool CPU s (publish) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for report in reports {
        let c = &report.connections;
        let kib = report.server.as_ref().map_or("–".to_string(), |s| {
            format!("{:.1}", s.kib_per_connection)
        });
        let (rate, p50, p90, p99, max, lost) = match &report.publish {
            Some(p) => (
                format!("{:.0}", p.deliveries_per_second),
                millis(p.latency_us.p50),
                millis(p.latency_us.p90),
                millis(p.latency_us.p99),
                millis(p.latency_us.max),
                p.lost.to_string(),
            ),
            None => Default::default(),
        };
        let (server_cpu, per_cpu) = match &report.server {
            Some(s) if report.publish.is_some() => (
                format!("{:.2}", s.cpu_publish_seconds),
                s.deliveries_per_cpu_second
                    .map_or(String::new(), |v| format!("{v:.0}")),
            ),
            Some(s) => (
                format!("{:.2} (connect)", s.cpu_connect_seconds),
                String::new(),
            ),
            None => Default::default(),
        };
        let _ = writeln!(
            out,
            "| {} | {}/{} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} |",
            report.label,
            c.subscribed,
            c.requested,
            c.per_second,
            kib,
            rate,
            p50,
            p90,
            p99,
            max,
            lost,
            server_cpu,
            per_cpu,
            report.tool_cpu_publish_seconds
        );
    }
    out
}

fn millis(micros: u64) -> String {
    format!("{:.2}", micros as f64 / 1000.0)
}

/// Writes a report as pretty JSON to `path`, or to standard output for `-`.
pub(crate) fn write_json(report: &impl Serialize, path: &std::path::Path) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    if path.as_os_str() == "-" {
        println!("{json}");
    } else {
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
