"""WatchView: registry changes in, dashboard events out (table-driven, no etcd)."""

from __future__ import annotations

import pytest

from fleetd.registry import Change, ClusterState, MachineRecord, ScheduleEntry, UnitRecord
from fleetd.registry import changes as w
from fleetd.registry.schema import UnitStateRecord


def empty() -> ClusterState:
    return ClusterState(1, {}, {}, {}, {}, {})


REC = UnitRecord("a.service", "[Service]\nExecStart=/bin/true\n", "h1")
STATE = UnitStateRecord("a.service", "m1", "h1", "launched", "loaded", "active", "running")


def test_a_submit_is_one_unit_event_even_with_two_keys() -> None:
    v = w.WatchView(empty())
    evs = v.apply([Change("unit", 5, "a.service", "", REC),
                   Change("desired", 5, "a.service", "", "launched")])
    assert evs == [w.Event(w.UNIT_PUT, 5, "a.service")]
    assert v.state.units["a.service"].desired == "launched" and v.state.revision == 5


def test_destroy_then_late_unassignment_emits_only_the_deletion() -> None:
    v = w.WatchView(empty())
    v.apply([Change("unit", 2, "a.service", "", REC)])
    evs = v.apply([Change("unit", 3, "a.service", "", None),
                   Change("desired", 3, "a.service", "", None)])
    assert evs == [w.Event(w.UNIT_DELETED, 3, "a.service")]
    assert v.apply([Change("schedule", 4, "a.service", "m1", None)]) == []


@pytest.mark.parametrize(("change", "kinds"), [
    (Change("schedule", 3, "a.service", "m1", ScheduleEntry("a.service", "m1", "launched", "h1")),
     [w.UNIT_PUT]),
    (Change("state", 3, "a.service", "m1", STATE), [w.STATE_PUT, w.UNIT_PUT]),
    (Change("state", 3, "a.service", "m1", None), [w.STATE_DELETED, w.UNIT_PUT]),
    (Change("unschedulable", 3, "a.service", "", "no machine"), [w.UNIT_PUT]),
    (Change("machine", 3, "", "m9", MachineRecord("m9", "10.0.0.9")), [w.MACHINE_PUT]),
    (Change("machine", 3, "", "m9", None), []),  # unknown machine leaving: nothing to say
])
def test_each_change_kind_maps_to_its_events(change: Change, kinds: list[str]) -> None:
    v = w.WatchView(empty())
    v.apply([Change("unit", 2, "a.service", "", REC)])
    assert [e.kind for e in v.apply([change])] == kinds


def test_api_metadata_is_laid_over_the_configured_metadata() -> None:
    v = w.WatchView(empty())
    v.apply([Change("machine", 2, "", "m1", MachineRecord("m1", "ip", {"region": "east"}))])
    evs = v.apply([Change("metadata", 3, "", "m1", {"rack": "r1", "region": None})])
    assert evs == [w.Event(w.MACHINE_PUT, 3, "", "m1")]
    assert v.state.machines["m1"].metadata == {"rack": "r1"}
    v.apply([Change("metadata", 4, "", "m1", None)])
    assert v.state.machines["m1"].metadata == {"region": "east"}
    v.apply([Change("machine", 5, "", "m1", None)])
    assert "m1" not in v.state.machines


def _state(rev: int, *changes: Change) -> ClusterState:
    v = w.WatchView(ClusterState(rev, {}, {}, {}, {}, {}))
    v.apply(changes)
    v.state.revision = rev
    return v.state


M1 = MachineRecord("m1", "10.0.0.1")
UNIT = Change("unit", 2, "a.service", "", REC)


@pytest.mark.parametrize(("old", "new", "events"), [
    ([], [], []),
    ([Change("machine", 2, "", "m1", M1)], [], [w.Event(w.MACHINE_DELETED, 9, "", "m1")]),
    ([], [Change("machine", 2, "", "m1", M1)], [w.Event(w.MACHINE_PUT, 9, "", "m1")]),
    ([Change("machine", 2, "", "m1", M1)], [Change("machine", 2, "", "m1", M1)], []),
    ([UNIT], [], [w.Event(w.UNIT_DELETED, 9, "a.service")]),
    ([UNIT], [UNIT, Change("desired", 3, "a.service", "", "launched")],
     [w.Event(w.UNIT_PUT, 9, "a.service")]),
    ([UNIT, Change("state", 3, "a.service", "m1", STATE)], [UNIT],
     [w.Event(w.STATE_DELETED, 9, "a.service", "m1"), w.Event(w.UNIT_PUT, 9, "a.service")]),
    ([UNIT], [UNIT, Change("state", 3, "a.service", "m1", STATE)],
     [w.Event(w.UNIT_PUT, 9, "a.service"), w.Event(w.STATE_PUT, 9, "a.service", "m1")]),
])
def test_diff_of_two_snapshots_is_what_a_compacted_watcher_missed(
        old: list[Change], new: list[Change], events: list[w.Event]) -> None:
    assert w.diff(_state(5, *old), _state(9, *new)) == events
