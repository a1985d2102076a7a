//! Hot reload: a `notify` watcher on the plugin folder feeding a debounced reload task.
//!
//! Deploy contract: write the new file under a name that is not a plugin (`.name.wasm.tmp`), then rename it
//! into place. Events are collected for [`DEBOUNCE`] so a rename's event pair or a burst of writes causes
//! one reload; content that did not change is skipped by hash; a `<name>.toml` beside a plugin reloads
//! that plugin; a removed `.wasm` unloads it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::runtime::Tier;
use super::{Plugins, is_plugin_file};

/// How long events for the folder are collected before acting on them.
pub const DEBOUNCE: Duration = Duration::from_millis(25);

/// Starts watching the plugin folder; reloads run until `shutdown`.
pub fn start(plugins: Arc<Plugins>, shutdown: CancellationToken) -> notify::Result<()> {
    let Some(dir) = plugins.dir().map(PathBuf::from) else {
        return Ok(());
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let relevant = match event.kind {
            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
            // Reading a file (including the host's own reads) is not a change; finishing a write is.
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            _ => false,
        };
        if relevant {
            for path in event.paths {
                let _ = tx.send(path);
            }
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    plugins.keep_watcher(watcher);
    tokio::spawn(async move {
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                path = rx.recv() => match path { Some(path) => path, None => return },
            };
            let mut changed = BTreeSet::from([first]);
            let deadline = tokio::time::Instant::now() + DEBOUNCE;
            while let Ok(Some(path)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                changed.insert(path);
            }
            let mut reload = BTreeSet::new();
            for path in changed {
                if is_plugin_file(&path) {
                    reload.insert((path, false));
                } else if path.extension().is_some_and(|e| e == "toml") {
                    let wasm = path.with_extension("wasm");
                    if wasm.is_file() {
                        reload.insert((wasm, true));
                    }
                }
            }
            for (path, config_changed) in reload {
                if path.is_file() {
                    // A reload serves baseline code first, so even a large plugin swaps quickly.
                    plugins
                        .load_file(&path, config_changed, Tier::Baseline)
                        .await;
                } else if let Some(file) = path.file_name().and_then(|f| f.to_str()) {
                    plugins.unload(file);
                }
            }
        }
    });
    Ok(())
}
