//! Test harness: starts the real `ol-worker` binary on a free loopback port
//! and talks to it over real sockets. Shared by every worker test file.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Worker {
    pub child: Child,
    pub port: u16,
    pub work_dir: PathBuf,
    pub registry: PathBuf,
    /// The worker's stderr (its log), when started with `start_logged`.
    pub log: Option<PathBuf>,
    _tmp: tempfile::TempDir,
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the call got a new instance: `start=cold` (a fresh
    /// process or container) or `start=zygote` (forked from a zygote, the
    /// process backend's default).
    pub fn new_instance(&self) -> bool {
        matches!(self.start(), "cold" | "zygote")
    }

    /// `start=` of `x-ol-timing`: cold, zygote, warm or unpaused.
    pub fn start(&self) -> &str {
        let t = self.header("x-ol-timing").unwrap_or("");
        t.split(';')
            .find_map(|kv| kv.strip_prefix("start="))
            .unwrap_or("")
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Copies the example functions into a fresh registry directory, so tests
/// may change them.
pub fn copy_examples(dest: &Path) {
    let src = repo_root().join("examples/functions");
    let status = Command::new("cp")
        .arg("-r")
        .arg(&src)
        .arg(dest)
        .status()
        .unwrap();
    assert!(status.success());
}

pub struct Options<'a> {
    /// Extra TOML appended to the config file.
    pub toml: &'a str,
    /// Registry override (else a private copy of examples/functions).
    pub registry: Option<String>,
    pub sandbox: &'a str,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            toml: "",
            registry: None,
            sandbox: "process",
        }
    }
}

impl Worker {
    pub fn start(opts: Options) -> Worker {
        Worker::start_with(opts, false)
    }

    /// Like `start`, but the worker's stderr (its log) goes to a file that
    /// `log()` reads.
    pub fn start_logged(opts: Options) -> Worker {
        Worker::start_with(opts, true)
    }

    /// This worker's runtime processes whose command line names `script`
    /// ([`runtime_pids_of`]).
    pub fn runtime_pids(&self, script: &str) -> Vec<i32> {
        runtime_pids_of(self.child.id(), &self.work_dir, script)
    }

    /// What the worker has logged so far (`start_logged` only).
    pub fn log(&self) -> String {
        let path = self.log.as_ref().expect("started with start_logged");
        String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
    }

    fn start_with(opts: Options, logged: bool) -> Worker {
        let tmp = tempfile::tempdir().unwrap();
        let registry = tmp.path().join("registry");
        copy_examples(&registry);
        let work_dir = tmp.path().join("work");
        let port = free_port();
        let cfg = tmp.path().join("worker.toml");
        let mut f = std::fs::File::create(&cfg).unwrap();
        writeln!(f, "{}", opts.toml).unwrap();
        let reg = opts
            .registry
            .unwrap_or_else(|| registry.display().to_string());
        let log = logged.then(|| tmp.path().join("worker.log"));
        let stderr = match &log {
            Some(p) => Stdio::from(std::fs::File::create(p).unwrap()),
            None => Stdio::inherit(),
        };
        let child = Command::new(env!("CARGO_BIN_EXE_ol-worker"))
            .arg("--config")
            .arg(&cfg)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--registry", &reg])
            .args(["--sandbox", opts.sandbox])
            .arg("--work-dir")
            .arg(&work_dir)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start ol-worker");
        let w = Worker {
            child,
            port,
            work_dir,
            registry,
            log,
            _tmp: tmp,
        };
        w.wait_ready();
        w
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = self.try_get("/status") {
                if r.status == 200 {
                    assert_eq!(r.body, "ready\n");
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("ol-worker did not become ready on port {}", self.port);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn try_get(&self, path: &str) -> Result<Reply, ureq::Error> {
        request("GET", &self.url(path), None, &[])
    }

    pub fn get(&self, path: &str) -> Reply {
        request("GET", &self.url(path), None, &[]).unwrap()
    }

    pub fn post(&self, path: &str, body: &[u8]) -> Reply {
        request("POST", &self.url(path), Some(body), &[]).unwrap()
    }

    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Reply {
        request(method, &self.url(path), body, headers).unwrap()
    }

    pub fn stats(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/stats").body).unwrap()
    }

    /// Stops the worker with SIGTERM and waits for it.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "worker did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.stop();
        }
    }
}

pub fn request(
    method: &str,
    url: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Result<Reply, ureq::Error> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .allow_non_standard_methods(true)
        .build()
        .into();
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(body.unwrap_or(b"").to_vec()).unwrap();
    let mut resp = agent.run(req)?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = resp
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()?;
    let body = String::from_utf8_lossy(&body).into_owned();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// A `.tar.gz` of the given (path, contents) files.
pub fn tar_gz(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_path(path).unwrap();
        h.set_cksum();
        b.append(&h, data.as_bytes()).unwrap();
    }
    gzip(&b.into_inner().unwrap())
}

pub fn gzip(raw: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(raw).unwrap();
    gz.finish().unwrap()
}

/// Every file under `dir` with its contents, to compare a store before and after.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

/// The runtime processes of the worker `pid` with `work_dir` whose command
/// line names `script` (`ol_runtime.py`, `ol_zygote.py`): found by the
/// worker's cgroups (as root, their paths are the isolated layout's, the
/// same for every worker) or by the work dir in their command line (not
/// root).
pub fn runtime_pids_of(pid: u32, work_dir: &std::path::Path, script: &str) -> Vec<i32> {
    let tag = format!("/ol-worker-{pid}/");
    let own = work_dir.display().to_string();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        let cg = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
        if cmd.contains(script) && (cmd.contains(&own) || cg.contains(&tag)) {
            pids.push(pid);
        }
    }
    pids
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// A function that tries io_uring_setup and returns the fd and errno.
#[allow(dead_code)]
pub const IO_URING_PROBE: &str = r#"import ctypes

def f(event):
    libc = ctypes.CDLL(None, use_errno=True)
    params = (ctypes.c_char * 120)()
    fd = libc.syscall(425, 4, params)
    return {"fd": fd, "errno": ctypes.get_errno()}
"#;

/// Whether io_uring works here, outside any sandbox: without it, ENOSYS
/// inside would prove nothing.
#[allow(dead_code)]
pub fn io_uring_works_outside() -> bool {
    let mut params = [0u8; 120];
    let fd = unsafe { libc::syscall(425, 4, params.as_mut_ptr()) };
    if fd >= 0 {
        unsafe { libc::close(fd as i32) };
    }
    fd >= 0
}
