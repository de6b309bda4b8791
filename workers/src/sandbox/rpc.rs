//! The worker's side of the runtime wire format (see `ol_runtime.py`):
//! frames of a 4-byte big-endian length and a payload; a call and a reply
//! are each a JSON head frame and a raw body frame.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Largest reply body a runtime may send.
pub const MAX_REPLY_BYTES: usize = 256 * 1024 * 1024;

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

/// A connection to one runtime; one call at a time.
pub struct RuntimeConn {
    stream: BufReader<UnixStream>,
    out: Vec<u8>,
}

impl RuntimeConn {
    pub async fn connect(path: &Path) -> io::Result<Self> {
        Ok(RuntimeConn {
            stream: BufReader::with_capacity(64 * 1024, UnixStream::connect(path).await?),
            out: Vec::with_capacity(4096),
        })
    }

    /// Sends one call and reads its reply. An error means the runtime is
    /// gone or broke the protocol: the instance must not be reused.
    pub async fn call(
        &mut self,
        head: &CallHead<'_>,
        body: &[u8],
    ) -> io::Result<(ReplyHead, Vec<u8>)> {
        self.out.clear();
        self.out.extend_from_slice(&[0; 4]);
        serde_json::to_writer(&mut self.out, head)?;
        let n = (self.out.len() - 4) as u32;
        self.out[..4].copy_from_slice(&n.to_be_bytes());
        self.out
            .extend_from_slice(&(body.len() as u32).to_be_bytes());
        self.out.extend_from_slice(body);
        self.stream.get_mut().write_all(&self.out).await?;
        let head = self.read_frame().await?;
        let head: ReplyHead = serde_json::from_slice(&head)?;
        let body = self.read_frame().await?;
        Ok((head, body))
    }

    async fn read_frame(&mut self) -> io::Result<Vec<u8>> {
        let n = self.stream.read_u32().await? as usize;
        if n > MAX_REPLY_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("runtime sent a {n}-byte frame; the limit is {MAX_REPLY_BYTES}"),
            ));
        }
        let mut buf = vec![0; n];
        self.stream.read_exact(&mut buf).await?;
        Ok(buf)
    }
}
