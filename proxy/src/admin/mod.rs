//! The admin listener: `/metrics` (Prometheus text, `prometheus.rs`),
//! `/admin/status` (JSON, `status.rs`), `POST /admin/reload`, and the
//! experiments (`/admin/experiments[/<name>[.json]]`: `report.rs` computes,
//! `page.rs` draws), on its own address and never on the public port,
//! behind `admin.token` when one is configured; and the code store API
//! (`/registry`, `caches/front.rs`) behind `code_store.token`, which the
//! workers that fetch code from the proxy send.
//!
//! It is a separate pingora service (`ServeHttp`) with one thread, so a
//! scrape never competes with the proxy's threads for long. Every route is
//! dispatched here, after the token check, and every reply is built by
//! `crate::http::answer`.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

mod page;
mod prometheus;
mod report;
mod status;

use crate::http::answer::{self, Listener};
use crate::state::State;

pub struct Admin {
    pub state: Arc<State>,
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        // The code store has its own token (workers send it, not the admin one).
        let p = session.req_header().uri.path();
        if p == "/registry" || p.starts_with("/registry/") {
            if let Some(code) = crate::caches::get().and_then(|c| c.code.as_ref()) {
                return code.serve(session).await;
            }
        }
        let token = self.state.snap.load().config.admin.token.clone();
        if !token.is_empty() {
            let auth = session
                .req_header()
                .headers
                .get(http::header::AUTHORIZATION);
            if !config::bearer_matches(auth.map(|v| v.as_bytes()), &token) {
                return answer::unauthorized(
                    Listener::Admin,
                    "admin needs Authorization: Bearer <token>",
                );
            }
        }
        let method = session.req_header().method.as_str();
        let path = session.req_header().uri.path();
        self.route(method, path)
    }
}

impl Admin {
    fn route(&self, method: &str, path: &str) -> Response<Vec<u8>> {
        if let Some(rest) = path.strip_prefix("/admin/experiments") {
            return self.experiments(rest.trim_start_matches('/'));
        }
        match path {
            "/metrics" => {
                let snap = self.state.snap.load();
                let text = prometheus::render(&snap, crate::caches::get());
                answer::reply(
                    Listener::Admin,
                    200,
                    "text/plain; version=0.0.4",
                    text.into_bytes(),
                )
            }
            "/admin/status" => {
                answer::reply_json(Listener::Admin, 200, &status::status(&self.state))
            }
            "/admin/reload" if method == "POST" => {
                let o = crate::reload::reload(&self.state, "admin");
                let status = if o.ok { 200 } else { 422 };
                let v = serde_json::to_value(&o).unwrap_or_default();
                answer::reply_json(Listener::Page, status, &v)
            }
            "/admin/reload" => answer::not_allowed(
                Listener::Page,
                "POST",
                "POST /admin/reload re-reads the config file",
            ),
            p => answer::reply_line(
                Listener::Admin,
                404,
                &format!(
                    "no admin page {}: try /metrics, /admin/status, /admin/experiments or POST /admin/reload",
                    p.chars().take(100).collect::<String>()
                ),
            ),
        }
    }

    /// `/admin/experiments` (all, JSON), `<name>` (HTML), `<name>.json`.
    fn experiments(&self, rest: &str) -> Response<Vec<u8>> {
        let snap = self.state.snap.load_full();
        if rest.is_empty() {
            let v = report::report(&snap.experiments);
            return answer::reply_json(Listener::Page, 200, &v);
        }
        let (name, as_json) = match rest.strip_suffix(".json") {
            Some(n) => (n, true),
            None => (rest, false),
        };
        let Some(e) = snap.experiments.list.iter().find(|e| e.name == name) else {
            let shown: String = name.chars().take(100).collect();
            let msg = format!("no experiment {shown:?}: see /admin/experiments");
            return answer::reply_line(Listener::Page, 404, &msg);
        };
        let v = report::views(e);
        let j = report::experiment_json(e, &v);
        if as_json {
            answer::reply_json(Listener::Page, 200, &j)
        } else {
            let html = page::page(e, &v, &j).into_bytes();
            answer::reply(Listener::Page, 200, "text/html; charset=utf-8", html)
        }
    }
}
