//! Isolation only: the sandbox layer, after the interfaces of OpenLambda's
//! sandbox package (`Sandbox`: start, stop, pause, unpause, remove, logs,
//! state; `SandboxManager`: create). A sandbox runs one instance of one
//! function version: a Python runtime (`workers/runtime/ol_runtime.py`,
//! spoken to through `crate::runtime`) that listens on a unix socket,
//! never a TCP port. It is given a `CodeVersion` and never asks the
//! registry for one: which version runs is the invoke layer's choice.
//!
//! Backends:
//! - `process`: a Python process per instance (its own uid, cgroup or
//!   rlimits, network namespace), forked from a zygote when one fits;
//! - `docker`: a container per instance (its own root filesystem and
//!   namespaces), from a pool of pre-started ones when the limits allow.

mod cgroup;
pub mod docker;
pub mod firewall;
pub mod guard;
pub mod process;
pub mod seccomp;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::code::CodeVersion;

/// The unprivileged uids handlers run as, one per live instance, when the
/// worker is root (no passwd entries needed). Shared by every backend.
#[derive(Clone)]
pub struct UidPool(Arc<PoolInner>);

struct PoolInner {
    free: Mutex<Vec<u32>>,
    /// `[first, end)` of the range this worker claimed.
    range: (u32, u32),
    /// The claim: a lock on bytes `[first, end)` of the host's lock file,
    /// held for the worker's life; the kernel drops it when the process
    /// ends, however it ends.
    _lock: std::fs::File,
}

/// The file in which the workers of one host claim their uid ranges (root
/// only): a worker's range is a byte-range lock on the same offsets (an
/// open-file-description lock), so claims of any base and size never
/// share a uid.
pub const UID_LOCK_FILE: &str = "/run/ol-edge/uids.lock";
/// Ranges past the configured one a worker tries before giving up.
const UID_RANGE_TRIES: u64 = 64;

impl UidPool {
    /// Claims `uid_count` uids that no other live worker on this host holds:
    /// the configured range if it is free, else the next whole range up
    /// (`uid_base + k * uid_count`). Two workers started with the same
    /// defaults (the quickstart's two, or two by hand) thus never lease the
    /// same uid, and cannot read or signal each other's instances.
    pub fn claim(users: &config::worker::SandboxUserConfig) -> std::io::Result<UidPool> {
        Self::claim_in(std::path::Path::new(UID_LOCK_FILE), users)
    }

    fn claim_in(
        file: &std::path::Path,
        users: &config::worker::SandboxUserConfig,
    ) -> std::io::Result<UidPool> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(file)?;
        // Only its owner may open it: anyone who can read it can place read
        // locks, and so refuse or steer every worker's claim.
        {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            let meta = lock.metadata()?;
            let me = unsafe { libc::geteuid() };
            if meta.uid() != me {
                return Err(std::io::Error::other(format!(
                    "{} is owned by uid {}, not this worker's {me}",
                    file.display(),
                    meta.uid()
                )));
            }
            if meta.mode() & 0o077 != 0 {
                lock.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            }
        }
        let reserved = reserved_uids();
        let count = u64::from(users.uid_count.max(1));
        for k in 0..UID_RANGE_TRIES {
            let first = u64::from(users.uid_base) + k * count;
            let end = first + count;
            if end > u64::from(u32::MAX) {
                break;
            }
            if let Some((a, b, what)) = reserved.iter().find(|(a, b, _)| *a < end && first < *b) {
                tracing::warn!(
                    "sandbox uids {first}-{}: skipped, they overlap {what} ({a}-{})",
                    end - 1,
                    b - 1
                );
                continue;
            }
            if lock_range(&lock, first, count)? {
                let (first, end) = (first as u32, end as u32);
                return Ok(UidPool(Arc::new(PoolInner {
                    free: Mutex::new((first..end).rev().collect()),
                    range: (first, end),
                    _lock: lock,
                })));
            }
        }
        Err(std::io::Error::other(format!(
            "no free range of {count} sandbox uids from {}: other workers on this host hold {UID_RANGE_TRIES} ranges ({})",
            users.uid_base,
            file.display()
        )))
    }

    /// `[first, end)` of this worker's uids.
    pub fn range(&self) -> (u32, u32) {
        self.0.range
    }

    /// Who handlers run as, for a backend's start-up line.
    pub fn describe(&self, scratch_mb: u64) -> String {
        let (first, end) = self.range();
        format!(
            "one unprivileged uid per instance (uids {first}-{}, claimed for this worker), each with a {scratch_mb} MiB scratch tmpfs",
            end - 1
        )
    }

    /// A uid for one sandbox, back in the pool when the `Uid` is dropped.
    pub fn take(&self) -> Result<Uid, SandboxError> {
        let id = self.0.free.lock().unwrap().pop();
        let id = id.ok_or_else(|| SandboxError::Setup("no free sandbox uid".into()))?;
        Ok(Uid {
            id,
            pool: self.clone(),
        })
    }

    /// The uid `take` would give next, without taking it.
    pub fn peek(&self) -> Option<u32> {
        self.0.free.lock().unwrap().last().copied()
    }
}

/// Uids the host has given to someone else: subordinate ranges
/// (`/etc/subuid`, `/etc/subgid`: a user with one can run processes as
/// those uids) and the uids of `/etc/passwd`, as `[first, end)` with where
/// they come from. A sandbox uid must be none of them.
fn reserved_uids() -> Vec<(u64, u64, String)> {
    let mut out = Vec::new();
    for file in ["/etc/subuid", "/etc/subgid"] {
        for line in std::fs::read_to_string(file).unwrap_or_default().lines() {
            let mut f = line.split(':');
            let (Some(who), Some(a), Some(n)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            if let (Ok(a), Ok(n)) = (a.trim().parse::<u64>(), n.trim().parse::<u64>()) {
                out.push((a, a + n, format!("{who}'s range in {file}")));
            }
        }
    }
    for line in std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
    {
        let mut f = line.split(':');
        if let (Some(who), Some(uid)) = (f.next(), f.nth(1)) {
            if let Ok(u) = uid.parse::<u64>() {
                out.push((u, u + 1, format!("user {who}")));
            }
        }
    }
    out
}

/// An exclusive open-file-description lock on bytes `[first, first + len)`
/// of `f`; `false` when another holder has any of them.
fn lock_range(f: &std::fs::File, first: u64, len: u64) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed flock is valid; the fields set are the lock's.
    let mut l: libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = libc::F_WRLCK as libc::c_short;
    l.l_whence = libc::SEEK_SET as libc::c_short;
    l.l_start = first as libc::off_t;
    l.l_len = len as libc::off_t;
    // SAFETY: fcntl on a file we own, with a valid flock.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &l) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(e),
    }
}

/// A uid on loan to one sandbox.
pub struct Uid {
    id: u32,
    pool: UidPool,
}

impl Uid {
    pub fn get(&self) -> u32 {
        self.id
    }
}

impl Drop for Uid {
    /// Before the uid goes back to the pool, every process still running
    /// as it is killed: a process that slipped out of its instance's
    /// cgroup (a zygote's package code can fork before the child joins
    /// it) must not live on to meet the uid's next tenant.
    fn drop(&mut self) {
        kill_uid(self.id);
        self.pool.0.free.lock().unwrap().push(self.id);
    }
}

/// SIGKILLs every process whose real or saved uid is `uid`, from a child
/// that takes that uid and signals -1 (root only; a few hundred
/// microseconds). A process in a frozen cgroup dies when thawed.
pub fn kill_uid(uid: u32) {
    // SAFETY: the child makes only async-signal-safe system calls and
    // leaves with `_exit`; the parent reaps it.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            // Nothing of the worker's (its uid-range lock above all) in a
            // child that will run as a sandbox uid, however briefly.
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            if libc::setresgid(uid, uid, uid) == 0 && libc::setresuid(uid, uid, uid) == 0 {
                libc::kill(-1, libc::SIGKILL);
            }
            libc::_exit(0);
        }
        if pid > 0 {
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
        }
    }
}

/// Life cycle of a sandbox: Created -> Running <-> Paused -> Stopped -> Removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    Created,
    Running,
    Paused,
    Stopped,
    Removed,
}

/// The limits one instance runs under (worker defaults with `ol.yaml`
/// overrides applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_mb: u64,
    pub procs: u64,
    pub runtime: Duration,
    pub cpu_percent: u64,
    /// RLIMIT_NOFILE.
    pub open_files: u64,
}

impl Limits {
    /// The worker's defaults with what the function asks for, within the
    /// worker's ceilings (`[limits.max]`); the error names the field.
    pub fn for_function(
        worker: &config::worker::LimitsConfig,
        f: &config::function::FunctionLimits,
    ) -> Result<Limits, String> {
        let l = worker.for_function(f)?;
        Ok(Limits {
            memory_mb: l.memory_mb,
            procs: l.procs,
            runtime: Duration::from_millis(l.runtime_ms),
            cpu_percent: l.cpu_percent,
            open_files: l.open_files,
        })
    }
}

/// Why a sandbox could not do what was asked. Each displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The function's code failed to import: the author's bug (500).
    #[error("function {name} failed to load: {reason}")]
    Load {
        name: String,
        reason: String,
        log: String,
    },
    /// The runtime died or misbehaved (502).
    #[error("{0}")]
    Crashed(String),
    /// The call ran past the runtime limit; the instance was killed (504).
    #[error("function {name} ran past its runtime limit of {ms} ms and was stopped")]
    Timeout { name: String, ms: u128 },
    /// The sandbox could not be set up (502).
    #[error("sandbox: {0}")]
    Setup(String),
    /// The function's pinned packages could not be installed (502). The
    /// pins are the author's choice, so this counts against the function,
    /// not the worker.
    #[error("function {name}: {line}")]
    Packages { name: String, line: String },
}

impl SandboxError {
    /// The runtime ended before it was ready; `why` is its `exit_reason`.
    pub fn died_at_start(name: &str, why: &str) -> SandboxError {
        SandboxError::Crashed(format!("runtime of {name} died at start: {why}"))
    }

    /// The runtime did not `what` ("start", "load") `within` its time.
    pub fn not_ready(name: &str, what: &str, within: &str) -> SandboxError {
        SandboxError::Crashed(format!("runtime of {name} did not {what} within {within}"))
    }
}

/// How a runtime ended, in the words of `Sandbox::exit_reason`, the same
/// for every backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Killed by its memory limit (MiB).
    OutOfMemory(u64),
    Signal(i32),
    Status(i32),
    /// No exit seen (it may still run, but does not answer).
    Unknown,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::OutOfMemory(mb) => write!(f, "killed by its memory limit of {mb} MiB"),
            Exit::Signal(libc::SIGKILL) => f.write_str("killed (SIGKILL)"),
            Exit::Signal(n) => write!(f, "killed by signal {n}"),
            Exit::Status(c) => write!(f, "runtime exited with status {c}"),
            Exit::Unknown => f.write_str("runtime stopped answering"),
        }
    }
}

/// One isolated instance of a function's runtime.
#[async_trait]
pub trait Sandbox: Send + Sync {
    fn id(&self) -> &str;
    fn state(&self) -> SandboxState;
    /// The worker's connection to the started runtime (once). The process
    /// backend hands the runtime one end of a socket pair, so there is no
    /// path a function could redirect; the Docker backend connects to a
    /// socket in the container's scratch with `runtime::connect_own`.
    async fn connect(&mut self) -> std::io::Result<tokio::net::UnixStream>;
    /// Starts the runtime and waits until it has loaded the function and
    /// listens; a function that fails to import gives `SandboxError::Load`.
    async fn start(&mut self) -> Result<(), SandboxError>;
    /// Freezes every process of the sandbox (cheap to resume).
    async fn pause(&mut self) -> Result<(), SandboxError>;
    async fn unpause(&mut self) -> Result<(), SandboxError>;
    /// Kills the runtime; the sandbox cannot be started again.
    async fn stop(&mut self);
    /// Stops and frees everything the sandbox holds (dirs, cgroups, uid).
    async fn remove(&mut self);
    /// The tail of what the runtime wrote to stdout/stderr.
    fn logs(&self, max_bytes: usize) -> String;
    /// After the runtime died: why (exit status, killed by the memory limit).
    async fn exit_reason(&mut self) -> String;
    /// Whether this instance was forked from a zygote (`start=zygote`)
    /// rather than started as a new process.
    fn forked(&self) -> bool {
        false
    }
}

/// What a dead worker may leave behind (the guard, `guard.rs`, removes it).
#[derive(Debug, Default, Clone)]
pub struct Leftovers {
    /// The worker's own cgroup dirs (every instance's cgroup is below one).
    pub cgroups: Vec<std::path::PathBuf>,
    /// The `ol-edge.worker` label of its containers.
    pub docker_label: Option<String>,
    /// Its `instances/` dir: scratch mounts (RAM) and dirs.
    pub instances: Option<std::path::PathBuf>,
}

/// Creates sandboxes of one backend.
#[async_trait]
pub trait SandboxManager: Send + Sync {
    /// A new sandbox for `code` with `limits`, created but not started.
    async fn create(
        &self,
        code: &Arc<CodeVersion>,
        limits: Limits,
    ) -> Result<Box<dyn Sandbox>, SandboxError>;
    /// What isolation is in force, for the start-up log.
    fn describe(&self) -> String;
    /// Removes what the backend left behind at exit.
    async fn shutdown(&self);
    /// What a guard must stop if this worker dies without `shutdown`.
    fn leftovers(&self) -> Leftovers;
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::worker::SandboxUserConfig;

    /// A process running as a sandbox uid outside any cgroup (as a zygote's
    /// package code could leave one) is killed when the uid goes back to
    /// the pool, before anyone else can get it.
    /// A child forked by one test holds every descriptor of the test
    /// process until it execs, the other test's lock file too: tests that
    /// fork and tests that watch a lock's release take turns.
    static FORKS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn a_returned_uid_has_no_process_left() {
        let _turn = FORKS.lock().unwrap_or_else(|e| e.into_inner());
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED a_returned_uid_has_no_process_left: needs root (setuid)");
            return;
        }
        use std::os::unix::process::CommandExt;
        let t = tempfile::tempdir().unwrap();
        let users = SandboxUserConfig {
            uid_base: 3_900_000,
            uid_count: 4,
        };
        let pool = UidPool::claim_in(&t.path().join("uids.lock"), &users).unwrap();
        let uid = pool.take().unwrap();
        let mut left = std::process::Command::new("sleep")
            .arg("100")
            .uid(uid.get())
            .gid(uid.get())
            .spawn()
            .unwrap();
        let mut bystander = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        drop(uid);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(s) = left.try_wait().unwrap() {
                break s;
            }
            if std::time::Instant::now() > deadline {
                left.kill().unwrap();
                panic!("the process with the returned uid still runs");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        assert!(
            bystander.try_wait().unwrap().is_none(),
            "killed a bystander"
        );
        bystander.kill().unwrap();
    }

    #[test]
    fn claims_never_overlap_and_end_with_their_holder() {
        let _turn = FORKS.lock().unwrap_or_else(|e| e.into_inner());
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("uids.lock");
        let users = SandboxUserConfig {
            uid_base: 300_000,
            uid_count: 1000,
        };
        let a = UidPool::claim_in(&file, &users).unwrap();
        let b = UidPool::claim_in(&file, &users).unwrap();
        assert_eq!(a.range(), (300_000, 301_000));
        assert_eq!(b.range(), (301_000, 302_000), "the next whole range");
        // A range of another size that would overlap both is moved past them.
        let wide = SandboxUserConfig {
            uid_base: 300_500,
            uid_count: 1000,
        };
        let c = UidPool::claim_in(&file, &wide).unwrap();
        assert_eq!(c.range(), (302_500, 303_500), "past both, whole ranges up");
        drop(a);
        let again = UidPool::claim_in(&file, &users).unwrap();
        assert_eq!(again.range(), (300_000, 301_000), "freed with its holder");
        let u = again.take().unwrap();
        assert_eq!(u.get(), 300_000);
    }
}
