//! Function packages as `.tar.gz`: packing a directory, and unpacking (or
//! inspecting in memory) an untrusted archive without letting anything
//! escape the function directory.
//!
//! Every package, from any source and on either side (worker or proxy),
//! goes through `walk`, so there is one set of checks for all of them.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;

/// Why an archive was refused. Displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive is not gzip-compressed tar: {0}")]
    NotTarGz(String),
    #[error("archive entry {0:?} escapes the function directory")]
    Escape(String),
    #[error("archive entry {0:?} is a symlink leaving the function directory")]
    SymlinkEscape(String),
    #[error("archive entry {0:?} is a {1}, which function packages may not hold")]
    BadType(String, &'static str),
    #[error("archive unpacks to more than {0} bytes")]
    TooLarge(u64),
    #[error("archive has no f.py at its top level")]
    NoEntryPoint,
    #[error("cannot unpack archive: {0}")]
    Io(#[from] std::io::Error),
}

/// Packs the contents of `dir` (not `dir` itself) into a `.tar.gz`.
pub fn pack_dir(dir: &Path) -> std::io::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Deterministic);
    let mut entries: Vec<PathBuf> = Vec::new();
    collect(dir, dir, &mut entries)?;
    entries.sort();
    for rel in entries {
        tar.append_path_with_name(dir.join(&rel), &rel)?;
    }
    tar.into_inner()?.finish()
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        let name = e.file_name();
        // Python's byte-code caches are not part of a function.
        if name == "__pycache__" {
            continue;
        }
        out.push(p.strip_prefix(root).unwrap().to_path_buf());
        if e.file_type()?.is_dir() {
            collect(root, &p, out)?;
        }
    }
    Ok(())
}

/// One checked entry of a package, as `walk` hands it on.
enum Entry<'a> {
    Dir,
    File(&'a mut dyn Read),
    Symlink(PathBuf),
}

/// Walks an untrusted `.tar.gz`, checking every entry (no absolute paths,
/// no `..` above the top, no links leaving the package, no hard links,
/// devices or fifos, at most `max_unpacked` bytes, an `f.py` at the top)
/// and handing each checked entry to `visit` with its clean relative path.
fn walk(
    bytes: &[u8],
    max_unpacked: u64,
    mut visit: impl FnMut(&Path, Entry<'_>) -> Result<(), ArchiveError>,
) -> Result<(), ArchiveError> {
    if bytes.len() < 2 || bytes[0] != 0x1f || bytes[1] != 0x8b {
        return Err(ArchiveError::NotTarGz("no gzip header".into()));
    }
    let mut archive = tar::Archive::new(GzDecoder::new(bytes));
    let mut total: u64 = 0;
    let mut saw_entry_point = false;
    let entries = archive
        .entries()
        .map_err(|e| ArchiveError::NotTarGz(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ArchiveError::NotTarGz(e.to_string()))?;
        let raw = entry
            .path()
            .map_err(|e| ArchiveError::NotTarGz(e.to_string()))?
            .into_owned();
        let shown = raw.display().to_string();
        let rel = clean_relative(&raw).ok_or_else(|| ArchiveError::Escape(shown.clone()))?;
        if rel.as_os_str().is_empty() {
            continue; // "./"
        }
        match entry.header().entry_type() {
            tar::EntryType::Directory => visit(&rel, Entry::Dir)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                total = total.saturating_add(entry.header().size().unwrap_or(u64::MAX));
                if total > max_unpacked {
                    return Err(ArchiveError::TooLarge(max_unpacked));
                }
                saw_entry_point |= rel == Path::new("f.py");
                visit(&rel, Entry::File(&mut entry))?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(|e| ArchiveError::NotTarGz(e.to_string()))?
                    .ok_or_else(|| ArchiveError::NotTarGz(format!("{shown}: empty link")))?
                    .into_owned();
                // The link is resolved from the entry's own directory.
                let base = rel.parent().unwrap_or(Path::new(""));
                if link.is_absolute() || clean_relative(&base.join(&link)).is_none() {
                    return Err(ArchiveError::SymlinkEscape(shown));
                }
                visit(&rel, Entry::Symlink(link))?;
            }
            tar::EntryType::Link => return Err(ArchiveError::BadType(shown, "hard link")),
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(ArchiveError::BadType(shown, "device"))
            }
            tar::EntryType::Fifo => return Err(ArchiveError::BadType(shown, "fifo")),
            // PAX/GNU metadata entries carry no file of their own.
            _ => continue,
        }
    }
    if !saw_entry_point {
        return Err(ArchiveError::NoEntryPoint);
    }
    Ok(())
}

/// Unpacks `bytes` into `dest` (created), with the checks of `walk`. On
/// error `dest` may be half-written: callers unpack into a temporary
/// directory and rename on success.
pub fn unpack(bytes: &[u8], dest: &Path, max_unpacked: u64) -> Result<(), ArchiveError> {
    fs::create_dir_all(dest)?;
    walk(bytes, max_unpacked, |rel, entry| {
        let target = dest.join(rel);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        match entry {
            Entry::Dir => fs::create_dir_all(&target)?,
            Entry::File(data) => {
                let mut buf = Vec::new();
                data.take(max_unpacked + 1)
                    .read_to_end(&mut buf)
                    .map_err(|e| ArchiveError::NotTarGz(e.to_string()))?;
                fs::write(&target, &buf)?;
            }
            Entry::Symlink(link) => std::os::unix::fs::symlink(&link, &target)?,
        }
        Ok(())
    })
}

/// Checks `bytes` with the rules of `unpack` without writing anything, and
/// returns the text of the top-level files named in `wanted` that it holds
/// (at most 1 MiB each), e.g. `ol.yaml` and `requirements.txt`.
pub fn inspect(
    bytes: &[u8],
    max_unpacked: u64,
    wanted: &[&str],
) -> Result<HashMap<String, String>, ArchiveError> {
    let mut found = HashMap::new();
    walk(bytes, max_unpacked, |rel, entry| {
        if let (Entry::File(data), Some(name)) = (entry, rel.to_str()) {
            if wanted.contains(&name) {
                let mut text = String::new();
                data.take(1 << 20)
                    .read_to_string(&mut text)
                    .map_err(|e| ArchiveError::NotTarGz(format!("{name}: {e}")))?;
                found.insert(name.to_string(), text);
            }
        }
        Ok(())
    })?;
    Ok(found)
}

/// `p` without `.` parts, if it stays inside its root (no `..` above the
/// top, no root or prefix).
fn clean_relative(p: &Path) -> Option<PathBuf> {
    let mut out: Vec<&std::ffi::OsStr> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out.iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_gz(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let raw = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        gz.finish().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses "..": write the raw name to test hostile archives.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, path: &str, to: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_path(path).unwrap();
        h.set_link_name(to).unwrap();
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
    }

    #[test]
    fn round_trips_a_directory() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("lib")).unwrap();
        fs::write(src.join("f.py"), "def f(e): return 1\n").unwrap();
        fs::write(src.join("lib/x.py"), "X = 2\n").unwrap();
        let bytes = pack_dir(&src).unwrap();
        unpack(&bytes, &t.path().join("out"), 1 << 20).unwrap();
        assert_eq!(
            fs::read_to_string(t.path().join("out/lib/x.py")).unwrap(),
            "X = 2\n"
        );
    }

    #[test]
    fn refuses_hostile_archives() {
        let t = tempfile::tempdir().unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not gzip at all".to_vec(), "not gzip"),
            (tar_gz(|b| file(b, "../evil.py", b"x")), "escapes"),
            (tar_gz(|b| file(b, "/etc/evil.py", b"x")), "escapes"),
            (tar_gz(|b| file(b, "a/../../evil.py", b"x")), "escapes"),
            (
                tar_gz(|b| {
                    file(b, "f.py", b"x");
                    link(b, "l", "../../etc/passwd");
                }),
                "symlink",
            ),
            (
                tar_gz(|b| {
                    file(b, "f.py", b"x");
                    link(b, "l", "/etc/passwd");
                }),
                "symlink",
            ),
            (tar_gz(|b| file(b, "g.py", b"x")), "no f.py"),
            (tar_gz(|b| file(b, "f.py", &[0u8; 4096])), "more than"),
        ];
        for (i, (bytes, want)) in cases.into_iter().enumerate() {
            let e = unpack(&bytes, &t.path().join(format!("o{i}")), 1024).unwrap_err();
            assert!(e.to_string().contains(want), "case {i}: {e}");
            assert!(!t.path().join("evil.py").exists());
        }
        // A link that stays inside is fine.
        let ok = tar_gz(|b| {
            file(b, "f.py", b"x");
            link(b, "l", "f.py");
        });
        unpack(&ok, &t.path().join("ok"), 1024).unwrap();
    }

    #[test]
    fn inspect_checks_like_unpack_and_reads_wanted_files() {
        let pkg = tar_gz(|b| {
            file(b, "f.py", b"def f(e): return 1\n");
            file(b, "ol.yaml", b"methods: [GET]\n");
            file(b, "lib/ol.yaml", b"not top level");
        });
        let found = inspect(&pkg, 1024, &["ol.yaml", "requirements.txt"]).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found["ol.yaml"], "methods: [GET]\n");
        let bad = tar_gz(|b| file(b, "../f.py", b"x"));
        assert!(inspect(&bad, 1024, &[])
            .unwrap_err()
            .to_string()
            .contains("escapes"));
    }
}
