//! Issue 16's design question, measured: should a plugin hook that waits on its backend suspend in an
//! async host import (what Herald does) or return "fetch this" and be called again with the answer (a
//! continuation)? Both run the same guest code (`tests/plugins/continuation`, built by `plugins/build`) on
//! an engine configured like Herald's (Cranelift, pooling allocator, epoch deadline, `call_async`), taking a
//! warm instance from an idle pool for each call as Herald does.
//!
//! Two measurements:
//! - the CPU cost of one decision (criterion): the pure hook; the suspending hook, whose backend answers
//!   after one trip through the scheduler (a real suspension and resumption of the instance's fiber); the
//!   stepwise hook, two calls with the same scheduler trip between them;
//! - what a slow backend costs (printed): 1,000 decisions at once against a backend answering in 200 ms,
//!   with at most 128 instances (Herald's default bound for one hook), and with 1,000. A suspended
//!   decision holds its instance (and its fiber stack) for the whole wait; a stepwise one holds it only
//!   while guest code runs.
//!
//! Run: `./plugins/build && cargo bench -p herald --bench continuation`.
// The generated bindings document themselves in the WIT file; criterion's macros write undocumented items.
#![allow(missing_docs)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    path: "../tests/plugins/continuation/wit",
    world: "bench",
    imports: { default: async },
    exports: { default: async },
});

/// What the backend answers: allowed.
const ANSWER: &[u8] = br#"{"result":{"user":"42","expire_at":1700000000}}"#;

/// A connect request of the size backend-proxy forwards (a cookie and a few headers).
const REQUEST: &[u8] = br#"{"headers":{"cookie":"laravel_session=eyJpdiI6IkFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaIiwidmFsdWUiOiJhYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0NTY3ODkiLCJtYWMiOiIwMTIzNDU2Nzg5YWJjZGVmIn0%3D","user-agent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36","origin":"https://app.example.com"},"remote_addr":"203.0.113.7:51234"}"#;

/// How long the slow backend takes, and how many instances may run one hook at once (Herald's bound).
const SLOW_BACKEND: Duration = Duration::from_millis(200);
const INSTANCES: usize = 128;

struct Host {
    wasi: WasiCtx,
    table: ResourceTable,
    /// How long `fetch` waits before answering; zero: one trip through the scheduler.
    latency: Duration,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl herald_bench::continuation::backend::Host for Host {
    async fn fetch(&mut self, body: Vec<u8>) -> Vec<u8> {
        backend(self.latency, &body).await
    }
}

impl herald_bench::continuation::types::Host for Host {}

/// The backend: answers `ANSWER` after `latency`, or after yielding once (so the caller really waits).
async fn backend(latency: Duration, body: &[u8]) -> Vec<u8> {
    std::hint::black_box(body);
    if latency.is_zero() {
        tokio::task::yield_now().await;
    } else {
        tokio::time::sleep(latency).await;
    }
    ANSWER.to_vec()
}

struct Warm {
    store: Store<Host>,
    bench: Bench,
}

/// Warm instances, taken for a call and put back after it, as Herald's runtime does.
struct Pool {
    idle: Mutex<Vec<Warm>>,
}

impl Pool {
    async fn new(engine: &Engine, component: &Component, size: usize, latency: Duration) -> Self {
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        Bench::add_to_linker::<Host, HasSelf<Host>>(&mut linker, |host| host).unwrap();
        let pre = BenchPre::new(linker.instantiate_pre(component).unwrap()).unwrap();
        let mut idle = Vec::with_capacity(size);
        for _ in 0..size {
            let host = Host {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
                latency,
            };
            let mut store = Store::new(engine, host);
            store.epoch_deadline_trap();
            store.set_epoch_deadline(1_000);
            let bench = pre.instantiate_async(&mut store).await.unwrap();
            idle.push(Warm { store, bench });
        }
        Self {
            idle: Mutex::new(idle),
        }
    }

    fn take(&self) -> Option<Warm> {
        let mut warm = self.idle.lock().unwrap().pop()?;
        // Herald's deadline, in epoch ticks (never reached here).
        warm.store.set_epoch_deadline(1_000);
        Some(warm)
    }

    fn put(&self, warm: Warm) {
        self.idle.lock().unwrap().push(warm);
    }

    async fn pure(&self) -> bool {
        let mut warm = self.take().expect("an idle instance");
        let allowed = warm
            .bench
            .call_pure(&mut warm.store, REQUEST)
            .await
            .unwrap();
        self.put(warm);
        allowed
    }

    async fn suspending(&self) -> bool {
        let mut warm = self.take().expect("an idle instance");
        let allowed = warm
            .bench
            .call_suspending(&mut warm.store, REQUEST)
            .await
            .unwrap();
        self.put(warm);
        allowed
    }

    async fn stepwise(&self, latency: Duration) -> bool {
        let mut warm = self.take().expect("an idle instance");
        let step = warm
            .bench
            .call_stepwise(&mut warm.store, REQUEST)
            .await
            .unwrap();
        self.put(warm);
        let body = match step {
            Step::Done(allowed) => return allowed,
            Step::Fetch(body) => body,
        };
        let answer = backend(latency, &body).await;
        let mut warm = self.take().expect("an idle instance");
        let allowed = warm
            .bench
            .call_resume(&mut warm.store, REQUEST, &answer)
            .await
            .unwrap();
        self.put(warm);
        allowed
    }
}

/// Herald's optimised engine settings (see `plugin/runtime.rs`), with room for 1,000 instances.
fn engine() -> Engine {
    let mut config = Config::new();
    config.concurrency_support(false);
    config.epoch_interruption(true);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(1024)
        .total_core_instances(4096)
        .total_memories(2048)
        .total_tables(4096)
        .total_stacks(1024)
        .max_memory_size(16 << 20);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config).unwrap()
}

fn fixture(engine: &Engine) -> Component {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/plugin/herald_bench_continuation.wasm");
    assert!(
        path.is_file(),
        "{} is missing: run plugins/build first",
        path.display()
    );
    Component::from_file(engine, path).unwrap()
}

fn decisions(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = engine();
    let component = fixture(&engine);
    let pool = runtime.block_on(Pool::new(&engine, &component, 1, Duration::ZERO));
    assert!(runtime.block_on(pool.pure()));
    assert!(runtime.block_on(pool.suspending()));
    assert!(runtime.block_on(pool.stepwise(Duration::ZERO)));

    c.bench_function("pure hook", |b| b.to_async(&runtime).iter(|| pool.pure()));
    c.bench_function("suspending hook (async import, one suspension)", |b| {
        b.to_async(&runtime).iter(|| pool.suspending())
    });
    c.bench_function("stepwise hook (continuation: two calls)", |b| {
        b.to_async(&runtime).iter(|| pool.stepwise(Duration::ZERO))
    });

    slow_backend(&runtime, &engine, &component);
}

/// Resident memory of this process, in KiB.
fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// 1,000 decisions at once through a backend answering in 200 ms, with `instances` instances (a decision
/// that finds none idle waits for one: a semaphore of as many permits, as Herald bounds one hook's calls):
/// how long until all are decided, and how much memory the process holds while they wait.
fn slow_backend(runtime: &tokio::runtime::Runtime, engine: &Engine, component: &Component) {
    const DECISIONS: usize = 1000;
    for (design, instances) in [
        ("suspending", INSTANCES),
        ("stepwise", INSTANCES),
        ("suspending", DECISIONS),
    ] {
        let (elapsed, before, waiting) = runtime.block_on(async {
            let before = resident_kib();
            let pool = Arc::new(Pool::new(engine, component, instances, SLOW_BACKEND).await);
            let permits = Arc::new(tokio::sync::Semaphore::new(instances));
            let started = Instant::now();
            let tasks: Vec<_> = (0..DECISIONS)
                .map(|_| {
                    let (pool, permits) = (pool.clone(), permits.clone());
                    tokio::spawn(async move {
                        if design == "suspending" {
                            let _running = permits.acquire().await.unwrap();
                            return pool.suspending().await;
                        }
                        // Each of the two calls holds a permit only while guest code runs.
                        let running = permits.acquire().await.unwrap();
                        let mut warm = pool.take().expect("an idle instance");
                        let step = warm.bench.call_stepwise(&mut warm.store, REQUEST).await;
                        pool.put(warm);
                        drop(running);
                        let Step::Fetch(body) = step.unwrap() else {
                            unreachable!("the fixture always fetches")
                        };
                        let answer = backend(SLOW_BACKEND, &body).await;
                        let _running = permits.acquire().await.unwrap();
                        let mut warm = pool.take().expect("an idle instance");
                        let allowed = warm
                            .bench
                            .call_resume(&mut warm.store, REQUEST, &answer)
                            .await;
                        pool.put(warm);
                        allowed.unwrap()
                    })
                })
                .collect();
            // Midway through the first wave's wait: every instance that will be held is held.
            tokio::time::sleep(SLOW_BACKEND / 2).await;
            let waiting = resident_kib();
            for task in tasks {
                assert!(task.await.unwrap());
            }
            (started.elapsed(), before, waiting)
        });
        println!(
            "{DECISIONS} decisions at once, backend answering in {SLOW_BACKEND:?}, {instances} instances, \
             {design}: all decided in {elapsed:?} ({:.0} decisions/s); resident memory while waiting \
             +{} KiB ({:.1} KiB per instance)",
            DECISIONS as f64 / elapsed.as_secs_f64(),
            waiting.saturating_sub(before),
            waiting.saturating_sub(before) as f64 / instances as f64,
        );
    }
}

criterion_group!(benches, decisions);
criterion_main!(benches);
