//! Local `ol-worker` processes for the quickstart: started on free loopback
//! ports before the proxy listens, kept running while it runs, stopped when
//! it exits.
//!
//! Supervision: one thread owns the children. Each exit is logged with its
//! status and the last line the worker wrote to stderr (which is passed
//! through to the proxy's), and the worker is started again on the same
//! port (the policies know it by address) after a back-off that doubles
//! while it keeps dying within a minute of its start. Start-up waits until
//! one worker listens; if every worker exits first, or none listens within
//! `local_workers.start_timeout_ms`, it fails with their reasons.
//!
//! Each worker runs in its own process group, so a terminal's Ctrl-C
//! reaches the proxy only; from its shutdown signal on, exits are not
//! restarted, and after its drain it stops the workers itself.
//!
//! No orphans: each child gets `PR_SET_PDEATHSIG(SIGKILL)` in `pre_exec`,
//! so it dies even if the proxy is killed with -9; on a normal exit the
//! proxy sends SIGTERM, waits a moment, then SIGKILL. PDEATHSIG fires when
//! the spawning *thread* ends: the supervisor spawns every child and lives
//! until they are gone.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use config::proxy::LocalWorkersConfig;

/// The workers, for the supervisor and the exit paths.
static SLOTS: Mutex<Vec<Arc<Slot>>> = Mutex::new(Vec::new());
/// Set by [`stop_all`]: exits are no longer restarts.
static STOPPING: AtomicBool = AtomicBool::new(false);
/// Restarts since start (`/metrics`).
static RESTARTS: AtomicU64 = AtomicU64::new(0);
/// A work directory this process created (removed on exit).
static OWN_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// A worker lasting this long has recovered: its next back-off starts over.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// How often the supervisor looks at its children.
const TICK: Duration = Duration::from_millis(100);
/// The longest stderr line kept for an exit's log line.
const MAX_LAST_LINE: usize = 512;

/// Restarts of local workers since start.
pub fn restarts() -> u64 {
    RESTARTS.load(Ordering::Relaxed)
}

/// One local worker: its fixed address and command, and its current run.
struct Slot {
    index: usize,
    addr: SocketAddr,
    /// `local_workers.restart_backoff_ms`.
    first_backoff: Duration,
    cmd: Mutex<Command>,
    run: Mutex<Run>,
}

#[derive(Default)]
struct Run {
    child: Option<Child>,
    started: Option<Instant>,
    /// The last line of the current run's stderr.
    last_line: Arc<Mutex<String>>,
    /// Signalled when the stderr reader reaches the end of the pipe.
    stderr_done: Option<mpsc::Receiver<()>>,
    /// When to start again after an exit.
    next_start: Option<Instant>,
    /// The delay before the next restart.
    backoff: Duration,
    /// How the first run ended (start-up's reason when none came up).
    first_exit: Option<String>,
}

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

/// Starts `cfg.count` workers and their supervisor, and waits until one
/// listens; returns their addresses. `registry_token` (the proxy's
/// `code_store.token`) goes to them in their environment, not on their
/// command line, for a registry that is this proxy's `/registry`.
pub fn start(cfg: &LocalWorkersConfig, registry_token: &str) -> Result<Vec<SocketAddr>, String> {
    if cfg.count == 0 {
        return Ok(Vec::new());
    }
    let bin = find_binary(&cfg.binary);
    let base = match &cfg.work_dir {
        Some(d) => d.clone(),
        None => {
            let d = std::env::temp_dir().join(format!("ol-proxy-{}", std::process::id()));
            *OWN_DIR.lock().unwrap_or_else(|e| e.into_inner()) = Some(d.clone());
            d
        }
    };
    let mut slots = Vec::new();
    for index in 0..cfg.count {
        let port = free_port().map_err(|e| format!("cannot find a free port: {e}"))?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let work = base.join(format!("worker-{index}"));
        std::fs::create_dir_all(&work)
            .map_err(|e| format!("cannot create {}: {e}", work.display()))?;
        let mut cmd = Command::new(&bin);
        if !registry_token.is_empty() {
            cmd.env("OL_REGISTRY_TOKEN", registry_token);
        }
        // Their own process group: Ctrl-C at a terminal signals the
        // foreground group, and the workers must hear of the shutdown from
        // the proxy (after its drain), not at once, mid-call.
        cmd.process_group(0);
        cmd.arg("--listen")
            .arg(addr.to_string())
            .arg("--registry")
            .arg(&cfg.registry)
            .arg("--sandbox")
            .arg(&cfg.sandbox)
            .arg("--work-dir")
            .arg(&work)
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
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
        let run = Run {
            backoff: Duration::from_millis(cfg.restart_backoff_ms),
            next_start: Some(Instant::now()),
            ..Run::default()
        };
        slots.push(Arc::new(Slot {
            index,
            addr,
            first_backoff: Duration::from_millis(cfg.restart_backoff_ms),
            cmd: Mutex::new(cmd),
            run: Mutex::new(run),
        }));
    }
    *SLOTS.lock().unwrap_or_else(|e| e.into_inner()) = slots.clone();
    let (first_spawns, spawned) = mpsc::channel();
    let max_backoff = Duration::from_millis(cfg.restart_backoff_max_ms);
    let supervised = slots.clone();
    std::thread::Builder::new()
        .name("ol-local-workers".into())
        .spawn(move || supervise(supervised, max_backoff, first_spawns))
        .map_err(|e| format!("cannot start the supervisor thread: {e}"))?;
    spawned
        .recv()
        .map_err(|_| "the supervisor thread ended".to_string())??;
    for s in &slots {
        tracing::info!("local worker {}: {} on {}", s.index, bin.display(), s.addr);
    }
    wait_until_one_listens(&slots, Duration::from_millis(cfg.start_timeout_ms))?;
    Ok(slots.iter().map(|s| s.addr).collect())
}

/// Start-up's check: `Ok` as soon as a worker accepts a connection.
fn wait_until_one_listens(slots: &[Arc<Slot>], timeout: Duration) -> Result<(), String> {
    let end = Instant::now() + timeout;
    loop {
        let probe = Duration::from_millis(100);
        if slots
            .iter()
            .any(|s| TcpStream::connect_timeout(&s.addr, probe).is_ok())
        {
            return Ok(());
        }
        let exits: Vec<String> = slots
            .iter()
            .filter_map(|s| {
                let run = s.run.lock().unwrap_or_else(|e| e.into_inner());
                run.first_exit
                    .as_ref()
                    .map(|e| format!("worker {} {e}", s.index))
            })
            .collect();
        if exits.len() == slots.len() {
            return Err(format!("no local worker came up: {}", exits.join("; ")));
        }
        if Instant::now() >= end {
            return Err(format!(
                "no local worker listened within local_workers.start_timeout_ms ({} ms)",
                timeout.as_millis()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The supervisor: reaps exits, logs them and starts the worker again.
/// Reports the first round of spawns on `first`.
fn supervise(
    slots: Vec<Arc<Slot>>,
    max_backoff: Duration,
    first: mpsc::Sender<Result<(), String>>,
) {
    let mut first = Some(first);
    loop {
        let mut stopping = false;
        let mut running = 0;
        for s in &slots {
            let mut run = s.run.lock().unwrap_or_else(|e| e.into_inner());
            // Read under the slot's lock: `stop_all` sets it before it
            // takes the lock, so no worker is started behind its back.
            stopping = STOPPING.load(Ordering::Relaxed);
            reap(s, &mut run, stopping, max_backoff);
            if run.child.is_none()
                && !stopping
                && run.next_start.is_some_and(|t| t <= Instant::now())
            {
                let restart = run.started.is_some();
                if let Err(e) = spawn(s, &mut run) {
                    if let Some(tx) = first.take() {
                        let _ = tx.send(Err(e));
                        return;
                    }
                    tracing::warn!("local worker {}: {e}", s.index);
                    let delay = run.backoff;
                    run.backoff = (delay * 2).min(max_backoff);
                    run.next_start = Some(Instant::now() + delay);
                } else if restart {
                    RESTARTS.fetch_add(1, Ordering::Relaxed);
                    tracing::info!("local worker {} on {} started again", s.index, s.addr);
                }
            }
            running += usize::from(run.child.is_some());
        }
        if let Some(tx) = first.take() {
            let _ = tx.send(Ok(()));
        }
        if stopping && running == 0 {
            return;
        }
        std::thread::sleep(TICK);
    }
}

/// Starts one run of the slot's worker, its stderr copied through.
fn spawn(s: &Slot, run: &mut Run) -> Result<(), String> {
    let mut cmd = s.cmd.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", cmd.get_program().to_string_lossy()))?;
    let last_line = Arc::new(Mutex::new(String::new()));
    let (done, stderr_done) = mpsc::channel();
    if let Some(err) = child.stderr.take() {
        let last = last_line.clone();
        let _ = std::thread::Builder::new()
            .name(format!("ol-local-worker-{}-stderr", s.index))
            .spawn(move || {
                copy_stderr(err, &last);
                let _ = done.send(());
            });
    }
    tracing::debug!("local worker {} pid {} on {}", s.index, child.id(), s.addr);
    run.child = Some(child);
    run.started = Some(Instant::now());
    run.last_line = last_line;
    run.stderr_done = Some(stderr_done);
    run.next_start = None;
    Ok(())
}

/// Passes a worker's stderr through line by line (bounded), keeping the
/// last non-empty line.
fn copy_stderr(err: impl Read, last: &Mutex<String>) {
    let mut reader = BufReader::new(err);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader).take(8192).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let _ = std::io::stderr().lock().write_all(&line);
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if !text.is_empty() {
            let kept: String = text.chars().take(MAX_LAST_LINE).collect();
            *last.lock().unwrap_or_else(|e| e.into_inner()) = kept;
        }
    }
}

/// Reaps the slot's child if it exited: logs how, and schedules the
/// restart unless the proxy is stopping.
fn reap(s: &Slot, run: &mut Run, stopping: bool, max_backoff: Duration) {
    let Some(child) = run.child.as_mut() else {
        return;
    };
    let status = match child.try_wait() {
        Ok(Some(status)) => status,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!("local worker {}: cannot wait for it: {e}", s.index);
            return;
        }
    };
    run.child = None;
    // The last line may still be in the pipe: give the reader a moment
    // (an instance the worker started may hold the pipe open longer).
    if let Some(done) = run.stderr_done.take() {
        let _ = done.recv_timeout(Duration::from_millis(300));
    }
    let line = run
        .last_line
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let how = exit_line(status, &line);
    if stopping {
        tracing::info!("local worker {} on {} {how}", s.index, s.addr);
        return;
    }
    if run.first_exit.is_none() {
        run.first_exit = Some(how.clone());
    }
    let lived = run.started.map_or(Duration::ZERO, |t| t.elapsed());
    let delay = if lived >= HEALTHY_RUN {
        s.first_backoff
    } else {
        run.backoff
    };
    run.backoff = (delay * 2).min(max_backoff);
    run.next_start = Some(Instant::now() + delay);
    tracing::warn!(
        "local worker {} on {} {how}; starting it again in {} ms",
        s.index,
        s.addr,
        delay.as_millis()
    );
}

/// "exited with status 1: <its last stderr line>".
fn exit_line(status: ExitStatus, last: &str) -> String {
    use std::os::unix::process::ExitStatusExt;
    let how = match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        (None, None) => format!("ended ({status})"),
    };
    if last.is_empty() {
        format!("{how} (no stderr)")
    } else {
        format!("{how}: {last}")
    }
}

/// The proxy got its shutdown signal: from now on an exit is not
/// restarted (the workers are stopped by [`stop_all`] after the drain).
pub fn shutting_down() {
    STOPPING.store(true, Ordering::Relaxed);
}

/// Stops every local worker: SIGTERM, up to `grace`, then SIGKILL.
pub fn stop_all(grace: Duration) {
    shutting_down();
    let slots = std::mem::take(&mut *SLOTS.lock().unwrap_or_else(|e| e.into_inner()));
    for s in &slots {
        let run = s.run.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = &run.child {
            // SAFETY: plain kill(2) on our own unreaped child's pid.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    let deadline = Instant::now() + grace;
    for s in &slots {
        loop {
            let mut run = s.run.lock().unwrap_or_else(|e| e.into_inner());
            let Some(c) = run.child.as_mut() else { break };
            match c.try_wait() {
                Ok(Some(_)) | Err(_) => {
                    run.child = None;
                    break;
                }
                Ok(None) if Instant::now() >= deadline => {
                    let _ = c.kill();
                    let _ = c.wait();
                    run.child = None;
                    break;
                }
                Ok(None) => {
                    drop(run);
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
    if let Some(d) = OWN_DIR.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = std::fs::remove_dir_all(d);
    }
}
