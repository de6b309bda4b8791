//! The function cache and the code store front (`[code_store]`).
//!
//! Why at the proxy: every worker fetches every function it runs from the
//! code store; with the proxy as their `--registry` (`http://<proxy>/registry`)
//! a package is read (or packed) once per TTL for the whole fleet, and the
//! proxy learns each function's metadata on the way: its `ol.yaml` (the
//! result cache's policy), its pinned `requirements.txt` and the top-level
//! imports of `f.py` (the package set `code-locality` hashes over).
//!
//! - Entries are keyed by name; each holds one version (the first 16 hex
//!   digits of the package's SHA-256, the same rule as the workers'
//!   registry, so both sides name a version alike). A moka cache bounds
//!   them by bytes (weigher: package bytes plus metadata) and drops them
//!   `ttl_ms` after they were fetched, so the next request re-reads the
//!   backing store: a changed package is served as its new version, a
//!   vanished one answers 404. Concurrent loads of one name are one load
//!   (moka's `try_get_with`). A function the store does not have is cached
//!   as absent for the TTL too, so unknown names do not hit the store per
//!   request.
//! - The backing store is a directory (`<name>.tar.gz` wins over a
//!   `<name>/` directory, which is packed deterministically the way the
//!   workers pack it) or an http(s) URL serving the same API.
//! - Uploads (`POST`/`PUT /registry/<name>`) are checked here before they
//!   touch the store (valid name, size limit, gzip, a safe tar with `f.py`,
//!   a valid `ol.yaml`), then written with an atomic rename (directory) or
//!   passed on (URL, whose own checks apply too); `DELETE` goes through.
//!   Both invalidate the cached entry. A refused upload changes nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use config::proxy::CodeStoreConfig;
use config::FunctionConfig;
use http::Response;
use pingora::protocols::http::ServerSession;

use crate::caches::{read_body, BodyRead};

/// Most package names (requirements plus imports) kept per function.
pub const MAX_PACKAGES: usize = 8;

/// One version of one function, with what the proxy learned from it.
#[derive(Debug)]
pub struct FnPackage {
    pub name: String,
    /// First 16 hex digits of the package's SHA-256.
    pub version: String,
    /// The `.tar.gz` bytes, as served to workers.
    pub bytes: Bytes,
    /// Its `ol.yaml` (default when absent or invalid).
    pub config: FunctionConfig,
    /// `config` as JSON (`GET /registry/<name>/config`).
    pub config_json: Bytes,
    /// Why `ol.yaml` did not parse, if it did not.
    pub config_error: Option<String>,
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
    fn weight(&self) -> u32 {
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

#[derive(Debug)]
enum Backing {
    Dir(PathBuf),
    Http(String),
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct StoreStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub load_errors: AtomicU64,
    pub uploads: AtomicU64,
    pub uploads_refused: AtomicU64,
    pub deletes: AtomicU64,
}

/// The function cache in front of one backing store.
pub struct CodeStore {
    backing: Backing,
    /// `code_store.token`: required from callers, sent to an HTTP backing.
    token: String,
    max_upload: usize,
    cache: moka::future::Cache<String, Option<Arc<FnPackage>>>,
    /// Last version seen per name, and when it replaced another one.
    seen: Mutex<HashMap<String, (String, Option<Instant>)>>,
    pub stats: StoreStats,
}

/// A load failure (the store is down or broken): 502, never cached.
#[derive(Debug, Clone)]
pub struct StoreError(pub String);

impl CodeStore {
    pub fn new(cfg: &CodeStoreConfig) -> Result<CodeStore, String> {
        let b = cfg.backing.trim();
        let backing = if b.starts_with("http://") || b.starts_with("https://") {
            Backing::Http(b.trim_end_matches('/').to_string())
        } else {
            let p = PathBuf::from(b);
            if !p.is_dir() {
                return Err(format!(
                    "code_store.backing: {b:?} is neither a directory nor an http(s) URL"
                ));
            }
            Backing::Dir(p.canonicalize().map_err(|e| e.to_string())?)
        };
        let cache = moka::future::Cache::builder()
            .max_capacity(cfg.max_bytes)
            .weigher(|_k: &String, v: &Option<Arc<FnPackage>>| {
                v.as_ref().map_or(64, |p| p.weight())
            })
            .time_to_live(Duration::from_millis(cfg.ttl_ms))
            .build();
        Ok(CodeStore {
            backing,
            token: cfg.token.clone(),
            max_upload: cfg.max_upload_bytes,
            cache,
            seen: Mutex::new(HashMap::new()),
            stats: StoreStats::default(),
        })
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// Cached entries and their weighed bytes.
    pub fn size(&self) -> (u64, u64) {
        (self.cache.entry_count(), self.cache.weighted_size())
    }

    /// The current version of `name` (`Ok(None)`: the store has none).
    /// `name` must be validated.
    pub async fn get(&self, name: &str) -> Result<Option<Arc<FnPackage>>, StoreError> {
        if let Some(hit) = self.cache.get(name).await {
            self.stats.hits.fetch_add(1, Relaxed);
            return Ok(hit);
        }
        self.stats.misses.fetch_add(1, Relaxed);
        let r = self
            .cache
            .try_get_with(name.to_string(), self.load(name))
            .await
            .map_err(|e: Arc<StoreError>| (*e).clone());
        if r.is_err() {
            self.stats.load_errors.fetch_add(1, Relaxed);
        }
        r
    }

    /// Forgets `name` (after an upload or delete through the proxy).
    pub async fn invalidate(&self, name: &str) {
        self.cache.invalidate(name).await;
    }

    async fn load(&self, name: &str) -> Result<Option<Arc<FnPackage>>, StoreError> {
        let bytes = self.fetch(name).await?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let name_owned = name.to_string();
        let mut pkg = tokio::task::spawn_blocking(move || describe(&name_owned, bytes))
            .await
            .map_err(|e| StoreError(e.to_string()))?;
        {
            let mut seen = self.seen.lock().unwrap();
            match seen.get_mut(name) {
                Some((v, at)) if *v != pkg.version => {
                    *v = pkg.version.clone();
                    *at = Some(Instant::now());
                }
                Some(_) => {}
                None => {
                    seen.insert(name.to_string(), (pkg.version.clone(), None));
                }
            }
            pkg.changed_at = seen[name].1;
        }
        Ok(Some(Arc::new(pkg)))
    }

    /// The package bytes from the backing store.
    async fn fetch(&self, name: &str) -> Result<Option<Bytes>, StoreError> {
        let limit = self.max_upload as u64;
        match &self.backing {
            Backing::Dir(root) => {
                let root = root.clone();
                let name = name.to_string();
                blocking(move || read_dir_package(&root, &name)).await
            }
            Backing::Http(base) => {
                let url = format!("{base}/{name}.tar.gz");
                let auth = self.bearer();
                blocking(
                    move || match ureq::get(&url).header("authorization", &auth).call() {
                        Ok(mut r) => r
                            .body_mut()
                            .with_config()
                            .limit(limit)
                            .read_to_vec()
                            .map(|v| Some(Bytes::from(v)))
                            .map_err(|e| StoreError(format!("GET {url}: {e}"))),
                        Err(ureq::Error::StatusCode(404)) => Ok(None),
                        Err(e) => Err(StoreError(format!("GET {url}: {e}"))),
                    },
                )
                .await
            }
        }
    }

    /// Serves the code store API on `/registry...` from the cache, on the
    /// admin listener, to callers with `code_store.token` only.
    pub async fn serve(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let auth = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION);
        if !config::bearer_matches(auth.map(|v| v.as_bytes()), &self.token) {
            let mut r = reply(
                401,
                "text/plain",
                line("the code store needs Authorization: Bearer <code_store.token>"),
            );
            r.headers_mut()
                .insert("www-authenticate", http::HeaderValue::from_static("Bearer"));
            return r;
        }
        let path = session.req_header().uri.path().to_string();
        let method = session.req_header().method.clone();
        let rest = path
            .strip_prefix("/registry")
            .unwrap_or("")
            .trim_start_matches('/');
        if rest.is_empty() {
            if method != http::Method::GET {
                return reply(
                    405,
                    "text/plain",
                    line("the registry list only answers GET"),
                );
            }
            return match self.list().await {
                Ok(names) => {
                    let body = serde_json::to_vec(&names).unwrap_or_default();
                    reply(200, "application/json", body)
                }
                Err(e) => reply(502, "text/plain", line(&e.0)),
            };
        }
        let (name, sub) = rest.split_once('/').unwrap_or((rest, ""));
        let name = match (&method, sub) {
            (&http::Method::GET | &http::Method::HEAD, "") => {
                name.strip_suffix(".tar.gz").unwrap_or(name)
            }
            _ => name,
        };
        if let Err(e) = config::validate_function_name(name) {
            return reply(400, "text/plain", line(&e));
        }
        let name = name.to_string();
        match (method.as_str(), sub) {
            ("GET" | "HEAD", "") | ("GET", "config") => match self.get(&name).await {
                Ok(Some(p)) if sub.is_empty() => {
                    let mut r = reply(200, "application/gzip", p.bytes.to_vec());
                    if let Ok(v) = http::HeaderValue::from_str(&p.version) {
                        r.headers_mut().insert("x-ol-version", v);
                    }
                    r
                }
                Ok(Some(p)) => reply(200, "application/json", p.config_json.to_vec()),
                Ok(None) => {
                    let msg = format!("no function named {name:?} in the code store");
                    reply(404, "text/plain", line(&msg))
                }
                Err(e) => reply(502, "text/plain", line(&format!("code store: {}", e.0))),
            },
            ("POST" | "PUT", "") => {
                let read = read_body(session, self.max_upload, false).await;
                let body = match read {
                    Ok(BodyRead::Whole(b)) => b,
                    Ok(BodyRead::TooLarge | BodyRead::Cut) => {
                        self.stats.uploads_refused.fetch_add(1, Relaxed);
                        let msg = format!(
                            "upload is larger than the limit of {} bytes",
                            self.max_upload
                        );
                        session.set_keepalive(None);
                        return reply(413, "text/plain", line(&msg));
                    }
                    Err(e) => {
                        session.set_keepalive(None);
                        return reply(
                            400,
                            "text/plain",
                            line(&format!("cannot read the upload: {e}")),
                        );
                    }
                };
                let (status, msg) = self.upload(&name, body).await;
                self.invalidate(&name).await;
                if status == 201 {
                    self.stats.uploads.fetch_add(1, Relaxed);
                } else {
                    self.stats.uploads_refused.fetch_add(1, Relaxed);
                }
                reply(status, "text/plain", line(&msg))
            }
            ("DELETE", "") => {
                let (status, msg) = self.delete(&name).await;
                self.invalidate(&name).await;
                if status == 204 {
                    self.stats.deletes.fetch_add(1, Relaxed);
                    return reply(204, "text/plain", Vec::new());
                }
                reply(status, "text/plain", line(&msg))
            }
            (m, s) => {
                let msg = format!(
                    "{m} /registry/{name}{}{s} is not supported",
                    if s.is_empty() { "" } else { "/" }
                );
                reply(405, "text/plain", line(&msg))
            }
        }
    }

    async fn list(&self) -> Result<Vec<String>, StoreError> {
        match &self.backing {
            Backing::Dir(root) => {
                let root = root.clone();
                blocking(move || codestore::dir::list(&root).map_err(|e| StoreError(e.to_string())))
                    .await
            }
            Backing::Http(base) => {
                let url = format!("{base}/");
                let auth = self.bearer();
                blocking(move || {
                    let text = ureq::get(&url)
                        .header("authorization", &auth)
                        .call()
                        .and_then(|mut r| r.body_mut().read_to_string())
                        .map_err(|e| StoreError(format!("GET {url}: {e}")))?;
                    serde_json::from_str(&text).map_err(|e| StoreError(format!("GET {url}: {e}")))
                })
                .await
            }
        }
    }

    async fn upload(&self, name: &str, bytes: Bytes) -> (u16, String) {
        let name = name.to_string();
        let max_unpacked = self.max_upload as u64 * 10;
        let r = match &self.backing {
            Backing::Dir(root) => {
                let root = root.clone();
                blocking(move || {
                    if let Err(e) = check_package(&bytes, max_unpacked) {
                        return Ok((400, format!("refused upload of {name}: {e}")));
                    }
                    codestore::dir::install(&root, &name, &bytes)
                        .map(|()| (201, format!("installed {name}")))
                        .map_err(|e| StoreError(e.to_string()))
                })
                .await
            }
            Backing::Http(base) => {
                let url = format!("{base}/{name}");
                let auth = self.bearer();
                blocking(move || {
                    if let Err(e) = check_package(&bytes, max_unpacked) {
                        return Ok((400, format!("refused upload of {name}: {e}")));
                    }
                    passed_on(
                        ureq::post(&url)
                            .header("authorization", &auth)
                            .config()
                            .http_status_as_error(false)
                            .build()
                            .send(&bytes[..]),
                        &url,
                    )
                })
                .await
            }
        };
        r.unwrap_or_else(|e| (502, format!("code store: {}", e.0)))
    }

    async fn delete(&self, name: &str) -> (u16, String) {
        let name = name.to_string();
        let r = match &self.backing {
            Backing::Dir(root) => {
                let root = root.clone();
                blocking(move || match codestore::dir::delete(&root, &name) {
                    Ok(true) => Ok((204, String::new())),
                    Ok(false) => Ok((404, format!("no function named {name:?} in the code store"))),
                    Err(e) => Err(StoreError(e.to_string())),
                })
                .await
            }
            Backing::Http(base) => {
                let url = format!("{base}/{name}");
                let auth = self.bearer();
                blocking(move || {
                    passed_on(
                        ureq::delete(&url)
                            .header("authorization", &auth)
                            .config()
                            .http_status_as_error(false)
                            .build()
                            .call(),
                        &url,
                    )
                })
                .await
            }
        };
        r.unwrap_or_else(|e| (502, format!("code store: {}", e.0)))
    }
}

fn passed_on(
    r: Result<http::Response<ureq::Body>, ureq::Error>,
    url: &str,
) -> Result<(u16, String), StoreError> {
    match r {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            Ok((status, text))
        }
        Err(e) => Err(StoreError(format!("{url}: {e}"))),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError(e.to_string()))?
}

fn line(s: &str) -> Vec<u8> {
    let mut one: String = s
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    one.push('\n');
    one.into_bytes()
}

fn reply(status: u16, ctype: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::builder()
        .status(status)
        .header("content-type", ctype)
        .header("x-ol-worker", "none")
        .header("x-ol-policy", "none");
    if status != 204 {
        r = r.header("content-length", body.len());
    }
    r.body(body).expect("static parts")
}

fn read_dir_package(root: &Path, name: &str) -> Result<Option<Bytes>, StoreError> {
    codestore::dir::fetch(root, name)
        .map(|b| b.map(Bytes::from))
        .map_err(|e| StoreError(e.to_string()))
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
fn describe(name: &str, bytes: Bytes) -> FnPackage {
    let version = codestore::version(&bytes);
    let files = read_package(&bytes, 1 << 30).unwrap_or_default();
    let (config, config_error) = match files.get("ol.yaml").map(|y| FunctionConfig::from_yaml(y)) {
        None => (FunctionConfig::default(), None),
        Some(Ok(c)) => (c, None),
        Some(Err(e)) => (FunctionConfig::default(), Some(e)),
    };
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
        name: name.to_string(),
        version,
        bytes,
        config,
        config_json,
        config_error,
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
        let p = describe("f", a.into());
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
