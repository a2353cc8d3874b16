"""The unit life-cycle commands: submit, load, start, stop, unload, destroy, and cat and why
to look at one unit."""

from __future__ import annotations

import argparse
import os
import sys

from fleetctl.command import (
    Command,
    api_errors,
    client,
    echo,
    fail,
    flag,
    units_argument,
    warn,
)

#: typing's names are for the type checker only: importing typing cost each run ~5 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from fleetctl.client import Client


# --- unit arguments ------------------------------------------------------------------------
def resolve_args(args: list[str]) -> list[tuple[str, str | None]]:
    """(unit name, path of the argument's local file or None) for each argument, by fleet's
    rule: the name is the argument's base name, `.service` appended when it has no unit
    type; the file is the argument itself (with that suffix) when it exists."""
    from fleetd.unit import UnitError, normalize_name, validate_name

    out = []
    for arg in args:
        path = normalize_name(arg)
        name = normalize_name(os.path.basename(arg))
        try:
            validate_name(name)
        except UnitError as e:
            fail(str(e))
        out.append((name, path if os.path.isfile(path) else None))
    return out


def read_unit_file(path: str) -> str:
    from fleetd.unit import MAX_UNIT_FILE_BYTES

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_UNIT_FILE_BYTES + 1)  # never slurp a huge file
    except OSError as e:
        fail(f"unable to read unit file {path}: {e.strerror}")
    if len(raw) > MAX_UNIT_FILE_BYTES:
        fail(f"unit file {path} is larger than {MAX_UNIT_FILE_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        fail(f"unit file {path} is not valid UTF-8 (byte {e.start})")


#: Desired states in which `<command> --replace` may replace a unit's file (fleet's rule: a
#: command never moves a unit backwards, e.g. `submit --replace` leaves a launched unit alone).
REPLACEABLE_IN = {"submit": ("inactive",), "load": ("inactive", "loaded"),
                  "start": ("inactive", "loaded", "launched")}


def _checked(name: str, text: str, source: str) -> str:
    """`text` if it is a valid unit file for `name` (an instance's template expanded for the
    instance); otherwise exit naming the unit and the file."""
    from fleetd.unit import Unit, UnitError

    try:
        Unit.from_text(name, text)
    except UnitError as e:
        fail(f"{e} (from {source})")
    return text


def _file_hash(text: str) -> str | None:
    from fleetd.unit import UnitError, UnitFile

    try:
        return UnitFile.parse(text).hash()
    except UnitError:
        return None


def normalize(arg: str) -> str:
    from fleetd.unit import normalize_name

    return normalize_name(arg)


class _Plan:
    """One CreateUnit to send. (A plain class: `dataclasses` imports `inspect`, 11 ms.)"""

    __slots__ = ("name", "replace", "text")

    def __init__(self, name: str, text: str, replace: bool) -> None:
        self.name = name
        self.text = text  # "" = the cluster instantiates the instance from its template
        self.replace = replace


def ensure_units(c: Client, args: list[str], command: str, desired: str = "",
                 replace: bool = False, already_set: set[str] | None = None) -> list[str]:
    """Make every argument a unit in the cluster, by fleet's rules, and return the names:

    1. a unit of that name in the cluster is used as it is (a warning if the local file, or
       the local template of an instance, differs; `--replace` replaces it with the local
       file instead, when the unit's desired state allows it for `command`);
    2. else the local file is submitted;
    3. else, for an instance, its template submitted in the cluster, or else the template
       file next to the argument (DIR/foo@.service for DIR/foo@1.service), is instantiated.

    Nothing is changed unless every argument is valid. Units created here get `desired` in
    the same call; their names are added to `already_set`."""
    from fleetctl.client import FleetctlError, NotFoundError
    from fleetd.unit import UnitName

    resolved = resolve_args(args)
    cluster = known_units(c, [n for name, _ in resolved for n in (name, *_template_of(name))])
    plans: list[_Plan] = []
    for arg, (name, path) in zip(args, resolved, strict=True):
        parsed = UnitName.parse(name)
        tmpl_path = None
        if parsed.is_instance:
            candidate = os.path.join(os.path.dirname(arg), parsed.template())
            tmpl_path = candidate if os.path.isfile(candidate) else None
        local: tuple[str, str] | None = None
        if path:
            local = (read_unit_file(path), f"local unit file {path}")
        elif tmpl_path:
            local = (read_unit_file(tmpl_path), f"local template unit file {tmpl_path}")
        existing = cluster.get(name)
        if existing is not None:
            differs = local is not None and _file_hash(local[0]) != existing.hash
            if not replace:
                if local is not None and differs:
                    warn(f"Unit {name} in the cluster differs from {local[1]}; "
                         "add --replace to override")
                continue
            if local is None:
                fail(f"unable to replace unit {name}: no unit file {normalize(arg)}"
                     + (f" nor template {parsed.template()} next to it"
                        if parsed.is_instance else ""))
            text = _checked(name, local[0], local[1])
            if not differs:
                echo(f"Found same Unit({name}) in the cluster, nothing to do")
            elif existing.desired_state not in REPLACEABLE_IN.get(command, ()):
                warn(f"can not replace Unit({name}) in state '{existing.desired_state}', "
                     "use the appropriate command")
            else:
                plans.append(_Plan(name, text, True))
            continue
        if path:
            plans.append(_Plan(name, _checked(name, read_unit_file(path), path), False))
            continue
        if not parsed.is_instance:
            fail(f"unable to find unit file {normalize(arg)}: no such file, and unit {name} "
                 "is not in the cluster")
        template = cluster.get(parsed.template())
        if template is not None:
            if tmpl_path and local is not None and _file_hash(local[0]) != template.hash:
                warn(f"Unit {template.name} in the cluster differs from {local[1]}; "
                     f"instantiating {name} from the cluster's")
            tmpl_text = c.get_unit(template.name).text
            _checked(name, tmpl_text, f"template {template.name} in the cluster")
            plans.append(_Plan(name, "", False))
        elif local is not None:
            plans.append(_Plan(name, _checked(name, local[0], local[1]), False))
        else:
            fail(f"unable to find unit file {normalize(arg)} or template "
                 f"{parsed.template()}: neither is in the cluster or on disk "
                 f"(looked for {os.path.join(os.path.dirname(arg), parsed.template())})")
    results = c.create_units((p.name, p.text, desired, p.replace) for p in plans)
    for plan, got in zip(plans, results, strict=True):
        if isinstance(got, NotFoundError):
            fail(str(got))
        if isinstance(got, FleetctlError):
            fail(str(got), got.exit_code)
        if already_set is not None and desired:
            already_set.add(plan.name)
    for plan in plans:
        if plan.replace:
            _replace_instances(c, plan.name)
    return [name for name, _ in resolved]


#: Up to this many names are looked up one by one (GetUnit, concurrently); more, and the
#: whole cluster is listed once.
FEW_UNITS = 16


def known_units(c: Client, names: list[str]) -> dict[str, Any]:
    """The units of `names` in the cluster, by name."""
    if len(set(names)) <= FEW_UNITS:
        return c.get_units(names)
    wanted = set(names)
    return {u.name: u for u in c.list_units() if u.name in wanted}


def _template_of(name: str) -> tuple[str, ...]:
    from fleetd.unit import UnitName

    parsed = UnitName.parse(name)
    return (parsed.template(),) if parsed.is_instance else ()


def _replace_instances(c: Client, template: str) -> None:
    """After replacing a template, give each submitted instance of it the new file too (the
    agents then restart them where they run)."""
    from fleetd.unit import UnitName

    parsed = UnitName.parse(template)
    if not parsed.is_template:
        return
    for u in c.list_units():
        n = UnitName.parse(u.name)
        if n.is_instance and n.template() == template:
            c.create_unit(u.name, "", "", replace=True)


# --- setting desired states ----------------------------------------------------------------
def set_state(args: list[str], target: str, no_block: bool, block_attempts: int,
              command: str = "", replace: bool = False) -> int:
    """Set the desired state of units; `command` (submit/load/start) first submits the
    arguments that are not in the cluster yet (see `ensure_units`). Unless `no_block`, wait
    for the units to get there (see fleetctl.wait)."""
    from fleetctl.client import NotFoundError
    from fleetctl.wait import wait_for

    if target != "inactive":
        from fleetd.unit import UnitName

        for name, _ in resolve_args(args):
            if UnitName.parse(name).is_template:
                fail(f"cannot activate template {name}: a template is only submitted; "
                     "start its instances (e.g. " + name.replace("@.", "@1.") + ")")
    c = client()
    done: set[str] = set()
    if command:
        names = ensure_units(c, args, command, target, replace=replace, already_set=done)
    else:
        names = [n for n, _ in resolve_args(args)]
        if target == "loaded":
            _refuse_stop_of_inactive(c, names)
    todo = [n for n in names if n not in done]  # the others got it in their CreateUnit
    for name, got in zip(todo, c.set_unit_target_states(todo, target), strict=True):
        if isinstance(got, NotFoundError):
            fail(f"unit {name} does not exist")
        if isinstance(got, Exception):
            raise got
    if no_block:
        return 0
    return 0 if wait_for(c, names, target, block_attempts) else 1


def _refuse_stop_of_inactive(c: Client, names: list[str]) -> None:
    """fleet refuses to stop a (non-global) unit that is not loaded anywhere."""
    units = known_units(c, names)
    for name in names:
        u = units.get(name)
        if u is None:
            fail(f"unit {name} does not exist")
        elif not u.is_global and u.desired_state == "inactive":
            fail(f"Unable to stop unit {name} in state inactive")


def _blocking(p: argparse.ArgumentParser, replace: str = "") -> None:
    units_argument(p)
    flag(p, "--no-block", help="do not wait until the units reach the state")
    p.add_argument("--block-attempts", type=int, default=0, metavar="N",
                   help="wait at most N attempts (0.5 s each); 0 waits forever")
    if replace:
        flag(p, "--replace", help=replace)


REPLACE_HELP = "replace the file of an existing unit and restart it where it runs"


def _submit_args(p: argparse.ArgumentParser) -> None:
    units_argument(p)
    flag(p, "--replace", help="replace the file of an existing unit")


@api_errors
def _submit(a: argparse.Namespace) -> int:
    ensure_units(client(), a.units, "submit", replace=a.replace)
    return 0


@api_errors
def _load(a: argparse.Namespace) -> int:
    return set_state(a.units, "loaded", a.no_block, a.block_attempts, "load", a.replace)


@api_errors
def _start(a: argparse.Namespace) -> int:
    return set_state(a.units, "launched", a.no_block, a.block_attempts, "start", a.replace)


@api_errors
def _stop(a: argparse.Namespace) -> int:
    return set_state(a.units, "loaded", a.no_block, a.block_attempts)


@api_errors
def _unload(a: argparse.Namespace) -> int:
    return set_state(a.units, "inactive", a.no_block, a.block_attempts)


@api_errors
def _destroy(a: argparse.Namespace) -> int:
    from fleetctl.client import NotFoundError

    c = client()
    names = [name for name, _ in resolve_args(a.units)]
    for name, got in zip(names, c.destroy_units(names), strict=True):
        if isinstance(got, NotFoundError):
            fail(f"unit {name} does not exist")
        if isinstance(got, Exception):
            raise got
        echo(f"Destroyed {name}")
    return 0


def _unit_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("unit", metavar="UNIT", help="unit name")


@api_errors
def _cat(a: argparse.Namespace) -> int:
    from fleetctl.client import NotFoundError

    name = normalize(a.unit)
    try:
        u = client().get_unit(name)
    except NotFoundError:
        fail(f"unit {name} not found")
    sys.stdout.write(u.text if u.text.endswith("\n") else u.text + "\n")
    return 0


@api_errors
def _why(a: argparse.Namespace) -> int:
    from fleetctl.client import NotFoundError

    name = normalize(a.unit)
    try:
        ex = client().explain_unit(name)
    except NotFoundError:
        fail(f"unit {name} does not exist")
    echo(f"Unit {name}: desired state {ex.desired_state}")
    if ex.scheduled_on:
        echo("Scheduled on: " + ", ".join(ex.scheduled_on))
    if ex.unschedulable_reason:
        echo("Not scheduled: " + ex.unschedulable_reason)
    echo("Feasible machines: " + (", ".join(ex.feasible) or "none"))
    for r in ex.rejected:
        echo(f"  {r.machine_id}: rejected by {r.check}: {r.detail}")
    if ex.scores:
        echo("Ranking of the feasible machines (best first):")
    for sc in ex.scores:
        echo(f"  {sc.machine_id}: score {sc.score:.3f}: {sc.detail}")
    return 0


COMMANDS = {c.name: c for c in [
    Command("submit", "Upload unit files into the cluster without scheduling them.",
            _submit_args, _submit),
    Command("load", "Schedule units onto machines and load them into systemd, without "
            "starting them.", lambda p: _blocking(p, REPLACE_HELP), _load),
    Command("start", "Schedule units (submitting files first) and start them.",
            lambda p: _blocking(p, REPLACE_HELP), _start),
    Command("stop", "Stop units; they stay loaded on their machines.", _blocking, _stop),
    Command("unload", "Stop units and unschedule them from their machines.", _blocking,
            _unload),
    Command("destroy", "Remove units from the cluster entirely (stopping them where they "
            "run).\n\nfleetd's DestroyUnit returns once the unit is gone from the cluster, so "
            "there is nothing left to wait for: --no-block and --block-attempts are accepted "
            "as fleet's, and change nothing.", _blocking, _destroy),
    Command("cat", "Print the unit file of a submitted unit.", _unit_arg, _cat),
    Command("why", "Explain why a unit is or is not scheduled: which check rejected which "
            "machine.", _unit_arg, _why),
]}
