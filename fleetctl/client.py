"""fleetctl's connection to a fleetd gRPC API."""

from __future__ import annotations

import os
from typing import Any

DEFAULT_ENDPOINT = "unix:///var/run/fleet-py.sock"


class FleetctlError(Exception):
    """A user-facing failure: printed as `Error: <message>` with a non-zero exit."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class NotFoundError(FleetctlError):
    pass


def grpc_target(endpoint: str) -> str:
    """A gRPC target from fleetctl's endpoint forms: unix:///path, /path, http://host:port,
    host:port."""
    ep = endpoint.strip()
    if ep.startswith("unix:"):
        return ep
    if ep.startswith("/"):
        return "unix://" + ep
    for scheme in ("http://", "https://", "grpc://"):
        if ep.startswith(scheme):
            return ep[len(scheme):].rstrip("/")
    return ep


class Client:
    """Synchronous gRPC client: one call per method, errors as FleetctlError."""

    def __init__(self, endpoint: str | None = None, timeout_s: float = 10.0) -> None:
        import grpc

        from fleetd.api.pb import fleet_pb2, fleet_pb2_grpc

        self.endpoint = endpoint or os.environ.get("FLEETCTL_ENDPOINT") or DEFAULT_ENDPOINT
        self.timeout_s = timeout_s
        self.pb = fleet_pb2
        self._grpc = grpc
        self._channel = grpc.insecure_channel(grpc_target(self.endpoint))
        self._stub = fleet_pb2_grpc.FleetStub(self._channel)

    def call(self, method: str, **fields: Any) -> Any:
        request_type = {
            "ListMachines": "ListMachinesRequest", "ListUnits": "ListUnitsRequest",
            "GetUnit": "GetUnitRequest", "CreateUnit": "CreateUnitRequest",
            "SetUnitTargetState": "SetUnitTargetStateRequest",
            "DestroyUnit": "DestroyUnitRequest", "ListUnitStates": "ListUnitStatesRequest",
            "ExplainUnit": "ExplainUnitRequest",
        }[method]
        request = getattr(self.pb, request_type)(**fields)
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout_s)
        except self._grpc.RpcError as e:
            code = e.code()
            if code == self._grpc.StatusCode.NOT_FOUND:
                raise NotFoundError(e.details()) from None
            if code == self._grpc.StatusCode.UNAVAILABLE and "etcd" not in (e.details() or ""):
                raise FleetctlError(f"cannot reach fleetd at {self.endpoint}: {e.details()}") \
                    from None
            raise FleetctlError(e.details() or str(code)) from None

    def close(self) -> None:
        self._channel.close()
