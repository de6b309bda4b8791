//! Control groups for process sandboxes: memory, pids and CPU limits, the
//! freezer for pausing, and OOM reporting. cgroup v1 (one hierarchy per
//! controller, as on this project's machines) and v2 (unified) are both
//! supported; where neither is writable the worker falls back to rlimits
//! and SIGSTOP, and says so at start.
//!
//! Layout: `<hierarchy>/<worker's own cgroup>/ol-worker-<pid>/<instance>`.

use std::ffi::CString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Limits;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// The worker's cgroup parent, found once at start.
#[derive(Debug)]
pub struct Cgroups {
    version: Version,
    /// v1: (controller, parent dir) pairs; v2: one ("", parent dir) pair.
    parents: Vec<(&'static str, PathBuf)>,
}

const V1_CONTROLLERS: [&str; 4] = ["memory", "pids", "freezer", "cpu"];

impl Cgroups {
    /// Finds a writable hierarchy, or explains why there is none.
    pub fn detect() -> Result<Cgroups, String> {
        let tag = format!("ol-worker-{}", std::process::id());
        let root = Path::new("/sys/fs/cgroup");
        let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        if root.join("cgroup.controllers").exists() {
            return Self::detect_v2(root, &own, &tag);
        }
        let mut parents = Vec::new();
        let mut missing = Vec::new();
        for c in V1_CONTROLLERS {
            let mount = root.join(c);
            if !mount.join("cgroup.procs").exists() {
                missing.push(c);
                continue;
            }
            // The worker's own cgroup in this hierarchy, if visible.
            let rel = own
                .lines()
                .filter_map(|l| l.split_once(':').and_then(|(_, rest)| rest.split_once(':')))
                .find(|(ctrls, _)| ctrls.split(',').any(|x| x == c))
                .map(|(_, p)| p.trim_start_matches('/').to_string())
                .unwrap_or_default();
            let base = if mount.join(&rel).is_dir() {
                mount.join(&rel)
            } else {
                mount.clone()
            };
            remove_stale(&base);
            let dir = base.join(&tag);
            match fs::create_dir_all(&dir) {
                Ok(()) => parents.push((c, dir)),
                Err(_) => missing.push(c),
            }
        }
        if parents.iter().all(|(c, _)| *c != "memory") {
            for (_, d) in &parents {
                let _ = fs::remove_dir(d);
            }
            return Err(format!(
                "no writable cgroup v1 memory hierarchy (missing: {missing:?})"
            ));
        }
        if !missing.is_empty() {
            tracing::warn!(?missing, "some cgroup v1 controllers are not writable");
        }
        Ok(Cgroups {
            version: Version::V1,
            parents,
        })
    }

    fn detect_v2(root: &Path, own: &str, tag: &str) -> Result<Cgroups, String> {
        let rel = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/")
            .trim_start_matches('/');
        let parent = root.join(rel);
        let enable =
            |dir: &Path| fs::write(dir.join("cgroup.subtree_control"), "+memory +pids +cpu");
        if enable(&parent).is_err() {
            // "No internal processes": move the worker into a leaf of its own
            // and try again (as under systemd's Delegate=yes).
            let leaf = parent.join(format!("{tag}-self"));
            fs::create_dir_all(&leaf)
                .and_then(|()| fs::write(leaf.join("cgroup.procs"), std::process::id().to_string()))
                .and_then(|()| enable(&parent))
                .map_err(|e| {
                    format!(
                        "cgroup v2 at {} is not delegated to us: {e}",
                        parent.display()
                    )
                })?;
        }
        remove_stale(&parent);
        let dir = parent.join(tag);
        fs::create_dir_all(&dir)
            .and_then(|()| enable(&dir))
            .map_err(|e| format!("cgroup v2 at {}: {e}", dir.display()))?;
        Ok(Cgroups {
            version: Version::V2,
            parents: vec![("", dir)],
        })
    }

    /// This worker's cgroup dirs (each instance's cgroup is below one).
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.parents.iter().map(|(_, d)| d.clone()).collect()
    }

    pub fn describe(&self) -> String {
        match self.version {
            Version::V1 => format!(
                "cgroup v1 ({})",
                self.parents
                    .iter()
                    .map(|p| p.0)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Version::V2 => "cgroup v2 (memory, pids, cpu, freeze)".into(),
        }
    }

    /// Creates the cgroup of one instance with its limits set.
    pub fn create(&self, id: &str, limits: &Limits) -> io::Result<InstanceCgroup> {
        let mut cg = InstanceCgroup {
            version: self.version,
            dirs: Vec::new(),
            procs: Vec::new(),
        };
        let mem = (limits.memory_mb * 1024 * 1024).to_string();
        let pids = limits.procs.to_string();
        for (ctrl, parent) in &self.parents {
            let dir = parent.join(id);
            fs::create_dir_all(&dir)?;
            cg.procs.push(
                CString::new(
                    dir.join("cgroup.procs")
                        .into_os_string()
                        .into_encoded_bytes(),
                )
                .unwrap(),
            );
            cg.dirs.push((*ctrl, dir.clone()));
            match (self.version, *ctrl) {
                (Version::V1, "memory") => {
                    fs::write(dir.join("memory.limit_in_bytes"), &mem)?;
                    // Swap counts too where the kernel accounts it.
                    let _ = fs::write(dir.join("memory.memsw.limit_in_bytes"), &mem);
                }
                (Version::V1, "pids") => fs::write(dir.join("pids.max"), &pids)?,
                (Version::V1, "cpu") => {
                    fs::write(dir.join("cpu.cfs_period_us"), "100000")?;
                    fs::write(
                        dir.join("cpu.cfs_quota_us"),
                        (limits.cpu_percent * 1000).to_string(),
                    )?;
                }
                (Version::V2, _) => {
                    fs::write(dir.join("memory.max"), &mem)?;
                    let _ = fs::write(dir.join("memory.swap.max"), "0");
                    fs::write(dir.join("pids.max"), &pids)?;
                    fs::write(
                        dir.join("cpu.max"),
                        format!("{} 100000", limits.cpu_percent * 1000),
                    )?;
                }
                _ => {}
            }
        }
        Ok(cg)
    }

    /// Removes the worker's cgroups at exit, killing whatever is left in them.
    pub fn cleanup(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        for (_, d) in &self.parents {
            if !remove_tree(d, deadline) {
                tracing::warn!(cgroup = %d.display(), "cgroup still busy at exit; the next start removes it");
            }
        }
    }
}

/// The cgroup(s) of one instance.
#[derive(Debug)]
pub struct InstanceCgroup {
    version: Version,
    dirs: Vec<(&'static str, PathBuf)>,
    /// `cgroup.procs` paths, prepared before fork: the child writes "0" to
    /// each (join the cgroup) before exec, so no handler code runs outside.
    procs: Vec<CString>,
}

impl InstanceCgroup {
    pub fn procs_paths(&self) -> &[CString] {
        &self.procs
    }

    fn dir(&self, ctrl: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| *c == ctrl || self.version == Version::V2)
            .map(|(_, d)| d.as_path())
    }

    /// Freezes every process of the instance; `Ok(false)` if there is no
    /// freezer (the caller falls back to SIGSTOP).
    pub async fn freeze(&self) -> io::Result<bool> {
        let Some(dir) = self.dir("freezer") else {
            return Ok(false);
        };
        match self.version {
            Version::V1 => fs::write(dir.join("freezer.state"), "FROZEN")?,
            Version::V2 => fs::write(dir.join("cgroup.freeze"), "1")?,
        }
        for _ in 0..200 {
            let settled = match self.version {
                Version::V1 => fs::read_to_string(dir.join("freezer.state"))?.trim() == "FROZEN",
                Version::V2 => fs::read_to_string(dir.join("cgroup.events"))?
                    .lines()
                    .any(|l| l == "frozen 1"),
            };
            if settled {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Err(io::Error::other("freezer did not settle within 200 ms"))
    }

    pub fn thaw(&self) -> io::Result<bool> {
        let Some(dir) = self.dir("freezer") else {
            return Ok(false);
        };
        match self.version {
            Version::V1 => fs::write(dir.join("freezer.state"), "THAWED")?,
            Version::V2 => fs::write(dir.join("cgroup.freeze"), "0")?,
        }
        Ok(true)
    }

    /// Whether the kernel's OOM killer has killed a process of this instance.
    pub fn oom_killed(&self) -> bool {
        let (file, key) = match self.version {
            Version::V1 => ("memory.oom_control", "oom_kill "),
            Version::V2 => ("memory.events", "oom_kill "),
        };
        let Some(dir) = self.dir("memory") else {
            return false;
        };
        fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|n| n.trim().parse::<u64>().ok())
            })
            .is_some_and(|n| n > 0)
    }

    /// SIGKILLs every process in the instance (thawing first: frozen tasks
    /// cannot die).
    pub fn kill_all(&self) {
        let _ = self.thaw();
        if self.version == Version::V2 {
            if let Some(d) = self.dir("") {
                let _ = fs::write(d.join("cgroup.kill"), "1");
            }
        }
        for (_, d) in &self.dirs {
            if let Ok(s) = fs::read_to_string(d.join("cgroup.procs")) {
                for pid in s.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }

    /// Removes the cgroup directories once their processes are gone.
    pub async fn remove(&self) {
        for (_, d) in &self.dirs {
            for _ in 0..100 {
                match fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        }
    }
}

/// Removes `ol-worker-<pid>` cgroups of workers that are no longer running.
fn remove_stale(base: &Path) {
    let Ok(rd) = fs::read_dir(base) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("ol-worker-")
            .and_then(|p| p.split('-').next());
        if let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                // One try, no waiting: a cgroup that still holds zombies
                // (reaped by nobody) stays until they go; it costs nothing.
                if !remove_tree(&e.path(), std::time::Instant::now()) {
                    tracing::debug!(cgroup = %e.path().display(), "a dead worker's cgroup is still busy");
                }
            }
        }
    }
}

/// Thaws a cgroup and its children (v1 freezer or v2 `cgroup.freeze`): a
/// frozen process cannot die, so a tree is thawed in every hierarchy
/// before any of it is killed.
pub(super) fn thaw_tree(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                thaw_tree(&e.path());
            }
        }
    }
    let _ = fs::write(dir.join("freezer.state"), "THAWED");
    let _ = fs::write(dir.join("cgroup.freeze"), "0");
}

/// Kills the processes of a cgroup and its children, then removes them,
/// retrying until `deadline` (a memory cgroup can stay busy briefly after
/// its last task died). Whether it is gone.
pub(super) fn remove_tree(dir: &Path, deadline: std::time::Instant) -> bool {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path(), deadline);
            }
        }
    }
    let _ = fs::write(dir.join("freezer.state"), "THAWED");
    let _ = fs::write(dir.join("cgroup.freeze"), "0");
    loop {
        if let Ok(s) = fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in s.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        match fs::remove_dir(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
            Ok(()) => return true,
            Err(_) if std::time::Instant::now() >= deadline => return false,
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}
