"""Duplicate machine ids (fleet's TestDetectMachineId), on real etcd and systemd --user managers.

A fleetd started with another live machine's id must not take over that machine's registration:
it says why (naming the id and the other machine's address) and exits non-zero, while the owner
stays in `list-machines` with its units. A fleetd whose own key vanishes puts it back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from fleetd.localcluster import LocalCluster
from tests.integration.conftest import (
    UNITS_DIR,
    etcdctl,
    fleetd_log,
    machines_running,
    unit_rows,
    wait_until,
)


@pytest.fixture(scope="module")
def cluster3() -> Iterator[LocalCluster]:
    c = LocalCluster(3, agent_ttl_s=4)
    c.start()
    yield c
    c.cleanup()


def listed_machines(c: LocalCluster) -> dict[str, str]:
    """machine id -> IP, as `fleetctl list-machines -l` shows them."""
    r = c.fleetctl("list-machines", "--no-legend", "-l", "--fields", "machine,ip")
    assert r.returncode == 0, r.stderr
    return dict(line.split()[:2] for line in r.stdout.splitlines() if line.strip())


def test_fleetd_with_a_live_machines_id_is_refused_and_the_owner_keeps_its_units(
        cluster3: LocalCluster) -> None:
    c = cluster3
    owner, impostor = c.machines[0], c.machines[2]
    impostor.stop_fleetd()
    wait_until(lambda: impostor.machine_id not in listed_machines(c), what="m3 to leave")
    c.fleetctl("start", str(UNITS_DIR / "hello.service"), check=True)
    wait_until(lambda: machines_running(c, "hello.service"), what="hello running")
    runs_on = machines_running(c, "hello.service")
    # m3's host, with m1's /etc/machine-id copied onto it
    env = {**impostor.fleetd_env(), "FLEET_MACHINE_ID": owner.machine_id}
    try:
        r = subprocess.run(impostor.manager.in_namespace([sys.executable, "-m", "fleetd.main"]),
                           env=env, capture_output=True, text=True, timeout=30)
        assert r.returncode != 0, r.stderr
        assert f"machine id {owner.machine_id} is already registered" in r.stderr, r.stderr
        assert f"ip {owner.ip}" in r.stderr, r.stderr
        machines = listed_machines(c)
        assert machines.get(owner.machine_id) == owner.ip, machines
        assert set(machines) == {owner.machine_id, c.machines[1].machine_id}, machines
        assert machines_running(c, "hello.service") == runs_on
        rows = unit_rows(c)
        assert [(row["unit"], row["machine"], row["active"]) for row in rows] == [
            ("hello.service", runs_on[0], "active")], rows
    finally:
        impostor.start_fleetd()  # back with its own id
    wait_until(lambda: len(listed_machines(c)) == 3, what="all three machines back")
    c.fleetctl("destroy", "hello.service", check=True)


def test_a_deleted_machine_key_is_restored_by_its_fleetd(cluster3: LocalCluster) -> None:
    c = cluster3
    m = c.machines[1]
    key = c.prefix + "machines/" + m.machine_id
    etcdctl(c, "del", key)
    wait_until(lambda: listed_machines(c).get(m.machine_id) == m.ip, 10,
               what="m2's registration restored")
    lease = etcdctl(c, "get", key, "-w", "fields")
    assert '"Lease" : 0' not in lease, lease  # on m2's lease again, not a persistent key


def test_a_fleetd_whose_registration_another_lease_takes_over_says_so_and_stops(
        cluster3: LocalCluster) -> None:
    c = cluster3
    m = c.machines[1]
    key = c.prefix + "machines/" + m.machine_id
    lease = etcdctl(c, "lease", "grant", "60").split()[1]
    proc = m.fleetd
    assert proc is not None
    try:
        record = json.dumps({"id": m.machine_id, "ip": "10.9.9.9"})
        etcdctl(c, "put", key, record, "--lease=" + lease)
        wait_until(lambda: proc.poll() is not None, 30, what="m2's fleetd to stop acting")
        log = fleetd_log(m)
        # etcdctl prints the lease id zero-padded, fleetd's log does not
        assert (f"machine {m.machine_id}: registration taken over by lease {int(lease, 16):x}"
                in log)
    finally:
        etcdctl(c, "lease", "revoke", lease)
        m.start_fleetd()
    wait_until(lambda: listed_machines(c).get(m.machine_id) == m.ip, 15, what="m2 back")
