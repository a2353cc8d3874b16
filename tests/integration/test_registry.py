"""fleetd.registry.Registry against a real etcd (fleetd.localcluster.EtcdServer), no mocks."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import pytest
from aetcd import rpc

from fleetd.localcluster import EtcdServer
from fleetd.registry import (
    EtcdClient,
    EtcdError,
    MachineRecord,
    NotLeader,
    Registry,
    RegistryError,
    ScheduleEntry,
    UnitConflict,
    UnitNotFound,
    UnitRecord,
    UnitStateRecord,
    UnitView,
    Update,
    WatchEvent,
)
from fleetd.registry._etcd import KV, MAX_TXN_OPS, Put

pytestmark = pytest.mark.integration

TEXT = "[Unit]\nDescription=test\n\n[Service]\nExecStart=/bin/sleep 1000\n"
TEXT2 = "[Unit]\nDescription=test v2\n\n[Service]\nExecStart=/bin/sleep 2000\n"
WATCH_TIMEOUT_S = 5.0




@pytest.fixture
async def client(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    c = EtcdClient([etcd_server.endpoint], request_timeout_s=5.0)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
def prefix() -> str:
    return f"/t-{uuid.uuid4().hex[:12]}/fleet/"


@pytest.fixture
def reg(client: EtcdClient, prefix: str) -> Registry:
    return Registry(client, prefix)


def unit(name: str = "hello.service", text: str = TEXT) -> UnitRecord:
    return UnitRecord(name, text, hashlib.sha1(text.encode()).hexdigest())


def state(unit_name: str, machine_id: str) -> UnitStateRecord:
    return UnitStateRecord(unit_name, machine_id, "h", "launched", "loaded", "active", "running",
                           main_pid=42, updated_ns=1)


async def raw(reg: Registry, prefix: str | None = None) -> dict[str, bytes]:
    kvs, _ = await reg.etcd.get_prefix(prefix or reg.keys.root)
    return {kv.key: kv.value for kv in kvs}


async def whole_keyspace(client: EtcdClient) -> list[KV]:
    """Every key in etcd (key >= "\\0"), read without going through any registry prefix."""
    resp = await client._kv.Range(rpc.RangeRequest(key=b"\0", range_end=b"\0"), timeout=5)
    return [KV(k.key.decode(), bytes(k.value), k.mod_revision, k.create_revision, k.lease)
            for k in resp.kvs]


# --- units ---------------------------------------------------------------------------------


async def test_create_unit_then_get_unit_round_trips(reg: Registry) -> None:
    rec = unit()
    assert await reg.create_unit(rec, "launched") is True
    assert await reg.get_unit(rec.name) == UnitView(rec, "launched")


async def test_unit_texts_reads_many_units_in_one_transaction_per_max_txn_ops(
        reg: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    n = MAX_TXN_OPS + 5
    recs = [unit(f"u{i:03d}.service", f"[Service]\nExecStart=/bin/sleep {i}\n")
            for i in range(n)]
    await asyncio.gather(*(reg.create_unit(r) for r in recs))
    calls: list[str] = []
    real_get_many, real_get = reg.etcd.get_many, reg.etcd.get

    async def get_many(ranges):  # type: ignore[no-untyped-def]
        calls.append(f"get_many {len(ranges)}")
        return await real_get_many(ranges)

    async def get(key):  # type: ignore[no-untyped-def]
        calls.append("get")
        return await real_get(key)

    monkeypatch.setattr(reg.etcd, "get_many", get_many)
    monkeypatch.setattr(reg.etcd, "get", get)
    names = [r.name for r in reversed(recs)] + ["missing.service", recs[0].name]
    got = await reg.unit_texts(names)
    assert got == {r.name: r for r in recs}  # the missing one left out, the repeat once
    assert calls == [f"get_many {MAX_TXN_OPS}", f"get_many {n + 1 - MAX_TXN_OPS}"]
    assert await reg.unit_texts([]) == {}
    assert len(calls) == 2


async def test_create_unit_defaults_to_inactive(reg: Registry) -> None:
    rec = unit()
    await reg.create_unit(rec)
    view = await reg.get_unit(rec.name)
    assert view is not None and view.desired == "inactive"


async def test_get_missing_unit_returns_none(reg: Registry) -> None:
    assert await reg.get_unit("absent.service") is None


async def test_creating_the_same_file_twice_returns_false_and_changes_nothing(
        reg: Registry) -> None:
    rec = unit()
    assert await reg.create_unit(rec, "loaded") is True
    before_kvs, _ = await reg.etcd.get_prefix(reg.keys.root)
    assert await reg.create_unit(rec, "launched") is False
    after_kvs, _ = await reg.etcd.get_prefix(reg.keys.root)
    assert after_kvs == before_kvs  # same values and same mod revisions
    assert await reg.get_unit(rec.name) == UnitView(rec, "loaded")


async def test_different_file_under_existing_name_raises_conflict_naming_the_unit(
        reg: Registry) -> None:
    first = unit("web.service", TEXT)
    await reg.create_unit(first, "launched")
    before = await raw(reg)
    with pytest.raises(UnitConflict, match=r"web\.service"):
        await reg.create_unit(unit("web.service", TEXT2), "loaded")
    assert await raw(reg) == before
    assert await reg.get_unit("web.service") == UnitView(first, "launched")


async def test_create_unit_with_invalid_state_is_refused_before_writing(reg: Registry) -> None:
    with pytest.raises(RegistryError, match="bogus"):
        await reg.create_unit(unit(), "bogus")
    assert await raw(reg) == {}


async def test_replace_unit_changes_file_and_keeps_desired_state(reg: Registry) -> None:
    await reg.create_unit(unit("r.service", TEXT), "launched")
    new = unit("r.service", TEXT2)
    await reg.replace_unit(new)
    assert await reg.get_unit("r.service") == UnitView(new, "launched")


async def test_replace_missing_unit_raises_not_found_and_writes_nothing(reg: Registry) -> None:
    with pytest.raises(UnitNotFound, match=r"ghost\.service"):
        await reg.replace_unit(unit("ghost.service"))
    assert await raw(reg) == {}


async def test_set_target_state_updates_desired(reg: Registry) -> None:
    await reg.create_unit(unit("s.service"), "inactive")
    await reg.set_target_state("s.service", "launched")
    view = await reg.get_unit("s.service")
    assert view is not None and view.desired == "launched"


async def test_set_target_state_on_missing_unit_raises_and_writes_nothing(
        reg: Registry) -> None:
    with pytest.raises(UnitNotFound, match=r"missing\.service"):
        await reg.set_target_state("missing.service", "launched")
    assert await raw(reg) == {}


async def test_set_target_state_rejects_invalid_state(reg: Registry) -> None:
    await reg.create_unit(unit("s.service"), "loaded")
    with pytest.raises(RegistryError):
        await reg.set_target_state("s.service", "running")
    view = await reg.get_unit("s.service")
    assert view is not None and view.desired == "loaded"


async def test_destroy_unit_removes_unit_desired_and_unschedulable_keys(reg: Registry) -> None:
    await reg.create_unit(unit("d.service"), "launched")
    await reg.create_unit(unit("keep.service"), "loaded")
    await reg._apply([reg.unschedulable_op("d.service", "no machine")])
    assert reg.keys.unschedulable_reason("d.service") in await raw(reg)
    await reg.destroy_unit("d.service")
    left = await raw(reg)
    assert set(left) == {reg.keys.unit("keep.service"), reg.keys.desired_state("keep.service")}
    assert await reg.get_unit("d.service") is None


async def test_destroy_missing_unit_raises_not_found(reg: Registry) -> None:
    with pytest.raises(UnitNotFound, match=r"nope\.service"):
        await reg.destroy_unit("nope.service")


async def test_unit_can_be_recreated_with_a_new_file_after_destroy(reg: Registry) -> None:
    await reg.create_unit(unit("x.service", TEXT), "launched")
    await reg.destroy_unit("x.service")
    new = unit("x.service", TEXT2)
    assert await reg.create_unit(new, "loaded") is True
    assert await reg.get_unit("x.service") == UnitView(new, "loaded")


# --- machines, states and leases -----------------------------------------------------------


async def test_machine_registration_vanishes_when_its_lease_is_revoked(reg: Registry) -> None:
    lease = await reg.grant_lease(30)
    m = MachineRecord("m1", "10.0.0.1", {"region": "east"}, "host1", "0.1.0")
    await reg.register_machine(m, lease)
    assert await reg.list_machines() == {"m1": m}
    kv = await reg.etcd.get(reg.keys.machine("m1"))
    assert kv is not None and kv.lease == lease
    await reg.revoke_lease(lease)
    assert await reg.etcd.get(reg.keys.machine("m1")) is None
    assert await reg.list_machines() == {}


async def test_renew_lease_reports_remaining_ttl_and_nothing_after_revoke(
        reg: Registry) -> None:
    lease = await reg.grant_lease(30)
    assert 0 < await reg.renew_lease(lease) <= 30
    await reg.revoke_lease(lease)
    assert await reg.renew_lease(lease) <= 0
    await reg.revoke_lease(lease)  # revoking twice is harmless


async def test_published_states_vanish_when_the_lease_is_revoked(reg: Registry) -> None:
    lease = await reg.grant_lease(30)
    other = await reg.grant_lease(30)
    await reg.publish_states([state("a.service", "m1"), state("b.service", "m1")], lease)
    await reg.publish_states([state("a.service", "m2")], other)
    st = await reg.cluster_state()
    assert set(st.states) == {"a.service", "b.service"}
    assert set(st.states["a.service"]) == {"m1", "m2"}
    await reg.revoke_lease(lease)
    assert set(await raw(reg, reg.keys.states)) == {reg.keys.state("a.service", "m2")}
    await reg.revoke_lease(other)
    assert await raw(reg, reg.keys.states) == {}


async def test_publish_states_in_more_than_one_transaction(reg: Registry) -> None:
    lease = await reg.grant_lease(30)
    n = MAX_TXN_OPS + 5
    await reg.publish_states([state(f"u{i}.service", "m1") for i in range(n)], lease)
    assert len(await raw(reg, reg.keys.states)) == n
    await reg.clear_states("m1", [f"u{i}.service" for i in range(n)])
    assert await raw(reg, reg.keys.states) == {}
    await reg.revoke_lease(lease)


# --- engine leadership and decisions -------------------------------------------------------


async def test_leadership_first_wins_second_loses_until_the_leader_lease_is_revoked(
        reg: Registry) -> None:
    la, lb = await reg.grant_lease(30), await reg.grant_lease(30)
    assert await reg.try_acquire_leadership("ma", la) is True
    assert await reg.try_acquire_leadership("mb", lb) is False
    assert await reg.try_acquire_leadership("ma", la) is True  # re-acquiring is idempotent
    assert await reg.try_acquire_leadership("ma", lb) is False  # same id, other lease
    assert await reg.leader() == "ma"
    await reg.revoke_lease(la)
    assert await reg.leader() is None
    assert await reg.try_acquire_leadership("mb", lb) is True
    assert await reg.leader() == "mb"
    await reg.revoke_lease(lb)


async def test_resign_leadership_frees_it_only_for_the_leader(reg: Registry) -> None:
    la, lb = await reg.grant_lease(30), await reg.grant_lease(30)
    assert await reg.try_acquire_leadership("ma", la)
    await reg.resign_leadership("mb")
    assert await reg.leader() == "ma"
    await reg.resign_leadership("ma")
    assert await reg.leader() is None
    assert await reg.try_acquire_leadership("mb", lb)
    for lease in (la, lb):
        await reg.revoke_lease(lease)


def entry(unit_name: str, machine_id: str, is_global: bool = False) -> ScheduleEntry:
    return ScheduleEntry(unit_name, machine_id, "launched", "h", is_global)


async def test_write_decisions_by_a_non_leader_raises_and_writes_nothing(
        reg: Registry) -> None:
    la, lb = await reg.grant_lease(30), await reg.grant_lease(30)
    ops = [reg.assign_op(entry("a.service", "mb")), reg.unschedulable_op("b.service", "x")]
    with pytest.raises(NotLeader, match="mb"):  # nobody leads yet
        await reg.write_decisions("mb", lb, ops)
    assert await reg.try_acquire_leadership("ma", la)
    with pytest.raises(NotLeader, match="mb"):
        await reg.write_decisions("mb", lb, ops)
    with pytest.raises(NotLeader):  # right id, stale lease
        await reg.write_decisions("ma", lb, ops)
    assert await raw(reg, reg.keys.schedule) == {}
    assert await raw(reg, reg.keys.unschedulable) == {}
    for lease in (la, lb):
        await reg.revoke_lease(lease)


async def test_write_decisions_by_the_leader_applies_every_batch(reg: Registry) -> None:
    lease = await reg.grant_lease(30)
    assert await reg.try_acquire_leadership("ma", lease)
    n = 2 * MAX_TXN_OPS + 3
    await reg.write_decisions("ma", lease, [reg.assign_op(entry(f"u{i}.service", "ma"))
                                            for i in range(n)])
    sched, rev = await reg.machine_schedule("ma")
    assert len(sched) == n and rev > 0
    assert sched["u0.service"] == entry("u0.service", "ma")
    await reg.write_decisions("ma", lease, [reg.unassign_op("ma", f"u{i}.service")
                                            for i in range(n)])
    assert (await reg.machine_schedule("ma"))[0] == {}
    await reg.revoke_lease(lease)


async def test_cluster_state_returns_everything_written(reg: Registry) -> None:
    lease = await reg.grant_lease(30)
    u1, u2 = unit("u1.service", TEXT), unit("u2.service", TEXT2)
    await reg.create_unit(u1, "launched")
    await reg.create_unit(u2, "loaded")
    m1, m2 = MachineRecord("m1", "10.0.0.1"), MachineRecord("m2", "10.0.0.2", {"a": "b"})
    await reg.register_machine(m1, lease)
    await reg.register_machine(m2, lease)
    assert await reg.try_acquire_leadership("m1", lease)
    e1, e2 = entry("u1.service", "m1", True), entry("u1.service", "m2", True)
    await reg.write_decisions("m1", lease, [reg.assign_op(e1), reg.assign_op(e2),
                                            reg.unschedulable_op("u2.service", "no fit")])
    s = state("u1.service", "m1")
    await reg.publish_states([s], lease)

    st = await reg.cluster_state()
    assert st.units == {"u1.service": UnitView(u1, "launched"),
                        "u2.service": UnitView(u2, "loaded")}
    assert st.machines == {"m1": m1, "m2": m2}
    assert st.schedule == {"u1.service": {"m1": e1, "m2": e2}}
    assert st.states == {"u1.service": {"m1": s}}
    assert st.unschedulable == {"u2.service": "no fit"}
    _, now = await reg.etcd.get_prefix(reg.keys.root)
    assert 0 < st.revision <= now

    await reg.write_decisions("m1", lease, [reg.unschedulable_op("u2.service", None)])
    assert (await reg.cluster_state()).unschedulable == {}
    await reg.revoke_lease(lease)


async def test_cluster_state_of_an_empty_prefix_is_empty(reg: Registry) -> None:
    st = await reg.cluster_state()
    assert (st.units, st.machines, st.schedule, st.states, st.unschedulable) == (
        {}, {}, {}, {}, {})


async def test_registries_on_overlapping_prefixes_do_not_see_each_other(
        client: EtcdClient) -> None:
    base = f"/t-{uuid.uuid4().hex[:12]}/p1"
    a, b = Registry(client, base), Registry(client, base + "0")
    await a.create_unit(unit("a.service"), "launched")
    await b.create_unit(unit("b.service"), "launched")
    assert set((await a.cluster_state()).units) == {"a.service"}
    assert set((await b.cluster_state()).units) == {"b.service"}


# --- watches -------------------------------------------------------------------------------


async def _next(it: AsyncIterator[Update], kind: str) -> Update:
    """The next update of `kind` (progress notifications and others skipped)."""
    while True:
        update = await asyncio.wait_for(anext(it), WATCH_TIMEOUT_S)
        if update.kind == kind:
            return update


async def test_follow_reads_first_then_sees_a_put_then_a_delete_in_order(
        reg: Registry) -> None:
    await reg.create_unit(unit("before.service"), "loaded")
    it = reg.follow(reg.keys.desired).__aiter__()
    try:
        first = await _next(it, "reset")
        assert first.state.desired == {"before.service": "loaded"} and not first.compacted
        await reg.create_unit(unit("w.service"), "loaded")  # unit/ is outside the prefix
        await reg.set_target_state("w.service", "launched")
        await reg.destroy_unit("w.service")
        changes = []
        while len(changes) < 3:
            changes += (await _next(it, "changes")).changes
    finally:
        await it.aclose()
    assert [(c.kind, c.name, c.record) for c in changes] == [
        ("desired", "w.service", "loaded"), ("desired", "w.service", "launched"),
        ("desired", "w.service", None)]
    revs = [c.revision for c in changes]
    assert revs == sorted(revs) and len(set(revs)) == 3 and revs[0] > first.revision
    assert first.state.desired == {"before.service": "loaded"}  # the same model, kept current


async def test_follow_from_a_revision_replays_the_writes_after_it(reg: Registry) -> None:
    rev = await reg.current_revision()
    await reg.create_unit(unit("late.service"), "launched")
    it = reg.follow(reg.keys.units, revision=rev).__aiter__()
    try:
        first = await _next(it, "reset")
        assert first.revision == rev and not first.state.units  # as of `rev`
        update = await _next(it, "changes")
    finally:
        await it.aclose()
    assert [(c.kind, c.name) for c in update.changes] == [("unit", "late.service")]
    assert set(update.state.units) == {"late.service"}


class _Breakable:
    """Wraps a client's watch streams: `cut()` ends the open one (a connection fault)."""

    def __init__(self, client: EtcdClient) -> None:
        self.real = client.open_watch
        self.cut_now = asyncio.Event()
        self.opened = 0
        client.open_watch = self.open  # type: ignore[method-assign,assignment]

    def open(self, prefix: str, start: int) -> object:
        self.opened += 1
        real, cut_now = self.real(prefix, start), self.cut_now

        class Stream:
            async def responses(self) -> AsyncIterator[tuple[list[WatchEvent], int]]:
                it = real.responses().__aiter__()
                cut = asyncio.ensure_future(cut_now.wait())
                while True:
                    nxt = asyncio.ensure_future(it.__anext__())
                    await asyncio.wait({nxt, cut}, return_when=asyncio.FIRST_COMPLETED)
                    if not nxt.done():
                        nxt.cancel()
                        cut_now.clear()
                        return
                    yield nxt.result()
        return Stream()


async def test_follow_resumes_after_a_fault_without_reading_again(
        client: EtcdClient, reg: Registry) -> None:
    breakable = _Breakable(client)
    it = reg.follow(reg.keys.units).__aiter__()
    try:
        await _next(it, "reset")
        breakable.cut_now.set()
        interrupted = await _next(it, "interrupted")
        await reg.create_unit(unit("after.service"))  # written while the watch is away
        update = await asyncio.wait_for(anext(it), WATCH_TIMEOUT_S)
    finally:
        await it.aclose()
    assert update.kind == "changes", "resumed from its revision, not re-read"
    assert update.state is interrupted.state and "after.service" in update.state.units
    assert breakable.opened == 2


async def test_follow_reads_again_after_compaction_and_says_what_changed(
        etcd_server: EtcdServer, client: EtcdClient, reg: Registry) -> None:
    import os
    import subprocess

    breakable = _Breakable(client)
    await reg.create_unit(unit("gone.service"), "launched")
    it = reg.follow().__aiter__()
    try:
        first = await _next(it, "reset")
        breakable.cut_now.set()
        await _next(it, "interrupted")
        # While the watch is away: one unit goes, one comes, and the history is compacted.
        await reg.destroy_unit("gone.service")
        await reg.create_unit(unit("new.service"), "loaded")
        rev = await client.put("/elsewhere/" + uuid.uuid4().hex, b"x")
        subprocess.run(["etcdctl", "--endpoints", etcd_server.endpoint, "compact", str(rev)],
                       check=True, capture_output=True, env={**os.environ, "ETCDCTL_API": "3"})
        reset = await _next(it, "reset")
    finally:
        await it.aclose()
    assert reset.compacted and reset.state is not first.state
    assert set(reset.state.units) == {"new.service"}
    assert [(e.kind, e.name) for e in reset.events] == [("unit_deleted", "gone.service"),
                                                        ("unit_put", "new.service")]


# --- keyspace hygiene and client accounting ------------------------------------------------


async def test_every_key_written_stays_under_the_configured_prefix(
        client: EtcdClient, reg: Registry, prefix: str) -> None:
    outside_before = {kv.key: kv.mod_revision for kv in await whole_keyspace(client)
                      if not kv.key.startswith(prefix)}
    lease = await reg.grant_lease(30)
    await reg.create_unit(unit("k.service"), "launched")
    await reg.set_target_state("k.service", "loaded")
    await reg.register_machine(MachineRecord("m1"), lease)
    await reg.publish_states([state("k.service", "m1")], lease)
    assert await reg.try_acquire_leadership("m1", lease)
    await reg.write_decisions("m1", lease, [reg.assign_op(entry("k.service", "m1")),
                                            reg.unschedulable_op("z.service", "why")])
    inside = [kv.key for kv in await whole_keyspace(client) if kv.key.startswith(prefix)]
    outside_after = {kv.key: kv.mod_revision for kv in await whole_keyspace(client)
                     if not kv.key.startswith(prefix)}
    assert outside_after == outside_before
    assert len(inside) == 7  # unit, desired, machine, state, leader, schedule, unschedulable
    await reg.destroy_unit("k.service")
    await reg.revoke_lease(lease)


async def test_renewals_share_one_keepalive_stream_and_a_late_answer_is_never_reused(
        etcd_server: EtcdServer, prefix: str) -> None:
    """Concurrent renewals of many leases over the client's one keep-alive stream are each
    answered for their own lease (a revoked one reads as gone); a renewal that gets no answer
    in time fails, closing the stream, and the next renewal works on a fresh one."""
    c = EtcdClient([etcd_server.endpoint], request_timeout_s=5.0)
    try:
        leases = [await c.grant(30) for _ in range(20)]
        gone = await c.grant(30)
        await c.revoke(gone)
        ttls = await asyncio.gather(*(c.keepalive_once(lease) for lease in leases * 3 + [gone]))
        assert all(25 <= t <= 30 for t in ttls[:-1]), ttls
        assert ttls[-1] <= 0, "a revoked lease must not read as renewed"
        with pytest.raises(EtcdError, match="no answer"):
            await c.keepalive_once(leases[0], timeout_s=1e-9)
        assert await c.keepalive_once(leases[0]) > 0
        assert await c.keepalive_once(gone) <= 0
        for lease in leases:
            await c.revoke(lease)
    finally:
        await c.close()


_TIMED_OUT_RENEWAL = """
import asyncio, gc, sys
from fleetd.registry import EtcdClient, EtcdError

async def main():
    seen = []
    asyncio.get_running_loop().set_exception_handler(lambda _, ctx: seen.append(ctx["message"]))
    c = EtcdClient([sys.argv[1]], request_timeout_s=5.0)
    lease = await c.grant(30)
    await c.keepalive_once(lease)
    try:
        await c.keepalive_once(lease, timeout_s=1e-9)
    except EtcdError:
        pass
    gc.collect()  # a failed future nobody looked at is reported when it is collected
    await c.revoke(lease)
    await c.close()
    print(seen)

asyncio.run(main())
"""


def test_a_renewal_that_timed_out_leaves_no_unretrieved_failure(etcd_server: EtcdServer
                                                                  ) -> None:
    # Under load (1,000 simulated machines) every timed-out renewal logged "Future exception
    # was never retrieved": its own future, failed by the stream's close. Its own process:
    # pytest keeps the frames of a test's errors alive, and with them such a future.
    r = subprocess.run([sys.executable, "-c", _TIMED_OUT_RENEWAL, etcd_server.endpoint],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


async def test_etcd_client_counts_requests(etcd_server: EtcdServer, prefix: str) -> None:
    c = EtcdClient([etcd_server.endpoint], request_timeout_s=5.0)
    try:
        assert c.requests == 0
        await c.put(prefix + "a", b"1")
        assert c.requests == 1
        assert (await c.get(prefix + "a")) is not None
        _, rev = await c.get_prefix(prefix)
        ok, _ = await c.txn([], [Put(prefix + "b", b"2")])
        assert ok and c.requests == 4
        lease = await c.grant(30)
        await c.keepalive_once(lease)
        await c.revoke(lease)
        assert c.requests == 7
        await c.delete(prefix, prefix=True)
        assert c.requests == 8
        reg = Registry(c, prefix)
        await reg.create_unit(unit("c.service"))  # one txn
        assert c.requests == 9
        await reg.create_unit(unit("c.service"))  # failed txn + get
        assert c.requests == 11
        it = c.watch_prefix(prefix, rev + 1)  # (not from 1: other tests compact this etcd)
        await asyncio.wait_for(anext(it), WATCH_TIMEOUT_S)  # replays the writes since `rev`
        await it.aclose()
        assert c.requests == 12  # a watch stream counts once
    finally:
        await c.close()
