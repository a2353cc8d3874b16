"""The etcd key schema: every key fleet-py writes, and the JSON records stored in them.

All keys live under a configurable prefix (`etcd_key_prefix`, default `/_coreos.com/fleet/`,
fleet's own). `<p>` below is that prefix without its trailing slash.

| key                                  | value (JSON)          | lifetime                         |
| ------------------------------------ | --------------------- | -------------------------------- |
| `<p>/unit/<name>`                    | `UnitRecord`          | from submit until destroy        |
| `<p>/desired/<name>`                 | `"inactive"`/`"loaded"`/`"launched"` | same as the unit  |
| `<p>/schedule/<machine-id>/<name>`   | `ScheduleEntry`       | written by the engine leader     |
| `<p>/unschedulable/<name>`           | `{"reason": ...}`     | written by the engine leader     |
| `<p>/machines/<machine-id>`          | `MachineRecord`       | on the machine's lease           |
| `<p>/state/<name>/<machine-id>`      | `UnitStateRecord`     | on the reporting machine's lease |
| `<p>/engine/leader`                  | machine id            | on the leader's machine lease    |
| `<p>/metadata/<machine-id>`          | `{key: str or null}`  | persistent (set through the API) |
| `<p>/drain/<machine-id>`             | `DrainRecord`         | persistent (drain until undrain) |
| `<p>/move/<name>`                    | `MoveRecord`          | a move in flight (engine leader) |

Why this shape: unit bodies are stored once; desired state is separate so `fleetctl stop` is a
one-key write; assignments are keyed by machine so an agent watches only its own prefix and one
scheduling decision wakes one agent; presence, published states and leadership hang off leases
so they vanish on their own when a machine dies.

Metadata set through the API (HTTP v1 `PATCH /fleet/v1/machines`) lives in
`<p>/metadata/<machine-id>`, not on any lease: it survives the machine's fleetd restarting and
the machine leaving and rejoining. Its values are laid over the metadata the machine publishes
from its configuration (`merge_metadata`); a `null` value is a tombstone that hides a configured
key. Everything that schedules or shows metadata uses the merged view.

A draining machine (`fleetctl drain`) has `<p>/drain/<machine-id>`, apart from its lease for
the same reason: it survives the machine's fleetd restarting; `fleetctl undrain` deletes it.

A unit being moved (`fleetctl move`, or off a draining machine) has `<p>/move/<name>`: the
API writes only a request (phase "requested", create-only), the engine leader everything after
(see `fleetd.engine.moves`). While a make-before-break move is "starting", the unit has a
plain schedule entry on both machines; the move record says which one is the new copy.

`Keys` builds the keys; one function parses them back: `fleetd.registry.model.decode_change`
(a stored key read by a range is decoded exactly as a put event of it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

TARGET_STATES = ("inactive", "loaded", "launched")
DEFAULT_PREFIX = "/_coreos.com/fleet/"


@dataclass(frozen=True)
class UnitRecord:
    """A submitted unit file: its name, the text as submitted and fleet's SHA1 hash of it."""

    name: str
    text: str
    hash: str


@dataclass(frozen=True)
class ScheduleEntry:
    """The engine's instruction to one machine: run `unit` (file `hash`) in `target_state`.

    `stop_bound_s`: the longest whole stop of any version of the unit's file assigned there
    while this assignment stood (0: the default bound), so that after the machine leaves the
    engine holds the unit long enough even when the file was replaced while the machine was
    cut off and may still run, and stop, the old version (`fencing.unit_stop_bound_s`)."""

    unit: str
    machine_id: str
    target_state: str
    hash: str
    is_global: bool = False
    stop_bound_s: float = 0.0


@dataclass(frozen=True)
class MachineRecord:
    """A live machine as its agent publishes it."""

    id: str
    ip: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    hostname: str = ""
    version: str = ""
    api_address: str = ""  # host:port where other fleetds reach this machine's gRPC API
    # -- resources: capacity as measured or configured (0 = not published: an older fleetd,
    # whose machine the engine does not limit), and the part kept for the host --
    cpu: int = 0  # milli-CPUs
    memory: int = 0  # bytes
    reserved_cpu: int = 0  # milli-CPUs kept for the host
    reserved_memory: int = 0  # bytes kept for the host
    # -- end resources --

    def allocatable(self) -> tuple[int, int]:
        """(milli-CPUs, bytes) units may reserve here; 0 for a resource not published."""
        cpu = max(0, self.cpu - self.reserved_cpu) if self.cpu > 0 else 0
        memory = max(0, self.memory - self.reserved_memory) if self.memory > 0 else 0
        return cpu, memory


@dataclass(frozen=True)
class UnitStateRecord:
    """What an agent observes of one unit on its machine (fleet's `state`/`UnitState`)."""

    unit: str
    machine_id: str
    hash: str
    state: str  # fleet's current state as the agent applied it: loaded / launched
    load_state: str
    active_state: str
    sub_state: str
    main_pid: int = 0
    updated_ns: int = 0
    error: str = ""  # why the agent refused or failed the unit ("" when it did not)


DRAIN_PINNED = ("leave", "stop")


@dataclass(frozen=True)
class DrainRecord:
    """A machine taken out of service: nothing new is placed there, its units move away.

    `pinned`: what happens to units that cannot move make-before-break (a `MachineID` pin,
    their own or in their `MachineOf` group): "leave" them running there, or "stop" them
    (then start them elsewhere when their constraints allow). `include_global`: global
    units leave it too."""

    machine_id: str
    pinned: str = "leave"
    include_global: bool = False
    since_ns: int = 0


MOVE_PHASES = ("requested", "starting", "stopping", "pinned", "blocked", "failed")


@dataclass(frozen=True)
class MoveRecord:
    """One unit on its way from `from_machine` to `to_machine` ("" = the scheduler's best).

    phase: "requested" (by the API), "starting" (the new copy is scheduled on `to_machine`; the
    old one stops once it is active), "stopping" (stop first: the old copy is unscheduled and
    the unit placed nowhere until it is inactive there), "pinned" (a draining machine's unit
    its constraints keep there, left as the drain asked: `reason` says which), "blocked" (it
    cannot move now, e.g. no other machine fits: `reason`), "failed" (`reason`)."""

    unit: str
    from_machine: str
    to_machine: str = ""
    phase: str = "requested"
    reason: str = ""
    since_ns: int = 0


_SCALARS = frozenset((str, int, float, bool, type(None)))
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def encode(record: Any) -> bytes:
    """JSON bytes of a record dataclass (or a plain JSON value)."""
    if hasattr(record, "__dataclass_fields__"):
        cls = type(record)
        names = _FIELD_NAMES.get(cls)
        if names is None:
            names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(record))
        flat = {name: getattr(record, name) for name in names}
        # `asdict` deep-copies every value (most of an encode's cost); a record of plain
        # values is the same JSON without it.
        record = flat if all(type(v) in _SCALARS for v in flat.values()) else asdict(record)
    return json.dumps(record, separators=(",", ":"), sort_keys=True).encode()


def decode(cls: type, raw: bytes) -> Any:
    """The record of type `cls` stored in `raw`; unknown fields are ignored (forward compat)."""
    data = json.loads(raw)
    names = cls.__dataclass_fields__.keys()  # type: ignore[attr-defined]
    return cls(**{k: v for k, v in data.items() if k in names})


def merge_metadata(configured: dict[str, str],
                   persisted: dict[str, str | None] | None) -> dict[str, str]:
    """A machine's effective metadata: API-set values over configured ones; null removes."""
    if not persisted:
        return dict(configured)
    out = dict(configured)
    for key, value in persisted.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def decode_metadata(raw: bytes) -> dict[str, str | None]:
    """The persisted metadata document of one machine (tolerant of garbage: {} then)."""
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): (None if v is None else str(v)) for k, v in data.items()}


class Keys:
    """Builds and parses every key of the schema for one prefix."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        p = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.root = p + "/"
        self.units = self.root + "unit/"
        self.desired = self.root + "desired/"
        self.schedule = self.root + "schedule/"
        self.unschedulable = self.root + "unschedulable/"
        self.machines = self.root + "machines/"
        self.states = self.root + "state/"
        self.leader = self.root + "engine/leader"
        self.metadata = self.root + "metadata/"
        self.drain = self.root + "drain/"
        self.moves = self.root + "move/"
        # Written by the API's views to prove themselves current (fleetd.registry.view); no
        # decoder reads it.
        self.sync = self.root + "sync"

    def unit(self, name: str) -> str:
        return self.units + name

    def desired_state(self, name: str) -> str:
        return self.desired + name

    def machine_schedule(self, machine_id: str) -> str:
        return f"{self.schedule}{machine_id}/"

    def assignment(self, machine_id: str, name: str) -> str:
        return f"{self.schedule}{machine_id}/{name}"

    def unschedulable_reason(self, name: str) -> str:
        return self.unschedulable + name

    def machine(self, machine_id: str) -> str:
        return self.machines + machine_id

    def state(self, name: str, machine_id: str) -> str:
        return f"{self.states}{name}/{machine_id}"

    def machine_metadata(self, machine_id: str) -> str:
        return self.metadata + machine_id

    def machine_drain(self, machine_id: str) -> str:
        return self.drain + machine_id

    def move(self, name: str) -> str:
        return self.moves + name

    @staticmethod
    def tail(key: str, prefix: str) -> str:
        """The part of `key` after `prefix`."""
        return key[len(prefix):]

    def split_assignment(self, key: str) -> tuple[str, str]:
        """(machine_id, unit) of a schedule key."""
        machine_id, _, name = self.tail(key, self.schedule).partition("/")
        return machine_id, name
