//! The code store API on the worker's port (`/registry/...`), behind
//! `registry_token` when one is set; served from the registry, whatever
//! the store behind it.
//!
//! | endpoint                        | what                           |
//! |---------------------------------|--------------------------------|
//! | `GET /registry/`                | JSON list of function names    |
//! | `GET /registry/<name>[.tar.gz]` | the function's package         |
//! | `GET /registry/<name>/config`   | its `ol.yaml` as JSON (`environment` redacted without the token) |
//! | `POST /registry/<name>`         | install a `.tar.gz` (201)      |
//! | `DELETE /registry/<name>`       | remove it (204)                |

use std::sync::Arc;

use http::header::HeaderValue;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;

use super::body;
use super::reply::{error_response, json, no_content, package, text, Resp};
use crate::code::registry::Registry;

pub struct Endpoints {
    pub registry: Arc<Registry>,
    pub max_upload: usize,
}

impl Endpoints {
    pub async fn serve(&self, rest: &str, req: Request<Incoming>) -> Resp {
        let rest = rest.trim_start_matches('/');
        let authorized = self.registry.token_given(
            req.headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        );
        if self.registry.token_required() && !authorized {
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
            return match self.registry.list().await {
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
            (Method::GET, "") => match self.registry.package(name).await {
                Ok(bytes) => package(bytes),
                Err(e) => error_response(e.into()),
            },
            (Method::GET, "config") => match self.registry.resolve(name).await {
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
                let bytes = match body::read(body, &parts.headers, self.max_upload).await {
                    Ok(b) => b,
                    Err(r) => return r,
                };
                match self.registry.upload(name, bytes.to_vec()).await {
                    Ok(()) => text(StatusCode::CREATED, &format!("installed {name}")),
                    Err(e) => error_response(e.into()),
                }
            }
            (Method::DELETE, "") => match self.registry.delete(name).await {
                Ok(()) => no_content(),
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
}
