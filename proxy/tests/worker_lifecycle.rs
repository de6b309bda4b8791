//! Workers going and coming (issue 15, points 4 and 5), end to end with a
//! real proxy, real workers and the example functions: a worker that
//! drains refuses new calls (the proxy sends them elsewhere and takes it
//! out at once) while its open calls finish; a rolling restart of both
//! quickstart workers under load loses no call; a worker whose calls fail
//! the platform's way is ejected, for longer while it keeps failing, and
//! serves again once it recovers.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// SIGTERM used to close the worker's port at once. Now it drains: while
/// a call is open (and for `drain_ms`), `/status` says `draining` with
/// 503 and a new call is refused with `x-ol-refused: draining`; the open
/// call finishes, then the worker exits.
#[test]
fn a_draining_worker_refuses_new_calls_and_finishes_open_ones() {
    let port = free_port();
    let mut w = start_worker_with(port, registry().to_str().unwrap(), &["--drain-ms", "1500"]);
    assert_eq!(
        http(port, "GET", "/status", &[], b"").text().trim(),
        "ready"
    );
    let open = std::thread::spawn(move || http(port, "POST", "/run/sleep", &[], br#"{"ms": 800}"#));
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    w.signal(libc::SIGTERM);
    wait_draining(port);
    let s = http(port, "GET", "/status", &[], b"");
    assert_eq!((s.status, s.text().trim()), (503, "draining"));
    let r = http(port, "POST", "/run/hello", &[], b"{}");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("x-ol-refused"), Some("draining"));
    assert_eq!(r.header("x-ol-error"), Some("worker"));
    assert!(r.text().contains("draining"), "{}", r.text());
    let done = open.join().unwrap();
    assert_eq!(done.status, 200, "the open call finished: {}", done.text());
    let status = w
        .wait_exit(Duration::from_secs(8))
        .expect("exits after draining");
    assert!(status.success(), "{status:?}");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(6),
        "drain_ms is the least time it kept answering: {took:?}"
    );
}

/// The proxy takes a draining worker out of every policy at its first
/// refusal, with no health check involved (checks every minute here): of
/// ten calls, one meets the refusal and is sent to the other worker, the
/// other nine go there directly. Before, the worker's port closed and the
/// calls were retried on connect errors, one per call, until the health
/// checks' fall count.
#[test]
fn the_proxy_takes_a_draining_worker_out_at_its_first_refusal() {
    let (pa, pb) = (free_port(), free_port());
    let a = start_worker_with(pa, registry().to_str().unwrap(), &["--drain-ms", "5000"]);
    let _b = start_worker(pb);
    let ports = Ports::new();
    let extra = "[health]\ninterval_ms = 60000\nrise = 1\nfall = 1\n[routing]\ndefault_policy = \"round-robin\"\n";
    let _p = start_proxy(&config(&ports, &[pa, pb], extra), &ports);
    wait_healthy(ports.admin, "", 2);
    for _ in 0..4 {
        assert_eq!(
            http(ports.listen, "POST", "/run/hello", &[], b"{}").status,
            200
        );
    }
    a.signal(libc::SIGTERM);
    wait_draining(pa);
    let b_key = format!("127.0.0.1:{pb}");
    for i in 0..10 {
        let r = http(ports.listen, "POST", "/run/hello", &[], b"{}");
        assert_eq!(r.status, 200, "call {i}: {}", r.text());
        assert_eq!(r.header("x-ol-worker"), Some(b_key.as_str()), "call {i}");
    }
    let a_key = format!("127.0.0.1:{pa}");
    let refused = metric(
        ports.admin,
        &format!("ol_proxy_worker_refused_total{{worker=\"{a_key}\"}}"),
    );
    assert_eq!(refused, 1.0, "one refusal took the worker out");
    assert_eq!(
        metric(
            ports.admin,
            &format!("ol_proxy_worker_draining{{worker=\"{a_key}\"}}")
        ),
        1.0
    );
    let status = http(ports.admin, "GET", "/admin/status", &[], b"").text();
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let wa = v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["address"] == a_key.as_str())
        .unwrap();
    assert_eq!(
        (wa["healthy"].as_bool(), wa["draining"].as_bool()),
        (Some(false), Some(true))
    );
}

/// Waits until the worker at `port` says it is draining (its `/status`).
fn wait_draining(port: u16) {
    let end = Instant::now() + Duration::from_secs(5);
    while http(port, "GET", "/status", &[], b"").status != 503 {
        assert!(Instant::now() < end, "worker {port} never started draining");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// With health checks off, a worker that drained is still asked how it
/// is (and only it), so after its restart it gets calls again. Before, it
/// stayed out for good: only a health check could bring it back.
#[test]
fn with_health_checks_off_a_drained_worker_returns_after_its_restart() {
    let (pa, pb) = (free_port(), free_port());
    let reg = registry();
    let mut a = start_worker_with(pa, reg.to_str().unwrap(), &["--drain-ms", "300"]);
    let _b = start_worker(pb);
    let ports = Ports::new();
    let extra = "[health]\nenabled = false\ninterval_ms = 100\nrise = 1\n\
                 [routing]\ndefault_policy = \"round-robin\"\n";
    let _p = start_proxy(&config(&ports, &[pa, pb], extra), &ports);
    wait_healthy(ports.admin, "", 2);
    let (a_key, b_key) = (format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}"));
    a.signal(libc::SIGTERM);
    wait_draining(pa);
    for i in 0..4 {
        let r = http(ports.listen, "POST", "/run/hello", &[], b"{}");
        assert_eq!(r.status, 200, "call {i}: {}", r.text());
        assert_eq!(r.header("x-ol-worker"), Some(b_key.as_str()), "call {i}");
    }
    a.wait_exit(Duration::from_secs(8))
        .expect("a exits after draining");
    let _a = start_worker(pa);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http(ports.listen, "POST", "/run/hello", &[], b"{}");
        assert_eq!(r.status, 200, "{}", r.text());
        if r.header("x-ol-worker") == Some(a_key.as_str()) {
            break;
        }
        assert!(
            Instant::now() < end,
            "the restarted worker never got a call again"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A rolling restart of both quickstart workers (SIGTERM one, wait for
/// its restart and health, then the other) under a steady load of
/// concurrent calls loses none of them.
#[test]
fn a_rolling_restart_of_the_quickstart_workers_under_load_loses_no_call() {
    let _ = worker_bin();
    let ports = Ports::new();
    let listen = format!("127.0.0.1:{}", ports.listen);
    let admin = format!("127.0.0.1:{}", ports.admin);
    let dir = temp_dir("rolling");
    let p = start_proxy_args(&["--listen", &listen, "--admin", &admin], &ports, &dir);
    wait_healthy(ports.admin, "", 2);
    let stop = Arc::new(AtomicBool::new(false));
    let port = ports.listen;
    let load: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let r = http(port, "POST", "/run/sleep", &[], br#"{"ms": 20}"#);
                    if r.status == 200 {
                        ok += 1;
                    } else {
                        failed.push(format!("{} {}", r.status, r.text().trim()));
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // Each round stops a worker not restarted yet (pids say which: a
    // restart is a new child), so both slots are restarted once.
    let mut restarted: Vec<i32> = Vec::new();
    for round in 0..2 {
        let kids = children(p.pid());
        assert_eq!(kids.len(), 2, "round {round}: {kids:?}");
        let victim = *kids.iter().find(|k| !restarted.contains(k)).unwrap();
        unsafe {
            libc::kill(victim, libc::SIGTERM);
        }
        // Restarted by the supervisor, then healthy again.
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let now = children(p.pid());
            if now.len() == 2 && !now.contains(&victim) && healthy_count(ports.admin, "") == 2 {
                restarted.extend(now.iter().filter(|k| !kids.contains(k)));
                break;
            }
            assert!(
                Instant::now() < end,
                "round {round}: not back: {}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for l in load {
        let (o, f) = l.join().unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} of {} calls lost: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert!(
        ok > 100,
        "the load was too light to show anything: {ok} calls"
    );
    assert_eq!(
        metric(ports.admin, "ol_proxy_local_worker_restarts_total"),
        2.0
    );
}

/// A worker whose every call fails the platform's way (its code store is
/// down: its own 502) stayed in rotation. Now it is ejected after
/// `consecutive_failures`, gets calls again when the ejection ends, is
/// ejected for twice as long at the next failure, and serves again once
/// its store is back.
#[test]
fn a_worker_failing_every_call_is_ejected_longer_each_time_and_returns_when_it_recovers() {
    let (good, bad, store) = (free_port(), free_port(), free_port());
    let _g = start_worker(good);
    let remote = format!("http://127.0.0.1:{store}/registry");
    let _b = start_worker_with(bad, &remote, &[]);
    let ports = Ports::new();
    let extra = "[health]\ninterval_ms = 100\nrise = 1\nfall = 1\n\
        [outliers]\nconsecutive_failures = 3\neject_ms = 1500\n\
        [routing]\ndefault_policy = \"round-robin\"\n";
    let p = start_proxy(&config(&ports, &[good, bad], extra), &ports);
    wait_healthy(ports.admin, "", 2);
    let bad_key = format!("127.0.0.1:{bad}");
    let call = || http(ports.listen, "POST", "/run/hello", &[], b"{}");
    let mut failures = 0;
    for _ in 0..20 {
        let r = call();
        if r.status != 200 {
            assert_eq!(r.status, 502, "{}", r.text());
            assert_eq!(r.header("x-ol-error"), Some("worker"));
            assert_eq!(r.header("x-ol-worker"), Some(bad_key.as_str()));
            failures += 1;
        }
    }
    assert_eq!(failures, 3, "ejected after consecutive_failures");
    let ejections = format!("ol_proxy_worker_ejections_total{{worker=\"{bad_key}\"}}");
    assert_eq!(metric(ports.admin, &ejections), 1.0);
    assert_eq!(
        metric(
            ports.admin,
            &format!("ol_proxy_worker_ejected{{worker=\"{bad_key}\"}}")
        ),
        1.0
    );
    // The ejection ends: one more failure (a probe) ejects it again, for
    // twice as long.
    std::thread::sleep(Duration::from_millis(1800));
    let mut failures = 0;
    for _ in 0..10 {
        if call().status != 200 {
            failures += 1;
        }
    }
    assert_eq!(failures, 1, "on probation one failure ejects it");
    assert_eq!(metric(ports.admin, &ejections), 2.0);
    assert!(
        p.log_text().contains("ejected for 3000 ms"),
        "{}",
        p.log_text()
    );
    // Its store comes back; once the ejection ends it serves again.
    let _s = start_worker(store);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let r = call();
        assert_eq!(r.status, 200, "{}", r.text());
        if r.header("x-ol-worker") == Some(bad_key.as_str()) {
            break;
        }
        assert!(Instant::now() < end, "the recovered worker never served");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(metric(ports.admin, &ejections), 2.0);
}

/// A function that kills its own runtime on every call fails itself
/// (`x-ol-error: function`): however often it is called, no worker is
/// ejected, so a hostile function cannot take workers out of rotation.
#[test]
fn a_crashing_function_never_gets_a_worker_ejected() {
    let (a, b) = (free_port(), free_port());
    let (_a, _b) = (start_worker(a), start_worker(b));
    let ports = Ports::new();
    let extra = "[health]\ninterval_ms = 100\nrise = 1\nfall = 1\n\
        [outliers]\nconsecutive_failures = 2\n\
        [routing]\ndefault_policy = \"round-robin\"\n";
    let _p = start_proxy(&config(&ports, &[a, b], extra), &ports);
    wait_healthy(ports.admin, "", 2);
    for _ in 0..8 {
        let r = http(ports.listen, "POST", "/run/crash", &[], b"{}");
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.header("x-ol-error"), Some("function"));
    }
    for port in [a, b] {
        let key = format!("ol_proxy_worker_ejections_total{{worker=\"127.0.0.1:{port}\"}}");
        assert_eq!(metric(ports.admin, &key), 0.0);
    }
    assert_eq!(healthy_count(ports.admin, ""), 2);
}
