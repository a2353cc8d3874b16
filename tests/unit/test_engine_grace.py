"""The engine's grace after a machine's key vanishes, on the real Engine with a virtual clock and
a registry that records the decisions it would write (no etcd)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from fleetd import clock
from fleetd.engine.engine import Engine
from fleetd.engine.scheduler import JobView
from fleetd.fencing import FENCE_STOP_BOUND_S, engine_grace_s, unit_grace_s
from fleetd.machine import MachineIdentity, MachineSession
from fleetd.registry import MachineRecord, ScheduleEntry, UnitRecord
from fleetd.registry._etcd import Delete, Put
from fleetd.registry.schema import decode, encode
from fleetd.unit import XFleet
from tests.harness.recording_registry import RecordingRegistry

TTL_S = 10
TEXT = "[Service]\nExecStart=/bin/sleep 1000\n"


@pytest.fixture
def now() -> Iterator[list[float]]:
    t = [1000.0]
    clock.use(lambda: t[0])
    yield t
    clock.use(None)


def engine_with(machines: list[str], units: dict[str, str],
                texts: dict[str, str] | None = None) -> tuple[Engine, RecordingRegistry]:
    reg = RecordingRegistry()
    session = MachineSession(reg, MachineIdentity("m1", "10.0.0.1"), TTL_S)
    eng = Engine(reg, session)
    c = eng.cache
    k = reg.keys
    for mid in machines:
        eng._apply_kv(c, k.machine(mid), encode(MachineRecord(mid, "10.0.0.9", {})))
    for name, mid in units.items():
        rec = UnitRecord(name, (texts or {}).get(name, TEXT), f"h-{name}")
        eng._apply_kv(c, k.unit(name), encode(rec))
        eng._apply_kv(c, k.desired_state(name), encode("launched"))
        eng._apply_kv(c, k.assignment(mid, name),
                      encode(ScheduleEntry(name, mid, "launched", rec.hash, False)))
    return eng, reg


def placements(reg: RecordingRegistry) -> list[str]:
    return sorted(op.key.split("/")[-2] + ":" + op.key.split("/")[-1] for op in reg.written
                  if isinstance(op, Put) and "/schedule/" in op.key)


@pytest.mark.parametrize(("back_after_s", "moved"), [
    (None, True),  # gone for good: moved once the grace is over
    (3.0, False),  # re-registered within the grace: keeps its unit
])
def test_a_machine_gone_keeps_its_units_for_the_grace(now: list[float],
                                                      back_after_s: float | None,
                                                      moved: bool) -> None:
    eng, reg = engine_with(["m1", "m2"], {"web.service": "m2"})
    k = reg.keys
    eng._apply_kv(eng.cache, k.machine("m2"), None)  # m2's lease expired

    async def passes() -> None:
        await eng.reconcile_once(1)
        assert not placements(reg), "moved during the grace"
        if back_after_s is not None:
            now[0] += back_after_s
            eng._apply_kv(eng.cache, k.machine("m2"),
                          encode(MachineRecord("m2", "10.0.0.9", {})))
        now[0] += engine_grace_s(TTL_S) - 0.01 - (back_after_s or 0)
        assert not eng._expire_departed()
        await eng.reconcile_once(1)
        assert not placements(reg), "moved before the grace was over"
        now[0] += 0.02
        if eng._expire_departed():
            await eng.reconcile_once(1)

    asyncio.run(passes())
    assert placements(reg) == (["m1:web.service"] if moved else [])


def test_nothing_new_is_placed_on_a_machine_in_its_grace(now: list[float]) -> None:
    eng, reg = engine_with(["m1", "m2"], {"web.service": "m1"})
    k = reg.keys
    eng._apply_kv(eng.cache, k.machine("m2"), None)
    for name in ("a.service", "b.service", "c.service"):
        eng._apply_kv(eng.cache, k.unit(name), encode(UnitRecord(name, TEXT, f"h-{name}")))
        eng._apply_kv(eng.cache, k.desired_state(name), encode("launched"))
    asyncio.run(eng.reconcile_once(1))
    assert not [p for p in placements(reg) if p.startswith("m2:")]


def test_a_new_leader_gives_machines_it_cannot_see_the_full_grace(now: list[float]) -> None:
    eng, reg = engine_with(["m1"], {"web.service": "m3"})  # m3: units, no key
    eng._note_unseen_machines(eng.cache)  # what a new leader's _load does
    asyncio.run(eng.reconcile_once(1))
    assert not placements(reg)
    now[0] += engine_grace_s(TTL_S) + 0.01
    assert eng._expire_departed()
    asyncio.run(eng.reconcile_once(1))
    assert placements(reg) == ["m1:web.service"]


def test_a_unit_destroyed_and_started_again_waits_for_its_old_machines_grace(
        now: list[float]) -> None:
    """Found by the simulation (seed 10, VM pauses): m2 left with web.service still running
    there (paused); the user destroys and starts web.service again. The new copy must not be
    placed while m2 may still run the old one, whatever its name's history."""
    eng, reg = engine_with(["m1", "m2"], {"web.service": "m2"})
    k, c = reg.keys, eng.cache
    eng._apply_kv(c, k.machine("m2"), None)  # m2's lease expired
    eng._apply_kv(c, k.assignment("m2", "web.service"), None)  # destroy
    eng._apply_kv(c, k.unit("web.service"), None)
    eng._apply_kv(c, k.desired_state("web.service"), None)
    rec = UnitRecord("web.service", TEXT, "h-new")  # start again
    eng._apply_kv(c, k.unit("web.service"), encode(rec))
    eng._apply_kv(c, k.desired_state("web.service"), encode("launched"))

    async def passes() -> None:
        await eng.reconcile_once(1)
        assert not placements(reg), "placed while its old machine may still run it"
        now[0] += engine_grace_s(TTL_S) + 0.01
        assert eng._expire_departed()
        await eng.reconcile_once(1)

    asyncio.run(passes())
    assert placements(reg) == ["m1:web.service"]


SLOW = "[Service]\nExecStart=/bin/sleep 1000\nTimeoutStopSec=10s\n"  # whole stop up to 20 s
SLOW_BOUND_S = 20.0


def unschedulable(reg: RecordingRegistry) -> dict[str, str]:
    """The last reason written per unit (None: cleared)."""
    out: dict[str, str] = {}
    for op in reg.written:
        if "/unschedulable/" in op.key:
            name = op.key.split("/")[-1]
            if isinstance(op, Put):
                out[name] = str(op.value)
            elif isinstance(op, Delete):
                out.pop(name, None)
    return out


def test_a_unit_with_a_long_stop_waits_its_own_grace_the_others_the_machines(
        now: list[float]) -> None:
    eng, reg = engine_with(["m1", "m2"], {"web.service": "m2", "db.service": "m2"},
                           {"db.service": SLOW})
    eng._apply_kv(eng.cache, reg.keys.machine("m2"), None)  # m2's lease expired
    db_grace = unit_grace_s(TTL_S, SLOW_BOUND_S)
    assert db_grace > engine_grace_s(TTL_S) + SLOW_BOUND_S - FENCE_STOP_BOUND_S - 0.01

    async def passes() -> None:
        await eng.reconcile_once(1)
        assert not placements(reg)
        now[0] += engine_grace_s(TTL_S) + 0.01
        assert eng._expire_departed()
        await eng.reconcile_once(1)
        assert placements(reg) == ["m1:web.service"], "web moves at the machine's grace"
        why = unschedulable(reg)["db.service"]
        assert "stopping on m2" in why and "20s" in why and "18s more" in why, why
        assert " UTC" in why
        assert any(isinstance(op, Delete) and op.key.endswith("/m2/db.service")
                   for op in reg.written)  # its dead machine's entry is dropped meanwhile
        now[0] += db_grace - engine_grace_s(TTL_S) - 0.03
        assert not eng._expire_departed()
        assert eng._next_wait_s() == pytest.approx(0.02, abs=1e-6)  # wakes at its end
        await eng.reconcile_once(1)
        assert placements(reg) == ["m1:web.service"], "db moved before its own grace ended"
        now[0] += 0.03
        assert eng._expire_departed()
        await eng.reconcile_once(1)

    asyncio.run(passes())
    assert placements(reg) == ["m1:db.service", "m1:web.service"]
    assert "db.service" not in unschedulable(reg)


def test_a_global_unit_with_a_long_stop_is_not_held(now: list[float]) -> None:
    text = SLOW + "\n[X-Fleet]\nGlobal=true\n"
    eng, _ = engine_with(["m1", "m2"], {"mon.service": "m2"}, {"mon.service": text})
    eng._apply_kv(eng.cache, eng.registry.keys.machine("m2"), None)
    assert not eng.slow_stops


def test_a_new_leader_holds_an_unplaced_slow_unit_it_finds_unschedulable(
        now: list[float]) -> None:
    """The last leader unassigned db.service from a dead machine and held it (its reason is
    the record); this leader cannot know since when: the whole grace from now."""
    eng, reg = engine_with(["m1"], {}, {})
    k, c = reg.keys, eng.cache
    rec = UnitRecord("db.service", SLOW, "h-db")
    eng._apply_kv(c, k.unit("db.service"), encode(rec))
    eng._apply_kv(c, k.desired_state("db.service"), encode("launched"))
    eng._apply_kv(c, k.unschedulable_reason("db.service"),
                  encode({"reason": "may still be stopping on m2, ...", "since_ns": 1}))
    for name, why in (("pinned.service", "no machine matches MachineID"),
                      ("free.service", "may still be stopping on m2, ...")):
        eng._apply_kv(c, k.unit(name), encode(UnitRecord(name, SLOW if name == "pinned.service"
                                                         else TEXT, f"h-{name}")))
        eng._apply_kv(c, k.desired_state(name), encode("launched"))
        eng._apply_kv(c, k.unschedulable_reason(name), encode({"reason": why, "since_ns": 1}))
    eng._note_unseen_machines(c)  # what a new leader's _load does
    eng._hold_unplaced_slow_stops(c)  # and then _lead
    # only the slow-stopping unit the last leader held (not one failing for another reason,
    # nor one that states no stop time)
    assert set(eng.slow_stops) == {"db.service"}

    async def passes() -> None:
        await eng.reconcile_once(1)
        assert placements(reg) == ["m1:free.service", "m1:pinned.service"]  # not held
        assert "stopping on a machine that left" in unschedulable(reg)["db.service"]
        now[0] += unit_grace_s(TTL_S, SLOW_BOUND_S) + 0.01
        assert eng._expire_departed()
        await eng.reconcile_once(1)

    asyncio.run(passes())
    assert "m1:db.service" in placements(reg)


def test_a_unit_submitted_with_a_long_stop_is_placed_at_once(now: list[float]) -> None:
    eng, reg = engine_with(["m1"], {}, {})
    k, c = reg.keys, eng.cache
    eng._note_unseen_machines(c)
    eng._hold_unplaced_slow_stops(c)
    eng._apply_kv(c, k.unit("db.service"), encode(UnitRecord("db.service", SLOW, "h-db")))
    eng._apply_kv(c, k.desired_state("db.service"), encode("launched"))
    asyncio.run(eng.reconcile_once(1))
    assert placements(reg) == ["m1:db.service"]


def test_a_file_replaced_while_its_machine_was_cut_off_keeps_the_old_versions_stop_bound(
        now: list[float]) -> None:
    """db runs on m2 with a 20 s stop; its file is replaced by one with the default stop while
    m2 may be cut off (so m2 may still run, and stop, the old version). The rewritten entry
    records the longer bound, and when m2 leaves db is held for it, not for the new file's."""
    eng, reg = engine_with(["m2"], {})
    c, k = eng.cache, reg.keys

    def written_entry() -> Put:
        op = [op for op in reg.written if isinstance(op, Put)
              and op.key == k.assignment("m2", "db.service")][-1]
        eng._apply_kv(c, op.key, op.value)  # as the engine's watch would
        return op

    async def decide() -> None:
        await eng.reconcile_once(1, {"db.service"})
    eng._apply_kv(c, k.unit("db.service"), encode(UnitRecord("db.service", SLOW, "h-old")))
    eng._apply_kv(c, k.desired_state("db.service"), encode("launched"))
    asyncio.run(decide())
    placed = decode(ScheduleEntry, written_entry().value)
    assert (placed.hash, placed.stop_bound_s) == ("h-old", SLOW_BOUND_S)
    eng._apply_kv(c, k.machine("m1"), encode(MachineRecord("m1", "10.0.0.8", {})))
    eng._apply_kv(c, k.unit("db.service"), encode(UnitRecord("db.service", TEXT, "h-new")))
    asyncio.run(decide())
    decoded = decode(ScheduleEntry, written_entry().value)
    assert decoded.hash == "h-new" and decoded.stop_bound_s == SLOW_BOUND_S
    eng._apply_kv(c, k.machine("m2"), None)   # then m2's lease expires
    assert eng.slow_stops["db.service"][2] == SLOW_BOUND_S
    until = eng.slow_stops["db.service"][0]
    assert until == pytest.approx(now[0] + unit_grace_s(TTL_S, SLOW_BOUND_S))

    # Written again with the same file, the entry keeps what it recorded.
    eng2, _ = engine_with(["m1"], {})
    rec = UnitRecord("db.service", TEXT, "h-new")
    plain = JobView("db.service", "launched", XFleet())
    assert eng2._entry_stop_bound(rec, plain, decoded) == SLOW_BOUND_S
    assert eng2._entry_stop_bound(rec, plain, None) == 0.0, "a default stop records nothing"
    glob = JobView("db.service", "launched", XFleet(global_=True))
    assert eng2._entry_stop_bound(UnitRecord("db.service", SLOW, "h-s"), glob, None) == 0.0


def test_machines_leaving_in_one_watch_batch_each_keep_exactly_their_units(
        now: list[float]) -> None:
    # A rack's worth of leases expiring together arrives as one watch batch; the engine finds
    # every departed machine's units in one pass over the schedule (it used to pass over all
    # units once per machine: 1,000 machines x 10,000 units).
    from fleetd.registry import Update, decode_change
    from fleetd.registry.changes import WatchView

    eng, reg = engine_with(["m1", "m2", "m3", "m4"],
                           {"a.service": "m2", "b.service": "m3", "c.service": "m3",
                            "d.service": "m1"})
    k = reg.keys
    c = eng.cache
    eng._apply_kv(c, k.assignment("m2", "g.service"),  # a unit on several machines
                  encode(ScheduleEntry("g.service", "m2", "launched", "h-g", False)))
    eng._apply_kv(c, k.assignment("m4", "g.service"),
                  encode(ScheduleEntry("g.service", "m4", "launched", "h-g", False)))
    changes = [decode_change(k, k.machine(mid), None, c.state.revision + 1)
               for mid in ("m2", "m3", "m4")]
    assert all(ch is not None for ch in changes)
    events = WatchView(c.state).apply(ch for ch in changes if ch is not None)

    async def one_batch() -> None:
        async def updates():  # type: ignore[no-untyped-def]
            yield Update("changes", c.state.revision, c.state,
                         tuple(ch for ch in changes if ch is not None), tuple(events))
        await eng._watch(updates())

    asyncio.run(one_batch())
    assert set(eng.departed) == {"m2", "m3", "m4"}
    assert eng.departed_units == {"m2": {"a.service", "g.service"},
                                  "m3": {"b.service", "c.service"}, "m4": {"g.service"}}
