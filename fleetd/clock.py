"""The one clock fleetd measures leases and deadlines with.

`now()` is CLOCK_BOOTTIME: like CLOCK_MONOTONIC it never jumps with the wall clock, but unlike
it it keeps counting while the machine is suspended or its VM is frozen, which is exactly when
etcd goes on expiring our lease. A deterministic simulation replaces the source with its
virtual clock (`use`), so the real lease and fencing code runs on simulated time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def _boottime() -> float:
    return time.clock_gettime(_CLOCK)


_source: Callable[[], float] = _boottime


def now() -> float:
    """Seconds on fleetd's lease clock (CLOCK_BOOTTIME unless a simulation replaced it)."""
    return _source()


def use(source: Callable[[], float] | None) -> None:
    """Measure time with `source` (a simulation's virtual clock); None restores CLOCK_BOOTTIME."""
    global _source
    _source = source or _boottime
