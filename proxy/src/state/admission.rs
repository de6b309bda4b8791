//! Admission: what happens to a call that no worker can take right now.
//!
//! - **The hold** ([`HOLD`]): such a call (no worker healthy yet, or every
//!   pick refused it) waits here, bounded per function (`hold_queue`) and
//!   in time (`hold_ms`), and goes out when something changes that could
//!   let it in: a slot of its function released at the proxy, or a
//!   worker's health. A wait is a parked task (a [`Notify`]), no thread
//!   and no polling; a released slot wakes one waiter of its function, a
//!   health change wakes every waiter.
//! - **The retry budget** ([`RetryBudget`]): a refused call is retried on
//!   the next pick at once only while retries stay within `retry_ratio` of
//!   the calls (plus `min_retries_per_s`), as linkerd's budget; past it the
//!   call waits in the hold, paced by released slots, so refusals cannot
//!   multiply load. The rates are pingora-limits' estimator.
//!
//! Metrics per function (the hold's queue and waits) are kept here and
//! shown by `admin/prometheus.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pingora_limits::rate::{Rate, PROPORTIONAL_RATE_ESTIMATE_CALC_FN};
use tokio::sync::Notify;

/// The one hold of this proxy (it outlives snapshots: a reload does not
/// drop waiting calls).
pub static HOLD: std::sync::LazyLock<Hold> = std::sync::LazyLock::new(Hold::default);

/// Why a held call was answered instead of served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `hold_queue` calls of its function were already waiting.
    Full,
    /// `hold_ms` passed.
    TimedOut,
    /// [`MAX_HELD_FUNCTIONS`] other functions are held already.
    TooManyFunctions,
}

/// Per-function counters of the hold (for `/metrics`).
#[derive(Default)]
pub struct HoldStats {
    /// Calls waiting now.
    pub waiting: AtomicU64,
    /// Calls that waited (served or not).
    pub held: AtomicU64,
    /// Their total wait, in microseconds.
    pub wait_us: AtomicU64,
    pub refused_full: AtomicU64,
    pub refused_timeout: AtomicU64,
}

/// A function with calls waiting now (removed when none waits, so names
/// made up by clients do not stay).
struct Function {
    notify: Arc<Notify>,
    stats: Arc<HoldStats>,
}

/// Functions with calls waiting at once. Names come from clients (any
/// `/run/<name>` is held while no worker is healthy), so this is bounded:
/// a call of one more function is not held (answered at once).
pub const MAX_HELD_FUNCTIONS: usize = 4096;
/// Functions with counters of their own on `/metrics`; the rest are
/// counted under [`OTHER`].
pub const MAX_COUNTED_FUNCTIONS: usize = 512;
pub const OTHER: &str = "_other";

pub struct Hold {
    max_functions: usize,
    /// Calls waiting now, all functions: the release path's fast check.
    waiting: AtomicUsize,
    /// By function hash (`policies::Request::function_hash`): functions
    /// with calls waiting now.
    functions: Mutex<HashMap<u64, Function>>,
    /// Counters by function name (bounded, [`MAX_COUNTED_FUNCTIONS`]).
    counted: Mutex<HashMap<String, Arc<HoldStats>>>,
    /// Woken on any health change.
    health: Notify,
}

impl Default for Hold {
    fn default() -> Self {
        Hold::with_max_functions(MAX_HELD_FUNCTIONS)
    }
}

/// A call's place in the hold; leaving it (any way, a cancelled task
/// included) gives the place back.
struct Place<'a> {
    hold: &'a Hold,
    function: u64,
    stats: Arc<HoldStats>,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut map = self
            .hold
            .functions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.stats.waiting.fetch_sub(1, Relaxed);
        self.hold.waiting.fetch_sub(1, Relaxed);
        if map
            .get(&self.function)
            .is_some_and(|f| f.stats.waiting.load(Relaxed) == 0)
        {
            map.remove(&self.function);
        }
    }
}

/// What wakes a waiting call besides its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A worker became healthy.
    Health,
    /// That, or a call of its function finished (one waiter per call).
    HealthOrRelease,
}

impl Hold {
    fn with_max_functions(max_functions: usize) -> Hold {
        Hold {
            max_functions,
            waiting: AtomicUsize::new(0),
            functions: Mutex::default(),
            counted: Mutex::default(),
            health: Notify::new(),
        }
    }

    /// Waits until `ready()` holds, re-checked after each wake, or until
    /// `until`. `function`, `name`: the call's function (its hash and
    /// name); `queue`: how many of its calls may wait at once. Returns the
    /// time waited.
    #[allow(clippy::too_many_arguments)]
    pub async fn wait(
        &self,
        function: u64,
        name: &str,
        queue: usize,
        until: Instant,
        wake: Wake,
        mut ready: impl FnMut() -> bool,
    ) -> Result<Duration, Refused> {
        let started = Instant::now();
        let (notify, stats) = {
            let mut map = self.functions.lock().unwrap_or_else(|e| e.into_inner());
            if map.len() >= self.max_functions && !map.contains_key(&function) {
                return Err(Refused::TooManyFunctions);
            }
            let f = map.entry(function).or_insert_with(|| Function {
                notify: Arc::new(Notify::new()),
                stats: self.counters(name),
            });
            if f.stats.waiting.load(Relaxed) as usize >= queue {
                f.stats.refused_full.fetch_add(1, Relaxed);
                return Err(Refused::Full);
            }
            f.stats.waiting.fetch_add(1, Relaxed);
            self.waiting.fetch_add(1, Relaxed);
            (f.notify.clone(), f.stats.clone())
        };
        let _place = Place {
            hold: self,
            function,
            stats: stats.clone(),
        };
        stats.held.fetch_add(1, Relaxed);
        let end = |ok: bool| {
            let waited = started.elapsed();
            stats.wait_us.fetch_add(waited.as_micros() as u64, Relaxed);
            if !ok {
                stats.refused_timeout.fetch_add(1, Relaxed);
            }
            waited
        };
        let deadline = tokio::time::Instant::from_std(until);
        loop {
            // Registered before the check, so a wake between the two is kept.
            let slot = notify.notified();
            let health = self.health.notified();
            tokio::pin!(slot, health);
            if wake == Wake::HealthOrRelease {
                slot.as_mut().enable();
            }
            health.as_mut().enable();
            if ready() {
                return Ok(end(true));
            }
            if Instant::now() >= until {
                end(false);
                return Err(Refused::TimedOut);
            }
            let on_release = async {
                match wake {
                    Wake::HealthOrRelease => slot.await,
                    Wake::Health => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = on_release => {}
                _ = &mut health => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// A call of `function` gave its slot back: one of its waiters goes.
    #[inline]
    pub fn released(&self, function: u64) {
        if self.waiting.load(Relaxed) == 0 {
            return;
        }
        let map = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = map.get(&function) {
            if f.stats.waiting.load(Relaxed) > 0 {
                f.notify.notify_one();
            }
        }
    }

    /// A worker's health changed: every waiter looks again.
    pub fn health_changed(&self) {
        if self.waiting.load(Relaxed) > 0 {
            self.health.notify_waiters();
        }
    }

    /// The counters of `name` (or of [`OTHER`], past the bound).
    fn counters(&self, name: &str) -> Arc<HoldStats> {
        let mut c = self.counted.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = c.get(name) {
            return s.clone();
        }
        let key = if c.len() + 1 >= MAX_COUNTED_FUNCTIONS {
            OTHER
        } else {
            name
        };
        c.entry(key.to_string()).or_default().clone()
    }

    /// Each function that was ever held, with its counters.
    pub fn stats(&self) -> Vec<(String, Arc<HoldStats>)> {
        let map = self.counted.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map.iter().map(|(k, s)| (k.clone(), s.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// Retries of refused calls within a share of the calls (per second,
/// pingora-limits' two-interval estimate).
pub struct RetryBudget {
    rate: Rate,
    /// Retries allowed and refused by the budget (for `/metrics`).
    pub spent: AtomicU64,
    pub exhausted: AtomicU64,
}

const CALLS: u8 = 0;
const RETRIES: u8 = 1;

pub static BUDGET: std::sync::LazyLock<RetryBudget> = std::sync::LazyLock::new(|| RetryBudget {
    rate: Rate::new(Duration::from_secs(1)),
    spent: AtomicU64::new(0),
    exhausted: AtomicU64::new(0),
});

impl RetryBudget {
    /// A call was admitted (counted once, whatever its retries).
    #[inline]
    pub fn call(&self) {
        self.rate.observe(&CALLS, 1);
    }

    /// Whether one more retry fits: retries per second stay under
    /// `ratio` of calls per second plus `min_per_s`. A retry that fits is
    /// counted as spent.
    pub fn try_retry(&self, ratio: f64, min_per_s: u64) -> bool {
        let calls = self
            .rate
            .rate_with(&CALLS, PROPORTIONAL_RATE_ESTIMATE_CALC_FN);
        let retries = self
            .rate
            .rate_with(&RETRIES, PROPORTIONAL_RATE_ESTIMATE_CALC_FN);
        if retries < ratio * calls + min_per_s as f64 {
            self.rate.observe(&RETRIES, 1);
            self.spent.fetch_add(1, Relaxed);
            true
        } else {
            self.exhausted.fetch_add(1, Relaxed);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_refuses_and_a_release_wakes_one() {
        let hold = Arc::new(Hold::default());
        let until = Instant::now() + Duration::from_secs(5);
        let go = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waiter = {
            let (hold, go) = (hold.clone(), go.clone());
            tokio::spawn(async move {
                hold.wait(7, "f", 1, until, Wake::HealthOrRelease, || go.load(Relaxed))
                    .await
            })
        };
        while hold.waiting.load(Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            hold.wait(7, "f", 1, until, Wake::HealthOrRelease, || false)
                .await,
            Err(Refused::Full)
        );
        go.store(true, Relaxed);
        hold.released(7);
        assert!(waiter.await.unwrap().is_ok());
        assert_eq!(hold.waiting.load(Relaxed), 0);
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(
            hold.wait(7, "f", 1, soon, Wake::HealthOrRelease, || false)
                .await,
            Err(Refused::TimedOut)
        );
        let (_, s) = &hold.stats()[0];
        assert_eq!(
            (
                s.held.load(Relaxed),
                s.refused_full.load(Relaxed),
                s.refused_timeout.load(Relaxed)
            ),
            (2, 1, 1)
        );
    }

    #[tokio::test]
    async fn names_beyond_the_bound_are_not_held_and_do_not_stay() {
        let hold = Arc::new(Hold::with_max_functions(1));
        let later = Instant::now() + Duration::from_millis(300);
        let a = {
            let hold = hold.clone();
            tokio::spawn(async move { hold.wait(1, "a", 8, later, Wake::Health, || false).await })
        };
        while hold.waiting.load(Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        let soon = Instant::now() + Duration::from_millis(10);
        assert_eq!(
            hold.wait(2, "b", 8, soon, Wake::Health, || false).await,
            Err(Refused::TooManyFunctions)
        );
        assert_eq!(a.await.unwrap(), Err(Refused::TimedOut));
        // "a" no longer waits: its place is free for another name.
        let soon = Instant::now() + Duration::from_millis(10);
        assert_eq!(
            hold.wait(2, "b", 8, soon, Wake::Health, || false).await,
            Err(Refused::TimedOut)
        );
        assert_eq!(hold.functions.lock().unwrap().len(), 0);
    }

    #[test]
    fn the_budget_allows_the_floor_then_a_share_of_calls() {
        let b = RetryBudget {
            rate: Rate::new(Duration::from_secs(10)),
            spent: AtomicU64::new(0),
            exhausted: AtomicU64::new(0),
        };
        // Rates are per second over 10 s intervals here (so the test never
        // crosses one). No calls yet: the floor (1/s: 10), then no more.
        let floor = (0..50).filter(|_| b.try_retry(0.2, 1)).count();
        assert!((10..=11).contains(&floor), "{floor}");
        // 200 calls: a fifth of them on top (40).
        for _ in 0..200 {
            b.call();
        }
        let more = (0..100).filter(|_| b.try_retry(0.2, 1)).count();
        assert!((38..=42).contains(&more), "{more}");
        assert_eq!(b.spent.load(Relaxed) + b.exhausted.load(Relaxed), 150);
    }
}
