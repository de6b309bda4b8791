//! Property tests of every policy: reachability, health, the load bound,
//! minimal remapping of the hashing policies, and chain fall-through.

mod common;

use std::collections::HashSet;

use policies::{Package, PolicySet, Request, View, Workers};
use proptest::prelude::*;

/// 48 cases per property by default (CI time); `PROPTEST_CASES=5000` for a
/// deeper search.
fn cases() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(48);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

const PKGS: [Package<'static>; 3] = [
    Package {
        name: "numpy",
        cost: 90,
    },
    Package {
        name: "requests",
        cost: 20,
    },
    Package {
        name: "pandas",
        cost: 150,
    },
];

/// The i-th request of a family: distinct function, session and DB keys.
fn req_parts(i: usize) -> (String, String, String) {
    (format!("fn-{i}"), format!("sess-{i}"), format!("db-{i}"))
}

fn health() -> impl Strategy<Value = Vec<bool>> {
    (1usize..=12).prop_flat_map(|n| {
        proptest::collection::vec(any::<bool>(), n)
            .prop_filter("one healthy", |h| h.contains(&true))
    })
}

proptest! {
    #![proptest_config(cases())]

    /// Across many keys, the first pick covers exactly the healthy workers.
    #[test]
    fn every_healthy_worker_is_reachable(h in health()) {
        let keys = common::keys(h.len());
        let set = common::set(&keys);
        let snap: Vec<(bool, u32, u32)> = h.iter().map(|&x| (x, 0, 0)).collect();
        let w = Workers::from_snapshot(&snap);
        let view = View::new(&w);
        let healthy: HashSet<usize> = (0..h.len()).filter(|&i| h[i]).collect();
        for name in common::NAMES {
            let r = set.by_name(name).unwrap();
            let mut seen = HashSet::new();
            for i in 0..3000 {
                let (f, s, d) = req_parts(i);
                // loc-pkg hashes the package: vary the package names too.
                let pk = [Package { name: &s, cost: 5 }];
                let req = Request::new(&f).session(Some(&s)).db_key(Some(&d)).packages(&pk);
                seen.insert(r.pick(&req, &view).first().unwrap());
            }
            prop_assert_eq!(&seen, &healthy, "policy {}", name);
        }
    }

    /// With random loads and health, no pick (first or fail-over) is
    /// unhealthy while a healthy worker exists, and picks are distinct.
    #[test]
    fn no_unhealthy_pick_while_a_healthy_one_exists(
        state in proptest::collection::vec((any::<bool>(), 0u32..20, 0u32..5000), 1..40),
        seed in 0usize..1000,
    ) {
        let keys = common::keys(state.len());
        let set = common::set(&keys);
        let w = Workers::from_snapshot(&state);
        let view = View::new(&w);
        let any_healthy = state.iter().any(|s| s.0);
        for name in common::NAMES {
            let r = set.by_name(name).unwrap();
            for i in seed..seed + 50 {
                let (f, s, d) = req_parts(i);
                let req = Request::new(&f).session(Some(&s)).db_key(Some(&d)).packages(&PKGS);
                let p = r.pick(&req, &view);
                prop_assert!(!p.is_empty());
                prop_assert_eq!(p.len(), p.iter().collect::<HashSet<_>>().len());
                let candidates = if any_healthy { state.iter().filter(|s| s.0).count() } else { state.len() };
                prop_assert!(p.len() >= candidates.min(policies::MAX_PICKS), "{}: {:?}", name, p);
                if any_healthy {
                    for x in p.iter() {
                        prop_assert!(state[x].0, "{} picked unhealthy {} in {:?}", name, x, p);
                    }
                }
            }
        }
    }

    /// Bounded-load policies: whatever the order of arrivals and departures
    /// and however skewed the keys, the chosen worker ends up with at most
    /// ceil((1+e) x average) + 1 in flight.
    #[test]
    fn bounded_loads_hold_under_any_arrival_order(
        h in health(),
        ops in proptest::collection::vec((any::<bool>(), 0usize..6, any::<u16>()), 1..400),
    ) {
        let keys = common::keys(h.len());
        let set = common::set(&keys);
        let healthy = h.iter().filter(|&&x| x).count() as f64;
        for (name, e) in common::BOUNDED {
            let snap: Vec<(bool, u32, u32)> = h.iter().map(|&x| (x, 0, 0)).collect();
            let w = Workers::from_snapshot(&snap);
            let r = set.by_name(name).unwrap();
            let mut running: Vec<usize> = Vec::new();
            for &(arrive, key, pick_departure) in &ops {
                if arrive || running.is_empty() {
                    // Few keys: heavy concentration on one home worker.
                    let (f, s, d) = req_parts(key);
                    let pk = [Package { name: "numpy", cost: 9 }, Package { name: &f, cost: 1 }];
                    let req = Request::new(&f).session(Some(&s)).db_key(Some(&d)).packages(&pk);
                    let x = r.pick(&req, &View::new(&w)).first().unwrap();
                    w.start(x);
                    running.push(x);
                    let avg = w.total_in_flight() as f64 / healthy;
                    let bound = ((1.0 + e) * avg).ceil() as u32 + 1;
                    prop_assert!(w.in_flight(x) <= bound,
                        "{}: worker {} has {} in flight, bound {} (avg {})", name, x, w.in_flight(x), bound, avg);
                } else {
                    let j = pick_departure as usize % running.len();
                    w.finish(running.swap_remove(j));
                }
            }
        }
    }

    /// Adding or removing one worker of N moves only the keys that must
    /// move (to the new worker / off the removed one), about 1/N of them.
    #[test]
    fn one_membership_change_remaps_about_one_nth(n in 4usize..24, victim in any::<prop::sample::Index>()) {
        let keys = common::keys(n + 1);
        let small = common::set(&keys[..n]);
        let big = common::set(&keys);
        let victim = victim.index(n + 1);
        let without: Vec<String> = keys.iter().enumerate().filter(|&(i, _)| i != victim).map(|(_, k)| k.clone()).collect();
        let removed = common::set(&without);
        let (ws, wb, wr) = (Workers::new(n), Workers::new(n + 1), Workers::new(n));
        const K: usize = 2000;
        for name in ["loc", "sess", "db", "ch"] {
            let (mut added, mut gone) = (0, 0);
            for i in 0..K {
                let (f, s, d) = req_parts(i);
                let req = Request::new(&f).session(Some(&s)).db_key(Some(&d));
                let pick = |set: &PolicySet, w: &Workers, ks: &[String]| {
                    ks[set.by_name(name).unwrap().pick(&req, &View::new(w)).first().unwrap()].clone()
                };
                let (a, b) = (pick(&small, &ws, &keys[..n]), pick(&big, &wb, &keys));
                if a != b {
                    prop_assert_eq!(&b, &keys[n], "{}: a key moved between old workers", name);
                    added += 1;
                }
                let c = pick(&removed, &wr, &without);
                if b != c {
                    prop_assert_eq!(&b, &keys[victim], "{}: a key left a surviving worker", name);
                    gone += 1;
                }
            }
            let limit = (1.7 / (n + 1) as f64 + 0.02) * K as f64;
            prop_assert!((added as f64) <= limit, "{}: {} of {} moved on add (n={})", name, added, K, n);
            prop_assert!((gone as f64) <= limit, "{}: {} of {} moved on remove (n={})", name, gone, K, n);
            prop_assert!(added > 0 && gone > 0, "{}: the changed worker owns some keys", name);
        }
    }

    /// A chain [session, db, code-locality] answers with the first member
    /// that has a key; a chain of only keyed members with no key yields
    /// None and the route falls back to least-load.
    #[test]
    fn chain_falls_through(
        state in proptest::collection::vec((any::<bool>(), 0u32..8, 0u32..100), 1..16),
        reqs in proptest::collection::vec((proptest::option::of(0usize..50), proptest::option::of(0usize..50), 0usize..50), 1..40),
    ) {
        let keys = common::keys(state.len());
        let set = common::set(&keys);
        let w = Workers::from_snapshot(&state);
        let view = View::new(&w);
        let chain = set.by_name("chain").unwrap();
        prop_assert_eq!(set.route("img-resize").name(), "chain");
        let by = |n: &str| set.by_name(n).unwrap().policy();
        for (s, d, f) in reqs {
            let (s, d, f) = (s.map(|i| format!("s{i}")), d.map(|i| format!("d{i}")), format!("f{f}"));
            let req = Request::new(&f).session(s.as_deref()).db_key(d.as_deref());
            let got = chain.policy().pick(&req, &view);
            let want = if s.is_some() {
                by("sess").pick(&req, &view)
            } else if d.is_some() {
                by("db").pick(&req, &view)
            } else {
                by("loc").pick(&req, &view)
            };
            prop_assert!(got.is_some());
            prop_assert_eq!(got, want);
        }
    }
}

#[test]
fn keyed_chain_without_key_passes_to_fallback() {
    let cfg: policies::RoutingConfig = toml::from_str(
        "default_policy = \"c\"\n[[policies]]\nname = \"c\"\nkind = \"chain\"\nchain = [\"s\", \"d\"]\n[[policies]]\nname = \"s\"\nkind = \"session\"\nkey = { cookie = \"sid\" }\n[[policies]]\nname = \"d\"\nkind = \"db-affinity\"\nkey = { query = \"shard\" }\n",
    )
    .unwrap();
    let set = PolicySet::build(&cfg, &["a", "b", "c", "d"]).unwrap();
    let w = Workers::from_snapshot(&[(true, 9, 0), (true, 0, 0), (true, 9, 0), (true, 9, 0)]);
    let r = set.route("anything");
    assert!(r
        .policy()
        .pick(&Request::new("f"), &View::new(&w))
        .is_none());
    // The least-load fallback compares two distinct workers: over many
    // draws it finds the idle one most of the time.
    let mut idle = 0;
    for _ in 0..100 {
        let p = r.pick(&Request::new("f"), &View::new(&w));
        assert_eq!(p.len(), 4);
        idle += (p.first() == Some(1)) as u32;
    }
    assert!(idle >= 40, "{idle}");
}

#[test]
fn openwhisk_probes_past_full_invokers_and_remaps_on_resize() {
    let keys = common::keys(7);
    let set = common::set(&keys);
    let ow = set.by_name("ow").unwrap();
    let idle = Workers::new(7);
    let req = Request::new("f");
    let home = ow.pick(&req, &View::new(&idle)).first().unwrap();
    let mut s = vec![(true, 0u32, 0u32); 7];
    s[home].1 = 4; // max_in_flight = 4: full
    let w = Workers::from_snapshot(&s);
    let p = ow.pick(&req, &View::new(&w));
    assert_ne!(p.first(), Some(home));
    // mod-N hashing: growing 7 -> 8 moves most functions (unlike rings).
    let big = common::set(&common::keys(8));
    let idle8 = Workers::new(8);
    let moved = (0..1000)
        .filter(|i| {
            let f = format!("fn-{i}");
            let r = Request::new(&f);
            ow.pick(&r, &View::new(&idle)).first()
                != big
                    .by_name("ow")
                    .unwrap()
                    .pick(&r, &View::new(&idle8))
                    .first()
        })
        .count();
    assert!(moved > 500, "{moved}");
}
