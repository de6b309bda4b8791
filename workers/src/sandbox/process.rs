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
//!
//! A function's `requirements.txt` pins are installed into the worker's
//! package store (`crate::packages`) before its instance is created, and
//! their directories go on its `sys.path`. With `zygotes.enabled`, a cold
//! start forks the instance from a zygote (`super::zygote`, which also
//! explains how the forked child ends up as isolated as a fresh one) and
//! falls back to a fresh process when no zygote can fork.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use config::worker::ZygotesConfig;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use super::cgroup::{Cgroups, InstanceCgroup};
use super::zygote::{self, ForkRequest, Zygote, Zygotes};
use super::{Limits, Sandbox, SandboxError, SandboxManager, SandboxState, Uid, UidPool};
use crate::fsutil;
use crate::packages::{PackageError, PackageStore, Pin};
use crate::registry::{CodeVersion, Registry, RegistryError};
use crate::stats::BACKEND;

/// The runtime, shipped inside the binary and written to the work dir.
pub const RUNTIME_PY: &str = include_str!("../../runtime/ol_runtime.py");
/// The zygote, likewise.
pub const ZYGOTE_PY: &str = include_str!("../../runtime/ol_zygote.py");

/// How long a runtime may take to import its function.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// A zygote's own RLIMIT_NPROC and RLIMIT_NOFILE: hard limits its forked
/// children (no longer privileged) can lower but never raise, so an
/// instance asking for more starts as a fresh process instead.
const ZYGOTE_PROCS: u64 = 256;
const ZYGOTE_OPEN_FILES: u64 = 4096;
/// How long a zygote may take to import its package set.
const ZYGOTE_START_TIMEOUT: Duration = Duration::from_secs(60);
/// A root zygote that failed to start is not tried again sooner.
const ROOT_RETRY: Duration = Duration::from_secs(5);

pub struct ProcessManager {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<Registry>,
    python: PathBuf,
    runtime: PathBuf,
    zygote_py: PathBuf,
    instances_dir: PathBuf,
    logs_dir: PathBuf,
    cgroups: Option<Cgroups>,
    cgroup_note: String,
    /// Free sandbox uids; `None` when not running as root.
    uids: Option<UidPool>,
    next_id: AtomicU64,
    packages: Arc<PackageStore>,
    zygotes: Zygotes,
    zcfg: ZygotesConfig,
    /// What `describe` says about zygotes.
    zygote_note: String,
    root_failed: Mutex<Option<Instant>>,
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
        let zygote_py = work.join("ol_zygote.py");
        fs::write(&zygote_py, ZYGOTE_PY)?;
        fsutil::set_mode(&zygote_py, 0o644)?;
        let packages = Arc::new(PackageStore::new(work, &cfg.python, &cfg.packages)?);
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
        let uids = root.then(|| UidPool::new(&cfg.sandbox_user));
        let mut zcfg = cfg.zygotes.clone();
        let mut zygote_note = String::new();
        if zcfg.enabled {
            if let Some(uid) = uids.as_ref().and_then(UidPool::peek) {
                if let Err(e) = probe_userns(&cfg.python, uid) {
                    tracing::warn!(error = %e, "zygotes disabled: forked instances need unprivileged user namespaces");
                    zcfg.enabled = false;
                    zygote_note = format!("; zygotes disabled (no user namespaces: {e})");
                }
            }
            if zcfg.enabled {
                zygote_note = "; cold starts fork from zygotes".into();
            }
        }
        let inner = Arc::new(Inner {
            registry,
            python: cfg.python.clone(),
            runtime,
            zygote_py,
            instances_dir,
            logs_dir,
            cgroups,
            cgroup_note,
            uids,
            next_id: AtomicU64::new(1),
            packages,
            zygotes: Zygotes::default(),
            zcfg,
            zygote_note,
            root_failed: Mutex::new(None),
        });
        if inner.zcfg.enabled && tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(inner.clone().boot_zygotes());
        }
        Ok(ProcessManager { inner })
    }
}

impl Inner {
    /// Starts the root zygote, then one per preloaded package set.
    async fn boot_zygotes(self: Arc<Self>) {
        let mut sets = vec![Vec::new()];
        for set in &self.zcfg.preload {
            let pins: Vec<Pin> = set
                .iter()
                .filter_map(|p| config::worker::parse_pin(p).ok())
                .map(|(name, version)| Pin { name, version })
                .collect();
            sets.push(pins);
        }
        for mut pins in sets {
            pins.sort();
            pins.dedup();
            let keys: BTreeSet<String> = pins.iter().map(Pin::key).collect();
            if self.zygotes.reserve(&keys, self.zcfg.max) {
                self.clone().start_zygote(pins, keys).await;
            }
        }
    }

    /// Starts a zygote for `pins` (its slot reserved by the caller).
    async fn start_zygote(self: Arc<Self>, pins: Vec<Pin>, keys: BTreeSet<String>) {
        let what = if keys.is_empty() {
            "root".to_string()
        } else {
            keys.iter().cloned().collect::<Vec<_>>().join(",")
        };
        let res = async {
            let dirs = self
                .packages
                .ensure(&pins)
                .await
                .map_err(|e| e.to_string())?;
            let (ours, theirs) =
                zygote::seqpacket_pair().map_err(|e| format!("socketpair: {e}"))?;
            let n = self.next_id.fetch_add(1, Ordering::Relaxed);
            let id = format!("zygote-{n}");
            let limits = Limits {
                memory_mb: self.zcfg.memory_mb,
                procs: ZYGOTE_PROCS,
                runtime: Duration::from_secs(u64::MAX / 4),
                cpu_percent: 100,
                open_files: ZYGOTE_OPEN_FILES,
            };
            let mut sb = self
                .new_sandbox(
                    &id,
                    "zygote",
                    PathBuf::new(),
                    Vec::new(),
                    self.uids.is_some(),
                    limits,
                    dirs,
                    Kind::Zygote(Some(theirs)),
                )
                .await
                .map_err(|e| e.to_string())?;
            match sb.start().await {
                Ok(()) => Ok(Arc::new(Zygote::new(id, keys.clone(), ours, Box::new(sb)))),
                Err(e) => {
                    let log = sb.logs(1024);
                    sb.remove().await;
                    Err(format!("{e}: {log}"))
                }
            }
        }
        .await;
        match res {
            Ok(z) => {
                tracing::info!(zygote = %z.id, packages = %what, "zygote ready");
                self.zygotes.started(z);
            }
            Err(e) => {
                tracing::warn!(packages = %what, error = %e, "zygote failed to start");
                if keys.is_empty() {
                    *self.root_failed.lock().unwrap() = Some(Instant::now());
                }
                self.zygotes.failed(&keys);
            }
        }
    }

    /// The zygote to fork a cold start of a function with `pins` from, if
    /// any; starts the root zygote, or one for `pins`, in the background
    /// when it is missing or the set has become popular.
    fn zygote_for(self: &Arc<Self>, pins: &[Pin]) -> Option<Arc<Zygote>> {
        for dead in self.zygotes.take_dead() {
            tracing::warn!(zygote = %dead.id, "zygote died; removing it");
            tokio::spawn(async move {
                if let Some(mut sb) = dead.sandbox.lock().await.take() {
                    sb.remove().await;
                }
            });
        }
        let root = BTreeSet::new();
        let retry_root = self
            .root_failed
            .lock()
            .unwrap()
            .is_none_or(|t| t.elapsed() >= ROOT_RETRY);
        if retry_root && !self.zygotes.has(&root) && self.zygotes.reserve(&root, self.zcfg.max) {
            tokio::spawn(self.clone().start_zygote(Vec::new(), root));
        }
        let keys: BTreeSet<String> = pins.iter().map(Pin::key).collect();
        let picked = self.zygotes.pick(&keys);
        let exact = picked.as_ref().is_some_and(|z| z.keys == keys);
        if !exact
            && !keys.is_empty()
            && self
                .zygotes
                .wants(&keys, self.zcfg.popular_after, self.zcfg.max)
        {
            tokio::spawn(self.clone().start_zygote(pins.to_vec(), keys));
        }
        if picked.is_none() {
            BACKEND.zygote_fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        picked
    }

    /// A sandbox with its uid, scratch dir and cgroup, not started.
    #[allow(clippy::too_many_arguments)]
    async fn new_sandbox(
        &self,
        id: &str,
        name: &str,
        code_dir: PathBuf,
        env: Vec<(String, String)>,
        private_network: bool,
        limits: Limits,
        packages: Vec<PathBuf>,
        kind: Kind,
    ) -> Result<ProcessSandbox, SandboxError> {
        let uid = self.uids.as_ref().map(UidPool::take).transpose()?;
        let mut sb = ProcessSandbox {
            id: id.to_string(),
            name: name.to_string(),
            dir: self.instances_dir.join(id),
            socket: self.instances_dir.join(id).join("rt.sock"),
            log: self.logs_dir.join(format!("{id}.log")),
            code_dir,
            env,
            private_network,
            limits,
            python: self.python.clone(),
            runtime: self.runtime.clone(),
            zygote_py: self.zygote_py.clone(),
            packages,
            kind,
            uid,
            cgroup: None,
            child: None,
            chan: None,
            pgid: 0,
            state: SandboxState::Created,
        };
        let uid = sb.uid();
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
            match cg.create(id, &limits) {
                Ok(c) => sb.cgroup = Some(c),
                Err(e) => {
                    sb.remove().await;
                    return Err(SandboxError::Setup(format!("cgroup for {id}: {e}")));
                }
            }
        }
        Ok(sb)
    }
}

/// Whether a process running as `uid` may create a user namespace, as a
/// child forked from a zygote must (to take its own uid); tried once at
/// start, so that a kernel without them disables zygotes instead of
/// failing cold starts.
fn probe_userns(python: &Path, uid: u32) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(python);
    cmd.args(["-I", "-S", "-c", ""])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) < 0
                || libc::setgid(uid) < 0
                || libc::setuid(uid) < 0
                || libc::unshare(libc::CLONE_NEWUSER) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("probe exited with {s}")),
        Err(e) => Err(format!("unshare(CLONE_NEWUSER) as uid {uid}: {e}")),
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
        let inner = &self.inner;
        let pins = PackageStore::requirements(&code.dir).map_err(|e| package_error(code, e))?;
        let packages = inner
            .packages
            .ensure(&pins)
            .await
            .map_err(|e| package_error(code, e))?;
        let private_network =
            code.config.network == config::function::Network::None && inner.uids.is_some();
        // An egress function needs the host's network, which a zygote's
        // children (in its private namespace) can no longer get.
        let zygote = if inner.zcfg.enabled && (private_network || inner.uids.is_none()) {
            inner.zygote_for(&pins)
        } else {
            None
        };
        let kind = match zygote {
            Some(z) => Kind::Forked(z),
            None => Kind::Instance,
        };
        let n = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", code.name);
        let sb = inner
            .new_sandbox(
                &id,
                &code.name,
                code.dir.clone(),
                code.config.environment.clone().into_iter().collect(),
                private_network,
                limits,
                packages,
                kind,
            )
            .await?;
        Ok(Box::new(sb))
    }

    async fn pull(&self, name: &str) -> Result<Arc<CodeVersion>, RegistryError> {
        self.inner.registry.resolve(name).await
    }

    fn describe(&self) -> String {
        let users = if self.inner.uids.is_some() {
            "one unprivileged uid per instance"
        } else {
            "the worker's own user (not root)"
        };
        format!(
            "process sandboxes: limits by {}; handlers run as {users}{}",
            self.inner.cgroup_note, self.inner.zygote_note
        )
    }

    async fn shutdown(&self) {
        for z in self.inner.zygotes.take_all() {
            if let Some(mut sb) = z.sandbox.lock().await.take() {
                sb.remove().await;
            }
        }
        if let Some(cg) = &self.inner.cgroups {
            cg.cleanup();
        }
    }
}

/// Maps a package problem to the call's error: a bad `requirements.txt`
/// is the function's fault (500, like a bad `ol.yaml`); a failed install
/// means the sandbox could not be prepared (502).
fn package_error(code: &CodeVersion, e: PackageError) -> SandboxError {
    match e {
        PackageError::Requirements(reason) => SandboxError::Load {
            name: code.name.clone(),
            reason,
            log: String::new(),
        },
        PackageError::Install(line) => {
            SandboxError::Setup(format!("function {}: {line}", code.name))
        }
    }
}

/// What a sandbox's process is.
enum Kind {
    /// A fresh runtime process.
    Instance,
    /// A zygote; holds its end of the control socket until started.
    Zygote(Option<OwnedFd>),
    /// A runtime forked from this zygote.
    Forked(Arc<Zygote>),
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
    zygote_py: PathBuf,
    /// Package store directories for the function's `sys.path`.
    packages: Vec<PathBuf>,
    kind: Kind,
    /// The instance's own uid (root worker only), back to the pool on drop.
    uid: Option<Uid>,
    cgroup: Option<InstanceCgroup>,
    child: Option<Child>,
    /// A forked runtime's channel: the zygote writes its wait status here.
    chan: Option<BufReader<tokio::net::UnixStream>>,
    pgid: i32,
    state: SandboxState,
}

impl ProcessSandbox {
    fn uid(&self) -> Option<u32> {
        self.uid.as_ref().map(Uid::get)
    }

    fn command(&mut self) -> std::io::Result<Command> {
        let mut cmd = Command::new(&self.python);
        cmd.arg("-I").arg("-S");
        let stdin = match &mut self.kind {
            Kind::Zygote(ctl) => {
                cmd.arg(&self.zygote_py).arg("--runtime").arg(&self.runtime);
                let ctl = ctl
                    .take()
                    .ok_or_else(|| std::io::Error::other("zygote started twice"))?;
                Stdio::from(ctl)
            }
            _ => {
                cmd.arg(&self.runtime)
                    .arg("--code")
                    .arg(&self.code_dir)
                    .arg("--socket")
                    .arg(&self.socket)
                    .arg("--name")
                    .arg(&self.name);
                Stdio::null()
            }
        };
        if !self.packages.is_empty() {
            cmd.arg("--packages")
                .arg(std::env::join_paths(&self.packages).map_err(std::io::Error::other)?);
        }
        cmd.current_dir(&self.dir)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &self.dir)
            .env("TMPDIR", &self.dir)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("LANG", "C.UTF-8")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&self.log)?)
            .kill_on_drop(true);
        let procs: Vec<CString> = self
            .cgroup
            .as_ref()
            .map(|c| c.procs_paths().to_vec())
            .unwrap_or_default();
        let uid = self.uid();
        let has_memory_cgroup = self.cgroup.is_some();
        let mem_bytes = self.limits.memory_mb * 1024 * 1024;
        let nproc = self.limits.procs;
        let nofile = self.limits.open_files;
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
                check(limit(libc::RLIMIT_NOFILE, nofile))?;
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
            if matches!(self.kind, Kind::Forked(_)) {
                // Killed before its setsid, it has no group of its own yet.
                unsafe { libc::kill(self.pgid, libc::SIGKILL) };
            }
        }
        if let Some(cg) = &self.cgroup {
            cg.kill_all();
        }
    }

    /// Reads the runtime's first line: "ready", or "error <reason>" (the
    /// function failed to import).
    async fn await_ready<R: AsyncBufRead + Unpin>(
        &mut self,
        reader: &mut R,
        timeout: Duration,
    ) -> Result<(), SandboxError> {
        let mut line = String::new();
        let read = reader.read_line(&mut line);
        match tokio::time::timeout(timeout, read).await {
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
                self.stop().await;
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
                    timeout.as_secs()
                )))
            }
        }
    }

    /// Forks the runtime from `z` (see `super::zygote`). `None`: the
    /// zygote could not fork, and the caller starts a fresh process.
    async fn start_forked(&mut self, z: Arc<Zygote>) -> Option<Result<(), SandboxError>> {
        if self.limits.procs > ZYGOTE_PROCS || self.limits.open_files > ZYGOTE_OPEN_FILES {
            return None;
        }
        let setup = |e: std::io::Error| SandboxError::Setup(format!("fork of {}: {e}", self.id));
        let log: OwnedFd = match fs::File::create(&self.log) {
            Ok(f) => f.into(),
            Err(e) => return Some(Err(setup(e))),
        };
        let (ours, theirs) = match std::os::unix::net::UnixStream::pair() {
            Ok(p) => p,
            Err(e) => return Some(Err(setup(e))),
        };
        let theirs: OwnedFd = theirs.into();
        let req = ForkRequest {
            code: self.code_dir.clone(),
            socket: self.socket.clone(),
            name: self.name.clone(),
            dir: self.dir.clone(),
            env: [
                ("PATH", "/usr/local/bin:/usr/bin:/bin".to_string()),
                ("HOME", self.dir.display().to_string()),
                ("TMPDIR", self.dir.display().to_string()),
                ("PYTHONDONTWRITEBYTECODE", "1".to_string()),
                ("LANG", "C.UTF-8".to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .chain(self.env.iter().cloned())
            .collect(),
            packages: self.packages.clone(),
            uid: self.uid(),
            userns: self.uid.is_some(),
            netns: self.private_network,
            nproc: self.uid().map(|_| self.limits.procs),
            nofile: self.limits.open_files,
            as_bytes: self
                .cgroup
                .is_none()
                .then(|| (self.limits.memory_mb * 1024 * 1024).max(64 << 20)),
        };
        let zy = z.clone();
        let forked = tokio::task::spawn_blocking(move || zy.fork(&req, &log, &theirs)).await;
        let pid = match forked {
            Ok(Ok(pid)) => pid,
            Ok(Err(e)) => {
                tracing::warn!(zygote = %z.id, error = %e, "zygote cannot fork; starting a fresh process");
                return None;
            }
            Err(e) => {
                tracing::warn!(zygote = %z.id, error = %e, "fork task failed");
                return None;
            }
        };
        self.pgid = pid;
        self.state = SandboxState::Running;
        match self.finish_fork(pid, ours).await {
            Ok(res) => Some(res),
            Err(why) => {
                // Nothing of the function ran yet: start it fresh instead.
                tracing::warn!(zygote = %z.id, %why, "forked child failed before set-up; starting a fresh process");
                None
            }
        }
    }

    /// The worker's half of the handshake: map the uid, join the cgroup,
    /// let the child go, wait for "ready", check its credentials.
    /// The outer `Err`: the child failed before the handshake (nothing of
    /// the function ran; the caller may start a fresh process instead).
    async fn finish_fork(
        &mut self,
        pid: i32,
        chan: std::os::unix::net::UnixStream,
    ) -> Result<Result<(), SandboxError>, String> {
        let chan = match chan
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(chan))
        {
            Ok(c) => c,
            Err(e) => {
                self.stop().await;
                return Err(format!("channel: {e}"));
            }
        };
        let mut reader = BufReader::new(chan);
        let mut line = String::new();
        let got = tokio::time::timeout(START_TIMEOUT, reader.read_line(&mut line)).await;
        if !matches!(got, Ok(Ok(_))) || line != "ns\n" {
            let log = self.logs(1024);
            self.stop().await;
            return Err(log.trim().lines().last().unwrap_or("no output").to_string());
        }
        Ok(self.finish_setup(pid, reader).await)
    }

    async fn finish_setup(
        &mut self,
        pid: i32,
        mut reader: BufReader<tokio::net::UnixStream>,
    ) -> Result<(), SandboxError> {
        let prepare = || -> std::io::Result<()> {
            if let Some(uid) = self.uid() {
                fs::write(format!("/proc/{pid}/uid_map"), format!("{uid} {uid} 1\n"))?;
                fs::write(format!("/proc/{pid}/gid_map"), format!("{uid} {uid} 1\n"))?;
            }
            if let Some(cg) = &self.cgroup {
                for p in cg.procs_paths() {
                    use std::os::unix::ffi::OsStrExt;
                    let path = Path::new(std::ffi::OsStr::from_bytes(p.to_bytes()));
                    fs::write(path, pid.to_string())?;
                }
            }
            Ok(())
        };
        let prepared = prepare();
        let go = match prepared {
            Ok(()) => reader.get_mut().write_all(b"go\n").await,
            Err(e) => Err(e),
        };
        if let Err(e) = go {
            self.stop().await;
            return Err(SandboxError::Setup(format!(
                "setting up forked instance {}: {e}",
                self.id
            )));
        }
        self.await_ready(&mut reader, START_TIMEOUT).await?;
        // The zygote reports the child's wait status here when it exits.
        self.chan = Some(reader);
        if let Some(uid) = self.uid() {
            if let Err(e) = zygote::check_dropped(pid, uid) {
                self.stop().await;
                return Err(SandboxError::Setup(e));
            }
        }
        Ok(())
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
        if let Kind::Forked(z) = &self.kind {
            match self.start_forked(z.clone()).await {
                Some(res) => return res,
                None => {
                    BACKEND.zygote_fallbacks.fetch_add(1, Ordering::Relaxed);
                    self.kind = Kind::Instance;
                    self.pgid = 0;
                    self.state = SandboxState::Created;
                }
            }
        }
        let timeout = match self.kind {
            Kind::Zygote(_) => ZYGOTE_START_TIMEOUT,
            _ => START_TIMEOUT,
        };
        let mut child = self.command().and_then(|mut c| c.spawn()).map_err(|e| {
            SandboxError::Setup(format!("cannot start {}: {e}", self.python.display()))
        })?;
        self.pgid = child.id().unwrap_or(0) as i32;
        let stdout = child.stdout.take().expect("stdout is piped");
        self.child = Some(child);
        self.state = SandboxState::Running;
        let mut reader = BufReader::new(stdout);
        self.await_ready(&mut reader, timeout).await
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
        } else if matches!(self.kind, Kind::Forked(_)) && self.pgid > 0 {
            // The zygote's child, reaped by the kernel: wait until it is gone.
            let proc = PathBuf::from(format!("/proc/{}", self.pgid));
            for _ in 0..400 {
                if !proc.exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
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
        self.uid = None; // back to the pool
        self.state = SandboxState::Removed;
    }

    fn logs(&self, max_bytes: usize) -> String {
        let data = fs::read(&self.log).unwrap_or_default();
        let start = data.len().saturating_sub(max_bytes);
        String::from_utf8_lossy(&data[start..]).into_owned()
    }

    async fn exit_reason(&mut self) -> String {
        use std::os::unix::process::ExitStatusExt;
        let status = match (&mut self.child, &mut self.chan) {
            (Some(c), _) => tokio::time::timeout(Duration::from_millis(500), c.wait())
                .await
                .ok()
                .and_then(|r| r.ok()),
            (None, Some(chan)) => {
                let mut line = String::new();
                let read =
                    tokio::time::timeout(Duration::from_millis(500), chan.read_line(&mut line));
                match read.await {
                    Ok(Ok(_)) => line
                        .strip_prefix("exit ")
                        .and_then(|n| n.trim().parse::<i32>().ok())
                        .map(std::process::ExitStatus::from_raw),
                    _ => None,
                }
            }
            (None, None) => None,
        };
        if self.cgroup.as_ref().is_some_and(|c| c.oom_killed()) {
            return format!(
                "killed by its memory limit of {} MiB",
                self.limits.memory_mb
            );
        }
        match status {
            Some(s) if s.signal() == Some(libc::SIGKILL) => "killed (SIGKILL)".into(),
            Some(s) if s.signal().is_some() => format!("killed by signal {}", s.signal().unwrap()),
            Some(s) => format!("runtime exited with status {}", s.code().unwrap_or(-1)),
            None => "runtime stopped answering".into(),
        }
    }

    fn forked(&self) -> bool {
        matches!(self.kind, Kind::Forked(_))
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
        }
    }
}
