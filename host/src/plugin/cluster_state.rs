//! Plugins' cluster-wide state (`herald:plugin/cluster-state`, from 0.2): a plugin's calls turned into
//! the engine's [`SharedState`] calls under the plugin's name, within the hook's deadline and the bounds
//! of `[plugins]` (key and value size, longest TTL).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bindings::herald::plugin::cluster_state::Error;
use crate::engine::{EngineError, SharedState};

/// What bounds every plugin's cluster state.
#[derive(Debug, Clone, Copy)]
pub(super) struct ClusterStateBounds {
    pub max_value_bytes: usize,
    pub max_ttl: Duration,
}

/// The engine's shared state, with the bounds, before it is given to a plugin.
#[derive(Clone)]
pub struct ClusterStates {
    engine: Arc<dyn SharedState>,
    bounds: ClusterStateBounds,
}

impl std::fmt::Debug for ClusterStates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterStates")
            .field("bounds", &self.bounds)
            .finish_non_exhaustive()
    }
}

impl ClusterStates {
    /// The engine's state, bounded per `[plugins]`.
    pub fn new(engine: Arc<dyn SharedState>, config: &super::PluginsConfig) -> Self {
        Self {
            engine,
            bounds: ClusterStateBounds {
                max_value_bytes: config.cluster_state_max_value_bytes,
                max_ttl: config.cluster_state_max_ttl,
            },
        }
    }

    /// The state of the plugin named `plugin`.
    pub(super) fn of(&self, plugin: &str) -> ClusterState {
        ClusterState {
            states: self.clone(),
            scope: plugin.to_owned(),
        }
    }
}

/// One plugin's cluster state.
#[derive(Debug, Clone)]
pub(super) struct ClusterState {
    states: ClusterStates,
    scope: String,
}

impl ClusterState {
    fn engine(&self) -> &dyn SharedState {
        &*self.states.engine
    }

    /// `ttl_ms` as the engine is given it: never zero, never over the bound.
    fn ttl(&self, ttl_ms: u64) -> Duration {
        let max = self.states.bounds.max_ttl;
        match ttl_ms {
            0 => max,
            ms => Duration::from_millis(ms).min(max),
        }
    }

    fn check_size(&self, bytes: usize) -> Result<(), Error> {
        match bytes > self.states.bounds.max_value_bytes {
            true => Err(Error::TooLarge),
            false => Ok(()),
        }
    }

    pub(super) async fn get(
        &self,
        key: String,
        deadline: Option<Instant>,
    ) -> Result<Option<Vec<u8>>, Error> {
        self.check_size(key.len())?;
        within(deadline, self.engine().state_get(&self.scope, &key)).await
    }

    pub(super) async fn set(
        &self,
        key: String,
        value: Vec<u8>,
        ttl_ms: u64,
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        self.check_size(key.len())?;
        self.check_size(value.len())?;
        let call = self
            .engine()
            .state_set(&self.scope, &key, value, self.ttl(ttl_ms));
        within(deadline, call).await
    }

    pub(super) async fn incr(
        &self,
        key: String,
        delta: i64,
        ttl_ms: u64,
        deadline: Option<Instant>,
    ) -> Result<i64, Error> {
        self.check_size(key.len())?;
        let call = self
            .engine()
            .state_incr(&self.scope, &key, delta, self.ttl(ttl_ms));
        within(deadline, call).await
    }

    pub(super) async fn delete(
        &self,
        key: String,
        deadline: Option<Instant>,
    ) -> Result<bool, Error> {
        self.check_size(key.len())?;
        within(deadline, self.engine().state_delete(&self.scope, &key)).await
    }
}

/// Runs an engine call, giving up at the hook's deadline.
async fn within<T>(
    deadline: Option<Instant>,
    call: impl Future<Output = Result<T, EngineError>>,
) -> Result<T, Error> {
    let result = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline.into(), call)
            .await
            .map_err(|_| Error::Timeout)?,
        None => call.await,
    };
    result.map_err(|error| match error {
        EngineError::Refused(_) => Error::Full,
        other => Error::Unavailable(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::engine::keyvalue::{StoreBounds, Stores};

    fn states(max_entries: usize) -> ClusterStates {
        let bounds = StoreBounds {
            max_entries,
            max_bytes: 1 << 20,
        };
        let engine = Arc::new(Stores::new(bounds));
        let config = super::super::PluginsConfig {
            cluster_state_max_value_bytes: 8,
            cluster_state_max_ttl: Duration::from_secs(60),
            ..Default::default()
        };
        ClusterStates::new(engine, &config)
    }

    #[tokio::test]
    async fn plugins_are_kept_apart_and_bounded() {
        let states = states(2);
        let (a, b) = (states.of("a"), states.of("b"));
        a.set("k".into(), b"1".to_vec(), 0, None)
            .await
            .expect("set");
        assert_eq!(b.get("k".into(), None).await.expect("get"), None);
        assert_eq!(a.incr("k".into(), 2, 0, None).await.expect("incr"), 3);
        assert_eq!(
            a.set("k".into(), vec![0; 9], 0, None).await,
            Err(Error::TooLarge)
        );
        assert_eq!(a.get("123456789".into(), None).await, Err(Error::TooLarge));
        a.set("j".into(), vec![], 0, None).await.expect("set");
        assert_eq!(a.set("x".into(), vec![], 0, None).await, Err(Error::Full));
        assert!(a.delete("j".into(), None).await.expect("delete"));
    }

    #[test]
    fn every_entry_expires_within_the_bound() {
        let state = states(2).of("a");
        assert_eq!(state.ttl(0), Duration::from_secs(60));
        assert_eq!(state.ttl(u64::MAX), Duration::from_secs(60));
        assert_eq!(state.ttl(1500), Duration::from_millis(1500));
    }

    #[tokio::test]
    async fn a_passed_deadline_is_a_timeout() {
        let state = states(2).of("a");
        let passed = Instant::now() - Duration::from_millis(1);
        // The memory engine answers at once, but `timeout_at` polls the call first: a call that is ready
        // wins; one that is not, times out. A pending call shows the deadline is applied.
        let pending = within(Some(passed), std::future::pending::<Result<(), _>>());
        assert_eq!(pending.await, Err(Error::Timeout));
        assert!(state.get("k".into(), Some(passed)).await.is_ok());
    }
}
