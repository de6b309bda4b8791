//! The registry: builds every policy of a [`RoutingConfig`] for one
//! membership into an immutable [`PolicySet`], with the routes from function
//! names to policies. The proxy builds a new set on reload or membership
//! change and swaps it in whole (e.g. with `arc-swap`).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use config::policy::{is_glob, PolicyRef};
use config::Invalid;

use crate::hash::{hash_seeded, hash_str, mix64};
use crate::{
    Chain, CodeLocality, ConsistentHash, DbAffinity, LeastLoad, OpenWhisk, Picks, Policy,
    PolicyConfig, PolicyKind, Random, Request, RoundRobin, RoutingConfig, Session, View,
};

/// A policy with the name it was configured under (for `x-ol-policy`,
/// metrics and the admin status).
#[derive(Debug, Clone)]
pub struct Route {
    name: Box<str>,
    policy: Arc<dyn Policy>,
    fallback: Arc<LeastLoad>,
}

impl Route {
    /// The configured name (or the built-in kind's name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The policy itself (its [`Policy::pick`] may return `None`).
    pub fn policy(&self) -> &dyn Policy {
        &*self.policy
    }

    /// One decision, on the request path: the policy's picks, or when it has
    /// no key for this request (a session policy and no session), the set's
    /// least-load fallback's. Never allocates; see [`Policy::pick`].
    #[inline]
    pub fn pick(&self, req: &Request<'_>, view: &View<'_>) -> Picks {
        match self.policy.pick(req, view) {
            Some(p) => p,
            None => self.fallback.pick(req, view).unwrap_or_default(),
        }
    }
}

/// All policies of one config for one membership, and the routes to them.
/// Immutable; `Send + Sync`. Build: O(policies x workers x vnodes x log).
#[derive(Debug)]
pub struct PolicySet {
    routes: Vec<Route>,
    exact: HashMap<Box<str>, usize, BuildHasherDefault<StrHasher>>,
    globs: Vec<(Box<str>, usize)>,
    default: usize,
    workers: usize,
}

impl PolicySet {
    /// Builds every policy that the config references, for the workers with
    /// these stable keys (e.g. `host:port`; their order defines the indices
    /// in [`Picks`] and [`crate::Workers`]). Validates the config first;
    /// errors name the field (`policies.1.load_factor`), or `workers` for a
    /// bad membership. Call on (re)load and membership change, never per
    /// request.
    pub fn build(cfg: &RoutingConfig, worker_keys: &[&str]) -> Result<PolicySet, Invalid> {
        cfg.validate()?;
        for (i, k) in worker_keys.iter().enumerate() {
            if k.is_empty() {
                return Err(Invalid::new(format!("workers.{i}"), "empty worker key"));
            }
            if worker_keys[..i].contains(k) {
                return Err(Invalid::new(
                    format!("workers.{i}"),
                    format!("duplicate worker {k:?}"),
                ));
            }
        }
        if worker_keys.len() > u32::MAX as usize {
            return Err(Invalid::new("workers", "too many workers"));
        }
        let fallback = Arc::new(LeastLoad::new(hash_str("fallback")));
        let mut b = Builder {
            cfg,
            keys: worker_keys,
            built: HashMap::new(),
        };
        let mut routes: Vec<Route> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut route_of = |name: &str| -> usize {
            if let Some(&i) = index.get(name) {
                return i;
            }
            let policy = b.get(name);
            routes.push(Route {
                name: name.into(),
                policy,
                fallback: fallback.clone(),
            });
            index.insert(name.to_string(), routes.len() - 1);
            routes.len() - 1
        };
        let default = route_of(&cfg.default_policy);
        let mut exact = HashMap::default();
        let mut globs = Vec::new();
        for r in &cfg.routes {
            let i = route_of(&r.policy);
            for f in &r.functions {
                if is_glob(f) {
                    globs.push((f.as_str().into(), i));
                } else {
                    exact.entry(f.as_str().into()).or_insert(i);
                }
            }
        }
        // Policies defined but not routed are built too (experiments may
        // name them); chains' members are already built.
        for p in &cfg.policies {
            route_of(&p.name);
        }
        Ok(PolicySet {
            routes,
            exact,
            globs,
            default,
            workers: worker_keys.len(),
        })
    }

    /// The route for a function: an exact name first, then globs in config
    /// order, then the default. A hash-map lookup plus the globs; no
    /// allocation.
    #[inline]
    pub fn route(&self, function: &str) -> &Route {
        if let Some(&i) = self.exact.get(function) {
            return &self.routes[i];
        }
        for (g, i) in &self.globs {
            if glob_match(g.as_bytes(), function.as_bytes()) {
                return &self.routes[*i];
            }
        }
        &self.routes[self.default]
    }

    /// `route(req.function()).pick(req, view)`.
    #[inline]
    pub fn pick(&self, req: &Request<'_>, view: &View<'_>) -> Picks {
        self.route(req.function()).pick(req, view)
    }

    /// A built policy by its configured name (or built-in kind name), e.g.
    /// for an experiment arm.
    pub fn by_name(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| &*r.name == name)
    }

    /// Every built policy (admin status).
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The membership size this set was built for.
    pub fn workers(&self) -> usize {
        self.workers
    }
}

struct Builder<'a> {
    cfg: &'a RoutingConfig,
    keys: &'a [&'a str],
    built: HashMap<String, Arc<dyn Policy>>,
}

impl Builder<'_> {
    /// The policy a (validated) reference names, built once.
    fn get(&mut self, name: &str) -> Arc<dyn Policy> {
        if let Some(p) = self.built.get(name) {
            return p.clone();
        }
        let p: Arc<dyn Policy> = match self.cfg.resolve(name) {
            Some(PolicyRef::Defined(i)) => {
                let pc = &self.cfg.policies[i];
                if pc.kind == PolicyKind::Chain {
                    let members = pc.chain.iter().map(|m| self.get(m)).collect();
                    Arc::new(Chain::new(members))
                } else {
                    build_policy(pc, self.keys)
                }
            }
            Some(PolicyRef::Builtin(kind)) => {
                build_policy(&PolicyConfig::new(name, kind), self.keys)
            }
            None => unreachable!("validated config references unknown policy {name:?}"),
        };
        self.built.insert(name.to_string(), p.clone());
        p
    }
}

/// Builds one non-chain policy from its config for a membership (the
/// simulator and benchmarks use it directly). Seeds come from the name, so
/// builds are deterministic. Panics on `kind = "chain"` (chains are built by
/// [`PolicySet::build`], which resolves members).
pub fn build_policy(pc: &PolicyConfig, keys: &[&str]) -> Arc<dyn Policy> {
    let seed = hash_str(&pc.name);
    let (e, v) = (pc.load_factor(), pc.vnodes());
    match pc.kind {
        PolicyKind::RoundRobin => Arc::new(RoundRobin::new()),
        PolicyKind::Random => Arc::new(Random::new(seed)),
        PolicyKind::LeastLoad => Arc::new(LeastLoad::new(seed)),
        PolicyKind::CodeLocality => Arc::new(CodeLocality::new(keys, e, v, pc.over())),
        PolicyKind::Session => Arc::new(Session::new(keys, e, v)),
        PolicyKind::DbAffinity => Arc::new(DbAffinity::new(keys, e, v)),
        PolicyKind::ConsistentHash => Arc::new(ConsistentHash::new(keys, v)),
        PolicyKind::Openwhisk => Arc::new(OpenWhisk::new(keys.len(), pc.max_in_flight(), seed)),
        PolicyKind::Chain => panic!("build_policy: chains are built by PolicySet::build"),
    }
}

pub use config::policy::glob_match;

/// The route map's hasher: [`hash_str`]'s mixing, stable and fast.
#[derive(Default)]
struct StrHasher(u64);

impl Hasher for StrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = hash_seeded(bytes, self.0);
    }
    fn write_u8(&mut self, b: u8) {
        self.0 = mix64(self.0 ^ b as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Workers;

    fn cfg(text: &str) -> RoutingConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn globs() {
        assert!(glob_match(b"img-*", b"img-resize"));
        assert!(glob_match(b"img-*", b"img-"));
        assert!(!glob_match(b"img-*", b"im"));
        assert!(glob_match(b"*-v?", b"thing-v2"));
        assert!(!glob_match(b"*-v?", b"thing-v22"));
        assert!(glob_match(b"a*b*c", b"axxbyyc"));
        assert!(!glob_match(b"a*b*c", b"axxbyy"));
        assert!(glob_match(b"*", b""));
        assert!(!glob_match(b"hello", b"hell"));
        assert!(glob_match(b"h?llo", b"hallo"));
        assert!(glob_match(b"a*b*c", b"aXbYbc"));
    }

    #[test]
    fn routes_exact_then_globs_in_order_then_default() {
        let c = cfg(r#"
default_policy = "round-robin"
[[routes]]
functions = ["img-*"]
policy = "random"
[[routes]]
functions = ["img-special", "i*"]
policy = "openwhisk"
"#);
        let s = PolicySet::build(&c, &["a", "b"]).unwrap();
        assert_eq!(s.route("img-special").name(), "openwhisk");
        assert_eq!(s.route("img-x").name(), "random");
        assert_eq!(s.route("ix").name(), "openwhisk");
        assert_eq!(s.route("other").name(), "round-robin");
        assert_eq!(s.route("other").policy().kind(), PolicyKind::RoundRobin);
    }

    #[test]
    fn empty_config_is_least_load_and_bad_config_names_field() {
        let s = PolicySet::build(&RoutingConfig::default(), &["a"]).unwrap();
        assert_eq!(s.route("x").policy().kind(), PolicyKind::LeastLoad);
        let c = cfg("[[policies]]\nname = \"l\"\nkind = \"code-locality\"\nload_factor = 0.0\n");
        assert_eq!(
            PolicySet::build(&c, &["a"]).unwrap_err().field,
            "policies.0.load_factor"
        );
        let e = PolicySet::build(&RoutingConfig::default(), &["a", "b", "a"]).unwrap_err();
        assert_eq!(e.field, "workers.2");
    }

    #[test]
    fn session_without_key_falls_back() {
        let c = cfg(r#"
default_policy = "s"
[[policies]]
name = "s"
kind = "session"
key = { header = "x-session" }
"#);
        let s = PolicySet::build(&c, &["a", "b", "c"]).unwrap();
        let w = Workers::new(3);
        let p = s.pick(&Request::new("f"), &View::new(&w));
        assert_eq!(p.len(), 3);
        let r = s.route("f");
        assert!(r
            .policy()
            .pick(&Request::new("f"), &View::new(&w))
            .is_none());
        let a = s.pick(&Request::new("f").session(Some("u1")), &View::new(&w));
        let b = s.pick(&Request::new("g").session(Some("u1")), &View::new(&w));
        assert_eq!(a.first(), b.first(), "same session, same worker");
    }

    #[test]
    fn chain_members_are_shared_and_all_policies_built() {
        let c = cfg(r#"
[[policies]]
name = "c"
kind = "chain"
chain = ["s", "code-locality"]
[[policies]]
name = "s"
kind = "session"
key = { cookie = "sid" }
[[policies]]
name = "unused"
kind = "random"
"#);
        let s = PolicySet::build(&c, &["a", "b"]).unwrap();
        let names: Vec<&str> = s.routes().iter().map(|r| r.name()).collect();
        assert_eq!(names, ["least-load", "c", "s", "unused"]);
        assert_eq!(s.by_name("c").unwrap().policy().kind(), PolicyKind::Chain);
        assert!(s.by_name("code-locality").is_none(), "only routed names");
    }
}
