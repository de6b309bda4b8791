//! The worker's side of its protocol with `ol_runtime.py`, the one
//! implementation both sandbox backends and the invoke layer use (the
//! runtime's docstring is the other side):
//!
//! - start-up: the runtime's first stdout line is `ready`, or
//!   `error <one line>` when the function failed to import ([`first_line`]);
//! - calls: frames of a 4-byte big-endian length and a payload; a call and
//!   a reply are each a JSON head frame and a raw body frame
//!   ([`RuntimeConn::call`]);
//! - a pre-started runtime (the Docker pool) takes its function from an
//!   init frame pair on its first connection ([`RuntimeConn::init`]);
//! - its command line ([`Args`]) and the environment every runtime starts
//!   with ([`base_env`]).

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The runtime, shipped inside the binary: the process backend writes it
/// to the work dir, and its text is part of the Docker image's tag.
pub const RUNTIME_PY: &str = include_str!("../runtime/ol_runtime.py");

/// Largest reply head (status and headers as JSON) a runtime may send.
const MAX_REPLY_HEAD_BYTES: usize = 1 << 20;

/// A reply body over the worker's `max_reply_bytes`, refused from its
/// length before any of it is read (the inner error of the `io::Error`
/// that [`RuntimeConn::call`] returns).
#[derive(Debug, thiserror::Error)]
#[error("a reply of {size} bytes; the limit is {limit} (max_reply_bytes)")]
pub struct ReplyTooLarge {
    pub size: usize,
    pub limit: usize,
}
/// Largest init reply (a load traceback): the runtime is not serving
/// calls yet, so nothing it sends needs more.
const MAX_INIT_REPLY_BYTES: usize = 1 << 20;

/// How the runtime reaches its worker.
pub enum Channel<'a> {
    /// An inherited, connected socket (`--fd N`).
    Fd(i32),
    /// A unix socket path it listens on (`--socket P`, Docker).
    Socket(&'a str),
}

/// The runtime's command-line arguments (after `ol_runtime.py`): the one
/// place both backends spell them, as the runtime's `main` reads them.
pub struct Args<'a> {
    pub channel: Channel<'a>,
    /// The function's code dir and name as the runtime sees them; `None`
    /// for a pre-started runtime (its init frame names them).
    pub code: Option<(&'a str, &'a str)>,
    /// The runtime limit, also enforced by the runtime itself.
    pub limit_ms: Option<u128>,
    /// Package dirs for `sys.path`, joined with `:`.
    pub packages: Option<String>,
    /// Installs `sandbox::seccomp`'s filter itself before any code runs.
    pub block_io_uring: bool,
}

impl Args<'_> {
    pub fn to_vec(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.block_io_uring {
            v.push("--block-io-uring".to_string());
        }
        match self.channel {
            Channel::Fd(fd) => v.extend(["--fd".to_string(), fd.to_string()]),
            Channel::Socket(p) => v.extend(["--socket".to_string(), p.to_string()]),
        }
        if let Some((code, name)) = self.code {
            v.extend(["--code", code, "--name", name].map(String::from));
        }
        if let Some(ms) = self.limit_ms {
            v.extend(["--limit-ms".to_string(), ms.to_string()]);
        }
        if let Some(p) = &self.packages {
            v.extend(["--packages".to_string(), p.clone()]);
        }
        v
    }
}

/// The environment of every runtime, before the function's own
/// (`environment` in `ol.yaml`); `home` is its private scratch dir, also
/// its `TMPDIR`.
pub fn base_env(home: &str) -> [(&'static str, String); 5] {
    [
        ("PATH", "/usr/local/bin:/usr/bin:/bin".to_string()),
        ("HOME", home.to_string()),
        ("TMPDIR", home.to_string()),
        ("PYTHONDONTWRITEBYTECODE", "1".to_string()),
        ("LANG", "C.UTF-8".to_string()),
    ]
}

/// What the runtime's first stdout line said.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstLine {
    /// `ready`: the function is loaded and the socket listens.
    Ready,
    /// `error <reason>`: the function failed to import.
    Error(String),
    /// Anything else (the runtime died or broke the protocol).
    Other,
}

/// The most the worker reads of a runtime's (or a zygote child's) status
/// line before giving up on it: the function's code runs before it and
/// may write to the same fd without a newline.
pub const MAX_STATUS_LINE: u64 = 4096;

/// Reads a first line as [`FirstLine`] (`line` with its newline).
pub fn first_line(line: &str) -> FirstLine {
    if line == "ready\n" {
        FirstLine::Ready
    } else if let Some(reason) = line.strip_prefix("error ") {
        FirstLine::Error(reason.trim().to_string())
    } else {
        FirstLine::Other
    }
}

#[derive(Debug, Serialize)]
pub struct CallHead<'a> {
    pub method: &'a str,
    /// The path after `/run/<name>`.
    pub path: &'a str,
    pub query: &'a str,
    pub headers: Vec<(&'a str, &'a str)>,
}

#[derive(Debug, Deserialize)]
pub struct ReplyHead {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

/// How a pre-started runtime took its function.
#[derive(Debug)]
pub enum Loaded {
    Ready,
    /// It failed to import: the reason and the traceback.
    Failed {
        reason: String,
        log: String,
    },
}

/// A connection to one runtime; one call at a time.
pub struct RuntimeConn {
    stream: BufReader<UnixStream>,
    out: Vec<u8>,
}

impl RuntimeConn {
    pub fn new(stream: UnixStream) -> Self {
        RuntimeConn {
            stream: BufReader::with_capacity(64 * 1024, stream),
            out: Vec::with_capacity(4096),
        }
    }

    /// Sends one call and reads its reply, whose body may be at most
    /// `max_body` bytes ([`ReplyTooLarge`] beyond). An error means the
    /// runtime is gone, broke the protocol or sent too much: the instance
    /// must not be reused.
    pub async fn call(
        &mut self,
        head: &CallHead<'_>,
        body: &[u8],
        max_body: usize,
    ) -> io::Result<(ReplyHead, Vec<u8>)> {
        self.send(head, body).await?;
        let head = self.read_frame(MAX_REPLY_HEAD_BYTES).await?;
        let head: ReplyHead = serde_json::from_slice(&head)?;
        let n = self.stream.read_u32().await? as usize;
        if n > max_body {
            let too_large = ReplyTooLarge {
                size: n,
                limit: max_body,
            };
            return Err(io::Error::new(io::ErrorKind::InvalidData, too_large));
        }
        let mut body = vec![0; n];
        self.stream.read_exact(&mut body).await?;
        Ok((head, body))
    }

    /// Gives a pre-started runtime its function (`code` as the runtime
    /// sees the path). An error means the runtime is gone.
    /// `limit`: the runtime limit, which the runtime enforces too.
    pub async fn init(
        &mut self,
        code: &str,
        name: &str,
        env: &HashMap<String, String>,
        limit: std::time::Duration,
    ) -> io::Result<Loaded> {
        let limit_ms = limit.as_millis() as u64;
        let head = serde_json::json!({"init": {"code": code, "name": name, "env": env, "limit_ms": limit_ms}});
        self.send(&head, &[]).await?;
        let reply = self.read_frame(MAX_INIT_REPLY_BYTES).await?;
        let body = self.read_frame(MAX_INIT_REPLY_BYTES).await?;
        let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap_or_default();
        if reply["status"] == 200 {
            return Ok(Loaded::Ready);
        }
        Ok(Loaded::Failed {
            reason: reply["error"]
                .as_str()
                .unwrap_or("unknown error")
                .to_string(),
            log: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// Writes a head frame and a body frame in one write.
    async fn send(&mut self, head: &impl Serialize, body: &[u8]) -> io::Result<()> {
        self.out.clear();
        self.out.extend_from_slice(&[0; 4]);
        serde_json::to_writer(&mut self.out, head)?;
        let n = (self.out.len() - 4) as u32;
        self.out[..4].copy_from_slice(&n.to_be_bytes());
        self.out
            .extend_from_slice(&(body.len() as u32).to_be_bytes());
        self.out.extend_from_slice(body);
        self.stream.get_mut().write_all(&self.out).await
    }

    async fn read_frame(&mut self, limit: usize) -> io::Result<Vec<u8>> {
        let n = self.stream.read_u32().await? as usize;
        if n > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("runtime sent a {n}-byte frame; the limit is {limit}"),
            ));
        }
        let mut buf = vec![0; n];
        self.stream.read_exact(&mut buf).await?;
        Ok(buf)
    }
}

/// Connects to the runtime socket at `socket` without following anything
/// the sandbox can write, and only to a runtime running as `uid`.
///
/// Why: the socket lies in the instance's scratch dir, which the function
/// can write. Connecting by path, the worker (root) followed a symlink the
/// function had put there, to another tenant's runtime or to any host
/// socket. So the socket's directory (made by the worker, in a directory
/// only the worker writes) is opened with `O_NOFOLLOW`, the socket itself
/// as an `O_PATH | O_NOFOLLOW` fd (a symlink opens as the link and is
/// refused), it must be a socket owned by `uid`, the connection is made
/// through `/proc/self/fd/<fd>` (to the inode already checked: nothing can
/// be swapped in between), and the listener on the other end must be `uid`
/// (`SO_PEERCRED`). With a uid per instance (a root worker) a function can
/// then only ever reach its own uid; without (not root) instances share the
/// worker's uid and isolate nothing.
pub async fn connect_own(socket: &Path, uid: u32) -> io::Result<UnixStream> {
    // No host path in the text: it reaches the client.
    let refuse = |why: String| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("the runtime socket is refused: {why}"),
        )
    };
    let (Some(dir), Some(name)) = (socket.parent(), socket.file_name()) else {
        return Err(refuse("not a path to a socket".into()));
    };
    let dir = open_path(
        libc::AT_FDCWD,
        dir.as_os_str().as_bytes(),
        libc::O_DIRECTORY,
    )?;
    let fd = open_path(dir.as_raw_fd(), name.as_bytes(), 0)?;
    // SAFETY: `st` is written by fstat on success and read only then.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(refuse(
            "not a socket (a link or a file put in its place)".into(),
        ));
    }
    if st.st_uid != uid {
        return Err(refuse(format!(
            "owned by uid {}, not the instance's {uid}",
            st.st_uid
        )));
    }
    let stream = UnixStream::connect(format!("/proc/self/fd/{}", fd.as_raw_fd())).await?;
    let peer = stream.peer_cred()?.uid();
    if peer != uid {
        return Err(refuse(format!(
            "answered by uid {peer}, not the instance's {uid}"
        )));
    }
    Ok(stream)
}

/// `openat(dirfd, path, O_PATH | O_NOFOLLOW | O_CLOEXEC | extra)`.
fn open_path(dirfd: libc::c_int, path: &[u8], extra: libc::c_int) -> io::Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC | extra;
    // SAFETY: a valid C string; the fd is owned from here on.
    let fd = unsafe { libc::openat(dirfd, c.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_lines() {
        assert_eq!(first_line("ready\n"), FirstLine::Ready);
        assert_eq!(
            first_line("error ImportError: x \n"),
            FirstLine::Error("ImportError: x".into())
        );
        assert_eq!(first_line(""), FirstLine::Other);
        assert_eq!(first_line("ready"), FirstLine::Other);
    }

    /// The hijack of issue 14: the function swaps its socket for a link to
    /// another socket (another tenant's runtime, any host socket), or for
    /// a file; the worker must reach none of them, and still reach a real
    /// socket of the instance's own uid.
    #[tokio::test]
    async fn connects_only_to_the_instances_own_socket() {
        let me = unsafe { libc::geteuid() };
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim.sock");
        let _victim = std::os::unix::net::UnixListener::bind(&victim).unwrap();
        let inst = t.path().join("inst");
        std::fs::create_dir(&inst).unwrap();
        let sock = inst.join("rt.sock");

        std::os::unix::fs::symlink(&victim, &sock).unwrap();
        let e = connect_own(&sock, me).await.unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert!(!e.to_string().contains(t.path().to_str().unwrap()), "{e}");
        std::fs::remove_file(&sock).unwrap();

        std::fs::write(&sock, b"x").unwrap();
        assert!(connect_own(&sock, me).await.is_err());
        std::fs::remove_file(&sock).unwrap();

        // A link as the directory itself is refused too.
        let linked = t.path().join("linked");
        std::os::unix::fs::symlink(&inst, &linked).unwrap();
        let _own = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert!(connect_own(&linked.join("rt.sock"), me).await.is_err());

        connect_own(&sock, me)
            .await
            .expect("the instance's own socket");
        let e = connect_own(&sock, me.wrapping_add(1)).await.unwrap_err();
        assert!(e.to_string().contains("owned by uid"), "{e}");
    }
}
