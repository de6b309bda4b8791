//! The admin listener: `/metrics` (Prometheus text) and `/admin/status`
//! (JSON), on its own address and never on the public port, behind a
//! bearer token when one is configured; and the code store API
//! (`/registry`, `codestore.rs`) behind `code_store.token`, which the
//! workers that fetch code from the proxy send.
//!
//! It is a separate pingora service (`ServeHttp`) with one thread, so a
//! scrape never competes with the proxy's threads for long.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::metrics::render;
use crate::snapshot::{State, IN_FLIGHT};
use crate::workers::REPORTED;

pub struct Admin {
    pub state: Arc<State>,
}

fn text(status: StatusCode, ctype: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .header("content-length", body.len())
        .body(body)
        .expect("static parts")
}

impl Admin {
    fn status_json(&self) -> serde_json::Value {
        let snap = self.state.snap.load();
        let t = &snap.routing.table;
        let workers: Vec<_> = snap
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| {
                json!({
                    "address": w.key,
                    "source": w.source,
                    "healthy": t.healthy(i),
                    "in_flight": t.in_flight(i),
                    "latency_ewma_ms": t.latency_us(i) as f64 / 1000.0,
                    "requests": w.stats.requests.load(Ordering::Relaxed),
                })
            })
            .collect();
        let policies: Vec<_> = snap
            .routing
            .policies
            .iter()
            .map(|p| json!({"name": p.name, "kind": p.kind}))
            .collect();
        json!({
            "config": {
                "version": snap.config.version,
                "hash": format!("{:016x}", snap.config_hash),
                "loaded_unix": snap.loaded.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                "loaded_ago_s": snap.loaded.elapsed().map_or(0.0, |d| d.as_secs_f64()),
            },
            "reloads": {
                "ok": crate::reload::RELOADS_OK.load(Ordering::Relaxed),
                "failed": crate::reload::RELOADS_FAILED.load(Ordering::Relaxed),
                "last": crate::reload::last(),
            },
            "experiments": snap.experiments.list.iter().map(|e| &e.name).collect::<Vec<_>>(),
            "uptime_s": self.state.started.elapsed().as_secs(),
            "in_flight": IN_FLIGHT.load(Ordering::Relaxed),
            "default_policy": snap.config.routing.default_policy,
            "policies": policies,
            "routes": snap.routes.labels,
            "workers": workers,
        })
    }

    fn metrics(&self) -> String {
        let snap = self.state.snap.load();
        let mut out = String::with_capacity(16 * 1024);
        render(
            &mut out,
            "ol_proxy_route",
            "route",
            snap.routes
                .labels
                .iter()
                .map(String::as_str)
                .zip(snap.routes.stats.iter()),
        );
        render(
            &mut out,
            "ol_proxy_policy",
            "policy",
            snap.routing
                .policies
                .iter()
                .map(|p| p.name.as_str())
                .zip(snap.policy_stats.iter()),
        );
        render(
            &mut out,
            "ol_proxy_worker",
            "worker",
            snap.workers.iter().map(|w| (w.key.as_str(), &w.stats)),
        );
        let t = &snap.routing.table;
        out.push_str("# HELP ol_proxy_worker_healthy 1 when the worker passes health checks.\n# TYPE ol_proxy_worker_healthy gauge\n");
        for (i, w) in snap.workers.iter().enumerate() {
            let _ = writeln!(
                out,
                "ol_proxy_worker_healthy{{worker=\"{}\"}} {}",
                w.key,
                t.healthy(i) as u8
            );
        }
        out.push_str("# HELP ol_proxy_worker_in_flight Requests in flight on the worker.\n# TYPE ol_proxy_worker_in_flight gauge\n");
        for (i, w) in snap.workers.iter().enumerate() {
            let _ = writeln!(
                out,
                "ol_proxy_worker_in_flight{{worker=\"{}\"}} {}",
                w.key,
                t.in_flight(i)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ol_proxy_in_flight Requests in flight.\n# TYPE ol_proxy_in_flight gauge\nol_proxy_in_flight {}",
            IN_FLIGHT.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP ol_proxy_reloads_total Config reloads (SIGHUP, POST /admin/reload) by result.\n# TYPE ol_proxy_reloads_total counter\nol_proxy_reloads_total{{result=\"ok\"}} {}\nol_proxy_reloads_total{{result=\"failed\"}} {}",
            crate::reload::RELOADS_OK.load(Ordering::Relaxed),
            crate::reload::RELOADS_FAILED.load(Ordering::Relaxed)
        );
        // What workers report at /stats (health.rs polls it).
        let polled: Vec<_> = snap
            .workers
            .iter()
            .filter(|w| w.reported.polled.load(Ordering::Relaxed))
            .collect();
        for (i, (_, metric, kind, help)) in REPORTED.iter().enumerate() {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
            for w in &polled {
                let v = w.reported.values[i].load(Ordering::Relaxed);
                let _ = writeln!(out, "{metric}{{worker=\"{}\"}} {v}", w.key);
            }
        }
        crate::caches::render(&mut out, &snap.workers);
        crate::conns::render(&mut out);
        out
    }
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
                let mut r = text(
                    StatusCode::UNAUTHORIZED,
                    "text/plain",
                    b"admin needs Authorization: Bearer <token>\n".to_vec(),
                );
                r.headers_mut()
                    .insert("www-authenticate", http::HeaderValue::from_static("Bearer"));
                return r;
            }
        }
        let path = session.req_header().uri.path().to_string();
        if path == "/admin/reload" || path.starts_with("/admin/experiments") {
            return crate::exp_page::admin(
                &self.state,
                session.req_header().method.as_str(),
                &path,
            );
        }
        match path.as_str() {
            "/metrics" => text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics().into_bytes(),
            ),
            "/admin/status" => {
                let mut body = serde_json::to_vec_pretty(&self.status_json()).unwrap_or_default();
                body.push(b'\n');
                text(StatusCode::OK, "application/json", body)
            }
            p => text(
                StatusCode::NOT_FOUND,
                "text/plain",
                format!(
                    "no admin page {}: try /metrics, /admin/status, /admin/experiments or POST /admin/reload\n",
                    p.chars().take(100).collect::<String>()
                )
                .into_bytes(),
            ),
        }
    }
}
