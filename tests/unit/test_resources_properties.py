"""Property tests of resource-aware placement (Hypothesis): whatever the cluster, the units
the scheduler leaves on a machine never reserve more than it can give, under both policies,
after a full pass and after the fast path; and `explain` agrees with the placement."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetd.engine._placement import pipeline_for
from fleetd.engine.scheduler import (
    Assign,
    ClusterSnapshot,
    Decision,
    JobView,
    MachineView,
    Unassign,
    explain,
    place_new,
    reconcile,
)
from fleetd.unit import XFleet

MACHINES = ["m1", "m2", "m3", "m4"]
UNITS = [f"u{i}.service" for i in range(10)]
M = 1 << 20


@st.composite
def clusters(draw: Any) -> ClusterSnapshot:
    machines = {}
    for mid in draw(st.lists(st.sampled_from(MACHINES), unique=True, min_size=1)):
        cpu = draw(st.sampled_from([0, 500, 1000, 2000, 4000]))
        memory = draw(st.sampled_from([0, 256 * M, 512 * M, 1024 * M, 4096 * M]))
        machines[mid] = MachineView(mid, {}, cpu, memory)
    jobs = {}
    names = draw(st.lists(st.sampled_from(UNITS), unique=True, max_size=10))
    for name in names:
        others = [n for n in names if n != name]
        machine_of = tuple(draw(st.lists(st.sampled_from(others), max_size=1, unique=True))) \
            if others and draw(st.integers(0, 3)) == 0 else ()
        xfleet = XFleet(
            cpu=draw(st.sampled_from([0, 0, 250, 500, 1000, 3000])),
            memory=draw(st.sampled_from([0, 0, 100 * M, 300 * M, 700 * M, 2048 * M])),
            global_=not machine_of and draw(st.integers(0, 6)) == 0,
            machine_of=machine_of,
            conflicts=("u1*.service",) if draw(st.integers(0, 5)) == 0 else (),
        )
        jobs[name] = JobView(name, draw(st.sampled_from(["launched", "loaded", "inactive"])),
                             xfleet)
    schedule: dict[str, frozenset[str]] = {}
    for name in draw(st.lists(st.sampled_from(UNITS), unique=True)):
        schedule[name] = frozenset(draw(st.lists(st.sampled_from([*MACHINES, "m9"]),
                                                 unique=True, min_size=1, max_size=2)))
    return ClusterSnapshot(machines, jobs, schedule)


def apply(snapshot: ClusterSnapshot, decisions: list[Decision]) -> ClusterSnapshot:
    schedule = {u: set(ms) for u, ms in snapshot.schedule.items()}
    for d in decisions:
        if isinstance(d, Unassign):
            schedule[d.unit].discard(d.machine_id)
        elif isinstance(d, Assign):
            schedule.setdefault(d.unit, set()).add(d.machine_id)
    return ClusterSnapshot(snapshot.machines, snapshot.jobs,
                           {u: frozenset(ms) for u, ms in schedule.items() if ms})


def check_capacity(after: ClusterSnapshot) -> None:
    used: dict[str, list[int]] = {}
    for unit, where in after.schedule.items():
        for mid in where:
            if mid not in after.machines or unit not in after.jobs:
                continue
            x = after.jobs[unit].xfleet
            per = used.setdefault(mid, [0, 0])
            per[0] += x.cpu
            per[1] += x.memory
    for mid, (cpu, memory) in used.items():
        view = after.machines[mid]
        assert not view.cpu or cpu <= view.cpu, (mid, cpu, view)
        assert not view.memory or memory <= view.memory, (mid, memory, view)


@settings(max_examples=400, deadline=None)
@given(clusters(), st.sampled_from(["spread", "binpack"]))
def test_capacity_is_never_exceeded_and_one_pass_converges(snapshot: ClusterSnapshot,
                                                           policy: str) -> None:
    pipeline = pipeline_for(policy)
    after = apply(snapshot, reconcile(snapshot, pipeline))
    check_capacity(after)
    again = reconcile(after, pipeline)
    assert not [d for d in again if isinstance(d, Assign | Unassign)], again


@settings(max_examples=300, deadline=None)
@given(clusters(), st.sampled_from(["spread", "binpack"]), st.data())
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
    check_capacity(apply(grown, place_new(grown, extra, pipeline)))


@settings(max_examples=200, deadline=None)
@given(clusters(), st.sampled_from(["spread", "binpack"]))
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
@given(clusters(), st.sampled_from(["spread", "binpack"]))
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
