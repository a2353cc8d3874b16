"""Machine maintenance: drain (take a machine out of service, moving its units away), undrain.

MACHINE is a machine id, a unique prefix of one, or the machine's IP; fleetd resolves it
(`FleetService.resolve_machine`), so every front end accepts the same forms.
"""

from __future__ import annotations

import argparse

from fleetctl.command import Command, api_errors, client, echo, flag
from fleetctl.table import short_id


def _machine_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("machine", metavar="MACHINE",
                   help="machine id, a unique prefix of one, or the machine's IP")


def _drain_args(p: argparse.ArgumentParser) -> None:
    _machine_argument(p)
    p.add_argument("--pinned", default="leave", choices=("leave", "stop"),
                   help="units that cannot move make-before-break (a MachineID pin, "
                        "Conflicts): leave them running (default), or stop them and start "
                        "them elsewhere where their constraints allow")
    flag(p, "--include-global", help="global units leave the machine too")
    flag(p, "--no-block", help="return once the machine is marked draining")
    p.add_argument("--deadline", type=float, default=0.0, metavar="S",
                   help="give up after S seconds (0: wait for ever), naming each unit "
                        "still there and why (exit 1)")


@api_errors
def _drain(a: argparse.Namespace) -> int:
    c = client()
    m = c.drain_machine(a.machine, a.pinned, a.include_global)
    echo(f"Machine {short_id(m.id, False)} ({m.ip or '-'}) is draining")
    return 0


@api_errors
def _undrain(a: argparse.Namespace) -> int:
    m = client().undrain_machine(a.machine)
    echo(f"Machine {short_id(m.id, False)} ({m.ip or '-'}) is eligible for new units again")
    return 0


COMMANDS = {c.name: c for c in [
    Command("drain", "Take a machine out of service: no new units go there and its units "
            "move to other machines.", _drain_args, _drain),
    Command("undrain", "Make a draining machine eligible for new units again (its units do "
            "not move back).", _machine_argument, _undrain),
]}
