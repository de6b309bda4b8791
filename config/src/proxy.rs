//! `ol-proxy`'s configuration file (TOML). Every field has a default, so an
//! empty file is a working config (it proxies to nothing until workers are
//! named); `--listen`/`--admin` flags override the file.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! threads = 2
//!
//! [admin]
//! listen = "127.0.0.1:8081"
//! token = "secret"                  # bearer token; empty: no auth
//!
//! [workers]
//! static = ["127.0.0.1:5001", "127.0.0.1:5002"]
//! dns = "workers.internal:5000"     # each A record is a worker
//! dns_refresh_ms = 5000
//!
//! [health]
//! interval_ms = 1000
//! rise = 2
//! fall = 2
//!
//! [timeouts]
//! connect_ms = 1000
//! read_ms = 30000
//! total_ms = 60000
//! header_read_ms = 10000           # a client's request head, at most
//! idle_keepalive_ms = 60000        # an idle client keep-alive connection
//! shutdown_grace_ms = 5000
//!
//! [limits]
//! max_connections = 4096            # client connections; more: 503, closed
//!
//! [routing]                         # config::policy::RoutingConfig
//! default_policy = "least-load"
//! [[routing.policies]]
//! name = "sess"
//! kind = "session"
//! key = { cookie = "sid" }
//! [[routing.routes]]
//! functions = ["hello*"]
//! policy = "sess"
//!
//! [[paths]]                         # non-/run paths forwarded as they are
//! prefix = "/static/"
//! policy = "round-robin"
//! ```
//!
//! The routing table is the policies crate's schema, embedded as a table
//! (not flattened) so that unknown fields stay errors everywhere.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Invalid, RoutingConfig};

/// Largest request body the proxy buffers to find a routing key in it. It is
/// pingora's retry-buffer size: a buffered body is replayed from there.
pub const MAX_INSPECT_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Public address: HTTP/1.1 and h2c on the same port.
    pub listen: SocketAddr,
    /// Threads of the proxy service (pingora worker threads).
    pub threads: usize,
    /// A label shown by `/admin/status`; the config's hash is shown too.
    pub version: String,
    pub admin: AdminConfig,
    pub workers: WorkersConfig,
    pub local_workers: LocalWorkersConfig,
    pub health: HealthConfig,
    pub timeouts: TimeoutsConfig,
    /// Connect failures retried on the next worker of the policy's order.
    pub retries: usize,
    pub limits: ProxyLimits,
    /// Holding calls no worker can take yet, and retrying refusals.
    pub admission: AdmissionConfig,
    /// Workers taken out of rotation for failing calls.
    pub outliers: OutliersConfig,
    /// Function routes and policies (the policies crate's schema).
    pub routing: RoutingConfig,
    /// Paths outside `/run/` that are forwarded unchanged (first match
    /// wins); any other path answers 404.
    pub paths: Vec<PathRoute>,
    /// Policy A/B experiments (`crate::experiment`).
    pub experiments: Vec<crate::ExperimentConfig>,
    /// The function cache and code store front (`/registry/` on the
    /// admin listener, behind `code_store.token`); off while `backing` is empty.
    pub code_store: CodeStoreConfig,
    /// Responses of functions whose `ol.yaml` has a `cache` section.
    pub result_cache: ResultCacheConfig,
}

/// `[code_store]`: where function packages come from, and how long the
/// proxy trusts its cached copy (proxy/README.md, "Caches at the proxy").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CodeStoreConfig {
    /// A directory (`<name>/` or `<name>.tar.gz`) or an http(s) URL that
    /// serves the code store API (a worker's or another proxy's
    /// `/registry`). Empty: no function cache, `/registry/` is not served.
    pub backing: String,
    /// Bearer token every caller of `/registry` (workers fetching code as
    /// well as uploaders) must send; also sent to an http(s) backing store.
    /// Required with `backing`: packages hold functions' secrets.
    pub token: String,
    /// A cached package is re-checked against the backing store after this.
    pub ttl_ms: u64,
    /// Bytes of packages (and their metadata) kept.
    pub max_bytes: u64,
    /// Largest upload (and largest package fetched).
    pub max_upload_bytes: usize,
    /// A worker that ran a function counts as holding it (and its
    /// packages) warm for this long (the import index). 0 turns the
    /// import index off: policies then decide without it.
    pub warm_ms: u64,
}

/// `[result_cache]`: bounds of the result cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResultCacheConfig {
    /// Bytes of cached responses kept (bodies plus headers).
    pub max_bytes: u64,
    /// A response larger than this is served but not cached.
    pub max_entry_bytes: usize,
    /// How long a request waits for an identical one already upstream
    /// before it goes upstream itself.
    pub wait_ms: u64,
    /// After a function's code changes, its results are not stored for
    /// this long: workers may run the old code until they re-check their
    /// registry (`registry_cache_ms`, 5000 by default).
    pub settle_ms: u64,
}

impl Default for CodeStoreConfig {
    fn default() -> Self {
        CodeStoreConfig {
            backing: String::new(),
            token: String::new(),
            ttl_ms: 2000,
            max_bytes: 256 << 20,
            max_upload_bytes: 64 << 20,
            warm_ms: 60_000,
        }
    }
}

impl Default for ResultCacheConfig {
    fn default() -> Self {
        ResultCacheConfig {
            max_bytes: 64 << 20,
            max_entry_bytes: 1 << 20,
            wait_ms: 10_000,
            settle_ms: 5000,
        }
    }
}

/// The admin listener: `/metrics` and `/admin/status`, never on `listen`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer token required on every admin request; empty means none.
    pub token: String,
}

/// Where the workers are: a static list and/or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkersConfig {
    /// `ip:port` addresses.
    #[serde(rename = "static")]
    pub static_addrs: Vec<SocketAddr>,
    /// `name:port`, re-resolved every `dns_refresh_ms`; each address is a
    /// worker. Empty: none.
    pub dns: String,
    pub dns_refresh_ms: u64,
    /// Speak h2c (HTTP/2 with prior knowledge) to workers instead of
    /// HTTP/1.1. Needed for trailers (gRPC) to pass through: pingora drops
    /// HTTP/1.1 trailers. Health checks stay HTTP/1.1.
    pub h2c: bool,
}

/// `ol-worker` processes that `ol-proxy` starts itself (quickstart), on
/// free loopback ports, and stops on exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalWorkersConfig {
    /// How many; 0 starts none.
    pub count: usize,
    /// The workers' code store (`--registry`).
    pub registry: String,
    /// The `ol-worker` executable: a path, or a name looked up next to
    /// `ol-proxy` and then on `PATH`.
    pub binary: String,
    /// `process` or `docker`.
    pub sandbox: String,
    /// Parent of each worker's `--work-dir`; default: a temporary directory.
    pub work_dir: Option<PathBuf>,
    /// Start-up fails unless a worker listens within this (a docker
    /// sandbox may build its image first).
    pub start_timeout_ms: u64,
    /// A worker that exits is started again after this, doubling while
    /// it keeps exiting within a minute of its start, up to
    /// `restart_backoff_max_ms`.
    pub restart_backoff_ms: u64,
    pub restart_backoff_max_ms: u64,
}

/// Active health checks: `GET <path>` expecting 200 and a body starting
/// with `ready`, or the standard gRPC health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// false: every worker is always taken as healthy.
    pub enabled: bool,
    /// `http`: `GET <path>`; `grpc`: `grpc.health.v1.Health/Check` of
    /// `grpc_service` over h2c, healthy when the answer is `SERVING`.
    pub protocol: HealthProtocol,
    pub path: String,
    /// The service a gRPC check asks about; "" is the server as a whole.
    pub grpc_service: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive successes that bring an unhealthy worker back.
    pub rise: u32,
    /// Consecutive failures that take a healthy worker out.
    pub fall: u32,
    /// How often each worker's `GET /stats` is read for `/metrics` (its
    /// zygotes and package store); 0: never.
    pub stats_interval_ms: u64,
    /// A worker that comes back (health rises again, an ejection ends)
    /// gets a share of its calls that grows from 10% to all over this
    /// long, instead of its whole hashed key space at once. Workers
    /// healthy at their first check start at full share. 0: off.
    pub slow_start_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// TCP connect to a worker.
    pub connect_ms: u64,
    /// Longest wait for each read from a worker (headers or a body chunk).
    pub read_ms: u64,
    /// Longest wait for each write to a worker.
    pub write_ms: u64,
    /// Longest time from picking a worker to the end of its response.
    pub total_ms: u64,
    /// Idle upstream keep-alive connections are closed after this long.
    pub idle_ms: u64,
    /// A client's request head (request line and headers) must arrive
    /// within this long: from the connection's start for its first
    /// request, or from its first byte on a kept-alive connection
    /// (slow or half-sent heads are closed, never held).
    pub header_read_ms: u64,
    /// A client keep-alive connection with no new request is closed after
    /// this long (whole seconds, rounded up: pingora's keep-alive timer).
    pub idle_keepalive_ms: u64,
    /// On SIGINT/SIGTERM: how long in-flight requests may finish.
    pub shutdown_grace_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyLimits {
    /// Largest request head (request line and headers) accepted; 431
    /// beyond. Pingora itself refuses more than 1 MiB or 256 headers (400).
    pub max_header_bytes: usize,
    /// Largest body buffered for a JSON-path key (413 beyond); at most 64 KiB.
    pub inspect_body_bytes: usize,
    /// Upstream keep-alive connections kept per proxy.
    pub keepalive_pool: usize,
    /// Client connections open at once on the public listener; one more
    /// is answered `503` and closed at once. Clamped at start to what the
    /// fd limit allows (`RLIMIT_NOFILE`, see proxy/README.md).
    pub max_connections: usize,
}

/// `[admission]`: what happens to a call no worker can take right now
/// (proxy/README.md, "Admission").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    /// How long a call may wait at the proxy for a worker that can take it
    /// (none healthy yet, or every pick refused it); then 503 with
    /// `Retry-After`. 0: no hold, answer at once.
    pub hold_ms: u64,
    /// Calls of one function waiting at once; one more is answered 503 at once.
    pub hold_queue: usize,
    /// Retries of refused calls on the next pick, as a fraction of calls
    /// over the last seconds (linkerd's retry budget), on top of
    /// `min_retries_per_s`; past the budget a refused call waits in the
    /// hold instead of trying the next worker at once.
    pub retry_ratio: f64,
    pub min_retries_per_s: u64,
    /// `[[admission.limits]]`: concurrency and rate limits by function
    /// (and key); the first rule whose `functions` match applies.
    pub limits: Vec<LimitConfig>,
}

/// One `[[admission.limits]]` rule. Over a limit the call is answered 429
/// with `Retry-After` and never reaches a worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitConfig {
    /// Exact names or globs as in routes; each matching function has its
    /// own counters.
    pub functions: Vec<String>,
    /// Limits per value of this request key (`{ header = "x-tenant" }`,
    /// `{ cookie = ".." }` or `{ query = ".." }`) as well as per
    /// function; calls without it share one set. None: per function.
    pub key: Option<crate::policy::KeySource>,
    /// Calls in flight at this proxy at once; 0: no limit.
    pub max_concurrent: u32,
    /// Calls per second, a token bucket refilled at this rate; 0: no limit.
    pub rate_per_s: u32,
    /// The bucket's size (calls at once above the rate); 0: `rate_per_s`.
    pub burst: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            hold_ms: 5000,
            hold_queue: 1024,
            retry_ratio: 0.2,
            min_retries_per_s: 10,
            limits: Vec::new(),
        }
    }
}

/// `[outliers]`: a worker whose calls keep failing the platform's way is
/// ejected for a while (proxy/README.md, "Admission").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutliersConfig {
    /// Platform failures in a row that eject a worker: its own 502, 503
    /// or 504 (`x-ol-error: worker`) and failed connects; never a
    /// function's error. 0: never eject.
    pub consecutive_failures: u32,
    /// The first ejection's length. The worker then gets calls again (as
    /// probes); one more platform failure ejects it for twice as long, up
    /// to `max_eject_ms`; a success ends the streak.
    pub eject_ms: u64,
    pub max_eject_ms: u64,
    /// At most this share of the workers is ejected at once.
    pub max_ejected_percent: u32,
}

impl Default for OutliersConfig {
    fn default() -> Self {
        OutliersConfig {
            consecutive_failures: 5,
            eject_ms: 5000,
            max_eject_ms: 300_000,
            max_ejected_percent: 50,
        }
    }
}

/// A non-`/run/` path prefix forwarded unchanged with a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathRoute {
    /// Starts with `/`; matched against the request path.
    pub prefix: String,
    /// A policy of `routing` (a name or a built-in kind).
    pub policy: String,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: "127.0.0.1:8080".parse().unwrap(),
            threads: 2,
            version: String::new(),
            admin: AdminConfig::default(),
            workers: WorkersConfig::default(),
            local_workers: LocalWorkersConfig::default(),
            health: HealthConfig::default(),
            timeouts: TimeoutsConfig::default(),
            retries: 2,
            limits: ProxyLimits::default(),
            admission: AdmissionConfig::default(),
            outliers: OutliersConfig::default(),
            routing: RoutingConfig::default(),
            paths: Vec::new(),
            experiments: Vec::new(),
            code_store: CodeStoreConfig::default(),
            result_cache: ResultCacheConfig::default(),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:8081".parse().unwrap(),
            token: String::new(),
        }
    }
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            static_addrs: Vec::new(),
            dns: String::new(),
            dns_refresh_ms: 5000,
            h2c: false,
        }
    }
}

impl Default for LocalWorkersConfig {
    fn default() -> Self {
        LocalWorkersConfig {
            count: 0,
            registry: "examples/functions".into(),
            binary: "ol-worker".into(),
            sandbox: "process".into(),
            work_dir: None,
            start_timeout_ms: 60_000,
            restart_backoff_ms: 250,
            restart_backoff_max_ms: 30_000,
        }
    }
}

/// How a health check asks (`health.protocol`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthProtocol {
    #[default]
    Http,
    Grpc,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            enabled: true,
            protocol: HealthProtocol::Http,
            path: "/status".into(),
            grpc_service: String::new(),
            interval_ms: 1000,
            timeout_ms: 500,
            rise: 2,
            fall: 2,
            stats_interval_ms: 5000,
            slow_start_ms: 0,
        }
    }
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            connect_ms: 1000,
            read_ms: 30_000,
            write_ms: 30_000,
            total_ms: 60_000,
            idle_ms: 60_000,
            header_read_ms: 10_000,
            idle_keepalive_ms: 60_000,
            shutdown_grace_ms: 5000,
        }
    }
}

impl Default for ProxyLimits {
    fn default() -> Self {
        ProxyLimits {
            max_header_bytes: 32 * 1024,
            inspect_body_bytes: MAX_INSPECT_BODY_BYTES,
            keepalive_pool: 128,
            max_connections: 4096,
        }
    }
}

impl ProxyConfig {
    /// Makes the relative paths of the file absolute against `dir` (the
    /// config file's directory), so that the proxy started from anywhere
    /// finds the same code: `local_workers.registry`, `.work_dir`, a
    /// `.binary` given as a path, and a directory `code_store.backing`.
    /// URLs and bare binary names (looked up next to ol-proxy, then on
    /// `PATH`) stay as they are.
    pub fn resolve_relative_paths(&mut self, dir: &Path) {
        let under = |p: &str| -> String {
            if p.is_empty() || is_url(p) || Path::new(p).is_absolute() {
                p.to_string()
            } else {
                dir.join(p).to_string_lossy().into_owned()
            }
        };
        let l = &mut self.local_workers;
        l.registry = under(&l.registry);
        if l.binary.contains('/') {
            l.binary = under(&l.binary);
        }
        if let Some(w) = l.work_dir.as_mut().filter(|w| w.is_relative()) {
            *w = dir.join(&*w);
        }
        self.code_store.backing = under(&self.code_store.backing);
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        if self.threads == 0 || self.threads > 256 {
            return Err(Invalid::new("threads", "must be 1 to 256"));
        }
        if self.admin.listen == self.listen {
            return Err(Invalid::new(
                "admin.listen",
                "must differ from listen: admin is never served on the public port",
            ));
        }
        if self.admin.token.chars().any(|c| c.is_whitespace()) {
            return Err(Invalid::new("admin.token", "must not contain whitespace"));
        }
        if !self.workers.dns.is_empty() {
            match self.workers.dns.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
                _ => {
                    return Err(Invalid::new(
                        "workers.dns",
                        format!("{:?}: expected name:port", self.workers.dns),
                    ))
                }
            }
            if self.workers.dns_refresh_ms == 0 {
                return Err(Invalid::new(
                    "workers.dns_refresh_ms",
                    "must be greater than 0",
                ));
            }
        }
        if self.local_workers.count > 64 {
            return Err(Invalid::new("local_workers.count", "must be at most 64"));
        }
        if self.local_workers.count > 0 {
            if self.local_workers.registry.is_empty() {
                return Err(Invalid::new("local_workers.registry", "must not be empty"));
            }
            let l = &self.local_workers;
            if l.start_timeout_ms == 0 {
                return Err(Invalid::new(
                    "local_workers.start_timeout_ms",
                    "must be above 0",
                ));
            }
            if l.restart_backoff_ms == 0 || l.restart_backoff_ms > l.restart_backoff_max_ms {
                return Err(Invalid::new(
                    "local_workers.restart_backoff_ms",
                    "must be above 0 and at most local_workers.restart_backoff_max_ms",
                ));
            }
            if self.local_workers.binary.is_empty() {
                return Err(Invalid::new("local_workers.binary", "must not be empty"));
            }
            if !matches!(self.local_workers.sandbox.as_str(), "process" | "docker") {
                return Err(Invalid::new(
                    "local_workers.sandbox",
                    format!(
                        "unknown sandbox {:?}: expected process or docker",
                        self.local_workers.sandbox
                    ),
                ));
            }
        }
        if !self.code_store.backing.is_empty() && self.code_store.token.is_empty() {
            return Err(Invalid::new(
                "code_store.token",
                "must be set with code_store.backing: /registry serves functions' code and secrets",
            ));
        }
        for (field, v) in [
            ("code_store.ttl_ms", self.code_store.ttl_ms),
            ("code_store.max_bytes", self.code_store.max_bytes),
            (
                "code_store.max_upload_bytes",
                self.code_store.max_upload_bytes as u64,
            ),
            (
                "result_cache.max_entry_bytes",
                self.result_cache.max_entry_bytes as u64,
            ),
            ("result_cache.wait_ms", self.result_cache.wait_ms),
        ] {
            if v == 0 {
                return Err(Invalid::new(field, "must be greater than 0"));
            }
        }
        if self.result_cache.max_entry_bytes as u64 > self.result_cache.max_bytes {
            return Err(Invalid::new(
                "result_cache.max_entry_bytes",
                "must be at most result_cache.max_bytes",
            ));
        }
        if !self.health.path.starts_with('/') {
            return Err(Invalid::new("health.path", "must start with /"));
        }
        let service_ok = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
        };
        if !service_ok(&self.health.grpc_service) {
            return Err(Invalid::new(
                "health.grpc_service",
                format!(
                    "{:?} is not a gRPC service name (<package>.<Service>, or \"\" for the whole server)",
                    self.health.grpc_service
                ),
            ));
        }
        let positive = [
            ("health.interval_ms", self.health.interval_ms),
            ("health.timeout_ms", self.health.timeout_ms),
            ("health.rise", self.health.rise as u64),
            ("health.fall", self.health.fall as u64),
            ("timeouts.connect_ms", self.timeouts.connect_ms),
            ("timeouts.read_ms", self.timeouts.read_ms),
            ("timeouts.write_ms", self.timeouts.write_ms),
            ("timeouts.total_ms", self.timeouts.total_ms),
            ("timeouts.idle_ms", self.timeouts.idle_ms),
            ("timeouts.header_read_ms", self.timeouts.header_read_ms),
            (
                "timeouts.idle_keepalive_ms",
                self.timeouts.idle_keepalive_ms,
            ),
            ("limits.max_connections", self.limits.max_connections as u64),
            (
                "limits.inspect_body_bytes",
                self.limits.inspect_body_bytes as u64,
            ),
            (
                "limits.max_header_bytes",
                self.limits.max_header_bytes as u64,
            ),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(Invalid::new(field, "must be greater than 0"));
            }
        }
        if self.limits.inspect_body_bytes > MAX_INSPECT_BODY_BYTES {
            return Err(Invalid::new(
                "limits.inspect_body_bytes",
                format!("must be at most {MAX_INSPECT_BODY_BYTES} (pingora's replay buffer)"),
            ));
        }
        if self.limits.max_connections > 1_000_000 {
            return Err(Invalid::new(
                "limits.max_connections",
                "must be at most 1000000",
            ));
        }
        for (field, v) in [
            ("timeouts.header_read_ms", self.timeouts.header_read_ms),
            (
                "timeouts.idle_keepalive_ms",
                self.timeouts.idle_keepalive_ms,
            ),
        ] {
            if v > 3_600_000 {
                return Err(Invalid::new(field, "must be at most 3600000 (1 hour)"));
            }
        }
        if self.timeouts.shutdown_grace_ms > 600_000 {
            return Err(Invalid::new(
                "timeouts.shutdown_grace_ms",
                "must be at most 600000 (10 minutes)",
            ));
        }
        if self.retries > 16 {
            return Err(Invalid::new("retries", "must be at most 16"));
        }
        let a = &self.admission;
        if a.hold_ms > 600_000 {
            return Err(Invalid::new(
                "admission.hold_ms",
                "must be at most 600000 (10 minutes)",
            ));
        }
        if a.hold_queue == 0 || a.hold_queue > 1_000_000 {
            return Err(Invalid::new(
                "admission.hold_queue",
                "must be between 1 and 1000000",
            ));
        }
        if !(0.0..=1.0).contains(&a.retry_ratio) {
            return Err(Invalid::new(
                "admission.retry_ratio",
                "must be between 0 and 1",
            ));
        }
        for (i, l) in a.limits.iter().enumerate() {
            let at = |f: &str| format!("admission.limits.{i}.{f}");
            if l.functions.is_empty() || l.functions.iter().any(|f| f.is_empty()) {
                return Err(Invalid::new(at("functions"), "must list names or globs"));
            }
            if l.max_concurrent == 0 && l.rate_per_s == 0 {
                return Err(Invalid::new(
                    at("max_concurrent"),
                    "a rule needs max_concurrent or rate_per_s (or both) above 0",
                ));
            }
            if matches!(
                l.key,
                Some(crate::policy::KeySource::Json(_) | crate::policy::KeySource::Protobuf(_))
            ) {
                return Err(Invalid::new(
                    at("key"),
                    "must be a header, cookie or query value (limits never read the body)",
                ));
            }
            // The first rule that matches applies, so a second with the
            // same list is dead (and would share its metrics label).
            if let Some(j) = a.limits[..i]
                .iter()
                .position(|e| e.functions == l.functions)
            {
                return Err(Invalid::new(
                    at("functions"),
                    format!("the same list as admission.limits.{j}, which always matches first"),
                ));
            }
            if l.burst > 1_000_000 || l.rate_per_s > 1_000_000 {
                return Err(Invalid::new(
                    at("rate_per_s"),
                    "rate_per_s and burst must be at most 1000000",
                ));
            }
        }
        let o = &self.outliers;
        if o.eject_ms == 0 || o.eject_ms > o.max_eject_ms {
            return Err(Invalid::new(
                "outliers.eject_ms",
                "must be above 0 and at most outliers.max_eject_ms",
            ));
        }
        if o.max_ejected_percent > 100 {
            return Err(Invalid::new(
                "outliers.max_ejected_percent",
                "must be at most 100",
            ));
        }
        if self.health.slow_start_ms > 3_600_000 {
            return Err(Invalid::new(
                "health.slow_start_ms",
                "must be at most 3600000 (an hour)",
            ));
        }
        self.routing.validate_at("routing")?;
        for (i, p) in self.paths.iter().enumerate() {
            if !p.prefix.starts_with('/') {
                return Err(Invalid::new(
                    format!("paths.{i}.prefix"),
                    "must start with /",
                ));
            }
            if p.prefix.starts_with("/run/") {
                return Err(Invalid::new(
                    format!("paths.{i}.prefix"),
                    "/run/ is routed by function name: use [[routing.routes]]",
                ));
            }
            if self.routing.resolve(&p.policy).is_none() {
                return Err(Invalid::new(
                    format!("paths.{i}.policy"),
                    format!("unknown policy {:?}", p.policy),
                ));
            }
        }
        crate::experiment::validate(&self.experiments, &self.routing)?;
        Ok(())
    }
}

/// The directory a config file's relative paths are taken from: the
/// file's own, absolute (the current directory for a bare file name).
pub fn config_dir(file: &Path) -> PathBuf {
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// An http(s) URL rather than a path.
fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_toml;

    #[test]
    fn relative_paths_are_taken_from_the_config_files_directory() {
        let mut c = ProxyConfig::default();
        c.local_workers.registry = "examples/functions".into();
        c.local_workers.binary = "ol-worker".into();
        c.local_workers.work_dir = Some("work".into());
        c.code_store.backing = "http://127.0.0.1:9/registry".into();
        c.resolve_relative_paths(Path::new("/etc/ol"));
        assert_eq!(c.local_workers.registry, "/etc/ol/examples/functions");
        assert_eq!(c.local_workers.binary, "ol-worker", "a name is looked up");
        assert_eq!(c.local_workers.work_dir, Some("/etc/ol/work".into()));
        assert_eq!(c.code_store.backing, "http://127.0.0.1:9/registry");
        c.local_workers.binary = "../bin/ol-worker".into();
        c.local_workers.registry = "/srv/fns".into();
        c.code_store.backing = "store".into();
        c.resolve_relative_paths(Path::new("/etc/ol"));
        assert_eq!(c.local_workers.binary, "/etc/ol/../bin/ol-worker");
        assert_eq!(c.local_workers.registry, "/srv/fns");
        assert_eq!(c.code_store.backing, "/etc/ol/store");
    }

    fn err(text: &str) -> String {
        parse_toml::<ProxyConfig>(Path::new("p.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn empty_is_default() {
        let c: ProxyConfig = parse_toml(Path::new("p.toml"), "").unwrap();
        assert_eq!(c, ProxyConfig::default());
    }

    #[test]
    fn full_config_parses() {
        let text = r#"
listen = "127.0.0.1:9000"
threads = 1
[admin]
listen = "127.0.0.1:9001"
token = "t"
[workers]
static = ["127.0.0.1:5001"]
dns = "localhost:5000"
[local_workers]
count = 2
[health]
rise = 1
[timeouts]
connect_ms = 50
[routing]
default_policy = "round-robin"
[[routing.policies]]
name = "sess"
kind = "session"
key = { cookie = "sid" }
[[routing.routes]]
functions = ["hello"]
policy = "sess"
[[paths]]
prefix = "/"
policy = "round-robin"
"#;
        let c: ProxyConfig = parse_toml(Path::new("p.toml"), text).unwrap();
        assert_eq!(c.workers.static_addrs.len(), 1);
        assert_eq!(c.routing.policies[0].name, "sess");
        assert_eq!(c.paths[0].prefix, "/");
    }

    #[test]
    fn errors_name_file_line_and_field() {
        assert_eq!(
            err("threads = 1\n[health]\nfall = 0\n"),
            "p.toml:3: health.fall: must be greater than 0"
        );
        assert!(err("[workers]\ndns = \"nope\"\n").starts_with("p.toml:2: workers.dns:"));
        assert!(
            err("[health]\nprotocol = \"grpc\"\ngrpc_service = \"a/b\"\n")
                .contains("health.grpc_service: \"a/b\" is not a gRPC service name")
        );
        assert!(err("[health]\nprotocol = \"tcp\"\n").contains("unknown variant"));
        assert!(err("listen = \"x\"\n").starts_with("p.toml:1: "));
        assert!(err("[timeouts]\nconect_ms = 1\n").contains("unknown field"));
        let e = err("[routing]\n[[routing.policies]]\nname = \"s\"\nkind = \"session\"\n");
        assert!(e.starts_with("p.toml:2: routing.policies.0.key:"), "{e}");
        let e = err("[[paths]]\nprefix = \"/x\"\npolicy = \"nope\"\n");
        assert!(e.starts_with("p.toml:3: paths.0.policy:"), "{e}");
        let e = err("listen = \"127.0.0.1:1\"\n[admin]\nlisten = \"127.0.0.1:1\"\n");
        assert!(e.starts_with("p.toml:3: admin.listen:"), "{e}");
        let rule = "[[admission.limits]]\nfunctions = [\"a*\"]\nmax_concurrent = 1\n";
        let e = err(&format!("{rule}{rule}"));
        assert!(
            e.contains("admission.limits.1.functions: the same list as admission.limits.0"),
            "{e}"
        );
    }
}
