"""Ranking of feasible machines, the pipeline's second stage (pure, no I/O).

A `Ranker` scores a feasible machine for a unit in [0, 1] (higher is better); the pipeline
averages the rankers' scores and takes the best machine, ties by machine id (Nomad's rank
stage). A new policy (bin packing or spreading by reserved resources) is one more `Ranker`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from fleetd.engine._feasibility import Candidates, WorkingState
    from fleetd.engine.scheduler import JobView


class Ranker:
    """One ranking policy. Contract: `best` returns the candidate with the highest `score`,
    ties by machine id (an index-backed shortcut of the same choice)."""

    name: ClassVar[str] = ""

    def score(self, state: WorkingState, job: JobView, machine_id: str) -> float:
        """How well ``machine_id`` suits ``job``, in [0, 1]."""
        raise NotImplementedError

    def detail(self, state: WorkingState, job: JobView, machine_id: str) -> str:
        """What the score is made of, in a few words ('2 units')."""
        raise NotImplementedError

    def reason(self, state: WorkingState, job: JobView, machine_id: str) -> str:
        """Why ``machine_id`` won, for an Assign decision."""
        return f"best {self.name} ({self.detail(state, job, machine_id)})"

    def best(self, state: WorkingState, job: JobView, candidates: Candidates) -> str | None:
        """The highest-scoring machine of ``candidates`` (None = every live machine)."""
        pool = state.machine_ids if candidates is None else candidates
        return min(pool, key=lambda mid: (-self.score(state, job, mid), mid), default=None)


class LeastLoaded(Ranker):
    """fleet's policy: the machine with the fewest units (globals included)."""

    name = "LeastLoaded"

    def score(self, state: WorkingState, job: JobView, machine_id: str) -> float:
        return 1.0 / (1 + state.load(machine_id))

    def detail(self, state: WorkingState, job: JobView, machine_id: str) -> str:
        return f"{state.load(machine_id)} units"

    def reason(self, state: WorkingState, job: JobView, machine_id: str) -> str:
        return f"least loaded feasible machine ({state.load(machine_id)} units)"

    def best(self, state: WorkingState, job: JobView, candidates: Candidates) -> str | None:
        return state.best(candidates)


RANKERS: tuple[Ranker, ...] = (LeastLoaded(),)
"""The rankers of the engine's pipeline."""
