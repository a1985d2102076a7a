//! What a plugin instance's store holds, and the host functions a plugin may import (log, clock; from 0.2
//! the plugin's node-local and cluster-wide state and outbound HTTP).
//!
//! Each instance gets its own [`InstanceState`]: a closed WASI context (no files, no network, no
//! environment; the Rust standard library in the guest needs WASI to exist, not to do anything) and a
//! memory cap that records when it refused to grow, so a failure can be reported as "memory limit".

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Result};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::herald::plugin::cluster_state;
use super::bindings::{self, Level};
use super::cluster_state::ClusterState;
use super::http::PluginHttp;
use crate::engine::keyvalue::Store;

/// What a plugin's instances share: its node-local and cluster-wide state and its outbound HTTP.
#[derive(Debug, Clone)]
pub(super) struct Grants {
    pub state: Arc<Store>,
    pub cluster: ClusterState,
    pub http: Arc<PluginHttp>,
}

/// Largest guest stderr kept (a panic message) to explain a trap.
const STDERR_CAPTURE: usize = 4096;

/// Per-instance host state.
pub(super) struct InstanceState {
    plugin: String,
    wasi: WasiCtx,
    table: ResourceTable,
    stderr: MemoryOutputPipe,
    /// The plugin's state and HTTP (none while its name is not known yet: the load's first instance).
    grants: Option<Grants>,
    /// When the hook being called must have decided (the epoch deadline's instant, for HTTP requests).
    pub deadline: Option<Instant>,
    /// The memory cap.
    pub limits: MemoryCap,
}

impl std::fmt::Debug for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceState")
            .field("plugin", &self.plugin)
            .finish_non_exhaustive()
    }
}

impl InstanceState {
    /// State for a new instance of `plugin` capped at `memory_limit` bytes of linear memory.
    pub(super) fn new(plugin: &str, memory_limit: usize, grants: Option<Grants>) -> Self {
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE);
        let wasi = WasiCtx::builder().stderr(stderr.clone()).build();
        Self {
            plugin: plugin.to_owned(),
            wasi,
            table: ResourceTable::new(),
            stderr,
            grants,
            deadline: None,
            limits: MemoryCap {
                limit: memory_limit,
                refused: false,
            },
        }
    }

    /// What the guest wrote to stderr (a Rust panic message), trimmed.
    pub(super) fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents())
            .trim()
            .to_owned()
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::herald::plugin::host::Host for InstanceState {
    fn log(&mut self, level: Level, message: String) {
        let plugin = self.plugin.as_str();
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn now_ms(&mut self) -> u64 {
        crate::engine::now_ms().max(0) as u64
    }
}

impl bindings::herald::plugin::types::Host for InstanceState {}

impl bindings::v0_1::herald::plugin::host::Host for InstanceState {
    fn log(&mut self, level: bindings::v0_1::herald::plugin::host::Level, message: String) {
        use bindings::v0_1::herald::plugin::host::Level as V0_1;
        let level = match level {
            V0_1::Trace => Level::Trace,
            V0_1::Debug => Level::Debug,
            V0_1::Info => Level::Info,
            V0_1::Warn => Level::Warn,
            V0_1::Error => Level::Error,
        };
        bindings::herald::plugin::host::Host::log(self, level, message);
    }

    fn now_ms(&mut self) -> u64 {
        bindings::herald::plugin::host::Host::now_ms(self)
    }
}

impl InstanceState {
    fn state(&self) -> Option<&Store> {
        self.grants.as_ref().map(|grants| &*grants.state)
    }

    fn cluster(&self) -> Result<&ClusterState, cluster_state::Error> {
        self.grants
            .as_ref()
            .map(|grants| &grants.cluster)
            .ok_or_else(|| {
                cluster_state::Error::Unavailable("no state while the plugin loads".to_owned())
            })
    }
}

impl bindings::herald::plugin::local_state::Host for InstanceState {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        self.state()?.get(&key, Instant::now())
    }

    fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: u64) -> bool {
        self.state()
            .is_some_and(|state| state.set(&key, value, ttl_ms, Instant::now()))
    }

    fn incr(&mut self, key: String, delta: i64, ttl_ms: u64) -> Option<i64> {
        self.state()?.incr(&key, delta, ttl_ms, Instant::now())
    }

    fn delete(&mut self, key: String) -> bool {
        self.state()
            .is_some_and(|state| state.delete(&key, Instant::now()))
    }
}

impl cluster_state::Host for InstanceState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, cluster_state::Error> {
        self.cluster()?.get(key, self.deadline).await
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> Result<(), cluster_state::Error> {
        self.cluster()?.set(key, value, ttl_ms, self.deadline).await
    }

    async fn incr(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: u64,
    ) -> Result<i64, cluster_state::Error> {
        self.cluster()?
            .incr(key, delta, ttl_ms, self.deadline)
            .await
    }

    async fn delete(&mut self, key: String) -> Result<bool, cluster_state::Error> {
        self.cluster()?.delete(key, self.deadline).await
    }
}

impl bindings::herald::plugin::http::Host for InstanceState {
    async fn fetch(
        &mut self,
        request: bindings::herald::plugin::http::Request,
    ) -> Result<bindings::herald::plugin::http::Response, bindings::herald::plugin::http::Error>
    {
        let Some(grants) = &self.grants else {
            let reason = "no HTTP while the plugin loads".to_owned();
            return Err(bindings::herald::plugin::http::Error::NotAllowed(reason));
        };
        grants.http.fetch(request, self.deadline).await
    }
}

/// Caps an instance's linear memory and remembers a refusal.
#[derive(Debug, Clone, Copy)]
pub(super) struct MemoryCap {
    limit: usize,
    /// Set once a growth was refused.
    pub refused: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> Result<bool> {
        if desired > self.limit {
            self.refused = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> Result<bool> {
        Ok(desired <= 100_000)
    }
}
