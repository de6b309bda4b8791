//! A code store in a local directory: `<name>/` (a function directory with
//! `f.py`) or `<name>.tar.gz`. A tarball wins over a directory of the same
//! name, so an upload (always written as a tarball, by atomic rename)
//! replaces what callers see. Names are validated by the caller.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::archive;

/// The package of `name` as `.tar.gz` bytes, or `None` if the store has no
/// such function.
pub fn fetch(root: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let tarball = root.join(format!("{name}.tar.gz"));
    match fs::read(&tarball) {
        Ok(b) => return Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("{}: {e}", tarball.display()),
            ))
        }
    }
    let dir = root.join(name);
    if dir.join("f.py").is_file() {
        return archive::pack_dir(&dir)
            .map(Some)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())));
    }
    Ok(None)
}

/// The valid function names in the store, sorted.
pub fn list(root: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for e in fs::read_dir(root)?.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let name = match file.strip_suffix(".tar.gz") {
            Some(n) => n.to_string(),
            None if e.path().join("f.py").is_file() => file,
            None => continue,
        };
        if config::validate_function_name(&name).is_ok() {
            names.push(name);
        }
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// Writes `bytes` as `<name>.tar.gz`: to a temporary file first, synced,
/// then renamed into place, so readers see the old package or the new one,
/// never a part. The caller has checked the package.
pub fn install(root: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = root.join(format!(".{name}.tar.gz.upload-{}-{n}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, root.join(format!("{name}.tar.gz")))
    };
    write().inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Removes `name` in both forms; `Ok(false)` if it was not there.
pub fn delete(root: &Path, name: &str) -> io::Result<bool> {
    let tarball = root.join(format!("{name}.tar.gz"));
    let dir = root.join(name);
    let had_tar = tarball.exists();
    let had_dir = dir.join("f.py").is_file();
    if had_tar {
        fs::remove_file(&tarball)?;
    }
    if had_dir {
        fs::remove_dir_all(&dir)?;
    }
    Ok(had_tar || had_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tarball_wins_and_delete_removes_both() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("f")).unwrap();
        fs::write(root.join("f/f.py"), "def f(e): return 1\n").unwrap();
        fs::create_dir_all(root.join("not-a-function")).unwrap();
        let from_dir = fetch(root, "f").unwrap().unwrap();
        assert_eq!(list(root).unwrap(), vec!["f"]);
        let other = archive::pack_dir(&root.join("f")).unwrap();
        assert_eq!(from_dir, other, "packing is deterministic");
        install(root, "f", b"\x1f\x8bnew").unwrap();
        assert_eq!(fetch(root, "f").unwrap().unwrap(), b"\x1f\x8bnew");
        assert!(delete(root, "f").unwrap());
        assert!(fetch(root, "f").unwrap().is_none());
        assert!(!delete(root, "f").unwrap());
    }
}
