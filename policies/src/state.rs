//! The live state of the workers that policies read on every decision:
//! health, in-flight count and a latency estimate per worker, plus the
//! totals that bounded loads need, all in relaxed atomics so the proxy
//! updates them in place and a decision never copies or scans them.
//!
//! Warm functions and packages are asked through the small [`Warm`] trait,
//! so the proxy's import index can answer however it stores them.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::Picks;

/// One worker's live state. Read by policies with relaxed loads.
#[derive(Debug)]
pub struct WorkerState {
    healthy: AtomicBool,
    in_flight: AtomicU32,
    latency_us: AtomicU32,
}

/// The state table of one membership, indexed like the worker keys given
/// to [`crate::PolicySet::build`]. Created when membership changes
/// (O(workers)); updated constantly by the proxy (each call is one to three
/// relaxed atomic operations, no allocation); read by every decision.
#[derive(Debug)]
pub struct Workers {
    states: Box<[WorkerState]>,
    healthy: AtomicU32,
    in_flight: AtomicU64,
}

impl Workers {
    /// `n` workers, all healthy, idle, latency unknown (0).
    pub fn new(n: usize) -> Self {
        assert!(n <= u32::MAX as usize, "too many workers");
        Workers {
            states: (0..n)
                .map(|_| WorkerState {
                    healthy: AtomicBool::new(true),
                    in_flight: AtomicU32::new(0),
                    latency_us: AtomicU32::new(0),
                })
                .collect(),
            healthy: AtomicU32::new(n as u32),
            in_flight: AtomicU64::new(0),
        }
    }

    /// A table from `(healthy, in_flight, latency_us)` per worker (tests,
    /// simulations).
    pub fn from_snapshot(s: &[(bool, u32, u32)]) -> Self {
        let w = Workers::new(s.len());
        for (i, &(h, f, l)) in s.iter().enumerate() {
            w.set_healthy(i, h);
            w.states[i].in_flight.store(f, Relaxed);
            w.in_flight.fetch_add(f as u64, Relaxed);
            w.states[i].latency_us.store(l, Relaxed);
        }
        w
    }

    /// The number of workers.
    #[inline]
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether there are no workers.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// Marks a worker healthy or not (health checks, connect failures).
    pub fn set_healthy(&self, i: usize, healthy: bool) {
        if self.states[i].healthy.swap(healthy, Relaxed) != healthy {
            if healthy {
                self.healthy.fetch_add(1, Relaxed);
            } else {
                self.healthy.fetch_sub(1, Relaxed);
            }
        }
    }

    /// A request was sent to worker `i`.
    #[inline]
    pub fn start(&self, i: usize) {
        self.states[i].in_flight.fetch_add(1, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
    }

    /// A request to worker `i` ended (any outcome). Never goes below zero.
    #[inline]
    pub fn finish(&self, i: usize) {
        if self.states[i]
            .in_flight
            .fetch_update(Relaxed, Relaxed, |v| v.checked_sub(1))
            .is_ok()
        {
            self.in_flight.fetch_sub(1, Relaxed);
        }
    }

    /// Folds one observed latency into worker `i`'s estimate (EWMA, 1/8).
    #[inline]
    pub fn record_latency(&self, i: usize, us: u32) {
        let s = &self.states[i].latency_us;
        let old = s.load(Relaxed) as i64;
        let new = if old == 0 {
            us as i64
        } else {
            old + (us as i64 - old) / 8
        };
        s.store(new.clamp(1, u32::MAX as i64) as u32, Relaxed);
    }

    /// Worker `i`'s health; out-of-range indices are unhealthy.
    #[inline]
    pub fn healthy(&self, i: usize) -> bool {
        self.states.get(i).is_some_and(|s| s.healthy.load(Relaxed))
    }

    /// Requests sent to worker `i` and not finished.
    #[inline]
    pub fn in_flight(&self, i: usize) -> u32 {
        self.states
            .get(i)
            .map_or(u32::MAX, |s| s.in_flight.load(Relaxed))
    }

    /// Recent latency estimate in microseconds (0 = unknown).
    #[inline]
    pub fn latency_us(&self, i: usize) -> u32 {
        self.states.get(i).map_or(0, |s| s.latency_us.load(Relaxed))
    }

    /// How many workers are healthy (kept by [`Workers::set_healthy`]).
    #[inline]
    pub fn healthy_count(&self) -> usize {
        self.healthy.load(Relaxed) as usize
    }

    /// Requests in flight at all workers.
    #[inline]
    pub fn total_in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }
}

/// Which workers hold a function or package warm. Keys are
/// [`crate::hash_str`] of the name ([`crate::Request::function_hash`] for
/// the function). Called a few times per decision by least-load and
/// code-locality: it must be cheap and must not allocate.
pub trait Warm: Sync {
    /// Whether `worker` holds the function or package hashed to `key` warm.
    fn is_warm(&self, worker: usize, key: u64) -> bool;
}

/// A [`Warm`] that knows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoWarm;

impl Warm for NoWarm {
    #[inline]
    fn is_warm(&self, _: usize, _: u64) -> bool {
        false
    }
}

/// What one decision sees: the state table and the warm index. Built per
/// request on the stack (two pointers and two loads).
#[derive(Clone, Copy)]
pub struct View<'a> {
    /// The live state table.
    pub workers: &'a Workers,
    /// The warm index.
    pub warm: &'a dyn Warm,
    /// True when no worker is healthy: then every worker is a candidate.
    all_down: bool,
}

impl<'a> View<'a> {
    /// A view without warm information.
    #[inline]
    pub fn new(workers: &'a Workers) -> Self {
        Self::with_warm(workers, &NoWarm)
    }

    /// A view with a warm index (the proxy's import index).
    #[inline]
    pub fn with_warm(workers: &'a Workers, warm: &'a dyn Warm) -> Self {
        View {
            workers,
            warm,
            all_down: workers.healthy_count() == 0,
        }
    }

    /// The number of workers.
    #[inline]
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether there are no workers.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Whether worker `i` may be chosen: healthy, or every worker is down.
    #[inline]
    pub fn eligible(&self, i: usize) -> bool {
        i < self.workers.len() && (self.all_down || self.workers.healthy(i))
    }

    /// Candidates counted for the load average.
    #[inline]
    pub(crate) fn eligible_count(&self) -> usize {
        if self.all_down {
            self.workers.len()
        } else {
            self.workers.healthy_count()
        }
    }

    /// The bounded-load bound b = (1+e) x (in-flight + 1) / candidates:
    /// the average after this request, times 1+e.
    #[inline]
    pub(crate) fn load_bound(&self, one_plus_e: f64) -> f64 {
        let n = self.eligible_count().max(1) as f64;
        one_plus_e * (self.workers.total_in_flight() + 1) as f64 / n
    }

    /// Fills `picks` with eligible workers scanning from `start`, in index
    /// order (fail-over candidates). Stops when full; O(workers) at worst.
    #[inline]
    pub(crate) fn fill_from(&self, picks: &mut Picks, start: usize) {
        let n = self.len();
        if n == 0 {
            return;
        }
        let start = start % n;
        for k in 0..n {
            if picks.is_full() {
                break;
            }
            let i = if start + k >= n {
                start + k - n
            } else {
                start + k
            };
            if self.eligible(i) {
                picks.push(i);
            }
        }
    }

    /// The first eligible worker at or after `i` (wrapping).
    #[inline]
    pub(crate) fn next_eligible(&self, i: usize) -> Option<usize> {
        let n = self.len();
        (0..n).map(|k| (i + k) % n).find(|&j| self.eligible(j))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_follow_updates() {
        let w = Workers::new(3);
        assert_eq!(w.healthy_count(), 3);
        w.set_healthy(1, false);
        w.set_healthy(1, false);
        assert_eq!(w.healthy_count(), 2);
        w.set_healthy(1, true);
        assert_eq!(w.healthy_count(), 3);
        w.start(0);
        w.start(0);
        w.start(2);
        assert_eq!((w.in_flight(0), w.total_in_flight()), (2, 3));
        w.finish(0);
        w.finish(1); // not in flight: ignored
        assert_eq!(
            (w.in_flight(0), w.in_flight(1), w.total_in_flight()),
            (1, 0, 2)
        );
        w.record_latency(2, 800);
        w.record_latency(2, 1600);
        assert_eq!(w.latency_us(2), 900);
        assert!(!w.healthy(7));
    }

    #[test]
    fn cap_and_all_down() {
        let w = Workers::from_snapshot(&[(true, 3, 0), (true, 1, 0), (false, 0, 0)]);
        let v = View::new(&w);
        // (4+1)/2 = 2.5; x1.25 = 3.125
        assert!((v.load_bound(1.25) - 3.125).abs() < 1e-9);
        assert!(!v.eligible(2));
        let w = Workers::from_snapshot(&[(false, 0, 0), (false, 0, 0)]);
        let v = View::new(&w);
        assert!(v.eligible(0) && v.eligible(1));
        let mut p = Picks::new();
        v.fill_from(&mut p, 1);
        assert_eq!(p.as_slice(), &[1, 0]);
    }
}
