"""The gRPC API for dashboards, on a real cluster: Watch streams (snapshot, live events, resume,
filters, compaction), machine metadata, unit status/journal errors, health and reflection."""

from __future__ import annotations

import os
import pathlib
import subprocess
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from fleetd.api.pb import fleet_pb2 as pb
from fleetd.api.pb import fleet_pb2_grpc as pb_grpc
from fleetd.localcluster import LocalCluster
from tests.harness.watch_stream import WatchStream
from tests.integration.conftest import UNITS_DIR, unit_rows, wait_until

K = pb.WatchEvent


@pytest.fixture(autouse=True)
def _clean(cluster: LocalCluster) -> Iterator[None]:
    yield
    r = cluster.fleetctl("list-unit-files", "--no-legend", "--fields", "unit")
    if r.stdout.split():
        cluster.fleetctl("destroy", *r.stdout.split())
    wait_until(lambda: not unit_rows(cluster), what="all units gone after test")


@pytest.fixture
def stub(cluster: LocalCluster) -> Iterator[Any]:
    channel = grpc.insecure_channel(cluster.machines[1].endpoint)
    yield pb_grpc.FleetStub(channel)
    channel.close()


def test_watch_sends_a_snapshot_then_live_unit_and_state_changes(
        cluster: LocalCluster, stub: Any) -> None:
    w = WatchStream(stub)
    try:
        snap = w.next()
        assert snap.kind == K.SNAPSHOT and snap.revision > 0
        assert {m.id for m in snap.snapshot.machines} == {m.machine_id for m in cluster.machines}
        assert all(m.api_address for m in snap.snapshot.machines)
        assert sum(m.engine_leader for m in snap.snapshot.machines) == 1
        assert list(snap.snapshot.units) == []
        cluster.fleetctl("start", str(UNITS_DIR / "hello.service"), check=True)
        seen = w.until(lambda e: e.kind == K.UNIT_PUT and e.unit.current_state == "launched")
        # fleetctl start creates the unit with its desired state in one call
        assert seen[0].kind == K.UNIT_PUT and seen[0].unit.desired_state == "launched"
        assert seen[-1].unit.description == "Hello World, every few seconds"
        assert [e.revision for e in seen] == sorted(e.revision for e in seen)
        w.until(lambda e: e.kind == K.STATE_PUT and e.state.active_state == "active"
                and e.state.name == "hello.service" and e.state.machine_ip != "")
        cluster.fleetctl("destroy", "hello.service", check=True)
        w.until(lambda e: e.kind == K.UNIT_DELETED and e.name == "hello.service")
        w.until(lambda e: e.kind == K.STATE_DELETED and e.name == "hello.service")
    finally:
        w.close()


def test_watch_resumes_after_a_revision_without_a_snapshot(cluster: LocalCluster,
                                                           stub: Any) -> None:
    w = WatchStream(stub)
    rev = w.next().revision
    w.close()
    cluster.fleetctl("submit", str(UNITS_DIR / "hello.service"), check=True)
    resumed = WatchStream(stub, start_revision=rev)
    try:
        first = resumed.next()
        assert first.kind == K.UNIT_PUT and first.unit.name == "hello.service"
        assert first.revision > rev
    finally:
        resumed.close()


def test_watch_filters_by_kind(cluster: LocalCluster, stub: Any) -> None:
    w = WatchStream(stub, units=True)
    try:
        snap = w.next()
        assert len(snap.snapshot.machines) == 0 and len(snap.snapshot.states) == 0
        cluster.fleetctl("start", str(UNITS_DIR / "hello.service"), check=True)
        seen = w.until(lambda e: e.kind == K.UNIT_PUT and e.unit.current_state == "launched")
        assert {e.kind for e in seen} == {K.UNIT_PUT}
    finally:
        w.close()


def test_watch_reports_machine_changes(cluster: LocalCluster, stub: Any) -> None:
    w = WatchStream(stub, machines=True)
    try:
        w.next()
        mid = cluster.machines[2].machine_id
        m = stub.SetMachineMetadata(pb.SetMachineMetadataRequest(machine_id=mid,
                                                                 set={"rack": "r7"}))
        assert m.id == mid and m.metadata["rack"] == "r7" and m.metadata["disk"] == "ssd"
        ev = w.until(lambda e: e.kind == K.MACHINE_PUT)[-1]
        assert ev.machine.id == mid and ev.machine.metadata["rack"] == "r7"
        listed = cluster.fleetctl("list-machines", "--no-legend", "-l").stdout
        assert "rack=r7" in listed
        m = stub.SetMachineMetadata(pb.SetMachineMetadataRequest(machine_id=mid,
                                                                 delete=["rack"]))
        assert "rack" not in m.metadata
        ev = w.until(lambda e: e.kind == K.MACHINE_PUT)[-1]
        assert "rack" not in ev.machine.metadata and ev.machine.metadata["region"] == "us-east"
    finally:
        w.close()
    with pytest.raises(grpc.RpcError) as e:
        stub.SetMachineMetadata(pb.SetMachineMetadataRequest(machine_id=mid, set={"a/b": "1"}))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_watch_from_a_compacted_revision_is_out_of_range(cluster: LocalCluster,
                                                         stub: Any) -> None:
    cluster.fleetctl("submit", str(UNITS_DIR / "hello.service"), check=True)
    cluster.fleetctl("destroy", "hello.service", check=True)
    env = {**os.environ, "ETCDCTL_API": "3"}
    status = subprocess.run(["etcdctl", "--endpoints", cluster.etcd.endpoint, "endpoint",
                             "status", "-w", "fields"], env=env, capture_output=True, text=True,
                            check=True).stdout
    rev = int(next(x for x in status.splitlines() if '"Revision"' in x).split(":")[1])
    subprocess.run(["etcdctl", "--endpoints", cluster.etcd.endpoint, "compact", str(rev)],
                   env=env, check=True, capture_output=True)
    w = WatchStream(stub, start_revision=2)
    assert w.next() is None
    assert w.error is not None and w.error.code() == grpc.StatusCode.OUT_OF_RANGE


def test_unit_status_and_journal_errors_over_grpc(cluster: LocalCluster, stub: Any,
                                                  tmp_path: pathlib.Path) -> None:
    with pytest.raises(grpc.RpcError) as e:
        stub.UnitStatus(pb.UnitStatusRequest(name="nosuch.service"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    cluster.fleetctl("submit", str(UNITS_DIR / "hello.service"), check=True)
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Journal(pb.JournalRequest(name="hello.service")))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    cluster.fleetctl("start", "hello.service", check=True)
    r = stub.UnitStatus(pb.UnitStatusRequest(name="hello.service"))
    assert r.exit_code == 0 and "hello.service" in r.output
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Journal(pb.JournalRequest(name="hello.service", output="bogus")))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    other = next(m for m in cluster.machines if m.machine_id != r.machine_id)
    with pytest.raises(grpc.RpcError) as e:
        stub.UnitStatus(pb.UnitStatusRequest(name="hello.service", machine_id=other.machine_id))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_health_and_reflection_serve_grpcurl(cluster: LocalCluster) -> None:
    channel = grpc.insecure_channel(cluster.machines[0].endpoint)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "fleetpy.v1.Fleet"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        [resp] = list(refl.ServerReflectionInfo(iter([
            reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in resp.list_services_response.service}
        assert "fleetpy.v1.Fleet" in names and "grpc.health.v1.Health" in names
        [resp] = list(refl.ServerReflectionInfo(iter([
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="fleetpy.v1.Fleet")])))
        assert resp.file_descriptor_response.file_descriptor_proto
    finally:
        channel.close()
    # the TCP listener other fleetds forward to serves the same API (mutual TLS)
    tls = cluster.client_tls
    creds = grpc.ssl_channel_credentials(*(open(p, "rb").read() for p in (
        tls.ca_file, tls.key_file, tls.cert_file)))
    tcp = grpc.secure_channel(cluster.machines[0].api_tcp, creds)
    try:
        machines = pb_grpc.FleetStub(tcp).ListMachines(pb.ListMachinesRequest()).machines
        assert {m.api_address for m in machines} == {m.api_tcp for m in cluster.machines}
    finally:
        tcp.close()
