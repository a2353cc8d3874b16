"""fleetctl's `Client.create_units` against real grpcio servers on unix sockets: many units go
in CreateUnits calls of at most `BATCH_UNITS` units (or `BATCH_BYTES` of text), answers come
back per unit in order (an error as the FleetctlError of its status), and a fleetd without
CreateUnits (UNIMPLEMENTED) gets one CreateUnit per unit instead."""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from fleetctl import client as fc
from fleetd.api.pb import fleet_pb2 as pb
from fleetd.api.pb import fleet_pb2_grpc as pb_grpc


class Recording(pb_grpc.FleetServicer):
    """Answers CreateUnit(s) from the request alone; names ending in `-bad.service` are
    refused with ALREADY_EXISTS. Records each call's unit names."""

    def __init__(self, batch: bool) -> None:
        self.batch = batch
        self.lock = threading.Lock()
        self.single: list[str] = []
        self.batches: list[list[str]] = []

    @staticmethod
    def _answer(r: pb.CreateUnitRequest) -> pb.CreateUnitResponse:
        return pb.CreateUnitResponse(unit=pb.Unit(name=r.name, desired_state=r.desired_state),
                                     created=True)

    def CreateUnit(self, request: Any, context: Any) -> pb.CreateUnitResponse:
        with self.lock:
            self.single.append(request.name)
        if request.name.endswith("-bad.service"):
            context.abort(grpc.StatusCode.ALREADY_EXISTS, f"unit {request.name} differs")
        return self._answer(request)

    def CreateUnits(self, request: Any, context: Any) -> pb.CreateUnitsResponse:
        if not self.batch:
            return super().CreateUnits(request, context)  # UNIMPLEMENTED, as an old fleetd
        with self.lock:
            self.batches.append([u.name for u in request.units])
        out = pb.CreateUnitsResponse()
        for u in request.units:
            if u.name.endswith("-bad.service"):
                out.outcomes.add(code=grpc.StatusCode.ALREADY_EXISTS.value[0],
                                 message=f"unit {u.name} differs")
            else:
                out.outcomes.add(response=self._answer(u))
        return out


def _serve(tmp: pathlib.Path, svc: Recording) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_FleetServicer_to_server(svc, server)
    sock = f"unix://{tmp}/fleet.sock"
    server.add_insecure_port(sock)
    server.start()
    return server, sock


@pytest.fixture(params=[True, False], ids=["batch", "old-fleetd"])
def served(request: pytest.FixtureRequest, tmp_path: pathlib.Path
           ) -> Iterator[tuple[Recording, fc.Client]]:
    svc = Recording(batch=request.param)
    server, sock = _serve(tmp_path, svc)
    c = fc.Client(sock, timeout_s=10)
    try:
        yield svc, c
    finally:
        c.close()
        server.stop(None)


def test_units_come_back_in_order_each_with_its_own_answer(
        served: tuple[Recording, fc.Client]) -> None:
    svc, c = served
    names = [f"u{i:03d}{'-bad' if i % 97 == 5 else ''}.service" for i in range(600)]
    got = list(c.create_units((n, "[Service]\nExecStart=/bin/true\n", "launched", False)
                              for n in names))
    assert len(got) == len(names)
    for n, g in zip(names, got, strict=True):
        if n.endswith("-bad.service"):
            assert isinstance(g, fc.FleetctlError) and str(g) == f"unit {n} differs"
            assert g.rpc_code == grpc.StatusCode.ALREADY_EXISTS.value[0]
        else:
            assert not isinstance(g, Exception)
            assert g.unit.name == n and g.unit.desired_state == "launched" and g.created
    if svc.batch:
        assert not svc.single
        assert sorted(len(b) for b in svc.batches) == [88, 256, 256]
        assert sorted(n for b in svc.batches for n in b) == sorted(names)
    else:  # each unit once, as CreateUnit
        assert sorted(svc.single) == sorted(names)


def test_a_call_carries_at_most_batch_bytes_of_unit_text(
        served: tuple[Recording, fc.Client]) -> None:
    svc, c = served
    text = "[Service]\nExecStart=/bin/true\n" + "# " + "x" * (300 * 1024) + "\n"
    got = list(c.create_units((f"big{i}.service", text, "", False) for i in range(7)))
    assert all(not isinstance(g, Exception) for g in got) and len(got) == 7
    if svc.batch:
        assert [len(b) for b in svc.batches] in ([3, 3, 1], [3, 1, 3], [1, 3, 3])
        assert all(len(b) * len(text) <= fc.BATCH_BYTES for b in svc.batches)


def test_instances_without_text_go_in_one_call(served: tuple[Recording, fc.Client]) -> None:
    # (instantiated from their template by fleetd: no text at all, first one included)
    svc, c = served
    got = list(c.create_units((f"web@{i}.service", "", "launched", False) for i in range(3)))
    assert [g.unit.name for g in got] == [f"web@{i}.service" for i in range(3)]  # type: ignore[union-attr]
    if svc.batch:
        assert svc.batches == [[f"web@{i}.service" for i in range(3)]]


def test_one_unit_is_one_create_unit(served: tuple[Recording, fc.Client]) -> None:
    svc, c = served
    (got,) = list(c.create_units([("one.service", "[Service]\nExecStart=/bin/true\n", "",
                                   False)]))
    assert not isinstance(got, Exception) and got.unit.name == "one.service"
    assert svc.single == ["one.service"] and not svc.batches
