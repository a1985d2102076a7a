//! State shared by every instance of the plugin on every Herald node (`herald:plugin/cluster-state`, from
//! contract 0.2): the same operations as [`crate::state`], kept by Herald's engine — in Redis with the
//! Redis engine, so a count holds across the cluster (rate limits per user, revocation lists).
//!
//! Each call is a round trip to Redis within the hook's deadline, and can fail: Redis unreachable, the
//! deadline reached, a key or value over `plugins.cluster_state_max_value_bytes`, a full store (memory
//! engine). The plugin decides what a failure means — usually it fails closed. Every entry expires: a TTL
//! of zero, or over `plugins.cluster_state_max_ttl` (default one day), is cut to that bound.
//!
//! Outside WebAssembly (`cargo test`) it is a store of the test's own thread; [`fail_with`] makes every
//! call fail, so a test can check what the plugin does when Redis is down.
//!
//! ```
//! use std::time::Duration;
//! use herald_sdk::cluster_state;
//!
//! // At most 5 publishes per user per second, across the cluster.
//! let count = cluster_state::incr("publishes:42", 1, Duration::from_secs(1));
//! assert_eq!(count, Ok(1));
//!
//! cluster_state::fail_with(Some(cluster_state::Error::Timeout));
//! assert_eq!(cluster_state::get("publishes:42"), Err(cluster_state::Error::Timeout));
//! # cluster_state::fail_with(None);
//! ```

use std::time::Duration;

pub use crate::bindings::herald::plugin::cluster_state::Error;

use crate::state::millis;

/// The value under `key`, unless absent or expired.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
    imp::get(key)
}

/// Stores `value` under `key` for `ttl` (zero: the longest Herald allows).
pub fn set(key: &str, value: &[u8], ttl: Duration) -> Result<(), Error> {
    imp::set(key, value, millis(ttl))
}

/// Adds `delta` to the number under `key` (absent, expired or not a number: 0), kept as decimal text,
/// and returns the sum; a new entry expires after `ttl`, an existing one keeps its expiry. Increments from
/// other instances and nodes are never lost.
pub fn incr(key: &str, delta: i64, ttl: Duration) -> Result<i64, Error> {
    imp::incr(key, delta, millis(ttl))
}

/// Removes `key`; whether it was there.
pub fn delete(key: &str) -> Result<bool, Error> {
    imp::delete(key)
}

/// Empties the native store of this thread (tests); nothing inside Herald.
pub fn clear() {
    #[cfg(not(target_arch = "wasm32"))]
    imp::clear();
}

/// Makes every call on this thread fail with `error` until called with `None` (tests: Redis down, a
/// deadline reached); nothing inside Herald.
pub fn fail_with(error: Option<Error>) {
    #[cfg(not(target_arch = "wasm32"))]
    imp::FAILURE.with_borrow_mut(|failure| *failure = error);
    #[cfg(target_arch = "wasm32")]
    let _ = error;
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::Error;
    use crate::bindings::herald::plugin::cluster_state;

    pub(super) fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
        cluster_state::get(key)
    }

    pub(super) fn set(key: &str, value: &[u8], ttl_ms: u64) -> Result<(), Error> {
        cluster_state::set(key, value, ttl_ms)
    }

    pub(super) fn incr(key: &str, delta: i64, ttl_ms: u64) -> Result<i64, Error> {
        cluster_state::incr(key, delta, ttl_ms)
    }

    pub(super) fn delete(key: &str) -> Result<bool, Error> {
        cluster_state::delete(key)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use std::cell::RefCell;

    use super::Error;
    use crate::native_store::NativeStore;

    thread_local! {
        static STORE: NativeStore = NativeStore::default();
        pub(super) static FAILURE: RefCell<Option<Error>> = const { RefCell::new(None) };
    }

    /// `answer`, unless a failure is set.
    fn call<T>(answer: impl FnOnce(&NativeStore) -> T) -> Result<T, Error> {
        match FAILURE.with_borrow(Clone::clone) {
            Some(error) => Err(error),
            None => Ok(STORE.with(answer)),
        }
    }

    pub(super) fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
        call(|store| store.get(key))
    }

    pub(super) fn set(key: &str, value: &[u8], ttl_ms: u64) -> Result<(), Error> {
        call(|store| store.set(key, value, ttl_ms))
    }

    pub(super) fn incr(key: &str, delta: i64, ttl_ms: u64) -> Result<i64, Error> {
        call(|store| store.incr(key, delta, ttl_ms))
    }

    pub(super) fn delete(key: &str) -> Result<bool, Error> {
        call(|store| store.delete(key))
    }

    pub(super) fn clear() {
        STORE.with(NativeStore::clear);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_native_store_fails_when_told() {
        clear();
        assert_eq!(incr("n", 2, Duration::from_secs(60)), Ok(2));
        assert_eq!(set("k", b"v", Duration::ZERO), Ok(()));
        assert_eq!(get("k"), Ok(Some(b"v".to_vec())));
        assert_eq!(
            crate::state::get("k"),
            None,
            "node-local state is another store"
        );
        fail_with(Some(Error::Unavailable("redis down".into())));
        assert_eq!(
            incr("n", 1, Duration::ZERO),
            Err(Error::Unavailable("redis down".into()))
        );
        fail_with(None);
        assert_eq!(incr("n", 1, Duration::ZERO), Ok(3));
        assert_eq!(delete("n"), Ok(true));
        clear();
        assert_eq!(get("k"), Ok(None));
    }
}
