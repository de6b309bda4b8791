//! Packages from `requirements.txt` and zygotes (process backend), against
//! the real worker, real pip and real Python. Tests that need the package
//! registry say SKIPPED loudly when pip cannot reach it.

mod common;

use std::time::{Duration, Instant};

use common::{is_root, Options, Worker};

const SIX: &str = "six==1.16.0\n";

fn add(w: &Worker, name: &str, code: &str, requirements: Option<&str>) {
    let dir = w.registry.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("f.py"), code).unwrap();
    if let Some(r) = requirements {
        std::fs::write(dir.join("requirements.txt"), r).unwrap();
    }
}

/// True when pip could not reach the package registry (the reply says so).
fn registry_unreachable(body: &str) -> bool {
    [
        "No matching distribution",
        "Could not find a version",
        "NewConnectionError",
        "Network is unreachable",
        "Temporary failure in name resolution",
        "timed out",
    ]
    .iter()
    .any(|s| body.contains(s))
}

/// Files left in the store's temporary directory.
fn leftovers(w: &Worker) -> Vec<String> {
    std::fs::read_dir(w.work_dir.join("packages/.tmp"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_pinned_package_is_installed_once_and_shared() {
    let w = Worker::start(Options::default());
    let r = w.post("/run/pinned", br#"{"text": "hi"}"#);
    if r.status == 502 && registry_unreachable(&r.body) {
        eprintln!(
            "SKIPPED: a_pinned_package_is_installed_once_and_shared: pip cannot reach the package registry: {}",
            r.body.lines().next().unwrap_or("")
        );
        return;
    }
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["six"], "1.16.0");
    assert_eq!(v["text"], "hi");
    assert_eq!(w.stats()["packages.installed"], 1);

    // Another function with the same pin uses the same store entry.
    add(
        &w,
        "pinned-too",
        "import six\n\ndef f(event):\n    return six.__file__\n",
        Some("# same pin, other spelling\nSix == 1.16.0\n"),
    );
    let t = Instant::now();
    let r = w.post("/run/pinned-too", b"{}");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("packages/six-1.16.0/six.py"),
        "imported from the store: {}",
        r.body
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let s = w.stats();
    assert_eq!(s["packages.installed"], 1, "installed once: {s}");
    assert_eq!(s["packages.install-failed"], 0, "{s}");
    assert!(leftovers(&w).is_empty(), "{:?}", leftovers(&w));
    // Read-only for sandboxes: a handler cannot change the shared copy.
    if is_root() {
        add(
            &w,
            "tamper",
            "import six, os\n\ndef f(event):\n    try:\n        open(six.__file__, 'a').write('#')\n        return 'wrote'\n    except OSError as e:\n        return type(e).__name__\n",
            Some(SIX),
        );
        let r = w.post("/run/tamper", b"{}");
        assert_eq!(r.body, "\"PermissionError\"", "{}", r.body);
    }
}

#[test]
fn unpinned_and_missing_packages_fail_clearly() {
    let w = Worker::start(Options::default());
    add(
        &w,
        "unpinned",
        "def f(event):\n    return 1\n",
        Some("six==1.16.0\nrequests>=2\n"),
    );
    let r = w.post("/run/unpinned", b"{}");
    assert_eq!(r.status, 500, "{}", r.body);
    let line = r.body.lines().next().unwrap();
    assert!(
        line.contains("requirements.txt:2") && line.contains("\"requests>=2\" is not pinned"),
        "{line}"
    );

    add(
        &w,
        "missing",
        "def f(event):\n    return 1\n",
        Some("ol-edge-no-such-package-zq==1.0.0\n"),
    );
    let r = w.post("/run/missing", b"{}");
    assert_eq!(r.status, 502, "{}", r.body);
    let line = r.body.lines().next().unwrap();
    assert!(
        line.contains("cannot install ol-edge-no-such-package-zq==1.0.0")
            && line.contains("ERROR:"),
        "pip's message in the error: {line}"
    );
    assert_eq!(r.body.trim().lines().count(), 1, "{}", r.body);
    // The pins are the function's choice: its failed install must not
    // count against the worker (or a function could get workers ejected).
    assert_eq!(r.header("x-ol-error"), Some("function"), "{:?}", r.headers);
    // Nothing half-installed in the store; the same error comes back at
    // once (remembered for retry_after_ms), without hanging.
    assert!(!w
        .work_dir
        .join("packages/ol-edge-no-such-package-zq-1.0.0")
        .exists());
    assert!(leftovers(&w).is_empty(), "{:?}", leftovers(&w));
    let t = Instant::now();
    let again = w.post("/run/missing", b"{}");
    assert_eq!(again.status, 502);
    assert_eq!(again.body, r.body);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(w.stats()["packages.install-failed"], 1);
    // The worker keeps serving.
    assert_eq!(w.post("/run/hello", b"{}").status, 200);
}

#[test]
fn a_failed_install_is_retried_after_the_window() {
    let w = Worker::start(Options {
        toml: "[packages]\nretry_after_ms = 0\n",
        ..Default::default()
    });
    add(
        &w,
        "missing",
        "def f(event):\n    return 1\n",
        Some("ol-edge-no-such-package-zq==1.0.0\n"),
    );
    assert_eq!(w.post("/run/missing", b"{}").status, 502);
    assert_eq!(w.post("/run/missing", b"{}").status, 502);
    assert_eq!(w.stats()["packages.install-failed"], 2, "pip ran again");
}

const PROBE: &str = r#"
import os, socket, sys
PREIMPORTED = "six" in sys.modules
import six

def f(event):
    out = {"uid": os.getuid(), "gid": os.getgid(), "preimported": PREIMPORTED,
           "pid": os.getpid(), "sid": os.getsid(0)}
    for what, path in event["paths"].items():
        try:
            if os.path.isdir(path):
                os.listdir(path)
            else:
                open(path).read()
            out[what] = "read"
        except OSError as e:
            out[what] = type(e).__name__
    s = socket.socket()
    s.settimeout(1)
    try:
        s.connect(("127.0.0.1", event["port"]))
        out["connect"] = "connected"
    except OSError as e:
        out["connect"] = type(e).__name__
    try:
        os.setuid(0)
        out["setuid0"] = "became root"
    except OSError as e:
        out["setuid0"] = type(e).__name__
    out["caps"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
    return out
"#;

fn wait_for_zygotes(w: &Worker, n: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if w.stats()["zygotes.live"].as_u64().unwrap_or(0) >= n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn zygote_forks_are_isolated_like_fresh_instances() {
    if !is_root() {
        eprintln!("SKIPPED: zygote_forks_are_isolated_like_fresh_instances needs root (per-instance uids, cgroups)");
        return;
    }
    let w = Worker::start(Options {
        toml: "[zygotes]\nenabled = true\npreload = [[\"six==1.16.0\"]]\n[egress]\nfunctions = [\"egress\"]\n",
        ..Default::default()
    });
    if !wait_for_zygotes(&w, 2) {
        let s = w.stats();
        if s["packages.install-failed"].as_u64().unwrap_or(0) > 0 {
            eprintln!("SKIPPED: zygote_forks_are_isolated_like_fresh_instances: pip cannot install six==1.16.0 from the package registry");
            return;
        }
        panic!("the root and six zygotes did not start: {s}");
    }
    // Another instance, kept busy so that its scratch dir exists.
    let url = w.url("/run/sleep");
    let busy =
        std::thread::spawn(move || common::request("POST", &url, Some(br#"{"ms": 1500}"#), &[]));
    std::thread::sleep(Duration::from_millis(500));
    let other = std::fs::read_dir(w.work_dir.join("instances"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("sleep-")
        })
        .expect("sleep instance dir");

    add(&w, "probe", PROBE, Some(SIX));
    let body = serde_json::json!({
        "port": w.port,
        "paths": {
            "logs": w.work_dir.join("logs"),
            "work_dir": w.work_dir,
            "other_scratch": other,
            "zygote_py": w.work_dir.join("runtime").join("ol_zygote.py"),
        },
    });
    let r = w.post("/run/probe", body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.start(), "zygote", "{:?}", r.header("x-ol-timing"));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["preimported"], true, "six came from the zygote: {v}");
    let uid = v["uid"].as_u64().unwrap();
    // A sandbox uid: in one of the whole ranges of 4096 from 200000 that
    // workers on this host claim (tests run several at once).
    assert!((200_000..200_000 + 64 * 4096).contains(&uid), "{v}");
    assert_eq!(v["gid"], uid, "{v}");
    assert_eq!(v["pid"], v["sid"], "its own session: {v}");
    // Not in its view (the zygote's layout, with its own code and scratch).
    for what in ["logs", "work_dir", "other_scratch", "zygote_py"] {
        assert_eq!(v[what], "FileNotFoundError", "{what}: {v}");
    }
    assert_ne!(v["connect"], "connected", "reached the worker's port: {v}");
    // EINVAL in its user namespace (uid 0 is not mapped there), EPERM outside.
    assert_ne!(v["setuid0"], "became root", "{v}");
    assert_eq!(v["caps"], "0000000000000000", "{v}");
    busy.join().unwrap().unwrap();

    // The instance is in its own cgroup: the memory limit applies.
    let r = w.post("/run/hog", b"{}");
    assert_eq!(r.start(), "zygote");
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.body.contains("memory"), "{}", r.body);

    // A function without packages forks from the root zygote; warm reuse
    // and the counters work as before.
    assert_eq!(w.post("/run/hello", b"{}").start(), "zygote");
    assert_eq!(w.post("/run/hello", b"{}").start(), "warm");
    // An egress function needs the host's network: a fresh process.
    add(&w, "egress", "def f(event):\n    return 1\n", None);
    std::fs::write(w.registry.join("egress/ol.yaml"), "network: egress\n").unwrap();
    assert_eq!(w.post("/run/egress", b"{}").start(), "cold");
    let s = w.stats();
    assert_eq!(s["starts.zygote"], 4, "sleep, probe, hog, hello: {s}");
    assert_eq!(s["starts.cold"], 1, "{s}");
    assert_eq!(s["zygotes.fallbacks"], 0, "{s}");
}

#[test]
fn popular_package_sets_get_a_zygote() {
    let w = Worker::start(Options {
        toml: "[zygotes]\nenabled = true\npopular_after = 1\n[instances]\nmax_per_function = 4\n",
        ..Default::default()
    });
    if !wait_for_zygotes(&w, 1) {
        panic!("the root zygote did not start: {}", w.stats());
    }
    let r = w.post("/run/pinned", b"{}");
    if r.status == 502 && registry_unreachable(&r.body) {
        eprintln!(
            "SKIPPED: popular_package_sets_get_a_zygote: pip cannot reach the package registry"
        );
        return;
    }
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.start(), "zygote", "from the root zygote");
    // That cold start made the set popular: a six zygote starts.
    assert!(wait_for_zygotes(&w, 2), "{}", w.stats());
    add(
        &w,
        "pinned-probe",
        "import sys\nPRE = 'six' in sys.modules\nimport six\n\ndef f(event):\n    return PRE\n",
        Some(SIX),
    );
    let r = w.post("/run/pinned-probe", b"{}");
    assert_eq!((r.status, r.start()), (200, "zygote"), "{}", r.body);
    assert_eq!(r.body, "true", "forked from the six zygote");
}

#[test]
fn forked_exits_are_reported_and_a_dead_zygote_falls_back() {
    let mut w = Worker::start(Options {
        toml: "[zygotes]\nenabled = true\n",
        ..Default::default()
    });
    assert!(wait_for_zygotes(&w, 1), "{}", w.stats());
    // The zygote reports its child's exit status, as a fresh process's would be.
    let r = w.post("/run/crash", b"{}");
    assert_eq!((r.status, r.start()), (502, "zygote"), "{}", r.body);
    assert!(r.body.contains("exited with status 3"), "{}", r.body);

    // Kill the zygote: the next cold start is a fresh process, and a new
    // root zygote replaces the dead one.
    let pids = w.runtime_pids("ol_zygote.py");
    assert_eq!(
        pids.len(),
        1,
        "one zygote process (forks were removed): {pids:?}"
    );
    unsafe { libc::kill(pids[0], libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(100));
    let r = w.post("/run/hello", b"{}");
    assert_eq!((r.status, r.start()), (200, "cold"), "{}", r.body);
    assert_eq!(w.stats()["zygotes.fallbacks"], 1);
    // The next cold start notices the dead zygote and starts a new one
    // in the background (it is itself served by a fresh process).
    assert_eq!(w.post("/run/echo", b"{}").start(), "cold");
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.stats()["zygotes.created"] != 2 {
        assert!(
            Instant::now() < deadline,
            "no new root zygote: {}",
            w.stats()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(w.post("/run/wsgi", b"").start(), "zygote");

    // SIGTERM removes zygotes and their forks.
    let status = w.stop();
    assert!(status.success(), "{status:?}");
    std::thread::sleep(Duration::from_millis(200));
    let left = common::runtime_pids_of(w.child.id(), &w.work_dir, "ol_zygote.py");
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn zygotes_are_on_by_default_and_can_be_turned_off() {
    let w = Worker::start(Options::default());
    assert!(wait_for_zygotes(&w, 1), "no root zygote: {}", w.stats());
    assert_eq!(w.post("/run/hello", b"{}").start(), "zygote");

    let off = Worker::start(Options {
        toml: "[zygotes]\nenabled = false\n",
        ..Default::default()
    });
    assert_eq!(off.post("/run/hello", b"{}").start(), "cold");
    let s = off.stats();
    assert_eq!(s["zygotes.live"], 0, "{s}");
    assert_eq!(s["zygotes.created"], 0, "{s}");
}
