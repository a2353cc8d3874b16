"""Which objects a batch of decoded changes touched: the events a dashboard is pushed.

`WatchView` keeps a `ClusterState` current from the registry's decoded changes and says, for
each batch, which machines, units and unit states changed, so a front end can push the new
version of each (or its deletion). Pure: no I/O here (the model itself is
`fleetd.registry.model`); `Registry.follow` drives it for the gRPC `Watch`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fleetd.registry.model import (
    MACHINE_DELETED,
    MACHINE_PUT,
    STATE_DELETED,
    STATE_PUT,
    UNIT_DELETED,
    UNIT_PUT,
    Change,
    ClusterState,
)
from fleetd.registry.schema import MachineRecord

__all__ = ["MACHINE_DELETED", "MACHINE_PUT", "STATE_DELETED", "STATE_PUT", "UNIT_DELETED",
           "UNIT_PUT", "Event", "WatchView", "diff"]


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
        over them (default: the snapshot's own raw records)."""
        self.state = state
        if configured is not None:
            state.configured = dict(configured)

    def apply(self, changes: Iterable[Change]) -> list[Event]:
        """Apply one batch of changes; the events it causes, one per changed object."""
        events: dict[tuple[str, str, str], Event] = {}
        for c in changes:
            for kind, name, mid in self.state.apply(c):
                key = (kind.split("_")[0], name, mid)
                events.pop(key, None)  # keep the latest kind, in the order last touched
                events[key] = Event(kind, c.revision, name, mid)
        return list(events.values())


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
