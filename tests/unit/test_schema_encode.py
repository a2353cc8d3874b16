"""The registry's record encoder (fleetd/registry/schema.py `encode`): its shortcut for records
of plain values writes exactly the JSON of the full `dataclasses.asdict` path, and records
that hold dicts or lists still take that path."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetd.registry.schema import (
    DrainRecord,
    MachineRecord,
    MoveRecord,
    ScheduleEntry,
    UnitRecord,
    UnitStateRecord,
    decode,
    encode,
)

text = st.text(max_size=12)
number = st.integers(min_value=-(2**40), max_value=2**40)
records = st.one_of(
    st.builds(UnitRecord, text, text, text),
    st.builds(ScheduleEntry, text, text, text, text, st.booleans()),
    st.builds(MachineRecord, text, text, st.dictionaries(text, text, max_size=3)),
    st.builds(UnitStateRecord, text, text, text, text, text, text, text, number, number),
    st.builds(DrainRecord, text, text, st.booleans(), number),
    st.builds(MoveRecord, text, text, text, text, text, number),
)


def reference(record: Any) -> bytes:
    return json.dumps(asdict(record), separators=(",", ":"), sort_keys=True).encode()


@settings(max_examples=400, deadline=None)
@given(records)
def test_encode_is_the_json_of_asdict(record: Any) -> None:
    assert encode(record) == reference(record)
    assert decode(type(record), encode(record)) == record


def test_plain_json_values_encode_as_before() -> None:
    for value in ("launched", {"reason": "x", "a": None}, [1, 2], 3):
        assert encode(value) == json.dumps(value, separators=(",", ":"),
                                           sort_keys=True).encode()
