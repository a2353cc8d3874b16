"""The pure parts of fleet's HTTP API v1: page tokens, entity conversion, body validation."""

from __future__ import annotations

import json

import pytest

from fleetd.api.http_v1 import (
    HttpError,
    PageToken,
    decode_json,
    discovery_document,
    machine_entity,
    page_token,
    paginate,
    parse_metadata_patch,
    parse_unit_body,
    split_host_port,
    state_entity,
    unit_entity,
    unit_options,
    unit_text,
)
from fleetd.api.service import UnitInfo
from fleetd.registry import MachineRecord, UnitStateRecord
from fleetd.registry.schema import decode_metadata, merge_metadata
from fleetd.unit import Unit

# --- page tokens ----------------------------------------------------------------------------


def test_page_token_is_fleets_encoding() -> None:
    # fleet: base64url (padded) of little-endian uint16 limit, uint16 page.
    assert PageToken(100, 2).encode() == "ZAACAA=="
    assert PageToken.decode("ZAACAA==", 100) == PageToken(100, 2)
    assert PageToken(100, 1).next() == PageToken(100, 2)


@pytest.mark.parametrize(("value", "message"), [
    ("!!!!", "not base64url"),
    ("ZAACAA", "not base64url"),  # padding missing
    ("ZAAC", "3 bytes"),
    ("ZAACAAAA", "6 bytes"),
    ("CgACAA==", "token limit must be 100"),
    ("ZAAAAA==", "greater than zero"),
    ("ünïcode", "not base64url"),
])
def test_invalid_page_tokens_are_400(value: str, message: str) -> None:
    with pytest.raises(HttpError) as e:
        PageToken.decode(value, 100)
    assert e.value.status == 400 and message in e.value.message


def test_page_token_query_values() -> None:
    assert page_token([], 100) == PageToken(100, 1)
    assert page_token([PageToken(100, 3).encode()], 100) == PageToken(100, 3)
    with pytest.raises(HttpError, match="too many values"):
        page_token(["ZAACAA==", "ZAACAA=="], 100)


def test_paginate_walks_every_item_once() -> None:
    items = list(range(7))
    tok: PageToken | None = PageToken(3, 1)
    seen = []
    pages = 0
    while tok is not None:
        page, nxt = paginate(items, tok)
        seen += page
        pages += 1
        tok = PageToken.decode(nxt, 3) if nxt else None
    assert seen == items and pages == 3
    assert paginate(items, PageToken(7, 1)) == (items, None)  # exactly one full page
    assert paginate(items, PageToken(3, 9)) == ([], None)  # past the end
    assert paginate([], PageToken(3, 1)) == ([], None)


# --- entities -------------------------------------------------------------------------------
TEXT = "[Unit]\nDescription=hi\n\n[Service]\nExecStart=/bin/sleep 1000\n"


def _info(**kw: object) -> UnitInfo:
    base: dict[str, object] = dict(name="a.service", text=TEXT, hash="h",
                                   desired_state="launched", current_state="launched",
                                   machine_ids=("m1",), unschedulable_reason="",
                                   description="hi", is_global=False)
    base.update(kw)
    return UnitInfo(**base)  # type: ignore[arg-type]


def test_unit_entity() -> None:
    assert unit_entity(_info()) == {
        "name": "a.service", "desiredState": "launched", "currentState": "launched",
        "machineID": "m1",
        "options": [{"section": "Unit", "name": "Description", "value": "hi"},
                    {"section": "Service", "name": "ExecStart", "value": "/bin/sleep 1000"}]}
    # a global unit (or an unscheduled one) has no machineID
    assert "machineID" not in unit_entity(_info(is_global=True, machine_ids=("m1", "m2")))
    assert "machineID" not in unit_entity(_info(machine_ids=()))


def test_options_round_trip_to_the_same_hash() -> None:
    opts = [(o["section"], o["name"], o["value"]) for o in unit_options(TEXT)]
    text = unit_text("a.service", opts)
    assert Unit.from_text("a.service", text).hash == Unit.from_text("a.service", TEXT).hash
    assert unit_options("not a unit file\x00") == []


def test_state_and_machine_entities() -> None:
    s = UnitStateRecord("a.service", "m1", "h", "launched", "loaded", "active", "running")
    assert state_entity(s) == {"name": "a.service", "hash": "h", "machineID": "m1",
                               "systemdLoadState": "loaded", "systemdActiveState": "active",
                               "systemdSubState": "running"}
    m = MachineRecord("m1", "10.0.0.1", {"region": "us"})
    assert machine_entity(m) == {"id": "m1", "primaryIP": "10.0.0.1",
                                 "metadata": {"region": "us"}}


# --- unit bodies ----------------------------------------------------------------------------
def test_parse_unit_body() -> None:
    b = parse_unit_body({"name": "a.service", "desiredState": "loaded", "currentState": "x",
                         "machineID": "m", "unknown": [1],
                         "options": [{"section": "Service", "name": "ExecStart",
                                      "value": "/bin/true"}]})
    assert (b.name, b.desired_state, b.options) == (
        "a.service", "loaded", (("Service", "ExecStart", "/bin/true"),))
    empty = parse_unit_body({"options": None, "desiredState": None})
    assert (empty.name, empty.desired_state, empty.options) == ("", "", ())
    # a missing value is an empty one, as Go decodes it
    assert parse_unit_body({"options": [{"section": "S", "name": "N"}]}).options == (
        ("S", "N", ""),)


@pytest.mark.parametrize(("body", "message"), [
    ([], "expected a Unit object, got array"),
    ("x", "expected a Unit object, got string"),
    ({"desiredState": 1}, "desiredState must be a string, got number"),
    ({"name": True}, "name must be a string, got boolean"),
    ({"currentState": {}}, "currentState must be a string"),
    ({"machineID": []}, "machineID must be a string"),
    ({"options": {}}, "options must be an array"),
    ({"options": ["x"]}, "options[0] must be a UnitOption object"),
    ({"options": [{"section": 1, "name": "a", "value": "b"}]}, "options[0].section must be"),
    ({"options": [{"section": "S", "name": "a", "value": 2}]}, "options[0].value must be"),
    ({"options": [{"section": "", "name": "a", "value": "b"}]}, "section is empty"),
    ({"options": [{"section": "S", "value": "b"}]}, "name is empty"),
])
def test_bad_unit_bodies_are_400(body: object, message: str) -> None:
    with pytest.raises(HttpError) as e:
        parse_unit_body(body)
    assert e.value.status == 400 and message in e.value.message


@pytest.mark.parametrize("raw", [b"", b"   ", b"{", b"nope", b"{}x", b"\xff\xfe",
                                 b"[" * 100000])
def test_undecodable_bodies_are_400(raw: bytes) -> None:
    with pytest.raises(HttpError) as e:
        decode_json(raw)
    assert e.value.status == 400 and "unable to decode body" in e.value.message


@pytest.mark.parametrize(("opts", "message"), [
    ([("X-Fleet", "Bogus", "1")], "unknown option"),
    ([("X-Fleet", "Global", "true"), ("X-Fleet", "Replaces", "b.service")], "Global"),
    ([("X-Fleet", "MachineID", "a"), ("X-Fleet", "MachineOf", "b.service")], "MachineOf"),
    ([("Service", "Exec\nStart", "x")], ""),
])
def test_invalid_options_are_400(opts: list[tuple[str, str, str]], message: str) -> None:
    with pytest.raises(HttpError) as e:
        unit_text("a.service", opts)
    assert e.value.status == 400 and message in e.value.message


# --- metadata patches -----------------------------------------------------------------------
def test_metadata_patch_accepts_both_value_forms_in_order() -> None:
    changes = parse_metadata_patch([
        {"op": "add", "path": "/m1/metadata/region", "value": "us-east"},
        {"op": "replace", "path": "/m1/metadata/disk", "value": {"value": "ssd"}},
        {"op": "remove", "path": "/m2/metadata/region"},
        {"op": "remove", "path": "/m1/metadata/region", "value": 17},  # ignored for remove
    ])
    assert changes == {"m1": [("region", "us-east"), ("disk", "ssd"), ("region", None)],
                       "m2": [("region", None)]}
    assert parse_metadata_patch([]) == {}


@pytest.mark.parametrize(("body", "message"), [
    ({"op": "add"}, "expected a JSON Patch array"),
    ("add", "expected a JSON Patch array"),
    (["x"], "operation 0: expected an object"),
    ([{"op": "move", "path": "/m/metadata/k", "value": "v"}], "expect add, remove, or replace"),
    ([{"op": 1, "path": "/m/metadata/k", "value": "v"}], "expect add, remove, or replace"),
    ([{"path": "/m/metadata/k", "value": "v"}], "expect add, remove, or replace"),
    ([{"op": "add", "value": "v"}], "path must be a string"),
    ([{"op": "add", "path": "/m/metadata/", "value": "v"}], "path invalid"),
    ([{"op": "add", "path": "/m/meta/k", "value": "v"}], "path invalid"),
    ([{"op": "add", "path": "m/metadata/k", "value": "v"}], "path invalid"),
    ([{"op": "add", "path": "/m/metadata/k/x", "value": "v"}], "path invalid"),
    ([{"op": "add", "path": "/m/metadata/k!", "value": "v"}], "path invalid"),
    ([{"op": "add", "path": "/m/metadata/k\n", "value": "v"}], "path invalid"),
    ([{"op": "add", "path": "/m/metadata/k"}], "requires a non-empty string value"),
    ([{"op": "add", "path": "/m/metadata/k", "value": ""}], "requires a non-empty"),
    ([{"op": "replace", "path": "/m/metadata/k", "value": {"value": ""}}], "non-empty"),
    ([{"op": "replace", "path": "/m/metadata/k", "value": {"v": "x"}}], "non-empty"),
    ([{"op": "add", "path": "/m/metadata/k", "value": 3}], "non-empty string"),
    ([{"op": "add", "path": "/m/metadata/k", "value": "v"}, {"op": "bad"}], "operation 1"),
])
def test_bad_metadata_patches_are_400(body: object, message: str) -> None:
    with pytest.raises(HttpError) as e:
        parse_metadata_patch(body)
    assert e.value.status == 400 and message in e.value.message


def test_merge_metadata() -> None:
    assert merge_metadata({"a": "1", "b": "2"}, {"b": "3", "c": "4", "a": None}) == {
        "b": "3", "c": "4"}
    assert merge_metadata({"a": "1"}, None) == {"a": "1"}
    assert decode_metadata(b'{"a": "1", "b": null}') == {"a": "1", "b": None}
    assert decode_metadata(b"garbage") == {} and decode_metadata(b"[1]") == {}


# --- misc -----------------------------------------------------------------------------------
def test_discovery_document_describes_every_resource() -> None:
    doc = json.loads(json.dumps(discovery_document()))
    assert doc["kind"] == "discovery#restDescription" and doc["servicePath"] == "fleet/v1/"
    methods = {(r, m) for r, res in doc["resources"].items() for m in res["methods"]}
    assert methods == {("Machines", "List"), ("Machines", "Patch"), ("Units", "List"),
                       ("Units", "Get"), ("Units", "Set"), ("Units", "Delete"),
                       ("UnitState", "List")}
    for res in doc["resources"].values():
        for m in res["methods"].values():
            for key in ("request", "response"):
                if key in m:
                    assert m[key]["$ref"] in doc["schemas"]


def test_split_host_port() -> None:
    assert split_host_port("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert split_host_port(":8080") == ("", 8080)
    assert split_host_port("[::1]:80") == ("::1", 80)
    for bad in ("nope", "host:", "host:99999", "host:x"):
        with pytest.raises(ValueError):
            split_host_port(bad)
