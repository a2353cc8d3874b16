"""Moving units between machines: `fleetctl move` and the drain of a machine (pure, no I/O).

A move is an engine decision, written by the leader like every schedule key, and kept in a
move record (`<p>/move/<unit>`, `fleetd.registry.schema.MoveRecord`) so a new leader picks
it up where the old one left it. Two ways to move, per unit:

- make-before-break (the default): the unit gets a plain schedule entry on the new machine
  as well ("starting"); its agent starts it as any assignment. The old entry is removed only
  once the new machine reports the unit active. While the record says "starting", the
  scheduler sees only the old machine (`visible_schedule`), so it neither drops the second
  entry as a duplicate nor counts it twice.
- stop first (`[X-Fleet] MoveBeforeStop=false`, and MachineID-pinned units when the drain
  says `--pinned=stop`): the old entry is removed and the unit is placed nowhere ("stopping",
  `held_units`) until the old machine reports it inactive or its state is gone; then the
  record is dropped and the unit goes to the named target or wherever the pipeline says.

Which units move how:

- A `MachineID` pin is the only constraint that pins: a drain leaves such a unit ("pinned",
  with the reason) or, with `--pinned=stop`, stops it and it waits, unschedulable, for its
  machine; `fleetctl move` refuses it.
- A `MachineOf` group moves as one: the units linked to each other by MachineOf (either
  way, transitively) that run on the machine. Every member gets its new copy on ONE target
  that the pipeline accepts for each of them in turn, targets first (the leader's
  Resources check already counts the followers' reservations, see
  `fleetd.engine._feasibility.ResourcesCheck`); the machines are tried in the leader's
  ranking. Make-before-break: every new copy is active before any old copy stops, and a
  member failing to start aborts the whole group's move. If any member says
  `MoveBeforeStop=false`, the whole group is moved stop first: every old copy inactive,
  then all placed on the target. A group with a pinned member is pinned as a whole.
  `fleetctl move FOLLOWER` is refused, naming the leader (`follower_refusal`); `fleetctl
  move LEADER [MACHINE]` moves the group.
- `Conflicts` do not pin. A unit never conflicts with itself, so its two copies may
  overlap; the new copy's machine must pass the Conflicts check with every other unit
  counted where it is: old copies where they run, and the new copies of moves in flight
  where they start (`ClusterSnapshot.moving`; the scheduler counts them too, so nothing is
  placed beside a new copy it conflicts with either). The check therefore holds at every
  instant of a make-before-break move, and stop first would not help a unit whose every
  other machine holds a conflicting unit: it is "blocked" until one frees up.

A unit that could move but finds no machine now is "blocked" and retried on every full
pass, which the engine runs on every event that can free room (a machine joining or
changing, a unit stopped, destroyed or changing state while it moves).
A target is judged by the engine's own pipeline (`fleetd.engine._placement`), so a refusal
names the check that refused it, as `fleetctl why` would.

`plan` is the one decision function; the engine (`Engine.reconcile_once`) turns its result
into etcd operations.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from fleetd.engine._feasibility import WorkingState
from fleetd.engine._placement import PIPELINE, Pipeline
from fleetd.engine.scheduler import Assign, ClusterSnapshot, Decision, JobView, Unassign
from fleetd.registry.schema import DrainRecord, MoveRecord, UnitStateRecord

__all__ = ["MovePlan", "destination", "follower_refusal", "group_of", "group_pin", "held_units",
           "in_flight", "leaders", "pin_reason", "plan", "refusal", "reserved_copies",
           "visible_schedule", "with_decisions"]

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


def reserved_copies(schedule: Mapping[str, Mapping[str, object]],
                    moves: Mapping[str, MoveRecord]) -> dict[str, frozenset[str]]:
    """unit -> the machine its move is bringing it to, held for it (`ClusterSnapshot.moving`):
    a make-before-break move's hidden new copy, and a stop-first move's named target while
    the old copy stops (nothing else takes its room or conflicts with it there meanwhile)."""
    out = {u: frozenset(ms) for u, ms in visible_schedule(schedule, moves).items()}
    for unit, rec in moves.items():
        if rec.phase == "stopping" and rec.to_machine:
            out[unit] = out.get(unit, frozenset()) | {rec.to_machine}
    return out


def in_flight(moves: Mapping[str, MoveRecord]) -> bool:
    """True if a move has a next step to take (not merely pinned, blocked or failed)."""
    return any(rec.phase in ("requested", "starting", "stopping") for rec in moves.values())


def held_units(moves: Mapping[str, MoveRecord]) -> frozenset[str]:
    """Units placed nowhere this pass: their old copy is still stopping."""
    return frozenset(u for u, rec in moves.items() if rec.phase == "stopping")


def pin_reason(snap: ClusterSnapshot, job: JobView) -> str:
    """Why ``job`` cannot move at all with its constraints ('' when it can): a MachineID pin.
    (MachineOf and Conflicts do not pin: see the module doc.)"""
    if job.xfleet.machine_id:
        return f"pinned to its machine (MachineID={job.xfleet.machine_id})"
    return ""


def _links(snap: ClusterSnapshot) -> dict[str, set[str]]:
    """MachineOf links, both ways: unit -> units it follows or that follow it."""
    links: dict[str, set[str]] = {}
    for name, job in snap.jobs.items():
        for target in job.xfleet.machine_of:
            if target != name:
                links.setdefault(name, set()).add(target)
                links.setdefault(target, set()).add(name)
    return links


def _movable(snap: ClusterSnapshot, unit: str, machine: str) -> bool:
    job = snap.jobs.get(unit)
    return (job is not None and job.target_state != "inactive" and not job.xfleet.global_
            and snap.schedule.get(unit) == frozenset({machine}))


def _ordered(snap: ClusterSnapshot, members: set[str]) -> tuple[str, ...]:
    """``members`` targets first (a follower after every target of it in the group), ties by
    name; a MachineOf cycle (unschedulable anyway) goes last, by name."""
    out: list[str] = []
    done: set[str] = set()
    pending = sorted(members)
    while pending:
        ready = [u for u in pending if all(
            t in done or t not in members
            for t in (snap.jobs[u].xfleet.machine_of if u in snap.jobs else ()))]
        if not ready:
            out.extend(pending)
            break
        for u in ready:
            done.add(u)
            out.append(u)
        pending = [u for u in pending if u not in done]
    return tuple(out)


def group_of(snap: ClusterSnapshot, unit: str, machine: str,
             links: Mapping[str, set[str]] | None = None) -> tuple[str, ...]:
    """The MachineOf group ``unit`` moves with off ``machine``: the units linked to it by
    MachineOf (either way, transitively) that run there alone, non-global and wanted, targets
    before followers. A unit without links is a group of one."""
    links = _links(snap) if links is None else links
    members = {unit}
    frontier = [unit]
    while frontier:
        for other in links.get(frontier.pop(), ()):
            if other not in members and _movable(snap, other, machine):
                members.add(other)
                frontier.append(other)
    return _ordered(snap, members)


def leaders(snap: ClusterSnapshot, group: tuple[str, ...]) -> tuple[str, ...]:
    """The members of ``group`` that follow no other member."""
    inside = set(group)
    return tuple(u for u in group if u not in snap.jobs
                 or not set(snap.jobs[u].xfleet.machine_of) & inside)


def follower_refusal(snap: ClusterSnapshot, unit: str) -> str:
    """Why `fleetctl move` refuses ``unit`` alone ('' when it does not): it follows another
    unit (MachineOf) on its machine; moving that leader moves the whole group."""
    where = sorted(snap.schedule.get(unit, frozenset()))
    if len(where) != 1:
        return ""
    group = group_of(snap, unit, where[0])
    heads = leaders(snap, group)
    if unit in heads or not heads:  # (a MachineOf cycle has no leader: unschedulable anyway)
        return ""
    return (f"{unit} follows {', '.join(heads)} (MachineOf): move {heads[0]} and its "
            f"MachineOf group ({', '.join(group)}) moves with it")


def group_pin(snap: ClusterSnapshot, group: tuple[str, ...]) -> str:
    """Why ``group`` cannot move ('' when it can): a member's MachineID pin."""
    for member in group:
        pin = pin_reason(snap, snap.jobs[member])
        if pin:
            return pin if len(group) == 1 else f"{member} (MachineOf group of {group[0]}) is {pin}"
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
    placed: dict[str, str] = field(default_factory=dict)  # released unit -> its target now
    blocked: list[MoveRecord] = field(default_factory=list)  # pinned/blocked: write them
    forget: list[str] = field(default_factory=list)  # records to delete, nothing else
    unassign_global: list[tuple[str, str]] = field(default_factory=list)  # (unit, machine)

    @property
    def empty(self) -> bool:
        return not (self.start or self.stop_first or self.finish or self.release or self.abort
                    or self.blocked or self.forget or self.unassign_global)


def with_decisions(snap: ClusterSnapshot, decisions: Iterable[Decision]) -> ClusterSnapshot:
    """``snap`` with the scheduler's Assign/Unassign ``decisions`` applied: the schedule the
    pass's moves are planned on, so a move never takes room the same pass gives a unit."""
    changed: dict[str, set[str]] = {}
    for d in decisions:
        if isinstance(d, Assign | Unassign):
            where = changed.setdefault(d.unit, set(snap.schedule.get(d.unit, frozenset())))
            if isinstance(d, Assign):
                where.add(d.machine_id)
            else:
                where.discard(d.machine_id)
    if not changed:
        return snap
    schedule = {**snap.schedule, **{u: frozenset(ms) for u, ms in changed.items()}}
    return replace(snap, schedule={u: ms for u, ms in schedule.items() if ms})


def _working(snap: ClusterSnapshot) -> WorkingState:
    state = WorkingState.build(snap.machines, snap.jobs, snap.schedule, snap.departed,
                               snap.held, snap.draining, snap.moving)
    state.place_all({u: ms for u, ms in snap.schedule.items() if u in snap.jobs})
    return state


def _lift(state: WorkingState, group: tuple[str, ...]) -> None:
    for unit in group:
        for mid in list(state.where(unit)):
            state.lift(unit, mid)


def _try(state: WorkingState, snap: ClusterSnapshot, group: tuple[str, ...], target: str,
         pipeline: Pipeline) -> str:
    """Place ``group``'s members on ``target`` one by one (targets first), each judged by the
    pipeline with the members before it there; '' if all fit (they stay placed), else why the
    first that does not fit is refused (the group is lifted off ``target`` again)."""
    for i, member in enumerate(group):
        rejection = pipeline.first_rejection(state, snap.jobs[member], target)
        if rejection is not None:
            for placed in group[:i]:
                state.lift(placed, target)
            why = f"{rejection[0]}: {rejection[1]}"
            return why if member == group[0] else f"{member} (MachineOf group): {why}"
        state.place(member, target)
    return ""


def refusal(snap: ClusterSnapshot, unit: str, target: str,
            pipeline: Pipeline = PIPELINE) -> str:
    """Why ``unit`` (with its MachineOf group) cannot move to ``target`` ('' when it can):
    the first pipeline check that rejects the machine for a member, judged with the group
    lifted off its current machine."""
    job = snap.jobs.get(unit)
    if job is None:
        return f"unit {unit} does not exist"
    if target not in snap.machines or target in snap.departed:
        return f"machine {target} is not in the cluster"
    current = snap.schedule.get(unit, frozenset())
    if target in current:
        return f"{unit} already runs on {target}"
    group = group_of(snap, unit, min(current)) if len(current) == 1 else (unit,)
    state = _working(snap)
    _lift(state, group)
    return _try(state, snap, group, target, pipeline)


def destination(snap: ClusterSnapshot, unit: str,
                pipeline: Pipeline = PIPELINE) -> tuple[str | None, str]:
    """(the machine the pipeline ranks best for moving ``unit`` and its MachineOf group off
    its machine, why none)."""
    job = snap.jobs.get(unit)
    current = sorted(snap.schedule.get(unit, frozenset()))
    if job is None or len(current) != 1:
        return None, f"{unit} is not scheduled on one machine"
    group = group_of(snap, unit, current[0])
    state = _working(snap)
    _lift(state, group)
    return _choose(state, snap, group, current[0], pipeline)


def _choose(state: WorkingState, snap: ClusterSnapshot, group: tuple[str, ...],
            away_from: str, pipeline: Pipeline) -> tuple[str | None, str]:
    """(best machine for ``group`` other than ``away_from``, why none when None), judged with
    the group lifted; the state is left as it was. The machines are tried in the first
    member's ranking until one takes every member."""
    head = snap.jobs[group[0]]
    survivors = pipeline.feasible(state, head)
    pool = set(state.machine_ids if survivors is None else survivors)
    pool.discard(away_from)
    best = pipeline.best(state, head, pool) if pool else None
    if best is not None and len(group) > 1:
        ranked = [best] + [s.machine_id for s in pipeline.rank(state, head, sorted(pool))
                           if s.machine_id != best]
        first_why = ""
        best = None
        for mid in ranked:
            why = _try(state, snap, group, mid, pipeline)
            if not why:
                _lift(state, group)
                best = mid
                break
            first_why = first_why or f"{why} (best {mid})"
        if best is None:
            return None, "no other machine fits its MachineOf group: " + first_why
    if best is not None:
        return best, ""
    _, phrases = pipeline.count_filtered(state, head)
    return None, "no other machine fits: " + (", ".join(phrases) or "no other live machine")


def _components(snap: ClusterSnapshot, units: set[str],
                links: Mapping[str, set[str]]) -> list[tuple[str, ...]]:
    """``units`` split into MachineOf groups (linked either way, within ``units``), each
    ordered targets first; groups by their first member."""
    seen: set[str] = set()
    out = []
    for unit in sorted(units):
        if unit in seen:
            continue
        members = {unit}
        frontier = [unit]
        while frontier:
            for other in links.get(frontier.pop(), ()):
                if other in units and other not in members:
                    members.add(other)
                    frontier.append(other)
        seen |= members
        out.append(_ordered(snap, members))
    return out


def plan(snap: ClusterSnapshot, moves: Mapping[str, MoveRecord],
         states: Mapping[str, Mapping[str, UnitStateRecord]],
         draining: Mapping[str, DrainRecord], now_ns: int,
         pipeline: Pipeline = PIPELINE) -> MovePlan:
    """The pass's moves. ``snap`` is the scheduler's input with hidden copies removed
    (`visible_schedule`) and given as ``snap.moving``; ``states`` what agents report, by unit
    then machine. A MachineOf group moves as one: one target, every new copy active before
    any old one stops (or, stop first, every old copy stopped before any starts)."""
    out = MovePlan()
    state = _working(snap)
    links = _links(snap)
    begun: set[str] = set()  # units whose move this pass already decided

    def begin(rec: MoveRecord, pinned_mode: str, explicit: bool) -> None:
        """Start (or block) moving ``rec.unit``'s MachineOf group off ``rec.from_machine``;
        ``explicit``: asked for by `fleetctl move` (refused rather than blocked)."""
        source = rec.from_machine
        group = group_of(snap, rec.unit, source, links)
        begun.update(group)
        busy = [u for u in group if u != rec.unit and u in moves
                and moves[u].phase not in ("pinned", "blocked")]
        if busy:  # a member is moving (or failed to): the group waits for it
            if explicit:
                out.abort.append((rec, f"cannot move {rec.unit}: {busy[0]} of its MachineOf "
                                       f"group is {moves[busy[0]].phase}"))
            return
        recs = [rec if u == rec.unit else moves.get(u) or MoveRecord(u, source, "", "", "",
                                                                     now_ns)
                for u in group]
        recs = [replace(r, from_machine=source, to_machine=rec.to_machine) for r in recs]
        jobs = [snap.jobs[u] for u in group]
        pin = group_pin(snap, group)
        stop_first = any(not j.xfleet.move_before_stop for j in jobs)

        def blocked(phase: str, reason: str, to: str | None = None) -> None:
            out.blocked.extend(replace(r, phase=phase, reason=reason, since_ns=r.since_ns
                                       or now_ns, to_machine=r.to_machine if to is None
                                       else to) for r in recs)

        if pin:
            if explicit:
                out.abort.append((rec, f"cannot move {rec.unit}: {pin}"))
                return
            if pinned_mode != "stop":
                blocked("pinned", pin, to="")
                return
            # Nowhere else to go: stopped, it waits (unschedulable) until the machine is back.
            out.stop_first.extend(replace(r, to_machine="", phase="stopping", reason=pin,
                                          since_ns=now_ns) for r in recs)
            return
        target = rec.to_machine
        if target:
            why = refusal(snap, rec.unit, target, pipeline)
            if not why:  # and beside what this pass has placed already
                _lift(state, group)
                why = _try(state, snap, group, target, pipeline)
                if not why:
                    _lift(state, group)
                for u in group:
                    state.place(u, source)
            if why:
                out.abort.append((rec, f"cannot move to {target}: {why}"))
                return
        else:
            _lift(state, group)
            chosen, why = _choose(state, snap, group, source, pipeline)
            for u in group:
                state.place(u, source)
            if chosen is None:
                if explicit:
                    out.abort.append((rec, why))
                else:
                    blocked("blocked", why)
                return
            target = chosen
        for u in group:
            state.place(u, target)  # later choices this pass see the new copies there
        phase = "stopping" if stop_first else "starting"
        new = [replace(r, to_machine=target, reason="", since_ns=now_ns, phase=phase)
               for r in recs]
        (out.stop_first if stop_first else out.start).extend(new)

    # Moves under way, by MachineOf group (members share the old and the new machine).
    under_way: dict[tuple[str, str, str], set[str]] = {}
    for unit, rec in moves.items():
        if rec.phase in ("starting", "stopping"):
            under_way.setdefault((rec.phase, rec.from_machine, rec.to_machine), set()).add(unit)
    for (phase, _, _), units in sorted(under_way.items()):
        for group in _components(snap, units, links):
            begun.update(group)
            if phase == "starting":
                _starting(snap, [moves[u] for u in group], states, out)
            else:
                _stopping(snap, [moves[u] for u in group], states, out)

    _place_released(snap, state, links, out, pipeline)

    for unit in sorted(moves):
        rec = moves[unit]
        if unit in begun:
            continue
        job = snap.jobs.get(unit)
        where = snap.schedule.get(unit, frozenset())
        gone = job is None or job.target_state == "inactive"
        if rec.phase == "requested":
            if gone or where != {rec.from_machine} or (job is not None and job.xfleet.global_):
                out.abort.append((rec, f"{unit} is no longer scheduled on {rec.from_machine} "
                                       "alone"))
            else:
                begin(rec, "stop", True)
        elif rec.phase in ("pinned", "blocked", "failed"):
            d = draining.get(rec.from_machine)
            # A failed move stays for `fleetctl move` to read (while its machine drains, for
            # the drain to report); a blocked one only while its machine drains.
            expired = d is None and (rec.phase != "failed" or
                                     now_ns - rec.since_ns > FAILED_KEEP_S * 1e9)
            if gone or rec.from_machine not in where or expired:
                out.forget.append(unit)
            elif rec.phase != "failed" and job is not None and d is not None:
                begin(rec, d.pinned, False)

    for mid in sorted(draining):
        d = draining[mid]
        if mid not in snap.machines or mid in snap.departed:
            continue
        for unit in sorted(u for u, ms in snap.schedule.items() if mid in ms):
            job = snap.jobs.get(unit)
            if (job is None or job.target_state == "inactive" or unit in moves
                    or unit in begun):
                continue
            if job.xfleet.global_:
                if d.include_global:
                    out.unassign_global.append((unit, mid))
                continue
            begin(MoveRecord(unit, mid, "", "requested", "", now_ns), d.pinned, False)
    # A blocked record that did not change is not rewritten.
    out.blocked = [b for b in out.blocked if b.unit not in moves
                   or replace(moves[b.unit], since_ns=0) != replace(b, since_ns=0)]
    return out


def _starting(snap: ClusterSnapshot, group: list[MoveRecord],
              states: Mapping[str, Mapping[str, UnitStateRecord]], out: MovePlan) -> None:
    """A make-before-break group: the old copies stop only once every new one is active; a
    member failing aborts the whole group's move (every old copy stays)."""
    failed: dict[str, str] = {}
    done: list[MoveRecord] = []
    went: list[str] = []
    for rec in group:
        unit, job = rec.unit, snap.jobs.get(rec.unit)
        report = states.get(unit, {}).get(rec.to_machine)
        if job is None or job.target_state == "inactive":
            failed[unit] = f"{unit} was stopped or destroyed during the move"
        elif rec.to_machine not in snap.machines or rec.to_machine in snap.departed:
            failed[unit] = f"machine {rec.to_machine} left during the move"
        elif rec.from_machine not in snap.schedule.get(unit, frozenset()):
            went.append(unit)  # the old copy went by itself: the new one stays
        elif report is not None and report.active_state == "active":
            done.append(rec)
        elif report is not None and report.active_state == "failed":
            failed[unit] = (f"{unit} failed on {rec.to_machine}"
                            + (f": {report.error}" if report.error else ""))
    out.forget.extend(went)
    if failed:
        first = next(iter(failed.values()))
        out.abort.extend((rec, failed.get(rec.unit, f"moved with its MachineOf group: {first}"))
                         for rec in group if rec.unit not in went)
    elif len(done) + len(went) == len(group):
        out.finish.extend(done)


def _place_released(snap: ClusterSnapshot, state: WorkingState,
                    links: Mapping[str, set[str]], out: MovePlan, pipeline: Pipeline) -> None:
    """`out.placed`: where the units of finished stop-first moves go now, their move's target
    for those the pipeline accepts there (a MachineOf group's members judged together,
    targets first); the rest go wherever the scheduler places them. They stay placed in
    ``state`` so the pass's other moves see them."""
    by_target: dict[str, set[str]] = {}
    for rec in out.release:
        if rec.to_machine and rec.unit in snap.jobs:
            state.unshadow(rec.unit, rec.to_machine)
            by_target.setdefault(rec.to_machine, set()).add(rec.unit)
    for target, units in sorted(by_target.items()):
        if target not in snap.machines or target in snap.departed:
            continue
        for group in _components(snap, units, links):
            _lift(state, group)
            if not _try(state, snap, group, target, pipeline):
                out.placed.update(dict.fromkeys(group, target))


def _stopping(snap: ClusterSnapshot, group: list[MoveRecord],
              states: Mapping[str, Mapping[str, UnitStateRecord]], out: MovePlan) -> None:
    """A stop-first group: released (placed again) once every old copy is stopped."""
    def stopped(rec: MoveRecord) -> bool:
        job = snap.jobs.get(rec.unit)
        report = states.get(rec.unit, {}).get(rec.from_machine)
        return (job is None or job.target_state == "inactive" or report is None
                or report.active_state in _STOPPED)

    if all(stopped(rec) for rec in group):
        out.release.extend(group)
