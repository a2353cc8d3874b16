"""Fixtures for integration tests: a real etcd and real systemd --user managers driven by real
fleetd processes, exercised through the real fleetctl CLI. Nothing here is skipped: a missing
etcd or systemd is an install error and fails the run."""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from fleetd.localcluster import EtcdServer, LocalCluster, LocalMachine, UserManager
from tests.harness.tables import table_rows
from tests.harness.wait import holds_for, wait_until

__all__ = ["FRESH_TTL_S", "UNITS_DIR", "Host", "destroy_all_units", "etcdctl", "fleetd_log",
           "holder", "holds_for", "machines_running", "single_host",
           "start_hello_and_monitor", "unit_rows", "wait_until"]

UNITS_DIR = pathlib.Path(__file__).resolve().parents[2] / "units"
#: agent_ttl of `fresh_cluster` (short, to keep the fault tests quick).
FRESH_TTL_S = 4


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


#: Lines of each machine's fleetd log a failed test's report carries (its last ones).
REPORT_LOG_LINES = 80


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """A failed test on a cluster of its own reports what its fleetds logged: the cluster's
    directory is gone once the fixture's teardown ran, and a CI failure is often one run."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when != "call" or not rep.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    for c in funcargs.values():
        if not isinstance(c, LocalCluster):
            continue
        for m in c.machines:
            log = m.root / "fleetd.log"
            try:
                lines = log.read_text(errors="replace").splitlines()
            except OSError as e:
                lines = [f"(no log: {e})"]
            rep.sections.append((f"fleetd log of {m.machine_id[:12]} (last "
                                 f"{REPORT_LOG_LINES} lines)",
                                 "\n".join(lines[-REPORT_LOG_LINES:])))
            early = [ln for ln in lines[:-REPORT_LOG_LINES] if _LOUD.search(ln)]
            if early:  # a fence or lease trouble earlier in the module explains a lot
                rep.sections.append((f"fleetd log of {m.machine_id[:12]}: warnings and "
                                     "errors before those", "\n".join(early[-40:])))


#: Log lines of lease or fencing trouble (fleetd/machine.py, fleetd/agent/agent.py).
_LOUD = re.compile(r" (WARNING|ERROR) ")
_LEASE_TROUBLE = re.compile(r"fenc|lease|dead-man", re.IGNORECASE)


def lease_trouble(c: LocalCluster) -> list[str]:
    """The warning and error lines about leases and fencing the cluster's fleetds logged."""
    out = []
    for m in c.machines:
        try:
            text = (m.root / "fleetd.log").read_text(errors="replace")
        except OSError:
            continue
        out += [f"{m.machine_id[:12]}: {ln}" for ln in text.splitlines()
                if _LOUD.search(ln) and _LEASE_TROUBLE.search(ln)]
    return out


@pytest.fixture(scope="session", autouse=True)
def _require_root() -> None:
    assert os.geteuid() == 0, "integration tests run real systemd managers and need root"


def unit_rows(cluster: LocalCluster) -> list[dict[str, str]]:
    """`fleetctl list-units -l` parsed into rows."""
    r = cluster.fleetctl("list-units", "--no-legend", "-l",
                         "--fields", "unit,machine,active,sub")
    assert r.returncode == 0, r.stderr
    return table_rows(r.stdout, ["unit", "machine", "active", "sub"])


def machines_running(cluster: LocalCluster, unit: str) -> list[str]:
    """Machine ids where systemd itself says `unit` is active (ground truth, not fleet's view)."""
    return [m.machine_id for m in cluster.machines
            if m.manager.pid is not None and m.is_active(unit)]


#: (test module, lines) of lease trouble on the shared `cluster`s, for the run's summary.
SHARED_CLUSTER_TROUBLE: list[tuple[str, list[str]]] = []


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """Three machines; m1 and m3 in region us-east, m2 in us-west, m3 also disk=ssd."""
    c = LocalCluster(3, metadata=[{"region": "us-east"}, {"region": "us-west"},
                                  {"region": "us-east", "disk": "ssd"}], agent_ttl_s=4)
    c.start()
    yield c
    trouble = lease_trouble(c)
    if trouble:  # nothing on this cluster breaks leases on purpose: a hiccup under load
        SHARED_CLUSTER_TROUBLE.append((request.module.__name__, trouble))
    c.cleanup()


def holder(cluster: LocalCluster, unit: str, timeout_s: float = 20) -> LocalMachine:
    """The one machine whose systemd runs `unit` (fails if none, or more than one)."""
    [mid] = wait_until(lambda: machines_running(cluster, unit), timeout_s, what=f"{unit} running")
    return cluster.machine(mid)


def start_hello_and_monitor(cluster: LocalCluster, timeout_s: float = 15) -> LocalMachine:
    """`fleetctl start` units/hello.service and the global units/monitor.service; once the
    monitor runs on every machine, the machine that runs hello.service."""
    cluster.fleetctl("start", str(UNITS_DIR / "hello.service"),
                     str(UNITS_DIR / "monitor.service"), check=True)
    m = holder(cluster, "hello.service")
    wait_until(lambda: len(machines_running(cluster, "monitor.service"))
               == len(cluster.machines), timeout_s, what="global monitor everywhere")
    return m


def etcdctl(cluster: LocalCluster, *args: str) -> str:
    """etcdctl (v3) against the cluster's etcd; fails the test if it fails."""
    r = subprocess.run(["etcdctl", "--endpoints", cluster.etcd.endpoint, *args],
                       capture_output=True, text=True, timeout=10,
                       env={**os.environ, "ETCDCTL_API": "3"})
    assert r.returncode == 0, r.stderr
    return r.stdout


def fleetd_log(m: LocalMachine) -> str:
    """Everything the machine's fleetd processes logged (each run appends)."""
    return (m.root / "fleetd.log").read_text(errors="replace")


@pytest.fixture
def fresh_cluster() -> Iterator[LocalCluster]:
    """Three machines of their own for a test that breaks them (agent_ttl FRESH_TTL_S; etcd
    traffic through proxies that `partition` can cut)."""
    c = LocalCluster(3, agent_ttl_s=FRESH_TTL_S, partitionable=True)
    c.start()
    yield c
    c.cleanup()


def destroy_all_units(cluster: LocalCluster) -> None:
    """Destroy every unit fleetctl lists and wait until list-units shows none."""
    names = cluster.fleetctl("list-unit-files", "--no-legend", "--fields", "unit").stdout.split()
    if names:
        cluster.fleetctl("destroy", *names)
    wait_until(lambda: not unit_rows(cluster), what="all units gone after the test")


@pytest.fixture
def clean_units(cluster: LocalCluster) -> Iterator[None]:
    """After each test of a module sharing `cluster`: no units left (pytestmark usefixtures)."""
    yield
    destroy_all_units(cluster)


@dataclass
class Host:
    """A real etcd and one `systemd --user` manager under `root`, for tests that start fleetd
    by hand (tests.harness.fleetd.SingleFleetd) rather than through a LocalCluster."""
    root: pathlib.Path
    etcd: EtcdServer
    manager: UserManager


@contextlib.contextmanager
def single_host(prefix: str) -> Iterator[Host]:
    root = pathlib.Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    etcd = EtcdServer(root)
    manager = UserManager(root / "m")
    try:
        etcd.start()
        manager.start()
        yield Host(root, etcd, manager)
    finally:
        manager.kill()
        etcd.stop()
        shutil.rmtree(root, ignore_errors=True)
