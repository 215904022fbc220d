"""Sandbox harness: the first (trusted) code that runs in a code-verifier subprocess.

Not imported by the package: ``alignment.tasks.verify.code`` runs it as a script,

    python -S -s -P -B sandbox_harness.py        (marshal-encoded config dict on stdin)

It sets up isolation, then runs ``solution.py`` and ``test.py`` from its working directory
and calls ``check(<entry_point>)``. Protocol on the status pipe (fd given in the config):
``R<isolation>;`` once isolation is in place (the candidate is about to run; ``<isolation>``
lists what was obtained, e.g. ``net,paths,pid,tmp``), then ``P<nonce>`` only
if ``check`` returned normally. A process that exits early (``sys.exit``, ``os._exit``,
a signal) never writes ``P<nonce>``, so it cannot pass. Exit code 3 with a line starting
``HARNESS_SETUP_ERROR`` on stderr means the harness could not set up (an infra fault).

Standard library only: this file runs with the candidate's limits and must not import
the project. Imports are kept minimal (marshal, not json; no traceback): each verdict pays
for them, and ``json`` alone (re, enum) costs more than the rest of the harness.
"""

import ctypes
import marshal
import os
import resource
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
SIGKILL = 9


def _setup_fail(msg):
    sys.stderr.write(f"HARNESS_SETUP_ERROR {msg}\n")
    sys.stderr.flush()
    os._exit(3)


def _isolate(cfg, libc):
    """Namespaces first (they need root), limits and the uid drop later in the child."""
    got = []
    if cfg["isolate"]:
        if libc.unshare(CLONE_NEWNET) == 0:
            got.append("net")
        if libc.unshare(CLONE_NEWNS) == 0:
            # private /tmp, /var/tmp, /dev/shm: writes there vanish with the namespace. The
            # working dir stays reachable because our cwd was entered before the mounts.
            if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) == 0:
                ok = True
                for d in ("/tmp", "/var/tmp", "/dev/shm"):
                    if os.path.isdir(d) and not _private_tmpfs(d, cfg.get("expose", []), libc):
                        ok = False
                if ok:
                    got.append("tmp")
                if _expose(cfg.get("expose", []), libc):
                    got.append("paths")
        if libc.unshare(CLONE_NEWPID) == 0:
            got.append("pid")
    if cfg["require_isolation"] and not {"net", "pid", "tmp", "paths"} <= set(got):
        _setup_fail(f"isolation unavailable (got {got})")
    return got


def _private_tmpfs(d, expose, libc):
    """Cover ``d`` with an empty tmpfs, keeping the interpreter's own folders that live under it.

    A checkout or venv under /tmp (a CI clone, say) would otherwise vanish with the mount: such
    folders are opened before and bind-mounted back after, at the same path.
    """
    keep = []
    for path in expose:
        real = os.path.realpath(path)
        if real.startswith(d + "/") and os.path.isdir(real):
            keep.append((real, os.open(real, os.O_RDONLY | os.O_DIRECTORY)))
    try:
        if libc.mount(b"tmpfs", d.encode(), b"tmpfs", 0, b"size=16m,mode=1777") != 0:
            return False
        for real, fd in keep:
            os.makedirs(real, mode=0o755, exist_ok=True)
            if libc.mount(f"/proc/self/fd/{fd}".encode(), real.encode(), None, MS_BIND | MS_REC, None) != 0:
                return False
        return True
    finally:
        for _, fd in keep:
            os.close(fd)


def _expose(paths, libc):
    """Make the interpreter's own files reachable by the throwaway uid.

    A private parent such as /root (mode 700) blocks the stdlib under /root/.pyenv. Inside
    our mount namespace we cover that parent with an empty tmpfs (hiding the rest of it)
    and bind the needed child back in. Returns False if a path stays unreachable.
    """
    for path in paths:
        parts = os.path.realpath(path).strip("/").split("/")
        for i in range(len(parts) - 1):
            parent = "/" + "/".join(parts[: i + 1])
            if os.stat(parent).st_mode & 0o001:
                continue
            child = parts[i + 1]
            keep = os.open(os.path.join(parent, child), os.O_RDONLY | os.O_DIRECTORY)
            try:
                if libc.mount(b"tmpfs", parent.encode(), b"tmpfs", 0, b"size=1m,mode=755") != 0:
                    return False
                os.mkdir(os.path.join(parent, child))
                src = f"/proc/self/fd/{keep}".encode()
                if libc.mount(src, os.path.join(parent, child).encode(), None, MS_BIND | MS_REC, None) != 0:
                    return False
            finally:
                os.close(keep)
    return True


def _limit_and_drop(cfg):
    lim = cfg["limits"]
    resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (lim["as_bytes"], lim["as_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["fsize_bytes"], lim["fsize_bytes"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (lim["nofile"], lim["nofile"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (lim["nproc"], lim["nproc"]))
    if cfg["uid"] is not None and "paths" in cfg["_got"]:
        # root ignores RLIMIT_NPROC and may write anywhere: run as a throwaway uid instead
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])


def _run_candidate(cfg, status_fd):
    nonce = cfg.pop("nonce").encode()
    if "net" not in cfg["_got"]:
        # fallback when no network namespace: a Python-level block (bypassable by ctypes)
        import socket

        def _no_network(*a, **k):
            raise OSError("network disabled in sandbox")

        socket.socket = _no_network  # type: ignore[assignment]
        socket.create_connection = _no_network  # type: ignore[assignment]
    with open("solution.py", encoding="utf-8") as f:
        solution = f.read()
    with open("test.py", encoding="utf-8") as f:
        tests = f.read()
    os.write(status_fd, b"R" + ",".join(sorted(cfg["_got"])).encode() + b";")
    ns = {"__name__": "__candidate__", "__builtins__": __builtins__}
    try:
        exec(compile(solution, "solution.py", "exec"), ns)
        exec(compile(tests, "test.py", "exec"), ns)
        ns["check"](ns[cfg["entry_point"]])
    except BaseException as e:  # SystemExit/KeyboardInterrupt too: an exit inside the tests is a failure
        sys.stdout.flush()
        sys.stderr.write(f"CANDIDATE_ERROR {type(e).__name__}: {e}"[:500] + "\n")
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    os.write(status_fd, b"P" + nonce)
    os._exit(0)


def main():
    try:
        cfg = marshal.loads(sys.stdin.buffer.read())
        status_fd = cfg["status_fd"]
        libc = ctypes.CDLL(None, use_errno=True)
        cfg["_got"] = _isolate(cfg, libc)
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001
        _setup_fail(f"{type(e).__name__}: {e}")
    if "pid" in cfg["_got"]:
        # the first child is pid 1 of the new namespace: when it dies, every process the
        # candidate started dies with it, even ones that left the process group
        pid = os.fork()
        if pid:
            _, status = os.waitpid(pid, 0)
            os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
        libc.prctl(PR_SET_PDEATHSIG, SIGKILL)
    try:
        _limit_and_drop(cfg)
    except BaseException as e:  # noqa: BLE001
        _setup_fail(f"limits: {type(e).__name__}: {e}")
    _run_candidate(cfg, status_fd)


if __name__ == "__main__":
    main()
