"""A thin asyncio etcd v3 client over the generated etcd protobufs shipped with `aetcd`.

aetcd's high-level client hides what the registry needs (reads at a revision, multi-op
transactions with arbitrary compares, watches resumed from a revision, keep-alive streams,
TLS), so the registry drives etcd's gRPC services directly through aetcd's `rpc` module.
Nothing outside `fleetd.registry` imports this module.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import grpc
from aetcd import rpc

from fleetd import clock, metrics

log = logging.getLogger(__name__)


class EtcdError(Exception):
    """etcd could not be reached or refused a request; the message names the operation."""


class WatchCompacted(EtcdError):
    """The revision a watch wanted to resume from has been compacted away: resync from a read."""


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int


@dataclass(frozen=True)
class WatchEvent:
    kind: str  # "put" or "delete"
    kv: KV
    revision: int


def prefix_end(prefix: str) -> bytes:
    """The range end that selects every key starting with `prefix`."""
    b = bytearray(prefix.encode())
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\0"


def _kv(m: Any) -> KV:
    return KV(m.key.decode(), bytes(m.value), m.mod_revision, m.create_revision, m.lease)


# Transaction building blocks: plain tuples so callers never touch protobuf types.
@dataclass(frozen=True)
class Cmp:
    """A transaction guard on one key: target is 'create', 'mod', 'value', 'version' or 'lease'."""

    key: str
    target: str
    op: str  # "==", "!=", ">", "<"
    value: int | bytes

    def to_pb(self) -> Any:
        result = {"==": rpc.Compare.EQUAL, "!=": rpc.Compare.NOT_EQUAL,
                  ">": rpc.Compare.GREATER, "<": rpc.Compare.LESS}[self.op]
        c = rpc.Compare(key=self.key.encode(), result=result)
        if self.target == "create":
            c.target = rpc.Compare.CREATE
            c.create_revision = int(self.value)  # type: ignore[arg-type]
        elif self.target == "mod":
            c.target = rpc.Compare.MOD
            c.mod_revision = int(self.value)  # type: ignore[arg-type]
        elif self.target == "version":
            c.target = rpc.Compare.VERSION
            c.version = int(self.value)  # type: ignore[arg-type]
        elif self.target == "lease":
            c.target = rpc.Compare.LEASE
            c.lease = int(self.value)  # type: ignore[arg-type]
        else:
            c.target = rpc.Compare.VALUE
            c.value = self.value if isinstance(self.value, bytes) else str(self.value).encode()
        return c


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0

    def to_pb(self) -> Any:
        return rpc.RequestOp(request_put=rpc.PutRequest(
            key=self.key.encode(), value=self.value, lease=self.lease))


@dataclass(frozen=True)
class Delete:
    key: str
    prefix: bool = False

    def to_pb(self) -> Any:
        req = rpc.DeleteRangeRequest(key=self.key.encode())
        if self.prefix:
            req.range_end = prefix_end(self.key)
        return rpc.RequestOp(request_delete_range=req)


Op = Put | Delete

MAX_MESSAGE_BYTES = 512 * 1024 * 1024
# Reads retried while etcd elects a new leader (writes are not: one may have been applied).
READ_RETRIES = 6
READ_RETRY_S = 0.3
_ELECTION_ERRORS = ("leader changed", "no leader")
# Status codes that mean etcd did not answer (as opposed to refusing a request).
_UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                          grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN})
# etcd 3.4's default --max-txn-ops
MAX_TXN_OPS = 128


class _StreamClosed(Exception):
    """The keep-alive stream ended (or was closed) before it answered."""


class _KeepAliveStream:
    """One LeaseKeepAlive stream shared by every renewal of a client (`keepalive_once`)."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.closed = False
        self._waiting: dict[int, list[asyncio.Future[int]]] = {}
        self._write_lock = asyncio.Lock()
        self._reader = asyncio.ensure_future(self._read())

    async def renew(self, lease: int, timeout_s: float) -> int:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(lease, []).append(fut)
        try:
            async with asyncio.timeout(timeout_s):
                async with self._write_lock:  # one write at a time on a stream
                    if self.closed:
                        raise _StreamClosed("stream closed")
                    try:
                        await self.call.write(rpc.LeaseKeepAliveRequest(ID=lease))
                    except grpc.aio.AioRpcError:
                        self.close("the stream failed")
                        raise
                    except Exception as e:  # the call already ended (grpc's UsageError)
                        self.close("the stream ended")
                        raise _StreamClosed(f"the stream ended: {e}") from None
                return await fut
        except TimeoutError:
            self.close(f"no answer within {timeout_s:.2f}s")
            raise _StreamClosed(f"no answer within {timeout_s:.2f}s") from None
        except asyncio.CancelledError:
            self.close("a renewal was cancelled")  # its answer may still come: never reuse
            raise
        finally:
            waiting = self._waiting.get(lease)
            if waiting and fut in waiting:
                waiting.remove(fut)
            if fut.done() and not fut.cancelled():
                fut.exception()  # failed by our own close above: seen ("never retrieved")

    async def _read(self) -> None:
        error: BaseException = _StreamClosed("etcd closed the keep-alive stream")
        try:
            while True:
                resp = await self.call.read()
                if resp is grpc.aio.EOF:
                    break
                waiting = self._waiting.get(resp.ID)
                if waiting:
                    fut = waiting.pop(0)
                    if not fut.done():
                        fut.set_result(int(resp.TTL))
        except grpc.aio.AioRpcError as e:
            error = e
        except asyncio.CancelledError:
            error = _StreamClosed("stream closed")
        self._fail_all(error)
        self.closed = True

    def _fail_all(self, error: BaseException) -> None:
        for waiting in self._waiting.values():
            for fut in waiting:
                if not fut.done():
                    fut.set_exception(error)
        self._waiting.clear()

    def close(self, why: str) -> None:
        if self.closed:
            return
        self.closed = True
        self._fail_all(_StreamClosed(why))
        self.call.cancel()
        self._reader.cancel()


class EtcdClient:
    """One gRPC channel to an etcd cluster; every call bounded by `request_timeout_s`."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        request_timeout_s: float = 3.0,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        if not endpoints:
            raise EtcdError("no etcd endpoints configured")
        self.endpoints = list(endpoints)
        self.request_timeout_s = request_timeout_s
        self._tls = (ca_file, cert_file, key_file)
        self._auth = (username, password)
        self._metadata: tuple[tuple[str, str], ...] | None = None
        self._auth_lock = asyncio.Lock()  # one Authenticate at a time, shared by all callers
        self.requests = 0  # every unary request and stream message sent, for metrics/benchmarks
        # Monotonic times for the lease watchdog's "is etcd down for everyone?" question:
        # the last answer etcd gave, and when the first request failed since then (0: none).
        self.last_ok_at = 0.0
        self.failing_since = 0.0
        self._channel = self._make_channel()
        self._kv = rpc.KVStub(self._channel)
        self._lease = rpc.LeaseStub(self._channel)
        self._watch = rpc.WatchStub(self._channel)
        self._keepalives: _KeepAliveStream | None = None

    def _make_channel(self) -> grpc.aio.Channel:
        hosts = []
        secure = any(self._tls)
        for ep in self.endpoints:
            ep = ep.strip()
            if ep.startswith("https://"):
                secure = True
            hosts.append(ep.split("://", 1)[-1].rstrip("/"))
        # gRPC's ipv4 resolver load-balances over several static addresses.
        target = hosts[0] if len(hosts) == 1 else "ipv4:" + ",".join(hosts)
        options = [("grpc.lb_policy_name", "round_robin"),
                   ("grpc.keepalive_time_ms", 10_000),
                   ("grpc.keepalive_timeout_ms", 5_000),
                   ("grpc.initial_reconnect_backoff_ms", 200),
                   ("grpc.max_reconnect_backoff_ms", 2_000),
                   # Whole-cluster reads of 10,000+ units exceed gRPC's 4 MiB default.
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        if secure:
            # No CA file: the system's roots verify an https:// endpoint.
            ca, cert, key = (_read_pem(p, what) for p, what in
                             zip(self._tls, ("etcd_cafile", "etcd_certfile", "etcd_keyfile"),
                                 strict=True))
            creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                                 certificate_chain=cert)
            if len(hosts) > 1:
                # An ipv4: target has no host name to check certificates against: use the
                # first endpoint's (etcd members' certificates usually name them all).
                options.append(("grpc.ssl_target_name_override",
                                hosts[0].rsplit(":", 1)[0].strip("[]")))
            return grpc.aio.secure_channel(target, creds, options=options)
        return grpc.aio.insecure_channel(target, options=options)

    async def close(self) -> None:
        if self._keepalives is not None:
            self._keepalives.close("client closed")
        await self._channel.close()

    async def _authenticate(self) -> None:
        """Get an auth token once (etcd_username/etcd_password); later calls reuse it until
        etcd rejects it (it expires, or auth was re-enabled) and `_token_rejected` drops it."""
        user, password = self._auth
        if not user or self._metadata is not None:
            return
        async with self._auth_lock:
            if self._metadata is not None:
                return
            auth = rpc.AuthStub(self._channel)
            self.requests += 1
            try:
                resp = await auth.Authenticate(
                    rpc.AuthenticateRequest(name=user, password=password or ""),
                    timeout=self.request_timeout_s)
            except grpc.aio.AioRpcError as e:
                metrics.ETCD_ERRORS.labels("authenticate").inc()
                raise EtcdError(f"etcd authentication as user {user!r} failed: "
                                f"{e.code().name}: {e.details()}") from None
            self._metadata = (("token", resp.token),)

    def _token_rejected(self, e: grpc.aio.AioRpcError) -> bool:
        """True (and the token dropped) when etcd refused our auth token, so that one fresh
        Authenticate and a retry can fix the call."""
        if self._auth[0] and self._metadata is not None and _is_token_error(e):
            self._metadata = None
            return True
        return False

    async def _unary(self, what: str, method: Any, request: Any, read_only: bool = False) -> Any:
        """One request; a read is retried while etcd elects a leader (a member died), which
        takes about one election timeout: readers should not see that as an outage."""
        for election in range(READ_RETRIES + 1 if read_only else 1):
            try:
                return await self._unary_once(what, method, request)
            except EtcdError as e:
                if (not read_only or election == READ_RETRIES
                        or not any(s in str(e) for s in _ELECTION_ERRORS)):
                    raise  # a write is never retried: it may have been applied
            await asyncio.sleep(READ_RETRY_S)
        raise AssertionError("unreachable")

    async def _unary_once(self, what: str, method: Any, request: Any) -> Any:
        for attempt in (0, 1):
            await self._authenticate()
            self.requests += 1
            sent = clock.now()
            try:
                resp = await method(request, timeout=self.request_timeout_s,
                                    metadata=self._metadata)
                self._answered()
                return resp
            except grpc.aio.AioRpcError as e:
                if attempt == 0 and self._token_rejected(e):
                    continue
                self._failed(sent, e.code())
                metrics.ETCD_ERRORS.labels(what.split(" ", 1)[0]).inc()
                raise EtcdError(f"etcd {what} failed: {e.code().name}: {e.details()}") \
                    from None
        raise AssertionError("unreachable")

    def _answered(self) -> None:
        self.last_ok_at = clock.now()
        self.failing_since = 0.0

    def _failed(self, sent: float, code: grpc.StatusCode | None = None) -> None:
        if code is not None and code not in _UNREACHABLE:
            self._answered()  # etcd refused the request: it is reachable all the same
        elif not self.failing_since:
            self.failing_since = sent

    def unreachable_for_s(self) -> float:
        """How long etcd has been failing this client (0 while it answers): counted from the
        send time of the first failed request since its last answer."""
        if not self.failing_since:
            return 0.0
        return clock.now() - self.failing_since

    def last_answer_age_s(self) -> float:
        """Seconds since etcd last answered this client (inf if it never did)."""
        return clock.now() - self.last_ok_at if self.last_ok_at else float("inf")

    # --- KV -------------------------------------------------------------------------------
    async def get(self, key: str) -> KV | None:
        resp = await self._unary("get " + key, self._kv.Range, rpc.RangeRequest(key=key.encode()),
                                 read_only=True)
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def current_revision(self) -> int:
        """The store's revision, by a linearizable (quorum) read: every write acknowledged
        before this call has a revision at most this."""
        resp = await self._unary("revision", self._kv.Range,
                                 rpc.RangeRequest(key=b"\0", count_only=True), read_only=True)
        return int(resp.header.revision)

    async def get_prefix(self, prefix: str, revision: int = 0) -> tuple[list[KV], int]:
        """All keys under `prefix` (at `revision` when non-zero) and the store revision read."""
        req = rpc.RangeRequest(key=prefix.encode(), range_end=prefix_end(prefix),
                               revision=revision)
        resp = await self._unary("range " + prefix, self._kv.Range, req, read_only=True)
        return [_kv(k) for k in resp.kvs], resp.header.revision

    async def get_many(self, ranges: Sequence[tuple[str, bool, bool]]
                       ) -> tuple[list[list[KV]], int]:
        """Several reads in one round trip (one read-only transaction): for each
        (key, is_prefix, keys_only) the matching keys, all at one revision."""
        ops = []
        for key, is_prefix, keys_only in ranges:
            req = rpc.RangeRequest(key=key.encode(), keys_only=keys_only)
            if is_prefix:
                req.range_end = prefix_end(key)
            ops.append(rpc.RequestOp(request_range=req))
        resp = await self._unary("multi-get", self._kv.Txn, rpc.TxnRequest(success=ops),
                                 read_only=True)
        return ([[_kv(k) for k in r.response_range.kvs] for r in resp.responses],
                int(resp.header.revision))

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        resp = await self._unary("put " + key, self._kv.Put,
                                 rpc.PutRequest(key=key.encode(), value=value, lease=lease))
        return int(resp.header.revision)

    async def delete(self, key: str, prefix: bool = False) -> int:
        req = rpc.DeleteRangeRequest(key=key.encode())
        if prefix:
            req.range_end = prefix_end(key)
        resp = await self._unary("delete " + key, self._kv.DeleteRange, req)
        return int(resp.deleted)

    async def txn(self, compare: Sequence[Cmp], success: Sequence[Op],
                  failure: Sequence[Op] = ()) -> tuple[bool, int]:
        """Run one transaction; returns (succeeded, revision)."""
        req = rpc.TxnRequest(compare=[c.to_pb() for c in compare],
                             success=[o.to_pb() for o in success],
                             failure=[o.to_pb() for o in failure])
        resp = await self._unary("txn", self._kv.Txn, req)
        return bool(resp.succeeded), int(resp.header.revision)

    # --- leases ---------------------------------------------------------------------------
    async def grant(self, ttl_s: int) -> int:
        resp = await self._unary("lease grant", self._lease.LeaseGrant,
                                 rpc.LeaseGrantRequest(TTL=ttl_s))
        return int(resp.ID)

    async def revoke(self, lease: int) -> None:
        try:
            await self._unary("lease revoke", self._lease.LeaseRevoke,
                              rpc.LeaseRevokeRequest(ID=lease))
        except EtcdError as e:
            if "NOT_FOUND" not in str(e) and "not found" not in str(e):
                raise

    async def lease_ttl(self, lease: int) -> tuple[int, int]:
        """`lease`'s granted TTL and the seconds it has left, as etcd counts them (whole
        seconds; (0, -1) when the lease is gone). Reads only: renews nothing."""
        resp = await self._unary("lease time-to-live", self._lease.LeaseTimeToLive,
                                 rpc.LeaseTimeToLiveRequest(ID=lease))
        if resp.TTL < 0:
            return 0, -1
        return int(resp.grantedTTL), int(resp.TTL)

    async def lease_keys(self, lease: int) -> list[str]:
        """The keys attached to `lease` (LeaseTimeToLive with keys; [] when it is gone)."""
        resp = await self._unary("lease keys", self._lease.LeaseTimeToLive,
                                 rpc.LeaseTimeToLiveRequest(ID=lease, keys=True))
        if resp.TTL < 0:
            return []
        return sorted(k.decode() for k in resp.keys)

    async def keepalive_once(self, lease: int, timeout_s: float | None = None) -> int:
        """Renew `lease` once (within `timeout_s`, default the request timeout); returns the
        remaining TTL in seconds (<= 0: the lease is gone).

        Every renewal of this client goes over one long-lived LeaseKeepAlive stream (opening a
        stream per renewal cost more CPU than the renewal: 1,000 simulated machines on one
        client saturated their process). etcd answers a stream's requests in order, so the
        answers for one lease are matched to its requests first in, first out. A renewal that
        times out closes the stream, failing every renewal still waiting on it: an answer that
        arrived late must never be taken for a later request's (the caller counts the lease
        from that request's send, and etcd renewed it at the earlier one)."""
        await self._authenticate()
        self.requests += 1
        sent = clock.now()
        ka = self._keepalives
        if ka is None or ka.closed:
            ka = self._keepalives = _KeepAliveStream(self._lease.LeaseKeepAlive(
                metadata=self._metadata))
        try:
            ttl = await ka.renew(lease, timeout_s or self.request_timeout_s)
        except grpc.aio.AioRpcError as e:
            self._token_rejected(e)  # the caller's next attempt authenticates afresh
            self._failed(sent, e.code())
            raise EtcdError(f"etcd lease keep-alive failed: {e.code().name}: {e.details()}") \
                from None
        except _StreamClosed as e:
            self._failed(sent)
            raise EtcdError(f"etcd lease keep-alive failed: {e}") from None
        self._answered()
        return ttl

    # --- watches --------------------------------------------------------------------------
    async def watch_prefix(
        self, prefix: str, start_revision: int
    ) -> AsyncIterator[list[WatchEvent]]:
        """Yield batches of events under `prefix` from `start_revision` on (one batch per revision
        group etcd sends). Raises WatchCompacted or EtcdError when the watch cannot continue."""
        async for events, _revision in WatchStream(self, prefix, start_revision).responses():
            if events:  # empty: a progress notification
                yield events

    def open_watch(self, prefix: str, start_revision: int) -> WatchStream:
        """A watch on `prefix` from `start_revision` that gives each response's header
        revision (`WatchStream`); nothing is sent before `responses()` is iterated."""
        return WatchStream(self, prefix, start_revision)


def _read_pem(path: str | None, option: str) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise EtcdError(f"cannot read {option} {path}: {e.strerror}") from None


def _is_token_error(e: grpc.aio.AioRpcError) -> bool:
    """etcd's answers to a missing, expired or revoked auth token (rpctypes in etcd 3.4)."""
    details = (e.details() or "").lower()
    return e.code() == grpc.StatusCode.UNAUTHENTICATED or "invalid auth token" in details \
        or "user name is empty" in details or "auth revision" in details


class WatchStream:
    """One watch on a prefix, each response with etcd's header revision: every event up to
    it has been sent on this stream (for a progress notification, an empty response, that is
    all it says)."""

    def __init__(self, client: EtcdClient, prefix: str, start_revision: int) -> None:
        self.client = client
        self.prefix = prefix
        self.start_revision = start_revision
        self._call: Any = None

    async def responses(self) -> AsyncIterator[tuple[list[WatchEvent], int]]:
        """(events, header revision) per response; empty events for a progress notification.
        Raises WatchCompacted or EtcdError when the watch cannot continue."""
        c = self.client
        await c._authenticate()
        c.requests += 1
        self._call = call = c._watch.Watch(metadata=c._metadata)
        create = rpc.WatchCreateRequest(key=self.prefix.encode(),
                                        range_end=prefix_end(self.prefix),
                                        start_revision=self.start_revision)
        try:
            await call.write(rpc.WatchRequest(create_request=create))
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    raise EtcdError(f"etcd watch on {self.prefix} closed")
                if resp.compact_revision:
                    raise WatchCompacted(f"watch on {self.prefix}: revision "
                                         f"{self.start_revision} compacted (now "
                                         f"{resp.compact_revision})")
                if resp.canceled:
                    if "auth" in resp.cancel_reason or "permission" in resp.cancel_reason:
                        c._metadata = None  # the caller's next watch authenticates afresh
                    raise EtcdError(f"etcd watch on {self.prefix} canceled: "
                                    f"{resp.cancel_reason}")
                if resp.created:
                    continue
                events = [WatchEvent("delete" if ev.type == rpc.Event.DELETE else "put",
                                     _kv(ev.kv), ev.kv.mod_revision) for ev in resp.events]
                yield events, int(resp.header.revision)
        except grpc.aio.AioRpcError as e:
            c._token_rejected(e)  # the caller's next watch authenticates afresh
            raise EtcdError(f"etcd watch on {self.prefix} failed: {e.code().name}: "
                            f"{e.details()}") from None
        finally:
            self._call = None
            call.cancel()


@runtime_checkable
class EtcdApi(Protocol):
    """What the registry needs from an etcd connection: `EtcdClient` over gRPC, or the
    simulation's in-memory model (tests/sim). Errors are `EtcdError` (`WatchCompacted` for a
    watch from a compacted revision); every call is bounded by `request_timeout_s`."""

    request_timeout_s: float
    requests: int

    async def close(self) -> None: ...
    def unreachable_for_s(self) -> float: ...
    def last_answer_age_s(self) -> float: ...
    async def get(self, key: str) -> KV | None: ...
    async def current_revision(self) -> int: ...
    async def get_prefix(self, prefix: str, revision: int = 0) -> tuple[list[KV], int]: ...
    async def get_many(self, ranges: Sequence[tuple[str, bool, bool]]
                       ) -> tuple[list[list[KV]], int]: ...
    async def put(self, key: str, value: bytes, lease: int = 0) -> int: ...
    async def delete(self, key: str, prefix: bool = False) -> int: ...
    async def txn(self, compare: Sequence[Cmp], success: Sequence[Op],
                  failure: Sequence[Op] = ()) -> tuple[bool, int]: ...
    async def grant(self, ttl_s: int) -> int: ...
    async def revoke(self, lease: int) -> None: ...
    async def lease_ttl(self, lease: int) -> tuple[int, int]: ...
    async def lease_keys(self, lease: int) -> list[str]: ...
    async def keepalive_once(self, lease: int, timeout_s: float | None = None) -> int: ...
    def watch_prefix(self, prefix: str, start_revision: int
                     ) -> AsyncIterator[list[WatchEvent]]: ...
    def open_watch(self, prefix: str, start_revision: int) -> WatchStreamApi: ...


class WatchStreamApi(Protocol):
    """One watch (`EtcdApi.open_watch`): (events, header revision) per response, empty events
    for a progress notification."""

    def responses(self) -> AsyncIterator[tuple[list[WatchEvent], int]]: ...


if TYPE_CHECKING:
    _satisfies: type[EtcdApi] = EtcdClient  # mypy checks the real client against the Protocol


async def backoff_sleep(attempt: int, base_s: float = 0.1, cap_s: float = 2.0) -> None:
    """Sleep an exponentially growing, jittered delay before retrying an etcd operation."""
    delay = min(cap_s, base_s * (2 ** min(attempt, 10)))
    await asyncio.sleep(delay * (0.5 + random.random() / 2))
