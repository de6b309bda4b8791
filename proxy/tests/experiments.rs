//! Policy A/B experiments against real ol-proxy and ol-worker processes:
//! a 50/50 split by session cookie (split, stickiness, report counts,
//! cold starts from `x-ol-timing`), weights changed on reload keep the
//! stats of unchanged arms, rename / stop / start by reload alone, and the
//! HTML report (screenshot with headless Chromium when installed).

mod common;
mod keepalive;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use keepalive::{write_atomic, Client};

fn exp_cfg(ports: &Ports, workers: &[u16], arms: &str, extra: &str) -> String {
    config(
        ports,
        workers,
        &format!(
            "[health]\ninterval_ms = 200\n\n[routing]\ndefault_policy = \"least-load\"\n[[routing.policies]]\nname = \"sess\"\nkind = \"session\"\nkey = {{ cookie = \"sid\" }}\n[[routing.routes]]\nfunctions = [\"hello\"]\npolicy = \"round-robin\"\n\n{arms}\n{extra}"
        ),
    )
}

const AB: &str = "[[experiments]]\nname = \"ab\"\nfunctions = [\"hello\"]\nassign = { cookie = \"sid\" }\narms = [\n  { name = \"a\", policy = \"least-load\", weight = 50 },\n  { name = \"b\", policy = \"sess\", weight = 50 },\n]\n";

fn report(admin: u16) -> serde_json::Value {
    let r = http(admin, "GET", "/admin/experiments", &[], b"");
    assert_eq!(r.status, 200);
    serde_json::from_slice(&r.body).unwrap()
}

fn arm_calls(rep: &serde_json::Value, exp: &str) -> HashMap<String, u64> {
    rep["experiments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == exp)
        .map(|e| {
            e["arms"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    (
                        a["name"].as_str().unwrap().to_string(),
                        a["calls"].as_u64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the report counts `want` calls in total for `exp`.
fn wait_calls(admin: u16, exp: &str, want: u64) -> serde_json::Value {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let rep = report(admin);
        let n: u64 = arm_calls(&rep, exp).values().sum();
        if n == want || Instant::now() > end {
            return rep;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ab_split_by_session_with_report_and_reloads() {
    let (wp1, wp2) = (free_port(), free_port());
    let _w1 = start_worker(wp1);
    let _w2 = start_worker(wp2);
    let ports = Ports::new();
    let text = exp_cfg(&ports, &[wp1, wp2], AB, "");
    let proxy = start_proxy(&text, &ports);
    let file = proxy.dir.as_ref().unwrap().join("proxy.toml");
    wait_healthy(ports.admin, "", 2);

    // 1500 sessions x 2 calls, from 4 keep-alive clients.
    const SESSIONS: usize = 1500;
    let arms: Arc<Mutex<HashMap<usize, Vec<String>>>> = Arc::default();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let arms = arms.clone();
            let port = ports.listen;
            std::thread::spawn(move || {
                let mut c = Client::new(port);
                for s in (t..SESSIONS).step_by(4) {
                    for _ in 0..2 {
                        let cookie = format!("other=1; sid=user-{s}");
                        let r = c
                            .call("GET", "/run/hello", &[("cookie", &cookie)], b"")
                            .unwrap();
                        assert_eq!(r.status, 200);
                        let p = r.header("x-ol-policy").unwrap().to_string();
                        arms.lock().unwrap().entry(s).or_default().push(p);
                    }
                }
                assert_eq!(c.connects, 1);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let arms = arms.lock().unwrap();
    let mut calls: HashMap<String, u64> = HashMap::new();
    for (s, seen) in arms.iter() {
        assert!(
            seen.iter().all(|p| p == &seen[0]),
            "session {s} saw two arms: {seen:?}"
        );
        for p in seen {
            *calls.entry(p.clone()).or_default() += 1;
        }
    }
    let a = calls.get("ab/a:least-load").copied().unwrap_or(0);
    let b = calls.get("ab/b:sess").copied().unwrap_or(0);
    assert_eq!(a + b, 2 * SESSIONS as u64, "{calls:?}");
    let share = a as f64 / (a + b) as f64;
    println!("split: a={a} b={b} share(a)={share:.3}");
    assert!((share - 0.5).abs() < 0.04, "split {share}");

    // The report counts exactly the calls made.
    let rep = wait_calls(ports.admin, "ab", a + b);
    let counted = arm_calls(&rep, "ab");
    assert_eq!(counted["a"], a, "{rep}");
    assert_eq!(counted["b"], b, "{rep}");
    let e = &rep["experiments"][0];
    let arm_a = &e["arms"][0];
    assert_eq!(
        arm_a["timed_calls"], arm_a["calls"],
        "every call had x-ol-timing"
    );
    assert_eq!(arm_a["keyed_calls"], arm_a["calls"]);
    let cold: u64 = e["arms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["cold_starts"].as_u64().unwrap())
        .sum();
    assert!(
        cold >= 1,
        "the first call on each worker is a cold start: {e}"
    );
    let per_worker: u64 = arm_a["calls_per_worker"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(per_worker, a);
    let m = &e["comparisons"][0]["metrics"];
    for k in [
        "error_rate",
        "cold_start_rate",
        "latency_p50_ms",
        "latency_p99_ms",
        "queue_mean_ms",
        "load_spread_cv",
    ] {
        assert!(m[k]["significant"].is_boolean(), "{k}: {m}");
        assert!(m[k]["method"].is_string(), "{k}: {m}");
    }
    assert!(m["latency_p50_ms"]["ci95"].is_array(), "{m}");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("experiments");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("report.json"),
        serde_json::to_vec_pretty(&rep).unwrap(),
    )
    .unwrap();
    println!("report: {}", out.join("report.json").display());

    // The HTML report, and a screenshot when Chromium is installed.
    let page = http(ports.admin, "GET", "/admin/experiments/ab", &[], b"");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let html = page.text();
    assert!(
        html.contains("<svg") && html.contains("Latency CDF") && html.contains("Cold-start rate")
    );
    assert!(!html.contains("<script"));
    assert_eq!(
        http(ports.admin, "GET", "/admin/experiments/nope", &[], b"").status,
        404
    );
    screenshot(ports.admin, &out);

    // Weights change on reload: both arms keep their stats.
    write_atomic(
        &file,
        &text
            .replace(
                "weight = 50 },\n  { name = \"b\"",
                "weight = 80 },\n  { name = \"b\"",
            )
            .replace(
                "policy = \"sess\", weight = 50",
                "policy = \"sess\", weight = 20",
            ),
    );
    let r = http(ports.admin, "POST", "/admin/reload", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let after = arm_calls(&report(ports.admin), "ab");
    assert_eq!(after["a"], a, "arm a lost its stats on a weight change");
    assert_eq!(after["b"], b, "arm b lost its stats on a weight change");
    let rep = report(ports.admin);
    assert_eq!(rep["experiments"][0]["arms"][0]["weight"], 80);

    // Rename arm b to c: a keeps its stats, c starts from zero.
    write_atomic(
        &file,
        &text.replace(
            "name = \"b\", policy = \"sess\"",
            "name = \"c\", policy = \"sess\"",
        ),
    );
    assert_eq!(
        http(ports.admin, "POST", "/admin/reload", &[], b"").status,
        200
    );
    let after = arm_calls(&report(ports.admin), "ab");
    assert_eq!(after["a"], a);
    assert_eq!(after["c"], 0);
    assert!(!after.contains_key("b"));

    // Stop the experiment: the route's policy decides again.
    write_atomic(&file, &exp_cfg(&ports, &[wp1, wp2], "", ""));
    assert_eq!(
        http(ports.admin, "POST", "/admin/reload", &[], b"").status,
        200
    );
    assert!(report(ports.admin)["experiments"]
        .as_array()
        .unwrap()
        .is_empty());
    let r = http(
        ports.listen,
        "GET",
        "/run/hello",
        &[("cookie", "sid=user-1")],
        b"",
    );
    assert_eq!(r.header("x-ol-policy"), Some("round-robin"));

    // Start a new one with random assignment, built-in arms only.
    let random = "[[experiments]]\nname = \"rr-vs-random\"\nfunctions = [\"hel*\"]\nassign = \"random\"\narms = [\n  { name = \"rr\", policy = \"round-robin\", weight = 1 },\n  { name = \"rnd\", policy = \"random\", weight = 1 },\n]\n";
    write_atomic(&file, &exp_cfg(&ports, &[wp1, wp2], random, ""));
    assert_eq!(
        http(ports.admin, "POST", "/admin/reload", &[], b"").status,
        200
    );
    let mut c = Client::new(ports.listen);
    let mut seen: HashMap<String, u64> = HashMap::new();
    for _ in 0..200 {
        let r = c.call("GET", "/run/hello", &[], b"").unwrap();
        assert_eq!(r.status, 200);
        *seen
            .entry(r.header("x-ol-policy").unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.contains_key("rr-vs-random/rr:round-robin"), "{seen:?}");
    assert!(seen.contains_key("rr-vs-random/rnd:random"), "{seen:?}");
    let rep = wait_calls(ports.admin, "rr-vs-random", 200);
    assert_eq!(arm_calls(&rep, "rr-vs-random").values().sum::<u64>(), 200);
}

#[test]
fn invalid_experiments_are_refused_with_field_names() {
    let ports = Ports::new();
    let dir = temp_dir("badexp");
    let bad = exp_cfg(
        &ports,
        &[],
        &AB.replace(
            "policy = \"sess\", weight = 50",
            "policy = \"sess\", weight = 20000",
        ),
        "",
    );
    let file = dir.join("bad.toml");
    std::fs::write(&file, &bad).unwrap();
    let out = std::process::Command::new(proxy_bin())
        .args(["--config", file.to_str().unwrap(), "--check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("experiments.0.arms.1.weight"), "{e}");
    let one = AB.replace("  { name = \"b\", policy = \"sess\", weight = 50 },\n", "");
    std::fs::write(&file, exp_cfg(&ports, &[], &one, "")).unwrap();
    let out = std::process::Command::new(proxy_bin())
        .args(["--config", file.to_str().unwrap(), "--check"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("experiments.0.arms: 1 arm(s)"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Renders the HTML report in headless Chromium and writes a PNG to the
/// test's output directory (skipped when Chromium is not installed).
fn screenshot(admin: u16, out: &std::path::Path) {
    let bin = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {b}")])
                .output()
                .is_ok_and(|o| o.status.success())
        });
    let Some(bin) = bin else {
        println!("screenshot: skipped (no chromium; scripts/setup.sh installs it)");
        return;
    };
    let png = out.join("experiment-ab.png");
    let _ = std::fs::remove_file(&png);
    // A fresh profile each run: a stale lock would hand the job to a
    // (gone) earlier instance.
    let profile = out.join(format!("chromium-profile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    let mut child = std::process::Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            &format!("--user-data-dir={}", profile.display()),
            &format!("--screenshot={}", png.display()),
            "--window-size=1200,1100",
            &format!("http://127.0.0.1:{admin}/admin/experiments/ab"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    // The PNG may land just after the launcher exits.
    let mut len = 0;
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        len = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
        if len > 10_000 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(&profile);
    assert!(len > 10_000, "no screenshot at {}", png.display());
    println!("screenshot: {}", png.display());
}
