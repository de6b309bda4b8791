//! Policy A/B experiments at run time: which calls belong to which arm,
//! and what each arm observed.
//!
//! Why here and not in the policies crate: an experiment is about *which*
//! policy decides, and about measuring the outcome (status, latency, the
//! worker's `x-ol-timing`), which needs the request and the response; the
//! policies crate stays pure. Each arm names a policy of the same built
//! policy set, so an arm's decision is exactly the policy's.
//!
//! Built with every snapshot ([`Experiments::build`]); the per-arm
//! statistics (`ArmStats`) are behind an `Arc` that a rebuild reuses for an
//! arm with the same experiment name, arm name and policy, so changing
//! weights (or anything else) on reload keeps what was gathered, while a
//! renamed experiment or arm, or an arm with another policy, starts afresh.
//!
//! Request path cost: experiments are matched by function name (exact
//! names, then globs) only when some exist; an arm is chosen by hashing the
//! assignment key (no allocation) or with a thread-local xorshift. Recording
//! is a few relaxed atomic adds plus one short uncontended-in-practice mutex
//! per arm for the sample reservoir and the per-worker counts.
//!
//! Statistics (`report`): see [`METHOD`].

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use config::experiment::Assign;
use config::policy::KeySource;
use config::{Invalid, ProxyConfig};
use http::HeaderValue;
use pingora::http::RequestHeader;
use serde_json::{json, Value};

use crate::routing::{PolicyId, Routing};
use policies::glob_match;

/// Samples kept per arm (reservoir sampling, Algorithm R): enough for
/// stable p99 estimates, small enough to bootstrap on the admin thread.
pub const RESERVOIR: usize = 4096;
/// Bootstrap resamples per comparison.
pub const BOOTSTRAP: usize = 400;
/// Largest sample drawn per arm per bootstrap resample.
const BOOT_N: usize = 2000;

/// How the report's intervals are computed (also printed in the JSON).
pub const METHOD: &str =
    "Each arm is compared with the first arm (the control): diff = arm - control. \
Rates (error rate over calls, cold-start rate over calls that carried x-ol-timing) use a normal \
approximation: 95% CI = diff +/- 1.96 x unpooled standard error, and a two-proportion z-test \
(pooled) gives p; significant when p < 0.05. Latency (p50, p95, p99, mean), queueing (mean of the \
worker's queue= ms) and load spread (coefficient of variation of calls per worker) use a \
percentile bootstrap (400 resamples of up to 2000 of each arm's reservoir samples, fixed seed): \
the 95% CI is the 2.5th..97.5th percentile of the resampled differences; significant when it \
excludes 0. Samples are a uniform reservoir of up to 4096 calls per arm.";

/// What the worker said in `x-ol-timing`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timing {
    /// The worker created a sandbox for this call (`start=cold`, or
    /// `start=zygote`: forked from a zygote, still a new sandbox).
    pub cold: bool,
    /// `queue=` ms: waiting for a free instance slot at the worker.
    pub queue_ms: f32,
}

/// Parses `queue=0.012;create=…;run=…;total=…;start=cold`.
pub fn parse_timing(v: &[u8]) -> Option<Timing> {
    let s = std::str::from_utf8(v).ok()?;
    let mut t = Timing::default();
    let mut any = false;
    for part in s.split(';') {
        let Some((k, v)) = part.trim().split_once('=') else {
            continue;
        };
        match k {
            "queue" => {
                t.queue_ms = v.parse().ok()?;
                any = true;
            }
            "start" => {
                t.cold = matches!(v, "cold" | "zygote");
                any = true;
            }
            _ => {}
        }
    }
    any.then_some(t)
}

/// One recorded call in an arm's reservoir.
#[derive(Clone, Copy)]
struct Sample {
    latency_us: u32,
    /// Index into `Samples::workers`; `u16::MAX` when no worker was tried.
    worker: u16,
    /// Queue ms; NaN when the response had no `x-ol-timing`.
    queue_ms: f32,
}

#[derive(Default)]
struct Samples {
    seen: u64,
    rng: u64,
    res: Vec<Sample>,
    workers: Vec<String>,
    /// Exact calls per worker (index as `workers`).
    per_worker: Vec<u64>,
}

/// What one arm observed; survives reloads that keep the arm.
pub struct ArmStats {
    pub calls: AtomicU64,
    /// 5xx answers and proxy-side failures.
    pub errors: AtomicU64,
    /// Calls whose response carried `x-ol-timing`.
    pub timed: AtomicU64,
    pub cold: AtomicU64,
    /// Calls assigned by their key (the rest at random).
    pub keyed: AtomicU64,
    samples: Mutex<Samples>,
    pub since: SystemTime,
}

impl Default for ArmStats {
    fn default() -> Self {
        ArmStats {
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            timed: AtomicU64::new(0),
            cold: AtomicU64::new(0),
            keyed: AtomicU64::new(0),
            samples: Mutex::new(Samples {
                rng: 0x9e37_79b9_7f4a_7c15,
                ..Samples::default()
            }),
            since: SystemTime::now(),
        }
    }
}

impl ArmStats {
    /// Records one finished call.
    pub fn record(
        &self,
        status: u16,
        latency_us: u64,
        error: bool,
        worker: Option<&str>,
        timing: Option<Timing>,
    ) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if error || status >= 500 || status == 0 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(t) = timing {
            self.timed.fetch_add(1, Ordering::Relaxed);
            if t.cold {
                self.cold.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let w = match worker {
            Some(k) => match s.workers.iter().position(|x| x == k) {
                Some(i) => i,
                None => {
                    s.workers.push(k.to_string());
                    s.per_worker.push(0);
                    s.workers.len() - 1
                }
            },
            None => usize::from(u16::MAX),
        };
        if let Some(c) = s.per_worker.get_mut(w) {
            *c += 1;
        }
        let sample = Sample {
            latency_us: latency_us.min(u32::MAX as u64) as u32,
            worker: w.min(u16::MAX as usize) as u16,
            queue_ms: timing.map_or(f32::NAN, |t| t.queue_ms),
        };
        s.seen += 1;
        if s.res.len() < RESERVOIR {
            s.res.push(sample);
        } else {
            let r = xorshift(&mut s.rng) % s.seen;
            if (r as usize) < RESERVOIR {
                s.res[r as usize] = sample;
            }
        }
    }
}

/// One arm as built for a snapshot.
pub struct Arm {
    pub name: String,
    pub policy_name: String,
    pub policy: PolicyId,
    pub weight: u32,
    /// Upper bound (exclusive) of this arm's slice of `0..total`.
    cum: u64,
    /// `x-ol-policy`: `<experiment>/<arm>:<policy>`.
    pub header: HeaderValue,
    pub stats: Arc<ArmStats>,
}

/// One experiment as built for a snapshot.
pub struct Experiment {
    pub name: String,
    pub functions: Vec<String>,
    pub assign: Assign,
    /// The assignment key as the proxy's key extraction knows it.
    key: Option<KeySource>,
    seed: u64,
    total: u64,
    pub arms: Vec<Arm>,
    pub since: SystemTime,
}

/// The experiments of one config.
#[derive(Default)]
pub struct Experiments {
    pub list: Vec<Experiment>,
}

impl Experiments {
    /// Builds the experiments of `config` against its policy set; reuses
    /// the stats of arms unchanged since `old` (same experiment, arm and
    /// policy names).
    pub fn build(
        config: &ProxyConfig,
        routing: &Routing,
        old: Option<&Experiments>,
    ) -> Result<Experiments, Invalid> {
        let mut list = Vec::with_capacity(config.experiments.len());
        for (i, e) in config.experiments.iter().enumerate() {
            let prev = old.and_then(|o| o.list.iter().find(|x| x.name == e.name));
            let mut arms = Vec::with_capacity(e.arms.len());
            let mut cum = 0u64;
            for (j, a) in e.arms.iter().enumerate() {
                let policy = routing.policy_id(&a.policy).ok_or_else(|| {
                    Invalid::new(
                        format!("experiments.{i}.arms.{j}.policy"),
                        format!("policy {:?} is not built", a.policy),
                    )
                })?;
                cum += a.weight as u64;
                let stats = prev
                    .and_then(|p| {
                        p.arms
                            .iter()
                            .find(|x| x.name == a.name && x.policy_name == a.policy)
                    })
                    .map_or_else(|| Arc::new(ArmStats::default()), |x| x.stats.clone());
                let header = HeaderValue::from_str(&format!("{}/{}:{}", e.name, a.name, a.policy))
                    .map_err(|_| {
                        Invalid::new(
                            format!("experiments.{i}.arms.{j}.name"),
                            "not usable in a header",
                        )
                    })?;
                arms.push(Arm {
                    name: a.name.clone(),
                    policy_name: a.policy.clone(),
                    policy,
                    weight: a.weight,
                    cum,
                    header,
                    stats,
                });
            }
            let key = match &e.assign {
                Assign::Random => None,
                Assign::Cookie(c) => Some(KeySource::Cookie(c.clone())),
                Assign::Header(h) => Some(KeySource::Header(h.to_ascii_lowercase())),
                Assign::Query(q) => Some(KeySource::Query(q.clone())),
            };
            list.push(Experiment {
                name: e.name.clone(),
                functions: e.functions.clone(),
                assign: e.assign.clone(),
                key,
                seed: fnv(e.name.as_bytes()),
                total: cum,
                arms,
                since: prev.map_or_else(SystemTime::now, |p| p.since),
            });
        }
        Ok(Experiments { list })
    }

    /// The experiment and arm for a call of `function`, if any.
    #[inline]
    pub fn assign(&self, function: &str, req: &RequestHeader) -> Option<(usize, usize)> {
        if self.list.is_empty() {
            return None;
        }
        let e = self.list.iter().position(|e| {
            e.functions.iter().any(|p| {
                if config::policy::is_glob(p) {
                    glob_match(p.as_bytes(), function.as_bytes())
                } else {
                    p == function
                }
            })
        })?;
        let exp = &self.list[e];
        let key = exp
            .key
            .as_ref()
            .and_then(|k| crate::inspect::header_key(req, k));
        let h = match key {
            Some(k) => splitmix(fnv(k) ^ exp.seed),
            None => thread_random(),
        };
        let r = h % exp.total.max(1);
        let a = exp.arms.iter().position(|a| r < a.cum).unwrap_or(0);
        if key.is_some() {
            exp.arms[a].stats.keyed.fetch_add(1, Ordering::Relaxed);
        }
        Some((e, a))
    }

    /// An arm by the indices [`assign`](Self::assign) gave.
    #[inline]
    pub fn arm(&self, e: usize, a: usize) -> &Arm {
        &self.list[e].arms[a]
    }
}

fn fnv(b: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn xorshift(s: &mut u64) -> u64 {
    let mut x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    x
}

fn thread_random() -> u64 {
    thread_local! {
        static RNG: Cell<u64> = const { Cell::new(0) };
    }
    RNG.with(|c| {
        let mut s = c.get();
        if s == 0 {
            let t = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64);
            s = splitmix(t ^ (c as *const _ as u64)) | 1;
        }
        let r = xorshift(&mut s);
        c.set(s);
        splitmix(r)
    })
}

// ---------------------------------------------------------------- report

/// A copy of an arm's numbers taken under its lock.
pub struct ArmView {
    pub name: String,
    pub policy: String,
    pub weight: u32,
    pub calls: u64,
    pub errors: u64,
    pub timed: u64,
    pub cold: u64,
    pub keyed: u64,
    /// Sorted latencies (ms) of the reservoir.
    pub latency_ms: Vec<f64>,
    queue_ms: Vec<f64>,
    /// (latency ms, worker) pairs for the bootstrap.
    pairs: Vec<(f64, u16, f32)>,
    pub per_worker: BTreeMap<String, u64>,
    n_workers: usize,
}

impl ArmView {
    fn of(a: &Arm) -> ArmView {
        let s = &a.stats;
        let g = s.samples.lock().unwrap_or_else(|e| e.into_inner());
        let mut latency_ms: Vec<f64> = g.res.iter().map(|x| x.latency_us as f64 / 1000.0).collect();
        latency_ms.sort_by(f64::total_cmp);
        let queue_ms = g
            .res
            .iter()
            .filter(|x| !x.queue_ms.is_nan())
            .map(|x| x.queue_ms as f64)
            .collect();
        let pairs = g
            .res
            .iter()
            .map(|x| (x.latency_us as f64 / 1000.0, x.worker, x.queue_ms))
            .collect();
        let per_worker = g
            .workers
            .iter()
            .cloned()
            .zip(g.per_worker.iter().copied())
            .collect();
        ArmView {
            name: a.name.clone(),
            policy: a.policy_name.clone(),
            weight: a.weight,
            calls: s.calls.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            timed: s.timed.load(Ordering::Relaxed),
            cold: s.cold.load(Ordering::Relaxed),
            keyed: s.keyed.load(Ordering::Relaxed),
            latency_ms,
            queue_ms,
            pairs,
            per_worker,
            n_workers: g.workers.len(),
        }
    }

    pub fn error_rate(&self) -> f64 {
        ratio(self.errors, self.calls)
    }

    pub fn cold_rate(&self) -> f64 {
        ratio(self.cold, self.timed)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// The q-quantile (0..1) of sorted values (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Coefficient of variation of calls per worker (0 = perfectly even).
fn cv(counts: &[u64]) -> f64 {
    let n = counts.len();
    if n == 0 {
        return f64::NAN;
    }
    let m = counts.iter().sum::<u64>() as f64 / n as f64;
    if m == 0.0 {
        return f64::NAN;
    }
    let var = counts.iter().map(|&c| (c as f64 - m).powi(2)).sum::<f64>() / n as f64;
    var.sqrt() / m
}

/// Standard normal CDF (Abramowitz-Stegun 7.1.26 erf, |error| < 1.5e-7).
fn phi(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let y = 1.0
        - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736) * t
            + 0.254_829_592)
            * t
            * (-z * z).exp();
    if x >= 0.0 {
        0.5 * (1.0 + y)
    } else {
        0.5 * (1.0 - y)
    }
}

fn num(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 10_000.0).round() / 10_000.0)
    } else {
        Value::Null
    }
}

/// Two-proportion comparison (b - a).
pub fn two_proportion(xa: u64, na: u64, xb: u64, nb: u64) -> Value {
    if na == 0 || nb == 0 {
        return json!({"diff": null, "ci95": null, "p_value": null, "significant": false,
            "method": "two-proportion z-test", "note": "no data in one arm"});
    }
    let (pa, pb) = (xa as f64 / na as f64, xb as f64 / nb as f64);
    let diff = pb - pa;
    let se = (pa * (1.0 - pa) / na as f64 + pb * (1.0 - pb) / nb as f64).sqrt();
    let p = (xa + xb) as f64 / (na + nb) as f64;
    let se0 = (p * (1.0 - p) * (1.0 / na as f64 + 1.0 / nb as f64)).sqrt();
    let pv = if se0 > 0.0 {
        2.0 * (1.0 - phi((diff / se0).abs()))
    } else {
        1.0
    };
    json!({
        "control": num(pa), "arm": num(pb),
        "diff": num(diff),
        "ci95": [num(diff - 1.96 * se), num(diff + 1.96 * se)],
        "p_value": num(pv),
        "significant": pv < 0.05,
        "method": "two-proportion z-test (normal approximation)",
    })
}

/// Statistics computed on one bootstrap resample (or the full sample).
fn stats_of(pairs: &[(f64, u16, f32)], n_workers: usize, buf: &mut Vec<f64>) -> [f64; 6] {
    buf.clear();
    buf.extend(pairs.iter().map(|p| p.0));
    buf.sort_by(f64::total_cmp);
    let q: Vec<f64> = pairs
        .iter()
        .filter(|p| !p.2.is_nan())
        .map(|p| p.2 as f64)
        .collect();
    let mut counts = vec![0u64; n_workers];
    for p in pairs {
        if let Some(c) = counts.get_mut(p.1 as usize) {
            *c += 1;
        }
    }
    [
        quantile(buf, 0.5),
        quantile(buf, 0.95),
        quantile(buf, 0.99),
        mean(buf),
        mean(&q),
        cv(&counts),
    ]
}

const BOOT_NAMES: [&str; 6] = [
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "latency_mean_ms",
    "queue_mean_ms",
    "load_spread_cv",
];

/// Percentile-bootstrap CIs of (b - a) for every `BOOT_NAMES` statistic.
fn bootstrap(a: &ArmView, b: &ArmView) -> Vec<(String, Value)> {
    let mut buf = Vec::new();
    let full_a = stats_of(&a.pairs, a.n_workers, &mut buf);
    let full_b = stats_of(&b.pairs, b.n_workers, &mut buf);
    let mut diffs: Vec<Vec<f64>> = vec![Vec::with_capacity(BOOTSTRAP); BOOT_NAMES.len()];
    if !a.pairs.is_empty() && !b.pairs.is_empty() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut ra = Vec::new();
        let mut rb = Vec::new();
        for _ in 0..BOOTSTRAP {
            for (src, dst) in [(&a.pairs, &mut ra), (&b.pairs, &mut rb)] {
                dst.clear();
                let n = src.len().min(BOOT_N);
                for _ in 0..n {
                    dst.push(src[(xorshift(&mut rng) % src.len() as u64) as usize]);
                }
            }
            let sa = stats_of(&ra, a.n_workers, &mut buf);
            let sb = stats_of(&rb, b.n_workers, &mut buf);
            for k in 0..BOOT_NAMES.len() {
                let d = sb[k] - sa[k];
                if d.is_finite() {
                    diffs[k].push(d);
                }
            }
        }
    }
    BOOT_NAMES
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let d = &mut diffs[k];
            d.sort_by(f64::total_cmp);
            let diff = full_b[k] - full_a[k];
            let v = if d.len() < BOOTSTRAP / 2 || !diff.is_finite() {
                json!({"control": num(full_a[k]), "arm": num(full_b[k]), "diff": num(diff),
                    "ci95": null, "significant": false, "method": "bootstrap",
                    "note": "not enough samples"})
            } else {
                let (lo, hi) = (quantile(d, 0.025), quantile(d, 0.975));
                json!({
                    "control": num(full_a[k]), "arm": num(full_b[k]),
                    "diff": num(diff),
                    "ci95": [num(lo), num(hi)],
                    "significant": lo > 0.0 || hi < 0.0,
                    "method": "percentile bootstrap",
                })
            };
            (name.to_string(), v)
        })
        .collect()
}

fn arm_json(v: &ArmView) -> Value {
    let q = |p| num(quantile(&v.latency_ms, p));
    let counts: Vec<u64> = v.per_worker.values().copied().collect();
    json!({
        "name": v.name,
        "policy": v.policy,
        "weight": v.weight,
        "calls": v.calls,
        "keyed_calls": v.keyed,
        "errors": v.errors,
        "error_rate": num(v.error_rate()),
        "latency_ms": {
            "p50": q(0.5), "p95": q(0.95), "p99": q(0.99),
            "mean": num(mean(&v.latency_ms)),
            "samples": v.latency_ms.len(),
        },
        "timed_calls": v.timed,
        "cold_starts": v.cold,
        "cold_start_rate": num(v.cold_rate()),
        "queue_ms": {
            "mean": num(mean(&v.queue_ms)),
            "max": num(v.queue_ms.iter().copied().fold(f64::NAN, f64::max)),
        },
        "calls_per_worker": v.per_worker,
        "load_spread_cv": num(cv(&counts)),
    })
}

/// The views of one experiment's arms.
pub fn views(e: &Experiment) -> Vec<ArmView> {
    e.arms.iter().map(ArmView::of).collect()
}

fn since(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One experiment's report (JSON).
pub fn experiment_json(e: &Experiment, v: &[ArmView]) -> Value {
    let mut comparisons = Vec::new();
    if let Some(control) = v.first() {
        for b in &v[1..] {
            let mut metrics = serde_json::Map::new();
            metrics.insert(
                "error_rate".into(),
                two_proportion(control.errors, control.calls, b.errors, b.calls),
            );
            metrics.insert(
                "cold_start_rate".into(),
                two_proportion(control.cold, control.timed, b.cold, b.timed),
            );
            for (k, val) in bootstrap(control, b) {
                metrics.insert(k, val);
            }
            comparisons.push(json!({
                "arm": b.name,
                "control": control.name,
                "metrics": metrics,
            }));
        }
    }
    let assign = match &e.assign {
        Assign::Random => "random".to_string(),
        Assign::Cookie(c) => format!("cookie:{c}"),
        Assign::Header(h) => format!("header:{h}"),
        Assign::Query(q) => format!("query:{q}"),
    };
    json!({
        "name": e.name,
        "functions": e.functions,
        "assign": assign,
        "since_unix": since(e.since),
        "arms": v.iter().map(arm_json).collect::<Vec<_>>(),
        "comparisons": comparisons,
    })
}

/// `/admin/experiments`: every experiment of the live snapshot.
pub fn report(exps: &Experiments) -> Value {
    let list: Vec<Value> = exps
        .list
        .iter()
        .map(|e| experiment_json(e, &views(e)))
        .collect();
    json!({ "method": METHOD, "experiments": list })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_header() {
        let t =
            parse_timing(b"queue=1.500;create=20.1;unpause=0.000;run=3.2;total=25.0;start=cold")
                .unwrap();
        assert!(t.cold);
        assert!((t.queue_ms - 1.5).abs() < 1e-6);
        let t = parse_timing(b"queue=0.010;start=warm").unwrap();
        assert!(!t.cold);
        assert!(parse_timing(b"garbage").is_none());
    }

    #[test]
    fn z_test_and_phi() {
        assert!((phi(1.96) - 0.975).abs() < 1e-3);
        let v = two_proportion(100, 1000, 100, 1000);
        assert_eq!(v["significant"], false);
        let v = two_proportion(100, 1000, 200, 1000);
        assert_eq!(v["significant"], true);
        let lo = v["ci95"][0].as_f64().unwrap();
        assert!(lo > 0.05 && lo < 0.1, "{lo}");
    }

    #[test]
    fn reservoir_and_bootstrap() {
        let a = ArmStats::default();
        let b = ArmStats::default();
        for i in 0..6000u64 {
            let t = Timing {
                cold: i % 10 == 0,
                queue_ms: 0.5,
            };
            a.record(200, 1000 + i % 100, false, Some("w1"), Some(t));
            b.record(
                200,
                3000 + i % 100,
                false,
                Some(["w1", "w2"][i as usize % 2]),
                None,
            );
        }
        assert_eq!(a.calls.load(Ordering::Relaxed), 6000);
        let mk = |s: Arc<ArmStats>, n: &str| Arm {
            name: n.into(),
            policy_name: "p".into(),
            policy: 0,
            weight: 1,
            cum: 1,
            header: HeaderValue::from_static("x"),
            stats: s,
        };
        let (va, vb) = (
            ArmView::of(&mk(Arc::new(a), "a")),
            ArmView::of(&mk(Arc::new(b), "b")),
        );
        assert_eq!(va.latency_ms.len(), RESERVOIR);
        let r: BTreeMap<String, Value> = bootstrap(&va, &vb).into_iter().collect();
        let p50 = &r["latency_p50_ms"];
        assert_eq!(p50["significant"], true, "{p50}");
        assert!((p50["diff"].as_f64().unwrap() - 2.0).abs() < 0.1, "{p50}");
    }
}
