//! Background work: active health checks and DNS re-resolution, as one
//! pingora background service.
//!
//! Health: every `interval_ms`, each worker gets the configured check
//! (`client.rs`: `GET <path>` answering `ready`, or gRPC's
//! `Health/Check` answering `SERVING`). The result goes into the worker's
//! atomics (`rise`/`fall` streaks), which the very next routing decision
//! sees.
//!
//! Stats: every `stats_interval_ms`, each worker's `GET /stats` is read
//! into its `reported` gauges (zygotes, package store) for `/metrics`.
//!
//! DNS: every `dns_refresh_ms`, `workers.dns` is resolved; if the set of
//! addresses changed, a snapshot with the new worker list is swapped in
//! (known workers keep their state).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::client::{health_check, http_get, HealthCheck, Probe};
use crate::state::warm::now_ms;
use crate::state::State;

pub struct Background {
    pub state: Arc<State>,
}

async fn resolve(name: &str) -> Option<Vec<SocketAddr>> {
    let mut v: Vec<SocketAddr> = tokio::net::lookup_host(name)
        .await
        .ok()?
        .filter(|a| a.is_ipv4())
        .collect();
    v.sort();
    v.dedup();
    Some(v)
}

impl Background {
    async fn check_all(&self) {
        let snap = self.state.snap.load_full();
        let h = &snap.config.health;
        let timeout = Duration::from_millis(h.timeout_ms);
        let check: Arc<dyn HealthCheck> = Arc::from(health_check(h));
        // With health checks off, only a worker that said it is draining
        // is asked (else it would never come back); ejections still end.
        let asked = snap.workers.iter().filter(|w| h.enabled || w.is_draining());
        let checks = asked.map(|w| {
            let w = w.clone();
            let check = check.clone();
            let (rise, fall) = (h.rise, h.fall);
            async move {
                let probe = check.check(w.addr, timeout).await;
                if probe == Probe::Draining && w.drain() {
                    tracing::info!("worker {} is draining: out of rotation", w.addr);
                }
                let changed = w.record_check(probe == Probe::Healthy, rise, fall);
                if let Some(now) = changed {
                    tracing::info!(
                        "worker {} is now {}",
                        w.addr,
                        if now { "healthy" } else { "unhealthy" }
                    );
                }
                changed == Some(true)
            }
        });
        let handles: Vec<_> = checks.map(tokio::spawn).collect();
        let mut rose = false;
        for h in handles {
            rose |= h.await.unwrap_or(false);
        }
        // Publish to the policies' table of the snapshot in force now (a
        // DNS swap may have replaced the one this round started with);
        // ejections whose time is up end here.
        let cur = self.state.snap.load();
        let now = now_ms();
        for (i, w) in cur.workers.iter().enumerate() {
            if w.outlier.end_if_due(now) {
                tracing::info!("worker {}: its ejection ends; it gets calls again", w.addr);
                rose = true;
            }
            cur.routing.table.set_healthy(i, w.routable(now));
        }
        // A worker came up: calls held for one look again.
        if rose {
            crate::state::admission::HOLD.health_changed();
        }
    }

    /// Reads each worker's `GET /stats` into its `reported` gauges.
    async fn poll_stats(&self) {
        let snap = self.state.snap.load_full();
        let timeout = Duration::from_millis(snap.config.health.timeout_ms);
        let polls: Vec<_> = snap
            .workers
            .iter()
            .map(|w| {
                let w = w.clone();
                tokio::spawn(async move {
                    match http_get(w.addr, "/stats", timeout, 64 << 10).await {
                        Some((200, body)) if w.reported.update(&body) => {}
                        _ => tracing::debug!("worker {}: no /stats this round", w.addr),
                    }
                })
            })
            .collect();
        for p in polls {
            let _ = p.await;
        }
    }

    async fn refresh_dns(&self, last: &mut Vec<SocketAddr>) {
        let snap = self.state.snap.load_full();
        let name = snap.config.workers.dns.clone();
        if name.is_empty() {
            return;
        }
        match resolve(&name).await {
            Some(addrs) if addrs != *last => {
                tracing::info!("workers.dns {name} resolves to {addrs:?}");
                let cur = self.state.snap.load_full();
                match cur.with_dns(&addrs) {
                    Ok(s) => {
                        self.state.snap.store(Arc::new(s));
                        *last = addrs;
                    }
                    Err(e) => tracing::warn!(
                        "workers.dns: cannot use {addrs:?}: {}: {}",
                        e.field,
                        e.reason
                    ),
                }
            }
            Some(_) => {}
            None => tracing::warn!("workers.dns {name} does not resolve; keeping the last answer"),
        }
    }
}

#[async_trait]
impl BackgroundService for Background {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last_dns: Vec<SocketAddr> = Vec::new();
        let mut next_dns = Instant::now();
        let mut next_stats = Instant::now();
        loop {
            if Instant::now() >= next_dns {
                self.refresh_dns(&mut last_dns).await;
                let ms = self.state.snap.load().config.workers.dns_refresh_ms;
                next_dns = Instant::now() + Duration::from_millis(ms);
            }
            let stats_ms = self.state.snap.load().config.health.stats_interval_ms;
            if stats_ms > 0 && Instant::now() >= next_stats {
                self.poll_stats().await;
                next_stats = Instant::now() + Duration::from_millis(stats_ms);
            }
            self.check_all().await;
            let interval = Duration::from_millis(self.state.snap.load().config.health.interval_ms);
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
