//! Plugin costs: one hook call through the chain on a warm (optimised) instance, loading (compiling) a
//! plugin with and without the on-disk cache, and hot reloads of every example plugin: rename into place
//! to the new version serving (baseline code), to its optimised code serving, and back to a version seen
//! before (cached); and `rate-limit`'s publish hook counting in node-local state, in cluster state on the
//! memory engine and in cluster state on Redis (a `redis-server` started for the bench on a free loopback
//! port). Needs the plugins built first: `plugins/build`.
//!
//! `cargo bench -p herald --bench plugin_hooks`
// criterion_group! and criterion_main! generate functions that cannot carry docs.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use herald::plugin::bindings::{ClientInfo, PublishRequest, PublishSource, SubscribeRequest};
use herald::plugin::chain::PublishDecision;
use herald::plugin::runtime::{Call, HostServices, Limits, PoolBounds, Runtime, Tier, Wasm};
use herald::plugin::{Plugins, PluginsConfig};

fn fixture() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/plugin/herald_test_hostile.wasm");
    assert!(
        path.is_file(),
        "{} is missing: run plugins/build first",
        path.display()
    );
    path
}

fn plugins_in(dir: &Path, cache: &Path) -> Plugins {
    let config = PluginsConfig {
        dir: dir.display().to_string(),
        cache_dir: cache.display().to_string(),
        watch: false,
        ..PluginsConfig::default()
    };
    Plugins::new(&config, Default::default(), node_local()).expect("plugin runtime")
}

/// Whether the command line's filter (criterion's first free argument, if any) selects `name`, so the
/// measurements this bench prints itself are skipped like criterion's own.
fn selected(name: &str) -> bool {
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    filter.is_none_or(|filter| name.contains(&filter))
}

/// The memory engine's shared state, for plugins' `cluster-state`.
fn node_local() -> std::sync::Arc<herald::engine::keyvalue::Stores> {
    std::sync::Arc::new(herald::engine::keyvalue::Stores::new(Default::default()))
}

fn hooks(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture(), dir.path().join("10-hostile.wasm")).unwrap();
    let plugins = plugins_in(dir.path(), &dir.path().join(".cache"));
    runtime.block_on(plugins.load_all());
    // The code that serves in the long run.
    runtime.block_on(plugins.optimized());
    assert_eq!(plugins.loaded().len(), 1, "fixture loaded");

    let data = br#"{"text":"a publication of about two hundred bytes, which is what a chat message or a small event tends to be in practice; it is scanned by the plugin and passed through"}"#.to_vec();
    let publish = PublishRequest {
        source: PublishSource::Api,
        publisher: None,
        channel: "chat:room".into(),
        data,
        tags: vec![],
    };
    // Criterion reports the mean; the tail matters too, so time single calls and print percentiles.
    let mut samples: Vec<Duration> = runtime.block_on(async {
        let mut samples = Vec::with_capacity(100_000);
        for _ in 0..100_000 {
            let started = Instant::now();
            std::hint::black_box(plugins.publish(publish.clone()).await);
            samples.push(started.elapsed());
        }
        samples
    });
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "publish hook, single calls (n = {}): p50 {:?}, p90 {:?}, p99 {:?}, p99.9 {:?}, max {:?}",
        samples.len(),
        at(0.50),
        at(0.90),
        at(0.99),
        at(0.999),
        samples[samples.len() - 1]
    );

    c.bench_function("publish hook, 1 plugin, warm instance", |b| {
        b.to_async(&runtime)
            .iter(|| plugins.publish(publish.clone()))
    });
    let subscribe = SubscribeRequest {
        client: ClientInfo {
            user: "42".into(),
            client: "c".into(),
            info: None,
        },
        channel: "chat:room".into(),
        token: String::new(),
        data: None,
        refresh: false,
    };
    c.bench_function("subscribe hook, 1 plugin, warm instance", |b| {
        b.to_async(&runtime)
            .iter(|| plugins.subscribe(subscribe.clone()))
    });

    // One version's two codes side by side, called directly (no chain): what a hook costs in the moments
    // after a reload, on baseline code, and after, on optimised code.
    let services = HostServices::new(&PluginsConfig::default(), node_local());
    let direct = Runtime::new(
        None,
        PoolBounds {
            instances: 64,
            max_memory: 64 << 20,
        },
        services,
    )
    .unwrap();
    let limits = Limits {
        deadline: Duration::from_millis(10),
        memory: 16 << 20,
        max_idle: 4,
    };
    let call = Call::Publish(publish.clone());
    for tier in [Tier::Baseline, Tier::Optimized] {
        let plugin = runtime
            .block_on(direct.load(
                "10-hostile.wasm",
                Wasm::new(std::fs::read(fixture()).unwrap()),
                tier,
                |_| Ok(("{}".to_owned(), limits)),
                &Default::default(),
            ))
            .unwrap();
        c.bench_function(
            &format!("publish hook, {} code, direct", tier.as_str()),
            |b| b.to_async(&runtime).iter(|| plugin.call(&call)),
        );
    }
}

/// Loads the fixture `iterations` times into a fresh folder with `tier`'s compiler (on-disk cache in
/// `cache`, or a fresh one), timing each load until the version serves; the background compile of
/// optimised code that follows a baseline load is waited for untimed, so it competes with no next load
/// (and its runtime is dropped).
fn timed_loads(
    runtime: &tokio::runtime::Runtime,
    iterations: u64,
    tier: Tier,
    cache: Option<&Path>,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iterations {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("10-hostile.wasm");
        std::fs::copy(fixture(), &file).unwrap();
        let fresh = dir.path().join(".cache");
        let plugins = plugins_in(dir.path(), cache.unwrap_or(&fresh));
        let started = Instant::now();
        runtime.block_on(plugins.load_file(&file, false, tier));
        total += started.elapsed();
        assert_eq!(plugins.loaded()[0].tier, tier);
        runtime.block_on(plugins.optimized());
    }
    total
}

fn loading(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("load plugin");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    // At start: straight to optimised code.
    group.bench_function("uncached, optimised code serving", |b| {
        b.iter_custom(|iterations| timed_loads(&runtime, iterations, Tier::Optimized, None))
    });
    // A reload: baseline code first.
    group.bench_function("uncached, serving (baseline code)", |b| {
        b.iter_custom(|iterations| timed_loads(&runtime, iterations, Tier::Baseline, None))
    });
    let cache = tempfile::tempdir().unwrap();
    group.bench_function("cached", |b| {
        b.iter_custom(|iterations| {
            timed_loads(&runtime, iterations, Tier::Optimized, Some(cache.path()))
        })
    });
    group.finish();
}

/// `original` with a custom section appended: same behaviour, different content hash (a "new version").
fn new_version(original: &[u8], n: u32) -> Vec<u8> {
    let name = b"herald-bench";
    let payload = n.to_le_bytes();
    let mut bytes = original.to_vec();
    bytes.push(0); // custom section
    bytes.push((1 + name.len() + payload.len()) as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(&payload);
    bytes
}

/// The example plugins, with a configuration each `init` accepts.
const EXAMPLES: [(&str, &str); 7] = [
    ("template", ""),
    ("channel_acl", ""),
    ("content_filter", ""),
    ("router", ""),
    ("rate_limit", "publishes = 20\n"),
    (
        "backend_proxy",
        "connect_url = \"http://127.0.0.1:9/connect\"\n",
    ),
    (
        "jwt_auth",
        "hmac_secret = \"bench-secret-with-enough-bytes-0123456789\"\n",
    ),
];

fn example(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../target/wasm32-wasip2/plugin/herald_plugin_{name}.wasm"
    ));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}: run plugins/build first", path.display()))
}

/// The runtime the reload and rate-limit benches run a node on: one worker thread, so the node's background
/// tasks (the plugin watcher, Redis's connection) keep running between the calls the bench makes from its
/// own thread.
fn one_worker_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Hot reloads of each example plugin through the watcher (rename into place, then poll the set every
/// 200 µs): to the new version serving on baseline code, to its optimised code serving, and a rename back
/// to the version before it (compiled before, so from the cache). Medians of `ROUNDS`, printed.
fn reload(_: &mut Criterion) {
    const ROUNDS: u32 = 7;
    if !selected("hot reload") {
        return;
    }
    let runtime = one_worker_runtime();
    let median = |mut samples: Vec<Duration>| {
        samples.sort();
        samples[samples.len() / 2]
    };
    for (name, config) in EXAMPLES {
        let dir = tempfile::tempdir().unwrap();
        let original = example(name);
        let target = dir.path().join("10-plugin.wasm");
        std::fs::write(&target, &original).unwrap();
        std::fs::write(dir.path().join("10-plugin.toml"), config).unwrap();
        let config = PluginsConfig {
            dir: dir.path().display().to_string(),
            ..PluginsConfig::default()
        };
        let plugins =
            std::sync::Arc::new(Plugins::new(&config, Default::default(), node_local()).unwrap());
        let shutdown = tokio_util::sync::CancellationToken::new();
        runtime.block_on(async {
            plugins.load_all().await;
            plugins.optimized().await;
            herald::plugin::watch::start(plugins.clone(), shutdown.clone()).unwrap();
        });
        assert_eq!(plugins.loaded().len(), 1, "{name} loaded");
        let swap_to = |bytes: &[u8], optimised: bool| {
            let before = plugins.loaded()[0].hash.clone();
            let staged = dir.path().join(".10-plugin.wasm.tmp");
            std::fs::write(&staged, bytes).unwrap();
            let started = Instant::now();
            std::fs::rename(&staged, &target).unwrap();
            loop {
                let serving = plugins.loaded()[0].clone();
                if serving.hash != before && (!optimised || serving.tier == Tier::Optimized) {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "{name}: no reload"
                );
                std::thread::sleep(Duration::from_micros(200));
            }
            let elapsed = started.elapsed();
            runtime.block_on(plugins.optimized());
            elapsed
        };
        let (mut serving, mut optimised, mut cached) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let fresh = new_version(&original, 2 * round + 1);
            let also_fresh = new_version(&original, 2 * round + 2);
            serving.push(swap_to(&fresh, false));
            optimised.push(swap_to(&also_fresh, true));
            cached.push(swap_to(&fresh, true));
        }
        println!(
            "hot reload {name} ({} KB): serving {:?}, optimised code serving {:?}, cached {:?} (medians of {ROUNDS})",
            original.len() / 1000,
            median(serving),
            median(optimised),
            median(cached),
        );
        shutdown.cancel();
    }
}

/// A `redis-server` of the bench's own on a free loopback port, killed when dropped.
struct BenchRedis {
    child: std::process::Child,
    port: u16,
}

impl BenchRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for BenchRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `rate-limit`'s publish hook, counting every publication of one user: in node-local state, in cluster
/// state on the memory engine, and in cluster state on Redis (one round trip per decision), each on a node
/// started as `herald serve` starts it.
fn rate_limit(c: &mut Criterion) {
    if !selected("rate-limit publish hook") {
        return;
    }
    let runtime = one_worker_runtime();
    let redis = BenchRedis::start();
    let publish = PublishRequest {
        source: PublishSource::Client,
        publisher: Some(ClientInfo {
            user: "42".into(),
            client: "c".into(),
            info: None,
        }),
        channel: "chat:room".into(),
        data: br#"{"text":"hi"}"#.to_vec(),
        tags: vec![],
    };
    let redis_engine = format!(
        "[engine]\ntype = \"redis\"\n[engine.redis]\naddresses = [\"{}\"]\n",
        redis.url()
    );
    for (label, scope, engine) in [
        ("node-local state", "node", String::new()),
        ("cluster state, memory engine", "cluster", String::new()),
        ("cluster state, Redis engine", "cluster", redis_engine),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("10-rate-limit.wasm"), example("rate_limit")).unwrap();
        std::fs::write(
            dir.path().join("10-rate-limit.toml"),
            format!("publishes = 1000000000\nwindow_ms = 3600000\nscope = \"{scope}\"\n"),
        )
        .unwrap();
        let config = herald::config::Config::from_toml(&format!(
            "{engine}[plugins]\ndir = {:?}\nwatch = false\n",
            dir.path().display().to_string()
        ))
        .unwrap();
        let node = runtime.block_on(herald::node::Node::start(config)).unwrap();
        let decision = runtime.block_on(node.plugins.publish(publish.clone()));
        assert!(
            matches!(decision, PublishDecision::Publish { .. }),
            "{label}: {decision:?}"
        );
        c.bench_function(&format!("rate-limit publish hook, {label}"), |b| {
            b.to_async(&runtime)
                .iter(|| node.plugins.publish(publish.clone()))
        });
    }
}

criterion_group!(benches, hooks, loading, reload, rate_limit);
criterion_main!(benches);
