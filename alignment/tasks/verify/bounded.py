"""Run a pure-Python computation with a CPU-time bound, in any thread, without signals.

    from alignment.tasks.verify.bounded import run_bounded
    finished, value = run_bounded(lambda: sympy.simplify(expr), cpu_s=0.5)

``signal.alarm`` (what Math-Verify's own timeouts use) works only in the main thread; the
math verifier also runs in worker threads (``synth/search/lockstep.py``) and under the eval
stage. Here one daemon watchdog thread watches every bounded call: when a call's thread has
spent more than ``cpu_s`` seconds of its own CPU time (``pthread_getcpuclockid``; wall time
where that clock is missing) or ``wall_s`` seconds of wall time, the watchdog raises
:class:`Deadline` inside that thread (``PyThreadState_SetAsyncExc``). ``run_bounded`` catches
it and returns ``(False, None)``.

Where the exception lands. An asynchronous exception is unsafe in code that takes a lock
and then enters ``try``/``with`` in a later bytecode (importlib's module locks, ``logging``,
``threading.Condition``): landing in between leaks the lock and deadlocks the process (a
stress test did exactly that through SymPy's lazy ``import`` inside ``simplify``). So the
watchdog fires only while the thread's innermost frame is in a module listed in
``interruptible`` (default: SymPy, mpmath, ANTLR, latex2sympy2_extended, Math-Verify, which
take no locks) and no frame between it and ``run_bounded`` is in importlib, threading,
logging, queue or concurrent code; otherwise it looks again on the next tick. A thread that
waits for the GIL resumes exactly in the frame the watchdog inspected, and the pending
exception is raised there before any other bytecode runs. The watchdog fires once per call.

Why CPU time: under the GIL, 64 search threads verifying at once each wait for the others;
a wall-clock budget would then fail correct answers on a busy box. Thread CPU time counts
only the work of the call itself. The wall-clock bound (default 20x the CPU budget) is a
backstop.

Limits:
  * one long C call (``9 ** 387420489`` on Python ints, a huge regex match) is not
    interrupted: callers must refuse such inputs first (the math verifier bounds answer
    length, nesting, power and factorial sizes before any evaluation);
  * a computation that never enters an ``interruptible`` module runs to its end;
  * ``Deadline`` derives from ``BaseException``, so ``except Exception`` in library code does
    not swallow it;
  * nested ``run_bounded`` calls in one thread run inside the outer bound only.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import sys
import threading
import time
from typing import Any, Callable

TICK_S = 0.02  # how often the watchdog looks at armed calls
LINGER_S = 2.0  # the watchdog keeps ticking this long after the last call, then sleeps
WALL_FACTOR = 20.0  # default wall-clock backstop, as a multiple of the CPU budget
# path fragments of modules where a Deadline may land (pure computation, no locks)
INTERRUPTIBLE = ("/sympy/", "/mpmath/", "/antlr4/", "/latex2sympy2_extended/", "/math_verify/")
# path fragments of modules that must not be on the stack when it lands (lock protocols)
_UNSAFE = ("<frozen", "/importlib/", "/threading.py", "/logging/", "/queue.py", "/concurrent/",
           "/multiprocessing/", "/alignment/tasks/verify/bounded.py")


class Deadline(BaseException):
    """Raised asynchronously inside a bounded call that ran past its budget."""


def _set_async_exc(tid: int, exc: type[BaseException] | None) -> None:
    # exc=None clears a pending asynchronous exception of that thread (NULL in the C API)
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), ctypes.py_object(exc) if exc is not None else None)


def _cpu_clock(tid: int) -> int | None:
    try:
        clk = time.pthread_getcpuclockid(tid)
        time.clock_gettime(clk)
        return clk
    except (AttributeError, OSError):  # not Linux/BSD: fall back to wall time
        return None


class _Entry:
    __slots__ = ("tid", "clock", "cpu0", "cpu_s", "wall_deadline", "interruptible", "fired")

    def __init__(self, tid: int, cpu_s: float, wall_s: float, interruptible: tuple[str, ...]):
        self.tid = tid
        self.clock = _cpu_clock(tid)
        self.cpu0 = time.clock_gettime(self.clock) if self.clock is not None else time.monotonic()
        self.cpu_s = cpu_s
        self.wall_deadline = time.monotonic() + wall_s
        self.interruptible = interruptible
        self.fired = False

    def expired(self, now: float) -> bool:
        if now >= self.wall_deadline:
            return True
        used = (time.clock_gettime(self.clock) if self.clock is not None else now) - self.cpu0
        return used >= self.cpu_s


def _safe_to_raise(frame: Any, interruptible: tuple[str, ...]) -> bool:
    """The innermost frame is interruptible and nothing up to run_bounded holds a lock protocol."""
    if frame is None or not any(p in frame.f_code.co_filename for p in interruptible):
        return False
    while frame is not None:
        if frame.f_code is run_bounded.__code__:
            return True
        name = frame.f_code.co_filename
        if any(p in name for p in _UNSAFE):
            return False
        frame = frame.f_back
    return False


class _Watchdog:
    """Armed calls and the thread that watches them. The calling threads touch only a C lock
    (``with`` on a C lock cannot be split by an exception) and a dict; the watchdog thread
    stops after ``LINGER_S`` without armed calls and is started again by the next one."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._armed: dict[int, _Entry] = {}
        self._thread: threading.Thread | None = None
        self.fired_total = 0  # for tests and stats: how many deadlines were raised

    def arm(self, key: int, entry: _Entry) -> None:
        start = None
        with self._lock:
            self._armed[key] = entry
            if self._thread is None:
                start = self._thread = threading.Thread(target=self._loop, name="verify-watchdog", daemon=True)
        if start is not None:
            start.start()

    def disarm(self, key: int) -> None:
        with self._lock:
            entry = self._armed.pop(key, None)
            if entry is not None and entry.fired:
                _set_async_exc(entry.tid, None)  # drop one raised but not yet delivered

    def _loop(self) -> None:
        idle_since: float | None = None
        while True:
            time.sleep(TICK_S)
            with self._lock:
                now = time.monotonic()
                if not self._armed:
                    if idle_since is None:
                        idle_since = now
                    elif now - idle_since > LINGER_S:
                        self._thread = None
                        return
                    continue
                idle_since = None
                frames = None
                for entry in self._armed.values():
                    if entry.fired:
                        continue
                    try:
                        expired = entry.expired(now)
                    except OSError:  # the thread's clock vanished: it is gone
                        expired = False
                    if not expired:
                        continue
                    if frames is None:
                        frames = sys._current_frames()
                    if _safe_to_raise(frames.get(entry.tid), entry.interruptible):
                        _set_async_exc(entry.tid, Deadline)
                        entry.fired = True
                        self.fired_total += 1
                del frames


_WATCHDOG = _Watchdog()
if hasattr(os, "register_at_fork"):
    # a forked child has no watchdog thread and maybe a lock held by the parent's one
    os.register_at_fork(after_in_child=_WATCHDOG._reset)
_KEYS = itertools.count()
_LOCAL = threading.local()


def run_bounded(fn: Callable[[], Any], cpu_s: float, wall_s: float | None = None,
                interruptible: tuple[str, ...] = INTERRUPTIBLE) -> tuple[bool, Any]:
    """``(True, fn())``, or ``(False, None)`` when ``fn`` ran past ``cpu_s`` seconds of its
    thread's CPU time or ``wall_s`` seconds of wall time (default ``WALL_FACTOR * cpu_s``).

    ``interruptible``: path fragments of the modules in which the deadline may be raised (see
    the module docstring). Exceptions other than the deadline propagate. Works in the main
    thread and in any other thread; the caller never sees a stray :class:`Deadline`.
    """
    if getattr(_LOCAL, "active", False):
        return True, fn()  # nested: the outer bound applies
    key = next(_KEYS)
    _LOCAL.active = True
    try:
        try:
            try:
                _WATCHDOG.arm(key, _Entry(threading.get_ident(), cpu_s,
                                          wall_s if wall_s is not None else WALL_FACTOR * cpu_s, interruptible))
                value = fn()
            finally:
                _WATCHDOG.disarm(key)
            return True, value
        except Deadline:
            _WATCHDOG.disarm(key)  # idempotent; the watchdog fires once per call
            return False, None
    finally:
        _LOCAL.active = False


def deadlines_fired() -> int:
    """How many deadlines the watchdog has raised in this process (tests, stats)."""
    return _WATCHDOG.fired_total


__all__ = ["Deadline", "INTERRUPTIBLE", "run_bounded", "deadlines_fired"]
