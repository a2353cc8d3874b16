"""gRPC front end of the API (service `fleetpy.v1.Fleet`), with health checking and reflection."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fleetd.api.pb import fleet_pb2 as pb
from fleetd.api.pb import fleet_pb2_grpc as pb_grpc
from fleetd.api.service import (
    AlreadyExists,
    ApiError,
    FleetService,
    InvalidArgument,
    NotFound,
    Unavailable,
    UnitInfo,
)

log = logging.getLogger("fleetd.api")

_CODES = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}

T = TypeVar("T")


async def _call(context: grpc.aio.ServicerContext, fn: Callable[[], Awaitable[T]]) -> T:
    try:
        return await fn()
    except ApiError as e:
        await context.abort(_CODES.get(type(e), grpc.StatusCode.INTERNAL), str(e))
        raise  # unreachable: abort raises


def unit_pb(u: UnitInfo) -> pb.Unit:
    return pb.Unit(name=u.name, text=u.text, hash=u.hash, desired_state=u.desired_state,
                   current_state=u.current_state, machine_ids=list(u.machine_ids),
                   unschedulable_reason=u.unschedulable_reason, description=u.description,
                   **{"global": u.is_global})


class FleetServicer(pb_grpc.FleetServicer):
    def __init__(self, service: FleetService) -> None:
        self.service = service

    async def ListMachines(self, request: Any, context: Any) -> pb.ListMachinesResponse:
        machines, leader = await _call(context, self.service.list_machines)
        return pb.ListMachinesResponse(machines=[
            pb.Machine(id=m.id, ip=m.ip, metadata=m.metadata, hostname=m.hostname,
                       version=m.version, engine_leader=(m.id == leader)) for m in machines])

    async def ListUnits(self, request: Any, context: Any) -> pb.ListUnitsResponse:
        units = await _call(context, lambda: self.service.list_units(request.with_text))
        return pb.ListUnitsResponse(units=[unit_pb(u) for u in units])

    async def GetUnit(self, request: Any, context: Any) -> pb.Unit:
        return unit_pb(await _call(context, lambda: self.service.get_unit(request.name)))

    async def CreateUnit(self, request: Any, context: Any) -> pb.CreateUnitResponse:
        unit, created = await _call(context, lambda: self.service.create_unit(
            request.name, request.text, request.desired_state, request.replace))
        return pb.CreateUnitResponse(unit=unit_pb(unit), created=created)

    async def SetUnitTargetState(self, request: Any, context: Any) -> pb.Unit:
        return unit_pb(await _call(context, lambda: self.service.set_target_state(
            request.name, request.desired_state)))

    async def DestroyUnit(self, request: Any, context: Any) -> pb.DestroyUnitResponse:
        await _call(context, lambda: self.service.destroy_unit(request.name))
        return pb.DestroyUnitResponse()

    async def ListUnitStates(self, request: Any, context: Any) -> pb.ListUnitStatesResponse:
        states, ips = await _call(context, lambda: self.service.list_states(
            list(request.names), request.machine_id))
        return pb.ListUnitStatesResponse(states=[
            pb.UnitState(name=s.unit, machine_id=s.machine_id, machine_ip=ips.get(s.machine_id, ""),
                         hash=s.hash, state=s.state, load_state=s.load_state,
                         active_state=s.active_state, sub_state=s.sub_state, main_pid=s.main_pid)
            for s in states])

    async def ExplainUnit(self, request: Any, context: Any) -> pb.Explanation:
        ex = await _call(context, lambda: self.service.explain_unit(request.name))
        return pb.Explanation(
            name=ex.name, desired_state=ex.desired_state, scheduled_on=list(ex.scheduled_on),
            feasible=list(ex.feasible), unschedulable_reason=ex.unschedulable_reason,
            rejected=[pb.Rejection(machine_id=m, check=c, detail=d) for m, c, d in ex.rejected])


async def start_grpc_server(service: FleetService, *, unix_socket: str = "",
                            tcp_address: str = "") -> grpc.aio.Server:
    """Serve the API on a unix socket (mode 0660) and/or a TCP address; returns the server."""
    server = grpc.aio.server()
    pb_grpc.add_FleetServicer_to_server(FleetServicer(service), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (pb.DESCRIPTOR.services_by_name["Fleet"].full_name, health.SERVICE_NAME,
             reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    if unix_socket:
        os.makedirs(os.path.dirname(unix_socket) or ".", exist_ok=True)
        if os.path.exists(unix_socket):
            os.unlink(unix_socket)
        server.add_insecure_port("unix:" + unix_socket)
    if tcp_address:
        server.add_insecure_port(tcp_address)
    await server.start()
    if unix_socket:
        os.chmod(unix_socket, 0o660)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(names[0], health_pb2.HealthCheckResponse.SERVING)
    log.info("gRPC API listening on %s", ", ".join(a for a in (unix_socket, tcp_address) if a))
    return server
