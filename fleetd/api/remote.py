"""`systemctl status` and the journal of a unit, from the machine that runs it.

Every fleetd can answer: it finds the machine the engine scheduled the unit to, and either runs
the tool itself (it is that machine) or forwards the call once, over gRPC, to the `api_address`
that machine published in its registration. fleetctl therefore needs neither SSH nor a route to
every machine: one reachable fleetd is enough, and the machines reach each other.

A forwarded call carries, in its gRPC metadata, the machine it was forwarded to and the machine
that forwarded it. The callee answers it only if it is that machine, and never forwards it
again: a wrong `api_address` or two machines' views disagreeing for a moment yield a clear
error, not a loop. The caller's deadline travels with the call (gRPC propagates the remaining
time as the forwarded call's timeout), and every channel sends keepalive pings, so a vanished
peer ends a followed journal within seconds.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
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
#: gRPC metadata of a forwarded call: the machine it is for, and the machine that forwarded it.
FORWARDED_TO = "fleet-forwarded-to"
FORWARDED_BY = "fleet-forwarded-by"
#: HTTP/2 keepalive of the API server and of forwarding channels: a peer silent for
#: KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS is gone, and its streams (journal -f) end.
KEEPALIVE_TIME_MS = 5_000
KEEPALIVE_TIMEOUT_MS = 5_000
KEEPALIVE_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),  # keep pinging a stream that sends nothing
    # gRPC >= 1.5x times out an unanswered ping by this, not by keepalive_timeout_ms alone
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
]
KEEPALIVE_SERVER_OPTIONS = [
    *KEEPALIVE_CHANNEL_OPTIONS,
    # accept our own forwarding channels' pings (gRPC's default allows one per 5 minutes)
    ("grpc.http2.min_recv_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
]


@dataclass(frozen=True)
class CallContext:
    """What a front end knows about the call being answered: for which machine it was
    forwarded here (empty: a client's own call), by which machine, and the seconds left before
    the caller's deadline (None: no deadline)."""

    forwarded_to: str = ""
    forwarded_by: str = ""
    time_left_s: float | None = None

    @classmethod
    def from_grpc(cls, context: Any) -> CallContext:
        md = {k: v for k, v in (context.invocation_metadata() or ())}
        return cls(str(md.get(FORWARDED_TO, "")), str(md.get(FORWARDED_BY, "")),
                   context.time_remaining())

    def timeout_s(self, default: float | None) -> float | None:
        """The forwarded call's timeout: what is left of ours, at most `default`."""
        if self.time_left_s is None:
            return default
        return max(0.0, self.time_left_s if default is None
                   else min(default, self.time_left_s))


NO_CONTEXT = CallContext()


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

    async def locate(self, name: str, machine_id: str = "",
                     call: CallContext = NO_CONTEXT) -> tuple[str, str]:
        """(machine id that should answer, its API address; "" when it is this machine).

        A forwarded `call` is answered here or refused: never forwarded again."""
        _check_name(name)  # never hand systemctl/journalctl a name fleet would refuse
        if call.forwarded_to and call.forwarded_to != self.machine_id:
            raise Unavailable(
                f"a call for unit {name} forwarded by machine {call.forwarded_by or '?'} to "
                f"machine {call.forwarded_to} reached machine {self.machine_id}: the "
                f"api_address machine {call.forwarded_to} publishes is wrong (api_advertise)")
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
        if call.forwarded_to:
            raise Unavailable(f"unit {name} is scheduled to machine {target}, not to "
                              f"{self.machine_id} the call was forwarded to; not forwarding it "
                              "again")
        m = st.machines.get(target)
        if m is None:
            raise Unavailable(f"machine {target} running unit {name} is not live")
        address = getattr(m, "api_address", "")
        if not address:
            raise Unavailable(f"machine {target} publishes no API address (set api_tcp or "
                              "api_advertise on it)")
        return target, address

    def _forward_metadata(self, target: str) -> tuple[tuple[str, str], ...]:
        return ((FORWARDED_TO, target), (FORWARDED_BY, self.machine_id))

    async def status(self, name: str, machine_id: str = "", lines: int = 0,
                     call: CallContext = NO_CONTEXT) -> tuple[str, str, int]:
        """(machine id, systemctl status output, its exit code)."""
        target, address = await self.locate(name, machine_id, call)
        if address:
            from fleetd.api.pb import fleet_pb2 as pb

            async with _channel(address, self.tls) as stub:
                resp = await _forward(address, stub.UnitStatus(
                    pb.UnitStatusRequest(name=name, machine_id=target, lines=lines),
                    timeout=call.timeout_s(FORWARD_TIMEOUT_S),
                    metadata=self._forward_metadata(target)))
            return resp.machine_id, resp.output, resp.exit_code
        try:
            out, rc = await self.tools.status(name, lines)
        except ToolError as e:
            raise Unavailable(str(e)) from None
        return target, out, rc

    async def restart(self, name: str, machine_id: str = "",
                      call: CallContext = NO_CONTEXT) -> tuple[str, str, int]:
        """(machine id, systemctl restart output, its exit code)."""
        target, address = await self.locate(name, machine_id, call)
        if address:
            from fleetd.api.pb import fleet_pb2 as pb

            async with _channel(address, self.tls) as stub:
                resp = await _forward(address, stub.RestartUnit(
                    pb.RestartUnitRequest(name=name, machine_id=target),
                    timeout=call.timeout_s(FORWARD_TIMEOUT_S),
                    metadata=self._forward_metadata(target)))
            return resp.machine_id, resp.output, resp.exit_code
        try:
            out, rc = await self.tools.restart(name)
        except ToolError as e:
            raise Unavailable(str(e)) from None
        return target, out, rc

    async def journal(self, name: str, machine_id: str = "", lines: int = 10,
                      output: str = "short", follow: bool = False,
                      call: CallContext = NO_CONTEXT) -> AsyncIterator[tuple[str, bytes]]:
        """(machine id, chunk of journalctl output) until it ends (or forever with follow)."""
        try:
            self.tools.journal_argv(name, lines, output or "short", follow)
        except ToolError as e:
            raise InvalidArgument(str(e)) from None
        target, address = await self.locate(name, machine_id, call)
        if address:
            import grpc

            from fleetd.api.pb import fleet_pb2 as pb

            async with _channel(address, self.tls) as stub:
                stream = stub.Journal(pb.JournalRequest(
                    name=name, machine_id=target, lines=lines, output=output, follow=follow),
                    timeout=call.timeout_s(None), metadata=self._forward_metadata(target))
                try:
                    async for chunk in stream:
                        yield chunk.machine_id, chunk.data
                except grpc.aio.AioRpcError as e:
                    raise _forward_error(address, e) from None
                finally:
                    stream.cancel()
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
            self._channel = grpc.aio.secure_channel(address, tls.grpc_channel_credentials(),
                                                    options=KEEPALIVE_CHANNEL_OPTIONS)
        else:
            self._channel = grpc.aio.insecure_channel(address, options=KEEPALIVE_CHANNEL_OPTIONS)
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

