//! Shared by the integration tests: one config with every kind of policy.

#![allow(dead_code)]

use policies::{PolicySet, RoutingConfig};

pub const ALL: &str = r#"
[[policies]]
name = "rr"
kind = "round-robin"
[[policies]]
name = "rand"
kind = "random"
[[policies]]
name = "ll"
kind = "least-load"
[[policies]]
name = "loc"
kind = "code-locality"
load_factor = 0.25
[[policies]]
name = "loc-pkg"
kind = "code-locality"
over = "package"
[[policies]]
name = "sess"
kind = "session"
key = { cookie = "sid" }
load_factor = 0.5
[[policies]]
name = "db"
kind = "db-affinity"
key = { header = "x-db" }
load_factor = 0.1
[[policies]]
name = "ch"
kind = "consistent-hash"
[[policies]]
name = "ow"
kind = "openwhisk"
max_in_flight = 4
[[policies]]
name = "chain"
kind = "chain"
chain = ["sess", "db", "loc"]
[[routes]]
functions = ["exact-fn"]
policy = "loc"
[[routes]]
functions = ["img-*"]
policy = "chain"
"#;

/// Every configured policy name.
pub const NAMES: [&str; 10] = [
    "rr", "rand", "ll", "loc", "loc-pkg", "sess", "db", "ch", "ow", "chain",
];

/// The bounded-load ones, with their e.
pub const BOUNDED: [(&str, f64); 4] =
    [("loc", 0.25), ("loc-pkg", 0.25), ("sess", 0.5), ("db", 0.1)];

pub fn config() -> RoutingConfig {
    toml::from_str(ALL).unwrap()
}

pub fn keys(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.0.{}.{}:5000", i / 250, i % 250))
        .collect()
}

pub fn set(keys: &[String]) -> PolicySet {
    let k: Vec<&str> = keys.iter().map(String::as_str).collect();
    PolicySet::build(&config(), &k).unwrap()
}
