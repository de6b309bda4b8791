//! The function cache (`[code_store]`): each function's current package,
//! fetched from the backing store and described once per TTL
//! (`package.rs`).
//!
//! Why at the proxy: every worker fetches every function it runs from the
//! code store; with the proxy as their `--registry` (`http://<proxy>/registry`,
//! `front.rs`) a package is read (or packed) once per TTL for the whole
//! fleet, and the proxy learns each function's metadata on the way: its
//! `ol.yaml` (the result cache's policy), its pinned `requirements.txt` and
//! the top-level imports of `f.py` (the package set `code-locality` hashes
//! over).
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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use codestore::client::Store;
use config::proxy::CodeStoreConfig;

use super::package::{check_package, describe, FnPackage};

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
    /// The backing store (`codestore::client`, the client workers use too),
    /// shared with the blocking threads that call it.
    backing: Arc<Store>,
    /// `code_store.token`: required from callers, sent to an HTTP backing.
    pub(super) token: String,
    pub(super) max_upload: usize,
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
        let backing = Store::open(cfg.backing.trim(), &cfg.token)
            .map_err(|e| format!("code_store.backing: {e}"))?;
        let cache = moka::future::Cache::builder()
            .max_capacity(cfg.max_bytes)
            .weigher(|_k: &String, v: &Option<Arc<FnPackage>>| {
                v.as_ref().map_or(64, |p| p.weight())
            })
            .time_to_live(Duration::from_millis(cfg.ttl_ms))
            .build();
        Ok(CodeStore {
            backing: Arc::new(backing),
            token: cfg.token.clone(),
            max_upload: cfg.max_upload_bytes,
            cache,
            seen: Mutex::new(HashMap::new()),
            stats: StoreStats::default(),
        })
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
        let mut pkg = tokio::task::spawn_blocking(move || describe(bytes))
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

    /// The package bytes from the backing store (an HTTP one's read up to
    /// the upload limit).
    async fn fetch(&self, name: &str) -> Result<Option<Bytes>, StoreError> {
        let limit = self.max_upload as u64;
        let name = name.to_string();
        self.blocking(move |s| s.fetch(&name, limit).map(|b| b.map(Bytes::from)))
            .await
    }

    pub(super) async fn list(&self) -> Result<Vec<String>, StoreError> {
        self.blocking(|s| s.list()).await
    }

    /// Checks an upload with the workers' rules, then stores it; the
    /// status and one-line text to answer.
    pub(super) async fn upload(&self, name: &str, bytes: Bytes) -> (u16, String) {
        let name = name.to_string();
        let max_unpacked = self.max_upload as u64 * 10;
        let r = self
            .blocking(move |s| {
                if let Err(e) = check_package(&bytes, max_unpacked) {
                    return Ok((400, format!("refused upload of {name}: {e}")));
                }
                s.upload(&name, &bytes).map(|a| (a.status, a.text))
            })
            .await;
        r.unwrap_or_else(|e| (502, format!("code store: {}", e.0)))
    }

    pub(super) async fn delete(&self, name: &str) -> (u16, String) {
        let name = name.to_string();
        let r = self
            .blocking(move |s| s.delete(&name).map(|a| (a.status, a.text)))
            .await;
        r.unwrap_or_else(|e| (502, format!("code store: {}", e.0)))
    }

    /// Runs a call of the (blocking) store client off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, String> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.backing.clone();
        tokio::task::spawn_blocking(move || f(&store).map_err(StoreError))
            .await
            .map_err(|e| StoreError(e.to_string()))?
    }
}
