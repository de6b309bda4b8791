//! The caches at the proxy, wired together: the function cache and code
//! store front ([`crate::codestore`]), the result cache
//! ([`crate::result_cache`]) and the import index ([`crate::import_index`]).
//!
//! They are process-wide (built once from the startup config by
//! [`init`]): a cached package or result does not depend on the routing
//! config, so a reload keeps them. `[code_store]` and `[result_cache]`
//! changes need a restart.
//!
//! `service` calls in at four points and keeps one [`CallState`] per
//! request: `/registry` requests ([`Caches::code`] serves them), the
//! package lookup and result-cache lookup in `request_filter`
//! ([`Caches::before_upstream`]), the response head ([`on_response`]) and
//! body ([`on_body`]).

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use config::ProxyConfig;
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use crate::codestore::{CodeStore, FnPackage, MAX_PACKAGES};
use crate::import_index::{now_ms, Reports};
use crate::result_cache::{answer_hit, CallCache, Lookup, ResultCache};
use crate::workers::Worker;

pub struct Caches {
    /// `None` when `code_store.backing` is empty.
    pub code: Option<CodeStore>,
    pub results: ResultCache,
    pub reports: Reports,
    warm_ms: u64,
}

static CACHES: OnceLock<Caches> = OnceLock::new();

/// Builds the caches from the startup config (once; later calls keep the
/// first).
pub fn init(cfg: &ProxyConfig) -> Result<(), String> {
    let code = if cfg.code_store.backing.trim().is_empty() {
        None
    } else {
        Some(CodeStore::new(&cfg.code_store)?)
    };
    let _ = CACHES.set(Caches {
        code,
        results: ResultCache::new(&cfg.result_cache),
        reports: Reports::default(),
        warm_ms: cfg.code_store.warm_ms,
    });
    Ok(())
}

/// The caches, once [`init`] ran.
#[inline]
pub fn get() -> Option<&'static Caches> {
    CACHES.get()
}

/// Per-request cache state (in `service::Ctx`).
#[derive(Default)]
pub struct CallState {
    /// `policies::hash_str` of the function name (0: not a `/run` call).
    pub function_hash: u64,
    /// The function's current package, when the function cache knows it.
    pub pkg: Option<Arc<FnPackage>>,
    /// Set for calls of a cacheable function that went upstream.
    pub call: Option<CallCache>,
}

impl CallState {
    /// Fills `out` with the function's package set (heaviest first) for
    /// `policies::Request::packages`; returns how many. No allocation.
    pub fn packages<'a>(&'a self, out: &mut [policies::Package<'a>; MAX_PACKAGES]) -> usize {
        let Some(p) = &self.pkg else { return 0 };
        let mut n = 0;
        for (name, cost) in p.packages.iter().take(MAX_PACKAGES) {
            out[n] = policies::Package { name, cost: *cost };
            n += 1;
        }
        n
    }
}

/// What `before_upstream` decided.
pub enum Before {
    /// The response is written (a hit, or an error): `request_filter`
    /// returns `Ok(true)`.
    Answered,
    /// Go on to the policy and a worker.
    Upstream,
}

impl Caches {
    /// For a `/run/<name>` call: learns the function's package (version,
    /// `cache` policy, package set) from the function cache, and answers
    /// from the result cache when it can. `body` is the body when the
    /// routing key already made `service` buffer it.
    pub async fn before_upstream(
        &'static self,
        session: &mut Session,
        state: &mut CallState,
        name: &str,
        body: Option<Bytes>,
        body_limit: usize,
        policy: Option<&HeaderValue>,
    ) -> Result<Before> {
        let Some(code) = &self.code else {
            return Ok(Before::Upstream);
        };
        let pkg = match code.get(name).await {
            Ok(p) => p,
            Err(e) => {
                log::warn!("function cache: {name}: {}", e.0);
                None
            }
        };
        state.pkg = pkg.clone();
        let Some(pkg) = pkg else {
            return Ok(Before::Upstream);
        };
        let Some(spec) = pkg.config.cache.as_ref() else {
            return Ok(Before::Upstream);
        };
        let req = session.req_header();
        if !spec.allows(req.method.as_str()) {
            return Ok(Before::Upstream);
        }
        let body = match body {
            Some(b) => b,
            None => match read_body(session, body_limit, true).await? {
                BodyRead::Whole(b) => b,
                // Too large to key on: served, never cached.
                BodyRead::TooLarge => {
                    state.call = Some(CallCache { fill: None });
                    self.results.stats.misses.fetch_add(1, Relaxed);
                    return Ok(Before::Upstream);
                }
                BodyRead::Cut => {
                    let msg = format!(
                        "request body is larger than {body_limit} bytes, the limit for caching its result\n"
                    );
                    let mut h = ResponseHeader::build(413, Some(4))?;
                    h.insert_header("content-type", "text/plain; charset=utf-8")?;
                    h.insert_header("content-length", msg.len().to_string())?;
                    h.insert_header("x-ol-worker", "none")?;
                    h.insert_header(
                        "x-ol-policy",
                        policy.cloned().unwrap_or(HeaderValue::from_static("none")),
                    )?;
                    session.set_keepalive(None);
                    session.write_response_header(Box::new(h), false).await?;
                    session
                        .write_response_body(Some(Bytes::from(msg)), true)
                        .await?;
                    return Ok(Before::Answered);
                }
            },
        };
        let req = session.req_header();
        let key = ResultCache::key(
            name,
            &pkg.version,
            req.method.as_str(),
            req.uri.path(),
            req.uri.query().unwrap_or(""),
            &body,
        );
        let ttl = Duration::from_millis(spec.ttl_ms);
        match self.results.lookup(key, ttl).await {
            Lookup::Hit(s) => {
                answer_hit(session, &s, policy).await?;
                Ok(Before::Answered)
            }
            Lookup::Fill(f) => {
                // Results of a version workers may not run yet are not kept.
                let fill = pkg.settled(self.results.settle).then_some(f);
                state.call = Some(CallCache { fill });
                Ok(Before::Upstream)
            }
            Lookup::Miss => {
                state.call = Some(CallCache { fill: None });
                Ok(Before::Upstream)
            }
        }
    }
}

pub(crate) enum BodyRead {
    Whole(Bytes),
    /// Content-Length says it is over the limit; nothing was read.
    TooLarge,
    /// Over the limit after part of it was read: cannot be forwarded.
    Cut,
}

/// Reads a request body up to `limit` bytes. With `replay`, pingora's
/// retry buffer keeps it for the worker (as `service` does for JSON
/// routing keys): the result cache keys on the body, then forwards it.
pub(crate) async fn read_body(
    session: &mut pingora::protocols::http::ServerSession,
    limit: usize,
    replay: bool,
) -> Result<BodyRead> {
    let h = &session.req_header().headers;
    let len = h
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if len == Some(0) || (len.is_none() && session.is_body_empty()) {
        return Ok(BodyRead::Whole(Bytes::new()));
    }
    if len.is_some_and(|l| l > limit) {
        return Ok(BodyRead::TooLarge);
    }
    if replay {
        session.enable_retry_buffering();
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = session.read_request_body().await? {
        if buf.len() + chunk.len() > limit {
            return Ok(BodyRead::Cut);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(BodyRead::Whole(buf.freeze()))
}

/// The response head from a worker: the import index learns that
/// `worker` ran the function (it sent `x-ol-timing`), and a cacheable
/// call keeps the head and says `x-ol-cache: miss`.
pub fn on_response(
    state: &mut CallState,
    resp: &mut ResponseHeader,
    worker: Option<&Worker>,
) -> Result<()> {
    if let (Some(c), Some(w)) = (get(), worker) {
        if state.function_hash != 0 {
            let ran = resp
                .headers
                .get("x-ol-timing")
                .is_some_and(|t| c.reports.count(t.as_bytes()));
            // warm_ms = 0: the import index is off, nothing is recorded.
            if ran && c.warm_ms != 0 {
                let until = now_ms() + c.warm_ms;
                w.warm.record(state.function_hash, until);
                if let Some(p) = &state.pkg {
                    for (name, _) in &p.packages {
                        w.warm.record(policies::hash_str(name), until);
                    }
                }
            }
        }
    }
    if let Some(call) = state.call.as_mut() {
        call.on_head(resp)?;
    }
    Ok(())
}

/// A response body chunk on its way to the client.
#[inline]
pub fn on_body(state: &mut CallState, body: &Option<Bytes>, end: bool) {
    if let Some(call) = state.call.as_mut() {
        call.on_body(body, end);
    }
}

/// Cache metrics (Prometheus text) for `/metrics`.
pub fn render(out: &mut String, workers: &[Arc<Worker>]) {
    let Some(c) = get() else { return };
    let r = &c.results.stats;
    let (entries, bytes) = c.results.size();
    let _ = writeln!(out, "# HELP ol_proxy_result_cache_requests_total Calls of cacheable functions by outcome (coalesced: waited for an identical call first).\n# TYPE ol_proxy_result_cache_requests_total counter");
    for (k, v) in [
        ("hit", &r.hits),
        ("miss", &r.misses),
        ("coalesced", &r.coalesced),
        ("wait_timeout", &r.wait_timeouts),
    ] {
        let _ = writeln!(
            out,
            "ol_proxy_result_cache_requests_total{{outcome=\"{k}\"}} {}",
            v.load(Relaxed)
        );
    }
    let _ = writeln!(out, "# HELP ol_proxy_result_cache_fills_total Responses stored, or not stored and why.\n# TYPE ol_proxy_result_cache_fills_total counter");
    for (k, v) in [
        ("stored", &r.stored),
        ("status", &r.not_stored_status),
        ("size", &r.not_stored_size),
    ] {
        let _ = writeln!(
            out,
            "ol_proxy_result_cache_fills_total{{result=\"{k}\"}} {}",
            v.load(Relaxed)
        );
    }
    let hits = r.hits.load(Relaxed) as f64;
    let all = hits + r.misses.load(Relaxed) as f64;
    let _ = writeln!(out, "# HELP ol_proxy_result_cache_hit_ratio Hits over calls of cacheable functions.\n# TYPE ol_proxy_result_cache_hit_ratio gauge\nol_proxy_result_cache_hit_ratio {}", if all > 0.0 { hits / all } else { 0.0 });
    let _ = writeln!(out, "# HELP ol_proxy_result_cache_entries Stored responses.\n# TYPE ol_proxy_result_cache_entries gauge\nol_proxy_result_cache_entries {entries}");
    let _ = writeln!(out, "# HELP ol_proxy_result_cache_bytes Weighed bytes of stored responses.\n# TYPE ol_proxy_result_cache_bytes gauge\nol_proxy_result_cache_bytes {bytes}");
    if let Some(code) = &c.code {
        let s = &code.stats;
        let (entries, bytes) = code.size();
        let _ = writeln!(out, "# HELP ol_proxy_function_cache_requests_total Function cache lookups (the code store API and /run calls).\n# TYPE ol_proxy_function_cache_requests_total counter");
        for (k, v) in [
            ("hit", &s.hits),
            ("miss", &s.misses),
            ("error", &s.load_errors),
        ] {
            let _ = writeln!(
                out,
                "ol_proxy_function_cache_requests_total{{outcome=\"{k}\"}} {}",
                v.load(Relaxed)
            );
        }
        let hits = s.hits.load(Relaxed) as f64;
        let all = hits + s.misses.load(Relaxed) as f64;
        let _ = writeln!(out, "# HELP ol_proxy_function_cache_hit_ratio Hits over function cache lookups.\n# TYPE ol_proxy_function_cache_hit_ratio gauge\nol_proxy_function_cache_hit_ratio {}", if all > 0.0 { hits / all } else { 0.0 });
        let _ = writeln!(out, "# HELP ol_proxy_function_cache_entries Cached functions (absent ones included).\n# TYPE ol_proxy_function_cache_entries gauge\nol_proxy_function_cache_entries {entries}");
        let _ = writeln!(out, "# HELP ol_proxy_function_cache_bytes Weighed bytes of cached packages.\n# TYPE ol_proxy_function_cache_bytes gauge\nol_proxy_function_cache_bytes {bytes}");
        let _ = writeln!(out, "# HELP ol_proxy_code_store_changes_total Uploads and deletes through the proxy.\n# TYPE ol_proxy_code_store_changes_total counter");
        for (k, v) in [
            ("upload", &s.uploads),
            ("upload_refused", &s.uploads_refused),
            ("delete", &s.deletes),
        ] {
            let _ = writeln!(
                out,
                "ol_proxy_code_store_changes_total{{op=\"{k}\"}} {}",
                v.load(Relaxed)
            );
        }
    }
    let now = now_ms();
    let _ = writeln!(out, "# HELP ol_proxy_import_index_entries Functions and packages the proxy believes each worker holds warm.\n# TYPE ol_proxy_import_index_entries gauge");
    for w in workers {
        let _ = writeln!(
            out,
            "ol_proxy_import_index_entries{{worker=\"{}\"}} {}",
            w.key,
            w.warm.live(now)
        );
    }
    let p = &c.reports;
    let _ = writeln!(out, "# HELP ol_proxy_worker_starts_total Starts reported by workers in x-ol-timing.\n# TYPE ol_proxy_worker_starts_total counter");
    for (k, v) in [
        ("cold", &p.cold),
        ("warm", &p.warm),
        ("unpaused", &p.unpaused),
        ("zygote", &p.zygote),
        ("other", &p.other),
    ] {
        let _ = writeln!(
            out,
            "ol_proxy_worker_starts_total{{start=\"{k}\"}} {}",
            v.load(Relaxed)
        );
    }
}
