"""fleet on a 3-member etcd cluster that loses a member (its raft leader, the hard case): the
cluster goes on without disruption. Real etcd members, real systemd --user managers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from fleetd.localcluster import LocalCluster
from fleetd.localcluster.etcdcluster import EtcdCluster
from tests.harness.cases import record
from tests.integration.conftest import (
    UNITS_DIR,
    fleetd_log,
    machines_running,
    unit_rows,
    wait_until,
)
from tests.integration.test_faults_etcd import main_pids

# fleet's default agent_ttl is 10 s. The 4 s of the other fault tests is shorter than a lease
# renewal can take across an etcd leader election (about 1-2 s here, renewals need the leader):
# a machine would then fence, correctly but needlessly (the new leader extends every lease).
TTL_S = 8


@pytest.fixture
def cluster3() -> Iterator[tuple[LocalCluster, EtcdCluster]]:
    c = LocalCluster(3, agent_ttl_s=TTL_S)
    etcd = EtcdCluster(c.root, 3)
    c.etcd = etcd  # type: ignore[assignment]  # same interface: endpoint, start, stop
    c.start()
    yield c, etcd
    c.cleanup()


def test_losing_one_etcd_member_disrupts_nothing(
        cluster3: tuple[LocalCluster, EtcdCluster]) -> None:
    c, etcd = cluster3
    c.fleetctl("submit", str(UNITS_DIR / "hello@.service"), check=True)
    c.fleetctl("start", str(UNITS_DIR / "hello.service"), "hello@1",
               str(UNITS_DIR / "monitor.service"), check=True)
    units = ["hello.service", "hello@1.service", "monitor.service"]
    before = wait_until(lambda: (lambda p: p if p["hello.service"] and p["hello@1.service"]
                                 and len(p["monitor.service"]) == 3 else None)(
                                     main_pids(c, units)), 15, what="units running")
    changes: list[dict[str, list[tuple[str, int]]]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            now = main_pids(c, units)
            if now != before:
                changes.append(now)
            time.sleep(0.25)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        lost = etcd.leader()
        lost.kill()
        t0 = time.monotonic()
        # Every operation still works, through the members left.
        r = c.fleetctl("start", "--block-attempts=60", "hello@2")
        assert r.returncode == 0, r.stderr
        wait_until(lambda: len(machines_running(c, "hello@2.service")) == 1, 15,
                   what="a unit started after the member died")
        r = c.fleetctl("stop", "--block-attempts=60", "hello@1")
        assert r.returncode == 0, r.stderr
        wait_until(lambda: not machines_running(c, "hello@1.service"), 15, what="stop")
        r = c.fleetctl("start", "--block-attempts=60", "hello@1")
        assert r.returncode == 0, r.stderr
        wait_until(lambda: len(machines_running(c, "hello@1.service")) == 1, 15,
                   what="start again")
        elapsed = time.monotonic() - t0
        # Not a synchronisation: the sampler watches until any lease that could have lapsed
        # during the member's death would have (the behaviour under test: none did).
        time.sleep(max(0.0, TTL_S - elapsed))
        c.wait_for_machines(3)
    finally:
        stop.set()
        sampler.join()
    print(f"\netcd leader {lost.name} killed; start/stop/start done in {elapsed:.2f}s")
    untouched = ["hello.service", "monitor.service"]
    assert not [ch for ch in changes if any(ch[u] != before[u] for u in untouched)], changes[:3]
    assert {u: main_pids(c, untouched)[u] for u in untouched} == {u: before[u] for u in untouched}
    record("fault: 3-member etcd loses its leader", 3,
           f"start/stop/start through the 2 members left in {elapsed:.1f}s; untouched units kept "
           "their PIDs; no fencing")
    logs = "".join(fleetd_log(m) for m in c.machines)
    lease_lines = [line for line in logs.splitlines()
                   if "fleetd.machine" in line or "fleetd.peers" in line or "fencing" in line]
    assert not any("stopping non-global" in line for line in lease_lines), \
        "\n".join(lease_lines[-25:])
    # fleet's view agrees (list-units), within a few seconds.
    wanted = ["hello.service", "hello@1.service", "hello@2.service"]
    wait_until(lambda: all([r["active"] for r in rows if r["unit"] == u] == ["active"]
                           for rows in [unit_rows(c)] for u in wanted), 10,
               what="list-units shows every unit active once")
