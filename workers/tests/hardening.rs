//! Hostile uploads and function configs against the real `ol-worker`:
//! symlink chains, decompression bombs, deep protos and YAML, limits above
//! the operator's ceilings, unpinned requirements, old and vanished code.
//! Every archive here is built by the test itself.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{gzip, is_root, snapshot, tar_gz, Options, Worker};

/// A raw tar with entries (path, kind) where kind is a file's data, a
/// symlink's target or a directory; paths are written as they are.
enum E<'a> {
    File(&'a str, &'a [u8]),
    Link(&'a str, &'a str),
    Dir(&'a str),
}

fn raw_tar_gz(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        match e {
            E::File(p, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_path(p).unwrap();
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
            E::Link(p, to) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_path(p).unwrap();
                h.set_link_name(to).unwrap();
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                h.set_path(p).unwrap();
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
        }
    }
    gzip(&b.into_inner().unwrap())
}

/// The chain that wrote files anywhere as root: `a -> .`; a link whose
/// path runs through `a` 24 times, so that its target (25 `..` and then
/// `victim`) is lexically inside the package but really climbs to `/` and
/// down to `victim`; then a file beneath that link.
fn symlink_chain(victim: &Path, with_entry_point: bool) -> Vec<u8> {
    let hops = 24;
    let link_path = format!("{}b/l", "a/".repeat(hops));
    let target = format!(
        "{}{}",
        "../".repeat(hops + 1),
        victim.display().to_string().trim_start_matches('/')
    );
    let mut entries = vec![E::Link("a", "."), E::Dir("b"), E::Link(&link_path, &target)];
    entries.push(E::File(
        "b/l/owned.txt",
        b"written outside the function dir",
    ));
    if with_entry_point {
        entries.push(E::File("f.py", b"def f(e):\n    return 1\n"));
    }
    raw_tar_gz(&entries)
}

#[test]
fn a_symlink_chain_writes_nothing_outside_and_changes_nothing() {
    let w = Worker::start(Options::default());
    let victim = tempfile::tempdir().unwrap();
    let before = snapshot(&w.registry);
    for with_entry_point in [true, false] {
        let r = w.post(
            "/registry/evil",
            &symlink_chain(victim.path(), with_entry_point),
        );
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body.contains("runs through \"a\""), "{}", r.body);
        assert!(
            !victim.path().join("owned.txt").exists(),
            "the upload wrote outside the function directory"
        );
        assert_eq!(
            snapshot(&w.registry),
            before,
            "a refused upload changed the store"
        );
    }
    // The same package already in the store (no upload check): the call
    // fails with one line, and still nothing is written outside.
    std::fs::write(
        w.registry.join("evil.tar.gz"),
        symlink_chain(victim.path(), true),
    )
    .unwrap();
    let r = w.get("/run/evil");
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.body.starts_with("function evil: "), "{}", r.body);
    assert!(!victim.path().join("owned.txt").exists());
    assert_eq!(w.get("/run/hello").status, 200);
}

/// Peak resident memory of a process (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_decompression_bomb_is_streamed_not_held_and_uploads_are_bounded() {
    // max_upload_bytes 1 MiB -> at most 10 MiB unpacked... too small to
    // see: allow 16 MiB uploads, so 160 MiB may unpack.
    let w = Worker::start(Options {
        toml: "max_upload_bytes = 16777216\n",
        ..Default::default()
    });
    let big = vec![0u8; 150 << 20];
    let bomb = raw_tar_gz(&[
        E::File(
            "f.py",
            b"import os\ndef f(e):\n    return os.path.getsize(os.path.join(os.path.dirname(__file__), 'big.bin'))\n",
        ),
        E::File("big.bin", &big),
    ]);
    drop(big);
    assert!(bomb.len() < 4 << 20, "{} bytes", bomb.len());
    let pid = w.child.id();
    let before = peak_rss_kib(pid);
    let r = w.post("/registry/bomb", &bomb);
    assert_eq!(r.status, 201, "{}", r.body);
    let r = w.get("/run/bomb");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body.trim(), (150u64 << 20).to_string());
    let grown_mib = (peak_rss_kib(pid).saturating_sub(before)) / 1024;
    assert!(
        grown_mib < 64,
        "the worker's peak RSS grew {grown_mib} MiB unpacking a 150 MiB file"
    );

    // Concurrent uploads beyond the bound get a fast 503, never a pile-up.
    let statuses: Vec<(u16, String)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..6)
            .map(|_| s.spawn(|| w.post("/registry/bomb", &bomb)))
            .collect();
        hs.into_iter()
            .map(|h| {
                let r = h.join().unwrap();
                (r.status, r.body)
            })
            .collect()
    });
    for (status, body) in &statuses {
        assert!(
            *status == 201 || (*status == 503 && body.contains("uploads are being checked")),
            "{status}: {body}"
        );
    }
    assert!(
        statuses.iter().any(|(s, _)| *s == 503),
        "six concurrent uploads of a bomb all went through: {statuses:?}"
    );
}

fn deep_proto(levels: usize) -> String {
    let mut text = String::from("syntax = \"proto3\";\npackage deep;\n");
    for i in 0..levels {
        text.push_str(&format!("message M{i} {{\n"));
    }
    text.push_str(&"}\n".repeat(levels));
    text.push_str("service S { rpc Call (M0) returns (M0); }\n");
    text
}

#[test]
fn a_deep_proto_is_refused_and_never_takes_the_worker_down() {
    let w = Worker::start(Options::default());
    let proto = deep_proto(3000);
    let pkg = tar_gz(&[
        ("f.py", "def f(e):\n    return e\n"),
        (
            "ol.yaml",
            "grpc:\n  service: deep.S\n  protos: [deep.proto]\n",
        ),
        ("deep.proto", &proto),
    ]);
    assert!(pkg.len() < 16 << 10, "{} bytes", pkg.len());
    let r = w.post("/registry/deep", &pkg);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("nested more than 32 levels"), "{}", r.body);
    // Already in the store: its calls fail with one line, the gRPC index
    // rebuild survives it, and every other function keeps serving.
    std::fs::write(w.registry.join("deep.tar.gz"), &pkg).unwrap();
    let r = w.get("/run/deep");
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.body.contains("nested more than 32 levels"), "{}", r.body);
    assert_eq!(r.body.trim_end().lines().count(), 1, "{}", r.body);
    let r = w.get("/grpc/");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(w.get("/run/hello").status, 200);
    assert!(w.get("/status").status == 200);
}

#[test]
fn a_deep_ol_yaml_is_refused_at_once() {
    let w = Worker::start(Options::default());
    let yaml = "[".repeat(60_000);
    let pkg = tar_gz(&[("f.py", "def f(e):\n    return 1\n"), ("ol.yaml", &yaml)]);
    let t = Instant::now();
    let r = w.post("/registry/deepyaml", &pkg);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("nested more than 16 levels"), "{}", r.body);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    std::fs::write(w.registry.join("deepyaml.tar.gz"), &pkg).unwrap();
    let t = Instant::now();
    let r = w.get("/run/deepyaml");
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[test]
fn limits_above_the_ceilings_are_refused_and_open_files_are_bounded() {
    let w = Worker::start(Options {
        toml: "registry_cache_ms = 0\n[limits.max]\nprocs = 1000\n",
        ..Default::default()
    });
    for (yaml, field) in [
        (
            "limits:\n  memory_mb: 1000000\n",
            "limits.memory_mb: 1000000",
        ),
        ("limits:\n  cpu_percent: 1000\n", "limits.cpu_percent: 1000"),
        (
            "limits:\n  runtime_ms: 86400000\n",
            "limits.runtime_ms: 86400000",
        ),
        ("limits:\n  procs: 100000\n", "limits.procs: 100000"),
        (
            "limits:\n  open_files: 1000000\n",
            "limits.open_files: 1000000",
        ),
    ] {
        let pkg = tar_gz(&[("f.py", "def f(e):\n    return 1\n"), ("ol.yaml", yaml)]);
        let r = w.post("/registry/greedy", &pkg);
        assert_eq!(r.status, 400, "{yaml}: {}", r.body);
        assert!(r.body.contains(field), "{yaml}: {}", r.body);
        assert!(r.body.contains("ceiling"), "{}", r.body);
        // Stored by other means: every call fails with one line naming it.
        std::fs::write(w.registry.join("greedy.tar.gz"), &pkg).unwrap();
        let r = w.get("/run/greedy");
        assert_eq!(r.status, 500, "{yaml}: {}", r.body);
        assert!(r.body.contains(field), "{}", r.body);
        std::fs::remove_file(w.registry.join("greedy.tar.gz")).unwrap();
    }
    // Instances have their own RLIMIT_NOFILE (1024 by default), not the worker's.
    let fds = "import os\ndef f(e):\n    n = 0\n    try:\n        while n < 20000:\n            os.open('/dev/null', os.O_RDONLY)\n            n += 1\n    except OSError:\n        pass\n    return n\n";
    let r = w.post("/registry/fds", &tar_gz(&[("f.py", fds)]));
    assert_eq!(r.status, 201, "{}", r.body);
    let r = w.get("/run/fds");
    assert_eq!(r.status, 200, "{}", r.body);
    let n: u64 = r.body.trim().parse().unwrap();
    assert!(n < 1024, "an instance opened {n} files");
    // A procs limit above what a zygote's child may set (the ceiling is 1000
    // here): a fresh process, not a 502.
    let many = tar_gz(&[
        (
            "f.py",
            "import resource\ndef f(e):\n    return resource.getrlimit(resource.RLIMIT_NPROC)[0]\n",
        ),
        ("ol.yaml", "limits:\n  procs: 500\n"),
    ]);
    assert_eq!(w.post("/registry/many", &many).status, 201);
    let r = w.get("/run/many");
    assert_eq!(r.status, 200, "{}", r.body);
    if is_root() {
        assert_eq!(r.body.trim(), "500");
        assert_eq!(r.start(), "cold", "{:?}", r.header("x-ol-timing"));
    }
}

#[test]
fn an_instance_larger_than_the_memory_budget_is_refused_not_evicting_everything() {
    let w = Worker::start(Options {
        toml: "[instances]\nmemory_budget_mb = 512\n",
        ..Default::default()
    });
    // Warm instance of another function, which must survive.
    assert_eq!(w.get("/run/hello").status, 200);
    let pkg = tar_gz(&[
        ("f.py", "def f(e):\n    return 1\n"),
        ("ol.yaml", "limits:\n  memory_mb: 1000\n"),
    ]);
    assert_eq!(w.post("/registry/huge", &pkg).status, 201);
    let r = w.get("/run/huge");
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.body.contains("memory budget of 512"), "{}", r.body);
    assert_eq!(
        w.stats()["instances.evicted-total"],
        0,
        "{}",
        w.get("/stats").body
    );
    assert_eq!(w.get("/run/hello").start(), "warm");
}

#[test]
fn unpinned_requirements_are_refused_at_upload() {
    let w = Worker::start(Options::default());
    let before = snapshot(&w.registry);
    for (req, want) in [
        (
            "requests>=2\n",
            "requirements.txt:1: \"requests>=2\" is not pinned",
        ),
        (
            "six==1.16.0\n--index-url http://127.0.0.1:1/\n",
            "requirements.txt:2:",
        ),
    ] {
        let pkg = tar_gz(&[
            ("f.py", "def f(e):\n    return 1\n"),
            ("requirements.txt", req),
        ]);
        let r = w.post("/registry/unpinned", &pkg);
        assert_eq!(r.status, 400, "{req}: {}", r.body);
        assert!(r.body.contains(want), "{req}: {}", r.body);
    }
    assert_eq!(snapshot(&w.registry), before);
}

fn versions(w: &Worker, name: &str) -> Vec<String> {
    let dir = w.work_dir.join("code").join(name);
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn old_versions_are_removed_and_vanished_code_is_unpacked_again() {
    let w = Worker::start(Options {
        toml: "registry_cache_ms = 0\n[instances]\npause_after_ms = 100\nevict_after_ms = 300\n",
        ..Default::default()
    });
    let v1 = tar_gz(&[
        ("f.py", "def f(e):\n    return 1\n"),
        ("pad.txt", &"x".repeat(1 << 20)),
    ]);
    let v2 = tar_gz(&[
        ("f.py", "def f(e):\n    return 2\n"),
        ("pad.txt", &"y".repeat(1 << 20)),
    ]);
    assert_eq!(w.post("/registry/ver", &v1).status, 201);
    assert_eq!(w.get("/run/ver").body.trim(), "1");
    assert_eq!(versions(&w, "ver").len(), 1);
    assert_eq!(w.post("/registry/ver", &v2).status, 201);
    assert_eq!(w.get("/run/ver").body.trim(), "2");
    // The old version's idle instance drains; its directory goes with it.
    wait_for("the old version's directory to go", || {
        versions(&w, "ver").len() == 1
    });
    let only = versions(&w, "ver");
    assert_eq!(only, vec![codestore::version(&v2)]);

    // Someone removes the unpacked code: once the instance is evicted, the
    // next call unpacks it again instead of failing until a restart.
    std::fs::remove_dir_all(w.work_dir.join("code/ver")).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let r = w.get("/run/ver");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body.trim(), "2");
    assert_eq!(versions(&w, "ver"), only);
}

#[test]
fn the_registry_api_needs_its_token_and_never_shows_secrets_without_it() {
    let secret = tar_gz(&[
        (
            "f.py",
            "import os\ndef f(e):\n    return os.environ['API_KEY']\n",
        ),
        ("ol.yaml", "environment:\n  API_KEY: s3cret\n"),
    ]);
    // No token configured: environment values are never served.
    let open = Worker::start(Options::default());
    assert_eq!(open.post("/registry/sec", &secret).status, 201);
    assert_eq!(open.get("/run/sec").body.trim(), "\"s3cret\"");
    let cfg = open.get("/registry/sec/config");
    assert_eq!(cfg.status, 200);
    assert!(!cfg.body.contains("s3cret"), "{}", cfg.body);
    assert!(cfg.body.contains("<redacted>"), "{}", cfg.body);

    let w = Worker::start(Options {
        toml: "registry_token = \"tok-123\"\n",
        ..Default::default()
    });
    let before = snapshot(&w.registry);
    let bad = [("authorization", "Bearer nope")];
    for (method, path, body) in [
        ("GET", "/registry/", None),
        ("GET", "/registry/hello.tar.gz", None),
        ("GET", "/registry/hello/config", None),
        ("POST", "/registry/sec", Some(&secret[..])),
        ("DELETE", "/registry/hello", None),
    ] {
        for headers in [&[][..], &bad[..]] {
            let r = w.call(method, path, body, headers);
            assert_eq!(r.status, 401, "{method} {path}: {}", r.body);
            assert!(r.body.contains("Bearer"), "{}", r.body);
        }
    }
    assert_eq!(
        snapshot(&w.registry),
        before,
        "a refused call changed the store"
    );
    let auth = [("authorization", "Bearer tok-123")];
    let r = w.call("POST", "/registry/sec", Some(&secret), &auth);
    assert_eq!(r.status, 201, "{}", r.body);
    let r = w.call("GET", "/registry/sec/config", None, &auth);
    assert!(r.body.contains("s3cret"), "{}", r.body);
    // Calls need no token: /run is the public contract.
    assert_eq!(w.get("/run/sec").status, 200);
}
