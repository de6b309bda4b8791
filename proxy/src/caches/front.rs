//! The code store front: the `/registry` API on the admin listener,
//! answered from the function cache, to callers with `code_store.token`
//! only (the workers that fetch code from the proxy send it).
//!
//! Uploads (`POST`/`PUT /registry/<name>`) are checked here before they
//! touch the store (valid name, size limit, gzip, a safe tar with `f.py`,
//! a valid `ol.yaml`), then written with an atomic rename (directory) or
//! passed on (URL, whose own checks apply too); `DELETE` goes through.
//! Both invalidate the cached entry. A refused upload changes nothing.

use std::sync::atomic::Ordering::Relaxed;

use codestore::api::Request;
use http::Response;
use pingora::protocols::http::ServerSession;

use super::code::CodeStore;
use crate::http::answer::{reply, reply_line, unauthorized, Listener::CodeStore as On};
use crate::http::body::{self, BodyRead};

impl CodeStore {
    /// Serves the code store API on `/registry...` from the cache, on the
    /// admin listener, to callers with `code_store.token` only.
    pub async fn serve(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let auth = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION);
        if !config::bearer_matches(auth.map(|v| v.as_bytes()), &self.token) {
            return unauthorized(
                On,
                "the code store needs Authorization: Bearer <code_store.token>",
            );
        }
        let path = session.req_header().uri.path().to_string();
        let method = session.req_header().method.clone();
        let rest = path.strip_prefix("/registry").unwrap_or("");
        let ask = match codestore::api::parse(method.as_str(), rest) {
            Ok(a) => a,
            Err(r) => return reply_line(On, r.status, &r.reason),
        };
        match ask {
            Request::List => match self.list().await {
                Ok(names) => {
                    let body = serde_json::to_vec(&names).unwrap_or_default();
                    reply(On, 200, "application/json", body)
                }
                Err(e) => reply_line(On, 502, &e.0),
            },
            Request::Package(name) | Request::Config(name) => {
                let config = matches!(ask, Request::Config(_));
                match self.get(name).await {
                    Ok(Some(p)) if !config => {
                        let mut r = reply(On, 200, "application/gzip", p.bytes.to_vec());
                        if let Ok(v) = http::HeaderValue::from_str(&p.version) {
                            r.headers_mut().insert(config::wire::X_OL_VERSION, v);
                        }
                        r
                    }
                    Ok(Some(p)) => reply(On, 200, "application/json", p.config_json.to_vec()),
                    Ok(None) => reply_line(On, 404, &codestore::client::not_found(name)),
                    Err(e) => reply_line(On, 502, &format!("code store: {}", e.0)),
                }
            }
            Request::Upload(name) => {
                let read = body::read(session, self.max_upload, false).await;
                let body = match read {
                    Ok(BodyRead::Whole(b)) => b,
                    Ok(BodyRead::TooLarge | BodyRead::Cut) => {
                        self.stats.uploads_refused.fetch_add(1, Relaxed);
                        let msg = format!(
                            "upload is larger than the limit of {} bytes",
                            self.max_upload
                        );
                        session.set_keepalive(None);
                        return reply_line(On, 413, &msg);
                    }
                    Err(e) => {
                        session.set_keepalive(None);
                        return reply_line(On, 400, &format!("cannot read the upload: {e}"));
                    }
                };
                let (status, msg) = self.upload(name, body).await;
                self.invalidate(name).await;
                if status == 201 {
                    self.stats.uploads.fetch_add(1, Relaxed);
                } else {
                    self.stats.uploads_refused.fetch_add(1, Relaxed);
                }
                reply_line(On, status, &msg)
            }
            Request::Delete(name) => {
                let (status, msg) = self.delete(name).await;
                self.invalidate(name).await;
                if status == 204 {
                    self.stats.deletes.fetch_add(1, Relaxed);
                    return reply(On, 204, "text/plain", Vec::new());
                }
                reply_line(On, status, &msg)
            }
        }
    }
}
