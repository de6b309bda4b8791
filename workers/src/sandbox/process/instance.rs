//! One process sandbox: a runtime process started fresh (uid, session,
//! cgroup joined and rlimits set between fork and exec) or forked from a
//! zygote (the handshake in `finish_fork`), and its life cycle.

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use super::jail::{self, Layout, Own};
use super::zygote::{self, ForkRequest, Zygote};
use crate::runtime::{self, FirstLine};
use crate::sandbox::cgroup::InstanceCgroup;
use crate::sandbox::{Exit, Limits, Sandbox, SandboxError, SandboxState, Uid};
use crate::stats::BACKEND;

/// How long a runtime may take to import its function.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// A zygote's own RLIMIT_NPROC and RLIMIT_NOFILE: hard limits its forked
/// children (no longer privileged) can lower but never raise, so an
/// instance asking for more starts as a fresh process instead.
pub(super) const ZYGOTE_PROCS: u64 = 256;
pub(super) const ZYGOTE_OPEN_FILES: u64 = 4096;
/// How long a zygote may take to import its package set.
const ZYGOTE_START_TIMEOUT: Duration = Duration::from_secs(60);

/// RLIMIT_FSIZE of an instance or zygote is `scratch_mb` plus this: its
/// stderr log is a file on the host's disk, so without a cap a function
/// could fill that disk through fd 2; above the scratch size, a file in
/// the scratch tmpfs meets ENOSPC (its own bound) before this one.
/// Zygotes' children inherit it (the same for every instance).
pub(super) const LOG_CAP_MB: u64 = 16;

/// The runtime's end of its channel to the worker, in a fresh runtime.
const CHANNEL_FD: RawFd = 3;
/// The runtime files' names in the worker's runtime dir.
pub(super) const RUNTIME_FILE: &str = "ol_runtime.py";
pub(super) const ZYGOTE_FILE: &str = "ol_zygote.py";

/// Paths as the runtime sees them.
struct Seen {
    code: PathBuf,
    dir: PathBuf,
    runtime: PathBuf,
    zygote_py: PathBuf,
    packages: Vec<PathBuf>,
}

/// What a sandbox's process is.
pub(super) enum Kind {
    /// A fresh runtime process.
    Instance,
    /// A zygote; holds its end of the control socket until started.
    Zygote(Option<OwnedFd>),
    /// A runtime forked from this zygote.
    Forked(Arc<Zygote>),
}

pub struct ProcessSandbox {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) dir: PathBuf,
    pub(super) log: PathBuf,
    pub(super) code_dir: PathBuf,
    pub(super) env: Vec<(String, String)>,
    /// Run in a network namespace of its own (no interfaces but a down
    /// loopback): the handler reaches nothing, not even 127.0.0.1.
    pub(super) private_network: bool,
    /// An egress instance's network namespace (`super::egress`), entered
    /// between fork and exec.
    pub(super) netns: Option<OwnedFd>,
    pub(super) limits: Limits,
    pub(super) python: PathBuf,
    pub(super) runtime: PathBuf,
    pub(super) zygote_py: PathBuf,
    /// Package store directories for the function's `sys.path`.
    pub(super) packages: Vec<PathBuf>,
    pub(super) kind: Kind,
    /// The isolated layout to enter (root with mount namespaces); `None`:
    /// just processes.
    pub(super) layout: Option<Arc<Layout>>,
    pub(super) scratch_mb: u64,
    /// The worker's end of the runtime's channel, until `connect`.
    pub(super) conn: Option<std::os::unix::net::UnixStream>,
    /// The instance's own uid (root worker only), back to the pool on drop.
    pub(super) uid: Option<Uid>,
    pub(super) cgroup: Option<InstanceCgroup>,
    pub(super) child: Option<Child>,
    /// A forked runtime's channel: the zygote writes its wait status here.
    pub(super) chan: Option<BufReader<tokio::net::UnixStream>>,
    pub(super) pgid: i32,
    pub(super) state: SandboxState,
}

impl ProcessSandbox {
    pub(super) fn uid(&self) -> Option<u32> {
        self.uid.as_ref().map(Uid::get)
    }

    /// Paths as the runtime sees them: inside the layout, or the host's.
    fn seen(&self) -> Seen {
        match &self.layout {
            Some(l) => Seen {
                code: PathBuf::from(jail::CODE),
                dir: PathBuf::from(jail::SCRATCH),
                runtime: Path::new(jail::RUNTIME_DIR).join(RUNTIME_FILE),
                zygote_py: Path::new(jail::RUNTIME_DIR).join(ZYGOTE_FILE),
                packages: self.packages.iter().map(|p| l.package_path(p)).collect(),
            },
            None => Seen {
                code: self.code_dir.clone(),
                dir: self.dir.clone(),
                runtime: self.runtime.clone(),
                zygote_py: self.zygote_py.clone(),
                packages: self.packages.clone(),
            },
        }
    }

    fn own(&self) -> Own {
        Own {
            code: (!self.code_dir.as_os_str().is_empty()).then(|| self.code_dir.clone()),
            scratch: self.dir.clone(),
            scratch_mb: self.scratch_mb,
        }
    }

    /// The runtime's process; `channel`: its end of the worker's socket
    /// pair (fd 3 in the runtime), none for a zygote.
    fn command(&mut self, channel: Option<RawFd>) -> std::io::Result<Command> {
        let seen = self.seen();
        let mut cmd = Command::new(&self.python);
        cmd.arg("-I").arg("-S");
        let packages = if seen.packages.is_empty() {
            None
        } else {
            let joined = std::env::join_paths(&seen.packages).map_err(std::io::Error::other)?;
            Some(joined.to_string_lossy().into_owned())
        };
        let stdin = match &mut self.kind {
            Kind::Zygote(ctl) => {
                cmd.arg(&seen.zygote_py).arg("--runtime").arg(&seen.runtime);
                if let Some(p) = packages {
                    cmd.arg("--packages").arg(p);
                }
                let ctl = ctl
                    .take()
                    .ok_or_else(|| std::io::Error::other("zygote started twice"))?;
                Stdio::from(ctl)
            }
            _ => {
                let code = seen.code.to_string_lossy();
                let args = runtime::Args {
                    channel: runtime::Channel::Fd(CHANNEL_FD),
                    code: Some((&code, &self.name)),
                    limit_ms: Some(self.limits.runtime.as_millis()),
                    packages,
                    block_io_uring: false,
                };
                cmd.arg(&seen.runtime).args(args.to_vec());
                Stdio::null()
            }
        };
        let plan = match &self.layout {
            Some(l) => Some(l.plan(&self.own())?),
            None => {
                cmd.current_dir(&self.dir);
                None
            }
        };
        cmd.env_clear()
            .envs(runtime::base_env(&seen.dir.display().to_string()))
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
        let fsize = (self.scratch_mb + LOG_CAP_MB) << 20;
        let private_network = self.private_network;
        let netns = self.netns.as_ref().map(|f| f.as_raw_fd());
        let filter = crate::sandbox::seccomp::Filter::new();
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
                if let Some(fd) = netns {
                    check(libc::setns(fd, libc::CLONE_NEWNET))?;
                } else if private_network {
                    check(libc::unshare(libc::CLONE_NEWNET))?;
                }
                for p in &procs {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    check(fd)?;
                    let w = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    check(w as libc::c_int)?;
                }
                // After the cgroup files (the layout has no /sys).
                if let Some(plan) = &plan {
                    plan.enter()?;
                }
                if let Some(fd) = channel {
                    if fd == CHANNEL_FD {
                        check(libc::fcntl(fd, libc::F_SETFD, 0))?;
                    } else {
                        check(libc::dup2(fd, CHANNEL_FD))?;
                    }
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
                check(limit(libc::RLIMIT_FSIZE, fsize))?;
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
                // Last: no io_uring (and no_new_privs) from here on.
                filter.install()?;
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
        let mut bounded = tokio::io::AsyncReadExt::take(&mut *reader, runtime::MAX_STATUS_LINE);
        let read = bounded.read_line(&mut line);
        let read = tokio::time::timeout(timeout, read).await;
        match read.map(|r| r.map(|_| runtime::first_line(&line))) {
            Ok(Ok(FirstLine::Ready)) => Ok(()),
            Ok(Ok(FirstLine::Error(reason))) => {
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
                Err(SandboxError::died_at_start(&self.name, &why))
            }
            Err(_) => {
                self.stop().await;
                let within = format!("{} s", timeout.as_secs());
                Err(SandboxError::not_ready(&self.name, "start", &within))
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
        let pair = || std::os::unix::net::UnixStream::pair();
        let ((ours, theirs), (rt_ours, rt_theirs)) = match pair().and_then(|a| Ok((a, pair()?))) {
            Ok(p) => p,
            Err(e) => return Some(Err(setup(e))),
        };
        let theirs: OwnedFd = theirs.into();
        let rt_theirs: OwnedFd = rt_theirs.into();
        self.conn = Some(rt_ours);
        let seen = self.seen();
        let req = ForkRequest {
            code: seen.code,
            name: self.name.clone(),
            dir: seen.dir.clone(),
            env: runtime::base_env(&seen.dir.display().to_string())
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .chain(self.env.iter().cloned())
                .collect(),
            packages: seen.packages,
            uid: self.uid(),
            userns: self.uid.is_some(),
            netns: self.private_network,
            mntns: self.layout.is_some(),
            nproc: self.uid().map(|_| self.limits.procs),
            nofile: self.limits.open_files,
            limit_ms: self.limits.runtime.as_millis() as u64,
            as_bytes: self
                .cgroup
                .is_none()
                .then(|| (self.limits.memory_mb * 1024 * 1024).max(64 << 20)),
        };
        let zy = z.clone();
        let forked =
            tokio::task::spawn_blocking(move || zy.fork(&req, &log, &theirs, &rt_theirs)).await;
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
        let mut bounded = tokio::io::AsyncReadExt::take(&mut reader, runtime::MAX_STATUS_LINE);
        let got = tokio::time::timeout(START_TIMEOUT, bounded.read_line(&mut line)).await;
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
        let mut prepared = prepare();
        if let (Ok(()), Some(_)) = (&prepared, &self.layout) {
            let own = self.own();
            prepared = tokio::task::spawn_blocking(move || jail::attach(pid, &own))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        }
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

    async fn connect(&mut self) -> std::io::Result<tokio::net::UnixStream> {
        let conn = self
            .conn
            .take()
            .ok_or_else(|| std::io::Error::other("runtime channel already taken"))?;
        conn.set_nonblocking(true)?;
        tokio::net::UnixStream::from_std(conn)
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
        let python = self.python.display().to_string();
        let setup = |e: std::io::Error| SandboxError::Setup(format!("cannot start {python}: {e}"));
        let theirs = match self.kind {
            Kind::Zygote(_) => None,
            _ => {
                let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(setup)?;
                self.conn = Some(ours);
                Some(theirs)
            }
        };
        let spawned = self
            .command(theirs.as_ref().map(|t| t.as_raw_fd()))
            .and_then(|mut c| c.spawn());
        drop(theirs); // the runtime holds its end now
        let mut child = spawned.map_err(setup)?;
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
        crate::fsutil::unmount(&self.dir);
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_file(&self.log);
        self.uid = None; // back to the pool
        self.state = SandboxState::Removed;
    }

    /// The last `max_bytes` of its stderr log (read from there, not whole).
    fn logs(&self, max_bytes: usize) -> String {
        use std::io::{Read, Seek, SeekFrom};
        let mut data = Vec::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let from = len.saturating_sub(max_bytes as u64);
            if f.seek(SeekFrom::Start(from)).is_ok() {
                let _ = f.take(max_bytes as u64).read_to_end(&mut data);
            }
        }
        String::from_utf8_lossy(&data).into_owned()
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
                let mut bounded =
                    tokio::io::AsyncReadExt::take(&mut *chan, runtime::MAX_STATUS_LINE);
                let read =
                    tokio::time::timeout(Duration::from_millis(500), bounded.read_line(&mut line));
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
        let exit = if self.cgroup.as_ref().is_some_and(|c| c.oom_killed()) {
            Exit::OutOfMemory(self.limits.memory_mb)
        } else {
            match status {
                Some(s) => match s.signal() {
                    Some(sig) => Exit::Signal(sig),
                    None => Exit::Status(s.code().unwrap_or(-1)),
                },
                None => Exit::Unknown,
            }
        };
        exit.to_string()
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
            crate::fsutil::unmount(&self.dir);
            let _ = fs::remove_dir_all(&self.dir);
            let _ = fs::remove_file(&self.log);
        }
    }
}
