"""A drain blocked for lack of room is retried as soon as room appears (issue 13): the real
Engine on the in-memory etcd model and the virtual clock (tests/harness/sim_rig.py), with
its periodic pass an hour away, so only the event can have made the move go."""

from __future__ import annotations

from fleetd.registry.schema import DrainRecord
from tests.harness.sim_rig import SimRig, record, sim_rig, unit_text


async def _blocked(rig: SimRig, unit: str = "a.service", xfleet: str = "") -> None:
    """m1 (the leader) runs `unit`, is drained, and the move is blocked: no other machine."""
    session = await rig.session("m1")
    engine = rig.engine(session)
    rig.loop.spawn("engine:m1", engine.run())
    await rig.registry.create_unit(record(unit, unit_text(unit, xfleet)), "launched")
    await rig.until(lambda: rig.placed(unit), what=f"{unit} placed")
    assert await rig.placed(unit) == {"m1"}
    await rig.registry.set_drain(DrainRecord("m1"))

    async def blocked() -> bool:
        rec = (await rig.state()).moves.get(unit)
        return rec is not None and rec.phase == "blocked"

    await rig.until(blocked, what="the move blocked")


def test_a_blocked_drain_moves_when_a_machine_joins() -> None:
    with sim_rig() as rig:
        async def go() -> None:
            await _blocked(rig)
            await rig.session("m2")

            async def starting() -> bool:
                rec = (await rig.state()).moves.get("a.service")
                return rec is not None and rec.phase == "starting" and rec.to_machine == "m2"

            # Far less than the hour to the engine's periodic pass.
            await rig.until(starting, timeout_s=5, what="the move started on the new machine")
            assert await rig.placed("a.service") == {"m1", "m2"}
        rig.run(go())
