"""Run a pure-Python call with a CPU-time bound, in any thread, without signals.

    from synth.verify.bounded import run_bounded
    finished, value = run_bounded(lambda: sympy.simplify(expr), cpu_s=0.5)

``signal.alarm`` (what Math-Verify's own timeouts use) works only in the main thread; the
math verifier also runs in worker threads (``synth/search/lockstep.py``) and under the eval
stage. Here one daemon watchdog thread watches every bounded call: when a call's thread has
spent more than ``cpu_s`` seconds of its own CPU time (``pthread_getcpuclockid``; wall time
where that clock is missing) or ``wall_s`` seconds of wall time, the watchdog raises
:class:`Deadline` inside that thread (``PyThreadState_SetAsyncExc``) and repeats it every tick
until the call has unwound. ``run_bounded`` catches it and returns ``(False, None)``.

Why CPU time: under the GIL, 64 search threads verifying at once each wait for the others;
a wall-clock budget would then fail correct answers on a busy box. Thread CPU time counts
only the work of the call itself. The wall-clock bound (default 20x the CPU budget) is a
backstop for Python code that loops while mostly waiting (a blocking C call such as
``time.sleep`` is not interrupted before it returns).

Limits:
  * the exception lands between bytecodes, so one long C call (``9 ** 387420489`` on Python
    ints, one huge regex match) is not interrupted: callers must refuse such inputs before
    calling (the math verifier bounds answer length, nesting and power sizes first);
  * ``Deadline`` derives from ``BaseException``, so ``except Exception`` in library code does
    not swallow it; code that catches ``BaseException`` would, once per tick;
  * nested ``run_bounded`` calls in one thread run inside the outer bound only.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
import time
from typing import Any, Callable

TICK_S = 0.02  # how often the watchdog looks at armed calls
LINGER_S = 2.0  # the watchdog keeps ticking this long after the last call, then sleeps
WALL_FACTOR = 20.0  # default wall-clock backstop, as a multiple of the CPU budget


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
    __slots__ = ("tid", "clock", "cpu0", "cpu_s", "wall_deadline", "fired")

    def __init__(self, tid: int, cpu_s: float, wall_s: float):
        self.tid = tid
        self.clock = _cpu_clock(tid)
        self.cpu0 = time.clock_gettime(self.clock) if self.clock is not None else time.monotonic()
        self.cpu_s = cpu_s
        self.wall_deadline = time.monotonic() + wall_s
        self.fired = 0

    def expired(self, now: float) -> bool:
        if now >= self.wall_deadline:
            return True
        used = (time.clock_gettime(self.clock) if self.clock is not None else now) - self.cpu0
        return used >= self.cpu_s


class _Watchdog:
    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._armed: dict[int, _Entry] = {}
        self._thread: threading.Thread | None = None
        self._sleeping = False
        self.fired_total = 0  # for tests and stats: how many deadlines were raised

    def arm(self, key: int, entry: _Entry) -> None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="verify-watchdog", daemon=True)
                self._thread.start()
            self._armed[key] = entry
            if self._sleeping:
                self._cond.notify()

    def disarm(self, key: int) -> None:
        with self._cond:
            entry = self._armed.pop(key, None)
            if entry is not None and entry.fired:
                _set_async_exc(entry.tid, None)  # drop one raised but not yet delivered

    def _loop(self) -> None:
        idle_since: float | None = None
        with self._cond:
            while True:
                now = time.monotonic()
                if self._armed:
                    idle_since = None
                elif idle_since is None:
                    idle_since = now
                elif now - idle_since > LINGER_S:
                    self._sleeping = True
                    self._cond.wait()
                    self._sleeping = False
                    idle_since = None
                    continue
                self._cond.wait(TICK_S)
                now = time.monotonic()
                for entry in self._armed.values():
                    try:
                        expired = entry.expired(now)
                    except OSError:  # the thread's clock vanished: it is gone
                        expired = False
                    if expired:
                        _set_async_exc(entry.tid, Deadline)
                        entry.fired += 1
                        self.fired_total += 1


_WATCHDOG = _Watchdog()
if hasattr(os, "register_at_fork"):
    # a forked child has no watchdog thread and maybe a lock held by the parent's one
    os.register_at_fork(after_in_child=_WATCHDOG._reset)
_KEYS = itertools.count()
_LOCAL = threading.local()


def run_bounded(fn: Callable[[], Any], cpu_s: float, wall_s: float | None = None) -> tuple[bool, Any]:
    """``(True, fn())``, or ``(False, None)`` when ``fn`` ran past ``cpu_s`` seconds of its
    thread's CPU time or ``wall_s`` seconds of wall time (default ``WALL_FACTOR * cpu_s``).

    Exceptions other than the deadline propagate. Works in the main thread and in any
    other thread; the caller never sees a stray :class:`Deadline` after this returns.
    """
    if getattr(_LOCAL, "active", False):
        return True, fn()  # nested: the outer bound applies
    key = next(_KEYS)
    _LOCAL.active = True
    try:
        try:
            try:
                _WATCHDOG.arm(key, _Entry(threading.get_ident(), cpu_s, wall_s if wall_s is not None else WALL_FACTOR * cpu_s))
                value = fn()
            finally:
                _WATCHDOG.disarm(key)  # may itself be interrupted by a late Deadline: handled below
            return True, value
        except Deadline:
            while True:  # disarm for sure; a repeated Deadline can land while we do
                try:
                    _WATCHDOG.disarm(key)
                    break
                except Deadline:
                    continue
            return False, None
    finally:
        _LOCAL.active = False


def deadlines_fired() -> int:
    """How many deadlines the watchdog has raised in this process (tests, stats)."""
    return _WATCHDOG.fired_total


__all__ = ["Deadline", "run_bounded", "deadlines_fired"]
