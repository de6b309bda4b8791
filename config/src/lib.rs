//! Typed configuration for ol-edge (serde): the worker's and proxy's TOML
//! files and each function's `ol.yaml`, with defaults, validation and
//! errors that say `file:line: field: reason`.
//!
//! Everything here is plain data: no I/O beyond reading the file asked for.

mod error;
pub mod experiment;
pub mod function;
mod locate;
mod name;
pub mod policy;
pub mod proxy;
pub mod wire;
pub mod worker;

use std::path::Path;

use serde::de::DeserializeOwned;

pub use error::{one_line, ConfigError, Invalid};
pub use experiment::{ArmConfig, Assign, ExperimentConfig};
pub use function::FunctionConfig;
pub use locate::toml_key_line;
pub use name::{validate_function_name, MAX_NAME_LEN};

/// Whether an `Authorization` header value is `Bearer <token>`, compared
/// without an early exit on the bytes (timing does not leak the token).
/// Never true for an empty token. The proxy's admin and code store and the
/// worker's registry all check their tokens with it.
pub fn bearer_matches(authorization: Option<&[u8]>, token: &str) -> bool {
    let Some(given) = authorization.and_then(|v| v.strip_prefix(b"Bearer ")) else {
        return false;
    };
    let t = token.as_bytes();
    !t.is_empty()
        && given.len() == t.len()
        && given.iter().zip(t).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
pub use policy::{KeySource, LocalityKey, PolicyConfig, PolicyKind, RouteConfig, RoutingConfig};
pub use proxy::ProxyConfig;
pub use worker::WorkerConfig;

/// A config type that can check itself after parsing.
pub trait Validate {
    fn validate(&self) -> Result<(), Invalid>;
}

impl Validate for WorkerConfig {
    fn validate(&self) -> Result<(), Invalid> {
        WorkerConfig::validate(self)
    }
}

impl Validate for ProxyConfig {
    fn validate(&self) -> Result<(), Invalid> {
        ProxyConfig::validate(self)
    }
}

impl Validate for RoutingConfig {
    fn validate(&self) -> Result<(), Invalid> {
        RoutingConfig::validate(self)
    }
}

/// Reads, parses and validates a TOML config file.
pub fn load_toml<T: DeserializeOwned + Validate>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path, format!("cannot read: {e}")))?;
    parse_toml(path, &text)
}

/// Parses and validates TOML text; `path` only names it in errors.
pub fn parse_toml<T: DeserializeOwned + Validate>(
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    let value: T = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
    value
        .validate()
        .map_err(|i| ConfigError::field(path, text, &i.field, i.reason))?;
    Ok(value)
}

fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    ConfigError {
        file: path.to_path_buf(),
        line,
        field: None,
        reason: error::one_line(e.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_worker_config_is_the_default() {
        let c: WorkerConfig = parse_toml(Path::new("w.toml"), "").unwrap();
        assert_eq!(c, WorkerConfig::default());
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let text = "listen = \"127.0.0.1:1\"\n[instances]\nmax_per_function = 0\n";
        let e = parse_toml::<WorkerConfig>(Path::new("w.toml"), text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "w.toml:3: instances.max_per_function: must be greater than 0"
        );
        let e = parse_toml::<WorkerConfig>(Path::new("w.toml"), "\n\nlisten = 5\n").unwrap_err();
        assert!(e.to_string().starts_with("w.toml:3: "), "{e}");
        let e = parse_toml::<WorkerConfig>(Path::new("w.toml"), "[limits]\nmemroy_mb = 5\n")
            .unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}

#[cfg(test)]
mod example_files {
    use super::*;

    #[test]
    fn worker_example_parses_to_the_defaults() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/worker.example.toml"));
        let c: WorkerConfig = load_toml(path).unwrap();
        assert_eq!(c, WorkerConfig::default());
    }
}
