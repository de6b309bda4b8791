//! The caches at the proxy, wired together: the function cache
//! ([`code`], with what it learns from packages in [`package`]), the code
//! store front ([`front`]), the result cache ([`results`]) and the import
//! index (`crate::state::warm`, which lives with the workers it describes).
//!
//! They are process-wide (built once from the startup config by
//! [`init`]): a cached package or result does not depend on the routing
//! config, so a reload keeps them. `[code_store]` and `[result_cache]`
//! changes need a restart.
//!
//! `request/` calls in at three points and keeps one [`CallState`] per
//! request: the package lookup and result-cache lookup in `request_filter`
//! ([`Caches::before_upstream`]), the response head ([`on_response`]) and
//! body ([`on_body`]); the admin listener sends `/registry` requests to
//! [`Caches::code`].

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use config::wire::Timing;
use config::ProxyConfig;
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

pub mod code;
mod front;
pub mod package;
pub mod results;

use crate::http::answer::{self, Served};
use crate::http::body::{self, BodyRead};
use crate::state::warm::{now_ms, Reports};
use crate::state::workers::Worker;
use code::CodeStore;
use package::{FnPackage, MAX_PACKAGES};
use results::{CallCache, Lookup, ResultCache};

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

/// Per-request cache state (in `request::ctx::Ctx`).
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
    /// routing key already made `request/` buffer it.
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
                tracing::warn!("function cache: {name}: {}", e.0);
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
            None => match body::read(session, body_limit, true).await? {
                BodyRead::Whole(b) => b,
                // Too large to key on: served, never cached.
                BodyRead::TooLarge => {
                    state.call = Some(CallCache { fill: None });
                    self.results.stats.misses.fetch_add(1, Relaxed);
                    return Ok(Before::Upstream);
                }
                BodyRead::Cut => {
                    let msg = format!(
                        "request body is larger than {body_limit} bytes, the limit for caching its result"
                    );
                    let by = Served {
                        worker: None,
                        policy,
                    };
                    answer::text(session, by, 413, &msg, false, None).await?;
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
                answer::cache_hit(session, policy, s.status, &s.headers, &s.body).await?;
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

/// The response head from a worker: the import index learns that
/// `worker` ran the function (its `x-ol-timing`, `timing`, says how it
/// started it), and a cacheable call keeps the head and says
/// `x-ol-cache: miss`.
pub fn on_response(
    state: &mut CallState,
    resp: &mut ResponseHeader,
    worker: Option<&Worker>,
    timing: Option<&Timing>,
) -> Result<()> {
    if let (Some(c), Some(w), Some(t)) = (get(), worker, timing) {
        if state.function_hash != 0 {
            c.reports.count(t.start);
            // warm_ms = 0: the import index is off, nothing is recorded.
            if c.warm_ms != 0 {
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
