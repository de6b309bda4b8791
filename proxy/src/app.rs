//! Composes the proxy: builds the pingora server in code from
//! `ProxyConfig` (no pingora YAML, no pingora `Opt`) out of its services
//! (the public listener behind `conns`, the admin listener, the health and
//! DNS background), runs it, and shuts it down. It only wires; each part
//! keeps its own rules.
//!
//! Shutdown: SIGINT, SIGTERM and SIGQUIT all mean "graceful terminate"
//! (pingora's SIGINT would drop in-flight requests; we do not do binary
//! upgrades). Pingora then stops accepting and sleeps its whole grace
//! period; a watcher thread ends the process as soon as no request is in
//! flight, or when `timeouts.shutdown_grace_ms` is up, after stopping the
//! local workers.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use config::ProxyConfig;
use pingora::apps::HttpServerOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::{ExecutionPhase, RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::Admin;
use crate::conns::Guarded;
use crate::request::OlProxy;
use crate::state::{Snapshot, State, IN_FLIGHT};
use crate::upstream::health::Background;
use crate::upstream::local;

/// How long local workers get between SIGTERM and SIGKILL.
const WORKER_STOP_GRACE: Duration = Duration::from_secs(2);

struct Signals;

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let mut quit = signal(SignalKind::quit()).expect("SIGQUIT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = quit.recv() => {}
        }
        local::shutting_down();
        tracing::info!("signal received: draining for up to the shutdown grace");
        ShutdownSignal::GracefulTerminate
    }
}

/// Everything `run` needs; built by `main` after flags are applied.
pub struct Plan {
    pub config: ProxyConfig,
    pub config_hash: u64,
    pub local_workers: Vec<SocketAddr>,
}

/// Runs the proxy until a signal; returns when it has stopped.
pub fn run(plan: Plan) {
    let cfg = plan.config;
    let listen = cfg.listen.to_string();
    let admin_listen = cfg.admin.listen.to_string();
    let grace = Duration::from_millis(cfg.timeouts.shutdown_grace_ms);
    let idle_keepalive_ms = cfg.timeouts.idle_keepalive_ms;
    let (nofile, fd_cap) = crate::conns::init(cfg.limits.keepalive_pool);
    if cfg.limits.max_connections > fd_cap {
        tracing::warn!(
            "limits.max_connections {} is more than the fd limit allows ({nofile} fds: {fd_cap} connections, each with its worker connection); using {fd_cap}",
            cfg.limits.max_connections
        );
    } else {
        tracing::info!(
            "limits.max_connections {} ({nofile} fds allow {fd_cap})",
            cfg.limits.max_connections
        );
    }

    let conf = ServerConf {
        threads: cfg.threads,
        // One current-thread runtime per thread: a connection stays on its
        // thread, with fewer cross-thread wake-ups (measured ~8% less CPU
        // per request in bench/proxy.sh; bare-pingora uses the same).
        work_stealing: false,
        // pingora's bound on attempts per request; ours are tighter and
        // live (`retries` for connect failures, the retry budget and the
        // hold's deadline for refusals: `request/`), so this one only
        // stops a loop that would have no end.
        max_retries: crate::request::MAX_ATTEMPTS,
        upstream_keepalive_pool_size: cfg.limits.keepalive_pool,
        grace_period_seconds: Some(grace.as_secs() + 1),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: std::env::temp_dir()
            .join(format!("ol-proxy-{}.pid", std::process::id()))
            .display()
            .to_string(),
        upgrade_sock: std::env::temp_dir()
            .join(format!("ol-proxy-{}.sock", std::process::id()))
            .display()
            .to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let conf = server.configuration.clone();

    if let Err(e) = crate::caches::init(&cfg) {
        eprintln!("{e}");
        local::stop_all(WORKER_STOP_GRACE);
        std::process::exit(2);
    }
    let snap = match Snapshot::build(cfg, plan.config_hash, &plan.local_workers, None) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}: {}", e.field, e.reason);
            local::stop_all(WORKER_STOP_GRACE);
            std::process::exit(2);
        }
    };
    let state = State::new(snap);
    // Before any listener: SIGHUP's default action would end the process.
    crate::reload::watch_sighup(state.clone());

    let mut opts = HttpServerOptions::default();
    opts.h2c = true;
    // h2c connections: pingora's own idle timeout (fixed at start).
    opts.h2_idle_timeout = Some(Duration::from_millis(idle_keepalive_ms));
    let mut app = pingora::proxy::http_proxy(
        &conf,
        OlProxy {
            state: state.clone(),
        },
    );
    app.server_options = Some(opts);
    // The connection cap and request-head deadlines (conns.rs: pingora
    // has neither), around pingora's HTTP proxy app.
    let mut proxy = Service::new(
        "ol-proxy".to_string(),
        Guarded {
            app: Arc::new(app),
            state: state.clone(),
        },
    );
    proxy.add_tcp(&listen);

    let mut admin = Service::new(
        "ol-proxy admin".to_string(),
        Admin {
            state: state.clone(),
        },
    );
    admin.add_tcp(&admin_listen);
    admin.threads = Some(1);

    let bg = background_service(
        "health and dns",
        Background {
            state: state.clone(),
        },
    );

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(bg);

    let mut phases = server.watch_execution_phase();
    std::thread::Builder::new()
        .name("ol-proxy drain".into())
        .spawn(move || loop {
            match phases.blocking_recv() {
                Ok(ExecutionPhase::GracefulTerminate) | Ok(ExecutionPhase::ShutdownStarted) => {
                    drain_and_exit(grace)
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        })
        .expect("spawn drain thread");

    tracing::info!("ol-proxy listening on {listen} (HTTP/1.1 and h2c), admin on {admin_listen}");
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals),
    });
    local::stop_all(WORKER_STOP_GRACE);
}

/// Waits until nothing is in flight or `grace` is up, then stops the local
/// workers and exits.
fn drain_and_exit(grace: Duration) -> ! {
    let deadline = Instant::now() + grace;
    // Let pingora's listeners see the shutdown first.
    std::thread::sleep(Duration::from_millis(20));
    while IN_FLIGHT.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let left = IN_FLIGHT.load(Ordering::Relaxed);
    if left > 0 {
        tracing::warn!("shutdown grace over with {left} request(s) in flight");
    } else {
        tracing::info!("drained; exiting");
    }
    local::stop_all(WORKER_STOP_GRACE);
    std::process::exit(0)
}
