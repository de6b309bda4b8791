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
}

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

impl FunctionConfig {
    /// Parses and validates `ol.yaml` text. The error is one line, with the
    /// YAML line when the parser knows it.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
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
        ] {
            if v == Some(0) {
                return Err(Invalid::new(field, "must be greater than 0"));
            }
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
    }
}
