"""The gRPC list answers built from cached encoded rows are the very messages the plain
construction gives (fleetd.api.grpc_server._RowCache)."""

from __future__ import annotations

from fleetd.api.grpc_server import _RowCache, state_pb, unit_pb
from fleetd.api.pb import fleet_pb2 as pb
from fleetd.api.service import UnitInfo
from fleetd.registry import UnitStateRecord


def info(i: int, desc: str = "d") -> UnitInfo:
    return UnitInfo(f"u{i}.service", "", f"h{i}", "launched", "launched",
                    tuple(f"m{j}" for j in range(i % 3)), "", desc, i % 2 == 0)


def test_units_answer_equals_the_plain_message_and_follows_changes() -> None:
    cache = _RowCache(unit_pb)
    # rows of every length-prefix size: 1, 2 and 3 varint bytes
    units = [info(0, ""), info(1, "é" * 100), info(2, "x" * 20000), *map(info, range(3, 50))]
    for _ in range(2):  # cold, then from the cache
        got = cache.response(pb.ListUnitsResponse, units)
        assert got == pb.ListUnitsResponse(units=[unit_pb(u) for u in units])
    changed = [*units[:10], info(10, "new description"), *units[11:40]]
    got = cache.response(pb.ListUnitsResponse, changed)
    assert got == pb.ListUnitsResponse(units=[unit_pb(u) for u in changed])
    assert got.units[10].description == "new description" and len(got.units) == 40
    assert len(cache._rows) == 40  # only the last answer's rows are kept
    assert cache.response(pb.ListUnitsResponse, []) == pb.ListUnitsResponse()


def test_states_answer_equals_the_plain_message() -> None:
    cache = _RowCache(lambda s_ip: state_pb(*s_ip))
    rows = [(UnitStateRecord(f"u{i}.service", f"m{i % 4}", "h", "launched", "loaded", "active",
                             "running", main_pid=i, updated_ns=1), f"10.0.0.{i % 4}")
            for i in range(30)]
    for _ in range(2):
        got = cache.response(pb.ListUnitStatesResponse, rows)
        assert got == pb.ListUnitStatesResponse(states=[state_pb(*r) for r in rows])
