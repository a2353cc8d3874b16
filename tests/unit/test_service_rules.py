"""Domain rules of the API's service layer (one place for gRPC and HTTP v1): MachineOf cycles
are refused, templates are never activated. Against a fake registry."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest

from fleetd.api.service import FleetService, InvalidArgument
from fleetd.registry import UnitRecord
from fleetd.unit import Unit


def body(*machine_of: str) -> str:
    return "[Service]\nExecStart=/bin/true\n" + "".join(
        f"[X-Fleet]\nMachineOf={m}\n" for m in machine_of)


class FakeRegistry:
    def __init__(self, units: dict[str, str]) -> None:
        self.units = {n: UnitRecord(n, t, Unit.from_text(n, t).hash) for n, t in units.items()}
        self.writes: list[tuple[str, Any]] = []

    async def get_unit(self, name: str) -> Any:
        rec = self.units.get(name)
        return SimpleNamespace(record=rec) if rec else None

    async def create_unit(self, rec: UnitRecord, desired: str) -> bool:
        self.writes.append(("create", (rec.name, desired)))
        return True

    async def set_target_state(self, name: str, desired: str) -> None:
        self.writes.append(("set", (name, desired)))


@pytest.mark.parametrize(("cluster", "name", "text", "cycle"), [
    pytest.param({"a.service": body("b.service")}, "b.service", body("a.service"),
                 "b.service -> a.service -> b.service", id="two_units"),
    pytest.param({"a.service": body("b.service"), "b.service": body("c.service")},
                 "c.service", body("a.service"), "c.service -> a.service -> b.service -> "
                 "c.service", id="three_units"),
    pytest.param({"a.service": body("x.service"), "x.service": body("w@1.service")},
                 "w@1.service", body("a.service"),
                 "w@1.service -> a.service -> x.service -> w@1.service", id="through_instance"),
    pytest.param({"s@1.service": body("w@1.service")},
                 "w@1.service", "[X-Fleet]\nMachineOf=s@%i.service\n",
                 "w@1.service -> s@1.service -> w@1.service", id="after_specifier_expansion"),
    pytest.param({"a.service": body("b.service"), "b.service": body()}, "c.service",
                 body("a.service"), None, id="chain_without_cycle"),
    pytest.param({"a.service": body("b.service", "c.service"), "b.service": body("c.service")},
                 "c.service", body(), None, id="diamond"),
    pytest.param({}, "c.service", body("missing.service"), None, id="missing_target"),
])
async def test_machine_of_cycles_are_refused_before_any_write(
        cluster: dict[str, str], name: str, text: str, cycle: str | None) -> None:
    registry = FakeRegistry(cluster)
    service = FleetService(registry)  # type: ignore[arg-type]
    if cycle is None:
        await service.create_unit(name, text, "launched")
        assert registry.writes[0] == ("create", (name, "launched"))
        return
    with pytest.raises(InvalidArgument) as e:
        await service.create_unit(name, text, "launched")
    assert f"MachineOf cycle {cycle}" in str(e.value)
    assert registry.writes == []


async def test_starting_a_unit_of_a_cycle_is_refused() -> None:
    registry = FakeRegistry({"a.service": body("b.service"), "b.service": body("a.service")})
    service = FleetService(registry)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=re.escape("a.service -> b.service -> a.service")):
        await service.set_target_state("a.service", "launched")
    assert registry.writes == []


async def test_templates_are_kept_submitted_and_never_activated() -> None:
    registry = FakeRegistry({"t@.service": body()})
    service = FleetService(registry)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=re.escape("cannot activate template t@.service")):
        await service.set_target_state("t@.service", "launched")
    with pytest.raises(InvalidArgument, match="cannot activate template"):
        await service.set_target_state("t@.service", "loaded")
    assert registry.writes == []
    info, _ = await service.create_unit("u@.service", body(), "launched")
    assert registry.writes == [("create", ("u@.service", "inactive"))]
    assert info.desired_state == "inactive"


class FakeView:
    """The API's watch-fed cluster view, holding a fixed ClusterState."""

    def __init__(self, state: Any) -> None:
        self.state = state

    async def snapshot(self) -> Any:
        return self.state


async def test_why_ranks_feasible_machines_and_keeps_units_of_a_machine_that_left() -> None:
    from fleetd.registry import ClusterState, MachineRecord, ScheduleEntry, UnitView

    def unit(name: str, desired: str) -> UnitView:
        text = body()
        return UnitView(UnitRecord(name, text, Unit.from_text(name, text).hash), desired)

    units = {n: unit(n, "launched") for n in ("a.service", "b.service", "new.service")}
    schedule = {"a.service": {"m1": ScheduleEntry("a.service", "m1", "launched", "h", False)},
                "b.service": {"gone": ScheduleEntry("b.service", "gone", "launched", "h", False)}}
    state = ClusterState(1, units, {m: MachineRecord(m) for m in ("m1", "m2")}, schedule, {}, {})
    service = FleetService(None, FakeView(state))  # type: ignore[arg-type]
    why = await service.explain_unit("new.service")
    assert why.feasible == ("m1", "m2")
    assert [(m, round(s, 2)) for m, s, _ in why.scores] == [("m2", 1.0), ("m1", 0.5)]
    assert [r[:2] for r in why.rejected] == [("gone", "Departed")]
    # b.service's machine has no key: as for the engine (in its grace), it stays there.
    assert (await service.explain_unit("b.service")).scheduled_on == ("gone",)
