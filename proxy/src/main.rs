//! `ol-proxy --config <file.toml>`: loads and validates the config (errors
//! say `file:line: field: reason` and exit 2), applies flag overrides,
//! starts local workers if configured, and runs the pingora server. With
//! no `--config`, the embedded quickstart config is used.

use std::io::IsTerminal;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use config::{parse_toml, ProxyConfig};
use proxy::{config_hash, run, Plan};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The quickstart config, used when no --config is given.
const QUICKSTART: &str = include_str!("../../config/quickstart.toml");

#[derive(Parser, Debug)]
#[command(name = "ol-proxy", version, about = "ol-edge's edge proxy (pingora)")]
struct Cli {
    /// TOML config file; without it the embedded quickstart config is used.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Public address (overrides `listen`).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Admin address (overrides `admin.listen`).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Proxy threads (overrides `threads`).
    #[arg(long)]
    threads: Option<usize>,
    /// Check the config and exit.
    #[arg(long)]
    check: bool,
}

/// The directory the embedded quickstart's relative paths are taken from:
/// `config/` (where the file lives) of the checkout this executable was
/// built in (`target/<profile>/ol-proxy`), else of the source tree it was
/// compiled from.
fn install_dir() -> PathBuf {
    let exe = std::env::current_exe().ok();
    let built_in = exe
        .iter()
        .flat_map(|e| e.ancestors())
        .find(|d| d.join("config/quickstart.toml").is_file());
    match built_in {
        Some(d) => d.join("config"),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../config")),
    }
}

fn main() -> ExitCode {
    // RUST_LOG as for the worker (default info); pingora's `log` records
    // come through the same subscriber. Colour only on a terminal.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let (name, text) = match &cli.config {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => (p.clone(), t),
            Err(e) => {
                eprintln!("{}: cannot read: {e}", p.display());
                return ExitCode::from(2);
            }
        },
        None => (
            PathBuf::from("quickstart.toml (embedded)"),
            QUICKSTART.to_string(),
        ),
    };
    let mut cfg: ProxyConfig = match parse_toml(&name, &text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // Relative paths mean the same from any working directory.
    match &cli.config {
        Some(p) => cfg.resolve_relative_paths(&config::proxy::config_dir(p)),
        None => cfg.resolve_relative_paths(&install_dir()),
    }
    let file_cfg = cfg.clone();
    if let Some(a) = cli.listen {
        cfg.listen = a;
    }
    if let Some(a) = cli.admin {
        cfg.admin.listen = a;
    }
    if let Some(t) = cli.threads {
        cfg.threads = t;
    }
    if let Err(i) = cfg.validate() {
        eprintln!(
            "{}: {}: {} (after command-line overrides)",
            name.display(),
            i.field,
            i.reason
        );
        return ExitCode::from(2);
    }
    // No worker at all would answer every call 503: refuse to start.
    let workers_at_start = cfg.local_workers.count;
    if let Err(i) = proxy::check_has_workers(&cfg, workers_at_start) {
        eprintln!(
            "{}",
            config::ConfigError::field(&name, &text, &i.field, i.reason)
        );
        return ExitCode::from(2);
    }
    if cli.check {
        println!("{}: ok", name.display());
        return ExitCode::SUCCESS;
    }
    // Fail early and clearly if an address is taken (pingora would panic).
    for (what, a) in [("listen", cfg.listen), ("admin.listen", cfg.admin.listen)] {
        if let Err(e) = TcpListener::bind(a) {
            eprintln!("{}: {what}: cannot listen on {a}: {e}", name.display());
            return ExitCode::from(1);
        }
    }
    let local_workers = match proxy::local::start(&cfg.local_workers, &cfg.code_store.token) {
        Ok(a) => a,
        Err(e) => {
            proxy::local::stop_all(std::time::Duration::from_secs(1));
            eprintln!("{}: local_workers: {e}", name.display());
            return ExitCode::from(1);
        }
    };
    proxy::init_reload(proxy::Reloader::new(
        cli.config.clone(),
        file_cfg,
        cfg.clone(),
        local_workers.clone(),
    ));
    run(Plan {
        config_hash: config_hash(&text),
        config: cfg,
        local_workers,
    });
    ExitCode::SUCCESS
}
