//! The request path: ol-edge's `ProxyHttp` implementation.
//!
//! Where each pingora hook runs, and what ol-edge does there:
//!
//! | hook (in pingora's order) | runs | ol-edge does |
//! |---|---|---|
//! | `new_ctx` | once per request, before anything is read past the header | counts the request in flight (for shutdown drain), starts the clock |
//! | `early_request_filter` | first, once the request head is parsed | ends the head deadline (`conns.rs`), turns on HTTP/1.1 pipelining, sets the client keep-alive to `timeouts.idle_keepalive_ms` |
//! | `request_filter` | after the request header is parsed | name inspection (`/run/<name>`, 400/404), loads the snapshot, extracts the policy's keys (cookie, header, query; the body only for a JSON path, 413 beyond the limit); result-cache hits (`caches.rs`); asks the policy (with the function's packages and the import index) for an ordered list of healthy workers (503 when empty) |
//! | `upstream_peer` | before each connect attempt (again after a retryable failure) | takes the next worker of the order, holds an in-flight slot on it, builds the peer with the configured timeouts |
//! | `fail_to_connect` | a connect attempt failed | counts a failed health check for the worker (passive health), and marks the error retryable while the policy's picks and `retries` allow; the next `upstream_peer` takes the next pick |
//! | `error_while_proxy` | a failure after the request was sent | pingora's default: never retried for non-idempotent methods |
//! | `upstream_response_body_filter` | each body chunk from the worker | enforces `timeouts.total_ms`; at the end of the worker's response releases the in-flight slot (before the client sees that end, so its next call does not meet this one) |
//! | `upstream_response_trailer_filter` | trailers from the worker (gRPC's status) | releases the in-flight slot, as at the end of the body |
//! | `response_filter` | before the response header goes to the client | adds `x-ol-worker` and `x-ol-policy`; `x-ol-cache: miss` for a cacheable function, whose 2xx head the result cache keeps; the import index notes that the worker ran the function (`caches.rs`) |
//! | `response_body_filter` | each body chunk to the client | the result cache collects a fill (bounded) and stores it at the end |
//! | `fail_to_proxy` | the request failed for good | answers 502/503/504/400 with a one-line reason and the `x-ol-*` headers |
//! | `logging` | at the end of every request | starts the next head's deadline (`conns.rs`); metrics by route, policy and worker; the worker's latency EWMA; releases the in-flight slot if the response did not (errors, header-only responses) |
//!
//! Status, headers, body and trailers from workers pass through unchanged:
//! pingora strips hop-by-hop headers and re-frames the body per protocol.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use config::policy::KeySource;
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};

use policies::{Picks, Request};

use crate::inspect::{self, Target};
use crate::routing::PolicyId;
use crate::snapshot::{Snapshot, State, IN_FLIGHT};

const X_OL_WORKER: &str = "x-ol-worker";
const X_OL_POLICY: &str = "x-ol-policy";
static NONE: HeaderValue = HeaderValue::from_static("none");

/// The proxy application; `state` holds the swappable snapshot.
pub struct OlProxy {
    pub state: Arc<State>,
}

/// Counts a request in flight for as long as its context lives.
pub struct InFlight;

impl InFlight {
    fn new() -> InFlight {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per-request state shared by the hooks.
pub struct Ctx {
    snap: Option<Arc<Snapshot>>,
    route: usize,
    policy: PolicyId,
    policy_header: Option<HeaderValue>,
    picks: Picks,
    attempt: usize,
    /// The worker index (in `snap`) holding an in-flight slot.
    attached: Option<usize>,
    /// The last worker tried, kept for metrics and error messages.
    worker: Option<usize>,
    worker_header: Option<HeaderValue>,
    started: Instant,
    upstream_started: Option<Instant>,
    deadline: Option<Instant>,
    retries: u64,
    /// The caches' per-request state (`caches.rs`).
    caches: crate::caches::CallState,
    /// Experiment and arm (`crate::experiments`), when one applies.
    arm: Option<(usize, usize)>,
    /// The worker's `x-ol-timing`, parsed only for experiment calls.
    timing: Option<crate::experiments::Timing>,
    _in_flight: InFlight,
}

impl Ctx {
    /// Gives the in-flight slot back to the policies' state table.
    fn release(&mut self) {
        if let (Some(s), Some(i)) = (&self.snap, self.attached.take()) {
            s.routing.table.finish(i);
        }
    }
}

impl Drop for Ctx {
    /// Every exit path (success, error, cancelled task) releases the slot.
    fn drop(&mut self) {
        self.release();
    }
}

impl OlProxy {
    /// Answers from the proxy itself with a one-line text body.
    async fn answer(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        status: u16,
        reason: &str,
        keepalive: bool,
    ) -> Result<()> {
        let body = Bytes::from(format!("{}\n", one_line(reason)));
        let mut resp = ResponseHeader::build(status, Some(4))?;
        resp.insert_header("content-type", "text/plain; charset=utf-8")?;
        resp.insert_header("content-length", body.len().to_string())?;
        add_ol_headers(&mut resp, ctx)?;
        if !keepalive {
            session.set_keepalive(None);
        }
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await?;
        Ok(())
    }

    /// Answers a gRPC call from the proxy itself: trailers-only, HTTP 200,
    /// `grpc-status` `code` and a one-line `grpc-message`.
    async fn answer_grpc(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        code: u8,
        reason: &str,
    ) -> Result<()> {
        let msg: String = one_line(reason)
            .bytes()
            .map(|b| match b {
                b' '..=b'~' if b != b'%' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let mut resp = ResponseHeader::build(200, Some(4))?;
        resp.insert_header("content-type", "application/grpc")?;
        resp.insert_header("grpc-status", code.to_string())?;
        resp.insert_header("grpc-message", msg)?;
        add_ol_headers(&mut resp, ctx)?;
        session.write_response_header(Box::new(resp), true).await?;
        Ok(())
    }

    /// Reads the whole request body (bounded) so that a JSON key can be
    /// taken from it; pingora's retry buffer replays it to the worker.
    async fn buffer_body(&self, session: &mut Session, limit: usize) -> Result<Option<Bytes>> {
        if let Some(len) = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
        {
            if len > limit {
                return Ok(None);
            }
        }
        session.downstream_session.enable_retry_buffering();
        let mut buf = BytesMut::new();
        while let Some(chunk) = session.read_request_body().await? {
            if buf.len() + chunk.len() > limit {
                return Ok(None);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Some(buf.freeze()))
    }
}

fn add_ol_headers(resp: &mut ResponseHeader, ctx: &Ctx) -> Result<()> {
    resp.insert_header(
        X_OL_WORKER,
        ctx.worker_header.clone().unwrap_or_else(|| NONE.clone()),
    )?;
    resp.insert_header(
        X_OL_POLICY,
        ctx.policy_header.clone().unwrap_or_else(|| NONE.clone()),
    )?;
    Ok(())
}

/// The refusal of a body over `limits.inspect_body_bytes`.
fn too_big_to_inspect(limit: usize) -> String {
    format!("request body is larger than {limit} bytes, the limit for routing on its content")
}

fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[async_trait]
impl ProxyHttp for OlProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            snap: None,
            route: usize::MAX,
            policy: 0,
            policy_header: None,
            picks: Picks::new(),
            attempt: 0,
            attached: None,
            worker: None,
            worker_header: None,
            started: Instant::now(),
            upstream_started: None,
            deadline: None,
            retries: 0,
            caches: Default::default(),
            arm: None,
            timing: None,
            _in_flight: InFlight::new(),
        }
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
        let snap = self.state.snap.load_full();
        ctx.snap = Some(snap.clone());
        let limit = snap.config.limits.max_header_bytes;
        let head = head_size(session.req_header());
        if head > limit {
            let msg = format!("request head is {head} bytes; the limit is {limit}");
            self.answer(session, ctx, 431, &msg, false).await?;
            return Ok(true);
        }
        // Name inspection. A gRPC call routes as the function bound to its
        // service (grpc.rs), like /run/<function>; `ol.Lambda/Invoke` as the
        // function its message names (InvokeRequest.name, field 1), which
        // needs the message itself (kept for the policy key below).
        let mut grpc_body: Option<Bytes> = None;
        let grpc_fn = match crate::grpc::is_call(session.req_header()) {
            true => match crate::grpc::service_of(session.req_header().uri.path()) {
                Some(crate::grpc::INVOKE_SERVICE) => {
                    let limit = snap.config.limits.inspect_body_bytes;
                    let Some(body) = self.buffer_body(session, limit).await? else {
                        self.answer_grpc(session, ctx, 8, &too_big_to_inspect(limit))
                            .await?;
                        return Ok(true);
                    };
                    let name = crate::grpc::protobuf_key(&body, &[1])
                        .and_then(|b| String::from_utf8(b).ok())
                        .unwrap_or_default();
                    if let Err(e) = config::validate_function_name(&name) {
                        let msg = format!("ol.Lambda/Invoke: InvokeRequest.name: {e}");
                        self.answer_grpc(session, ctx, 3, &msg).await?;
                        return Ok(true);
                    }
                    grpc_body = Some(body);
                    Some(name)
                }
                Some(s) => crate::grpc::function_for(s, &snap).await,
                None => None,
            },
            false => None,
        };
        let (route, policy, prefix_len) = {
            let path = session.req_header().uri.path();
            match inspect::target(path) {
                Target::Function(name) => {
                    if let Err(e) = config::validate_function_name(name) {
                        let msg = format!("bad function name: {e}");
                        self.answer(session, ctx, 400, &msg, true).await?;
                        return Ok(true);
                    }
                    let (r, mut p) = snap.route_for_function(name);
                    ctx.arm = snap.experiments.assign(name, session.req_header());
                    if let Some((e, a)) = ctx.arm {
                        p = snap.experiments.arm(e, a).policy;
                    }
                    (r, p, None)
                }
                Target::Other if grpc_fn.is_some() => {
                    let (r, p) = snap.route_for_function(grpc_fn.as_deref().unwrap_or(""));
                    (r, p, None)
                }
                Target::Other => match snap.route_for_path(path) {
                    Some((len, r, p)) => (r, p, Some(len)),
                    None if crate::grpc::is_call(session.req_header()) => {
                        // A gRPC client reads a gRPC status, not a 404 page.
                        let msg = format!(
                            "unknown gRPC service or path {}: no function binds it",
                            path.chars().take(200).collect::<String>()
                        );
                        self.answer_grpc(session, ctx, 12, &msg).await?;
                        return Ok(true);
                    }
                    None => {
                        let msg = format!(
                            "no route for {}: functions are called at /run/<name>",
                            path.chars().take(200).collect::<String>()
                        );
                        self.answer(session, ctx, 404, &msg, true).await?;
                        return Ok(true);
                    }
                },
            }
        };
        ctx.route = route;
        ctx.policy = policy;
        let info = &snap.routing.policies[policy];
        ctx.policy_header = Some(match ctx.arm {
            Some((e, a)) => snap.experiments.arm(e, a).header.clone(),
            None => info.header.clone(),
        });

        // Content inspection: only when the policy needs a key in the body
        // (a JSON path, or a field of a gRPC call's first message; a field
        // by name is resolved with the service's descriptors, cached).
        let mut body_key: Option<Vec<u8>> = None;
        let mut buffered: Option<Bytes> = None;
        let json_path = info.needs.json_path();
        let pb_path = info.needs.protobuf_path().filter(|_| grpc_fn.is_some());
        if json_path.is_some() || pb_path.is_some() {
            let fields = match pb_path {
                Some(p) => {
                    let grpc_path = session.req_header().uri.path();
                    crate::grpc::field_numbers(p, grpc_path, &snap).await
                }
                None => None,
            };
            let limit = snap.config.limits.inspect_body_bytes;
            let body = match grpc_body.take() {
                Some(b) => Some(b),
                None => self.buffer_body(session, limit).await?,
            };
            let Some(body) = body else {
                self.answer(session, ctx, 413, &too_big_to_inspect(limit), false)
                    .await?;
                return Ok(true);
            };
            body_key = match (json_path, fields) {
                (Some(j), _) => inspect::json_key(&body, j),
                (None, Some(f)) => crate::grpc::protobuf_key(&body, &f),
                (None, None) => None,
            };
            buffered = Some(body);
        }

        // Caches (caches.rs): the function's package, and a result-cache
        // hit answered here, before any worker is involved.
        let code_store = crate::caches::get().filter(|c| c.code.is_some());
        if let (Some(c), None, None) = (code_store, prefix_len, &grpc_fn) {
            // The name, copied to the stack (the session is borrowed below).
            let mut nb = [0u8; config::MAX_NAME_LEN];
            let src = inspect_name(session.req_header().uri.path()).as_bytes();
            nb[..src.len()].copy_from_slice(src);
            let name = std::str::from_utf8(&nb[..src.len()]).unwrap_or("");
            let limit = snap.config.limits.inspect_body_bytes;
            let header = ctx.policy_header.clone();
            let before = c
                .before_upstream(
                    session,
                    &mut ctx.caches,
                    name,
                    buffered,
                    limit,
                    header.as_ref(),
                )
                .await?;
            if let crate::caches::Before::Answered = before {
                return Ok(true);
            }
        }

        if snap.routing.table.healthy_count() == 0 {
            let n = snap.workers.len();
            let msg = format!(
                "no healthy worker: {n} worker{} known, none passing health checks",
                if n == 1 { "" } else { "s" }
            );
            self.answer(session, ctx, 503, &msg, true).await?;
            return Ok(true);
        }

        // Decide: the policy sees the facts and the live state table.
        let req = session.req_header();
        let path = req.uri.path();
        let function = match prefix_len {
            None => grpc_fn.as_deref().unwrap_or_else(|| inspect_name(path)),
            Some(n) => &path[..n],
        };
        let key_of = |src: &Option<KeySource>| -> Option<&str> {
            let b = match src {
                Some(KeySource::Json(_) | KeySource::Protobuf(_)) => body_key.as_deref(),
                Some(s) => inspect::header_key(req, s),
                None => None,
            };
            b.and_then(|b| std::str::from_utf8(b).ok())
        };
        let mut pk = [policies::Package { name: "", cost: 0 }; crate::codestore::MAX_PACKAGES];
        let n = ctx.caches.packages(&mut pk);
        let facts = Request::new(function)
            .packages(&pk[..n])
            .method(req.method.as_str())
            .session(key_of(&info.needs.session))
            .db_key(key_of(&info.needs.db));
        let warm = crate::import_index::WarmView {
            workers: &snap.workers,
            now: crate::import_index::now_ms(),
        };
        let function_hash = facts.function_hash();
        ctx.picks = snap.routing.pick_warm(policy, &facts, &warm);
        if prefix_len.is_none() {
            // The import index learns from the response (caches::on_response).
            ctx.caches.function_hash = function_hash;
        }
        if ctx.picks.is_empty() {
            self.answer(session, ctx, 503, "no worker to route to", true)
                .await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
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
        if let Some(prev) = ctx.attached.replace(i) {
            snap.routing.table.finish(prev);
        }
        snap.routing.table.start(i);
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
                        log::info!("worker {} is now unhealthy (connect failed)", w.addr);
                    }
                }
            }
        }
        let max = ctx.snap.as_ref().map_or(0, |s| s.config.retries);
        if ctx.attempt + 1 < ctx.picks.len() && (ctx.retries as usize) < max {
            ctx.attempt += 1;
            ctx.retries += 1;
            e.set_retry(true);
        } else {
            e.set_retry(false);
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
        if ctx.arm.is_some() {
            ctx.timing = resp
                .headers
                .get("x-ol-timing")
                .and_then(|v| crate::experiments::parse_timing(v.as_bytes()));
        }
        let worker = match (&ctx.snap, ctx.worker) {
            (Some(s), Some(i)) => s.workers.get(i),
            _ => None,
        };
        crate::caches::on_response(&mut ctx.caches, resp, worker.map(|w| &**w))?;
        add_ol_headers(resp, ctx)
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
        let t = ctx.snap.as_ref().map(|s| s.config.timeouts.clone());
        let (code, reason) = match (e.etype(), e.esource()) {
            (ErrorType::HTTPStatus(c), _) => (*c, e.to_string()),
            (ErrorType::ConnectTimedout, _) => (
                502,
                format!(
                    "cannot connect to {worker}: no answer within {} ms",
                    t.map_or(0, |t| t.connect_ms)
                ),
            ),
            (
                ErrorType::ConnectRefused
                | ErrorType::ConnectNoRoute
                | ErrorType::ConnectError
                | ErrorType::BindError
                | ErrorType::SocketError,
                _,
            ) => (
                502,
                format!("cannot connect to {worker}: {}", e.etype().as_str()),
            ),
            (ErrorType::ReadTimedout | ErrorType::WriteTimedout, ErrorSource::Upstream)
            | (ErrorType::ReadTimedout, ErrorSource::Internal | ErrorSource::Unset) => (
                504,
                format!(
                    "{worker} did not answer in time (read {} ms, total {} ms)",
                    t.as_ref().map_or(0, |t| t.read_ms),
                    t.as_ref().map_or(0, |t| t.total_ms)
                ),
            ),
            (_, ErrorSource::Upstream) => (
                502,
                format!(
                    "{worker} failed before a complete response: {}",
                    e.etype().as_str()
                ),
            ),
            (
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed,
                ErrorSource::Downstream,
            ) => (0, String::new()),
            (_, ErrorSource::Downstream) => (400, format!("bad request: {}", e.etype().as_str())),
            _ => (500, format!("proxy error: {}", e.etype().as_str())),
        };
        if session.response_written().is_some() {
            // The head (and maybe part of the body) is out: the only honest
            // signal left is to cut the connection, so that the client sees
            // a truncated body instead of a complete-looking one.
            session.set_keepalive(None);
            return FailToProxy {
                error_code: code,
                can_reuse_downstream: false,
            };
        }
        if code > 0 {
            if let Err(we) = self.answer(session, ctx, code, &reason, false).await {
                log::debug!("cannot send error response: {we}");
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
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
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

/// Bytes of the request line and headers as received (approximately:
/// names, values and separators).
fn head_size(req: &pingora::http::RequestHeader) -> usize {
    let line = req.method.as_str().len()
        + req.uri.path().len()
        + req.uri.query().map_or(0, |q| q.len() + 1)
        + 12;
    req.headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// The function name of a `/run/<name>` path (already validated).
fn inspect_name(path: &str) -> &str {
    match inspect::target(path) {
        Target::Function(n) => n,
        Target::Other => "",
    }
}
