//! What only the process backend promises: unprivileged per-instance users,
//! no access to the worker's files or other instances, clean shutdown,
//! and a clear refusal of a bad config.

mod common;

use std::time::Duration;

use common::{is_root, Options, Worker};

const SNOOP: &str = r#"
import os

def f(event):
    out = {"uid": os.getuid()}
    for what, path in event["paths"].items():
        try:
            if os.path.isdir(path):
                os.listdir(path)
            else:
                open(path).read()
            out[what] = "read"
        except OSError as e:
            out[what] = type(e).__name__
    try:
        open(os.path.join(event["paths"]["code"], "planted"), "w").write("x")
        out["write_code"] = "wrote"
    except OSError as e:
        out["write_code"] = type(e).__name__
    try:
        open("/code/planted", "w").write("x")
        out["write_own_code"] = "wrote"
    except OSError as e:
        out["write_own_code"] = type(e).__name__
    return out
"#;

#[test]
fn handlers_cannot_read_the_worker_or_each_other() {
    if !is_root() {
        eprintln!(
            "SKIPPED: handlers_cannot_read_the_worker_or_each_other needs root (per-instance uids)"
        );
        return;
    }
    let w = Worker::start(Options::default());
    std::fs::create_dir_all(w.registry.join("snoop")).unwrap();
    std::fs::write(w.registry.join("snoop/f.py"), SNOOP).unwrap();
    // Another function's instance, kept busy so its scratch dir exists.
    let url = w.url("/run/sleep");
    let busy =
        std::thread::spawn(move || common::request("POST", &url, Some(br#"{"ms": 1500}"#), &[]));
    std::thread::sleep(Duration::from_millis(500));
    let instances = w.work_dir.join("instances");
    let other = std::fs::read_dir(&instances)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("sleep-")
        })
        .expect("sleep instance dir");
    let paths = serde_json::json!({
        "work_dir": w.work_dir,
        "logs": w.work_dir.join("logs"),
        "other_scratch": other,
        "code": w.work_dir.join("code"),
    });
    let r = w.post(
        "/run/snoop",
        serde_json::json!({ "paths": paths }).to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert!(v["uid"].as_u64().unwrap() >= 200_000, "{v}");
    // Not in its view at all (its own mount namespace): FileNotFoundError.
    for what in ["work_dir", "logs", "other_scratch", "code"] {
        assert_eq!(v[what], "FileNotFoundError", "{what}: {v}");
    }
    assert_eq!(v["write_code"], "FileNotFoundError", "{v}");
    // Its own code is there, read-only (EROFS is a plain OSError).
    assert_eq!(v["write_own_code"], "OSError", "{v}");
    busy.join().unwrap().unwrap();
}

#[test]
fn sigterm_removes_every_instance() {
    let mut w = Worker::start(Options::default());
    for f in ["hello", "echo", "sleep"] {
        assert_eq!(w.post(&format!("/run/{f}"), b"{}").status, 200);
    }
    // Fresh instances run ol_runtime.py; zygotes, and the instances forked
    // from them, ol_zygote.py.
    let (pid, work) = (w.child.id(), w.work_dir.clone());
    let running = || {
        common::runtime_pids_of(pid, &work, "ol_runtime.py").len()
            + common::runtime_pids_of(pid, &work, "ol_zygote.py").len()
    };
    assert!(running() >= 3, "three instances (and zygotes) before stop");
    let status = w.stop();
    assert!(status.success(), "{status:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(running(), 0, "runtimes left after SIGTERM");
    if is_root() && std::path::Path::new("/sys/fs/cgroup/memory").exists() {
        let tag = format!("ol-worker-{pid}");
        let out = std::process::Command::new("find")
            .args(["/sys/fs/cgroup", "-maxdepth", "4", "-name", &tag])
            .output()
            .unwrap();
        assert!(
            out.stdout.is_empty(),
            "cgroups left: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn invalid_config_is_refused_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "registry_cache_ms = 10\n\n[instances]\nmax_per_function = 0\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ol-worker"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:4: instances.max_per_function: must be greater than 0",
            cfg.display()
        )),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn unreachable_work_dir_is_refused_at_start() {
    if !is_root() {
        eprintln!("SKIPPED: unreachable_work_dir_is_refused_at_start needs root (sandbox uids)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    // Only without the mount namespace do sandbox users reach their code
    // by path (in it, the code is bound in by root).
    let cfg = dir.path().join("worker.toml");
    std::fs::write(&cfg, "[instances]\nmount_namespace = false\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ol-worker"))
        .arg("--config")
        .arg(&cfg)
        .args(["--listen", &format!("127.0.0.1:{}", common::free_port())])
        .arg("--registry")
        .arg(common::repo_root().join("examples/functions"))
        .arg("--work-dir")
        .arg(private.join("work"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sandbox users cannot reach their code"),
        "{err}"
    );
}

/// A root worker that cannot build its instances' mount namespace (here:
/// a python whose prefix holds the work dir, which the layout would show)
/// refuses to start with one line naming the way out, instead of running
/// functions that see the host.
#[test]
fn a_root_worker_without_its_layout_refuses_to_start() {
    if !is_root() {
        eprintln!("SKIPPED: a_root_worker_without_its_layout_refuses_to_start needs root (mount namespaces)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::copy("/usr/bin/python3", bin.join("python3")).unwrap();
    let cfg = dir.path().join("worker.toml");
    std::fs::write(
        &cfg,
        format!("python = {:?}\n", bin.join("python3").display().to_string()),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ol-worker"))
        .arg("--config")
        .arg(&cfg)
        .args(["--listen", &format!("127.0.0.1:{}", common::free_port())])
        .arg("--registry")
        .arg(common::repo_root().join("examples/functions"))
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot give instances their own mount namespace"),
        "{err}"
    );
    assert!(err.contains("mount_namespace = false"), "{err}");
}

const NET_PROBE: &str = r#"
import socket

def f(event):
    out = {}
    for what, port in event["ports"].items():
        s = socket.socket()
        s.settimeout(1)
        try:
            s.connect(("127.0.0.1", port))
            out[what] = "connected"
        except OSError as e:
            out[what] = type(e).__name__
        finally:
            s.close()
    return out
"#;

const FORK_BOMB: &str = r#"
import os, time

def f(event):
    children = 0
    try:
        while children < 1000:
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
            children += 1
    except OSError as e:
        return {"children": children, "error": type(e).__name__}
    return {"children": children, "error": None}
"#;

#[test]
fn handlers_cannot_reach_the_network_or_fork_without_bound() {
    if !is_root() {
        eprintln!("SKIPPED: handlers_cannot_reach_the_network_or_fork_without_bound needs root");
        return;
    }
    let w = Worker::start(Options {
        toml: "[egress]\nfunctions = [\"probe-egress\"]\n",
        ..Default::default()
    });
    for (name, code, yaml) in [
        ("probe", NET_PROBE, ""),
        ("probe-egress", NET_PROBE, "network: egress\n"),
        ("forkbomb", FORK_BOMB, "limits:\n  procs: 8\n"),
    ] {
        std::fs::create_dir_all(w.registry.join(name)).unwrap();
        std::fs::write(w.registry.join(name).join("f.py"), code).unwrap();
        std::fs::write(w.registry.join(name).join("ol.yaml"), yaml).unwrap();
    }
    let ports = serde_json::json!({"ports": {"worker": w.port}}).to_string();
    let r = w.post("/run/probe", ports.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_ne!(
        v["worker"], "connected",
        "a sandboxed handler reached the worker's port: {v}"
    );
    // Nor with egress: its 127.0.0.1 is its own namespace's (it used to
    // be the host's, and this connected). That the probe can reach what
    // egress allows is shown in isolation.rs (an_egress_function_...).
    let v: serde_json::Value =
        serde_json::from_str(&w.post("/run/probe-egress", ports.as_bytes()).body).unwrap();
    assert_eq!(v["worker"], "ConnectionRefusedError", "{v}");

    let r = w.post("/run/forkbomb", b"{}");
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert!(v["children"].as_u64().unwrap() < 8, "{v}");
    assert_eq!(v["error"], "BlockingIOError", "{v}");
    assert_eq!(w.post("/run/hello", b"{}").status, 200);
}

const SPIN: &str = r#"
import time

def f(event):
    end = time.monotonic() + event["seconds"]
    while time.monotonic() < end:
        pass
    return time.process_time()
"#;

#[test]
fn cpu_limit_throttles_a_busy_handler() {
    if !is_root() || !std::path::Path::new("/sys/fs/cgroup/cpu/cgroup.procs").exists() {
        eprintln!(
            "SKIPPED: cpu_limit_throttles_a_busy_handler needs root and a cgroup v1 cpu controller"
        );
        return;
    }
    let w = Worker::start(Options::default());
    std::fs::create_dir_all(w.registry.join("spin")).unwrap();
    std::fs::write(w.registry.join("spin/f.py"), SPIN).unwrap();
    std::fs::write(
        w.registry.join("spin/ol.yaml"),
        "limits:\n  cpu_percent: 20\n",
    )
    .unwrap();
    let r = w.post("/run/spin", br#"{"seconds": 1.0}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let cpu: f64 = r.body.parse().unwrap();
    // One second of wall time at 20% of a core: about 0.2 s of CPU.
    assert!(
        cpu < 0.45,
        "handler used {cpu} s of CPU in 1 s under a 20% limit"
    );
}
