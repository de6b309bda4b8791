//! The calls: `Shared::call`, one call of a function through the handler
//! set as `/run/<name>` makes it; `ol.Lambda/Invoke` (any function by
//! name, JSON in and out) and `grpc.health.v1.Health` on the generated
//! services.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use config::wire::{Timing, X_OL_TIMING};
use futures_util::Stream;
use tonic::Status;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use super::index::Index;
use super::pb::ol::lambda_server::Lambda;
use super::pb::ol::{InvokeReply, InvokeRequest};
use super::wire::{forwarded_headers, status_of};
use crate::code::registry::Registry;
use crate::invoke::{Call, CallError, HandlerSet};

pub const LAMBDA: &str = "ol.Lambda";
pub const HEALTH: &str = "grpc.health.v1.Health";

/// What every gRPC call of the worker goes through.
pub struct Shared {
    pub handlers: Arc<HandlerSet>,
    pub registry: Arc<Registry>,
    pub index: Index,
    pub max_message: usize,
    /// Draining: health answers `NOT_SERVING`.
    pub drain: Arc<crate::front::drain::Drain>,
}

impl Shared {
    /// One call of `name` through the handler set, as `/run/<name>` would
    /// do it: the reply body of a 2xx, or the gRPC status of the failure.
    pub async fn call(
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
                    Err(status_of(
                        CallError::new(r.status, line),
                        config::wire::LEVEL_FUNCTION,
                    ))
                }
            }
            Err(e) => {
                stats.count_status(e.status);
                let level = e.level;
                Err(status_of(e, level))
            }
        };
        (res, timing)
    }
}

/// `ol.Lambda`: any function by name, JSON payload in and out.
pub struct LambdaSvc(pub Arc<Shared>);

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

/// `grpc.health.v1.Health`: the worker serves while it answers at all,
/// and not once it drains.
pub struct HealthSvc(pub Arc<Shared>);

impl HealthSvc {
    async fn status(&self, service: &str) -> Result<ServingStatus, Status> {
        if self.0.drain.is_draining() {
            return Ok(ServingStatus::NotServing);
        }
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
