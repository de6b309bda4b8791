//! The code store: where functions come from, and the worker's local copy
//! of each function version.
//!
//! A store is a directory (holding `<name>/` directories or `<name>.tar.gz`
//! files; a tarball wins over a directory of the same name, so an upload
//! replaces what callers see) or an http(s) URL that serves
//! `<url>/<name>.tar.gz` (another ol-worker's or ol-proxy's `/registry`).
//! Whatever the source, the package travels as `.tar.gz` bytes and is
//! unpacked by `codestore::archive::unpack`, so every source gets the same
//! checks (the proxy's code store front uses the same crate).
//! Versions are content hashes: new code means a new directory under
//! `<work>/code/<name>/<version>`, and old instances drain on the old one.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use config::FunctionConfig;

use codestore::archive::{self, ArchiveError};

/// One version of one function, unpacked and ready to run.
#[derive(Debug)]
pub struct CodeVersion {
    pub name: String,
    /// First 16 hex digits of the package's SHA-256.
    pub version: String,
    pub dir: PathBuf,
    pub config: FunctionConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no function named {0:?} in the code store")]
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
    /// The operation does not apply to this kind of store.
    #[error("{0}")]
    Unsupported(String),
}

enum Store {
    Dir(PathBuf),
    Http(String),
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
    cache: Mutex<HashMap<String, Cached>>,
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
    ) -> anyhow::Result<Self> {
        let store = if location.starts_with("http://") || location.starts_with("https://") {
            Store::Http(location.trim_end_matches('/').to_string())
        } else {
            let dir = PathBuf::from(location);
            if !dir.is_dir() {
                anyhow::bail!("registry {location:?} is neither a directory nor an http(s) URL");
            }
            Store::Dir(dir.canonicalize()?)
        };
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
            cache: Mutex::new(HashMap::new()),
            changes: Default::default(),
        })
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
            if c.checked.elapsed() < self.recheck {
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
            self.cache.lock().unwrap().remove(name);
            return Err(RegistryError::NotFound(name.to_string()));
        };
        let version = codestore::version(&bytes);
        {
            let mut cache = self.cache.lock().unwrap();
            if let Some(c) = cache.get_mut(name) {
                if c.code.version == version {
                    c.checked = Instant::now();
                    return Ok(c.code.clone());
                }
            }
        }
        let dir = self.code_root.join(name).join(&version);
        if !dir.join("f.py").exists() {
            self.unpack_into(&bytes, &dir)
                .map_err(|e| RegistryError::Broken(name.into(), e.to_string()))?;
        }
        let config =
            read_function_config(&dir).map_err(|e| RegistryError::Broken(name.into(), e))?;
        // A gRPC binding's protos are compiled at load (and cached for calls).
        crate::grpc::protos::load(name, &dir, &config)
            .map_err(|e| RegistryError::Broken(name.into(), e))?;
        let code = Arc::new(CodeVersion {
            name: name.to_string(),
            version,
            dir,
            config,
        });
        tracing::info!(function = name, version = %code.version, "code loaded");
        self.cache.lock().unwrap().insert(
            name.to_string(),
            Cached {
                code: code.clone(),
                checked: Instant::now(),
            },
        );
        Ok(code)
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

    /// The package bytes of `name`, or `None` if the store has no such function.
    fn fetch(&self, name: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        match &self.store {
            Store::Dir(root) => {
                codestore::dir::fetch(root, name).map_err(|e| RegistryError::Store(e.to_string()))
            }
            Store::Http(base) => {
                let url = format!("{base}/{name}.tar.gz");
                match ureq::get(&url).call() {
                    Ok(mut resp) => resp
                        .body_mut()
                        .with_config()
                        .limit(self.max_upload as u64)
                        .read_to_vec()
                        .map(Some)
                        .map_err(|e| RegistryError::Store(format!("GET {url}: {e}"))),
                    Err(ureq::Error::StatusCode(404)) => Ok(None),
                    Err(e) => Err(RegistryError::Store(format!("GET {url}: {e}"))),
                }
            }
        }
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
        match &self.store {
            Store::Dir(root) => {
                codestore::dir::list(root).map_err(|e| RegistryError::Store(e.to_string()))
            }
            Store::Http(base) => {
                let url = format!("{base}/");
                let text = ureq::get(&url)
                    .call()
                    .and_then(|mut r| r.body_mut().read_to_string())
                    .map_err(|e| RegistryError::Store(format!("GET {url}: {e}")))?;
                serde_json::from_str(&text)
                    .map_err(|e| RegistryError::Store(format!("GET {url}: {e}")))
            }
        }
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
        let this = self.clone();
        let name = name.to_string();
        blocking(move || {
            let check = this.tmp_dir("upload");
            let res = archive::unpack(&bytes, &check, this.max_unpacked())
                .map_err(|e| e.to_string())
                .and_then(|()| read_function_config(&check))
                .and_then(|cfg| crate::grpc::protos::check(&check, &cfg));
            let _ = fs::remove_dir_all(&check);
            res.map_err(RegistryError::Invalid)?;
            match &this.store {
                Store::Dir(root) => codestore::dir::install(root, &name, &bytes)
                    .map_err(|e| RegistryError::Store(e.to_string()))?,
                Store::Http(base) => {
                    let url = format!("{base}/{name}");
                    ureq::post(&url)
                        .send(&bytes[..])
                        .map_err(|e| RegistryError::Store(format!("POST {url}: {e}")))?;
                }
            }
            this.cache.lock().unwrap().remove(&name);
            this.changed();
            tracing::info!(function = %name, bytes = bytes.len(), "code uploaded");
            Ok(())
        })
        .await
    }

    /// Removes `name` (both the tarball and the directory form).
    pub async fn delete(self: &Arc<Self>, name: &str) -> Result<(), RegistryError> {
        let this = self.clone();
        let name = name.to_string();
        blocking(move || {
            match &this.store {
                Store::Dir(root) => {
                    let removed = codestore::dir::delete(root, &name)
                        .map_err(|e| RegistryError::Store(e.to_string()))?;
                    if !removed {
                        return Err(RegistryError::NotFound(name));
                    }
                }
                Store::Http(base) => {
                    let url = format!("{base}/{name}");
                    match ureq::delete(&url).call() {
                        Ok(_) => {}
                        Err(ureq::Error::StatusCode(404)) => {
                            return Err(RegistryError::NotFound(name))
                        }
                        Err(e) => return Err(RegistryError::Store(format!("DELETE {url}: {e}"))),
                    }
                }
            }
            this.cache.lock().unwrap().remove(&name);
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
