//! The worker's port: HTTP/1.1 and h2c on one listener, the endpoints of
//! the user contract (workers/README.md), and graceful shutdown.
//!
//! | endpoint                     | what                                   |
//! |------------------------------|----------------------------------------|
//! | `ANY /run/<name>[/sub][?q]`  | call a function (`run`)                |
//! | `GET /status`                | `ready`; 503 `draining` after SIGTERM  |
//! | `GET /stats`                 | flat JSON counters and averages        |
//! | `/registry/...`              | the code store API (`registry`)        |
//!
//! Requests with `content-type: application/grpc*`, and `GET /grpc/...`
//! (bindings and descriptors for proxies), go to `grpc` instead
//! (workers/GRPC.md). Every response the front writes itself is built in
//! `reply`.

mod body;
mod drain;
pub mod grpc;
mod registry;
mod reply;
mod run;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use self::drain::Drain;
use self::reply::{json, text, Resp};
use crate::code::registry::Registry;
use crate::invoke::CallError;
use crate::invoke::HandlerSet;

/// Everything the port serves.
pub struct Front {
    run: run::Run,
    registry: registry::Endpoints,
    grpc: grpc::Grpc,
    drain: Arc<Drain>,
    /// `drain_ms`: the least time the port stays open after SIGTERM.
    drain_linger: Duration,
}

/// The one line of a call refused while draining.
const DRAINING: &str =
    "this worker is draining (shutting down): the call did not run; send it to another worker";

impl Front {
    pub fn new(
        handlers: Arc<HandlerSet>,
        registry: Arc<Registry>,
        cfg: &config::WorkerConfig,
    ) -> Arc<Front> {
        let drain = Arc::new(Drain::default());
        Arc::new(Front {
            grpc: grpc::Grpc::new(
                handlers.clone(),
                registry.clone(),
                cfg.max_body_bytes,
                drain.clone(),
            ),
            drain,
            drain_linger: Duration::from_millis(cfg.drain_ms),
            run: run::Run {
                handlers,
                max_body: cfg.max_body_bytes,
                tracebacks: cfg.tracebacks,
            },
            registry: registry::Endpoints {
                registry,
                max_upload: cfg.max_upload_bytes,
            },
        })
    }

    /// Where a request goes: gRPC calls and `GET /grpc/...` to the gRPC
    /// front, the rest by path.
    /// A call is counted open until its response head is out (the
    /// drain waits for it); while draining, it is refused instead.
    async fn dispatch(&self, req: Request<Incoming>) -> Response<Either<Full<Bytes>, grpc::Body>> {
        let grpc_call = grpc::is_grpc_call(&req);
        let _open = if grpc_call || req.uri().path().starts_with("/run/") {
            match self.drain.enter() {
                Some(open) => Some(open),
                None => {
                    let e = CallError::refused(503, config::wire::REFUSED_DRAINING, DRAINING);
                    return match grpc_call {
                        true => grpc::refusal(e).map(Either::Right),
                        false => reply::error_response(e).map(Either::Left),
                    };
                }
            }
        } else {
            None
        };
        if grpc::is_grpc(&req) {
            return self.grpc.handle(req).await.map(Either::Right);
        }
        self.http(req).await.map(Either::Left)
    }

    async fn http(&self, req: Request<Incoming>) -> Resp {
        let path = req.uri().path().to_string();
        let resp = if let Some(rest) = path.strip_prefix("/run/") {
            self.run.call(rest, req).await
        } else if path == "/run" {
            text(
                StatusCode::BAD_REQUEST,
                "function name is empty: call /run/<name>",
            )
        } else if let Some(rest) = path.strip_prefix("/registry") {
            self.registry.serve(rest, req).await
        } else {
            match (req.method(), path.as_str()) {
                (&Method::GET, "/status") if self.drain.is_draining() => {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining")
                }
                (&Method::GET, "/status") => text(StatusCode::OK, "ready"),
                (&Method::GET, "/stats") => {
                    let handlers = &self.run.handlers;
                    let gauges = handlers.gauges();
                    json(StatusCode::OK, handlers.stats.to_json(&gauges))
                }
                (m, p) => text(
                    StatusCode::NOT_FOUND,
                    &format!("no route for {m} {p}: the worker serves /run/<name>, /status, /stats and /registry/"),
                ),
            }
        };
        resp
    }
}

/// Serves until `shutdown` resolves, then drains (`drain.rs`): keeps
/// answering, with refusals for new calls, until the open calls are done
/// (at most `grace`) and `drain_ms` has passed; then closes the port and
/// lets open connections finish within what is left of `grace`.
pub async fn serve(
    listener: TcpListener,
    front: Arc<Front>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    let accept = |stream: tokio::net::TcpStream| {
        let _ = stream.set_nodelay(true);
        let front = front.clone();
        let svc = hyper::service::service_fn(move |req| {
            let front = front.clone();
            async move { Ok::<_, Infallible>(front.dispatch(req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    accept(stream);
                }
            }
            _ = &mut shutdown => break,
        }
    }
    front.drain.begin();
    let linger = front.drain_linger;
    tracing::info!(
        open = front.drain.open(),
        drain_ms = linger.as_millis() as u64,
        "draining: new calls are refused"
    );
    let started = tokio::time::Instant::now();
    // Open calls get the longer of the grace and the linger: the port is
    // open that long anyway.
    let wait = grace.max(linger);
    let calls = async {
        if tokio::time::timeout(wait, front.drain.idle())
            .await
            .is_err()
        {
            tracing::warn!("calls still open after {wait:?} of draining; closing anyway");
        }
    };
    let drained = async { tokio::join!(calls, tokio::time::sleep_until(started + linger)) };
    tokio::pin!(drained);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    accept(stream);
                }
            }
            _ = &mut drained => break,
        }
    }
    drop(listener);
    let left = (started + grace.max(linger)).saturating_duration_since(tokio::time::Instant::now());
    if tokio::time::timeout(left, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the grace period; stopping anyway");
    }
}
