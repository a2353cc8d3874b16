"""A drain blocked for lack of room is retried as soon as room appears (issue 13), by the
event that frees it: a machine joining, a machine's capacity growing, a unit stopped. The
real Engine on the in-memory etcd model and the virtual clock (tests/harness/sim_rig.py),
with its periodic pass an hour away, so only the event can have made the move go."""

from __future__ import annotations

from fleetd.machine import MachineIdentity, MachineSession
from fleetd.registry.schema import DrainRecord
from tests.harness.sim_rig import TTL_S, SimRig, record, sim_rig, unit_text

M = 1 << 20


async def machine(rig: SimRig, mid: str, memory: int = 0) -> MachineSession:
    """A machine whose units may reserve ``memory`` bytes (0: not limited)."""
    identity = MachineIdentity(mid, "10.0.0.1", hostname=mid, version="test",
                               capacity=(0, memory, 0, 0))
    s = MachineSession(rig.registry_for(mid), identity, TTL_S)
    await rig.start_session(s)
    rig.sessions[mid] = s
    return s


async def move_of(rig: SimRig, unit: str) -> tuple[str, str, str]:
    rec = (await rig.state()).moves.get(unit)
    return (rec.phase, rec.to_machine, rec.reason) if rec else ("", "", "")


async def blocked_drain(rig: SimRig, *, memory: str = "", before: str = "") -> None:
    """m1 (the leader's machine) runs a.service and is drained; the move blocks."""
    session = await machine(rig, "m1")
    rig.loop.spawn("engine:m1", rig.engine(session).run())
    xfleet = f"MemoryReservation={memory}" if memory else ""
    await rig.registry.create_unit(record("a.service", unit_text("a", xfleet)), "launched")
    await rig.until(lambda: rig.placed("a.service"), what="a.service placed")
    assert await rig.placed("a.service") == {"m1"}
    if before:
        await rig.until(lambda: rig.placed(before), what=f"{before} placed")
    await rig.registry.set_drain(DrainRecord("m1"))

    async def blocked() -> bool:
        return (await move_of(rig, "a.service"))[0] == "blocked"

    await rig.until(blocked, what="the move blocked")


async def started_on(rig: SimRig, target: str) -> None:
    async def starting() -> bool:
        phase, to, _ = await move_of(rig, "a.service")
        return phase == "starting" and to == target

    # Far less than the hour to the engine's periodic pass.
    await rig.until(starting, timeout_s=5, what=f"the move started on {target}")
    assert await rig.placed("a.service") == {"m1", target}


def test_a_blocked_drain_moves_when_a_machine_joins() -> None:
    with sim_rig() as rig:
        async def go() -> None:
            await blocked_drain(rig)
            assert "no other live machine" in (await move_of(rig, "a.service"))[2]
            await machine(rig, "m2")
            await started_on(rig, "m2")
        rig.run(go())


def test_a_blocked_drain_moves_when_a_machines_capacity_grows() -> None:
    with sim_rig() as rig:
        async def go() -> None:
            small = await machine(rig, "m2", 256 * M)
            await blocked_drain(rig, memory="512M")
            assert "Resources" in (await move_of(rig, "a.service"))[2]
            # fleetd on m2 restarted with a larger capacity in fleet.conf: its record changes.
            bigger = MachineIdentity("m2", "10.0.0.1", hostname="m2", version="test",
                                     capacity=(0, 1024 * M, 0, 0))
            await small.registry.register_machine(bigger.record(), small.lease)
            await started_on(rig, "m2")
        rig.run(go())


def test_a_blocked_drain_moves_when_a_unit_stopped_frees_room() -> None:
    with sim_rig() as rig:
        async def go() -> None:
            await machine(rig, "m2", 768 * M)
            await rig.registry.create_unit(record("b.service", unit_text(
                "b", "MachineID=m2\nMemoryReservation=512M")), "launched")
            await blocked_drain(rig, memory="512M", before="b.service")
            assert "Resources" in (await move_of(rig, "a.service"))[2]
            await rig.registry.set_target_state("b.service", "inactive")
            await started_on(rig, "m2")
        rig.run(go())
