//! The worker's HTTP front: HTTP/1.1 and h2c on one port, the endpoints of
//! the user contract (DESIGN.md), and graceful shutdown.
//!
//! | endpoint                     | what                                   |
//! |------------------------------|----------------------------------------|
//! | `ANY /run/<name>[/sub][?q]`  | call a function                        |
//! | `GET /status`                | `ready`                                |
//! | `GET /stats`                 | flat JSON counters and averages        |
//! | `GET /registry/`             | JSON list of function names            |
//! | `GET /registry/<name>[.tar.gz]` | the function's package              |
//! | `GET /registry/<name>/config`| its `ol.yaml` as JSON                  |
//! | `POST /registry/<name>`      | install a `.tar.gz` (201)              |
//! | `DELETE /registry/<name>`    | remove it (204)                        |
//!
//! Requests with `content-type: application/grpc*`, and `GET /grpc/...`
//! (bindings and descriptors for proxies), go to `crate::grpc` instead
//! (workers/GRPC.md).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::handler::{Call, CallError, HandlerSet};
use crate::registry::Registry;
use config::wire::{Timing, X_OL_TIMING};

pub struct App {
    pub handlers: Arc<HandlerSet>,
    pub registry: Arc<Registry>,
    pub max_body: usize,
    pub max_upload: usize,
    /// Where handlers' tracebacks go (`tracebacks` in the worker config).
    pub tracebacks: config::worker::Tracebacks,
}

type Resp = Response<Full<Bytes>>;

/// Serves until `shutdown` resolves, then lets open calls finish for up to
/// `grace`.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    let grpc = crate::grpc::Grpc::new(&app);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let grpc = grpc.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let app = app.clone();
                    let grpc = grpc.clone();
                    async move {
                        // gRPC calls and GET /grpc/... go to the gRPC front.
                        let resp = if crate::grpc::is_grpc(&req) {
                            grpc.handle(req).await.map(Either::Right)
                        } else {
                            handle(&app, req).await.map(Either::Left)
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("calls still open after the {grace:?} grace period; stopping anyway");
    }
}

async fn handle(app: &App, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let resp = if let Some(rest) = path.strip_prefix("/run/") {
        run(app, rest, req).await
    } else if path == "/run" {
        text(
            StatusCode::BAD_REQUEST,
            "function name is empty: call /run/<name>",
        )
    } else if let Some(rest) = path.strip_prefix("/registry") {
        registry(app, rest, req).await
    } else {
        match (req.method(), path.as_str()) {
            (&Method::GET, "/status") => text(StatusCode::OK, "ready"),
            (&Method::GET, "/stats") => {
                let gauges = app.handlers.gauges();
                json(StatusCode::OK, app.handlers.stats.to_json(&gauges))
            }
            (m, p) => text(
                StatusCode::NOT_FOUND,
                &format!("no route for {m} {p}: the worker serves /run/<name>, /status, /stats and /registry/"),
            ),
        }
    };
    resp
}

/// Splits `<name>[/sub...]` and validates the name.
fn split_name(rest: &str) -> Result<(&str, &str), Box<Resp>> {
    let (name, sub) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    config::validate_function_name(name)
        .map_err(|e| Box::new(text(StatusCode::BAD_REQUEST, &e)))?;
    Ok((name, sub))
}

async fn run(app: &App, rest: &str, req: Request<Incoming>) -> Resp {
    let started = Instant::now();
    let (name, sub) = match split_name(rest) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let (parts, body) = req.into_parts();
    let body = match read_body(body, &parts.headers, app.max_body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let headers: Vec<(&str, &str)> = parts
        .headers
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)))
        .collect();
    let call = Call {
        method: parts.method.as_str(),
        sub_path: sub,
        query: parts.uri.query().unwrap_or(""),
        headers,
        body: &body,
    };
    let mut timing = Timing::default();
    let result = app.handlers.invoke(name, call, &mut timing).await;
    timing.total = started.elapsed();
    app.handlers.stats.total.record(timing.total);
    // The function's status and headers are checked in `reply::check`.
    let result = result.and_then(|r| crate::reply::check(name, r, app.tracebacks));
    let mut resp = match result {
        Ok(reply) => {
            let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
            *resp.status_mut() =
                StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
            let h = resp.headers_mut();
            for (k, v) in &reply.headers {
                if let (Ok(k), Ok(v)) = (
                    HeaderName::try_from(k.as_str()),
                    HeaderValue::try_from(v.as_str()),
                ) {
                    h.append(k, v);
                }
            }
            resp
        }
        Err(mut e) => {
            crate::reply::hide_detail(name, &mut e, app.tracebacks);
            error_response(e)
        }
    };
    app.handlers.stats.count_status(resp.status().as_u16());
    if let Ok(v) = HeaderValue::try_from(timing.to_header()) {
        resp.headers_mut().insert(X_OL_TIMING, v);
    }
    resp
}

async fn registry(app: &App, rest: &str, req: Request<Incoming>) -> Resp {
    let rest = rest.trim_start_matches('/');
    let authorized = app.registry.token_given(
        req.headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes()),
    );
    if app.registry.token_required() && !authorized {
        let mut r = text(
            StatusCode::UNAUTHORIZED,
            "the registry needs Authorization: Bearer <registry_token>",
        );
        r.headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        return r;
    }
    if rest.is_empty() {
        if req.method() != Method::GET {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "the registry list only answers GET",
            );
        }
        return match app.registry.list().await {
            Ok(names) => json(StatusCode::OK, serde_json::to_string(&names).unwrap()),
            Err(e) => error_response(e.into()),
        };
    }
    let (name, sub) = match rest.split_once('/') {
        Some((n, s)) => (n, s),
        None => (rest, ""),
    };
    let name = match (req.method(), sub) {
        (&Method::GET, "") => name.strip_suffix(".tar.gz").unwrap_or(name),
        _ => name,
    };
    if let Err(e) = config::validate_function_name(name) {
        return text(StatusCode::BAD_REQUEST, &e);
    }
    match (req.method().clone(), sub) {
        (Method::GET, "") => match app.registry.package(name).await {
            Ok(bytes) => {
                let mut r = Response::new(Full::new(Bytes::from(bytes)));
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/gzip"));
                r
            }
            Err(e) => error_response(e.into()),
        },
        (Method::GET, "config") => match app.handlers.manager().pull(name).await {
            Ok(code) => {
                let mut config = code.config.clone();
                // Secrets go only to a caller with the token.
                if !authorized {
                    for v in config.environment.values_mut() {
                        *v = "<redacted>".into();
                    }
                }
                json(StatusCode::OK, serde_json::to_string(&config).unwrap())
            }
            Err(e) => error_response(e.into()),
        },
        (Method::POST | Method::PUT, "") => {
            let (parts, body) = req.into_parts();
            let bytes = match read_body(body, &parts.headers, app.max_upload).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            match app.registry.upload(name, bytes.to_vec()).await {
                Ok(()) => text(StatusCode::CREATED, &format!("installed {name}")),
                Err(e) => error_response(e.into()),
            }
        }
        (Method::DELETE, "") => match app.registry.delete(name).await {
            Ok(()) => Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(Full::new(Bytes::new()))
                .unwrap(),
            Err(e) => error_response(e.into()),
        },
        (m, s) => text(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!(
                "{m} /registry/{name}{}{s} is not supported",
                if s.is_empty() { "" } else { "/" }
            ),
        ),
    }
}

/// Reads a body up to `limit` bytes; 413 beyond it.
async fn read_body(body: Incoming, headers: &http::HeaderMap, limit: usize) -> Result<Bytes, Resp> {
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body is larger than the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(text(
            StatusCode::BAD_REQUEST,
            &format!("cannot read the request body: {e}"),
        )),
    }
}

fn error_response(e: CallError) -> Resp {
    let mut body = e.line;
    body.push('\n');
    if !e.detail.is_empty() {
        body.push_str(&e.detail);
        if !body.ends_with('\n') {
            body.push('\n');
        }
    }
    let mut r = plain(
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
    );
    if let Some(allow) = e.allow.and_then(|a| HeaderValue::try_from(a).ok()) {
        r.headers_mut().insert(ALLOW, allow);
    }
    r
}

fn text(status: StatusCode, line: &str) -> Resp {
    plain(status, format!("{line}\n"))
}

fn plain(status: StatusCode, body: String) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(status: StatusCode, body: String) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
