"""Large-scale simulation: many real fleetd agents in one process with simulated systemd.

`SimulatedSystemd` is a TEST DOUBLE standing in for a systemd manager, used only to simulate
hundreds of machines in one process. Everything else is real: each simulated machine runs the
real `MachineSession` (lease, registration) and the real `Agent` (schedule watch, task
planning, state publication) against a real etcd through the real registry code.
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet

from fleetd.agent.agent import Agent
from fleetd.machine import MachineIdentity, MachineSession
from fleetd.registry import EtcdClient, Registry
from fleetd.systemd import UnitStatus


class SimulatedSystemd:
    """TEST DOUBLE (simulation only): an in-memory systemd manager with instant jobs."""

    def __init__(self, name: str) -> None:
        self.unit_dir = pathlib.Path(f"/nonexistent/simulated/{name}")
        self.files: dict[str, str] = {}
        self.status: dict[str, UnitStatus] = {}
        self._watchers: list[tuple[Callable[[], AbstractSet[str]],
                                   Callable[[UnitStatus], None]]] = []
        self.reloads = 0

    def read_unit_files(self) -> dict[str, str]:
        return dict(self.files)

    def write_unit_file(self, name: str, text: str) -> None:
        self.files[name] = text

    def remove_unit_file(self, name: str) -> None:
        self.files.pop(name, None)

    async def daemon_reload(self) -> None:
        self.reloads += 1
        for name in list(self.status):
            if name not in self.files:
                self.status.pop(name)

    def _set(self, name: str, active: str, sub: str, pid: int) -> None:
        st = UnitStatus(name, "loaded" if name in self.files else "not-found", active, sub, pid)
        self.status[name] = st
        loop = asyncio.get_running_loop()
        for names, cb in self._watchers:
            if name in names():
                loop.call_soon(cb, st)

    async def start_unit(self, name: str) -> None:
        self._set(name, "active", "running", 1000 + len(self.status))

    async def stop_unit(self, name: str) -> None:
        if name in self.status:
            self._set(name, "inactive", "dead", 0)

    async def reset_failed_unit(self, name: str) -> None:
        return None

    async def unit_status(self, name: str) -> UnitStatus:
        return self.status.get(name) or UnitStatus(
            name, "loaded" if name in self.files else "not-found", "inactive", "dead", 0)

    async def list_units(self, names: Iterable[str]) -> dict[str, UnitStatus]:
        return {n: await self.unit_status(n) for n in names}

    def watch(self, names_callback: Callable[[], AbstractSet[str]],
              on_change: Callable[[UnitStatus], None]) -> None:
        self._watchers.append((names_callback, on_change))

    async def close(self) -> None:
        return None


class SimulatedMachine:
    """A real agent + machine session whose systemd is simulated."""

    def __init__(self, registry: Registry, machine_id: str, ttl_s: int,
                 metadata: dict[str, str] | None = None) -> None:
        self.identity = MachineIdentity(machine_id, f"10.{machine_id[:2]}.sim",
                                        metadata or {}, hostname=f"sim-{machine_id[:8]}")
        self.session = MachineSession(registry, self.identity, ttl_s)
        self.systemd = SimulatedSystemd(machine_id)
        self.agent = Agent(registry, self.systemd, self.session)  # type: ignore[arg-type]
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.session.establish()
        self.tasks = [asyncio.ensure_future(self.session.run()),
                      asyncio.ensure_future(self.agent.run())]

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class SimulatedFleet:
    """`count` simulated machines sharing one etcd connection (as one multiplexed client)."""

    def __init__(self, etcd_endpoint: str, prefix: str, count: int, ttl_s: int = 10) -> None:
        self.client = EtcdClient([etcd_endpoint], request_timeout_s=30)
        self.registry = Registry(self.client, prefix)
        self.machines = [SimulatedMachine(self.registry, f"{i:04x}" + "5" * 28, ttl_s)
                         for i in range(count)]

    async def start(self, concurrency: int = 50) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(m: SimulatedMachine) -> None:
            async with sem:
                await m.start()

        await asyncio.gather(*(one(m) for m in self.machines))

    def running_units(self) -> int:
        return sum(1 for m in self.machines for st in m.systemd.status.values()
                   if st.active_state == "active")

    async def stop(self) -> None:
        await asyncio.gather(*(m.stop() for m in self.machines))
        await self.client.close()
