//! The routing section of the proxy's config: named policies, routes from
//! function names to policies, and a default policy (TOML, serde).
//!
//! This is only the schema and its validation; the `policies` crate builds
//! the runnable policy set from it. It lives here so that the proxy's config
//! file can embed it and report errors as `file:line: field: reason`.
//!
//! ```toml
//! default_policy = "ll"          # top-level keys come before any [[table]]
//!
//! [[policies]]
//! name = "affinity"
//! kind = "chain"
//! chain = ["sess", "locality", "ll"]
//!
//! [[policies]]
//! name = "sess"
//! kind = "session"
//! key = { cookie = "sid" }
//!
//! [[policies]]
//! name = "locality"
//! kind = "code-locality"
//! load_factor = 0.25             # e: a worker is skipped above (1+e) x average
//! over = "package"               # hash the largest package when known
//!
//! [[policies]]
//! name = "ll"
//! kind = "least-load"
//!
//! [[routes]]
//! functions = ["hello", "img-*"] # exact names or globs (* and ?)
//! policy = "affinity"
//! ```
//!
//! A policy reference (`default_policy`, `routes.N.policy`, `chain` entries)
//! names a policy of `[[policies]]` or, failing that, a built-in kind that
//! needs no parameters (`round-robin`, `random`, `least-load`,
//! `code-locality`, `consistent-hash`, `openwhisk`), used with its defaults.
//! An empty config routes everything with `least-load`.

use serde::{Deserialize, Serialize};

use crate::Invalid;

/// Default `e` of bounded-load consistent hashing.
pub const DEFAULT_LOAD_FACTOR: f64 = 0.25;
/// Default points per worker on a hash ring.
pub const DEFAULT_VNODES: u32 = 64;
/// Default per-worker slots of the `openwhisk` policy.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 16;
/// Longest chain accepted.
pub const MAX_CHAIN: usize = 8;

/// Routing: which policy picks the worker for which function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// Named, parameterised policies.
    pub policies: Vec<PolicyConfig>,
    /// Checked in order: the first route with a matching pattern wins
    /// (exact names are looked up first).
    pub routes: Vec<RouteConfig>,
    /// The policy for functions that no route matches.
    pub default_policy: String,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            policies: Vec::new(),
            routes: Vec::new(),
            default_policy: "least-load".into(),
        }
    }
}

/// One named policy. Fields other than `name` and `kind` are parameters;
/// a parameter that the kind does not use is an error (so typos show).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Referenced by routes, chains, `default_policy`; shown in `x-ol-policy`.
    pub name: String,
    /// Which built-in policy.
    pub kind: PolicyKind,
    /// `e` for bounded loads (code-locality, session, db-affinity): a worker
    /// is skipped while its in-flight count would exceed
    /// ceil((1+e) x average). Default 0.25.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_factor: Option<f64>,
    /// code-locality: hash the function name or its largest package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub over: Option<LocalityKey>,
    /// session, db-affinity: where the proxy finds the key (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeySource>,
    /// chain: policies tried in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
    /// Ring kinds (code-locality, session, db-affinity, consistent-hash):
    /// points per worker. Default 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnodes: Option<u32>,
    /// openwhisk: in-flight requests a worker takes before the next probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
}

/// The built-in policy kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    /// The next healthy worker (baseline).
    RoundRobin,
    /// A uniformly random healthy worker (baseline).
    Random,
    /// Power of two choices over in-flight counts.
    LeastLoad,
    /// Bounded-load consistent hashing of the function or its largest package.
    CodeLocality,
    /// Bounded-load consistent hashing of a session key.
    Session,
    /// Bounded-load consistent hashing of a DB / shard key.
    DbAffinity,
    /// Members tried in order.
    Chain,
    /// Plain consistent hashing of the function name, no load bound (baseline).
    ConsistentHash,
    /// OpenWhisk's home invoker with co-prime step probing (baseline).
    Openwhisk,
}

impl PolicyKind {
    /// Every kind, in documentation order.
    pub const ALL: [PolicyKind; 9] = [
        PolicyKind::RoundRobin,
        PolicyKind::Random,
        PolicyKind::LeastLoad,
        PolicyKind::CodeLocality,
        PolicyKind::Session,
        PolicyKind::DbAffinity,
        PolicyKind::Chain,
        PolicyKind::ConsistentHash,
        PolicyKind::Openwhisk,
    ];

    /// The name used in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::RoundRobin => "round-robin",
            PolicyKind::Random => "random",
            PolicyKind::LeastLoad => "least-load",
            PolicyKind::CodeLocality => "code-locality",
            PolicyKind::Session => "session",
            PolicyKind::DbAffinity => "db-affinity",
            PolicyKind::Chain => "chain",
            PolicyKind::ConsistentHash => "consistent-hash",
            PolicyKind::Openwhisk => "openwhisk",
        }
    }

    /// The kind a bare reference names when no `[[policies]]` entry has that
    /// name: only kinds that need no parameters.
    pub fn builtin(name: &str) -> Option<PolicyKind> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == name && k.usable_with_defaults())
    }

    fn usable_with_defaults(self) -> bool {
        !matches!(
            self,
            PolicyKind::Session | PolicyKind::DbAffinity | PolicyKind::Chain
        )
    }

    fn uses_load_factor(self) -> bool {
        matches!(
            self,
            PolicyKind::CodeLocality | PolicyKind::Session | PolicyKind::DbAffinity
        )
    }

    fn uses_ring(self) -> bool {
        self.uses_load_factor() || self == PolicyKind::ConsistentHash
    }
}

/// What code-locality hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LocalityKey {
    /// The function name.
    #[default]
    Function,
    /// The function's largest (most expensive to import) package when its
    /// package set is known, else the function name (PASch-style).
    Package,
}

/// Where the proxy extracts a session or DB key from. The policy only sees
/// the extracted string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum KeySource {
    /// `key = { cookie = "sid" }`
    Cookie(String),
    /// `key = { header = "x-db" }` (case-insensitive)
    Header(String),
    /// `key = { query = "shard" }`
    Query(String),
    /// `key = { json = "user.id" }`: a dotted path into a JSON object body.
    Json(String),
    /// `key = { protobuf = "1.3" }`: a field of a gRPC request message,
    /// either by dotted field numbers (field 1, then its field 3) or by
    /// name: the message's full name, then field names
    /// (`"helloworld.HelloRequest.name"`), resolved with the descriptors
    /// the workers serve.
    Protobuf(String),
}

/// Functions to route with one policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Exact names or globs: `*` any run of characters, `?` one character.
    pub functions: Vec<String>,
    /// A policy name (or a built-in kind that needs no parameters).
    pub policy: String,
}

impl PolicyConfig {
    /// A policy of `kind` with every parameter at its default.
    pub fn new(name: impl Into<String>, kind: PolicyKind) -> Self {
        PolicyConfig {
            name: name.into(),
            kind,
            load_factor: None,
            over: None,
            key: None,
            chain: Vec::new(),
            vnodes: None,
            max_in_flight: None,
        }
    }

    /// `load_factor` or its default.
    pub fn load_factor(&self) -> f64 {
        self.load_factor.unwrap_or(DEFAULT_LOAD_FACTOR)
    }

    /// `vnodes` or its default.
    pub fn vnodes(&self) -> u32 {
        self.vnodes.unwrap_or(DEFAULT_VNODES)
    }

    /// `max_in_flight` or its default.
    pub fn max_in_flight(&self) -> u32 {
        self.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT)
    }

    /// `over` or its default.
    pub fn over(&self) -> LocalityKey {
        self.over.unwrap_or_default()
    }
}

/// What a policy reference resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyRef {
    /// Index into `RoutingConfig::policies`.
    Defined(usize),
    /// A built-in kind with default parameters.
    Builtin(PolicyKind),
}

impl RoutingConfig {
    /// Resolves a policy reference: a defined name first, then a built-in.
    pub fn resolve(&self, name: &str) -> Option<PolicyRef> {
        self.policies
            .iter()
            .position(|p| p.name == name)
            .map(PolicyRef::Defined)
            .or_else(|| PolicyKind::builtin(name).map(PolicyRef::Builtin))
    }

    /// Checks names, parameters, references and patterns. Field paths are
    /// relative to this table (e.g. `policies.1.load_factor`); an embedding
    /// config prefixes them with [`RoutingConfig::validate_at`].
    pub fn validate(&self) -> Result<(), Invalid> {
        for (i, p) in self.policies.iter().enumerate() {
            self.validate_policy(i, p)?;
        }
        for (i, r) in self.routes.iter().enumerate() {
            if r.functions.is_empty() {
                return Err(Invalid::new(
                    format!("routes.{i}.functions"),
                    "must list at least one function name or glob",
                ));
            }
            for (j, f) in r.functions.iter().enumerate() {
                validate_pattern(f)
                    .map_err(|e| Invalid::new(format!("routes.{i}.functions.{j}"), e))?;
            }
            self.check_ref(&format!("routes.{i}.policy"), &r.policy)?;
        }
        self.check_ref("default_policy", &self.default_policy)
    }

    /// [`validate`](Self::validate) with every field path prefixed by
    /// `prefix.` (e.g. `routing`), for a config that embeds this table.
    pub fn validate_at(&self, prefix: &str) -> Result<(), Invalid> {
        self.validate().map_err(|e| {
            if prefix.is_empty() {
                e
            } else {
                Invalid::new(format!("{prefix}.{}", e.field), e.reason)
            }
        })
    }

    fn check_ref(&self, field: &str, name: &str) -> Result<(), Invalid> {
        if self.resolve(name).is_some() {
            return Ok(());
        }
        let reason = match PolicyKind::ALL.iter().find(|k| k.as_str() == name) {
            Some(k) => format!(
                "{name:?} is a kind that needs parameters: define it in [[policies]] with kind = \"{}\"",
                k.as_str()
            ),
            None => format!(
                "unknown policy {name:?}: name one of [[policies]] or a built-in (round-robin, random, least-load, code-locality, consistent-hash, openwhisk)"
            ),
        };
        Err(Invalid::new(field, reason))
    }

    fn validate_policy(&self, i: usize, p: &PolicyConfig) -> Result<(), Invalid> {
        let f = |name: &str| format!("policies.{i}.{name}");
        if p.name.is_empty() {
            return Err(Invalid::new(f("name"), "must not be empty"));
        }
        if p.name.len() > 64
            || !p
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(Invalid::new(
                f("name"),
                format!(
                    "{:?}: names are 1 to 64 of A-Z a-z 0-9 - _ .",
                    p.name.chars().take(64).collect::<String>()
                ),
            ));
        }
        if let Some(j) = self.policies[..i].iter().position(|q| q.name == p.name) {
            return Err(Invalid::new(
                f("name"),
                format!("{:?} is already the name of policies.{j}", p.name),
            ));
        }
        let kind = p.kind;
        let unused = |field: &str| {
            Err(Invalid::new(
                f(field),
                format!("not a parameter of kind {}", kind.as_str()),
            ))
        };
        match p.load_factor {
            Some(_) if !kind.uses_load_factor() => return unused("load_factor"),
            Some(e) if !(e.is_finite() && e > 0.0 && e <= 100.0) => {
                return Err(Invalid::new(
                    f("load_factor"),
                    format!("{e} is out of range: must be > 0 and <= 100 (e.g. 0.25)"),
                ));
            }
            _ => {}
        }
        if p.over.is_some() && kind != PolicyKind::CodeLocality {
            return unused("over");
        }
        match p.vnodes {
            Some(_) if !kind.uses_ring() => return unused("vnodes"),
            Some(v) if !(1..=1024).contains(&v) => {
                return Err(Invalid::new(
                    f("vnodes"),
                    format!("{v} is out of range: must be 1 to 1024"),
                ));
            }
            _ => {}
        }
        match p.max_in_flight {
            Some(_) if kind != PolicyKind::Openwhisk => return unused("max_in_flight"),
            Some(0) => return Err(Invalid::new(f("max_in_flight"), "must be greater than 0")),
            _ => {}
        }
        match (&p.key, kind) {
            (Some(k), PolicyKind::Session | PolicyKind::DbAffinity) => {
                validate_key(k).map_err(|e| Invalid::new(f("key"), e))?
            }
            (None, PolicyKind::Session | PolicyKind::DbAffinity) => {
                return Err(Invalid::new(
                    f("key"),
                    format!(
                        "kind {} needs a key source, e.g. key = {{ cookie = \"sid\" }} or key = {{ header = \"x-db\" }}",
                        kind.as_str()
                    ),
                ));
            }
            (Some(_), _) => return unused("key"),
            (None, _) => {}
        }
        if kind == PolicyKind::Chain {
            if p.chain.is_empty() {
                return Err(Invalid::new(
                    f("chain"),
                    "a chain needs at least one policy",
                ));
            }
            if p.chain.len() > MAX_CHAIN {
                return Err(Invalid::new(
                    f("chain"),
                    format!("{} policies: the limit is {MAX_CHAIN}", p.chain.len()),
                ));
            }
            for (j, name) in p.chain.iter().enumerate() {
                let field = format!("policies.{i}.chain.{j}");
                self.check_ref(&field, name)?;
                if let Some(PolicyRef::Defined(k)) = self.resolve(name) {
                    if self.policies[k].kind == PolicyKind::Chain {
                        return Err(Invalid::new(
                            field,
                            format!("{name:?} is a chain: chains do not nest"),
                        ));
                    }
                }
            }
        } else if !p.chain.is_empty() {
            return unused("chain");
        }
        Ok(())
    }
}

fn validate_key(k: &KeySource) -> Result<(), String> {
    let (what, s) = match k {
        KeySource::Cookie(s) => ("cookie", s),
        KeySource::Header(s) => ("header", s),
        KeySource::Query(s) => ("query", s),
        KeySource::Json(s) => ("json", s),
        KeySource::Protobuf(s) => ("protobuf", s),
    };
    if s.is_empty() {
        return Err(format!("{what} name must not be empty"));
    }
    let token = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    match k {
        KeySource::Cookie(_) | KeySource::Header(_) if !token(s) => Err(format!(
            "{what} {s:?} is not a valid {what} name (token characters only)"
        )),
        KeySource::Json(_) if s.split('.').any(str::is_empty) => Err(format!(
            "json path {s:?} has an empty segment: use dotted keys like user.id"
        )),
        KeySource::Protobuf(_) if !protobuf_numbers(s) && !protobuf_names(s) => Err(format!(
            "protobuf path {s:?} must be dotted field numbers (1 to 536870911), e.g. \"1.3\", \
             or a message's full name then field names, e.g. \"helloworld.HelloRequest.name\""
        )),
        _ => Ok(()),
    }
}

/// `"1.3"`: every segment a protobuf field number.
pub fn protobuf_numbers(path: &str) -> bool {
    path.split('.')
        .all(|n| matches!(n.parse::<u32>(), Ok(1..=536_870_911)))
}

/// `"pkg.Message.field"`: at least a message and a field, every segment a
/// protobuf identifier.
fn protobuf_names(path: &str) -> bool {
    path.split('.').count() >= 2
        && path.split('.').all(|n| {
            n.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
}

/// A route pattern: a function name (`^[A-Za-z0-9._-]+$`) in which `*` and
/// `?` may also appear as globs.
pub fn validate_pattern(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("pattern is empty".into());
    }
    if p.len() > crate::MAX_NAME_LEN {
        return Err(format!(
            "pattern is {} bytes long; the limit is {}",
            p.len(),
            crate::MAX_NAME_LEN
        ));
    }
    if let Some(c) = p
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*' | '?')))
    {
        return Err(format!(
            "pattern {p:?} contains {c:?}: use name characters A-Z a-z 0-9 . _ - and globs * ?"
        ));
    }
    Ok(())
}

/// Whether a pattern contains glob characters.
pub fn is_glob(p: &str) -> bool {
    p.contains(['*', '?'])
}

/// The function-name glob of routes (and of the proxy's experiments and
/// the worker's `egress.functions`): `*`
/// matches any run (also empty), `?` one byte. Iterative with one backtrack
/// point: O(pattern x name) worst case, no allocation.
pub fn glob_match(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_toml;
    use std::path::Path;

    fn err(text: &str) -> String {
        parse_toml::<RoutingConfig>(Path::new("p.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn empty_means_least_load_for_everything() {
        let c: RoutingConfig = parse_toml(Path::new("p.toml"), "").unwrap();
        assert_eq!(c, RoutingConfig::default());
        assert_eq!(
            c.resolve(&c.default_policy),
            Some(PolicyRef::Builtin(PolicyKind::LeastLoad))
        );
    }

    #[test]
    fn full_example_parses() {
        let text = r#"
default_policy = "ll"
[[policies]]
name = "affinity"
kind = "chain"
chain = ["sess", "locality", "ll"]
[[policies]]
name = "sess"
kind = "session"
key = { cookie = "sid" }
[[policies]]
name = "db"
kind = "db-affinity"
key = { json = "user.id" }
load_factor = 0.5
[[policies]]
name = "locality"
kind = "code-locality"
load_factor = 0.25
over = "package"
[[policies]]
name = "ll"
kind = "least-load"
[[routes]]
functions = ["hello", "img-*"]
policy = "affinity"
"#;
        let c: RoutingConfig = parse_toml(Path::new("p.toml"), text).unwrap();
        assert_eq!(c.policies.len(), 5);
        assert_eq!(c.policies[1].key, Some(KeySource::Cookie("sid".into())));
        assert_eq!(c.policies[2].key, Some(KeySource::Json("user.id".into())));
        assert_eq!(c.policies[3].over(), LocalityKey::Package);
        assert_eq!(c.policies[4].load_factor(), DEFAULT_LOAD_FACTOR);
        assert_eq!(c.resolve("affinity"), Some(PolicyRef::Defined(0)));
    }

    #[test]
    fn errors_name_the_field_and_line() {
        let text = "[[policies]]\nname = \"a\"\nkind = \"random\"\n[[policies]]\nname = \"b\"\nkind = \"code-locality\"\nload_factor = -1.0\n";
        assert_eq!(
            err(text),
            "p.toml:7: policies.1.load_factor: -1 is out of range: must be > 0 and <= 100 (e.g. 0.25)"
        );
        let text = "[[policies]]\nname = \"a\"\nkind = \"random\"\nload_factor = 0.5\n";
        assert_eq!(
            err(text),
            "p.toml:4: policies.0.load_factor: not a parameter of kind random"
        );
        let text = "[[policies]]\nname = \"s\"\nkind = \"session\"\n";
        assert!(
            err(text).starts_with("p.toml:1: policies.0.key: kind session needs a key source"),
            "{}",
            err(text)
        );
        let text =
            "[[policies]]\nname = \"c\"\nkind = \"chain\"\nchain = [\"least-load\", \"nope\"]\n";
        assert!(
            err(text).starts_with("p.toml:4: policies.0.chain.1: unknown policy \"nope\""),
            "{}",
            err(text)
        );
        let text = "default_policy = \"session\"\n";
        assert!(
            err(text).starts_with("p.toml:1: default_policy: \"session\" is a kind that needs"),
            "{}",
            err(text)
        );
        let text = "[[routes]]\nfunctions = [\"ok\", \"bad/name\"]\npolicy = \"random\"\n";
        assert!(
            err(text).starts_with("p.toml:2: routes.0.functions.1: pattern \"bad/name\""),
            "{}",
            err(text)
        );
        let text = "[[policies]]\nname = \"a\"\nkind = \"random\"\n[[policies]]\nname = \"a\"\nkind = \"random\"\n";
        assert!(err(text).contains("policies.1.name: \"a\" is already"));
        let text = "[[policies]]\nname = \"a\"\nkind = \"random\"\nlaod_factor = 1\n";
        assert!(err(text).contains("unknown field"), "{}", err(text));
        let text =
            "[[policies]]\nname = \"d\"\nkind = \"db-affinity\"\nkey = { protobuf = \"1.x\" }\n";
        assert!(err(text).contains("policies.0.key: protobuf path"));
        for bad in ["name", "helloworld.1", "a..b", "a.b-c", "0"] {
            let text = format!(
                "[[policies]]\nname = \"d\"\nkind = \"db-affinity\"\nkey = {{ protobuf = \"{bad}\" }}\n"
            );
            assert!(
                err(&text).contains("policies.0.key: protobuf path"),
                "{bad}"
            );
        }
        for good in ["1", "2.1", "helloworld.HelloRequest.name", "a.M.sub_msg.f2"] {
            let text = format!(
                "[[policies]]\nname = \"d\"\nkind = \"db-affinity\"\nkey = {{ protobuf = \"{good}\" }}\n"
            );
            assert!(
                parse_toml::<RoutingConfig>(Path::new("p.toml"), &text).is_ok(),
                "{good}"
            );
        }
        let text = "[[policies]]\nname = \"d\"\nkind = \"db-affinity\"\nkey = { smoke = \"x\" }\n";
        assert!(err(text).starts_with("p.toml:4"), "{}", err(text));
        let text = "[[policies]]\nname = \"c1\"\nkind = \"chain\"\nchain = [\"random\"]\n[[policies]]\nname = \"c2\"\nkind = \"chain\"\nchain = [\"c1\"]\n";
        assert!(err(text).contains("policies.1.chain.0: \"c1\" is a chain"));
    }

    #[test]
    fn validate_at_prefixes_fields() {
        let c = RoutingConfig {
            default_policy: "x".into(),
            ..Default::default()
        };
        assert_eq!(
            c.validate_at("routing").unwrap_err().field,
            "routing.default_policy"
        );
    }
}
