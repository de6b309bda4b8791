//! The guard: a small process that outlives its worker to stop what the
//! worker leaves behind when it dies without cleaning up (SIGKILL, OOM, a
//! crash, its parent proxy killed).
//!
//! Why a process of its own: a frozen instance cannot act on any signal
//! (its worker's death included) until it is thawed, and a container does
//! not notice its worker at all; only something still alive can thaw and
//! kill them. The worker starts the guard (`ol-worker --guard ...`, the
//! same binary) in a session of its own, holding the write end of a pipe
//! that is the guard's stdin: when the worker's process ends, however it
//! ends, the guard reads EOF, thaws and kills everything in the worker's
//! cgroups, removes its containers and its instances' scratch mounts, and
//! exits. After a clean shutdown it
//! finds nothing left and exits too.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Leftovers;

/// The first argument that makes `ol-worker` a guard.
pub const GUARD_FLAG: &str = "--guard";

/// Starts the guard of this worker; keep the returned child (its stdin is
/// the pipe) for the worker's whole life.
pub fn spawn(what: &Leftovers) -> std::io::Result<Child> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg(GUARD_FLAG);
    for dir in &what.cgroups {
        cmd.arg("--cgroup").arg(dir);
    }
    if let Some(label) = &what.docker_label {
        cmd.arg("--docker-label").arg(label);
    }
    if let Some(dir) = &what.instances {
        cmd.arg("--instances").arg(dir);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // SAFETY: setsid is async-signal-safe. A session of its own: signals
    // to the worker's process group (a terminal's ^C, a killed parent) do
    // not reach the guard.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn()
}

/// `ol-worker --guard [--cgroup DIR]... [--docker-label L]`: waits for its
/// worker to end, then stops what it left. Never returns.
pub fn run(args: &[String]) -> ! {
    let mut what = Leftovers::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.next()) {
            ("--cgroup", Some(d)) => what.cgroups.push(PathBuf::from(d)),
            ("--docker-label", Some(l)) => what.docker_label = Some(l.clone()),
            ("--instances", Some(d)) => what.instances = Some(PathBuf::from(d)),
            _ => {}
        }
    }
    // Blocks until the worker's end of the pipe closes: the worker is gone.
    let mut sink = [0u8; 64];
    while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stopped = 0;
    let left: Vec<&PathBuf> = what.cgroups.iter().filter(|d| d.exists()).collect();
    // Thawed in every hierarchy first: a process frozen in the freezer's
    // cannot die from the kills in the memory hierarchy's.
    for dir in &left {
        super::cgroup::thaw_tree(dir);
    }
    for dir in &left {
        stopped += 1;
        super::cgroup::remove_tree(dir, deadline);
    }
    if let Some(label) = &what.docker_label {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(async {
                if let Ok(d) = super::docker::engine::connect().await {
                    if let Ok(n) = super::docker::engine::remove_labelled(&d, label).await {
                        stopped += n;
                    }
                }
            });
        }
    }
    // Last: the scratch tmpfs mounts hold RAM until unmounted.
    if let Some(dir) = &what.instances {
        crate::fsutil::clear_instances(dir);
    }
    if stopped > 0 {
        eprintln!("ol-worker guard: the worker ended without cleaning up; stopped what it left ({stopped} cgroup trees or containers)");
    }
    std::process::exit(0)
}
