"""The API under concurrency and etcd faults, through real gRPC clients on a real cluster.

Reads through any machine see every write acknowledged before them (linearizable), and a
dashboard's Watch stream outlives etcd connection faults: the fleetd's view that serves it
resumes its watch from its last revision, re-reads only when that history was compacted (the
stream then gets what changed in between), and the stream still reports a machine that dies.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from fleetd.api.pb import fleet_pb2 as pb
from fleetd.api.pb import fleet_pb2_grpc as pb_grpc
from fleetd.localcluster import LocalCluster
from tests.harness.watch_stream import WatchStream
from tests.integration.conftest import etcdctl, fleetd_log, wait_until

K = pb.WatchEvent
TEXT = "[Service]\nExecStart=/bin/sleep 1000\n"
RESUMING = "; resuming"  # what fleetd logs when one of its etcd watches broke


@pytest.fixture(scope="module")
def pcluster() -> Iterator[LocalCluster]:
    c = LocalCluster(3, agent_ttl_s=6, partitionable=True)
    c.start()
    yield c
    c.cleanup()


def stub(m: Any) -> Any:
    return pb_grpc.FleetStub(grpc.insecure_channel(m.endpoint))


def test_a_write_through_one_machine_is_seen_by_the_next_read_through_another(
        pcluster: LocalCluster) -> None:
    writer, reader = stub(pcluster.machines[0]), stub(pcluster.machines[1])
    stop = threading.Event()
    errors: list[Exception] = []

    def hammer() -> None:  # concurrent reads: progress notifications in flight all the time
        s = stub(pcluster.machines[1])
        while not stop.is_set():
            try:
                s.ListUnits(pb.ListUnitsRequest())
            except grpc.RpcError as e:
                errors.append(e)

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(60):
            name = f"lin-{i}.service"
            writer.CreateUnit(pb.CreateUnitRequest(name=name, text=TEXT,
                                                   desired_state="inactive"))
            seen = {u.name for u in reader.ListUnits(pb.ListUnitsRequest()).units}
            assert name in seen, f"read through m2 after write {i} through m1 missed it"
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        for i in range(60):
            writer.DestroyUnit(pb.DestroyUnitRequest(name=f"lin-{i}.service"))
    assert not errors, errors[:3]


def test_watch_survives_a_partition_and_a_compaction_of_its_history(
        pcluster: LocalCluster) -> None:
    c = pcluster
    m1, m2 = c.machines[0], c.machines[1]
    w = WatchStream(stub(m1), units=True)
    try:
        assert w.next().kind == K.SNAPSHOT
        mark = fleetd_log(m1).count(RESUMING)
        m1.partition()  # m1's etcd connections drop: its view's etcd watch breaks
        wait_until(lambda: fleetd_log(m1).count(RESUMING) > mark, 10,
                   what="m1's etcd watch to break")
        stub(m2).CreateUnit(pb.CreateUnitRequest(name="gap.service", text=TEXT,
                                                 desired_state="inactive"))
        rev = etcdctl(c, "put", "/elsewhere/x", "y", "-w", "fields")
        revision = next(line.split(":")[1].strip() for line in rev.splitlines()
                        if '"Revision"' in line)
        etcdctl(c, "compact", revision)
        m1.heal()
        w.until(lambda e: e.kind == K.UNIT_PUT and e.name == "gap.service", 20)
        assert f"reading /{c.prefix.strip('/')}/ again" in fleetd_log(m1)  # after compaction
        stub(m2).DestroyUnit(pb.DestroyUnitRequest(name="gap.service"))
        w.until(lambda e: e.kind == K.UNIT_DELETED and e.name == "gap.service")
        assert w.error is None
    finally:
        w.close()


def test_watch_survives_an_etcd_restart_and_reports_a_dead_machine(
        pcluster: LocalCluster) -> None:
    c = pcluster
    m1, m3 = c.machines[0], c.machines[2]
    w = WatchStream(stub(m1), machines=True)
    try:
        snap = w.next()
        assert m3.machine_id in {m.id for m in snap.snapshot.machines}
        mark = fleetd_log(m1).count(RESUMING)
        c.etcd.stop()
        wait_until(lambda: fleetd_log(m1).count(RESUMING) > mark, 15,
                   what="m1's etcd watch to break")
        c.etcd.start()
        m3.kill()  # a power cut of another machine while the stream is served by m1
        w.until(lambda e: e.kind == K.MACHINE_DELETED and e.machine_id == m3.machine_id, 40)
        assert w.error is None
    finally:
        w.close()
