"""Draining machines (fleetctl drain): the drain key's decoding and the Draining check.
Pure: no etcd (the integration tests drive the same through a real cluster)."""

from __future__ import annotations

import pytest

from fleetd.engine.scheduler import (
    Assign,
    ClusterSnapshot,
    JobView,
    MachineView,
    Unassign,
    Unschedulable,
    explain,
    place_new,
    reconcile,
)
from fleetd.registry.model import MACHINE_PUT, Change, ClusterState, decode_change
from fleetd.registry.schema import DrainRecord, Keys, MachineRecord, encode
from fleetd.unit import XFleet

K = Keys("/p/")


def snap(machines: list[str], jobs: list[JobView], schedule: dict[str, set[str]],
         draining: set[str]) -> ClusterSnapshot:
    return ClusterSnapshot({m: MachineView(m) for m in machines}, {j.name: j for j in jobs},
                           {u: frozenset(ms) for u, ms in schedule.items()},
                           draining=frozenset(draining))


def test_the_drain_key_decodes_named_by_its_key() -> None:
    raw = encode(DrainRecord("other", "stop", True, 5))
    got = decode_change(K, K.machine_drain("m1"), raw, 9)
    assert got == Change("drain", 9, "", "m1", DrainRecord("m1", "stop", True, 5))
    assert decode_change(K, K.machine_drain("m1"), None, 10) == Change("drain", 10, "", "m1",
                                                                       None)


@pytest.mark.parametrize(("raw", "pinned"), [
    (b'{"machine_id": "m1"}', "leave"),
    (b'{"machine_id": "m1", "pinned": "bogus"}', "leave"),
    (b'{"machine_id": "m1", "pinned": "stop"}', "stop"),
])
def test_an_unknown_pinned_mode_reads_as_leave(raw: bytes, pinned: str) -> None:
    got = decode_change(K, K.machine_drain("m1"), raw, 1)
    assert got is not None and got.record.pinned == pinned


@pytest.mark.parametrize("key", [K.drain, K.drain + "m1/x"])
def test_keys_beside_a_drain_key_are_no_drain(key: str) -> None:
    assert decode_change(K, key, encode(DrainRecord("m1")), 1) is None


def test_draining_is_kept_in_the_model_and_touches_the_machine() -> None:
    st = ClusterState.empty()
    st.apply(Change("machine", 1, "", "m1", MachineRecord("m1")))
    touched = st.apply(Change("drain", 2, "", "m1", DrainRecord("m1")))
    assert st.draining == {"m1": DrainRecord("m1")}
    assert touched == [(MACHINE_PUT, "", "m1")]
    st.apply(Change("drain", 3, "", "m1", None))
    assert st.draining == {}


def test_no_new_unit_is_placed_on_a_draining_machine() -> None:
    jobs = [JobView(f"u{i}.service", "launched") for i in range(4)]
    s = snap(["m1", "m2"], jobs, {}, {"m1"})
    decisions = reconcile(s)
    assert {d.machine_id for d in decisions if isinstance(d, Assign)} == {"m2"}
    assert place_new(s, ["u0.service"]) == [a for a in decisions
                                            if isinstance(a, Assign)
                                            and a.unit == "u0.service"]


def test_a_unit_already_on_a_draining_machine_stays_there() -> None:
    s = snap(["m1", "m2"], [JobView("a.service", "launched")], {"a.service": {"m1"}}, {"m1"})
    assert reconcile(s) == []


def test_a_unit_pinned_to_a_draining_machine_is_unschedulable_with_the_reason() -> None:
    job = JobView("p.service", "launched", XFleet(machine_id="m1"))
    s = snap(["m1", "m2"], [job], {}, {"m1"})
    [d] = reconcile(s)
    assert isinstance(d, Unschedulable)
    assert "filtered by Draining (draining)" in d.reason
    ex = explain(s, "p.service")
    assert ("m1", "Draining", "m1 is draining: it gets no new units (fleetctl undrain to end "
            "it)") in ex.rejected


def test_a_global_unit_keeps_running_on_a_draining_machine_and_is_not_added_there() -> None:
    g = JobView("g.service", "launched", XFleet(global_=True))
    kept = snap(["m1", "m2"], [g], {"g.service": {"m1", "m2"}}, {"m1"})
    assert reconcile(kept) == []
    fresh = snap(["m1", "m2"], [g], {}, {"m1"})
    assert [(d.unit, d.machine_id) for d in reconcile(fresh) if isinstance(d, Assign)] == [
        ("g.service", "m2")]
    assert not any(isinstance(d, Unassign) for d in reconcile(fresh))


def test_the_http_machine_entity_names_draining_only_as_an_extension() -> None:
    from fleetd.api.http_v1 import machine_entity

    m = MachineRecord("m1", "10.0.0.1", {})
    assert "state" not in machine_entity(m, ())
    assert machine_entity(m, {"m1"})["state"] == "draining"
