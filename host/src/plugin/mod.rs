//! Plugins: WebAssembly components that make the decisions that differ per deployment (auth, channel
//! permissions, filtering, routing), loaded from a watched folder and swapped without a restart.
//!
//! [`Plugins`] owns the loaded set (replaced atomically, so calls in flight finish on the version they
//! started with) and runs the hook chains in file-name order. [`runtime`] isolates each call;
//! [`chain`] holds the chain rules; [`watch`] reloads on file changes. A plugin never sees the node.

pub mod bindings;
pub mod chain;
pub mod cluster_state;
mod config;
mod host;
pub mod http;
mod load_error;
pub mod runtime;
pub mod watch;

pub use config::{PluginLimits, PluginsConfig, PluginsConfigError};
pub use load_error::LoadError;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use bindings::{
    AccessRequest, ConnectAllow, ConnectRequest, DisconnectEvent, Hooks, PublishRequest,
    RpcRequest, SubscribeAllow, SubscribeRequest,
};
use chain::{Decision, Draft, PublishDecision, RpcDecision};
use runtime::{
    Call, Failure, FailureKind, HostServices, Limits, LoadedPlugin, PoolBounds, Reply, Runtime,
    Tier, Wasm,
};

/// A file that failed to load, as [`Plugins::load_errors`] lists it.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// When.
    pub at: SystemTime,
    /// Why; shared, as the error (an I/O error, say) cannot be cloned for every listing.
    pub error: Arc<LoadError>,
}

/// The plugin files found at start, and whether the folder could be read at all.
#[derive(Debug, Default)]
struct StartFiles {
    files: Vec<String>,
    unreadable: bool,
}

/// The loaded plugins and the chains over them.
pub struct Plugins {
    config: PluginsConfig,
    runtime: Option<Arc<Runtime>>,
    /// Shared with the background tasks that swap a version's optimised code in.
    set: Arc<ArcSwap<Vec<Arc<LoadedPlugin>>>>,
    /// Versions whose optimised code is being compiled.
    optimizing: Arc<tokio::sync::watch::Sender<usize>>,
    errors: Mutex<BTreeMap<String, Rejection>>,
    /// What the folder held when the server started (see [`Plugins::failed_at_start`]).
    at_start: Mutex<StartFiles>,
    /// Serialises loads so two reloads of one file cannot interleave.
    loading: tokio::sync::Mutex<()>,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl std::fmt::Debug for Plugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugins")
            .field("dir", &self.config.dir)
            .finish_non_exhaustive()
    }
}

impl Plugins {
    /// Plugins per `config`, their `cluster-state` the engine's `shared` state; nothing is loaded yet (see
    /// [`Plugins::load_all`]).
    pub fn new(
        config: &PluginsConfig,
        metrics: Arc<crate::metrics::Metrics>,
        shared: Arc<dyn crate::engine::SharedState>,
    ) -> anyhow::Result<Self> {
        let runtime = if config.dir.is_empty() {
            None
        } else {
            let cache = if config.cache_dir.is_empty() {
                Path::new(&config.dir).join(".cache")
            } else {
                PathBuf::from(&config.cache_dir)
            };
            // wasmtime's cache wants an absolute path; a relative `dir` is relative to the working directory.
            let cache = std::path::absolute(&cache)
                .map_err(|e| anyhow::anyhow!("plugins.cache_dir {}: {e}", cache.display()))?;
            Some(Arc::new(Runtime::new(
                Some(&cache),
                PoolBounds::of(config),
                HostServices::new(config, shared),
            )?))
        };
        Ok(Self::with_runtime(config, runtime, metrics))
    }

    fn with_runtime(
        config: &PluginsConfig,
        runtime: Option<Arc<Runtime>>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Self {
            config: config.clone(),
            runtime,
            set: Arc::new(ArcSwap::from_pointee(Vec::new())),
            optimizing: Arc::new(tokio::sync::watch::Sender::new(0)),
            errors: Mutex::new(BTreeMap::new()),
            at_start: Mutex::new(StartFiles::default()),
            loading: tokio::sync::Mutex::new(()),
            watcher: Mutex::new(None),
            metrics,
        }
    }

    /// The plugin folder, when plugins are on.
    pub fn dir(&self) -> Option<&Path> {
        self.runtime.as_ref().map(|_| Path::new(&self.config.dir))
    }

    /// The loaded plugins, in chain order.
    pub fn loaded(&self) -> Arc<Vec<Arc<LoadedPlugin>>> {
        self.set.load_full()
    }

    /// Every loaded plugin's counters, for a metrics scrape.
    pub fn metrics_snapshot(&self) -> Vec<crate::metrics::PluginSnapshot> {
        self.loaded()
            .iter()
            .map(|plugin| crate::metrics::PluginSnapshot {
                name: plugin.metadata.name.clone(),
                calls: plugin
                    .stats
                    .calls
                    .load(std::sync::atomic::Ordering::Relaxed),
                denies: plugin
                    .stats
                    .denies
                    .load(std::sync::atomic::Ordering::Relaxed),
                failures: plugin
                    .stats
                    .failure_counts()
                    .into_iter()
                    .map(|(hook, kind, count)| (hook, kind.as_str(), count))
                    .collect(),
            })
            .collect()
    }

    /// Files that failed to load, with the last error.
    pub fn load_errors(&self) -> BTreeMap<String, Rejection> {
        crate::sync::lock(&self.errors).clone()
    }

    /// Whether any loaded plugin implements `hook` (lets callers skip building a request).
    pub fn any(&self, hook: Hooks) -> bool {
        self.set.load().iter().any(|p| p.implements(hook))
    }

    /// What keeps this node from serving the plugins it started with: the files found at start that
    /// have not loaded since (a file fixed or removed since no longer counts), or a folder that could not
    /// be read at start. Empty when all is well; the readiness check reports it.
    pub fn failed_at_start(&self) -> Vec<String> {
        let at_start = crate::sync::lock(&self.at_start);
        if at_start.unreadable {
            return vec![format!(
                "the plugin folder {} could not be read",
                self.config.dir
            )];
        }
        let errors = crate::sync::lock(&self.errors);
        at_start
            .files
            .iter()
            .filter(|file| errors.contains_key(*file))
            .cloned()
            .collect()
    }

    /// Loads every `.wasm` of the folder, in name order, as the server starts; failures are logged and
    /// recorded. The server serves once they are loaded, so they are compiled straight to optimised code
    /// (from the cache in milliseconds): no baseline code, and no compile competing with the first traffic.
    pub async fn load_all(&self) {
        let Some(dir) = self.dir() else { return };
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_plugin_file(p))
                .collect(),
            Err(error) => {
                tracing::error!(dir = %dir.display(), %error, "cannot read the plugin folder");
                crate::sync::lock(&self.at_start).unreadable = true;
                return;
            }
        };
        files.sort();
        crate::sync::lock(&self.at_start).files = files
            .iter()
            .filter_map(|file| file.file_name()?.to_str().map(str::to_owned))
            .collect();
        for file in files {
            self.load_file(&file, false, Tier::Optimized).await;
        }
    }

    /// Loads (or reloads) one plugin file with `tier`'s compiler and swaps it into the set; on any failure
    /// the old version keeps serving and the reason is logged. Unchanged content is skipped unless `force`
    /// (its config changed). A version loaded on baseline code moves to optimised code by itself.
    pub async fn load_file(&self, path: &Path, force: bool, tier: Tier) {
        let Some(runtime) = &self.runtime else { return };
        let Some(file) = path.file_name().and_then(|f| f.to_str()).map(str::to_owned) else {
            return;
        };
        let _loading = self.loading.lock().await;
        let bytes = match tokio::fs::read(path).await {
            Ok(bytes) => bytes,
            Err(error) => {
                let path = path.to_owned();
                return self.rejected(&file, LoadError::Unreadable { path, error });
            }
        };
        let wasm = Wasm::new(bytes);
        let current = self.loaded().iter().find(|p| p.file == file).cloned();
        if !force && current.as_ref().is_some_and(|p| p.hash == wasm.hash()) {
            tracing::debug!(%file, "plugin unchanged; not reloaded");
            return;
        }
        let beside = path.with_extension("toml");
        let started = std::time::Instant::now();
        // Baseline code is followed by the same bytes compiled again.
        let again = (tier == Tier::Baseline).then(|| wasm.bytes().to_vec());
        let loaded = runtime
            .load(
                &file,
                wasm,
                tier,
                |name| settings_for(&self.config, name, &beside),
                &self.metrics,
            )
            .await;
        self.metrics
            .plugin_loaded(loaded.is_ok(), started.elapsed());
        match loaded {
            Ok(plugin) => {
                let plugin = Arc::new(plugin);
                let m = &plugin.metadata;
                tracing::info!(
                    %file, plugin = %m.name, version = %m.version, hooks = ?hook_names(m.hooks),
                    millis = started.elapsed().as_millis() as u64,
                    "plugin {}", if current.is_some() { "reloaded" } else { "loaded" }
                );
                crate::sync::lock(&self.errors).remove(&file);
                self.set.rcu(|set| {
                    let mut next: Vec<Arc<LoadedPlugin>> =
                        set.iter().filter(|p| p.file != file).cloned().collect();
                    next.push(plugin.clone());
                    next.sort_by(|a, b| a.file.cmp(&b.file));
                    next
                });
                if let Some(bytes) = again {
                    self.optimize_in_background(runtime.clone(), plugin, bytes);
                }
            }
            Err(reason) => self.rejected(&file, reason),
        }
    }

    /// Compiles `plugin`'s optimised code on a task of its own and swaps it in for the baseline version,
    /// unless that version has been replaced or unloaded meanwhile. A failure (which a component that
    /// compiled and initialised once should not meet) leaves the baseline code serving, logged.
    fn optimize_in_background(
        &self,
        runtime: Arc<Runtime>,
        plugin: Arc<LoadedPlugin>,
        bytes: Vec<u8>,
    ) {
        let set = self.set.clone();
        let optimizing = self.optimizing.clone();
        optimizing.send_modify(|pending| *pending += 1);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let file = &plugin.file;
            match runtime.optimize(&plugin, bytes).await {
                Ok(optimized) => {
                    let optimized = Arc::new(optimized);
                    let mut swapped = false;
                    set.rcu(|set| {
                        swapped = false;
                        set.iter()
                            .map(|p| {
                                if Arc::ptr_eq(p, &plugin) {
                                    swapped = true;
                                    optimized.clone()
                                } else {
                                    p.clone()
                                }
                            })
                            .collect::<Vec<_>>()
                    });
                    if swapped {
                        tracing::info!(
                            %file, plugin = %plugin.metadata.name,
                            millis = started.elapsed().as_millis() as u64,
                            "plugin now runs optimised code"
                        );
                    }
                }
                Err(reason) => tracing::warn!(
                    %file, %reason,
                    "plugin's optimised code failed; its baseline code keeps serving"
                ),
            }
            optimizing.send_modify(|pending| *pending -= 1);
        });
    }

    /// Waits until every loaded version runs optimised code (or its optimisation failed): for benchmarks
    /// and tests that measure the code that serves in the long run.
    pub async fn optimized(&self) {
        let mut pending = self.optimizing.subscribe();
        let _ = pending.wait_for(|pending| *pending == 0).await;
    }

    fn rejected(&self, file: &str, reason: LoadError) {
        let serving = self.loaded().iter().any(|p| p.file == file);
        tracing::error!(%file, %reason, "plugin rejected{}", if serving { "; the previous version keeps serving" } else { "" });
        crate::sync::lock(&self.errors).insert(
            file.to_owned(),
            Rejection {
                at: SystemTime::now(),
                error: Arc::new(reason),
            },
        );
    }

    /// Unloads the plugin loaded from `file` (its file was removed).
    pub fn unload(&self, file: &str) {
        let mut removed = false;
        self.set.rcu(|set| {
            let next: Vec<Arc<LoadedPlugin>> =
                set.iter().filter(|p| p.file != file).cloned().collect();
            removed = next.len() != set.len();
            next
        });
        crate::sync::lock(&self.errors).remove(file);
        if removed {
            tracing::info!(%file, "plugin unloaded (file removed)");
        }
    }

    fn members(&self, hook: Hooks) -> Vec<Arc<LoadedPlugin>> {
        self.set
            .load()
            .iter()
            .filter(|p| p.implements(hook))
            .cloned()
            .collect()
    }

    /// Asks every plugin implementing `hook`, in order, feeding each verdict to `step` until one ends the
    /// chain; `None` when all were asked.
    async fn run<V, S, D>(
        &self,
        hook: Hooks,
        call: Call,
        verdict_of: fn(Reply) -> Option<V>,
        state: &mut S,
        step: fn(&mut S, Result<V, Failure>) -> Option<D>,
    ) -> Option<D> {
        for plugin in self.members(hook) {
            let verdict = ask(&plugin, &call)
                .await
                .and_then(|reply| verdict_of(reply).ok_or_else(mismatch));
            if let Some(decision) = step(state, verdict) {
                return Some(decision);
            }
        }
        None
    }

    /// The connect chain.
    pub async fn connect(&self, request: ConnectRequest) -> Decision<ConnectAllow> {
        let mut allowed = None;
        let verdict_of = |reply| match reply {
            Reply::Connect(verdict) => Some(verdict),
            _ => None,
        };
        let decision = self.run(
            Hooks::CONNECT,
            Call::Connect(request),
            verdict_of,
            &mut allowed,
            chain::connect_step,
        );
        decision.await.unwrap_or_else(|| chain::finish(allowed))
    }

    /// The subscribe chain.
    pub async fn subscribe(&self, request: SubscribeRequest) -> Decision<SubscribeAllow> {
        let mut allowed = None;
        let verdict_of = |reply| match reply {
            Reply::Subscribe(verdict) => Some(verdict),
            _ => None,
        };
        let call = Call::Subscribe(request);
        let decision = self.run(
            Hooks::SUBSCRIBE,
            call,
            verdict_of,
            &mut allowed,
            chain::subscribe_step,
        );
        decision.await.unwrap_or_else(|| chain::finish(allowed))
    }

    /// The access chain (history and presence reads).
    pub async fn access(&self, request: AccessRequest) -> Decision<()> {
        let mut allowed = None;
        let verdict_of = |reply| match reply {
            Reply::Access(verdict) => Some(verdict),
            _ => None,
        };
        let decision = self.run(
            Hooks::ACCESS,
            Call::Access(request),
            verdict_of,
            &mut allowed,
            chain::access_step,
        );
        decision.await.unwrap_or_else(|| chain::finish(allowed))
    }

    /// The publish chain.
    pub async fn publish(&self, request: PublishRequest) -> PublishDecision {
        let mut draft = Draft::new(
            request.channel.clone(),
            request.data.clone(),
            request.tags.clone(),
        );
        for plugin in self.members(Hooks::PUBLISH) {
            let call = Call::Publish(PublishRequest {
                data: draft.data.clone(),
                tags: draft.tags.clone(),
                ..request.clone()
            });
            let verdict = ask(&plugin, &call).await.and_then(|reply| match reply {
                Reply::Publish(verdict) => Ok(verdict),
                _ => Err(mismatch()),
            });
            if let Some(decision) = chain::publish_step(&mut draft, verdict) {
                return decision;
            }
        }
        draft.finish()
    }

    /// The RPC chain.
    pub async fn rpc(&self, request: RpcRequest) -> RpcDecision {
        let verdict_of = |reply| match reply {
            Reply::Rpc(verdict) => Some(verdict),
            _ => None,
        };
        let step = |_: &mut (), verdict| chain::rpc_step(verdict);
        self.run(Hooks::RPC, Call::Rpc(request), verdict_of, &mut (), step)
            .await
            .unwrap_or(RpcDecision::Unanswered)
    }

    /// Tells every plugin with the disconnect hook; failures are only logged.
    pub async fn disconnect(&self, event: DisconnectEvent) {
        let call = Call::Disconnect(event);
        for plugin in self.members(Hooks::DISCONNECT) {
            let _ = plugin.call(&call).await;
        }
    }

    /// Keeps the file watcher alive for as long as the plugins live.
    pub(crate) fn keep_watcher(&self, watcher: notify::RecommendedWatcher) {
        *crate::sync::lock(&self.watcher) = Some(watcher);
    }
}

/// The names of the hooks in a set, for logs and the API.
pub fn hook_names(hooks: Hooks) -> Vec<&'static str> {
    [
        (Hooks::CONNECT, "connect"),
        (Hooks::SUBSCRIBE, "subscribe"),
        (Hooks::PUBLISH, "publish"),
        (Hooks::RPC, "rpc"),
        (Hooks::ACCESS, "access"),
        (Hooks::DISCONNECT, "disconnect"),
    ]
    .into_iter()
    .filter(|(hook, _)| hooks.contains(*hook))
    .map(|(_, name)| name)
    .collect()
}

/// Reads a plugin's configuration file (TOML) as the JSON text its `init` receives.
pub fn read_config(path: &Path) -> Result<String, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|error| LoadError::ConfigUnreadable {
        path: path.to_owned(),
        error,
    })?;
    let table: toml::Table = text.parse().map_err(|error: toml::de::Error| {
        // The parser's own rendering quotes the file over several lines; a log line wants the line number.
        let line = error.span().map(|span| {
            let before = &text.as_bytes()[..span.start.min(text.len())];
            before.iter().filter(|&&b| b == b'\n').count() + 1
        });
        LoadError::ConfigNotToml {
            path: path.to_owned(),
            line,
            error: Box::new(error),
        }
    })?;
    serde_json::to_string(&table).map_err(|error| LoadError::ConfigNotJson {
        path: path.to_owned(),
        error,
    })
}

/// The configuration (as JSON text) and limits `config` gives the plugin named `name`, the file `beside`
/// its `.wasm` taking precedence for the configuration.
fn settings_for(
    config: &PluginsConfig,
    name: &str,
    beside: &Path,
) -> Result<(String, Limits), LoadError> {
    let text = if beside.is_file() {
        read_config(beside)?
    } else {
        match config.config.get(name) {
            Some(value) => value.to_string(),
            None => "{}".to_owned(),
        }
    };
    let overrides = config.limits.get(name).cloned().unwrap_or_default();
    let limits = Limits {
        deadline: overrides.deadline.unwrap_or(config.deadline),
        memory: overrides.memory_limit.unwrap_or(config.memory_limit),
        max_idle: config.max_idle_instances,
    };
    Ok((text, limits))
}

/// Validates a plugin offline (`herald plugin check`): compiles, links, reads its metadata and runs
/// `init` with the configuration beside it (or `config`, JSON). Returns a description of the plugin.
pub async fn check(path: &Path, config: Option<String>) -> Result<String, LoadError> {
    let defaults = PluginsConfig::default();
    let scratch = Arc::new(crate::engine::keyvalue::Stores::new(
        defaults.state_bounds(),
    ));
    let services = HostServices::new(&defaults, scratch);
    let bounds = PoolBounds {
        instances: 16,
        max_memory: 64 * 1024 * 1024,
    };
    let runtime = Runtime::new(None, bounds, services).map_err(LoadError::Runtime)?;
    let bytes = std::fs::read(path).map_err(|error| LoadError::Unreadable {
        path: path.to_owned(),
        error,
    })?;
    let file = path
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or("plugin.wasm")
        .to_owned();
    let metrics = Arc::default();
    let beside = path.with_extension("toml");
    // The code that serves in the long run is what is checked.
    let plugin = runtime
        .load(
            &file,
            Wasm::new(bytes),
            Tier::Optimized,
            |name| match &config {
                Some(json) => Ok((
                    json.clone(),
                    settings_for(&defaults, name, Path::new(""))?.1,
                )),
                None => settings_for(&defaults, name, &beside),
            },
            &metrics,
        )
        .await?;
    let m = &plugin.metadata;
    let capabilities = match plugin.capabilities() {
        [] => "none beyond logging and the clock".to_owned(),
        asked => asked.join(", "),
    };
    Ok(format!(
        "{file}: plugin {} {} (hooks: {}; contract herald:plugin@{}; capabilities: {capabilities}) ok",
        m.name,
        m.version,
        hook_names(m.hooks).join(", "),
        plugin.contract().version(),
    ))
}

/// `.wasm` files that are not hidden (a deploy writes `.name.wasm.tmp` or `.name.wasm`, then renames).
pub fn is_plugin_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.') && name.ends_with(".wasm")
}

fn mismatch() -> Failure {
    Failure::new(FailureKind::Other, "the plugin answered a different hook")
}

/// Calls and counts denies.
async fn ask(plugin: &LoadedPlugin, call: &Call) -> Result<Reply, Failure> {
    let reply = plugin.call(call).await?;
    let denied = matches!(
        &reply,
        Reply::Connect(bindings::ConnectVerdict::Deny(_))
            | Reply::Subscribe(bindings::SubscribeVerdict::Deny(_))
            | Reply::Publish(bindings::PublishVerdict::Deny(_))
            | Reply::Rpc(bindings::RpcVerdict::Deny(_))
            | Reply::Access(bindings::AccessVerdict::Deny(_))
    );
    if denied {
        plugin
            .stats
            .denies
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_file_is_read_as_json_or_refused_with_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.toml");
        std::fs::write(&good, "secret = \"s\"\n[rules]\nn = 1\n").unwrap();
        assert_eq!(
            read_config(&good).unwrap(),
            r#"{"rules":{"n":1},"secret":"s"}"#
        );

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "a = 1\nb = = 2\n").unwrap();
        let error = read_config(&bad).unwrap_err();
        assert!(
            matches!(error, LoadError::ConfigNotToml { line: Some(2), .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.starts_with(&format!(
                "plugin configuration {} is not valid TOML at line 2: ",
                bad.display()
            )),
            "{message}"
        );
        assert!(!message.contains('\n'), "one line: {message}");

        let missing = dir.path().join("missing.toml");
        assert!(matches!(
            read_config(&missing),
            Err(LoadError::ConfigUnreadable { .. })
        ));
    }
}
