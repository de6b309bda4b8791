//! `/admin/status`: the live config's version, reloads, workers with
//! their health and load, policies and routes, as JSON.

use std::sync::atomic::Ordering;

use serde_json::json;

use crate::state::{State, IN_FLIGHT};

pub fn status(state: &State) -> serde_json::Value {
    let snap = state.snap.load();
    let t = &snap.routing.table;
    let now = crate::state::warm::now_ms();
    let workers: Vec<_> = snap
        .workers
        .iter()
        .enumerate()
        .map(|(i, w)| {
            json!({
                "address": w.key,
                "source": w.source,
                "healthy": t.healthy(i),
                "draining": w.is_draining(),
                "ejected": w.outlier.ejected(now),
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
        "uptime_s": state.started.elapsed().as_secs(),
        "in_flight": IN_FLIGHT.load(Ordering::Relaxed),
        "default_policy": snap.config.routing.default_policy,
        "policies": policies,
        "routes": snap.routes.labels,
        "workers": workers,
    })
}
