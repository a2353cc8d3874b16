"""Resource-aware placement on a real local cluster: real etcd, systemd --user managers and
fleetd processes, through the real fleetctl (gRPC) and fleet's HTTP API v1.

m1 offers 1G of memory to units, m2 512M (fleet.conf capacity_memory, via FLEET_*): a unit
reserving 768M only fits on m1, a second one fits nowhere until m2's fleetd restarts with
more capacity, which the engine picks up.
"""

from __future__ import annotations

import http.client
import json
import pathlib
import socket
from collections.abc import Iterator

import pytest

from fleetd.localcluster import LocalCluster
from tests.integration.conftest import wait_until

G = 1 << 30
M = 1 << 20

UNIT = """[Unit]
Description=reserves 768M
[Service]
ExecStart=/bin/sleep 3600
MemoryMax=768M
"""


def _with_env(machine: object, extra: dict[str, str]) -> None:
    base = type(machine).fleetd_env  # type: ignore[attr-defined]
    machine.fleetd_env = lambda: {**base(machine), **extra}  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    c = LocalCluster(2, agent_ttl_s=4)
    _with_env(c.machines[0], {"FLEET_CAPACITY_MEMORY": "1280M", "FLEET_RESERVED_MEMORY": "256M",
                              "FLEET_CAPACITY_CPU": "2"})
    _with_env(c.machines[1], {"FLEET_CAPACITY_MEMORY": "512M", "FLEET_CAPACITY_CPU": "1"})
    c.start()
    yield c
    c.cleanup()


def machines_json(cluster: LocalCluster) -> dict[str, dict[str, object]]:
    r = cluster.fleetctl("list-machines", "--fields", "machine,cpu,memory,reserved", "-o", "json")
    assert r.returncode == 0, r.stderr
    return {m["machine"]: m for m in json.loads(r.stdout)}


def http_machines(cluster: LocalCluster) -> dict[str, dict[str, object]]:
    class Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(cluster.machines[0].http_socket)

    conn = Conn("localhost")
    conn.request("GET", "/fleet/v1/machines")
    body = json.loads(conn.getresponse().read())
    conn.close()
    return {m["id"]: m for m in body["machines"]}


def test_capacity_limits_placement_why_explains_and_a_capacity_change_is_picked_up(
        cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    m1, m2 = cluster.machines
    got = machines_json(cluster)
    assert got[m1.machine_id] == {"machine": m1.machine_id, "cpu": 2000, "memory": G,
                                  "reserved": {"cpu": 0, "memory": 0}}
    assert got[m2.machine_id]["memory"] == 512 * M
    table = cluster.fleetctl("list-machines", "--no-legend", "--fields", "cpu,memory,reserved")
    rows = sorted(line.split() for line in table.stdout.splitlines())
    assert rows == [["1", "512M", "-"], ["2", "1G", "-"]], table.stdout

    for name in ("big1.service", "big2.service"):
        (tmp_path / name).write_text(UNIT)
    r = cluster.fleetctl("start", str(tmp_path / "big1.service"))
    assert r.returncode == 0, r.stderr
    wait_until(lambda: m1.is_active("big1.service"), what="big1 active on m1")
    assert not m2.is_active("big1.service")
    wait_until(lambda: machines_json(cluster)[m1.machine_id]["reserved"] == {
        "cpu": 0, "memory": 768 * M}, what="m1 shows 768M reserved")
    resources = http_machines(cluster)[m1.machine_id]["fleetpyResources"]
    assert resources == {"cpuMilli": 2000, "memoryBytes": 1280 * M,  # type: ignore[comparison-overlap]
                         "hostReservedCpuMilli": 0, "hostReservedMemoryBytes": 256 * M,
                         "reservedCpuMilli": 0, "reservedMemoryBytes": 768 * M}

    r = cluster.fleetctl("start", "--no-block", str(tmp_path / "big2.service"))
    assert r.returncode == 0, r.stderr

    def refused() -> str:
        why = cluster.fleetctl("why", "big2.service").stdout
        return why if "filtered by Resources" in why or "Resources" in why else ""

    why = wait_until(refused, what="big2 refused by Resources")
    assert f"needs 768M memory, {m1.machine_id[:8]}" in why or \
        f"needs 768M memory, {m1.machine_id}" in why, why
    assert "has 256M free of 1G" in why and "has 512M free of 512M" in why, why
    assert not m2.is_active("big2.service") and not m1.is_active("big2.service")

    # m2's fleetd restarts with more memory: the engine places big2 there.
    m2.stop_fleetd()
    _with_env(m2, {"FLEET_CAPACITY_MEMORY": "2G"})
    m2.start_fleetd()
    wait_until(lambda: m2.is_active("big2.service"), timeout_s=30, what="big2 active on m2")
    assert machines_json(cluster)[m2.machine_id]["memory"] == 2 * G
    assert m1.is_active("big1.service")
