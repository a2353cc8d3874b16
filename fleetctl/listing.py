"""The list commands: list-machines, list-units, list-unit-files (fleet's tables, or JSON)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping

from fleetctl.command import Command, Exit, api_errors, client, echo, fail, flag
from fleetctl.table import parse_fields, render, short_id

#: typing's names are for the type checker only: importing typing cost each run ~5 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from fleetd.api.pb import fleet_pb2 as pb

MACHINE_FIELDS = ["machine", "ip", "metadata", "state", "cpu", "memory", "reserved"]
MACHINE_DEFAULT = "machine,ip,metadata"  # fleet's; STATE joins it while a machine drains
UNIT_FIELDS = ["unit", "machine", "active", "sub", "load", "hash", "desc"]
UNIT_FILE_FIELDS = ["unit", "hash", "dstate", "state", "target", "global", "desc", "tmachine"]

if TYPE_CHECKING:
    Columns = Mapping[str, Callable[[Any], Any]]


def _fields(raw: str, allowed: list[str], command: str) -> list[str]:
    try:
        return parse_fields(raw, allowed, command)
    except ValueError as e:
        fail(str(e))


def _metadata(md: Mapping[str, str]) -> str:
    return ",".join(f"{k}={md[k]}" for k in sorted(md)) or "-"


def _emit(rows: list[Any], cols: list[str], columns: Columns, no_legend: bool,
          output: str, json_columns: Columns | None = None) -> None:
    """Print rows as fleet's table or, with -o json, as a JSON list of objects with the
    selected fields (full ids and hashes; JSON types where they exist)."""
    if output == "json":
        import json

        jc = {**columns, **(json_columns or {})}
        sys.stdout.write(json.dumps([{f: jc[f](r) for f in cols} for r in rows], indent=2)
                         + "\n")
    elif output == "table":
        sys.stdout.write(render(rows, cols, columns, legend=not no_legend))
    else:
        fail(f"invalid output format {output!r}: expected table or json")


def _list_args(default_fields: str) -> Callable[[argparse.ArgumentParser], None]:
    def arguments(p: argparse.ArgumentParser) -> None:
        flag(p, "--full", "-l", help="do not abbreviate machine ids and hashes")
        flag(p, "--no-legend", help="do not print the header line")
        p.add_argument("--fields", default=default_fields, metavar="LIST",
                       help=f"comma-separated columns to show (default: {default_fields})")
        p.add_argument("--output", "-o", default="table", metavar="FORMAT",
                       help="table, or json for scripts")
    return arguments


# -- resources: cpu and memory are what units may reserve (capacity minus the host reserve;
# "-" when the machine publishes none), reserved what the units scheduled there reserve --
def _allocatable(total: int, host: int) -> int | None:
    return max(0, total - host) if total > 0 else None


def _cpu_cell(m: Any) -> str:
    from fleetd.unit.resources import format_cpu

    cpu = _allocatable(m.cpu_milli, m.host_reserved_cpu_milli)
    return "-" if cpu is None else format_cpu(cpu)


def _memory_cell(m: Any) -> str:
    from fleetd.unit.resources import format_memory

    memory = _allocatable(m.memory_bytes, m.host_reserved_memory_bytes)
    return "-" if memory is None else format_memory(memory)


def _reserved_cell(m: Any) -> str:
    from fleetd.unit.resources import format_cpu, format_memory

    parts = []
    if m.reserved_cpu_milli:
        parts.append(f"{format_cpu(m.reserved_cpu_milli)} CPU")
    if m.reserved_memory_bytes:
        parts.append(format_memory(m.reserved_memory_bytes))
    return ", ".join(parts) or "-"


_RESOURCE_COLUMNS: Columns = {"cpu": _cpu_cell, "memory": _memory_cell,
                              "reserved": _reserved_cell}
_RESOURCE_JSON: Columns = {
    "cpu": lambda m: _allocatable(m.cpu_milli, m.host_reserved_cpu_milli),
    "memory": lambda m: _allocatable(m.memory_bytes, m.host_reserved_memory_bytes),
    "reserved": lambda m: {"cpu": m.reserved_cpu_milli, "memory": m.reserved_memory_bytes},
}
# -- end resources --


@api_errors
def _list_machines(a: argparse.Namespace) -> int:
    cols = _fields(a.fields, MACHINE_FIELDS, "list-machines")
    machines = client().list_machines()
    if a.fields == MACHINE_DEFAULT and any(m.state == "draining" for m in machines):
        cols.append("state")
    full = a.full
    columns: Columns = {"machine": lambda m: short_id(m.id, full), "ip": lambda m: m.ip or "-",
                        "metadata": lambda m: _metadata(m.metadata),
                        "state": lambda m: m.state or "active",
                        **_RESOURCE_COLUMNS}
    _emit(machines, cols, columns, a.no_legend, a.output, {
        **_RESOURCE_JSON,
        "machine": lambda m: m.id, "ip": lambda m: m.ip,
        "metadata": lambda m: dict(sorted(m.metadata.items()))})
    return 0


# A list-units row: unit, machine cell, machine id, active, sub, load, hash, its pb.Unit (or
# None). Plain lists, not dicts: list-units builds and formats 10,000 of them.
_NAME, _MACHINE, _MID, _ACTIVE, _SUB, _LOAD, _HASH, _UNIT = range(8)
_RUNNING = frozenset(("active", "activating", "reloading"))


@api_errors
def _list_units(a: argparse.Namespace) -> int:
    from operator import itemgetter

    cols = _fields(a.fields, UNIT_FIELDS, "list-units")
    full = a.full
    c = client()
    unit_list, states = c.units_and_states()
    units = {u.name: u for u in unit_list}
    rows: list[list[Any]] = []
    seen: dict[str, int] = {}
    seen_on: dict[str, set[str]] = {}
    reported: set[str] = set()
    cells: dict[tuple[str, str], str] = {}  # (machine id, ip) -> its cell: ~1 per machine
    for s in states:
        name, mid, ip, active = s.name, s.machine_id, s.machine_ip, s.active_state
        cell = cells.get((mid, ip))
        if cell is None:
            cell = cells[(mid, ip)] = f"{short_id(mid, full)}/{ip or '-'}"
        rows.append([name, cell, mid, active or "-", s.sub_state or "-", s.load_state or "-",
                     s.hash, units.get(name)])
        reported.add(name)
        if active in _RUNNING:
            seen[name] = seen.get(name, 0) + 1
            seen_on.setdefault(name, set()).add(mid)
    for name, u in sorted(units.items()):
        if name not in reported and u.machine_ids:
            for mid in u.machine_ids:
                rows.append([name, short_id(mid, full), mid, "-", "-", "-", u.hash, u])
    rows.sort(key=itemgetter(_NAME, _MACHINE))
    columns: Columns = {
        "unit": itemgetter(_NAME), "machine": itemgetter(_MACHINE),
        "active": itemgetter(_ACTIVE), "sub": itemgetter(_SUB), "load": itemgetter(_LOAD),
        "hash": itemgetter(_HASH) if full else lambda r: r[_HASH][:7],
        "desc": lambda r: (r[_UNIT].description if r[_UNIT] else "") or "-",
    }
    def handing_over(n: str) -> bool:
        """A make-before-break move (fleetctl move/drain): both copies run, by design."""
        u = units.get(n)
        return (u is not None and u.move_phase == "starting"
                and seen_on.get(n, set()) <= {u.move_from, u.move_to})

    twice = sorted(n for n, k in seen.items() if k > 1 and not
                   (n in units and units[n].is_global) and not handing_over(n))
    if a.output == "table" and twice:
        flagged = set(twice)
        for r in rows:  # flag the offending rows themselves, not only the summary below
            if r[_NAME] in flagged:
                r[_NAME] = f"{r[_NAME]} (!)"
    _emit(rows, cols, columns, a.no_legend, a.output, {
        "machine": itemgetter(_MID), "hash": itemgetter(_HASH),
        "unit": lambda r: r[_NAME].removesuffix(" (!)")})
    for name in twice:
        echo(f"WARNING: unit {name} is running on {seen[name]} machines at once; "
             "fleet must never let this happen: report it", err=True)
    if twice:
        raise Exit(2)
    return 0


@api_errors
def _list_unit_files(a: argparse.Namespace) -> int:
    cols = _fields(a.fields, UNIT_FILE_FIELDS, "list-unit-files")
    if "tmachine" in cols:
        echo('WARNING: The "tmachine" field is deprecated. Use "target" instead', err=True)
    full = a.full
    c = client()
    units = c.list_units()
    ips = {m.id: m.ip for m in c.list_machines()}

    def target(u: pb.Unit) -> str:
        if u.is_global:
            return "global"
        if not u.machine_ids:
            return "-"
        mid = u.machine_ids[0]
        return f"{short_id(mid, full)}/{ips.get(mid, '-')}"

    def json_target(u: pb.Unit) -> str | None:
        """As the table: "global", the machine's full id, or null when not scheduled."""
        if u.is_global:
            return "global"
        return u.machine_ids[0] if u.machine_ids else None

    def state(u: pb.Unit) -> str | None:
        """fleet shows no single state for a global unit (it has one per machine)."""
        return None if u.is_global else (u.current_state or None)

    columns: Columns = {
        "unit": lambda u: u.name, "hash": lambda u: u.hash if full else u.hash[:7],
        "dstate": lambda u: u.desired_state, "state": lambda u: state(u) or "-",
        "target": target, "tmachine": target,
        "global": lambda u: str(u.is_global).lower(),
        "desc": lambda u: u.description or "-",
    }
    _emit(units, cols, columns, a.no_legend, a.output, {
        "hash": lambda u: u.hash, "state": state,
        "target": json_target, "tmachine": json_target,
        "global": lambda u: bool(u.is_global), "desc": lambda u: u.description})
    return 0


COMMANDS = {c.name: c for c in [
    Command("list-machines", "List the live machines of the cluster.",
            _list_args(MACHINE_DEFAULT), _list_machines),
    Command("list-units", "List units scheduled in the cluster with their systemd state on "
            "their machine.", _list_args("unit,machine,active,sub"), _list_units),
    Command("list-unit-files", "List every submitted unit with its desired and current "
            "state and target machine.", _list_args("unit,hash,dstate,state,target"),
            _list_unit_files),
]}
