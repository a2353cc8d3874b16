"""Working schedule and feasibility checks used by `fleetd.engine.scheduler` (pure, no I/O).

Each check is a small object with a ``name``; `CHECKS` lists them in order and
`fleetd.engine._placement.Pipeline` composes them with the rankers (the style of Nomad's
feasibility checkers).
Checks work on *sets* of machine ids so that placing one unit costs a few set operations rather
than a loop over machines x hosted units.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from fleetd.unit import glob_match
from fleetd.unit.resources import format_cpu, format_memory

if TYPE_CHECKING:
    from fleetd.engine.scheduler import JobView, MachineView
    from fleetd.unit import XFleet

_GLOB_META = frozenset("*?[\\")

Candidates = set[str] | None
"""A set of machine ids, or None meaning "every live machine" (saves copying the full set)."""


def _literal_prefix(pattern: str) -> tuple[str, bool]:
    """(Part of ``pattern`` before its first glob metacharacter, whether it is all literal)."""
    for index, char in enumerate(pattern):
        if char in _GLOB_META:
            return pattern[:index], False
    return pattern, True


def match_names(
    patterns: Iterable[str],
    names: Sequence[str],
    name_set: frozenset[str],
    matches: Callable[[str], bool],
) -> frozenset[str]:
    """Names in ``names`` (sorted) that ``matches`` accepts, probing only names that share a
    pattern's literal prefix; a literal pattern is a plain membership test."""
    found: set[str] = set()
    for pattern in patterns:
        prefix, literal = _literal_prefix(pattern)
        if literal:
            if pattern in name_set and matches(pattern):
                found.add(pattern)
            continue
        index = bisect_left(names, prefix)
        while index < len(names) and names[index].startswith(prefix):
            if matches(names[index]):
                found.add(names[index])
            index += 1
    return frozenset(found)


def _replaces_matcher(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    """Predicate: does a unit name match one of the Replaces ``patterns`` (path.Match globs)."""

    def matches(name: str) -> bool:
        return any(glob_match(pattern, name) for pattern in patterns)

    return matches


def _bump(counter: dict[str, int], key: str, delta: int) -> None:
    """Add ``delta`` to ``counter[key]``, deleting the key when it reaches zero."""
    value = counter.get(key, 0) + delta
    if value:
        counter[key] = value
    else:
        counter.pop(key, None)


@dataclass
class WorkingState:
    """The schedule as it evolves during one reconcile pass, with the indexes checks need.

    Contract: `place`/`lift` are the only mutators and keep every index consistent.
    """

    machines: Mapping[str, MachineView]
    jobs: Mapping[str, JobView]
    machine_ids: tuple[str, ...] = ()
    sched: dict[str, set[str]] = field(default_factory=dict)
    hosted: dict[str, set[str]] = field(default_factory=dict)
    order: list[tuple[int, str]] = field(default_factory=list)
    cycles: dict[str, str] = field(default_factory=dict)
    group_of: dict[str, tuple[str, ...]] = field(default_factory=dict)
    group_matches: dict[tuple[str, ...], frozenset[str]] = field(default_factory=dict)
    groups_matching: dict[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)
    hits: dict[tuple[str, ...], dict[str, int]] = field(default_factory=dict)
    holders: dict[tuple[str, ...], dict[str, int]] = field(default_factory=dict)
    replaces_of: dict[str, frozenset[str]] = field(default_factory=dict)
    replaced_by: dict[str, frozenset[str]] = field(default_factory=dict)
    rivals: dict[str, frozenset[str]] = field(default_factory=dict)
    # The snapshot's schedule as it was before the pass, machines in their grace and the units
    # they had (see `DepartedCheck`, `HeldCheck`).
    initial: Mapping[str, frozenset[str]] = field(default_factory=dict)
    departed: frozenset[str] = frozenset()
    held: frozenset[str] = frozenset()
    open_machines: set[str] = field(default_factory=set)  # live minus departed (shared)
    draining: frozenset[str] = frozenset()  # machines being drained (see `DrainingCheck`)
    _meta_cache: dict[tuple[tuple[str, tuple[str, ...]], ...], frozenset[str]] = field(
        default_factory=dict
    )
    # -- resources: reserved (milli-CPUs, bytes) per machine by the units placed there, and
    # how many placements reserve anything (0: ranking is fleet's plain unit count) --
    reserved: dict[str, tuple[int, int]] = field(default_factory=dict)
    reserving: int = 0
    # A MachineOf leader's transitive followers that reserve anything (unit -> followers):
    # a machine it is not on yet must have room for them too (`ResourcesCheck`).
    followers_reserving: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # -- end resources --
    # The copies to come of units being moved (machine -> units): a make-before-break move's
    # new copy, invisible to the scheduler (`fleetd.engine.moves.visible_schedule`), and a
    # stop-first move's target. They occupy their machine for the Conflicts and Resources
    # checks until the move ends (`fleetd.engine.moves.reserved_copies`).
    shadows: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        machines: Mapping[str, MachineView],
        jobs: Mapping[str, JobView],
        initial: Mapping[str, frozenset[str]] | None = None,
        departed: frozenset[str] = frozenset(),
        held: frozenset[str] = frozenset(),
        draining: frozenset[str] = frozenset(),
        moving: Mapping[str, frozenset[str]] | None = None,
    ) -> WorkingState:
        """An empty working schedule over live ``machines`` with conflict/replace indexes;
        ``initial`` is the schedule before the pass (what departed machines may keep);
        ``moving`` the hidden new copies of moving units (unit -> machines)."""
        state = cls(machines=machines, jobs=jobs, machine_ids=tuple(sorted(machines)),
                    initial=initial or {}, departed=departed, held=held,
                    draining=draining)
        state.open_machines = set(state.machine_ids).difference(departed)
        state.hosted = {mid: set() for mid in state.machine_ids}
        state.order = [(0, mid) for mid in state.machine_ids]
        names = sorted(jobs)
        name_set = frozenset(names)
        groups_matching: dict[str, list[tuple[str, ...]]] = {}
        for name in names:
            xfleet = jobs[name].xfleet
            if xfleet.conflicts:
                group = xfleet.conflicts
                state.group_of[name] = group
                if group not in state.group_matches:
                    matched = match_names(group, names, name_set, xfleet.conflicts_with)
                    state.group_matches[group] = matched
                    state.hits[group] = {}
                    state.holders[group] = {}
                    for other in matched:
                        groups_matching.setdefault(other, []).append(group)
        state.groups_matching = {name: tuple(gs) for name, gs in groups_matching.items()}
        replaces: dict[str, frozenset[str]] = {}
        for name in names:
            patterns = jobs[name].xfleet.replaces
            if patterns:
                matched = match_names(patterns, names, name_set, _replaces_matcher(patterns))
                replaces[name] = matched - {name}
        replaced_by: dict[str, set[str]] = {}
        for name, targets in replaces.items():
            # Units that Replace each other would evict each other forever; as in fleet, only
            # one of them runs (the one already placed; else the first placed in the pass).
            rivals = frozenset(t for t in targets if name in replaces.get(t, ()))
            if rivals:
                state.rivals[name] = rivals
            effective = targets - rivals
            if effective:
                state.replaces_of[name] = effective
                for target in effective:
                    replaced_by.setdefault(target, set()).add(name)
        state.replaced_by = {name: frozenset(rs) for name, rs in replaced_by.items()}
        state._index_followers(names)
        for unit, where in (moving or {}).items():
            for machine_id in where:
                state._shadow(unit, machine_id)
        return state

    def _index_followers(self, names: Sequence[str]) -> None:
        """`followers_reserving`: for each non-global MachineOf target, its wanted transitive
        followers that reserve CPU or memory (cycles are cut: a unit never follows itself). A
        global unit has no group: its followers need only one of its machines."""
        jobs = self.jobs
        direct: dict[str, list[str]] = {}
        for name in names:
            job = jobs[name]
            if job.xfleet.machine_of and job.target_state != "inactive":
                for target in job.xfleet.machine_of:
                    direct.setdefault(target, []).append(name)
        if not direct:
            return
        for target in direct:
            if target not in jobs or jobs[target].xfleet.global_:
                continue
            seen: set[str] = set()
            stack = list(direct[target])
            while stack:
                follower = stack.pop()
                if follower in seen or follower == target:
                    continue
                seen.add(follower)
                stack.extend(direct.get(follower, ()))
            reserving = tuple(sorted(f for f in seen
                                     if jobs[f].xfleet.cpu or jobs[f].xfleet.memory))
            if reserving:
                self.followers_reserving[target] = reserving

    def _shadow(self, unit: str, machine_id: str, sign: int = 1) -> None:
        """Count (``sign`` 1) or stop counting (-1) a moving unit's copy to come on
        ``machine_id`` (live) for Conflicts and Resources; it is in no unit's schedule and
        no machine's load."""
        if unit not in self.jobs or machine_id not in self.hosted:
            return
        here = self.shadows.setdefault(machine_id, set())
        if (unit in here) == (sign > 0):
            return
        if sign > 0:
            here.add(unit)
        else:
            here.discard(unit)
        self._reserve(unit, machine_id, sign)
        for group in self.groups_matching.get(unit, ()):
            _bump(self.hits[group], machine_id, sign)
        own = self.group_of.get(unit)
        if own:
            _bump(self.holders[own], machine_id, sign)

    def unshadow(self, unit: str, machine_id: str) -> None:
        """Stop counting ``unit``'s copy to come on ``machine_id`` (it is being placed)."""
        self._shadow(unit, machine_id, -1)

    # -- mutation -------------------------------------------------------------------------
    def _set_load(self, machine_id: str, old: int, new: int) -> None:
        index = bisect_left(self.order, (old, machine_id))
        del self.order[index]
        insort(self.order, (new, machine_id))

    def place(self, unit: str, machine_id: str) -> None:
        """Assign ``unit`` to live ``machine_id`` in the working schedule (no-op if already)."""
        hosted = self.hosted[machine_id]
        if unit in hosted:
            return
        self._set_load(machine_id, len(hosted), len(hosted) + 1)
        hosted.add(unit)
        self.sched.setdefault(unit, set()).add(machine_id)
        self._reserve(unit, machine_id, 1)  # resources
        for group in self.groups_matching.get(unit, ()):
            _bump(self.hits[group], machine_id, 1)
        own = self.group_of.get(unit)
        if own:
            _bump(self.holders[own], machine_id, 1)

    def place_all(self, schedule: Mapping[str, Iterable[str]]) -> None:
        """Bulk `place` of a whole schedule (assignments to dead machines or unknown units are
        skipped); the load order is rebuilt once instead of per placement."""
        groups_matching, group_of, hosted_by = self.groups_matching, self.group_of, self.hosted
        for unit, machine_ids in schedule.items():
            if unit not in self.jobs:
                continue
            own = group_of.get(unit)
            groups = groups_matching.get(unit, ())
            for machine_id in machine_ids:
                hosted = hosted_by.get(machine_id)
                if hosted is None or unit in hosted:
                    continue
                hosted.add(unit)
                self.sched.setdefault(unit, set()).add(machine_id)
                self._reserve(unit, machine_id, 1)  # resources
                for group in groups:
                    _bump(self.hits[group], machine_id, 1)
                if own:
                    _bump(self.holders[own], machine_id, 1)
        self.order = sorted((len(hosted_by[mid]), mid) for mid in self.machine_ids)

    def lift(self, unit: str, machine_id: str) -> None:
        """Remove ``unit`` from ``machine_id`` in the working schedule (no-op if absent)."""
        hosted = self.hosted[machine_id]
        if unit not in hosted:
            return
        self._set_load(machine_id, len(hosted), len(hosted) - 1)
        hosted.discard(unit)
        self._reserve(unit, machine_id, -1)  # resources
        where = self.sched[unit]
        where.discard(machine_id)
        if not where:
            del self.sched[unit]
        for group in self.groups_matching.get(unit, ()):
            _bump(self.hits[group], machine_id, -1)
        own = self.group_of.get(unit)
        if own:
            _bump(self.holders[own], machine_id, -1)

    # -- resources ----------------------------------------------------------------------
    def _reserve(self, unit: str, machine_id: str, sign: int) -> None:
        job = self.jobs.get(unit)
        if job is None:
            return
        cpu, memory = job.xfleet.cpu, job.xfleet.memory
        if not cpu and not memory:
            return
        used_cpu, used_memory = self.reserved.get(machine_id, (0, 0))
        left = (used_cpu + sign * cpu, used_memory + sign * memory)
        if left == (0, 0):
            self.reserved.pop(machine_id, None)  # as a fresh build has it: no entry
        else:
            self.reserved[machine_id] = left
        self.reserving += sign

    def group_need(self, job: JobView, machine_id: str) -> tuple[int, int, tuple[str, ...]]:
        """(milli-CPUs, bytes, followers) ``job``'s MachineOf followers would add on
        ``machine_id`` beside it: those not placed there yet. Nothing for a machine ``job``
        was on before the pass: a kept leader is never evicted for its sidekicks."""
        followers = self.followers_reserving.get(job.name)
        if not followers or machine_id in self.initial.get(job.name, ()):
            return 0, 0, ()
        hosted = self.hosted[machine_id]
        cpu = memory = 0
        counted = []
        for name in followers:
            if name not in hosted:
                x = self.jobs[name].xfleet
                cpu += x.cpu
                memory += x.memory
                counted.append(name)
        return cpu, memory, tuple(counted)

    def used(self, machine_id: str) -> tuple[int, int]:
        """(milli-CPUs, bytes) reserved on ``machine_id`` by the units placed there."""
        return self.reserved.get(machine_id, (0, 0))

    def share(self, machine_id: str, cpu: int = 0, memory: int = 0) -> float:
        """The larger of the reserved CPU and memory shares of ``machine_id`` (in [0, 1] when
        capacity holds) once ``cpu``/``memory`` more are reserved; 0 for a resource the
        machine does not publish."""
        view = self.machines[machine_id]
        used_cpu, used_memory = self.reserved.get(machine_id, (0, 0))
        share = 0.0
        if view.cpu > 0:
            share = (used_cpu + cpu) / view.cpu
        if view.memory > 0:
            share = max(share, (used_memory + memory) / view.memory)
        return share
    # -- end resources --

    # -- queries --------------------------------------------------------------------------
    def load(self, machine_id: str) -> int:
        """Number of units (globals included) on ``machine_id`` in the working schedule."""
        return len(self.hosted[machine_id])

    def where(self, unit: str) -> set[str]:
        """Machines ``unit`` is assigned to in the working schedule (empty set if none)."""
        return self.sched.get(unit, set())

    def metadata_machines(self, xfleet: XFleet) -> frozenset[str]:
        """Live machines whose metadata satisfies ``xfleet.metadata`` (cached per requirement)."""
        key = xfleet.metadata
        cached = self._meta_cache.get(key)
        if cached is None:
            cached = frozenset(
                mid
                for mid in self.machine_ids
                if xfleet.metadata_matches(self.machines[mid].metadata)
            )
            self._meta_cache[key] = cached
        return cached

    def conflict_between(self, unit: str, other: str) -> bool:
        """True if ``unit`` and ``other`` conflict in either direction (never with itself)."""
        if unit == other:
            return False
        own = self.group_of.get(unit)
        if own and other in self.group_matches[own]:
            return True
        theirs = self.group_of.get(other)
        return bool(theirs) and unit in self.group_matches[theirs]  # type: ignore[index]

    def conflicting_hosted(self, unit: str, machine_id: str) -> list[str]:
        """Sorted units on ``machine_id`` conflicting with ``unit``, minus units it replaces."""
        ignore = self.replaces_of.get(unit, frozenset())
        return sorted(
            other
            for other in self.hosted[machine_id] | self.shadows.get(machine_id, set())
            if other not in ignore and self.conflict_between(unit, other)
        )

    def best(self, candidates: Candidates) -> str | None:
        """The least-loaded machine among ``candidates`` (ties by id), or None if there is none."""
        if candidates is None:
            return self.order[0][1] if self.order else None
        if not candidates:
            return None
        if len(candidates) * 8 < len(self.order):
            return min(candidates, key=lambda mid: (len(self.hosted[mid]), mid))
        for _, mid in self.order:
            if mid in candidates:
                return mid
        return None


def _narrow(state: WorkingState, candidates: Candidates, allowed: Iterable[str]) -> set[str]:
    if candidates is None:
        return set(allowed)
    return candidates.intersection(allowed)


def _drop(state: WorkingState, candidates: Candidates, blocked: set[str]) -> Candidates:
    if not blocked:
        return candidates
    if candidates is None:
        return set(state.machine_ids).difference(blocked)
    return candidates.difference(blocked)


class Check:
    """One feasibility rule. Contract: ``filter`` keeps exactly the machines ``detail`` accepts,
    and never modifies ``candidates`` (it may return a set shared with the working state)."""

    name: ClassVar[str] = ""

    def filter(self, state: WorkingState, job: JobView, candidates: Candidates) -> Candidates:
        """The subset of ``candidates`` this check allows for ``job`` (None stays None if all)."""
        raise NotImplementedError

    def detail(self, state: WorkingState, job: JobView, machine_id: str) -> str:
        """One human line saying why ``machine_id`` is rejected for ``job``."""
        raise NotImplementedError

    def summary(self, state: WorkingState, job: JobView, removed: set[str]) -> str:
        """Short parenthetical for an Unschedulable reason ('' for none)."""
        return ""


class MachineIDCheck(Check):
    """X-Fleet MachineID: only the named machine."""

    name = "MachineID"

    def filter(self, state: WorkingState, job: JobView, candidates: Candidates) -> Candidates:
        wanted = job.xfleet.machine_id
        if not wanted:
            return candidates
        return _narrow(state, candidates, (wanted,) if wanted in state.machines else ())

    def detail(self, state: WorkingState, job: JobView, machine_id: str) -> str:
        wanted = job.xfleet.machine_id
        alive = "" if wanted in state.machines else ", which is not live"
        return f"MachineID requires {wanted}{alive}"

    def summary(self, state: WorkingState, job: JobView, removed: set[str]) -> str:
        wanted = job.xfleet.machine_id
        return f"requires {wanted}" + ("" if wanted in state.machines else ", not live")


def format_metadata(metadata: Iterable[tuple[str, tuple[str, ...]]]) -> str:
    """'key=a|b, other=c' rendering of an X-Fleet metadata requirement."""
    return ", ".join(f"{key}={'|'.join(values)}" for key, values in metadata)


class MachineMetadataCheck(Check):
    """X-Fleet MachineMetadata: AND across keys, OR across a key's values."""

    name = "MachineMetadata"

    def filter(self, state: WorkingState, job: JobView, candidates: Candidates) -> Candidates:
        if not job.xfleet.metadata:
            return candidates
        allowed = state.metadata_machines(job.xfleet)
        if candidates is None:
            return set(allowed)
        return candidates.intersection(allowed)

    def detail(self, state: WorkingState, job: JobView, machine_id: str) -> str:
        return f"metadata of {machine_id} does not match {format_metadata(job.xfleet.metadata)}"

    def summary(self, state: WorkingState, job: JobView, removed: set[str]) -> str:
        return format_metadata(job.xfleet.metadata)


class MachineOfCheck(Check):
    """X-Fleet MachineOf: only machines where every target is assigned in the working schedule."""

    name = "MachineOf"

    def filter(self, state: WorkingState, job: JobView, candidates: Candidates) -> Candidates:
        targets = job.xfleet.machine_of
        if not targets:
            return candidates
        if job.name in state.cycles:
            return set()
        allowed: set[str] | None = None
        for target in targets:
            where = state.where(target) if target in state.jobs else set()
            allowed = set(where) if allowed is None else allowed & where
            if not allowed:
                return set()
        assert allowed is not None
        return _narrow(state, candidates, allowed)

    def _why(self, state: WorkingState, job: JobView, machine_id: str | None) -> str:
        if job.name in state.cycles:
            return state.cycles[job.name]
        for target in job.xfleet.machine_of:
            if target not in state.jobs:
                return f"follows {target}, which does not exist"
            where = state.where(target)
            if not where:
                return f"follows {target}, which is not scheduled"
            if machine_id is not None and machine_id not in where:
                return f"follows {target} on {', '.join(sorted(where))}"
        placed = (f"{t} on {', '.join(sorted(state.where(t)))}" for t in job.xfleet.machine_of)
        return "follows " + ", ".join(placed)

    def detail(self, state: WorkingState, job: JobView, machine_id: str) -> str:
        return self._why(state, job, machine_id)

    def summary(self, state: WorkingState, job: JobView, removed: set[str]) -> str:
        return self._why(state, job, None)


class ConflictsCheck(Check):
    """X-Fleet Conflicts, both directions; a unit ignores the units it Replaces."""

    name = "Conflicts"

    def filter(self, state: WorkingState, job: JobView, candidates: Candidates) -> Candidates:
        unit = job.name
        own = state.group_of.get(unit)
        others = state.groups_matching.get(unit, ())
        if not own and not others:
            return candidates
        if candidates is not None and not candidates:
            return candidates
        ignore = state.replaces_of.get(unit)
        if ignore and any(t in state.sched for t in ignore):
            pool = state.machine_ids if candidates is None else sorted(candidates)
            return {mid for mid in pool if not state.conflicting_hosted(unit, mid)}
        blocked: set[str] = set()
        if own:
            blocked.update(state.hits[own])
        for group in others:
            blocked.update(state.holders[group])
        return _drop(state, candidates, blocked)

    def detail(self, state: WorkingState, job: JobView, machine_id: str) -> str:
        hits = state.conflicting_hosted(job.name, machine_id)
        return f"conflicts with {hits[0] if hits else '?'} on {machine_id}"

    def summary(self, state: WorkingState, job: JobView, removed: set[str]) -> str:
        if job.xfleet.conflicts:
            return ", ".join(job.xfleet.conflicts)
        blockers = sorted({u for mid in removed for u in state.conflicting_hosted(job.name, mid)})
        more = ", ..." if len(blockers) > 3 else ""
        return "conflicted by " + ", ".join(blockers[:3]) + more


class ReplacesCheck(Check):
    """X-Fleet Replaces, seen from the replaced unit: it may not stay where a replacer is; of
    units that Replace each other (rivals), none may run anywhere once one is placed."""

    name = "Replaces"

    def filter(self, state: WorkingState, job: JobView, candidates: Candidates) -> Candidates:
        if self._placed_rivals(state, job):
            return set()
        replacers = state.replaced_by.get(job.name)
        if not replacers:
            return candidates
        blocked: set[str] = set()
        for replacer in replacers:
            blocked.update(state.where(replacer))
        return _drop(state, candidates, blocked)

    @staticmethod
    def _placed_rivals(state: WorkingState, job: JobView) -> list[str]:
        return sorted(r for r in state.rivals.get(job.name, ()) if state.where(r))

    @staticmethod
    def _rivals_phrase(rivals: list[str]) -> str:
        return f"replaced by {', '.join(rivals)}, which it Replaces too: only one of them runs"

    def _replacers_on(self, state: WorkingState, job: JobView, machine_ids: set[str]) -> list[str]:
        return sorted(
            r for r in state.replaced_by.get(job.name, ()) if state.where(r) & machine_ids
        )

    def detail(self, state: WorkingState, job: JobView, machine_id: str) -> str:
        rivals = self._placed_rivals(state, job)
        if rivals:
            return self._rivals_phrase(rivals)
        found = self._replacers_on(state, job, {machine_id})
        return f"replaced by {found[0] if found else '?'}"

    def summary(self, state: WorkingState, job: JobView, removed: set[str]) -> str:
        rivals = self._placed_rivals(state, job)
        if rivals:
            return self._rivals_phrase(rivals)
        return "replaced by " + ", ".join(self._replacers_on(state, job, removed))


class DepartedCheck(Check):
    """A machine whose key is gone but which is in its grace (it may still run what it had)
    keeps the units it had and gets no new ones."""

    name = "Departed"

    def filter(self, state: WorkingState, job: JobView, candidates: Candidates) -> Candidates:
        if not state.departed:
            return candidates
        had = state.initial.get(job.name, frozenset())
        if candidates is None and not had & state.departed:
            return state.open_machines  # the common case, without a copy per unit
        return _drop(state, candidates, {mid for mid in state.departed if mid not in had})

    def detail(self, state: WorkingState, job: JobView, machine_id: str) -> str:
        return f"{machine_id} left the cluster: in its grace it gets no new units"

    def summary(self, state: WorkingState, job: JobView, removed: set[str]) -> str:
        return "left the cluster, in their grace"


class HeldCheck(Check):
    """A non-global unit a departed machine had may still run there until that machine's grace
    is over: meanwhile it is placed nowhere else (global units run everywhere anyway)."""

    name = "Held"

    def filter(self, state: WorkingState, job: JobView, candidates: Candidates) -> Candidates:
        if job.name not in state.held or job.xfleet.global_:
            return candidates
        had = state.initial.get(job.name, frozenset())
        return _narrow(state, candidates, [mid for mid in had if mid in state.machines])

    def detail(self, state: WorkingState, job: JobView, machine_id: str) -> str:
        return ("may still run on a machine that left the cluster: placed nowhere else until "
                "that machine's grace is over")

    def summary(self, state: WorkingState, job: JobView, removed: set[str]) -> str:
        return "may still run on a machine in its grace"


class DrainingCheck(Check):
    """A draining machine (`fleetctl drain`) gets no new unit; what it runs stays until the
    drain moves it (`fleetd.engine.moves`), so the check never unassigns by itself."""

    name = "Draining"

    def filter(self, state: WorkingState, job: JobView, candidates: Candidates) -> Candidates:
        if not state.draining:
            return candidates
        had = state.initial.get(job.name, frozenset())
        return _drop(state, candidates, {mid for mid in state.draining if mid not in had})

    def detail(self, state: WorkingState, job: JobView, machine_id: str) -> str:
        return f"{machine_id} is draining: it gets no new units (fleetctl undrain to end it)"

    def summary(self, state: WorkingState, job: JobView, removed: set[str]) -> str:
        return "draining"


# -- resources ----------------------------------------------------------------------------


def _shortfall(state: WorkingState, job: JobView, machine_id: str) -> str:
    """'' if ``job``'s demand (with its MachineOf followers not yet there) fits on
    ``machine_id`` beside what is reserved there, else what is short ('needs 512M memory,
    m2 has 300M free of 1G')."""
    xfleet = job.xfleet
    view = state.machines[machine_id]
    used_cpu, used_memory = state.used(machine_id)
    if job.name in state.hosted.get(machine_id, ()):  # its own demand is counted already
        used_cpu, used_memory = used_cpu - xfleet.cpu, used_memory - xfleet.memory
    more_cpu, more_memory, followers = state.group_need(job, machine_id)
    cpu, memory = xfleet.cpu + more_cpu, xfleet.memory + more_memory
    with_them = (" with its MachineOf followers (" + ", ".join(followers) + ")"
                 if followers else "")
    if memory and view.memory > 0 and used_memory + memory > view.memory:
        free = max(0, view.memory - used_memory)
        return (f"needs {format_memory(memory)} memory{with_them}, {machine_id} has "
                f"{format_memory(free)} free of {format_memory(view.memory)}")
    if cpu and view.cpu > 0 and used_cpu + cpu > view.cpu:
        free = max(0, view.cpu - used_cpu)
        return (f"needs {format_cpu(cpu)} CPU{with_them}, {machine_id} has "
                f"{format_cpu(free)} free of {format_cpu(view.cpu)}")
    return ""


class ResourcesCheck(Check):
    """The unit's reserved CPU and memory must fit in what the machine can give units
    (capacity minus its host reserve) beside the reservations of the units placed there
    (hidden new copies of moving units included). A MachineOf leader needs room for its
    followers too (transitively, those not there yet) on a machine it was not on, so a
    group is placed only where all of it fits. A machine that publishes no capacity for a
    resource is not limited in it."""

    name = "Resources"

    def filter(self, state: WorkingState, job: JobView, candidates: Candidates) -> Candidates:
        own_cpu, own_memory = job.xfleet.cpu, job.xfleet.memory
        group = job.name in state.followers_reserving
        if not own_cpu and not own_memory and not group:
            return candidates
        pool = state.machine_ids if candidates is None else candidates
        machines, reserved, hosted = state.machines, state.reserved, state.hosted
        blocked: set[str] = set()
        cpu, memory = own_cpu, own_memory
        for mid in pool:  # (inlined `_shortfall`: this runs per machine per demanding unit)
            view = machines[mid]
            used_cpu, used_memory = reserved.get(mid, (0, 0))
            if job.name in hosted[mid]:
                used_cpu, used_memory = used_cpu - own_cpu, used_memory - own_memory
            if group:
                more_cpu, more_memory, _ = state.group_need(job, mid)
                cpu, memory = own_cpu + more_cpu, own_memory + more_memory
            if (memory and view.memory > 0 and used_memory + memory > view.memory) or (
                    cpu and view.cpu > 0 and used_cpu + cpu > view.cpu):
                blocked.add(mid)
        return _drop(state, candidates, blocked)

    def detail(self, state: WorkingState, job: JobView, machine_id: str) -> str:
        return _shortfall(state, job, machine_id) or "fits"

    def summary(self, state: WorkingState, job: JobView, removed: set[str]) -> str:
        wants = []
        if job.xfleet.memory:
            wants.append(f"{format_memory(job.xfleet.memory)} memory")
        if job.xfleet.cpu:
            wants.append(f"{format_cpu(job.xfleet.cpu)} CPU")
        if job.name in state.followers_reserving:
            wants.append("room for " + ", ".join(state.followers_reserving[job.name])
                         + " (MachineOf)")
        first = _shortfall(state, job, min(removed)) if removed else ""
        return "needs " + " and ".join(wants) + (f"; {first}" if first else "")


# -- end resources --


CHECKS: tuple[Check, ...] = (
    MachineIDCheck(),
    MachineMetadataCheck(),
    MachineOfCheck(),
    ConflictsCheck(),
    ReplacesCheck(),
    DepartedCheck(),
    HeldCheck(),
    DrainingCheck(),
    ResourcesCheck(),  # resources
)
"""Feasibility checks in evaluation order; `filtered`/`rejected` use their ``name``. A new rule
(e.g. resources reserved vs capacity) is one more `Check` here."""

INTRINSIC: tuple[Check, ...] = CHECKS[:2]
"""Checks that depend only on the unit and the machine, not on the rest of the schedule."""
