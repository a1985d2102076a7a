//! `herald-load`: the load tool for Herald and the peer servers it is compared with.
//!
//! `herald-load run` opens N subscriber connections (spread over source addresses 127.0.0.x), subscribes
//! them in the Centrifugo protocol, the Pusher protocol, a raw WebSocket dialect or socket.io, optionally
//! holds them idle, publishes M stamped messages through HTTP or from the clients at a fixed or maximum
//! rate, and reports connect rate, deliveries/s, latency percentiles, losses, the server's RSS and CPU
//! (from `/proc`) and the tool's own CPU — as a human summary and as JSON (`--json`). `herald-load table`
//! turns JSON reports into the Markdown table of BENCHMARKS.md. `herald-load floor` measures what the
//! kernel alone charges for the same fan-out (the yardstick under every server's latency).
//! `tests/load/scenarios` runs the benchmark scenarios.
//!
//! # Layout
//! - `wire`: the dialects as pure functions (payload stamps, handshakes, publish frames).
//! - `connection`: one subscriber connection's I/O.
//! - `floor`: the bare-socket fan-out.
//! - `publisher`: pacing and sending the messages.
//! - `pusher_api`: signed requests to the Pusher HTTP API (`POST /apps/{id}/events`).
//! - `measure`: shared counters, latency histograms, `/proc` sampling.
//! - `report`: JSON document, summary, Markdown table.

mod connection;
mod floor;
mod measure;
mod publisher;
mod pusher_api;
mod report;
mod stream;
mod wire;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::connection::Dial;
use crate::measure::{ProcessSample, Tally, sample_process};
use crate::publisher::{HttpApi, Plan, Route};
use crate::pusher_api::PusherApp;
use crate::report::{ConnectPhase, Latency, PublishPhase, Report, ServerUsage};
use crate::wire::Protocol;

/// Load tool for Herald (Centrifugo or Pusher protocol) and peer WebSocket servers.
#[derive(Debug, Parser)]
#[command(name = "herald-load", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one load scenario and report.
    Run(Box<RunArgs>),
    /// Measure the kernel's own cost of a fan-out: plain writes to loopback TCP connections, no server.
    Floor(floor::FloorArgs),
    /// Print a Markdown table of JSON reports (from `run --json`).
    Table {
        /// Report files, one row each, in this order.
        files: Vec<PathBuf>,
    },
}

/// Which HTTP API publishes (with `--publish-from http`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PublishApi {
    /// The server's own endpoint: Herald's `POST /api/publish` (with `X-API-Key`), the peers' `/publish`.
    Own,
    /// The Pusher HTTP API, `POST /apps/{app_id}/events` signed with `--pusher-key`/`--pusher-secret`
    /// (Pusher protocol only); `--publish-url` is that events URL.
    Pusher,
}

/// Where published messages come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Source {
    /// HTTP publish requests (Herald: `POST /api/publish`).
    Http,
    /// The subscribed clients publish to their first channel, taking turns.
    Clients,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Name of the run in the report.
    #[arg(long, default_value = "run")]
    label: String,
    /// Dialect spoken to the server.
    #[arg(long, value_enum, default_value = "centrifuge")]
    protocol: Protocol,
    /// How connections reach the server: WebSocket, or (Centrifugo protocol, Herald) HTTP streaming or
    /// SSE, at the host and port of `--url`.
    #[arg(long, value_enum, default_value = "websocket")]
    transport: stream::Transport,
    /// WebSocket URL; `{channels}` is replaced by the connection's channels joined with commas (raw mode).
    /// Pusher mode: `ws://127.0.0.1:8000/app/<key>?protocol=7&client=herald-load&version=1`.
    #[arg(long, default_value = "ws://127.0.0.1:8000/connection/websocket")]
    url: String,
    /// HTTP publish URL (raw and socket.io modes add `?channel=<name>`; pusher mode posts to Herald's
    /// `/api/publish` as centrifuge mode does, tagging the publication with the event name `load`; with
    /// `--publish-api pusher` it is the events URL, `http://127.0.0.1:6001/apps/<app id>/events`).
    #[arg(long, default_value = "http://127.0.0.1:8000/api/publish")]
    publish_url: String,
    /// API key sent as `X-API-Key` with HTTP publishes (`--publish-api own`).
    #[arg(long, env = "HERALD_LOAD_API_KEY")]
    api_key: Option<String>,
    /// Which HTTP API publishes: the server's own or the Pusher HTTP API.
    #[arg(long, value_enum, default_value = "own")]
    publish_api: PublishApi,
    /// The Pusher app key that signs `--publish-api pusher` requests.
    #[arg(long, required_if_eq("publish_api", "pusher"))]
    pusher_key: Option<String>,
    /// The Pusher app secret that signs `--publish-api pusher` requests.
    #[arg(
        long,
        env = "HERALD_LOAD_PUSHER_SECRET",
        required_if_eq("publish_api", "pusher")
    )]
    pusher_secret: Option<String>,
    /// Subscriber connections to open.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Channels in the run; connection i subscribes to channels (i·K + j) mod channels, j < K.
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// Channels each connection subscribes to (K).
    #[arg(long, default_value_t = 1)]
    channels_per_connection: usize,
    /// Channel names are `<prefix>-<index>`.
    #[arg(long, default_value = "bench")]
    channel_prefix: String,
    /// Local source addresses 127.0.0.1 … 127.0.0.<sources> to spread connections over (each address has
    /// about 28,000 ephemeral ports).
    #[arg(long, default_value_t = 16)]
    sources: u8,
    /// Connections being opened at the same time.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Seconds one connection may take to connect, upgrade and subscribe.
    #[arg(long, default_value_t = 20.0)]
    connect_timeout: f64,
    /// Seconds to hold the connections idle after they are subscribed (before publishing).
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
    /// Hold until this wall-clock time (seconds since the Unix epoch) instead, so that several tool
    /// processes publish in the same window.
    #[arg(long, conflicts_with = "hold")]
    publish_at: Option<f64>,
    /// Messages to publish at most (0: none, an idle run).
    #[arg(long, default_value_t = 0)]
    messages: u64,
    /// Seconds to publish at most.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Messages per second (default: as fast as deliveries keep up).
    #[arg(long, conflicts_with = "deliveries_rate")]
    rate: Option<f64>,
    /// Deliveries per second; the message rate is this divided by the subscribers per channel.
    #[arg(long)]
    deliveries_rate: Option<f64>,
    /// At maximum rate: messages whose deliveries may be outstanding at once.
    #[arg(long, default_value_t = 32)]
    window: u64,
    /// Where messages are published from.
    #[arg(long, value_enum, default_value = "http")]
    publish_from: Source,
    /// HTTP publish requests in flight at most.
    #[arg(long, default_value_t = 16)]
    http_concurrency: usize,
    /// Seconds to wait for outstanding deliveries after the last publish.
    #[arg(long, default_value_t = 10.0)]
    drain_timeout: f64,
    /// Server process to sample (RSS, CPU) from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the JSON report here (`-` for standard output).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Runtime worker threads (default: the CPUs this process may run on).
    #[arg(long)]
    threads: Option<usize>,
    /// Seconds between progress lines on standard error.
    #[arg(long, default_value_t = 2.0)]
    progress: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run(args) => run_command(*args),
        Command::Floor(args) => floor::command(&args),
        Command::Table { files } => table(&files),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("herald-load: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn table(files: &[PathBuf]) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        reports.push(
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not a herald-load report", file.display()))?,
        );
    }
    print!("{}", report::markdown_table(&reports));
    Ok(())
}

fn run_command(args: RunArgs) -> anyhow::Result<()> {
    let raised = rlimit::increase_nofile_limit(u64::MAX).context("cannot raise RLIMIT_NOFILE")?;
    let needed = args.connections as u64 + 256;
    if raised < needed {
        eprintln!(
            "warning: open-file limit is {raised}, below the {needed} this run needs; connections will fail"
        );
    }
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let report = runtime.block_on(run(&args))?;
    print!("{}", report.summary());
    if let Some(path) = &args.json {
        report::write_json(&report, path)?;
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// The server's socket address from the WebSocket URL.
async fn server_address(url: &str) -> anyhow::Result<SocketAddr> {
    let uri: tokio_tungstenite::tungstenite::http::Uri =
        url.parse().with_context(|| format!("bad URL {url}"))?;
    let host = uri.host().context("the URL has no host")?;
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("wss") => 443,
        _ => 80,
    });
    tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))
}

/// Samples the server if a pid was given; a failure is reported and the sample left out.
fn sample_server(pid: Option<u32>, tally: &Tally) -> Option<ProcessSample> {
    let pid = pid?;
    match sample_process(Some(pid)) {
        Ok(sample) => Some(sample),
        Err(error) => {
            tally.record_error(format!("server sample: {error}"));
            None
        }
    }
}

fn tool_cpu() -> f64 {
    sample_process(None).map_or(0.0, |sample| sample.cpu_seconds)
}

async fn run(args: &RunArgs) -> anyhow::Result<Report> {
    if args.channels == 0 || args.channels_per_connection == 0 {
        bail!("--channels and --channels-per-connection must be at least 1");
    }
    if args.channels_per_connection > args.channels {
        bail!("--channels-per-connection cannot exceed --channels");
    }
    if args.sources == 0 {
        bail!("--sources must be at least 1");
    }
    if args.transport != stream::Transport::Websocket && args.protocol != Protocol::Centrifuge {
        bail!(
            "--transport http-stream and sse speak the Centrifugo protocol (--protocol centrifuge)"
        );
    }
    if args.protocol == Protocol::Pusher
        && args.messages > 0
        && args.publish_from == Source::Clients
    {
        bail!(
            "--publish-from clients is not supported with --protocol pusher (client events need signed private channels)"
        );
    }
    let http_api = match args.publish_api {
        PublishApi::Own => HttpApi::Own {
            url: args.publish_url.clone(),
            api_key: args.api_key.clone(),
        },
        PublishApi::Pusher => {
            if args.protocol != Protocol::Pusher {
                bail!("--publish-api pusher needs --protocol pusher");
            }
            let (Some(key), Some(secret)) = (&args.pusher_key, &args.pusher_secret) else {
                bail!("--publish-api pusher needs --pusher-key and --pusher-secret");
            };
            HttpApi::Pusher(PusherApp::new(&args.publish_url, key, secret)?)
        }
    };
    let server = server_address(&args.url).await?;
    let channel_names: Arc<Vec<String>> = Arc::new(
        (0..args.channels)
            .map(|index| format!("{}-{index}", args.channel_prefix))
            .collect(),
    );
    let messages = usize::try_from(args.messages).context("--messages is too large")?;
    let tally = Arc::new(Tally::new(args.channels, messages)?);
    let stop = CancellationToken::new();
    let tool_cpu_start = tool_cpu();
    let server_before = sample_server(args.server_pid, &tally);

    // Progress line.
    let progress_stop = CancellationToken::new();
    let progress = tokio::spawn(report_progress(
        tally.clone(),
        args.connections as u64,
        Duration::from_secs_f64(args.progress.max(0.1)),
        progress_stop.clone(),
    ));

    // Connect phase.
    let publishers_wanted = args.messages > 0 && args.publish_from == Source::Clients;
    let (publisher_tx, mut publisher_rx) = mpsc::unbounded_channel();
    let connect_started = Instant::now();
    let slots = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut attempts = Vec::with_capacity(args.connections);
    for index in 0..args.connections {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let channel_indexes: Vec<usize> = (0..args.channels_per_connection)
            .map(|j| (index * args.channels_per_connection + j) % args.channels)
            .collect();
        let names: Vec<String> = channel_indexes
            .iter()
            .map(|&channel| channel_names[channel].clone())
            .collect();
        let dial = Dial {
            index,
            protocol: args.protocol,
            server,
            url: wire::subscribe_url(&args.url, &names),
            source: IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                0,
                1 + (index % usize::from(args.sources)) as u8,
            )),
            channel_indexes,
            channel_names: names,
            timeout: Duration::from_secs_f64(args.connect_timeout),
            transport: args.transport,
        };
        let tally = tally.clone();
        let stop = stop.clone();
        let publisher_tx = publisher_tx.clone();
        let (opened_tx, opened_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let outcome = connection::open(&dial).await;
            drop(permit);
            let link = match outcome {
                Ok(link) => link,
                Err(error) => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    tally.record_error(error);
                    drop(opened_tx);
                    return;
                }
            };
            for &channel in &dial.channel_indexes {
                tally.change_subscribers(channel, true);
            }
            tally.opened.fetch_add(1, Ordering::Relaxed);
            tally.subscribed.fetch_add(1, Ordering::Relaxed);
            let outgoing = if publishers_wanted {
                let (tx, rx) = mpsc::channel(64);
                let _ = publisher_tx.send((dial.channel_indexes[0], tx));
                Some(rx)
            } else {
                None
            };
            drop(publisher_tx);
            let _ = opened_tx.send(());
            connection::run(link, dial, tally, outgoing, stop).await;
        });
        attempts.push(opened_rx);
    }
    drop(publisher_tx);
    for attempt in attempts {
        let _ = attempt.await;
    }
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    let subscribed = tally.subscribed.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    let server_after_connect = sample_server(args.server_pid, &tally);
    let mut publishers = Vec::new();
    while let Ok(publisher) = publisher_rx.try_recv() {
        publishers.push(publisher);
    }

    let hold = match args.publish_at {
        Some(at) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            if at < now {
                eprintln!(
                    "warning: --publish-at is {:.1} s past; publishing now",
                    now - at
                );
            }
            (at - now).max(0.0)
        }
        None => args.hold,
    };
    if hold > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(hold)).await;
    }
    // Let the server settle (allocator, deferred work) before reading its memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let server_connected = sample_server(args.server_pid, &tally);

    // Publish phase.
    let mut publish = None;
    let publish_tool_cpu_start = tool_cpu();
    let server_before_publish = sample_server(args.server_pid, &tally);
    if args.messages > 0 {
        let subscribers_per_channel = (subscribed as f64 * args.channels_per_connection as f64
            / args.channels as f64)
            .max(1.0);
        let rate = args
            .rate
            .or(args.deliveries_rate.map(|d| d / subscribers_per_channel));
        let route = match args.publish_from {
            Source::Http => Route::Http {
                client: reqwest::Client::builder()
                    .pool_max_idle_per_host(args.http_concurrency)
                    .tcp_nodelay(true)
                    .build()
                    .context("cannot build the HTTP client")?,
                api: http_api,
                concurrency: args.http_concurrency,
            },
            Source::Clients => Route::Clients { publishers },
        };
        let plan = Plan {
            protocol: args.protocol,
            messages: args.messages,
            duration: Duration::from_secs_f64(args.duration),
            size: args.size,
            rate,
            window: args.window,
            channels: channel_names.clone(),
        };
        let published = publisher::publish(plan, route, tally.clone()).await;
        drain(&tally, Duration::from_secs_f64(args.drain_timeout)).await;
        let (lost, duplicates) =
            tally.losses(usize::try_from(published.messages).unwrap_or(usize::MAX));
        let received = tally.delivered.load(Ordering::Relaxed);
        let deliveries_per_second = match tally.delivery_window_ns() {
            Some((first, last)) if last > first => received as f64 / ((last - first) as f64 / 1e9),
            _ => 0.0,
        };
        publish = Some(PublishPhase {
            source: match (args.publish_from, args.publish_api) {
                (Source::Http, PublishApi::Own) => "http".to_string(),
                (Source::Http, PublishApi::Pusher) => "pusher-http-api".to_string(),
                (Source::Clients, _) => "clients".to_string(),
            },
            messages: published.messages,
            failed: published.failed,
            size: args.size,
            rate,
            publish_seconds: published.seconds,
            deliveries_expected: tally.expected.load(Ordering::Relaxed),
            deliveries_received: received,
            lost,
            duplicates,
            deliveries_per_second,
            latency_us: Latency::of(&tally.latency()?),
        });
    }
    let tool_cpu_publish_seconds = tool_cpu() - publish_tool_cpu_start;
    let server_end = sample_server(args.server_pid, &tally);
    stop.cancel();
    progress_stop.cancel();
    let _ = progress.await;

    let server = match (
        args.server_pid,
        server_before,
        server_after_connect,
        server_connected,
        server_before_publish,
        server_end,
    ) {
        (Some(pid), Some(before), Some(after_connect), Some(connected), Some(pre), Some(end)) => {
            let delivered = publish.as_ref().map(|p| p.deliveries_received);
            let publish_cpu = end.cpu_seconds - pre.cpu_seconds;
            Some(ServerUsage {
                pid,
                rss_before_kib: before.rss_kib,
                rss_connected_kib: connected.rss_kib,
                rss_end_kib: end.rss_kib,
                kib_per_connection: connected.rss_kib.saturating_sub(before.rss_kib) as f64
                    / subscribed.max(1) as f64,
                cpu_connect_seconds: after_connect.cpu_seconds - before.cpu_seconds,
                cpu_publish_seconds: publish_cpu,
                deliveries_per_cpu_second: delivered
                    .filter(|_| publish_cpu > 0.0)
                    .map(|d| d as f64 / publish_cpu),
            })
        }
        _ => None,
    };
    Ok(Report {
        label: args.label.clone(),
        protocol: args.protocol,
        connections: ConnectPhase {
            requested: args.connections as u64,
            subscribed,
            failed,
            channels: args.channels as u64,
            channels_per_connection: args.channels_per_connection as u64,
            seconds: connect_seconds,
            per_second: subscribed as f64 / connect_seconds.max(1e-9),
        },
        publish,
        server,
        tool_cpu_seconds: tool_cpu() - tool_cpu_start,
        tool_cpu_publish_seconds,
        closed_early: tally.closed_early.load(Ordering::Relaxed),
        errors: tally.errors(),
    })
}

/// Waits until every expected delivery arrived, or `timeout` passed.
async fn drain(tally: &Tally, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let expected = tally.expected.load(Ordering::Relaxed);
        if tally.delivered.load(Ordering::Relaxed) >= expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Prints a progress line every `every` until `stop`.
async fn report_progress(tally: Arc<Tally>, wanted: u64, every: Duration, stop: CancellationToken) {
    let started = Instant::now();
    let mut last_delivered = 0u64;
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let delivered = tally.delivered.load(Ordering::Relaxed);
        eprintln!(
            "[{:>6.1}s] subscribed {}/{wanted} (failed {}, closed {}) | delivered {}/{} ({:.0}/s)",
            started.elapsed().as_secs_f64(),
            tally.subscribed.load(Ordering::Relaxed),
            tally.failed.load(Ordering::Relaxed),
            tally.closed_early.load(Ordering::Relaxed),
            delivered,
            tally.expected.load(Ordering::Relaxed),
            (delivered - last_delivered) as f64 / every.as_secs_f64(),
        );
        last_delivered = delivered;
    }
}
