"""etcd down for everyone, then back: nothing stops, nothing flaps, nothing is lost.

While etcd serves nobody no lease can expire (etcd extends every lease when its leader is
elected again), so no machine fences: every machine asks its peers before fencing and holds when
none of them reaches etcd either (`fleetd.peers`). Real etcd, real systemd --user managers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from fleetd.localcluster import LocalCluster
from tests.harness.cases import record
from tests.integration.conftest import UNITS_DIR, machines_running, unit_rows, wait_until

TTL_S = 4
OUTAGE_S = 30
SERVICES = ["hello.service", "hello@1.service", "hello@2.service"]


@pytest.fixture
def fresh_cluster() -> Iterator[LocalCluster]:
    c = LocalCluster(3, agent_ttl_s=TTL_S)
    c.start()
    yield c
    c.cleanup()


def main_pids(c: LocalCluster, units: list[str]) -> dict[str, list[tuple[str, int]]]:
    """Every (machine, MainPID) where systemd runs each unit: ground truth, not fleet's view."""
    out: dict[str, list[tuple[str, int]]] = {u: [] for u in units}
    for m in c.machines:
        for u in units:
            if m.is_active(u):
                out[u].append((m.name, m.main_pid(u)))
    return out


def test_etcd_down_30s_keeps_units_running_and_recovers(fresh_cluster: LocalCluster) -> None:
    c = fresh_cluster
    c.fleetctl("submit", str(UNITS_DIR / "hello@.service"), check=True)
    c.fleetctl("start", str(UNITS_DIR / "hello.service"), "hello@1", "hello@2",
               str(UNITS_DIR / "monitor.service"), check=True)
    units = [*SERVICES, "monitor.service"]
    before = wait_until(lambda: (lambda p: p if all(p[u] for u in SERVICES)
                                 and len(p["monitor.service"]) == 3 else None)(
                                     main_pids(c, units)), 15, what="every unit running")
    assert all(len(before[u]) == 1 for u in SERVICES), before
    samples = 0
    changes: list[str] = []
    stop = threading.Event()

    def sample() -> None:
        nonlocal samples
        while not stop.is_set():
            now = main_pids(c, units)
            samples += 1
            if now != before:
                changes.append(f"{time.monotonic() - t0:.1f}s: {now}")
            time.sleep(0.25)

    t0 = time.monotonic()
    c.etcd.stop()
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        time.sleep(OUTAGE_S)
        c.etcd.start()
        # Agents and engine find etcd again on their own: the machines are all there, states
        # are republished, and a new unit schedules.
        c.wait_for_machines(3, timeout_s=30)
        r = c.fleetctl("start", "--block-attempts=60", "hello@3")
        assert r.returncode == 0, r.stderr
        wait_until(lambda: len(machines_running(c, "hello@3.service")) == 1, 15,
                   what="a unit started after etcd returned")
        time.sleep(TTL_S)  # a full TTL after recovery: any late fencing would show now
    finally:
        stop.set()
        sampler.join()
    print(f"\netcd down {OUTAGE_S}s: {samples} samples of the units' main PIDs, "
          f"{len(changes)} changes")
    assert not changes, "units stopped, restarted or moved:\n" + "\n".join(changes[:5])
    assert main_pids(c, units) == before
    # Nothing lost or duplicated in fleet's view either.
    rows = unit_rows(c)
    for u in [*SERVICES, "hello@3.service"]:
        assert [r["active"] for r in rows if r["unit"] == u] == ["active"], (u, rows)
    assert len([r for r in rows if r["unit"] == "monitor.service"]) == 3
    logs = "".join((m.root / "fleetd.log").read_text() for m in c.machines)
    assert "stopping non-global units (fencing)" not in logs
    assert "holding units" in logs
    record("fault: etcd down 30 s", samples,
           f"main-PID samples of {len(units)} units on 3 machines: {len(changes)} changes; "
           "no fencing; hello@3 scheduled after etcd returned")
