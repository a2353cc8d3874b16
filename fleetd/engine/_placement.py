"""The placement pipeline: feasibility checks, then ranking (pure, no I/O).

`Pipeline` is the one place where checks and rankers are composed; the scheduler's full pass,
its fast path for new units and `explain` (what `fleetctl why` shows) all go through it, so
they cannot disagree. Global units are a mode of the same pipeline: every feasible machine
instead of the best one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fleetd.engine._feasibility import CHECKS, Candidates, Check, WorkingState
from fleetd.engine._ranking import RANKERS, Ranker

if TYPE_CHECKING:
    from fleetd.engine.scheduler import JobView


@dataclass(frozen=True)
class Score:
    """A feasible machine's ranking: the mean of the rankers' scores and what each saw."""

    machine_id: str
    score: float
    detail: str


@dataclass(frozen=True)
class Pipeline:
    """Checks in order, then rankers. Contract: `choose` picks among the machines `feasible`
    keeps; `first_rejection` and `count_filtered` judge a machine exactly as `feasible` does."""

    checks: tuple[Check, ...] = CHECKS
    rankers: tuple[Ranker, ...] = RANKERS

    # -- feasibility ----------------------------------------------------------------------
    def feasible(
        self,
        state: WorkingState,
        job: JobView,
        candidates: Candidates = None,
        checks: Sequence[Check] | None = None,
    ) -> Candidates:
        """Machines among ``candidates`` (None = all live) that pass every check (of
        ``checks``, default all)."""
        for check in self.checks if checks is None else checks:
            if candidates is not None and not candidates:
                return candidates
            candidates = check.filter(state, job, candidates)
        return candidates

    def first_rejection(
        self, state: WorkingState, job: JobView, machine_id: str
    ) -> tuple[str, str] | None:
        """(check name, detail) of the first check rejecting ``machine_id``, or None."""
        candidates: set[str] = {machine_id}
        for check in self.checks:
            kept = check.filter(state, job, candidates)
            if kept is not None and machine_id not in kept:
                return check.name, check.detail(state, job, machine_id)
        return None

    def count_filtered(
        self, state: WorkingState, job: JobView
    ) -> tuple[tuple[tuple[str, int], ...], list[str]]:
        """Per check (in order, only those that removed any): machines removed, and for each
        such check a 'N filtered by Name (summary)' phrase."""
        candidates: set[str] = set(state.machine_ids)
        counts: list[tuple[str, int]] = []
        phrases: list[str] = []
        for check in self.checks:
            if not candidates:
                break
            kept = check.filter(state, job, candidates)
            survivors = set(state.machine_ids) if kept is None else kept
            removed = candidates - survivors
            if removed:
                counts.append((check.name, len(removed)))
                summary = check.summary(state, job, removed)
                phrase = f"{len(removed)} filtered by {check.name}"
                phrases.append(phrase + (f" ({summary})" if summary else ""))
            candidates = survivors
        return tuple(counts), phrases

    # -- ranking --------------------------------------------------------------------------
    def score(self, state: WorkingState, job: JobView, machine_id: str) -> Score:
        """``machine_id``'s ranking for ``job`` (call it for feasible machines)."""
        parts = [(r.name, r.score(state, job, machine_id), r.detail(state, job, machine_id))
                 for r in self.rankers]
        total = sum(score for _, score, _ in parts) / len(parts) if parts else 0.0
        detail = ", ".join(f"{name} {score:.3g} ({what})" for name, score, what in parts)
        return Score(machine_id, total, detail)

    def best(self, state: WorkingState, job: JobView, candidates: Candidates) -> str | None:
        """The best-ranked machine of ``candidates`` (None = every live machine), ties by id."""
        if len(self.rankers) == 1:
            return self.rankers[0].best(state, job, candidates)
        pool = state.machine_ids if candidates is None else candidates
        return min(pool, key=lambda mid: (-self.score(state, job, mid).score, mid), default=None)

    def rank(self, state: WorkingState, job: JobView, machine_ids: Sequence[str]) -> list[Score]:
        """Scores of ``machine_ids``, best first (ties by id)."""
        scores = [self.score(state, job, mid) for mid in machine_ids]
        return sorted(scores, key=lambda s: (-s.score, s.machine_id))

    # -- placement ------------------------------------------------------------------------
    def choose(self, state: WorkingState, job: JobView) -> list[str]:
        """Where ``job`` goes now: in Global mode every feasible machine (sorted), otherwise
        the best-ranked feasible one (or nothing)."""
        survivors = self.feasible(state, job)
        if job.xfleet.global_:
            return sorted(state.machine_ids if survivors is None else survivors)
        best = self.best(state, job, survivors)
        return [] if best is None else [best]

    def reason(self, state: WorkingState, job: JobView, machine_id: str) -> str:
        """Why `choose` picked ``machine_id`` (the Assign reason), judged before placing."""
        if job.xfleet.global_:
            return f"global unit; {machine_id} fits"
        if job.xfleet.machine_of:
            return "follows " + ", ".join(job.xfleet.machine_of)
        ranked = "; ".join(r.reason(state, job, machine_id) for r in self.rankers)
        return f"target state {job.target_state}; {ranked}"


PIPELINE = Pipeline()
"""The engine's placement pipeline."""

# -- resources --
_PIPELINES: dict[str, Pipeline] = {}


def pipeline_for(placement: str) -> Pipeline:
    """The pipeline of an `engine_placement` policy ('spread', the default, or 'binpack')."""
    from fleetd.engine._ranking import PLACEMENTS

    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r} (one of {', '.join(PLACEMENTS)})")
    if placement not in _PIPELINES:
        _PIPELINES[placement] = PIPELINE if placement == "spread" else Pipeline(
            rankers=PLACEMENTS[placement])
    return _PIPELINES[placement]
# -- end resources --
