//! Local `ol-worker` processes for the quickstart: started on free loopback
//! ports before the proxy listens, stopped when it exits.
//!
//! No orphans: each child gets `PR_SET_PDEATHSIG(SIGKILL)` in `pre_exec`,
//! so it dies even if the proxy is killed with -9; on a normal exit the
//! proxy sends SIGTERM, waits a moment, then SIGKILL. The children are
//! spawned from the main thread, which lives until exit (PDEATHSIG fires
//! when the spawning *thread* ends).

use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use config::proxy::LocalWorkersConfig;

/// The running children, for the exit paths (normal and signal).
static CHILDREN: Mutex<Vec<Child>> = Mutex::new(Vec::new());
/// A work directory this process created (removed on exit).
static OWN_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Picks a free loopback port (bind :0, read it back, release it).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Where the `ol-worker` executable is: a path as given, or the name next
/// to this executable, or the name on `PATH`.
fn find_binary(binary: &str) -> PathBuf {
    if binary.contains('/') {
        return PathBuf::from(binary);
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        let p = dir.join(binary);
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from(binary)
}

/// Starts `cfg.count` workers; returns their addresses. `registry_token`
/// (the proxy's `code_store.token`) goes to them in their environment, not
/// on their command line, for a registry that is this proxy's `/registry`.
pub fn start(cfg: &LocalWorkersConfig, registry_token: &str) -> Result<Vec<SocketAddr>, String> {
    let bin = find_binary(&cfg.binary);
    let base = match &cfg.work_dir {
        Some(d) => d.clone(),
        None => {
            let d = std::env::temp_dir().join(format!("ol-proxy-{}", std::process::id()));
            *OWN_DIR.lock().unwrap_or_else(|e| e.into_inner()) = Some(d.clone());
            d
        }
    };
    let mut addrs = Vec::new();
    for i in 0..cfg.count {
        let port = free_port().map_err(|e| format!("cannot find a free port: {e}"))?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let work = base.join(format!("worker-{i}"));
        std::fs::create_dir_all(&work)
            .map_err(|e| format!("cannot create {}: {e}", work.display()))?;
        let mut cmd = Command::new(&bin);
        if !registry_token.is_empty() {
            cmd.env("OL_REGISTRY_TOKEN", registry_token);
        }
        cmd.arg("--listen")
            .arg(addr.to_string())
            .arg("--registry")
            .arg(&cfg.registry)
            .arg("--sandbox")
            .arg(&cfg.sandbox)
            .arg("--work-dir")
            .arg(&work)
            .stdin(Stdio::null());
        // SAFETY: prctl is async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        tracing::info!(
            "local worker {i}: {} pid {} on {addr}",
            bin.display(),
            child.id()
        );
        CHILDREN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child);
        addrs.push(addr);
    }
    Ok(addrs)
}

/// Stops every local worker: SIGTERM, up to `grace`, then SIGKILL.
pub fn stop_all(grace: Duration) {
    let mut children = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    if children.is_empty() {
        return;
    }
    for c in children.iter() {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    for c in children.iter_mut() {
        loop {
            match c.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
    children.clear();
    if let Some(d) = OWN_DIR.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = std::fs::remove_dir_all(d);
    }
}
