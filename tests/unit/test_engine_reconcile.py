"""Engine.reconcile_once, table-driven: the real Engine leading through a real MachineSession
on the in-memory etcd model and the virtual clock (tests/harness/sim_rig.py). Each case writes
machines and units through the Registry, lets the engine take the lead and make its first pass,
and reads the schedule it wrote back from etcd. Each case runs in milliseconds."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from fleetd.engine.engine import Engine
from fleetd.machine import MachineSession
from fleetd.registry import ClusterState
from tests.harness.sim_rig import SimRig, record, sim_rig, unit_text

MACHINES = {"m1": {"region": "east"}, "m2": {"region": "west", "disk": "ssd"},
            "m3": {"region": "east"}}


@dataclass
class Case:
    #: unit -> ([X-Fleet] lines, target state)
    units: dict[str, tuple[str, str]]
    #: unit -> the machines it must be scheduled on: a set, or a count when any will do
    placed: dict[str, set[str] | int]
    #: unit -> part of the reason it is scheduled nowhere
    unschedulable: dict[str, str] = field(default_factory=dict)
    #: unit -> unit it must share a machine with
    together: dict[str, str] = field(default_factory=dict)
    #: pairs of units that must not share a machine
    apart: list[tuple[str, str]] = field(default_factory=list)


CASES = [
    pytest.param(Case({"a.service": ("", "launched")}, {"a.service": 1}),
                 id="a_launched_unit_is_placed_on_one_machine"),
    pytest.param(Case({"a.service": ("", "loaded")}, {"a.service": 1}),
                 id="a_loaded_unit_is_placed_too"),
    pytest.param(Case({"a.service": ("", "inactive")}, {"a.service": set()}),
                 id="an_inactive_unit_is_placed_nowhere"),
    pytest.param(Case({"a.service": ("MachineID=m3", "launched")}, {"a.service": {"m3"}}),
                 id="machine_id_pins_the_unit"),
    pytest.param(Case({"a.service": ("MachineMetadata=region=west", "launched")},
                      {"a.service": {"m2"}}),
                 id="metadata_selects_the_matching_machine"),
    pytest.param(Case({"a.service": ("MachineMetadata=region=north", "launched")},
                      {"a.service": set()}, unschedulable={"a.service": "MachineMetadata"}),
                 id="no_machine_with_the_metadata_records_why"),
    pytest.param(Case({"mon.service": ("Global=true", "launched")},
                      {"mon.service": {"m1", "m2", "m3"}}),
                 id="a_global_unit_goes_to_every_machine"),
    pytest.param(Case({"mon.service": ("Global=true\nMachineMetadata=region=east", "launched")},
                      {"mon.service": {"m1", "m3"}}),
                 id="a_global_unit_goes_to_every_matching_machine"),
    pytest.param(Case({"a.service": ("", "launched"), "b.service": ("Conflicts=a.service",
                                                                   "launched")},
                      {"a.service": 1, "b.service": 1}, apart=[("a.service", "b.service")]),
                 id="conflicting_units_never_share_a_machine"),
    pytest.param(Case({f"x{i}.service": ("\n".join(f"Conflicts=x{j}.service" for j in range(4)
                                                    if j != i), "launched") for i in range(4)},
                      {"x0.service": 1, "x1.service": 1, "x2.service": 1, "x3.service": 0},
                      unschedulable={"x3.service": "Conflicts"}),
                 id="a_fourth_conflicting_unit_on_three_machines_records_why"),
    pytest.param(Case({"app.service": ("", "launched"),
                       "side.service": ("MachineOf=app.service", "launched")},
                      {"app.service": 1, "side.service": 1},
                      together={"side.service": "app.service"}),
                 id="a_sidekick_follows_its_unit"),
]


def placements(state: ClusterState) -> dict[str, set[str]]:
    return {u: set(per) for u, per in state.schedule.items() if per}


async def leading_engine(rig: SimRig) -> tuple[Engine, MachineSession]:
    """m2's engine, once it leads and has made its first pass over what etcd holds."""
    session = rig.sessions["m2"]
    engine = rig.engine(session)
    rig.loop.spawn("engine:m2", engine.run())
    await rig.until(lambda: engine.reconciles >= 1, what="the engine's first pass")
    return engine, session


async def cluster(rig: SimRig, units: dict[str, tuple[str, str]]) -> None:
    for mid, md in MACHINES.items():
        await rig.session(mid, md)
    for name, (xfleet, state) in sorted(units.items()):
        await rig.registry.create_unit(record(name, unit_text(name, xfleet)), state)


def run(go: Callable[[SimRig], Awaitable[None]]) -> None:
    with sim_rig() as rig:
        rig.run(go(rig))


@pytest.mark.parametrize("case", CASES)
def test_reconcile_once(case: Case) -> None:
    async def go(rig: SimRig) -> None:
        await cluster(rig, case.units)
        engine, session = await leading_engine(rig)
        state = await rig.state()
        where = placements(state)
        for unit, want in case.placed.items():
            got = where.get(unit, set())
            if isinstance(want, int):
                assert len(got) == want, (unit, got)
            else:
                assert got == want, (unit, got)
        assert state.unschedulable.keys() == case.unschedulable.keys(), state.unschedulable
        for unit, part in case.unschedulable.items():
            assert part in state.unschedulable[unit], state.unschedulable[unit]
        for unit, other in case.together.items():
            assert where[unit] == where[other]
        for a, b in case.apart:
            assert not where[a] & where[b]
        # The same pass over unchanged state decides the same: nothing more to write.
        assert await engine.reconcile_once(session.lease) == 0
    run(go)


def test_a_stopped_unit_is_unscheduled_by_the_next_pass() -> None:
    async def go(rig: SimRig) -> None:
        await cluster(rig, {"a.service": ("", "launched")})
        engine, _ = await leading_engine(rig)
        assert len(placements(await rig.state())["a.service"]) == 1
        await rig.registry.set_target_state("a.service", "inactive")
        passes = engine.reconciles
        await rig.until(lambda: engine.reconciles > passes, what="a pass after the change")
        assert "a.service" not in placements(await rig.state())
    run(go)


def test_a_dead_machines_unit_moves_to_a_live_one_after_the_grace() -> None:
    async def go(rig: SimRig) -> None:
        await cluster(rig, {"a.service": ("MachineMetadata=region=east", "launched")})
        engine, _ = await leading_engine(rig)
        [victim] = placements(await rig.state())["a.service"]
        survivor = ({"m1", "m3"} - {victim}).pop()
        rig.loop.kill(f"session:{victim}")  # power cut: its lease is no longer renewed

        async def expired() -> bool:
            return victim not in await rig.machine_ids()

        async def moved() -> bool:
            return await rig.placed("a.service") != {victim}
        await rig.until(expired, 30, what=f"{victim}'s key expiring")
        gone_at = rig.loop.time()
        await rig.until(moved, 120, what="a.service leaving the dead machine")
        assert await rig.placed("a.service") == {survivor}
        # Not before the engine's grace: the dead machine may still be stopping its copy.
        assert rig.loop.time() - gone_at >= engine.grace_s - 0.5
    run(go)
