"""The engine's incremental pass (`reconcile_once` with the dirty units): which changes are
decided without a full pass, on the real Engine with a registry that records the decisions it
would write (no etcd)."""

from __future__ import annotations

from fleetd.engine.engine import Engine
from fleetd.machine import MachineIdentity, MachineSession
from fleetd.registry import MachineRecord, ScheduleEntry, UnitRecord
from fleetd.registry._etcd import Put
from fleetd.registry.schema import decode, encode
from tests.harness.recording_registry import RecordingRegistry

TEXT = "[Service]\nExecStart=/bin/sleep 1000\n"


def engine(machines: list[str]) -> tuple[Engine, RecordingRegistry]:
    reg = RecordingRegistry()
    eng = Engine(reg, MachineSession(reg, MachineIdentity("m1", "10.0.0.1"), 10))
    for mid in machines:
        eng._apply_kv(eng.cache, reg.keys.machine(mid),
                      encode(MachineRecord(mid, "10.0.0.9", {})))
    return eng, reg


def submit(eng: Engine, name: str, desired: str) -> None:
    k = eng.registry.keys
    eng._apply_kv(eng.cache, k.unit(name), encode(UnitRecord(name, TEXT, f"h-{name}")))
    eng._apply_kv(eng.cache, k.desired_state(name), encode(desired))


def placed(reg: RecordingRegistry) -> dict[str, str]:
    out = {}
    for op in reg.written:
        if isinstance(op, Put) and "/schedule/" in op.key:
            e = decode(ScheduleEntry, op.value)
            out[e.unit] = e.machine_id
    return out


async def test_an_instance_whose_name_holds_at_dot_is_placed_without_a_full_pass() -> None:
    eng, reg = engine(["m1", "m2"])
    await eng.reconcile_once(1)  # the first pass is a full one
    submit(eng, "web@.x.service", "launched")  # an instance, not a template
    submit(eng, "web@.service", "inactive")  # a submitted template: nothing to decide
    submit(eng, "web@1.service", "launched")
    await eng.reconcile_once(1, {"web@.x.service", "web@.service", "web@1.service"})
    assert eng.fast_passes == 1
    got = placed(reg)
    assert set(got) == {"web@.x.service", "web@1.service"} and set(got.values()) <= {"m1", "m2"}


async def test_a_dirty_unit_the_fast_path_cannot_decide_takes_a_full_pass() -> None:
    eng, reg = engine(["m1"])
    await eng.reconcile_once(1)
    submit(eng, "a.service", "launched")
    await eng.reconcile_once(1, {"a.service"})
    assert eng.fast_passes == 1 and placed(reg) == {"a.service": "m1"}
    # a deleted unit must be unscheduled: that is the full pass's work
    eng._apply_kv(eng.cache, eng.registry.keys.unit("a.service"), None)
    eng._apply_kv(eng.cache, eng.registry.keys.desired_state("a.service"), None)
    await eng.reconcile_once(1, {"a.service"})
    assert eng.fast_passes == 1
    assert any(not isinstance(op, Put) and op.key.endswith("/a.service") for op in reg.written)


async def test_a_follower_placed_with_its_late_target_loses_its_reason_at_once() -> None:
    eng, reg = engine(["m1", "m2"])
    await eng.reconcile_once(1)
    k = eng.registry.keys
    eng._apply_kv(eng.cache, k.unit("side.service"), encode(UnitRecord(
        "side.service", TEXT + "[X-Fleet]\nMachineOf=main.service\n", "h-side")))
    eng._apply_kv(eng.cache, k.desired_state("side.service"), encode("launched"))
    await eng.reconcile_once(1, {"side.service"})
    assert "side.service" in eng.cache.unschedulable  # its target does not exist yet
    submit(eng, "main.service", "launched")
    await eng.reconcile_once(1, {"main.service"})
    assert eng.fast_passes == 2
    got = placed(reg)
    assert got["side.service"] == got["main.service"]
    assert "side.service" not in eng.cache.unschedulable  # cleared by the same pass
