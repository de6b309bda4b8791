//! Admission at the balancer (issue 15), end to end with a real proxy,
//! real workers and the example functions: calls no worker can take yet
//! wait in the hold instead of failing, a worker's refusal (nothing ran)
//! goes to the next worker or waits, a handler that ran is never sent
//! twice, and every error says who wrote it.

mod common;

use std::time::{Duration, Instant};

use common::*;

const FAST_HEALTH: &str = "[health]\ninterval_ms = 100\nrise = 1\nfall = 1\n";

/// Calls sent before any worker was up all got 503 at once. Now they wait
/// in the hold and are served when the worker's first health check passes.
#[test]
fn calls_sent_before_any_worker_is_up_are_held_then_served() {
    let wp = free_port();
    let ports = Ports::new();
    let _p = start_proxy(&config(&ports, &[wp], FAST_HEALTH), &ports);
    let listen = ports.listen;
    let calls: Vec<_> = (0..10)
        .map(|_| {
            std::thread::spawn(move || {
                let t = Instant::now();
                let r = http(listen, "POST", "/run/hello", &[], b"{}");
                (r.status, r.text(), t.elapsed())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    let _w = start_worker(wp);
    for c in calls {
        let (status, text, took) = c.join().unwrap();
        assert_eq!(status, 200, "{text}");
        assert!(
            took >= Duration::from_millis(900),
            "served before the worker was up? {took:?}"
        );
    }
    let held = metric(ports.admin, "ol_proxy_hold_held_total{function=\"hello\"}");
    assert_eq!(held, 10.0);
    assert_eq!(
        metric(ports.admin, "ol_proxy_hold_waiting{function=\"hello\"}"),
        0.0
    );
}

/// The hold is bounded: past `hold_ms` the call gets 503 with Retry-After,
/// and past `hold_queue` waiting calls one more gets it at once.
#[test]
fn the_hold_ends_at_its_deadline_and_its_queue_bound() {
    let ports = Ports::new();
    let extra = format!("{FAST_HEALTH}[admission]\nhold_ms = 3000\nhold_queue = 1\n");
    let _p = start_proxy(&config(&ports, &[free_port()], &extra), &ports);
    let listen = ports.listen;
    let first = std::thread::spawn(move || {
        let t = Instant::now();
        (http(listen, "POST", "/run/hello", &[], b"{}"), t.elapsed())
    });
    // The first call is held once it shows on /metrics.
    let end = Instant::now() + Duration::from_secs(2);
    let waiting = "ol_proxy_hold_waiting{function=\"hello\"} 1";
    while !http(ports.admin, "GET", "/metrics", &[], b"")
        .text()
        .contains(waiting)
    {
        assert!(Instant::now() < end, "the first call is not held");
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = Instant::now();
    let second = http(listen, "POST", "/run/hello", &[], b"{}");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "a full hold answers at once"
    );
    assert_eq!(second.status, 503, "{}", second.text());
    assert!(
        second.text().contains("already waiting"),
        "{}",
        second.text()
    );
    assert_eq!(second.header("retry-after"), Some("1"));
    let (r, took) = first.join().unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("admission.hold_ms"), "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("x-ol-error"), Some("proxy"));
    assert!(took >= Duration::from_millis(2900), "{took:?}");
    assert_eq!(
        metric(
            ports.admin,
            "ol_proxy_hold_refused_total{function=\"hello\",reason=\"full\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            ports.admin,
            "ol_proxy_hold_refused_total{function=\"hello\",reason=\"timeout\"}"
        ),
        1.0
    );
}

/// The 5xx calls a worker counted at `/stats`.
fn worker_5xx(port: u16) -> u64 {
    let s = http(port, "GET", "/stats", &[], b"").text();
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    v["status.5xx"].as_u64().unwrap_or(0)
}

/// Two workers that each run one instance of a function and queue none:
/// of six concurrent 400 ms calls, four got the worker's 429 although the
/// other worker was free a moment later. Now a refusal (`x-ol-refused`,
/// nothing ran) is retried on the next worker or waits in the hold for a
/// slot, whatever the method: all six are served. A handler that ran and
/// failed is not sent again: the workers counted one failed call per call.
#[test]
fn refusals_are_served_elsewhere_and_a_failed_handler_runs_once() {
    let cfg_dir = temp_dir("admission-worker");
    let worker_cfg = cfg_dir.join("worker.toml");
    std::fs::write(
        &worker_cfg,
        "[instances]\nmax_per_function = 1\nqueue_per_function = 0\n",
    )
    .unwrap();
    let reg = registry();
    let wp = [free_port(), free_port()];
    let _w: Vec<Proc> = wp
        .iter()
        .map(|p| {
            start_worker_with(
                *p,
                reg.to_str().unwrap(),
                &["--config", worker_cfg.to_str().unwrap()],
            )
        })
        .collect();
    let ports = Ports::new();
    // Health checks slower than any wait here: a held call is woken by a
    // finished call, not by a health round.
    let extra = "[health]\ninterval_ms = 60000\nrise = 1\nfall = 1\n[admission]\nhold_ms = 30000\n[routing]\ndefault_policy = \"round-robin\"\n";
    let _p = start_proxy(&config(&ports, &wp, extra), &ports);
    wait_healthy(ports.admin, "", 2);
    // Warm one instance on each worker (cold starts are not the point).
    for _ in 0..4 {
        assert_eq!(
            http(ports.listen, "POST", "/run/sleep", &[], b"{\"ms\": 1}").status,
            200
        );
    }
    let listen = ports.listen;
    let calls: Vec<_> = (0..6)
        .map(|_| {
            std::thread::spawn(move || http(listen, "POST", "/run/sleep", &[], b"{\"ms\": 400}"))
        })
        .collect();
    for c in calls {
        let r = c.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let refused = metric(
        ports.admin,
        "ol_proxy_route_refused_total{route=\"default\"}",
    );
    assert!(
        refused >= 1.0,
        "no call was refused: the test did not load the workers"
    );

    let before: u64 = wp.iter().map(|p| worker_5xx(*p)).sum();
    for _ in 0..4 {
        let r = http(ports.listen, "POST", "/run/fail", &[], b"{}");
        assert_eq!(r.status, 500, "{}", r.text());
        assert_eq!(r.header("x-ol-error"), Some("function"));
    }
    let after: u64 = wp.iter().map(|p| worker_5xx(*p)).sum();
    assert_eq!(after - before, 4, "a handler that ran was sent again");
}

/// Every error response says who wrote it, and `/metrics` counts them so.
#[test]
fn errors_say_which_level_wrote_them() {
    let wp = [free_port()];
    let _w = start_worker(wp[0]);
    let ports = Ports::new();
    let _p = start_proxy(&config(&ports, &wp, FAST_HEALTH), &ports);
    wait_healthy(ports.admin, "", 1);
    let proxy = http(ports.listen, "GET", "/nowhere", &[], b"");
    assert_eq!(proxy.status, 404);
    assert_eq!(proxy.header("x-ol-error"), Some("proxy"));
    let worker = http(ports.listen, "POST", "/run/no-such-function", &[], b"{}");
    assert_eq!(worker.status, 404, "{}", worker.text());
    assert_eq!(worker.header("x-ol-error"), Some("worker"));
    let function = http(ports.listen, "POST", "/run/fail", &[], b"{}");
    assert_eq!(function.status, 500);
    assert_eq!(function.header("x-ol-error"), Some("function"));
    // A function that kills its own runtime failed itself, not the worker
    // (so it cannot get workers ejected as failing).
    let crashed = http(ports.listen, "POST", "/run/crash", &[], b"{}");
    assert_eq!(crashed.status, 502, "{}", crashed.text());
    assert_eq!(crashed.header("x-ol-error"), Some("function"));
    let ok = http(ports.listen, "POST", "/run/hello", &[], b"{}");
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-ol-error"), None);
    for (level, n) in [("proxy", 1.0), ("worker", 1.0), ("function", 2.0)] {
        let prefix = format!("ol_proxy_error_responses_total{{level=\"{level}\"}}");
        assert_eq!(metric(ports.admin, &prefix), n, "{level}");
    }
}

/// `[[admission.limits]]`: over a function's concurrency limit, or its
/// rate for one tenant, a call gets 429 with `Retry-After` from the proxy
/// and never reaches a worker; another tenant has its own bucket.
#[test]
fn concurrency_and_rate_limits_answer_429_with_retry_after() {
    let wp = [free_port()];
    let _w = start_worker(wp[0]);
    let ports = Ports::new();
    let extra = format!(
        "{FAST_HEALTH}[[admission.limits]]\nfunctions = [\"sle*\"]\nmax_concurrent = 2\n\
         [[admission.limits]]\nfunctions = [\"hello\"]\nkey = {{ header = \"x-tenant\" }}\n\
         rate_per_s = 1\nburst = 5\n"
    );
    let _p = start_proxy(&config(&ports, &wp, &extra), &ports);
    wait_healthy(ports.admin, "", 1);
    let listen = ports.listen;
    let calls: Vec<_> = (0..6)
        .map(|_| {
            std::thread::spawn(move || http(listen, "POST", "/run/sleep", &[], br#"{"ms": 1500}"#))
        })
        .collect();
    let mut by_status = std::collections::BTreeMap::new();
    for c in calls {
        let r = c.join().unwrap();
        if r.status == 429 {
            assert_eq!(r.header("retry-after"), Some("1"));
            assert_eq!(r.header("x-ol-error"), Some("proxy"));
            assert!(r.text().contains("max_concurrent"), "{}", r.text());
        }
        *by_status.entry(r.status).or_insert(0) += 1;
    }
    assert_eq!(by_status, [(200, 2), (429, 4)].into_iter().collect());
    // Warm `hello` (another tenant's bucket) so the timed loop is fast.
    let warm = [("x-tenant", "warm-up")];
    assert_eq!(http(listen, "POST", "/run/hello", &warm, b"{}").status, 200);
    let served_before = worker_2xx(wp[0]);

    let t = Instant::now();
    let (mut ok, mut over) = (0u64, 0u64);
    for _ in 0..8 {
        let r = http(
            ports.listen,
            "POST",
            "/run/hello",
            &[("x-tenant", "a")],
            b"{}",
        );
        match r.status {
            200 => ok += 1,
            429 => {
                over += 1;
                let after: u32 = r.header("retry-after").unwrap().parse().unwrap();
                assert!(after >= 1, "{after}");
                assert!(r.text().contains("rate_per_s"), "{}", r.text());
            }
            s => panic!("{s}: {}", r.text()),
        }
    }
    // The burst of 5, and at most one more per second the loop took.
    let refilled = t.elapsed().as_secs_f64().ceil() as u64;
    assert!(
        (5..=5 + refilled).contains(&ok) && ok + over == 8,
        "{ok} served, {over} refused in {:?}",
        t.elapsed()
    );
    assert!(over > 0 || refilled >= 3, "nothing refused: {ok} served");
    assert_eq!(
        http(
            ports.listen,
            "POST",
            "/run/hello",
            &[("x-tenant", "b")],
            b"{}"
        )
        .status,
        200,
        "another tenant has its own bucket"
    );
    assert_eq!(
        worker_2xx(wp[0]) - served_before,
        ok + 1,
        "a refused call never reached the worker"
    );
    assert_eq!(
        metric(
            ports.admin,
            "ol_proxy_limited_total{limit=\"hello\",reason=\"rate\"}"
        ),
        over as f64
    );
    assert_eq!(
        metric(
            ports.admin,
            "ol_proxy_limited_total{limit=\"sle*\",reason=\"concurrency\"}"
        ),
        4.0
    );
}

/// Calls the worker has answered 2xx, from its `/stats`.
fn worker_2xx(port: u16) -> u64 {
    let s = http(port, "GET", "/stats", &[], b"").text();
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    v["status.2xx"].as_u64().unwrap_or(0)
}
