"""Property tests of resource-aware placement (Hypothesis), on the scheduler's own random
clusters (`tests.unit.test_scheduler_properties.clusters` with capacities and reservations):
whatever the cluster, the units on a machine never reserve more than it can give, under both
policies, after a full pass and after the fast path; a MachineOf group is placed whole (its
leader only where its followers fit too); `explain` agrees with the placement; and a drain,
step by step as the engine runs it, never exceeds a capacity nor splits a group, counting
every copy a make-before-break move has."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetd.engine import moves
from fleetd.engine._placement import pipeline_for
from fleetd.engine.scheduler import (
    Assign,
    ClusterSnapshot,
    JobView,
    Unassign,
    Unschedulable,
    explain,
    place_new,
    reconcile,
)
from fleetd.registry.schema import DrainRecord, MoveRecord, UnitStateRecord
from fleetd.unit import XFleet
from tests.unit.test_scheduler_properties import UNITS, M, apply, clusters, machine_views

POLICIES = st.sampled_from(["spread", "binpack"])


def check_capacity(machines: ClusterSnapshot, schedule: dict[str, set[str]] | None = None
                   ) -> None:
    """No machine reserves more than it can give (``schedule``: every copy, hidden ones
    included; default the snapshot's)."""
    where_all = schedule if schedule is not None else machines.schedule
    used: dict[str, list[int]] = {}
    for unit, where in where_all.items():
        for mid in where:
            if mid not in machines.machines or unit not in machines.jobs:
                continue
            x = machines.jobs[unit].xfleet
            per = used.setdefault(mid, [0, 0])
            per[0] += x.cpu
            per[1] += x.memory
    for mid, (cpu, memory) in used.items():
        view = machines.machines[mid]
        assert not view.cpu or cpu <= view.cpu, (mid, cpu, view, where_all)
        assert not view.memory or memory <= view.memory, (mid, memory, view, where_all)


def check_groups(snapshot: ClusterSnapshot, schedule: dict[str, set[str]]) -> None:
    """Every copy of a follower runs where a copy of each of its targets runs."""
    for unit, where in schedule.items():
        job = snapshot.jobs.get(unit)
        if job is None:
            continue
        for target in job.xfleet.machine_of:
            for mid in where:
                assert mid in schedule.get(target, set()), (unit, target, mid, schedule)


def within_capacity(snapshot: ClusterSnapshot) -> bool:
    try:
        check_capacity(snapshot)
    except AssertionError:
        return False
    return True


@settings(max_examples=400, deadline=None)
@given(clusters(resources=True), POLICIES)
def test_capacity_is_never_exceeded_and_one_pass_converges(snapshot: ClusterSnapshot,
                                                           policy: str) -> None:
    pipeline = pipeline_for(policy)
    after = apply(snapshot, reconcile(snapshot, pipeline))
    check_capacity(after)
    again = reconcile(after, pipeline)
    assert not [d for d in again if isinstance(d, Assign | Unassign)], again


@settings(max_examples=300, deadline=None)
@given(clusters(resources=True), POLICIES)
def test_a_group_is_never_split_by_room_its_leader_was_placed_with(
        snapshot: ClusterSnapshot, policy: str) -> None:
    """A leader newly placed on a machine was judged with its followers' reservations there:
    none of them can then be refused that machine for lack of room."""
    decisions = reconcile(snapshot, pipeline_for(policy))
    after = apply(snapshot, decisions)
    for d in decisions:
        if not isinstance(d, Unschedulable):
            continue
        targets = snapshot.jobs[d.unit].xfleet.machine_of
        if any(t in snapshot.jobs and snapshot.jobs[t].xfleet.global_ for t in targets):
            continue  # a global leader goes everywhere, never judged with its followers
        homes = [after.schedule.get(t, frozenset()) for t in targets]
        if not targets or not all(len(h) == 1 for h in homes) or len(set(homes)) != 1:
            continue
        (home,) = homes[0]
        newly = all(home not in snapshot.schedule.get(t, frozenset()) for t in targets)
        if newly and "Resources" in dict(d.filtered):
            raise AssertionError((d, after.schedule))


@settings(max_examples=300, deadline=None)
@given(clusters(resources=True), POLICIES, st.data())
def test_fast_path_respects_capacity(snapshot: ClusterSnapshot, policy: str,
                                     data: Any) -> None:
    pipeline = pipeline_for(policy)
    settled = apply(snapshot, reconcile(snapshot, pipeline))
    fresh = [n for n in UNITS if n not in snapshot.jobs]
    extra = data.draw(st.lists(st.sampled_from(fresh), unique=True, max_size=3)) if fresh else []
    jobs = dict(settled.jobs)
    for name in extra:
        jobs[name] = JobView(name, "launched", XFleet(
            cpu=data.draw(st.sampled_from([0, 500, 1500])),
            memory=data.draw(st.sampled_from([0, 200 * M, 900 * M]))))
    grown = ClusterSnapshot(settled.machines, jobs, settled.schedule)
    decisions = place_new(grown, extra, pipeline)
    if decisions is not None and within_capacity(settled):
        check_capacity(apply(grown, decisions))


@settings(max_examples=200, deadline=None)
@given(clusters(resources=True), POLICIES)
def test_explain_resources_verdict_matches_placement(snapshot: ClusterSnapshot,
                                                     policy: str) -> None:
    pipeline = pipeline_for(policy)
    after = apply(snapshot, reconcile(snapshot, pipeline))
    for name, job in after.jobs.items():
        if job.target_state == "inactive":
            continue
        ex = explain(after, name, pipeline)
        placed = after.schedule.get(name, frozenset())
        if job.xfleet.global_:
            assert set(ex.feasible) == set(placed), (name, ex)
        elif placed:
            assert set(placed) <= set(ex.feasible), (name, ex)
        else:
            assert not ex.feasible, (name, ex)
        for mid, check, detail in ex.rejected:
            if check == "Resources":
                assert detail.startswith("needs ") and f"{mid} has " in detail


@settings(max_examples=200, deadline=None)
@given(clusters(resources=True), POLICIES)
def test_rankers_best_is_their_highest_score(snapshot: ClusterSnapshot, policy: str) -> None:
    from fleetd.engine.scheduler import _working_state

    pipeline = pipeline_for(policy)
    after = apply(snapshot, reconcile(snapshot, pipeline))
    state = _working_state(after)
    state.place_all(after.schedule)
    (ranker,) = pipeline.rankers
    for job in snapshot.jobs.values():
        pool = set(state.machine_ids)
        expected = min(pool, key=lambda mid: (-ranker.score(state, job, mid), mid), default=None)
        assert ranker.best(state, job, pool) == expected
        assert ranker.best(state, job, None) == expected


# -- a drain, pass by pass --------------------------------------------------------------


class DrainRun:
    """The engine's maintenance loop without etcd (a deterministic double of
    `Engine.reconcile_once` + `_move_ops`): each step the scheduler decides on the visible
    schedule, then `moves.plan` on the schedule after those decisions; agents bring a new
    copy up when the test says so, and stop an unscheduled copy at once."""

    def __init__(self, snapshot: ClusterSnapshot, drained: str, policy: str) -> None:
        self.base = snapshot
        self.pipeline = pipeline_for(policy)
        self.copies = {u: set(ms) for u, ms in snapshot.schedule.items()}
        self.moves: dict[str, MoveRecord] = {}
        self.draining = {drained: DrainRecord(drained)}
        self.up: set[tuple[str, str]] = set()

    def snapshot(self) -> ClusterSnapshot:
        per = {u: dict.fromkeys(ms, 1) for u, ms in self.copies.items()}
        hidden = moves.visible_schedule(per, self.moves)
        visible = {u: frozenset(ms - hidden.get(u, set())) for u, ms in self.copies.items()
                   if ms}
        return ClusterSnapshot(self.base.machines, self.base.jobs, visible,
                               draining=frozenset(self.draining),
                               moving=moves.reserved_copies(per, self.moves))

    def step(self, coming_up: set[tuple[str, str]], now_ns: int) -> None:
        self.up |= coming_up & {(u, m) for u, ms in self.copies.items() for m in ms}
        states = {u: {m: UnitStateRecord(u, m, "h", "launched", "loaded", "active", "x")
                      for m in ms if (u, m) in self.up} for u, ms in self.copies.items()}
        snap = self.snapshot()
        stopping = moves.held_units(self.moves)
        decisions = [d for d in reconcile(snap, self.pipeline) if not (
            isinstance(d, Assign | Unschedulable) and d.unit in stopping)]
        for d in decisions:
            if isinstance(d, Unassign):
                self.copies[d.unit].discard(d.machine_id)
            elif isinstance(d, Assign):
                self.copies.setdefault(d.unit, set()).add(d.machine_id)
        touched = {d.unit for d in decisions if isinstance(d, Assign | Unassign)}
        snap = moves.with_decisions(snap, decisions)
        mp = moves.plan(snap, self.moves, states, self.draining, now_ns, self.pipeline)
        for m in mp.start:
            if m.unit not in touched:
                self.copies[m.unit].add(m.to_machine)
                self.moves[m.unit] = m
        for m in mp.stop_first:
            if m.unit not in touched:
                self.copies[m.unit].discard(m.from_machine)
                self.moves[m.unit] = m
        for m in mp.finish:
            self.copies[m.unit].discard(m.from_machine)
            del self.moves[m.unit]
        for m in mp.release:
            del self.moves[m.unit]
            if m.unit in mp.placed:
                self.copies.setdefault(m.unit, set()).add(mp.placed[m.unit])
        for m, why in mp.abort:
            if m.phase == "starting" and m.to_machine != m.from_machine:
                self.copies.get(m.unit, set()).discard(m.to_machine)
            self.moves[m.unit] = MoveRecord(m.unit, m.from_machine, "", "failed", why, now_ns)
        for m in mp.blocked:
            self.moves[m.unit] = m
        for unit in mp.forget:
            self.moves.pop(unit, None)
        self.copies = {u: ms for u, ms in self.copies.items() if ms}
        self.up = {(u, m) for u, ms in self.copies.items() for m in ms if (u, m) in self.up}


@st.composite
def busy_clusters(draw: Any) -> ClusterSnapshot:
    """Clusters worth draining: the shared generator's machines (with capacities), units
    that are mostly wanted, often in MachineOf groups (chains of earlier units), with
    reservations and now and then MoveBeforeStop=false or Conflicts; placed by the
    scheduler before the drain."""
    machines = draw(machine_views(resources=True, min_size=2))
    names = UNITS[:draw(st.integers(2, len(UNITS)))]
    jobs = {}
    for i, name in enumerate(names):
        earlier = names[:i]
        jobs[name] = JobView(name, "launched", XFleet(
            machine_of=(draw(st.sampled_from(earlier)),)
            if earlier and draw(st.integers(0, 1)) else (),
            cpu=draw(st.sampled_from([0, 250, 500, 1000])),
            memory=draw(st.sampled_from([0, 64 * M, 128 * M, 300 * M])),
            move_before_stop=draw(st.integers(0, 4)) != 0,
            conflicts=("u1*.service",) if draw(st.integers(0, 5)) == 0 else ()))
    return ClusterSnapshot(machines, jobs, {})


@settings(max_examples=300, deadline=None)
@given(busy_clusters(), POLICIES, st.data())
def test_a_drain_never_exceeds_capacity_nor_splits_a_group(
        snapshot: ClusterSnapshot, policy: str, data: Any) -> None:
    pipeline = pipeline_for(policy)
    settled = snapshot
    for _ in range(2):
        settled = apply(settled, reconcile(settled, pipeline))
    if not within_capacity(settled):
        return  # the generator's stale schedule may start over capacity: not a drain's doing
    run = DrainRun(settled, data.draw(st.sampled_from(sorted(settled.machines))), policy)
    run.up = {(u, m) for u, ms in run.copies.items() for m in ms}
    for i in range(12):
        new = sorted({(u, m) for u, ms in run.copies.items() for m in ms} - run.up)
        coming = set(data.draw(st.lists(st.sampled_from(new), unique=True))) if new else set()
        run.step(coming, i * 10**9)
        check_capacity(settled, run.copies)  # every copy, the hidden new ones included
        check_groups(settled, run.copies)
        for unit, rec in run.moves.items():
            if rec.phase == "starting":  # a group's members are on their way together
                job = settled.jobs[unit]
                for target in job.xfleet.machine_of:
                    other = run.moves.get(target)
                    if other is not None and rec.from_machine in settled.schedule.get(
                            target, frozenset()):
                        assert other.to_machine == rec.to_machine, (unit, rec, other)
