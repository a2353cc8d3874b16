"""The one decoder of etcd keys (fleetd.registry.model), table-driven, no etcd.

Where the earlier decoders disagreed, the rule that won is pinned here (see the module doc of
fleetd.registry.model)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from fleetd.registry.model import Change, ClusterState, UnitView, decode_change, state_from
from fleetd.registry.schema import (
    Keys,
    MachineRecord,
    ScheduleEntry,
    UnitRecord,
    UnitStateRecord,
    encode,
)

K = Keys("/p/")
REC = UnitRecord("a.service", "[Service]\nExecStart=/bin/true\n", "h1")
ENTRY = ScheduleEntry("a.service", "m1", "launched", "h1")
STATE = UnitStateRecord("a.service", "m1", "h1", "launched", "loaded", "active", "running")
M1 = MachineRecord("m1", "10.0.0.1", {"role": "web"})


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes


@pytest.mark.parametrize(("key", "value", "want"), [
    (K.unit("a.service"), encode(REC), Change("unit", 7, "a.service", "", REC)),
    (K.desired_state("a.service"), encode("launched"),
     Change("desired", 7, "a.service", "", "launched")),
    (K.assignment("m1", "a.service"), encode(ENTRY),
     Change("schedule", 7, "a.service", "m1", ENTRY)),
    (K.state("a.service", "m1"), encode(STATE), Change("state", 7, "a.service", "m1", STATE)),
    (K.machine("m1"), encode(M1), Change("machine", 7, "", "m1", M1)),
    (K.unschedulable_reason("a.service"), encode({"reason": "no machine", "since_ns": 1}),
     Change("unschedulable", 7, "a.service", "", "no machine")),
    (K.machine_metadata("m1"), encode({"rack": "r1", "region": None}),
     Change("metadata", 7, "", "m1", {"rack": "r1", "region": None})),
    (K.leader, b"m1", Change("leader", 7, "", "", "m1")),
])
def test_each_key_of_the_schema_decodes_to_its_change(key: str, value: bytes,
                                                       want: Change) -> None:
    assert decode_change(K, key, value, 7) == want
    deleted = decode_change(K, key, None, 8)
    assert deleted == Change(want.kind, 8, want.name, want.machine_id, None)


def test_a_stored_key_is_decoded_as_a_put_of_it() -> None:
    kvs = [KV(K.unit("a.service"), encode(REC)), KV(K.desired_state("a.service"),
                                                     encode("loaded")),
           KV(K.assignment("m1", "a.service"), encode(ENTRY)),
           KV(K.state("a.service", "m1"), encode(STATE)), KV(K.machine("m1"), encode(M1)),
           KV(K.machine_metadata("m1"), encode({"rack": "r1"})),
           KV(K.unschedulable_reason("b.service"), encode({"reason": "why"}))]
    read = state_from(K, kvs, 9)
    watched = ClusterState.empty()
    for rev, kv in enumerate(kvs, 1):
        c = decode_change(K, kv.key, kv.value, rev)
        assert c is not None
        watched.apply(c)
    watched.revision = 9
    assert read == watched
    assert read.units == {"a.service": UnitView(REC, "loaded")}
    assert read.machines["m1"].metadata == {"role": "web", "rack": "r1"}  # merged
    assert read.configured["m1"] == M1  # as registered


# --- where two decoders disagreed: the rule that won -------------------------------------
def test_an_unschedulable_reason_stored_as_a_plain_string_is_accepted() -> None:
    # The registry's reader accepted it; the engine's crashed on it (str has no .get).
    assert decode_change(K, K.unschedulable_reason("a.service"), b'"no machine"', 1) == \
        Change("unschedulable", 1, "a.service", "", "no machine")


def test_objects_are_named_by_their_key_not_by_the_ids_in_their_value() -> None:
    # A full read used the ids inside records, the watch used the key: a record whose ids
    # disagreed with its key then outlived the deletion of that key.
    odd_entry = ScheduleEntry("other.service", "m9", "launched", "h1")
    odd_state = UnitStateRecord("other.service", "m9", "h1", "launched", "loaded", "active",
                                "running")
    st = state_from(K, [KV(K.assignment("m1", "a.service"), encode(odd_entry)),
                        KV(K.state("a.service", "m1"), encode(odd_state)),
                        KV(K.machine("m1"), encode(MachineRecord("m9")))], 3)
    assert set(st.schedule) == {"a.service"} and set(st.schedule["a.service"]) == {"m1"}
    assert set(st.states) == {"a.service"} and set(st.states["a.service"]) == {"m1"}
    assert set(st.machines) == {"m1"}
    for key in (K.assignment("m1", "a.service"), K.state("a.service", "m1"), K.machine("m1")):
        c = decode_change(K, key, None, 4)
        assert c is not None
        st.apply(c)
    assert not st.schedule and not st.states and not st.machines


@pytest.mark.parametrize(("raw", "want"), [
    (b'{"rack": "r1", "n": 3, "gone": null}', {"rack": "r1", "n": "3", "gone": None}),
    (b"not json", {}),  # garbage reads as no API metadata (the engine's rule) ...
    (b"[1, 2]", {}),  # ... not as a crash of the watch (the view's json.loads)
])
def test_api_metadata_is_decoded_once_and_tolerantly(raw: bytes, want: dict) -> None:
    c = decode_change(K, K.machine_metadata("m1"), raw, 1)
    assert c is not None and c.record == want
    st = ClusterState.empty()
    st.apply(Change("machine", 1, "", "m1", M1))
    st.apply(c)
    assert st.metadata.get("m1", {}) == want  # stored as decoded: not normalised again


@pytest.mark.parametrize("key", [
    K.machines + "m1/extra",  # the engine took this for machine "m1/extra"; the view ignored it
    K.units,  # no name
    K.schedule + "m1",  # no unit
    K.states + "a.service",  # no machine
    "/p/unknown/x",
    "/other/unit/a.service",
])
def test_keys_outside_the_schema_are_ignored(key: str) -> None:
    assert decode_change(K, key, encode(M1), 1) is None


@pytest.mark.parametrize(("key", "raw"), [
    (K.unit("a.service"), b"\xff not json"),
    (K.unit("a.service"), b"[]"),
    (K.unit("a.service"), b'{"name": "a.service"}'),  # fields missing
    (K.desired_state("a.service"), b"{"),
    (K.unschedulable_reason("a.service"), b"\x00"),
    (K.machine("m1"), b"null"),
])
def test_an_undecodable_value_is_ignored_not_raised(key: str, raw: bytes) -> None:
    assert decode_change(K, key, raw, 1) is None


def test_a_desired_state_before_its_unit_record_is_kept_for_it() -> None:
    st = ClusterState.empty()
    assert st.apply(Change("desired", 1, "a.service", "", "launched")) == []
    assert st.apply(Change("unit", 2, "a.service", "", REC)) == [("unit_put", "a.service", "")]
    assert st.units["a.service"] == UnitView(REC, "launched")
