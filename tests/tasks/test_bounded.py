"""run_bounded: a CPU-time bound without signals, in the main thread and in worker threads."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from alignment.tasks.verify.bounded import deadlines_fired, run_bounded

HERE = (__file__,)  # lets the deadline land in this file's loops


def spin():
    x = 0
    while True:
        x += 1


def busy(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
    return "done"


def test_returns_the_value_of_a_quick_call():
    assert run_bounded(lambda: 42, 0.5) == (True, 42)


def test_stops_an_endless_loop_in_the_main_thread():
    fired = deadlines_fired()
    t0 = time.monotonic()
    assert run_bounded(spin, 0.1, interruptible=HERE) == (False, None)
    assert time.monotonic() - t0 < 1.0 and deadlines_fired() == fired + 1


def test_stops_endless_loops_in_worker_threads_and_spares_the_others():
    def job(i):
        return run_bounded(spin, 0.1, interruptible=HERE) if i % 2 else run_bounded(lambda: busy(0.02), 0.5, interruptible=HERE)

    t0 = time.monotonic()
    with ThreadPoolExecutor(6) as pool:
        out = list(pool.map(job, range(6)))
    assert out == [(True, "done"), (False, None)] * 3
    assert time.monotonic() - t0 < 5.0


def test_budget_is_cpu_time_not_waiting():
    """Sleeping (or waiting for the GIL behind other threads) does not use the budget."""

    def nap():
        for _ in range(30):
            time.sleep(0.01)
        return "rested"

    assert run_bounded(nap, 0.05, wall_s=5.0, interruptible=HERE) == (True, "rested")


def test_wall_clock_backstop():
    def slow_naps():
        while True:
            time.sleep(0.005)

    t0 = time.monotonic()
    assert run_bounded(slow_naps, 10.0, wall_s=0.2, interruptible=HERE) == (False, None)
    assert time.monotonic() - t0 < 2.0


def test_never_lands_outside_the_interruptible_modules():
    """The default list names SymPy/ANTLR/Math-Verify only: this file's loop runs to its end."""
    assert run_bounded(lambda: busy(0.15), 0.03) == (True, "done")


def test_other_exceptions_propagate():
    def boom():
        raise ValueError("no")

    with pytest.raises(ValueError):
        run_bounded(boom, 0.5)


def test_nested_calls_run_under_the_outer_bound():
    assert run_bounded(lambda: run_bounded(lambda: 7, 0.5), 0.5) == (True, (True, 7))
    assert run_bounded(lambda: run_bounded(spin, 10.0, interruptible=HERE), 0.1, interruptible=HERE) == (False, None)


def test_no_stray_deadline_after_return():
    """Budgets that run out just as calls finish: nothing may reach the caller afterwards."""
    for i in range(300):
        run_bounded(lambda: busy(0.001 * (i % 5)), 0.002, interruptible=HERE)
        x = sum(range(2000))  # the caller's own code keeps running undisturbed
        assert x == 1999000
    assert threading.active_count() >= 1


def _child_spin():
    import sys

    sys.exit(0 if run_bounded(spin, 0.1, interruptible=HERE) == (False, None) else 3)


def test_works_in_a_forked_child():
    """The watchdog thread does not survive fork; the child starts its own."""
    import multiprocessing

    run_bounded(lambda: busy(0.01), 0.5)  # the parent's watchdog is running now
    p = multiprocessing.get_context("fork").Process(target=_child_spin)
    p.start()
    p.join(20)
    assert p.exitcode == 0
