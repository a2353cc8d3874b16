"""The one polling wait of the test suites (integration and lab)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(fn: Callable[[], T], timeout_s: float = 20, interval_s: float = 0.05,
               what: str = "condition", detail: Callable[[], object] | None = None) -> T:
    """Poll fn until it returns a truthy value and return that value; fail the test naming
    `what` after timeout_s, with what `detail()` then says (the state a one-off CI failure
    needs explained)."""
    deadline = time.monotonic() + timeout_s
    last: T = fn()
    while not last:
        if time.monotonic() > deadline:
            extra = ""
            if detail is not None:
                try:
                    extra = f"; {detail()}"
                except Exception as e:  # the timeout is the failure to report
                    extra = f"; (detail failed: {e!r})"
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}{extra}")
        time.sleep(interval_s)
        last = fn()
    return last


def holds_for(check: Callable[[], object], window_s: float, interval_s: float = 0.5,
              what: str = "condition") -> None:
    """Assert that check() stays truthy through window_s, polling every interval_s.

    Not a synchronisation: for behaviour that is an absence ("nothing restarts it", "no
    second copy appears") over a window, which no event can signal."""
    t0 = time.monotonic()
    while True:
        assert check(), f"{what} stopped holding after {time.monotonic() - t0:.1f}s of {window_s}s"
        if time.monotonic() - t0 >= window_s:
            return
        time.sleep(interval_s)
