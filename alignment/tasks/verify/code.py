"""Code verifier: extract the program from a response and run the problem's tests in a sandbox.

    from alignment.tasks.verify import get_verifier
    v = get_verifier("code", timeout_s=5.0)
    v.verify(problem, response)   # problem.tests defines check(candidate); problem.entry_point names it

Each verdict runs one fresh subprocess (``sandbox_harness.py``) in its own temp directory.

What the sandbox covers:
- CPU time (RLIMIT_CPU, then SIGKILL at the hard limit, so ignoring SIGXCPU does not help),
  wall time (the whole process group is SIGKILLed at ``timeout_s``);
- address space (RLIMIT_AS: a memory hog gets MemoryError), file size (RLIMIT_FSIZE: also
  caps stdout/stderr, which go to files; we read back at most ``max_output_bytes``), open
  files (RLIMIT_NOFILE), no core dumps;
- processes: RLIMIT_NPROC under a throwaway uid (as root; root itself ignores NPROC), and a
  private PID namespace whose init is the candidate's process, so every descendant dies
  with it, even one that called setsid() to leave the process group;
- network: a private network namespace (only a down loopback device);
- files: the candidate runs as a uid that owns only its temp dir, so it cannot write the
  project or the parent's files; /tmp, /var/tmp and /dev/shm are private tmpfs mounts;
- environment: scrubbed (PATH, HOME, LANG, thread caps, PYTHONHASHSEED=0 only);
- early exit: a verdict passes only if the harness reached the end of ``check`` and wrote
  a per-run random nonce to a private status pipe (``sys.exit``, ``os._exit``, signals and
  crashes all fail).

What it does not cover:
- the namespaces and the uid drop need root (or user namespaces); without them the
  verifier falls back to rlimits, a Python-level socket block and process-group kill, and
  reports this in ``CodeVerifier.isolation`` (``require_isolation=True`` turns the
  fallback into an ``infra`` verdict instead);
- code written to game this harness (reading the nonce from the harness's own frames and
  writing it to the status pipe) is not defended against: the nonce stops accidents and
  early exits, not a deliberate attack on the verifier;
- reading world-readable files (the project source, /etc) is allowed; there is no seccomp
  filter, and kernel exploits are out of scope. Run untrusted code at scale in a VM.

Verdicts: ``passed`` (score 1.0) only on a clean run with the sentinel. Timeouts, limits,
exceptions, syntax errors give ``passed=False, error_kind=None``. A sandbox that could not
start (spawn error, harness setup error, missing interpreter) gives ``error_kind="infra"``.

Run the adversarial tests: ``python -m pytest -q tests/tasks/test_sandbox.py``.
"""

from __future__ import annotations

import ast
import marshal
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from alignment.tasks.verify import Verdict

HARNESS = Path(__file__).with_name("sandbox_harness.py")
_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


@dataclass
class SandboxResult:
    """Raw outcome of one sandboxed run."""

    passed: bool
    status: str  # ok | fail | timeout | infra
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    isolation: str = ""  # what the harness obtained, e.g. "net,paths,pid,tmp" ("" = rlimits only)


# --------------------------------------------------------------------------- extraction


def _defines(code: str, name: str | None) -> bool:
    if not name:
        return True
    return re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def extract_code(response: str, entry_point: str | None = None, prompt: str | None = None) -> str | None:
    """The program in a response.

    Takes the last fenced block that defines ``entry_point`` (else the last fenced block,
    else the whole response). If the result does not define ``entry_point`` but the
    problem's prompt contains a code block that does (HumanEval-style completion), the
    prompt's code is put in front.
    """
    if not isinstance(response, str) or not response.strip():
        return None
    blocks = [m.group(2) for m in _FENCE_RE.finditer(response) if m.group(1).lower() in ("", "python", "py", "python3")]
    code = next((b for b in reversed(blocks) if _defines(b, entry_point)), blocks[-1] if blocks else response)
    if not _defines(code, entry_point) and prompt:
        prompt_blocks = [m.group(2) for m in _FENCE_RE.finditer(prompt)]
        prefix = next((b for b in prompt_blocks if _defines(b, entry_point)), None)
        if prefix is not None:
            code = prefix.rstrip("\n") + "\n" + code
    return code if code.strip() else None


# --------------------------------------------------------------------------- sandbox


class Sandbox:
    """Runs ``solution`` + ``tests`` (defining ``check(candidate)``) in an isolated subprocess.

    Args:
        timeout_s (`float`, *optional*, defaults to `5.0`): wall-clock limit.
        cpu_s (`int`, *optional*, defaults to `5`): CPU-seconds limit (RLIMIT_CPU soft).
        memory_mb (`int`, *optional*, defaults to `1024`): address-space limit.
        max_procs (`int`, *optional*, defaults to `16`): processes the candidate uid may have.
        max_file_mb (`int`, *optional*, defaults to `16`): largest file (and stdout) it may write.
        max_open_files (`int`, *optional*, defaults to `64`): RLIMIT_NOFILE.
        max_output_bytes (`int`, *optional*, defaults to `4096`): stdout/stderr kept per stream.
        isolate (`bool`, *optional*, defaults to `True`): use namespaces and a uid drop when possible.
        require_isolation (`bool`, *optional*, defaults to `False`): make missing namespaces an infra fault.
        python (`str`, *optional*): interpreter for the candidate (defaults to this one).
    """

    _uid_lock = threading.Lock()
    _uid_counter = 0

    def __init__(
        self,
        timeout_s: float = 5.0,
        cpu_s: int = 5,
        memory_mb: int = 1024,
        max_procs: int = 16,
        max_file_mb: int = 16,
        max_open_files: int = 64,
        max_output_bytes: int = 4096,
        isolate: bool = True,
        require_isolation: bool = False,
        python: str | None = None,
    ):
        self.timeout_s = timeout_s
        self.limits = {
            "cpu_s": int(cpu_s),
            "as_bytes": int(memory_mb) << 20,
            "nproc": int(max_procs),
            "fsize_bytes": int(max_file_mb) << 20,
            "nofile": int(max_open_files),
        }
        self.max_output_bytes = max_output_bytes
        self.isolate = isolate
        self.require_isolation = require_isolation
        self.python = python or sys.executable
        self.is_root = os.geteuid() == 0
        # the interpreter's files must stay readable after the uid drop (see harness _expose)
        self._expose = sorted({sys.base_prefix, sys.prefix, *(p for p in sys.path if p.startswith("/") and os.path.isdir(p))})

    def _next_uid(self) -> int | None:
        if not (self.isolate and self.is_root):
            return None
        # a distinct throwaway uid per run (no passwd entry needed): NPROC then counts only
        # this run's processes, and concurrent runs cannot signal each other
        with Sandbox._uid_lock:
            Sandbox._uid_counter += 1
            return 200_000 + (os.getpid() % 10_000) * 100 + Sandbox._uid_counter % 100

    def _nproc_limit(self) -> int:
        if self.is_root:
            return self.limits["nproc"]
        # without a uid drop NPROC counts all of this user's processes: allow headroom
        uid, n = os.getuid(), 0
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    n += p.stat().st_uid == uid
                except OSError:
                    pass
        return n + self.limits["nproc"]

    def _env(self, work: str) -> dict[str, str]:
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": work,
            "TMPDIR": "/tmp",
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONIOENCODING": "utf-8",
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }

    def run(self, solution: str, tests: str, entry_point: str) -> SandboxResult:
        t0 = time.monotonic()
        try:
            work = tempfile.mkdtemp(prefix="synth-sbx-")
        except OSError as e:
            return SandboxResult(False, "infra", None, "", f"mkdtemp: {e}", 0.0)
        proc = None
        status_r = status_w = -1
        try:
            uid = self._next_uid()
            Path(work, "solution.py").write_text(solution, encoding="utf-8")
            Path(work, "test.py").write_text(tests, encoding="utf-8")
            if uid is not None:
                os.chown(work, uid, uid)
                for name in ("solution.py", "test.py"):
                    os.chown(os.path.join(work, name), uid, uid)
            nonce = secrets.token_hex(16)
            status_r, status_w = os.pipe()
            cfg = {
                "status_fd": status_w,
                "nonce": nonce,
                "entry_point": entry_point,
                "uid": uid,
                "isolate": self.isolate and self.is_root,
                "require_isolation": self.require_isolation,
                "limits": {**self.limits, "nproc": self._nproc_limit()},
                "expose": self._expose,
            }
            with open(os.path.join(work, ".stdout"), "wb") as fout, open(os.path.join(work, ".stderr"), "wb") as ferr:
                proc = subprocess.Popen(
                    [self.python, "-S", "-s", "-P", "-B", str(HARNESS)],
                    stdin=subprocess.PIPE,
                    stdout=fout,
                    stderr=ferr,
                    cwd=work,
                    env=self._env(work),
                    pass_fds=(status_w,),
                    start_new_session=True,  # own process group: killpg reaches its descendants
                )
            os.close(status_w)
            status_w = -1
            try:
                proc.stdin.write(marshal.dumps(cfg))
                proc.stdin.close()
            except BrokenPipeError:
                pass
            # a blocking wait plus a kill timer: Popen.wait(timeout=) polls with sleeps of up to
            # 50 ms, which would cap throughput at short verdicts
            expired = threading.Event()

            def _expire() -> None:
                expired.set()
                self._kill_group(proc)

            timer = threading.Timer(self.timeout_s, _expire)
            timer.start()
            try:
                rc = proc.wait()
            finally:
                timer.cancel()
            timed_out = expired.is_set()
            self._kill_group(proc)
            status = self._read_status(status_r)
            stdout = self._read_capped(os.path.join(work, ".stdout"))
            stderr = self._read_capped(os.path.join(work, ".stderr"))
        except OSError as e:
            if proc is not None:
                self._kill_group(proc)
            return SandboxResult(False, "infra", None, "", f"spawn: {e}", time.monotonic() - t0)
        finally:
            for fd in (status_r, status_w):
                if fd >= 0:
                    os.close(fd)
            shutil.rmtree(work, ignore_errors=True)
        wall = time.monotonic() - t0
        if timed_out:
            return SandboxResult(False, "timeout", rc, stdout, stderr, wall)
        if not status.startswith(b"R"):
            if rc == 3 and "HARNESS_SETUP_ERROR" in stderr:
                return SandboxResult(False, "infra", rc, stdout, stderr, wall)
            if rc != 0 and not stderr.strip():
                # died before the candidate ran and without a word: the interpreter itself failed
                return SandboxResult(False, "infra", rc, stdout, f"harness died (rc={rc}) before running the candidate", wall)
        head, _, rest = status.partition(b";")
        isolation = head[1:].decode(errors="replace")
        passed = rc == 0 and status.startswith(b"R") and rest == b"P" + nonce.encode()
        return SandboxResult(passed, "ok" if passed else "fail", rc, stdout, stderr, wall, isolation)

    @staticmethod
    def _kill_group(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    @staticmethod
    def _read_status(fd: int) -> bytes:
        os.set_blocking(fd, False)
        try:
            return os.read(fd, 4096)
        except BlockingIOError:
            return b""

    def _read_capped(self, path: str) -> str:
        try:
            with open(path, "rb") as f:
                data = f.read(self.max_output_bytes + 1)
        except OSError:
            return ""
        text = data[: self.max_output_bytes].decode("utf-8", "replace")
        return text + ("...[truncated]" if len(data) > self.max_output_bytes else "")


# --------------------------------------------------------------------------- verifier


def _describe_failure(res: SandboxResult, cpu_s: int) -> str:
    err = res.stderr
    if res.status == "timeout":
        return f"timeout: {res.wall_s:.1f}s wall"
    if res.returncode is not None and res.returncode in (128 + signal.SIGXCPU, 128 + signal.SIGKILL, -signal.SIGXCPU, -signal.SIGKILL):
        return f"killed: cpu limit ({cpu_s}s) or signal, rc={res.returncode}"
    if res.returncode is not None and res.returncode in (128 + signal.SIGXFSZ, -signal.SIGXFSZ):
        return "killed: file size limit"
    m = re.search(r"CANDIDATE_ERROR (.*)", err)
    if m:
        return f"error: {m.group(1)[:200]}"
    if "MemoryError" in err:
        return "error: MemoryError"
    return f"exited early (rc={res.returncode}) without finishing the tests"


class CodeVerifier:
    """``verify(problem, response) -> Verdict`` for code problems (``tests`` defines ``check``).

    Args:
        timeout_s (`float`, *optional*, defaults to `5.0`): wall-clock limit per verdict.
        **sandbox_kwargs: passed to :class:`Sandbox` (cpu_s, memory_mb, max_procs, ...).
    """

    version = "code-1"

    def __init__(self, timeout_s: float = 5.0, **sandbox_kwargs: Any):
        sandbox_kwargs.setdefault("cpu_s", max(1, int(timeout_s)))
        self.sandbox = Sandbox(timeout_s=timeout_s, **sandbox_kwargs)
        self.last_isolation = ""

    @property
    def isolation(self) -> str:
        """What the last sandbox run obtained (``net,paths,pid,tmp`` = full; ``rlimits-only`` = none)."""
        return self.last_isolation or "rlimits-only"

    def verify(self, problem: Any, response: str) -> Verdict:
        if not problem.tests or not problem.entry_point:
            return Verdict(False, 0.0, f"problem {problem.id} has no tests/entry_point", error_kind="bad_reference")
        code = extract_code(response, problem.entry_point, problem.prompt)
        if code is None:
            return Verdict(False, 0.0, "no code found", formatted=False)
        try:
            ast.parse(code)
        except SyntaxError as e:
            return Verdict(False, 0.0, f"syntax error: line {e.lineno}: {e.msg}", formatted=False)
        except (ValueError, RecursionError, MemoryError) as e:
            return Verdict(False, 0.0, f"unparsable code: {type(e).__name__}", formatted=False)
        if not _defines(code, problem.entry_point):
            return Verdict(False, 0.0, f"no function {problem.entry_point!r} defined", formatted=False)
        return self.verdict_from(self.sandbox.run(code, problem.tests, problem.entry_point))

    def verdict_from(self, res: SandboxResult) -> Verdict:
        if res.isolation:
            self.last_isolation = res.isolation
        if res.status == "infra":
            return Verdict(False, 0.0, f"sandbox fault: {res.stderr.strip()[:200]}", error_kind="infra")
        if res.passed:
            return Verdict(True, 1.0, "ok")
        return Verdict(False, 0.0, _describe_failure(res, self.sandbox.limits["cpu_s"]))

    def verify_many(self, problems: Sequence[Any], responses: Sequence[str], workers: int = 2) -> list[Verdict]:
        """Verify pairs concurrently (each verdict is its own subprocess; threads only wait)."""
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            return list(pool.map(self.verify, problems, responses))
