"""fleetctl's connection to a fleetd gRPC API."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

DEFAULT_ENDPOINT = "unix:///var/run/fleet-py.sock"


class FleetctlError(Exception):
    """A user-facing failure: printed as `Error: <message>` with a non-zero exit."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class NotFoundError(FleetctlError):
    pass


class NotRunningError(FleetctlError):
    """The unit exists but runs nowhere (or not where asked)."""


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


@dataclass(frozen=True)
class TlsFiles:
    """fleet's --ca-file/--cert-file/--key-file: verify fleetd with the CA, prove who we are
    with the certificate (fleetd's TCP API requires it)."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    def __bool__(self) -> bool:
        return bool(self.ca_file or self.cert_file or self.key_file)

    def credentials(self) -> Any:
        import grpc

        if bool(self.cert_file) != bool(self.key_file):
            raise FleetctlError("--cert-file and --key-file go together")
        pems = []
        for flag, path in (("--ca-file", self.ca_file), ("--cert-file", self.cert_file),
                           ("--key-file", self.key_file)):
            try:
                pems.append(_read(path) if path else None)
            except OSError as e:
                raise FleetctlError(f"cannot read {flag} {path}: {e.strerror}") from None
        return grpc.ssl_channel_credentials(root_certificates=pems[0], private_key=pems[2],
                                            certificate_chain=pems[1])


def _read(path: str) -> bytes:
    with open(os.path.expanduser(path), "rb") as f:
        return f.read()


class Client:
    """Synchronous gRPC client: one call per method, errors as FleetctlError.

    TCP endpoints use TLS when `tls` names files or the endpoint is https://; unix sockets
    never do. `server_name` is the name to verify fleetd's certificate against when the
    endpoint is not fleetd's own address (an SSH tunnel)."""

    def __init__(self, endpoint: str | None = None, timeout_s: float = 10.0,
                 tls: TlsFiles | None = None, server_name: str = "") -> None:
        import grpc

        from fleetd.api.pb import fleet_pb2, fleet_pb2_grpc

        self.endpoint = endpoint or os.environ.get("FLEETCTL_ENDPOINT") or DEFAULT_ENDPOINT
        self.timeout_s = timeout_s
        self.pb = fleet_pb2
        self._grpc = grpc
        target = grpc_target(self.endpoint)
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", 512 * 1024 * 1024)]
        tls = tls or TlsFiles()
        self.secure = bool(server_name and tls) or (not target.startswith("unix:") and (
            bool(tls) or self.endpoint.strip().startswith("https://")))
        if self.secure:
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            self._channel = grpc.secure_channel(target, tls.credentials(), options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = fleet_pb2_grpc.FleetStub(self._channel)

    def call(self, method: str, **fields: Any) -> Any:
        request_type = {
            "ListMachines": "ListMachinesRequest", "ListUnits": "ListUnitsRequest",
            "GetUnit": "GetUnitRequest", "CreateUnit": "CreateUnitRequest",
            "SetUnitTargetState": "SetUnitTargetStateRequest",
            "DestroyUnit": "DestroyUnitRequest", "ListUnitStates": "ListUnitStatesRequest",
            "ExplainUnit": "ExplainUnitRequest",
            "UnitStatus": "UnitStatusRequest", "RestartUnit": "RestartUnitRequest",
            "SetMachineMetadata": "SetMachineMetadataRequest",
        }[method]
        request = getattr(self.pb, request_type)(**fields)
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout_s)
        except self._grpc.RpcError as e:
            raise self._error(e) from None

    def stream(self, method: str, timeout_s: float | None = None, **fields: Any
               ) -> Iterator[Any]:
        """Messages of a server-streaming call (Journal, Watch); no deadline unless given."""
        request_type = {"Journal": "JournalRequest", "Watch": "WatchRequest"}[method]
        request = getattr(self.pb, request_type)(**fields)
        call = getattr(self._stub, method)(request, timeout=timeout_s)
        try:
            yield from call
        except self._grpc.RpcError as e:
            raise self._error(e) from None
        finally:
            call.cancel()

    def _error(self, e: Any) -> FleetctlError:
        code = e.code()
        if code == self._grpc.StatusCode.NOT_FOUND:
            return NotFoundError(e.details())
        if code == self._grpc.StatusCode.UNAVAILABLE and "etcd" not in (e.details() or ""):
            hint = "" if self.secure or self.endpoint.startswith(("unix:", "/")) else \
                " (a TCP API requires TLS: pass --ca-file, --cert-file and --key-file)"
            return FleetctlError(f"cannot reach fleetd at {self.endpoint}: {e.details()}{hint}")
        if code == self._grpc.StatusCode.DEADLINE_EXCEEDED:
            return FleetctlError(f"fleetd at {self.endpoint} did not answer within "
                                 f"{self.timeout_s:g}s")
        if code == self._grpc.StatusCode.FAILED_PRECONDITION:
            return NotRunningError(e.details() or str(code))
        return FleetctlError(e.details() or str(code))

    def close(self) -> None:
        self._channel.close()
