//! The process backend: each instance is a Python runtime process.
//!
//! Isolation, when the worker runs as root: every instance gets its own
//! uid (no passwd entry needed) and a private 0700 directory for scratch
//! files and its socket, so handlers cannot read the worker's files or
//! each other's scratch space; its own session and process group; and a
//! cgroup (memory, pids, CPU, freezer) joined before exec; and, unless
//! its `ol.yaml` says `network: egress`, a network namespace of its own, so
//! it cannot reach the worker, the proxy or anything else over TCP/UDP
//! (the unix socket to the worker is a path, not a network address).
//! Without cgroups, rlimits bound memory and processes and SIGSTOP pauses.
//! An egress function on this backend shares the host's network: use the
//! Docker backend for egress that cannot reach internal addresses.

use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::cgroup::{Cgroups, InstanceCgroup};
use super::{Limits, Sandbox, SandboxError, SandboxManager, SandboxState};
use crate::fsutil;
use crate::registry::{CodeVersion, Registry, RegistryError};

/// The runtime, shipped inside the binary and written to the work dir.
pub const RUNTIME_PY: &str = include_str!("../../runtime/ol_runtime.py");

/// How long a runtime may take to import its function.
const START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ProcessManager {
    registry: Arc<Registry>,
    python: PathBuf,
    runtime: PathBuf,
    instances_dir: PathBuf,
    logs_dir: PathBuf,
    cgroups: Option<Cgroups>,
    cgroup_note: String,
    /// Free sandbox uids; `None` when not running as root.
    uids: Option<Arc<Mutex<Vec<u32>>>>,
    next_id: AtomicU64,
}

impl ProcessManager {
    pub fn new(cfg: &config::WorkerConfig, registry: Arc<Registry>) -> anyhow::Result<Self> {
        let work = &cfg.work_dir();
        let instances_dir = work.join("instances");
        let logs_dir = work.join("logs");
        for d in [&instances_dir, &logs_dir] {
            fs::create_dir_all(d)?;
        }
        // Handlers may traverse the work dir (to reach their code) but not
        // list it; logs are the worker's alone.
        fsutil::set_mode(work, 0o711)?;
        fsutil::set_mode(&instances_dir, 0o711)?;
        fsutil::set_mode(&logs_dir, 0o700)?;
        fsutil::set_mode(&work.join("code"), 0o755)?;
        let runtime = work.join("ol_runtime.py");
        fs::write(&runtime, RUNTIME_PY)?;
        fsutil::set_mode(&runtime, 0o644)?;
        if !cfg.python.exists() {
            anyhow::bail!(
                "python {} not found: install python3 (scripts/setup.sh) or set `python` in the config",
                cfg.python.display()
            );
        }
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            check_traversable(work)?;
        }
        let (cgroups, cgroup_note) = if root {
            match Cgroups::detect() {
                Ok(c) => {
                    let d = c.describe();
                    (Some(c), d)
                }
                Err(e) => (None, format!("rlimits (cgroups unavailable: {e})")),
            }
        } else {
            (None, "rlimits (not root: no cgroups)".into())
        };
        let uids = root.then(|| {
            let u = cfg.sandbox_user;
            Arc::new(Mutex::new(
                (u.uid_base..u.uid_base + u.uid_count).rev().collect(),
            ))
        });
        Ok(ProcessManager {
            registry,
            python: cfg.python.clone(),
            runtime,
            instances_dir,
            logs_dir,
            cgroups,
            cgroup_note,
            uids,
            next_id: AtomicU64::new(1),
        })
    }
}

/// Sandbox uids must reach their code through every ancestor of the work
/// dir; say so at start rather than fail every call.
fn check_traversable(work: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let abs = work.canonicalize()?;
    for dir in abs.ancestors().skip(1) {
        let mode = fs::metadata(dir)?.permissions().mode();
        if mode & 0o001 == 0 {
            anyhow::bail!(
                "work dir {}: {} has mode {:o}, so sandbox users cannot reach their code; \
                 choose another --work-dir or run `chmod o+x {}`",
                work.display(),
                dir.display(),
                mode & 0o777,
                dir.display()
            );
        }
    }
    Ok(())
}

#[async_trait]
impl SandboxManager for ProcessManager {
    async fn create(
        &self,
        code: &Arc<CodeVersion>,
        limits: Limits,
    ) -> Result<Box<dyn Sandbox>, SandboxError> {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", code.name);
        let uid = match &self.uids {
            Some(pool) => Some(
                pool.lock()
                    .unwrap()
                    .pop()
                    .ok_or_else(|| SandboxError::Setup("no free sandbox uid".into()))?,
            ),
            None => None,
        };
        let mut sb = ProcessSandbox {
            id: id.clone(),
            name: code.name.clone(),
            dir: self.instances_dir.join(&id),
            socket: self.instances_dir.join(&id).join("rt.sock"),
            log: self.logs_dir.join(format!("{id}.log")),
            code_dir: code.dir.clone(),
            env: code.config.environment.clone().into_iter().collect(),
            private_network: code.config.network == config::function::Network::None
                && self.uids.is_some(),
            limits,
            python: self.python.clone(),
            runtime: self.runtime.clone(),
            uid,
            uid_pool: self.uids.clone(),
            cgroup: None,
            child: None,
            pgid: 0,
            state: SandboxState::Created,
        };
        let setup = || -> std::io::Result<()> {
            fs::create_dir_all(&sb.dir)?;
            fsutil::set_mode(&sb.dir, 0o700)?;
            if let Some(uid) = uid {
                fsutil::chown(&sb.dir, uid, uid)?;
            }
            Ok(())
        };
        setup()
            .map_err(|e| SandboxError::Setup(format!("instance dir {}: {e}", sb.dir.display())))?;
        if let Some(cg) = &self.cgroups {
            match cg.create(&id, &limits) {
                Ok(c) => sb.cgroup = Some(c),
                Err(e) => {
                    sb.remove().await;
                    return Err(SandboxError::Setup(format!("cgroup for {id}: {e}")));
                }
            }
        }
        Ok(Box::new(sb))
    }

    async fn pull(&self, name: &str) -> Result<Arc<CodeVersion>, RegistryError> {
        self.registry.resolve(name).await
    }

    fn describe(&self) -> String {
        let users = if self.uids.is_some() {
            "one unprivileged uid per instance"
        } else {
            "the worker's own user (not root)"
        };
        format!(
            "process sandboxes: limits by {}; handlers run as {users}",
            self.cgroup_note
        )
    }

    async fn shutdown(&self) {
        if let Some(cg) = &self.cgroups {
            cg.cleanup();
        }
    }
}

pub struct ProcessSandbox {
    id: String,
    name: String,
    dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    code_dir: PathBuf,
    env: Vec<(String, String)>,
    /// Run in a network namespace of its own (no interfaces but a down
    /// loopback): the handler reaches nothing, not even 127.0.0.1.
    private_network: bool,
    limits: Limits,
    python: PathBuf,
    runtime: PathBuf,
    uid: Option<u32>,
    uid_pool: Option<Arc<Mutex<Vec<u32>>>>,
    cgroup: Option<InstanceCgroup>,
    child: Option<Child>,
    pgid: i32,
    state: SandboxState,
}

impl ProcessSandbox {
    fn command(&self) -> std::io::Result<Command> {
        let mut cmd = Command::new(&self.python);
        cmd.arg("-I")
            .arg("-S")
            .arg(&self.runtime)
            .arg("--code")
            .arg(&self.code_dir)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--name")
            .arg(&self.name)
            .current_dir(&self.dir)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &self.dir)
            .env("TMPDIR", &self.dir)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("LANG", "C.UTF-8")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&self.log)?)
            .kill_on_drop(true);
        let procs: Vec<CString> = self
            .cgroup
            .as_ref()
            .map(|c| c.procs_paths().to_vec())
            .unwrap_or_default();
        let uid = self.uid;
        let has_memory_cgroup = self.cgroup.is_some();
        let mem_bytes = self.limits.memory_mb * 1024 * 1024;
        let nproc = self.limits.procs;
        let private_network = self.private_network;
        // SAFETY: between fork and exec only async-signal-safe calls are
        // made, on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let check = |r: libc::c_int| {
                    if r < 0 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                };
                check(libc::setsid())?;
                if private_network {
                    check(libc::unshare(libc::CLONE_NEWNET))?;
                }
                for p in &procs {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    check(fd)?;
                    let w = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    check(w as libc::c_int)?;
                }
                let limit = |res, v: u64| {
                    let r = libc::rlimit {
                        rlim_cur: v,
                        rlim_max: v,
                    };
                    libc::setrlimit(res, &r)
                };
                check(limit(libc::RLIMIT_CORE, 0))?;
                if !has_memory_cgroup {
                    check(limit(libc::RLIMIT_AS, mem_bytes.max(64 << 20)))?;
                }
                if let Some(uid) = uid {
                    // Per instance uid: RLIMIT_NPROC counts this instance only.
                    check(limit(libc::RLIMIT_NPROC, nproc))?;
                    check(libc::setgroups(0, std::ptr::null()))?;
                    check(libc::setgid(uid))?;
                    check(libc::setuid(uid))?;
                }
                // After setuid, which clears it: die with the worker.
                check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
                libc::umask(0o077);
                Ok(())
            });
        }
        Ok(cmd)
    }

    fn kill_group(&self) {
        if self.pgid > 0 {
            unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
        }
        if let Some(cg) = &self.cgroup {
            cg.kill_all();
        }
    }
}

#[async_trait]
impl Sandbox for ProcessSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn state(&self) -> SandboxState {
        self.state
    }

    fn address(&self) -> &Path {
        &self.socket
    }

    async fn start(&mut self) -> Result<(), SandboxError> {
        let mut child = self.command().and_then(|mut c| c.spawn()).map_err(|e| {
            SandboxError::Setup(format!("cannot start {}: {e}", self.python.display()))
        })?;
        self.pgid = child.id().unwrap_or(0) as i32;
        let stdout = child.stdout.take().expect("stdout is piped");
        self.child = Some(child);
        self.state = SandboxState::Running;
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        let read = reader.read_line(&mut line);
        match tokio::time::timeout(START_TIMEOUT, read).await {
            Ok(Ok(_)) if line == "ready\n" => Ok(()),
            Ok(Ok(_)) if line.starts_with("error ") => {
                let reason = line["error ".len()..].trim().to_string();
                let log = self.logs(4096);
                self.stop().await;
                Err(SandboxError::Load {
                    name: self.name.clone(),
                    reason,
                    log,
                })
            }
            Ok(_) => {
                let why = self.exit_reason().await;
                Err(SandboxError::Crashed(format!(
                    "runtime of {} died at start: {why}",
                    self.name
                )))
            }
            Err(_) => {
                self.stop().await;
                Err(SandboxError::Crashed(format!(
                    "runtime of {} did not start within {} s",
                    self.name,
                    START_TIMEOUT.as_secs()
                )))
            }
        }
    }

    async fn pause(&mut self) -> Result<(), SandboxError> {
        let frozen = match &self.cgroup {
            Some(cg) => cg
                .freeze()
                .await
                .map_err(|e| SandboxError::Setup(format!("freeze: {e}")))?,
            None => false,
        };
        if !frozen && self.pgid > 0 {
            unsafe { libc::kill(-self.pgid, libc::SIGSTOP) };
        }
        self.state = SandboxState::Paused;
        Ok(())
    }

    async fn unpause(&mut self) -> Result<(), SandboxError> {
        let thawed = match &self.cgroup {
            Some(cg) => cg
                .thaw()
                .map_err(|e| SandboxError::Setup(format!("thaw: {e}")))?,
            None => false,
        };
        if !thawed && self.pgid > 0 {
            unsafe { libc::kill(-self.pgid, libc::SIGCONT) };
        }
        self.state = SandboxState::Running;
        Ok(())
    }

    async fn stop(&mut self) {
        self.kill_group();
        if let Some(child) = &mut self.child {
            let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
        }
        self.state = SandboxState::Stopped;
    }

    async fn remove(&mut self) {
        if self.state != SandboxState::Stopped {
            self.stop().await;
        }
        if let Some(cg) = &self.cgroup {
            cg.remove().await;
        }
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_file(&self.log);
        if let (Some(uid), Some(pool)) = (self.uid.take(), &self.uid_pool) {
            pool.lock().unwrap().push(uid);
        }
        self.state = SandboxState::Removed;
    }

    fn logs(&self, max_bytes: usize) -> String {
        let data = fs::read(&self.log).unwrap_or_default();
        let start = data.len().saturating_sub(max_bytes);
        String::from_utf8_lossy(&data[start..]).into_owned()
    }

    async fn exit_reason(&mut self) -> String {
        let status = match &mut self.child {
            Some(c) => tokio::time::timeout(Duration::from_millis(500), c.wait())
                .await
                .ok()
                .and_then(|r| r.ok()),
            None => None,
        };
        if self.cgroup.as_ref().is_some_and(|c| c.oom_killed()) {
            return format!(
                "killed by its memory limit of {} MiB",
                self.limits.memory_mb
            );
        }
        use std::os::unix::process::ExitStatusExt;
        match status {
            Some(s) if s.signal() == Some(libc::SIGKILL) => "killed (SIGKILL)".into(),
            Some(s) if s.signal().is_some() => format!("killed by signal {}", s.signal().unwrap()),
            Some(s) => format!("runtime exited with status {}", s.code().unwrap_or(-1)),
            None => "runtime stopped answering".into(),
        }
    }
}

impl Drop for ProcessSandbox {
    /// A sandbox dropped without `remove` (a cancelled call) must not leave
    /// its processes behind; the directories go at the next start.
    fn drop(&mut self) {
        if self.state != SandboxState::Removed {
            self.kill_group();
            let _ = fs::remove_dir_all(&self.dir);
            let _ = fs::remove_file(&self.log);
            if let (Some(uid), Some(pool)) = (self.uid.take(), &self.uid_pool) {
                pool.lock().unwrap().push(uid);
            }
        }
    }
}
