"""`fleetctl drain` is done only once the machine runs no movable unit: a unit moved off
(no longer scheduled there) whose old copy its agent still reports running holds the
drain until that copy is reported stopped. Table-driven over Watch events."""

from __future__ import annotations

import pytest

from fleetctl.maintenance import _still_stopping
from fleetctl.wait import UnitsSeen
from fleetd.api.pb import fleet_pb2 as pb

K = pb.WatchEvent
OLD, NEW = "a" * 32, "b" * 32


@pytest.mark.parametrize(("scheduled", "reported", "is_global", "include_global", "held"), [
    ((NEW,), {OLD: "active", NEW: "active"}, False, False, ["w.service"]),
    ((NEW,), {OLD: "deactivating", NEW: "active"}, False, False, ["w.service"]),
    ((NEW,), {OLD: "inactive", NEW: "active"}, False, False, []),
    ((NEW,), {NEW: "active"}, False, False, []),  # its state there is gone: stopped
    ((OLD, NEW), {OLD: "active", NEW: "active"}, False, False, []),  # still scheduled there
    ((NEW,), {OLD: "active"}, True, False, []),  # a global unit's copy does not count...
    ((NEW,), {OLD: "active"}, True, True, ["w.service"]),  # ... unless the drain takes them
])
def test_a_moved_units_old_copy_holds_the_drain_until_it_stops(
        scheduled: tuple[str, ...], reported: dict[str, str], is_global: bool,
        include_global: bool, held: list[str]) -> None:
    seen = UnitsSeen()
    seen.apply(K(kind=K.SNAPSHOT, revision=1, snapshot=pb.Snapshot(
        units=[pb.Unit(name="w.service", machine_ids=list(scheduled), is_global=is_global)],
        states=[pb.UnitState(name="w.service", machine_id=m, active_state=s)
                for m, s in reported.items()])))
    assert _still_stopping(seen, OLD, include_global) == held
