//! The result cache: 2xx responses of functions whose `ol.yaml` has a
//! `cache: {ttl_ms, methods}` section, answered by the proxy itself.
//!
//! Why here: a cacheable function's result depends only on its code and
//! the request, so a repeated call need not reach a worker at all; and the
//! proxy is the one place that sees every identical call at once, so it can
//! also make concurrent identical calls one upstream call (coalescing).
//!
//! - Key: SHA-256 (first 16 bytes) of function, code version (from the
//!   function cache, `code.rs`), method, path, query and body. A new
//!   version is a new key, so old results are never served for new code;
//!   results of a version are not stored until workers have had
//!   `result_cache.settle_ms` to pick it up (they re-check their registry
//!   that often), so a late old-code response is never stored under the
//!   new version either.
//! - Bounded by bytes (moka weigher: body plus headers) with a per-entry
//!   TTL (the function's `cache.ttl_ms`, moka's `Expiry`). A response over
//!   `result_cache.max_entry_bytes`, a non-2xx response, or one that breaks
//!   off is served but never stored.
//! - Coalescing: the first miss for a key becomes the leader (it holds a
//!   [`Fill`] in its request context) and goes upstream; later identical
//!   requests wait on a watch channel, up to `result_cache.wait_ms`. When
//!   the leader stored the result they answer it as hits; when its result
//!   could not be stored they go upstream themselves, at once and in
//!   parallel; when the leader vanished (client gone) one of them takes
//!   over. A `Fill` always ends (stored, refused, or dropped), so a waiter
//!   never waits past the leader's request.
//!
//! Hits are answered in `request_filter` (one hash, one moka lookup, one
//! write); misses are filled from `response_filter` (head) and
//! `response_body_filter` (body), see `service`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use config::proxy::ResultCacheConfig;
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

pub type Key = [u8; 16];

/// One stored response.
pub struct Stored {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    pub ttl: Duration,
}

impl Stored {
    fn weight(&self) -> u32 {
        let h: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        (self.body.len() + h + 96).min(u32::MAX as usize) as u32
    }
}

struct PerEntryTtl;

impl moka::Expiry<Key, Arc<Stored>> for PerEntryTtl {
    fn expire_after_create(&self, _: &Key, v: &Arc<Stored>, _: Instant) -> Option<Duration> {
        Some(v.ttl)
    }
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct ResultStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Requests that waited for an identical one (then hit or went up).
    pub coalesced: AtomicU64,
    pub stored: AtomicU64,
    pub not_stored_status: AtomicU64,
    pub not_stored_size: AtomicU64,
    pub wait_timeouts: AtomicU64,
}

/// A fill's outcome, seen by the requests waiting for it.
const PENDING: u8 = 0;
const STORED: u8 = 1;
const REFUSED: u8 = 2;

pub struct ResultCache {
    cache: moka::sync::Cache<Key, Arc<Stored>>,
    inflight: Mutex<HashMap<Key, watch::Receiver<u8>>>,
    pub max_entry: usize,
    wait: Duration,
    /// How long after a code change results are not stored.
    pub settle: Duration,
    pub stats: ResultStats,
}

/// What `lookup` found.
pub enum Lookup {
    Hit(Arc<Stored>),
    /// Go upstream and fill the cache with the result.
    Fill(Fill),
    /// Go upstream without filling (an identical request's result could not
    /// be stored, or waiting for it timed out).
    Miss,
}

impl ResultCache {
    pub fn new(cfg: &ResultCacheConfig) -> ResultCache {
        ResultCache {
            cache: moka::sync::Cache::builder()
                .max_capacity(cfg.max_bytes)
                .weigher(|_k: &Key, v: &Arc<Stored>| v.weight())
                .expire_after(PerEntryTtl)
                .build(),
            inflight: Mutex::new(HashMap::new()),
            max_entry: cfg.max_entry_bytes,
            wait: Duration::from_millis(cfg.wait_ms),
            settle: Duration::from_millis(cfg.settle_ms),
            stats: ResultStats::default(),
        }
    }

    /// Cached entries and their weighed bytes.
    pub fn size(&self) -> (u64, u64) {
        (self.cache.entry_count(), self.cache.weighted_size())
    }

    /// The key of one call.
    pub fn key(
        function: &str,
        version: &str,
        method: &str,
        path: &str,
        query: &str,
        body: &[u8],
    ) -> Key {
        let mut h = Sha256::new();
        for part in [function, version, method, path, query] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.update(body);
        let d = h.finalize();
        let mut k = [0u8; 16];
        k.copy_from_slice(&d[..16]);
        k
    }

    /// A hit, or the right to fill, or (after waiting for an identical
    /// request) a plain miss. `'static`: the cache lives for the process.
    pub async fn lookup(&'static self, key: Key, ttl: Duration) -> Lookup {
        let deadline = Instant::now() + self.wait;
        let mut waited = false;
        loop {
            if let Some(s) = self.cache.get(&key) {
                self.stats.hits.fetch_add(1, Relaxed);
                return Lookup::Hit(s);
            }
            let mut rx = {
                let mut m = self.inflight.lock().unwrap();
                match m.get(&key) {
                    Some(rx) => rx.clone(),
                    None => {
                        let (tx, rx) = watch::channel(PENDING);
                        m.insert(key, rx);
                        self.stats.misses.fetch_add(1, Relaxed);
                        return Lookup::Fill(Fill {
                            cache: self,
                            key,
                            tx: Some(tx),
                            ttl,
                            head: None,
                            body: BytesMut::new(),
                        });
                    }
                }
            };
            if !waited {
                waited = true;
                self.stats.coalesced.fetch_add(1, Relaxed);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let outcome = tokio::time::timeout(left, rx.wait_for(|s| *s != PENDING)).await;
            match outcome {
                Err(_) => {
                    self.stats.wait_timeouts.fetch_add(1, Relaxed);
                    self.stats.misses.fetch_add(1, Relaxed);
                    return Lookup::Miss;
                }
                Ok(Ok(s)) if *s == REFUSED => {
                    self.stats.misses.fetch_add(1, Relaxed);
                    return Lookup::Miss;
                }
                // Stored (look again), or the leader went away (take over).
                Ok(_) => continue,
            }
        }
    }

    fn finish(&self, key: &Key, tx: watch::Sender<u8>, outcome: u8) {
        // Remove first: a request that finds no entry after this either
        // hits (stored) or becomes the next leader.
        self.inflight.lock().unwrap().remove(key);
        let _ = tx.send(outcome);
    }
}

/// The right (and duty) to fill one key, held in the leader's request
/// context. Dropping it without storing tells the waiters to go upstream.
pub struct Fill {
    cache: &'static ResultCache,
    key: Key,
    tx: Option<watch::Sender<u8>>,
    ttl: Duration,
    head: Option<(u16, Vec<(HeaderName, HeaderValue)>)>,
    body: BytesMut,
}

/// Headers never stored: hop-by-hop, framing, and the proxy's own.
fn stored_header(name: &HeaderName) -> bool {
    let n = name.as_str();
    !(n.starts_with(config::wire::X_OL_PREFIX)
        || matches!(
            n,
            "connection"
                | "keep-alive"
                | "transfer-encoding"
                | "content-length"
                | "te"
                | "trailer"
                | "upgrade"
                | "proxy-connection"
                | "date"
        ))
}

impl Fill {
    /// The response head: keeps it if it is a 2xx, else refuses at once so
    /// that waiters go upstream without waiting for the body.
    pub fn on_head(&mut self, resp: &ResponseHeader) {
        let status = resp.status.as_u16();
        if !(200..300).contains(&status) {
            self.cache.stats.not_stored_status.fetch_add(1, Relaxed);
            self.refuse();
            return;
        }
        if let Some(len) = resp
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
        {
            if len > self.cache.max_entry {
                self.cache.stats.not_stored_size.fetch_add(1, Relaxed);
                self.refuse();
                return;
            }
        }
        let headers = resp
            .headers
            .iter()
            .filter(|(k, _)| stored_header(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.head = Some((status, headers));
    }

    /// One body chunk; `true` while the fill is still going.
    pub fn on_body(&mut self, chunk: Option<&Bytes>, end: bool) -> bool {
        if self.tx.is_none() || self.head.is_none() {
            return false;
        }
        if let Some(c) = chunk {
            if self.body.len() + c.len() > self.cache.max_entry {
                self.cache.stats.not_stored_size.fetch_add(1, Relaxed);
                self.body = BytesMut::new();
                self.refuse();
                return false;
            }
            self.body.extend_from_slice(c);
        }
        if end {
            let (status, headers) = self.head.take().expect("checked");
            let stored = Stored {
                status,
                headers,
                body: std::mem::take(&mut self.body).freeze(),
                ttl: self.ttl,
            };
            self.cache.cache.insert(self.key, Arc::new(stored));
            self.cache.stats.stored.fetch_add(1, Relaxed);
            if let Some(tx) = self.tx.take() {
                self.cache.finish(&self.key, tx, STORED);
            }
            return false;
        }
        true
    }

    fn refuse(&mut self) {
        self.head = None;
        if let Some(tx) = self.tx.take() {
            self.cache.finish(&self.key, tx, REFUSED);
        }
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        // The leader ended without a complete 2xx response (error, client
        // gone, cut body): let a waiter take over.
        if let Some(tx) = self.tx.take() {
            self.cache.inflight.lock().unwrap().remove(&self.key);
            drop(tx);
        }
    }
}

/// The request-side state of a cacheable call (in the request context).
pub struct CallCache {
    /// Set for the leader of a miss.
    pub fill: Option<Fill>,
}

impl CallCache {
    pub fn on_head(&mut self, resp: &mut ResponseHeader) -> Result<()> {
        if let Some(f) = self.fill.as_mut() {
            f.on_head(resp);
        }
        crate::http::answer::cache_miss(resp)
    }

    pub fn on_body(&mut self, body: &Option<Bytes>, end: bool) {
        if let Some(f) = self.fill.as_mut() {
            if !f.on_body(body.as_ref(), end) {
                self.fill = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> &'static ResultCache {
        Box::leak(Box::new(ResultCache::new(&ResultCacheConfig {
            max_bytes: 1 << 20,
            max_entry_bytes: 100,
            wait_ms: 2000,
            settle_ms: 0,
        })))
    }

    fn ok_head() -> ResponseHeader {
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.insert_header("content-type", "text/plain").unwrap();
        h.insert_header("x-ol-timing", "run=1").unwrap();
        h
    }

    #[tokio::test]
    async fn fill_then_hit_and_coalesce() {
        let c = cache();
        let k = ResultCache::key("f", "v1", "GET", "/run/f", "", b"");
        assert_ne!(k, ResultCache::key("f", "v2", "GET", "/run/f", "", b""));
        let ttl = Duration::from_secs(5);
        let Lookup::Fill(mut fill) = c.lookup(k, ttl).await else {
            panic!("first lookup fills")
        };
        let waiter = tokio::spawn(async move { matches!(c.lookup(k, ttl).await, Lookup::Hit(_)) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        fill.on_head(&ok_head());
        assert!(fill.on_body(Some(&Bytes::from_static(b"hi")), false));
        assert!(!fill.on_body(None, true));
        assert!(waiter.await.unwrap(), "the waiter sees the stored result");
        let Lookup::Hit(s) = c.lookup(k, ttl).await else {
            panic!("hit")
        };
        assert_eq!(&s.body[..], b"hi");
        assert!(s.headers.iter().all(|(k, _)| k != "x-ol-timing"));
        assert_eq!(c.stats.coalesced.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn errors_and_big_bodies_are_not_stored() {
        let c = cache();
        let ttl = Duration::from_secs(5);
        let k = ResultCache::key("f", "v1", "GET", "/run/f", "", b"");
        let Lookup::Fill(mut fill) = c.lookup(k, ttl).await else {
            panic!()
        };
        let waiter = tokio::spawn(async move { matches!(c.lookup(k, ttl).await, Lookup::Miss) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        fill.on_head(&ResponseHeader::build(500, None).unwrap());
        assert!(waiter.await.unwrap(), "waiters go upstream after an error");
        drop(fill);
        let Lookup::Fill(mut fill) = c.lookup(k, ttl).await else {
            panic!("nothing stored")
        };
        fill.on_head(&ok_head());
        assert!(!fill.on_body(Some(&Bytes::from(vec![b'x'; 101])), false));
        drop(fill);
        assert!(matches!(c.lookup(k, ttl).await, Lookup::Fill(_)));
        assert_eq!(c.size().0, 0);
    }

    #[tokio::test]
    async fn a_dropped_leader_hands_over() {
        let c = cache();
        let ttl = Duration::from_secs(5);
        let k = ResultCache::key("g", "v1", "POST", "/run/g", "", b"{}");
        let Lookup::Fill(fill) = c.lookup(k, ttl).await else {
            panic!()
        };
        let waiter = tokio::spawn(async move { matches!(c.lookup(k, ttl).await, Lookup::Fill(_)) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(fill);
        assert!(waiter.await.unwrap());
    }
}
