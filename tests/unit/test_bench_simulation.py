"""The scale benchmark's systemd double (`bench.simulation.SimulatedSystemd`, a TEST DOUBLE for
1,000 simulated machines) keeps implementing the adapter interface the agent drives."""

from __future__ import annotations

import asyncio
import inspect
import re

from bench.simulation import SimulatedSystemd
from fleetd.fencing import FENCE_TARGET
from fleetd.systemd import SystemdManager, UnitManager, UnitStatus


def _members(proto: type) -> set[str]:
    return {n for n in dir(proto) if not n.startswith("_")} | set(
        getattr(proto, "__annotations__", {}))


def test_simulated_systemd_has_every_member_of_the_protocol_as_the_adapter_does() -> None:
    names = sorted(_members(UnitManager))
    assert "install_fence" in names and "arm_fence_timer" in names
    for name in names:
        want = getattr(UnitManager, name)
        have = getattr(SimulatedSystemd, name, None)
        assert have is not None, f"SimulatedSystemd lacks {name}"
        if isinstance(want, property):
            assert isinstance(have, property), name
            continue
        assert inspect.iscoroutinefunction(have) == inspect.iscoroutinefunction(want), name
        assert list(inspect.signature(have).parameters) == \
            list(inspect.signature(want).parameters), name
        # the real adapter agrees with the protocol too, so the double matches the adapter
        assert list(inspect.signature(getattr(SystemdManager, name)).parameters) == \
            list(inspect.signature(want).parameters), name
    assert isinstance(SimulatedSystemd("m"), UnitManager)


def test_every_systemd_call_of_the_agent_is_in_the_protocol() -> None:
    import fleetd.agent.agent as agent_mod

    src = inspect.getsource(agent_mod)
    called = {re.match(r"\w+", part).group(0)  # type: ignore[union-attr]
              for part in src.split("self.systemd.")[1:]}
    assert called, "the agent calls systemd through self.systemd"
    assert called <= _members(UnitManager), called - _members(UnitManager)


async def test_a_fired_dead_man_timer_stops_the_drop_in_units_only() -> None:
    sd = SimulatedSystemd("m")
    seen: list[UnitStatus] = []
    sd.watch(lambda: {"a.service", "g.service"}, seen.append)
    assert sd.install_fence() is True and sd.install_fence() is False
    sd.write_unit_file("a.service", "[Service]\nExecStart=/bin/true\n", drop_in="[Unit]\n")
    sd.write_unit_file("g.service", "[Service]\nExecStart=/bin/true\n")
    assert sd.has_drop_in("a.service") and not sd.has_drop_in("g.service")
    await sd.daemon_reload()
    await sd.start_unit("a.service")
    await sd.start_unit("g.service")
    await sd.arm_fence_timer("fleet-fence@1.timer", 0.0)
    assert await sd.list_fence_timers() == ["fleet-fence@1.timer"]
    while not await sd.timer_fired("fleet-fence@1.timer"):
        await asyncio.sleep(0)
    assert (await sd.unit_status("a.service")).active_state == "inactive"
    assert (await sd.unit_status("g.service")).active_state == "active"
    assert (await sd.unit_status(FENCE_TARGET)).active_state == "active"
    await asyncio.sleep(0)
    assert [s.active_state for s in seen if s.name == "a.service"][-1] == "inactive"
    await sd.stop_unit("fleet-fence@1.timer")
    assert await sd.list_fence_timers() == []
