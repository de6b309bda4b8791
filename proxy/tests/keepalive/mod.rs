//! A tiny blocking HTTP/1.1 keep-alive client for the reload and
//! experiment tests: it counts the TCP connections it opens, so a test can
//! tell that keep-alive survived (one connection per client).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

pub struct Client {
    port: u16,
    conn: Option<BufReader<TcpStream>>,
    /// TCP connections opened so far.
    pub connects: usize,
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Client {
    pub fn new(port: u16) -> Client {
        Client {
            port,
            conn: None,
            connects: 0,
        }
    }

    /// One request on the kept connection (opened if needed). On an error
    /// the connection is dropped; the next call opens a new one.
    pub fn call(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Reply> {
        let r = self.try_call(method, path, headers, body);
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    fn try_call(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Reply> {
        if self.conn.is_none() {
            let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            s.set_nodelay(true)?;
            self.connects += 1;
            self.conn = Some(BufReader::new(s));
        }
        let r = self.conn.as_mut().unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\n",
            self.port,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        r.get_mut().write_all(&bytes)?;
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(&line))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                line.clear();
                r.read_line(&mut line)?;
                let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| bad(&line))?;
                if n == 0 {
                    line.clear();
                    r.read_line(&mut line)?;
                    break;
                }
                let mut chunk = vec![0; n + 2];
                r.read_exact(&mut chunk)?;
                body.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body.resize(n, 0);
            r.read_exact(&mut body)?;
        }
        if get("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
            self.conn = None;
        }
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
}

fn bad(line: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("bad response line {line:?}"),
    )
}

/// Replaces a file atomically (write + rename), so that a reload never
/// reads half a file.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `ol_proxy_reloads_total{result=...}` from the admin's /metrics.
pub fn reloads(admin: u16, result: &str) -> u64 {
    let m = crate::common::http(admin, "GET", "/metrics", &[], b"").text();
    let key = format!("ol_proxy_reloads_total{{result=\"{result}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits (up to 10 s) until the reload counter `result` exceeds `before`.
pub fn wait_reload(admin: u16, result: &str, before: u64) -> u64 {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = reloads(admin, result);
        if n > before {
            return n;
        }
        assert!(
            std::time::Instant::now() < end,
            "no {result} reload after 10 s (still {n})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
