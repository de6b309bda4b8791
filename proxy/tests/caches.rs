//! The caches at the proxy, with the real `ol-proxy` and real `ol-worker`
//! processes whose `--registry` is the proxy: the code store front, the
//! result cache (hits, coalescing, invalidation, errors, oversize) and
//! code-locality over shared packages.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// An `ol-worker` whose code store is `registry`, re-checked every 100 ms.
fn start_worker_with(port: u16, registry: &str) -> Proc {
    common::start_worker_with(
        port,
        registry,
        &[
            "--registry-cache-ms",
            "100",
            "--registry-token",
            "test-token",
        ],
    )
}

fn write_fn(store: &Path, name: &str, f_py: &str, ol_yaml: &str) {
    let d = store.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("f.py"), f_py).unwrap();
    if !ol_yaml.is_empty() {
        std::fs::write(d.join("ol.yaml"), ol_yaml).unwrap();
    }
}

/// The code store API is on the admin listener, behind `code_store.token`.
fn reg(admin: u16, method: &str, path: &str, body: &[u8]) -> common::Resp {
    http(
        admin,
        method,
        path,
        &[("authorization", "Bearer test-token")],
        body,
    )
}

const CACHED: &str = "cache: {ttl_ms: 60000, methods: [GET, POST]}\n";

/// A backing store with the test functions.
fn store() -> PathBuf {
    let s = temp_dir("store");
    write_fn(
        &s,
        "counter",
        "def f(event):\n    return {'v': 1, 'event': event}\n",
        CACHED,
    );
    write_fn(
        &s,
        "slow",
        "import time\ndef f(event):\n    time.sleep(0.5)\n    return 'slow'\n",
        CACHED,
    );
    write_fn(
        &s,
        "boom",
        "def f(event):\n    raise ValueError('no')\n",
        CACHED,
    );
    write_fn(
        &s,
        "big",
        "def f(event):\n    return 'x' * 200000\n",
        CACHED,
    );
    write_fn(&s, "hello", "def f(event):\n    return 'hi'\n", "");
    for n in ["np_a", "np_b", "np_c", "np_d"] {
        let src = format!(
            "try:\n    import numpy\nexcept ImportError:\n    numpy = None\nfrom json import dumps\ndef f(event):\n    return '{n}'\n"
        );
        write_fn(&s, n, &src, "");
    }
    s
}

struct Env {
    _workers: Vec<Proc>,
    wp: Vec<u16>,
    ports: Ports,
    _proxy: Proc,
    store: PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// A proxy whose code store is a fresh directory, and `n` workers whose
/// registry is the proxy.
fn setup(n: usize, extra: &str) -> Env {
    let store = store();
    let wp: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let ports = Ports::new();
    let extra = format!(
        "[health]\ninterval_ms = 100\nrise = 1\nfall = 1\n\n[code_store]\ntoken = \"test-token\"\nbacking = \"{}\"\nttl_ms = 200\n\n[result_cache]\nmax_entry_bytes = 100000\nsettle_ms = 300\n\n{extra}",
        store.display()
    );
    let proxy = start_proxy(&config(&ports, &wp, &extra), &ports);
    let registry = format!("http://127.0.0.1:{}/registry", ports.admin);
    let workers = wp
        .iter()
        .map(|p| start_worker_with(*p, &registry))
        .collect();
    wait_healthy(ports.admin, "", n);
    Env {
        _workers: workers,
        wp,
        ports,
        _proxy: proxy,
        store,
    }
}

/// Calls run by all workers (their `/stats` `run.cnt`).
fn runs(env: &Env) -> u64 {
    env.wp
        .iter()
        .map(|p| {
            let r = http(*p, "GET", "/stats", &[], b"");
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            v["run.cnt"].as_u64().unwrap()
        })
        .sum()
}

fn targz(dir: &Path) -> Vec<u8> {
    let out = Command::new("tar")
        .arg("-czf")
        .arg("-")
        .arg("-C")
        .arg(dir)
        .arg(".")
        .output()
        .expect("tar");
    assert!(out.status.success());
    out.stdout
}

fn metric(admin: u16, line_start: &str) -> f64 {
    let m = http(admin, "GET", "/metrics", &[], b"").text();
    m.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in /metrics"))
}

#[test]
fn code_store_front_serves_workers_and_revalidates() {
    let env = setup(1, "");
    let p = env.ports.listen;
    let adm = env.ports.admin;
    // A worker runs code it fetched from the proxy.
    let r = http(p, "POST", "/run/hello", &[], b"{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "\"hi\"");
    assert!(r.header("x-ol-cache").is_none(), "not a cacheable function");

    let list = reg(adm, "GET", "/registry/", b"");
    assert_eq!(list.status, 200);
    let names: Vec<String> = serde_json::from_slice(&list.body).unwrap();
    assert!(names.contains(&"counter".to_string()) && names.contains(&"np_a".to_string()));
    let cfg = reg(adm, "GET", "/registry/counter/config", b"");
    assert_eq!(cfg.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&cfg.body).unwrap();
    assert_eq!(v["cache"]["ttl_ms"], 60000);
    let pkg = reg(adm, "GET", "/registry/hello.tar.gz", b"");
    assert_eq!(pkg.status, 200);
    assert_eq!(&pkg.body[..2], &[0x1f, 0x8b]);
    let v1 = pkg.header("x-ol-version").unwrap().to_string();
    assert_eq!(
        reg(adm, "GET", "/registry/hello", b"").header("x-ol-version"),
        Some(v1.as_str())
    );

    // The backing copy changes: within the TTL the cached one is served,
    // after it the new one, to the proxy's clients and to the worker.
    write_fn(
        &env.store,
        "hello",
        "def f(event):\n    return 'hi again'\n",
        "",
    );
    std::thread::sleep(Duration::from_millis(400));
    let v2 = reg(adm, "GET", "/registry/hello.tar.gz", b"")
        .header("x-ol-version")
        .unwrap()
        .to_string();
    assert_ne!(v1, v2, "a changed backing copy is a new version");
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let r = http(p, "POST", "/run/hello", &[], b"{}");
        if r.text() == "\"hi again\"" {
            break;
        }
        assert!(
            Instant::now() < end,
            "the worker never ran the new code: {}",
            r.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A vanished backing copy: 404 after the TTL.
    std::fs::remove_dir_all(env.store.join("hello")).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(reg(adm, "GET", "/registry/hello.tar.gz", b"").status, 404);

    // Bad uploads leave the store as it was.
    let before = std::fs::read_dir(&env.store).unwrap().count();
    let r = reg(adm, "POST", "/registry/counter", b"not a tarball");
    assert_eq!(r.status, 400, "{}", r.text());
    let r = reg(adm, "POST", "/registry/bad..name", b"x");
    assert_eq!(r.status, 400, "{}", r.text());
    let no_fpy = temp_dir("nofpy");
    std::fs::write(no_fpy.join("f.py"), "x").unwrap();
    std::fs::write(no_fpy.join("ol.yaml"), "cache: {ttl_ms: 0}\n").unwrap();
    let r = reg(adm, "POST", "/registry/counter", &targz(&no_fpy));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("cache.ttl_ms"), "{}", r.text());
    let after = std::fs::read_dir(&env.store).unwrap().count();
    assert_eq!(before, after);
    assert!(!env.store.join("counter.tar.gz").exists());
    let _ = std::fs::remove_dir_all(&no_fpy);

    // Deletes go through.
    assert_eq!(reg(adm, "DELETE", "/registry/np_d", b"").status, 204);
    assert_eq!(reg(adm, "GET", "/registry/np_d", b"").status, 404);
    assert!(!env.store.join("np_d").exists());
}

#[test]
fn result_cache_hits_coalesces_and_invalidates() {
    let env = setup(1, "");
    let p = env.ports.listen;
    let adm = env.ports.admin;

    // Miss, then hits that never reach the worker.
    let first = http(p, "GET", "/run/counter?q=1", &[], b"");
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-ol-cache"), Some("miss"));
    let n = runs(&env);
    for _ in 0..5 {
        let r = http(p, "GET", "/run/counter?q=1", &[], b"");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ol-cache"), Some("hit"));
        assert_eq!(r.body, first.body);
        assert_eq!(r.header("content-type"), first.header("content-type"));
    }
    assert_eq!(runs(&env), n, "hits do not reach the worker");
    // The query and the body are part of the key.
    assert_eq!(
        http(p, "GET", "/run/counter?q=2", &[], b"").header("x-ol-cache"),
        Some("miss")
    );
    let a = http(p, "POST", "/run/counter", &[], br#"{"a": 1}"#);
    assert_eq!(a.header("x-ol-cache"), Some("miss"));
    let a2 = http(p, "POST", "/run/counter", &[], br#"{"a": 1}"#);
    assert_eq!(a2.header("x-ol-cache"), Some("hit"));
    assert_eq!(a.body, a2.body);
    assert!(a.text().contains("\"a\": 1"), "{}", a.text());
    assert_eq!(
        http(p, "POST", "/run/counter", &[], br#"{"a": 2}"#).header("x-ol-cache"),
        Some("miss")
    );

    // Coalescing: 8 identical concurrent calls, one upstream call.
    let n = runs(&env);
    let threads: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(move || http(p, "GET", "/run/slow", &[], b"")))
        .collect();
    let rs: Vec<Resp> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for r in &rs {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "\"slow\"");
    }
    let misses = rs
        .iter()
        .filter(|r| r.header("x-ol-cache") == Some("miss"))
        .count();
    assert_eq!(misses, 1, "one call went upstream");
    assert_eq!(runs(&env), n + 1, "one upstream call for 8 identical calls");

    // An error is never cached.
    let n = runs(&env);
    for _ in 0..2 {
        let r = http(p, "GET", "/run/boom", &[], b"");
        assert_eq!(r.status, 500, "{}", r.text());
        assert_eq!(r.header("x-ol-cache"), Some("miss"));
    }
    assert_eq!(runs(&env), n + 2);

    // An oversize response is served whole but not cached.
    let n = runs(&env);
    for _ in 0..2 {
        let r = http(p, "GET", "/run/big", &[], b"");
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 200_002, "served whole");
        assert!(!r.truncated);
        assert_eq!(r.header("x-ol-cache"), Some("miss"));
    }
    assert_eq!(runs(&env), n + 2);

    // A new version never serves old results: upload new code through the
    // proxy; the next call is a miss with the new result, then it is cached.
    let src = temp_dir("v2");
    std::fs::write(src.join("f.py"), "def f(event):\n    return {'v': 2}\n").unwrap();
    std::fs::write(src.join("ol.yaml"), CACHED).unwrap();
    let up = reg(adm, "POST", "/registry/counter", &targz(&src));
    assert_eq!(up.status, 201, "{}", up.text());
    let _ = std::fs::remove_dir_all(&src);
    // Past the workers' registry re-check (100 ms) and settle_ms (300 ms).
    std::thread::sleep(Duration::from_millis(500));
    let r = http(p, "GET", "/run/counter?q=1", &[], b"");
    assert_eq!(r.header("x-ol-cache"), Some("miss"));
    assert_eq!(r.text(), r#"{"v": 2}"#);
    // The new version's results are stored once workers had settle_ms to
    // pick it up (counted from when the proxy first loaded it).
    std::thread::sleep(Duration::from_millis(400));
    let r = http(p, "GET", "/run/counter?q=1", &[], b"");
    assert_eq!(r.header("x-ol-cache"), Some("miss"));
    let r = http(p, "GET", "/run/counter?q=1", &[], b"");
    assert_eq!(r.header("x-ol-cache"), Some("hit"));
    assert_eq!(r.text(), r#"{"v": 2}"#);

    assert!(
        metric(
            env.ports.admin,
            "ol_proxy_result_cache_requests_total{outcome=\"hit\"} "
        ) >= 13.0
    );
    assert!(
        metric(
            env.ports.admin,
            "ol_proxy_result_cache_fills_total{result=\"size\"} "
        ) >= 2.0
    );
    assert!(metric(env.ports.admin, "ol_proxy_result_cache_entries ") >= 1.0);
    assert!(metric(env.ports.admin, "ol_proxy_function_cache_hit_ratio ") > 0.0);
}

#[test]
fn shared_packages_meet_on_one_worker() {
    let env = setup(
        3,
        "[routing]\ndefault_policy = \"loc\"\n\n[[routing.policies]]\nname = \"loc\"\nkind = \"code-locality\"\nover = \"package\"\n",
    );
    let p = env.ports.listen;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3 {
        for f in ["np_a", "np_b", "np_c", "np_d"] {
            let r = http(p, "POST", &format!("/run/{f}"), &[], b"{}");
            assert_eq!(r.status, 200, "{f}: {}", r.text());
            assert_eq!(r.header("x-ol-policy"), Some("loc"));
            seen.insert(r.header("x-ol-worker").unwrap().to_string());
        }
    }
    assert_eq!(
        seen.len(),
        1,
        "functions sharing numpy meet on one worker: {seen:?}"
    );
    // The import index learned it.
    let w = seen.into_iter().next().unwrap();
    let n = metric(
        env.ports.admin,
        &format!("ol_proxy_import_index_entries{{worker=\"{w}\"}} "),
    );
    assert!(n >= 5.0, "4 functions and numpy: {n}");
}

#[test]
fn http_backing_store_is_fronted() {
    // The backing store is another ol-worker's /registry over HTTP.
    let store = store();
    let bp = free_port();
    let _backing = start_worker_with(bp, store.to_str().unwrap());
    let wp = free_port();
    let ports = Ports::new();
    let extra = format!(
        "[health]\ninterval_ms = 100\nrise = 1\nfall = 1\n\n[code_store]\ntoken = \"test-token\"\nbacking = \"http://127.0.0.1:{bp}/registry\"\nttl_ms = 200\n"
    );
    let _proxy = start_proxy(&config(&ports, &[wp], &extra), &ports);
    let registry = format!("http://127.0.0.1:{}/registry", ports.admin);
    let _worker = start_worker_with(wp, &registry);
    wait_healthy(ports.admin, "", 1);
    let p = ports.listen;
    let adm = ports.admin;

    let names: Vec<String> =
        serde_json::from_slice(&reg(adm, "GET", "/registry/", b"").body).unwrap();
    assert!(names.contains(&"counter".to_string()), "{names:?}");
    let pkg = reg(adm, "GET", "/registry/counter.tar.gz", b"");
    assert_eq!(pkg.status, 200);
    assert_eq!(&pkg.body[..2], &[0x1f, 0x8b]);
    assert_eq!(reg(adm, "GET", "/registry/nothere", b"").status, 404);
    let r = http(p, "GET", "/run/counter", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-ol-cache"), Some("miss"));
    assert_eq!(
        http(p, "GET", "/run/counter", &[], b"").header("x-ol-cache"),
        Some("hit")
    );

    // Uploads are checked at the proxy, then passed on.
    assert_eq!(reg(adm, "POST", "/registry/newfn", b"junk").status, 400);
    assert!(!store.join("newfn.tar.gz").exists());
    let src = temp_dir("newfn");
    std::fs::write(src.join("f.py"), "def f(event):\n    return 'new'\n").unwrap();
    std::fs::write(src.join("ol.yaml"), "").unwrap();
    let up = reg(adm, "POST", "/registry/newfn", &targz(&src));
    assert_eq!(up.status, 201, "{}", up.text());
    assert!(
        store.join("newfn.tar.gz").exists(),
        "passed on to the backing store"
    );
    let r = http(p, "POST", "/run/newfn", &[], b"{}");
    assert_eq!(r.text(), "\"new\"");
    assert_eq!(reg(adm, "DELETE", "/registry/newfn", b"").status, 204);
    assert_eq!(reg(adm, "GET", "/registry/newfn", b"").status, 404);
    let _ = std::fs::remove_dir_all(&src);
    let _ = std::fs::remove_dir_all(&store);
}

/// Polls `/metrics` until the line starting with `line_start` reads at
/// least `min` (15 s at most); returns the last value.
fn wait_metric(admin: u16, line_start: &str, min: f64) -> f64 {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let m = http(admin, "GET", "/metrics", &[], b"").text();
        let v = m
            .lines()
            .find_map(|l| l.strip_prefix(line_start))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        if v >= min || Instant::now() > end {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn worker_zygotes_on_metrics_and_the_import_index_off() {
    // One worker with zygotes on (its root zygote starts at once); the
    // proxy reads its /stats every 200 ms, and has the import index off.
    let store = store();
    let wp = free_port();
    let ports = Ports::new();
    let extra = format!(
        "[health]\ninterval_ms = 100\nrise = 1\nfall = 1\nstats_interval_ms = 200\n\n[code_store]\ntoken = \"test-token\"\nbacking = \"{}\"\nwarm_ms = 0\n",
        store.display()
    );
    let _proxy = start_proxy(&config(&ports, &[wp], &extra), &ports);
    let wcfg = temp_dir("zygote-cfg").join("worker.toml");
    std::fs::write(&wcfg, "[zygotes]\nenabled = true\n").unwrap();
    let _worker = common::start_worker_with(
        wp,
        store.to_str().unwrap(),
        &["--config", wcfg.to_str().unwrap()],
    );
    wait_healthy(ports.admin, "", 1);
    let w = format!("{{worker=\"127.0.0.1:{wp}\"}} ");
    let live = wait_metric(ports.admin, &format!("ol_proxy_worker_zygotes{w}"), 1.0);
    assert!(
        live >= 1.0,
        "the root zygote, from the worker's /stats: {live}"
    );
    let created = metric(
        ports.admin,
        &format!("ol_proxy_worker_zygotes_created_total{w}"),
    );
    assert!(created >= 1.0, "{created}");

    let r = http(ports.listen, "POST", "/run/hello", &[], b"{}");
    assert_eq!(r.status, 200, "{}", r.text());
    let timing = r.header("x-ol-timing").unwrap_or("").to_string();
    assert!(timing.ends_with("start=zygote"), "{timing}");
    assert_eq!(
        metric(
            ports.admin,
            "ol_proxy_worker_starts_total{start=\"zygote\"} "
        ),
        1.0
    );
    // warm_ms = 0: the run was seen, but nothing enters the import index.
    assert_eq!(
        metric(ports.admin, &format!("ol_proxy_import_index_entries{w}")),
        0.0
    );
    let _ = std::fs::remove_dir_all(&store);
    let _ = std::fs::remove_dir_all(wcfg.parent().unwrap());
}

#[test]
fn the_code_store_is_not_public_and_needs_its_token() {
    let env = setup(1, "");
    let (p, adm) = (env.ports.listen, env.ports.admin);
    // The public listener does not serve the code store at all.
    for (m, path) in [
        ("GET", "/registry/"),
        ("GET", "/registry/counter/config"),
        ("GET", "/registry/hello.tar.gz"),
        ("DELETE", "/registry/hello"),
    ] {
        let r = http(p, m, path, &[], b"");
        assert_ne!(r.status, 200, "{m} {path} on the public port: {}", r.text());
        assert_ne!(r.status, 204, "{m} {path} on the public port");
        assert!(r.header("x-ol-version").is_none());
    }
    // On the admin listener, not without the token (nor the admin token's place).
    let before = snapshot_dir(&env.store);
    for headers in [&[][..], &[("authorization", "Bearer wrong")][..]] {
        for (m, path, body) in [
            ("GET", "/registry/", &b""[..]),
            ("GET", "/registry/counter/config", b""),
            ("GET", "/registry/hello.tar.gz", b""),
            ("POST", "/registry/hello", b"junk"),
            ("DELETE", "/registry/hello", b""),
        ] {
            let r = http(adm, m, path, headers, body);
            assert_eq!(r.status, 401, "{m} {path}: {}", r.text());
        }
    }
    assert_eq!(snapshot_dir(&env.store), before);
    assert_eq!(reg(adm, "GET", "/registry/hello.tar.gz", b"").status, 200);
    // An upload whose requirements would fail every call is refused now.
    let src = temp_dir("unpinned");
    std::fs::write(src.join("f.py"), "def f(e):\n    return 1\n").unwrap();
    std::fs::write(src.join("requirements.txt"), "requests>=2\n").unwrap();
    let r = reg(adm, "POST", "/registry/unpinned", &targz(&src));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("is not pinned"), "{}", r.text());
    assert_eq!(snapshot_dir(&env.store), before);
    // A proxy with a code store and no token does not start.
    let t = temp_dir("notoken");
    let cfg = t.join("p.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{}\"\n[admin]\nlisten = \"127.0.0.1:{}\"\n[workers]\nstatic = [\"127.0.0.1:1\"]\n[code_store]\nbacking = \"{}\"\n",
            free_port(),
            free_port(),
            env.store.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ol-proxy"))
        .arg("--config")
        .arg(&cfg)
        .arg("--check")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("code_store.token"), "{err}");
}

/// Every file under `dir` with its bytes.
fn snapshot_dir(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}
