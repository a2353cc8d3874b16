"""The engine: one leader per cluster turns the registry into scheduling decisions.

Leadership is a key on the leader machine's lease (`engine/leader`); every write the leader
makes is a transaction guarded by that key, so a deposed leader cannot write. The leader keeps
an in-memory copy of units, desired states, machines and assignments fed by one etcd watch,
reconciles on every relevant event (a full pass debounced by `debounce_ms`; new units are
placed at once, on a working state kept between passes: `fleetd.engine.standing`) and every
`reconcile_interval_s` as a safety net. `scheduler.reconcile` decides; this module only feeds it
and writes its decisions.

A machine whose key vanishes is not written off at once: for `fleetd.fencing.engine_grace_s`
after the engine sees it go (or, for a new leader, after it finds units assigned to a machine it
does not see) it stays in the scheduler's view, so its units stay assigned to it, and nothing
new is placed on it. Its dead-man switch has stopped them by then; a machine that re-registers
within the grace keeps them. A unit whose own stop may take longer than the default bound (its
[Service] states TimeoutStopSec=, `fencing.unit_stop_bound_s`) is held longer, alone: placed
nowhere for `fencing.unit_grace_s` after its machine left (`slow_stops`; a new leader holds such
a unit it finds unplaced and unschedulable for that long from its own start).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass, field, replace

from fleetd import clock, fencing, metrics
from fleetd.engine import moves
from fleetd.engine._placement import pipeline_for
from fleetd.engine.scheduler import (
    Assign,
    ClusterSnapshot,
    Decision,
    Explanation,
    JobView,
    MachineView,
    Unassign,
    Unschedulable,
    explain,
    place_new,
    reconcile,
)
from fleetd.engine.snapshot import BuiltSnapshot, build_snapshot
from fleetd.engine.snapshot import UnitParseCache as XFleetCache
from fleetd.engine.standing import StandingSchedule
from fleetd.machine import MachineSession
from fleetd.registry import (
    Change,
    ClusterState,
    EtcdError,
    MachineRecord,
    NotLeader,
    Op,
    Registry,
    ScheduleEntry,
    UnitRecord,
    Update,
    backoff_sleep,
    decode_change,
)
from fleetd.registry.model import MACHINE_DELETED
from fleetd.unit import UnitError, UnitFile, UnitName

log = logging.getLogger("fleetd.engine")

#: How the reason of a unit held for its slow stop begins (a new leader recognises it).
SLOW_STOP_REASON = "may still be stopping on"
#: A bulk submission (`CreateUnits`) arrives as transactions of 64 units sent at once: a wake
#: with at least that many units to place waits `BULK_WAIT_S` for the rest, so all of them
#: are placed in one pass and each agent gets them in one batch (one daemon-reload, not two
#: back to back). Lab, 100 units started: without the wait a traced run reached the agents
#: in two batches (21 and 12 units per machine) and the median was 0.61 s; with it, 0.56 s.
BULK_UNITS = 64
BULK_WAIT_S = 0.01


@dataclass
class EngineCache:
    """The leader's view of the registry: the cluster model `Registry.follow` keeps current,
    plus the scheduler's views derived from it."""

    state: ClusterState = field(default_factory=ClusterState.empty)
    # The scheduler's view, derived from the above and refreshed only where keys changed:
    # rebuilding 10,000 JobViews on every pass would dominate a one-unit decision.
    jobs: dict[str, JobView] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)
    sched_sets: dict[str, frozenset[str]] = field(default_factory=dict)
    machine_views: dict[str, MachineView] = field(default_factory=dict)
    stale_jobs: set[str] = field(default_factory=set)
    stale_sched: set[str] = field(default_factory=set)
    stale_machines: bool = True

    # What `Engine.snapshot` reads, by the names it has always used.
    @property
    def revision(self) -> int:
        return self.state.revision

    @property
    def units(self) -> dict[str, UnitRecord]:
        return self.state.records

    @property
    def desired(self) -> dict[str, str]:
        return self.state.desired

    @property
    def machines(self) -> dict[str, MachineRecord]:
        """The machines as they registered (API-set metadata not merged in)."""
        return self.state.configured

    @property
    def schedule(self) -> dict[str, dict[str, ScheduleEntry]]:
        return self.state.schedule

    @property
    def unschedulable(self) -> dict[str, str]:
        return self.state.unschedulable

    @property
    def metadata(self) -> dict[str, dict[str, str | None]]:
        return self.state.metadata


class Engine:
    """Campaigns for leadership and, while leader, schedules units."""

    def __init__(self, registry: Registry, session: MachineSession, *,
                 reconcile_interval_s: float = 2.0, debounce_ms: float = 5.0,
                 placement: str = "spread") -> None:
        self.registry = registry
        self.pipeline = pipeline_for(placement)  # resources: engine_placement
        self.session = session
        self.machine_id = session.identity.id
        self.reconcile_interval_s = reconcile_interval_s
        self.debounce_ms = debounce_ms
        self.cache = EngineCache()
        self.xfleet = XFleetCache()
        # The fast path's working state, kept between passes (O(changes) per decision).
        self.standing = StandingSchedule()
        self.is_leader = False
        self.reconciles = 0
        self.last_reconcile_s = 0.0
        self._wake = asyncio.Event()
        # What changed since the last pass: units that only need placing (fast path), or
        # anything else that calls for a full pass (machines, deletions, metadata).
        self._dirty: set[str] = set()
        self._need_full = True
        self._changed_since_full = False
        self.fast_passes = 0
        self._last_pass_end = 0.0
        # machine id -> (when its key was seen gone, its last view): kept in the scheduler's
        # view for the grace, see the module doc.
        self.departed: dict[str, tuple[float, MachineView]] = {}
        # What each departed machine had scheduled when it left: during its grace those units
        # may still run there (frozen, partitioned, slow to stop), so no copy of them is placed
        # anywhere, not even a new one after a destroy and a start (same name, same lock).
        self.departed_units: dict[str, frozenset[str]] = {}
        # unit -> (held until, the departed machine it may still be stopping on, its stop
        # bound, that instant on the wall clock): units whose own stop outlasts the machine's
        # grace, placed nowhere until their own (`fencing.unit_grace_s`).
        self.slow_stops: dict[str, tuple[float, str, float, float]] = {}
        self._stop_bounds: dict[str, float] = {}  # file hash -> its whole-stop bound

    async def run(self) -> None:
        attempt = 0
        while True:
            lease = self.session.lease
            if not lease:
                await self.session.lease_changed.wait()
                continue
            try:
                if await self.registry.try_acquire_leadership(self.machine_id, lease):
                    attempt = 0
                    await self._lead(lease)
                else:
                    await self._await_vacancy()
            except (EtcdError, NotLeader) as e:
                log.warning("engine: %s", e)
                await backoff_sleep(attempt)
                attempt += 1
            finally:
                if self.is_leader:
                    log.info("engine: no longer leader")
                self.is_leader = False
                metrics.ENGINE_LEADER.set(0)

    async def _await_vacancy(self) -> None:
        """Block until the leader key disappears (or our lease changes)."""
        lease_changed = asyncio.ensure_future(self.session.lease_changed.wait())
        try:
            async for update in self.registry.follow(self.registry.keys.leader):
                if not update.state.leader or lease_changed.done():
                    return
        finally:
            lease_changed.cancel()

    async def _lead(self, lease: int) -> None:
        log.info("engine: machine %s is now the leader", self.machine_id)
        self.is_leader = True
        metrics.ENGINE_LEADER.set(1)
        updates = self.registry.follow().__aiter__()
        first = await anext(updates)  # the first read; its failure ends this term (run retries)
        self._load(first.state)
        self._hold_unplaced_slow_stops(self.cache)
        watcher = asyncio.ensure_future(self._watch(updates))
        try:
            self._need_full = True
            while self.session.lease == lease:
                if self._expire_departed():
                    self._need_full = True
                if self._need_full:
                    await self.reconcile_once(lease)
                elif self._dirty:
                    dirty, self._dirty = self._dirty, set()
                    await self.reconcile_once(lease, dirty)
                try:
                    await asyncio.wait_for(self._wake.wait(), self._next_wait_s())
                except TimeoutError:
                    # The safety-net pass: only worth its cost if something changed since the
                    # last full pass (the cache cannot drift without an event).
                    self._need_full = self._changed_since_full
                self._wake.clear()
                if len(self._dirty) >= BULK_UNITS and not self._need_full:
                    await asyncio.sleep(BULK_WAIT_S)
                # A full pass waits for the changes that come with the first (machines leave
                # together); a unit to place is decided at once (its pass costs O(changes)).
                if self.debounce_ms and self._need_full:
                    await asyncio.sleep(self.debounce_ms / 1000)
                # Under a burst (the last pass ended moments ago), let changes pile up for as
                # long as a pass takes: passes then grow with the load instead of running back
                # to back, and the API keeps half the CPU. An isolated change waits for nothing.
                since_last = clock.now() - self._last_pass_end
                if since_last < 0.5 * self.last_reconcile_s:
                    await asyncio.sleep(min(self.last_reconcile_s, 0.25))
                if watcher.done():
                    watcher.result()  # re-raise the watch failure
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await updates.aclose()

    # --- the cache ------------------------------------------------------------------------
    def _load(self, state: ClusterState) -> None:
        """Start over from a fresh read: every derived view is rebuilt."""
        c = EngineCache(state)
        c.stale_jobs = set(state.records) | set(state.desired)
        c.stale_sched = set(state.schedule)
        self._note_unseen_machines(c)
        self.cache = c
        self.xfleet.prune(c.units)

    def _note_unseen_machines(self, c: EngineCache) -> None:
        """Units assigned to a machine we do not see: it may have expired a moment ago (this
        leader cannot know when), so it gets the full grace from now."""
        now = clock.now()
        unseen = {mid for per in c.schedule.values() for mid in per
                  if mid not in c.machines and mid not in self.departed}
        for mid, units in _units_on(c, unseen).items():
            self.departed[mid] = (now, MachineView(mid, {}))
            self.departed_units[mid] = units
            self._hold_slow_stops(c, units, mid, now)
            log.info("machine %s left (it has units but no key); they stay for "
                     "%.1fs (grace)", mid, self.grace_s)
        for mid in list(self.departed):
            if mid in c.machines:
                del self.departed[mid]
        c.stale_machines = True

    def _hold_unplaced_slow_stops(self, c: EngineCache) -> None:
        """On taking leadership: a unit the last leader unassigned from a departed machine and
        held for its slow stop is unplaced and unschedulable now; this leader cannot know
        since when, so it holds it for the unit's whole grace from now."""
        placed = {u for u, per in c.schedule.items() if per.keys() & c.machines.keys()}
        waiting = {u for u, why in c.unschedulable.items() if why.startswith(SLOW_STOP_REASON)}
        self._hold_slow_stops(c, waiting - placed, "a machine that left", clock.now())

    @property
    def grace_s(self) -> float:
        return fencing.engine_grace_s(self.session.ttl_s)

    def _stop_bound(self, rec: UnitRecord) -> float:
        """The whole-stop bound of `rec`'s file (the default for an unparseable one), parsed
        once per file hash."""
        bound = self._stop_bounds.get(rec.hash)
        if bound is None:
            try:
                bound = fencing.stop_bound_of(UnitFile.parse(rec.text, name=rec.name).options)
            except UnitError:
                bound = fencing.FENCE_STOP_BOUND_S
            if len(self._stop_bounds) > 65536:
                self._stop_bounds.clear()
            self._stop_bounds[rec.hash] = bound
        return bound

    def _entry_stop_bound(self, rec: UnitRecord, job: JobView,
                          old: ScheduleEntry | None) -> float:
        """What a (re)written assignment of `rec` records as its stop bound: the longest of
        the current file's and every earlier version's assigned there (`old`); 0 when all
        keep the default (and for global units, which are never fenced)."""
        if job.xfleet.global_ or not rec.name.endswith(".service"):
            return 0.0
        if old is not None and old.hash == rec.hash:
            return old.stop_bound_s  # the same file: nothing new to record
        longest = max(self._stop_bound(rec), old.stop_bound_s if old is not None else 0.0)
        return longest if longest > fencing.FENCE_STOP_BOUND_S else 0.0

    def _hold_slow_stops(self, c: EngineCache, units: Iterable[str], machine_id: str,
                         since: float) -> None:
        """Hold those of `units` whose stop bound is longer than the default for their
        `fencing.unit_grace_s` from `since` (when `machine_id`, which may still be stopping
        them, was seen gone): the bound of the current file or, if longer, the one the
        machine's assignment recorded (a version replaced while the machine was cut off)."""
        for name in units:
            rec = c.units.get(name)
            if rec is None or not name.endswith(".service"):
                continue
            xf = self.xfleet.get(rec)
            if isinstance(xf, str) or xf.global_:
                continue  # unparseable: never started; global: never fenced, never held
            entry = c.schedule.get(name, {}).get(machine_id)
            bound = max(self._stop_bound(rec), entry.stop_bound_s if entry is not None else 0.0)
            if bound <= fencing.FENCE_STOP_BOUND_S:
                continue
            until = since + fencing.unit_grace_s(self.session.ttl_s, bound)
            if name not in self.slow_stops or self.slow_stops[name][0] < until:
                self.slow_stops[name] = (until, machine_id, bound,
                                         time.time() + until - clock.now())
                log.info("%s may stop for up to %.0fs on %s: held for %.1fs", name, bound,
                         machine_id, until - since)

    def _slow_stop_reason(self, unit: str) -> str:
        """What `fleetctl why` says of a unit held for its slow stop."""
        _, mid, bound, wall = self.slow_stops[unit]
        at = time.strftime("%H:%M:%S", time.gmtime(wall))
        return (f"{SLOW_STOP_REASON} {mid}, which left the cluster: its own "
                f"TimeoutStopSec= lets its stop take up to {bound:g}s, so it waits "
                f"{bound - fencing.FENCE_STOP_BOUND_S:g}s more than other units and is "
                f"placed elsewhere at {at} UTC")

    def _expire_departed(self) -> bool:
        """Forget machines whose grace is over (their units may now move), and the slow stops
        whose own grace is; True if any."""
        now = clock.now()
        gone = [mid for mid, (t, _) in self.departed.items() if now - t >= self.grace_s]
        for mid in gone:
            del self.departed[mid]
            log.info("machine %s gone for %.1fs (grace): its units may move", mid, self.grace_s)
        stopped = [u for u, (until, *_) in self.slow_stops.items() if now >= until]
        for u in stopped:
            del self.slow_stops[u]
            log.info("%s: its longest stop is over, it may move", u)
        if gone or stopped:
            self.cache.stale_machines = True
        return bool(gone or stopped)

    def _next_wait_s(self) -> float:
        ends = [t + self.grace_s for t, _ in self.departed.values()]
        ends += [until for until, *_ in self.slow_stops.values()]
        if not ends:
            return self.reconcile_interval_s
        return max(0.01, min(self.reconcile_interval_s, min(ends) - clock.now()))

    def _apply_kv(self, c: EngineCache, key: str, value: bytes | None) -> bool:
        """Fold one key's new value (None: deleted) into the cache; True if it can change a
        decision."""
        ch = decode_change(self.registry.keys, key, value, c.state.revision)
        if ch is None:
            return False
        touched = c.state.apply(ch)
        left = (MACHINE_DELETED, "", ch.machine_id) in touched
        return self._track(c, ch, _units_on(c, {ch.machine_id}) if left else None)

    def _track(self, c: EngineCache, ch: Change,
               left_with: Mapping[str, frozenset[str]] | None) -> bool:
        """Note what one change, already applied to `c.state`, makes stale; True if it can
        change a decision. `left_with`: when it removed a machine the cache had, the units
        assigned to each machine that left with it (`_units_on`)."""
        if ch.kind in ("unit", "desired"):
            c.stale_jobs.add(ch.name)
            return True
        if ch.kind == "machine":
            mid = ch.machine_id
            c.stale_machines = True
            if ch.record is not None:
                self.departed.pop(mid, None)
            elif left_with is not None and mid in left_with and c is self.cache:
                view = c.machine_views.get(mid) or MachineView(mid, {})
                self.departed[mid] = (clock.now(), view)
                self.departed_units[mid] = left_with[mid]
                self._hold_slow_stops(c, self.departed_units[mid], mid, clock.now())
                log.info("machine %s left; its units stay for %.1fs (grace)", mid,
                         self.grace_s)
            return True
        if ch.kind in ("metadata", "drain"):
            c.stale_machines = True
            return True
        if ch.kind == "move":  # it decides which of the unit's entries the scheduler sees
            c.stale_sched.add(ch.name)
            return True
        if ch.kind == "schedule":
            c.stale_sched.add(ch.name)
        if ch.kind == "state":  # a moving unit's states drive its move
            return ch.name in c.state.moves
        return False  # our own writes echoing back (schedule, unschedulable), states

    async def _watch(self, updates: AsyncGenerator[Update, None]) -> None:
        async for update in updates:
            if update.kind == "reset":
                # Changes in the compacted gap are gone unseen (a machine that died, a unit
                # destroyed): only a full pass over the reloaded cache can catch up.
                log.info("engine: watch history compacted; reconciling everything")
                self._load(update.state)
                self._dirty.clear()
                self._need_full = True
                self._changed_since_full = True
                self._wake.set()
            elif update.kind == "changes":
                left = {e.machine_id for e in update.events if e.kind == MACHINE_DELETED}
                # One pass over the schedule for every machine of the batch that left.
                left_with = _units_on(self.cache, left) if left else None
                relevant = False
                for ch in update.changes:
                    if self._track(self.cache, ch, left_with):
                        relevant = True
                        self._note_change(ch)
                if relevant:
                    self._changed_since_full = True
                    self._wake.set()

    def _note_change(self, ch: Change) -> None:
        """Classify a relevant change: a unit put can take the fast path, the rest not."""
        if ch.record is not None and ch.kind == "unit":
            if self.cache.schedule.get(ch.name):
                self._need_full = True  # a replaced file may bring new constraints
            else:
                self._dirty.add(ch.name)
        elif ch.record is not None and ch.kind == "desired":
            self._dirty.add(ch.name)
        else:
            self._need_full = True

    # --- deciding -------------------------------------------------------------------------
    def snapshot(self) -> tuple[ClusterSnapshot, dict[str, str]]:
        """The scheduler's input, and the units that cannot even be parsed (name -> error).

        Built by `fleetd.engine.snapshot.build_snapshot` (as `fleetctl why` is), refreshing
        only the keys that changed since the last call."""
        c = self.cache
        held = {u for mid in self.departed for u in self.departed_units.get(mid, ())}
        held |= self.slow_stops.keys()
        schedule: Mapping[str, Mapping[str, ScheduleEntry]] = c.schedule
        reserved: dict[str, frozenset[str]] = {}
        if c.state.moves:  # the new copy of a unit being moved is not the scheduler's to see
            hidden = moves.visible_schedule(c.schedule, c.state.moves)
            if hidden:
                schedule = {**c.schedule, **{u: {m: e for m, e in c.schedule[u].items()
                                                 if m not in hid}
                                             for u, hid in hidden.items()}}
            reserved = moves.reserved_copies(c.schedule, c.state.moves)
        self.standing.note({n: c.jobs.get(n) for n in c.stale_jobs}, c.stale_sched)
        built = build_snapshot(
            c.units, c.desired, c.machines, schedule, parsed=self.xfleet, metadata=c.metadata,
            departed={mid: view for mid, (_, view) in self.departed.items()}, held=held,
            previous=BuiltSnapshot(c.machine_views, c.jobs, c.sched_sets, c.broken),
            changed_units=c.stale_jobs, changed_schedule=c.stale_sched,
            machines_changed=c.stale_machines, draining=c.state.draining)
        c.stale_jobs.clear()
        c.stale_sched.clear()
        c.stale_machines = False
        c.machine_views, c.jobs, c.sched_sets, c.broken = (
            built.machines, built.jobs, built.schedule, built.broken)
        if reserved:  # ... but it occupies its machine (Conflicts, Resources) until it ends
            return replace(built.snapshot, moving=reserved), c.broken
        return built.snapshot, c.broken

    def explain(self, unit: str) -> Explanation:
        snap, _ = self.snapshot()
        return explain(snap, unit, self.pipeline)

    def _is_template(self, name: str) -> bool:
        """Whether `name` is a template (`foo@.service`), from the parse cache when its record
        is there: an instance whose name holds "@." (`foo@.x.service`) is none."""
        if "@" not in name:
            return False
        rec = self.cache.units.get(name)
        if rec is not None:
            return self.xfleet.parsed(rec).is_template
        try:
            return UnitName.parse(name).is_template
        except UnitError:
            return False

    async def reconcile_once(self, lease: int, dirty: set[str] | None = None) -> int:
        """One pass on the cached state, writing its decisions; returns the number of ops.

        With `dirty` (units whose record or desired state changed, nothing else), units that
        only need placing take `place_new` and already-placed ones only get their schedule
        entries refreshed; anything else falls back to the full `reconcile`."""
        t0 = time.perf_counter()
        c = self.cache
        if dirty is not None and moves.in_flight(c.state.moves):
            dirty = None  # a move's next step is judged on a full pass
        snap, broken = self.snapshot()
        decisions: list[Decision] | None = None
        if dirty is not None:
            unplaced = {u for u in dirty if u in snap.jobs and not c.schedule.get(u)
                        and snap.jobs[u].target_state != "inactive"}
            placed = {u for u in dirty - unplaced if c.schedule.get(u) and u in snap.jobs
                      and snap.jobs[u].target_state != "inactive"
                      and not snap.jobs[u].xfleet.replaces}
            # every dirty unit but submitted templates (never scheduled themselves)
            wanted = {u for u in dirty if not self._is_template(u)}
            if unplaced | placed == wanted and not broken.keys() & dirty:
                standing = self.standing.state(snap) if unplaced else None
                decisions = place_new(snap, unplaced, self.pipeline, state=standing,
                                      followers=self.standing.followers if unplaced else None)
        full = decisions is None
        if decisions is None:
            self._need_full = False
            self._changed_since_full = False
            dirty = None
            decisions = reconcile(snap, self.pipeline)
            self.xfleet.prune(c.units)
        else:
            self.fast_passes += 1
        # (A machine in its grace keeps what it has and gets nothing new, and what it had is
        # placed nowhere else meanwhile: the pipeline's Departed and Held checks see to it.)
        if self.slow_stops:  # say why a unit held for its own slow stop waits, and how long
            decisions = [replace(d, reason=self._slow_stop_reason(d.unit))
                         if isinstance(d, Unschedulable) and d.unit in self.slow_stops else d
                         for d in decisions]
        if c.state.moves:
            stopping = moves.held_units(c.state.moves)  # placed nowhere until stopped
            kept = [d for d in decisions if not (
                isinstance(d, Assign | Unschedulable) and d.unit in stopping)]
            if len(kept) != len(decisions):
                self.standing.invalidate()  # it holds placements that are not written
            decisions = kept
        ops: list[Op] = []
        reg = self.registry
        scope = c.schedule if dirty is None else {u: c.schedule[u] for u in dirty
                                                  if u in c.schedule}
        assignments = {u: dict(per) for u, per in scope.items()}
        reasons: dict[str, str] = dict(broken)
        for d in decisions:
            if isinstance(d, Unassign):
                ops.append(reg.unassign_op(d.machine_id, d.unit))
                assignments.get(d.unit, {}).pop(d.machine_id, None)
                log.info("unschedule %s from %s: %s", d.unit, d.machine_id, d.reason)
            elif isinstance(d, Assign):
                assignments.setdefault(d.unit, {})[d.machine_id] = None  # type: ignore
                log.info("schedule %s on %s: %s", d.unit, d.machine_id, d.reason)
            elif isinstance(d, Unschedulable):
                reasons[d.unit] = d.reason
        # (Re)write every assignment whose entry differs from what the unit now wants:
        # new placements, desired-state changes (start/stop), replaced files.
        for unit, per in assignments.items():
            rec = c.units.get(unit)
            job = snap.jobs.get(unit)
            if rec is None or job is None:
                continue
            for mid, old in per.items():
                want = ScheduleEntry(unit, mid, job.target_state, rec.hash, job.xfleet.global_,
                                     self._entry_stop_bound(rec, job, old))
                if old != want:
                    ops.append(reg.assign_op(want))
        maintenance = dirty is None and bool(c.state.moves or c.state.draining)
        if maintenance:  # drains and moves are planned on full passes
            taken = {op.key for op in ops}  # the scheduler's own writes win over a move's
            ops += [op for op in self._move_ops(snap, decisions) if op.key not in taken]
        for unit, reason in reasons.items():
            if c.unschedulable.get(unit) != reason:
                if unit in self.slow_stops:  # in the first transaction, before its unassign:
                    ops.insert(0, reg.unschedulable_op(unit, reason))  # a new leader holds it
                else:
                    ops.append(reg.unschedulable_op(unit, reason))
        stale = c.unschedulable.keys() - reasons.keys()
        if dirty is not None:  # (followers placed with their target are no longer stuck)
            stale &= dirty | {d.unit for d in decisions if isinstance(d, Assign)}
        for unit in stale:
            ops.append(reg.unschedulable_op(unit, None))
        if ops:
            try:
                await reg.write_decisions(self.machine_id, lease, ops)
            except BaseException:
                self.standing.invalidate()  # its placements were not written
                raise
            # Fold our writes in now; their watch echoes are then no-ops.
            for op in ops:
                value = getattr(op, "value", None)
                self._apply_kv(c, op.key, value)
        if maintenance and any(op.key.startswith(reg.keys.moves) for op in ops):
            self._need_full = True  # the next phase of a move is judged on the next pass
            self._wake.set()
        self.reconciles += 1
        self.last_reconcile_s = time.perf_counter() - t0
        self._last_pass_end = clock.now()
        metrics.ENGINE_RECONCILES.inc()
        metrics.ENGINE_RECONCILE_SECONDS.observe(self.last_reconcile_s)
        by_check: dict[str, int] = {}
        for d in decisions:
            if isinstance(d, Unschedulable):
                check = d.filtered[-1][0] if d.filtered else "none"
                by_check[check] = by_check.get(check, 0) + 1
        if full:
            metrics.ENGINE_UNSCHEDULABLE.clear()
            for check, n in by_check.items():
                metrics.ENGINE_UNSCHEDULABLE.labels(check).set(n)
        return len(ops)


    def _move_ops(self, snap: ClusterSnapshot, decisions: list[Decision]) -> list[Op]:
        """The writes of this pass's moves (`fleetd.engine.moves.plan`); units the scheduler
        itself (un)assigns this pass start no move."""
        c, reg = self.cache, self.registry
        touched = {d.unit for d in decisions if isinstance(d, Assign | Unassign)}
        snap = moves.with_decisions(snap, decisions)  # planned beside this pass's placements
        mp = moves.plan(snap, c.state.moves, c.state.states, c.state.draining, time.time_ns(),
                        self.pipeline)
        ops: list[Op] = []

        def entry(unit: str, mid: str) -> ScheduleEntry | None:
            rec, job = c.units.get(unit), snap.jobs.get(unit)
            if rec is None or job is None:
                return None
            return ScheduleEntry(unit, mid, job.target_state, rec.hash, job.xfleet.global_,
                                 self._entry_stop_bound(rec, job,
                                                        c.schedule.get(unit, {}).get(mid)))

        for m in mp.start:
            e = entry(m.unit, m.to_machine)
            if e is not None and m.unit not in touched:
                ops += [reg.assign_op(e), reg.move_op(m.unit, m)]
                log.info("move %s: starting it on %s before stopping it on %s", m.unit,
                         m.to_machine, m.from_machine)
        for m in mp.stop_first:
            if m.unit not in touched:
                ops += [reg.unassign_op(m.from_machine, m.unit), reg.move_op(m.unit, m)]
                log.info("move %s: stopping it on %s first (%s)", m.unit, m.from_machine,
                         m.reason or "MoveBeforeStop=false")
        for m in mp.finish:
            ops += [reg.unassign_op(m.from_machine, m.unit), reg.move_op(m.unit, None)]
            log.info("move %s: active on %s; stopping it on %s", m.unit, m.to_machine,
                     m.from_machine)
        for m in mp.release:
            ops.append(reg.move_op(m.unit, None))
            e = entry(m.unit, m.to_machine) if m.unit in mp.placed else None
            if e is not None:
                ops.append(reg.assign_op(e))
            log.info("move %s: stopped on %s; placing it %s", m.unit, m.from_machine,
                     f"on {m.to_machine}" if e is not None else "where it fits")
        for m, why in mp.abort:
            if (m.phase == "starting" and m.to_machine != m.from_machine
                    and m.to_machine in c.schedule.get(m.unit, {})):
                ops.append(reg.unassign_op(m.to_machine, m.unit))
            failed = replace(m, phase="failed", reason=why, since_ns=time.time_ns())
            ops.append(reg.move_op(m.unit, failed if m.unit in c.units else None))
            log.info("move %s off %s failed: %s", m.unit, m.from_machine, why)
        for m in mp.blocked:
            ops.append(reg.move_op(m.unit, m))
        for unit in mp.forget:
            ops.append(reg.move_op(unit, None))
        for unit, mid in mp.unassign_global:
            if unit not in touched:
                ops.append(reg.unassign_op(mid, unit))
                log.info("drain %s: global unit %s leaves it", mid, unit)
        return ops


def _units_on(c: EngineCache, machine_ids: Iterable[str]) -> dict[str, frozenset[str]]:
    """The units assigned to each of `machine_ids`, in one pass over the schedule (a
    thousand machines leaving at once must not cost a thousand passes over 10,000 units)."""
    wanted = set(machine_ids)
    found: dict[str, set[str]] = {mid: set() for mid in wanted}
    if wanted:
        for unit, per in c.schedule.items():
            if len(per) == 1:
                (mid,) = per
                if mid in wanted:
                    found[mid].add(unit)
            else:
                for mid in wanted.intersection(per):
                    found[mid].add(unit)
    return {mid: frozenset(units) for mid, units in found.items()}
