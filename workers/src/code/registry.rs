//! The code store: where functions come from, and the worker's local copy
//! of each function version.
//!
//! A store is a directory (holding `<name>/` directories or `<name>.tar.gz`
//! files; a tarball wins over a directory of the same name, so an upload
//! replaces what callers see) or an http(s) URL that serves
//! `<url>/<name>.tar.gz` (another ol-worker's or ol-proxy's `/registry`),
//! reached through `codestore::client`, as the proxy reaches it.
//! Whatever the source, the package travels as `.tar.gz` bytes and is
//! unpacked by `codestore::archive::unpack`, so every source gets the same
//! checks (the proxy's code store front uses the same crate).
//! Versions are content hashes: new code means a new directory under
//! `<work>/code/<name>/<version>`, and old instances drain on the old one;
//! that directory is removed when the last holder of the old version (an
//! instance, a call) lets it go. A version directory that vanished (a temp
//! cleaner, an operator) is unpacked again on the next call.
//!
//! Uploads are checked whole before anything is stored (the archive with
//! `codestore::archive`, `ol.yaml` and `requirements.txt` with
//! `codestore::check_metadata`, the protos of a gRPC binding), and at most
//! [`MAX_CONCURRENT_UPLOADS`] are checked at once: each holds its body in
//! memory, so more are refused with 503 instead of queued.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use config::FunctionConfig;

use codestore::archive::{self, ArchiveError};
use codestore::client::{Answer, OpenError, Store};

/// One version of one function, unpacked and ready to run.
#[derive(Debug)]
pub struct CodeVersion {
    pub name: String,
    /// First 16 hex digits of the package's SHA-256.
    pub version: String,
    pub dir: PathBuf,
    pub config: FunctionConfig,
    /// Set once a newer version or a delete replaced this one: the last
    /// holder then removes `dir`.
    retired: AtomicBool,
    /// The registry's live versions, also the lock over their directories.
    dirs: Arc<LiveVersions>,
}

/// Every live version by directory, so that a directory has one
/// `CodeVersion`; held while a version directory is unpacked or removed.
type LiveVersions = Mutex<HashMap<PathBuf, std::sync::Weak<CodeVersion>>>;

impl Drop for CodeVersion {
    fn drop(&mut self) {
        if !self.retired.load(Ordering::Acquire) {
            return;
        }
        let (dirs, dir) = (self.dirs.clone(), self.dir.clone());
        let (name, version) = (self.name.clone(), self.version.clone());
        let remove = move || {
            let mut live = dirs.lock().unwrap_or_else(|e| e.into_inner());
            // The same version loaded again meanwhile keeps its directory.
            if live.get(&dir).is_some_and(|w| w.strong_count() > 0) {
                return;
            }
            live.remove(&dir);
            match fs::remove_dir_all(&dir) {
                Ok(()) => tracing::info!(function = %name, %version, "old code removed"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(function = %name, %version, "cannot remove old code: {e}"),
            }
            if let Some(parent) = dir.parent() {
                let _ = fs::remove_dir(parent); // only if no other version is left
            }
        };
        // A large tree takes a while: not on a runtime thread.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

/// Uploads checked at once; more get 503 (each holds its body in memory).
pub const MAX_CONCURRENT_UPLOADS: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{}", codestore::client::not_found(.0))]
    NotFound(String),
    /// A package or upload that cannot be used (caller's fault: 400).
    #[error("{0}")]
    Invalid(String),
    /// A stored package that cannot be used (the function author's fault).
    #[error("function {0}: {1}")]
    Broken(String, String),
    /// The store itself failed (I/O, remote store down): 502.
    #[error("code store: {0}")]
    Store(String),
    /// Too many uploads at once: 503, try again.
    #[error("{0}")]
    Busy(String),
    /// The operation does not apply to this kind of store.
    #[error("{0}")]
    Unsupported(String),
}

struct Cached {
    code: Arc<CodeVersion>,
    checked: Instant,
}

pub struct Registry {
    store: Store,
    code_root: PathBuf,
    tmp_root: PathBuf,
    recheck: Duration,
    max_upload: usize,
    /// The worker's limits and their ceilings, checked at upload.
    limits: config::worker::LimitsConfig,
    /// Who may have `network: egress`, checked at upload.
    egress: config::worker::EgressConfig,
    /// `registry_token`, required by this worker's own endpoints (the
    /// store has it too, to send to an HTTP store).
    token: String,
    cache: Mutex<HashMap<String, Cached>>,
    dirs: Arc<LiveVersions>,
    uploads: tokio::sync::Semaphore,
    /// Bumped by every upload and delete through this worker (the gRPC
    /// service index rebuilds when it moved).
    changes: std::sync::atomic::AtomicU64,
}

impl Registry {
    /// `location` is a directory or an http(s) URL; `work_dir` holds the
    /// unpacked copies (`code/`) and temporary files (`tmp/`).
    pub fn new(
        location: &str,
        work_dir: &Path,
        recheck: Duration,
        max_upload: usize,
        limits: config::worker::LimitsConfig,
        egress: config::worker::EgressConfig,
        token: String,
    ) -> anyhow::Result<Self> {
        let store = Store::open(location, &token).map_err(|e| match e {
            OpenError::NotAStore(_) => anyhow::anyhow!("registry {e}"),
            OpenError::Io(io) => io.into(),
        })?;
        let code_root = work_dir.join("code");
        let tmp_root = work_dir.join("tmp");
        fs::create_dir_all(&code_root)?;
        fs::create_dir_all(&tmp_root)?;
        crate::fsutil::set_mode(&tmp_root, 0o700)?;
        Ok(Registry {
            store,
            code_root,
            tmp_root,
            recheck,
            max_upload,
            limits,
            egress,
            token,
            cache: Mutex::new(HashMap::new()),
            dirs: Default::default(),
            uploads: tokio::sync::Semaphore::new(MAX_CONCURRENT_UPLOADS),
            changes: Default::default(),
        })
    }

    /// Whether a request's `Authorization` carries this worker's token;
    /// always false when none is configured.
    pub fn token_given(&self, authorization: Option<&[u8]>) -> bool {
        config::bearer_matches(authorization, &self.token)
    }

    /// Whether this worker's own `/registry` endpoints need the token.
    pub fn token_required(&self) -> bool {
        !self.token.is_empty()
    }

    /// How long fetched code is trusted (`registry_cache_ms`).
    pub fn recheck(&self) -> Duration {
        self.recheck
    }

    /// A counter of uploads and deletes made through this worker.
    pub fn changes(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn changed(&self) {
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The current version of `name`: from the local cache while it is
    /// younger than `registry_cache_ms`, else re-checked with the store.
    pub async fn resolve(self: &Arc<Self>, name: &str) -> Result<Arc<CodeVersion>, RegistryError> {
        if let Some(c) = self.cache.lock().unwrap().get(name) {
            // One stat per call: a vanished directory is unpacked again.
            if c.checked.elapsed() < self.recheck && c.code.dir.join("f.py").exists() {
                return Ok(c.code.clone());
            }
        }
        let this = self.clone();
        let owned = name.to_string();
        tokio::task::spawn_blocking(move || this.refresh(&owned))
            .await
            .map_err(|e| RegistryError::Store(e.to_string()))?
    }

    fn refresh(&self, name: &str) -> Result<Arc<CodeVersion>, RegistryError> {
        let Some(bytes) = self.fetch(name)? else {
            self.forget(name);
            return Err(RegistryError::NotFound(name.to_string()));
        };
        let version = codestore::version(&bytes);
        {
            let mut cache = self.cache.lock().unwrap();
            if let Some(c) = cache.get_mut(name) {
                if c.code.version == version && c.code.dir.join("f.py").exists() {
                    c.checked = Instant::now();
                    return Ok(c.code.clone());
                }
            }
        }
        let code = self
            .load(name, &version, &bytes)
            .map_err(|e| RegistryError::Broken(name.into(), e))?;
        let old = self.cache.lock().unwrap().insert(
            name.to_string(),
            Cached {
                code: code.clone(),
                checked: Instant::now(),
            },
        );
        if let Some(old) = old {
            if old.code.dir != code.dir {
                old.code.retired.store(true, Ordering::Release);
            }
        } // the old version goes when its last instance does
        Ok(code)
    }

    /// The one `CodeVersion` of `name` at `version`: the live one, or one
    /// unpacked (again, if its directory vanished) and read from disk.
    fn load(&self, name: &str, version: &str, bytes: &[u8]) -> Result<Arc<CodeVersion>, String> {
        let dir = self.code_root.join(name).join(version);
        let mut live = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(code) = live.get(&dir).and_then(|w| w.upgrade()) {
            if dir.join("f.py").exists() {
                code.retired.store(false, Ordering::Release);
                return Ok(code);
            }
        }
        if !dir.join("f.py").exists() {
            let _ = fs::remove_dir_all(&dir); // a part of it, if anything
            self.unpack_into(bytes, &dir).map_err(|e| e.to_string())?;
        }
        let config = read_function_config(&dir)?;
        // A gRPC binding's protos are compiled at load (and cached for calls).
        super::protos::load(name, &dir, &config)?;
        let code = Arc::new(CodeVersion {
            name: name.to_string(),
            version: version.to_string(),
            dir: dir.clone(),
            config,
            retired: AtomicBool::new(false),
            dirs: self.dirs.clone(),
        });
        live.retain(|_, w| w.strong_count() > 0);
        live.insert(dir, Arc::downgrade(&code));
        drop(live);
        tracing::info!(function = name, version = %code.version, "code loaded");
        Ok(code)
    }

    /// Drops `name` from the cache; its version goes with its last instance.
    fn forget(&self, name: &str) {
        let old = self.cache.lock().unwrap().remove(name);
        if let Some(old) = old {
            old.code.retired.store(true, Ordering::Release);
        }
    }

    /// Unpacks into a temporary directory and renames it into place, so a
    /// half-unpacked package is never seen.
    fn unpack_into(&self, bytes: &[u8], dest: &Path) -> Result<(), ArchiveError> {
        let tmp = self.tmp_dir("unpack");
        let res = archive::unpack(bytes, &tmp, self.max_unpacked());
        if res.is_ok() {
            fs::create_dir_all(dest.parent().unwrap())?;
            if let Err(e) = fs::rename(&tmp, dest) {
                // Another request installed the same version first.
                if !dest.join("f.py").exists() {
                    let _ = fs::remove_dir_all(&tmp);
                    return Err(e.into());
                }
            }
        }
        let _ = fs::remove_dir_all(&tmp);
        res
    }

    fn max_unpacked(&self) -> u64 {
        self.max_upload as u64 * 10
    }

    fn tmp_dir(&self, what: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.tmp_root
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    /// The package bytes of `name` (at most `max_upload_bytes`), or `None`
    /// if the store has no such function.
    fn fetch(&self, name: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        self.store
            .fetch(name, self.max_upload as u64)
            .map_err(RegistryError::Store)
    }

    /// The package of `name` as `.tar.gz` (what `GET /registry/<name>` serves).
    pub async fn package(self: &Arc<Self>, name: &str) -> Result<Vec<u8>, RegistryError> {
        let this = self.clone();
        let name = name.to_string();
        blocking(move || this.fetch(&name)?.ok_or(RegistryError::NotFound(name))).await
    }

    /// Names of all functions in the store, sorted.
    pub async fn list(self: &Arc<Self>) -> Result<Vec<String>, RegistryError> {
        let this = self.clone();
        blocking(move || this.list_blocking()).await
    }

    fn list_blocking(&self) -> Result<Vec<String>, RegistryError> {
        self.store.list().map_err(RegistryError::Store)
    }

    /// Installs an uploaded package. It is checked completely first (it
    /// unpacks safely, has `f.py`, its `ol.yaml` is valid, the protos of its
    /// `grpc` binding compile and define the service); only then is
    /// it written, with an atomic rename. A refused upload changes nothing.
    pub async fn upload(self: &Arc<Self>, name: &str, bytes: Vec<u8>) -> Result<(), RegistryError> {
        if bytes.len() > self.max_upload {
            return Err(RegistryError::Invalid(format!(
                "upload is {} bytes; the limit is {}",
                bytes.len(),
                self.max_upload
            )));
        }
        let permit = self.uploads.try_acquire().map_err(|_| {
            RegistryError::Busy(format!(
                "{MAX_CONCURRENT_UPLOADS} uploads are being checked already; try again"
            ))
        })?;
        let this = self.clone();
        let name = name.to_string();
        let res = blocking(move || {
            this.check_upload(&name, &bytes)
                .map_err(RegistryError::Invalid)?;
            this.store
                .upload(&name, &bytes)
                .and_then(Answer::error_for_status)
                .map_err(RegistryError::Store)?;
            this.forget(&name);
            this.changed();
            tracing::info!(function = %name, bytes = bytes.len(), "code uploaded");
            Ok(())
        })
        .await;
        drop(permit);
        res
    }

    /// Every check of an upload, before anything is stored: the archive,
    /// `ol.yaml` and `requirements.txt` (the same checks as the proxy's
    /// code store front), the operator's ceilings and egress list, and the
    /// protos of a gRPC binding.
    fn check_upload(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
        let files = archive::inspect(bytes, self.max_unpacked(), &codestore::METADATA_FILES)
            .map_err(|e| e.to_string())?;
        let cfg = codestore::check_metadata(&files)?;
        self.limits
            .for_function(&cfg.limits)
            .map_err(|e| format!("ol.yaml: {e}"))?;
        self.egress.check(name, &cfg)?;
        if cfg.grpc.is_some() {
            let check = self.tmp_dir("upload");
            let res = archive::unpack(bytes, &check, self.max_unpacked())
                .map_err(|e| e.to_string())
                .and_then(|()| super::protos::check(&check, &cfg));
            let _ = fs::remove_dir_all(&check);
            res?;
        }
        Ok(())
    }

    /// Removes `name` (both the tarball and the directory form).
    pub async fn delete(self: &Arc<Self>, name: &str) -> Result<(), RegistryError> {
        let this = self.clone();
        let name = name.to_string();
        blocking(move || {
            let answer = this.store.delete(&name).map_err(RegistryError::Store)?;
            if answer.status == 404 {
                return Err(RegistryError::NotFound(name));
            }
            answer.error_for_status().map_err(RegistryError::Store)?;
            this.forget(&name);
            this.changed();
            Ok(())
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, RegistryError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RegistryError::Store(e.to_string()))?
}

/// Reads `ol.yaml` (optional) from an unpacked function.
fn read_function_config(dir: &Path) -> Result<FunctionConfig, String> {
    match fs::read_to_string(dir.join("ol.yaml")) {
        Ok(text) => FunctionConfig::from_yaml(&text).map_err(|e| format!("ol.yaml: {e}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FunctionConfig::default()),
        Err(e) => Err(format!("ol.yaml: {e}")),
    }
}
