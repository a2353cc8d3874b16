"""Hand-written fault schedules for the double runs the simulation found (issue 10), each on
the real engine/agent code in the simulated cluster (tests/sim/cluster.py)."""

from __future__ import annotations

import asyncio

import pytest

from tests.sim.cluster import Result, SimConfig, Simulation, run_schedule

TTL_S = 5


def _run(script, machines: int = 3, **cfg: object) -> Result:  # type: ignore[no-untyped-def]
    r = run_schedule(0, SimConfig(machines=machines, ttl_s=TTL_S, **cfg),  # type: ignore[arg-type]
                     script=script)
    assert r.ok, f"{r.violation or r.liveness}\n" + "\n".join(r.trace[-40:])
    return r


def test_a_killed_fleetd_that_stays_down_does_not_leave_a_second_copy_running() -> None:
    # issue 10 item 1: kill -9 of fleetd, not restarted; its unit must not keep running once
    # the engine has started it elsewhere.
    async def script(sim: Simulation) -> None:
        where = await sim.launch("app0.service")
        sim.fleetd(where).kill()
        sim.note(f"FAULT kill -9 fleetd on {where} (stays down)")
        await asyncio.sleep(6 * TTL_S)
        sim.start_fleetd(where)
    _run(script)


def test_a_frozen_fleetd_does_not_leave_a_second_copy_running() -> None:
    # issue 10 item 1: kill -s STOP of fleetd (SIGSTOP: nothing of it runs, systemd does).
    async def script(sim: Simulation) -> None:
        where = await sim.launch("app0.service")
        proc = sim.fleetd(where).process
        sim.loop.freeze(proc)
        sim.note(f"FAULT freeze {proc}")
        await asyncio.sleep(6 * TTL_S)
        sim.loop.thaw(proc)
    _run(script)


def test_systemctl_stop_fleetd_for_longer_than_the_ttl_does_not_leave_a_copy() -> None:
    # issue 10 item 1 / DESIGN: `systemctl stop fleetd` stops the machine's units.
    async def script(sim: Simulation) -> None:
        where = await sim.launch("app0.service")
        sim.note(f"FAULT systemctl stop fleetd on {where}")
        await sim.stop_fleetd(where)
        await asyncio.sleep(6 * TTL_S)
        sim.start_fleetd(where)
    _run(script)


def test_a_slow_stopping_unit_is_inactive_before_its_replacement_starts() -> None:
    # issue 10 item 3: fencing queued the stop; a unit that takes 8 s to stop overlapped its
    # replacement on another machine.
    async def script(sim: Simulation) -> None:
        where = await sim.launch("app0.service")
        sim.systemds[where].stop_delay_s["app0.service"] = 8.0
        sim.note(f"FAULT partition {where} | etcd")
        sim.net.partition(where, "etcd")
        await asyncio.sleep(6 * TTL_S)
    _run(script, max_stop_delay_s=8.0)


def test_a_minority_that_hears_its_peers_but_not_etcd_does_not_hold_its_units() -> None:
    # issue 10 item 2: {m1,m2,m3 | m4,m5+etcd}: m1 hears m2 and m3 (stale ages, a "majority"),
    # holds its unit, while the engine on the etcd side reschedules it.
    async def script(sim: Simulation) -> None:
        where = await sim.launch("app0.service")
        minority = [where, *[m for m in sim.machines if m != where][:2]]
        majority = [m for m in sim.machines if m not in minority]
        sim.note(f"FAULT partition {minority} | {majority} + etcd")
        for m in minority:
            sim.net.partition(m, "etcd")
            for o in majority:
                sim.net.partition(m, o)
        await asyncio.sleep(6 * TTL_S)
    _run(script, machines=5)


@pytest.mark.parametrize("kind", ["crash", "freeze", "stop"])
def test_fleetd_failure_while_its_unit_moves_is_caught_by_the_random_schedules(kind: str) -> None:
    """The seeded schedules cover the same failures (a smoke check that they are generated)."""
    r = run_schedule(8, SimConfig(kinds=(kind,), faults=3, changes=3, fault_phase_s=20))
    assert r.faults == 3


@pytest.mark.xfail(strict=True, reason="agent treats deactivating as not running (found by sim)")
def test_stop_start_stop_of_a_slow_stopping_unit_leaves_it_stopped() -> None:
    # Found by the simulation (seed 1980 on main): a start issued while the unit is still
    # deactivating is queued behind the stop by systemd; the agent counts "deactivating" as
    # not running, so the next stop issues no StopUnit, and the queued start then runs the
    # unit against its desired state until the 60 s resync. Nothing wakes the agent when
    # systemd reports the unit active again.
    async def script(sim: Simulation) -> None:
        where = await sim.launch("app0.service")
        sim.systemds[where].stop_delay_s["app0.service"] = 8.0
        for state in ("loaded", "launched", "loaded"):
            await sim.ctl.set_target_state("app0.service", state)
            sim.desired["app0.service"] = state
            sim.note(f"CHANGE {state} app0.service")
            await asyncio.sleep(1.0)
        await asyncio.sleep(20)
        running = [m for m in sim.machines
                   if sim.systemds[m].active_state("app0.service") == "active"]
        assert not running, f"app0.service desired loaded but active on {running}"
    _run(script, max_stop_delay_s=8.0)
