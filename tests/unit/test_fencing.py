"""The fence's pure decisions: durations, the stop-time cap and its drop-in, stop vs restart."""

from __future__ import annotations

import pytest

from fleetd import fencing
from fleetd.fencing import (
    FENCE_STOP_BOUND_S,
    StopShape,
    engine_grace_s,
    fence_delay_s,
    fence_drop_in,
    fence_margin_s,
    keep_units_on_exit,
    parse_timespan_s,
    stop_shape,
    stop_timeout_s,
)
from fleetd.unit import UnitFile


@pytest.mark.parametrize("ttl_s", [2, 3, 4, 10, 30, 120])
def test_fence_fires_before_the_earliest_expiry_with_a_positive_margin(ttl_s: int) -> None:
    margin = fence_margin_s(ttl_s)
    assert margin > 0
    # Two renewal attempts fit before the fence.
    assert 2 * fencing.renew_interval_s(ttl_s) <= ttl_s - margin + 1e-9
    assert fence_delay_s(ttl_s, 0) == pytest.approx(ttl_s - margin)


@pytest.mark.parametrize(("ttl_s", "since_s", "want_s"), [
    (10, 0.0, 8.0), (10, 4.0, 4.0), (10, 8.0, 0.0), (10, 30.0, 0.0), (2, 0.0, 1.6),
    (2, 1.0, 0.6),
])
def test_fence_delay_counts_from_the_renewal_send(ttl_s: int, since_s: float,
                                                  want_s: float) -> None:
    assert fence_delay_s(ttl_s, since_s) == pytest.approx(want_s)


@pytest.mark.parametrize("ttl_s", [2, 10, 60])
def test_engine_grace_covers_the_stop_bound_timer_latency_and_clock_error(ttl_s: int) -> None:
    grace = engine_grace_s(ttl_s)
    assert grace >= FENCE_STOP_BOUND_S + fencing.FENCE_TIMER_LATENCY_S \
        + fencing.CLOCK_RATE_ERROR * ttl_s


@pytest.mark.parametrize(("text", "want"), [
    ("90", 90.0), ("90s", 90.0), ("1min 30s", 90.0), ("1min30s", 90.0), ("500ms", 0.5),
    ("2h", 7200.0), ("1.5s", 1.5), ("infinity", None), ("0", None), ("", None),
    ("soon", None), ("5 parsecs", None),
])
def test_timespans_parse_as_systemd_reads_them(text: str, want: float | None) -> None:
    assert parse_timespan_s(text) == (pytest.approx(want) if want is not None else None)


@pytest.mark.parametrize(("unit", "want"), [
    ("[Service]\nExecStart=/bin/true\n", StopShape(0, None)),
    ("[Service]\nExecStart=/bin/true\nExecStop=/bin/a\nExecStop=/bin/b\n", StopShape(2, None)),
    ("[Service]\nExecStop=/bin/a\nExecStop=\nExecStopPost=/bin/c\n", StopShape(1, None)),
    ("[Service]\nExecStart=/bin/true\nTimeoutStopSec=1min\n", StopShape(0, 60.0)),
    ("[Service]\nExecStart=/bin/true\nTimeoutSec=2\n", StopShape(0, 2.0)),
    ("[Unit]\nExecStop=/bin/not-a-service-option\n", StopShape(0, None)),
])
def test_stop_shape_counts_what_each_gets_a_full_timeout(unit: str, want: StopShape) -> None:
    assert stop_shape(UnitFile.parse(unit).options) == want


@pytest.mark.parametrize(("shape", "want_s"), [
    (StopShape(0, None), FENCE_STOP_BOUND_S / 2),  # SIGTERM phase + SIGKILL phase
    (StopShape(1, None), FENCE_STOP_BOUND_S / 3),
    (StopShape(3, None), FENCE_STOP_BOUND_S / 5),
    (StopShape(0, 90.0), FENCE_STOP_BOUND_S / 2),  # systemd's default 90 s is capped
    (StopShape(0, 1.0), 1.0),  # a smaller value the unit asks for is kept
])
def test_stop_timeout_keeps_every_phase_within_the_bound(shape: StopShape,
                                                         want_s: float) -> None:
    got = stop_timeout_s(shape)
    assert got == pytest.approx(want_s, abs=1e-3)
    assert got * (shape.stop_commands + 2) <= FENCE_STOP_BOUND_S + 1e-3


@pytest.mark.parametrize(("name", "is_global", "conflicts", "timeout"), [
    ("web.service", False, True, True),
    ("web.socket", False, True, False),  # [Unit] options only: no TimeoutStopSec for a socket
    ("monitor.service", True, False, False),  # global: keeps running when fenced
])
def test_drop_in_makes_non_global_units_conflict_with_the_fence(
        name: str, is_global: bool, conflicts: bool, timeout: bool) -> None:
    text = fence_drop_in(name, UnitFile.parse("[Service]\nExecStart=/bin/true\n").options,
                         is_global)
    if not conflicts:
        assert text is None
        return
    assert text is not None
    parsed = UnitFile.parse(text).options
    assert ("Unit", "Conflicts", fencing.FENCE_TARGET) in parsed
    assert ("Unit", "Before", fencing.FENCE_TARGET) in parsed
    assert any(o[1] == "TimeoutStopSec" for o in parsed) == timeout


@pytest.mark.parametrize(("job_type", "restart_signal", "keep"), [
    ("restart", False, True),  # systemctl restart fleetd: an upgrade
    ("try-restart", False, True),
    ("stop", False, False),  # systemctl stop fleetd, or shutdown
    (None, False, False),  # a plain SIGTERM (systemctl kill, no systemd at all)
    (None, True, True),  # the explicit restart signal without systemd
    ("stop", True, True),
])
def test_stop_purges_and_restart_keeps(job_type: str | None, restart_signal: bool,
                                       keep: bool) -> None:
    assert keep_units_on_exit(job_type, restart_signal) is keep
