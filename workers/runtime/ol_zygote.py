"""ol-edge zygote: a Python process that has imported the runtime (and a
package set) and forks new function instances, so that a cold start costs
a fork instead of an interpreter start-up and the imports.

The worker starts it, already unprivileged (its own uid, cgroup, network
namespace and session; see workers/src/sandbox/zygote.rs), as
    python3 -I -S ol_zygote.py --runtime PATH [--packages DIR:DIR...]
with stdin a SOCK_SEQPACKET socket to the worker. It imports the runtime
and every top-level module of each package directory, prints "ready" on
stdout, and then serves fork requests until the worker closes the socket.

A request is one message: JSON {"code", "name", "dir", "env", "packages",
"uid", "userns", "netns", "mntns", "nproc", "nofile", "as_bytes", "limit_ms"} with three file
descriptors attached: the instance's log file, its channel (a stream
socket to the worker) and its runtime's connection to the worker (the
other socket pair). The zygote forks and answers {"pid": N} (or
{"error": "..."}); it keeps the channel, and when it reaps the child it
writes "exit <raw wait status>" on it, so the worker can say why the
instance died. The child, before any function code runs:
  1. closes the other instances' channels, starts its own session, sends
     stderr (and prints) to the log;
  2. with "userns", unshares a user namespace (and with "netns" a network
     namespace, with "mntns" a mount namespace), writes "ns" on the channel
     and waits for "go": meanwhile the worker maps the instance's uid and
     gid into that namespace, moves the child into the instance's cgroup
     and mounts its own code, /tmp and /dev/shm into its mount namespace;
  3. becomes that uid and gid with no supplementary groups, clears every
     capability, sets no_new_privs, dies with the zygote (PDEATHSIG),
     lowers its rlimits, and enters its scratch directory with the
     function's environment;
  4. runs the runtime exactly as a fresh instance would (ol_runtime.main):
     "ready" or "error <line>" on the channel, then the socket protocol.
"""

import ctypes
import importlib.util
import json
import os
import resource
import signal
import socket
import sys

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def _load_runtime(path):
    # By path: the work dir holding it is not listable by sandbox uids, so
    # a sys.path entry would not find it (and must not be on the path).
    spec = importlib.util.spec_from_file_location("ol_runtime", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ol_runtime"] = mod
    spec.loader.exec_module(mod)
    return mod


def _preimport(dirs):
    """Imports each top-level module of the package directories."""
    for d in dirs:
        for entry in sorted(os.listdir(d)):
            if entry.endswith(".py"):
                name = entry[:-3]
            elif os.path.isfile(os.path.join(d, entry, "__init__.py")):
                name = entry
            else:
                continue
            if not name.isidentifier() or name.startswith("_"):
                continue
            try:
                __import__(name)
            except Exception as e:  # a module that needs more than it has
                sys.stderr.write(f"zygote: import {name}: {type(e).__name__}: {e}\n")


def _check(ret, what, libc):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


# Live children: pid -> the zygote's copy of their channel.
_children = {}


def _reap(signum, frame):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = _children.pop(pid, None)
        if fd is not None:
            # One short line into a socket nobody else writes to: never
            # blocks. (Not O_NONBLOCK: the child shares this file.)
            try:
                os.write(fd, f"exit {status}\n".encode())
            except OSError:
                pass
            os.close(fd)


def _child(req, fds, zygote_pid, rt, libc):
    log_fd, chan_fd, rt_fd = fds
    _children.clear()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
    os.setsid()
    os.dup2(log_fd, 2)
    os.dup2(chan_fd, 1)
    os.close(log_fd)
    os.close(chan_fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # fd 0 was the zygote's socket to the worker
    os.close(null)
    # Nothing else of the zygote's: other instances' channels, and files
    # its imports opened, which every forked instance would share.
    os.closerange(3, rt_fd)
    os.closerange(rt_fd + 1, 1 << 16)
    flags = (
        (CLONE_NEWUSER if req["userns"] else 0)
        | (CLONE_NEWNET if req["netns"] else 0)
        | (CLONE_NEWNS if req.get("mntns") else 0)
    )
    if flags:
        _check(libc.unshare(flags), "unshare", libc)
    os.write(1, b"ns\n")
    if os.read(1, 3) != b"go\n":
        os._exit(1)
    uid = req.get("uid")
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
        data = (ctypes.c_uint32 * 6)()
        _check(libc.capset(header, data), "capset", libc)
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs", libc)
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig", libc)
    if os.getppid() != zygote_pid:
        os._exit(1)  # the zygote died before PDEATHSIG was set
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if req.get("nproc"):
        resource.setrlimit(resource.RLIMIT_NPROC, (req["nproc"], req["nproc"]))
    if req.get("nofile"):
        resource.setrlimit(resource.RLIMIT_NOFILE, (req["nofile"], req["nofile"]))
    if req.get("as_bytes"):
        resource.setrlimit(resource.RLIMIT_AS, (req["as_bytes"], req["as_bytes"]))
    os.umask(0o077)
    os.chdir(req["dir"])
    os.environ.clear()
    os.environ.update(req["env"])
    argv = ["ol_runtime", "--code", req["code"], "--fd", str(rt_fd), "--name", req["name"]]
    argv += ["--limit-ms", str(req.get("limit_ms") or 0)]
    if req.get("packages"):
        argv += ["--packages", os.pathsep.join(req["packages"])]
    sys.stdout.flush()
    os._exit(rt.main(argv))


def _serve(ctl, rt, libc):
    zygote_pid = os.getpid()
    while True:
        msg, fds, _, _ = socket.recv_fds(ctl, 65536, 4)
        if not msg:
            return 0  # the worker is gone
        # SIGCHLD waits until the child is in _children (else a child that
        # exits at once would be reaped with nowhere to report to).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        try:
            req = json.loads(msg)
            if len(fds) != 3:
                raise ValueError(f"expected 3 file descriptors, got {len(fds)}")
            pid = os.fork()
        except (OSError, ValueError) as e:
            for fd in fds:
                os.close(fd)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            ctl.send(json.dumps({"error": f"{type(e).__name__}: {e}"}).encode())
            continue
        if pid == 0:
            try:
                ctl.close()
                _child(req, fds, zygote_pid, rt, libc)
            except BaseException as e:
                try:
                    os.write(2, f"zygote child: {type(e).__name__}: {e}\n".encode())
                finally:
                    os._exit(1)
        os.close(fds[0])
        os.close(fds[2])
        _children[pid] = fds[1]
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        ctl.send(json.dumps({"pid": pid}).encode())


def main(argv):
    args = dict(zip(argv[1::2], argv[2::2]))
    ready = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # imports' prints go to the log, not the ready pipe
    ctl = socket.socket(fileno=0)
    rt = _load_runtime(args["--runtime"])
    libc = ctypes.CDLL(None, use_errno=True)
    dirs = [p for p in args.get("--packages", "").split(os.pathsep) if p]
    sys.path[0:0] = dirs
    _preimport(dirs)
    signal.signal(signal.SIGCHLD, _reap)
    ready.write("ready\n")
    ready.flush()
    ready.close()
    return _serve(ctl, rt, libc)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
