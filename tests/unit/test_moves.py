"""Table tests of the move planner (fleetd.engine.moves): pure, no etcd, no engine."""

from __future__ import annotations

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


def test_a_machine_id_pin_is_left_with_the_reason() -> None:
    s = snap([J("p.service", machine_id="m1")], {"p.service": {"m1"}},
             draining=frozenset({"m1"}))
    p = moves.plan(s, {}, {}, drain("m1"), NOW)
    assert [(b.unit, b.phase, b.reason) for b in p.blocked] == [
        ("p.service", "pinned", "pinned to its machine (MachineID=m1)")]
    assert not p.start and not p.stop_first


def test_a_unit_with_conflicts_moves_make_before_break_where_nothing_conflicts() -> None:
    s = snap([J("c.service", conflicts=("q*",)), J("q1.service")],
             {"c.service": {"m1"}, "q1.service": {"m2"}}, draining=frozenset({"m1"}))
    p = moves.plan(s, {}, {}, drain("m1"), NOW)
    assert [(m.unit, m.to_machine, m.phase) for m in p.start] == [
        ("c.service", "m3", "starting")]
    assert not p.blocked and not p.stop_first
    assert moves.pin_reason(s, s.jobs["c.service"]) == ""


def test_a_unit_whose_every_other_machine_conflicts_is_blocked_not_pinned() -> None:
    s = snap([J("c.service", conflicts=("q*",)), J("q1.service"), J("q2.service")],
             {"c.service": {"m1"}, "q1.service": {"m2"}, "q2.service": {"m3"}},
             draining=frozenset({"m1"}))
    p = moves.plan(s, {}, {}, drain("m1", "stop"), NOW)
    [b] = p.blocked
    assert (b.unit, b.phase) == ("c.service", "blocked")
    assert "filtered by Conflicts" in b.reason
    assert not p.stop_first  # stopping it first would not make room


def test_a_new_copy_in_flight_counts_for_conflicts() -> None:
    # x is on its way to m3 (hidden from the schedule): y, which conflicts with it, must
    # not go there meanwhile, by a drain or by the scheduler.
    from fleetd.engine.scheduler import Assign, reconcile

    s = ClusterSnapshot({m: MachineView(m) for m in ("m1", "m2", "m3")},
                        {"x.service": J("x.service"), "y.service": J("y.service", conflicts=(
                            "x.service",)), "z.service": J("z.service", conflicts=(
                                "x.service",))},
                        {"x.service": frozenset({"m2"}), "y.service": frozenset({"m1"})},
                        draining=frozenset({"m1"}), moving={"x.service": frozenset({"m3"})})
    rec = MoveRecord("x.service", "m2", "m3", "starting")
    p = moves.plan(s, {"x.service": rec}, {}, drain("m1"), NOW)
    [b] = p.blocked
    assert b.unit == "y.service" and "Conflicts" in b.reason
    assert moves.refusal(s, "y.service", "m3").startswith("Conflicts: conflicts with x.service")
    assert [d for d in reconcile(s) if isinstance(d, Assign)] == []  # z: m1 drains, x on m2/m3


def GROUP(**leader: object) -> list[JobView]:
    return [J("app.service", **leader), J("side.service", machine_of=("app.service",)),
            J("log.service", machine_of=("side.service",))]


def test_a_drain_moves_a_machine_of_group_together_to_one_machine() -> None:
    s = snap([*GROUP(), J("busy.service")],
             {"app.service": {"m1"}, "side.service": {"m1"}, "log.service": {"m1"},
              "busy.service": {"m2"}}, draining=frozenset({"m1"}))
    p = moves.plan(s, {}, {}, drain("m1"), NOW)
    assert sorted((m.unit, m.to_machine, m.phase) for m in p.start) == [
        ("app.service", "m3", "starting"), ("log.service", "m3", "starting"),
        ("side.service", "m3", "starting")]
    assert not p.blocked and not p.stop_first
    assert moves.group_of(s, "log.service", "m1") == ("app.service", "side.service",
                                                      "log.service")
    assert moves.leaders(s, moves.group_of(s, "side.service", "m1")) == ("app.service",)


def test_the_group_target_must_take_every_member() -> None:
    # m3 is the least loaded but only m2 has the disk the sidekick needs.
    jobs = [J("app.service"), J("side.service", machine_of=("app.service",),
                                metadata=(("disk", ("ssd",)),)), J("x.service")]
    s = snap(jobs, {"app.service": {"m1"}, "side.service": {"m1"}, "x.service": {"m2"}},
             draining=frozenset({"m1"}), m1={"disk": "ssd"}, m2={"disk": "ssd"})
    p = moves.plan(s, {}, {}, drain("m1"), NOW)
    assert {m.unit: m.to_machine for m in p.start} == {"app.service": "m2",
                                                       "side.service": "m2"}
    assert moves.refusal(s, "app.service", "m3") == (
        "side.service (MachineOf group): MachineMetadata: metadata of m3 does not match "
        "disk=ssd")
    assert moves.destination(s, "app.service") == ("m2", "")


def test_the_old_copies_of_a_group_stop_only_once_every_new_one_is_active() -> None:
    s = snap(GROUP()[:2], {"app.service": {"m1"}, "side.service": {"m1"}})
    recs = {u: MoveRecord(u, "m1", "m2", "starting") for u in ("app.service", "side.service")}
    one = active("app.service", "m2")
    assert moves.plan(s, recs, one, {}, NOW).finish == []
    both = {**one, **active("side.service", "m2")}
    assert sorted(m.unit for m in moves.plan(s, recs, both, {}, NOW).finish) == [
        "app.service", "side.service"]


def test_a_member_failing_to_start_aborts_the_whole_group() -> None:
    s = snap(GROUP()[:2], {"app.service": {"m1"}, "side.service": {"m1"}})
    recs = {u: MoveRecord(u, "m1", "m2", "starting") for u in ("app.service", "side.service")}
    states = {**active("app.service", "m2"), **active("side.service", "m2", "failed")}
    p = moves.plan(s, recs, states, {}, NOW)
    assert sorted((m.unit, why) for m, why in p.abort) == [
        ("app.service", "moved with its MachineOf group: side.service failed on m2"),
        ("side.service", "side.service failed on m2")]
    assert not p.finish


def test_a_group_with_a_stop_first_member_is_moved_stop_first_as_a_whole() -> None:
    jobs = [J("app.service"), J("side.service", machine_of=("app.service",),
                                move_before_stop=False)]
    s = snap(jobs, {"app.service": {"m1"}, "side.service": {"m1"}}, draining=frozenset({"m1"}))
    p = moves.plan(s, {}, {}, drain("m1"), NOW)
    assert sorted((m.unit, m.to_machine, m.phase) for m in p.stop_first) == [
        ("app.service", "m2", "stopping"), ("side.service", "m2", "stopping")]
    assert not p.start
    recs = {m.unit: m for m in p.stop_first}
    gone = snap(jobs, {})
    half = active("app.service", "m1", "inactive")
    assert moves.plan(gone, recs, {**half, **active("side.service", "m1")}, {}, NOW).release == []
    done = {**half, **active("side.service", "m1", "inactive")}
    p = moves.plan(gone, recs, done, {}, NOW)
    assert sorted(m.unit for m in p.release) == ["app.service", "side.service"]
    # Both go to the target, the leader first so the sidekick's MachineOf holds there.
    assert p.placed == {"app.service": "m2", "side.service": "m2"}


def test_a_group_with_a_pinned_member_is_pinned_as_a_whole() -> None:
    jobs = [J("app.service"), J("side.service", machine_of=("app.service",),
                                machine_id="m1")]
    s = snap(jobs, {"app.service": {"m1"}, "side.service": {"m1"}}, draining=frozenset({"m1"}))
    p = moves.plan(s, {}, {}, drain("m1"), NOW)
    assert sorted((b.unit, b.phase, b.reason) for b in p.blocked) == [
        ("app.service", "pinned", "side.service (MachineOf group of app.service) is pinned "
                                  "to its machine (MachineID=m1)"),
        ("side.service", "pinned", "side.service (MachineOf group of app.service) is pinned "
                                   "to its machine (MachineID=m1)")]


def test_moving_a_follower_alone_is_refused_naming_the_leader() -> None:
    s = snap(GROUP(), {"app.service": {"m1"}, "side.service": {"m1"}, "log.service": {"m1"}})
    assert moves.follower_refusal(s, "side.service") == (
        "side.service follows app.service (MachineOf): move app.service and its MachineOf "
        "group (app.service, side.service, log.service) moves with it")
    assert moves.follower_refusal(s, "app.service") == ""


def test_an_explicit_move_of_the_leader_moves_its_group() -> None:
    s = snap(GROUP()[:2], {"app.service": {"m1"}, "side.service": {"m1"}})
    req = {"app.service": MoveRecord("app.service", "m1", "m3", "requested")}
    p = moves.plan(s, req, {}, {}, NOW)
    assert sorted((m.unit, m.from_machine, m.to_machine) for m in p.start) == [
        ("app.service", "m1", "m3"), ("side.service", "m1", "m3")]


def test_a_sidekick_following_a_global_unit_moves_alone() -> None:
    s = snap([J("g.service", global_=True), J("f.service", machine_of=("g.service",))],
             {"g.service": {"m1", "m2", "m3"}, "f.service": {"m1"}},
             draining=frozenset({"m1"}))
    p = moves.plan(s, {}, {}, drain("m1"), NOW)
    assert [(m.unit, m.to_machine) for m in p.start] == [("f.service", "m2")]


def test_pinned_stop_stops_first_and_a_machine_id_unit_gets_no_target() -> None:
    s = snap([J("p.service", machine_id="m1"), J("c.service", conflicts=("x*",))],
             {"p.service": {"m1"}, "c.service": {"m1"}}, draining=frozenset({"m1"}))
    p = moves.plan(s, {}, {}, drain("m1", "stop"), NOW)
    assert {m.unit: (m.phase, m.to_machine) for m in p.stop_first} == {
        "p.service": ("stopping", "")}
    assert [(m.unit, m.phase) for m in p.start] == [("c.service", "starting")]


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


def test_a_stop_first_target_is_held_for_the_unit_while_its_old_copy_stops() -> None:
    from fleetd.engine.scheduler import Assign, reconcile

    M = 1 << 20
    machines = {"m1": MachineView("m1", {}, 0, 0), "m2": MachineView("m2", {}, 0, 512 * M)}
    jobs = {"o.service": J("o.service", memory=400 * M, move_before_stop=False),
            "n.service": J("n.service", memory=200 * M)}
    recs = {"o.service": MoveRecord("o.service", "m1", "m2", "stopping")}
    assert moves.reserved_copies({}, recs) == {"o.service": frozenset({"m2"})}
    s = ClusterSnapshot(machines, jobs, {}, draining=frozenset({"m1"}),
                        moving=moves.reserved_copies({}, recs))
    # The scheduler does not give o's room to n (m1 drains: n waits).
    assert [d for d in reconcile(s) if isinstance(d, Assign)] == []
    p = moves.plan(s, recs, active("o.service", "m1", "inactive"), drain("m1"), NOW)
    assert p.placed == {"o.service": "m2"}


def test_moves_are_planned_beside_the_passes_own_placements() -> None:
    from fleetd.engine.scheduler import Assign, Unassign

    s = snap([J("a.service"), J("b.service")], {"a.service": {"m1"}})
    after = moves.with_decisions(s, [Assign("b.service", "m2", ""),
                                     Unassign("a.service", "m1", "")])
    assert after.schedule == {"b.service": frozenset({"m2"})}
    assert moves.with_decisions(s, []) is s


def test_a_machine_of_cycle_has_no_leader_to_name() -> None:
    s = snap([J("a.service", machine_of=("b.service",)), J("b.service", machine_of=(
        "a.service",))], {"a.service": {"m1"}, "b.service": {"m1"}})
    assert moves.group_of(s, "a.service", "m1") == ("a.service", "b.service")
    assert moves.leaders(s, ("a.service", "b.service")) == ()
    assert moves.follower_refusal(s, "a.service") == ""


def test_a_named_target_is_judged_beside_the_passes_other_moves() -> None:
    M = 1 << 20
    machines = {"m1": MachineView("m1"), "m2": MachineView("m2"),
                "m3": MachineView("m3", {}, 0, 512 * M)}
    jobs = {"a.service": J("a.service", memory=400 * M),
            "b.service": J("b.service", memory=400 * M)}
    s = ClusterSnapshot(machines, jobs, {"a.service": frozenset({"m1"}),
                                         "b.service": frozenset({"m2"})})
    both = {u: MoveRecord(u, m, "m3", "requested") for u, m in (("a.service", "m1"),
                                                                ("b.service", "m2"))}
    p = moves.plan(s, both, {}, {}, NOW)
    assert [(m.unit, m.to_machine) for m in p.start] == [("a.service", "m3")]
    [(rec, why)] = p.abort
    assert rec.unit == "b.service" and why.startswith("cannot move to m3: Resources: needs 400M")
