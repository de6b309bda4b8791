//! Zygotes for the process backend: Python processes that have imported
//! the runtime (the root zygote) or the runtime and a package set, and
//! fork new instances (`workers/runtime/ol_zygote.py`). A cold start then
//! costs a fork and the function's own import, not an interpreter start-up
//! and the packages' imports (SOCK, Oakes et al., ATC '18).
//!
//! Which zygote: the one with the largest package set that is a subset of
//! the function's (the deepest node of SOCK's tree that fits); the root
//! zygote, with no packages, fits every function. Which package sets get
//! one: those in `zygotes.preload`, and any set that `popular_after` cold
//! starts used; at most `zygotes.max` live at once, and they live as long
//! as the worker (forked instances are their children and die with them).
//! Functions with `network: egress` are never forked (zygotes live in a
//! private network namespace) and start a fresh process.
//!
//! Security (the worker runs as root). Nothing that imports package code
//! holds any privilege:
//! - A zygote is started like an instance: its own uid from the sandbox
//!   pool, its own cgroup (`zygotes.memory_mb`), session and private
//!   network namespace, the isolated layout with no function's code in
//!   it, PDEATHSIG, a private scratch tmpfs, no capabilities. Its control socket is its stdin (a socketpair with the
//!   worker), so nothing else can ask it to fork.
//! - A forked child cannot change uid by itself, so it unshares a user
//!   namespace (and a network namespace) and the worker, root outside,
//!   writes a one-line map of the instance's own uid and gid into it,
//!   moves the child into the instance's cgroup and (in the isolated
//!   layout, `super::jail`) moves the instance's own code and scratch into
//!   the mount namespace the child unshared with it; only then does the child
//!   switch to that uid, clear every capability (it had them only inside
//!   its new namespace, over nothing but its own uid), set no_new_privs
//!   and PDEATHSIG, and import the function. The worker checks
//!   `/proc/<pid>/status` (uid, gid, no effective capabilities) before it
//!   connects. The instance thus ends up as a fresh one would: its own
//!   uid, cgroup (memory, pids, cpu, freezer), network and mount
//!   namespaces, session and scratch dir; it also sees files of other
//!   uids as owned by `nobody`, and setuid binaries do not work in it.
//! - Trade-off: zygotes are started by the worker, not forked from their
//!   parent zygote as in SOCK. A zygote forked from a zygote would sit in
//!   a nested user namespace, where the worker cannot map instance uids
//!   (the map of a namespace may only be written from its parent), unless
//!   zygotes kept CAP_SETUID, which package code imported into them could
//!   then use against other instances. So a new zygote pays one
//!   interpreter start and its whole package set's import, once, off the
//!   request path (in the background); the tree is kept for choosing the
//!   zygote. A malicious package in a zygote can affect only the
//!   instances forked from it, all of which import that package anyway.
//! - Without root there are no uids to switch to: zygotes and instances
//!   run as the worker's user, as fresh instances do then.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::stats::BACKEND;

/// How long a zygote may take to answer a fork request.
const FORK_TIMEOUT: Duration = Duration::from_secs(5);

/// What a zygote's child needs to become an instance.
#[derive(Debug, Serialize)]
pub struct ForkRequest {
    pub code: PathBuf,
    pub name: String,
    pub dir: PathBuf,
    pub env: HashMap<String, String>,
    /// Package directories for `sys.path` (those not in the zygote).
    pub packages: Vec<PathBuf>,
    pub uid: Option<u32>,
    pub userns: bool,
    pub netns: bool,
    /// A mount namespace of its own (the worker then attaches the
    /// instance's code and scratch into it: `super::jail::attach`).
    pub mntns: bool,
    pub nproc: Option<u64>,
    /// RLIMIT_NOFILE (lowered from the zygote's, never raised).
    pub nofile: u64,
    /// The runtime limit, also enforced by the runtime itself.
    pub limit_ms: u64,
    pub as_bytes: Option<u64>,
}

/// One live zygote.
pub struct Zygote {
    /// Package keys (`<name>-<version>`) it has imported.
    pub keys: BTreeSet<String>,
    pub id: String,
    /// Its process: every pid it reports must be its child.
    pid: i32,
    /// The worker's end of the control socket (SOCK_SEQPACKET).
    ctl: Mutex<OwnedFd>,
    dead: AtomicBool,
    /// Its own process (removed when it dies or at shutdown).
    pub(super) sandbox: tokio::sync::Mutex<Option<Box<dyn crate::sandbox::Sandbox>>>,
}

impl Zygote {
    pub(super) fn new(
        id: String,
        keys: BTreeSet<String>,
        ctl: OwnedFd,
        pid: i32,
        sandbox: Box<dyn crate::sandbox::Sandbox>,
    ) -> Zygote {
        Zygote {
            keys,
            id,
            pid,
            ctl: Mutex::new(ctl),
            dead: AtomicBool::new(false),
            sandbox: tokio::sync::Mutex::new(Some(sandbox)),
        }
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Relaxed)
    }

    /// Asks the zygote to fork; returns the child's pid. Blocking (a few
    /// hundred microseconds): call from `spawn_blocking`. An error means
    /// the zygote is unusable and has been marked dead.
    /// `log`: its stderr; `chan`: the zygote's reports about it; `rt`: its
    /// runtime's channel to the worker.
    pub fn fork(
        &self,
        req: &ForkRequest,
        log: &OwnedFd,
        chan: &OwnedFd,
        rt: &OwnedFd,
    ) -> io::Result<i32> {
        let res = self.fork_inner(req, &[log.as_raw_fd(), chan.as_raw_fd(), rt.as_raw_fd()]);
        if res.is_err() {
            self.dead.store(true, Relaxed);
        }
        res
    }

    fn fork_inner(&self, req: &ForkRequest, fds: &[RawFd]) -> io::Result<i32> {
        let msg = serde_json::to_vec(req)?;
        let ctl = self.ctl.lock().unwrap();
        send_with_fds(ctl.as_raw_fd(), &msg, fds)?;
        let mut buf = [0u8; 4096];
        let n = unsafe { libc::recv(ctl.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "zygote closed its socket",
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&buf[..n as usize])?;
        match v["pid"].as_i64() {
            // The worker maps, moves and later kills this pid (and its
            // group) as root: it must be the zygote's own child, not any
            // process a hostile zygote names.
            Some(pid) if pid > 0 && parent_of(pid as i32) == Some(self.pid) => Ok(pid as i32),
            Some(pid) if pid > 0 => Err(io::Error::other(format!(
                "zygote reported pid {pid}, which is not its child"
            ))),
            _ => Err(io::Error::other(format!("zygote refused to fork: {v}"))),
        }
    }
}

/// The parent pid of `pid` (`/proc/<pid>/stat`), if it runs.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command's closing parenthesis: state, then ppid.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A SOCK_SEQPACKET socketpair (close-on-exec): message boundaries kept,
/// file descriptors passed alongside. The second end goes to the zygote.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let tv = libc::timeval {
        tv_sec: FORK_TIMEOUT.as_secs() as _,
        tv_usec: 0,
    };
    // A zygote that stops answering fails the request instead of hanging it.
    unsafe {
        libc::setsockopt(
            a.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    Ok((a, b))
}

fn send_with_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let fd_bytes = std::mem::size_of_val(fds);
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; the control buffer is large enough for
    // one SCM_RIGHTS message of `fds` (CMSG_SPACE) and 8-byte aligned.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<RawFd>(), fds.len());
        if libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The live zygotes, and how often each package set was cold-started.
#[derive(Default)]
pub struct Zygotes {
    live: Mutex<Vec<std::sync::Arc<Zygote>>>,
    uses: Mutex<HashMap<BTreeSet<String>, u32>>,
    /// Package sets whose zygote is being started.
    pending: Mutex<HashSet<BTreeSet<String>>>,
}

impl Zygotes {
    /// The live zygote with the largest package set inside `keys`.
    pub fn pick(&self, keys: &BTreeSet<String>) -> Option<std::sync::Arc<Zygote>> {
        self.live
            .lock()
            .unwrap()
            .iter()
            .filter(|z| !z.is_dead() && z.keys.is_subset(keys))
            .max_by_key(|z| z.keys.len())
            .cloned()
    }

    /// Counts a cold start of `keys` (served by a zygote of fewer
    /// packages); true when the set should now get a zygote of its own
    /// (the caller then starts it and calls `started` or `failed`).
    pub fn wants(&self, keys: &BTreeSet<String>, popular_after: u32, max: usize) -> bool {
        if self.has(keys) {
            return false;
        }
        let n = {
            let mut uses = self.uses.lock().unwrap();
            let n = uses.entry(keys.clone()).or_insert(0);
            *n += 1;
            *n
        };
        (keys.is_empty() || (popular_after > 0 && n >= popular_after)) && self.reserve(keys, max)
    }

    /// Whether a live zygote for exactly `keys` exists.
    pub fn has(&self, keys: &BTreeSet<String>) -> bool {
        self.live
            .lock()
            .unwrap()
            .iter()
            .any(|z| !z.is_dead() && &z.keys == keys)
    }

    /// Reserves a slot for a zygote of `keys`; false if one is live or
    /// starting, or `max` are.
    pub fn reserve(&self, keys: &BTreeSet<String>, max: usize) -> bool {
        let live = self.live.lock().unwrap();
        let mut pending = self.pending.lock().unwrap();
        let count = live.iter().filter(|z| !z.is_dead()).count() + pending.len();
        if pending.contains(keys) || live.iter().any(|z| !z.is_dead() && &z.keys == keys) {
            return false;
        }
        if count >= max {
            return false;
        }
        pending.insert(keys.clone());
        true
    }

    pub fn started(&self, z: std::sync::Arc<Zygote>) {
        let mut live = self.live.lock().unwrap();
        self.pending.lock().unwrap().remove(&z.keys);
        live.push(z);
        BACKEND.zygotes_created.fetch_add(1, Relaxed);
        BACKEND.zygotes_live.store(live.len() as u64, Relaxed);
    }

    pub fn failed(&self, keys: &BTreeSet<String>) {
        self.pending.lock().unwrap().remove(keys);
    }

    /// Takes dead zygotes out of the list (for removal by the caller).
    pub fn take_dead(&self) -> Vec<std::sync::Arc<Zygote>> {
        let mut live = self.live.lock().unwrap();
        let (dead, alive): (Vec<_>, Vec<_>) = live.drain(..).partition(|z| z.is_dead());
        *live = alive;
        BACKEND.zygotes_live.store(live.len() as u64, Relaxed);
        dead
    }

    /// Takes every zygote out of the list (at shutdown).
    pub fn take_all(&self) -> Vec<std::sync::Arc<Zygote>> {
        let all = std::mem::take(&mut *self.live.lock().unwrap());
        BACKEND.zygotes_live.store(0, Relaxed);
        all
    }
}

/// Reads `/proc/<pid>/status` and checks that the process runs as `uid`
/// and `gid` (all four ids) with no effective capabilities.
pub fn check_dropped(pid: i32, uid: u32) -> Result<(), String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let want = uid.to_string();
    let ids_ok = |v: Vec<&str>| v.len() == 4 && v.iter().all(|x| *x == want);
    if !ids_ok(field("Uid:")) || !ids_ok(field("Gid:")) {
        return Err(format!(
            "forked instance {pid} does not run as uid/gid {uid}"
        ));
    }
    if field("CapEff:")
        .first()
        .is_none_or(|c| !c.trim_start_matches('0').is_empty())
    {
        return Err(format!("forked instance {pid} kept capabilities"));
    }
    Ok(())
}
