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
//! The statistics over these numbers are the admin report's (`admin/report.rs`).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use config::experiment::Assign;
use config::policy::KeySource;
use config::wire::{millis, Timing};
use config::{Invalid, ProxyConfig};
use http::HeaderValue;
use pingora::http::RequestHeader;

use super::routing::{fnv1a, PolicyId, Routing};
use policies::glob_match;

/// Samples kept per arm (reservoir sampling, Algorithm R): enough for
/// stable p99 estimates, small enough to bootstrap on the admin thread.
pub const RESERVOIR: usize = 4096;
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
            if t.start.is_new() {
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
            queue_ms: timing.map_or(f32::NAN, |t| millis(t.queue) as f32),
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
                seed: fnv1a(e.name.as_bytes()),
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
            Some(k) => splitmix(fnv1a(k) ^ exp.seed),
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

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub(crate) fn xorshift(s: &mut u64) -> u64 {
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
    pub queue_ms: Vec<f64>,
    /// (latency ms, worker) pairs for the bootstrap.
    pub pairs: Vec<(f64, u16, f32)>,
    pub per_worker: BTreeMap<String, u64>,
    pub n_workers: usize,
}

impl Arm {
    /// A copy of this arm's numbers, for the report.
    pub fn view(&self) -> ArmView {
        self.stats.view(&self.name, &self.policy_name, self.weight)
    }
}

impl ArmStats {
    /// A copy of these numbers, taken under the samples' lock.
    pub fn view(&self, name: &str, policy: &str, weight: u32) -> ArmView {
        let s = self;
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
            name: name.to_string(),
            policy: policy.to_string(),
            weight,
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
}

impl ArmView {
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
