//! The worker's port: HTTP/1.1 and h2c on one listener, the endpoints of
//! the user contract (workers/README.md), and graceful shutdown.
//!
//! | endpoint                     | what                                   |
//! |------------------------------|----------------------------------------|
//! | `ANY /run/<name>[/sub][?q]`  | call a function (`run`)                |
//! | `GET /status`                | `ready`                                |
//! | `GET /stats`                 | flat JSON counters and averages        |
//! | `/registry/...`              | the code store API (`registry`)        |
//!
//! Requests with `content-type: application/grpc*`, and `GET /grpc/...`
//! (bindings and descriptors for proxies), go to `grpc` instead
//! (workers/GRPC.md). Every response the front writes itself is built in
//! `reply`.

mod body;
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

use self::reply::{json, text, Resp};
use crate::code::registry::Registry;
use crate::invoke::HandlerSet;

/// Everything the port serves.
pub struct Front {
    run: run::Run,
    registry: registry::Endpoints,
    grpc: grpc::Grpc,
}

impl Front {
    pub fn new(
        handlers: Arc<HandlerSet>,
        registry: Arc<Registry>,
        cfg: &config::WorkerConfig,
    ) -> Arc<Front> {
        Arc::new(Front {
            grpc: grpc::Grpc::new(handlers.clone(), registry.clone(), cfg.max_body_bytes),
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
    async fn dispatch(&self, req: Request<Incoming>) -> Response<Either<Full<Bytes>, grpc::Body>> {
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

/// Serves until `shutdown` resolves, then lets open calls finish for up to
/// `grace`.
pub async fn serve(
    listener: TcpListener,
    front: Arc<Front>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let front = front.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let front = front.clone();
                    async move { Ok::<_, Infallible>(front.dispatch(req).await) }
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
