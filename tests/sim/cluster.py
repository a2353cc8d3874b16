"""The simulated cluster: real fleetd code (Registry, MachineSession, Agent, Engine,
PeerDirectory) for N machines on `SimEtcd`, `FakeSystemd` and the `VirtualLoop`, driven by a
random fault schedule per seed, with the safety invariant checked at every systemd state change.

    PYTHONHASHSEED=0 python -m tests.sim --seed 1234 --trace      # replay one schedule
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time as _real_time
import types
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from fleetd import clock
from fleetd.after_exit import hand_over_after_exit
from fleetd.agent.agent import Agent
from fleetd.engine.engine import Engine
from fleetd.fencing import engine_grace_s, fence_point_s, keep_units_on_exit
from fleetd.machine import MachineIdentity, MachineSession
from fleetd.registry import EtcdError, Registry, RegistryError, UnitRecord
from fleetd.unit import UnitFile
from tests.sim.etcd_model import WATCH_DEAD_AFTER_S, Network, SimEtcd, SimEtcdClient
from tests.sim.fake_systemd import RUNNING, FakeSystemd
from tests.sim.loop import VirtualLoop, context_of

PREFIX = "/fleet-sim/"
#: fleetd.service's RestartSec= (packaging): Restart=on-failure brings a failed fleetd back.
RESTART_SEC_S = 2.0
#: fleetd.service's TimeoutStopSec=: SIGKILL after that long.
STOP_TIMEOUT_S = 15.0
REPLAY = "PYTHONHASHSEED=0 .venv/bin/python -m tests.sim --seed {seed}{opts} --trace"


Script = Callable[["Simulation"], Awaitable[None]]


@dataclass
class SimConfig:
    machines: int = 3
    ttl_s: int = 5
    fault_phase_s: float = 40.0
    faults: int = 8
    changes: int = 8
    max_stop_delay_s: float = 12.0
    #: Grace the engine waits after a lease expires before rescheduling (fleetd.fencing).
    engine_grace_s: float = field(default_factory=lambda: engine_grace_s(5))
    reconcile_interval_s: float = 2.0
    #: Not in the default set: "vm_freeze" (the whole machine paused, systemd included), which
    #: no lease-based fence can survive (tests/sim/README.md).
    kinds: tuple[str, ...] = ("partition", "peer_partition", "crash", "freeze", "restart",
                              "stop", "slow_stop", "compact", "leader_change", "power_cut")

    def liveness_bound_s(self) -> float:
        """Time from the last fault healing to every launched unit running exactly once.

        A lease kept alive up to the heal expires within ttl (+1 s promotion extension after a
        leader change); the engine then waits its grace, decides within a reconcile interval,
        the agent's stop of the old copy takes up to max_stop_delay_s; a watch cut by the
        partition is declared dead after WATCH_DEAD_AFTER_S and re-established within the
        2 s backoff cap; a restarted fleetd registers within one backoff. Plus 5 s slack."""
        return (2 * self.ttl_s + 1 + self.engine_grace_s + self.reconcile_interval_s
                + self.max_stop_delay_s + WATCH_DEAD_AFTER_S + 2 + 5)


@dataclass
class Result:
    seed: int
    violation: str = ""
    liveness: str = ""
    faults: int = 0
    changes: int = 0
    trace: list[str] = field(default_factory=list)
    steps: int = 0
    virtual_s: float = 0.0
    #: For each unit moved off a machine whose lease expired: expiry -> replacement activating.
    failovers_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violation and not self.liveness

    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.trace).encode()).hexdigest()[:16]


def unit_pool(rng: random.Random) -> dict[str, str]:
    """The units a schedule may submit: plain ones, a conflicting pair, a sidekick, a global."""
    base = ("[Unit]\nDescription={d}\n\n[Service]\nExecStart=/bin/sleep infinity\n")
    pool = {}
    for i in range(4):
        pool[f"app{i}.service"] = base.format(d=f"app {i}")
    pool["db.service"] = base.format(d="db") + "\n[X-Fleet]\nConflicts=cache.service\n"
    pool["cache.service"] = base.format(d="cache") + "\n[X-Fleet]\nConflicts=db.service\n"
    pool["app0-sidekick.service"] = (base.format(d="sidekick")
                                     + "\n[X-Fleet]\nMachineOf=app0.service\n")
    pool["agent.service"] = base.format(d="global") + "\n[X-Fleet]\nGlobal=true\n"
    return pool


class Fleetd:
    """One incarnation of fleetd on a machine (a simulated process)."""

    def __init__(self, sim: Simulation, machine: str, generation: int) -> None:
        self.sim = sim
        self.machine = machine
        self.process = f"fleetd:{machine}#{generation}"
        self.etcd = SimEtcdClient(sim.etcd, sim.net, machine,
                                  request_timeout_s=3.0)
        self.registry = Registry(self.etcd, PREFIX)  # type: ignore[arg-type]
        self.systemd = sim.systemds[machine].connect(self.process)
        identity = MachineIdentity(machine, "10.0.0." + machine[1:], {}, hostname=machine,
                                   version="sim", api_address=machine)
        self.session = MachineSession(self.registry, identity, sim.cfg.ttl_s)
        self.agent = Agent(self.registry, self.systemd, self.session)  # type: ignore[arg-type]
        self.engine: Engine | None = Engine(self.registry, self.session,
                                            reconcile_interval_s=sim.cfg.reconcile_interval_s)
        self.stopping = asyncio.Event()
        self.task = sim.loop.spawn(self.process, self.main())
        self.exited = False

    async def main(self) -> None:
        """What `fleetd.main.serve` does, without the API servers: run the components; on a
        termination request purge and leave unless systemd is restarting fleetd; exit
        non-zero when a component dies (systemd's Restart=on-failure then restarts it)."""
        jobs = [asyncio.ensure_future(self.session.run()),
                asyncio.ensure_future(self.agent.run())]
        if self.engine is not None:
            jobs.append(asyncio.ensure_future(self.engine.run()))
        waiter = asyncio.ensure_future(self.stopping.wait())
        done, _ = await asyncio.wait([waiter, *jobs], return_when=asyncio.FIRST_COMPLETED)
        failed: BaseException | None = None
        for j in jobs:
            if j in done:
                failed = j.exception() or RuntimeError("component returned")
                self.sim.note(f"{self.process} component failed: {failed!r}")
        for j in jobs:
            j.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        try:
            if failed is None and not keep_units_on_exit(self.systemd.own_job, False):
                await self.agent.purge()
                await self.session.leave()
            elif failed is None:
                await self.agent.hand_over()
        finally:
            await self.systemd.close()
            await self.registry.close()
            self.exited = True
            self.sim.note(f"{self.process} exited" + (" (failure)" if failed else ""))
        if failed is not None:
            self.sim.loop.call_later(RESTART_SEC_S, self.sim.start_fleetd, self.machine,
                                     context=context_of(""))
        # The process is gone: nothing of it runs on (a fence's reconcile retrying after the
        # components were cancelled once reconnected to systemd and removed a unit the next
        # fleetd had just started, seed 1628).
        self.sim.loop.kill(self.process)

    def kill(self) -> None:
        self.sim.loop.kill(self.process)
        self.etcd.crash()
        if self.systemd in self.systemd.systemd.connections:
            self.systemd.systemd.connections.remove(self.systemd)
        self.exited = True


class Simulation:
    def __init__(self, seed: int, cfg: SimConfig | None = None, *, verbose: bool = False,
                 script: Script | None = None) -> None:
        self.seed = seed
        self.script = script
        self.cfg = cfg or SimConfig()
        self.rng = random.Random(seed)
        self.loop = VirtualLoop()
        self.result = Result(seed)
        self.verbose = verbose
        self.net = Network()
        self.etcd = SimEtcd(self.loop, random.Random(seed * 7919 + 1), self.note)
        self.machines = [f"m{i + 1}" for i in range(self.cfg.machines)]
        self.systemds = {m: FakeSystemd(self.loop, m, self._on_unit_change, self.note)
                         for m in self.machines}
        self.fleetds: dict[str, Fleetd] = {}
        self.generation = 0
        self.pool = unit_pool(self.rng)
        self.global_units = {n for n, t in self.pool.items() if "Global=true" in t}
        self.desired: dict[str, str] = {}  # unit -> target state as the user last set it
        self.ctl = Registry(SimEtcdClient(self.etcd, self.net, "ctl"), PREFIX)  # type: ignore
        self.down: set[str] = set()  # machines powered off
        self._last_ran_on: dict[str, str] = {}
        self._started_at: dict[str, float] = {}
        self._expired_at: dict[str, float] = {}
        self.etcd.on_lease_expired = self._lease_expired
        self.finished = False

    # --- tracing and the invariant --------------------------------------------------------
    def note(self, event: str) -> None:
        line = f"{self.loop.time() - 1000:9.3f} {event}"
        self.result.trace.append(line)
        if self.verbose:
            print(line, flush=True)

    def _on_unit_change(self, machine: str, unit: str, old: str, new: str) -> None:
        if new == "activating" and old not in RUNNING and unit in self.pool:
            prev = self._last_ran_on.get(unit)
            expired = self._expired_at.get(prev or "")
            if prev and prev != machine and expired is not None \
                    and expired >= self._started_at.get(unit, 0.0):
                self.result.failovers_s.append(round(self.loop.time() - expired, 3))
            self._last_ran_on[unit] = machine
            self._started_at[unit] = self.loop.time()
        if (new not in RUNNING or unit not in self.pool or unit in self.global_units
                or self.result.violation or self.finished):
            return
        on = [m for m in self.machines if self.systemds[m].active_state(unit) in RUNNING]
        if len(on) > 1:
            states = ", ".join(f"{m}={self.systemds[m].active_state(unit)}" for m in on)
            self.result.violation = (f"t={self.loop.time() - 1000:.3f}s {unit} running on "
                                     f"{len(on)} machines: {states}")
            self.note("VIOLATION " + self.result.violation)

    def _lease_expired(self, keys: list[str]) -> None:
        prefix = PREFIX + "machines/"
        for k in keys:
            if k.startswith(prefix):
                self._expired_at[k[len(prefix):]] = self.loop.time()

    # --- machines -------------------------------------------------------------------------
    def start_fleetd(self, m: str) -> None:
        if m in self.down:
            return
        old = self.fleetds.get(m)
        if old is not None and not old.exited:
            return
        self.generation += 1
        self.fleetds[m] = Fleetd(self, m, self.generation)
        self.note(f"{m} fleetd started ({self.fleetds[m].process})")

    async def stop_fleetd(self, m: str, job: str = "stop") -> None:
        """`systemctl stop fleetd` (or `restart`: job "restart"): SIGTERM with that job
        pending for fleetd's unit, SIGKILL after fleetd.service's TimeoutStopSec=."""
        f = self.fleetds.get(m)
        if f is None or f.exited:
            return
        self.loop.thaw(f.process)
        f.systemd.own_job = job
        f.stopping.set()
        deadline = self.loop.time() + STOP_TIMEOUT_S
        while not f.exited and self.loop.time() < deadline:
            await asyncio.sleep(0.1)
        if not f.exited:
            f.kill()

    async def crash_fleetd(self, m: str) -> str:
        """kill -9 of fleetd under fleetd.service: the process dies, then systemd runs its
        ExecStopPost= (`fleetd --after-exit`, the real `hand_over_after_exit`) as a process of
        its own. Returns what that said."""
        f = self.fleetds[m]
        f.kill()
        self.generation += 1
        proc = f"after-exit:{m}#{self.generation}"
        etcd = SimEtcdClient(self.etcd, self.net, m, request_timeout_s=1.0)
        registry = Registry(etcd, PREFIX)  # type: ignore[arg-type]
        systemd = self.systemds[m].connect(proc)
        host = (f.session.identity.ip, f.session.identity.hostname)

        async def run() -> str:
            try:
                return await asyncio.wait_for(hand_over_after_exit(
                    registry, systemd, m, host, self.cfg.ttl_s,  # type: ignore[arg-type]
                    "signal", None), fence_point_s(self.cfg.ttl_s))
            except (EtcdError, RegistryError, TimeoutError) as e:
                return f"hand-over failed: {e!r}"
            finally:
                await systemd.close()
                await registry.close()

        said = await self.loop.spawn(proc, run())
        self.note(f"{proc}: {said}")
        return said

    # --- faults ---------------------------------------------------------------------------
    async def fault(self, kind: str) -> None:
        rng, cfg = self.rng, self.cfg
        m = rng.choice(self.machines)
        dur = rng.uniform(0.2, 3.0 * cfg.ttl_s)
        self.result.faults += 1
        if kind == "partition":
            self.note(f"FAULT partition {m} | etcd for {dur:.2f}s")
            self.net.partition(m, "etcd")
            await asyncio.sleep(dur)
            self.net.heal(m, "etcd")
            self.note(f"heal {m} | etcd")
        elif kind == "peer_partition":
            other = rng.choice([x for x in self.machines if x != m])
            self.note(f"FAULT partition {m} | {other} for {dur:.2f}s")
            self.net.partition(m, other)
            await asyncio.sleep(dur)
            self.net.heal(m, other)
        elif kind == "crash":
            f = self.fleetds.get(m)
            if f is None or f.exited:
                return
            self.note(f"FAULT kill -9 {f.process}, restart in {dur:.2f}s")
            await self.crash_fleetd(m)
            await asyncio.sleep(dur)
            self.start_fleetd(m)
        elif kind == "freeze":
            f = self.fleetds.get(m)
            if f is None or f.exited:
                return
            self.note(f"FAULT freeze {f.process} for {dur:.2f}s")
            self.loop.freeze(f.process)
            await asyncio.sleep(dur)
            self.loop.thaw(f.process)
            self.note(f"thaw {f.process}")
        elif kind == "vm_freeze":
            # The whole machine stops (VM paused, suspend): systemd's timers too; on resume the
            # realtime deadline of the dead-man timer is already past, so it fires at once.
            f = self.fleetds.get(m)
            procs = [self.systemds[m].process] + ([f.process] if f and not f.exited else [])
            self.note(f"FAULT vm freeze {m} for {dur:.2f}s")
            for p in procs:
                self.loop.freeze(p)
            await asyncio.sleep(dur)
            for p in procs:
                self.loop.thaw(p)
            self.note(f"resume {m}")
        elif kind in ("restart", "stop"):
            self.note(f"FAULT systemctl {kind} fleetd on {m}"
                      + (f", start in {dur:.2f}s" if kind == "stop" else ""))
            await self.stop_fleetd(m, kind)
            if kind == "stop":
                await asyncio.sleep(dur)
            self.start_fleetd(m)
        elif kind == "slow_stop":
            unit = rng.choice(sorted(self.pool))
            delay = rng.uniform(1.0, cfg.max_stop_delay_s)
            self.note(f"FAULT {unit} on {m} takes {delay:.2f}s to stop")
            self.systemds[m].stop_delay_s[unit] = delay
        elif kind == "compact":
            self.etcd.compact()
        elif kind == "leader_change":
            self.etcd.leader_change(rng.uniform(0.2, 2.0))
        elif kind == "power_cut":
            f = self.fleetds.get(m)
            self.note(f"FAULT power cut {m}, back in {dur:.2f}s")
            if f is not None and not f.exited:
                f.kill()
            self.down.add(m)
            self.systemds[m].power_cut()
            await asyncio.sleep(dur)
            self.down.discard(m)
            self.start_fleetd(m)

    # --- building blocks for hand-written scripts --------------------------------------
    async def launch(self, name: str) -> str:
        """Submit and start `name` (fleetctl start); returns the machine it came up on."""
        text = self.pool[name]
        await self.ctl.create_unit(UnitRecord(name, text, UnitFile.parse(text, name=name).hash()),
                                   "launched")
        self.desired[name] = "launched"
        self.note(f"CHANGE start {name}")
        while True:
            on = [m for m in self.machines if self.systemds[m].active_state(name) == "active"]
            if on:
                return on[0]
            await asyncio.sleep(0.05)

    def fleetd(self, machine: str) -> Fleetd:
        return self.fleetds[machine]

    async def change(self) -> None:
        """One desired-state change, as fleetctl start/stop/destroy would make it."""
        rng = self.rng
        name = rng.choice(sorted(self.pool))
        cur = self.desired.get(name)
        if cur is None:
            action = "start"
        else:
            action = rng.choice(["start", "stop", "destroy"] if cur != "launched"
                                else ["stop", "destroy", "stop"])
        self.result.changes += 1
        self.note(f"CHANGE {action} {name}")
        text = self.pool[name]
        for attempt in range(20):
            try:
                if action == "destroy":
                    await self.ctl.destroy_unit(name)
                    del self.desired[name]
                elif cur is None:
                    rec = UnitRecord(name, text, UnitFile.parse(text, name=name).hash())
                    await self.ctl.create_unit(rec, "launched")
                    self.desired[name] = "launched"
                else:
                    state = "launched" if action == "start" else "loaded"
                    await self.ctl.set_target_state(name, state)
                    self.desired[name] = state
                return
            except (EtcdError, RegistryError) as e:
                self.note(f"change failed ({e}), retrying")
                await asyncio.sleep(0.5 * (attempt + 1))

    async def schedule(self) -> None:
        cfg, rng = self.cfg, self.rng
        events: list[tuple[float, str, str]] = []
        for _ in range(cfg.faults):
            events.append((rng.uniform(0, cfg.fault_phase_s), "fault", rng.choice(cfg.kinds)))
        for _ in range(cfg.changes):
            events.append((rng.uniform(0, cfg.fault_phase_s), "change", ""))
        events.sort()
        t0 = self.loop.time()
        tasks = []
        for at, what, kind in events:
            await asyncio.sleep(max(0.0, t0 + at - self.loop.time()))
            tasks.append(asyncio.ensure_future(self.fault(kind) if what == "fault"
                                               else self.change()))
        await asyncio.gather(*tasks)

    def heal_all(self) -> None:
        self.net.heal()
        for m in self.machines:
            f = self.fleetds.get(m)
            if f is not None:
                self.loop.thaw(f.process)
            self.loop.thaw(self.systemds[m].process)
            self.down.discard(m)
            if f is None or f.exited:
                self.start_fleetd(m)
        self.note("HEAL all faults")

    def liveness_problems(self) -> list[str]:
        problems = []
        live = [m for m in self.machines if m not in self.down]
        for name in sorted(self.pool):
            on = [m for m in live if self.systemds[m].active_state(name) == "active"]
            running = [m for m in live if self.systemds[m].active_state(name) in RUNNING]
            want = self.desired.get(name)
            target_ok = (name != "app0-sidekick.service"
                         or self.desired.get("app0.service") == "launched")
            if want == "launched" and target_ok:
                expect = len(live) if name in self.global_units else 1
                if len(on) != expect or len(running) != expect:
                    problems.append(f"{name} launched: active on {on or 'no machine'}")
            elif want != "launched" and running:
                problems.append(f"{name} {want or 'destroyed'}: still running on {running}")
        return problems

    async def run(self) -> Result:
        cfg = self.cfg
        for m in self.machines:
            self.start_fleetd(m)
        await asyncio.sleep(1.0)
        await (self.script(self) if self.script else self.schedule())
        if self.result.violation:
            return self.result
        self.heal_all()
        bound = cfg.liveness_bound_s()
        deadline = self.loop.time() + bound
        hold_s = 2 * cfg.ttl_s  # the good state must last, not merely be passed through
        good_since: float | None = None
        problems = self.liveness_problems()
        while self.loop.time() < deadline + hold_s and not self.result.violation:
            problems = self.liveness_problems()
            if problems:
                good_since = None
                if self.loop.time() >= deadline:
                    break
            else:
                good_since = self.loop.time() if good_since is None else good_since
                if self.loop.time() - good_since >= hold_s:
                    break
            await asyncio.sleep(0.25)
        if problems and not self.result.violation:
            self.result.liveness = (f"{bound:.0f}s after healing: " + "; ".join(problems))
            self.note("LIVENESS " + self.result.liveness)
        return self.result


@contextlib.contextmanager
def virtual_time(loop: VirtualLoop) -> Iterator[None]:
    """Point fleetd's clock, and the wall/perf clocks its modules read, at the loop's time."""
    import fleetd.agent.agent as agent_mod
    import fleetd.engine.engine as engine_mod

    shim = types.SimpleNamespace(**{k: getattr(_real_time, k) for k in dir(_real_time)
                                    if not k.startswith("__")})
    shim.perf_counter = loop.time
    shim.monotonic = loop.time
    shim.time = loop.time
    shim.time_ns = lambda: int(loop.time() * 1e9)
    saved = (agent_mod.time, engine_mod.time)
    agent_mod.time = shim  # type: ignore[assignment]
    engine_mod.time = shim  # type: ignore[assignment]
    clock.use(loop.time)
    try:
        yield
    finally:
        agent_mod.time, engine_mod.time = saved  # type: ignore[assignment]
        clock.use(None)


def run_schedule(seed: int, cfg: SimConfig | None = None, *, verbose: bool = False,
                 script: Script | None = None) -> Result:
    """Simulate one seeded schedule (or the hand-written `script`, a coroutine function
    that drives the Simulation's faults and changes) to its end or its first violation."""
    random.seed(seed)  # fleetd's own jitter (backoff_sleep) draws from the global source
    sim = Simulation(seed, cfg, verbose=verbose, script=script)
    loop = sim.loop
    if not verbose:
        logging.disable(logging.CRITICAL)
    try:
        with virtual_time(loop):
            main = loop.create_task(sim.run())

            def stop_on_violation() -> None:
                if sim.result.violation and not main.done():
                    main.cancel()
            loop.after_step = stop_on_violation
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main)
    finally:
        logging.disable(logging.NOTSET)
        sim.result.steps = loop.steps
        sim.result.virtual_s = loop.time() - 1000
        sim.result.errors = [str(c.get("message", "")) + " " + repr(c.get("exception", ""))
                             for c in loop.errors]
        sim.finished = True
        # Unwind every coroutine still suspended while the loop is open (their finally
        # blocks may schedule callbacks), instead of letting garbage collection do it later.
        for task in asyncio.all_tasks(loop):
            with contextlib.suppress(BaseException):
                task.get_coro().close()
        loop.close()
    return sim.result


def describe(result: Result, opts: str = "") -> str:
    what = result.violation or result.liveness or "ok"
    return (f"seed {result.seed}: {what}\n  replay: "
            + REPLAY.format(seed=result.seed, opts=opts))

