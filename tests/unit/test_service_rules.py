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
