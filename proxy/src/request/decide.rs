//! `request_filter`'s work, as named steps: what the request calls, which
//! route, policy and experiment arm decide it, the routing keys (the body
//! only when the policy needs it), the caches (a hit ends here), then the
//! policy's ordered picks of healthy workers.
//!
//! Each step either goes on or stops the request with the answer it gets
//! ([`Stop`]); only [`run`] turns a stop into a written response.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use config::policy::KeySource;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use policies::Request;

use super::ctx::Ctx;
use crate::caches::package::MAX_PACKAGES;
use crate::caches::Before;
use crate::http::answer;
use crate::http::body::{self, BodyRead};
use crate::inspect::{self, protowire, Target};
use crate::state::admission::{Refused, Wake, BUDGET, HOLD, MAX_HELD_FUNCTIONS};
use crate::state::outliers;
use crate::state::routing::PolicyId;
use crate::state::warm::now_ms;
use crate::state::workers::WarmView;
use crate::state::{Snapshot, State};
use crate::upstream::grpc_meta;

/// What a request calls, read once from its head.
enum Call {
    /// `/run/<name>...`: the (valid) name is `path[RUN.len()..][..len]`.
    Run { len: usize },
    /// A gRPC call, routed as the function bound to its service.
    Grpc { function: String },
    /// A `[[paths]]` prefix, `path[..len]`, with its route and policy.
    Path {
        len: usize,
        route: usize,
        policy: PolicyId,
    },
}

const RUN: &str = "/run/";

impl Call {
    /// The name the policy and the caches see.
    fn function<'a>(&'a self, path: &'a str) -> &'a str {
        match self {
            Call::Run { len } => &path[RUN.len()..][..*len],
            Call::Grpc { function } => function,
            Call::Path { len, .. } => &path[..*len],
        }
    }
}

/// Why the request goes no further.
pub(super) enum Stop {
    /// A one-line text answer; `keepalive: false` when the body may be
    /// unread; `Retry-After` seconds for a call that may succeed later.
    Text {
        status: u16,
        reason: String,
        keepalive: bool,
        retry_after: Option<u32>,
    },
    /// A gRPC status for a gRPC client.
    Grpc {
        code: u8,
        reason: String,
    },
    /// The response is already written (a result-cache hit).
    Answered,
    Failed(Box<Error>),
}

impl From<Box<Error>> for Stop {
    fn from(e: Box<Error>) -> Stop {
        Stop::Failed(e)
    }
}

fn refuse(status: u16, reason: String, keepalive: bool) -> Stop {
    Stop::Text {
        status,
        reason,
        keepalive,
        retry_after: None,
    }
}

/// A 503 for a call no worker could take in time: try again in a second.
fn busy(reason: String) -> Stop {
    Stop::Text {
        status: 503,
        reason,
        keepalive: true,
        retry_after: Some(1),
    }
}

/// `request_filter`: `Ok(true)` when the request was answered here.
pub(super) async fn run(state: &State, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
    let stop = match decide(state, session, ctx).await {
        Ok(()) => return Ok(false),
        Err(s) => s,
    };
    let by = ctx.served();
    match stop {
        Stop::Text {
            status,
            reason,
            keepalive,
            retry_after,
        } => answer::text(session, by, status, &reason, keepalive, retry_after).await?,
        Stop::Grpc { code, reason } => answer::grpc(session, by, code, &reason).await?,
        Stop::Answered => {}
        Stop::Failed(e) => return Err(e),
    }
    Ok(true)
}

async fn decide(state: &State, session: &mut Session, ctx: &mut Ctx) -> Result<(), Stop> {
    let snap = state.snap.load_full();
    ctx.snap = Some(snap.clone());
    check_head_size(session.req_header(), &snap)?;
    let mut body = None;
    let call = identify(session, &snap, &mut body).await?;
    choose_policy(ctx, &snap, &call, session.req_header());
    admit_under_limits(ctx, &snap, &call, session.req_header())?;
    let key = routing_key(session, ctx, &snap, &call, &mut body).await?;
    consult_caches(session, ctx, &snap, &call, body).await?;
    wait_for_a_healthy_worker(state, ctx, &snap, &call, session.req_header()).await?;
    pick_workers(session.req_header(), ctx, &snap, &call, key.as_deref())
}

fn check_head_size(req: &RequestHeader, snap: &Snapshot) -> Result<(), Stop> {
    let limit = snap.config.limits.max_header_bytes;
    let head = head_size(req);
    if head > limit {
        let reason = format!("request head is {head} bytes; the limit is {limit}");
        return Err(refuse(431, reason, false));
    }
    Ok(())
}

/// Name inspection: `/run/<name>`, a gRPC service bound to a function
/// (`ol.Lambda/Invoke` as the function its message names, which reads the
/// message into `body`), or a `[[paths]]` prefix.
async fn identify(
    session: &mut Session,
    snap: &Snapshot,
    body: &mut Option<Bytes>,
) -> Result<Call, Stop> {
    let req = session.req_header();
    let path = req.uri.path();
    if let Target::Function(name) = inspect::target(path) {
        return match config::validate_function_name(name) {
            Ok(()) => Ok(Call::Run { len: name.len() }),
            Err(e) => Err(refuse(400, format!("bad function name: {e}"), true)),
        };
    }
    let grpc = inspect::is_call(req);
    match grpc.then(|| inspect::service_of(path)).flatten() {
        Some(inspect::INVOKE_SERVICE) => {
            let limit = snap.config.limits.inspect_body_bytes;
            let Some(message) = read_for_key(session, limit).await? else {
                return Err(Stop::Grpc {
                    code: 8,
                    reason: too_big_to_inspect(limit),
                });
            };
            let name = protowire::protobuf_key(&message, &[1])
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default();
            if let Err(e) = config::validate_function_name(&name) {
                return Err(Stop::Grpc {
                    code: 3,
                    reason: format!("ol.Lambda/Invoke: InvokeRequest.name: {e}"),
                });
            }
            *body = Some(message);
            return Ok(Call::Grpc { function: name });
        }
        Some(service) => {
            let service = service.to_string();
            if let Some(function) = grpc_meta::function_for(&service, snap).await {
                return Ok(Call::Grpc { function });
            }
        }
        None => {}
    }
    let path = session.req_header().uri.path();
    if let Some((len, route, policy)) = snap.route_for_path(path) {
        return Ok(Call::Path { len, route, policy });
    }
    let shown: String = path.chars().take(200).collect();
    Err(if grpc {
        // A gRPC client reads a gRPC status, not a 404 page.
        Stop::Grpc {
            code: 12,
            reason: format!("unknown gRPC service or path {shown}: no function binds it"),
        }
    } else {
        refuse(
            404,
            format!("no route for {shown}: functions are called at /run/<name>"),
            true,
        )
    })
}

/// The route and policy for the call; for `/run/` calls, the experiment
/// arm whose policy then decides instead.
fn choose_policy(ctx: &mut Ctx, snap: &Snapshot, call: &Call, req: &RequestHeader) {
    let function = call.function(req.uri.path());
    let (route, mut policy) = match *call {
        Call::Path { route, policy, .. } => (route, policy),
        _ => snap.route_for_function(function),
    };
    if let Call::Run { .. } = call {
        ctx.arm = snap.experiments.assign(function, req);
        if let Some((e, a)) = ctx.arm {
            policy = snap.experiments.arm(e, a).policy;
        }
    }
    ctx.route = route;
    ctx.policy = policy;
    ctx.function_call = !matches!(call, Call::Path { .. });
    ctx.policy_header = Some(match ctx.arm {
        Some((e, a)) => snap.experiments.arm(e, a).header.clone(),
        None => snap.routing.policies[policy].header.clone(),
    });
}

/// `[[admission.limits]]` (`state::limits`): over a rule's concurrency or
/// rate the call is answered 429 with `Retry-After` (a gRPC call:
/// `RESOURCE_EXHAUSTED`); admitted, it holds its slot until it ends.
fn admit_under_limits(
    ctx: &mut Ctx,
    snap: &Snapshot,
    call: &Call,
    req: &RequestHeader,
) -> Result<(), Stop> {
    if snap.limits.is_empty() {
        return Ok(());
    }
    match snap.limits.admit(call.function(req.uri.path()), req) {
        Ok(slot) => {
            ctx.limit_slot = slot;
            Ok(())
        }
        Err(over) if matches!(call, Call::Grpc { .. }) => Err(Stop::Grpc {
            code: 8,
            reason: over.reason,
        }),
        Err(over) => Err(Stop::Text {
            status: 429,
            reason: over.reason,
            keepalive: true,
            retry_after: Some(over.retry_after),
        }),
    }
}

/// Content inspection, only when the policy needs a key in the body (a
/// JSON path, or a field of a gRPC call's first message; a field by name
/// is resolved with the service's descriptors, cached). The body read
/// stays in `body` for the result cache.
async fn routing_key(
    session: &mut Session,
    ctx: &Ctx,
    snap: &Snapshot,
    call: &Call,
    body: &mut Option<Bytes>,
) -> Result<Option<Vec<u8>>, Stop> {
    let needs = &snap.routing.policies[ctx.policy].needs;
    let json_path = needs.json_path();
    let pb_path = needs
        .protobuf_path()
        .filter(|_| matches!(call, Call::Grpc { .. }));
    if json_path.is_none() && pb_path.is_none() {
        return Ok(None);
    }
    let fields = match pb_path {
        Some(p) => grpc_meta::field_numbers(p, session.req_header().uri.path(), snap).await,
        None => None,
    };
    if body.is_none() {
        let limit = snap.config.limits.inspect_body_bytes;
        match read_for_key(session, limit).await? {
            Some(b) => *body = Some(b),
            None => return Err(refuse(413, too_big_to_inspect(limit), false)),
        }
    }
    let b = body.as_deref().unwrap_or_default();
    Ok(match (json_path, fields) {
        (Some(j), _) => inspect::json_key(b, j),
        (None, Some(f)) => protowire::protobuf_key(b, &f),
        (None, None) => None,
    })
}

/// The function's package (for the policy's package set) and a
/// result-cache hit, answered before any worker is involved. `/run/`
/// calls only, when a code store is configured.
async fn consult_caches(
    session: &mut Session,
    ctx: &mut Ctx,
    snap: &Snapshot,
    call: &Call,
    body: Option<Bytes>,
) -> Result<(), Stop> {
    let Call::Run { len } = *call else {
        return Ok(());
    };
    let Some(c) = crate::caches::get().filter(|c| c.code.is_some()) else {
        return Ok(());
    };
    // The name, copied to the stack (the session is borrowed below).
    let mut nb = [0u8; config::MAX_NAME_LEN];
    nb[..len].copy_from_slice(&session.req_header().uri.path().as_bytes()[RUN.len()..][..len]);
    let name = std::str::from_utf8(&nb[..len]).unwrap_or("");
    let limit = snap.config.limits.inspect_body_bytes;
    let header = ctx.policy_header.clone();
    let before = c
        .before_upstream(session, &mut ctx.caches, name, body, limit, header.as_ref())
        .await?;
    match before {
        Before::Answered => Err(Stop::Answered),
        Before::Upstream => Ok(()),
    }
}

/// The hold before the decision (`state::admission`): while no worker is
/// healthy (the proxy just started, the workers are not up yet), the call
/// waits up to `admission.hold_ms` for one, woken by the health checks.
/// Also notes the function for the hold and the retry path.
async fn wait_for_a_healthy_worker(
    state: &State,
    ctx: &mut Ctx,
    snap: &Arc<Snapshot>,
    call: &Call,
    req: &RequestHeader,
) -> Result<(), Stop> {
    let name = call.function(req.uri.path());
    ctx.function_key = Request::new(name).function_hash();
    ctx.function = name.to_string();
    let table = &snap.routing.table;
    if table.healthy_count() > 0 {
        return Ok(());
    }
    let a = &snap.config.admission;
    let n = snap.workers.len();
    let none = format!(
        "no healthy worker: {n} worker{} known, none passing health checks",
        if n == 1 { "" } else { "s" }
    );
    if a.hold_ms == 0 {
        return Err(busy(none));
    }
    let until = Instant::now() + Duration::from_millis(a.hold_ms);
    ctx.hold_until = Some(until);
    let replaced = || !Arc::ptr_eq(&state.snap.load(), snap);
    let ready = || table.healthy_count() > 0 || replaced();
    let waited = HOLD
        .wait(
            ctx.function_key,
            name,
            a.hold_queue,
            until,
            Wake::Health,
            ready,
        )
        .await;
    match waited {
        Ok(_) if table.healthy_count() > 0 => Ok(()),
        Ok(_) => Err(busy(format!(
            "{none}; the worker set changed while the call waited, retry"
        ))),
        Err(Refused::Full) => Err(busy(format!(
            "{none}, and {} calls of {name} are already waiting (admission.hold_queue)",
            a.hold_queue
        ))),
        Err(Refused::TimedOut) => Err(busy(format!(
            "{none} within admission.hold_ms ({} ms)",
            a.hold_ms
        ))),
        Err(Refused::TooManyFunctions) => Err(busy(format!(
            "{none}, and calls of {MAX_HELD_FUNCTIONS} other functions are already held"
        ))),
    }
}

/// The decision: the policy sees the request's facts and the live state
/// table, and orders the healthy workers to try.
fn pick_workers(
    req: &RequestHeader,
    ctx: &mut Ctx,
    snap: &Snapshot,
    call: &Call,
    body_key: Option<&[u8]>,
) -> Result<(), Stop> {
    let needs = &snap.routing.policies[ctx.policy].needs;
    let key_of = |src: &Option<KeySource>| -> Option<&str> {
        let b = match src {
            Some(KeySource::Json(_) | KeySource::Protobuf(_)) => body_key,
            Some(s) => inspect::header_key(req, s),
            None => None,
        };
        b.and_then(|b| std::str::from_utf8(b).ok())
    };
    let mut pk = [policies::Package { name: "", cost: 0 }; MAX_PACKAGES];
    let n = ctx.caches.packages(&mut pk);
    let facts = Request::new(call.function(req.uri.path()))
        .packages(&pk[..n])
        .method(req.method.as_str())
        .session(key_of(&needs.session))
        .db_key(key_of(&needs.db));
    let warm = WarmView {
        workers: &snap.workers,
        now: now_ms(),
    };
    let function_hash = facts.function_hash();
    ctx.picks = snap.routing.pick_warm(ctx.policy, &facts, &warm);
    outliers::ramp(
        &mut ctx.picks,
        &snap.workers,
        warm.now,
        snap.config.health.slow_start_ms,
    );
    BUDGET.call();
    if !matches!(call, Call::Path { .. }) {
        // The import index learns from the response (caches::on_response).
        ctx.caches.function_hash = function_hash;
    }
    if ctx.picks.is_empty() {
        return Err(refuse(503, "no worker to route to".into(), true));
    }
    Ok(())
}

/// Reads the whole body (bounded) for a key in it; pingora's retry buffer
/// replays it to the worker. `None` when it is over `limit`.
async fn read_for_key(session: &mut Session, limit: usize) -> Result<Option<Bytes>> {
    Ok(match body::read(session, limit, true).await? {
        BodyRead::Whole(b) => Some(b),
        BodyRead::TooLarge | BodyRead::Cut => None,
    })
}

/// The refusal of a body over `limits.inspect_body_bytes`.
fn too_big_to_inspect(limit: usize) -> String {
    format!("request body is larger than {limit} bytes, the limit for routing on its content")
}

/// Bytes of the request line and headers as received (approximately:
/// names, values and separators).
fn head_size(req: &RequestHeader) -> usize {
    let line = req.method.as_str().len()
        + req.uri.path().len()
        + req.uri.query().map_or(0, |q| q.len() + 1)
        + 12;
    req.headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}
