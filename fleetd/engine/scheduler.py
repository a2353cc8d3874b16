"""The engine's pure core: from a cluster snapshot to scheduling decisions (no I/O, no asyncio).

`reconcile` turns a `ClusterSnapshot` into `Assign`/`Unassign`/`Unschedulable` decisions; after
applying them, a second call returns only `Unschedulable` decisions (one pass converges).
`explain` says, per machine, which check rejects a unit, and ranks the ones that pass.
`reconcile`, `place_new` (the engine's fast path) and `explain` all go through one `Pipeline`
(`fleetd.engine._placement`): the feasibility checks of `fleetd.engine._feasibility`, then the
rankers of `fleetd.engine._ranking`.

Rules (fleet's, plus the engine's own):

* a non-global unit whose target state is ``loaded``/``launched`` gets exactly one machine, an
  ``inactive`` or destroyed unit none; assignments to machines whose lease expired are dropped
  and the unit is rescheduled in the same pass;
* a machine is feasible if it passes MachineID, MachineMetadata, MachineOf, Conflicts,
  Replaces, Departed, Held, Draining and Resources, in that order (a MachineOf leader needs
  room for its followers too where it is not yet); among feasible machines the best
  ranked wins, ties by machine id: least loaded (by reserved share, then unit count) by
  default, most loaded with ``engine_placement=binpack`` (`fleetd.engine._ranking`);
* a machine in its grace (``departed``) keeps its units and gets no new ones; the units it had
  (``held``) are placed nowhere else meanwhile (global units excepted);
* a still-feasible assignment is kept (no rebalancing); an infeasible one is moved;
* units are processed MachineOf-targets (and replacers) first so followers land with their
  target, each follower as soon as its targets are placed (before unrelated units take the
  room its group was placed with); MachineOf cycles make every unit in the cycle
  unschedulable;
* of units that Replace each other only one runs: the one already placed, else the first in
  processing order; the others are unschedulable;
* global units go to every live machine that passes the checks (the pipeline's Global mode).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from fleetd.engine._feasibility import CHECKS, INTRINSIC, WorkingState
from fleetd.engine._placement import PIPELINE, Pipeline
from fleetd.unit import XFleet

__all__ = [
    "CHECK_NAMES",
    "Assign",
    "ClusterSnapshot",
    "Decision",
    "Explanation",
    "JobView",
    "MachineView",
    "Pipeline",
    "TargetState",
    "Unassign",
    "Unschedulable",
    "explain",
    "reconcile",
    "synthetic_snapshot",
]

TargetState = Literal["inactive", "loaded", "launched"]

CHECK_NAMES: tuple[str, ...] = tuple(check.name for check in CHECKS)
"""Names of the feasibility checks, in pipeline order."""

_CHECKS = {check.name: check for check in CHECKS}

_MAX_ROUNDS = 8
"""Placement rounds per pass; a second round only runs when Replaces evicted a unit."""


@dataclass(frozen=True)
class MachineView:
    """A live machine (its lease is alive) and its metadata."""

    id: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    # -- resources: what units may reserve here (capacity minus the host reserve), in
    # milli-CPUs and bytes; 0 = not published, not limited --
    cpu: int = 0
    memory: int = 0
    # -- end resources --


@dataclass(frozen=True)
class JobView:
    """A unit in the registry: its name, desired state and [X-Fleet] options."""

    name: str
    target_state: TargetState
    xfleet: XFleet = field(default_factory=XFleet)


@dataclass(frozen=True)
class ClusterSnapshot:
    """Everything `reconcile` needs: live machines, registry units and current assignments.

    ``schedule`` may name dead machines and unknown (destroyed) units. ``departed`` are machines
    of ``machines`` whose key is gone but which are in their grace: they keep what they have
    and get nothing new; ``held`` are the units they had, placed nowhere else meanwhile.
    Built from registry values by `fleetd.engine.snapshot.build_snapshot`.
    """

    machines: Mapping[str, MachineView]
    jobs: Mapping[str, JobView]
    schedule: Mapping[str, frozenset[str]]
    departed: frozenset[str] = frozenset()
    held: frozenset[str] = frozenset()
    draining: frozenset[str] = frozenset()  # machines being drained: no new units there
    # unit -> machines its move is bringing it to (`fleetd.engine.moves.reserved_copies`):
    # not in ``schedule`` (the scheduler neither keeps nor drops them) but occupying those
    # machines for Conflicts and Resources until the move ends
    moving: Mapping[str, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Assign:
    """Assign ``unit`` to ``machine_id``."""

    unit: str
    machine_id: str
    reason: str


@dataclass(frozen=True)
class Unassign:
    """Remove ``unit`` from ``machine_id``."""

    unit: str
    machine_id: str
    reason: str


@dataclass(frozen=True)
class Unschedulable:
    """``unit`` should run but no machine fits; ``filtered`` counts removals per check."""

    unit: str
    reason: str
    filtered: tuple[tuple[str, int], ...] = ()


Decision = Assign | Unassign | Unschedulable


@dataclass(frozen=True)
class Explanation:
    """Why a unit is (not) placed: the first check rejecting each machine, and the feasible ones
    with their ranking (``scores``: machine, score, what it is made of; best first)."""

    unit: str
    scheduled_on: tuple[str, ...]
    rejected: tuple[tuple[str, str, str], ...]
    feasible: tuple[str, ...]
    scores: tuple[tuple[str, float, str], ...] = ()


# -- processing order ----------------------------------------------------------------------


def _strongly_connected(nodes: Iterable[str], edges: Mapping[str, list[str]]) -> list[list[str]]:
    """Tarjan's SCCs (iterative) of the graph ``edges`` restricted to ``nodes``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            successors = edges.get(node, [])
            if child < len(successors):
                work.append((node, child + 1))
                nxt = successors[child]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                result.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return result


def _describe_cycle(start: str, members: set[str], edges: Mapping[str, list[str]]) -> str:
    """'a -> b -> a': a shortest MachineOf cycle through ``start`` inside ``members``."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for nxt in edges.get(node, []):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return " -> ".join([*reversed(path), start])
                if nxt in members and nxt not in parent:
                    parent[nxt] = node
                    following.append(nxt)
        frontier = following
    return f"{start} -> {start}"


def _processing_order(
    active: list[str], jobs: Mapping[str, JobView], state: WorkingState
) -> tuple[list[str], dict[str, str]]:
    """Active units ordered so MachineOf targets and replacers come before their dependants
    (ties: non-globals first, then followers ready to go, then by name); also why each
    contradictory unit can be placed nowhere (a MachineOf cycle, or following a unit it
    Replaces)."""
    active_set = set(active)
    follows: dict[str, list[str]] = {}
    for name in active:
        targets = sorted({t for t in jobs[name].xfleet.machine_of if t in active_set})
        if targets:
            follows[name] = targets
    cycles: dict[str, str] = {}
    for component in _strongly_connected(active, follows):
        if len(component) > 1 or component[0] in follows.get(component[0], ()):
            members = set(component)
            for member in component:
                cycles[member] = "MachineOf cycle: " + _describe_cycle(member, members, follows)
    # A unit that follows (directly or through others) a unit it Replaces can run nowhere:
    # it must share that unit's machine and may not. Contradictory like a cycle, and so
    # placed nowhere, rather than beside the unit it replaces.
    for name in active:
        if name in cycles or not jobs[name].xfleet.replaces or name not in follows:
            continue
        seen, stack = set(), list(follows[name])
        while stack:
            target = stack.pop()
            if target in seen:
                continue
            seen.add(target)
            if target in jobs[name].xfleet.replaces:
                cycles[name] = f"follows {target} (MachineOf), which it Replaces"
                break
            stack.extend(follows.get(target, ()))

    rest = [name for name in active if name not in cycles]
    deps: dict[str, set[str]] = {name: set() for name in rest}
    hard: dict[str, int] = {}
    dependants: dict[str, list[tuple[str, bool]]] = {}
    for name in rest:
        for target in follows.get(name, ()):
            if target not in cycles and target != name:
                deps[name].add(target)
        hard[name] = len(deps[name])
        for replacer in state.replaced_by.get(name, ()):
            if replacer in deps and replacer != name:
                deps[name].add(replacer)
        for dep in deps[name]:
            is_hard = dep in follows.get(name, ())
            dependants.setdefault(dep, []).append((name, is_hard))
    pending = {name: len(d) for name, d in deps.items()}

    def key(name: str) -> tuple[bool, bool, str]:
        # A follower whose targets are placed goes before any other ready unit, so nothing
        # takes the room its leader was placed with (`ResourcesCheck` counts the group).
        return (jobs[name].xfleet.global_, name not in follows, name)

    heap = [key(name) for name in rest if pending[name] == 0]
    heapq.heapify(heap)
    done: set[str] = set()
    order: list[str] = sorted(cycles)
    while len(done) < len(rest):
        if not heap:
            # Only Replaces edges can form a cycle here: release the first unit whose
            # MachineOf targets are all placed.
            name = min((n for n in rest if n not in done and hard[n] == 0), key=key)
            heap.append(key(name))
        name = heapq.heappop(heap)[-1]
        if name in done:
            continue
        done.add(name)
        order.append(name)
        for dependant, is_hard in dependants.get(name, ()):
            if dependant in done:
                continue
            pending[dependant] -= 1
            if is_hard:
                hard[dependant] -= 1
            if pending[dependant] == 0:
                heapq.heappush(heap, key(dependant))
    return order, cycles


# -- one reconcile pass -------------------------------------------------------------------


@dataclass
class _Pass:
    """State and bookkeeping of one reconcile simulation."""

    state: WorkingState
    pipeline: Pipeline = PIPELINE
    unassign_reason: dict[tuple[str, str], str] = field(default_factory=dict)
    stale_reason: dict[tuple[str, str], str] = field(default_factory=dict)
    assign_reason: dict[tuple[str, str], str] = field(default_factory=dict)
    assign_order: list[tuple[str, str]] = field(default_factory=list)
    unplaced: set[str] = field(default_factory=set)

    def place(self, unit: str, machine_id: str, reason: str) -> None:
        self.state.place(unit, machine_id)
        if (unit, machine_id) not in self.assign_reason:
            self.assign_order.append((unit, machine_id))
        self.assign_reason[(unit, machine_id)] = reason

    def validate(self, job: JobView) -> bool:
        """Keep the feasible existing assignments of ``job`` (one for a non-global unit);
        return True if any assignment was dropped."""
        unit = job.name
        old = sorted(self.state.where(unit))
        for machine_id in old:
            self.state.lift(unit, machine_id)
        kept: str | None = None
        dropped = False
        for machine_id in old:
            if kept is not None and not job.xfleet.global_:
                self.unassign_reason[(unit, machine_id)] = f"duplicate assignment (kept on {kept})"
                dropped = True
                continue
            rejection = self.pipeline.first_rejection(self.state, job, machine_id)
            if rejection is None:
                self.state.place(unit, machine_id)
                kept = machine_id
            else:
                self.unassign_reason[(unit, machine_id)] = rejection[1]
                self.stale_reason[(unit, machine_id)] = rejection[0]
                dropped = True
        return dropped

    def settle(self, job: JobView) -> bool:
        """Keep ``job``'s feasible assignments, then place it where the pipeline chooses (a
        global unit: on every feasible machine); record it as unschedulable if it is nowhere.
        Return True if an assignment was dropped (which may free room for others)."""
        unit = job.name
        state = self.state
        dropped = self.validate(job) if state.where(unit) else False
        kept = set(state.where(unit))
        if not kept or job.xfleet.global_:
            for machine_id in self.pipeline.choose(state, job):
                if machine_id not in kept:
                    self.place(unit, machine_id, self.pipeline.reason(state, job, machine_id))
        if not state.where(unit):
            self.unplaced.add(unit)
        return dropped

    def unschedulable(self, job: JobView) -> Unschedulable:
        """Why ``job`` has no machine, judged on the pass's final schedule (so the reason is the
        same in the next pass once the decisions are applied)."""
        if not self.state.machine_ids:
            return Unschedulable(job.name, "no machine fits: no live machines")
        counts, phrases = self.pipeline.count_filtered(self.state, job)
        reason = "no machine fits: " + (", ".join(phrases) if phrases else "no feasible machine")
        return Unschedulable(job.name, reason, counts)


def _working_state(snapshot: ClusterSnapshot) -> WorkingState:
    return WorkingState.build(snapshot.machines, snapshot.jobs, snapshot.schedule,
                              snapshot.departed, snapshot.held, snapshot.draining,
                              snapshot.moving)


def _simulate(snapshot: ClusterSnapshot, pipeline: Pipeline) -> _Pass:
    """Run one reconcile pass over a private working copy of ``snapshot``'s schedule."""
    jobs = snapshot.jobs
    state = _working_state(snapshot)
    run = _Pass(state, pipeline)
    for unit in sorted(snapshot.schedule):
        job = jobs.get(unit)
        for machine_id in sorted(snapshot.schedule[unit]):
            if job is None:
                reason = "unit destroyed"
            elif job.target_state == "inactive":
                reason = "target state inactive"
            elif machine_id not in snapshot.machines:
                reason = f"machine {machine_id} lease expired"
            else:
                survivors = run.pipeline.feasible(state, job, {machine_id}, INTRINSIC)
                if survivors is None or machine_id in survivors:
                    state.place(unit, machine_id)
                    continue
                rejection = run.pipeline.first_rejection(state, job, machine_id)
                reason = rejection[1] if rejection else "infeasible"
            run.unassign_reason[(unit, machine_id)] = reason

    active = sorted(name for name, job in jobs.items() if job.target_state != "inactive")
    order, cycles = _processing_order(active, jobs, state)
    state.cycles = cycles
    for unit in order:
        if state.where(unit):
            run.validate(jobs[unit])
    for _ in range(_MAX_ROUNDS):
        run.unplaced = set()
        dropped = False
        for unit in order:
            dropped |= run.settle(jobs[unit])
        if not dropped:
            break
    return run


def reconcile(snapshot: ClusterSnapshot, pipeline: Pipeline = PIPELINE) -> list[Decision]:
    """Decisions that move the schedule toward the desired state; applying them and calling again
    yields only Unschedulable decisions (idempotent, converges in one pass).

    Order: every Unassign (by unit, machine), then every Assign (targets before followers), then
    every Unschedulable (by unit). Only net changes are emitted.
    """
    run = _simulate(snapshot, pipeline)
    final = run.state.sched
    decisions: list[Decision] = []
    for unit in sorted(snapshot.schedule):
        now = final.get(unit, set())
        for machine_id in sorted(snapshot.schedule[unit]):
            if machine_id not in now:
                reason = run.unassign_reason.get((unit, machine_id), "rescheduled")
                check = run.stale_reason.get((unit, machine_id))
                if check == "MachineOf" and unit in snapshot.jobs:
                    # A follower dropped while its target was between machines: say where the
                    # target ended up rather than that it was briefly unscheduled.
                    job = snapshot.jobs[unit]
                    reason = _CHECKS[check].detail(run.state, job, machine_id)
                decisions.append(Unassign(unit, machine_id, reason))
    for unit, machine_id in run.assign_order:
        if machine_id in final.get(unit, ()) and machine_id not in snapshot.schedule.get(
            unit, frozenset()
        ):
            decisions.append(Assign(unit, machine_id, run.assign_reason[(unit, machine_id)]))
    decisions.extend(run.unschedulable(snapshot.jobs[unit]) for unit in sorted(run.unplaced))
    return decisions


def place_new(
    snapshot: ClusterSnapshot,
    units: Iterable[str],
    pipeline: Pipeline = PIPELINE,
    *,
    state: WorkingState | None = None,
    followers: Mapping[str, Iterable[str]] | None = None,
) -> list[Decision] | None:
    """The engine's fast path: place only ``units`` (and the MachineOf followers waiting for
    them), taking every other assignment as it stands, in O(cluster) instead of a full pass.

    The same pipeline, order and reasons as `reconcile`: the decisions are those a full pass
    makes for these units when the rest of the schedule is settled (Assigns in processing
    order, then Unschedulables by unit). Returns None when any of them needs the full
    `reconcile` (global, Replaces on either side, already assigned, not wanted, a MachineOf
    cycle); the engine still runs `reconcile` later, which keeps these placements.

    ``state`` (the engine's `fleetd.engine.standing.StandingSchedule`): a working state that
    already holds ``snapshot``'s schedule, used instead of building one (it gets the new
    placements); ``followers``: MachineOf target -> the jobs that follow it, for the same
    snapshot. Both only spare the O(cluster) setup; the decisions are the same."""
    jobs = snapshot.jobs

    def simple(name: str) -> bool:
        job = jobs.get(name)
        return (job is not None and job.target_state != "inactive" and not job.xfleet.global_
                and not job.xfleet.replaces and not snapshot.schedule.get(name))

    todo = sorted(set(units))
    if not all(simple(name) for name in todo):
        return None
    if not todo:
        return []
    prebuilt = state is not None
    if state is None:
        state = _working_state(snapshot)
    if followers is None:
        following: dict[str, list[str]] = {}
        for name, job in jobs.items():
            for target in job.xfleet.machine_of:
                following.setdefault(target, []).append(name)
        followers = following
    chosen = set(todo)
    frontier = list(todo)
    while frontier:
        for follower in followers.get(frontier.pop(), ()):
            if follower not in chosen and simple(follower):
                chosen.add(follower)
                frontier.append(follower)
    if any(name in state.replaced_by or _in_machine_of_cycle(jobs, name) for name in chosen):
        return None
    if not prebuilt:
        state.place_all(snapshot.schedule)
    run = _Pass(state, pipeline)
    order, _ = _processing_order(sorted(chosen), jobs, state)
    for name in order:
        run.settle(jobs[name])
    decisions: list[Decision] = [
        Assign(unit, machine_id, run.assign_reason[(unit, machine_id)])
        for unit, machine_id in run.assign_order
    ]
    decisions.extend(run.unschedulable(jobs[unit]) for unit in sorted(run.unplaced))
    return decisions


def _in_machine_of_cycle(jobs: Mapping[str, JobView], start: str) -> bool:
    """True if following MachineOf targets from ``start`` leads back to it."""
    seen: set[str] = set()
    stack = [start]
    while stack:
        job = jobs.get(stack.pop())
        if job is None:
            continue
        for target in job.xfleet.machine_of:
            if target == start:
                return True
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return False


def explain(snapshot: ClusterSnapshot, unit: str, pipeline: Pipeline = PIPELINE) -> Explanation:
    """Why ``unit`` is (not) placed: per machine, the first check that rejected it, and the
    ranking of the machines that pass every check.

    Evaluated against the schedule `reconcile` would produce (equal to the snapshot's once it
    has converged) with ``unit`` lifted from it; ``scheduled_on`` is the unit's place in that
    schedule. A unit not in the registry gets an empty explanation.
    """
    job = snapshot.jobs.get(unit)
    if job is None:
        return Explanation(unit, (), (), ())
    run = _simulate(snapshot, pipeline)
    state = run.state
    scheduled_on = tuple(sorted(state.where(unit)))
    for machine_id in scheduled_on:
        state.lift(unit, machine_id)
    rejected: list[tuple[str, str, str]] = []
    fits: list[str] = []
    for machine_id in state.machine_ids:
        rejection = pipeline.first_rejection(state, job, machine_id)
        if rejection is None:
            fits.append(machine_id)
        else:
            rejected.append((machine_id, rejection[0], rejection[1]))
    scores = tuple((s.machine_id, s.score, s.detail) for s in pipeline.rank(state, job, fits))
    return Explanation(unit, scheduled_on, tuple(rejected), tuple(fits), scores)


# -- synthetic clusters (benchmarks, timing) ------------------------------------------------


def synthetic_snapshot(machines: int, units: int, seed: int = 0) -> ClusterSnapshot:
    """A deterministic random cluster of ``machines`` live machines and ``units`` units with a
    realistic mix of options and a partly stale schedule (some dead machines, destroyed units)."""
    rng = random.Random(seed)
    regions = ("us", "eu", "ap")
    machine_views = {
        f"m{i:05d}": MachineView(
            f"m{i:05d}", {"region": rng.choice(regions), "disk": rng.choice(("ssd", "hdd"))}
        )
        for i in range(machines)
    }
    ids = sorted(machine_views)
    jobs: dict[str, JobView] = {}
    names: list[str] = []
    for i in range(units):
        roll = rng.random()
        family = f"svc{i % 97}"
        name = f"{family}@{i}.service"
        xfleet = XFleet()
        if roll < 0.05:
            xfleet = XFleet(metadata=(("region", (rng.choice(regions),)),))
        elif roll < 0.08 and names:
            xfleet = XFleet(machine_of=(rng.choice(names),))
        elif roll < 0.11:
            xfleet = XFleet(conflicts=(f"{family}@*.service",))
        elif roll < 0.12 and ids:
            xfleet = XFleet(machine_id=rng.choice(ids))
        elif roll < 0.125:
            name = f"global{i}.service"
            xfleet = XFleet(global_=True, metadata=(("disk", ("ssd",)),))
        state: TargetState = "launched" if rng.random() < 0.9 else "inactive"
        jobs[name] = JobView(name, state, xfleet)
        names.append(name)
    schedule: dict[str, frozenset[str]] = {}
    for name in names[: units // 2]:
        if ids and not jobs[name].xfleet.global_:
            target = rng.choice(ids) if rng.random() < 0.95 else "dead-machine"
            schedule[name] = frozenset({target})
    for i in range(units // 100):
        schedule[f"destroyed{i}.service"] = frozenset({rng.choice(ids) if ids else "dead"})
    return ClusterSnapshot(machine_views, jobs, schedule)


def _time_reconcile(machines: int = 1000, units: int = 10_000) -> None:
    """Print how long `reconcile` takes on a synthetic cluster (not an assertion)."""
    import time

    snapshot = synthetic_snapshot(machines, units)
    start = time.perf_counter()
    decisions = reconcile(snapshot)
    elapsed = time.perf_counter() - start
    print(
        f"reconcile {units} units / {machines} machines: {elapsed:.2f}s, {len(decisions)} decisions"
    )


if __name__ == "__main__":
    _time_reconcile()
