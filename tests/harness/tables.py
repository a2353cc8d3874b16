"""fleetctl's tables read back into rows, as the tests check them."""

from __future__ import annotations

from collections.abc import Sequence


def table_rows(stdout: str, fields: Sequence[str]) -> list[dict[str, str]]:
    """Rows of `fleetctl list-... --no-legend -l --fields <fields>` output, one dict per line
    keyed by field. A `machine` cell (`<id>/<ip>`) gives `machine` (the id) and `ip`; a
    `target` cell keeps its machine id only."""
    rows = []
    for line in stdout.splitlines():
        cells = line.split()
        if not cells:
            continue
        row = dict(zip(fields, cells, strict=True))
        if "machine" in row:
            row["machine"], _, ip = row["machine"].partition("/")
            row["ip"] = ip or row["machine"]
        if "target" in row:
            row["target"] = row["target"].split("/")[0]
        rows.append(row)
    return rows
