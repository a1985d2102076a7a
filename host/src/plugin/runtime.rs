//! The plugin runtime: one wasmtime engine for every plugin, compiled plugins with their warm instances,
//! and the isolation around each call.
//!
//! Instances are created from a pre-linked [`PluginPre`], initialised once, and reused from a per-plugin
//! idle pool; a call never instantiates unless the pool is empty. Every call runs under an epoch deadline
//! and every instance under a memory cap. A call that traps, times out or runs out of memory is a failure:
//! its instance is dropped (a trapped instance cannot be entered again), the failure is counted and logged
//! with plugin, hook and reason, and the caller decides (fail closed).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Cache, CacheConfig, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
};

use super::bindings::{self, Plugin, PluginMetadata as Metadata, PluginPre};
use super::host::InstanceState;

/// How often the engine's epoch advances; deadlines are counted in these ticks.
const TICK: Duration = Duration::from_millis(1);

/// `init` gets more time than a hook: it may parse keys or rules.
const INIT_DEADLINE: Duration = Duration::from_secs(2);

/// Instances the pooling allocator can hold at once (over all plugins).
const POOLED_INSTANCES: u32 = 512;

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

    fn hook_name(&self) -> &'static str {
        match self {
            Call::Connect(_) => "connect",
            Call::Subscribe(_) => "subscribe",
            Call::Publish(_) => "publish",
            Call::Rpc(_) => "rpc",
            Call::Access(_) => "access",
            Call::Disconnect(_) => "disconnect",
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

/// Counters of one loaded plugin.
#[derive(Debug, Default)]
pub struct Stats {
    /// Hook calls made.
    pub calls: AtomicU64,
    /// Calls that returned a deny verdict.
    pub denies: AtomicU64,
    /// Calls that failed (trap, deadline, memory).
    pub failures: AtomicU64,
    /// Failures by hook and reason.
    pub failure_reasons: Mutex<BTreeMap<(String, String), u64>>,
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
    /// Call and failure counters.
    pub stats: Stats,
    limits: Limits,
    config: String,
    engine: Engine,
    pre: PluginPre<InstanceState>,
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
    plugin: Plugin,
}

/// The shared engine and linker; dropping it stops the epoch ticker.
pub struct Runtime {
    engine: Engine,
    linker: Linker<InstanceState>,
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
    /// An engine with the pooling allocator, epoch interruption and, when `cache_dir` is given, an on-disk
    /// cache of compiled plugins (keyed by the wasm's hash and the engine's settings, written and read only
    /// by wasmtime itself). `max_memory` is the largest memory any plugin may be given.
    pub fn new(cache_dir: Option<&Path>, max_memory: usize) -> anyhow::Result<Self> {
        let mut config = wasmtime::Config::new();
        // Herald does not use the component-model async ABI; turning it off saves ~0.4 µs per call.
        config.concurrency_support(false);
        config.epoch_interruption(true);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(POOLED_INSTANCES)
            .total_core_instances(POOLED_INSTANCES * 4)
            .total_memories(POOLED_INSTANCES * 2)
            .total_tables(POOLED_INSTANCES * 4)
            .total_stacks(POOLED_INSTANCES)
            .max_memory_size(max_memory);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
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
        let ticking = Arc::new(AtomicBool::new(true));
        let ticker_engine = engine.clone();
        let still_ticking = ticking.clone();
        std::thread::Builder::new()
            .name("herald-plugin-epoch".into())
            .spawn(move || {
                while still_ticking.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    ticker_engine.increment_epoch();
                }
            })?;
        Ok(Self {
            engine,
            linker,
            ticking,
        })
    }

    /// Compiles, links, asks for metadata, configures (`config_for(name)`) and initialises a plugin; the
    /// initialised instance becomes the first warm one. Compilation runs on a blocking thread.
    pub async fn load(
        &self,
        file: &str,
        bytes: Vec<u8>,
        config_for: impl FnOnce(&str) -> Result<(String, Limits), String>,
    ) -> Result<LoadedPlugin, String> {
        let hash = hex::encode(Sha256::digest(&bytes));
        let engine = self.engine.clone();
        let component = tokio::task::spawn_blocking(move || Component::new(&engine, &bytes))
            .await
            .map_err(|e| format!("compilation aborted: {e}"))?
            .map_err(|e| format!("not a valid component: {}", root_cause(&e)))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| format!("does not fit the plugin contract: {}", root_cause(&e)))?;
        let pre = PluginPre::new(pre)
            .map_err(|e| format!("does not export the plugin contract: {}", root_cause(&e)))?;

        let mut store = new_store(&self.engine, file, usize::MAX / 2);
        store.set_epoch_deadline(ticks(INIT_DEADLINE));
        let plugin = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| format!("instantiation failed: {}", root_cause(&e)))?;
        let metadata = plugin
            .herald_plugin_guest()
            .call_metadata(&mut store)
            .await
            .map_err(|e| format!("metadata failed: {}", describe(&e, store.data())))?;
        let (config, limits) = config_for(&metadata.name)?;
        let loaded = LoadedPlugin {
            file: file.to_owned(),
            metadata,
            hash,
            loaded_at: SystemTime::now(),
            stats: Stats::default(),
            limits,
            config,
            engine: self.engine.clone(),
            pre,
            idle: Mutex::new(Vec::new()),
        };
        let warm = loaded.instantiate().await?;
        loaded.idle().push(warm);
        Ok(loaded)
    }
}

fn ticks(deadline: Duration) -> u64 {
    (deadline.as_micros().div_ceil(TICK.as_micros())).max(1) as u64
}

fn new_store(engine: &Engine, plugin: &str, memory: usize) -> Store<InstanceState> {
    let mut store = Store::new(engine, InstanceState::new(plugin, memory));
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

/// Why a call failed, in a few words.
fn describe(error: &wasmtime::Error, state: &InstanceState) -> String {
    if state.limits.refused {
        return "memory limit exceeded".into();
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => "deadline exceeded".into(),
        Some(Trap::StackOverflow) => "stack overflow".into(),
        Some(Trap::UnreachableCodeReached) => match panic_message(&state.stderr()) {
            Some(message) => format!("panic: {message}"),
            None => "trap: unreachable code (abort)".into(),
        },
        // Safe Rust never reads out of bounds; a Rust guest does when its in-memory stack overflows.
        Some(Trap::MemoryOutOfBounds) => "stack overflow (out-of-bounds memory access)".into(),
        Some(trap) => trap.to_string(),
        None => root_cause(error),
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
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The plugin implements this call's hook.
    pub fn implements(&self, hook: bindings::Hooks) -> bool {
        self.metadata.hooks.contains(hook)
    }

    /// The limits it runs under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    async fn instantiate(&self) -> Result<Warm, String> {
        let mut store = new_store(&self.engine, &self.metadata.name, self.limits.memory);
        store.set_epoch_deadline(ticks(INIT_DEADLINE));
        let plugin = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| format!("instantiation failed: {}", describe(&e, store.data())))?;
        plugin
            .herald_plugin_guest()
            .call_init(&mut store, &self.config)
            .await
            .map_err(|e| format!("init failed: {}", describe(&e, store.data())))?
            .map_err(|e| {
                format!(
                    "init refused the configuration: {}",
                    redact_config_values(&e, &self.config)
                )
            })?;
        Ok(Warm { store, plugin })
    }

    /// Calls a hook on a warm instance under the plugin's deadline; a failure is counted, logged and
    /// returned as its reason.
    pub async fn call(&self, call: &Call) -> Result<Reply, String> {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let warm = self.idle().pop();
        let mut warm = match warm {
            Some(warm) => warm,
            None => match self.instantiate().await {
                Ok(warm) => warm,
                Err(reason) => return Err(self.failed(call, reason)),
            },
        };
        warm.store.set_epoch_deadline(ticks(self.limits.deadline));
        match invoke(&mut warm, call).await {
            Ok(reply) => {
                let mut idle = self.idle();
                if idle.len() < self.limits.max_idle {
                    idle.push(warm);
                }
                Ok(reply)
            }
            Err(error) => {
                let reason = describe(&error, warm.store.data());
                Err(self.failed(call, reason))
            }
        }
    }

    fn failed(&self, call: &Call, reason: String) -> String {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        let hook = call.hook_name();
        *self
            .stats
            .failure_reasons
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry((hook.to_owned(), reason.clone()))
            .or_default() += 1;
        tracing::warn!(plugin = %self.metadata.name, file = %self.file, hook, %reason, "plugin call failed; decision fails closed");
        reason
    }
}

async fn invoke(warm: &mut Warm, call: &Call) -> wasmtime::Result<Reply> {
    let guest = warm.plugin.herald_plugin_guest();
    let store = &mut warm.store;
    Ok(match call {
        Call::Connect(r) => Reply::Connect(guest.call_on_connect(store, r).await?),
        Call::Subscribe(r) => Reply::Subscribe(guest.call_on_subscribe(store, r).await?),
        Call::Publish(r) => Reply::Publish(guest.call_on_publish(store, r).await?),
        Call::Rpc(r) => Reply::Rpc(guest.call_on_rpc(store, r).await?),
        Call::Access(r) => Reply::Access(guest.call_on_access(store, r).await?),
        Call::Disconnect(e) => {
            guest.call_on_disconnect(store, e).await?;
            Reply::Disconnect
        }
    })
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
    fn deadlines_round_up_to_whole_ticks() {
        assert_eq!(ticks(Duration::from_micros(10)), 1);
        assert_eq!(ticks(Duration::from_millis(10)), 10);
        assert_eq!(ticks(Duration::from_micros(10_500)), 11);
    }
}
