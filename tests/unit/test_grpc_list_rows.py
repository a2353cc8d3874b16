"""The gRPC list answers are joined encoded rows (fleetd.api.grpc_server) that the row cache
(fleetd.api.service.RowCache) re-encodes only where the cluster changed: after any sequence
of changes they are the very messages the plain construction gives."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetd.api.grpc_server import _serialize, _state_row, _unit_row, state_pb, unit_pb
from fleetd.api.pb import fleet_pb2 as pb
from fleetd.api.service import FleetService, RowCache, UnitInfo
from fleetd.registry import ClusterState, Registry, UnitStateRecord
from fleetd.registry.changes import WatchView
from fleetd.registry.model import decode_change
from fleetd.registry.registry import Update
from fleetd.registry.schema import (
    MachineRecord,
    MoveRecord,
    ScheduleEntry,
    UnitRecord,
    encode,
)
from fleetd.registry.view import ClusterView


def info(i: int, desc: str = "d") -> UnitInfo:
    return UnitInfo(f"u{i}.service", "", f"h{i}", "launched", "launched",
                    tuple(f"m{j}" for j in range(i % 3)), "", desc, i % 2 == 0)


def test_joined_unit_rows_are_the_plain_message() -> None:
    # rows of every length-prefix size: 1, 2 and 3 varint bytes
    units = [info(0, ""), info(1, "é" * 100), info(2, "x" * 20000), *map(info, range(3, 50))]
    got = _serialize(b"".join(map(_unit_row, units)))
    assert pb.ListUnitsResponse.FromString(got) == pb.ListUnitsResponse(
        units=[unit_pb(u) for u in units])
    assert _serialize(b"") == pb.ListUnitsResponse().SerializeToString()
    plain = pb.ListUnitsResponse(units=[unit_pb(units[0])])
    assert _serialize(plain) == plain.SerializeToString()  # a message still serializes


def test_joined_state_rows_are_the_plain_message() -> None:
    rows = [(UnitStateRecord(f"u{i}.service", f"m{i % 4}", "h", "launched", "loaded", "active",
                             "running", main_pid=i, updated_ns=1), f"10.0.0.{i % 4}")
            for i in range(30)]
    assert pb.ListUnitStatesResponse.FromString(b"".join(map(_state_row, rows))) == \
        pb.ListUnitStatesResponse(states=[state_pb(*r) for r in rows])


# -- the row cache follows the view ----------------------------------------------------------

UNITS = ["a.service", "b.service", "c.service"]
MIDS = ["m1", "m2"]
TEXTS = ["[Service]\nExecStart=/bin/true\n",
         "[Unit]\nDescription=two\n[Service]\nExecStart=/bin/true\n"]


class MemoryView(ClusterView):
    """The real view's bookkeeping, fed by hand (no etcd): reads are its state as it is."""

    def __init__(self, registry: Registry) -> None:
        super().__init__(registry)
        self.watch = WatchView(ClusterState.empty(1))
        self.rev = 1
        self._absorb(Update("reset", 1, self.watch.state))

    async def snapshot(self) -> ClusterState:
        assert self.state is not None
        return self.state

    def put(self, key: str, value: bytes | None) -> None:
        self.rev += 1
        ch = decode_change(self.registry.keys, key, value, self.rev)
        assert ch is not None
        events = self.watch.apply([ch])
        self._absorb(Update("changes", self.rev, self.watch.state, (ch,), tuple(events)))


ops = st.one_of(
    st.tuples(st.just("unit"), st.sampled_from(UNITS), st.sampled_from([*TEXTS, None])),
    st.tuples(st.just("desired"), st.sampled_from(UNITS),
              st.sampled_from(["inactive", "launched", None])),
    st.tuples(st.just("schedule"), st.sampled_from(UNITS), st.sampled_from(MIDS),
              st.booleans()),
    st.tuples(st.just("state"), st.sampled_from(UNITS), st.sampled_from(MIDS),
              st.sampled_from(["active", "inactive", None])),
    st.tuples(st.just("machine"), st.sampled_from(MIDS), st.sampled_from(["10.0.0.1",
                                                                         "10.0.0.2", None])),
    st.tuples(st.just("unschedulable"), st.sampled_from(UNITS),
              st.sampled_from(["no machine fits", None])),
    st.tuples(st.just("move"), st.sampled_from(UNITS), st.booleans()),
    st.tuples(st.just("reset")),
    st.tuples(st.just("list")),
)


def apply(view: MemoryView, op: tuple[Any, ...]) -> None:
    k = view.registry.keys
    kind = op[0]
    if kind == "unit":
        view.put(k.unit(op[1]), None if op[2] is None else encode(
            UnitRecord(op[1], op[2], f"h{len(op[2])}")))
    elif kind == "desired":
        view.put(k.desired_state(op[1]), None if op[2] is None else json.dumps(op[2]).encode())
    elif kind == "schedule":
        view.put(k.assignment(op[2], op[1]), encode(ScheduleEntry(
            op[1], op[2], "launched", "h", False)) if op[3] else None)
    elif kind == "state":
        view.put(k.state(op[1], op[2]), None if op[3] is None else encode(
            UnitStateRecord(op[1], op[2], "h", "launched", "loaded", op[3], "running")))
    elif kind == "machine":
        view.put(k.machine(op[1]), None if op[2] is None else encode(MachineRecord(op[1],
                                                                                   op[2])))
    elif kind == "unschedulable":
        view.put(k.unschedulable_reason(op[1]),
                 None if op[2] is None else json.dumps({"reason": op[2]}).encode())
    elif kind == "move":
        view.put(k.move(op[1]), encode(MoveRecord(op[1], "m1", "m2", "requested", "", 1))
                 if op[2] else None)
    elif kind == "reset":  # a fresh read: the same cluster, new objects
        view.rev += 1
        fresh = ClusterState.empty(view.rev)
        view.watch = WatchView(fresh)
        old = view.state
        assert old is not None
        for key, value in keys_of(view, old):
            ch = decode_change(k, key, value, view.rev)
            assert ch is not None
            view.watch.apply([ch])
        view._absorb(Update("reset", view.rev, fresh))


def keys_of(view: MemoryView, s: ClusterState) -> list[tuple[str, bytes]]:
    k = view.registry.keys
    out = [(k.unit(n), encode(r)) for n, r in s.records.items()]
    out += [(k.desired_state(n), json.dumps(d).encode()) for n, d in s.desired.items()]
    out += [(k.assignment(m, n), encode(e)) for n, per in s.schedule.items()
            for m, e in per.items()]
    out += [(k.state(n, m), encode(r)) for n, per in s.states.items()
            for m, r in per.items()]
    out += [(k.machine(m), encode(r)) for m, r in s.configured.items()]
    out += [(k.unschedulable_reason(n), json.dumps({"reason": r}).encode())
            for n, r in s.unschedulable.items()]
    out += [(k.move(n), encode(r)) for n, r in s.moves.items()]
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, max_size=40))
async def test_cached_rows_are_always_the_fresh_encoding(steps: list[Any]) -> None:
    view = MemoryView(Registry(None, "/p/"))  # type: ignore[arg-type]
    service = FleetService(view.registry, view)
    units, states = RowCache(_unit_row), RowCache(_state_row)
    for op in [*steps, ("list",)]:
        if op[0] != "list":
            apply(view, op)
            continue
        got = await service.list_unit_rows(units)
        want = [_unit_row(u) for u in await service.list_units()]
        assert got == want
        got_states = await service.list_state_rows(states)
        states_now, ips = await service.list_states()
        assert got_states == [_state_row((s, ips.get(s.machine_id, ""))) for s in states_now]


async def test_an_unchanged_row_is_reused_and_a_changed_one_encoded_again() -> None:
    view = MemoryView(Registry(None, "/p/"))  # type: ignore[arg-type]
    service = FleetService(view.registry, view)
    for name in UNITS:
        apply(view, ("unit", name, TEXTS[0]))
    cache = RowCache(_unit_row)
    first = await service.list_unit_rows(cache)
    apply(view, ("state", "b.service", "m1", "active"))  # b's current state may change
    second = await service.list_unit_rows(cache)
    assert second[0] is first[0] and second[2] is first[2] and second[1] is not first[1]
    apply(view, ("reset",))  # a fresh read: every row is made again
    third = await service.list_unit_rows(cache)
    assert third == second and all(a is not b for a, b in zip(third, second, strict=True))
