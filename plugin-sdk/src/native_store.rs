//! The key-value store the SDK's `state` and `cluster_state` use outside WebAssembly (`cargo test`): one
//! per test thread, with Herald's semantics (expiry, increments as decimal text, not-a-number as 0,
//! saturating sums) but no bounds.

use std::cell::RefCell;
use std::collections::HashMap;

/// Value and expiry (ms since the epoch, by [`crate::now_ms`]).
type Entry = (Vec<u8>, Option<u64>);

/// One store.
#[derive(Default)]
pub(crate) struct NativeStore(RefCell<HashMap<String, Entry>>);

fn live(entry: &Entry) -> bool {
    entry.1.is_none_or(|at| at > crate::now_ms())
}

fn expiry(ttl_ms: u64) -> Option<u64> {
    (ttl_ms > 0).then(|| crate::now_ms().saturating_add(ttl_ms))
}

impl NativeStore {
    pub(crate) fn get(&self, key: &str) -> Option<Vec<u8>> {
        let store = self.0.borrow();
        store.get(key).filter(|e| live(e)).map(|e| e.0.clone())
    }

    pub(crate) fn set(&self, key: &str, value: &[u8], ttl_ms: u64) {
        let entry = (value.to_vec(), expiry(ttl_ms));
        self.0.borrow_mut().insert(key.to_owned(), entry);
    }

    pub(crate) fn incr(&self, key: &str, delta: i64, ttl_ms: u64) -> i64 {
        let mut store = self.0.borrow_mut();
        let (current, expires) = match store.get(key).filter(|e| live(e)) {
            Some((value, expires)) => {
                let number = std::str::from_utf8(value).ok().and_then(|t| t.parse().ok());
                (number.unwrap_or(0i64), *expires)
            }
            None => (0, expiry(ttl_ms)),
        };
        let sum = current.saturating_add(delta);
        store.insert(key.to_owned(), (sum.to_string().into_bytes(), expires));
        sum
    }

    pub(crate) fn delete(&self, key: &str) -> bool {
        self.0.borrow_mut().remove(key).is_some_and(|e| live(&e))
    }

    pub(crate) fn clear(&self) {
        self.0.borrow_mut().clear();
    }
}
