"""Moving units between machines: `fleetctl move` and the drain of a machine (pure, no I/O).

A move is an engine decision, written by the leader like every schedule key, and kept in a
move record (`<p>/move/<unit>`, `fleetd.registry.schema.MoveRecord`) so a new leader picks
it up where the old one left it. Two ways to move, per unit:

- make-before-break (the default): the unit gets a plain schedule entry on the new machine
  as well ("starting"); its agent starts it as any assignment. The old entry is removed only
  once the new machine reports the unit active. While the record says "starting", the
  scheduler sees only the old machine (`visible_schedule`), so it neither drops the second
  entry as a duplicate nor counts it twice.
- stop first (`[X-Fleet] MoveBeforeStop=false`, and pinned units when the drain says
  `--pinned=stop`): the old entry is removed and the unit is placed nowhere ("stopping",
  `held_units`) until the old machine reports it inactive or its state is gone; then the
  record is dropped and the unit goes to the named target or wherever the pipeline says.

Units with a `MachineID` pin, `Conflicts` or a `MachineOf` link (either way) are pinned: a
drain leaves them ("pinned", with the reason) or stops them first, as its `pinned` mode says.
A unit that could move but finds no machine now is "blocked" and retried on every pass.
A target is judged by the engine's own pipeline (`fleetd.engine._placement`), so a refusal
names the check that refused it, as `fleetctl why` would. Conflicts are never violated: the
new copy's machine passes the Conflicts check with the old copy counted where it is.

`plan` is the one decision function; the engine (`Engine.reconcile_once`) turns its result
into etcd operations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from fleetd.engine._feasibility import WorkingState
from fleetd.engine._placement import PIPELINE, Pipeline
from fleetd.engine.scheduler import ClusterSnapshot, JobView
from fleetd.registry.schema import DrainRecord, MoveRecord, UnitStateRecord

__all__ = ["MovePlan", "destination", "held_units", "in_flight", "pin_reason", "plan", "refusal",
           "visible_schedule"]

#: How long a failed move's record stays for `fleetctl move` to read it (off a machine that
#: is not draining; a draining machine's failed moves stay until it is undrained).
FAILED_KEEP_S = 300.0

_STOPPED = frozenset({"inactive", "failed"})


def visible_schedule(schedule: Mapping[str, Mapping[str, object]],
                     moves: Mapping[str, MoveRecord]) -> dict[str, set[str]]:
    """The hidden new copies: unit -> machines the scheduler must not see (the target of a
    "starting" move whose old copy is still scheduled)."""
    hidden: dict[str, set[str]] = {}
    for unit, rec in moves.items():
        per = schedule.get(unit, {})
        if (rec.phase == "starting" and rec.to_machine in per and rec.from_machine in per
                and rec.to_machine != rec.from_machine):
            hidden[unit] = {rec.to_machine}
    return hidden


def in_flight(moves: Mapping[str, MoveRecord]) -> bool:
    """True if a move has a next step to take (not merely pinned, blocked or failed)."""
    return any(rec.phase in ("requested", "starting", "stopping") for rec in moves.values())


def held_units(moves: Mapping[str, MoveRecord]) -> frozenset[str]:
    """Units placed nowhere this pass: their old copy is still stopping."""
    return frozenset(u for u, rec in moves.items() if rec.phase == "stopping")


def pin_reason(snap: ClusterSnapshot, job: JobView) -> str:
    """Why ``job`` cannot move make-before-break with its constraints, or ''."""
    x = job.xfleet
    if x.machine_id:
        return f"pinned to its machine (MachineID={x.machine_id})"
    if x.conflicts:
        return "has Conflicts (" + ", ".join(x.conflicts) + ")"
    if x.machine_of:
        return "follows " + ", ".join(x.machine_of) + " (MachineOf)"
    followers = sorted(n for n, j in snap.jobs.items() if job.name in j.xfleet.machine_of)
    if followers:
        return "followed by " + ", ".join(followers) + " (MachineOf)"
    return ""


@dataclass
class MovePlan:
    """What one pass does about moves. Each list holds the records as they are to be written
    (`finish`, `release`: the records to delete; `abort`: (record, reason) with the new copy,
    if scheduled, to unschedule)."""

    start: list[MoveRecord] = field(default_factory=list)  # schedule `to_machine` too
    stop_first: list[MoveRecord] = field(default_factory=list)  # unschedule `from_machine`
    finish: list[MoveRecord] = field(default_factory=list)  # unschedule `from_machine`, drop
    release: list[MoveRecord] = field(default_factory=list)  # drop; place on `to_machine`
    abort: list[tuple[MoveRecord, str]] = field(default_factory=list)
    blocked: list[MoveRecord] = field(default_factory=list)  # pinned/blocked: write them
    forget: list[str] = field(default_factory=list)  # records to delete, nothing else
    unassign_global: list[tuple[str, str]] = field(default_factory=list)  # (unit, machine)

    @property
    def empty(self) -> bool:
        return not (self.start or self.stop_first or self.finish or self.release or self.abort
                    or self.blocked or self.forget or self.unassign_global)


def _working(snap: ClusterSnapshot) -> WorkingState:
    state = WorkingState.build(snap.machines, snap.jobs, snap.schedule, snap.departed,
                               snap.held, snap.draining)
    state.place_all({u: ms for u, ms in snap.schedule.items() if u in snap.jobs})
    return state


def refusal(snap: ClusterSnapshot, unit: str, target: str,
            pipeline: Pipeline = PIPELINE) -> str:
    """Why ``unit`` cannot move to ``target`` ('' when it can): the first pipeline check that
    rejects the machine, judged with the unit lifted off its current machine."""
    job = snap.jobs.get(unit)
    if job is None:
        return f"unit {unit} does not exist"
    if target not in snap.machines or target in snap.departed:
        return f"machine {target} is not in the cluster"
    current = snap.schedule.get(unit, frozenset())
    if target in current:
        return f"{unit} already runs on {target}"
    state = _working(snap)
    for mid in current:
        state.lift(unit, mid)
    rejection = pipeline.first_rejection(state, job, target)
    return f"{rejection[0]}: {rejection[1]}" if rejection else ""


def destination(snap: ClusterSnapshot, unit: str,
                pipeline: Pipeline = PIPELINE) -> tuple[str | None, str]:
    """(the machine the pipeline ranks best for moving ``unit`` off its machine, why none)."""
    job = snap.jobs.get(unit)
    current = sorted(snap.schedule.get(unit, frozenset()))
    if job is None or len(current) != 1:
        return None, f"{unit} is not scheduled on one machine"
    state = _working(snap)
    state.lift(unit, current[0])
    return _choose(state, job, current[0], pipeline)


def _choose(state: WorkingState, job: JobView, away_from: str,
            pipeline: Pipeline) -> tuple[str | None, str]:
    """(best machine for ``job`` other than ``away_from``, why none when None)."""
    survivors = pipeline.feasible(state, job)
    pool = set(state.machine_ids if survivors is None else survivors)
    pool.discard(away_from)
    best = pipeline.best(state, job, pool) if pool else None
    if best is not None:
        return best, ""
    _, phrases = pipeline.count_filtered(state, job)
    return None, "no other machine fits: " + (", ".join(phrases) or "no other live machine")


def plan(snap: ClusterSnapshot, moves: Mapping[str, MoveRecord],
         states: Mapping[str, Mapping[str, UnitStateRecord]],
         draining: Mapping[str, DrainRecord], now_ns: int,
         pipeline: Pipeline = PIPELINE) -> MovePlan:
    """The pass's moves. ``snap`` is the scheduler's input with hidden copies removed
    (`visible_schedule`); ``states`` what agents report, by unit then machine."""
    out = MovePlan()
    state = _working(snap)

    def lifted(unit: str) -> None:
        for mid in list(state.where(unit)):
            state.lift(unit, mid)

    def begin(rec: MoveRecord, job: JobView, pinned_mode: str, explicit: bool) -> None:
        """Start (or block) moving ``job`` off ``rec.from_machine``; ``explicit``: asked for
        by `fleetctl move` (refused rather than blocked)."""
        pin = pin_reason(snap, job)
        stop_first = not job.xfleet.move_before_stop
        if pin:
            if explicit and job.xfleet.machine_id:
                out.abort.append((rec, f"cannot move {job.name}: {pin}"))
                return
            if pinned_mode != "stop":
                out.blocked.append(replace(rec, to_machine="", phase="pinned", reason=pin,
                                           since_ns=rec.since_ns or now_ns))
                return
            stop_first = True
        if stop_first and job.xfleet.machine_id:
            # Nowhere else to go: stopped, it waits (unschedulable) until the machine is back.
            out.stop_first.append(replace(rec, to_machine="", phase="stopping", reason=pin,
                                          since_ns=now_ns))
            return
        target = rec.to_machine
        if target:
            why = refusal(snap, job.name, target, pipeline)
            if why:
                out.abort.append((rec, f"cannot move to {target}: {why}"))
                return
        else:
            lifted(job.name)
            chosen, why = _choose(state, job, rec.from_machine, pipeline)
            state.place(job.name, rec.from_machine)
            if chosen is None:
                if explicit:
                    out.abort.append((rec, why))
                else:
                    out.blocked.append(replace(rec, phase="blocked", reason=why,
                                               since_ns=rec.since_ns or now_ns))
                return
            target = chosen
        state.place(job.name, target)  # later choices this pass see it there
        new = replace(rec, to_machine=target, reason="", since_ns=now_ns,
                      phase="stopping" if stop_first else "starting")
        (out.stop_first if stop_first else out.start).append(new)

    for unit in sorted(moves):
        rec = moves[unit]
        job = snap.jobs.get(unit)
        where = snap.schedule.get(unit, frozenset())
        gone = job is None or job.target_state == "inactive"
        if rec.phase == "requested":
            if gone or where != {rec.from_machine} or (job is not None and job.xfleet.global_):
                out.abort.append((rec, f"{unit} is no longer scheduled on {rec.from_machine} "
                                       "alone"))
            elif job is not None:
                begin(rec, job, "stop", True)
        elif rec.phase == "starting":
            report = states.get(unit, {}).get(rec.to_machine)
            if gone:
                out.abort.append((rec, f"{unit} was stopped or destroyed during the move"))
            elif rec.to_machine not in snap.machines or rec.to_machine in snap.departed:
                out.abort.append((rec, f"machine {rec.to_machine} left during the move"))
            elif rec.from_machine not in where:
                out.forget.append(unit)  # the old copy went by itself: the new one stays
            elif report is not None and report.active_state == "active":
                out.finish.append(rec)
            elif report is not None and report.active_state == "failed":
                out.abort.append((rec, f"{unit} failed on {rec.to_machine}"
                                       + (f": {report.error}" if report.error else "")))
        elif rec.phase == "stopping":
            report = states.get(unit, {}).get(rec.from_machine)
            if gone or report is None or report.active_state in _STOPPED:
                out.release.append(rec)
        elif rec.phase in ("pinned", "blocked", "failed"):
            d = draining.get(rec.from_machine)
            # A failed move stays for `fleetctl move` to read (while its machine drains, for
            # the drain to report); a blocked one only while its machine drains.
            expired = d is None and (rec.phase != "failed" or
                                     now_ns - rec.since_ns > FAILED_KEEP_S * 1e9)
            if gone or rec.from_machine not in where or expired:
                out.forget.append(unit)
            elif rec.phase != "failed" and job is not None and d is not None:
                begin(rec, job, d.pinned, False)

    for mid in sorted(draining):
        d = draining[mid]
        if mid not in snap.machines or mid in snap.departed:
            continue
        for unit in sorted(u for u, ms in snap.schedule.items() if mid in ms):
            job = snap.jobs.get(unit)
            if job is None or job.target_state == "inactive" or unit in moves:
                continue
            if job.xfleet.global_:
                if d.include_global:
                    out.unassign_global.append((unit, mid))
                continue
            begin(MoveRecord(unit, mid, "", "requested", "", now_ns), job, d.pinned, False)
    # A blocked record that did not change is not rewritten.
    out.blocked = [b for b in out.blocked if b.unit not in moves
                   or replace(moves[b.unit], since_ns=0) != replace(b, since_ns=0)]
    return out
