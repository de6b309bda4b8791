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

use codestore::api::Request;
use http::header::HeaderValue;
use http::StatusCode;
use hyper::body::Incoming;

use super::body;
use super::reply::{error_response, json, no_content, package, text, Resp};
use crate::code::registry::Registry;

pub struct Endpoints {
    pub registry: Arc<Registry>,
    pub max_upload: usize,
}

impl Endpoints {
    pub async fn serve(&self, rest: &str, req: http::Request<Incoming>) -> Resp {
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
        let ask = match codestore::api::parse(req.method().as_str(), rest) {
            Ok(a) => a,
            Err(r) => {
                let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
                return text(status, &r.reason);
            }
        };
        match ask {
            Request::List => match self.registry.list().await {
                Ok(names) => json(StatusCode::OK, serde_json::to_string(&names).unwrap()),
                Err(e) => error_response(e.into()),
            },
            Request::Package(name) => match self.registry.package(name).await {
                Ok(bytes) => package(bytes),
                Err(e) => error_response(e.into()),
            },
            Request::Config(name) => match self.registry.resolve(name).await {
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
            Request::Upload(name) => {
                let name = name.to_string();
                let (parts, body) = req.into_parts();
                let bytes = match body::read(body, &parts.headers, self.max_upload).await {
                    Ok(b) => b,
                    Err(r) => return r,
                };
                match self.registry.upload(&name, bytes.to_vec()).await {
                    Ok(()) => text(StatusCode::CREATED, &codestore::api::installed(&name)),
                    Err(e) => error_response(e.into()),
                }
            }
            Request::Delete(name) => match self.registry.delete(name).await {
                Ok(()) => no_content(),
                Err(e) => error_response(e.into()),
            },
        }
    }
}
