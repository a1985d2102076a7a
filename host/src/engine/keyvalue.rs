//! Bounded key-value stores with expiry and atomic increments, one per scope (a plugin's name): plugins'
//! node-local state (`herald:plugin/local-state`), and the memory engine's [`SharedState`] (on one node
//! the cluster's state is the node's).
//!
//! Bounded by entries and bytes (key, value and a fixed overhead per entry); a write that does not fit
//! after expired entries are dropped is refused rather than evicting what another instance relies on.
//! Expired entries are dropped when read, when the store is full, and every so many writes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{EngineError, SharedState, millis};

/// What an entry costs besides its key and value (the map's slot, the expiry), for the byte bound.
const ENTRY_OVERHEAD: usize = 64;

/// Writes between sweeps of expired entries.
const SWEEP_EVERY: u32 = 1024;

/// How much one scope's store holds at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreBounds {
    /// Entries (expired ones not yet dropped included).
    pub max_entries: usize,
    /// Bytes: keys, values and 64 per entry.
    pub max_bytes: usize,
}

impl Default for StoreBounds {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            max_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Stores by scope, each bounded alike.
#[derive(Debug)]
pub struct Stores {
    stores: Mutex<HashMap<String, Arc<Store>>>,
    bounds: StoreBounds,
}

impl Stores {
    /// Stores bounded by `bounds` each.
    pub fn new(bounds: StoreBounds) -> Self {
        Self {
            stores: Mutex::new(HashMap::new()),
            bounds,
        }
    }

    /// The store of `scope` (created empty the first time).
    pub fn of(&self, scope: &str) -> Arc<Store> {
        crate::sync::lock(&self.stores)
            .entry(scope.to_owned())
            .or_insert_with(|| {
                Arc::new(Store {
                    inner: Mutex::default(),
                    bounds: self.bounds,
                })
            })
            .clone()
    }
}

/// One scope's store.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
    bounds: StoreBounds,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    bytes: usize,
    writes: u32,
}

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    expires_at: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

fn cost(key: &str, value: &[u8]) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

/// `ttl_ms` from now (0, or past what an `Instant` can name: never).
fn expiry(now: Instant, ttl_ms: u64) -> Option<Instant> {
    (ttl_ms > 0)
        .then(|| now.checked_add(Duration::from_millis(ttl_ms)))
        .flatten()
}

impl Inner {
    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.bytes -= cost(key, &entry.value);
        Some(entry)
    }

    fn sweep(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, entry)| !entry.live(now))
            .map(|(key, _)| key.clone())
            .collect();
        for key in expired {
            self.remove(&key);
        }
    }

    /// Puts `entry` under `key` if it fits (replacing what was there); whether it did.
    fn put(&mut self, key: &str, entry: Entry, bounds: StoreBounds, now: Instant) -> bool {
        self.writes = self.writes.wrapping_add(1);
        if self.writes.is_multiple_of(SWEEP_EVERY) {
            self.sweep(now);
        }
        let old = self.remove(key);
        let fits = |inner: &Self| {
            inner.entries.len() < bounds.max_entries
                && inner.bytes + cost(key, &entry.value) <= bounds.max_bytes
        };
        if !fits(self) {
            self.sweep(now);
        }
        if !fits(self) {
            if let Some(old) = old {
                self.bytes += cost(key, &old.value);
                self.entries.insert(key.to_owned(), old);
            }
            return false;
        }
        self.bytes += cost(key, &entry.value);
        self.entries.insert(key.to_owned(), entry);
        true
    }
}

impl Store {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        crate::sync::lock(&self.inner)
    }

    /// The value under `key`, unless absent or expired.
    pub fn get(&self, key: &str, now: Instant) -> Option<Vec<u8>> {
        let mut inner = self.inner();
        match inner.entries.get(key) {
            Some(entry) if entry.live(now) => Some(entry.value.clone()),
            Some(_) => {
                inner.remove(key);
                None
            }
            None => None,
        }
    }

    /// Stores `value` under `key` for `ttl_ms` (0: no expiry); false when it does not fit.
    pub fn set(&self, key: &str, value: Vec<u8>, ttl_ms: u64, now: Instant) -> bool {
        let entry = Entry {
            value,
            expires_at: expiry(now, ttl_ms),
        };
        self.inner().put(key, entry, self.bounds, now)
    }

    /// Adds `delta` to the number under `key` (absent, expired or not a number: 0), stored as its decimal
    /// text, and returns the sum (saturating); a new entry expires after `ttl_ms`, an existing one keeps
    /// its expiry. `None` when it does not fit.
    pub fn incr(&self, key: &str, delta: i64, ttl_ms: u64, now: Instant) -> Option<i64> {
        let mut inner = self.inner();
        let (current, expires_at) = match inner.entries.get(key) {
            Some(entry) if entry.live(now) => {
                let number = std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(|text| text.parse::<i64>().ok())
                    .unwrap_or(0);
                (number, entry.expires_at)
            }
            _ => (0, expiry(now, ttl_ms)),
        };
        let sum = current.saturating_add(delta);
        let entry = Entry {
            value: sum.to_string().into_bytes(),
            expires_at,
        };
        inner.put(key, entry, self.bounds, now).then_some(sum)
    }

    /// Removes `key`; whether it was there (and live).
    pub fn delete(&self, key: &str, now: Instant) -> bool {
        self.inner()
            .remove(key)
            .is_some_and(|entry| entry.live(now))
    }

    /// Entries held (expired ones not yet dropped included) and their bytes.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.inner();
        (inner.entries.len(), inner.bytes)
    }
}

fn full() -> EngineError {
    EngineError::Refused("the plugin's state is full".to_owned())
}

#[async_trait]
impl SharedState for Stores {
    async fn state_get(&self, scope: &str, key: &str) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.of(scope).get(key, Instant::now()))
    }

    async fn state_set(
        &self,
        scope: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), EngineError> {
        match self.of(scope).set(key, value, millis(ttl), Instant::now()) {
            true => Ok(()),
            false => Err(full()),
        }
    }

    async fn state_incr(
        &self,
        scope: &str,
        key: &str,
        delta: i64,
        ttl: Duration,
    ) -> Result<i64, EngineError> {
        self.of(scope)
            .incr(key, delta, millis(ttl), Instant::now())
            .ok_or_else(full)
    }

    async fn state_delete(&self, scope: &str, key: &str) -> Result<bool, EngineError> {
        Ok(self.of(scope).delete(key, Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max_entries: usize, max_bytes: usize) -> Arc<Store> {
        Stores::new(StoreBounds {
            max_entries,
            max_bytes,
        })
        .of("p")
    }

    #[test]
    fn values_expire_and_are_shared_by_name() {
        let states = Stores::new(StoreBounds {
            max_entries: 10,
            max_bytes: 10_000,
        });
        let now = Instant::now();
        assert!(states.of("p").set("k", b"v".to_vec(), 100, now));
        assert_eq!(states.of("p").get("k", now), Some(b"v".to_vec()));
        assert_eq!(states.of("other").get("k", now), None);
        let later = now + Duration::from_millis(100);
        assert_eq!(states.of("p").get("k", later), None);
        assert_eq!(states.of("p").usage(), (0, 0), "read expired is dropped");
        assert!(states.of("p").set("forever", b"v".to_vec(), 0, now));
        assert!(
            states
                .of("p")
                .get("forever", now + Duration::from_secs(86_400))
                .is_some()
        );
        assert!(states.of("p").delete("forever", now));
        assert!(!states.of("p").delete("forever", now));
    }

    #[test]
    fn increments_count_from_zero_and_keep_their_expiry() {
        let store = store(10, 10_000);
        let now = Instant::now();
        assert_eq!(store.incr("n", 2, 1000, now), Some(2));
        assert_eq!(
            store.incr("n", -5, 0, now + Duration::from_millis(10)),
            Some(-3)
        );
        assert_eq!(store.get("n", now), Some(b"-3".to_vec()));
        // The first increment's expiry holds: the window ends 1 s after it began.
        assert_eq!(
            store.incr("n", 1, 1000, now + Duration::from_millis(1000)),
            Some(1)
        );
        store.set("text", b"not a number".to_vec(), 0, now);
        assert_eq!(store.incr("text", 1, 0, now), Some(1));
        store.set("max", i64::MAX.to_string().into_bytes(), 0, now);
        assert_eq!(store.incr("max", 1, 0, now), Some(i64::MAX));
    }

    #[test]
    fn a_full_store_refuses_after_dropping_what_expired() {
        let store = store(2, 10_000);
        let now = Instant::now();
        assert!(store.set("a", vec![1], 10, now));
        assert!(store.set("b", vec![1], 0, now));
        assert!(!store.set("c", vec![1], 0, now), "full");
        assert_eq!(store.incr("c", 1, 0, now), None);
        // Replacing an entry is not growing.
        assert!(store.set("b", vec![2], 0, now));
        let later = now + Duration::from_millis(10);
        assert!(
            store.set("c", vec![1], 0, later),
            "a's room, once it expired"
        );
        assert_eq!(store.get("a", later), None);

        let small = self::store(100, 2 * ENTRY_OVERHEAD + 10);
        assert!(small.set("k", vec![0; 5], 0, now));
        assert!(
            !small.set("big", vec![0; ENTRY_OVERHEAD], 0, now),
            "over the bytes"
        );
        assert_eq!(small.get("k", now), Some(vec![0; 5]));
        // A refused replacement keeps the old value.
        assert!(!small.set("k", vec![0; 2 * ENTRY_OVERHEAD], 0, now));
        assert_eq!(small.get("k", now), Some(vec![0; 5]));
        assert_eq!(small.usage(), (1, 1 + 5 + ENTRY_OVERHEAD));
    }
}
