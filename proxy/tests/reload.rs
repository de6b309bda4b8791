//! Hot reload under load: SIGHUPs alternating two valid configs while four
//! keep-alive clients call a real ol-worker through a real ol-proxy; an
//! invalid config mid-load; `POST /admin/reload` and settings that need a
//! restart. Bounded: ~6 s of load, every wait has a limit.

mod common;
mod keepalive;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use keepalive::{reloads, wait_reload, write_atomic, Client};

fn cfg(ports: &Ports, workers: &[u16], policy: &str, version: &str) -> String {
    let extra = format!(
        "[health]\ninterval_ms = 200\n\n[routing]\ndefault_policy = \"least-load\"\n[[routing.routes]]\nfunctions = [\"hello\"]\npolicy = \"{policy}\"\n"
    );
    // `version` is top-level: it goes before the first table.
    config(ports, workers, &extra).replacen(
        "threads = 2\n",
        &format!("threads = 2\nversion = \"{version}\"\n"),
        1,
    )
}

struct Load {
    ok: u64,
    failed: Vec<String>,
    connects: usize,
    policies: BTreeMap<String, u64>,
}

#[test]
fn reload_under_load_keeps_connections_and_switches_policy() {
    let (wp1, wp2) = (free_port(), free_port());
    let _w1 = start_worker(wp1);
    let _w2 = start_worker(wp2);
    let ports = Ports::new();
    let a = cfg(&ports, &[wp1, wp2], "round-robin", "A");
    let b = cfg(&ports, &[wp1, wp2], "random", "B");
    let proxy = start_proxy(&a, &ports);
    let file = proxy.dir.as_ref().unwrap().join("proxy.toml");
    wait_healthy(ports.admin, "", 2);

    let stop = Arc::new(AtomicBool::new(false));
    let loads: Arc<Mutex<Vec<Load>>> = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let stop = stop.clone();
            let loads = loads.clone();
            let port = ports.listen;
            std::thread::spawn(move || {
                let mut c = Client::new(port);
                let mut l = Load {
                    ok: 0,
                    failed: Vec::new(),
                    connects: 0,
                    policies: BTreeMap::new(),
                };
                let body = format!("{{\"name\": \"t{t}\"}}");
                while !stop.load(Ordering::Relaxed) {
                    match c.call("POST", "/run/hello", &[], body.as_bytes()) {
                        Ok(r) if r.status == 200 && r.body.starts_with(b"\"Hello, t") => {
                            l.ok += 1;
                            let p = r.header("x-ol-policy").unwrap_or("?").to_string();
                            *l.policies.entry(p).or_default() += 1;
                        }
                        Ok(r) => l.failed.push(format!(
                            "{} {}",
                            r.status,
                            String::from_utf8_lossy(&r.body)
                        )),
                        Err(e) => l.failed.push(format!("io: {e}")),
                    }
                }
                l.connects = c.connects;
                loads.lock().unwrap().push(l);
            })
        })
        .collect();

    let started = Instant::now();
    let mut probe = Client::new(ports.listen);
    let mut switched = 0;
    let mut ok_before = reloads(ports.admin, "ok");
    for i in 0..24 {
        let (text, want) = if i % 2 == 0 {
            (&b, "random")
        } else {
            (&a, "round-robin")
        };
        write_atomic(&file, text);
        proxy.signal(libc::SIGHUP);
        ok_before = wait_reload(ports.admin, "ok", ok_before);
        // The very next request runs under the new policy set.
        let r = probe.call("GET", "/run/hello", &[], b"").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ol-policy"), Some(want), "after reload {i}");
        switched += 1;
        if i == 11 {
            // An invalid config mid-load: refused, nothing changes.
            let failed = reloads(ports.admin, "failed");
            write_atomic(
                &file,
                &text.replace("interval_ms = 200", "interval_ms = 200\nfall = 0"),
            );
            proxy.signal(libc::SIGHUP);
            wait_reload(ports.admin, "failed", failed);
            let r = probe.call("GET", "/run/hello", &[], b"").unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(
                r.header("x-ol-policy"),
                Some(want),
                "after a refused reload"
            );
            let st: serde_json::Value =
                serde_json::from_slice(&http(ports.admin, "GET", "/admin/status", &[], b"").body)
                    .unwrap();
            assert_eq!(st["reloads"]["last"]["ok"], false);
            let err = st["reloads"]["last"]["error"].as_str().unwrap().to_string();
            assert!(
                err.contains("proxy.toml:")
                    && err.contains(": health.fall: must be greater than 0"),
                "{err}"
            );
            write_atomic(&file, text);
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    // Keep load going a little after the last reload, then stop.
    while started.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let loads = loads.lock().unwrap();
    let total: u64 = loads.iter().map(|l| l.ok).sum();
    let failed: Vec<&String> = loads.iter().flat_map(|l| &l.failed).collect();
    let mut policies: BTreeMap<String, u64> = BTreeMap::new();
    for l in loads.iter() {
        for (k, v) in &l.policies {
            *policies.entry(k.clone()).or_default() += v;
        }
    }
    println!(
        "reload under load: {switched} reloads, {total} calls, {} failed, connections {:?}, policies {policies:?}",
        failed.len(),
        loads.iter().map(|l| l.connects).collect::<Vec<_>>()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(
        loads.iter().all(|l| l.connects == 1),
        "keep-alive connections were dropped"
    );
    assert!(total > 200, "too little load: {total}");
    assert!(policies.get("random").copied().unwrap_or(0) > 0);
    assert!(policies.get("round-robin").copied().unwrap_or(0) > 0);
    assert!(reloads(ports.admin, "failed") >= 1);
    let log = proxy.log_text();
    assert!(log.contains("reload (SIGHUP): refused"), "{log}");
    // Workers kept their health across every reload.
    assert_eq!(healthy_count(ports.admin, ""), 2);
}

#[test]
fn admin_reload_reports_outcome_and_restart_only_settings() {
    let wp = free_port();
    let _w = start_worker(wp);
    let ports = Ports::new();
    let a = cfg(&ports, &[wp], "round-robin", "A");
    let proxy = start_proxy(&a, &ports);
    let file = proxy.dir.as_ref().unwrap().join("proxy.toml");
    wait_healthy(ports.admin, "", 1);
    let st: serde_json::Value =
        serde_json::from_slice(&http(ports.admin, "GET", "/admin/status", &[], b"").body).unwrap();
    let hash0 = st["config"]["hash"].as_str().unwrap().to_string();
    assert_eq!(st["config"]["version"], "A");
    assert!(st["config"]["loaded_unix"].as_u64().unwrap() > 0);

    // GET is refused; POST reloads.
    assert_eq!(
        http(ports.admin, "GET", "/admin/reload", &[], b"").status,
        405
    );
    let b = cfg(&ports, &[wp], "random", "B").replace("threads = 2", "threads = 1")
        + "\n[result_cache]\nmax_bytes = 10000000\n";
    write_atomic(&file, &b);
    let r = http(ports.admin, "POST", "/admin/reload", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let o: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(o["ok"], true);
    assert_eq!(o["version"], "B");
    assert_ne!(o["hash"], hash0.as_str());
    let notes = o["restart_required"].as_array().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.as_str().unwrap().starts_with("threads: 2 -> 1")),
        "{o}"
    );
    assert!(
        notes.iter().any(|n| n
            .as_str()
            .unwrap()
            .starts_with("result_cache: changed; needs a restart")),
        "{o}"
    );
    let st: serde_json::Value =
        serde_json::from_slice(&http(ports.admin, "GET", "/admin/status", &[], b"").body).unwrap();
    assert_eq!(st["config"]["version"], "B");
    assert_eq!(st["default_policy"], "least-load");
    assert_eq!(healthy_count(ports.admin, ""), 1, "health carried over");
    let r = http(ports.listen, "GET", "/run/hello", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ol-policy"), Some("random"));

    // An invalid file: 422 with the one-line error; nothing changes.
    write_atomic(
        &file,
        &b.replace("policy = \"random\"", "policy = \"nope\""),
    );
    let r = http(ports.admin, "POST", "/admin/reload", &[], b"");
    assert_eq!(r.status, 422);
    let o: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(o["ok"], false);
    let e = o["error"].as_str().unwrap();
    assert!(e.contains("routing.routes.0.policy: unknown policy"), "{e}");
    assert!(e.contains("proxy.toml:"), "{e}");
    assert_eq!(o["version"], "B");
    let r = http(ports.listen, "GET", "/run/hello", &[], b"");
    assert_eq!(r.header("x-ol-policy"), Some("random"));
    assert!(proxy.log_text().contains("needs a restart"));
}

#[test]
fn reload_to_no_workers_is_refused_and_old_workers_keep_serving() {
    let wp = free_port();
    let _w = start_worker(wp);
    let ports = Ports::new();
    let a = cfg(&ports, &[wp], "round-robin", "A");
    let proxy = start_proxy(&a, &ports);
    let file = proxy.dir.as_ref().unwrap().join("proxy.toml");
    wait_healthy(ports.admin, "", 1);
    let worker = format!("127.0.0.1:{wp}");

    // A valid file whose worker list is empty (and no DNS): refused, as
    // an invalid file is, with the reason.
    let empty = cfg(&ports, &[], "random", "EMPTY");
    assert!(empty.contains("static = []"), "{empty}");
    write_atomic(&file, &empty);
    let failed = reloads(ports.admin, "failed");
    let r = http(ports.admin, "POST", "/admin/reload", &[], b"");
    assert_eq!(r.status, 422, "{}", r.text());
    let o: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(o["ok"], false);
    let e = o["error"].as_str().unwrap();
    assert!(
        e.contains("proxy.toml:") && e.contains(": workers.static: no workers"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
    assert_eq!(o["version"], "A", "the old config stays");
    assert_eq!(reloads(ports.admin, "failed"), failed + 1);

    // SIGHUP: the same, in the log.
    proxy.signal(libc::SIGHUP);
    wait_reload(ports.admin, "failed", failed + 1);
    let log = proxy.log_text();
    assert!(
        log.contains("reload (SIGHUP): refused") && log.contains("workers.static: no workers"),
        "{log}"
    );

    // Calls keep going to the old worker, under the old policy.
    for _ in 0..5 {
        let r = http(ports.listen, "POST", "/run/hello", &[], b"{}");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-ol-worker"), Some(worker.as_str()));
        assert_eq!(r.header("x-ol-policy"), Some("round-robin"));
    }
    let st: serde_json::Value =
        serde_json::from_slice(&http(ports.admin, "GET", "/admin/status", &[], b"").body).unwrap();
    assert_eq!(st["config"]["version"], "A");
    assert_eq!(st["workers"].as_array().unwrap().len(), 1);
    assert_eq!(st["reloads"]["last"]["ok"], false);

    // A file with workers again reloads fine.
    write_atomic(&file, &cfg(&ports, &[wp], "random", "B"));
    let r = http(ports.admin, "POST", "/admin/reload", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn start_with_no_workers_fails_with_one_line() {
    let ports = Ports::new();
    let dir = temp_dir("noworkers");
    let file = dir.join("proxy.toml");
    std::fs::write(&file, cfg(&ports, &[], "round-robin", "A")).unwrap();
    for check in [false, true] {
        let mut cmd = std::process::Command::new(proxy_bin());
        cmd.arg("--config").arg(&file);
        if check {
            cmd.arg("--check");
        }
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ol-proxy with no workers (--check: {check}) still running after 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(status.code(), Some(2), "--check: {check}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(
            lines[0].contains("proxy.toml:") && lines[0].contains(": workers.static: no workers"),
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
