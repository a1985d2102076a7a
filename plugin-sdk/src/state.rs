//! State shared by every instance of the plugin on one Herald node (`herald:plugin/local-state`, from
//! contract 0.2): a key-value store with expiry and atomic increments, kept across reloads of the plugin.
//!
//! Herald bounds it (`plugins.state_max_entries`, `plugins.state_max_bytes`): a write that does not fit
//! returns `false` / `None` rather than evicting anything, so a plugin decides what a full store means
//! (usually: fail closed, or decide without the cache). Outside WebAssembly (`cargo test`) it is a store of
//! the test's own thread with the same semantics, so plugin logic that uses it unit-tests natively;
//! [`clear`] empties it between cases.
//!
//! ```
//! use std::time::Duration;
//! use herald_sdk::state;
//!
//! // At most 5 publishes per user per second, on this node.
//! let key = "publishes:42";
//! let count = state::incr(key, 1, Duration::from_secs(1)).unwrap_or(i64::MAX);
//! assert_eq!(count, 1);
//! assert_eq!(state::get(key).as_deref(), Some(&b"1"[..]));
//! ```

use std::time::Duration;

/// A TTL as the contract passes it: milliseconds, saturating.
pub(crate) fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

/// The value under `key`, unless absent or expired.
pub fn get(key: &str) -> Option<Vec<u8>> {
    imp::get(key)
}

/// Stores `value` under `key` for `ttl` (zero: no expiry); `false` when the store is full.
pub fn set(key: &str, value: &[u8], ttl: Duration) -> bool {
    imp::set(key, value, millis(ttl))
}

/// Adds `delta` to the number under `key` (absent, expired or not a number: 0), kept as decimal text,
/// and returns the sum; a new entry expires after `ttl` (zero: never), an existing one keeps its expiry.
/// `None` when the store is full. Concurrent increments from other instances are never lost.
pub fn incr(key: &str, delta: i64, ttl: Duration) -> Option<i64> {
    imp::incr(key, delta, millis(ttl))
}

/// Removes `key`; whether it was there.
pub fn delete(key: &str) -> bool {
    imp::delete(key)
}

/// Empties the native store of this thread (tests); nothing inside Herald.
pub fn clear() {
    #[cfg(not(target_arch = "wasm32"))]
    imp::clear();
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use crate::bindings::herald::plugin::local_state;

    pub(super) fn get(key: &str) -> Option<Vec<u8>> {
        local_state::get(key)
    }

    pub(super) fn set(key: &str, value: &[u8], ttl_ms: u64) -> bool {
        local_state::set(key, value, ttl_ms)
    }

    pub(super) fn incr(key: &str, delta: i64, ttl_ms: u64) -> Option<i64> {
        local_state::incr(key, delta, ttl_ms)
    }

    pub(super) fn delete(key: &str) -> bool {
        local_state::delete(key)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use crate::native_store::NativeStore;

    thread_local! {
        static STORE: NativeStore = NativeStore::default();
    }

    pub(super) fn get(key: &str) -> Option<Vec<u8>> {
        STORE.with(|store| store.get(key))
    }

    pub(super) fn set(key: &str, value: &[u8], ttl_ms: u64) -> bool {
        STORE.with(|store| store.set(key, value, ttl_ms));
        true
    }

    pub(super) fn incr(key: &str, delta: i64, ttl_ms: u64) -> Option<i64> {
        Some(STORE.with(|store| store.incr(key, delta, ttl_ms)))
    }

    pub(super) fn delete(key: &str) -> bool {
        STORE.with(|store| store.delete(key))
    }

    pub(super) fn clear() {
        STORE.with(NativeStore::clear);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_native_store_behaves_like_herald_s() {
        clear();
        assert_eq!(get("k"), None);
        assert!(set("k", b"v", Duration::ZERO));
        assert_eq!(get("k"), Some(b"v".to_vec()));
        assert_eq!(incr("n", 2, Duration::from_secs(60)), Some(2));
        assert_eq!(incr("n", -3, Duration::ZERO), Some(-1));
        assert_eq!(
            incr("k", 1, Duration::ZERO),
            Some(1),
            "not a number counts as 0"
        );
        assert!(delete("n"));
        assert!(!delete("n"));
        // Expired at once: a TTL already over (1 ms, checked after it passed) reads as absent.
        assert!(set("gone", b"v", Duration::from_millis(1)));
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(get("gone"), None);
        clear();
        assert_eq!(get("k"), None);
    }
}
