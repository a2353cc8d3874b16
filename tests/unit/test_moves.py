"""Table tests of the move planner (fleetd.engine.moves): pure, no etcd, no engine."""

from __future__ import annotations

import pytest

from fleetd.engine import moves
from fleetd.engine.scheduler import ClusterSnapshot, JobView, MachineView
from fleetd.registry.schema import DrainRecord, MoveRecord, UnitStateRecord
from fleetd.unit import XFleet

NOW = 10**18


def J(name: str, **x: object) -> JobView:
    return JobView(name, "launched", XFleet(**x))  # type: ignore[arg-type]


def snap(jobs: list[JobView], schedule: dict[str, set[str]],
         machines: tuple[str, ...] = ("m1", "m2", "m3"),
         draining: frozenset[str] = frozenset(), **meta: dict[str, str]) -> ClusterSnapshot:
    return ClusterSnapshot({m: MachineView(m, meta.get(m, {})) for m in machines},
                           {j.name: j for j in jobs},
                           {u: frozenset(ms) for u, ms in schedule.items()},
                           draining=draining)


def active(unit: str, mid: str, state: str = "active") -> dict[str, dict[str, UnitStateRecord]]:
    return {unit: {mid: UnitStateRecord(unit, mid, "h", "launched", "loaded", state, "x")}}


def drain(mid: str, pinned: str = "leave", include_global: bool = False
          ) -> dict[str, DrainRecord]:
    return {mid: DrainRecord(mid, pinned, include_global)}


def test_a_draining_machines_units_start_elsewhere_spread_by_load() -> None:
    s = snap([J("a.service"), J("b.service"), J("c.service")],
             {"a.service": {"m1"}, "b.service": {"m1"}, "c.service": {"m2"}},
             draining=frozenset({"m1"}))
    p = moves.plan(s, {}, {}, drain("m1"), NOW)
    assert [(m.unit, m.from_machine, m.to_machine, m.phase) for m in p.start] == [
        ("a.service", "m1", "m3", "starting"), ("b.service", "m1", "m2", "starting")]
    assert not (p.stop_first or p.finish or p.blocked or p.abort)


@pytest.mark.parametrize(("job", "reason"), [
    (J("p.service", machine_id="m1"), "pinned to its machine (MachineID=m1)"),
    (J("p.service", conflicts=("q*",)), "has Conflicts (q*)"),
    (J("p.service", machine_of=("t.service",)), "follows t.service (MachineOf)"),
])
def test_pinned_units_are_left_with_the_reason(job: JobView, reason: str) -> None:
    jobs = [job, J("t.service")]
    s = snap(jobs, {"p.service": {"m1"}, "t.service": {"m2"}}, draining=frozenset({"m1"}))
    p = moves.plan(s, {}, {}, drain("m1"), NOW)
    assert [(b.unit, b.phase, b.reason) for b in p.blocked] == [("p.service", "pinned", reason)]
    assert not p.start and not p.stop_first


def test_a_unit_followed_by_another_is_pinned_too() -> None:
    s = snap([J("t.service"), J("f.service", machine_of=("t.service",))],
             {"t.service": {"m1"}, "f.service": {"m1"}}, draining=frozenset({"m1"}))
    p = moves.plan(s, {}, {}, drain("m1"), NOW)
    assert {b.unit: b.reason for b in p.blocked}["t.service"] == (
        "followed by f.service (MachineOf)")


def test_pinned_stop_stops_first_and_a_machine_id_unit_gets_no_target() -> None:
    s = snap([J("p.service", machine_id="m1"), J("c.service", conflicts=("x*",))],
             {"p.service": {"m1"}, "c.service": {"m1"}}, draining=frozenset({"m1"}))
    p = moves.plan(s, {}, {}, drain("m1", "stop"), NOW)
    got = {m.unit: (m.phase, m.to_machine) for m in p.stop_first}
    assert got == {"p.service": ("stopping", ""), "c.service": ("stopping", "m2")}


def test_move_before_stop_false_stops_first() -> None:
    s = snap([J("o.service", move_before_stop=False)], {"o.service": {"m1"}},
             draining=frozenset({"m1"}))
    p = moves.plan(s, {}, {}, drain("m1"), NOW)
    assert [(m.unit, m.phase) for m in p.stop_first] == [("o.service", "stopping")]
    assert not p.start


def test_the_old_copy_stops_only_once_the_new_one_is_active() -> None:
    rec = MoveRecord("a.service", "m1", "m2", "starting")
    s = snap([J("a.service")], {"a.service": {"m1"}})
    for report, want in [({}, []), (active("a.service", "m2", "activating"), []),
                         (active("a.service", "m2"), [rec])]:
        assert moves.plan(s, {"a.service": rec}, report, {}, NOW).finish == want


def test_a_failed_new_copy_aborts_the_move_and_the_old_one_stays() -> None:
    rec = MoveRecord("a.service", "m1", "m2", "starting")
    s = snap([J("a.service")], {"a.service": {"m1"}})
    p = moves.plan(s, {"a.service": rec}, active("a.service", "m2", "failed"), {}, NOW)
    assert [(m, why) for m, why in p.abort] == [(rec, "a.service failed on m2")]
    assert not p.finish


def test_a_stop_first_move_releases_once_the_old_copy_is_inactive() -> None:
    rec = MoveRecord("o.service", "m1", "m2", "stopping")
    s = snap([J("o.service", move_before_stop=False)], {})
    assert moves.plan(s, {"o.service": rec}, active("o.service", "m1"), {}, NOW).release == []
    assert moves.plan(s, {"o.service": rec}, active("o.service", "m1", "inactive"), {},
                      NOW).release == [rec]
    assert moves.plan(s, {"o.service": rec}, {}, {}, NOW).release == [rec]
    assert moves.held_units({"o.service": rec}) == {"o.service"}


def test_a_move_target_is_hidden_from_the_scheduler_only_while_both_copies_exist() -> None:
    rec = MoveRecord("a.service", "m1", "m2", "starting")
    assert moves.visible_schedule({"a.service": {"m1": 1, "m2": 1}}, {"a.service": rec}) == {
        "a.service": {"m2"}}
    assert moves.visible_schedule({"a.service": {"m2": 1}}, {"a.service": rec}) == {}


def test_a_named_target_violating_a_constraint_is_refused_with_the_check() -> None:
    s = snap([J("a.service", metadata=(("disk", ("ssd",)),)), J("b.service", conflicts=(
        "a.service",))], {"a.service": {"m1"}, "b.service": {"m3"}},
        m1={"disk": "ssd"}, m3={"disk": "ssd"})
    assert moves.refusal(s, "a.service", "m2").startswith("MachineMetadata:")
    assert moves.refusal(s, "a.service", "m3").startswith("Conflicts:")
    assert moves.refusal(s, "a.service", "m1") == "a.service already runs on m1"
    assert moves.refusal(s, "a.service", "m9") == "machine m9 is not in the cluster"


def test_a_draining_machine_is_no_move_target() -> None:
    s = snap([J("a.service")], {"a.service": {"m1"}}, draining=frozenset({"m2"}))
    assert moves.refusal(s, "a.service", "m2").startswith("Draining:")
    assert moves.destination(s, "a.service") == ("m3", "")


def test_no_other_machine_blocks_a_drain_and_fails_an_explicit_move() -> None:
    s = snap([J("a.service")], {"a.service": {"m1"}}, machines=("m1",),
             draining=frozenset({"m1"}))
    p = moves.plan(s, {}, {}, drain("m1"), NOW)
    assert [(b.phase, b.reason) for b in p.blocked] == [
        ("blocked", "no other machine fits: no other live machine")]
    req = MoveRecord("a.service", "m1", "", "requested")
    p = moves.plan(snap([J("a.service")], {"a.service": {"m1"}}, machines=("m1",)),
                   {"a.service": req}, {}, {}, NOW)
    assert [why for _, why in p.abort] == ["no other machine fits: no other live machine"]


def test_global_units_stay_unless_the_drain_includes_them() -> None:
    s = snap([J("g.service", global_=True)], {"g.service": {"m1", "m2", "m3"}},
             draining=frozenset({"m1"}))
    assert moves.plan(s, {}, {}, drain("m1"), NOW).empty
    assert moves.plan(s, {}, {}, drain("m1", include_global=True), NOW).unassign_global == [
        ("g.service", "m1")]


def test_two_units_moved_in_one_pass_never_pick_conflicting_targets() -> None:
    s = snap([J("x.service", conflicts=("y.service",)), J("y.service")],
             {"x.service": {"m2"}, "y.service": {"m1"}}, draining=frozenset({"m1"}))
    p = moves.plan(s, {}, {}, drain("m1"), NOW)
    assert [(m.unit, m.to_machine) for m in p.start] == [("y.service", "m3")]


def test_pinned_records_end_when_the_machine_is_undrained() -> None:
    rec = MoveRecord("p.service", "m1", "", "pinned", "pinned to its machine (MachineID=m1)")
    s = snap([J("p.service", machine_id="m1")], {"p.service": {"m1"}})
    assert moves.plan(s, {"p.service": rec}, {}, {}, NOW).forget == ["p.service"]
    still = moves.plan(s, {"p.service": rec}, {}, drain("m1"), NOW)
    assert still.empty  # unchanged: not rewritten
