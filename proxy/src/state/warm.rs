//! The import index: which functions and packages each worker holds warm,
//! as far as the proxy can tell.
//!
//! Why: `code-locality` and `least-load` prefer a worker that already has
//! the function (and its heavy imports) loaded; the workers do not
//! publish their caches, but the proxy sees every call: a worker that
//! answered a call of `f` (with an `x-ol-timing` header, i.e. it ran it:
//! `start=cold|zygote|unpaused|warm`) holds `f` and `f`'s packages warm
//! for a while (`code_store.warm_ms`, the order of the workers' pause and
//! evict times).
//!
//! Layout: each worker (`super::workers::Worker`, so it carries over membership
//! changes) has a fixed table of [`SLOTS`] (key hash, expiry) pairs of
//! relaxed atomics. A lookup scans it (no lock, no allocation: the policies
//! ask a few times per decision); a record overwrites the same key or the
//! slot that expires first. Keys are `policies::hash_str` of the function
//! or package name, the keys the policies ask about.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Instant;

use config::wire::Start;

/// Functions plus packages remembered per worker.
pub const SLOTS: usize = 64;

/// Milliseconds since the process started (never 0, so 0 marks an empty slot).
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// One worker's warm set.
pub struct WorkerWarm {
    keys: [AtomicU64; SLOTS],
    until: [AtomicU64; SLOTS],
}

impl Default for WorkerWarm {
    fn default() -> Self {
        WorkerWarm {
            keys: std::array::from_fn(|_| AtomicU64::new(0)),
            until: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl WorkerWarm {
    /// Whether `key` is warm at `now` (from [`now_ms`]).
    #[inline]
    pub fn contains(&self, key: u64, now: u64) -> bool {
        self.keys
            .iter()
            .zip(&self.until)
            .any(|(k, u)| k.load(Relaxed) == key && u.load(Relaxed) > now)
    }

    /// Marks `key` warm until `until`. Racing records may lose an entry;
    /// this is a hint, not a ledger.
    pub fn record(&self, key: u64, until: u64) {
        let mut victim = 0;
        let mut earliest = u64::MAX;
        for i in 0..SLOTS {
            if self.keys[i].load(Relaxed) == key {
                self.until[i].store(until, Relaxed);
                return;
            }
            let u = self.until[i].load(Relaxed);
            if u < earliest {
                earliest = u;
                victim = i;
            }
        }
        self.until[victim].store(0, Relaxed);
        self.keys[victim].store(key, Relaxed);
        self.until[victim].store(until, Relaxed);
    }

    /// Forgets every entry (the worker restarted: nothing is warm).
    pub fn clear(&self) {
        for u in &self.until {
            u.store(0, Relaxed);
        }
    }

    /// Entries not yet expired.
    pub fn live(&self, now: u64) -> usize {
        self.until.iter().filter(|u| u.load(Relaxed) > now).count()
    }
}

/// What workers reported in `x-ol-timing`'s `start=`, for `/metrics`.
#[derive(Default)]
pub struct Reports {
    pub cold: AtomicU64,
    pub warm: AtomicU64,
    pub unpaused: AtomicU64,
    pub zygote: AtomicU64,
    pub other: AtomicU64,
}

impl Reports {
    /// Counts how the worker started the call's instance.
    pub fn count(&self, start: Start) {
        let c = match start {
            Start::Cold => &self.cold,
            Start::Warm => &self.warm,
            Start::Unpaused => &self.unpaused,
            Start::Zygote => &self.zygote,
            Start::None => &self.other,
        };
        c.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_expire_and_evict_the_oldest() {
        let w = WorkerWarm::default();
        assert!(!w.contains(7, 10));
        w.record(7, 100);
        assert!(w.contains(7, 10));
        assert!(!w.contains(7, 100));
        for k in 0..SLOTS as u64 {
            w.record(1000 + k, 200 + k);
        }
        assert!(!w.contains(7, 10), "the earliest expiry was evicted");
        assert!(w.contains(1000 + SLOTS as u64 - 1, 10));
        assert_eq!(w.live(150), SLOTS);
    }
}
