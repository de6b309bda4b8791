//! The process backend: each instance is a Python runtime process.
//!
//! Isolation, when the worker runs as root and mount namespaces work (the
//! default; `jail` draws the layout): every instance runs in a mount
//! namespace of its own whose root is a read-only skeleton with the host's
//! `/usr`, a few generated `/etc` files, its own code at `/code`, its own
//! size-capped tmpfs at `/tmp` (also `/host/tmp`) and `/dev/shm`, and a
//! `/proc` that shows only its own processes; nothing else of the host.
//! It also gets its own uid (from the worker's claimed range), session,
//! cgroup (memory, pids, CPU, freezer) joined before exec, and, unless the
//! operator gave it egress, a network namespace of its own (no interfaces
//! but a down loopback). The worker talks to it over a socket pair made
//! before the fork, so no path exists that a function could redirect.
//! Without cgroups, rlimits bound memory and processes and SIGSTOP pauses.
//! A function the operator gives egress gets a namespace with a NATed link
//! instead, behind the host firewall (`egress`).
//!
//! Not root ("just processes"): instances run as the worker's user and see
//! what it sees; the start-up log says so loudly. For development only.
//!
//! A function's `requirements.txt` pins are installed into the worker's
//! package store (`crate::code::packages`) before its instance is created,
//! and their directories go on its `sys.path`. With `zygotes.enabled`, a
//! cold start forks the instance from a zygote (`zygote`, which also
//! explains how the forked child ends up as isolated as a fresh one) and
//! falls back to a fresh process when no zygote can fork.
//!
//! Here: the manager (set-up, zygote choice, `create`); `instance`: one
//! sandbox's process, started fresh or forked.

mod egress;
mod instance;
mod jail;
mod zygote;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use config::worker::ZygotesConfig;

use self::egress::ProcessEgress;
use self::instance::{
    Kind, ProcessSandbox, RUNTIME_FILE, ZYGOTE_FILE, ZYGOTE_OPEN_FILES, ZYGOTE_PROCS,
};
use self::jail::Layout;
use self::zygote::{Zygote, Zygotes};
use crate::code::packages::{PackageError, PackageStore, Pin};
use crate::code::CodeVersion;
use crate::fsutil;
use crate::runtime::RUNTIME_PY;
use crate::sandbox::cgroup::Cgroups;
use crate::sandbox::{Limits, Sandbox, SandboxError, SandboxManager, SandboxState, UidPool};
use crate::stats::BACKEND;

/// The zygote, shipped inside the binary and written to the work dir.
const ZYGOTE_PY: &str = include_str!("../../../runtime/ol_zygote.py");

/// A root zygote that failed to start is not tried again sooner.
const ROOT_RETRY: Duration = Duration::from_secs(5);

pub struct ProcessManager {
    inner: Arc<Inner>,
}

struct Inner {
    python: PathBuf,
    runtime: PathBuf,
    zygote_py: PathBuf,
    instances_dir: PathBuf,
    logs_dir: PathBuf,
    cgroups: Option<Cgroups>,
    cgroup_note: String,
    /// Free sandbox uids; `None` when not running as root.
    uids: Option<UidPool>,
    /// Size of each instance's scratch tmpfs (root only).
    scratch_mb: u64,
    /// The isolated layout (root, mount namespaces); `None`: just processes.
    layout: Option<Arc<Layout>>,
    /// What `describe` says about the layout.
    layout_note: String,
    /// Egress instances' network namespaces (root).
    egress: ProcessEgress,
    next_id: AtomicU64,
    packages: Arc<PackageStore>,
    zygotes: Zygotes,
    zcfg: ZygotesConfig,
    /// What `describe` says about zygotes.
    zygote_note: String,
    root_failed: Mutex<Option<Instant>>,
}

impl ProcessManager {
    pub fn new(cfg: &config::WorkerConfig) -> anyhow::Result<Self> {
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
        fsutil::clear_instances(&instances_dir);
        // Without the layout, sandbox uids reach their code by path.
        fsutil::set_mode(&work.join("code"), 0o755)?;
        let runtime_dir = work.join("runtime");
        fs::create_dir_all(&runtime_dir)?;
        fsutil::set_mode(&runtime_dir, 0o755)?;
        let runtime = runtime_dir.join(RUNTIME_FILE);
        fs::write(&runtime, RUNTIME_PY)?;
        fsutil::set_mode(&runtime, 0o644)?;
        let zygote_py = runtime_dir.join(ZYGOTE_FILE);
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
        let (layout, layout_note) = if root && !cfg.instances.mount_namespace {
            tracing::error!(
                "NO MOUNT NAMESPACE (instances.mount_namespace = false): functions see the host's files (its /etc, /tmp, other functions' code)"
            );
            (
                None,
                "; NO mount namespace (turned off): functions see the host's files".to_string(),
            )
        } else if root {
            match isolated_layout(work, &cfg.python, &runtime_dir, &instances_dir) {
                Ok(l) => {
                    // Nothing in a sandbox reaches these by path any more.
                    fsutil::set_mode(&work.join("code"), 0o700)?;
                    fsutil::set_mode(&instances_dir, 0o700)?;
                    (
                    Some(Arc::new(l)),
                    "; each in its own mount namespace (read-only root, own code, private /tmp and /dev/shm)".to_string(),
                )
                }
                // Fail closed: running without it is the operator's call.
                Err(e) => anyhow::bail!(
                    "cannot give instances their own mount namespace ({e}); set `mount_namespace = false` under [instances] to run without one (functions then see the host's files)"
                ),
            }
        } else {
            tracing::error!(
                "JUST PROCESSES: the worker is not root, so its sandboxes isolate nothing: every function runs as the worker's user and sees its files; use this for development only"
            );
            (None, "; JUST PROCESSES: nothing is isolated".to_string())
        };
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
        let uids = root
            .then(|| UidPool::claim(&cfg.sandbox_user))
            .transpose()
            .map_err(|e| anyhow::anyhow!("sandbox uids: {e}"))?;
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
        if root && layout.is_none() {
            // Without the layout, sandbox uids reach their code by path.
            check_traversable(work)?;
        }
        // In the layout, by its real path: a link (a venv's python) may
        // point out of a directory the layout shows.
        let python = match layout {
            Some(_) => fs::canonicalize(&cfg.python)?,
            None => cfg.python.clone(),
        };
        let inner = Arc::new(Inner {
            python,
            runtime,
            zygote_py,
            instances_dir,
            logs_dir,
            cgroups,
            cgroup_note,
            uids,
            scratch_mb: cfg.instances.scratch_mb,
            layout,
            layout_note,
            egress: ProcessEgress::new(&cfg.egress, cfg.sandbox_user.uid_base),
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
                Ok(()) => {
                    let pid = sb.pgid;
                    Ok(Arc::new(Zygote::new(
                        id,
                        keys.clone(),
                        ours,
                        pid,
                        Box::new(sb),
                    )))
                }
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
            log: self.logs_dir.join(format!("{id}.log")),
            code_dir,
            env,
            private_network,
            netns: None,
            limits,
            python: self.python.clone(),
            runtime: self.runtime.clone(),
            zygote_py: self.zygote_py.clone(),
            packages,
            kind,
            layout: self.layout.clone(),
            scratch_mb: self.scratch_mb,
            conn: None,
            uid,
            cgroup: None,
            child: None,
            chan: None,
            pgid: 0,
            state: SandboxState::Created,
        };
        let uid = sb.uid();
        let scratch_mb = self.scratch_mb;
        let setup = || -> std::io::Result<()> {
            fs::create_dir_all(&sb.dir)?;
            fsutil::set_mode(&sb.dir, 0o700)?;
            if let Some(uid) = uid {
                // Root: the scratch dir is a tmpfs of its own (bounded).
                fsutil::mount_scratch(&sb.dir, scratch_mb, uid)?;
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

/// Builds the isolated layout and enters it once with a throw-away
/// process, so that a machine without mount namespaces says so at start
/// instead of failing every cold start.
fn isolated_layout(
    work: &Path,
    python: &Path,
    runtime_dir: &Path,
    instances_dir: &Path,
) -> std::io::Result<Layout> {
    use std::os::unix::process::CommandExt;
    let python = &fs::canonicalize(python)?;
    let layout = Layout::prepare(work, python, runtime_dir)?;
    let scratch = instances_dir.join("probe");
    fs::create_dir_all(&scratch)?;
    let plan = layout.plan(&jail::Own {
        code: None,
        scratch: scratch.clone(),
        scratch_mb: 1,
    })?;
    let mut cmd = std::process::Command::new(python);
    cmd.args(["-I", "-S", "-c", "import os; os.listdir('/tmp')"])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: `enter` makes only system calls on prepared strings.
    unsafe { cmd.pre_exec(move || plan.enter()) };
    let status = cmd.status();
    let _ = fs::remove_dir(&scratch);
    match status {
        Ok(s) if s.success() => Ok(layout),
        Ok(s) => Err(std::io::Error::other(format!(
            "python in the layout exited with {s}"
        ))),
        Err(e) => Err(e),
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
        let mut sb = inner
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
        let egress = code.config.network == config::function::Network::Egress;
        if let (true, Some(uid)) = (egress, sb.uid()) {
            match inner.egress.namespace(uid).await {
                Ok(ns) => sb.netns = Some(ns),
                Err(e) => {
                    sb.remove().await;
                    return Err(SandboxError::Setup(format!(
                        "egress network for {}: {e}",
                        code.name
                    )));
                }
            }
        }
        Ok(Box::new(sb))
    }

    fn describe(&self) -> String {
        let users = match &self.inner.uids {
            Some(u) => u.describe(self.inner.scratch_mb),
            None => "the worker's own user (not root)".to_string(),
        };
        format!(
            "process sandboxes: limits by {}; handlers run as {users}{}{}",
            self.inner.cgroup_note, self.inner.layout_note, self.inner.zygote_note
        )
    }

    fn leftovers(&self) -> crate::sandbox::Leftovers {
        crate::sandbox::Leftovers {
            cgroups: self
                .inner
                .cgroups
                .as_ref()
                .map(Cgroups::dirs)
                .unwrap_or_default(),
            docker_label: None,
            instances: Some(self.inner.instances_dir.clone()),
        }
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
/// is a 502, still the function's (it chose the pins: a hostile one could
/// otherwise pin nothing installable and get workers ejected).
fn package_error(code: &CodeVersion, e: PackageError) -> SandboxError {
    match e {
        PackageError::Requirements(reason) => SandboxError::Load {
            name: code.name.clone(),
            reason,
            log: String::new(),
        },
        PackageError::Install(line) => SandboxError::Packages {
            name: code.name.clone(),
            line,
        },
    }
}
