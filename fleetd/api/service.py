"""The API's service layer: every front end (gRPC, HTTP v1) calls these operations.

Validates input with the unit model, writes through the registry, and raises `ApiError`
subclasses that each front end maps to its own status codes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Generic, TypeVar

from fleetd import metadata
from fleetd.engine import moves
from fleetd.engine._placement import pipeline_for
from fleetd.engine.scheduler import ClusterSnapshot, explain
from fleetd.engine.snapshot import (
    UnitParseCache,
    build_snapshot,
    template_refusal,
    unseen_machines,
)
from fleetd.registry import (
    TARGET_STATES,
    ClusterState,
    DrainRecord,
    EtcdError,
    MachineRecord,
    MoveRecord,
    Registry,
    RegistryError,
    UnitConflict,
    UnitNotFound,
    UnitRecord,
    UnitStateRecord,
)
from fleetd.registry.schema import DRAIN_PINNED
from fleetd.registry.view import ClusterView
from fleetd.unit import Unit, UnitError, UnitName
from fleetd.unit.host_units import host_unit_reason

_RANK = {"inactive": 0, "loaded": 1, "launched": 2}
T = TypeVar("T")
_MACHINE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


class ApiError(Exception):
    """A refused request; the message names the unit or field and the problem."""

    code = "internal"


class InvalidArgument(ApiError):
    code = "invalid_argument"


class NotFound(ApiError):
    code = "not_found"


class AlreadyExists(ApiError):
    code = "already_exists"


class Unavailable(ApiError):
    code = "unavailable"


@dataclass(frozen=True)
class UnitInfo:
    """A unit as the API presents it."""

    name: str
    text: str
    hash: str
    desired_state: str
    current_state: str
    machine_ids: tuple[str, ...]
    unschedulable_reason: str
    description: str
    is_global: bool
    move: MoveRecord | None = None  # a move of it in flight, pinned, blocked or failed


@dataclass(frozen=True)
class ExplanationInfo:
    """`fleetctl why`: the scheduler's verdict for one unit (see `scheduler.explain`)."""

    name: str
    desired_state: str
    scheduled_on: tuple[str, ...]
    feasible: tuple[str, ...]
    rejected: tuple[tuple[str, str, str], ...]  # machine, check, detail
    unschedulable_reason: str
    scores: tuple[tuple[str, float, str], ...] = ()  # feasible machine, score, detail; best first


class RowCache(Generic[T]):
    """The rows of the last list answer as ``encode`` made them, each with what proves it
    current (a unit's stamp in the view, `ClusterView.unit_stamps`; a state's very record):
    the next answer re-encodes only the rows whose object changed since, so a 10,000-row
    list costs its changes, not 10,000 encodings. Each answer keeps only its own rows."""

    def __init__(self, encode: Callable[[Any], T]) -> None:
        self.encode = encode
        self.generation = -1  # the view's generation the rows were made in
        self.rows: dict[Any, tuple[Any, T]] = {}


def _parse(name: str, text: str) -> Unit:
    try:
        return Unit.from_text(name, text)
    except UnitError as e:
        raise InvalidArgument(str(e)) from None


def _api_error(e: Exception) -> ApiError:
    """The API's answer to a registry refusal or an etcd failure."""
    if isinstance(e, UnitConflict):
        return AlreadyExists(str(e))
    if isinstance(e, UnitNotFound):
        return NotFound(str(e))
    return Unavailable(str(e))


def _brand_new(unit: Unit, desired_state: str) -> UnitInfo:
    """A unit just created: nothing is scheduled or reported yet (no read-back needed)."""
    return UnitInfo(unit.name, unit.text, unit.hash, desired_state, "inactive", (), "",
                    unit.file.description(), unit.xfleet.global_)


def _check_name(name: str) -> UnitName:
    """The parsed unit name, or InvalidArgument saying what is wrong with it."""
    try:
        return UnitName.parse(name)
    except UnitError as e:
        raise InvalidArgument(str(e)) from None


def _refuse_template_activation(name: UnitName, desired_state: str) -> None:
    if name.is_template and desired_state not in ("", "inactive"):
        raise InvalidArgument(template_refusal(name))


class FleetService:
    """Cluster operations over one registry; `leader_id` reports who leads the engine."""

    def __init__(self, registry: Registry, view: ClusterView | None = None, *,
                 placement: str = "spread") -> None:
        self.pipeline = pipeline_for(placement)  # resources: engine_placement, as the engine
        self.registry = registry
        self.view = view  # in-memory, watch-fed reads (fleetd/registry/view.py) when given
        self.parsed = UnitParseCache()  # the engine's kind of cache (fleetd/engine/snapshot.py)

    async def _state(self) -> ClusterState:
        try:
            if self.view is not None:
                return await self.view.snapshot()
            return await self.registry.cluster_state()
        except EtcdError as e:
            raise Unavailable(str(e)) from None

    # --- reads ----------------------------------------------------------------------------
    async def list_machines(self) -> tuple[list[MachineRecord], str | None]:
        st = await self._state()
        leader = await self.registry.leader()
        return sorted(st.machines.values(), key=lambda m: m.id), leader

    async def draining(self) -> frozenset[str]:
        """Ids of the machines being drained (live or not)."""
        return frozenset((await self._state()).draining)

    # -- resources --
    async def list_machines_reserved(
            self) -> tuple[list[MachineRecord], str | None, dict[str, tuple[int, int]]]:
        """`list_machines`, plus what the units scheduled on each machine reserve there
        (machine id -> (milli-CPUs, bytes)), from the same read."""
        st = await self._state()
        leader = await self.registry.leader()
        return sorted(st.machines.values(), key=lambda m: m.id), leader, self.reserved(st)

    def reserved(self, st: ClusterState, machine_id: str | None = None
                 ) -> dict[str, tuple[int, int]]:
        """(milli-CPUs, bytes) the units scheduled on each machine (or on ``machine_id``)
        reserve there; a unit whose file is invalid reserves nothing."""
        out: dict[str, tuple[int, int]] = {}
        for unit, per in st.schedule.items():
            if machine_id is not None and machine_id not in per:
                continue
            rec = st.records.get(unit)
            if rec is None:
                continue
            xfleet = self.parsed.get(rec)
            if isinstance(xfleet, str) or not (xfleet.cpu or xfleet.memory):
                continue
            for mid in per if machine_id is None else (machine_id,):
                cpu, memory = out.get(mid, (0, 0))
                out[mid] = (cpu + xfleet.cpu, memory + xfleet.memory)
        return out
    # -- end resources --

    async def list_units(self, with_text: bool = False) -> list[UnitInfo]:
        st = await self._state()
        return [self._info(st, n, with_text) for n in sorted(st.units)]

    def _cached(self, st: ClusterState, cache: RowCache[Any]) -> bool:
        """Whether `st` is the view's own state (stamped), readying ``cache`` for it."""
        view = self.view
        if view is None or st is not view.state:
            return False  # a fallback read: nothing to compare with
        if cache.generation != view.generation:
            cache.rows, cache.generation = {}, view.generation
        return True

    async def list_unit_rows(self, cache: RowCache[T]) -> list[T]:
        """`list_units()` (no texts), each unit as ``cache.encode`` made it from its
        `UnitInfo`: from the view, re-encoding only the units changed since the last call."""
        st = await self._state()
        names = sorted(st.units)
        if not self._cached(st, cache):
            return [cache.encode(self._info(st, n, False)) for n in names]
        assert self.view is not None
        stamps, old, encode = self.view.unit_stamps, cache.rows, cache.encode
        new: dict[Any, tuple[Any, T]] = {}
        out: list[T] = []
        for n in names:
            stamp = stamps.get(n, 0)
            hit = old.get(n)
            if hit is None or hit[0] != stamp:
                hit = (stamp, encode(self._info(st, n, False)))
            new[n] = hit
            out.append(hit[1])
        cache.rows = new
        return out

    async def list_state_rows(self, cache: RowCache[T], names: list[str] | None = None,
                              machine_id: str = "") -> list[T]:
        """`list_states()`, each (state, machine IP) as ``cache.encode`` made it,
        re-encoding only the states (or IPs) that changed since the last call: a state record
        is immutable and replaced on every change, so the same object is the same row."""
        states, ips = await self.list_states(names, machine_id)
        old, encode = cache.rows, cache.encode
        new: dict[Any, tuple[Any, T]] = {}
        out: list[T] = []
        for s in states:
            key, ip = (s.unit, s.machine_id), ips.get(s.machine_id, "")
            hit = old.get(key)
            if hit is None or hit[0][0] is not s or hit[0][1] != ip:
                hit = ((s, ip), encode((s, ip)))
            new[key] = hit
            out.append(hit[1])
        cache.rows = new
        return out

    async def get_unit(self, name: str) -> UnitInfo:
        _check_name(name)
        try:
            st = await self.registry.unit_state(name)
        except EtcdError as e:
            raise Unavailable(str(e)) from None
        if st is None:
            raise NotFound(f"unit {name} does not exist")
        return self._info(st, name, True)

    async def list_states(self, names: list[str] | None = None,
                          machine_id: str = "") -> tuple[list[UnitStateRecord], dict[str, str]]:
        """Reported states (filtered) and the IP of every machine, by id. Reads only the
        state and machine keys (not the whole cluster)."""
        if self.view is not None:
            st = await self._state()
            wanted = names or st.states.keys()
            states = [s for n in wanted for s in st.states.get(n, {}).values()]
            machines: list[MachineRecord] = list(st.machines.values())
        else:
            try:
                states, machines = await self.registry.states_and_machines(names or None)
            except EtcdError as e:
                raise Unavailable(str(e)) from None
        out = [s for s in states if s.machine_id == machine_id] if machine_id else states
        out.sort(key=attrgetter("unit", "machine_id"))  # (in C: 10,000 states per list)
        return out, {m.id: m.ip for m in machines}

    def _summary(self, rec: UnitRecord) -> tuple[str, bool]:
        """(Description, Global) of a unit file, parsed once per (name, hash)."""
        parsed = self.parsed.parsed(rec)
        return parsed.description, parsed.xfleet is not None and parsed.xfleet.global_

    def _info(self, st: ClusterState, name: str, with_text: bool) -> UnitInfo:
        view = st.units[name]
        rec = view.record
        machines = tuple(sorted(st.schedule.get(name, {})))
        current = "inactive"
        for mid, s in st.states.get(name, {}).items():
            if mid in machines and _RANK.get(s.state, 0) > _RANK[current]:
                current = s.state
        desc, is_global = self._summary(rec)
        return UnitInfo(name, rec.text if with_text else "", rec.hash, view.desired, current,
                        machines, st.unschedulable.get(name, ""), desc, is_global,
                        st.moves.get(name))

    # --- writes ---------------------------------------------------------------------------
    async def create_unit(self, name: str, text: str, desired_state: str = "",
                          replace: bool = False) -> tuple[UnitInfo, bool]:
        """Submit a unit (from `text`, or from its template when `text` is empty)."""
        unit, desired_state = await self._prepared(name, text, desired_state)
        return await self._submit(unit, desired_state, replace)

    async def _submit(self, unit: Unit, desired_state: str, replace: bool
                      ) -> tuple[UnitInfo, bool]:
        """`create_unit`'s writes for a unit `_prepared` checked."""
        name = unit.name
        rec = UnitRecord(unit.name, unit.text, unit.hash)
        try:
            if replace and await self._get_record(name) is not None:
                await self.registry.replace_unit(rec)
                created = True
                if desired_state != "inactive":
                    await self.registry.set_target_state(name, desired_state)
            else:
                created = await self.registry.create_unit(rec, desired_state)
                if not created and desired_state != "inactive":
                    await self.registry.set_target_state(name, desired_state)
        except (UnitConflict, UnitNotFound, EtcdError) as e:
            raise _api_error(e) from None
        if created and not replace:
            return _brand_new(unit, desired_state), True
        return await self.get_unit(name), created

    async def create_units(self, requests: Sequence[tuple[str, str, str, bool]]
                           ) -> list[tuple[UnitInfo, bool] | ApiError]:
        """`create_unit` of each (name, text, desired state, replace), answers in request
        order (a refused unit as its error). Every unit is checked as if those before it in
        the call existed (a template and its instances, MachineOf chains, in one call); the
        new ones are then written together (`Registry.create_units`). Replacements, a name
        given twice, and a unit that turned out to exist already are then done one by one."""
        out: list[tuple[UnitInfo, bool] | ApiError | None] = [None] * len(requests)
        batch: list[tuple[int, Unit, str]] = []
        pending: dict[str, UnitRecord] = {}  # units of this call checked so far
        alone: list[int] = []
        for i, (name, text, desired, replace) in enumerate(requests):
            if replace or name in pending:
                alone.append(i)
                continue
            try:
                unit, state = await self._prepared(name, text, desired, pending)
            except ApiError as e:
                out[i] = e
                continue
            pending[unit.name] = UnitRecord(unit.name, unit.text, unit.hash)
            batch.append((i, unit, state))
        written = await self.registry.create_units([(pending[u.name], state)
                                                    for _, u, state in batch])
        same: dict[int, tuple[Unit, str]] = {}
        for (i, unit, state), got in zip(batch, written, strict=True):
            if got is True:
                out[i] = (_brand_new(unit, state), True)
            elif isinstance(got, Exception):
                out[i] = _api_error(got)
            else:  # the very same file exists: its desired state still has to be set
                same[i] = (unit, state)
        for i in sorted([*alone, *same]):
            try:
                out[i] = (await self._submit(*same[i], False) if i in same
                          else await self.create_unit(*requests[i]))
            except ApiError as e:
                out[i] = e
        return [o for o in out if o is not None]

    async def _prepared(self, name: str, text: str, desired_state: str,
                        pending: Mapping[str, UnitRecord] | None = None) -> tuple[Unit, str]:
        """The unit `create_unit` would submit and its desired state, checked: InvalidArgument
        or NotFound saying what is wrong. `pending` are units taken as existing (submitted
        earlier in the same call)."""
        desired_state = desired_state or "inactive"
        if desired_state not in TARGET_STATES:
            raise InvalidArgument(f"invalid desired state {desired_state!r}: expected one of "
                                  + ", ".join(TARGET_STATES))
        parsed = _check_name(name)
        if (host := host_unit_reason(name)) is not None:
            raise InvalidArgument(host)
        if parsed.is_template:
            # fleet's API creates a template with any desiredState (python-fleet sends
            # "launched" by default) and only refuses to activate an existing one; a template
            # is never scheduled, so it is kept as what it is: submitted.
            desired_state = "inactive"
        pending = pending or {}
        if not text:
            if not parsed.is_instance:
                raise InvalidArgument(f"unit {name}: no unit file given")
            tmpl = await self._get_record(parsed.template(), pending)
            if tmpl is None:
                existing = await self._get_record(name, pending)
                if existing is None:
                    raise NotFound(f"unit {name} not found and template {parsed.template()} "
                                   "does not exist")
                text = existing.text
            else:
                text = tmpl.text
        unit = _parse(name, text)
        await self._refuse_machine_of_cycle(unit, pending)
        return unit, desired_state

    async def _get_record(self, name: str, pending: Mapping[str, UnitRecord] | None = None
                          ) -> UnitRecord | None:
        """The unit's record in etcd (or in `pending`, checked first)."""
        if pending and name in pending:
            return pending[name]
        try:
            view = await self.registry.get_unit(name)
        except EtcdError as e:
            raise Unavailable(str(e)) from None
        return view.record if view else None

    async def _refuse_machine_of_cycle(self, unit: Unit,
                                       pending: Mapping[str, UnitRecord] | None = None) -> None:
        """InvalidArgument naming the cycle if following `unit`'s MachineOf targets (as they
        are submitted now) leads back to it: such units could never be placed."""
        path = [unit.name]
        seen = {unit.name}

        async def walk(current: Unit) -> str | None:
            for target in current.xfleet.machine_of:
                if target == unit.name:
                    return " -> ".join([*path, target])
                if target in seen:
                    continue
                rec = await self._get_record(target, pending)
                if rec is None:
                    continue
                try:
                    follower = Unit.from_text(target, rec.text)
                except UnitError:
                    continue
                seen.add(target)
                path.append(target)
                found = await walk(follower)
                if found:
                    return found
                path.pop()
            return None

        cycle = await walk(unit)
        if cycle:
            raise InvalidArgument(f"unit {unit.name}: MachineOf cycle {cycle}: units that "
                                  "follow each other can never be scheduled")

    async def set_target_state(self, name: str, desired_state: str) -> UnitInfo:
        parsed = _check_name(name)
        if desired_state not in TARGET_STATES:
            raise InvalidArgument(f"invalid desired state {desired_state!r}: expected one of "
                                  + ", ".join(TARGET_STATES))
        _refuse_template_activation(parsed, desired_state)
        if desired_state != "inactive":
            rec = await self._get_record(name)
            if rec is not None:
                try:
                    await self._refuse_machine_of_cycle(Unit.from_text(name, rec.text))
                except UnitError:
                    pass  # an unparsable file is the engine's to report
        try:
            await self.registry.set_target_state(name, desired_state)
        except (UnitNotFound, EtcdError) as e:
            raise _api_error(e) from None
        return await self.get_unit(name)

    async def destroy_unit(self, name: str) -> None:
        _check_name(name)
        try:
            await self.registry.destroy_unit(name)
        except (UnitNotFound, EtcdError) as e:
            raise _api_error(e) from None

    async def explain_unit(self, name: str) -> ExplanationInfo:
        """Run the scheduler's checks for `name` on the current cluster state."""
        _check_name(name)
        st = await self._state()
        if name not in st.units:
            raise NotFound(f"unit {name} does not exist")
        ex = explain(self.snapshot_of(st), name, self.pipeline)
        return ExplanationInfo(name, st.units[name].desired, tuple(ex.scheduled_on),
                               tuple(ex.feasible), tuple(ex.rejected),
                               st.unschedulable.get(name, ""), ex.scores)

    def snapshot_of(self, st: ClusterState) -> ClusterSnapshot:
        """The scheduler's input for `st`, built as the engine builds it. Machines that still
        have units but no key count as in their grace (the API cannot know when they left)."""
        departed, held = unseen_machines(st.schedule, st.machines)
        # `st.machines` has the API-set metadata merged in already.
        return build_snapshot(
            {n: v.record for n, v in st.units.items()}, {n: v.desired for n, v in st.units.items()},
            st.machines, st.schedule, parsed=self.parsed, departed=departed, held=held,
            draining=st.draining).snapshot

    # --- machine metadata (HTTP v1 PATCH /machines) --------------------------------------
    async def set_machine_metadata(
            self, changes: dict[str, list[tuple[str, str | None]]]) -> None:
        """Set (value) or remove (None) API metadata keys, per machine id, atomically.

        Machines need not be registered: the values persist and apply when they join."""
        if len(changes) > 64:  # one etcd transaction: a compare and a put per machine
            raise InvalidArgument(f"metadata of {len(changes)} machines in one request: "
                                  "at most 64")
        for mid, items in changes.items():
            if not _MACHINE_ID.fullmatch(mid) or mid in (".", ".."):
                raise InvalidArgument(f"invalid machine id {mid[:140]!r}: expected 1-128 of "
                                      "A-Z a-z 0-9 _ . : -")
            if len(items) > metadata.MAX_METADATA_KEYS:
                raise InvalidArgument(f"{len(items)} metadata changes for machine {mid}: at "
                                      f"most {metadata.MAX_METADATA_KEYS}")
            try:
                for key, value in items:
                    metadata.check_key(key)
                    if value is not None:
                        metadata.check_value(key, value)
            except metadata.MetadataError as e:
                raise InvalidArgument(str(e)) from None
        try:
            await self.registry.update_machine_metadata(changes)
        except metadata.MetadataError as e:
            raise InvalidArgument(str(e)) from None
        except RegistryError as e:
            raise Unavailable(str(e)) from None
        except EtcdError as e:
            raise Unavailable(str(e)) from None

    # --- machine maintenance (fleetctl drain / undrain) -----------------------------------
    async def resolve_machine(self, ref: str) -> MachineRecord:
        """The live machine `ref` names: its full id, a unique id prefix, or its IP."""
        ref = ref.strip()
        if not ref:
            raise InvalidArgument("no machine given: expected a machine id, a unique prefix "
                                  "of one, or an IP")
        st = await self._state()
        if ref in st.machines:
            return st.machines[ref]
        found = [m for m in st.machines.values() if m.id.startswith(ref) or m.ip == ref]
        if not found:
            raise NotFound(f"no live machine matches {ref[:140]!r}")
        if len(found) > 1:
            raise InvalidArgument(f"{ref!r} matches {len(found)} machines ("
                                  + ", ".join(sorted(m.id for m in found)) + "): give more of "
                                  "the id")
        return found[0]

    async def drain_machine(self, ref: str, pinned: str = "",
                            include_global: bool = False) -> MachineRecord:
        """Mark the machine `ref` names draining: nothing new goes there and the engine moves
        its units away (`fleetd.engine.moves`). Draining again updates how it drains."""
        pinned = pinned or "leave"
        if pinned not in DRAIN_PINNED:
            raise InvalidArgument(f"invalid pinned mode {pinned!r}: expected one of "
                                  + ", ".join(DRAIN_PINNED))
        m = await self.resolve_machine(ref)
        try:
            await self.registry.set_drain(DrainRecord(m.id, pinned, include_global,
                                                      time.time_ns()))
        except EtcdError as e:
            raise Unavailable(str(e)) from None
        return m

    async def undrain_machine(self, ref: str) -> MachineRecord:
        """End the drain of the machine `ref` names (its units do not move back)."""
        m = await self.resolve_machine(ref)
        try:
            await self.registry.clear_drain(m.id)
        except EtcdError as e:
            raise Unavailable(str(e)) from None
        return m

    async def move_unit(self, name: str, target: str = "") -> tuple[str, str]:
        """Ask the engine to move unit `name` to machine `target` (a machine reference; ""
        for the scheduler's best); (from machine, target id or ""). Refused with the
        pipeline's reason when the target violates a constraint."""
        _check_name(name)
        st = await self._state()
        if name not in st.units:
            raise NotFound(f"unit {name} does not exist")
        snap = self.snapshot_of(st)
        job = snap.jobs.get(name)
        if job is None or job.target_state == "inactive":
            raise InvalidArgument(f"unit {name} is not scheduled (start or load it first)")
        if job.xfleet.global_:
            raise InvalidArgument(f"unit {name} is global: it runs on every machine")
        where = sorted(st.schedule.get(name, {}))
        current = st.moves.get(name)
        if current is not None and current.phase in ("requested", "starting", "stopping"):
            raise AlreadyExists(f"unit {name} is already moving ({current.phase}, from "
                                f"{current.from_machine})")
        if len(where) != 1:
            raise InvalidArgument(f"unit {name} is scheduled on {len(where)} machines, not one")
        source = where[0]
        to = ""
        # A MachineOf group moves as one, from its leader (fleetd.engine.moves).
        alone = moves.follower_refusal(snap, name)
        if alone:
            raise InvalidArgument(f"cannot move {name} alone: {alone}")
        pin = moves.group_pin(snap, moves.group_of(snap, name, source))
        if pin:
            raise InvalidArgument(f"cannot move {name}: {pin}")
        if target:
            to = (await self.resolve_machine(target)).id
            why = moves.refusal(snap, name, to, self.pipeline)
            if why:
                raise InvalidArgument(f"cannot move {name} to {to}: {why}")
        else:
            best, why = moves.destination(snap, name, self.pipeline)
            if best is None:
                raise InvalidArgument(f"cannot move {name}: {why}")
        try:
            ok = await self.registry.request_move(
                MoveRecord(name, source, to, "requested", "", time.time_ns()))
        except EtcdError as e:
            raise Unavailable(str(e)) from None
        if not ok:
            raise AlreadyExists(f"unit {name} is already moving")
        return source, to
