//! Routing policies for ol-edge: pure code that turns a request's facts and a
//! view of the workers into an ordered list of workers to try.
//!
//! No I/O, no async, no pingora: the proxy (and the simulator in
//! `examples/simulate.rs`) call the same code.
//!
//! # Life cycle and costs
//!
//! | when | what | cost |
//! |---|---|---|
//! | config load / reload, membership change (DNS, reload) | [`PolicySet::build`] | O(policies x workers x vnodes x log): hash rings are built here, once |
//! | membership change | [`Workers::new`] (the live state table, one per membership) | O(workers) |
//! | constantly (request start/end, health checks, responses) | [`Workers::start`], [`Workers::finish`], [`Workers::set_healthy`], [`Workers::record_latency`] | a few relaxed atomics, no allocation |
//! | each request | [`PolicySet::route`] then [`Route::pick`] (or [`PolicySet::pick`]) | a hash-map lookup (+ globs in order), then one decision: no allocation, typically 20 to 150 ns |
//!
//! ```
//! use policies::{PolicySet, Request, View, Workers};
//! let cfg = config::RoutingConfig::default(); // least-load for everything
//! let keys = ["10.0.0.1:5000", "10.0.0.2:5000", "10.0.0.3:5000"];
//! let set = PolicySet::build(&cfg, &keys).unwrap(); // on (re)load; swap with arc-swap
//! let workers = Workers::new(keys.len());           // live state, updated by the proxy
//! workers.set_healthy(2, false);
//!
//! let req = Request::new("hello").session(Some("abc"));
//! let route = set.route(req.function());
//! let picks = route.pick(&req, &View::new(&workers));
//! let first = picks.first().unwrap();               // then picks[1..] on failure
//! assert_ne!(first, 2);
//! workers.start(first);
//! // ... proxy the request ...
//! workers.finish(first);
//! workers.record_latency(first, 12_000);
//! ```

#![warn(missing_docs)]

mod chain;
mod code_locality;
mod consistent_hash;
mod db_affinity;
mod hash;
mod least_load;
mod openwhisk;
mod random;
mod ring;
mod round_robin;
mod session;
mod set;
mod state;

pub use chain::Chain;
pub use code_locality::CodeLocality;
pub use consistent_hash::ConsistentHash;
pub use db_affinity::DbAffinity;
pub use hash::hash_str;
pub use least_load::LeastLoad;
pub use openwhisk::OpenWhisk;
pub use random::Random;
pub use round_robin::RoundRobin;
pub use session::Session;
pub use set::{build_policy, glob_match, PolicySet, Route};
pub use state::{NoWarm, View, Warm, WorkerState, Workers};

pub use config::policy::{KeySource, LocalityKey, PolicyConfig, PolicyKind, RoutingConfig};

/// Most workers a decision returns (the first is the choice, the rest are
/// fail-over candidates, best first).
pub const MAX_PICKS: usize = 4;

/// An ordered list of up to [`MAX_PICKS`] distinct worker indices (indices
/// into the membership given to [`PolicySet::build`]), best first. Inline,
/// `Copy`, never allocates.
///
/// Empty only when there are no workers at all. Unhealthy workers appear
/// only when no worker is healthy (health checks may be stale; trying is
/// better than refusing).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Picks {
    idx: [u32; MAX_PICKS],
    len: u8,
}

impl Picks {
    /// An empty list.
    pub const fn new() -> Self {
        Picks {
            idx: [0; MAX_PICKS],
            len: 0,
        }
    }

    /// Appends `w` unless it is already present or the list is full.
    /// Returns whether it was added.
    #[inline]
    pub fn push(&mut self, w: usize) -> bool {
        if self.is_full() || self.contains(w) {
            return false;
        }
        self.idx[self.len as usize] = w as u32;
        self.len += 1;
        true
    }

    /// Whether `w` is in the list.
    #[inline]
    pub fn contains(&self, w: usize) -> bool {
        self.as_slice().iter().any(|&x| x as usize == w)
    }

    /// The best worker.
    #[inline]
    pub fn first(&self) -> Option<usize> {
        self.as_slice().first().map(|&x| x as usize)
    }

    /// The `i`-th choice.
    #[inline]
    pub fn get(&self, i: usize) -> Option<usize> {
        self.as_slice().get(i).map(|&x| x as usize)
    }

    /// How many workers are listed.
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True only when there are no workers at all.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether [`MAX_PICKS`] workers are listed.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.len as usize == MAX_PICKS
    }

    /// Moves the best worker to the end (the others move up one).
    #[inline]
    pub fn demote_first(&mut self) {
        self.idx[..self.len as usize].rotate_left(1);
    }

    /// The indices, best first.
    #[inline]
    pub fn as_slice(&self) -> &[u32] {
        &self.idx[..self.len as usize]
    }

    /// The indices as `usize`, best first.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.as_slice().iter().map(|&x| x as usize)
    }
}

impl std::fmt::Debug for Picks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// A package a function imports, with a relative cost of importing it
/// (any unit: milliseconds, megabytes; only comparisons matter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Package<'a> {
    /// The package's import name, e.g. `numpy`.
    pub name: &'a str,
    /// Relative import cost; the largest is hashed by `over = "package"`.
    pub cost: u32,
}

/// The facts of one request that a policy may use. Built by the proxy per
/// request from borrowed strings: [`Request::new`] hashes the function name
/// once (a few ns); nothing allocates.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    function: &'a str,
    function_hash: u64,
    packages: &'a [Package<'a>],
    session: Option<&'a str>,
    db_key: Option<&'a str>,
    method: &'a str,
}

impl<'a> Request<'a> {
    /// A request for `function`, with no packages or keys known yet.
    #[inline]
    pub fn new(function: &'a str) -> Self {
        Request {
            function,
            function_hash: hash_str(function),
            packages: &[],
            session: None,
            db_key: None,
            method: "",
        }
    }

    /// The function's package set, when the function cache knows it.
    #[inline]
    pub fn packages(mut self, packages: &'a [Package<'a>]) -> Self {
        self.packages = packages;
        self
    }

    /// The session key (from the cookie or header the session policy names).
    #[inline]
    pub fn session(mut self, key: Option<&'a str>) -> Self {
        self.session = key;
        self
    }

    /// The DB / shard key (from the header, query, JSON path or protobuf
    /// field the db-affinity policy names).
    #[inline]
    pub fn db_key(mut self, key: Option<&'a str>) -> Self {
        self.db_key = key;
        self
    }

    /// The HTTP method or gRPC method name.
    #[inline]
    pub fn method(mut self, method: &'a str) -> Self {
        self.method = method;
        self
    }

    /// The function name.
    #[inline]
    pub fn function(&self) -> &'a str {
        self.function
    }

    /// [`hash_str`] of the function name (also the key [`Warm`] is asked about).
    #[inline]
    pub fn function_hash(&self) -> u64 {
        self.function_hash
    }

    /// The function's packages (empty when unknown).
    #[inline]
    pub fn package_set(&self) -> &'a [Package<'a>] {
        self.packages
    }

    /// The session key, if the request carried one.
    #[inline]
    pub fn session_key(&self) -> Option<&'a str> {
        self.session
    }

    /// The DB / shard key, if the request carried one.
    #[inline]
    pub fn db(&self) -> Option<&'a str> {
        self.db_key
    }

    /// The method (empty when not set).
    #[inline]
    pub fn method_name(&self) -> &'a str {
        self.method
    }

    /// The most expensive package (the first of equals), if any is known.
    #[inline]
    pub fn largest_package(&self) -> Option<&'a Package<'a>> {
        let mut best: Option<&Package> = None;
        for p in self.packages {
            if best.is_none_or(|b| p.cost > b.cost) {
                best = Some(p);
            }
        }
        best
    }
}

/// A routing policy. Implementations are immutable after construction
/// (round-robin and random keep one atomic counter), `Send + Sync`, and
/// decide without allocating.
pub trait Policy: Send + Sync + std::fmt::Debug {
    /// The kind, for metrics and `x-ol-policy`.
    fn kind(&self) -> PolicyKind;

    /// Called once per request on the proxy's request path. Returns `None`
    /// when the policy has no key for this request (e.g. no session key), so
    /// that a chain passes to its next policy; otherwise the workers to try,
    /// best first (see [`Picks`]). Cost: O(1) expected (a ring lookup and a
    /// short walk for hashing policies), no allocation.
    fn pick(&self, req: &Request<'_>, view: &View<'_>) -> Option<Picks>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_dedupe_and_cap() {
        let mut p = Picks::new();
        assert!(p.push(3));
        assert!(!p.push(3));
        for w in [1, 2, 4, 5] {
            p.push(w);
        }
        assert_eq!(p.as_slice(), &[3, 1, 2, 4]);
        assert!(p.is_full());
        assert_eq!(p.first(), Some(3));
        assert_eq!(p.get(3), Some(4));
    }

    #[test]
    fn largest_package_is_the_most_expensive_first_of_equals() {
        let pk = [
            Package { name: "a", cost: 5 },
            Package { name: "b", cost: 9 },
            Package { name: "c", cost: 9 },
        ];
        let r = Request::new("f").packages(&pk);
        assert_eq!(r.largest_package().unwrap().name, "b");
        assert!(Request::new("f").largest_package().is_none());
    }
}
