"""The simulation's doubles stand in for the real adapters: same Protocol, same behaviour.

Each contract below runs twice: against a real etcd through `EtcdClient`, and against the
in-memory model (`SimEtcd` through `SimEtcdClient`, on the virtual clock)."""

from __future__ import annotations

import asyncio
import inspect
import random
import uuid
from collections.abc import Awaitable, Callable

import pytest
from aetcd import rpc

from fleetd import clock
from fleetd.localcluster import EtcdServer
from fleetd.registry import EtcdApi, EtcdClient, EtcdError, Registry, WatchCompacted
from fleetd.registry._etcd import Cmp, Delete, Put
from fleetd.systemd import SystemdManager, UnitManager
from tests.sim.etcd_model import Network, SimEtcd, SimEtcdClient
from tests.sim.fake_systemd import FakeSystemd, FakeSystemdConnection
from tests.sim.loop import VirtualLoop

Contract = Callable[["Backend"], Awaitable[None]]


class Backend:
    """One etcd under test: its client, how to compact it and how to let time pass."""

    def __init__(self, client: EtcdApi, compact: Callable[[int], Awaitable[None]],
                 sleep: Callable[[float], Awaitable[None]]) -> None:
        self.client = client
        self.compact = compact
        self.sleep = sleep
        self.prefix = f"/contract-{uuid.uuid4().hex[:8]}/"


def _members(proto: type) -> set[str]:
    return {n for n in dir(proto) if not n.startswith("_")} | set(
        getattr(proto, "__annotations__", {}))


@pytest.mark.parametrize(("proto", "real", "fake"), [
    (EtcdApi, EtcdClient, SimEtcdClient),
    (UnitManager, SystemdManager, FakeSystemdConnection),
])
def test_real_adapter_and_simulation_double_have_the_protocols_members(
        proto: type, real: type, fake: type) -> None:
    for name in sorted(_members(proto)):
        want = getattr(proto, name, None)
        for impl in (real, fake):
            have = getattr(impl, name, None)
            if have is None:  # an instance attribute: set in __init__ / as a dataclass field
                src = inspect.getsource(impl)
                assert f"self.{name}" in src or f"{name}:" in src, f"{impl.__name__}.{name}"
                continue
            if callable(want) and not isinstance(want, property):
                assert inspect.iscoroutinefunction(have) == inspect.iscoroutinefunction(want), \
                    f"{impl.__name__}.{name}: async or not as the Protocol says"
                assert list(inspect.signature(have).parameters) == \
                    list(inspect.signature(want).parameters), f"{impl.__name__}.{name}"


def test_simulation_doubles_pass_the_runtime_protocol_check() -> None:
    loop = VirtualLoop()
    try:
        etcd = SimEtcd(loop, random.Random(0))
        assert isinstance(SimEtcdClient(etcd, Network(), "m1"), EtcdApi)
        assert isinstance(FakeSystemd(loop, "m1").connect("p"), UnitManager)
    finally:
        loop.close()


# --- the contracts -------------------------------------------------------------------------
async def kv_revisions_and_reads_at_a_revision(b: Backend) -> None:
    c, p = b.client, b.prefix
    r1 = await c.put(p + "a", b"1")
    r2 = await c.put(p + "a", b"2")
    assert r2 == r1 + 1
    kv = await c.get(p + "a")
    assert kv is not None and (kv.value, kv.mod_revision, kv.create_revision) == (b"2", r2, r1)
    old, _ = await c.get_prefix(p, r1)
    assert [(k.key, k.value) for k in old] == [(p + "a", b"1")]
    await c.put(p + "b", b"3")
    now, rev = await c.get_prefix(p)
    assert [k.key for k in now] == [p + "a", p + "b"] and rev >= r2 + 1
    (vals, keys), _ = await c.get_many([(p, True, False), (p + "b", False, True)])
    assert [k.value for k in vals] == [b"2", b"3"] and [k.key for k in keys] == [p + "b"]
    assert await c.delete(p, prefix=True) == 2
    assert await c.get(p + "a") is None


async def txn_compares(b: Backend) -> None:
    c, p = b.client, b.prefix
    ok, _ = await c.txn([Cmp(p + "k", "create", "==", 0)], [Put(p + "k", b"v")])
    assert ok
    ok, _ = await c.txn([Cmp(p + "k", "create", "==", 0)], [Put(p + "k", b"w")],
                        [Put(p + "lost", b"1")])
    assert not ok and (await c.get(p + "lost")) is not None
    kv = await c.get(p + "k")
    assert kv is not None
    ok, _ = await c.txn([Cmp(p + "k", "mod", "==", kv.mod_revision),
                         Cmp(p + "k", "value", "==", b"v"), Cmp(p + "k", "version", "==", 1)],
                        [Put(p + "k", b"x"), Delete(p + "lost")])
    assert ok and (await c.get(p + "lost")) is None
    ok, _ = await c.txn([Cmp(p + "k", "mod", "==", kv.mod_revision)], [Put(p + "k", b"y")])
    assert not ok
    ok, _ = await c.txn([Cmp(p + "absent", "value", "==", b"")], [Put(p + "z", b"1")])
    assert not ok


async def watch_from_a_revision_then_live(b: Backend) -> None:
    c, p = b.client, b.prefix
    r1 = await c.put(p + "a", b"1")
    await c.put(p + "b", b"2")
    await c.delete(p + "a")
    seen: list[tuple[str, str, int]] = []

    async def consume() -> None:
        async for batch in c.watch_prefix(p, r1):
            seen.extend((e.kind, e.kv.key, e.revision) for e in batch)
            if len(seen) == 4:
                return
    task = asyncio.ensure_future(consume())
    await b.sleep(0.2)
    r4 = await c.put(p + "c", b"3")
    await asyncio.wait_for(task, 5)
    assert [(k, key) for k, key, _ in seen] == [("put", p + "a"), ("put", p + "b"),
                                               ("delete", p + "a"), ("put", p + "c")]
    assert seen[0][2] == r1 and seen[-1][2] == r4


async def compaction(b: Backend) -> None:
    c, p = b.client, b.prefix
    r1 = await c.put(p + "a", b"1")
    r2 = await c.put(p + "a", b"2")
    await c.put(p + "a", b"3")
    await b.compact(r2)
    with pytest.raises(WatchCompacted):
        async for _ in c.watch_prefix(p, r1):
            pass
    with pytest.raises(EtcdError, match="compacted"):
        await c.get_prefix(p, r1)
    at, _ = await c.get_prefix(p, r2)
    assert [k.value for k in at] == [b"2"]


async def leases(b: Backend) -> None:
    c, p = b.client, b.prefix
    lease = await c.grant(2)
    await c.put(p + "live", b"1", lease)
    assert await c.keepalive_once(lease) > 0
    granted, left = await c.lease_ttl(lease)
    assert granted == 2 and 0 <= left <= 2, (granted, left)
    await c.revoke(lease)
    assert await c.get(p + "live") is None
    assert await c.keepalive_once(lease) <= 0
    assert await c.lease_ttl(lease) == (0, -1), "a revoked lease reads as gone"
    lease = await c.grant(2)
    await c.put(p + "live", b"1", lease)
    await b.sleep(4.5)
    assert await c.get(p + "live") is None, "the lease expired with its keys"
    assert await c.lease_ttl(lease) == (0, -1), "an expired lease reads as gone"
    with pytest.raises(EtcdError):
        await c.put(p + "x", b"1", lease)


async def lease_keys_and_moving_a_machine_to_another_lease(b: Backend) -> None:
    # What `fleetd --after-exit` relies on (fleetd/after_exit.py): the keys a lease holds,
    # and moving one machine's registration and states, nothing else, to a new lease.
    c, p = b.client, b.prefix
    reg = Registry(c, p)
    old = await c.grant(30)
    mine = [reg.keys.machine("m1"), reg.keys.state("a.service", "m1"),
            reg.keys.state("b.service", "m1")]
    others = [reg.keys.leader, reg.keys.state("a.service", "m2")]
    for k in mine + others:
        await c.put(k, b"{}" if k != mine[0] else b'{"id": "m1"}', old)
    unleased = reg.keys.state("c.service", "m1")
    await c.put(unleased, b"{}")
    assert await c.lease_keys(old) == sorted(mine + others)
    new = await c.grant(30)
    assert await reg.move_machine_to_lease("m2", old, new) == 0, "m2 has no registration"
    assert await reg.move_machine_to_lease("m1", old, new) == 3
    assert await c.lease_keys(new) == sorted(mine)
    assert await c.lease_keys(old) == sorted(others), "the leadership stays"
    kv = await c.get(mine[0])
    assert kv is not None and kv.value == b'{"id": "m1"}' and kv.lease == new
    assert (await c.get(unleased)).lease == 0  # type: ignore[union-attr]
    assert await reg.move_machine_to_lease("m1", old, new) == 0, "already moved"
    await c.revoke(old)
    assert await c.lease_keys(old) == [], "a revoked lease holds nothing"
    await c.revoke(new)


CONTRACTS = [kv_revisions_and_reads_at_a_revision, txn_compares,
             watch_from_a_revision_then_live, compaction, leases,
             lease_keys_and_moving_a_machine_to_another_lease]




@pytest.mark.integration
@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda f: f.__name__)
async def test_contract_on_real_etcd(contract: Contract, etcd_server: EtcdServer) -> None:
    client = EtcdClient([etcd_server.endpoint], request_timeout_s=5.0)

    async def compact(rev: int) -> None:
        await rpc.KVStub(client._channel).Compact(
            rpc.CompactionRequest(revision=rev, physical=True), timeout=5)
    try:
        await contract(Backend(client, compact, asyncio.sleep))
    finally:
        await client.close()


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda f: f.__name__)
def test_contract_on_the_model(contract: Contract) -> None:
    loop = VirtualLoop()
    etcd = SimEtcd(loop, random.Random(0))
    client = SimEtcdClient(etcd, Network(), "m1")

    async def compact(rev: int) -> None:
        etcd.compact(rev)
    clock.use(loop.time)
    try:
        loop.run_until_complete(contract(Backend(client, compact, asyncio.sleep)))
    finally:
        clock.use(None)
        loop.close()


def test_model_leader_change_extends_every_lease_and_partitions_time_out() -> None:
    loop = VirtualLoop()
    etcd = SimEtcd(loop, random.Random(0))
    net = Network()
    client = SimEtcdClient(etcd, net, "m1", request_timeout_s=1.0)

    async def main() -> None:
        lease = await client.grant(5)
        await asyncio.sleep(4)
        etcd.leader_change(0.5)
        with pytest.raises(EtcdError, match="no leader"):
            await client.put("/k", b"v")
        await asyncio.sleep(1)
        assert etcd.lease_ttl_left(lease) > 5, "promotion gave it a full TTL again"
        net.partition("m1", "etcd")
        t0 = loop.time()
        with pytest.raises(EtcdError):
            await client.get("/k")
        assert loop.time() - t0 <= 1.0 + 1e-6
        assert client.unreachable_for_s() > 0
        net.heal()
        assert await client.get("/k") is None and client.unreachable_for_s() == 0
    clock.use(loop.time)
    try:
        loop.run_until_complete(main())
    finally:
        clock.use(None)
        loop.close()


