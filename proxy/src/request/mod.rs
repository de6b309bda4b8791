//! The request path: ol-edge's `ProxyHttp` implementation, the only code
//! that sees pingora's public `Session`. Every response the proxy writes
//! itself goes through `crate::http::answer`.
//!
//! - `mod.rs`: the hooks, each a few lines ([`OlProxy`]).
//! - `ctx.rs`: the per-request context and the slots it holds.
//! - `decide.rs`: `request_filter`'s steps, from the path to the picks.
//! - `fail.rs`: a pingora error as a status and a reason.
//!
//! Where each pingora hook runs, and what ol-edge does there:
//!
//! | hook (in pingora's order) | runs | ol-edge does |
//! |---|---|---|
//! | `new_ctx` | once per request, before anything is read past the header | counts the request in flight (for shutdown drain), starts the clock |
//! | `early_request_filter` | first, once the request head is parsed | ends the head deadline (`crate::conns`), turns on HTTP/1.1 pipelining, sets the client keep-alive to `timeouts.idle_keepalive_ms` |
//! | `request_filter` | after the request header is parsed | loads the snapshot, then `decide.rs`: name inspection (`/run/<name>`, a gRPC service, a `[[paths]]` prefix; 400/404), the route, policy and experiment arm, the policy's keys (cookie, header, query; the body only for a JSON path or gRPC field, 413 beyond the limit); result-cache hits (`caches/`); while no worker is healthy, waits in the hold (`admission.hold_ms`; 503 with `Retry-After` past it); asks the policy (with the function's packages and the import index) for an ordered list of healthy workers |
//! | `upstream_peer` | before each connect attempt (again after a retryable failure) | after refusals by every pick, waits in the hold (`state::admission`) and starts over; takes the next worker of the order, holds an in-flight slot on it, builds the peer with the configured timeouts |
//! | `fail_to_connect` | a connect attempt failed | counts a failed health check for the worker (passive health), and marks the error retryable while the policy's picks and `retries` allow; the next `upstream_peer` takes the next pick |
//! | `upstream_response_filter` | the worker's response head, before anything goes downstream | a refusal (`x-ol-refused`, nothing ran) with the body still in the retry buffer becomes a retryable error: the next pick within the retry budget, else the hold |
//! | `error_while_proxy` | a failure after the request was sent | a refusal is retried whatever the method; anything else as pingora's default (never for non-idempotent methods) |
//! | `upstream_response_body_filter` | each body chunk from the worker | enforces `timeouts.total_ms`; at the end of the worker's response releases the in-flight slot (before the client sees that end, so its next call does not meet this one) |
//! | `upstream_response_trailer_filter` | trailers from the worker (gRPC's status) | releases the in-flight slot, as at the end of the body |
//! | `response_filter` | before the response header goes to the client | adds `x-ol-worker` and `x-ol-policy`; `x-ol-cache: miss` for a cacheable function, whose 2xx head the result cache keeps; the import index notes that the worker ran the function (`caches/`) |
//! | `response_body_filter` | each body chunk to the client | the result cache collects a fill (bounded) and stores it at the end |
//! | `fail_to_proxy` | the request failed for good | answers 502/503/504/400 with a one-line reason and the `x-ol-*` headers |
//! | `logging` | at the end of every request | starts the next head's deadline (`crate::conns`); metrics by route, policy and worker; the worker's latency EWMA; releases the in-flight slot if the response did not (errors, header-only responses) |
//!
//! Status, headers, body and trailers from workers pass through unchanged:
//! pingora strips hop-by-hop headers and re-frames the body per protocol.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use config::wire::{Timing, REFUSED_DRAINING, X_OL_REFUSED, X_OL_TIMING};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::ErrorType;

mod ctx;
mod decide;
mod fail;

pub use ctx::Ctx;

/// pingora's bound on attempts per request (`ServerConf::max_retries`):
/// ours are tighter (`retries`, the retry budget, the hold's deadline).
pub const MAX_ATTEMPTS: usize = 256;

/// The error type of a worker's refusal being retried.
const REFUSED: &str = "refused";

use crate::http::answer;
use crate::state::admission::{Refused, Wake, BUDGET, HOLD};
use crate::state::outliers;
use crate::state::warm::now_ms;
use crate::state::State;
use ctx::AfterRefusal;

/// The proxy application; `state` holds the swappable snapshot.
pub struct OlProxy {
    pub state: Arc<State>,
}

#[async_trait]
impl ProxyHttp for OlProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new()
    }

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        // The head is complete: its deadline is off until the request ends.
        crate::conns::head_read();
        // Pipelined HTTP/1.1 requests: pingora (v1/server.rs, `reuse`)
        // drops a connection whose read went past this request unless
        // pipelining is on; with it on, the extra bytes start the next
        // request, answered in order. It carries over keep-alive reuses.
        session.set_pipelining_enabled(true);
        // pingora keeps an HTTP/1.1 connection for the next request with
        // no time limit; ours is timeouts.idle_keepalive_ms.
        if session.get_keepalive().is_some() {
            let snap = self.state.snap.load();
            let idle = crate::conns::idle_secs(snap.config.timeouts.idle_keepalive_ms);
            session.set_keepalive(Some(idle));
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        decide::run(&self.state, session, ctx).await
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        if ctx.attempt >= ctx.picks.len() && ctx.refusals > 0 {
            // Every pick refused the call (or the budget stopped retrying at
            // once): it waits for a slot of its function, then starts over.
            hold_for_a_slot(ctx).await?;
            ctx.attempt = 0;
            ctx.sweep = true;
        }
        ctx.attempts += 1;
        let snap = ctx.snap.as_ref().expect("request_filter sets the snapshot");
        let Some(i) = ctx.picks.get(ctx.attempt) else {
            return Error::e_explain(ErrorType::HTTPStatus(503), "no healthy worker left to try");
        };
        let w = &snap.workers[i];
        let t = &snap.config.timeouts;
        let now = Instant::now();
        let deadline = *ctx
            .deadline
            .get_or_insert(now + Duration::from_millis(t.total_ms));
        let left = deadline.saturating_duration_since(now);
        let mut peer = HttpPeer::new(w.addr, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_millis(t.connect_ms).min(left));
        peer.options.read_timeout = Some(Duration::from_millis(t.read_ms).min(left));
        peer.options.write_timeout = Some(Duration::from_millis(t.write_ms));
        peer.options.idle_timeout = Some(Duration::from_millis(t.idle_ms));
        if snap.config.workers.h2c {
            peer.options.set_http_version(2, 2);
        }
        ctx.worker_header = Some(w.header.clone());
        ctx.attach(i);
        ctx.worker = Some(i);
        ctx.upstream_started = Some(now);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Passive health: a refused or timed-out connect counts as a failed
        // check, so a dead worker leaves the rotation before the next probe.
        if let (Some(snap), Some(i)) = (&ctx.snap, ctx.worker) {
            if matches!(
                e.etype(),
                ErrorType::ConnectRefused | ErrorType::ConnectTimedout | ErrorType::ConnectNoRoute
            ) {
                let h = &snap.config.health;
                if h.enabled {
                    let w = &snap.workers[i];
                    if let Some(now) = w.record_check(false, h.rise, h.fall) {
                        snap.routing.table.set_healthy(i, now);
                        tracing::info!("worker {} is now unhealthy (connect failed)", w.addr);
                    }
                }
                let failed = outliers::Outcome::PlatformFailure;
                if outliers::record(&snap.workers, i, failed, &snap.config.outliers, now_ms())
                    .is_some()
                {
                    snap.routing.table.set_healthy(i, false);
                }
            }
        }
        let max = ctx.snap.as_ref().map_or(0, |s| s.config.retries);
        if ctx.attempt + 1 < ctx.picks.len() && ctx.connect_retries < max {
            ctx.attempt += 1;
            ctx.retries += 1;
            ctx.connect_retries += 1;
            e.set_retry(true);
        } else {
            e.set_retry(false);
        }
        e
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        note_outcome(ctx, resp);
        // A refusal before any function code ran: try elsewhere, or wait,
        // if the request can be sent again (its body is all in pingora's
        // retry buffer); otherwise the worker's answer goes to the client.
        if !resp.headers.contains_key(X_OL_REFUSED)
            || session.as_ref().retry_buffer_truncated()
            || ctx.attempts + 1 >= MAX_ATTEMPTS
        {
            return Ok(());
        }
        let Some(snap) = ctx.snap.clone() else {
            return Ok(());
        };
        let a = &snap.config.admission;
        let more = ctx.attempt + 1 < ctx.picks.len();
        let next = if more && (ctx.sweep || BUDGET.try_retry(a.retry_ratio, a.min_retries_per_s)) {
            AfterRefusal::NextPick
        } else if a.hold_ms > 0 {
            AfterRefusal::Hold
        } else {
            return Ok(());
        };
        ctx.refusals += 1;
        ctx.after_refusal = Some(next);
        let counted = [
            ctx.worker
                .and_then(|i| snap.workers.get(i))
                .map(|w| &w.stats),
            snap.routes.stats.get(ctx.route),
            snap.policy_stats.get(ctx.policy),
        ];
        for s in counted.into_iter().flatten() {
            s.refused.fetch_add(1, Ordering::Relaxed);
        }
        Error::e_explain(
            ErrorType::Custom(REFUSED),
            "the worker refused the call before running it",
        )
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &Ctx,
        e: &Error,
        _context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        // A refusal being retried is routine (a function at its limits),
        // counted in `..._refused_total`; a line per refusal would flood.
        *e.etype() == ErrorType::Custom(REFUSED)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if let Some(next) = ctx.after_refusal.take() {
            // Nothing ran: any method may go again.
            ctx.release_refused();
            ctx.retries += 1;
            ctx.attempt = match next {
                AfterRefusal::NextPick => ctx.attempt + 1,
                AfterRefusal::Hold => ctx.picks.len(),
            };
            e.set_retry(true);
            return e;
        }
        // pingora's default: only idempotent requests, only with the whole
        // body in the retry buffer, as its reuse rule decides.
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let Some(d) = ctx.deadline {
            if Instant::now() > d {
                return Error::e_explain(
                    ErrorType::ReadTimedout,
                    "response exceeded timeouts.total_ms",
                );
            }
        }
        if end_of_stream {
            // The worker is done with this call. Released here, before the
            // last bytes go downstream, a client's next call never finds
            // its previous one still in flight (and spilled off its home
            // worker by the load bound) as it could when released at logging.
            ctx.release();
        }
        Ok(None)
    }

    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        _trailers: &mut http::HeaderMap,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Trailers end a response (gRPC's status): as at the end of stream.
        ctx.release();
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // The worker's timing feeds experiments and the import index only.
        if ctx.arm.is_some() || ctx.caches.function_hash != 0 {
            ctx.timing = resp
                .headers
                .get(X_OL_TIMING)
                .and_then(|v| v.to_str().ok())
                .and_then(Timing::parse);
        }
        let worker = match (&ctx.snap, ctx.worker) {
            (Some(s), Some(i)) => s.workers.get(i),
            _ => None,
        };
        let worker = worker.map(|w| &**w);
        crate::caches::on_response(&mut ctx.caches, resp, worker, ctx.timing.as_ref())?;
        answer::stamp(resp, ctx.served())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        crate::caches::on_body(&mut ctx.caches, body, end_of_stream);
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let worker = match (&ctx.snap, ctx.worker) {
            (Some(s), Some(i)) => format!("worker {}", s.workers[i].addr),
            _ => "worker".to_string(),
        };
        let t = ctx.snap.as_ref().map(|s| &s.config.timeouts);
        let (code, reason, retry_after) = match ctx.answer.take() {
            Some(a) => a,
            None => {
                let (code, reason) = fail::status_and_reason(e, &worker, t);
                (code, reason, None)
            }
        };
        if session.response_written().is_some() {
            // The head (and maybe part of the body) is out: the only honest
            // signal left is to cut the connection, so that the client sees
            // a truncated body instead of a complete-looking one.
            session.set_keepalive(None);
        } else if code > 0 {
            let by = ctx.served();
            if let Err(we) = answer::text(session, by, code, &reason, false, retry_after).await {
                tracing::debug!("cannot send error response: {we}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        ctx.release();
        crate::conns::request_done();
        let Some(snap) = ctx.snap.as_ref() else {
            return;
        };
        let written = session.response_written();
        let status = written.map_or(0, |r| r.status.as_u16());
        if status >= 400 {
            let level = written.and_then(|r| r.headers.get(config::wire::X_OL_ERROR));
            crate::state::metrics::count_error_level(level.map(|v| v.as_bytes()));
        }
        let latency = ctx.started.elapsed().as_micros() as u64;
        let error = e.is_some();
        if let Some(s) = snap.routes.stats.get(ctx.route) {
            s.record(status, latency, error, ctx.retries);
        }
        if let Some(s) = snap.policy_stats.get(ctx.policy) {
            s.record(status, latency, error, ctx.retries);
        }
        if let Some((e, a)) = ctx.arm {
            let worker = ctx.worker.map(|i| snap.workers[i].key.as_str());
            snap.experiments
                .arm(e, a)
                .stats
                .record(status, latency, error, worker, ctx.timing);
        }
        if let Some(i) = ctx.worker {
            snap.workers[i]
                .stats
                .record(status, latency, error, ctx.retries);
            if !error {
                if let Some(t) = ctx.upstream_started {
                    let us = t.elapsed().as_micros().min(u32::MAX as u128) as u32;
                    snap.routing.table.record_latency(i, us);
                }
            }
        }
    }
}

/// What the worker's response head says about the worker itself: a
/// `draining` refusal takes it out of rotation at once; for a function
/// call, its own 502/503/504 is a platform failure toward ejection and
/// any other answer ends a failure streak (`outliers::outcome_of`).
fn note_outcome(ctx: &Ctx, resp: &ResponseHeader) {
    let (Some(snap), Some(i)) = (&ctx.snap, ctx.worker) else {
        return;
    };
    let Some(w) = snap.workers.get(i) else {
        return;
    };
    if let Some(why) = resp.headers.get(X_OL_REFUSED) {
        if why.as_bytes() == REFUSED_DRAINING.as_bytes() && w.drain() {
            snap.routing.table.set_healthy(i, false);
            tracing::info!("worker {} is draining: out of rotation", w.addr);
        }
        return;
    }
    let Some(outcome) =
        outliers::outcome_of(ctx.function_call, resp.status.as_u16(), &resp.headers)
    else {
        return;
    };
    if outliers::record(&snap.workers, i, outcome, &snap.config.outliers, now_ms()).is_some() {
        snap.routing.table.set_healthy(i, false);
    }
}

/// The hold after refusals: the call waits (up to what is left of
/// `admission.hold_ms`, and of `timeouts.total_ms`) until a call of its
/// function ends at this proxy or a worker's health changes. `Err`: 503
/// with `Retry-After`, its reason in `ctx.answer`.
async fn hold_for_a_slot(ctx: &mut Ctx) -> Result<()> {
    let Some(snap) = ctx.snap.clone() else {
        return Error::e_explain(ErrorType::HTTPStatus(503), "no snapshot");
    };
    let a = &snap.config.admission;
    let now = Instant::now();
    let mut until = *ctx
        .hold_until
        .get_or_insert(now + Duration::from_millis(a.hold_ms));
    if let Some(d) = ctx.deadline {
        until = until.min(d);
    }
    let name = ctx.function.clone();
    let mut woken = false;
    let waited = HOLD
        .wait(
            ctx.function_key,
            &name,
            a.hold_queue,
            until,
            Wake::HealthOrRelease,
            || std::mem::replace(&mut woken, true),
        )
        .await;
    let n = ctx.picks.len();
    let why = match waited {
        Ok(_) => return Ok(()),
        Err(Refused::Full) => format!(
            "every worker refused {name} (at its limits) and {} of its calls are already waiting (admission.hold_queue)",
            a.hold_queue
        ),
        Err(Refused::TimedOut) => format!(
            "no worker could take {name} in time: {n} worker{} refused it (at their limits) through admission.hold_ms ({} ms)",
            if n == 1 { "" } else { "s" },
            a.hold_ms
        ),
        Err(Refused::TooManyFunctions) => format!(
            "every worker refused {name} (at its limits), and calls of {} other functions are already held",
            crate::state::admission::MAX_HELD_FUNCTIONS
        ),
    };
    ctx.answer = Some((503, why.clone(), Some(1)));
    // The proxy answers this itself: no worker is named.
    ctx.worker = None;
    ctx.worker_header = None;
    Error::e_explain(ErrorType::HTTPStatus(503), why)
}
