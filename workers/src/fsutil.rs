//! Small filesystem helpers shared by the registry and the sandboxes, and
//! the instances' scratch mounts.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Changes the owner of `path` (not following symlinks).
pub fn chown(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

/// Mounts a tmpfs of `size_mb` at `dir`, owned by `uid` and 0700: an
/// instance's scratch space (root only). Its size bounds what the instance
/// can write there (ENOSPC past it), its pages are charged to the writer's
/// memory cgroup, and nothing of it reaches the host's disk.
pub fn mount_scratch(dir: &Path, size_mb: u64, uid: u32) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let target = CString::new(dir.as_os_str().as_bytes())?;
    let opts = CString::new(format!("size={size_mb}m,mode=0700,uid={uid},gid={uid}"))?;
    // SAFETY: valid C strings; mount(2) reads them only.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            opts.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Unmounts whatever is mounted at `dir` (lazily: a process still inside
/// keeps its view until it goes). Nothing mounted there is fine.
pub fn unmount(dir: &Path) {
    use std::os::unix::ffi::OsStrExt;
    if let Ok(target) = std::ffi::CString::new(dir.as_os_str().as_bytes()) {
        // SAFETY: a valid C string.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Unmounts every mount below `root` (the scratch mounts a killed worker
/// left in its `instances/` dir), deepest first.
pub fn unmount_below(root: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let mut below: Vec<std::path::PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| std::path::PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(&root) && *p != root)
        .collect();
    below.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in below {
        unmount(&p);
    }
}

/// Empties a backend's `instances/` dir of what a previous run of this
/// worker left (it died without removing its instances): their scratch
/// mounts first, then their dirs.
pub fn clear_instances(dir: &Path) {
    unmount_below(dir);
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A mount point as `/proc/self/mountinfo` writes it, with its `\ooo`
/// octal escapes (space, tab, newline, backslash) undone.
fn unescape_mount_path(p: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|o| b[i] == b'\\' && o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct.and_then(|o| u8::from_str_radix(std::str::from_utf8(o).ok()?, 8).ok()) {
            Some(c) => {
                out.push(c);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    std::ffi::OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(super::unescape_mount_path("/a\\040b/c"), "/a b/c");
        assert_eq!(super::unescape_mount_path("/plain"), "/plain");
        assert_eq!(super::unescape_mount_path("/x\\9"), "/x\\9");
    }
}
