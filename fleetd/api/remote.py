"""`systemctl status` and the journal of a unit, from the machine that runs it.

Every fleetd can answer: it finds the machine the engine scheduled the unit to, and either runs
the tool itself (it is that machine) or forwards the call once, over gRPC, to the `api_address`
that machine published in its registration. fleetctl therefore needs neither SSH nor a route to
every machine: one reachable fleetd is enough, and the machines reach each other.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from fleetd.api.service import (
    ApiError,
    FleetService,
    InvalidArgument,
    NotFound,
    Unavailable,
    _check_name,
)
from fleetd.api.tls import ApiTls
from fleetd.systemd.cli_tools import SystemdTools, ToolError

log = logging.getLogger("fleetd.api")

FORWARD_TIMEOUT_S = 15.0


class NotRunning(ApiError):
    """The unit exists but no machine holds it (or not the one asked for)."""

    code = "failed_precondition"


class UnitOutputs:
    """Answers status and journal requests for units, locally or by forwarding."""

    def __init__(self, service: FleetService, machine_id: str, tools: SystemdTools,
                 tls: ApiTls | None = None) -> None:
        self.service = service
        self.machine_id = machine_id
        self.tools = tools
        self.tls = tls  # mutual TLS to the other fleetds' api_tcp (plain text without it)

    async def locate(self, name: str, machine_id: str = "") -> tuple[str, str]:
        """(machine id that should answer, its API address; "" when it is this machine)."""
        _check_name(name)  # never hand systemctl/journalctl a name fleet would refuse
        # Checked even when this machine is the one named (as on a forwarded call): a unit is
        # only ever shown from a machine it is scheduled to.
        st = await self.service._state()
        if name not in st.units:
            raise NotFound(f"unit {name} does not exist")
        scheduled = sorted(st.schedule.get(name, {}))
        if machine_id:
            if machine_id not in scheduled:
                raise NotRunning(f"unit {name} is not scheduled to machine {machine_id}")
            target = machine_id
        elif not scheduled:
            raise NotRunning(f"unit {name} is not scheduled to any machine")
        else:
            target = self.machine_id if self.machine_id in scheduled else scheduled[0]
        if target == self.machine_id:
            return target, ""
        m = st.machines.get(target)
        if m is None:
            raise Unavailable(f"machine {target} running unit {name} is not live")
        address = getattr(m, "api_address", "")
        if not address:
            raise Unavailable(f"machine {target} publishes no API address (set api_tcp or "
                              "api_advertise on it)")
        return target, address

    async def status(self, name: str, machine_id: str = "", lines: int = 0) -> tuple[str, str, int]:
        """(machine id, systemctl status output, its exit code)."""
        target, address = await self.locate(name, machine_id)
        if address:
            from fleetd.api.pb import fleet_pb2 as pb

            async with _channel(address, self.tls) as stub:
                resp = await _forward(address, stub.UnitStatus(
                    pb.UnitStatusRequest(name=name, machine_id=target, lines=lines),
                    timeout=FORWARD_TIMEOUT_S))
            return resp.machine_id, resp.output, resp.exit_code
        try:
            out, rc = await self.tools.status(name, lines)
        except ToolError as e:
            raise Unavailable(str(e)) from None
        return target, out, rc

    async def restart(self, name: str, machine_id: str = "") -> tuple[str, str, int]:
        """(machine id, systemctl restart output, its exit code)."""
        target, address = await self.locate(name, machine_id)
        if address:
            from fleetd.api.pb import fleet_pb2 as pb

            async with _channel(address, self.tls) as stub:
                resp = await _forward(address, stub.RestartUnit(
                    pb.RestartUnitRequest(name=name, machine_id=target),
                    timeout=FORWARD_TIMEOUT_S))
            return resp.machine_id, resp.output, resp.exit_code
        try:
            out, rc = await self.tools.restart(name)
        except ToolError as e:
            raise Unavailable(str(e)) from None
        return target, out, rc

    async def journal(self, name: str, machine_id: str = "", lines: int = 10,
                      output: str = "short", follow: bool = False
                      ) -> AsyncIterator[tuple[str, bytes]]:
        """(machine id, chunk of journalctl output) until it ends (or forever with follow)."""
        try:
            self.tools.journal_argv(name, lines, output or "short", follow)
        except ToolError as e:
            raise InvalidArgument(str(e)) from None
        target, address = await self.locate(name, machine_id)
        if address:
            import grpc

            from fleetd.api.pb import fleet_pb2 as pb

            async with _channel(address, self.tls) as stub:
                call = stub.Journal(pb.JournalRequest(
                    name=name, machine_id=target, lines=lines, output=output, follow=follow))
                try:
                    async for chunk in call:
                        yield chunk.machine_id, chunk.data
                except grpc.aio.AioRpcError as e:
                    raise _forward_error(address, e) from None
                finally:
                    call.cancel()
            return
        try:
            async for data in self.tools.journal(name, lines, output or "short", follow):
                yield target, data
        except ToolError as e:
            raise Unavailable(str(e)) from None


class _channel:
    """A gRPC channel to another fleetd (mutual TLS with `tls`), closed on exit; yields its
    Fleet stub."""

    def __init__(self, address: str, tls: ApiTls | None) -> None:
        import grpc

        from fleetd.api.pb import fleet_pb2_grpc as pb_grpc

        if tls is not None:
            self._channel = grpc.aio.secure_channel(address, tls.grpc_channel_credentials())
        else:
            self._channel = grpc.aio.insecure_channel(address)
        self._stub = pb_grpc.FleetStub(self._channel)

    async def __aenter__(self) -> Any:
        return self._stub

    async def __aexit__(self, *exc: object) -> None:
        await self._channel.close()


async def _forward(address: str, call: Any) -> Any:
    import grpc

    try:
        return await call
    except grpc.aio.AioRpcError as e:
        raise _forward_error(address, e) from None


def _forward_error(address: str, e: Any) -> ApiError:
    import grpc

    code = e.code()
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(e.details())
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return NotRunning(e.details())
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(e.details())
    return Unavailable(f"fleetd at {address}: {e.details() or code.name}")


async def peer_etcd_age(address: str, timeout_s: float, tls: ApiTls | None,
                        machine_id: str) -> float | None:
    """Seconds since the fleetd at `address` last got an answer from etcd (inf: never); None
    when that fleetd does not answer within `timeout_s` (asked by `machine_id`)."""
    import grpc

    from fleetd.api.pb import fleet_pb2 as pb

    try:
        async with _channel(address, tls) as stub:
            resp = await stub.PeerEtcdStatus(pb.PeerEtcdStatusRequest(machine_id=machine_id),
                                             timeout=timeout_s)
    except grpc.aio.AioRpcError:
        return None
    age = float(resp.last_answer_age_s)
    return age if age >= 0 else float("inf")
