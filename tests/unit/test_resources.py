"""Resource-aware placement: demand parsing, capacity config and records, and the Resources
check and the spread/binpack rankers of the scheduler (table tests)."""

from __future__ import annotations

import pathlib

import pytest

from fleetd.config import Config, ConfigError, load_config, machine_capacity, measured_capacity
from fleetd.engine._placement import pipeline_for
from fleetd.engine.scheduler import (
    Assign,
    ClusterSnapshot,
    JobView,
    MachineView,
    Unschedulable,
    explain,
    place_new,
    reconcile,
)
from fleetd.registry.model import decode_change
from fleetd.registry.schema import Keys, MachineRecord, encode
from fleetd.unit import InvalidXFleetOptions, Unit, XFleet
from fleetd.unit.resources import format_cpu, format_memory, parse_cpu, parse_memory

G = 1 << 30
M = 1 << 20


# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "value"), [
    ("512M", 512 * M), ("1G", G), ("1.5G", 3 * G // 2), ("2048", 2048), ("4K", 4096),
    ("1T", 1 << 40), ("512MiB", 512 * M), (" 2g ", 2 * G), ("infinity", 0), ("", 0),
])
def test_memory_sizes_use_systemd_suffixes(raw: str, value: int) -> None:
    assert parse_memory(raw) == value


@pytest.mark.parametrize("raw", ["lots", "-1M", "5X", "1.2.3G", "50%", "M"])
def test_bad_memory_sizes_are_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="memory"):
        parse_memory(raw)


@pytest.mark.parametrize(("raw", "milli"), [
    ("200%", 2000), ("50%", 500), ("150%", 1500), ("1.5", 1500), ("2", 2000), ("", 0),
])
def test_cpu_values(raw: str, milli: int) -> None:
    assert parse_cpu(raw) == milli


@pytest.mark.parametrize("raw", ["two", "%", "-1", "1.5 CPUs", "200 %%"])
def test_bad_cpu_values_are_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="CPU"):
        parse_cpu(raw)


def test_format_quantities() -> None:
    assert format_memory(512 * M) == "512M"
    assert format_memory(3 * G // 2) == "1.5G"
    assert format_memory(300) == "300"
    assert format_cpu(1500) == "1.5" and format_cpu(2000) == "2"


def demand(text: str) -> tuple[int, int]:
    xfleet = Unit.from_text("a.service", text).xfleet
    return xfleet.cpu, xfleet.memory


def test_unit_without_limits_reserves_nothing() -> None:
    assert demand("[Service]\nExecStart=/bin/true\n") == (0, 0)


def test_service_limits_are_the_demand() -> None:
    assert demand("[Service]\nExecStart=/bin/true\nMemoryMax=512M\nCPUQuota=200%\n") == (
        2000, 512 * M)


def test_memory_max_wins_over_memory_high_and_high_is_used_alone() -> None:
    assert demand("[Service]\nMemoryHigh=1G\nMemoryMax=512M\n") == (0, 512 * M)
    assert demand("[Service]\nMemoryHigh=1G\n") == (0, G)


def test_explicit_reservation_wins_over_service_limits() -> None:
    text = ("[Service]\nMemoryMax=2G\nCPUQuota=400%\n"
            "[X-Fleet]\nMemoryReservation=256M\nCPUReservation=0.5\n")
    assert demand(text) == (500, 256 * M)


def test_later_assignment_wins_and_percent_memory_reserves_nothing() -> None:
    assert demand("[Service]\nMemoryMax=1G\nMemoryMax=2G\n") == (0, 2 * G)
    assert demand("[Service]\nMemoryMax=50%\n") == (0, 0)
    assert demand("[Service]\nMemoryMax=infinity\n") == (0, 0)


@pytest.mark.parametrize(("text", "words"), [
    ("[X-Fleet]\nMemoryReservation=lots\n", "MemoryReservation: memory 'lots'"),
    ("[X-Fleet]\nMemoryReservation=10%\n", "is a percentage"),
    ("[X-Fleet]\nCPUReservation=many\n", "CPUReservation: CPU 'many'"),
    ("[Service]\nCPUQuota=2\n", "CPUQuota: CPU '2' is not a percentage"),
    ("[Service]\nMemoryMax=big\n", "MemoryMax"),
])
def test_bad_demand_is_a_clear_unit_error(text: str, words: str) -> None:
    with pytest.raises(InvalidXFleetOptions, match=words.replace("(", r"\(")):
        Unit.from_text("a.service", text)


def test_xfleet_dict_round_trip_keeps_demand() -> None:
    xfleet = XFleet(cpu=1500, memory=G)
    assert XFleet.from_dict(xfleet.to_dict()) == xfleet
    assert "cpu" not in XFleet().to_dict()


# --- configuration and the machine record --------------------------------------------------


def load(tmp_path: pathlib.Path, *lines: str) -> Config:
    path = tmp_path / "fleet.conf"
    path.write_text("\n".join(lines) + "\n")
    cfg, _ = load_config(["--config", str(path)], {})
    return cfg


def test_capacity_options(tmp_path: pathlib.Path) -> None:
    cfg = load(tmp_path, "capacity_cpu=1.5", "capacity_memory=4G", "reserved_cpu=0.5",
               "reserved_memory=512M", "engine_placement=binpack")
    assert machine_capacity(cfg) == (1500, 4 * G, 500, 512 * M)
    assert cfg.engine_placement == "binpack"


def test_capacity_is_measured_by_default(tmp_path: pathlib.Path) -> None:
    cfg = load(tmp_path)
    cpu, memory, reserved_cpu, reserved_memory = machine_capacity(cfg)
    assert (cpu, memory) == measured_capacity()
    assert cpu >= 1000 and memory > 64 * M and (reserved_cpu, reserved_memory) == (0, 0)
    half = load(tmp_path, "capacity_memory=1G")
    assert machine_capacity(half)[:2] == (cpu, G)


@pytest.mark.parametrize(("lines", "words"), [
    (("capacity_cpu=lots",), "invalid value for capacity_cpu"),
    (("capacity_cpu=200%",), "number of CPUs"),
    (("capacity_memory=huge",), "invalid value for capacity_memory"),
    (("capacity_memory=0",), "capacity_memory must be positive"),
    (("capacity_memory=1G", "reserved_memory=2G"), "reserved_memory must be less than"),
    (("capacity_cpu=2", "reserved_cpu=2"), "reserved_cpu must be less than"),
    (("engine_placement=random",), "engine_placement must be one of spread, binpack"),
])
def test_bad_capacity_options_are_refused(tmp_path: pathlib.Path, lines: tuple[str, ...],
                                          words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load(tmp_path, *lines)


def test_machine_record_carries_capacity_and_old_records_decode() -> None:
    keys = Keys()
    rec = MachineRecord("m1", "10.0.0.1", cpu=2000, memory=4 * G, reserved_cpu=500,
                        reserved_memory=G)
    change = decode_change(keys, keys.machine("m1"), encode(rec), 3)
    assert change is not None and change.record == rec
    assert rec.allocatable() == (1500, 3 * G)
    old = b'{"id":"m1","ip":"10.0.0.1","metadata":{},"hostname":"h","version":"0.1"}'
    change = decode_change(keys, keys.machine("m1"), old, 4)
    assert change is not None and change.record.allocatable() == (0, 0)
    bad = b'{"id":"m1","ip":"10.0.0.1","cpu":"lots","memory":-5}'
    change = decode_change(keys, keys.machine("m1"), bad, 5)
    assert change is not None and (change.record.cpu, change.record.memory) == (0, 0)


# --- scheduling --------------------------------------------------------------------------


def machine(mid: str, cpu: float = 0, memory: int = 0) -> MachineView:
    return MachineView(mid, {}, int(cpu * 1000), memory)


def job(name: str, cpu: float = 0, memory: int = 0, **options: object) -> JobView:
    return JobView(name, "launched", XFleet(cpu=int(cpu * 1000), memory=memory, **options))  # type: ignore[arg-type]


def snap(machines: list[MachineView], jobs: list[JobView],
         schedule: dict[str, frozenset[str]] | None = None) -> ClusterSnapshot:
    return ClusterSnapshot({m.id: m for m in machines}, {j.name: j for j in jobs},
                           schedule or {})


def placed(decisions: list) -> dict[str, str]:  # type: ignore[type-arg]
    return {d.unit: d.machine_id for d in decisions if isinstance(d, Assign)}


def test_unit_is_not_placed_where_memory_is_short_and_why_names_the_numbers() -> None:
    s = snap([machine("m1", memory=G), machine("m2", memory=300 * M)],
             [job("big.service", memory=512 * M), job("hog.service", memory=800 * M)],
             {"hog.service": frozenset({"m1"})})
    assert placed(reconcile(s)) == {}
    out = reconcile(s)
    (reason,) = [d for d in out if isinstance(d, Unschedulable)]
    assert reason.unit == "big.service" and ("Resources", 2) in reason.filtered
    assert "needs 512M memory" in reason.reason
    ex = explain(s, "big.service")
    assert ("m2", "Resources", "needs 512M memory, m2 has 300M free of 300M") in ex.rejected
    assert ("m1", "Resources", "needs 512M memory, m1 has 224M free of 1G") in ex.rejected


def test_cpu_is_checked_too_and_unlimited_machines_take_anything() -> None:
    s = snap([machine("m1", cpu=1), machine("m2")], [job("a.service", cpu=2)])
    assert placed(reconcile(s)) == {"a.service": "m2"}
    ex = explain(snap([machine("m1", cpu=1)], [job("a.service", cpu=2)]), "a.service")
    assert ex.rejected == (("m1", "Resources", "needs 2 CPU, m1 has 1 free of 1"),)


def test_reservations_add_up_in_one_pass() -> None:
    jobs = [job(f"u{i}.service", memory=400 * M) for i in range(5)]
    out = reconcile(snap([machine("m1", memory=G), machine("m2", memory=G)], jobs))
    where = placed(out)
    assert sorted(where.values()) == ["m1", "m1", "m2", "m2"]
    assert [d.unit for d in out if isinstance(d, Unschedulable)] == ["u4.service"]


def test_kept_assignment_counts_its_own_demand_once() -> None:
    s = snap([machine("m1", memory=G)], [job("a.service", memory=G)],
             {"a.service": frozenset({"m1"})})
    assert reconcile(s) == []
    assert explain(s, "a.service").feasible == ("m1",)


def test_spread_takes_the_least_reserved_share() -> None:
    # m1 has fewer units but more reserved; spread goes by the reserved share.
    machines = [machine("m1", memory=4 * G), machine("m2", memory=4 * G)]
    jobs = [job("fat.service", memory=3 * G), job("s1.service"), job("s2.service"),
            job("new.service", memory=G)]
    sched = {"fat.service": frozenset({"m1"}), "s1.service": frozenset({"m2"}),
             "s2.service": frozenset({"m2"})}
    out = place_new(snap(machines, jobs, sched), ["new.service"])
    assert placed(out) == {"new.service": "m2"}
    (assign,) = out
    assert assign.reason == ("target state launched; least loaded feasible machine "  # type: ignore[union-attr]
                             "(2 units, 0% reserved)")


def test_binpack_fills_the_most_reserved_machine_that_fits() -> None:
    machines = [machine("m1", memory=4 * G), machine("m2", memory=4 * G)]
    jobs = [job("fat.service", memory=2 * G), job("new.service", memory=G),
            job("huge.service", memory=3 * G)]
    sched = {"fat.service": frozenset({"m1"})}
    binpack = pipeline_for("binpack")
    out = place_new(snap(machines, jobs, sched), ["new.service"], binpack)
    assert placed(out) == {"new.service": "m1"}
    assert "most loaded feasible machine that fits (1 units, 50% reserved)" in \
        out[0].reason  # type: ignore[union-attr]
    spread = place_new(snap(machines, jobs, sched), ["new.service"])
    assert placed(spread) == {"new.service": "m2"}
    # huge (3G) does not fit beside fat on m1: binpack takes m2.
    out = reconcile(snap(machines, jobs, sched), binpack)
    assert placed(out)["huge.service"] == "m2"


def test_binpack_packs_many_small_units_onto_one_machine() -> None:
    machines = [machine(f"m{i}", memory=4 * G) for i in range(1, 4)]
    jobs = [job(f"u{i}.service", memory=G) for i in range(6)]
    where = placed(reconcile(snap(machines, jobs), pipeline_for("binpack")))
    assert sorted(where.values()) == ["m1", "m1", "m1", "m1", "m2", "m2"]
    spread = placed(reconcile(snap(machines, jobs)))
    assert sorted(spread.values()) == ["m1", "m1", "m2", "m2", "m3", "m3"]


def test_without_reservations_spread_is_fleets_unit_count() -> None:
    machines = [machine("m1", memory=G), machine("m2", memory=G)]
    jobs = [job("a.service"), job("b.service"), job("c.service")]
    out = reconcile(snap(machines, jobs, {"a.service": frozenset({"m1"})}))
    assert placed(out) == {"b.service": "m2", "c.service": "m1"}
    assert all("(0 units)" in d.reason or "(1 units)" in d.reason for d in out)  # type: ignore[union-attr]


def test_global_unit_skips_machines_without_room_with_the_reason() -> None:
    s = snap([machine("m1", memory=G), machine("m2", memory=256 * M)],
             [job("agent.service", memory=512 * M, global_=True)])
    assert placed(reconcile(s)) == {"agent.service": "m1"}
    ex = explain(s, "agent.service")
    assert ex.rejected == (("m2", "Resources", "needs 512M memory, m2 has 256M free of 256M"),)


def test_sidekick_demand_counts_on_its_leaders_machine() -> None:
    s = snap([machine("m1", memory=G), machine("m2", memory=G)],
             [job("app.service", memory=768 * M),
              job("side.service", memory=512 * M, machine_of=("app.service",))],
             {"app.service": frozenset({"m1"})})
    out = reconcile(s)
    (bad,) = [d for d in out if isinstance(d, Unschedulable)]
    assert bad.unit == "side.service" and "Resources" in dict(bad.filtered)
    ex = explain(s, "side.service")
    assert ("m1", "Resources", "needs 512M memory, m1 has 256M free of 1G") in ex.rejected


def _group_cluster(m2_memory: int = G) -> ClusterSnapshot:
    return snap([machine("m1", memory=G), machine("m2", memory=m2_memory)],
                [job("hog.service", memory=512 * M), job("app.service", memory=256 * M),
                 job("side.service", memory=512 * M, machine_of=("app.service",))],
                {"hog.service": frozenset({"m1"})})


@pytest.mark.parametrize("fast", [False, True])
def test_a_leader_is_placed_only_where_its_sidekick_fits_too(fast: bool) -> None:
    # binpack would take m1 (the fuller) for the leader alone; with its sidekick it is short.
    binpack = pipeline_for("binpack")
    s = _group_cluster()
    out = (place_new(s, ["app.service", "side.service"], binpack) if fast
           else reconcile(s, binpack))
    assert out is not None
    assert placed(out) == {"app.service": "m2", "side.service": "m2"}
    ex = explain(s, "app.service", binpack)
    assert ("m1", "Resources", "needs 768M memory with its MachineOf followers "
            "(side.service), m1 has 512M free of 1G") in ex.rejected
    assert ex.feasible == ("m2",)


def test_a_group_that_fits_nowhere_is_unschedulable_with_the_numbers() -> None:
    s = _group_cluster(m2_memory=512 * M)
    out = reconcile(s)
    bad = {d.unit: d.reason for d in out if isinstance(d, Unschedulable)}
    assert set(bad) == {"app.service", "side.service"}
    assert ("needs 256M memory and room for side.service (MachineOf); needs 768M memory "
            "with its MachineOf followers (side.service), m1 has 512M free of 1G") in \
        bad["app.service"]


def test_followers_reservations_count_transitively_and_only_once_placed() -> None:
    jobs = [job("app.service"), job("side.service", memory=300 * M, machine_of=(
        "app.service",)), job("log.service", memory=300 * M, machine_of=("side.service",))]
    machines = [machine("m1", memory=512 * M), machine("m2", memory=G)]
    out = reconcile(snap(machines, jobs))
    assert placed(out) == {"app.service": "m2", "side.service": "m2", "log.service": "m2"}
    settled = snap(machines, jobs, {u: frozenset({"m2"}) for u in placed(out)})
    assert reconcile(settled) == []  # placed followers are not counted twice


def test_a_global_unit_is_not_held_back_by_a_sidekick_that_needs_one_of_its_machines() -> None:
    s = snap([machine("m1", memory=G), machine("m2", memory=256 * M)],
             [job("agent.service", global_=True),
              job("side.service", memory=512 * M, machine_of=("agent.service",))])
    out = reconcile(s)
    assert {(d.unit, d.machine_id) for d in out if isinstance(d, Assign)} == {
        ("agent.service", "m1"), ("agent.service", "m2"), ("side.service", "m1")}


def test_unknown_placement_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown placement 'x'"):
        pipeline_for("x")


# --- exposure ------------------------------------------------------------------------------


def test_http_machine_entity_extension_and_grpc_machine_fields() -> None:
    from fleetd.api.grpc_server import machine_pb
    from fleetd.api.http_v1 import RESOURCES_FIELD, machine_entity

    rec = MachineRecord("m1", "10.0.0.1", {}, cpu=2000, memory=4 * G, reserved_memory=G)
    assert machine_entity(rec) == {"id": "m1", "primaryIP": "10.0.0.1", "metadata": {}}
    assert machine_entity(rec, reserved=(500, 512 * M))[RESOURCES_FIELD] == {
        "cpuMilli": 2000, "memoryBytes": 4 * G, "hostReservedCpuMilli": 0,
        "hostReservedMemoryBytes": G, "reservedCpuMilli": 500, "reservedMemoryBytes": 512 * M}
    pb = machine_pb(rec, None, reserved=(500, 512 * M))
    assert (pb.cpu_milli, pb.memory_bytes, pb.host_reserved_memory_bytes,
            pb.reserved_cpu_milli, pb.reserved_memory_bytes) == (2000, 4 * G, G, 500, 512 * M)


def test_service_sums_reservations_per_machine() -> None:
    from fleetd.api.service import FleetService
    from fleetd.registry.model import ClusterState, UnitView
    from fleetd.registry.schema import ScheduleEntry, UnitRecord

    def unit(name: str, text: str) -> UnitView:
        return UnitView(UnitRecord(name, text, Unit.from_text(name, text).hash), "launched")

    units = {"a.service": unit("a.service", "[Service]\nMemoryMax=512M\nCPUQuota=50%\n"),
             "b.service": unit("b.service", "[X-Fleet]\nMemoryReservation=1G\n"),
             "c.service": unit("c.service", "[Service]\nExecStart=/bin/true\n"),
             "bad.service": unit("bad.service", "[Service]\nExecStart=/bin/true\n")}
    units["bad.service"] = UnitView(UnitRecord("bad.service", "[X-Fleet]\nNope=1\n", "h"),
                                    "launched")
    entry = ScheduleEntry("x", "m1", "launched", "h")
    st = ClusterState(1, units, {}, {"a.service": {"m1": entry}, "b.service": {"m1": entry,
                      "m2": entry}, "c.service": {"m2": entry}, "bad.service": {"m2": entry}},
                      {}, {})
    service = FleetService(None)  # type: ignore[arg-type]
    assert service.reserved(st) == {"m1": (500, 512 * M + G), "m2": (0, G)}
    assert service.reserved(st, "m2") == {"m2": (0, G)}
