"""Commands that reach the machine running a unit: status and journal (served by fleetd on
that machine through the API, no SSH needed) and ssh (the system ssh client)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from fleetctl.command import OPTS, Command, Exit, api_errors, client, echo, fail, flag

if TYPE_CHECKING:
    from fleetctl.client import Client
    from fleetd.api.pb import fleet_pb2 as pb


def _unit(c: Client, arg: str) -> pb.Unit:
    from fleetctl.client import NotFoundError
    from fleetd.unit import normalize_name

    name = normalize_name(arg)
    try:
        return c.get_unit(name)
    except NotFoundError:
        fail(f"Unit {name} does not exist.")


def _machines_of(u: pb.Unit, verb: str) -> list[str]:
    if u.current_state == "inactive" or not u.machine_ids:
        fail(f"Unit {u.name} does not appear to be {verb}.")
    return list(u.machine_ids)


STATUS_HELP = """Print `systemctl status` of units, from the machines that run them.

Exits with systemctl's status code (3 when a unit is not running). A global unit shows one
status per machine."""


def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("units", nargs="+", metavar="UNIT", help="unit names")
    p.add_argument("--lines", "-n", type=int, default=0, metavar="N",
                   help="journal lines to show (systemctl's default: 10)")


@api_errors
def _status(a: argparse.Namespace) -> int:
    from fleetctl.client import NotRunningError

    c = client()
    worst = 0
    try:
        found = [_unit(c, u) for u in a.units]
        plan = [(u, _machines_of(u, "loaded")) for u in found]
        first = True
        for u, machines in plan:
            for mid in machines:
                if not first:
                    echo("")  # systemctl separates units with a blank line
                first = False
                r = c.unit_status(u.name, mid, a.lines)
                if u.is_global:
                    echo(f"# {u.name} on machine {mid}")
                sys.stdout.write(r.output)
                worst = worst or r.exit_code
    except NotRunningError as e:
        fail(str(e))
    return worst


def _journal_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("unit", metavar="UNIT", help="unit name")
    p.add_argument("--lines", "-n", type=int, default=10, metavar="N",
                   help="number of recent lines")
    flag(p, "--follow", "-f", help="keep printing new entries as they arrive")
    p.add_argument("--output", "-o", default="short", metavar="FORMAT",
                   help="journalctl output format (short, json, cat, ...)")
    p.add_argument("--machine", default="", metavar="ID",
                   help="for a global unit: the machine (id prefix)")


@api_errors
def _journal(a: argparse.Namespace) -> int:
    if a.lines < 0:
        fail("--lines must not be negative")
    c = client()
    try:
        u = _unit(c, a.unit)
        machines = _machines_of(u, "running")
        if a.machine:
            machines = [m for m in machines if m.startswith(a.machine)]
            if not machines:
                fail(f"unit {u.name} does not run on machine {a.machine}")
        if len(machines) > 1:
            fail(f"global unit {u.name} runs on {len(machines)} machines: choose one with "
                 "--machine")
        out = sys.stdout.buffer
        with c.journal(u.name, machines[0], a.lines or 10, a.output, a.follow) as chunks:
            for chunk in chunks:
                out.write(chunk.data)
                out.flush()
    except KeyboardInterrupt:
        raise Exit(130) from None
    except BrokenPipeError:
        raise Exit(0) from None
    return 0


def _ssh_args(p: argparse.ArgumentParser) -> None:
    flag(p, "--machine", "-m", help="TARGET is a machine")
    flag(p, "--unit", "-u", help="TARGET is a unit")
    flag(p, "--forward-agent", "-A", help="forward the local ssh-agent")
    flag(p, "--print-command", help="print the ssh command line instead of running it")
    p.add_argument("target", metavar="TARGET", help="machine id (or prefix) or unit name")
    p.usage = "fleetctl ssh [-h] [-m] [-u] [-A] [--print-command] TARGET [COMMAND ...]"


def _ssh(a: argparse.Namespace) -> int:
    import dataclasses
    import shlex

    from fleetctl.client import FleetctlError
    from fleetctl.sshcmd import machine_argv

    if a.machine and a.unit:
        fail("Both machine and unit flags provided, please specify only one.")
    command = [x for x in a.command if x != "--"] if a.command[:1] == ["--"] \
        else list(a.command)
    c = client()
    try:
        host = _find_host(c, a.target, as_machine=a.machine, as_unit=a.unit)
    except FleetctlError as e:
        fail(f"Unable to proceed: {e}")
    opts = dataclasses.replace(OPTS.ssh, forward_agent=a.forward_agent)
    argv = machine_argv(opts, host, command)
    if a.print_command:
        echo(shlex.join(argv))
        return 0
    opts.ensure_known_hosts_dir()
    sys.stdout.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        fail(f"cannot run ssh: {e.strerror}")


def _find_host(c: Client, target: str, *, as_machine: bool, as_unit: bool) -> str:
    from fleetctl.client import FleetctlError
    from fleetd.unit import normalize_name

    machines = c.list_machines()
    ip_of = {m.id: m.ip for m in machines}
    by_machine = [m for m in machines if m.id.startswith(target)] if not as_unit else []
    unit_host = ""
    if not as_machine:
        u: pb.Unit | None
        try:
            u = c.get_unit(normalize_name(target))
        except FleetctlError:
            u = None
        if u is not None:
            if u.is_global:
                if as_unit:
                    raise FleetctlError(f"global unit {u.name} runs on several machines; "
                                        "ssh to a machine instead")
            elif not u.machine_ids:
                if as_unit:
                    raise FleetctlError(f"unit {u.name} is not scheduled to any machine")
            else:
                unit_host = ip_of.get(u.machine_ids[0], "")
                if not unit_host:
                    raise FleetctlError(f"machine of unit {u.name} is not live")
    if len(by_machine) > 1:
        raise FleetctlError(f"found more than one machine matching {target}")
    if by_machine and unit_host:
        raise FleetctlError(f"ambiguous argument, both machine and unit found for `{target}`; "
                            "use --machine or --unit")
    if by_machine:
        if not by_machine[0].ip:
            raise FleetctlError("could not determine address of machine")
        return str(by_machine[0].ip)
    if unit_host:
        return unit_host
    if as_unit:
        raise FleetctlError(f"unit {normalize_name(target)} does not exist")
    if as_machine:
        raise FleetctlError(f"machine {target} does not exist")
    raise FleetctlError(f"could not find matching unit or machine for {target}")


COMMANDS = {c.name: c for c in [
    Command("status", STATUS_HELP, _status_args, _status),
    Command("journal", "Print the journal of a unit from the machine that runs it (streamed "
            "live with -f).", _journal_args, _journal),
    Command("ssh", "Open a shell (or run COMMAND...) over SSH on a machine or on the machine "
            "of a unit.", _ssh_args, _ssh, rest="command"),
]}
