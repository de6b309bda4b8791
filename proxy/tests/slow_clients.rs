//! Slow and idle clients against the real `ol-proxy` (and a real
//! `ol-worker`): a slowloris of a few thousand half-sent request heads
//! while a normal client is served, heads closed after
//! `timeouts.header_read_ms`, connections beyond `limits.max_connections`
//! refused at once, idle keep-alive connections closed after
//! `timeouts.idle_keepalive_ms`, and three pipelined requests answered in
//! order. Loopback only; every wait is bounded (the slowloris test takes
//! about 10 s).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::*;

/// Raises this process's soft RLIMIT_NOFILE to at least `want` (up to the
/// hard limit); the proxy and worker started afterwards inherit it.
/// Returns the soft limit in force.
fn raise_nofile(want: u64) -> u64 {
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        if r.rlim_cur < want {
            r.rlim_cur = want.min(r.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        }
        r.rlim_cur
    }
}

fn connect(port: u16) -> std::io::Result<TcpStream> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    TcpStream::connect_timeout(&addr, Duration::from_secs(5))
}

/// A client connection watched for its end.
struct Conn {
    s: TcpStream,
    opened: Instant,
    /// When the proxy closed it (EOF or reset).
    closed: Option<Instant>,
    got: Vec<u8>,
}

/// Opens `n` connections that each send `head` (an unfinished request
/// head) and never more.
fn open_slow(port: u16, n: usize, head: &[u8]) -> Vec<Conn> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = match connect(port) {
            Ok(s) => s,
            Err(e) => panic!("slow connection {i} of {n}: {e}"),
        };
        // A refused connection may already be closed: a failed write is
        // seen as its end below.
        let _ = s.write_all(head);
        s.set_nonblocking(true).unwrap();
        out.push(Conn {
            s,
            opened: Instant::now(),
            closed: None,
            got: Vec::new(),
        });
    }
    out
}

/// Polls every open connection once for up to `wait` and records which
/// ended (EOF or error) and what they received.
fn poll_conns(conns: &mut [Conn], wait: Duration) {
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let mut idx: Vec<usize> = Vec::new();
    for (i, c) in conns.iter().enumerate() {
        if c.closed.is_none() {
            fds.push(libc::pollfd {
                fd: c.s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            idx.push(i);
        }
    }
    if fds.is_empty() {
        std::thread::sleep(wait);
        return;
    }
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as _, wait.as_millis() as i32) };
    if n <= 0 {
        return;
    }
    let now = Instant::now();
    for (k, f) in fds.iter().enumerate() {
        if f.revents == 0 {
            continue;
        }
        let c = &mut conns[idx[k]];
        let mut buf = [0u8; 4096];
        loop {
            match c.s.read(&mut buf) {
                Ok(0) => {
                    c.closed = Some(now);
                    break;
                }
                Ok(m) => c.got.extend_from_slice(&buf[..m]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    c.closed = Some(now);
                    break;
                }
            }
        }
    }
}

/// Polls until `until` or until every connection has ended.
fn watch(conns: &mut [Conn], until: Instant) {
    while Instant::now() < until && conns.iter().any(|c| c.closed.is_none()) {
        poll_conns(conns, Duration::from_millis(20));
    }
}

/// One normal request on a fresh connection; its status and latency.
fn timed_hello(port: u16, who: &str) -> (u16, Duration, String) {
    let t = Instant::now();
    let body = format!("{{\"name\": \"{who}\"}}");
    match try_http(port, "POST", "/run/hello", &[], body.as_bytes()) {
        Ok(r) => (r.status, t.elapsed(), r.text()),
        Err(e) => (0, t.elapsed(), e.to_string()),
    }
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

const HEADER_MS: u64 = 5000;
const CAP: usize = 3000;
const SLOW: usize = 2600;
const MORE: usize = 500;

#[test]
fn slowloris_is_cut_off_capped_and_a_normal_client_is_served() {
    let nofile = raise_nofile(16_384);
    assert!(
        nofile >= 8192,
        "RLIMIT_NOFILE is {nofile}; this test needs 8192 (two ends of ~3100 connections)"
    );
    let wp = free_port();
    let _w = start_worker(wp);
    let ports = Ports::new();
    let extra = format!(
        "[health]\ninterval_ms = 200\nrise = 1\nfall = 2\n\n[timeouts]\nheader_read_ms = {HEADER_MS}\n\n[limits]\nmax_connections = {CAP}\n"
    );
    let proxy = start_proxy(&config(&ports, &[wp], &extra), &ports);
    wait_healthy(ports.admin, "", 1);
    let (status, _, text) = timed_hello(ports.listen, "warm");
    assert_eq!(status, 200, "{text}");

    // A slowloris: half of the connections stop inside the request line
    // (shorter than the 24-byte h2c preface pingora waits for), half
    // inside the headers.
    let started = Instant::now();
    let mut slow = open_slow(ports.listen, SLOW / 2, b"GET /run/he");
    slow.extend(open_slow(
        ports.listen,
        SLOW - SLOW / 2,
        b"GET /run/hello HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ",
    ));
    let opened_in = started.elapsed();

    // A normal client during the slowloris: fresh connections, answered.
    let mut lat = Vec::new();
    for i in 0..20 {
        let (status, t, text) = timed_hello(ports.listen, &format!("n{i}"));
        assert_eq!(
            status, 200,
            "normal request {i} during the slowloris: {text}"
        );
        assert!(
            text.contains(&format!("Hello, n{i}")),
            "normal request {i}: {text}"
        );
        lat.push(t);
        poll_conns(&mut slow, Duration::from_millis(10));
    }
    let p50 = percentile(&mut lat, 0.5);
    let max = percentile(&mut lat, 1.0);
    println!(
        "slowloris: {SLOW} half-sent heads opened in {opened_in:?}; 20 normal requests: p50 {p50:?}, max {max:?}"
    );
    assert!(
        max < Duration::from_secs(2),
        "a normal request took {max:?} during the slowloris"
    );
    let early: Vec<Duration> = slow
        .iter()
        .filter_map(|c| c.closed.map(|t| t - c.opened))
        .collect();
    assert!(
        early.is_empty(),
        "{} slow connections closed before the cap was reached: {:?}",
        early.len(),
        &early[..early.len().min(5)]
    );

    // Beyond the cap: the extra connections are refused at once (503 and
    // closed), not held.
    let mut more = open_slow(
        ports.listen,
        MORE,
        b"GET /run/hello HTTP/1.1\r\nHost: 127.0.0.1\r\n",
    );
    let t = Instant::now() + Duration::from_millis(1000);
    while Instant::now() < t {
        poll_conns(&mut more, Duration::from_millis(20));
        poll_conns(&mut slow, Duration::from_millis(0));
    }
    let refused: Vec<&Conn> = more.iter().filter(|c| c.closed.is_some()).collect();
    let expect = SLOW + MORE - CAP;
    println!(
        "cap {CAP}: {} of {MORE} connections past {SLOW} refused",
        refused.len()
    );
    assert!(
        refused.len() + 20 >= expect && refused.len() <= expect + 20,
        "{} of {MORE} connections refused; expected about {expect} (cap {CAP}, {SLOW} held)",
        refused.len()
    );
    let slowest = refused
        .iter()
        .map(|c| c.closed.unwrap() - c.opened)
        .max()
        .unwrap();
    assert!(
        slowest < Duration::from_millis(1000),
        "a refused connection took {slowest:?} to close"
    );
    for c in &refused {
        let text = String::from_utf8_lossy(&c.got);
        assert!(
            c.got.is_empty() || text.starts_with("HTTP/1.1 503 "),
            "refused with {text:?}"
        );
    }
    assert!(
        refused.iter().any(|c| c.got.starts_with(b"HTTP/1.1 503 ")),
        "no refused connection got a 503"
    );
    // Closed at once (an error here) is a refusal too.
    if let Ok(r) = try_http(ports.listen, "GET", "/run/hello", &[], b"") {
        assert_eq!(r.status, 503, "at the cap: {}", r.text());
    }

    // Every held head is closed after header_read_ms (give or take the
    // time it took to open them), none before.
    slow.extend(more.into_iter().filter(|c| c.closed.is_none()));
    watch(
        &mut slow,
        started + opened_in + Duration::from_millis(HEADER_MS + 3000),
    );
    let open = slow.iter().filter(|c| c.closed.is_none()).count();
    assert_eq!(
        open,
        0,
        "{open} of {} half-sent heads still open {:?} after they started (header_read_ms {HEADER_MS})",
        slow.len(),
        started.elapsed()
    );
    let lives: Vec<Duration> = slow.iter().map(|c| c.closed.unwrap() - c.opened).collect();
    let shortest = *lives.iter().min().unwrap();
    let longest = *lives.iter().max().unwrap();
    println!(
        "half-sent heads closed after {shortest:?} to {longest:?} (header_read_ms {HEADER_MS})"
    );
    assert!(
        shortest >= Duration::from_millis(HEADER_MS - 200),
        "a half-sent head was closed after {shortest:?}, before header_read_ms"
    );
    for c in &slow {
        let text = String::from_utf8_lossy(&c.got);
        assert!(
            c.got.is_empty() || text.starts_with("HTTP/1.1 408 "),
            "a timed-out head got {text:?}"
        );
    }
    drop(slow);

    // And the proxy serves normally afterwards.
    let (status, t, text) = timed_hello(ports.listen, "after");
    assert_eq!(status, 200, "{text}");
    assert!(t < Duration::from_secs(2), "{t:?}");
    let log = proxy.log_text();
    assert!(
        log.contains(&format!("limits.max_connections {CAP}")),
        "the start-up log names the cap: {log}"
    );
}

/// Reads responses off `s` until `n` complete ones have arrived, the
/// connection closes, or `timeout`. Content-Length bodies only (the
/// worker's answers).
fn read_responses(s: &mut TcpStream, n: usize, timeout: Duration) -> Vec<Resp> {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let end = Instant::now() + timeout;
    let mut raw = Vec::new();
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    while out.len() < n && Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(m) => raw.extend_from_slice(&buf[..m]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        // Split off every complete response.
        while let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if raw.len() < end + 4 + len {
                break;
            }
            let one: Vec<u8> = raw.drain(..end + 4 + len).collect();
            out.push(parse(&one).unwrap());
        }
    }
    out
}

#[test]
fn pipelined_requests_are_all_answered_in_order() {
    let wp = free_port();
    let _w = start_worker(wp);
    let ports = Ports::new();
    let extra = "[health]\ninterval_ms = 200\nrise = 1\nfall = 2\n";
    let _p = start_proxy(&config(&ports, &[wp], extra), &ports);
    wait_healthy(ports.admin, "", 1);
    assert_eq!(
        http(ports.listen, "POST", "/run/hello", &[], b"{}").status,
        200
    );

    let mut s = connect(ports.listen).unwrap();
    s.set_nodelay(true).unwrap();
    let mut bytes = Vec::new();
    for who in ["a", "b", "c"] {
        let body = format!("{{\"name\": \"{who}\"}}");
        bytes.extend_from_slice(
            format!(
                "POST /run/hello HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    // GET without a body too, between them and after them.
    bytes.extend_from_slice(b"GET /run/hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    // One write: all four requests reach the proxy in one read.
    s.write_all(&bytes).unwrap();
    let got = read_responses(&mut s, 4, Duration::from_secs(10));
    let summary: Vec<String> = got
        .iter()
        .map(|r| format!("{} {}", r.status, r.text().trim()))
        .collect();
    assert_eq!(
        got.len(),
        4,
        "4 pipelined requests, {} answers: {summary:?}",
        got.len()
    );
    for (r, who) in got.iter().zip(["a", "b", "c"]) {
        assert_eq!(r.status, 200, "{summary:?}");
        assert!(
            r.text().contains(&format!("Hello, {who}")),
            "answers out of order: {summary:?}"
        );
    }
    assert_eq!(got[3].status, 200, "{summary:?}");
    // The connection is still usable afterwards.
    s.write_all(b"POST /run/hello HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 15\r\n\r\n{\"name\": \"d\"}  ")
        .unwrap();
    let got = read_responses(&mut s, 1, Duration::from_secs(10));
    assert_eq!(got.len(), 1, "no answer after the pipelined batch");
    assert!(got[0].text().contains("Hello, d"), "{}", got[0].text());
}

#[test]
fn idle_keepalive_and_trickled_heads_are_closed() {
    let wp = free_port();
    let _w = start_worker(wp);
    let ports = Ports::new();
    let extra = "[health]\ninterval_ms = 200\nrise = 1\nfall = 2\n\n[timeouts]\nheader_read_ms = 2000\nidle_keepalive_ms = 1000\n";
    let _p = start_proxy(&config(&ports, &[wp], extra), &ports);
    wait_healthy(ports.admin, "", 1);

    // Idle: one request, then nothing; closed after about 1 s.
    let mut s = connect(ports.listen).unwrap();
    s.write_all(b"GET /run/hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let got = read_responses(&mut s, 1, Duration::from_secs(10));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].status, 200);
    assert_eq!(got[0].header("connection"), Some("keep-alive"));
    let idle = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    let r = s.read(&mut buf);
    let waited = idle.elapsed();
    let ended = match &r {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    assert!(
        ended,
        "idle keep-alive connection (idle_keepalive_ms 1000) still open after {waited:?}: {r:?}"
    );
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_millis(3000),
        "idle keep-alive connection closed after {waited:?} (idle_keepalive_ms 1000)"
    );

    // Trickled: a byte every 250 ms never finishes a head within
    // header_read_ms (2 s) and is closed then, although no single read
    // waits long.
    let mut s = connect(ports.listen).unwrap();
    s.set_nodelay(true).unwrap();
    let start = Instant::now();
    let head = b"GET /run/hello HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Trickle: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed = None;
    for b in head.iter() {
        if s.write_all(std::slice::from_ref(b)).is_err() {
            closed = Some(start.elapsed());
            break;
        }
        s.set_nonblocking(true).unwrap();
        match s.read(&mut buf) {
            Ok(0) => {
                closed = Some(start.elapsed());
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Ok(_) => {}
            Err(_) => {
                closed = Some(start.elapsed());
                break;
            }
        }
        s.set_nonblocking(false).unwrap();
        std::thread::sleep(Duration::from_millis(250));
    }
    let closed = closed.expect("a trickled head was still open after 75 bytes over ~19 s");
    assert!(
        closed >= Duration::from_millis(1800) && closed < Duration::from_millis(4000),
        "trickled head closed after {closed:?} (header_read_ms 2000)"
    );

    // A normal keep-alive client that comes back within the idle time
    // keeps its connection.
    let mut s = connect(ports.listen).unwrap();
    for i in 0..3 {
        s.write_all(b"GET /run/hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let got = read_responses(&mut s, 1, Duration::from_secs(10));
        assert_eq!(got.len(), 1, "request {i} on a kept connection");
        assert_eq!(got[0].status, 200);
        std::thread::sleep(Duration::from_millis(300));
    }
}
