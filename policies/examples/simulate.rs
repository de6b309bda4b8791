//! A discrete-event simulation of serverless workers behind each routing
//! policy, to compare cold starts, slowdown and balance on a synthetic
//! workload with published shapes (Shahrad et al., "Serverless in the Wild",
//! ATC 2020: Zipf-like popularity, log-normal durations; Oakes et al., SOCK,
//! ATC 2018: import costs dominate cold starts).
//!
//! The policies are the crate's own (`PolicySet::build` from a TOML config,
//! exactly what the proxy runs), fed a `Workers` table that the simulation
//! updates like the proxy would (start, finish, latency) and a `Warm` index
//! that reads the simulated sandbox caches.
//!
//! Model: N workers, each with C slots (a request runs on one slot; more
//! wait in a FIFO queue), a warm-sandbox cache of K sandboxes (LRU over idle
//! ones; one sandbox runs one request at a time), a package cache of P
//! imported packages (LRU), a session-state cache and a DB-shard cache. A
//! request on a worker without an idle sandbox of its function pays a cold
//! start: sandbox start plus the import cost of each package that the worker
//! has not imported yet. Session and DB-shard misses add a small fetch cost.
//!
//! Seeded and deterministic: runs are split over threads but each run has
//! its own seed and its own policy set.
//!
//! `cargo run --release -p policies --example simulate [-- --requests N --out DIR]`

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use policies::{hash_str, Package, PolicySet, Request, RoutingConfig, View, Warm, Workers};

const WORKERS: usize = 16;
const SLOTS: usize = 4;
const SANDBOXES: usize = 64;
const PKG_CACHE: usize = 8;
const SESSION_CACHE: usize = 256;
const SHARD_CACHE: usize = 32;
const FUNCTIONS: usize = 300;
const PACKAGES: usize = 30;
const SESSIONS: usize = 5000;
const SHARDS: usize = 500;
const SANDBOX_START_US: f64 = 25_000.0;
const SESSION_MISS_US: u64 = 3_000;
const SHARD_MISS_US: u64 = 8_000;
const P_SESSION: f64 = 0.5;
const P_DB: f64 = 0.6;
const E: f64 = 0.25;

/// The policies compared, as the proxy would configure them.
const CONFIG: &str = r#"
[[policies]]
name = "round-robin"
kind = "round-robin"
[[policies]]
name = "random"
kind = "random"
[[policies]]
name = "least-load"
kind = "least-load"
[[policies]]
name = "code-locality"
kind = "code-locality"
load_factor = 0.25
[[policies]]
name = "code-locality-pkg"
kind = "code-locality"
load_factor = 0.25
over = "package"
[[policies]]
name = "consistent-hash"
kind = "consistent-hash"
[[policies]]
name = "openwhisk"
kind = "openwhisk"
max_in_flight = 4
[[policies]]
name = "session"
kind = "session"
key = { cookie = "sid" }
load_factor = 0.25
[[policies]]
name = "db-affinity"
kind = "db-affinity"
key = { header = "x-db" }
load_factor = 0.25
[[policies]]
name = "chain"
kind = "chain"
chain = ["session", "code-locality", "least-load"]
"#;

const POLICIES: [&str; 11] = [
    "round-robin",
    "random",
    "least-load",
    "code-locality",
    // The same policy deciding without the import index (`View::new`): what
    // the warm-worker knowledge is worth.
    "code-locality-noindex",
    "code-locality-pkg",
    "consistent-hash",
    "openwhisk",
    "session",
    "db-affinity",
    "chain",
];
/// Policies with a load bound (e = 0.25).
const BOUNDED: [&str; 5] = [
    "code-locality",
    "code-locality-pkg",
    "session",
    "db-affinity",
    "chain",
];
const LOADS: [f64; 3] = [0.3, 0.6, 0.9];

// ---------------------------------------------------------------- random

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        median * (sigma * self.normal()).exp()
    }
    fn exp(&mut self, mean: f64) -> f64 {
        -mean * self.unit().ln()
    }
}

/// Zipf(s) over 0..n by inverse CDF.
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut c: Vec<f64> = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).collect();
        let mut acc = 0.0;
        for x in c.iter_mut() {
            acc += *x;
            *x = acc;
        }
        c.iter_mut().for_each(|x| *x /= acc);
        Zipf(c)
    }
    fn sample(&self, r: &mut Rng) -> usize {
        let u = r.unit();
        self.0.partition_point(|&c| c < u).min(self.0.len() - 1)
    }
    fn p(&self, i: usize) -> f64 {
        self.0[i] - if i == 0 { 0.0 } else { self.0[i - 1] }
    }
}

// --------------------------------------------------------------- workload

struct Function {
    name: String,
    hash: u64,
    median_us: f64,
    packages: Vec<usize>,
}

struct Workload {
    functions: Vec<Function>,
    package_names: Vec<String>,
    package_cost_us: Vec<f64>,
    popularity: Zipf,
    sessions: Zipf,
    shards: Zipf,
    session_names: Vec<String>,
    shard_names: Vec<String>,
    mean_run_us: f64,
}

impl Workload {
    fn new(seed: u64) -> Self {
        let mut r = Rng(seed);
        let pkg_pop = Zipf::new(PACKAGES, 1.0);
        let package_cost_us: Vec<f64> = (0..PACKAGES)
            .map(|_| r.lognormal(40_000.0, 1.0).min(1_500_000.0))
            .collect();
        let functions: Vec<Function> = (0..FUNCTIONS)
            .map(|i| {
                let k = (r.unit() * 5.0) as usize; // 0..=4 packages
                let mut packages: Vec<usize> = Vec::new();
                for _ in 0..k {
                    let p = pkg_pop.sample(&mut r);
                    if !packages.contains(&p) {
                        packages.push(p);
                    }
                }
                let name = format!("fn-{i:03}");
                Function {
                    hash: hash_str(&name),
                    name,
                    median_us: r.lognormal(30_000.0, 1.0).clamp(1_000.0, 2_000_000.0),
                    packages,
                }
            })
            .collect();
        let popularity = Zipf::new(FUNCTIONS, 1.1);
        // Per invocation: median x lognormal(0, 0.4), mean factor e^0.08.
        let mean_run_us = (0..FUNCTIONS)
            .map(|i| popularity.p(i) * functions[i].median_us)
            .sum::<f64>()
            * (0.08f64).exp();
        Workload {
            functions,
            package_names: (0..PACKAGES).map(|i| format!("pkg-{i:02}")).collect(),
            package_cost_us,
            popularity,
            sessions: Zipf::new(SESSIONS, 1.0),
            shards: Zipf::new(SHARDS, 1.1),
            session_names: (0..SESSIONS).map(|i| format!("s{i}")).collect(),
            shard_names: (0..SHARDS).map(|i| format!("d{i}")).collect(),
            mean_run_us,
        }
    }
}

// ---------------------------------------------------------------- workers

#[derive(Clone, Copy)]
struct Sandbox {
    func: u16,
    busy: bool,
    last_used: u64,
}

/// A small LRU set of ids (linear scans: sizes are tens to hundreds).
struct Lru {
    cap: usize,
    items: Vec<(u32, u64)>,
}

impl Lru {
    fn new(cap: usize) -> Self {
        Lru {
            cap,
            items: Vec::with_capacity(cap),
        }
    }
    /// Touches `id`; returns whether it was present.
    fn touch(&mut self, id: u32, now: u64) -> bool {
        if let Some(x) = self.items.iter_mut().find(|x| x.0 == id) {
            x.1 = now;
            return true;
        }
        if self.items.len() == self.cap {
            let (i, _) = self
                .items
                .iter()
                .enumerate()
                .min_by_key(|(_, x)| x.1)
                .unwrap();
            self.items.swap_remove(i);
        }
        self.items.push((id, now));
        false
    }
}

struct Job {
    func: usize,
    arrival: u64,
    run_us: u64,
    session: Option<u32>,
    shard: Option<u32>,
    measured: bool,
}

struct SimWorker {
    busy: usize,
    queue: VecDeque<Job>,
    sandboxes: Vec<Sandbox>,
    packages: Lru,
    sessions: Lru,
    shards: Lru,
    load_area: f64,
    last_change: u64,
}

struct WarmView<'a> {
    workers: &'a [SimWorker],
    fn_hash: &'a [u64],
}

impl Warm for WarmView<'_> {
    fn is_warm(&self, w: usize, key: u64) -> bool {
        self.workers[w]
            .sandboxes
            .iter()
            .any(|s| !s.busy && self.fn_hash[s.func as usize] == key)
    }
}

// ------------------------------------------------------------- simulation

#[derive(Clone, Copy, PartialEq)]
enum Arrivals {
    Poisson,
    Bursty,
}

impl Arrivals {
    fn as_str(self) -> &'static str {
        match self {
            Arrivals::Poisson => "poisson",
            Arrivals::Bursty => "bursty",
        }
    }
}

#[derive(Clone, Default)]
struct Stats {
    requests: usize,
    cold: usize,
    mean_slowdown: f64,
    p99_slowdown: f64,
    load_ratio: f64,
    affinity_miss: f64,
}

enum Event {
    Arrival,
    Done { worker: usize, slot: usize },
}

fn simulate(
    wl: &Workload,
    set: &PolicySet,
    policy: &str,
    load: f64,
    arrivals: Arrivals,
    requests: usize,
    seed: u64,
) -> Stats {
    let (policy, use_index) = match policy.strip_suffix("-noindex") {
        Some(base) => (base, false),
        None => (policy, true),
    };
    let route = set.by_name(policy).expect("policy in config");
    let table = Workers::new(WORKERS);
    let mut r = Rng(seed);
    let mut ws: Vec<SimWorker> = (0..WORKERS)
        .map(|_| SimWorker {
            busy: 0,
            queue: VecDeque::new(),
            sandboxes: Vec::with_capacity(SANDBOXES + 8),
            packages: Lru::new(PKG_CACHE),
            sessions: Lru::new(SESSION_CACHE),
            shards: Lru::new(SHARD_CACHE),
            load_area: 0.0,
            last_change: 0,
        })
        .collect();
    let fn_hash: Vec<u64> = wl.functions.iter().map(|f| f.hash).collect();
    let pkg_lists: Vec<Vec<Package>> = wl
        .functions
        .iter()
        .map(|f| {
            f.packages
                .iter()
                .map(|&p| Package {
                    name: &wl.package_names[p],
                    cost: (wl.package_cost_us[p] / 1000.0) as u32,
                })
                .collect()
        })
        .collect();

    let rate = load * (WORKERS * SLOTS) as f64 / wl.mean_run_us; // per us
    let warmup = requests / 10;
    let mut heap: BinaryHeap<Reverse<(u64, u64, usize, usize)>> = BinaryHeap::new();
    let mut seq = 0u64;
    // Bursty: the rate alternates between 1.8x and 0.2x, 2 s on average each.
    let mut burst_high = true;
    let mut burst_until = r.exp(2e6) as u64;
    let mut issued = 0usize;
    let mut slowdowns: Vec<f32> = Vec::with_capacity(requests);
    let (mut cold, mut measured) = (0usize, 0usize);
    let (mut aff_lookups, mut aff_miss) = (0usize, 0usize);
    let mut measure_from = u64::MAX;
    let mut measure_to = 0u64;

    // Kind 0: arrival; 1: completion (worker, slot index in sandboxes).
    let mut push = |heap: &mut BinaryHeap<_>, t: u64, kind: usize, a: usize, b: usize| {
        seq += 1;
        heap.push(Reverse((t, seq, kind * 1_000_000 + a, b)));
    };
    push(&mut heap, 0, 0, 0, 0);

    // Starts a job on a worker with a free slot: sandbox, imports, caches.
    let start_job = |w: &mut SimWorker,
                     job: &Job,
                     now: u64,
                     cold: &mut usize,
                     aff: (&mut usize, &mut usize)|
     -> (u64, usize) {
        let f = &wl.functions[job.func];
        let mut setup = 0.0f64;
        let idle = w
            .sandboxes
            .iter()
            .position(|s| !s.busy && s.func as usize == job.func);
        let slot = match idle {
            Some(i) => i,
            None => {
                if job.measured {
                    *cold += 1;
                }
                setup += SANDBOX_START_US;
                for &p in &f.packages {
                    if !w.packages.touch(p as u32, now) {
                        setup += wl.package_cost_us[p];
                    }
                }
                let sb = Sandbox {
                    func: job.func as u16,
                    busy: true,
                    last_used: now,
                };
                if w.sandboxes.len() < SANDBOXES {
                    w.sandboxes.push(sb);
                    w.sandboxes.len() - 1
                } else if let Some((i, _)) = w
                    .sandboxes
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| !s.busy)
                    .min_by_key(|(_, s)| s.last_used)
                {
                    w.sandboxes[i] = sb;
                    i
                } else {
                    w.sandboxes.push(sb); // over-commit while all are busy
                    w.sandboxes.len() - 1
                }
            }
        };
        w.sandboxes[slot].busy = true;
        let (lookups, misses) = aff;
        if let Some(s) = job.session {
            *lookups += job.measured as usize;
            if !w.sessions.touch(s, now) {
                setup += SESSION_MISS_US as f64;
                *misses += job.measured as usize;
            }
        }
        if let Some(d) = job.shard {
            *lookups += job.measured as usize;
            if !w.shards.touch(d, now) {
                setup += SHARD_MISS_US as f64;
                *misses += job.measured as usize;
            }
        }
        w.busy += 1;
        (now + setup as u64 + job.run_us, slot)
    };

    let mut running: Vec<Vec<Option<Job>>> = (0..WORKERS).map(|_| Vec::new()).collect();

    while let Some(Reverse((t, _, kind, b))) = heap.pop() {
        let now = t;
        let event = if kind < 1_000_000 {
            Event::Arrival
        } else {
            Event::Done {
                worker: kind - 1_000_000,
                slot: b,
            }
        };
        match event {
            Event::Arrival => {
                if issued == warmup {
                    measure_from = now;
                    for w in ws.iter_mut() {
                        w.load_area = 0.0;
                        w.last_change = now;
                    }
                }
                let measured_job = issued >= warmup;
                issued += 1;
                if issued == requests {
                    // The load window ends at the last arrival (not the drain).
                    measure_to = now;
                    for (i, w) in ws.iter_mut().enumerate() {
                        w.load_area += table.in_flight(i) as f64 * (now - w.last_change) as f64;
                        w.last_change = u64::MAX;
                    }
                }
                let fi = wl.popularity.sample(&mut r);
                let f = &wl.functions[fi];
                let run_us = r.lognormal(f.median_us, 0.4).max(200.0) as u64;
                let session = (r.unit() < P_SESSION).then(|| wl.sessions.sample(&mut r) as u32);
                let shard = (r.unit() < P_DB).then(|| wl.shards.sample(&mut r) as u32);
                let req = Request::new(&f.name)
                    .packages(&pkg_lists[fi])
                    .session(session.map(|s| wl.session_names[s as usize].as_str()))
                    .db_key(shard.map(|s| wl.shard_names[s as usize].as_str()))
                    .method("POST");
                let warm = WarmView {
                    workers: &ws,
                    fn_hash: &fn_hash,
                };
                let view = if use_index {
                    View::with_warm(&table, &warm)
                } else {
                    View::new(&table)
                };
                let picks = route.pick(&req, &view);
                let wi = picks.first().expect("a worker");
                table.start(wi);
                let w = &mut ws[wi];
                if w.last_change != u64::MAX {
                    w.load_area +=
                        table.in_flight(wi).saturating_sub(1) as f64 * (now - w.last_change) as f64;
                    w.last_change = now;
                }
                let job = Job {
                    func: fi,
                    arrival: now,
                    run_us,
                    session,
                    shard,
                    measured: measured_job,
                };
                if w.busy < SLOTS {
                    let (done, slot) =
                        start_job(w, &job, now, &mut cold, (&mut aff_lookups, &mut aff_miss));
                    place(&mut running[wi], slot, job);
                    push(&mut heap, done, 1, wi, slot);
                } else {
                    w.queue.push_back(job);
                }
                if issued < requests {
                    let mean = match arrivals {
                        Arrivals::Poisson => 1.0 / rate,
                        Arrivals::Bursty => {
                            while now >= burst_until {
                                burst_high = !burst_high;
                                burst_until += r.exp(2e6) as u64 + 1;
                            }
                            1.0 / (rate * if burst_high { 1.8 } else { 0.2 })
                        }
                    };
                    let dt = r.exp(mean).max(1.0) as u64;
                    push(&mut heap, now + dt, 0, 0, 0);
                }
            }
            Event::Done { worker: wi, slot } => {
                let job = running[wi][slot].take().expect("running job");
                let w = &mut ws[wi];
                if w.last_change != u64::MAX {
                    w.load_area += table.in_flight(wi) as f64 * (now - w.last_change) as f64;
                    w.last_change = now;
                }
                table.finish(wi);
                let latency = now - job.arrival;
                table.record_latency(wi, latency.min(u32::MAX as u64) as u32);
                w.busy -= 1;
                w.sandboxes[slot].busy = false;
                w.sandboxes[slot].last_used = now;
                if job.measured {
                    measured += 1;
                    slowdowns.push((latency as f64 / job.run_us as f64) as f32);
                }
                if let Some(next) = w.queue.pop_front() {
                    let (done, slot) =
                        start_job(w, &next, now, &mut cold, (&mut aff_lookups, &mut aff_miss));
                    place(&mut running[wi], slot, next);
                    push(&mut heap, done, 1, wi, slot);
                }
            }
        }
    }

    // Time-averaged in-flight per worker over the measured window.
    let span = (measure_to.max(measure_from + 1) - measure_from) as f64;
    let loads: Vec<f64> = ws.iter().map(|w| w.load_area / span).collect();
    let mean_load = loads.iter().sum::<f64>() / loads.len() as f64;
    let max_load = loads.iter().cloned().fold(0.0, f64::max);
    slowdowns.sort_by(|a, b| a.total_cmp(b));
    let p99 = slowdowns[((slowdowns.len() as f64 * 0.99) as usize).min(slowdowns.len() - 1)];
    Stats {
        requests: measured,
        cold,
        mean_slowdown: slowdowns.iter().map(|&x| x as f64).sum::<f64>() / slowdowns.len() as f64,
        p99_slowdown: p99 as f64,
        load_ratio: max_load / mean_load.max(1e-9),
        affinity_miss: aff_miss as f64 / aff_lookups.max(1) as f64,
    }
}

/// Stores a running job at its sandbox index.
fn place(v: &mut Vec<Option<Job>>, slot: usize, job: Job) {
    if v.len() <= slot {
        v.resize_with(slot + 1, || None);
    }
    debug_assert!(v[slot].is_none());
    v[slot] = Some(job);
}

// ------------------------------------------------------------------ main

struct Run {
    policy: &'static str,
    arrivals: Arrivals,
    load: f64,
    stats: Stats,
}

fn main() {
    let mut requests = 200_000usize;
    let mut out = std::path::PathBuf::from("target/simulate");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--requests" => {
                requests = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--requests N")
            }
            "--out" => out = args.next().expect("--out DIR").into(),
            _ => {
                eprintln!("usage: simulate [--requests N] [--out DIR]");
                std::process::exit(2);
            }
        }
    }
    let started = std::time::Instant::now();
    let wl = Workload::new(42);
    let cfg: RoutingConfig = toml::from_str(CONFIG).expect("simulator config");
    let keys: Vec<String> = (0..WORKERS).map(|i| format!("w{i}")).collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();

    let mut jobs: Vec<(&'static str, Arrivals, f64)> = Vec::new();
    for arrivals in [Arrivals::Poisson, Arrivals::Bursty] {
        for load in LOADS {
            for p in POLICIES {
                jobs.push((p, arrivals, load));
            }
        }
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Run>>> = Mutex::new((0..jobs.len()).map(|_| None).collect());
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(4);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(policy, arrivals, load)) = jobs.get(i) else {
                    break;
                };
                // A fresh set per run: policy state (counters, RNGs) starts the same.
                let set = PolicySet::build(&cfg, &key_refs).expect("valid config");
                let seed =
                    1000 + (load * 10.0) as u64 + 100 * (arrivals == Arrivals::Bursty) as u64;
                let stats = simulate(&wl, &set, policy, load, arrivals, requests, seed);
                results.lock().unwrap()[i] = Some(Run {
                    policy,
                    arrivals,
                    load,
                    stats,
                });
            });
        }
    });
    let runs: Vec<Run> = results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(Option::unwrap)
        .collect();

    println!(
        "{} workers x {} slots, {} sandboxes and {} packages cached per worker, {} functions (Zipf 1.1), e = {}, {} requests per run ({} warm-up), mean run time {:.1} ms",
        WORKERS, SLOTS, SANDBOXES, PKG_CACHE, FUNCTIONS, E, requests, requests / 10, wl.mean_run_us / 1000.0
    );
    println!();
    println!("| arrivals | load | policy | cold starts | mean slowdown | p99 slowdown | max/mean load | affinity miss |");
    println!("|---|---|---|---|---|---|---|---|");
    for run in &runs {
        let s = &run.stats;
        println!(
            "| {} | {:.0}% | {} | {:.2}% | {:.2} | {:.1} | {:.3} | {:.1}% |",
            run.arrivals.as_str(),
            run.load * 100.0,
            run.policy,
            100.0 * s.cold as f64 / s.requests as f64,
            s.mean_slowdown,
            s.p99_slowdown,
            s.load_ratio,
            100.0 * s.affinity_miss,
        );
    }
    println!();
    check_targets(&runs);
    std::fs::create_dir_all(&out).expect("create output directory");
    let svg = out.join("simulate.svg");
    plot(&runs, &svg).expect("plot");
    println!("plot: {}", svg.display());
    println!("elapsed: {:.1} s", started.elapsed().as_secs_f64());
}

fn find<'a>(runs: &'a [Run], p: &str, a: Arrivals, load: f64) -> &'a Stats {
    &runs
        .iter()
        .find(|r| r.policy == p && r.arrivals == a && r.load == load)
        .unwrap()
        .stats
}

fn cold(s: &Stats) -> f64 {
    s.cold as f64 / s.requests as f64
}

/// Prints the targets of issue 3 and whether they hold.
fn check_targets(runs: &[Run]) {
    for a in [Arrivals::Poisson, Arrivals::Bursty] {
        let (loc, rr, ll) = (
            find(runs, "code-locality", a, 0.6),
            find(runs, "round-robin", a, 0.6),
            find(runs, "least-load", a, 0.6),
        );
        let ok1 = cold(loc) <= cold(rr) / 3.0;
        let ok2 = loc.p99_slowdown < ll.p99_slowdown;
        println!(
            "target ({}, 60%): code-locality cold starts <= 1/3 of round-robin's: {:.2}% vs {:.2}% -> {}",
            a.as_str(),
            100.0 * cold(loc),
            100.0 * cold(rr),
            if ok1 { "met" } else { "NOT met" }
        );
        println!(
            "target ({}, 60%): code-locality p99 slowdown < least-load's: {:.1} vs {:.1} -> {}",
            a.as_str(),
            loc.p99_slowdown,
            ll.p99_slowdown,
            if ok2 { "met" } else { "NOT met" }
        );
        for p in BOUNDED {
            let s = find(runs, p, a, 0.9);
            println!(
                "target ({}, 90%): {p} max/mean load {:.3} <= 1+e = {:.2} -> {}",
                a.as_str(),
                s.load_ratio,
                1.0 + E,
                if s.load_ratio <= 1.0 + E {
                    "met"
                } else {
                    "NOT met"
                }
            );
        }
    }
}

/// A chart: title, metric, arrival process.
type Panel = (&'static str, fn(&Stats) -> f64, Arrivals);

fn plot(runs: &[Run], path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1200, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((2, 2));
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
        RGBColor(0, 0, 0),
    ];
    let panels: [Panel; 4] = [
        (
            "cold-start rate % (poisson)",
            |s| 100.0 * cold(s),
            Arrivals::Poisson,
        ),
        (
            "p99 slowdown (poisson, log)",
            |s| s.p99_slowdown,
            Arrivals::Poisson,
        ),
        (
            "cold-start rate % (bursty)",
            |s| 100.0 * cold(s),
            Arrivals::Bursty,
        ),
        (
            "p99 slowdown (bursty, log)",
            |s| s.p99_slowdown,
            Arrivals::Bursty,
        ),
    ];
    for (k, (area, (title, metric, arr))) in areas.iter().zip(panels).enumerate() {
        let vals: Vec<f64> = runs
            .iter()
            .filter(|r| r.arrivals == arr)
            .map(|r| metric(&r.stats))
            .collect();
        let hi = vals.iter().cloned().fold(0.0, f64::max) * 1.1 + 1e-9;
        let lo = vals.iter().cloned().fold(f64::MAX, f64::min).max(1e-3);
        let mut b = ChartBuilder::on(area);
        b.caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50);
        let series = |r: &Run| r.arrivals == arr;
        if k % 2 == 1 {
            let mut c = b.build_cartesian_2d(25f64..95f64, (lo * 0.9..hi).log_scale())?;
            c.configure_mesh().x_desc("load %").draw()?;
            for (i, p) in POLICIES.iter().enumerate() {
                let pts: Vec<(f64, f64)> = runs
                    .iter()
                    .filter(|r| series(r) && r.policy == *p)
                    .map(|r| (r.load * 100.0, metric(&r.stats)))
                    .collect();
                let col = colors[i];
                c.draw_series(LineSeries::new(pts, col.stroke_width(2)))?
                    .label(*p)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], col.stroke_width(2))
                    });
            }
            c.configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        } else {
            let mut c = b.build_cartesian_2d(25f64..95f64, 0f64..hi)?;
            c.configure_mesh().x_desc("load %").draw()?;
            for (i, p) in POLICIES.iter().enumerate() {
                let pts: Vec<(f64, f64)> = runs
                    .iter()
                    .filter(|r| series(r) && r.policy == *p)
                    .map(|r| (r.load * 100.0, metric(&r.stats)))
                    .collect();
                let col = colors[i];
                c.draw_series(LineSeries::new(pts, col.stroke_width(2)))?
                    .label(*p)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], col.stroke_width(2))
                    });
            }
            c.configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}
