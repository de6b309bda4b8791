//! Function packages, shared by `ol-worker` and `ol-proxy` (which never
//! depend on each other): one implementation of the rules for what a
//! package may hold, of its version, and of the directory code store, so
//! that both sides check uploads the same way and agree on versions.
//!
//! - [`api`]: the `/registry` API's requests and messages, read the same
//!   way by the worker's and the proxy's fronts.
//! - [`archive`]: pack a directory as `.tar.gz`; unpack or inspect an
//!   untrusted one without letting anything escape the function directory.
//! - [`client`]: the code store as worker and proxy use it, a directory or
//!   an http(s) URL: fetch (bounded), list, upload, delete.
//! - [`dir`]: a directory store of `<name>/` directories and `<name>.tar.gz`
//!   files (a tarball wins over a directory of the same name).
//! - [`version`]: a package's version, the first 16 hex digits of its SHA-256.
//! - [`requirement_lines`]: the lines of a `requirements.txt` that say
//!   something, read the same way by the worker (which installs pins) and
//!   the proxy (which routes by package names); [`parse_requirements`],
//!   the pins the worker installs.
//! - [`check_metadata`]: the checks of an upload beyond its archive's, the
//!   same on both sides.

pub mod api;
pub mod archive;
pub mod client;
pub mod dir;
mod requirements;

use std::collections::HashMap;

use config::FunctionConfig;
use sha2::{Digest, Sha256};

pub use requirements::{parse_requirements, Pin};

/// The top-level files an upload's checks read (`archive::inspect`).
pub const METADATA_FILES: [&str; 2] = ["ol.yaml", "requirements.txt"];

/// The checks of an upload beyond its archive's, given the texts of its
/// [`METADATA_FILES`]: a valid `ol.yaml` and a `requirements.txt` of pins
/// only. The worker's and the proxy's upload endpoints both use it, so a
/// package that would fail every call is refused at upload (400) instead.
pub fn check_metadata(files: &HashMap<String, String>) -> Result<FunctionConfig, String> {
    let config = match files.get("ol.yaml") {
        Some(y) => FunctionConfig::from_yaml(y).map_err(|e| format!("ol.yaml: {e}"))?,
        None => FunctionConfig::default(),
    };
    if let Some(text) = files.get("requirements.txt") {
        parse_requirements(text)?;
    }
    Ok(config)
}

/// The version of a package: the first 16 hex digits of its SHA-256.
pub fn version(package: &[u8]) -> String {
    Sha256::digest(package)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The lines of a `requirements.txt` that say something, with their 1-based
/// line numbers: comments (`# ...`, also after a requirement) and blank
/// lines are dropped, the rest is trimmed.
pub fn requirement_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(i, raw)| {
        let line = raw.split('#').next().unwrap_or("").trim();
        (!line.is_empty()).then_some((i + 1, line))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn requirement_lines_drop_comments_and_blanks() {
        let lines: Vec<_> =
            super::requirement_lines("# deps\nsix==1.16.0  # why\n\n  -r x.txt\n").collect();
        assert_eq!(lines, vec![(2, "six==1.16.0"), (4, "-r x.txt")]);
    }

    #[test]
    fn version_is_a_stable_content_hash() {
        assert_eq!(super::version(b""), "e3b0c44298fc1c14");
        assert_ne!(super::version(b"a"), super::version(b"b"));
    }
}
