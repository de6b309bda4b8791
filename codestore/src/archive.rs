//! Function packages as `.tar.gz`: packing a directory, and unpacking (or
//! inspecting in memory) an untrusted archive without letting anything
//! escape the function directory.
//!
//! Every package, from any source and on either side (worker or proxy),
//! goes through `check` first, so there is one set of checks for all of
//! them, and nothing is written until every entry has passed them:
//!
//! 1. `check` streams the archive once and builds the package's tree in
//!    memory (bounded: entries, path length and depth, unpacked bytes). It
//!    refuses `..` above the top and absolute paths, hard links, devices,
//!    fifos and sparse files, an entry that appears twice, an entry whose
//!    path runs through a symlink or a file, and a symlink that does not
//!    resolve, following the package's own links, to a file or directory
//!    inside the package.
//! 2. `unpack` then streams it a second time into a fresh directory the
//!    caller made in a private temp dir, creating every component with
//!    `openat(O_NOFOLLOW)` beneath that directory and every file with
//!    `O_EXCL`, so even a tree changed under it is never followed out. Where
//!    the process is root, the writing thread's file-system uid is `nobody`
//!    while it writes (it cannot write anything root owns), and the tree is
//!    given back to root afterwards.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// At most this many entries in a package.
pub const MAX_ENTRIES: usize = 10_000;
/// At most this many bytes in an entry's path.
pub const MAX_PATH_BYTES: usize = 1024;
/// At most this many components in an entry's path.
pub const MAX_PATH_DEPTH: usize = 32;
/// Links followed while resolving one symlink (the kernel's own bound).
const MAX_LINK_HOPS: u32 = 40;
/// `nobody`/`nogroup`: who writes an unpacked tree when the process is root.
const UNPACK_UID: u32 = 65534;
const UNPACK_GID: u32 = 65534;

/// Why an archive was refused. Displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive is not gzip-compressed tar: {0}")]
    NotTarGz(String),
    #[error("archive entry {0:?} escapes the function directory")]
    Escape(String),
    #[error("archive entry {0:?} is a symlink that does not resolve to a file or directory inside the package")]
    SymlinkEscape(String),
    #[error(
        "archive entry {0:?} runs through {1:?}, which is a symlink or a file, not a directory"
    )]
    ThroughLink(String, String),
    #[error("archive entry {0:?} clashes with an earlier entry of the same path")]
    Duplicate(String),
    #[error("archive entry {0:?} is a {1}, which function packages may not hold")]
    BadType(String, &'static str),
    #[error("archive unpacks to more than {0} bytes")]
    TooLarge(u64),
    #[error("archive {0}")]
    Bound(String),
    #[error("archive has no f.py at its top level")]
    NoEntryPoint,
    #[error("cannot unpack archive: {0}")]
    Io(#[from] io::Error),
}

impl From<Errno> for ArchiveError {
    fn from(e: Errno) -> Self {
        ArchiveError::Io(e.into())
    }
}

/// Packs the contents of `dir` (not `dir` itself) into a `.tar.gz`.
pub fn pack_dir(dir: &Path) -> io::Result<Vec<u8>> {
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

fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
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

/// What a path of the package is, once every entry has been seen.
#[derive(Debug, PartialEq)]
enum Node {
    Dir,
    File,
    Link(PathBuf),
}

type Tree = BTreeMap<PathBuf, Node>;

/// One entry as both passes see it: its clean relative path and its kind.
struct Item {
    rel: PathBuf,
    shown: String,
    node: Node,
}

type Entries<'a> = tar::Entries<'a, GzDecoder<&'a [u8]>>;

fn open(bytes: &[u8]) -> Result<tar::Archive<GzDecoder<&[u8]>>, ArchiveError> {
    if bytes.len() < 2 || bytes[0] != 0x1f || bytes[1] != 0x8b {
        return Err(ArchiveError::NotTarGz("no gzip header".into()));
    }
    Ok(tar::Archive::new(GzDecoder::new(bytes)))
}

fn entries<'a>(
    archive: &'a mut tar::Archive<GzDecoder<&'a [u8]>>,
) -> Result<Entries<'a>, ArchiveError> {
    archive
        .entries()
        .map_err(|e| ArchiveError::NotTarGz(e.to_string()))
}

/// Reads one entry's header: its clean path and kind, or `None` for the
/// top itself and for metadata entries that carry no file.
fn item(entry: &tar::Entry<'_, GzDecoder<&[u8]>>) -> Result<Option<Item>, ArchiveError> {
    let raw = entry
        .path()
        .map_err(|e| ArchiveError::NotTarGz(e.to_string()))?
        .into_owned();
    let shown: String = raw.display().to_string().chars().take(200).collect();
    if raw.as_os_str().len() > MAX_PATH_BYTES {
        return Err(ArchiveError::Bound(format!(
            "entry {shown:?}... has a path longer than {MAX_PATH_BYTES} bytes"
        )));
    }
    let rel = clean_relative(&raw).ok_or_else(|| ArchiveError::Escape(shown.clone()))?;
    if rel.as_os_str().is_empty() {
        return Ok(None); // "./"
    }
    if rel.components().count() > MAX_PATH_DEPTH {
        return Err(ArchiveError::Bound(format!(
            "entry {shown:?} is more than {MAX_PATH_DEPTH} directories deep"
        )));
    }
    let node = match entry.header().entry_type() {
        tar::EntryType::Directory => Node::Dir,
        tar::EntryType::Regular | tar::EntryType::Continuous => Node::File,
        tar::EntryType::Symlink => {
            let link = entry
                .link_name()
                .map_err(|e| ArchiveError::NotTarGz(e.to_string()))?
                .ok_or_else(|| ArchiveError::NotTarGz(format!("{shown}: empty link")))?
                .into_owned();
            if link.is_absolute() || link.as_os_str().len() > MAX_PATH_BYTES {
                return Err(ArchiveError::SymlinkEscape(shown));
            }
            Node::Link(link)
        }
        tar::EntryType::Link => return Err(ArchiveError::BadType(shown, "hard link")),
        tar::EntryType::Char | tar::EntryType::Block => {
            return Err(ArchiveError::BadType(shown, "device"))
        }
        tar::EntryType::Fifo => return Err(ArchiveError::BadType(shown, "fifo")),
        tar::EntryType::GNUSparse => return Err(ArchiveError::BadType(shown, "sparse file")),
        // PAX/GNU metadata entries carry no file of their own.
        _ => return Ok(None),
    };
    Ok(Some(Item { rel, shown, node }))
}

/// The first pass: checks every entry of an untrusted `.tar.gz` without
/// writing anything, hands each regular file to `visit` (which may read
/// it), and returns the package's tree. See the module's doc for the rules.
fn check(
    bytes: &[u8],
    max_unpacked: u64,
    mut visit: impl FnMut(&Path, &mut dyn Read) -> Result<(), ArchiveError>,
) -> Result<Tree, ArchiveError> {
    let mut archive = open(bytes)?;
    let mut tree = Tree::new();
    let mut total: u64 = 0;
    let mut count = 0usize;
    for entry in entries(&mut archive)? {
        let mut entry = entry.map_err(|e| ArchiveError::NotTarGz(e.to_string()))?;
        let Some(Item { rel, shown, node }) = item(&entry)? else {
            continue;
        };
        count += 1;
        if count > MAX_ENTRIES {
            return Err(ArchiveError::Bound(format!(
                "has more than {MAX_ENTRIES} entries"
            )));
        }
        // Every directory above the entry must be a directory of the
        // package, never a link or a file: nothing is reached through a link.
        for above in rel.ancestors().skip(1) {
            if above.as_os_str().is_empty() {
                break;
            }
            match tree.get(above) {
                Some(Node::Dir) => {}
                Some(_) => {
                    return Err(ArchiveError::ThroughLink(
                        shown,
                        above.display().to_string(),
                    ))
                }
                None => {
                    tree.insert(above.to_path_buf(), Node::Dir);
                }
            }
        }
        // The files the upload checks read must be what the worker reads.
        if matches!(node, Node::Link(_))
            && rel
                .to_str()
                .is_some_and(|n| crate::METADATA_FILES.contains(&n) || n == "f.py")
        {
            return Err(ArchiveError::BadType(
                shown,
                "symlink in place of a metadata file",
            ));
        }
        let is_file = node == Node::File;
        match tree.get(&rel) {
            None => {
                tree.insert(rel.clone(), node);
            }
            Some(Node::Dir) if node == Node::Dir => {}
            Some(_) => return Err(ArchiveError::Duplicate(shown)),
        }
        if is_file {
            // entry.size() is the size the reader honours (PAX included).
            total = total.saturating_add(entry.size());
            if total > max_unpacked {
                return Err(ArchiveError::TooLarge(max_unpacked));
            }
            visit(&rel, &mut entry)?;
        }
    }
    for (path, node) in &tree {
        if let Node::Link(target) = node {
            let base = path.parent().unwrap_or(Path::new(""));
            let mut hops = 0;
            if resolve(&tree, base, target, &mut hops).is_none() {
                return Err(ArchiveError::SymlinkEscape(path.display().to_string()));
            }
        }
    }
    if tree.get(Path::new("f.py")) != Some(&Node::File) {
        return Err(ArchiveError::NoEntryPoint);
    }
    Ok(tree)
}

/// Where `target`, read from the directory `base` of the package, leads
/// once the package's own links are followed: a path of the tree, or
/// `None` if it leaves the package, leads nowhere or loops.
fn resolve(tree: &Tree, base: &Path, target: &Path, hops: &mut u32) -> Option<PathBuf> {
    let mut at = base.to_path_buf();
    let mut parts = target.components().peekable();
    while let Some(c) = parts.next() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !at.pop() {
                    return None;
                }
            }
            Component::Normal(name) => {
                let next = at.join(name);
                match tree.get(&next)? {
                    Node::Dir => at = next,
                    Node::File if parts.peek().is_none() => at = next,
                    Node::File => return None,
                    Node::Link(to) => {
                        *hops += 1;
                        if *hops > MAX_LINK_HOPS {
                            return None;
                        }
                        at = resolve(tree, &at, to, hops)?;
                    }
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(at)
}

/// Unpacks `bytes` into `dest`, which must not exist yet and should be in
/// a private temporary directory: the caller renames it into place on
/// success and removes it on error. Every entry is checked before the first
/// byte is written (see the module's doc).
pub fn unpack(bytes: &[u8], dest: &Path, max_unpacked: u64) -> Result<(), ArchiveError> {
    check(bytes, max_unpacked, |_, _| Ok(()))?;
    fs::create_dir(dest)?;
    let root = nix::fcntl::open(
        dest,
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let as_root = nix::unistd::geteuid().is_root();
    let writer = as_root.then_some((UNPACK_UID, UNPACK_GID));
    if as_root {
        nix::unistd::fchown(
            &root,
            Some(nix::unistd::Uid::from_raw(UNPACK_UID)),
            Some(nix::unistd::Gid::from_raw(UNPACK_GID)),
        )?;
    }
    write_tree(bytes, &root, max_unpacked, writer)?;
    if as_root {
        give_back(dest)?;
    }
    Ok(())
}

/// The second pass: writes every entry beneath `root`. With `writer`, the
/// writing happens on a thread of its own whose file-system uid and gid
/// are `writer`'s, so it cannot write anything root owns, whatever the
/// archive says; the thread ends with the pass, so the ids go with it.
fn write_tree(
    bytes: &[u8],
    root: &OwnedFd,
    max_unpacked: u64,
    writer: Option<(u32, u32)>,
) -> Result<(), ArchiveError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some((uid, gid)) = writer {
                nix::unistd::setfsgid(nix::unistd::Gid::from_raw(gid));
                nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid));
                // setfs[ug]id report the old id, not an error: check it took.
                if nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid)).as_raw() != uid {
                    return Err(ArchiveError::Io(io::Error::other(
                        "cannot drop to an unprivileged uid to unpack",
                    )));
                }
            }
            write_entries(bytes, root, max_unpacked)
        })
        .join()
        .unwrap_or_else(|_| Err(ArchiveError::Io(io::Error::other("unpack thread panicked"))))
    })
}

fn write_entries(bytes: &[u8], root: &OwnedFd, max_unpacked: u64) -> Result<(), ArchiveError> {
    let mut archive = open(bytes)?;
    let mut budget = max_unpacked;
    for entry in entries(&mut archive)? {
        let mut entry = entry.map_err(|e| ArchiveError::NotTarGz(e.to_string()))?;
        let Some(Item { rel, node, .. }) = item(&entry)? else {
            continue;
        };
        let (parent, name) = match rel.parent() {
            Some(p) => (p, rel.file_name().expect("a clean path ends in a name")),
            None => (Path::new(""), rel.as_os_str()),
        };
        let dir = open_dirs(root, parent)?;
        match node {
            Node::Dir => {
                drop(open_dirs(&dir, Path::new(name))?);
            }
            Node::File => {
                let exec = entry.header().mode().unwrap_or(0) & 0o111 != 0;
                let mode = if exec { 0o755 } else { 0o644 };
                let fd = nix::fcntl::openat(
                    &dir,
                    name,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(mode),
                )?;
                let mut file = fs::File::from(fd);
                // Streamed, never held whole; the budget is the first pass's bound.
                let n = io::copy(&mut (&mut entry).take(budget + 1), &mut file)
                    .map_err(|e| ArchiveError::NotTarGz(e.to_string()))?;
                if n > budget {
                    return Err(ArchiveError::TooLarge(max_unpacked));
                }
                budget -= n;
            }
            Node::Link(target) => nix::unistd::symlinkat(&target, &dir, name)?,
        }
    }
    Ok(())
}

/// Opens (creating as needed) each directory of `rel` beneath `root`, one
/// component at a time and never through a link.
fn open_dirs(root: &OwnedFd, rel: &Path) -> Result<OwnedFd, ArchiveError> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    let mut at = nix::fcntl::openat(root, ".", flags, Mode::empty())?;
    for c in rel.components() {
        let Component::Normal(name) = c else {
            return Err(ArchiveError::Escape(rel.display().to_string()));
        };
        match nix::sys::stat::mkdirat(at.as_fd(), name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
        at = nix::fcntl::openat(&at, name, flags, Mode::empty())?;
    }
    Ok(at)
}

/// Gives an unpacked tree back to root (it was written as `nobody`),
/// changing links themselves, never what they point at.
fn give_back(dir: &Path) -> io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(0), Some(0))?;
    for e in fs::read_dir(dir)? {
        let e = e?;
        let path = e.path();
        if e.file_type()?.is_dir() {
            give_back(&path)?;
        } else {
            std::os::unix::fs::lchown(&path, Some(0), Some(0))?;
        }
    }
    Ok(())
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
    check(bytes, max_unpacked, |rel, data| {
        if let Some(name) = rel.to_str() {
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
        if path.len() < 100 {
            // set_path refuses "..": write the raw name to test hostile archives.
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
        } else {
            h.set_path(path).unwrap();
        }
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

    /// The chain that wrote outside on the old code: `a -> .`, then a link
    /// whose path runs through `a` many times and whose target is lexically
    /// inside but really outside, then a file beneath that link.
    fn link_chain(out_dir: &str) -> Vec<u8> {
        let hops = 8;
        let through = "a/".repeat(hops);
        let up = "../".repeat(hops);
        tar_gz(|b| {
            file(b, "f.py", b"def f(e): return 1\n");
            link(b, "a", ".");
            dir(b, "b");
            link(b, &format!("{through}b/l"), &format!("{up}{out_dir}"));
            file(b, "b/l/owned.txt", b"written outside");
        })
    }

    fn dir(b: &mut tar::Builder<Vec<u8>>, path: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o755);
        h.set_entry_type(tar::EntryType::Directory);
        h.set_path(path).unwrap();
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
    }

    #[test]
    fn refuses_paths_through_links_and_links_that_resolve_outside() {
        let t = tempfile::tempdir().unwrap();
        let e = unpack(&link_chain("../../../victim"), &t.path().join("o"), 1 << 20).unwrap_err();
        assert!(e.to_string().contains("runs through \"a\""), "{e}");
        assert!(
            !t.path().join("o").exists(),
            "nothing is written before the checks pass"
        );
        let cases: Vec<(Vec<u8>, &str)> = vec![
            // A link through another link: lexically inside, really outside.
            (
                tar_gz(|b| {
                    file(b, "f.py", b"x");
                    dir(b, "d");
                    link(b, "d/a", "..");
                    link(b, "x", "d/a/../..");
                }),
                "does not resolve",
            ),
            // The same with the links in the other order.
            (
                tar_gz(|b| {
                    file(b, "f.py", b"x");
                    link(b, "x", "d/a/../..");
                    dir(b, "d");
                    link(b, "d/a", "..");
                }),
                "does not resolve",
            ),
            (
                tar_gz(|b| {
                    file(b, "f.py", b"x");
                    link(b, "loop", "loop");
                }),
                "does not resolve",
            ),
            (
                tar_gz(|b| {
                    file(b, "f.py", b"x");
                    link(b, "l", "nowhere");
                }),
                "does not resolve",
            ),
            (
                tar_gz(|b| {
                    file(b, "f.py", b"x");
                    file(b, "g", b"x");
                    file(b, "g/h", b"x");
                }),
                "runs through \"g\"",
            ),
            (
                tar_gz(|b| {
                    file(b, "f.py", b"x");
                    file(b, "f.py", b"y");
                }),
                "clashes",
            ),
            (
                tar_gz(|b| {
                    file(b, "f.py", b"x");
                    file(b, "real.yaml", b"limits: {memory_mb: 999999}\n");
                    link(b, "ol.yaml", "real.yaml");
                }),
                "metadata file",
            ),
            (
                tar_gz(|b| {
                    file(b, "f.py", b"x");
                    file(b, "d/x", b"y");
                    link(b, "d", ".");
                }),
                "clashes",
            ),
            (
                tar_gz(|b| {
                    file(b, "f.py", b"x");
                    file(b, &"d/".repeat(40), b"y");
                }),
                "directories deep",
            ),
        ];
        for (i, (bytes, want)) in cases.into_iter().enumerate() {
            let e = unpack(&bytes, &t.path().join(format!("c{i}")), 1 << 20).unwrap_err();
            assert!(e.to_string().contains(want), "case {i}: {e}");
            let e = inspect(&bytes, 1 << 20, &[]).unwrap_err();
            assert!(e.to_string().contains(want), "case {i} (inspect): {e}");
        }
        // Links that stay inside, through directories and other links, are fine.
        let ok = tar_gz(|b| {
            file(b, "f.py", b"x");
            file(b, "lib/x.py", b"X = 1\n");
            link(b, "lib2", "lib");
            link(b, "y.py", "lib2/x.py");
            link(b, "top", "lib/..");
        });
        unpack(&ok, &t.path().join("ok"), 1 << 20).unwrap();
        assert_eq!(
            fs::read_to_string(t.path().join("ok/y.py")).unwrap(),
            "X = 1\n"
        );
    }

    #[test]
    fn writes_nothing_root_owns_when_root() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: writes_nothing_root_owns_when_root needs root");
            return;
        }
        // A tree the second pass finds changed under it: a root-owned
        // directory where the package has one. As `nobody` it cannot write there.
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("d");
        fs::create_dir_all(dest.join("lib")).unwrap();
        let pkg = tar_gz(|b| {
            file(b, "f.py", b"x");
            file(b, "lib/x.py", b"X = 1\n");
        });
        let root =
            nix::fcntl::open(&dest, OFlag::O_DIRECTORY | OFlag::O_RDONLY, Mode::empty()).unwrap();
        nix::unistd::fchown(&root, Some(nix::unistd::Uid::from_raw(UNPACK_UID)), None).unwrap();
        let e = write_tree(&pkg, &root, 1 << 20, Some((UNPACK_UID, UNPACK_GID))).unwrap_err();
        assert!(e.to_string().contains("ermission denied"), "{e}");
        assert!(!dest.join("lib/x.py").exists());
        // And a normal unpack as root gives the tree back to root.
        unpack(&pkg, &t.path().join("ok"), 1 << 20).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(t.path().join("ok/lib/x.py")).unwrap().uid(), 0);
        assert_eq!(fs::metadata(t.path().join("ok")).unwrap().uid(), 0);
    }

    #[test]
    fn streams_large_files_instead_of_holding_them() {
        // 64 MiB of zeros in one entry; the unpack must not keep it in memory
        // (checked in the worker's integration test by RSS; here: it arrives whole).
        let big = vec![0u8; 8 << 20];
        let pkg = tar_gz(|b| {
            file(b, "f.py", b"x");
            file(b, "big.bin", &big);
        });
        let t = tempfile::tempdir().unwrap();
        unpack(&pkg, &t.path().join("o"), 16 << 20).unwrap();
        assert_eq!(
            fs::metadata(t.path().join("o/big.bin")).unwrap().len(),
            8 << 20
        );
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
