//! A function's own configuration: the optional `ol.yaml` in its directory.
//!
//! Accepts OpenLambda's form (`triggers: {http: [{method: GET}]}`) and a
//! shorter one (`methods: [GET, POST]`). Unknown keys are errors, so typos
//! do not pass silently.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Invalid;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    /// OpenLambda's trigger list; only `http` triggers exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggers: Option<Triggers>,
    /// Allowed HTTP methods (upper case). Empty with no triggers: any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Per-instance limits; each one overrides the worker's default.
    #[serde(default)]
    pub limits: FunctionLimits,
    /// Environment variables the handler sees.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    /// Network access of the function's instances: `none` (the default)
    /// or `egress` (outbound only, never to the worker, the proxy or the
    /// host's private ranges). Enforced by the Docker sandbox; see
    /// workers/DOCKER.md.
    #[serde(default, skip_serializing_if = "Network::is_none")]
    pub network: Network,
    /// Binds the function to a gRPC service defined by `.proto` files in
    /// its directory; the worker serves that service on its h2c port
    /// (workers/GRPC.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcBinding>,
    /// Makes the function's 2xx responses cacheable at the proxy
    /// (`cache: {ttl_ms: 5000, methods: [GET, POST]}`): only for functions
    /// whose result depends on nothing but the request and the code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<ResultCache>,
}

/// `cache:` in `ol.yaml`: how long the proxy keeps a result, and for which
/// methods (`GET` when not given).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultCache {
    pub ttl_ms: u64,
    #[serde(default = "default_cache_methods")]
    pub methods: Vec<String>,
}

fn default_cache_methods() -> Vec<String> {
    vec!["GET".into()]
}

impl ResultCache {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.ttl_ms == 0 || self.ttl_ms > 86_400_000 {
            return Err(Invalid::new("cache.ttl_ms", "must be 1 to 86400000"));
        }
        if self.methods.is_empty() {
            return Err(Invalid::new("cache.methods", "list GET and/or POST"));
        }
        for m in &self.methods {
            if !matches!(m.to_ascii_uppercase().as_str(), "GET" | "POST") {
                return Err(Invalid::new(
                    "cache.methods",
                    format!("{m:?}: only GET and POST results are cached"),
                ));
            }
        }
        Ok(())
    }

    /// Whether a request with this method may be answered from the cache.
    pub fn allows(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
    }
}

/// `grpc: {service: helloworld.Greeter, protos: [greeter.proto]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcBinding {
    /// The service's full name, `<package>.<Service>`.
    pub service: String,
    /// The `.proto` files that define it (and its messages), relative to
    /// the function directory; imports are resolved from there too.
    pub protos: Vec<String>,
}

impl GrpcBinding {
    pub fn validate(&self) -> Result<(), Invalid> {
        let ident = |s: &str| {
            s.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if !self.service.split('.').all(ident) {
            return Err(Invalid::new(
                "grpc.service",
                format!(
                    "{:?} is not a service name like helloworld.Greeter",
                    self.service
                ),
            ));
        }
        if self.protos.is_empty() {
            return Err(Invalid::new(
                "grpc.protos",
                "list at least one .proto file of the function directory",
            ));
        }
        for p in &self.protos {
            let plain = std::path::Path::new(p)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !plain || !p.ends_with(".proto") {
                return Err(Invalid::new(
                    "grpc.protos",
                    format!("{p:?} must be a relative path to a .proto file inside the function directory"),
                ));
            }
        }
        Ok(())
    }
}

/// What network a function's instances get.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    #[default]
    None,
    Egress,
}

impl Network {
    pub fn is_none(&self) -> bool {
        *self == Network::None
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Triggers {
    #[serde(default)]
    pub http: Vec<HttpTrigger>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTrigger {
    pub method: String,
}

/// Limits a function may set for its own instances. `None` keeps the
/// worker's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub procs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<u64>,
    /// Open files per instance (RLIMIT_NOFILE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
}

/// The largest `ol.yaml` accepted.
pub const MAX_YAML_BYTES: usize = 64 << 10;
/// The deepest nesting accepted in `ol.yaml` (blocks, `- ` items and flow
/// brackets together); the deepest real field is four levels down.
pub const MAX_YAML_DEPTH: usize = 16;

/// Refuses YAML larger than [`MAX_YAML_BYTES`] or nested deeper than
/// [`MAX_YAML_DEPTH`], without parsing it. The depth is over-estimated
/// (indentation levels, plus `- ` and `? ` indicators, plus open `[`/`{`
/// outside quotes and comments), never under-estimated.
pub fn check_yaml_shape(text: &str) -> Result<(), String> {
    if text.len() > MAX_YAML_BYTES {
        return Err(format!(
            "ol.yaml is {} bytes; the limit is {MAX_YAML_BYTES}",
            text.len()
        ));
    }
    let too_deep = |n: usize| format!("line {n}: nested more than {MAX_YAML_DEPTH} levels deep");
    let mut indents: Vec<usize> = Vec::new();
    let (mut flow, mut block) = (0usize, 0usize);
    for (n, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l)) {
        let body = line.trim_start_matches([' ', '\t']);
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let mut depth = block;
        if flow == 0 {
            let indent = line.len() - body.len();
            while indents.last().is_some_and(|&i| i >= indent) {
                indents.pop();
            }
            indents.push(indent);
            depth = indents.len();
            let mut rest = body;
            while let Some(r) = rest.strip_prefix("- ").or_else(|| rest.strip_prefix("? ")) {
                depth += 1;
                rest = r.trim_start();
            }
            block = depth;
        }
        let mut quote: Option<char> = None;
        let mut prev = ' ';
        let mut escaped = false;
        for c in body.chars() {
            match (quote, c) {
                (Some('"'), '\\') if !escaped => {
                    escaped = true;
                    prev = c;
                    continue;
                }
                (Some('"'), '"') if !escaped => quote = None,
                (Some('\''), '\'') => quote = None,
                (Some(_), _) => {}
                // A quote opens a scalar only where a scalar starts (`it's` does not).
                (None, '"' | '\'') if " \t[{,:-?".contains(prev) => quote = Some(c),
                (None, '#') if prev == ' ' || prev == '\t' => break,
                (None, '[' | '{') => {
                    flow += 1;
                    if depth + flow > MAX_YAML_DEPTH {
                        return Err(too_deep(n));
                    }
                }
                (None, ']' | '}') => flow = flow.saturating_sub(1),
                _ => {}
            }
            escaped = false;
            prev = c;
        }
        if depth + flow > MAX_YAML_DEPTH {
            return Err(too_deep(n));
        }
    }
    Ok(())
}

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

impl FunctionConfig {
    /// Parses and validates `ol.yaml` text. The error is one line, with the
    /// YAML line when the parser knows it.
    /// Untrusted text is bounded first ([`check_yaml_shape`]): the parser
    /// reads every event before the deserializer's own depth limit applies.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        check_yaml_shape(text)?;
        let cfg: FunctionConfig =
            serde_yaml::from_str(text).map_err(|e| crate::error::one_line(&e.to_string()))?;
        cfg.validate()
            .map_err(|i| format!("{}: {}", i.field, i.reason))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        for m in self.allowed_methods() {
            if !METHODS.contains(&m.as_str()) {
                return Err(Invalid::new(
                    "methods",
                    format!("unknown HTTP method {m:?}"),
                ));
            }
        }
        let l = &self.limits;
        for (field, v) in [
            ("limits.memory_mb", l.memory_mb),
            ("limits.procs", l.procs),
            ("limits.runtime_ms", l.runtime_ms),
            ("limits.cpu_percent", l.cpu_percent),
            ("limits.open_files", l.open_files),
        ] {
            if v == Some(0) {
                return Err(Invalid::new(field, "must be greater than 0"));
            }
        }
        if let Some(g) = &self.grpc {
            g.validate()?;
        }
        if let Some(c) = &self.cache {
            c.validate()?;
        }
        for k in self.environment.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(Invalid::new(
                    "environment",
                    format!("bad variable name {k:?}"),
                ));
            }
        }
        Ok(())
    }

    /// The allowed methods, upper-cased, from `methods` and `triggers.http`.
    /// Empty means every method is allowed.
    pub fn allowed_methods(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .methods
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        if let Some(t) = &self.triggers {
            out.extend(t.http.iter().map(|h| h.method.to_ascii_uppercase()));
        }
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_method_forms() {
        let c =
            FunctionConfig::from_yaml("triggers:\n  http:\n    - method: get\nmethods: [POST]\n")
                .unwrap();
        assert_eq!(c.allowed_methods(), vec!["GET", "POST"]);
        assert!(FunctionConfig::from_yaml("")
            .unwrap()
            .allowed_methods()
            .is_empty());
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        let e = FunctionConfig::from_yaml("method: [GET]\n").unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        let e = FunctionConfig::from_yaml("methods: [FETCH]\n").unwrap_err();
        assert!(e.contains("FETCH"), "{e}");
        let e = FunctionConfig::from_yaml("limits:\n  memory_mb: 0\n").unwrap_err();
        assert!(e.contains("limits.memory_mb"), "{e}");
        let e = FunctionConfig::from_yaml("network: everywhere\n").unwrap_err();
        assert!(e.contains("network"), "{e}");
    }

    #[test]
    fn grpc_binding_is_checked() {
        let c = FunctionConfig::from_yaml(
            "grpc:\n  service: helloworld.Greeter\n  protos: [greeter.proto]\n",
        )
        .unwrap();
        let g = c.grpc.unwrap();
        assert_eq!(g.service, "helloworld.Greeter");
        assert_eq!(g.protos, vec!["greeter.proto"]);
        for (yaml, field) in [
            ("grpc: {service: 'a b', protos: [x.proto]}", "grpc.service"),
            ("grpc: {service: a.B, protos: []}", "grpc.protos"),
            ("grpc: {service: a.B, protos: [../x.proto]}", "grpc.protos"),
            (
                "grpc: {service: a.B, protos: [/etc/x.proto]}",
                "grpc.protos",
            ),
            ("grpc: {service: a.B, protos: [x.txt]}", "grpc.protos"),
        ] {
            let e = FunctionConfig::from_yaml(yaml).unwrap_err();
            assert!(e.contains(field), "{yaml}: {e}");
        }
        let e = FunctionConfig::from_yaml("grpc: {service: a.B}").unwrap_err();
        assert!(e.contains("protos"), "{e}");
    }

    #[test]
    fn cache_section_is_checked() {
        let c = FunctionConfig::from_yaml("cache: {ttl_ms: 500, methods: [get, POST]}\n").unwrap();
        let r = c.cache.unwrap();
        assert!(r.allows("GET") && r.allows("post") && !r.allows("PUT"));
        let c = FunctionConfig::from_yaml("cache: {ttl_ms: 500}\n").unwrap();
        assert_eq!(c.cache.unwrap().methods, vec!["GET"]);
        for (yaml, field) in [
            ("cache: {ttl_ms: 0}", "cache.ttl_ms"),
            ("cache: {ttl_ms: 5, methods: [PUT]}", "cache.methods"),
            ("cache: {ttl_ms: 5, methods: []}", "cache.methods"),
            ("cache: {ttl: 5}", "unknown field"),
        ] {
            let e = FunctionConfig::from_yaml(yaml).unwrap_err();
            assert!(e.contains(field), "{yaml}: {e}");
        }
    }

    #[test]
    fn network_defaults_to_none() {
        assert_eq!(
            FunctionConfig::from_yaml("").unwrap().network,
            Network::None
        );
        let c = FunctionConfig::from_yaml("network: egress\n").unwrap();
        assert_eq!(c.network, Network::Egress);
    }

    #[test]
    fn untrusted_yaml_is_bounded_before_parsing() {
        let started = std::time::Instant::now();
        for deep in [
            "[".repeat(60_000),
            "{a: ".repeat(15_000),
            "- ".repeat(30_000) + "x",
            format!("environment:\n  A: {}", "[".repeat(40)),
            (0..40)
                .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
                .collect(),
        ] {
            let e = FunctionConfig::from_yaml(&deep).unwrap_err();
            assert!(e.contains("nested more than 16 levels"), "{e}");
        }
        // Quotes that do not open a scalar, or are escaped, hide nothing.
        for hidden in [
            format!("methods: [it's, {}x{}]", "[".repeat(20), "]".repeat(20)),
            format!(
                "environment: {{A: \"\\\\\", B: {}x{}}}",
                "[".repeat(20),
                "]".repeat(20)
            ),
        ] {
            let e = FunctionConfig::from_yaml(&hidden).unwrap_err();
            assert!(e.contains("nested more than 16 levels"), "{hidden}: {e}");
        }
        let e = FunctionConfig::from_yaml(&format!("# {}\n", "x".repeat(70_000))).unwrap_err();
        assert!(e.contains("the limit is 65536"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        // Real files pass, brackets in quotes and comments do not count.
        let ok = "triggers:\n  http:\n    - method: POST  # [[[[[[[[[[[[[[[[[[[[\nenvironment:\n  A: \"[[[[[[[[[[[[[[[[[[[[[[\"\n  B: '{{{{{{{{{{{{{{{{{{{{{{{{'\nmethods: [GET, POST]\n";
        FunctionConfig::from_yaml(ok).unwrap();
    }
}
