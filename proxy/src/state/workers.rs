//! Workers as the proxy sees them: an address, health-check streaks and
//! metrics in atomics, shared by the request path, the health checker and
//! the admin listener without locks.
//!
//! The routing state (health, in-flight, latency EWMA) lives in the
//! policies crate's table (`routing::Routing::table`), one per membership,
//! which decisions read directly. A `Worker` outlives memberships: when DNS
//! re-resolution or a reload builds a new worker list, an address already
//! known keeps its `Arc<Worker>`, so its health and counters carry over.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use config::wire::stats;
use http::HeaderValue;

use policies::Warm;

use super::metrics::Stats;
use super::outliers::Outlier;
use super::warm::WorkerWarm;

/// One upstream worker.
pub struct Worker {
    pub addr: SocketAddr,
    /// `x-ol-worker` value, built once.
    pub header: HeaderValue,
    /// `host:port`, the worker's key for the policy set.
    pub key: String,
    /// Where it came from: `static`, `dns` or `local`.
    pub source: &'static str,
    healthy: AtomicBool,
    /// Whether any health check has finished yet.
    checked: AtomicBool,
    ok_streak: AtomicU32,
    fail_streak: AtomicU32,
    /// Out of rotation at the worker's own word (a `draining` refusal or
    /// health answer) until health checks pass `rise` times again.
    draining: AtomicBool,
    /// Outlier ejection and slow start (`super::outliers`).
    pub outlier: Outlier,
    pub stats: Stats,
    /// What the proxy believes this worker holds warm (the import index).
    pub warm: WorkerWarm,
    /// What the worker itself last reported at `GET /stats`.
    pub reported: Reported,
}

/// The `/stats` keys a worker reports that `Reported` keeps, in its
/// field order (their metric names: `admin/prometheus.rs`).
pub const REPORTED: [&str; 5] = [
    stats::ZYGOTES_LIVE,
    stats::ZYGOTES_CREATED,
    stats::ZYGOTES_FALLBACKS,
    stats::PACKAGES_INSTALLED,
    stats::PACKAGES_INSTALL_FAILED,
];

/// Gauges a worker reports at `GET /stats` (its zygotes and package
/// store), polled every `health.stats_interval_ms` and shown on `/metrics`.
#[derive(Default)]
pub struct Reported {
    /// Whether any poll has succeeded (nothing is shown before).
    pub polled: AtomicBool,
    /// One value per [`REPORTED`] row.
    pub values: [AtomicU64; REPORTED.len()],
}

impl Reported {
    /// Takes the values from a `/stats` JSON body; false when it is not one.
    pub fn update(&self, stats_json: &[u8]) -> bool {
        let Ok(serde_json::Value::Object(m)) = serde_json::from_slice(stats_json) else {
            return false;
        };
        for (key, slot) in REPORTED.iter().zip(&self.values) {
            if let Some(v) = m.get(*key).and_then(serde_json::Value::as_u64) {
                slot.store(v, Ordering::Relaxed);
            }
        }
        self.polled.store(true, Ordering::Relaxed);
        true
    }
}

impl Worker {
    /// A new worker starts unhealthy until its first check passes (or
    /// healthy when health checks are off).
    pub fn new(addr: SocketAddr, source: &'static str, healthy: bool) -> Arc<Worker> {
        Arc::new(Worker {
            addr,
            header: HeaderValue::from_str(&addr.to_string()).expect("an address is a header value"),
            key: addr.to_string(),
            source,
            healthy: AtomicBool::new(healthy),
            checked: AtomicBool::new(false),
            ok_streak: AtomicU32::new(0),
            fail_streak: AtomicU32::new(0),
            draining: AtomicBool::new(false),
            outlier: Outlier::default(),
            stats: Stats::default(),
            warm: Default::default(),
            reported: Default::default(),
        })
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether policies may pick it now (`now`: [`super::warm::now_ms`]):
    /// healthy, not draining, not ejected.
    pub fn routable(&self, now: u64) -> bool {
        self.healthy() && !self.is_draining() && !self.outlier.ejected(now)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The worker said it is draining: out at once, back only when health
    /// checks pass `rise` times (after its restart). True the first time.
    pub fn drain(&self) -> bool {
        self.checked.store(true, Ordering::Relaxed);
        self.ok_streak.store(0, Ordering::Relaxed);
        self.healthy.store(false, Ordering::Relaxed);
        !self.draining.swap(true, Ordering::Relaxed)
    }

    /// Records one health check result; returns `Some(new_health)` when the
    /// worker changed state. The first result decides at once; after that
    /// `rise` successes or `fall` failures in a row are needed.
    pub fn record_check(&self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        let first = !self.checked.swap(true, Ordering::Relaxed);
        let was = self.healthy();
        if ok {
            self.fail_streak.store(0, Ordering::Relaxed);
            let n = self.ok_streak.fetch_add(1, Ordering::Relaxed) + 1;
            if !was && (first || n >= rise) {
                self.healthy.store(true, Ordering::Relaxed);
                self.draining.store(false, Ordering::Relaxed);
                if !first {
                    // Back after a fall or a drain, most likely restarted:
                    // what it held warm is gone.
                    self.warm.clear();
                    self.outlier.came_back(super::warm::now_ms());
                }
                return Some(true);
            }
        } else {
            self.ok_streak.store(0, Ordering::Relaxed);
            let n = self.fail_streak.fetch_add(1, Ordering::Relaxed) + 1;
            if was && (first || n >= fall) {
                self.healthy.store(false, Ordering::Relaxed);
                return Some(false);
            }
        }
        None
    }
}

/// The [`Warm`] a decision sees: the snapshot's workers at one instant.
/// Two words on the stack.
pub struct WarmView<'a> {
    pub workers: &'a [Arc<Worker>],
    /// From [`super::warm::now_ms`].
    pub now: u64,
}

impl Warm for WarmView<'_> {
    #[inline]
    fn is_warm(&self, worker: usize, key: u64) -> bool {
        self.workers
            .get(worker)
            .is_some_and(|w| w.warm.contains(key, self.now))
    }
}

/// Builds a worker list for `addrs`, reusing known workers by address.
pub fn merge(
    old: &[Arc<Worker>],
    addrs: &[(SocketAddr, &'static str)],
    healthy_at_start: bool,
) -> Vec<Arc<Worker>> {
    let mut out: Vec<Arc<Worker>> = Vec::with_capacity(addrs.len());
    for &(a, source) in addrs {
        if out.iter().any(|w| w.addr == a) {
            continue;
        }
        match old.iter().find(|w| w.addr == a) {
            Some(w) => out.push(w.clone()),
            None => out.push(Worker::new(a, source, healthy_at_start)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall() {
        let w = Worker::new("127.0.0.1:1".parse().unwrap(), "static", false);
        assert_eq!(
            w.record_check(true, 2, 2),
            Some(true),
            "first check decides"
        );
        assert_eq!(w.record_check(false, 2, 2), None);
        assert_eq!(w.record_check(false, 2, 2), Some(false));
        assert!(!w.healthy());
        w.warm.record(7, u64::MAX);
        assert_eq!(w.record_check(true, 2, 2), None);
        assert_eq!(w.record_check(true, 2, 2), Some(true));
        assert!(!w.warm.contains(7, 1), "back after a fall: nothing warm");
    }

    #[test]
    fn merge_keeps_known_workers() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let old = merge(&[], &[(a, "static")], false);
        let new = merge(&old, &[(a, "dns"), (b, "dns"), (b, "dns")], false);
        assert_eq!(new.len(), 2);
        assert!(Arc::ptr_eq(&old[0], &new[0]));
    }
}
