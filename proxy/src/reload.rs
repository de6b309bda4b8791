//! Hot reload: SIGHUP (or `POST /admin/reload`) re-reads the config file
//! given at start, builds a whole new [`Snapshot`] from it and swaps it in
//! with one atomic store.
//!
//! Why build everything first: parsing, validation (with `file:line`
//! errors), the policy set, routes, worker list and experiments are all
//! built off to the side; only a complete snapshot is stored, so a request
//! sees either the old config or the new one, never a mix. A request keeps
//! the snapshot it loaded to its end, so requests in flight finish under
//! the set they started with. An invalid file, or one that names no worker
//! (empty `workers.static`, no DNS, no local workers: every call would be
//! 503, [`check_has_workers`]), changes nothing: the error is
//! logged as one line, `ol_proxy_reloads_total{result="failed"}` goes up,
//! and the old snapshot stays.
//!
//! Listening sockets and client connections belong to pingora, not to the
//! snapshot, so keep-alive connections stay open across reloads. Settings
//! that pingora fixes at start (`listen`, `admin.listen`, `threads`,
//! `local_workers`, `limits.keepalive_pool`, `timeouts.shutdown_grace_ms`)
//! and the caches, built once at start
//! (`[code_store]`, `[result_cache]`), cannot change without a restart:
//! a reload keeps the running values and says so in the log and the outcome.
//!
//! Worker state carries over: a worker present before and after keeps its
//! `Arc<Worker>` (health streaks, counters) and its latency estimate is
//! copied into the new policy table; DNS-found workers are kept until the
//! next DNS answer. In-flight counts start at zero in the new table: calls
//! in flight are counted (and finish) on the table they started with.
//!
//! One reload runs at a time (a mutex); signals that arrive during a reload
//! coalesce into one more reload, which reads the file as it is then.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use config::{parse_toml, ConfigError, ProxyConfig};
use serde::Serialize;

use crate::state::{config_hash, Snapshot, State};

/// Reloads that were swapped in.
pub static RELOADS_OK: AtomicU64 = AtomicU64::new(0);
/// Reloads refused (unreadable or invalid file); the old config stayed.
pub static RELOADS_FAILED: AtomicU64 = AtomicU64::new(0);

static RELOADER: OnceLock<Reloader> = OnceLock::new();
static LAST: Mutex<Option<Outcome>> = Mutex::new(None);

/// What a reload needs to know about the start.
pub struct Reloader {
    /// The config file; `None` for the embedded quickstart config.
    pub path: Option<PathBuf>,
    /// The file's config as parsed at start (before flag overrides).
    pub file_at_start: ProxyConfig,
    /// The config in force at start (after flag overrides).
    pub running: ProxyConfig,
    /// Local worker addresses (started once).
    pub local: Vec<SocketAddr>,
    lock: Mutex<()>,
}

impl Reloader {
    pub fn new(
        path: Option<PathBuf>,
        file_at_start: ProxyConfig,
        running: ProxyConfig,
        local: Vec<SocketAddr>,
    ) -> Reloader {
        Reloader {
            path,
            file_at_start,
            running,
            local,
            lock: Mutex::new(()),
        }
    }
}

/// Registers what a reload needs; call once before the server runs.
pub fn init(r: Reloader) {
    let _ = RELOADER.set(r);
}

/// The result of one reload, as logged and as `POST /admin/reload` answers.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub ok: bool,
    /// `SIGHUP` or `admin`.
    pub trigger: &'static str,
    /// One line, `file:line: field: reason`, when refused.
    pub error: Option<String>,
    /// The active config's version label and hash after this reload.
    pub version: String,
    pub hash: String,
    /// Unix seconds of this reload.
    pub at_unix: u64,
    pub duration_ms: f64,
    /// Changed settings that need a restart (the running value stays).
    pub restart_required: Vec<String>,
    pub experiments: Vec<String>,
}

/// The last reload's outcome, if any.
pub fn last() -> Option<Outcome> {
    LAST.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// One setting that only a restart changes.
struct RestartOnly {
    field: &'static str,
    /// Whether it differs between two configs.
    differs: fn(&ProxyConfig, &ProxyConfig) -> bool,
    /// The value as a note shows it; `None` for a section, noted as
    /// "changed" with what is kept.
    show: Option<fn(&ProxyConfig) -> String>,
    /// What is kept, for a section.
    kept: fn(&ProxyConfig) -> String,
    /// Puts the running value back into a new config.
    pin: fn(&mut ProxyConfig, &ProxyConfig),
}

/// A plain setting: compared, shown and pinned by its field path.
macro_rules! setting {
    ($name:literal, $($f:ident).+) => {
        RestartOnly {
            field: $name,
            differs: |a, b| a.$($f).+ != b.$($f).+,
            show: Some(|c| c.$($f).+.to_string()),
            kept: |c| c.$($f).+.to_string(),
            pin: |new, run| new.$($f).+ = run.$($f).+.clone(),
        }
    };
}

/// A section: compared and pinned whole, the note says what is kept.
macro_rules! section {
    ($name:literal, $f:ident, $kept:expr) => {
        RestartOnly {
            field: $name,
            differs: |a, b| a.$f != b.$f,
            show: None,
            kept: $kept,
            pin: |new, run| new.$f = run.$f.clone(),
        }
    };
}

/// Everything pingora fixes at start (listeners, threads, pools, the
/// grace period, the local workers) and the caches, built once at start
/// (`caches::init`): one table, used both to report a change and to put
/// the running value back.
fn restart_only() -> [RestartOnly; 8] {
    [
        setting!("listen", listen),
        setting!("admin.listen", admin.listen),
        setting!("threads", threads),
        setting!("limits.keepalive_pool", limits.keepalive_pool),
        setting!("timeouts.shutdown_grace_ms", timeouts.shutdown_grace_ms),
        section!("local_workers", local_workers, |c| format!(
            "{} worker(s)",
            c.local_workers.count
        )),
        section!("code_store", code_store, |c| format!(
            "backing {:?}, ttl_ms {}, warm_ms {}",
            c.code_store.backing, c.code_store.ttl_ms, c.code_store.warm_ms
        )),
        section!("result_cache", result_cache, |c| format!(
            "max_bytes {}, max_entry_bytes {}",
            c.result_cache.max_bytes, c.result_cache.max_entry_bytes
        )),
    ]
}

/// Settings that only a restart changes: reports each difference between
/// the new file and the file at start, and puts the running value back.
fn pin_restart_only(r: &Reloader, new: &mut ProxyConfig) -> Vec<String> {
    let (old, run) = (&r.file_at_start, &r.running);
    let mut out = Vec::new();
    for s in restart_only() {
        if (s.differs)(old, new) {
            let kept = (s.kept)(run);
            out.push(match s.show {
                Some(show) => format!(
                    "{}: {} -> {} needs a restart (still {kept})",
                    s.field,
                    show(old),
                    show(new)
                ),
                None => format!("{}: changed; needs a restart (still {kept})", s.field),
            });
        }
        (s.pin)(new, run);
    }
    out
}

/// A config that names no worker at all (an empty `workers.static`, no
/// `workers.dns`, no local workers) would answer every call 503: it is
/// refused at start and on reload, like an invalid file. Not part of
/// `ProxyConfig::validate`, where an empty file stays a valid default.
pub fn check_has_workers(cfg: &ProxyConfig, local_workers: usize) -> Result<(), config::Invalid> {
    if cfg.workers.static_addrs.is_empty() && cfg.workers.dns.is_empty() && local_workers == 0 {
        return Err(config::Invalid::new(
            "workers.static",
            "no workers: the list is empty and neither workers.dns nor local_workers.count is set, so every call would answer 503",
        ));
    }
    Ok(())
}

/// Copies latency estimates of workers kept from `old` into `new`'s table.
fn carry_latency(old: &Snapshot, new: &Snapshot) {
    for (i, w) in new.workers.iter().enumerate() {
        if let Some(j) = old.workers.iter().position(|o| o.addr == w.addr) {
            let us = old.routing.table.latency_us(j);
            if us > 0 {
                new.routing.table.record_latency(i, us);
            }
        }
    }
}

/// Builds the new snapshot from `text` on top of `old`.
fn build(
    r: &Reloader,
    path: &std::path::Path,
    text: &str,
    old: &Snapshot,
) -> Result<(Snapshot, Vec<String>), ConfigError> {
    let mut cfg: ProxyConfig = parse_toml(path, text)?;
    cfg.resolve_relative_paths(&config::proxy::config_dir(path));
    let notes = pin_restart_only(r, &mut cfg);
    let dns = !cfg.workers.dns.is_empty() && cfg.workers.dns == old.config.workers.dns;
    let hash = config_hash(text);
    let field = |e: config::Invalid| ConfigError::field(path, text, &e.field, e.reason);
    check_has_workers(&cfg, r.local.len()).map_err(field)?;
    let mut snap = Snapshot::build(cfg, hash, &r.local, Some(old)).map_err(field)?;
    if dns {
        let addrs: Vec<SocketAddr> = old
            .workers
            .iter()
            .filter(|w| w.source == "dns")
            .map(|w| w.addr)
            .collect();
        if !addrs.is_empty() {
            snap = snap.with_dns(&addrs).map_err(field)?;
        }
    }
    carry_latency(old, &snap);
    Ok((snap, notes))
}

/// Re-reads the config file and swaps it in if valid. Never panics and
/// never leaves a half-applied config.
pub fn reload(state: &State, trigger: &'static str) -> Outcome {
    let started = Instant::now();
    let Some(r) = RELOADER.get() else {
        return finish(
            state,
            trigger,
            started,
            Err("reload is not set up".into()),
            vec![],
        );
    };
    let _one = r.lock.lock().unwrap_or_else(|e| e.into_inner());
    let Some(path) = &r.path else {
        let e = "no config file: ol-proxy runs the embedded quickstart config (start it with --config <file> to reload)";
        return finish(state, trigger, started, Err(e.into()), vec![]);
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            let e = ConfigError::new(path, format!("cannot read: {e}"));
            return finish(state, trigger, started, Err(e.to_string()), vec![]);
        }
    };
    // Build on the snapshot in force; if another writer (DNS) swapped in
    // meanwhile, build again on top of its result.
    for _ in 0..3 {
        let old = state.snap.load_full();
        match build(r, path, &text, &old) {
            Err(e) => return finish(state, trigger, started, Err(e.to_string()), vec![]),
            Ok((snap, notes)) => {
                let new = Arc::new(snap);
                let prev = state.snap.compare_and_swap(&old, new);
                if Arc::ptr_eq(&prev, &old) {
                    return finish(state, trigger, started, Ok(()), notes);
                }
            }
        }
    }
    finish(
        state,
        trigger,
        started,
        Err("the config kept changing under the reload; try again".into()),
        vec![],
    )
}

fn finish(
    state: &State,
    trigger: &'static str,
    started: Instant,
    result: Result<(), String>,
    notes: Vec<String>,
) -> Outcome {
    let snap = state.snap.load();
    let o = Outcome {
        ok: result.is_ok(),
        trigger,
        error: result.err(),
        version: snap.config.version.clone(),
        hash: format!("{:016x}", snap.config_hash),
        at_unix: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        restart_required: notes,
        experiments: snap
            .experiments
            .list
            .iter()
            .map(|e| e.name.clone())
            .collect(),
    };
    if o.ok {
        RELOADS_OK.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            "reload ({trigger}): ok: config {} version {:?}, {} worker(s), {} experiment(s), {:.1} ms",
            o.hash,
            o.version,
            snap.workers.len(),
            o.experiments.len(),
            o.duration_ms
        );
        for n in &o.restart_required {
            tracing::warn!("reload ({trigger}): {n}");
        }
    } else {
        RELOADS_FAILED.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            "reload ({trigger}): refused, keeping config {}: {}",
            o.hash,
            o.error.as_deref().unwrap_or("")
        );
    }
    *LAST.lock().unwrap_or_else(|e| e.into_inner()) = Some(o.clone());
    o
}

/// Starts the thread that turns SIGHUP into reloads, and returns once the
/// handler is installed (SIGHUP's default action would end the process).
pub fn watch_sighup(state: Arc<State>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("ol-proxy reload".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("reload: no runtime for SIGHUP: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let mut hup = match signal(SignalKind::hangup()) {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::error!("reload: cannot handle SIGHUP: {e}");
                        return;
                    }
                };
                let _ = tx.send(());
                while hup.recv().await.is_some() {
                    let _ = reload(&state, "SIGHUP");
                }
            });
        });
    if spawned.is_ok() {
        let _ = rx.recv_timeout(Duration::from_secs(5));
    }
}
