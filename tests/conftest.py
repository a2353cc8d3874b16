"""Suite-wide hooks: the case counts of the hostile-input, fuzz and fault tests in the summary."""

from __future__ import annotations

import pathlib
import shutil
import tempfile
from collections.abc import Iterator

import hypothesis  # noqa: F401  (see below)
import pytest

from fleetd.localcluster import EtcdServer
from tests.harness.cases import CASES_FILE, COUNTS

# hypothesis is imported here, at the top of the run: its pytest plugin imports it in the
# terminal summary otherwise, and under CPython 3.11.7 that parse failed ("AST constructor
# recursion depth mismatch", a CPython bug) after some integration modules ran alone.


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    _lease_trouble_summary(terminalreporter)
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


def _lease_trouble_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Lease renewals that failed and fences on the integration tests' shared clusters, where
    no test causes them: a one-off failure on such a cluster is explained here."""
    try:
        from tests.integration.conftest import SHARED_CLUSTER_TROUBLE
    except ImportError:
        return
    if not SHARED_CLUSTER_TROUBLE:
        return
    terminalreporter.section("lease trouble on the shared test clusters")
    for module, lines in SHARED_CLUSTER_TROUBLE:
        terminalreporter.write_line(f"{module}: {len(lines)} lines")
        for ln in lines[:20]:
            terminalreporter.write_line("  " + ln)
