"""fleetctl.protolite against the real protobuf runtime: every message of fleet.proto, with
random values in every field, encodes to bytes protobuf decodes to the same message, and
decodes what protobuf encodes to the same values. Plus proto3 defaults, unknown fields,
refused input and the service's methods."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetctl import protolite
from fleetd.api.pb import fleet_lite
from fleetd.api.pb import fleet_pb2 as pb

LITE = protolite.messages()
SCALARS = {
    "string": st.text(max_size=20),
    "bytes": st.binary(max_size=20),
    "bool": st.booleans(),
    "int32": st.integers(-(2 ** 31), 2 ** 31 - 1),
    "int64": st.integers(-(2 ** 63), 2 ** 63 - 1),
    "uint32": st.integers(0, 2 ** 32 - 1),
    "uint64": st.integers(0, 2 ** 64 - 1),
    "double": st.floats(allow_nan=False),
}


def lite_class(name: str) -> Any:
    cls: Any = LITE
    for part in name.split("."):
        cls = getattr(cls, part)
    return cls


def pb_class(name: str) -> Any:
    cls: Any = pb
    for part in name.split("."):
        cls = getattr(cls, part)
    return cls


@st.composite
def values(draw: Any, name: str, depth: int = 0) -> dict[str, Any]:
    """Random field values (a dict tree) for message `name`."""
    out: dict[str, Any] = {}
    for _number, field, kind, ref, repeated in fleet_lite.MESSAGES[name]:
        if not draw(st.booleans()):
            continue
        if kind == "message":
            if depth >= 2:
                continue
            one = values(ref, depth + 1)
        elif kind == "enum":
            one = st.sampled_from(sorted(fleet_lite.ENUMS[ref].values()))
        elif kind == "map":
            k, v = ref.split(":")
            out[field] = draw(st.dictionaries(SCALARS[k], SCALARS[v], max_size=3))
            continue
        else:
            one = SCALARS[kind]
        out[field] = draw(st.lists(one, max_size=3)) if repeated else draw(one)
    return out


def build(name: str, vals: dict[str, Any], lookup: Any) -> Any:
    kinds = {f: (kind, ref) for _, f, kind, ref, _ in fleet_lite.MESSAGES[name]}
    kw = {}
    for field, v in vals.items():
        kind, ref = kinds[field]
        if kind == "message":
            v = [build(ref, x, lookup) for x in v] if isinstance(v, list) else build(ref, v, lookup)
        kw[field] = v
    return lookup(name)(**kw)


def same(name: str, lite: Any, real: Any) -> None:
    """Every field of the lite message equals the protobuf one's."""
    for _, field, kind, ref, repeated in fleet_lite.MESSAGES[name]:
        a, b = getattr(lite, field), getattr(real, field)
        if kind == "message":
            if repeated:
                assert len(a) == len(b), field
                for x, y in zip(a, b, strict=True):
                    same(ref, x, y)
            else:
                same(ref, a, b)
        elif kind == "map":
            assert a == dict(b), field
        elif repeated:
            assert a == list(b), field
        else:
            assert a == b, (name, field, a, b)


@pytest.mark.parametrize("name", sorted(fleet_lite.MESSAGES))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_message_round_trips_against_protobuf(name: str, data: st.DataObject) -> None:
    vals = data.draw(values(name))
    lite, real = build(name, vals, lite_class), build(name, vals, pb_class)
    # what we send, protobuf reads as the same message; what it sends, we read the same
    assert pb_class(name).FromString(lite.SerializeToString()) == real
    same(name, lite_class(name).FromString(real.SerializeToString()), real)
    assert lite_class(name).FromString(lite.SerializeToString()) == lite


def test_proto3_defaults_and_unset_message_fields() -> None:
    ev = LITE.WatchEvent()
    assert ev.kind == 0 and ev.revision == 0 and ev.name == ""
    assert ev.snapshot.units == [] and ev.unit.machine_ids == []
    assert ev.SerializeToString() == b""  # reading unset fields sets none of them
    assert LITE.WatchEvent.Kind.SNAPSHOT == pb.WatchEvent.SNAPSHOT
    assert LITE.WatchEvent.Kind.Name(4) == "UNIT_PUT"
    with_empty = LITE.WatchEvent(snapshot=LITE.Snapshot())  # an empty message, set: sent
    assert pb.WatchEvent.FromString(with_empty.SerializeToString()).HasField("snapshot")


def test_unknown_fields_are_skipped_and_bad_names_refused() -> None:
    # a newer fleetd's field 99 (varint, bytes, fixed64, fixed32) between known ones
    extra = bytes([0x98, 0x06, 0x05, 0x9a, 0x06, 0x02, 0x61, 0x62, 0x99, 0x06]) + bytes(8) \
        + bytes([0x9d, 0x06]) + bytes(4)
    data = pb.Unit(name="a.service").SerializeToString() + extra \
        + pb.Unit(hash="h").SerializeToString()
    u = LITE.Unit.FromString(data)
    assert (u.name, u.hash) == ("a.service", "h")
    with pytest.raises(ValueError, match='no "nope" field'):
        LITE.Unit(nope=1)


@pytest.mark.parametrize("data", [b"\x0a\x05ab", b"\x08", b"\x0a\xff\xff\xff\xff\x0f",
                                  b"\x0b", b"\x0a\x02\xff\xfe"])
def test_broken_input_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(protolite.DecodeError):
        LITE.Unit.FromString(data)


def test_the_methods_match_the_service() -> None:
    service = pb.DESCRIPTOR.services_by_name["Fleet"]
    assert LITE.service == service.full_name
    assert set(LITE.methods) == set(service.methods_by_name)
    for m in service.methods:
        req, resp, streaming = LITE.methods[m.name]
        assert (req.__name__, resp.__name__, streaming) == (
            m.input_type.name, m.output_type.name, m.server_streaming)


@pytest.mark.parametrize("name", ["ListUnitsResponse", "ListUnitStatesResponse", "WatchEvent"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_cut_input_is_read_as_protobuf_reads_it_or_refused_and_damage_is_a_decode_error(
        name: str, data: st.DataObject) -> None:
    # The decoder's fast paths (one-byte tags and lengths read inline) against protobuf on
    # input cut short: both refuse it, or both read the same. With one byte changed, it
    # reads something or refuses it with DecodeError, never another exception. (How a field
    # sent with a wire type other than its own is read, protobuf's upb does not do alike
    # everywhere; fleetctl takes it for an unknown field.)
    from google.protobuf.message import DecodeError as PbDecodeError

    raw = build(name, data.draw(values(name)), pb_class).SerializeToString()
    cut = raw[:data.draw(st.integers(0, len(raw)))]
    try:
        real = pb_class(name).FromString(cut)
    except PbDecodeError:
        real = None
    try:
        lite = lite_class(name).FromString(cut)
    except protolite.DecodeError:
        lite = None
    if real is None or lite is None:
        assert real is None and lite is None, (cut, real, lite)
    else:
        same(name, lite, real)
    if raw:
        damaged = bytearray(raw)
        damaged[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        try:
            lite_class(name).FromString(bytes(damaged))
        except protolite.DecodeError:
            pass
