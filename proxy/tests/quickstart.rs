//! The embedded quickstart config: `ol-proxy` starts two local workers,
//! proxies `hello` to them, drains on SIGTERM and leaves no orphans (also
//! when killed with -9).

mod common;

use std::time::{Duration, Instant};

use common::*;

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

/// Ctrl-C at a terminal signals the whole foreground process group. The
/// local workers are in a group of their own, so only the proxy hears
/// it: it drains (the open call finishes), then stops them, and restarts
/// none on the way out. Before, the workers got SIGINT too and the
/// supervisor started them again during the drain.
#[test]
fn ctrl_c_to_the_process_group_drains_and_restarts_no_worker() {
    let (ports, mut p) = start_quickstart();
    let kids = children(p.pid());
    assert_eq!(kids.len(), 2);
    let port = ports.listen;
    let slow =
        std::thread::spawn(move || http(port, "POST", "/run/sleep", &[], br#"{"ms": 1500}"#));
    std::thread::sleep(Duration::from_millis(400));
    // SAFETY: kill(2) on the proxy's own process group (it leads it).
    unsafe {
        libc::kill(-p.pid(), libc::SIGINT);
    }
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200, "drained: {}", r.text());
    assert!(p.wait_exit(Duration::from_secs(8)).is_some());
    assert!(wait_gone(&kids, Duration::from_secs(3)));
    let log = p.log_text();
    assert!(!log.contains("started again"), "{log}");
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

/// The local workers' ports, from the proxy's log ("local worker 0: ... on
/// 127.0.0.1:<port>").
fn local_ports(p: &Proc) -> Vec<u16> {
    let log = p.log_text();
    let mut ports: Vec<(usize, u16)> = log
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("local worker ")? + "local worker ".len()..];
            let (i, rest) = rest.split_once(": ")?;
            let port = rest.rsplit_once(" on 127.0.0.1:")?.1.trim();
            Some((i.parse().ok()?, port.parse().ok()?))
        })
        .collect();
    ports.sort();
    ports.dedup();
    ports.into_iter().map(|(_, p)| p).collect()
}

#[test]
fn a_killed_local_worker_is_logged_reaped_restarted_and_serves_again() {
    let (ports, p) = start_quickstart();
    let kids = children(p.pid());
    assert_eq!(kids.len(), 2, "{kids:?}");
    let worker_ports = local_ports(&p);
    assert_eq!(worker_ports.len(), 2, "{}", p.log_text());
    unsafe {
        libc::kill(kids[0], libc::SIGKILL);
    }
    // Reaped (no zombie left) and started again: two children, one new.
    let end = Instant::now() + Duration::from_secs(15);
    let fresh = loop {
        let now = children(p.pid());
        let gone = !std::path::Path::new(&format!("/proc/{}", kids[0])).exists();
        if gone && now.len() == 2 && !now.contains(&kids[0]) {
            break now;
        }
        assert!(
            Instant::now() < end,
            "not restarted: children {now:?}, killed {} still in /proc: {}\n{}",
            kids[0],
            !gone,
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(fresh.contains(&kids[1]), "the other worker was left alone");
    let log = p.log_text();
    assert!(
        log.contains("was killed by signal 9") && log.contains("starting it again in"),
        "the exit is logged with its cause: {log}"
    );
    // Both workers serve again, each on its own port as before.
    wait_healthy(ports.admin, "", 2);
    for port in &worker_ports {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            match try_http(*port, "POST", "/run/hello", &[], b"{}") {
                Ok(r) if r.status == 200 => break,
                other => assert!(
                    Instant::now() < end,
                    "worker on {port}: {:?}",
                    other.map(|r| r.status)
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let m = http(ports.admin, "GET", "/metrics", &[], b"").text();
    assert!(
        m.contains("ol_proxy_local_worker_restarts_total 1"),
        "{}",
        m.lines()
            .filter(|l| l.contains("restarts"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for _ in 0..6 {
        assert_eq!(
            http(ports.listen, "POST", "/run/hello", &[], b"{}").status,
            200
        );
    }
}

#[test]
fn the_quickstart_and_a_config_with_relative_paths_work_from_another_directory() {
    let _ = worker_bin();
    // The embedded quickstart, started from a directory with no examples.
    let elsewhere = temp_dir("elsewhere");
    let ports = Ports::new();
    let listen = format!("127.0.0.1:{}", ports.listen);
    let admin = format!("127.0.0.1:{}", ports.admin);
    let dir = temp_dir("quickstart-elsewhere");
    let p = start_proxy_in(
        &elsewhere,
        &["--listen", &listen, "--admin", &admin],
        &ports,
        &dir,
    );
    wait_healthy(ports.admin, "", 2);
    let r = http(ports.listen, "POST", "/run/hello", &[], br#"{"name": "x"}"#);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), p.log_text());
    drop(p);

    // The same file given with --config (as scripts/run.sh does).
    let ports = Ports::new();
    let listen = format!("127.0.0.1:{}", ports.listen);
    let admin = format!("127.0.0.1:{}", ports.admin);
    let file = repo_root().join("config/quickstart.toml");
    let dir = temp_dir("quickstart-file-elsewhere");
    let p = start_proxy_in(
        &elsewhere,
        &[
            "--config",
            file.to_str().unwrap(),
            "--listen",
            &listen,
            "--admin",
            &admin,
        ],
        &ports,
        &dir,
    );
    wait_healthy(ports.admin, "", 2);
    let r = http(ports.listen, "POST", "/run/hello", &[], br#"{"name": "z"}"#);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), p.log_text());
    drop(p);

    // A config file whose registry is relative to the file, not to the
    // working directory.
    let conf_dir = temp_dir("relative-config");
    std::os::unix::fs::symlink(registry(), conf_dir.join("fns")).unwrap();
    let ports = Ports::new();
    let text = format!(
        "listen = \"127.0.0.1:{}\"\n[admin]\nlisten = \"127.0.0.1:{}\"\n\
         [local_workers]\ncount = 1\nregistry = \"fns\"\n[health]\ninterval_ms = 200\n",
        ports.listen, ports.admin
    );
    std::fs::write(conf_dir.join("proxy.toml"), text).unwrap();
    let dir = temp_dir("relative-config-run");
    let conf = conf_dir.join("proxy.toml");
    let p = start_proxy_in(
        &elsewhere,
        &["--config", conf.to_str().unwrap()],
        &ports,
        &dir,
    );
    wait_healthy(ports.admin, "", 1);
    let r = http(ports.listen, "POST", "/run/hello", &[], br#"{"name": "y"}"#);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), p.log_text());
    drop(p);
    let _ = std::fs::remove_dir_all(&conf_dir);
    let _ = std::fs::remove_dir_all(&elsewhere);
}

#[test]
fn start_up_fails_with_the_workers_reason_when_none_comes_up() {
    let _ = worker_bin();
    let dir = temp_dir("no-worker-up");
    let ports = Ports::new();
    let text = format!(
        "listen = \"127.0.0.1:{}\"\n[admin]\nlisten = \"127.0.0.1:{}\"\n\
         [local_workers]\ncount = 2\nregistry = \"no-such-store\"\n",
        ports.listen, ports.admin
    );
    let conf = dir.join("proxy.toml");
    std::fs::write(&conf, text).unwrap();
    let t = Instant::now();
    let mut p = spawn_proxy_in(&dir, &["--config", conf.to_str().unwrap()], &dir);
    let status = p
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("still running: {}", p.log_text()));
    assert_eq!(status.code(), Some(1), "{}", p.log_text());
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    let log = p.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("no local worker came up"))
        .unwrap_or_else(|| panic!("no reason line: {log}"));
    assert!(
        line.contains("worker 0 exited with status") && line.contains("no-such-store"),
        "the worker's own reason: {line}"
    );
    assert!(try_http(ports.listen, "GET", "/run/hello", &[], b"").is_err());
}
