//! `herald-load floor`: what the kernel alone charges for a fan-out on this machine, as the yardstick for the
//! servers' latency figures.
//!
//! One thread per "server" core (`--writer-cpus`, default one core) writes a message to each of its share of N
//! loopback TCP connections in turn — no WebSocket, no framing, no queue, nothing but `write` — and a reader
//! pinned to another core drains the connections on a single-threaded tokio runtime, as a client would. Each burst is one message to every
//! connection (the shape of one publication to a channel of N subscribers); the reader records, per
//! delivery, the time since the burst started. No server can deliver a burst faster than this loop does, so
//! its percentiles are the floor under any server's fan-out latency at the same rate and size.
//! `--write writev` writes the way a server's direct path does instead (non-blocking, through tokio's
//! reactor, header and message in one `writev`), to split the kernel's price for that from the server's own.
//! `--reader-work-us` has the reader spend CPU on each message as a decoding client does, to see whether a
//! busier reading core changes what the writes cost.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::AsyncReadExt;

use crate::report::Latency;

#[derive(Debug, clap::Args)]
pub(crate) struct FloorArgs {
    /// Connections, each receiving every burst's message.
    #[arg(long, default_value_t = 5000)]
    connections: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Bursts (messages to every connection) to send.
    #[arg(long, default_value_t = 40)]
    bursts: u32,
    /// Deliveries per second to pace the bursts at (a burst every connections / rate seconds).
    #[arg(long, default_value_t = 20_000.0)]
    deliveries_rate: f64,
    /// Cores to write from, one thread each pinned to it, each writing to its share of the connections.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    writer_cpus: Vec<usize>,
    /// Core the reading thread is pinned to.
    #[arg(long, default_value_t = 1)]
    reader_cpu: usize,
    /// CPU the reader spends on each message after reading it, in microseconds (busy, on its core): a real
    /// client decodes what it reads (`herald-load`'s WebSocket clients spend ~8 µs per delivery here), and
    /// how busy the reading core is changes what each write costs the writing one. 0: only count bytes.
    #[arg(long, default_value_t = 0)]
    reader_work_us: u64,
    /// Write to the connections in a random order (fixed for the run) within each run of this many
    /// connections instead of the order they were accepted in (0: in order; at least `--connections`:
    /// all at random, as from a hash table; 256: the order clients subscribe in when 256 connect at once).
    #[arg(long, default_value_t = 0)]
    shuffle: usize,
    /// Disable Nagle's algorithm on the writing side, as WebSocket servers do.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    nodelay: bool,
    /// How each delivery is written: `write` (a blocking `write` of the message) or `writev` (the way a
    /// server's direct path writes: a non-blocking socket registered with tokio's reactor, a readiness
    /// check and one `writev` of a 4-byte WebSocket header and the message).
    #[arg(long, value_enum, default_value_t = WriteMode::Write)]
    write: WriteMode,
    /// Write the JSON report here (`-` for standard output).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// See [`FloorArgs::write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum WriteMode {
    Write,
    Writev,
}

/// What `floor` measured.
#[derive(Debug, Serialize)]
pub(crate) struct FloorReport {
    pub connections: usize,
    pub writer_cpus: Vec<usize>,
    pub size: usize,
    pub bursts: u32,
    pub deliveries_rate: f64,
    pub write: WriteMode,
    /// CPU the reader spent on each message, in microseconds.
    pub reader_work_us: u64,
    /// Mean time per `write` of one writer thread over all bursts, in microseconds.
    pub write_us_mean: f64,
    /// Writer time for a whole burst, fastest / median / slowest, in milliseconds.
    pub burst_ms_min: f64,
    pub burst_ms_median: f64,
    pub burst_ms_max: f64,
    /// Time from a burst's start until a delivery was read, over all deliveries.
    pub latency_us: Latency,
}

impl FloorReport {
    pub(crate) fn summary(&self) -> String {
        let l = &self.latency_us;
        format!(
            "floor: {} connections × {} B, {} bursts at {} deliveries/s, {:?} from cores {:?}, reader {} µs a message\n\
             writers: {:.2} µs per write and core; a burst takes {:.1} / {:.1} / {:.1} ms (min / median / max)\n\
             latency from burst start: p50 {} p90 {} p99 {} p99.9 {} max {} (mean {:.0}) µs over {} deliveries\n",
            self.connections,
            self.size,
            self.bursts,
            self.deliveries_rate,
            self.write,
            self.writer_cpus,
            self.reader_work_us,
            self.write_us_mean,
            self.burst_ms_min,
            self.burst_ms_median,
            self.burst_ms_max,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            l.mean,
            l.count,
        )
    }
}

/// The reader's shared view: when the current burst started and what has arrived.
struct Shared {
    anchor: Instant,
    burst_started_ns: AtomicU64,
    received_bytes: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

pub(crate) fn run(args: &FloorArgs) -> anyhow::Result<FloorReport> {
    if args.connections == 0 || args.size == 0 || args.bursts == 0 {
        bail!("--connections, --size and --bursts must be at least 1");
    }
    if args.write == WriteMode::Writev && !(126..=usize::from(u16::MAX)).contains(&args.size) {
        bail!("--write writev frames with a 16-bit length: --size must be 126 to 65535");
    }
    if args.deliveries_rate <= 0.0 {
        bail!("--deliveries-rate must be positive");
    }
    if args.writer_cpus.is_empty() || args.writer_cpus.len() > args.connections {
        bail!("--writer-cpus needs between one core and one core per connection");
    }
    rlimit::increase_nofile_limit(u64::MAX).context("cannot raise RLIMIT_NOFILE")?;
    let cores = core_affinity::get_core_ids().context("cannot list the cores")?;
    let core = |index: usize| {
        cores
            .iter()
            .copied()
            .find(|core| core.id == index)
            .with_context(|| format!("core {index} is not available to this process"))
    };
    let reader_core = core(args.reader_cpu)?;
    let writer_cores = args
        .writer_cpus
        .iter()
        .map(|&index| core(index))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot listen")?;
    let address = listener.local_addr()?;
    let shared = Arc::new(Shared {
        anchor: Instant::now(),
        burst_started_ns: AtomicU64::new(0),
        received_bytes: AtomicU64::new(0),
        latency: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
    });
    let (connected_tx, connected_rx) = std::sync::mpsc::channel();
    let reader = {
        let shared = Arc::clone(&shared);
        let (connections, size) = (args.connections, args.write.wire_size(args.size));
        let work = Duration::from_micros(args.reader_work_us);
        std::thread::spawn(move || {
            core_affinity::set_for_current(reader_core);
            read_all(address, connections, size, work, &shared, &connected_tx)
        })
    };
    // The listener does not block, so a reader that fails to connect is noticed instead of awaited forever.
    listener.set_nonblocking(true)?;
    let mut sockets = Vec::with_capacity(args.connections);
    let mut reader_connected = false;
    while sockets.len() < args.connections || !reader_connected {
        match listener.accept() {
            Ok((socket, _)) => {
                socket.set_nonblocking(false)?;
                socket.set_nodelay(args.nodelay)?;
                sockets.push(socket);
                continue;
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error).context("accept"),
        }
        match connected_rx.try_recv() {
            Ok(connected) => {
                connected.context("the reader could not connect")?;
                reader_connected = true;
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
            Err(std::sync::mpsc::TryRecvError::Disconnected) => bail!("the reader stopped"),
        }
        std::thread::sleep(Duration::from_millis(1));
    }

    if args.shuffle > 1 {
        use rand::seq::SliceRandom;
        for window in sockets.chunks_mut(args.shuffle) {
            window.shuffle(&mut rand::rng());
        }
    }
    // Writers start a burst together at the first barrier and report done at the second; a writer that
    // fails still meets both barriers (and stops writing) so nobody waits forever.
    let message = vec![b'x'; args.size];
    let share = sockets.len().div_ceil(writer_cores.len());
    // Fewer chunks than cores when the connections do not divide evenly (4 over 3 cores: 2 + 2).
    let writers_used = sockets.len().div_ceil(share);
    let burst_barrier = Barrier::new(writers_used + 1);
    let failed = AtomicBool::new(false);
    let period = Duration::from_secs_f64(args.connections as f64 / args.deliveries_rate);
    let burst_bytes = (args.connections * args.write.wire_size(args.size)) as u64;
    let mut bursts = Vec::with_capacity(args.bursts as usize);
    let outcome = std::thread::scope(|scope| {
        let mut writers = Vec::new();
        for (chunk, &writer_core) in sockets.chunks_mut(share).zip(&writer_cores) {
            let (message, burst_barrier, failed) = (&message, &burst_barrier, &failed);
            writers.push(scope.spawn(move || {
                core_affinity::set_for_current(writer_core);
                // A writer that cannot be set up fails like one whose write fails: it still meets
                // every barrier.
                let (mut writer, mut outcome) = match Writer::new(chunk, args.write) {
                    Ok(writer) => (Some(writer), Ok(())),
                    Err(error) => {
                        failed.store(true, Ordering::Release);
                        (None, Err(error))
                    }
                };
                for _ in 0..args.bursts {
                    burst_barrier.wait();
                    if let (Ok(()), Some(writer)) = (&outcome, writer.as_mut()) {
                        outcome = writer.burst(message);
                        if outcome.is_err() {
                            failed.store(true, Ordering::Release);
                        }
                    }
                    burst_barrier.wait();
                }
                outcome
            }));
        }
        let mut next = Instant::now();
        let mut coordination = Ok(());
        for burst in 1..=u64::from(args.bursts) {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            next += period;
            let started = Instant::now();
            shared
                .burst_started_ns
                .store(nanos_since(shared.anchor, started), Ordering::Release);
            burst_barrier.wait();
            burst_barrier.wait();
            bursts.push(started.elapsed());
            if failed.load(Ordering::Acquire) || coordination.is_err() {
                continue;
            }
            // Bursts must not overlap, or a delivery would be timed against the wrong start.
            let deadline = Instant::now() + Duration::from_secs(10);
            while shared.received_bytes.load(Ordering::Acquire) < burst * burst_bytes {
                if Instant::now() > deadline {
                    coordination = Err(anyhow::anyhow!(
                        "the reader did not receive burst {burst} within 10 s"
                    ));
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        for writer in writers {
            writer
                .join()
                .map_err(|_| anyhow::anyhow!("a writer panicked"))?
                .context("write")?;
        }
        coordination
    });
    drop(sockets);
    let joined = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader panicked"))?;
    outcome?;
    joined?;

    let total: Duration = bursts.iter().sum();
    bursts.sort();
    let ms = |duration: Duration| duration.as_secs_f64() * 1e3;
    let latency = Latency::of(&shared.latency.lock().expect("latency lock"));
    Ok(FloorReport {
        connections: args.connections,
        size: args.size,
        bursts: args.bursts,
        deliveries_rate: args.deliveries_rate,
        write: args.write,
        reader_work_us: args.reader_work_us,
        writer_cpus: args.writer_cpus.clone(),
        write_us_mean: total.as_secs_f64() * 1e6 * writers_used as f64
            / (args.connections as f64 * bursts.len() as f64),
        burst_ms_min: ms(bursts[0]),
        burst_ms_median: ms(bursts[bursts.len() / 2]),
        burst_ms_max: ms(bursts[bursts.len() - 1]),
        latency_us: latency,
    })
}

pub(crate) fn command(args: &FloorArgs) -> anyhow::Result<()> {
    let report = run(args)?;
    print!("{}", report.summary());
    if let Some(path) = &args.json {
        crate::report::write_json(&report, path)?;
    }
    Ok(())
}

impl WriteMode {
    /// Bytes on the wire for a message of `size` bytes.
    fn wire_size(self, size: usize) -> usize {
        match self {
            Self::Write => size,
            Self::Writev => size + 4,
        }
    }
}

/// One writer thread's connections, written the way [`WriteMode`] says.
enum Writer<'a> {
    Blocking(&'a mut [std::net::TcpStream]),
    /// The runtime owns the sockets' registrations; `try_write_vectored` needs no task, only the reactor.
    Reactor(tokio::runtime::Runtime, Vec<tokio::net::TcpStream>),
}

impl<'a> Writer<'a> {
    fn new(sockets: &'a mut [std::net::TcpStream], mode: WriteMode) -> std::io::Result<Self> {
        if mode == WriteMode::Write {
            return Ok(Self::Blocking(sockets));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let registered = runtime.block_on(async {
            sockets
                .iter()
                .map(|socket| {
                    let socket = socket.try_clone()?;
                    socket.set_nonblocking(true)?;
                    tokio::net::TcpStream::from_std(socket)
                })
                .collect::<std::io::Result<Vec<_>>>()
        })?;
        // A new registration is not known to be writable until the reactor has polled it once.
        for socket in &registered {
            runtime.block_on(socket.writable())?;
        }
        Ok(Self::Reactor(runtime, registered))
    }

    fn burst(&mut self, message: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Blocking(sockets) => sockets
                .iter_mut()
                .try_for_each(|socket| socket.write_all(message)),
            Self::Reactor(runtime, sockets) => {
                let _entered = runtime.enter();
                // A binary frame's header with a 16-bit length, as a server frames a 1 KiB message.
                let length = u16::try_from(message.len())
                    .unwrap_or(u16::MAX)
                    .to_be_bytes(); // checked in `run`
                let header = [0x82, 126, length[0], length[1]];
                let parts = [
                    std::io::IoSlice::new(&header),
                    std::io::IoSlice::new(message),
                ];
                for socket in sockets.iter() {
                    // The reader drains between bursts, so the socket has room; a readiness the
                    // reactor has not caught up with yet is waited for (and counted in the time).
                    let written = loop {
                        match socket.try_write_vectored(&parts) {
                            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                                runtime.block_on(socket.writable())?;
                            }
                            other => break other?,
                        }
                    };
                    // A short write would cut the stream mid-message, so it fails the run instead.
                    if written != header.len() + message.len() {
                        return Err(std::io::Error::other("short write"));
                    }
                }
                Ok(())
            }
        }
    }
}

fn nanos_since(anchor: Instant, instant: Instant) -> u64 {
    u64::try_from(instant.duration_since(anchor).as_nanos()).unwrap_or(u64::MAX)
}

/// Connects every connection, reports that on `connected`, then reads until the writer closes them,
/// recording each whole message's delay since the start of its burst and then spending `work` on it.
fn read_all(
    address: SocketAddr,
    connections: usize,
    size: usize,
    work: Duration,
    shared: &Arc<Shared>,
    connected: &std::sync::mpsc::Sender<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(async {
        let mut streams = Vec::with_capacity(connections);
        for _ in 0..connections {
            match tokio::net::TcpStream::connect(address).await {
                Ok(stream) => streams.push(stream),
                Err(error) => {
                    let _ = connected.send(Err(error.into()));
                    return Ok(());
                }
            }
        }
        let _ = connected.send(Ok(()));
        let mut tasks = tokio::task::JoinSet::new();
        for mut stream in streams {
            let shared = Arc::clone(shared);
            tasks.spawn(async move {
                let mut buffer = vec![0; size.max(4096)];
                let mut partial = 0;
                loop {
                    let read = stream.read(&mut buffer).await?;
                    if read == 0 {
                        return anyhow::Ok(());
                    }
                    partial += read;
                    let whole = partial / size;
                    if whole > 0 {
                        partial %= size;
                        let now = nanos_since(shared.anchor, Instant::now());
                        let started = shared.burst_started_ns.load(Ordering::Acquire);
                        let delay_us = now.saturating_sub(started) / 1000;
                        shared
                            .latency
                            .lock()
                            .expect("latency lock")
                            .saturating_record_n(delay_us.max(1), whole as u64);
                        let busy_until = Instant::now() + work * whole as u32;
                        while Instant::now() < busy_until {
                            std::hint::spin_loop();
                        }
                    }
                    shared
                        .received_bytes
                        .fetch_add(read as u64, Ordering::AcqRel);
                }
            });
        }
        while let Some(outcome) = tasks.join_next().await {
            outcome??;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(connections: usize, writer_cpus: Vec<usize>) -> FloorArgs {
        FloorArgs {
            connections,
            size: 300,
            bursts: 3,
            deliveries_rate: 1_000_000.0,
            writer_cpus,
            reader_cpu: 0,
            reader_work_us: 0,
            shuffle: 0,
            nodelay: true,
            write: WriteMode::Write,
            json: None,
        }
    }

    #[test]
    fn every_delivery_of_every_burst_is_timed() {
        let report = run(&args(20, vec![0])).unwrap();
        assert_eq!(report.latency_us.count, 60);
        assert!(report.burst_ms_min <= report.burst_ms_median);
        assert!(report.burst_ms_median <= report.burst_ms_max);
    }

    #[test]
    fn connections_are_shared_between_writers() {
        let report = run(&args(7, vec![0, 0, 0])).unwrap();
        assert_eq!(report.latency_us.count, 21);
        let report = run(&args(4, vec![0, 0, 0])).unwrap();
        assert_eq!(report.latency_us.count, 12);
    }

    #[test]
    fn writev_deliveries_are_framed_and_counted_whole() {
        let mut args = args(5, vec![0, 0]);
        args.write = WriteMode::Writev;
        args.size = 126;
        // Enough bursts that counting 126-byte messages instead of 130-byte frames would find more.
        args.bursts = 32;
        let report = run(&args).unwrap();
        assert_eq!(report.latency_us.count, 5 * 32);
    }

    #[test]
    fn writev_refuses_sizes_its_header_cannot_carry() {
        let mut args = args(2, vec![0]);
        args.write = WriteMode::Writev;
        args.size = 100;
        let error = run(&args).unwrap_err();
        assert!(error.to_string().contains("126 to 65535"), "{error:#}");
    }

    #[test]
    fn an_unknown_core_is_refused() {
        let error = run(&args(2, vec![4096])).unwrap_err();
        assert!(error.to_string().contains("core 4096"), "{error:#}");
    }
}
