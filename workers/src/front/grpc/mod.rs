//! gRPC on the worker's h2c port (the contract is in workers/GRPC.md).
//!
//! Why it lives here and looks like this: the worker already speaks h2c
//! (hyper's auto builder), so gRPC is one more kind of request on the same
//! port, picked by `content-type: application/grpc*` in the front's
//! dispatch. Every call, whatever service it names, goes through
//! `HandlerSet::invoke` like `/run/<name>` (`calls`), so queueing,
//! sandboxes, limits, timing and `/stats` are shared with HTTP calls.
//!
//! Three kinds of service:
//! - a function's own service, bound in its `ol.yaml`
//!   (`grpc: {service, protos}`): its protos are compiled at load with
//!   protox (`crate::code::protos`), the request message is decoded with prost-reflect
//!   and passed to `f(event)` as proto3 JSON, and the JSON it returns is
//!   encoded as the reply message. `index` finds the function of a service.
//! - `ol.Lambda/Invoke`: any function by name, JSON bytes in and out
//!   (tonic/prost code generated from `proto/ol/lambda.proto` by build.rs).
//! - `grpc.health.v1.Health`: SERVING for the worker's services and every
//!   bound service.
//!
//! The request message is read and checked (`wire`) for all three (one frame,
//! uncompressed, within `max_body_bytes`), so malformed input gets the same
//! clear status everywhere; `grpc-timeout` bounds the whole call (a call
//! cut short drops its instance, which kills it).

mod calls;
mod index;
pub mod pb;
mod wire;

use std::convert::Infallible;
use std::sync::Arc;

use config::wire::{X_OL_FUNCTION, X_OL_GRPC_METHOD, X_OL_VERSION};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use prost::Message as _;
use prost_reflect::DynamicMessage;
use tonic::codegen::Service as _;
use tonic::Status;
use tonic_health::pb::health_server::HealthServer;

use self::calls::{HealthSvc, LambdaSvc, Shared, HEALTH, LAMBDA};
use self::pb::ol::lambda_server::LambdaServer;
use self::wire::{
    add_timing, describe_path, forwarded_headers, frame, from_json, ok_response, parse_timeout,
    read_message, split_path, status_of, to_json,
};
use super::reply::{self, Resp};
use crate::code::protos;
use crate::code::registry::{Registry, RegistryError};
use crate::invoke::{CallError, HandlerSet};

pub use self::wire::{is_grpc, is_grpc_call, Body};

/// A call the worker refuses before running it (`e.refused`), as a gRPC
/// status with `x-ol-error: worker` and `x-ol-refused` in its metadata.
pub fn refusal(e: CallError) -> Response<Body> {
    wire::status_of(e, config::wire::LEVEL_WORKER).into_http()
}

/// The gRPC front of one worker (made once per port).
pub struct Grpc {
    shared: Arc<Shared>,
    lambda: LambdaServer<LambdaSvc>,
    health: HealthServer<HealthSvc>,
}

impl Grpc {
    pub fn new(
        handlers: Arc<HandlerSet>,
        registry: Arc<Registry>,
        max_body: usize,
        drain: Arc<super::drain::Drain>,
    ) -> Grpc {
        let shared = Arc::new(Shared {
            handlers,
            index: index::Index::new(registry.clone()),
            registry,
            max_message: max_body,
            drain,
        });
        Grpc {
            lambda: LambdaServer::new(LambdaSvc(shared.clone()))
                .max_decoding_message_size(max_body)
                .max_encoding_message_size(usize::MAX),
            health: HealthServer::new(HealthSvc(shared.clone())),
            shared,
        }
    }

    /// Answers one gRPC request. Never fails: errors are gRPC statuses.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        if !is_grpc_call(&req) {
            return self.describe(req.uri().path()).await.map(Body::new);
        }
        let (parts, body) = req.into_parts();
        let deadline = match parse_timeout(&parts.headers) {
            Ok(d) => d,
            Err(s) => return s.into_http(),
        };
        let call = self.route(parts, body);
        let res = match deadline {
            None => call.await,
            Some(d) => match tokio::time::timeout(d, call).await {
                Ok(r) => r,
                Err(_) => {
                    let stats = &self.shared.handlers.stats;
                    stats
                        .timeouts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    stats.count_status(504);
                    Err(Status::deadline_exceeded(format!(
                        "the call did not finish within its grpc-timeout of {} ms",
                        d.as_millis()
                    )))
                }
            },
        };
        res.unwrap_or_else(|s| s.into_http())
    }

    async fn route(
        &self,
        parts: http::request::Parts,
        body: Incoming,
    ) -> Result<Response<Body>, Status> {
        let path = parts.uri.path().to_string();
        let Some((service, method)) = split_path(&path) else {
            return Err(Status::unimplemented(format!(
                "{path} is not a gRPC method path: expected /<package>.<Service>/<Method>"
            )));
        };
        if parts.method != Method::POST {
            return Err(Status::invalid_argument(format!(
                "gRPC calls use POST, not {}",
                parts.method
            )));
        }
        let known = match service {
            LAMBDA => Some(&["Invoke"][..]),
            HEALTH => Some(&["Check", "Watch"][..]),
            _ => None,
        };
        let Some(methods) = known else {
            return self.dynamic(service, method, parts, body).await;
        };
        if !methods.contains(&method) {
            return Err(Status::unimplemented(format!(
                "{service} has no method {method} (it has: {})",
                methods.join(", ")
            )));
        }
        let msg = read_message(body, self.shared.max_message).await?;
        let req = Request::from_parts(parts, Full::new(frame(&msg)));
        let resp = if service == LAMBDA {
            self.lambda.clone().call(req).await
        } else {
            self.health.clone().call(req).await
        };
        Ok(resp.unwrap_or_else(|never: Infallible| match never {}))
    }

    /// Plain HTTP, for proxies that route and inspect gRPC calls:
    /// `GET /grpc/` is the JSON object `{"<service>": "<function>", ...}`;
    /// `GET /grpc/<service>` is the compiled descriptors of the function
    /// bound to it, an encoded `google.protobuf.FileDescriptorSet` (imports
    /// included), with `x-ol-function` and `x-ol-version` headers.
    async fn describe(&self, path: &str) -> Resp {
        let sh = &self.shared;
        let service = describe_path(path).unwrap_or("");
        if service.is_empty() {
            return match sh.index.all().await {
                Ok(map) => reply::json(
                    StatusCode::OK,
                    serde_json::to_string(&map).unwrap_or_default(),
                ),
                Err(s) => reply::text(StatusCode::BAD_GATEWAY, s.message()),
            };
        }
        let unbound = || {
            let line = format!("no function binds the gRPC service {service:?}");
            reply::text(StatusCode::NOT_FOUND, &line)
        };
        let found = match sh.index.lookup(service).await {
            Ok(f) => f,
            Err(s) => return reply::text(StatusCode::BAD_GATEWAY, s.message()),
        };
        let Some(name) = found else {
            return unbound();
        };
        let code = match sh.registry.resolve(&name).await {
            Ok(c) => c,
            Err(e) => return reply::error_response(CallError::from(e)),
        };
        match protos::load(&name, &code.dir, &code.config) {
            Ok(Some(c)) if c.service.full_name() == service => {
                let mut r = reply::protobuf(c.pool().encode_to_vec());
                for (k, v) in [(X_OL_FUNCTION, &name), (X_OL_VERSION, &code.version)] {
                    if let Ok(v) = HeaderValue::try_from(v.as_str()) {
                        r.headers_mut().insert(k, v);
                    }
                }
                r
            }
            Ok(_) => unbound(),
            Err(e) => reply::error_response(CallError::new(500, format!("function {name}: {e}"))),
        }
    }

    /// A function's own service: protobuf in, `f(event)` on JSON, protobuf out.
    async fn dynamic(
        &self,
        service: &str,
        method: &str,
        parts: http::request::Parts,
        body: Incoming,
    ) -> Result<Response<Body>, Status> {
        let sh = &self.shared;
        let mut found = sh.index.lookup(service).await?;
        let mut retried = false;
        let (name, compiled) = loop {
            let Some(name) = found else {
                return Err(Status::unimplemented(format!(
                    "unknown service {service}: no function in the code store binds it \
                     (ol.yaml grpc.service)"
                )));
            };
            let current = match sh.registry.resolve(&name).await {
                Ok(code) => protos::load(&name, &code.dir, &code.config)
                    .map_err(|e| Status::internal(format!("function {name}: {e}")))?,
                Err(RegistryError::NotFound(_)) => None,
                Err(e) => return Err(status_of(CallError::from(e), config::wire::LEVEL_WORKER)),
            };
            match current {
                Some(c) if c.service.full_name() == service => break (name, c),
                // Deleted, or no longer bound to this service: ask again.
                _ if !retried => {
                    retried = true;
                    found = sh.index.lookup_fresh(service).await?;
                }
                _ => found = None,
            }
        };
        let Some(m) = compiled.service.methods().find(|m| m.name() == method) else {
            let have: Vec<String> = compiled
                .service
                .methods()
                .map(|m| m.name().to_string())
                .collect();
            return Err(Status::unimplemented(format!(
                "{service} has no method {method} (it has: {})",
                have.join(", ")
            )));
        };
        if m.is_client_streaming() || m.is_server_streaming() {
            return Err(Status::unimplemented(format!(
                "{service}/{method} is a streaming method; functions serve unary methods only"
            )));
        }
        let msg = read_message(body, sh.max_message).await?;
        let request = DynamicMessage::decode(m.input(), msg).map_err(|e| {
            Status::invalid_argument(format!(
                "the request is not a valid {}: {e}",
                m.input().full_name()
            ))
        })?;
        let event = to_json(&request)?;
        let path = parts.uri.path();
        let mut headers = forwarded_headers(&parts.headers);
        headers.push((X_OL_GRPC_METHOD, path));
        let sub_path = format!("/{method}");
        let (res, timing) = sh.call(&name, &event, &sub_path, headers).await;
        let reply = res?;
        let out = from_json(&name, m.output(), &reply)?;
        let mut resp = ok_response(&out.encode_to_vec());
        add_timing(resp.headers_mut(), &timing);
        Ok(resp)
    }
}
