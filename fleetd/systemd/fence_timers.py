"""Arming the dead-man switch (`fleetd.fencing`): one step shared by the agent at each renewal
and by `fleetd --after-exit` after a crash."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleetd.fencing import FENCE_TIMER_PREFIX

if TYPE_CHECKING:
    from fleetd.systemd._protocol import UnitManager


def fence_timer_name(generation: int) -> str:
    """The transient timer of one arming generation (unique across fleetd processes when
    generations start from the time in microseconds)."""
    return f"{FENCE_TIMER_PREFIX}{generation}.timer"


async def arm_replacing_older(systemd: UnitManager, name: str, delay_s: float) -> None:
    """Arm timer ``name`` to fire in ``delay_s`` seconds, then stop every other fence timer
    (ours or an earlier fleetd's): the new one is armed before any older one goes."""
    await systemd.arm_fence_timer(name, delay_s)
    for old in await systemd.list_fence_timers():
        if old != name:
            await systemd.stop_unit(old)
