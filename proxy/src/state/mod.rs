//! The live configuration: one immutable `Snapshot` (config + built policy
//! set and its state table + workers + the stats they feed) behind one
//! `ArcSwap`.
//!
//! Why one swap: a request loads the snapshot once (`load_full`, one atomic
//! increment) and uses it to the end, so it never sees a policy set built
//! for one worker list and a worker list from another (worker indices in
//! the policies' picks are only meaningful within one snapshot). DNS
//! re-resolution swaps in a snapshot with a new worker list; a reload
//! (SIGHUP or `POST /admin/reload`, `crate::reload`) builds a whole new
//! snapshot with [`Snapshot::build`] and swaps it the same way.
//!
//! This folder holds state only, no sockets: the snapshot and what it is
//! built from ([`routing`], the one adapter to the policies crate;
//! [`workers`]; [`experiments`]) and the atomics the request path feeds
//! ([`metrics`], [`warm`]), and the hold and retry budget of calls no
//! worker can take yet ([`admission`], which outlives snapshots).
//! Everything here is read without locks on the request path (the hold
//! locks only when a call waits or a waited-for slot is released).

pub mod admission;
pub mod experiments;
pub mod limits;
pub mod metrics;
pub mod outliers;
pub mod routing;
pub mod warm;
pub mod workers;

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use config::{Invalid, ProxyConfig};

use experiments::Experiments;
use metrics::Stats;
use routing::{PolicyId, Routing};
use workers::{merge, Worker};

/// Requests between `new_ctx` and the end of their context, all routes.
/// Shutdown waits for it to reach zero.
pub static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Per-route stats: `routing.routes.N` of the config, the default route,
/// then `paths.N`. Labels are the route's patterns.
pub struct RouteTable {
    pub labels: Vec<String>,
    pub stats: Vec<Stats>,
}

pub struct Snapshot {
    pub config: Arc<ProxyConfig>,
    /// Hash of the config file's text (shown by `/admin/status`).
    pub config_hash: u64,
    pub routing: Routing,
    /// `[[paths]]`: (prefix, route entry, policy).
    pub paths: Vec<(String, usize, PolicyId)>,
    pub routes: Arc<RouteTable>,
    /// Stats per policy (index of `routing.policies`; the same for every
    /// membership of one config).
    pub policy_stats: Arc<Vec<Stats>>,
    /// Indexed like the policy set's worker keys.
    pub workers: Vec<Arc<Worker>>,
    /// Addresses that are always workers (static list, local workers).
    pub fixed: Arc<Vec<(SocketAddr, &'static str)>>,
    /// Policy A/B experiments ([`experiments`]); their arm stats
    /// carry over rebuilds.
    pub experiments: Arc<Experiments>,
    /// `[[admission.limits]]`; their counters carry over rebuilds that
    /// leave the rules as they were.
    pub limits: Arc<limits::Limits>,
    /// When this config was loaded (start or reload).
    pub loaded: SystemTime,
}

fn build_routing(config: &ProxyConfig, workers: &[Arc<Worker>]) -> Result<Routing, Invalid> {
    let keys: Vec<&str> = workers.iter().map(|w| w.key.as_str()).collect();
    Routing::build(&config.routing, &keys, |i| workers[i].healthy())
        .map_err(|e| Invalid::new(format!("routing.{}", e.field), e.reason))
}

fn paths_of(config: &ProxyConfig, routing: &Routing) -> Vec<(String, usize, PolicyId)> {
    config
        .paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let id = routing
                .policy_id(&p.policy)
                .unwrap_or_else(|| routing.route_for("").1);
            (p.prefix.clone(), config.routing.routes.len() + 1 + i, id)
        })
        .collect()
}

impl Snapshot {
    /// Builds everything a config implies. `old` lends its workers (by
    /// address) so that health and counters carry over.
    pub fn build(
        config: ProxyConfig,
        config_hash: u64,
        local: &[SocketAddr],
        old: Option<&Snapshot>,
    ) -> Result<Snapshot, Invalid> {
        let mut fixed: Vec<(SocketAddr, &'static str)> = config
            .workers
            .static_addrs
            .iter()
            .map(|a| (*a, "static"))
            .collect();
        fixed.extend(local.iter().map(|a| (*a, "local")));
        let old_workers: &[Arc<Worker>] = old.map_or(&[], |o| &o.workers[..]);
        let workers = merge(old_workers, &fixed, !config.health.enabled);
        let mut config = config;
        // `[[paths]]` may name built-ins that no route uses: make the set
        // build them too, as policies of their own.
        // So may experiment arms.
        let named: Vec<String> = config
            .paths
            .iter()
            .map(|p| p.policy.clone())
            .chain(
                config
                    .experiments
                    .iter()
                    .flat_map(|e| e.arms.iter().map(|a| a.policy.clone())),
            )
            .collect();
        for p in &named {
            if !config.routing.policies.iter().any(|d| &d.name == p) {
                if let Some(config::policy::PolicyRef::Builtin(kind)) = config.routing.resolve(p) {
                    let pc = config::PolicyConfig::new(p.clone(), kind);
                    config.routing.policies.push(pc);
                }
            }
        }
        let routing = build_routing(&config, &workers)?;
        let mut labels: Vec<String> = config
            .routing
            .routes
            .iter()
            .map(|r| r.functions.join(","))
            .collect();
        labels.push("default".into());
        labels.extend(config.paths.iter().map(|p| format!("path:{}", p.prefix)));
        let stats = labels.iter().map(|_| Stats::default()).collect();
        let policy_stats = routing.policies.iter().map(|_| Stats::default()).collect();
        let experiments = Experiments::build(&config, &routing, old.map(|o| &*o.experiments))?;
        let limits = match old {
            Some(o) if o.limits.config == config.admission.limits => o.limits.clone(),
            _ => limits::Limits::build(&config.admission.limits),
        };
        Ok(Snapshot {
            limits,
            paths: paths_of(&config, &routing),
            config: Arc::new(config),
            config_hash,
            routing,
            routes: Arc::new(RouteTable { labels, stats }),
            policy_stats: Arc::new(policy_stats),
            workers,
            fixed: Arc::new(fixed),
            experiments: Arc::new(experiments),
            loaded: SystemTime::now(),
        })
    }

    /// The same snapshot with the worker list for these DNS answers.
    pub fn with_dns(&self, dns: &[SocketAddr]) -> Result<Snapshot, Invalid> {
        let mut addrs = (*self.fixed).clone();
        addrs.extend(dns.iter().map(|a| (*a, "dns")));
        let workers = merge(&self.workers, &addrs, !self.config.health.enabled);
        let routing = build_routing(&self.config, &workers)?;
        Ok(Snapshot {
            paths: paths_of(&self.config, &routing),
            config: self.config.clone(),
            config_hash: self.config_hash,
            routing,
            routes: self.routes.clone(),
            policy_stats: self.policy_stats.clone(),
            workers,
            fixed: self.fixed.clone(),
            experiments: self.experiments.clone(),
            limits: self.limits.clone(),
            loaded: self.loaded,
        })
    }

    /// Route entry and policy for a function name.
    #[inline]
    pub fn route_for_function(&self, name: &str) -> (usize, PolicyId) {
        self.routing.route_for(name)
    }

    /// Route entry and policy for a non-`/run/` path, if a prefix matches.
    #[inline]
    pub fn route_for_path(&self, path: &str) -> Option<(usize, usize, PolicyId)> {
        self.paths
            .iter()
            .find(|(p, _, _)| path.starts_with(p.as_str()))
            .map(|(p, r, id)| (p.len(), *r, *id))
    }
}

/// Process-wide state: the swappable snapshot and start time.
pub struct State {
    pub snap: ArcSwap<Snapshot>,
    pub started: Instant,
}

impl State {
    pub fn new(s: Snapshot) -> Arc<State> {
        Arc::new(State {
            snap: ArcSwap::from_pointee(s),
            started: Instant::now(),
        })
    }
}

/// The config text's hash, shown as the config version.
pub fn config_hash(text: &str) -> u64 {
    policies::hash_str(text)
}
