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
from typing import Any

import grpc
from aetcd import rpc

from fleetd import metrics

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
# etcd 3.4's default --max-txn-ops
MAX_TXN_OPS = 128


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
        self.requests = 0  # every unary request and stream message sent, for metrics/benchmarks
        self._channel = self._make_channel()
        self._kv = rpc.KVStub(self._channel)
        self._lease = rpc.LeaseStub(self._channel)
        self._watch = rpc.WatchStub(self._channel)

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
            ca, cert, key = (open(p, "rb").read() if p else None for p in self._tls)
            creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                                 certificate_chain=cert)
            return grpc.aio.secure_channel(target, creds, options=options)
        return grpc.aio.insecure_channel(target, options=options)

    async def close(self) -> None:
        await self._channel.close()

    async def _authenticate(self) -> None:
        user, password = self._auth
        if user and self._metadata is None:
            auth = rpc.AuthStub(self._channel)
            resp = await auth.Authenticate(rpc.AuthenticateRequest(name=user, password=password),
                                           timeout=self.request_timeout_s)
            self._metadata = (("token", resp.token),)

    async def _unary(self, what: str, method: Any, request: Any) -> Any:
        await self._authenticate()
        self.requests += 1
        try:
            return await method(request, timeout=self.request_timeout_s, metadata=self._metadata)
        except grpc.aio.AioRpcError as e:
            metrics.ETCD_ERRORS.labels(what.split(" ", 1)[0]).inc()
            raise EtcdError(f"etcd {what} failed: {e.code().name}: {e.details()}") from None

    # --- KV -------------------------------------------------------------------------------
    async def get(self, key: str) -> KV | None:
        resp = await self._unary("get " + key, self._kv.Range, rpc.RangeRequest(key=key.encode()))
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def get_prefix(self, prefix: str, revision: int = 0) -> tuple[list[KV], int]:
        """All keys under `prefix` (at `revision` when non-zero) and the store revision read."""
        req = rpc.RangeRequest(key=prefix.encode(), range_end=prefix_end(prefix),
                               revision=revision)
        resp = await self._unary("range " + prefix, self._kv.Range, req)
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
        resp = await self._unary("multi-get", self._kv.Txn, rpc.TxnRequest(success=ops))
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

    async def keepalive_once(self, lease: int) -> int:
        """Renew `lease` once; returns the remaining TTL in seconds (<= 0: the lease is gone)."""
        await self._authenticate()
        self.requests += 1
        call = self._lease.LeaseKeepAlive(metadata=self._metadata,
                                          timeout=self.request_timeout_s)
        try:
            await call.write(rpc.LeaseKeepAliveRequest(ID=lease))
            resp = await call.read()
            await call.done_writing()
        except grpc.aio.AioRpcError as e:
            raise EtcdError(f"etcd lease keep-alive failed: {e.code().name}: {e.details()}") \
                from None
        finally:
            call.cancel()
        if resp is grpc.aio.EOF:
            raise EtcdError("etcd lease keep-alive stream closed")
        return int(resp.TTL)

    # --- watches --------------------------------------------------------------------------
    async def watch_prefix(
        self, prefix: str, start_revision: int
    ) -> AsyncIterator[list[WatchEvent]]:
        """Yield batches of events under `prefix` from `start_revision` on (one batch per revision
        group etcd sends). Raises WatchCompacted or EtcdError when the watch cannot continue."""
        await self._authenticate()
        self.requests += 1
        call = self._watch.Watch(metadata=self._metadata)
        create = rpc.WatchCreateRequest(key=prefix.encode(), range_end=prefix_end(prefix),
                                        start_revision=start_revision)
        try:
            await call.write(rpc.WatchRequest(create_request=create))
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    raise EtcdError(f"etcd watch on {prefix} closed")
                if resp.compact_revision:
                    raise WatchCompacted(f"watch on {prefix}: revision {start_revision} "
                                         f"compacted (now {resp.compact_revision})")
                if resp.canceled:
                    raise EtcdError(f"etcd watch on {prefix} canceled: {resp.cancel_reason}")
                if not resp.events:
                    continue
                batch = []
                for ev in resp.events:
                    kind = "delete" if ev.type == rpc.Event.DELETE else "put"
                    batch.append(WatchEvent(kind, _kv(ev.kv), ev.kv.mod_revision))
                yield batch
        except grpc.aio.AioRpcError as e:
            raise EtcdError(f"etcd watch on {prefix} failed: {e.code().name}: {e.details()}") \
                from None
        finally:
            call.cancel()


async def backoff_sleep(attempt: int, base_s: float = 0.1, cap_s: float = 2.0) -> None:
    """Sleep an exponentially growing, jittered delay before retrying an etcd operation."""
    delay = min(cap_s, base_s * (2 ** min(attempt, 10)))
    await asyncio.sleep(delay * (0.5 + random.random() / 2))
