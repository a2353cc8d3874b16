"""Machine maintenance: drain (take a machine out of service, moving its units away), undrain,
and move (one unit to another machine).

MACHINE is a machine id, a unique prefix of one, or the machine's IP; fleetd resolves it
(`FleetService.resolve_machine`), so every front end accepts the same forms. The blocking
forms follow fleetd's Watch stream (the units' `move_*` fields say where each move stands);
nothing is re-listed in a loop. A drain is done once the machine runs no movable unit: each
one moved off and its old copy stopped there (as its agent reports it).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from fleetctl.command import Command, api_errors, client, echo, flag
from fleetctl.table import short_id

if TYPE_CHECKING:
    from fleetctl.wait import UnitsSeen
    from fleetd.api.pb import fleet_pb2 as pb

# Phases after which a unit stays where it is without more help (see fleetd.engine.moves).
_LEFT = ("pinned", "failed")
_DOWN = ("inactive", "failed", "")  # systemd ActiveStates of a copy that no longer runs


def _machine_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("machine", metavar="MACHINE",
                   help="machine id, a unique prefix of one, or the machine's IP")


def _blocking(p: argparse.ArgumentParser, what: str) -> None:
    flag(p, "--no-block", help=f"return once the {what} is recorded")
    p.add_argument("--deadline", type=float, default=0.0, metavar="S",
                   help="give up after S seconds (0: wait for ever), naming each unit "
                        "still there and why (exit 1)")


def _drain_args(p: argparse.ArgumentParser) -> None:
    _machine_argument(p)
    p.add_argument("--pinned", default="leave", choices=("leave", "stop"),
                   help="units pinned by MachineID (and their MachineOf groups): leave "
                        "them running (default), or stop them (they wait, unschedulable, "
                        "for the machine to be undrained)")
    flag(p, "--include-global", help="global units leave the machine too")
    _blocking(p, "drain")


def _status(u: pb.Unit) -> str:
    """One unit's move as a progress line's tail."""
    where = short_id(u.move_to, False) if u.move_to else ""
    if u.move_phase == "starting":
        return f"starting on {where} (stops here once active there)"
    if u.move_phase == "stopping":
        return "stopping here first, then starting " + (f"on {where}" if where
                                                         else "where it fits")
    if u.move_phase in ("pinned", "blocked", "failed"):
        return f"{u.move_phase}: {u.move_reason}"
    if u.move_phase == "requested":
        return "move requested"
    return "waiting for the engine"


def _on(seen: UnitsSeen, mid: str, include_global: bool) -> list[pb.Unit]:
    return sorted((u for u in seen.units.values() if mid in u.machine_ids
                   and u.desired_state != "inactive" and (include_global or not u.is_global)),
                  key=lambda u: u.name)


def _still_stopping(seen: UnitsSeen, mid: str, include_global: bool) -> list[str]:
    """Units moved off ``mid`` (no longer scheduled there) whose old copy systemd there has
    not stopped yet: the machine holds them until it has."""
    return sorted(name for name, per in seen.states.items()
                  if (s := per.get(mid)) is not None and s.active_state not in _DOWN
                  and (u := seen.units.get(name)) is not None and mid not in u.machine_ids
                  and (include_global or not u.is_global))


@api_errors
def _drain(a: argparse.Namespace) -> int:
    from fleetctl.client import DeadlineExceeded
    from fleetctl.wait import UnitsSeen

    c = client()
    m = c.drain_machine(a.machine, a.pinned, a.include_global)
    name = f"{short_id(m.id, False)} ({m.ip or '-'})"
    echo(f"Machine {name} is draining")
    if a.no_block:
        return 0
    seen = UnitsSeen()
    said: dict[str, str] = {}
    left: list[pb.Unit] = []
    try:
        with c.watch(units=True, states=True, timeout_s=a.deadline or None) as events:
            for ev in events:
                seen.apply(ev)
                left = _on(seen, m.id, a.include_global)
                stopping = _still_stopping(seen, m.id, a.include_global)
                here = {u.name for u in left} | set(stopping)
                for u in left:
                    line = _status(u)
                    if said.get(u.name) != line:
                        said[u.name] = line
                        echo(f"Unit {u.name}: {line}")
                for name in stopping:
                    line = "moved; its old copy here is stopping"
                    if said.get(name) != line:
                        said[name] = line
                        echo(f"Unit {name}: {line}")
                for gone in [n for n in said if n not in here]:
                    del said[gone]
                    u2 = seen.units.get(gone)
                    to = (", ".join(f"{short_id(x, False)}" for x in u2.machine_ids)
                          if u2 is not None and u2.machine_ids else "")
                    echo(f"Unit {gone} moved off {name}" + (f" to {to}" if to else ""))
                if not stopping and all(u.move_phase in _LEFT for u in left):
                    break
    except DeadlineExceeded:
        for u in left:
            echo(f"Error: unit {u.name} is still on {name}: {_status(u)}", err=True)
        for unit in _still_stopping(seen, m.id, a.include_global):
            echo(f"Error: unit {unit} moved but its old copy on {name} has not stopped",
                 err=True)
        echo(f"Error: drain of {name} not done after {a.deadline:g}s", err=True)
        return 1
    failed = [u for u in left if u.move_phase == "failed"]
    for u in left:
        echo(f"Unit {u.name} stays on {name}: {u.move_phase}: {u.move_reason}",
             err=u.move_phase == "failed")
    echo(f"Machine {name} is drained" + (" (but for the units above)" if left else ""))
    return 1 if failed else 0


@api_errors
def _undrain(a: argparse.Namespace) -> int:
    m = client().undrain_machine(a.machine)
    echo(f"Machine {short_id(m.id, False)} ({m.ip or '-'}) is eligible for new units again")
    return 0


def _move_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("unit", metavar="UNIT", help="the unit to move")
    p.add_argument("machine", metavar="MACHINE", nargs="?", default="",
                   help="where to (machine id, unique prefix, or IP); default: wherever the "
                        "scheduler ranks best")
    _blocking(p, "move")


@api_errors
def _move(a: argparse.Namespace) -> int:
    from fleetctl.client import DeadlineExceeded
    from fleetctl.wait import UnitsSeen, reached

    c = client()
    r = c.move_unit(a.unit, a.machine)
    source = r.from_machine
    echo(f"Moving {a.unit} off {short_id(source, False)}"
         + (f" to {short_id(r.to_machine, False)}" if r.to_machine else ""))
    if a.no_block:
        return 0
    seen = UnitsSeen()
    u: pb.Unit | None = None
    said = ""
    try:
        with c.watch(units=True, states=True, names=[a.unit],
                     timeout_s=a.deadline or None) as events:
            for ev in events:
                seen.apply(ev)
                u = seen.units.get(a.unit)
                if u is None:
                    echo(f"Error: unit {a.unit} was destroyed during the move", err=True)
                    return 1
                if u.move_phase == "failed":
                    echo(f"Error: moving {a.unit} failed: {u.move_reason}", err=True)
                    return 1
                if u.move_phase and _status(u) != said:
                    said = _status(u)
                    echo(f"Unit {a.unit}: {said}")
                target = u.desired_state
                ok, where = reached(u, seen.states.get(a.unit, {}).values(), target)
                if (not u.move_phase and ok and source not in u.machine_ids
                        and (not r.to_machine or list(u.machine_ids) == [r.to_machine])):
                    echo(f"Unit {a.unit} {target} on {where}")
                    return 0
    except DeadlineExceeded:
        pass
    echo(f"Error: unit {a.unit} did not move within {a.deadline:g}s"
         + (f": {_status(u)}" if u is not None else ""), err=True)
    return 1


COMMANDS = {c.name: c for c in [
    Command("drain", "Take a machine out of service: no new units go there and its units "
            "move to other machines.", _drain_args, _drain),
    Command("undrain", "Make a draining machine eligible for new units again (its units do "
            "not move back).", _machine_argument, _undrain),
    Command("move", "Move a unit to another machine, starting the new copy before stopping "
            "the old one.", _move_args, _move),
]}
