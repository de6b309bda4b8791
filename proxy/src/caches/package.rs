//! One version of one function as the proxy knows it ([`FnPackage`]):
//! what it reads from a package (its `ol.yaml`, pinned requirements and
//! the imports of `f.py`) and the routing package set it derives from them.
//! Pure: bytes in, a description out; the upload check is the workers'
//! (`codestore::archive`, `codestore::check_metadata`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use config::FunctionConfig;

/// Most package names (requirements plus imports) kept per function.
pub const MAX_PACKAGES: usize = 8;

/// One version of one function, with what the proxy learned from it.
#[derive(Debug)]
pub struct FnPackage {
    /// First 16 hex digits of the package's SHA-256.
    pub version: String,
    /// The `.tar.gz` bytes, as served to workers.
    pub bytes: Bytes,
    /// Its `ol.yaml` (default when absent or invalid).
    pub config: FunctionConfig,
    /// `config` as JSON (`GET /registry/<name>/config`).
    pub config_json: Bytes,
    /// Pinned requirement lines of `requirements.txt` (`name==1.2`).
    pub requirements: Vec<String>,
    /// Top-level modules `f.py` imports (`import x`, `from x import y`).
    pub imports: Vec<String>,
    /// The package set for routing: third-party imports and requirement
    /// names (lower case), heaviest first, with a relative import cost.
    pub packages: Vec<(String, u32)>,
    /// When the proxy first saw this version replace another one (None:
    /// the first version it knew). Workers may still run the old code for
    /// their `registry_cache_ms` after a change.
    pub changed_at: Option<Instant>,
}

impl FnPackage {
    pub(super) fn weight(&self) -> u32 {
        let meta: usize = self
            .requirements
            .iter()
            .chain(&self.imports)
            .map(|s| s.len() + 24)
            .sum();
        (self.bytes.len() + self.config_json.len() + meta + 256).min(u32::MAX as usize) as u32
    }

    /// Whether results of this version may be cached now: not while workers
    /// may still run the version it replaced.
    pub fn settled(&self, settle: Duration) -> bool {
        self.changed_at.is_none_or(|t| t.elapsed() >= settle)
    }
}

/// Files whose text the proxy reads from a package (at most 1 MiB each).
const META_FILES: [&str; 3] = ["ol.yaml", "requirements.txt", "f.py"];

/// Checks an upload with the same rules as the workers' registry
/// (`codestore::archive`: gzip, entries that stay inside the function
/// directory, at most `max_unpacked` bytes, an `f.py`), plus
/// `codestore::check_metadata` (a valid `ol.yaml`, pinned requirements).
pub fn check_package(bytes: &[u8], max_unpacked: u64) -> Result<(), String> {
    let files = read_package(bytes, max_unpacked)?;
    codestore::check_metadata(&files).map(drop)
}

/// The text of the top-level [`META_FILES`] of a checked package.
fn read_package(bytes: &[u8], max_unpacked: u64) -> Result<HashMap<String, String>, String> {
    codestore::archive::inspect(bytes, max_unpacked, &META_FILES).map_err(|e| e.to_string())
}

/// Reads a package's version and metadata. A package that does not read
/// is still served (the workers report why it cannot run); it just has no
/// metadata.
pub fn describe(bytes: Bytes) -> FnPackage {
    let version = codestore::version(&bytes);
    let files = read_package(&bytes, 1 << 30).unwrap_or_default();
    // An invalid ol.yaml reads as the default; the workers say why.
    let config = files
        .get("ol.yaml")
        .and_then(|y| FunctionConfig::from_yaml(y).ok())
        .unwrap_or_default();
    let config_json = serde_json::to_vec(&config).unwrap_or_default().into();
    let requirements = files
        .get("requirements.txt")
        .map(|t| requirement_lines(t))
        .unwrap_or_default();
    let imports = files
        .get("f.py")
        .map(|t| top_imports(t))
        .unwrap_or_default();
    let packages = package_set(&requirements, &imports);
    FnPackage {
        version,
        bytes,
        config,
        config_json,
        requirements,
        imports,
        packages,
        changed_at: None,
    }
}

/// Requirement lines, without comments, options (`-r`, `--index-url`) and blanks.
pub fn requirement_lines(text: &str) -> Vec<String> {
    codestore::requirement_lines(text)
        .map(|(_, l)| l)
        .filter(|l| !l.starts_with('-'))
        .map(str::to_string)
        .collect()
}

/// The distribution name of a requirement line (`NumPy>=1.0; python_version>"3"` -> `numpy`).
fn requirement_name(line: &str) -> String {
    line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
        .replace('-', "_")
}

/// Top-level modules imported by `import a, b.c as d` and `from a.b import c`
/// lines (any indentation; relative imports skipped), in order, deduplicated.
pub fn top_imports(src: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |m: &str| {
        let top = m.trim().split('.').next().unwrap_or("").trim();
        if !top.is_empty()
            && top.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !out.iter().any(|o| o == top)
        {
            out.push(top.to_string());
        }
    };
    for l in src.lines() {
        let l = l.trim_start();
        if let Some(rest) = l.strip_prefix("import ") {
            for part in rest.split('#').next().unwrap_or("").split(',') {
                add(part.split_whitespace().next().unwrap_or(""));
            }
        } else if let Some(rest) = l.strip_prefix("from ") {
            let module = rest.split_whitespace().next().unwrap_or("");
            if !module.starts_with('.') && rest.contains(" import") {
                add(module);
            }
        }
    }
    out
}

/// Standard-library modules common in handlers: not packages a worker
/// must install or import at a cost worth routing for.
const STDLIB: &[&str] = &[
    "abc",
    "argparse",
    "array",
    "asyncio",
    "base64",
    "binascii",
    "bisect",
    "collections",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "enum",
    "errno",
    "functools",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "http",
    "io",
    "itertools",
    "json",
    "logging",
    "math",
    "operator",
    "os",
    "pathlib",
    "pickle",
    "platform",
    "queue",
    "random",
    "re",
    "secrets",
    "shutil",
    "signal",
    "socket",
    "sqlite3",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "sys",
    "tempfile",
    "textwrap",
    "threading",
    "time",
    "traceback",
    "typing",
    "unicodedata",
    "urllib",
    "uuid",
    "warnings",
    "weakref",
    "xml",
    "zipfile",
    "zlib",
    "__future__",
];

/// Relative import costs of well-known heavy packages (import time in
/// tens of ms, roughly); any other third-party package counts 10.
const HEAVY: &[(&str, u32)] = &[
    ("torch", 200),
    ("tensorflow", 200),
    ("pandas", 60),
    ("scipy", 50),
    ("sklearn", 80),
    ("scikit_learn", 80),
    ("matplotlib", 50),
    ("numpy", 30),
    ("PIL", 15),
    ("pillow", 15),
    ("requests", 12),
];

/// The routing package set: third-party imports plus requirement names,
/// heaviest first, at most [`MAX_PACKAGES`].
fn package_set(requirements: &[String], imports: &[String]) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = Vec::new();
    let names = requirements.iter().map(|r| requirement_name(r)).chain(
        imports
            .iter()
            .filter(|i| !STDLIB.contains(&i.as_str()))
            .cloned(),
    );
    for n in names {
        if n.is_empty() || out.iter().any(|(o, _)| o.eq_ignore_ascii_case(&n)) {
            continue;
        }
        let cost = HEAVY
            .iter()
            .find(|(h, _)| h.eq_ignore_ascii_case(&n))
            .map_or(10, |(_, c)| *c);
        out.push((n, cost));
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.1));
    out.truncate(MAX_PACKAGES);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_are_found() {
        let src = "import os, numpy as np\nfrom pandas.io import x\nfrom . import y\n  import json  # c\nfrom x\n";
        assert_eq!(top_imports(src), vec!["os", "numpy", "pandas", "json"]);
        let reqs = requirement_lines(
            "# c\nNumPy==1.26.4\n-r other.txt\n\nrequests>=2 ; python_version>'3'\n",
        );
        assert_eq!(
            reqs,
            vec!["NumPy==1.26.4", "requests>=2 ; python_version>'3'"]
        );
        let set = package_set(&reqs, &top_imports(src));
        let names: Vec<&str> = set.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["pandas", "numpy", "requests"]);
    }

    #[test]
    fn packing_is_deterministic_and_checked() {
        let dir = std::env::temp_dir().join(format!("olp-cs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("f.py"), "import numpy\ndef f(e):\n    return 1\n").unwrap();
        std::fs::write(dir.join("ol.yaml"), "cache: {ttl_ms: 100}\n").unwrap();
        std::fs::write(dir.join("sub/x.txt"), "x").unwrap();
        let a = codestore::archive::pack_dir(&dir).unwrap();
        let b = codestore::archive::pack_dir(&dir).unwrap();
        assert_eq!(a, b);
        check_package(&a, 1 << 20).unwrap();
        let p = describe(a.into());
        assert_eq!(p.version.len(), 16);
        assert_eq!(p.config.cache.as_ref().unwrap().ttl_ms, 100);
        assert_eq!(p.imports, vec!["numpy"]);
        assert!(check_package(b"not gzip", 1 << 20).is_err());
        std::fs::write(dir.join("ol.yaml"), "cache: {ttl_ms: 0}\n").unwrap();
        let e = check_package(&codestore::archive::pack_dir(&dir).unwrap(), 1 << 20).unwrap_err();
        assert!(e.contains("cache.ttl_ms"), "{e}");
        std::fs::remove_file(dir.join("f.py")).unwrap();
        std::fs::write(dir.join("ol.yaml"), "").unwrap();
        assert!(check_package(&codestore::archive::pack_dir(&dir).unwrap(), 1 << 20).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
