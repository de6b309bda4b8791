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

/// The socket hijack: a function that, while its runtime starts, binds the
/// runtime's socket elsewhere and puts a link to a host socket in its
/// place. The worker (root) used to follow the link and hand the call, and
/// the client the host socket's answer. Now it refuses the link: the call
/// fails with a one-line error and the host socket is never connected to.
#[test]
fn a_function_cannot_redirect_the_workers_runtime_connection() {
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let host = t.path().join("host.sock");
    let staged = t.path().join("staged");
    let hits = fake_runtime(&host);

    let w = Worker::start(Options::default());
    let f = format!(
        r#"import os, socket

_bind = socket.socket.bind

def _hijack(self, addr):
    if isinstance(addr, str) and addr.endswith("rt.sock"):
        _bind(self, addr + ".real")
        os.symlink({host:?}, addr)
        open({staged:?}, "w").close()
    else:
        _bind(self, addr)

socket.socket.bind = _hijack

def f(event):
    return "mine"
"#,
        host = host.display().to_string(),
        staged = staged.display().to_string(),
    );
    add(&w, "hijack", &[("f.py", &f)]);
    let r = w.post("/run/hijack", b"{}");
    assert!(
        staged.exists(),
        "the function did not stage its link (the test would prove nothing)"
    );
    assert_ne!(r.body.trim(), "pwned", "the worker followed the link");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the host socket was reached"
    );
    assert!(r.status >= 500, "{} {}", r.status, r.body);
    assert_eq!(r.body.trim_end().lines().count(), 1, "{}", r.body);
    assert!(r.body.contains("runtime socket is refused"), "{}", r.body);
    let work = w.work_dir.display().to_string();
    assert!(!r.body.contains(&work), "names the work dir: {}", r.body);
    // The worker stays healthy for the functions that behave.
    assert_eq!(w.post("/run/hello", b"{}").status, 200);
}
