//! The isolated layout of a process sandbox (root only): each instance
//! runs in a mount namespace of its own whose root is a read-only
//! skeleton, so that a function sees its own code and scratch space and
//! the host's installed software, and nothing else of the host.
//!
//! What an instance sees (fixed paths, whatever the worker's work dir):
//!
//! | path | what | mode |
//! |---|---|---|
//! | `/usr` (and `/bin`, `/lib`, `/lib64`, `/sbin` as the host has them) | the host's installed software, so both backends' Python is the host's | read-only |
//! | `/etc` | a few files the worker writes at start (passwd, group, hosts, nsswitch.conf, resolv.conf, ld.so.cache, CA certificates), none of the host's own | read-only |
//! | `/code` | the function's own code version | read-only |
//! | `/packages` | the worker's package store (pip installs from pinned `requirements.txt`; zygotes need all of it) | read-only |
//! | `/ol` | the runtime's two Python files | read-only |
//! | `/tmp`, `/host/tmp` | the instance's scratch tmpfs (one mount, size-capped, gone with the instance) | read-write |
//! | `/dev/shm` | a tmpfs of its own, same cap, gone with the instance | read-write |
//! | `/dev/null`, `zero`, `full`, `random`, `urandom` | those devices | |
//! | `/proc` | procfs with `hidepid=invisible`: only the instance's own processes | |
//!
//! Not there: the host's `/etc`, `/root`, `/home`, `/var`, `/run`, `/tmp`,
//! `/dev/shm`, `/sys`, the worker's work dir, the code store, other
//! instances. There is no pid namespace (a fork and a pid 1 per instance
//! would cost more than hidepid's view); `/proc/self/mountinfo` still names
//! the host paths its mounts came from (names, never contents).
//!
//! How it is entered:
//! - A fresh instance (and a zygote) enters between fork and exec, still
//!   root on the host: [`Layout::enter`] unshares a mount namespace, binds
//!   what it needs into the skeleton, pivots into it and drops the old root;
//!   only then does it take its uid and exec Python.
//! - A child forked from a zygote inherits the zygote's layout (a copy of
//!   its mount namespace, owned by the child's new user namespace), whose
//!   `/code`, `/tmp` and `/dev/shm` are the zygote's. Before the child may
//!   go on, [`attach`] (run by the worker, root outside) clones the
//!   child's own code and scratch as detached private mounts on the host,
//!   enters the child's mount namespace and moves them onto those paths,
//!   and mounts its `/dev/shm`. A function's code and scratch are never in
//!   the zygote's own namespace. The zygote does hold capabilities in its
//!   children's user namespaces (it owns them), so package code in a
//!   zygote can reach the instances forked from it, which import that
//!   package anyway; never other instances (see `super::zygote`).

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::fsutil;

/// Paths inside the layout.
pub const CODE: &str = "/code";
pub const SCRATCH: &str = "/tmp";
pub const RUNTIME_DIR: &str = "/ol";
pub const PACKAGES: &str = "/packages";
const HOST_TMP: &str = "host/tmp";
const DEVICES: [&str; 5] = ["null", "zero", "full", "random", "urandom"];

/// The skeleton and the host directories every instance gets; made once at
/// the worker's start.
pub struct Layout {
    /// `<work>/jail/root`: the skeleton (root-owned, read-only to all).
    root: PathBuf,
    /// (host source, path inside) of the read-only binds.
    binds: Vec<(PathBuf, String)>,
    packages: PathBuf,
}

/// What one instance adds to the layout.
#[derive(Clone)]
pub struct Own {
    pub code: Option<PathBuf>,
    pub scratch: PathBuf,
    pub scratch_mb: u64,
}

fn cstr(p: impl AsRef<std::ffi::OsStr>) -> io::Result<CString> {
    CString::new(p.as_ref().as_bytes()).map_err(io::Error::other)
}

impl Layout {
    /// Writes the skeleton under `<work>/jail` (replacing an old one) for
    /// instances that run `python` and the runtime files in `runtime_dir`.
    pub fn prepare(work: &Path, python: &Path, runtime_dir: &Path) -> io::Result<Layout> {
        let jail = work.join("jail");
        if jail.exists() {
            fs::remove_dir_all(&jail)?;
        }
        let root = jail.join("root");
        let mut binds = vec![(PathBuf::from("/usr"), "usr".to_string())];
        for d in ["bin", "lib", "lib32", "lib64", "sbin"] {
            let host = Path::new("/").join(d);
            match fs::read_link(&host) {
                // Merged /usr: the same link in the skeleton.
                Ok(target) => {
                    fs::create_dir_all(&root)?;
                    std::os::unix::fs::symlink(target, root.join(d))?;
                }
                Err(_) if host.is_dir() => binds.push((host, d.to_string())),
                Err(_) => {}
            }
        }
        // A Python installed outside /usr (pyenv, /opt): its prefix too,
        // if that is a directory of its own (not `/`, not one holding the
        // work dir).
        let python = fs::canonicalize(python)?;
        if !python.starts_with("/usr") {
            let prefix = python
                .parent()
                .and_then(Path::parent)
                .ok_or_else(|| io::Error::other("python has no prefix"))?;
            let work = fs::canonicalize(work)?;
            if prefix.components().count() < 3 || work.starts_with(prefix) {
                return Err(io::Error::other(format!(
                    "python {} lives in {}, which would show too much of the host to functions; use a python under /usr or its own directory",
                    python.display(),
                    prefix.display()
                )));
            }
            let inside = prefix.strip_prefix("/").unwrap_or(prefix);
            binds.push((prefix.to_path_buf(), inside.display().to_string()));
        }
        binds.push((runtime_dir.to_path_buf(), "ol".into()));
        let mut dirs: Vec<String> = binds.iter().map(|(_, d)| d.clone()).collect();
        dirs.extend(
            [
                "etc/ssl/certs",
                "code",
                "packages",
                "tmp",
                HOST_TMP,
                "dev/shm",
                "proc",
                ".old",
            ]
            .map(String::from),
        );
        for d in &dirs {
            fs::create_dir_all(root.join(d))?;
        }
        for d in DEVICES {
            fs::write(root.join("dev").join(d), b"")?;
        }
        let etc = root.join("etc");
        fs::write(
            etc.join("passwd"),
            "root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        )?;
        fs::write(etc.join("group"), "root:x:0:\nnogroup:x:65534:\n")?;
        fs::write(etc.join("hosts"), "127.0.0.1 localhost\n::1 localhost\n")?;
        fs::write(
            etc.join("nsswitch.conf"),
            "passwd: files\ngroup: files\nhosts: files dns\n",
        )?;
        // Name servers and CA roots, for functions the operator gave
        // egress; the loader's cache, for start-up speed.
        for (host, inside) in [
            ("/etc/resolv.conf", "resolv.conf"),
            ("/etc/ld.so.cache", "ld.so.cache"),
            (
                "/etc/ssl/certs/ca-certificates.crt",
                "ssl/certs/ca-certificates.crt",
            ),
        ] {
            if let Ok(bytes) = fs::read(host) {
                fs::write(etc.join(inside), bytes)?;
            }
        }
        make_read_only(&root)?;
        fsutil::set_mode(&jail, 0o755)?;
        Ok(Layout {
            root,
            binds,
            packages: work.join("packages"),
        })
    }

    /// Everything [`Plan::enter`] needs, as C strings made before the fork.
    pub fn plan(&self, own: &Own) -> io::Result<Plan> {
        let at = |inside: &str| cstr(self.root.join(inside.trim_start_matches('/')));
        let ro = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
        let rw = libc::MS_NOSUID | libc::MS_NODEV;
        let mut binds = Vec::new();
        for (src, inside) in &self.binds {
            binds.push((cstr(src)?, at(inside)?, ro));
        }
        if self.packages.is_dir() {
            binds.push((cstr(&self.packages)?, at(PACKAGES)?, ro));
        }
        for d in DEVICES {
            let dev = format!("/dev/{d}");
            binds.push((cstr(&dev)?, at(&dev)?, libc::MS_NOSUID | libc::MS_NOEXEC));
        }
        if let Some(code) = &own.code {
            binds.push((cstr(code)?, at(CODE)?, ro));
        }
        binds.push((cstr(&own.scratch)?, at(SCRATCH)?, rw));
        binds.push((cstr(&own.scratch)?, at(HOST_TMP)?, rw));
        Ok(Plan {
            root: cstr(&self.root)?,
            binds,
            proc_dir: at("/proc")?,
            shm_dir: at("/dev/shm")?,
            shm_opts: shm_opts(own.scratch_mb)?,
        })
    }

    /// The path inside the layout of a host package directory.
    pub fn package_path(&self, host: &Path) -> PathBuf {
        match host.strip_prefix(&self.packages) {
            Ok(rest) => Path::new(PACKAGES).join(rest),
            Err(_) => host.to_path_buf(),
        }
    }
}

fn shm_opts(mb: u64) -> io::Result<CString> {
    cstr(format!("size={}m,mode=1777", mb.max(1)))
}

/// Every file and dir of the skeleton read-only to all but root, who owns it.
fn make_read_only(root: &Path) -> io::Result<()> {
    for entry in walk(root)? {
        let meta = fs::symlink_metadata(&entry)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = if meta.is_dir() { 0o755 } else { 0o644 };
        fs::set_permissions(&entry, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

fn walk(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let d = out[i].clone();
        i += 1;
        if fs::symlink_metadata(&d)?.is_dir() {
            for e in fs::read_dir(&d)? {
                out.push(e?.path());
            }
        }
    }
    Ok(out)
}

/// One instance's way into the layout, prepared before the fork.
pub struct Plan {
    root: CString,
    /// (source, target, remount flags).
    binds: Vec<(CString, CString, libc::c_ulong)>,
    proc_dir: CString,
    shm_dir: CString,
    shm_opts: CString,
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Plan {
    /// Enters the layout: call between fork and exec, as root on the host,
    /// before dropping privileges. Async-signal-safe: system calls on the
    /// plan's prepared strings only.
    pub fn enter(&self) -> io::Result<()> {
        let null = std::ptr::null::<libc::c_char>();
        // SAFETY: every pointer is a valid C string of `self` or null.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Nothing done here propagates back to the host.
            check(libc::mount(
                null,
                c"/".as_ptr(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                null.cast(),
            ))?;
            check(libc::mount(
                self.root.as_ptr(),
                self.root.as_ptr(),
                null,
                libc::MS_BIND,
                null.cast(),
            ))?;
            // Not recursive: a mount below a source stays out of view
            // (and so cannot stay writable under a read-only bind).
            for (src, dst, flags) in &self.binds {
                check(libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    null,
                    libc::MS_BIND,
                    null.cast(),
                ))?;
                check(libc::mount(
                    null,
                    dst.as_ptr(),
                    null,
                    libc::MS_BIND | libc::MS_REMOUNT | flags,
                    null.cast(),
                ))?;
            }
            check(libc::mount(
                c"proc".as_ptr(),
                self.proc_dir.as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"hidepid=invisible".as_ptr().cast(),
            ))?;
            check(libc::mount(
                c"tmpfs".as_ptr(),
                self.shm_dir.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                self.shm_opts.as_ptr().cast(),
            ))?;
            check(libc::chdir(self.root.as_ptr()))?;
            check(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".old".as_ptr()) as _)?;
            check(libc::umount2(c"/.old".as_ptr(), libc::MNT_DETACH))?;
            check(libc::chdir(c"/".as_ptr()))?;
            check(libc::mount(
                null,
                c"/".as_ptr(),
                null,
                libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV,
                null.cast(),
            ))?;
            check(libc::chdir(c"/tmp".as_ptr()))?;
        }
        Ok(())
    }
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
const MOUNT_ATTR_RDONLY: u64 = 1;
const MOUNT_ATTR_NOSUID: u64 = 2;
const MOUNT_ATTR_NODEV: u64 = 4;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Gives a child forked from a zygote its own `/code`, `/tmp`,
/// `/host/tmp` and `/dev/shm`: clones them on the host as detached mounts,
/// then, in a helper process, enters the child's mount namespace and moves
/// them there. Call while the child waits (before its "go"). Blocking
/// (about a millisecond): call from `spawn_blocking`.
pub fn attach(pid: i32, own: &Own) -> io::Result<()> {
    let code = own.code.as_ref().map(cstr).transpose()?;
    let scratch = cstr(&own.scratch)?;
    let ns = cstr(format!("/proc/{pid}/ns/mnt"))?;
    let shm = shm_opts(own.scratch_mb)?;
    let mut pipe = [0; 2];
    check(unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: the helper runs only system calls on the strings above and
    // exits with `_exit`; the worker reaps it below.
    let helper = unsafe { libc::fork() };
    if helper < 0 {
        let e = io::Error::last_os_error();
        unsafe {
            libc::close(pipe[0]);
            libc::close(pipe[1]);
        }
        return Err(e);
    }
    if helper == 0 {
        let step = unsafe { attach_in_helper(code.as_ref(), &scratch, &ns, &shm) };
        let report = match step {
            Ok(()) => [0u8; 5],
            Err((step, errno)) => {
                let e = errno.to_ne_bytes();
                [step, e[0], e[1], e[2], e[3]]
            }
        };
        unsafe {
            libc::write(pipe[1], report.as_ptr().cast(), report.len());
            libc::_exit(0);
        }
    }
    unsafe { libc::close(pipe[1]) };
    let mut report = [0u8; 5];
    let n = unsafe { libc::read(pipe[0], report.as_mut_ptr().cast(), report.len()) };
    unsafe { libc::close(pipe[0]) };
    let mut status = 0;
    unsafe { libc::waitpid(helper, &mut status, 0) };
    if n != 5 {
        return Err(io::Error::other("mount helper died"));
    }
    if report[0] != 0 {
        let errno = i32::from_ne_bytes([report[1], report[2], report[3], report[4]]);
        let what = [
            "",
            "clone code",
            "clone scratch",
            "enter namespace",
            "move mount",
            "mount /dev/shm",
        ];
        return Err(io::Error::other(format!(
            "{}: {}",
            what.get(report[0] as usize).unwrap_or(&"mount"),
            io::Error::from_raw_os_error(errno)
        )));
    }
    Ok(())
}

/// The helper's part of [`attach`]: the failed step and errno.
unsafe fn attach_in_helper(
    code: Option<&CString>,
    scratch: &CString,
    ns: &CString,
    shm: &CString,
) -> Result<(), (u8, i32)> {
    let errno = || io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let clone = |path: &CString, attrs: u64| -> Result<libc::c_int, i32> {
        let fd = libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        ) as libc::c_int;
        if fd < 0 {
            return Err(errno());
        }
        // Private: a clone of a shared mount would stay in its peer group,
        // so a mount made on it inside the child would appear on the host.
        let attr = MountAttr {
            attr_set: attrs,
            attr_clr: 0,
            propagation: libc::MS_PRIVATE,
            userns_fd: 0,
        };
        let r = libc::syscall(
            libc::SYS_mount_setattr,
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        );
        if r < 0 {
            return Err(errno());
        }
        Ok(fd)
    };
    let mut moves: [(libc::c_int, &std::ffi::CStr); 3] =
        [(-1, c"/code"), (-1, c"/tmp"), (-1, c"/host/tmp")];
    if let Some(code) = code {
        moves[0].0 = clone(
            code,
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        )
        .map_err(|e| (1, e))?;
    }
    for m in &mut moves[1..] {
        m.0 = clone(scratch, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV).map_err(|e| (2, e))?;
    }
    let nsfd = libc::open(ns.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
    if nsfd < 0 || libc::setns(nsfd, libc::CLONE_NEWNS) < 0 {
        return Err((3, errno()));
    }
    for (fd, target) in moves {
        if fd < 0 {
            continue;
        }
        let r = libc::syscall(
            libc::SYS_move_mount,
            fd,
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        );
        if r < 0 {
            return Err((4, errno()));
        }
    }
    let r = libc::mount(
        c"tmpfs".as_ptr(),
        c"/dev/shm".as_ptr(),
        c"tmpfs".as_ptr(),
        libc::MS_NOSUID | libc::MS_NODEV,
        shm.as_ptr().cast(),
    );
    if r < 0 {
        return Err((5, errno()));
    }
    Ok(())
}
