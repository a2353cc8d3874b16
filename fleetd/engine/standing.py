"""The schedule as it stands, kept between passes for the engine's fast path (pure, no I/O).

`place_new` places a few new units onto a working state holding every other assignment
(`fleetd.engine._feasibility.WorkingState`). Building that state costs O(cluster): at 10,000
units it was most of a one-unit decision. `StandingSchedule` keeps one across passes and
brings it up to date with what changed since (assignments placed or lifted through the
state's own `place`/`lift`), so a decision costs O(changes). Whatever it cannot follow
exactly (other machines, moves in flight, a change to a unit with Conflicts, Replaces,
MachineOf or reserved resources or to a MachineOf target, a unit whose name a Conflicts or
Replaces pattern matches) makes it start over from the snapshot: the state it hands out
always equals one built from scratch (tests/unit/test_standing.py checks that after random
sequences of changes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fleetd.engine._feasibility import WorkingState
from fleetd.engine.scheduler import ClusterSnapshot, JobView, _working_state
from fleetd.unit import glob_match

__all__ = ["StandingSchedule", "followers_of", "fresh_state"]

_MAX_PATTERN_OWNERS = 256
"""Conflicts groups plus Replaces units beyond which a new unit's name is not matched against
each of them (the state starts over instead): a bound, not a tuning knob."""


def fresh_state(snapshot: ClusterSnapshot) -> WorkingState:
    """The working state `place_new` builds for ``snapshot``: its schedule placed."""
    state = _working_state(snapshot)  # (the very construction place_new makes)
    state.initial = snapshot.schedule  # (build swaps an empty mapping for its own)
    state.place_all(snapshot.schedule)
    return state


def followers_of(jobs: Mapping[str, JobView]) -> dict[str, set[str]]:
    """MachineOf target -> the jobs that follow it."""
    out: dict[str, set[str]] = {}
    for name, job in jobs.items():
        for target in job.xfleet.machine_of:
            out.setdefault(target, set()).add(name)
    return out


def _indexed(job: JobView | None) -> bool:
    """Whether ``job`` enters the state's indexes beyond its placements (or reserves)."""
    return job is not None and bool(job.xfleet.conflicts or job.xfleet.replaces
                                    or job.xfleet.machine_of or job.xfleet.cpu
                                    or job.xfleet.memory)


class StandingSchedule:
    """A `WorkingState` and the MachineOf followers of one evolving snapshot.

    Contract: call `note` with every job and assignment that changed (the job as it was
    before), then `state` with the snapshot they changed into; it returns the state for that
    snapshot (built afresh when it cannot be followed), which the caller may mutate with the
    placements it writes. If those placements are not written, call `invalidate`."""

    def __init__(self) -> None:
        self._state: WorkingState | None = None
        self.followers: dict[str, set[str]] = {}
        self._replacers: dict[str, tuple[str, ...]] = {}  # unit -> its Replaces patterns
        self._jobs: dict[str, JobView | None] = {}  # changed since: name -> as it was
        self._sched: set[str] = set()
        self.rebuilds = 0

    def invalidate(self) -> None:
        """Start over at the next `state` call."""
        self._state = None

    def note(self, jobs_before: Mapping[str, JobView | None], schedule: Iterable[str]) -> None:
        """Jobs (with their view before the change; None: there was none) and assignments
        (unit names) that changed since the last `state` call."""
        if self._state is None:
            return
        for name, before in jobs_before.items():
            self._jobs.setdefault(name, before)
        self._sched.update(schedule)

    def state(self, snapshot: ClusterSnapshot) -> WorkingState:
        """The working state holding ``snapshot``'s schedule."""
        st = self._state
        if st is None or not self._follows(st, snapshot):
            st = self._state = fresh_state(snapshot)
            self.followers = followers_of(snapshot.jobs)
            self._replacers = {n: j.xfleet.replaces for n, j in snapshot.jobs.items()
                               if j.xfleet.replaces}
            self.rebuilds += 1
        else:
            jobs, schedule = snapshot.jobs, snapshot.schedule
            for name, before in self._jobs.items():
                self._refollow(name, before, jobs.get(name))
            for name in self._jobs.keys() | self._sched:
                want = ({mid for mid in schedule.get(name, ()) if mid in st.hosted}
                        if name in jobs else set())
                have = st.sched.get(name, set())
                for mid in sorted(have - want):
                    st.lift(name, mid)
                for mid in sorted(want - have):
                    st.place(name, mid)
        self._jobs.clear()
        self._sched.clear()
        return st

    def _follows(self, st: WorkingState, snap: ClusterSnapshot) -> bool:
        """Whether the changes noted since can be brought into ``st`` exactly."""
        if (st.machines is not snap.machines or st.jobs is not snap.jobs
                or st.initial is not snap.schedule or st.departed != snap.departed
                or st.held != snap.held or st.draining != snap.draining
                or snap.moving or st.shadows):
            return False
        patterns: list[tuple[str, ...]] | None = None
        for name, before in self._jobs.items():
            now = snap.jobs.get(name)
            if _indexed(before) or _indexed(now) or name in self.followers:
                return False  # (a MachineOf target: its group's index may change)
            if (before is None) != (now is None):  # a name joins or leaves the jobs
                if patterns is None:
                    patterns = [*st.group_matches, *self._replacers.values()]
                    if len(patterns) > _MAX_PATTERN_OWNERS:
                        return False
                if any(glob_match(p, name) for group in patterns for p in group):
                    return False
        return True

    def _refollow(self, name: str, before: JobView | None, now: JobView | None) -> None:
        old = before.xfleet.machine_of if before is not None else ()
        new = now.xfleet.machine_of if now is not None else ()
        if old == new:
            return
        for target in old:
            per = self.followers.get(target)
            if per is not None:
                per.discard(name)
                if not per:
                    del self.followers[target]
        for target in new:
            self.followers.setdefault(target, set()).add(name)
