//! What clients see of the host, and what functions cannot forge, end to
//! end: the real `ol-worker` binary running real Python functions that
//! these tests write.
//!
//! - A handler's traceback names files relative to the function's own
//!   directory (`f.py`, `lib/helper.py`), never the worker's work dir, code
//!   dir or runtime; with `tracebacks = "log"` it goes to the worker's log
//!   and the client gets the one-line error.
//! - A function's 1xx (101 included) or a status outside 200-599 becomes a
//!   502 with a one-line reason naming the status; `x-ol-*` and
//!   hop-by-hop/framing headers a function sets are stripped.

mod common;

use std::time::{Duration, Instant};

use common::{Options, Worker};

/// Writes a function (`files`: path in its directory, contents) into the
/// worker's directory registry.
fn add(w: &Worker, name: &str, files: &[(&str, &str)]) {
    for (path, text) in files {
        let p = w.registry.join(name).join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

/// The host paths a client must never see: the test's temp dir holds the
/// worker's work dir (code, instances, runtime) and registry.
fn assert_no_host_paths(w: &Worker, what: &str, body: &str) {
    let tmp = w.work_dir.parent().unwrap().display().to_string();
    for leak in [
        tmp.as_str(),
        &w.work_dir.display().to_string(),
        "ol_runtime",
        "ol_zygote",
        "/code/",
    ] {
        assert!(!body.contains(leak), "{what}: names {leak:?}:\n{body}");
    }
}

const HELPER_FNS: &[(&str, &str)] = &[
    (
        "f.py",
        "from lib import helper\n\ndef f(event):\n    return helper.boom(event)\n",
    ),
    ("lib/__init__.py", ""),
    (
        "lib/helper.py",
        "import os\n\ndef boom(event):\n    \
         open(os.path.join(os.path.dirname(__file__), \"missing.txt\"))\n",
    ),
];

const LOAD_FAILS: &[(&str, &str)] = &[(
    "f.py",
    "import json\nraise RuntimeError(\"cannot start: \" + __file__)\n",
)];

const WSGI_RAISES: &[(&str, &str)] = &[(
    "f.py",
    "def app(environ, start_response):\n    raise KeyError(\"nope\")\n",
)];

#[test]
fn tracebacks_name_function_files_not_worker_paths() {
    // Forked from a zygote (the default) and fresh processes: the runtime
    // is a module in one, `__main__` in the other.
    for toml in ["", "[zygotes]\nenabled = false\n"] {
        let w = Worker::start(Options {
            toml,
            ..Default::default()
        });
        add(&w, "tb", HELPER_FNS);
        add(&w, "tbload", LOAD_FAILS);
        add(&w, "tbwsgi", WSGI_RAISES);

        let r = w.post("/run/tb", b"{}");
        assert_eq!(r.status, 500, "{toml}: {}", r.body);
        let first = r.body.lines().next().unwrap();
        assert!(
            first.starts_with("function tb raised FileNotFoundError:")
                && first.ends_with("No such file or directory: 'lib/missing.txt'"),
            "{toml}: {first}"
        );
        assert!(r.body.contains("Traceback (most recent call last):"));
        assert!(
            r.body.contains("  File \"f.py\", line 4, in f\n"),
            "{toml}: {}",
            r.body
        );
        assert!(
            r.body
                .contains("  File \"lib/helper.py\", line 4, in boom\n"),
            "{toml}: {}",
            r.body
        );
        assert_no_host_paths(&w, "handler traceback", &r.body);

        let r = w.post("/run/tbload", b"{}");
        assert_eq!(r.status, 500, "{toml}: {}", r.body);
        assert!(
            r.body
                .starts_with("function tbload failed to load: RuntimeError: cannot start: f.py\n"),
            "{toml}: {}",
            r.body
        );
        assert!(
            r.body.contains("  File \"f.py\", line 2, in <module>\n"),
            "{toml}: {}",
            r.body
        );
        assert_no_host_paths(&w, "load traceback", &r.body);

        let r = w.post("/run/tbwsgi", b"");
        assert_eq!(r.status, 500, "{toml}: {}", r.body);
        assert!(
            r.body
                .starts_with("function tbwsgi raised KeyError: 'nope'\n"),
            "{toml}: {}",
            r.body
        );
        assert!(
            r.body.contains("  File \"f.py\", line 2, in app\n"),
            "{toml}: {}",
            r.body
        );
        assert_no_host_paths(&w, "WSGI traceback", &r.body);
    }
}

/// Waits until the worker's log contains `needle`.
fn wait_log(w: &Worker, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = w.log();
        if log.contains(needle) || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn tracebacks_log_mode_gives_clients_one_line() {
    let w = Worker::start_logged(Options {
        toml: "tracebacks = \"log\"\n",
        ..Default::default()
    });
    add(&w, "tb", HELPER_FNS);
    add(&w, "tbload", LOAD_FAILS);

    let r = w.post("/run/tb", b"{}");
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(r.body.lines().count(), 1, "{}", r.body);
    assert!(
        r.body.starts_with("function tb raised FileNotFoundError:") && r.body.ends_with('\n'),
        "{}",
        r.body
    );
    assert_no_host_paths(&w, "one-line error", &r.body);
    let log = wait_log(&w, "line 4, in boom");
    assert!(log.contains("lib/helper.py"), "{log}");
    assert!(log.contains("line 4, in boom"), "{log}");

    let r = w.post("/run/tbload", b"{}");
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(
        r.body,
        "function tbload failed to load: RuntimeError: cannot start: f.py\n"
    );
    let log = wait_log(&w, "line 2, in <module>");
    assert!(log.contains("line 2, in <module>"), "{log}");

    // Successful calls are untouched.
    let r = w.post("/run/hello", b"{}");
    assert_eq!((r.status, r.body.as_str()), (200, "\"Hello, world!\""));
}

/// A WSGI app answering whatever `?status=` asks for, with headers a
/// function must not pass to clients.
const WSGI_STATUS: &str = r#"
from urllib.parse import parse_qs, unquote

def app(environ, start_response):
    status = unquote(parse_qs(environ["QUERY_STRING"], keep_blank_values=True).get("status", ["200 OK"])[0])
    start_response(status, [
        ("Content-Type", "text/plain"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("X-OL-Cache", "hit"),
    ])
    return [b"forged body"]
"#;

/// One request; a client error (e.g. an interim response it cannot parse)
/// is reported as the failure it is.
fn call(w: &Worker, path: &str) -> common::Reply {
    common::request("GET", &w.url(path), None, &[])
        .unwrap_or_else(|e| panic!("{path}: the client could not read the reply: {e}"))
}

#[test]
fn wsgi_interim_and_out_of_range_statuses_become_502() {
    let w = Worker::start(Options::default());
    add(&w, "st", &[("f.py", WSGI_STATUS)]);
    let r = call(&w, "/run/st?status=201%20Created");
    assert_eq!(r.status, 201, "{}", r.body);
    for (status, named) in [
        ("101 Switching Protocols", "101"),
        ("100 Continue", "100"),
        ("103 Early Hints", "103"),
        ("199 Odd", "199"),
        ("600 Beyond", "600"),
        ("999 Way Beyond", "999"),
        ("0 Zero", "0"),
        ("70000 Huge", "70000"),
        ("-1 Negative", "-1"),
        ("abc OK", "abc"),
        ("", "''"),
    ] {
        let q = status.replace(' ', "%20");
        let r = call(&w, &format!("/run/st?status={q}"));
        assert_eq!(r.status, 502, "{status:?}: {}", r.body);
        assert_eq!(r.body.lines().count(), 1, "{status:?}: {}", r.body);
        assert!(
            r.body.starts_with("function st answered status ") && r.body.contains(named),
            "{status:?}: {}",
            r.body
        );
        assert!(!r.body.contains("forged body"), "{status:?}: {}", r.body);
        for h in ["x-ol-cache", "upgrade"] {
            assert_eq!(r.header(h), None, "{status:?}: {h}: {:?}", r.headers);
        }
    }
    // The instance is still good after all that.
    assert_eq!(call(&w, "/run/st").status, 200);
}

#[test]
fn wsgi_platform_and_framing_headers_are_stripped() {
    let w = Worker::start(Options::default());
    add(
        &w,
        "hdrs",
        &[(
            "f.py",
            r#"
def app(environ, start_response):
    start_response("200 OK", [
        ("Content-Type", "text/plain"),
        ("X-Custom", "kept"),
        ("X-OL-Cache", "hit"),
        ("x-ol-worker", "127.0.0.1:1"),
        ("X-Ol-Timing", "start=forged"),
        ("Connection", "close"),
        ("Keep-Alive", "timeout=1"),
        ("Transfer-Encoding", "chunked"),
        ("Content-Length", "999"),
        ("Upgrade", "h2c"),
        ("TE", "trailers"),
        ("Trailer", "X-Foo"),
        ("Proxy-Authenticate", "Basic"),
        ("Proxy-Connection", "keep-alive"),
    ])
    return [b"hello"]
"#,
        )],
    );
    for _ in 0..2 {
        let r = call(&w, "/run/hdrs");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body, "hello");
        assert_eq!(r.header("x-custom"), Some("kept"));
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.header("content-length"), Some("5"), "{:?}", r.headers);
        let timing = r.header("x-ol-timing").unwrap_or("");
        assert!(
            timing.contains("run=") && !timing.contains("forged"),
            "{timing}"
        );
        assert_eq!(
            r.headers.iter().filter(|(k, _)| k == "x-ol-timing").count(),
            1
        );
        for h in [
            "x-ol-cache",
            "x-ol-worker",
            "connection",
            "keep-alive",
            "transfer-encoding",
            "upgrade",
            "te",
            "trailer",
            "proxy-authenticate",
            "proxy-connection",
        ] {
            assert_eq!(r.header(h), None, "{h}: {:?}", r.headers);
        }
    }
}

/// `f(event)` has no way to set a status or headers: its return value is
/// the JSON body of a 200. This one goes further and replaces the runtime's
/// reply code (it shares the interpreter), answering the head its event
/// asks for: the worker still refuses what the platform would not send.
const FORGER: &str = r#"
import json, sys

rt = next(m for m in list(sys.modules.values())
          if callable(getattr(m, "_call_f", None)) and callable(getattr(m, "_serve", None)))

def forged(fn, name, body):
    ev = json.loads(body)
    return {"status": ev["status"], "headers": ev["headers"]}, b"forged body"

if __import__("os").environ.get("FORGE", "1") == "1":
    rt._call_f = forged

def f(event):
    return "not forged"
"#;

#[test]
fn plain_f_replies_cannot_forge_status_or_headers() {
    let w = Worker::start(Options::default());
    add(
        &w,
        "plain",
        &[(
            "f.py",
            "def f(event):\n    return {\"statusCode\": 101, \"headers\": {\"x-ol-cache\": \"hit\"}}\n",
        )],
    );
    let r = w.post("/run/plain", b"{}");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-ol-cache"), None);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["statusCode"], 101);

    add(&w, "forger", &[("f.py", FORGER)]);
    let bad = r#"[["upgrade", "websocket"], ["connection", "upgrade"], ["x-ol-cache", "hit"]]"#;
    for status in [101, 100, 0, 199, 600, 65535] {
        let body = format!(r#"{{"status": {status}, "headers": {bad}}}"#);
        let r = common::request("POST", &w.url("/run/forger"), Some(body.as_bytes()), &[])
            .unwrap_or_else(|e| {
                panic!("status {status}: the client could not read the reply: {e}")
            });
        assert_eq!(r.status, 502, "status {status}: {}", r.body);
        assert_eq!(
            r.body,
            format!(
                "function forger answered status {status}; \
                 the worker passes on only final statuses 200-599\n"
            )
        );
        assert_eq!(r.header("x-ol-cache"), None, "{:?}", r.headers);
        assert_eq!(r.header("upgrade"), None, "{:?}", r.headers);
        // The function's doing: it must not count toward ejecting the worker.
        assert_eq!(r.header("x-ol-error"), Some("function"), "{:?}", r.headers);
    }
    let body = format!(r#"{{"status": 203, "headers": {bad}}}"#);
    let r = w.post("/run/forger", body.as_bytes());
    assert_eq!(r.status, 203, "{}", r.body);
    assert_eq!(r.body, "forged body");
    for h in ["x-ol-cache", "upgrade", "connection"] {
        assert_eq!(r.header(h), None, "{h}: {:?}", r.headers);
    }
}
