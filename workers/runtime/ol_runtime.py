"""ol-edge Python runtime: runs one function instance inside a sandbox.

The worker starts it as
    python3 -I -S ol_runtime.py --code DIR (--fd N | --socket PATH)
                                [--name NAME] [--packages DIR:DIR...]
It puts the --packages directories (the worker's package store) on
sys.path, imports DIR/f.py, prints "ready" on stdout (or "error <one
line>" and the traceback on stderr if the import failed) and then serves
the worker, one call at a time, on fd N (the process backend: its end of
a socket pair, so no path exists that a function could redirect) or on
one connection to a unix socket it binds at PATH (the Docker backend). It
exits when the worker closes the connection.

Wire format (both ways): frames of a 4-byte big-endian length and a payload.
A call is two frames, a JSON head and the raw body; so is a reply.
  call head:  {"method", "path", "query", "headers": [[k, v], ...]}
  reply head: {"status", "headers": [[k, v], ...]}
A module-level `f(event)` gets the body parsed as JSON (empty: {}) and its
return value goes back as JSON. A module-level WSGI `app` gets the request.

What clients see of the host: tracebacks and error lines name files
relative to the function's directory (`f.py`, `lib/x.py`); the runtime's
own frames are dropped, and other worker paths become `<packages>/`,
`<runtime>/` or `<python>/`. An error reply that carries a traceback after
its first line says so with the header `x-ol-traceback: 1` (the worker
removes it, and with `tracebacks = "log"` moves the traceback to its log).
A WSGI status that is not a final status 200-599 becomes a 502 naming it.

Without --code (a pre-started instance of the Docker sandbox's pool) it
prints "ready" once listening and takes its function from the first
connection: one frame pair, head {"init": {"code", "name", "env"}} and an
empty body; it answers {"status": 200} once the function is loaded, or
{"status": 500, "error": "<one line>"} with the traceback as body and
exits; then it serves the next connection as above.
"""

import json
import os
import socket
import struct
import sys

# `io` and `traceback` are imported where used: they cost
# several milliseconds of every cold start and most calls never need them.

_LEN = struct.Struct(">I")
_JSON_HEADERS = [["content-type", "application/json"]]
_TEXT_HEADERS = [["content-type", "text/plain; charset=utf-8"]]
_TRACEBACK_HEADERS = _TEXT_HEADERS + [["x-ol-traceback", "1"]]

_RT_DIR = os.path.dirname(os.path.abspath(__file__))
# (host path prefix, what clients see instead), longest prefix first.
_HIDE = []


def _hide_paths(code_dir, packages=()):
    """Sets the path prefixes `_scrub` replaces: the code dir (made
    relative), package dirs, the runtime's dir (the worker's work dir in
    the process backend) and the standard library."""
    pairs = []

    def add(d, shown):
        d = d.rstrip("/")
        if d:
            for v in {d, os.path.realpath(d)}:
                pairs.append((v + "/", shown + "/" if shown else ""))
                pairs.append((v, shown or "."))

    add(code_dir, "")
    for p in packages:
        add(p, "<packages>")
    add(_RT_DIR, "<runtime>")
    add(os.path.dirname(os.__file__), "<python>")
    pairs.sort(key=lambda pr: -len(pr[0]))
    _HIDE[:] = pairs


def _scrub(text):
    for prefix, shown in _HIDE:
        text = text.replace(prefix, shown)
    return text


def _one_line(text):
    return _scrub(str(text)).replace("\r", " ").replace("\n", " ")


def _load(code_dir):
    sys.path.insert(0, code_dir)
    module = __import__("f")
    if callable(getattr(module, "f", None)):
        return "f", module.f
    if callable(getattr(module, "app", None)):
        return "wsgi", module.app
    raise RuntimeError("f.py defines neither f(event) nor a WSGI app")


def _format_exc():
    return _format(sys.exc_info()[1])


def _format(exc):
    """`exc`'s traceback without the runtime's frames or host paths."""
    import traceback

    top = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    todo, seen = [top], set()
    while todo:
        te = todo.pop()
        if te is None or id(te) in seen:
            continue
        seen.add(id(te))
        te.stack[:] = [
            fs for fs in te.stack if os.path.dirname(os.path.abspath(fs.filename)) != _RT_DIR
        ]
        todo += [te.__cause__, te.__context__] + list(getattr(te, "exceptions", None) or [])
    return _scrub("".join(top.format()))


def _excepthook(etype, exc, tb):
    sys.stderr.write(_format(exc))


def _error(status, line, detail=""):
    body = _one_line(line) + "\n" + detail
    headers = _TRACEBACK_HEADERS if detail else _TEXT_HEADERS
    return {"status": status, "headers": headers}, body.encode()


def _raised(name, e):
    return _error(500, f"function {name} raised {type(e).__name__}: {e}", _format_exc())


def _final_status(status):
    """The code of a WSGI status line if it is a final status 200-599."""
    if isinstance(status, str):
        code = status.split(" ", 1)[0]
        if len(code) == 3 and code.isascii() and code.isdigit() and 200 <= int(code) <= 599:
            return int(code)
    return None


def _call_f(fn, name, body):
    try:
        event = json.loads(body) if body.strip() else {}
    except (ValueError, UnicodeDecodeError) as e:
        return _error(400, f"malformed JSON body: {e}")
    try:
        result = fn(event)
    except Exception as e:  # the handler's own failure: 500 with traceback
        return _raised(name, e)
    try:
        out = json.dumps(result).encode()
    except (TypeError, ValueError) as e:
        return _error(500, f"function {name} returned a value that is not JSON: {e}")
    return {"status": 200, "headers": _JSON_HEADERS}, out


def _call_wsgi(app, name, head, body):
    import io

    environ = {
        "REQUEST_METHOD": head["method"],
        "SCRIPT_NAME": "/run/" + name,
        "PATH_INFO": head["path"] or "/",
        "QUERY_STRING": head["query"],
        "SERVER_NAME": "ol-worker",
        "SERVER_PORT": "0",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for k, v in head["headers"]:
        key = k.upper().replace("-", "_")
        if key == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = v
        elif key != "CONTENT_LENGTH":
            hk = "HTTP_" + key
            environ[hk] = environ[hk] + "," + v if hk in environ else v
    started = {}

    def start_response(status, headers, exc_info=None):
        started["status"] = status
        started["headers"] = headers
        return lambda data: chunks.append(data)

    chunks = []
    try:
        result = app(environ, start_response)
        try:
            for chunk in result:
                chunks.append(chunk)
        finally:
            if hasattr(result, "close"):
                result.close()
    except Exception as e:
        return _raised(name, e)
    if "status" not in started:
        return _error(500, f"function {name}: WSGI app did not call start_response")
    status = _final_status(started["status"])
    if status is None:
        shown = repr(started["status"])
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return _error(
            502, f"function {name} answered status {shown}; the worker passes on only final statuses 200-599"
        )
    try:
        headers = [[k, v] for k, v in started["headers"]]
        if not all(type(k) is str and type(v) is str for k, v in headers):
            raise TypeError
        body = b"".join(chunks)
    except (TypeError, ValueError):
        return _error(502, f"function {name} answered headers or a body that WSGI does not allow (str pairs, bytes)")
    return {"status": status, "headers": headers}, body


# When the call now running started (time.monotonic()), or None.
_busy = [None]
# How long past its limit a call may run before the runtime ends itself
# (the worker kills it at the limit; this is for a worker that is gone).
_LIMIT_GRACE_S = 1.0


def _watch(conn, limit_ms):
    """A thread that ends the runtime, whatever the function's own threads
    do, when the worker closes the channel (it is gone) or a call runs past
    its limit plus a grace: a sandbox never outlives its worker by more
    than that, even before the worker's guard acts. A function could
    defeat it (it is the same process); the worker and its guard are what
    enforce, this bounds the damage meanwhile."""
    import _thread
    import select
    import time

    exit_now, write, monotonic = os._exit, os.write, time.monotonic
    limit_s = limit_ms / 1000 if limit_ms else None

    def run():
        p = select.poll()
        p.register(conn.fileno(), select.POLLRDHUP)
        while True:
            if p.poll(500):
                exit_now(0)  # hung up (POLLRDHUP, POLLHUP or POLLERR)
            since = _busy[0]
            if limit_s and since is not None and monotonic() - since > limit_s + _LIMIT_GRACE_S:
                write(2, b"runtime: the call ran past its limit; exiting\n")
                exit_now(1)

    _thread.start_new_thread(run, ())


def _serve(conn, mode, fn, name, limit_ms=0):
    import time

    _watch(conn, limit_ms)
    rfile = conn.makefile("rb", buffering=65536)
    read = rfile.read
    while True:
        n = read(4)
        if len(n) < 4:
            return
        head = json.loads(read(_LEN.unpack(n)[0]))
        body = read(_LEN.unpack(read(4))[0])
        _busy[0] = time.monotonic()
        if mode == "f":
            rhead, rbody = _call_f(fn, name, body)
        else:
            rhead, rbody = _call_wsgi(fn, name, head, body)
        _busy[0] = None
        h = json.dumps(rhead).encode()
        conn.sendall(b"".join((_LEN.pack(len(h)), h, _LEN.pack(len(rbody)), rbody)))


def _frame(rfile):
    n = rfile.read(4)
    if len(n) < 4:
        raise EOFError("connection closed")
    return rfile.read(_LEN.unpack(n)[0])


def _deferred(sock_path, ready, packages):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(1)
    ready.write("ready\n")
    ready.flush()
    ready.close()
    conn, _ = srv.accept()
    rfile = conn.makefile("rb", buffering=0)
    try:
        init = json.loads(_frame(rfile))["init"]
        _frame(rfile)
    except EOFError:  # the worker went away before handing a function over
        return 0
    name = init.get("name", "f")
    limit_ms = int(init.get("limit_ms") or 0)
    os.environ.update(init.get("env") or {})
    _hide_paths(init["code"], packages)
    try:
        mode, fn = _load(init["code"])
    except BaseException as e:
        detail = _format_exc()
        sys.stderr.write(detail)
        head = json.dumps({"status": 500, "error": _one_line(f"{type(e).__name__}: {e}")}).encode()
        body = detail.encode()
        conn.sendall(b"".join((_LEN.pack(len(head)), head, _LEN.pack(len(body)), body)))
        return 1
    head = json.dumps({"status": 200}).encode()
    conn.sendall(b"".join((_LEN.pack(len(head)), head, _LEN.pack(0))))
    conn.close()
    conn, _ = srv.accept()
    srv.close()
    _serve(conn, mode, fn, name, limit_ms)
    return 0


def _block_io_uring():
    """Installs the seccomp filter of workers/src/sandbox/seccomp.rs (the
    same program): io_uring_setup/enter/register fail with ENOSYS. Stacked
    on the container's own profile; needs no_new_privs, set here too."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    class Op(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte),
                    ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Op))]

    ops = (Op * 7)(
        Op(0x20, 0, 0, 0),  # load the syscall number
        Op(0x54, 0, 0, 0xBFFFFFFF),  # clear the x32 bit
        Op(0x15, 3, 0, 425),  # io_uring_setup
        Op(0x15, 2, 0, 426),  # io_uring_enter
        Op(0x15, 1, 0, 427),  # io_uring_register
        Op(0x06, 0, 0, 0x7FFF0000),  # allow
        Op(0x06, 0, 0, 0x00050000 | 38),  # ENOSYS
    )
    prog = Prog(len(ops), ops)
    if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(22, 2, ctypes.byref(prog)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot install the io_uring filter: {os.strerror(err)}")


def main(argv):
    if "--block-io-uring" in argv:
        argv = [a for a in argv if a != "--block-io-uring"]
        _block_io_uring()
    # A container's function environment, applied only now (after the
    # filter): as the process's own environment from the start, LD_PRELOAD
    # and the like would have run code before it.
    own = os.environ.pop("OL_FUNCTION_ENV", None)
    if own:
        os.environ.update(json.loads(own))
    args = dict(zip(argv[1::2], argv[2::2]))
    code, sock_path, name = args.get("--code"), args.get("--socket"), args.get("--name", "f")
    packages = [p for p in (args.get("--packages") or "").split(os.pathsep) if p]
    sys.path[0:0] = [p for p in packages if p not in sys.path]
    sys.excepthook = _excepthook  # a runtime failure's traceback hides host paths too
    ready = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the handler's prints go to the log, not the ready pipe
    if code is None:
        return _deferred(sock_path, ready, packages)
    _hide_paths(code, packages)
    try:
        mode, fn = _load(code)
    except BaseException as e:
        detail = _format_exc()
        msg = _one_line(f"{type(e).__name__}: {e}")
        sys.stderr.write(detail)
        ready.write(f"error {msg}\n")
        ready.flush()
        return 1
    limit_ms = int(args.get("--limit-ms") or 0)
    if "--fd" in args:
        conn = socket.socket(fileno=int(args["--fd"]))
        ready.write("ready\n")
        ready.flush()
        ready.close()
        _serve(conn, mode, fn, name, limit_ms)
        return 0
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(1)
    ready.write("ready\n")
    ready.flush()
    ready.close()
    conn, _ = srv.accept()
    srv.close()
    _serve(conn, mode, fn, name, limit_ms)
    return 0


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    # Not sys.exit: that waits for the function's own threads, and the
    # runtime must end when its worker is gone.
    os._exit(code)
