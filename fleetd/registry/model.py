"""The cluster model: the one decoder of etcd keys and the one in-memory copy of the cluster.

Pure: no I/O, no etcd client, no grpc. `decode_change` is the only code that turns a key and
its value into a typed `Change`; a stored key (read by a range) is decoded exactly as a put
event of that key. `ClusterState` is the cluster as of one revision; `apply` folds one change
in and says which objects it touched (the events a dashboard would push). The API's view, the
gRPC Watch, the engine and the agent all keep their copy as a `ClusterState`, fed by
`Registry.follow`.

Where earlier decoders disagreed, these rules won (tests/unit/test_decoder.py pins them):
- An object is named by its key, never by the ids inside its value: the key is what a later
  delete names, so a record whose embedded id disagreed would have outlived its deletion.
- An unschedulable reason is `{"reason": ...}`; a plain JSON string is accepted as the reason
  too (the registry's reader accepted it, the engine's crashed on it).
- API-set metadata is decoded once, tolerantly (`decode_metadata`: garbage reads as `{}`);
  values are strings or null.
- A machine key must be exactly `machines/<id>`: deeper keys under it are no machine.
- A value that cannot be decoded (not JSON, wrong shape) is ignored, as an unknown key is:
  `decode_change` returns None and logs it, so one corrupt key cannot stop every reader.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from typing import Any

from fleetd.registry.schema import (
    MOVE_PHASES,
    DrainRecord,
    Keys,
    MachineRecord,
    MoveRecord,
    ScheduleEntry,
    UnitRecord,
    UnitStateRecord,
    decode,
    decode_metadata,
    merge_metadata,
)

log = logging.getLogger("fleetd.registry")

#: The kinds of `Change`.
KINDS = ("unit", "desired", "unschedulable", "schedule", "state", "machine", "metadata",
         "leader", "drain", "move")

# What `ClusterState.apply` reports (the kinds of `fleetd.registry.changes.Event`).
MACHINE_PUT = "machine_put"
MACHINE_DELETED = "machine_deleted"
UNIT_PUT = "unit_put"
UNIT_DELETED = "unit_deleted"
STATE_PUT = "state_put"
STATE_DELETED = "state_deleted"


@dataclass(frozen=True)
class Change:
    """One decoded change under the prefix.

    kind: one of `KINDS`; `record` is the new decoded value (UnitRecord, desired state str,
    reason str, ScheduleEntry, UnitStateRecord, MachineRecord, metadata dict, leader machine
    id str, DrainRecord, MoveRecord), None when the key was deleted."""

    kind: str
    revision: int
    name: str  # unit name ("" for machine, metadata and leader changes)
    machine_id: str  # "" for unit-wide changes
    record: Any


@dataclass(frozen=True)
class UnitView:
    """One unit as the API shows it: its record and desired state."""

    record: UnitRecord
    desired: str


def decode_change(keys: Keys, key: str, value: bytes | None, revision: int) -> Change | None:
    """The typed change of `key` now holding `value` (None: deleted); None for keys outside
    the schema and for values that cannot be decoded (logged)."""
    try:
        return _decode(keys, key, value, revision)
    except (ValueError, TypeError, AttributeError, RecursionError) as e:
        log.warning("ignoring undecodable value of %s: %s", key, e)
        return None


def _decode(k: Keys, key: str, value: bytes | None, rev: int) -> Change | None:
    if key.startswith(k.units):
        name = key[len(k.units):]
        return Change("unit", rev, name, "", _value(UnitRecord, value)) if name else None
    if key.startswith(k.desired):
        name = key[len(k.desired):]
        return Change("desired", rev, name, "",
                      None if value is None else str(json.loads(value))) if name else None
    if key.startswith(k.unschedulable):
        name = key[len(k.unschedulable):]
        return Change("unschedulable", rev, name, "",
                      None if value is None else decode_reason(value)) if name else None
    if key.startswith(k.schedule):
        mid, name = k.split_assignment(key)
        if not mid or not name:
            return None
        return Change("schedule", rev, name, mid, _value(ScheduleEntry, value))
    if key.startswith(k.states):
        name, _, mid = key[len(k.states):].rpartition("/")
        if not mid or not name:
            return None
        return Change("state", rev, name, mid, _value(UnitStateRecord, value))
    if key.startswith(k.machines):
        mid = key[len(k.machines):]
        if not mid or "/" in mid:
            return None
        return Change("machine", rev, "", mid, _machine(_value(MachineRecord, value)))
    if key.startswith(k.metadata):
        mid = key[len(k.metadata):]
        if not mid:
            return None
        return Change("metadata", rev, "", mid, None if value is None else decode_metadata(value))
    if key.startswith(k.drain):
        mid = key[len(k.drain):]
        if not mid or "/" in mid:
            return None
        return Change("drain", rev, "", mid, _drain(mid, value))
    if key.startswith(k.moves):
        name = key[len(k.moves):]
        return Change("move", rev, name, "", _move(name, value)) if name else None
    if key == k.leader:
        return Change("leader", rev, "", "", None if value is None else value.decode())
    return None


def _value(cls: type, value: bytes | None) -> Any:
    return None if value is None else decode(cls, value)


def _drain(machine_id: str, value: bytes | None) -> DrainRecord | None:
    """A drain record, named by its key (as every object is); a pinned mode it does not know
    reads as "leave", the one that moves nothing by force."""
    if value is None:
        return None
    rec = decode(DrainRecord, value)
    pinned = rec.pinned if rec.pinned in ("leave", "stop") else "leave"
    return replace(rec, machine_id=machine_id, pinned=pinned,
                   include_global=bool(rec.include_global))


def _move(name: str, value: bytes | None) -> MoveRecord | None:
    """A move record, named by its key; one of an unknown phase is none (ignored)."""
    if value is None:
        return None
    rec = decode(MoveRecord, value)
    if rec.phase not in MOVE_PHASES:
        raise ValueError(f"unknown move phase {rec.phase!r}")
    return replace(rec, unit=name)


# -- resources --
_CAPACITY_FIELDS = ("cpu", "memory", "reserved_cpu", "reserved_memory")


def _machine(rec: MachineRecord | None) -> MachineRecord | None:
    """A machine record with its capacity fields checked: a value that is no non-negative
    integer reads as 0 (not published), so one bad field cannot hide the machine."""
    if rec is None:
        return None
    bad = {name: 0 for name in _CAPACITY_FIELDS
           if not isinstance(v := getattr(rec, name), int) or isinstance(v, bool) or v < 0}
    return replace(rec, **bad) if bad else rec  # type: ignore[arg-type]
# -- end resources --


def decode_reason(raw: bytes) -> str:
    """An unschedulable reason: `{"reason": ...}`, or a plain JSON string."""
    v = json.loads(raw)
    return str(v.get("reason", "")) if isinstance(v, dict) else str(v)


@dataclass
class ClusterState:
    """The cluster as of `revision`: what the API lists, what the engine schedules from.

    `units` and `machines` are what readers use (a unit with its desired state; a machine
    with API-set metadata laid over its configured metadata); `records`, `desired` and
    `configured` are the raw values they are derived from, kept so changes can be applied."""

    revision: int
    units: dict[str, UnitView]
    machines: dict[str, MachineRecord]
    schedule: dict[str, dict[str, ScheduleEntry]]  # unit -> machine -> entry
    states: dict[str, dict[str, UnitStateRecord]]  # unit -> machine -> state
    unschedulable: dict[str, str]
    # API-set metadata by machine id (null = removed); `machines` already has it merged in.
    metadata: dict[str, dict[str, str | None]] = field(default_factory=dict)
    records: dict[str, UnitRecord] = field(default_factory=dict)
    desired: dict[str, str] = field(default_factory=dict)  # also for units without a record
    configured: dict[str, MachineRecord] = field(default_factory=dict)  # as registered
    leader: str = ""  # the engine leader's machine id, when the leader key is followed
    draining: dict[str, DrainRecord] = field(default_factory=dict)  # by machine id
    moves: dict[str, MoveRecord] = field(default_factory=dict)  # by unit name

    def __post_init__(self) -> None:
        # Built by hand (tests, partial reads): derive the raw maps from the shown ones.
        for name, view in self.units.items():
            self.records.setdefault(name, view.record)
            self.desired.setdefault(name, view.desired)
        for mid, m in self.machines.items():
            self.configured.setdefault(mid, m)

    @classmethod
    def empty(cls, revision: int = 0) -> ClusterState:
        return cls(revision, {}, {}, {}, {}, {})

    def apply(self, c: Change) -> list[tuple[str, str, str]]:
        """Fold one change in; the (event kind, unit, machine id) of each object it touched."""
        self.revision = max(self.revision, c.revision)
        out: list[tuple[str, str, str]] = []
        if c.kind in ("unit", "desired"):
            store: dict[str, Any] = self.records if c.kind == "unit" else self.desired
            if c.record is None:
                store.pop(c.name, None)
            else:
                store[c.name] = c.record
            rec = self.records.get(c.name)
            if rec is None:
                if self.units.pop(c.name, None) is not None:
                    out.append((UNIT_DELETED, c.name, ""))
            else:
                self.units[c.name] = UnitView(rec, self.desired.get(c.name, "inactive"))
                out.append((UNIT_PUT, c.name, ""))
        elif c.kind == "unschedulable":
            if c.record is None:
                self.unschedulable.pop(c.name, None)
            else:
                self.unschedulable[c.name] = c.record
            if c.name in self.units:
                out.append((UNIT_PUT, c.name, ""))
        elif c.kind == "schedule":
            _put_nested(self.schedule, c.name, c.machine_id, c.record)
            if c.name in self.units:
                out.append((UNIT_PUT, c.name, ""))
        elif c.kind == "state":
            _put_nested(self.states, c.name, c.machine_id, c.record)
            out.append((STATE_DELETED if c.record is None else STATE_PUT, c.name,
                        c.machine_id))
            if c.name in self.units:  # a unit's current state follows its reported states
                out.append((UNIT_PUT, c.name, ""))
        elif c.kind == "machine":
            if c.record is None:
                self.configured.pop(c.machine_id, None)
                if self.machines.pop(c.machine_id, None) is not None:
                    out.append((MACHINE_DELETED, "", c.machine_id))
            else:
                self.configured[c.machine_id] = c.record
                self._merge(c.machine_id)
                out.append((MACHINE_PUT, "", c.machine_id))
        elif c.kind == "metadata":
            if c.record is None:
                self.metadata.pop(c.machine_id, None)
            else:
                self.metadata[c.machine_id] = c.record
            if c.machine_id in self.configured:
                self._merge(c.machine_id)
                out.append((MACHINE_PUT, "", c.machine_id))
        elif c.kind == "leader":
            self.leader = c.record or ""
        elif c.kind == "drain":
            if c.record is None:
                self.draining.pop(c.machine_id, None)
            else:
                self.draining[c.machine_id] = c.record
            if c.machine_id in self.machines:
                out.append((MACHINE_PUT, "", c.machine_id))
        elif c.kind == "move":
            if c.record is None:
                self.moves.pop(c.name, None)
            else:
                self.moves[c.name] = c.record
            if c.name in self.units:
                out.append((UNIT_PUT, c.name, ""))
        return out

    def _merge(self, machine_id: str) -> None:
        m = self.configured[machine_id]
        md = self.metadata.get(machine_id)
        self.machines[machine_id] = (
            replace(m, metadata=merge_metadata(m.metadata, md)) if md else m)


def _put_nested(store: dict[str, dict[str, Any]], name: str, machine_id: str,
                record: Any) -> None:
    if record is None:
        per = store.get(name)
        if per is not None:
            per.pop(machine_id, None)
            if not per:
                del store[name]
    else:
        store.setdefault(name, {})[machine_id] = record


def state_from(keys: Keys, kvs: Any, revision: int) -> ClusterState:
    """The state of a range read: every stored key decoded as a put at `revision`.

    `kvs`: objects with `key` (str) and `value` (bytes), as the etcd client returns them."""
    st = ClusterState.empty(revision)
    for kv in kvs:
        c = decode_change(keys, kv.key, kv.value, 0)
        if c is not None:
            st.apply(c)
    st.revision = revision
    return st
