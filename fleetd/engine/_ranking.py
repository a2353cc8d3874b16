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
    """fleet's policy: the machine with the fewest units (globals included); once any unit
    reserves resources (and the machines publish capacity), the machine with the smallest
    reserved share after placing (the larger of its CPU and memory shares), unit count
    breaking near-ties: score = 0.9 x (1 - share) + 0.1 / (1 + units) (the spread policy)."""

    name = "LeastLoaded"

    @staticmethod
    def _plain(state: WorkingState, job: JobView) -> bool:
        return not state.reserving and not job.xfleet.cpu and not job.xfleet.memory

    def score(self, state: WorkingState, job: JobView, machine_id: str) -> float:
        units = 1.0 / (1 + state.load(machine_id))
        if self._plain(state, job):
            return units
        share = state.share(machine_id, job.xfleet.cpu, job.xfleet.memory)
        return 0.9 * (1.0 - min(1.0, share)) + 0.1 * units

    def detail(self, state: WorkingState, job: JobView, machine_id: str) -> str:
        if self._plain(state, job):
            return f"{state.load(machine_id)} units"
        return _load_words(state, machine_id)

    def reason(self, state: WorkingState, job: JobView, machine_id: str) -> str:
        return f"least loaded feasible machine ({self.detail(state, job, machine_id)})"

    def best(self, state: WorkingState, job: JobView, candidates: Candidates) -> str | None:
        if self._plain(state, job):
            return state.best(candidates)
        return _best_by(state, job, candidates, spread=True)


# -- resources ----------------------------------------------------------------------------


def _load_words(state: WorkingState, machine_id: str) -> str:
    """'2 units, 40% reserved' (the share before placing)."""
    return f"{state.load(machine_id)} units, {state.share(machine_id):.0%} reserved"


class BinPack(Ranker):
    """`engine_placement=binpack`: the feasible machine with the largest reserved share after
    placing, unit count breaking near-ties, so that whole machines stay free:
    score = 0.9 x share + 0.1 x units / (1 + units)."""

    name = "BinPack"

    def score(self, state: WorkingState, job: JobView, machine_id: str) -> float:
        load = state.load(machine_id)
        share = state.share(machine_id, job.xfleet.cpu, job.xfleet.memory)
        return 0.9 * min(1.0, share) + 0.1 * load / (1 + load)

    def detail(self, state: WorkingState, job: JobView, machine_id: str) -> str:
        return _load_words(state, machine_id)

    def reason(self, state: WorkingState, job: JobView, machine_id: str) -> str:
        return f"most loaded feasible machine that fits ({_load_words(state, machine_id)})"

    def best(self, state: WorkingState, job: JobView, candidates: Candidates) -> str | None:
        return _best_by(state, job, candidates, spread=False)


def _best_by(state: WorkingState, job: JobView, candidates: Candidates,
             spread: bool) -> str | None:
    """`Ranker.best` of LeastLoaded (``spread``) or BinPack with the scores inlined (this runs
    per machine per unit): the same numbers as their `score`, ties by machine id."""
    pool = state.machine_ids if candidates is None else candidates
    cpu, memory = job.xfleet.cpu, job.xfleet.memory
    machines, reserved, hosted = state.machines, state.reserved, state.hosted
    best: tuple[float, str] | None = None
    for mid in pool:
        view = machines[mid]
        used_cpu, used_memory = reserved.get(mid, (0, 0))
        share = (used_cpu + cpu) / view.cpu if view.cpu > 0 else 0.0
        if view.memory > 0:
            share = max(share, (used_memory + memory) / view.memory)
        load = len(hosted[mid])
        if spread:
            score = 0.9 * (1.0 - min(1.0, share)) + 0.1 * (1.0 / (1 + load))
        else:
            score = 0.9 * min(1.0, share) + 0.1 * load / (1 + load)
        key = (-score, mid)
        if best is None or key < best:
            best = key
    return None if best is None else best[1]


PLACEMENTS: dict[str, tuple[Ranker, ...]] = {"spread": (LeastLoaded(),), "binpack": (BinPack(),)}
"""The rankers of each `engine_placement` policy (fleet.conf)."""

# -- end resources --


RANKERS: tuple[Ranker, ...] = PLACEMENTS["spread"]
"""The rankers of the engine's pipeline (the default policy, spread)."""
