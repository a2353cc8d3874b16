"""An in-memory etcd v3 model and the per-process client fleetd uses against it (test doubles).

`SimEtcd` models what fleet-py relies on: one revision counter, MVCC reads at a revision,
transactions with compares on create/mod revision, version, value and lease, leases with a TTL
that expire on the virtual clock (keep-alive, revoke), prefix watches from a start revision,
compaction (a watch or read below the compacted revision fails as etcd's does), and leader
change: a short election during which requests fail with "no leader", after which every lease
is extended by its full TTL (the lessor's promotion). `SimEtcdClient` is one fleetd's
connection: it satisfies `fleetd.registry.EtcdApi`, and its requests see the `Network`
(a partitioned client's requests time out, its watches go silent and then break).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from fleetd import clock
from fleetd.registry._etcd import (
    KV,
    READ_RETRIES,
    READ_RETRY_S,
    Cmp,
    Delete,
    EtcdError,
    Op,
    Put,
    WatchCompacted,
    WatchEvent,
)
from tests.sim.loop import VirtualLoop, context_of

#: etcd's lessor extends every lease by about one election timeout beyond its TTL on promotion.
PROMOTION_EXTEND_S = 1.0
#: How long a partitioned gRPC watch stays silent before keep-alive declares it dead (10 + 5 s).
WATCH_DEAD_AFTER_S = 15.0


@dataclass
class _Key:
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass
class _Lease:
    id: int
    ttl_s: int
    expires_at: float
    keys: set[str] = field(default_factory=set)
    timer: asyncio.TimerHandle | None = None


@dataclass
class _Watch:
    client: SimEtcdClient
    prefix: str
    queue: list[list[WatchEvent]] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    broken: str = ""


class Network:
    """Which processes can talk: a set of cut links (unordered pairs of endpoint names)."""

    def __init__(self) -> None:
        self.cut: set[frozenset[str]] = set()
        self.on_change: list[Callable[[], None]] = []

    def up(self, a: str, b: str) -> bool:
        return frozenset((a, b)) not in self.cut

    def partition(self, a: str, b: str) -> None:
        self.cut.add(frozenset((a, b)))
        for cb in list(self.on_change):
            cb()

    def heal(self, a: str | None = None, b: str | None = None) -> None:
        if a is None:
            self.cut.clear()
        else:
            self.cut.discard(frozenset((a, b)))  # type: ignore[arg-type]
        for cb in list(self.on_change):
            cb()


class SimEtcd:
    """The etcd cluster, as one linearizable store (its internal replication is not modelled)."""

    NAME = "etcd"

    def __init__(self, loop: VirtualLoop, rng: random.Random,
                 trace: Callable[[str], None] | None = None) -> None:
        self.loop = loop
        self.rng = rng
        self.trace = trace or (lambda s: None)
        self.ctx = context_of(self.NAME)
        self.revision = 1
        self.compacted = 0
        self.keys: dict[str, _Key] = {}
        self.history: list[WatchEvent] = []  # every event from `compacted` on, in order
        self._base: dict[str, KV] = {}  # the state at `compacted` (what compaction keeps)
        self.leases: dict[int, _Lease] = {}
        self.watches: list[_Watch] = []
        self.no_leader_until = 0.0
        self._next_lease = 0x7E570000
        self.on_lease_expired: Callable[[list[str]], None] | None = None

    # --- KV -------------------------------------------------------------------------------
    def _kv(self, key: str, k: _Key) -> KV:
        return KV(key, k.value, k.mod_revision, k.create_revision, k.lease)

    def range(self, key: str, prefix: bool, revision: int = 0) -> tuple[list[KV], int]:
        if revision and revision < self.compacted:
            raise EtcdError("etcd range failed: OUT_OF_RANGE: etcdserver: mvcc: required "
                            "revision has been compacted")
        if revision > self.revision:
            raise EtcdError("etcd range failed: OUT_OF_RANGE: etcdserver: mvcc: required "
                            "revision is a future revision")
        match = (lambda k: k.startswith(key)) if prefix else (lambda k: k == key)
        if not revision or revision == self.revision:
            out = [self._kv(k, v) for k, v in sorted(self.keys.items()) if match(k)]
        else:
            state = {k: v for k, v in self._base.items() if match(k)}
            for ev in self.history:
                if ev.revision > revision:
                    break
                if match(ev.kv.key):
                    if ev.kind == "put":
                        state[ev.kv.key] = ev.kv
                    else:
                        state.pop(ev.kv.key, None)
            out = [state[k] for k in sorted(state)]
        return out, self.revision

    def _compare(self, c: Cmp) -> bool:
        k = self.keys.get(c.key)
        if c.target == "value":
            have: int | bytes | None = k.value if k else None
            want: int | bytes = c.value if isinstance(c.value, bytes) else str(c.value).encode()
            if have is None:
                return False  # etcd: a value compare on a missing key fails
        else:
            have = {"create": k.create_revision if k else 0, "mod": k.mod_revision if k else 0,
                    "version": k.version if k else 0, "lease": k.lease if k else 0}[c.target]
            want = int(c.value)  # type: ignore[arg-type]
        if c.op == "==":
            return have == want
        if c.op == "!=":
            return have != want
        if c.op == ">":
            return have > want  # type: ignore[operator]
        return have < want  # type: ignore[operator]

    def txn(self, compare: Sequence[Cmp], success: Sequence[Op],
            failure: Sequence[Op] = ()) -> tuple[bool, int]:
        ok = all(self._compare(c) for c in compare)
        ops = success if ok else failure
        for op in ops:
            if isinstance(op, Put) and op.lease and op.lease not in self.leases:
                raise EtcdError("etcd txn failed: NOT_FOUND: etcdserver: requested lease not "
                                "found")
        events: list[WatchEvent] = []
        rev = self.revision + 1
        for op in ops:
            if isinstance(op, Put):
                events.append(self._put(op.key, op.value, op.lease, rev))
            elif isinstance(op, Delete):
                match = [k for k in self.keys
                         if (k.startswith(op.key) if op.prefix else k == op.key)]
                for k in sorted(match):
                    events.append(self._delete(k, rev))
        if events:
            self._commit(events)
        return ok, self.revision

    def _put(self, key: str, value: bytes, lease: int, rev: int) -> WatchEvent:
        old = self.keys.get(key)
        if old is not None and old.lease and old.lease != lease and old.lease in self.leases:
            self.leases[old.lease].keys.discard(key)
        k = _Key(value, old.create_revision if old else rev, rev, (old.version if old else 0) + 1,
                 lease)
        self.keys[key] = k
        if lease:
            self.leases[lease].keys.add(key)
        return WatchEvent("put", self._kv(key, k), rev)

    def _delete(self, key: str, rev: int) -> WatchEvent:
        k = self.keys.pop(key)
        if k.lease in self.leases:
            self.leases[k.lease].keys.discard(key)
        return WatchEvent("delete", KV(key, b"", rev, 0, 0), rev)

    def _commit(self, events: list[WatchEvent]) -> None:
        self.revision = events[0].revision
        self.history.extend(events)
        for w in self.watches:
            mine = [e for e in events if e.kv.key.startswith(w.prefix)]
            if mine:
                w.queue.append(mine)
                w.wake.set()

    # --- leases ---------------------------------------------------------------------------
    def grant(self, ttl_s: int) -> int:
        self._next_lease += 1
        lease = _Lease(self._next_lease, ttl_s, self.loop.time() + ttl_s)
        self.leases[lease.id] = lease
        self._arm(lease)
        return lease.id

    def _arm(self, lease: _Lease) -> None:
        if lease.timer is not None:
            lease.timer.cancel()
        lease.timer = self.loop.call_at(lease.expires_at, self._expire, lease.id,
                                        context=self.ctx)

    def _expire(self, lease_id: int) -> None:
        lease = self.leases.get(lease_id)
        if lease is None:
            return
        if lease.expires_at > self.loop.time():
            self._arm(lease)
            return
        self.trace(f"etcd lease {lease_id:x} expired ({sorted(lease.keys)})")
        keys = sorted(lease.keys)
        self.revoke(lease_id)
        if self.on_lease_expired is not None:
            self.on_lease_expired(keys)

    def lease_ttl(self, lease_id: int) -> tuple[int, int]:
        """As etcd's LeaseTimeToLive: granted TTL and whole seconds left, (0, -1) if gone."""
        lease = self.leases.get(lease_id)
        if lease is None:
            return 0, -1
        return lease.ttl_s, max(0, int(lease.expires_at - self.loop.time()))

    def lease_keys(self, lease_id: int) -> list[str]:
        lease = self.leases.get(lease_id)
        return sorted(lease.keys) if lease is not None else []

    def keepalive(self, lease_id: int) -> int:
        lease = self.leases.get(lease_id)
        if lease is None:
            return 0
        lease.expires_at = self.loop.time() + lease.ttl_s
        return lease.ttl_s

    def revoke(self, lease_id: int) -> None:
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return
        if lease.timer is not None:
            lease.timer.cancel()
        rev = self.revision + 1
        events = [self._delete(k, rev) for k in sorted(lease.keys) if k in self.keys]
        if events:
            self._commit(events)

    def lease_ttl_left(self, lease_id: int) -> float:
        lease = self.leases.get(lease_id)
        return lease.expires_at - self.loop.time() if lease else -1.0

    # --- cluster events (faults) ----------------------------------------------------------
    def compact(self, revision: int | None = None) -> None:
        """Drop history below `revision` (default: the current revision)."""
        rev = self.revision if revision is None else revision
        if rev <= self.compacted:
            return
        kvs, _ = self.range("", True, rev)
        self._base = {kv.key: kv for kv in kvs}
        self.compacted = rev
        self.history = [e for e in self.history if e.revision >= rev]
        self.trace(f"etcd compacted at {self.compacted}")

    def leader_change(self, election_s: float = 1.0) -> None:
        """An election: requests fail for `election_s`, then the new leader's lessor extends
        every lease to a full TTL (plus the promotion extension) from its promotion."""
        self.no_leader_until = self.loop.time() + election_s
        self.trace(f"etcd leader election for {election_s:.2f}s")

        def promote() -> None:
            for lease in self.leases.values():
                lease.expires_at = self.loop.time() + lease.ttl_s + PROMOTION_EXTEND_S
                self._arm(lease)
            self.trace("etcd new leader: every lease extended")
        self.loop.call_at(self.no_leader_until, promote, context=self.ctx)
        # Clients connected to the member that went away lose their watch streams (the others
        # keep theirs: watches are served by any member).
        for w in list(self.watches):
            if self.rng.random() < 0.5 and not w.broken:
                w.broken = f"etcd watch on {w.prefix} failed: UNAVAILABLE: member went away"
                w.wake.set()

    def has_leader(self) -> bool:
        return self.loop.time() >= self.no_leader_until


class SimEtcdClient:
    """One process's connection to `SimEtcd` (satisfies `fleetd.registry.EtcdApi`).

    Every request costs a round trip of `latency_s` each way. Across a cut link a request
    either fails fast (UNAVAILABLE: the channel knows it is down) or hangs until its timeout
    (DEADLINE_EXCEEDED), chosen by the seeded random source; a request can also be applied
    while its answer is lost. Timing bookkeeping (`unreachable_for_s`, `last_answer_age_s`)
    follows `EtcdClient`'s rules."""

    def __init__(self, server: SimEtcd, network: Network, name: str, *,
                 request_timeout_s: float = 3.0, latency_s: float = 0.001) -> None:
        self.server = server
        self.network = network
        self.name = name
        self.request_timeout_s = request_timeout_s
        self.latency_s = latency_s
        self.requests = 0
        self.last_ok_at = 0.0
        self.failing_since = 0.0
        self.closed = False
        self._watches: list[_Watch] = []
        network.on_change.append(self._network_changed)

    # --- bookkeeping as in EtcdClient -----------------------------------------------------
    def _answered(self) -> None:
        self.last_ok_at = clock.now()
        self.failing_since = 0.0

    def _failed(self, sent: float, reachable: bool) -> None:
        if reachable:
            self._answered()
        elif not self.failing_since:
            self.failing_since = sent

    def unreachable_for_s(self) -> float:
        if not self.failing_since:
            return 0.0
        return clock.now() - self.failing_since

    def last_answer_age_s(self) -> float:
        return clock.now() - self.last_ok_at if self.last_ok_at else float("inf")

    def _up(self) -> bool:
        return not self.closed and self.network.up(self.name, SimEtcd.NAME)

    async def _request(self, what: str, fn: Callable[[], object], timeout_s: float | None = None,
                       read_only: bool = False) -> object:
        for election in range(READ_RETRIES + 1 if read_only else 1):
            try:
                return await self._request_once(what, fn, timeout_s)
            except EtcdError as e:
                if not read_only or election == READ_RETRIES or "no leader" not in str(e):
                    raise
            await asyncio.sleep(READ_RETRY_S)
        raise AssertionError("unreachable")

    async def _request_once(self, what: str, fn: Callable[[], object],
                            timeout_s: float | None) -> object:
        self.requests += 1
        timeout = timeout_s or self.request_timeout_s
        sent = clock.now()
        loop = self.server.loop
        deadline = loop.time() + timeout
        fast_fail = self.server.rng.random() < 0.5
        if not self._up():
            if fast_fail:
                await asyncio.sleep(min(self.latency_s * 2, timeout))
                self._failed(sent, False)
                raise EtcdError(f"etcd {what} failed: UNAVAILABLE: connection refused")
            await asyncio.sleep(timeout)
            self._failed(sent, False)
            raise EtcdError(f"etcd {what} failed: DEADLINE_EXCEEDED: Deadline Exceeded")
        await asyncio.sleep(self.latency_s)
        if not self._up():  # lost on the way
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            self._failed(sent, False)
            raise EtcdError(f"etcd {what} failed: DEADLINE_EXCEEDED: Deadline Exceeded")
        if not self.server.has_leader():
            await asyncio.sleep(self.latency_s)
            self._failed(sent, False)
            raise EtcdError(f"etcd {what} failed: UNAVAILABLE: etcdserver: no leader")
        try:
            result = fn()
        except EtcdError:
            await asyncio.sleep(self.latency_s)
            self._failed(sent, True)
            raise
        await asyncio.sleep(self.latency_s)
        if not self._up():  # applied, but the answer is lost
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            self._failed(sent, False)
            raise EtcdError(f"etcd {what} failed: DEADLINE_EXCEEDED: Deadline Exceeded")
        self._answered()
        return result

    async def close(self) -> None:
        self.crash()

    def crash(self) -> None:
        """The process died: its watches go away with its connection."""
        self.closed = True
        for w in self._watches:
            if w in self.server.watches:
                self.server.watches.remove(w)
        self._watches.clear()
        if self._network_changed in self.network.on_change:
            self.network.on_change.remove(self._network_changed)

    # --- KV -------------------------------------------------------------------------------
    async def get(self, key: str) -> KV | None:
        kvs, _ = await self._request("get " + key, lambda: self.server.range(key, False),
                                     read_only=True)  # type: ignore[misc]
        return kvs[0] if kvs else None

    async def current_revision(self) -> int:
        return await self._request("revision", lambda: self.server.revision,  # type: ignore
                                   read_only=True)

    async def get_prefix(self, prefix: str, revision: int = 0) -> tuple[list[KV], int]:
        return await self._request(  # type: ignore[return-value]
            "range " + prefix, lambda: self.server.range(prefix, True, revision),
            read_only=True)

    async def get_many(self, ranges: Sequence[tuple[str, bool, bool]]
                       ) -> tuple[list[list[KV]], int]:
        def read() -> tuple[list[list[KV]], int]:
            out = []
            for key, is_prefix, keys_only in ranges:
                kvs, _ = self.server.range(key, is_prefix)
                out.append([KV(k.key, b"", k.mod_revision, k.create_revision, k.lease)
                            if keys_only else k for k in kvs])
            return out, self.server.revision
        return await self._request("multi-get", read, read_only=True)  # type: ignore[return-value]

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        def put() -> int:
            return self.server.txn([], [Put(key, value, lease)])[1]
        return await self._request("put " + key, put)  # type: ignore[return-value]

    async def delete(self, key: str, prefix: bool = False) -> int:
        def delete() -> int:
            before = len(self.server.keys)
            self.server.txn([], [Delete(key, prefix)])
            return before - len(self.server.keys)
        return await self._request("delete " + key, delete)  # type: ignore[return-value]

    async def txn(self, compare: Sequence[Cmp], success: Sequence[Op],
                  failure: Sequence[Op] = ()) -> tuple[bool, int]:
        return await self._request(  # type: ignore[return-value]
            "txn", lambda: self.server.txn(compare, success, failure))

    # --- leases ---------------------------------------------------------------------------
    async def grant(self, ttl_s: int) -> int:
        return await self._request("lease grant",  # type: ignore[return-value]
                                   lambda: self.server.grant(ttl_s))

    async def revoke(self, lease: int) -> None:
        await self._request("lease revoke", lambda: self.server.revoke(lease))

    async def lease_ttl(self, lease: int) -> tuple[int, int]:
        return await self._request("lease time-to-live",  # type: ignore[return-value]
                                   lambda: self.server.lease_ttl(lease))

    async def lease_keys(self, lease: int) -> list[str]:
        return await self._request("lease keys",  # type: ignore[return-value]
                                   lambda: self.server.lease_keys(lease))

    async def keepalive_once(self, lease: int, timeout_s: float | None = None) -> int:
        try:
            return await self._request(  # type: ignore[return-value]
                "lease keep-alive", lambda: self.server.keepalive(lease), timeout_s)
        except EtcdError as e:
            raise EtcdError(str(e).replace("etcd lease keep-alive failed",
                                           "etcd lease keep-alive failed")) from None

    # --- watches --------------------------------------------------------------------------
    def _network_changed(self) -> None:
        loop = self.server.loop
        for w in list(self._watches):
            if not self._up() and not w.broken:
                # Silent now; gRPC keep-alive declares the stream dead unless the link returns.
                loop.call_later(WATCH_DEAD_AFTER_S, self._maybe_break, w,
                                context=self.server.ctx)
            elif self._up():
                w.wake.set()

    def _maybe_break(self, w: _Watch) -> None:
        if not self._up() and not w.broken:
            w.broken = f"etcd watch on {w.prefix} failed: UNAVAILABLE: keepalive watchdog timeout"
            w.wake.set()

    async def watch_prefix(self, prefix: str, start_revision: int
                           ) -> AsyncIterator[list[WatchEvent]]:
        """Batches of events under `prefix` from `start_revision` on, one batch per revision;
        raises WatchCompacted or EtcdError as `EtcdClient.watch_prefix` does."""
        self.requests += 1
        await asyncio.sleep(self.server.rng.choice((self.latency_s, 2 * self.latency_s)))
        if not self._up():
            raise EtcdError(f"etcd watch on {prefix} failed: UNAVAILABLE: connection refused")
        srv = self.server
        if start_revision and start_revision < srv.compacted:
            raise WatchCompacted(f"watch on {prefix}: revision {start_revision} compacted "
                                 f"(now {srv.compacted})")
        w = _Watch(self, prefix)
        backlog: dict[int, list[WatchEvent]] = {}
        for ev in srv.history:
            if ev.revision >= start_revision and ev.kv.key.startswith(prefix):
                backlog.setdefault(ev.revision, []).append(ev)
        w.queue.extend(backlog[r] for r in sorted(backlog))
        srv.watches.append(w)
        self._watches.append(w)
        try:
            while True:
                while self._up() and w.queue and not w.broken:
                    yield w.queue.pop(0)
                if w.broken:
                    raise EtcdError(w.broken)
                if self.closed:
                    raise EtcdError(f"etcd watch on {prefix} closed")
                w.wake.clear()
                await w.wake.wait()
        finally:
            if w in srv.watches:
                srv.watches.remove(w)
            if w in self._watches:
                self._watches.remove(w)

    def open_watch(self, prefix: str, start_revision: int) -> SimWatchStream:
        return SimWatchStream(self, prefix, start_revision)


class SimWatchStream:
    """`EtcdApi.open_watch` over the model: the batches of `watch_prefix`, each with its
    revision. Progress notifications are not modelled."""

    def __init__(self, client: SimEtcdClient, prefix: str, start_revision: int) -> None:
        self.client = client
        self.prefix = prefix
        self.start_revision = start_revision

    async def responses(self) -> AsyncIterator[tuple[list[WatchEvent], int]]:
        async for batch in self.client.watch_prefix(self.prefix, self.start_revision):
            yield batch, max(ev.revision for ev in batch)
