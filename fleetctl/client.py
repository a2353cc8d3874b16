"""fleetctl's connection to a fleetd gRPC API (over `fleetctl.wire`, not grpcio: see there)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator

#: typing's names are for the type checker only: importing typing cost each run ~5 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Generic, TypeVar

    from google.protobuf.message import Message

    from fleetd.api.pb import fleet_pb2 as pb

    M = TypeVar("M", bound=Message)

DEFAULT_ENDPOINT = "unix:///var/run/fleet-py.sock"


class FleetctlError(Exception):
    """A user-facing failure: printed as `Error: <message>` with a non-zero exit."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.rpc_code = 0  # the gRPC status code of a failed call, if that is what it was


class NotFoundError(FleetctlError):
    pass


class NotRunningError(FleetctlError):
    """The unit exists but runs nowhere (or not where asked)."""


class DeadlineExceeded(FleetctlError):
    """fleetd did not answer (or a stream did not end) within the time given."""


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


class TlsFiles:
    """fleet's --ca-file/--cert-file/--key-file: verify fleetd with the CA, prove who we are
    with the certificate (fleetd's TCP API requires it). A value: compared and hashed by its
    three paths. (A plain class: `dataclasses` costs every fleetctl run a few milliseconds.)"""

    __slots__ = ("ca_file", "cert_file", "key_file")

    def __init__(self, ca_file: str = "", cert_file: str = "", key_file: str = "") -> None:
        self.ca_file, self.cert_file, self.key_file = ca_file, cert_file, key_file

    def _key(self) -> tuple[str, str, str]:
        return self.ca_file, self.cert_file, self.key_file

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TlsFiles) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return "TlsFiles(ca_file={!r}, cert_file={!r}, key_file={!r})".format(*self._key())

    def __bool__(self) -> bool:
        return bool(self.ca_file or self.cert_file or self.key_file)

    def ssl_context(self) -> Any:
        """The TLS client side: fleetd verified against the CA (the system's CAs when none is
        given), our certificate and key presented, HTTP/2 offered (gRPC's ALPN)."""
        import ssl

        if bool(self.cert_file) != bool(self.key_file):
            raise FleetctlError("--cert-file and --key-file go together")
        for flag, path in (("--ca-file", self.ca_file), ("--cert-file", self.cert_file),
                           ("--key-file", self.key_file)):
            try:
                if path:
                    _read(path)
            except OSError as e:
                raise FleetctlError(f"cannot read {flag} {path}: {e.strerror}") from None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            if self.ca_file:
                ctx.load_verify_locations(cafile=os.path.expanduser(self.ca_file))
            else:
                ctx.load_default_certs()
        except ssl.SSLError as e:
            raise FleetctlError(f"--ca-file {self.ca_file} holds no usable certificate: "
                                f"{e.reason or e}") from None
        if self.cert_file:
            try:
                ctx.load_cert_chain(os.path.expanduser(self.cert_file),
                                    os.path.expanduser(self.key_file))
            except ssl.SSLError as e:
                raise FleetctlError(f"--cert-file {self.cert_file} and --key-file "
                                    f"{self.key_file} do not make a usable pair: "
                                    f"{e.reason or e}") from None
        ctx.set_alpn_protocols(["h2"])
        return ctx


def _read(path: str) -> bytes:
    with open(os.path.expanduser(path), "rb") as f:
        return f.read()


_SERVICE = "/fleetpy.v1.Fleet/"
#: Calls `_unary_many` keeps in flight at once.
MAX_IN_FLIGHT = 32
#: Units per CreateUnits call, and the unit text one call carries at most (fleetd accepts
#: messages of 4 MiB).
BATCH_UNITS = 256
BATCH_BYTES = 1 << 20

if TYPE_CHECKING:
    T = TypeVar("T")

    class _Generic(Generic[T]):
        pass
else:
    T = None

    class _Generic:  # Stream[X] in annotations is the checker's business
        def __class_getitem__(cls, _item: object) -> type:
            return cls


class Stream(_Generic[T]):
    """The messages of a server-streaming call, errors as FleetctlError; `cancel()` (from
    any thread) ends it, and so does leaving a `with` block."""

    def __init__(self, call: Any, decode: Callable[[bytes], T],
                 error: Callable[[Any], FleetctlError], rpc_error: type[Exception]) -> None:
        self._call, self._decode, self._error, self._rpc_error = call, decode, error, rpc_error
        self.cancelled = False

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        try:
            return self._decode(next(self._call))
        except self._rpc_error as e:
            if self.cancelled:
                raise StopIteration from None
            raise self._error(e) from None

    def cancel(self) -> None:
        self.cancelled = True
        self._call.cancel()

    def __enter__(self) -> Stream[T]:
        return self

    def __exit__(self, *_: object) -> None:
        self.cancel()



class Client:
    """Synchronous, typed gRPC client of fleetd's `fleetpy.v1.Fleet` API: one method per RPC,
    returning the generated message types; errors as FleetctlError subclasses.

    TCP endpoints use TLS when `tls` names files or the endpoint is https://; unix sockets
    never do. `server_name` is the name to verify fleetd's certificate against when the
    endpoint is not fleetd's own address (an SSH tunnel). The transport and the messages
    (`fleetctl.protolite`: fleetctl loads neither grpcio nor the protobuf runtime) are
    imported here, not at module import, so commands that never call the API stay quick.
    Unary calls are made from one thread; a stream may be cancelled from another."""

    def __init__(self, endpoint: str | None = None, timeout_s: float = 10.0,
                 tls: TlsFiles | None = None, server_name: str = "") -> None:
        from fleetctl import protolite, wire

        self.endpoint = endpoint or os.environ.get("FLEETCTL_ENDPOINT") or DEFAULT_ENDPOINT
        self.timeout_s = timeout_s
        self.pb: Any = protolite.messages()
        self._wire = wire
        self._decode_error = protolite.DecodeError
        target = grpc_target(self.endpoint)
        tls = tls or TlsFiles()
        self.secure = bool(server_name and tls) or (not target.startswith("unix:") and (
            bool(tls) or self.endpoint.strip().startswith("https://")))
        try:
            self._channel = wire.Channel(target, tls.ssl_context() if self.secure else None,
                                         server_name)
        except wire.RpcError as e:
            raise self._error(e, timeout_s) from None

    # --- the RPCs -------------------------------------------------------------------------
    def list_machines(self) -> list[pb.Machine]:
        return list(self._unary("ListMachines", self.pb.ListMachinesRequest(),
                                self.pb.ListMachinesResponse).machines)

    def drain_machine(self, machine: str, pinned: str = "", include_global: bool = False
                      ) -> pb.Machine:
        return self._unary("DrainMachine", self.pb.DrainMachineRequest(
            machine=machine, pinned=pinned, include_global=include_global), self.pb.Machine)

    def undrain_machine(self, machine: str) -> pb.Machine:
        return self._unary("UndrainMachine", self.pb.UndrainMachineRequest(machine=machine),
                           self.pb.Machine)

    def move_unit(self, name: str, machine: str = "") -> pb.MoveUnitResponse:
        return self._unary("MoveUnit", self.pb.MoveUnitRequest(name=name, machine=machine),
                           self.pb.MoveUnitResponse)

    def list_units(self, with_text: bool = False) -> list[pb.Unit]:
        return list(self._unary("ListUnits", self.pb.ListUnitsRequest(with_text=with_text),
                                self.pb.ListUnitsResponse).units)

    def units_and_states(self) -> tuple[list[pb.Unit], list[pb.UnitState]]:
        """`list_units()` and `list_unit_states()`, both calls in flight at once (fleetd
        answers them side by side)."""
        answers = list(self._channel.unary_calls(
            [(_SERVICE + "ListUnits", self.pb.ListUnitsRequest().SerializeToString()),
             (_SERVICE + "ListUnitStates",
              self.pb.ListUnitStatesRequest().SerializeToString())], self.timeout_s, 2))
        for a in answers:
            if isinstance(a, self._wire.RpcError):
                raise self._error(a, self.timeout_s)
        units, states = answers
        return (list(self._decode(self.pb.ListUnitsResponse, units).units),  # type: ignore[arg-type]
                list(self._decode(self.pb.ListUnitStatesResponse, states).states))  # type: ignore[arg-type]

    def get_unit(self, name: str) -> pb.Unit:
        return self._unary("GetUnit", self.pb.GetUnitRequest(name=name), self.pb.Unit)

    def get_units(self, names: Iterable[str]) -> dict[str, pb.Unit]:
        """The units of `names` that exist (GetUnit of each, concurrently): for a few names,
        cheaper than listing a large cluster."""
        names = list(dict.fromkeys(names))
        out = {}
        for name, got in zip(names, self._unary_many(
                "GetUnit", (self.pb.GetUnitRequest(name=n) for n in names), self.pb.Unit),
                strict=True):
            if isinstance(got, NotFoundError):
                continue
            if isinstance(got, FleetctlError):
                raise got
            out[name] = got
        return out

    def create_unit(self, name: str, text: str = "", desired_state: str = "",
                    replace: bool = False) -> pb.CreateUnitResponse:
        return self._unary("CreateUnit", self.pb.CreateUnitRequest(
            name=name, text=text, desired_state=desired_state, replace=replace),
            self.pb.CreateUnitResponse)

    def create_units(self, units: Iterable[tuple[str, str, str, bool]]
                     ) -> Iterator[pb.CreateUnitResponse | FleetctlError]:
        """`create_unit` of each (name, text, desired_state, replace), answers in order: in
        `CreateUnits` calls of up to `BATCH_UNITS` units (or `BATCH_BYTES` of text), several
        in flight, so the cluster writes the new ones together. A fleetd without CreateUnits
        gets one CreateUnit per unit, concurrently."""
        todo = list(units)
        if len(todo) == 1:
            return self._unary_many("CreateUnit", (self._create_request(*todo[0]),),
                                    self.pb.CreateUnitResponse)
        return self._create_batched(todo)

    def _create_request(self, name: str, text: str, desired: str, replace: bool
                        ) -> pb.CreateUnitRequest:
        return self.pb.CreateUnitRequest(name=name, text=text, desired_state=desired,
                                         replace=replace)

    def _create_batched(self, todo: list[tuple[str, str, str, bool]]
                        ) -> Iterator[pb.CreateUnitResponse | FleetctlError]:
        batches: list[list[tuple[str, str, str, bool]]] = []
        size = 0
        for u in todo:
            if not batches or size + len(u[1]) > BATCH_BYTES or len(batches[-1]) >= BATCH_UNITS:
                batches.append([])
                size = 0
            batches[-1].append(u)
            size += len(u[1])
        # All answers first: a fallback below starts calls of its own on the connection.
        answers = list(self._unary_many("CreateUnits", (self.pb.CreateUnitsRequest(
            units=[self._create_request(*u) for u in b]) for b in batches),
            self.pb.CreateUnitsResponse))
        for batch, got in zip(batches, answers, strict=True):
            if isinstance(got, FleetctlError) and got.rpc_code == self._wire.UNIMPLEMENTED:
                yield from self._unary_many("CreateUnit", (self._create_request(*u)
                                                           for u in batch),
                                            self.pb.CreateUnitResponse)
            elif isinstance(got, FleetctlError):
                for _ in batch:
                    yield got
            else:
                if len(got.outcomes) != len(batch):
                    raise FleetctlError(f"fleetd at {self.endpoint} answered CreateUnits of "
                                        f"{len(batch)} units with {len(got.outcomes)} outcomes")
                for o in got.outcomes:
                    yield (o.response if o.code == 0 else
                           self._error(self._wire.RpcError(o.code, o.message), self.timeout_s))

    def set_unit_target_states(self, names: Iterable[str], desired_state: str
                               ) -> Iterator[pb.Unit | FleetctlError]:
        return self._unary_many("SetUnitTargetState", (self.pb.SetUnitTargetStateRequest(
            name=n, desired_state=desired_state) for n in names), self.pb.Unit)

    def destroy_units(self, names: Iterable[str]
                      ) -> Iterator[pb.DestroyUnitResponse | FleetctlError]:
        return self._unary_many("DestroyUnit", (self.pb.DestroyUnitRequest(name=n)
                                                for n in names), self.pb.DestroyUnitResponse)

    def set_unit_target_state(self, name: str, desired_state: str) -> pb.Unit:
        return self._unary("SetUnitTargetState", self.pb.SetUnitTargetStateRequest(
            name=name, desired_state=desired_state), self.pb.Unit)

    def destroy_unit(self, name: str) -> None:
        self._unary("DestroyUnit", self.pb.DestroyUnitRequest(name=name),
                    self.pb.DestroyUnitResponse)

    def list_unit_states(self, names: Iterable[str] = (), machine_id: str = ""
                         ) -> list[pb.UnitState]:
        return list(self._unary("ListUnitStates", self.pb.ListUnitStatesRequest(
            names=list(names), machine_id=machine_id), self.pb.ListUnitStatesResponse).states)

    def explain_unit(self, name: str) -> pb.Explanation:
        return self._unary("ExplainUnit", self.pb.ExplainUnitRequest(name=name),
                           self.pb.Explanation)

    def set_machine_metadata(self, machine_id: str, set_: dict[str, str] | None = None,
                             delete: Iterable[str] = ()) -> pb.Machine:
        return self._unary("SetMachineMetadata", self.pb.SetMachineMetadataRequest(
            machine_id=machine_id, set=set_ or {}, delete=list(delete)), self.pb.Machine)

    def unit_status(self, name: str, machine_id: str = "", lines: int = 0
                    ) -> pb.UnitStatusResponse:
        return self._unary("UnitStatus", self.pb.UnitStatusRequest(
            name=name, machine_id=machine_id, lines=lines), self.pb.UnitStatusResponse)

    def restart_unit(self, name: str, machine_id: str = "") -> pb.UnitStatusResponse:
        return self._unary("RestartUnit", self.pb.RestartUnitRequest(
            name=name, machine_id=machine_id), self.pb.UnitStatusResponse)

    def journal(self, name: str, machine_id: str = "", lines: int = 0, output: str = "",
                follow: bool = False) -> Stream[pb.JournalChunk]:
        """journalctl output of a unit, chunk by chunk; no deadline (-f runs until stopped)."""
        return self._stream("Journal", self.pb.JournalRequest(
            name=name, machine_id=machine_id, lines=lines, output=output, follow=follow),
            self.pb.JournalChunk, None)

    def watch(self, *, start_revision: int = 0, machines: bool = False, units: bool = False,
              states: bool = False, names: Iterable[str] = (),
              timeout_s: float | None = None) -> Stream[pb.WatchEvent]:
        """The Watch stream (a snapshot first unless resuming, then changes), limited to
        `names` when given; DeadlineExceeded once `timeout_s` (None: never) has passed."""
        return self._stream("Watch", self.pb.WatchRequest(
            start_revision=start_revision, machines=machines, units=units, states=states,
            names=list(names)), self.pb.WatchEvent, timeout_s)

    def call(self, method: str, **fields: Any) -> Any:
        """Any unary RPC by name (`call("ListMachines")`), its types taken from the service
        descriptor; for scripts and tests. fleetctl itself uses the typed methods."""
        request_type, response_type, streaming = self.pb.methods[method]
        if streaming:
            raise FleetctlError(f"{method} is a stream: use the typed method")
        return self._unary(method, request_type(**fields), response_type)

    # --- plumbing -------------------------------------------------------------------------
    def _unary(self, method: str, request: Message, response: type[M]) -> M:
        try:
            answer = self._channel.unary(_SERVICE + method, request.SerializeToString(),
                                         self.timeout_s)
        except self._wire.RpcError as e:
            raise self._error(e, self.timeout_s) from None
        return self._decode(response, answer)

    def _decode(self, response: type[M], answer: bytes) -> M:
        try:
            return response.FromString(answer)
        except self._decode_error as e:
            raise FleetctlError(f"fleetd at {self.endpoint} sent an answer fleetctl cannot "
                                f"read ({e})") from None

    def _unary_many(self, method: str, requests: Iterable[Message], response: type[M]
                    ) -> Iterator[M | FleetctlError]:
        """`_unary` of each request, up to `MAX_IN_FLIGHT` at once on the channel, results in
        request order (a failed call as its FleetctlError). Each of these calls is an etcd
        write; sent one after another, 100 of them took fleetctl 1.9 s on the lab, concurrent
        ones share etcd's disk syncs. Requests already sent complete even if the caller stops
        at an earlier failure."""
        for answer in self._channel.unary_many(
                _SERVICE + method, (r.SerializeToString() for r in requests), self.timeout_s,
                MAX_IN_FLIGHT):
            if isinstance(answer, self._wire.RpcError):
                yield self._error(answer, self.timeout_s)
            else:
                yield self._decode(response, answer)

    def _stream(self, method: str, request: Message, response: type[M],
                timeout_s: float | None) -> Stream[M]:
        try:
            call = self._channel.stream(_SERVICE + method, request.SerializeToString(),
                                        timeout_s)
        except self._wire.RpcError as e:
            raise self._error(e, timeout_s) from None
        return Stream(call, lambda answer: self._decode(response, answer),
                      lambda e: self._error(e, timeout_s), self._wire.RpcError)

    def _error(self, e: Any, timeout_s: float | None) -> FleetctlError:
        err = self._error_of(e, timeout_s)
        err.rpc_code = e.code()
        return err

    def _error_of(self, e: Any, timeout_s: float | None) -> FleetctlError:
        w = self._wire
        code, details = e.code(), e.details() or w.code_name(e.code())
        if code == w.NOT_FOUND:
            return NotFoundError(details)
        if code == w.UNAVAILABLE and "etcd" not in details:
            hint = "" if self.secure or self.endpoint.startswith(("unix:", "/")) else \
                " (a TCP API requires TLS: pass --ca-file, --cert-file and --key-file)"
            return FleetctlError(f"cannot reach fleetd at {self.endpoint}: {details}{hint}")
        if code == w.DEADLINE_EXCEEDED:
            return DeadlineExceeded(f"fleetd at {self.endpoint} did not answer within "
                                    f"{timeout_s or 0:g}s")
        if code == w.FAILED_PRECONDITION:
            return NotRunningError(details)
        return FleetctlError(details)

    def close(self) -> None:
        self._channel.close()
