//! Request metrics in plain atomics, rendered as Prometheus text by the
//! admin listener (`admin/prometheus.rs`).
//!
//! Why not a metrics library: the request path only does a few relaxed
//! atomic adds into structures that exist before the first request (one
//! `Stats` per route, per policy and per worker), so it never allocates or
//! locks; the label sets are fixed by the config, so a registry buys nothing.

use std::sync::atomic::{AtomicU64, Ordering};

/// Latency histogram bucket upper bounds, in microseconds.
pub const BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Counters for one label set (a route, a policy or a worker).
#[derive(Default)]
pub struct Stats {
    pub requests: AtomicU64,
    /// Responses by class: 1xx..5xx (index 0..4).
    pub status: [AtomicU64; 5],
    /// Requests that failed in the proxy (connect, timeout, upstream
    /// closed, no worker): they answer 5xx from the proxy itself.
    pub errors: AtomicU64,
    /// Extra attempts (after a connect failure or a worker's refusal).
    pub retries: AtomicU64,
    /// Calls a worker refused before running them (`x-ol-refused`) that
    /// the proxy then tried again (elsewhere, or after the hold).
    pub refused: AtomicU64,
    pub buckets: [AtomicU64; BUCKETS_US.len()],
    pub latency_sum_us: AtomicU64,
}

impl Stats {
    /// Records one finished request.
    #[inline]
    pub fn record(&self, status: u16, latency_us: u64, error: bool, retries: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if (100..600).contains(&status) {
            self.status[(status / 100 - 1) as usize].fetch_add(1, Ordering::Relaxed);
        }
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if retries > 0 {
            self.retries.fetch_add(retries, Ordering::Relaxed);
        }
        // Buckets are stored non-cumulatively; rendering sums them.
        let i = BUCKETS_US.partition_point(|&b| b < latency_us);
        if i < BUCKETS_US.len() {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.latency_sum_us.fetch_add(latency_us, Ordering::Relaxed);
    }
}

/// Error responses by who wrote them (`x-ol-error`: proxy, worker,
/// function), in that order; an error status without the header counts as
/// the worker's (an upstream that is not an ol-edge worker).
pub static ERRORS_BY_LEVEL: [AtomicU64; 3] =
    [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// Counts an error response by its `x-ol-error` value.
pub fn count_error_level(level: Option<&[u8]>) {
    let i = match level {
        Some(b"proxy") => 0,
        Some(b"function") => 2,
        _ => 1,
    };
    ERRORS_BY_LEVEL[i].fetch_add(1, Ordering::Relaxed);
}
