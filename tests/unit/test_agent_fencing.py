"""Agent.apply and the fence against a fake systemd: the fence is serialised with reconcile and
a start planned before it never runs after it; one failing unit does not stop the others."""

from __future__ import annotations

import asyncio
from typing import Any

from fleetd import clock, fencing
from fleetd.agent.agent import Agent
from fleetd.agent.tasks import DaemonReload, StartUnit, WriteUnitFile
from fleetd.fencing import FENCE_TARGET
from fleetd.machine import MachineIdentity, MachineSession
from fleetd.registry import ScheduleEntry
from fleetd.systemd import SystemdError, UnitStatus

TEXT = "[Service]\nExecStart=/bin/sleep 1000\n"
GLOBAL_TEXT = TEXT + "\n[X-Fleet]\nGlobal=true\n"


class FakeSystemd:
    """The calls Agent.apply and the fence make, recorded; `reload_gate` can hold a reload."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.active: set[str] = set()
        self.refuse_write: set[str] = set()
        self.reload_gate: asyncio.Event | None = None
        self.reloading = asyncio.Event()

    def write_unit_file(self, name: str, text: str, drop_in: str | None = None) -> None:
        if name in self.refuse_write:
            raise SystemdError(f"write unit file {name}: exists and was not written by fleet")
        self.calls.append(("write", name))

    def remove_unit_file(self, name: str) -> None:
        self.calls.append(("remove", name))

    def has_drop_in(self, name: str) -> bool:
        return True

    async def daemon_reload(self) -> None:
        self.reloading.set()
        if self.reload_gate is not None:
            await self.reload_gate.wait()
        self.calls.append(("reload", ""))

    async def stop_unit(self, name: str) -> None:
        self.calls.append(("stop", name))
        self.active.discard(name)

    async def reset_failed_unit(self, name: str) -> None:
        pass

    async def start_unit(self, name: str) -> None:
        self.calls.append(("start", name))
        self.active.add(name)

    async def unit_status(self, name: str) -> UnitStatus:
        on = name in self.active
        return UnitStatus(name, "loaded", "active" if on else "inactive",
                          "running" if on else "dead")

    async def fence(self, timeout_s: float) -> bool:
        self.calls.append(("fence", FENCE_TARGET))
        self.active = {n for n in self.active if n.startswith("global")}
        return True


def agent_with(units: dict[str, str]) -> tuple[Agent, FakeSystemd]:
    sd = FakeSystemd()
    session = MachineSession(object(), MachineIdentity("m1", "10.0.0.1"), 10)  # type: ignore
    session.lease = 7
    session._last_renewed = clock.now()  # a lease renewed just now: starts are allowed
    agent = Agent(object(), sd, session)  # type: ignore[arg-type]
    agent.fenced = False
    for name, text in units.items():
        h = f"h-{name}"
        agent.schedule[name] = ScheduleEntry(name, "m1", "launched", h,
                                             name.startswith("global"))
        agent.texts[name] = (h, text)
    return agent, sd


def test_a_start_planned_before_the_fence_never_runs_after_it() -> None:
    async def go() -> list[tuple[str, str]]:
        agent, sd = agent_with({"web.service": TEXT, "global-mon.service": GLOBAL_TEXT})
        sd.reload_gate = asyncio.Event()
        reconcile = asyncio.ensure_future(agent.reconcile())  # plans writes, reload, starts
        await sd.reloading.wait()  # the plan is half applied: files written, reload pending
        lost = asyncio.ensure_future(agent._on_lease_lost())
        await asyncio.sleep(0.01)
        assert not lost.done()  # the fence waits for the apply in progress (one lock)
        assert agent.session.lease  # still leased: only the fenced flag can stop the start
        sd.reload_gate.set()
        await asyncio.gather(reconcile, lost)
        return sd.calls

    calls = asyncio.run(go())
    assert ("start", "web.service") not in calls, calls
    assert ("start", "global-mon.service") in calls  # global units run on when fenced
    assert calls.index(("fence", FENCE_TARGET)) > calls.index(("reload", ""))


def test_one_unit_that_cannot_be_written_does_not_stop_the_others() -> None:
    async def go() -> tuple[Agent, FakeSystemd]:
        agent, sd = agent_with({"a.service": TEXT, "bad.service": TEXT, "c.service": TEXT})
        sd.refuse_write.add("bad.service")
        await agent.reconcile()
        return agent, sd

    agent, sd = asyncio.run(go())
    assert ("start", "a.service") in sd.calls and ("start", "c.service") in sd.calls
    assert ("start", "bad.service") not in sd.calls
    assert "not written by fleet" in agent.errors["bad.service"]
    rec = agent.state_record("bad.service")
    assert rec is not None and rec.load_state == "error"
    assert agent.state_record("a.service").load_state == "loaded"  # type: ignore[union-attr]


def test_no_lease_no_start_even_if_planned() -> None:
    async def go() -> list[Any]:
        agent, sd = agent_with({"web.service": TEXT})
        agent.session.lease = 0
        await agent.apply([WriteUnitFile("web.service", TEXT), DaemonReload(),
                           StartUnit("web.service")])
        return sd.calls

    calls = asyncio.run(go())
    assert ("start", "web.service") not in calls and ("write", "web.service") in calls


def test_a_lease_id_past_its_fence_deadline_starts_nothing() -> None:
    """A VM paused past its lease resumes with `session.lease` still set (the watchdog has not
    run yet): the start is refused on the deadline, not on the lease id (sim seed 10)."""
    async def go() -> list[Any]:
        agent, sd = agent_with({"web.service": TEXT, "global-mon.service": GLOBAL_TEXT})
        agent.session._last_renewed = clock.now() - fencing.fence_point_s(agent.session.ttl_s)
        assert agent.session.lease
        await agent.reconcile()
        return sd.calls

    calls = asyncio.run(go())
    assert ("start", "web.service") not in calls and ("write", "web.service") in calls
    assert ("start", "global-mon.service") in calls


def test_units_a_stale_dead_man_timer_stopped_are_started_again_while_the_lease_is_good(
) -> None:
    # An older timer generation fired just as the agent re-armed: the fence target stopped
    # the non-global units, but the lease was renewed in time. The agent must start them
    # again (the plan alone would not: it never restarts a unit that merely exited).
    async def go() -> list[tuple[str, str]]:
        agent, sd = agent_with({"web.service": TEXT, "global-mon.service": GLOBAL_TEXT})
        await agent.reconcile()
        await sd.fence(0)
        agent._on_systemd_change(UnitStatus("web.service", "loaded", "inactive", "dead"))
        agent._on_systemd_change(UnitStatus(FENCE_TARGET, "loaded", "active", "active"))
        assert agent._wake.is_set() and agent.session.lease == 7  # not taken for our timer
        sd.calls.clear()
        await agent.reconcile()
        return sd.calls

    calls = asyncio.run(go())
    assert calls == [("start", "web.service")]
