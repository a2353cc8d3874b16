"""etcd down for everyone, then back: units are fenced (never two copies), then all come back.

etcd being unreachable is no evidence that it expires no lease (it may serve a majority this
side cannot see), so every machine fences at its deadline: its non-global units stop, its
global units run on. When etcd returns, every machine registers again and every unit runs
exactly once. Real etcd, real systemd --user managers, ground truth sampled from systemd.
"""

from __future__ import annotations

import threading
import time

from fleetd.localcluster import LocalCluster
from tests.harness.cases import record
from tests.integration.conftest import FRESH_TTL_S, UNITS_DIR, unit_rows, wait_until

TTL_S = FRESH_TTL_S
OUTAGE_S = 20
SERVICES = ["hello.service", "hello@1.service", "hello@2.service"]


def main_pids(c: LocalCluster, units: list[str]) -> dict[str, list[tuple[str, int]]]:
    """Every (machine, MainPID) where systemd runs each unit: ground truth, not fleet's view."""
    out: dict[str, list[tuple[str, int]]] = {u: [] for u in units}
    for m in c.machines:
        for u in units:
            if m.is_active(u):
                out[u].append((m.name, m.main_pid(u)))
    return out


def test_etcd_down_fences_every_machine_and_everything_comes_back_once(
        fresh_cluster: LocalCluster) -> None:
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
    most = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal samples, most
        while not stop.is_set():
            now = main_pids(c, SERVICES)
            samples += 1
            most = max(most, *(len(v) for v in now.values()))
            time.sleep(0.1)

    c.etcd.stop()
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        # Every machine fences by its lease deadline: no non-global unit left anywhere.
        wait_until(lambda: not any(main_pids(c, SERVICES).values()), TTL_S + 12,
                   what="every non-global unit fenced")
        # Global units are not fenced (fleet's behaviour): same processes all along.
        assert main_pids(c, ["monitor.service"])["monitor.service"] == \
            before["monitor.service"]
        time.sleep(max(0, OUTAGE_S - TTL_S))  # the outage itself: etcd stays down OUTAGE_S
        c.etcd.start()
        c.wait_for_machines(3, timeout_s=30)
        r = c.fleetctl("start", "--block-attempts=60", "hello@3")
        assert r.returncode == 0, r.stderr
        after = wait_until(lambda: (lambda p: p if all(len(p[u]) == 1 for u in
                                                       [*SERVICES, "hello@3.service"])
                                    else None)(main_pids(c, [*SERVICES, "hello@3.service"])),
                           60, what="every unit running once after etcd returned")
        # Not a synchronisation: the sampler watches a window for a second copy.
        time.sleep(2)
    finally:
        stop.set()
        sampler.join()
    print(f"\netcd down {OUTAGE_S}s: {samples} samples, at most {most} copies of a unit")
    assert most == 1, "a non-global unit ran on two machines at once"
    assert main_pids(c, ["monitor.service"])["monitor.service"] == before["monitor.service"]
    assert all(len(v) == 1 for v in after.values()), after
    rows = unit_rows(c)
    for u in [*SERVICES, "hello@3.service"]:
        assert [r["active"] for r in rows if r["unit"] == u] == ["active"], (u, rows)
    assert len([r for r in rows if r["unit"] == "monitor.service"]) == 3
    record("fault: etcd down 20 s", samples,
           f"main-PID samples of {len(SERVICES)} units on 3 machines: all fenced, at most "
           f"{most} copy; global units untouched; all back once etcd returned")
