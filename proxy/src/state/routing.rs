//! The adapter between the proxy and the `policies` crate: the one place
//! that knows how a policy set is built and asked.
//!
//! Per membership (startup, DNS change, later reload) [`Routing::build`]
//! builds the crate's `PolicySet` and its live state table
//! (`policies::Workers`, relaxed atomics). The proxy updates that table in
//! place (health, in-flight, latency) and every decision reads it through a
//! `View` built on the stack, so deciding allocates nothing.
//!
//! Route matching (function -> route entry -> policy) is done here rather
//! than by `PolicySet::route`, with the same rule (exact names, then globs
//! in config order, then the default), because the proxy also needs the
//! route entry for metrics and the key sources (cookie, header, query, JSON
//! path) of the policy, which it must extract before asking.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use config::policy::{KeySource, PolicyKind, PolicyRef, RoutingConfig};
use config::Invalid;
use http::HeaderValue;
use policies::{glob_match, Picks, PolicySet, Request, View, Workers};

/// Which keys a policy (or a chain's members) needs from the request.
#[derive(Clone, Debug, Default)]
pub struct KeyNeeds {
    pub session: Option<KeySource>,
    pub db: Option<KeySource>,
}

impl KeyNeeds {
    /// The protobuf field path, when a key must come from a gRPC message.
    pub fn protobuf_path(&self) -> Option<&str> {
        match (&self.db, &self.session) {
            (Some(KeySource::Protobuf(p)), _) | (_, Some(KeySource::Protobuf(p))) => Some(p),
            _ => None,
        }
    }

    /// The JSON path, when a key must come from the body.
    pub fn json_path(&self) -> Option<&str> {
        match (&self.db, &self.session) {
            (Some(KeySource::Json(p)), _) | (_, Some(KeySource::Json(p))) => Some(p),
            _ => None,
        }
    }
}

/// Index into `PolicySet::routes()`.
pub type PolicyId = usize;

/// One built policy as the proxy uses it.
pub struct PolicyInfo {
    pub name: String,
    pub kind: &'static str,
    /// `x-ol-policy` value, built once.
    pub header: HeaderValue,
    pub needs: KeyNeeds,
}

/// The policy set for one config and one membership, with its state table.
pub struct Routing {
    pub set: PolicySet,
    pub table: Workers,
    pub policies: Vec<PolicyInfo>,
    /// Function name -> (route entry, policy).
    exact: HashMap<String, (usize, PolicyId), BuildHasherDefault<Fnv>>,
    globs: Vec<(String, usize, PolicyId)>,
    default: (usize, PolicyId),
}

impl Routing {
    /// Builds the set for these workers (`host:port` keys, in the order of
    /// the snapshot's worker list). `health` gives each worker's current
    /// health so a rebuild does not forget it.
    pub fn build(
        cfg: &RoutingConfig,
        keys: &[&str],
        health: impl Fn(usize) -> bool,
    ) -> Result<Routing, Invalid> {
        let set = PolicySet::build(cfg, keys)?;
        let table = Workers::new(keys.len());
        for i in 0..keys.len() {
            table.set_healthy(i, health(i));
        }
        let policies: Vec<PolicyInfo> = set
            .routes()
            .iter()
            .map(|r| PolicyInfo {
                name: r.name().to_string(),
                kind: r.policy().kind().as_str(),
                header: HeaderValue::from_str(r.name()).expect("validated policy name"),
                needs: needs_of(cfg, r.name()),
            })
            .collect();
        let id_of = |name: &str| -> PolicyId {
            policies
                .iter()
                .position(|p| p.name == name)
                .expect("the set builds every referenced policy")
        };
        let mut exact: HashMap<String, (usize, PolicyId), BuildHasherDefault<Fnv>> =
            HashMap::default();
        let mut globs = Vec::new();
        for (ri, r) in cfg.routes.iter().enumerate() {
            let id = id_of(&r.policy);
            for f in &r.functions {
                if config::policy::is_glob(f) {
                    globs.push((f.clone(), ri, id));
                } else {
                    exact.entry(f.clone()).or_insert((ri, id));
                }
            }
        }
        let default = (cfg.routes.len(), id_of(&cfg.default_policy));
        Ok(Routing {
            set,
            table,
            policies,
            exact,
            globs,
            default,
        })
    }

    /// Route entry and policy for a function: exact names, then globs in
    /// order, then the default (the same rule as `PolicySet::route`).
    #[inline]
    pub fn route_for(&self, function: &str) -> (usize, PolicyId) {
        if let Some(&hit) = self.exact.get(function) {
            return hit;
        }
        self.globs
            .iter()
            .find(|(g, _, _)| glob_match(g.as_bytes(), function.as_bytes()))
            .map_or(self.default, |&(_, r, id)| (r, id))
    }

    /// A policy by name (for `[[paths]]`).
    pub fn policy_id(&self, name: &str) -> Option<PolicyId> {
        self.policies.iter().position(|p| p.name == name)
    }

    /// One decision: the workers to try, best first. It also sees which
    /// workers hold what warm (the proxy's import index; `policies::NoWarm`
    /// for none).
    #[inline]
    pub fn pick_warm(&self, id: PolicyId, req: &Request<'_>, warm: &dyn policies::Warm) -> Picks {
        self.set.routes()[id].pick(req, &View::with_warm(&self.table, warm))
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a of `bytes`, continuing from `h`.
#[inline]
fn fnv1a_from(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// FNV-1a: stable across processes (an experiment's arm for a key is the
/// same on every proxy) and a few ns for the short keys hashed per request.
#[inline]
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_from(FNV_OFFSET, bytes)
}

/// FNV-1a as a `Hasher`: function names are short and come from validated
/// config, so SipHash's DoS resistance buys nothing on this per-request
/// lookup.
#[derive(Default)]
pub struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let h = if self.0 == 0 { FNV_OFFSET } else { self.0 };
        self.0 = fnv1a_from(h, bytes);
    }
}

/// The key sources a policy reference needs (a chain: its members').
fn needs_of(cfg: &RoutingConfig, name: &str) -> KeyNeeds {
    let mut needs = KeyNeeds::default();
    let mut add = |i: usize| {
        let p = &cfg.policies[i];
        match p.kind {
            PolicyKind::Session => needs.session = needs.session.take().or(p.key.clone()),
            PolicyKind::DbAffinity => needs.db = needs.db.take().or(p.key.clone()),
            _ => {}
        }
    };
    if let Some(PolicyRef::Defined(i)) = cfg.resolve(name) {
        if cfg.policies[i].kind == PolicyKind::Chain {
            for m in &cfg.policies[i].chain {
                if let Some(PolicyRef::Defined(j)) = cfg.resolve(m) {
                    add(j);
                }
            }
        } else {
            add(i);
        }
    }
    needs
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::policy::{PolicyConfig, RouteConfig};

    fn cfg() -> RoutingConfig {
        let mut sess = PolicyConfig::new("sess", PolicyKind::Session);
        sess.key = Some(KeySource::Cookie("sid".into()));
        let mut db = PolicyConfig::new("db", PolicyKind::DbAffinity);
        db.key = Some(KeySource::Json("user.db".into()));
        let mut chain = PolicyConfig::new("aff", PolicyKind::Chain);
        chain.chain = vec!["sess".into(), "round-robin".into()];
        RoutingConfig {
            policies: vec![chain, sess, db],
            routes: vec![
                RouteConfig {
                    functions: vec!["hello*".into()],
                    policy: "aff".into(),
                },
                RouteConfig {
                    functions: vec!["q".into()],
                    policy: "db".into(),
                },
            ],
            default_policy: "least-load".into(),
        }
    }

    #[test]
    fn routes_and_needs() {
        let keys = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];
        let r = Routing::build(&cfg(), &keys, |_| true).unwrap();
        let (route, id) = r.route_for("hello-x");
        assert_eq!(route, 0);
        assert_eq!(r.policies[id].name, "aff");
        assert!(matches!(
            r.policies[id].needs.session,
            Some(KeySource::Cookie(_))
        ));
        let (route, id) = r.route_for("q");
        assert_eq!(route, 1);
        assert_eq!(r.policies[id].needs.json_path(), Some("user.db"));
        let (route, id) = r.route_for("other");
        assert_eq!(route, 2);
        assert_eq!(r.policies[id].name, "least-load");
    }

    #[test]
    fn session_is_sticky_and_health_is_seen() {
        let keys = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];
        let r = Routing::build(&cfg(), &keys, |i| i != 1).unwrap();
        let (_, id) = r.route_for("hello");
        let req = Request::new("hello").session(Some("abc"));
        let first = r.pick_warm(id, &req, &policies::NoWarm).first().unwrap();
        assert_ne!(first, 1);
        for _ in 0..20 {
            assert_eq!(
                r.pick_warm(id, &req, &policies::NoWarm).first(),
                Some(first)
            );
        }
    }
}
