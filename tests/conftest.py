"""Suite-wide hooks: the case counts of the hostile-input, fuzz and fault tests in the summary."""

from __future__ import annotations

import pytest

from tests.harness.cases import CASES_FILE, COUNTS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not COUNTS:
        return
    terminalreporter.section("hostile input, fuzzing and faults: cases run")
    for kind in sorted(COUNTS):
        entry = COUNTS[kind]
        notes = "; ".join(entry["notes"])  # type: ignore[arg-type]
        terminalreporter.write_line(f"{kind}: {entry['cases']} cases" + (f" ({notes})"
                                                                          if notes else ""))
    terminalreporter.write_line(f"(also written to {CASES_FILE})")
