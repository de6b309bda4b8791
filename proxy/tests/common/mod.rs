//! Test helpers: start the real `ol-proxy` and `ol-worker` binaries on free
//! loopback ports, a tiny blocking HTTP/1.1 client, and fake upstreams for
//! misbehaving-worker cases. Every wait is bounded.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Directory holding the built binaries (`target/<profile>`).
pub fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ol-proxy"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn proxy_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ol-proxy"))
}

pub fn worker_bin() -> PathBuf {
    let p = bin_dir().join("ol-worker");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace --bins` before the tests",
        p.display()
    );
    p
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn registry() -> PathBuf {
    repo_root().join("examples/functions")
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "olp-test-{}-{}-{tag}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A free loopback port below the ephemeral range (so that no outgoing
/// connection can take it between this check and its use), never handed
/// out twice by this test process.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let seed = std::process::id() as u64 * 7919
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
    for i in 0..10_000u64 {
        let port = 20_000 + ((seed + i * 104_729) % 12_000) as u16;
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port in 20000..32000");
}

/// A child process killed (and reaped) on drop.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    /// Removed on drop, after the process is gone.
    pub dir: Option<PathBuf>,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits up to `t` for exit; returns the exit status if it exited.
    pub fn wait_exit(&mut self, t: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + t;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A failing test takes its processes' logs with it: show their end.
        if std::thread::panicking() {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            eprintln!("--- last lines of {} ---\n{tail}", self.log.display());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Starts a real `ol-worker` on `port` and waits until `/status` is ready.
pub fn start_worker(port: u16) -> Proc {
    start_worker_with(port, registry().to_str().unwrap(), &[])
}

/// Starts a real `ol-worker` with this `--registry` (a directory or a
/// URL, e.g. a proxy's `/registry`) and `extra` flags; waits for `/status`.
pub fn start_worker_with(port: u16, registry: &str, extra: &[&str]) -> Proc {
    let dir = temp_dir("worker");
    let log = dir.join("worker.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(worker_bin())
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--registry")
        .arg(registry)
        .args(extra)
        .arg("--sandbox")
        .arg("process")
        .arg("--work-dir")
        .arg(dir.join("work"))
        .stdin(Stdio::null())
        // One file for both: the worker's log lines go to stderr.
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("start ol-worker");
    let p = Proc {
        child,
        log,
        dir: Some(dir),
    };
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = try_http(port, "GET", "/status", &[], b"") {
            if r.status == 200 {
                return p;
            }
        }
        assert!(
            Instant::now() < end,
            "ol-worker on {port} not ready in 15 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Ports for one proxy.
pub struct Ports {
    pub listen: u16,
    pub admin: u16,
}

impl Ports {
    pub fn new() -> Ports {
        Ports {
            listen: free_port(),
            admin: free_port(),
        }
    }
}

/// The start of a config: listen/admin ports, static workers, fast health
/// checks; `extra` is appended (more tables).
pub fn config(ports: &Ports, workers: &[u16], extra: &str) -> String {
    let list: Vec<String> = workers
        .iter()
        .map(|p| format!("\"127.0.0.1:{p}\""))
        .collect();
    format!(
        "listen = \"127.0.0.1:{}\"\nthreads = 2\n\n[admin]\nlisten = \"127.0.0.1:{}\"\n\n[workers]\nstatic = [{}]\n\n{extra}\n",
        ports.listen,
        ports.admin,
        list.join(", ")
    )
}

/// Starts `ol-proxy --config <file>` and waits until its admin answers.
pub fn start_proxy(config_text: &str, ports: &Ports) -> Proc {
    let dir = temp_dir("proxy");
    let cfg = dir.join("proxy.toml");
    std::fs::write(&cfg, config_text).unwrap();
    start_proxy_args(&["--config", cfg.to_str().unwrap()], ports, &dir)
}

pub fn start_proxy_args(args: &[&str], ports: &Ports, dir: &std::path::Path) -> Proc {
    start_proxy_in(&repo_root(), args, ports, dir)
}

/// Starts ol-proxy in `cwd` with `args`, its stderr in `dir/proxy.log`,
/// without waiting for it.
pub fn spawn_proxy_in(cwd: &std::path::Path, args: &[&str], dir: &std::path::Path) -> Proc {
    let log = dir.join("proxy.log");
    let child = Command::new(proxy_bin())
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        // Its own group, as a shell job: a test can signal the group
        // (a terminal's Ctrl-C) without signalling itself.
        .process_group(0)
        .spawn()
        .expect("start ol-proxy");
    Proc {
        child,
        log,
        dir: Some(dir.to_path_buf()),
    }
}

/// As [`start_proxy_args`], from the working directory `cwd`.
pub fn start_proxy_in(
    cwd: &std::path::Path,
    args: &[&str],
    ports: &Ports,
    dir: &std::path::Path,
) -> Proc {
    let mut p = spawn_proxy_in(cwd, args, dir);
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        // The admin service starts before the proxy's own listener, so
        // both are waited for: a test's first call must not race the bind.
        if try_http(ports.admin, "GET", "/admin/status", &[], b"").is_ok()
            && std::net::TcpStream::connect(("127.0.0.1", ports.listen)).is_ok()
        {
            return p;
        }
        if let Ok(Some(s)) = p.child.try_wait() {
            panic!("ol-proxy exited early ({s}): {}", p.log_text());
        }
        assert!(
            Instant::now() < end,
            "ol-proxy admin not up in 15 s: {}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Healthy workers according to `/admin/status`.
pub fn healthy_count(admin: u16, token: &str) -> usize {
    let auth = format!("Bearer {token}");
    let h: Vec<(&str, &str)> = if token.is_empty() {
        vec![]
    } else {
        vec![("authorization", auth.as_str())]
    };
    match try_http(admin, "GET", "/admin/status", &h, b"") {
        Ok(r) => {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            v["workers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|w| w["healthy"] == true)
                .count()
        }
        Err(_) => 0,
    }
}

/// Waits (up to 15 s) until exactly `n` workers are healthy.
pub fn wait_healthy(admin: u16, token: &str, n: usize) {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let got = healthy_count(admin, token);
        if got == n {
            return;
        }
        assert!(
            Instant::now() < end,
            "expected {n} healthy workers, have {got}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// True when the body ended before its declared length.
    pub truncated: bool,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request with `Connection: close`; panics on I/O errors.
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    try_http(port, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path} on {port}: {e}"))
}

pub fn try_http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    let raw = raw(port, &bytes, Duration::from_secs(20))?;
    parse(&raw).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unparseable response: {:?}", String::from_utf8_lossy(&raw)),
        )
    })
}

/// Sends bytes and reads until EOF or `timeout` (requests should say
/// `Connection: close`). The write side stays open: pingora takes a
/// half-close as the client going away.
pub fn raw(port: u16, bytes: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    raw_with(port, bytes, timeout, false)
}

/// Like [`raw`], then half-closes (for junk shorter than a request).
pub fn raw_fin(port: u16, bytes: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    raw_with(port, bytes, timeout, true)
}

fn raw_with(port: u16, bytes: &[u8], timeout: Duration, fin: bool) -> std::io::Result<Vec<u8>> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(bytes)?;
    if fin {
        let _ = s.shutdown(Shutdown::Write);
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if out.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    Ok(out)
}

/// Parses one HTTP/1.x response (content-length, chunked or to EOF).
pub fn parse(raw: &[u8]) -> Option<Resp> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let (body, truncated) = if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut body = Vec::new();
        let mut r = rest;
        let mut done = false;
        while let Some(p) = r.windows(2).position(|w| w == b"\r\n") {
            let size_line = std::str::from_utf8(&r[..p]).ok()?;
            let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
            r = &r[p + 2..];
            if size == 0 {
                done = true;
                break;
            }
            if r.len() < size {
                body.extend_from_slice(r);
                break;
            }
            body.extend_from_slice(&r[..size]);
            r = r.get(size + 2..).unwrap_or(&[]);
        }
        (body, !done)
    } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        (rest[..rest.len().min(n)].to_vec(), rest.len() < n)
    } else {
        (rest.to_vec(), false)
    };
    Some(Resp {
        status,
        headers,
        body,
        truncated,
    })
}

/// A fake upstream: answers `/status` with `ready` and hands every other
/// connection to `handler` (on its own thread). Counts connections.
pub struct Fake {
    pub port: u16,
    pub conns: std::sync::Arc<AtomicUsize>,
}

pub fn fake_upstream(handler: fn(&mut TcpStream, &[u8])) -> Fake {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let conns = std::sync::Arc::new(AtomicUsize::new(0));
    let c2 = conns.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let c3 = c2.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                if buf.starts_with(b"GET /status ") {
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nready\n",
                    );
                    return;
                }
                // The proxy's poll of a worker's /stats: a fake has none.
                if buf.starts_with(b"GET /stats ") {
                    let _ = s.write_all(
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                    return;
                }
                c3.fetch_add(1, Ordering::Relaxed);
                handler(&mut s, &buf);
            });
        }
    });
    Fake { port, conns }
}

/// A metric's value from `/metrics` (the first line starting with `prefix`).
pub fn metric(admin: u16, prefix: &str) -> f64 {
    let m = http(admin, "GET", "/metrics", &[], b"").text();
    m.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{m}"))
}

/// Live (not zombie) processes whose parent is `ppid`.
pub fn children(ppid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let parent: i32 = after.split(' ').nth(1).unwrap().parse().unwrap();
        if parent == ppid && !after.starts_with('Z') {
            out.push(pid);
        }
    }
    out
}
