"""The fence's pure decisions: durations, the stop-time cap and its drop-in, stop vs restart."""

from __future__ import annotations

import pytest

from fleetd import fencing
from fleetd.fencing import (
    FENCE_STOP_BOUND_S,
    MAX_UNIT_STOP_BOUND_S,
    StopShape,
    engine_grace_s,
    fence_delay_s,
    fence_drop_in,
    fence_margin_s,
    keep_units_on_exit,
    parse_timespan_s,
    stop_shape,
    stop_timeout_s,
    unit_stop_bound_s,
)
from fleetd.unit import UnitFile

TTLS = [4, 5, 6, 10, 30, 120]


@pytest.mark.parametrize("ttl_s", TTLS)
def test_fence_leaves_several_renewals_and_fires_before_the_earliest_expiry(ttl_s: int) -> None:
    point = fencing.fence_point_s(ttl_s)
    assert fencing.ttl_problem(ttl_s) is None
    assert point >= fencing.MIN_RENEWALS_BEFORE_FENCE * fencing.renew_interval_s(ttl_s)
    # The stop bound and the timer's latency fit between the fence and the TTL.
    assert point + FENCE_STOP_BOUND_S + fencing.FENCE_TIMER_LATENCY_S < ttl_s
    assert fence_margin_s(ttl_s) == pytest.approx(ttl_s - point)
    assert fence_delay_s(ttl_s, 0) == pytest.approx(point)


@pytest.mark.parametrize("ttl_s", TTLS)
@pytest.mark.parametrize("machine_rate", [1 - fencing.CLOCK_RATE_ERROR, 1.0,
                                          1 + fencing.CLOCK_RATE_ERROR])
@pytest.mark.parametrize("etcd_rate", [1 - fencing.CLOCK_RATE_ERROR, 1.0,
                                       1 + fencing.CLOCK_RATE_ERROR])
@pytest.mark.parametrize("engine_rate", [1 - fencing.CLOCK_RATE_ERROR,
                                         1 + fencing.CLOCK_RATE_ERROR])
def test_units_are_inactive_before_the_engine_may_start_them_elsewhere(
        ttl_s: int, machine_rate: float, etcd_rate: float, engine_rate: float) -> None:
    """The argument in real time. A clock of rate r shows r seconds per real second. Renewal
    sent at real 0 (etcd handles it at the earliest then); the machine's timer fires after
    fence_point_s on its clock, up to the latency late; each stop phase runs on its clock;
    etcd expires after the TTL on etcd's clock; the engine waits the grace on its clock."""
    fence_fired = fencing.fence_point_s(ttl_s) / machine_rate + fencing.FENCE_TIMER_LATENCY_S
    inactive = fence_fired + FENCE_STOP_BOUND_S / machine_rate
    expiry = ttl_s / etcd_rate  # (the handover lease is one more TTL: in TTLS)
    may_start = expiry + engine_grace_s(ttl_s) / engine_rate
    assert inactive < may_start


def test_the_shortest_ttl_is_refused_with_the_reason() -> None:
    low = fencing.min_ttl_s()
    assert fencing.ttl_problem(low) is None
    problem = fencing.ttl_problem(low - 1)
    assert problem is not None and "renewal intervals" in problem


@pytest.mark.parametrize(("ttl_s", "since_s", "want_s"), [
    (10, 0.0, 7.49), (10, 4.0, 3.49), (10, 7.49, 0.0), (10, 30.0, 0.0), (5, 0.0, 2.495),
    (5, 1.0, 1.495), (4, 0.0, 1.496),
])
def test_fence_delay_counts_from_the_renewal_send(ttl_s: int, since_s: float,
                                                  want_s: float) -> None:
    assert fence_delay_s(ttl_s, since_s) == pytest.approx(want_s)


@pytest.mark.parametrize("ttl_s", TTLS)
def test_engine_grace_is_a_clock_rate_margin(ttl_s: int) -> None:
    """The fence completes before the earliest expiry: the engine waits only for the clocks."""
    # A machine's lease is its TTL long, or a restart's handover lease.
    longest = max(ttl_s, fencing.HANDOVER_TTL_S)
    assert engine_grace_s(ttl_s) == pytest.approx(2 * fencing.CLOCK_RATE_ERROR * longest)
    assert engine_grace_s(ttl_s) < FENCE_STOP_BOUND_S


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
    ("[Service]\nExecStop=/bin/a\nExecStop=\nExecStopPost=/bin/c\n",
     StopShape(1, None, True)),
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
    (StopShape(0, 0.5), 0.5),  # a smaller value the unit asks for is kept
    (StopShape(1, 0.4), 0.4),
    (StopShape(0, 30.0), 30.0),  # a unit stating its stop time keeps it...
    (StopShape(2, 10.0), 10.0),
    (StopShape(0, 600.0), MAX_UNIT_STOP_BOUND_S / 2),  # ...up to the longest whole stop
    (StopShape(1, 1000.0), MAX_UNIT_STOP_BOUND_S / 3),
    # a stop-post command that times out is followed by a final SIGTERM and SIGKILL
    (StopShape(1, None, True), FENCE_STOP_BOUND_S / 5),
    (StopShape(2, 10.0, True), 10.0),
])
def test_stop_timeout_keeps_every_phase_within_the_units_bound(shape: StopShape,
                                                               want_s: float) -> None:
    got = stop_timeout_s(shape)
    assert got == pytest.approx(want_s, abs=1e-3)
    assert got * shape.phases <= unit_stop_bound_s(shape) + 1e-9
    assert unit_stop_bound_s(shape) <= MAX_UNIT_STOP_BOUND_S


@pytest.mark.parametrize(("unit", "bound_s"), [
    ("[Service]\nExecStart=/bin/true\n", FENCE_STOP_BOUND_S),  # plain: the default bound
    ("[Service]\nExecStart=/bin/true\nTimeoutStopSec=infinity\n", FENCE_STOP_BOUND_S),
    ("[Service]\nExecStart=/bin/true\nTimeoutStopSec=0\n", FENCE_STOP_BOUND_S),
    ("[Service]\nExecStart=/bin/true\nTimeoutStopSec=500ms\n", FENCE_STOP_BOUND_S),  # shorter
    ("[Service]\nExecStart=/bin/true\nTimeoutStopSec=30s\n", 60.0),  # SIGTERM + SIGKILL
    ("[Service]\nExecStart=/bin/true\nTimeoutSec=20\n", 40.0),
    ("[Service]\nExecStart=/bin/true\nExecStop=/bin/a\nTimeoutStopSec=10s\n", 30.0),
    ("[Service]\nExecStart=/bin/true\nExecStopPost=/bin/a\nTimeoutStopSec=10s\n", 50.0),
    ("[Service]\nExecStart=/bin/true\nTimeoutStopSec=1h\n", MAX_UNIT_STOP_BOUND_S),
    ("[Unit]\nDescription=TimeoutStopSec=30s\n", FENCE_STOP_BOUND_S),  # not [Service]
])
def test_a_unit_stating_its_stop_time_gets_a_bound_of_its_own(unit: str,
                                                              bound_s: float) -> None:
    assert fencing.stop_bound_of(UnitFile.parse(unit).options) == pytest.approx(bound_s)


def test_an_unparseable_unit_gets_the_default_bound() -> None:
    assert fencing.stop_bound_of(None) == FENCE_STOP_BOUND_S


def test_a_plain_units_grace_is_the_machines() -> None:
    for ttl_s in TTLS:
        assert fencing.unit_grace_s(ttl_s, FENCE_STOP_BOUND_S) == engine_grace_s(ttl_s)
        assert fencing.unit_grace_s(ttl_s, 1.0) == engine_grace_s(ttl_s)


@pytest.mark.parametrize("ttl_s", TTLS)
@pytest.mark.parametrize("bound_s", [FENCE_STOP_BOUND_S, 2.5, 60.0, MAX_UNIT_STOP_BOUND_S])
@pytest.mark.parametrize("machine_rate", [1 - fencing.CLOCK_RATE_ERROR,
                                          1 + fencing.CLOCK_RATE_ERROR])
@pytest.mark.parametrize("etcd_rate", [1 - fencing.CLOCK_RATE_ERROR,
                                       1 + fencing.CLOCK_RATE_ERROR])
@pytest.mark.parametrize("engine_rate", [1 - fencing.CLOCK_RATE_ERROR,
                                         1 + fencing.CLOCK_RATE_ERROR])
def test_a_slow_stopping_unit_is_inactive_before_its_own_grace_ends(
        ttl_s: int, bound_s: float, machine_rate: float, etcd_rate: float,
        engine_rate: float) -> None:
    """The same argument for a unit with its own stop bound: the fence fires at the same point
    (one fence for the whole machine), the unit's stop runs its longer bound on the machine's
    clock, the engine holds it for its own grace on the engine's."""
    fence_fired = fencing.fence_point_s(ttl_s) / machine_rate + fencing.FENCE_TIMER_LATENCY_S
    inactive = fence_fired + bound_s / machine_rate
    expiry = ttl_s / etcd_rate
    may_start = expiry + fencing.unit_grace_s(ttl_s, bound_s) / engine_rate
    assert inactive < may_start
    # and it waits no more than its extra stop time (plus the margin) beyond a plain unit
    assert fencing.unit_grace_s(ttl_s, bound_s) - engine_grace_s(ttl_s) <= (
        bound_s - FENCE_STOP_BOUND_S) * 1.01


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


@pytest.mark.parametrize(("unit", "want"), [
    ("[Service]\nExecStart=/bin/true\n", "TimeoutStopSec=1.0s"),
    ("[Service]\nExecStart=/bin/true\nTimeoutStopSec=30s\n", "TimeoutStopSec=30.0s"),
    ("[Service]\nExecStart=/bin/true\nTimeoutSec=3min\n", "TimeoutStopSec=150.0s"),
])
def test_the_drop_in_keeps_the_stop_time_a_unit_states(unit: str, want: str) -> None:
    text = fence_drop_in("db.service", UnitFile.parse(unit).options, False)
    assert text is not None and want in text.splitlines()
