//! Request metrics in plain atomics, rendered as Prometheus text by the
//! admin listener.
//!
//! Why not a metrics library: the request path only does a few relaxed
//! atomic adds into structures that exist before the first request (one
//! `Stats` per route, per policy and per worker), so it never allocates or
//! locks; the label sets are fixed by the config, so a registry buys nothing.

use std::fmt::Write;
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
    /// Extra attempts after a connect failure.
    pub retries: AtomicU64,
    buckets: [AtomicU64; BUCKETS_US.len()],
    latency_sum_us: AtomicU64,
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

/// Writes the Prometheus families of a set of `Stats` sharing a label name.
pub fn render<'a>(
    out: &mut String,
    prefix: &str,
    label: &str,
    items: impl Iterator<Item = (&'a str, &'a Stats)> + Clone,
) {
    let _ = writeln!(
        out,
        "# HELP {prefix}_requests_total Requests finished, by {label} and status class."
    );
    let _ = writeln!(out, "# TYPE {prefix}_requests_total counter");
    for (name, s) in items.clone() {
        for (i, c) in s.status.iter().enumerate() {
            let _ = writeln!(
                out,
                "{prefix}_requests_total{{{label}=\"{}\",code=\"{}xx\"}} {}",
                escape(name),
                i + 1,
                c.load(Ordering::Relaxed)
            );
        }
    }
    for (metric, help, get) in [
        (
            "errors_total",
            "Requests that failed in the proxy (connect, timeout, upstream closed, no worker).",
            (|s: &Stats| s.errors.load(Ordering::Relaxed)) as fn(&Stats) -> u64,
        ),
        (
            "retries_total",
            "Attempts retried on another worker after a connect failure.",
            |s: &Stats| s.retries.load(Ordering::Relaxed),
        ),
    ] {
        let _ = writeln!(out, "# HELP {prefix}_{metric} {help}");
        let _ = writeln!(out, "# TYPE {prefix}_{metric} counter");
        for (name, s) in items.clone() {
            let _ = writeln!(
                out,
                "{prefix}_{metric}{{{label}=\"{}\"}} {}",
                escape(name),
                get(s)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP {prefix}_latency_seconds Time from request start to the end of the response."
    );
    let _ = writeln!(out, "# TYPE {prefix}_latency_seconds histogram");
    for (name, s) in items {
        let name = escape(name);
        let mut cum = 0;
        for (i, b) in BUCKETS_US.iter().enumerate() {
            cum += s.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{prefix}_latency_seconds_bucket{{{label}=\"{name}\",le=\"{}\"}} {cum}",
                *b as f64 / 1e6
            );
        }
        let count = s.requests.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{prefix}_latency_seconds_bucket{{{label}=\"{name}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "{prefix}_latency_seconds_sum{{{label}=\"{name}\"}} {}",
            s.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "{prefix}_latency_seconds_count{{{label}=\"{name}\"}} {count}"
        );
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_cumulative_buckets() {
        let s = Stats::default();
        s.record(200, 700, false, 0);
        s.record(502, 20_000_000, true, 1);
        let mut out = String::new();
        render(&mut out, "ol_route", "route", [("hello", &s)].into_iter());
        assert!(out.contains("ol_route_requests_total{route=\"hello\",code=\"2xx\"} 1"));
        assert!(out.contains("ol_route_errors_total{route=\"hello\"} 1"));
        assert!(out.contains("ol_route_retries_total{route=\"hello\"} 1"));
        assert!(out.contains("ol_route_latency_seconds_bucket{route=\"hello\",le=\"0.001\"} 1"));
        assert!(out.contains("ol_route_latency_seconds_bucket{route=\"hello\",le=\"+Inf\"} 2"));
    }
}
