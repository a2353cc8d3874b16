"""Blocking commands wait on events: the units' changes arrive on fleetd's Watch stream
(limited to those units), instead of fleetctl re-listing the cluster until they are there.

The stream opens after the command's own write, so its snapshot already holds that write;
every later change arrives as an event. `--block-attempts N` bounds the wait as fleet did
(N attempts of half a second each; 0 waits for ever).
"""

from __future__ import annotations

from collections.abc import Iterable

from fleetctl.command import echo
from fleetctl.table import short_id

#: typing's names are for the type checker only: importing typing cost each run ~5 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from fleetctl.client import Client
    from fleetd.api.pb import fleet_pb2 as pb

BLOCK_ATTEMPT_S = 0.5  # one --block-attempts attempt, as fleet's


class UnitsSeen:
    """The named units and their reported states, as the Watch stream has told them."""

    def __init__(self) -> None:
        self.units: dict[str, pb.Unit] = {}
        self.states: dict[str, dict[str, pb.UnitState]] = {}

    def apply(self, ev: pb.WatchEvent) -> None:
        kind = type(ev).Kind
        if ev.kind == kind.SNAPSHOT:
            self.units = {u.name: u for u in ev.snapshot.units}
            self.states = {}
            for s in ev.snapshot.states:
                self.states.setdefault(s.name, {})[s.machine_id] = s
        elif ev.kind == kind.UNIT_PUT:
            self.units[ev.unit.name] = ev.unit
        elif ev.kind == kind.UNIT_DELETED:
            self.units.pop(ev.name, None)
        elif ev.kind == kind.STATE_PUT:
            self.states.setdefault(ev.state.name, {})[ev.state.machine_id] = ev.state
        elif ev.kind == kind.STATE_DELETED:
            self.states.get(ev.name, {}).pop(ev.machine_id, None)


def reached(u: pb.Unit | None, states: Iterable[pb.UnitState], target: str
            ) -> tuple[bool, str]:
    """(whether the unit is at `target` as its agents report it, "machine/ip" where)."""
    states = list(states)
    if u is None:
        return target == "inactive", ""
    if target == "inactive":
        return not u.machine_ids and not states, ""
    if u.is_global:
        return bool(u.machine_ids), ""
    for s in states:
        if s.machine_id in u.machine_ids and s.state == target:
            return True, f"{short_id(s.machine_id, False)}/{s.machine_ip}"
    return False, ""


def _verb(target: str) -> str:
    return {"launched": "start", "loaded": "load", "inactive": "unload"}.get(target, target)


def wait_for(c: Client, names: list[str], target: str, attempts: int) -> bool:
    """Wait until every unit reaches `target`, printing fleet's line for each as it does.
    False (after an error line per unit still waited for) if the attempts ran out."""
    from fleetctl.client import DeadlineExceeded

    pending = list(dict.fromkeys(names))
    seen = UnitsSeen()
    timeout_s = attempts * BLOCK_ATTEMPT_S if attempts > 0 else None
    try:
        with c.watch(units=True, states=True, names=pending, timeout_s=timeout_s) as events:
            for ev in events:
                seen.apply(ev)
                if _report(seen, pending, target):
                    return True
    except DeadlineExceeded:
        pass
    for name in pending:
        echo(f"Error waiting for unit {name} to reach state {target}", err=True)
    return False


def _report(seen: UnitsSeen, pending: list[str], target: str) -> bool:
    """Print fleet's line for each pending unit now at `target` and drop it from `pending`;
    True when none is left."""
    for name in list(pending):
        u = seen.units.get(name)
        ok, where = reached(u, seen.states.get(name, {}).values(), target)
        if not ok:
            continue
        pending.remove(name)
        if target == "inactive":
            echo(f"Unit {name} inactive")
        elif u is not None and u.is_global:
            echo(f"Triggered global unit {name} {_verb(target)}")
        else:
            echo(f"Unit {name} {target} on {where}")
    return not pending
