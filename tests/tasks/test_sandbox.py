"""Code sandbox: each test checks one adversarial property (nanochat style).

Candidates are solutions to ``f(x) = 2x`` that misbehave in one way each; the verdict must
fail (or pass, where the misbehaviour is harmless), return within its limits, and leave
the parent process and its files untouched.
"""

import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from alignment.tasks.verify.code import CodeVerifier, Sandbox, extract_code

TESTS = "def check(candidate):\n    assert candidate(2) == 4\n"
ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def verifier():
    return CodeVerifier(timeout_s=2.0, memory_mb=512)


def problem(tests=TESTS, prompt=""):
    return SimpleNamespace(id="t", prompt=prompt, tests=tests, entry_point="f")


def run(verifier, body):
    t0 = time.monotonic()
    v = verifier.verify(problem(), "```python\n" + body + "\n```")
    return v, time.monotonic() - t0


def test_correct_solution_passes(verifier):
    v, _ = run(verifier, "def f(x):\n    return 2 * x")
    assert v.passed and v.score == 1.0 and v.error_kind is None


def test_wrong_solution_fails(verifier):
    v, _ = run(verifier, "def f(x):\n    return x + 3")
    assert not v.passed and "AssertionError" in v.detail


def test_infinite_loop_is_killed_at_the_wall_limit(verifier):
    v, dt = run(verifier, "def f(x):\n    while True:\n        pass")
    assert not v.passed and v.detail.startswith(("timeout", "killed"))
    assert dt < 2.0 + 1.5


def test_memory_hog_hits_the_address_space_limit(verifier):
    v, dt = run(verifier, "def f(x):\n    a = bytearray(4 << 30)\n    return 2 * x")
    assert not v.passed and "MemoryError" in v.detail and dt < 2.0


def test_fork_storm_is_capped(verifier):
    body = (
        "import os, time\n"
        "def f(x):\n"
        "    n = 0\n"
        "    for _ in range(500):\n"
        "        try:\n"
        "            if os.fork() == 0:\n"
        "                time.sleep(30); os._exit(0)\n"
        "            n += 1\n"
        "        except OSError:\n"
        "            break\n"
        "    return 2 * x if n < 100 else -1\n"  # passes only if forking was cut off early
    )
    v, dt = run(verifier, body)
    assert v.passed, v.detail  # the cap stopped the storm below 100 processes
    assert dt < 2.0  # and the sleeping children did not hold the verdict to the wall limit


@pytest.mark.parametrize("where", ["tmp", "project"])
def test_writes_outside_its_dir_are_refused(verifier, tmp_path, where):
    # /tmp is a private tmpfs inside the sandbox (the file "does not exist" there); the
    # project folder belongs to another uid (permission denied)
    base = tmp_path if where == "tmp" else Path(__file__).resolve().parent
    target = base / f"pwned-{os.getpid()}.txt"
    try:
        v, _ = run(verifier, f"def f(x):\n    open({str(target)!r}, 'w').write('x')\n    return 2 * x")
        assert not v.passed and ("PermissionError" in v.detail or "FileNotFoundError" in v.detail), v.detail
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)


def test_writes_inside_its_dir_are_allowed(verifier):
    v, _ = run(verifier, "def f(x):\n    open('scratch.txt', 'w').write('ok')\n    return 2 * x")
    assert v.passed, v.detail


@pytest.mark.skipif(not ROOT, reason="network namespace needs root; without it only a Python-level block applies")
def test_network_is_unreachable(verifier):
    body = "import socket\ndef f(x):\n    socket.create_connection(('1.1.1.1', 53), timeout=1)\n    return 2 * x"
    v, dt = run(verifier, body)
    assert not v.passed and "OSError" in v.detail and dt < 2.0


def test_huge_output_is_truncated_and_bounded(verifier):
    sb = verifier.sandbox
    res = sb.run("import sys\nsys.stdout.write('y' * 1_000_000)\ndef f(x):\n    return 2 * x", TESTS, "f")
    assert res.passed  # output alone does not fail a correct solution
    assert len(res.stdout) <= sb.max_output_bytes + len("...[truncated]") and res.stdout.endswith("[truncated]")
    v, dt = run(verifier, "def f(x):\n    while True:\n        print('x' * 10000)")
    assert not v.passed and dt < 2.0  # the file-size limit ends an endless writer before the wall limit


@pytest.mark.parametrize(
    "body",
    [
        "import sys\ndef f(x):\n    sys.exit(0)",  # exit(0) inside the tested function
        "import os\ndef f(x):\n    os._exit(0)",  # hard exit, no exception to catch
        "import os\nos._exit(0)\ndef f(x):\n    return 2 * x",  # exit at import, before the tests
        "import os, signal\ndef f(x):\n    os.kill(os.getpid(), signal.SIGKILL)",  # killed by a signal
    ],
)
def test_early_exit_never_passes(verifier, body):
    v, _ = run(verifier, body)
    assert not v.passed and v.error_kind is None


def test_ignored_signals_do_not_keep_it_alive(verifier):
    body = (
        "import signal\n"
        "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):\n"
        "    signal.signal(s, signal.SIG_IGN)\n"
        "def f(x):\n"
        "    while True:\n"
        "        pass\n"
    )
    v, dt = run(verifier, body)
    assert not v.passed and dt < 2.0 + 1.5


def _sandbox_processes(of_uid_prefix: int) -> list[str]:
    """Live (non-zombie) processes running as this test process's sandbox uids."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                uid = p.stat().st_uid
                state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if uid // 100 == of_uid_prefix and state != "Z":
                out.append(f"{p.name}:{state}")
    return out


def test_parent_untouched(verifier, tmp_path):
    cwd, env = os.getcwd(), dict(os.environ)
    keep = tmp_path / "keep.txt"
    keep.write_text("original")
    handler = signal.getsignal(signal.SIGTERM)
    body = (
        "import os, time\n"
        f"def f(x):\n"
        f"    for p in ({str(keep)!r}, {cwd!r}):\n"
        "        try:\n"
        "            os.chmod(p, 0)\n"
        "        except OSError:\n"
        "            pass\n"
        "    try:\n"
        "        os.kill(os.getppid(), 9)\n"
        "    except OSError:\n"
        "        pass\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()\n"  # leave the process group: must still die (pid namespace)
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    return 2 * x\n"
    )
    v, _ = run(verifier, body)
    assert v.passed, v.detail
    assert os.getcwd() == cwd and dict(os.environ) == env and signal.getsignal(signal.SIGTERM) == handler
    assert keep.read_text() == "original" and (keep.stat().st_mode & 0o777) != 0
    if ROOT:
        prefix = 2000 + os.getpid() % 10_000  # Sandbox._next_uid: 200_000 + (pid % 10_000) * 100 + n
        deadline = time.monotonic() + 2.0
        while _sandbox_processes(prefix) and time.monotonic() < deadline:
            time.sleep(0.05)  # the kernel tears the pid namespace down asynchronously
        assert _sandbox_processes(prefix) == []  # the setsid'd grandchild died with the sandbox


def test_infra_fault_is_reported_not_scored():
    bad = CodeVerifier(timeout_s=2.0, python="/nonexistent/python")
    v = bad.verify(problem(), "def f(x):\n    return 2 * x")
    assert v.error_kind == "infra" and not v.passed
    dead = CodeVerifier(timeout_s=2.0, python="/bin/false")  # "interpreter" dies before the candidate runs
    v = dead.verify(problem(), "def f(x):\n    return 2 * x")
    assert v.error_kind == "infra"


def test_syntax_error_and_missing_function_fail_without_running(verifier):
    assert "syntax error" in verifier.verify(problem(), "def f(x) return").detail
    assert "no function" in verifier.verify(problem(), "def g(x):\n    return 1").detail


def test_extract_code_completes_a_prompt_signature():
    prompt = "Complete:\n```python\ndef f(x):\n    \"\"\"double\"\"\"\n```"
    code = extract_code("    return 2 * x\n", "f", prompt)
    assert code.startswith("def f(x):") and code.rstrip().endswith("return 2 * x")


def test_humaneval_canonical_pass_and_mutants_fail(verifier):
    from alignment.tasks.problems import load_problems

    problems = load_problems("humaneval", "test", n=4, seed=0)
    good = verifier.verify_many(problems, [p.meta["reference"] for p in problems], workers=2)
    assert all(v.passed for v in good), [v.detail for v in good]
    # an empty body returns None: the official tests must reject it
    stubs = [p.meta["reference"].split('"""')[0] + "    pass\n" for p in problems]
    bad = verifier.verify_many(problems, stubs, workers=2)
    assert not any(v.passed for v in bad)


def test_isolation_is_reported():
    v = CodeVerifier(timeout_s=2.0)
    assert v.verify(problem(), "def f(x):\n    return 2 * x").passed
    assert v.isolation == ("net,paths,pid,tmp" if ROOT else "rlimits-only")
    off = CodeVerifier(timeout_s=2.0, isolate=False)
    assert off.verify(problem(), "def f(x):\n    return 2 * x").passed and off.isolation == "rlimits-only"
    assert Sandbox(isolate=False)._next_uid() is None
