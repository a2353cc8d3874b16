"""Commands that reach the machine running a unit: status and journal (served by fleetd on
that machine through the API, no SSH needed) and ssh (the system ssh client)."""

from __future__ import annotations

import os
import sys
from typing import Any

import typer

from fleetctl.cli import OPTS, app, client, fail
from fleetctl.client import Client, FleetctlError, NotFoundError, NotRunningError


def _unit(c: Client, arg: str) -> Any:
    from fleetd.unit import normalize_name

    name = normalize_name(arg)
    try:
        return c.call("GetUnit", name=name)
    except NotFoundError:
        fail(f"Unit {name} does not exist.")
    raise AssertionError("unreachable")


def _machines_of(u: Any, verb: str) -> list[str]:
    if u.current_state == "inactive" or not u.machine_ids:
        fail(f"Unit {u.name} does not appear to be {verb}.")
    return list(u.machine_ids)


@app.command()
def status(units: list[str] = typer.Argument(..., help="unit names"),
           lines: int = typer.Option(0, "--lines", "-n",
                                     help="journal lines to show (systemctl's default: 10)")
           ) -> None:
    """Print `systemctl status` of units, from the machines that run them.

    Exits with systemctl's status code (3 when a unit is not running). A global unit shows one
    status per machine."""
    c = client()
    try:
        found = [_unit(c, a) for a in units]
        plan = [(u, _machines_of(u, "loaded")) for u in found]
        first, worst = True, 0
        for u, machines in plan:
            for mid in machines:
                if not first:
                    typer.echo("")  # systemctl separates units with a blank line
                first = False
                r = c.call("UnitStatus", name=u.name, machine_id=mid, lines=lines)
                if u.__getattribute__("global"):
                    typer.echo(f"# {u.name} on machine {mid}")
                sys.stdout.write(r.output)
                worst = worst or r.exit_code
    except NotRunningError as e:
        fail(str(e))
    except FleetctlError as e:
        fail(str(e), e.exit_code)
    raise typer.Exit(worst)


@app.command()
def journal(unit: str = typer.Argument(..., help="unit name"),
            lines: int = typer.Option(10, "--lines", "-n", help="number of recent lines"),
            follow: bool = typer.Option(False, "--follow", "-f",
                                        help="keep printing new entries as they arrive"),
            output: str = typer.Option("short", "--output", "-o",
                                       help="journalctl output format (short, json, cat, ...)"),
            machine: str = typer.Option("", "--machine",
                                        help="for a global unit: the machine (id prefix)"),
            ) -> None:
    """Print the journal of a unit from the machine that runs it (streamed live with -f)."""
    if lines < 0:
        fail("--lines must not be negative")
    c = client()
    try:
        u = _unit(c, unit)
        machines = _machines_of(u, "running")
        if machine:
            machines = [m for m in machines if m.startswith(machine)]
            if not machines:
                fail(f"unit {u.name} does not run on machine {machine}")
        if len(machines) > 1:
            fail(f"global unit {u.name} runs on {len(machines)} machines: choose one with "
                 "--machine")
        out = sys.stdout.buffer
        for chunk in c.stream("Journal", name=u.name, machine_id=machines[0],
                              lines=lines or 10, output=output, follow=follow):
            out.write(chunk.data)
            out.flush()
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except BrokenPipeError:
        raise typer.Exit(0) from None
    except FleetctlError as e:
        fail(str(e), e.exit_code)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ssh(ctx: typer.Context,
        target: str = typer.Argument(..., help="machine id (or prefix) or unit name"),
        machine: bool = typer.Option(False, "--machine", "-m", help="TARGET is a machine"),
        unit: bool = typer.Option(False, "--unit", "-u", help="TARGET is a unit"),
        forward_agent: bool = typer.Option(False, "--forward-agent", "-A",
                                           help="forward the local ssh-agent"),
        print_command: bool = typer.Option(False, "--print-command",
                                           help="print the ssh command line instead of "
                                                "running it")) -> None:
    """Open a shell (or run COMMAND...) over SSH on a machine or on the machine of a unit."""
    import dataclasses
    import shlex

    from fleetctl.sshcmd import machine_argv

    if machine and unit:
        fail("Both machine and unit flags provided, please specify only one.")
    command = [a for a in ctx.args if a != "--"] if ctx.args[:1] == ["--"] else list(ctx.args)
    c = client()
    try:
        host = _find_host(c, target, as_machine=machine, as_unit=unit)
    except FleetctlError as e:
        fail(f"Unable to proceed: {e}")
    opts = dataclasses.replace(OPTS.ssh, forward_agent=forward_agent)
    argv = machine_argv(opts, host, command)
    if print_command:
        typer.echo(shlex.join(argv))
        return
    opts.ensure_known_hosts_dir()
    sys.stdout.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        fail(f"cannot run ssh: {e.strerror}")


def _find_host(c: Client, target: str, *, as_machine: bool, as_unit: bool) -> str:
    from fleetd.unit import normalize_name

    machines = c.call("ListMachines").machines
    ip_of = {m.id: m.ip for m in machines}
    by_machine = [m for m in machines if m.id.startswith(target)] if not as_unit else []
    unit_host = ""
    if not as_machine:
        try:
            u = c.call("GetUnit", name=normalize_name(target))
        except (NotFoundError, FleetctlError):
            u = None
        if u is not None:
            if u.__getattribute__("global"):
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
