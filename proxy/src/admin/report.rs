//! The statistics of an experiment's report (`/admin/experiments`): each
//! arm against the control, computed on the admin thread from copies of
//! the arms' numbers ([`ArmView`]), never on the request path. See
//! [`METHOD`].

use std::time::SystemTime;

use config::experiment::Assign;
use serde_json::{json, Value};

use crate::state::experiments::{xorshift, Arm, ArmView, Experiment, Experiments};

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
    e.arms.iter().map(Arm::view).collect()
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
    use crate::state::experiments::{ArmStats, RESERVOIR};
    use config::wire::{Start, Timing};
    use std::collections::BTreeMap;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

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
                start: if i % 10 == 0 {
                    Start::Cold
                } else {
                    Start::Warm
                },
                queue: Duration::from_micros(500),
                ..Timing::default()
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
        let (va, vb) = (a.view("a", "p", 1), b.view("b", "p", 1));
        assert_eq!(va.latency_ms.len(), RESERVOIR);
        let r: BTreeMap<String, Value> = bootstrap(&va, &vb).into_iter().collect();
        let p50 = &r["latency_p50_ms"];
        assert_eq!(p50["significant"], true, "{p50}");
        assert!((p50["diff"].as_f64().unwrap() - 2.0).abs() < 0.1, "{p50}");
    }
}
