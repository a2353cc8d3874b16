"""Fuzzing the unit model (hypothesis): any bytes, any text, any name is either accepted as a
well-formed unit or refused with a UnitError naming the problem; never another exception.

Bounded: each property runs a fixed number of examples without deadlines (about 10 s in all);
the counts appear in pytest's terminal summary (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetd.unit import (
    MAX_UNIT_NAME_LENGTH,
    InvalidUnitFile,
    InvalidUnitName,
    Unit,
    UnitError,
    UnitFile,
    UnitName,
)
from tests.harness.cases import record

FUZZ = settings(max_examples=1500, deadline=None, database=None)
RAN: dict[str, int] = {"bytes": 0, "lines": 0, "names": 0}
_CONTROL = {chr(c) for c in range(0x20)} - {"\t", "\n"} | {"\x7f"}


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    record("fuzz: unit parser (arbitrary bytes)", RAN["bytes"])
    record("fuzz: unit parser (unit-shaped lines, X-Fleet)", RAN["lines"])
    record("fuzz: unit names", RAN["names"])


def _well_formed(f: UnitFile) -> None:
    for section, name, value in f.options:
        assert section.strip() and name, f.options
        assert not (_CONTROL & set(section + name + value)), f.options
    assert UnitFile.parse(f.serialize()) == f


@given(st.binary(max_size=2048))
@FUZZ
def test_any_bytes_parse_or_fail_clearly(data: bytes) -> None:
    RAN["bytes"] += 1
    try:
        f = UnitFile.parse(data, name="fuzz.service")
    except InvalidUnitFile as e:
        assert str(e).startswith('invalid unit file "fuzz.service"')
        return
    _well_formed(f)


_PIECES = st.sampled_from([
    "[Unit]", "[Service]", "[X-Fleet]", "[]", "[X-Fleet", "[Unit] x", "Description=d",
    "ExecStart=/bin/true", "Global=true", "Global=false", "Global=maybe", "MachineID=abc",
    "MachineID=", "MachineOf=other.service", "MachineOf=fuzz.service", "Conflicts=a*.service",
    "Conflicts=[", "Replaces=r.service", "MachineMetadata=region=east", "MachineMetadata=bad",
    "X-ConditionMachineOf=o.service", "Bogus=1", "=x", "noequals", "# comment", "; c",
    "A=b\\", "  continued", "", "\t", "A=\x00", "A=\x1b[0m", "\ufeff[Unit]", "A=é",
])


@given(st.lists(st.one_of(_PIECES, st.text(max_size=20)), max_size=25))
@FUZZ
def test_unit_shaped_text_is_a_unit_or_a_unit_error(lines: list[str]) -> None:
    RAN["lines"] += 1
    text = "\n".join(lines)
    try:
        unit = Unit.from_text("fuzz.service", text)
    except UnitError as e:
        assert "fuzz.service" in str(e) and str(e).strip()
        return
    _well_formed(unit.file)
    assert unit.hash == UnitFile.parse(unit.text).hash()


@given(st.one_of(
    st.text(max_size=300),
    st.text(st.sampled_from("ab@.-_:\\/\x00\n é"), max_size=20).map(lambda s: s + ".service"),
    st.integers(240, 270).map(lambda n: "a" * n + ".service"),
))
@FUZZ
def test_any_name_is_valid_or_refused(name: str) -> None:
    RAN["names"] += 1
    try:
        parsed = UnitName.parse(name)
    except InvalidUnitName as e:
        assert str(e).strip()
        return
    assert len(parsed.full.encode()) <= MAX_UNIT_NAME_LENGTH
    assert "/" not in name and ".." not in name and name.isprintable() and name.isascii()
