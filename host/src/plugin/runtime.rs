//! The plugin runtime: the wasmtime engines every plugin runs on, compiled plugins with their warm
//! instances, and the isolation around each call.
//!
//! A reloaded plugin version is compiled twice. First by wasmtime's baseline compiler (Winch), which
//! compiles a large component several times faster than the optimising one, so the new version serves
//! quickly ([`Tier::Baseline`]); then by Cranelift in the background, whose code replaces it once ready
//! ([`Tier::Optimized`]) and is what serves from then on. Plugins found at start are compiled by Cranelift
//! alone. Both are cached on disk, so a version seen before loads in milliseconds either way.
//!
//! Instances are created from a pre-linked plugin (of either contract version), initialised once, and reused from a per-plugin
//! idle pool; a call never instantiates unless the pool is empty. Every call runs under an epoch deadline
//! and every instance under a memory cap. A call that traps, times out or runs out of memory is a failure:
//! its instance is dropped (a trapped instance cannot be entered again), the failure is counted by hook and
//! [`FailureKind`], logged with plugin, hook and the full reason, and the caller decides (fail closed).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Cache, CacheConfig, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    Strategy, Trap,
};

use super::bindings::{self, Plugin, PluginMetadata as Metadata, PluginPre, v0_1};
use super::cluster_state::ClusterStates;
use super::host::{Grants, InstanceState};
use super::http::{HttpPolicies, PluginHttp};
use super::load_error::LoadError;
use crate::engine::keyvalue::Stores;

/// How often the engine's epoch advances; deadlines are counted in these ticks.
const TICK: Duration = Duration::from_millis(1);

/// `init` gets more time than a hook: it may parse keys or rules.
const INIT_DEADLINE: Duration = Duration::from_secs(2);

/// How much the optimised engine's pool holds.
#[derive(Debug, Clone, Copy)]
pub struct PoolBounds {
    /// Instances at once, over all plugins (`plugins.max_instances`). A call suspended on its backend
    /// holds one, so this also bounds how many hooks wait on backends at once (see [`CallBounds`]).
    pub instances: u32,
    /// The largest linear memory any plugin may be given.
    pub max_memory: usize,
}

impl PoolBounds {
    /// The bounds `[plugins]` sets.
    pub fn of(config: &super::PluginsConfig) -> Self {
        let max_memory = config
            .limits
            .values()
            .filter_map(|l| l.memory_limit)
            .chain([config.memory_limit])
            .max()
            .unwrap_or(0);
        Self {
            instances: config.max_instances,
            max_memory,
        }
    }
}

/// The bounds one call acquires: its hook's, then the runtime's. Hook calls running at once over all
/// plugins are three quarters of the pool; more wait (within their deadline) for one to end: the busy
/// instances and the idle ones kept per plugin must fit in the pool, and without the bound hooks waiting
/// on a slow backend would take every slot and the next call would fail to instantiate. Calls of one hook
/// are a quarter of the pool, so connects waiting on a slow backend cannot hold up the publish hooks of a
/// fan-out, nor the other way round.
#[derive(Debug, Clone)]
struct CallBounds {
    per_hook: Arc<[tokio::sync::Semaphore; HOOK_NAMES.len()]>,
    all: Arc<tokio::sync::Semaphore>,
}

impl CallBounds {
    fn new(instances: u32) -> Self {
        let instances = instances as usize;
        Self {
            per_hook: Arc::new(std::array::from_fn(|_| {
                tokio::sync::Semaphore::new(instances / 4)
            })),
            all: Arc::new(tokio::sync::Semaphore::new(instances * 3 / 4)),
        }
    }

    /// Both permits for a call of hook `hook` if they are free now: the common case, without the timer a
    /// bounded wait registers.
    fn try_acquire(
        &self,
        hook: usize,
    ) -> Option<(
        tokio::sync::SemaphorePermit<'_>,
        tokio::sync::SemaphorePermit<'_>,
    )> {
        let of_hook = self.per_hook[hook].try_acquire().ok()?;
        let of_all = self.all.try_acquire().ok()?;
        Some((of_hook, of_all))
    }

    /// Both permits for a call of hook `hook`, held while it runs.
    async fn acquire(
        &self,
        hook: usize,
    ) -> (
        tokio::sync::SemaphorePermit<'_>,
        tokio::sync::SemaphorePermit<'_>,
    ) {
        let of_hook = self.per_hook[hook].acquire().await.expect("never closed");
        let of_all = self.all.acquire().await.expect("never closed");
        (of_hook, of_all)
    }
}

/// Limits of one plugin's calls and instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deadline of one hook call.
    pub deadline: Duration,
    /// Linear memory one instance may use, in bytes.
    pub memory: usize,
    /// Warm instances kept idle.
    pub max_idle: usize,
}

/// One hook call's input.
#[derive(Debug, Clone)]
pub enum Call {
    /// `on-connect`.
    Connect(bindings::ConnectRequest),
    /// `on-subscribe`.
    Subscribe(bindings::SubscribeRequest),
    /// `on-publish`.
    Publish(bindings::PublishRequest),
    /// `on-rpc`.
    Rpc(bindings::RpcRequest),
    /// `on-access`.
    Access(bindings::AccessRequest),
    /// `on-disconnect`.
    Disconnect(bindings::DisconnectEvent),
}

impl Call {
    /// The hook this call goes to.
    pub fn hook(&self) -> bindings::Hooks {
        match self {
            Call::Connect(_) => bindings::Hooks::CONNECT,
            Call::Subscribe(_) => bindings::Hooks::SUBSCRIBE,
            Call::Publish(_) => bindings::Hooks::PUBLISH,
            Call::Rpc(_) => bindings::Hooks::RPC,
            Call::Access(_) => bindings::Hooks::ACCESS,
            Call::Disconnect(_) => bindings::Hooks::DISCONNECT,
        }
    }

    /// The hook's position in [`HOOK_NAMES`].
    fn hook_index(&self) -> usize {
        match self {
            Call::Connect(_) => 0,
            Call::Subscribe(_) => 1,
            Call::Publish(_) => 2,
            Call::Rpc(_) => 3,
            Call::Access(_) => 4,
            Call::Disconnect(_) => 5,
        }
    }
}

/// The hooks' names, in the order of [`Call::hook_index`].
pub const HOOK_NAMES: [&str; 6] = [
    "connect",
    "subscribe",
    "publish",
    "rpc",
    "access",
    "disconnect",
];

/// Why a plugin call failed, as a closed set. Failures are counted by hook and kind, so the counters have a
/// fixed size whatever a guest puts in its panic messages (a count keyed by the message text would grow
/// with every distinct message); the full message goes only to the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The call ran past its deadline (epoch interruption).
    Deadline,
    /// The instance asked for more linear memory than its cap.
    MemoryLimit,
    /// The call stack overflowed, or the guest's in-memory stack did (an out-of-bounds access: safe Rust
    /// never reads out of bounds otherwise).
    StackOverflow,
    /// The guest panicked or aborted (`unreachable`).
    Panic,
    /// The guest handed values the contract cannot read (a string, list or pointer outside its memory, an
    /// invalid variant discriminant or `char`).
    InvalidOutput,
    /// Any other trap (integer division by zero, a bad conversion, …).
    Trap,
    /// A fresh instance (the pool was empty) had its `init` refuse to start: the configuration, or (checked
    /// by the SDK) a hook the plugin implements but does not declare.
    InitRefused,
    /// A fresh instance could not be created, for a reason that is not a trap (e.g. the pool is full).
    Instantiation,
    /// An error of the call that is not a trap (e.g. a host function failed).
    Other,
}

impl FailureKind {
    /// How many kinds there are.
    pub const COUNT: usize = 9;

    /// Every kind, in the order of their counters.
    pub const ALL: [FailureKind; Self::COUNT] = [
        Self::Deadline,
        Self::MemoryLimit,
        Self::StackOverflow,
        Self::Panic,
        Self::InvalidOutput,
        Self::Trap,
        Self::InitRefused,
        Self::Instantiation,
        Self::Other,
    ];

    /// The stable name shown by `/api/plugins` and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deadline => "deadline",
            Self::MemoryLimit => "memory_limit",
            Self::StackOverflow => "stack_overflow",
            Self::Panic => "panic",
            Self::InvalidOutput => "invalid_output",
            Self::Trap => "trap",
            Self::InitRefused => "init_refused",
            Self::Instantiation => "instantiation",
            Self::Other => "other",
        }
    }
}

/// A failed call: its kind, counted, and a message for the log (which may quote the guest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What failed, as counted in `/api/plugins`.
    pub kind: FailureKind,
    /// The full reason, for the log only.
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl Failure {
    /// A failure of `kind`.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The same failure with `context` before its message.
    fn context(self, context: &str) -> Self {
        Self {
            message: format!("{context}: {}", self.message),
            ..self
        }
    }
}

/// One hook call's output.
#[derive(Debug, Clone)]
pub enum Reply {
    /// From `on-connect`.
    Connect(bindings::ConnectVerdict),
    /// From `on-subscribe`.
    Subscribe(bindings::SubscribeVerdict),
    /// From `on-publish`.
    Publish(bindings::PublishVerdict),
    /// From `on-rpc`.
    Rpc(bindings::RpcVerdict),
    /// From `on-access`.
    Access(bindings::AccessVerdict),
    /// From `on-disconnect`.
    Disconnect,
}

/// Counters of one loaded plugin; fixed-size, so nothing a plugin does makes them grow.
#[derive(Debug, Default)]
pub struct Stats {
    /// Hook calls made.
    pub calls: AtomicU64,
    /// Calls that returned a deny verdict.
    pub denies: AtomicU64,
    /// Calls that failed (trap, deadline, memory).
    pub failures: AtomicU64,
    /// Failures by hook (index in [`HOOK_NAMES`]) and kind (index in [`FailureKind::ALL`]).
    failures_by: [[AtomicU64; FailureKind::COUNT]; HOOK_NAMES.len()],
}

impl Stats {
    fn count_failure(&self, hook: usize, kind: FailureKind) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.failures_by[hook][kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The failure counts that are not zero, as (hook, kind, count), by hook then kind.
    pub fn failure_counts(&self) -> Vec<(&'static str, FailureKind, u64)> {
        HOOK_NAMES
            .iter()
            .zip(&self.failures_by)
            .flat_map(|(hook, counts)| {
                FailureKind::ALL
                    .iter()
                    .zip(counts)
                    .map(move |(kind, count)| (*hook, *kind, count.load(Ordering::Relaxed)))
            })
            .filter(|(_, _, count)| *count > 0)
            .collect()
    }
}

/// A plugin file's content and its SHA-256 (hex), computed once: what tells versions apart.
#[derive(Debug, Clone)]
pub struct Wasm {
    bytes: Vec<u8>,
    hash: String,
}

impl Wasm {
    /// `bytes` and their hash.
    pub fn new(bytes: Vec<u8>) -> Self {
        let hash = hex::encode(Sha256::digest(&bytes));
        Self { bytes, hash }
    }

    /// The SHA-256 of the content, hex.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The content.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Which compiler made a plugin version's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Winch, the baseline compiler: fast to compile, slower to run; what a new version serves first.
    Baseline,
    /// Cranelift, the optimising compiler: what every version serves once its code is ready.
    Optimized,
}

impl Tier {
    /// The tier's name in `/api/plugins` and the logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Optimized => "optimized",
        }
    }
}

/// A compiled, initialised plugin version and its warm instances.
pub struct LoadedPlugin {
    /// The file it was loaded from (its chain position is the file name's order).
    pub file: String,
    /// Name, version and hooks, as the plugin declared them.
    pub metadata: Metadata,
    /// SHA-256 of the `.wasm`, hex.
    pub hash: String,
    /// When this version was loaded.
    pub loaded_at: SystemTime,
    /// Call and failure counters (one set per version, kept when its optimised code replaces the baseline).
    pub stats: Arc<Stats>,
    /// Which compiler made the code serving.
    pub tier: Tier,
    /// How long calls take, by hook (index in [`HOOK_NAMES`]).
    call_durations: [prometheus::Histogram; HOOK_NAMES.len()],
    limits: Limits,
    config: String,
    engine: Engine,
    linked: Linked,
    /// The plugin's state (node-local and cluster-wide) and outbound HTTP, shared with its other versions.
    grants: Grants,
    /// The runtime's bounds on calls running at once.
    calls: CallBounds,
    idle: Mutex<Vec<Warm>>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("file", &self.file)
            .field("name", &self.metadata.name)
            .finish()
    }
}

/// A warm instance and its store.
struct Warm {
    store: Store<InstanceState>,
    plugin: Instance,
}

/// Which version of the contract a plugin was built against: what it may import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// `herald:plugin@0.1.0`: logging and the clock.
    V0_1,
    /// `herald:plugin@0.2.0`: also node-local and cluster-wide state and outbound HTTP.
    V0_2,
}

impl Contract {
    /// The version, as in `herald:plugin@<version>`.
    pub fn version(self) -> &'static str {
        match self {
            Self::V0_1 => "0.1.0",
            Self::V0_2 => "0.2.0",
        }
    }
}

/// A linked plugin, ready to instantiate.
struct Linked {
    pre: LinkedPre,
    /// The host capabilities it imports beyond logging and the clock (`local-state`, `cluster-state`,
    /// `http`), by interface name.
    capabilities: Vec<String>,
}

/// The pre-linked component, of either contract version.
enum LinkedPre {
    V0_1(v0_1::PluginPre<InstanceState>),
    V0_2(PluginPre<InstanceState>),
}

/// An instance of either contract version.
enum Instance {
    V0_1(v0_1::Plugin),
    V0_2(Plugin),
}

/// Runs `$call` on the instance's `guest` export, whichever contract version it has (the generated
/// accessors are distinct types with the same methods).
macro_rules! on_guest {
    ($instance:expr, |$guest:ident| $call:expr) => {
        match $instance {
            Instance::V0_1(plugin) => {
                let $guest = plugin.herald_plugin_guest();
                $call
            }
            Instance::V0_2(plugin) => {
                let $guest = plugin.herald_plugin_guest();
                $call
            }
        }
    };
}

impl Linked {
    fn contract(&self) -> Contract {
        match self.pre {
            LinkedPre::V0_1(_) => Contract::V0_1,
            LinkedPre::V0_2(_) => Contract::V0_2,
        }
    }

    async fn instantiate(&self, store: &mut Store<InstanceState>) -> wasmtime::Result<Instance> {
        Ok(match &self.pre {
            LinkedPre::V0_1(pre) => Instance::V0_1(pre.instantiate_async(store).await?),
            LinkedPre::V0_2(pre) => Instance::V0_2(pre.instantiate_async(store).await?),
        })
    }
}

/// One compiler's engine and the linker over it (code from one engine cannot run on the other).
struct Compiler {
    engine: Engine,
    linker: Linker<InstanceState>,
}

impl Compiler {
    /// An engine of `tier` with epoch interruption and, when `cache_dir` is given, an on-disk cache of
    /// compiled plugins (keyed by the wasm's hash and the engine's settings, written and read only by
    /// wasmtime itself). The optimised engine's instances come from the pooling allocator; the baseline
    /// engine serves a version only until its optimised code is ready, so it allocates on demand rather
    /// than reserving a second pool.
    fn new(tier: Tier, cache_dir: Option<&Path>, bounds: PoolBounds) -> anyhow::Result<Self> {
        let mut config = wasmtime::Config::new();
        // Herald does not use the component-model async ABI; turning it off saves ~0.4 µs per call.
        config.concurrency_support(false);
        config.epoch_interruption(true);
        match tier {
            Tier::Optimized => {
                config.strategy(Strategy::Cranelift);
                let mut pool = PoolingAllocationConfig::default();
                let instances = bounds.instances;
                pool.total_component_instances(instances)
                    .total_core_instances(instances * 4)
                    .total_memories(instances * 2)
                    .total_tables(instances * 4)
                    .total_stacks(instances)
                    .max_memory_size(bounds.max_memory);
                config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
            }
            Tier::Baseline => {
                config.strategy(Strategy::Winch);
            }
        }
        if let Some(dir) = cache_dir {
            std::fs::create_dir_all(dir).map_err(|e| {
                anyhow::anyhow!("cannot create plugin cache {}: {e}", dir.display())
            })?;
            let mut cache = CacheConfig::new();
            cache.with_directory(dir);
            config.cache(Some(Cache::new(cache)?));
        }
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        Plugin::add_to_linker::<InstanceState, HasSelf<InstanceState>>(&mut linker, |state| state)?;
        v0_1::Plugin::add_to_linker::<InstanceState, HasSelf<InstanceState>>(
            &mut linker,
            |state| state,
        )?;
        Ok(Self { engine, linker })
    }

    /// Compiles (on a blocking thread) and links a component, of whichever contract version it targets.
    async fn compile(&self, bytes: Vec<u8>) -> Result<Linked, LoadError> {
        let engine = self.engine.clone();
        let component = tokio::task::spawn_blocking(move || Component::new(&engine, &bytes))
            .await
            .map_err(LoadError::CompilationAborted)?
            .map_err(|e| LoadError::NotAComponent(root_cause(&e)))?;
        let capabilities = component
            .component_type()
            .imports(&self.engine)
            .filter_map(|(name, _)| {
                let interface = name.strip_prefix("herald:plugin/")?.split('@').next()?;
                (!matches!(interface, "host" | "types")).then(|| interface.to_owned())
            })
            .collect();
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Unlinkable(root_cause(&e)))?;
        let pre = match PluginPre::new(pre.clone()) {
            Ok(current) => LinkedPre::V0_2(current),
            Err(error) => v0_1::PluginPre::new(pre)
                .map(LinkedPre::V0_1)
                .map_err(|_| LoadError::NoContract(root_cause(&error)))?,
        };
        Ok(Linked { pre, capabilities })
    }
}

/// What the host grants plugins beyond logging and the clock (contract 0.2), per plugin name.
#[derive(Debug)]
pub struct HostServices {
    /// Node-local state.
    pub states: Stores,
    /// Cluster-wide state, through the engine.
    pub cluster: ClusterStates,
    /// Outbound HTTP.
    pub http: HttpPolicies,
}

impl HostServices {
    /// Per `[plugins]`, with the engine's shared state for `cluster-state`.
    pub fn new(config: &super::PluginsConfig, shared: Arc<dyn crate::engine::SharedState>) -> Self {
        Self {
            states: Stores::new(config.state_bounds()),
            cluster: ClusterStates::new(shared, config),
            http: HttpPolicies::new(&config.http),
        }
    }

    fn grants(&self, plugin: &str) -> Grants {
        Grants {
            state: self.states.of(plugin),
            cluster: self.cluster.of(plugin),
            http: self.http.of(plugin),
        }
    }
}

/// The engines and linkers of both tiers and the plugins' state and HTTP; dropping it stops the epoch
/// ticker.
pub struct Runtime {
    optimized: Compiler,
    baseline: Compiler,
    services: HostServices,
    /// The bounds on calls running at once, shared by every plugin.
    calls: CallBounds,
    ticking: Arc<AtomicBool>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticking.store(false, Ordering::Relaxed);
    }
}

impl Runtime {
    /// The engines of both tiers (see [`Compiler::new`]), the optimised one's pool bounded by `bounds`;
    /// `services` is what plugins may import beyond logging and the clock.
    pub fn new(
        cache_dir: Option<&Path>,
        bounds: PoolBounds,
        services: HostServices,
    ) -> anyhow::Result<Self> {
        let optimized = Compiler::new(Tier::Optimized, cache_dir, bounds)?;
        let baseline = Compiler::new(Tier::Baseline, cache_dir, bounds)?;
        let ticking = Arc::new(AtomicBool::new(true));
        let engines = [optimized.engine.clone(), baseline.engine.clone()];
        let still_ticking = ticking.clone();
        std::thread::Builder::new()
            .name("herald-plugin-epoch".into())
            .spawn(move || {
                while still_ticking.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    engines.iter().for_each(Engine::increment_epoch);
                }
            })?;
        Ok(Self {
            optimized,
            baseline,
            services,
            calls: CallBounds::new(bounds.instances),
            ticking,
        })
    }

    fn compiler(&self, tier: Tier) -> &Compiler {
        match tier {
            Tier::Baseline => &self.baseline,
            Tier::Optimized => &self.optimized,
        }
    }

    /// Compiles with `tier`'s compiler, links, asks for metadata, configures (`config_for(name)`) and
    /// initialises a plugin; the initialised instance becomes the first warm one. Compilation runs on a
    /// blocking thread.
    pub async fn load(
        &self,
        file: &str,
        wasm: Wasm,
        tier: Tier,
        config_for: impl FnOnce(&str) -> Result<(String, Limits), LoadError>,
        metrics: &crate::metrics::Metrics,
    ) -> Result<LoadedPlugin, LoadError> {
        let Wasm { bytes, hash } = wasm;
        let compiler = self.compiler(tier);
        let linked = compiler.compile(bytes).await?;
        let mut store = new_store(&compiler.engine, file, usize::MAX / 2, None);
        store.set_epoch_deadline(ticks(INIT_DEADLINE));
        let plugin = linked
            .instantiate(&mut store)
            .await
            .map_err(|e| LoadError::Instantiation(root_cause(&e)))?;
        let metadata =
            on_guest!(&plugin, |guest| guest.call_metadata(&mut store).await).map_err(|e| {
                LoadError::Metadata(describe(&e, store.data(), FailureKind::Other).message)
            })?;
        let (config, limits) = config_for(&metadata.name)?;
        let grants = self.services.grants(&metadata.name);
        let loaded = LoadedPlugin {
            file: file.to_owned(),
            hash,
            loaded_at: SystemTime::now(),
            stats: Arc::default(),
            tier,
            call_durations: HOOK_NAMES
                .map(|hook| metrics.plugin_call_duration(&metadata.name, hook)),
            metadata,
            limits,
            config,
            engine: compiler.engine.clone(),
            grants,
            calls: self.calls.clone(),
            linked,
            idle: Mutex::new(Vec::new()),
        };
        loaded.with_first_instance().await
    }

    /// The same version as `plugin` (whose `.wasm` is `bytes`) on optimised code: same metadata,
    /// configuration, limits and counters, its first instance initialised.
    pub async fn optimize(
        &self,
        plugin: &LoadedPlugin,
        bytes: Vec<u8>,
    ) -> Result<LoadedPlugin, LoadError> {
        let linked = self.optimized.compile(bytes).await?;
        let optimized = LoadedPlugin {
            file: plugin.file.clone(),
            metadata: plugin.metadata.clone(),
            hash: plugin.hash.clone(),
            loaded_at: plugin.loaded_at,
            stats: plugin.stats.clone(),
            tier: Tier::Optimized,
            call_durations: plugin.call_durations.clone(),
            limits: plugin.limits,
            config: plugin.config.clone(),
            engine: self.optimized.engine.clone(),
            linked,
            grants: plugin.grants.clone(),
            calls: plugin.calls.clone(),
            idle: Mutex::new(Vec::new()),
        };
        optimized.with_first_instance().await
    }
}

fn ticks(deadline: Duration) -> u64 {
    (deadline.as_micros().div_ceil(TICK.as_micros())).max(1) as u64
}

fn new_store(
    engine: &Engine,
    plugin: &str,
    memory: usize,
    grants: Option<Grants>,
) -> Store<InstanceState> {
    let mut store = Store::new(engine, InstanceState::new(plugin, memory, grants));
    store.limiter(|state| &mut state.limits);
    store.epoch_deadline_trap();
    store
}

/// The error with its causes on one line, bounded so a log line stays readable.
fn root_cause(error: &wasmtime::Error) -> String {
    let text = format!("{error:#}")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    match text.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// Why a call failed: its kind and a few words (with the guest's panic message, if any). An error that is
/// not a trap is of kind `otherwise`.
fn describe(error: &wasmtime::Error, state: &InstanceState, otherwise: FailureKind) -> Failure {
    use FailureKind as Kind;
    if state.limits.refused {
        return Failure::new(Kind::MemoryLimit, "memory limit exceeded");
    }
    let Some(trap) = error.downcast_ref::<Trap>() else {
        return Failure::new(otherwise, root_cause(error));
    };
    match trap {
        Trap::Interrupt => Failure::new(Kind::Deadline, "deadline exceeded"),
        Trap::StackOverflow => Failure::new(Kind::StackOverflow, "stack overflow"),
        Trap::UnreachableCodeReached => match panic_message(&state.stderr()) {
            Some(message) => Failure::new(Kind::Panic, format!("panic: {message}")),
            None => Failure::new(Kind::Panic, "trap: unreachable code (abort)"),
        },
        // Safe Rust never reads out of bounds; a Rust guest does when its in-memory stack overflows.
        Trap::MemoryOutOfBounds => Failure::new(
            Kind::StackOverflow,
            "stack overflow (out-of-bounds memory access)",
        ),
        Trap::InvalidChar
        | Trap::StringOutOfBounds
        | Trap::ListOutOfBounds
        | Trap::InvalidDiscriminant
        | Trap::UnalignedPointer => Failure::new(Kind::InvalidOutput, trap.to_string()),
        trap => Failure::new(Kind::Trap, trap.to_string()),
    }
}

/// The message of a Rust panic from the guest's stderr: the last line that is not the standard library's
/// `note:` hint.
fn panic_message(stderr: &str) -> Option<&str> {
    stderr
        .lines()
        .map(str::trim)
        .rev()
        .find(|l| !l.is_empty() && !l.starts_with("note:"))
}

/// Plugin configurations hold secrets, and a plugin's refusal may quote the value it refused (serde's
/// messages do: `invalid type: string "…"`); the message is logged and shown by `/api/plugins`, so every
/// string value of the configuration (of 4 bytes or more, longest first) is blanked out of it.
fn redact_config_values(message: &str, config_json: &str) -> String {
    fn strings<'a>(value: &'a serde_json::Value, found: &mut Vec<&'a str>) {
        match value {
            serde_json::Value::String(s) => found.push(s),
            serde_json::Value::Array(items) => items.iter().for_each(|v| strings(v, found)),
            serde_json::Value::Object(map) => map.values().for_each(|v| strings(v, found)),
            _ => {}
        }
    }
    let Ok(config) = serde_json::from_str::<serde_json::Value>(config_json) else {
        return message.to_owned();
    };
    let mut values = Vec::new();
    strings(&config, &mut values);
    values.retain(|v| v.len() >= 4);
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    values
        .into_iter()
        .fold(message.to_owned(), |message, value| {
            message.replace(value, "[redacted]")
        })
}

impl LoadedPlugin {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Warm>> {
        crate::sync::lock(&self.idle)
    }

    /// The plugin implements this call's hook.
    pub fn implements(&self, hook: bindings::Hooks) -> bool {
        self.metadata.hooks.contains(hook)
    }

    /// The limits it runs under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The contract version it was built against.
    pub fn contract(&self) -> Contract {
        self.linked.contract()
    }

    /// The host capabilities it imports beyond logging and the clock (`local-state`, `cluster-state`,
    /// `http`).
    pub fn capabilities(&self) -> &[String] {
        &self.linked.capabilities
    }

    /// Its outbound HTTP, with the counters `/api/plugins` shows.
    pub fn http(&self) -> &PluginHttp {
        &self.grants.http
    }

    /// The version with its first instance initialised and warm: a version whose `init` fails is never
    /// served.
    async fn with_first_instance(self) -> Result<Self, LoadError> {
        let warm = self.instantiate().await.map_err(LoadError::FirstInstance)?;
        self.idle().push(warm);
        Ok(self)
    }

    async fn instantiate(&self) -> Result<Warm, Failure> {
        let mut store = new_store(
            &self.engine,
            &self.metadata.name,
            self.limits.memory,
            Some(self.grants.clone()),
        );
        store.set_epoch_deadline(ticks(INIT_DEADLINE));
        let plugin = self.linked.instantiate(&mut store).await.map_err(|e| {
            describe(&e, store.data(), FailureKind::Instantiation).context("instantiation failed")
        })?;
        on_guest!(&plugin, |guest| guest
            .call_init(&mut store, &self.config)
            .await)
        .map_err(|e| describe(&e, store.data(), FailureKind::Other).context("init failed"))?
        .map_err(|e| {
            Failure::new(
                FailureKind::InitRefused,
                format!("init refused: {}", redact_config_values(&e, &self.config)),
            )
        })?;
        Ok(Warm { store, plugin })
    }

    /// Calls a hook on a warm instance under the plugin's deadline, which counts from here (waiting for a
    /// turn among the calls running at once spends it too); a failure is counted by kind, logged with its
    /// full reason and returned.
    pub async fn call(&self, call: &Call) -> Result<Reply, Failure> {
        let started = std::time::Instant::now();
        let deadline = started + self.limits.deadline;
        let hook = call.hook_index();
        let (permits, waited) = match self.calls.try_acquire(hook) {
            Some(permits) => (Some(permits), false),
            None => {
                let acquire = self.calls.acquire(hook);
                let permits = tokio::time::timeout(self.limits.deadline, acquire).await;
                (permits.ok(), true)
            }
        };
        let outcome = match permits {
            Some(_running) => self.call_warm(call, deadline, waited).await,
            None => {
                self.stats.calls.fetch_add(1, Ordering::Relaxed);
                let waited = Failure::new(
                    FailureKind::Deadline,
                    "deadline exceeded waiting for one of the calls running at once to end",
                );
                Err(self.failed(call, waited))
            }
        };
        self.call_durations[hook].observe(started.elapsed().as_secs_f64());
        outcome
    }

    /// Runs `call` on a warm instance (a new one when none is idle) until `deadline`; `waited` says the
    /// call already spent some of its time waiting for its permits.
    async fn call_warm(
        &self,
        call: &Call,
        deadline: std::time::Instant,
        waited: bool,
    ) -> Result<Reply, Failure> {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let warm = self.idle().pop();
        let (mut warm, instantiated) = match warm {
            Some(warm) => (warm, false),
            None => match self.instantiate().await {
                Ok(warm) => (warm, true),
                Err(reason) => return Err(self.failed(call, reason)),
            },
        };
        // The common case (permits and an instance at hand) has used nanoseconds of a deadline counted
        // in millisecond ticks: not worth reading the clock for.
        let left = if waited || instantiated {
            deadline.saturating_duration_since(std::time::Instant::now())
        } else {
            self.limits.deadline
        };
        warm.store.set_epoch_deadline(ticks(left));
        warm.store.data_mut().deadline = Some(deadline);
        match invoke(&mut warm, call).await {
            Ok(reply) => {
                let mut idle = self.idle();
                if idle.len() < self.limits.max_idle {
                    idle.push(warm);
                }
                Ok(reply)
            }
            Err(error) => {
                let failure = describe(&error, warm.store.data(), FailureKind::Other);
                Err(self.failed(call, failure))
            }
        }
    }

    fn failed(&self, call: &Call, failure: Failure) -> Failure {
        let hook = call.hook_index();
        self.stats.count_failure(hook, failure.kind);
        tracing::warn!(
            plugin = %self.metadata.name,
            file = %self.file,
            hook = HOOK_NAMES[hook],
            kind = failure.kind.as_str(),
            reason = %failure.message,
            "plugin call failed; decision fails closed"
        );
        failure
    }
}

async fn invoke(warm: &mut Warm, call: &Call) -> wasmtime::Result<Reply> {
    let store = &mut warm.store;
    on_guest!(&warm.plugin, |guest| Ok(match call {
        Call::Connect(r) => Reply::Connect(guest.call_on_connect(&mut *store, r).await?),
        Call::Subscribe(r) => Reply::Subscribe(guest.call_on_subscribe(&mut *store, r).await?),
        Call::Publish(r) => Reply::Publish(guest.call_on_publish(&mut *store, r).await?),
        Call::Rpc(r) => Reply::Rpc(guest.call_on_rpc(&mut *store, r).await?),
        Call::Access(r) => Reply::Access(guest.call_on_access(&mut *store, r).await?),
        Call::Disconnect(e) => {
            guest.call_on_disconnect(&mut *store, e).await?;
            Reply::Disconnect
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_never_quote_configured_strings() {
        let config = r#"{"secret":"hunter2-long","nested":{"keys":["abc-key-1"]},"n":5,"s":"ab"}"#;
        let message =
            r#"invalid type: string "hunter2-long", expected a boolean; also abc-key-1; ab"#;
        assert_eq!(
            redact_config_values(message, config),
            r#"invalid type: string "[redacted]", expected a boolean; also [redacted]; ab"#
        );
    }

    #[test]
    fn panic_message_skips_the_backtrace_hint() {
        let stderr = "thread '<unnamed>' panicked at src/lib.rs:33:20:\nboom\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(panic_message(stderr), Some("boom"));
        assert_eq!(panic_message(""), None);
    }

    #[test]
    fn failures_are_classified_by_kind() {
        let state = InstanceState::new("test", 1 << 20, None);
        let kind =
            |trap: Trap| describe(&wasmtime::Error::new(trap), &state, FailureKind::Other).kind;
        assert_eq!(kind(Trap::Interrupt), FailureKind::Deadline);
        assert_eq!(kind(Trap::StackOverflow), FailureKind::StackOverflow);
        assert_eq!(kind(Trap::MemoryOutOfBounds), FailureKind::StackOverflow);
        assert_eq!(kind(Trap::UnreachableCodeReached), FailureKind::Panic);
        assert_eq!(kind(Trap::InvalidDiscriminant), FailureKind::InvalidOutput);
        assert_eq!(kind(Trap::StringOutOfBounds), FailureKind::InvalidOutput);
        assert_eq!(kind(Trap::IntegerDivisionByZero), FailureKind::Trap);
        let host = wasmtime::Error::msg("a host function failed");
        assert_eq!(
            describe(&host, &state, FailureKind::Instantiation).kind,
            FailureKind::Instantiation
        );
        assert_eq!(
            describe(&host, &state, FailureKind::Other).kind,
            FailureKind::Other
        );
    }

    #[test]
    fn failure_counts_list_only_what_happened() {
        let stats = Stats::default();
        for _ in 0..1000 {
            stats.count_failure(2, FailureKind::Panic);
        }
        stats.count_failure(0, FailureKind::Deadline);
        assert_eq!(
            stats.failure_counts(),
            [
                ("connect", FailureKind::Deadline, 1),
                ("publish", FailureKind::Panic, 1000)
            ]
        );
        assert_eq!(stats.failures.load(Ordering::Relaxed), 1001);
    }

    #[test]
    fn every_kind_is_at_its_index() {
        for (index, kind) in FailureKind::ALL.into_iter().enumerate() {
            assert_eq!(kind as usize, index, "{kind:?}");
        }
    }

    #[test]
    fn deadlines_round_up_to_whole_ticks() {
        assert_eq!(ticks(Duration::from_micros(10)), 1);
        assert_eq!(ticks(Duration::from_millis(10)), 10);
        assert_eq!(ticks(Duration::from_micros(10_500)), 11);
    }
}
