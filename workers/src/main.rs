//! `ol-worker`: a thin binary over the `workers` library. It reads the
//! config and wires the layers bottom up: registry -> sandbox manager ->
//! handler set (with its reaper) -> front.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use config::worker::SandboxKind;
use config::WorkerConfig;
use workers::{guard, DockerManager, Front, HandlerSet, ProcessManager, Registry, SandboxManager};

/// An OpenLambda-compatible worker: runs Python functions (`f.py` with
/// `def f(event)`, or a WSGI `app`) in sandboxes and serves them over HTTP.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// TOML config file (see config/worker.example.toml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to serve HTTP/1.1 and h2c on.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Code store: a directory or an http(s) URL serving <name>.tar.gz.
    #[arg(long)]
    registry: Option<String>,
    /// Sandbox backend: process or docker.
    #[arg(long)]
    sandbox: Option<SandboxKind>,
    /// Where unpacked code, scratch dirs and sockets live.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// The code store's bearer token (registry_token; visible in `ps`:
    /// prefer the config file or OL_REGISTRY_TOKEN).
    #[arg(long)]
    registry_token: Option<String>,
    /// How long fetched code is trusted before re-checking the store (ms).
    #[arg(long)]
    registry_cache_ms: Option<u64>,
    /// Grace period for open calls at shutdown (ms).
    #[arg(long, default_value_t = 5000)]
    grace_ms: u64,
    /// After SIGTERM, keep answering (refusing new calls) at least this
    /// long (ms): `drain_ms`.
    #[arg(long)]
    drain_ms: Option<u64>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(guard::GUARD_FLAG) {
        guard::run(&args[2..]);
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = match load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ol-worker: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(cfg, Duration::from_millis(cli.grace_ms))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ol-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(cli: &Cli) -> Result<WorkerConfig, String> {
    let mut cfg: WorkerConfig = match &cli.config {
        Some(p) => config::load_toml(p).map_err(|e| e.to_string())?,
        None => WorkerConfig::default(),
    };
    if let Some(v) = cli.listen {
        cfg.listen = v;
    }
    if let Some(v) = &cli.registry {
        cfg.registry = v.clone();
    }
    if let Some(v) = cli.sandbox {
        cfg.sandbox = v;
    }
    if let Some(v) = &cli.work_dir {
        cfg.work_dir = Some(v.clone());
    }
    if let Ok(v) = std::env::var("OL_REGISTRY_TOKEN") {
        cfg.registry_token = v;
    }
    if let Some(v) = &cli.registry_token {
        cfg.registry_token = v.clone();
    }
    if let Some(v) = cli.registry_cache_ms {
        cfg.registry_cache_ms = v;
    }
    if let Some(v) = cli.drain_ms {
        cfg.drain_ms = v;
    }
    cfg.validate()
        .map_err(|i| format!("invalid setting {}: {}", i.field, i.reason))?;
    Ok(cfg)
}

async fn run(cfg: WorkerConfig, grace: Duration) -> anyhow::Result<()> {
    let work = cfg.work_dir();
    std::fs::create_dir_all(&work)?;
    // What a previous run left: instances that died without cleaning up, and
    // unpacked code (a cache: the store is the source of truth).
    for leftover in ["instances", "code", "tmp"] {
        let _ = std::fs::remove_dir_all(work.join(leftover));
    }
    let registry = Arc::new(Registry::new(
        &cfg.registry,
        &work,
        Duration::from_millis(cfg.registry_cache_ms),
        cfg.max_upload_bytes,
        cfg.limits,
        cfg.egress.clone(),
        cfg.registry_token.clone(),
    )?);
    let manager: Arc<dyn SandboxManager> = match cfg.sandbox {
        SandboxKind::Process => Arc::new(ProcessManager::new(&cfg)?),
        SandboxKind::Docker => Arc::new(DockerManager::new(&cfg).await?),
    };
    // Held to the end of `run`: the guard wakes when this process ends.
    let _guard = match guard::spawn(&manager.leftovers()) {
        Ok(g) => Some(g),
        Err(e) => {
            tracing::warn!(error = %e, "no guard: instances may outlive a killed worker");
            None
        }
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        registry = %cfg.registry,
        work_dir = %work.display(),
        "ol-worker ready; {}",
        manager.describe()
    );
    if cfg.registry_token.is_empty() {
        tracing::warn!("registry_token is not set: anyone who reaches this port may upload and delete functions");
    }
    let handlers = HandlerSet::new(
        registry.clone(),
        manager.clone(),
        cfg.instances.clone(),
        cfg.limits,
        cfg.egress.clone(),
        cfg.max_reply_bytes,
    );
    let reaper = handlers.start_reaper();
    let front = Front::new(handlers.clone(), registry, &cfg);
    workers::serve(listener, front, shutdown_signal(), grace).await;
    reaper.abort();
    tracing::info!("shutting down: removing instances");
    handlers.remove_all().await;
    manager.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
