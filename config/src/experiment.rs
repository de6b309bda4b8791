//! Policy A/B experiments (`[[experiments]]` in the proxy's config): split
//! the calls of some functions between two or more routing policies, so
//! that their effect (latency, errors, cold starts, queueing, load spread)
//! can be compared on live traffic.
//!
//! ```toml
//! [[experiments]]
//! name = "locality-vs-ll"
//! functions = ["hello", "img-*"]        # exact names or globs
//! assign = { cookie = "sid" }           # or { header = "x-user" }, { query = "db" }, "random"
//! arms = [
//!   { name = "control", policy = "least-load", weight = 50 },
//!   { name = "treatment", policy = "locality", weight = 50 },
//! ]
//! ```
//!
//! Why a keyed assignment: hashing a session (or shard) key keeps one user
//! in one arm, so a policy that relies on affinity is measured as it would
//! run, and a user never sees both behaviours. `random` assigns each call
//! on its own (fine for stateless policies). A call without the key is
//! assigned at random.
//!
//! Experiments are matched before routes: a function matched by an
//! experiment is routed by the arm's policy, not by its route.

use serde::{Deserialize, Serialize};

use crate::policy::{validate_pattern, RoutingConfig};
use crate::Invalid;

/// Most arms in one experiment.
pub const MAX_ARMS: usize = 8;
/// Largest weight of one arm.
pub const MAX_WEIGHT: u32 = 10_000;

/// One experiment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Shown in `x-ol-policy` (`<name>/<arm>:<policy>`) and the report.
    pub name: String,
    /// Exact function names or globs (`*`, `?`).
    pub functions: Vec<String>,
    /// Two or more arms.
    pub arms: Vec<ArmConfig>,
    /// How a call is assigned to an arm.
    #[serde(default)]
    pub assign: Assign,
}

/// One arm: a policy (or chain) of `routing` and its share of calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmConfig {
    pub name: String,
    /// A policy of `routing` (a `[[routing.policies]]` name or a built-in).
    pub policy: String,
    /// Relative share (0 to 10000; at least one arm above 0).
    pub weight: u32,
}

/// `assign = "random"` or `assign = { cookie | header | query = "name" }`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Assign {
    /// Each call on its own.
    #[default]
    Random,
    /// Hash of a cookie's value.
    Cookie(String),
    /// Hash of a header's value (case-insensitive name).
    Header(String),
    /// Hash of a query parameter's value.
    Query(String),
}

/// Characters allowed in experiment and arm names (they go into a header).
fn check_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 64 {
        return Err("must be at most 64 characters".into());
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!("{s:?}: use letters, digits, '-', '_' or '.'"));
    }
    Ok(())
}

/// Validates `[[experiments]]`; fields are named `experiments.N.…`.
pub fn validate(exps: &[ExperimentConfig], routing: &RoutingConfig) -> Result<(), Invalid> {
    for (i, e) in exps.iter().enumerate() {
        let f = |name: &str| format!("experiments.{i}.{name}");
        check_name(&e.name).map_err(|r| Invalid::new(f("name"), r))?;
        if exps[..i].iter().any(|o| o.name == e.name) {
            return Err(Invalid::new(
                f("name"),
                format!("{:?} is used by an earlier experiment", e.name),
            ));
        }
        if e.functions.is_empty() {
            return Err(Invalid::new(
                f("functions"),
                "must list at least one function name or glob",
            ));
        }
        for (j, p) in e.functions.iter().enumerate() {
            validate_pattern(p).map_err(|r| Invalid::new(f(&format!("functions.{j}")), r))?;
        }
        if e.arms.len() < 2 {
            return Err(Invalid::new(
                f("arms"),
                format!("{} arm(s): an experiment needs at least 2", e.arms.len()),
            ));
        }
        if e.arms.len() > MAX_ARMS {
            return Err(Invalid::new(
                f("arms"),
                format!("{} arms: the limit is {MAX_ARMS}", e.arms.len()),
            ));
        }
        for (j, a) in e.arms.iter().enumerate() {
            let g = |name: &str| f(&format!("arms.{j}.{name}"));
            check_name(&a.name).map_err(|r| Invalid::new(g("name"), r))?;
            if e.arms[..j].iter().any(|o| o.name == a.name) {
                return Err(Invalid::new(
                    g("name"),
                    format!("{:?} is used by an earlier arm", a.name),
                ));
            }
            if routing.resolve(&a.policy).is_none() {
                return Err(Invalid::new(
                    g("policy"),
                    format!(
                        "unknown policy {:?}: name one of [[routing.policies]] or a built-in",
                        a.policy
                    ),
                ));
            }
            if a.weight > MAX_WEIGHT {
                return Err(Invalid::new(
                    g("weight"),
                    format!("{}: must be at most {MAX_WEIGHT}", a.weight),
                ));
            }
        }
        if e.arms.iter().all(|a| a.weight == 0) {
            return Err(Invalid::new(
                f("arms.0.weight"),
                "every weight is 0: at least one arm needs a share",
            ));
        }
        let empty = match &e.assign {
            Assign::Random => false,
            Assign::Cookie(s) | Assign::Header(s) | Assign::Query(s) => s.is_empty(),
        };
        if empty {
            return Err(Invalid::new(f("assign"), "the key name must not be empty"));
        }
        if let Assign::Header(h) = &e.assign {
            if http_header_name_invalid(h) {
                return Err(Invalid::new(
                    f("assign"),
                    format!("{h:?} is not a header name"),
                ));
            }
        }
    }
    Ok(())
}

fn http_header_name_invalid(h: &str) -> bool {
    !h.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use crate::{parse_toml, ProxyConfig};
    use std::path::Path;

    fn err(text: &str) -> String {
        parse_toml::<ProxyConfig>(Path::new("p.toml"), text)
            .unwrap_err()
            .to_string()
    }

    const OK: &str = r#"
[[routing.policies]]
name = "sess"
kind = "session"
key = { cookie = "sid" }

[[experiments]]
name = "e1"
functions = ["hello"]
assign = { cookie = "sid" }
arms = [
  { name = "a", policy = "least-load", weight = 50 },
  { name = "b", policy = "sess", weight = 50 },
]
"#;

    #[test]
    fn parses() {
        let c: ProxyConfig = parse_toml(Path::new("p.toml"), OK).unwrap();
        assert_eq!(c.experiments.len(), 1);
        assert_eq!(c.experiments[0].arms[1].policy, "sess");
        assert_eq!(c.experiments[0].assign, super::Assign::Cookie("sid".into()));
        let r = OK.replace("assign = { cookie = \"sid\" }", "assign = \"random\"");
        let c: ProxyConfig = parse_toml(Path::new("p.toml"), &r).unwrap();
        assert_eq!(c.experiments[0].assign, super::Assign::Random);
    }

    #[test]
    fn errors_name_fields() {
        let e = err(&OK.replace("weight = 50 },\n]", "weight = 20000 },\n]"));
        assert!(e.contains("experiments.0.arms.1.weight"), "{e}");
        let e = err(&OK.replace("policy = \"sess\"", "policy = \"nope\""));
        assert!(
            e.contains("experiments.0.arms.1.policy: unknown policy"),
            "{e}"
        );
        let e = err(&OK.replace("name = \"b\"", "name = \"a\""));
        assert!(e.contains("experiments.0.arms.1.name"), "{e}");
        let e = err(&OK.replace("functions = [\"hello\"]", "functions = []"));
        assert!(e.starts_with("p.toml:9: experiments.0.functions"), "{e}");
    }
}
