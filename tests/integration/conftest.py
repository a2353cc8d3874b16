"""Fixtures for integration tests: a real etcd and real systemd --user managers driven by real
fleetd processes, exercised through the real fleetctl CLI. Nothing here is skipped: a missing
etcd or systemd is an install error and fails the run."""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from fleetd.localcluster import LocalCluster

UNITS_DIR = pathlib.Path(__file__).resolve().parents[2] / "units"
T = TypeVar("T")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def _require_root() -> None:
    assert os.geteuid() == 0, "integration tests run real systemd managers and need root"


def wait_until(fn: Callable[[], T], timeout_s: float = 20, interval_s: float = 0.05,
               what: str = "condition") -> T:
    """Poll fn until it returns a truthy value; fail the test with `what` on timeout."""
    deadline = time.monotonic() + timeout_s
    last: T = fn()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)
        last = fn()
    return last


def unit_rows(cluster: LocalCluster) -> list[dict[str, str]]:
    """`fleetctl list-units -l` parsed into rows."""
    r = cluster.fleetctl("list-units", "--no-legend", "-l",
                         "--fields", "unit,machine,active,sub")
    assert r.returncode == 0, r.stderr
    rows = []
    for line in r.stdout.splitlines():
        unit, machine, active, sub = line.split()
        rows.append({"unit": unit, "machine": machine.split("/")[0], "ip": machine.split("/")[-1],
                     "active": active, "sub": sub})
    return rows


def machines_running(cluster: LocalCluster, unit: str) -> list[str]:
    """Machine ids where systemd itself says `unit` is active (ground truth, not fleet's view)."""
    return [m.machine_id for m in cluster.machines
            if m.manager.pid is not None and m.is_active(unit)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """Three machines; m1 and m3 in region us-east, m2 in us-west, m3 also disk=ssd."""
    c = LocalCluster(3, metadata=[{"region": "us-east"}, {"region": "us-west"},
                                  {"region": "us-east", "disk": "ssd"}], agent_ttl_s=4)
    c.start()
    yield c
    c.cleanup()
