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
//! - the environment every runtime starts with ([`base_env`]).

use std::collections::HashMap;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The runtime, shipped inside the binary: the process backend writes it
/// to the work dir, and its text is part of the Docker image's tag.
pub const RUNTIME_PY: &str = include_str!("../runtime/ol_runtime.py");

/// Largest reply body a runtime may send.
pub const MAX_REPLY_BYTES: usize = 256 * 1024 * 1024;
/// Largest init reply (a load traceback): the runtime is not serving
/// calls yet, so nothing it sends needs more.
const MAX_INIT_REPLY_BYTES: usize = 1 << 20;

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
    pub async fn connect(path: &Path) -> io::Result<Self> {
        Ok(Self::new(UnixStream::connect(path).await?))
    }

    pub fn new(stream: UnixStream) -> Self {
        RuntimeConn {
            stream: BufReader::with_capacity(64 * 1024, stream),
            out: Vec::with_capacity(4096),
        }
    }

    /// Sends one call and reads its reply. An error means the runtime is
    /// gone or broke the protocol: the instance must not be reused.
    pub async fn call(
        &mut self,
        head: &CallHead<'_>,
        body: &[u8],
    ) -> io::Result<(ReplyHead, Vec<u8>)> {
        self.send(head, body).await?;
        let head = self.read_frame(MAX_REPLY_BYTES).await?;
        let head: ReplyHead = serde_json::from_slice(&head)?;
        let body = self.read_frame(MAX_REPLY_BYTES).await?;
        Ok((head, body))
    }

    /// Gives a pre-started runtime its function (`code` as the runtime
    /// sees the path). An error means the runtime is gone.
    pub async fn init(
        &mut self,
        code: &str,
        name: &str,
        env: &HashMap<String, String>,
    ) -> io::Result<Loaded> {
        let head = serde_json::json!({"init": {"code": code, "name": name, "env": env}});
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
}
