"""The one table printer of fleetctl: fleet's column layout, fields, legend and short ids."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any


def short_id(machine_id: str, full: bool) -> str:
    """fleet's abbreviated machine id: the first 8 characters and '...'."""
    if full or len(machine_id) <= 8:
        return machine_id
    return machine_id[:8] + "..."


def parse_fields(raw: str, allowed: Sequence[str], command: str) -> list[str]:
    fields = [f.strip().lower() for f in raw.split(",") if f.strip()]
    if not fields:
        raise ValueError(f"{command}: --fields must name at least one field")
    bad = [f for f in fields if f not in allowed]
    if bad:
        raise ValueError(f"{command}: invalid field(s) {', '.join(bad)}; valid fields: "
                         + ", ".join(allowed))
    return fields


def render(rows: Sequence[Any], fields: Sequence[str],
           columns: Mapping[str, Callable[[Any], str]], *, legend: bool = True) -> str:
    """Rows as aligned columns (fleet uses a tab writer; we pad with spaces so output lines up
    the same in any terminal), with an upper-case header unless legend is False."""
    table = [[columns[f](r) for f in fields] for r in rows]
    if legend:
        table.insert(0, [f.upper() for f in fields])
    if not table:
        return ""
    widths = [max(len(row[i]) for row in table) for i in range(len(fields))]
    lines = []
    for row in table:
        cells = [c.ljust(widths[i]) if i < len(row) - 1 else c for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"
