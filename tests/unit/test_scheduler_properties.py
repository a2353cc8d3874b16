"""Property tests of fleetd.engine.scheduler on random clusters (Hypothesis).

`clusters` is the one generator of random clusters for the scheduler's property tests;
`clusters(resources=True)` adds machine capacities and unit reservations
(tests/unit/test_resources_properties.py)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetd.engine.scheduler import (
    Assign,
    ClusterSnapshot,
    Decision,
    JobView,
    MachineView,
    Unassign,
    Unschedulable,
    explain,
    place_new,
    reconcile,
)
from fleetd.unit import XFleet, glob_match

MACHINES = ["m1", "m2", "m3", "m4", "m5"]
UNITS = [f"u{i}.service" for i in range(8)]
PATTERNS = [*UNITS, "u1*.service", "u*.service", "u[0-3].service"]
META_KEYS = {"region": ["a", "b"], "disk": ["x", "y"]}


M = 1 << 20
CPUS = [0, 500, 1000, 2000, 4000]  # a machine's milli-CPUs (0: not published)
MEMORIES = [0, 256 * M, 512 * M, 1024 * M, 4096 * M]
CPU_DEMANDS = [0, 0, 250, 500, 1000, 3000]  # a unit's reservation
MEMORY_DEMANDS = [0, 0, 100 * M, 300 * M, 700 * M, 2048 * M]


@st.composite
def machine_views(draw: Any, resources: bool = False, min_size: int = 0
                  ) -> dict[str, MachineView]:
    ids = draw(st.lists(st.sampled_from(MACHINES), unique=True, min_size=min_size,
                        max_size=5))
    views = {}
    for mid in ids:
        keys = draw(st.lists(st.sampled_from(sorted(META_KEYS)), unique=True))
        cpu, memory = ((draw(st.sampled_from(CPUS)), draw(st.sampled_from(MEMORIES)))
                       if resources else (0, 0))
        views[mid] = MachineView(mid, {k: draw(st.sampled_from(META_KEYS[k])) for k in keys},
                                 cpu, memory)
    return views


@st.composite
def xfleets(draw: Any, name: str, allow_replaces: bool, resources: bool = False) -> XFleet:
    meta_keys = draw(st.lists(st.sampled_from(sorted(META_KEYS)), unique=True, max_size=2))
    metadata = tuple(
        (
            key,
            tuple(sorted(draw(st.lists(st.sampled_from(META_KEYS[key]), min_size=1, unique=True)))),
        )
        for key in sorted(meta_keys)
    )
    is_global = draw(st.integers(0, 5)) == 0
    # Only units the API accepts: Global=true cannot go with MachineID, MachineOf or Replaces.
    return XFleet(
        machine_id="" if is_global else draw(st.sampled_from(["", "", "", *MACHINES, "m9"])),
        machine_of=tuple(draw(st.lists(st.sampled_from(UNITS), unique=True, max_size=2)))
        if not is_global and draw(st.integers(0, 2)) == 0
        else (),
        metadata=metadata if draw(st.booleans()) else (),
        conflicts=tuple(draw(st.lists(st.sampled_from(PATTERNS), unique=True, max_size=2)))
        if draw(st.integers(0, 2)) == 0
        else (),
        global_=is_global,
        replaces=tuple(draw(st.lists(st.sampled_from(UNITS), unique=True, max_size=1)))
        if allow_replaces and not is_global and draw(st.integers(0, 3)) == 0
        else (),
        cpu=draw(st.sampled_from(CPU_DEMANDS)) if resources else 0,
        memory=draw(st.sampled_from(MEMORY_DEMANDS)) if resources else 0,
    )


@st.composite
def clusters(draw: Any, allow_replaces: bool = False, resources: bool = False
             ) -> ClusterSnapshot:
    """A random cluster: up to 5 machines (metadata; capacities with ``resources``), up to 8
    units with random [X-Fleet] options (reservations with ``resources``), and a partly
    stale schedule (dead machines, destroyed units, duplicates)."""
    machines = draw(machine_views(resources, min_size=1 if resources else 0))
    names = draw(st.lists(st.sampled_from(UNITS), unique=True, max_size=8))
    jobs = {
        name: JobView(
            name,
            draw(st.sampled_from(["launched", "launched", "loaded", "inactive"])),
            draw(xfleets(name, allow_replaces, resources)),
        )
        for name in names
    }
    schedule: dict[str, frozenset[str]] = {}
    for name in draw(st.lists(st.sampled_from([*UNITS, "gone.service"]), unique=True)):
        where = draw(
            st.lists(st.sampled_from([*MACHINES, "m9"]), unique=True, min_size=1, max_size=2)
        )
        schedule[name] = frozenset(where)
    return ClusterSnapshot(machines, jobs, schedule)


def apply(snapshot: ClusterSnapshot, decisions: list[Decision]) -> ClusterSnapshot:
    schedule = {u: set(ms) for u, ms in snapshot.schedule.items()}
    for d in decisions:
        if isinstance(d, Unassign):
            schedule[d.unit].discard(d.machine_id)
        elif isinstance(d, Assign):
            schedule.setdefault(d.unit, set()).add(d.machine_id)
    return ClusterSnapshot(
        snapshot.machines,
        snapshot.jobs,
        {u: frozenset(ms) for u, ms in schedule.items() if ms},
    )


def conflict(a: JobView, b: JobView) -> bool:
    return a.xfleet.conflicts_with(b.name) or b.xfleet.conflicts_with(a.name)


def replaces(a: JobView, b: JobView) -> bool:
    return any(glob_match(p, b.name) for p in a.xfleet.replaces)


def check_invariants(snapshot: ClusterSnapshot, decisions: list[Decision]) -> None:
    after = apply(snapshot, decisions)
    jobs, machines, sched = snapshot.jobs, snapshot.machines, after.schedule
    unplaced = {d.unit for d in decisions if isinstance(d, Unschedulable)}
    hosted: dict[str, list[str]] = {}
    for unit, where in sched.items():
        assert unit in jobs and jobs[unit].target_state != "inactive", unit
        assert where <= set(machines), (unit, where)
        for mid in where:
            hosted.setdefault(mid, []).append(unit)
        x = jobs[unit].xfleet
        for mid in where:
            assert not x.machine_id or x.machine_id == mid
            assert x.metadata_matches(machines[mid].metadata)
            for target in x.machine_of:
                assert mid in sched.get(target, frozenset()), (unit, target)
    for mid, units in hosted.items():
        for i, a in enumerate(units):
            for b in units[i + 1 :]:
                ja, jb = jobs[a], jobs[b]
                if replaces(ja, jb) != replaces(jb, ja):
                    continue  # the replacer ignores the replaced unit (which then moves)
                assert not conflict(ja, jb), (mid, a, b)
    for name, job in jobs.items():
        if job.target_state == "inactive":
            assert name not in sched and name not in unplaced
        elif job.xfleet.global_:
            assert (name in sched) != (name in unplaced), name
        else:
            assert (len(sched.get(name, ())) == 1) != (name in unplaced), name


@settings(max_examples=400, deadline=None)
@given(clusters())
def test_reconcile_invariants_and_convergence(snapshot: ClusterSnapshot) -> None:
    decisions = reconcile(snapshot)
    check_invariants(snapshot, decisions)
    after = apply(snapshot, decisions)
    again = reconcile(after)
    assert all(isinstance(d, Unschedulable) for d in again), again
    assert again == [d for d in decisions if isinstance(d, Unschedulable)]


@settings(max_examples=300, deadline=None)
@given(clusters(allow_replaces=True))
def test_reconcile_with_replaces(snapshot: ClusterSnapshot) -> None:
    decisions = reconcile(snapshot)
    check_invariants(snapshot, decisions)
    after = apply(snapshot, decisions)
    assert all(isinstance(d, Unschedulable) for d in reconcile(after))


@settings(max_examples=200, deadline=None)
@given(clusters(allow_replaces=True))
def test_reconcile_is_deterministic(snapshot: ClusterSnapshot) -> None:
    shuffled = ClusterSnapshot(
        dict(reversed(list(snapshot.machines.items()))),
        dict(reversed(list(snapshot.jobs.items()))),
        dict(reversed(list(snapshot.schedule.items()))),
    )
    first = reconcile(snapshot)
    assert reconcile(snapshot) == first
    assert reconcile(shuffled) == first


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000))
def test_synthetic_clusters_hold_invariants(seed: int) -> None:
    from fleetd.engine.scheduler import synthetic_snapshot

    snapshot = synthetic_snapshot(30, 300, seed)
    decisions = reconcile(snapshot)
    check_invariants(snapshot, decisions)
    again = reconcile(apply(snapshot, decisions))
    assert again == [d for d in decisions if isinstance(d, Unschedulable)]


@st.composite
def clusters_in_grace(draw: Any) -> ClusterSnapshot:
    """Clusters where some machines left (in their grace) holding what they had, and some
    held units lost their assignment (destroyed and started again)."""
    base = draw(clusters(allow_replaces=True))
    departed = frozenset(draw(st.lists(st.sampled_from(sorted(base.machines) or ["m1"]),
                                       unique=True, max_size=2))) & set(base.machines)
    had = {u for u, where in base.schedule.items() if where & departed}
    held = frozenset(had | set(draw(st.lists(st.sampled_from(UNITS), unique=True, max_size=2))))
    return ClusterSnapshot(base.machines, base.jobs, base.schedule, departed, held)


def check_explain_matches_reconcile(snapshot: ClusterSnapshot) -> None:
    """What `fleetctl why` says of each unit is what the engine does with it."""
    decisions = reconcile(snapshot)
    after = apply(snapshot, decisions)
    unplaced = {d.unit: d for d in decisions if isinstance(d, Unschedulable)}
    for name, job in snapshot.jobs.items():
        ex = explain(snapshot, name)
        placed = tuple(sorted(after.schedule.get(name, ())))
        assert ex.scheduled_on == placed, (name, ex)
        assert {r[0] for r in ex.rejected} | set(ex.feasible) == set(snapshot.machines)
        assert [s[0] for s in ex.scores] == sorted(ex.feasible, key=lambda m: (
            -next(s[1] for s in ex.scores if s[0] == m), m))
        if job.target_state == "inactive":
            assert placed == ()
        elif name in unplaced:
            assert ex.feasible == ()
            by_check: dict[str, int] = {}
            for _, check, _ in ex.rejected:
                by_check[check] = by_check.get(check, 0) + 1
            assert dict(unplaced[name].filtered) == by_check, (name, ex, unplaced[name])
        elif job.xfleet.global_:
            assert set(ex.feasible) == set(placed), (name, ex)
        else:
            assert set(placed) <= set(ex.feasible), (name, ex)


@settings(max_examples=120, deadline=None)
@given(clusters(allow_replaces=True))
def test_explain_verdict_matches_the_engines_placement(snapshot: ClusterSnapshot) -> None:
    check_explain_matches_reconcile(snapshot)


@settings(max_examples=80, deadline=None)
@given(clusters_in_grace())
def test_explain_matches_the_engine_during_a_grace(snapshot: ClusterSnapshot) -> None:
    check_explain_matches_reconcile(snapshot)
    decisions = reconcile(snapshot)
    for d in decisions:
        if isinstance(d, Assign):
            assert d.machine_id not in snapshot.departed, d
            job = snapshot.jobs[d.unit]
            assert d.unit not in snapshot.held or job.xfleet.global_, d


@settings(max_examples=200, deadline=None)
@given(clusters(), st.data())
def test_place_new_is_what_the_full_pass_keeps(snapshot: ClusterSnapshot, data: Any) -> None:
    """Units submitted into a settled cluster: the fast path's placements are feasible, the
    full pass keeps them and gives the same reasons for those it could not place."""
    new = set(data.draw(st.lists(st.sampled_from(sorted(snapshot.jobs) or ["x.service"]),
                                 unique=True, max_size=3))) & set(snapshot.jobs)
    rest = {n: j for n, j in snapshot.jobs.items() if n not in new}
    settled = ClusterSnapshot(snapshot.machines, rest, snapshot.schedule)
    for _ in range(2):
        settled = apply(settled, reconcile(settled))
    cluster = ClusterSnapshot(snapshot.machines, snapshot.jobs, settled.schedule)
    decisions = place_new(cluster, new)
    if decisions is None:
        return
    assert all(not isinstance(d, Unassign) for d in decisions)
    after = apply(cluster, decisions)
    again = reconcile(after)
    assert all(isinstance(d, Unschedulable) for d in again), again
    mine = {d.unit: d for d in decisions if isinstance(d, Unschedulable)}
    assert {d.unit: d for d in again if d.unit in mine} == mine
