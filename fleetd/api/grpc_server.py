"""gRPC front end of the API (service `fleetpy.v1.Fleet`), with health checking and reflection."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fleetd.api.pb import fleet_pb2 as pb
from fleetd.api.pb import fleet_pb2_grpc as pb_grpc
from fleetd.api.remote import KEEPALIVE_SERVER_OPTIONS, CallContext, NotRunning, UnitOutputs
from fleetd.api.service import (
    AlreadyExists,
    ApiError,
    FleetService,
    InvalidArgument,
    NotFound,
    RowCache,
    Unavailable,
    UnitInfo,
)
from fleetd.api.tls import ApiTls, secure_unix_socket
from fleetd.registry import (
    ClusterState,
    EtcdError,
    MachineRecord,
    UnitStateRecord,
    WatchCompacted,
)
from fleetd.registry import view as view_mod
from fleetd.registry.changes import Event

log = logging.getLogger("fleetd.api")

MAX_MESSAGE_BYTES = 512 * 1024 * 1024  # list calls on 10,000+ unit clusters exceed 4 MiB
# Largest request accepted (RESOURCE_EXHAUSTED beyond): a unit file is at most 1 MiB, and
# HTTP v1 bodies are bounded the same way (http_v1.MAX_BODY_BYTES).
MAX_REQUEST_BYTES = 8 * 1024 * 1024

_CODES = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    NotRunning: grpc.StatusCode.FAILED_PRECONDITION,
}

T = TypeVar("T")


def _status_of(e: ApiError) -> grpc.StatusCode:
    """The gRPC status of a refused request."""
    return _CODES.get(type(e), grpc.StatusCode.INTERNAL)


async def _call(context: grpc.aio.ServicerContext, fn: Callable[[], Awaitable[T]]) -> T:
    try:
        return await fn()
    except ApiError as e:
        await context.abort(_status_of(e), str(e))
        raise  # unreachable: abort raises


def unit_pb(u: UnitInfo) -> pb.Unit:
    out = pb.Unit(name=u.name, text=u.text, hash=u.hash, desired_state=u.desired_state,
                  current_state=u.current_state, machine_ids=list(u.machine_ids),
                  unschedulable_reason=u.unschedulable_reason, description=u.description,
                  is_global=u.is_global)
    if u.move is not None:
        out.move_phase, out.move_from = u.move.phase, u.move.from_machine
        out.move_to, out.move_reason = u.move.to_machine, u.move.reason
    return out


def machine_pb(m: MachineRecord, leader: str | None = None,
               draining: Collection[str] = (),
               reserved: tuple[int, int] = (0, 0)) -> pb.Machine:
    return pb.Machine(id=m.id, ip=m.ip, metadata=m.metadata, hostname=m.hostname,
                      version=m.version, engine_leader=(m.id == leader),
                      api_address=getattr(m, "api_address", ""),
                      state="draining" if m.id in draining else "active",
                      # -- resources --
                      cpu_milli=m.cpu, memory_bytes=m.memory,
                      host_reserved_cpu_milli=m.reserved_cpu,
                      host_reserved_memory_bytes=m.reserved_memory,
                      reserved_cpu_milli=reserved[0], reserved_memory_bytes=reserved[1])


def state_pb(s: UnitStateRecord, ip: str) -> pb.UnitState:
    return pb.UnitState(name=s.unit, machine_id=s.machine_id, machine_ip=ip, hash=s.hash,
                        state=s.state, load_state=s.load_state, active_state=s.active_state,
                        sub_state=s.sub_state, main_pid=s.main_pid)


def _field_1(msg_bytes: bytes) -> bytes:
    """`msg_bytes` encoded as one element of a message's field 1 (length-delimited)."""
    n, head = len(msg_bytes), bytearray(b"\x0a")
    while n >= 0x80:
        head.append((n & 0x7F) | 0x80)
        n >>= 7
    head.append(n)
    return bytes(head) + msg_bytes


def _unit_row(u: UnitInfo) -> bytes:
    """One unit as an element of a `ListUnitsResponse` (its field 1), encoded."""
    return _field_1(unit_pb(u).SerializeToString())


def _state_row(s_ip: tuple[UnitStateRecord, str]) -> bytes:
    """One (state, machine IP) as an element of a `ListUnitStatesResponse`, encoded."""
    return _field_1(state_pb(*s_ip).SerializeToString())


def _serialize(message: Any) -> bytes:
    """A response serializer that also passes an answer encoded already (bytes) through: the
    list calls join their cached rows instead of building a 10,000-element message."""
    return message if isinstance(message, bytes) else message.SerializeToString()  # type: ignore[no-any-return]


_PREENCODED = ("ListUnits", "ListUnitStates")


class _PreencodedLists:
    """What `add_FleetServicer_to_server` registers on, with the list calls' serializers
    swapped for `_serialize`."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self.server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the same handlers come registered by name (below), which gRPC looks up first

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        handlers = {name: h._replace(response_serializer=_serialize) if name in _PREENCODED
                    else h for name, h in handlers.items()}
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, handlers),))
        self.server.add_registered_method_handlers(service, handlers)


class FleetServicer(pb_grpc.FleetServicer):
    def __init__(self, service: FleetService, outputs: UnitOutputs | None = None) -> None:
        self.service = service
        self.outputs = outputs
        self._unit_rows: RowCache[bytes] = RowCache(_unit_row)
        self._state_rows: RowCache[bytes] = RowCache(_state_row)

    async def ListMachines(self, request: Any, context: Any) -> pb.ListMachinesResponse:
        machines, leader, used = await _call(context, self.service.list_machines_reserved)
        draining = await _call(context, self.service.draining)
        return pb.ListMachinesResponse(machines=[machine_pb(m, leader, draining,
                                                            used.get(m.id, (0, 0)))
                                                 for m in machines])

    async def ListUnits(self, request: Any, context: Any) -> pb.ListUnitsResponse | bytes:
        """The answer encoded already (`_serialize`): the rows of the units unchanged since
        the last call come from the row cache."""
        if request.with_text:  # rare, and the texts would make the cache big
            units = await _call(context, lambda: self.service.list_units(True))
            return pb.ListUnitsResponse(units=[unit_pb(u) for u in units])
        return b"".join(await _call(context, lambda: self.service.list_unit_rows(
            self._unit_rows)))

    async def GetUnit(self, request: Any, context: Any) -> pb.Unit:
        return unit_pb(await _call(context, lambda: self.service.get_unit(request.name)))

    async def CreateUnit(self, request: Any, context: Any) -> pb.CreateUnitResponse:
        unit, created = await _call(context, lambda: self.service.create_unit(
            request.name, request.text, request.desired_state, request.replace))
        return pb.CreateUnitResponse(unit=unit_pb(unit), created=created)

    async def CreateUnits(self, request: Any, context: Any) -> pb.CreateUnitsResponse:
        got = await _call(context, lambda: self.service.create_units(
            [(u.name, u.text, u.desired_state, u.replace) for u in request.units]))
        out = pb.CreateUnitsResponse()
        for g in got:
            if isinstance(g, Exception):
                out.outcomes.add(code=_status_of(g).value[0], message=str(g))
            else:
                out.outcomes.add(response=pb.CreateUnitResponse(unit=unit_pb(g[0]),
                                                                created=g[1]))
        return out

    async def SetUnitTargetState(self, request: Any, context: Any) -> pb.Unit:
        return unit_pb(await _call(context, lambda: self.service.set_target_state(
            request.name, request.desired_state)))

    async def DestroyUnit(self, request: Any, context: Any) -> pb.DestroyUnitResponse:
        await _call(context, lambda: self.service.destroy_unit(request.name))
        return pb.DestroyUnitResponse()

    async def ListUnitStates(self, request: Any, context: Any) -> bytes:
        """The answer encoded already (`_serialize`), from the row cache like ListUnits."""
        return b"".join(await _call(context, lambda: self.service.list_state_rows(
            self._state_rows, list(request.names), request.machine_id)))

    async def SetMachineMetadata(self, request: Any, context: Any) -> pb.Machine:
        mid = request.machine_id
        items: list[tuple[str, str | None]] = [(k, v) for k, v in sorted(request.set.items())]
        items += [(k, None) for k in request.delete]
        await _call(context, lambda: self.service.set_machine_metadata({mid: items}))
        machines, leader, used = await _call(context, self.service.list_machines_reserved)
        for m in machines:
            if m.id == mid:
                return machine_pb(m, leader, await _call(context, self.service.draining),
                                  used.get(m.id, (0, 0)))
        return pb.Machine(id=mid)

    # --- machine maintenance --------------------------------------------------------------
    async def DrainMachine(self, request: Any, context: Any) -> pb.Machine:
        m = await _call(context, lambda: self.service.drain_machine(
            request.machine, request.pinned, request.include_global))
        return machine_pb(m, None, (m.id,))

    async def UndrainMachine(self, request: Any, context: Any) -> pb.Machine:
        m = await _call(context, lambda: self.service.undrain_machine(request.machine))
        return machine_pb(m)

    async def MoveUnit(self, request: Any, context: Any) -> pb.MoveUnitResponse:
        source, to = await _call(context, lambda: self.service.move_unit(
            request.name, request.machine))
        return pb.MoveUnitResponse(from_machine=source, to_machine=to)

    def _outputs(self) -> UnitOutputs:
        if self.outputs is None:
            raise Unavailable("this fleetd serves no unit status or journal")
        return self.outputs

    async def UnitStatus(self, request: Any, context: Any) -> pb.UnitStatusResponse:
        mid, out, rc = await _call(context, lambda: self._outputs().status(
            request.name, request.machine_id, request.lines, CallContext.from_grpc(context)))
        return pb.UnitStatusResponse(machine_id=mid, output=out, exit_code=rc)

    async def RestartUnit(self, request: Any, context: Any) -> pb.UnitStatusResponse:
        mid, out, rc = await _call(context, lambda: self._outputs().restart(
            request.name, request.machine_id, CallContext.from_grpc(context)))
        return pb.UnitStatusResponse(machine_id=mid, output=out, exit_code=rc)

    async def Journal(self, request: Any, context: Any) -> AsyncIterator[pb.JournalChunk]:
        try:
            async for mid, data in self._outputs().journal(
                    request.name, request.machine_id, request.lines, request.output,
                    request.follow, CallContext.from_grpc(context)):
                yield pb.JournalChunk(machine_id=mid, data=data)
        except ApiError as e:
            await context.abort(_status_of(e), str(e))

    async def Watch(self, request: Any, context: Any) -> AsyncIterator[pb.WatchEvent]:
        every = not (request.machines or request.units or request.states)
        want = {"machine": every or request.machines, "unit": every or request.units,
                "state": every or request.states}
        only = set(request.names)  # a waiting fleetctl follows its own units only

        def wanted(kind: str, unit: str) -> bool:
            return bool(want[kind]) and (not only or kind == "machine" or unit in only)

        view = self.service.view
        if view is not None and not request.start_revision:
            # From the view: a snapshot of what was asked for, then its events as the view
            # applies them; no read or watch of etcd of its own.
            leader = await self.service.registry.leader() if want["machine"] else None
            st = await view.snapshot()
            if st is view.state:
                async for out in self._from_view(view, st, want, wanted, only, leader,
                                                 context):
                    yield out
                return
        follower = self.service.registry.follow(revision=request.start_revision)
        sent = bool(not request.start_revision)
        try:
            # The stream outlives etcd faults: the follower resumes from the last revision
            # applied, and only when that history is gone (compacted) re-lists and says what
            # changed in between.
            async for update in follower:
                st = update.state
                if update.kind == "reset" and not update.compacted:
                    if request.start_revision:
                        continue
                    leader = await self.service.registry.leader() if want["machine"] else None
                    yield self._snapshot_pb(st, want, wanted, only, leader)
                    continue
                if update.kind == "interrupted":
                    log.info("Watch: etcd watch interrupted (%s); resuming from revision %d",
                             update.reason, update.revision + 1)
                    continue
                if update.compacted:
                    if not sent:  # the client asked for history that is gone
                        raise WatchCompacted(update.reason)
                    log.info("Watch: %s; re-listing", update.reason)
                for ev in update.events:
                    if wanted(ev.kind.split("_")[0], ev.name):
                        sent = True
                        yield self._event_pb(st, ev)
        except WatchCompacted as e:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, str(e))
        except EtcdError as e:
            if "compact" in str(e):
                await context.abort(grpc.StatusCode.OUT_OF_RANGE, str(e))
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))

    async def _from_view(self, view: view_mod.ClusterView, st: ClusterState, want: dict[str, Any],
                         wanted: Callable[[str, str], bool], only: set[str],
                         leader: str | None, context: Any) -> AsyncIterator[pb.WatchEvent]:
        """A Watch served by the view: the snapshot of `st` (the view's own state, just
        proven current), then the events the view applies from there."""
        sub = view.subscribe(only or None, bool(want["machine"]),
                             lambda st, ev: (self._event_pb(st, ev)
                                             if wanted(ev.kind.split("_")[0], ev.name) else None))
        try:
            yield self._snapshot_pb(st, want, wanted, only, leader)
            while True:
                item = await sub.next()
                if item is view_mod.ENDED:
                    await context.abort(grpc.StatusCode.UNAVAILABLE,
                                        "fleetd's cluster view stopped")
                if item is not view_mod.OVERFLOWED:
                    yield item
                    continue
                # fell behind: start over, from now
                log.info("Watch: a stream fell %d events behind; a fresh snapshot",
                         view_mod.SUBSCRIPTION_LIMIT)
                leader = await self.service.registry.leader() if want["machine"] else None
                if view.state is not None:  # (else ENDED comes next)
                    snap = self._snapshot_pb(view.state, want, wanted, only, leader)
                    sub.resume()  # no await since the snapshot: no event falls in between
                    yield snap
        finally:
            sub.close()

    def _snapshot_pb(self, st: ClusterState, want: dict[str, Any],
                     wanted: Callable[[str, str], bool], only: set[str],
                     leader: str | None) -> pb.WatchEvent:
        """The SNAPSHOT event of a Watch: what it asked for in `st` (of the units `only`, when
        given: looked up by name, not by a pass over the cluster)."""
        machines = st.machines
        used = self.service.reserved(st) if want["machine"] else {}
        units = sorted(n for n in only if n in st.units) if only else sorted(st.units)
        stated = sorted(n for n in only if n in st.states) if only else sorted(st.states)
        snap = pb.Snapshot(
            machines=[machine_pb(st.machines[k], leader, st.draining, used.get(k, (0, 0)))
                      for k in sorted(st.machines)] if want["machine"] else [],
            units=[unit_pb(self.service._info(st, n, False))
                   for n in units if wanted("unit", n)],
            states=[state_pb(st.states[u][m], machines[m].ip if m in machines else "")
                    for u in stated if wanted("state", u) for m in sorted(st.states[u])])
        return pb.WatchEvent(kind=pb.WatchEvent.SNAPSHOT, revision=st.revision, snapshot=snap)

    def _event_pb(self, st: ClusterState, ev: Event) -> pb.WatchEvent:
        from fleetd.registry import changes as w

        out = pb.WatchEvent(revision=ev.revision, name=ev.name, machine_id=ev.machine_id)
        if ev.kind == w.MACHINE_PUT:
            out.kind = pb.WatchEvent.MACHINE_PUT
            used = self.service.reserved(st, ev.machine_id).get(ev.machine_id, (0, 0))
            out.machine.CopyFrom(machine_pb(st.machines[ev.machine_id], None, st.draining,
                                            used))
        elif ev.kind == w.MACHINE_DELETED:
            out.kind = pb.WatchEvent.MACHINE_DELETED
        elif ev.kind == w.UNIT_PUT:
            out.kind = pb.WatchEvent.UNIT_PUT
            out.unit.CopyFrom(unit_pb(self.service._info(st, ev.name, False)))
        elif ev.kind == w.UNIT_DELETED:
            out.kind = pb.WatchEvent.UNIT_DELETED
        elif ev.kind == w.STATE_PUT:
            out.kind = pb.WatchEvent.STATE_PUT
            m = st.machines.get(ev.machine_id)
            out.state.CopyFrom(state_pb(st.states[ev.name][ev.machine_id], m.ip if m else ""))
        else:
            out.kind = pb.WatchEvent.STATE_DELETED
        return out

    async def ExplainUnit(self, request: Any, context: Any) -> pb.Explanation:
        ex = await _call(context, lambda: self.service.explain_unit(request.name))
        return pb.Explanation(
            name=ex.name, desired_state=ex.desired_state, scheduled_on=list(ex.scheduled_on),
            feasible=list(ex.feasible), unschedulable_reason=ex.unschedulable_reason,
            rejected=[pb.Rejection(machine_id=m, check=c, detail=d) for m, c, d in ex.rejected],
            scores=[pb.MachineScore(machine_id=m, score=sc, detail=d) for m, sc, d in ex.scores])


async def start_grpc_server(service: FleetService, *, unix_socket: str = "",
                            tcp_address: str = "",
                            outputs: UnitOutputs | None = None,
                            tls: ApiTls | None = None,
                            socket_group: str = "") -> grpc.aio.Server:
    """Serve the API on a unix socket (mode 0660, group `socket_group`) and/or a TCP address
    (mutual TLS with `tls`; plain text without it, which the caller must have allowed); returns
    the server. `outputs` answers UnitStatus/Journal (this machine's systemd tools and
    forwarding)."""
    # Keepalive: a client that vanished (powered off, cut off) without closing its connection
    # is noticed within seconds, and its streams (a followed journal's journalctl) end.
    server = grpc.aio.server(options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                                      *KEEPALIVE_SERVER_OPTIONS])
    pb_grpc.add_FleetServicer_to_server(FleetServicer(service, outputs),
                                        _PreencodedLists(server))
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
    if tcp_address and tls is not None:
        server.add_secure_port(tcp_address, tls.grpc_server_credentials())
    elif tcp_address:
        server.add_insecure_port(tcp_address)
    await server.start()
    if unix_socket:
        secure_unix_socket(unix_socket, socket_group)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(names[0], health_pb2.HealthCheckResponse.SERVING)
    log.info("gRPC API listening on %s", ", ".join(a for a in (unix_socket, tcp_address) if a))
    return server
