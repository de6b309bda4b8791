//! What only the Docker backend promises, against the real engine: limits
//! enforced by the container (memory, pids), no network path to the worker
//! or the host, pause/unpause through the engine, no containers left
//! behind, and one-line errors when the engine or the image is missing.
//!
//! The shared endpoint tests run on Docker with
//! `OL_TEST_SANDBOX=docker cargo test -p workers --test endpoints`.
//! Without an engine these tests print `SKIPPED: ...` and return; the image
//! is built first (workers/image/build.sh) when it is missing.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Options, Worker};

/// Whether a Docker engine answers here; if not, says so loudly.
fn engine(test: &str) -> bool {
    static UP: OnceLock<Result<(), String>> = OnceLock::new();
    let up = UP.get_or_init(|| {
        let out = Command::new("docker")
            .args(["version", "--format", "{{.Server.Version}}"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("no docker CLI ({e})"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "no Docker engine ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    });
    match up {
        Ok(()) => {
            ensure_image();
            true
        }
        Err(why) => {
            eprintln!("SKIPPED: {test}: {why}");
            false
        }
    }
}

/// Builds the runtime image with the repo's script unless it exists.
fn ensure_image() -> &'static str {
    static BUILT: OnceLock<String> = OnceLock::new();
    BUILT.get_or_init(|| {
        let script = common::repo_root().join("workers/image/build.sh");
        let out = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .expect("run workers/image/build.sh");
        assert!(out.status.success(), "workers/image/build.sh failed");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
}

fn docker_worker(toml: &str) -> Worker {
    Worker::start(Options {
        toml,
        sandbox: "docker",
        ..Default::default()
    })
}

fn label(w: &Worker) -> String {
    let dir = std::fs::canonicalize(&w.work_dir).unwrap();
    format!("ol-edge.worker={}", dir.display())
}

/// Containers (any state) carrying `label`, as "name state" lines.
fn containers(label: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-a", "--filter", &format!("label={label}")])
        .args(["--format", "{{.Names}} {{.State}}"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn add_function(w: &Worker, name: &str, code: &str, ol_yaml: &str) {
    let dir = w.registry.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("f.py"), code).unwrap();
    if !ol_yaml.is_empty() {
        std::fs::write(dir.join("ol.yaml"), ol_yaml).unwrap();
    }
}

/// The image kept setuid binaries (`chage`, `expiry`): a way to gain
/// privileges if anything else gave. It has none now.
#[test]
fn the_image_has_no_setuid_or_setgid_files() {
    if !engine("the_image_has_no_setuid_or_setgid_files") {
        return;
    }
    let out = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "--user",
            "0:0",
            "--entrypoint",
            "/usr/bin/find",
        ])
        .arg(ensure_image())
        .args(["/", "-xdev", "-type", "f", "-perm", "/6000"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found = String::from_utf8_lossy(&out.stdout);
    assert_eq!(found.trim(), "", "setuid/setgid files in the image");
}

#[test]
fn memory_limit_stops_a_hog() {
    if !engine("memory_limit_stops_a_hog") {
        return;
    }
    let w = docker_worker("");
    let r = w.post("/run/hog", b"{}");
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(
        r.body.contains("killed by its memory limit of 64 MiB"),
        "{}",
        r.body
    );
    let r = w.post("/run/hello", b"{}");
    assert_eq!(r.status, 200, "{}", r.body);
    // The killed container is not reused.
    assert_eq!(w.post("/run/hog", b"{}").start(), "cold");
}

const FORK_BOMB: &str = r#"
import os, time

def f(event):
    n = 0
    try:
        while n < 1000:
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
            n += 1
    except OSError as e:
        return {"forked": n, "error": type(e).__name__}
    return {"forked": n}
"#;

#[test]
fn pids_limit_stops_a_fork_bomb() {
    if !engine("pids_limit_stops_a_fork_bomb") {
        return;
    }
    let w = docker_worker("");
    add_function(&w, "forker", FORK_BOMB, "limits:\n  procs: 16\n");
    let r = w.post("/run/forker", b"{}");
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let n = v["forked"].as_u64().unwrap();
    assert!(n < 16, "forked {n} processes under a limit of 16: {v}");
    assert_eq!(v["error"], "BlockingIOError", "{v}");
    // The worker is unaffected.
    assert_eq!(w.post("/run/hello", b"{}").status, 200);
}

/// Tries TCP connections from inside the sandbox; reports each outcome.
const NET_PROBE: &str = r#"
import socket, struct

def gateway():
    try:
        for line in open("/proc/net/route").read().splitlines()[1:]:
            f = line.split()
            if f[1] == "00000000":
                return socket.inet_ntoa(struct.pack("<L", int(f[2], 16)))
    except OSError:
        pass
    return None

def probe(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect((host, port))
        return "connected"
    except OSError as e:
        return type(e).__name__
    finally:
        s.close()

def f(event):
    out = {"gateway": gateway()}
    out["worker_loopback"] = probe("127.0.0.1", event["worker_port"])
    if out["gateway"]:
        out["host_via_gateway"] = probe(out["gateway"], event["host_port"])
        out["worker_via_gateway"] = probe(out["gateway"], event["worker_port"])
    return out
"#;

#[test]
fn handlers_cannot_reach_the_worker_or_the_host() {
    if !engine("handlers_cannot_reach_the_worker_or_the_host") {
        return;
    }
    let w = docker_worker("[egress]\nfunctions = [\"probe_egress\"]\n");
    // A listener on every host address: only the host itself is probed.
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let host_port = listener.local_addr().unwrap().port();
    add_function(&w, "probe", NET_PROBE, "");
    add_function(&w, "probe_egress", NET_PROBE, "network: egress\n");
    let event = serde_json::json!({"worker_port": w.port, "host_port": host_port}).to_string();

    let r = w.post("/run/probe", event.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert!(v["gateway"].is_null(), "network none has a route: {v}");
    assert_ne!(v["worker_loopback"], "connected", "{v}");

    let r = w.post("/run/probe_egress", event.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert!(v["gateway"].is_string(), "egress network has no route: {v}");
    for what in ["worker_loopback", "host_via_gateway", "worker_via_gateway"] {
        assert_ne!(v[what], "connected", "{what}: {v}");
    }
    assert!(
        listener.accept().is_err(),
        "the host listener saw a connection from a sandbox"
    );
}

/// Docker 20.10's default profile allows io_uring; the runtime stacks a
/// filter that refuses it (ENOSYS) before any function code runs.
#[test]
fn io_uring_is_refused_in_a_container() {
    if !engine("io_uring_is_refused_in_a_container") {
        return;
    }
    if !common::io_uring_works_outside() {
        eprintln!("SKIPPED: io_uring_is_refused_in_a_container: io_uring does not work on this host at all");
        return;
    }
    let w = docker_worker("");
    add_function(&w, "uring", common::IO_URING_PROBE, "");
    let r = w.post("/run/uring", b"{}");
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["fd"], -1, "io_uring_setup worked: {v}");
    assert_eq!(v["errno"], libc::ENOSYS, "{v}");
}

#[test]
fn pause_unpause_round_trip() {
    if !engine("pause_unpause_round_trip") {
        return;
    }
    let w = docker_worker("[instances]\npause_after_ms = 100\n[docker]\npool_size = 0\n");
    let label = label(&w);
    assert_eq!(w.post("/run/hello", b"{}").start(), "cold");
    let deadline = Instant::now() + Duration::from_secs(5);
    while w.stats()["instances.paused"] != 1 {
        assert!(Instant::now() < deadline, "instance never paused");
        std::thread::sleep(Duration::from_millis(50));
    }
    let c = containers(&label);
    assert_eq!(c.len(), 1, "{c:?}");
    assert!(c[0].ends_with(" paused"), "engine says {c:?}");
    let r = w.post("/run/hello", br#"{"name": "again"}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, "\"Hello, again!\"");
    assert_eq!(r.start(), "unpaused");
}

#[test]
fn timeout_and_crash_remove_the_container() {
    if !engine("timeout_and_crash_remove_the_container") {
        return;
    }
    let w = docker_worker("[docker]\npool_size = 0\n");
    let label = label(&w);
    let r = w.post("/run/loop", b"{}");
    assert_eq!(r.status, 504, "{}", r.body);
    let r = w.post("/run/crash", b"{}");
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.body.contains("exited with status 3"), "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let c = containers(&label);
        if c.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "containers left: {c:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn no_containers_left_after_the_worker_stops() {
    if !engine("no_containers_left_after_the_worker_stops") {
        return;
    }
    let mut w = docker_worker("[instances]\npause_after_ms = 200\n");
    let label = label(&w);
    assert_eq!(w.post("/run/hello", b"{}").status, 200);
    std::thread::sleep(Duration::from_millis(600)); // hello is paused now
    for f in ["echo", "sleep"] {
        assert_eq!(w.post(&format!("/run/{f}"), b"{}").status, 200);
    }
    // Three instances and the pool's two pre-started containers.
    assert!(containers(&label).len() >= 3, "{:?}", containers(&label));
    let t = Instant::now();
    let status = w.stop();
    assert!(status.success(), "{status:?}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t.elapsed()
    );
    assert_eq!(
        containers(&label),
        Vec::<String>::new(),
        "left after SIGTERM"
    );
}

/// A SIGKILLed worker's containers kept running (a busy handler, a paused
/// one, the pre-started pool) until a later worker with the same work dir
/// removed them. Now the worker's guard removes them within seconds.
#[test]
fn a_killed_workers_containers_are_gone_within_seconds() {
    if !engine("a_killed_workers_containers_are_gone_within_seconds") {
        return;
    }
    let mut w = docker_worker("[instances]\npause_after_ms = 200\n");
    let label = label(&w);
    assert_eq!(w.post("/run/hello", b"{}").status, 200);
    std::thread::sleep(Duration::from_millis(600)); // hello is paused now
    add_function(
        &w,
        "long",
        "import time\n\ndef f(event):\n    time.sleep(100)\n    return 1\n",
        "",
    );
    let url = w.url("/run/long");
    std::thread::spawn(move || {
        let _ = common::request("POST", &url, Some(b"{}"), &[]);
    });
    std::thread::sleep(Duration::from_millis(1500)); // long is running
    assert!(containers(&label).len() >= 2, "{:?}", containers(&label));
    w.child.kill().unwrap();
    let _ = w.child.wait();
    let t = Instant::now();
    while !containers(&label).is_empty() && t.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        containers(&label),
        Vec::<String>::new(),
        "left {:?} after SIGKILL",
        t.elapsed()
    );
}

/// Even with its guard gone too, a container whose worker was SIGKILLed
/// stops within seconds (it used to run on: an in-flight `sleep 100`, a
/// thread the handler left): the runtime ends itself when its channel
/// closes. The containers stay (exited) for the next start to remove; a
/// paused one cannot act and stays paused until then (held memory, no CPU),
/// so here nothing is paused.
#[test]
fn a_container_stops_by_itself_when_its_worker_and_guard_are_gone() {
    if !engine("a_container_stops_by_itself_when_its_worker_and_guard_are_gone") {
        return;
    }
    let mut w = docker_worker("[instances]\npause_after_ms = 600000\nevict_after_ms = 600000\n");
    let label = label(&w);
    add_function(
        &w,
        "spinner",
        "import threading\n\ndef _spin():\n    while True:\n        pass\n\ndef f(event):\n    threading.Thread(target=_spin).start()\n    return 1\n",
        "",
    );
    assert_eq!(w.post("/run/spinner", b"{}").status, 200);
    add_function(
        &w,
        "long",
        "import time\n\ndef f(event):\n    time.sleep(100)\n    return 1\n",
        "",
    );
    let url = w.url("/run/long");
    std::thread::spawn(move || {
        let _ = common::request("POST", &url, Some(b"{}"), &[]);
    });
    std::thread::sleep(Duration::from_millis(1500));
    let running = || {
        containers(&label)
            .into_iter()
            .filter(|c| c.ends_with(" running"))
            .collect::<Vec<_>>()
    };
    assert!(running().len() >= 2, "{:?}", containers(&label));
    let work = std::fs::canonicalize(&w.work_dir)
        .unwrap()
        .display()
        .to_string();
    let guards = Command::new("pgrep")
        .args(["-f", "--", &format!("ol-worker --guard .*{work}")])
        .output()
        .unwrap();
    let guards = String::from_utf8_lossy(&guards.stdout).to_string();
    assert!(!guards.trim().is_empty(), "the worker has no guard");
    for pid in guards.lines() {
        unsafe { libc::kill(pid.trim().parse().unwrap(), libc::SIGKILL) };
    }
    w.child.kill().unwrap();
    let _ = w.child.wait();
    let t = Instant::now();
    while !running().is_empty() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let left = running();
    let _ = Command::new("sh")
        .args([
            "-c",
            &format!("docker ps -aq --filter label={label} | xargs -r docker rm -f"),
        ])
        .output();
    assert!(
        left.is_empty(),
        "still running {:?} after the worker and guard died: {left:?}",
        t.elapsed()
    );
}

/// A worker and its guard killed outright left their containers until a
/// worker started again on the same work dir; now any worker's start on
/// the host removes them (their owner no longer runs).
#[test]
fn leftovers_of_a_killed_worker_are_removed_at_start() {
    if !engine("leftovers_of_a_killed_worker_are_removed_at_start") {
        return;
    }
    /// Stops the worker however the test ends.
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let _ = self.0.wait();
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let registry = tmp.path().join("registry");
    common::copy_examples(&registry);
    let work = tmp.path().join("work");
    let start = |work: &std::path::Path| {
        let port = common::free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_ol-worker"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--sandbox",
                "docker",
            ])
            .arg("--registry")
            .arg(&registry)
            .arg("--work-dir")
            .arg(work)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let running = Running(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = format!("http://127.0.0.1:{port}/status");
        while common::request("GET", &url, None, &[]).is_err() {
            assert!(Instant::now() < deadline, "worker not ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        (running, port)
    };
    let (mut first, port) = start(&work);
    let url = format!("http://127.0.0.1:{port}/run/hello");
    assert_eq!(
        common::request("POST", &url, Some(b"{}"), &[])
            .unwrap()
            .status,
        200
    );
    // SIGKILL the worker and its guard: nothing cleans up until the next
    // start (the guard alone is a_killed_workers_containers_are_gone_...).
    let work_arg = std::fs::canonicalize(&work).unwrap().display().to_string();
    let guards = Command::new("pgrep")
        .args(["-f", "--", &format!("ol-worker --guard .*{work_arg}")])
        .output()
        .unwrap();
    let guards = String::from_utf8_lossy(&guards.stdout).to_string();
    assert!(!guards.trim().is_empty(), "the worker has no guard");
    for pid in guards.lines() {
        unsafe { libc::kill(pid.trim().parse().unwrap(), libc::SIGKILL) };
    }
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let label = format!(
        "ol-edge.worker={}",
        std::fs::canonicalize(&work).unwrap().display()
    );
    let ids = |label: &str| {
        let out = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--no-trunc",
                "--filter",
                &format!("label={label}"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let left = ids(&label);
    assert!(!left.is_empty(), "expected leftover containers");
    // Another worker, on another work dir: any start on the host removes
    // what a dead worker left.
    let (second, _) = start(&tmp.path().join("other-work"));
    let now = ids(&label);
    let survived: Vec<_> = left.iter().filter(|id| now.contains(id)).collect();
    assert!(
        survived.is_empty(),
        "leftovers survived a restart: {survived:?}"
    );
    drop(second);
    assert_eq!(
        containers(&label),
        Vec::<String>::new(),
        "left after SIGTERM"
    );
}

/// Runs the worker against `docker_host` with `toml`; it must fail at once.
fn refused_start(docker_host: Option<&str>, toml: &str) -> (std::process::ExitStatus, String) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("worker.toml");
    std::fs::write(&cfg, toml).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ol-worker"));
    cmd.arg("--config")
        .arg(&cfg)
        .args(["--listen", &format!("127.0.0.1:{}", common::free_port())])
        .args(["--sandbox", "docker"])
        .arg("--registry")
        .arg(common::repo_root().join("examples/functions"))
        .arg("--work-dir")
        .arg(tmp.path().join("work"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(h) = docker_host {
        cmd.env("DOCKER_HOST", h);
    }
    let child = cmd.spawn().unwrap();
    let t = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t.elapsed()
    );
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_engine_is_a_one_line_error() {
    let (status, err) = refused_start(Some("unix:///nonexistent/docker.sock"), "");
    assert!(!status.success(), "{status:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("ol-worker: cannot reach the Docker engine"),
        "{err}"
    );
    assert!(err.contains("/nonexistent/docker.sock"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // A socket that exists but where no engine listens.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("docker.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    drop(listener); // the file stays; connections are refused
    assert!(Path::new(&sock).exists());
    let (status, err) = refused_start(Some(&format!("unix://{}", sock.display())), "");
    assert!(!status.success(), "{status:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("ol-worker: cannot reach the Docker engine"),
        "{err}"
    );
}

#[test]
fn missing_image_says_how_to_build_it() {
    if !engine("missing_image_says_how_to_build_it") {
        return;
    }
    let (status, err) = refused_start(
        None,
        "[docker]\nimage = \"ol-edge/runtime:does-not-exist\"\n",
    );
    assert!(!status.success(), "{status:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("ol-edge/runtime:does-not-exist not found"),
        "{err}"
    );
    assert!(err.contains("workers/image/build.sh"), "{err}");
}

const ENV_AND_CODE: &str = r#"
import os

def f(event):
    return {"greeting": os.environ.get("GREETING"), "code": sorted(os.listdir("/code"))}
"#;

#[test]
fn pooled_containers_take_any_function() {
    if !engine("pooled_containers_take_any_function") {
        return;
    }
    let mut w = docker_worker("[docker]\npool_size = 2\n");
    let label = label(&w);
    add_function(&w, "envy", ENV_AND_CODE, "environment:\n  GREETING: hi\n");
    add_function(&w, "broken", "import nosuchmodule\n", "");
    // Pool containers are ready once their runtime listens.
    let instances = w.work_dir.join("instances");
    let ready_pool = || {
        std::fs::read_dir(&instances)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().starts_with("pool-"))
                    .filter(|e| e.path().join("rt.sock").exists())
                    .count()
            })
            .unwrap_or(0)
    };
    let wait_pool = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while ready_pool() < n {
            assert!(Instant::now() < deadline, "pool never reached {n}");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    wait_pool(2);
    // A pooled container gets the function's code and environment.
    let r = w.post("/run/envy", b"{}");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.start(), "cold");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["greeting"], "hi", "{v}");
    assert_eq!(v["code"], serde_json::json!(["f.py", "ol.yaml"]), "{v}");
    // The pool refills.
    wait_pool(2);
    // Load errors come back as from a fresh container: 500 with traceback.
    let r = w.post("/run/broken", b"{}");
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.body.contains("ModuleNotFoundError"), "{}", r.body);
    assert!(r.body.contains("Traceback"), "{}", r.body);
    assert_eq!(w.post("/run/hello", b"{}").status, 200);
    assert!(w.stop().success());
    assert_eq!(
        containers(&label),
        Vec::<String>::new(),
        "left after SIGTERM"
    );
}

const BUSY: &str = r#"
import time

def f(event):
    wall, cpu = time.monotonic(), time.process_time()
    while time.monotonic() - wall < 1.0:
        pass
    return {"cpu_s": time.process_time() - cpu}
"#;

#[test]
fn cpu_limit_throttles_a_busy_handler() {
    if !engine("cpu_limit_throttles_a_busy_handler") {
        return;
    }
    let w = docker_worker("");
    add_function(&w, "busy", BUSY, "limits:\n  cpu_percent: 10\n");
    let r = w.post("/run/busy", b"{}");
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let cpu = v["cpu_s"].as_f64().unwrap();
    // 10% of one CPU for 1 s of wall time: about 0.1 s of CPU, never near 1 s.
    assert!(
        cpu < 0.35,
        "a 10% CPU limit let the handler use {cpu:.2} s in 1 s"
    );
}
