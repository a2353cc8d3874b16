"""Real fleetd parts (Registry, MachineSession, Agent, Engine) on the simulation's doubles
(tests/sim: in-memory etcd model, fake systemd, virtual clock), for unit tests that run in
milliseconds: no sockets, no processes, time jumps to the next timer."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from fleetd import clock
from fleetd.agent.agent import Agent
from fleetd.engine.engine import Engine
from fleetd.machine import MachineIdentity, MachineSession
from fleetd.registry import ClusterState, Registry, ScheduleEntry, UnitRecord
from fleetd.unit import UnitFile
from tests.sim.etcd_model import Network, SimEtcd, SimEtcdClient
from tests.sim.fake_systemd import FakeSystemd
from tests.sim.loop import VirtualLoop

T = TypeVar("T")
PREFIX = "/fleet-test/"
TTL_S = 10


def unit_text(description: str, xfleet: str = "") -> str:
    text = f"[Unit]\nDescription={description}\n\n[Service]\nExecStart=/bin/sleep infinity\n"
    return text + (f"\n[X-Fleet]\n{xfleet}\n" if xfleet else "")


def record(name: str, text: str) -> UnitRecord:
    """The unit as the API stores it (fleet's hash of the parsed file)."""
    return UnitRecord(name, text, UnitFile.parse(text, name=name).hash())


class SimRig:
    """One virtual-time loop and one in-memory etcd; machines are added with `machine`."""

    def __init__(self, loop: VirtualLoop) -> None:
        self.loop = loop
        self.etcd = SimEtcd(loop, random.Random(0))
        self.net = Network()
        self.systemds: dict[str, FakeSystemd] = {}
        self.registry = self.registry_for("client")
        self.leader: MachineSession | None = None
        self.sessions: dict[str, MachineSession] = {}

    def registry_for(self, name: str) -> Registry:
        return Registry(SimEtcdClient(self.etcd, self.net, name), PREFIX)  # type: ignore[arg-type]

    def run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coro)

    async def until(self, pred: Callable[[], object], timeout_s: float = 30,
                    what: str = "condition") -> None:
        """Let virtual time pass until pred() (or the awaitable it returns) is truthy; fail
        after timeout_s virtual seconds."""
        deadline = clock.now() + timeout_s
        while True:
            v = pred()
            if inspect.isawaitable(v):
                v = await v
            if v:
                return
            if clock.now() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s (virtual) waiting for {what}")
            await asyncio.sleep(0.01)

    async def session(self, machine_id: str, metadata: dict[str, str] | None = None
                      ) -> MachineSession:
        """A machine's session, registered with a fresh lease and kept alive by its own
        `run()` in process "session:<id>" (`loop.kill` it for a power cut)."""
        identity = MachineIdentity(machine_id, "10.0.0.1", dict(metadata or {}),
                                   hostname=machine_id, version="test")
        s = MachineSession(self.registry_for(machine_id), identity, TTL_S)
        await self.start_session(s)
        self.sessions[machine_id] = s
        return s

    async def start_session(self, s: MachineSession) -> None:
        self.loop.spawn(f"session:{s.identity.id}", s.run())
        await self.until(lambda: s.lease, what=f"{s.identity.id} registered")

    async def agent(self, machine_id: str) -> tuple[Agent, FakeSystemd]:
        """The real Agent of `machine_id` on its own fake systemd, leased (it read its
        schedule and armed its dead-man switch, as on fleetd's start), not running its loops:
        the test calls Agent.apply itself."""
        sd = self.systemds.setdefault(machine_id, FakeSystemd(self.loop, machine_id))
        identity = MachineIdentity(machine_id, "10.0.0.1", hostname=machine_id, version="test")
        session = MachineSession(self.registry_for(machine_id), identity, TTL_S)
        agent = Agent(session.registry, sd.connect(f"fleetd:{machine_id}"),  # type: ignore
                      session)
        await self.start_session(session)
        await self.until(lambda: not agent.fenced, what="the agent's first lease")
        return agent, sd

    async def schedule(self, machine_id: str, rec: UnitRecord, target_state: str,
                       is_global: bool = False) -> None:
        """Submit `rec` and assign it to `machine_id`, written as the engine writes it (a
        leader-guarded transaction, here by a leader of the test's own)."""
        await self.registry.create_unit(rec, target_state)
        leader = self.leader or await self.session("test-leader")
        self.leader = leader
        assert await self.registry.try_acquire_leadership("test-leader", leader.lease)
        await self.registry.write_decisions("test-leader", leader.lease, [
            self.registry.assign_op(ScheduleEntry(rec.name, machine_id, target_state,
                                                  rec.hash, is_global))])

    def engine(self, session: MachineSession) -> Engine:
        return Engine(session.registry, session, reconcile_interval_s=3600, debounce_ms=0)

    async def state(self) -> ClusterState:
        return await self.registry.cluster_state()

    async def machine_ids(self) -> set[str]:
        """Machines registered now (their keys live on their leases)."""
        return set(await self.registry.list_machines())

    async def placed(self, unit: str) -> set[str]:
        """Machines `unit` is scheduled on now."""
        return set((await self.state()).schedule.get(unit, {}))


@contextmanager
def sim_rig() -> Iterator[SimRig]:
    loop = VirtualLoop()
    clock.use(loop.time)
    try:
        yield SimRig(loop)
    finally:
        # Unwind the coroutines still suspended (sessions, engines) while the loop is open,
        # as the simulation does, rather than leaving them to garbage collection.
        for task in asyncio.all_tasks(loop):
            with contextlib.suppress(BaseException):
                task.get_coro().close()
        clock.use(None)
        loop.close()
