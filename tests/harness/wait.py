"""The one polling wait of the test suites (integration and lab)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(fn: Callable[[], T], timeout_s: float = 20, interval_s: float = 0.05,
               what: str = "condition") -> T:
    """Poll fn until it returns a truthy value and return that value; fail the test naming
    `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    last: T = fn()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)
        last = fn()
    return last
