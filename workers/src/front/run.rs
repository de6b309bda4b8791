//! `ANY /run/<name>[/sub][?query]`: one call of a function over HTTP.

use std::sync::Arc;
use std::time::Instant;

use config::wire::{Timing, X_OL_TIMING};
use config::worker::Tracebacks;
use http::header::HeaderValue;
use http::{Request, StatusCode};
use hyper::body::Incoming;

use super::body;
use super::reply::{self, error_response, text, Resp};
use crate::invoke::{Call, HandlerSet};

pub struct Run {
    pub handlers: Arc<HandlerSet>,
    pub max_body: usize,
    /// Where handlers' tracebacks go (`tracebacks` in the worker config).
    pub tracebacks: Tracebacks,
}

impl Run {
    /// `/run/<name>[/sub][?query]`: calls the function, its reply checked
    /// (`reply::check`), with `x-ol-timing`.
    pub async fn call(&self, rest: &str, req: Request<Incoming>) -> Resp {
        let started = Instant::now();
        let (name, sub) = match split_name(rest) {
            Ok(x) => x,
            Err(r) => return *r,
        };
        let (parts, body) = req.into_parts();
        let body = match body::read(body, &parts.headers, self.max_body).await {
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
        let result = self.handlers.invoke(name, call, &mut timing).await;
        timing.total = started.elapsed();
        self.handlers.stats.total.record(timing.total);
        // The function's status and headers are checked in `reply::check`.
        let result = result.and_then(|r| reply::check(name, r, self.tracebacks));
        let mut resp = match result {
            Ok(r) => reply::function(r),
            Err(mut e) => {
                reply::hide_detail(name, &mut e, self.tracebacks);
                error_response(e)
            }
        };
        self.handlers.stats.count_status(resp.status().as_u16());
        if let Ok(v) = HeaderValue::try_from(timing.to_header()) {
            resp.headers_mut().insert(X_OL_TIMING, v);
        }
        resp
    }
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
