"""Suite-wide hooks: the case counts of the hostile-input, fuzz and fault tests in the summary."""

from __future__ import annotations

import pathlib
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from fleetd.localcluster import EtcdServer
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


@pytest.fixture(scope="module")
def etcd_server() -> Iterator[EtcdServer]:
    """A real etcd on a free loopback port with a temporary data dir, one per test module."""
    root = pathlib.Path(tempfile.mkdtemp(prefix="fetcd-", dir="/tmp"))
    server = EtcdServer(root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
