//! Bad input, one test each: malformed requests, oversize heads and bodies,
//! bad names, unknown paths, misbehaving workers (small fake upstreams),
//! and an invalid config at start.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const FAST_HEALTH: &str = "[health]\ninterval_ms = 100\nrise = 1\nfall = 1\n";

/// A proxy in front of one fake upstream that answers `{}` with 200.
fn ok_upstream(s: &mut TcpStream, _req: &[u8]) {
    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-up: 1\r\n\r\n{}");
}

fn proxy_to(port: u16, extra: &str) -> (Ports, Proc) {
    proxy_to_top(port, "", extra)
}

/// `top`: top-level keys (they must come before any table).
fn proxy_to_top(port: u16, top: &str, extra: &str) -> (Ports, Proc) {
    let ports = Ports::new();
    let text = config(&ports, &[port], &format!("{FAST_HEALTH}{extra}"))
        .replace("threads = 2\n", &format!("threads = 2\n{top}"));
    let p = start_proxy(&text, &ports);
    wait_healthy(ports.admin, "", 1);
    (ports, p)
}

fn status_of(raw: &[u8]) -> Option<u16> {
    parse(raw).map(|r| r.status)
}

#[test]
fn malformed_request_line_is_400() {
    let f = fake_upstream(ok_upstream);
    let (ports, _p) = proxy_to(f.port, "");
    let out = raw(
        ports.listen,
        b"GET /run/hello HTTP/1.1 trailing-junk\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(
        status_of(&out),
        Some(400),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    // Short binary junk: closed without a response (never a 2xx).
    let out = raw(
        ports.listen,
        b"\x00\x01junk\r\n\r\n",
        Duration::from_secs(5),
    )
    .unwrap_or_default();
    assert!(status_of(&out).is_none_or(|s| s >= 400));
    assert_eq!(f.conns.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn malformed_header_is_400() {
    let f = fake_upstream(ok_upstream);
    let (ports, _p) = proxy_to(f.port, "");
    let out = raw(
        ports.listen,
        b"GET /run/hello HTTP/1.1\r\nHost: x\r\nNo Colon Here\r\n\r\n",
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(status_of(&out), Some(400));
    let out = raw(
        ports.listen,
        b"POST /run/hello HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(status_of(&out), Some(400));
}

#[test]
fn oversize_headers_are_refused() {
    let f = fake_upstream(ok_upstream);
    let (ports, _p) = proxy_to(f.port, "[limits]\nmax_header_bytes = 4096\n");
    let big = "a".repeat(8000);
    let r = http(ports.listen, "GET", "/run/hello", &[("x-big", &big)], b"");
    assert_eq!(r.status, 431);
    assert!(r.text().contains("limit is 4096"), "{}", r.text());
    // Beyond pingora's own limit (1 MiB): 400.
    let huge = "a".repeat(1_100_000);
    let r = try_http(ports.listen, "GET", "/run/hello", &[("x-huge", &huge)], b"");
    if let Ok(r) = r {
        assert!(r.status == 400 || r.status == 431, "{}", r.status);
    }
    assert_eq!(f.conns.load(std::sync::atomic::Ordering::Relaxed), 0);
    // A normal request still works.
    assert_eq!(
        http(ports.listen, "GET", "/run/hello", &[], b"").status,
        200
    );
}

#[test]
fn oversize_body_for_content_inspection_is_413() {
    let f = fake_upstream(ok_upstream);
    let extra = "[limits]\ninspect_body_bytes = 100\n[routing]\n[[routing.policies]]\nname = \"db\"\nkind = \"db-affinity\"\nkey = { json = \"k\" }\n[[routing.routes]]\nfunctions = [\"*\"]\npolicy = \"db\"\n";
    let (ports, _p) = proxy_to(f.port, extra);
    let body = format!(r#"{{"k": "x", "pad": "{}"}}"#, "z".repeat(200));
    let r = http(ports.listen, "POST", "/run/f", &[], body.as_bytes());
    assert_eq!(r.status, 413);
    assert_eq!(r.text().lines().count(), 1);
    // Chunked (no length known up front) too.
    let mut req = b"POST /run/f HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    req.extend_from_slice(format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len()).as_bytes());
    let out = raw(ports.listen, &req, Duration::from_secs(5)).unwrap();
    assert_eq!(status_of(&out), Some(413));
    // Within the limit it is forwarded.
    let r = http(ports.listen, "POST", "/run/f", &[], br#"{"k": "x"}"#);
    assert_eq!(r.status, 200);
}

#[test]
fn invalid_names_are_400_and_unknown_paths_404() {
    let f = fake_upstream(ok_upstream);
    let (ports, _p) = proxy_to(f.port, "");
    for path in ["/run/", "/run/a%20b", "/run/..", "/run/a*b"] {
        let r = http(ports.listen, "GET", path, &[], b"");
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.text().lines().count(), 1);
        assert!(r.text().starts_with("bad function name"), "{}", r.text());
        assert_eq!(r.header("x-ol-worker"), Some("none"));
    }
    let long = format!("/run/{}", "a".repeat(200));
    assert_eq!(http(ports.listen, "GET", &long, &[], b"").status, 400);
    for path in ["/", "/status", "/runner", "/registry/x"] {
        let r = http(ports.listen, "GET", path, &[], b"");
        assert_eq!(r.status, 404, "{path}");
        assert!(r.text().contains("/run/<name>"));
    }
    assert_eq!(f.conns.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn unknown_function_is_the_workers_404() {
    let port = free_port();
    let _w = start_worker(port);
    let (ports, _p) = proxy_to(port, "");
    let r = http(ports.listen, "POST", "/run/no-such-fn", &[], b"{}");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("no-such-fn"), "{}", r.text());
}

#[test]
fn worker_closing_before_the_response_is_502_and_post_is_not_retried() {
    fn close_early(_s: &mut TcpStream, _req: &[u8]) {}
    let f = fake_upstream(close_early);
    let (ports, _p) = proxy_to_top(f.port, "retries = 3\n", "");
    let r = http(ports.listen, "POST", "/run/x", &[], b"{}");
    assert_eq!(r.status, 502);
    assert_eq!(r.text().lines().count(), 1);
    assert!(
        r.text().contains("failed before a complete response"),
        "{}",
        r.text()
    );
    assert_eq!(
        r.header("x-ol-worker"),
        Some(format!("127.0.0.1:{}", f.port).as_str())
    );
    assert_eq!(
        f.conns.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "POST sent once"
    );
}

#[test]
fn worker_closing_mid_response_truncates_the_body() {
    fn half(s: &mut TcpStream, _req: &[u8]) {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789");
        let _ = s.flush();
        std::thread::sleep(Duration::from_millis(50));
    }
    let f = fake_upstream(half);
    let (ports, _p) = proxy_to(f.port, "");
    let out = raw(
        ports.listen,
        b"GET /run/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    )
    .unwrap();
    let r = parse(&out).expect("a response head");
    assert_eq!(r.status, 200, "the head was already sent");
    assert!(r.truncated, "the client must see the body end early");
    assert!(r.body.len() < 100);
}

#[test]
fn worker_that_never_answers_times_out_with_504() {
    fn silent(_s: &mut TcpStream, _req: &[u8]) {
        std::thread::sleep(Duration::from_secs(5));
    }
    let f = fake_upstream(silent);
    let (ports, _p) = proxy_to(f.port, "[timeouts]\nread_ms = 500\n");
    let t = Instant::now();
    let r = http(ports.listen, "GET", "/run/x", &[], b"");
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("did not answer in time"), "{}", r.text());
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[test]
fn total_timeout_caps_a_slow_body() {
    fn drip(s: &mut TcpStream, _req: &[u8]) {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
        for _ in 0..40 {
            if s.write_all(b"1\r\na\r\n").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = s.write_all(b"0\r\n\r\n");
    }
    let f = fake_upstream(drip);
    let (ports, _p) = proxy_to(f.port, "[timeouts]\nread_ms = 1000\ntotal_ms = 800\n");
    let t = Instant::now();
    let out = raw(
        ports.listen,
        b"GET /run/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    )
    .unwrap();
    let r = parse(&out).unwrap();
    assert!(r.truncated, "cut off by total_ms");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[test]
fn invalid_config_exits_non_zero_with_file_line_and_field() {
    let dir = temp_dir("badcfg");
    let cfg = dir.join("bad.toml");
    std::fs::write(&cfg, "listen = \"127.0.0.1:1\"\n\n[health]\nfall = 0\n").unwrap();
    let out = Command::new(proxy_bin())
        .args(["--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:4: health.fall: must be greater than 0",
            cfg.display()
        )),
        "{err}"
    );
    std::fs::write(&cfg, "[workers]\nstatic = [\"not an address\"]\n").unwrap();
    let out = Command::new(proxy_bin())
        .args(["--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:2:"), "{err}");
    std::fs::write(&cfg, "[routing]\ndefault_policy = \"nope\"\n").unwrap();
    let out = Command::new(proxy_bin())
        .args(["--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:2: routing.default_policy:"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
