"""Applying the registry's decoded changes to a `ClusterState`.

`WatchView` keeps a `ClusterState` current from the registry's decoded changes and says, for
each batch, which machines, units and unit states changed, so a front end can push the new
version of each (or its deletion). Pure: no I/O here; the gRPC `Watch` and the API's
in-memory `ClusterView` both drive it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from fleetd.registry.registry import Change, ClusterState, UnitView
from fleetd.registry.schema import MachineRecord, merge_metadata

MACHINE_PUT = "machine_put"
MACHINE_DELETED = "machine_deleted"
UNIT_PUT = "unit_put"
UNIT_DELETED = "unit_deleted"
STATE_PUT = "state_put"
STATE_DELETED = "state_deleted"


@dataclass(frozen=True)
class Event:
    """One change to push: `kind` (above), the unit name and/or machine id, and the revision."""

    kind: str
    revision: int
    name: str = ""
    machine_id: str = ""


class WatchView:
    """The cluster state as of the last applied change, starting from a snapshot."""

    def __init__(self, state: ClusterState,
                 configured: dict[str, MachineRecord] | None = None) -> None:
        """`configured`: the machines as they registered, before API-set metadata is laid
        over them (default: the snapshot's machines, which already carry it)."""
        self.state = state
        self.metadata: dict[str, dict[str, str | None]] = state.metadata
        self._configured: dict[str, MachineRecord] = dict(
            state.machines if configured is None else configured)
        self._records = {n: v.record for n, v in state.units.items()}
        self._desired = {n: v.desired for n, v in state.units.items()}

    def apply(self, changes: Iterable[Change]) -> list[Event]:
        """Apply one batch of changes; the events it causes, one per changed object."""
        events: dict[tuple[str, str, str], Event] = {}

        def emit(kind: str, rev: int, name: str = "", mid: str = "") -> None:
            key = (kind.split("_")[0], name, mid)
            events.pop(key, None)  # keep the latest kind, in the order last touched
            events[key] = Event(kind, rev, name, mid)

        st = self.state
        for c in changes:
            st.revision = max(st.revision, c.revision)
            if c.kind in ("unit", "desired"):
                store = self._records if c.kind == "unit" else self._desired
                if c.record is None:
                    store.pop(c.name, None)  # type: ignore[attr-defined]
                else:
                    store[c.name] = c.record  # type: ignore[index]
                rec = self._records.get(c.name)
                if rec is None:
                    if st.units.pop(c.name, None) is not None:
                        emit(UNIT_DELETED, c.revision, c.name)
                else:
                    st.units[c.name] = UnitView(rec, self._desired.get(c.name, "inactive"))
                    emit(UNIT_PUT, c.revision, c.name)
            elif c.kind == "unschedulable":
                if c.record is None:
                    st.unschedulable.pop(c.name, None)
                else:
                    st.unschedulable[c.name] = c.record
                if c.name in st.units:
                    emit(UNIT_PUT, c.revision, c.name)
            elif c.kind == "schedule":
                per = st.schedule.setdefault(c.name, {})
                if c.record is None:
                    per.pop(c.machine_id, None)
                    if not per:
                        st.schedule.pop(c.name, None)
                else:
                    per[c.machine_id] = c.record
                if c.name in st.units:
                    emit(UNIT_PUT, c.revision, c.name)
            elif c.kind == "state":
                per_state = st.states.setdefault(c.name, {})
                if c.record is None:
                    per_state.pop(c.machine_id, None)
                    if not per_state:
                        st.states.pop(c.name, None)
                    emit(STATE_DELETED, c.revision, c.name, c.machine_id)
                else:
                    per_state[c.machine_id] = c.record
                    emit(STATE_PUT, c.revision, c.name, c.machine_id)
                if c.name in st.units:  # a unit's current state follows its reported states
                    emit(UNIT_PUT, c.revision, c.name)
            elif c.kind == "machine":
                if c.record is None:
                    self._configured.pop(c.machine_id, None)
                    if st.machines.pop(c.machine_id, None) is not None:
                        emit(MACHINE_DELETED, c.revision, "", c.machine_id)
                else:
                    self._configured[c.machine_id] = c.record
                    self._merge(c.machine_id)
                    emit(MACHINE_PUT, c.revision, "", c.machine_id)
            elif c.kind == "metadata":
                if c.record is None:
                    self.metadata.pop(c.machine_id, None)
                else:
                    self.metadata[c.machine_id] = {
                        str(k): (None if v is None else str(v)) for k, v in c.record.items()}
                if c.machine_id in self._configured:
                    self._merge(c.machine_id)
                    emit(MACHINE_PUT, c.revision, "", c.machine_id)
        return list(events.values())

    def _merge(self, machine_id: str) -> None:
        m = self._configured[machine_id]
        md = self.metadata.get(machine_id)
        self.state.machines[machine_id] = (
            replace(m, metadata=merge_metadata(m.metadata, md)) if md else m)


def diff(old: ClusterState, new: ClusterState) -> list[Event]:
    """The events that turn `old` into `new` (both whole snapshots), at `new.revision`: what a
    watcher that lost its history (a compacted watch) missed in between. Deletions first, then
    machines, units and states, each in name order."""
    rev = new.revision
    out: list[Event] = []
    out += [Event(MACHINE_DELETED, rev, "", m) for m in sorted(old.machines.keys()
                                                               - new.machines.keys())]
    out += [Event(UNIT_DELETED, rev, u) for u in sorted(old.units.keys() - new.units.keys())]
    old_states = {(u, m): s for u, per in old.states.items() for m, s in per.items()}
    new_states = {(u, m): s for u, per in new.states.items() for m, s in per.items()}
    out += [Event(STATE_DELETED, rev, u, m) for u, m in sorted(old_states.keys()
                                                               - new_states.keys())]
    out += [Event(MACHINE_PUT, rev, "", m) for m in sorted(new.machines)
            if old.machines.get(m) != new.machines[m]]

    def unit_changed(u: str) -> bool:
        return (old.units.get(u) != new.units[u]
                or old.schedule.get(u, {}).keys() != new.schedule.get(u, {}).keys()
                or old.states.get(u) != new.states.get(u)
                or old.unschedulable.get(u) != new.unschedulable.get(u))

    out += [Event(UNIT_PUT, rev, u) for u in sorted(new.units) if unit_changed(u)]
    out += [Event(STATE_PUT, rev, u, m) for u, m in sorted(new_states)
            if old_states.get((u, m)) != new_states[(u, m)]]
    return out
