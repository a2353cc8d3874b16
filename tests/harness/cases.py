"""How many generated or hand-written cases each hostile-input and fault test ran.

Tests call `record(kind, count, note)`; the counts are written to CASES_FILE (JSON) as they come
and printed by `tests/conftest.py` in pytest's terminal summary, so CI logs show them without
`pytest -s`.
"""

from __future__ import annotations

import json
import os
import threading

CASES_FILE = os.environ.get("FLEET_TEST_CASES_FILE", "/tmp/fleet-py-test-cases.json")
COUNTS: dict[str, dict[str, object]] = {}
_lock = threading.Lock()


def record(kind: str, count: int, note: str = "") -> None:
    """Add `count` cases under `kind` (e.g. "fuzz: unit parser"), with an optional note."""
    with _lock:
        entry = COUNTS.setdefault(kind, {"cases": 0, "notes": []})
        entry["cases"] = int(entry["cases"]) + count  # type: ignore[call-overload]
        if note:
            entry["notes"].append(note)  # type: ignore[attr-defined]
        try:
            with open(CASES_FILE, "w") as f:
                json.dump(COUNTS, f, indent=1, sort_keys=True)
        except OSError:
            pass
