"""fleetd's event-loop lag monitor: a callback holding the loop shows up as lag, logged once
it passes `LOOP_LAG_WARN_S` (every lease renewal waits behind such a stall)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from fleetd import metrics


def lag_count_and_sum() -> tuple[float, float]:
    got = {s.name: s.value for m in metrics.LOOP_LAG_SECONDS.collect() for s in m.samples}
    return got["fleet_event_loop_lag_seconds_count"], got["fleet_event_loop_lag_seconds_sum"]


def test_a_stalled_loop_is_measured_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        monitor = asyncio.ensure_future(metrics.watch_loop_lag(0.02))
        await asyncio.sleep(0.1)  # a few quiet periods first
        time.sleep(0.4)  # an engine pass holding the loop
        await asyncio.sleep(0.1)
        monitor.cancel()

    count0, sum0 = lag_count_and_sum()
    with caplog.at_level(logging.WARNING, logger="fleetd.metrics"):
        asyncio.run(go())
    count, total = lag_count_and_sum()
    assert count - count0 >= 4
    assert total - sum0 >= 0.35  # the stall, less the period it overlapped
    stalls = [r.getMessage() for r in caplog.records if "event loop stalled" in r.getMessage()]
    assert len(stalls) == 1, stalls
