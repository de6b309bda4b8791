//! Hostile functions against the sandbox, end to end (issue 14): the real
//! `ol-worker` binary running real Python functions that these tests
//! write, each trying to reach past its instance.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Options, Worker};

/// Writes a function into the worker's directory registry.
fn add(w: &Worker, name: &str, files: &[(&str, &str)]) {
    for (path, text) in files {
        let p = w.registry.join(name).join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

/// A host socket that answers whatever connects with a runtime reply of
/// `200 pwned`, and counts the connections it got.
fn fake_runtime(path: &std::path::Path) -> Arc<AtomicUsize> {
    let listener = UnixListener::bind(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { return };
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let mut frame = || -> std::io::Result<()> {
                let mut n = [0u8; 4];
                c.read_exact(&mut n)?;
                let mut b = vec![0u8; u32::from_be_bytes(n) as usize];
                c.read_exact(&mut b)
            };
            let _ = frame().and_then(|_| frame());
            let mut out = Vec::new();
            for part in [&br#"{"status":200,"headers":[]}"#[..], b"pwned"] {
                out.extend_from_slice(&(part.len() as u32).to_be_bytes());
                out.extend_from_slice(part);
            }
            let _ = c.write_all(&out);
        }
    });
    hits
}

/// The socket hijack: a function used to replace its runtime's socket
/// with a link to a host socket, and the worker (root) followed it and
/// handed the client the host socket's answer. Now the process backend's
/// runtime talks to the worker over a socket pair made before the fork:
/// there is no socket path to replace, and the host socket is not even in
/// the function's view. The function runs as its own, the host socket is
/// never connected to, and a function that binds sockets of its own
/// changes nothing.
#[test]
fn a_function_cannot_redirect_the_workers_runtime_connection() {
    if !common::is_root() {
        eprintln!(
            "SKIPPED a_function_cannot_redirect_the_workers_runtime_connection: needs root (without it nothing is isolated)"
        );
        return;
    }
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let host = t.path().join("host.sock");
    let hits = fake_runtime(&host);

    for toml in ["", "[zygotes]\nenabled = false\n"] {
        let w = Worker::start(Options {
            toml,
            ..Default::default()
        });
        let f = format!(
            r#"import os, socket

HOST = {host:?}

def _try(path):
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        return "reached"
    except OSError as e:
        return type(e).__name__

# At import, before the runtime serves: bind a socket of its own where
# the runtime's used to be, and link the host socket beside it.
for d in (os.getcwd(), "/tmp"):
    try:
        socket.socket(socket.AF_UNIX).bind(os.path.join(d, "rt.sock"))
        os.symlink(HOST, os.path.join(d, "rt.sock.link"))
    except OSError:
        pass

def f(event):
    return {{"mine": True, "host": _try(HOST)}}
"#,
            host = host.display().to_string(),
        );
        add(&w, "hijack", &[("f.py", &f)]);
        let start = expected_start(&w, toml);
        let r = w.post("/run/hijack", b"{}");
        assert_eq!(r.status, 200, "{toml}: {}", r.body);
        assert_eq!(r.start(), start, "{toml}");
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["mine"], true, "{toml}: {}", r.body);
        assert_ne!(v["host"], "reached", "{toml}: the host socket is in view");
        assert_eq!(w.post("/run/hello", b"{}").status, 200);
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the host socket was reached"
    );
}

/// Waits until the root zygote is up when `toml` leaves zygotes on, so
/// that the next cold start is a fork; returns the start it will be.
fn expected_start(w: &Worker, toml: &str) -> &'static str {
    if toml.contains("enabled = false") {
        return "cold";
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while w.stats()["zygotes.live"].as_u64().unwrap_or(0) < 1 {
        assert!(std::time::Instant::now() < deadline, "no zygote in 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    "zygote"
}

/// What a hostile function tries to read, and what it gets: each path
/// maps to "read <start>", "listed <names>" or the error's name.
const PEEK: &str = r#"import os

def _peek(p):
    try:
        if os.path.isdir(p):
            return "listed " + ",".join(sorted(os.listdir(p)))
        with open(p) as f:
            return "read " + f.read(200)
    except Exception as e:
        return type(e).__name__

def f(event):
    return {p: _peek(p) for p in event["paths"]}
"#;

/// A function's own view of its layout.
const LAYOUT: &str = r#"import os

def f(event):
    writes = {}
    for d in ("/", "/code", "/usr", "/etc", "/packages", "/ol", "/tmp"):
        try:
            with open(os.path.join(d, "planted"), "w") as out:
                out.write("x")
            writes[d] = "wrote"
        except OSError as e:
            writes[d] = e.strerror
    me = os.getuid()
    others = [p for p in os.listdir("/proc") if p.isdigit() and os.stat("/proc/" + p).st_uid != me]
    shared = [l for l in open("/proc/self/mountinfo") if " shared:" in l]
    return {"writes": writes, "old": os.listdir("/.old") if os.path.isdir("/.old") else [],
            "others": others, "shared": shared}
"#;

/// A function used to read any world-readable host file (the proxy's
/// config and its admin token, /etc/passwd), every other function's code
/// and `ol.yaml` with its secrets, and the worker's work dir. Now each
/// instance's root is a read-only skeleton with its own code: none of
/// those exist in its view, fresh or forked from a zygote.
#[test]
fn a_function_sees_its_own_code_and_nothing_of_the_host() {
    if !common::is_root() {
        eprintln!(
            "SKIPPED a_function_sees_its_own_code_and_nothing_of_the_host: needs root (mount namespaces)"
        );
        return;
    }
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = t.path().join("proxy.toml");
    std::fs::write(&secret, "[admin]\ntoken = \"host-secret\"\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    assert!(
        host_passwd.contains("daemon:"),
        "this host has no daemon user"
    );

    for toml in ["", "[zygotes]\nenabled = false\n"] {
        let w = Worker::start(Options {
            toml,
            ..Default::default()
        });
        add(&w, "peek", &[("f.py", PEEK)]);
        add(
            &w,
            "other",
            &[
                ("f.py", "def f(event):\n    return 1\n"),
                ("ol.yaml", "environment:\n  TOKEN: other-secret\n"),
            ],
        );
        assert_eq!(w.post("/run/other", b"{}").status, 200);
        let work = w.work_dir.display().to_string();
        let registry = w.registry.display().to_string();
        let config = w.work_dir.parent().unwrap().join("worker.toml");
        let paths = serde_json::json!({"paths": [
            "/etc/shadow", "/etc/passwd", "/", "/code/f.py",
            secret.display().to_string(),
            config.display().to_string(),
            work.clone(),
            format!("{work}/code"),
            format!("{registry}/other/ol.yaml"),
            "/proc/1/environ", "/root", "/home", "/var", "/sys",
        ]});
        let start = expected_start(&w, toml);
        let r = w.post("/run/peek", paths.to_string().as_bytes());
        assert_eq!(r.status, 200, "{toml}: {}", r.body);
        assert_eq!(r.start(), start, "{toml}");
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let got = |p: &str| v[p].as_str().unwrap_or_default().to_string();
        assert!(
            got("/code/f.py").starts_with("read import os"),
            "{toml}: own code: {}",
            got("/code/f.py")
        );
        assert!(
            !got("/etc/passwd").contains("daemon:"),
            "{toml}: the host's passwd: {}",
            got("/etc/passwd")
        );
        for p in [
            "/etc/shadow".to_string(),
            secret.display().to_string(),
            config.display().to_string(),
            work.clone(),
            format!("{work}/code"),
            format!("{registry}/other/ol.yaml"),
            "/proc/1/environ".into(),
            "/root".into(),
            "/home".into(),
            "/var".into(),
            "/sys".into(),
        ] {
            let seen = got(&p);
            assert!(
                !seen.starts_with("read") && !seen.starts_with("listed"),
                "{toml}: the function got {p}: {seen}"
            );
        }
        assert!(
            !r.body.contains("host-secret") && !r.body.contains("other-secret"),
            "{toml}: {}",
            r.body
        );
        // The layout itself: read-only where it should be, the old root
        // gone, only its own processes in /proc, no mount shared with the
        // host (a mount made inside would appear there).
        add(&w, "layout", &[("f.py", LAYOUT)]);
        let r = w.post("/run/layout", b"{}");
        assert_eq!(r.status, 200, "{toml}: {}", r.body);
        let l: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        for p in ["/", "/code", "/usr", "/etc", "/packages", "/ol"] {
            assert_ne!(l["writes"][p], "wrote", "{toml}: wrote into {p}: {l}");
        }
        assert_eq!(l["writes"]["/tmp"], "wrote", "{toml}: {l}");
        assert_eq!(l["old"], serde_json::json!([]), "{toml}: the old root: {l}");
        assert_eq!(
            l["others"],
            serde_json::json!([]),
            "{toml}: other processes: {l}"
        );
        assert_eq!(l["shared"], serde_json::json!([]), "{toml}: {l}");
        let root = got("/");
        for name in ["code", "tmp", "usr"] {
            assert!(root.contains(name), "{toml}: / lacks {name}: {root}");
        }
        for name in ["work", "root", "home", "var"] {
            assert!(
                !root.split([' ', ',']).any(|n| n == name),
                "{toml}: / shows {name}: {root}"
            );
        }
    }
}

/// Host `/tmp` and `/dev/shm` used to be shared by every sandbox and to
/// outlive them (the next tenant of a uid read the last one's 0600 file).
/// Now both are the instance's own and go with it: a new instance of the
/// same function, after the old one was evicted, finds neither file, and
/// another function never sees them.
#[test]
fn tmp_and_shm_are_private_and_die_with_their_instance() {
    if !common::is_root() {
        eprintln!(
            "SKIPPED tmp_and_shm_are_private_and_die_with_their_instance: needs root (mount namespaces)"
        );
        return;
    }
    for toml in [
        "[instances]\npause_after_ms = 50\nevict_after_ms = 150\n",
        "[instances]\npause_after_ms = 50\nevict_after_ms = 150\n[zygotes]\nenabled = false\n",
    ] {
        let w = Worker::start(Options {
            toml,
            ..Default::default()
        });
        let tenant = r#"import os

def f(event):
    seen = sorted(os.listdir("/tmp")) + sorted(os.listdir("/dev/shm"))
    for d in ("/tmp", "/dev/shm", "/host/tmp"):
        fd = os.open(os.path.join(d, "left-" + d.strip("/").replace("/", "-")), os.O_CREAT | os.O_WRONLY, 0o600)
        os.write(fd, b"tenant secret")
        os.close(fd)
    return {"seen": seen, "pid": os.getpid()}
"#;
        add(&w, "tenant", &[("f.py", tenant)]);
        add(&w, "neighbour", &[("f.py", tenant)]);
        let call = |name: &str| -> serde_json::Value {
            let r = w.post(&format!("/run/{name}"), b"{}");
            assert_eq!(r.status, 200, "{toml}: {}", r.body);
            serde_json::from_str(&r.body).unwrap()
        };
        let start = expected_start(&w, toml);
        let r = w.post("/run/tenant", b"{}");
        assert_eq!(r.start(), start, "{toml}: {}", r.body);
        let first: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(first["seen"], serde_json::json!([]), "{toml}: {first}");
        let neighbour = call("neighbour");
        assert_eq!(
            neighbour["seen"],
            serde_json::json!([]),
            "{toml}: {neighbour}"
        );
        // Evicted (paused after 50 ms, removed after 150 ms idle).
        let pid = first["pid"].as_u64().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !gone(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(gone(pid), "{toml}: the first instance was not evicted");
        let again = call("tenant");
        assert_ne!(again["pid"], first["pid"], "{toml}: not a new instance");
        assert_eq!(
            again["seen"],
            serde_json::json!([]),
            "{toml}: the last tenant's files: {again}"
        );
    }
}

/// Two workers started with the same defaults on one host (the
/// quickstart's two, or two by hand) used to lease the same uids, so a
/// function on one could read and kill the other's instances. Now each
/// claims its own range: their instances' uids differ and a function on
/// one cannot signal an instance of the other.
#[test]
fn two_workers_with_defaults_never_share_a_uid() {
    if !common::is_root() {
        eprintln!(
            "SKIPPED two_workers_with_defaults_never_share_a_uid: needs root (a uid per instance)"
        );
        return;
    }
    let a = Worker::start(Options::default());
    let b = Worker::start(Options::default());
    let who = [(
        "f.py",
        "import os, time\n\ndef f(event):\n    return {\"uid\": os.getuid(), \"pid\": os.getpid()}\n",
    )];
    add(&a, "who", &who);
    add(&b, "who", &who);
    let id = |w: &Worker| -> (u64, u64) {
        let r = w.post("/run/who", b"{}");
        assert_eq!(r.status, 200, "{}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        (v["uid"].as_u64().unwrap(), v["pid"].as_u64().unwrap())
    };
    let (uid_a, _) = id(&a);
    let (uid_b, pid_b) = id(&b);
    assert_ne!(uid_a, uid_b, "both workers leased uid {uid_a}");
    add(
        &a,
        "signal",
        &[(
            "f.py",
            "import os\n\ndef f(event):\n    try:\n        os.kill(event[\"pid\"], 0)\n        return \"reached\"\n    except PermissionError:\n        return \"denied\"\n    except ProcessLookupError:\n        return \"gone\"\n",
        )],
    );
    let r = a.post("/run/signal", format!("{{\"pid\": {pid_b}}}").as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("denied"),
        "worker a's function could signal b's instance: {}",
        r.body
    );
}

/// The worker's peak resident memory (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// The worker holds a reply whole, outside every sandbox's memory limit:
/// a function's 64 MB reply used to become 64 MB more of the worker (three
/// concurrent 200 MB ones, 610 MB). Now a reply over `max_reply_bytes`
/// (6 MiB by default) is refused from its length, with a one-line 502,
/// before any of it is read.
#[test]
fn a_reply_over_the_limit_is_refused_without_growing_the_worker() {
    let w = Worker::start(Options::default());
    add(
        &w,
        "flood",
        &[
            ("f.py", "def f(event):\n    return \"x\" * (64 << 20)\n"),
            ("ol.yaml", "limits:\n  memory_mb: 512\n"),
        ],
    );
    let pid = w.child.id();
    // Warm up the worker's own allocations with a small call first.
    assert_eq!(w.post("/run/hello", b"{}").status, 200);
    let before = peak_rss_kib(pid);
    let r = w.post("/run/flood", b"{}");
    let grown = peak_rss_kib(pid).saturating_sub(before);
    assert_eq!(r.status, 502, "{} bytes", r.body.len());
    assert_eq!(r.body.trim_end().lines().count(), 1, "{}", r.body);
    assert!(r.body.contains("max_reply_bytes"), "{}", r.body);
    assert!(
        grown < 16 << 10,
        "the worker grew by {grown} KiB for a refused reply"
    );
    // The instance that sent it is not reused; the function still answers.
    assert_eq!(w.post("/run/hello", b"{}").status, 200);
}

/// `network: egress` was granted by the function's own `ol.yaml` (on the
/// process backend, the host network). Now only the operator grants it,
/// by name or glob in `egress.functions`: an upload asking for it without
/// that is refused with 400, a stored package asking for it fails its
/// calls with a one-line 500, and a function the list names runs.
#[test]
fn egress_is_the_operators_to_give() {
    let w = Worker::start(Options {
        toml: "[egress]\nfunctions = [\"fetch-*\"]\n",
        ..Default::default()
    });
    let f = "def f(event):\n    return 'ran'\n";
    let yaml = "network: egress\n";
    let pkg = common::tar_gz(&[("f.py", f), ("ol.yaml", yaml)]);
    let r = w.post("/registry/leaky", &pkg);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("egress.functions"), "{}", r.body);
    assert_eq!(r.body.trim_end().lines().count(), 1, "{}", r.body);

    add(&w, "stored-leaky", &[("f.py", f), ("ol.yaml", yaml)]);
    let r = w.post("/run/stored-leaky", b"{}");
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(
        r.body.contains("network: egress is not allowed"),
        "{}",
        r.body
    );

    let r = w.post("/registry/fetch-news", &pkg);
    assert_eq!(r.status, 201, "{}", r.body);
    let r = w.post("/run/fetch-news", b"{}");
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A network namespace this test makes, with a veth link to the host
/// (`host`/30 on the host side, `peer`/30 inside) and a TCP server inside
/// on port 8080 that answers `name`; removed on drop.
struct TestNet {
    ns: String,
    server: std::process::Child,
}

impl TestNet {
    fn new(tag: &str, host: &str, peer: &str) -> TestNet {
        let ns = format!("olt-{tag}-{}", std::process::id());
        let link = format!("olt{tag}{}", std::process::id() % 100_000);
        let sh = |cmd: String| {
            let out = std::process::Command::new("sh")
                .args(["-c", &cmd])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{cmd}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &ns])
            .output();
        sh(format!("ip netns add {ns}"));
        sh(format!(
            "ip link add {link} type veth peer name eth0 netns {ns}"
        ));
        sh(format!(
            "ip addr add {host}/30 dev {link} && ip link set {link} up"
        ));
        sh(format!(
            "ip -n {ns} addr add {peer}/30 dev eth0 && ip -n {ns} link set eth0 up && ip -n {ns} link set lo up && ip -n {ns} route add default via {host}"
        ));
        let code = format!(
            "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('{peer}', 8080))\ns.listen(8)\nwhile True:\n    c, _ = s.accept()\n    c.sendall(b'{tag}')\n    c.close()\n"
        );
        let server = std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-c", &code])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        TestNet { ns, server }
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .output();
    }
}

const EGRESS_PROBE: &str = r#"import socket

def _gateway():
    for line in open("/proc/net/route").read().splitlines()[1:]:
        f = line.split()
        if f[1] == "00000000":
            return socket.inet_ntoa(bytes.fromhex(f[2])[::-1])
    return None

def _try(host, port):
    s = socket.socket()
    s.settimeout(1.5)
    try:
        s.connect((host, port))
        return "reached " + s.recv(64).decode()
    except OSError as e:
        return type(e).__name__
    finally:
        s.close()

def f(event):
    out = {"gateway": _gateway(), "ipv6": open("/proc/net/if_inet6").read()}
    for name, (host, port) in event["targets"].items():
        out[name] = _try(host or out["gateway"], port)
    return out
"#;

/// An egress function on the process backend used to share the host's
/// network: it reached the worker's registry, the proxy's admin port and
/// anything private. Now it has a namespace of its own, routed and NATed
/// through the host with the same firewall as the Docker backend: it
/// reaches a server in a namespace the test made at a public (test-net)
/// address, but not one at a private address, nor any of the host's own
/// addresses, nor the host's loopback.
#[test]
fn an_egress_function_reaches_out_but_not_the_host_or_private_ranges() {
    if !common::is_root() {
        eprintln!("SKIPPED an_egress_function_reaches_out_but_not_the_host_or_private_ranges: needs root (network namespaces, iptables)");
        return;
    }
    let public = TestNet::new("pub", "203.0.113.1", "203.0.113.2");
    let private = TestNet::new("prv", "10.214.0.1", "10.214.0.2");
    // A listener on every host address: reaching it means reaching the host.
    let host = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    host.set_nonblocking(true).unwrap();
    let hp = host.local_addr().unwrap().port();
    // Both servers answer the host: what the sandbox misses, the firewall took.
    for (addr, tag) in [("203.0.113.2:8080", "pub"), ("10.214.0.2:8080", "prv")] {
        let mut c =
            std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))
                .unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        assert_eq!(got, tag);
    }
    let w = Worker::start(Options {
        toml: "[egress]\nfunctions = [\"probe\"]\n",
        ..Default::default()
    });
    add(
        &w,
        "probe",
        &[("f.py", EGRESS_PROBE), ("ol.yaml", "network: egress\n")],
    );
    let event = serde_json::json!({"targets": {
        "public": ["203.0.113.2", 8080],
        "private": ["10.214.0.2", 8080],
        "gateway": [null, hp],
        "host_public_side": ["203.0.113.1", hp],
        "host_private_side": ["10.214.0.1", hp],
        "loopback_worker": ["127.0.0.1", w.port],
        "loopback_host": ["127.0.0.1", hp],
    }});
    let r = w.post("/run/probe", event.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert!(v["gateway"].is_string(), "no default route: {v}");
    // No IPv6 address at all (a link-local one would reach the host).
    assert_eq!(v["ipv6"], "", "{v}");
    assert_eq!(v["public"], "reached pub", "{v}");
    for what in [
        "private",
        "gateway",
        "host_public_side",
        "host_private_side",
        "loopback_worker",
        "loopback_host",
    ] {
        let got = v[what].as_str().unwrap_or_default();
        assert!(!got.starts_with("reached"), "{what}: {v}");
    }
    assert!(
        host.accept().is_err(),
        "the host listener saw a connection from the sandbox"
    );
    drop((public, private));
}

/// Free bytes of the file system holding `p`.
fn free_bytes(p: &std::path::Path) -> u64 {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

/// An instance's scratch dir was a plain dir on the host's disk: 2 GiB in
/// under a second, nothing capped it. Now it is a tmpfs of
/// `instances.scratch_mb`: a write past it gets ENOSPC inside the sandbox
/// and the host's free space does not move.
#[test]
fn scratch_writes_stop_at_their_bound_and_never_reach_the_disk() {
    if !common::is_root() {
        eprintln!("SKIPPED scratch_writes_stop_at_their_bound_and_never_reach_the_disk: needs root (a tmpfs per instance)");
        return;
    }
    let w = Worker::start(Options {
        toml: "[instances]\nscratch_mb = 16\n",
        ..Default::default()
    });
    add(
        &w,
        "filler",
        &[(
            "f.py",
            r#"import errno, os

def f(event):
    path = os.path.join(os.environ["TMPDIR"], "fill")
    chunk = b"x" * (1 << 20)
    written = 0
    try:
        with open(path, "wb") as out:
            for _ in range(64):
                out.write(chunk)
                out.flush()
                written += len(chunk)
    except OSError as e:
        return {"written": written, "errno": e.errno == errno.ENOSPC and "ENOSPC" or e.errno}
    return {"written": written, "errno": None}
"#,
        )],
    );
    let before = free_bytes(&w.work_dir);
    let r = w.post("/run/filler", b"{}");
    let after = free_bytes(&w.work_dir);
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["errno"], "ENOSPC", "{v}");
    assert!(v["written"].as_u64().unwrap() <= 16 << 20, "{v}");
    let dropped = before.saturating_sub(after);
    assert!(
        dropped < 8 << 20,
        "the host lost {dropped} bytes of free space"
    );
}

/// An instance's stderr is a log file in the worker's work dir, on the
/// host's disk: a function writing to fd 2 grew it without end (200 MiB in
/// a second). Now every instance runs under RLIMIT_FSIZE of 16 MiB above
/// `scratch_mb` (32 MiB here): the write past it fails with EFBIG and the
/// log stays at its bound, fresh or forked from a zygote.
#[test]
fn a_functions_log_stops_at_its_bound() {
    for toml in [
        "[instances]\nscratch_mb = 16\n",
        "[instances]\nscratch_mb = 16\n[zygotes]\nenabled = false\n",
    ] {
        let w = Worker::start(Options {
            toml,
            ..Default::default()
        });
        add(
            &w,
            "shouter",
            &[(
                "f.py",
                r#"import errno, os

def f(event):
    chunk = b"x" * (1 << 20)
    written = 0
    try:
        for _ in range(200):
            written += os.write(2, chunk)
    except OSError as e:
        return {"written": written, "errno": e.errno == errno.EFBIG and "EFBIG" or e.errno}
    return {"written": written, "errno": None}
"#,
            )],
        );
        let before = free_bytes(&w.work_dir);
        let r = w.post("/run/shouter", b"{}");
        assert_eq!(r.status, 200, "{toml}: {}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["errno"], "EFBIG", "{toml}: {v}");
        let biggest = std::fs::read_dir(w.work_dir.join("logs"))
            .unwrap()
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .max()
            .unwrap_or(0);
        assert!(biggest <= 33 << 20, "{toml}: a log of {biggest} bytes");
        let dropped = before.saturating_sub(free_bytes(&w.work_dir));
        assert!(
            dropped < 64 << 20,
            "{toml}: the host lost {dropped} bytes of free space"
        );
        // The instance still answers (the cap ends writes, not the runtime).
        assert_eq!(w.post("/run/shouter", b"{}").status, 200, "{toml}");
    }
}

/// Whether process `pid` is gone (or a zombie nobody reaps yet).
fn gone(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z')),
    }
}

/// A SIGKILLed worker left its paused instances frozen forever, in their
/// cgroups, holding memory (a frozen process cannot act on its worker's
/// death). Now the worker's guard thaws and kills them, and a busy one is
/// gone too, within seconds.
#[test]
fn a_killed_workers_instances_do_not_outlive_it() {
    if !common::is_root() {
        eprintln!(
            "SKIPPED a_killed_workers_instances_do_not_outlive_it: needs root (cgroups, freezer)"
        );
        return;
    }
    let mut w = Worker::start(Options {
        toml: "[instances]\npause_after_ms = 100\n",
        ..Default::default()
    });
    add(
        &w,
        "idle",
        &[(
            "f.py",
            "import os\n\ndef f(event):\n    return {\"pid\": os.getpid()}\n",
        )],
    );
    // Its first call says who it is; the next one stays busy (the same
    // instance: only one exists).
    let busy = "import os, time\n\ndef f(event):\n    if event.get(\"who\"):\n        return {\"pid\": os.getpid()}\n    time.sleep(100)\n    return 1\n";
    add(&w, "busy", &[("f.py", busy)]);
    let pid_of = |name: &str, body: &[u8]| -> u64 {
        let r = w.post(&format!("/run/{name}"), body);
        assert_eq!(r.status, 200, "{}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        v["pid"].as_u64().unwrap()
    };
    let idle_pid = pid_of("idle", b"{}");
    let busy_pid = pid_of("busy", br#"{"who": true}"#);
    let url = w.url("/run/busy");
    std::thread::spawn(move || {
        let _ = common::request("POST", &url, Some(b"{}"), &[]);
    });
    // Let the idle one be paused (frozen), and the busy one start sleeping.
    std::thread::sleep(Duration::from_millis(600));
    let state = std::fs::read_to_string(format!("/proc/{idle_pid}/status")).unwrap_or_default();
    assert!(
        !gone(idle_pid),
        "the idle instance should still be there: {state}"
    );

    w.child.kill().unwrap();
    let _ = w.child.wait();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !(gone(idle_pid) && gone(busy_pid)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gone(busy_pid), "the busy instance outlived its worker");
    assert!(
        gone(idle_pid),
        "the paused instance outlived its worker (still frozen?)"
    );
    // Nor do their scratch mounts (RAM) stay.
    let instances = std::fs::canonicalize(w.work_dir.join("instances")).unwrap();
    let mounted = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|p| std::path::Path::new(p).starts_with(&instances))
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while mounted() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(mounted(), 0, "scratch mounts outlived their worker");
}

/// `instances.mount_namespace = false` (the benchmark's peer) really
/// turns the layout off, and the worker says so loudly at start.
#[test]
fn turning_the_mount_namespace_off_is_loud() {
    if !common::is_root() {
        eprintln!("SKIPPED turning_the_mount_namespace_off_is_loud: needs root (mount namespaces)");
        return;
    }
    let w = Worker::start_logged(Options {
        toml: "[instances]\nmount_namespace = false\n",
        ..Default::default()
    });
    add(&w, "peek", &[("f.py", PEEK)]);
    let r = w.post("/run/peek", br#"{"paths": ["/etc/passwd"]}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("daemon:"),
        "not the host's passwd: {}",
        r.body
    );
    assert!(w.log().contains("NO MOUNT NAMESPACE"), "{}", w.log());
}

/// io_uring submissions bypass per-syscall filtering (and Docker before 25
/// allowed them): every instance now gets ENOSYS from io_uring_setup.
#[test]
fn io_uring_is_refused_in_every_instance() {
    if !common::io_uring_works_outside() {
        eprintln!("SKIPPED io_uring_is_refused_in_every_instance: io_uring does not work on this host at all");
        return;
    }
    for toml in ["", "[zygotes]\nenabled = false\n"] {
        let w = Worker::start(Options {
            toml,
            ..Default::default()
        });
        add(&w, "uring", &[("f.py", common::IO_URING_PROBE)]);
        let start = if common::is_root() {
            expected_start(&w, toml)
        } else {
            ""
        };
        let r = w.post("/run/uring", b"{}");
        assert_eq!(r.status, 200, "{toml}: {}", r.body);
        if !start.is_empty() {
            assert_eq!(r.start(), start, "{toml}");
        }
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["fd"], -1, "{toml}: io_uring_setup worked: {v}");
        assert_eq!(v["errno"], libc::ENOSYS, "{toml}: {v}");
    }
}

/// Starts `ol_runtime.py` by itself on a function `f.py` with the given
/// code, its channel one end of a socket pair, as the process backend
/// does; returns the process and the worker's end.
fn bare_runtime(
    code: &str,
    limit_ms: u64,
) -> (
    std::process::Child,
    std::os::unix::net::UnixStream,
    tempfile::TempDir,
) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("f.py"), code).unwrap();
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let fd = theirs.as_raw_fd();
    let mut cmd = std::process::Command::new("/usr/bin/python3");
    cmd.args(["-I", "-S"])
        .arg(common::repo_root().join("workers/runtime/ol_runtime.py"))
        .arg("--code")
        .arg(t.path())
        .args(["--fd", "3", "--limit-ms", &limit_ms.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    // SAFETY: dup2 only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(theirs);
    let mut ready = [0u8; 6];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut ready)
        .unwrap();
    assert_eq!(&ready, b"ready\n");
    (child, ours, t)
}

fn exit_within(child: &mut std::process::Child, d: Duration) -> Option<std::process::ExitStatus> {
    let end = std::time::Instant::now() + d;
    while std::time::Instant::now() < end {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

/// A runtime whose worker is gone used to live on as long as the
/// function's threads did (a container at 78% CPU after its worker was
/// SIGKILLed). Now it ends when its channel closes, threads or not.
#[test]
fn the_runtime_ends_when_its_worker_hangs_up_whatever_its_threads_do() {
    let spin = "import threading\n\ndef _spin():\n    while True:\n        pass\n\nthreading.Thread(target=_spin).start()\n\ndef f(event):\n    return 1\n";
    let (mut child, ours, _t) = bare_runtime(spin, 0);
    drop(ours);
    let status = exit_within(&mut child, Duration::from_secs(5));
    assert!(status.is_some(), "the runtime outlived its channel");
    // Nor a call in flight, which never reads the channel again.
    let sleeper = "import time\n\ndef f(event):\n    time.sleep(100)\n    return 1\n";
    let (mut child, mut ours, _t) = bare_runtime(sleeper, 0);
    for part in [
        &br#"{"method":"POST","path":"/","query":"","headers":[]}"#[..],
        b"{}",
    ] {
        ours.write_all(&(part.len() as u32).to_be_bytes()).unwrap();
        ours.write_all(part).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    drop(ours);
    let status = exit_within(&mut child, Duration::from_secs(5));
    assert!(status.is_some(), "a busy runtime outlived its channel");
}

/// The worker kills a call at its runtime limit; the runtime now also
/// ends itself when a call runs a grace past it, so a sandbox whose
/// worker is stuck or gone (and a busy call that never reads the channel)
/// is bounded too.
#[test]
fn the_runtime_stops_a_call_past_its_limit_by_itself() {
    let sleeper = "import time\n\ndef f(event):\n    time.sleep(100)\n    return 1\n";
    let (mut child, mut ours, _t) = bare_runtime(sleeper, 300);
    for part in [
        &br#"{"method":"POST","path":"/","query":"","headers":[]}"#[..],
        b"{}",
    ] {
        ours.write_all(&(part.len() as u32).to_be_bytes()).unwrap();
        ours.write_all(part).unwrap();
    }
    let t = std::time::Instant::now();
    let status = exit_within(&mut child, Duration::from_secs(6));
    let status = status.expect("the call ran on past its limit");
    assert_eq!(status.code(), Some(1), "{status:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(1200),
        "ended before limit + grace: {:?}",
        t.elapsed()
    );
    drop(ours);
}
