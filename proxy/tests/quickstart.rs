//! The embedded quickstart config: `ol-proxy` starts two local workers,
//! proxies `hello` to them, drains on SIGTERM and leaves no orphans (also
//! when killed with -9).

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Pids whose parent is `ppid`.
fn children(ppid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let parent: i32 = after.split(' ').nth(1).unwrap().parse().unwrap();
        if parent == ppid {
            out.push(pid);
        }
    }
    out
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let after = &s[s.rfind(')').unwrap() + 2..];
            !after.starts_with('Z')
        })
        .unwrap_or(false)
}

fn wait_gone(pids: &[i32], t: Duration) -> bool {
    let end = Instant::now() + t;
    while Instant::now() < end {
        if pids.iter().all(|p| !alive(*p)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn start_quickstart() -> (Ports, Proc) {
    let _ = worker_bin(); // fail early with a clear message
    let ports = Ports::new();
    let listen = format!("127.0.0.1:{}", ports.listen);
    let admin = format!("127.0.0.1:{}", ports.admin);
    let dir = temp_dir("quickstart");
    let p = start_proxy_args(&["--listen", &listen, "--admin", &admin], &ports, &dir);
    wait_healthy(ports.admin, "", 2);
    (ports, p)
}

#[test]
fn quickstart_proxies_hello_and_stops_its_workers() {
    let (ports, mut p) = start_quickstart();
    let r = http(
        ports.listen,
        "POST",
        "/run/hello",
        &[],
        br#"{"name": "quickstart"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "\"Hello, quickstart!\"");
    assert!(r.header("x-ol-worker").unwrap().starts_with("127.0.0.1:"));
    let kids = children(p.pid());
    assert_eq!(kids.len(), 2, "two local workers: {kids:?}");

    // A request in flight when SIGTERM arrives still completes.
    let port = ports.listen;
    let slow =
        std::thread::spawn(move || http(port, "POST", "/run/sleep", &[], br#"{"ms": 1200}"#));
    std::thread::sleep(Duration::from_millis(400));
    let t = Instant::now();
    p.signal(libc::SIGTERM);
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200, "drained: {}", r.text());
    let status = p
        .wait_exit(Duration::from_secs(8))
        .expect("exits after draining");
    assert!(status.success(), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    assert!(wait_gone(&kids, Duration::from_secs(3)), "workers stopped");
    // The public port is closed.
    assert!(try_http(ports.listen, "GET", "/run/hello", &[], b"").is_err());
}

#[test]
fn sigint_also_drains_and_stops() {
    let (ports, mut p) = start_quickstart();
    assert_eq!(
        http(ports.listen, "POST", "/run/hello", &[], b"{}").status,
        200
    );
    let kids = children(p.pid());
    p.signal(libc::SIGINT);
    assert!(p.wait_exit(Duration::from_secs(8)).is_some());
    assert!(wait_gone(&kids, Duration::from_secs(3)));
}

#[test]
fn kill_9_leaves_no_orphans() {
    let (_ports, mut p) = start_quickstart();
    let kids = children(p.pid());
    assert_eq!(kids.len(), 2);
    p.signal(libc::SIGKILL);
    p.wait_exit(Duration::from_secs(5)).unwrap();
    assert!(
        wait_gone(&kids, Duration::from_secs(5)),
        "PR_SET_PDEATHSIG kills the workers"
    );
    // kill -9 leaves the proxy no chance to remove its work directory.
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("ol-proxy-{}", p.pid())));
}
