//! Configuration hot reload: when the configuration file `herald serve` was started with changes (or the
//! process gets `SIGHUP`), it is loaded again the way it was at start — `HERALD_*` overrides applied,
//! validated — and the Pusher apps become the ones it describes ([`crate::pusher_app::PusherApps::reload`]).
//! Everything else in the file is read at start only; a reload that changes something else says it needs
//! a restart. A file that does not load is refused with its error and the running configuration stays.
//!
//! The file's folder is watched, not the file: editors and Kubernetes ConfigMap mounts replace the file
//! (a rename, a symlink swap) rather than write into it. Events are collected for [`DEBOUNCE`], and a file
//! whose content did not change is not reloaded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::{Config, Source};
use crate::node::Node;

/// How long events in the configuration file's folder are collected before it is read again.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// Starts watching `path`, the file `node` was configured from; reloads run until the node shuts down.
pub fn watch(node: Arc<Node>, path: PathBuf) -> notify::Result<()> {
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    // `true`: asked for by SIGHUP, so read even when the content looks the same.
    let (changed, mut changes) = mpsc::unbounded_channel::<bool>();
    let hangup = changed.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|event| !event.kind.is_access()) {
            let _ = changed.send(false);
        }
    })?;
    watcher.watch(&folder, RecursiveMode::NonRecursive)?;
    forward_hangups(hangup);
    let mut loaded = std::fs::read(&path).ok();
    tokio::spawn(async move {
        // Dropped with the task: the watcher lives as long as the reloads.
        let _watcher = watcher;
        loop {
            let mut forced = tokio::select! {
                () = node.shutdown.cancelled() => return,
                change = changes.recv() => match change { Some(forced) => forced, None => return },
            };
            let deadline = tokio::time::Instant::now() + DEBOUNCE;
            while let Ok(Some(hangup)) = tokio::time::timeout_at(deadline, changes.recv()).await {
                forced |= hangup;
            }
            let content = std::fs::read(&path).ok();
            if content.is_none() || (content == loaded && !forced) {
                continue;
            }
            loaded = content;
            reload(&node, &path).await;
        }
    });
    Ok(())
}

/// Makes `SIGHUP` ask for a reload as a change of the file does (where there are signals). Registered
/// before returning, so a `SIGHUP` once the server listens never meets the default action (exit).
fn forward_hangups(changed: mpsc::UnboundedSender<bool>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!(
                "SIGHUP cannot be handled here; the configuration reloads on file changes only"
            );
            return;
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                if changed.send(true).is_err() {
                    return;
                }
            }
        });
    }
    #[cfg(not(unix))]
    drop(changed);
}

/// Loads `path` again and applies what can change while running: one log line for the outcome, one per
/// app that changed.
async fn reload(node: &Node, path: &Path) {
    let config = match Config::load(Source::File(path)) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(file = %path.display(), "configuration reload refused, the running configuration stays: {error}");
            return;
        }
    };
    let changes = node.pusher.reload(&config.pusher).await;
    for change in &changes {
        tracing::info!("pusher {change}");
    }
    if needs_restart(&node.config, &config) {
        tracing::warn!(file = %path.display(), "configuration reloaded: only the Pusher apps change while running; the other changes need a restart");
    } else {
        tracing::info!(file = %path.display(), apps_changed = changes.len(), "configuration reloaded");
    }
}

/// Whether `loaded` differs from `running` in more than the Pusher apps (the address aside, which the
/// command line may override).
fn needs_restart(running: &Config, loaded: &Config) -> bool {
    let comparable = |config: &Config| {
        let mut config = config.clone();
        config.address = running.address;
        config.pusher.app = Default::default();
        config.pusher.apps = Vec::new();
        config
    };
    comparable(running) != comparable(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_beside_the_pusher_apps_need_a_restart() {
        let running = Config::from_toml("[pusher]\napp_id = \"1\"\nkey = \"k\"\nsecret = \"s\"")
            .expect("config");
        let apps_changed = Config::from_toml(
            "[pusher]\napp_id = \"1\"\nkey = \"k2\"\nsecret = \"s\"\n[[pusher.apps]]\nid = \"2\"\nkey = \"a\"\nsecret = \"b\"",
        )
        .expect("config");
        assert!(!needs_restart(&running, &apps_changed));
        let moved = Config::from_toml(
            "address = \"127.0.0.1:9\"\n[pusher]\napp_id = \"1\"\nkey = \"k\"\nsecret = \"s\"",
        )
        .expect("config");
        assert!(
            !needs_restart(&running, &moved),
            "the address is the command line's"
        );
        let timings = Config::from_toml(
            "[pusher]\napp_id = \"1\"\nkey = \"k\"\nsecret = \"s\"\nactivity_timeout = \"5s\"",
        )
        .expect("config");
        assert!(needs_restart(&running, &timings));
    }
}
