//! All of `/metrics`: every metric family the proxy exposes, named and
//! described once in [`names`], rendered here from the atomics the rest
//! of the proxy keeps (`state::metrics::Stats`, the workers' reports, the
//! caches' and connections' counters).
//!
//! Why hand-written text and no metrics library: the request path only
//! does relaxed atomic adds into structures that exist before the first
//! request, and the label sets are fixed by the config, so a registry
//! would buy nothing but a second copy of every number.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::caches::Caches;
use crate::state::metrics::{Stats, BUCKETS_US};
use crate::state::workers::{Worker, REPORTED};
use crate::state::{Snapshot, IN_FLIGHT};

/// One metric family: its name, Prometheus type and help text.
pub struct Family {
    pub name: &'static str,
    pub kind: &'static str,
    pub help: &'static str,
}

/// Every metric name the proxy exposes, in one place. The per-route,
/// per-policy and per-worker request families are `<prefix>_<suffix>`.
pub mod names {
    use super::Family;

    const fn f(name: &'static str, kind: &'static str, help: &'static str) -> Family {
        Family { name, kind, help }
    }

    /// Prefixes of the request families ([`REQUESTS`], ...), by label.
    pub const ROUTE: (&str, &str) = ("ol_proxy_route", "route");
    pub const POLICY: (&str, &str) = ("ol_proxy_policy", "policy");
    pub const WORKER: (&str, &str) = ("ol_proxy_worker", "worker");
    /// `<prefix>_requests_total`, by label and status class.
    pub const REQUESTS: Family = f(
        "requests_total",
        "counter",
        "Requests finished, by {label} and status class.",
    );
    pub const ERRORS: Family = f(
        "errors_total",
        "counter",
        "Requests that failed in the proxy (connect, timeout, upstream closed, no worker).",
    );
    pub const RETRIES: Family = f(
        "retries_total",
        "counter",
        "Attempts retried after a connect failure or a worker's refusal.",
    );
    pub const REFUSED: Family = f(
        "refused_total",
        "counter",
        "Calls a worker refused before running them (x-ol-refused) that the proxy tried again.",
    );
    pub const LATENCY: Family = f(
        "latency_seconds",
        "histogram",
        "Time from request start to the end of the response.",
    );

    pub const WORKER_HEALTHY: Family = f(
        "ol_proxy_worker_healthy",
        "gauge",
        "1 when policies may pick the worker: it passes health checks, is not draining and not ejected.",
    );
    pub const WORKER_DRAINING: Family = f(
        "ol_proxy_worker_draining",
        "gauge",
        "1 while the worker says it is draining (until health checks pass again).",
    );
    pub const WORKER_EJECTED: Family = f(
        "ol_proxy_worker_ejected",
        "gauge",
        "1 while the worker is ejected for platform failures ([outliers]).",
    );
    pub const WORKER_EJECTIONS: Family = f(
        "ol_proxy_worker_ejections_total",
        "counter",
        "Times the worker was ejected for platform failures in a row ([outliers]).",
    );
    pub const WORKER_IN_FLIGHT: Family = f(
        "ol_proxy_worker_in_flight",
        "gauge",
        "Requests in flight on the worker.",
    );
    pub const REQUESTS_IN_FLIGHT: Family = f("ol_proxy_in_flight", "gauge", "Requests in flight.");
    pub const RELOADS: Family = f(
        "ol_proxy_reloads_total",
        "counter",
        "Config reloads (SIGHUP, POST /admin/reload) by result.",
    );
    /// What workers report at `/stats`, one per `state::workers::REPORTED` key.
    pub const WORKER_REPORTED: [Family; 5] = [
        f(
            "ol_proxy_worker_zygotes",
            "gauge",
            "Zygotes the worker keeps now.",
        ),
        f(
            "ol_proxy_worker_zygotes_created_total",
            "counter",
            "Zygotes the worker has created.",
        ),
        f(
            "ol_proxy_worker_zygote_fallbacks_total",
            "counter",
            "Cold starts that wanted a zygote but started a fresh process.",
        ),
        f(
            "ol_proxy_worker_packages_installed_total",
            "counter",
            "Package versions the worker has installed into its package store.",
        ),
        f(
            "ol_proxy_worker_package_install_failures_total",
            "counter",
            "Package installs that failed on the worker.",
        ),
    ];

    pub const RESULT_CACHE_REQUESTS: Family = f(
        "ol_proxy_result_cache_requests_total",
        "counter",
        "Calls of cacheable functions by outcome (coalesced: waited for an identical call first).",
    );
    pub const RESULT_CACHE_FILLS: Family = f(
        "ol_proxy_result_cache_fills_total",
        "counter",
        "Responses stored, or not stored and why.",
    );
    pub const RESULT_CACHE_HIT_RATIO: Family = f(
        "ol_proxy_result_cache_hit_ratio",
        "gauge",
        "Hits over calls of cacheable functions.",
    );
    pub const RESULT_CACHE_ENTRIES: Family = f(
        "ol_proxy_result_cache_entries",
        "gauge",
        "Stored responses.",
    );
    pub const RESULT_CACHE_BYTES: Family = f(
        "ol_proxy_result_cache_bytes",
        "gauge",
        "Weighed bytes of stored responses.",
    );
    pub const FUNCTION_CACHE_REQUESTS: Family = f(
        "ol_proxy_function_cache_requests_total",
        "counter",
        "Function cache lookups (the code store API and /run calls).",
    );
    pub const FUNCTION_CACHE_HIT_RATIO: Family = f(
        "ol_proxy_function_cache_hit_ratio",
        "gauge",
        "Hits over function cache lookups.",
    );
    pub const FUNCTION_CACHE_ENTRIES: Family = f(
        "ol_proxy_function_cache_entries",
        "gauge",
        "Cached functions (absent ones included).",
    );
    pub const FUNCTION_CACHE_BYTES: Family = f(
        "ol_proxy_function_cache_bytes",
        "gauge",
        "Weighed bytes of cached packages.",
    );
    pub const CODE_STORE_CHANGES: Family = f(
        "ol_proxy_code_store_changes_total",
        "counter",
        "Uploads and deletes through the proxy.",
    );
    pub const IMPORT_INDEX_ENTRIES: Family = f(
        "ol_proxy_import_index_entries",
        "gauge",
        "Functions and packages the proxy believes each worker holds warm.",
    );
    pub const WORKER_STARTS: Family = f(
        "ol_proxy_worker_starts_total",
        "counter",
        "Starts reported by workers in x-ol-timing.",
    );

    pub const HOLD_WAITING: Family = f(
        "ol_proxy_hold_waiting",
        "gauge",
        "Calls waiting in the hold for a worker that can take them, by function.",
    );
    pub const HOLD_HELD: Family = f(
        "ol_proxy_hold_held_total",
        "counter",
        "Calls that waited in the hold, by function.",
    );
    pub const HOLD_WAIT: Family = f(
        "ol_proxy_hold_wait_seconds_total",
        "counter",
        "Time calls spent in the hold, by function.",
    );
    pub const HOLD_REFUSED: Family = f(
        "ol_proxy_hold_refused_total",
        "counter",
        "Held calls answered 503, by function and reason (full: admission.hold_queue; timeout: admission.hold_ms).",
    );
    pub const RETRY_BUDGET: Family = f(
        "ol_proxy_retry_budget_total",
        "counter",
        "Refused calls retried on the next pick at once (spent) or sent to the hold because the budget was used up (exhausted).",
    );
    pub const LIMITED: Family = f(
        "ol_proxy_limited_total",
        "counter",
        "Calls answered 429 by an [[admission.limits]] rule (limit: its functions), by reason (concurrency, rate).",
    );
    pub const LIMIT_IN_FLIGHT: Family = f(
        "ol_proxy_limit_in_flight",
        "gauge",
        "Calls in flight under an [[admission.limits]] concurrency limit, by rule.",
    );
    pub const ERRORS_BY_LEVEL: Family = f(
        "ol_proxy_error_responses_total",
        "counter",
        "Error responses (status 400 or more) by who wrote them (x-ol-error).",
    );

    pub const LOCAL_WORKER_RESTARTS: Family = f(
        "ol_proxy_local_worker_restarts_total",
        "counter",
        "Local workers (local_workers) started again after they exited.",
    );

    pub const CONNECTIONS_OPEN: Family = f(
        "ol_proxy_connections_open",
        "gauge",
        "Client connections open on the public listener.",
    );
    pub const CONNECTIONS_REFUSED: Family = f(
        "ol_proxy_connections_refused_total",
        "counter",
        "Client connections refused at limits.max_connections.",
    );
    pub const CONNECTIONS_HEAD_TIMEOUTS: Family = f(
        "ol_proxy_connections_head_timeouts_total",
        "counter",
        "Client connections closed because a request head did not arrive within timeouts.header_read_ms.",
    );
}

use names::*;

/// The `# HELP` and `# TYPE` lines of a family.
fn head(out: &mut String, f: &Family) {
    let _ = writeln!(
        out,
        "# HELP {} {}\n# TYPE {} {}",
        f.name, f.help, f.name, f.kind
    );
}

/// A family with one unlabelled value.
fn single(out: &mut String, f: &Family, v: impl std::fmt::Display) {
    head(out, f);
    let _ = writeln!(out, "{} {v}", f.name);
}

/// A family with one value per `label="key"`.
fn labelled<'a, V: std::fmt::Display>(
    out: &mut String,
    f: &Family,
    label: &str,
    rows: impl IntoIterator<Item = (&'a str, V)>,
) {
    head(out, f);
    for (k, v) in rows {
        let _ = writeln!(out, "{}{{{label}=\"{}\"}} {v}", f.name, escape(k));
    }
}

/// All of `/metrics` for the snapshot in force.
pub fn render(snap: &Snapshot, caches: Option<&Caches>) -> String {
    let mut out = String::with_capacity(16 * 1024);
    requests(
        &mut out,
        ROUTE,
        snap.routes
            .labels
            .iter()
            .map(String::as_str)
            .zip(snap.routes.stats.iter()),
    );
    requests(
        &mut out,
        POLICY,
        snap.routing
            .policies
            .iter()
            .map(|p| p.name.as_str())
            .zip(snap.policy_stats.iter()),
    );
    requests(
        &mut out,
        WORKER,
        snap.workers.iter().map(|w| (w.key.as_str(), &w.stats)),
    );
    let t = &snap.routing.table;
    let keyed = || {
        snap.workers
            .iter()
            .enumerate()
            .map(|(i, w)| (i, w.key.as_str()))
    };
    labelled(
        &mut out,
        &WORKER_HEALTHY,
        "worker",
        keyed().map(|(i, k)| (k, t.healthy(i) as u8)),
    );
    let now = crate::state::warm::now_ms();
    labelled(
        &mut out,
        &WORKER_DRAINING,
        "worker",
        snap.workers
            .iter()
            .map(|w| (w.key.as_str(), w.is_draining() as u8)),
    );
    labelled(
        &mut out,
        &WORKER_EJECTED,
        "worker",
        snap.workers
            .iter()
            .map(|w| (w.key.as_str(), w.outlier.ejected(now) as u8)),
    );
    labelled(
        &mut out,
        &WORKER_EJECTIONS,
        "worker",
        snap.workers
            .iter()
            .map(|w| (w.key.as_str(), w.outlier.ejected_total.load(Relaxed))),
    );
    labelled(
        &mut out,
        &WORKER_IN_FLIGHT,
        "worker",
        keyed().map(|(i, k)| (k, t.in_flight(i))),
    );
    single(&mut out, &REQUESTS_IN_FLIGHT, IN_FLIGHT.load(Relaxed));
    labelled(
        &mut out,
        &RELOADS,
        "result",
        [
            ("ok", crate::reload::RELOADS_OK.load(Relaxed)),
            ("failed", crate::reload::RELOADS_FAILED.load(Relaxed)),
        ],
    );
    // What workers report at /stats (upstream/health.rs polls it).
    let polled: Vec<_> = snap
        .workers
        .iter()
        .filter(|w| w.reported.polled.load(Relaxed))
        .collect();
    for (i, f) in WORKER_REPORTED.iter().enumerate() {
        labelled(
            &mut out,
            f,
            "worker",
            polled
                .iter()
                .map(|w| (w.key.as_str(), w.reported.values[i].load(Relaxed))),
        );
    }
    if let Some(c) = caches {
        cache_families(&mut out, c, &snap.workers);
    }
    admission_families(&mut out, snap);
    single(
        &mut out,
        &CONNECTIONS_OPEN,
        crate::conns::OPEN.load(Relaxed),
    );
    single(
        &mut out,
        &CONNECTIONS_REFUSED,
        crate::conns::REFUSED.load(Relaxed),
    );
    single(
        &mut out,
        &CONNECTIONS_HEAD_TIMEOUTS,
        crate::conns::HEAD_TIMEOUTS.load(Relaxed),
    );
    single(
        &mut out,
        &LOCAL_WORKER_RESTARTS,
        crate::upstream::local::restarts(),
    );
    out
}

const _: () = assert!(REPORTED.len() == names::WORKER_REPORTED.len());

/// The hold, the retry budget and error responses by level.
fn admission_families(out: &mut String, snap: &Snapshot) {
    use crate::state::admission::{BUDGET, HOLD};
    let held = HOLD.stats();
    let rows = |pick: fn(&crate::state::admission::HoldStats) -> u64| {
        held.iter()
            .map(move |(name, s)| (name.as_str(), pick(s)))
            .collect::<Vec<_>>()
    };
    labelled(
        out,
        &HOLD_WAITING,
        "function",
        rows(|s| s.waiting.load(Relaxed)),
    );
    labelled(out, &HOLD_HELD, "function", rows(|s| s.held.load(Relaxed)));
    head(out, &HOLD_WAIT);
    for (name, s) in &held {
        let secs = s.wait_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "{}{{function=\"{}\"}} {secs}",
            HOLD_WAIT.name,
            escape(name)
        );
    }
    head(out, &HOLD_REFUSED);
    for (name, s) in &held {
        for (reason, v) in [("full", &s.refused_full), ("timeout", &s.refused_timeout)] {
            let _ = writeln!(
                out,
                "{}{{function=\"{}\",reason=\"{reason}\"}} {}",
                HOLD_REFUSED.name,
                escape(name),
                v.load(Relaxed)
            );
        }
    }
    labelled(
        out,
        &RETRY_BUDGET,
        "result",
        [
            ("spent", BUDGET.spent.load(Relaxed)),
            ("exhausted", BUDGET.exhausted.load(Relaxed)),
        ],
    );
    let limits = &snap.limits;
    head(out, &LIMITED);
    for r in &limits.rules {
        for (reason, v) in [("concurrency", &r.over_concurrency), ("rate", &r.over_rate)] {
            let _ = writeln!(
                out,
                "{}{{limit=\"{}\",reason=\"{reason}\"}} {}",
                LIMITED.name,
                escape(&r.label),
                v.load(Relaxed)
            );
        }
    }
    labelled(
        out,
        &LIMIT_IN_FLIGHT,
        "limit",
        limits
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.label.as_str(), limits.in_flight(i))),
    );
    let by = &crate::state::metrics::ERRORS_BY_LEVEL;
    labelled(
        out,
        &ERRORS_BY_LEVEL,
        "level",
        [
            ("proxy", by[0].load(Relaxed)),
            ("worker", by[1].load(Relaxed)),
            ("function", by[2].load(Relaxed)),
        ],
    );
}

fn load<'a>(rows: &'a [(&'a str, &'a AtomicU64)]) -> impl Iterator<Item = (&'a str, u64)> + 'a {
    rows.iter().map(|(k, v)| (*k, v.load(Relaxed)))
}

fn ratio(hits: &AtomicU64, misses: &AtomicU64) -> f64 {
    let hits = hits.load(Relaxed) as f64;
    let all = hits + misses.load(Relaxed) as f64;
    if all > 0.0 {
        hits / all
    } else {
        0.0
    }
}

/// The result cache, the function cache and code store, the import index.
fn cache_families(out: &mut String, c: &Caches, workers: &[Arc<Worker>]) {
    let r = &c.results.stats;
    let (entries, bytes) = c.results.size();
    labelled(
        out,
        &RESULT_CACHE_REQUESTS,
        "outcome",
        load(&[
            ("hit", &r.hits),
            ("miss", &r.misses),
            ("coalesced", &r.coalesced),
            ("wait_timeout", &r.wait_timeouts),
        ]),
    );
    labelled(
        out,
        &RESULT_CACHE_FILLS,
        "result",
        load(&[
            ("stored", &r.stored),
            ("status", &r.not_stored_status),
            ("size", &r.not_stored_size),
        ]),
    );
    single(out, &RESULT_CACHE_HIT_RATIO, ratio(&r.hits, &r.misses));
    single(out, &RESULT_CACHE_ENTRIES, entries);
    single(out, &RESULT_CACHE_BYTES, bytes);
    if let Some(code) = &c.code {
        let s = &code.stats;
        let (entries, bytes) = code.size();
        labelled(
            out,
            &FUNCTION_CACHE_REQUESTS,
            "outcome",
            load(&[
                ("hit", &s.hits),
                ("miss", &s.misses),
                ("error", &s.load_errors),
            ]),
        );
        single(out, &FUNCTION_CACHE_HIT_RATIO, ratio(&s.hits, &s.misses));
        single(out, &FUNCTION_CACHE_ENTRIES, entries);
        single(out, &FUNCTION_CACHE_BYTES, bytes);
        labelled(
            out,
            &CODE_STORE_CHANGES,
            "op",
            load(&[
                ("upload", &s.uploads),
                ("upload_refused", &s.uploads_refused),
                ("delete", &s.deletes),
            ]),
        );
    }
    let now = crate::state::warm::now_ms();
    labelled(
        out,
        &IMPORT_INDEX_ENTRIES,
        "worker",
        workers.iter().map(|w| (w.key.as_str(), w.warm.live(now))),
    );
    let p = &c.reports;
    labelled(
        out,
        &WORKER_STARTS,
        "start",
        load(&[
            ("cold", &p.cold),
            ("warm", &p.warm),
            ("unpaused", &p.unpaused),
            ("zygote", &p.zygote),
            ("other", &p.other),
        ]),
    );
}

/// The request families of a set of `Stats` sharing a label: counts by
/// status class, errors, retries and the latency histogram.
fn requests<'a>(
    out: &mut String,
    (prefix, label): (&str, &str),
    items: impl Iterator<Item = (&'a str, &'a Stats)> + Clone,
) {
    let name = |f: &Family| format!("{prefix}_{}", f.name);
    let head = |out: &mut String, f: &Family| {
        let n = name(f);
        let help = f.help.replace("{label}", label);
        let _ = writeln!(out, "# HELP {n} {help}\n# TYPE {n} {}", f.kind);
    };
    let n = name(&REQUESTS);
    head(out, &REQUESTS);
    for (key, s) in items.clone() {
        for (i, c) in s.status.iter().enumerate() {
            let _ = writeln!(
                out,
                "{n}{{{label}=\"{}\",code=\"{}xx\"}} {}",
                escape(key),
                i + 1,
                c.load(Relaxed)
            );
        }
    }
    for (f, get) in [
        (
            &ERRORS,
            (|s: &Stats| s.errors.load(Relaxed)) as fn(&Stats) -> u64,
        ),
        (&RETRIES, |s: &Stats| s.retries.load(Relaxed)),
        (&REFUSED, |s: &Stats| s.refused.load(Relaxed)),
    ] {
        let n = name(f);
        head(out, f);
        for (key, s) in items.clone() {
            let _ = writeln!(out, "{n}{{{label}=\"{}\"}} {}", escape(key), get(s));
        }
    }
    let n = name(&LATENCY);
    head(out, &LATENCY);
    for (key, s) in items {
        let key = escape(key);
        let mut cum = 0;
        for (i, b) in BUCKETS_US.iter().enumerate() {
            cum += s.buckets[i].load(Relaxed);
            let _ = writeln!(
                out,
                "{n}_bucket{{{label}=\"{key}\",le=\"{}\"}} {cum}",
                *b as f64 / 1e6
            );
        }
        let count = s.requests.load(Relaxed);
        let _ = writeln!(out, "{n}_bucket{{{label}=\"{key}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{n}_sum{{{label}=\"{key}\"}} {}",
            s.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{n}_count{{{label}=\"{key}\"}} {count}");
    }
}

/// A label value as Prometheus quotes it.
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
        requests(&mut out, ("ol_route", "route"), [("hello", &s)].into_iter());
        assert!(out.contains("ol_route_requests_total{route=\"hello\",code=\"2xx\"} 1"));
        assert!(out.contains(
            "# HELP ol_route_requests_total Requests finished, by route and status class."
        ));
        assert!(out.contains("ol_route_errors_total{route=\"hello\"} 1"));
        assert!(out.contains("ol_route_retries_total{route=\"hello\"} 1"));
        assert!(out.contains("ol_route_latency_seconds_bucket{route=\"hello\",le=\"0.001\"} 1"));
        assert!(out.contains("ol_route_latency_seconds_bucket{route=\"hello\",le=\"+Inf\"} 2"));
        assert_eq!(escape("a\"b\\"), "a\\\"b\\\\");
    }
}
