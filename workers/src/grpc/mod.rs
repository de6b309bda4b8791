//! gRPC on the worker's h2c port (the contract is in workers/GRPC.md).
//!
//! Why it lives here and looks like this: the worker already speaks h2c
//! (hyper's auto builder), so gRPC is one more kind of request on the same
//! port, picked by `content-type: application/grpc*` in `server::serve`.
//! Every call, whatever service it names, goes through
//! `HandlerSet::invoke` like `/run/<name>`, so queueing, sandboxes, limits,
//! timing and `/stats` are shared with HTTP calls.
//!
//! Three kinds of service:
//! - a function's own service, bound in its `ol.yaml`
//!   (`grpc: {service, protos}`): its protos are compiled at load with
//!   protox (`protos`), the request message is decoded with prost-reflect
//!   and passed to `f(event)` as proto3 JSON, and the JSON it returns is
//!   encoded as the reply message. `index` finds the function of a service.
//! - `ol.Lambda/Invoke`: any function by name, JSON bytes in and out
//!   (tonic/prost code generated from `proto/ol/lambda.proto` by build.rs).
//! - `grpc.health.v1.Health`: SERVING for the worker's services and every
//!   bound service.
//!
//! The request message is read and checked here for all three (one frame,
//! uncompressed, within `max_body_bytes`), so malformed input gets the same
//! clear status everywhere; `grpc-timeout` bounds the whole call (a call
//! cut short drops its instance, which kills it).

pub mod index;
pub mod protos;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor, SerializeOptions};
use tonic::codegen::Service as _;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::handler::{Call, CallError, HandlerSet};
use crate::registry::{Registry, RegistryError};
use crate::server::App;
use config::wire::{Timing, X_OL_FUNCTION, X_OL_GRPC_METHOD, X_OL_TIMING, X_OL_VERSION};

/// Generated code: `ol.Lambda` (server and client) and a
/// `helloworld.Greeter` client for tests and the load driver.
pub mod pb {
    pub mod ol {
        tonic::include_proto!("ol");
    }
    pub mod helloworld {
        tonic::include_proto!("helloworld");
    }
}

use pb::ol::lambda_server::{Lambda, LambdaServer};
use pb::ol::{InvokeReply, InvokeRequest};

/// The body of every gRPC response.
pub type Body = tonic::body::Body;

const LAMBDA: &str = "ol.Lambda";
const HEALTH: &str = "grpc.health.v1.Health";

/// Whether `server::serve` should hand this request to `Grpc::handle`:
/// gRPC calls (`application/grpc`, `application/grpc+proto`, ...; not
/// gRPC-Web), and `GET /grpc/...`, the bindings and descriptors for
/// proxies (`describe`).
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    is_grpc_call(req) || (req.method() == Method::GET && describe_path(req.uri().path()).is_some())
}

fn is_grpc_call<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct == "application/grpc"
                || ct.starts_with("application/grpc+")
                || ct.starts_with("application/grpc;")
        })
}

/// `/grpc/` -> `Some("")`; `/grpc/<service>` -> `Some(service)`.
fn describe_path(path: &str) -> Option<&str> {
    path.strip_prefix("/grpc/")
        .or((path == "/grpc").then_some(""))
}

struct Shared {
    handlers: Arc<HandlerSet>,
    registry: Arc<Registry>,
    index: index::Index,
    max_message: usize,
}

/// The gRPC front of one worker (made once per server).
pub struct Grpc {
    shared: Arc<Shared>,
    lambda: LambdaServer<LambdaSvc>,
    health: HealthServer<HealthSvc>,
}

impl Grpc {
    pub fn new(app: &App) -> Arc<Self> {
        let shared = Arc::new(Shared {
            handlers: app.handlers.clone(),
            registry: app.registry.clone(),
            index: index::Index::new(app.registry.clone()),
            max_message: app.max_body,
        });
        Arc::new(Grpc {
            lambda: LambdaServer::new(LambdaSvc(shared.clone()))
                .max_decoding_message_size(app.max_body)
                .max_encoding_message_size(usize::MAX),
            health: HealthServer::new(HealthSvc(shared.clone())),
            shared,
        })
    }

    /// Answers one gRPC request. Never fails: errors are gRPC statuses.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        if !is_grpc_call(&req) {
            return self.describe(req.uri().path()).await;
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
    async fn describe(&self, path: &str) -> Response<Body> {
        let sh = &self.shared;
        let plain = |status: u16, body: Vec<u8>, ct: &'static str| {
            let mut r = Response::new(Body::new(Full::new(Bytes::from(body))));
            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            r
        };
        let text = |status: u16, line: String| {
            plain(
                status,
                format!("{line}\n").into_bytes(),
                "text/plain; charset=utf-8",
            )
        };
        let service = describe_path(path).unwrap_or("");
        if service.is_empty() {
            return match sh.index.all().await {
                Ok(map) => plain(
                    200,
                    serde_json::to_vec(&map).unwrap_or_default(),
                    "application/json",
                ),
                Err(s) => text(502, s.message().to_string()),
            };
        }
        let found = match sh.index.lookup(service).await {
            Ok(f) => f,
            Err(s) => return text(502, s.message().to_string()),
        };
        let Some(name) = found else {
            return text(
                404,
                format!("no function binds the gRPC service {service:?}"),
            );
        };
        let code = match sh.registry.resolve(&name).await {
            Ok(c) => c,
            Err(e) => {
                let e = CallError::from(e);
                return text(e.status, e.line);
            }
        };
        match protos::load(&name, &code.dir, &code.config) {
            Ok(Some(c)) if c.service.full_name() == service => {
                let mut r = plain(200, c.pool().encode_to_vec(), "application/x-protobuf");
                for (k, v) in [(X_OL_FUNCTION, &name), (X_OL_VERSION, &code.version)] {
                    if let Ok(v) = HeaderValue::try_from(v.as_str()) {
                        r.headers_mut().insert(k, v);
                    }
                }
                r
            }
            Ok(_) => text(
                404,
                format!("no function binds the gRPC service {service:?}"),
            ),
            Err(e) => text(500, format!("function {name}: {e}")),
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
                Err(e) => return Err(status_of(CallError::from(e))),
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

impl Shared {
    /// One call of `name` through the handler set, as `/run/<name>` would
    /// do it: the reply body of a 2xx, or the gRPC status of the failure.
    async fn call(
        &self,
        name: &str,
        body: &[u8],
        sub_path: &str,
        mut headers: Vec<(&str, &str)>,
    ) -> (Result<Vec<u8>, Status>, Timing) {
        let started = Instant::now();
        headers.push(("content-type", "application/json"));
        let call = Call {
            method: "POST",
            sub_path,
            query: "",
            headers,
            body,
        };
        let mut timing = Timing::default();
        let result = self.handlers.invoke(name, call, &mut timing).await;
        timing.total = started.elapsed();
        let stats = &self.handlers.stats;
        stats.total.record(timing.total);
        let res = match result {
            Ok(r) => {
                stats.count_status(r.status);
                if (200..300).contains(&r.status) {
                    Ok(r.body)
                } else {
                    let text = String::from_utf8_lossy(&r.body);
                    let line = text.lines().next().unwrap_or("").to_string();
                    let line = if line.is_empty() {
                        format!("function {name} answered HTTP {}", r.status)
                    } else {
                        line
                    };
                    Err(status_of(CallError::new(r.status, line)))
                }
            }
            Err(e) => {
                stats.count_status(e.status);
                Err(status_of(e))
            }
        };
        (res, timing)
    }
}

/// `ol.Lambda`: any function by name, JSON payload in and out.
struct LambdaSvc(Arc<Shared>);

#[tonic::async_trait]
impl Lambda for LambdaSvc {
    async fn invoke(
        &self,
        request: tonic::Request<InvokeRequest>,
    ) -> Result<tonic::Response<InvokeReply>, Status> {
        let (meta, _, req) = request.into_parts();
        config::validate_function_name(&req.name).map_err(Status::invalid_argument)?;
        let headers = forwarded_headers(meta.as_ref());
        let (res, timing) = self.0.call(&req.name, &req.payload, "", headers).await;
        let mut resp = tonic::Response::new(InvokeReply { payload: res? });
        if let Ok(v) = timing.to_header().parse() {
            resp.metadata_mut().insert(X_OL_TIMING, v);
        }
        Ok(resp)
    }
}

/// `grpc.health.v1.Health`: the worker serves while it answers at all.
struct HealthSvc(Arc<Shared>);

impl HealthSvc {
    async fn status(&self, service: &str) -> Result<ServingStatus, Status> {
        if matches!(service, "" | LAMBDA | HEALTH) {
            return Ok(ServingStatus::Serving);
        }
        Ok(match self.0.index.lookup(service).await? {
            Some(_) => ServingStatus::Serving,
            None => ServingStatus::ServiceUnknown,
        })
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthSvc {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        match self.status(&service).await? {
            ServingStatus::ServiceUnknown => Err(Status::not_found(format!(
                "unknown service {service:?}: no function binds it"
            ))),
            s => Ok(tonic::Response::new(HealthCheckResponse {
                status: s as i32,
            })),
        }
    }

    type WatchStream = WatchStream;

    /// The current status, then the stream stays open (statuses here do
    /// not change while the worker runs).
    async fn watch(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<WatchStream>, Status> {
        let s = self.status(&request.into_inner().service).await?;
        let first = HealthCheckResponse { status: s as i32 };
        use futures_util::StreamExt;
        let stream = futures_util::stream::once(async move { Ok(first) })
            .chain(futures_util::stream::pending());
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

/// `/<package>.<Service>/<Method>` -> (service, method).
fn split_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    };
    (ok(service) && ok(method) && !method.contains('.')).then_some((service, method))
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_timeout(h: &HeaderMap) -> Result<Option<Duration>, Status> {
    let Some(v) = h.get("grpc-timeout") else {
        return Ok(None);
    };
    let bad = || Status::invalid_argument(format!("malformed grpc-timeout {v:?}"));
    let s = v.to_str().map_err(|_| bad())?;
    if s.len() < 2 || s.len() > 9 {
        return Err(bad());
    }
    let (num, unit) = s.split_at(s.len() - 1);
    if !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(bad()),
    };
    Ok(Some(d))
}

/// How long a request message may take to arrive (without a
/// `grpc-timeout`, a client that never sends it must not hold a stream).
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads the one length-prefixed message of a unary request (at most
/// `limit` bytes), without waiting for more once it is complete.
async fn read_message(body: Incoming, limit: usize) -> Result<Bytes, Status> {
    tokio::time::timeout(READ_TIMEOUT, read_message_inner(body, limit))
        .await
        .unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(format!(
                "the request message did not arrive within {} s",
                READ_TIMEOUT.as_secs()
            )))
        })
}

async fn read_message_inner(mut body: Incoming, limit: usize) -> Result<Bytes, Status> {
    let mut buf = BytesMut::new();
    loop {
        if buf.len() >= 5 {
            let flag = buf[0];
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if flag > 1 {
                return Err(Status::invalid_argument(format!(
                    "the request body is not gRPC: a message starts with a compression flag \
                     of 0 or 1 and a 4-byte length, not {flag:#04x}"
                )));
            }
            if flag == 1 {
                return Err(Status::unimplemented(
                    "compressed request messages are not supported; send them uncompressed",
                ));
            }
            if len > limit {
                return Err(Status::resource_exhausted(format!(
                    "the request message is {len} bytes; the limit is {limit}"
                )));
            }
            if buf.len() >= 5 + len {
                if buf.len() > 5 + len {
                    return Err(Status::invalid_argument(
                        "a unary call carries one message; the request has more data after it",
                    ));
                }
                return Ok(buf.split_off(5).freeze());
            }
        }
        match body.frame().await {
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => {
                return Err(Status::cancelled(format!("cannot read the request: {e}")));
            }
            None if buf.is_empty() => {
                return Err(Status::invalid_argument(
                    "the request has no message: a unary call sends exactly one",
                ));
            }
            None if buf.len() < 5 => {
                return Err(Status::invalid_argument(format!(
                    "truncated gRPC frame: the request ended {} bytes into the 5-byte message header",
                    buf.len()
                )));
            }
            None => {
                let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
                return Err(Status::invalid_argument(format!(
                    "truncated gRPC message: its header announces {len} bytes, the request ended after {}",
                    buf.len() - 5
                )));
            }
        }
    }
}

/// One length-prefixed, uncompressed message.
fn frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.extend_from_slice(msg);
    b.freeze()
}

/// 200, one message, `grpc-status: 0` in the trailers.
fn ok_response(msg: &[u8]) -> Response<Body> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames: [Result<Frame<Bytes>, Infallible>; 2] =
        [Ok(Frame::data(frame(msg))), Ok(Frame::trailers(trailers))];
    let body = Body::new(StreamBody::new(futures_util::stream::iter(frames)));
    let mut r = Response::new(body);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    r
}

fn add_timing(h: &mut HeaderMap, t: &Timing) {
    if let Ok(v) = HeaderValue::try_from(t.to_header()) {
        h.insert(X_OL_TIMING, v);
    }
}

/// Client metadata a WSGI handler may see: text headers, minus gRPC's own.
fn forwarded_headers(h: &HeaderMap) -> Vec<(&str, &str)> {
    h.iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            !(k.starts_with("grpc-") || k.ends_with("-bin") || k == "te" || k == "content-type")
        })
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)))
        .collect()
}

/// The proto3 JSON mapping, with default values written out so that a
/// handler can index every field.
fn to_json(m: &DynamicMessage) -> Result<Vec<u8>, Status> {
    let opts = SerializeOptions::new().skip_default_fields(false);
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut out);
    m.serialize_with_options(&mut ser, &opts)
        .map_err(|e| Status::internal(format!("cannot map the request to JSON: {e}")))?;
    Ok(out)
}

fn from_json(name: &str, desc: MessageDescriptor, json: &[u8]) -> Result<DynamicMessage, Status> {
    let full = desc.full_name().to_string();
    let mut de = serde_json::Deserializer::from_slice(json);
    DynamicMessage::deserialize(desc, &mut de)
        .and_then(|m| de.end().map(|()| m))
        .map_err(|e| {
            let shown = String::from_utf8_lossy(&json[..json.len().min(200)]).into_owned();
            Status::internal(format!(
                "function {name} returned {}, which is not a {full}: {e}",
                one_line(&shown)
            ))
        })
}

/// The gRPC status of a failed call (the HTTP statuses of DESIGN.md).
fn status_of(e: CallError) -> Status {
    let code = match e.status {
        400 => Code::InvalidArgument,
        404 => Code::NotFound,
        405 | 501 => Code::Unimplemented,
        413 | 429 => Code::ResourceExhausted,
        500 => Code::Internal,
        502 | 503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        _ => Code::Unknown,
    };
    Status::new(code, e.line)
}

/// A message squeezed onto one line (gRPC messages travel in a header).
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_timeouts() {
        assert_eq!(
            split_path("/helloworld.Greeter/SayHello"),
            Some(("helloworld.Greeter", "SayHello"))
        );
        assert_eq!(split_path("/run/hello"), Some(("run", "hello")));
        assert_eq!(split_path("/x"), None);
        assert_eq!(split_path("/a/b/c"), None);
        let mut h = HeaderMap::new();
        assert_eq!(parse_timeout(&h).unwrap(), None);
        for (v, d) in [
            ("100m", Duration::from_millis(100)),
            ("2S", Duration::from_secs(2)),
            ("1H", Duration::from_secs(3600)),
            ("5u", Duration::from_micros(5)),
        ] {
            h.insert("grpc-timeout", HeaderValue::from_static(v));
            assert_eq!(parse_timeout(&h).unwrap(), Some(d));
        }
        for v in ["", "m", "123456789S", "1x", "-1S"] {
            h.insert("grpc-timeout", HeaderValue::from_static(v));
            assert_eq!(
                parse_timeout(&h).unwrap_err().code(),
                Code::InvalidArgument,
                "{v}"
            );
        }
    }

    #[test]
    fn call_errors_map_to_grpc_codes() {
        for (http, code) in [
            (404, Code::NotFound),
            (429, Code::ResourceExhausted),
            (500, Code::Internal),
            (504, Code::DeadlineExceeded),
            (502, Code::Unavailable),
        ] {
            assert_eq!(status_of(CallError::new(http, "x")).code(), code);
        }
    }
}
