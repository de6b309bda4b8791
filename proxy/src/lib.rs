//! `ol-proxy`: ol-edge's edge proxy, on pingora 0.9.
//!
//! A request comes in over HTTP/1.1 or h2c; the function name is read from
//! `/run/<name>/...`; a routing policy (config `routing`) orders the healthy
//! workers; the proxy forwards to the first and fails over to the next on a
//! connect failure; the response comes back unchanged plus `x-ol-worker`
//! and `x-ol-policy`. See `service` for where each pingora hook runs.
//!
//! Code map:
//! - [`service`]: the `ProxyHttp` hooks (the request path).
//! - [`inspect`]: name inspection and routing-key extraction.
//! - [`routing`]: the adapter to the routing policies (one place to switch).
//! - [`snapshot`]: the live config, one `ArcSwap<Snapshot>`.
//! - [`workers`]: per-worker atomics (health, in-flight, EWMA, stats).
//! - [`health`]: health checks and DNS re-resolution (background service).
//! - [`admin`]: `/metrics` and `/admin/status` on the admin listener.
//! - [`reload`]: SIGHUP / `POST /admin/reload`: re-read, build, swap.
//! - [`experiments`]: policy A/B experiments: arm assignment and statistics.
//! - [`metrics`]: counters and histograms, Prometheus text.
//! - [`caches`]: the caches at the proxy: [`codestore`] (function cache,
//!   `/registry` front), [`result_cache`], [`import_index`].
//! - [`local`]: local `ol-worker` children for the quickstart.
//! - [`server`]: builds the pingora server from our config, and shutdown.
//! - [`conns`]: client connections: the cap, request-head deadlines, idle
//!   keep-alive.

pub mod admin;
pub mod caches;
pub mod codestore;
pub mod conns;
pub mod exp_page;
pub mod experiments;
pub mod grpc;
pub mod health;
pub mod import_index;
pub mod inspect;
pub mod local;
pub mod metrics;
pub mod reload;
pub mod result_cache;
pub mod routing;
pub mod server;
pub mod service;
pub mod snapshot;
pub mod workers;
