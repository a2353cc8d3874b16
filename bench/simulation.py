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
from typing import TYPE_CHECKING

from fleetd.agent.agent import Agent
from fleetd.fencing import FENCE_SERVICE_TEMPLATE, FENCE_TARGET, FENCE_TIMER_PREFIX
from fleetd.machine import MachineIdentity, MachineSession
from fleetd.registry import EtcdClient, Registry
from fleetd.systemd import SystemdError, UnitManager, UnitStatus, is_unit_name


class SimulatedSystemd:
    """TEST DOUBLE (simulation only): an in-memory systemd manager with instant jobs, on the
    real clock. It implements the whole `fleetd.systemd.UnitManager` protocol (checked by
    tests/unit/test_bench_simulation.py): unit files and fleet's fence drop-in, the fence
    target and the dead-man timers (transient timers firing on the event loop's clock; a fired
    timer stops every unit carrying the fence drop-in and activates the target)."""

    def __init__(self, name: str) -> None:
        self.unit_dir = pathlib.Path(f"/nonexistent/simulated/{name}")
        self.files: dict[str, str] = {}
        self.drop_ins: dict[str, str] = {}
        self.status: dict[str, UnitStatus] = {}
        self.fence_units: dict[str, str] = {}
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.fired_timers: set[str] = set()
        self._watchers: list[tuple[Callable[[], AbstractSet[str]],
                                   Callable[[UnitStatus], None]]] = []
        self.reloads = 0
        self._closed = False

    # --- connection -----------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return not self._closed

    async def reconnect(self) -> None:
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        for h in self.timers.values():
            h.cancel()
        self.timers.clear()

    # --- files ----------------------------------------------------------------------------
    def read_unit_files(self) -> dict[str, str]:
        return dict(self.files)

    async def host_unit_file(self, name: str) -> str | None:
        return None  # a simulated host has no units of its own

    def write_unit_file(self, name: str, text: str, drop_in: str | None = None) -> None:
        if not is_unit_name(name):
            raise SystemdError(f"unit file {name!r}: not a valid unit name")
        if drop_in is None:
            self.drop_ins.pop(name, None)
        else:
            self.drop_ins[name] = drop_in
        self.files[name] = text

    def has_drop_in(self, name: str) -> bool:
        return name in self.drop_ins

    def remove_unit_file(self, name: str) -> None:
        self.drop_ins.pop(name, None)
        self.files.pop(name, None)

    async def not_loaded_as_written(self, names: Iterable[str]) -> list[str]:
        return [n for n in names if n not in self.files]  # loads on demand, like systemd

    async def daemon_reload(self) -> None:
        self.reloads += 1
        for name in list(self.status):
            if name not in self.files and name != FENCE_TARGET:
                self.status.pop(name)

    # --- manager calls --------------------------------------------------------------------
    def _set(self, name: str, active: str, sub: str, pid: int) -> None:
        loaded = name in self.files or name == FENCE_TARGET
        st = UnitStatus(name, "loaded" if loaded else "not-found", active, sub, pid)
        self.status[name] = st
        loop = asyncio.get_running_loop()
        for names, cb in self._watchers:
            if name in names():
                loop.call_soon(cb, st)

    async def start_unit(self, name: str) -> None:
        if name == FENCE_TARGET:
            self._fence_now()
            return
        self._set(name, "active", "running", 1000 + len(self.status))

    async def restart_unit(self, name: str) -> None:
        await self.start_unit(name)  # a new main PID, active at once, as start_unit

    async def stop_unit(self, name: str) -> None:
        if name.startswith(FENCE_TIMER_PREFIX) and name.endswith(".timer"):
            h = self.timers.pop(name, None)
            if h is not None:
                h.cancel()
            self.fired_timers.discard(name)
            return
        if name in self.status:
            self._set(name, "inactive", "dead", 0)

    async def reset_failed_unit(self, name: str) -> None:
        return None

    async def unit_status(self, name: str) -> UnitStatus:
        return self.status.get(name) or UnitStatus(
            name, "loaded" if name in self.files else "not-found", "inactive", "dead", 0)

    async def list_units(self, names: Iterable[str]) -> dict[str, UnitStatus]:
        return {n: await self.unit_status(n) for n in names}

    # --- the dead-man switch --------------------------------------------------------------
    def install_fence(self) -> bool:
        want = {FENCE_TARGET: "[Unit]\nDescription=fleet fence (simulated)\n",
                FENCE_SERVICE_TEMPLATE: "[Service]\nType=oneshot\nExecStart=/bin/true\n"}
        changed = self.fence_units != want
        self.fence_units = want
        return changed

    def _fence_now(self) -> None:
        """The target's transaction: every unit with the fence drop-in stops (instantly)."""
        for name in list(self.drop_ins):
            st = self.status.get(name)
            if st is not None and st.active_state != "inactive":
                self._set(name, "inactive", "dead", 0)
        self._set(FENCE_TARGET, "active", "active", 0)

    def _fire(self, name: str) -> None:
        if self.timers.pop(name, None) is not None:
            self.fired_timers.add(name)
            self._fence_now()

    async def arm_fence_timer(self, name: str, delay_s: float) -> None:
        if name in self.timers or name in self.fired_timers:
            raise SystemdError(f"arm {name}: Unit {name} already exists.",
                               dbus_error="org.freedesktop.systemd1.UnitExists")
        loop = asyncio.get_running_loop()
        self.timers[name] = loop.call_later(max(0.0, delay_s), self._fire, name)

    async def list_fence_timers(self) -> list[str]:
        return sorted(set(self.timers) | self.fired_timers)

    async def timer_fired(self, name: str) -> bool:
        return name in self.fired_timers or name not in self.timers

    async def fence(self, timeout_s: float) -> bool:
        self._fence_now()
        return True

    async def job_type_of_pid(self, pid: int) -> str | None:
        return None

    # --- signals --------------------------------------------------------------------------
    def watch(self, names_callback: Callable[[], AbstractSet[str]],
              on_change: Callable[[UnitStatus], None]) -> None:
        self._watchers.append((names_callback, on_change))


if TYPE_CHECKING:
    _satisfies: type[UnitManager] = SimulatedSystemd  # mypy checks the double against it


class SimulatedMachine:
    """A real agent + machine session whose systemd is simulated."""

    def __init__(self, registry: Registry, machine_id: str, ttl_s: int,
                 metadata: dict[str, str] | None = None) -> None:
        self.identity = MachineIdentity(machine_id, f"10.{machine_id[:2]}.sim",
                                        metadata or {}, hostname=f"sim-{machine_id[:8]}")
        self.session = MachineSession(registry, self.identity, ttl_s)
        self.systemd = SimulatedSystemd(machine_id)
        # Agent is annotated with the D-Bus adapter; the double satisfies its protocol (below).
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
