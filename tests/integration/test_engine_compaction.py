"""The engine across a compacted watch, on a real etcd: changes in the gap are not lost.

The engine's watch falls behind (its stream ends, a connection fault) while the machine
running a unit dies and etcd compacts its history; the engine's resumed watch then meets a
real compaction error, and after reloading it must reconcile everything at once: it sees the
machine gone and moves the unit to the surviving machine after its grace (fleetd.fencing),
without waiting for any safety-net pass (set to a minute here)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import uuid
from collections.abc import AsyncIterator

import pytest

from fleetd.engine.engine import Engine
from fleetd.localcluster import EtcdServer
from fleetd.machine import MachineIdentity, MachineSession
from fleetd.registry import EtcdClient, MachineRecord, Registry, UnitRecord, WatchEvent

pytestmark = pytest.mark.integration

TEXT = ("[Service]\nExecStart=/bin/sleep 1000\n\n[X-Fleet]\nMachineMetadata=role=worker\n")




async def wait_for(pred, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_engine_reconciles_everything_after_its_watch_was_compacted(
        etcd_server: EtcdServer) -> None:
    client = EtcdClient([etcd_server.endpoint], request_timeout_s=5.0)
    reg = Registry(client, f"/t-{uuid.uuid4().hex[:8]}/")
    leases = {}
    for mid in ("b" * 32, "c" * 32):
        leases[mid] = await reg.grant_lease(60)
        await reg.register_machine(MachineRecord(mid, "10.0.0." + mid[0],
                                                 {"role": "worker"}), leases[mid])
    session = MachineSession(reg, MachineIdentity("a" * 32, "10.0.0.1"), 60)
    await session.establish()

    real_open = client.open_watch
    fall_behind = asyncio.Event()
    compacted: list[int] = []
    holder: list[str] = []

    class FallingBehind:
        """The engine's watch stream, which ends (a fault) once `fall_behind` is set."""

        def __init__(self, prefix: str, start: int) -> None:
            self.real = real_open(prefix, start)

        async def responses(self) -> AsyncIterator[tuple[list[WatchEvent], int]]:
            it = self.real.responses().__aiter__()
            behind = asyncio.ensure_future(fall_behind.wait())
            while True:
                nxt = asyncio.ensure_future(it.__anext__())
                await asyncio.wait({nxt, behind}, return_when=asyncio.FIRST_COMPLETED)
                if not nxt.done():
                    nxt.cancel()
                    break
                yield nxt.result()
            # While the engine's watch is away: the machine running the unit dies, and etcd
            # compacts its history past the revision the engine will resume from.
            # (One more write after the death: etcd drops a tombstone at the compaction
            # revision itself without reporting the watch compacted.)
            await reg.revoke_lease(leases[holder[0]])
            rev = await client.put("/elsewhere/" + uuid.uuid4().hex, b"x")
            subprocess.run(["etcdctl", "--endpoints", etcd_server.endpoint, "compact", str(rev)],
                           check=True, capture_output=True,
                           env={**os.environ, "ETCDCTL_API": "3"})
            compacted.append(rev)

    def open_watch(prefix: str, start: int) -> object:
        if prefix == reg.keys.root and not compacted:
            return FallingBehind(prefix, start)
        return real_open(prefix, start)

    client.open_watch = open_watch  # type: ignore[method-assign,assignment]
    engine = Engine(reg, session, reconcile_interval_s=60)
    task = asyncio.ensure_future(engine.run())
    try:
        await reg.create_unit(UnitRecord("u.service", TEXT, hashlib.sha1(TEXT.encode())
                                         .hexdigest()), "launched")

        async def placed() -> bool:
            for mid in leases:
                if "u.service" in (await reg.machine_schedule(mid))[0]:
                    holder[:] = [mid]
                    return True
            return False

        await wait_for(placed, 10, "u.service scheduled to a worker")
        survivor = next(m for m in leases if m != holder[0])
        passes = engine.reconciles
        fall_behind.set()

        async def moved() -> bool:
            return ("u.service" in (await reg.machine_schedule(survivor))[0]
                    and not (await reg.machine_schedule(holder[0]))[0])

        async def departure_seen() -> bool:
            return holder[0] in engine.departed

        # The death in the gap is noticed on the reload, not at the next safety-net pass...
        await wait_for(departure_seen, 5, "the engine to see the dead machine leave")
        # ...and the unit moves once the engine's grace for that machine is over.
        await wait_for(moved, engine.grace_s + 5, "u.service rescheduled from the dead machine")
        assert compacted, "the engine's watch never met the compaction"
        assert engine.reconciles > passes
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
