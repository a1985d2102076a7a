//! [`Metrics`]: this node's Prometheus instruments, created once with their label sets,
//! so that what the hot paths touch is a handle (an atomic), never a lookup, a lock or an allocation.
//!
//! The owners count; this module only holds the instruments and renders them. What is cheaper to read
//! than to keep up to date (outbound queue bytes, webhooks waiting, plugin counters, readiness) is read at
//! scrape time by whoever serves `/metrics` and handed to [`Metrics::render`] as [`Snapshot`]s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::sync::lock;

/// Buckets of the publish latency, in seconds: from a memory-engine publish (~50 µs) to a slow Redis or
/// plugin (seconds).
const PUBLISH_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Buckets of one fan-out to this node's subscribers: from one subscriber (~1 µs) to tens of thousands.
const FANOUT_BUCKETS: &[f64] = &[
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
];
/// Buckets of engine calls: a Redis round trip on loopback (~100 µs) up to its command timeout.
const ENGINE_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
    2.5,
];
/// Buckets of plugin hook calls: ~1 µs for a warm pure hook up to a deadline of a second.
const PLUGIN_BUCKETS: &[f64] = &[
    0.000_001, 0.000_005, 0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5,
    1.0,
];
/// Buckets of plugin (re)loads: a cached compile (~10 ms) to a cold one of a big plugin.
const RELOAD_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The instruments of one kind of connection (a protocol over a transport), resolved once; sessions and
/// sockets keep an `Arc` of it.
#[derive(Debug)]
pub struct ConnectionMetrics {
    /// Open connections.
    pub connections: IntGauge,
    /// Connections accepted.
    pub connects: IntCounter,
    /// Subscriptions held.
    pub subscriptions: IntGauge,
    /// Bytes read from clients' sockets.
    pub bytes_received: IntCounter,
    /// Bytes written to clients' sockets.
    pub bytes_sent: IntCounter,
    /// Connections closed because their outbound queue overflowed.
    pub slow_closes: IntCounter,
    disconnects: IntCounterVec,
    protocol: &'static str,
}

impl ConnectionMetrics {
    /// Counts a close by its code (a bounded set: the protocols' documented close codes).
    pub fn disconnected(&self, code: u16) {
        let mut buffer = itoa::Buffer::new();
        self.disconnects
            .with_label_values(&[self.protocol, buffer.format(code)])
            .inc();
    }
}

/// The engine's instruments, by operation.
#[derive(Debug, Clone)]
pub struct EngineMetrics {
    calls: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    /// Times the pub/sub link to Redis was lost and set up again.
    pub pubsub_reconnects: IntCounter,
}

/// One engine operation's instruments.
#[derive(Debug, Clone)]
pub struct EngineOperation {
    /// Calls made.
    pub calls: IntCounter,
    /// Calls that failed.
    pub errors: IntCounter,
    /// How long calls took.
    pub duration: Histogram,
}

impl EngineMetrics {
    /// The instruments of one operation (`publish`, `history`, …).
    pub fn operation(&self, operation: &str) -> EngineOperation {
        EngineOperation {
            calls: self.calls.with_label_values(&[operation]),
            errors: self.errors.with_label_values(&[operation]),
            duration: self.duration.with_label_values(&[operation]),
        }
    }
}

/// Where a publication entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicationSource {
    /// The server API (or the Pusher HTTP API).
    Api,
    /// A client's publish (or Pusher client event).
    Client,
    /// The message queue.
    Queue,
    /// A copy a publish plugin routed to another channel.
    PluginRoute,
}

impl PublicationSource {
    const ALL: [Self; 4] = [Self::Api, Self::Client, Self::Queue, Self::PluginRoute];

    fn label(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Client => "client",
            Self::Queue => "queue",
            Self::PluginRoute => "plugin_route",
        }
    }
}

/// Values read at scrape time from their owners.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Bytes waiting in every connection's outbound queue.
    pub outbound_queue_bytes: u64,
    /// Whether `/ready` would answer 200.
    pub ready: bool,
    /// Webhook events waiting to be sent.
    pub webhooks_queued: u64,
    /// Webhook events sent, failed (given up after retrying) and dropped (queue full).
    pub webhook_events: [u64; 3],
    /// Per loaded plugin.
    pub plugins: Vec<PluginSnapshot>,
}

/// One loaded plugin's counters (they start again from zero when it is reloaded, which Prometheus reads
/// as a counter reset).
#[derive(Debug, Clone, Default)]
pub struct PluginSnapshot {
    /// The plugin's declared name.
    pub name: String,
    /// Hook calls.
    pub calls: u64,
    /// Calls that denied.
    pub denies: u64,
    /// Failures as (hook, kind, count).
    pub failures: Vec<(&'static str, &'static str, u64)>,
}

/// Running totals for the admin page, which turns two of them into rates and latencies.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Totals {
    /// Frames handed to subscribers.
    pub deliveries: u64,
    /// Publications accepted.
    pub publications: u64,
    /// The publish-latency histogram over every source: bucket upper bounds (seconds) and the cumulative
    /// count at each.
    pub publish_buckets: Vec<(f64, u64)>,
}

/// This node's instruments and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    names: Vec<String>,
    connection_kinds: Mutex<HashMap<(&'static str, &'static str), Arc<ConnectionMetrics>>>,
    connections: IntGaugeVec,
    connects: IntCounterVec,
    subscriptions: IntGaugeVec,
    bytes_received: IntCounterVec,
    bytes_sent: IntCounterVec,
    slow_closes: IntCounterVec,
    disconnects: IntCounterVec,
    commands: IntCounterVec,
    command_errors: IntCounterVec,
    publications: IntCounterVec,
    publish_duration: HistogramVec,
    deliveries: IntCounterVec,
    /// How long one fan-out to this node's subscribers took.
    pub fanout_duration: Histogram,
    /// Gaps found in subscribers' streams (each makes its subscriber resubscribe and recover).
    pub stream_gaps: IntCounter,
    recoveries: IntCounterVec,
    engine: EngineMetrics,
    plugin_call_duration: HistogramVec,
    plugin_loads: IntCounterVec,
    plugin_load_duration: Histogram,
    queue_entries: IntCounterVec,
    queue_retries: IntCounterVec,
    queue_lag: IntGaugeVec,
    limit_refusals: IntCounterVec,
    outbound_queue_bytes: IntGauge,
    ready: IntGauge,
    webhooks_queued: IntGauge,
    /// Serializes renders: the scrape-time values are set, then gathered.
    rendering: Mutex<()>,
}

/// The registry being filled, and the names of the families put in it (an empty family is left out of
/// the exposition, but is still one Herald has).
struct Families {
    registry: Registry,
    names: Vec<String>,
}

impl Families {
    fn add<C: Collector + Clone + 'static>(&mut self, collector: C) {
        for desc in collector.desc() {
            self.names.push(desc.fq_name.clone());
        }
        self.registry
            .register(Box::new(collector))
            .expect("each family is registered once");
    }
}

fn counter_vec(registry: &mut Families, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.add(vec.clone());
    vec
}

fn gauge_vec(registry: &mut Families, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.add(vec.clone());
    vec
}

fn counter(registry: &mut Families, name: &str, help: &str) -> IntCounter {
    let counter = IntCounter::new(name, help).expect("valid metric");
    registry.add(counter.clone());
    counter
}

fn gauge(registry: &mut Families, name: &str, help: &str) -> IntGauge {
    let gauge = IntGauge::new(name, help).expect("valid metric");
    registry.add(gauge.clone());
    gauge
}

fn histogram_vec(
    registry: &mut Families,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let vec = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric");
    registry.add(vec.clone());
    vec
}

fn histogram(registry: &mut Families, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let histogram = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("valid metric");
    registry.add(histogram.clone());
    histogram
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(&[])
    }
}

impl Metrics {
    /// Every instrument, registered; `namespaces` are the configured channel namespaces, which label the
    /// publication counts (channels without one are `namespace=""`).
    pub fn new(namespaces: &[&str]) -> Self {
        let mut r = Families {
            registry: Registry::new(),
            names: Vec::new(),
        };
        let build = gauge_vec(
            &mut r,
            "herald_build_info",
            "Herald's version; always 1",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        #[cfg(target_os = "linux")]
        r.registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique");
        let publications = counter_vec(
            &mut r,
            "herald_publications_total",
            "Publications accepted, by where they entered and the channel's namespace",
            &["source", "namespace"],
        );
        for source in PublicationSource::ALL {
            for namespace in std::iter::once(&"").chain(namespaces) {
                publications.with_label_values(&[source.label(), namespace]);
            }
        }
        let publish_duration = histogram_vec(
            &mut r,
            "herald_publish_duration_seconds",
            "From a publish request to its place in the stream (plugins and engine included)",
            &["source"],
            PUBLISH_BUCKETS,
        );
        for source in PublicationSource::ALL {
            publish_duration.with_label_values(&[source.label()]);
        }
        let recoveries = counter_vec(
            &mut r,
            "herald_recoveries_total",
            "Subscriptions that asked to recover, by result (recovered: every missed publication sent)",
            &["result"],
        );
        for result in ["recovered", "not_recovered"] {
            recoveries.with_label_values(&[result]);
        }
        let engine = EngineMetrics {
            calls: counter_vec(
                &mut r,
                "herald_engine_calls_total",
                "Engine calls (Redis round trips with the Redis engine), by operation",
                &["operation"],
            ),
            errors: counter_vec(
                &mut r,
                "herald_engine_errors_total",
                "Engine calls that failed, by operation",
                &["operation"],
            ),
            duration: histogram_vec(
                &mut r,
                "herald_engine_call_duration_seconds",
                "How long engine calls took, by operation",
                &["operation"],
                ENGINE_BUCKETS,
            ),
            pubsub_reconnects: counter(
                &mut r,
                "herald_engine_pubsub_reconnects_total",
                "Times the pub/sub link to Redis was lost",
            ),
        };
        let plugin_loads = counter_vec(
            &mut r,
            "herald_plugin_loads_total",
            "Plugin loads and reloads, by result (loaded, rejected)",
            &["result"],
        );
        for result in ["loaded", "rejected"] {
            plugin_loads.with_label_values(&[result]);
        }
        let deliveries = counter_vec(
            &mut r,
            "herald_deliveries_total",
            "Frames handed to subscribers' queues (publications, joins, leaves), by protocol",
            &["protocol"],
        );
        let limit_refusals = counter_vec(
            &mut r,
            "herald_limit_refusals_total",
            "Requests and connections refused by a limit, by limit",
            &["limit"],
        );
        Self {
            connection_kinds: Mutex::default(),
            connections: gauge_vec(
                &mut r,
                "herald_connections",
                "Open client connections",
                &["protocol", "transport"],
            ),
            connects: counter_vec(
                &mut r,
                "herald_connects_total",
                "Client connections accepted",
                &["protocol", "transport"],
            ),
            subscriptions: gauge_vec(
                &mut r,
                "herald_subscriptions",
                "Subscriptions held by client connections",
                &["protocol", "transport"],
            ),
            bytes_received: counter_vec(
                &mut r,
                "herald_transport_received_bytes_total",
                "Bytes read from client connections (after TLS)",
                &["protocol", "transport"],
            ),
            bytes_sent: counter_vec(
                &mut r,
                "herald_transport_sent_bytes_total",
                "Bytes written to client connections (before TLS)",
                &["protocol", "transport"],
            ),
            slow_closes: counter_vec(
                &mut r,
                "herald_slow_consumer_closes_total",
                "Connections closed because their outbound queue overflowed",
                &["protocol", "transport"],
            ),
            disconnects: counter_vec(
                &mut r,
                "herald_disconnects_total",
                "Client connections ended, by close code (0: the client went away)",
                &["protocol", "code"],
            ),
            commands: counter_vec(
                &mut r,
                "herald_commands_total",
                "Client commands (Centrifugo) and events (Pusher), by type",
                &["protocol", "command"],
            ),
            command_errors: counter_vec(
                &mut r,
                "herald_command_errors_total",
                "Client commands answered with an error, by type and error code",
                &["protocol", "command", "code"],
            ),
            publications,
            publish_duration,
            deliveries,
            fanout_duration: histogram(
                &mut r,
                "herald_fanout_duration_seconds",
                "How long handing one publication to this node's subscribers took",
                FANOUT_BUCKETS,
            ),
            stream_gaps: counter(
                &mut r,
                "herald_stream_gaps_total",
                "Gaps found in subscribers' streams (lost publications, a new epoch); each subscriber recovers",
            ),
            recoveries,
            engine,
            plugin_call_duration: histogram_vec(
                &mut r,
                "herald_plugin_call_duration_seconds",
                "How long plugin hook calls took, by plugin and hook",
                &["plugin", "hook"],
                PLUGIN_BUCKETS,
            ),
            plugin_loads,
            plugin_load_duration: histogram(
                &mut r,
                "herald_plugin_load_duration_seconds",
                "How long plugin loads and reloads took (compile, instantiate, init)",
                RELOAD_BUCKETS,
            ),
            queue_entries: counter_vec(
                &mut r,
                "herald_queue_entries_total",
                "Queue entries consumed and acknowledged, by stream and result (published, dead_lettered, gone: trimmed before it was read)",
                &["stream", "result"],
            ),
            queue_retries: counter_vec(
                &mut r,
                "herald_queue_retries_total",
                "Queue entries tried again after a failure, by stream",
                &["stream"],
            ),
            queue_lag: gauge_vec(
                &mut r,
                "herald_queue_lag",
                "Entries of the stream not yet delivered to Herald's consumer group, by stream",
                &["stream"],
            ),
            limit_refusals,
            outbound_queue_bytes: gauge(
                &mut r,
                "herald_outbound_queue_bytes",
                "Bytes waiting in client connections' outbound queues",
            ),
            ready: gauge(
                &mut r,
                "herald_ready",
                "1 when /ready answers 200 (the node should get new clients), else 0",
            ),
            webhooks_queued: gauge(
                &mut r,
                "herald_webhooks_queued",
                "Webhook events waiting to be sent",
            ),
            rendering: Mutex::new(()),
            registry: r.registry,
            names: r.names,
        }
    }

    /// The name of every `herald_*` family this node may export, used or not yet.
    pub fn family_names(&self) -> Vec<String> {
        let mut names = self.names.clone();
        names.extend(SCRAPED_FAMILIES.map(String::from));
        names.sort();
        names
    }

    /// The running totals the admin page shows.
    pub fn totals(&self) -> Totals {
        let sum = |vec: &IntCounterVec| -> u64 {
            vec.collect()
                .iter()
                .flat_map(|family| family.get_metric())
                .map(|metric| metric.get_counter().get_value() as u64)
                .sum()
        };
        let mut publish_buckets: Vec<(f64, u64)> =
            PUBLISH_BUCKETS.iter().map(|b| (*b, 0)).collect();
        for family in self.publish_duration.collect() {
            for metric in family.get_metric() {
                for (total, bucket) in publish_buckets
                    .iter_mut()
                    .zip(metric.get_histogram().get_bucket())
                {
                    total.1 += bucket.cumulative_count();
                }
            }
        }
        Totals {
            deliveries: sum(&self.deliveries),
            publications: sum(&self.publications),
            publish_buckets,
        }
    }

    /// The instruments of connections speaking `protocol` over `transport`.
    pub fn connection_kind(
        &self,
        protocol: &'static str,
        transport: &'static str,
    ) -> Arc<ConnectionMetrics> {
        lock(&self.connection_kinds)
            .entry((protocol, transport))
            .or_insert_with(|| {
                let labels = [protocol, transport];
                Arc::new(ConnectionMetrics {
                    connections: self.connections.with_label_values(&labels),
                    connects: self.connects.with_label_values(&labels),
                    subscriptions: self.subscriptions.with_label_values(&labels),
                    bytes_received: self.bytes_received.with_label_values(&labels),
                    bytes_sent: self.bytes_sent.with_label_values(&labels),
                    slow_closes: self.slow_closes.with_label_values(&labels),
                    disconnects: self.disconnects.clone(),
                    protocol,
                })
            })
            .clone()
    }

    /// Counts a client command (Centrifugo) or event (Pusher) of type `command`.
    pub fn command(&self, protocol: &str, command: &str) {
        self.commands.with_label_values(&[protocol, command]).inc();
    }

    /// Counts a client command answered with the error `code`.
    pub fn command_error(&self, protocol: &str, command: &str, code: u32) {
        let mut buffer = itoa::Buffer::new();
        self.command_errors
            .with_label_values(&[protocol, command, buffer.format(code)])
            .inc();
    }

    /// Counts a publication accepted into a channel of `namespace` (`""` for none).
    pub fn published(&self, source: PublicationSource, namespace: &str) {
        self.publications
            .with_label_values(&[source.label(), namespace])
            .inc();
    }

    /// How long a publish request took, from its arrival to its last channel's place in the stream.
    pub fn publish_took(&self, source: PublicationSource, took: Duration) {
        self.publish_duration
            .with_label_values(&[source.label()])
            .observe(took.as_secs_f64());
    }

    /// The delivery counter of `protocol`, for the hub to keep.
    pub fn deliveries(&self, protocol: &str) -> IntCounter {
        self.deliveries.with_label_values(&[protocol])
    }

    /// Counts a subscription's recovery by whether every missed publication was sent.
    pub fn recovery(&self, recovered: bool) {
        let result = if recovered {
            "recovered"
        } else {
            "not_recovered"
        };
        self.recoveries.with_label_values(&[result]).inc();
    }

    /// The engine's instruments.
    pub fn engine(&self) -> &EngineMetrics {
        &self.engine
    }

    /// The call-duration histogram of one plugin's hook, for the plugin to keep.
    pub fn plugin_call_duration(&self, plugin: &str, hook: &str) -> Histogram {
        self.plugin_call_duration.with_label_values(&[plugin, hook])
    }

    /// Counts a plugin load or reload and how long it took.
    pub fn plugin_loaded(&self, loaded: bool, took: Duration) {
        let result = if loaded { "loaded" } else { "rejected" };
        self.plugin_loads.with_label_values(&[result]).inc();
        self.plugin_load_duration.observe(took.as_secs_f64());
    }

    /// Counts a consumed queue entry of `stream` by result (`published`, `dead_lettered`, `gone`).
    pub fn queue_entry(&self, stream: &str, result: &str) {
        self.queue_entries
            .with_label_values(&[stream, result])
            .inc();
    }

    /// Counts a queue entry tried again.
    pub fn queue_retry(&self, stream: &str) {
        self.queue_retries.with_label_values(&[stream]).inc();
    }

    /// Sets how far Herald's consumer group is behind on `stream`.
    pub fn queue_lag(&self, stream: &str, lag: u64) {
        self.queue_lag
            .with_label_values(&[stream])
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
    }

    /// Counts a refusal by the limit that refused, named by its configuration key (`max_connections`,
    /// `commands_per_second`, …).
    pub fn limit_refused(&self, limit: &str) {
        self.limit_refusals.with_label_values(&[limit]).inc();
    }

    /// The Prometheus text exposition (format 0.0.4) of every instrument, with `snapshot`'s values.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let _rendering = lock(&self.rendering);
        self.outbound_queue_bytes
            .set(i64::try_from(snapshot.outbound_queue_bytes).unwrap_or(i64::MAX));
        self.ready.set(i64::from(snapshot.ready));
        self.webhooks_queued
            .set(i64::try_from(snapshot.webhooks_queued).unwrap_or(i64::MAX));
        let mut families = self.registry.gather();
        families.extend(plugin_families(&snapshot.plugins));
        families.extend(webhook_family(snapshot.webhook_events));
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut text)
            .expect("text encoding of gathered metrics");
        String::from_utf8(text).expect("the text format is UTF-8")
    }
}

const WEBHOOK_EVENTS: &str = "herald_webhook_events_total";
const PLUGIN_CALLS: &str = "herald_plugin_calls_total";
const PLUGIN_DENIES: &str = "herald_plugin_denies_total";
const PLUGIN_FAILURES: &str = "herald_plugin_failures_total";

/// The families built at scrape time from their owners' counters.
const SCRAPED_FAMILIES: [&str; 4] = [WEBHOOK_EVENTS, PLUGIN_CALLS, PLUGIN_DENIES, PLUGIN_FAILURES];

/// The webhook event counters, built afresh from the webhooks' own at each scrape.
fn webhook_family(events: [u64; 3]) -> Vec<prometheus::proto::MetricFamily> {
    let family = IntCounterVec::new(
        Opts::new(
            WEBHOOK_EVENTS,
            "Pusher webhook events by result: sent, failed (given up after retrying), dropped (queue full)",
        ),
        &["result"],
    )
    .expect("valid metric");
    for (result, count) in ["sent", "failed", "dropped"].into_iter().zip(events) {
        family.with_label_values(&[result]).inc_by(count);
    }
    family.collect()
}

/// The plugin counters, built afresh from the plugins' own counters at each scrape.
fn plugin_families(plugins: &[PluginSnapshot]) -> Vec<prometheus::proto::MetricFamily> {
    let calls = IntCounterVec::new(
        Opts::new(
            PLUGIN_CALLS,
            "Plugin hook calls, by plugin (since it was last loaded)",
        ),
        &["plugin"],
    )
    .expect("valid metric");
    let denies = IntCounterVec::new(
        Opts::new(
            PLUGIN_DENIES,
            "Plugin hook calls that denied, by plugin (since it was last loaded)",
        ),
        &["plugin"],
    )
    .expect("valid metric");
    let failures = IntCounterVec::new(
        Opts::new(
            PLUGIN_FAILURES,
            "Plugin hook calls that failed (the decision failed closed), by plugin, hook and kind",
        ),
        &["plugin", "hook", "kind"],
    )
    .expect("valid metric");
    for plugin in plugins {
        calls
            .with_label_values(&[plugin.name.as_str()])
            .inc_by(plugin.calls);
        denies
            .with_label_values(&[plugin.name.as_str()])
            .inc_by(plugin.denies);
        for (hook, kind, count) in &plugin.failures {
            failures
                .with_label_values(&[plugin.name.as_str(), hook, kind])
                .inc_by(*count);
        }
    }
    [calls, denies, failures]
        .iter()
        .flat_map(Collector::collect)
        .filter(|family| !family.get_metric().is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_names_every_family_once_with_help_and_type() {
        let metrics = Metrics::new(&["chat"]);
        let kind = metrics.connection_kind("centrifuge", "websocket");
        kind.connects.inc();
        kind.disconnected(3001);
        metrics.published(PublicationSource::Api, "chat");
        let text = metrics.render(&Snapshot {
            ready: true,
            plugins: vec![PluginSnapshot {
                name: "acl".into(),
                calls: 3,
                denies: 1,
                failures: vec![("subscribe", "deadline", 1)],
            }],
            ..Snapshot::default()
        });
        for line in [
            "herald_connects_total{protocol=\"centrifuge\",transport=\"websocket\"} 1",
            "herald_disconnects_total{code=\"3001\",protocol=\"centrifuge\"} 1",
            "herald_publications_total{namespace=\"chat\",source=\"api\"} 1",
            "herald_publications_total{namespace=\"\",source=\"queue\"} 0",
            "herald_ready 1",
            "herald_plugin_calls_total{plugin=\"acl\"} 3",
            "herald_plugin_failures_total{hook=\"subscribe\",kind=\"deadline\",plugin=\"acl\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let mut unique = types.clone();
        unique.dedup();
        assert_eq!(types, unique, "each family once");
    }

    #[test]
    fn a_connection_kind_is_resolved_once() {
        let metrics = Metrics::default();
        let a = metrics.connection_kind("pusher", "websocket");
        let b = metrics.connection_kind("pusher", "websocket");
        assert!(Arc::ptr_eq(&a, &b));
    }
}
