"""Polling helper of the pipeline tests that start real processes."""

import time


def wait_for(pred, timeout: float = 30.0, interval: float = 0.05) -> None:
    """Return once ``pred()`` is true; AssertionError after ``timeout`` seconds."""
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        time.sleep(interval)
    raise AssertionError("condition not reached")
